//! Host → hypervisor calls: `HVC #0` with an SMCCC fast-call ID in `w0`.
//!
//! Rampart's host calls sit in the vendor-specific hypervisor range
//! (owning entity 6), function numbers 0x8000 and up, 64-bit convention:
//! `0xC600_8000 + n`. The numbers below 0x8000 are left free for the
//! KVM-compatible guest interface, whose IDs a later guest ABI reuses.
//!
//! Arguments are in `x1`..`x6`; the result is in `x0` (`SUCCESS` or a
//! negative [`Error`](crate::Error) code) with values in `x1`..`x3`.

use crate::smccc::{fast_call_id, owner};

/// The major version of the host ABI. Bumped on incompatible change.
pub const ABI_VERSION_MAJOR: u64 = 0;
/// The minor version of the host ABI. Bumped when calls are added.
pub const ABI_VERSION_MINOR: u64 = 2;

/// First function number of Rampart's host calls.
pub const HOST_FUNCTION_BASE: u16 = 0x8000;

/// A host call, decoded from its function ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HostCall {
    /// `RAMPART_HOST_VERSION`: no arguments. Returns `x0 = SUCCESS`,
    /// `x1 = ABI major`, `x2 = ABI minor`.
    Version = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE),
    /// `RAMPART_HOST_FEATURES`: `x1` = a function ID. Returns `x0 = SUCCESS`
    /// if the host may call it, `NOT_SUPPORTED` otherwise.
    Features = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 1),
    /// `RAMPART_HOST_SHARE_HYP`: `x1` = physical address (page-aligned),
    /// `x2` = number of pages. The host keeps the pages and lends them to
    /// the hypervisor, which maps them. Returns `x0 = SUCCESS`.
    ShareHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 2),
    /// `RAMPART_HOST_UNSHARE_HYP`: `x1`, `x2` as for share. Ends the loan;
    /// `BUSY` while the hypervisor has a page pinned.
    UnshareHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 3),
    /// `RAMPART_HOST_DONATE_HYP`: `x1`, `x2` as for share. The pages become
    /// the hypervisor's and leave the host's stage 2.
    DonateHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 4),
    /// `RAMPART_HOST_RECLAIM_HYP`: `x1`, `x2` as for share. Pages the host
    /// donated come back to it, zeroed. Never the hypervisor's own carve-out.
    ReclaimHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 5),
}

impl HostCall {
    /// Every host call, in ID order.
    pub const ALL: [HostCall; 6] = [
        HostCall::Version,
        HostCall::Features,
        HostCall::ShareHyp,
        HostCall::UnshareHyp,
        HostCall::DonateHyp,
        HostCall::ReclaimHyp,
    ];

    /// The function ID placed in `w0`.
    #[must_use]
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The stable name used in `docs/abi.md`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            HostCall::Version => "RAMPART_HOST_VERSION",
            HostCall::Features => "RAMPART_HOST_FEATURES",
            HostCall::ShareHyp => "RAMPART_HOST_SHARE_HYP",
            HostCall::UnshareHyp => "RAMPART_HOST_UNSHARE_HYP",
            HostCall::DonateHyp => "RAMPART_HOST_DONATE_HYP",
            HostCall::ReclaimHyp => "RAMPART_HOST_RECLAIM_HYP",
        }
    }
}

impl TryFrom<u32> for HostCall {
    type Error = crate::Error;

    fn try_from(id: u32) -> Result<Self, crate::Error> {
        HostCall::ALL
            .into_iter()
            .find(|call| call.id() == id)
            .ok_or(crate::Error::NotSupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_in_the_vendor_hypervisor_range() {
        assert_eq!(HostCall::Version.id(), 0xC600_8000);
        assert_eq!(HostCall::Features.id(), 0xC600_8001);
        for call in HostCall::ALL {
            assert_eq!(crate::smccc::owner_of(call.id()), owner::VENDOR_HYPERVISOR);
            assert_eq!(HostCall::try_from(call.id()), Ok(call));
        }
    }

    #[test]
    fn unknown_ids_are_refused() {
        for id in [0, 0xC600_0000, 0xC600_8006, 0x8600_8000, u32::MAX] {
            assert_eq!(HostCall::try_from(id), Err(crate::Error::NotSupported));
        }
    }
}

/// Size of a page in the host memory calls.
pub const PAGE_SIZE: u64 = 4096;

/// A range of whole pages named by a host call: `x1` = physical address,
/// `x2` = number of pages. Decoding guarantees it is page-aligned, not
/// empty, and does not wrap around the 64-bit address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    start: u64,
    pages: u64,
}

impl PageRange {
    /// Validates `x1` and `x2`.
    ///
    /// # Errors
    ///
    /// `InvalidParameter` if the address is not page-aligned, the count is
    /// zero, or the range wraps around.
    pub fn new(start: u64, pages: u64) -> Result<Self, crate::Error> {
        let aligned = start.is_multiple_of(PAGE_SIZE);
        let fits = pages.checked_mul(PAGE_SIZE).and_then(|bytes| start.checked_add(bytes)).is_some();
        if !aligned || pages == 0 || !fits {
            return Err(crate::Error::InvalidParameter);
        }
        Ok(PageRange { start, pages })
    }

