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

/// The fuzz cases: `(CPUs, seed, calls)`.
pub const FUZZ_SLICE: &[(u32, u64, u64)] = &[(1, 11, 10_000), (2, 12, 22_000), (4, 13, 8_000), (2, 14, 15_000)];
/// The fuzz slice's run on the plain hypervisor (no oracle: host calls race
/// for real): CPUs, seed, calls.
pub const FUZZ_PLAIN: (u32, u64, u64) = (4, 15, 8_000);

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
    // the large memory size, and each stage-2 geometry once: `max` (52-bit
    // PA: 48-bit IPA from level 0), cortex-a57 (44-bit PA and IPA, level 0)
    // and cortex-a53 (40-bit PA: 39-bit IPA from level 1).
    let matrix: &[(u32, &str, &str)] = &[
        (1, "512M", "max"),
        (2, "512M", "max"),
        (4, "512M", "max"),
        (2, "2G", "max"),
        (2, "512M", "cortex-a57"),
        (4, "2G", "cortex-a53"),
    ];
    for &(smp, mem, cpu) in matrix {
        case(format!("testhost/smp{smp}/{mem}/{cpu}"), &|| testhost_case(smp, mem, cpu));
    }
    // Limits follow the machine: the most CPUs and RAM CI affords.
    case("testhost/large/smp32/64G".into(), &|| large_machine_case(32, "64G"));
    // Firmware memory at the top of RAM: the part sized at boot goes below.
    case("testhost/firmware-reserved-top".into(), &firmware_reserved_case);
    // Every CPU model QEMU emulates with EL2 reaches the host and runs its
    // first checks (a few seconds each; the full runs above cover each
    // IPA size).
    for &(cpu, ipa) in CPU_MODELS {
        case(format!("cpu-model/{cpu}"), &|| cpu_model_case(cpu, ipa));
    }

    // DMA masters (docs/design.md, "DMA"): without an SMMU, with one, and
    // with the development option that gives the unguarded ones back.
    case("testhost/no-smmu".into(), &|| dma_case(false, false));
    case("testhost/smmu-devices".into(), &|| dma_case(true, false));
    case("testhost/unguarded-dma".into(), &|| dma_case(false, true));
    // Hostile DMA through QEMU's edu device, the PCIe root complex behind
    // the SMMU Rampart owns.
    case("testhost/dma-attack".into(), &dma_attack_case);

    // The EL2 oracle (issue 15, docs/design.md "The oracle"): the whole test
    // host under the oracle's build breaks no invariant, and each planted
    // mutant is reported. The first run also has QEMU's SMMUv3 in front of
    // PCIe (iommu=smmuv3): Rampart owns it, and the oracle's build (which
    // includes `smmu-mirror-check`) compares the SMMU's mirror with the
    // host stage 2 after every change (this was `testhost/smmu`, a run and
    // a build of its own).
    case("oracle/testhost".into(), &|| oracle_case(2, "max", true));
    // 4 CPUs on the other stage-2 geometry (39-bit IPA from level 1).
    case("oracle/testhost-smp4-a53".into(), &|| oracle_case(4, "cortex-a53", false));
    for mutant in ORACLE_MUTANTS {
        case(format!("oracle/{mutant}"), &|| mutant_case(mutant));
    }

    // Issue 14 (sealed swap): each version rule of VM_RESTORE removed in
    // turn, the test host's swap-memtest must fail on the replay (and no
    // other check). Two test-host runs, about a minute each.
    for (mutant, expect) in SWAP_MUTANTS {
        case(format!("swap/{mutant}"), &|| swap_mutant_case(mutant, expect));
    }

    // Issue 16: VM_DECLARE_ZERO with a planted laundering bug; the test
    // host's vm-declare-zero checks must fail (and no other check).
    case("declare/mutant-declared-hides-mapped".into(), &declare_mutant_case);

    // A host reset with a protected VM alive leaves none of its secrets
    // for the next boot.
    case("testhost/reset-wipes".into(), &reset_case);
    case("testhost/power-off-wipes".into(), &power_off_case);

    // Issue 14 (ms): evict/restore against a vCPU running on the other CPU
    // and against VM_DESTROY, under the oracle.
    case("swap/race".into(), &crate::fuzz::swap_race_case);
    // Issue 14, secure migration (xtask/src/migrate.rs): a protected guest
    // counting in memory moves, sealed, to another VM on the same machine
    // (with the hostile streams), and to a second machine with another
    // device secret.
    case("migrate/local".into(), &crate::migrate::local_case);
    case("migrate/two-machines".into(), &crate::migrate::two_machines_case);
    // Issue 14 (ms): the migration calls under the oracle, and a planted
    // bug in them the oracle must report.
    case("migrate/oracle-local".into(), &|| crate::migrate::oracle_local_case(None));
    case("migrate/oracle-mutant-import-keeps-vm".into(), &|| crate::migrate::oracle_local_case(Some("mutant-import-keeps-vm")));

    // Hostile-host fuzzing (issue 15): seeded streams of every host call
    // on one, two and four CPUs with the fuzz guest running, the oracle
    // checked every 1000 calls when the hypervisor has it; 0 violations.
    // 55 000 calls in all, about two minutes on two cores with the oracle
    // (4 vCPUs on 2 cores are the slowest: fewer calls there).
    for &(smp, seed, calls) in FUZZ_SLICE {
        case(format!("fuzz/smp{smp}/seed{seed}"), &|| crate::fuzz::suite_case(smp, seed, calls));
    }
    // Issue 15: the oracle's build runs host calls one at a time; here
    // the plain hypervisor on 4 CPUs, where they really race (crashes,
    // hangs and the host-side invariants).
    let (smp, seed, calls) = FUZZ_PLAIN;
    case(format!("fuzz/plain-smp{smp}/seed{seed}"), &|| crate::fuzz::suite_case_plain(smp, seed, calls));

    // Bad boot input ends in a message and a power-off, never a hang.
    // QEMU itself refuses RAM smaller than the carve-out (it places the DT
    // after the image_size Rampart's header claims), so this is the
    // smallest machine that reaches Rampart's own check.
    case("bad-boot/ram-too-small".into(), &|| {
        let mut m = testhost_machine(1, "32M", "max")?;
        m.loaders.clear();
        expect_clean_refusal(&m, "rampart: RAM too small")
    });
    // A machine without EL2: a reason, not a hang.
    case("bad-boot/no-el2".into(), &|| {
        let mut m = testhost_machine(1, "512M", "cortex-a53")?;
        m.virtualization = false;
        expect_clean_refusal(&m, "rampart: entered at EL1; Rampart must be entered at EL2")
    });
    // A machine whose per-CPU stacks and ownership table would leave the
    // host less than its 32 MiB: one line saying so.
    case("bad-boot/machine-too-large".into(), &|| {
        bad_boot(128, "48M", "rampart: no room for the hypervisor's per-machine memory: 128 CPUs and 48 MiB of RAM need")
    });
    // QEMU's own refusal is what a failure report says first.
    case("bad-boot/qemu-error-first".into(), &|| {
        let mut m = testhost_machine(1, "512M", "max")?;
        m.cpu = "nonsense".into();
        let run = m.run(Duration::from_secs(30), None, false)?;
        let report = run.failure("the hypervisor's boot log has no `rampart: attestation key` line");
        if !report.starts_with("qemu-system-aarch64: unable to find CPU model 'nonsense'") {
            bail!("the failure report does not start with QEMU's error:\n{report}");
        }
        Ok(String::new())
    });
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
    // A release build has no planted bugs: naming one stops the boot.
    case("bad-boot/mutant-in-release-build".into(), &|| {
        let mut m = testhost_machine(1, "512M", "max")?;
        m.append = format!("rampart.host={HOST_LOAD_ADDRESS:#x} rampart.mutant=teardown-no-zero");
        expect_clean_refusal(
            &m,
            "rampart: bad command line: rampart.mutant=teardown-no-zero: this build has no planted bugs",
        )
    });
    case("bad-boot/unknown-option".into(), &|| {
        let mut m = testhost_machine(1, "512M", "max")?;
        m.append = format!("rampart.host={HOST_LOAD_ADDRESS:#x} rampart.bogus=1");
        expect_clean_refusal(&m, "rampart: bad command line: unknown option `rampart.bogus=1`")
    });

    // A hypervisor bug must fail closed: a test-only build whose CPU 1
    // overflows its EL2 stack must report that once and power off, never
    // fault again and again down into the next CPU's stack.
    case("bad-hyp/stack-overflow".into(), &stack_overflow_case);

    if !args.no_linux {
        // Each CPU count once, and each stage-2 geometry once.
        for (smp, cpu) in [(1, "max"), (2, "cortex-a57"), (4, "cortex-a53")] {
            case(format!("linux/smp{smp}/{cpu}"), &|| linux_case(smp, cpu));
        }
    }
    crate::linux_vmm::cases(args, &mut case);
    // Issue 14, sealed swap: a protected guest larger than what the host
    // lets it hold, hostile swap files, no secret in clear (about 60 s).
    crate::linux_swap::cases(args, &mut case);
    // Issue 14, secure migration: two QEMU machines, each Rampart with the
    // stock Linux host, linked over loopback; rampart-vmm migrate-out/in,
    // a flipped byte and a replay refused (one boot pair).
    crate::linux_migrate::cases(args, &mut case);
    if !args.no_linux {
        // Issue 16, "The peer in the repo": the peer KVM VMM builds and runs
        // the bench guest under Linux's own pKVM (`cargo xtask bench peer`).
        case("peer/pkvm-smoke".into(), &crate::bench::peer::smoke);
    }
    // Issue 11: Debian's sid kernel as a Rampart guest under the Linux host.
    crate::linux_guest::cases(args, &mut case);
    // Issue 11: the guest's virtio devices end to end (block both ways,
    // vsock round trips both ways, entropy) in one boot.
    crate::virtio_e2e::cases(args, &mut case);
    // Issue 12 (rl): Debian's kernel as a realm guest, virtio through bounce
    // buffers, its configfs-tsm token verified, a host scan of its RAM; in
    // the same boot of the Linux host, tampered kernel, initrd and command
    // line refused at the first run (this was `linux-bundle/smp2/protected`,
    // a boot of its own) and kill -9 of the realm's VMM.
    crate::linux_realm::cases(args, &mut case);

    // Issue 12, attestation: Rampart's CCA tokens accepted by Veraison's
    // ccatoken (std + OpenSSL, built outside the workspace), and refused
    // when a signature, the platform key or the binding is wrong.
    case("ccacheck".into(), &crate::ccacheck::case);

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
/// The 64 GiB test host: about 90 s on 2 cores, most of it the leak scan
/// reading all of RAM.
const LARGE_TIMEOUT: Duration = Duration::from_secs(360);
const LINUX_TIMEOUT: Duration = Duration::from_secs(180);

