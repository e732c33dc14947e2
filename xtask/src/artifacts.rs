//! Building the EL2 and EL1 images and turning them into flat binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// The target the hypervisor is built for (no FP/SIMD use at EL2).
pub const HYP_TARGET: &str = "aarch64-unknown-none-softfloat";
/// The target bare-metal EL1 programs are built for.
pub const EL1_TARGET: &str = "aarch64-unknown-none";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Output directory for images and downloaded artifacts.
pub fn build_dir() -> PathBuf {
    root().join("build")
}

static HYPERVISOR: OnceLock<PathBuf> = OnceLock::new();
static TESTHOST: OnceLock<PathBuf> = OnceLock::new();

/// Builds the hypervisor (once per xtask run) and returns its flat `Image`.
///
/// Its security configuration comes from the build environment: unless the
/// caller set them, `RAMPART_TRUSTED_KEYS` is the development signing key's
/// public key and `RAMPART_DEVICE_SECRET` the development device secret
/// (`keys/`, public: tests and the demo only).
///
/// For testing only, `RAMPART_XTASK_HYP_FEATURES=oracle` (a comma-separated
/// list of the hypervisor's test features) makes every case that uses this
/// image use a test build instead, e.g. to run Linux-host cases under the
/// oracle (`docs/design.md`, "The oracle"). Never set for a release.
pub fn hypervisor() -> Result<PathBuf> {
    once(&HYPERVISOR, || {
        if let Ok(features) = std::env::var("RAMPART_XTASK_HYP_FEATURES")
            && !features.is_empty()
        {
            let features: Vec<&str> = features.split(',').collect();
            eprintln!("note: the hypervisor is a test build with features {features:?} (RAMPART_XTASK_HYP_FEATURES)");
            return hypervisor_with_features(&features);
        }
        let env = crate::attest::hypervisor_env()?;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        image("rampart-hyp", HYP_TARGET, "rampart.bin", &env)
    })
}

/// Builds a test-only variant of the hypervisor with one cargo feature
/// (e.g. `bench-el2-pmu`) into `build/rampart-<feature>.bin`. Never
/// the image `cargo xtask run` or a release uses.
pub fn hypervisor_with_feature(feature: &str) -> Result<PathBuf> {
    let env = crate::attest::hypervisor_env()?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = format!("rampart-{feature}.bin");
    image_with_features("rampart-hyp", HYP_TARGET, &out, &env, &[feature])
}

/// Builds a test-only variant of the hypervisor with cargo `features`
/// (e.g. `oracle`, `mutants`) into
/// `build/rampart-<features joined by +>.bin`. Never the image `cargo xtask
/// run` or a release uses.
pub fn hypervisor_with_features(features: &[&str]) -> Result<PathBuf> {
    let env = crate::attest::hypervisor_env()?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = format!("rampart-{}.bin", features.join("+"));
    image_with_features("rampart-hyp", HYP_TARGET, &out, &env, features)
}

/// Builds the test guests, then the bare-metal test host with them embedded
/// (`RAMPART_GUEST_DIR` names `build/guests`), once per run; returns the
/// host's `Image`.
pub fn testhost() -> Result<PathBuf> {
    once(&TESTHOST, || {
        let guests = crate::guests::guests()?;
        let dir = guests
            .first()
            .and_then(|(_, path)| path.parent())
            .context("no test guests were built")?
            .to_str()
            .context("guest directory is not UTF-8")?
            .to_string();
        image("rampart-testhost", EL1_TARGET, "testhost.bin", &[("RAMPART_GUEST_DIR", &dir)])
    })
}

fn once(cell: &OnceLock<PathBuf>, build: impl FnOnce() -> Result<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = cell.get() {
        return Ok(path.clone());
    }
    let path = build()?;
    Ok(cell.get_or_init(|| path).clone())
}

/// Builds `package` for `target` in release mode and converts the ELF into a
/// flat binary named `out` in the build directory.
pub fn image(package: &str, target: &str, out: &str, env: &[(&str, &str)]) -> Result<PathBuf> {
    image_with_features(package, target, out, env, &[])
}

/// [`image`] with cargo features enabled.
fn image_with_features(
    package: &str,
    target: &str,
    out: &str,
    env: &[(&str, &str)],
    features: &[&str],
) -> Result<PathBuf> {
    let root = root();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["build", "--release", "--package", package, "--target", target]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("building {package}"))?;
    if !status.success() {
        bail!("building {package} for {target} failed");
    }
    let elf = root.join("target").join(target).join("release").join(package);
    let dir = build_dir();
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join(out);
    let status = Command::new(objcopy()?)
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .status()
        .context("running llvm-objcopy")?;
    if !status.success() {
        bail!("llvm-objcopy failed on {}", elf.display());
    }
    Ok(bin)
}

/// Copies `elf` to `out` without its symbols (`llvm-objcopy --strip-all`):
/// what goes into an initramfs.
///
/// # Errors
///
/// `llvm-objcopy` is missing or fails (naming `elf`).
pub fn strip_to(elf: &Path, out: &Path) -> Result<()> {
    let status = Command::new(objcopy()?)
        .arg("--strip-all")
        .arg(elf)
        .arg(out)
        .status()
        .context("running llvm-objcopy --strip-all")?;
    if !status.success() {
        bail!("llvm-objcopy --strip-all failed on {}", elf.display());
    }
    Ok(())
}

/// The path of `llvm-objcopy` from the `llvm-tools` rustup component.
pub fn objcopy() -> Result<PathBuf> {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let host = Command::new("rustc").args(["-vV"]).output()?;
    let host = String::from_utf8(host.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")?;
    let tool = sysroot.join("lib/rustlib").join(host).join("bin/llvm-objcopy");
    if !tool.exists() {
        bail!("{} is missing: run `rustup component add llvm-tools`", tool.display());
    }
    Ok(tool)
}
