//! The Realm Services Interface (RSI 1.0, Arm DEN0137) as Rampart offers it
//! to a *realm* VM (`VM_CREATE` config bit 2, [`crate::host::VmConfig`]).
//!
//! A realm guest calls these through `SMC #0` (SMCCC 1.1 fast calls, SMC64,
//! owner Standard Secure Service: `0xC400_0190 + n`). Results are RSI
//! status codes ([`status`]) in `x0`, not SMCCC errors, except for a
//! function ID in the RSI range that Rampart does not know, which returns
//! SMCCC `NOT_SUPPORTED` (-1). A VM created without the realm bit gets
//! `NOT_SUPPORTED` for every ID here (and a realm VM gets `NOT_SUPPORTED`
//! for the KVM/pKVM vendor-hypervisor calls): one VM never sees both guest
//! ABIs. `docs/abi.md`, "Realm guests (RSI)", describes each call.

/// The first function ID of the RSI range.
pub const RSI_BASE: u32 = 0xC400_0190;
/// The last function ID of the RSI range (16 IDs are reserved).
pub const RSI_LAST: u32 = 0xC400_019F;

/// Whether `function` (w0) lies in the RSI range.
#[must_use]
pub const fn in_range(function: u32) -> bool {
    function >= RSI_BASE && function <= RSI_LAST
}

/// The RSI version Rampart implements: 1.0 (`major << 16 | minor`).
pub const VERSION_1_0: u64 = 1 << 16;

/// The RSI calls, by function ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RsiCall {
    /// `RSI_VERSION`: `x1` = requested version. Returns `x0` = status
    /// (`SUCCESS` if the requested version is one Rampart implements,
    /// `ERROR_INPUT` otherwise), `x1` = lower and `x2` = higher implemented
    /// revision (both 1.0).
    Version = RSI_BASE,
    /// `RSI_FEATURES`: `x1` = feature register index. Returns `x1` = its
    /// value (every RSI 1.0 feature register reads 0).
    Features = RSI_BASE + 1,
    /// `RSI_MEASUREMENT_READ`: `x1` = index (0 = RIM, 1..=4 = REMs).
    /// Returns `x1`..`x8` = the 64-byte value (SHA-256: the first 32 bytes,
    /// the rest zero).
    MeasurementRead = RSI_BASE + 2,
    /// `RSI_MEASUREMENT_EXTEND`: `x1` = index (1..=4), `x2` = size
    /// (0..=64), `x3`..`x10` = value. REM[i] = SHA-256(REM[i] || value).
    MeasurementExtend = RSI_BASE + 3,
    /// `RSI_ATTESTATION_TOKEN_INIT`: `x1`..`x8` = 64-byte challenge. Builds
    /// the CCA token for this vCPU; returns `x1` = its size in bytes (an
    /// upper bound).
    AttestationTokenInit = RSI_BASE + 4,
    /// `RSI_ATTESTATION_TOKEN_CONTINUE`: `x1` = IPA of a protected granule
    /// of the realm, `x2` = offset in it, `x3` = bytes available from the
    /// offset. Writes the next part of the token; returns `x1` = bytes
    /// written and `x0` = `INCOMPLETE` while more remains, `SUCCESS` with
    /// the last part.
    AttestationTokenContinue = RSI_BASE + 5,
    /// `RSI_REALM_CONFIG`: `x1` = IPA of a 4 KiB-aligned protected granule
    /// the hypervisor fills with a [`realm_config`] structure.
    RealmConfig = RSI_BASE + 6,
    /// `RSI_IPA_STATE_SET`: `x1` = base, `x2` = top (exclusive), `x3` =
    /// RIPAS ([`ripas::EMPTY`] or [`ripas::RAM`]), `x4` = flags
    /// ([`change_flags`]). Returns `x1` = the first address not changed
    /// (always above `x1` on `SUCCESS`/`ACCEPT`), `x2` = [`response`].
    IpaStateSet = RSI_BASE + 7,
    /// `RSI_IPA_STATE_GET`: `x1` = base, `x2` = top. Returns `x1` = the end
    /// of the run of granules from `base` with the same RIPAS, `x2` = that
    /// RIPAS.
    IpaStateGet = RSI_BASE + 8,
    /// `RSI_HOST_CALL`: `x1` = IPA of an [`host_call`] structure
    /// (`RsiHostCall`, 256 bytes, 256-byte aligned, in a protected granule
    /// of the realm). The vCPU exits to the host
    /// (`ExitReason::HostCall`, `x2` = `imm`); once the host answered, the
    /// next run writes the answer's `gprs` into the structure (never `imm`
    /// nor anything past it) and returns `SUCCESS`. `ERROR_INPUT` for a
    /// bad address (also if the granule stopped being private before the
    /// answer: the structure is then left alone).
    HostCall = RSI_BASE + 9,
}

