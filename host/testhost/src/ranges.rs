//! Physical address ranges and fixed-capacity sets of them.

use core::fmt;

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl Range {
    /// The range of `size` bytes at `start` (saturating at the top of the
    /// address space).
    pub fn from_base_size(start: u64, size: u64) -> Self {
        Self {
            start,
            end: start.saturating_add(size),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no address.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_range(&self, other: &Range) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The largest sub-range whose ends are multiples of `align` (a power of
    /// two).
    pub fn align_inward(&self, align: u64) -> Range {
        let start = self
            .start
            .checked_add(align - 1)
            .map_or(u64::MAX, |s| s & !(align - 1));
        let end = self.end & !(align - 1);
        if start < end {
            Range { start, end }
        } else {
            Range { start, end: start }
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// Up to `N` disjoint-or-not ranges; remembers if any did not fit.
#[derive(Clone, Copy, Debug)]
pub struct RangeSet<const N: usize> {
    items: [Range; N],
    len: usize,
    overflowed: bool,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self {
            items: [Range::default(); N],
            len: 0,
            overflowed: false,
        }
    }
}

impl<const N: usize> RangeSet<N> {
    /// Adds a range (empty ranges are ignored).
    pub fn push(&mut self, range: Range) {
        if range.is_empty() {
            return;
        }
        if self.len < N {
            self.items[self.len] = range;
            self.len += 1;
        } else {
            self.overflowed = true;
        }
    }

    /// The ranges.
    pub fn as_slice(&self) -> &[Range] {
        &self.items[..self.len]
    }

    /// Whether some range was dropped because the set was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Removes every address in `cut` from the set, splitting ranges as needed.
    pub fn subtract(&mut self, cut: &Range) {
        let mut result = RangeSet::<N> {
            overflowed: self.overflowed,
            ..RangeSet::default()
        };
        for r in self.as_slice() {
            if !r.overlaps(cut) {
                result.push(*r);
                continue;
            }
            result.push(Range {
                start: r.start,
                end: cut.start.min(r.end),
            });
            result.push(Range {
                start: cut.end.max(r.start),
                end: r.end,
            });
        }
        *self = result;
    }

    /// Total bytes (ranges are assumed disjoint).
    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(Range::size).sum()
    }
}
