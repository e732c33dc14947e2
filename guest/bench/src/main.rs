//! The workloads of `cargo xtask bench peer`, the same image under Rampart
//! (`rampart-vmm`, a signed protected VM) and under Linux's KVM/pKVM (the
//! peer VMM `host/peer`, a non-protected VM):
//!
//! - `mmio`: [`MMIO_WRITES`] 32-bit writes to the console's `UARTCR`, each an
//!   MMIO exit to the VMM, which ignores the value and runs the vCPU on;
//! - `hvc`: [`HVCS`] `HVC PSCI_VERSION` calls, each answered by the
//!   hypervisor itself (Rampart at EL2; KVM's PSCI emulation) with no exit
//!   to the VMM.
//!
//! Each phase is timed with the virtual counter and reported as
//! `BENCH-PHASE <name> n=<calls> ticks=<counter ticks> freq=<CNTFRQ_EL0>`.
//! Launch time (VMM start to the first console byte) is the VMM's to
//! measure. Protocol: console only, vCPU 0 only. Exits: `EXIT_MMIO`, then
//! `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::hvc::psci as hvc_psci;
use rampart_guest::{arch, no_hypervisor, println, report};

rampart_guest::entry!(main);

/// MMIO writes in the `mmio` phase.
pub const MMIO_WRITES: u32 = 2000;
/// `PSCI_VERSION` calls in the `hvc` phase.
pub const HVCS: u32 = 5000;

/// PSCI 1.0 (`PSCI_VERSION` answers 1.1 under Rampart and Linux 6.1's KVM).
const PSCI_1_0: i32 = 0x0001_0000;

/// What a PL011 enable looks like (`UARTEN | TXE | RXE`); the value does not
/// matter to the VMMs.
const UARTCR_ENABLE: u32 = 0x301;

fn main(_ram_size: u64) {
    let freq = arch::counter_frequency();
    if no_hypervisor() {
        report::skip("bench", format_args!("no hypervisor"));
        return;
    }

    let start = arch::virtual_count();
    for _ in 0..MMIO_WRITES {
        arch::uart_write_control(UARTCR_ENABLE);
    }
    let mmio_end = arch::virtual_count();

    let mut wrong = 0u32;
    let mut last = 0i32;
    for _ in 0..HVCS {
        last = hvc_psci::version();
        if last < PSCI_1_0 {
            wrong += 1;
        }
    }
    let hvc_end = arch::virtual_count();

    println!(
        "BENCH-PHASE mmio n={MMIO_WRITES} ticks={} freq={freq}",
        mmio_end.wrapping_sub(start)
    );
    println!(
        "BENCH-PHASE hvc n={HVCS} ticks={} freq={freq}",
        hvc_end.wrapping_sub(mmio_end)
    );
    report::check(
        "bench-psci-version",
        wrong == 0,
        format_args!("{wrong} of {HVCS} PSCI_VERSION calls answered below 1.0 (last {last:#x})"),
    );
    report::check(
        "bench-counter",
        freq != 0 && mmio_end > start && hvc_end > mmio_end,
        format_args!(
            "CNTFRQ_EL0 {freq}, counts {start} {mmio_end} {hvc_end}: the counter must advance"
        ),
    );
}
