//! vCPUs: state, the world switch and the handling of guest exits.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::host::{ExitReason, VcpuRef, mmio};
use rampart_platform::inject::{self, Interrupted, Kind};
use rampart_platform::trap::{GuestVector, MmioAccess, SysregAccess, sanitise_id_register, virtual_serror_syndrome};
use zerocopy::FromZeros;

use crate::arch::guest::{self, El1Context, FpContext, PauthKeys, VgicContext};
use crate::arch;
use crate::host_timer;
use crate::vm::{self, VCPU_BOOT, VCPU_POWER, VCPU_SLOTS, power};

/// A vCPU's registers, kept at EL2 in a page the host donated.
#[derive(FromZeros)]
#[repr(C)]
pub struct VcpuState {
    /// x0..x30
    pub regs: [u64; 31],
    /// The PC (ELR_EL2 while the guest is out).
    pub pc: u64,
    /// PSTATE (SPSR_EL2 while the guest is out).
    pub pstate: u64,
    /// EL1 system registers and the virtual timer.
    pub el1: El1Context,
    /// FP/SIMD.
    pub fp: FpContext,
    /// Pointer-authentication keys.
    pub pauth: PauthKeys,
    /// Virtual CPU interface.
    pub vgic: VgicContext,
}

/// A vCPU: its state page and what the hypervisor tracks for it.
pub struct Vcpu {
    state: &'static mut VcpuState,
    index: usize,
    ran: bool,
    /// The MMIO access the host is emulating.
    mmio: Option<MmioAccess>,
    pending: [u32; 8],
    pending_count: usize,
    halted: bool,
    /// A virtual SError is pending for the guest (`HCR_EL2.VSE`, kept
    /// while the host runs).
    vserror: bool,
    /// A memory fault the host was told about: if it runs the vCPU again
    /// without putting memory there, the guest gets an external abort.
    memory_fault: Option<MemoryFault>,
    /// Level-sensitive INTIDs the guest ended (EOI maintenance) that the
    /// host has not been told about yet (`ExitReason::Eoi`).
    ended: [u32; 4],
    ended_count: usize,
    /// List registers may hold level-sensitive entries (`EOI` set): look
    /// at `ICH_EISR_EL2` on entry.
    level_in_lrs: bool,
    /// `ICH_HCR_EL2.NPIE` is set: queued interrupts wait for a list
    /// register.
    waiting: bool,
    /// The VM's `VTTBR_EL2` value and whether it is protected, read under
    /// the VM's lock at the vCPU's first `VCPU_RUN`: both are fixed from
    /// `VM_CREATE` to `VM_DESTROY` (the VMID and the stage-2 root), and
    /// the vCPU does not outlive its VM.
    vm_view: Option<(u64, bool)>,
}

/// A stage-2 fault above guest RAM's base that exited to the host.
#[derive(Clone, Copy, Debug)]
struct MemoryFault {
    ipa: u64,
    far: u64,
    write: bool,
    instruction: bool,
}

pub use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::guest::VIRTUAL_TIMER_INTID as VTIMER_INTID;
/// SPSR for a vCPU's first instruction: EL1h, D, A, I, F masked.
const RESET_PSTATE: u64 = 0x3c5;
/// SCTLR_EL1 at reset: MMU and caches off, RES1 bits set.
const RESET_SCTLR_EL1: u64 = 0x30D0_0800;

impl Vcpu {
    /// A vCPU in its reset state over a zeroed state page.
    pub fn new(state: &'static mut VcpuState, index: usize) -> Self {
        let mut vcpu =
            Vcpu {
            state,
            index,
            ran: false,
            mmio: None,
            pending: [0; 8],
            pending_count: 0,
            halted: false,
            vserror: false,
            memory_fault: None,
            ended: [0; 4],
            ended_count: 0,
            level_in_lrs: false,
            waiting: false,
            vm_view: None,
        };
        vcpu.reset(GUEST_RAM_BASE, 0);
        vcpu
    }

    /// Architectural reset with `pc` and `x0`; every other register zero.
    fn reset(&mut self, pc: u64, x0: u64) {
        self.state.zero();
        self.state.regs[0] = x0;
        self.state.pc = pc;
        self.state.pstate = RESET_PSTATE;
        self.state.el1.sctlr = RESET_SCTLR_EL1;
        // ICH_VMCR_EL2: VPMR = 0 (all masked) until the guest sets its PMR.
        self.state.vgic.vmcr = 0;
        self.mmio = None;
        self.memory_fault = None;
        self.pending_count = 0;
        self.vserror = false;
        self.ended_count = 0;
        self.level_in_lrs = false;
    }
}

/// What migration (`hyp/src/migrate.rs`) moves of a vCPU besides its
/// state page.
pub struct MigrationFlags {
    /// It has run (it is not measured or reset again).
    pub ran: bool,
    /// It stopped for good (a trap from an impossible state).
    pub halted: bool,
    /// A virtual SError is pending for it.
    pub vserror: bool,
}

impl Vcpu {
    /// Migration: its state page, flags and queued interrupts (exported
    /// while it cannot run). An MMIO access or memory fault in flight is
    /// not carried: the guest re-executes that instruction, which exits
    /// again at the destination.
    pub fn migration_view(&mut self) -> (&mut VcpuState, MigrationFlags, &[u32]) {
        let flags = MigrationFlags { ran: self.ran, halted: self.halted, vserror: self.vserror };
        (self.state, flags, &self.pending[..self.pending_count.min(8)])
    }

    /// Migration: sets the flags of a vCPU just imported (its state page
    /// filled by the caller); nothing is in flight.
    pub fn set_migration_flags(&mut self, flags: &MigrationFlags) {
        self.ran = flags.ran;
        self.halted = flags.halted;
        self.vserror = flags.vserror;
        self.mmio = None;
        self.memory_fault = None;
        self.pending_count = 0;
    }
}

/// `VCPU_SET_REGS`: before the vCPU's and the VM's first run only (the
/// VM's measurement covers vCPU 0's entry state; no vCPU's may change once
/// it is fixed).
pub fn set_regs(vcpu: VcpuRef, pc: u64, x0: u64) -> Result<(), Error> {
    let slot = vm::slot_of(vcpu.vm)?;
    let mut guard = VCPU_SLOTS[slot][vcpu.index].try_lock().ok_or(Error::Busy)?;
    let v = guard.as_mut().ok_or(Error::InvalidParameter)?;
    let measured = {
        let (_, vm_guard) = vm::lock(vcpu.vm)?;
        vm_guard.as_ref().is_some_and(|vm| vm.measurement.is_some())
    };
    if v.ran || measured {
        return Err(Error::Denied);
    }
    v.state.pc = pc;
    v.state.regs[0] = x0;
    Ok(())
}

/// `VCPU_INJECT`: works whether or not the vCPU is running; it sees the
/// interrupt the next time it enters the guest.
pub fn inject_irq(vcpu: VcpuRef, intid: u32) -> Result<(), Error> {
    let slot = vm::slot_of(vcpu.vm)?;
    if !vm::VCPU_EXISTS[slot][vcpu.index].load(Ordering::Acquire) {
        return Err(Error::InvalidParameter);
    }
    let word = &vm::VCPU_PENDING[slot][vcpu.index][(intid / 64) as usize % 16];
    word.fetch_or(1 << (intid % 64), Ordering::AcqRel);
    mark_pending(slot, vcpu.index);
    Ok(())
}

