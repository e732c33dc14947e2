//! Where a fuzz run's time goes (issue 15, "the collapse"): per CPU, the
//! counter ticks spent in each kind of action and in each host call, and
//! a `fuzz: rate` line every [`RATE_EVERY`] actions of the boot CPU with
//! every CPU's progress and the counter, from which `cargo xtask fuzz`
//! prints calls/s per segment of the run.
//!
//! Lines (at the end, by the boot CPU):
//!
//! ```text
//! fuzz: rate done=D ticks=T hz=F                (during the run)
//! fuzz: cost cpu=C action=<name> n=N ms=M       (at the end)
//! fuzz: cost cpu=C call=<name> n=N ms=M max_ms=X
//! ```

use core::sync::atomic::{AtomicU64, Ordering};

use rampart_abi::host::HostCall;

use crate::arch::{self, MAX_CPUS};
use crate::fuzz_line;

/// A `fuzz: rate` line every this many actions of the boot CPU.
pub const RATE_EVERY: u64 = 1_000;

/// Action kinds ([`Stream::step`](super::stream)).
pub const ACTIONS: [&str; 19] = [
    "memory",
    "memory-bad",
    "vm-create",
    "guest-vm",
    "vm-destroy",
    "vm-give",
    "vcpu-create",
    "vcpu-run",
    "vcpu-poke",
    "signature",
    "misc",
    "bad-handle",
    "write-returned",
    "touch",
    "give-back",
    "race-owner",
    "race-partner",
    "sealed-swap",
    "migration",
];

/// Host calls by [`HostCall::ALL`] index, then the oracle's check, then
/// any other function ID.
const CALLS: usize = HostCall::ALL.len() + 2;

struct Counters {
    /// [count, ticks] per action kind.
    actions: [[AtomicU64; 2]; ACTIONS.len()],
    /// [count, ticks, max ticks] per call.
    calls: [[AtomicU64; 3]; CALLS],
}

static COST: [Counters; MAX_CPUS] = [const {
    Counters {
        actions: [const { [const { AtomicU64::new(0) }; 2] }; ACTIONS.len()],
        calls: [const { [const { AtomicU64::new(0) }; 3] }; CALLS],
    }
}; MAX_CPUS];

fn call_index(id: u32) -> usize {
    if id == super::ORACLE_CHECK {
        return HostCall::ALL.len();
    }
    HostCall::ALL
        .iter()
        .position(|c| c.id() == id)
        .unwrap_or(CALLS - 1)
}

fn call_name(index: usize) -> &'static str {
    match HostCall::ALL.get(index) {
        Some(c) => c.name().strip_prefix("RAMPART_HOST_").unwrap_or(c.name()),
        None if index == HostCall::ALL.len() => "ORACLE_CHECK",
        None => "UNASSIGNED",
    }
}

/// Counts an action of kind `kind` (an index into [`ACTIONS`]) that took
/// `ticks`.
pub fn action(cpu: usize, kind: usize, ticks: u64) {
    if let Some(a) = COST.get(cpu).and_then(|c| c.actions.get(kind)) {
        a[0].fetch_add(1, Ordering::Relaxed);
        a[1].fetch_add(ticks, Ordering::Relaxed);
    }
}

/// Counts a host call `id` that took `ticks`.
pub fn call(cpu: usize, id: u32, ticks: u64) {
    if let Some(c) = COST.get(cpu).and_then(|c| c.calls.get(call_index(id))) {
        c[0].fetch_add(1, Ordering::Relaxed);
        c[1].fetch_add(ticks, Ordering::Relaxed);
        c[2].fetch_max(ticks, Ordering::Relaxed);
    }
}

/// The boot CPU's `fuzz: rate` line: actions done over every CPU and the
/// counter now.
pub fn rate(cpus: usize) {
    let done: u64 = super::SHARED.done[..cpus.min(MAX_CPUS)]
        .iter()
        .map(|d| d.load(Ordering::Acquire))
        .sum();
    fuzz_line!(
        "rate done={done} ticks={} hz={}",
        arch::counter(),
        arch::counter_frequency()
    );
}

/// Prints the `fuzz: cost` lines of the first `cpus` CPUs (what took any
/// time, in milliseconds).
pub fn report(cpus: usize) {
    let hz = arch::counter_frequency().max(1);
    let ms = |t: u64| t.saturating_mul(1000) / hz;
    for (cpu, c) in COST.iter().enumerate().take(cpus) {
        for (name, a) in ACTIONS.iter().zip(&c.actions) {
            let n = a[0].load(Ordering::Relaxed);
            if n != 0 {
                fuzz_line!(
                    "cost cpu={cpu} action={name} n={n} ms={}",
                    ms(a[1].load(Ordering::Relaxed))
                );
            }
        }
        for (i, a) in c.calls.iter().enumerate() {
            let n = a[0].load(Ordering::Relaxed);
            if n != 0 {
                fuzz_line!(
                    "cost cpu={cpu} call={} n={n} ms={} max_ms={}",
                    call_name(i),
                    ms(a[1].load(Ordering::Relaxed)),
                    ms(a[2].load(Ordering::Relaxed))
                );
            }
        }
    }
}
