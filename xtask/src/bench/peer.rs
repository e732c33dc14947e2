//! `cargo xtask bench peer`: the same guest workloads under Rampart and
//! under Linux's own KVM, in one interleaved run (issue 16, "The peer in
//! the repo").
//!
//! Debian's kernel boots three ways, round-robin (Rampart, pKVM, nVHE,
//! Rampart, ...), with one initramfs carrying both VMMs and the bench
//! guest (`guest/bench`):
//!
//! | mode | host | VMM and guest |
//! |---|---|---|
//! | rampart | under Rampart at EL1 (`rampart.pool=`) | `rampart-vmm run bench.bundle`: the signed bundle, a protected VM |
//! | pKVM | at EL2, `kvm-arm.mode=protected` | `rampart-peer run bench.bin` (`host/peer`): a non-protected pKVM VM |
//! | nVHE | at EL2, `kvm-arm.mode=nvhe` | the same, plain nVHE KVM |
//!
//! Each boot runs the guest [`RUNS_PER_BOOT`] times (`peer.sh`). Per run:
//! the MMIO writes per second the VMM handled and the `HVC PSCI_VERSION`
//! calls per second the hypervisor answered (both timed by the guest with
//! the virtual counter), and launch: VMM start to the guest's first
//! console byte (the VMM's `stats: launch:` line). Under Rampart each run
//! also launches the same image as a non-protected VM (an unsigned bundle,
//! `bench.open.bundle`): the launch row for a non-protected VM compares
//! that with the peer's (whose VM is never protected).
//!
//! `--icount` runs every machine with QEMU's `-icount shift=0,sleep=off`:
//! the guest's clock then advances one nanosecond per instruction the
//! machine executes (and jumps over idle time), so the launch figures
//! count instructions (1 ms = 1 million) and do not depend on the build
//! machine's load. The boots take longer in wall time (one host thread). The figures are medians
//! over all runs of a mode, with min and max, the load average, and the
//! ratios Rampart/pKVM and Rampart/nVHE.
//!
//! After the guest runs, each boot also boots a Linux guest once
//! ([`LinuxGuest`]: Debian sid's kernel and the initramfs of `rampart-vmm`'s
//! Linux guest) with this mode's VMM, `rampart-vmm run --kernel` or
//! `rampart-peer run --kernel`, and `rampart-peer time-to` times both from
//! the VMM's start to the guest `/init`'s first line
//! ([`Metric::LinuxBoot`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{BenchArgs, PKVM_READY, loadavg, max, median, min};
use crate::qemu::{HOST_LOAD_ADDRESS, Machine};
use crate::{artifacts, linux, linux_vmm, prereq};

/// Guest runs per boot.
pub const RUNS_PER_BOOT: u32 = 3;
/// What Linux prints once its nVHE KVM is up (`arch/arm64/kvm/arm.c`).
pub const NVHE_READY: &str = "Hyp mode initialized successfully";
/// The workloads' script, sourced by `/init`.
const SCRIPT: &str = include_str!("peer.sh");
/// The prefix of the script's own lines.
const PREFIX: &str = "RAMPART-PEER: ";
/// The host kernel's command line in every mode (Rampart's own part aside).
const HOST_ARGS: &str = "console=ttyAMA0 earlycon panic=-1";

/// The three ways the host boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Under Rampart, `rampart-vmm`.
    Rampart,
    /// Linux's pKVM, `rampart-peer`.
    Pkvm,
    /// Linux's nVHE KVM, `rampart-peer`.
    Nvhe,
}

impl Mode {
    /// Round-robin order.
    pub const ALL: [Mode; 3] = [Mode::Rampart, Mode::Pkvm, Mode::Nvhe];

    /// The column name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rampart => "Rampart",
            Mode::Pkvm => "pKVM",
            Mode::Nvhe => "nVHE",
        }
    }

    /// `rpeer.mode=` for `peer.sh`.
    fn arg(self) -> &'static str {
        match self {
            Mode::Rampart => "rampart",
            Mode::Pkvm => "pkvm",
            Mode::Nvhe => "nvhe",
        }
    }

    /// What the kernel prints when its own KVM came up in this mode.
    fn kvm_ready(self) -> Option<&'static str> {
        match self {
            Mode::Rampart => None,
            Mode::Pkvm => Some(PKVM_READY),
            Mode::Nvhe => Some(NVHE_READY),
        }
    }
}

/// What is measured, one table row each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Guest MMIO writes handled in the VMM, per second.
    Mmio,
    /// Guest `HVC PSCI_VERSION` answered by the hypervisor, per second.
    Hvc,
    /// VMM start to the guest's first console output, ms.
    Launch,
    /// The same for a non-protected VM (Rampart's `pu<r>` runs; the peer's
    /// VM is never protected, so its own launch).
    LaunchOpen,
    /// VMM start to a Linux guest's `/init`, ms.
    LinuxBoot,
}

impl Metric {
    /// Every row, in print order.
    pub const ALL: [Metric; 5] = [
        Metric::Mmio,
        Metric::Hvc,
        Metric::Launch,
        Metric::LaunchOpen,
        Metric::LinuxBoot,
    ];