impl RsiCall {
    /// Every RSI call.
    pub const ALL: [RsiCall; 10] = [
        RsiCall::Version,
        RsiCall::Features,
        RsiCall::MeasurementRead,
        RsiCall::MeasurementExtend,
        RsiCall::AttestationTokenInit,
        RsiCall::AttestationTokenContinue,
        RsiCall::RealmConfig,
        RsiCall::IpaStateSet,
        RsiCall::IpaStateGet,
        RsiCall::HostCall,
    ];

    /// The function ID.
    #[must_use]
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The specification's name (`docs/abi.md`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RsiCall::Version => "RSI_VERSION",
            RsiCall::Features => "RSI_FEATURES",
            RsiCall::MeasurementRead => "RSI_MEASUREMENT_READ",
            RsiCall::MeasurementExtend => "RSI_MEASUREMENT_EXTEND",
            RsiCall::AttestationTokenInit => "RSI_ATTESTATION_TOKEN_INIT",
            RsiCall::AttestationTokenContinue => "RSI_ATTESTATION_TOKEN_CONTINUE",
            RsiCall::RealmConfig => "RSI_REALM_CONFIG",
            RsiCall::IpaStateSet => "RSI_IPA_STATE_SET",
            RsiCall::IpaStateGet => "RSI_IPA_STATE_GET",
            RsiCall::HostCall => "RSI_HOST_CALL",
        }
    }
}

impl TryFrom<u32> for RsiCall {
    type Error = crate::Error;

    fn try_from(id: u32) -> Result<Self, crate::Error> {
        RsiCall::ALL
            .into_iter()
            .find(|c| c.id() == id)
            .ok_or(crate::Error::NotSupported)
    }
}

/// RSI status codes (`x0` of every RSI call but an unknown ID).
pub mod status {
    /// The call succeeded.
    pub const SUCCESS: u64 = 0;
    /// An input was invalid (alignment, range, index, size).
    pub const ERROR_INPUT: u64 = 1;
    /// The call is not allowed in the realm's current state (e.g.
    /// `ATTESTATION_TOKEN_CONTINUE` without `INIT` on this vCPU).
    pub const ERROR_STATE: u64 = 2;
    /// The operation is not complete: call again.
    pub const INCOMPLETE: u64 = 3;
    /// Any other failure (e.g. no attestation key on this machine).
    pub const ERROR_UNKNOWN: u64 = 4;
}

/// Realm IPA states (RIPAS).
pub mod ripas {
    /// No protected memory: the unprotected alias (`IPA | shared bit`) is
    /// where the page is, shared with the host.
    pub const EMPTY: u64 = 0;
    /// Protected RAM, the guest's only.
    pub const RAM: u64 = 1;
    /// Destroyed (never, without RME hardware).
    pub const DESTROYED: u64 = 2;
    /// A protected device (never offered).
    pub const DEV: u64 = 3;
}

/// `RSI_IPA_STATE_SET` flags (`x4`).
pub mod change_flags {
    /// Refuse to change a DESTROYED granule.
    pub const NO_CHANGE_DESTROYED: u64 = 0;
    /// A DESTROYED granule may change.
    pub const CHANGE_DESTROYED: u64 = 1;
    /// Every defined bit.
    pub const KNOWN: u64 = CHANGE_DESTROYED;
}

/// `RSI_IPA_STATE_SET` response (`x2`): what the host said.
pub mod response {
    /// The change was made (for `[x1_in, x1_out)`).
    pub const ACCEPT: u64 = 0;
    /// The host (or the hypervisor on its behalf) refused the change; the
    /// guest's `x1` does not move.
    pub const REJECT: u64 = 1;
}

