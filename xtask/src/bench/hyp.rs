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
//!
//! `vb` (verified boot) signs every configuration the test host runs as a
//! protected VM ([`SIGNED`]), and after the table derives the fixed part
//! and the per-MiB slope of a protected VM's first entry, and the cost of
//! the guest calls `RAMPART_ATTEST` and `RAMPART_SEALING_KEY`
//! ([`vb_summary`]). With `--wall` it boots without `-icount` instead and
//! reports the virtual counter's time for the same operations (`BENCH-WALL`
//! lines): the emulator's wall time, only indicative.

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
    /// `BENCH-WALL` lines: nanoseconds of the virtual counter.
    walls: Vec<Figure>,
    info: Vec<String>,
    failures: Vec<String>,
    done: Option<String>,
    /// The hypervisor's `EL2 stack high-water mark: ...` line at power-off.
    stack: Option<String>,
}

/// Parses the test host's console.
fn parse(console: &str) -> Report {
    let mut r = Report::default();
    for line in console.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix(super::STACK_LINE) {
            r.stack = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-PMU ") {
            r.pmu = rest.to_string();
        } else if let Some(rest) = line.strip_prefix("BENCH-CHECK ") {
            r.checks.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-FAIL ") {
            r.failures.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-DONE ") {
            r.done = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-INFO ") {
            r.info.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCH-WALL ") {
            match parse_figure(rest) {
                Some(f) => r.walls.push(f),
                None => r.failures.push(format!("unparsable line `{line}`")),
            }
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

/// Rows allowed to read 0: a guest HVC that EL2 answers itself, which the
/// PMU cannot see (it stops counting EL2 while a guest's `MDCR_EL2` is
/// loaded: `host/testhost/src/bench/pmu.rs`). Every other operation runs
/// EL2 code the PMU counts, so a 0 there is a broken measurement.
const ZERO_ALLOWED: [&str; 2] = ["vm/hvc", "pvm/hvc"];

/// Rows the test host counts with the virtual counter under `-icount`
/// (instructions at every EL, to one counter tick) because the PMU cannot
/// see them: guest calls EL2 answers for a protected guest
/// (`host/testhost/src/bench/vb.rs`).
const COUNTER_ROWS: [&str; 2] = ["vb/attest", "vb/sealing-key"];

/// How far two boots' [`COUNTER_ROWS`] may differ: two ticks of QEMU
/// 7.2's 62.5 MHz virtual counter (16 instructions each under `-icount
/// shift=0`). The counter's phase against the instruction stream is not
/// the same on every boot, so a difference of two readings can move by a
/// tick either way; the PMU rows must match exactly.
const COUNTER_TOLERANCE: u64 = 32;

/// Where two boots' figures differ: every row exactly, but
/// [`COUNTER_ROWS`] within [`COUNTER_TOLERANCE`] (median, and every field
/// but `n`, which must match).
fn differences(a: &[Figure], b: &[Figure]) -> Vec<String> {
    let mut out = Vec::new();
    if a.len() != b.len() {
        out.push(format!("{} rows then {}", a.len(), b.len()));
    }
    for (x, y) in a.iter().zip(b) {
        let same = if x.name == y.name && COUNTER_ROWS.contains(&x.name.as_str()) {
            let close = |p: u64, q: u64| p.abs_diff(q) <= COUNTER_TOLERANCE;
            close(x.median, y.median)
                && x.fields.len() == y.fields.len()
                && x.fields.iter().all(|(k, v)| {
                    y.fields.get(k).is_some_and(|w| if k == "n" { v == w } else { close(*v, *w) })
                })
        } else {
            x == y
        };
        if !same {
            let then = if x.name == y.name { String::new() } else { format!("{}: ", y.name) };
            out.push(format!("{}: {} then {then}{}", x.name, x.median, y.median));
        }
    }
    out
}

/// The rows that read 0 though not in [`ZERO_ALLOWED`].
fn unexpected_zeros(figures: &[Figure]) -> Vec<&str> {
    figures
        .iter()
        .filter(|f| f.median == 0 && !ZERO_ALLOWED.contains(&f.name.as_str()))
        .map(|f| f.name.as_str())
        .collect()
}

/// Which groups of the test host's benchmarks to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Groups {
    /// Host memory calls.
    pub ownership: bool,
    /// VM calls, world switches, guest exits.
    pub vm: bool,
    /// Verified boot and attestation.
    pub vb: bool,
}

impl Groups {
    /// The `testhost.bench=` value.
    fn bootarg(self) -> String {
        let mut names = Vec::new();
        for (on, name) in [(self.ownership, "ownership"), (self.vm, "vm"), (self.vb, "vb")] {
            if on {
                names.push(name);
            }
        }
        names.join(",")
    }
}

/// Runs the EL2 benchmarks.
pub fn run(args: &BenchArgs, groups: Groups) -> Result<()> {
    prereq::ensure(&[&prereq::QEMU])?;
    if args.wall {
        if !groups.vb || groups.ownership || groups.vm {
            bail!("--wall is for `cargo xtask bench vb` only");
        }
        return wall(args);
    }
    let rounds = args.rounds.unwrap_or(2);
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let groups_arg = groups.bootarg();
    let mut m = machine(args, &groups_arg)?;
    m.extra.extend(["-icount".to_string(), "shift=0".to_string()]);
    println!("bench {groups_arg}: {}", m.command_line());
    println!("measured: {}", describe_tree());

    let timeout = Duration::from_secs(args.timeout);
    let mut first: Option<Report> = None;
    for round in 1..=rounds {
        let report = boot(&m, timeout)?;
        if let Some(bad) = report.checks.iter().find(|c| !c.contains(" ok: ")) {
            bail!("the PMU check failed: {bad}");
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
                let diff = differences(&f.figures, &report.figures);
                if !diff.is_empty() {
                    bail!("run {round} printed different figures than run 1 (not deterministic):\n  {}", diff.join("\n  "));
                }
            }
        }
    }
    let report = first.expect("at least one round");
    let zeros = unexpected_zeros(&report.figures);
    if !zeros.is_empty() {
        bail!("these rows read 0 EL2 instructions, which only {ZERO_ALLOWED:?} may: {}", zeros.join(", "));
    }
    println!("{rounds} runs, identical figures (the virtual counter's rows within {COUNTER_TOLERANCE} instructions)\n");
    print_table(&report.figures);
    for info in &report.info {
        println!("{info}");
    }
    match &report.stack {
        Some(stack) => println!("\nEL2 stack high-water mark after these paths: {stack}"),
        None => println!("\nEL2 stack high-water mark: not reported"),
    }
    if groups.vb {
        println!("\nverified boot and attestation (derived from the table):");
        for line in vb_summary(&report.figures) {
            println!("  {line}");
        }
    }

    if groups.ownership {
        println!("\nownership state machine on the build machine (cargo bench -p rampart-ownership --bench throughput):");
        throughput()?;
    }
    Ok(())
}