/// The attest guest's sealing-key fingerprints from the first test-host
/// run, which every later run (another boot) must repeat.
static SEALING: std::sync::Mutex<Option<Vec<(String, String)>>> = std::sync::Mutex::new(None);

fn testhost_case(smp: u32, mem: &str, cpu: &str) -> Result<String> {
    testhost_run(smp, mem, cpu, TESTHOST_TIMEOUT).map(|(_, summary)| summary)
}

/// The largest machine CI affords (2 cores, 24 GiB): the full test host on
/// 32 CPUs and 64 GiB of RAM. Besides [`testhost_case`]: every CPU was
/// started, the carve-out has its fixed part and a part sized at boot, and
/// all of it costs at most the fixed part plus 0.1% of RAM and 64 KiB per
/// CPU.
fn large_machine_case(smp: u32, mem: &str) -> Result<String> {
    let (run, summary) = testhost_run(smp, mem, "max", LARGE_TIMEOUT)?;
    let started = format!("{} secondaries started and stopped", smp - 1);
    if !run.console.contains(&started) {
        bail!(run.failure(&format!("no `{started}` line: not every CPU ran")));
    }
    let ram = crate::qemu::parse_mem(mem)?;
    let ranges = parse_carveout(&run.console)
        .filter(|r| r.len() == 2)
        .ok_or_else(|| anyhow::anyhow!(run.failure("no `carve-out [..) + [..)` line with two ranges")))?;
    let total: u64 = ranges.iter().map(|(start, end)| end - start).sum();
    let limit = crate::qemu::carveout_bytes() + ram / 1000 + u64::from(smp) * (64 << 10);
    if total > limit {
        bail!(run.failure(&format!("the carve-out takes {} KiB, more than {} KiB", total >> 10, limit >> 10)));
    }
    let overhead = parse_overhead(&run.console).unwrap_or(u64::MAX);
    let boot = run.time_of("rampart: entering host").map_or(0.0, |t| t.as_secs_f64());
    Ok(format!(
        "{summary}; carve-out {} KiB = {}.{:02}% of RAM; host entered at {boot:.1}s",
        total >> 10,
        overhead / 100,
        overhead % 100
    ))
}

