//! `cargo xtask bench`: benchmarks whose figures go to docs/perf.md.
//!
//! `boot`: wall time from QEMU's start to the Linux host's `/init` printing
//! [`linux::INIT_MARKER`], for Debian's kernel under Rampart, at bare EL1
//! (no hypervisor), and under Linux's own pKVM (`kvm-arm.mode=protected`).
//! The modes run round-robin (A, B, C, A, B, C, ...) so that drift in the
//! build machine's load spreads evenly over them.
//!
//! `ownership`, `vm`, `vb`, `hyp`: instructions the hypervisor runs at EL2
//! per host call, guest exit, verified boot and attestation call, counted
//! by the test host with the PMU
//! (`host/testhost/src/bench.rs`) under `-icount shift=0`, so every figure
//! is exact and repeats bit for bit. See [`hyp`].

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::qemu::Machine;
use crate::{linux, prereq, suite};

mod hyp;
pub mod peer;
mod realm;

use hyp::Groups;

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    pub which: Which,
    /// Rounds; each round boots every mode once (`boot`), or boots the
    /// test host once and checks every run printed the same figures
    /// (`ownership`, `vm`, `vb`, `hyp`; default 2 there, 3 with `--wall`).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Number of CPUs (`boot` only: the EL2 counts run on 1 CPU).
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// RAM size, as QEMU's -m takes it (default 1G for `boot`, 512M for the
    /// EL2 counts).
    #[arg(long)]
    pub mem: Option<String>,
    /// Give up on one boot after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// `vb` only: boot without `-icount` and report wall time (the virtual
    /// counter under QEMU TCG: only indicative); default 3 rounds.
    #[arg(long)]
    pub wall: bool,
    /// EL2 counts only: QEMU's SMMUv3 in front of PCIe (`iommu=smmuv3`), so
    /// Rampart owns it and every host stage-2 change also updates the
    /// SMMU's mirror and invalidates its TLBs.
    #[arg(long)]
    pub smmu: bool,
    /// EL2 counts only: a hypervisor that hashes with the portable SHA-256
    /// code even where the CPU has the SHA-256 instructions (to compare
    /// the two in `vb`).
    #[arg(long)]
    pub portable_sha256: bool,
    /// `peer` and `realm` only: QEMU's `-icount shift=0,sleep=off`, so the
    /// guest's clock counts instructions (1 ns each) and the figures do
    /// not depend on the build machine's load.
    #[arg(long)]
    pub icount: bool,
}

/// The benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// Linux host boot time to /init: Rampart vs bare EL1 vs pKVM.
    Boot,
    /// EL2 instructions of the host memory calls, and the ownership
    /// state machine's throughput on the build machine.
    Ownership,
    /// EL2 instructions of VM calls, world switches and guest exits.
    Vm,
    /// EL2 instructions of verified boot (a protected VM's first entry by
    /// memory size) and of the guest's attestation and sealing-key calls.
    Vb,
    /// `ownership`, `vm` and `vb`.
    Hyp,
    /// rampart-vmm under the Linux host: guest exits per second and VM
    /// launch latency (`linux_vmm::bench`).
    Vmm,
    /// Hostile-host fuzzing: at least 1 000 000 calls (`--rounds` runs of
    /// 250 000, seeds 100, 101, ..., on `--smp` CPUs): calls, calls/s,
    /// violations (`crate::fuzz`).
    Fuzz,
    /// The same guest workloads under Rampart (rampart-vmm) and under
    /// Linux's pKVM and nVHE KVM (the peer VMM, host/peer), one
    /// interleaved run (issue 16; `bench::peer`).
    Peer,
    /// Debian's kernel as a Rampart guest (issue 11): `rampart-vmm` start
    /// to the guest's /init, virtio-blk throughput, vsock round trips,
    /// exits by reason (`virtio_e2e::bench`; 2 vCPUs on `--smp` CPUs).
    LinuxGuest,
    /// EL2 stack use: the deepest each CPU's stack has been after the test
    /// host's whole suite (signing, COSE, measurement, signature checks,
    /// every host call and guest exit), against the stack size.
    Stack,
    /// Sealed swap (issue 14): the protected swap guest's time without
    /// swap and with a share of its memory swapped (`linux_swap::bench`).
    Swap,
    /// Debian's kernel as a signed realm against the same kernel and
    /// initrd non-protected (issue 12): boot split into the first-run
    /// measurement and the rest, virtio-blk and vsock throughput (the
    /// bounce-buffer cost), exits; `--rounds` (default 2) interleaved
    /// pairs in one boot of the Linux host (`bench::realm`).
    Realm,
}

