//! Handling the host's traps: hypercalls, SMCs and stage-2 faults.

use rampart_abi::host::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR, HostCall, HostRequest};
use rampart_abi::{Error, error::SUCCESS};
use rampart_platform::inject::{self, AbortDecision, AbortHistory, Interrupted, Kind};
use rampart_platform::smc::{self, SmcAction, psci};

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rampart_platform::MemRange;
use rampart_platform::cache as cache_seq;
use spin::Once;
use spin::mutex::SpinMutex;

use crate::arch::cache::{self as cache, El2Cache};
use crate::arch::{self, Frame};
use crate::config::MAX_CPUS;
use crate::cpu::{self, Power};
use crate::println;

const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_IABT_LOWER: u64 = 0x20;
const EC_DABT_LOWER: u64 = 0x24;
const ESR_WNR: u64 = 1 << 6;
const ESR_FNV: u64 = 1 << 10;

/// Handles a synchronous exception from the host. A CPU that enters EL2
/// while another wipes memory for a reset stops here for good.
pub fn handle_sync(frame: &mut Frame) {
    let me = cpu::current() % MAX_CPUS;
    // Announce first, then look (the wiping CPU does the reverse): one of
    // the two sees the other.
    IN_EL2[me].store(true, Ordering::SeqCst);
    park_if_dying();
    handle_sync_inner(frame);
    IN_EL2[me].store(false, Ordering::SeqCst);
}

fn handle_sync_inner(frame: &mut Frame) {
    let esr = arch::esr_el2();
    match (esr >> 26) & 0x3f {
        EC_HVC64 => hypercall(frame, esr & 0xffff),
        EC_SMC64 => {
            // A trapped SMC returns to the SMC itself; step over it.
            // SAFETY: the host resumes at the next instruction, as it would
            // after an SMC that firmware handled.
            unsafe { arch::set_elr_el2(arch::elr_el2().wrapping_add(4)) };
            host_smc(frame);
        }
        EC_DABT_LOWER => {
            let ipa = ((arch::hpfar_el2() >> 4) & 0xff_ffff_ffff) << 12 | (arch::far_el2() & 0xfff);
            if crate::control::handle(ipa, esr, frame) || crate::gicr_guard::handle(ipa, esr, frame) {
                return;
            }
            if !retry_after_race() {
                inject_abort(Kind::DataAbort { write: esr & ESR_WNR != 0, far_not_valid: esr & ESR_FNV != 0 });
            }
        }
        EC_IABT_LOWER => {
            if !retry_after_race() {
                inject_abort(Kind::InstructionAbort { far_not_valid: esr & ESR_FNV != 0 });
            }
        }
        // Nothing else is trapped on purpose; whatever it was, the host
        // sees an undefined instruction.
        _ => inject_into_host(Kind::Undefined),
    }
}

/// The low 32 bits of a register: SMCCC function IDs are passed in `w0`
/// (and PSCI_FEATURES / ARCH_FEATURES take one in `w1`); the upper half is
/// ignored by definition.
#[allow(clippy::cast_possible_truncation, reason = "SMCCC reads w registers")]
fn lower32(x: u64) -> u32 {
    x as u32
}

/// A stage-2 fault on a page the host may reach happens only while the
/// hypervisor rewrites that mapping on another CPU; the page is mapped
/// again and the access retried. Returns whether that was the case.
fn retry_after_race() -> bool {
    // HPFAR_EL2.FIPA holds IPA[51:12] in bits [43:4].
    let ipa = ((arch::hpfar_el2() >> 4) & 0xff_ffff_ffff) << 12;
    crate::memory::handle_host_fault(ipa)
}

/// Sets the SMCCC result registers.
/// The host's hot calls (the memory calls and `VCPU_RUN`) decoded straight
/// from the registers: exactly `HostRequest::decode`'s checks (the
/// function ID in `w0`, then `PageRange::new` / `VcpuRef::new` on the same
/// registers), without building and copying the 112-byte request (about
/// 150 EL2 instructions a call). `false`, having done nothing, for every
/// other call.
fn fast_call(regs: &mut [u64; 18]) -> bool {
    #[allow(clippy::cast_possible_truncation, reason = "SMCCC function IDs are w0")]
    let function = regs[0] as u32;
    if let Some(result) = crate::memory::host_call_from_regs(function, regs[1], regs[2]) {
        ret_code(regs, result.map_or_else(Error::code, |()| SUCCESS));
        return true;
    }
    if function != HostCall::VcpuRun as u32 {
        return false;
    }
    vcpu_run(regs);
    true
}

