//! Guest → hypervisor calls, and the machine a guest may assume.
//!
//! A guest calls Rampart with `HVC #0` (the HVC conduit) and an SMCCC 1.1
//! fast-call ID in `w0`; arguments in `x1`..`x6`, results in `x0`..`x3`,
//! `x4`..`x17` and every SIMD/FP register preserved. `HVC` with another
//! immediate returns `NOT_SUPPORTED`. A guest `SMC` is never forwarded to
//! firmware: it returns `NOT_SUPPORTED` (`x0 = -1`, the PC stepped over it).
//!
//! The interface is the one KVM and Android's pKVM give their guests, so a
//! guest written for pKVM (Android's pvmfw and Microdroid, Linux with
//! `CONFIG_ARM_PKVM_GUEST`) runs unchanged:
//!
//! - **SMCCC** `SMCCC_VERSION` (1.1) and `SMCCC_ARCH_FEATURES`.
//! - **PSCI 1.1** (Arm DEN0022): the calls listed in [`GuestCall`].
//! - **TRNG 1.0** (Arm DEN0098): entropy from the hypervisor.
//! - **KVM vendor-hypervisor calls** (owning entity 6, function numbers
//!   0..=0x3f), identified by the KVM UID: `VENDOR_HYP_CALL_UID` returns
//!   [`KVM_UID`], so guests that look for KVM before using pKVM calls find it.
//!   Numbers from Linux `include/linux/arm-smccc.h` and
//!   `Documentation/virt/kvm/arm/hypercalls.rst`.
//!
//! ## Which MMIO-guard numbering
//!
//! Android's pKVM (the Android common kernel and pvmfw's `vmbase`
//! hypervisor wrappers) uses five calls: `MMIO_GUARD_INFO` (5),
//! `MMIO_GUARD_ENROLL` (6), `MMIO_GUARD_MAP` (7), `MMIO_GUARD_UNMAP` (8) and
//! `MEM_RELINQUISH` (9). Upstream Linux (6.12+,
//! `drivers/virt/coco/pkvm-guest/arm-pkvm-guest.c`) kept only
//! `MMIO_GUARD` = 7 and marks 5, 6, 8 and 9 `PKVM_RESV` so they keep
//! Android's meaning. Upstream's `MMIO_GUARD(ipa)` *is* Android's
//! `MMIO_GUARD_MAP(ipa)` with `x2` = 0, so Rampart follows **Android's
//! numbering**, which serves both. Protected VMs are enrolled from their
//! first instruction (as in pKVM), so `MMIO_GUARD_ENROLL` only confirms it.
//! The range variants (`MMIO_RGUARD_MAP`/`UNMAP`, 10 and 11) and KVM's PTP
//! call (1) are not offered.
//!
//! ## Errors
//!
//! Like pKVM, every refused memory or MMIO-guard call returns
//! `INVALID_PARAMETER` (-3): unaligned, outside the VM's memory, in the
//! wrong state (not shared, already shared, not the guest's). Unknown IDs,
//! Rampart's host calls, and the pKVM memory calls made by a VM that is
//! not protected return `NOT_SUPPORTED` (-1). PSCI and TRNG calls return
//! their own specifications' codes ([`psci`], [`trng`]).
//!
//! Rampart's own guest calls (attestation, sealing) will take function
//! numbers from [`RAMPART_GUEST_FUNCTION_BASE`]; none is defined yet.

use crate::smccc::{fast_call_id, owner};

/// `VENDOR_HYP_CALL_UID` (`0x8600FF01`): the UID of the vendor-hypervisor
/// service range. Function number 0xFF01 of every SMCCC range.
pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;

