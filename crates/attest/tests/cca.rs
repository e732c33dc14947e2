//! CCA attestation tokens: round trip, tampering, binding, expected values,
//! known-answer vectors for the key derivation, and an independent decode
//! of the token with plain `ciborium` (not the code under test).

use coset::cbor::value::Value;
use proptest::prelude::*;
use rampart_attest::cca::{self, *};
use rampart_attest::{DeviceSecret, Measurement};

const SECRET: [u8; 32] = [0x42; 32];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn platform_claims(hyp: Measurement) -> PlatformClaims<'static> {
    PlatformClaims {
        implementation_id: RAMPART_IMPLEMENTATION_ID,
        config: b"rampart",
        lifecycle: LIFECYCLE_SECURED,
        hypervisor_measurement: hyp,
        hypervisor_version: "rampart 0.1.0",
        hypervisor_signer_id: [0x5e; 32],
        verification_service: "https://verifier.example/rampart",
    }
}

fn realm_claims(challenge: &[u8], rim: Measurement) -> RealmClaims {
    RealmClaims {
        challenge: pad_challenge(challenge).unwrap(),
        personalization_value: [0x11; 64],
        initial_measurement: rim,
        extensible_measurements: [[1; 32], [2; 32], [3; 32], [4; 32]],
    }
}

struct Fixture {
    iak: PlatformKey,
    rak: RealmKey,
    token: Vec<u8>,
    challenge: Vec<u8>,
    rim: Measurement,
    hyp: Measurement,
}

fn fixture() -> Fixture {
    let secret = DeviceSecret::from_bytes(&SECRET);
    let iak = secret.cca_platform_key().unwrap();
    let rak = secret.cca_realm_key(&[7; 32]).unwrap();
    let challenge: Vec<u8> = (0..48).collect();
    let rim = Measurement([0xaa; 32]);
    let hyp = Measurement([0xbb; 32]);
    let token = build_cca_token(
        &realm_claims(&challenge, rim),
        &rak,
        &platform_claims(hyp),
        &iak,
    )
    .unwrap();
    Fixture {
        iak,
        rak,
        token,
        challenge,
        rim,
        hyp,
    }
}

fn verify_all(f: &Fixture, token: &[u8]) -> Result<CcaToken, CcaError> {
    let key = f.iak.public_key();
    verify_cca_token(
        token,
        &CcaExpected {
            platform_key: &key,
            challenge: Some(&f.challenge),
            initial_measurement: Some(&f.rim),
            hypervisor_measurement: Some(&f.hyp),
        },
    )
}

#[test]
fn key_derivation_known_answers() {
    // Computed independently with Python's `cryptography` 48.0 (its own
    // HKDF and P-384): HKDF-SHA256(IKM = 0x42 * 32, salt none,
    // info = label || counter 0, L = 48) as a big-endian scalar, times G.
    let secret = DeviceSecret::from_bytes(&SECRET);
    assert_eq!(
        hex(&public_key_bytes(
            &secret.cca_platform_key().unwrap().public_key()
        )),
        "0454be9d2de5c0b1a075d74fac3eb95a7ebbefc361fb4764165dc2cc415124eefbc65e3c6bdf4865925d994fe63c935618b3347957f73b3c538ee81bec34fdf3dab98e7b6012548f99a5e746a2e29dd9a3284f146c59952e6ecec1e014a6d3b84d"
    );
    assert_eq!(
        hex(&public_key_bytes(
            &secret.cca_realm_key(&[7; 32]).unwrap().public_key()
        )),
        "04b827540826fceca2ba00b9b1dfea57ecb4fe0fa6b5c1acbfe98c453c67d826f9c0b18d969356b2e46d59c042e70400f0bb94fb239fff2e7196b032863492f82c37c1cada929eeec8c0e984827151f5114087f71f1484b8d3f265fd3483c6345c"
    );
    // Another boot value, another device: other keys.
    assert_ne!(
        secret.cca_realm_key(&[8; 32]).unwrap().public_key(),
        secret.cca_realm_key(&[7; 32]).unwrap().public_key()
    );
    assert_ne!(
        DeviceSecret::from_bytes(&[0x43; 32])
            .cca_platform_key()
            .unwrap()
            .public_key(),
        secret.cca_platform_key().unwrap().public_key()
    );
    // Not printed.
    assert!(
        format!("{:?}", secret.cca_platform_key().unwrap()).starts_with("PlatformKey(public 04")
    );
}

