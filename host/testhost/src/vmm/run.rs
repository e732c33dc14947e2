//! Running vCPUs: the `VCPU_RUN` loops, the console emulation and the
//! guests' result lines.
//!
//! A run places each vCPU on a *lane*; lane `k` is physical CPU `k` modulo
//! the CPU count (lane 0 = the boot CPU, the others secondaries started with
//! `CPU_ON` and `cpus::TASK_VCPU`). Each CPU runs its vCPUs round-robin:
//! after a console write it keeps running the same vCPU (a guest holds its
//! console lock for a whole line), after any other exit it moves on.
//!
//! Exit policy (every guest):
//! - `EXIT_MMIO`: a write of `UARTDR` at `GUEST_UART_BASE` is a console
//!   byte; a read of `UARTFR` answers 0; anything else is a VMM-visible
//!   problem (answered 0, the check fails).
//! - `EXIT_MEMORY_FAULT`: the [`Policy`] decides ([`FaultAction`]: donate
//!   memory there, decline so the guest takes an external abort, or stop
//!   the VM); the default fails the check. Boot CPU only: on a secondary the
//!   VM is stopped and the check fails.
//! - `EXIT_WAIT`, `EXIT_INTERRUPT`: run again.
//! - `EXIT_POWERED_OFF`: run the CPU's other vCPUs; poll again later.
//! - `EXIT_SYSTEM_OFF`: the VM is done. `EXIT_SYSTEM_RESET`: done, a failure.
//!
//! vCPU 0 of a VM runs first: the other vCPUs wait until its first
//! `VCPU_RUN` returned (that run is the one the hypervisor measures and
//! checks the signature for).
//!
//! Only the boot CPU prints: secondaries pass finished lines through a
//! per-CPU ring. Every line is printed as `  [guest] text` (`[guest/n]` for
//! vCPU `n`), and `GUEST-PASS`/`FAIL`/`DONE` lines are counted.

use core::sync::atomic::{AtomicU64, Ordering};

use rampart_abi::guest::GUEST_UART_BASE;
use rampart_abi::guest::layout::{UART_DR, UART_FR};
use rampart_abi::guest::test_protocol::{DONE, FAIL, PASS};
use rampart_abi::host::{ExitReason, HostCall, mmio};

use super::{Vm, call};
use crate::arch::{self, MAX_CPUS};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{cpus, msg, psci, println};

/// VMs in one run.
pub const MAX_VMS: usize = 2;
/// vCPUs one CPU runs.
const MAX_ENTRIES: usize = 8;
/// Bytes of a console line (longer lines are cut): room for the attest
/// guest's `GUEST-REPORT` line (the largest report, 282 bytes, in hex).
const LINE: usize = 640;
const LINE_WORDS: usize = LINE / 8;
/// Lines a secondary's ring holds.
const RING_LINES: usize = 16;
/// `BUSY`.
const BUSY: i64 = rampart_abi::Error::Busy.code();
/// Spurious `BUSY`s retried before giving up on a VM.
const MAX_BUSY: u64 = 10_000;
/// Context id round of the secondaries a run starts.
const ROUND: u64 = 0x40;

/// What became of a VM in a run.
pub mod state {
    /// Still running.
    pub const RUNNING: u64 = 0;
    /// The guest powered off (PSCI `SYSTEM_OFF`).
    pub const SYSTEM_OFF: u64 = 1;
    /// The guest asked for a reset.
    pub const SYSTEM_RESET: u64 = 2;
    /// The VMM stopped it (a problem, or the deadline).
    pub const STOPPED: u64 = 3;
}

/// Problems the runners record (first one per VM wins).
mod problem {
    pub const NONE: u64 = 0;
    pub const RUN_ERROR: u64 = 1;
    pub const UNEXPECTED_MMIO: u64 = 2;
    pub const BAD_EXIT: u64 = 3;
    pub const FAULT_ON_SECONDARY: u64 = 4;
    pub const TIMEOUT: u64 = 5;
    pub const LINE_LOST: u64 = 6;
}