    fn label(self) -> &'static str {
        match self {
            Metric::Mmio => "MMIO writes handled in the VMM /s",
            Metric::Hvc => "HVC PSCI_VERSION by the hypervisor /s",
            Metric::Launch => "launch: VMM start to first output ms",
            Metric::LaunchOpen => "launch, Rampart VM not protected ms",
            Metric::LinuxBoot => "Linux guest: VMM start to /init ms",
        }
    }

    /// Rates are better high, times low.
    fn higher_is_better(self) -> bool {
        matches!(self, Metric::Mmio | Metric::Hvc)
    }

    fn of(self, s: &Sample) -> Option<f64> {
        match self {
            Metric::Mmio => Some(s.mmio_per_s),
            Metric::Hvc => Some(s.hvc_per_s),
            Metric::Launch => Some(s.launch_ms),
            Metric::LaunchOpen => s.launch_open_ms,
            Metric::LinuxBoot => s.linux_boot_ms,
        }
    }
}

/// One guest run's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// MMIO writes per second (guest-timed).
    pub mmio_per_s: f64,
    /// `PSCI_VERSION` calls per second (guest-timed).
    pub hvc_per_s: f64,
    /// VMM start to the first console byte, ms.
    pub launch_ms: f64,
    /// VMM start to the VM being ready to run, ms.
    pub vm_ready_ms: f64,
    /// VMM start to the first exit, ms.
    pub first_exit_ms: f64,
    /// Launch of the non-protected VM: Rampart's `pu<r>` run; the peer's
    /// own launch (its VM is not protected).
    pub launch_open_ms: Option<f64>,
    /// The same run's VM ready and first exit, ms.
    pub open_vm_ready_ms: f64,
    /// See [`Sample::open_vm_ready_ms`].
    pub open_first_exit_ms: f64,
    /// VMM start to a Linux guest's `/init`, ms (run *k*'s sample carries
    /// Linux boot *k*'s figure).
    pub linux_boot_ms: Option<f64>,
}

/// `n / (ticks / freq)` from `BENCH-PHASE <phase> n=N ticks=T freq=F`.
pub fn parse_phase(line: &str, phase: &str) -> Option<f64> {
    let rest = line.split_once(&format!("BENCH-PHASE {phase} "))?.1;
    let field = |k: &str| -> Option<f64> {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
    };
    let (n, ticks, freq) = (field("n=")?, field("ticks=")?, field("freq=")?);
    if ticks <= 0.0 || freq <= 0.0 {
        return None;
    }
    Some(n * freq / ticks)
}

