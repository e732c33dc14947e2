//! Verified boot and attestation on the build machine.
//!
//! - The **development keys** in `keys/` (public, tests and demo only): the
//!   signing key every test guest's bundle is signed with and the device
//!   secret the hypervisor is built with (`hypervisor_env`).
//! - A second, **untrusted** signing key (its seed is SHA-256 of
//!   [`UNTRUSTED_SEED_LABEL`]) for `vb-refuse-wrong-key`.
//! - The **secrets** the test host's `vb-no-leaks` looks for in host RAM
//!   and exit records (`testhost.secrets=` on its command line).
//! - Checking the **attest guest's report** from a test-host console:
//!   `rampart attest-verify` (the CLI, built once) with the attestation
//!   key derived from the device secret, cross-checked against the
//!   hypervisor's boot log and the host's `ATTESTATION_KEY` call.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rampart_attest::{Bundle, DeviceSecret, Measurement, SigningKey};
use sha2::{Digest, Sha256, Sha512};

use crate::artifacts;

/// The development signing key (PKCS#8 PEM), relative to the workspace.
pub const SIGNING_KEY: &str = "keys/dev-signing-key.pem";
/// The development device secret (64 hex digits), relative to the workspace.
pub const DEVICE_SECRET: &str = "keys/dev-device-secret.hex";
/// SHA-256 of this is the seed of the untrusted key `vb-refuse-wrong-key`
/// signs with.
pub const UNTRUSTED_SEED_LABEL: &[u8] = b"rampart.testhost.untrusted-key.v1";
/// The build variable naming the trusted keys.
pub const TRUSTED_KEYS_VAR: &str = "RAMPART_TRUSTED_KEYS";
/// The build variable holding the device secret.
pub const DEVICE_SECRET_VAR: &str = "RAMPART_DEVICE_SECRET";
/// The development migration secret (issue 14; public, tests only): every
/// machine `cargo xtask` builds shares it, so a VM may move between them.
pub const MIGRATION_SECRET: &str = "keys/dev-migration-secret.hex";
/// The build variable that sets the migration secret.
pub const MIGRATION_SECRET_VAR: &str = "RAMPART_MIGRATION_SECRET";

/// The first 32 bytes of the attest guest's 64-byte nonce (the rest come
/// from the guest's TRNG, or repeat this where the CPU has no RNDR);
/// `guest/attest/src/main.rs` has the same constant.
pub const NONCE_PREFIX: &[u8; 32] = b"rampart attest guest nonce v1 ::";

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex digits (an even number, whitespace ignored).
pub fn parse_hex(text: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair)?;
            u8::from_str_radix(s, 16).with_context(|| format!("`{s}` is not hex"))
        })
        .collect()
}

fn parse_hex32(what: &str, text: &str) -> Result<[u8; 32]> {
    let bytes = parse_hex(text).with_context(|| format!("{what}: not hex"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("{what}: {} bytes, want 32", b.len()))
}

/// The development signing key from `keys/`.
pub fn signing_key() -> Result<SigningKey> {
    let path = artifacts::root().join(SIGNING_KEY);
    let pem =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The second key: valid, but trusted by nobody.
pub fn untrusted_key() -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(UNTRUSTED_SEED_LABEL).into())
}

/// The development device secret from `keys/`.
pub fn dev_device_secret() -> Result<[u8; 32]> {
    let path = artifacts::root().join(DEVICE_SECRET);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_hex32(DEVICE_SECRET, &text)
}

/// The device secret the hypervisor is built with: the caller's
/// `RAMPART_DEVICE_SECRET` if set, else the development secret.
pub fn device_secret() -> Result<[u8; 32]> {
    match std::env::var(DEVICE_SECRET_VAR) {
        Ok(text) if !text.trim().is_empty() => parse_hex32(DEVICE_SECRET_VAR, &text),
        _ => dev_device_secret(),
    }
}

/// The variables `cargo build` of the hypervisor needs that the caller has
/// not set: the development public key as the trusted key and the
/// development device secret.
pub fn hypervisor_env() -> Result<Vec<(&'static str, String)>> {
    let mut env = Vec::new();
    if std::env::var_os(TRUSTED_KEYS_VAR).is_none() {
        env.push((
            TRUSTED_KEYS_VAR,
            hex(signing_key()?.verifying_key().as_bytes()),
        ));
    }
    if std::env::var_os(DEVICE_SECRET_VAR).is_none() {
        env.push((DEVICE_SECRET_VAR, hex(&dev_device_secret()?)));
    }
    // Issue 14: the development migration secret (public, tests only).
    if std::env::var_os(MIGRATION_SECRET_VAR).is_none() {
        let path = artifacts::root().join(MIGRATION_SECRET);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        env.push((MIGRATION_SECRET_VAR, hex(&parse_hex32(MIGRATION_SECRET, &text)?)));
    }
    Ok(env)
}

