//! `cargo xtask test`: the whole suite CI runs.
//!
//! 1. `cargo test` of the hardware-free crates (unit, property, model tests).
//! 2. The hypervisor with the hostile bare-metal test host under QEMU, over a
//!    purposeful matrix of CPU counts, memory sizes and CPU models.
//! 3. Bad boot input: each must end in a clear message and a power-off.
//! 4. Debian's stock kernel as the host.
//!
//! Every QEMU run has a timeout; a failure prints the console's tail.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, attest, linux, prereq};

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo test` of the hardware-free crates.
    #[arg(long)]
    pub no_unit: bool,
    /// Skip the stock Linux host runs.
    #[arg(long)]
    pub no_linux: bool,
    /// Run only QEMU cases whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
}

/// A QEMU machine that runs Rampart with the test host. The test host's
/// command line names the secrets `vb-no-leaks` looks for
/// (`testhost.secrets=`, derived from the device secret the hypervisor was
/// built with and the attest guest's signed measurement).
pub fn testhost_machine(smp: u32, mem: &str, cpu: &str) -> Result<Machine> {
    let hyp = artifacts::hypervisor()?;
    let host = artifacts::testhost()?;
    let mut m = Machine::new(hyp);
    m.smp = smp;
    m.mem = mem.into();
    m.cpu = cpu.into();
    m.loaders.push((host, HOST_LOAD_ADDRESS));
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} -- {}",
        attest::secrets_bootarg()?
    );
    Ok(m)
}

/// After `cargo xtask run` with the test host: verifies the attest guest's
/// report on the build machine and prints the result.
pub fn after_demo(run: &Run) -> Result<()> {
    let summary = attest::verify_console(&run.console)?;
    println!("xtask: {summary}");
    Ok(())
}

/// A QEMU machine that runs Rampart with Debian's kernel as the host.
/// `host_args` is appended to the host kernel's command line.
pub fn linux_machine(smp: u32, mem: &str, cpu: &str, host_args: &str) -> Result<Machine> {
    prereq::ensure(&[&prereq::CPIO])?;
    let hyp = artifacts::hypervisor()?;
    let host = linux::prepare()?;
    let mut m = Machine::new(hyp);
    m.smp = smp;
    m.mem = mem.into();
    m.cpu = cpu.into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} -- console=ttyAMA0 earlycon panic=-1 {host_args}"
    );
    Ok(m)
}

struct Outcome {
    name: String,
    result: Result<String>,
    secs: f64,
}

/// Runs the suite.
pub fn run(args: &TestArgs) -> Result<()> {
    prereq::ensure(&[&prereq::QEMU, &prereq::DTC, &prereq::CPIO])?;
    let start = Instant::now();
    if !args.no_unit {
        // The EL2 and EL1 programs (hypervisor, test host, guests) build
        // only for their bare-metal targets.
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(artifacts::root())
            .args(["test", "--workspace", "--exclude", "rampart-hyp", "--exclude", "rampart-testhost"])
            .args(["--exclude", "rampart-guest"]);
        for (_, package, _, _) in crate::guests::GUESTS {
            cmd.args(["--exclude", package]);
        }
        let status = cmd.status().context("running cargo test")?;
        if !status.success() {
            bail!("cargo test failed");
        }
    }

    let mut outcomes = Vec::new();
    let mut case = |name: String, f: &dyn Fn() -> Result<String>| {
        if let Some(only) = &args.only
            && !name.contains(only.as_str())
        {
            return;
        }
        let t = Instant::now();
        eprintln!("test {name} ...");
        let result = f();
        let secs = t.elapsed().as_secs_f64();
        match &result {
            Ok(detail) => eprintln!("test {name} ... ok ({secs:.1}s) {detail}"),
            Err(e) => eprintln!("test {name} ... FAILED ({secs:.1}s)\n{e:#}"),
        }
        outcomes.push(Outcome { name, result, secs });
    };

    // The test host: every CPU count with the default model and memory, then
    // each other model and the large memory size once.
    let matrix: &[(u32, &str, &str)] = &[
        (1, "512M", "max"),
        (2, "512M", "max"),
        (4, "512M", "max"),
        (2, "2G", "max"),
        (2, "512M", "cortex-a57"),
        (4, "2G", "cortex-a72"),
    ];
    for &(smp, mem, cpu) in matrix {
        case(format!("testhost/smp{smp}/{mem}/{cpu}"), &|| testhost_case(smp, mem, cpu));
    }

    // A host reset with a protected VM alive leaves none of its secrets
    // for the next boot.
    case("testhost/reset-wipes".into(), &reset_case);

    // Bad boot input ends in a message and a power-off, never a hang.
    // QEMU itself refuses RAM smaller than the carve-out (it places the DT
    // after the image_size Rampart's header claims), so this is the
    // smallest machine that reaches Rampart's own check.
    case("bad-boot/ram-too-small".into(), &|| {
        let mut m = testhost_machine(1, "32M", "max")?;
        m.loaders.clear();
        expect_clean_refusal(&m, "rampart: RAM too small")
    });
    case("bad-boot/too-many-cpus".into(), &|| bad_boot(9, "512M", "rampart: too many CPUs"));
    case("bad-boot/no-host-image".into(), &|| {
        let mut m = testhost_machine(1, "512M", "max")?;
        m.append.clear();
        expect_clean_refusal(&m, "rampart: no host image")
    });

    case("bad-boot/host-image-not-an-image".into(), &|| {
        let mut m = testhost_machine(1, "512M", "max")?;
        m.append = "rampart.host=0x45000000".into();
        expect_clean_refusal(&m, "rampart: bad host image at 0x45000000: no arm64 Image magic")
    });
    case("bad-boot/unknown-option".into(), &|| {
        let mut m = testhost_machine(1, "512M", "max")?;
        m.append = format!("rampart.host={HOST_LOAD_ADDRESS:#x} rampart.bogus=1");
        expect_clean_refusal(&m, "rampart: bad command line: unknown option `rampart.bogus=1`")
    });

    if !args.no_linux {
        for smp in [1, 2, 4] {
            case(format!("linux/smp{smp}"), &|| linux_case(smp));
        }
    }
    crate::linux_vmm::cases(args, &mut case);

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    eprintln!("\nsummary ({:.0}s):", start.elapsed().as_secs_f64());
    for o in &outcomes {
        let status = if o.result.is_ok() { "ok" } else { "FAILED" };
        eprintln!("  {:<40} {status:>6} {:6.1}s", o.name, o.secs);
    }
    if !failed.is_empty() {
        bail!("{} of {} QEMU cases failed", failed.len(), outcomes.len());
    }
    Ok(())
}

const TESTHOST_TIMEOUT: Duration = Duration::from_secs(120);
const LINUX_TIMEOUT: Duration = Duration::from_secs(180);

/// The attest guest's sealing-key fingerprints from the first test-host
/// run, which every later run (another boot) must repeat.
static SEALING: std::sync::Mutex<Option<Vec<(String, String)>>> = std::sync::Mutex::new(None);

fn testhost_case(smp: u32, mem: &str, cpu: &str) -> Result<String> {
    let m = testhost_machine(smp, mem, cpu)?;
    let run = m.run(TESTHOST_TIMEOUT, None, false)?;
    let checks = check_testhost(&run, smp)?;
    let attested = attest::verify_console(&run.console).map_err(|e| anyhow::anyhow!(run.failure(&format!("{e:#}"))))?;
    let sealing = attest::parse_log(&run.console).sealing;
    if sealing.len() != attest::SEALING_LABELS.len() {
        bail!(run.failure(&format!("{} GUEST-SEALING lines, want {}", sealing.len(), attest::SEALING_LABELS.len())));
    }
    let mut first = SEALING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let across = match &*first {
        None => {
            *first = Some(sealing);
            "first boot"
        }
        Some(earlier) if *earlier == sealing => "same as the earlier boot",
        Some(earlier) => bail!(run.failure(&format!(
            "sealing keys changed across boots: fingerprints {earlier:?} then {sealing:?}"
        ))),
    };
    Ok(format!("{checks}; {attested}; sealing keys: {across}"))
}

/// `testhost.reset`: the first boot runs the attest guest, and a VM that
/// never exits on CPU 1, and resets with both alive; QEMU restarts with RAM
/// kept; the second boot scans all of its RAM for the guest's sealing keys
/// and the other secrets. Both the reset and the final power-off must go
/// through the hypervisor's wipe, which must have stopped CPU 1.
fn reset_case() -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    m.allow_reboot = true;
    m.append.push_str(" testhost.reset");
    let run = m.run(TESTHOST_TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    let boots = run.console.matches("rampart: entering host").count();
    if boots != 2 {
        bail!(run.failure(&format!("the host was entered {boots} times, want 2 (a reset, then the scan)")));
    }
    let wiped = |what: &str| {
        run.console
            .lines()
            .find(|l| l.starts_with(&format!("rampart: {what}: ")) && l.contains("zeroed twice"))
            .map(str::to_owned)
    };
    if !run.console.contains("PASS reset-no-leaks") || !run.console.contains("1 passed, 0 failed") {
        bail!(run.failure("the second boot did not pass `reset-no-leaks`"));
    }
    let reset = wiped("SYSTEM_RESET").ok_or_else(|| anyhow::anyhow!(run.failure("no wipe reported for SYSTEM_RESET")))?;
    // The VM spinning on CPU 1 must be stopped, by the kick or at the
    // latest by the first pass (its stage 2 zeroed, its TLB entries gone).
    if !reset.contains("(after the first pass: 1 parked, 0 busy)") {
        bail!(run.failure(&format!("the CPU running the spinning VM was not stopped: {reset}")));
    }
    wiped("SYSTEM_OFF").ok_or_else(|| anyhow::anyhow!(run.failure("no wipe reported for SYSTEM_OFF")))?;
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    Ok(reset.trim_start_matches("rampart: ").to_owned())
}

/// Checks a test-host run: the boot log, every check passed, clean power-off.
fn check_testhost(run: &Run, smp: u32) -> Result<String> {
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    if !run.console.contains("rampart: entering host") {
        bail!(run.failure("the hypervisor did not reach the host"));
    }
    let summary = run
        .console
        .lines()
        .rev()
        .find_map(parse_summary)
        .ok_or_else(|| anyhow::anyhow!(run.failure("no `N passed, N failed` line")))?;
    let failed: Vec<&str> = run.console.lines().filter(|l| l.starts_with("FAIL")).collect();
    if summary.1 != 0 || !failed.is_empty() {
        bail!(run.failure(&format!("{} checks failed:\n  {}", summary.1, failed.join("\n  "))));
    }
    if summary.0 == 0 {
        bail!(run.failure("no checks ran"));
    }
    let cpus = format!("rampart: {smp} CPUs");
    if !run.console.contains(&cpus) {
        bail!(run.failure(&format!("boot log lacks `{cpus}`")));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    Ok(format!("{} checks passed", summary.0))
}

/// Parses `N passed, M failed`.
fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.trim().split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

fn bad_boot(smp: u32, mem: &str, expect: &str) -> Result<String> {
    let m = testhost_machine(smp, mem, "max")?;
    expect_clean_refusal(&m, expect)
}

/// The hypervisor must print `expect`, never enter the host, and power off.
fn expect_clean_refusal(m: &Machine, expect: &str) -> Result<String> {
    let run = m.run(Duration::from_secs(60), None, false)?;
    if run.timed_out {
        bail!(run.failure("hung instead of powering off"));
    }
    if !run.console.contains(expect) {
        bail!(run.failure(&format!("expected `{expect}` on the console")));
    }
    if run.console.contains("rampart: entering host") {
        bail!(run.failure("entered the host despite bad boot input"));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    Ok(String::new())
}

/// Boots Debian's kernel under Rampart: every CPU online, the carve-out
/// reserved, and a `/dev/mem` read of it dies with SIGBUS while the kernel
/// keeps running.
fn linux_case(smp: u32) -> Result<String> {
    let m = linux_machine(smp, "1G", "max", linux::DEVMEM_FLAG)?;
    let run = m.run(LINUX_TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    let carveout = parse_carveout(&run.console)
        .ok_or_else(|| anyhow::anyhow!(run.failure("the boot log does not name the carve-out")))?;
    let report = linux::parse_report(&run.console);
    if !report.started {
        bail!(run.failure("the host never reached /init"));
    }
    if report.cpus_online != Some(smp) {
        bail!(run.failure(&format!("{:?} CPUs online, want {smp}", report.cpus_online)));
    }
    let reserved = report.unmapped_reserved();
    if !reserved.contains(&(carveout.0, carveout.1 - 1)) {
        bail!(run.failure(&format!(
            "the carve-out {:#x}-{:#x} is not a reserved range of /proc/iomem: {reserved:x?}",
            carveout.0,
            carveout.1 - 1
        )));
    }
    if report.devmem.as_deref() != Some("SIGBUS") {
        bail!(run.failure(&format!("reading the carve-out through /dev/mem gave {:?}, want SIGBUS", report.devmem)));
    }
    if !report.alive || !report.done {
        bail!(run.failure("the host did not keep running after the SIGBUS"));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    let at = run.time_of(linux::INIT_MARKER).map_or(0.0, |t| t.as_secs_f64());
    Ok(format!("{smp} CPUs online, carve-out reserved, devmem SIGBUS, /init at {at:.1}s"))
}

/// The carve-out `[start, end)` from the hypervisor's boot log line
/// `rampart: carve-out [0x40200000, 0x41200000): ...`.
fn parse_carveout(console: &str) -> Option<(u64, u64)> {
    let line = console.lines().find(|l| l.starts_with("rampart: carve-out ["))?;
    let inner = line.split_once('[')?.1.split_once(')')?.0;
    let (start, end) = inner.split_once(", ")?;
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    Some((hex(start)?, hex(end)?))
}

#[cfg(test)]
mod tests {
    use super::parse_summary;

    #[test]
    fn parses_the_carveout_line() {
        let log = "x\nrampart: carve-out [0x40200000, 0x41200000): 16 MiB, 3.12% of RAM\n";
        assert_eq!(super::parse_carveout(log), Some((0x4020_0000, 0x4120_0000)));
        assert_eq!(super::parse_carveout("rampart: carve-out"), None);
    }

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(parse_summary("12 passed, 0 failed"), Some((12, 0)));
        assert_eq!(parse_summary("  3 passed, 2 failed\r"), Some((3, 2)));
        assert_eq!(parse_summary("passed, failed"), None);
        assert_eq!(parse_summary("PASS psci"), None);
    }
}