/// The firmware reservation [`firmware_reserved_case`] adds at the top of
/// 512 MiB of RAM.
const FIRMWARE_RESERVED: (u64, u64) = (0x5fe0_0000, 0x6000_0000);

/// Firmware's memory at the top of RAM (as on many boards), described by
/// the boot device tree's `/reserved-memory`: the hypervisor's part sized at
/// boot goes below it, the host's tree keeps both, and the full test host
/// passes.
fn firmware_reserved_case() -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    let dir = artifacts::build_dir();
    let dumped = dir.join("virt-2cpu-512M.dtb");
    let patched = dir.join("virt-2cpu-512M-fw-reserved.dtb");
    let mut args: Vec<std::ffi::OsString> = m.command().get_args().map(std::ffi::OsStr::to_os_string).collect();
    let machine = args.iter().position(|a| a == "-M").map(|i| i + 1).context("no -M in the QEMU command")?;
    let mut with_dump = args[machine].clone();
    with_dump.push(format!(",dumpdtb={}", dumped.display()));
    args[machine] = with_dump;
    let out = Command::new("qemu-system-aarch64").args(&args).output().context("running QEMU to dump its device tree")?;
    if !out.status.success() {
        bail!("QEMU could not dump its device tree: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dts = Command::new("dtc").args(["-q", "-I", "dtb", "-O", "dts"]).arg(&dumped).output().context("running dtc")?;
    let mut source = String::from_utf8(dts.stdout)?;
    let end = source.rfind("};").context("dtc printed no root node")?;
    let (start, stop) = FIRMWARE_RESERVED;
    source.insert_str(
        end,
        &format!(
            "\treserved-memory {{\n\t\t#address-cells = <0x02>;\n\t\t#size-cells = <0x02>;\n\t\tranges;\n\t\tfirmware@{start:x} {{\n\t\t\treg = <0x00 {start:#x} 0x00 {:#x}>;\n\t\t\tno-map;\n\t\t}};\n\t}};\n",
            stop - start
        ),
    );
    let mut dtc = Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&patched)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running dtc")?;
    std::io::Write::write_all(dtc.stdin.as_mut().context("dtc's stdin")?, source.as_bytes())?;
    drop(dtc.stdin.take());
    if !dtc.wait()?.success() {
        bail!("dtc could not compile the patched device tree");
    }
    m.extra.extend(["-dtb".to_string(), patched.display().to_string()]);
    let (run, summary) = testhost_run_machine(&m, 2, TESTHOST_TIMEOUT)?;
    let ranges = parse_carveout(&run.console)
        .filter(|r| r.len() == 2)
        .ok_or_else(|| anyhow::anyhow!(run.failure("no `carve-out [..) + [..)` line with two ranges")))?;
    let (sized_start, sized_end) = ranges[1];
    if sized_end > start || sized_start >= sized_end {
        bail!(run.failure(&format!(
            "the part sized at boot [{sized_start:#x}, {sized_end:#x}) is not below the firmware's [{start:#x}, {stop:#x})"
        )));
    }
    if !run.console.contains(&format!("reserved no-map [{start:#x}, {stop:#x})")) {
        bail!(run.failure("the host's device tree lost the firmware's reservation"));
    }
    Ok(format!("{summary}; part sized at boot [{sized_start:#x}, {sized_end:#x}) below the firmware's [{start:#x}, {stop:#x})"))
}

/// Runs the full test host and checks what every test-host case checks;
/// returns the run and a summary.
fn testhost_run(smp: u32, mem: &str, cpu: &str, timeout: Duration) -> Result<(Run, String)> {
    testhost_run_machine(&testhost_machine(smp, mem, cpu)?, smp, timeout)
}

/// [`testhost_run`] on a machine already set up.
fn testhost_run_machine(m: &Machine, smp: u32, timeout: Duration) -> Result<(Run, String)> {
    let run = m.run(timeout, None, false)?;
    let checks = check_testhost(&run, smp)?;
    // Issue 16: EL2's SHA-256 instructions passed their known-answer test
    // against the portable code (or the CPU has none).
    let sha = run.console.lines().find_map(|l| l.split_once("SHA-256 at EL2: ").map(|(_, what)| what.to_string()));
    match sha.as_deref() {
        Some(w) if w.starts_with("the CPU's instructions") || w.starts_with("portable code (no FEAT_SHA256)") => {}
        other => bail!(run.failure(&format!("SHA-256 at EL2: {other:?}"))),
    }
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
    // issue 12: the realm guest's CCA token, verified here too.
    let cca = attest::verify_cca_console(&run.console).map_err(|e| anyhow::anyhow!(run.failure(&format!("{e:#}"))))?;
    let cca = cca.map(|c| format!("; {c}")).unwrap_or_default();
    let summary = format!("{checks}; {attested}; sealing keys: {across}{cca}");
    Ok((run, summary))
}

