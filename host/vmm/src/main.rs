//! `rampart-vmm`: runs signed Rampart bundles as VMs from an unmodified
//! Linux host, through the control pages and guest pool the hypervisor
//! describes in the host's device tree (`/dev/mem`). See `README.md`.

mod bus;
mod console;
mod dt;
mod fuzz;
mod hostile;
mod hyp;
mod linux;
mod mem;
mod migrate;
mod plan;
mod pool;
mod rsi_host_call;
mod run;
mod scan;
mod session;
mod signals;
mod stats;
mod swap;
mod virtio;
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use rampart_abi::Error;
use rampart_abi::host::PAGE_SIZE;
use rampart_attest::{Bundle, BundleRef};

use crate::plan::{Overrides, Plan};
use crate::run::{Options, Outcome, Run};
use crate::session::{Env, Session};

/// Exit status: a command-line (usage) error, as clap reports it.
const EXIT_USAGE: u8 = 2;
/// Exit status: the guest (or a VMM check) reported failures.
const EXIT_GUEST_FAILED: u8 = 3;
/// Exit status: the hypervisor refused the bundle (distinct from a usage
/// error, which is 2 as for every command-line tool).
const EXIT_REFUSED: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "rampart-vmm",
    version,
    about = "Run signed Rampart bundles as VMs from a Linux host (through /dev/mem)",
    after_help = "SIZE and OFFSET: decimal or 0x hex; SIZE may end in K, M or G.\n\
                  Exit status: 0 ok, 1 error, 2 usage error, 3 the guest reported failures, 4 the hypervisor refused the bundle, 128+N stopped by signal N."
)]
struct Cli {
    /// The device tree's root (default: /proc/device-tree, then /sys/firmware/devicetree/base).
    #[arg(long, global = true, value_name = "DIR")]
    dt: Option<PathBuf>,
    /// The physical-memory device.
    #[arg(long, global = true, default_value = "/dev/mem", value_name = "PATH")]
    dev_mem: String,
    /// Where the pool allocation table and statistics live.
    #[arg(
        long,
        global = true,
        default_value = "/run/rampart-vmm",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a bundle as a VM until it powers off (or SIGINT/SIGTERM).
    Run {
        /// The signed bundle (`rampart sign`); or --kernel.
        #[arg(required_unless_present = "kernel", conflicts_with = "kernel")]
        bundle: Option<PathBuf>,
        /// Boot this arm64 Linux `Image` as a non-protected guest instead of a bundle.
        #[arg(long, value_name = "IMAGE")]
        kernel: Option<PathBuf>,
        /// The guest's initrd (with --kernel).
        #[arg(long, value_name = "FILE", requires = "kernel")]
        initrd: Option<PathBuf>,
        /// The guest's kernel command line (with --kernel).
        #[arg(long, value_name = "TEXT", requires = "kernel")]
        cmdline: Option<String>,
        /// Guest RAM; must equal the manifest's (the signature covers it).
        #[arg(long, value_name = "SIZE", value_parser = plan::parse_size)]
        mem: Option<u64>,
        /// vCPUs; must equal the manifest's (the signature covers it).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_VCPUS_ARG))]
        cpus: Option<u32>,
        /// Run even if --mem/--cpus differ from the manifest (a protected VM is then refused).
        #[arg(long)]
        ignore_manifest: bool,
        /// The name console lines are prefixed with (default: the bundle's file name).
        #[arg(long)]
        name: Option<String>,
        /// Place the VM at this byte offset in the guest pool instead of the first free range.
        #[arg(long, value_name = "OFFSET", value_parser = plan::parse_size)]
        pool_offset: Option<u64>,
        /// Stage-2 table pages beyond the minimum (default: estimated from the memory size).
        #[arg(long, value_name = "N")]
        stage2_pages: Option<u64>,
        /// Stop the VM at a memory fault instead of declining it (the guest then gets an abort).
        #[arg(long)]
        stop_on_fault: bool,
        /// Print every exit to stderr.
        #[arg(long)]
        trace: bool,
        /// Hold the VM once built (guest memory donated, nothing run yet)
        /// until SIGUSR1; prints `holding, guest memory at A-B`.
        #[arg(long)]
        hold: bool,
        /// Hold the VM after the first console line containing TEXT (the
        /// vCPU that printed it waits) until SIGUSR1.
        #[arg(long, value_name = "TEXT")]
        hold_at: Option<String>,
        /// Hostile self-test: before the first run, make every host call on
        /// every kind of page of the VM's metadata and expect DENIED (exit 1
        /// if any is not refused).
        #[arg(long)]
        attack_metadata: bool,
        /// Donate all guest RAM before the first run instead of on the
        /// guest's first touch (issue 16); a VM that `migrate-out` is to
        /// move needs it (the stream carries only the pages the VM holds).
        #[arg(long)]
        all_ram_first: bool,
        /// virtio devices for a Linux guest (issue 11).
        #[command(flatten)]
        virtio: Box<virtio::VirtioArgs>,
        /// Sealed swap (issue 14).
        #[command(flatten)]
        swap: Box<swap::SwapArgs>,
    },
    /// Search physical RAM (a guest's, through /dev/mem) for byte patterns,
    /// counting the pages the hypervisor refuses to the host (issue 12).
    ScanRam {
        /// First byte (page-aligned).
        #[arg(long, value_name = "ADDR", value_parser = plan::parse_size)]
        phys: u64,
        /// Bytes (whole pages).
        #[arg(long, value_name = "SIZE", value_parser = plan::parse_size)]
        size: u64,
        /// A pattern to count, in hex (8 bytes or more); repeatable.
        #[arg(long = "find", value_name = "HEX", value_parser = scan::parse_pattern)]
        find: Vec<scan::Pattern>,
    },
    /// Pack a Linux kernel, initrd and command line with the device tree
    /// this VMM generates for them into an unsigned version-2 bundle, to
    /// sign with `rampart sign` and run as a protected VM (issue 12).
    Pack {
        /// The arm64 `Image`.
        #[arg(long, value_name = "IMAGE")]
        kernel: PathBuf,
        /// The initrd.
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// The kernel command line.
        #[arg(long, value_name = "TEXT", default_value = linux::DEFAULT_CMDLINE)]
        cmdline: String,
        /// Guest RAM (a multiple of 2 MiB).
        #[arg(long, value_name = "SIZE", value_parser = plan::parse_size, default_value = "256M")]
        mem: u64,
        /// vCPUs.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_VCPUS_ARG))]
        cpus: u32,
        /// A realm VM (guest ABI RSI, PSCI over SMC).
        #[arg(long)]
        realm: bool,
        /// virtio-mmio transports the measured device tree declares (a
        /// realm's `run` attaches as many: disks, entropy, console, vsock).
        #[arg(long, value_name = "N", default_value_t = 0, requires = "realm")]
        virtio_devices: u32,
        /// A debug VM.
        #[arg(long)]
        debug: bool,
        /// The bundle to write.
        #[arg(short = 'o', long, value_name = "FILE")]
        out: PathBuf,
    },
    /// List every live VM (VM_LIST) and the VMM that owns it.
    List,
    /// Statistics of running VMMs and of the last finished run.
    Stats,
    /// Destroy VMs left by VMMs that were killed (with --all: every VM).
    Reclaim {
        /// Also destroy VMs whose VMM is still running.
        #[arg(long)]
        all: bool,
    },
    /// What the device tree and the allocation table say.
    Info,
    /// Move a running VM (a protected one `rampart-vmm run` runs) to
    /// another Rampart machine, sealed by the hypervisors (issue 14). The
    /// VM stops here for good; `migrate-in` on the destination runs it on.
    MigrateOut(migrate::OutArgs),
    /// Receive a VM from `migrate-out` and run it to its end, as `run`
    /// does (issue 14).
    MigrateIn(migrate::InArgs),
    /// Print a shell completion script to stdout (e.g. `rampart-vmm
    /// completions bash > /etc/bash_completion.d/rampart-vmm`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout (e.g. `rampart-vmm man |
    /// man -l -`).
    Man,
    /// Test: fuzz the control pages from PROCS processes with seeded
    /// random requests (installed as `rampart-fuzz`; docs/testing.md).
    /// Exit 0 only if nothing unexpected happened.
    #[command(hide = true)]
    Fuzz {
        /// Worker processes (each with its own channel, plus one channel
        /// they all share).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=14))]
        procs: u32,
        /// Requests per process.
        #[arg(long, default_value_t = 10_000)]
        calls: u64,
        /// The seed (decimal or 0x hex).
        #[arg(long, default_value = "1", value_parser = fuzz::parse_seed)]
        seed: u64,
    },
    /// Hostile test: create a VM and donate it PAGES pages of host RAM at
    /// ADDRESS, such as pages the host kernel itself uses (the hypervisor
    /// allows it: the host owns them). The VM is kept; the kernel's next
    /// touch of those pages must be an abort it reports.
    #[command(hide = true)]
    DonateHostPages {
        /// Physical address (page-aligned).
        #[arg(value_parser = plan::parse_size)]
        address: u64,
        /// Pages.
        #[arg(default_value_t = 1)]
        pages: u64,
    },
    /// Hidden: a socat for the vsock tests (both ends; docs in
    /// `virtio/vsock_cli.rs`): `vsock connect unix:SOCKET:PORT`,
    /// `vsock listen unix:PATH`, `vsock connect vsock:CID:PORT`,
    /// `vsock listen vsock:PORT`.
    #[command(hide = true)]
    Vsock {
        /// `connect` or `listen`.
        #[arg(value_parser = ["connect", "listen"])]
        mode: String,
        /// The endpoint.
        endpoint: String,
        /// Write back everything read.
        #[arg(long)]
        echo: bool,
        /// Measure N round trips of 64 bytes against an echo.
        #[arg(long, value_name = "N")]
        ping: Option<u32>,
        /// Keep trying to connect for this many seconds.
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        retry: u64,
    },
}

