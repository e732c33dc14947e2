//! The CPU side of running a guest: the world switch's register moves.
//!
//! Everything here copies registers between the hardware and plain Rust
//! structs; `crate::vcpu` decides when and what.

use core::arch::{asm, global_asm};

global_asm!(include_str!("guest_entry.S"));

unsafe extern "C" {
    fn guest_enter(regs: *mut [u64; 31]) -> u64;
}

/// Runs the loaded guest until it takes an exception to EL2, saving its
/// general registers into `regs`. Returns the vector kind (8 = sync,
/// 9 = IRQ, 10 = FIQ, 11 = SError, 12..15 = the same from AArch32).
///
/// # Safety
///
/// The caller must have installed the guest's stage 2 (VTTBR_EL2), its
/// HCR_EL2 traps, EL1 system registers, FP state, timer and virtual CPU
/// interface, and ELR_EL2/SPSR_EL2 for the guest's PC and PSTATE, and must
/// restore the host's after this returns. Nothing may take an exception at
/// EL2 between setting ELR_EL2/SPSR_EL2 and this call.
pub unsafe fn enter_guest(regs: &mut [u64; 31]) -> u64 {
    // SAFETY: the caller prepared the guest; guest_enter saves and restores
    // every callee-saved register and the stack pointer, and writes only
    // `regs`, which it receives as an exclusive pointer.
    unsafe { guest_enter(regs as *mut [u64; 31]) }
}

/// Points `VBAR_EL2` at `guest_vectors` (`guest_entry.S`) for as long as
/// a guest is loaded, so `guest_enter`/`guest_exit` need not switch them
/// on every entry and exit. The first eight entries of `guest_vectors`
/// branch to the hypervisor's own current-EL handlers, so an exception EL2
/// takes itself in the meantime is handled exactly as with `vectors`.
///
/// # Safety
///
/// Only in `vcpu::load_guest`, followed by an `ISB` before the first
/// exception that must use the new vectors (the `ISB` there), and undone by
/// [`install_host_vectors`] before the host runs again.
pub unsafe fn install_guest_vectors() {
    // SAFETY: as the caller guarantees; `guest_vectors` is 2 KiB aligned
    // in the hypervisor's text.
    unsafe {
        asm!(
            "adrp {t}, guest_vectors",
            "add {t}, {t}, :lo12:guest_vectors",
            "msr vbar_el2, {t}",
            t = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// Points `VBAR_EL2` back at the hypervisor's `vectors` (`entry.S`).
///
/// # Safety
///
/// Only in `vcpu::unload_guest`, followed by an `ISB` before the host runs
/// (the `ISB` there; the `ERET` to the host also synchronises).
pub unsafe fn install_host_vectors() {
    // SAFETY: as the caller guarantees; `vectors` is 2 KiB aligned.
    unsafe {
        asm!(
            "adrp {t}, vectors",
            "add {t}, {t}, :lo12:vectors",
            "msr vbar_el2, {t}",
            t = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
}

macro_rules! el1_context {
    ($($field:ident: $reg:literal),* $(,)?) => {
        /// The EL1 (and EL0) system registers a world switch swaps.
        #[derive(Clone, Copy, Debug, Default, zerocopy::FromZeros)]
        #[repr(C)]
        pub struct El1Context {
            $(
                #[doc = concat!("`", $reg, "`")]
                pub $field: u64,
            )*
        }

        impl El1Context {
            /// All zero.
            pub const ZERO: El1Context = El1Context { $($field: 0,)* };
        }

        /// Reads this CPU's EL1 system registers.
        pub fn save_el1(ctx: &mut El1Context) {
            $(
                // SAFETY: reading a system register has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) ctx.$field, options(nomem, nostack, preserves_flags)) };
            )*
        }

        /// Loads `ctx` into this CPU's EL1 system registers.
        ///
        /// # Safety
        ///
        /// Only while EL1 is not running: between an exit and the next entry.
        pub unsafe fn restore_el1(ctx: &El1Context) {
            $(
                // SAFETY: EL1 does not run; the caller switches worlds.
                unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) ctx.$field, options(nostack, preserves_flags)) };
            )*
            super::isb();
        }
    };
}

el1_context! {
    sctlr: "sctlr_el1",
    ttbr0: "ttbr0_el1",
    ttbr1: "ttbr1_el1",
    tcr: "tcr_el1",
    mair: "mair_el1",
    amair: "amair_el1",
    vbar: "vbar_el1",
    contextidr: "contextidr_el1",
    tpidr_el1: "tpidr_el1",
    tpidr_el0: "tpidr_el0",
    tpidrro_el0: "tpidrro_el0",
    sp_el0: "sp_el0",
    sp_el1: "sp_el1",
    elr_el1: "elr_el1",
    spsr_el1: "spsr_el1",
    esr_el1: "esr_el1",
    far_el1: "far_el1",
    afsr0: "afsr0_el1",
    afsr1: "afsr1_el1",
    par: "par_el1",
    cpacr: "cpacr_el1",
    csselr: "csselr_el1",
    cntkctl: "cntkctl_el1",
    mdscr: "mdscr_el1",
    cntv_ctl: "cntv_ctl_el0",
    cntv_cval: "cntv_cval_el0",
}

macro_rules! pauth_keys {
    ($($field:ident: $reg:literal),* $(,)?) => {
        /// Pointer-authentication keys (FEAT_PAuth).
        #[derive(Clone, Copy, Debug, Default, zerocopy::FromZeros)]
        #[repr(C)]
        pub struct PauthKeys {
            $(
                #[doc = concat!("`", $reg, "`")]
                pub $field: u64,
            )*
        }

        impl PauthKeys {
            /// All zero.
            pub const ZERO: PauthKeys = PauthKeys { $($field: 0,)* };
        }

        /// Reads the EL1 pointer-authentication keys.
        pub fn save_pauth(keys: &mut PauthKeys) {
            $(
                // SAFETY: reading a system register has no side effects.
                unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) keys.$field, options(nomem, nostack, preserves_flags)) };
            )*
        }

        /// Loads the EL1 pointer-authentication keys.
        ///
        /// # Safety
        ///
        /// Only while EL1 is not running, and only on a CPU with FEAT_PAuth.
        pub unsafe fn restore_pauth(keys: &PauthKeys) {
            $(
                // SAFETY: as above; EL2 itself does not use these keys.
                unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) keys.$field, options(nostack, preserves_flags)) };
            )*
        }
    };
}

