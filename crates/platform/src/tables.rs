//! How many translation-table pages a change to a 4 KiB-granule table can
//! need at most, so the hypervisor can reserve them before it commits the
//! change (its table allocators cannot fail half-way).
//!
//! A table at level `l` (1..=3) translates [`table_span`]`(l)` bytes: 512 GiB
//! at level 1, 1 GiB at level 2, 2 MiB at level 3. The root, at level 0 (IPA
//! or VA wider than 39 bits) or level 1, always exists. Level-0 entries can
//! never be blocks, so a root at level 0 adds a level of tables.

/// Bytes translated by one table at `level` (0..=3), 4 KiB granule.
#[must_use]
pub const fn table_span(level: usize) -> u64 {
    match level {
        0 => 1 << 48,
        1 => 1 << 39,
        2 => 1 << 30,
        _ => 1 << 21,
    }
}

/// Distinct `span`-aligned spans that `[start, end)` touches (0 if empty).
const fn spans_touched(start: u64, end: u64, span: u64) -> u64 {
    if end <= start {
        return 0;
    }
    (end - 1) / span - start / span + 1
}

/// The most new tables that mapping `[start, end)` can allocate in a table
/// whose root is at `root_level`: one per distinct table span the range
/// touches at every level below the root. This is exact for 4 KiB pages
/// over a range where no table below the root exists yet, and an upper
/// bound otherwise: existing tables and block mappings only need fewer.
///
/// Unlike `pages / 512 + pages / 512² + 2`, it counts a range that straddles
/// a 512 GiB, 1 GiB or 2 MiB boundary as touching two spans at that level.
#[must_use]
pub const fn tables_to_map(start: u64, end: u64, root_level: usize) -> u64 {
    let mut level = root_level + 1;
    let mut total = 0;
    while level <= 3 {
        total += spans_touched(start, end, table_span(level));
        level += 1;
    }
    total
}

/// The most new tables one split point can need: a chain from just below
/// the root down to level 3 (a block or an invalid entry above the point at
/// every level).
#[must_use]
pub const fn tables_per_boundary(root_level: usize) -> u64 {
    3u64.saturating_sub(root_level as u64)
}

/// The most new tables that remapping a range with the largest blocks can
/// need when every page of `[start, end)` gets the same new mapping and
/// the rest of the table keeps its mappings: the range creates mapping
/// boundaries only at its two ends, each costing at most
/// [`tables_per_boundary`]; with a level-0 root, each 512 GiB span the range
/// touches may also need its level-1 table (level 0 has no blocks).
/// Boundaries inside the range disappear, so they cost nothing.
#[must_use]
pub const fn tables_to_remap(start: u64, end: u64, root_level: usize) -> u64 {
    if end <= start {
        return 0;
    }
    let level1 = if root_level == 0 {
        spans_touched(start, end, table_span(1))
    } else {
        0
    };
    2 * tables_per_boundary(root_level) + level1
}

/// The SMMU's stage-1 mirror of the host stage 2 (root at
/// [`crate::smmu::MIRROR_ROOT_LEVEL`]) is rewritten over the same range as
/// the host stage 2 with the largest blocks: the same bound, at its root
/// level.
#[must_use]
pub const fn mirror_tables_to_remap(start: u64, end: u64) -> u64 {
    tables_to_remap(start, end, crate::smmu::MIRROR_ROOT_LEVEL)
}

/// What handing a VM's range back to the host may cost in the mirror (the
/// mirror's share of the pages held back for `VM_DESTROY`): as for the host
/// stage 2, the remap plus one boundary chain.
#[must_use]
pub const fn mirror_return_cost(start: u64, end: u64) -> u64 {
    mirror_tables_to_remap(start, end) + tables_per_boundary(crate::smmu::MIRROR_ROOT_LEVEL)
}

/// The mirror's share of the pool pages kept for pages going back to the
/// host.
#[must_use]
pub const fn mirror_return_reserve() -> u64 {
    2 * tables_per_boundary(crate::smmu::MIRROR_ROOT_LEVEL) + 2
}

