//! What Rampart does with each SMC the host makes.
//!
//! The host's SMCs trap to EL2 (`HCR_EL2.TSC`). PSCI calls that change CPU
//! power state are relayed so that every CPU passes through EL2 before it
//! runs host code; a documented allow-list is forwarded to firmware
//! unchanged; everything else is answered `NOT_SUPPORTED` without reaching
//! firmware.

use rampart_abi::smccc;

/// PSCI function IDs and return codes (Arm DEN0022), as the hypervisor
/// relays them for the host: the IDs are `rampart_abi::guest::psci`'s, the
/// codes widened to the 64-bit `x0` they travel in.
pub mod psci {
    use rampart_abi::guest::psci as abi;

    pub use abi::{
        AFFINITY_INFO_32, AFFINITY_INFO_64, CPU_OFF, CPU_ON_32, CPU_ON_64, CPU_SUSPEND_32,
        CPU_SUSPEND_64, FEATURES, MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET, VERSION,
    };

    /// `SYSTEM_SUSPEND`, SMC32 (PSCI 1.0): refused, see `docs/design.md`.
    pub const SYSTEM_SUSPEND_32: u32 = 0x8400_000E;
    /// `SYSTEM_SUSPEND`, SMC64.
    pub const SYSTEM_SUSPEND_64: u32 = 0xC400_000E;
    /// `SYSTEM_RESET2`, SMC32 (PSCI 1.1).
    pub const SYSTEM_RESET2_32: u32 = 0x8400_0012;
    /// `SYSTEM_RESET2`, SMC64.
    pub const SYSTEM_RESET2_64: u32 = 0xC400_0012;
    /// `MEM_PROTECT` (PSCI 1.1): Rampart's own, never the host's.
    pub const MEM_PROTECT: u32 = 0x8400_0013;
    /// `MEM_PROTECT_CHECK_RANGE`, SMC32.
    pub const MEM_PROTECT_CHECK_RANGE_32: u32 = 0x8400_0014;
    /// `MEM_PROTECT_CHECK_RANGE`, SMC64.
    pub const MEM_PROTECT_CHECK_RANGE_64: u32 = 0xC400_0014;
    /// `SYSTEM_RESET2` reset type: the one architectural type, a warm reset.
    pub const RESET2_SYSTEM_WARM_RESET: u32 = 0;
    /// `SYSTEM_RESET2` reset type bit 31: a vendor-specific reset.
    pub const RESET2_VENDOR: u32 = 1 << 31;

    /// PSCI return code: success.
    pub const SUCCESS: i64 = abi::SUCCESS as i64;
    /// PSCI return code: not supported.
    pub const NOT_SUPPORTED: i64 = abi::NOT_SUPPORTED as i64;
    /// PSCI return code: invalid parameters.
    pub const INVALID_PARAMETERS: i64 = abi::INVALID_PARAMETERS as i64;
    /// PSCI return code: denied.
    pub const DENIED: i64 = abi::DENIED as i64;
    /// PSCI return code: the CPU is already on.
    pub const ALREADY_ON: i64 = abi::ALREADY_ON as i64;
    /// PSCI return code: a CPU_ON for this CPU is pending.
    pub const ON_PENDING: i64 = abi::ON_PENDING as i64;
    /// PSCI return code: internal failure.
    pub const INTERNAL_FAILURE: i64 = abi::INTERNAL_FAILURE as i64;
    /// PSCI return code: the entry point is not valid memory.
    pub const INVALID_ADDRESS: i64 = abi::INVALID_ADDRESS as i64;

    /// CPU_SUSPEND power_state bit 16 (original format): a power-down state.
    pub const POWER_STATE_TYPE_POWERDOWN: u64 = 1 << 16;
}

/// SMCCC TRNG function IDs (Arm DEN0098), forwarded when firmware has them.
pub mod trng {
    pub use rampart_abi::guest::trng::{FEATURES, GET_UUID, VERSION};
    /// TRNG_RNG, 32-bit
    pub const RNG_32: u32 = rampart_abi::guest::trng::RND32;
    /// TRNG_RNG, 64-bit
    pub const RNG_64: u32 = rampart_abi::guest::trng::RND64;
}

/// What the hypervisor does with one host SMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmcAction {
    /// Answer at once with this value in `x0`.
    Answer(i64),
    /// Pass the call to firmware unchanged and return its result.
    Forward,
    /// CPU_ON: start the target through the hypervisor's entry.
    CpuOn,
    /// CPU_OFF: record the CPU as off, then forward.
    CpuOff,
    /// CPU_SUSPEND: a power-down state resumes through the hypervisor.
    CpuSuspend,
    /// PSCI_FEATURES: answer for the function ID in `x1`.
    PsciFeatures,
    /// SMCCC_ARCH_FEATURES: answer for the function ID in `x1`.
    ArchFeatures,
    /// SYSTEM_OFF, SYSTEM_RESET or SYSTEM_RESET2: every page the host does
    /// not own and every hypervisor secret is wiped first, then the call
    /// is forwarded; it does not return to the host.
    SystemReset,
}