struct SharedVm {
    handle: AtomicU64,
    state: AtomicU64,
    problem: AtomicU64,
    detail: [AtomicU64; 3],
    exits: AtomicU64,
    /// `BUSY` from `VCPU_RUN` of a vCPU no other CPU runs (retried).
    busy: AtomicU64,
    /// vCPU 0's first `VCPU_RUN` returned: the others may run.
    started: AtomicU64,
}

impl SharedVm {
    const fn new() -> Self {
        Self {
            handle: AtomicU64::new(0),
            state: AtomicU64::new(state::STOPPED),
            problem: AtomicU64::new(0),
            detail: [const { AtomicU64::new(0) }; 3],
            exits: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    fn running(&self) -> bool {
        self.state.load(Ordering::Acquire) == state::RUNNING
    }

    fn report(&self, kind: u64, detail: [u64; 3]) {
        if self
            .problem
            .compare_exchange(problem::NONE, kind, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            for (cell, value) in self.detail.iter().zip(detail) {
                cell.store(value, Ordering::Release);
            }
        }
    }

    fn stop(&self, how: u64) {
        let _ = self.state.compare_exchange(
            state::RUNNING,
            how,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

static SHARED: [SharedVm; MAX_VMS] = [const { SharedVm::new() }; MAX_VMS];
/// Per CPU index: the vCPUs it runs, `1 + (vm << 8 | vcpu)`; 0 = none.
static PLAN: [[AtomicU64; MAX_ENTRIES]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; MAX_ENTRIES] }; MAX_CPUS];
/// Per CPU index: its loop ended (1), and whether its GIC was set up (bit 1).
static FINISHED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Counter value after which every runner stops.
static DEADLINE: AtomicU64 = AtomicU64::new(0);

/// A secondary's finished lines, for the boot CPU to print.
struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    slots: [[AtomicU64; LINE_WORDS + 1]; RING_LINES],
}

impl Ring {
    const fn new() -> Self {
        Self {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            slots: [const { [const { AtomicU64::new(0) }; LINE_WORDS + 1] }; RING_LINES],
        }
    }

    /// Producer: waits for room (or the deadline).
    fn push(&self, vm: usize, vcpu: usize, text: &[u8]) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        let room = || head - self.tail.load(Ordering::Acquire) < RING_LINES as u64;
        if !room() && !wait_for_deadline(room) {
            return false;
        }
        let slot = &self.slots[(head % RING_LINES as u64) as usize];
        slot[0].store(
            vm as u64 | (vcpu as u64) << 8 | (text.len() as u64) << 16,
            Ordering::Relaxed,
        );
        for (i, chunk) in text.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            slot[i + 1].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        self.head.store(head + 1, Ordering::Release);
        true
    }

    /// Consumer: the next line, if any.
    fn pop(&self, out: &mut [u8; LINE]) -> Option<(usize, usize, usize)> {
        let tail = self.tail.load(Ordering::Relaxed);
        if self.head.load(Ordering::Acquire) == tail {
            return None;
        }
        let slot = &self.slots[(tail % RING_LINES as u64) as usize];
        let meta = slot[0].load(Ordering::Relaxed);
        let len = ((meta >> 16) as usize).min(LINE);
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&slot[i + 1].load(Ordering::Relaxed).to_le_bytes());
        }
        self.tail.store(tail + 1, Ordering::Release);
        Some(((meta & 0xff) as usize, ((meta >> 8) & 0xff) as usize, len))
    }

    fn reset(&self) {
        self.head.store(0, Ordering::Relaxed);
        self.tail.store(0, Ordering::Relaxed);
    }
}

static RINGS: [Ring; MAX_CPUS] = [const { Ring::new() }; MAX_CPUS];

fn past_deadline() -> bool {
    arch::counter() > DEADLINE.load(Ordering::Acquire)
}

/// Spins until `done()` or the run's deadline.
fn wait_for_deadline(mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if past_deadline() {
            return done();
        }
        arch::spin_hint();
    }
}

