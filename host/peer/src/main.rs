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
//! Usage: `rampart-peer run IMAGE [--mem MIB] [--name NAME]`.
//! Exit status: 0 when the guest reported `GUEST-DONE` with 0 failed, 3
//! when it reported failures or powered off without `GUEST-DONE`, 1 when
//! the VM could not run, 2 for bad arguments.

#![cfg_attr(
    not(target_arch = "aarch64"),
    allow(dead_code, reason = "the VM runs on arm64 only")
)]

use std::process::ExitCode;
use std::time::Instant;

mod report;
#[cfg(target_arch = "aarch64")]
mod vm;

use report::{Args, Outcome};

fn main() -> ExitCode {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match Args::parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rampart-peer: {e}\n{}", report::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&args, started) {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::GuestFailed) => ExitCode::from(3),
        Err(e) => {
            eprintln!("[{}] rampart-peer: FAIL {e:#}", args.name);
            ExitCode::from(1)
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn run(args: &Args, started: Instant) -> anyhow::Result<Outcome> {
    vm::run(args, started)
}

#[cfg(not(target_arch = "aarch64"))]
fn run(_args: &Args, _started: Instant) -> anyhow::Result<Outcome> {
    anyhow::bail!("runs only on an arm64 Linux host with /dev/kvm")
}