/// The test host on QEMU virt with (`smmu`) or without `iommu=smmuv3`,
/// and with `rampart.unguarded-dma=on` (`unguarded`): every check passes
/// (among them `dma-withheld-dt` and `dma-withheld-mmio`), and the boot
/// log names each DMA master and what Rampart did with it.
fn dma_case(smmu: bool, unguarded: bool) -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    m.smmu = smmu;
    if unguarded {
        m.append = m.append.replacen(" -- ", " rampart.unguarded-dma=on -- testhost.unguarded-dma ", 1);
    }
    let run = m.run(TESTHOST_TIMEOUT, None, false)?;
    let checks = check_testhost(&run, 2)?;
    for check in ["dma-withheld-dt", "dma-withheld-mmio"] {
        if !run.console.lines().any(|l| l == format!("PASS {check}")) {
            bail!(run.failure(&format!("no `PASS {check}`")));
        }
    }
    let mut want = vec!["rampart: DMA: withheld GICv3 ITS /intc@8000000/its@8080000 [0x8080000, 0x80a0000): ".to_string()];
    let virtio = |i: u64| format!("/virtio_mmio@{:x}", 0xa00_0000 + i * 0x200);
    let summary = match (smmu, unguarded) {
        (false, false) => {
            want.push("rampart: DMA: withheld PCIe root complex /pcie@10000000 ".into());
            want.push("rampart: DMA: withheld DMA master /fw-cfg@9020000 [0x9020000, 0x9021000): no SMMU Rampart owns guards it".into());
            want.extend((0..32).map(|i| format!("rampart: DMA: withheld virtio-mmio {} ", virtio(i))));
            "rampart: DMA: 35 master(s) withheld, 0 behind an SMMU Rampart owns, 0 given back unguarded"
        }
        (true, _) => {
            want.push("rampart: DMA: withheld SMMUv3 /smmuv3@9050000 [0x9050000, 0x9070000): Rampart owns it".into());
            want.push("rampart: DMA: PCIe root complex /pcie@10000000 stays with the host behind the SMMU /smmuv3@9050000".into());
            want.extend((0..32).map(|i| format!("rampart: DMA: withheld virtio-mmio {} ", virtio(i))));
            "rampart: DMA: 35 master(s) withheld, 1 behind an SMMU Rampart owns, 0 given back unguarded"
        }
        (false, true) => {
            want.push("rampart: DMA: WARNING: PCIe root complex /pcie@10000000 ".into());
            want.push("rampart: DMA: WARNING: rampart.unguarded-dma=on: FOR DEVELOPMENT ONLY".into());
            want.extend((0..32).map(|i| format!("rampart: DMA: WARNING: virtio-mmio {} ", virtio(i))));
            "rampart: DMA: 1 master(s) withheld, 0 behind an SMMU Rampart owns, 34 given back unguarded"
        }
    };
    want.push(summary.into());
    for line in &want {
        if !run.console.lines().any(|l| l.starts_with(line.as_str())) {
            bail!(run.failure(&format!("the boot log has no line starting `{line}`")));
        }
    }
    Ok(format!("{checks}; {}", summary.trim_start_matches("rampart: DMA: ")))
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
    // QEMU's built-in PSCI has no MEM_PROTECT: the boot log must say that
    // resets Rampart does not see are not wiped (docs/design.md).
    if !run.console.contains("MEM_PROTECT not offered") {
        bail!(run.failure("the boot log does not say whether firmware offers MEM_PROTECT"));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    Ok(reset.trim_start_matches("rampart: ").to_owned())
}

/// `testhost.reset=off`: the test host runs the attest guest (and a VM that
/// never exits on CPU 1) and asks `SYSTEM_OFF` with both alive. QEMU runs
/// with `-no-shutdown`, so the powered-off machine stays; xtask then dumps
/// all of RAM through QMP (`pmemsave`) and looks for every secret the test
/// host knows — the device secret, the attestation key, the guest's
/// sealing keys — anywhere, the hypervisor's carve-out included. The only
/// copy allowed is the development device secret inside the hypervisor's
/// own image (built in at compile time, reloaded from the file at boot).
fn power_off_case() -> Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    const RAM_BASE: u64 = 0x4000_0000;
    const RAM_SIZE: u64 = 512 << 20;
    let mut m = testhost_machine(2, "512M", "max")?;
    m.append.push_str(" testhost.reset=off");
    let dir = artifacts::build_dir().join("power-off-wipes");
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("qmp.sock");
    let dump = dir.join("ram.bin");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&dump);
    m.extra.extend([
        "-no-shutdown".to_string(),
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", socket.display()),
    ]);
    let mut cmd = m.command();
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", m.command_line()))?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let console = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let result = (|| -> Result<()> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => bail!("connecting to QEMU's QMP socket: {e}"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // Reads QMP lines until one contains `want` (or the deadline).
        let mut wait_for = |want: &str, secs: u64| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => bail!("QEMU closed its QMP socket while waiting for {want}"),
                    Ok(_) if line.contains(want) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => bail!("reading QMP: {e}"),
                }
                if Instant::now() > deadline {
                    bail!("no QMP {want} within {secs} s");
                }
            }
        };
        wait_for("\"QMP\"", 20)?;
        writer.write_all(b"{\"execute\": \"qmp_capabilities\"}\n")?;
        wait_for("\"return\"", 20)?;
        wait_for("\"SHUTDOWN\"", TESTHOST_TIMEOUT.as_secs())?;
        let save = format!(
            "{{\"execute\": \"pmemsave\", \"arguments\": {{\"val\": {RAM_BASE}, \"size\": {RAM_SIZE}, \"filename\": \"{}\"}}}}\n",
            dump.display()
        );
        writer.write_all(save.as_bytes())?;
        wait_for("\"return\"", 60)?;
        writer.write_all(b"{\"execute\": \"quit\"}\n")?;
        Ok(())
    })();
    // QEMU quits on `quit`; never wait for it for long.
    let quit_by = Instant::now() + Duration::from_secs(if result.is_ok() { 20 } else { 0 });
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > quit_by {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = console.join().unwrap_or_default();
    let fail = |what: &str| {
        let tail: Vec<&str> = console.lines().rev().take(25).collect();
        let tail: String = tail.into_iter().rev().map(|l| format!("    | {l}\n")).collect();
        anyhow::anyhow!("{what}\n  command: {}\n  console tail:\n{tail}", m.command_line())
    };
    result.map_err(|e| fail(&format!("{e:#}")))?;
    if !console.contains("SYSTEM_OFF with every VM alive") {
        bail!(fail("the test host did not power off with its VMs alive"));
    }
    let ram = std::fs::read(&dump).with_context(|| format!("reading the RAM dump {}", dump.display()))?;
    eprintln!("xtask: scanning the {} MiB RAM dump", ram.len() >> 20);
    let image = std::fs::read(artifacts::hypervisor()?)?;
    let image_offset = usize::try_from(0x4020_0000 - RAM_BASE)?;
    let measurement = crate::guests::measurement("attest")?;
    let secrets = attest::leak_secrets(&measurement)?;
    let names = ["the device secret", "the attestation key's seed", "the attestation key's scalar", "the attestation key's nonce prefix", "sealing key \"disk\"", "sealing key \"other\"", "sealing key \"\""];
    // Every 8-byte window of every secret: any copy at any alignment holds
    // one at an 8-byte-aligned address.
    let mut windows = std::collections::HashMap::new();
    for (i, secret) in secrets.iter().enumerate() {
        for j in 0..=24 {
            let w = u64::from_le_bytes(secret[j..j + 8].try_into()?);
            windows.insert(w, i);
        }
    }
    let mut found = Vec::new();
    for (n, chunk) in ram.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(chunk.try_into()?);
        if w == 0 {
            continue;
        }
        if let Some(&i) = windows.get(&w) {
            let at = n * 8;
            // The built-in development secret in the loaded image itself.
            let in_image = at >= image_offset
                && at + 8 <= image_offset + image.len()
                && image[at - image_offset..at - image_offset + 8] == *chunk;
            if !in_image {
                found.push(format!("{} at {:#x}", names.get(i).unwrap_or(&"a secret"), RAM_BASE + at as u64));
            }
        }
    }
    if !found.is_empty() {
        found.truncate(8);
        bail!(fail(&format!("secrets in RAM after SYSTEM_OFF: {}", found.join(", "))));
    }
    let _ = std::fs::remove_file(&dump);
    let off = console
        .lines()
        .find(|l| l.starts_with("rampart: SYSTEM_OFF: ") && l.contains("zeroed twice"))
        .ok_or_else(|| fail("no wipe reported for SYSTEM_OFF"))?
        .trim_start_matches("rampart: ")
        .to_owned();
    Ok(format!("{} MiB of RAM after the power-off hold none of {} secrets; {off}", ram.len() >> 20, secrets.len()))
}

