//! `cargo xtask fuzz`: the hostile-host fuzzer (issue 15).
//!
//! Boots the hypervisor, built with the `oracle` feature when the tree has
//! it (plus any `--hyp-features`, e.g. a mutant), with the test host in fuzz
//! mode (`testhost.fuzz=seed=S,calls=N,check=K[,stop=I]`,
//! `host/testhost/src/fuzz/`), and fails on any `oracle: VIOLATION` line,
//! any `fuzz: FAILED` line (a host-side invariant: a call that succeeded
//! though the host's bookkeeping says it must fail, a page that faulted or
//! did not, a page returned unzeroed), an EL2 panic or fatal exception, a
//! hang (the timeout) or a run that never printed `fuzz: done`.
//!
//! On a failure it prints the seed, the CPU and call index and the calls
//! before it, and writes `build/fuzz/failure-seed<S>.txt`; `--replay FILE`
//! reruns that run up to the failing index (`stop=I`: every CPU stops after
//! its action I; with one CPU the replay is exact, with several the
//! streams are the same but their interleaving is not).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, prereq};

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args, Clone, Debug)]
pub struct FuzzArgs {
    /// Actions in total (split over the CPUs).
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,
    /// The run's seed (each CPU's stream is derived from it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// CPUs; each runs its own stream.
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// `ORACLE_CHECK` every this many actions per CPU (and at the end).
    #[arg(long, default_value_t = 1_000)]
    pub check_every: u64,
    /// The oracle's correspondence check every K events at EL2 (the
    /// hypervisor's `rampart.oracle-every=K`; 0: only on `ORACLE_CHECK`;
    /// default: the build's, 64).
    #[arg(long)]
    pub oracle_every: Option<u64>,
    /// Extra hypervisor cargo features, comma-separated (e.g.
    /// `portable-sha256`); `oracle` is always added when the hypervisor has
    /// it.
    #[arg(long)]
    pub hyp_features: Option<String>,
    /// A planted bug for the oracle to find (hyp/src/mutant.rs, e.g.
    /// `reclaim-vm-meta`): adds the `mutants` feature and
    /// `rampart.mutant=<name>` to the hypervisor's command line.
    #[arg(long)]
    pub mutant: Option<String>,
    /// Rerun the failure recorded in this file (`build/fuzz/failure-*.txt`)
    /// up to its failing index.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Rerun `--seed`/`--calls`/`--smp` up to this action index.
    #[arg(long)]
    pub replay_index: Option<u64>,
    /// RAM size.
    #[arg(long, default_value = "512M")]
    pub mem: String,
    /// Give up after this many seconds (default: from the number of calls).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Stream the console.
    #[arg(long)]
    pub verbose: bool,
}

/// What a finished run reported.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub calls: u64,
    pub hypercalls: u64,
    pub exits: u64,
    pub violations: u64,
    pub refusals: u64,
    pub oracle: bool,
    pub secs: f64,
    /// Calls/s per segment of the run (`fuzz: rate` lines: every CPU's
    /// actions by the guest's counter): (actions done at the segment's
    /// end, calls/s in it).
    pub segments: Vec<(u64, f64)>,
    /// The oracle's last `oracle: cost` line, if it printed one.
    pub cost: Option<OracleCost>,
}

/// Where the oracle's time went (`oracle: cost ...`, `hyp/src/oracle.rs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OracleCost {
    /// Full correspondence checks and their milliseconds.
    pub checks: u64,
    pub check_ms: u64,
    /// Per-event checks (the pages one event changed) and their
    /// milliseconds.
    pub effect_checks: u64,
    pub effect_ms: u64,
    /// Milliseconds CPUs waited for the oracle's lock.
    pub lock_wait_ms: u64,
}