/// Runs a benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    match args.which {
        Which::Boot => boot(args),
        Which::Ownership => hyp::run(args, Groups { ownership: true, ..Groups::default() }),
        Which::Vm => hyp::run(args, Groups { vm: true, ..Groups::default() }),
        Which::Vb => hyp::run(args, Groups { vb: true, ..Groups::default() }),
        Which::Hyp => hyp::run(args, Groups { ownership: true, vm: true, vb: true }),
        Which::Stack => stack(args),
        Which::Peer => peer::run(args),
        Which::Fuzz => fuzz(args),
        Which::Swap => crate::linux_swap::bench(),
        Which::Realm => realm::run(args),
        Which::LinuxGuest => crate::virtio_e2e::bench(args.smp, 2, args.rounds.unwrap_or(1), Duration::from_secs(args.timeout.max(900))),
        Which::Vmm => crate::linux_vmm::bench(
            args.smp,
            args.mem.as_deref().unwrap_or("1G"),
            args.rounds.unwrap_or(5),
            Duration::from_secs(args.timeout.max(300)),
        ),
    }
}

/// How the hypervisor starts the line it prints when the host powers off.
pub const STACK_LINE: &str = "rampart: EL2 stack high-water mark: ";

/// `N of M bytes` from the stack line.
pub fn parse_stack_line(console: &str) -> Option<(u64, u64)> {
    let rest = console.lines().find_map(|l| l.strip_prefix(STACK_LINE))?;
    let (used, rest) = rest.split_once(" of ")?;
    let size = rest.split_once(' ')?.0;
    Some((used.trim().parse().ok()?, size.parse().ok()?))
}

/// `bench stack`: the test host's whole suite `--rounds` times (default 1)
/// on `--smp` CPUs, then the EL2 stack high-water mark each run reported.
fn stack(args: &BenchArgs) -> Result<()> {
    let mem = args.mem.clone().unwrap_or_else(|| "512M".into());
    let m = suite::testhost_machine(args.smp, &mem, "max")?;
    println!("bench stack: {}", m.command_line());
    for round in 1..=args.rounds.unwrap_or(1) {
        let run = m.run(Duration::from_secs(args.timeout), None, false)?;
        if run.timed_out || run.exit_code != Some(0) {
            bail!(run.failure("the test host did not power off cleanly"));
        }
        let line = run.console.lines().find_map(|l| l.strip_prefix(STACK_LINE));
        let Some((used, size)) = parse_stack_line(&run.console) else {
            bail!(run.failure("no EL2 stack high-water line"));
        };
        println!(
            "run {round}: EL2 stack high-water mark {used} of {size} bytes ({}%, margin {} bytes): {}",
            used * 100 / size.max(1),
            size - used.min(size),
            line.unwrap_or_default()
        );
    }
    Ok(())
}

/// `bench fuzz`: `--rounds` (default 4) fuzz runs of 250 000 calls with
/// seeds 100, 101, ...; the totals for docs/perf.md. Any violation fails.
fn fuzz(args: &BenchArgs) -> Result<()> {
    const CALLS: u64 = 250_000;
    let rounds = args.rounds.unwrap_or(4);
    let (hyp, features) = crate::fuzz::hypervisor(&[])?;
    let (mut calls, mut hypercalls, mut exits, mut secs, mut violations) = (0u64, 0u64, 0u64, 0f64, 0u64);
    for round in 0..rounds {
        let plan = crate::fuzz::Plan {
            seed: 100 + u64::from(round),
            calls: CALLS,
            smp: args.smp,
            check_every: 1_000,
            oracle_every: None,
            mutant: None,
            stop: None,
            mem: args.mem.clone().unwrap_or_else(|| "512M".into()),
            timeout: crate::fuzz::default_timeout(CALLS, args.smp).max(Duration::from_secs(args.timeout)),
            echo: false,
        };
        let summary = crate::fuzz::run_once(&hyp, &features, &plan)?;
        println!("bench fuzz: seed {}: {}", plan.seed, summary.line());
        println!("bench fuzz: seed {}: {}", plan.seed, summary.rates());
        calls += summary.calls;
        hypercalls += summary.hypercalls;
        exits += summary.exits;
        secs += summary.secs;
        violations += summary.violations;
    }
    println!(
        "bench fuzz: total {calls} calls ({hypercalls} hypercalls, {exits} guest exits) on {} CPUs in {secs:.0} s = {:.0} calls/s, {violations} violations; hypervisor features [{}]",
        args.smp,
        calls as f64 / secs.max(0.001),
        features.join(",")
    );
    Ok(())
}