pauth_keys! {
    apia_lo: "s3_0_c2_c1_0",
    apia_hi: "s3_0_c2_c1_1",
    apib_lo: "s3_0_c2_c1_2",
    apib_hi: "s3_0_c2_c1_3",
    apda_lo: "s3_0_c2_c2_0",
    apda_hi: "s3_0_c2_c2_1",
    apdb_lo: "s3_0_c2_c2_2",
    apdb_hi: "s3_0_c2_c2_3",
    apga_lo: "s3_0_c2_c3_0",
    apga_hi: "s3_0_c2_c3_1",
}

/// FP/SIMD registers: V0..V31, FPSR, FPCR.
#[derive(Clone, Copy, Debug, Default, zerocopy::FromZeros)]
#[repr(C, align(16))]
pub struct FpContext {
    /// V0..V31.
    pub v: [u128; 32],
    /// FPSR
    pub fpsr: u64,
    /// FPCR
    pub fpcr: u64,
}


/// Saves this CPU's FP/SIMD registers.
pub fn save_fp(fp: &mut FpContext) {
    let base = fp.v.as_mut_ptr();
    let (fpsr, fpcr): (u64, u64);
    // SAFETY: writes exactly the 512 bytes of `fp.v` through an exclusive
    // pointer; FP access is not trapped at EL2 (CPTR_EL2.TFP = 0).
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "stp q0, q1, [{b}, #0]",
            "stp q2, q3, [{b}, #32]",
            "stp q4, q5, [{b}, #64]",
            "stp q6, q7, [{b}, #96]",
            "stp q8, q9, [{b}, #128]",
            "stp q10, q11, [{b}, #160]",
            "stp q12, q13, [{b}, #192]",
            "stp q14, q15, [{b}, #224]",
            "stp q16, q17, [{b}, #256]",
            "stp q18, q19, [{b}, #288]",
            "stp q20, q21, [{b}, #320]",
            "stp q22, q23, [{b}, #352]",
            "stp q24, q25, [{b}, #384]",
            "stp q26, q27, [{b}, #416]",
            "stp q28, q29, [{b}, #448]",
            "stp q30, q31, [{b}, #480]",
            "mrs {s}, fpsr",
            "mrs {c}, fpcr",
            b = in(reg) base,
            s = out(reg) fpsr,
            c = out(reg) fpcr,
            options(nostack, preserves_flags),
        );
    }
    fp.fpsr = fpsr;
    fp.fpcr = fpcr;
}

