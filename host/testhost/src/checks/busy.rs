//! `vm-refusal-no-busy` (issue 16): a refused `VM_EXPORT` must not disturb
//! a `VCPU_RUN` loop of the same VM on another CPU.
//!
//! `docs/abi.md` allows `VCPU_RUN` to answer `BUSY` only while that vCPU
//! runs on another CPU. A `VM_EXPORT` or `VM_DESTROY` that goes ahead holds
//! every vCPU's lock for a moment (the VM must not run while it is stopped
//! or torn down); one that is refused must take none, or a `VCPU_RUN` of
//! the VM elsewhere can find its vCPU's lock held by a call that then
//! changes nothing.
//!
//! Here the `count` guest, in a VM that is not protected (so never
//! measured: its `VM_EXPORT` is always `DENIED`), runs on a second CPU in a
//! `VCPU_RUN` loop, one console exit after another, while this CPU asks to
//! export it 20 000 times; both CPUs pause for varying times between their
//! calls, so the exports meet the runs at every phase. Every answer must be
//! `DENIED` (never `BUSY`: the refusal does not depend on whether a vCPU
//! runs), and the other CPU must never see `BUSY`. With the refusal
//! decided after the vCPU locks (the old order), one boot of
//! `testhost/smp2/512M/max` saw 107 `BUSY` answers in 885 runs on the
//! other CPU, and 15 124 of the 20 000 exports answered `BUSY`. `VM_DESTROY`'s
//! refusals come before its vCPU locks in the same way, but none is
//! reachable for a live handle a host holds alone, so only the export is
//! driven here.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rampart_abi::Error;
use rampart_abi::guest::GUEST_UART_BASE;
use rampart_abi::guest::layout::{UART_DR, UART_FR};
use rampart_abi::host::{ExitReason, HostCall, mmio};

use super::vm::{arena, protected};
use super::vmm::{PAGE, Spec, Vm, call};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{arch, ensure, fail, note, psci};

/// [`crate::cpus::TASK`]: the second CPU's `VCPU_RUN` loop.
pub const TASK_BUSY_RUNNER: u64 = 0x5c;
/// The secondary's round (its context id).
const ROUND: u64 = 0x5c;
/// `VM_EXPORT` calls made while the other CPU runs the vCPU.
const EXPORTS: u64 = 20_000;
/// The most this check waits for them (a loaded build machine).
const BUDGET_MS: u64 = 20_000;

/// What the two CPUs share.
struct Shared {
    handle: AtomicU64,
    stop: AtomicBool,
    exited: AtomicBool,
    /// `VCPU_RUN` answers: SUCCESS, BUSY.
    runs: AtomicU64,
    busy: AtomicU64,
    /// The first other answer or exit: (1 = answer, 2 = exit; value).
    problem: [AtomicU64; 2],
}

static SHARED: Shared = Shared {
    handle: AtomicU64::new(0),
    stop: AtomicBool::new(false),
    exited: AtomicBool::new(false),
    runs: AtomicU64::new(0),
    busy: AtomicU64::new(0),
    problem: [const { AtomicU64::new(0) }; 2],
};

impl Shared {
    fn report(&self, what: u64, value: u64) {
        if self.problem[0]
            .compare_exchange(0, what, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.problem[1].store(value, Ordering::Release);
        }
    }

    fn problem(&self) -> Result<(), Msg> {
        let value = self.problem[1].load(Ordering::Acquire);
        match self.problem[0].load(Ordering::Acquire) {
            0 => Ok(()),
            1 => fail!("VCPU_RUN on the other CPU = {}", value as i64),
            2 => fail!("unexpected exit {value} on the other CPU"),
            what => fail!("problem {what} ({value:#x}) on the other CPU"),
        }
    }
}

/// The second CPU: runs vCPU 0 until told to stop, counting `BUSY`
/// answers (each run bounded by the host's own 20 ms deadline).
pub fn runner(_index: usize) {
    let s = &SHARED;
    let _ = super::vmm::gic::enable_this_cpu();
    let handle = s.handle.load(Ordering::Acquire);
    let frequency = arch::counter_frequency().max(1);
    while !s.stop.load(Ordering::Acquire) {
        super::vmm::hw::set_host_virtual_timer(arch::counter() + frequency / 50, 1);
        let r = call(HostCall::VcpuRun, &[handle, 0, 0]);
        super::vmm::hw::set_host_virtual_timer(0, 0);
        let c = r[0] as i64;
        if c == Error::Busy.code() {
            s.busy.fetch_add(1, Ordering::AcqRel);
            continue;
        }
        if c != 0 {
            s.report(1, r[0]);
            break;
        }
        s.runs.fetch_add(1, Ordering::AcqRel);
        // A varying pause outside EL2 (the vCPU's lock free), so the other
        // CPU's calls find the lock free at every phase of this loop.
        let runs = s.runs.load(Ordering::Relaxed);
        let until = arch::counter() + (runs * 37 % 64) * 8;
        while arch::counter() < until {
            arch::spin_hint();
        }
        let console = |reg: u64, write: bool| {
            r[2] == GUEST_UART_BASE + reg && (r[3] & mmio::WRITE != 0) == write
        };
        match ExitReason::try_from(r[1]) {
            // A console byte, or the flag register (read as 0 by passing 0
            // with the next run).
            Ok(ExitReason::Mmio) if console(UART_DR, true) || console(UART_FR, false) => {}
            Ok(ExitReason::Wait | ExitReason::Interrupt) => {}
            _ => {
                s.report(2, r[1]);
                break;
            }
        }
    }
    s.exited.store(true, Ordering::Release);
}

