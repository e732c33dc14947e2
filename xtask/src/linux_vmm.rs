//! `rampart-vmm` under the stock Linux host: Debian's unmodified arm64
//! kernel runs under Rampart with a guest pool (`rampart.pool=`), and the
//! user-space VMM (`host/vmm`, a static musl binary) launches the signed
//! test guests through the control pages (`docs/abi.md`).
//!
//! - [`demo_machine`]: `cargo xtask run --host linux` — `/init` runs the
//!   `hello` and `attest` bundles and prints the VMM's statistics
//!   (`linux_vmm/demo.sh`); [`after_demo`] verifies the attest guest's
//!   report on the build machine.
//! - [`cases`]: `cargo xtask test` — one boot per host CPU count runs every
//!   check of `linux_vmm/checks.sh`, which prints
//!   `RAMPART-VMM-TEST: <check> PASS|FAIL <detail>`; each check is its own
//!   case, sharing the boot.
//! - [`bench`]: `cargo xtask bench vmm` — exit rate and launch latency from
//!   the VMM's statistics.
//!
//! The initramfs holds `/bin/rampart-vmm` (profile `vmm`, stripped) and
//! `/guests/<name>.bundle`, the bundles `guests::guests()` signs with the
//! development key (`keys/`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, linux, prereq};

/// The guest pool the hypervisor reserves, in MiB (`rampart.pool=`).
pub const POOL_MIB: u32 = 64;
/// The target `rampart-vmm` is built for.
pub const VMM_TARGET: &str = "aarch64-unknown-linux-musl";
/// The prefix of the checks' result lines.
pub const TEST_PREFIX: &str = "RAMPART-VMM-TEST: ";

/// Guests packed into the initramfs (those whose bundle exists).
const BUNDLES: [&str; 7] = ["hello", "memtest", "smp", "attest", "spin", "hello.untrusted", "swap"];

const CHECKS_SCRIPT: &str = include_str!("linux_vmm/checks.sh");
const KERNEL_PAGE_SCRIPT: &str = include_str!("linux_vmm/kernel_page.sh");
const DEMO_SCRIPT: &str = include_str!("linux_vmm/demo.sh");
const FUZZ_SCRIPT: &str = include_str!("linux_vmm/fuzz.sh");

/// `/bin/rampart-fuzz` in the initramfs: the fuzzer is a hidden
/// subcommand of the same static binary (it shares its control-page code).
const FUZZ_WRAPPER: &str = "#!/bin/sh\nexec /bin/rampart-vmm fuzz \"$@\"\n";

/// One boot's time limit (a boot runs several checks).
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

static VMM: OnceLock<PathBuf> = OnceLock::new();

/// Builds `rampart-vmm` for [`VMM_TARGET`] (profile `vmm`) and strips it
/// into `build/linux/rampart-vmm` (once per xtask run).
pub fn vmm_binary() -> Result<PathBuf> {
    if let Some(path) = VMM.get() {
        return Ok(path.clone());
    }
    let out = musl_binary("rampart-vmm")?;
    Ok(VMM.get_or_init(|| out).clone())
}

/// Builds `package` (whose binary has the package's name) for
/// [`VMM_TARGET`] with the `vmm` profile (release with LTO: Cargo.toml),
/// a static musl binary for the Linux host, and strips it into
/// `build/linux/<package>` (`rampart-vmm`, and `rampart-peer` for `bench
/// peer`).
pub fn musl_binary(package: &str) -> Result<PathBuf> {
    let root = artifacts::root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "vmm",
            "--package",
            package,
            "--target",
            VMM_TARGET,
        ])
        .status()
        .with_context(|| format!("building {package}"))?;
    if !status.success() {
        bail!("building {package} for {VMM_TARGET} failed");
    }
    let elf = root
        .join("target")
        .join(VMM_TARGET)
        .join("vmm")
        .join(package);
    let dir = artifacts::build_dir().join("linux");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(package);
    artifacts::strip_to(&elf, &out)?;
    Ok(out)
}

/// The signed bundles to pack: `(file, name)`. Builds and signs the test
/// guests first.
fn bundles() -> Result<Vec<(PathBuf, &'static str)>> {
    crate::guests::guests()?;
    let dir = artifacts::build_dir().join("guests");
    let found: Vec<_> = BUNDLES
        .into_iter()
        .map(|name| (dir.join(format!("{name}.bundle")), name))
        .filter(|(path, _)| path.is_file())
        .collect();
    for need in ["hello", "memtest", "smp"] {
        if !found.iter().any(|(_, name)| *name == need) {
            bail!("no signed bundle build/guests/{need}.bundle (guests::guests() signs them)");
        }
    }
    Ok(found)
}