impl OracleCost {
    fn parse(line: &str) -> Option<OracleCost> {
        let rest = line.split_once("oracle: cost ")?.1;
        let mut c = OracleCost::default();
        for item in rest.split_whitespace() {
            let (k, v) = item.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "checks" => c.checks = v,
                "check_ms" => c.check_ms = v,
                "effect_checks" => c.effect_checks = v,
                "effect_ms" => c.effect_ms = v,
                "lock_wait_ms" => c.lock_wait_ms = v,
                _ => {}
            }
        }
        Some(c)
    }

    /// The scaling check (issue 15, "the collapse"): a per-event check
    /// looks only at the pages the event changed, so on average it must
    /// cost a small fraction of a full check over all of RAM. A ratio of
    /// two costs measured in the same run, so the machine's load cancels
    /// out. The collapse's cause, a `VM_DESTROY` compared over all of RAM,
    /// gave 0.15; the fix gives about 0.001.
    pub fn scaling_problem(&self) -> Option<String> {
        // Too few of either to judge.
        if self.checks < 4 || self.effect_checks < 200 || self.check_ms < 20 {
            return None;
        }
        let full = self.check_ms as f64 / self.checks as f64;
        let event = self.effect_ms as f64 / self.effect_checks as f64;
        (event > full * MAX_EVENT_CHECK_SHARE).then(|| {
            format!(
                "the oracle's per-event checks cost {event:.2} ms on average, {:.1}% of a full correspondence check ({full:.1} ms): more than {:.0}%, so they scan more than the pages each event changed",
                100.0 * event / full,
                100.0 * MAX_EVENT_CHECK_SHARE
            )
        })
    }
}

/// The largest average cost of a per-event check, as a share of a full
/// correspondence check, that [`OracleCost::scaling_problem`] accepts.
pub const MAX_EVENT_CHECK_SHARE: f64 = 0.02;

/// Calls/s per segment from the `fuzz: rate done=D ticks=T hz=F` lines.
pub fn segments(console: &str) -> Vec<(u64, f64)> {
    let mut points: Vec<(u64, u64, u64)> = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.strip_prefix("fuzz: rate ") else {
            continue;
        };
        let field = |k: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(d), Some(t), Some(h)) = (field("done="), field("ticks="), field("hz=")) {
            points.push((d, t, h.max(1)));
        }
    }
    points
        .windows(2)
        .filter_map(|w| {
            let (d0, t0, _) = w[0];
            let (d1, t1, hz) = w[1];
            let secs = t1.checked_sub(t0)? as f64 / hz as f64;
            (d1 > d0 && secs > 0.0).then(|| (d1, (d1 - d0) as f64 / secs))
        })
        .collect()
}

impl Summary {
    /// Calls/s per segment, summarized: the slowest and fastest segments
    /// and the first and last quarter's rates (a collapse shows as a last
    /// quarter far below the first).
    pub fn rates(&self) -> String {
        let n = self.segments.len();
        if n < 4 {
            return String::from("calls/s per segment: too few segments");
        }
        let rate = |part: &[(u64, f64)]| part.iter().map(|s| s.1).sum::<f64>() / part.len() as f64;
        let min = self
            .segments
            .iter()
            .map(|s| s.1)
            .fold(f64::INFINITY, f64::min);
        let max = self.segments.iter().map(|s| s.1).fold(0.0, f64::max);
        let mut s = format!(
            "calls/s per segment ({n}): min {min:.0}, max {max:.0}, first quarter {:.0}, last quarter {:.0}",
            rate(&self.segments[..n / 4]),
            rate(&self.segments[n - n / 4..])
        );
        if let Some(c) = self.cost {
            let _ = write!(
                s,
                "; oracle: {} full checks {:.1} ms each, {} per-event checks {:.2} ms each, {} s waiting for its lock",
                c.checks,
                c.check_ms as f64 / c.checks.max(1) as f64,
                c.effect_checks,
                c.effect_ms as f64 / c.effect_checks.max(1) as f64,
                c.lock_wait_ms / 1000
            );
        }
        s
    }

