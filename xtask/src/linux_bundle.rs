//! Issue 12, verified boot of a Linux guest: Debian's sid kernel packed
//! into a version-2 bundle by `rampart-vmm pack` (built for the build
//! machine: the bundle carries the device tree the VMM generates), signed
//! with the development key through `rampart_attest`, and run by
//! `rampart-vmm run BUNDLE` under the Linux host as a protected VM (RAM
//! donated). Three tampered bundles, each with one flipped byte in the
//! kernel, the initrd or the command line, re-packed but not re-signed,
//! must be refused at their first run with the hypervisor's
//! `BAD_SIGNATURE`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rampart_attest::{Bundle, offset};

use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, linux, linux_guest, linux_vmm, prereq};

/// The guest's RAM (the bundle's manifest).
pub const GUEST_MEM: &str = "128M";
/// The guest's vCPUs.
pub const GUEST_CPUS: u32 = 1;
/// The guest's command line (`quiet`: each console byte is an MMIO exit).
pub const CMDLINE: &str = "console=ttyAMA0 earlycon panic=-1 quiet";

const HOST_SCRIPT: &str = include_str!("linux_bundle/host.sh");

static NATIVE_VMM: OnceLock<PathBuf> = OnceLock::new();

/// `rampart-vmm` built for the build machine (for `pack`).
///
/// # Errors
///
/// The build failed.
pub fn native_vmm() -> Result<PathBuf> {
    if let Some(p) = NATIVE_VMM.get() {
        return Ok(p.clone());
    }
    let root = artifacts::root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--release", "--package", "rampart-vmm"])
        .status()
        .context("building rampart-vmm for the build machine")?;
    if !status.success() {
        bail!("building rampart-vmm for the build machine failed");
    }
    let path = root.join("target/release/rampart-vmm");
    Ok(NATIVE_VMM.get_or_init(|| path).clone())
}

