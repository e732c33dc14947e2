//! Half-open physical address ranges with checked arithmetic.

use alloc::vec::Vec;
use core::fmt;

/// A physical address range `[start, end)`. `start <= end` always holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemRange {
    start: u64,
    end: u64,
}

impl MemRange {
    /// The range `[start, end)`, or `None` if `end < start`.
    #[must_use]
    pub const fn new(start: u64, end: u64) -> Option<Self> {
        if end < start {
            None
        } else {
            Some(MemRange { start, end })
        }
    }

    /// The range of `size` bytes from `start`, or `None` if it would wrap.
    #[must_use]
    pub const fn from_base_size(start: u64, size: u64) -> Option<Self> {
        match start.checked_add(size) {
            Some(end) => Some(MemRange { start, end }),
            None => None,
        }
    }

    /// First address.
    #[must_use]
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// One past the last address.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// Size in bytes.
    #[must_use]
    pub const fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether `addr` lies inside.
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether `other` lies entirely inside (an empty `other` is inside
    /// anything that contains its start, or equals its end).
    #[must_use]
    pub const fn contains_range(&self, other: &MemRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// Whether the two ranges share at least one byte.
    #[must_use]
    pub const fn overlaps(&self, other: &MemRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether both ends are multiples of `align` (a power of two).
    #[must_use]
    pub const fn is_aligned(&self, align: u64) -> bool {
        self.start & (align - 1) == 0 && self.end & (align - 1) == 0
    }

    /// The largest range inside this one whose ends are multiples of `align`
    /// (a power of two), or `None` if there is none.
    #[must_use]
    pub fn shrink_to_alignment(&self, align: u64) -> Option<MemRange> {
        let start = align_up(self.start, align)?;
        let end = align_down(self.end, align);
        if start < end {
            MemRange::new(start, end)
        } else {
            None
        }
    }

    /// This range with `hole` removed: zero, one or two pieces.
    #[must_use]
    pub fn subtract(&self, hole: &MemRange) -> Vec<MemRange> {
        let mut out = Vec::new();
        if !self.overlaps(hole) {
            if !self.is_empty() {
                out.push(*self);
            }
            return out;
        }
        if self.start < hole.start {
            out.push(MemRange {
                start: self.start,
                end: hole.start,
            });
        }
        if hole.end < self.end {
            out.push(MemRange {
                start: hole.end,
                end: self.end,
            });
        }
        out
    }
}

impl fmt::Debug for MemRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

impl fmt::Display for MemRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None` on
/// overflow.
#[must_use]
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// `value` rounded down to a multiple of `align` (a power of two).
#[must_use]
pub const fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// Removes every range in `holes` from every range in `ranges`, returning the
/// sorted, non-empty remainder.
#[must_use]
pub fn subtract_all(ranges: &[MemRange], holes: &[MemRange]) -> Vec<MemRange> {
    let mut pieces: Vec<MemRange> = ranges.iter().copied().filter(|r| !r.is_empty()).collect();
    for hole in holes {
        pieces = pieces.iter().flat_map(|p| p.subtract(hole)).collect();
    }
    pieces.sort();
    pieces
}

/// Sorts `ranges` and merges those that overlap or touch.
#[must_use]
pub fn merge(mut ranges: Vec<MemRange>) -> Vec<MemRange> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort();
    let mut merged: Vec<MemRange> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Total bytes of a set of ranges.
#[must_use]
pub fn total_size(ranges: &[MemRange]) -> u64 {
    ranges.iter().map(MemRange::size).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn r(start: u64, end: u64) -> MemRange {
        MemRange::new(start, end).unwrap()
    }

    #[test]
    fn construction_rejects_backwards_and_wrapping_ranges() {
        assert!(MemRange::new(10, 5).is_none());
        assert!(MemRange::from_base_size(u64::MAX, 2).is_none());
        assert_eq!(
            MemRange::from_base_size(0x1000, 0x1000),
            Some(r(0x1000, 0x2000))
        );
    }

    #[test]
    fn subtract_cases() {
        let ram = r(0x4000_0000, 0x6000_0000);
        assert_eq!(ram.subtract(&r(0, 0x1000)), vec![ram]);
        assert_eq!(
            ram.subtract(&r(0x4020_0000, 0x4120_0000)),
            vec![r(0x4000_0000, 0x4020_0000), r(0x4120_0000, 0x6000_0000)]
        );
        assert_eq!(
            ram.subtract(&r(0x4000_0000, 0x4100_0000)),
            vec![r(0x4100_0000, 0x6000_0000)]
        );
        assert_eq!(
            ram.subtract(&r(0x5000_0000, 0x7000_0000)),
            vec![r(0x4000_0000, 0x5000_0000)]
        );
        assert!(ram.subtract(&r(0, u64::MAX)).is_empty());
    }

    #[test]
    fn subtract_all_sorts_and_drops_empties() {
        let out = subtract_all(
            &[r(0x2000, 0x3000), r(0, 0x1000), r(0x5000, 0x5000)],
            &[r(0x800, 0x2800)],
        );
        assert_eq!(out, vec![r(0, 0x800), r(0x2800, 0x3000)]);
        assert_eq!(total_size(&out), 0x800 + 0x800);
    }

    #[test]
    fn merge_joins_overlapping_and_touching_ranges() {
        let out = merge(vec![
            r(0x3000, 0x4000),
            r(0, 0x1000),
            r(0x1000, 0x1800),
            r(0x3800, 0x3900),
            r(5, 5),
        ]);
        assert_eq!(out, vec![r(0, 0x1800), r(0x3000, 0x4000)]);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_up(0x1001, 0x1000), Some(0x2000));
        assert_eq!(align_up(0x1000, 0x1000), Some(0x1000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert_eq!(align_down(0x1fff, 0x1000), 0x1000);
        assert_eq!(
            r(0x1001, 0x3fff).shrink_to_alignment(0x1000),
            Some(r(0x2000, 0x3000))
        );
        assert_eq!(r(0x1001, 0x1fff).shrink_to_alignment(0x1000), None);
        assert!(r(0x20_0000, 0x40_0000).is_aligned(BLOCK));
        assert!(!r(0x20_0000, 0x40_1000).is_aligned(BLOCK));
    }

    const BLOCK: u64 = 2 << 20;

    #[test]
    fn overlap_and_containment() {
        let a = r(0x1000, 0x2000);
        assert!(a.overlaps(&r(0x1fff, 0x3000)));
        assert!(!a.overlaps(&r(0x2000, 0x3000)));
        assert!(!a.overlaps(&r(0x1000, 0x1000)));
        assert!(a.contains(0x1fff) && !a.contains(0x2000));
        assert!(a.contains_range(&r(0x1800, 0x2000)));
        assert!(!a.contains_range(&r(0x1800, 0x2001)));
    }
}