    /// One line for reports.
    pub fn line(&self) -> String {
        format!(
            "{} calls ({} hypercalls, {} guest exits) in {:.1}s = {:.0} calls/s, {} violations, {} unexpected refusals, oracle {}",
            self.calls,
            self.hypercalls,
            self.exits,
            self.secs,
            self.calls as f64 / self.secs.max(0.001),
            self.violations,
            self.refusals,
            if self.oracle {
                "on"
            } else {
                "absent (crashes and host-side invariants only)"
            }
        )
    }
}

/// Whether the hypervisor crate has cargo feature `feature`.
fn hyp_has_feature(feature: &str) -> bool {
    let toml =
        std::fs::read_to_string(artifacts::root().join("hyp/Cargo.toml")).unwrap_or_default();
    let section = toml.split("[features]").nth(1).unwrap_or("");
    let section = section.split("\n[").next().unwrap_or("");
    section.lines().any(|l| {
        l.trim_start().starts_with(&format!("{feature} ="))
            || l.trim_start().starts_with(&format!("{feature}="))
    })
}

/// The hypervisor image for a fuzz run: `oracle` if the tree has it, plus
/// `extra`.
pub fn hypervisor(extra: &[String]) -> Result<(PathBuf, Vec<String>)> {
    let mut features: Vec<String> = Vec::new();
    if hyp_has_feature("oracle") {
        features.push("oracle".into());
    } else {
        eprintln!(
            "xtask fuzz: this tree's hypervisor has no `oracle` feature: checking crashes and host-side invariants only"
        );
    }
    for f in extra {
        if !features.contains(f) {
            features.push(f.clone());
        }
    }
    let path = if features.is_empty() {
        artifacts::hypervisor()?
    } else {
        let refs: Vec<&str> = features.iter().map(String::as_str).collect();
        artifacts::hypervisor_with_features(&refs)?
    };
    Ok((path, features))
}

/// One fuzz run's parameters.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub calls: u64,
    pub smp: u32,
    pub check_every: u64,
    /// `rampart.oracle-every=K` on the hypervisor's command line.
    pub oracle_every: Option<u64>,
    /// `rampart.mutant=<name>` on the hypervisor's command line (a build
    /// with the `mutants` feature).
    pub mutant: Option<String>,
    pub stop: Option<u64>,
    pub mem: String,
    pub timeout: Duration,
    pub echo: bool,
}

impl Plan {
    fn bootarg(&self) -> String {
        let mut s = format!(
            "testhost.fuzz=seed={},calls={},check={}",
            self.seed, self.calls, self.check_every
        );
        if let Some(i) = self.stop {
            let _ = write!(s, ",stop={i}");
        }
        s
    }
}

/// The default timeout for `calls` actions on `smp` CPUs (generous: QEMU
/// TCG on a loaded 2-core machine, where more than two vCPUs share the
/// cores: 8 000 calls on 4 vCPUs take about a minute on an idle one).
pub fn default_timeout(calls: u64, smp: u32) -> Duration {
    let share = u64::from(smp.max(2)) / 2;
    Duration::from_secs(120 + calls * share / 100)
}

/// Runs one fuzz run with the hypervisor image `hyp`; `Err` carries the
/// whole failure report.
pub fn run_once(hyp: &std::path::Path, features: &[String], plan: &Plan) -> Result<Summary> {
    let host = artifacts::testhost()?;
    let mut m = Machine::new(hyp.to_path_buf());
    m.smp = plan.smp;
    m.mem = plan.mem.clone();
    m.loaders.push((host, HOST_LOAD_ADDRESS));
    let oracle_every = plan
        .oracle_every
        .map(|k| format!(" rampart.oracle-every={k}"))
        .unwrap_or_default();
    let mutant = plan.mutant.as_ref().map(|n| format!(" {}={n}", rampart_abi::boot::MUTANT_KEY)).unwrap_or_default();
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x}{oracle_every}{mutant} -- {}",
        plan.bootarg()
    );
    let run = m.run(plan.timeout, None, plan.echo)?;
    judge(&run, features, plan)
}

