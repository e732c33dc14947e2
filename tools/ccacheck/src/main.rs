//! `ccacheck`: Rampart's CCA attestation tokens checked by an independent
//! verifier, Veraison's `ccatoken` crate (its own CBOR decoder, `cose-rust`
//! and OpenSSL for the signatures), given only Rampart's platform public key.
//!
//! Without arguments (the `ccacheck` case of `cargo xtask test`):
//! - tokens built with `rampart-attest` from the development device secret
//!   and fixed inputs: `ccatoken` accepts the good one (both signatures, the
//!   binding, the claims as built) and refuses a token signed by another
//!   platform key, one whose platform token vouches for another realm key,
//!   and the good one with one byte flipped at each of nine places;
//! - a token the Debian Linux realm guest read from configfs-tsm
//!   (`testdata/linux-realm-token.*`, kept with the platform key, challenge,
//!   RIM and hypervisor measurement of its run): accepted with every
//!   expectation checked (appraisal included), refused with one byte
//!   flipped at each place, and refused for a wrong challenge, RIM,
//!   hypervisor measurement or platform key.
//!
//! `ccacheck verify --token FILE --platform-key HEX [--challenge HEX]
//! [--rim HEX] [--hypervisor-measurement HEX] [--flips]` checks one token
//! (the `linux-realm` case gives it the live guest's): accepted by ccatoken
//! and rampart-attest, and with `--flips` refused by both at each place.
//!
//! Prints `ccacheck: N passed, 0 failed` and exits 0, or names the first
//! failed check and exits 1 (2 for bad arguments).

mod appraise;

use base64::Engine;
use ccatoken::store::{Cpak, MemoTrustAnchorStore};
use ccatoken::token::Evidence;
use ear::claim::{CRYPTO_VALIDATION_FAILED, TRUSTWORTHY_INSTANCE};
use rampart_attest::cca::{self, PlatformClaims, RealmClaims};
use rampart_attest::{CcaPublicKey, DeviceSecret, Measurement};

/// QEMU's development device secret (`xtask`'s default; never a real one).
const DEVICE_SECRET: [u8; 32] = [0x5a; 32];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.is_ascii() {
        return Err("not hex".into());
    }
    if !text.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// What ccatoken concluded.
struct Verdict {
    platform_trustworthy: bool,
    realm_trustworthy: bool,
    crypto_failed: bool,
    evidence: Evidence,
}

/// Decodes and verifies `token` with ccatoken, the platform key given
/// through the JSON trust-anchor store, as a Veraison deployment does.
fn ccatoken_verify(token: &[u8], key: &CcaPublicKey) -> Result<Verdict, String> {
    let mut evidence =
        Evidence::decode(&token.to_vec()).map_err(|e| format!("ccatoken decode: {e:?}"))?;
    let mut store = MemoTrustAnchorStore::new();
    store
        .load_json(&appraise::trust_anchors(
            key,
            &evidence.platform_claims.impl_id,
        ))
        .map_err(|e| format!("ccatoken trust anchors: {e:?}"))?;
    evidence
        .verify(&store)
        .map_err(|e| format!("ccatoken verify: {e:?}"))?;
    let (platform, realm) = evidence.get_trust_vectors();
    let tiers = |v: &ear::TrustVector| {
        [
            v.instance_identity.get(),
            v.configuration.get(),
            v.executables.get(),
            v.file_system.get(),
            v.hardware.get(),
            v.runtime_opaque.get(),
            v.storage_opaque.get(),
            v.sourced_data.get(),
        ]
    };
    Ok(Verdict {
        platform_trustworthy: platform.instance_identity.get() == TRUSTWORTHY_INSTANCE,
        realm_trustworthy: realm.instance_identity.get() == TRUSTWORTHY_INSTANCE,
        crypto_failed: tiers(&platform)
            .into_iter()
            .chain(tiers(&realm))
            .any(|t| t == CRYPTO_VALIDATION_FAILED),
        evidence,
    })
}

