//! A small library for Rampart's bare-metal test guests.
//!
//! A guest is a `#![no_std]` binary linked at `GUEST_RAM_BASE` with
//! `guest.ld`, entered at EL1h with its MMU off and `x0` = its RAM size. It
//! names its main function (and optionally the function secondary vCPUs
//! run) with [`entry!`]; this library supplies the rest:
//!
//! - entry code: FP/SIMD enabled, one stack per vCPU, bss zeroed, exception
//!   vectors that report any exception the guest did not expect;
//! - [`console`]: `println!` over the emulated UART at `GUEST_UART_BASE`;
//! - [`hvc`]: typed wrappers for every guest call of `rampart_abi::guest`
//!   (HVC conduit), PSCI included;
//! - [`report`]: the `GUEST-PASS` / `GUEST-FAIL` / `GUEST-DONE` lines and
//!   `exit()` (PSCI `SYSTEM_OFF`);
//! - [`irq`]: an IRQ handler that acknowledges and counts interrupts;
//! - [`arch`]: probes that catch the aborts and undefined instructions the
//!   attacker guest provokes.
//!
//! Design rules:
//! - `unsafe` and `asm!` live only in `arch`, each block with a `SAFETY:`
//!   comment; everything else is safe code.
//! - Only vCPU 0 reports results; secondaries may print lines of their own.
//! - Nothing hangs: an unexpected exception or panic prints `GUEST-FAIL`
//!   and `GUEST-DONE`, then powers off; if `SYSTEM_OFF` returns (no
//!   hypervisor), the vCPU waits in `WFI` for ever.
//! - Without a hypervisor (plain QEMU at EL1) the guest still runs to
//!   `GUEST-DONE`: QEMU answers PSCI over HVC itself and every other HVC
//!   with `NOT_SUPPORTED`; where `HVC` is undefined instead, the vector
//!   turns it into `NOT_SUPPORTED`. Checks that need the hypervisor skip.

#![no_std]
#![deny(unsafe_code)]

#[allow(
    unsafe_code,
    reason = "the one module that touches the machine directly"
)]
pub mod arch;
pub mod console;
pub mod hvc;
pub mod irq;
pub mod report;

pub use rampart_abi;
pub use rampart_abi::guest as abi;

use core::sync::atomic::{AtomicBool, Ordering};

/// Names the guest's main function, `fn(ram_size: u64)`, and optionally the
/// function secondary vCPUs run, `fn(index: usize)` (they call `CPU_OFF`
/// when it returns; without one they power off at once).
///
/// After main returns the library prints `GUEST-DONE` and powers off.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!($main, $crate::default_secondary);
    };
    ($main:path, $secondary:path) => {
        #[allow(unsafe_code, reason = "the entry code finds this function by name")]
        #[unsafe(export_name = "rampart_guest_main")]
        fn __rampart_guest_main(ram_size: u64) {
            let main: fn(u64) = $main;
            main(ram_size)
        }

        #[allow(unsafe_code, reason = "the entry code finds this function by name")]
        #[unsafe(export_name = "rampart_guest_secondary")]
        fn __rampart_guest_secondary(index: usize) {
            let secondary: fn(usize) = $secondary;
            secondary(index)
        }
    };
}

/// What a secondary vCPU runs when the guest names none: nothing.
pub fn default_secondary(_index: usize) {}

static NO_HYPERVISOR: AtomicBool = AtomicBool::new(false);
static PROTECTED: AtomicBool = AtomicBool::new(false);
static REALM: AtomicBool = AtomicBool::new(false);

/// Whether the guest runs as a realm VM: every `HVC` is refused and
/// `SMC` `RSI_VERSION` (1.0) succeeds (`rampart_abi::rsi`). A realm is
/// protected too.
pub fn realm() -> bool {
    REALM.load(Ordering::SeqCst)
}

/// Whether the guest runs as a protected VM: `KVM_FEATURES` advertises the
/// pKVM memory calls (Rampart offers them to protected VMs only).
pub fn protected() -> bool {
    PROTECTED.load(Ordering::SeqCst)
}