/// The KVM vendor-hypervisor UID `28b46fb6-2ec5-11e9-a9ca-4b564d003a74`
/// as `VENDOR_HYP_CALL_UID` returns it in `w0`..`w3`
/// (`ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_0`..`3`).
pub const KVM_UID: [u32; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// KVM vendor-hypervisor function numbers (`ARM_SMCCC_KVM_FUNC_*`).
pub mod kvm_function {
    /// `ARM_SMCCC_KVM_FUNC_FEATURES`.
    pub const FEATURES: u16 = 0;
    /// `ARM_SMCCC_KVM_FUNC_PTP` (not offered by Rampart).
    pub const PTP: u16 = 1;
    /// `ARM_SMCCC_KVM_FUNC_HYP_MEMINFO`.
    pub const HYP_MEMINFO: u16 = 2;
    /// `ARM_SMCCC_KVM_FUNC_MEM_SHARE`.
    pub const MEM_SHARE: u16 = 3;
    /// `ARM_SMCCC_KVM_FUNC_MEM_UNSHARE`.
    pub const MEM_UNSHARE: u16 = 4;
    /// `ARM_SMCCC_KVM_FUNC_MMIO_GUARD_INFO` (Android; upstream `PKVM_RESV_5`).
    pub const MMIO_GUARD_INFO: u16 = 5;
    /// `ARM_SMCCC_KVM_FUNC_MMIO_GUARD_ENROLL` (Android; upstream `PKVM_RESV_6`).
    pub const MMIO_GUARD_ENROLL: u16 = 6;
    /// `ARM_SMCCC_KVM_FUNC_MMIO_GUARD_MAP` (Android) = upstream
    /// `ARM_SMCCC_KVM_FUNC_MMIO_GUARD`.
    pub const MMIO_GUARD_MAP: u16 = 7;
    /// `ARM_SMCCC_KVM_FUNC_MMIO_GUARD_UNMAP` (Android; upstream `PKVM_RESV_8`).
    pub const MMIO_GUARD_UNMAP: u16 = 8;
    /// `ARM_SMCCC_KVM_FUNC_MEM_RELINQUISH` (Android; upstream `PKVM_RESV_9`).
    pub const MEM_RELINQUISH: u16 = 9;
}

/// The `KVM_FEATURES` bitmap (`w0`, function numbers 0..31) Rampart returns
/// to a protected VM: FEATURES and HYP_MEMINFO through MEM_RELINQUISH
/// (bits 0 and 2..=9). `w1`..`w3` are zero. A VM that is not protected gets
/// only bit 0.
pub const KVM_FEATURES_PROTECTED: u32 = (1 << kvm_function::FEATURES)
    | (1 << kvm_function::HYP_MEMINFO)
    | (1 << kvm_function::MEM_SHARE)
    | (1 << kvm_function::MEM_UNSHARE)
    | (1 << kvm_function::MMIO_GUARD_INFO)
    | (1 << kvm_function::MMIO_GUARD_ENROLL)
    | (1 << kvm_function::MMIO_GUARD_MAP)
    | (1 << kvm_function::MMIO_GUARD_UNMAP)
    | (1 << kvm_function::MEM_RELINQUISH);

/// `HYP_MEMINFO` `x1` bit 0 (`KVM_FUNC_HAS_RANGE`): MEM_SHARE/UNSHARE take
/// a granule count in `x2`. Rampart does not set it (`x1` = 0).
pub const KVM_FUNC_HAS_RANGE: u64 = 1;

/// The memory protection granule `HYP_MEMINFO` returns, in bytes: every
/// share, unshare, relinquish and MMIO-guard call acts on one such page.
pub const GRANULE: u64 = 4096;

/// First function number of Rampart's own guest calls (attestation,
/// sealing keys). The KVM/pKVM range is 0..=0x3f and the
/// host calls start at 0x8000.
pub const RAMPART_GUEST_FUNCTION_BASE: u16 = 0x4000;
/// The 64-bit fast-call ID of Rampart's first guest call (`0xC600_4000`).
pub const RAMPART_GUEST_CALL_BASE: u32 =
    fast_call_id(true, owner::VENDOR_HYPERVISOR, RAMPART_GUEST_FUNCTION_BASE);

/// A guest call, decoded from its function ID (`w0`).
///
/// Each variant's doc gives the arguments and results; "reserved" arguments
/// must be zero (else `INVALID_PARAMETER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum GuestCall {
    /// `SMCCC_VERSION`: returns `w0` = `0x10001` (SMCCC 1.1).
    SmcccVersion = crate::smccc::SMCCC_VERSION,
    /// `SMCCC_ARCH_FEATURES`: `w1` = a function ID. Returns `w0` = 0 if the
    /// guest may call it, `NOT_SUPPORTED` otherwise. The Spectre workaround
    /// calls are `NOT_SUPPORTED` (the hypervisor needs none from the guest).
    SmcccArchFeatures = crate::smccc::SMCCC_ARCH_FEATURES,

    /// `PSCI_VERSION`: returns `w0` = `0x10001` (PSCI 1.1).
    PsciVersion = psci::VERSION,
    /// `CPU_SUSPEND` (SMC32): `w1` = power state, `w2` = entry, `w3` =
    /// context. Every state is treated as standby: the vCPU waits as for
    /// `WFI` and the call returns `SUCCESS`.
    CpuSuspend32 = psci::CPU_SUSPEND_32,
    /// `CPU_SUSPEND` (SMC64): as the SMC32 form with 64-bit arguments.
    CpuSuspend64 = psci::CPU_SUSPEND_64,
    /// `CPU_OFF`: powers the calling vCPU off; does not return on success
    /// (the VMM sees `EXIT_POWERED_OFF`). Another vCPU may start it again
    /// with `CPU_ON`.
    CpuOff = psci::CPU_OFF,
    /// `CPU_ON` (SMC32): `w1` = target MPIDR ([`vcpu_mpidr`]), `w2` = entry
    /// (guest-physical, 4-byte aligned, inside the VM's memory), `w3` =
    /// context, passed to the new vCPU in `x0`. It starts in EL1h, MMU off,
    /// D, A, I, F masked. Returns `SUCCESS`, `INVALID_PARAMETERS` (no such
    /// vCPU), `INVALID_ADDRESS`, `ALREADY_ON` or `ON_PENDING`.
    CpuOn32 = psci::CPU_ON_32,
    /// `CPU_ON` (SMC64): as the SMC32 form with 64-bit arguments.
    CpuOn64 = psci::CPU_ON_64,
    /// `AFFINITY_INFO` (SMC32): `w1` = target MPIDR, `w2` = lowest affinity
    /// level (only 0). Returns [`psci::AFFINITY_ON`], [`psci::AFFINITY_OFF`],
    /// [`psci::AFFINITY_ON_PENDING`], or `INVALID_PARAMETERS` for an MPIDR
    /// that names no vCPU of this VM.
    AffinityInfo32 = psci::AFFINITY_INFO_32,
    /// `AFFINITY_INFO` (SMC64): as the SMC32 form.
    AffinityInfo64 = psci::AFFINITY_INFO_64,
    /// `MIGRATE_INFO_TYPE`: returns 2 (no Trusted OS to migrate).
    MigrateInfoType = psci::MIGRATE_INFO_TYPE,
    /// `SYSTEM_OFF`: does not return; the VMM sees `EXIT_SYSTEM_OFF`.
    SystemOff = psci::SYSTEM_OFF,
    /// `SYSTEM_RESET`: does not return; the VMM sees `EXIT_SYSTEM_RESET`.
    SystemReset = psci::SYSTEM_RESET,
    /// `PSCI_FEATURES`: `w1` = a PSCI function ID. Returns 0 if implemented
    /// (for `CPU_SUSPEND`: 0 = original power-state format, no OS-initiated
    /// mode), `NOT_SUPPORTED` otherwise.
    PsciFeatures = psci::FEATURES,

    /// `TRNG_VERSION`: returns `w0` = `0x10000` (TRNG 1.0).
    TrngVersion = trng::VERSION,
    /// `TRNG_FEATURES`: `w1` = a TRNG function ID. Returns 0 if
    /// implemented, `NOT_SUPPORTED` otherwise.
    TrngFeatures = trng::FEATURES,
    /// `TRNG_GET_UUID`: returns the TRNG back end's UUID in `w0`..`w3`.
    TrngGetUuid = trng::GET_UUID,
    /// `TRNG_RND` (SMC32): `w1` = bits wanted (1..=96). Returns `w0` = 0 and
    /// the entropy right-aligned in `w1`..`w3` (`w3` least significant), or
    /// `INVALID_PARAMETERS`, or `NO_ENTROPY`.
    TrngRnd32 = trng::RND32,
    /// `TRNG_RND` (SMC64): `x1` = bits wanted (1..=192). Returns `x0` = 0
    /// and the entropy in `x1`..`x3` (`x3` least significant).
    TrngRnd64 = trng::RND64,

    /// `VENDOR_HYP_CALL_UID`: returns [`KVM_UID`] in `w0`..`w3`.
    VendorHypCallUid = VENDOR_HYP_CALL_UID,
    /// `ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID` (HVC32): returns the
    /// bitmap of available KVM function numbers 0..31 in `w0`
    /// ([`KVM_FEATURES_PROTECTED`]) and 32..127 in `w1`..`w3` (zero).
    /// Handled at EL2 without an exit.
    KvmFeatures = fast_call_id(false, owner::VENDOR_HYPERVISOR, kvm_function::FEATURES),
    /// `HYP_MEMINFO`: `x1`..`x3` reserved. Returns `x0` = the protection
    /// granule in bytes ([`GRANULE`]), `x1` = 0 (no `KVM_FUNC_HAS_RANGE`).
    HypMeminfo = fast_call_id(true, owner::VENDOR_HYPERVISOR, kvm_function::HYP_MEMINFO),
    /// `MEM_SHARE`: `x1` = guest-physical address of one granule the guest
    /// owns, `x2` = 0 or 1 (one granule; legacy guests pass 0), `x3`
    /// reserved. The host may then read and write it; the guest keeps it
    /// mapped. Returns `SUCCESS` or `INVALID_PARAMETER` (unaligned, not the
    /// guest's memory, already shared).
    MemShare = fast_call_id(true, owner::VENDOR_HYPERVISOR, kvm_function::MEM_SHARE),
    /// `MEM_UNSHARE`: arguments as `MEM_SHARE`. Ends the host's access to a
    /// granule the guest shared; the host's mapping is removed before the
    /// call returns. `INVALID_PARAMETER` if it is not shared.
    MemUnshare = fast_call_id(true, owner::VENDOR_HYPERVISOR, kvm_function::MEM_UNSHARE),
    /// `MMIO_GUARD_INFO`: `x1`..`x3` reserved. Returns `x0` = the MMIO-guard
    /// granule in bytes ([`GRANULE`]).
    MmioGuardInfo = fast_call_id(
        true,
        owner::VENDOR_HYPERVISOR,
        kvm_function::MMIO_GUARD_INFO,
    ),
    /// `MMIO_GUARD_ENROLL`: no arguments. Returns `SUCCESS`; a protected VM
    /// is always enrolled: only accesses inside granules it mapped with
    /// `MMIO_GUARD_MAP` exit to the host as MMIO.
    MmioGuardEnroll = fast_call_id(
        true,
        owner::VENDOR_HYPERVISOR,
        kvm_function::MMIO_GUARD_ENROLL,
    ),
    /// `MMIO_GUARD_MAP` (upstream `MMIO_GUARD`): `x1` = guest-physical
    /// address of a granule outside the VM's memory, `x2` = 0 (Android: a
    /// `MAIR_EL1` index, ignored), `x3` reserved. Accesses to it then exit
    /// to the host as `EXIT_MMIO`. `INVALID_PARAMETER` if unaligned or if
    /// it is the VM's memory. Mapping a mapped granule succeeds.
    MmioGuardMap = fast_call_id(true, owner::VENDOR_HYPERVISOR, kvm_function::MMIO_GUARD_MAP),
    /// `MMIO_GUARD_UNMAP`: `x1` = a granule mapped with `MMIO_GUARD_MAP`,
    /// `x2`, `x3` reserved. `INVALID_PARAMETER` if it was not mapped.
    MmioGuardUnmap = fast_call_id(
        true,
        owner::VENDOR_HYPERVISOR,
        kvm_function::MMIO_GUARD_UNMAP,
    ),
    /// `MEM_RELINQUISH`: `x1` = guest-physical address of one granule of
    /// the VM's memory, `x2`, `x3` reserved. The granule is zeroed and
    /// leaves the VM (a later access is a memory fault, as if never
    /// donated). `INVALID_PARAMETER` if unaligned, not the VM's, or shared.
    MemRelinquish = fast_call_id(true, owner::VENDOR_HYPERVISOR, kvm_function::MEM_RELINQUISH),
    /// `RAMPART_ATTEST` (`0xC6004000`): `x1` = guest-physical address of a
    /// granule the guest owns (the report is written there), `x2` = nonce
    /// length (0..=64), `x3`..`x10` = the nonce (little-endian words).
    /// Returns `x1` = the report's length: a COSE_Sign1 signed with the
    /// hypervisor's attestation key (`docs/formats.md`).
    RampartAttest = RAMPART_GUEST_CALL_BASE,
    /// `RAMPART_SEALING_KEY` (`0xC6004001`): `x1` = label length (0..=32),
    /// `x2`..`x5` = the label. Returns `x1`..`x4` = a 32-byte key derived
    /// from the device secret, the VM's measurement and the label.
    RampartSealingKey = RAMPART_GUEST_CALL_BASE + 1,
}