/// The most tables splitting, down to 4 KiB pages, the block mappings that
/// mapping `size` bytes from `pa` at `va` can make (a level-2 block costs a
/// level-3 table; a level-1 block a level-2 and 512 level-3 tables). A
/// block is possible only where `va` and `pa` agree modulo its size and a
/// whole aligned block lies in the range; this counts every such place.
#[must_use]
pub const fn split_cost(va: u64, pa: u64, size: u64) -> u64 {
    let end = va.saturating_add(size);
    let gib = possible_blocks(va, pa, end, table_span(2));
    let mib2 = possible_blocks(va, pa, end, table_span(3));
    gib * (1 + 512) + mib2.saturating_sub(gib * 512)
}

/// Whole `span`-aligned blocks in `[va, end)` where `va` and `pa` agree
/// modulo `span`.
const fn possible_blocks(va: u64, pa: u64, end: u64, span: u64) -> u64 {
    if (va ^ pa) & (span - 1) != 0 {
        return 0;
    }
    (end / span).saturating_sub(va.div_ceil(span))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "small random numbers")]
mod tests {
    extern crate std;

    use std::collections::BTreeSet;
    use std::vec::Vec;

    use super::*;

    const PAGE: u64 = 4096;

    /// A 4-level table modelled as the set of tables below the root, each
    /// named by `(level, index of the span it translates)`; mapping a page
    /// creates the missing tables on its path. Returns how many it created.
    fn simulate_map(
        tables: &mut BTreeSet<(usize, u64)>,
        start: u64,
        end: u64,
        root_level: usize,
    ) -> u64 {
        let mut created = 0;
        let mut page = start;
        while page < end {
            for level in root_level + 1..=3 {
                if tables.insert((level, page / table_span(level))) {
                    created += 1;
                }
            }
            page += PAGE;
        }
        created
    }

    /// xorshift64*: deterministic, no dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random page-aligned range near a random 2 MiB, 1 GiB or 512 GiB
    /// boundary, often straddling it.
    fn range_near_boundary(rng: &mut Rng) -> (u64, u64) {
        let span = [table_span(3), table_span(2), table_span(1)][rng.below(3) as usize];
        let boundary = span * (3 + rng.below(300));
        let before = rng.below(1100) * PAGE;
        let pages = 1 + rng.below(1100);
        let start = boundary - before;
        (start, start + pages * PAGE)
    }

