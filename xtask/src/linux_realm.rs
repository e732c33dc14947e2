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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rampart_attest::{Bundle, DeviceSecret};

use crate::linux_guest::{self, GuestKernel};
use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, linux, linux_bundle, linux_vmm, prereq, virtio_e2e};

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

/// Packs (`rampart-vmm pack --realm`) and signs the realm's bundle.
///
/// # Errors
///
/// Packing or signing failed.
pub fn bundle(kernel: &Path, initrd: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let dir = dir();
    fs::create_dir_all(&dir)?;
    let vmm = linux_bundle::native_vmm()?;
    let unsigned = dir.join("realm.unsigned.bundle");
    let output = Command::new(&vmm)
        .arg("pack")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", &cmdline(), "--mem", GUEST_MEM])
        .args(["--cpus", &VCPUS.to_string()])
        .args(["--virtio-devices", &VIRTIO_DEVICES.to_string(), "--realm"])
        .arg("-o")
        .arg(&unsigned)
        .output()
        .context("running rampart-vmm pack --realm")?;
    if !output.status.success() {
        bail!(
            "rampart-vmm pack --realm failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let bytes = fs::read(&unsigned)?;
    let signed = Bundle::sign(&bytes, &crate::attest::signing_key()?)
        .map_err(|e| anyhow!("signing the realm bundle: {e}"))?;
    let path = dir.join("realm.bundle");
    fs::write(&path, &signed)?;
    Ok((path, signed))
}

/// The Linux host (2 CPUs) with the signed realm bundle, the virtio run's
/// disk image and scripts.
///
/// # Errors
///
/// Fetching or building anything failed.
pub fn machine() -> Result<(Machine, Vec<u8>)> {
    prereq::ensure(&[&prereq::CPIO])?;
    let kernel: GuestKernel = linux_guest::fetch()?;
    let _ = linux::prepare()?;
    // The realm's checks first: under TCG on busy cores the whole run is
    // long, and they are what this case is for.
    let guest_script = format!("{GUEST_SCRIPT}\n{}", virtio_e2e::GUEST_SCRIPT);
    let initrd = linux_guest::initramfs_with(&kernel, &guest_script, &MODULES, "realm")?;
    let (bundle_path, signed) = bundle(&kernel.image, &initrd)?;
    let vmm = linux_vmm::vmm_binary()?;
    let disk = virtio_e2e::disk(&vmm)?;
    let script = format!("GUEST_LIMIT=2200\n{HOST_SCRIPT}");
    let files = vec![
        (vmm, "bin/rampart-vmm"),
        (bundle_path, "guest/realm.bundle"),
        (disk.image.clone(), "guest/disk.img"),
        (write_tmp("virtio-host.sh", virtio_e2e::HOST_SCRIPT)?, "virtio-host.sh"),
    ];
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
        .find(|l| l.contains("RAMPART-GUEST: realm: dmesg:") && l.contains("RME: Using RSI version"))
        .ok_or("the guest's dmesg does not say `RME: Using RSI version` (not a realm)")?;
    let version = rsi.split("RME: ").nth(1).unwrap_or("").trim().to_string();
    Ok(format!("the guest kernel says `RME: {version}`"))
}

/// The scan: secret nowhere, marker somewhere, most pages refused; devmem
/// of the first page killed by SIGBUS (exit status 135).
///
/// # Errors
///
/// The first thing that is not so.
pub fn check_scan(console: &str) -> Result<String, String> {
    let line = after(console, "RAMPART-GUEST: realm: scan now: ").ok_or("the guest never asked for the scan")?;
    let word = |key: &str| {
        line.split_once(key)
            .and_then(|(_, r)| r.split_whitespace().next())
            .map(str::to_string)
    };
    let (secret, marker) = (word("secret ").ok_or("no secret")?, word("marker ").ok_or("no marker")?);
    let pages = after(console, "realm: rampart-vmm: scan of ").ok_or("the host's scan printed nothing")?;
    let num = |s: &str, key: &str| -> Option<u64> {
        s.split_once(key)?.0.split_whitespace().last()?.parse().ok()
    };
    let readable = num(pages, " pages readable").ok_or(format!("scan line: {pages}"))?;
    let aborted = num(pages, " aborted").ok_or(format!("scan line: {pages}"))?;
    let hits = |pat: &str| -> Result<u64, String> {
        let l = after(console, &format!("scan: pattern {pat}: ")).ok_or(format!("no scan result for {pat}"))?;
        l.split_whitespace().next().and_then(|n| n.parse().ok()).ok_or(format!("scan result: {l}"))
    };
    let (s, m) = (hits(&secret)?, hits(&marker)?);
    if s != 0 {
        return Err(format!("the realm's private secret appears {s} times in host-readable RAM"));
    }
    if m == 0 {
        return Err(format!("the marker the realm wrote to its disk is in none of the {readable} host-readable pages (no bounce buffer?)"));
    }
    if aborted <= readable {
        return Err(format!("only {aborted} of the realm's pages refused the host ({readable} readable)"));
    }
    let devmem = after(console, "realm: devmem of the realm's first page: exit status ").ok_or("no devmem line")?;
    if !devmem.starts_with("135 ") && devmem != "135" {
        return Err(format!("devmem of the realm's first page did not die of SIGBUS (exit 135): {devmem}"));
    }
    Ok(format!(
        "host scan of the realm's RAM: {aborted} pages refused, {readable} readable (shared); the private secret 0 times, the disk marker {m} times (bounce buffers); devmem of its first page: SIGBUS"
    ))
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
    let rim = crate::attest::hex(&Bundle::parse(signed).map_err(|e| anyhow!("{e}"))?.measurement.0);
    let platform = DeviceSecret::from_bytes(&crate::attest::device_secret()?).cca_platform_key()?.public_key();
    let platform = crate::attest::hex(&rampart_attest::cca::public_key_bytes(&platform));
    let hypervisor = crate::attest::parse_log(console).boot_measurement;
    let verify = |token: &str| -> Result<std::process::Output> {
        let mut c = Command::new(crate::attest::cli()?);
        c.args(["attest-verify", "--report-hex", token, "--platform-key", &platform])
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
    let ccatoken = crate::ccacheck::verify_linux_token(&bytes, &platform, host, &rim, hypervisor.as_deref())?;
    Ok(format!(
        "configfs-tsm token ({} bytes) verified by rampart attest-verify (platform key, the host's challenge, RIM = the signed bundle's measurement{}), refused with one byte flipped\n  {ccatoken}",
        token.len() / 2,
        if hypervisor.is_some() { ", hypervisor measurement" } else { "" }
    ))
}

/// Every check of the run.
///
/// # Errors
///
/// The first failed check.
pub fn check_all(console: &str, signed: &[u8]) -> Result<String> {
    let fail = |e: String| anyhow!(e);
    let realm = check_realm(console).map_err(fail)?;
    console
        .lines()
        .find(|l| l.contains("(protected realm, 2 vCPUs, 160 MiB of RAM at") && l.contains("donated"))
        .ok_or_else(|| anyhow!("the VM was not a protected realm with its RAM donated"))?;
    let virtio = virtio_e2e::check_all(console).map_err(fail)?;
    let token = check_token(console, signed)?;
    let scan = check_scan(console).map_err(fail)?;
    Ok(format!("{realm}\n  {token}\n  {scan}\n  {virtio}"))
}

/// `linux-realm/smp2/vcpus2`.
///
/// # Errors
///
/// Building, running or a check failed.
pub fn case() -> Result<String> {
    let (m, signed) = machine()?;
    let run: Run = m.run(TIMEOUT, None, false)?;
    let _ = fs::write(dir().join("realm.log"), &run.console);
    check_all(&run.console, &signed).map_err(|e| anyhow!(run.failure(&format!("{e:#}"))))
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
";
        assert!(check_scan(ok).is_ok(), "{:?}", check_scan(ok));
        let leak = ok.replace("0 hits", "1 hits");
        assert!(check_scan(&leak).unwrap_err().contains("appears 1 times"));
        let no_bounce = ok.replace("3 hits", "0 hits");
        assert!(check_scan(&no_bounce).is_err());
        let read = ok.replace("exit status 135 (Bus error)", "exit status 0 (0x0)");
        assert!(check_scan(&read).is_err());
    }
}
