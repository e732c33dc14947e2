//! Attestation reports: a tagged COSE_Sign1 (RFC 9052, CBOR tag 18) over a
//! CBOR map of claims, signed with the device's attestation key.
//!
//! ```text
//! 18([                              ; COSE_Sign1 tag
//!     << { 1: -8 } >>,              ; protected header: alg = EdDSA
//!     {},                           ; unprotected header: empty
//!     << {                          ; payload: the claims
//!         1: bstr .size 32,         ; the VM's measurement
//!         2: bstr .size (0..64),    ; the guest's nonce
//!         3: tstr .size (0..64),    ; hypervisor version
//!         4: bstr .size 32,         ; hypervisor measurement
//!         5: uint,                  ; VM flags: bit 0 protected, bit 1 debug
//!     } >>,
//!     bstr .size 64,                ; Ed25519 signature of Sig_structure1
//! ])
//! ```
//! The signature is over RFC 9052's `Sig_structure` (`["Signature1",
//! protected, external_aad = h'', payload]`). Claims are written in key
//! order with CBOR's shortest encodings.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use coset::cbor::value::Value;
use coset::{
    Algorithm, AsCborValue, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, iana,
};
use ed25519_dalek::{Signature, Signer, VerifyingKey};

use crate::keys::AttestationKey;
use crate::measure::{Measurement, VmFlags};

/// The largest report [`build_report`] writes and [`verify_report`] reads,
/// in bytes. The largest possible report (64-byte nonce and version) is 282
/// bytes; the bound leaves room and fits easily in the guest page the
/// hypervisor writes it to.
pub const MAX_REPORT_SIZE: usize = 512;
/// The longest nonce, in bytes.
pub const MAX_NONCE_LEN: usize = 64;
/// The longest hypervisor version string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;

/// The claims map's integer keys.
pub mod claim {
    /// The VM's measurement, bstr (32).
    pub const MEASUREMENT: u8 = 1;
    /// The nonce the guest passed, bstr (0 to 64).
    pub const NONCE: u8 = 2;
    /// The hypervisor's version, tstr (0 to 64).
    pub const HYPERVISOR_VERSION: u8 = 3;
    /// The hypervisor's own measurement, bstr (32).
    pub const HYPERVISOR_MEASUREMENT: u8 = 4;
    /// The VM's flags, uint (bit 0 protected, bit 1 debug).
    pub const VM_FLAGS: u8 = 5;
}

/// What the hypervisor attests to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims<'a> {
    /// The VM's measurement.
    pub measurement: Measurement,
    /// The guest's nonce (at most [`MAX_NONCE_LEN`] bytes).
    pub nonce: &'a [u8],
    /// The hypervisor's version (at most [`MAX_VERSION_LEN`] bytes).
    pub hypervisor_version: &'a str,
    /// The hypervisor's own measurement.
    pub hypervisor_measurement: Measurement,
    /// The VM's flags.
    pub flags: VmFlags,
}

/// A verified report's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The VM's measurement.
    pub measurement: Measurement,
    /// The nonce.
    pub nonce: Vec<u8>,
    /// The hypervisor's version.
    pub hypervisor_version: String,
    /// The hypervisor's measurement.
    pub hypervisor_measurement: Measurement,
    /// The VM's flags.
    pub flags: VmFlags,
}

/// What is wrong with the claims map (the payload).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The payload is not one well-formed CBOR item.
    #[error("the payload is not well-formed CBOR")]
    NotCbor,
    /// The payload is not a map.
    #[error("the payload is not a CBOR map")]
    NotAMap,
    /// A key is not an integer from 1 to 5.
    #[error("unknown claim key {0}")]
    UnknownKey(String),
    /// A key appears twice.
    #[error("claim {0} appears twice")]
    Duplicate(u8),
    /// A claim is missing.
    #[error("claim {0} is missing")]
    Missing(u8),
    /// A claim has the wrong CBOR type or length.
    #[error("claim {key} must be {expected}")]
    Invalid {
        /// The claim's key.
        key: u8,
        /// What it must be.
        expected: &'static str,
    },
}

