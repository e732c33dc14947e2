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

/// `mke2fs`, to make the Linux host's `virtio-blk-pci` disk image.
pub const MKE2FS: Tool = Tool { program: "mke2fs", package: "e2fsprogs" };

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

/// What `rust-toolchain.toml` asks for beyond the toolchain itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ToolchainFile {
    /// `targets = [...]`
    pub targets: Vec<String>,
    /// `components = [...]`
    pub components: Vec<String>,
}

/// Reads the `targets` and `components` arrays of `rust-toolchain.toml`
/// (one-line arrays of strings, as the file writes them).
pub fn parse_toolchain_file(text: &str) -> ToolchainFile {
    let list = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('='))
            .flat_map(|v| v.trim().trim_start_matches('[').trim_end_matches(']').split(','))
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    ToolchainFile { targets: list("targets"), components: list("components") }
}

/// The toolchain name from `rustup show active-toolchain`
/// (`1.95.0-x86_64-unknown-linux-gnu (overridden by '…')`).
pub fn parse_active_toolchain(out: &str) -> Option<String> {
    out.lines().next()?.split_whitespace().next().map(str::to_string)
}

/// Which of `wanted` are missing from rustup's `--installed` list. A
/// component is listed with its host triple (`clippy-x86_64-unknown-linux-gnu`)
/// or without (`rust-src`); a target by its name alone.
pub fn missing_from<'a>(wanted: &'a [String], installed: &str) -> Vec<&'a str> {
    wanted
        .iter()
        .map(String::as_str)
        .filter(|w| {
            !installed.lines().map(str::trim).any(|l| {
                l == *w
                    || l.strip_prefix(*w)
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|triple| triple.matches('-').count() >= 2)
                    // rustup's older name for llvm-tools.
                    || (*w == "llvm-tools" && l.starts_with("llvm-tools-preview"))
            })
        })
        .collect()
}

fn rustup(args: &[&str]) -> Result<std::process::Output> {
    Command::new("rustup")
        .args(args)
        .current_dir(crate::artifacts::root())
        .output()
        .with_context(|| format!("running rustup {}", args.join(" ")))
}

/// Makes sure the active toolchain has every target and component
/// `rust-toolchain.toml` names: rustup does not add them to a toolchain
/// that is already installed (a linked one, or one installed before the
/// file changed). Missing ones are added with `rustup`; if that is not
/// possible, the error is one line with the exact command.
pub fn ensure_rust() -> Result<()> {
    let path = crate::artifacts::root().join("rust-toolchain.toml");
    let file = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let want = parse_toolchain_file(&file);
    if !have("rustup") {
        return targets_in_sysroot(&want.targets, "rustup is not installed");
    }
    let active = rustup(&["show", "active-toolchain"])?;
    let toolchain = parse_active_toolchain(&String::from_utf8_lossy(&active.stdout))
        .filter(|_| active.status.success())
        .with_context(|| {
            format!(
                "rustup has no active toolchain here: {}",
                String::from_utf8_lossy(&active.stderr).trim()
            )
        })?;
    let targets = rustup(&["target", "list", "--installed", "--toolchain", &toolchain])?;
    let components = rustup(&["component", "list", "--installed", "--toolchain", &toolchain])?;
    if !targets.status.success() || !components.status.success() {
        // A linked toolchain: rustup cannot list or add to it.
        return targets_in_sysroot(&want.targets, &format!("rustup cannot manage the toolchain {toolchain}"));
    }
    let missing_targets = missing_from(&want.targets, &String::from_utf8_lossy(&targets.stdout));
    let missing_components = missing_from(&want.components, &String::from_utf8_lossy(&components.stdout));
    for (kind, missing) in [("target", missing_targets), ("component", missing_components)] {
        if missing.is_empty() {
            continue;
        }
        let mut args = vec![kind, "add", "--toolchain", toolchain.as_str()];
        args.extend(&missing);
        let command = format!("rustup {}", args.join(" "));
        eprintln!("xtask: {toolchain} lacks the {kind}s {}; adding them: {command}", missing.join(", "));
        let out = rustup(&args)?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().find(|l| l.contains("error")).unwrap_or("").trim();
            bail!("the toolchain {toolchain} lacks the {kind}s {}: run `{command}` ({why})", missing.join(", "));
        }
    }
    Ok(())
}