/// The test host's machine for `testhost.bench=<groups>`, every bench
/// configuration signed.
fn machine(args: &BenchArgs, groups: &str) -> Result<crate::qemu::Machine> {
    let mem = args.mem.clone().unwrap_or_else(|| "512M".into());
    let mut m = suite::testhost_machine(1, &mem, "max")?;
    // The release hypervisor hides EL2 from the host's PMU (MDCR_EL2.HPMD,
    // HCCD); the benchmark build differs only in leaving those clear.
    m.kernel = if args.portable_sha256 {
        artifacts::hypervisor_with_features(&["bench-el2-pmu", "portable-sha256"])?
    } else {
        artifacts::hypervisor_with_feature("bench-el2-pmu")?
    };
    m.smmu = args.smmu;
    m.append.push_str(&format!(" -- testhost.bench={groups} {}", bench_signature_bootarg()?));
    Ok(m)
}

/// Boots once; the report, if every benchmark passed.
fn boot(m: &crate::qemu::Machine, timeout: Duration) -> Result<Report> {
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
    Ok(report)
}

/// `bench vb --wall`: boots without `-icount` `--rounds` times (default 3)
/// and reports the `BENCH-WALL` figures: median, min and max over every
/// run's median.
fn wall(args: &BenchArgs) -> Result<()> {
    let rounds = args.rounds.unwrap_or(3);
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let m = machine(args, "vb,wall")?;
    println!("bench vb --wall: {}", m.command_line());
    println!("measured: {}", describe_tree());
    let load_before = super::loadavg();
    let timeout = Duration::from_secs(args.timeout);
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..rounds {
        let report = boot(&m, timeout)?;
        for w in report.walls {
            if !samples.contains_key(&w.name) {
                order.push(w.name.clone());
            }
            samples.entry(w.name).or_default().push(w.median as f64 / 1e6);
        }
    }
    println!(
        "{rounds} runs; load average (1, 5, 15 min): {load_before} before, {} after",
        super::loadavg()
    );
    println!("QEMU TCG wall time of the virtual counter, only indicative (not hardware figures)\n");
    println!("{:<30} {:>10} {:>10} {:>10}", "operation", "median ms", "min ms", "max ms");
    for name in order {
        let v = &samples[&name];
        println!(
            "{:<30} {:>10.3} {:>10.3} {:>10.3}",
            name,
            super::median(v),
            super::min(v),
            super::max(v)
        );
    }
    Ok(())
}