/// Why a report was not built or not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The nonce is longer than [`MAX_NONCE_LEN`].
    #[error("nonce is {0} bytes, the maximum is 64")]
    NonceTooLong(usize),
    /// The hypervisor version is longer than [`MAX_VERSION_LEN`].
    #[error("hypervisor version is {0} bytes, the maximum is 64")]
    VersionTooLong(usize),
    /// The report is longer than [`MAX_REPORT_SIZE`].
    #[error("report is {0} bytes, the maximum is 512")]
    TooLarge(usize),
    /// The bytes are not one well-formed CBOR item.
    #[error("bad CBOR: {0}")]
    BadCbor(&'static str),
    /// The CBOR item is not tagged 18 (COSE_Sign1).
    #[error("not a tagged COSE_Sign1: expected CBOR tag 18, found {0}")]
    NotCoseSign1(&'static str),
    /// A tag other than 18.
    #[error("not a tagged COSE_Sign1: expected CBOR tag 18, found tag {0}")]
    WrongTag(u64),
    /// The protected header names no algorithm.
    #[error("the protected header has no alg (expected EdDSA, -8)")]
    MissingAlgorithm,
    /// The protected header names another algorithm.
    #[error("wrong alg {0} in the protected header (expected EdDSA, -8)")]
    WrongAlgorithm(String),
    /// The protected header marks a parameter critical.
    #[error("the protected header lists critical parameters this verifier does not know")]
    UnknownCritical,
    /// The payload is detached.
    #[error("the payload is missing (detached)")]
    MissingPayload,
    /// The public key is not a valid Ed25519 key.
    #[error("the attestation public key is not a valid Ed25519 key")]
    BadPublicKey,
    /// The signature does not verify with the attestation key.
    #[error("bad signature: the report was not signed by this attestation key, or was changed")]
    BadSignature,
    /// The claims map is malformed.
    #[error("bad claims: {0}")]
    BadClaims(#[from] ClaimError),
    /// The report is for another image.
    #[error("measurement mismatch: the report says {found}, expected {expected}")]
    MeasurementMismatch {
        /// The measurement asked for.
        expected: Measurement,
        /// The report's.
        found: Measurement,
    },
    /// The report answers another challenge (or is replayed).
    #[error("nonce mismatch: the report's nonce is not the one given")]
    NonceMismatch,
}

fn check_lengths(nonce: &[u8], version: &str) -> Result<(), ReportError> {
    if nonce.len() > MAX_NONCE_LEN {
        return Err(ReportError::NonceTooLong(nonce.len()));
    }
    if version.len() > MAX_VERSION_LEN {
        return Err(ReportError::VersionTooLong(version.len()));
    }
    Ok(())
}

/// Builds and signs a report (deterministic: the same claims and key give
/// the same bytes). The result is at most [`MAX_REPORT_SIZE`] bytes.
///
/// # Errors
///
/// [`ReportError::NonceTooLong`] or [`ReportError::VersionTooLong`].
pub fn build_report(claims: &Claims<'_>, key: &AttestationKey) -> Result<Vec<u8>, ReportError> {
    check_lengths(claims.nonce, claims.hypervisor_version)?;
    let payload = Value::Map(alloc::vec![
        (
            Value::from(claim::MEASUREMENT),
            Value::Bytes(claims.measurement.0.to_vec())
        ),
        (
            Value::from(claim::NONCE),
            Value::Bytes(claims.nonce.to_vec())
        ),
        (
            Value::from(claim::HYPERVISOR_VERSION),
            Value::Text(claims.hypervisor_version.to_string())
        ),
        (
            Value::from(claim::HYPERVISOR_MEASUREMENT),
            Value::Bytes(claims.hypervisor_measurement.0.to_vec())
        ),
        (
            Value::from(claim::VM_FLAGS),
            Value::from(claims.flags.bits())
        ),
    ])
    .to_vec()
    .map_err(|_| ReportError::BadCbor("encoding failed"))?;
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |tbs| key.signing_key().sign(tbs).to_bytes().to_vec())
        .build();
    let bytes = Value::Tag(
        iana::CborTag::CoseSign1 as u64,
        alloc::boxed::Box::new(
            sign1
                .to_cbor_value()
                .map_err(|_| ReportError::BadCbor("encoding failed"))?,
        ),
    )
    .to_vec()
    .map_err(|_| ReportError::BadCbor("encoding failed"))?;
    debug_assert!(bytes.len() <= MAX_REPORT_SIZE);
    Ok(bytes)
}

fn cose_error(error: &coset::CoseError) -> ReportError {
    use coset::CoseError as E;
    ReportError::BadCbor(match error {
        E::DecodeFailed(_) => "malformed or truncated CBOR",
        E::ExtraneousData => "bytes follow the COSE_Sign1",
        E::DuplicateMapKey => "a header map has a duplicate key",
        E::OutOfRangeIntegerValue => "an integer is out of range",
        E::UnexpectedItem(_, want) => match *want {
            "array with 4 items" => "the COSE_Sign1 array does not have 4 items",
            "array" => "the COSE_Sign1 is not an array",
            "bstr" => "a COSE_Sign1 field that must be a byte string is not",
            "map" => "a header is not a map",
            _ => "unexpected CBOR item in the COSE_Sign1",
        },
        E::UnregisteredIanaValue | E::UnregisteredIanaNonPrivateValue => {
            "a header uses an unregistered IANA value"
        }
        E::EncodeFailed => "encoding failed",
    })
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Integer(_) => "an integer",
        Value::Bytes(_) => "a byte string",
        Value::Float(_) => "a float",
        Value::Text(_) => "a text string",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Tag(..) => "another tag",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "an unknown item",
    }
}