/// `VCPU_RUN` on its registers (`x0` = its function ID).
#[inline]
fn vcpu_run(regs: &mut [u64; 18]) {
    use rampart_abi::host::{VcpuRef, VmHandle};
    match VcpuRef::new(VmHandle(regs[1]), regs[2]).and_then(|vcpu| crate::vcpu::run(vcpu, regs[3])) {
        Ok(record) => {
            // Tested here: `poll_events` saves six register pairs before
            // its own test (19 instructions on every exit without an SMMU).
            if crate::smmu::active() {
                crate::smmu::poll_events();
            }
            // Four stores: `copy_from_slice` here became a `memcpy` call
            // (45 instructions on every exit to the host).
            let [reason, a, b, c] = record;
            regs[0] = SUCCESS as u64;
            regs[1] = reason;
            regs[2] = a;
            regs[3] = b;
            regs[4] = c;
        }
        Err(e) => ret_code(regs, e.code()),
    }
}

/// The host's `HVC #0` with `VCPU_RUN`'s function ID in `w0`, straight
/// from the exception vector (`exceptions::host_vcpu_run`): exactly what
/// `handle_sync` does for it (the announcement a CPU wiping memory for a
/// reset waits on, `park_if_dying`, then `dispatch`'s `VCPU_RUN` arm),
/// without the layers in between. Oracle builds go through `dispatch`,
/// which the oracle wraps.
pub fn vcpu_run_call(regs: &mut [u64; 18]) {
    let me = cpu::current() % MAX_CPUS;
    IN_EL2[me].store(true, Ordering::SeqCst);
    park_if_dying();
    #[cfg(feature = "oracle")]
    dispatch(regs);
    #[cfg(not(feature = "oracle"))]
    vcpu_run(regs);
    IN_EL2[me].store(false, Ordering::SeqCst);
}

fn ret(regs: &mut [u64], values: [u64; 4]) {
    regs[..4].copy_from_slice(&values);
}

fn ret_code(regs: &mut [u64], code: i64) {
    regs[0] = code as u64;
}

/// Host hypercalls (`HVC #0`, SMCCC fast calls).
fn hypercall(frame: &mut Frame, immediate: u64) {
    if immediate != 0 {
        frame.x[0] = Error::NotSupported.code() as u64;
        return;
    }
    if let Some(regs) = frame.x.first_chunk_mut::<18>() {
        dispatch(regs);
    }
}

/// Runs one host call on its registers (`x0`..`x17`), from `HVC #0` or a
/// control-page doorbell alike; the results replace them.
pub fn dispatch(regs: &mut [u64; 18]) {
    #[cfg(feature = "oracle")]
    crate::oracle::host_call(regs, run_call);
    #[cfg(not(feature = "oracle"))]
    run_call(regs);
}