impl GuestCall {
    /// Every guest call, in the order above.
    pub const ALL: [GuestCall; 31] = [
        GuestCall::SmcccVersion,
        GuestCall::SmcccArchFeatures,
        GuestCall::PsciVersion,
        GuestCall::CpuSuspend32,
        GuestCall::CpuSuspend64,
        GuestCall::CpuOff,
        GuestCall::CpuOn32,
        GuestCall::CpuOn64,
        GuestCall::AffinityInfo32,
        GuestCall::AffinityInfo64,
        GuestCall::MigrateInfoType,
        GuestCall::SystemOff,
        GuestCall::SystemReset,
        GuestCall::PsciFeatures,
        GuestCall::TrngVersion,
        GuestCall::TrngFeatures,
        GuestCall::TrngGetUuid,
        GuestCall::TrngRnd32,
        GuestCall::TrngRnd64,
        GuestCall::VendorHypCallUid,
        GuestCall::KvmFeatures,
        GuestCall::HypMeminfo,
        GuestCall::MemShare,
        GuestCall::MemUnshare,
        GuestCall::MmioGuardInfo,
        GuestCall::MmioGuardEnroll,
        GuestCall::MmioGuardMap,
        GuestCall::MmioGuardUnmap,
        GuestCall::MemRelinquish,
        GuestCall::RampartAttest,
        GuestCall::RampartSealingKey,
    ];

