//! Guest calls through the HVC conduit (`HVC #0`, SMCCC 1.1), typed.
//!
//! Each wrapper returns the raw SMCCC result so tests can check exact
//! codes: `i64` for the 64-bit calls, `i32` for the 32-bit ones (whose
//! result is `w0`). IDs and meanings are in `rampart_abi::guest`.

use rampart_abi::guest::{GuestCall, psci as ids, trng as trng_ids};

/// Makes `HVC #0` with `w0` = `function` and `x1`..`x3` = `args` (the rest
/// zero). Returns `x0`..`x3`.
pub fn call(function: u32, args: [u64; 3]) -> [u64; 4] {
    let mut all = [0; 17];
    all[..3].copy_from_slice(&args);
    // A realm's conduit is SMC (`crate::realm`).
    let r = if crate::realm() { smccc::smc64(function, all) } else { smccc::hvc64(function, all) };
    [r[0], r[1], r[2], r[3]]
}

/// A guest call with no arguments.
pub fn call0(call: GuestCall) -> [u64; 4] {
    self::call(call.id(), [0; 3])
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "SMCCC 32-bit results are the w registers: the low half of x"
)]
const fn w(x: u64) -> u32 {
    x as u32
}

#[allow(clippy::cast_possible_wrap, reason = "SMCCC results are signed")]
const fn signed(x: u64) -> i64 {
    x as i64
}

#[allow(clippy::cast_possible_wrap, reason = "SMCCC 32-bit results are signed")]
const fn signed32(x: u64) -> i32 {
    w(x) as i32
}

/// `VENDOR_HYP_CALL_UID`: the four UID words, or the error in `x0`.
pub fn hyp_uid() -> Result<[u32; 4], i64> {
    let r = call0(GuestCall::VendorHypCallUid);
    if signed32(r[0]) == -1 {
        return Err(-1);
    }
    Ok([w(r[0]), w(r[1]), w(r[2]), w(r[3])])
}

/// `KVM_FEATURES`: the bitmap words `w0`..`w3` (function numbers 0..127).
pub fn kvm_features() -> [u32; 4] {
    let r = call0(GuestCall::KvmFeatures);
    [w(r[0]), w(r[1]), w(r[2]), w(r[3])]
}

/// Whether `KVM_FEATURES` advertises KVM function number `function`.
pub fn kvm_has(function: u16) -> bool {
    let bits = kvm_features();
    if bits[0] == u32::MAX {
        return false; // NOT_SUPPORTED
    }
    bits[usize::from(function / 32) % 4] & (1 << (function % 32)) != 0
}

/// `HYP_MEMINFO`: the protection granule in bytes, or an error code.
pub fn hyp_meminfo() -> i64 {
    signed(call0(GuestCall::HypMeminfo)[0])
}

/// `HYP_MEMINFO` with non-zero reserved arguments (must be refused).
pub fn hyp_meminfo_with(args: [u64; 3]) -> i64 {
    signed(call(GuestCall::HypMeminfo.id(), args)[0])
}

/// `MEM_SHARE` of the granule at `ipa`.
pub fn mem_share(ipa: u64) -> i64 {
    signed(call(GuestCall::MemShare.id(), [ipa, 0, 0])[0])
}

/// `MEM_UNSHARE` of the granule at `ipa`.
pub fn mem_unshare(ipa: u64) -> i64 {
    signed(call(GuestCall::MemUnshare.id(), [ipa, 0, 0])[0])
}

/// `MEM_RELINQUISH` of the granule at `ipa`.
pub fn mem_relinquish(ipa: u64) -> i64 {
    signed(call(GuestCall::MemRelinquish.id(), [ipa, 0, 0])[0])
}

/// `MMIO_GUARD_INFO`: the MMIO-guard granule in bytes, or an error.
pub fn mmio_guard_info() -> i64 {
    signed(call0(GuestCall::MmioGuardInfo)[0])
}

/// `MMIO_GUARD_ENROLL`.
pub fn mmio_guard_enroll() -> i64 {
    signed(call0(GuestCall::MmioGuardEnroll)[0])
}

/// `MMIO_GUARD_MAP` of the granule at `ipa`.
pub fn mmio_guard_map(ipa: u64) -> i64 {
    signed(call(GuestCall::MmioGuardMap.id(), [ipa, 0, 0])[0])
}

