//! Building Rampart's test guests (`guest/`) into flat binaries.
//!
//! Each guest is a `#![no_std]` binary for `aarch64-unknown-none`, linked at
//! `GUEST_RAM_BASE` (0x8000_0000) by `guest/lib/guest.ld`; its flat binary
//! is loaded at that guest-physical address and vCPU 0 starts at its first
//! byte with `x0` = the guest's RAM size. `guest/README.md` gives each
//! guest's protocol.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::artifacts::{self, EL1_TARGET};

/// Every test guest: its short name (and binary file name) and package.
pub const GUESTS: [(&str, &str); 6] = [
    ("hello", "rampart-guest-hello"),
    ("memtest", "rampart-guest-memtest"),
    ("share", "rampart-guest-share"),
    ("smp", "rampart-guest-smp"),
    ("timer", "rampart-guest-timer"),
    ("attacker", "rampart-guest-attacker"),
];

/// Builds every test guest (one `cargo build --release` for all) and writes
/// each as `build/guests/<name>.bin`. Returns `(name, path)` in
/// [`GUESTS`] order.
pub fn guests() -> Result<Vec<(String, PathBuf)>> {
    let root = artifacts::root();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", EL1_TARGET]);
    for (_, package) in GUESTS {
        cmd.args(["--package", package]);
    }
    let status = cmd.status().context("building the test guests")?;
    if !status.success() {
        bail!("building the test guests for {EL1_TARGET} failed");
    }
    let dir = artifacts::build_dir().join("guests");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let objcopy = artifacts::objcopy()?;
    let elves = root.join("target").join(EL1_TARGET).join("release");
    GUESTS
        .into_iter()
        .map(|(name, package)| {
            let elf = elves.join(package);
            let bin = dir.join(format!("{name}.bin"));
            let status = Command::new(&objcopy)
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(&bin)
                .status()
                .context("running llvm-objcopy")?;
            if !status.success() {
                bail!("llvm-objcopy failed on {}", elf.display());
            }
            Ok((name.to_string(), bin))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_is_a_workspace_member() {
        let manifest = std::fs::read_to_string(artifacts::root().join("Cargo.toml")).unwrap();
        for (name, package) in GUESTS {
            assert!(
                manifest.contains(&format!("\"guest/{name}\"")),
                "{name} not in members"
            );
            let own = artifacts::root()
                .join("guest")
                .join(name)
                .join("Cargo.toml");
            let own = std::fs::read_to_string(own).unwrap();
            assert!(own.contains(&format!("name = \"{package}\"")), "{package}");
        }
    }
}
