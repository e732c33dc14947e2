//! Issue 12: Debian's stock sid kernel as a *realm* (confidential) guest
//! under `rampart-vmm`, from a signed version-2 bundle (`rampart-vmm pack
//! --realm`, signed with the development key), on the Linux host.
//!
//! One boot (`linux-realm/smp2/vcpus2`) checks:
//! - the kernel found a realm (`RME: Using RSI version 1.0` in its dmesg)
//!   and bounces its DMA through swiotlb;
//! - the virtio devices of the issue-11 run work through the bounce
//!   buffers: the ext4 disk mounted, read and written, the raw exchange
//!   disk both ways, vsock round trips both ways, entropy, console input
//!   (`virtio_e2e`'s scripts and checks, unchanged);
//! - a configfs-tsm report (`arm-cca-guest`) for the host's 64-byte
//!   challenge is a CCA token that `rampart attest-verify` accepts (the
//!   platform key of the device secret, the challenge, the bundle's
//!   measurement as the RIM) and refuses with one byte flipped;
//! - a host process scanning the realm's RAM through `/dev/mem` while it
//!   runs (`rampart-vmm scan-ram`) finds none of the secret the guest holds
//!   in private memory but the marker it wrote to its disk (in the shared
//!   bounce buffers), and most pages refuse it; `devmem` of the realm's
//!   first page dies of `SIGBUS`;
//! - the RAM reads zero after the VM is gone.
//!
//! The test case adds, in the same boot of the Linux host (the demo, `cargo
//! xtask run --host linux --guest linux --protected`, does not):
//! - verified boot, before the realm runs: three bundles with one flipped
//!   byte in the kernel, the initrd and the command line, re-packed but not
//!   re-signed, are each refused at their first run with the hypervisor's
//!   `BAD_SIGNATURE`; the signed bundle they were made from is accepted, and
//!   SIGTERM tears it down with the VMM's teardown report and its RAM zero
//!   (`linux_realm/tamper.sh`; this was the `linux-bundle/smp2/protected`
//!   case, which needed a boot of its own);
//! - kill -9 of the realm's `rampart-vmm` once the guest's checks are done:
//!   the orphaned realm's RAM still dies of `SIGBUS`; once the next
//!   `rampart-vmm` session's clean-up (or `rampart-vmm reclaim`) has
//!   destroyed it, every page of it reads zero (a scan of all 160 MiB).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rampart_attest::{Bundle, DeviceSecret, offset};

use crate::linux_guest::{self, GuestKernel};
use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, linux, linux_vmm, prereq, virtio_e2e};

/// Host CPUs and guest vCPUs (the issue-11 virtio run's).
pub const SMP: u32 = 2;
/// The realm's vCPUs.
pub const VCPUS: u32 = 2;
/// The realm's RAM (the bundle's manifest).
pub const GUEST_MEM: &str = "160M";
/// The IPA width under `-cpu max` (48-bit PA): the shared bit is bit 47.
pub const IPA_BITS: u32 = 48;
/// The virtio transports the measured device tree declares: what
/// `virtio_e2e/host.sh`'s `VIRTIO_ARGS` attaches (two disks, entropy,
/// console, vsock).
pub const VIRTIO_DEVICES: u32 = 5;
/// The modules the realm adds to the guest's initramfs (configfs-tsm's
/// provider; its dependencies `tsm_report` and `configfs` come along).
pub const MODULES: [&str; 1] = ["arm-cca-guest"];

/// The realm's part of the guest's `/init`.
const GUEST_SCRIPT: &str = include_str!("linux_realm/guest.sh");
/// The host's part.
const HOST_SCRIPT: &str = include_str!("linux_realm/host.sh");
/// The host's runs of the signed and tampered small bundles (the test case).
const TAMPER_SCRIPT: &str = include_str!("linux_realm/tamper.sh");
/// What the test case's realm adds to [`cmdline`]: the guest's `/init`
/// sleeps once its checks are done instead of powering off, for the kill -9.
const SLEEP_FLAG: &str = "rguest.sleep=1";
/// The whole run, on two busy cores under TCG.
const TIMEOUT: Duration = Duration::from_secs(2400);

/// The realm's command line: `earlycon` at the alias of the PL011 (it runs
/// before Linux knows it is a realm; `Documentation/arch/arm64/arm-cca.rst`),
/// a 16 MiB bounce-buffer pool (the default 64 MiB would be most of RAM).
#[must_use]
pub fn cmdline() -> String {
    let uart = rampart_abi::guest::GUEST_UART_BASE | rampart_abi::rsi::shared_bit(IPA_BITS);
    format!("console=ttyAMA0 earlycon=pl011,mmio32,{uart:#x} panic=-1 quiet swiotlb=8192")
}

fn dir() -> PathBuf {
    artifacts::build_dir().join("linux-realm")
}

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

/// What `rampart-vmm pack --realm` packs.
struct Pack<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    cmdline: &'a str,
    /// Guest RAM, MiB.
    mem_mib: u64,
    /// virtio-mmio transports in the measured device tree.
    virtio_devices: u32,
}

