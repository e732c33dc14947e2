//! Why a transition was refused, and where.

use core::fmt;

use crate::PhysAddr;

/// The precondition a transition failed. Each variant's doc line is its
/// message.
///
/// Range errors (`Unaligned`, `ZeroCount`, `Overflow`, `OutOfRange`) are
/// checked before any page is looked at; state errors are then checked page
/// by page in address order, and the first failing page is reported.
///
/// Suggested mapping to `rampart_abi::Error`: `Unaligned`, `ZeroCount`,
/// `Overflow` → `INVALID_PARAMETER`; `OutOfRange` → `RANGE`; `Busy`,
/// `PinLimit` → `BUSY`; `Corrupt` is a broken invariant (halt fail-closed);
/// everything else → `DENIED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The start address is not page-aligned.
    Unaligned,
    /// The range has no pages.
    ZeroCount,
    /// The range wraps around the end of the physical address space.
    Overflow,
    /// The range is not entirely inside the table.
    OutOfRange,
    /// The caller neither owns the page nor has the role the call needs.
    NotOwner,
    /// The caller owns the page but it is already shared (or lent), so it
    /// cannot be shared again, given away, or relinquished.
    AlreadyShared,
    /// The page is not shared the way the call needs (with that party).
    NotShared,
    /// The page belongs to, or is lent to, a different guest.
    WrongGuest,
    /// The hypervisor has pinned the page, so it cannot be unshared.
    Busy,
    /// The page is shared with the hypervisor but not pinned.
    NotPinned,
    /// The page already carries the maximum number of pins.
    PinLimit,
    /// The page's metadata entry is not a valid encoding (broken invariant).
    Corrupt,
}

impl Error {
    /// Every error, in declaration order; used by tests.
    pub const ALL: [Error; 12] = [
        Error::Unaligned,
        Error::ZeroCount,
        Error::Overflow,
        Error::OutOfRange,
        Error::NotOwner,
        Error::AlreadyShared,
        Error::NotShared,
        Error::WrongGuest,
        Error::Busy,
        Error::NotPinned,
        Error::PinLimit,
        Error::Corrupt,
    ];

    /// A fixed message for logs (never includes caller data).
    #[must_use]
    pub const fn message(self) -> &'static str {
        match self {
            Error::Unaligned => "start address is not page-aligned",
            Error::ZeroCount => "range has no pages",
            Error::Overflow => "range wraps around the address space",
            Error::OutOfRange => "range is not entirely inside the table",
            Error::NotOwner => "caller does not own the page",
            Error::AlreadyShared => "page is already shared",
            Error::NotShared => "page is not shared with that party",
            Error::WrongGuest => "page belongs to or is lent to another guest",
            Error::Busy => "page is pinned by the hypervisor",
            Error::NotPinned => "page is not pinned",
            Error::PinLimit => "page has the maximum number of pins",
            Error::Corrupt => "page metadata is corrupt",
        }
    }

    /// Whether the error says the arguments were malformed, as opposed to
    /// the pages being in the wrong state.
    #[must_use]
    pub const fn is_range_error(self) -> bool {
        matches!(
            self,
            Error::Unaligned | Error::ZeroCount | Error::Overflow | Error::OutOfRange
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A refused transition: which precondition failed and at which page.
/// Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rejection {
    /// The failed precondition.
    pub error: Error,
    /// The first offending page: the start address for `Unaligned`,
    /// `ZeroCount` and `Overflow`; the first page outside the table for
    /// `OutOfRange`; the first page in the wrong state otherwise.
    pub addr: PhysAddr,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.error, self.addr)
    }
}

impl core::error::Error for Rejection {}
impl core::error::Error for Error {}