struct Checks {
    passed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: &str) {
        if ok {
            println!("ccacheck: ok   {name}");
            self.passed += 1;
        } else {
            println!("ccacheck: FAIL {name}: {detail}");
            println!("ccacheck: {} passed, 1 failed", self.passed);
            std::process::exit(1);
        }
    }
}

fn accepted(v: &Result<Verdict, String>) -> bool {
    matches!(v, Ok(v) if v.platform_trustworthy && v.realm_trustworthy && !v.crypto_failed)
}

fn describe(v: &Result<Verdict, String>) -> String {
    match v {
        Ok(v) => format!(
            "platform trustworthy {}, realm trustworthy {}, crypto failure {}",
            v.platform_trustworthy, v.realm_trustworthy, v.crypto_failed
        ),
        Err(e) => e.clone(),
    }
}

/// Checks `token` against `expected` with ccatoken and rampart-attest: both
/// accept it; with `flips`, both refuse it with one byte flipped at each
/// place of [`appraise::flip_positions`], each refusal printed with
/// ccatoken's reason.
fn check_token(
    checks: &mut Checks,
    label: &str,
    token: &[u8],
    expected: &appraise::Expected,
    flips: bool,
) {
    let verdict = appraise::appraise(token, expected);
    let detail = match &verdict {
        Ok(a) => format!("checked {}; trust vectors: {}", a.checked, a.vectors),
        Err(e) => e.clone(),
    };
    checks.check(
        &format!("ccatoken accepts {label} ({} bytes): {detail}", token.len()),
        verdict.is_ok(),
        &detail,
    );
    let ours = appraise::rampart_verify(token, expected);
    checks.check(
        &format!("rampart-attest accepts {label} with the same expectations"),
        ours.is_ok(),
        &format!("{ours:?}"),
    );
    if !flips {
        return;
    }
    let positions = match appraise::flip_positions(token) {
        Ok(p) => p,
        Err(e) => {
            checks.check(&format!("the places to flip in {label}"), false, &e);
            return;
        }
    };
    for (place, offset) in positions {
        let mut flipped = token.to_vec();
        let Some(byte) = flipped.get_mut(offset) else {
            checks.check(
                &format!("{place} is inside {label}"),
                false,
                &format!("offset {offset}"),
            );
            return;
        };
        *byte ^= 1;
        let theirs = appraise::appraise(&flipped, expected);
        let ours = appraise::rampart_verify(&flipped, expected);
        let reason = match (&theirs, &ours) {
            (Err(t), Err(o)) => format!("ccatoken: {t}; rampart-attest: {o}"),
            (Ok(a), _) => format!("ccatoken ACCEPTED it ({})", a.checked),
            (_, Ok(())) => "rampart-attest ACCEPTED it".to_string(),
        };
        checks.check(
            &format!("{label}, one byte flipped in {place} (offset {offset}), refused: {reason}"),
            theirs.is_err() && ours.is_err(),
            &reason,
        );
    }
}

