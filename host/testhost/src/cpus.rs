//! Secondary CPUs: what they do when PSCI `CPU_ON` starts them, and the
//! shared state the boot CPU reads to check them.
//!
//! A secondary records what it saw at entry in its [`Slot`], counts itself in
//! [`ARRIVALS`], then does its [`TASK`]: either waits until the boot CPU
//! releases its round (so the boot CPU can see it ON with `AFFINITY_INFO`),
//! runs its part of `own-concurrent`, or runs vCPUs for the VM checks. Then
//! it calls `CPU_OFF`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, Exception, MAX_CPUS, MPIDR_AFFINITY_MASK, SecondaryEntry};
use crate::psci;

/// High bits of every context id the boot CPU passes to `CPU_ON`, so that a
/// hypervisor that drops or truncates `x3` is caught.
pub const CONTEXT_MAGIC: u64 = 0x7e57_0000_0000_0000;

/// The context id for CPU index `index` in bring-up round `round` (1..=255).
/// The entry assembly takes the stack index from the low byte.
pub fn context_id(round: u64, index: usize) -> u64 {
    CONTEXT_MAGIC | (round << 8) | index as u64
}

/// What one secondary recorded; all zero until it runs.
pub struct Slot {
    /// Round it arrived in (from its context id).
    pub arrived: AtomicU64,
    /// Context id it received in `x0`.
    pub context: AtomicU64,
    /// Its `MPIDR_EL1` affinity.
    pub mpidr: AtomicU64,
    /// `DAIF` at entry.
    pub daif: AtomicU64,
    /// `SCTLR_EL1` at entry.
    pub sctlr: AtomicU64,
    /// `CurrentEL` at entry.
    pub current_el: AtomicU64,
    /// Non-zero if it took an exception: `ESR_EL1`, `ELR_EL1`, `FAR_EL1`,
    /// vector + 1.
    pub fault: [AtomicU64; 4],
    /// `CPU_OFF`'s return value with bit 63 set, if `CPU_OFF` returned.
    pub off_error: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Self {
            arrived: AtomicU64::new(0),
            context: AtomicU64::new(0),
            mpidr: AtomicU64::new(0),
            daif: AtomicU64::new(0),
            sctlr: AtomicU64::new(0),
            current_el: AtomicU64::new(0),
            fault: [const { AtomicU64::new(0) }; 4],
            off_error: AtomicU64::new(0),
        }
    }

    /// Forgets the previous round.
    pub fn reset(&self) {
        for cell in [
            &self.arrived,
            &self.context,
            &self.mpidr,
            &self.daif,
            &self.sctlr,
        ]
        .into_iter()
        .chain([&self.current_el, &self.off_error])
        .chain(self.fault.iter())
        {
            cell.store(0, Ordering::Relaxed);
        }
    }
}

/// One slot per CPU index (the position of the CPU in the DT's `/cpus`).
pub static SLOTS: [Slot; MAX_CPUS] = [const { Slot::new() }; MAX_CPUS];
/// Secondaries that reached [`secondary_main`] since the last reset.
pub static ARRIVALS: AtomicU64 = AtomicU64::new(0);
/// Highest round the boot CPU released (secondaries of that round may switch
/// themselves off).
pub static RELEASED: AtomicU64 = AtomicU64::new(0);

/// [`TASK`]: park until released (the `cpu-on-*` checks).
pub const TASK_PARK: u64 = 0;
/// [`TASK`]: run this CPU's part of `own-concurrent`.
pub const TASK_OWNERSHIP: u64 = 1;
/// [`TASK`]: run vCPUs (`checks::vmm::run::secondary`).
pub const TASK_VCPU: u64 = 2;
/// What secondaries started from now on do after they arrive; set by the
/// boot CPU before `CPU_ON`.
pub static TASK: AtomicU64 = AtomicU64::new(TASK_PARK);

/// How long a parked secondary waits for its release before it switches
/// itself off anyway.
const PARK_TIMEOUT_MS: u64 = 20_000;

/// Rust entry of a secondary CPU.
pub fn secondary_main(entry: SecondaryEntry) -> ! {
    let index = (entry.context & 0xff) as usize;
    let Some(slot) = SLOTS.get(index) else {
        arch::halt()
    };
    slot.context.store(entry.context, Ordering::Relaxed);
    slot.mpidr
        .store(arch::mpidr() & MPIDR_AFFINITY_MASK, Ordering::Relaxed);
    slot.daif.store(entry.daif, Ordering::Relaxed);
    slot.sctlr.store(entry.sctlr, Ordering::Relaxed);
    slot.current_el.store(entry.current_el, Ordering::Relaxed);
    let round = (entry.context >> 8) & 0xff;
    slot.arrived.store(round.max(1), Ordering::Release);
    ARRIVALS.fetch_add(1, Ordering::AcqRel);

    let task = TASK.load(Ordering::Acquire);
    if task == TASK_OWNERSHIP {
        crate::checks::ownership_worker(index);
    } else if task == TASK_VCPU {
        crate::checks::vmm::run::secondary(index);
    } else if task == crate::checks::TASK_CHANNEL_PEEK {
        crate::checks::channel_peeker(index);
    } else if task == crate::fuzz::TASK_FUZZ {
        crate::fuzz::secondary(index);
    } else if task == crate::checks::TASK_SWAP_RACE {
        crate::checks::swap_race_runner(index);
    } else if task == crate::checks::TASK_BUSY_RUNNER {
        crate::checks::busy_runner(index);
    } else {
        wait_until(PARK_TIMEOUT_MS, || {
            RELEASED.load(Ordering::Acquire) >= round
        });
    }
    let error = psci::cpu_off();
    slot.off_error
        .store((1 << 63) | error as u64, Ordering::Release);
    arch::halt();
}

/// Called by the exception handler on a secondary: records the exception and
/// switches the CPU off.
pub fn secondary_fault(index: usize, exception: &Exception) -> ! {
    if let Some(slot) = SLOTS.get(index) {
        slot.fault[0].store(exception.esr, Ordering::Relaxed);
        slot.fault[1].store(exception.elr, Ordering::Relaxed);
        slot.fault[2].store(exception.far, Ordering::Relaxed);
        slot.fault[3].store(exception.vector + 1, Ordering::Release);
    }
    let error = psci::cpu_off();
    if let Some(slot) = SLOTS.get(index) {
        slot.off_error
            .store((1 << 63) | error as u64, Ordering::Release);
    }
    arch::halt();
}

/// Spins until `done()` or `timeout_ms` pass; returns whether `done()` held.
pub fn wait_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let frequency = arch::counter_frequency().max(1);
    let deadline = arch::counter().saturating_add(frequency.saturating_mul(timeout_ms) / 1000);
    loop {
        if done() {
            return true;
        }
        if arch::counter() > deadline {
            return done();
        }
        arch::spin_hint();
    }
}

/// Milliseconds since `start` (a [`arch::counter`] value).
pub fn elapsed_ms(start: u64) -> u64 {
    let frequency = arch::counter_frequency().max(1);
    arch::counter().wrapping_sub(start).saturating_mul(1000) / frequency
}
