//! Arm CCA attestation tokens: what a realm gets from
//! `RSI_ATTESTATION_TOKEN_INIT`/`CONTINUE`, built and verified without
//! hardware.
//!
//! The format is the RMM specification's (DEN0137 1.0-eac5, §A.7), the
//! profile `http://arm.com/CCA-SSD/1.0.0` that Veraison's `ccatoken` 0.1 and
//! TF-RMM 0.x verify, with the realm public key as a raw SEC1 point:
//!
//! ```text
//! 399({                                   ; CBOR tag 399: CCA token collection
//!     44234: bstr .cbor 18([...]),        ; platform token, COSE_Sign1 (tagged)
//!     44241: bstr .cbor 18([...]),        ; realm token, COSE_Sign1 (tagged)
//! })
//! COSE_Sign1 = [ << {1: -35} >>,          ; protected: alg ES384, nothing else
//!                {},                      ; unprotected: empty
//!                << claims >>,            ; payload
//!                bstr .size 96 ]          ; r || s, ECDSA P-384 over SHA-384
//! realm claims = {
//!     10:    bstr .size 64,               ; challenge (the guest's, zero-padded)
//!     44235: bstr .size 64,               ; personalization value
//!     44236: "sha-256",                   ; hash algorithm of the measurements
//!     44237: bstr .size 97,               ; RAK public key, SEC1 uncompressed
//!     44238: bstr .size 32,               ; realm initial measurement (RIM)
//!     44239: [4 * bstr .size 32],         ; realm extensible measurements
//!     44240: "sha-256",                   ; hash algorithm for the binding
//! }
//! platform claims = {
//!     10:   bstr .size 32,                ; challenge = SHA-256(RAK public key)
//!     256:  bstr .size 33,                ; instance id: 0x01 || SHA-256(IAK public)
//!     265:  "http://arm.com/CCA-SSD/1.0.0",
//!     2395: uint,                         ; security lifecycle
//!     2396: bstr .size 32,                ; implementation id
//!     2399: [+ sw-component],             ; Rampart's own component first
//!     2400: tstr,                         ; verification service
//!     2401: bstr,                         ; platform configuration
//!     2402: "sha-256",
//! }
//! sw-component = { 1: tstr, 2: bstr .size 32, 4: tstr, 5: bstr .size 32, 6: "sha-256" }
//! ```
//! Maps are written in the order above (ascending keys), every item in its
//! shortest encoding; the verifier accepts only that canonical form, so a
//! token has exactly one encoding.
//!
//! Keys: the **realm attestation key** (RAK) is per boot and passed in
//! ([`RealmKey::from_scalar`] for one drawn from a TRNG,
//! [`DeviceSecret::cca_realm_key`] for one derived from the device secret
//! and a per-boot value); the **platform attestation key** (IAK) is the
//! device's, [`DeviceSecret::cca_platform_key`]. Both are ECDSA P-384 and
//! sign ES384 deterministically (RFC 6979): building a token needs no
//! randomness.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use coset::cbor::value::Value;
use coset::{
    CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana,
};
use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::DeviceSecret;
use crate::measure::Measurement;

/// A CCA public key (platform or realm): ECDSA P-384.
pub type CcaPublicKey = VerifyingKey;

/// CBOR tag of the token collection (`TAG_CCA_TOKEN`).
pub const TAG_CCA_TOKEN: u64 = 399;
/// Collection key of the platform token (`CCA_PLAT_TOKEN`).
pub const CCA_PLATFORM_TOKEN: i64 = 44234;
/// Collection key of the realm token (`CCA_REALM_DELEGATED_TOKEN`).
pub const CCA_REALM_DELEGATED_TOKEN: i64 = 44241;
/// The platform token's profile claim.
pub const PLATFORM_PROFILE: &str = "http://arm.com/CCA-SSD/1.0.0";
/// The one hash algorithm Rampart's tokens use, by its IANA text name.
pub const HASH_ALGO_SHA256: &str = "sha-256";
/// The measurement type of Rampart's own software component.
pub const HYPERVISOR_COMPONENT_TYPE: &str = "rampart";
/// Security lifecycle "secured" (PSA lifecycle 0x3000, minor 0).
pub const LIFECYCLE_SECURED: u16 = 0x3000;
/// Rampart's implementation id (claim 2396): which platform implementation
/// signs. A verifier looks its reference values up by it.
pub const RAMPART_IMPLEMENTATION_ID: [u8; 32] = *b"rampart hypervisor cca 1.0\0\0\0\0\0\0";

/// The challenge's length in the token.
pub const CHALLENGE_LEN: usize = 64;
/// The shortest challenge a guest may pass (Linux's `RSI_ATTEST_CHALLENGE_MIN_SIZE`).
pub const MIN_CHALLENGE_LEN: usize = 32;
/// The personalization value's length.
pub const PERSONALIZATION_LEN: usize = 64;
/// The number of realm extensible measurements.
pub const REM_COUNT: usize = 4;
/// A SEC1 uncompressed P-384 point: 0x04 || x (48) || y (48).
pub const PUBLIC_KEY_LEN: usize = 97;
/// The instance id's length: 0x01 (random UEID) || SHA-256 of the IAK.
pub const INSTANCE_ID_LEN: usize = 33;
/// The longest platform configuration claim, in bytes.
pub const MAX_CONFIG_LEN: usize = 64;
/// The longest version or measurement type string of a software component.
pub const MAX_COMPONENT_TEXT_LEN: usize = 64;
/// The longest verification-service claim, in bytes.
pub const MAX_VERIFICATION_SERVICE_LEN: usize = 128;
/// The most software components the verifier reads.
pub const MAX_SW_COMPONENTS: usize = 8;
/// The largest token [`verify_cca_token`] reads. Rampart's are about 1 000
/// bytes; the largest the limits above allow is under 3 000.
pub const MAX_CCA_TOKEN_SIZE: usize = 4096;