/// Reads a run's console: the summary, or the failure report.
pub fn judge(run: &Run, features: &[String], plan: &Plan) -> Result<Summary> {
    let console = &run.console;
    let mut problems: Vec<String> = Vec::new();
    let violations: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("oracle: VIOLATION "))
        .collect();
    if !violations.is_empty() {
        problems.push(format!(
            "{} oracle violation line(s), first: {}",
            violations.len(),
            violations[0].trim()
        ));
    }
    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("fuzz: FAILED"))
        .collect();
    for l in &failed {
        problems.push(l.trim().to_string());
    }
    if let Some(cause) = run.cause() {
        problems.push(format!("hypervisor: {cause}"));
    }
    if console.lines().any(|l| l.starts_with("FATAL")) {
        problems.push("the test host died (FATAL line)".into());
    }
    if run.timed_out {
        problems.push(format!("hang: no end within {} s", plan.timeout.as_secs()));
    }
    let done = console
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("fuzz: done "));
    let mut summary = Summary {
        secs: run.elapsed.as_secs_f64(),
        segments: segments(console),
        cost: console.lines().rev().find_map(OracleCost::parse),
        ..Summary::default()
    };
    if let Some(p) = summary.cost.and_then(|c| c.scaling_problem()) {
        problems.push(p);
    }
    match done {
        None => problems.push("the run never printed `fuzz: done`".into()),
        Some(done) => {
            for item in done.split_whitespace() {
                let Some((k, v)) = item.split_once('=') else {
                    continue;
                };
                let n = v.parse().unwrap_or(0);
                match k {
                    "calls" => summary.calls = n,
                    "hypercalls" => summary.hypercalls = n,
                    "exits" => summary.exits = n,
                    "violations" => summary.violations = n,
                    "refusals" => summary.refusals = n,
                    "oracle" => summary.oracle = v == "yes",
                    _ => {}
                }
            }
            if summary.violations > 0 && failed.is_empty() && violations.is_empty() {
                problems.push(format!("the run reports {} violations", summary.violations));
            }
        }
    }
    if problems.is_empty() {
        // Refusals the host's model did not expect are not failures, but
        // worth reading.
        for note in console.lines().filter(|l| l.starts_with("fuzz: note")) {
            eprintln!("xtask fuzz: {note}");
        }
        return Ok(summary);
    }
    // Where it failed, for the replay.
    let (cpu, index) = failed
        .first()
        .map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .map(|v| v.trim_end_matches(':').to_string())
            };
            (
                field("cpu=").unwrap_or_else(|| "?".into()),
                field("index=").unwrap_or_else(|| "?".into()),
            )
        })
        .unwrap_or_else(|| ("?".into(), "?".into()));
    let calls: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("fuzz:   call "))
        .collect();
    let dir = artifacts::build_dir().join("fuzz");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("failure-seed{}.txt", plan.seed));
    let mut record = format!(
        "seed={}\ncalls={}\nsmp={}\ncheck={}\noracle-every={}\nfeatures={}\nmutant={}\nmem={}\ncpu={cpu}\nindex={index}\n",
        plan.seed,
        plan.calls,
        plan.smp,
        plan.check_every,
        plan.oracle_every
            .map_or_else(|| "default".into(), |k| k.to_string()),
        features.join(","),
        plan.mutant.as_deref().unwrap_or(""),
        plan.mem
    );
    for p in &problems {
        let _ = writeln!(record, "# {p}");
    }
    for c in &calls {
        let _ = writeln!(record, "# {c}");
    }
    std::fs::write(&file, &record).with_context(|| format!("writing {}", file.display()))?;
    let last: String = calls
        .iter()
        .rev()
        .take(20)
        .rev()
        .map(|c| format!("\n    {c}"))
        .collect();
    let oracle_lines: String = violations
        .iter()
        .take(5)
        .map(|c| format!("\n    {c}"))
        .collect();
    bail!(
        "fuzz failed: seed={} cpu={cpu} index={index} (hypervisor features: {})\n  {}\n  last calls:{last}{oracle_lines}\n  replay: cargo xtask fuzz --replay {}\n{}",
        plan.seed,
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(",")
        },
        problems.join("\n  "),
        file.display(),
        run.failure("fuzz run failed")
    )
}