/// Per vCPU: a bit may have been set in its `vm::VCPU_PENDING` words since
/// it last looked. Every writer in this file sets it (release) after the
/// bit; a running vCPU re-entering its guest after an exit EL2 handled
/// tests this one flag instead of OR-ing the 16 words, and takes it with an
/// acquire swap before reading the words, so it sees every bit set before
/// the flag. Every writer of the words sets it (this file's, and
/// migration's import, `migrate::load_vcpu`), so the first entry of each
/// `VCPU_RUN` tests the flag too instead of OR-ing all 16 words (about 35
/// instructions of every MMIO exit): a new writer of `vm::VCPU_PENDING`
/// must call [`mark_pending`] after its bit. A host that injects on one CPU
/// and then runs the vCPU on another has ordered the two calls itself, so
/// the flag's store happens before the run's acquire load of it. A stale
/// flag costs one full look, nothing else.
static PENDING_HINT: [[core::sync::atomic::AtomicBool; rampart_abi::host::MAX_VCPUS as usize]; vm::MAX_VMS] =
    [const { [const { core::sync::atomic::AtomicBool::new(false) }; rampart_abi::host::MAX_VCPUS as usize] }; vm::MAX_VMS];

/// Sets the vCPU's [`PENDING_HINT`], after its pending bit (every writer
/// of `vm::VCPU_PENDING` but `VCPU_CREATE`'s zeroing calls this).
#[inline]
pub fn mark_pending(slot: usize, index: usize) {
    if let Some(flag) = PENDING_HINT.get(slot).and_then(|s| s.get(index)) {
        flag.store(true, Ordering::Release);
    }
}

/// Level-sensitive interrupts the host made pending
/// (`VCPU_INJECT_LEVEL`): the same bits as `vm::VCPU_PENDING`, set
/// together with them; the list register such an interrupt gets asks for
/// an EOI maintenance interrupt, and the guest's EOI ends the run with
/// `ExitReason::Eoi` so the host can resample the line.
static VCPU_LEVEL: [[[core::sync::atomic::AtomicU64; 16]; rampart_abi::host::MAX_VCPUS as usize]; vm::MAX_VMS] =
    [const { [const { [const { core::sync::atomic::AtomicU64::new(0) }; 16] }; rampart_abi::host::MAX_VCPUS as usize] }; vm::MAX_VMS];

/// Forgets a new vCPU's level-sensitive injections (with its pending ones,
/// as it is created).
pub fn clear_level(slot: usize, index: usize) {
    if let Some(words) = VCPU_LEVEL.get(slot).and_then(|s| s.get(index)) {
        for word in words {
            word.store(0, Ordering::Relaxed);
        }
    }
}

/// `VCPU_INJECT_LEVEL`: as `VCPU_INJECT`, for a level-sensitive interrupt
/// whose end of handling the host wants to see (`ExitReason::Eoi`).
pub fn inject_level_irq(vcpu: VcpuRef, intid: u32) -> Result<(), Error> {
    let slot = vm::slot_of(vcpu.vm)?;
    if !vm::VCPU_EXISTS[slot][vcpu.index].load(Ordering::Acquire) {
        return Err(Error::InvalidParameter);
    }
    let n = (intid / 64) as usize % 16;
    // The level bit first: the vCPU that collects the pending bit finds it.
    VCPU_LEVEL[slot][vcpu.index][n].fetch_or(1 << (intid % 64), Ordering::AcqRel);
    vm::VCPU_PENDING[slot][vcpu.index][n].fetch_or(1 << (intid % 64), Ordering::AcqRel);
    mark_pending(slot, vcpu.index);
    Ok(())
}

fn queue(v: &mut Vcpu, intid: u32) -> Result<(), Error> {
    use rampart_platform::inject::list_register::QUEUED_LEVEL;
    if let Some(q) = v.pending[..v.pending_count].iter_mut().find(|q| **q & !QUEUED_LEVEL == intid & !QUEUED_LEVEL) {
        *q |= intid & QUEUED_LEVEL;
        return Ok(());
    }
    let slot = v.pending.get_mut(v.pending_count).ok_or(Error::Busy)?;
    *slot = intid;
    v.pending_count += 1;
    Ok(())
}

/// What handling an exit decided.
pub enum Outcome {
    /// Run the guest again.
    Resume,
    /// Return to the host with this exit record (`x1`..`x4`).
    Exit([u64; 4]),
}

fn exit(reason: ExitReason, a: u64, b: u64, c: u64) -> Outcome {
    Outcome::Exit([reason as u64, a, b, c])
}

