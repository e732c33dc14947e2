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
    /// `mutant-reclaim-vm-meta`); `oracle` is always added when the
    /// hypervisor has it.
    #[arg(long)]
    pub hyp_features: Option<String>,
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
}

impl Summary {
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
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x}{oracle_every} -- {}",
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
        ..Summary::default()
    };
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
        "seed={}\ncalls={}\nsmp={}\ncheck={}\noracle-every={}\nfeatures={}\nmem={}\ncpu={cpu}\nindex={index}\n",
        plan.seed,
        plan.calls,
        plan.smp,
        plan.check_every,
        plan.oracle_every
            .map_or_else(|| "default".into(), |k| k.to_string()),
        features.join(","),
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
    Ok(summary.line())
}

/// A `cargo xtask test` case: `calls` actions with `seed` on `smp` CPUs,
/// no violation.
pub fn suite_case(smp: u32, seed: u64, calls: u64) -> Result<String> {
    let (hyp, features) = hypervisor(&[])?;
    let summary = run_once(&hyp, &features, &suite_plan(smp, seed, calls))?;
    if summary.calls < calls {
        bail!("only {} of {calls} calls ran", summary.calls);
    }
    Ok(summary.line())
}