/// HKDF `info` prefix of the platform key (then one counter byte).
pub const CCA_PLATFORM_KEY_INFO: &[u8] = b"rampart.cca-platform-key.v1\0";
/// HKDF `info` prefix of a derived realm key (then the 32-byte per-boot
/// value, then one counter byte).
pub const CCA_REALM_KEY_INFO: &[u8] = b"rampart.cca-realm-key.v1\0";

/// Realm claim keys.
pub mod realm_claim {
    /// Challenge, bstr (64).
    pub const CHALLENGE: i64 = 10;
    /// Personalization value, bstr (64).
    pub const PERSONALIZATION_VALUE: i64 = 44235;
    /// Hash algorithm of the measurements, tstr.
    pub const HASH_ALGO_ID: i64 = 44236;
    /// RAK public key, bstr (97).
    pub const PUBLIC_KEY: i64 = 44237;
    /// Realm initial measurement, bstr (32).
    pub const INITIAL_MEASUREMENT: i64 = 44238;
    /// Realm extensible measurements, array of 4 bstr (32).
    pub const EXTENSIBLE_MEASUREMENTS: i64 = 44239;
    /// Hash algorithm of the RAK binding, tstr.
    pub const PUBLIC_KEY_HASH_ALGO_ID: i64 = 44240;
}

/// Platform claim keys.
pub mod platform_claim {
    /// Challenge (the hash of the RAK public key), bstr (32).
    pub const CHALLENGE: i64 = 10;
    /// Instance id (UEID), bstr (33).
    pub const INSTANCE_ID: i64 = 256;
    /// Profile, tstr.
    pub const PROFILE: i64 = 265;
    /// Security lifecycle, uint.
    pub const LIFECYCLE: i64 = 2395;
    /// Implementation id, bstr (32).
    pub const IMPLEMENTATION_ID: i64 = 2396;
    /// Software components, array of maps.
    pub const SW_COMPONENTS: i64 = 2399;
    /// Verification service, tstr.
    pub const VERIFICATION_SERVICE: i64 = 2400;
    /// Platform configuration, bstr.
    pub const CONFIG: i64 = 2401;
    /// Hash algorithm, tstr.
    pub const HASH_ALGO_ID: i64 = 2402;
}

/// Software component keys.
pub mod sw_component {
    /// Measurement type, tstr.
    pub const MEASUREMENT_TYPE: i64 = 1;
    /// Measurement value, bstr (32).
    pub const MEASUREMENT_VALUE: i64 = 2;
    /// Version, tstr.
    pub const VERSION: i64 = 4;
    /// Signer id, bstr (32).
    pub const SIGNER_ID: i64 = 5;
    /// Hash algorithm, tstr.
    pub const HASH_ALGO_ID: i64 = 6;
}

/// Which part of a token an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The tag-399 collection around the two tokens.
    Collection,
    /// The platform token.
    Platform,
    /// The realm token.
    Realm,
    /// A software component of the platform token.
    SwComponent,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Collection => "token collection",
            Part::Platform => "platform token",
            Part::Realm => "realm token",
            Part::SwComponent => "platform token software component",
        })
    }
}

/// Why a CCA token was not built or not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CcaError {
    /// A challenge outside 32..=64 bytes.
    #[error("challenge is {0} bytes; it must be 32 to 64")]
    ChallengeLength(usize),
    /// A string or byte field above its limit.
    #[error("{field} is {len} bytes, the maximum is {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A lifecycle value outside the PSA ranges (0x0000-0x00ff, ...,
    /// 0x6000-0x60ff).
    #[error("lifecycle {0:#x} is not a PSA security lifecycle value")]
    Lifecycle(u16),
    /// No counter gave a valid P-384 scalar (probability about 2^-1900).
    #[error("key derivation found no valid P-384 scalar")]
    KeyDerivation,
    /// Bytes that are not a P-384 private key (zero or not below the order).
    #[error("not a valid P-384 private key")]
    BadPrivateKey,
    /// CBOR encoding failed (out of memory).
    #[error("CBOR encoding failed")]
    Encoding,
    /// The token is larger than [`MAX_CCA_TOKEN_SIZE`].
    #[error("token is {0} bytes, the maximum is 4096")]
    TooLarge(usize),
    /// The bytes are not a well-formed CCA token collection.
    #[error("not a CCA token: {0}")]
    NotCcaToken(&'static str),
    /// A part is well-formed but not in canonical encoding, or bytes follow it.
    #[error("{0}: not in canonical CBOR encoding, or bytes follow it")]
    NonCanonical(Part),
    /// A part is not a well-formed tagged COSE_Sign1.
    #[error("{part}: not a tagged COSE_Sign1 ({why})")]
    BadCose {
        /// The token.
        part: Part,
        /// What is wrong.
        why: &'static str,
    },
    /// The headers are not exactly `{1: -35}` protected and `{}` unprotected.
    #[error(
        "{0}: the protected header must be exactly alg ES384 (-35) and the unprotected one empty"
    )]
    Header(Part),
    /// The claims are not one CBOR map.
    #[error("{0}: the payload is not a CBOR map")]
    NotAMap(Part),
    /// A key this verifier does not know.
    #[error("{part}: unknown claim key {key}")]
    UnknownClaim {
        /// Where.
        part: Part,
        /// The key, as text.
        key: String,
    },
    /// A claim is missing, doubled, or has the wrong type, length or value.
    #[error("{part}: claim {key} {problem}")]
    Claim {
        /// Where.
        part: Part,
        /// The claim's key.
        key: i64,
        /// What is wrong.
        problem: &'static str,
    },
    /// The platform token is not signed by the given platform key.
    #[error("platform token: bad signature (not signed by this platform key, or changed)")]
    PlatformSignature,
    /// The platform token's instance id is not the one of the given key.
    #[error("platform token: instance id (claim 256) is not 0x01 || SHA-256 of this platform key")]
    InstanceId,
    /// The realm token's public key is not a P-384 point.
    #[error("realm token: the realm public key (claim 44237) is not a valid P-384 point")]
    BadRealmKey,
    /// The realm token is not signed by the realm key it carries.
    #[error("realm token: bad signature (not signed by the realm key it names, or changed)")]
    RealmSignature,
    /// The platform token does not vouch for this realm key.
    #[error(
        "binding: the platform challenge is not SHA-256 of the realm public key; the tokens do not belong together"
    )]
    Binding,
    /// The realm token answers another challenge (or is replayed).
    #[error("challenge mismatch: the realm token answers another challenge")]
    ChallengeMismatch,
    /// The realm's initial measurement is not the one expected.
    #[error("initial measurement mismatch: the token says {found}, expected {expected}")]
    InitialMeasurementMismatch {
        /// The measurement asked for.
        expected: Measurement,
        /// The token's.
        found: Measurement,
    },
    /// No software component has the type [`HYPERVISOR_COMPONENT_TYPE`].
    #[error("platform token: no software component of type \"rampart\"")]
    NoHypervisorComponent,
    /// Rampart's software component has another measurement.
    #[error("hypervisor measurement mismatch: the token says {found}, expected {expected}")]
    HypervisorMeasurementMismatch {
        /// The measurement asked for.
        expected: Measurement,
        /// The token's.
        found: Measurement,
    },
}