/// What Linux prints once its own pKVM has deprivileged it.
pub const PKVM_READY: &str = "Protected nVHE mode initialized successfully";

/// The host kernel's command line in every mode (after Rampart's own part).
const HOST_ARGS: &str = "console=ttyAMA0 earlycon panic=-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Rampart,
    Bare,
    Pkvm,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Rampart, Mode::Bare, Mode::Pkvm];

    fn name(self) -> &'static str {
        match self {
            Mode::Rampart => "rampart",
            Mode::Bare => "bare EL1",
            Mode::Pkvm => "pKVM",
        }
    }

    fn machine(self, args: &BenchArgs, host: &linux::LinuxHost) -> Result<Machine> {
        if self == Mode::Rampart {
            return suite::linux_machine(args.smp, &boot_mem(args), "max", "");
        }
        let mut m = Machine::new(host.kernel.clone());
        m.smp = args.smp;
        m.mem = boot_mem(args);
        m.cpu = "max".into();
        m.initrd = Some(host.initramfs.clone());
        match self {
            Mode::Bare => {
                m.virtualization = false;
                m.append = HOST_ARGS.into();
            }
            _ => {
                m.virtualization = true;
                m.append = format!("{HOST_ARGS} kvm-arm.mode=protected");
            }
        }
        Ok(m)
    }
}

/// One mode's machine, samples and first failure.
struct Series {
    mode: Mode,
    machine: Option<Machine>,
    /// Wall seconds from QEMU's start to `/init`, one per round.
    secs: Vec<f64>,
    /// QEMU's CPU seconds (all threads) at `/init`, one per round: less
    /// sensitive than wall time to other work on the build machine, which
    /// delays a TCG vCPU thread without charging it CPU time.
    cpu: Vec<f64>,
    failure: Option<String>,
}

fn boot_mem(args: &BenchArgs) -> String {
    args.mem.clone().unwrap_or_else(|| "1G".into())
}

