//! `rampart-peer`: the peer of `rampart-vmm` in `cargo xtask bench peer`.
//!
//! A minimal VMM for Linux's own KVM (and so pKVM under
//! `kvm-arm.mode=protected`): it runs one of Rampart's bare-metal test
//! guests (`guest/README.md`) the way `rampart-vmm` runs it under Rampart —
//! the flat image at guest-physical `GUEST_RAM_BASE`, vCPU 0 entered there
//! in EL1h with `x0` = the RAM size, the console at `GUEST_UART_BASE`
//! (`UARTDR` writes print, the rest of the page reads 0 and ignores
//! writes) — and prints the guest's lines and the same `stats:` lines as
//! `rampart-vmm` (wall time, exits, launch milestones), which xtask reads.
//!
//! The VM is an ordinary (non-protected) KVM VM: Debian's 6.1 kernel has no
//! user-space interface to create a protected one, so under pKVM the guest
//! runs as pKVM's non-protected VM (its host still cannot reach pKVM's own
//! memory, but the VM's memory stays the host's).
//!
//! rust-vmm's `kvm-ioctls`/`kvm-bindings` wrap the ioctls: they are what
//! Firecracker and Cloud Hypervisor use, so the peer's cost per exit is
//! the cost of a typical Rust KVM VMM, not of hand-rolled ioctls.
//!
//! `rampart-peer run --kernel IMAGE ...` boots a Linux guest the way
//! `rampart-vmm run --kernel` does (the same virtual platform and options:
//! `boot.rs`, `linux.rs`), with KVM's in-kernel GICv3, timer and PSCI.
//! `rampart-peer time-to MARKER -- COMMAND...` times either VMM from its
//! start to a console line (`timeto.rs`).
//!
//! Usage: see [`report::USAGE`].
//! Exit status: 0 when the guest reported `GUEST-DONE` with 0 failed (a
//! Linux guest: powered off), 3 when it reported failures or powered off
//! without `GUEST-DONE` (a Linux guest: reset), 1 when the VM could not
//! run, 2 for bad arguments; `time-to`: COMMAND's.

#![cfg_attr(
    not(target_arch = "aarch64"),
    allow(dead_code, reason = "the VM runs on arm64 only")
)]

use std::process::ExitCode;
use std::time::Instant;

mod boot;
#[cfg(target_arch = "aarch64")]
mod linux;
mod report;
mod timeto;
#[cfg(target_arch = "aarch64")]
mod vm;

use report::{Args, Command, LinuxArgs, Outcome};

fn main() -> ExitCode {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match Command::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rampart-peer: {e}\n{}", report::USAGE);
            return ExitCode::from(2);
        }
    };
    let (name, result) = match &command {
        Command::Bare(a) => (a.name.as_str(), run(a, started)),
        Command::Linux(a) => (a.name.as_str(), run_linux(a, started)),
        Command::TimeTo { marker, argv } => {
            return timeto::run(marker, argv).unwrap_or_else(|e| {
                eprintln!("rampart-peer: time-to: FAIL {e:#}");
                ExitCode::from(1)
            });
        }
    };
    match result {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::GuestFailed) => ExitCode::from(3),
        Err(e) => {
            eprintln!("[{name}] rampart-peer: FAIL {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn run(args: &Args, started: Instant) -> anyhow::Result<Outcome> {
    vm::run(args, started)
}

#[cfg(target_arch = "aarch64")]
fn run_linux(args: &LinuxArgs, started: Instant) -> anyhow::Result<Outcome> {
    linux::run(args, started)
}

#[cfg(not(target_arch = "aarch64"))]
fn run(_args: &Args, _started: Instant) -> anyhow::Result<Outcome> {
    anyhow::bail!("runs only on an arm64 Linux host with /dev/kvm")
}

#[cfg(not(target_arch = "aarch64"))]
fn run_linux(_args: &LinuxArgs, _started: Instant) -> anyhow::Result<Outcome> {
    anyhow::bail!("runs only on an arm64 Linux host with /dev/kvm")
}
