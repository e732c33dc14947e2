//! `cargo xtask bench ownership|vm|hyp`: instructions the hypervisor runs
//! at EL2, per host call and per guest exit.
//!
//! The test host does the counting (`host/testhost/src/bench.rs`): booted
//! with `testhost.bench=<groups>` it programs the PMU to count only EL2,
//! makes each call 16 times and prints `BENCH <name> <median> min=..
//! max=.. first=.. n=.. inst=..`. QEMU runs with `-icount shift=0 -smp 1`,
//! so QEMU counts instructions exactly and the guest-visible clock is the
//! instruction count: the same binaries give the same figures on every
//! run, on any build machine. This command boots it `--rounds` times
//! (default 2), insists every run printed the very same `BENCH` lines, and
//! tabulates them. `ownership` also runs the ownership state machine's
//! build-machine benchmark (`cargo bench -p rampart-ownership --bench
//! throughput`).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::BenchArgs;
use crate::{artifacts, prereq, suite};

/// One `BENCH` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Figure {
    name: String,
    /// Median EL2 instructions per operation.
    median: u64,
    fields: BTreeMap<String, u64>,
}

/// Everything one run printed that matters.
#[derive(Debug, Default)]
struct Report {
    pmu: String,
    checks: Vec<String>,
    figures: Vec<Figure>,
    failures: Vec<String>,
    done: Option<String>,
}

/// Parses the test host's console.
fn parse(console: &str) -> Report {
    let mut r = Report::default();
    for line in console.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("BENCH-PMU ") {
            r.pmu = rest.to_string();
        } else if let Some(rest) = line.strip_prefix("BENCH-CHECK ") {
            r.checks.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-FAIL ") {
            r.failures.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-DONE ") {
            r.done = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH ") {
            match parse_figure(rest) {
                Some(f) => r.figures.push(f),
                None => r.failures.push(format!("unparsable line `{line}`")),
            }
        }
    }
    r
}

/// Parses `<name> <median> key=value...`.
fn parse_figure(rest: &str) -> Option<Figure> {
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let median = words.next()?.parse().ok()?;
    let mut fields = BTreeMap::new();
    for word in words {
        let (k, v) = word.split_once('=')?;
        fields.insert(k.to_string(), v.parse().ok()?);
    }
    Some(Figure {
        name,
        median,
        fields,
    })
}

/// Instructions Arm's virtualization guide gives for saving (or restoring)
/// the 31 general registers, 32 FP/SIMD registers and 2 stack pointers
/// with LDP/STP: the floor of one half of a world switch.
pub const SAVE_OR_RESTORE_FLOOR: u64 = 33;

/// The floor of an operation, if it is a world switch: a guest HVC answered
/// at EL2 saves and restores the guest (2 × 33); a `VCPU_RUN` that enters
/// the guest and comes back also saves and restores the host (4 × 33).
fn floor(name: &str) -> Option<u64> {
    let op = name.split_once('/')?.1;
    match op {
        "hvc" => Some(2 * SAVE_OR_RESTORE_FLOOR),
        "first-entry" | "mmio-after-write" | "mmio-after-read" => Some(4 * SAVE_OR_RESTORE_FLOOR),
        _ => None,
    }
}

/// Runs the EL2 benchmarks.
pub fn run(args: &BenchArgs, ownership: bool, vm: bool) -> Result<()> {
    prereq::ensure(&[&prereq::QEMU])?;
    let rounds = args.rounds.unwrap_or(2);
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let groups = match (ownership, vm) {
        (true, true) => "ownership,vm",
        (true, false) => "ownership",
        _ => "vm",
    };
    let mem = args.mem.clone().unwrap_or_else(|| "512M".into());
    let mut m = suite::testhost_machine(1, &mem, "max")?;
    m.append.push_str(&format!(" -- testhost.bench={groups} {}", bench_signature_bootarg()?));
    m.extra.extend(["-icount".to_string(), "shift=0".to_string()]);
    println!("bench {groups}: {}", m.command_line());
    println!("measured: {}", describe_tree());

    let timeout = Duration::from_secs(args.timeout);
    let mut first: Option<Report> = None;
    for round in 1..=rounds {
        let run = m.run(timeout, None, false)?;
        let report = parse(&run.console);
        if run.timed_out {
            bail!(run.failure("timed out"));
        }
        let Some(done) = &report.done else {
            bail!(run.failure("the test host never printed BENCH-DONE"));
        };
        if !report.failures.is_empty() || !done.ends_with(" 0 failed") {
            bail!(run.failure(&format!("benchmarks failed:\n  {}", report.failures.join("\n  "))));
        }
        if let Some(bad) = report.checks.iter().find(|c| !c.contains(" ok: ")) {
            bail!(run.failure(&format!("the PMU check failed: {bad}")));
        }
        match &first {
            None => {
                println!("PMU: {}", report.pmu);
                for c in &report.checks {
                    println!("check {c}");
                }
                first = Some(report);
            }
            Some(f) => {
                if f.figures != report.figures {
                    let diff: Vec<String> = f
                        .figures
                        .iter()
                        .zip(&report.figures)
                        .filter(|(a, b)| a != b)
                        .map(|(a, b)| format!("{}: {} then {}", a.name, a.median, b.median))
                        .collect();
                    bail!("run {round} printed different figures than run 1 (not deterministic):\n  {}", diff.join("\n  "));
                }
            }
        }
    }
    let report = first.expect("at least one round");
    println!("{rounds} runs, identical figures\n");
    print_table(&report.figures);

    if ownership {
        println!("\nownership state machine on the build machine (cargo bench -p rampart-ownership --bench throughput):");
        throughput()?;
    }
    Ok(())
}

