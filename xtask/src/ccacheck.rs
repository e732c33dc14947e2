//! The `ccacheck` case (issue 12): Rampart's CCA attestation tokens checked
//! by Veraison's `ccatoken`, an independent verifier that needs OpenSSL.
//!
//! `tools/ccacheck` is its own workspace so the normal build never links
//! OpenSSL; this builds and runs it, installing `pkg-config` and
//! `libssl-dev` (what `openssl-sys` needs) with apt-get as root when they
//! are missing. `cose-rust`, which `ccatoken` uses, turns on `openssl`'s
//! `vendored` feature by default (compiling OpenSSL from source: many
//! minutes of CPU); `OPENSSL_NO_VENDOR=1` makes `openssl-sys` link the
//! system's OpenSSL instead.

use std::process::Command;

use anyhow::{Context, Result, bail};

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

/// Builds and runs `tools/ccacheck`; its last line is
/// `ccacheck: N passed, 0 failed`.
pub fn case() -> Result<String> {
    ensure_openssl()?;
    let root = artifacts::root();
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--locked",
            "--manifest-path",
            "tools/ccacheck/Cargo.toml",
        ])
        .arg("--target-dir")
        .arg(root.join("target/ccacheck"))
        .env("OPENSSL_NO_VENDOR", "1")
        .output()
        .context("running cargo run for tools/ccacheck")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "ccacheck failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("ccacheck: ") && l.ends_with(" passed, 0 failed"))
        .context("ccacheck printed no summary")?;
    Ok(summary.trim_start_matches("ccacheck: ").to_string())
}
