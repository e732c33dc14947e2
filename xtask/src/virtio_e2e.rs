//! The Linux guest's virtio devices end to end (issue 11): the ext4 disk
//! image the guest mounts, the guest and host script parts
//! (`virtio_e2e/guest.sh`, `virtio_e2e/host.sh`) and the checks of the
//! console they print.
//!
//! What is checked, all from one boot:
//! - virtio-blk, host to guest: `from-host.bin` (fresh random bytes put in
//!   the ext4 image by xtask) read by the guest with the checksum xtask
//!   computed; the raw exchange disk's first 2 MiB (written by the host
//!   before the run) read by the guest with the host's checksum.
//! - virtio-blk, guest to host: 2 MiB the guest wrote to the exchange disk
//!   read back by the host from the image file with the guest's checksum;
//!   a file written on ext4, read back after a remount.
//! - vsock: 4 MiB round trips host to guest (the guest echoes) and guest to
//!   host (the host echoes), checksums equal.
//! - entropy: the guest reads `/dev/hwrng`, served by virtio-rng.
//! - the demo line: the first line of `hello.txt` on the disk.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::linux_guest::{self, Mode};
use crate::qemu::{Machine, Run};
use crate::{artifacts, linux, linux_vmm, prereq};

/// Host CPUs and guest vCPUs of the end-to-end case.
const SMP: u32 = 2;
const VCPUS: u32 = 2;
/// The boot, the devices and the round trips on two busy cores.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// The guest's part, sourced by its `/init`.
pub const GUEST_SCRIPT: &str = include_str!("virtio_e2e/guest.sh");
/// The host's part (sets `VIRTIO_ARGS`, defines `virtio_host_after`).
pub const HOST_SCRIPT: &str = include_str!("virtio_e2e/host.sh");
/// The line the guest prints from the disk.
pub const HELLO: &str = "Hello from Rampart's virtio disk: the guest mounted its ext4 image.";

/// The ext4 image of this xtask run.
pub struct Disk {
    /// The image (16 MiB).
    pub image: PathBuf,
    /// Hex SHA-256 of `from-host.bin` on it.
    pub from_host_sha256: String,
}

static DISK: std::sync::OnceLock<Disk> = std::sync::OnceLock::new();

