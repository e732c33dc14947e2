//! Guest RAM a host declared zero before a protected VM's first run
//! (`VM_DECLARE_ZERO`, issue 16).
//!
//! A VMM that gives guest RAM on the guest's first touch does not map it
//! before the first run, yet the signer measured it (as zero runs). The
//! host declares such ranges; at the first run the hypervisor measures
//! every declared page that nothing maps then as a page of zeros, with
//! exactly the records a mapped page of zeros gives, in guest-physical
//! order among the mapped pages ([`DeclaredZero::measure_between`]).
//! Mapped pages are measured as always, declared or not.

use crate::measure::{MeasureError, Measurer, PAGE_SIZE};

/// Why [`DeclaredZero::declare`] refused a range; the list is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeclareError {
    /// Unaligned, empty, or running past 2^64.
    #[error("declared range is unaligned, empty, or runs past the end of the address space")]
    Malformed,
    /// The range merges with none of the runs and every slot is taken.
    #[error("every declared-zero run is taken and the range merges with none")]
    Full,
}

/// A small fixed list of guest-physical page runs declared zero: sorted,
/// disjoint and never adjacent (a declaration merges with every run it
/// overlaps or touches), at most `N` of them. It never allocates; a
/// declaration it cannot hold is refused with the list unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredZero<const N: usize> {
    /// `(first address, one past the last byte)`; the first `count` are
    /// in use, in ascending order.
    runs: [(u64, u64); N],
    count: usize,
}

impl<const N: usize> DeclaredZero<N> {
    /// An empty list.
    #[must_use]
    pub const fn new() -> Self {
        DeclaredZero {
            runs: [(0, 0); N],
            count: 0,
        }
    }

    /// Forgets every declaration.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// The runs, as `(first address, end)`, in ascending order.
    #[must_use]
    pub fn runs(&self) -> &[(u64, u64)] {
        self.runs.get(..self.count).unwrap_or(&[])
    }

    /// Whether nothing is declared.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Declares `pages` pages from guest-physical `ipa` zero, merged with
    /// every run it overlaps or touches.
    ///
    /// # Errors
    ///
    /// [`DeclareError::Malformed`] for an unaligned, empty or wrapping
    /// range; [`DeclareError::Full`] when the merged list would need more
    /// than `N` runs. The list is then unchanged.
    pub fn declare(&mut self, ipa: u64, pages: u64) -> Result<(), DeclareError> {
        if pages == 0 || !ipa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(DeclareError::Malformed);
        }
        let mut end = pages
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|len| ipa.checked_add(len))
            .ok_or(DeclareError::Malformed)?;
        let mut start = ipa;
        let runs = self.runs();
        // Runs wholly before the new one (not touching), then those it
        // overlaps or touches (merged into it), then the rest.
        let before = runs.iter().take_while(|&&(_, e)| e < start).count();
        let touched = runs
            .get(before..)
            .unwrap_or(&[])
            .iter()
            .take_while(|&&(s, _)| s <= end)
            .count();
        if let (Some(&(first, _)), Some(&(_, last))) =
            (runs.get(before), runs.get(before + touched.saturating_sub(1)))
            && touched > 0
        {
            start = start.min(first);
            end = end.max(last);
        }
        let count = self.count - touched + 1;
        if count > N {
            return Err(DeclareError::Full);
        }
        // Shift the runs after the merged ones into place, then write it.
        let after = before + touched;
        let new_after = before + 1;
        self.runs.copy_within(after..self.count, new_after);
        self.runs[before] = (start, end);
        self.count = count;
        Ok(())
    }

    /// Measures, in ascending order, every declared page in `[from, to)`
    /// as a zero page ([`Measurer::zero_pages`]): for the gap between two
    /// mapped runs at the first run (the caller guarantees nothing in
    /// `[from, to)` is mapped, and feeds the mapped pages around it
    /// itself). `keep(start, end)` is asked about each piece first; a
    /// piece it refuses is not measured at all, as if it had never been
    /// declared.
    ///
    /// # Errors
    ///
    /// The measurer's, if a piece does not follow what it measured
    /// already; pieces before it were measured.
    pub fn measure_between(
        &self,
        measurer: &mut Measurer,
        from: u64,
        to: u64,
        keep: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<(), MeasureError> {
        for &(s, e) in self.runs() {
            let (a, b) = (s.max(from), e.min(to));
            if a < b && keep(a, b) {
                measurer.zero_pages(a, (b - a) / PAGE_SIZE as u64)?;
            }
        }
        Ok(())
    }
}

