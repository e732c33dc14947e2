//! Newtypes for the numbers the state machine is handed: physical addresses,
//! page frame numbers and VM handles.
//!
//! Every number that reaches a transition is an allegation until the table
//! has validated it; these types only say which address space a number
//! belongs to, they do not make it valid.

use core::fmt;

/// log2 of the page size the table tracks.
pub const PAGE_SHIFT: u32 = 12;
/// Size in bytes of one tracked page (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// A host physical address (the output address of a stage-2 translation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

impl PhysAddr {
    /// The first byte of page frame `pfn`, or `None` if it does not fit in
    /// 64 bits.
    #[must_use]
    pub const fn from_pfn(pfn: Pfn) -> Option<Self> {
        if pfn.0 > (u64::MAX >> PAGE_SHIFT) {
            None
        } else {
            Some(Self(pfn.0 << PAGE_SHIFT))
        }
    }

    /// The page frame this address falls in (rounding down).
    #[must_use]
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// Whether the address is the first byte of a page.
    #[must_use]
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A physical page frame number: a physical address shifted right by
/// [`PAGE_SHIFT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// The hypervisor's handle for a guest (a VM). Every value is a valid
/// handle as far as this crate is concerned: which handles name live VMs is
/// the hypervisor's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VmId(pub u16);

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm {}", self.0)
    }
}