/// `VCPU_RUN`: runs the vCPU on this CPU until an exit the host must see.
pub fn run(vcpu: VcpuRef, mmio_read_value: u64) -> Result<[u64; 4], Error> {
    let slot = vm::slot_of(vcpu.vm)?;
    let mut guard = VCPU_SLOTS[slot][vcpu.index].try_lock().ok_or(Error::Busy)?;
    // The handle's generation again, now that the vCPU's lock is held: a
    // VM destroyed (and one re-created in the slot) since `slot_of` does
    // not match, and none can be destroyed while the lock is held, so the
    // vCPU found below is this handle's (`vm::is_current`).
    if !vm::is_current(slot, vcpu.vm) {
        return Err(Error::InvalidParameter);
    }
    let v = guard.as_mut().ok_or(Error::InvalidParameter)?;
    let hint = PENDING_HINT.get(slot).and_then(|s| s.get(v.index)).ok_or(Error::InvalidParameter)?;
    // Migration (issue 14): a VM being exported never runs again; one
    // being imported runs once its stream is complete.
    crate::migrate::may_run(slot, vcpu.vm)?;
    let (vttbr, protected) = match v.vm_view {
        Some(view) => view,
        None => {
            let vm_guard = vm::VMS[slot].lock();
            let vm = vm_guard.as_ref().filter(|vm| vm.handle == vcpu.vm).ok_or(Error::InvalidParameter)?;
            let view = (vm::vttbr(vm), vm.protected);
            v.vm_view = Some(view);
            view
        }
    };
    // Fixed while the vCPU's lock is held (a VM is a realm from its
    // creation to its destruction).
    let realm = crate::rsi::is_realm(slot);
    let power_state = &VCPU_POWER[slot][v.index];
    match power_state.load(Ordering::Acquire) {
        power::OFF => return Ok([ExitReason::PoweredOff as u64, 0, 0, 0]),
        power::PENDING => {
            let (entry, context) = &VCPU_BOOT[slot][v.index];
            v.reset(entry.load(Ordering::Acquire), context.load(Ordering::Acquire));
            power_state.store(power::ON, Ordering::Release);
        }
        _ => {}
    }
    if !v.ran {
        let (_, mut vm_guard) = vm::lock(vcpu.vm)?;
        let vm = vm_guard.as_mut().ok_or(Error::InvalidParameter)?;
        // Only a protected VM is measured: a host that can rewrite a VM's
        // memory at will makes any measurement of it meaningless.
        if vm.protected && vm.measurement.is_none() {
            // Pages evicted before the measurement never come back.
            let serial = crate::swap::serial_for_first_run(slot, vcpu.vm)?;
            vm::measure_first_run(vm, v.state.pc, v.state.regs[0])?;
            crate::swap::forget_evictions(slot, vcpu.vm, serial);
        }
        crate::arch::cache::before_first_run();
    }
    v.ran = true;
    // By reference, then cleared: `take()` copied the record through a
    // `memcpy` call (27 instructions on every MMIO resume).
    if let Some(op) = &v.mmio {
        if !op.write && op.register < 31 {
            v.state.regs[op.register] = op.load_value(mmio_read_value);
        }
        v.state.pc += 4;
        v.mmio = None;
    }
    // issue 12: a realm's RSI_HOST_CALL completes with the host's answer.
    if realm {
        crate::rsi::complete_host_call(slot, vcpu.vm.0, v.index, &mut v.state.regs);
    }
    let boot = crate::BOOT.get().ok_or(Error::NotSupported)?;
    // The guest's EL1 context stays loaded for as many exits as EL2 handles
    // itself; the host's comes back only when the host must see an exit.
    // This CPU's host save area: only this CPU ever locks it.
    let mut host = HOST_CONTEXTS
        .get()
        .and_then(|areas| areas.get(crate::cpu::current()))
        .ok_or(Error::NotSupported)?
        .lock();
    #[cfg(feature = "oracle")]
    crate::oracle::entering();
    load_guest(v, &mut host, vttbr, protected);
    if let Some(fault) = v.memory_fault.take() {
        let still_unbacked = {
            let guard = vm::VMS[slot].lock();
            guard.as_ref().is_some_and(|vm| vm::translate(vm, fault.ipa).is_none())
        };
        if still_unbacked {
            let kind = if fault.instruction {
                Kind::InstructionAbort { far_not_valid: false }
            } else {
                Kind::DataAbort { write: fault.write, far_not_valid: false }
            };
            inject_guest(v, kind, fault.far);
        }
    }
    let record = loop {
        check_timer(v);
        let pending = &vm::VCPU_PENDING[slot][v.index];
        // Swapped before the words are read, so a bit set before a hint
        // this swap takes is seen below; one set after it sets the hint
        // again, for the next entry. Every writer of a pending word sets
        // the hint after it (`mark_pending`, also migration's import), so
        // the first entry of a run needs no look of its own either.
        let look = hint.load(Ordering::Acquire) && hint.swap(false, Ordering::AcqRel);
        let pending: &[core::sync::atomic::AtomicU64] = if look && any_bit_set(pending) { pending } else { &[] };
        for (n, word) in pending.iter().enumerate() {
            // A plain load first: an atomic swap of every word on every
            // entry cost about 130 instructions. A bit set after this load
            // is seen on the next entry, as one set after the swap would be.
            if word.load(Ordering::Acquire) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            let level_word = &VCPU_LEVEL[slot][v.index][n];
            let level = if level_word.load(Ordering::Acquire) & bits != 0 { level_word.fetch_and(!bits, Ordering::AcqRel) & bits } else { 0 };
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let flag = if level & (1 << bit) != 0 { rampart_platform::inject::list_register::QUEUED_LEVEL } else { 0 };
                if queue(v, (n as u32 * 64 + bit) | flag).is_err() {
                    // Queue full: keep it pending for the next entry.
                    if flag != 0 {
                        level_word.fetch_or(1 << bit, Ordering::AcqRel);
                    }
                    word.fetch_or(1 << bit, Ordering::AcqRel);
                    mark_pending(slot, v.index);
                }
            }
        }
        // Both are tested here, not only inside, so a quiet entry (no
        // level-sensitive entry in a list register, nothing queued, no
        // "no pending" enable to drop) pays two loads, not two calls.
        if v.level_in_lrs {
            collect_ended(v);
        }
        if v.ended_count != 0 {
            // The host resamples the lines first (and may inject again).
            break take_ended(v);
        }
        if v.pending_count != 0 || v.waiting {
            load_pending_interrupts(v);
        }
        if host_timer::fired() {
            // The host's deadline passed during an exit EL2 handled: the
            // host's tick comes first.
            break [ExitReason::Interrupt as u64, 1, 0, 0];
        }
        // SAFETY: nothing takes an exception at EL2 between setting the
        // guest's PC and PSTATE and entering it; the guest is loaded.
        let kind = unsafe {
            arch::set_elr_el2(v.state.pc);
            arch::set_spsr_el2(v.state.pstate);
            guest::enter_guest(&mut v.state.regs)
        };
        // A reset is wiping memory on another CPU: stop before this guest
        // touches anything again.
        crate::host::park_if_dying();
        v.state.pc = arch::elr_el2();
        v.state.pstate = arch::spsr_el2();
        let outcome = match hvc_fast_path(kind, realm) {
            // The guest's `HVC #0` (no realm: a realm calls through SMC),
            // straight to the guest-call handler: exactly `handle_exit`'s
            // arm for it, without that function's frame and decoding.
            #[cfg(not(feature = "oracle"))]
            true => crate::guest_calls::handle_with(slot, v.index, protected, &mut v.state.regs),
            _ => handle_exit(slot, v, kind, protected, &mut host, boot.config.features.pauth),
        };
        if v.halted {
            power_state.store(power::OFF, Ordering::Release);
            break [ExitReason::PoweredOff as u64, 0, 0, 0];
        }
        if let Outcome::Exit(record) = outcome {
            break record;
        }
    };
    unload_guest(v, &host, boot);
    Ok(record)
}

/// Whether any of a vCPU's 16 pending-interrupt words has a bit set: the
/// words OR-ed together with plain (relaxed) loads, unrolled, so a quiet
/// entry costs about 35 instructions instead of a 16-pass loop of acquire
/// loads (about 110). A bit seen here is then taken with the acquire swap
/// of the loop after it; one set after these loads is seen at the next
/// entry, as one set after the loop's own load always was. Nothing is
/// read here but the bits, so no ordering is needed to read them.
#[inline]
fn any_bit_set(words: &[core::sync::atomic::AtomicU64; 16]) -> bool {
    arch::or_16_words(words) != 0
}

/// If the guest's virtual timer has fired, masks it (so the physical line
/// drops) and queues its virtual interrupt. The guest unmasks it when it
/// reprograms the timer.
fn check_timer(v: &mut Vcpu) {
    const ENABLE: u64 = 1;
    const IMASK: u64 = 2;
    // The guest's timer is loaded in the hardware.
    const ISTATUS: u64 = 4;
    // The timer's own ISTATUS says whether it fired: exactly what the guest
    // will read in its handler.
    let ctl = arch::cntv_ctl_el0();
    let condition = ctl & ENABLE != 0 && ctl & ISTATUS != 0;
    if !condition {
        // The timer's interrupt is level-sensitive: once the guest disabled
        // or reprogrammed the timer, a timer interrupt still only pending in
        // a list register is withdrawn, as the line would drop.
        retire_pending(VTIMER_INTID);
    }
    if condition && ctl & IMASK == 0 {
        // SAFETY: masks the guest's own timer interrupt; the guest is not
        // running and sees the bit when it next reads its timer.
        unsafe { arch::set_cntv_ctl_el0(ctl | IMASK) };
        let _ = queue(v, VTIMER_INTID);
    }
}