/// Without rustup's help: each target must have its standard library in
/// the active toolchain's sysroot.
fn targets_in_sysroot(targets: &[String], why: &str) -> Result<()> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate::artifacts::root())
        .output()
        .context("running rustc")?;
    let sysroot = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let missing: Vec<&str> = targets
        .iter()
        .map(String::as_str)
        .filter(|t| !sysroot.join("lib/rustlib").join(t).join("lib").is_dir())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the Rust toolchain at {} lacks the targets {} and {why}: add them to it, or use rustup's toolchain (https://rustup.rs)",
            sysroot.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_toolchain_file() {
        let text = std::fs::read_to_string(crate::artifacts::root().join("rust-toolchain.toml")).unwrap();
        let file = parse_toolchain_file(&text);
        assert!(file.targets.iter().any(|t| t == "aarch64-unknown-none-softfloat"), "{file:?}");
        assert!(file.components.iter().any(|c| c == "llvm-tools"), "{file:?}");
        let file = parse_toolchain_file("[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"a-b-c\", \"d-e-f\"]\ncomponents=[ \"rust-src\" ]\n");
        assert_eq!(file.targets, ["a-b-c", "d-e-f"]);
        assert_eq!(file.components, ["rust-src"]);
        assert_eq!(parse_toolchain_file("[toolchain]\n"), ToolchainFile::default());
    }

    #[test]
    fn parses_the_active_toolchain() {
        let out = "1.95.0-x86_64-unknown-linux-gnu (overridden by '/work/rust-toolchain.toml')\n";
        assert_eq!(parse_active_toolchain(out).as_deref(), Some("1.95.0-x86_64-unknown-linux-gnu"));
        let out = "stable-aarch64-unknown-linux-gnu\nactive because: it's the default toolchain\n";
        assert_eq!(parse_active_toolchain(out).as_deref(), Some("stable-aarch64-unknown-linux-gnu"));
        assert_eq!(parse_active_toolchain(""), None);
    }

    #[test]
    fn finds_what_rustup_lacks() {
        let want = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let targets = "aarch64-unknown-none\naarch64-unknown-none-softfloat\nx86_64-unknown-linux-gnu\n";
        let wanted = want(&["aarch64-unknown-none", "aarch64-unknown-none-softfloat", "aarch64-unknown-linux-musl"]);
        assert_eq!(missing_from(&wanted, targets), ["aarch64-unknown-linux-musl"]);
        // `aarch64-unknown-none` must not count as installed because
        // `aarch64-unknown-none-softfloat` is.
        let wanted = want(&["aarch64-unknown-none", "aarch64-unknown-none-softfloat"]);
        assert_eq!(missing_from(&wanted, "aarch64-unknown-none-softfloat\n"), ["aarch64-unknown-none"]);
        let components = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nllvm-tools-x86_64-unknown-linux-gnu\nrust-src\nrust-std-aarch64-unknown-none\nrustc-x86_64-unknown-linux-gnu\n";
        let wanted = want(&["rust-src", "llvm-tools", "clippy", "rustfmt"]);
        assert_eq!(missing_from(&wanted, components), ["rustfmt"]);
        assert_eq!(missing_from(&want(&["llvm-tools"]), "llvm-tools-preview-x86_64-unknown-linux-gnu\n"), Vec::<&str>::new());
        assert_eq!(missing_from(&wanted, ""), ["rust-src", "llvm-tools", "clippy", "rustfmt"]);
    }
}