/// The `RSI_REALM_CONFIG` structure (4096 bytes, little-endian).
pub mod realm_config {
    /// Offset of the IPA width in bits (u64).
    pub const IPA_BITS: usize = 0x000;
    /// Offset of the hash algorithm (u64, [`HASH_SHA256`]).
    pub const HASH_ALGO: usize = 0x008;
    /// Offset of the 64-byte Realm Personalization Value.
    pub const RPV: usize = 0x200;
    /// Size of the structure (one granule).
    pub const SIZE: usize = 0x1000;
    /// `hash_algo` = SHA-256.
    pub const HASH_SHA256: u64 = 0;
    /// `hash_algo` = SHA-512.
    pub const HASH_SHA512: u64 = 1;
}

/// The `RsiHostCall` structure of `RSI_HOST_CALL` (RMM 1.0, little-endian).
pub mod host_call {
    /// Offset of the immediate (`imm`, 16 bits; the next 48 bits are
    /// padding the hypervisor neither reads nor writes).
    pub const IMM: usize = 0x000;
    /// Offset of `gprs[0]` (31 u64 registers, `gprs[30]` at 0xF8).
    pub const GPRS_OFFSET: usize = 0x008;
    /// How many registers.
    pub const GPRS: usize = 31;
    /// The structure's size and the alignment its address needs.
    pub const SIZE: usize = 0x100;
}

/// The granule RIPAS is tracked in.
pub const GRANULE: u64 = 4096;
/// Challenge size of `ATTESTATION_TOKEN_INIT` (`x1`..`x8`).
pub const CHALLENGE_SIZE: usize = 64;
/// How many REMs a realm has (indices 1..=4 of the measurement calls; 0 is
/// the RIM, read only).
pub const REM_COUNT: usize = 4;
/// The largest `MEASUREMENT_EXTEND` size.
pub const MAX_EXTEND_SIZE: u64 = 64;

/// The unprotected alias bit for a realm whose `REALM_CONFIG.ipa_bits` is
/// `ipa_bits`: the top IPA bit.
#[must_use]
pub const fn shared_bit(ipa_bits: u32) -> u64 {
    1 << (ipa_bits - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_rmm_specification() {
        assert_eq!(RsiCall::Version.id(), 0xC400_0190);
        assert_eq!(RsiCall::Features.id(), 0xC400_0191);
        assert_eq!(RsiCall::MeasurementRead.id(), 0xC400_0192);
        assert_eq!(RsiCall::MeasurementExtend.id(), 0xC400_0193);
        assert_eq!(RsiCall::AttestationTokenInit.id(), 0xC400_0194);
        assert_eq!(RsiCall::AttestationTokenContinue.id(), 0xC400_0195);
        assert_eq!(RsiCall::RealmConfig.id(), 0xC400_0196);
        assert_eq!(RsiCall::IpaStateSet.id(), 0xC400_0197);
        assert_eq!(RsiCall::IpaStateGet.id(), 0xC400_0198);
        assert_eq!(RsiCall::HostCall.id(), 0xC400_0199);
        for call in RsiCall::ALL {
            assert!(in_range(call.id()));
            assert_eq!(RsiCall::try_from(call.id()), Ok(call));
            // SMC64 fast call, owner Standard Secure Service.
            assert_eq!(
                crate::smccc::owner_of(call.id()),
                crate::smccc::owner::STANDARD_SECURE
            );
        }
        assert_eq!(
            RsiCall::try_from(0xC400_019A),
            Err(crate::Error::NotSupported)
        );
        assert!(!in_range(0xC400_018F) && !in_range(0xC400_01A0));
    }

    #[test]
    fn host_call_layout() {
        assert_eq!(host_call::GPRS_OFFSET + 8 * host_call::GPRS, host_call::SIZE);
        assert_eq!(host_call::IMM, 0);
    }

    #[test]
    fn realm_config_layout() {
        assert_eq!(realm_config::RPV + 64, 0x240);
        assert_eq!(realm_config::SIZE as u64, GRANULE);
        assert_eq!(shared_bit(40), 1 << 39);
    }

    #[test]
    fn guest_calls_are_outside_the_rsi_range() {
        for call in crate::guest::GuestCall::ALL {
            assert!(!in_range(call.id()), "{call:?} is in the RSI range");
        }
    }
}
