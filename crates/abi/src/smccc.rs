//! SMC Calling Convention (Arm DEN0028) function-ID encoding.
//!
//! A function ID is a 32-bit value in `w0`:
//!
//! | bits  | meaning                                         |
//! |-------|-------------------------------------------------|
//! | 31    | 1 = fast call (all of Rampart's calls are fast) |
//! | 30    | 1 = SMC64/HVC64 calling convention              |
//! | 29:24 | owning entity number                            |
//! | 23:16 | must be zero for fast calls                     |
//! | 15:0  | function number                                 |

/// Bit 31: fast call.
pub const FAST_CALL: u32 = 1 << 31;
/// Bit 30: the 64-bit calling convention.
pub const CONVENTION_64: u32 = 1 << 30;
/// Shift of the owning-entity field.
pub const OWNER_SHIFT: u32 = 24;
/// Mask of the owning-entity field after shifting.
pub const OWNER_MASK: u32 = 0x3f;

/// Owning entity numbers used by Rampart.
pub mod owner {
    /// Arm architecture calls (SMCCC_VERSION, ARCH_FEATURES, workarounds).
    pub const ARCH: u32 = 0;
    /// Standard secure services (PSCI, TRNG).
    pub const STANDARD_SECURE: u32 = 4;
    /// Standard hypervisor services.
    pub const STANDARD_HYPERVISOR: u32 = 5;
    /// Vendor-specific hypervisor services: Rampart's own calls.
    pub const VENDOR_HYPERVISOR: u32 = 6;
}

/// SMCCC return value: the function is not implemented.
pub const NOT_SUPPORTED: i64 = -1;
/// SMCCC return value: the call is not required on this platform.
pub const NOT_REQUIRED: i64 = -2;
/// SMCCC return value: a parameter is invalid.
pub const INVALID_PARAMETER: i64 = -3;

/// `SMCCC_VERSION` (Arm architecture call 0).
pub const SMCCC_VERSION: u32 = 0x8000_0000;
/// `SMCCC_ARCH_FEATURES` (Arm architecture call 1).
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
/// `SMCCC_ARCH_SOC_ID`.
pub const SMCCC_ARCH_SOC_ID: u32 = 0x8000_0002;
/// `SMCCC_ARCH_WORKAROUND_1` (Spectre v2 mitigation).
pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;
/// `SMCCC_ARCH_WORKAROUND_2` (Spectre v4 mitigation).
pub const SMCCC_ARCH_WORKAROUND_2: u32 = 0x8000_7FFF;
/// `SMCCC_ARCH_WORKAROUND_3` (Spectre-BHB mitigation).
pub const SMCCC_ARCH_WORKAROUND_3: u32 = 0x8000_3FFF;

/// SMCCC version 1.1, as returned by `SMCCC_VERSION` (major << 16 | minor).
pub const SMCCC_VERSION_1_1: u32 = 0x0001_0001;

/// Builds a fast-call function ID.
#[must_use]
pub const fn fast_call_id(convention_64: bool, owner: u32, function: u16) -> u32 {
    let convention = if convention_64 { CONVENTION_64 } else { 0 };
    FAST_CALL | convention | ((owner & OWNER_MASK) << OWNER_SHIFT) | function as u32
}

/// The owning entity of a function ID.
#[must_use]
pub const fn owner_of(function_id: u32) -> u32 {
    (function_id >> OWNER_SHIFT) & OWNER_MASK
}

/// Whether the ID names a fast call.
#[must_use]
pub const fn is_fast_call(function_id: u32) -> bool {
    function_id & FAST_CALL != 0
}

/// Whether the ID uses the 64-bit convention.
#[must_use]
pub const fn is_64bit(function_id: u32) -> bool {
    function_id & CONVENTION_64 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_arm_architecture_ids() {
        assert_eq!(fast_call_id(false, owner::ARCH, 0), SMCCC_VERSION);
        assert_eq!(fast_call_id(false, owner::ARCH, 1), SMCCC_ARCH_FEATURES);
        assert_eq!(
            fast_call_id(true, owner::VENDOR_HYPERVISOR, 0x8000),
            0xC600_8000
        );
    }

    #[test]
    fn decodes_fields() {
        let id = 0xC600_8001;
        assert!(is_fast_call(id));
        assert!(is_64bit(id));
        assert_eq!(owner_of(id), owner::VENDOR_HYPERVISOR);
        assert_eq!(owner_of(0x8400_0000), owner::STANDARD_SECURE);
        assert!(!is_64bit(0x8400_0000));
    }
}