/// ICH_LR<n>_EL2.State: bits 63:62.
const STATE_MASK: u64 = 0b11 << 62;
/// ICH_LR<n>_EL2.State = pending.
const PENDING: u64 = 0b01 << 62;

/// Clears a list register that holds `intid` in the pending (not active)
/// state.
#[inline]
fn retire_pending(intid: u32) {
    let count = guest::list_register_count().min(4);
    // ICH_ELRSR_EL2 says which list registers hold nothing (neither
    // pending nor active): when all of them are empty, as on most entries,
    // there is nothing to retire and no list register to read.
    let all = (1u64 << count) - 1;
    if arch::ich_elrsr_el2() & all == all {
        return;
    }
    for n in 0..count {
        let lr = guest::read_lr(n);
        if lr & STATE_MASK == PENDING && lr & 0xffff_ffff == u64::from(intid) {
            // SAFETY: the guest is loaded but not running.
            unsafe { guest::write_lr(n, 0) };
        }
    }
}

/// The maintenance interrupt (PPI 25) taken while the guest ran: it is
/// asserted while a condition `ICH_HCR_EL2` enables holds (`ICH_MISR_EL2`
/// non-zero). The ended level-sensitive interrupts are collected, the
/// "no pending" enable dropped; the next entry places what waits and
/// reports the EOIs. Each step clears its condition, so the level-sensitive
/// PPI drops before the guest runs again (EL2 never acknowledges it).
/// False if no condition holds: the interrupt is the host's.
fn maintenance(v: &mut Vcpu) -> bool {
    if guest::ich_misr() == 0 {
        return false;
    }
    collect_ended(v);
    v.waiting = false;
    // SAFETY: the guest is loaded but not running; the next entry sets the
    // enables it needs again (`load_pending_interrupts`).
    unsafe { arch::set_ich_hcr_el2(rampart_platform::inject::list_register::HCR_EN) };
    // ICH_MISR_EL2 reflects the new enables only after synchronisation.
    arch::isb();
    guest::ich_misr() == 0
}

/// Takes the level-sensitive interrupts the guest ended out of their list
/// registers (`inject::list_register::ended`, unit-tested there) into
/// `v.ended`, for an `ExitReason::Eoi`.
fn collect_ended(v: &mut Vcpu) {
    if !v.level_in_lrs {
        return;
    }
    let eisr = guest::ich_eisr();
    if eisr == 0 {
        return;
    }
    let count = guest::list_register_count().min(v.state.vgic.lr.len());
    let mut lrs = [0u64; 4];
    for (n, lr) in lrs.iter_mut().enumerate().take(count) {
        *lr = guest::read_lr(n);
    }
    let (ids, found, clear) = rampart_platform::inject::list_register::ended(&lrs[..count], eisr);
    let mut level_left = false;
    for (n, &lr) in lrs.iter().enumerate().take(count) {
        if clear & (1 << n) != 0 {
            // SAFETY: the guest is loaded but not running.
            unsafe { guest::write_lr(n, 0) };
        } else {
            level_left |= lr & rampart_platform::inject::list_register::EOI != 0;
        }
    }
    v.level_in_lrs = level_left;
    for &intid in &ids[..found] {
        if !v.ended[..v.ended_count].contains(&intid)
            && let Some(slot) = v.ended.get_mut(v.ended_count)
        {
            *slot = intid;
            v.ended_count += 1;
        }
    }
}

/// The `ExitReason::Eoi` record for the first ended INTID: `x2` = INTID,
/// `x3` = how many more the next runs report.
fn take_ended(v: &mut Vcpu) -> [u64; 4] {
    let intid = v.ended[0];
    v.ended.copy_within(1..v.ended_count, 0);
    v.ended_count -= 1;
    [ExitReason::Eoi as u64, u64::from(intid), v.ended_count as u64, 0]
}

/// Moves queued virtual interrupts into list registers
/// (`rampart_platform::inject::list_register::place` decides where,
/// unit-tested there). While some still wait for a free list register,
/// the "no pending" maintenance interrupt is enabled, so they are placed
/// as soon as the guest has taken the others, not at its next exit.
fn load_pending_interrupts(v: &mut Vcpu) {
    use rampart_platform::inject::list_register::{
        EOI, PENDING as LR_PENDING, Place, QUEUED_LEVEL, hcr, pending_queued, place,
    };
    if v.pending_count == 0 {
        if v.waiting {
            v.waiting = false;
            // SAFETY: the guest is loaded but not running.
            unsafe { arch::set_ich_hcr_el2(hcr(false)) };
        }
        return;
    }
    // The guest's list registers are loaded in the hardware.
    let count = guest::list_register_count().min(v.state.vgic.lr.len());
    let mut lrs = [0u64; 4];
    for (n, lr) in lrs.iter_mut().enumerate().take(count) {
        *lr = guest::read_lr(n);
    }
    let lrs = &mut lrs[..count];
    let mut i = 0;
    while i < v.pending_count {
        let queued = v.pending[i];
        let level = queued & QUEUED_LEVEL != 0;
        match place(lrs, queued & !QUEUED_LEVEL) {
            Place::Merged => {}
            Place::AddPending(n) => {
                lrs[n] |= LR_PENDING | if level { EOI } else { 0 };
                // SAFETY: the guest is loaded but not running.
                unsafe { guest::write_lr(n, lrs[n]) };
            }
            Place::Fill(n) => {
                lrs[n] = pending_queued(queued);
                // SAFETY: the guest is loaded but not running.
                unsafe { guest::write_lr(n, lrs[n]) };
            }
            Place::Full => {
                i += 1;
                continue;
            }
        }
        if level {
            v.level_in_lrs = true;
            // Its EOI ends the run (the maintenance interrupt), so the
            // host resamples the line at once.
            crate::host_timer::enable_maintenance();
        }
        v.pending.copy_within(i + 1..v.pending_count, i);
        v.pending_count -= 1;
    }
    let waiting = v.pending_count != 0 && crate::host_timer::enable_maintenance();
    if waiting != v.waiting {
        v.waiting = waiting;
        // SAFETY: the guest is loaded but not running.
        unsafe { arch::set_ich_hcr_el2(hcr(waiting)) };
    }
}

/// HCR_EL2 while a guest runs: stage 2, physical interrupts and SErrors to
/// EL2, WFI/WFE, SMC, implementation-defined, auxiliary and ID registers
/// trapped.
fn guest_hcr() -> u64 {
    use crate::cpu::hcr::*;
    const FMO: u64 = 1 << 3;
    const IMO: u64 = 1 << 4;
    const AMO: u64 = 1 << 5;
    const TWI: u64 = 1 << 13;
    const TWE: u64 = 1 << 14;
    const TID3: u64 = 1 << 18;
    const TIDCP: u64 = 1 << 20;
    const TACR: u64 = 1 << 21;
    // ID registers are trapped for every guest: what the world switch does
    // not context-switch (SVE, SME, MTE, GCS, PMU, AMU, TCR2/PIE/POE...)
    // must be hidden from a stock kernel, or its settings would leak into
    // the host's EL1 (`sanitise_id_register`).
    // API and APK stay clear: pointer authentication traps until
    // `load_guest_pauth` loads the guest's keys and sets them.
    let mut hcr = VM | SWIO | FB | BSU_IS | TSC | RW | FMO | IMO | AMO | TWI | TWE | TIDCP | TACR | TID3;
    // Guest stage 2s use the FEAT_S2FWB encoding when the boot CPU has it;
    // a CPU without the feature must not set the bit (RES0).
    if crate::cpu::s2fwb() && crate::cpu::has_s2fwb() {
        hcr |= FWB;
    }
    hcr
}

