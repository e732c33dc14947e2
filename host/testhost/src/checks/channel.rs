//! The control pages' call page (host ABI 0.6, `docs/abi.md` "The control
//! pages"): a page of host RAM bound to a channel carries a call's
//! registers, and one trapped store to the channel's `CALL` doorbell makes
//! the call.
//!
//! Hostile cases: a call on a channel with no page bound is refused (an
//! abort); only a page the host shared with the hypervisor can be bound,
//! page-aligned, to one channel at a time; while it is bound, no ownership
//! change can take it (`UNSHARE_HYP` is `BUSY`, `SHARE_HYP`, `DONATE_HYP`,
//! `RECLAIM_HYP`, `VM_DONATE` and `VM_SHARE` are `DENIED`); after an unbind it is the host's to
//! unshare again and the channel refuses calls again.
//!
//! `control-contention`: another CPU that only reads a channel's registers
//! (a stray reader, or a hostile one) must not make the channel's owner's
//! register accesses abort: a register access waits for another CPU's
//! register access; only a call in flight on another CPU refuses it.

use rampart_abi::Error;
use core::sync::atomic::{AtomicU64, Ordering};

use rampart_abi::boot::control::{BIND, CALL, CHANNELS, DOORBELL};
use rampart_abi::host::HostCall::{self, DonateHyp, ReclaimHyp, ShareHyp, UnshareHyp};
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR};

use super::carveout::expect_abort;
use super::ownership::{Layout, OK, PAGE, expect, raw_call, short};
use crate::arch::{self, Access};
use crate::cpus::{self, ARRIVALS, SLOTS, TASK, TASK_PARK};
use crate::psci;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, msg, note};

const BUSY: i64 = Error::Busy.code();
const DENIED: i64 = Error::Denied.code();
const INVALID: i64 = Error::InvalidParameter.code();

/// Binds `page` (0: unbinds) to the channel at `channel`; returns the
/// result code the channel's `x0` holds afterwards.
fn bind(channel: u64, page: u64) -> i64 {
    arch::mmio_write64(channel + BIND, page);
    arch::mmio_read64(channel) as i64
}

/// Expects binding `page` to `channel` to return `want`.
fn expect_bind(channel: u64, page: u64, want: i64, what: &str) -> Result<(), Msg> {
    let got = bind(channel, page);
    ensure!(
        got == want,
        "BIND {page:#x} ({what}) on channel {channel:#x} returned {got}, expected {want}"
    );
    Ok(())
}

/// A call through the call page `page` of `channel`: `regs` in, one store
/// to `CALL`, the results out.
fn call(channel: u64, page: u64, regs: &[u64; 18]) -> [u64; 18] {
    for (i, v) in regs.iter().enumerate() {
        arch::mmio_write64(page + 8 * i as u64, *v);
    }
    arch::mmio_write64(channel + CALL, 0);
    core::array::from_fn(|i| arch::mmio_read64(page + 8 * i as u64))
}

/// Registers for call `id` with `args` in `x1`.. and a pattern after them.
fn request(id: HostCall, args: &[u64]) -> [u64; 18] {
    core::array::from_fn(|i| match i {
        0 => u64::from(id.id()),
        i if i <= args.len() => args[i - 1],
        i => 0x5a5a_0000 + i as u64,
    })
}

