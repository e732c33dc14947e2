//! The machine access the VMM needs beyond `crate::arch`: 32-bit MMIO for
//! the GICv3 distributor and redistributors, the GIC CPU-interface system
//! registers, and an instruction-fetch probe.
//!
//! This is the only file of the VMM with `unsafe` or `asm!`; it is kept
//! apart from `arch.rs` only because that file belongs to other work in
//! progress. Every block has a `SAFETY:` comment.

#![allow(
    unsafe_code,
    reason = "MMIO, system registers and a fetch probe, like arch.rs"
)]

use core::arch::{asm, global_asm};

/// GIC registers are read and written with the test host's device-register
/// accessors: the caller passes a GIC register the device tree names.
pub use crate::arch::{mmio_read32, mmio_write32};

/// Enables this CPU's GICv3 CPU interface for Group 1 interrupts of any
/// priority: `ICC_SRE_EL1.SRE` = 1, `ICC_PMR_EL1` = 0xff,
/// `ICC_IGRPEN1_EL1` = 1. `PSTATE.I` stays masked, so the host itself never
/// takes an interrupt; while a guest runs, a pending physical interrupt
/// makes it exit to the hypervisor (`EXIT_INTERRUPT`).
pub fn gic_cpu_interface_enable() {
    // SAFETY: writes GIC CPU-interface system registers of this CPU only;
    // no memory is touched. Interrupts stay masked in PSTATE.
    unsafe {
        asm!(
            "mrs {t}, S3_0_C12_C12_5",   // ICC_SRE_EL1
            "orr {t}, {t}, #1",
            "msr S3_0_C12_C12_5, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr S3_0_C4_C6_0, {t}",     // ICC_PMR_EL1
            "mov {t}, #1",
            "msr S3_0_C12_C12_7, {t}",   // ICC_IGRPEN1_EL1
            "isb",
            t = out(reg) _,
            options(nostack, nomem, preserves_flags),
        );
    }
}

global_asm!(
    r#"
    .section .text.vmm_fetch_probe, "ax"
    .balign 0x800
vmm_fetch_vectors:
    .rept 16
    .balign 0x80
    b       vmm_fetch_caught
    .endr

    // Any exception during the probe: record ESR, FAR, ELR and SPSR in
    // x9..x12 and return to the recovery point in EL1h, DAIF masked.
vmm_fetch_caught:
    mrs     x9, esr_el1
    mrs     x10, far_el1
    mrs     x11, elr_el1
    mrs     x12, spsr_el1
    adr     x13, vmm_fetch_recover
    msr     elr_el1, x13
    mov     x13, #0x3c5
    msr     spsr_el1, x13
    eret

    // u64 vmm_fetch_probe(target, out: *mut [u64; 4]): branches to target
    // with a private vector table installed. The target either returns
    // (x9 stays 0) or takes an exception (caught above).
    .global vmm_fetch_probe
vmm_fetch_probe:
    stp     x29, x30, [sp, #-16]!
    mrs     x2, vbar_el1
    adr     x3, vmm_fetch_vectors
    msr     vbar_el1, x3
    ic      iallu
    dsb     ish
    isb
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    blr     x0
vmm_fetch_recover:
    msr     vbar_el1, x2
    isb
    stp     x9, x10, [x1]
    stp     x11, x12, [x1, #16]
    ldp     x29, x30, [sp], #16
    ret
    "#
);

unsafe extern "C" {
    fn vmm_fetch_probe(target: u64, out: *mut [u64; 4]);
}

/// An instruction fetch from `target` (a branch there with `BLR`): `None`
/// if the code there returned, else the exception's `ESR_EL1`, `FAR_EL1`,
/// `ELR_EL1` and `SPSR_EL1`.
///
/// The caller puts a `RET` at `target` first (while the page is still its
/// own), so that a fetch the hypervisor wrongly allows runs only that.
/// Only the boot CPU probes, with interrupts masked.
pub fn fetch_probe(target: u64) -> Option<[u64; 4]> {
    assert!(target.is_multiple_of(4));
    let (image_start, image_end) = crate::arch::image_range();
    assert!(target < image_start || target >= image_end);
    let mut out = [0u64; 4];
    // SAFETY: `vmm_fetch_probe` follows the C ABI: it saves x29/x30, uses
    // only caller-saved registers (x0..x3, x9..x13) and restores VBAR_EL1
    // before returning. The target is a page outside the image holding a
    // `RET` the caller wrote, or memory the host cannot fetch from (which
    // aborts into the private vectors, which return to the recovery point
    // with SP unchanged). `out` is a valid, exclusive 32-byte buffer.
    unsafe { vmm_fetch_probe(target, &raw mut out) };
    (out[0] != 0).then_some(out)
}

/// The host's own EL1 virtual timer: `(CNTV_CTL_EL0, CNTV_CVAL_EL0)`.
pub fn host_virtual_timer() -> (u64, u64) {
    let (ctl, cval): (u64, u64);
    // SAFETY: reads two timer registers of this CPU; no memory touched.
    unsafe {
        asm!("mrs {}, cntv_ctl_el0", "mrs {}, cntv_cval_el0", out(reg) ctl, out(reg) cval,
             options(nomem, nostack, preserves_flags))
    };
    (ctl, cval)
}

/// Programs the host's own EL1 virtual timer (`CNTV_CVAL_EL0`, then
/// `CNTV_CTL_EL0`: bit 0 ENABLE, bit 1 IMASK). `PSTATE.I` stays masked, so
/// the host never takes its interrupt; it only shows as pending.
pub fn set_host_virtual_timer(cval: u64, ctl: u64) {
    // SAFETY: writes this CPU's virtual timer registers; no memory touched.
    unsafe {
        asm!("msr cntv_cval_el0, {}", "msr cntv_ctl_el0, {}", "isb", in(reg) cval, in(reg) ctl,
             options(nomem, nostack, preserves_flags))
    };
}

/// `ICC_HPPIR1_EL1`: the INTID of this CPU's highest-priority pending
/// Group 1 interrupt (1023: none). Reading it changes no state.
pub fn icc_hppir1() -> u64 {
    let value: u64;
    // SAFETY: a read of a GIC CPU-interface system register of this CPU,
    // which has no side effect; no memory is touched.
    unsafe {
        asm!("mrs {}, S3_0_C12_C12_2", out(reg) value, options(nostack, nomem, preserves_flags))
    };
    value
}
