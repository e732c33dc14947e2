//! Fuzz mode: seeded, deterministic streams of hostile host calls against
//! the real hypervisor, with a host-side model that knows which calls must
//! fail (issue 15).
//!
//! The bootarg `testhost.fuzz=seed=S,calls=N,check=K[,stop=I]` makes the
//! test host run this instead of its checks (`cargo xtask fuzz` boots it).
//! Every CPU runs its own stream of `N / cpus` actions (the boot CPU also
//! the remainder), seeded from `S` and its CPU index with SplitMix64 (ten
//! lines of our own: no dependency, a full 2^64 period, and one 64-bit state
//! that is trivially reproducible — statistical quality beyond that does
//! not matter here). A stream is deterministic; with several CPUs their
//! interleaving is not, so only a one-CPU replay is exact.
//!
//! Each CPU owns a 2 MiB window of usable RAM and tracks the state of every
//! page in it ([`model`]): the host's, shared with the hypervisor, donated
//! to it, given to or shared with one of its VMs, or held as a VM's
//! metadata. Actions draw their arguments from those pages, from the
//! carve-out, the control pages, MMIO, beyond RAM, unaligned, zero, huge and
//! wrapping counts, and from stale, forged and other CPUs' VM handles. A VM
//! runs the fuzz guest (`guest/fuzz`) for a random budget of exits while the
//! other CPUs keep changing ownership. About one call in eight goes through
//! the CPU's control-page channel instead of `HVC`.
//!
//! A host-side invariant fails when a call succeeds that the model says must
//! fail, a page the host holds faults (boot CPU probes), a donated page does
//! not fault, or pages coming back from the hypervisor or a destroyed VM are
//! not zero. Every `K` actions and at the end each CPU calls the oracle's
//! `ORACLE_CHECK` (`0xC600_8F00`); a hypervisor without the `oracle` feature
//! answers `NOT_SUPPORTED` and the run says it checked crashes and
//! host-side invariants only.
//!
//! Lines (each starts with `fuzz: `; only the boot CPU may print, so a
//! secondary's lines are kept and printed by the boot CPU at the end):
//!
//! ```text
//! fuzz: start seed=S calls=N cpus=C check=K window=...
//! fuzz: oracle absent|present ...
//! fuzz: FAILED seed=S cpu=C index=I: <why>      then the last calls:
//! fuzz:   call cpu=C index=I <name>(<args>) = <x0> [<x1>]
//! fuzz: oracle checked N events, M violations (cpu=C index=I)
//! fuzz: done seed=S calls=N violations=V hypercalls=H exits=E refusals=R
//! ```

mod cost;
mod model;
mod race;
mod stream;

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use dtoolkit::fdt::Fdt;

use crate::arch::{self, MAX_CPUS};
use crate::cpus::{self, ARRIVALS, SLOTS, TASK};
use crate::platform::Platform;
use crate::ranges::{Range, RangeSet};
use crate::{print, println, psci};

/// The bootarg.
pub const FUZZ_BOOTARG: &str = "testhost.fuzz=";
/// [`cpus::TASK`]: run a fuzz stream.
pub const TASK_FUZZ: u64 = 3;
/// `RAMPART_HOST_ORACLE_CHECK` (`HOST_FUNCTION_BASE + 0xF00`), called by
/// number until crates/abi has it.
pub const ORACLE_CHECK: u32 = 0xC600_8F00;
/// Pages in each CPU's window (2 MiB).
pub const WINDOW_PAGES: usize = 512;
const PAGE: u64 = rampart_abi::host::PAGE_SIZE;
const WINDOW: u64 = WINDOW_PAGES as u64 * PAGE;
/// The `CPU_ON` round in context ids.
const ROUND: u64 = 0x30;

/// What the bootarg asks for.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The run's seed.
    pub seed: u64,
    /// Actions in total over every CPU.
    pub calls: u64,
    /// `ORACLE_CHECK` every this many actions per CPU (0: only at the end).
    pub check: u64,
    /// Replay: each CPU stops after its action of this index.
    pub stop: Option<u64>,
}