    #[test]
    fn exact_for_pages_into_an_empty_table() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..3000 {
            let (start, end) = range_near_boundary(&mut rng);
            for root in [0, 1] {
                let mut tables = BTreeSet::new();
                assert_eq!(
                    simulate_map(&mut tables, start, end, root),
                    tables_to_map(start, end, root),
                    "[{start:#x}, {end:#x}) root {root}"
                );
            }
        }
    }

    #[test]
    fn an_upper_bound_when_tables_exist_already() {
        let mut rng = Rng(0x5eed_1234_abcd_0002);
        for _ in 0..300 {
            for root in [0, 1] {
                let mut tables = BTreeSet::new();
                for _ in 0..8 {
                    let (start, end) = range_near_boundary(&mut rng);
                    let bound = tables_to_map(start, end, root);
                    assert!(simulate_map(&mut tables, start, end, root) <= bound);
                }
            }
        }
    }

    #[test]
    fn straddling_512_gib_with_a_level_0_root() {
        // Two pages either side of 512 GiB: two level-1, two level-2 and
        // two level-3 tables. The old estimate said 4.
        let (start, end) = (table_span(1) - PAGE, table_span(1) + PAGE);
        assert_eq!(tables_to_map(start, end, 0), 6);
        let old = |pages: u64| pages.div_ceil(512) + pages.div_ceil(512 * 512) + 2;
        assert!(old(2) < tables_to_map(start, end, 0));
        assert_eq!(tables_to_map(start, end, 1), 4);
        assert_eq!(tables_to_map(0, PAGE, 0), 3);
        assert_eq!(tables_to_map(0, PAGE, 1), 2);
        assert_eq!(tables_to_map(PAGE, PAGE, 0), 0);
    }

    /// A mapping as the sorted start addresses where its value changes,
    /// with the value that starts there (0 = unmapped); the value before the
    /// first change is 0.
    type Mapping = Vec<(u64, u8)>;

    fn value_at(m: &Mapping, address: u64) -> u8 {
        m.iter()
            .take_while(|&&(at, _)| at <= address)
            .last()
            .map_or(0, |&(_, v)| v)
    }

    /// Tables a table with the largest blocks needs for `m` (below the
    /// root): a level-`l` table for every span at level `l` that the entry
    /// above cannot map as one block or one invalid entry — the mapping
    /// changes inside it, or, for level 1 under a level-0 root (no level-0
    /// blocks), anything in it is mapped.
    fn tables_for(m: &Mapping, root_level: usize) -> u64 {
        table_set(m, root_level).len() as u64
    }

    /// The tables [`tables_for`] counts, by `(level, span index)`.
    fn table_set(m: &Mapping, root_level: usize) -> BTreeSet<(usize, u64)> {
        let mut tables = BTreeSet::new();
        for level in root_level + 1..=3 {
            let span = table_span(level);
            let mut previous = 0u8;
            for &(at, value) in m {
                if value != previous && at % span != 0 {
                    tables.insert((level, at / span));
                }
                previous = value;
            }
            if level == 1 && root_level == 0 {
                // Every 512 GiB span holding a mapped page.
                for (i, &(at, value)) in m.iter().enumerate() {
                    if value != 0 {
                        let end = m.get(i + 1).map_or(at + PAGE, |&(next, _)| next);
                        for s in at / span..=(end - 1) / span {
                            tables.insert((1, s));
                        }
                    }
                }
            }
        }
        tables
    }

    fn set_range(m: &Mapping, start: u64, end: u64, value: u8) -> Mapping {
        let after = value_at(m, end);
        let mut out: Mapping = m.iter().copied().filter(|&(at, _)| at < start).collect();
        out.push((start, value));
        out.push((end, after));
        out.extend(m.iter().copied().filter(|&(at, _)| at > end));
        // Drop entries that change nothing.
        let mut merged: Mapping = Vec::new();
        let mut previous = 0u8;
        for (at, v) in out {
            if v != previous {
                merged.push((at, v));
                previous = v;
            }
        }
        merged
    }

    #[test]
    fn split_cost_counts_every_possible_block() {
        const MIB2: u64 = 2 << 20;
        const GIB: u64 = 1 << 30;
        // Brute force: walk the range choosing the largest block that fits
        // (aarch64-paging's rule), adding what splitting it costs.
        let brute = |va: u64, pa: u64, size: u64| {
            let (mut at, end, mut cost) = (va, va + size, 0);
            while at < end {
                let off = at - va;
                let fits = |span: u64| {
                    at.is_multiple_of(span) && (pa + off).is_multiple_of(span) && at + span <= end
                };
                if fits(GIB) {
                    cost += 513;
                    at += GIB;
                } else if fits(MIB2) {
                    cost += 1;
                    at += MIB2;
                } else {
                    at += PAGE;
                }
            }
            cost
        };
        let mut rng = Rng(0x5eed_1234_abcd_0004);
        for _ in 0..400 {
            let va = rng.below(4 << 10) * MIB2 / 4 + [0, PAGE][rng.below(2) as usize];
            let pa = if rng.below(2) == 0 {
                va + GIB * rng.below(4)
            } else {
                rng.below(1 << 20) * PAGE
            };
            let size = (1 + rng.below(3 << 9)) * MIB2 / 8 * [1, 16][rng.below(2) as usize];
            assert_eq!(
                split_cost(va, pa, size),
                brute(va, pa, size),
                "va {va:#x} pa {pa:#x} size {size:#x}"
            );
        }
        assert_eq!(split_cost(0, 0, GIB), 513);
        assert_eq!(split_cost(0, PAGE, GIB), 0);
        assert_eq!(split_cost(MIB2, 3 * MIB2, 4 * MIB2), 4);
    }

    /// The hypervisor holds back, for each range it gives a VM,
    /// `tables_to_remap` of the range plus one boundary chain, and
    /// `VM_DESTROY` draws on that. Model: host RAM with foreign ranges
    /// (other VMs, the hypervisor, shared pages); the VM's ranges taken
    /// (donated or shared), some pages given back early (relinquished);
    /// then teardown hands each range back in ascending chunks (stage-2
    /// leaves), ranges in any order. Every table the host stage 2 needs at
    /// any step and did not need before teardown counts, even if a later
    /// step no longer needs it (tables are not freed unless the pool is
    /// low): the total must fit in what was held.
    #[test]
    fn teardown_fits_in_what_was_held_back() {
        const RAM_END: u64 = 1 << 48;
        let mut rng = Rng(0x5eed_1234_abcd_0005);
        for _ in 0..600 {
            for root in [0, 1] {
                let mut m: Mapping = Vec::from([(0, 1), (RAM_END, 0)]);
                for _ in 0..rng.below(6) {
                    let (start, end) = range_near_boundary(&mut rng);
                    m = set_range(&m, start, end, [0, 2][rng.below(2) as usize]);
                }
                let mut gifts: Vec<(u64, u64)> = Vec::new();
                for _ in 0..1 + rng.below(5) {
                    let (start, end) = range_near_boundary(&mut rng);
                    if gifts.iter().all(|&(s, e)| end <= s || e <= start) {
                        gifts.push((start, end));
                        m = set_range(&m, start, end, [0, 3][rng.below(2) as usize]);
                    }
                }
                for &(start, end) in &gifts {
                    if rng.below(2) == 0 {
                        let page = start + rng.below((end - start) / PAGE) * PAGE;
                        m = set_range(&m, page, page + PAGE, 1);
                    }
                }
                let held: u64 = gifts
                    .iter()
                    .map(|&(s, e)| tables_to_remap(s, e, root) + tables_per_boundary(root))
                    .sum();
                let mut seen = table_set(&m, root);
                let mut allocated = 0u64;
                let mut order: Vec<usize> = (0..gifts.len()).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                for i in order {
                    let (mut at, end) = gifts[i];
                    while at < end {
                        let chunk = [1, 7, 512, 1024][rng.below(4) as usize] * PAGE;
                        let next = (at + chunk).min(end);
                        m = set_range(&m, at, next, 1);
                        allocated += table_set(&m, root)
                            .into_iter()
                            .filter(|t| seen.insert(*t))
                            .count() as u64;
                        at = next;
                    }
                }
                assert!(
                    allocated <= held,
                    "root {root}, gifts {gifts:x?}: teardown needed {allocated} tables, {held} held"
                );
            }
        }
    }

    /// The mirror has its root at level 0 whatever the host stage 2's
    /// root: its counts are the level-0 ones, and a mirror of the same
    /// mapping needs no more than they say (the model below, at level 0).
    #[test]
    fn mirror_counts_are_the_level_0_counts() {
        const GIB: u64 = 1 << 30;
        assert_eq!(crate::smmu::MIRROR_ROOT_LEVEL, 0);
        let (start, end) = (GIB - PAGE, GIB + PAGE);
        assert_eq!(
            mirror_tables_to_remap(start, end),
            tables_to_remap(start, end, 0)
        );
        assert_eq!(mirror_tables_to_remap(start, end), 7);
        assert_eq!(mirror_return_cost(start, end), 10);
        assert_eq!(mirror_return_reserve(), 8);
        assert_eq!(mirror_tables_to_remap(PAGE, PAGE), 0);
        let mut rng = Rng(0x5eed_1234_abcd_0006);
        for _ in 0..2000 {
            let mut m: Mapping = Vec::new();
            for _ in 0..1 + rng.below(12) {
                let (s, e) = range_near_boundary(&mut rng);
                m = set_range(&m, s, e, rng.below(2) as u8);
            }
            let before = tables_for(&m, 0);
            let (s, e) = range_near_boundary(&mut rng);
            let after = tables_for(&set_range(&m, s, e, rng.below(2) as u8), 0);
            assert!(after <= before + mirror_tables_to_remap(s, e));
        }
    }

    #[test]
    fn remapping_a_uniform_range_costs_at_most_its_two_ends() {
        let mut rng = Rng(0x5eed_1234_abcd_0003);
        for _ in 0..2000 {
            for root in [0, 1] {
                let mut m: Mapping = Vec::new();
                for _ in 0..1 + rng.below(12) {
                    let (start, end) = range_near_boundary(&mut rng);
                    m = set_range(&m, start, end, rng.below(4) as u8);
                }
                let before = tables_for(&m, root);
                let (start, end) = range_near_boundary(&mut rng);
                let after = tables_for(&set_range(&m, start, end, rng.below(4) as u8), root);
                let bound = tables_to_remap(start, end, root);
                assert!(
                    after <= before + bound,
                    "[{start:#x}, {end:#x}) root {root}: {before} -> {after} tables, bound {bound}"
                );
            }
        }
    }
}