/// `rampart-vmm pack` of `kernel`, `initrd` and `cmdline` into `out`.
///
/// # Errors
///
/// `pack` failed.
pub fn pack(kernel: &Path, initrd: &Path, cmdline: &str, out: &Path) -> Result<Vec<u8>> {
    let vmm = native_vmm()?;
    let output = Command::new(&vmm)
        .arg("pack")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", cmdline, "--mem", GUEST_MEM])
        .args(["--cpus", &GUEST_CPUS.to_string()])
        .arg("-o")
        .arg(out)
        .output()
        .context("running rampart-vmm pack")?;
    if !output.status.success() {
        bail!(
            "rampart-vmm pack failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::read(out).with_context(|| format!("reading {}", out.display()))
}

/// Copies `from`'s signer and signature into `to`: a re-packed bundle that
/// was not re-signed.
fn with_old_signature(to: &mut [u8], from: &[u8]) {
    to[offset::SIGNER..offset::IMAGE].copy_from_slice(&from[offset::SIGNER..offset::IMAGE]);
}

/// Writes `bytes` with the byte at `at` flipped to `dir/name`.
fn flipped(dir: &Path, name: &str, bytes: &[u8], at: usize) -> Result<PathBuf> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    let p = dir.join(name);
    fs::write(&p, &b).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// The signed bundle and the three tampered ones, in `build/linux-bundle/`.
///
/// # Errors
///
/// Fetching, packing or signing failed.
pub fn bundles(kernel: &Path, initrd: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let dir = artifacts::build_dir().join("linux-bundle");
    fs::create_dir_all(&dir)?;
    let unsigned = pack(kernel, initrd, CMDLINE, &dir.join("unsigned.bundle"))?;
    let signed = Bundle::sign(&unsigned, &crate::attest::signing_key()?)
        .map_err(|e| anyhow::anyhow!("signing the Linux bundle: {e}"))?;
    let signed_path = dir.join("signed.bundle");
    fs::write(&signed_path, &signed)?;
    let k = fs::read(kernel)?;
    let i = fs::read(initrd)?;
    let mut cmdline = CMDLINE.as_bytes().to_vec();
    if let Some(last) = cmdline.last_mut() {
        *last ^= 0x01; // "quiet" -> "quieu"
    }
    let cmdline = String::from_utf8(cmdline)?;
    let mut out = vec![(signed_path, "guest/signed.bundle")];
    let tampered = [
        (
            "kernel",
            flipped(&dir, "Image.flipped", &k, k.len() / 2)?,
            initrd.to_path_buf(),
            CMDLINE.to_string(),
        ),
        (
            "initrd",
            kernel.to_path_buf(),
            flipped(&dir, "initrd.flipped", &i, i.len() / 2)?,
            CMDLINE.to_string(),
        ),
        (
            "cmdline",
            kernel.to_path_buf(),
            initrd.to_path_buf(),
            cmdline,
        ),
    ];
    for (what, kp, ip, c) in tampered {
        let path = dir.join(format!("tampered-{what}.bundle"));
        let mut b = pack(&kp, &ip, &c, &path)?;
        with_old_signature(&mut b, &signed);
        fs::write(&path, &b)?;
        let dest = match what {
            "kernel" => "guest/tampered-kernel.bundle",
            "initrd" => "guest/tampered-initrd.bundle",
            _ => "guest/tampered-cmdline.bundle",
        };
        out.push((path, dest));
    }
    Ok(out)
}

/// The Linux host (2 CPUs) with the bundles in its initramfs.
///
/// # Errors
///
/// Fetching or building anything failed.
pub fn machine() -> Result<Machine> {
    prereq::ensure(&[&prereq::CPIO])?;
    let kernel = linux_guest::fetch()?;
    let _ = linux::prepare()?;
    let initrd = linux_guest::initramfs(&kernel, "")?;
    let vmm = linux_vmm::vmm_binary()?;
    let mut files = vec![(vmm, "bin/rampart-vmm")];
    files.extend(bundles(&kernel.image, &initrd)?);
    let host = linux::prepare_with(&files, HOST_SCRIPT)?;
    let mut m = Machine::new(artifacts::hypervisor()?);
    m.smp = 2;
    m.mem = linux_guest::HOST_MEM.into();
    m.cpu = "max".into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={} -- console=ttyAMA0 earlycon panic=-1 {}",
        linux_guest::POOL_MIB,
        linux::BRIEF_FLAG
    );
    Ok(m)
}

/// One boot's limit.
const TIMEOUT: Duration = Duration::from_secs(900);

/// The checks of the run: the three tampered bundles refused with
/// `BAD_SIGNATURE` (and never run); the signed one accepted at its first
/// run (no refusal), run as a protected VM with its RAM donated, torn down
/// with its pages reclaimed; kill -9 leaves its RAM inaccessible to the
/// host until `reclaim`, then zero. Returns whether the guest reached its
/// `/init` too (it cannot while a protected non-realm VM is enrolled in
/// MMIO guard: docs/formats.md, *Linux bundles*).
///
/// # Errors
///
/// The first thing missing.
pub fn check(console: &str) -> Result<String, String> {
    let find = |s: &str| console.lines().find(|l| l.contains(s));
    for what in ["kernel", "initrd", "cmdline"] {
        let status = find(&format!("bundle tampered-{what}: exit status"))
            .ok_or(format!("the tampered-{what} bundle was not run"))?;
        if !status.ends_with("exit status 4") {
            return Err(format!(
                "tampered {what}: want exit status 4 (refused): {status}"
            ));
        }
        find(&format!(
            "rampart-vmm: the hypervisor refused /guest/tampered-{what}.bundle: BAD_SIGNATURE"
        ))
        .ok_or(format!("tampered {what}: no BAD_SIGNATURE refusal printed"))?;
    }
    if find("refused /guest/signed.bundle").is_some() {
        return Err("the signed bundle was refused".into());
    }
    let line = |a: &str, b: &str| console.lines().any(|l| l.contains(a) && l.contains(b));
    if !line(
        "[linux] rampart-vmm: VM ",
        "(protected, 1 vCPU, 128 MiB of RAM at",
    ) || !line("[linux] rampart-vmm: VM ", "donated")
    {
        return Err("the signed bundle did not run as a protected VM with its RAM donated".into());
    }
    if !line(
        "[linux] rampart-vmm: VM ",
        "reclaimed, zeroed by the hypervisor",
    ) {
        return Err("the signed bundle's VM was not torn down".into());
    }
    let init = find(linux_guest::INIT_MARKER).is_some();
    if init {
        linux_guest::check_zeroed(console)?;
    }
    let kill = find("RAMPART-INIT: kill -9: guest RAM ").ok_or("no kill -9 line")?;
    let want = ": SIGBUS, after the kill: SIGBUS, after reclaim: 0x0000000000000000";
    if !kill.ends_with(want) {
        return Err(format!(
            "kill -9: want RAM SIGBUS while held and after the kill, zero after reclaim: {kill}"
        ));
    }
    Ok(format!(
        "3 tampered bundles refused (BAD_SIGNATURE); the signed one accepted and run protected ({}); kill -9: SIGBUS, then zero after reclaim",
        if init {
            "it reached /init"
        } else {
            "it did not reach /init: MMIO guard"
        }
    ))
}

/// `linux-bundle/smp2/protected`.
///
/// # Errors
///
/// Building, running or a check failed.
pub fn case() -> Result<String> {
    let run: Run = machine()?.run(TIMEOUT, None, false)?;
    let dir = artifacts::build_dir().join("linux-bundle");
    let _ = fs::write(dir.join("protected.log"), &run.console);
    check(&run.console).map_err(|e| anyhow::anyhow!(run.failure(&e)))
}

/// The issue-12 case of `cargo xtask test`.
pub fn cases(args: &crate::suite::TestArgs, case: &mut linux_vmm::CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    case("linux-bundle/smp2/protected".into(), &self::case);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        let mut c = String::new();
        for w in ["kernel", "initrd", "cmdline"] {
            c += &format!(
                "RAMPART-INIT: bundle tampered-{w}: exit status 4\n\
                 RAMPART-INIT: | rampart-vmm: the hypervisor refused /guest/tampered-{w}.bundle: BAD_SIGNATURE: ...\n"
            );
        }
        c += "[linux] rampart-vmm: VM 0x1000 (protected, 1 vCPU, 128 MiB of RAM at 0x6fe00000 donated), signed bundle\n\
              [linux] rampart-vmm: VM 0x1000 destroyed; 9 pages (36 KiB) reclaimed, zeroed by the hypervisor\n\
              RAMPART-INIT: kill -9: guest RAM 0x6fe00000 while running: SIGBUS, after the kill: SIGBUS, after reclaim: 0x0000000000000000\n";
        c
    }

    #[test]
    fn checks_refusals_the_protected_run_and_kill() {
        let ok = check(&good()).unwrap();
        assert!(ok.contains("did not reach /init"), "{ok}");
        let c = good().replacen(
            "tampered-initrd: exit status 4",
            "tampered-initrd: exit status 0",
            1,
        );
        assert!(check(&c).unwrap_err().contains("tampered initrd"));
        let c = good().replace(
            "refused /guest/tampered-cmdline.bundle: BAD_SIGNATURE",
            "refused /guest/tampered-cmdline.bundle: NOT_SIGNED",
        );
        assert!(check(&c).is_err());
        let c = format!(
            "{}rampart-vmm: the hypervisor refused /guest/signed.bundle: BAD_SIGNATURE\n",
            good()
        );
        assert!(check(&c).unwrap_err().contains("signed bundle was refused"));
        assert!(check(&good().replace(" donated)", " shared)")).is_err());
        let c = good().replace(
            "after reclaim: 0x0000000000000000",
            "after reclaim: 0x0000000000000001",
        );
        assert!(check(&c).unwrap_err().contains("kill -9"));
        let c = good().replace("while running: SIGBUS", "while running: 0x1400000000000000");
        assert!(check(&c).is_err());
    }
}
