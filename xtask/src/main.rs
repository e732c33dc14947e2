//! `cargo xtask`: Rampart's single entry point — build, run, test, bench.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

mod abi_docs;
mod artifacts;
mod attest;
mod bench;
mod ccacheck;
mod fuzz;
mod guests;
mod linux;
mod linux_guest;
mod linux_migrate;
mod linux_realm;
mod linux_swap;
mod linux_vmm;
mod migrate;
mod prereq;
mod qemu;
mod suite;
mod virtio_e2e;

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark Rampart")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the hypervisor and the test host images into build/.
    Build,
    /// Boot Rampart under QEMU with a host and stream the console.
    Run(RunArgs),
    /// Run the whole test suite (what CI runs).
    Test(suite::TestArgs),
    /// Run a benchmark.
    Bench(bench::BenchArgs),
    /// Fuzz the hypervisor from the hostile test host (seeded, replayable).
    Fuzz(fuzz::FuzzArgs),
}

/// Which host Rampart deprivileges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Host {
    /// The bare-metal hostile test host (host/testhost).
    Testhost,
    /// Debian's stock arm64 kernel with a busybox initramfs.
    Linux,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The host to run under Rampart.
    #[arg(long, value_enum, default_value = "testhost")]
    host: Host,
    /// Number of CPUs.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// RAM size, as QEMU's -m takes it (512M, 2G...).
    #[arg(long, default_value = "512M")]
    mem: String,
    /// CPU model (max, cortex-a72, cortex-a57...).
    #[arg(long, default_value = "max")]
    cpu: String,
    /// Give up after this many seconds (default 300; 1800 for the
    /// protected Linux guest, a realm booted under TCG).
    #[arg(long)]
    timeout: Option<u64>,
    /// With --host linux: the host boots this guest with rampart-vmm
    /// (`linux`: Debian's sid kernel, 2 vCPUs; issue 11).
    #[arg(long, value_enum)]
    guest: Option<linux_guest::Guest>,
    /// With --guest linux: the guest's vCPUs (1 to 8).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    guest_cpus: u32,
    /// With --guest linux: boot it as a confidential realm VM from a signed
    /// bundle (issue 12): 2 vCPUs, its virtio disk through bounce buffers, an
    /// attestation token for the host's challenge that xtask verifies on
    /// this machine. `--guest realm` is the same.
    #[arg(long)]
    protected: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Run(args) = &cli.command {
        // Before building anything: a bad argument is one line, now.
        args.validate()?;
    }
    prereq::ensure_rust()?;
    match cli.command {
        Cmd::Build => {
            let hyp = artifacts::hypervisor()?;
            let host = artifacts::testhost()?;
            println!("{}\n{}", hyp.display(), host.display());
            Ok(())
        }
        Cmd::Run(args) => run(&args),
        Cmd::Test(args) => suite::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
    }
}

impl RunArgs {
    /// The checks that need nothing installed: CPU count, RAM size and
    /// 32-bit CPU models, each a one-line error naming the argument.
    fn validate(&self) -> Result<()> {
        if self.protected && self.guest != Some(linux_guest::Guest::Linux) {
            bail!("--protected: only with --host linux --guest linux (a realm guest)");
        }
        if self.guest.is_some() && self.host != Host::Linux {
            bail!("--guest: only with --host linux");
        }
        if self.realm() && self.guest_cpus != linux_realm::VCPUS {
            bail!(
                "--guest-cpus {}: the protected guest's signed bundle has {} vCPUs",
                self.guest_cpus,
                linux_realm::VCPUS
            );
        }
        let min_ram = qemu::min_ram(qemu::carveout_bytes());
        qemu::validate(self.smp, &self.mem, &self.cpu, qemu::hyp_max_cpus(), min_ram)
    }

    /// The protected Linux guest: `--guest linux --protected` or `--guest
    /// realm`.
    fn realm(&self) -> bool {
        self.host == Host::Linux
            && (self.guest == Some(linux_guest::Guest::Realm)
                || (self.guest == Some(linux_guest::Guest::Linux) && self.protected))
    }

    fn timeout(&self) -> u64 {
        self.timeout.unwrap_or(if self.realm() { 1800 } else { 300 })
    }
}

fn run(args: &RunArgs) -> Result<()> {
    prereq::ensure(&[&prereq::QEMU])?;
    qemu::check_cpu_model(&args.cpu)?;
    // The realm demo's signed bundle: its measurement is what the guest's
    // attestation token must carry.
    let mut realm_bundle = None;
    let mut machine = match args.host {
        Host::Testhost => suite::testhost_machine(args.smp, &args.mem, &args.cpu)?,
        Host::Linux if args.realm() => {
            let (m, signed) = linux_realm::machine()?;
            realm_bundle = Some(signed);
            m
        }
        Host::Linux if args.guest.is_some() => linux_guest::demo_machine(args.smp, args.guest_cpus)?,
        Host::Linux => linux_vmm::demo_machine(args.smp, &args.mem, &args.cpu)?,
    };
    // The demo's PCIe root complex sits behind the SMMU Rampart owns.
    machine.smmu = true;
    eprintln!("xtask: {}", machine.command_line());
    let timeout = args.timeout();
    let run = machine.run(Duration::from_secs(timeout), None, true)?;
    // The console was streamed; QEMU's own error and Rampart's reason for
    // stopping come before anything the demo's checks would say.
    let booted = run.console.contains("rampart: entering host");
    if let Some(cause) = run.cause()
        && (!booted || run.exit_code != Some(0))
    {
        let status = match run.exit_code {
            _ if run.timed_out => format!("did not finish within {timeout} s"),
            Some(c) => format!("exited with status {c}"),
            None => "was killed".to_string(),
        };
        let mut more: String = run.stderr.lines().filter(|l| l.trim() != cause).map(|l| format!("\n  | {l}")).collect();
        if !more.is_empty() {
            more.insert_str(0, "\n  QEMU also said:");
        }
        bail!("{cause}\n  (QEMU {status}){more}");
    }
    if run.timed_out {
        bail!("QEMU did not finish within {timeout} s");
    }
    match args.host {
        Host::Testhost => suite::after_demo(&run)?,
        Host::Linux if realm_bundle.is_some() => {
            let signed = realm_bundle.unwrap_or_default();
            println!(
                "xtask: verified on this machine, from the run's console:\n  {}",
                linux_realm::check_all(&run.console, &signed)?
            );
        }
        Host::Linux if args.guest.is_some() => linux_guest::after_demo(&run)?,
        Host::Linux => linux_vmm::after_demo(&run)?,
    }
    match run.exit_code {
        Some(0) => Ok(()),
        code => bail!("QEMU exited with {code:?}: {}", run.stderr.trim()),
    }
}
