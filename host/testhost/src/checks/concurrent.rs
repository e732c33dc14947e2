//! `own-concurrent`: several CPUs make host memory calls on overlapping
//! ranges of one 2 MiB block at the same time, while another writes pages
//! next to (and inside) ranges whose mappings are being rewritten.
//!
//! Pages are numbered from the start of the block (scratch block 5):
//!
//! | CPU | loop | pages |
//! |---|---|---|
//! | boot | share, load from three pages, unshare | [0, 64) |
//! | 1st secondary | mark, donate, reclaim, check the marks are gone | [40, 72) |
//! | 2nd secondary | share, load from every page, unshare | [48, 112) |
//! | 3rd secondary | write and verify a pattern until the others finish | [0, 32) and [112, 176) |
//!
//! Every call must return SUCCESS or DENIED, and a CPU that got SUCCESS must
//! be able to undo it (nobody else can change pages it holds). The writer's
//! pages are never donated, so none of its accesses may abort, even while a
//! share on another CPU rewrites their stage-2 entries. Afterwards every page
//! is readable and the whole block can be shared, unshared, donated and
//! reclaimed (no page was left in a stuck state). With fewer CPUs the rows
//! from the bottom are dropped. Each CPU waits a pseudo-random few
//! microseconds between rounds so that they fall in and out of step.
//!
//! The donated range is kept small: under QEMU TCG every reclaimed page costs
//! a broadcast TLB invalidation, which stops every vCPU.

use core::sync::atomic::{AtomicU64, Ordering};

use rampart_abi::host::HostCall::{self, DonateHyp, ReclaimHyp, ShareHyp, UnshareHyp};

use super::ownership::{
    BLOCK_PAGES, Code, DENIED, Layout, OK, PAGE, ctx, each_page, expect, expect_loads, expect_zero,
    pages, raw_call, restoring, rewrite, short,
};
use crate::arch::{self, Access, MAX_CPUS};
use crate::cpus::{self, ARRIVALS, SLOTS, TASK, TASK_OWNERSHIP, TASK_PARK};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::ranges::Range;
use crate::{ensure, fail, msg, note, psci};

/// Rounds each churning CPU makes (one or two calls each).
const ITERATIONS: u64 = 200;
/// Most counter ticks a CPU waits between rounds (about 30 us at QEMU's
/// 62.5 MHz).
const MAX_PAUSE_TICKS: u64 = 2048;
/// How long anything here waits for another CPU.
const TIMEOUT_MS: u64 = 5_000;
/// The `CPU_ON` round in the context ids (only the low byte, the CPU index,
/// matters to the entry code).
const ROUND: u64 = 0x20;
/// Seed of the writer's pattern (low six bits zero).
const WRITER_SEED: u64 = 0x7711_7e00_0000_0000;
/// What the donating CPU writes before each donate (reclaim must zero it).
const MARKER: u64 = 0x6d61_726b_0000_0000;

/// What a CPU does in the check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Nothing (not started).
    Idle,
    /// Share and unshare `[first, first + count)`.
    Share { first: u64, count: u64 },
    /// Donate and reclaim `[first, first + count)`.
    Donate { first: u64, count: u64 },
    /// Write and verify the pages no one donates.
    Writer,
}

const BOOT_ROLE: Role = Role::Share {
    first: 0,
    count: 64,
};
/// Roles of the secondaries, in the order they are handed out.
const SECONDARY_ROLES: [Role; 3] = [
    Role::Donate {
        first: 40,
        count: 32,
    },
    Role::Share {
        first: 48,
        count: 64,
    },
    Role::Writer,
];
/// The writer's pages: `(first, count)`.
const WRITER_PAGES: [(u64, u64); 2] = [(0, 32), (112, 64)];

impl Role {
    fn encode(self) -> u64 {
        match self {
            Role::Idle => 0,
            Role::Writer => 1,
            Role::Share { first, count } => 2 | first << 16 | count << 32,
            Role::Donate { first, count } => 3 | first << 16 | count << 32,
        }
    }

    fn decode(value: u64) -> Role {
        let (first, count) = ((value >> 16) & 0xffff, value >> 32);
        match value & 0xff {
            1 => Role::Writer,
            2 => Role::Share { first, count },
            3 => Role::Donate { first, count },
            _ => Role::Idle,
        }
    }