/// What the checks decide for a guest.
pub trait Policy {
    /// Every console line of VM `vm` (index in the run), on the boot CPU.
    /// For lines from vCPUs the boot CPU runs, the vCPU is stopped at the
    /// exit that ended the line.
    fn line(&mut self, _vms: &mut [Vm], _vm: usize, _text: &str) -> Result<(), Msg> {
        Ok(())
    }

    /// Whether a `GUEST-FAIL` line is what this VMM's policy makes the guest
    /// report (it is then not counted as a failure).
    fn excuse(&mut self, _vm: usize, _text: &str) -> bool {
        false
    }

    /// An `EXIT_MEMORY_FAULT` at guest page `ipa` (boot CPU only): what the
    /// VMM does about it. `Err` stops the VM as a failure.
    fn memory_fault(
        &mut self,
        _vms: &mut [Vm],
        vm: usize,
        ipa: u64,
        write: bool,
    ) -> Result<FaultAction, Msg> {
        Err(msg!(
            "vm {vm}: EXIT_MEMORY_FAULT at {ipa:#x} (write {write}): this guest never leaves its RAM"
        ))
    }

    /// issue 12: an `EXIT_HOST_CALL` of vCPU `vcpu` (boot CPU only), `imm`
    /// its immediate: answer it (`VCPU_HOST_CALL_GET`/`SET`) before the
    /// vCPU runs again. `Err` stops the VM as a failure.
    fn host_call(&mut self, _vms: &mut [Vm], vm: usize, vcpu: usize, imm: u64) -> Result<(), Msg> {
        Err(msg!(
            "vm {vm}: EXIT_HOST_CALL (imm {imm:#x}) from vCPU {vcpu}: this guest makes no host call"
        ))
    }
}

/// The VMM's answer to an `EXIT_MEMORY_FAULT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Memory was donated there: run again, the access is retried.
    Donated,
    /// Run again without memory there: the guest takes an external abort.
    Decline,
}

/// The default policy: nothing beyond the common exit handling.
pub struct Plain;
impl Policy for Plain {}

/// What one VM's lines said.
pub struct Tally {
    /// `GUEST-PASS` lines.
    pub passed: u32,
    /// `GUEST-FAIL` lines.
    pub failed: u32,
    /// `GUEST-FAIL` lines the policy excused.
    pub excused: u32,
    /// `GUEST-DONE <n> passed, <m> failed`, if seen.
    pub done: Option<(u32, u32)>,
    /// The first `GUEST-FAIL` not excused.
    pub first_fail: Option<Msg<200>>,
    /// The first policy error.
    pub policy_error: Option<Msg>,
    /// Lines seen.
    pub lines: u32,
}

impl Tally {
    const fn new() -> Self {
        Self {
            passed: 0,
            failed: 0,
            excused: 0,
            done: None,
            first_fail: None,
            policy_error: None,
            lines: 0,
        }
    }
}

/// What a run found.
pub struct Report {
    /// Per VM.
    pub tallies: [Tally; MAX_VMS],
    /// Per VM: `state::*`.
    pub states: [u64; MAX_VMS],
    /// Per VM: exits seen.
    pub exits: [u64; MAX_VMS],
    /// Per VM: the first runner problem, described.
    pub problems: [Option<Msg>; MAX_VMS],
    /// CPUs used.
    pub cpus: usize,
    /// Milliseconds the run took.
    pub millis: u64,
}

impl Report {
    /// The verdict for VM `i`: it ran to `GUEST-DONE` with no failure the
    /// policy did not excuse, and the runners saw no problem.
    pub fn verdict(&self, vms: &[Vm], i: usize) -> Result<(), Msg> {
        let (t, name) = (&self.tallies[i], vms[i].name);
        if let Some(p) = &self.problems[i] {
            return Err(msg!("{name}: {p}"));
        }
        if let Some(e) = &t.policy_error {
            return Err(msg!("{name}: {e}"));
        }
        if let Some(f) = &t.first_fail {
            return Err(msg!("{name}: {f}"));
        }
        match (self.states[i], t.done) {
            (state::SYSTEM_OFF, Some((p, f))) => {
                if p != t.passed || f != t.failed {
                    return Err(msg!(
                        "{name}: GUEST-DONE says {p} passed, {f} failed; the VMM counted {} and {}",
                        t.passed,
                        t.failed
                    ));
                }
                if f != t.excused {
                    return Err(msg!("{name}: {f} guest checks failed"));
                }
                if p == 0 {
                    return Err(msg!("{name}: no guest check passed"));
                }
                Ok(())
            }
            (state::SYSTEM_OFF, None) => Err(msg!("{name}: powered off without GUEST-DONE")),
            (state::SYSTEM_RESET, _) => Err(msg!("{name}: the guest asked for a reset")),
            (s, _) => Err(msg!("{name}: ended in state {s} without powering off")),
        }
    }
}