/// A recorded failure.
fn read_replay(path: &std::path::Path) -> Result<(Plan, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let num = |k: &str| -> Result<u64> {
        get(k)
            .with_context(|| format!("{}: no `{k}=`", path.display()))?
            .parse()
            .with_context(|| format!("{}: bad `{k}=`", path.display()))
    };
    let index = get("index").and_then(|v| v.parse().ok());
    let calls = num("calls")?;
    let smp = u32::try_from(num("smp")?)
        .with_context(|| format!("{}: `smp=` too large", path.display()))?;
    let plan = Plan {
        seed: num("seed")?,
        calls,
        smp,
        check_every: num("check")?,
        oracle_every: get("oracle-every").and_then(|v| v.parse().ok()),
        mutant: get("mutant").filter(|m| !m.is_empty()),
        stop: index,
        mem: get("mem").unwrap_or_else(|| "512M".into()),
        timeout: default_timeout(calls, smp),
        echo: false,
    };
    let features = get("features")
        .unwrap_or_default()
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    Ok((plan, features))
}

/// `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> Result<()> {
    prereq::ensure(&[&prereq::QEMU])?;
    let (mut plan, mut extra) = match &args.replay {
        Some(path) => read_replay(path)?,
        None => (
            Plan {
                seed: args.seed,
                calls: args.calls,
                smp: args.smp,
                check_every: args.check_every,
                oracle_every: args.oracle_every,
                mutant: None,
                stop: args.replay_index,
                mem: args.mem.clone(),
                timeout: default_timeout(args.calls, args.smp),
                echo: false,
            },
            Vec::new(),
        ),
    };
    if let Some(f) = &args.hyp_features {
        extra.extend(f.split(',').filter(|f| !f.is_empty()).map(str::to_string));
    }
    if let Some(name) = &args.mutant {
        plan.mutant = Some(name.clone());
    }
    if plan.mutant.is_some() && !extra.iter().any(|f| f == "mutants") {
        extra.push("mutants".into());
    }
    extra.retain(|f| f != "oracle");
    if let Some(t) = args.timeout {
        plan.timeout = Duration::from_secs(t);
    }
    plan.echo = args.verbose;
    let (hyp, features) = hypervisor(&extra)?;
    println!(
        "xtask fuzz: seed={} calls={} smp={} check every {} oracle every {:?} stop={:?} hypervisor features [{}]",
        plan.seed,
        plan.calls,
        plan.smp,
        plan.check_every,
        plan.oracle_every,
        plan.stop,
        features.join(",")
    );
    let summary = run_once(&hyp, &features, &plan)?;
    println!("xtask fuzz: ok: {}", summary.line());
    println!("xtask fuzz: {}", summary.rates());
    Ok(())
}

/// The plan of a `cargo xtask test` fuzz case: the oracle checked every
/// 1 000 actions per CPU, 512 MiB, the default timeout.
fn suite_plan(smp: u32, seed: u64, calls: u64) -> Plan {
    Plan {
        seed,
        calls,
        smp,
        check_every: 1_000,
        oracle_every: None,
        mutant: None,
        stop: None,
        mem: "512M".into(),
        timeout: default_timeout(calls, smp),
        echo: false,
    }
}

/// A `cargo xtask test` case on the plain hypervisor (no `oracle`
/// feature, so host calls are not serialized under the oracle's lock and
/// really race on `smp` CPUs): crashes, hangs and the test host's own
/// invariants only.
pub fn suite_case_plain(smp: u32, seed: u64, calls: u64) -> Result<String> {
    let hyp = artifacts::hypervisor()?;
    let summary = run_once(&hyp, &[], &suite_plan(smp, seed, calls))?;
    if summary.oracle {
        bail!("the plain hypervisor answered ORACLE_CHECK: it is an oracle build");
    }
    if summary.calls < calls {
        bail!("only {} of {calls} calls ran", summary.calls);
    }
    Ok(format!("{}; {}", summary.line(), summary.rates()))
}

