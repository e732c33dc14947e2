//! Benchmarks: how many instructions the hypervisor runs at EL2 for each
//! host call and guest exit, counted by the PMU (see [`pmu`]).
//!
//! The bootarg `testhost.bench` (every group) or `testhost.bench=<group>,...`
//! (`ownership`, `vm`, `vb`) makes the test host run these instead of its
//! checks; `cargo xtask bench hyp` boots it under QEMU with
//! `-icount shift=0 -smp 1` and tabulates the lines it prints:
//!
//! ```text
//! BENCH-PMU <what the PMU reports>
//! BENCH-CHECK <name> ok|FAIL: <detail>     the counter's own checks
//! BENCH <name> <el2> min=<> max=<> first=<> n=<> inst=<>
//! BENCH-WALL <name> <ns> min=<> max=<> n=<>   (`vb` only: the virtual counter)
//! BENCH-INFO <text>
//! BENCH-FAIL <group>: <reason>
//! BENCH-DONE <groups run> groups, <failed> failed
//! ```
//!
//! `<el2>` is the median over `n` repetitions of the EL2 instructions one
//! operation took (the cycle counter filtered to EL2, which under
//! `-icount shift=0` advances by one per instruction); `inst=` is the median
//! of `INST_RETIRED` filtered to EL2. The two agree except where the
//! hypervisor switches to a guest: see [`pmu`] for why the event counter
//! stops there. Under icount every figure is exact and the same on every
//! run of the same binaries.
//!
//! Everything here runs on the boot CPU with the other CPUs off; the
//! benchmarks use a scratch window of usable RAM and leave every page with
//! the host.

mod ownership;
#[allow(
    unsafe_code,
    reason = "PMU system registers: the one part of the benchmarks that touches the machine"
)]
pub(crate) mod pmu;
mod vb;
mod vm;

use dtoolkit::fdt::Fdt;
use rampart_abi::host::HostCall;

use crate::arch::{self, SmcccRegisters};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::psci::{self, Conduit};
use crate::ranges::{Range, RangeSet};
use crate::{ensure, msg, println};

pub use pmu::Delta;

/// The bootarg: `testhost.bench` or `testhost.bench=<group>,<group>`
/// (`ownership`, `vm`, `vb`; `hyp` or `all` for every one; `wall` skips the
/// PMU's checks, for a run without `-icount` that only wants `BENCH-WALL`).
pub const BENCH_BOOTARG: &str = "testhost.bench";

/// How many times each operation is repeated.
pub const ROUNDS: usize = 16;

/// Page size of the host calls.
const PAGE: u64 = rampart_abi::host::PAGE_SIZE;
/// A level-2 block (2 MiB).
const BLOCK: u64 = 2 << 20;

/// Which benchmark groups to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Selection {
    /// Host memory calls (`SHARE_HYP`...).
    pub ownership: bool,
    /// VMs: create, donate, first entry, exits.
    pub vm: bool,
    /// Verified boot and attestation: first entry by memory size, guest
    /// `RAMPART_ATTEST` and `RAMPART_SEALING_KEY`.
    pub vb: bool,
    /// Wall-time mode (no `-icount`): the PMU checks are skipped.
    pub wall: bool,
}

/// The groups the bootargs ask for, if they contain [`BENCH_BOOTARG`].
pub fn selection(p: &Platform) -> Option<Selection> {
    let blob = arch::device_tree_blob(p.boot.x[0]).ok()?;
    let fdt = Fdt::new(blob).ok()?;
    let chosen = fdt.chosen()?;
    let bootargs = chosen.bootargs().ok()??;
    for arg in bootargs.split_ascii_whitespace() {
        let Some(rest) = arg.strip_prefix(BENCH_BOOTARG) else {
            continue;
        };
        let mut s = Selection::default();
        match rest.strip_prefix('=') {
            None if rest.is_empty() => {
                s.ownership = true;
                s.vm = true;
                s.vb = true;
            }
            None => continue,
            Some(list) => {
                for group in list.split(',') {
                    match group {
                        "ownership" => s.ownership = true,
                        "vm" => s.vm = true,
                        "vb" => s.vb = true,
                        "wall" => s.wall = true,
                        "hyp" | "all" => {
                            s.ownership = true;
                            s.vm = true;
                            s.vb = true;
                        }
                        other => println!("BENCH-FAIL bootargs: unknown group `{other}`"),
                    }
                }
            }
        }
        return Some(s);
    }
    None
}

/// A benchmark group: prints its `BENCH` lines, or fails.
type Group = fn(&Scratch) -> Result<(), Msg>;