/// `MMIO_GUARD_UNMAP` of the granule at `ipa`.
pub fn mmio_guard_unmap(ipa: u64) -> i64 {
    signed(call(GuestCall::MmioGuardUnmap.id(), [ipa, 0, 0])[0])
}

/// `SMCCC_VERSION` (`w0`).
pub fn smccc_version() -> i32 {
    signed32(call0(GuestCall::SmcccVersion)[0])
}

/// SMCCC TRNG.
pub mod trng {
    use super::*;

    /// `TRNG_VERSION` (`w0`).
    pub fn version() -> i32 {
        signed32(call0(GuestCall::TrngVersion)[0])
    }

    /// `TRNG_FEATURES` for `function`.
    pub fn features(function: u32) -> i32 {
        signed32(call(trng_ids::FEATURES, [u64::from(function), 0, 0])[0])
    }

    /// `TRNG_RND64` for `bits` bits: `x1`..`x3`, or the error in `x0`.
    pub fn rnd64(bits: u64) -> Result<[u64; 3], i64> {
        let r = call(trng_ids::RND64, [bits, 0, 0]);
        match signed(r[0]) {
            0 => Ok([r[1], r[2], r[3]]),
            error => Err(error),
        }
    }
}

/// PSCI 1.1 through the HVC conduit.
pub mod psci {
    use super::*;

    /// `PSCI_VERSION` (`w0`).
    pub fn version() -> i32 {
        signed32(call(ids::VERSION, [0; 3])[0])
    }

    /// `PSCI_FEATURES` for `function`.
    pub fn features(function: u32) -> i32 {
        signed32(call(ids::FEATURES, [u64::from(function), 0, 0])[0])
    }

    /// `CPU_ON` (SMC64): starts vCPU `mpidr` at `entry` with `x0` = `context`.
    pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> i32 {
        signed32(call(ids::CPU_ON_64, [mpidr, entry, context])[0])
    }

    /// `CPU_OFF`: returns only on failure.
    pub fn cpu_off() -> i32 {
        signed32(call(ids::CPU_OFF, [0; 3])[0])
    }

    /// `AFFINITY_INFO` (SMC64) of `mpidr` at level 0.
    pub fn affinity_info(mpidr: u64) -> i32 {
        signed32(call(ids::AFFINITY_INFO_64, [mpidr, 0, 0])[0])
    }

    /// `SYSTEM_OFF`: returns only on failure.
    pub fn system_off() -> i32 {
        signed32(call(ids::SYSTEM_OFF, [0; 3])[0])
    }

    /// `SYSTEM_RESET`: returns only on failure.
    pub fn system_reset() -> i32 {
        signed32(call(ids::SYSTEM_RESET, [0; 3])[0])
    }
}

/// `RAMPART_ATTEST`: asks for an attestation report written to the granule
/// at `ipa` (one the guest owns and has not shared), binding `nonce_len`
/// bytes of `nonce` (at most 64; the call takes the length as given, so a
/// test can pass a bad one). Returns the report's length (`x1`) or the
/// error in `x0`.
pub fn rampart_attest(ipa: u64, nonce_len: u64, nonce: &[u8; 64]) -> Result<u64, i64> {
    let mut all = [0u64; 17];
    all[0] = ipa;
    all[1] = nonce_len;
    all[2..10].copy_from_slice(&rampart_abi::host::bytes_to_words::<8>(nonce));
    let r = smccc::hvc64(GuestCall::RampartAttest.id(), all);
    match signed(r[0]) {
        0 => Ok(r[1]),
        error => Err(error),
    }
}

/// `RAMPART_SEALING_KEY`: the 32-byte sealing key for the first `label_len`
/// bytes of `label` (at most 32; the length is passed as given). Returns the
/// key (`x1`..`x4`) or the error in `x0`. The key is a secret: keep it out
/// of the console.
pub fn rampart_sealing_key(label_len: u64, label: &[u8; 32]) -> Result<[u8; 32], i64> {
    let mut all = [0u64; 17];
    all[0] = label_len;
    all[1..5].copy_from_slice(&rampart_abi::host::bytes_to_words::<4>(label));
    let r = smccc::hvc64(GuestCall::RampartSealingKey.id(), all);
    match signed(r[0]) {
        0 => Ok(rampart_abi::host::words_to_bytes::<32>(&r[1..5])),
        error => Err(error),
    }
}