/// The public attestation key of the secret the hypervisor was built with.
pub fn attestation_public_key() -> Result<[u8; 32]> {
    Ok(DeviceSecret::from_bytes(&device_secret()?)
        .attestation_key()
        .public_key()
        .to_bytes())
}

/// Sealing-key labels the attest guest asks for (`vb-no-leaks` looks for
/// each key).
pub const SEALING_LABELS: [&[u8]; 3] = [b"disk", b"other", b""];

/// What `vb-no-leaks` looks for, in the order the test host names them:
/// the device secret, the attestation key's seed, its expanded secret
/// (both halves of SHA-512(seed)), and the attest guest's sealing keys.
pub fn leak_secrets(attest_measurement: &Measurement) -> Result<Vec<[u8; 32]>> {
    let secret_bytes = device_secret()?;
    let secret = DeviceSecret::from_bytes(&secret_bytes);
    let seed = attestation_seed(&secret_bytes);
    let expanded = Sha512::digest(seed);
    let mut out = vec![secret_bytes, seed];
    out.push(expanded[..32].try_into().expect("32 bytes"));
    out.push(expanded[32..].try_into().expect("32 bytes"));
    for label in SEALING_LABELS {
        out.push(*secret.sealing_key(attest_measurement, label)?.as_bytes());
    }
    Ok(out)
}

/// The attestation key's Ed25519 seed (`docs/formats.md`, "Derived keys").
fn attestation_seed(secret: &[u8; 32]) -> [u8; 32] {
    // HKDF-SHA256 with no salt, one block: PRK = HMAC(0^32, secret),
    // OKM = HMAC(PRK, info || 0x01). Cross-checked against rampart-attest
    // below (the public keys must agree).
    let prk = hmac_sha256(&[0; 32], secret);
    let mut msg = rampart_attest::ATTESTATION_KEY_INFO.to_vec();
    msg.push(1);
    let seed = hmac_sha256(&prk, &msg);
    let derived = SigningKey::from_bytes(&seed).verifying_key();
    let expected = DeviceSecret::from_bytes(secret)
        .attestation_key()
        .public_key();
    assert_eq!(
        derived, expected,
        "attestation seed derivation disagrees with rampart-attest"
    );
    seed
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner = Sha256::new();
    let mut outer = Sha256::new();
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    inner.update(ipad);
    inner.update(message);
    outer.update(opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The test host's command-line option with the secrets (`docs` in
/// `host/testhost/README.md`, `vb-no-leaks`).
pub fn secrets_bootarg() -> Result<String> {
    let measurement = crate::guests::measurement("attest")?;
    let secrets = leak_secrets(&measurement)?;
    let list: Vec<String> = secrets.iter().map(|s| hex(s)).collect();
    Ok(format!("testhost.secrets={}", list.join(",")))
}

/// What a test-host console says about attestation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AttestLog {
    /// `rampart: attestation key <hex>` from the hypervisor's boot log.
    pub boot_key: Option<String>,
    /// `rampart: hypervisor measurement <hex>` from the boot log.
    pub boot_measurement: Option<String>,
    /// `  vb-attest: ATTESTATION_KEY <hex>` from the test host.
    pub host_key: Option<String>,
    /// The attest guest's `GUEST-REPORT <hex>` (last one).
    pub report: Option<String>,
    /// The attest guest's `GUEST-NONCE <hex>` (last one).
    pub nonce: Option<String>,
    /// The attest guest's `GUEST-SEALING <label> <fingerprint>` lines.
    pub sealing: Vec<(String, String)>,
}

/// Picks the attestation lines out of a console log.
pub fn parse_log(console: &str) -> AttestLog {
    let mut log = AttestLog::default();
    for line in console.lines() {
        let line = line.trim();
        if let Some(key) = line.strip_prefix("rampart: attestation key ") {
            log.boot_key = Some(key.trim().to_string());
        } else if let Some(m) = line.strip_prefix("rampart: hypervisor measurement ") {
            log.boot_measurement = Some(m.trim().to_string());
        } else if let Some(key) = line.strip_prefix("vb-attest: ATTESTATION_KEY ") {
            log.host_key = Some(key.trim().to_string());
        } else if let Some((_, rest)) = line.split_once("GUEST-REPORT ") {
            log.report = Some(rest.trim().to_string());
        } else if let Some((_, rest)) = line.split_once("GUEST-NONCE ") {
            log.nonce = Some(rest.trim().to_string());
        } else if let Some((_, rest)) = line.split_once("GUEST-SEALING ")
            && let Some((label, fingerprint)) = rest.trim().split_once(' ')
        {
            log.sealing
                .push((label.to_string(), fingerprint.trim().to_string()));
        }
    }
    log
}

static CLI: OnceLock<PathBuf> = OnceLock::new();

/// Builds the `rampart` tool (once per xtask run).
pub fn cli() -> Result<PathBuf> {
    if let Some(path) = CLI.get() {
        return Ok(path.clone());
    }
    let root = artifacts::root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--package",
            "rampart",
            "--bin",
            "rampart",
        ])
        .status()
        .context("building the rampart tool")?;
    if !status.success() {
        bail!("building the rampart tool failed");
    }
    let path = root.join("target/debug/rampart");
    Ok(CLI.get_or_init(|| path).clone())
}

