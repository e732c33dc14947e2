//! The signed bundle `rampart sign` writes and the VMM loads.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"RAMPART\0"` |
//! | 8 | 4 | format version, 1 |
//! | 12 | 4 | flags: bit 0 protected, bit 1 debug, others zero |
//! | 16 | 4 | vCPUs, 1 to 8 |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | memory size in bytes |
//! | 32 | 8 | entry offset into the image |
//! | 40 | 8 | image length in bytes |
//! | 48 | 32 | measurement |
//! | 80 | 32 | signer's Ed25519 public key (zero if unsigned) |
//! | 112 | 64 | Ed25519 signature of `"rampart.bundle.v1\0" ‖ measurement` (zero if unsigned) |
//! | 176 | image length | the image |
//!
//! Integers are little-endian. Nothing may follow the image.
//!
//! Version 2 (a Linux VM, issue 12) keeps this header (version 2, entry
//! offset 0) and replaces the image with a table of typed parts: see
//! [`crate::linux`].

use alloc::vec::Vec;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::hex::Hex;
use crate::linux::{self, BUNDLE_VERSION_LINUX, LinuxBundle, LinuxError, PartSpec};
use crate::manifest::{Manifest, ManifestError, measure_image};
use crate::measure::{Measurement, VmFlags};

/// The first 8 bytes of every bundle.
pub const BUNDLE_MAGIC: [u8; 8] = *b"RAMPART\0";
/// The bundle format version of a bare-metal image (version 2, a Linux
/// VM's parts, is [`BUNDLE_VERSION_LINUX`]).
pub const BUNDLE_VERSION: u32 = 1;
/// Bytes before the image.
pub const HEADER_LEN: usize = 176;
/// What is signed is this string followed by the 32-byte measurement.
pub const BUNDLE_SIGNATURE_DOMAIN: &[u8] = b"rampart.bundle.v1\0";

/// Byte offsets of the bundle's fields.
pub mod offset {
    /// Magic, 8 bytes.
    pub const MAGIC: usize = 0;
    /// Format version, u32.
    pub const VERSION: usize = 8;
    /// Flags, u32.
    pub const FLAGS: usize = 12;
    /// vCPUs, u32.
    pub const VCPUS: usize = 16;
    /// Reserved, u32, zero.
    pub const RESERVED: usize = 20;
    /// Memory size, u64.
    pub const MEMORY_SIZE: usize = 24;
    /// Entry offset, u64.
    pub const ENTRY_OFFSET: usize = 32;
    /// Image length, u64.
    pub const IMAGE_LEN: usize = 40;
    /// Measurement, 32 bytes.
    pub const MEASUREMENT: usize = 48;
    /// Signer's public key, 32 bytes.
    pub const SIGNER: usize = 80;
    /// Signature, 64 bytes.
    pub const SIGNATURE: usize = 112;
    /// The image.
    pub const IMAGE: usize = 176;
}

/// Why a measurement's signature is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature is all zeros: the image was never signed.
    #[error("not signed: the signature (offset 112) is all zeros")]
    Unsigned,
    /// The signer's key is not one of the trusted keys.
    #[error("signed by {}, which is not a trusted key", Hex(.0))]
    UntrustedSigner([u8; 32]),
    /// The signature does not verify.
    #[error(
        "bad signature (offset 112): it does not verify against the signer's key (offset 80) for this measurement"
    )]
    BadSignature,
}