/// Runs `vms` until each powers off, is stopped, or `timeout_ms` pass.
/// `lanes[i][v]` is the lane of vCPU `v` of VM `i` (only the first
/// `vms[i].vcpus` are read). Uses up to `p.cpu_count` CPUs.
pub fn run(
    p: &Platform,
    vms: &mut [Vm],
    lanes: &[&[usize]],
    policy: &mut dyn Policy,
    timeout_ms: u64,
) -> Result<Report, Msg> {
    assert!(vms.len() <= MAX_VMS && lanes.len() == vms.len());
    let boot = boot_cpu_index(p)?;
    super::gic::init(p)?;
    // CPU index of each lane: the boot CPU first, then the others in order.
    let mut order = [0usize; MAX_CPUS];
    order[0] = boot;
    let mut n = 1;
    for i in (0..p.cpu_count).filter(|&i| i != boot) {
        order[n] = i;
        n += 1;
    }
    let cpu_count = n;
    for plan in &PLAN {
        for e in plan {
            e.store(0, Ordering::Relaxed);
        }
    }
    let mut counts = [0usize; MAX_CPUS];
    for (i, vm) in vms.iter().enumerate() {
        let shared = &SHARED[i];
        shared.handle.store(vm.handle, Ordering::Relaxed);
        shared.problem.store(problem::NONE, Ordering::Relaxed);
        shared.exits.store(0, Ordering::Relaxed);
        shared.busy.store(0, Ordering::Relaxed);
        shared.started.store(0, Ordering::Relaxed);
        shared.state.store(state::RUNNING, Ordering::Release);
        for v in 0..vm.vcpus as usize {
            let cpu = order[lanes[i][v] % cpu_count];
            if counts[cpu] >= MAX_ENTRIES {
                return Err(msg!("more than {MAX_ENTRIES} vCPUs on CPU {cpu}"));
            }
            PLAN[cpu][counts[cpu]].store(1 + ((i as u64) << 8 | v as u64), Ordering::Release);
            counts[cpu] += 1;
        }
    }
    for shared in &SHARED[vms.len()..] {
        shared.state.store(state::STOPPED, Ordering::Release);
    }
    let frequency = arch::counter_frequency().max(1);
    let start = arch::counter();
    DEADLINE.store(start + frequency * timeout_ms / 1000, Ordering::Release);

    let mut boot_host = BootHost {
        vms,
        policy,
        tallies: [const { Tally::new() }; MAX_VMS],
    };
    // Start the secondaries that have vCPUs.
    cpus::TASK.store(cpus::TASK_VCPU, Ordering::Release);
    let mut started = [false; MAX_CPUS];
    let mut start_error = None;
    for &cpu in order[1..cpu_count].iter().filter(|&&c| counts[c] > 0) {
        FINISHED[cpu].store(0, Ordering::Release);
        RINGS[cpu].reset();
        cpus::SLOTS[cpu].reset();
        let r = psci::cpu_on(
            p.cpus[cpu],
            arch::secondary_entry_address(),
            cpus::context_id(ROUND, cpu),
        );
        if r == psci::SUCCESS {
            started[cpu] = true;
        } else {
            start_error.get_or_insert(msg!("CPU_ON({:#x}) = {r}", p.cpus[cpu]));
        }
    }
    if let Some(e) = start_error {
        for shared in &SHARED {
            shared.stop(state::STOPPED);
        }
        boot_host.tallies[0].policy_error = Some(e);
    }
    let gic_ok = super::gic::enable_this_cpu();
    let mut entries = [(0usize, 0usize); MAX_ENTRIES];
    let count = read_plan(boot, &mut entries);
    run_entries(&entries[..count], &mut boot_host);

    // Every VM is done: wait for the secondaries to leave their loops.
    let finished = |cpu: usize| {
        FINISHED[cpu].load(Ordering::Acquire) & 1 != 0
            || cpus::SLOTS[cpu].fault[3].load(Ordering::Acquire) != 0
    };
    let all = |started: &[bool; MAX_CPUS]| (0..MAX_CPUS).all(|c| !started[c] || finished(c));
    let grace = arch::counter() + frequency;
    while !all(&started) && arch::counter() < grace {
        boot_host.drain();
    }
    boot_host.drain();
    let mut cpu_problem = None;
    for cpu in (0..MAX_CPUS).filter(|&c| started[c]) {
        let fault = cpus::SLOTS[cpu].fault[3].load(Ordering::Acquire);
        if fault != 0 {
            cpu_problem.get_or_insert(msg!(
                "CPU {:#x} took an exception: ESR {:#x} ELR {:#x} FAR {:#x}",
                p.cpus[cpu],
                cpus::SLOTS[cpu].fault[0].load(Ordering::Acquire),
                cpus::SLOTS[cpu].fault[1].load(Ordering::Acquire),
                cpus::SLOTS[cpu].fault[2].load(Ordering::Acquire)
            ));
        } else if !finished(cpu) {
            cpu_problem.get_or_insert(msg!(
                "CPU {:#x} is still in VCPU_RUN (its vCPU never exits)",
                p.cpus[cpu]
            ));
        } else if FINISHED[cpu].load(Ordering::Acquire) & 2 == 0 {
            cpu_problem.get_or_insert(msg!("CPU {:#x}: no GIC redistributor found", p.cpus[cpu]));
        }
        let mpidr = p.cpus[cpu];
        cpus::wait_until(1000, || psci::affinity_info(mpidr) == psci::AFFINITY_OFF);
    }
    cpus::TASK.store(cpus::TASK_PARK, Ordering::Release);
    let millis = cpus::elapsed_ms(start);
    if !gic_ok {
        cpu_problem.get_or_insert(msg!("boot CPU: no GICv3 redistributor found"));
    }

    let BootHost { vms, tallies, .. } = boot_host;
    let mut report = Report {
        tallies,
        states: [state::STOPPED; MAX_VMS],
        exits: [0; MAX_VMS],
        problems: [const { None }; MAX_VMS],
        cpus: (0..MAX_CPUS).filter(|&c| counts[c] > 0).count(),
        millis,
    };
    for (i, shared) in SHARED.iter().enumerate().take(vms.len()) {
        report.states[i] = shared.state.load(Ordering::Acquire);
        report.exits[i] = shared.exits.load(Ordering::Acquire);
        let d = |k: usize| shared.detail[k].load(Ordering::Acquire);
        let busy = shared.busy.load(Ordering::Acquire);
        report.problems[i] = match shared.problem.load(Ordering::Acquire) {
            problem::NONE if busy > 0 => Some(msg!(
                "VCPU_RUN returned BUSY {busy} times for a vCPU no other CPU was running (retried; the ABI allows BUSY only while it runs elsewhere)"
            )),
            problem::NONE => cpu_problem.clone(),
            problem::RUN_ERROR => Some(msg!(
                "VCPU_RUN(vCPU {}) = {} ({})",
                d(0),
                d(1) as i64,
                error_name(d(1) as i64)
            )),
            problem::UNEXPECTED_MMIO => Some(msg!(
                "vCPU {}: unexpected MMIO at {:#x}, flags {:#x}",
                d(0),
                d(1),
                d(2)
            )),
            problem::BAD_EXIT => Some(msg!("vCPU {}: unknown exit reason {}", d(0), d(1))),
            problem::FAULT_ON_SECONDARY => Some(msg!(
                "vCPU {}: EXIT_MEMORY_FAULT at {:#x} on a secondary CPU",
                d(0),
                d(1)
            )),
            problem::TIMEOUT => Some(msg!(
                "timed out after {timeout_ms} ms ({} exits)",
                report.exits[i]
            )),
            problem::LINE_LOST => Some(msg!("a console line from vCPU {} was lost", d(0))),
            other => Some(msg!("runner problem {other}")),
        };
    }
    Ok(report)
}