/// Builds (once per xtask run) the 16 MiB ext4 image with `hello.txt`,
/// 512 KiB of fresh random bytes in `from-host.bin` and `rampart-vmm` (the
/// static binary `vmm`: the guest's vsock tool, which its busybox lacks),
/// with `mke2fs -t ext4 -d`.
///
/// # Errors
///
/// No `mke2fs`, or it failed.
pub fn disk(vmm: &Path) -> Result<&'static Disk> {
    use sha2::Digest as _;
    if let Some(d) = DISK.get() {
        return Ok(d);
    }
    prereq::ensure(&[&prereq::MKE2FS])?;
    let base = artifacts::build_dir().join("virtio");
    if let Ok(entries) = fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("disk-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("disk-{}", std::process::id()));
    let content = dir.join("content");
    fs::create_dir_all(&content).with_context(|| format!("creating {}", content.display()))?;
    fs::write(content.join("hello.txt"), format!("{HELLO}\n"))?;
    let mut data = vec![0u8; 512 << 10];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .context("reading /dev/urandom")?;
    fs::write(content.join("from-host.bin"), &data)?;
    fs::copy(vmm, content.join("rampart-vmm")).with_context(|| format!("copying {}", vmm.display()))?;
    let image = dir.join("disk.img");
    let _ = fs::remove_file(&image);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "rampart-guest", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("16M")
        .output()
        .context("running mke2fs")?;
    if !out.status.success() {
        bail!(
            "mke2fs -t ext4 -d {} {}: {}",
            content.display(),
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let from_host_sha256 = hex(&sha2::Sha256::digest(&data));
    Ok(DISK.get_or_init(|| Disk {
        image,
        from_host_sha256,
    }))
}

/// The Linux host with the guest (`vcpus`) and its virtio devices: the
/// guest and its `/init` part are lguest's ([`linux_guest::machine`]); a
/// second cpio archive appended to the host's initramfs (the kernel
/// unpacks each in turn) brings the disk image and `/virtio-host.sh`,
/// which the host's `linux_guest/host.sh` sources.
///
/// # Errors
///
/// Building anything failed.
pub fn machine(smp: u32, vcpus: u32) -> Result<Machine> {
    machine_with(smp, vcpus, false)
}

/// [`machine`], with the guest's benchmark part on (`bench`).
fn machine_with(smp: u32, vcpus: u32, bench: bool) -> Result<Machine> {
    let vmm = linux_vmm::vmm_binary()?;
    let disk = disk(&vmm)?;
    let mut m = linux_guest::machine(smp, vcpus, Mode::Boot, GUEST_SCRIPT)?;
    let base = m.initrd.clone().context("the Linux host has no initramfs")?;
    let mut a = linux::cpio::Newc::new();
    a.dir("guest")?;
    a.file("guest/disk.img", 0o644, &fs::read(&disk.image)?)?;
    let host_script = if bench { format!("BENCH=1\n{HOST_SCRIPT}") } else { HOST_SCRIPT.to_string() };
    a.file("virtio-host.sh", 0o644, host_script.as_bytes())?;
    let dir = disk.image.parent().context("disk image directory")?;
    let extra = dir.join("virtio.cpio.gz");
    linux::gzip(&a.finish(), &extra)?;
    let both = dir.join("host-initramfs.cpio.gz");
    let mut data = fs::read(&base).with_context(|| format!("reading {}", base.display()))?;
    data.extend_from_slice(&fs::read(&extra)?);
    fs::write(&both, &data).with_context(|| format!("writing {}", both.display()))?;
    m.initrd = Some(both);
    Ok(m)
}

/// Every check of the end-to-end run, each on its own line.
///
/// # Errors
///
/// The first failed check.
pub fn check_all(console: &str) -> Result<String, String> {
    let disk = DISK.get().ok_or("no disk image was built")?;
    let boot = linux_guest::check_boot(console)?;
    // As many as rampart-vmm was asked for (the demo's `--guest-cpus`).
    let vcpus = after(console, "(not protected, ")
        .and_then(|r| r.split(" vCPU").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(VCPUS);
    linux_guest::check_vcpus(console, vcpus)?;
    let zeroed = linux_guest::check_zeroed(console)?;
    let block = check_block(console, &disk.from_host_sha256)?;
    let vsock = check_vsock(console)?;
    let rng = check_rng(console)?;
    let input = check_console_input(console)?;
    Ok(format!("{boot}; {zeroed}
  virtio-blk: {block}
  virtio-vsock: {vsock}
  virtio-rng: {rng}
  virtio-console: {input}"))
}

/// virtio-console input: the token the host wrote into `rampart-vmm`'s
/// stdin came back in the guest's answer on hvc0 (printed by the VMM's
/// console device, not the PL011: the guest writes it only to hvc0).
///
/// # Errors
///
/// No token, or no answer carrying it.
pub fn check_console_input(console: &str) -> Result<String, String> {
    let token = word(console, "virtio: console token ").ok_or("the host never wrote to the guest's console (no token line)")?;
    let want = format!("rampart-console-{token}");
    let answer = after(console, "RAMPART-GUEST: virtio: console answer: ")
        .ok_or_else(|| format!("no answer on hvc0 to the console input ({})", after(console, "RAMPART-GUEST: virtio: console").unwrap_or("nothing")))?;
    if answer != want {
        return Err(format!("the guest read `{answer}` from hvc0, the host wrote `{want}`"));
    }
    Ok(format!("the guest read the host's line `{want}` from hvc0 and answered on it"))
}

/// The issue-11 device cases of `cargo xtask test` (one boot).
pub fn cases(args: &crate::suite::TestArgs, case: &mut crate::linux_vmm::CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    let name = format!("linux-guest/smp{SMP}/vcpus{VCPUS}/virtio");
    case(name.clone(), &move || {
        let run = machine(SMP, VCPUS)?.run(TIMEOUT, None, false)?;
        let _ = fs::write(
            artifacts::build_dir().join("virtio").join(format!("{}.log", name.replace('/', "-"))),
            &run.console,
        );
        check_all(&run.console).map_err(|e| anyhow::anyhow!(run.failure(&e)))
    });
}

/// `cargo xtask bench linux-guest`: `rounds` boots of the virtio guest
/// (`vcpus` vCPUs on `smp` host CPUs), each with the usual checks, and per
/// boot: `rampart-vmm` start to the guest's `/init`, virtio-blk write and
/// read throughput (2 MiB with `dd`, `conv=fsync` / after dropping the
/// caches), the vsock round-trip latency (200 pings of 64 bytes against
/// the host's echo) and the exits by reason.
///
/// # Errors
///
/// A boot failed its checks or printed no figures.
pub fn bench(smp: u32, vcpus: u32, rounds: u32, timeout: std::time::Duration) -> Result<()> {
    let load = || fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    println!("xtask: bench linux-guest: {rounds} boot(s), {vcpus} vCPU(s) on {smp} host CPUs (QEMU TCG: figures are relative)");
    let mut rows = Vec::new();
    for round in 1..=rounds {
        let before = load();
        let run = machine_with(smp, vcpus, true)?.run(timeout, None, false)?;
        let _ = fs::write(artifacts::build_dir().join("virtio").join(format!("bench-{round}.log")), &run.console);
        if let Err(e) = check_all(&run.console) {
            bail!("round {round}: {}", run.failure(&e));
        }
        let f = parse_bench(&run.console).map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        println!(
            "  round {round}: /init after {:.1} s; blk write {:.2} MB/s, read {:.2} MB/s; vsock RTT median {} us (min {} us); load {before} .. {}",
            f.init_ms as f64 / 1000.0,
            f.write_mbs,
            f.read_mbs,
            f.rtt_median_us,
            f.rtt_min_us,
            load()
        );
        for l in &f.exits {
            println!("    {l}");
        }
        rows.push(f);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "xtask: bench linux-guest medians: /init {:.1} s, blk write {:.2} MB/s, read {:.2} MB/s, vsock RTT {:.0} us",
        med(rows.iter().map(|r| r.init_ms as f64 / 1000.0).collect()),
        med(rows.iter().map(|r| r.write_mbs).collect()),
        med(rows.iter().map(|r| r.read_mbs).collect()),
        med(rows.iter().map(|r| r.rtt_median_us as f64).collect()),
    );
    Ok(())
}

/// One benchmark boot's figures.
#[derive(Debug, PartialEq)]
pub struct BenchFigures {
    /// `rampart-vmm` start to the guest kernel's "Run /init".
    pub init_ms: u64,
    /// virtio-blk sequential write, MB/s (10^6 bytes).
    pub write_mbs: f64,
    /// virtio-blk sequential read, MB/s.
    pub read_mbs: f64,
    /// vsock 64-byte round trip, median and minimum, µs.
    pub rtt_median_us: u64,
    /// Minimum.
    pub rtt_min_us: u64,
    /// The VMM's `exits ...` statistics lines.
    pub exits: Vec<String>,
}

/// Reads a benchmark boot's figures from its console.
///
/// # Errors
///
/// The first figure missing.
pub fn parse_bench(console: &str) -> Result<BenchFigures, String> {
    // The guest boots `quiet`, so the VMM never sees "Run /init": the
    // time to /init is the VMM's first guest exit (vCPU 0 entering the
    // kernel) plus the guest's clock when its /init started.
    let first = after(console, "stats: launch: ")
        .and_then(|l| l.split("first exit ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or("no `launch: ... first exit` line")?;
    let uptime = word(console, "virtio: uptime at init ")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or("no `uptime at init` line")?;
    let init_ms = first + uptime * 1000.0;
    let rate = |what: &str| -> Result<f64, String> {
        let l = after(console, &format!("bench: blk {what} ")).ok_or_else(|| format!("no blk {what} figure"))?;
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            [bytes, "bytes", "in", secs, "s", ..] => {
                let b: f64 = bytes.parse().map_err(|_| format!("blk {what}: `{l}`"))?;
                let s: f64 = secs.parse().map_err(|_| format!("blk {what}: `{l}`"))?;
                // /proc/uptime has 10 ms steps.
                Ok(b / s.max(0.01) / 1e6)
            }
            _ => Err(format!("blk {what}: `{l}`")),
        }
    };
    let ping = after(console, "vsock ping: ").ok_or("no vsock ping figure")?;
    let us = |key: &str| {
        ping.split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("vsock ping: `{ping}`"))
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a positive number of milliseconds")]
    let init_ms = init_ms as u64;
    Ok(BenchFigures {
        init_ms,
        write_mbs: rate("write")?,
        read_mbs: rate("read")?,
        rtt_median_us: us("median ")?,
        rtt_min_us: us("min ")?,
        exits: console
            .lines()
            .filter_map(|l| l.split("stats: ").nth(1))
            .filter(|l| l.starts_with("exits ") || l.starts_with("mmio exits by device") || l.starts_with("device "))
            .map(str::to_string)
            .collect(),
    })
}

/// After the demo (`cargo xtask run --host linux --guest linux`).
///
/// # Errors
///
/// The first failed check.
pub fn after_demo(run: &Run) -> Result<()> {
    check_all(&run.console)
        .map(|s| println!("xtask: {s}"))
        .map_err(|e| anyhow::anyhow!(e))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value after `key` on the first console line containing it (up to
/// the end of the line).
fn after<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.find(key).map(|i| l[i + key.len()..].trim()))
}

/// The first word after `key`.
fn word<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    after(console, key).and_then(|v| v.split_whitespace().next())
}

/// `sent sha256 A got back sha256 B` → (A, B).
fn round_trip<'a>(console: &'a str, key: &str) -> Result<(&'a str, &'a str), String> {
    let v = after(console, key).ok_or(format!("no `{key}` line"))?;
    let w: Vec<&str> = v.split_whitespace().collect();
    match w.as_slice() {
        ["sent", "sha256", a, "got", "back", "sha256", b, ..] => Ok((a, b)),
        _ => Err(format!("malformed `{key}` line: {v}")),
    }
}

fn sha_ok(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The virtio-blk checks (both directions) on a console.
///
/// # Errors
///
/// What did not match, with the values.
pub fn check_block(console: &str, from_host_sha256: &str) -> Result<String, String> {
    let line =
        after(console, "virtio: disk line: ").ok_or("the guest printed no line from the disk")?;
    if line != HELLO {
        return Err(format!("the guest read `{line}` from hello.txt"));
    }
    let got =
        word(console, "virtio: ext4 from-host.bin sha256 ").ok_or("no from-host.bin checksum")?;
    if got != from_host_sha256 {
        return Err(format!(
            "the guest read from-host.bin with SHA-256 {got}, xtask wrote {from_host_sha256}"
        ));
    }
    let v = after(console, "virtio: ext4 from-guest.bin written sha256 ")
        .ok_or("no from-guest.bin line")?;
    let w: Vec<&str> = v.split_whitespace().collect();
    if !matches!(w.as_slice(), [a, "read", "back", "sha256", b] if sha_ok(a) && a == b) {
        return Err(format!("ext4 write and read back differ: {v}"));
    }
    let host_wrote = word(console, "RAMPART-INIT: virtio: vdb host-to-guest sha256 ")
        .ok_or("the host printed no exchange-disk checksum")?;
    let guest_read = word(console, "RAMPART-GUEST: virtio: vdb host-to-guest sha256 ")
        .ok_or("the guest printed no exchange-disk checksum")?;
    if !sha_ok(host_wrote) || host_wrote != guest_read {
        return Err(format!(
            "host to guest through /dev/vdb: the host wrote {host_wrote}, the guest read {guest_read}"
        ));
    }
    let guest_wrote = word(console, "virtio: vdb guest-to-host sha256 ")
        .ok_or("the guest printed no written checksum")?;
    let host_read = word(
        console,
        "virtio: vdb guest-to-host read by the host sha256 ",
    )
    .ok_or("the host did not read the exchange disk back")?;
    if !sha_ok(guest_wrote) || guest_wrote != host_read {
        return Err(format!(
            "guest to host through /dev/vdb: the guest wrote {guest_wrote}, the host read {host_read}"
        ));
    }
    Ok(format!(
        "hello.txt printed; from-host.bin {}... read by the guest; 2 MiB each way through /dev/vdb ({}..., {}...); ext4 write + remount read back",
        &from_host_sha256[..12],
        &host_wrote[..12],
        &guest_wrote[..12]
    ))
}

/// The vsock round trips.
///
/// # Errors
///
/// A missing or differing checksum.
pub fn check_vsock(console: &str) -> Result<String, String> {
    let (a, b) = round_trip(console, "virtio: vsock host-to-guest round trip: ")?;
    if !sha_ok(a) || a != b {
        return Err(format!("host to guest and back: sent {a}, got {b}"));
    }
    let (c, d) = round_trip(console, "virtio: vsock guest-to-host round trip: ")?;
    if !sha_ok(c) || c != d {
        return Err(format!("guest to host and back: sent {c}, got {d}"));
    }
    let t1 = after(console, "virtio: vsock host-to-guest round trip: ").unwrap_or("");
    let t2 = after(console, "virtio: vsock guest-to-host round trip: ").unwrap_or("");
    let detail = |t: &str| {
        t.rsplit_once('(')
            .map_or(String::new(), |(_, d)| d.trim_end_matches(')').to_string())
    };
    Ok(format!(
        "4 MiB host→guest→host ({}), 4 MiB guest→host→guest ({})",
        detail(t1),
        detail(t2)
    ))
}

/// The entropy device.
///
/// # Errors
///
/// The guest's hwrng is not virtio-rng or read nothing.
pub fn check_rng(console: &str) -> Result<String, String> {
    let current = after(console, "virtio: hwrng current: ").ok_or("no hwrng line")?;
    if !current.starts_with("virtio_rng") {
        return Err(format!(
            "the guest's current hwrng is `{current}`, not virtio_rng"
        ));
    }
    let read = word(console, "virtio: hwrng read ").ok_or("no hwrng read line")?;
    if read != "4096" {
        return Err(format!("/dev/hwrng gave {read} bytes of 4096"));
    }
    Ok(format!("{current}: 4096 bytes from /dev/hwrng"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const T: &str = "1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn console(guest_read: &str) -> String {
        format!(
            "RAMPART-INIT: virtio: vdb host-to-guest sha256 {S}\n\
             [linux] RAMPART-GUEST: virtio: hwrng current: virtio_rng.0\n\
             [linux] RAMPART-GUEST: virtio: hwrng read 4096 bytes, first: 00\n\
             [linux] RAMPART-GUEST: virtio: disk line: {HELLO}\n\
             [linux] RAMPART-GUEST: virtio: ext4 from-host.bin sha256 {T}\n\
             [linux] RAMPART-GUEST: virtio: ext4 from-guest.bin written sha256 {S} read back sha256 {S}\n\
             [linux] RAMPART-GUEST: virtio: vdb host-to-guest sha256 {guest_read}\n\
             [linux] RAMPART-GUEST: virtio: vdb guest-to-host sha256 {T}\n\
             RAMPART-INIT: virtio: vsock host-to-guest round trip: sent sha256 {S} got back sha256 {S} (vsock: sent 4194304 bytes, received 4194304 bytes in 900 ms)\n\
             [linux] RAMPART-GUEST: virtio: vsock guest-to-host round trip: sent sha256 {T} got back sha256 {T} (x)\n\
             RAMPART-INIT: virtio: vdb guest-to-host read by the host sha256 {T}\n"
        )
    }

    #[test]
    fn checks_pass_only_when_the_checksums_agree() {
        let good = console(S);
        check_block(&good, T).unwrap();
        check_vsock(&good).unwrap();
        check_rng(&good).unwrap();
        assert!(
            check_block(&console(T), T)
                .unwrap_err()
                .contains("host to guest through /dev/vdb")
        );
        assert!(check_block(&good, S).unwrap_err().contains("from-host.bin"));
        let bad = good.replace(
            &format!("got back sha256 {S}"),
            &format!("got back sha256 {T}"),
        );
        assert!(check_vsock(&bad).is_err());
        assert!(check_rng(&good.replace("virtio_rng.0", "none")).is_err());
        assert!(check_block("", T).is_err());
    }

    #[test]
    fn reads_the_bench_figures() {
        let c = "[linux] stats: exits EXIT_MMIO: 10\n\
            [linux] RAMPART-GUEST: virtio: uptime at init 52.00\n\
            [linux] stats: launch: VM ready 9100.5 ms, first exit 9234.567 ms, first console output 20.0 ms (after the VMM started)\n\
            [linux] RAMPART-GUEST: bench: blk write 2097152 bytes in 0.5 s\n\
            [linux] RAMPART-GUEST: bench: blk read 2097152 bytes in 0.25 s\n\
            [linux] RAMPART-GUEST: bench: vsock ping: 200 round trips of 64 bytes, median 850 us, min 700 us\n";
        let f = parse_bench(c).unwrap();
        assert_eq!(f.init_ms, 61234);
        assert!((f.write_mbs - 4.194_304).abs() < 1e-9);
        assert!((f.read_mbs - 8.388_608).abs() < 1e-9);
        assert_eq!((f.rtt_median_us, f.rtt_min_us), (850, 700));
        assert_eq!(f.exits, ["exits EXIT_MMIO: 10"]);
        assert!(parse_bench(&c.replace("bench: blk read", "x")).is_err());
        assert!(parse_bench(&c.replace("vsock ping", "x")).is_err());
    }

    #[test]
    fn console_input_needs_the_token_back() {
        let good = "RAMPART-INIT: virtio: console token 0a1b2c\n\
            [linux] RAMPART-GUEST: virtio: console answer: rampart-console-0a1b2c\n";
        check_console_input(good).unwrap();
        assert!(check_console_input(&good.replace("console-0a1b2c", "console-0a1b2d")).is_err());
        assert!(check_console_input("[linux] RAMPART-GUEST: virtio: console answer: rampart-console-\n").is_err());
        assert!(check_console_input("RAMPART-INIT: virtio: console token 0a1b2c\n").is_err());
    }
}