/// [`dispatch`] itself (the oracle, in test builds, watches it run).
fn run_call(regs: &mut [u64; 18]) {
    if fast_call(regs) {
        return;
    }
    let result = match HostRequest::decode(regs) {
        Ok(HostRequest::Version) => {
            return ret(regs, [SUCCESS as u64, ABI_VERSION_MAJOR, ABI_VERSION_MINOR, 0]);
        }
        Ok(HostRequest::Features(function)) => match HostCall::try_from(function) {
            // Only a test build with the oracle has ORACLE_CHECK.
            Ok(HostCall::OracleCheck) if !cfg!(feature = "oracle") => Err(Error::NotSupported),
            other => other.map(|_| ()),
        },
        // Answered by the oracle itself in builds that have it.
        Ok(HostRequest::OracleCheck) => Err(Error::NotSupported),
        Ok(
            memory_request @ (HostRequest::ShareHyp(_)
            | HostRequest::UnshareHyp(_)
            | HostRequest::DonateHyp(_)
            | HostRequest::ReclaimHyp(_)),
        ) => crate::memory::host_call(memory_request),
        Ok(HostRequest::VmCreate { metadata, config }) => match crate::vm::create_as(metadata, config, regs[3] & rampart_abi::host::VmConfig::REALM != 0) {
            Ok(handle) => return ret(regs, [SUCCESS as u64, handle.0, 0, 0]),
            Err(e) => Err(e),
        },
        Ok(HostRequest::VmDestroy(handle)) => crate::vm::destroy(handle),
        Ok(HostRequest::VcpuCreate(vcpu)) => crate::vm::create_vcpu(vcpu),
        Ok(HostRequest::VmDonate { vm, pages, guest_address }) => crate::vm::give_memory(vm, pages, guest_address, false),
        Ok(HostRequest::VmShare { vm, pages, guest_address }) => crate::vm::give_memory(vm, pages, guest_address, true),
        Ok(HostRequest::VmDonateZeroed { vm, pages, guest_address }) => crate::vm::donate_zeroed(vm, pages, guest_address),
        Ok(HostRequest::VmDeclareZero { vm, guest_address, pages }) => crate::vm::declare_zero(vm, guest_address, pages),
        Ok(HostRequest::VcpuSetRegs { vcpu, pc, x0 }) => crate::vcpu::set_regs(vcpu, pc, x0),
        Ok(HostRequest::VcpuRun { vcpu, mmio_read_value }) => match crate::vcpu::run(vcpu, mmio_read_value) {
            Ok(record) => {
                crate::smmu::poll_events();
                regs[0] = SUCCESS as u64;
                regs[1..5].copy_from_slice(&record);
                return;
            }
            Err(e) => Err(e),
        },
        Ok(HostRequest::VcpuInject { vcpu, intid, level: false }) => crate::vcpu::inject_irq(vcpu, intid),
        Ok(HostRequest::VcpuInject { vcpu, intid, level: true }) => crate::vcpu::inject_level_irq(vcpu, intid),
        Ok(HostRequest::VmSetSignature { vm, signer, signature }) => crate::vm::set_signature(vm, signer, signature),
        Ok(HostRequest::VmEvict { vm, guest_address, sealed }) => match crate::swap::evict(vm, guest_address, sealed) {
            Ok((version, tag)) => {
                let tag: [u64; 2] = rampart_abi::host::bytes_to_words(&tag);
                return ret(regs, [SUCCESS as u64, version, tag[0], tag[1]]);
            }
            Err(e) => Err(e),
        },
        Ok(HostRequest::VmRestore { vm, guest_address, sealed, fresh, version, tag }) => {
            crate::swap::restore(vm, guest_address, sealed, fresh, version, tag)
        }
        Ok(HostRequest::VmList(after)) => return ret(regs, [SUCCESS as u64, crate::vm::list_after(after), 0, 0]),
        Ok(HostRequest::AttestationKey) => match crate::security::attestation_public_key() {
            Ok(key) => {
                let words: [u64; 4] = rampart_abi::host::bytes_to_words(&key);
                regs[0] = SUCCESS as u64;
                regs[1..5].copy_from_slice(&words);
                return;
            }
            Err(e) => Err(e),
        },
        // Migration (issue 14): hyp/src/migrate.rs.
        Ok(HostRequest::VmImportBegin) => match crate::migrate::import_begin() {
            Ok(challenge) => {
                let words: [u64; 2] = rampart_abi::host::bytes_to_words(&challenge);
                return ret(regs, [SUCCESS as u64, words[0], words[1], 0]);
            }
            Err(e) => Err(e),
        },
        Ok(HostRequest::VmExport { vm, buffer, challenge, destination }) => {
            match crate::migrate::export(vm, buffer, challenge, destination) {
                Ok((written, done)) => return ret(regs, [SUCCESS as u64, written, u64::from(done), 0]),
                Err(e) => Err(e),
            }
        }
        Ok(HostRequest::VmImport { metadata, address, bytes }) => match crate::migrate::import(metadata, address, bytes) {
            Ok((handle, consumed)) => return ret(regs, [SUCCESS as u64, handle.0, consumed, 0]),
            Err(e) => Err(e),
        },
        Ok(HostRequest::VmImportData { vm, address, bytes }) => match crate::migrate::import_data(vm, address, bytes) {
            Ok((consumed, done)) => return ret(regs, [SUCCESS as u64, consumed, u64::from(done), 0]),
            Err(e) => Err(e),
        },
        // issue 12: a realm's RSI_HOST_CALL (hyp/src/rsi.rs).
        Ok(HostRequest::VcpuHostCallGet { vcpu, first }) => match crate::rsi::host_call_get(vcpu, first) {
            Ok(words) => {
                regs[0] = SUCCESS as u64;
                regs[1..9].copy_from_slice(&words);
                return;
            }
            Err(e) => Err(e),
        },
        Ok(HostRequest::VcpuHostCallSet { vcpu, first, values }) => crate::rsi::host_call_set(vcpu, first, values),
        Err(e) => Err(e),
    };
    ret_code(regs, result.map_or_else(Error::code, |()| SUCCESS));
}