#[test]
fn realm_key_from_scalar() {
    assert_eq!(
        RealmKey::from_scalar(&[0; 48]).unwrap_err(),
        CcaError::BadPrivateKey
    );
    assert_eq!(
        RealmKey::from_scalar(&[0xff; 48]).unwrap_err(),
        CcaError::BadPrivateKey
    );
    let mut one = [0; 48];
    one[47] = 1;
    // 1 * G: the generator's x coordinate.
    assert!(
        hex(&public_key_bytes(&RealmKey::from_scalar(&one).unwrap().public_key()))
            .starts_with("04aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7")
    );
}

#[test]
fn round_trip_and_fields() {
    let f = fixture();
    assert!(is_cca_token(&f.token));
    assert!(f.token.len() < 1400, "{}", f.token.len());
    let t = verify_all(&f, &f.token).unwrap();
    assert_eq!(t.realm.claims, realm_claims(&f.challenge, f.rim));
    assert_eq!(t.realm.public_key, public_key_bytes(&f.rak.public_key()));
    assert_eq!(t.platform.instance_id, instance_id(&f.iak.public_key()));
    assert_eq!(t.platform.lifecycle, LIFECYCLE_SECURED);
    assert_eq!(t.platform.config, b"rampart");
    let hyp = t.platform.hypervisor_component().unwrap();
    assert_eq!(hyp.measurement, f.hyp);
    assert_eq!(hyp.version.as_deref(), Some("rampart 0.1.0"));
    assert_eq!(hyp.signer_id, [0x5e; 32]);
    // Deterministic.
    assert_eq!(f.token, fixture().token);
    // Without expectations it verifies too.
    let key = f.iak.public_key();
    let expect_nothing = CcaExpected {
        platform_key: &key,
        challenge: None,
        initial_measurement: None,
        hypervisor_measurement: None,
    };
    assert_eq!(verify_cca_token(&f.token, &expect_nothing).unwrap(), t);
}

/// An independent decode with `ciborium` (no code from `cca.rs`): the
/// structure and values are the specification's.
#[test]
fn independent_decode() {
    let f = fixture();
    let value: Value = ciborium::de::from_reader(f.token.as_slice()).unwrap();
    let Value::Tag(399, inner) = value else {
        panic!("no tag 399")
    };
    let Value::Map(collection) = *inner else {
        panic!()
    };
    assert_eq!(collection.len(), 2);
    let get = |map: &[(Value, Value)], key: i64| {
        map.iter()
            .find(|(k, _)| *k == Value::from(key))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no key {key}"))
    };
    type Opened = (Vec<(Value, Value)>, Vec<u8>, Vec<u8>, Vec<u8>);
    let open = |bytes: Value| -> Opened {
        let bytes = bytes.into_bytes().unwrap();
        let v: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        let Value::Tag(18, a) = v else { panic!() };
        let a = a.into_array().unwrap();
        assert_eq!(a.len(), 4);
        let protected = a[0].as_bytes().unwrap().clone();
        assert_eq!(protected, [0xa1, 0x01, 0x38, 0x22]); // {1: -35}
        assert_eq!(a[1], Value::Map(vec![]));
        let payload = a[2].as_bytes().unwrap().clone();
        let sig = a[3].as_bytes().unwrap().clone();
        assert_eq!(sig.len(), 96);
        let claims: Value = ciborium::de::from_reader(payload.as_slice()).unwrap();
        (claims.into_map().unwrap(), protected, payload, sig)
    };
    let (realm, rp, rpayload, rsig) = open(get(&collection, 44241));
    let (platform, pp, ppayload, psig) = open(get(&collection, 44234));
    assert_eq!(realm.len(), 7);
    let mut challenge = f.challenge.clone();
    challenge.resize(64, 0);
    assert_eq!(get(&realm, 10), Value::Bytes(challenge));
    assert_eq!(get(&realm, 44235), Value::Bytes(vec![0x11; 64]));
    assert_eq!(get(&realm, 44236), Value::Text("sha-256".into()));
    assert_eq!(get(&realm, 44238), Value::Bytes(vec![0xaa; 32]));
    assert_eq!(
        get(&realm, 44239),
        Value::Array((1..=4).map(|i| Value::Bytes(vec![i; 32])).collect())
    );
    assert_eq!(get(&realm, 44240), Value::Text("sha-256".into()));
    let rak = get(&realm, 44237).into_bytes().unwrap();
    assert_eq!(rak.len(), 97);
    assert_eq!(rak[0], 4);

    use sha2::{Digest, Sha256};
    assert_eq!(
        get(&platform, 10),
        Value::Bytes(Sha256::digest(&rak).to_vec())
    );
    assert_eq!(
        get(&platform, 265),
        Value::Text("http://arm.com/CCA-SSD/1.0.0".into())
    );
    assert_eq!(get(&platform, 2395), Value::from(0x3000));
    let inst = get(&platform, 256).into_bytes().unwrap();
    assert_eq!(inst.len(), 33);
    assert_eq!(inst[0], 1);
    let iak = public_key_bytes(&f.iak.public_key());
    assert_eq!(inst[1..], Sha256::digest(iak)[..]);
    let components = get(&platform, 2399).into_array().unwrap();
    let rampart = components[0].as_map().unwrap();
    assert_eq!(get(rampart, 1), Value::Text("rampart".into()));
    assert_eq!(get(rampart, 2), Value::Bytes(vec![0xbb; 32]));
    assert_eq!(get(rampart, 6), Value::Text("sha-256".into()));

    // Both signatures verify with p384 over RFC 9052's Sig_structure,
    // built here by hand.
    use p384::ecdsa::signature::Verifier;
    let check = |key: &p384::ecdsa::VerifyingKey, protected: &[u8], payload: &[u8], sig: &[u8]| {
        let tbs = Value::Array(vec![
            Value::Text("Signature1".into()),
            Value::Bytes(protected.to_vec()),
            Value::Bytes(vec![]),
            Value::Bytes(payload.to_vec()),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&tbs, &mut bytes).unwrap();
        let sig = p384::ecdsa::Signature::from_slice(sig).unwrap();
        key.verify(&bytes, &sig).is_ok()
    };
    let rak_key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&rak).unwrap();
    assert!(check(&rak_key, &rp, &rpayload, &rsig));
    assert!(check(&f.iak.public_key(), &pp, &ppayload, &psig));
    assert!(!check(&f.iak.public_key(), &rp, &rpayload, &rsig));
}