fn claim_error(part: Part, key: i64, problem: &'static str) -> CcaError {
    CcaError::Claim { part, key, problem }
}

// ---------------------------------------------------------------------------
// Keys

/// The realm attestation key (RAK): per boot, signs realm tokens. The
/// secret scalar is wiped on drop (`p384`'s `SigningKey` zeroizes).
pub struct RealmKey(SigningKey);

/// The platform attestation key (IAK): the device's, signs platform tokens.
pub struct PlatformKey(SigningKey);

fn derive_scalar(secret: &DeviceSecret, info: &[&[u8]]) -> Result<SigningKey, CcaError> {
    for counter in 0..=u8::MAX {
        let mut okm = Zeroizing::new([0u8; 48]);
        let mut parts: [&[u8]; 3] = [&[], &[], &[]];
        let n = info.len().min(2);
        parts[..n].copy_from_slice(&info[..n]);
        let counter = [counter];
        parts[n] = &counter;
        secret.expand_to(&parts[..=n], okm.as_mut());
        if let Ok(key) = SigningKey::from_slice(okm.as_ref()) {
            return Ok(key);
        }
    }
    Err(CcaError::KeyDerivation)
}

fn sec1(key: &VerifyingKey) -> [u8; PUBLIC_KEY_LEN] {
    let point = key.to_sec1_point(false);
    let mut out = [0; PUBLIC_KEY_LEN];
    let bytes = point.as_bytes();
    if bytes.len() == PUBLIC_KEY_LEN {
        out.copy_from_slice(bytes);
    }
    out
}

/// The SEC1 uncompressed encoding (97 bytes) of a CCA public key.
#[must_use]
pub fn public_key_bytes(key: &CcaPublicKey) -> [u8; PUBLIC_KEY_LEN] {
    sec1(key)
}

/// Parses a SEC1 (compressed or uncompressed) P-384 public key.
///
/// # Errors
///
/// `None` if the bytes are not a point of P-384 other than the identity.
#[must_use]
pub fn public_key_from_bytes(bytes: &[u8]) -> Option<CcaPublicKey> {
    VerifyingKey::from_sec1_bytes(bytes).ok()
}

/// The platform token's instance id for a platform key: 0x01 (a random
/// UEID) followed by SHA-256 of the key's SEC1 uncompressed encoding.
#[must_use]
pub fn instance_id(platform_key: &CcaPublicKey) -> [u8; INSTANCE_ID_LEN] {
    let mut out = [0; INSTANCE_ID_LEN];
    out[0] = 0x01;
    out[1..].copy_from_slice(&Sha256::digest(sec1(platform_key)));
    out
}

impl RealmKey {
    /// A realm key from a 48-byte big-endian scalar, e.g. drawn from the
    /// hypervisor's TRNG.
    ///
    /// # Errors
    ///
    /// [`CcaError::BadPrivateKey`] for zero or a value not below the order
    /// of P-384 (draw again).
    pub fn from_scalar(scalar: &[u8; 48]) -> Result<Self, CcaError> {
        SigningKey::from_slice(scalar)
            .map(RealmKey)
            .map_err(|_| CcaError::BadPrivateKey)
    }

    /// The public key.
    #[must_use]
    pub fn public_key(&self) -> CcaPublicKey {
        *self.0.verifying_key()
    }
}

impl PlatformKey {
    /// The public key a verifier is given (`rampart cca-platform-key`).
    #[must_use]
    pub fn public_key(&self) -> CcaPublicKey {
        *self.0.verifying_key()
    }
}

impl fmt::Debug for RealmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RealmKey(public {})",
            crate::hex::Hex(&sec1(self.0.verifying_key()))
        )
    }
}