fn forward(function: u32, frame: &Frame) -> [u64; 4] {
    let mut args = [0u64; 17];
    args.copy_from_slice(&frame.x[1..18]);
    arch::smc(function, &args)
}

/// Host SMCs: PSCI relay, the firmware allow-list, and refusal.
fn host_smc(frame: &mut Frame) {
    let function = lower32(frame.x[0]);
    let firmware = *crate::FIRMWARE.get().unwrap_or(&smc::Firmware::default());
    let is_32 = function & (1 << 30) == 0;
    let arg = |i: usize| if is_32 { frame.x[i] & 0xffff_ffff } else { frame.x[i] };
    match smc::classify(function, firmware) {
        SmcAction::Answer(code) => ret_code(&mut frame.x, code),
        SmcAction::Forward => {
            let r = forward(function, frame);
            ret(&mut frame.x, r);
        }
        SmcAction::PsciFeatures => match smc::psci_features(lower32(frame.x[1]), firmware) {
            Some(code) => ret_code(&mut frame.x, code),
            None => {
                let r = forward(function, frame);
                ret(&mut frame.x, r);
            }
        },
        SmcAction::ArchFeatures => match smc::arch_features(lower32(frame.x[1]), firmware) {
            Some(code) => ret_code(&mut frame.x, code),
            None => {
                let r = forward(function, frame);
                ret(&mut frame.x, r);
            }
        },
        SmcAction::CpuOn => {
            let code = cpu_on(arg(1), arg(2), arg(3));
            ret_code(&mut frame.x, code);
        }
        SmcAction::CpuOff => {
            let code = cpu_off();
            ret_code(&mut frame.x, code);
        }
        SmcAction::CpuSuspend => {
            let code = cpu_suspend(function, arg(1), arg(2), arg(3));
            ret_code(&mut frame.x, code);
        }
        SmcAction::SystemReset => {
            let reset2 = matches!(function, psci::SYSTEM_RESET2_32 | psci::SYSTEM_RESET2_64);
            if reset2 && !smc::reset2_type_allowed(lower32(frame.x[1])) {
                return ret_code(&mut frame.x, psci::INVALID_PARAMETERS);
            }
            let (x1, x2) = if reset2 { (arg(1), arg(2)) } else { (0, 0) };
            wipe_and_reset(function, x1, x2);
        }
    }
}

/// MPIDR bits that name a CPU (Aff3, Aff2, Aff1, Aff0).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// CPU_ON from the host: start the target at Rampart's entry, which sets
/// up EL2 there and then enters the host's `entry` with `context`.
fn cpu_on(target: u64, entry: u64, context: u64) -> i64 {
    let Some(boot) = crate::BOOT.get() else { return psci::INTERNAL_FAILURE };
    let Some(index) = cpu::cpus()
        .iter()
        .position(|c| c.mpidr.load(core::sync::atomic::Ordering::Relaxed) == target & MPIDR_AFFINITY)
    else {
        return psci::INVALID_PARAMETERS;
    };
    let Some(cpu) = cpu::cpus().get(index) else { return psci::INVALID_PARAMETERS };
    if target & !MPIDR_AFFINITY & !(1 << 31) != 0 {
        return psci::INVALID_PARAMETERS;
    }
    if !boot.host_ram.iter().any(|r| r.contains(entry)) || !entry.is_multiple_of(4) {
        return PSCI_INVALID_ADDRESS;
    }
    match cpu.transition(Power::Off, Power::Pending) {
        Ok(()) => {}
        Err(Power::Pending) => return psci::ON_PENDING,
        Err(_) => return psci::ALREADY_ON,
    }
    cpu.host_entry.store(entry, core::sync::atomic::Ordering::Relaxed);
    cpu.host_context.store(context, core::sync::atomic::Ordering::Release);
    let mut args = [0u64; 17];
    args[0] = target;
    args[1] = arch::secondary_entry_address();
    args[2] = index as u64;
    let code = arch::smc(psci::CPU_ON_64, &args)[0] as i64;
    if code != psci::SUCCESS {
        cpu.set_power(Power::Off);
    }
    code
}