/// What is wrong with a bundle. Offsets are from the start of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with [`BUNDLE_MAGIC`].
    #[error("not a Rampart bundle: bad magic at offset 0 (expected \"RAMPART\\0\")")]
    BadMagic,
    /// The format version is not [`BUNDLE_VERSION`].
    #[error("unsupported bundle format version {0} at offset 8 (this tool reads versions 1 and 2)")]
    UnsupportedVersion(u32),
    /// The file ends early.
    #[error("truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// The length the header says the file has (or the header's length).
        expected: u64,
        /// The file's length.
        got: u64,
    },
    /// Bytes follow the image the header declares.
    #[error(
        "image length mismatch: the header (offset 40) declares a {declared}-byte image but {actual} bytes follow the header"
    )]
    ImageLengthMismatch {
        /// The image length field.
        declared: u64,
        /// Bytes after the header.
        actual: u64,
    },
    /// Reserved flag bits are set.
    #[error("flags field at offset 12 has reserved bits set: {0:#x}")]
    UnknownFlags(u32),
    /// The reserved field is not zero.
    #[error("reserved field at offset 20 is {0:#x}, expected 0")]
    ReservedNotZero(u32),
    /// A manifest field is out of range.
    #[error("manifest field {} at offset {offset}: {error}", .error.field())]
    Manifest {
        /// Offset of the field at fault.
        offset: usize,
        /// What is wrong.
        error: ManifestError,
    },
    /// The declared measurement is not that of the image and manifest.
    #[error(
        "measurement does not match the image and manifest: the bundle (offset 48) says {declared}, the image and manifest give {computed}"
    )]
    MeasurementMismatch {
        /// The measurement field.
        declared: Measurement,
        /// What [`measure_image`] gives.
        computed: Measurement,
    },
    /// The signature is missing, untrusted or wrong.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A version-2 bundle's header fields or parts.
    #[error(transparent)]
    Linux(#[from] LinuxError),
}

/// Builds and parses bundles.
pub struct Bundle;

/// A structurally valid bundle, borrowed from the file's bytes. Its
/// measurement and signature are not checked until [`verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleRef<'a> {
    /// The manifest (valid for the image).
    pub manifest: Manifest,
    /// The declared measurement.
    pub measurement: Measurement,
    /// The signer's public key bytes (zero if unsigned; not necessarily a
    /// valid key).
    pub signer: [u8; 32],
    /// The signature bytes (zero if unsigned).
    pub signature: [u8; 64],
    /// The image (version 2: everything after the header).
    pub image: &'a [u8],
    /// The format version (1 or 2).
    pub version: u32,
    /// A version-2 bundle's parts.
    pub linux: Option<LinuxBundle<'a>>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

impl Bundle {
    /// Builds a bundle: measures `image` as `manifest` says and signs the
    /// measurement with `key`.
    ///
    /// # Errors
    ///
    /// [`ManifestError`] if the manifest is out of range for the image.
    pub fn build(
        manifest: &Manifest,
        image: &[u8],
        key: &SigningKey,
    ) -> Result<Vec<u8>, ManifestError> {
        let measurement = measure_image(manifest, image)?;
        let signature = sign_measurement(&measurement, key);
        Ok(Self::encode(
            manifest,
            image,
            &measurement,
            &key.verifying_key().to_bytes(),
            &signature.to_bytes(),
        ))
    }

    /// Builds an unsigned bundle (signer and signature zero): for VMs that
    /// need no verified boot. [`verify`] always rejects it with
    /// [`SignatureError::Unsigned`].
    ///
    /// # Errors
    ///
    /// [`ManifestError`] if the manifest is out of range for the image.
    pub fn build_unsigned(manifest: &Manifest, image: &[u8]) -> Result<Vec<u8>, ManifestError> {
        let measurement = measure_image(manifest, image)?;
        Ok(Self::encode(
            manifest,
            image,
            &measurement,
            &[0; 32],
            &[0; 64],
        ))
    }