/// The configuration, if the bootargs contain [`FUZZ_BOOTARG`].
pub fn config(p: &Platform) -> Option<Config> {
    let blob = arch::device_tree_blob(p.boot.x[0]).ok()?;
    let fdt = Fdt::new(blob).ok()?;
    let chosen = fdt.chosen()?;
    let bootargs = chosen.bootargs().ok()??;
    let list = bootargs
        .split_ascii_whitespace()
        .find_map(|a| a.strip_prefix(FUZZ_BOOTARG))?;
    let mut c = Config {
        seed: 1,
        calls: 10_000,
        check: 1_000,
        stop: None,
    };
    for item in list.split(',') {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        let Ok(v) = value.parse::<u64>() else {
            println!("fuzz: bad bootarg item `{item}`");
            continue;
        };
        match key {
            "seed" => c.seed = v,
            "calls" => c.calls = v,
            "check" => c.check = v,
            "stop" => c.stop = Some(v),
            _ => println!("fuzz: unknown bootarg key `{key}`"),
        }
    }
    Some(c)
}

/// What every CPU's stream needs to know (set by the boot CPU before
/// `CPU_ON`).
pub(crate) struct Shared {
    pub seed: AtomicU64,
    pub calls_per_cpu: AtomicU64,
    pub check: AtomicU64,
    pub stop: AtomicU64,
    pub window_base: AtomicU64,
    pub cpus: AtomicU64,
    /// Set at the first failure: every stream stops.
    pub failed: AtomicBool,
    /// Carve-out ranges, control pages, RAM end (for interesting values).
    pub carveout: [AtomicU64; 4],
    pub control: [AtomicU64; 2],
    pub ram_end: AtomicU64,
    /// Each CPU's live VM handles (foreign handles for the others).
    pub handles: [[AtomicU64; model::MAX_VMS]; MAX_CPUS],
    /// Whether the oracle answered `ORACLE_CHECK`.
    pub oracle: AtomicU64,
    /// Results, per CPU: actions done, hypercalls, guest exits, violations,
    /// refusals the model did not predict, finished flag.
    pub done: [AtomicU64; MAX_CPUS],
    pub hypercalls: [AtomicU64; MAX_CPUS],
    pub exits: [AtomicU64; MAX_CPUS],
    pub violations: [AtomicU64; MAX_CPUS],
    pub refusals: [AtomicU64; MAX_CPUS],
    /// Fuzz-guest VMs started.
    pub guests: [AtomicU64; MAX_CPUS],
    pub finished: [AtomicBool; MAX_CPUS],
    /// Per CPU: the call in flight (function ID, 0 when none; its first
    /// argument; the action index), and calls returned so far (for the
    /// boot CPU's hang report).
    pub current: [[AtomicU64; 3]; MAX_CPUS],
    pub progress: [AtomicU64; MAX_CPUS],
    /// `write-returned` (issue 15): the boot CPU waits for another CPU's
    /// `RECLAIM_HYP` and stores into its pages while the call is in flight
    /// (they come back to the host during it). `returning[c]` = (sequence
    /// number or 0, first page, pages) CPU `c` is reclaiming;
    /// `writers[c]`: writers inside its range (the reclaimer waits for 0
    /// after the call); `waiting`: the boot CPU waits for one.
    pub returning: [[AtomicU64; 3]; MAX_CPUS],
    pub writers: [AtomicU64; MAX_CPUS],
    /// Writers that ever entered CPU `c`'s announced ranges.
    pub visits: [AtomicU64; MAX_CPUS],
    pub waiting: AtomicBool,
    /// Stores that landed on a page while the call giving it back ran,
    /// and calls raced that way.
    pub raced_stores: AtomicU64,
    pub raced_calls: AtomicU64,
    /// The test host's own lock per control-page channel: a stream rings
    /// any CPU's channel, one at a time (a channel shared by threads, as
    /// the protocol allows with its own locking).
    pub channel_lock: [AtomicBool; 16],
    /// Doorbell calls made on another CPU's channel.
    pub foreign_channel: AtomicU64,
    /// Protected, signed fuzz-guest VMs started.
    pub protected_guests: [AtomicU64; MAX_CPUS],
    /// Races on one window (`race`): state, owner CPU, first page, pages,
    /// (unused), the partner's call (index into `race::CALLS`), its `x0`.
    pub race: [AtomicU64; 7],
    /// Races by how many of their two calls succeeded (0, 1, 2).
    pub races: [AtomicU64; 3],
    /// Issue 14 (`sealed.rs`): each CPU's protected, signed fuzz guest
    /// (0: none), whose pages other CPUs evict while it runs; per CPU:
    /// evictions, restores, hostile swap or migration calls refused, VMs
    /// exported to the end.
    pub sealed_target: [AtomicU64; MAX_CPUS],
    pub evictions: [AtomicU64; MAX_CPUS],
    pub restores: [AtomicU64; MAX_CPUS],
    pub sealed_refused: [AtomicU64; MAX_CPUS],
    pub exported: [AtomicU64; MAX_CPUS],
    /// Another CPU's protected guest stopped by an export's first call.
    pub foreign_stopped: [AtomicU64; MAX_CPUS],
}