/// Rampart with a guest pool and Debian's kernel, whose `/init` sources
/// `script` with `/bin/rampart-vmm` and `/guests/*.bundle` in place.
pub fn machine(smp: u32, mem: &str, cpu: &str, script: &str) -> Result<Machine> {
    machine_with(artifacts::hypervisor()?, smp, mem, cpu, script)
}

/// [`machine`] with the hypervisor image `hyp` (a test build).
pub fn machine_with(hyp: PathBuf, smp: u32, mem: &str, cpu: &str, script: &str) -> Result<Machine> {
    prereq::ensure(&[&prereq::CPIO])?;
    let vmm = vmm_binary()?;
    let wrapper = fuzz_wrapper()?;
    let bundles = bundles()?;
    let paths: Vec<String> = bundles
        .iter()
        .map(|(_, name)| format!("guests/{name}.bundle"))
        .collect();
    let mut files: Vec<(PathBuf, &str)> = vec![(vmm, "bin/rampart-vmm"), (wrapper, "bin/rampart-fuzz")];
    // `cargo xtask bench vmm` with RAMPART_BENCH_VMM_BEFORE=<a rampart-vmm
    // binary>: that one too, run interleaved with this tree's (issue 16's
    // before/after figures from one boot).
    if let Some(before) = std::env::var_os(BENCH_BEFORE_ENV) {
        files.push((PathBuf::from(before), "bin/rampart-vmm-before"));
    }
    files.extend(
        bundles
            .iter()
            .zip(&paths)
            .map(|((src, _), path)| (src.clone(), path.as_str())),
    );
    let host = linux::prepare_with(&files, script)?;
    let mut m = Machine::new(hyp);
    m.smp = smp;
    m.mem = mem.into();
    m.cpu = cpu.into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={POOL_MIB} -- console=ttyAMA0 earlycon panic=-1 {}",
        linux::BRIEF_FLAG
    );
    // The host's PCI devices sit behind the SMMU Rampart owns (issue 10).
    linux::add_pci_devices(&mut m)?;
    Ok(m)
}

/// The machine of `cargo xtask run --host linux`.
pub fn demo_machine(smp: u32, mem: &str, cpu: &str) -> Result<Machine> {
    machine(smp, mem, cpu, DEMO_SCRIPT)
}

/// Writes [`FUZZ_WRAPPER`] to `build/linux/rampart-fuzz` (mode 0755).
fn fuzz_wrapper() -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = artifacts::build_dir().join("linux");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("rampart-fuzz");
    std::fs::write(&path, FUZZ_WRAPPER).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Environment variable naming a second `rampart-vmm` binary for `cargo
/// xtask bench vmm` to run interleaved with this tree's (its runs are
/// `<guest>.before` in the table).
pub const BENCH_BEFORE_ENV: &str = "RAMPART_BENCH_VMM_BEFORE";

/// `linux-vmm/smp4/fuzz`: worker processes of `rampart-fuzz`.
pub const FUZZ_PROCS: u32 = 4;
/// Requests per worker: 4 x 5000 take about 20 s under QEMU.
pub const FUZZ_CALLS: u64 = 5000;
/// Requests per worker when the hypervisor has the oracle, which checks
/// every call and walks every table each 64 events (about 7 times slower:
/// 4 x 2500 take about 70 s).
pub const FUZZ_CALLS_ORACLE: u64 = 2500;
/// The case's seed (fixed, so a failure reruns the same requests).
pub const FUZZ_SEED: u64 = 0x15;
/// The case's time limit.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(240);

/// Whether `hyp/Cargo.toml` declares cargo feature `name`.
fn hyp_has_feature(name: &str) -> bool {
    let toml = std::fs::read_to_string(artifacts::root().join("hyp/Cargo.toml")).unwrap_or_default();
    let mut in_features = false;
    toml.lines().map(str::trim).any(|l| {
        if l.starts_with('[') {
            in_features = l == "[features]";
            return false;
        }
        in_features && l.split('=').next().map(str::trim) == Some(name)
    })
}