fn print_table(figures: &[Figure]) {
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10} {:>4} {:>12}  note",
        "operation", "EL2 instr", "min", "max", "first", "n", "INST_RETIRED"
    );
    for f in figures {
        let get = |k: &str| f.fields.get(k).map_or("-".to_string(), u64::to_string);
        let mut note = Vec::new();
        if f.name.ends_with("-2m") {
            note.push(format!("{:.1} per page", f.median as f64 / 512.0));
        }
        if let Some(floor) = floor(&f.name) {
            note.push(format!("{:.1}x the {floor}-instruction floor", f.median as f64 / floor as f64));
        }
        if f.fields.get("inst").is_some_and(|&i| i != f.median) {
            note.push("INST_RETIRED stops while MDCR_EL2 is the guest's".into());
        }
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>10} {:>4} {:>12}  {}",
            f.name,
            f.median,
            get("min"),
            get("max"),
            get("first"),
            get("n"),
            get("inst"),
            note.join("; ")
        );
    }
}

/// The ownership crate's throughput benchmark, its `ops/s` lines printed.
fn throughput() -> Result<()> {
    let out = Command::new(env!("CARGO"))
        .current_dir(artifacts::root())
        .args(["bench", "-p", "rampart-ownership", "--bench", "throughput"])
        .output()
        .context("running cargo bench")?;
    if !out.status.success() {
        bail!(
            "cargo bench -p rampart-ownership failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().filter(|l| l.contains("ops/s")) {
        println!("  {line}");
    }
    // Wall-clock figures: say how busy the build machine was.
    println!("  load average (1, 5, 15 min) after: {}", super::loadavg());
    Ok(())
}

/// The commit measured and whether the tree had changes.
fn describe_tree() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(artifacts::root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--", "hyp", "crates", "host/testhost"])
        .is_some_and(|s| !s.is_empty());
    format!(
        "commit {commit}{}",
        if dirty { " with uncommitted changes under hyp/, crates/ or host/testhost/" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines() {
        let console = "rampart: x\nBENCH-PMU pmuver=0x6\nBENCH-CHECK deterministic ok: fine\n\
                       BENCH host/hvc-unknown 250 min=250 max=251 first=250 n=16 inst=250\n\
                       BENCH-DONE 2 groups, 0 failed\n";
        let r = parse(console);
        assert_eq!(r.pmu, "pmuver=0x6");
        assert_eq!(r.checks, ["deterministic ok: fine"]);
        assert_eq!(r.figures.len(), 1);
        assert_eq!(r.figures[0].name, "host/hvc-unknown");
        assert_eq!(r.figures[0].median, 250);
        assert_eq!(r.figures[0].fields["max"], 251);
        assert_eq!(r.done.as_deref(), Some("2 groups, 0 failed"));
        assert!(r.failures.is_empty());
        assert!(parse("BENCH x notanumber\n").failures.len() == 1);
    }

    #[test]
    fn floors() {
        assert_eq!(floor("vm/hvc"), Some(66));
        assert_eq!(floor("pvm/first-entry"), Some(132));
        assert_eq!(floor("host/version"), None);
    }
}

/// The hand-assembled bench guest the test host runs (the same file).
const BENCH_GUEST: [u32; 15] = include!("../../../host/testhost/src/bench/guest_code.rs");

/// Signs the bench guest as the test host runs it in a protected VM (two
/// pages of RAM, one vCPU, entry at its start) with the development key,
/// and returns the `testhost.bench-signature=` bootarg.
fn bench_signature_bootarg() -> Result<String> {
    use rampart_attest::{Manifest, VmFlags, measure_image, sign_measurement};
    let image: Vec<u8> = BENCH_GUEST.iter().flat_map(|w| w.to_le_bytes()).collect();
    let manifest = Manifest {
        memory_size: 2 * 4096,
        vcpus: 1,
        entry_offset: 0,
        flags: VmFlags { protected: true, debug: false },
    };
    let measurement = measure_image(&manifest, &image).map_err(|e| anyhow::anyhow!("bench guest manifest: {e}"))?;
    let key = crate::attest::signing_key()?;
    let signature = sign_measurement(&measurement, &key);
    Ok(format!(
        "testhost.bench-signature={},{}",
        crate::attest::hex(key.verifying_key().as_bytes()),
        crate::attest::hex(&signature.to_bytes())
    ))
}