impl fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PlatformKey(public {})",
            crate::hex::Hex(&sec1(self.0.verifying_key()))
        )
    }
}

impl DeviceSecret {
    /// Derives the CCA platform attestation key (the same on every boot of
    /// this device):
    /// `scalar = HKDF-SHA256(secret, salt none, info = CCA_PLATFORM_KEY_INFO || c, L = 48)`,
    /// big-endian, for the first counter byte `c` from 0 that gives a
    /// scalar in `[1, n-1]`.
    ///
    /// # Errors
    ///
    /// [`CcaError::KeyDerivation`] if no counter does (never in practice).
    pub fn cca_platform_key(&self) -> Result<PlatformKey, CcaError> {
        derive_scalar(self, &[CCA_PLATFORM_KEY_INFO]).map(PlatformKey)
    }

    /// Derives a realm attestation key from the device secret and a
    /// per-boot value (e.g. 32 bytes from the TRNG at boot, or a boot
    /// counter): as [`DeviceSecret::cca_platform_key`] with `info =
    /// CCA_REALM_KEY_INFO || per_boot || c`.
    ///
    /// # Errors
    ///
    /// [`CcaError::KeyDerivation`] if no counter gives a valid scalar.
    pub fn cca_realm_key(&self, per_boot: &[u8; 32]) -> Result<RealmKey, CcaError> {
        derive_scalar(self, &[CCA_REALM_KEY_INFO, per_boot]).map(RealmKey)
    }
}

// ---------------------------------------------------------------------------
// Building

/// Pads a guest's challenge (32 to 64 bytes) with zeros to 64, as Linux's
/// `arm-cca-guest` does before `RSI_ATTESTATION_TOKEN_INIT`.
///
/// # Errors
///
/// [`CcaError::ChallengeLength`] outside 32..=64 bytes.
pub fn pad_challenge(challenge: &[u8]) -> Result<[u8; CHALLENGE_LEN], CcaError> {
    if !(MIN_CHALLENGE_LEN..=CHALLENGE_LEN).contains(&challenge.len()) {
        return Err(CcaError::ChallengeLength(challenge.len()));
    }
    let mut out = [0; CHALLENGE_LEN];
    out[..challenge.len()].copy_from_slice(challenge);
    Ok(out)
}

/// What the realm token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealmClaims {
    /// The challenge, padded (the 64 bytes the guest passed in x1..x8).
    pub challenge: [u8; CHALLENGE_LEN],
    /// The realm personalization value (RPV).
    pub personalization_value: [u8; PERSONALIZATION_LEN],
    /// The realm initial measurement (RIM): for Rampart, the VM's
    /// measurement ([`crate::Measurer`]).
    pub initial_measurement: Measurement,
    /// The realm extensible measurements (REM 0 to 3).
    pub extensible_measurements: [[u8; 32]; REM_COUNT],
}

/// What the platform token says besides the binding and the instance id
/// (both computed from the keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformClaims<'a> {
    /// Implementation id (claim 2396), e.g. [`RAMPART_IMPLEMENTATION_ID`].
    pub implementation_id: [u8; 32],
    /// Platform configuration (claim 2401), at most [`MAX_CONFIG_LEN`] bytes.
    pub config: &'a [u8],
    /// Security lifecycle (claim 2395), e.g. [`LIFECYCLE_SECURED`].
    pub lifecycle: u16,
    /// Rampart's own measurement (the software component's value).
    pub hypervisor_measurement: Measurement,
    /// Rampart's version (the component's version), at most
    /// [`MAX_COMPONENT_TEXT_LEN`] bytes.
    pub hypervisor_version: &'a str,
    /// Who signed the hypervisor image (the component's signer id), e.g.
    /// SHA-256 of the boot loader's key; zeros if nobody did.
    pub hypervisor_signer_id: [u8; 32],
    /// Where to verify (claim 2400), at most
    /// [`MAX_VERIFICATION_SERVICE_LEN`] bytes.
    pub verification_service: &'a str,
}

fn is_valid_lifecycle(value: u16) -> bool {
    (value >> 12) <= 6 && (value & 0x0f00) == 0
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), CcaError> {
    if len > max {
        return Err(CcaError::FieldTooLong { field, len, max });
    }
    Ok(())
}

fn int(key: i64) -> Value {
    Value::from(key)
}

fn sign1(payload: Vec<u8>, key: &SigningKey) -> Result<Vec<u8>, CcaError> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES384)
        .build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |tbs| {
            let signature: Signature = key.sign(tbs);
            signature.to_bytes().to_vec()
        })
        .build()
        .to_tagged_vec()
        .map_err(|_| CcaError::Encoding)
}

/// Builds and signs a realm token (a tagged COSE_Sign1, deterministic).
///
/// # Errors
///
/// [`CcaError::Encoding`] if memory runs out.
pub fn build_realm_token(claims: &RealmClaims, rak: &RealmKey) -> Result<Vec<u8>, CcaError> {
    use realm_claim as k;
    let rems = claims
        .extensible_measurements
        .iter()
        .map(|rem| Value::Bytes(rem.to_vec()))
        .collect();
    let payload = Value::Map(vec![
        (int(k::CHALLENGE), Value::Bytes(claims.challenge.to_vec())),
        (
            int(k::PERSONALIZATION_VALUE),
            Value::Bytes(claims.personalization_value.to_vec()),
        ),
        (int(k::HASH_ALGO_ID), Value::Text(HASH_ALGO_SHA256.into())),
        (
            int(k::PUBLIC_KEY),
            Value::Bytes(sec1(rak.0.verifying_key()).to_vec()),
        ),
        (
            int(k::INITIAL_MEASUREMENT),
            Value::Bytes(claims.initial_measurement.0.to_vec()),
        ),
        (int(k::EXTENSIBLE_MEASUREMENTS), Value::Array(rems)),
        (
            int(k::PUBLIC_KEY_HASH_ALGO_ID),
            Value::Text(HASH_ALGO_SHA256.into()),
        ),
    ])
    .to_vec()
    .map_err(|_| CcaError::Encoding)?;
    sign1(payload, &rak.0)
}