fn bytes32(key: u8, value: Value) -> Result<Measurement, ClaimError> {
    match value {
        Value::Bytes(bytes) => bytes
            .try_into()
            .map(Measurement)
            .map_err(|_| ClaimError::Invalid {
                key,
                expected: "a 32-byte byte string",
            }),
        _ => Err(ClaimError::Invalid {
            key,
            expected: "a 32-byte byte string",
        }),
    }
}

fn parse_claims(payload: &[u8]) -> Result<Report, ClaimError> {
    let Ok(value) = Value::from_slice(payload) else {
        return Err(ClaimError::NotCbor);
    };
    let Value::Map(entries) = value else {
        return Err(ClaimError::NotAMap);
    };
    let mut measurement = None;
    let mut nonce = None;
    let mut version = None;
    let mut hypervisor = None;
    let mut flags = None;
    fn set<T>(slot: &mut Option<T>, key: u8, value: T) -> Result<(), ClaimError> {
        if slot.replace(value).is_some() {
            return Err(ClaimError::Duplicate(key));
        }
        Ok(())
    }
    for (key, value) in entries {
        let number = match &key {
            Value::Integer(i) => u8::try_from(i128::from(*i))
                .ok()
                .filter(|k| (1..=5).contains(k)),
            _ => None,
        };
        let Some(number) = number else {
            return Err(ClaimError::UnknownKey(match key {
                Value::Integer(i) => i128::from(i).to_string(),
                other => value_kind(&other).to_string(),
            }));
        };
        match number {
            claim::MEASUREMENT => set(&mut measurement, number, bytes32(number, value)?)?,
            claim::NONCE => match value {
                Value::Bytes(bytes) if bytes.len() <= MAX_NONCE_LEN => {
                    set(&mut nonce, number, bytes)?;
                }
                _ => {
                    return Err(ClaimError::Invalid {
                        key: number,
                        expected: "a byte string of at most 64 bytes",
                    });
                }
            },
            claim::HYPERVISOR_VERSION => match value {
                Value::Text(text) if text.len() <= MAX_VERSION_LEN => {
                    set(&mut version, number, text)?;
                }
                _ => {
                    return Err(ClaimError::Invalid {
                        key: number,
                        expected: "a text string of at most 64 bytes",
                    });
                }
            },
            claim::HYPERVISOR_MEASUREMENT => {
                set(&mut hypervisor, number, bytes32(number, value)?)?;
            }
            _ => {
                let bits = match value {
                    Value::Integer(i) => u32::try_from(i128::from(i)).ok(),
                    _ => None,
                }
                .and_then(VmFlags::from_bits)
                .ok_or(ClaimError::Invalid {
                    key: number,
                    expected: "an unsigned integer with only bits 0 and 1 defined",
                })?;
                set(&mut flags, number, bits)?;
            }
        }
    }
    Ok(Report {
        measurement: measurement.ok_or(ClaimError::Missing(claim::MEASUREMENT))?,
        nonce: nonce.ok_or(ClaimError::Missing(claim::NONCE))?,
        hypervisor_version: version.ok_or(ClaimError::Missing(claim::HYPERVISOR_VERSION))?,
        hypervisor_measurement: hypervisor
            .ok_or(ClaimError::Missing(claim::HYPERVISOR_MEASUREMENT))?,
        flags: flags.ok_or(ClaimError::Missing(claim::VM_FLAGS))?,
    })
}