/// A milestone (`first console output 12.345 ms`) of a `stats: launch:`
/// line.
fn launch_field(line: &str, name: &str) -> Option<f64> {
    let rest = line.split_once("stats: launch: ")?.1;
    rest.split(", ")
        .find_map(|p| p.strip_prefix(name))
        .and_then(|v| v.trim().split(" ms").next())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads one boot's console: the `runs` guest runs `pb1..pbN` each passed
/// and reported both phases and launch; with `open` (Rampart) also the
/// non-protected runs `pu1..puN`; and `linux_runs` (at most `runs`) Linux
/// guest boots, each reported as `linux <k> <ms> status 0` (their figure
/// goes with run *k*'s). The error names the first thing missing.
pub fn parse_boot(
    console: &str,
    runs: u32,
    linux_runs: u32,
    open: bool,
) -> Result<Vec<Sample>, String> {
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let script = |what: &str| {
        lines.iter().find_map(|l| {
            l.split_once(PREFIX)
                .map(|(_, r)| r)
                .filter(|r| r.starts_with(what))
        })
    };
    (1..=runs)
        .map(|r| {
            let tagged = |tag: &str| -> Vec<&str> {
                lines
                    .iter()
                    .filter_map(|l| l.split_once(tag).map(|(_, rest)| rest))
                    .collect()
            };
            let own = tagged(&format!("[pb{r}] "));
            let find = |f: &dyn Fn(&str) -> Option<f64>| own.iter().find_map(|l| f(l));
            let open_lines = tagged(&format!("[pu{r}] "));
            let find_open = |f: &dyn Fn(&str) -> Option<f64>| open_lines.iter().find_map(|l| f(l));
            let status = script(&format!("run {r} status "))
                .and_then(|l| l.rsplit(' ').next())
                .ok_or_else(|| {
                    format!("run {r}: no `{PREFIX}run {r} status` line (the run did not finish)")
                })?;
            let done = own.iter().find(|l| l.starts_with("GUEST-DONE ")).copied();
            let failed: Vec<&str> = own
                .iter()
                .filter(|l| l.starts_with("GUEST-FAIL"))
                .copied()
                .collect();
            if !failed.is_empty()
                || !done.is_some_and(|d| d.ends_with(" 0 failed"))
                || status != "0"
            {
                let vmm: Vec<&str> = own
                    .iter()
                    .filter(|l| l.contains("FAIL") || l.contains("refused"))
                    .copied()
                    .collect();
                return Err(format!(
                    "run {r}: VMM exit status {status}, {}; {}",
                    done.unwrap_or("no GUEST-DONE"),
                    vmm.join("; ")
                ));
            }
            let mmio = find(&|l| parse_phase(l, "mmio"))
                .ok_or_else(|| format!("run {r}: no `BENCH-PHASE mmio` line"))?;
            let hvc = find(&|l| parse_phase(l, "hvc"))
                .ok_or_else(|| format!("run {r}: no `BENCH-PHASE hvc` line"))?;
            let launch = find(&|l| launch_field(l, "first console output ")).ok_or_else(|| {
                format!("run {r}: no `first console output` in a `stats: launch:` line")
            })?;
            let launch_open = if open {
                if !open_lines
                    .iter()
                    .any(|l| l.starts_with("GUEST-DONE ") && l.ends_with(" 0 failed"))
                {
                    return Err(format!("run {r}: the non-protected run pu{r} did not pass"));
                }
                Some(
                    find_open(&|l| launch_field(l, "first console output "))
                        .ok_or_else(|| format!("run {r}: no `first console output` for pu{r}"))?,
                )
            } else {
                Some(launch)
            };
            let linux_boot = if r <= linux_runs {
                let line = script(&format!("linux {r} ")).ok_or_else(|| {
                    format!("Linux guest boot {r}: no `{PREFIX}linux {r}` line (it did not finish)")
                })?;
                let rest = line
                    .strip_prefix(&format!("linux {r} "))
                    .unwrap_or_default();
                let ms = rest
                    .split_once(" status ")
                    .filter(|(_, status)| status.trim() == "0")
                    .and_then(|(ms, _)| ms.trim().parse::<f64>().ok())
                    .filter(|ms| *ms > 0.0)
                    .ok_or_else(|| {
                        let vmm: Vec<&str> = tagged(&format!("[pl{r}] "))
                            .into_iter()
                            .filter(|l| {
                                l.contains("FAIL")
                                    || l.contains("panic")
                                    || l.contains("exit status")
                            })
                            .collect();
                        format!("Linux guest boot {r} failed: `{line}`; {}", vmm.join("; "))
                    })?;
                Some(ms)
            } else {
                None
            };
            Ok(Sample {
                mmio_per_s: mmio,
                hvc_per_s: hvc,
                launch_ms: launch,
                vm_ready_ms: find(&|l| launch_field(l, "VM ready ")).unwrap_or(f64::NAN),
                first_exit_ms: find(&|l| launch_field(l, "first exit ")).unwrap_or(f64::NAN),
                launch_open_ms: launch_open,
                open_vm_ready_ms: find_open(&|l| launch_field(l, "VM ready ")).unwrap_or(f64::NAN),
                open_first_exit_ms: find_open(&|l| launch_field(l, "first exit "))
                    .unwrap_or(f64::NAN),
                linux_boot_ms: linux_boot,
            })
        })
        .collect()
}

/// One mode's machine, samples and first failure.
struct Series {
    mode: Mode,
    machine: Option<Machine>,
    samples: Vec<Sample>,
    failure: Option<String>,
}

/// `Rampart/peer` as words: for rates `1.65x faster`, for times `2.30x
/// slower` (always from Rampart's side).
pub fn ratio(metric: Metric, rampart: f64, peer: f64) -> String {
    if !(rampart > 0.0 && peer > 0.0) {
        return "-".into();
    }
    let r = rampart / peer;
    let better = if metric.higher_is_better() {
        r >= 1.0
    } else {
        r <= 1.0
    };
    let factor = r.max(1.0 / r);
    format!(
        "{r:.3} ({factor:.2}x {})",
        if better { "faster" } else { "slower" }
    )
}

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The results table: per metric, each mode's median (min..max) and the
/// ratios. Modes without samples print `-`.
pub fn table(series: &[(Mode, &[Sample])]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:<40}", "workload (median, min..max)");
    for (mode, _) in series {
        let _ = write!(s, " {:>26}", mode.name());
    }
    let _ = writeln!(s, " {:>24} {:>24}", "Rampart/pKVM", "Rampart/nVHE");
    let of = |mode: Mode, metric: Metric| -> Option<Vec<f64>> {
        let (_, samples) = series.iter().find(|(m, _)| *m == mode)?;
        let v: Vec<f64> = samples.iter().filter_map(|x| metric.of(x)).collect();
        (!v.is_empty()).then_some(v)
    };
    for metric in Metric::ALL {
        if series.iter().all(|(m, _)| of(*m, metric).is_none()) {
            let why = if metric == Metric::LinuxBoot {
                " (the Linux guest's kernel could not be fetched: see above)"
            } else {
                ""
            };
            let _ = writeln!(s, "{:<40} not measured{why}", metric.label());
            continue;
        }
        let _ = write!(s, "{:<40}", metric.label());
        for (mode, _) in series {
            let cell = of(*mode, metric).map_or("-".to_string(), |v| {
                format!(
                    "{} ({}..{})",
                    fmt_value(median(&v)),
                    fmt_value(min(&v)),
                    fmt_value(max(&v))
                )
            });
            let _ = write!(s, " {cell:>26}");
        }
        let r = of(Mode::Rampart, metric).map(|v| median(&v));
        for peer in [Mode::Pkvm, Mode::Nvhe] {
            let cell = match (r, of(peer, metric)) {
                (Some(r), Some(p)) => ratio(metric, r, median(&p)),
                _ => "-".into(),
            };
            let _ = write!(s, " {cell:>24}");
        }
        let _ = writeln!(s);
    }
    s
}