/// Builds and signs a platform token vouching for `rak` (its challenge is
/// SHA-256 of `rak`'s SEC1 encoding). One per RAK: the hypervisor can build
/// it once at boot and pair it with every realm token.
///
/// # Errors
///
/// [`CcaError::FieldTooLong`], [`CcaError::Lifecycle`], [`CcaError::Encoding`].
pub fn build_platform_token(
    claims: &PlatformClaims<'_>,
    rak: &CcaPublicKey,
    iak: &PlatformKey,
) -> Result<Vec<u8>, CcaError> {
    use platform_claim as k;
    check_len("config", claims.config.len(), MAX_CONFIG_LEN)?;
    check_len(
        "hypervisor version",
        claims.hypervisor_version.len(),
        MAX_COMPONENT_TEXT_LEN,
    )?;
    check_len(
        "verification service",
        claims.verification_service.len(),
        MAX_VERIFICATION_SERVICE_LEN,
    )?;
    if !is_valid_lifecycle(claims.lifecycle) {
        return Err(CcaError::Lifecycle(claims.lifecycle));
    }
    let component = Value::Map(vec![
        (
            int(sw_component::MEASUREMENT_TYPE),
            Value::Text(HYPERVISOR_COMPONENT_TYPE.into()),
        ),
        (
            int(sw_component::MEASUREMENT_VALUE),
            Value::Bytes(claims.hypervisor_measurement.0.to_vec()),
        ),
        (
            int(sw_component::VERSION),
            Value::Text(claims.hypervisor_version.into()),
        ),
        (
            int(sw_component::SIGNER_ID),
            Value::Bytes(claims.hypervisor_signer_id.to_vec()),
        ),
        (
            int(sw_component::HASH_ALGO_ID),
            Value::Text(HASH_ALGO_SHA256.into()),
        ),
    ]);
    let payload = Value::Map(vec![
        (
            int(k::CHALLENGE),
            Value::Bytes(Sha256::digest(sec1(rak)).to_vec()),
        ),
        (
            int(k::INSTANCE_ID),
            Value::Bytes(instance_id(&iak.public_key()).to_vec()),
        ),
        (int(k::PROFILE), Value::Text(PLATFORM_PROFILE.into())),
        (int(k::LIFECYCLE), Value::from(claims.lifecycle)),
        (
            int(k::IMPLEMENTATION_ID),
            Value::Bytes(claims.implementation_id.to_vec()),
        ),
        (int(k::SW_COMPONENTS), Value::Array(vec![component])),
        (
            int(k::VERIFICATION_SERVICE),
            Value::Text(claims.verification_service.into()),
        ),
        (int(k::CONFIG), Value::Bytes(claims.config.to_vec())),
        (int(k::HASH_ALGO_ID), Value::Text(HASH_ALGO_SHA256.into())),
    ])
    .to_vec()
    .map_err(|_| CcaError::Encoding)?;
    sign1(payload, &iak.0)
}

/// Wraps a platform and a realm token into the tag-399 collection.
///
/// # Errors
///
/// [`CcaError::Encoding`] if memory runs out.
pub fn assemble_cca_token(platform_token: &[u8], realm_token: &[u8]) -> Result<Vec<u8>, CcaError> {
    Value::Tag(
        TAG_CCA_TOKEN,
        Box::new(Value::Map(vec![
            (
                int(CCA_PLATFORM_TOKEN),
                Value::Bytes(platform_token.to_vec()),
            ),
            (
                int(CCA_REALM_DELEGATED_TOKEN),
                Value::Bytes(realm_token.to_vec()),
            ),
        ])),
    )
    .to_vec()
    .map_err(|_| CcaError::Encoding)
}

/// Builds a whole CCA token: the realm token signed by `rak`, the platform
/// token binding `rak` signed by `iak`, in the collection. What
/// `RSI_ATTESTATION_TOKEN_INIT` prepares and `CONTINUE` hands out.
///
/// # Errors
///
/// As [`build_platform_token`].
pub fn build_cca_token(
    realm: &RealmClaims,
    rak: &RealmKey,
    platform: &PlatformClaims<'_>,
    iak: &PlatformKey,
) -> Result<Vec<u8>, CcaError> {
    let platform_token = build_platform_token(platform, &rak.public_key(), iak)?;
    let realm_token = build_realm_token(realm, rak)?;
    assemble_cca_token(&platform_token, &realm_token)
}

// ---------------------------------------------------------------------------
// Verification

/// Whether `bytes` start like a CCA token (CBOR tag 399: `d9 01 8f`), as
/// opposed to a Rampart report (tag 18: `d2`).
#[must_use]
pub fn is_cca_token(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xd9, 0x01, 0x8f])
}

/// What a verifier expects of a token.
#[derive(Clone, Copy, Debug)]
pub struct CcaExpected<'a> {
    /// The platform public key (IAK) the device secret gives.
    pub platform_key: &'a CcaPublicKey,
    /// The challenge the verifier gave the guest (32 to 64 bytes, compared
    /// after zero-padding), if any.
    pub challenge: Option<&'a [u8]>,
    /// The realm initial measurement expected, if any.
    pub initial_measurement: Option<&'a Measurement>,
    /// Rampart's own measurement expected in its software component, if any.
    pub hypervisor_measurement: Option<&'a Measurement>,
}