/// Verifies the attest guest's report in `console` on the build machine:
/// the attestation key the hypervisor printed at boot and returned to the
/// host must be the one derived from the device secret, and
/// `rampart attest-verify` must accept the report for the attest guest's
/// signed measurement and the nonce the guest printed, whose first half is
/// [`NONCE_PREFIX`]. Returns a one-line summary.
pub fn verify_console(console: &str) -> Result<String> {
    let log = parse_log(console);
    let expected_key = hex(&attestation_public_key()?);
    match &log.boot_key {
        Some(key) if *key == expected_key => {}
        Some(key) => bail!(
            "the hypervisor's boot log says attestation key {key}, the device secret gives {expected_key}"
        ),
        None => bail!("the hypervisor's boot log has no `rampart: attestation key` line"),
    }
    match &log.host_key {
        Some(key) if *key == expected_key => {}
        Some(key) => bail!(
            "ATTESTATION_KEY returned {key} to the host, the device secret gives {expected_key}"
        ),
        None => bail!("the test host printed no `vb-attest: ATTESTATION_KEY` line"),
    }
    let report = log
        .report
        .context("no GUEST-REPORT line from the attest guest")?;
    let nonce = log
        .nonce
        .context("no GUEST-NONCE line from the attest guest")?;
    let nonce_bytes = parse_hex(&nonce).context("GUEST-NONCE")?;
    if nonce_bytes.len() != 64 || nonce_bytes[..32] != NONCE_PREFIX[..] {
        bail!("GUEST-NONCE {nonce} is not 64 bytes starting with the documented prefix");
    }
    let measurement = crate::guests::measurement("attest")?;
    let output = Command::new(cli()?)
        .args([
            "attest-verify",
            "--report-hex",
            &report,
            "--attestation-key",
            &expected_key,
        ])
        .args(["--measurement", &hex(&measurement.0), "--nonce", &nonce])
        .output()
        .context("running rampart attest-verify")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "rampart attest-verify refused the report ({}):\n{}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let echoed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("nonce"))
        .map(str::trim)
        .unwrap_or_default();
    if echoed != nonce {
        bail!("rampart attest-verify printed nonce {echoed:?}, the guest sent {nonce}");
    }
    // Claim 4 is the hypervisor's own measurement, which it prints at boot.
    let claimed = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("hypervisor measurement"))
        .map(str::trim)
        .unwrap_or_default();
    match &log.boot_measurement {
        Some(m) if m == claimed => {}
        other => bail!(
            "the report's hypervisor measurement {claimed:?} is not the one in the boot log ({other:?})"
        ),
    }
    Ok(format!(
        "attestation report verified: measurement {}, nonce intact",
        hex(&measurement.0)
    ))
}

