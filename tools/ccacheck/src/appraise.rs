//! A whole token checked by Veraison's `ccatoken` as a Veraison deployment
//! would: decoded, verified against the platform key in a trust-anchor
//! store (both signatures and the binding), then appraised against
//! reference values (Rampart's platform: its implementation id, its empty
//! configuration and its own measurement as the one software component; the
//! realm: the expected RIM and all-zero REMs). The challenge is compared
//! with ccatoken's decoded claim (a Veraison session does that itself).
//!
//! `refuses_flips` flips one byte at a time at named places (both tokens'
//! signatures, realm and platform claims) and requires ccatoken, and
//! rampart-attest, to refuse every one.

use ccatoken::store::{Cpak, MemoRefValueStore, MemoTrustAnchorStore};
use ccatoken::token::Evidence;
use ear::TrustVector;
use ear::claim::{
    APPROVED_BOOT, APPROVED_RUNTIME, CRYPTO_VALIDATION_FAILED, GENUINE_HARDWARE,
    TRUSTWORTHY_INSTANCE,
};
use rampart_attest::cca;
use rampart_attest::{CcaExpected, CcaPublicKey, Measurement};

use crate::{b64, hex};

/// What the token must show, beyond the platform key's signature.
pub struct Expected {
    /// Rampart's platform (IAK) public key, the trust anchor.
    pub platform_key: CcaPublicKey,
    /// The challenge the relying party gave (32 to 64 bytes), if any.
    pub challenge: Option<Vec<u8>>,
    /// The realm initial measurement (the signed bundle's), if any.
    pub rim: Option<[u8; 32]>,
    /// Rampart's own measurement (its software component), if known.
    pub hypervisor: Option<[u8; 32]>,
}

/// ccatoken's verdict on an accepted token.
pub struct Accepted {
    /// What was checked, for the report.
    pub checked: String,
    /// The platform and realm trust vectors after verification and
    /// appraisal (AR4SI, as JSON).
    pub vectors: String,
}

fn json(v: &TrustVector) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}

/// The trust-anchor store entry Veraison wants: the platform key as a JWK,
/// indexed by the instance id derived from it.
pub fn trust_anchors(key: &CcaPublicKey, implementation_id: &[u8; 32]) -> String {
    let point = cca::public_key_bytes(key);
    serde_json::json!([{
        "pkey": {
            "kty": "EC",
            "crv": "P-384",
            "x": b64(&point[1..49]),
            "y": b64(&point[49..97]),
        },
        "implementation-id": hex(implementation_id),
        "instance-id": hex(&cca::instance_id(key)),
    }])
    .to_string()
}

/// ccatoken's own reason when verification fails: `verify` records a
/// failure only in the trust vectors, `verify_with_cpak` returns it.
fn verify_reason(token: &[u8], key: &CcaPublicKey) -> String {
    let mut evidence = match Evidence::decode(&token.to_vec()) {
        Ok(e) => e,
        Err(e) => return format!("decode: {e}"),
    };
    let anchors = trust_anchors(key, &evidence.platform_claims.impl_id);
    let cpak = serde_json::from_str::<Vec<Cpak>>(&anchors)
        .map_err(|e| e.to_string())
        .and_then(|v| v.into_iter().next().ok_or_else(|| "no CPAK".to_string()))
        .and_then(|mut c| c.parse_pkey().map(|()| c).map_err(|e| e.to_string()));
    match cpak {
        Err(e) => format!("trust anchor: {e}"),
        Ok(cpak) => match evidence.verify_with_cpak(cpak) {
            Err(e) => e.to_string(),
            Ok(()) => {
                let (_, realm) = evidence.get_trust_vectors();
                if realm.configuration.get() == CRYPTO_VALIDATION_FAILED {
                    "binding: the platform challenge is not the hash of the realm public key"
                        .to_string()
                } else {
                    "verify_with_cpak succeeded".to_string()
                }
            }
        },
    }
}

/// Reference values for Rampart's platform and the expected realm, in
/// ccatoken's JSON format. Without an expected hypervisor measurement the
/// platform entry is the token's own software components (the platform
/// appraisal then proves nothing, and `checked` says so).
fn reference_values(evidence: &Evidence, expected: &Expected, rim: &[u8; 32]) -> String {
    let components: Vec<serde_json::Value> = match &expected.hypervisor {
        Some(h) => vec![serde_json::json!({
            "measurement-value": hex(h),
            // Rampart's image has no signer of its own (hyp/src/security.rs).
            "signer-id": hex(&[0; 32]),
            "component-type": cca::HYPERVISOR_COMPONENT_TYPE,
        })],
        None => evidence
            .platform_claims
            .sw_components
            .iter()
            .map(|c| {
                serde_json::json!({
                    "measurement-value": hex(&c.mval),
                    "signer-id": hex(&c.signer_id),
                })
            })
            .collect(),
    };
    serde_json::json!({
        "platform": [{
            "implementation-id": hex(&cca::RAMPART_IMPLEMENTATION_ID),
            "sw-components": components,
            // EL2 puts an empty configuration in its platform token.
            "platform-configuration": "",
        }],
        "realm": [{
            "initial-measurement": hex(rim),
            "rak-hash-algorithm": cca::HASH_ALGO_SHA256,
            // A realm's REMs start at zero; Linux extends none.
            "extensible-measurements": [hex(&[0; 32]), hex(&[0; 32]), hex(&[0; 32]), hex(&[0; 32])],
            "personalization-value": hex(&[0; 64]),
        }],
    })
    .to_string()
}