/// `control-call-page`: see the module documentation.
pub fn control_call_page(p: &Platform) -> Result<(), Msg> {
    let control = p
        .control_pages()
        .ok_or_else(|| msg!("no rampart,control node in the DT"))?;
    ensure!(
        control.size() == CHANNELS * PAGE,
        "the control pages {control} are not {CHANNELS} pages"
    );
    let l = Layout::find(p)?;
    // Pages of scratch block 0 no other check uses.
    let page = l.block(0) + 300 * PAGE;
    let other = page + PAGE;
    // The last two channels (the fuzz mode's CPUs start at channel 0).
    let ch = control.start + (CHANNELS - 1) * PAGE;
    let ch2 = control.start + (CHANNELS - 2) * PAGE;
    let result = (|| {
        // Nothing bound: the call doorbell refuses, so does an unbind.
        expect_abort(Access::Store, ch + CALL).map_err(|m| msg!("CALL with no page bound: {m}"))?;
        expect_bind(ch, 0, INVALID, "unbind with nothing bound")?;
        // Only a page the host shared with the hypervisor.
        expect_bind(ch, page, DENIED, "a page the host did not share")?;
        expect_bind(ch, l.carveout.start, DENIED, "the carve-out")?;
        expect_bind(ch, control.start, DENIED, "a control page")?;
        expect_bind(ch, page + 8, INVALID, "not page-aligned")?;
        expect_abort(Access::Store, ch + CALL)
            .map_err(|m| msg!("CALL after refused binds: {m}"))?;

        expect(ShareHyp, page, 1, OK)?;
        expect(ShareHyp, other, 1, OK)?;
        expect_bind(ch, page, OK, "a shared page")?;
        expect_bind(ch, page, OK, "the page already bound")?;
        expect_bind(ch, other, BUSY, "a second page")?;
        expect_bind(ch2, page, BUSY, "a page bound to another channel")?;

        // Bound, the page is out of reach of every ownership change.
        for (c, want) in [
            (UnshareHyp, BUSY),
            (ShareHyp, DENIED),
            (DonateHyp, DENIED),
            (ReclaimHyp, DENIED),
        ] {
            expect(c, page, 1, want).map_err(|m| msg!("the bound call page: {m}"))?;
            // A range that only starts on it.
            let got = raw_call(c, page - PAGE, 2);
            ensure!(
                got != OK,
                "{}({:#x}, 2) over the bound call page succeeded",
                short(c),
                page - PAGE
            );
        }

        // Nor can a VM have it: given to a protected VM, lent to one that
        // is not.
        vm_refuses(p, page)?;

        // Calls through the page: VERSION, then a memory call with
        // arguments (SHARE_HYP, UNSHARE_HYP of the unbound shared page's
        // neighbour), each answered in the page.
        let r = call(ch, page, &request(HostCall::Version, &[]));
        ensure!(
            (r[0], r[1], r[2]) == (0, ABI_VERSION_MAJOR, ABI_VERSION_MINOR),
            "VERSION through the call page returned {:#x} {:#x} {:#x}",
            r[0],
            r[1],
            r[2]
        );
        let third = other + PAGE;
        for (c, want) in [(ShareHyp, OK), (ShareHyp, DENIED), (UnshareHyp, OK)] {
            let r = call(ch, page, &request(c, &[third, 1]));
            ensure!(
                r[0] as i64 == want,
                "{}({third:#x}, 1) through the call page returned {}, expected {want}",
                short(c),
                r[0] as i64
            );
        }
        // An unknown function: NOT_SUPPORTED, as over HVC.
        let mut bogus = request(HostCall::Version, &[]);
        bogus[0] = 0xc600_7fff;
        let r = call(ch, page, &bogus);
        ensure!(
            r[0] as i64 == Error::NotSupported.code(),
            "an unknown function through the call page returned {:#x}",
            r[0]
        );

        // The other channel still has nothing bound.
        expect_abort(Access::Store, ch2 + CALL)
            .map_err(|m| msg!("CALL on an unbound channel: {m}"))?;

        // Unbound, the page is the host's to unshare, and the channel
        // refuses calls again.
        expect_bind(ch, 0, OK, "unbind")?;
        expect_abort(Access::Store, ch + CALL).map_err(|m| msg!("CALL after the unbind: {m}"))?;
        expect(UnshareHyp, page, 1, OK)?;
        expect(UnshareHyp, other, 1, OK)?;
        note!(
            "control-call-page: channel {ch:#x}, page {page:#x}: bind, refusals and calls as documented"
        );
        Ok(())
    })();
    if result.is_err() {
        bind(ch, 0);
        bind(ch2, 0);
        for a in [page, other, other + PAGE] {
            raw_call(UnshareHyp, a, 1);
        }
    }
    result
}