/// A software component of a verified platform token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwComponent {
    /// Measurement type (key 1).
    pub measurement_type: Option<String>,
    /// Measurement value (key 2).
    pub measurement: Measurement,
    /// Version (key 4).
    pub version: Option<String>,
    /// Signer id (key 5).
    pub signer_id: [u8; 32],
    /// Hash algorithm (key 6).
    pub hash_algo: Option<String>,
}

/// A verified realm token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmToken {
    /// The claims.
    pub claims: RealmClaims,
    /// The RAK public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

/// A verified platform token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformToken {
    /// Challenge: SHA-256 of the RAK public key.
    pub challenge: [u8; 32],
    /// Instance id.
    pub instance_id: [u8; INSTANCE_ID_LEN],
    /// Implementation id.
    pub implementation_id: [u8; 32],
    /// Security lifecycle.
    pub lifecycle: u16,
    /// Software components, Rampart's among them.
    pub sw_components: Vec<SwComponent>,
    /// Verification service.
    pub verification_service: Option<String>,
    /// Platform configuration.
    pub config: Vec<u8>,
}

/// A verified CCA token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcaToken {
    /// The platform token.
    pub platform: PlatformToken,
    /// The realm token.
    pub realm: RealmToken,
}

impl PlatformToken {
    /// Rampart's own software component (type [`HYPERVISOR_COMPONENT_TYPE`]).
    #[must_use]
    pub fn hypervisor_component(&self) -> Option<&SwComponent> {
        self.sw_components
            .iter()
            .find(|c| c.measurement_type.as_deref() == Some(HYPERVISOR_COMPONENT_TYPE))
    }
}

/// Decodes `bytes` as one CBOR item that must re-encode to exactly `bytes`.
fn canonical(part: Part, bytes: &[u8]) -> Result<Value, CcaError> {
    let value = Value::from_slice(bytes).map_err(|_| match part {
        Part::Collection => CcaError::NotCcaToken("malformed or truncated CBOR"),
        _ => CcaError::NotAMap(part),
    })?;
    let again = value.clone().to_vec().map_err(|_| CcaError::Encoding)?;
    if again != bytes {
        return Err(CcaError::NonCanonical(part));
    }
    Ok(value)
}

/// Parses a tagged COSE_Sign1 with header `{1: -35}`, `{}` and an attached
/// payload, in canonical encoding.
fn parse_sign1(part: Part, bytes: &[u8]) -> Result<CoseSign1, CcaError> {
    let sign1 = CoseSign1::from_tagged_slice(bytes).map_err(|e| CcaError::BadCose {
        part,
        why: match e {
            coset::CoseError::ExtraneousData => "bytes follow it",
            coset::CoseError::UnexpectedItem(_, "tag") => "no CBOR tag 18",
            coset::CoseError::UnexpectedItem(..) => "unexpected CBOR item",
            _ => "malformed CBOR",
        },
    })?;
    let expected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::ES384)
        .build();
    if sign1.protected.header != expected || !sign1.unprotected.is_empty() {
        return Err(CcaError::Header(part));
    }
    let again = sign1
        .clone()
        .to_tagged_vec()
        .map_err(|_| CcaError::Encoding)?;
    if again != bytes {
        return Err(CcaError::NonCanonical(part));
    }
    if sign1.payload.is_none() {
        return Err(CcaError::BadCose {
            part,
            why: "detached payload",
        });
    }
    Ok(sign1)
}

fn verify_sign1(sign1: &CoseSign1, key: &VerifyingKey) -> bool {
    sign1
        .verify_signature(b"", |signature, tbs| {
            let signature = Signature::from_slice(signature).map_err(|_| ())?;
            key.verify(tbs, &signature).map_err(|_| ())
        })
        .is_ok()
}

/// A claims map: integer keys from `known`, each at most once.
struct Claims {
    part: Part,
    entries: Vec<(i64, Value)>,
}

impl Claims {
    fn parse(part: Part, value: Value, known: &[i64]) -> Result<Self, CcaError> {
        let Value::Map(map) = value else {
            return Err(CcaError::NotAMap(part));
        };
        let mut entries: Vec<(i64, Value)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            let number = match &key {
                Value::Integer(i) => i64::try_from(i128::from(*i)).ok(),
                _ => None,
            }
            .filter(|k| known.contains(k));
            let Some(number) = number else {
                return Err(CcaError::UnknownClaim {
                    part,
                    key: match key {
                        Value::Integer(i) => i128::from(i).to_string(),
                        Value::Text(t) => t,
                        _ => "(not an integer)".to_string(),
                    },
                });
            };
            if entries.iter().any(|(k, _)| *k == number) {
                return Err(claim_error(part, number, "appears twice"));
            }
            entries.push((number, value));
        }
        Ok(Claims { part, entries })
    }

    fn take(&mut self, key: i64) -> Option<Value> {
        let index = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.swap_remove(index).1)
    }

    fn required(&mut self, key: i64) -> Result<Value, CcaError> {
        self.take(key)
            .ok_or_else(|| claim_error(self.part, key, "is missing"))
    }

    fn bytes<const N: usize>(&mut self, key: i64) -> Result<[u8; N], CcaError> {
        let value = self.required(key)?;
        fixed_bytes(self.part, key, value)
    }

    fn text(&mut self, key: i64, max: usize) -> Result<Option<String>, CcaError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Text(t)) if t.len() <= max => Ok(Some(t)),
            Some(_) => Err(claim_error(self.part, key, "must be a short text string")),
        }
    }

    fn sha256_name(&mut self, key: i64) -> Result<(), CcaError> {
        match self.required(key)? {
            Value::Text(t) if t == HASH_ALGO_SHA256 => Ok(()),
            _ => Err(claim_error(self.part, key, "must be \"sha-256\"")),
        }
    }
}