/// `linux-vmm/smp4/fuzz`: Debian's kernel on 4 CPUs runs the `hello` and
/// `smp` guests with `rampart-vmm` in a loop while `rampart-fuzz` drives
/// the control pages from [`FUZZ_PROCS`] processes (`linux_vmm/fuzz.sh`).
/// The hypervisor is built with the `oracle` feature when `hyp` has one
/// (then every invariant violation fails the case); otherwise the case
/// checks for crashes and wrong answers only, and says so.
pub fn fuzz_case() -> Result<String> {
    let oracle = hyp_has_feature("oracle");
    let hyp = if oracle { artifacts::hypervisor_with_features(&["oracle"])? } else { artifacts::hypervisor()? };
    // Another seed or length for a rerun: RAMPART_LINUX_FUZZ_SEED / _CALLS.
    let env_u64 = |name: &str, default: u64| -> Result<u64> {
        match std::env::var(name) {
            Ok(v) => {
                let r = v.strip_prefix("0x").map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16));
                r.with_context(|| format!("{name}={v:?} is not a number"))
            }
            Err(_) => Ok(default),
        }
    };
    let seed = env_u64("RAMPART_LINUX_FUZZ_SEED", FUZZ_SEED)?;
    let calls = env_u64("RAMPART_LINUX_FUZZ_CALLS", if oracle { FUZZ_CALLS_ORACLE } else { FUZZ_CALLS })?;
    let script = format!("PROCS={FUZZ_PROCS}\nCALLS={calls}\nSEED={seed:#x}\n{FUZZ_SCRIPT}");
    let m = machine_with(hyp, 4, "1G", "max", &script)?;
    let run = m.run(FUZZ_TIMEOUT, None, false)?;
    let log = artifacts::build_dir().join("linux").join("vmm-fuzz-smp4.log");
    let _ = std::fs::write(&log, &run.console);
    if run.timed_out {
        bail!(run.failure(&format!("timed out after {FUZZ_TIMEOUT:?} (whole console: {})", log.display())));
    }
    let summary = check_fuzz(&run.console, FUZZ_PROCS, calls, oracle)
        .map_err(|e| anyhow!(run.failure(&format!("{e}\n  whole console: {}", log.display()))))?;
    Ok(if oracle {
        summary
    } else {
        format!("{summary}; the hypervisor has no `oracle` feature: crash and answer checks only")
    })
}

/// Reads `linux-vmm/smp4/fuzz`'s console: the guests all passed, the
/// fuzzer made its `procs * calls` requests with nothing unexpected, the
/// kernel lived to the end, and the hypervisor printed no panic, fatal
/// exception or (with `oracle`) invariant violation. Returns a summary.
pub fn check_fuzz(console: &str, procs: u32, calls: u64, oracle: bool) -> Result<String, String> {
    let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
    let bad_hyp = ["panic", "unexpected exception", "stack overflow", "fatal", "cannot take the abort"];
    if let Some(l) = lines.iter().find(|l| l.contains("oracle: VIOLATION")) {
        return Err(format!("the oracle found an invariant violation: {l}"));
    }
    if let Some(l) = lines.iter().find(|l| l.contains("rampart: ") && bad_hyp.iter().any(|b| l.contains(b))) {
        return Err(format!("the hypervisor reported: {l}"));
    }
    let bad_kernel = ["Kernel panic", "Internal error:", "Unable to handle kernel", "BUG: ", "Oops"];
    if let Some(l) = lines.iter().find(|l| bad_kernel.iter().any(|b| l.contains(b))) {
        return Err(format!("the kernel reported: {l}"));
    }
    let unexpected: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("rampart-fuzz: UNEXPECTED") || l.contains("rampart-fuzz:   #"))
        .collect();
    if !unexpected.is_empty() {
        return Err(format!("rampart-fuzz found unexpected outcomes:\n    {}", unexpected.join("\n    ")));
    }
    let guest_lines: Vec<&str> = lines.iter().filter_map(|l| l.split_once("RAMPART-FUZZ: guest ").map(|(_, r)| r)).collect();
    if let Some(l) = guest_lines.iter().find(|l| l.contains(" FAIL ")) {
        let log: Vec<&str> = lines.iter().filter(|l| l.contains("RAMPART-FUZZ-LOG: ")).copied().collect();
        return Err(format!("a guest beside the fuzzer failed: {l}\n    {}", log.join("\n    ")));
    }
    let passed = |g: &str| guest_lines.iter().filter(|l| l.starts_with(&format!("{g} ")) && l.contains(" PASS ")).count();
    let (hello, smp) = (passed("hello"), passed("smp"));
    if hello == 0 || smp == 0 {
        return Err(format!("guests beside the fuzzer: hello passed {hello} times, smp {smp} times (want at least once each)"));
    }
    let done = lines
        .iter()
        .find_map(|l| l.split_once("rampart-fuzz: done ").map(|(_, r)| r))
        .ok_or("rampart-fuzz never finished (no `rampart-fuzz: done` line)")?;
    let made: u64 = done
        .split_whitespace()
        .find_map(|w| w.strip_prefix("calls="))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no calls= in `{done}`"))?;
    if made != u64::from(procs) * calls {
        return Err(format!("rampart-fuzz made {made} requests, want {}: {done}", u64::from(procs) * calls));
    }
    if !done.contains("unexpected=0") {
        return Err(format!("rampart-fuzz: {done}"));
    }
    if oracle && !done.contains("oracle: 0 violations") {
        return Err(format!("the oracle did not report 0 violations: {done}"));
    }
    if !lines.iter().any(|l| l.contains("RAMPART-FUZZ: exit 0")) {
        return Err("rampart-fuzz did not exit 0".into());
    }
    if !lines.iter().any(|l| l.contains("RAMPART-FUZZ: alive")) || !lines.iter().any(|l| l.contains("RAMPART-INIT: done")) {
        return Err("the kernel did not live to the end of the script".into());
    }
    Ok(format!("hello passed {hello}x and smp {smp}x beside rampart-fuzz: {done}"))
}

