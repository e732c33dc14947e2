//! The Rust side of the exception vectors.

use crate::arch::{self, Frame};
use crate::{cpu, host, println};

const KIND_NAMES: [&str; 16] = [
    "sync from EL2 (SP_EL0)",
    "IRQ from EL2 (SP_EL0)",
    "FIQ from EL2 (SP_EL0)",
    "SError from EL2 (SP_EL0)",
    "sync from EL2",
    "IRQ from EL2",
    "FIQ from EL2",
    "SError from EL2",
    "sync from AArch64 EL1/EL0",
    "IRQ from AArch64 EL1/EL0",
    "FIQ from AArch64 EL1/EL0",
    "SError from AArch64 EL1/EL0",
    "sync from AArch32 EL0",
    "IRQ from AArch32 EL0",
    "FIQ from AArch32 EL0",
    "SError from AArch32 EL0",
];

/// Vector kinds the host can cause and Rampart handles.
const LOWER_AARCH64_SYNC: u64 = 8;
const LOWER_AARCH32_SYNC: u64 = 12;

/// Called by every vector with the saved registers.
pub extern "C" fn handle_exception(kind: u64, frame: &mut Frame) {
    match kind {
        LOWER_AARCH64_SYNC | LOWER_AARCH32_SYNC => host::handle_sync(frame),
        _ => unexpected(kind),
    }
}

/// Reports an exception Rampart cannot have caused by design, then powers
/// off: a broken invariant fails closed.
fn unexpected(kind: u64) -> ! {
    let name = usize::try_from(kind).ok().and_then(|k| KIND_NAMES.get(k)).unwrap_or(&"unknown");
    println!(
        "unexpected exception on CPU {}: {name}: ESR_EL2 {:#x} FAR_EL2 {:#x} ELR_EL2 {:#x} SPSR_EL2 {:#x}",
        cpu::current(),
        arch::esr_el2(),
        arch::far_el2(),
        arch::elr_el2(),
        arch::spsr_el2()
    );
    crate::power_off()
}