    /// The function ID placed in `w0`.
    #[must_use]
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The name used by Linux and the Arm specifications.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            GuestCall::SmcccVersion => "SMCCC_VERSION",
            GuestCall::SmcccArchFeatures => "SMCCC_ARCH_FEATURES",
            GuestCall::PsciVersion => "PSCI_VERSION",
            GuestCall::CpuSuspend32 => "PSCI_CPU_SUSPEND_32",
            GuestCall::CpuSuspend64 => "PSCI_CPU_SUSPEND_64",
            GuestCall::CpuOff => "PSCI_CPU_OFF",
            GuestCall::CpuOn32 => "PSCI_CPU_ON_32",
            GuestCall::CpuOn64 => "PSCI_CPU_ON_64",
            GuestCall::AffinityInfo32 => "PSCI_AFFINITY_INFO_32",
            GuestCall::AffinityInfo64 => "PSCI_AFFINITY_INFO_64",
            GuestCall::MigrateInfoType => "PSCI_MIGRATE_INFO_TYPE",
            GuestCall::SystemOff => "PSCI_SYSTEM_OFF",
            GuestCall::SystemReset => "PSCI_SYSTEM_RESET",
            GuestCall::PsciFeatures => "PSCI_FEATURES",
            GuestCall::TrngVersion => "TRNG_VERSION",
            GuestCall::TrngFeatures => "TRNG_FEATURES",
            GuestCall::TrngGetUuid => "TRNG_GET_UUID",
            GuestCall::TrngRnd32 => "TRNG_RND32",
            GuestCall::TrngRnd64 => "TRNG_RND64",
            GuestCall::VendorHypCallUid => "VENDOR_HYP_CALL_UID",
            GuestCall::KvmFeatures => "KVM_FEATURES",
            GuestCall::RampartAttest => "RAMPART_ATTEST",
            GuestCall::RampartSealingKey => "RAMPART_SEALING_KEY",
            GuestCall::HypMeminfo => "KVM_HYP_MEMINFO",
            GuestCall::MemShare => "KVM_MEM_SHARE",
            GuestCall::MemUnshare => "KVM_MEM_UNSHARE",
            GuestCall::MmioGuardInfo => "KVM_MMIO_GUARD_INFO",
            GuestCall::MmioGuardEnroll => "KVM_MMIO_GUARD_ENROLL",
            GuestCall::MmioGuardMap => "KVM_MMIO_GUARD_MAP",
            GuestCall::MmioGuardUnmap => "KVM_MMIO_GUARD_UNMAP",
            GuestCall::MemRelinquish => "KVM_MEM_RELINQUISH",
        }
    }
}