/// After the demo: the guests' results, and the attest guest's report
/// verified on the build machine.
pub fn after_demo(run: &Run) -> Result<()> {
    let statuses: Vec<&str> = run
        .console
        .lines()
        .filter_map(|l| {
            l.split_once("RAMPART-INIT: rampart-vmm run ")
                .map(|(_, s)| s)
        })
        .collect();
    if statuses.is_empty() {
        bail!(run.failure("/init ran no rampart-vmm"));
    }
    for s in &statuses {
        println!("xtask: rampart-vmm run {s}");
    }
    if statuses.iter().any(|s| !s.ends_with("exit status 0")) {
        bail!("a guest did not exit 0");
    }
    println!("xtask: {}", linux::check_pci_devices(&run.console)?);
    if run.console.contains("[attest] GUEST-REPORT ") {
        println!("xtask: {}", verify_attest_report(&run.console)?);
    }
    Ok(())
}

/// Checks the attest guest's `GUEST-REPORT` against the development
/// device secret's attestation key, the attest bundle's signed measurement
/// and the nonce the guest printed.
fn verify_attest_report(console: &str) -> Result<String> {
    let log = crate::attest::parse_log(console);
    let report = log.report.context("no GUEST-REPORT line")?;
    let nonce = log.nonce.context("no GUEST-NONCE line")?;
    let report = crate::attest::parse_hex(&report).context("GUEST-REPORT")?;
    let nonce = crate::attest::parse_hex(&nonce).context("GUEST-NONCE")?;
    let key = crate::attest::attestation_public_key()?;
    let measurement = crate::guests::measurement("attest")?;
    let verified = rampart_attest::verify_report(&report, &key, Some(&measurement.0), &nonce)
        .map_err(|e| anyhow!("the attest guest's report does not verify: {e}"))?;
    Ok(format!(
        "the attest guest's report ({} bytes) verifies: attestation key {}, measurement {}, protected {}",
        report.len(),
        crate::attest::hex(&key),
        crate::attest::hex(&verified.measurement.0),
        verified.flags.protected
    ))
}

// ---------------------------------------------------------------------------
// Tests.

/// Checks run with each host CPU count.
const PLAN: [(u32, &[&str]); 2] = [
    (1, &["guest-hello", "guest-smp", "guest-memtest", "host-tick"]),
    (
        4,
        &[
            "guest-hello",
            "guest-smp",
            "guest-memtest",
            "four-vms",
            "devmem-sigbus",
            "metadata-attack",
            "kill9-reclaim",
            "kill9-running",
            "tampered-bundle",
            "untrusted-signer",
            "cli",
        ],
    ),
];

/// `cargo xtask test`'s `case`: registers a named case.
pub type CaseFn<'a> = dyn FnMut(String, &dyn Fn() -> Result<String>) + 'a;

/// A boot's outcome, shared by its checks.
type Boot = Arc<Result<Run, String>>;

static BOOTS: Mutex<BTreeMap<u32, Boot>> = Mutex::new(BTreeMap::new());

/// The case name of `check` with `smp` host CPUs.
fn case_name(smp: u32, check: &str) -> String {
    format!("linux-vmm/smp{smp}/{check}")
}