/// Runs the selected groups and prints their lines. The caller powers off.
pub fn run(p: &Platform, selection: Selection) {
    let info = pmu::info();
    println!(
        "BENCH-PMU pmuver={:#x} counters={} pmcr={:#x} inst_retired={}",
        info.pmu_version,
        info.counters,
        info.pmcr,
        if info.has_inst_retired() { "yes" } else { "no" }
    );
    let mut groups: [(&str, bool, Group); 5] = [
        ("pmu", !selection.wall, check_counters),
        ("ownership", selection.ownership, ownership::run),
        ("vm", selection.vm, vm::run_unprotected),
        ("pvm", selection.vm, vm::run_protected),
        ("vb", selection.vb, vb::run),
    ];
    let (mut ran, mut failed) = (0u32, 0u32);
    let scratch = match Scratch::find(p) {
        Ok(s) => s,
        Err(reason) => {
            println!("BENCH-FAIL scratch: {reason}");
            println!("BENCH-DONE 0 groups, 1 failed");
            return;
        }
    };
    if info.counters == 0 {
        println!("BENCH-FAIL pmu: PMCR_EL0.N = 0, no event counter");
        groups[0].1 = false;
    }
    for (name, wanted, group) in groups {
        if !wanted {
            continue;
        }
        ran += 1;
        pmu::start(pmu::INST_RETIRED, pmu::EL2_ONLY);
        let mut outcome = None;
        let result = arch::guarded(&mut || outcome = Some(group(&scratch)));
        pmu::stop();
        match (result, outcome) {
            (Ok(()), Some(Ok(()))) => {}
            (Ok(()), Some(Err(reason))) => {
                failed += 1;
                println!("BENCH-FAIL {name}: {reason}");
            }
            (Ok(()), None) => {
                failed += 1;
                println!("BENCH-FAIL {name}: did not finish");
            }
            (Err(exception), _) => {
                failed += 1;
                println!("BENCH-FAIL {name}: unexpected {exception}");
            }
        }
    }
    println!("BENCH-DONE {ran} groups, {failed} failed");
}

/// The RAM the benchmarks use: [`Scratch::BLOCKS`] 2 MiB-aligned blocks of
/// usable RAM, away from the image and the DT.
pub struct Scratch {
    range: Range,
}

impl Scratch {
    /// Blocks in the window: 0 for single pages, 1 for a whole 2 MiB
    /// block, 2 for VM metadata, 3 and 4 for guest memory (up to 4 MiB,
    /// contiguous).
    const BLOCKS: u64 = 5;
    /// The block VM metadata goes in.
    pub const METADATA: u64 = 2;
    /// The first block of guest memory; the window ends with guest memory.
    pub const GUEST_MEMORY: u64 = 3;

    fn find(p: &Platform) -> Result<Self, Msg> {
        let mut usable: RangeSet<64> = p.usable_memory();
        usable.subtract(&p.image);
        usable.subtract(&p.dt);
        let ram_end = p.memory.as_slice().iter().map(|r| r.end).max().unwrap_or(0);
        // Leave the block holding the last page of RAM alone.
        let top = ram_end.saturating_sub(PAGE) & !(BLOCK - 1);
        let size = Self::BLOCKS * BLOCK;
        let range = usable
            .as_slice()
            .iter()
            .filter_map(|r| {
                let aligned = r.align_inward(BLOCK);
                let end = aligned.end.min(top);
                (end >= aligned.start + size).then(|| Range::from_base_size(end - size, size))
            })
            .max_by_key(|r| r.start)
            .ok_or_else(|| msg!("no {} MiB of usable, 2 MiB-aligned RAM", size >> 20))?;
        Ok(Scratch { range })
    }

    /// The first address of block `block`.
    fn block(&self, block: u64) -> u64 {
        assert!(block < Self::BLOCKS);
        self.range.start + block * BLOCK
    }
}

/// An SMCCC call over HVC with `w0 = function`; returns what the hypervisor
/// ran at EL2 for it and the result registers.
fn measure_id(function: u32, args: &[u64]) -> (Delta, SmcccRegisters) {
    let before = pmu::read();
    let result = psci::call_via(Conduit::Hvc, function, args);
    let after = pmu::read();
    (before.until(after), result)
}

/// A host call, measured.
fn measure(call: HostCall, args: &[u64]) -> (Delta, SmcccRegisters) {
    measure_id(call.id(), args)
}

/// Up to [`Series::CAPACITY`] measurements of one operation.
#[derive(Clone, Copy)]
pub struct Series {
    samples: [Delta; Series::CAPACITY],
    len: usize,
}