impl<const N: usize> Default for DeclaredZero<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{InitialState, VmFlags};
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    const BASE: u64 = 0x8000_0000;
    const P: u64 = PAGE_SIZE as u64;

    fn state() -> InitialState {
        InitialState {
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
            vcpus: 1,
            entry_pc: BASE,
            x0: 0x10_0000,
        }
    }

    fn pages_of<const N: usize>(d: &DeclaredZero<N>) -> BTreeSet<u64> {
        d.runs()
            .iter()
            .flat_map(|&(s, e)| (s / P..e / P).map(|p| p - BASE / P))
            .collect()
    }

    /// Maximal runs of consecutive pages in `set`.
    fn runs_in(set: &BTreeSet<u64>) -> usize {
        set.iter().filter(|&&p| p == 0 || !set.contains(&(p - 1))).count()
    }

    #[test]
    fn merges_overlapping_and_adjacent_and_refuses_when_full() {
        let mut d = DeclaredZero::<2>::new();
        d.declare(BASE + 4 * P, 2).unwrap();
        d.declare(BASE, 1).unwrap();
        assert_eq!(d.runs(), &[(BASE, BASE + P), (BASE + 4 * P, BASE + 6 * P)]);
        // A third separate run does not fit; the list is unchanged.
        assert_eq!(d.declare(BASE + 10 * P, 1), Err(DeclareError::Full));
        assert_eq!(d.runs().len(), 2);
        // Adjacent on the left of the second run, and overlapping both.
        d.declare(BASE + 3 * P, 1).unwrap();
        assert_eq!(d.runs(), &[(BASE, BASE + P), (BASE + 3 * P, BASE + 6 * P)]);
        d.declare(BASE + P, 2).unwrap();
        assert_eq!(d.runs(), &[(BASE, BASE + 6 * P)]);
        // Inside: nothing changes.
        d.declare(BASE + 2 * P, 1).unwrap();
        assert_eq!(d.runs(), &[(BASE, BASE + 6 * P)]);
        d.clear();
        assert!(d.is_empty());
    }

    #[test]
    fn refuses_malformed_ranges() {
        let mut d = DeclaredZero::<4>::new();
        for (ipa, pages) in [(BASE + 8, 1), (BASE, 0), (!0xfffu64, 1), (BASE, u64::MAX / P)] {
            assert_eq!(d.declare(ipa, pages), Err(DeclareError::Malformed), "{ipa:#x} {pages}");
        }
        assert!(d.is_empty());
        // The top page of the address space, ending one below 2^64, fits.
        d.declare(!0x1fffu64, 1).unwrap();
        assert_eq!(d.runs(), &[(!0x1fffu64, !0xfffu64)]);
    }

    proptest! {
        /// Against a model (a set of pages): a declaration succeeds exactly
        /// when the union has at most N maximal runs, the list then holds
        /// the union, sorted, disjoint and non-adjacent; on refusal it is
        /// unchanged.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..10, 0u64..40, 1u64..8), 1..40)) {
            let mut d = DeclaredZero::<3>::new();
            let mut model = BTreeSet::new();
            for (op, at, n) in ops {
                if op == 0 {
                    d.clear();
                    model.clear();
                    continue;
                }
                let mut union = model.clone();
                union.extend(at..at + n);
                let before = d;
                let result = d.declare(BASE + at * P, n);
                if runs_in(&union) <= 3 {
                    prop_assert_eq!(result, Ok(()));
                    model = union;
                } else {
                    prop_assert_eq!(result, Err(DeclareError::Full));
                    prop_assert_eq!(d, before);
                }
                prop_assert_eq!(pages_of(&d), model.clone());
                prop_assert_eq!(d.runs().len(), runs_in(&model));
                for w in d.runs().windows(2) {
                    prop_assert!(w[0].1 < w[1].0, "runs {:x?} not sorted, disjoint, apart", d.runs());
                }
            }
        }

        /// Measuring mapped pages (zero or not) in order, with the declared
        /// pages between them through `measure_between`, gives the
        /// measurement of the memory in which every declared unmapped page
        /// is a mapped page of zeros; a piece `keep` refuses is left out.
        #[test]
        fn measures_like_mapped_zero_pages(
            declared in proptest::collection::vec((0u64..40, 1u64..8), 0..5),
            mapped in proptest::collection::btree_map(0u64..48, any::<bool>(), 0..20),
            refuse in proptest::option::of(0u64..48),
        ) {
            let mut d = DeclaredZero::<8>::new();
            for &(at, n) in &declared {
                let _ = d.declare(BASE + at * P, n);
            }
            let listed = pages_of(&d);
            let zero = [0u8; PAGE_SIZE];
            let full = [0x5au8; PAGE_SIZE];
            // The measurement with a gap's piece containing `refuse` left
            // out, the way the hypervisor leaves out an evicted page's.
            let mut left_out = BTreeSet::new();
            let mut keep = |a: u64, b: u64| {
                let hit = refuse.is_some_and(|r| (a / P..b / P).contains(&(BASE / P + r)));
                if hit {
                    left_out.extend((a / P..b / P).map(|p| p - BASE / P));
                }
                !hit
            };
            let mut m = Measurer::new(&state());
            let mut cursor = 0u64;
            for (&page, &nonzero) in &mapped {
                d.measure_between(&mut m, cursor, BASE + page * P, &mut keep).unwrap();
                m.page(BASE + page * P, if nonzero { &full } else { &zero }).unwrap();
                cursor = BASE + (page + 1) * P;
            }
            d.measure_between(&mut m, cursor, u64::MAX, &mut keep).unwrap();
            // Reference: every page, mapped or declared and kept, read.
            let mut r = Measurer::new(&state());
            let all: BTreeSet<u64> = listed.iter().copied().chain(mapped.keys().copied()).collect();
            for page in all {
                match mapped.get(&page) {
                    Some(&nonzero) => r.page(BASE + page * P, if nonzero { &full } else { &zero }).unwrap(),
                    None if left_out.contains(&page) => {}
                    None => r.page(BASE + page * P, &zero).unwrap(),
                }
            }
            prop_assert_eq!(m.finish(), r.finish());
        }
    }
}