/// Registers the rampart-vmm cases with `cargo xtask test`'s `case`
/// (skipped with `--no-linux`; `--only` picks checks, and a boot runs only
/// the checks picked).
pub fn cases(args: &crate::suite::TestArgs, case: &mut CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    let picked = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    for (smp, checks) in PLAN {
        let chosen: Vec<&str> = checks
            .iter()
            .copied()
            .filter(|c| picked(&case_name(smp, c)))
            .collect();
        if chosen.is_empty() && !picked(&case_name(smp, "power-off")) && !picked(&case_name(smp, "pci-disk")) {
            continue;
        }
        for check in &chosen {
            let chosen = chosen.clone();
            case(case_name(smp, check), &move || {
                check_case(smp, &chosen, check)
            });
        }
        case(case_name(smp, "power-off"), &|| {
            let boot = boot(smp, &chosen)?;
            let run = boot.as_ref().as_ref().map_err(|e| anyhow!("{e}"))?;
            power_off_case(run, smp)
        });
        // The same boot: /init mounted the virtio-blk-pci disk behind the
        // SMMU before rampart-vmm ran its protected guests.
        case(case_name(smp, "pci-disk"), &|| {
            let boot = boot(smp, &chosen)?;
            let run = boot.as_ref().as_ref().map_err(|e| anyhow!("{e}"))?;
            linux::check_pci_devices(&run.console).map_err(|e| anyhow!(run.failure(&format!("{e:#}"))))
        });
    }
    for target in ["uptime_proc_show", "vectors"] {
        case(format!("linux-vmm/kernel-page-{target}"), &|| kernel_page_case(target));
    }
    case("linux-vmm/smp4/fuzz".to_string(), &fuzz_case);
}

/// `linux-vmm/kernel-page-<target>`: user space donates to a VM the page
/// of the kernel's `target` symbol (`linux_vmm/kernel_page.sh`). The kernel
/// must report the abort on the console (an oops naming a synchronous
/// external abort) or, when it cannot even take it (its vectors are gone),
/// the hypervisor must say so and reset; either way the machine must go
/// down, never hang without a word.
fn kernel_page_case(target: &str) -> Result<String> {
    let script = format!("TARGET={target}\n{KERNEL_PAGE_SCRIPT}");
    let mut m = machine(2, "1G", "max", &script)?;
    // A kernel that lost its own code oopses, kills the task and may then
    // stall on what that task held; with `oops=panic` it reboots instead
    // (`panic=-1`), so the run ends either way.
    m.append.push_str(" oops=panic");
    let run = m.run(BOOT_TIMEOUT, None, false)?;
    let log = artifacts::build_dir().join("linux").join(format!("kernel-page-{target}.log"));
    let _ = std::fs::write(&log, &run.console);
    if !run.console.contains("kernel-page donating the page of") {
        bail!(run.failure("the script did not get to donate the kernel's page"));
    }
    if run.timed_out {
        bail!(run.failure("the host hung after losing its page (timed out)"));
    }
    if run.console.contains("kernel-page FAIL") {
        bail!(run.failure("the script could not find the kernel's page"));
    }
    let reported = ["synchronous external abort", "rampart: host CPU"]
        .into_iter()
        .find(|needle| run.console.contains(needle))
        .ok_or_else(|| anyhow!(run.failure("neither the kernel nor the hypervisor reported the abort")))?;
    let line = run.console.lines().find(|l| l.contains(reported)).unwrap_or_default().trim();
    Ok(format!("reported: {line}"))
}

/// Boots once per CPU count with `checks` (later calls reuse the run).
fn boot(smp: u32, checks: &[&str]) -> Result<Boot> {
    let mut boots = BOOTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(b) = boots.get(&smp) {
        return Ok(b.clone());
    }
    let script = format!(
        "CHECKS=\"{}\"\nPHASE=smp{smp}\n{CHECKS_SCRIPT}",
        checks.join(" ")
    );
    let m = machine(smp, "1G", "max", &script)?;
    let run = m
        .run(BOOT_TIMEOUT, None, false)
        .map_err(|e| format!("{e:#}"));
    if let Ok(run) = &run {
        // The whole console, for failures whose tail is not enough.
        let log = artifacts::build_dir()
            .join("linux")
            .join(format!("vmm-checks-smp{smp}.log"));
        let _ = std::fs::write(&log, &run.console);
    }
    let b = Arc::new(run);
    boots.insert(smp, b.clone());
    Ok(b)
}

fn check_case(smp: u32, checks: &[&str], check: &str) -> Result<String> {
    let boot = boot(smp, checks)?;
    let run = boot.as_ref().as_ref().map_err(|e| anyhow!("{e}"))?;
    let results = parse_checks(&run.console);
    match results.get(check) {
        Some(r) if r.passed => Ok(r.detail.clone()),
        Some(r) => bail!(run.failure(&format!(
            "{check}: {}\n  its log (the whole console: build/linux/vmm-checks-smp{smp}.log):\n{}",
            r.detail,
            indent_tail(&r.log, 40)
        ))),
        None if run.timed_out => bail!(run.failure(&format!("{check}: no result, timed out"))),
        None => bail!(run.failure(&format!("{check}: no result on the console"))),
    }
}