    fn encode(
        manifest: &Manifest,
        image: &[u8],
        measurement: &Measurement,
        signer: &[u8; 32],
        signature: &[u8; 64],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + image.len());
        out.extend_from_slice(&BUNDLE_MAGIC);
        out.extend_from_slice(&BUNDLE_VERSION.to_le_bytes());
        out.extend_from_slice(&manifest.flags.bits().to_le_bytes());
        out.extend_from_slice(&manifest.vcpus.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&manifest.memory_size.to_le_bytes());
        out.extend_from_slice(&manifest.entry_offset.to_le_bytes());
        out.extend_from_slice(&(image.len() as u64).to_le_bytes());
        out.extend_from_slice(&measurement.0);
        out.extend_from_slice(signer);
        out.extend_from_slice(signature);
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(image);
        out
    }

    /// Parses a bundle's structure: magic, version, lengths and manifest
    /// ranges, in file order. Does not hash or check signatures; see
    /// [`verify`].
    ///
    /// # Errors
    ///
    /// The first [`BundleError`] found, naming the field and its offset.
    pub fn parse(bytes: &[u8]) -> Result<BundleRef<'_>, BundleError> {
        let got = bytes.len() as u64;
        let magic_len = bytes.len().min(BUNDLE_MAGIC.len());
        if bytes[..magic_len] != BUNDLE_MAGIC[..magic_len] {
            return Err(BundleError::BadMagic);
        }
        let mut version = BUNDLE_VERSION;
        if bytes.len() >= offset::VERSION + 4 {
            version = u32_at(bytes, offset::VERSION);
            if version != BUNDLE_VERSION && version != BUNDLE_VERSION_LINUX {
                return Err(BundleError::UnsupportedVersion(version));
            }
        }
        if bytes.len() < HEADER_LEN {
            return Err(BundleError::Truncated {
                expected: HEADER_LEN as u64,
                got,
            });
        }
        let flags_bits = u32_at(bytes, offset::FLAGS);
        let flags = VmFlags::from_bits(flags_bits).ok_or(BundleError::UnknownFlags(flags_bits))?;
        let reserved = u32_at(bytes, offset::RESERVED);
        if reserved != 0 {
            return Err(BundleError::ReservedNotZero(reserved));
        }
        let manifest = Manifest {
            memory_size: u64_at(bytes, offset::MEMORY_SIZE),
            vcpus: u32_at(bytes, offset::VCPUS),
            entry_offset: u64_at(bytes, offset::ENTRY_OFFSET),
            flags,
        };
        let image_len = u64_at(bytes, offset::IMAGE_LEN);
        let actual = got - HEADER_LEN as u64;
        if image_len > actual {
            return Err(BundleError::Truncated {
                expected: image_len.saturating_add(HEADER_LEN as u64),
                got,
            });
        }
        if image_len < actual {
            return Err(BundleError::ImageLengthMismatch {
                declared: image_len,
                actual,
            });
        }
        let measurement = Measurement(array_at(bytes, offset::MEASUREMENT));
        let signer = array_at(bytes, offset::SIGNER);
        let signature = array_at(bytes, offset::SIGNATURE);
        if version == BUNDLE_VERSION_LINUX {
            let parts = linux::parse(bytes, flags)?;
            return Ok(BundleRef {
                manifest,
                measurement,
                signer,
                signature,
                image: &bytes[HEADER_LEN..],
                version,
                linux: Some(parts),
            });
        }
        manifest
            .validate(image_len)
            .map_err(|error| BundleError::Manifest {
                offset: match error.field() {
                    "vcpus" => offset::VCPUS,
                    "memory_size" => offset::MEMORY_SIZE,
                    "entry_offset" => offset::ENTRY_OFFSET,
                    _ => offset::IMAGE_LEN,
                },
                error,
            })?;
        Ok(BundleRef {
            manifest,
            measurement,
            signer,
            signature,
            image: &bytes[HEADER_LEN..],
            version,
            linux: None,
        })
    }

    /// Builds a version-2 bundle (a Linux VM) from its parts: checks them
    /// as [`parse`](Self::parse) does, measures them and, with `key`,
    /// signs the measurement (else signer and signature stay zero).
    ///
    /// # Errors
    ///
    /// The [`BundleError`] `parse` would give for the result.
    pub fn build_linux(
        memory_size: u64,
        vcpus: u32,
        flags: VmFlags,
        parts: &[PartSpec<'_>],
        key: Option<&SigningKey>,
    ) -> Result<Vec<u8>, BundleError> {
        let body = linux::encode_parts(parts);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&BUNDLE_MAGIC);
        out.extend_from_slice(&BUNDLE_VERSION_LINUX.to_le_bytes());
        out.extend_from_slice(&flags.bits().to_le_bytes());
        out.extend_from_slice(&vcpus.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&memory_size.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.resize(HEADER_LEN, 0);
        out.extend_from_slice(&body);
        match key {
            Some(key) => Self::sign(&out, key),
            None => {
                let m = Self::parse(&out)?.computed_measurement();
                out[offset::MEASUREMENT..offset::SIGNER].copy_from_slice(&m.0);
                Ok(out)
            }
        }
    }

    /// Signs an existing bundle of either version with `key`: recomputes
    /// its measurement from its contents (whatever the measurement field
    /// said) and writes the measurement, the signer and the signature.
    ///
    /// # Errors
    ///
    /// The [`BundleError`] `parse` gives for `bytes`.
    pub fn sign(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, BundleError> {
        let m = Self::parse(bytes)?.computed_measurement();
        let mut out = bytes.to_vec();
        out[offset::MEASUREMENT..offset::SIGNER].copy_from_slice(&m.0);
        out[offset::SIGNER..offset::SIGNATURE].copy_from_slice(&key.verifying_key().to_bytes());
        out[offset::SIGNATURE..HEADER_LEN].copy_from_slice(&sign_measurement(&m, key).to_bytes());
        Ok(out)
    }
}

impl BundleRef<'_> {
    /// Whether the signature field is non-zero.
    #[must_use]
    pub fn is_signed(&self) -> bool {
        self.signature != [0; 64]
    }

    /// The measurement of the image and manifest (what the hypervisor will
    /// compute), whatever the bundle declares.
    #[must_use]
    pub fn computed_measurement(&self) -> Measurement {
        if let Some(parts) = &self.linux {
            return parts.measure();
        }
        // `parse` validated the manifest against this image.
        measure_image(&self.manifest, self.image).unwrap_or_default()
    }

    /// The initial state the hypervisor measures: vCPU 0's entry PC and
    /// `x0` (version 1: the image's entry and the memory size; version 2:
    /// the kernel and the device tree).
    #[must_use]
    pub fn initial_state(&self) -> crate::measure::InitialState {
        self.linux
            .as_ref()
            .map_or_else(|| self.manifest.initial_state(), LinuxBundle::initial_state)
    }

    /// [`verify`] as a method.
    ///
    /// # Errors
    ///
    /// As [`verify`].
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<VerifyingKey, BundleError> {
        verify(self, trusted)
    }
}