/// `VM_DONATE` of the bound call `page` to a protected VM and `VM_SHARE`
/// of it to one that is not are both `DENIED` (two VMs made and destroyed
/// for it).
fn vm_refuses(p: &Platform, page: u64) -> Result<(), Msg> {
    let (mut arena, _) = super::vm::arena(p)?;
    let (protected, _) = super::vm::bare_vm(&mut arena, 1)?;
    let plain = super::vm::bare_unprotected_vm(&mut arena);
    let result = plain.and_then(|(plain, _)| {
        let mut r = Ok(());
        for (c, vm) in [(HostCall::VmDonate, protected), (HostCall::VmShare, plain)] {
            let got = psci::call_via(psci::Conduit::Hvc, c.id(), &[vm, page, 1, GUEST_RAM_BASE])[0] as i64;
            if got != DENIED && r.is_ok() {
                r = Err(msg!("{}(VM {vm:#x}, the bound call page {page:#x}) = {got}, expected DENIED", short(c)));
            }
        }
        let gone = psci::call_via(psci::Conduit::Hvc, HostCall::VmDestroy.id(), &[plain])[0] as i64;
        r.and(if gone == 0 { Ok(()) } else { Err(msg!("VM_DESTROY({plain:#x}) = {gone}")) })
    });
    let gone = psci::call_via(psci::Conduit::Hvc, HostCall::VmDestroy.id(), &[protected])[0] as i64;
    result?;
    ensure!(gone == 0, "VM_DESTROY({protected:#x}) = {gone}");
    Ok(())
}

/// `cpus::TASK`: read another CPU's channel registers until told to stop.
pub const TASK_CHANNEL_PEEK: u64 = 4;
/// `cpus::context_id` round of `control-contention`.
const ROUND: u64 = 0x50;
/// The peeked channel (set before the peeker starts).
static PEEK_CHANNEL: AtomicU64 = AtomicU64::new(0);
/// Non-zero: the peeker stops.
static PEEK_STOP: AtomicU64 = AtomicU64::new(0);
/// The peeker's loads, and how many of them aborted.
static PEEK_LOADS: AtomicU64 = AtomicU64::new(0);
static PEEK_ABORTS: AtomicU64 = AtomicU64::new(0);
/// Non-zero once the peeker finished.
static PEEK_DONE: AtomicU64 = AtomicU64::new(0);
/// How long the boot CPU keeps its own channel busy, and how long anything
/// may take.
const ROUNDS: u64 = 4000;
const TIMEOUT_MS: u64 = 60_000;

/// A secondary's part of `control-contention`: loads every register of the
/// peeked channel in turn (each may abort while the owner's call is in
/// the channel), until the boot CPU says stop.
pub fn peeker(_index: usize) {
    let channel = PEEK_CHANNEL.load(Ordering::Acquire);
    let mut i = 0u64;
    while PEEK_STOP.load(Ordering::Acquire) == 0 && channel != 0 {
        let outcome = arch::probe(Access::Load, channel + 8 * (i % 18), 0);
        if outcome.fault.is_some() {
            PEEK_ABORTS.fetch_add(1, Ordering::Relaxed);
        }
        PEEK_LOADS.fetch_add(1, Ordering::Release);
        i += 1;
    }
    PEEK_DONE.store(1, Ordering::Release);
}