impl TryFrom<u32> for GuestCall {
    type Error = crate::Error;

    /// Decodes `w0`. Unknown IDs (including Rampart's host calls) are
    /// `NotSupported`.
    fn try_from(id: u32) -> Result<Self, crate::Error> {
        crate::id_table::sorted_id_table!(SORTED, GuestCall);
        crate::id_table::find(&SORTED, id).ok_or(crate::Error::NotSupported)
    }
}

/// PSCI 1.1 function IDs and return values (Arm DEN0022).
pub mod psci {
    /// `PSCI_VERSION`.
    pub const VERSION: u32 = 0x8400_0000;
    /// `CPU_SUSPEND`, SMC32.
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    /// `CPU_SUSPEND`, SMC64.
    pub const CPU_SUSPEND_64: u32 = 0xC400_0001;
    /// `CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `CPU_ON`, SMC32.
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// `CPU_ON`, SMC64.
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// `AFFINITY_INFO`, SMC32.
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// `AFFINITY_INFO`, SMC64.
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    /// `MIGRATE_INFO_TYPE`.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// `SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `SYSTEM_RESET`.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// `PSCI_FEATURES`.
    pub const FEATURES: u32 = 0x8400_000A;

    /// `PSCI_VERSION` result: 1.1.
    pub const VERSION_1_1: u32 = 0x0001_0001;
    /// `MIGRATE_INFO_TYPE` result: no Trusted OS, or it needs no migration.
    pub const MIGRATE_TYPE_NOT_PRESENT: u32 = 2;