/// Signs a measurement: Ed25519 over [`BUNDLE_SIGNATURE_DOMAIN`] followed by
/// the 32 measurement bytes.
#[must_use]
pub fn sign_measurement(measurement: &Measurement, key: &SigningKey) -> Signature {
    key.sign(&signed_message(measurement))
}

fn signed_message(measurement: &Measurement) -> [u8; BUNDLE_SIGNATURE_DOMAIN.len() + 32] {
    let mut message = [0; BUNDLE_SIGNATURE_DOMAIN.len() + 32];
    message[..BUNDLE_SIGNATURE_DOMAIN.len()].copy_from_slice(BUNDLE_SIGNATURE_DOMAIN);
    message[BUNDLE_SIGNATURE_DOMAIN.len()..].copy_from_slice(&measurement.0);
    message
}

/// Checks that `signature` by `signer` over `measurement` verifies and that
/// `signer` is one of `trusted`: what the hypervisor does before a protected
/// VM's first run, with a measurement it computed itself. Uses
/// `verify_strict` (no malleable signatures, no weak keys).
///
/// # Errors
///
/// [`SignatureError`], checked in this order: an all-zero signature, a
/// signer not in `trusted`, a signature that does not verify.
pub fn verify_measurement(
    measurement: &Measurement,
    signer: &[u8; 32],
    signature: &[u8; 64],
    trusted: &[VerifyingKey],
) -> Result<VerifyingKey, SignatureError> {
    if *signature == [0; 64] {
        return Err(SignatureError::Unsigned);
    }
    let key = trusted
        .iter()
        .find(|key| key.as_bytes() == signer)
        .ok_or(SignatureError::UntrustedSigner(*signer))?;
    key.verify_strict(
        &signed_message(measurement),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| SignatureError::BadSignature)?;
    Ok(*key)
}