const PSCI_INVALID_ADDRESS: i64 = psci::INVALID_ADDRESS;

/// CPU_OFF from the host. Returns only if firmware refuses.
fn cpu_off() -> i64 {
    let me = cpu::this();
    me.set_power(Power::Off);
    let code = arch::smc(psci::CPU_OFF, &[0; 17])[0] as i64;
    me.set_power(Power::On);
    code
}

/// CPU_SUSPEND from the host. A power-down state resumes at Rampart's
/// entry, which re-initialises EL2 and enters the host's `entry`.
fn cpu_suspend(function: u32, power_state: u64, entry: u64, context: u64) -> i64 {
    let Some(boot) = crate::BOOT.get() else { return psci::INTERNAL_FAILURE };
    let powerdown = power_state & psci::POWER_STATE_TYPE_POWERDOWN != 0;
    if powerdown && (!boot.host_ram.iter().any(|r| r.contains(entry)) || !entry.is_multiple_of(4)) {
        return PSCI_INVALID_ADDRESS;
    }
    let me = cpu::this();
    me.host_entry.store(entry, core::sync::atomic::Ordering::Relaxed);
    me.host_context.store(context, core::sync::atomic::Ordering::Release);
    let mut args = [0u64; 17];
    args[0] = power_state;
    args[1] = arch::secondary_entry_address();
    args[2] = cpu::current() as u64;
    arch::smc(function, &args)[0] as i64
}

/// Per CPU: what it last injected into the host (only that CPU locks it).
static ABORTS: [SpinMutex<AbortHistory>; MAX_CPUS] = [const { SpinMutex::new(AbortHistory::NEW) }; MAX_CPUS];

/// An abort for a host access to memory it does not own: a synchronous
/// external abort, with two exceptions for a host kernel that gave away
/// pages it uses itself (`rampart_platform::inject::AbortHistory`,
/// `docs/abi.md`, *Illegal host access*):
///
/// - A kernel read of an upper-half address in the page its previous abort
///   on this CPU was on, by another instruction, is its abort path looking
///   at that page: Linux's oops dumps the instructions at the faulting PC.
///   Linux (6.1) cannot take an external abort there — `do_sea` has no
///   exception-table fixup, re-enters `die()` and deadlocks on `die_lock`,
///   silently — so this read gets a level-3 permission fault, which the
///   no-fault accessor's fixup handles (`Code: bad PC value`). No data.
/// - When the kernel faults at the same instruction and address again and
///   again, it cannot take the abort at all — its vector table, its stack
///   or its page tables are gone, so every delivery faults once more — and
///   would spin between EL1 and EL2 without a word. The hypervisor says so
///   on the console and resets the machine (through the wipe), as Linux
///   does after a fatal oops with `panic=-1`.
fn inject_abort(kind: Kind) {
    let me = cpu::current() % MAX_CPUS;
    let (spsr, elr, far) = (arch::spsr_el2(), arch::elr_el2(), arch::far_el2());
    let from_kernel = matches!(spsr & 0x1f, 0b0100 | 0b0101);
    let decision = ABORTS[me].lock().decide(kind, from_kernel, elr, far, arch::elr_el1());
    match decision {
        AbortDecision::Inject(kind) => inject_into_host(kind),
        AbortDecision::Stuck(times) => {
            println!(
                "host CPU {me} cannot take the abort for its access to {far:#x} at {elr:#x}: it faulted there {times} times in a row, so the host gave away memory its own exception path needs (vectors, stack or page tables); resetting"
            );
            wipe_and_reset(psci::SYSTEM_RESET, 0, 0);
        }
    }
}

/// Delivers a synchronous exception to the host's EL1 vector, as the
/// hardware would have.
fn inject_into_host(kind: Kind) {
    let features = crate::BOOT.get().map(|b| b.config.features.inject).unwrap_or_default();
    let from = Interrupted {
        spsr: arch::spsr_el2(),
        elr: arch::elr_el2(),
        far: arch::far_el2(),
        vbar_el1: arch::vbar_el1(),
        sctlr_el1: arch::sctlr_el1(),
    };
    let Some(injection) = inject::compute(kind, &from, features) else {
        println!("host trapped from an impossible state: SPSR_EL2 {:#x}", from.spsr);
        crate::power_off();
    };
    // SAFETY: these registers describe the exception to the host's EL1 and
    // where it resumes; none of them affects the hypervisor's own state.
    unsafe {
        arch::set_esr_el1(injection.esr_el1);
        if let Some(far) = injection.far_el1 {
            arch::set_far_el1(far);
        }
        arch::set_elr_el1(injection.elr_el1);
        arch::set_spsr_el1(injection.spsr_el1);
        arch::set_elr_el2(injection.elr_el2);
        arch::set_spsr_el2(injection.spsr_el2);
    }
}

