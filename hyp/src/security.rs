//! Verified boot, attestation and sealing: the keys, and the hypervisor's
//! side of `rampart-attest`.
//!
//! The trusted signing keys and the device secret are fixed at boot (built
//! in, plus the device tree's before the host runs) and never change after.
//! The device secret and the keys derived from it stay in the carve-out; the
//! host never sees them, and a guest sees only its own sealing keys.

use alloc::vec::Vec;

use rampart_abi::Error;
use rampart_attest::{AttestationKey, Claims, DeviceSecret, InitialState, Measurement, Measurer, SignatureError, VerifyingKey, VmFlags};
use spin::Once;

include!(concat!(env!("OUT_DIR"), "/security_config.rs"));

/// Where the device secret came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `/chosen/rampart,device-secret`.
    DeviceTree,
    /// `RAMPART_DEVICE_SECRET` at build time.
    Build,
}

struct Security {
    trusted: Vec<VerifyingKey>,
    secret: Option<(DeviceSecret, SecretSource)>,
    attestation: Option<AttestationKey>,
    hypervisor: Measurement,
}

static SECURITY: Once<Security> = Once::new();

/// What boot learned, for its log.
pub struct Summary {
    /// Trusted keys (built in and from the device tree) that parsed.
    pub trusted_keys: usize,
    /// Keys that are not valid Ed25519 points and were ignored.
    pub rejected_keys: usize,
    /// The device secret's source, if there is one.
    pub secret: Option<SecretSource>,
    /// The public attestation key, if there is a device secret.
    pub attestation_key: Option<[u8; 32]>,
    /// SHA-256 of the hypervisor's code and read-only data.
    pub hypervisor: Measurement,
    /// How EL2 computes SHA-256 (`arch::sha256::init`).
    pub sha256: crate::arch::sha256::Engine,
}

/// Fixes the keys for the life of the machine. `image` is the hypervisor's
/// code and read-only data (its own measurement).
pub fn init(dt_secret: Option<[u8; 32]>, dt_keys: &[[u8; 32]], image: &[u8]) -> Summary {
    let mut rejected = 0;
    let trusted: Vec<VerifyingKey> = BUILD_TRUSTED_KEYS
        .iter()
        .chain(dt_keys)
        .filter_map(|k| {
            let key = VerifyingKey::from_bytes(k).ok();
            rejected += usize::from(key.is_none());
            key
        })
        .collect();
    let secret = match (dt_secret, BUILD_DEVICE_SECRET) {
        (Some(s), _) => Some((DeviceSecret::from_bytes(&s), SecretSource::DeviceTree)),
        (None, Some(s)) => Some((DeviceSecret::from_bytes(&s), SecretSource::Build)),
        (None, None) => None,
    };
    let attestation = secret.as_ref().map(|(s, _)| s.attestation_key());
    let sha256 = crate::arch::sha256::init();
    let summary = Summary {
        trusted_keys: trusted.len(),
        rejected_keys: rejected,
        secret: secret.as_ref().map(|(_, source)| *source),
        attestation_key: attestation.as_ref().map(|k| k.public_key().to_bytes()),
        hypervisor: Measurement::sha256_with(crate::arch::sha256::compress, image),
        sha256,
    };
    SECURITY.call_once(|| Security { trusted, secret, attestation, hypervisor: summary.hypervisor });
    summary
}

fn security() -> Result<&'static Security, Error> {
    SECURITY.get().ok_or(Error::NotSupported)
}

/// Starts measuring a VM.
pub fn measurer(protected: bool, debug: bool, vcpus: u32, entry_pc: u64, x0: u64) -> Measurer {
    Measurer::with_compress(
        &InitialState { flags: VmFlags { protected, debug }, vcpus, entry_pc, x0 },
        crate::arch::sha256::compress,
    )
}

/// Checks that a trusted key signed `measurement`.
pub fn check_signature(measurement: &Measurement, signature: Option<&([u8; 32], [u8; 64])>) -> Result<(), Error> {
    let Some((signer, signature)) = signature else { return Err(Error::NotSigned) };
    match rampart_attest::verify_measurement(measurement, signer, signature, &security()?.trusted) {
        Ok(_) => Ok(()),
        Err(SignatureError::Unsigned) => Err(Error::NotSigned),
        Err(SignatureError::UntrustedSigner(_)) => Err(Error::UntrustedKey),
        Err(_) => Err(Error::BadSignature),
    }
}

/// The public attestation key.
pub fn attestation_public_key() -> Result<[u8; 32], Error> {
    security()?.attestation.as_ref().map(|k| k.public_key().to_bytes()).ok_or(Error::NotSupported)
}

/// An attestation report for a VM.
pub fn report(measurement: Measurement, nonce: &[u8], protected: bool, debug: bool) -> Result<Vec<u8>, Error> {
    let security = security()?;
    let key = security.attestation.as_ref().ok_or(Error::NotSupported)?;
    let claims = Claims {
        measurement,
        nonce,
        hypervisor_version: concat!("Rampart ", env!("CARGO_PKG_VERSION")),
        hypervisor_measurement: security.hypervisor,
        flags: VmFlags { protected, debug },
    };
    rampart_attest::build_report(&claims, key).map_err(|_| Error::InvalidParameter)
}

/// A VM's sealing key for `label`.
pub fn sealing_key(measurement: &Measurement, label: &[u8]) -> Result<[u8; 32], Error> {
    let (secret, _) = security()?.secret.as_ref().ok_or(Error::NotSupported)?;
    let key = secret.sealing_key(measurement, label).map_err(|_| Error::InvalidParameter)?;
    Ok(*key.as_bytes())
}

/// The root of the sealed-swap keys (`rampart-seal`), derived from the
/// device secret; `NOT_SUPPORTED` without one.
pub fn swap_root() -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
    let (secret, _) = security()?.secret.as_ref().ok_or(Error::NotSupported)?;
    Ok(secret.swap_root())
}