/// The host's state while a guest is loaded, one per physical CPU (kept in
/// place: the world switch writes it, nothing copies it).
struct HostContext {
    el1: El1Context,
    fp: FpContext,
    pauth: PauthKeys,
    mdcr: u64,
    /// The guest's FP/SIMD state is in the registers (this run trapped
    /// its first use); otherwise the host's still is.
    guest_fp: bool,
    /// The same for the pointer-authentication keys.
    guest_pauth: bool,
    /// The guest's `MDCR_EL2` on this CPU and the host `MDCR_EL2` it was
    /// computed for ([`guest_mdcr`]).
    guest_mdcr: Option<(u64, u64)>,
    /// The guest's `HCR_EL2` on this CPU ([`guest_hcr`]), 0 until the
    /// first entry computes it.
    guest_hcr: u64,
    cptr: u64,
    vmpidr: u64,
    /// Where the host resumes after its `VCPU_RUN` call.
    elr: u64,
    spsr: u64,
    /// The host's `TRFCR_EL1`, while a protected guest runs with trace
    /// prohibited.
    trfcr: Option<u64>,
    /// The host's enabled PMU counters, paused while a protected guest
    /// runs.
    pmcnten: Option<u64>,
}

/// Saves the host's EL1 context and loads the guest's with its stage 2 and
/// traps. Until [`unload_guest`], EL1 belongs to the guest.
fn load_guest(v: &mut Vcpu, host: &mut HostContext, vttbr: u64, protected: bool) {
    host.mdcr = arch::mdcr_el2();
    host.cptr = arch::cptr_el2();
    host.vmpidr = arch::vmpidr_el2();
    host.elr = arch::elr_el2();
    host.spsr = arch::spsr_el2();
    guest::save_el1(&mut host.el1);
    // FP/SIMD and the pointer-authentication keys switch lazily: the
    // host's stay in the registers, and the guest's first use traps
    // (`CPTR_EL2.TFP`, `HCR_EL2.API`/`APK` clear) to `load_guest_fp` /
    // `load_guest_pauth`. A run whose guest uses neither (every exit an
    // MMIO or HVC-only guest takes) moves neither.
    host.guest_fp = false;
    host.guest_pauth = false;
    let guest_cptr = GUEST_CPTR | CPTR_TFP;
    // The guest's MDCR_EL2 depends only on this CPU's features and the
    // host's MDCR_EL2 (which only EL2 writes): computed once per CPU and
    // again only if the host's value is ever different.
    let guest_mdcr = match host.guest_mdcr {
        Some((for_host, value)) if for_host == host.mdcr => value,
        _ => {
            let value = guest_mdcr(host.mdcr);
            host.guest_mdcr = Some((host.mdcr, value));
            value
        }
    };
    // This CPU's guest HCR_EL2 (its features and the boot-time FWB choice,
    // both fixed): computed once per CPU. Never 0 (`VM` is set).
    if host.guest_hcr == 0 {
        host.guest_hcr = guest_hcr();
    }
    let guest_hcr = host.guest_hcr;
    // A protected guest is neither traced nor counted by the host: the
    // trace filter prohibits EL0/EL1 trace and the host's PMU counters
    // pause until the host's context comes back.
    host.trfcr = None;
    host.pmcnten = None;
    // Only a protected guest needs the debug features.
    let debug = if protected { DebugFeatures::probe() } else { DebugFeatures { trf: false, pmu: false } };
    if protected && debug.trf {
        let trfcr = guest::trfcr();
        host.trfcr = Some(trfcr);
        // SAFETY: FEAT_TRF is implemented; the host's value is restored by
        // `unload_guest`.
        unsafe { guest::set_trfcr(0) };
    }
    if protected && debug.pmu {
        let enabled = guest::pmcnten();
        host.pmcnten = Some(enabled);
        // SAFETY: a PMU is implemented; exactly these counters are enabled
        // again by `unload_guest`.
        unsafe { guest::set_pmcnten(enabled, false) };
    }
    // SAFETY: the host's EL1 state is saved above and restored by
    // `unload_guest` before the host runs again; meanwhile only the guest
    // runs, with its own stage 2 (VMID != 0), traps and registers.
    unsafe {
        guest::restore_el1(&v.state.el1);
        guest::restore_vgic(&v.state.vgic);
        // `restore_vgic` left ICH_HCR_EL2 = En only.
        v.waiting = false;
        // The guest's virtual timer replaces the host's: the host's
        // deadline moves to the EL2 timer until `unload_guest`.
        host_timer::arm(host.el1.cntv_ctl, host.el1.cntv_cval);
        arch::set_cptr_el2(guest_cptr);
        arch::set_mdcr_el2(guest_mdcr);
        arch::set_cnthctl_el2(0b01);
        arch::set_vmpidr_el2((1 << 31) | v.index as u64);
        arch::set_vttbr_el2(vttbr);
        // API/APK clear: the keys are loaded at the first trap.
        let mut hcr = guest_hcr;
        if v.vserror {
            if let Some(syndrome) = virtual_serror_syndrome(has_ras()) {
                guest::set_vsesr(syndrome);
            }
            hcr |= HCR_VSE;
        }
        arch::set_hcr_el2(hcr);
        // Guest vectors until `unload_guest` (`guest_entry.S`).
        guest::install_guest_vectors();
        // Every register above takes effect before the first entry (and
        // before any exception EL2 takes meanwhile).
        arch::isb();
    }
}

/// The debug features the world switch cares about.
#[derive(Clone, Copy, Debug)]
struct DebugFeatures {
    /// FEAT_TRF: `TRFCR_EL1` and `MDCR_EL2.TTRF`.
    trf: bool,
    /// A PMUv3 (`ID_AA64DFR0_EL1.PMUVer` neither 0 nor 0xf).
    pmu: bool,
}

impl DebugFeatures {
    fn probe() -> Self {
        let dfr0 = arch::id_aa64dfr0_el1();
        let pmu_version = (dfr0 >> 8) & 0xf;
        DebugFeatures { trf: (dfr0 >> 40) & 0xf != 0, pmu: pmu_version != 0 && pmu_version != 0xf }
    }
}

/// MDCR_EL2 while a guest runs: `rampart_platform::cpu::guest_mdcr` for
/// this CPU (unit-tested there): PMU, debug, trace-filter and profiling
/// registers trapped, `HPMD`/`HCCD` where the PMU has them (EL2 works for
/// the guest while this value is live), `HPMN` the host's `PMCR_EL0.N`
/// unless FEAT_HPMN0 allows 0. `TDE` stays clear, so a guest's `BRK`
/// (Linux's `BUG()` and `WARN()`) and its other debug exceptions go to the
/// guest's own EL1, not to EL2.
fn guest_mdcr(host_mdcr: u64) -> u64 {
    crate::cpu::with_features(|f| {
        rampart_platform::cpu::guest_mdcr(&f.cpu, host_mdcr & rampart_platform::cpu::mdcr::HPMN_MASK)
    })
}