fn fixed_bytes<const N: usize>(part: Part, key: i64, value: Value) -> Result<[u8; N], CcaError> {
    const PROBLEMS: [(usize, &str); 5] = [
        (32, "must be a 32-byte byte string"),
        (33, "must be a 33-byte byte string"),
        (48, "must be a 48-byte byte string"),
        (64, "must be a 64-byte byte string"),
        (97, "must be a 97-byte byte string"),
    ];
    let problem = PROBLEMS
        .iter()
        .find(|(n, _)| *n == N)
        .map_or("has the wrong length", |(_, p)| p);
    match value {
        Value::Bytes(b) => b.try_into().map_err(|_| claim_error(part, key, problem)),
        _ => Err(claim_error(part, key, problem)),
    }
}

fn parse_realm_claims(value: Value) -> Result<RealmToken, CcaError> {
    use realm_claim as k;
    let part = Part::Realm;
    let mut c = Claims::parse(
        part,
        value,
        &[
            k::CHALLENGE,
            k::PERSONALIZATION_VALUE,
            k::HASH_ALGO_ID,
            k::PUBLIC_KEY,
            k::INITIAL_MEASUREMENT,
            k::EXTENSIBLE_MEASUREMENTS,
            k::PUBLIC_KEY_HASH_ALGO_ID,
        ],
    )?;
    let challenge = c.bytes::<CHALLENGE_LEN>(k::CHALLENGE)?;
    let personalization_value = c.bytes::<PERSONALIZATION_LEN>(k::PERSONALIZATION_VALUE)?;
    c.sha256_name(k::HASH_ALGO_ID)?;
    let public_key = c.bytes::<PUBLIC_KEY_LEN>(k::PUBLIC_KEY)?;
    let initial_measurement = Measurement(c.bytes::<32>(k::INITIAL_MEASUREMENT)?);
    let Value::Array(rems) = c.required(k::EXTENSIBLE_MEASUREMENTS)? else {
        return Err(claim_error(
            part,
            k::EXTENSIBLE_MEASUREMENTS,
            "must be an array",
        ));
    };
    if rems.len() != REM_COUNT {
        return Err(claim_error(
            part,
            k::EXTENSIBLE_MEASUREMENTS,
            "must hold exactly 4 measurements",
        ));
    }
    let mut extensible_measurements = [[0; 32]; REM_COUNT];
    for (slot, rem) in extensible_measurements.iter_mut().zip(rems) {
        *slot = fixed_bytes(part, k::EXTENSIBLE_MEASUREMENTS, rem)?;
    }
    c.sha256_name(k::PUBLIC_KEY_HASH_ALGO_ID)?;
    Ok(RealmToken {
        claims: RealmClaims {
            challenge,
            personalization_value,
            initial_measurement,
            extensible_measurements,
        },
        public_key,
    })
}

fn parse_sw_component(value: Value) -> Result<SwComponent, CcaError> {
    use sw_component as k;
    let mut c = Claims::parse(
        Part::SwComponent,
        value,
        &[
            k::MEASUREMENT_TYPE,
            k::MEASUREMENT_VALUE,
            k::VERSION,
            k::SIGNER_ID,
            k::HASH_ALGO_ID,
        ],
    )?;
    let measurement_type = c.text(k::MEASUREMENT_TYPE, MAX_COMPONENT_TEXT_LEN)?;
    let measurement = Measurement(c.bytes::<32>(k::MEASUREMENT_VALUE)?);
    let version = c.text(k::VERSION, MAX_COMPONENT_TEXT_LEN)?;
    let signer_id = c.bytes::<32>(k::SIGNER_ID)?;
    let hash_algo = c.text(k::HASH_ALGO_ID, MAX_COMPONENT_TEXT_LEN)?;
    if hash_algo.as_deref().is_some_and(|h| h != HASH_ALGO_SHA256) {
        return Err(claim_error(
            Part::SwComponent,
            k::HASH_ALGO_ID,
            "must be \"sha-256\"",
        ));
    }
    Ok(SwComponent {
        measurement_type,
        measurement,
        version,
        signer_id,
        hash_algo,
    })
}

