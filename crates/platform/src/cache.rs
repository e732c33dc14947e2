//! Cache maintenance sequences, separated from the instructions that run
//! them so the order can be tested on the build machine.
//!
//! QEMU models no caches, so none of these sequences can fail under TCG;
//! on hardware each one closes a real hole:
//!
//! - [`scrub_then_release`]: zeroing through a cacheable mapping leaves the
//!   zeroes in the data cache; an agent that reads DRAM directly (a
//!   non-cacheable alias, a DMA master, DRAM after a reset) still sees the
//!   old contents until the lines are cleaned to the point of coherency.
//! - [`before_first_run`] / [`make_executable`]: a guest starts with its
//!   MMU off, so its data accesses are non-cacheable and read DRAM, while
//!   the hypervisor wrote and measured its memory through the cache; and
//!   the instruction cache may hold stale lines for the physical pages.
//!   Without the clean to PoC the measured image need not be the one that
//!   runs.
//!
//! The hypervisor implements [`CacheOps`] with the real instructions
//! (`DC CIVAC`, `IC IALLUIS`, `DSB`, `ISB`); the tests below record the
//! calls.

use crate::MemRange;

/// The cache and barrier operations the sequences need.
pub trait CacheOps {
    /// Cleans and invalidates every data-cache line of `range` to the point
    /// of coherency (`DC CIVAC` by VA, one line at a time).
    fn clean_inval_dcache_poc(&mut self, range: MemRange);
    /// Invalidates all instruction caches to the point of unification,
    /// inner shareable (`IC IALLUIS`).
    fn inval_icache_all(&mut self);
    /// A full-system data synchronisation barrier (`DSB SY`): waits for the
    /// maintenance above to complete everywhere, including for agents
    /// outside the inner-shareable domain.
    fn dsb_sy(&mut self);
    /// An inner-shareable data synchronisation barrier (`DSB ISH`).
    fn dsb_ish(&mut self);
    /// An instruction synchronisation barrier.
    fn isb(&mut self);
}

/// After zeroing `range` through a cacheable mapping and before handing
/// it to anyone else (the host, another guest, or DRAM across a reset):
/// the zeroes reach the point of coherency and no stale line stays behind.
pub fn scrub_then_release(ops: &mut impl CacheOps, range: MemRange) {
    ops.clean_inval_dcache_poc(range);
    ops.dsb_sy();
}

/// Before the hypervisor reads memory a guest will run with its MMU off
/// (to measure it): the line is written back if dirty and dropped, so the
/// read that follows fetches what DRAM holds — what the guest will see.
pub fn before_reading(ops: &mut impl CacheOps, range: MemRange) {
    ops.clean_inval_dcache_poc(range);
    ops.dsb_sy();
}

/// Before a guest's first instruction: every range of its memory is
/// cleaned to the point of coherency (its MMU-off accesses read DRAM, not
/// the hypervisor's cache), then stale instructions are dropped on every
/// CPU. With `fwb` (`HCR_EL2.FWB` set, FEAT_S2FWB), stage 2 forces
/// write-back cacheable memory whatever the guest's stage 1 says, so its
/// accesses are coherent with the cache and the data clean is not needed;
/// the instruction cache is invalidated all the same.
pub fn before_first_run(ops: &mut impl CacheOps, ranges: &[MemRange], fwb: bool) {
    if !fwb {
        for &range in ranges {
            ops.clean_inval_dcache_poc(range);
        }
    }
    ops.dsb_ish();
    ops.inval_icache_all();
    ops.dsb_ish();
    ops.isb();
}

/// When `range` becomes executable for a guest after its first run (memory
/// donated later): the same as [`before_first_run`] for one range.
pub fn make_executable(ops: &mut impl CacheOps, range: MemRange, fwb: bool) {
    before_first_run(ops, &[range], fwb);
}

/// Data-cache line size in bytes from `CTR_EL0` (`DminLine`, bits 19:16,
/// log2 of the line size in words).
#[must_use]
pub fn dcache_line_size(ctr_el0: u64) -> u64 {
    4 << ((ctr_el0 >> 16) & 0xf)
}

/// The addresses `DC` by VA must be issued at to cover `range`: the first
/// line at or below its start, then every `line` bytes while below its end.
pub fn lines(range: MemRange, line: u64) -> impl Iterator<Item = u64> {
    let line = line.max(4);
    let first = range.start() & !(line - 1);
    let end = range.end();
    (0..)
        .map(move |i: u64| first + i * line)
        .take_while(move |&a| a < end)
}

/// The parts of `bank` outside `hole` (at most two), without allocating:
/// what a reset wipes of a RAM bank when it must wipe all of it except the
/// hypervisor's carve-out.
#[must_use]
pub fn outside(bank: MemRange, hole: MemRange) -> [Option<MemRange>; 2] {
    if !bank.overlaps(&hole) {
        return [Some(bank), None];
    }
    [
        MemRange::new(bank.start(), hole.start()).filter(|r| !r.is_empty()),
        MemRange::new(hole.end(), bank.end()).filter(|r| !r.is_empty()),
    ]
}

