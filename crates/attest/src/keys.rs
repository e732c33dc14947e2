//! Keys derived from the device secret.
//!
//! ```text
//! attestation seed = HKDF-SHA256(IKM = secret, salt = none,
//!                                info = "rampart.attestation-key.v1", L = 32)
//! attestation key  = the Ed25519 key with that seed (RFC 8032)
//! sealing key      = HKDF-SHA256(IKM = secret, salt = none,
//!                                info = "rampart.sealing-key.v1\0" || measurement (32) || label (0..=32),
//!                                L = 32)
//! ```
//! "salt = none" is RFC 5869's default: 32 zero bytes. Both derivations
//! share the pseudo-random key; their `info` strings differ in their first
//! bytes, so they never collide. The measurement has a fixed length and the
//! label is last, so `(measurement, label)` is recovered from `info`
//! unambiguously.

use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::measure::Measurement;

/// HKDF `info` for the attestation key.
pub const ATTESTATION_KEY_INFO: &[u8] = b"rampart.attestation-key.v1";
/// HKDF `info` prefix for sealing keys (then measurement, then label).
pub const SEALING_KEY_INFO: &[u8] = b"rampart.sealing-key.v1\0";
/// HKDF info of the sealed-swap root ([`DeviceSecret::swap_root`]).
pub const SWAP_ROOT_INFO: &[u8] = b"rampart.swap-root.v1";
/// The longest sealing-key label, in bytes.
pub const MAX_LABEL_LEN: usize = 32;

/// The device's root secret: 32 bytes only the hypervisor sees. Wiped on
/// drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DeviceSecret([u8; 32]);

/// The attestation key: signs reports. Wiped on drop; `Debug` shows only
/// the public key.
pub struct AttestationKey(SigningKey);

/// A 32-byte sealing key. Wiped on drop; never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SealingKey([u8; 32]);

/// A sealing-key label longer than [`MAX_LABEL_LEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sealing-key label is {0} bytes, the maximum is 32")]
pub struct LabelTooLong(pub usize);

impl DeviceSecret {
    /// Wraps a secret. The caller should wipe its own copy.
    #[must_use]
    pub const fn from_bytes(bytes: &[u8; 32]) -> Self {
        DeviceSecret(*bytes)
    }

    fn expand(&self, info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0; 32]);
        Hkdf::<Sha256>::new(None, &self.0)
            .expand_multi_info(info, out.as_mut())
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
        out
    }

    /// HKDF-SHA256 of the secret (salt none) with `info`, `out.len()` bytes
    /// (at most 8160). For the CCA keys in `cca.rs`.
    pub(crate) fn expand_to(&self, info: &[&[u8]], out: &mut [u8]) {
        Hkdf::<Sha256>::new(None, &self.0)
            .expand_multi_info(info, out)
            .unwrap_or_else(|_| unreachable!("callers ask for at most 48 bytes"));
    }

    /// Derives the attestation key (the same on every boot of this device).
    #[must_use]
    pub fn attestation_key(&self) -> AttestationKey {
        let seed = self.expand(&[ATTESTATION_KEY_INFO]);
        AttestationKey(SigningKey::from_bytes(&seed))
    }

    /// The root of the hypervisor's sealed-swap keys (`rampart-seal`):
    /// HKDF-SHA256 of the secret with its own info, so it is unrelated to
    /// the attestation key and to every guest's sealing key. Never leaves
    /// EL2.
    #[must_use]
    pub fn swap_root(&self) -> Zeroizing<[u8; 32]> {
        self.expand(&[SWAP_ROOT_INFO])
    }

    /// Derives the sealing key for a VM with `measurement` and a label the
    /// guest chose: the same image gets the same key on every boot and in
    /// every VM; any other image, or another label, gets an unrelated key.
    ///
    /// # Errors
    ///
    /// [`LabelTooLong`] for a label above [`MAX_LABEL_LEN`] bytes.
    pub fn sealing_key(
        &self,
        measurement: &Measurement,
        label: &[u8],
    ) -> Result<SealingKey, LabelTooLong> {
        if label.len() > MAX_LABEL_LEN {
            return Err(LabelTooLong(label.len()));
        }
        let key = self.expand(&[SEALING_KEY_INFO, &measurement.0, label]);
        Ok(SealingKey(*key))
    }
}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSecret(..)")
    }
}