    /// Whether the role makes calls (the writer waits for those that do).
    fn churns(self) -> bool {
        matches!(self, Role::Share { .. } | Role::Donate { .. })
    }
}

/// Problems a CPU can report (`Report::problem[0]`).
mod problem {
    /// A call returned something other than SUCCESS or DENIED.
    pub const UNEXPECTED: u64 = 1;
    /// Undoing a call that succeeded failed.
    pub const UNDO: u64 = 2;
    /// A word of a reclaimed page was not zero: `address, value`.
    pub const NOT_ZEROED: u64 = 3;
    /// The writer read back something else: `address, got, expected`.
    pub const MISMATCH: u64 = 4;
    /// A load from a page the boot CPU held shared aborted: `address, ESR`.
    pub const ABORT: u64 = 5;
    /// The boot CPU's signal to start never came.
    pub const NO_START: u64 = 6;
}

/// What one CPU did; written only by that CPU, read by the boot CPU after.
struct Report {
    /// Its [`Role`], encoded; set by the boot CPU before `CPU_ON`.
    role: AtomicU64,
    /// Calls made.
    calls: AtomicU64,
    /// Calls that returned SUCCESS.
    ok: AtomicU64,
    /// Calls that returned DENIED.
    denied: AtomicU64,
    /// Loop iterations (writer: passes over its pages).
    passes: AtomicU64,
    /// The first problem: kind (0 = none), then up to four values.
    problem: [AtomicU64; 5],
    /// Set when the CPU has finished.
    done: AtomicU64,
}

impl Report {
    const fn new() -> Self {
        Self {
            role: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            problem: [const { AtomicU64::new(0) }; 5],
            done: AtomicU64::new(0),
        }
    }

    fn reset(&self, role: Role) {
        for cell in [
            &self.calls,
            &self.ok,
            &self.denied,
            &self.passes,
            &self.done,
        ]
        .into_iter()
        .chain(self.problem.iter())
        {
            cell.store(0, Ordering::Relaxed);
        }
        self.role.store(role.encode(), Ordering::Release);
    }

    fn role(&self) -> Role {
        Role::decode(self.role.load(Ordering::Acquire))
    }

    /// Records the first problem; later ones are dropped.
    fn problem(&self, kind: u64, values: [u64; 4]) {
        if self.problem[0].load(Ordering::Relaxed) != 0 {
            return;
        }
        for (cell, value) in self.problem[1..].iter().zip(values) {
            cell.store(value, Ordering::Relaxed);
        }
        self.problem[0].store(kind, Ordering::Release);
    }