pub(crate) static SHARED: Shared = Shared {
    seed: AtomicU64::new(0),
    calls_per_cpu: AtomicU64::new(0),
    check: AtomicU64::new(0),
    stop: AtomicU64::new(u64::MAX),
    window_base: AtomicU64::new(0),
    cpus: AtomicU64::new(1),
    failed: AtomicBool::new(false),
    carveout: [const { AtomicU64::new(0) }; 4],
    control: [const { AtomicU64::new(0) }; 2],
    ram_end: AtomicU64::new(0),
    handles: [const { [const { AtomicU64::new(0) }; model::MAX_VMS] }; MAX_CPUS],
    oracle: AtomicU64::new(0),
    done: [const { AtomicU64::new(0) }; MAX_CPUS],
    hypercalls: [const { AtomicU64::new(0) }; MAX_CPUS],
    exits: [const { AtomicU64::new(0) }; MAX_CPUS],
    violations: [const { AtomicU64::new(0) }; MAX_CPUS],
    refusals: [const { AtomicU64::new(0) }; MAX_CPUS],
    guests: [const { AtomicU64::new(0) }; MAX_CPUS],
    finished: [const { AtomicBool::new(false) }; MAX_CPUS],
    current: [const { [const { AtomicU64::new(0) }; 3] }; MAX_CPUS],
    progress: [const { AtomicU64::new(0) }; MAX_CPUS],
    returning: [const { [const { AtomicU64::new(0) }; 3] }; MAX_CPUS],
    writers: [const { AtomicU64::new(0) }; MAX_CPUS],
    visits: [const { AtomicU64::new(0) }; MAX_CPUS],
    waiting: AtomicBool::new(false),
    raced_stores: AtomicU64::new(0),
    raced_calls: AtomicU64::new(0),
    channel_lock: [const { AtomicBool::new(false) }; 16],
    foreign_channel: AtomicU64::new(0),
    protected_guests: [const { AtomicU64::new(0) }; MAX_CPUS],
    race: [const { AtomicU64::new(0) }; 7],
    races: [const { AtomicU64::new(0) }; 3],
    sealed_target: [const { AtomicU64::new(0) }; MAX_CPUS],
    evictions: [const { AtomicU64::new(0) }; MAX_CPUS],
    restores: [const { AtomicU64::new(0) }; MAX_CPUS],
    sealed_refused: [const { AtomicU64::new(0) }; MAX_CPUS],
    exported: [const { AtomicU64::new(0) }; MAX_CPUS],
    foreign_stopped: [const { AtomicU64::new(0) }; MAX_CPUS],
};

/// How long the secondaries may go without a call returning, once the boot
/// CPU's stream is done, before the run is reported as hung (a single call,
/// even a `VCPU_RUN` under its 50 ms deadline on a loaded machine, takes far
/// less).
pub(crate) const STALL_MS: u64 = 30_000;