/// The name of a host-call error code.
pub fn error_name(code: i64) -> &'static str {
    rampart_abi::Error::ALL
        .iter()
        .find(|e| e.code() == code)
        .map_or("not an error code", |e| e.name())
}

fn boot_cpu_index(p: &Platform) -> Result<usize, Msg> {
    let mpidr = arch::mpidr() & arch::MPIDR_AFFINITY_MASK;
    p.cpus[..p.cpu_count]
        .iter()
        .position(|&id| id == mpidr)
        .ok_or_else(|| msg!("the boot CPU's MPIDR {mpidr:#x} is not in /cpus"))
}

fn read_plan(cpu: usize, entries: &mut [(usize, usize); MAX_ENTRIES]) -> usize {
    let mut count = 0;
    for e in &PLAN[cpu] {
        let v = e.load(Ordering::Acquire);
        if v != 0 {
            entries[count] = (((v - 1) >> 8) as usize, ((v - 1) & 0xff) as usize);
            count += 1;
        }
    }
    count
}

/// A secondary's part (`cpus::TASK_VCPU`), with its CPU index.
pub fn secondary(cpu: usize) {
    let gic = super::gic::enable_this_cpu();
    let mut entries = [(0usize, 0usize); MAX_ENTRIES];
    let count = read_plan(cpu, &mut entries);
    run_entries(&entries[..count], &mut SecondaryHost { cpu });
    FINISHED[cpu].store(1 | if gic { 2 } else { 0 }, Ordering::Release);
}

