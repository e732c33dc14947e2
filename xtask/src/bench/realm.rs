//! `cargo xtask bench realm [--rounds N]` (issue 12): Debian's kernel as a
//! signed realm next to the same kernel as a non-protected guest, in one
//! boot of the stock Debian Linux host under Rampart.
//!
//! Both modes boot the same sid kernel `Image`, the same initrd (the
//! guest's `/init` with the benchmark part `realm/guest.sh`), the same
//! RAM ([`GUEST_MEM`]), vCPUs ([`VCPUS`]), command line (but for
//! `earlycon`'s address, which a realm must give at the UART's alias) and
//! virtio devices. The realm comes from a bundle packed with `rampart-vmm
//! pack --realm` and signed with the development key (as
//! `linux_realm::bundle` does); the plain guest from `rampart-vmm run
//! --kernel` (as `linux_guest` runs it). The host's `/init` part
//! (`realm/host.sh`) runs them alternately, realm first, `--rounds` times,
//! so drift in the build machine's load spreads over both.
//!
//! Per run: `rampart-vmm` start to the guest's `/init` (the VMM's first
//! guest exit plus the guest's uptime when its `/init` started, as `bench
//! linux-guest` does), split into the VMM's launch (VM ready), the first
//! `VCPU_RUN` (first exit minus VM ready: for the realm, EL2's measurement
//! of its whole RAM and the signature check) and the guest kernel's boot;
//! virtio-blk sequential write and read of 8 MiB (`dd`, `conv=fsync` /
//! after dropping the caches), a 4 MiB vsock echo and 100 vsock round
//! trips, each timed in the guest; the VMM's wall time and exits by
//! reason. A realm bounces every DMA buffer through swiotlb's shared pool,
//! so the throughput ratios realm/plain are the bounce-buffer cost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rampart_attest::Bundle;

use super::{BenchArgs, loadavg, max, median, min};
use crate::qemu::{HOST_LOAD_ADDRESS, Machine};
use crate::{artifacts, linux, linux_guest, linux_realm, linux_vmm, prereq, virtio_e2e};

/// Both modes' RAM: the realm case's (the realm's first run measures
/// every page of it, so no more). With 128 MiB, the 16 MiB bounce pool
/// and the 38 MiB kernel, both modes ran out of memory before `/init`.
pub const GUEST_MEM: &str = "160M";
/// Both modes' vCPUs (the realm case's).
pub const VCPUS: u32 = 2;
/// What `realm/host.sh` attaches: two disks, entropy, vsock (the
/// realm's measured device tree must declare as many transports).
const VIRTIO_DEVICES: u32 = 4;
/// One guest run's limit inside the host, seconds (then SIGTERM).
const RUN_LIMIT: u64 = 1500;
/// The guest's part.
const GUEST_SCRIPT: &str = include_str!("realm/guest.sh");
/// The host's part.
const HOST_SCRIPT: &str = include_str!("realm/host.sh");
/// Bytes the guest writes and reads on `/dev/vdb`, and echoes over vsock.
const BLK_BYTES: f64 = 8_388_608.0;