/// `vm-refusal-no-busy` (two CPUs or more; see the module's text).
pub fn vm_refusal_no_busy(p: &Platform) -> Result<(), Msg> {
    if p.cpu_count < 2 {
        note!("one CPU: nothing to race");
        return Ok(());
    }
    let (mut arena, _) = arena(p)?;
    let buffer = arena.take(2)?;
    let spec = Spec {
        protected: false,
        sign: false,
        ..protected("count")?
    };
    let mut vm = Vm::create(&mut arena, spec)?;
    let boot = super::cpu::boot_cpu_index(p)?;
    let Some(cpu) = (0..p.cpu_count).find(|&i| i != boot) else {
        fail!("one CPU only");
    };
    let s = &SHARED;
    s.handle.store(vm.handle, Ordering::Relaxed);
    for a in [&s.runs, &s.busy, &s.problem[0], &s.problem[1]] {
        a.store(0, Ordering::Relaxed);
    }
    s.stop.store(false, Ordering::Relaxed);
    s.exited.store(false, Ordering::Release);
    crate::cpus::ARRIVALS.store(0, Ordering::Release);
    crate::cpus::TASK.store(TASK_BUSY_RUNNER, Ordering::Release);
    crate::cpus::SLOTS[cpu].reset();
    let ret = psci::cpu_on(
        p.cpus[cpu],
        arch::secondary_entry_address(),
        crate::cpus::context_id(ROUND, cpu),
    );
    ensure!(ret == psci::SUCCESS, "CPU_ON({:#x}) = {ret}", p.cpus[cpu]);
    let outcome = race(vm.handle, buffer);
    s.stop.store(true, Ordering::Release);
    let stopped = crate::cpus::wait_until(10_000, || s.exited.load(Ordering::Acquire));
    crate::cpus::TASK.store(crate::cpus::TASK_PARK, Ordering::Release);
    let mpidr = p.cpus[cpu];
    crate::cpus::wait_until(1_000, || psci::affinity_info(mpidr) == psci::AFFINITY_OFF);
    let destroyed = vm.destroy();
    arch::ram_zero(buffer, buffer + 2 * PAGE);
    ensure!(stopped, "the CPU running the vCPU did not stop");
    let (exports, denied, busy_exports) = outcome?;
    destroyed?;
    s.problem()?;
    if exports == 0 {
        return Ok(());
    }
    let (runs, busy) = (
        s.runs.load(Ordering::Acquire),
        s.busy.load(Ordering::Acquire),
    );
    ensure!(
        busy == 0 && busy_exports == 0,
        "VCPU_RUN on the other CPU answered BUSY {busy} times in {runs} runs while this CPU's VM_EXPORT of the VM was refused {exports} times ({busy_exports} of them BUSY, {denied} DENIED): a refused call held the vCPU's lock (the ABI allows BUSY only while the vCPU runs elsewhere)"
    );
    ensure!(
        runs >= 100,
        "the vCPU ran only {runs} times on the other CPU during {exports} VM_EXPORT calls: no race"
    );
    note!(
        "{exports} refused VM_EXPORTs (all DENIED) against {runs} runs of the vCPU on another CPU: no BUSY on either CPU"
    );
    Ok(())
}

/// The boot CPU's part: returns (calls, DENIED answers, BUSY answers).
fn race(handle: u64, buffer: u64) -> Result<(u64, u64, u64), Msg> {
    let s = &SHARED;
    ensure!(
        crate::cpus::wait_until(20_000, || s.runs.load(Ordering::Acquire) >= 8
            || s.exited.load(Ordering::Acquire)),
        "the vCPU never ran on the other CPU"
    );
    s.problem()?;
    let frequency = arch::counter_frequency().max(1);
    let deadline = arch::counter() + BUDGET_MS * frequency / 1000;
    let (mut calls, mut denied, mut busy, mut pause) = (0u64, 0u64, 0u64, 1u64);
    while calls < EXPORTS && arch::counter() < deadline && !s.exited.load(Ordering::Acquire) {
        let r = call(
            HostCall::VmExport,
            &[handle, buffer, 2, 0x5eed, calls, 1, 2, 3, 4],
        );
        calls += 1;
        match r[0] as i64 {
            c if c == Error::Denied.code() => denied += 1,
            c if c == Error::Busy.code() => busy += 1,
            c if c == Error::NotSupported.code() && calls == 1 => {
                note!("no migration secret: VM_EXPORT is NOT_SUPPORTED, nothing to race");
                return Ok((0, 0, 0));
            }
            c => fail!("VM_EXPORT of a VM that is not protected (call {calls}) = {c}, want DENIED"),
        }
        // A varying pause, so the calls meet the other CPU's runs at every
        // phase.
        pause = (pause * 5 + 3) % 31;
        let until = arch::counter() + pause;
        while arch::counter() < until {
            arch::spin_hint();
        }
    }
    s.problem()?;
    Ok((calls, denied, busy))
}