/// The test host's DMA checks (`host/testhost/src/checks/dma.rs`); each
/// must pass in `testhost/dma-attack`.
const DMA_CHECKS: &[&str] = &[
    "dma-host-to-host",
    "dma-read-carveout",
    "dma-read-guest",
    "dma-guest-share",
    "dma-write-guest",
    "dma-write-metadata",
    "dma-write-carveout",
];
/// What a DMA check prints when it finds no edu device
/// (`checks::dma::SKIPPED`).
const DMA_SKIPPED: &str = "dma: skipped";
/// `edu`'s `dma_mask`: all ones, so it reaches RAM at 0x4000_0000 and
/// above (QEMU's default is 28 bits).
const EDU_DMA_MASK: u64 = u64::MAX;
/// How the hypervisor's log reports an SMMU fault event: a line (after an
/// optional `rampart: `) that starts with the first text and contains one
/// of the others, ignoring case (the SMMU driver prints `SMMU fault: ...`).
/// The driver's wording is matched only here.
const SMMU_FAULT_LOG: (&str, &[&str]) = ("smmu", &["fault", "event"]);

/// Whether `line` is the hypervisor reporting an SMMU fault event.
fn is_smmu_fault_line(line: &str) -> bool {
    let (prefix, words) = SMMU_FAULT_LOG;
    let line = line.trim_start();
    let line = line.strip_prefix("rampart: ").unwrap_or(line).to_ascii_lowercase();
    line.starts_with(prefix) && words.iter().any(|w| line.contains(w))
}

/// The test host on `-M virt,iommu=smmuv3` with QEMU's `edu` device, a
/// bus master the host points anywhere: every check passes, the DMA checks
/// ran (none skipped), and the hypervisor logged the SMMU's fault events.
fn dma_attack_case() -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    m.smmu = true;
    m.extra.extend(["-device".to_string(), format!("edu,dma_mask={EDU_DMA_MASK:#x}")]);
    let run = m.run(TESTHOST_TIMEOUT, None, false)?;
    let checks = check_testhost(&run, 2)?;
    if let Some(line) = run.console.lines().find(|l| l.contains(DMA_SKIPPED)) {
        bail!(run.failure(&format!("a DMA check was skipped: {}", line.trim())));
    }
    let missing: Vec<&str> =
        DMA_CHECKS.iter().copied().filter(|c| !run.console.lines().any(|l| l == format!("PASS {c}"))).collect();
    if !missing.is_empty() {
        bail!(run.failure(&format!("DMA checks that did not pass: {}", missing.join(", "))));
    }
    let faults: Vec<&str> = run.console.lines().filter(|l| is_smmu_fault_line(l)).collect();
    let Some(first) = faults.first() else {
        bail!(run.failure(&format!(
            "the hypervisor logged no SMMU fault event (a line starting `{}` with {:?})",
            SMMU_FAULT_LOG.0, SMMU_FAULT_LOG.1
        )));
    };
    Ok(format!("{checks}; {} DMA checks passed; {} SMMU fault lines, first: {}", DMA_CHECKS.len(), faults.len(), first.trim()))
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
    // A passing run's guest failures are the ones a check causes, and the
    // console says so on each line (a reader must not take them for a
    // failure).
    let unmarked = unmarked_guest_failures(&run.console);
    if !unmarked.is_empty() {
        bail!(run.failure(&format!("guest failures not marked as expected:\n  {}", unmarked.join("\n  "))));
    }
    // The EL2 stack keeps at least half of itself unused after the whole
    // suite (the deepest paths: signing, COSE, measurement, signature
    // checks), reported when the host powers off.
    let Some((used, size)) = crate::bench::parse_stack_line(&run.console) else {
        bail!(run.failure("no `EL2 stack high-water mark` line at power-off"));
    };
    if used == 0 || used * 2 > size {
        bail!(run.failure(&format!("EL2 stack high-water mark {used} of {size} bytes: want at most half used")));
    }
    // The hypervisor checks every change's page-table use against its
    // worst-case estimate (docs/design.md, "Table memory").
    if let Some(line) = run.console.lines().find(|l| l.contains("rampart: table estimate exceeded")) {
        bail!(run.failure(line));
    }
    let cpus = format!("rampart: {smp} CPUs");
    if !run.console.contains(&cpus) {
        bail!(run.failure(&format!("boot log lacks `{cpus}`")));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    Ok(format!("{} checks passed, EL2 stack {used} of {size} bytes", summary.0))
}

