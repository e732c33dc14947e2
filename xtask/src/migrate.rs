//! Issue 14, secure migration: the QEMU cases (`docs/testing.md`).
//!
//! - `migrate/local`: one machine, the test host's `testhost.migrate=local`
//!   mode: a protected guest counting in memory is exported and imported
//!   on the same machine, with the hostile cases (flipped byte, truncated
//!   stream, another destination, the same stream twice).
//! - `migrate/two-machines`: two QEMU machines on this machine, each with
//!   Rampart and the bare-metal test host, with **different device
//!   secrets** (so different attestation identities) and the same
//!   migration secret. The stream moves through files in
//!   `build/migrate-two/` (QEMU semihosting): the destination writes its
//!   challenge and identity, the source exports its running guest into
//!   `stream.bin`, the destination refuses a copy with a flipped byte,
//!   imports the stream, runs the guest on from the next count, and refuses
//!   the same stream a second time.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::artifacts::{self, HYP_TARGET};
use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};

/// Set (to anything) to run `migrate/local` with `-icount shift=0`.
pub const ICOUNT_VAR: &str = "RAMPART_XTASK_MIGRATE_ICOUNT";

/// Each machine's timeout (the destination waits for the source).
const TIMEOUT: Duration = Duration::from_secs(420);

/// The destination's device secret: another machine than the development
/// one (public, tests only).
const DEST_DEVICE_SECRET: &str = "6d6967726174652d646573742d6465766963652d7365637265742d7631000001";

/// The lines every run of the mode must print, in order.
fn passed(run: &Run, checks: &[&str]) -> Result<()> {
    for check in checks {
        if !run.console.contains(&format!("PASS {check}\n")) {
            bail!(run.failure(&format!("no `PASS {check}`")));
        }
    }
    if !run.console.contains(" passed, 0 failed") {
        bail!(run.failure("failures"));
    }
    Ok(())
}

fn machine(hyp: std::path::PathBuf, args: &str) -> Result<Machine> {
    let mut m = Machine::new(hyp);
    m.smp = 2;
    m.mem = "512M".into();
    m.loaders.push((artifacts::testhost()?, HOST_LOAD_ADDRESS));
    m.append = format!("rampart.host={HOST_LOAD_ADDRESS:#x} -- {args}");
    Ok(m)
}

/// A note line's text (`  exported in ...`).
fn note<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.console
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or("")
}

