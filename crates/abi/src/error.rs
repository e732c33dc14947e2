//! Error codes returned in `x0` by every Rampart call.
//!
//! Codes are negative 64-bit integers. The first three are the SMCCC's own
//! (`NOT_SUPPORTED`, `NOT_REQUIRED`, `INVALID_PARAMETER`); the rest are
//! Rampart's and start at -16 so that they never collide with the SMCCC's
//! reserved values. A successful call returns 0 (`SUCCESS`) in `x0`, with any
//! results in `x1`..`x3`.

/// `x0` value of a call that succeeded.
pub const SUCCESS: i64 = 0;

/// A failed call's reason, as returned in `x0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i64)]
pub enum Error {
    /// The function ID is unknown, or the call is not available to this
    /// caller.
    NotSupported = -1,
    /// The call is not required on this platform (SMCCC).
    NotRequired = -2,
    /// An argument is malformed: unaligned, out of range, or a reserved bit
    /// is set.
    InvalidParameter = -3,
    /// The caller does not own or may not touch the named resource.
    Denied = -16,
    /// The resource is in use and cannot change state now.
    Busy = -17,
    /// The hypervisor has no memory left for this request.
    NoMemory = -18,
    /// The address range is not (entirely) memory the call can act on.
    Range = -19,
    /// A protected VM's first run: no signature was given for it.
    NotSigned = -20,
    /// A protected VM's first run: its signer is not a trusted key.
    UntrustedKey = -21,
    /// A protected VM's first run: the signature does not match the
    /// measurement of its memory, vCPU state and configuration.
    BadSignature = -22,
    /// Migration (issue 14): a stream record does not authenticate under
    /// the migration key (tampered, sealed for another destination or
    /// challenge, or under another migration secret).
    NotAuthentic = -27,
    /// Migration: a stream record is malformed, out of sequence (dropped,
    /// reordered, repeated) or out of place (a page out of order or outside
    /// the header's layout, counts that disagree, anything after the end).
    StreamOrder = -28,
    /// Migration: the stream names a challenge this machine did not issue,
    /// already spent, or is using in another import (a stream replayed), or
    /// another machine as its destination.
    StaleStream = -29,
    /// Migration: the VM is being exported (it never runs again) or
    /// imported (it runs once its import completes).
    Migrating = -30,
    /// `VM_RESTORE`: the sealed page and tag do not authenticate for this
    /// VM, guest address and version (tampered, another VM's, another
    /// address's page).
    SealInvalid = -23,
    /// `VM_RESTORE`: the version is not the guest address's current one (a
    /// replay of an older seal, or a version never issued).
    StaleVersion = -24,
    /// `VM_RESTORE`: the guest address is not evicted.
    NotEvicted = -25,
    /// `VM_EVICT`: the guest address holds no page the VM owns that can be
    /// evicted (unmapped, already evicted, shared by or with the host, or
    /// its version would overflow).
    NotEvictable = -26,
}

impl Error {
    /// Every error, in code order; used by tests and documentation checks.
    pub const ALL: [Error; 18] = [
        Error::NotSupported,
        Error::NotRequired,
        Error::InvalidParameter,
        Error::Denied,
        Error::Busy,
        Error::NoMemory,
        Error::Range,
        Error::NotSigned,
        Error::UntrustedKey,
        Error::BadSignature,
        Error::NotAuthentic,
        Error::StreamOrder,
        Error::StaleStream,
        Error::Migrating,
        Error::SealInvalid,
        Error::StaleVersion,
        Error::NotEvicted,
        Error::NotEvictable,
    ];

    /// The value returned in `x0`.
    #[must_use]
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// The stable upper-case name used in `docs/abi.md`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Error::NotSupported => "NOT_SUPPORTED",
            Error::NotRequired => "NOT_REQUIRED",
            Error::InvalidParameter => "INVALID_PARAMETER",
            Error::Denied => "DENIED",
            Error::Busy => "BUSY",
            Error::NoMemory => "NO_MEMORY",
            Error::Range => "RANGE",
            Error::NotSigned => "NOT_SIGNED",
            Error::UntrustedKey => "UNTRUSTED_KEY",
            Error::BadSignature => "BAD_SIGNATURE",
            Error::NotAuthentic => "NOT_AUTHENTIC",
            Error::StreamOrder => "STREAM_ORDER",
            Error::StaleStream => "STALE_STREAM",
            Error::Migrating => "MIGRATING",
            Error::SealInvalid => "SEAL_INVALID",
            Error::StaleVersion => "STALE_VERSION",
            Error::NotEvicted => "NOT_EVICTED",
            Error::NotEvictable => "NOT_EVICTABLE",
        }
    }
}

impl TryFrom<i64> for Error {
    type Error = i64;

    fn try_from(code: i64) -> Result<Self, i64> {
        Error::ALL
            .into_iter()
            .find(|e| e.code() == code)
            .ok_or(code)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(Error::try_from(e.code()), Ok(*e));
            for other in &Error::ALL[i + 1..] {
                assert_ne!(e.code(), other.code());
                assert_ne!(e.name(), other.name());
            }
        }
        assert_eq!(Error::try_from(0), Err(0));
        assert_eq!(Error::try_from(-4), Err(-4));
    }

    #[test]
    fn smccc_codes_match_the_specification() {
        assert_eq!(Error::NotSupported.code(), crate::smccc::NOT_SUPPORTED);
        assert_eq!(Error::NotRequired.code(), crate::smccc::NOT_REQUIRED);
        assert_eq!(
            Error::InvalidParameter.code(),
            crate::smccc::INVALID_PARAMETER
        );
    }
}
