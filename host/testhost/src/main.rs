//! Rampart's hostile test host: a bare-metal EL1 kernel that checks the hypervisor from the host's side.
//!
//! It boots like an arm64 Linux `Image` (x0 = device tree, MMU off), reads
//! the device tree once, then runs a fixed list of checks ([`checks::CHECKS`])
//! and prints one line per check, `PASS <name>` or `FAIL <name>: <reason>`,
//! then `N passed, M failed`, and powers the machine off through PSCI.
//!
//! Design rules:
//! - Every check is a plain function `fn(&Platform) -> Result<(), Msg>`; to
//!   add one, write it in `checks/` and list it in [`checks::CHECKS`].
//! - A check that takes an exception it did not ask for fails with the
//!   exception's ESR/FAR/ELR; it never hangs the run (see `arch::guarded`).
//! - Everything the checks need from the device tree is copied into
//!   [`platform::Platform`] first, so later checks may write memory freely.
//! - `unsafe` and `asm!` live only in `arch`.

#![no_std]
#![no_main]
// The test host runs only on aarch64, where usize is 64 bits; its other
// narrowing casts take the low word of a register on purpose.
#![allow(clippy::cast_possible_truncation, reason = "aarch64 only; low-word reads are deliberate")]
#![deny(unsafe_code)]
#![allow(
    clippy::result_large_err,
    reason = "no allocator: a failure carries its message in a fixed buffer; it is returned only on failure, on 64 KiB stacks"
)]

#[allow(
    unsafe_code,
    reason = "the one module that touches the machine directly"
)]
mod arch;
mod bench;
mod checks;
mod console;
mod cpus;
mod edu;
mod fuzz;
mod msg;
mod pci;
mod platform;
mod psci;
mod ranges;
mod secrets;

use crate::arch::{BootState, Exception};
use crate::platform::Platform;

/// Rust entry of the boot CPU, called by the entry assembly with the state
/// the loader left.
fn primary_main(boot: BootState) -> ! {
    let dt_address = boot.x[0];
    let platform = match arch::device_tree_blob(dt_address)
        .map_err(msg::Msg::from_text)
        .and_then(|blob| Platform::from_blob(blob, boot))
    {
        Ok(platform) => platform,
        Err(reason) => {
            println!("rampart-testhost: starting, DT at {dt_address:#x}, ? CPUs");
            println!("FAIL device-tree: {reason}");
            println!("0 passed, 1 failed");
            power_off_quietly();
        }
    };
    if let Some(base) = platform.console {
        arch::set_console_base(base);
    }
    psci::set_conduit(platform.psci_conduit);
    println!(
        "rampart-testhost: starting, DT at {:#x}, {} CPUs",
        dt_address, platform.cpu_count
    );
    platform.describe();
    if let Some(mode) = checks::reset::selected(&platform) {
        checks::reset::run(&platform, mode);
    }
    if let Some((mode, dir)) = checks::migrate::selected(&platform) {
        checks::migrate::run(&platform, mode, &dir);
    }
    if checks::swap::race_selected(&platform) {
        checks::swap::race_mode(&platform);
    }
    if let Some(config) = fuzz::config(&platform) {
        fuzz::run(&platform, config);
        power_off_quietly();
    }
    if let Some(selection) = bench::selection(&platform) {
        bench::run(&platform, selection);
        power_off_quietly();
    }

    let (mut passed, mut failed) = (0u32, 0u32);
    arch::boot_stack_paint();
    for check in checks::CHECKS {
        let mut outcome = None;
        let run = arch::guarded(&mut || outcome = Some((check.run)(&platform)));
        match (run, outcome) {
            (Ok(()), Some(Ok(()))) => {
                passed += 1;
                println!("PASS {}", check.name);
            }
            (Ok(()), Some(Err(reason))) => {
                failed += 1;
                println!("FAIL {}: {}", check.name, reason);
            }
            (Ok(()), None) => {
                failed += 1;
                println!("FAIL {}: check did not finish", check.name);
            }
            (Err(exception), _) => {
                failed += 1;
                println!("FAIL {}: unexpected {}", check.name, exception);
            }
        }
    }
    // The oracle's verdict in a hypervisor test build that has one (`cargo
    // xtask test`, cases `oracle/*`); any other build answers NOT_SUPPORTED.
    let oracle = psci::call_via(psci::Conduit::Hvc, rampart_abi::host::HostCall::OracleCheck.id(), &[]);
    if oracle[0] == 0 {
        println!("  oracle: {} violations in {} checked events", oracle[1], oracle[2]);
        if oracle[1] != 0 {
            failed += 1;
            println!("FAIL oracle: the hypervisor's oracle found {} violations (its `oracle: VIOLATION` lines)", oracle[1]);
        }
    }
    let used = arch::boot_stack_used();
    println!("  boot CPU stack: {} of {} KiB used", used >> 10, arch::STACK_SIZE >> 10);
    if used + 4096 > arch::STACK_SIZE as u64 {
        failed += 1;
        println!("FAIL boot-stack: {used} bytes of the {}-byte boot stack used: too close to overflowing into bss", arch::STACK_SIZE);
    }
    println!("{passed} passed, {failed} failed");
    power_off_quietly();
}

/// Reports an exception taken outside any check and powers off.
fn fatal_exception(exception: &Exception) -> ! {
    println!("FATAL: unexpected {exception} outside a check");
    println!("0 passed, 1 failed");
    power_off_quietly();
}

/// Powers the machine off with PSCI `SYSTEM_OFF`; halts if that returns.
fn power_off_quietly() -> ! {
    psci::system_off();
    arch::halt();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if arch::cpu_slot() == 0 {
        println!("FATAL: panic: {info}");
        println!("0 passed, 1 failed");
        power_off_quietly();
    }
    arch::halt();
}
