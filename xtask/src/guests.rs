//! Building Rampart's test guests (`guest/`) into flat binaries.
//!
//! Each guest is a `#![no_std]` binary for `aarch64-unknown-none`, linked at
//! `GUEST_RAM_BASE` (0x8000_0000) by `guest/lib/guest.ld`; its flat binary
//! is loaded at that guest-physical address and vCPU 0 starts at its first
//! byte with `x0` = the guest's RAM size. `guest/README.md` gives each
//! guest's protocol.
//!
//! Every guest is also signed with the development key (`keys/`) into
//! `build/guests/<name>.bundle` (`docs/formats.md`), for exactly the
//! manifest the test host's VMM runs it with ([`GUESTS`]: memory, vCPUs,
//! entry offset 0, protected); the `hello` guest is signed once more by an
//! untrusted key into `build/guests/hello.untrusted.bundle`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use rampart_attest::{Bundle, Manifest, Measurement, VmFlags};

use crate::artifacts::{self, EL1_TARGET};

const MIB: u64 = 1 << 20;

/// Every test guest: its short name (and binary file name), package, and
/// the memory size and vCPU count the test host's VMM gives it (the signed
/// manifest; protected, entry offset 0).
pub const GUESTS: [(&str, &str, u64, u32); 13] = [
    ("hello", "rampart-guest-hello", MIB, 1),
    ("memtest", "rampart-guest-memtest", 2 * MIB, 1),
    ("share", "rampart-guest-share", MIB, 1),
    ("smp", "rampart-guest-smp", MIB, 4),
    ("timer", "rampart-guest-timer", MIB, 1),
    ("attacker", "rampart-guest-attacker", MIB, 1),
    ("attest", "rampart-guest-attest", MIB, 1),
    ("spin", "rampart-guest-spin", MIB, 1),
    // The test host's fuzz streams give it 512 KiB (issue 15: protected
    // fuzz VMs run it signed).
    ("fuzz", "rampart-guest-fuzz", MIB / 2, 1),
    // issue 16: the workloads of `cargo xtask bench peer`.
    ("bench", "rampart-guest-bench", MIB, 1),
    // issue 14: the guest `testhost.migrate` moves between machines.
    ("count", "rampart-guest-count", MIB / 4, 1),
    // issue 14: sealed swap (`rampart-vmm run --swap`, linux-vmm/swap).
    ("swap", "rampart-guest-swap", MIB, 1),
    // issue 12: the realm guest (RSI); the test host creates it as a realm.
    // Two vCPUs: the second races the first's RIPAS changes.
    ("realm", "rampart-guest-realm", MIB, 2),
];

/// The manifest guest `name` is signed for.
pub fn manifest(name: &str) -> Result<Manifest> {
    let &(_, _, memory_size, vcpus) = GUESTS
        .iter()
        .find(|g| g.0 == name)
        .with_context(|| format!("no test guest named {name}"))?;
    Ok(Manifest {
        memory_size,
        vcpus,
        entry_offset: 0,
        flags: VmFlags {
            protected: true,
            debug: false,
            // issue 12: the realm guest is signed as a realm.
            realm: name == "realm",
        },
    })
}

/// The signed measurement of guest `name`, from its bundle (built by
/// [`guests`]).
pub fn measurement(name: &str) -> Result<Measurement> {
    let path = artifacts::build_dir().join("guests").join(format!("{name}.bundle"));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let bundle = Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(bundle.measurement)
}

/// Builds every test guest (one `cargo build --release` for all), writes
/// each as `build/guests/<name>.bin` and signs it into
/// `build/guests/<name>.bundle`. Returns `(name, path of the .bin)` in
/// [`GUESTS`] order.
pub fn guests() -> Result<Vec<(String, PathBuf)>> {
    let root = artifacts::root();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", EL1_TARGET]);
    for (_, package, _, _) in GUESTS {
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
        .map(|(name, package, _, _)| {
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
            let image = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
            let (signed, untrusted) = crate::attest::sign(&manifest(name)?, &image)
                .with_context(|| format!("signing {name}"))?;
            write_if_changed(&dir.join(format!("{name}.bundle")), &signed)?;
            if name == "hello" {
                write_if_changed(&dir.join("hello.untrusted.bundle"), &untrusted)?;
            }
            Ok((name.to_string(), bin))
        })
        .collect()
}

/// Writes `bytes` unless the file already holds them (so cargo does not
/// rebuild the test host for nothing).
fn write_if_changed(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_is_a_workspace_member() {
        let manifest = std::fs::read_to_string(artifacts::root().join("Cargo.toml")).unwrap();
        for (name, package, _, _) in GUESTS {
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
            let m = super::manifest(name).unwrap();
            assert!(m.validate(4096).is_ok(), "{name}: {m:?}");
        }
    }
}