/// Whether the guest runs without a hypervisor: the vendor-hypervisor UID
/// call was refused (plain QEMU answers every non-PSCI HVC with
/// `NOT_SUPPORTED`) or undefined (no EL2 and no emulated firmware). Checks
/// that need the hypervisor then report `GUEST-SKIP`; the `hypervisor`
/// check has already failed.
pub fn no_hypervisor() -> bool {
    NO_HYPERVISOR.load(Ordering::SeqCst)
}

/// vCPU 0's start-up, before the guest's main: maps the console page with
/// `MMIO_GUARD_MAP` (a protected VM must before touching it), then checks
/// the hypervisor identifies as KVM (`GUEST-PASS hypervisor`) and, in a
/// protected VM, that the console mapping succeeded.
fn start_primary(x0: u64) {
    let mapped = hvc::mmio_guard_map(abi::GUEST_UART_BASE);
    let uid = hvc::hyp_uid();
    if uid.is_err() && !arch::hvc_undefined() {
        // A realm refuses HVC; its calls go through SMC.
        let version = smccc::smc64(rampart_abi::rsi::RsiCall::Version.id(), {
            let mut args = [0; 17];
            args[0] = rampart_abi::rsi::VERSION_1_0;
            args
        });
        if version[0] == 0 && version[1] == rampart_abi::rsi::VERSION_1_0 {
            REALM.store(true, Ordering::SeqCst);
            PROTECTED.store(true, Ordering::SeqCst);
            println!(
                "rampart guest: vCPU 0 at EL{}, x0 = {x0:#x}, RAM {:#x}..{:#x}, realm VM (RSI 1.0)",
                arch::current_el(),
                abi::GUEST_RAM_BASE,
                abi::GUEST_RAM_BASE + arch::ram_size(),
            );
            report::pass("hypervisor");
            return;
        }
    }
    NO_HYPERVISOR.store(uid.is_err() || arch::hvc_undefined(), Ordering::SeqCst);
    PROTECTED.store(
        !no_hypervisor() && hvc::kvm_has(abi::kvm_function::MEM_SHARE),
        Ordering::SeqCst,
    );
    println!(
        "rampart guest: vCPU 0 at EL{}, x0 = {x0:#x}, RAM {:#x}..{:#x}, image ends at {:#x}, {}",
        arch::current_el(),
        abi::GUEST_RAM_BASE,
        abi::GUEST_RAM_BASE + arch::ram_size(),
        arch::image_range().1,
        if protected() {
            "protected VM"
        } else {
            "not a protected VM"
        },
    );
    if no_hypervisor() {
        let how = if arch::hvc_undefined() {
            "undefined"
        } else {
            "NOT_SUPPORTED"
        };
        report::fail(
            "hypervisor",
            format_args!("VENDOR_HYP_CALL_UID is {how}: no hypervisor (plain QEMU?)"),
        );
        return;
    }
    report::check(
        "hypervisor",
        uid == Ok(abi::KVM_UID),
        format_args!("vendor hypervisor UID {uid:x?}, want the KVM UID"),
    );
    if protected() {
        report::check(
            "console-mmio-guard",
            mapped == 0,
            format_args!("MMIO_GUARD_MAP of the console returned {mapped}"),
        );
    }
}

/// Bounded wait: calls `done` until it returns true or `millis`
/// milliseconds of the virtual counter have passed, reading the console's
/// flag register (an MMIO exit, so a VMM that runs every vCPU on one thread
/// can switch vCPUs) between calls. Returns whether `done` became true.
pub fn wait_until(millis: u64, mut done: impl FnMut() -> bool) -> bool {
    let ticks = arch::counter_frequency().max(1_000) / 1_000 * millis;
    let deadline = arch::virtual_count().saturating_add(ticks);
    while arch::virtual_count() < deadline {
        if done() {
            return true;
        }
        arch::uart_flags();
    }
    done()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    report::fatal(format_args!("panic on vCPU {}: {info}", arch::cpu_index()))
}