/// What differs between the boot CPU's loop and a secondary's.
trait Host {
    fn line(&mut self, vm: usize, vcpu: usize, text: &[u8]);
    /// Whether to run the same vCPU again.
    fn memory_fault(&mut self, vm: usize, vcpu: usize, ipa: u64, write: bool) -> bool;
    fn poll(&mut self);
    /// issue 12: whether the host call was answered (run the vCPU again).
    fn host_call(&mut self, vm: usize, vcpu: usize, _imm: u64) -> bool {
        SHARED[vm].report(problem::BAD_EXIT, [vcpu as u64, ExitReason::HostCall as u64, 0]);
        SHARED[vm].stop(state::STOPPED);
        false
    }
}

/// issue 12 (`realm-rsi`'s race): a guest page whose `EXIT_MEMORY_FAULT`s a
/// secondary CPU declines (the guest takes an abort) instead of failing the
/// run; 0 for none. The check sets it and clears it after the run.
pub static SECONDARY_DECLINES: AtomicU64 = AtomicU64::new(0);
/// How many faults secondaries declined for it.
pub static SECONDARY_DECLINED: AtomicU64 = AtomicU64::new(0);

struct SecondaryHost {
    cpu: usize,
}

impl Host for SecondaryHost {
    fn line(&mut self, vm: usize, vcpu: usize, text: &[u8]) {
        if !RINGS[self.cpu].push(vm, vcpu, text) {
            SHARED[vm].report(problem::LINE_LOST, [vcpu as u64, 0, 0]);
        }
    }

    fn memory_fault(&mut self, vm: usize, vcpu: usize, ipa: u64, _write: bool) -> bool {
        // issue 12: the realm race check's granule, declined here too.
        let declined = SECONDARY_DECLINES.load(Ordering::Acquire);
        if declined != 0 && ipa == declined {
            SECONDARY_DECLINED.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        SHARED[vm].report(problem::FAULT_ON_SECONDARY, [vcpu as u64, ipa, 0]);
        SHARED[vm].stop(state::STOPPED);
        false
    }

    fn poll(&mut self) {}
}

struct BootHost<'a> {
    vms: &'a mut [Vm],
    policy: &'a mut dyn Policy,
    tallies: [Tally; MAX_VMS],
}