/// The two ways the same kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A signed realm bundle (protected, RAM donated, DMA bounced).
    Realm,
    /// `rampart-vmm run --kernel` (not protected, RAM shared).
    Plain,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Realm, Mode::Plain];

    fn name(self) -> &'static str {
        match self {
            Mode::Realm => "realm",
            Mode::Plain => "plain",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// The realm's command line (`linux_realm::cmdline`: `earlycon` at the
/// UART's alias, a 16 MiB bounce pool) plus `nokaslr`: the plain guest's
/// device tree carries a KASLR seed, the realm's does not (it would be
/// public), so neither randomises.
fn realm_cmdline() -> String {
    format!("{} nokaslr", linux_realm::cmdline())
}

/// The same, with `earlycon` found through the device tree's
/// `stdout-path` (the UART at its IPA: a plain guest has no alias).
fn plain_cmdline(realm: &str) -> String {
    realm
        .split_whitespace()
        .map(|w| {
            if w.starts_with("earlycon=") {
                "earlycon"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn dir() -> PathBuf {
    artifacts::build_dir().join("bench-realm")
}

/// Packs (`rampart-vmm pack --realm`) and signs the realm's bundle of
/// `kernel` and `initrd`.
fn bundle(kernel: &Path, initrd: &Path) -> Result<PathBuf> {
    let dir = dir();
    fs::create_dir_all(&dir)?;
    let unsigned = dir.join("realm.unsigned.bundle");
    let output = Command::new(linux_realm::native_vmm()?)
        .arg("pack")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", &realm_cmdline(), "--mem", GUEST_MEM])
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
    let signed = Bundle::sign(&fs::read(&unsigned)?, &crate::attest::signing_key()?)
        .map_err(|e| anyhow!("signing the realm bundle: {e}"))?;
    let path = dir.join("realm.bundle");
    fs::write(&path, signed)?;
    Ok(path)
}

/// The Linux host (`smp` CPUs) with both guests, the disk and the scripts;
/// with `icount`, QEMU counts instructions as time (`peer::ICOUNT`).
fn machine(smp: u32, rounds: u32, icount: bool) -> Result<Machine> {
    prereq::ensure(&[&prereq::CPIO])?;
    let kernel = linux_guest::fetch()?;
    let _ = linux::prepare()?;
    let initrd = linux_guest::initramfs_with(&kernel, GUEST_SCRIPT, &[], "bench-realm")?;
    let bundle = bundle(&kernel.image, &initrd)?;
    let vmm = linux_vmm::vmm_binary()?;
    let disk = virtio_e2e::disk(&vmm)?;
    let script = format!(
        "ROUNDS={rounds}\nGUEST_MEM={GUEST_MEM}\nGUEST_CPUS={VCPUS}\nRUN_LIMIT={RUN_LIMIT}\nPLAIN_CMDLINE='{}'\n{HOST_SCRIPT}",
        plain_cmdline(&realm_cmdline())
    );
    let files = vec![
        (vmm, "bin/rampart-vmm"),
        (bundle, "guest/realm.bundle"),
        (kernel.image.clone(), "guest/Image"),
        (initrd, "guest/initrd.cpio.gz"),
        (disk.image.clone(), "guest/disk.img"),
    ];
    let host = linux::prepare_with(&files, &script)?;
    let mut m = Machine::new(artifacts::hypervisor()?);
    m.smp = smp;
    m.mem = linux_guest::HOST_MEM.into();
    m.cpu = "max".into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={} -- console=ttyAMA0 earlycon panic=-1 {}",
        linux_guest::POOL_MIB,
        linux::BRIEF_FLAG
    );
    if icount {
        m.extra.extend(super::peer::ICOUNT.map(String::from));
    }
    Ok(m)
}

/// One guest run's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// `rampart-vmm` start to the VM created and loaded, ms.
    pub vm_ready_ms: f64,
    /// `rampart-vmm` start to the first guest exit, ms.
    pub first_exit_ms: f64,
    /// The guest's uptime when its `/init` started, s.
    pub uptime_at_init_s: f64,
    /// virtio-blk: 8 MiB written (with `fsync`), s.
    pub blk_write_s: f64,
    /// virtio-blk: 8 MiB read after dropping the caches, s.
    pub blk_read_s: f64,
    /// vsock: 4 MiB to the host's echo and back, ms.
    pub vsock_echo_ms: f64,
    /// vsock: 64-byte round trips, median µs.
    pub ping_median_us: f64,
    /// vsock: minimum µs.
    pub ping_min_us: f64,
    /// The VMM's wall time (start to the VM's end), s.
    pub wall_s: f64,
    /// Exits by reason (`EXIT_MMIO`, ..., and `total`).
    pub exits: BTreeMap<String, u64>,
    /// The VMM's `mmio exits by device` line.
    pub mmio_by_device: String,
}

impl Figures {
    /// `rampart-vmm` start to the guest's `/init`, s.
    pub fn init_s(&self) -> f64 {
        self.first_exit_ms / 1000.0 + self.uptime_at_init_s
    }

    /// The first `VCPU_RUN`: VM ready to the first guest exit, s.
    pub fn first_run_s(&self) -> f64 {
        (self.first_exit_ms - self.vm_ready_ms) / 1000.0
    }
}

/// The value after `key` on the first line containing it.
fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.find(key).map(|i| l[i + key.len()..].trim()))
}

/// The number right after `key` (up to white space), parsed.
fn num_after(text: &str, key: &str) -> Option<f64> {
    after(text, key)?.split_whitespace().next()?.parse().ok()
}

/// One run's console lines, between the host's `begin` and `end` lines:
/// (round, mode, lines, the VMM's exit status as the host read it).
pub fn segments(console: &str) -> Vec<(u32, Mode, String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(u32, Mode, String)> = None;
    for line in console.lines() {
        if let Some(rest) = line.split("RAMPART-INIT: bench-realm: begin ").nth(1) {
            let mut w = rest.split_whitespace();
            if let (Some(r), Some(m)) = (
                w.next().and_then(|r| r.parse().ok()),
                w.next().and_then(Mode::parse),
            ) {
                open = Some((r, m, String::new()));
            }
            continue;
        }
        if let Some(rest) = line.split("RAMPART-INIT: bench-realm: end ").nth(1) {
            if let Some((r, m, text)) = open.take() {
                let status = rest
                    .split("exit status ")
                    .nth(1)
                    .unwrap_or("unknown")
                    .trim()
                    .to_string();
                out.push((r, m, text, status));
            }
            continue;
        }
        if let Some((_, _, text)) = &mut open {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// Checks one run's console and reads its figures.
///
/// # Errors
///
/// The first check that fails or figure that is missing.
pub fn parse_run(mode: Mode, text: &str, status: &str) -> Result<Figures, String> {
    let tag = format!("[{}] ", mode.name());
    let vm = text
        .lines()
        .find(|l| {
            l.contains(&tag) && l.contains("rampart-vmm: VM ") && l.contains(" MiB of RAM at ")
        })
        .ok_or("no `rampart-vmm: VM ...` line: the VM was not created")?;
    let mib = GUEST_MEM.trim_end_matches('M');
    let want = match mode {
        Mode::Realm => format!("(protected realm, {VCPUS} vCPUs, {mib} MiB of RAM at "),
        Mode::Plain => format!("(not protected, {VCPUS} vCPUs, {mib} MiB of RAM at "),
    };
    if !vm.contains(&want) {
        return Err(format!("not the VM this mode wants (`{want}`): {vm}"));
    }
    if !text.contains("RAMPART-GUEST: init reached") {
        let why = text
            .lines()
            .find(|l| l.contains("Kernel panic") || l.contains("refused"))
            .unwrap_or("no panic printed");
        return Err(format!(
            "the guest never reached its /init ({})",
            why.trim()
        ));
    }
    let rme = text.lines().any(|l| {
        l.contains("RAMPART-GUEST: bench: dmesg: ") && l.contains("RME: Using RSI version")
    });
    match (mode, rme) {
        (Mode::Realm, false) => {
            return Err(
                "the realm's kernel did not say `RME: Using RSI version` (not a realm)".into(),
            );
        }
        (Mode::Plain, true) => return Err("the plain guest's kernel found a realm".into()),
        _ => {}
    }
    if status != "0" {
        return Err(format!("rampart-vmm exit status {status}"));
    }
    if !text.contains("RAMPART-GUEST: bench: done") {
        return Err("the guest's benchmark did not finish".into());
    }
    let blk =
        after(text, "RAMPART-GUEST: bench: blk sha256 written ").ok_or("no blk checksum line")?;
    match blk.split_whitespace().collect::<Vec<_>>().as_slice() {
        [w, "read", r] if w.len() == 64 && w == r => {}
        _ => {
            return Err(format!(
                "the 8 MiB read back from /dev/vdb differ from those written: {blk}"
            ));
        }
    }
    let echo = after(text, "RAMPART-GUEST: bench: vsock echo: ").ok_or("no vsock echo line")?;
    let vsock_echo_ms = match echo.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["sent", "sha256", a, "got", "back", "sha256", b, rest @ ..] if a.len() == 64 && a == b => {
            rest.windows(2)
                .find(|w| w[1].starts_with("ms"))
                .and_then(|w| w[0].parse().ok())
                .ok_or(format!("vsock echo: no time: {echo}"))?
        }
        _ => return Err(format!("the vsock echo came back different: {echo}")),
    };
    let launch = after(text, "stats: launch: ").ok_or("no `stats: launch:` line")?;
    let ms = |key: &str| -> Result<f64, String> {
        launch
            .split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or(format!("launch line without `{key}`: {launch}"))
    };
    let mut exits = BTreeMap::new();
    for l in text.lines().filter(|l| l.contains(&tag)) {
        if let Some(rest) = l.split("stats: exits ").nth(1)
            && let Some((reason, n)) = rest.split_once(": ")
            && let Some(Ok(n)) = n.split_whitespace().next().map(str::parse::<u64>)
        {
            exits.insert(reason.to_string(), n);
        }
    }
    if !exits.contains_key("total") {
        return Err("no `stats: exits total` line".into());
    }
    let secs = |what: &str| {
        num_after(
            text,
            &format!("RAMPART-GUEST: bench: blk {what} 8388608 bytes in "),
        )
        .ok_or(format!("no blk {what} time"))
    };
    Ok(Figures {
        vm_ready_ms: ms("VM ready ")?,
        first_exit_ms: ms("first exit ")?,
        uptime_at_init_s: num_after(text, "RAMPART-GUEST: bench: uptime at init ")
            .ok_or("no `uptime at init` line")?,
        blk_write_s: secs("write")?,
        blk_read_s: secs("read")?,
        vsock_echo_ms,
        ping_median_us: num_after(text, "bench: vsock ping: ")
            .and(num_after(text, ", median "))
            .ok_or("no vsock ping line")?,
        ping_min_us: num_after(text, " us, min ").ok_or("no vsock ping minimum")?,
        wall_s: num_after(text, "stats: wall time: ").ok_or("no `stats: wall time` line")?,
        exits,
        mmio_by_device: after(text, "stats: mmio exits by device: ")
            .unwrap_or("")
            .to_string(),
    })
}

/// A rate in MB/s (10^6 bytes) from bytes and seconds (/proc/uptime has
/// 10 ms steps).
fn mbs(bytes: f64, secs: f64) -> f64 {
    bytes / secs.max(0.01) / 1e6
}

/// The load average samples (seconds since the run started, 1-minute load).
type Samples = Arc<Mutex<Vec<(f64, f64)>>>;

/// Samples `/proc/loadavg` every 15 s until `stop`.
fn sample_load(stop: Arc<AtomicBool>, samples: Samples) -> std::thread::JoinHandle<()> {
    let start = Instant::now();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            if let Some(one) = loadavg()
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                && let Ok(mut s) = samples.lock()
            {
                s.push((start.elapsed().as_secs_f64(), one));
            }
            for _ in 0..150 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// One row of the summary: a name, how to read it from a run, the unit.
struct Metric {
    name: &'static str,
    unit: &'static str,
    get: fn(&Figures) -> f64,
}

/// The `virtioN` counts of the VMM's `mmio exits by device` line, summed.
fn virtio_mmio(f: &Figures) -> f64 {
    f.mmio_by_device
        .split(", ")
        .filter_map(|d| {
            d.strip_prefix("virtio")?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

fn exits_of(f: &Figures, reason: &str) -> f64 {
    f.exits.get(reason).copied().unwrap_or(0) as f64
}

const METRICS: [Metric; 17] = [
    Metric {
        name: "VMM start to VM ready",
        unit: "s",
        get: |f| f.vm_ready_ms / 1000.0,
    },
    Metric {
        name: "first VCPU_RUN (VM ready to first exit)",
        unit: "s",
        get: Figures::first_run_s,
    },
    Metric {
        name: "guest kernel start to /init (uptime)",
        unit: "s",
        get: |f| f.uptime_at_init_s,
    },
    Metric {
        name: "VMM start to guest /init",
        unit: "s",
        get: Figures::init_s,
    },
    Metric {
        name: "blk write 8 MiB, conv=fsync",
        unit: "MB/s",
        get: |f| mbs(BLK_BYTES, f.blk_write_s),
    },
    Metric {
        name: "blk read 8 MiB, caches dropped",
        unit: "MB/s",
        get: |f| mbs(BLK_BYTES, f.blk_read_s),
    },
    Metric {
        name: "vsock 4 MiB echo (each way)",
        unit: "MB/s",
        get: |f| mbs(BLK_BYTES / 2.0, f.vsock_echo_ms / 1000.0),
    },
    Metric {
        name: "vsock 64-byte round trip, median",
        unit: "ms",
        get: |f| f.ping_median_us / 1000.0,
    },
    Metric {
        name: "vsock 64-byte round trip, min",
        unit: "ms",
        get: |f| f.ping_min_us / 1000.0,
    },
    Metric {
        name: "VMM wall time",
        unit: "s",
        get: |f| f.wall_s,
    },
    Metric {
        name: "exits total",
        unit: "",
        get: |f| exits_of(f, "total"),
    },
    Metric {
        name: "exits EXIT_MMIO",
        unit: "",
        get: |f| exits_of(f, "EXIT_MMIO"),
    },
    Metric {
        name: "exits EXIT_INTERRUPT",
        unit: "",
        get: |f| exits_of(f, "EXIT_INTERRUPT"),
    },
    Metric {
        name: "exits EXIT_WAIT",
        unit: "",
        get: |f| exits_of(f, "EXIT_WAIT"),
    },
    Metric {
        name: "exits EXIT_EOI",
        unit: "",
        get: |f| exits_of(f, "EXIT_EOI"),
    },
    Metric {
        name: "exits EXIT_MEMORY_FAULT",
        unit: "",
        get: |f| exits_of(f, "EXIT_MEMORY_FAULT"),
    },
    Metric {
        name: "MMIO exits of the virtio devices",
        unit: "",
        get: virtio_mmio,
    },
];

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The summary table: per metric, each mode's median (min..max) and the
/// ratio of the medians realm/plain.
pub fn table(runs: &[(u32, Mode, Figures)]) -> String {
    let mut out = format!(
        "{:<42} {:>26} {:>26} {:>11}\n",
        "", "realm: median (min..max)", "plain: median (min..max)", "realm/plain"
    );
    for m in &METRICS {
        let mut meds = Vec::new();
        let mut line = format!(
            "{:<42}",
            if m.unit.is_empty() {
                m.name.to_string()
            } else {
                format!("{}, {}", m.name, m.unit)
            }
        );
        for mode in Mode::ALL {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.1 == mode)
                .map(|r| (m.get)(&r.2))
                .collect();
            let cell = if v.is_empty() {
                "-".to_string()
            } else {
                format!("{} ({}..{})", fmt(median(&v)), fmt(min(&v)), fmt(max(&v)))
            };
            let _ = write!(line, " {cell:>26}");
            meds.push(median(&v));
        }
        let ratio = match meds.as_slice() {
            [r, p] if *p != 0.0 && !p.is_nan() && !r.is_nan() => format!("{:.2}", r / p),
            _ => "-".into(),
        };
        let _ = writeln!(line, " {ratio:>11}");
        out += &line;
    }
    out
}

/// `cargo xtask bench realm`.
///
/// # Errors
///
/// Building or booting failed, or a run failed its checks.
pub fn run(args: &BenchArgs) -> Result<()> {
    let rounds = args.rounds.unwrap_or(2);
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let m = machine(args.smp, rounds, args.icount)?;
    // The host boot, then per round two guest runs of a few minutes each
    // under load.
    let timeout = Duration::from_secs(args.timeout.max(900 + u64::from(rounds) * 2 * RUN_LIMIT));
    println!(
        "bench realm: {rounds} round(s) of (realm, plain): Debian sid's kernel, {VCPUS} vCPUs, {GUEST_MEM} RAM, under the Debian host on {} CPUs (QEMU TCG; wall times compare only within this run)",
        args.smp
    );
    if args.icount {
        println!(
            "  -icount shift=0,sleep=off: every time below is the guest's clock, 1 ns per instruction QEMU executed (1 ms = 10^6 instructions, idle time skipped), the same on a loaded or an idle build machine; only the build machine's run times are wall time"
        );
    }
    println!("  realm command line: {}", realm_cmdline());
    println!("  plain command line: {}", plain_cmdline(&realm_cmdline()));
    println!("  {}", m.command_line());
    let load_before = loadavg();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let sampler = sample_load(stop.clone(), samples.clone());
    // RAMPART_BENCH_ECHO=1 streams the console while it runs.
    let echo = std::env::var_os("RAMPART_BENCH_ECHO").is_some();
    let run = m.run(timeout, None, echo);
    stop.store(true, Ordering::Release);
    let _ = sampler.join();
    let run = run?;
    let load_after = loadavg();
    fs::create_dir_all(dir())?;
    let log = dir().join("console.log");
    let _ = fs::write(&log, &run.console);
    println!("  console: {}", log.display());

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let at = |needle: &str| {
        run.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| t.as_secs_f64())
    };
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let segs = segments(&run.console);
    for (round, mode, text, status) in &segs {
        let begin = at(&format!("bench-realm: begin {round} {}", mode.name()));
        let end = at(&format!("bench-realm: end {round} {}", mode.name()));
        let wall = match (begin, end) {
            (Some(b), Some(e)) => format!("{:.0} s", e - b),
            _ => "?".into(),
        };
        let load: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| begin.is_some_and(|b| *t >= b) && end.is_none_or(|e| *t <= e))
            .map(|(_, l)| *l)
            .collect();
        let load = if load.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}..{:.1}", min(&load), max(&load))
        };
        match parse_run(*mode, text, status) {
            Ok(f) => {
                println!(
                    "round {round} {:<5}: /init after {:.1} s (VM ready {:.1} s, first VCPU_RUN {:.1} s, kernel {:.1} s); blk write {:.2} MB/s, read {:.2} MB/s; vsock echo {:.2} MB/s, ping median {:.1} ms; exits {}; run {wall} on the build machine, load {load}",
                    mode.name(),
                    f.init_s(),
                    f.vm_ready_ms / 1000.0,
                    f.first_run_s(),
                    f.uptime_at_init_s,
                    mbs(BLK_BYTES, f.blk_write_s),
                    mbs(BLK_BYTES, f.blk_read_s),
                    mbs(BLK_BYTES / 2.0, f.vsock_echo_ms / 1000.0),
                    f.ping_median_us / 1000.0,
                    exits_of(&f, "total"),
                );
                println!("    mmio exits by device: {}", f.mmio_by_device);
                ok.push((*round, *mode, f));
            }
            Err(e) => {
                println!("round {round} {:<5}: FAILED: {e}", mode.name());
                failed.push(format!("round {round} {}: {e}", mode.name()));
            }
        }
    }
    println!("load average (1, 5, 15 min): {load_before} before, {load_after} after");
    if !samples.is_empty() {
        let l: Vec<f64> = samples.iter().map(|s| s.1).collect();
        println!(
            "1-minute load during the run: {:.1}..{:.1} (median {:.1}, {} samples)",
            min(&l),
            max(&l),
            median(&l),
            l.len()
        );
    }
    println!();
    print!("{}", table(&ok));
    let want = rounds as usize * 2;
    if segs.len() < want {
        failed.push(format!(
            "{} of {want} runs finished ({})",
            segs.len(),
            if run.timed_out {
                format!("timed out after {} s", timeout.as_secs())
            } else {
                "the host stopped early".into()
            }
        ));
    }
    if !failed.is_empty() {
        bail!("bench realm: {}\n{}", failed.join("\n"), run.tail(40));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn run_text(mode: Mode) -> String {
        let n = mode.name();
        let (what, rme) = match mode {
            Mode::Realm => (
                "protected realm",
                "[realm] RAMPART-GUEST: bench: dmesg: [    0.000000] RME: Using RSI version 1.0\n",
            ),
            Mode::Plain => ("not protected", ""),
        };
        format!(
            "[{n}] rampart-vmm: VM 0x1000 ({what}, 2 vCPUs, 160 MiB of RAM at 0x7c000000 donated), kernel at 0x40200000\n\
             [{n}] RAMPART-GUEST: init reached: 7.2.13, cpus 0-1\n\
             [{n}] RAMPART-GUEST: bench: uptime at init 41.50\n\
             {rme}\
             [{n}] RAMPART-GUEST: bench: blk write 8388608 bytes in 2.5 s\n\
             [{n}] RAMPART-GUEST: bench: blk read 8388608 bytes in 1.25 s\n\
             [{n}] RAMPART-GUEST: bench: blk sha256 written {S} read {S}\n\
             [{n}] RAMPART-GUEST: bench: vsock echo: sent sha256 {S} got back sha256 {S} (vsock: sent 4194304 bytes, received 4194304 bytes in 2000 ms)\n\
             [{n}] RAMPART-GUEST: bench: vsock ping: 100 round trips of 64 bytes, median 850 us, min 700 us\n\
             [{n}] RAMPART-GUEST: bench: done\n\
             [{n}] stats: wall time: 120.500 s\n\
             [{n}] stats: exits EXIT_MMIO: 10 (vCPU 0: 6, vCPU 1: 4)\n\
             [{n}] stats: exits EXIT_MEMORY_FAULT: 3 (vCPU 0: 3, vCPU 1: 0)\n\
             [{n}] stats: exits total: 13\n\
             [{n}] stats: launch: VM ready 5000.250 ms, first exit 35000.750 ms, first console output 80000.000 ms (after the VMM started)\n\
             [{n}] stats: mmio exits by device: gicd 1, gicr 2, pl011 3, virtio0 4, virtio1 5, other 0\n"
        )
    }

    fn console() -> String {
        format!(
            "RAMPART-INIT: start\nRAMPART-INIT: bench-realm: begin 1 realm\n{}RAMPART-INIT: bench-realm: end 1 realm: rampart-vmm exit status 0\n\
             RAMPART-INIT: bench-realm: begin 1 plain\n{}RAMPART-INIT: bench-realm: end 1 plain: rampart-vmm exit status 0\n\
             RAMPART-INIT: bench-realm: begin 2 realm\n[realm] half a run\n",
            run_text(Mode::Realm),
            run_text(Mode::Plain).replace("donated", "shared")
        )
    }

    #[test]
    fn splits_the_console_into_finished_runs() {
        let c = console();
        let s = segments(&c);
        assert_eq!(s.len(), 2, "the unfinished third run is not a run");
        assert_eq!((s[0].0, s[0].1, s[0].3.as_str()), (1, Mode::Realm, "0"));
        assert_eq!((s[1].0, s[1].1), (1, Mode::Plain));
        assert!(s[0].2.contains("[realm] RAMPART-GUEST: bench: done"));
        assert!(!s[0].2.contains("[plain]"));
    }

    #[test]
    fn reads_a_runs_figures() {
        let f = parse_run(Mode::Realm, &run_text(Mode::Realm), "0").unwrap();
        assert_eq!(f.vm_ready_ms, 5000.25);
        assert_eq!(f.first_exit_ms, 35000.75);
        assert!((f.first_run_s() - 30.0005).abs() < 1e-9);
        assert!((f.init_s() - (35.00075 + 41.5)).abs() < 1e-9);
        assert_eq!((f.blk_write_s, f.blk_read_s), (2.5, 1.25));
        assert_eq!(f.vsock_echo_ms, 2000.0);
        assert_eq!((f.ping_median_us, f.ping_min_us), (850.0, 700.0));
        assert_eq!(f.wall_s, 120.5);
        assert_eq!(virtio_mmio(&f), 9.0);
        assert_eq!(f.exits.get("EXIT_MMIO"), Some(&10));
        assert_eq!(f.exits.get("EXIT_MEMORY_FAULT"), Some(&3));
        assert_eq!(f.exits.get("total"), Some(&13));
        assert!(f.mmio_by_device.starts_with("gicd 1,"));
        assert!((mbs(BLK_BYTES, f.blk_write_s) - 3.355_443_2).abs() < 1e-9);
    }

    #[test]
    fn refuses_a_run_that_is_not_what_it_claims() {
        let realm = run_text(Mode::Realm);
        // The realm must say so, and be one to the VMM.
        assert!(
            parse_run(Mode::Realm, &realm.replace("RME: Using", "x"), "0")
                .unwrap_err()
                .contains("not a realm")
        );
        assert!(
            parse_run(
                Mode::Realm,
                &realm.replace("protected realm", "protected"),
                "0"
            )
            .is_err()
        );
        assert!(parse_run(Mode::Plain, &realm.replace("[realm]", "[plain]"), "0").is_err());
        let plain = run_text(Mode::Plain);
        parse_run(Mode::Plain, &plain, "0").unwrap();
        assert!(
            parse_run(Mode::Plain, &plain, "1")
                .unwrap_err()
                .contains("exit status 1")
        );
        // Data that did not come back intact is no throughput figure.
        let bad = plain.replacen(
            &format!("read {S}"),
            &format!("read {}", S.replace('0', "1")),
            1,
        );
        assert!(
            parse_run(Mode::Plain, &bad, "0")
                .unwrap_err()
                .contains("/dev/vdb")
        );
        let bad = plain.replacen(&format!("got back sha256 {S}"), "got back sha256 e3b0", 1);
        assert!(
            parse_run(Mode::Plain, &bad, "0")
                .unwrap_err()
                .contains("vsock")
        );
        assert!(parse_run(Mode::Plain, &plain.replace("bench: done", "x"), "0").is_err());
        let panic = plain.replace(
            "RAMPART-GUEST: init reached",
            "[ 3.0] Kernel panic - not syncing: System is deadlocked on memory",
        );
        assert!(
            parse_run(Mode::Plain, &panic, "0")
                .unwrap_err()
                .contains("never reached its /init ([plain] [ 3.0] Kernel panic")
        );
        assert!(parse_run(Mode::Plain, &plain.replace("first exit", "x"), "0").is_err());
    }

    #[test]
    fn the_two_command_lines_differ_only_in_earlycon() {
        let r = realm_cmdline();
        let p = plain_cmdline(&r);
        assert!(r.contains("earlycon=pl011,mmio32,0x800009000000 "), "{r}");
        assert!(r.ends_with(" nokaslr"));
        let rw: Vec<&str> = r
            .split_whitespace()
            .filter(|w| !w.starts_with("earlycon"))
            .collect();
        let pw: Vec<&str> = p.split_whitespace().filter(|w| *w != "earlycon").collect();
        assert_eq!(rw, pw);
        assert!(p.split_whitespace().any(|w| w == "earlycon"));
    }

    #[test]
    fn the_table_has_ratios_of_medians() {
        let r = parse_run(Mode::Realm, &run_text(Mode::Realm), "0").unwrap();
        let mut p = r.clone();
        p.blk_write_s = 1.25;
        let t = table(&[
            (1, Mode::Realm, r.clone()),
            (1, Mode::Plain, p),
            (2, Mode::Realm, r),
        ]);
        let line = t.lines().find(|l| l.starts_with("blk write")).unwrap();
        assert!(line.trim_end().ends_with("0.50"), "{line}");
        assert!(line.contains("3.355 (3.355..3.355)"), "{line}");
    }
}