/// The boot as a whole: every check reported, `/init` finished, clean
/// power-off.
fn power_off_case(run: &Run, smp: u32) -> Result<String> {
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    let report = linux::parse_report(&run.console);
    if report.cpus_online != Some(smp) {
        bail!(run.failure(&format!("{:?} CPUs online, want {smp}", report.cpus_online)));
    }
    if !run
        .console
        .contains(&format!("{TEST_PREFIX}finished smp{smp}"))
        || !report.done
    {
        bail!(run.failure("/init did not finish the checks"));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    let at = run
        .time_of(linux::INIT_MARKER)
        .map_or(0.0, |t| t.as_secs_f64());
    Ok(format!(
        "{smp} CPUs, /init at {at:.1}s, checks done and powered off at {:.1}s",
        run.elapsed.as_secs_f64()
    ))
}

/// One check's result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// PASS.
    pub passed: bool,
    /// What the result line says after PASS/FAIL.
    pub detail: String,
    /// Console lines from the check's `begin` to its result.
    pub log: Vec<String>,
}

/// Parses the checks' lines (`RAMPART-VMM-TEST: begin <name>`,
/// `RAMPART-VMM-TEST: <name> PASS|FAIL <detail>`).
pub fn parse_checks(console: &str) -> BTreeMap<String, CheckResult> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in console.lines() {
        let Some(at) = line.find(TEST_PREFIX) else {
            if let Some((_, log)) = &mut current {
                log.push(line.to_string());
            }
            continue;
        };
        let msg = line[at + TEST_PREFIX.len()..].trim();
        if let Some(name) = msg.strip_prefix("begin ") {
            current = Some((name.trim().to_string(), Vec::new()));
            continue;
        }
        let mut words = msg.splitn(3, ' ');
        let (Some(name), Some(verdict)) = (words.next(), words.next()) else {
            continue;
        };
        if verdict != "PASS" && verdict != "FAIL" {
            continue;
        }
        let log = match current.take() {
            Some((n, log)) if n == name => log,
            other => {
                current = other;
                Vec::new()
            }
        };
        out.insert(
            name.to_string(),
            CheckResult {
                passed: verdict == "PASS",
                detail: words.next().unwrap_or("").trim().to_string(),
                log,
            },
        );
    }
    out
}