/// Decodes, verifies and appraises `token` with ccatoken. `Err` is the
/// refusal with ccatoken's reason.
pub fn appraise(token: &[u8], expected: &Expected) -> Result<Accepted, String> {
    let mut evidence = Evidence::decode(&token.to_vec()).map_err(|e| format!("decode: {e}"))?;
    let mut anchors = MemoTrustAnchorStore::new();
    anchors
        .load_json(&trust_anchors(
            &expected.platform_key,
            &evidence.platform_claims.impl_id,
        ))
        .map_err(|e| format!("ccatoken trust anchors: {e:?}"))?;
    evidence
        .verify(&anchors)
        .map_err(|e| format!("verify: {e}"))?;
    let (platform, realm) = evidence.get_trust_vectors();
    let crypto_failed = platform
        .into_iter()
        .chain(realm)
        .any(|c| c.get() == CRYPTO_VALIDATION_FAILED);
    if platform.instance_identity.get() != TRUSTWORTHY_INSTANCE
        || realm.instance_identity.get() != TRUSTWORTHY_INSTANCE
        || crypto_failed
    {
        return Err(format!(
            "verify: {}; trust vectors: platform {}, realm {}",
            verify_reason(token, &expected.platform_key),
            json(&platform),
            json(&realm)
        ));
    }
    let mut checked = vec![
        "the platform signature with the given key",
        "the realm signature with its RAK",
        "the binding (platform challenge = SHA-256 of the RAK)",
    ];

    if let Some(challenge) = &expected.challenge {
        let want =
            cca::pad_challenge(challenge).map_err(|e| format!("the expected challenge: {e:?}"))?;
        if evidence.realm_claims.challenge != want {
            return Err(format!(
                "challenge: ccatoken decoded {}, want {}",
                hex(&evidence.realm_claims.challenge),
                hex(&want)
            ));
        }
        checked.push("the challenge");
    }

    if let Some(rim) = &expected.rim {
        let mut values = MemoRefValueStore::new();
        values
            .load_json(&reference_values(&evidence, expected, rim))
            .map_err(|e| format!("ccatoken reference values: {e}"))?;
        evidence
            .appraise(&values)
            .map_err(|e| format!("appraise: {e}"))?;
        let (platform, realm) = evidence.get_trust_vectors();
        if platform.hardware.get() != GENUINE_HARDWARE
            || platform.executables.get() != APPROVED_BOOT
        {
            return Err(format!(
                "appraisal: the platform matches no reference value \
                 (implementation id, configuration, Rampart's measurement): platform {}",
                json(&platform)
            ));
        }
        if realm.executables.get() != APPROVED_RUNTIME {
            return Err(format!(
                "appraisal: the realm matches no reference value (RIM {}, zero REMs): realm {}",
                hex(&evidence.realm_claims.rim),
                json(&realm)
            ));
        }
        checked.push(if expected.hypervisor.is_some() {
            "appraisal: Rampart's measurement, the RIM, zero REMs"
        } else {
            "appraisal: the RIM, zero REMs (Rampart's measurement not given: not checked)"
        });
    }
    let (platform, realm) = evidence.get_trust_vectors();
    Ok(Accepted {
        checked: checked.join(", "),
        vectors: format!("platform {}, realm {}", json(&platform), json(&realm)),
    })
}

/// rampart-attest's verdict on the same token with the same expectations.
pub fn rampart_verify(token: &[u8], expected: &Expected) -> Result<(), String> {
    let rim = expected.rim.map(Measurement);
    let hypervisor = expected.hypervisor.map(Measurement);
    rampart_attest::verify_cca_token(
        token,
        &CcaExpected {
            platform_key: &expected.platform_key,
            challenge: expected.challenge.as_deref(),
            initial_measurement: rim.as_ref(),
            hypervisor_measurement: hypervisor.as_ref(),
        },
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Named single-byte positions in `token`: the middle byte of a field, or
/// the last byte of a signature.
pub fn flip_positions(token: &[u8]) -> Result<Vec<(&'static str, usize)>, String> {
    let evidence = Evidence::decode(&token.to_vec()).map_err(|e| format!("decode: {e}"))?;
    let platform_at =
        find(token, &evidence.platform.bytes).ok_or("the platform token is not in the token")?;
    let realm_at =
        find(token, &evidence.realm.bytes).ok_or("the realm token is not in the token")?;
    let platform = &token[platform_at..platform_at + evidence.platform.bytes.len()];
    let realm = &token[realm_at..realm_at + evidence.realm.bytes.len()];
    let field = |region: &[u8], at: usize, value: &[u8], name: &'static str| {
        find(region, value)
            .map(|i| (name, at + i + value.len() / 2))
            .ok_or_else(|| format!("{name}: not found in the token"))
    };
    let r = &evidence.realm_claims;
    let p = &evidence.platform_claims;
    let hypervisor = p
        .sw_components
        .first()
        .ok_or("the platform token has no software component")?;
    Ok(vec![
        ("the realm token's signature", realm_at + realm.len() - 1),
        field(realm, realm_at, &r.challenge, "the realm claim challenge")?,
        field(
            realm,
            realm_at,
            &r.rim,
            "the realm claim initial measurement (RIM)",
        )?,
        field(
            realm,
            realm_at,
            &r.rak,
            "the realm claim realm public key (RAK)",
        )?,
        field(
            platform,
            platform_at,
            &p.challenge,
            "the platform claim challenge (the binding)",
        )?,
        field(
            platform,
            platform_at,
            &hypervisor.mval,
            "the platform claim Rampart's measurement",
        )?,
        field(
            platform,
            platform_at,
            &p.inst_id,
            "the platform claim instance id",
        )?,
        (
            "the platform token's signature",
            platform_at + platform.len() - 1,
        ),
        ("the token's middle byte", token.len() / 2),
    ])
}