/// Bytes of `fuzz:` lines each secondary may leave for the boot CPU to
/// print (only the boot CPU may use the console, `arch::console_write`).
const REPORT_BYTES: usize = 4096;
/// Each secondary's lines, by CPU index, and how many bytes are used.
static REPORTS: [[AtomicU8; REPORT_BYTES]; MAX_CPUS] =
    [const { [const { AtomicU8::new(0) }; REPORT_BYTES] }; MAX_CPUS];
static REPORT_LEN: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Appends to a secondary's report (what does not fit is dropped).
struct Report(usize);

impl core::fmt::Write for Report {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let (Some(buf), Some(len)) = (REPORTS.get(self.0), REPORT_LEN.get(self.0)) else {
            return Ok(());
        };
        for byte in text.bytes() {
            let n = len.load(Ordering::Relaxed);
            let Some(cell) = buf.get(n) else { break };
            cell.store(byte, Ordering::Relaxed);
            len.store(n + 1, Ordering::Release);
        }
        Ok(())
    }
}

/// One `fuzz:` line: printed at once on the boot CPU, kept in the CPU's
/// report on a secondary (printed by the boot CPU at the end).
pub(crate) fn line(args: core::fmt::Arguments<'_>) {
    match arch::cpu_slot() {
        0 => print!("fuzz: {args}\n"),
        slot => {
            let _ =
                core::fmt::Write::write_fmt(&mut Report(slot - 1), format_args!("fuzz: {args}\n"));
        }
    }
}

/// Prints what secondary `index` left in its report.
fn print_report(index: usize) {
    let (Some(buf), Some(len)) = (REPORTS.get(index), REPORT_LEN.get(index)) else {
        return;
    };
    let n = len.load(Ordering::Acquire).min(REPORT_BYTES);
    let mut chunk = [0u8; 128];
    let mut used = 0;
    for cell in &buf[..n] {
        chunk[used] = cell.load(Ordering::Relaxed);
        used += 1;
        if used == chunk.len() {
            print!("{}", core::str::from_utf8(&chunk[..used]).unwrap_or("?"));
            used = 0;
        }
    }
    print!("{}", core::str::from_utf8(&chunk[..used]).unwrap_or("?"));
}

/// `fuzz: ...` on one line from any CPU.
#[macro_export]
macro_rules! fuzz_line {
    ($($arg:tt)*) => { $crate::fuzz::line(format_args!($($arg)*)) };
}

/// Finds `cpus` 2 MiB windows of usable RAM, away from the image and the DT
/// (the highest such range below the last block of RAM).
fn windows(p: &Platform, cpus: u64) -> Option<Range> {
    let mut usable: RangeSet<64> = p.usable_memory();
    usable.subtract(&p.image);
    usable.subtract(&p.dt);
    let ram_end = p.memory.as_slice().iter().map(|r| r.end).max().unwrap_or(0);
    let top = ram_end.saturating_sub(PAGE) & !(WINDOW - 1);
    let size = cpus * WINDOW;
    usable
        .as_slice()
        .iter()
        .filter_map(|r| {
            let aligned = r.align_inward(WINDOW);
            let end = aligned.end.min(top);
            (end >= aligned.start + size).then(|| Range::from_base_size(end - size, size))
        })
        .max_by_key(|r| r.start)
}

/// The control pages: `reg` of the root node compatible with
/// `rampart,control`.
fn control_pages(p: &Platform) -> Option<Range> {
    p.control_pages()
}