/// Verifies a parsed bundle: a key in `trusted` signed its declared
/// measurement, and that measurement is the one of its image and manifest.
/// Returns the key.
///
/// The cheap checks come first: the signature (one Ed25519 verification)
/// before the measurement, which hashes every page of `memory_size` (up to
/// 64 GiB, however small the bundle). So a bundle that no trusted key signed
/// is refused at once, whatever size it claims; only the measurement of a
/// bundle a trusted key really signed is recomputed.
///
/// # Errors
///
/// [`BundleError::Signature`], then [`BundleError::MeasurementMismatch`].
pub fn verify(
    bundle: &BundleRef<'_>,
    trusted: &[VerifyingKey],
) -> Result<VerifyingKey, BundleError> {
    let key = verify_measurement(
        &bundle.measurement,
        &bundle.signer,
        &bundle.signature,
        trusted,
    )?;
    let computed = bundle.computed_measurement();
    if computed != bundle.measurement {
        return Err(BundleError::MeasurementMismatch {
            declared: bundle.measurement,
            computed,
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::PAGE_SIZE;
    use alloc::format;
    use alloc::string::ToString;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            memory_size: 2 * PAGE_SIZE as u64,
            vcpus: 2,
            entry_offset: 4,
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
        }
    }

    fn image() -> Vec<u8> {
        (0..300u32).map(|i| (i * 7).to_le_bytes()[0]).collect()
    }

    fn bundle() -> Vec<u8> {
        Bundle::build(&manifest(), &image(), &key(1)).unwrap()
    }

    fn check(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<VerifyingKey, BundleError> {
        Bundle::parse(bytes)?.verify(trusted)
    }

    #[test]
    fn round_trip() {
        let bytes = bundle();
        assert_eq!(bytes.len(), HEADER_LEN + 300);
        let parsed = Bundle::parse(&bytes).unwrap();
        assert_eq!(parsed.manifest, manifest());
        assert_eq!(parsed.image, &image()[..]);
        assert_eq!(parsed.signer, key(1).verifying_key().to_bytes());
        assert_eq!(
            parsed.measurement,
            measure_image(&manifest(), &image()).unwrap()
        );
        assert!(parsed.is_signed());
        assert_eq!(
            parsed.verify(&[key(2).verifying_key(), key(1).verifying_key()]),
            Ok(key(1).verifying_key())
        );
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = bundle();
        assert_eq!(&bytes[0..8], b"RAMPART\0");
        assert_eq!(&bytes[8..12], &[1, 0, 0, 0]);
        assert_eq!(&bytes[12..16], &[1, 0, 0, 0]);
        assert_eq!(&bytes[16..20], &[2, 0, 0, 0]);
        assert_eq!(&bytes[20..24], &[0; 4]);
        assert_eq!(&bytes[24..32], &8192u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &4u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &300u64.to_le_bytes());
        let mut message = b"rampart.bundle.v1\0".to_vec();
        message.extend_from_slice(&bytes[48..80]);
        let signature = Signature::from_bytes(&bytes[112..176].try_into().unwrap());
        key(1)
            .verifying_key()
            .verify_strict(&message, &signature)
            .unwrap();
    }

    #[test]
    fn truncated_at_every_length() {
        let bytes = bundle();
        for len in 0..bytes.len() {
            let error = Bundle::parse(&bytes[..len]).unwrap_err();
            let expected = if len < HEADER_LEN {
                HEADER_LEN
            } else {
                bytes.len()
            } as u64;
            assert_eq!(
                error,
                BundleError::Truncated {
                    expected,
                    got: len as u64
                },
                "length {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Bundle::parse(&longer),
            Err(BundleError::ImageLengthMismatch {
                declared: 300,
                actual: 301
            })
        );
    }

    /// Which error a flip of one byte in each region must give.
    fn expected_for_offset(at: usize, error: &BundleError) -> bool {
        use BundleError as E;
        match at {
            0..8 => *error == E::BadMagic,
            8..12 => matches!(error, E::UnsupportedVersion(_)),
            12..16 => matches!(error, E::UnknownFlags(_) | E::MeasurementMismatch { .. }),
            16..20 => matches!(
                error,
                E::Manifest { offset: 16, .. } | E::MeasurementMismatch { .. }
            ),
            20..24 => matches!(error, E::ReservedNotZero(_)),
            24..32 => matches!(
                error,
                E::Manifest { offset: 24, .. } | E::MeasurementMismatch { .. }
            ),
            32..40 => matches!(
                error,
                E::Manifest { offset: 32, .. } | E::MeasurementMismatch { .. }
            ),
            40..48 => matches!(error, E::Truncated { .. } | E::ImageLengthMismatch { .. }),
            // The signature is checked first, and it covers the measurement.
            48..80 => matches!(error, E::Signature(SignatureError::BadSignature)),
            80..112 => matches!(error, E::Signature(SignatureError::UntrustedSigner(_))),
            112..176 => matches!(error, E::Signature(SignatureError::BadSignature)),
            _ => matches!(error, E::MeasurementMismatch { .. }),
        }
    }

    #[test]
    fn one_flipped_byte_anywhere_is_a_specific_error() {
        let bytes = bundle();
        let trusted = [key(1).verifying_key()];
        for at in 0..bytes.len() {
            // Each flipped signature byte costs an Ed25519 verification,
            // slow in a debug build: one mask is enough there.
            let masks: &[u8] = if (112..176).contains(&at) {
                &[0x01]
            } else {
                &[0x01, 0x80, 0xff]
            };
            for &mask in masks {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                // A flipped high byte of the memory size can make it a valid
                // size of gigabytes: `verify` would hash all of it (slow in a
                // debug build). The changed manifest is enough to know the
                // measurement cannot match.
                if let Ok(parsed) = Bundle::parse(&bad)
                    && parsed.manifest.memory_size > 1 << 20
                {
                    assert!((24..32).contains(&at), "byte {at} ^ {mask:#x}");
                    assert_ne!(parsed.manifest, manifest());
                    continue;
                }
                let error = check(&bad, &trusted).unwrap_err();
                assert!(
                    expected_for_offset(at, &error),
                    "byte {at} ^ {mask:#x}: unexpected {error:?}"
                );
            }
        }
    }

    /// A small bundle that claims the largest memory: `verify` refuses it
    /// on its signature before hashing 64 GiB of zero pages (hours in a
    /// debug build, which is what this test would take if it did).
    #[test]
    fn a_huge_claimed_memory_is_refused_before_hashing() {
        use crate::manifest::MAX_MEMORY_SIZE;
        let mut huge = bundle();
        huge[offset::MEMORY_SIZE..offset::MEMORY_SIZE + 8]
            .copy_from_slice(&MAX_MEMORY_SIZE.to_le_bytes());
        let parsed = Bundle::parse(&huge).unwrap();
        assert_eq!(parsed.manifest.memory_size, 64 << 30);
        assert_eq!(
            parsed.verify(&[key(2).verifying_key()]),
            Err(BundleError::Signature(SignatureError::UntrustedSigner(
                key(1).verifying_key().to_bytes()
            )))
        );
        let mut unsigned = huge.clone();
        unsigned[offset::SIGNATURE..offset::IMAGE].fill(0);
        assert_eq!(
            check(&unsigned, &[key(1).verifying_key()]),
            Err(BundleError::Signature(SignatureError::Unsigned))
        );
        // Claims the trusted signer but carries another key's signature.
        let mut forged = huge.clone();
        let measurement = Measurement(array_at(&huge, offset::MEASUREMENT));
        forged[offset::SIGNATURE..offset::IMAGE]
            .copy_from_slice(&sign_measurement(&measurement, &key(2)).to_bytes());
        assert_eq!(
            check(&forged, &[key(1).verifying_key()]),
            Err(BundleError::Signature(SignatureError::BadSignature))
        );
    }

    #[test]
    fn unsigned_wrong_key_and_bad_fields() {
        let unsigned = Bundle::build_unsigned(&manifest(), &image()).unwrap();
        let parsed = Bundle::parse(&unsigned).unwrap();
        assert!(!parsed.is_signed());
        assert_eq!(
            parsed.verify(&[key(1).verifying_key()]),
            Err(BundleError::Signature(SignatureError::Unsigned))
        );
        assert_eq!(
            check(&bundle(), &[key(2).verifying_key()]),
            Err(BundleError::Signature(SignatureError::UntrustedSigner(
                key(1).verifying_key().to_bytes()
            )))
        );
        assert_eq!(
            check(&bundle(), &[]),
            Err(BundleError::Signature(SignatureError::UntrustedSigner(
                key(1).verifying_key().to_bytes()
            )))
        );

        let mut bad = bundle();
        bad[16..20].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            Bundle::parse(&bad),
            Err(BundleError::Manifest {
                offset: 16,
                error: ManifestError::Vcpus(9)
            })
        );
        assert_eq!(
            Bundle::parse(&bad).unwrap_err().to_string(),
            "manifest field vcpus at offset 16: vcpus is 9, expected 1 to 8"
        );
        let mut bad = bundle();
        bad[8] = 3;
        assert_eq!(Bundle::parse(&bad), Err(BundleError::UnsupportedVersion(3)));
        let mut bad = bundle();
        bad[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Bundle::parse(&bad),
            Err(BundleError::Truncated {
                expected: u64::MAX,
                got: bytes_len()
            })
        );
        assert_eq!(Bundle::parse(b"\x7fELF"), Err(BundleError::BadMagic));
        assert_eq!(
            Bundle::parse(b"RAMP"),
            Err(BundleError::Truncated {
                expected: 176,
                got: 4
            })
        );
    }

    fn bytes_len() -> u64 {
        bundle().len() as u64
    }

    #[test]
    fn messages_name_what_is_wrong() {
        let m = Measurement([0xab; 32]);
        let text = format!(
            "{}",
            BundleError::MeasurementMismatch {
                declared: m,
                computed: Measurement([0; 32])
            }
        );
        assert!(text.starts_with("measurement does not match the image and manifest"));
        assert!(text.contains(&"ab".repeat(32)));
        assert_eq!(
            BundleError::Truncated {
                expected: 476,
                got: 10
            }
            .to_string(),
            "truncated: expected 476 bytes, got 10"
        );
        assert!(
            SignatureError::UntrustedSigner([0x01; 32])
                .to_string()
                .contains(&"01".repeat(32))
        );
    }

    #[test]
    fn verify_measurement_is_what_the_hypervisor_calls() {
        let m = measure_image(&manifest(), &image()).unwrap();
        let signature = sign_measurement(&m, &key(3)).to_bytes();
        let signer = key(3).verifying_key().to_bytes();
        let trusted = [key(3).verifying_key()];
        assert_eq!(
            verify_measurement(&m, &signer, &signature, &trusted),
            Ok(trusted[0])
        );
        let other = Measurement([1; 32]);
        assert_eq!(
            verify_measurement(&other, &signer, &signature, &trusted),
            Err(SignatureError::BadSignature)
        );
        // A raw Ed25519 signature of the measurement without the domain
        // string is not accepted.
        let raw = key(3).sign(&m.0).to_bytes();
        assert_eq!(
            verify_measurement(&m, &signer, &raw, &trusted),
            Err(SignatureError::BadSignature)
        );
    }
}