/// Verifies a report: its structure, that the protected header says EdDSA,
/// its signature with `attestation_key`, its claims, and that its
/// measurement (if `expected_measurement` is given) and nonce are the ones
/// expected.
///
/// # Errors
///
/// The first [`ReportError`], checked in that order.
pub fn verify_report(
    bytes: &[u8],
    attestation_key: &[u8; 32],
    expected_measurement: Option<&[u8; 32]>,
    nonce: &[u8],
) -> Result<Report, ReportError> {
    if nonce.len() > MAX_NONCE_LEN {
        return Err(ReportError::NonceTooLong(nonce.len()));
    }
    let key = VerifyingKey::from_bytes(attestation_key)
        .ok()
        // A small-order point verifies nothing under `verify_strict`: it is
        // an invalid key, not a bad signature.
        .filter(|key| !key.is_weak())
        .ok_or(ReportError::BadPublicKey)?;
    if bytes.len() > MAX_REPORT_SIZE {
        return Err(ReportError::TooLarge(bytes.len()));
    }
    let value = Value::from_slice(bytes).map_err(|e| cose_error(&e))?;
    let inner = match value {
        Value::Tag(tag, inner) if tag == iana::CborTag::CoseSign1 as u64 => *inner,
        Value::Tag(tag, _) => return Err(ReportError::WrongTag(tag)),
        other => return Err(ReportError::NotCoseSign1(value_kind(&other))),
    };
    let sign1 = CoseSign1::from_cbor_value(inner).map_err(|e| cose_error(&e))?;
    match &sign1.protected.header.alg {
        Some(Algorithm::Assigned(iana::Algorithm::EdDSA)) => {}
        None => return Err(ReportError::MissingAlgorithm),
        Some(other) => {
            let name = match other {
                Algorithm::Assigned(a) => alloc::format!("{}", iana::EnumI64::to_i64(a)),
                Algorithm::PrivateUse(i) => alloc::format!("{i}"),
                Algorithm::Text(t) => alloc::format!("{t:?}"),
            };
            return Err(ReportError::WrongAlgorithm(name));
        }
    }
    if !sign1.protected.header.crit.is_empty() {
        return Err(ReportError::UnknownCritical);
    }
    if sign1.payload.is_none() {
        return Err(ReportError::MissingPayload);
    }
    sign1.verify_signature(b"", |signature, tbs| {
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| ReportError::BadSignature)?;
        key.verify_strict(tbs, &Signature::from_bytes(&signature))
            .map_err(|_| ReportError::BadSignature)
    })?;
    let report = parse_claims(sign1.payload.as_deref().unwrap_or_default())?;
    if let Some(expected) = expected_measurement
        && report.measurement.0 != *expected
    {
        return Err(ReportError::MeasurementMismatch {
            expected: Measurement(*expected),
            found: report.measurement,
        });
    }
    if report.nonce != nonce {
        return Err(ReportError::NonceMismatch);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceSecret;

    fn secret() -> DeviceSecret {
        DeviceSecret::from_bytes(&[0x11; 32])
    }

    fn claims() -> Claims<'static> {
        Claims {
            measurement: Measurement([0xaa; 32]),
            nonce: b"challenge-1234",
            hypervisor_version: "rampart 0.1.0",
            hypervisor_measurement: Measurement([0xbb; 32]),
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
        }
    }

    fn public() -> [u8; 32] {
        secret().attestation_key().public_key().to_bytes()
    }

    fn report() -> Vec<u8> {
        build_report(&claims(), &secret().attestation_key()).unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = report();
        let parsed =
            verify_report(&bytes, &public(), Some(&[0xaa; 32]), b"challenge-1234").unwrap();
        assert_eq!(
            parsed,
            Report {
                measurement: Measurement([0xaa; 32]),
                nonce: b"challenge-1234".to_vec(),
                hypervisor_version: "rampart 0.1.0".into(),
                hypervisor_measurement: Measurement([0xbb; 32]),
                flags: claims().flags,
            }
        );
        assert_eq!(
            verify_report(&bytes, &public(), None, b"challenge-1234"),
            Ok(parsed)
        );
        assert_eq!(bytes, report(), "deterministic");
    }

    #[test]
    fn encoding_is_as_documented() {
        let bytes = report();
        // Tag 18, array of 4, protected = bstr(3) { 1: -8 }, unprotected {}.
        assert_eq!(&bytes[..7], &[0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27, 0xa0]);
        let Value::Tag(18, inner) = Value::from_slice(&bytes).unwrap() else {
            panic!()
        };
        let Value::Array(items) = *inner else {
            panic!()
        };
        let Value::Bytes(payload) = &items[2] else {
            panic!()
        };
        let Value::Map(map) = Value::from_slice(payload).unwrap() else {
            panic!()
        };
        let keys: Vec<i128> = map
            .iter()
            .map(|(k, _)| i128::from(k.as_integer().unwrap()))
            .collect();
        assert_eq!(keys, [1, 2, 3, 4, 5]);
        assert_eq!(map[4].1, Value::from(1u32));
        let Value::Bytes(signature) = &items[3] else {
            panic!()
        };
        assert_eq!(signature.len(), 64);
    }

    #[test]
    fn largest_report_fits() {
        let nonce = [0xff; MAX_NONCE_LEN];
        let version = "v".repeat(MAX_VERSION_LEN);
        let bytes = build_report(
            &Claims {
                nonce: &nonce,
                hypervisor_version: &version,
                flags: VmFlags {
                    protected: true,
                    debug: true,
                    realm: false,
                },
                ..claims()
            },
            &secret().attestation_key(),
        )
        .unwrap();
        assert_eq!(bytes.len(), 282, "update MAX_REPORT_SIZE's documentation");
        assert!(bytes.len() <= MAX_REPORT_SIZE);
        assert_eq!(
            build_report(
                &Claims {
                    nonce: &[0; 65],
                    ..claims()
                },
                &secret().attestation_key()
            ),
            Err(ReportError::NonceTooLong(65))
        );
        let long = "v".repeat(65);
        assert_eq!(
            build_report(
                &Claims {
                    hypervisor_version: &long,
                    ..claims()
                },
                &secret().attestation_key()
            ),
            Err(ReportError::VersionTooLong(65))
        );
    }

    #[test]
    fn mismatches() {
        let bytes = report();
        assert_eq!(
            verify_report(&bytes, &public(), Some(&[0xab; 32]), b"challenge-1234"),
            Err(ReportError::MeasurementMismatch {
                expected: Measurement([0xab; 32]),
                found: Measurement([0xaa; 32])
            })
        );
        assert_eq!(
            verify_report(&bytes, &public(), None, b"challenge-1235"),
            Err(ReportError::NonceMismatch)
        );
        assert_eq!(
            verify_report(&bytes, &public(), None, b""),
            Err(ReportError::NonceMismatch)
        );
        let other = DeviceSecret::from_bytes(&[0x12; 32])
            .attestation_key()
            .public_key()
            .to_bytes();
        assert_eq!(
            verify_report(&bytes, &other, None, b"challenge-1234"),
            Err(ReportError::BadSignature)
        );
        assert_eq!(
            verify_report(&bytes, &public(), None, &[0; 65]),
            Err(ReportError::NonceTooLong(65))
        );
        assert_eq!(
            verify_report(&[0; 513], &public(), None, b""),
            Err(ReportError::TooLarge(513))
        );
    }

    #[test]
    fn truncated_at_every_length() {
        let bytes = report();
        for len in 0..bytes.len() {
            assert_eq!(
                verify_report(&bytes[..len], &public(), None, b"challenge-1234"),
                Err(ReportError::BadCbor("malformed or truncated CBOR")),
                "length {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            verify_report(&longer, &public(), None, b"challenge-1234"),
            Err(ReportError::BadCbor("bytes follow the COSE_Sign1"))
        );
    }

    #[test]
    fn one_flipped_byte_anywhere_is_an_error() {
        let bytes = report();
        for at in 0..bytes.len() {
            // Most flips cost an Ed25519 verification, slow in a debug
            // build: several masks only over the CBOR framing and headers.
            let masks: &[u8] = if at < 16 {
                &[0x01, 0x20, 0x80, 0xff]
            } else {
                &[0x01]
            };
            for &mask in masks {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                let error = verify_report(&bad, &public(), Some(&[0xaa; 32]), b"challenge-1234")
                    .expect_err("a changed report must not verify");
                // Everything after the headers is covered by the signature.
                if at >= 10 && !matches!(error, ReportError::BadCbor(_)) {
                    assert_eq!(error, ReportError::BadSignature, "byte {at} ^ {mask:#x}");
                }
            }
        }
    }

    /// Signs arbitrary COSE_Sign1 contents with the real key.
    fn forge(protected: coset::Header, payload: Vec<u8>) -> Vec<u8> {
        let key = secret().attestation_key();
        CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |tbs| key.signing_key().sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .unwrap()
    }

    fn eddsa() -> coset::Header {
        HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .build()
    }

    fn payload(entries: Vec<(Value, Value)>) -> Vec<u8> {
        Value::Map(entries).to_vec().unwrap()
    }

    fn good_entries() -> Vec<(Value, Value)> {
        alloc::vec![
            (Value::from(1), Value::Bytes([0xaa; 32].to_vec())),
            (Value::from(2), Value::Bytes(b"n".to_vec())),
            (Value::from(3), Value::Text("v".into())),
            (Value::from(4), Value::Bytes([0xbb; 32].to_vec())),
            (Value::from(5), Value::from(0)),
        ]
    }

    use coset::TaggedCborSerializable;

    #[test]
    fn header_and_claim_errors() {
        let check = |bytes: Vec<u8>| verify_report(&bytes, &public(), None, b"n");
        assert!(check(forge(eddsa(), payload(good_entries()))).is_ok());
        assert_eq!(
            check(forge(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::ES256)
                    .build(),
                payload(good_entries())
            )),
            Err(ReportError::WrongAlgorithm("-7".into()))
        );
        assert_eq!(
            check(forge(HeaderBuilder::new().build(), payload(good_entries()))),
            Err(ReportError::MissingAlgorithm)
        );
        assert_eq!(
            check(forge(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::EdDSA)
                    .add_critical(iana::HeaderParameter::ContentType)
                    .build(),
                payload(good_entries())
            )),
            Err(ReportError::UnknownCritical)
        );
        // Untagged, and tagged with another tag.
        let untagged = CoseSign1Builder::new()
            .protected(eddsa())
            .payload(payload(good_entries()))
            .build()
            .to_vec()
            .unwrap();
        assert_eq!(check(untagged), Err(ReportError::NotCoseSign1("an array")));
        let mut wrong_tag = forge(eddsa(), payload(good_entries()));
        wrong_tag[0] = 0xd1; // tag 17, COSE_Mac0
        assert_eq!(check(wrong_tag), Err(ReportError::WrongTag(17)));

        let claim = |entries: Vec<(Value, Value)>| check(forge(eddsa(), payload(entries)));
        let mut e = good_entries();
        e.pop();
        assert_eq!(claim(e), Err(ClaimError::Missing(5).into()));
        let mut e = good_entries();
        e.push((Value::from(6), Value::from(0)));
        assert_eq!(claim(e), Err(ClaimError::UnknownKey("6".into()).into()));
        let mut e = good_entries();
        e.push((Value::from(2), Value::Bytes(b"n".to_vec())));
        assert_eq!(claim(e), Err(ClaimError::Duplicate(2).into()));
        let mut e = good_entries();
        e[0].1 = Value::Bytes([0; 31].to_vec());
        assert_eq!(
            claim(e),
            Err(ClaimError::Invalid {
                key: 1,
                expected: "a 32-byte byte string"
            }
            .into())
        );
        let mut e = good_entries();
        e[4].1 = Value::from(4);
        assert!(matches!(
            claim(e),
            Err(ReportError::BadClaims(ClaimError::Invalid { key: 5, .. }))
        ));
        let mut e = good_entries();
        e[2].1 = Value::Bytes(b"v".to_vec());
        assert!(matches!(
            claim(e),
            Err(ReportError::BadClaims(ClaimError::Invalid { key: 3, .. }))
        ));
        let mut e = good_entries();
        e[0].0 = Value::Text("1".into());
        assert_eq!(
            claim(e),
            Err(ClaimError::UnknownKey("a text string".into()).into())
        );
        assert_eq!(
            check(forge(
                eddsa(),
                Value::Array(alloc::vec![]).to_vec().unwrap()
            )),
            Err(ClaimError::NotAMap.into())
        );
        assert_eq!(
            check(forge(eddsa(), alloc::vec![0xff])),
            Err(ClaimError::NotCbor.into())
        );
    }

    #[test]
    fn bad_public_key() {
        // Not a point on the curve (y = 2 has no x).
        let mut bad = [0; 32];
        bad[0] = 2;
        assert_eq!(
            verify_report(&report(), &bad, None, b"challenge-1234"),
            Err(ReportError::BadPublicKey)
        );
        // The identity (y = 1), a valid encoding of a small-order point:
        // no signature verifies with it, and that is the key's fault.
        let mut identity = [0; 32];
        identity[0] = 1;
        assert_eq!(
            verify_report(&report(), &identity, None, b"challenge-1234"),
            Err(ReportError::BadPublicKey)
        );
    }
}
