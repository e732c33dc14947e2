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
        AFFINITY_INFO_32, AFFINITY_INFO_64, CPU_OFF, CPU_ON_32, CPU_ON_64, CPU_SUSPEND_32, CPU_SUSPEND_64, FEATURES,
        MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET, VERSION,
    };

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
}

/// What firmware offers, probed once at boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Firmware {
    /// Firmware implements SMCCC 1.1 or later (`SMCCC_VERSION` answered).
    pub smccc_1_1: bool,
}

/// Decides what to do with the host SMC whose function ID is `function_id`.
#[must_use]
pub fn classify(function_id: u32, firmware: Firmware) -> SmcAction {
    use psci::*;
    match function_id {
        VERSION | AFFINITY_INFO_32 | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE | SYSTEM_OFF
        | SYSTEM_RESET => SmcAction::Forward,
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

    const QEMU: Firmware = Firmware { smccc_1_1: false };
    const TF_A: Firmware = Firmware { smccc_1_1: true };

    #[test]
    fn psci_calls_are_relayed_or_forwarded() {
        assert_eq!(classify(psci::CPU_ON_64, QEMU), SmcAction::CpuOn);
        assert_eq!(classify(psci::CPU_ON_32, QEMU), SmcAction::CpuOn);
        assert_eq!(classify(psci::CPU_OFF, QEMU), SmcAction::CpuOff);
        assert_eq!(classify(psci::CPU_SUSPEND_64, QEMU), SmcAction::CpuSuspend);
        for id in [
            psci::VERSION,
            psci::SYSTEM_OFF,
            psci::SYSTEM_RESET,
            psci::AFFINITY_INFO_64,
        ] {
            assert_eq!(classify(id, QEMU), SmcAction::Forward);
        }
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