/// Each CPU's host save area, one per CPU the device tree lists, in the
/// carve-out's boot-sized part ([`init_host_contexts`]).
static HOST_CONTEXTS: spin::Once<&'static [spin::mutex::SpinMutex<HostContext>]> = spin::Once::new();

/// Bytes of one CPU's host save area, for sizing the carve-out at boot.
pub const HOST_CONTEXT_BYTES: u64 = core::mem::size_of::<spin::mutex::SpinMutex<HostContext>>() as u64;

/// Places `cpus` host save areas at the start of `range` (boot, once).
/// False if they do not fit.
///
/// # Safety
///
/// As [`crate::mm::boot_array`]: `range` is RAM nothing else uses.
pub unsafe fn init_host_contexts(range: rampart_platform::MemRange, cpus: usize) -> bool {
    // SAFETY: forwarded from the caller.
    let Some(areas) = (unsafe { crate::mm::boot_array(range, cpus, || spin::mutex::SpinMutex::new(HostContext::EMPTY)) })
    else {
        return false;
    };
    HOST_CONTEXTS.call_once(|| areas);
    true
}

impl HostContext {
    const EMPTY: HostContext = HostContext {
        el1: El1Context::ZERO,
        fp: FpContext { v: [0; 32], fpsr: 0, fpcr: 0 },
        pauth: PauthKeys::ZERO,
        mdcr: 0,
        guest_mdcr: None,
        guest_hcr: 0,
        guest_fp: false,
        guest_pauth: false,
        cptr: 0,
        vmpidr: 0,
        elr: 0,
        spsr: 0,
        trfcr: None,
        pmcnten: None,
    };
}

/// Saves the guest's EL1 context and restores the host's.
fn unload_guest(v: &mut Vcpu, host: &HostContext, boot: &crate::Boot) {
    guest::save_el1(&mut v.state.el1);
    // Only what this run loaded (`load_guest_fp`, `load_guest_pauth`);
    // otherwise the registers still hold the host's values and the vCPU's
    // saved ones are current.
    if host.guest_fp {
        // CPTR_EL2.TFP is clear since `load_guest_fp`.
        guest::save_fp(&mut v.state.fp);
    }
    if host.guest_pauth {
        guest::save_pauth(&mut v.state.pauth);
    }
    let maintenance_asserted = guest::ich_misr() != 0;
    guest::save_vgic(&mut v.state.vgic);
    if maintenance_asserted {
        // `save_vgic` turned the interface off: PPI 25 drops before the
        // host, which has no handler for it, runs.
        host_timer::wait_for_drop(host_timer::MAINTENANCE_PPI);
    }
    // Off before the host runs: its PPI 26 drops, and the host's virtual
    // timer, restored below, raises the host's own interrupt if the
    // deadline passed.
    host_timer::disarm();
    // A virtual SError the guest has not taken yet stays pending.
    v.vserror = arch::hcr_el2() & HCR_VSE != 0;
    // SAFETY: restores exactly what the host had before `load_guest`.
    unsafe {
        arch::set_hcr_el2(boot.config.hcr);
        arch::set_vttbr_el2(boot.config.vttbr);
        arch::set_cptr_el2(host.cptr);
        arch::set_mdcr_el2(host.mdcr);
        arch::set_cnthctl_el2(0b11);
        arch::set_vmpidr_el2(host.vmpidr);
        arch::set_elr_el2(host.elr);
        arch::set_spsr_el2(host.spsr);
        guest::install_host_vectors();
        arch::isb();
        guest::restore_el1(&host.el1);
        // The host's CPTR_EL2 (FP not trapped) took effect at the ISB.
        if host.guest_fp {
            guest::restore_fp(&host.fp);
        }
        if host.guest_pauth {
            guest::restore_pauth(&host.pauth);
        }
        // Present only if `load_guest` found FEAT_TRF and a PMU.
        if let Some(trfcr) = host.trfcr {
            guest::set_trfcr(trfcr);
        }
        if let Some(enabled) = host.pmcnten {
            guest::set_pmcnten(enabled, true);
        }
    }
}

/// `CPTR_EL2` (nVHE layout) for a guest once its FP/SIMD state is loaded:
/// RES1 bits, SVE (`TZ`), SME (`TSM`) and trace (`TTA`) trapped.
const GUEST_CPTR: u64 = 0xff | (1 << 8) | (1 << 9) | (1 << 12) | (1 << 13) | (1 << 20);
/// `CPTR_EL2.TFP`: FP/SIMD (and SVE) trapped, at EL2 too.
const CPTR_TFP: u64 = 1 << 10;

/// The guest's first FP/SIMD use in this run: saves the host's FP/SIMD
/// registers, loads the guest's and stops trapping. Both moves run under the
/// host's `CPTR_EL2`, as they did when every entry switched them; the
/// guest's value (without `TFP`) is in force, after the `ISB`, before the
/// guest retries the instruction. The state a lazy switch must keep is
/// exactly the 32 V registers, FPSR and FPCR the guest can see (SVE and SME
/// stay trapped for it); until here the guest has not executed a single
/// FP/SIMD instruction, so the vCPU's saved state is its current state.
fn load_guest_fp(v: &mut Vcpu, host: &mut HostContext) {
    // SAFETY: the guest is loaded but not running; EL2 itself uses FP/SIMD
    // only here, in `unload_guest` and in `arch::sha256` (which saves and
    // restores what it uses), so the host's registers are intact.
    unsafe {
        arch::set_cptr_el2(host.cptr);
        arch::isb();
        guest::save_fp(&mut host.fp);
        guest::restore_fp(&v.state.fp);
        arch::set_cptr_el2(GUEST_CPTR);
        arch::isb();
    }
    host.guest_fp = true;
}

/// The guest's first pointer-authentication instruction, or key-register
/// access, in this run: saves the host's EL1 keys, loads the guest's and
/// stops trapping (`HCR_EL2.API`/`APK`). EL2 reads and writes the key
/// registers whatever `HCR_EL2` says (`APK` traps EL1 only).
fn load_guest_pauth(v: &mut Vcpu, host: &mut HostContext) {
    use crate::cpu::hcr::{API, APK};
    guest::save_pauth(&mut host.pauth);
    // SAFETY: the guest is loaded but not running; only the caller's check
    // that the CPU has FEAT_PAuth (`Config::features.pauth`) lets a guest
    // get here, and `unload_guest` puts the host's keys back.
    unsafe {
        guest::restore_pauth(&v.state.pauth);
        arch::set_hcr_el2(arch::hcr_el2() | API | APK);
        arch::isb();
    }
    host.guest_pauth = true;
}

/// Whether a trapped system-register access (`EC` 0x18 `ISS`) is one of the
/// EL1 pointer-authentication keys (`APIAKeyLo_EL1` .. `APGAKeyHi_EL1`:
/// op0 3, op1 0, CRn 2, CRm 1..=3), which `HCR_EL2.APK` = 0 traps.
fn is_pauth_key_register(iss: u64) -> bool {
    let access = SysregAccess::decode(iss);
    let (op0, op1, crn, crm, op2) = access.encoding;
    op0 == 3 && op1 == 0 && crn == 2 && matches!((crm, op2), (1 | 2, 0..=3) | (3, 0 | 1))
}