/// The test host's guest lines (`  [name] GUEST-FAIL …`, or a
/// `GUEST-DONE n passed, m failed` with m > 0) that do not carry the
/// test host's `<- expected` mark.
fn unmarked_guest_failures(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| {
            let Some((_, guest)) = l.trim_start().strip_prefix('[').and_then(|l| l.split_once("] ")) else {
                return false;
            };
            let failed = guest.starts_with("GUEST-FAIL ")
                || guest.strip_prefix("GUEST-DONE ").and_then(parse_summary).is_some_and(|(_, f)| f > 0);
            failed && !guest.contains("   <- expected")
        })
        .collect()
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

/// The hypervisor with the planted `stack-overflow` (`mutants` build) with the test host on 2 CPUs: the
/// host starts CPU 1, which overflows its stack in Rampart's CPU bring-up.
fn stack_overflow_case() -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    set_mutant(&mut m, "stack-overflow")?;
    let run = m.run(Duration::from_secs(60), None, false)?;
    if run.timed_out {
        bail!(run.failure("hung instead of powering off"));
    }
    let reports: Vec<&str> = run.console.lines().filter(|l| l.contains("stack overflow on CPU")).collect();
    if reports.len() != 1 || !reports[0].starts_with("rampart: stack overflow on CPU 1: SP ") {
        bail!(run.failure(&format!("want exactly one `rampart: stack overflow on CPU 1: SP ...` line, got {reports:?}")));
    }
    if let Some(other) = run.console.lines().find(|l| l.contains("unexpected exception") || l.contains("panic")) {
        bail!(run.failure(&format!("a second fault was reported after the overflow: {other}")));
    }
    if run.exit_code != Some(0) {
        bail!(run.failure("QEMU did not power off cleanly"));
    }
    Ok(reports[0].trim_start_matches("rampart: ").to_string())
}

/// The planted bugs the oracle must report (hypervisor features).
const ORACLE_MUTANTS: [&str; 3] = ["mutant-reclaim-vm-meta", "mutant-teardown-no-zero", "mutant-donate-keeps-host-mapping"];

/// The oracle's test builds are slower: every host call is predicted and
/// every 64 events all of RAM and every stage 2 are compared. 300 s was
/// hit at load average 15 by a run that was still making progress, so the
/// cap leaves room for a busy machine.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The oracle's summary line: `oracle: checked N events, M violations`
/// (the last one printed).
fn oracle_summary(console: &str) -> Option<(u64, u64)> {
    console.lines().rev().find_map(|l| {
        let rest = l.trim_start_matches("rampart: ").strip_prefix("oracle: checked ")?;
        let (events, rest) = rest.split_once(" events, ")?;
        let violations = rest.strip_suffix(" violations")?;
        Some((events.parse().ok()?, violations.trim().parse().ok()?))
    })
}

/// `oracle/testhost*`: the whole test host on `smp` CPUs of model `cpu`
/// (with QEMU's SMMU if `smmu`) under the `oracle` build: every check
/// passes, the oracle checked events and found no violation.
fn oracle_case(smp: u32, cpu: &str, smmu: bool) -> Result<String> {
    let mut m = testhost_machine(smp, "512M", cpu)?;
    m.smmu = smmu;
    m.kernel = artifacts::hypervisor_with_features(&["oracle"])?;
    let run = m.run(ORACLE_TIMEOUT, None, false)?;
    std::fs::write(artifacts::build_dir().join(format!("oracle-testhost-smp{smp}-{cpu}.log")), &run.console)?;
    if let Some(line) = run.console.lines().find(|l| l.contains("oracle: VIOLATION ")) {
        bail!(run.failure(line));
    }
    let checks = check_testhost(&run, smp)?;
    let mirror = if smmu { format!("; {}", check_smmu_mirror(&run)?) } else { String::new() };
    let (events, violations) =
        oracle_summary(&run.console).ok_or_else(|| anyhow::anyhow!(run.failure("no `oracle: checked N events, M violations` line")))?;
    if events == 0 || violations != 0 {
        bail!(run.failure(&format!("the oracle checked {events} events and found {violations} violations")));
    }
    Ok(format!("{checks}{mirror}; oracle: {events} events checked, 0 violations"))
}

/// Issue 14: hypervisor features that remove one rule of the sealed swap,
/// and what `swap-memtest` must then report.
const SWAP_MUTANTS: [(&str, &str); 2] = [
    // VM_RESTORE no longer compares the version with the current one.
    ("mutant-swap-no-version-check", "with a version never issued: -23, expected -24"),
    // The version is no longer in the associated data and nonce.
    ("mutant-swap-no-version-binding", "replayed as v"),
];

/// `swap/<mutant>`: the test host under a build without one of the sealed
/// swap's version rules; `swap-memtest` must fail, saying `expect`, and
/// every other check pass.
fn swap_mutant_case(mutant: &str, expect: &str) -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    m.kernel = artifacts::hypervisor_with_features(&[mutant])?;
    let run = m.run(TESTHOST_TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    let failed: Vec<&str> = run.console.lines().filter(|l| l.starts_with("FAIL")).collect();
    match failed.as_slice() {
        [only] if only.starts_with("FAIL swap-memtest: ") && only.contains(expect) => Ok(format!("caught: {only}")),
        _ => bail!(run.failure(&format!("expected only `FAIL swap-memtest: ...{expect}...`, got:\n  {}", failed.join("\n  ")))),
    }
}