// ---------------------------------------------------------------------------
// Reset and power-off: nothing protected survives in DRAM.

/// What a reset wipes, fixed at boot.
pub struct ResetPlan {
    /// RAM banks.
    pub ram: alloc::vec::Vec<MemRange>,
    /// The carve-out's fixed part.
    pub carveout: MemRange,
    /// The carve-out's boot-sized part: the ownership table, per-CPU state
    /// and the secondary CPUs' stacks (sealing-key derivations on stacks).
    pub boot_sized: MemRange,
    /// The hypervisor's writable memory in the fixed part: data, bss, the
    /// boot CPU's stack, the heap and the page pool (the device secret, the
    /// attestation key, page tables).
    pub hyp_data: MemRange,
}

static RESET_PLAN: Once<ResetPlan> = Once::new();

/// Records what a reset must wipe (boot, once the memory layout is known).
pub fn init_reset(plan: ResetPlan) {
    RESET_PLAN.call_once(|| plan);
}

const NOBODY: usize = usize::MAX;
/// The CPU wiping memory for a reset, or [`NOBODY`].
static DYING: AtomicUsize = AtomicUsize::new(NOBODY);
/// CPUs inside a host call at EL2 (which includes running a guest).
static IN_EL2: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// CPUs stopped because a reset is under way.
static PARKED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// The SGI that makes a CPU running a guest leave it.
const KICK_SGI: u64 = 15;

/// Stops this CPU for good if another CPU is wiping memory for a reset.
/// Called at every entry from the host and after every guest exit, before
/// anything else is done.
#[inline]
pub fn park_if_dying() {
    let dying = DYING.load(Ordering::SeqCst);
    if dying == NOBODY {
        return;
    }
    let me = cpu::current() % MAX_CPUS;
    if dying != me {
        PARKED[me].store(true, Ordering::SeqCst);
        arch::halt();
    }
}

/// Waits (at most about 100 ms) until every other CPU is outside EL2 — in
/// the host, which cannot reach any page a reset wipes — or parked.
fn wait_for_others(cpu_count: usize) -> (usize, usize) {
    let me = cpu::current() % MAX_CPUS;
    let ticks = (cache::counter_frequency() / 10).max(1_000_000);
    let deadline = cache::counter().saturating_add(ticks);
    let quiet = |i: usize| !IN_EL2[i].load(Ordering::SeqCst) || PARKED[i].load(Ordering::SeqCst);
    let others = (0..cpu_count.min(MAX_CPUS)).filter(|&i| i != me);
    while others.clone().any(|i| !quiet(i)) && cache::counter() < deadline {
        core::hint::spin_loop();
    }
    let parked = others.clone().filter(|&i| PARKED[i].load(Ordering::SeqCst)).count();
    let busy = others.filter(|&i| !quiet(i)).count();
    (parked, busy)
}