/// What firmware offers, probed once at boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Firmware {
    /// Firmware implements SMCCC 1.1 or later (`SMCCC_VERSION` answered).
    pub smccc_1_1: bool,
    /// Firmware implements PSCI `SYSTEM_RESET2` (`PSCI_FEATURES`).
    pub system_reset2: bool,
    /// Firmware implements PSCI `MEM_PROTECT`, and Rampart enabled it at
    /// boot: firmware overwrites memory at the next boot after a reset that
    /// did not go through Rampart (a watchdog, a reset button).
    pub mem_protect: bool,
}

/// Decides what to do with the host SMC whose function ID is `function_id`.
#[must_use]
pub fn classify(function_id: u32, firmware: Firmware) -> SmcAction {
    use psci::*;
    match function_id {
        VERSION | AFFINITY_INFO_32 | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE => SmcAction::Forward,
        SYSTEM_OFF | SYSTEM_RESET => SmcAction::SystemReset,
        SYSTEM_RESET2_32 | SYSTEM_RESET2_64 if firmware.system_reset2 => SmcAction::SystemReset,
        CPU_ON_32 | CPU_ON_64 => SmcAction::CpuOn,
        CPU_OFF => SmcAction::CpuOff,
        CPU_SUSPEND_32 | CPU_SUSPEND_64 => SmcAction::CpuSuspend,
        FEATURES => SmcAction::PsciFeatures,
        smccc::SMCCC_VERSION => SmcAction::Answer(i64::from(smccc::SMCCC_VERSION_1_1)),
        smccc::SMCCC_ARCH_FEATURES => SmcAction::ArchFeatures,
        id if firmware.smccc_1_1 && forwarded_with_smccc_1_1(id) => SmcAction::Forward,
        _ => SmcAction::Answer(smccc::NOT_SUPPORTED),
    }
}

/// Whether a `SYSTEM_RESET2` reset type may be forwarded: the one
/// architectural type (a warm reset) or any vendor-specific type. Other
/// architectural types are undefined and answered `INVALID_PARAMETERS`
/// before anything is wiped.
#[must_use]
pub fn reset2_type_allowed(reset_type: u32) -> bool {
    reset_type == psci::RESET2_SYSTEM_WARM_RESET || reset_type & psci::RESET2_VENDOR != 0
}

/// The allow-list of non-PSCI calls forwarded to SMCCC 1.1 firmware.
fn forwarded_with_smccc_1_1(function_id: u32) -> bool {
    matches!(
        function_id,
        smccc::SMCCC_ARCH_SOC_ID
            | smccc::SMCCC_ARCH_WORKAROUND_1
            | smccc::SMCCC_ARCH_WORKAROUND_2
            | smccc::SMCCC_ARCH_WORKAROUND_3
            | trng::VERSION
            | trng::FEATURES
            | trng::GET_UUID
            | trng::RNG_32
            | trng::RNG_64
    )
}

/// Whether `PSCI_FEATURES(function_id)` should be asked of firmware (the
/// call is one the host may make); otherwise the answer is NOT_SUPPORTED,
/// except for SMCCC_VERSION, which Rampart itself implements.
#[must_use]
pub fn psci_features(function_id: u32, firmware: Firmware) -> Option<i64> {
    match classify(function_id, firmware) {
        _ if function_id == smccc::SMCCC_VERSION => Some(psci::SUCCESS),
        SmcAction::Answer(_) | SmcAction::ArchFeatures => Some(psci::NOT_SUPPORTED),
        _ if function_id >> 24 & 0x3f != smccc::owner::STANDARD_SECURE => Some(psci::NOT_SUPPORTED),
        _ => None,
    }
}