const EC_WFX: u64 = 0x01;
/// FP/SIMD access trapped by `CPTR_EL2.TFP`.
const EC_FP: u64 = 0x07;
/// Pointer-authentication instruction trapped by `HCR_EL2.API` = 0.
const EC_PAC: u64 = 0x09;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_SYSREG: u64 = 0x18;
const EC_IABT_LOWER: u64 = 0x20;
const EC_DABT_LOWER: u64 = 0x24;

fn handle_exit(slot: usize, v: &mut Vcpu, kind: u64, protected: bool, host: &mut HostContext, pauth: bool) -> Outcome {
    match GuestVector::of(kind) {
        GuestVector::Sync => {}
        // A physical interrupt: the virtual interface's maintenance
        // interrupt (PPI 25, handled here: `maintenance`), or one for the
        // host; `x2` = 1 if it is the EL2 timer holding the host's own
        // deadline.
        GuestVector::Interrupt => {
            let fired = host_timer::fired();
            if !fired && maintenance(v) {
                return Outcome::Resume;
            }
            return exit(ExitReason::Interrupt, u64::from(fired), 0, 0);
        }
        // A physical SError taken while the guest ran is the guest's (an
        // asynchronous external abort of its own access): it gets a
        // virtual SError, taken at its EL1 vector once PSTATE.A allows,
        // as KVM does. The host sees nothing.
        GuestVector::SError => {
            pend_virtual_serror(v);
            return Outcome::Resume;
        }
        // guest_entry.S sends nothing else here.
        GuestVector::Unexpected => return exit(ExitReason::Interrupt, 0, 0, 0),
    }
    let esr = arch::esr_el2();
    let iss = esr & 0x1ff_ffff;
    match (esr >> 26) & 0x3f {
        // The guest's first FP/SIMD instruction of this run (lazy switch:
        // `load_guest` left `CPTR_EL2.TFP` set). Retried once its state is
        // in the registers.
        EC_FP if !host.guest_fp => {
            load_guest_fp(v, host);
            Outcome::Resume
        }
        // Its first pointer-authentication instruction, or first access to
        // a key register, of this run (lazy switch: `HCR_EL2.API`/`APK`
        // clear). Retried once its keys are in the registers.
        EC_PAC if pauth && !host.guest_pauth => {
            load_guest_pauth(v, host);
            Outcome::Resume
        }
        EC_SYSREG if pauth && !host.guest_pauth && is_pauth_key_register(iss) => {
            load_guest_pauth(v, host);
            Outcome::Resume
        }
        // A realm (`crate::rsi`) calls through SMC only.
        EC_HVC64 if crate::rsi::is_realm(slot) => {
            v.state.regs[0] = rampart_abi::smccc::NOT_SUPPORTED as u64;
            Outcome::Resume
        }
        EC_HVC64 if iss & 0xffff != 0 => {
            // Only HVC #0 is a call.
            v.state.regs[0] = rampart_abi::smccc::NOT_SUPPORTED as u64;
            Outcome::Resume
        }
        #[cfg(not(feature = "oracle"))]
        EC_HVC64 => crate::guest_calls::handle_with(slot, v.index, protected, &mut v.state.regs),
        #[cfg(feature = "oracle")]
        EC_HVC64 => crate::oracle::guest_call(slot, v.index, &mut v.state.regs, |regs| {
            crate::guest_calls::handle_with(slot, v.index, protected, regs)
        }),
        EC_SMC64 => {
            // The trap leaves the PC at the SMC. A realm's SMC is its call
            // (`crate::rsi`); any other VM's is refused (they use HVC).
            v.state.pc += 4;
            crate::rsi::smc(slot, v.index, &mut v.state.regs, iss)
        }
        EC_WFX => {
            v.state.pc += 4;
            if interrupt_pending(slot, v) {
                // Something is already pending for the guest: the WFI/WFE
                // completes at once, without a trip to the host.
                return Outcome::Resume;
            }
            exit(ExitReason::Wait, iss & 1, timer_deadline(), 0)
        }
        EC_SYSREG => sysreg(slot, v, iss),
        EC_DABT_LOWER | EC_IABT_LOWER => {
            let far = arch::far_el2();
            let hpfar = arch::hpfar_el2();
            let ipa = (((hpfar >> 4) & 0xff_ffff_ffff) << 12) | (far & 0xfff);
            let instruction = (esr >> 26) & 0x3f == EC_IABT_LOWER;
            abort(slot, v, ipa, iss, far, instruction)
        }
        _ => {
            inject_guest(v, Kind::Undefined, arch::far_el2());
            Outcome::Resume
        }
    }
}

/// Whether the exit is an `HVC #0` of a non-realm guest from AArch64, the
/// case `handle_exit` hands to `guest_calls::handle_with` unchanged.
#[inline]
fn hvc_fast_path(kind: u64, realm: bool) -> bool {
    /// The vector kind of a synchronous exception from AArch64 EL1/EL0.
    const SYNC_AARCH64: u64 = 8;
    if kind != SYNC_AARCH64 || realm {
        return false;
    }
    let esr = arch::esr_el2();
    (esr >> 26) & 0x3f == EC_HVC64 && esr & 0xffff == 0
}

/// `HCR_EL2.VSE`: a virtual SError is pending.
const HCR_VSE: u64 = 1 << 8;

fn has_ras() -> bool {
    (arch::id_aa64pfr0_el1() >> 28) & 0xf != 0
}

/// Makes a virtual SError pending for the loaded guest.
fn pend_virtual_serror(v: &mut Vcpu) {
    v.vserror = true;
    // SAFETY: the guest is loaded but not running; VSE only makes a
    // virtual SError pending for it, VSESR_EL2 gives its syndrome.
    unsafe {
        if let Some(syndrome) = virtual_serror_syndrome(has_ras()) {
            guest::set_vsesr(syndrome);
        }
        arch::set_hcr_el2(arch::hcr_el2() | HCR_VSE);
    }
}