/// issue 12: verifies the `realm` guest's CCA token (`GUEST-CCA-TOKEN` /
/// `GUEST-CCA-CHALLENGE` lines) in `console` with `rampart attest-verify`:
/// the platform key the device secret gives, the guest's challenge, its
/// signed measurement as the RIM and the hypervisor's boot-log measurement
/// as its software component; then checks that one flipped byte (in the
/// realm token's signature, the last byte) makes it refuse the token.
/// `Ok(None)` if the console has no token (the test host's `realm-rsi`
/// check fails on its own when the guest printed none).
pub fn verify_cca_console(console: &str) -> Result<Option<String>> {
    let find = |prefix: &str| {
        console
            .lines()
            .rev()
            .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.trim().to_string()))
    };
    // The token comes in lines of 256 bytes, in order.
    let token: String = console
        .lines()
        .filter_map(|l| l.split_once("GUEST-CCA-TOKEN ").map(|(_, rest)| rest.trim()))
        .collect();
    if token.is_empty() {
        return Ok(None);
    }
    let challenge = find("GUEST-CCA-CHALLENGE ").context("GUEST-CCA-TOKEN without GUEST-CCA-CHALLENGE")?;
    let log = parse_log(console);
    let hypervisor = log.boot_measurement.context("no `rampart: hypervisor measurement` line in the boot log")?;
    let platform = DeviceSecret::from_bytes(&device_secret()?).cca_platform_key()?.public_key();
    let platform = hex(&rampart_attest::cca::public_key_bytes(&platform));
    let rim = hex(&crate::guests::measurement("realm")?.0);
    let verify = |token: &str| -> Result<std::process::Output> {
        Command::new(cli()?)
            .args(["attest-verify", "--report-hex", token, "--platform-key", &platform])
            .args(["--measurement", &rim, "--nonce", &challenge, "--hypervisor-measurement", &hypervisor])
            .output()
            .context("running rampart attest-verify")
    };
    let output = verify(&token)?;
    if !output.status.success() {
        bail!(
            "rampart attest-verify refused the realm's CCA token ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut flipped = parse_hex(&token).context("GUEST-CCA-TOKEN")?;
    if let Some(last) = flipped.last_mut() {
        *last ^= 1;
    }
    if verify(&hex(&flipped))?.status.success() {
        bail!("rampart attest-verify accepted the realm's CCA token with its last byte flipped");
    }
    Ok(Some(format!(
        "realm CCA token verified ({} bytes: platform key, challenge, RIM {rim}, hypervisor measurement), refused with one byte flipped",
        token.len() / 2
    )))
}

/// The bundle `name` signed by the development key, and by the untrusted
/// key (`vb-refuse-wrong-key`).
pub fn sign(manifest: &rampart_attest::Manifest, image: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let trusted = Bundle::build(manifest, image, &signing_key()?)?;
    let untrusted = Bundle::build(manifest, image, &untrusted_key())?;
    Ok((trusted, untrusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_keys_are_what_keys_readme_says() {
        let public = hex(signing_key().unwrap().verifying_key().as_bytes());
        let readme = std::fs::read_to_string(artifacts::root().join("keys/README.md")).unwrap();
        let pub_hex =
            std::fs::read_to_string(artifacts::root().join("keys/dev-signing-key.pub.hex"))
                .unwrap();
        assert_eq!(pub_hex.trim(), public);
        assert!(
            readme.contains(&public),
            "keys/README.md does not name {public}"
        );
        let attestation = hex(&DeviceSecret::from_bytes(&dev_device_secret().unwrap())
            .attestation_key()
            .public_key()
            .to_bytes());
        assert!(
            readme.contains(&attestation),
            "keys/README.md does not name {attestation}"
        );
        assert_ne!(
            untrusted_key().verifying_key(),
            signing_key().unwrap().verifying_key()
        );
    }

    #[test]
    fn leak_secrets_are_distinct() {
        let secrets = leak_secrets(&Measurement([3; 32])).unwrap();
        assert_eq!(secrets.len(), 7);
        for (i, a) in secrets.iter().enumerate() {
            for b in &secrets[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn parses_the_attestation_lines() {
        let log = "rampart: attestation key aabb\n  vb-attest: ATTESTATION_KEY aabb\n  [attest] GUEST-REPORT d284\n  [attest] GUEST-NONCE 0102\n  [attest] GUEST-SEALING disk 01020304\n";
        let parsed = parse_log(log);
        assert_eq!(parsed.boot_key.as_deref(), Some("aabb"));
        assert_eq!(parsed.host_key.as_deref(), Some("aabb"));
        assert_eq!(parsed.report.as_deref(), Some("d284"));
        assert_eq!(parsed.nonce.as_deref(), Some("0102"));
        assert_eq!(
            parsed.sealing,
            vec![("disk".to_string(), "01020304".to_string())]
        );
        assert_eq!(parse_hex("0a ff").unwrap(), vec![10, 255]);
        assert!(parse_hex("0").is_err());
    }
}