/// Builds `rampart-peer` for the Linux host's target in release mode and
/// strips it into `build/linux/rampart-peer`.
pub fn peer_binary() -> Result<PathBuf> {
    linux_vmm::musl_binary("rampart-peer")
}

/// The Linux guest of the "VMM start to /init" row: Debian sid's kernel
/// and initramfs of `rampart-vmm`'s Linux guest (`linux_guest.rs`), with
/// its memory, and [`LINUX_VCPUS`] vCPUs under both VMMs.
pub struct LinuxGuest {
    /// The `Image`.
    pub kernel: PathBuf,
    /// The guest's initramfs.
    pub initrd: PathBuf,
    /// Its version.
    pub version: String,
}

/// The Linux guest's vCPUs (the host has `--smp`, default 2).
pub const LINUX_VCPUS: u32 = 2;
/// Linux guest boots per host boot.
pub const LINUX_RUNS_PER_BOOT: u32 = 1;
/// The Linux guest's command line: `linux_guest/host.sh`'s.
pub const LINUX_CMDLINE: &str = "console=ttyAMA0 earlycon panic=-1 quiet";
/// Added to each boot's time limit when it also boots the Linux guest
/// (a guest boot under TCG takes minutes on a loaded machine, and longer
/// with `--icount`).
const LINUX_EXTRA_TIMEOUT: Duration = Duration::from_secs(900);

/// Fetches the guest kernel (cached in `build/linux-guest/`) and builds
/// its initramfs.
pub fn linux_guest() -> Result<LinuxGuest> {
    let k = crate::linux_guest::fetch()?;
    let _ = linux::prepare()?;
    let initrd = crate::linux_guest::initramfs(&k, "")?;
    Ok(LinuxGuest {
        kernel: k.image,
        initrd,
        version: k.version,
    })
}

/// The kernel and the initramfs with both VMMs, the bench guest's image and
/// bundle, and `peer.sh` running `runs` guest runs; with `guest`, also the
/// Linux guest's files and [`LINUX_RUNS_PER_BOOT`] boots of it.
pub fn host(runs: u32, guest: Option<&LinuxGuest>) -> Result<linux::LinuxHost> {
    prereq::ensure(&[&prereq::QEMU, &prereq::CPIO])?;
    crate::guests::guests()?;
    let guests = artifacts::build_dir().join("guests");
    let open = open_bundle(&guests)?;
    let mut files = vec![
        (linux_vmm::vmm_binary()?, "bin/rampart-vmm"),
        (peer_binary()?, "bin/rampart-peer"),
        (guests.join("bench.bin"), "guests/bench.bin"),
        (guests.join("bench.bundle"), "guests/bench.bundle"),
        (open, "guests/bench.open.bundle"),
    ];
    let mut vars = format!("RUNS={runs}\n");
    if let Some(g) = guest {
        files.push((g.kernel.clone(), "guest/Image"));
        files.push((g.initrd.clone(), "guest/initrd.cpio.gz"));
        vars += &format!(
            "LINUX_RUNS={LINUX_RUNS_PER_BOOT}\nLINUX_CPUS={LINUX_VCPUS}\nLINUX_MEM={}\nLINUX_CMDLINE='{LINUX_CMDLINE}'\n",
            crate::linux_guest::GUEST_MEM
        );
    }
    linux::prepare_with(&files, &format!("{vars}{SCRIPT}"))
}

