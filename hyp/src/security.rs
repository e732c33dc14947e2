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

/// Starts measuring a VM with its flags, the realm bit (issue 12) included.
pub fn measurer_as(flags: VmFlags, vcpus: u32, entry_pc: u64, x0: u64) -> Measurer {
    Measurer::with_compress(
        &InitialState { flags, vcpus, entry_pc, x0 },
        crate::arch::sha256::compress,
    )
}

/// Checks that a trusted key signed `measurement`.
///
/// issue 16: a triple (measurement, signer, signature) that verified once
/// is remembered ([`VERIFIED`]), so relaunching the same signed image skips
/// the Ed25519 verification. The verdict is a function of the triple and
/// the trusted keys, which never change after boot, so the cache is exact;
/// it holds only successes, keyed by all 96 + 32 bytes, so any other
/// signature or signer for a cached measurement is verified (and refused)
/// as before.
pub fn check_signature(measurement: &Measurement, signature: Option<&([u8; 32], [u8; 64])>) -> Result<(), Error> {
    let Some((signer, signature)) = signature else { return Err(Error::NotSigned) };
    let security = security()?;
    let triple = Verified { measurement: measurement.0, signer: *signer, signature: *signature };
    if VERIFIED.lock().contains(&triple) {
        return Ok(());
    }
    match rampart_attest::verify_measurement(measurement, signer, signature, &security.trusted) {
        Ok(_) => {
            VERIFIED.lock().insert(triple);
            Ok(())
        }
        Err(SignatureError::Unsigned) => Err(Error::NotSigned),
        Err(SignatureError::UntrustedSigner(_)) => Err(Error::UntrustedKey),
        Err(_) => Err(Error::BadSignature),
    }
}

/// A (measurement, signer, signature) triple that verified against the
/// trusted keys.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Verified {
    measurement: [u8; 32],
    signer: [u8; 32],
    signature: [u8; 64],
}

/// The last [`VerifiedCache::SLOTS`] distinct triples that verified, in EL2
/// memory (a static: no allocation on the call path), oldest replaced
/// first. All three are public values, so comparing them in variable time
/// leaks nothing.
struct VerifiedCache {
    slots: [Option<Verified>; VerifiedCache::SLOTS],
    next: usize,
}

impl VerifiedCache {
    const SLOTS: usize = 8;

    fn contains(&self, triple: &Verified) -> bool {
        self.slots.iter().flatten().any(|v| v == triple)
    }

    fn insert(&mut self, triple: Verified) {
        if self.contains(&triple) {
            return;
        }
        if let Some(slot) = self.slots.get_mut(self.next % Self::SLOTS) {
            *slot = Some(triple);
        }
        self.next = (self.next + 1) % Self::SLOTS;
    }
}

/// Triples that verified (see [`check_signature`]). A leaf lock: nothing
/// else is taken while it is held.
static VERIFIED: spin::Mutex<VerifiedCache> =
    spin::Mutex::new(VerifiedCache { slots: [None; VerifiedCache::SLOTS], next: 0 });

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
        flags: VmFlags { protected, debug, realm: false },
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

/// The per-boot realm attestation key (RAK) of every realm's CCA token,
/// derived on first use from the device secret and 32 bytes of the CPU's
/// `RNDR` (the counter and the hypervisor's measurement where it has none:
/// still different at each boot, though guessable).
static REALM_KEY: Once<Result<rampart_attest::RealmKey, Error>> = Once::new();

fn realm_key(secret: &DeviceSecret) -> Result<&'static rampart_attest::RealmKey, Error> {
    let key = REALM_KEY.call_once(|| {
        let has_rng = crate::BOOT.get().is_some_and(|b| b.config.features.rng);
        let mut per_boot = [0u8; 32];
        for (i, chunk) in per_boot.chunks_exact_mut(8).enumerate() {
            // SAFETY: RNDR is read only where the CPU has FEAT_RNG.
            let word = has_rng.then(|| unsafe { crate::arch::guest::rndr() }).flatten();
            let word = word.unwrap_or_else(|| crate::arch::cache::counter().rotate_left(i as u32 * 16));
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        secret.cca_realm_key(&per_boot).map_err(|_| Error::NotSupported)
    });
    key.as_ref().map_err(|e| *e)
}

/// A realm's CCA attestation token (`RSI_ATTESTATION_TOKEN_INIT`): the
/// realm token (challenge, initial measurement, REMs) signed by the per-boot
/// RAK, and the platform token binding the RAK, signed by the device's
/// platform key, with Rampart's own measurement as its software component.
pub fn cca_token(challenge: [u8; 64], rim: Measurement, rems: [[u8; 32]; 4]) -> Result<Vec<u8>, Error> {
    let (secret, _) = security()?.secret.as_ref().ok_or(Error::NotSupported)?;
    let rak = realm_key(secret)?;
    let iak = secret.cca_platform_key().map_err(|_| Error::NotSupported)?;
    let realm = rampart_attest::RealmClaims {
        challenge,
        personalization_value: [0; rampart_attest::cca::PERSONALIZATION_LEN],
        initial_measurement: rim,
        extensible_measurements: rems,
    };
    let platform = rampart_attest::PlatformClaims {
        implementation_id: rampart_attest::cca::RAMPART_IMPLEMENTATION_ID,
        config: &[],
        lifecycle: rampart_attest::cca::LIFECYCLE_SECURED,
        hypervisor_measurement: security()?.hypervisor,
        hypervisor_version: concat!("Rampart ", env!("CARGO_PKG_VERSION")),
        hypervisor_signer_id: [0; 32],
        verification_service: "",
    };
    rampart_attest::build_cca_token(&realm, rak, &platform, &iak).map_err(|_| Error::InvalidParameter)
}