/// Loads this CPU's FP/SIMD registers.
///
/// # Safety
///
/// Only between an exit and the next entry: the registers belong to
/// whichever world runs next.
pub unsafe fn restore_fp(fp: &FpContext) {
    let base = fp.v.as_ptr();
    // SAFETY: reads exactly the 512 bytes of `fp.v`; the caller switches
    // worlds, so nothing live is in the FP registers.
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "ldp q0, q1, [{b}, #0]",
            "ldp q2, q3, [{b}, #32]",
            "ldp q4, q5, [{b}, #64]",
            "ldp q6, q7, [{b}, #96]",
            "ldp q8, q9, [{b}, #128]",
            "ldp q10, q11, [{b}, #160]",
            "ldp q12, q13, [{b}, #192]",
            "ldp q14, q15, [{b}, #224]",
            "ldp q16, q17, [{b}, #256]",
            "ldp q18, q19, [{b}, #288]",
            "ldp q20, q21, [{b}, #320]",
            "ldp q22, q23, [{b}, #352]",
            "ldp q24, q25, [{b}, #384]",
            "ldp q26, q27, [{b}, #416]",
            "ldp q28, q29, [{b}, #448]",
            "ldp q30, q31, [{b}, #480]",
            "msr fpsr, {s}",
            "msr fpcr, {c}",
            b = in(reg) base,
            s = in(reg) fp.fpsr,
            c = in(reg) fp.fpcr,
            options(nostack, preserves_flags),
        );
    }
}

/// Number of GICv3 list registers this CPU has (ICH_VTR_EL2.ListRegs + 1).
pub fn list_register_count() -> usize {
    let vtr: u64;
    // SAFETY: reading a system register has no side effects.
    unsafe { asm!("mrs {}, ich_vtr_el2", out(reg) vtr, options(nomem, nostack, preserves_flags)) };
    (vtr & 0x1f) as usize + 1
}

macro_rules! list_registers {
    ($($n:literal: $reg:literal),*) => {
        /// Reads list register `n` (0 for an index the CPU lacks).
        pub fn read_lr(n: usize) -> u64 {
            let mut value = 0;
            match n {
                $(
                    // SAFETY: reading a system register has no side effects.
                    $n => unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) value, options(nomem, nostack, preserves_flags)) },
                )*
                _ => {}
            }
            value
        }

        /// Writes list register `n` (ignored for an index the CPU lacks).
        ///
        /// # Safety
        ///
        /// Only while the guest is not running.
        pub unsafe fn write_lr(n: usize, value: u64) {
            match n {
                $(
                    // SAFETY: the caller switches worlds.
                    $n => unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) value, options(nostack, preserves_flags)) },
                )*
                _ => {}
            }
        }
    };
}

list_registers!(0: "ich_lr0_el2", 1: "ich_lr1_el2", 2: "ich_lr2_el2", 3: "ich_lr3_el2");

/// The virtual CPU interface state that belongs to a vCPU.
#[derive(Clone, Copy, Debug, Default, zerocopy::FromZeros)]
#[repr(C)]
pub struct VgicContext {
    /// ICH_VMCR_EL2
    pub vmcr: u64,
    /// ICH_AP1R0_EL2
    pub ap1r0: u64,
    /// ICH_LR0..3_EL2
    pub lr: [u64; 4],
}