/// `declare/mutant-declared-hides-mapped` (issue 16): the test host under
/// the planted bug that measures a mapped page declared zero as zero
/// without reading it. `vm-declare-zero-laundered` must catch it (the VM
/// ran with the signature made for zeros where the host donated garbage),
/// and only `vm-declare-zero*` checks may fail (`vm-declare-zero` does
/// too: its declared image pages are no longer read).
fn declare_mutant_case() -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    set_mutant(&mut m, "mutant-declared-hides-mapped")?;
    let run = m.run(TESTHOST_TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    let failed: Vec<&str> = run.console.lines().filter(|l| l.starts_with("FAIL")).collect();
    let caught = failed
        .iter()
        .find(|l| l.starts_with("FAIL vm-declare-zero-laundered: garbage given at a declared address: the first VCPU_RUN = 0"));
    match caught {
        Some(line) if failed.iter().all(|l| l.starts_with("FAIL vm-declare-zero")) => Ok(format!("caught: {line}")),
        _ => bail!(run.failure(&format!(
            "expected `FAIL vm-declare-zero-laundered: garbage given at a declared address: the first VCPU_RUN = 0...` and no failure outside vm-declare-zero*, got:\n  {}",
            failed.join("\n  ")
        ))),
    }
}

/// `oracle/<mutant>`: the test host under a build with a planted bug; the
/// oracle must report it (`oracle: VIOLATION` lines). The test host's own
/// checks may fail too: that is the mutant's doing.
fn mutant_case(mutant: &str) -> Result<String> {
    let mut m = testhost_machine(2, "512M", "max")?;
    set_mutant(&mut m, mutant)?;
    // The first violation is the answer: the run stops there instead of
    // running the rest of the test host under the planted bug.
    let run = m.run(ORACLE_TIMEOUT, Some("oracle: VIOLATION "), false)?;
    std::fs::write(artifacts::build_dir().join(format!("oracle-{mutant}.log")), &run.console)?;
    let lines: Vec<&str> = run.console.lines().filter(|l| l.contains("oracle: VIOLATION ")).collect();
    let Some(first) = lines.first() else {
        bail!(run.failure(&format!("the oracle reported nothing about {mutant}")));
    };
    let total = oracle_summary(&run.console).map_or(lines.len() as u64, |(_, v)| v.max(lines.len() as u64));
    Ok(format!("{total} violations; first: {}", first.trim_start_matches("rampart: ")))
}

/// Boots `m` with the hypervisor build that carries the planted bugs
/// (feature `mutants`, hyp/src/mutant.rs; one build for every mutant case)
/// and turns on `mutant` (`mutant-<name>`) on its command line.
pub fn set_mutant(m: &mut Machine, mutant: &str) -> Result<()> {
    let name = mutant.strip_prefix("mutant-").unwrap_or(mutant);
    m.kernel = artifacts::hypervisor_with_features(&["mutants"])?;
    m.append = format!("{}={name} {}", rampart_abi::boot::MUTANT_KEY, m.append);
    Ok(())
}