impl Pack<'_> {
    /// Packs an unsigned realm bundle into `out` and returns its bytes.
    fn write(&self, out: &Path) -> Result<Vec<u8>> {
        let vmm = native_vmm()?;
        let output = Command::new(&vmm)
            .arg("pack")
            .arg("--kernel")
            .arg(self.kernel)
            .arg("--initrd")
            .arg(self.initrd)
            .args([
                "--cmdline",
                self.cmdline,
                "--mem",
                &format!("{}M", self.mem_mib),
            ])
            .args(["--cpus", &VCPUS.to_string()])
            .args([
                "--virtio-devices",
                &self.virtio_devices.to_string(),
                "--realm",
            ])
            .arg("-o")
            .arg(out)
            .output()
            .context("running rampart-vmm pack --realm")?;
        if !output.status.success() {
            bail!(
                "rampart-vmm pack --realm failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        fs::read(out).with_context(|| format!("reading {}", out.display()))
    }
}

/// The realm's RAM in MiB ([`GUEST_MEM`]).
fn guest_mem_mib() -> u64 {
    GUEST_MEM.trim_end_matches('M').parse().unwrap_or(160)
}

/// Packs (`rampart-vmm pack --realm`) and signs the realm's bundle (the
/// demo's and `bench realm`'s: [`cmdline`], [`GUEST_MEM`]).
///
/// # Errors
///
/// Packing or signing failed.
pub fn bundle(kernel: &Path, initrd: &Path) -> Result<(PathBuf, Vec<u8>)> {
    bundle_with(kernel, initrd, &cmdline(), "realm")
}

/// [`bundle`] with `cmdline`, written as `build/linux-realm/<name>.bundle`.
fn bundle_with(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    name: &str,
) -> Result<(PathBuf, Vec<u8>)> {
    let dir = dir();
    fs::create_dir_all(&dir)?;
    let pack = Pack {
        kernel,
        initrd,
        cmdline,
        mem_mib: guest_mem_mib(),
        virtio_devices: VIRTIO_DEVICES,
    };
    let bytes = pack.write(&dir.join(format!("{name}.unsigned.bundle")))?;
    let signed = Bundle::sign(&bytes, &crate::attest::signing_key()?)
        .map_err(|e| anyhow!("signing the realm bundle: {e}"))?;
    let path = dir.join(format!("{name}.bundle"));
    fs::write(&path, &signed)?;
    Ok((path, signed))
}

/// The least RAM, in MiB, that holds `kernel` (an arm64 `Image`), an initrd
/// of `initrd_len` bytes and the device tree as `rampart-vmm pack` places
/// them (`place` in host/vmm/src/linux/mod.rs): the kernel's `image_size`
/// from its `text_offset`, rounded up to 2 MiB, then the initrd in whole
/// pages, then the 2 MiB device-tree slot; RAM is a multiple of 2 MiB.
///
/// # Errors
///
/// Not an arm64 `Image`.
fn least_mem_mib(kernel: &[u8], initrd_len: u64) -> Result<u64> {
    const MIB: u64 = 1 << 20;
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(kernel.get(at..at + 8)?.try_into().ok()?))
    };
    let (Some(text_offset), Some(image_size)) = (word(8), word(16)) else {
        bail!("the kernel is too short for an arm64 Image header");
    };
    if kernel.get(56..60) != Some(b"ARM\x64".as_slice()) {
        bail!("the kernel is not an arm64 Image (no ARM\\x64 magic)");
    }
    let kernel_end = (text_offset + image_size).next_multiple_of(2 * MIB);
    let bytes = kernel_end + initrd_len.next_multiple_of(4096) + 2 * MIB;
    Ok(bytes.next_multiple_of(2 * MIB) / MIB)
}

/// Copies `from`'s signer and signature into `to`: a re-packed bundle that
/// was not re-signed.
fn with_old_signature(to: &mut [u8], from: &[u8]) -> Result<()> {
    let (Some(to), Some(from)) = (
        to.get_mut(offset::SIGNER..offset::IMAGE),
        from.get(offset::SIGNER..offset::IMAGE),
    ) else {
        bail!("a bundle shorter than its header");
    };
    to.copy_from_slice(from);
    Ok(())
}

/// `bytes` with the byte at the middle flipped, written to `dir/name`.
fn flipped(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let mut b = bytes.to_vec();
    let mid = b.len() / 2;
    let byte = b.get_mut(mid).context("an empty file to flip a byte of")?;
    *byte ^= 0x01;
    let p = dir.join(name);
    fs::write(&p, &b).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Issue 12's tamper test, in `build/linux-realm/tamper/`: the signed
/// reference bundle (the realm's kernel, initrd and command line, with the
/// least RAM that holds them and no virtio devices) and three bundles with
/// one flipped byte in the kernel, the initrd or the command line, each
/// re-packed and given the reference's signer and signature. The small RAM
/// keeps the refused runs cheap (the hypervisor measures every page before
/// it refuses); the measurement still covers every part, the device tree
/// and the RAM size included. Returns them with their paths in the Linux
/// host.
///
/// # Errors
///
/// Reading, packing or signing failed.
pub fn tamper_bundles(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<Vec<(PathBuf, &'static str)>> {
    let dir = dir().join("tamper");
    fs::create_dir_all(&dir)?;
    let k = fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let i = fs::read(initrd).with_context(|| format!("reading {}", initrd.display()))?;
    let mem_mib = least_mem_mib(&k, i.len() as u64)?;
    let pack = |kernel, initrd, cmdline, out: &Path| {
        Pack {
            kernel,
            initrd,
            cmdline,
            mem_mib,
            virtio_devices: 0,
        }
        .write(out)
    };
    let unsigned = pack(
        kernel,
        initrd,
        cmdline,
        &dir.join("reference.unsigned.bundle"),
    )?;
    let signed = Bundle::sign(&unsigned, &crate::attest::signing_key()?)
        .map_err(|e| anyhow!("signing the reference bundle: {e}"))?;
    let reference = dir.join("reference.bundle");
    fs::write(&reference, &signed)?;
    let mut bad_cmdline = cmdline.as_bytes().to_vec();
    if let Some(last) = bad_cmdline.last_mut() {
        *last ^= 0x01; // "swiotlb=8192" -> "swiotlb=8193"
    }
    let bad_cmdline = String::from_utf8(bad_cmdline)?;
    let bad_kernel = flipped(&dir, "Image.flipped", &k)?;
    let bad_initrd = flipped(&dir, "initrd.flipped", &i)?;
    let mut out = vec![(reference, "guest/reference.bundle")];
    for (what, kp, ip, c, dest) in [
        (
            "kernel",
            bad_kernel.as_path(),
            initrd,
            cmdline,
            "guest/tampered-kernel.bundle",
        ),
        (
            "initrd",
            kernel,
            bad_initrd.as_path(),
            cmdline,
            "guest/tampered-initrd.bundle",
        ),
        (
            "cmdline",
            kernel,
            initrd,
            bad_cmdline.as_str(),
            "guest/tampered-cmdline.bundle",
        ),
    ] {
        let path = dir.join(format!("tampered-{what}.bundle"));
        let mut b = pack(kp, ip, c, &path)?;
        with_old_signature(&mut b, &signed)?;
        fs::write(&path, &b)?;
        out.push((path, dest));
    }
    Ok(out)
}

/// What a boot of the realm's machine does besides the realm's own checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The demo (and `bench realm`): the realm runs, powers off and is torn
    /// down by `rampart-vmm`.
    Demo,
    /// `linux-realm/smp2/vcpus2`: the signed and tampered small bundles run
    /// first; the realm sleeps once its checks are done and its VMM gets
    /// kill -9.
    Test,
}

/// The Linux host (2 CPUs) with the signed realm bundle, the virtio run's
/// disk image and scripts: the demo's machine ([`Scope::Demo`]).
///
/// # Errors
///
/// Fetching or building anything failed.
pub fn machine() -> Result<(Machine, Vec<u8>)> {
    machine_for(Scope::Demo)
}

/// [`machine`] for `scope`; returns the signed realm bundle too.
///
/// # Errors
///
/// Fetching or building anything failed.
pub fn machine_for(scope: Scope) -> Result<(Machine, Vec<u8>)> {
    prereq::ensure(&[&prereq::CPIO])?;
    let kernel: GuestKernel = linux_guest::fetch()?;
    let _ = linux::prepare()?;
    // The realm's checks first: under TCG on busy cores the whole run is
    // long, and they are what this case is for.
    let guest_script = format!("{GUEST_SCRIPT}\n{}", virtio_e2e::GUEST_SCRIPT);
    let initrd = linux_guest::initramfs_with(&kernel, &guest_script, &MODULES, "realm")?;
    let (bundle_path, signed) = match scope {
        Scope::Demo => bundle(&kernel.image, &initrd)?,
        Scope::Test => bundle_with(
            &kernel.image,
            &initrd,
            &format!("{} {SLEEP_FLAG}", cmdline()),
            "realm-test",
        )?,
    };
    let vmm = linux_vmm::vmm_binary()?;
    let disk = virtio_e2e::disk(&vmm)?;
    let mut files = vec![
        (vmm, "bin/rampart-vmm"),
        (bundle_path, "guest/realm.bundle"),
        (disk.image.clone(), "guest/disk.img"),
        (
            write_tmp("virtio-host.sh", virtio_e2e::HOST_SCRIPT)?,
            "virtio-host.sh",
        ),
    ];
    let script = match scope {
        Scope::Demo => format!("REALM_LIMIT=2200\n{HOST_SCRIPT}"),
        Scope::Test => {
            // The tampered bundles carry the demo's command line: the one
            // the realm's measurement is documented with.
            let bundles = tamper_bundles(&kernel.image, &initrd, &cmdline())?;
            files.extend(bundles);
            format!("REALM_LIMIT=2200\nREALM_TEST=1\n{TAMPER_SCRIPT}\n{HOST_SCRIPT}")
        }
    };
    let host = linux::prepare_with(&files, &script)?;
    let mut m = Machine::new(artifacts::hypervisor()?);
    m.smp = SMP;
    m.mem = linux_guest::HOST_MEM.into();
    m.cpu = "max".into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={} -- console=ttyAMA0 earlycon panic=-1 {}",
        linux_guest::POOL_MIB,
        linux::BRIEF_FLAG
    );
    Ok((m, signed))
}