    /// Makes a call and counts it; returns `x0`.
    fn call(&self, call: HostCall, address: u64, count: u64) -> i64 {
        let ret = raw_call(call, address, count);
        self.calls.fetch_add(1, Ordering::Relaxed);
        match ret {
            OK => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            DENIED => {
                self.denied.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.problem(
                problem::UNEXPECTED,
                [u64::from(call.id()), address, count, ret as u64],
            ),
        }
        ret
    }

    /// Undoes a call that succeeded; it must succeed too. Returns whether it did.
    fn undo(&self, call: HostCall, address: u64, count: u64) -> bool {
        let ret = self.call(call, address, count);
        if ret != OK {
            self.problem(
                problem::UNDO,
                [u64::from(call.id()), address, count, ret as u64],
            );
        }
        ret == OK
    }

    /// Describes the problem, if any.
    fn describe(&self) -> Option<Msg> {
        let v = |i: usize| self.problem[i].load(Ordering::Relaxed);
        let name = |id: u64| HostCall::try_from(u32::try_from(id).unwrap_or(0)).map_or("?", short);
        Some(match v(0) {
            0 => return None,
            problem::UNEXPECTED => msg!(
                "{}({:#x}, {}) = {}, expected SUCCESS (0) or DENIED (-16)",
                name(v(1)),
                v(2),
                v(3),
                Code(v(4) as i64)
            ),
            problem::UNDO => msg!(
                "{}({:#x}, {}) of pages it had just been given = {}, expected SUCCESS (0)",
                name(v(1)),
                v(2),
                v(3),
                Code(v(4) as i64)
            ),
            problem::NOT_ZEROED => msg!(
                "after RECLAIM_HYP, {:#x} reads {:#x}, expected 0 (it wrote {:#x} before DONATE_HYP)",
                v(1),
                v(2),
                MARKER | v(1)
            ),
            problem::MISMATCH => msg!("{:#x} read back {:#x}, wrote {:#x}", v(1), v(2), v(3)),
            problem::ABORT => msg!(
                "a load from {:#x}, in pages it held shared, aborted (ESR={:#x})",
                v(1),
                v(2)
            ),
            problem::NO_START => msg!("never told to start"),
            other => msg!("problem {other}"),
        })
    }
}

/// One report per CPU slot (0 = boot CPU, `i + 1` = CPU index `i`).
static REPORTS: [Report; MAX_CPUS + 1] = [const { Report::new() }; MAX_CPUS + 1];
/// First address of the block.
static BASE: AtomicU64 = AtomicU64::new(0);
/// Set by the boot CPU when every worker has arrived.
static GO: AtomicU64 = AtomicU64::new(0);
/// Set by the boot CPU to stop everyone early (and the writer at the end).
static STOP: AtomicU64 = AtomicU64::new(0);
/// CPUs still making calls; the writer stops when this reaches 0.
static CHURNING: AtomicU64 = AtomicU64::new(0);

fn stopped() -> bool {
    STOP.load(Ordering::Acquire) != 0
}

/// A secondary's part, called from `cpus::secondary_main` with its CPU index.
pub fn worker(index: usize) {
    let Some(report) = REPORTS.get(index + 1) else {
        return;
    };
    let role = report.role();
    if !cpus::wait_until(TIMEOUT_MS, || GO.load(Ordering::Acquire) != 0) {
        report.problem(problem::NO_START, [0; 4]);
    } else {
        let base = BASE.load(Ordering::Acquire);
        match role {
            Role::Idle => {}
            Role::Share { first, count } => {
                share_loop(report, base + first * PAGE, count, |range| {
                    // A fault here ends this CPU (see `cpus::secondary_fault`).
                    for page in each_page(range) {
                        arch::ram_read(page);
                    }
                    true
                })
            }
            Role::Donate { first, count } => donate_loop(report, base + first * PAGE, count),
            Role::Writer => writer_loop(report, base),
        }
    }
    if role.churns() {
        CHURNING.fetch_sub(1, Ordering::AcqRel);
    }
    report.done.store(1, Ordering::Release);
}

/// A pseudo-random pause between rounds.
struct Jitter(u64);

impl Jitter {
    /// A generator that differs per CPU and per run.
    fn new() -> Self {
        Jitter(arch::counter() ^ (arch::cpu_slot() as u64) << 32 | 1)
    }