#[test]
fn every_flipped_byte_fails() {
    let f = fixture();
    let mut token = f.token.clone();
    for i in 0..token.len() {
        for bit in [0x01u8, 0x80] {
            token[i] ^= bit;
            assert!(
                verify_all(&f, &token).is_err(),
                "flipping {bit:#x} at byte {i} of {} still verifies",
                token.len()
            );
            token[i] ^= bit;
        }
    }
    // Truncated or extended: refused.
    for len in 0..token.len() {
        assert!(verify_all(&f, &token[..len]).is_err(), "truncated to {len}");
    }
    let mut longer = token.clone();
    longer.push(0);
    assert!(matches!(
        verify_all(&f, &longer),
        Err(CcaError::NotCcaToken(_) | CcaError::NonCanonical(cca::Part::Collection))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_flip_fails(index in any::<prop::sample::Index>(), xor in 1u8..) {
        let f = fixture();
        let mut token = f.token.clone();
        let i = index.index(token.len());
        token[i] ^= xor;
        prop_assert!(verify_all(&f, &token).is_err());
    }

    #[test]
    fn round_trip_any_claims(
        challenge in proptest::collection::vec(any::<u8>(), 32..=64),
        perso in any::<[u8; 32]>(),
        rim in any::<[u8; 32]>(),
        hyp in any::<[u8; 32]>(),
        rems in any::<[[u8; 32]; 4]>(),
        boot in any::<[u8; 32]>(),
        lifecycle_minor in 0u16..=0xff,
    ) {
        let secret = DeviceSecret::from_bytes(&SECRET);
        let iak = secret.cca_platform_key().unwrap();
        let rak = secret.cca_realm_key(&boot).unwrap();
        let mut pv = [0; 64];
        pv[..32].copy_from_slice(&perso);
        let realm = RealmClaims {
            challenge: pad_challenge(&challenge).unwrap(),
            personalization_value: pv,
            initial_measurement: Measurement(rim),
            extensible_measurements: rems,
        };
        let mut platform = platform_claims(Measurement(hyp));
        platform.lifecycle = 0x3000 | lifecycle_minor;
        let token = build_cca_token(&realm, &rak, &platform, &iak).unwrap();
        let key = iak.public_key();
        let t = verify_cca_token(&token, &CcaExpected {
            platform_key: &key,
            challenge: Some(&challenge),
            initial_measurement: Some(&Measurement(rim)),
            hypervisor_measurement: Some(&Measurement(hyp)),
        }).unwrap();
        prop_assert_eq!(t.realm.claims, realm);
        prop_assert_eq!(t.platform.lifecycle, platform.lifecycle);
        // Another challenge of the same length: refused.
        let mut other = challenge.clone();
        other[0] ^= 1;
        prop_assert_eq!(verify_cca_token(&token, &CcaExpected {
            platform_key: &key,
            challenge: Some(&other),
            initial_measurement: None,
            hypervisor_measurement: None,
        }).unwrap_err(), CcaError::ChallengeMismatch);
    }
}

#[test]
fn platform_token_for_another_realm_key_fails_binding() {
    let f = fixture();
    let secret = DeviceSecret::from_bytes(&SECRET);
    let other_rak = secret.cca_realm_key(&[9; 32]).unwrap();
    // A platform token honestly signed by the IAK, but for another RAK,
    // paired with a realm token the first RAK signed.
    let platform =
        cca::build_platform_token(&platform_claims(f.hyp), &other_rak.public_key(), &f.iak)
            .unwrap();
    let realm = cca::build_realm_token(&realm_claims(&f.challenge, f.rim), &f.rak).unwrap();
    let token = cca::assemble_cca_token(&platform, &realm).unwrap();
    assert_eq!(verify_all(&f, &token).unwrap_err(), CcaError::Binding);
    // The same pair with the right platform token verifies.
    let platform =
        cca::build_platform_token(&platform_claims(f.hyp), &f.rak.public_key(), &f.iak).unwrap();
    let token = cca::assemble_cca_token(&platform, &realm).unwrap();
    verify_all(&f, &token).unwrap();
}

#[test]
fn wrong_expectations_fail_with_named_errors() {
    let f = fixture();
    let key = f.iak.public_key();
    let base = CcaExpected {
        platform_key: &key,
        challenge: Some(&f.challenge),
        initial_measurement: Some(&f.rim),
        hypervisor_measurement: Some(&f.hyp),
    };
    let other: Vec<u8> = (1..49).collect();
    assert_eq!(
        verify_cca_token(
            &f.token,
            &CcaExpected {
                challenge: Some(&other),
                ..base
            }
        )
        .unwrap_err(),
        CcaError::ChallengeMismatch
    );
    // The same challenge padded by the verifier itself is accepted.
    let mut padded = f.challenge.clone();
    padded.resize(64, 0);
    verify_cca_token(
        &f.token,
        &CcaExpected {
            challenge: Some(&padded),
            ..base
        },
    )
    .unwrap();
    assert_eq!(
        verify_cca_token(
            &f.token,
            &CcaExpected {
                challenge: Some(&[0; 31]),
                ..base
            }
        )
        .unwrap_err(),
        CcaError::ChallengeLength(31)
    );
    let bad = Measurement([0xab; 32]);
    assert_eq!(
        verify_cca_token(
            &f.token,
            &CcaExpected {
                initial_measurement: Some(&bad),
                ..base
            }
        )
        .unwrap_err(),
        CcaError::InitialMeasurementMismatch {
            expected: bad,
            found: f.rim
        }
    );
    assert_eq!(
        verify_cca_token(
            &f.token,
            &CcaExpected {
                hypervisor_measurement: Some(&bad),
                ..base
            }
        )
        .unwrap_err(),
        CcaError::HypervisorMeasurementMismatch {
            expected: bad,
            found: f.hyp
        }
    );
    let other_key = DeviceSecret::from_bytes(&[1; 32])
        .cca_platform_key()
        .unwrap()
        .public_key();
    assert_eq!(
        verify_cca_token(
            &f.token,
            &CcaExpected {
                platform_key: &other_key,
                ..base
            }
        )
        .unwrap_err(),
        CcaError::PlatformSignature
    );
    let text = CcaError::Binding.to_string();
    assert!(text.contains("SHA-256 of the realm public key"), "{text}");
}

#[test]
fn build_rejects_bad_inputs() {
    let f = fixture();
    assert_eq!(
        pad_challenge(&[0; 31]).unwrap_err(),
        CcaError::ChallengeLength(31)
    );
    assert_eq!(
        pad_challenge(&[0; 65]).unwrap_err(),
        CcaError::ChallengeLength(65)
    );
    let mut p = platform_claims(f.hyp);
    p.lifecycle = 0x7000;
    assert_eq!(
        cca::build_platform_token(&p, &f.rak.public_key(), &f.iak).unwrap_err(),
        CcaError::Lifecycle(0x7000)
    );
    let mut p = platform_claims(f.hyp);
    p.config = &[0; 65];
    assert!(matches!(
        cca::build_platform_token(&p, &f.rak.public_key(), &f.iak),
        Err(CcaError::FieldTooLong {
            field: "config",
            ..
        })
    ));
    // Garbage and a Rampart report are not CCA tokens.
    assert!(!is_cca_token(&[0xd2, 0x84]));
    assert!(matches!(
        verify_all(&f, &[0xd2, 0x84, 0x40]),
        Err(CcaError::NotCcaToken(_))
    ));
    assert!(matches!(
        verify_all(&f, &[0u8; 5000]),
        Err(CcaError::TooLarge(5000))
    ));
}