impl Series {
    const CAPACITY: usize = 2 * ROUNDS;

    /// No samples.
    pub const fn new() -> Self {
        Series {
            samples: [Delta {
                instructions: 0,
                cycles: 0,
            }; Self::CAPACITY],
            len: 0,
        }
    }

    /// Adds a sample (beyond the capacity they are dropped).
    pub fn push(&mut self, d: Delta) {
        if let Some(slot) = self.samples.get_mut(self.len) {
            *slot = d;
            self.len += 1;
        }
    }

    fn values(&self, f: fn(&Delta) -> u64) -> ([u64; Series::CAPACITY], usize) {
        let mut v = [0u64; Series::CAPACITY];
        for (slot, d) in v.iter_mut().zip(&self.samples[..self.len]) {
            *slot = f(d);
        }
        v[..self.len].sort_unstable();
        (v, self.len)
    }

    /// Prints the `BENCH` line.
    pub fn report(&self, name: &str) {
        if self.len == 0 {
            println!("BENCH-FAIL {name}: no samples");
            return;
        }
        let (el2, n) = self.values(|d| d.cycles);
        let (inst, _) = self.values(|d| d.instructions);
        println!(
            "BENCH {name} {} min={} max={} first={} n={n} inst={}",
            el2[n / 2],
            el2[0],
            el2[n - 1],
            self.samples[0].cycles,
            inst[n / 2]
        );
    }
}

/// `(a - b) / by` for both counters (a per-operation figure from two runs).
fn per_op(a: Delta, b: Delta, by: u64) -> Delta {
    Delta {
        instructions: a.instructions.wrapping_sub(b.instructions) / by,
        cycles: a.cycles.wrapping_sub(b.cycles) / by,
    }
}

/// `pmu`: the counter counts EL2 only and exactly. An unknown HVC costs the
/// same every time and is not zero; a loop at EL1 adds nothing; the event
/// counter and the cycle counter agree on a host call.
fn check_counters(_: &Scratch) -> Result<(), Msg> {
    let info = pmu::info();
    let report = |name: &str, ok: bool, detail: &dyn core::fmt::Display| {
        let verdict = if ok { "ok" } else { "FAIL" };
        println!("BENCH-CHECK {name} {verdict}: {detail}");
        ok
    };
    let mut all = report(
        "inst-retired",
        info.has_inst_retired(),
        &format_args!(
            "PMCEID0_EL0 bit 8 (INST_RETIRED) is {} (QEMU implements it only with -icount)",
            u8::from(info.has_inst_retired())
        ),
    );

    let mut unknown = [Delta::default(); ROUNDS];
    for slot in &mut unknown {
        let (d, r) = measure_id(UNKNOWN_HOST_CALL, &[]);
        ensure!(
            r[0] as i64 == rampart_abi::Error::NotSupported.code(),
            "the unknown call {UNKNOWN_HOST_CALL:#x} returned {}",
            r[0] as i64
        );
        *slot = d;
    }
    let same = unknown.iter().all(|d| *d == unknown[0]);
    all &= report(
        "deterministic",
        same && unknown[0].cycles > 0,
        &format_args!(
            "{ROUNDS} unknown HVCs: EL2 cycles {:?}..{:?}, INST_RETIRED {:?}..{:?}",
            unknown.iter().map(|d| d.cycles).min(),
            unknown.iter().map(|d| d.cycles).max(),
            unknown.iter().map(|d| d.instructions).min(),
            unknown.iter().map(|d| d.instructions).max()
        ),
    );
    all &= report(
        "counters-agree",
        unknown[0].instructions == unknown[0].cycles,
        &format_args!(
            "an unknown HVC: INST_RETIRED {} and cycles {} at EL2",
            unknown[0].instructions, unknown[0].cycles
        ),
    );

    const LOOP: u64 = 100_000;
    let before = pmu::read();
    pmu::el1_loop(LOOP);
    let after = pmu::read();
    let d = before.until(after);
    all &= report(
        "el1-not-counted",
        d == Delta::default(),
        &format_args!(
            "{LOOP} iterations of a 4-instruction loop at EL1 added INST_RETIRED {}, cycles {}",
            d.instructions, d.cycles
        ),
    );
    ensure!(all, "the counters cannot be trusted (see BENCH-CHECK)");
    Ok(())
}

/// An unknown host call: the floor of any hypervisor call (decode, refuse,
/// return).
pub const UNKNOWN_HOST_CALL: u32 = 0xC600_80FF;