    /// `AFFINITY_INFO`: the node is on.
    pub const AFFINITY_ON: i32 = 0;
    /// `AFFINITY_INFO`: the node is off.
    pub const AFFINITY_OFF: i32 = 1;
    /// `AFFINITY_INFO`: the node is being powered on.
    pub const AFFINITY_ON_PENDING: i32 = 2;

    /// Success.
    pub const SUCCESS: i32 = 0;
    /// The function is not implemented.
    pub const NOT_SUPPORTED: i32 = -1;
    /// An argument is invalid (for example an MPIDR naming no vCPU).
    pub const INVALID_PARAMETERS: i32 = -2;
    /// The call is not allowed now.
    pub const DENIED: i32 = -3;
    /// CPU_ON of a vCPU that is on.
    pub const ALREADY_ON: i32 = -4;
    /// CPU_ON of a vCPU being powered on.
    pub const ON_PENDING: i32 = -5;
    /// Internal failure.
    pub const INTERNAL_FAILURE: i32 = -6;
    /// Not present.
    pub const NOT_PRESENT: i32 = -7;
    /// Disabled.
    pub const DISABLED: i32 = -8;
    /// CPU_ON with an entry point outside the VM's memory or unaligned.
    pub const INVALID_ADDRESS: i32 = -9;
}

/// SMCCC TRNG 1.0 function IDs and return values (Arm DEN0098).
pub mod trng {
    /// `TRNG_VERSION`.
    pub const VERSION: u32 = 0x8400_0050;
    /// `TRNG_FEATURES`.
    pub const FEATURES: u32 = 0x8400_0051;
    /// `TRNG_GET_UUID`.
    pub const GET_UUID: u32 = 0x8400_0052;
    /// `TRNG_RND`, SMC32 (up to 96 bits).
    pub const RND32: u32 = 0x8400_0053;
    /// `TRNG_RND`, SMC64 (up to 192 bits).
    pub const RND64: u32 = 0xC400_0053;

    /// `TRNG_VERSION` result: 1.0.
    pub const VERSION_1_0: u32 = 0x0001_0000;
    /// Most bits one `TRNG_RND` SMC32 call returns.
    pub const RND32_MAX_BITS: u32 = 96;
    /// Most bits one `TRNG_RND` SMC64 call returns.
    pub const RND64_MAX_BITS: u32 = 192;

    /// The function is not implemented.
    pub const NOT_SUPPORTED: i64 = -1;
    /// The bit count is 0 or above the maximum.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// No entropy available now; try again.
    pub const NO_ENTROPY: i64 = -3;
}

/// The PSCI target of vCPU `index`: `Aff0` = the index, other affinity
/// fields zero. The vCPU reads `MPIDR_EL1` = `0x8000_0000 | index`.
#[must_use]
pub const fn vcpu_mpidr(index: u64) -> u64 {
    index
}