/// `migrate/local`.
pub fn local_case() -> Result<String> {
    let mut m = machine(artifacts::hypervisor()?, "testhost.migrate=local")?;
    // The bench (docs/perf.md): with QEMU's `-icount shift=0` the virtual
    // clock advances one nanosecond per instruction, so the times the test
    // host prints are instruction counts (thousands per microsecond), the
    // same on any build machine and at any load.
    if std::env::var_os(ICOUNT_VAR).is_some() {
        m.extra.extend(["-icount".to_string(), "shift=0".to_string()]);
    }
    let run = m.run(TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    passed(
        &run,
        &[
            "migrate-source-runs",
            "migrate-bad-args-change-nothing",
            "migrate-export",
            "migrate-nothing-in-clear",
            "migrate-flipped-byte-refused",
            "migrate-truncated-never-runs",
            "migrate-retargeted-refused",
            "migrate-import",
            "migrate-carries-on",
            "migrate-replay-refused",
            "migrate-destroy-imported",
        ],
    )?;
    Ok(format!(
        "{}; {}; {}",
        note(&run, "exported in"),
        note(&run, "imported in"),
        note(&run, "destination:")
    ))
}

/// The destination machine's hypervisor: the development build with
/// another device secret (so another attestation identity) and the same
/// migration secret (also `linux-migrate/two-hosts`).
pub fn dest_hypervisor() -> Result<std::path::PathBuf> {
    let mut env = crate::attest::hypervisor_env()?;
    env.retain(|(k, _)| *k != crate::attest::DEVICE_SECRET_VAR);
    env.push((
        crate::attest::DEVICE_SECRET_VAR,
        DEST_DEVICE_SECRET.to_string(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    artifacts::image("rampart-hyp", HYP_TARGET, "rampart-migrate-dest.bin", &env)
}

/// `migrate/two-machines`.
pub fn two_machines_case() -> Result<String> {
    // The source is the development hypervisor; the destination the same
    // code built with another device secret.
    let source_hyp = artifacts::hypervisor()?;
    let dest_hyp = dest_hypervisor()?;

    let dir = artifacts::build_dir().join("migrate-two");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir_arg = dir.to_str().context("build directory is not UTF-8")?;
    if dir_arg.contains(char::is_whitespace) {
        bail!("{dir_arg} contains white space: it cannot be a boot argument");
    }
    let semihosting = [
        "-semihosting-config".to_string(),
        "enable=on,target=native".to_string(),
    ];
    let mut dest = machine(
        dest_hyp,
        &format!("testhost.migrate=in testhost.migrate-dir={dir_arg}"),
    )?;
    dest.extra.extend(semihosting.clone());
    let mut source = machine(
        source_hyp,
        &format!("testhost.migrate=out testhost.migrate-dir={dir_arg}"),
    )?;
    source.extra.extend(semihosting);

    let dest_thread = std::thread::spawn(move || dest.run(TIMEOUT, None, false));
    let source_run = source.run(TIMEOUT, None, false);
    let dest_run = dest_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the destination's thread panicked"))??;
    let source_run = source_run?;
    for (run, what) in [(&source_run, "source"), (&dest_run, "destination")] {
        if run.timed_out {
            bail!(run.failure(&format!("the {what} timed out")));
        }
    }
    passed(
        &source_run,
        &[
            "migrate-source-runs",
            "migrate-read-challenge",
            "migrate-export",
            "migrate-nothing-in-clear",
            "migrate-write-stream",
        ],
    )?;
    passed(
        &dest_run,
        &[
            "migrate-write-challenge",
            "migrate-read-stream",
            "migrate-flipped-byte-refused",
            "migrate-import",
            "migrate-carries-on",
            "migrate-replay-refused",
        ],
    )?;
    let number = |run: &Run, prefix: &str| -> Result<u64> {
        let line = run
            .console
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .context("line missing")?;
        line.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .context("no number")?
            .parse()
            .context("number")
    };
    let last = number(&source_run, "MIGRATE-OUT last count ")
        .map_err(|e| anyhow::anyhow!(source_run.failure(&e.to_string())))?;
    let first = number(&dest_run, "MIGRATE-IN first count ")
        .map_err(|e| anyhow::anyhow!(dest_run.failure(&e.to_string())))?;
    if first != last + 1 {
        bail!(dest_run.failure(&format!(
            "the guest went on at {first} on the destination; it stopped at {last} on the source"
        )));
    }
    // Two machines, two identities.
    let key = |run: &Run| {
        run.console
            .lines()
            .find(|l| l.contains("attestation key"))
            .map(str::to_owned)
    };
    if key(&source_run).is_some() && key(&source_run) == key(&dest_run) {
        bail!(
            "both machines report the same attestation key: the destination was not built with another device secret"
        );
    }
    let bytes = std::fs::metadata(dir.join("stream.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(format!(
        "stopped at {last} on the source, went on at {first} on the destination; {bytes}-byte stream; {}",
        note(&source_run, "exported in")
    ))
}

/// Issue 14 (ms): `migrate/oracle-local`: `testhost.migrate=local` under
/// the oracle's build, so every migration call's prediction and memory
/// effect (crates/spec/src/migrate.rs) meets the real ones: every check
/// passes and the oracle reports nothing. With `mutant` (a planted bug),
/// the oracle must report it instead.
pub fn oracle_local_case(mutant: Option<&str>) -> Result<String> {
    let mut m = machine(artifacts::hypervisor_with_features(&["oracle"])?, "testhost.migrate=local")?;
    if let Some(mutant) = mutant {
        crate::suite::set_mutant(&mut m, mutant)?;
    }
    let run = m.run(TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    if !run.console.contains("test build (oracle)") {
        bail!(run.failure("the hypervisor did not run its oracle"));
    }
    let violations: Vec<&str> = run.console.lines().filter(|l| l.contains("oracle: VIOLATION ")).collect();
    match (mutant, violations.first()) {
        (None, Some(first)) => bail!(run.failure(&format!("{} oracle violations, the first: {first}", violations.len()))),
        (Some(m), None) => bail!(run.failure(&format!("the oracle reported nothing about {m}"))),
        (Some(_), Some(first)) => Ok(format!("caught: {} violations, the first: {first}", violations.len())),
        (None, None) => {
            passed(
                &run,
                &[
                    "migrate-export",
                    "migrate-flipped-byte-refused",
                    "migrate-truncated-never-runs",
                    "migrate-retargeted-refused",
                    "migrate-import",
                    "migrate-carries-on",
                    "migrate-replay-refused",
                    "migrate-destroy-imported",
                ],
            )?;
            Ok("every migration check passes under the oracle, 0 violations".to_string())
        }
    }
}