/// Runs the fuzz streams on every CPU and prints the outcome. The caller
/// powers off.
pub fn run(p: &Platform, c: Config) {
    let cpus = p.cpu_count.clamp(1, MAX_CPUS) as u64;
    let Some(window) = windows(p, cpus) else {
        println!(
            "fuzz: FAILED seed={} cpu=0 index=0: no {} MiB of usable RAM for the windows",
            c.seed,
            cpus * 2
        );
        println!("fuzz: done seed={} calls=0 violations=1", c.seed);
        return;
    };
    let s = &SHARED;
    s.seed.store(c.seed, Ordering::Relaxed);
    s.calls_per_cpu.store(c.calls / cpus, Ordering::Relaxed);
    s.check.store(c.check, Ordering::Relaxed);
    s.stop.store(c.stop.unwrap_or(u64::MAX), Ordering::Relaxed);
    s.window_base.store(window.start, Ordering::Relaxed);
    s.cpus.store(cpus, Ordering::Relaxed);
    for (i, r) in p
        .carveout_nodes()
        .flat_map(|n| n.reg.as_slice().iter())
        .take(2)
        .enumerate()
    {
        s.carveout[2 * i].store(r.start, Ordering::Relaxed);
        s.carveout[2 * i + 1].store(r.end, Ordering::Relaxed);
    }
    if let Some(control) = control_pages(p) {
        s.control[0].store(control.start, Ordering::Relaxed);
        s.control[1].store(control.end, Ordering::Relaxed);
    }
    let ram_end = p.memory.as_slice().iter().map(|r| r.end).max().unwrap_or(0);
    s.ram_end.store(ram_end, Ordering::Relaxed);
    let control = control_pages(p).unwrap_or_default();
    fuzz_line!(
        "start seed={} calls={} cpus={cpus} check={} stop={} window={:#x}..{:#x} control={control} ram_end={ram_end:#x}",
        c.seed,
        c.calls,
        c.check,
        c.stop.map_or(-1, |v| v as i64),
        window.start,
        window.end
    );
    let oracle = psci::call_via(psci::Conduit::Hvc, ORACLE_CHECK, &[]);
    if oracle[0] as i64 == rampart_abi::Error::NotSupported.code() {
        s.oracle.store(0, Ordering::Relaxed);
        fuzz_line!(
            "oracle absent (ORACLE_CHECK = NOT_SUPPORTED): checking crashes and host-side invariants only"
        );
    } else {
        s.oracle.store(1, Ordering::Relaxed);
        fuzz_line!(
            "oracle present: ORACLE_CHECK = {} (violations {}, events {})",
            oracle[0] as i64,
            oracle[1],
            oracle[2]
        );
    }

    if let Err(e) = crate::checks::vmm::gic::init(p) {
        fuzz_line!("note: no GIC set-up ({e}): a guest that stops exiting cannot be interrupted");
    }
    // The secondaries first; the boot CPU runs stream 0 itself.
    let boot = arch::cpu_slot();
    ARRIVALS.store(0, Ordering::Release);
    TASK.store(TASK_FUZZ, Ordering::Release);
    let mut started = 0u64;
    for i in (0..cpus as usize).filter(|&i| i != boot) {
        SLOTS[i].reset();
        let ret = psci::cpu_on(
            p.cpus[i],
            arch::secondary_entry_address(),
            cpus::context_id(ROUND, i),
        );
        if ret == psci::SUCCESS {
            started += 1;
        } else {
            fuzz_line!(
                "CPU_ON({:#x}) = {ret}: that CPU's stream does not run",
                p.cpus[i]
            );
        }
    }
    let extra = c.calls % cpus;
    let guarded = arch::guarded(&mut || stream::run(0, extra));
    if let Err(exception) = guarded {
        s.failed.store(true, Ordering::Release);
        s.violations[0].fetch_add(1, Ordering::AcqRel);
        fuzz_line!(
            "FAILED seed={} cpu=0 index={}: the host took an exception it did not ask for: {exception}",
            c.seed,
            s.done[0].load(Ordering::Acquire)
        );
    }
    s.finished[0].store(true, Ordering::Release);
    // Wait for the secondaries while they make progress: one whose calls
    // stop returning is a hang, reported with the call it is in.
    let ended = |i: usize| {
        s.finished[i].load(Ordering::Acquire) || SLOTS[i].fault[3].load(Ordering::Acquire) != 0
    };
    let all = loop {
        let before: u64 = (1..cpus as usize)
            .map(|i| s.progress[i].load(Ordering::Acquire))
            .sum();
        if cpus::wait_until(STALL_MS, || (1..cpus as usize).all(ended)) {
            break true;
        }
        let after: u64 = (1..cpus as usize)
            .map(|i| s.progress[i].load(Ordering::Acquire))
            .sum();
        if after == before {
            break false;
        }
    };
    for i in 1..cpus as usize {
        print_report(i);
    }
    let mut failed = !all;
    if !all {
        for i in (1..cpus as usize).filter(|&i| !ended(i)) {
            let cur = &s.current[i];
            let id = cur[0].load(Ordering::Acquire) as u32;
            fuzz_line!(
                "FAILED seed={} cpu={i} index={}: hang: no call returned for {} s; in flight: {}",
                c.seed,
                s.done[i].load(Ordering::Acquire),
                STALL_MS / 1000,
                if id == 0 {
                    "none (the stream itself is stuck)"
                } else {
                    stream::name(id)
                }
            );
            if id != 0 {
                fuzz_line!(
                    "  call cpu={i} index={} {}(x1={:#x}, ...) never returned",
                    cur[2].load(Ordering::Acquire),
                    stream::name(id),
                    cur[1].load(Ordering::Acquire)
                );
            }
        }
    }
    for (i, slot) in SLOTS.iter().enumerate().take(cpus as usize).skip(1) {
        if slot.fault[3].load(Ordering::Acquire) != 0 {
            failed = true;
            fuzz_line!(
                "FAILED seed={} cpu={i} index={}: the CPU took an exception: ESR {:#x} ELR {:#x} FAR {:#x}",
                c.seed,
                s.done[i].load(Ordering::Acquire),
                slot.fault[0].load(Ordering::Acquire),
                slot.fault[1].load(Ordering::Acquire),
                slot.fault[2].load(Ordering::Acquire)
            );
        }
    }
    let _ = started;
    let sum = |a: &[AtomicU64; MAX_CPUS]| {
        a[..cpus as usize]
            .iter()
            .map(|v| v.load(Ordering::Acquire))
            .sum::<u64>()
    };
    // The last word: one check over everything every CPU did.
    let mut violations = sum(&s.violations) + u64::from(failed);
    if s.oracle.load(Ordering::Relaxed) == 1 {
        let r = psci::call_via(psci::Conduit::Hvc, ORACLE_CHECK, &[]);
        fuzz_line!(
            "oracle checked {} events, {} violations (final)",
            r[2],
            r[1]
        );
        violations += r[1];
    }
    cost::rate(cpus as usize);
    cost::report(cpus as usize);
    fuzz_line!(
        "note channels: {} doorbell calls on another CPU's channel; {} protected fuzz guests",
        s.foreign_channel.load(Ordering::Acquire),
        sum(&s.protected_guests)
    );
    fuzz_line!(
        "note sealed: {} evictions, {} restores, {} hostile swap or migration calls refused, {} VMs exported to the end, {} running guests of another CPU stopped by an export",
        sum(&s.evictions),
        sum(&s.restores),
        sum(&s.sealed_refused),
        sum(&s.exported),
        sum(&s.foreign_stopped)
    );
    let races = race::counts();
    fuzz_line!(
        "note races: {} memory calls on another CPU's window raced its own on the same pages ({} both succeeded, {} one, {} neither)",
        races.iter().sum::<u64>(),
        races[2],
        races[1],
        races[0]
    );
    fuzz_line!(
        "note write-returned: {} stores landed on pages while {} RECLAIM_HYP calls giving them back ran on another CPU",
        s.raced_stores.load(Ordering::Acquire),
        s.raced_calls.load(Ordering::Acquire)
    );
    fuzz_line!(
        "done seed={} calls={} violations={violations} hypercalls={} exits={} guests={} refusals={} cpus={cpus} oracle={}",
        c.seed,
        sum(&s.done),
        sum(&s.hypercalls),
        sum(&s.exits),
        sum(&s.guests),
        sum(&s.refusals),
        if s.oracle.load(Ordering::Relaxed) == 1 {
            "yes"
        } else {
            "no"
        }
    );
}

/// A secondary's part: its own stream, then back to `CPU_OFF`.
pub fn secondary(index: usize) {
    stream::run(index, 0);
    SHARED.finished[index].store(true, Ordering::Release);
}