/// The bench guest's image in an unsigned bundle whose manifest is the
/// signed one's without the protected flag: Rampart runs it as a
/// non-protected VM (not measured, no signature), as the peer runs its VM.
/// Written to `build/guests/bench.open.bundle`.
fn open_bundle(guests: &std::path::Path) -> Result<PathBuf> {
    let image = std::fs::read(guests.join("bench.bin")).context("reading bench.bin")?;
    let mut manifest = crate::guests::manifest("bench")?;
    manifest.flags.protected = false;
    let bytes = rampart_attest::Bundle::build_unsigned(&manifest, &image)
        .map_err(|e| anyhow::anyhow!("building the non-protected bench bundle: {e}"))?;
    let out = guests.join("bench.open.bundle");
    std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// `-icount shift=0,sleep=off` (see the module's documentation).
pub const ICOUNT: [&str; 2] = ["-icount", "shift=0,sleep=off"];

/// The machine of `mode` (the same kernel and initramfs in every mode);
/// with `icount`, QEMU counts instructions as time ([`ICOUNT`]); with
/// `linux_guest`, Rampart's guest pool has room for the Linux guest's RAM.
pub fn machine(
    mode: Mode,
    smp: u32,
    mem: &str,
    host: &linux::LinuxHost,
    icount: bool,
    linux_guest: bool,
) -> Result<Machine> {
    let tail = format!(
        "{HOST_ARGS} {} rpeer.mode={}",
        linux::BRIEF_FLAG,
        mode.arg()
    );
    let mut m = match mode {
        Mode::Rampart => {
            let mut m = Machine::new(artifacts::hypervisor()?);
            m.loaders.push((host.kernel.clone(), HOST_LOAD_ADDRESS));
            let pool = if linux_guest {
                crate::linux_guest::POOL_MIB
            } else {
                linux_vmm::POOL_MIB
            };
            m.append = format!("rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={pool} -- {tail}");
            m
        }
        Mode::Pkvm | Mode::Nvhe => {
            let mut m = Machine::new(host.kernel.clone());
            let kvm = if mode == Mode::Pkvm {
                "protected"
            } else {
                "nvhe"
            };
            m.append = format!("{tail} kvm-arm.mode={kvm}");
            m
        }
    };
    m.virtualization = true;
    m.smp = smp;
    m.mem = mem.into();
    m.cpu = "max".into();
    m.initrd = Some(host.initramfs.clone());
    if icount {
        m.extra.extend(ICOUNT.map(String::from));
    }
    Ok(m)
}

/// Boots `machine` once and reads its runs (and `linux_runs` Linux guest
/// boots); keeps the console in `build/linux/peer-<mode>.log`.
pub fn measure(
    mode: Mode,
    machine: &Machine,
    runs: u32,
    linux_runs: u32,
    timeout: Duration,
) -> Result<Vec<Sample>, String> {
    let run = machine
        .run(timeout, Some(&format!("{PREFIX}finished")), false)
        .map_err(|e| format!("could not run QEMU: {e:#}"))?;
    // The whole console of the latest boot per mode, for a closer look.
    let log = artifacts::build_dir()
        .join("linux")
        .join(format!("peer-{}.log", mode.arg()));
    let _ = std::fs::write(&log, &run.console);
    if let Some(ready) = mode.kvm_ready()
        && !run.console.contains(ready)
    {
        return Err(run.failure(&format!("the kernel did not print `{ready}`")));
    }
    parse_boot(&run.console, runs, linux_runs, mode == Mode::Rampart).map_err(|e| {
        let what = if run.timed_out {
            format!("{e} (timed out after {} s)", timeout.as_secs())
        } else {
            e
        };
        run.failure(&what)
    })
}

/// The suite's smoke case `peer/pkvm-smoke`: the peer VMM runs the bench
/// guest once under Debian's kernel with `kvm-arm.mode=protected` (builds
/// `rampart-peer`, boots once). Returns the run's figures.
pub fn smoke() -> Result<String> {
    let host = host(1, None)?;
    let m = machine(Mode::Pkvm, 2, "1G", &host, false, false)?;
    let samples = measure(Mode::Pkvm, &m, 1, 0, SMOKE_TIMEOUT).map_err(|e| anyhow::anyhow!(e))?;
    let s = samples.first().context("no sample")?;
    Ok(format!(
        "rampart-peer ran guest/bench under pKVM: {:.0} MMIO writes/s, {:.0} HVC/s, first output {:.1} ms after start (not a measurement: one run)",
        s.mmio_per_s, s.hvc_per_s, s.launch_ms
    ))
}

/// The smoke case's time limit (a pKVM boot under TCG is about 10 s on an
/// idle machine).
const SMOKE_TIMEOUT: Duration = Duration::from_secs(150);

/// `cargo xtask bench peer`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let rounds = args.rounds.unwrap_or(5);
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mem = args.mem.clone().unwrap_or_else(|| "1G".into());
    let mut timeout = Duration::from_secs(args.timeout.max(60));
    // The Linux guest's row: skipped (and said why) when its kernel cannot
    // be fetched, or when `RAMPART_BENCH_PEER_LINUX=0` (a launch-only
    // run: the Linux guest's boot is most of a boot's time with --icount).
    let skip_linux = std::env::var("RAMPART_BENCH_PEER_LINUX").is_ok_and(|v| v == "0");
    let guest = match if skip_linux {
        Err(anyhow::anyhow!("RAMPART_BENCH_PEER_LINUX=0"))
    } else {
        linux_guest()
    } {
        Ok(g) => Some(g),
        Err(e) => {
            println!("bench peer: no Linux guest, its row is not measured: {e:#}");
            None
        }
    };
    let linux_runs = if guest.is_some() {
        timeout += LINUX_EXTRA_TIMEOUT;
        LINUX_RUNS_PER_BOOT
    } else {
        0
    };
    let host = host(RUNS_PER_BOOT, guest.as_ref())?;
    println!(
        "bench peer: {} {} (arm64 cloud), {} CPUs, {mem} RAM, {rounds} rounds x {RUNS_PER_BOOT} runs of guest/bench per mode{}, QEMU timeout {} s{}",
        host.package,
        host.version,
        args.smp,
        guest.as_ref().map_or(String::new(), |g| format!(
            " and {LINUX_RUNS_PER_BOOT} boot of Debian {} as a Linux guest ({LINUX_VCPUS} vCPUs, {} RAM, `{LINUX_CMDLINE}`) to its /init",
            g.version,
            crate::linux_guest::GUEST_MEM
        )),
        timeout.as_secs(),
        if args.icount {
            ", -icount shift=0,sleep=off: times are instructions (1 ms = 10^6)"
        } else {
            ""
        }
    );
    // `RAMPART_BENCH_PEER_MODES=pkvm,nvhe` (names as in `rpeer.mode=`)
    // runs only those modes, e.g. to try a change to one VMM.
    let only = std::env::var("RAMPART_BENCH_PEER_MODES").ok();
    let mut series: Vec<Series> = Mode::ALL
        .iter()
        .filter(|m| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|w| w.trim() == m.arg()))
        })
        .map(|&mode| {
            let (machine, failure) =
                match machine(mode, args.smp, &mem, &host, args.icount, guest.is_some()) {
                    Ok(m) => (Some(m), None),
                    Err(e) => (None, Some(format!("could not set up: {e:#}"))),
                };
            Series {
                mode,
                machine,
                samples: Vec::new(),
                failure,
            }
        })
        .collect();
    for s in &series {
        match &s.machine {
            Some(m) => println!("  {:<8} {}", s.mode.name(), m.command_line()),
            None => println!(
                "  {:<8} FAILED {}",
                s.mode.name(),
                s.failure.as_deref().unwrap_or("")
            ),
        }
    }

    let load_before = loadavg();
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for s in &mut series {
            // A mode that failed once is not retried: it would cost a
            // timeout every round.
            let Some(m) = s.machine.as_ref().filter(|_| s.failure.is_none()) else {
                let _ = write!(line, "  {} skipped", s.mode.name());
                continue;
            };
            match measure(s.mode, m, RUNS_PER_BOOT, linux_runs, timeout) {
                Ok(samples) => {
                    let med =
                        |f: fn(&Sample) -> f64| median(&samples.iter().map(f).collect::<Vec<_>>());
                    let _ = write!(
                        line,
                        "  {} mmio {:.0}/s hvc {:.0}/s launch {:.1} ms",
                        s.mode.name(),
                        med(|x| x.mmio_per_s),
                        med(|x| x.hvc_per_s),
                        med(|x| x.launch_ms)
                    );
                    if s.mode == Mode::Rampart {
                        let _ = write!(
                            line,
                            " (not protected {:.1} ms)",
                            med(|x| x.launch_open_ms.unwrap_or(f64::NAN))
                        );
                    }
                    let linux: Vec<f64> = samples.iter().filter_map(|x| x.linux_boot_ms).collect();
                    if !linux.is_empty() {
                        let _ = write!(line, " linux /init {:.0} ms", median(&linux));
                    }
                    s.samples.extend(samples);
                }
                Err(e) => {
                    let _ = write!(line, "  {} FAILED", s.mode.name());
                    s.failure = Some(e);
                }
            }
        }
        println!("{line}");
    }
    println!(
        "load average (1, 5, 15 min): {load_before} before, {} after\n",
        loadavg()
    );

    let ok: Vec<(Mode, &[Sample])> = series
        .iter()
        .filter(|s| !s.samples.is_empty())
        .map(|s| (s.mode, s.samples.as_slice()))
        .collect();
    print!("{}", table(&ok));
    println!("launch milestones (medians, ms after the VMM started):");
    for s in series.iter().filter(|s| !s.samples.is_empty()) {
        let med = |f: fn(&Sample) -> f64| {
            median(
                &s.samples
                    .iter()
                    .map(f)
                    .filter(|v| !v.is_nan())
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "  {:<8} VM ready {:.2}, first exit {:.2}, first console output {:.2}",
            s.mode.name(),
            med(|x| x.vm_ready_ms),
            med(|x| x.first_exit_ms),
            med(|x| x.launch_ms)
        );
        if s.mode == Mode::Rampart {
            println!(
                "  {:<8} VM ready {:.2}, first exit {:.2}, first console output {:.2} (the VM not protected)",
                "",
                med(|x| x.open_vm_ready_ms),
                med(|x| x.open_first_exit_ms),
                med(|x| x.launch_open_ms.unwrap_or(f64::NAN))
            );
        }
    }
    let failed: Vec<&Series> = series.iter().filter(|s| s.failure.is_some()).collect();
    for s in &failed {
        println!(
            "\n{} FAILED: {}",
            s.mode.name(),
            s.failure.as_deref().unwrap_or("")
        );
    }
    if !failed.is_empty() {
        bail!(
            "bench peer: {} failed (see above)",
            failed
                .iter()
                .map(|s| s.mode.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_log(runs: u32, mmio_ticks: u64) -> String {
        let mut s = String::from(
            "[    1.0] kvm [1]: Protected nVHE mode initialized successfully\nRAMPART-PEER: mode pkvm\n",
        );
        for r in 1..=runs {
            s += &format!(
                "[pb{r}] rampart guest: vCPU 0 at EL1\r\n[pb{r}] GUEST-PASS hypervisor\n\
                 [pb{r}] BENCH-PHASE mmio n=2000 ticks={mmio_ticks} freq=62500000\n\
                 [pb{r}] BENCH-PHASE hvc n=5000 ticks=625000 freq=62500000\n\
                 [pb{r}] GUEST-DONE 3 passed, 0 failed\n\
                 [pb{r}] stats: wall time: 1.000 s\n\
                 [pb{r}] stats: launch: VM ready 4.{r}00 ms, first exit 5.000 ms, first console output 6.500 ms (after the VMM started)\n\
                 RAMPART-PEER: run {r} status 0\n"
            );
        }
        s + "RAMPART-PEER: finished\n"
    }

    #[test]
    fn reads_the_phases_and_launch_of_every_run() {
        let samples = parse_boot(&boot_log(3, 31_250_000), 3, 0, false).unwrap();
        assert_eq!(samples.len(), 3);
        // 2000 writes in 0.5 s; 5000 calls in 10 ms.
        assert!((samples[0].mmio_per_s - 4000.0).abs() < 1e-6, "{samples:?}");
        assert!((samples[0].hvc_per_s - 500_000.0).abs() < 1e-3);
        assert!((samples[2].launch_ms - 6.5).abs() < 1e-9);
        assert!((samples[1].vm_ready_ms - 4.2).abs() < 1e-9);
        assert!((samples[1].first_exit_ms - 5.0).abs() < 1e-9);
        assert_eq!(samples[0].linux_boot_ms, None);
        // The peer's VM is not protected: its launch is both rows'.
        assert_eq!(samples[2].launch_open_ms, Some(6.5));
    }

    /// Under Rampart, each run's `pu<r>` (the VM not protected) is read
    /// too, and required.
    #[test]
    fn reads_the_non_protected_runs_under_rampart() {
        let mut log = boot_log(2, 31_250_000);
        for r in 1..=2 {
            log = log.replace(
                &format!("RAMPART-PEER: run {r} status 0"),
                &format!(
                    "[pu{r}] GUEST-DONE 3 passed, 0 failed\n\
                     [pu{r}] stats: launch: VM ready 1.0 ms, first exit 2.{r} ms, first console output 3.{r} ms (after the VMM started)\n\
                     RAMPART-PEER: run {r} status 0"
                ),
            );
        }
        let samples = parse_boot(&log, 2, 0, true).unwrap();
        assert_eq!(samples[1].launch_open_ms, Some(3.2));
        assert!((samples[1].open_first_exit_ms - 2.2).abs() < 1e-9);
        assert!((samples[1].launch_ms - 6.5).abs() < 1e-9);
        let e = parse_boot(&boot_log(2, 31_250_000), 2, 0, true).unwrap_err();
        assert!(e.contains("pu1 did not pass"), "{e}");
        let e = parse_boot(
            &log.replace(
                "[pu2] GUEST-DONE 3 passed, 0 failed",
                "[pu2] GUEST-DONE 2 passed, 1 failed",
            ),
            2,
            0,
            true,
        )
        .unwrap_err();
        assert!(e.contains("pu2 did not pass"), "{e}");
    }

    #[test]
    fn a_failed_missing_or_broken_run_is_an_error_naming_it() {
        let good = boot_log(2, 31_250_000);
        assert!(
            parse_boot(&good, 3, 0, false)
                .unwrap_err()
                .contains("run 3: no")
        );
        let cases = [
            (
                good.replace(
                    "[pb2] GUEST-DONE 3 passed, 0 failed",
                    "[pb2] GUEST-DONE 2 passed, 1 failed",
                ),
                "run 2:",
            ),
            (
                good.replace("run 1 status 0", "run 1 status 1"),
                "run 1: VMM exit status 1",
            ),
            (
                good.replace("[pb1] BENCH-PHASE hvc", "[pb1] BENCH-PHASE xhvc"),
                "run 1: no `BENCH-PHASE hvc`",
            ),
            (
                good.replace(
                    "[pb2] BENCH-PHASE mmio n=2000 ticks=31250000",
                    "[pb2] BENCH-PHASE mmio n=2000 ticks=0",
                ),
                "run 2: no `BENCH-PHASE mmio`",
            ),
            (
                good.replace("[pb1] stats: launch", "[pb1] stats: lunch"),
                "first console output",
            ),
            (
                good.replace(
                    "[pb2] GUEST-PASS hypervisor",
                    "[pb2] GUEST-FAIL hypervisor: x",
                ),
                "run 2",
            ),
        ];
        for (console, want) in cases {
            let e = parse_boot(&console, 2, 0, false).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
    }

    #[test]
    fn linux_guest_boots_are_read_and_required() {
        let log = boot_log(2, 31_250_000) + "RAMPART-PEER: linux 1 812.5 status 0\n";
        let samples = parse_boot(&log, 2, 1, false).unwrap();
        assert_eq!(samples[0].linux_boot_ms, Some(812.5));
        assert_eq!(
            samples[1].linux_boot_ms, None,
            "one Linux boot per host boot"
        );
        // Not asked for: not read.
        assert_eq!(
            parse_boot(&log, 2, 0, false).unwrap()[0].linux_boot_ms,
            None
        );
        // Asked for, and missing, failed or without a figure: an error
        // naming the boot (and the VMM's failure lines).
        let e = parse_boot(&boot_log(2, 31_250_000), 2, 1, false).unwrap_err();
        assert!(e.contains("Linux guest boot 1: no"), "{e}");
        let failed = boot_log(1, 31_250_000)
            + "[pl1] rampart-peer: FAIL KVM_CREATE_DEVICE GICv3\nRAMPART-PEER: linux 1 none status 1\n";
        let e = parse_boot(&failed, 1, 1, false).unwrap_err();
        assert!(
            e.contains("boot 1 failed") && e.contains("KVM_CREATE_DEVICE"),
            "{e}"
        );
        for bad in [
            "linux 1 812.5 status 3",
            "linux 1 none status 0",
            "linux 1 0 status 0",
        ] {
            let log = boot_log(1, 31_250_000) + &format!("RAMPART-PEER: {bad}\n");
            assert!(parse_boot(&log, 1, 1, false).is_err(), "{bad} accepted");
        }
    }

    /// `peer.sh` prints what `parse_boot` and `measure` read, for every
    /// mode's `rpeer.mode=`, with the same run names.
    #[test]
    fn the_script_speaks_the_parsers_language() {
        for mode in Mode::ALL {
            // A `case` arm: `rampart)` or `pkvm | nvhe)`.
            let arm = SCRIPT.lines().any(|l| {
                l.trim_start()
                    .split_once(')')
                    .is_some_and(|(pattern, _)| pattern.split('|').any(|p| p.trim() == mode.arg()))
            });
            assert!(arm, "no case arm for rpeer.mode={}", mode.arg());
        }
        assert!(
            SCRIPT.contains("printf 'RAMPART-PEER: %s\\n'"),
            "the prefix is {PREFIX:?}"
        );
        assert!(SCRIPT.contains("peer_say \"run $r status $st\""));
        assert!(SCRIPT.contains("peer_say \"finished\""));
        assert!(SCRIPT.contains("peer_run \"pb$r\""));
        assert!(SCRIPT.contains("/guests/bench.bundle") && SCRIPT.contains("/guests/bench.bin"));
        assert!(
            SCRIPT.contains("peer_run_open \"pu$r\"")
                && SCRIPT.contains("/guests/bench.open.bundle")
        );
        assert!(SCRIPT.contains("peer_say \"linux $k ${ms:-none} status $st\""));
        assert!(SCRIPT.contains(&format!("time-to \"{}\"", crate::linux_guest::INIT_MARKER)));
        assert!(SCRIPT.contains("--name \"pl$k\""));
        // The output line `time-to` prints, which the script's sed reads.
        assert!(SCRIPT.contains("s/^rampart-peer: time-to \".*\": \\([0-9.]*\\) ms after"));
    }

    /// The Linux guest gets `rampart-vmm`'s Linux guest's command line
    /// (`linux_guest/host.sh`).
    #[test]
    fn the_linux_guest_command_line_is_the_linux_cases() {
        let host = include_str!("../linux_guest/host.sh");
        assert!(
            host.contains(&format!("cmdline=\"{LINUX_CMDLINE}\"")),
            "host.sh changed its command line"
        );
    }

    #[test]
    fn phases_reject_nonsense() {
        assert_eq!(
            parse_phase("BENCH-PHASE mmio n=10 ticks=5 freq=1", "mmio"),
            Some(2.0)
        );
        assert_eq!(
            parse_phase("BENCH-PHASE mmio n=10 ticks=5 freq=1", "hvc"),
            None
        );
        assert_eq!(
            parse_phase("BENCH-PHASE mmio n=10 ticks=0 freq=1", "mmio"),
            None
        );
        assert_eq!(
            parse_phase("BENCH-PHASE mmio n=10 ticks=-3 freq=1", "mmio"),
            None
        );
        assert_eq!(parse_phase("BENCH-PHASE mmio n=10 freq=1", "mmio"), None);
    }

    #[test]
    fn ratios_say_faster_or_slower_from_rampart_side() {
        assert_eq!(ratio(Metric::Mmio, 4026.0, 2447.0), "1.645 (1.65x faster)");
        assert_eq!(ratio(Metric::Mmio, 1000.0, 2000.0), "0.500 (2.00x slower)");
        assert_eq!(ratio(Metric::Launch, 147.0, 63.0), "2.333 (2.33x slower)");
        assert_eq!(ratio(Metric::Launch, 50.0, 100.0), "0.500 (2.00x faster)");
        assert_eq!(ratio(Metric::Hvc, 0.0, 1.0), "-");
    }

    #[test]
    fn the_table_has_medians_spread_and_ratios() {
        let s = |mmio: f64, launch: f64| Sample {
            mmio_per_s: mmio,
            hvc_per_s: 1000.0,
            launch_ms: launch,
            ..Sample::default()
        };
        let rampart = [s(4000.0, 10.0), s(3000.0, 30.0), s(5000.0, 20.0)];
        let pkvm = [s(2000.0, 40.0)];
        let t = table(&[(Mode::Rampart, &rampart), (Mode::Pkvm, &pkvm)]);
        let row = t.lines().find(|l| l.starts_with("MMIO")).unwrap();
        assert!(
            row.contains("4000 (3000..5000)") && row.contains("2000 (2000..2000)"),
            "{t}"
        );
        assert!(
            row.contains("2.000 (2.00x faster)") && row.trim_end().ends_with('-'),
            "{t}"
        );
        let row = t.lines().find(|l| l.starts_with("launch")).unwrap();
        assert!(
            row.contains("20.00 (10.00..30.00)") && row.contains("0.500 (2.00x faster)"),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("Linux guest") && l.contains("not measured")),
            "{t}"
        );
    }
}