/// Loads a vCPU's virtual CPU interface and enables it.
///
/// # Safety
///
/// Only while the guest is not running.
pub unsafe fn restore_vgic(ctx: &VgicContext) {
    // SAFETY: the caller switches worlds; ICH_HCR_EL2.En = 1 enables the
    // virtual CPU interface for the guest. The four list registers are
    // written directly (as `write_lr` for 0..4 did, one call each).
    unsafe {
        asm!(
            "msr ich_lr0_el2, {l0}",
            "msr ich_lr1_el2, {l1}",
            "msr ich_lr2_el2, {l2}",
            "msr ich_lr3_el2, {l3}",
            "msr ich_vmcr_el2, {vmcr}",
            "msr ich_ap1r0_el2, {ap}",
            "msr ich_hcr_el2, {en}",
            "isb",
            l0 = in(reg) ctx.lr[0],
            l1 = in(reg) ctx.lr[1],
            l2 = in(reg) ctx.lr[2],
            l3 = in(reg) ctx.lr[3],
            vmcr = in(reg) ctx.vmcr,
            ap = in(reg) ctx.ap1r0,
            en = in(reg) 1u64,
            options(nostack, preserves_flags),
        );
    }
}

/// `ICH_MISR_EL2`: which maintenance-interrupt conditions hold (0: none,
/// the maintenance interrupt is not asserted).
pub fn ich_misr() -> u64 {
    let v: u64;
    // SAFETY: reading a system register has no side effects.
    unsafe { asm!("mrs {}, ich_misr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// `ICH_EISR_EL2`: bit *n* set when list register *n* holds an interrupt
/// the guest deactivated with `EOI` = 1 (and `HW` = 0).
pub fn ich_eisr() -> u64 {
    let v: u64;
    // SAFETY: reading a system register has no side effects.
    unsafe { asm!("mrs {}, ich_eisr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Saves a vCPU's virtual CPU interface and disables it.
pub fn save_vgic(ctx: &mut VgicContext) {
    let (l0, l1, l2, l3): (u64, u64, u64, u64);
    // SAFETY: reading these registers has no side effects; clearing
    // ICH_HCR_EL2 turns the virtual interface off while the host runs.
    unsafe {
        asm!(
            "mrs {vmcr}, ich_vmcr_el2",
            "mrs {ap}, ich_ap1r0_el2",
            "mrs {l0}, ich_lr0_el2",
            "mrs {l1}, ich_lr1_el2",
            "mrs {l2}, ich_lr2_el2",
            "mrs {l3}, ich_lr3_el2",
            "msr ich_hcr_el2, xzr",
            "isb",
            vmcr = out(reg) ctx.vmcr,
            ap = out(reg) ctx.ap1r0,
            l0 = out(reg) l0,
            l1 = out(reg) l1,
            l2 = out(reg) l2,
            l3 = out(reg) l3,
            options(nostack, preserves_flags),
        );
    }
    ctx.lr = [l0, l1, l2, l3];
}

/// A random number from the CPU (FEAT_RNG `RNDR`), if it gave one.
///
/// # Safety
///
/// Only on a CPU with FEAT_RNG (`ID_AA64ISAR0_EL1.RNDR` != 0); elsewhere the
/// instruction is undefined at EL2.
pub unsafe fn rndr() -> Option<u64> {
    let value: u64;
    let ok: u64;
    // SAFETY: RNDR reads a random number; NZCV reports failure.
    unsafe {
        asm!(
            "mrs {v}, s3_3_c2_c4_0",
            "cset {ok}, ne",
            v = out(reg) value,
            ok = out(reg) ok,
            options(nomem, nostack),
        );
    }
    (ok != 0).then_some(value)
}

/// `CNTHP_CTL_EL2`: the EL2 physical timer's control (ENABLE, IMASK,
/// ISTATUS), which keeps the host's deadline while a guest owns the EL1
/// virtual timer.
pub fn cnthp_ctl() -> u64 {
    let value: u64;
    // SAFETY: reading a system register has no side effects.
    unsafe { asm!("mrs {}, cnthp_ctl_el2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Arms the EL2 physical timer to fire when the physical count reaches
/// `cval` (`ctl` = ENABLE), or turns it off (`ctl` = 0).
pub fn set_host_timer(cval: u64, ctl: u64) {
    // SAFETY: the EL2 physical timer belongs to the hypervisor alone (no
    // lower EL can reach its registers); its interrupt, PPI 26, is taken
    // at EL2 only while a guest runs (HCR_EL2.IMO) and the timer is off
    // whenever the host runs. The ISB makes the new state take effect.
    unsafe {
        asm!(
            "msr cnthp_cval_el2, {cval}",
            "msr cnthp_ctl_el2, {ctl}",
            "isb",
            cval = in(reg) cval,
            ctl = in(reg) ctl,
            options(nostack, preserves_flags),
        );
    }
}

/// Reads a 32-bit GIC redistributor register.
///
/// # Safety
///
/// `address` must be 4-byte aligned and lie in a GIC redistributor region
/// the EL2 stage 1 maps as device memory (`host_timer::init`).
pub unsafe fn gicr_read32(address: u64) -> u32 {
    // SAFETY: the caller guarantees a mapped, aligned device register;
    // reading a redistributor's ID, TYPER, group, priority or enable
    // registers has no side effect.
    unsafe { (address as *const u32).read_volatile() }
}

/// Writes a 32-bit GIC redistributor register and waits for the write to
/// complete.
///
/// # Safety
///
/// As for [`gicr_read32`], and the write must change nothing but the EL2
/// timer's PPI (26) in this CPU's own redistributor.
pub unsafe fn gicr_write32(address: u64, value: u32) {
    // SAFETY: as the caller guarantees; the DSB completes the device write
    // before the guest that relies on the interrupt is entered.
    unsafe {
        (address as *mut u32).write_volatile(value);
        asm!("dsb sy", options(nostack, preserves_flags));
    }
}

/// Sets `VSESR_EL2`, the syndrome of the virtual SError `HCR_EL2.VSE`
/// makes pending (FEAT_RAS).
///
/// # Safety
///
/// Only on a CPU with FEAT_RAS, while the guest is not running.
pub unsafe fn set_vsesr(syndrome: u64) {
    // SAFETY: the caller checked FEAT_RAS; the register only describes the
    // guest's pending virtual SError.
    unsafe { asm!("msr s3_4_c5_c2_3, {}", in(reg) syndrome, options(nostack, preserves_flags)) };
}

/// `TRFCR_EL1` (FEAT_TRF): which of EL0 and EL1 the trace unit may trace.
pub fn trfcr() -> u64 {
    let value: u64;
    // SAFETY: reading a system register has no side effects; callers check
    // FEAT_TRF first.
    unsafe { asm!("mrs {}, s3_0_c1_c2_1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Writes `TRFCR_EL1` and synchronises the trace unit with it: trace
/// generated before stays before (`ISB`, then `TSB CSYNC`).
///
/// # Safety
///
/// Only on a CPU with FEAT_TRF, between an exit and the next entry.
pub unsafe fn set_trfcr(value: u64) {
    // SAFETY: the caller checked FEAT_TRF and switches worlds; TSB CSYNC
    // (hint #18) is a NOP where trace is not implemented.
    unsafe {
        asm!(
            "msr s3_0_c1_c2_1, {}",
            "isb",
            "hint #18",
            in(reg) value,
            options(nostack, preserves_flags),
        );
    }
}

/// `PMCNTENSET_EL0`: the PMU counters (and the cycle counter, bit 31)
/// that are enabled.
pub fn pmcnten() -> u64 {
    let value: u64;
    // SAFETY: reading a system register has no side effects; callers check
    // that a PMU is implemented.
    unsafe { asm!("mrs {}, pmcntenset_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Disables the counters in `mask` (`PMCNTENCLR_EL0`) or enables them
/// (`PMCNTENSET_EL0`).
///
/// # Safety
///
/// Only on a CPU with a PMU, between an exit and the next entry, to pause
/// the host's counters across a protected guest and resume exactly them.
pub unsafe fn set_pmcnten(mask: u64, enable: bool) {
    // SAFETY: as the caller guarantees; the ISB makes the change take
    // effect before the next world runs.
    unsafe {
        if enable {
            asm!("msr pmcntenset_el0, {}", "isb", in(reg) mask, options(nostack, preserves_flags));
        } else {
            asm!("msr pmcntenclr_el0, {}", "isb", in(reg) mask, options(nostack, preserves_flags));
        }
    }
}