/// Calls `f` on each part of `range` outside every range of `holes` (in
/// address order when the holes are), without allocating: what a reset
/// wipes of a RAM bank outside the hypervisor's ranges. Recurses once per
/// hole.
pub fn outside_each(range: MemRange, holes: &[MemRange], f: &mut dyn FnMut(MemRange)) {
    let Some((hole, rest)) = holes.split_first() else {
        if !range.is_empty() {
            f(range);
        }
        return;
    };
    for part in outside(range, *hole).into_iter().flatten() {
        outside_each(part, rest, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Op {
        Clean(u64, u64),
        IcAll,
        DsbSy,
        DsbIsh,
        Isb,
    }

    #[derive(Default)]
    struct Recorder(Vec<Op>);

    impl CacheOps for Recorder {
        fn clean_inval_dcache_poc(&mut self, range: MemRange) {
            self.0.push(Op::Clean(range.start(), range.end()));
        }
        fn inval_icache_all(&mut self) {
            self.0.push(Op::IcAll);
        }
        fn dsb_sy(&mut self) {
            self.0.push(Op::DsbSy);
        }
        fn dsb_ish(&mut self) {
            self.0.push(Op::DsbIsh);
        }
        fn isb(&mut self) {
            self.0.push(Op::Isb);
        }
    }

    fn r(start: u64, end: u64) -> MemRange {
        MemRange::new(start, end).unwrap()
    }

    #[test]
    fn scrub_cleans_to_poc_then_waits_for_the_whole_system() {
        let mut rec = Recorder::default();
        scrub_then_release(&mut rec, r(0x4000_0000, 0x4000_2000));
        assert_eq!(rec.0, [Op::Clean(0x4000_0000, 0x4000_2000), Op::DsbSy]);
    }

    #[test]
    fn reading_for_a_measurement_cleans_first() {
        let mut rec = Recorder::default();
        before_reading(&mut rec, r(0x4000_0000, 0x4000_1000));
        assert_eq!(rec.0, [Op::Clean(0x4000_0000, 0x4000_1000), Op::DsbSy]);
    }

    #[test]
    fn first_run_cleans_every_range_before_the_icache() {
        let mut rec = Recorder::default();
        before_first_run(&mut rec, &[r(0x1000, 0x3000), r(0x8000, 0x9000)], false);
        assert_eq!(
            rec.0,
            [
                Op::Clean(0x1000, 0x3000),
                Op::Clean(0x8000, 0x9000),
                Op::DsbIsh,
                Op::IcAll,
                Op::DsbIsh,
                Op::Isb
            ]
        );
    }

    #[test]
    fn with_fwb_only_the_icache_is_invalidated() {
        let mut rec = Recorder::default();
        before_first_run(&mut rec, &[r(0x1000, 0x3000)], true);
        assert_eq!(rec.0, [Op::DsbIsh, Op::IcAll, Op::DsbIsh, Op::Isb]);
        let mut rec = Recorder::default();
        make_executable(&mut rec, r(0x5000, 0x6000), false);
        assert_eq!(rec.0[0], Op::Clean(0x5000, 0x6000));
        assert_eq!(rec.0[2], Op::IcAll);
    }

    #[test]
    fn a_bank_outside_the_carveout() {
        let carveout = r(0x4020_0000, 0x4120_0000);
        assert_eq!(
            outside(r(0x4000_0000, 0x6000_0000), carveout),
            [
                Some(r(0x4000_0000, 0x4020_0000)),
                Some(r(0x4120_0000, 0x6000_0000))
            ]
        );
        assert_eq!(
            outside(r(0x8000_0000, 0x9000_0000), carveout),
            [Some(r(0x8000_0000, 0x9000_0000)), None]
        );
        assert_eq!(outside(r(0x4020_0000, 0x4120_0000), carveout), [None, None]);
        assert_eq!(
            outside(r(0x4020_0000, 0x5000_0000), carveout),
            [None, Some(r(0x4120_0000, 0x5000_0000))]
        );
    }

    #[test]
    fn a_bank_outside_every_part_of_the_carveout() {
        let holes = [r(0x4020_0000, 0x4120_0000), r(0x5ff0_0000, 0x6000_0000)];
        let mut parts = Vec::new();
        outside_each(r(0x4000_0000, 0x6000_0000), &holes, &mut |p| parts.push(p));
        assert_eq!(
            parts,
            [r(0x4000_0000, 0x4020_0000), r(0x4120_0000, 0x5ff0_0000)]
        );
        parts.clear();
        outside_each(r(0x4000_0000, 0x6000_0000), &[], &mut |p| parts.push(p));
        assert_eq!(parts, [r(0x4000_0000, 0x6000_0000)]);
        parts.clear();
        // A stack slot inside the boot-sized part: everything else of it.
        outside_each(holes[1], &[r(0x5ff8_0000, 0x5ff8_c000)], &mut |p| parts.push(p));
        assert_eq!(
            parts,
            [r(0x5ff0_0000, 0x5ff8_0000), r(0x5ff8_c000, 0x6000_0000)]
        );
        parts.clear();
        outside_each(holes[0], &holes, &mut |p| parts.push(p));
        assert!(parts.is_empty());
    }

    #[test]
    fn line_size_and_line_addresses() {
        // Cortex-A57/A72 and QEMU's `max`: DminLine 4 → 64 bytes.
        assert_eq!(dcache_line_size(0x8444_c004), 64);
        assert_eq!(dcache_line_size(0), 4);
        let all: Vec<u64> = lines(r(0x1010, 0x10c1), 64).collect();
        assert_eq!(all, [0x1000, 0x1040, 0x1080, 0x10c0]);
        assert_eq!(lines(r(0x1000, 0x2000), 64).count(), 64);
        // A silly line size still terminates.
        assert_eq!(lines(r(0x1000, 0x1010), 0).count(), 4);
    }
}