/// `control-contention`: see the module documentation.
pub fn control_contention(p: &Platform) -> Result<(), Msg> {
    let control = p
        .control_pages()
        .ok_or_else(|| msg!("no rampart,control node in the DT"))?;
    let boot = super::cpu::boot_cpu_index(p)?;
    let Some(other) = (0..p.cpu_count).find(|&i| i != boot) else {
        note!("control-contention: one CPU, nothing to contend with");
        return Ok(());
    };
    let mpidr = p.cpus[other];
    // The last channel: `control-call-page` leaves it unbound.
    let ch = control.start + (CHANNELS - 1) * PAGE;
    PEEK_CHANNEL.store(ch, Ordering::Release);
    PEEK_STOP.store(0, Ordering::Release);
    PEEK_LOADS.store(0, Ordering::Release);
    PEEK_ABORTS.store(0, Ordering::Release);
    PEEK_DONE.store(0, Ordering::Release);
    ARRIVALS.store(0, Ordering::Release);
    SLOTS[other].reset();
    TASK.store(TASK_CHANNEL_PEEK, Ordering::Release);
    let ret = psci::cpu_on(mpidr, arch::secondary_entry_address(), cpus::context_id(ROUND, other));
    let result = if ret != psci::SUCCESS {
        Err(msg!("CPU_ON({mpidr:#x}) = {ret}, expected SUCCESS (0)"))
    } else if !cpus::wait_until(TIMEOUT_MS, || PEEK_LOADS.load(Ordering::Acquire) > 0) {
        Err(msg!("CPU {mpidr:#x} did not start reading channel {ch:#x}"))
    } else {
        contend(ch)
    };
    PEEK_STOP.store(1, Ordering::Release);
    let stopped = cpus::wait_until(TIMEOUT_MS, || {
        PEEK_DONE.load(Ordering::Acquire) != 0 || SLOTS[other].fault[3].load(Ordering::Acquire) != 0
    });
    let off = cpus::wait_until(TIMEOUT_MS, || psci::affinity_info(mpidr) == psci::AFFINITY_OFF);
    TASK.store(TASK_PARK, Ordering::Release);
    let (calls, aborts) = result?;
    let vector = SLOTS[other].fault[3].load(Ordering::Acquire);
    ensure!(
        vector == 0,
        "the reading CPU {mpidr:#x} took an exception it did not ask for: ESR={:#x} FAR={:#x}",
        SLOTS[other].fault[0].load(Ordering::Relaxed),
        SLOTS[other].fault[2].load(Ordering::Relaxed)
    );
    ensure!(stopped && off, "the reading CPU {mpidr:#x} did not stop and switch off");
    let loads = PEEK_LOADS.load(Ordering::Acquire);
    let peek_aborts = PEEK_ABORTS.load(Ordering::Acquire);
    ensure!(
        aborts == 0,
        "{aborts} of the owner's register accesses on channel {ch:#x} aborted while CPU {mpidr:#x} only read it ({loads} loads)"
    );
    note!(
        "control-contention: {ROUNDS} register stores and loads and {calls} VERSION calls on channel {ch:#x}, 0 aborted, while CPU {mpidr:#x} made {loads} loads of it ({peek_aborts} refused during the calls)"
    );
    Ok(())
}

/// The owner's part: register stores and loads, and a register-path
/// `VERSION` call every 16 rounds, all as probes so that an abort is
/// counted rather than fatal. Returns the calls made and the aborts seen;
/// fails on a wrong value.
fn contend(ch: u64) -> Result<(u64, u64), Msg> {
    let mut aborts = 0u64;
    let mut calls = 0u64;
    let store = |address: u64, value: u64, aborts: &mut u64| {
        let aborted = arch::probe(Access::Store, address, value).fault.is_some();
        *aborts += u64::from(aborted);
        !aborted
    };
    for round in 0..ROUNDS {
        let slot = 1 + round % 17;
        let value = 0x5eed_0000_0000 | round;
        if !store(ch + 8 * slot, value, &mut aborts) {
            continue;
        }
        let got = arch::probe(Access::Load, ch + 8 * slot, 0);
        if got.fault.is_some() {
            aborts += 1;
        } else {
            ensure!(
                got.register == value,
                "register {slot} of channel {ch:#x} read {:#x} after a store of {value:#x} (another CPU only read it)",
                got.register
            );
        }
        if round % 16 == 15 {
            calls += 1;
            if !store(ch, u64::from(HostCall::Version.id()), &mut aborts) || !store(ch + DOORBELL, 0, &mut aborts) {
                continue;
            }
            let r: [_; 3] = core::array::from_fn(|i| arch::probe(Access::Load, ch + 8 * i as u64, 0));
            if r.iter().any(|o| o.fault.is_some()) {
                aborts += 1;
            } else {
                let words = [r[0].register, r[1].register, r[2].register];
                ensure!(
                    words == [0, ABI_VERSION_MAJOR, ABI_VERSION_MINOR],
                    "VERSION through channel {ch:#x} returned {:#x?}",
                    words
                );
            }
        }
    }
    Ok((calls, aborts))
}