/// The memory sizes of the `vb` group, in MiB (`host/testhost/src/bench/vb.rs`).
const VB_SIZES: [u64; 3] = [1, 2, 4];

/// What the `vb` figures mean: the protected VM's first entry as a fixed
/// part plus a slope per MiB, the same for the measurement alone, the
/// signature check, the non-protected contrast, and the guest calls.
///
/// The line goes through the two largest sizes. Guest stage 2 holds 4 KiB
/// pages only, and the measurement maps each run of contiguous pages once,
/// so the sizes differ mainly in how much is hashed; how far the smallest
/// lies off the line is what its shorter stage-2 walk and mapping saves or
/// costs.
fn vb_summary(figures: &[Figure]) -> Vec<String> {
    let get = |name: &str| figures.iter().find(|f| f.name == name).map(|f| f.median as f64);
    let mut out = Vec::new();
    let (lo, mid, hi) = (VB_SIZES[0], VB_SIZES[1], VB_SIZES[2]);
    for (what, op) in [("first entry of a protected VM", "first-entry"), ("measurement alone (run before VM_SET_SIGNATURE)", "unsigned-run")] {
        let at = |mib: u64| get(&format!("vb/pvm-{mib}m/{op}"));
        if let (Some(a), Some(b), Some(c)) = (at(lo), at(mid), at(hi)) {
            let slope = (c - b) / (hi - mid) as f64;
            let fixed = b - slope * mid as f64;
            let off = a - (fixed + slope * lo as f64);
            out.push(format!(
                "{what}: {fixed:.0} + {slope:.0} per MiB ({:.0} per 4 KiB page), through {mid} and {hi} MiB; \
                 {lo} MiB lies {off:+.0} off the line",
                slope / 256.0
            ));
        }
    }
    // issue 16 (measurement v2): the same line for RAM with no zero page,
    // and what a zero MiB and a content MiB each cost.
    let at = |mib: u64| get(&format!("vb/pvm-{mib}m-content/unsigned-run"));
    if let (Some(b), Some(c)) = (at(mid), at(hi)) {
        let slope = (c - b) / (hi - mid) as f64;
        let fixed = b - slope * mid as f64;
        out.push(format!(
            "measurement alone, every page content: {fixed:.0} + {slope:.0} per MiB ({:.0} per 4 KiB page), through {mid} and {hi} MiB",
            slope / 256.0
        ));
    }
    for mib in VB_SIZES {
        let name = |op: &str| format!("vb/pvm-{mib}m/{op}");
        if let (Some(e), Some(u)) = (get(&name("first-entry")), get(&name("unsigned-run"))) {
            out.push(format!(
                "{mib} MiB: signature check + guest entry - refusal = first-entry - unsigned-run = {:.0}",
                e - u
            ));
        }
    }
    let vm: Vec<String> = VB_SIZES
        .iter()
        .filter_map(|mib| get(&format!("vb/vm-{mib}m/first-entry")).map(|v| format!("{mib} MiB {v:.0}")))
        .collect();
    if !vm.is_empty() {
        out.push(format!("first entry of a non-protected VM (not measured): {}", vm.join(", ")));
    }
    // A guest HVC's row reads 0 where the PMU cannot see it (ZERO_ALLOWED).
    let hvc = get("vm/hvc").or_else(|| get("pvm/hvc")).filter(|&h| h > 0.0);
    for (name, what) in [("vb/attest", "RAMPART_ATTEST (64-byte nonce)"), ("vb/sealing-key", "RAMPART_SEALING_KEY (32-byte label)")] {
        if let Some(v) = get(name) {
            let beyond = hvc.map_or(String::new(), |h| format!(", {:.0} beyond a guest HVC answered at EL2 ({h:.0})", v - h));
            out.push(format!(
                "{what}: {v:.0} instructions (the virtual counter, every EL), guest -> EL2 -> guest{beyond}"
            ));
        }
    }
    out
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
        if COUNTER_ROWS.contains(&f.name.as_str()) {
            note.push("the virtual counter (every EL): the PMU does not see EL2 for a protected guest".into());
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

/// The hand-assembled bench guest the test host runs (the same file).
const BENCH_GUEST: [u32; 15] = include!("../../../host/testhost/src/bench/guest_code.rs");
/// The attestation bench guest (the same file as the test host's).
const ATTEST_GUEST: [u32; 29] = include!("../../../host/testhost/src/bench/attest_guest_code.rs");

/// Every configuration the test host runs as a protected VM: the name it
/// looks its signature up by (`host/testhost/src/bench/{vm,vb}.rs`), the
/// guest, and its RAM in bytes. One vCPU, entered at the image's start
/// with `x0` = the RAM size; the RAM past the image is zero.
const SIGNED: [(&str, &[u32], u64); 5] = [
    ("pvm", &BENCH_GUEST, 2 * 4096),
    ("pvm-1m", &BENCH_GUEST, 1 << 20),
    ("pvm-2m", &BENCH_GUEST, 2 << 20),
    ("pvm-4m", &BENCH_GUEST, 4 << 20),
    ("attest", &ATTEST_GUEST, 2 * 4096),
];

/// Signs every configuration in [`SIGNED`] with the development key and
/// returns the `testhost.bench-signature=<signer>,<name>:<signature>,...`
/// bootarg.
fn bench_signature_bootarg() -> Result<String> {
    let key = crate::attest::signing_key()?;
    let mut arg = format!("testhost.bench-signature={}", crate::attest::hex(key.verifying_key().as_bytes()));
    for (name, guest, memory_size) in SIGNED {
        let signature = sign_configuration(guest, memory_size, &key)?;
        arg.push_str(&format!(",{name}:{}", crate::attest::hex(&signature)));
    }
    Ok(arg)
}

/// The signature over the measurement of `guest` in a protected VM with
/// `memory_size` bytes of RAM.
fn sign_configuration(guest: &[u32], memory_size: u64, key: &rampart_attest::SigningKey) -> Result<[u8; 64]> {
    use rampart_attest::{Manifest, VmFlags, measure_image, sign_measurement};
    let image: Vec<u8> = guest.iter().flat_map(|w| w.to_le_bytes()).collect();
    let manifest = Manifest {
        memory_size,
        vcpus: 1,
        entry_offset: 0,
        flags: VmFlags { protected: true, debug: false, realm: false },
    };
    let measurement = measure_image(&manifest, &image).map_err(|e| anyhow::anyhow!("bench guest manifest: {e}"))?;
    Ok(sign_measurement(&measurement, key).to_bytes())
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
    fn vb_summary_fits_a_line() {
        let f = |name: &str, median: u64| Figure { name: name.into(), median, fields: BTreeMap::new() };
        let figures = [
            f("vb/pvm-1m/first-entry", 1_100 + 1_000),
            f("vb/pvm-2m/first-entry", 1_100 + 2_000),
            f("vb/pvm-4m/first-entry", 1_100 + 4_000),
            f("vb/pvm-1m/unsigned-run", 100 + 1_001),
            f("vb/pvm-2m/unsigned-run", 100 + 2_000),
            f("vb/pvm-4m/unsigned-run", 100 + 4_000),
            f("vb/vm-1m/first-entry", 1_809),
            f("vm/hvc", 1_371),
            f("vb/attest", 2_371),
        ];
        let lines = vb_summary(&figures);
        assert!(lines[0].contains(": 1100 + 1000 per MiB"), "{lines:?}");
        assert!(lines[0].ends_with("lies +0 off the line"), "{lines:?}");
        assert!(lines[1].contains(": 100 + 1000 per MiB"), "{lines:?}");
        assert!(lines[1].ends_with("lies +1 off the line"), "{lines:?}");
        assert!(lines[2].ends_with("= 999"), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("1 MiB 1809")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("2371 instructions") && l.contains(", 1000 beyond")), "{lines:?}");
        // A guest HVC the PMU did not see is no base to subtract.
        let blind = [f("vm/hvc", 0), f("vb/attest", 2_371)];
        let lines = vb_summary(&blind);
        assert!(lines.iter().any(|l| l.contains("2371 instructions") && !l.contains("beyond")), "{lines:?}");
    }

    #[test]
    fn counter_rows_may_move_by_a_tick_the_others_not() {
        let f = |name: &str, median: u64, n: u64| Figure {
            name: name.into(),
            median,
            fields: BTreeMap::from([("min".to_string(), median - 16), ("n".to_string(), n)]),
        };
        let one = [f("vb/pvm-1m/donate", 113_600, 3), f("vb/attest", 740_400, 8)];
        assert!(differences(&one, &one).is_empty());
        let tick = [f("vb/pvm-1m/donate", 113_600, 3), f("vb/attest", 740_384, 8)];
        assert!(differences(&one, &tick).is_empty());
        let far = [f("vb/pvm-1m/donate", 113_600, 3), f("vb/attest", 740_352, 8)];
        assert_eq!(differences(&one, &far).len(), 1);
        let fewer = [f("vb/pvm-1m/donate", 113_600, 3), f("vb/attest", 740_400, 7)];
        assert_eq!(differences(&one, &fewer).len(), 1);
        let pmu = [f("vb/pvm-1m/donate", 113_601, 3), f("vb/attest", 740_400, 8)];
        assert_eq!(differences(&one, &pmu), ["vb/pvm-1m/donate: 113600 then 113601"]);
        assert_eq!(differences(&one, &one[..1]).len(), 1);
    }

    #[test]
    fn zero_rows_only_where_allowed() {
        let f = |name: &str, median: u64| Figure { name: name.into(), median, fields: BTreeMap::new() };
        let figures = [f("vm/hvc", 0), f("pvm/hvc", 0), f("vb/pvm-1m/donate", 113_600), f("vb/attest", 0), f("vb/sealing-key", 0)];
        assert_eq!(unexpected_zeros(&figures), ["vb/attest", "vb/sealing-key"]);
        assert!(unexpected_zeros(&figures[..3]).is_empty());
    }

    #[test]
    fn every_configuration_is_signed() {
        let key = rampart_attest::SigningKey::from_bytes(&[7; 32]);
        for (name, guest, size) in SIGNED {
            assert!(name.len() <= 8, "{name}: the test host keeps names of 8 bytes at most");
            let sig = sign_configuration(guest, size, &key).unwrap();
            let image: Vec<u8> = guest.iter().flat_map(|w| w.to_le_bytes()).collect();
            let manifest = rampart_attest::Manifest {
                memory_size: size,
                vcpus: 1,
                entry_offset: 0,
                flags: rampart_attest::VmFlags { protected: true, debug: false, realm: false },
            };
            let m = rampart_attest::measure_image(&manifest, &image).unwrap();
            rampart_attest::verify_measurement(&m, key.verifying_key().as_bytes(), &sig, &[key.verifying_key()]).unwrap();
        }
        assert_eq!(VB_SIZES.map(|mib| format!("pvm-{mib}m")), ["pvm-1m", "pvm-2m", "pvm-4m"]);
        assert!(VB_SIZES.iter().all(|mib| SIGNED.iter().any(|(_, _, size)| *size == mib << 20)));
    }

    #[test]
    fn parses_wall_and_info_lines() {
        let r = parse("BENCH-WALL vb/attest 1234 min=1 max=2 n=8\nBENCH-INFO vb/attest: reports of 300 bytes\n");
        assert_eq!(r.walls[0].median, 1234);
        assert_eq!(r.info, ["vb/attest: reports of 300 bytes"]);
        assert!(r.figures.is_empty());
    }

    #[test]
    fn floors() {
        assert_eq!(floor("vm/hvc"), Some(66));
        assert_eq!(floor("pvm/first-entry"), Some(132));
        assert_eq!(floor("host/version"), None);
    }
}