/// `--name VALUE` options; `--flips` takes no value.
fn parse_verify(args: &[String]) -> Result<(String, appraise::Expected, bool), String> {
    let mut token = None;
    let mut key = None;
    let mut challenge = None;
    let mut rim = None;
    let mut hypervisor = None;
    let mut flips = false;
    let digest = |name: &str, v: &str| -> Result<[u8; 32], String> {
        unhex(v)?
            .try_into()
            .map_err(|v: Vec<u8>| format!("{name}: {} bytes, want 32", v.len()))
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--flips" {
            flips = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--token" => token = Some(value.clone()),
            "--platform-key" => {
                let bytes = unhex(value).map_err(|e| format!("--platform-key: {e}"))?;
                key = Some(cca::public_key_from_bytes(&bytes).ok_or(
                    "--platform-key: not a SEC1 uncompressed P-384 point (194 hex digits)",
                )?);
            }
            "--challenge" => {
                let c = unhex(value).map_err(|e| format!("--challenge: {e}"))?;
                cca::pad_challenge(&c).map_err(|_| "--challenge: 32 to 64 bytes")?;
                challenge = Some(c);
            }
            "--rim" => rim = Some(digest("--rim", value)?),
            "--hypervisor-measurement" => {
                hypervisor = Some(digest("--hypervisor-measurement", value)?);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok((
        token.ok_or("--token is required")?,
        appraise::Expected {
            platform_key: key.ok_or("--platform-key is required")?,
            challenge,
            rim,
            hypervisor,
        },
        flips,
    ))
}

const USAGE: &str = "usage: ccacheck [verify --token FILE --platform-key HEX [--challenge HEX] \
                     [--rim HEX] [--hypervisor-measurement HEX] [--flips]]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut checks = Checks { passed: 0 };
    match args.split_first() {
        None => self_test(&mut checks),
        Some((verb, rest)) if verb == "verify" => {
            let (path, expected, flips) = parse_verify(rest).unwrap_or_else(|e| {
                eprintln!("ccacheck: {e}\n{USAGE}");
                std::process::exit(2)
            });
            let token = std::fs::read(&path).unwrap_or_else(|e| {
                eprintln!("ccacheck: {path}: {e}");
                std::process::exit(2)
            });
            check_token(&mut checks, "the token", &token, &expected, flips);
        }
        Some(_) => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
    println!("ccacheck: {} passed, 0 failed", checks.passed);
}

/// The Linux realm guest's configfs-tsm token saved from a
/// `linux-realm/smp2/vcpus2` run, and what that run expected of it.
const LINUX_TOKEN: &[u8] = include_bytes!("../testdata/linux-realm-token.cbor");
const LINUX_EXPECTED: &str = include_str!("../testdata/linux-realm-token.json");

/// The saved Linux token: accepted with every expectation, refused with a
/// flipped byte anywhere we flip one, and refused for each wrong expectation.
fn linux_fixture(checks: &mut Checks) {
    let json: serde_json::Value = serde_json::from_str(LINUX_EXPECTED).expect("fixture JSON");
    let field = |name: &str| {
        let text = json[name]
            .as_str()
            .unwrap_or_else(|| panic!("fixture JSON: no {name}"));
        unhex(text).unwrap_or_else(|e| panic!("fixture JSON: {name}: {e}"))
    };
    let digest = |name: &str| -> [u8; 32] {
        field(name)
            .try_into()
            .unwrap_or_else(|_| panic!("fixture JSON: {name} is not 32 bytes"))
    };
    let expected = appraise::Expected {
        platform_key: cca::public_key_from_bytes(&field("platform_key"))
            .expect("fixture platform key"),
        challenge: Some(field("challenge")),
        rim: Some(digest("rim")),
        hypervisor: Some(digest("hypervisor_measurement")),
    };
    check_token(
        checks,
        "the Linux realm guest's saved token",
        LINUX_TOKEN,
        &expected,
        true,
    );

    // Each expectation is enforced: change one and ccatoken's check refuses.
    let flip = |mut v: [u8; 32]| {
        v[0] ^= 1;
        v
    };
    let mut challenge = field("challenge");
    challenge[0] ^= 1;
    let other_key = DeviceSecret::from_bytes(&[0x01; 32])
        .cca_platform_key()
        .expect("platform key")
        .public_key();
    let wrong: [(&str, appraise::Expected); 4] = [
        (
            "another challenge",
            appraise::Expected {
                challenge: Some(challenge),
                ..clone_expected(&expected)
            },
        ),
        (
            "another RIM",
            appraise::Expected {
                rim: expected.rim.map(flip),
                ..clone_expected(&expected)
            },
        ),
        (
            "another hypervisor measurement",
            appraise::Expected {
                hypervisor: expected.hypervisor.map(flip),
                ..clone_expected(&expected)
            },
        ),
        (
            "another platform key",
            appraise::Expected {
                platform_key: other_key,
                ..clone_expected(&expected)
            },
        ),
    ];
    for (what, expected) in wrong {
        let verdict = appraise::appraise(LINUX_TOKEN, &expected);
        let detail = match &verdict {
            Ok(a) => format!("ACCEPTED ({})", a.checked),
            Err(e) => e.clone(),
        };
        checks.check(
            &format!("ccatoken's checks refuse the saved Linux token for {what}: {detail}"),
            verdict.is_err(),
            &detail,
        );
    }
}

fn clone_expected(e: &appraise::Expected) -> appraise::Expected {
    appraise::Expected {
        platform_key: e.platform_key,
        challenge: e.challenge.clone(),
        rim: e.rim,
        hypervisor: e.hypervisor,
    }
}

/// Tokens built here from the development secret (see the module comment).
fn self_test(checks: &mut Checks) {
    let secret = DeviceSecret::from_bytes(&DEVICE_SECRET);
    let iak = secret.cca_platform_key().expect("platform key");
    let rak = secret.cca_realm_key(&[0x0b; 32]).expect("realm key");
    let challenge: Vec<u8> = (0..64).map(|i| i as u8 ^ 0xc3).collect();
    let realm = RealmClaims {
        challenge: cca::pad_challenge(&challenge).expect("challenge"),
        personalization_value: [0x70; 64],
        initial_measurement: Measurement([0x1a; 32]),
        extensible_measurements: [[0x2a; 32], [0x3a; 32], [0x4a; 32], [0x5a; 32]],
    };
    let platform = PlatformClaims {
        implementation_id: cca::RAMPART_IMPLEMENTATION_ID,
        config: b"rampart qemu-virt",
        lifecycle: cca::LIFECYCLE_SECURED,
        hypervisor_measurement: Measurement([0x6a; 32]),
        hypervisor_version: "rampart 0.1.0",
        hypervisor_signer_id: [0x7a; 32],
        verification_service: "https://veraison.example/",
    };
    let token = cca::build_cca_token(&realm, &rak, &platform, &iak).expect("token");
    let key = iak.public_key();

    let verdict = ccatoken_verify(&token, &key);
    checks.check(
        "ccatoken decodes and verifies Rampart's token (both signatures, binding)",
        accepted(&verdict),
        &describe(&verdict),
    );
    let evidence = verdict.expect("checked").evidence;
    let r = &evidence.realm_claims;
    let p = &evidence.platform_claims;
    checks.check(
        "realm claims as built",
        r.challenge == realm.challenge
            && r.perso == realm.personalization_value
            && r.rim == realm.initial_measurement.0
            && r.rem
                .iter()
                .zip(&realm.extensible_measurements)
                .all(|(a, b)| a == b)
            && r.hash_alg == "sha-256"
            && r.rak_hash_alg == "sha-256"
            && r.rak == cca::public_key_bytes(&rak.public_key()),
        &format!("{r:?}"),
    );
    let hyp = p.sw_components.first();
    checks.check(
        "platform claims as built, Rampart's software component first",
        p.profile == cca::PLATFORM_PROFILE
            && p.impl_id == cca::RAMPART_IMPLEMENTATION_ID
            && p.inst_id == cca::instance_id(&key)
            && p.config == platform.config
            && p.lifecycle == cca::LIFECYCLE_SECURED
            && p.hash_alg == "sha-256"
            && p.verification_service.as_deref() == Some(platform.verification_service)
            && hyp.is_some_and(|c| {
                c.mtyp.as_deref() == Some("rampart")
                    && c.mval == platform.hypervisor_measurement.0
                    && c.signer_id == platform.hypervisor_signer_id
                    && c.version.as_deref() == Some("rampart 0.1.0")
                    && c.hash_alg.as_deref() == Some("sha-256")
            }),
        &format!("{p:?}"),
    );

    // Rampart's own verifier agrees.
    checks.check(
        "rampart-attest verifies the same token",
        rampart_attest::verify_cca_token(
            &token,
            &rampart_attest::CcaExpected {
                platform_key: &key,
                challenge: Some(&challenge),
                initial_measurement: Some(&realm.initial_measurement),
                hypervisor_measurement: Some(&platform.hypervisor_measurement),
            },
        )
        .is_ok(),
        "rampart-attest refused it",
    );

    // One byte flipped at each place: both verifiers refuse.
    check_token(
        checks,
        "the built token",
        &token,
        &appraise::Expected {
            platform_key: key,
            challenge: Some(challenge.clone()),
            rim: None,
            hypervisor: None,
        },
        true,
    );

    // The realm signature changed (its last byte): ccatoken must refuse.
    let mut flipped = token.clone();
    *flipped.last_mut().expect("non-empty") ^= 1;
    let verdict = ccatoken_verify(&flipped, &key);
    checks.check(
        "ccatoken refuses a token with a changed realm signature",
        !accepted(&verdict),
        &describe(&verdict),
    );

    // Signed by another device's platform key, checked against ours.
    let other = DeviceSecret::from_bytes(&[0x01; 32])
        .cca_platform_key()
        .expect("platform key");
    let foreign = cca::build_cca_token(&realm, &rak, &platform, &other).expect("token");
    // Index the trust anchor by the foreign token's instance id but give our key.
    let verdict = (|| {
        let mut evidence = Evidence::decode(&foreign).map_err(|e| format!("{e:?}"))?;
        let mut json: serde_json::Value = serde_json::from_str(&appraise::trust_anchors(
            &key,
            &cca::RAMPART_IMPLEMENTATION_ID,
        ))
        .map_err(|e| e.to_string())?;
        json[0]["instance-id"] = hex(&cca::instance_id(&other.public_key())).into();
        let cpak: Vec<Cpak> = serde_json::from_value(json).map_err(|e| e.to_string())?;
        let mut cpak = cpak.into_iter().next().ok_or("no cpak")?;
        cpak.parse_pkey().map_err(|e| format!("{e:?}"))?;
        evidence
            .verify_with_cpak(cpak)
            .map_err(|e| format!("ccatoken: {e:?}"))
    })();
    checks.check(
        "ccatoken refuses a platform token signed by another key",
        verdict.is_err(),
        "accepted",
    );

    // A platform token for another realm key, with a realm token our RAK signed.
    let other_rak = secret.cca_realm_key(&[0x0c; 32]).expect("realm key");
    let platform_token =
        cca::build_platform_token(&platform, &other_rak.public_key(), &iak).expect("token");
    let realm_token = cca::build_realm_token(&realm, &rak).expect("token");
    let unbound = cca::assemble_cca_token(&platform_token, &realm_token).expect("token");
    let verdict = ccatoken_verify(&unbound, &key);
    checks.check(
        "ccatoken flags a platform token bound to another realm key",
        matches!(&verdict, Ok(v) if v.crypto_failed),
        &describe(&verdict),
    );
    checks.check(
        "rampart-attest refuses the same token (binding)",
        rampart_attest::verify_cca_token(
            &unbound,
            &rampart_attest::CcaExpected {
                platform_key: &key,
                challenge: None,
                initial_measurement: None,
                hypervisor_measurement: None,
            },
        ) == Err(rampart_attest::CcaError::Binding),
        "not refused for the binding",
    );

    let path = std::env::temp_dir().join("rampart-cca-token.cbor");
    if std::fs::write(&path, &token).is_ok() {
        println!(
            "ccacheck: token ({} bytes) in {}, platform key {}",
            token.len(),
            path.display(),
            hex(&cca::public_key_bytes(&key))
        );
    }
    linux_fixture(checks);
}