fn boot(args: &BenchArgs) -> Result<()> {
    let rounds = args.rounds.unwrap_or(5);
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    prereq::ensure(&[&prereq::QEMU])?;
    let host = linux::prepare()?;
    let timeout = Duration::from_secs(args.timeout);
    println!(
        "bench boot: {} {} (arm64 cloud), {} CPUs, {} RAM, {} rounds, time from QEMU start to `{}`",
        host.package,
        host.version,
        args.smp,
        boot_mem(args),
        rounds,
        linux::INIT_MARKER
    );

    let mut series: Vec<Series> = Mode::ALL
        .iter()
        .map(|&mode| {
            let (machine, failure) = match mode.machine(args, &host) {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(format!("could not set up: {e:#}"))),
            };
            Series {
                mode,
                machine,
                secs: Vec::new(),
                cpu: Vec::new(),
                failure,
            }
        })
        .collect();
    for s in &series {
        match (&s.machine, &s.failure) {
            (Some(m), _) => println!("  {:<9} {}", s.mode.name(), m.command_line()),
            (None, Some(f)) => println!("  {:<9} FAILED {f}", s.mode.name()),
            (None, None) => unreachable!(),
        }
    }

    let load_before = loadavg();
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for s in &mut series {
            // A mode that failed once is not retried: a broken mode would
            // otherwise cost a timeout every round.
            if s.failure.is_some() {
                let _ = write!(line, "  {} skipped", s.mode.name());
                continue;
            }
            let machine = s.machine.as_ref().expect("set up");
            match measure(s.mode, machine, timeout) {
                Ok((t, cpu)) => {
                    let _ = write!(line, "  {} {t:.2}s (cpu {cpu:.2}s)", s.mode.name());
                    s.secs.push(t);
                    s.cpu.push(cpu);
                }
                Err(e) => {
                    let _ = write!(line, "  {} FAILED", s.mode.name());
                    s.failure = Some(e);
                }
            }
        }
        println!("{line}");
    }

    // TCG is CPU-bound: anything else running on the build machine shows
    // up in the figures, so say how busy it was.
    println!(
        "load average (1, 5, 15 min): {load_before} before, {} after",
        loadavg()
    );

    let find = |mode: Mode| series.iter().find(|s| s.mode == mode && s.failure.is_none());
    let bare = find(Mode::Bare);
    println!(
        "\n{:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "mode", "median", "min", "max", "vs bare", "cpu med", "vs bare"
    );
    for s in &series {
        if let Some(f) = &s.failure {
            println!("{:<9} FAILED: {f}", s.mode.name());
            continue;
        }
        let ratio = |of: fn(&Series) -> &[f64]| {
            bare.map_or("-".to_string(), |b| format!("{:.3}", median(of(s)) / median(of(b))))
        };
        println!(
            "{:<9} {:>7.2}s {:>7.2}s {:>7.2}s {:>8} {:>8.2}s {:>8}",
            s.mode.name(),
            median(&s.secs),
            min(&s.secs),
            max(&s.secs),
            ratio(|s| &s.secs),
            median(&s.cpu),
            ratio(|s| &s.cpu),
        );
    }
    // Paired by round: each round boots the modes back to back, so a
    // slow stretch of the build machine hits all of them; the median of
    // the per-round ratios is steadier than the ratio of the medians.
    let paired = |a: &Series, b: &Series, of: fn(&Series) -> &[f64]| {
        let r: Vec<f64> = of(a).iter().zip(of(b)).map(|(x, y)| x / y).collect();
        (median(&r), min(&r), max(&r))
    };
    if let Some(r) = find(Mode::Rampart) {
        for other in [bare, find(Mode::Pkvm)].into_iter().flatten() {
            let (w, wlo, whi) = paired(r, other, |s| &s.secs);
            let (c, clo, chi) = paired(r, other, |s| &s.cpu);
            println!(
                "rampart / {} paired by round: wall {w:.3} ({wlo:.3}..{whi:.3}), cpu {c:.3} ({clo:.3}..{chi:.3})",
                other.mode.name()
            );
        }
    }
    // Issue 16's goals: Rampart at most 1.02x bare EL1 and below pKVM,
    // in the same interleaved run (wall-time medians).
    if let (Some(b), Some(r)) = (bare, find(Mode::Rampart)) {
        let vs_bare = median(&r.secs) / median(&b.secs);
        let verdict = if vs_bare <= 1.02 { "meets" } else { "misses" };
        println!("rampart / bare EL1: {vs_bare:.3} ({verdict} the 1.02x goal)");
        if let Some(p) = find(Mode::Pkvm) {
            let vs_pkvm = median(&r.secs) / median(&p.secs);
            let verdict = if vs_pkvm < 1.0 { "below" } else { "not below" };
            println!("rampart / pKVM: {vs_pkvm:.3} ({verdict} pKVM in this run)");
        }
    }

    let failed: Vec<&str> = series
        .iter()
        .filter(|s| s.failure.is_some())
        .map(|s| s.mode.name())
        .collect();
    if !failed.is_empty() {
        bail!("bench boot: {} failed (see above)", failed.join(", "));
    }
    Ok(())
}

/// Boots once; the seconds from QEMU's start to the `/init` marker, and
/// QEMU's CPU seconds then.
fn measure(mode: Mode, machine: &Machine, timeout: Duration) -> std::result::Result<(f64, f64), String> {
    let run = machine
        .run(timeout, Some(linux::INIT_MARKER), false)
        .map_err(|e| format!("could not run QEMU: {e:#}"))?;
    let Some(at) = run.time_of(linux::INIT_MARKER) else {
        let what = if run.timed_out {
            format!("no `{}` within {}s", linux::INIT_MARKER, timeout.as_secs())
        } else {
            format!("QEMU ended before `{}`", linux::INIT_MARKER)
        };
        return Err(run.failure(&what));
    };
    if mode == Mode::Pkvm && !run.console.contains(PKVM_READY) {
        return Err(run.failure(&format!("the kernel did not print `{PKVM_READY}`")));
    }
    let Some(cpu) = run.cpu_at_stop else {
        return Err(run.failure("QEMU's CPU time could not be read from /proc"));
    };
    Ok((at.as_secs_f64(), cpu.as_secs_f64()))
}

/// The build machine's load averages from `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }
}