fn parse_platform_claims(value: Value) -> Result<PlatformToken, CcaError> {
    use platform_claim as k;
    let part = Part::Platform;
    let mut c = Claims::parse(
        part,
        value,
        &[
            k::CHALLENGE,
            k::INSTANCE_ID,
            k::PROFILE,
            k::LIFECYCLE,
            k::IMPLEMENTATION_ID,
            k::SW_COMPONENTS,
            k::VERIFICATION_SERVICE,
            k::CONFIG,
            k::HASH_ALGO_ID,
        ],
    )?;
    let challenge = c.bytes::<32>(k::CHALLENGE)?;
    let instance_id = c.bytes::<INSTANCE_ID_LEN>(k::INSTANCE_ID)?;
    match c.required(k::PROFILE)? {
        Value::Text(t) if t == PLATFORM_PROFILE => {}
        _ => {
            return Err(claim_error(
                part,
                k::PROFILE,
                "must be \"http://arm.com/CCA-SSD/1.0.0\"",
            ));
        }
    }
    let lifecycle = match c.required(k::LIFECYCLE)? {
        Value::Integer(i) => u16::try_from(i128::from(i))
            .ok()
            .filter(|l| is_valid_lifecycle(*l)),
        _ => None,
    }
    .ok_or_else(|| claim_error(part, k::LIFECYCLE, "must be a PSA lifecycle value"))?;
    let implementation_id = c.bytes::<32>(k::IMPLEMENTATION_ID)?;
    let Value::Array(components) = c.required(k::SW_COMPONENTS)? else {
        return Err(claim_error(part, k::SW_COMPONENTS, "must be an array"));
    };
    if components.is_empty() || components.len() > MAX_SW_COMPONENTS {
        return Err(claim_error(
            part,
            k::SW_COMPONENTS,
            "must hold 1 to 8 components",
        ));
    }
    let sw_components = components
        .into_iter()
        .map(parse_sw_component)
        .collect::<Result<Vec<_>, _>>()?;
    let verification_service = c.text(k::VERIFICATION_SERVICE, MAX_VERIFICATION_SERVICE_LEN)?;
    let config = match c.required(k::CONFIG)? {
        Value::Bytes(b) if b.len() <= MAX_CONFIG_LEN => b,
        _ => {
            return Err(claim_error(
                part,
                k::CONFIG,
                "must be a byte string of at most 64 bytes",
            ));
        }
    };
    c.sha256_name(k::HASH_ALGO_ID)?;
    Ok(PlatformToken {
        challenge,
        instance_id,
        implementation_id,
        lifecycle,
        sw_components,
        verification_service,
        config,
    })
}

/// Splits the collection into (platform token, realm token) bytes.
fn split_collection(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CcaError> {
    if bytes.len() > MAX_CCA_TOKEN_SIZE {
        return Err(CcaError::TooLarge(bytes.len()));
    }
    let value = canonical(Part::Collection, bytes)?;
    let Value::Tag(TAG_CCA_TOKEN, inner) = value else {
        return Err(CcaError::NotCcaToken("no CBOR tag 399"));
    };
    let Value::Map(entries) = *inner else {
        return Err(CcaError::NotCcaToken("tag 399 does not hold a map"));
    };
    let mut platform = None;
    let mut realm = None;
    for (key, value) in entries {
        let slot = match key {
            Value::Integer(i) if i128::from(i) == i128::from(CCA_PLATFORM_TOKEN) => &mut platform,
            Value::Integer(i) if i128::from(i) == i128::from(CCA_REALM_DELEGATED_TOKEN) => {
                &mut realm
            }
            _ => return Err(CcaError::NotCcaToken("a key other than 44234 and 44241")),
        };
        let Value::Bytes(token) = value else {
            return Err(CcaError::NotCcaToken("a token that is not a byte string"));
        };
        if slot.replace(token).is_some() {
            return Err(CcaError::NotCcaToken("a token appears twice"));
        }
    }
    match (platform, realm) {
        (Some(p), Some(r)) => Ok((p, r)),
        (None, _) => Err(CcaError::NotCcaToken("no platform token (44234)")),
        (_, None) => Err(CcaError::NotCcaToken("no realm token (44241)")),
    }
}

/// Verifies a CCA token end to end, in this order: the collection and
/// both COSE_Sign1 structures (canonical encoding, alg ES384); the platform
/// token's signature with `expected.platform_key` and its claims (its
/// instance id must be that key's); the realm token's claims and its
/// signature with the RAK it carries; the binding (platform challenge =
/// SHA-256 of the RAK); then the challenge, the initial measurement and
/// Rampart's software component against what `expected` gives.
///
/// # Errors
///
/// The first [`CcaError`] found, naming the token and claim.
pub fn verify_cca_token(bytes: &[u8], expected: &CcaExpected<'_>) -> Result<CcaToken, CcaError> {
    let padded_challenge = expected.challenge.map(pad_challenge).transpose()?;
    let (platform_bytes, realm_bytes) = split_collection(bytes)?;

    let platform_sign1 = parse_sign1(Part::Platform, &platform_bytes)?;
    if !verify_sign1(&platform_sign1, expected.platform_key) {
        return Err(CcaError::PlatformSignature);
    }
    let payload = platform_sign1.payload.unwrap_or_default();
    let platform = parse_platform_claims(canonical(Part::Platform, &payload)?)?;
    if platform.instance_id != instance_id(expected.platform_key) {
        return Err(CcaError::InstanceId);
    }

    let realm_sign1 = parse_sign1(Part::Realm, &realm_bytes)?;
    let payload = realm_sign1.payload.clone().unwrap_or_default();
    let realm = parse_realm_claims(canonical(Part::Realm, &payload)?)?;
    let rak = VerifyingKey::from_sec1_bytes(&realm.public_key)
        .ok()
        .filter(|_| realm.public_key[0] == 0x04)
        .ok_or(CcaError::BadRealmKey)?;
    if !verify_sign1(&realm_sign1, &rak) {
        return Err(CcaError::RealmSignature);
    }
    if platform.challenge[..] != Sha256::digest(realm.public_key)[..] {
        return Err(CcaError::Binding);
    }

    if padded_challenge.is_some_and(|c| c != realm.claims.challenge) {
        return Err(CcaError::ChallengeMismatch);
    }
    if let Some(expected) = expected.initial_measurement
        && *expected != realm.claims.initial_measurement
    {
        return Err(CcaError::InitialMeasurementMismatch {
            expected: *expected,
            found: realm.claims.initial_measurement,
        });
    }
    if let Some(expected) = expected.hypervisor_measurement {
        let component = platform
            .hypervisor_component()
            .ok_or(CcaError::NoHypervisorComponent)?;
        if component.measurement != *expected {
            return Err(CcaError::HypervisorMeasurementMismatch {
                expected: *expected,
                found: component.measurement,
            });
        }
    }
    Ok(CcaToken { platform, realm })
}