/// `--cpus`' upper bound: the ABI's vCPU limit (`VM_CREATE`).
#[allow(clippy::cast_possible_wrap, reason = "a small constant")]
const MAX_VCPUS_ARG: i64 = rampart_abi::host::MAX_VCPUS as i64;

/// Parses the command line. Usage errors exit 2 (clap's status for them,
/// and the usual one); `--help`/`--version` print to stdout and exit 0.
fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    if let Some(cli) = quick_run(&args) {
        return Ok(cli);
    }
    Cli::try_parse_from(args)
}

/// The launch's common command line, `rampart-vmm run BUNDLE [--name
/// NAME]`, without building clap's parser (about 20 ms of a launch under
/// TCG, most of the time before the run command starts). Anything else
/// (another option, a value that starts with `-`, `--`, non-UTF-8) is left
/// to clap; a test checks both agree on what this accepts.
fn quick_run(args: &[std::ffi::OsString]) -> Option<Cli> {
    let mut words = args.iter().skip(1).map(|a| a.to_str());
    if words.next()?? != "run" {
        return None;
    }
    let plain = |w: &str| !w.is_empty() && !w.starts_with('-');
    let (mut bundle, mut name) = (None, None);
    while let Some(word) = words.next() {
        let word = word?;
        if let Some(value) = word.strip_prefix("--name=") {
            if name.is_some() || !plain(value) {
                return None;
            }
            name = Some(value.to_string());
        } else if word == "--name" {
            let value = words.next()??;
            if name.is_some() || !plain(value) {
                return None;
            }
            name = Some(value.to_string());
        } else if plain(word) && bundle.is_none() {
            bundle = Some(PathBuf::from(word));
        } else {
            return None;
        }
    }
    Some(Cli {
        dt: None,
        dev_mem: "/dev/mem".to_string(),
        state_dir: PathBuf::from("/run/rampart-vmm"),
        command: Command::Run {
            bundle: Some(bundle?),
            kernel: None,
            initrd: None,
            cmdline: None,
            mem: None,
            cpus: None,
            ignore_manifest: false,
            name,
            pool_offset: None,
            stage2_pages: None,
            stop_on_fault: false,
            trace: false,
            hold: false,
            hold_at: None,
            attack_metadata: false,
            all_ram_first: false,
            // clap's defaults: no devices but entropy (`--rng` defaults to
            // true); a bundle run refuses any other device option.
            virtio: Box::new(virtio::VirtioArgs {
                rng: true,
                ..virtio::VirtioArgs::default()
            }),
            swap: Box::default(),
        },
    })
}