    /// The first byte.
    #[must_use]
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// The number of pages.
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.pages
    }

    /// One past the last byte (cannot overflow, checked at construction).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.start + self.pages * PAGE_SIZE
    }
}

/// A host call with its arguments decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRequest {
    /// See [`HostCall::Version`].
    Version,
    /// See [`HostCall::Features`]: the function ID asked about.
    Features(u32),
    /// See [`HostCall::ShareHyp`].
    ShareHyp(PageRange),
    /// See [`HostCall::UnshareHyp`].
    UnshareHyp(PageRange),
    /// See [`HostCall::DonateHyp`].
    DonateHyp(PageRange),
    /// See [`HostCall::ReclaimHyp`].
    ReclaimHyp(PageRange),
}

impl HostRequest {
    /// Decodes the registers of an `HVC #0`: `regs[0]` is `x0` (only `w0`,
    /// the function ID, is read), `regs[1..]` are `x1`.. .
    ///
    /// # Errors
    ///
    /// `NotSupported` for an unknown function ID, `InvalidParameter` for
    /// malformed arguments.
    pub fn decode(regs: [u64; 3]) -> Result<Self, crate::Error> {
        #[allow(clippy::cast_possible_truncation, reason = "SMCCC function IDs are w0 and w1")]
        let (function, w1) = (regs[0] as u32, regs[1] as u32);
        let range = || PageRange::new(regs[1], regs[2]);
        Ok(match HostCall::try_from(function)? {
            HostCall::Version => HostRequest::Version,
            HostCall::Features => HostRequest::Features(w1),
            HostCall::ShareHyp => HostRequest::ShareHyp(range()?),
            HostCall::UnshareHyp => HostRequest::UnshareHyp(range()?),
            HostCall::DonateHyp => HostRequest::DonateHyp(range()?),
            HostCall::ReclaimHyp => HostRequest::ReclaimHyp(range()?),
        })
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use crate::Error;

    #[test]
    fn decodes_memory_calls() {
        let r = HostRequest::decode([0xC600_8002, 0x4800_0000, 3]).unwrap();
        assert_eq!(r, HostRequest::ShareHyp(PageRange::new(0x4800_0000, 3).unwrap()));
        let PageRange { start, pages } = PageRange::new(0x4800_0000, 3).unwrap();
        assert_eq!((start, pages), (0x4800_0000, 3));
        assert_eq!(PageRange::new(0x4800_0000, 3).unwrap().end(), 0x4800_3000);
        // Upper half of x0 ignored, as SMCCC says.
        assert_eq!(HostRequest::decode([0xdead_0000_C600_8000, 0, 0]), Ok(HostRequest::Version));
        assert_eq!(HostRequest::decode([0xC600_8001, 0x1_C600_8000, 0]), Ok(HostRequest::Features(0xC600_8000)));
    }

    #[test]
    fn refuses_malformed_ranges() {
        for (addr, pages) in [(0x4800_0001, 1), (0x4800_0000, 0), (0x4800_0000, u64::MAX), (u64::MAX & !0xfff, 2), (0, 1 << 52)] {
            assert_eq!(HostRequest::decode([0xC600_8004, addr, pages]), Err(Error::InvalidParameter), "{addr:#x} {pages}");
        }
        assert_eq!(HostRequest::decode([0xC600_80FF, 0, 0]), Err(Error::NotSupported));
        // A range must end at a representable address.
        assert!(PageRange::new((u64::MAX & !0xfff) - 0x1000, 1).is_ok());
    }
}