/// SYSTEM_OFF, SYSTEM_RESET and SYSTEM_RESET2 (`function`, with `x1`, `x2`
/// for SYSTEM_RESET2), and every power-off of the hypervisor's own:
///
/// 1. claims the reset (a second CPU asking parks; EL2 entries on every
///    other CPU park from now on), kicks CPUs running guests with an SGI
///    and waits, bounded, for every other CPU to be parked or in the host;
/// 2. zeroes every page of RAM the host does not own (guests' pages,
///    VM metadata: vCPU registers and stage-2 tables) through the cache and
///    cleans it to the point of coherency; drops every guest translation
///    (a guest still running on a CPU that did not stop faults from now
///    on), waits again, and does it a second time;
/// 3. cleans the hypervisor's own memory to the point of coherency, turns
///    the MMU off, and — if step 2 was impossible (the ownership lock or
///    page-table memory unavailable, as after a panic) — zeroes all of RAM
///    outside the carve-out instead;
/// 4. zeroes the hypervisor's writable memory (secrets, keys, stacks,
///    tables) and calls firmware. It never returns to the host.
pub fn wipe_and_reset(function: u32, x1: u64, x2: u64) -> ! {
    let me = cpu::current() % MAX_CPUS;
    let Some(plan) = RESET_PLAN.get() else {
        // Boot has not laid out memory yet: there is nothing to protect.
        let mut args = [0u64; 17];
        args[0] = x1;
        args[1] = x2;
        let _ = arch::smc(function, &args);
        arch::halt()
    };
    let emergency = match DYING.compare_exchange(NOBODY, me, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => false,
        // This CPU failed part-way through its own wipe: wipe everything.
        Err(owner) if owner == me => true,
        Err(_) => {
            PARKED[me].store(true, Ordering::SeqCst);
            arch::halt()
        }
    };
    let mut scrubbed_pages = 0u64;
    let mut wiped_pages_selectively = false;
    let started = cache::counter();
    if !emergency {
        let cpu_count = crate::BOOT.get().map_or(MAX_CPUS, |b| b.cpu_count);
        if crate::BOOT.get().is_some_and(|b| b.config.features.gic_sysregs) {
            cache::sgi_to_others(KICK_SGI);
        }
        let (parked, busy) = wait_for_others(cpu_count);
        let ticks = (cache::counter_frequency() / 10).max(1_000_000);
        let deadline = cache::counter().saturating_add(ticks);
        let mut ops = El2Cache::new();
        let mut second = (parked, busy);
        wiped_pages_selectively = crate::memory::scrub_for_reset(
            &mut || cache::counter() < deadline,
            &mut |range| {
                // SAFETY: `scrub_for_reset` maps the range at EL2 for this
                // call; the host cannot reach it (it does not own it), no
                // Rust reference points into it, and the guests that did
                // own it never run again.
                unsafe { crate::mm::zero(range) };
                cache_seq::scrub_then_release(&mut ops, range);
                scrubbed_pages += range.size() / rampart_platform::PAGE_SIZE;
            },
            &mut || {
                cache::tlbi_all_guests();
                second = wait_for_others(cpu_count);
            },
        );
        let name = match function {
            psci::SYSTEM_OFF => "SYSTEM_OFF",
            psci::SYSTEM_RESET => "SYSTEM_RESET",
            _ => "SYSTEM_RESET2",
        };
        // Nothing here allocates: this may run after a panic.
        let micros = cache::counter().wrapping_sub(started).saturating_mul(1_000_000) / cache::counter_frequency().max(1);
        if wiped_pages_selectively {
            println!(
                "{name}: {parked} other CPUs parked, {busy} still busy (after the first pass: {} parked, {} busy); {} pages the host does not own zeroed twice in {micros} us, then the hypervisor's memory",
                second.0,
                second.1,
                scrubbed_pages / 2
            );
        } else {
            println!("{name}: {parked} other CPUs parked, {busy} still busy; ownership table unavailable: zeroing all RAM");
        }
    }
    // This CPU's stack slot: in `hyp_data` for the boot CPU, else in the
    // boot-sized part. Empty (harmless) if this CPU had none.
    let (slot_start, slot_end) = arch::slot_range(me);
    let stack = MemRange::new(slot_start, slot_end).unwrap_or(plan.hyp_data);
    // SAFETY: `hyp_data` and this CPU's stack hold every value read from
    // here on, and are mapped at EL2; this CPU never returns to the host.
    unsafe { cache::clean_and_disable_mmu([plan.hyp_data, stack]) };
    let mut wipe = |part: MemRange| {
        // SAFETY: the MMU is off; `part` is RAM outside the fixed carve-out
        // and this CPU's stack: nothing this CPU still uses.
        unsafe { cache::wipe_uncached(part) };
    };
    if !wiped_pages_selectively {
        for bank in &plan.ram {
            cache_seq::outside_each(*bank, &[plan.carveout, plan.boot_sized], &mut wipe);
        }
    }
    // The boot-sized part (the ownership table, per-CPU state, the other
    // CPUs' stacks), except the stack this CPU runs on.
    cache_seq::outside_each(plan.boot_sized, &[stack], &mut wipe);
    // SAFETY: the MMU is off; the routine uses only registers while it
    // zeroes the hypervisor's writable memory and this stack.
    unsafe { cache::wipe_uncached_then_smc([plan.hyp_data, stack], function, x1, x2) }
}
