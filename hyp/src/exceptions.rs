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

/// ESR_EL2.EC of a data abort taken at EL2 without a change of level.
const EC_DABT_CURRENT: u64 = 0x25;

/// Called by every lower-EL vector with the saved registers.
pub extern "C" fn handle_exception(kind: u64, frame: &mut Frame) {
    match kind {
        LOWER_AARCH64_SYNC | LOWER_AARCH32_SYNC => {
            if is_host_power_off(frame) {
                report_stacks();
            }
            host::handle_sync(frame);
        }
        _ => unexpected(kind, cpu::current() as u64, "unexpected exception"),
    }
}

/// The host's `HVC #0` with `VCPU_RUN`'s function ID in `w0`: `entry.S`'s
/// lower-EL AArch64 synchronous vector sends exactly that here (`ESR_EL2`
/// = EC 0x16, IL 1, immediate 0, checked there), with `x0`..`x17` in
/// `regs` (the rest of the frame is not saved on this path: `x19`..`x29`
/// are callee-saved, and no code here reads the host's registers beyond
/// `x17`). The results replace `x0`..`x4`, as for every host call.
pub extern "C" fn host_vcpu_run(regs: &mut [u64; 18]) {
    host::vcpu_run_call(regs);
}

/// Whether the host's exception is an `SMC` asking firmware to power off or
/// reset the machine (PSCI SYSTEM_OFF or SYSTEM_RESET, either convention).
fn is_host_power_off(frame: &Frame) -> bool {
    const EC_SMC64: u64 = 0x17;
    const SYSTEM_OFF: u64 = 0x8400_0008;
    const SYSTEM_RESET: u64 = 0x8400_0009;
    let function = frame.x[0] & 0xffff_ffff;
    (arch::esr_el2() >> 26) & 0x3f == EC_SMC64 && (function == SYSTEM_OFF || function == SYSTEM_RESET)
}

/// Prints how deep each CPU's EL2 stack has been since the host started
/// (the boot CPU's boot is printed before the host starts). Allocates
/// nothing: it runs on the host's power-off path.
pub fn report_stacks() {
    /// CPUs listed one by one; beyond them, how many more and how deep.
    const LISTED: usize = 16;
    struct PerCpu(usize);
    impl core::fmt::Display for PerCpu {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            for cpu in 0..self.0.min(LISTED) {
                write!(f, " CPU {cpu} {}", arch::stack_high_water(cpu))?;
            }
            if self.0 > LISTED {
                let rest = (LISTED..self.0).map(arch::stack_high_water).max().unwrap_or(0);
                write!(f, "; CPUs {LISTED} to {} at most {rest}", self.0 - 1)?;
            }
            Ok(())
        }
    }
    let Some(boot) = crate::BOOT.get() else { return };
    let cpus = boot.cpu_count.min(crate::config::MAX_CPUS);
    let deepest = (0..cpus).map(arch::stack_high_water).max().unwrap_or(0);
    println!(
        "EL2 stack high-water mark: {deepest} of {} bytes (per CPU:{})",
        crate::config::STACK_SIZE,
        PerCpu(cpus)
    );
}

/// Reports an exception Rampart cannot have caused by design, then powers
/// off: a broken invariant fails closed.
fn unexpected(kind: u64, cpu: u64, what: &str) -> ! {
    let name = usize::try_from(kind).ok().and_then(|k| KIND_NAMES.get(k)).unwrap_or(&"unknown");
    crate::console::print_fatal(format_args!(
        "rampart: {what} on CPU {cpu}: {name}: ESR_EL2 {:#x} FAR_EL2 {:#x} ELR_EL2 {:#x} SPSR_EL2 {:#x}\r\n",
        arch::esr_el2(),
        arch::far_el2(),
        arch::elr_el2(),
        arch::spsr_el2()
    ));
    crate::power_off()
}

/// An exception taken at EL2 itself, on this CPU's emergency stack
/// (`el2_fatal` in `entry.S`): `sp` is the stack pointer it interrupted.
/// A stack overflow (SP, or the faulting address of a data abort, in the
/// guard page below this CPU's stack) is named as such; anything else is
/// reported as an unexpected exception. Either way the machine powers off:
/// it is a hypervisor bug, not something the host can cause.
pub extern "C" fn el2_fatal(kind: u64, sp: u64, cpu: u64) -> ! {
    let (guard_start, guard_end) = arch::guard_range(cpu as usize);
    let in_guard = |address: u64| (guard_start..guard_end).contains(&address);
    let esr = arch::esr_el2();
    let far = arch::far_el2();
    let data_abort = (esr >> 26) & 0x3f == EC_DABT_CURRENT;
    if in_guard(sp) || (data_abort && in_guard(far)) {
        crate::console::print_fatal(format_args!(
            "rampart: stack overflow on CPU {cpu}: SP {sp:#x}, FAR_EL2 {far:#x}, ELR_EL2 {:#x}; guard page [{guard_start:#x}, {guard_end:#x}); powering off\r\n",
            arch::elr_el2()
        ));
        crate::power_off()
    }
    unexpected(kind, cpu, "unexpected exception")
}