impl AttestationKey {
    /// The public key a verifier needs (`rampart attest-verify
    /// --attestation-key`).
    #[must_use]
    pub fn public_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    pub(crate) const fn signing_key(&self) -> &SigningKey {
        &self.0
    }
}

impl fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AttestationKey(public {})",
            crate::hex::Hex(self.0.verifying_key().as_bytes())
        )
    }
}

impl SealingKey {
    /// The key bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use hkdf::Hkdf;

    const SECRET: [u8; 32] = [0x42; 32];

    #[test]
    fn attestation_key_is_stable_and_depends_on_the_secret() {
        let a = DeviceSecret::from_bytes(&SECRET)
            .attestation_key()
            .public_key();
        let b = DeviceSecret::from_bytes(&SECRET)
            .attestation_key()
            .public_key();
        let c = DeviceSecret::from_bytes(&[0x43; 32])
            .attestation_key()
            .public_key();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn attestation_key_follows_the_definition() {
        let mut seed = [0; 32];
        Hkdf::<Sha256>::new(Some(&[0; 32]), &SECRET)
            .expand(b"rampart.attestation-key.v1", &mut seed)
            .unwrap();
        assert_eq!(
            DeviceSecret::from_bytes(&SECRET)
                .attestation_key()
                .public_key(),
            SigningKey::from_bytes(&seed).verifying_key()
        );
    }

    #[test]
    fn sealing_keys() {
        let secret = DeviceSecret::from_bytes(&SECRET);
        let image_a = Measurement([1; 32]);
        let image_b = Measurement([2; 32]);
        let key = |s: &DeviceSecret, m, l: &[u8]| *s.sealing_key(m, l).unwrap().as_bytes();

        // Same image: same key, across boots (a new DeviceSecret value) and VMs.
        let first = key(&secret, &image_a, b"disk");
        assert_eq!(
            first,
            key(&DeviceSecret::from_bytes(&SECRET), &image_a, b"disk")
        );
        // Changed image: different key.
        assert_ne!(first, key(&secret, &image_b, b"disk"));
        // Different label: different key; empty and 32-byte labels work.
        assert_ne!(first, key(&secret, &image_a, b"disk2"));
        assert_ne!(key(&secret, &image_a, b""), first);
        let _ = key(&secret, &image_a, &[7; 32]);
        // Different device: different key.
        assert_ne!(
            first,
            key(&DeviceSecret::from_bytes(&[9; 32]), &image_a, b"disk")
        );
        // Not the attestation seed.
        assert_ne!(first, secret.attestation_key().signing_key().to_bytes());
        assert_eq!(
            secret.sealing_key(&image_a, &[0; 33]).unwrap_err(),
            LabelTooLong(33)
        );

        // Matches the written definition.
        let mut expected = [0; 32];
        let mut info = b"rampart.sealing-key.v1\0".to_vec();
        info.extend_from_slice(&[1; 32]);
        info.extend_from_slice(b"disk");
        Hkdf::<Sha256>::new(None, &SECRET)
            .expand(&info, &mut expected)
            .unwrap();
        assert_eq!(first, expected);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = DeviceSecret::from_bytes(&SECRET);
        assert_eq!(format!("{secret:?}"), "DeviceSecret(..)");
        let sealing = secret.sealing_key(&Measurement([0; 32]), b"").unwrap();
        assert_eq!(format!("{sealing:?}"), "SealingKey(..)");
        assert!(format!("{:?}", secret.attestation_key()).starts_with("AttestationKey(public "));
    }
}
