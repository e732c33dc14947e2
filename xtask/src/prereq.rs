//! Host prerequisites: tools the build and the QEMU runs need.
//!
//! Missing tools are installed with apt-get when running as root (as CI
//! does); otherwise the error names the exact command to run.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// A command-line tool and the Debian package that provides it.
pub struct Tool {
    /// The program looked up on `PATH`.
    pub program: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
}

/// QEMU for every run.
pub const QEMU: Tool = Tool { program: "qemu-system-aarch64", package: "qemu-system-arm" };
/// `dtc`, to decompile device trees in tests and reports.
pub const DTC: Tool = Tool { program: "dtc", package: "device-tree-compiler" };
/// `cpio`, to pack the Linux host's initramfs.
pub const CPIO: Tool = Tool { program: "cpio", package: "cpio" };

/// Whether `program` is on `PATH`.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure every tool is present, installing missing ones as root.
pub fn ensure(tools: &[&Tool]) -> Result<()> {
    let missing: Vec<&&Tool> = tools.iter().filter(|t| !have(t.program)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    let programs: Vec<&str> = missing.iter().map(|t| t.program).collect();
    if !is_root() {
        bail!(
            "missing {}: install with `sudo apt-get install --no-install-recommends {}`",
            programs.join(", "),
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    apt_get(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&packages);
    apt_get(&args)?;
    for tool in missing {
        if !have(tool.program) {
            bail!("{} is still missing after installing {}", tool.program, tool.package);
        }
    }
    Ok(())
}

/// Runs `apt-get` non-interactively and fails with its output on error.
pub fn apt_get(args: &[&str]) -> Result<()> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