    /// Spins for fewer than [`MAX_PAUSE_TICKS`] counter ticks.
    fn pause(&mut self) {
        // Knuth's MMIX linear congruential generator; the high bits are the
        // good ones.
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let until = arch::counter() + (self.0 >> 33) % MAX_PAUSE_TICKS;
        while arch::counter() < until {
            arch::spin_hint();
        }
    }
}

/// Shares `count` pages at `start`, lets `held` look at them, holds them a
/// moment, unshares them.
fn share_loop(report: &Report, start: u64, count: u64, mut held: impl FnMut(Range) -> bool) {
    let mut jitter = Jitter::new();
    for _ in 0..ITERATIONS {
        if stopped() {
            break;
        }
        jitter.pause();
        report.passes.fetch_add(1, Ordering::Relaxed);
        if report.call(ShareHyp, start, count) != OK {
            continue;
        }
        let looked = held(pages(start, count));
        jitter.pause();
        if !(report.undo(UnshareHyp, start, count) && looked) {
            break;
        }
    }
}

/// Marks `count` pages at `start`, donates them, holds them a moment,
/// reclaims them and checks the marks are gone.
fn donate_loop(report: &Report, start: u64, count: u64) {
    let range = pages(start, count);
    let mut jitter = Jitter::new();
    for _ in 0..ITERATIONS {
        if stopped() {
            break;
        }
        jitter.pause();
        report.passes.fetch_add(1, Ordering::Relaxed);
        for page in each_page(range) {
            for address in [page, page + PAGE - 8] {
                arch::ram_write(address, MARKER | address);
            }
        }
        if report.call(DonateHyp, start, count) != OK {
            continue;
        }
        jitter.pause();
        if !report.undo(ReclaimHyp, start, count) {
            break;
        }
        for page in each_page(range) {
            for address in [page, page + PAGE - 8] {
                let value = arch::ram_read(address);
                if value != 0 {
                    report.problem(problem::NOT_ZEROED, [address, value, 0, 0]);
                    return;
                }
            }
        }
    }
}

/// Writes and verifies a pattern over the writer's pages until no CPU is
/// making calls any more.
fn writer_loop(report: &Report, base: u64) {
    let start = arch::counter();
    let mut pass = 0u64;
    while CHURNING.load(Ordering::Acquire) != 0
        && !stopped()
        && cpus::elapsed_ms(start) < TIMEOUT_MS
    {
        let seed = WRITER_SEED ^ (pass << 6);
        for (first, count) in WRITER_PAGES {
            let range = pages(base + first * PAGE, count);
            arch::ram_fill(range.start, range.end, seed);
            if let Some(block) = arch::ram_verify(range.start, range.end, seed) {
                for address in (block..block + arch::RAM_BLOCK).step_by(8) {
                    let (got, expected) =
                        (arch::ram_read(address), arch::ram_pattern(address, seed));
                    if got != expected {
                        report.problem(problem::MISMATCH, [address, got, expected, 0]);
                        return;
                    }
                }
            }
        }
        pass += 1;
        report.passes.store(pass, Ordering::Relaxed);
    }
}

/// `own-concurrent`: see the module documentation.
pub fn own_concurrent(p: &Platform) -> Result<(), Msg> {
    let l = Layout::find(p)?;
    let block = pages(l.block(5), BLOCK_PAGES);
    restoring(&[block], || {
        run(p, block)?;
        check_block(block)
    })
}

/// Runs the loops on every CPU and checks what each reports.
fn run(p: &Platform, block: Range) -> Result<(), Msg> {
    let boot = super::cpu::boot_cpu_index(p)?;
    let mut workers = [(0usize, Role::Idle); 3];
    let mut count = 0;
    for (i, role) in (0..p.cpu_count).filter(|&i| i != boot).zip(SECONDARY_ROLES) {
        workers[count] = (i, role);
        count += 1;
    }
    let workers = &workers[..count];

    BASE.store(block.start, Ordering::Release);
    GO.store(0, Ordering::Release);
    STOP.store(0, Ordering::Release);
    REPORTS[0].reset(BOOT_ROLE);
    let churning = 1 + workers.iter().filter(|(_, role)| role.churns()).count() as u64;
    CHURNING.store(churning, Ordering::Release);
    ARRIVALS.store(0, Ordering::Release);
    TASK.store(TASK_OWNERSHIP, Ordering::Release);

    let mut started = 0;
    let mut result = Ok(());
    for &(i, role) in workers {
        SLOTS[i].reset();
        REPORTS[i + 1].reset(role);
        let ret = psci::cpu_on(
            p.cpus[i],
            arch::secondary_entry_address(),
            cpus::context_id(ROUND, i),
        );
        if ret != psci::SUCCESS {
            result = Err(msg!(
                "CPU_ON({:#x}) = {ret}, expected SUCCESS (0)",
                p.cpus[i]
            ));
            break;
        }
        started += 1;
    }
    let workers = &workers[..started];
    if result.is_ok()
        && !cpus::wait_until(TIMEOUT_MS, || {
            ARRIVALS.load(Ordering::Acquire) >= started as u64
        })
    {
        result = Err(msg!(
            "{} of {started} secondaries arrived within {TIMEOUT_MS} ms",
            ARRIVALS.load(Ordering::Acquire)
        ));
    }
    if result.is_err() {
        STOP.store(1, Ordering::Release);
    }
    let start = arch::counter();
    GO.store(1, Ordering::Release);

    if result.is_ok() {
        boot_loop(block.start);
    }
    CHURNING.fetch_sub(1, Ordering::AcqRel);
    let finished = |i: usize| {
        REPORTS[i + 1].done.load(Ordering::Acquire) != 0
            || SLOTS[i].fault[3].load(Ordering::Acquire) != 0
    };
    let all_finished = || workers.iter().all(|&(i, _)| finished(i));
    if !cpus::wait_until(TIMEOUT_MS, all_finished) {
        STOP.store(1, Ordering::Release);
        cpus::wait_until(TIMEOUT_MS, all_finished);
    }
    STOP.store(1, Ordering::Release);
    let elapsed = cpus::elapsed_ms(start);
    for &(i, _) in workers {
        let mpidr = p.cpus[i];
        let off = cpus::wait_until(TIMEOUT_MS, || {
            psci::affinity_info(mpidr) == psci::AFFINITY_OFF
        });
        if off {
            continue;
        }
        if result.is_ok() {
            result = Err(msg!(
                "CPU {mpidr:#x} is not OFF {TIMEOUT_MS} ms after its part ended"
            ));
        }
    }
    TASK.store(TASK_PARK, Ordering::Release);
    result?;

    report(&"boot CPU", &REPORTS[0])?;
    for &(i, _) in workers {
        let mpidr = p.cpus[i];
        let slot = &SLOTS[i];
        let vector = slot.fault[3].load(Ordering::Acquire);
        if vector != 0 {
            fail!(
                "CPU {mpidr:#x} took an exception: vector {}, ESR={:#x} ELR={:#x} FAR={:#x} (an access to a page the host owns aborted?)",
                vector - 1,
                slot.fault[0].load(Ordering::Relaxed),
                slot.fault[1].load(Ordering::Relaxed),
                slot.fault[2].load(Ordering::Relaxed)
            );
        }
        ensure!(
            REPORTS[i + 1].done.load(Ordering::Acquire) != 0,
            "CPU {mpidr:#x} did not finish within {TIMEOUT_MS} ms"
        );
        report(&msg!("CPU {mpidr:#x}"), &REPORTS[i + 1])?;
    }
    if started == 0 {
        note!("one CPU: only the boot CPU's loop ran ({elapsed} ms)");
    } else {
        note!("{} CPUs for {elapsed} ms", started + 1);
    }
    let denied: u64 = REPORTS[..]
        .iter()
        .map(|r| r.denied.load(Ordering::Relaxed))
        .sum();
    if started > 0 && denied == 0 {
        note!("no call was refused: the CPUs never collided");
    }
    Ok(())
}

/// Fails with a CPU's problem, else notes what it did.
fn report(who: &dyn core::fmt::Display, r: &Report) -> Result<(), Msg> {
    if let Some(problem) = r.describe() {
        fail!("{who}: {problem}");
    }
    let passes = r.passes.load(Ordering::Relaxed);
    let (what, first, count) = match r.role() {
        Role::Share { first, count } => ("share/unshare", first, count),
        Role::Donate { first, count } => ("donate/reclaim", first, count),
        Role::Writer => {
            note!("{who}: wrote and verified its pages {passes} times");
            return Ok(());
        }
        Role::Idle => return Ok(()),
    };
    note!(
        "{who}: {what} pages [{first}, {}): {passes} rounds, {} calls, {} SUCCESS, {} DENIED",
        first + count,
        r.calls.load(Ordering::Relaxed),
        r.ok.load(Ordering::Relaxed),
        r.denied.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The boot CPU's part: share, load from the first, a middle and the last
/// page, unshare.
fn boot_loop(base: u64) {
    let report = &REPORTS[0];
    let Role::Share { first, count } = BOOT_ROLE else {
        return;
    };
    share_loop(report, base + first * PAGE, count, |range| {
        let middle = range.start + (count / 2) * PAGE;
        for page in [range.start, middle, range.end - PAGE] {
            let outcome = arch::probe(Access::Load, page, 0);
            if let Some(e) = outcome.fault {
                report.problem(problem::ABORT, [page, e.esr, 0, 0]);
                STOP.store(1, Ordering::Release);
                return false;
            }
        }
        true
    });
}

/// Afterwards: every page readable, and the whole block goes through every
/// transition.
fn check_block(block: Range) -> Result<(), Msg> {
    let (start, count) = (block.start, block.size() / PAGE);
    expect_loads(block).map_err(ctx(&"after the loops"))?;
    let whole = "the whole block afterwards (a page left shared or donated?)";
    expect(ShareHyp, start, count, OK).map_err(ctx(&whole))?;
    expect(UnshareHyp, start, count, OK).map_err(ctx(&whole))?;
    expect(DonateHyp, start, count, OK).map_err(ctx(&whole))?;
    expect(ReclaimHyp, start, count, OK).map_err(ctx(&whole))?;
    expect_zero(block).map_err(ctx(&whole))?;
    rewrite(block, WRITER_SEED)
}