impl BootHost<'_> {
    /// Prints and counts the secondaries' lines.
    fn drain(&mut self) {
        let mut buf = [0u8; LINE];
        for ring in &RINGS {
            while let Some((vm, vcpu, len)) = ring.pop(&mut buf) {
                if vm < MAX_VMS {
                    self.handle(vm, vcpu, &buf[..len]);
                }
            }
        }
    }

    fn handle(&mut self, vm: usize, vcpu: usize, bytes: &[u8]) {
        let text = match core::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        let name = self.vms.get(vm).map_or("?", |v| v.name);
        if text.len() < bytes.len() {
            let rest = &bytes[text.len()..];
            println!(
                "  [{name}/{vcpu}] {text}<{} bytes not UTF-8: {:02x?}>",
                rest.len(),
                &rest[..rest.len().min(16)]
            );
        }
        // A failure the check's policy makes the guest report, and the
        // guest's total when those are its only failures, say so on the
        // line: a reader must not take them for a failed run.
        let excused = text.starts_with(FAIL) && self.policy.excuse(vm, text);
        let t = &mut self.tallies[vm];
        let expected = if excused {
            "   <- expected by this check"
        } else if text.starts_with(DONE)
            && text.strip_prefix(DONE).and_then(parse_done).is_some_and(|(_, f)| f > 0 && f == t.excused)
        {
            "   <- expected: only the failures this check causes"
        } else {
            ""
        };
        if vcpu == 0 {
            println!("  [{name}] {text}{expected}");
        } else {
            println!("  [{name}/{vcpu}] {text}{expected}");
        }
        t.lines += 1;
        if text.starts_with(PASS) {
            t.passed += 1;
        } else if text.starts_with(FAIL) {
            t.failed += 1;
            if excused {
                t.excused += 1;
            } else if t.first_fail.is_none() {
                t.first_fail = Some(Msg::from_text(text));
            }
        } else if let Some(rest) = text.strip_prefix(DONE) {
            t.done = parse_done(rest);
        }
        if let Err(e) = self.policy.line(self.vms, vm, text)
            && self.tallies[vm].policy_error.is_none()
        {
            self.tallies[vm].policy_error = Some(e);
        }
    }
}

impl Host for BootHost<'_> {
    fn line(&mut self, vm: usize, vcpu: usize, text: &[u8]) {
        self.handle(vm, vcpu, text);
    }

    fn memory_fault(&mut self, vm: usize, _vcpu: usize, ipa: u64, write: bool) -> bool {
        match self.policy.memory_fault(self.vms, vm, ipa, write) {
            Ok(FaultAction::Donated | FaultAction::Decline) => true,
            Err(e) => {
                if self.tallies[vm].policy_error.is_none() {
                    self.tallies[vm].policy_error = Some(e);
                }
                SHARED[vm].stop(state::STOPPED);
                false
            }
        }
    }

    fn host_call(&mut self, vm: usize, vcpu: usize, imm: u64) -> bool {
        match self.policy.host_call(self.vms, vm, vcpu, imm) {
            Ok(()) => true,
            Err(e) => {
                if self.tallies[vm].policy_error.is_none() {
                    self.tallies[vm].policy_error = Some(e);
                }
                SHARED[vm].stop(state::STOPPED);
                false
            }
        }
    }

    fn poll(&mut self) {
        self.drain();
        if past_deadline() {
            for shared in &SHARED {
                if shared.running() {
                    shared.report(problem::TIMEOUT, [0; 3]);
                    shared.stop(state::STOPPED);
                }
            }
        }
    }
}