/// The SMMU part of `oracle/testhost` (a machine with QEMU's SMMUv3 and a
/// build with `smmu-mirror-check`): the boot log names the owned SMMU and
/// its stream range, and every host memory change left the SMMU's stage-1
/// mirror equal to the host stage 2 (the hypervisor prints any difference),
/// compared after at least 64 changes.
fn check_smmu_mirror(run: &Run) -> Result<String> {
    let owned = run
        .console
        .lines()
        .find(|l| l.starts_with("rampart: SMMUv3 at [0x9050000, 0x9070000): owned; stream IDs 0x0-0xffff through a 256-entry stream table"))
        .ok_or_else(|| anyhow::anyhow!(run.failure("the boot log does not name the owned SMMUv3 and its stream range")))?;
    if let Some(line) = run.console.lines().find(|l| l.contains("SMMU mirror check FAILED") || l.contains("rampart: smmu: ")) {
        bail!(run.failure(line));
    }
    let compared = run
        .console
        .lines()
        .filter_map(|l| l.strip_prefix("rampart: SMMU mirror check: equal to the host stage 2 after "))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .max()
        .ok_or_else(|| anyhow::anyhow!(run.failure("the mirror was never compared")))?;
    if compared < 64 {
        bail!(run.failure(&format!("the mirror was compared after only {compared} changes")));
    }
    Ok(format!("{}; mirror equal after {compared}+ changes", owned.trim_start_matches("rampart: ")))
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
    // What a failure report puts first must be that reason.
    match run.cause() {
        Some(cause) if cause.contains(expect) => {}
        other => bail!(run.failure(&format!("the run's cause is {other:?}, want the line with `{expect}`"))),
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
fn linux_case(smp: u32, cpu: &str) -> Result<String> {
    let mut m = linux_machine(smp, "1G", cpu, linux::DEVMEM_FLAG)?;
    // The host's PCI devices behind the SMMU Rampart owns (issue 10).
    linux::add_pci_devices(&mut m)?;
    let run = m.run(LINUX_TIMEOUT, None, false)?;
    if run.timed_out {
        bail!(run.failure("timed out"));
    }
    let carveout = parse_carveout(&run.console)
        .ok_or_else(|| anyhow::anyhow!(run.failure("the boot log does not name the carve-out")))?;
    if carveout.len() != 2 {
        bail!(run.failure(&format!("the carve-out has {} ranges, want 2 (fixed, sized at boot)", carveout.len())));
    }
    let report = linux::parse_report(&run.console);
    if !report.started {
        bail!(run.failure("the host never reached /init"));
    }
    if report.cpus_online != Some(smp) {
        bail!(run.failure(&format!("{:?} CPUs online, want {smp}", report.cpus_online)));
    }
    let reserved = report.unmapped_reserved();
    for &(start, end) in &carveout {
        if !reserved.contains(&(start, end - 1)) {
            bail!(run.failure(&format!(
                "the carve-out {start:#x}-{:#x} is not a reserved range of /proc/iomem: {reserved:x?}",
                end - 1
            )));
        }
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
    let Some((used, size)) = crate::bench::parse_stack_line(&run.console) else {
        bail!(run.failure("no `EL2 stack high-water mark` line at power-off"));
    };
    if used * 2 > size {
        bail!(run.failure(&format!("EL2 stack high-water mark {used} of {size} bytes: want at most half used")));
    }
    let ipa = parse_ipa_bits(&run.console).unwrap_or(0);
    let pci = linux::check_pci_devices(&run.console).map_err(|e| anyhow::anyhow!(run.failure(&format!("{e:#}"))))?;
    Ok(format!("{smp} CPUs online, {ipa}-bit IPA, carve-out reserved, devmem SIGBUS, /init at {at:.1}s, EL2 stack {used} of {size} bytes; {pci}"))
}

/// Every CPU model QEMU 7.2 emulates with EL2 (`-M virt,virtualization=on
/// -cpu help`, AArch64 only), with the IPA size Rampart must choose for it
/// (its PARange: 40 bits on a35/a53/a76/a64fx, 44 on a57/a72, 48 on
/// neoverse-n1, 52 on max).
pub const CPU_MODELS: &[(&str, u32)] = &[
    ("cortex-a35", 39),
    ("cortex-a53", 39),
    ("cortex-a57", 44),
    ("cortex-a72", 44),
    ("cortex-a76", 39),
    ("a64fx", 39),
    ("neoverse-n1", 48),
    ("max", 48),
];

/// Boots the test host on one CPU model until its first hypercall checks
/// pass: the stage 2 Rampart built for that model's PA size works.
fn cpu_model_case(cpu: &str, ipa: u32) -> Result<String> {
    let m = testhost_machine(1, "512M", cpu)?;
    let run = m.run(Duration::from_secs(60), Some("PASS hyp-version"), false)?;
    if !run.console.contains("PASS hyp-version") {
        bail!(run.failure(&format!("the test host did not pass `hyp-version` on {cpu}")));
    }
    let got = parse_ipa_bits(&run.console);
    if got != Some(ipa) {
        bail!(run.failure(&format!("stage 2 has a {got:?}-bit IPA on {cpu}, want {ipa}")));
    }
    Ok(format!("{ipa}-bit IPA"))
}

/// The IPA size from the boot log line `rampart: host stage 2: ..., N-bit IPA ...`.
fn parse_ipa_bits(console: &str) -> Option<u32> {
    let line = console.lines().find(|l| l.starts_with("rampart: host stage 2:"))?;
    let before = line.split_once("-bit IPA")?.0;
    before.rsplit(' ').next()?.parse().ok()
}

/// The carve-out's ranges `[start, end)` from the hypervisor's boot log
/// line `rampart: carve-out [0x40200000, 0x41200000) + [0x5ff73000,
/// 0x60000000): ...` (the fixed part, then the part sized at boot).
fn parse_carveout(console: &str) -> Option<Vec<(u64, u64)>> {
    let line = console.lines().find(|l| l.starts_with("rampart: carve-out ["))?;
    let ranges = line.strip_prefix("rampart: carve-out ")?.split_once("):")?.0;
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    ranges
        .split(" + ")
        .map(|r| {
            let (start, end) = r.trim_start_matches('[').trim_end_matches(')').split_once(", ")?;
            Some((hex(start)?, hex(end)?))
        })
        .collect()
}

/// The carve-out's total share of RAM, in hundredths of a percent, from
/// the same line (`... = 83444 KiB, 0.12% of RAM`).
fn parse_overhead(console: &str) -> Option<u64> {
    let line = console.lines().find(|l| l.starts_with("rampart: carve-out ["))?;
    let percent = line.strip_suffix("% of RAM")?.rsplit(' ').next()?;
    let (whole, hundredths) = percent.split_once('.')?;
    Some(whole.parse::<u64>().ok()? * 100 + hundredths.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::parse_summary;

    #[test]
    fn parses_the_carveout_line() {
        let log = "x\nrampart: carve-out [0x40200000, 0x41200000) + [0x5ff73000, 0x60000000): 16384 KiB fixed at build time + 564 KiB sized at boot (ownership table 512 KiB, per-CPU state 4 KiB, stacks of 1 secondary CPUs 48 KiB) = 16948 KiB, 3.23% of RAM\n";
        assert_eq!(super::parse_carveout(log), Some(vec![(0x4020_0000, 0x4120_0000), (0x5ff7_3000, 0x6000_0000)]));
        assert_eq!(super::parse_overhead(log), Some(323));
        assert_eq!(super::parse_carveout("rampart: carve-out"), None);
        assert_eq!(super::parse_carveout("rampart: carve-out [0x1, 0x2) + [zz, 0x3): x"), None);
    }

    #[test]
    fn parses_the_ipa_size() {
        let log = "rampart: host stage 2: 2 RAM and 8 device ranges, 39-bit IPA from level 1 (40-bit PA); 3 pool pages left\n";
        assert_eq!(super::parse_ipa_bits(log), Some(39));
        assert_eq!(super::parse_ipa_bits("rampart: host stage 2: nothing"), None);
    }

    #[test]
    fn every_guest_failure_in_a_passing_run_is_marked_expected() {
        let console = "PASS vm-hello\n  [hello] GUEST-DONE 13 passed, 0 failed\n\
            \x20 [attacker] GUEST-FAIL read-past-ram: access to 0x80100000 completed, read 0x0   <- expected by this check\n\
            \x20 [attacker] GUEST-DONE 13 passed, 2 failed   <- expected: only the failures this check causes\n\
            \x20 [smp/1] GUEST-FAIL psci: oops\n\
            \x20 [smp] GUEST-DONE 9 passed, 1 failed\n\
            FAIL vm-smp: 1 guest checks failed\n";
        assert_eq!(
            super::unmarked_guest_failures(console),
            ["  [smp/1] GUEST-FAIL psci: oops", "  [smp] GUEST-DONE 9 passed, 1 failed"]
        );
        assert!(super::unmarked_guest_failures("  [hello] GUEST-DONE 13 passed, 0 failed\n").is_empty());
    }

    #[test]
    fn recognises_smmu_fault_lines() {
        assert!(super::is_smmu_fault_line("rampart: SMMU fault: F_TRANSLATION stream 0x8 address 0x40200000"));
        assert!(super::is_smmu_fault_line("rampart: smmu: fault event 0x10, stream 0x8"));
        assert!(super::is_smmu_fault_line("SMMU event queue overflowed: events were lost"));
        assert!(!super::is_smmu_fault_line("rampart: SMMUv3 at [0x9050000, 0x9070000): owned"));
        assert!(!super::is_smmu_fault_line("  dma: no fault seen"));
    }

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(parse_summary("12 passed, 0 failed"), Some((12, 0)));
        assert_eq!(parse_summary("  3 passed, 2 failed\r"), Some((3, 2)));
        assert_eq!(parse_summary("passed, failed"), None);
        assert_eq!(parse_summary("PASS psci"), None);
    }
}