fn indent_tail(lines: &[String], n: usize) -> String {
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("    > {l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------
// Benchmarks.

/// `cargo xtask bench vmm`: boots once and runs `hello` and `memtest`
/// `rounds` times each; reports the VMM's exit rates and launch times.
pub fn bench(smp: u32, mem: &str, rounds: u32, timeout: Duration) -> Result<()> {
    let script = format!("CHECKS=bench\nPHASE=bench\nROUNDS={rounds}\n{CHECKS_SCRIPT}");
    let m = machine(smp, mem, "max", &script)?;
    eprintln!("xtask: {}", m.command_line());
    let run = m.run(timeout, None, false)?;
    let results = parse_checks(&run.console);
    match results.get("bench") {
        Some(r) if r.passed => {}
        Some(r) => bail!(run.failure(&format!("bench: {}", r.detail))),
        None => bail!(run.failure("bench: no result")),
    }
    let samples = parse_bench(&run.console);
    println!("{}", bench_table(&samples, smp, mem, rounds));
    // One launch, traced (`RAMPART_VMM_LAUNCH_TRACE`).
    let trace: Vec<&str> = run
        .console
        .lines()
        .filter_map(|l| l.split_once("[trace] ").map(|(_, t)| t.trim_end()))
        .collect();
    if !trace.is_empty() {
        println!("one traced launch of hello (ms after main started):");
        for line in trace {
            println!("  {line}");
        }
    }
    let log = artifacts::build_dir().join("bench-vmm.log");
    std::fs::write(&log, &run.console).with_context(|| format!("writing {}", log.display()))?;
    println!("console: {}", log.display());
    Ok(())
}

/// One VMM run's figures, from its `[name] stats: ...` lines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BenchSample {
    /// The guest (`hello`, `memtest`).
    pub guest: String,
    /// Wall time from the VM's first run to its end, ms.
    pub wall_ms: f64,
    /// Exits in total and MMIO exits.
    pub exits: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// Launch milestones after the VMM started, ms.
    pub vm_ready_ms: f64,
    /// The first `VCPU_RUN` returned.
    pub first_exit_ms: f64,
    /// The guest's first console byte.
    pub first_output_ms: f64,
    /// Trapped control-page accesses per host call (0: not reported).
    pub trapped_per_call: f64,
}

/// Parses the bench runs (`[bench<r>-<guest>] stats: ...`).
pub fn parse_bench(console: &str) -> Vec<BenchSample> {
    let mut out: Vec<(String, BenchSample)> = Vec::new();
    for line in console.lines() {
        let Some((head, rest)) = line.split_once("] stats: ") else {
            continue;
        };
        let Some(name) = head.rsplit('[').next().filter(|n| n.starts_with("bench")) else {
            continue;
        };
        if out.last().is_none_or(|(n, _)| n != name) {
            let guest = name.split_once('-').map_or(name, |(_, g)| g).to_string();
            out.push((
                name.to_string(),
                BenchSample {
                    guest,
                    ..BenchSample::default()
                },
            ));
        }
        let s = &mut out.last_mut().expect("pushed").1;
        let ms = |t: &str| -> f64 {
            t.trim()
                .trim_end_matches(" ms")
                .trim_end_matches(" s")
                .parse()
                .unwrap_or(0.0)
        };
        if let Some(v) = rest.strip_prefix("wall time: ") {
            s.wall_ms = ms(v) * 1000.0;
        } else if let Some(v) = rest.strip_prefix("exits total: ") {
            s.exits = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = rest.strip_prefix("exits EXIT_MMIO: ") {
            s.mmio = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = rest.strip_prefix("host calls: ") {
            // "N through the control pages, M trapped accesses (X per call)"
            s.trapped_per_call = v
                .split_once('(')
                .and_then(|(_, x)| x.split_whitespace().next())
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(v) = rest.strip_prefix("launch: ") {
            // "VM ready X ms, first exit Y ms, first console output Z ms (...)"
            for part in v.split(", ") {
                let value = |p: &str| ms(p.split(" ms").next().unwrap_or(""));
                if let Some(x) = part.strip_prefix("VM ready ") {
                    s.vm_ready_ms = value(x);
                } else if let Some(x) = part.strip_prefix("first exit ") {
                    s.first_exit_ms = value(x);
                } else if let Some(x) = part.strip_prefix("first console output ") {
                    s.first_output_ms = value(x);
                }
            }
        }
    }
    out.into_iter().map(|(_, s)| s).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The figures as docs/perf.md shows them.
pub fn bench_table(samples: &[BenchSample], smp: u32, mem: &str, rounds: u32) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rampart-vmm under Debian's kernel under Rampart: {smp} host CPUs, {mem}, {rounds} rounds"
    );
    let _ = writeln!(
        s,
        "guest     run  wall ms   exits  MMIO exits  exits/s  MMIO/s   VM ready ms  first exit ms  first output ms"
    );
    for (i, x) in samples.iter().enumerate() {
        let rate = |n: u64| {
            if x.wall_ms > 0.0 {
                n as f64 * 1000.0 / x.wall_ms
            } else {
                0.0
            }
        };
        let _ = writeln!(
            s,
            "{:<9} {:>3}  {:>7.1}  {:>6}  {:>10}  {:>7.0}  {:>6.0}  {:>12.2}  {:>13.2}  {:>15.2}",
            x.guest,
            i / 2 + 1,
            x.wall_ms,
            x.exits,
            x.mmio,
            rate(x.exits),
            rate(x.mmio),
            x.vm_ready_ms,
            x.first_exit_ms,
            x.first_output_ms
        );
    }
    let _ = writeln!(s, "\nmedians:");
    let mut guests: Vec<&str> = Vec::new();
    for x in samples {
        if !guests.contains(&x.guest.as_str()) {
            guests.push(&x.guest);
        }
    }
    for guest in guests {
        let of: Vec<&BenchSample> = samples.iter().filter(|x| x.guest == guest).collect();
        if of.is_empty() {
            continue;
        }
        let m = |f: &dyn Fn(&BenchSample) -> f64| median(of.iter().map(|x| f(x)).collect());
        let _ = writeln!(
            s,
            "  {guest:<15} MMIO exits/s {:>7.0}  (exits/s {:>7.0});  launch: VM ready {:.2} ms, first exit {:.2} ms, first console output {:.2} ms; {:.2} trapped accesses per host call",
            m(&|x| x.mmio as f64 * 1000.0 / x.wall_ms.max(1e-9)),
            m(&|x| x.exits as f64 * 1000.0 / x.wall_ms.max(1e-9)),
            m(&|x| x.vm_ready_ms),
            m(&|x| x.first_exit_ms),
            m(&|x| x.first_output_ms),
            m(&|x| x.trapped_per_call),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_check_results_with_their_logs() {
        let console = "\
[  1.0] boot
RAMPART-VMM-TEST: begin guest-hello
[hello] Hello
RAMPART-VMM-TEST: guest-hello PASS host CPUs 0-3: GUEST-DONE 5 passed, 0 failed
RAMPART-VMM-TEST: begin tampered-bundle
rampart-vmm: the hypervisor refused /tmp/t.bundle: BAD_SIGNATURE: x
RAMPART-VMM-TEST: tampered-bundle FAIL exit status 1, want 4
RAMPART-VMM-TEST: begin kill9-reclaim
[killed] memtest
";
        let r = parse_checks(console);
        assert_eq!(r.len(), 2);
        let hello = &r["guest-hello"];
        assert!(hello.passed);
        assert_eq!(hello.detail, "host CPUs 0-3: GUEST-DONE 5 passed, 0 failed");
        assert_eq!(hello.log, vec!["[hello] Hello".to_string()]);
        let t = &r["tampered-bundle"];
        assert!(!t.passed);
        assert_eq!(t.detail, "exit status 1, want 4");
        assert_eq!(t.log.len(), 1);
        assert!(!r.contains_key("kill9-reclaim"));
    }

    #[test]
    fn parses_bench_stats() {
        let console = "\
[bench1-hello] stats: wall time: 0.250 s
[bench1-hello] stats: exits EXIT_MMIO: 500
[bench1-hello] stats: exits total: 510
[bench1-hello] stats: launch: VM ready 12.500 ms, first exit 20.000 ms, first console output 21.250 ms (after the VMM started)
[bench1-memtest] stats: wall time: 1.000 s
[bench1-memtest] stats: exits EXIT_MMIO: 2000
[bench1-memtest] stats: exits total: 2001
[bench1-memtest] stats: launch: VM ready -, first exit -, first console output - (after the VMM started)
";
        let s = parse_bench(console);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].guest, "hello");
        assert!((s[0].wall_ms - 250.0).abs() < 1e-9);
        assert_eq!((s[0].exits, s[0].mmio), (510, 500));
        assert!((s[0].vm_ready_ms - 12.5).abs() < 1e-9);
        assert!((s[0].first_exit_ms - 20.0).abs() < 1e-9);
        assert!((s[0].first_output_ms - 21.25).abs() < 1e-9);
        assert_eq!(s[1].guest, "memtest");
        assert_eq!(s[1].mmio, 2000);
        assert!(s[1].first_output_ms.abs() < 1e-9);
        let table = bench_table(&s, 2, "1G", 1);
        assert!(table.contains("MMIO exits/s    2000"), "{table}");
    }

    #[test]
    fn every_check_has_a_handler_in_the_script() {
        for (_, checks) in PLAN {
            for c in checks {
                let handled = c.starts_with("guest-") || CHECKS_SCRIPT.contains(&format!("\t{c})"));
                assert!(handled, "{c} has no case in checks.sh");
            }
        }
    }

    #[test]
    fn the_fuzz_case_passes_only_a_clean_run() {
        let good = "RAMPART-FUZZ: guest hello round 0 PASS GUEST-DONE 13 passed, 0 failed
RAMPART-FUZZ: guest smp round 0 PASS GUEST-DONE 10 passed, 0 failed
rampart-fuzz: done seed=21 procs=4 calls=20 in 1.0 s (20 calls/s), 0 refused as busy on the shared channel, 3 malformed accesses refused, unexpected=0; oracle: 0 violations, 99 events checked
RAMPART-FUZZ: exit 0
RAMPART-FUZZ: guests 1 rounds
RAMPART-FUZZ: alive 24.22 41.21
RAMPART-INIT: alive
RAMPART-INIT: done
";
        let summary = check_fuzz(good, 4, 5, true).unwrap();
        assert!(summary.contains("hello passed 1x and smp 1x") && summary.contains("calls=20"), "{summary}");
        assert!(check_fuzz(good, 4, 6, true).unwrap_err().contains("made 20 requests"));
        let broken = [
            (good.replace("round 0 PASS GUEST-DONE 13", "round 0 FAIL exit status 3"), "guest beside"),
            (format!("{good}rampart: panic on CPU 1: x\n"), "hypervisor reported"),
            (format!("{good}rampart: oracle: VIOLATION reclaim\n"), "invariant violation"),
            (format!("[ 1.0] Internal error: synchronous external abort\n{good}"), "kernel reported"),
            (format!("rampart-fuzz: UNEXPECTED seed=21 proc=1 index=7: x\n{good}"), "unexpected outcomes"),
            (good.replace("RAMPART-FUZZ: exit 0", "RAMPART-FUZZ: exit 3"), "did not exit 0"),
            (good.replace("RAMPART-INIT: done\n", ""), "did not live"),
            (good.replace("RAMPART-FUZZ: guest smp round 0 PASS", "x"), "smp 0 times"),
            (good.replace("oracle: 0 violations", "oracle: 2 violations"), "0 violations"),
        ];
        for (console, why) in broken {
            let e = check_fuzz(&console, 4, 5, true).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        let no_oracle = good.replace("oracle: 0 violations, 99 events checked", "oracle: not built in");
        assert!(check_fuzz(&no_oracle, 4, 5, false).is_ok());
        assert!(check_fuzz(&no_oracle, 4, 5, true).is_err());
    }
}