/// A stage-2 abort: MMIO below guest RAM, a memory fault above it.
fn abort(slot: usize, v: &mut Vcpu, ipa: u64, iss: u64, far: u64, instruction: bool) -> Outcome {
    let write = iss & (1 << 6) != 0;
    let (mapped, mmio_allowed, evicted, realm) = {
        let guard = vm::VMS[slot].lock();
        let Some(vm) = guard.as_ref() else { return exit(ExitReason::SystemOff, 0, 0, 0) };
        let mapped = vm::translate(vm, ipa).is_some();
        let allowed = !vm.protected || vm.mmio_guard.as_ref().is_none_or(|g| g.contains(ipa));
        (mapped, allowed, !mapped && crate::swap::is_evicted(slot, vm.handle, ipa), vm.realm.is_some())
    };
    if evicted {
        // Sealed swap: the host evicted the page. The access has not
        // happened; after VM_RESTORE the vCPU retries it.
        return exit(ExitReason::Evicted, ipa & !0xfff, u64::from(write), 0);
    }
    if mapped && crate::swap::translation_fault(iss) {
        // Mapped since the fault was taken (a VM_RESTORE or VM_DONATE on
        // another CPU won the race): retry the access.
        return Outcome::Resume;
    }
    // A realm's MMIO through the unprotected alias reaches the VMM without
    // the shared bit.
    let ipa = if realm { crate::rsi::mmio_address(ipa) } else { ipa };
    if mapped {
        // A fault on mapped memory (a permission fault) is the guest's.
        inject_guest(v, if instruction { Kind::InstructionAbort { far_not_valid: false } } else { Kind::DataAbort { write, far_not_valid: false } }, far);
        return Outcome::Resume;
    }
    if ipa >= GUEST_RAM_BASE || instruction {
        v.memory_fault = Some(MemoryFault { ipa, far, write, instruction });
        return exit(ExitReason::MemoryFault, ipa & !0xfff, u64::from(write), 0);
    }
    let op = match MmioAccess::decode(iss) {
        Some(op) if mmio_allowed => op,
        _ => {
            inject_guest(v, Kind::DataAbort { write, far_not_valid: false }, far);
            return Outcome::Resume;
        }
    };
    let value = if write && op.register < 31 { op.store_value(v.state.regs[op.register]) } else { 0 };
    v.mmio = Some(op);
    let flags = op.size_log2 | if write { mmio::WRITE } else { 0 };
    exit(ExitReason::Mmio, ipa, flags, value)
}

/// A trapped system-register access: sanitised ID registers for protected
/// guests, debug and trace registers read-as-zero / write-ignored, an
/// undefined instruction for everything else.
fn sysreg(slot: usize, v: &mut Vcpu, iss: u64) -> Outcome {
    let access = SysregAccess::decode(iss);
    if let Some(group0) = sgi_register(&access) {
        let value = if access.register < 31 { v.state.regs[access.register] } else { 0 };
        let others = send_sgi(slot, v, value, group0);
        v.state.pc += 4;
        // Other vCPUs were targeted: tell the host which, so it can wake
        // their threads (docs/abi.md, EXIT_INTERRUPT with x2 = 2).
        return if others == 0 { Outcome::Resume } else { exit(ExitReason::Interrupt, 2, others, 0) };
    }
    if let Some((crm, op2)) = access.id_register() {
        let value = sanitise_id_register(crm, op2, arch::id_register(crm, op2));
        if access.register < 31 {
            v.state.regs[access.register] = value;
        }
        v.state.pc += 4;
        return Outcome::Resume;
    }
    if access.is_debug_or_trace() {
        if access.read && access.register < 31 {
            v.state.regs[access.register] = 0;
        }
        v.state.pc += 4;
        return Outcome::Resume;
    }
    inject_guest(v, Kind::Undefined, 0);
    Outcome::Resume
}

/// Delivers a synchronous exception to the guest's EL1 (whose registers are
/// loaded in the hardware).
fn inject_guest(v: &mut Vcpu, kind: Kind, far: u64) {
    let features = crate::BOOT.get().map(|b| b.config.features.inject).unwrap_or_default();
    let from = Interrupted {
        spsr: v.state.pstate,
        elr: v.state.pc,
        far,
        vbar_el1: arch::vbar_el1(),
        sctlr_el1: arch::sctlr_el1(),
    };
    match inject::compute(kind, &from, features) {
        Some(i) => {
            // SAFETY: the guest is loaded but not running; these registers
            // describe the exception it will take at its next entry.
            unsafe {
                arch::set_esr_el1(i.esr_el1);
                if let Some(far) = i.far_el1 {
                    arch::set_far_el1(far);
                }
                arch::set_elr_el1(i.elr_el1);
                arch::set_spsr_el1(i.spsr_el1);
            }
            v.state.pc = i.elr_el2;
            v.state.pstate = i.spsr_el2;
        }
        // The guest trapped from a state it cannot be in: stop the vCPU.
        None => v.halted = true,
    }
}

/// `ICC_SGI1R_EL1` (op2 5), `ICC_ASGI1R_EL1` (op2 6), `ICC_SGI0R_EL1` (op2
/// 7): op0 3, op1 0, CRn 12, CRm 11, written by the guest (they trap to EL2
/// while `HCR_EL2.IMO`/`FMO` route interrupts to the virtual interface).
/// Returns whether the register is the Group 0 one; `None` for any other
/// register or a read (which is undefined).
fn sgi_register(access: &SysregAccess) -> Option<bool> {
    match access.encoding {
        (3, 0, 12, 11, 5 | 6) if !access.read => Some(false),
        (3, 0, 12, 11, 7) if !access.read => Some(true),
        _ => None,
    }
}

/// A guest's SGI: makes SGI `INTID` pending for every target vCPU of the
/// same VM. vCPU *i* has affinity 0.0.0.*i* (`VMPIDR_EL2`), so with
/// `IRM` = 0 only `Aff3.Aff2.Aff1` = 0 with `RS` = 0 names vCPUs (target
/// list bit *i*); `IRM` = 1 names every vCPU but the sender. Targets that do
/// not exist are ignored, as the architecture ignores absent PEs. Group 0
/// SGIs are delivered as Group 1, the only group guests use (Linux uses
/// Group 1 SGIs); the decoding is `rampart_platform::trap::SgiTargets`'
/// job, unit-tested there. Each target sees it at its next entry; returns
/// the bitmap of the *other* vCPUs targeted, for the host to wake.
fn send_sgi(slot: usize, v: &mut Vcpu, value: u64, _group0: bool) -> u64 {
    let targets = rampart_platform::trap::SgiTargets::decode(value);
    let intid = targets.intid;
    let mut others = 0;
    for index in 0..VCPU_SLOTS[slot].len() {
        if !targets.includes(index, v.index) {
            continue;
        }
        if index == v.index {
            let _ = queue(v, intid);
        } else if vm::VCPU_EXISTS[slot][index].load(Ordering::Acquire) {
            let word = &vm::VCPU_PENDING[slot][index][0];
            word.fetch_or(1 << intid, Ordering::AcqRel);
            mark_pending(slot, index);
            others |= 1 << index;
        }
    }
    others
}

/// Whether the loaded guest has an interrupt it could take now or soon:
/// queued, injected by the host or another vCPU, in a list register as
/// pending, or its virtual timer's condition met (unmasked).
fn interrupt_pending(slot: usize, v: &Vcpu) -> bool {
    if v.pending_count != 0 {
        return true;
    }
    if vm::VCPU_PENDING[slot][v.index].iter().any(|w| w.load(Ordering::Acquire) != 0) {
        return true;
    }
    for n in 0..guest::list_register_count().min(4) {
        if guest::read_lr(n) & STATE_MASK == PENDING {
            return true;
        }
    }
    let ctl = arch::cntv_ctl_el0();
    ctl & 0b111 == 0b101
}

/// The guest's virtual-timer deadline for an `EXIT_WAIT` (`x3`): its
/// `CNTV_CVAL_EL0` (virtual count, equal to the physical count: `CNTVOFF_EL2`
/// is 0) if the timer is enabled and unmasked, else `WAIT_NO_DEADLINE`.
/// The VMM may sleep until then, or until it injects something.
fn timer_deadline() -> u64 {
    let ctl = arch::cntv_ctl_el0();
    if ctl & 0b11 == 0b01 { arch::cntv_cval_el0() } else { rampart_abi::host::WAIT_NO_DEADLINE }
}
