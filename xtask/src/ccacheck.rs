//! The `ccacheck` case (issue 12): Rampart's CCA attestation tokens checked
//! by Veraison's `ccatoken`, an independent verifier that needs OpenSSL:
//! tokens built from the development secret and a saved Linux realm token.
//! [`verify_linux_token`] gives the `linux-realm` case's live token to it.
//!
//! `tools/ccacheck` is its own workspace so the normal build never links
//! OpenSSL; this builds and runs it, installing `pkg-config` and
//! `libssl-dev` (what `openssl-sys` needs) with apt-get as root when they
//! are missing. `cose-rust`, which `ccatoken` uses, turns on `openssl`'s
//! `vendored` feature by default (compiling OpenSSL from source: many
//! minutes of CPU); `OPENSSL_NO_VENDOR=1` makes `openssl-sys` link the
//! system's OpenSSL instead.

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

use crate::{artifacts, prereq};

/// `pkg-config`, with which `openssl-sys` finds OpenSSL.
const PKG_CONFIG: prereq::Tool = prereq::Tool {
    program: "pkg-config",
    package: "pkg-config",
};
/// The Debian package with OpenSSL's headers and `openssl.pc`.
const LIBSSL_DEV: &str = "libssl-dev";

/// Whether `pkg-config` finds OpenSSL's development files.
fn have_openssl() -> bool {
    Command::new("pkg-config")
        .args(["--exists", "openssl"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Makes sure `openssl-sys` can build: `pkg-config` and `libssl-dev`.
fn ensure_openssl() -> Result<()> {
    prereq::ensure(&[&PKG_CONFIG])?;
    if have_openssl() {
        return Ok(());
    }
    if !prereq::is_root() {
        bail!(
            "OpenSSL's development files are missing: install with \
             `sudo apt-get install --no-install-recommends {LIBSSL_DEV}`"
        );
    }
    eprintln!("xtask: installing {LIBSSL_DEV} with apt-get");
    prereq::apt_get(&["update"])?;
    prereq::apt_get(&["install", "-y", "--no-install-recommends", LIBSSL_DEV])?;
    if !have_openssl() {
        bail!("pkg-config still finds no openssl after installing {LIBSSL_DEV}");
    }
    Ok(())
}

/// The built `ccacheck` binary. `cargo build` runs once per xtask process
/// (the `ccacheck` case and the `linux-realm` case share it), and cargo's
/// own cache makes later processes' builds no-ops.
fn binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build() -> Result<PathBuf> {
    ensure_openssl()?;
    let root = artifacts::root();
    let target = root.join("target/ccacheck");
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--locked",
            "--manifest-path",
            "tools/ccacheck/Cargo.toml",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env("OPENSSL_NO_VENDOR", "1")
        .output()
        .context("running cargo build for tools/ccacheck")?;
    if !output.status.success() {
        bail!(
            "building tools/ccacheck failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(target.join("debug/ccacheck"))
}

/// Runs `ccacheck` with `args`; on success its stdout, whose last line is
/// `ccacheck: N passed, 0 failed`, and that N.
fn run(args: &[&OsStr]) -> Result<(String, usize)> {
    let output = Command::new(binary()?)
        .args(args)
        .output()
        .context("running tools/ccacheck")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "ccacheck failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let passed = stdout
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("ccacheck: ")?
                .strip_suffix(" passed, 0 failed")
        })
        .and_then(|n| n.parse().ok())
        .context("ccacheck printed no summary")?;
    Ok((stdout, passed))
}

/// The `ccacheck` case: `tools/ccacheck` without arguments (tokens built
/// from the development secret, and the saved Linux realm token).
pub fn case() -> Result<String> {
    let (_, passed) = run(&[])?;
    Ok(format!("{passed} passed, 0 failed"))
}

/// Issue 12: Veraison's ccatoken verifies a CCA token a Linux realm guest
/// read from configfs-tsm, given Rampart's platform key (hex, SEC1
/// uncompressed), the relying party's challenge, the signed bundle's
/// measurement (RIM) and, if known, Rampart's own measurement: both
/// signatures, the binding, the challenge, and an appraisal of the RIM and
/// the hypervisor measurement against reference values. The same token with
/// one byte flipped at each of nine places (both signatures, realm and
/// platform claims) must be refused by ccatoken and by rampart-attest.
///
/// Returns a summary with ccatoken's verdict and each refusal's reason.
///
/// # Errors
///
/// ccacheck could not be built or run, ccatoken refused the token, or
/// accepted one with a flipped byte.
pub fn verify_linux_token(
    token: &[u8],
    platform_key_hex: &str,
    challenge_hex: &str,
    rim_hex: &str,
    hypervisor_hex: Option<&str>,
) -> Result<String> {
    let dir = artifacts::build_dir().join("ccacheck");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("linux-realm-token.cbor");
    fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
    let mut args: Vec<&OsStr> = vec![
        "verify".as_ref(),
        "--token".as_ref(),
        path.as_os_str(),
        "--platform-key".as_ref(),
        platform_key_hex.as_ref(),
        "--challenge".as_ref(),
        challenge_hex.as_ref(),
        "--rim".as_ref(),
        rim_hex.as_ref(),
        "--flips".as_ref(),
    ];
    if let Some(h) = hypervisor_hex {
        args.push(OsStr::new("--hypervisor-measurement"));
        args.push(OsStr::new(h));
    }
    let (stdout, passed) = run(&args)?;
    let refusals: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ccacheck: ok   the token, one byte flipped in "))
        .collect();
    let accepted = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ccacheck: ok   ccatoken accepts the token "))
        .context("ccacheck printed no acceptance")?;
    Ok(format!(
        "ccatoken (Veraison) accepted the configfs-tsm token {accepted}; {} single-byte flips refused by ccatoken and rampart-attest ({passed} checks):\n    {}",
        refusals.len(),
        refusals.join("\n    ")
    ))
}