/// `<n> passed, <m> failed`.
fn parse_done(rest: &str) -> Option<(u32, u32)> {
    let (passed, failed) = rest.trim().split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

/// One vCPU's console line and pending MMIO read value.
struct Lane {
    line: [u8; LINE],
    len: usize,
    read_value: u64,
    off: bool,
}

/// The round-robin `VCPU_RUN` loop over `entries` (`(vm, vcpu)`), until
/// every VM they belong to is no longer running.
fn run_entries(entries: &[(usize, usize)], host: &mut dyn Host) {
    let mut lanes = [const {
        Lane {
            line: [0; LINE],
            len: 0,
            read_value: 0,
            off: false,
        }
    }; MAX_ENTRIES];
    if entries.is_empty() {
        return;
    }
    let mut i = 0;
    loop {
        host.poll();
        if entries.iter().all(|&(vm, _)| !SHARED[vm].running()) {
            return;
        }
        let (vm, vcpu) = entries[i];
        let shared = &SHARED[vm];
        if !shared.running() {
            i = (i + 1) % entries.len();
            continue;
        }
        if vcpu != 0 && shared.started.load(Ordering::Acquire) == 0 {
            // vCPU 0's first run comes first.
            i = (i + 1) % entries.len();
            arch::spin_hint();
            continue;
        }
        let lane = &mut lanes[i];
        let handle = shared.handle.load(Ordering::Relaxed);
        let r = call(HostCall::VcpuRun, &[handle, vcpu as u64, lane.read_value]);
        if vcpu == 0 {
            shared.started.store(1, Ordering::Release);
        }
        lane.read_value = 0;
        shared.exits.fetch_add(1, Ordering::Relaxed);
        let mut stay = false;
        lane.off = false;
        if r[0] as i64 == BUSY && shared.busy.fetch_add(1, Ordering::Relaxed) < MAX_BUSY {
            // Only this CPU runs this vCPU: BUSY breaks the ABI. Retry (and
            // fail the check afterwards) so the guest's results still come.
            shared.exits.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        if r[0] != 0 {
            shared.report(problem::RUN_ERROR, [vcpu as u64, r[0], 0]);
            shared.stop(state::STOPPED);
            continue;
        }
        match ExitReason::try_from(r[1]) {
            Ok(ExitReason::Mmio) => {
                let (address, flags, value) = (r[2], r[3], r[4]);
                let write = flags & mmio::WRITE != 0;
                if address == GUEST_UART_BASE + UART_DR && write {
                    stay = true;
                    let byte = value as u8;
                    if byte == b'\n' || lane.len == LINE {
                        let len = lane.len;
                        lane.len = 0;
                        host.line(vm, vcpu, &lane.line[..len]);
                        if byte != b'\n' {
                            lane.line[0] = byte;
                            lane.len = 1;
                        }
                    } else if byte != b'\r' {
                        lane.line[lane.len] = byte;
                        lane.len += 1;
                    }
                } else if address == GUEST_UART_BASE + UART_FR && !write {
                    lane.read_value = 0;
                } else {
                    shared.report(problem::UNEXPECTED_MMIO, [vcpu as u64, address, flags]);
                }
            }
            Ok(ExitReason::MemoryFault) => {
                stay = host.memory_fault(vm, vcpu, r[2], r[3] & 1 != 0);
            }
            Ok(ExitReason::Wait | ExitReason::Interrupt | ExitReason::Eoi) => {}
            Ok(ExitReason::SystemOff) => shared.stop(state::SYSTEM_OFF),
            Ok(ExitReason::SystemReset) => shared.stop(state::SYSTEM_RESET),
            Ok(ExitReason::PoweredOff) => lane.off = true,
            Ok(ExitReason::HostCall) => {
                stay = host.host_call(vm, vcpu, r[2]);
            }
            Ok(ExitReason::Evicted) => {
                // This VMM evicts nothing: an eviction exit is a hypervisor bug.
                shared.report(problem::BAD_EXIT, [vcpu as u64, r[1], r[2]]);
                shared.stop(state::STOPPED);
            }
            Err(reason) => {
                shared.report(problem::BAD_EXIT, [vcpu as u64, reason, 0]);
                shared.stop(state::STOPPED);
            }
        }
        if !stay {
            i = (i + 1) % entries.len();
        }
        // Every vCPU here is off: let the others (other CPUs) get on.
        if lanes[..entries.len()].iter().all(|l| l.off) {
            let until = arch::counter() + arch::counter_frequency() / 20_000;
            while arch::counter() < until {
                arch::spin_hint();
            }
        }
    }
}