/// A `cargo xtask test` case: `calls` actions with `seed` on `smp` CPUs,
/// no violation.
pub fn suite_case(smp: u32, seed: u64, calls: u64) -> Result<String> {
    let (hyp, features) = hypervisor(&[])?;
    let summary = run_once(&hyp, &features, &suite_plan(smp, seed, calls))?;
    if summary.calls < calls {
        bail!("only {} of {calls} calls ran", summary.calls);
    }
    Ok(format!("{}; {}", summary.line(), summary.rates()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_give_calls_per_second() {
        let console = "fuzz: start\nfuzz: rate done=0 ticks=1000 hz=100\nnoise\nfuzz: rate done=500 ticks=2000 hz=100\nfuzz: rate done=600 ticks=3000 hz=100\n";
        let s = segments(console);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, 500);
        assert!((s[0].1 - 50.0).abs() < 1e-9);
        assert!((s[1].1 - 10.0).abs() < 1e-9);
    }

    #[test]
    fn per_event_checks_must_be_a_small_share_of_a_full_check() {
        // The collapse: VM_DESTROY compared over all of RAM
        // (run of seed 100, 30 000 calls, before the fix).
        let before = OracleCost::parse(
            "rampart: oracle: cost checks=144 check_ms=35923 effect_checks=3072 effect_ms=115572 predict_ms=418 zero_ms=7313 lock_wait_ms=184201",
        )
        .unwrap();
        assert_eq!(before.effect_checks, 3072);
        assert!(before.scaling_problem().is_some());
        // The same run after it.
        let after = OracleCost::parse(
            "rampart: oracle: cost checks=131 check_ms=33185 effect_checks=2454 effect_ms=326 predict_ms=240 zero_ms=3253 lock_wait_ms=28788",
        )
        .unwrap();
        assert!(after.scaling_problem().is_none());
        // Too little to judge.
        let short = OracleCost {
            checks: 1,
            check_ms: 10,
            effect_checks: 5,
            effect_ms: 50,
            lock_wait_ms: 0,
        };
        assert!(short.scaling_problem().is_none());
    }
}

/// Issue 14: `swap/race`: the test host's `swap-race` alone
/// (`testhost.swap-race`), on two CPUs under the oracle's build: a
/// protected memtest guest runs on one CPU while the other evicts and
/// restores the pages it uses, then `VM_DESTROY` races a running vCPU and
/// evictions on the other CPU. The check passes and the oracle, which
/// predicts every one of those calls, reports nothing.
pub fn swap_race_case() -> Result<String> {
    let mut m = crate::suite::testhost_machine(2, "512M", "max")?;
    m.kernel = crate::artifacts::hypervisor_with_features(&["oracle"])?;
    m.append.push_str(" testhost.swap-race");
    let run = m.run(std::time::Duration::from_secs(300), None, false)?;
    std::fs::write(crate::artifacts::build_dir().join("swap-race.log"), &run.console)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    if let Some(line) = run.console.lines().find(|l| l.contains("oracle: VIOLATION ")) {
        bail!(run.failure(line));
    }
    if !run.console.lines().any(|l| l.starts_with("PASS swap-race")) {
        bail!(run.failure("no `PASS swap-race`"));
    }
    let oracle = run
        .console
        .lines()
        .find(|l| l.contains("oracle: 0 violations in "))
        .ok_or_else(|| anyhow::anyhow!(run.failure("no `oracle: 0 violations` line")))?;
    let note = run.console.lines().find(|l| l.contains("memtest on another CPU")).unwrap_or("");
    Ok(format!("{}; {}", note.trim().trim_start_matches("| "), oracle.trim()))
}