/// `MPIDR_EL1` affinity fields (Aff3, Aff2, Aff1, Aff0).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// The machine a guest may assume: where its memory starts, how it is
/// entered, its console, timer and interrupt controller.
///
/// - **Memory.** Guest RAM starts at [`GUEST_RAM_BASE`] (guest-physical).
///   The VMM loads the guest's image there and starts vCPU 0 at that
///   address with `x0` = the size of guest RAM in bytes,
///   in EL1h, MMU off, D, A, I, F masked, every other register zero.
///   Secondary vCPUs are started by the guest with PSCI `CPU_ON`.
/// - **Console.** A PL011-compatible transmit register at
///   [`GUEST_UART_BASE`]: a write of `UARTDR` (offset 0) prints the low
///   byte; a read of `UARTFR` (offset 0x18) returns 0 (transmit ready). The
///   VMM emulates it: every access is an `EXIT_MMIO`. A protected VM maps
///   the page with `MMIO_GUARD_MAP` before touching it.
/// - **Timer.** The EL1 virtual timer (`CNTV_*_EL0`), interrupt
///   [`VIRTUAL_TIMER_INTID`] (PPI 27); `CNTFRQ_EL0` is the host's.
/// - **Interrupts.** Only the GICv3 CPU interface, through its system
///   registers (`ICC_*_EL1`, served by the virtual CPU interface). No
///   distributor or redistributor is emulated: the hypervisor makes
///   interrupts pending through list registers, so a guest enables delivery
///   with `ICC_PMR_EL1` and `ICC_IGRPEN1_EL1` alone, acknowledges with
///   `ICC_IAR1_EL1` and ends with `ICC_EOIR1_EL1` (EOImode 0). Interrupts
///   are Group 1.
pub mod layout {
    /// Guest-physical address where guest RAM starts and the image is
    /// loaded; also vCPU 0's entry point.
    pub const GUEST_RAM_BASE: u64 = 0x8000_0000;
    /// Base of the emulated PL011-compatible console.
    pub const GUEST_UART_BASE: u64 = 0x0900_0000;
    /// `UARTDR`: write a byte to print it.
    pub const UART_DR: u64 = 0x0;
    /// `UARTFR`: reads 0 (transmit FIFO not full, not busy).
    pub const UART_FR: u64 = 0x18;
    /// `UARTFR.TXFF`: transmit FIFO full (never set by the emulation).
    pub const UART_FR_TXFF: u32 = 1 << 5;
    /// The virtual timer's interrupt ID (PPI 27).
    pub const VIRTUAL_TIMER_INTID: u32 = 27;
}

pub use layout::{GUEST_RAM_BASE, GUEST_UART_BASE, VIRTUAL_TIMER_INTID};

/// The line protocol of Rampart's test guests (`guest/`), shared with the
/// VMMs and test hosts that run them. Every line ends with `\n`.
pub mod test_protocol {
    /// `GUEST-PASS <name>`: a check passed.
    pub const PASS: &str = "GUEST-PASS ";
    /// `GUEST-FAIL <name>: <why>`: a check failed.
    pub const FAIL: &str = "GUEST-FAIL ";
    /// `GUEST-SKIP <name>: <why>`: a check could not run (counted in
    /// neither total).
    pub const SKIP: &str = "GUEST-SKIP ";
    /// `GUEST-DONE <n> passed, <m> failed`: the last line before SYSTEM_OFF.
    pub const DONE: &str = "GUEST-DONE ";

    /// `GUEST-SHARED 0x<ipa>`: the `share` guest shared the granule at
    /// `ipa`, whose first word is [`SHARE_PING`] and bytes 4.. are
    /// [`share_ping_byte`]. On the next MMIO exit the VMM reads it, checks
    /// it, and writes [`share_pong_byte`] to bytes 4.. and then
    /// [`SHARE_PONG`] to the first word.
    pub const SHARED: &str = "GUEST-SHARED ";
    /// `GUEST-UNSHARED 0x<ipa>`: the granule is no longer shared; the host
    /// must now be refused access to it.
    pub const UNSHARED: &str = "GUEST-UNSHARED ";
    /// `GUEST-RELINQUISHED 0x<ipa>`: the guest gave the granule back; the
    /// hypervisor zeroed it.
    pub const RELINQUISHED: &str = "GUEST-RELINQUISHED ";
    /// `GUEST-PROBE <name> 0x<ipa>`: the `attacker` guest is about to touch
    /// `ipa`, outside its memory (an `EXIT_MEMORY_FAULT` may follow).
    pub const PROBE: &str = "GUEST-PROBE ";

    /// First word of the shared page as the guest writes it: `"ping"`.
    pub const SHARE_PING: u32 = u32::from_le_bytes(*b"ping");
    /// First word of the shared page as the host answers: `"pong"`.
    pub const SHARE_PONG: u32 = u32::from_le_bytes(*b"pong");

    /// Byte `offset` (4..4096) of the shared page as the guest writes it.
    #[must_use]
    pub const fn share_ping_byte(offset: usize) -> u8 {
        (offset.wrapping_mul(7) ^ (offset >> 8)).to_le_bytes()[0]
    }