/// The answer to `SMCCC_ARCH_FEATURES(function_id)`, or `None` to ask
/// firmware.
#[must_use]
pub fn arch_features(function_id: u32, firmware: Firmware) -> Option<i64> {
    match function_id {
        smccc::SMCCC_VERSION | smccc::SMCCC_ARCH_FEATURES => Some(psci::SUCCESS),
        id if firmware.smccc_1_1 && forwarded_with_smccc_1_1(id) => None,
        _ => Some(smccc::NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: Firmware = Firmware {
        smccc_1_1: false,
        system_reset2: false,
        mem_protect: false,
    };
    const TF_A: Firmware = Firmware {
        smccc_1_1: true,
        system_reset2: false,
        mem_protect: false,
    };
    const TF_A_RESET2: Firmware = Firmware {
        smccc_1_1: true,
        system_reset2: true,
        mem_protect: true,
    };

    #[test]
    fn psci_calls_are_relayed_or_forwarded() {
        assert_eq!(classify(psci::CPU_ON_64, QEMU), SmcAction::CpuOn);
        assert_eq!(classify(psci::CPU_ON_32, QEMU), SmcAction::CpuOn);
        assert_eq!(classify(psci::CPU_OFF, QEMU), SmcAction::CpuOff);
        assert_eq!(classify(psci::CPU_SUSPEND_64, QEMU), SmcAction::CpuSuspend);
        for id in [psci::VERSION, psci::AFFINITY_INFO_64] {
            assert_eq!(classify(id, QEMU), SmcAction::Forward);
        }
    }

    #[test]
    fn every_system_reset_and_power_off_wipes_first() {
        for firmware in [QEMU, TF_A, TF_A_RESET2] {
            assert_eq!(classify(psci::SYSTEM_OFF, firmware), SmcAction::SystemReset);
            assert_eq!(
                classify(psci::SYSTEM_RESET, firmware),
                SmcAction::SystemReset
            );
        }
        for id in [psci::SYSTEM_RESET2_32, psci::SYSTEM_RESET2_64] {
            assert_eq!(classify(id, TF_A_RESET2), SmcAction::SystemReset);
            // Not offered by firmware: refused, nothing wiped.
            assert_eq!(classify(id, TF_A), SmcAction::Answer(-1));
            assert_eq!(classify(id, QEMU), SmcAction::Answer(-1));
        }
        assert!(reset2_type_allowed(0));
        assert!(reset2_type_allowed(0x8000_0000));
        assert!(reset2_type_allowed(0x8000_1234));
        assert!(!reset2_type_allowed(1));
        assert!(!reset2_type_allowed(0x7fff_ffff));
    }

    #[test]
    fn the_host_cannot_touch_memory_protection_or_suspend_the_system() {
        for id in [
            psci::MEM_PROTECT,
            psci::MEM_PROTECT_CHECK_RANGE_32,
            psci::MEM_PROTECT_CHECK_RANGE_64,
            psci::SYSTEM_SUSPEND_32,
            psci::SYSTEM_SUSPEND_64,
        ] {
            assert_eq!(classify(id, TF_A_RESET2), SmcAction::Answer(-1), "{id:#x}");
            assert_eq!(
                psci_features(id, TF_A_RESET2),
                Some(psci::NOT_SUPPORTED),
                "{id:#x}"
            );
        }
        assert_eq!(psci_features(psci::SYSTEM_RESET2_64, TF_A_RESET2), None);
        assert_eq!(
            psci_features(psci::SYSTEM_RESET2_64, QEMU),
            Some(psci::NOT_SUPPORTED)
        );
    }

    #[test]
    fn everything_else_is_refused_unless_allowed() {
        for id in [
            0xC200_0001,
            0x8600_1234,
            0xC600_8000,
            0x8400_0012,
            0xBF00_0000,
            0,
        ] {
            assert_eq!(classify(id, TF_A), SmcAction::Answer(-1), "{id:#x}");
        }
        assert_eq!(
            classify(smccc::SMCCC_ARCH_WORKAROUND_1, QEMU),
            SmcAction::Answer(-1)
        );
        assert_eq!(
            classify(smccc::SMCCC_ARCH_WORKAROUND_1, TF_A),
            SmcAction::Forward
        );
        assert_eq!(classify(trng::RNG_64, TF_A), SmcAction::Forward);
        assert_eq!(
            classify(smccc::SMCCC_VERSION, QEMU),
            SmcAction::Answer(0x1_0001)
        );
    }

    #[test]
    fn feature_queries() {
        assert_eq!(psci_features(smccc::SMCCC_VERSION, QEMU), Some(0));
        assert_eq!(psci_features(psci::CPU_ON_64, QEMU), None);
        assert_eq!(psci_features(0xC200_0001, QEMU), Some(-1));
        assert_eq!(
            psci_features(smccc::SMCCC_ARCH_WORKAROUND_1, TF_A),
            Some(-1)
        );
        assert_eq!(
            arch_features(smccc::SMCCC_ARCH_WORKAROUND_1, QEMU),
            Some(-1)
        );
        assert_eq!(arch_features(smccc::SMCCC_ARCH_WORKAROUND_1, TF_A), None);
        assert_eq!(arch_features(smccc::SMCCC_ARCH_FEATURES, QEMU), Some(0));
    }
}