/// The exit status for a command-line error: 0 for `--help`/`--version`,
/// [`EXIT_USAGE`] for anything else.
fn usage_status(e: &clap::Error) -> u8 {
    if e.use_stderr() { EXIT_USAGE } else { 0 }
}

/// `completions SHELL`: the script for `shell`, into `out`.
fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "rampart-vmm", out);
}

/// `man`: the manual page (roff), into `out`.
///
/// # Errors
///
/// If writing fails.
fn write_man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    clap_mangen::Man::new(Cli::command()).render(out)
}

fn main() -> ExitCode {
    stats::mark_start();
    stats::launch_trace("main");
    let cli = match parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(usage_status(&e));
        }
    };
    stats::launch_trace("command line parsed");
    signals::set_dev_mem(&cli.dev_mem);
    signals::install_bus_error();
    let env = Env {
        dt_roots: cli.dt.clone().map_or_else(
            || dt::DEFAULT_ROOTS.iter().map(PathBuf::from).collect(),
            |d| vec![d],
        ),
        dev_mem: cli.dev_mem.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let result = match cli.command {
        Command::Run {
            kernel: Some(_),
            ref swap,
            ..
        } if swap.swap.is_some() => Err(anyhow!(
            "--swap runs a bundle (a protected VM); it is not built for Linux guests (--kernel)"
        )),
        Command::Run {
            kernel: Some(kernel),
            initrd,
            cmdline,
            mem,
            cpus,
            name,
            trace,
            virtio,
            ..
        } => {
            let name = name.unwrap_or_else(|| "linux".into());
            virtio::devices(&virtio, &name, &env.state_dir).and_then(|devices| {
                linux::cmd_run(
                    &env,
                    linux::Config {
                        kernel,
                        initrd,
                        cmdline: cmdline.unwrap_or_else(|| linux::DEFAULT_CMDLINE.into()),
                        memory_size: mem.unwrap_or(linux::DEFAULT_MEMORY),
                        vcpus: cpus.unwrap_or(1),
                        name,
                        trace,
                        devices,
                    },
                )
            })
        }
        Command::Run {
            bundle: Some(bundle),
            mem,
            cpus,
            ignore_manifest,
            name,
            pool_offset,
            stage2_pages,
            stop_on_fault,
            trace,
            hold,
            hold_at,
            attack_metadata,
            all_ram_first,
            swap,
            virtio,
            ..
        } => cmd_run(
            &env,
            &bundle,
            &Overrides {
                memory_size: mem,
                vcpus: cpus,
                ignore_manifest,
                stage2_pages,
            },
            name,
            pool_offset,
            Options {
                stop_on_fault,
                trace,
            },
            &Hold {
                before_run: hold,
                at_line: hold_at,
                attack_metadata,
                all_ram_first,
            },
            &swap,
            &virtio,
        ),
        Command::Run { bundle: None, .. } => Err(anyhow!("run needs a bundle or --kernel IMAGE")),
        Command::ScanRam { phys, size, find } => {
            scan::cmd_scan(&env.dev_mem, phys, size, &find).map(|_| ExitCode::SUCCESS)
        }
        Command::Pack {
            kernel,
            initrd,
            cmdline,
            mem,
            cpus,
            realm,
            virtio_devices,
            debug,
            out,
        } => linux::bundle::cmd_pack(&linux::bundle::PackArgs {
            kernel,
            initrd,
            cmdline,
            memory_size: mem,
            vcpus: cpus,
            realm,
            virtio_devices,
            debug,
            out,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::List => cmd_list(&env).map(|()| ExitCode::SUCCESS),
        Command::Stats => cmd_stats(&env).map(|()| ExitCode::SUCCESS),
        Command::Reclaim { all } => cmd_reclaim(&env, all).map(|()| ExitCode::SUCCESS),
        Command::Info => cmd_info(&env).map(|()| ExitCode::SUCCESS),
        Command::MigrateOut(args) => migrate::cmd_out(&env, &args),
        Command::MigrateIn(args) => migrate::cmd_in(&env, &args),
        Command::Completions { shell } => {
            write_completions(shell, &mut std::io::stdout().lock());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => write_man(&mut std::io::stdout().lock())
            .map(|()| ExitCode::SUCCESS)
            .context("writing the manual page"),
        Command::Fuzz { procs, calls, seed } => {
            fuzz::run(&env, fuzz::Options { procs, calls, seed }).map(|ok| {
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_GUEST_FAILED)
                }
            })
        }
        Command::DonateHostPages { address, pages } => {
            cmd_donate_host_pages(&env, address, pages).map(|()| ExitCode::SUCCESS)
        }
        Command::Vsock {
            mode,
            endpoint,
            echo,
            ping,
            retry,
        } => virtio::vsock_cli::parse_endpoint(&endpoint, mode == "listen")
            .map_err(|e| anyhow!("{endpoint}: {e}"))
            .and_then(|ep| virtio::vsock_cli::run(&ep, echo, ping, Duration::from_secs(retry)))
            .map(|summary| {
                eprintln!("{summary}");
                ExitCode::SUCCESS
            }),
    };
    stats::launch_trace_flush();
    result.unwrap_or_else(|e| {
        eprintln!("rampart-vmm: {e:#}");
        ExitCode::FAILURE
    })
}

/// The name for console lines: `hello` for `build/guests/hello.bundle`.
fn default_name(path: &Path) -> String {
    let file = path.file_name().and_then(|s| s.to_str()).unwrap_or("guest");
    file.strip_suffix(".bundle").unwrap_or(file).to_string()
}

fn refusal_hints(b: &BundleRef<'_>, plan: &Plan, code: i64) -> Vec<String> {
    let mut hints = Vec::new();
    if plan.differs_from_manifest {
        hints.push("--mem/--cpus differ from the signed manifest, so the VM's measurement is not the one signed".into());
    }
    match Error::try_from(code) {
        Ok(Error::NotSigned) => hints.push("the bundle is unsigned: sign it with `rampart sign --key KEY ...`".into()),
        Ok(Error::UntrustedKey) => hints.push(format!(
            "the signer {} is not among the hypervisor's trusted keys (RAMPART_TRUSTED_KEYS at build time, or /chosen/rampart,trusted-key)",
            hex(&b.signer)
        )),
        Ok(Error::BadSignature) if !plan.differs_from_manifest => {
            if b.computed_measurement() == b.measurement {
                hints.push(
                    "the bundle is self-consistent, so the signature itself does not verify for its measurement".into(),
                );
            } else {
                hints.push(
                    "the bundle's image or manifest no longer matches its measurement field: the bundle was modified after signing".into(),
                );
            }
        }
        _ => {}
    }
    hints
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `run --hold` / `--hold-at`.
struct Hold {
    before_run: bool,
    at_line: Option<String>,
    /// `--attack-metadata` (see `hostile`).
    attack_metadata: bool,
    /// `--all-ram-first`: no guest RAM on first touch (issue 16).
    all_ram_first: bool,
}

/// Prints the holding line and waits for SIGUSR1; returns a termination
/// signal that came instead.
fn hold(name: &str, when: &str, ram: u64, size: u64) -> Option<i32> {
    use std::io::Write;
    println!(
        "[{name}] rampart-vmm: holding {when}, guest memory at {ram:#x}-{:#x}; `kill -USR1 {}` to go on",
        ram + size - 1,
        std::process::id()
    );
    let _ = std::io::stdout().flush();
    let r = signals::wait_continue(&signals::pending).err();
    if r.is_none() {
        println!("[{name}] rampart-vmm: going on");
    }
    r
}

#[allow(
    clippy::too_many_lines,
    clippy::too_many_arguments,
    reason = "the run, step by step"
)]
fn cmd_run(
    env: &Env,
    path: &Path,
    over: &Overrides,
    name: Option<String>,
    pool_offset: Option<u64>,
    options: Options,
    holding: &Hold,
    swap_args: &swap::SwapArgs,
    virtio_args: &virtio::VirtioArgs,
) -> Result<ExitCode> {
    stats::launch_trace("run command");
    // From here on the first SIGINT/SIGTERM is a request to stop cleanly.
    signals::install();
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("reading {shown}"))?;
    stats::launch_trace("bundle read");
    let bundle = Bundle::parse(&bytes).map_err(|e| anyhow!("{shown}: malformed bundle: {e}"))?;
    if bundle.linux.is_some() {
        // issue 12: a version-2 bundle is a protected Linux VM.
        let name = name.unwrap_or_else(|| default_name(path));
        return linux::bundle::cmd_run(
            env,
            path,
            &bundle,
            name,
            over.memory_size,
            over.vcpus,
            options.trace,
            virtio_args,
        );
    }
    if virtio_args.any_device() {
        anyhow::bail!("--disk, --vsock and --virtio-console need a Linux guest (--kernel, or a realm's version-2 bundle)");
    }
    let plan = plan::plan(&bundle, over).with_context(|| shown.clone())?;
    let name = name.unwrap_or_else(|| default_name(path));
    let vcpus = usize::try_from(plan.config.max_vcpus)?;
    stats::launch_trace("bundle read and planned");

    let swap_limit = match swap_args.swap {
        Some(_) => Some(swap_args.limit(plan.memory_pages())?),
        None => None,
    };
    // --swap: one more page after the plan's, the staging page.
    let extra_pages = if swap_limit.is_some() {
        swap::EXTRA_POOL_PAGES
    } else {
        0
    };
    // The table is written once, with the VM, right after VM_CREATE.
    let session = Session::open_for_vm(
        env,
        plan.total_pages() + extra_pages,
        // One channel per vCPU thread; vCPU 0 runs on the main thread,
        // whose other calls come before and after, on the first channel.
        u32::try_from(vcpus)?,
        pool_offset,
        &name,
    )?;
    stats::launch_trace("session open");
    let channels = session.channels();
    let main = &channels[0];
    let (major, minor) = session.abi;
    stats::launch_trace("channels bound");
    // Only the image's pages are mapped to load it; the whole region is
    // mapped when first needed, after the guest runs (issue 16: mapping
    // through /dev/mem costs the kernel a check of every page).
    let region = session.lazy_region()?;
    let loading = session.map_region_prefix(bundle.image.len())?;
    stats::launch_trace("image pages mapped");
    let place = vm::Placement {
        region_phys: session.region_phys(),
    };
    let loaded = vm::load_image(&loading, &plan, bundle.image);
    stats::launch_trace("image loaded");
    // Issue 16: guest RAM given on first touch, unless something needs
    // all of it before the first run: `--swap` (its limit and evictions
    // count every page), `--hold` (the hold shows guest memory donated),
    // `--all-ram-first` (a VM to migrate: the stream carries only the
    // pages it holds).
    let lazy = swap_limit.is_none() && !holding.before_run && !holding.all_ram_first;
    let record = |h| session.set_vm(h);
    let (handle, on_demand) = if lazy {
        vm::create_on_demand(main, &region, &plan, &place, &bundle, &loaded, &mut { record })
    } else {
        vm::create_loaded(main, &region, &plan, &place, &bundle, &loaded, &mut { record })
            .map(|h| (h, None))
    }
    .with_context(|| format!("setting up the VM for {shown}"))?;
    println!(
        "[{name}] rampart-vmm: VM {handle:#x} ({}, {vcpus} vCPU{}, {} KiB of RAM at {:#x}, {} metadata pages; ABI {major}.{minor}; channels {:?})",
        if plan.config.protected {
            "protected"
        } else {
            "not protected"
        },
        if vcpus == 1 { "" } else { "s" },
        plan.memory_size / 1024,
        place.ram(&plan),
        plan.metadata_pages,
        session.entry.channel_list(),
    );
    if let Some(d) = &on_demand {
        println!(
            "[{name}] rampart-vmm: guest RAM given on first touch: {} of {} pages before the first run",
            d.given_pages(),
            plan.memory_pages()
        );
    }

    let mut attacks_accepted = 0;
    if holding.attack_metadata {
        let metadata = place.metadata(&plan);
        let findings = hostile::attack_metadata(
            main,
            handle,
            metadata,
            plan.metadata_pages,
            plan.config.max_vcpus,
        );
        for accepted in &findings.accepted {
            eprintln!("rampart-vmm: metadata attack NOT refused: {accepted}");
        }
        attacks_accepted = findings.accepted.len();
        println!(
            "[{name}] rampart-vmm: metadata attacks on {metadata:#x} ({} pages): {} calls refused with DENIED, {attacks_accepted} not",
            plan.metadata_pages, findings.refused
        );
    }

    let counters = stats::Counters::default();
    stats::launch_trace("VM ready");
    stats::Counters::reached(&counters.vm_ready_us);
    let ram = place.ram(&plan);
    let held_before = if holding.before_run {
        hold(&name, "before the first run", ram, plan.memory_size)
    } else {
        None
    };
    let started = Instant::now();
    let signal = signals::pending;
    let hold_at = |at: &str| hold(&name, &format!("at `{at}`"), ram, plan.memory_size);
    let at_line = holding.at_line.as_deref().unwrap_or_default();
    let hold_at_line = || hold_at(at_line);
    let swapper = match (&swap_args.swap, swap_limit) {
        (Some(path), Some(limit)) => {
            match region.get().map_err(|e| anyhow!(e)).and_then(|mapped| {
                swap::Swap::new(
                swap_args,
                path,
                handle,
                mapped,
                place.region_phys,
                plan.memory_pages(),
                plan.total_pages() * PAGE_SIZE,
                limit,
            )
            }) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = vm::destroy(main, handle);
                    session.close();
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    let swap_failures = std::sync::atomic::AtomicUsize::new(0);
    let after_trim = |hyp: &dyn hyp::Hyp| {
        if let Some(s) = &swapper {
            let failed = swap::after_trim(&name, s, hyp);
            swap_failures.fetch_add(failed, Ordering::Relaxed);
        }
    };
    let mut run = Run::new(&name, handle, &plan, &region, &counters, options, &signal);
    if !at_line.is_empty() {
        run = run.with_hold_at(at_line, &hold_at_line);
    }
    if let Some(s) = &swapper {
        run = run.with_swap(s, Some(&after_trim));
    }
    if let Some(d) = &on_demand {
        run = run.with_on_demand(d);
    }
    if let Some(sig) = held_before {
        run.finish(Outcome::Interrupted(sig));
    }
    let files = stats::Files::new(&env.state_dir);
    let report = |state: &str, result: &str, reclaimed: Option<u64>| {
        let header = stats::Header {
            name: &name,
            bundle: &shown,
            vm: handle,
            vcpus,
            protected: plan.config.protected,
            ram_pages: plan.memory_pages(),
            metadata_pages: plan.metadata_pages,
            region: place.region_phys,
            wall_ms: started.elapsed().as_millis(),
            state,
            result,
        };
        stats::render(&header, &counters, reclaimed)
    };
    run.run_vcpus(vcpus, &channels, &|| {
        let summary = run.tally.lock().map(|t| t.summary()).unwrap_or_default();
        let _ = files.write_live(&report("running", &summary, None));
    });
    let outcome = run
        .outcome()
        .unwrap_or_else(|| Outcome::Error("every vCPU thread stopped without a reason".into()));
    if let (Outcome::Interrupted(sig), Some(at)) = (&outcome, signals::pending_at_ns()) {
        // A running vCPU returns from VCPU_RUN at the latest at the host's
        // next tick (the hypervisor keeps the host's timer while a guest
        // runs), then sees the signal.
        let stopped = counters.vcpus_stopped_ns.load(Ordering::Acquire);
        let us = stopped.saturating_sub(at) / 1000;
        println!(
            "[{name}] rampart-vmm: vCPU threads stopped {}.{:03} ms after signal {sig}",
            us / 1000,
            us % 1000
        );
    }

    if let Some(s) = &swapper {
        let failed = swap::at_end(&name, s, swap_args, plan.total_pages() + extra_pages);
        swap_failures.fetch_add(failed, Ordering::Relaxed);
        attacks_accepted += swap_failures.load(Ordering::Relaxed);
    }
    if outcome == Outcome::Exported {
        // Issue 14: the export destroys the VM when it ends.
        migrate::wait_until_gone(main, handle, &name);
    }
    let destroyed = match vm::destroy(main, handle) {
        Err(e) if e.error() == Some(Error::InvalidParameter) => {
            // Someone else destroyed it (`rampart-vmm reclaim --all`): the
            // pages are the host's again all the same.
            eprintln!("rampart-vmm: VM {handle:#x} was already destroyed by another process");
            Ok(())
        }
        other => other,
    };
    let reclaimed = destroyed.is_ok().then_some(plan.total_pages());
    session.finish_teardown(&name, handle, plan.total_pages(), &destroyed);

    let tally = run.tally.lock().map(|t| t.clone()).unwrap_or_default();
    let text = report(&outcome.describe(), &tally.summary(), reclaimed);
    if let Err(e) = files.finish(&text) {
        eprintln!("rampart-vmm: warning: could not save statistics: {e:#}");
    }
    println!(
        "[{name}] rampart-vmm: {}; {}",
        outcome.describe(),
        tally.summary()
    );
    print!(
        "{}",
        text.lines()
            .map(|l| format!("[{name}] stats: {l}\n"))
            .collect::<String>()
    );
    let (calls, trapped) = hyp::trapped_accesses();
    #[allow(clippy::cast_precision_loss, reason = "a ratio for display")]
    let per_call = trapped as f64 / calls.max(1) as f64;
    println!(
        "[{name}] stats: host calls: {calls} through the control pages, {trapped} trapped accesses ({per_call:.2} per call)"
    );

    if let Outcome::Refused(code) = outcome {
        eprintln!(
            "rampart-vmm: the hypervisor refused {shown}: {}: {}",
            hyp::error_name(code),
            hyp::error_meaning(code)
        );
        for hint in refusal_hints(&bundle, &plan, code) {
            eprintln!("rampart-vmm:   {hint}");
        }
    }
    if let Outcome::Error(e) = &outcome {
        eprintln!("rampart-vmm: {shown}: {e}");
    }
    let code = ExitCode::from(run_status(
        &outcome,
        attacks_accepted > 0,
        tally.failed(),
        destroyed.is_ok(),
    ));
    Ok(code)
}

/// `run`'s exit status (README, "exit status") for how the run ended.
fn run_status(outcome: &Outcome, attack_accepted: bool, guest_failed: bool, destroyed: bool) -> u8 {
    match outcome {
        _ if attack_accepted => 1,
        Outcome::Refused(_) => EXIT_REFUSED,
        Outcome::Error(_) => 1,
        Outcome::Interrupted(s) => 128u8.saturating_add(u8::try_from(*s).unwrap_or(0)),
        Outcome::MemoryFault(_) => EXIT_GUEST_FAILED,
        Outcome::Exported => 0,
        Outcome::SystemOff | Outcome::SystemReset if guest_failed => EXIT_GUEST_FAILED,
        Outcome::SystemOff | Outcome::SystemReset => u8::from(!destroyed),
    }
}

fn owner_of(others: &[pool::Entry], vm: u64) -> String {
    others.iter().find(|e| e.vm == vm).map_or_else(
        || "no running rampart-vmm owns it (`rampart-vmm reclaim` destroys it)".to_string(),
        |e| format!("pid {} ({})", e.pid, e.name),
    )
}

fn cmd_list(env: &Env) -> Result<()> {
    let session = Session::open(env, 0, 1, None, "list")?;
    let vms = hyp::list_vms(&session.main_channel()).context("listing VMs")?;
    let others = session.others()?;
    if vms.is_empty() {
        println!("no live VMs");
    }
    for vm in vms {
        println!("{vm:#x}  {}", owner_of(&others, vm));
    }
    session.close();
    Ok(())
}

fn cmd_reclaim(env: &Env, all: bool) -> Result<()> {
    let session = Session::open(env, 0, 1, None, "reclaim")?;
    let channel = session.main_channel();
    let others = session.others()?;
    let mut destroyed = 0;
    let mut failed = 0;
    for vm in hyp::list_vms(&channel).context("listing VMs")? {
        if !all && let Some(e) = others.iter().find(|e| e.vm == vm) {
            println!("{vm:#x}: kept, pid {} ({}) is running it", e.pid, e.name);
            continue;
        }
        match vm::destroy(&channel, vm) {
            Ok(()) => {
                destroyed += 1;
                println!("{vm:#x}: destroyed, its pages are the host's again (zeroed)");
            }
            Err(e) => {
                failed += 1;
                eprintln!("{vm:#x}: {e}");
            }
        }
    }
    println!("reclaimed {destroyed} VM(s)");
    session.close();
    if failed > 0 {
        anyhow::bail!("{failed} VM(s) could not be destroyed");
    }
    Ok(())
}

fn cmd_stats(env: &Env) -> Result<()> {
    let files = stats::Files::new(&env.state_dir);
    let (live, last) = files.read(|pid| pool::alive(&env.state_dir, pid));
    if live.is_empty() {
        println!("no VMs running under rampart-vmm");
    }
    for text in live {
        println!("== running ==\n{text}");
    }
    match last {
        Some(text) => println!(
            "== last finished run ({}) ==\n{text}",
            files.last().display()
        ),
        None => println!("no finished run recorded in {}", files.last().display()),
    }
    Ok(())
}

fn cmd_donate_host_pages(env: &Env, address: u64, pages: u64) -> Result<()> {
    use rampart_abi::host::{HostCall, VmConfig};
    let config = VmConfig {
        protected: false,
        debug: false,
        max_vcpus: 1,
    };
    let metadata_pages = config.min_metadata_pages() + 4;
    let session = Session::open(env, metadata_pages, 1, None, "donate-host-pages")?;
    let channel = session.main_channel();
    let r = hyp::checked(
        &channel,
        HostCall::VmCreate.id(),
        &[session.region_phys(), metadata_pages, config.encode()],
    )?;
    let handle = r[1];
    session.set_vm(handle);
    let r = hyp::call(
        &channel,
        HostCall::VmDonate.id(),
        &[handle, address, pages, rampart_abi::guest::GUEST_RAM_BASE],
    );
    #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed SMCCC code")]
    let code = r[0] as i64;
    println!(
        "rampart-vmm: VM_DONATE of {pages} host page(s) at {address:#x} to VM {handle:#x}: {}",
        hyp::error_name(code)
    );
    // The VM keeps the pages; a later `rampart-vmm reclaim` gives them back.
    std::mem::forget(session);
    Ok(())
}

fn cmd_info(env: &Env) -> Result<()> {
    let root = dt::root(&env.dt_roots)?;
    let p = dt::discover(&root)?;
    println!("device tree: {}", root.display());
    println!("control pages: {} ({} channels)", p.control, p.channels);
    println!("guest pool: {}", p.pool);
    let session = Session::open(env, 0, 1, None, "info")?;
    let (major, minor) = session.abi;
    println!("host ABI: {major}.{minor}");
    for e in session.others()? {
        println!(
            "pid {} ({}): pool {:#x}..{:#x} ({} pages), channels {:?}, VM {:#x}",
            e.pid,
            e.name,
            p.pool.base + e.offset,
            p.pool.base + e.end(),
            e.pages,
            e.channel_list(),
            e.vm
        );
    }
    session.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(args: &[&str]) -> Option<u8> {
        parse_cli(args).err().map(|e| usage_status(&e))
    }

    #[test]
    fn the_quick_run_parse_agrees_with_clap() {
        let os = |a: &[&str]| -> Vec<std::ffi::OsString> { a.iter().map(Into::into).collect() };
        for accepted in [
            &["rampart-vmm", "run", "x.bundle"][..],
            &[
                "rampart-vmm",
                "run",
                "/guests/hello.bundle",
                "--name",
                "bench1-hello",
            ],
            &["rampart-vmm", "run", "--name", "n", "x.bundle"],
            &["rampart-vmm", "run", "x.bundle", "--name=n.before"],
        ] {
            let quick =
                quick_run(&os(accepted)).unwrap_or_else(|| panic!("{accepted:?} not taken"));
            let clap = Cli::try_parse_from(accepted).expect("clap parses it");
            assert_eq!(format!("{quick:?}"), format!("{clap:?}"), "{accepted:?}");
        }
        // Everything else goes to clap (which may accept or refuse it).
        for other in [
            &["rampart-vmm", "run"][..],
            &["rampart-vmm", "run", "x.bundle", "y.bundle"],
            &["rampart-vmm", "run", "x.bundle", "--trace"],
            &["rampart-vmm", "run", "x.bundle", "--name"],
            &["rampart-vmm", "run", "x.bundle", "--name", "-n"],
            &[
                "rampart-vmm",
                "run",
                "x.bundle",
                "--name",
                "a",
                "--name",
                "b",
            ],
            &["rampart-vmm", "run", "--", "x.bundle"],
            &["rampart-vmm", "run", "-x"],
            &["rampart-vmm", "--dev-mem", "/tmp/m", "run", "x.bundle"],
            &["rampart-vmm", "list"],
            &["rampart-vmm"],
        ] {
            assert!(quick_run(&os(other)).is_none(), "{other:?}");
        }
    }

    #[test]
    fn usage_errors_exit_2_and_help_and_version_exit_0() {
        assert_eq!(
            status(&["rampart-vmm", "run", "x.bundle", "--cpus", "0"]),
            Some(2)
        );
        assert_eq!(
            status(&["rampart-vmm", "run", "x.bundle", "--cpus", "64"]),
            Some(2)
        );
        assert_eq!(
            status(&["rampart-vmm", "run", "x.bundle", "--mem", "1X"]),
            Some(2)
        );
        assert_eq!(status(&["rampart-vmm", "nonsense"]), Some(2));
        assert_eq!(status(&["rampart-vmm"]), Some(2));
        assert_eq!(status(&["rampart-vmm", "--version"]), Some(0));
        assert_eq!(status(&["rampart-vmm", "--help"]), Some(0));
        assert_eq!(
            status(&["rampart-vmm", "run", "x.bundle", "--cpus", "8"]),
            None
        );
        assert_eq!(status(&["rampart-vmm", "completions", "bash"]), None);
        assert_eq!(status(&["rampart-vmm", "completions", "tcsh"]), Some(2));
    }

    #[test]
    fn every_documented_status_is_distinct_from_a_usage_error() {
        let refused = run_status(&Outcome::Refused(-8), false, false, true);
        assert_eq!(refused, EXIT_REFUSED);
        let statuses = [
            run_status(&Outcome::SystemOff, false, false, true),
            run_status(&Outcome::Error("x".into()), false, false, true),
            run_status(&Outcome::SystemOff, false, true, true),
            refused,
            run_status(&Outcome::Interrupted(libc::SIGINT), false, false, true),
        ];
        assert_eq!(statuses, [0, 1, 3, 4, 130]);
        assert!(!statuses.contains(&EXIT_USAGE));
        assert_eq!(run_status(&Outcome::SystemOff, false, false, false), 1);
        assert_eq!(run_status(&Outcome::Refused(-8), true, false, true), 1);
    }

    #[test]
    fn completions_and_man_page_cover_the_commands() {
        let mut bash = Vec::new();
        write_completions(clap_complete::Shell::Bash, &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(
            bash.contains("rampart-vmm") && bash.contains("reclaim"),
            "{bash}"
        );
        assert!(bash.contains("--stop-on-fault"), "{bash}");
        let mut man = Vec::new();
        write_man(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH rampart-vmm"),
            "{man}"
        );
        assert!(man.contains("refused"), "the exit statuses are in the page");
    }
}