fn write_tmp(name: &str, text: &str) -> Result<PathBuf> {
    let p = dir().join(name);
    fs::create_dir_all(dir())?;
    fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

fn after<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.split_once(key).map(|(_, r)| r.trim()))
}

/// The kernel's own word that it runs as a realm.
///
/// # Errors
///
/// No such line.
pub fn check_realm(console: &str) -> Result<String, String> {
    let rsi = console
        .lines()
        .find(|l| {
            l.contains("RAMPART-GUEST: realm: dmesg:") && l.contains("RME: Using RSI version")
        })
        .ok_or("the guest's dmesg does not say `RME: Using RSI version` (not a realm)")?;
    let version = rsi.split("RME: ").nth(1).unwrap_or("").trim().to_string();
    Ok(format!("the guest kernel says `RME: {version}`"))
}

/// The value after `key` on the first console line that starts with it.
fn line_after<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .map(str::trim)
}

/// One `rampart-vmm scan-ram` report whose lines start with `prefix`:
/// (readable pages, aborted pages, readable pages with a non-zero byte if
/// printed, hits of each of `patterns`).
fn scan_report(
    console: &str,
    prefix: &str,
    patterns: &[&str],
) -> Result<(u64, u64, Option<u64>, Vec<u64>), String> {
    let pages = line_after(console, &format!("{prefix}rampart-vmm: scan of "))
        .ok_or(format!("no scan report `{prefix}rampart-vmm: scan of ...`"))?;
    let num = |s: &str, key: &str| -> Option<u64> {
        s.split_once(key)?.0.split_whitespace().last()?.parse().ok()
    };
    let readable = num(pages, " pages readable").ok_or(format!("scan line: {pages}"))?;
    let aborted = num(pages, " aborted").ok_or(format!("scan line: {pages}"))?;
    let nonzero = console.lines().find_map(|l| {
        let r = l
            .trim_start()
            .strip_prefix(prefix)?
            .strip_prefix("rampart-vmm: scan: ")?;
        num(r, " readable pages hold a non-zero byte")
    });
    let hits = patterns
        .iter()
        .map(|pat| {
            let l = line_after(
                console,
                &format!("{prefix}rampart-vmm: scan: pattern {pat}: "),
            )
            .ok_or(format!("no scan result for {pat}"))?;
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or(format!("scan result: {l}"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    Ok((readable, aborted, nonzero, hits))
}

/// The secret and the marker the guest announced before the scan.
fn scan_patterns(console: &str) -> Result<(String, String), String> {
    let line = after(console, "RAMPART-GUEST: realm: scan now: ")
        .ok_or("the guest never asked for the scan")?;
    let word = |key: &str| {
        line.split_once(key)
            .and_then(|(_, r)| r.split_whitespace().next())
            .map(str::to_string)
    };
    Ok((
        word("secret ").ok_or("no secret")?,
        word("marker ").ok_or("no marker")?,
    ))
}

/// The scan: secret nowhere, marker somewhere, most pages refused; devmem
/// of the first page killed by SIGBUS (exit status 135).
///
/// # Errors
///
/// The first thing that is not so.
pub fn check_scan(console: &str) -> Result<String, String> {
    let (secret, marker) = scan_patterns(console)?;
    let (readable, aborted, _, hits) =
        scan_report(console, "RAMPART-INIT: realm: ", &[&secret, &marker])?;
    let (s, m) = (hits[0], hits[1]);
    if s != 0 {
        return Err(format!(
            "the realm's private secret appears {s} times in host-readable RAM"
        ));
    }
    if m == 0 {
        return Err(format!(
            "the marker the realm wrote to its disk is in none of the {readable} host-readable pages (no bounce buffer?)"
        ));
    }
    if aborted <= readable {
        return Err(format!(
            "only {aborted} of the realm's pages refused the host ({readable} readable)"
        ));
    }
    let devmem = after(
        console,
        "realm: devmem of the realm's first page: exit status ",
    )
    .ok_or("no devmem line")?;
    if !devmem.starts_with("135 ") && devmem != "135" {
        return Err(format!(
            "devmem of the realm's first page did not die of SIGBUS (exit 135): {devmem}"
        ));
    }
    Ok(format!(
        "host scan of the realm's RAM: {aborted} pages refused, {readable} readable (shared); the private secret 0 times, the disk marker {m} times (bounce buffers); devmem of its first page: SIGBUS"
    ))
}

/// Issue 12's tamper test (`linux_realm/tamper.sh`): the three tampered
/// bundles refused at their first run with `BAD_SIGNATURE` (exit status 4,
/// the VM never ran), the signed reference bundle accepted (its first
/// `VCPU_RUN` returned) and, after SIGTERM, torn down by `rampart-vmm`
/// (the teardown report, exit status 143, or 0 had the guest stopped by
/// itself) with its RAM reading zero.
///
/// # Errors
///
/// The first thing missing.
pub fn check_tamper(console: &str) -> Result<String, String> {
    let find = |s: &str| console.lines().find(|l| l.contains(s));
    let mut refused = Vec::new();
    for what in ["kernel", "initrd", "cmdline"] {
        let status = line_after(
            console,
            &format!("RAMPART-INIT: bundle tampered-{what}: exit status "),
        )
        .ok_or(format!("the tampered-{what} bundle was not run"))?;
        if status.split_whitespace().next() != Some("4") {
            return Err(format!(
                "tampered {what}: want exit status 4 (refused at the first run): {status}"
            ));
        }
        find(&format!(
            "rampart-vmm: the hypervisor refused /guest/tampered-{what}.bundle: BAD_SIGNATURE"
        ))
        .ok_or(format!("tampered {what}: no BAD_SIGNATURE refusal printed"))?;
        // "refused after N ms: the first VCPU_RUN, in which the hypervisor measured M MiB of guest RAM"
        let cost = line_after(
            console,
            &format!("RAMPART-INIT: | [tampered-{what}] rampart-vmm: refused after "),
        )
        .and_then(|r| {
            let ms = r.split_whitespace().next()?;
            let mib = r.split_once("measured ")?.1.split_whitespace().next()?;
            Some(format!("{what} {ms} ms for {mib} MiB"))
        })
        .unwrap_or(format!("{what} (no time printed)"));
        refused.push(cost);
    }
    if let Some(l) = find("refused /guest/reference.bundle") {
        return Err(format!("the signed reference bundle was refused: {l}"));
    }
    let accepted = line_after(console, "RAMPART-INIT: bundle reference: accepted: ")
        .ok_or("the signed reference bundle's first VCPU_RUN never returned (not accepted)")?;
    let status = line_after(console, "RAMPART-INIT: bundle reference: exit status ")
        .ok_or("the reference run did not finish")?;
    if status != "143" && status != "0" {
        return Err(format!(
            "the reference run: want exit status 143 (SIGTERM, clean teardown): {status}"
        ));
    }
    let line = |a: &str, b: &str| console.lines().any(|l| l.contains(a) && l.contains(b));
    if !line("[reference] rampart-vmm: VM ", "(protected realm, ")
        || !line("[reference] rampart-vmm: VM ", " donated)")
    {
        return Err(
            "the reference bundle did not run as a protected realm with its RAM donated".into(),
        );
    }
    if !line(
        "[reference] rampart-vmm: VM ",
        "reclaimed, zeroed by the hypervisor",
    ) {
        return Err("no teardown report (`VM ... destroyed; ... reclaimed, zeroed by the hypervisor`) for the reference VM".into());
    }
    let ram = line_after(
        console,
        "RAMPART-INIT: bundle reference: RAM after the teardown: ",
    )
    .ok_or("no `bundle reference: RAM after the teardown` line")?;
    let words: Vec<&str> = ram.split_whitespace().collect();
    match words.as_slice() {
        [_, x, _, y] if is_zero(x) && is_zero(y) => {}
        _ => return Err(format!("the reference VM's RAM after its teardown: {ram}")),
    }
    let took = line_after(console, "RAMPART-INIT: bundles: the four runs took ").unwrap_or("? s");
    Ok(format!(
        "tampered kernel, initrd, command line: each refused at its first run with BAD_SIGNATURE ({}); the signed reference bundle accepted ({accepted}), then torn down (exit {status}, RAM zero); the four runs took {took}",
        refused.join(", ")
    ))
}

fn is_zero(word: &str) -> bool {
    word.strip_prefix("0x")
        .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b == b'0'))
}

/// kill -9 of the realm's `rampart-vmm` once the guest's checks are done
/// (`realm_kill9` in `linux_realm/host.sh`): its first page gives SIGBUS
/// while it runs and after the kill (the hypervisor holds the orphaned VM);
/// the pid killed was rampart-vmm's and it is gone; exactly one of the
/// clean-up of the next session (`list`) and `rampart-vmm reclaim`
/// destroys the orphan; then every page of its RAM is readable and zero,
/// with neither the guest's secret nor its marker anywhere, and no VM is
/// left.
///
/// # Errors
///
/// The first thing that is not so.
pub fn check_kill(console: &str) -> Result<String, String> {
    let find = |s: &str| console.lines().find(|l| l.contains(s));
    find("RAMPART-GUEST: sleeping until the host stops the VM")
        .ok_or("the realm never finished its checks (no `sleeping` line)")?;
    let killed = line_after(console, "RAMPART-INIT: realm: kill -9 of rampart-vmm (")
        .ok_or("the host never killed the realm's rampart-vmm")?;
    // "PID: COMM) while the realm runs": the pid the VMM's shell recorded
    // must still name rampart-vmm (not a vsock tool linked to it).
    if !killed.contains(": rampart-vmm) ") {
        return Err(format!(
            "kill -9 went to a process that is not rampart-vmm: {killed}"
        ));
    }
    if find("RAMPART-GUEST: powering off").is_some() {
        return Err("the realm powered off by itself".into());
    }
    let gone = console
        .lines()
        .find(|l| {
            l.contains("RAMPART-INIT: realm: rampart-vmm (") && l.contains(") gone after kill -9")
        })
        .ok_or("rampart-vmm did not die of kill -9 (no `gone after kill -9` line)")?;
    // Killed, the VMM neither tore the realm down nor reported an exit.
    if let Some(l) = console.lines().find(|l| {
        l.contains("[realm] rampart-vmm: exit status")
            || (l.contains("[realm] rampart-vmm: VM ") && l.contains(" destroyed"))
    }) {
        return Err(format!(
            "the killed rampart-vmm tore the realm down itself: {l}"
        ));
    }
    // Who destroyed the orphan: the clean-up of the first rampart-vmm
    // session after the kill (`list` here: the pool table names the dead
    // pid, session.rs), or `rampart-vmm reclaim` if the table had lost it
    // (then `list` shows it with no VMM). Exactly one of the two.
    let pid = killed.split(':').next().unwrap_or("");
    let swept = console.lines().any(|l| {
        l.contains("RAMPART-INIT: realm: after kill -9: list: ")
            && l.contains("destroyed VM 0x")
            && l.contains(&format!(" left by pid {pid} (realm, no longer running)"))
    });
    let orphan_listed = console.lines().any(|l| {
        l.contains("RAMPART-INIT: realm: after kill -9: list: 0x")
            && l.contains("no running rampart-vmm owns it")
    });
    let reclaimed = line_after(console, "RAMPART-INIT: realm: reclaim: reclaimed ")
        .ok_or("no `rampart-vmm reclaim` report")?;
    let by = match (swept, orphan_listed, reclaimed.split_whitespace().next()) {
        (true, false, Some("0")) => "the next rampart-vmm session's clean-up (`list`) destroyed it",
        (false, true, Some("1")) => "`rampart-vmm list` showed it with no VMM, `rampart-vmm reclaim` destroyed it",
        _ => {
            return Err(format!(
                "the orphaned realm was not destroyed once (by the clean-up after pid {pid}: {swept}; listed as orphaned: {orphan_listed}; reclaim: {reclaimed})"
            ));
        }
    };
    let kill =
        line_after(console, "RAMPART-INIT: realm: kill -9: guest RAM ").ok_or("no kill -9 line")?;
    let want = ": SIGBUS, after the kill: SIGBUS, after reclaim: 0x0000000000000000";
    if !kill.ends_with(want) {
        return Err(format!(
            "kill -9: want the realm's first page SIGBUS while it runs and after the kill, zero after reclaim: {kill}"
        ));
    }
    let (secret, marker) = scan_patterns(console)?;
    let (readable, aborted, nonzero, hits) =
        scan_report(console, "RAMPART-INIT: reclaimed: ", &[&secret, &marker])?;
    let pages = realm_pages();
    if readable != pages || aborted != 0 {
        return Err(format!(
            "after reclaim, {readable} of the realm's {pages} pages are readable and {aborted} aborted"
        ));
    }
    match nonzero {
        Some(0) => {}
        Some(n) => {
            return Err(format!(
                "after kill -9 and reclaim, {n} pages of the realm's RAM are not zero"
            ));
        }
        None => return Err("the scan after reclaim printed no count of non-zero pages".into()),
    }
    if hits.iter().any(|&h| h != 0) {
        return Err(format!(
            "after reclaim the secret/marker still appear {hits:?} times"
        ));
    }
    let live = console
        .lines()
        .filter(|l| l.starts_with("RAMPART-INIT: list: ") && l.contains("0x"))
        .count();
    if live != 0 {
        return Err(format!("{live} VM(s) still listed at the end"));
    }
    let zeroed = linux_guest::check_zeroed(console)?;
    let gone = gone
        .split_once(" gone after kill -9 ")
        .map_or("", |(_, r)| r.trim());
    Ok(format!(
        "kill -9 of the realm's rampart-vmm (gone {gone}): the orphaned realm's first page SIGBUS; {by}; then all {pages} pages readable and zero; {zeroed}"
    ))
}

/// The realm's RAM in 4 KiB pages.
fn realm_pages() -> u64 {
    guest_mem_mib() * 256
}

/// The guest's configfs-tsm token: the challenge it used is the host's,
/// `rampart attest-verify` accepts it (platform key, challenge, the signed
/// bundle's measurement as the RIM, the hypervisor's boot measurement if
/// the log has it) and refuses it with its last byte flipped.
///
/// # Errors
///
/// Anything missing or refused.
pub fn check_token(console: &str, signed: &[u8]) -> Result<String> {
    let host = after(console, "realm: challenge ").context("the host printed no challenge")?;
    let guest = after(console, "GUEST-CCA-CHALLENGE ").context("the guest printed no challenge")?;
    if host != guest {
        bail!("the guest's challenge {guest} is not the host's {host}");
    }
    let token: String = console
        .lines()
        .filter_map(|l| l.split_once("GUEST-CCA-TOKEN ").map(|(_, r)| r.trim()))
        .collect();
    if token.is_empty() {
        bail!(
            "no configfs-tsm token from the guest ({})",
            after(console, "RAMPART-GUEST: realm: reading outblob").unwrap_or("no error printed")
        );
    }
    let rim = crate::attest::hex(
        &Bundle::parse(signed)
            .map_err(|e| anyhow!("{e}"))?
            .measurement
            .0,
    );
    let platform = DeviceSecret::from_bytes(&crate::attest::device_secret()?)
        .cca_platform_key()?
        .public_key();
    let platform = crate::attest::hex(&rampart_attest::cca::public_key_bytes(&platform));
    let hypervisor = crate::attest::parse_log(console).boot_measurement;
    let verify = |token: &str| -> Result<std::process::Output> {
        let mut c = Command::new(crate::attest::cli()?);
        c.args([
            "attest-verify",
            "--report-hex",
            token,
            "--platform-key",
            &platform,
        ])
        .args(["--measurement", &rim, "--nonce", host]);
        if let Some(h) = &hypervisor {
            c.args(["--hypervisor-measurement", h]);
        }
        c.output().context("running rampart attest-verify")
    };
    let out = verify(&token)?;
    if !out.status.success() {
        bail!(
            "rampart attest-verify refused the realm's token ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut flipped = crate::attest::parse_hex(&token)?;
    let mid = flipped.len() / 2;
    if let Some(b) = flipped.get_mut(mid) {
        *b ^= 1;
    }
    if verify(&crate::attest::hex(&flipped))?.status.success() {
        bail!("rampart attest-verify accepted the realm's token with one byte flipped");
    }
    // Issue 12: Veraison's ccatoken verifies the same token (tools/ccacheck).
    let bytes = crate::attest::parse_hex(&token)?;
    let ccatoken =
        crate::ccacheck::verify_linux_token(&bytes, &platform, host, &rim, hypervisor.as_deref())?;
    Ok(format!(
        "configfs-tsm token ({} bytes) verified by rampart attest-verify (platform key, the host's challenge, RIM = the signed bundle's measurement{}), refused with one byte flipped\n  {ccatoken}",
        token.len() / 2,
        if hypervisor.is_some() {
            ", hypervisor measurement"
        } else {
            ""
        }
    ))
}

/// The realm's own checks, common to the demo and the test case: the
/// kernel found a realm and bounces its DMA, the VM was a protected realm
/// with its RAM donated, the token, the host's scan.
fn check_realm_run(console: &str, signed: &[u8]) -> Result<Vec<String>> {
    let fail = |e: String| anyhow!(e);
    let realm = check_realm(console).map_err(fail)?;
    console
        .lines()
        .find(|l| {
            l.contains(&format!(
                "(protected realm, {VCPUS} vCPUs, {} MiB of RAM at",
                guest_mem_mib()
            )) && l.contains("donated")
        })
        .ok_or_else(|| anyhow!("the VM was not a protected realm with its RAM donated"))?;
    let bounce = console
        .lines()
        .find_map(|l| {
            l.split_once("RAMPART-GUEST: realm: dmesg: ")
                .map(|(_, r)| r.trim())
                .filter(|r| r.contains("software IO TLB"))
        })
        .map_or_else(
            || "no swiotlb line in its dmesg".to_string(),
            |l| format!("its DMA bounces through swiotlb (`{l}`)"),
        );
    let token = check_token(console, signed)?;
    let scan = check_scan(console).map_err(fail)?;
    Ok(vec![format!("{realm}; {bounce}"), token, scan])
}

/// Every check of the demo's run (`cargo xtask run --host linux --guest
/// linux --protected`): the realm's own checks and the virtio run's,
/// powered off and torn down cleanly.
///
/// # Errors
///
/// The first failed check.
pub fn check_all(console: &str, signed: &[u8]) -> Result<String> {
    let mut lines = check_realm_run(console, signed)?;
    lines.push(virtio_e2e::check_all(console).map_err(|e| anyhow!(e))?);
    Ok(lines.join("\n  "))
}

/// Every check of the test case's run: the tamper test before the realm,
/// the realm's own checks, the virtio devices through bounce buffers (the
/// disk image's `from-host.bin` has SHA-256 `from_host_sha256`), and the
/// kill -9 at the end (instead of the demo's clean power-off: the clean
/// teardown of a Linux bundle VM is the reference run's).
///
/// # Errors
///
/// The first failed check.
pub fn check_case(console: &str, signed: &[u8], from_host_sha256: &str) -> Result<String> {
    let fail = |e: String| anyhow!(e);
    let tamper = check_tamper(console).map_err(fail)?;
    let mut lines = check_realm_run(console, signed)?;
    let init = console
        .lines()
        .find(|l| l.contains(linux_guest::INIT_MARKER))
        .ok_or_else(|| anyhow!("the realm never reached its /init"))?;
    linux_guest::check_vcpus(console, VCPUS).map_err(fail)?;
    lines.push(format!(
        "{}\n  virtio-blk: {}\n  virtio-vsock: {}\n  virtio-rng: {}\n  virtio-console: {}",
        init.trim(),
        virtio_e2e::check_block(console, from_host_sha256).map_err(fail)?,
        virtio_e2e::check_vsock(console).map_err(fail)?,
        virtio_e2e::check_rng(console).map_err(fail)?,
        virtio_e2e::check_console_input(console).map_err(fail)?
    ));
    // The end: kill -9 instead of the demo's clean power-off
    // (`linux_guest::check_boot`); `check_kill` includes `check_zeroed`.
    lines.push(check_kill(console).map_err(fail)?);
    lines.insert(0, tamper);
    Ok(lines.join("\n  "))
}

/// `linux-realm/smp2/vcpus2`.
///
/// # Errors
///
/// Building, running or a check failed.
pub fn case() -> Result<String> {
    let (m, signed) = machine_for(Scope::Test)?;
    let from_host = virtio_e2e::disk(&linux_vmm::vmm_binary()?)?
        .from_host_sha256
        .clone();
    let run: Run = m.run(TIMEOUT, None, false)?;
    let _ = fs::write(dir().join("realm.log"), &run.console);
    check_case(&run.console, &signed, &from_host)
        .map_err(|e| anyhow!(run.failure(&format!("{e:#}"))))
}

/// The issue-12 realm case of `cargo xtask test`.
pub fn cases(args: &crate::suite::TestArgs, case: &mut linux_vmm::CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    case(format!("linux-realm/smp{SMP}/vcpus{VCPUS}"), &self::case);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlycon_is_at_the_alias_of_the_uart() {
        assert!(cmdline().contains("earlycon=pl011,mmio32,0x800009000000 "));
    }

    #[test]
    fn the_scan_checks_read_the_host_lines() {
        let ok = "RAMPART-GUEST: realm: scan now: secret 00112233445566778899aabbccddeeff marker ffeeddccbbaa99887766554433221100
RAMPART-INIT: realm: rampart-vmm: scan of 0x1000..0x2000: 100 pages readable, 900 aborted (not the host's)
RAMPART-INIT: realm: rampart-vmm: scan: pattern 00112233445566778899aabbccddeeff: 0 hits in readable pages
RAMPART-INIT: realm: rampart-vmm: scan: pattern ffeeddccbbaa99887766554433221100: 3 hits in readable pages
RAMPART-INIT: realm: devmem of the realm's first page: exit status 135 (Bus error)
RAMPART-INIT: reclaimed: rampart-vmm: scan of 0x1000..0x2000: 1000 pages readable, 0 aborted (not the host's)
RAMPART-INIT: reclaimed: rampart-vmm: scan: pattern 00112233445566778899aabbccddeeff: 7 hits in readable pages
RAMPART-INIT: reclaimed: rampart-vmm: scan: pattern ffeeddccbbaa99887766554433221100: 0 hits in readable pages
";
        assert!(check_scan(ok).is_ok(), "{:?}", check_scan(ok));
        let leak = ok.replace("0 hits", "1 hits");
        assert!(check_scan(&leak).unwrap_err().contains("appears 1 times"));
        let no_bounce = ok.replace("3 hits", "0 hits");
        assert!(check_scan(&no_bounce).is_err());
        let read = ok.replace("exit status 135 (Bus error)", "exit status 0 (0x0)");
        assert!(check_scan(&read).is_err());
    }

    fn tamper_console() -> String {
        let mut c = String::new();
        for w in ["kernel", "initrd", "cmdline"] {
            c += &format!(
                "RAMPART-INIT: bundle tampered-{w}: exit status 4 after 9.5 s\n\
                 RAMPART-INIT: | [tampered-{w}] rampart-vmm: VM 0x1000 (protected realm, 2 vCPUs, 42 MiB of RAM at 0x50000000 donated), signed bundle /guest/tampered-{w}.bundle: kernel at 0x80000000\n\
                 RAMPART-INIT: | [tampered-{w}] rampart-vmm: refused after 8012 ms: the first VCPU_RUN, in which the hypervisor measured 42 MiB of guest RAM\n\
                 RAMPART-INIT: | rampart-vmm: the hypervisor refused /guest/tampered-{w}.bundle: BAD_SIGNATURE: the signature does not verify\n"
            );
        }
        c += "RAMPART-INIT: bundle reference: accepted: its first VCPU_RUN returned within 9.1 s\n\
              RAMPART-INIT: bundle reference: exit status 143\n\
              RAMPART-INIT: | [reference] rampart-vmm: VM 0x1000 (protected realm, 2 vCPUs, 42 MiB of RAM at 0x50000000 donated), signed bundle /guest/reference.bundle\n\
              RAMPART-INIT: | [reference] rampart-vmm: VM 0x1000 destroyed; 10800 pages (43200 KiB) reclaimed, zeroed by the hypervisor\n\
              RAMPART-INIT: bundle reference: RAM after the teardown: 0x50000000 0x0000000000000000 0x529ffff8 0x0000000000000000\n\
              RAMPART-INIT: bundles: the four runs took 40.2 s\n";
        c
    }

    #[test]
    fn the_tamper_checks_want_three_refusals_and_an_accepted_control() {
        let ok = check_tamper(&tamper_console()).unwrap();
        assert!(ok.contains("kernel 8012 ms for 42 MiB"), "{ok}");
        let c = tamper_console().replacen(
            "tampered-initrd: exit status 4",
            "tampered-initrd: exit status 0",
            1,
        );
        assert!(check_tamper(&c).unwrap_err().contains("tampered initrd"));
        let c = tamper_console().replace(
            "refused /guest/tampered-cmdline.bundle: BAD_SIGNATURE",
            "refused /guest/tampered-cmdline.bundle: NOT_SIGNED",
        );
        assert!(check_tamper(&c).unwrap_err().contains("tampered cmdline"));
        let c = tamper_console().replace(
            "RAMPART-INIT: bundle tampered-kernel: exit status 4 after 9.5 s\n",
            "",
        );
        assert!(check_tamper(&c).unwrap_err().contains("not run"));
        let c = format!(
            "{}RAMPART-INIT: | rampart-vmm: the hypervisor refused /guest/reference.bundle: BAD_SIGNATURE\n",
            tamper_console()
        );
        assert!(
            check_tamper(&c)
                .unwrap_err()
                .contains("reference bundle was refused")
        );
        let c = tamper_console().replace(
            "bundle reference: accepted: its first",
            "bundle reference: no first",
        );
        assert!(check_tamper(&c).unwrap_err().contains("not accepted"));
        let c = tamper_console().replace("exit status 143", "exit status 1");
        assert!(check_tamper(&c).is_err());
        let c = tamper_console().replace(
            "0x529ffff8 0x0000000000000000",
            "0x529ffff8 0x0000000000000100",
        );
        assert!(check_tamper(&c).unwrap_err().contains("after its teardown"));
        let c = tamper_console().replace("0x50000000 0x0000000000000000", "0x50000000 SIGBUS");
        assert!(check_tamper(&c).is_err());
        let c = tamper_console().replace("reclaimed, zeroed by the hypervisor", "");
        assert!(check_tamper(&c).unwrap_err().contains("teardown report"));
        assert!(check_tamper(&tamper_console().replace(" donated)", " shared)")).is_err());
    }

    fn kill_console() -> String {
        let pages = realm_pages();
        format!(
            "RAMPART-GUEST: realm: scan now: secret 00112233445566778899aabbccddeeff marker ffeeddccbbaa99887766554433221100
RAMPART-GUEST: sleeping until the host stops the VM
RAMPART-INIT: realm: kill -9 of rampart-vmm (91: rampart-vmm) while the realm runs
RAMPART-INIT: realm: rampart-vmm (91) gone after kill -9 within 0.1 s
RAMPART-INIT: realm: after kill -9: list: rampart-vmm: destroyed VM 0x400001000 left by pid 91 (realm, no longer running): its 41068 pages are the host's again
RAMPART-INIT: realm: after kill -9: list: no live VMs
RAMPART-INIT: realm: reclaim: reclaimed 0 VM(s)
RAMPART-INIT: realm: kill -9: guest RAM 0x50000000 while running: SIGBUS, after the kill: SIGBUS, after reclaim: 0x0000000000000000
RAMPART-INIT: reclaimed: rampart-vmm: scan of 0x50000000..0x5a000000: {pages} pages readable, 0 aborted (not the host's)
RAMPART-INIT: reclaimed: rampart-vmm: scan: 0 readable pages hold a non-zero byte
RAMPART-INIT: reclaimed: rampart-vmm: scan: pattern 00112233445566778899aabbccddeeff: 0 hits in readable pages
RAMPART-INIT: reclaimed: rampart-vmm: scan: pattern ffeeddccbbaa99887766554433221100: 0 hits in readable pages
RAMPART-INIT: guest RAM after the run: 0x50000000 0x0000000000000000 0x59fffff8 0x0000000000000000
RAMPART-INIT: list: no live VMs
"
        )
    }

    #[test]
    fn the_kill_checks_want_sigbus_then_every_page_zero() {
        assert!(
            check_kill(&kill_console()).is_ok(),
            "{:?}",
            check_kill(&kill_console())
        );
        let c = kill_console().replace("0 readable pages hold", "3 readable pages hold");
        assert!(check_kill(&c).unwrap_err().contains("3 pages"));
        let c = kill_console().replace(
            "RAMPART-INIT: reclaimed: rampart-vmm: scan: 0 readable pages hold a non-zero byte\n",
            "",
        );
        assert!(check_kill(&c).is_err());
        let c = kill_console().replace(", 0 aborted", ", 1 aborted");
        assert!(check_kill(&c).is_err());
        let c =
            kill_console().replace("while running: SIGBUS", "while running: 0x1400000000000000");
        assert!(check_kill(&c).unwrap_err().contains("kill -9"));
        let c = kill_console().replace(
            "after the kill: SIGBUS",
            "after the kill: 0x0000000000000000",
        );
        assert!(check_kill(&c).is_err());
        let c =
            kill_console().replace("after reclaim: 0x0000000000000000", "after reclaim: SIGBUS");
        assert!(check_kill(&c).is_err());
        // Nobody destroyed the orphan (the clean-up names another pid).
        let c = kill_console().replace("left by pid 91 ", "left by pid 92 ");
        assert!(check_kill(&c).unwrap_err().contains("not destroyed once"));
        // reclaim found one more VM after the clean-up.
        let c = kill_console().replace("reclaimed 0 VM(s)", "reclaimed 1 VM(s)");
        assert!(check_kill(&c).unwrap_err().contains("not destroyed once"));
        // The other way: the pool table had lost the VM, `list` showed it
        // with no VMM and `reclaim` destroyed it.
        let c = kill_console()
            .replace(
                "list: rampart-vmm: destroyed VM 0x400001000 left by pid 91 (realm, no longer running): its 41068 pages are the host's again",
                "list: 0x400001000  no running rampart-vmm owns it (`rampart-vmm reclaim` destroys it)",
            )
            .replace("reclaimed 0 VM(s)", "reclaimed 1 VM(s)");
        assert!(check_kill(&c).unwrap().contains("`rampart-vmm reclaim` destroyed it"));
        // Neither `list` nor `reclaim` ran after the kill: the orphan keeps
        // its RAM (SIGBUS, every page aborted).
        let c = kill_console()
            .lines()
            .filter(|l| !l.contains("after kill -9: list") && !l.contains("realm: reclaim"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("after reclaim: 0x0000000000000000", "after reclaim: SIGBUS")
            .replace(
                &format!("{} pages readable, 0 aborted", realm_pages()),
                &format!("0 pages readable, {} aborted", realm_pages()),
            );
        assert!(check_kill(&c).is_err());
        let c = kill_console().replace(
            "0 hits in readable pages\nRAMPART-INIT: guest RAM",
            "2 hits in readable pages\nRAMPART-INIT: guest RAM",
        );
        assert!(check_kill(&c).is_err());
        let c = format!("{}RAMPART-GUEST: powering off\n", kill_console());
        assert!(check_kill(&c).is_err());
        let c = format!("{}RAMPART-INIT: list: 0x2000  pid 7 (x)\n", kill_console());
        assert!(check_kill(&c).is_err());
        // The pid named a vsock tool (a link to rampart-vmm), not the VMM.
        let c = kill_console().replace("(91: rampart-vmm)", "(91: vsock-tool)");
        assert!(check_kill(&c).unwrap_err().contains("not rampart-vmm"));
        let c = kill_console().replace(
            "RAMPART-INIT: realm: rampart-vmm (91) gone after kill -9 within 0.1 s\n",
            "RAMPART-INIT: realm: rampart-vmm (91) still runs 10 s after kill -9\n",
        );
        assert!(check_kill(&c).unwrap_err().contains("did not die"));
        let c = format!("{}[realm] rampart-vmm: exit status 0\n", kill_console());
        assert!(check_kill(&c).unwrap_err().contains("tore the realm down"));
        let c = kill_console().replace(
            "0x59fffff8 0x0000000000000000",
            "0x59fffff8 0x0000000000000001",
        );
        assert!(check_kill(&c).unwrap_err().contains("not zero"));
    }

    #[test]
    fn the_tampered_bundles_get_the_least_ram_that_holds_their_parts() {
        let mut image = vec![0u8; 64];
        image[16..24].copy_from_slice(&39_583_744u64.to_le_bytes());
        image[56..60].copy_from_slice(b"ARM\x64");
        // 38 MiB of kernel (rounded up to 2 MiB), 276 pages of initrd,
        // 2 MiB of device-tree slot: 41.08 MiB, so 42.
        assert_eq!(least_mem_mib(&image, 1_126_934).unwrap(), 42);
        assert_eq!(least_mem_mib(&image, 0).unwrap(), 40);
        image[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
        assert_eq!(least_mem_mib(&image, 0).unwrap(), 42);
        image[56] = b'X';
        assert!(least_mem_mib(&image, 0).is_err());
        assert!(least_mem_mib(&image[..20], 0).is_err());
    }

    #[test]
    fn a_repacked_bundle_gets_the_old_signer_and_signature_only() {
        let from: Vec<u8> = (0..=255).collect();
        let mut to = vec![0xaa_u8; 256];
        with_old_signature(&mut to, &from).unwrap();
        assert!(to[..offset::SIGNER].iter().all(|&b| b == 0xaa));
        assert_eq!(
            &to[offset::SIGNER..offset::IMAGE],
            &from[offset::SIGNER..offset::IMAGE]
        );
        assert!(to[offset::IMAGE..].iter().all(|&b| b == 0xaa));
        assert!(with_old_signature(&mut to[..100], &from).is_err());
    }
}