    /// Byte `offset` (4..4096) of the shared page as the host answers.
    #[must_use]
    pub const fn share_pong_byte(offset: usize) -> u8 {
        !share_ping_byte(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn kvm_ids_match_linux() {
        // include/linux/arm-smccc.h, Documentation/virt/kvm/arm/hypercalls.rst
        assert_eq!(GuestCall::VendorHypCallUid.id(), 0x8600_FF01);
        assert_eq!(GuestCall::KvmFeatures.id(), 0x8600_0000);
        assert_eq!(GuestCall::HypMeminfo.id(), 0xC600_0002);
        assert_eq!(GuestCall::MemShare.id(), 0xC600_0003);
        assert_eq!(GuestCall::MemUnshare.id(), 0xC600_0004);
        assert_eq!(GuestCall::MmioGuardInfo.id(), 0xC600_0005);
        assert_eq!(GuestCall::MmioGuardEnroll.id(), 0xC600_0006);
        assert_eq!(GuestCall::MmioGuardMap.id(), 0xC600_0007);
        assert_eq!(GuestCall::MmioGuardUnmap.id(), 0xC600_0008);
        assert_eq!(GuestCall::MemRelinquish.id(), 0xC600_0009);
        assert_eq!(KVM_FEATURES_PROTECTED, 0x3fd);
        assert_eq!(RAMPART_GUEST_CALL_BASE, 0xC600_4000);
    }

    #[test]
    fn psci_and_trng_ids_match_the_specifications() {
        assert_eq!(GuestCall::PsciVersion.id(), 0x8400_0000);
        assert_eq!(GuestCall::CpuOn64.id(), 0xC400_0003);
        assert_eq!(GuestCall::AffinityInfo64.id(), 0xC400_0004);
        assert_eq!(GuestCall::SystemOff.id(), 0x8400_0008);
        assert_eq!(GuestCall::SystemReset.id(), 0x8400_0009);
        assert_eq!(GuestCall::PsciFeatures.id(), 0x8400_000A);
        assert_eq!(GuestCall::TrngVersion.id(), 0x8400_0050);
        assert_eq!(GuestCall::TrngRnd32.id(), 0x8400_0053);
        assert_eq!(GuestCall::TrngRnd64.id(), 0xC400_0053);
        for call in GuestCall::ALL {
            let id = call.id();
            assert!(crate::smccc::is_fast_call(id), "{}", call.name());
            let owner = crate::smccc::owner_of(id);
            assert!(
                [
                    owner::ARCH,
                    owner::STANDARD_SECURE,
                    owner::VENDOR_HYPERVISOR
                ]
                .contains(&owner)
            );
        }
    }

    #[test]
    fn ids_round_trip_and_are_unique() {
        for (i, call) in GuestCall::ALL.iter().enumerate() {
            assert_eq!(GuestCall::try_from(call.id()), Ok(*call));
            for other in &GuestCall::ALL[i + 1..] {
                assert_ne!(call.id(), other.id());
                assert_ne!(call.name(), other.name());
            }
        }
    }

    #[test]
    fn unknown_and_host_ids_are_not_supported() {
        for id in [
            0,
            u32::MAX,
            0xC600_0001, // KVM PTP as HVC64: not offered
            0x8600_0001, // KVM PTP
            0xC600_000A, // MMIO_RGUARD_MAP
            0xC600_003F,
            RAMPART_GUEST_CALL_BASE + 2,
            0xC600_8000, // host VERSION
            0xC600_8016, // host VCPU_RUN
            0x8400_0012, // SYSTEM_RESET2
            0xC500_0000,
            0x8200_0000,
        ] {
            assert_eq!(GuestCall::try_from(id), Err(Error::NotSupported), "{id:#x}");
        }
        for host in crate::host::HostCall::ALL {
            assert_eq!(GuestCall::try_from(host.id()), Err(Error::NotSupported));
        }
    }

    #[test]
    fn the_share_protocol_is_unambiguous() {
        assert_eq!(test_protocol::SHARE_PING, 0x676e_6970);
        assert_eq!(test_protocol::SHARE_PONG, 0x676e_6f70);
        for offset in 4..4096 {
            assert_ne!(
                test_protocol::share_ping_byte(offset),
                test_protocol::share_pong_byte(offset)
            );
        }
        assert_eq!(KVM_UID[0], 0xb66f_b428);
        assert_eq!(vcpu_mpidr(3) & MPIDR_AFFINITY_MASK, 3);
    }
}
