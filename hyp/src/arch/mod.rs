//! Everything that touches the CPU directly: entry, exception vectors,
//! system registers, barriers, TLB maintenance and the jump into the host.
//!
//! This is one of the only modules with `unsafe` (with `mm` and `console`).
//! Every function here is a thin wrapper; the decisions are made by safe
//! code elsewhere.

pub mod cache;
pub mod guest;
pub mod sha256;

use core::arch::{asm, global_asm};

use crate::config::{CARVEOUT_SIZE, EMERGENCY_STACK_SIZE, MAX_CPUS, STACK_PAINT, STACK_SIZE};

/// The saved general-purpose registers of an interrupted context, as laid
/// out by `exception_common` in `entry.S`.
#[repr(C)]
pub struct Frame {
    /// x0..x30
    pub x: [u64; 31],
    _pad: u64,
}

/// A CPU's stacks: its emergency stack and its stack, each with an
/// unmapped guard page below it. The stack is last, so the slot's end is
/// the top of the stack.
#[repr(C, align(4096))]
pub struct CpuStack {
    emergency_guard: [u8; 4096],
    emergency: [u8; EMERGENCY_STACK_SIZE],
    guard: [u8; 4096],
    stack: [u8; STACK_SIZE],
}

/// Size of one [`CpuStack`] slot.
pub const STACK_STRIDE: usize = core::mem::size_of::<CpuStack>();
/// Offset of the top of the emergency stack in a slot.
const EMERGENCY_TOP: usize = core::mem::offset_of!(CpuStack, guard);
const _: () = assert!(STACK_SIZE.is_multiple_of(4096) && EMERGENCY_STACK_SIZE.is_multiple_of(4096));

/// The boot CPU's stacks, in the image: it needs them before the device
/// tree says how many CPUs there are. The other CPUs' stacks are allocated
/// at boot in the carve-out's boot-sized part ([`set_stack_slot`]). Only
/// `entry.S` runs on them; Rust code needs their address ranges to map
/// them and reads their paint to measure them.
#[unsafe(link_section = ".stacks")]
static mut STACKS: CpuStack =
    CpuStack { emergency_guard: [0; 4096], emergency: [0; EMERGENCY_STACK_SIZE], guard: [0; 4096], stack: [0; STACK_SIZE] };

/// Each CPU's stack slot (a [`CpuStack`] layout): its address, or 0 for a
/// CPU without one, which `entry.S` parks. The boot CPU's (slot 0) is
/// written by `primary_entry`, the others by [`set_stack_slot`] at boot,
/// before any other CPU starts, and never changed afterwards.
static mut STACK_SLOTS: [u64; MAX_CPUS] = [0; MAX_CPUS];

/// Whether a CPU has entered the fatal path (`el2_fatal` in `entry.S`):
/// a second EL2 exception on it powers off without reporting again.
static mut FATAL_ENTERED: [u8; MAX_CPUS] = [0; MAX_CPUS];

fn slot_base(cpu: usize) -> Option<u64> {
    if cpu >= MAX_CPUS {
        return None;
    }
    // SAFETY: an aligned 8-byte load of an element of STACK_SLOTS (index
    // checked above); the slots are written only at boot, before the CPUs
    // that read them start, and the load goes through a raw pointer, so no
    // reference to the static mut exists.
    let base = unsafe { (&raw const STACK_SLOTS).cast::<u64>().add(cpu).read_volatile() };
    (base != 0).then_some(base)
}

/// Gives CPU `cpu` (not 0) the stack slot at `base`, [`STACK_STRIDE`]
/// bytes: paints it (see [`stack_high_water`]), then cleans the slot and
/// its address to the point of coherency, because the CPU first uses them
/// with its MMU off. False, changing nothing, if `cpu` is 0 or out of range
/// or `base` is not page-aligned.
///
/// # Safety
///
/// `base` must be RAM that nothing else uses, writable at its address (the
/// MMU off, as at boot, or mapped at EL2; the guard pages need not be), and
/// no CPU with index `cpu` may be running yet.
pub unsafe fn set_stack_slot(cpu: usize, base: u64) -> bool {
    if cpu == 0 || cpu >= MAX_CPUS || !base.is_multiple_of(4096) || base == 0 {
        return false;
    }
    let emergency = base + core::mem::offset_of!(CpuStack, emergency) as u64;
    let stack = base + core::mem::offset_of!(CpuStack, stack) as u64;
    for (from, to) in [(emergency, base + EMERGENCY_TOP as u64), (stack, base + STACK_STRIDE as u64)] {
        let mut at = from;
        while at < to {
            // SAFETY: the caller gives this CPU's stacks to it alone, writable
            // at their address; `at` is 8-byte aligned inside them.
            unsafe { (at as *mut u64).write_volatile(STACK_PAINT) };
            at += 8;
        }
    }
    // SAFETY: `cpu` is in range (checked above) and not running yet, so
    // nothing reads this element concurrently; a raw-pointer store.
    unsafe { (&raw mut STACK_SLOTS).cast::<u64>().add(cpu).write_volatile(base) };
    for range in [
        rampart_platform::MemRange::new(emergency, base + EMERGENCY_TOP as u64),
        rampart_platform::MemRange::new(stack, base + STACK_STRIDE as u64),
        rampart_platform::MemRange::from_base_size((&raw const STACK_SLOTS) as u64 + 8 * cpu as u64, 8),
    ]
    .into_iter()
    .flatten()
    {
        cache::scrub_then_release(range);
    }
    true
}

/// Where a CPU's stack (without its guard page) lies; empty for a CPU
/// without a stack slot.
pub fn stack_range(cpu: usize) -> (u64, u64) {
    let Some(base) = slot_base(cpu) else { return (0, 0) };
    (base + core::mem::offset_of!(CpuStack, stack) as u64, base + STACK_STRIDE as u64)
}

/// Where a CPU's emergency stack (without its guard page) lies; empty for
/// a CPU without a stack slot.
pub fn emergency_stack_range(cpu: usize) -> (u64, u64) {
    let Some(base) = slot_base(cpu) else { return (0, 0) };
    (base + core::mem::offset_of!(CpuStack, emergency) as u64, base + EMERGENCY_TOP as u64)
}

/// A CPU's whole stack slot, guard pages included; empty for a CPU without
/// a stack slot.
pub fn slot_range(cpu: usize) -> (u64, u64) {
    let Some(base) = slot_base(cpu) else { return (0, 0) };
    (base, base + STACK_STRIDE as u64)
}

/// The unmapped guard page below a CPU's stack; empty for a CPU without a
/// stack slot.
pub fn guard_range(cpu: usize) -> (u64, u64) {
    let Some(base) = slot_base(cpu) else { return (0, 0) };
    (base + core::mem::offset_of!(CpuStack, guard) as u64, base + core::mem::offset_of!(CpuStack, stack) as u64)
}

/// The deepest a CPU's stack has been since boot, in bytes: the stack is
/// painted with [`STACK_PAINT`] before any CPU starts, and this finds the
/// lowest word that no longer holds it.
pub fn stack_high_water(cpu: usize) -> u64 {
    let (start, end) = stack_range(cpu);
    let mut at = start;
    while at < end {
        let word: u64;
        // SAFETY: `at` is an 8-byte aligned address inside this CPU's
        // stack, which is mapped at EL2 (or the MMU is off). The load is
        // in assembly, outside Rust's memory model: the owning CPU may be
        // writing its stack at the same time, and a torn or stale value
        // only moves the mark by a word.
        unsafe { asm!("ldr {}, [{}]", out(reg) word, in(reg) at, options(nostack, preserves_flags, readonly)) };
        if word != STACK_PAINT {
            break;
        }
        at += 8;
    }
    end - at
}

/// `SCTLR_EL2` with the MMU and caches off: only the RES1 bits.
pub const SCTLR_EL2_RES1: u64 = 0x30C5_0830;
/// SPSR for entering the host: EL1h with D, A, I and F masked.
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

global_asm!(
    include_str!("entry.S"),
    text_offset = const 0x20_0000u64,
    image_size = const CARVEOUT_SIZE,
    sctlr_mmu_off = const SCTLR_EL2_RES1,
    spsr_el1h = const SPSR_EL1H_MASKED,
    max_cpus = const MAX_CPUS,
    stack_stride = const STACK_STRIDE,
    stack_size = const STACK_SIZE,
    stacks_size = const STACK_STRIDE,
    emergency_top = const EMERGENCY_TOP,
    stack_paint = const STACK_PAINT,
    stacks = sym STACKS,
    stack_slots = sym STACK_SLOTS,
    fatal_entered = sym FATAL_ENTERED,
    el2_fatal = sym crate::exceptions::el2_fatal,
    system_off = const 0x8400_0008u64,
    low_el_tried_hvc = const 0x5241_4d50_4856_4331u64,
    low_el_tried_smc = const 0x5241_4d50_534d_4331u64,
    primary_main = sym crate::primary_main,
    secondary_main = sym crate::secondary_main,
    handle_exception = sym crate::exceptions::handle_exception,
    host_vcpu_run = sym crate::exceptions::host_vcpu_run,
    vcpu_run_id = const rampart_abi::host::HostCall::VcpuRun as u32,
);

unsafe extern "C" {
    fn enter_host(entry: u64, x0: u64) -> !;
    fn enter_host_repaint(entry: u64, x0: u64) -> !;
    fn secondary_entry();
    fn park() -> !;
    fn power_off_low_el() -> !;
}

/// The physical address secondary CPUs start at.
pub fn secondary_entry_address() -> u64 {
    secondary_entry as *const () as u64
}

/// Jumps to the host at EL1h with `x0` set, every other register cleared
/// and interrupts masked, following the Linux arm64 boot protocol.
pub fn jump_to_host(entry: u64, x0: u64) -> ! {
    // SAFETY: `enter_host` takes two plain values, resets this CPU's stack
    // pointer to the top of its own stack (nothing on it is live after this
    // call, which never returns) and leaves EL2 by ERET. The host stage 2 is
    // installed before this point, so the host can reach only its own memory.
    unsafe { enter_host(entry, x0) }
}

/// [`jump_to_host`], painting this CPU's stack again first (see
/// [`stack_high_water`]): the boot CPU's first entry, so that the mark then
/// counts only what the host makes EL2 do.
pub fn jump_to_host_repainted(entry: u64, x0: u64) -> ! {
    // SAFETY: as for `jump_to_host`; the paint covers this CPU's own stack,
    // none of which is live once SP is reset to its top.
    unsafe { enter_host_repaint(entry, x0) }
}

/// The exception level this code runs at (2 unless the loader entered
/// Rampart elsewhere, which `primary_main` refuses).
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack, preserves_flags)) };
    (el >> 2) & 3
}

/// Powers the machine off from below EL2 (HVC, then SMC), or parks.
pub fn power_off_below_el2() -> ! {
    // SAFETY: touches only x0, x21 and VBAR_EL1-routed exceptions, which
    // the entry code pointed at vectors that try the next conduit or park.
    unsafe { power_off_low_el() }
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    // SAFETY: `park` is a WFE loop that touches no memory.
    unsafe { park() }
}

macro_rules! sysreg {
    ($(#[$doc:meta])* $read:ident, $write:ident, $name:literal) => {
        $(#[$doc])*
        #[inline]
        #[allow(dead_code, reason = "some registers are only written")]
        pub fn $read() -> u64 {
            let value: u64;
            // SAFETY: reading a system register has no side effects on memory.
            unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags)) };
            value
        }

        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// The caller must know what the new value does to this CPU's
        /// translation, traps and the interrupted context.
        #[inline]
        #[allow(dead_code, reason = "not every register is written")]
        pub unsafe fn $write(value: u64) {
            // SAFETY: the caller upholds the contract above.
            unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) value, options(nostack, preserves_flags)) };
        }
    };
}

macro_rules! sysreg_ro {
    ($(#[$doc:meta])* $read:ident, $name:literal) => {
        $(#[$doc])*
        #[inline]
        pub fn $read() -> u64 {
            let value: u64;
            // SAFETY: reading a system register has no side effects on memory.
            unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags)) };
            value
        }
    };
}

sysreg!(/// `ESR_EL2`
    esr_el2, set_esr_el2, "esr_el2");
sysreg!(/// `FAR_EL2`
    far_el2, set_far_el2, "far_el2");
sysreg!(/// `HPFAR_EL2`
    hpfar_el2, set_hpfar_el2, "hpfar_el2");
sysreg!(/// `ELR_EL2`
    elr_el2, set_elr_el2, "elr_el2");
sysreg!(/// `SPSR_EL2`
    spsr_el2, set_spsr_el2, "spsr_el2");
sysreg!(/// `ESR_EL1`
    esr_el1, set_esr_el1, "esr_el1");
sysreg!(/// `FAR_EL1`
    far_el1, set_far_el1, "far_el1");
sysreg!(/// `ELR_EL1`
    elr_el1, set_elr_el1, "elr_el1");
sysreg!(/// `SPSR_EL1`
    spsr_el1, set_spsr_el1, "spsr_el1");
sysreg!(/// `VBAR_EL1`
    vbar_el1, set_vbar_el1, "vbar_el1");
sysreg!(/// `SCTLR_EL1`
    sctlr_el1, set_sctlr_el1, "sctlr_el1");
sysreg_ro!(/// `MPIDR_EL1`
    mpidr_el1, "mpidr_el1");
sysreg_ro!(/// `MIDR_EL1`
    midr_el1, "midr_el1");
sysreg_ro!(/// `ID_AA64MMFR0_EL1`
    id_aa64mmfr0_el1, "id_aa64mmfr0_el1");
sysreg_ro!(/// `ID_AA64MMFR1_EL1`
    id_aa64mmfr1_el1, "id_aa64mmfr1_el1");
sysreg_ro!(/// `ID_AA64PFR0_EL1`
    id_aa64pfr0_el1, "id_aa64pfr0_el1");
sysreg_ro!(/// `ID_AA64PFR1_EL1`
    id_aa64pfr1_el1, "id_aa64pfr1_el1");
sysreg_ro!(/// `ID_AA64ISAR1_EL1`
    id_aa64isar1_el1, "id_aa64isar1_el1");
sysreg_ro!(/// `ID_AA64ISAR0_EL1`
    id_aa64isar0_el1, "id_aa64isar0_el1");
sysreg_ro!(/// `ID_AA64DFR0_EL1`
    id_aa64dfr0_el1, "id_aa64dfr0_el1");
sysreg_ro!(/// `ID_AA64MMFR2_EL1`
    id_aa64mmfr2_el1, "s3_0_c0_c7_2");
sysreg_ro!(/// `ID_AA64MMFR3_EL1` (RAZ before it was defined: an ID register)
    id_aa64mmfr3_el1, "s3_0_c0_c7_3");
sysreg_ro!(/// `ID_AA64ISAR2_EL1`
    id_aa64isar2_el1, "s3_0_c0_c6_2");
sysreg_ro!(/// `PMCR_EL0`
    pmcr_el0, "pmcr_el0");
sysreg!(/// `CNTV_CTL_EL0`
    cntv_ctl_el0, set_cntv_ctl_el0, "cntv_ctl_el0");
sysreg!(/// `CNTV_CVAL_EL0`
    cntv_cval_el0, set_cntv_cval_el0, "cntv_cval_el0");
sysreg!(/// `TPIDR_EL2`: this CPU's index.
    tpidr_el2, set_tpidr_el2, "tpidr_el2");
sysreg!(/// `HCR_EL2`
    hcr_el2, set_hcr_el2, "hcr_el2");
sysreg!(/// `VTCR_EL2`
    vtcr_el2, set_vtcr_el2, "vtcr_el2");
sysreg!(/// `VTTBR_EL2`
    vttbr_el2, set_vttbr_el2, "vttbr_el2");
sysreg!(/// `CPTR_EL2`
    cptr_el2, set_cptr_el2, "cptr_el2");
sysreg_ro!(/// `ICH_ELRSR_EL2`: bit n set = list register n holds no interrupt
    ich_elrsr_el2, "s3_4_c12_c11_5");
sysreg!(/// `CNTHCTL_EL2`
    cnthctl_el2, set_cnthctl_el2, "cnthctl_el2");
sysreg!(/// `CNTVOFF_EL2`
    cntvoff_el2, set_cntvoff_el2, "cntvoff_el2");
sysreg!(/// `VPIDR_EL2`
    vpidr_el2, set_vpidr_el2, "vpidr_el2");
sysreg!(/// `VMPIDR_EL2`
    vmpidr_el2, set_vmpidr_el2, "vmpidr_el2");
sysreg!(/// `MDCR_EL2`
    mdcr_el2, set_mdcr_el2, "mdcr_el2");
sysreg!(/// `TRFCR_EL2` (FEAT_TRF)
    trfcr_el2, set_trfcr_el2, "s3_4_c1_c2_1");
sysreg!(/// `PMSCR_EL2` (FEAT_SPE)
    pmscr_el2, set_pmscr_el2, "s3_4_c9_c9_0");
sysreg!(/// `HSTR_EL2`
    hstr_el2, set_hstr_el2, "hstr_el2");
sysreg!(/// `ICC_SRE_EL2`
    icc_sre_el2, set_icc_sre_el2, "icc_sre_el2");
sysreg!(/// `ICH_HCR_EL2`
    ich_hcr_el2, set_ich_hcr_el2, "ich_hcr_el2");
sysreg!(/// `ZCR_EL2` (FEAT_SVE)
    zcr_el2, set_zcr_el2, "s3_4_c1_c2_0");
sysreg!(/// `SMCR_EL2` (FEAT_SME)
    smcr_el2, set_smcr_el2, "s3_4_c1_c2_6");
sysreg!(/// `HCRX_EL2` (FEAT_HCX)
    hcrx_el2, set_hcrx_el2, "s3_4_c1_c2_2");
sysreg!(/// `HFGRTR_EL2` (FEAT_FGT)
    hfgrtr_el2, set_hfgrtr_el2, "s3_4_c1_c1_4");
sysreg!(/// `HFGWTR_EL2` (FEAT_FGT)
    hfgwtr_el2, set_hfgwtr_el2, "s3_4_c1_c1_5");
sysreg!(/// `HFGITR_EL2` (FEAT_FGT)
    hfgitr_el2, set_hfgitr_el2, "s3_4_c1_c1_6");
sysreg!(/// `HDFGRTR_EL2` (FEAT_FGT)
    hdfgrtr_el2, set_hdfgrtr_el2, "s3_4_c3_c1_4");
sysreg!(/// `HDFGWTR_EL2` (FEAT_FGT)
    hdfgwtr_el2, set_hdfgwtr_el2, "s3_4_c3_c1_5");

/// The AArch64 ID register (op0 3, op1 0, CRn 0, `crm`, `op2`) for the
/// ones Rampart shows guests; 0 for any other.
pub fn id_register(crm: u64, op2: u64) -> u64 {
    match (crm, op2) {
        (4, 0) => id_aa64pfr0_el1(),
        (4, 1) => id_aa64pfr1_el1(),
        (5, 0) => id_aa64dfr0_el1(),
        (6, 0) => id_aa64isar0_el1(),
        (6, 1) => id_aa64isar1_el1(),
        (6, 2) => id_aa64isar2_el1(),
        (7, 0) => id_aa64mmfr0_el1(),
        (7, 1) => id_aa64mmfr1_el1(),
        (7, 2) => id_aa64mmfr2_el1(),
        _ => 0,
    }
}

/// The OR of 16 words, read with eight `LDP`s: each 64-bit register of an
/// aligned `LDP` is a single-copy-atomic load, so every word is read as a
/// relaxed atomic load reads it (about 23 instructions; a loop of atomic
/// loads cost about 110, sixteen loads and ORs 31). For a quick "is any
/// bit set" over words other CPUs set with atomic ORs.
#[inline]
pub fn or_16_words(words: &[core::sync::atomic::AtomicU64; 16]) -> u64 {
    let out: u64;
    // SAFETY: `words` is a live, 8-byte-aligned array of 16 words (128
    // bytes from its address); the loads only read it, and an atomic word
    // may be read by any single-copy-atomic load.
    unsafe {
        asm!(
            "ldp {a}, {b}, [{p}]",
            "ldp {c}, {d}, [{p}, #16]",
            "orr {a}, {a}, {b}",
            "orr {a}, {a}, {c}",
            "orr {a}, {a}, {d}",
            "ldp {b}, {c}, [{p}, #32]",
            "ldp {d}, {e}, [{p}, #48]",
            "orr {a}, {a}, {b}",
            "orr {a}, {a}, {c}",
            "orr {a}, {a}, {d}",
            "orr {a}, {a}, {e}",
            "ldp {b}, {c}, [{p}, #64]",
            "ldp {d}, {e}, [{p}, #80]",
            "orr {a}, {a}, {b}",
            "orr {a}, {a}, {c}",
            "orr {a}, {a}, {d}",
            "orr {a}, {a}, {e}",
            "ldp {b}, {c}, [{p}, #96]",
            "ldp {d}, {e}, [{p}, #112]",
            "orr {a}, {a}, {b}",
            "orr {a}, {a}, {c}",
            "orr {a}, {a}, {d}",
            "orr {a}, {a}, {e}",
            p = in(reg) words.as_ptr(),
            a = out(reg) out,
            b = out(reg) _,
            c = out(reg) _,
            d = out(reg) _,
            e = out(reg) _,
            options(nostack, readonly, preserves_flags),
        );
    }
    out
}

/// Instruction synchronisation barrier.
#[inline]
pub fn isb() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Turns on the EL2 MMU with the given translation settings.
///
/// # Safety
///
/// `ttbr0` must be the root of a valid EL2 stage-1 table that maps the
/// code, stack and data this CPU is using at their current (physical)
/// addresses, with attributes matching `mair`.
pub unsafe fn enable_el2_mmu(mair: u64, tcr: u64, ttbr0: u64) {
    const SCTLR_M: u64 = 1 << 0;
    const SCTLR_C: u64 = 1 << 2;
    const SCTLR_SA: u64 = 1 << 3;
    const SCTLR_I: u64 = 1 << 12;
    const SCTLR_WXN: u64 = 1 << 19;
    let sctlr = SCTLR_EL2_RES1 | SCTLR_M | SCTLR_C | SCTLR_SA | SCTLR_I | SCTLR_WXN;
    // SAFETY: the caller guarantees the table identity-maps everything in
    // use, so execution continues at the next instruction once M is set.
    // TLBs for EL2 are invalidated first so no stale entry survives.
    unsafe {
        asm!(
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr}",
            "isb",
            "tlbi alle2",
            "dsb nsh",
            "isb",
            "msr sctlr_el2, {sctlr}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) ttbr0,
            sctlr = in(reg) sctlr,
            options(nostack, preserves_flags),
        );
    }
}

/// Installs the host's stage 2 on this CPU and invalidates its stale
/// stage-1+2 TLB entries for the current VMID.
///
/// # Safety
///
/// `vttbr` must name a valid stage-2 table configured for `vtcr`, and
/// `hcr` must keep the hypervisor's own memory out of the host's reach.
pub unsafe fn install_stage2(vtcr: u64, vttbr: u64, hcr: u64) {
    // SAFETY: the caller guarantees the values are valid; the TLB flush
    // covers the VMID now in VTTBR_EL2.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "isb",
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            "msr hcr_el2, {hcr}",
            "isb",
            vtcr = in(reg) vtcr,
            vttbr = in(reg) vttbr,
            hcr = in(reg) hcr,
            options(nostack, preserves_flags),
        );
    }
}

/// Calls firmware with an SMC (SMCCC 1.1, 64-bit convention): `x0` =
/// function, `x1..x17` = args; returns `x0..x3`.
pub fn smc(function: u32, args: &[u64; 17]) -> [u64; 4] {
    let r = smccc::smc64(function, *args);
    [r[0], r[1], r[2], r[3]]
}

/// Invalidates stage-2 TLB entries for one IPA page (or the block holding
/// it) in the current VMID, on every CPU in the inner-shareable domain.
/// Follow a batch with [`tlbi_stage1_of_vmid`].
pub fn tlbi_ipa(ipa: u64) {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { asm!("tlbi ipas2e1is, {}", in(reg) ipa >> 12, options(nostack, preserves_flags)) };
}

/// Completes stage-2 invalidation: waits for the IPA invalidations, then
/// drops the combined stage-1+2 entries of the current VMID (they are
/// tagged by VA, not IPA), everywhere in the inner-shareable domain.
pub fn tlbi_stage1_of_vmid() {
    // SAFETY: barriers and TLB maintenance only drop cached translations.
    unsafe { asm!("dsb ish", "tlbi vmalle1is", "dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// Invalidates all stage-1 and stage-2 entries of the current VMID.
pub fn tlbi_vmid() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { asm!("dsb ishst", "tlbi vmalls12e1is", "dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// Invalidates the EL2 stage-1 entry for one page, everywhere.
pub fn tlbi_el2_va(va: u64) {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { asm!("dsb ishst", "tlbi vae2is, {}", "dsb ish", "isb", in(reg) va >> 12, options(nostack, preserves_flags)) };
}

/// Invalidates the EL2 stage-1 last-level entries of `pages` pages from
/// `va`, everywhere, after their level-3 descriptors were written invalid
/// (the fixmap's unmap): `DSB ISHST` once so every walker sees the invalid
/// descriptors before any invalidation, `TLBI VALE2IS` per page, then one
/// `DSB ISH` (all invalidations complete on every CPU) and `ISB`. The
/// sequence Linux's `flush_tlb_kernel_range` issues; the per-page barriers
/// of [`tlbi_el2_va`] add nothing between invalidations of the same kind.
/// Last level only (`VALE2IS`): only level-3 descriptors changed, no
/// table was freed, so walk-cache entries for the tables stay correct.
pub fn tlbi_el2_leaf_range(va: u64, pages: u64) {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    let mut page = va >> 12;
    let end = page + pages;
    while page < end {
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { asm!("tlbi vale2is, {}", in(reg) page, options(nostack, preserves_flags)) };
        page += 1;
    }
    // SAFETY: barriers have no effect on memory contents.
    unsafe { asm!("dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// Runs `f` with `vttbr` in VTTBR_EL2 (so TLB maintenance by IPA or VMID
/// targets that VMID), then restores the previous value.
pub fn with_vttbr(vttbr: u64, f: impl FnOnce()) {
    let previous = vttbr_el2();
    if previous == vttbr {
        return f();
    }
    // SAFETY: EL2 does not translate through stage 2, and no lower EL runs
    // until VTTBR_EL2 is restored below; only TLB maintenance uses it.
    unsafe { set_vttbr_el2(vttbr) };
    isb();
    f();
    // SAFETY: as above.
    unsafe { set_vttbr_el2(previous) };
    isb();
}

/// Zeroes `len` bytes at `start` (both multiples of 4 KiB) and cleans and
/// invalidates them to the point of coherency in one pass, `DC ZVA` then
/// `DC CIVAC` of each line, then `DSB SY` (issue 16: one loop instead of a
/// zeroing pass and a cleaning pass). Eight lines an iteration: `DC` takes
/// no offset, so each line still costs its two `DC` and one `ADD`, but
/// the compare and branch are paid once per eight lines (26 instructions
/// for 8 lines, 208 a 4 KiB page with 64-byte lines, against 5 a line,
/// 320 a page, looping per line).
///
/// Only when `DC ZVA` is allowed and its block is the data-cache line
/// (`DCZID_EL0`, `CTR_EL0.DminLine`), so `DC CIVAC` at the block's address
/// cleans exactly the bytes `DC ZVA` wrote; returns `false` without
/// touching memory otherwise, and the caller zeroes and cleans in two
/// passes.
///
/// # Safety
///
/// As [`zero_pages`].
pub unsafe fn zero_clean_pages(start: u64, len: u64) -> bool {
    let dczid: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
    let block = 4u64 << (dczid & 0xf);
    if dczid & (1 << 4) != 0 || block != cache::dcache_line() || block > 4096 || len == 0 {
        return false;
    }
    // Eight blocks an iteration when they tile a page (blocks up to 512
    // bytes: every real line size), else one.
    if (8 * block).is_power_of_two() && 8 * block <= 4096 {
        // SAFETY: as below; `len` is a multiple of 4 KiB and so of the
        // 8 * `block` bytes each iteration covers, so the last iteration
        // ends exactly at `start + len`, and every `DC` lies inside the
        // range.
        unsafe {
            asm!(
                "1:",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "dc zva, {a}",
                "dc civac, {a}",
                "add {a}, {a}, {step}",
                "cmp {a}, {end}",
                "b.lo 1b",
                "dsb sy",
                a = inout(reg) start => _,
                step = in(reg) block,
                end = in(reg) start + len,
                options(nostack),
            );
        }
        return true;
    }
    // SAFETY: the caller's range is mapped as normal memory at EL2 and
    // unaliased; each step zeroes one aligned block inside it and writes
    // that line back to the point of coherency (DC CIVAC is ordered after
    // the DC ZVA to the same line), which changes no contents.
    unsafe {
        asm!(
            "1:",
            "dc zva, {a}",
            "dc civac, {a}",
            "add {a}, {a}, {step}",
            "cmp {a}, {end}",
            "b.lo 1b",
            "dsb sy",
            a = inout(reg) start => _,
            step = in(reg) block,
            end = in(reg) start + len,
            options(nostack),
        );
    }
    true
}

/// Zeroes `len` bytes at `start` (both multiples of 4 KiB) with `DC ZVA`
/// when the CPU allows it, else with paired stores.
///
/// # Safety
///
/// The range must be mapped at EL2 as normal writable memory and must not
/// be referenced by Rust code.
pub unsafe fn zero_pages(start: u64, len: u64) {
    let dczid: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack, preserves_flags)) };
    let prohibited = dczid & (1 << 4) != 0;
    let block = 4u64 << (dczid & 0xf);
    let end = start + len;
    if !prohibited && block <= 4096 {
        let mut at = start;
        while at < end {
            // SAFETY: `at` lies in the caller's range, which is mapped as
            // normal memory; DC ZVA zeroes exactly one aligned block.
            unsafe { asm!("dc zva, {}", in(reg) at, options(nostack, preserves_flags)) };
            at += block;
        }
    } else {
        let mut at = start;
        while at < end {
            // SAFETY: writes 64 bytes inside the caller's range.
            unsafe {
                asm!(
                    "stp xzr, xzr, [{a}]",
                    "stp xzr, xzr, [{a}, #16]",
                    "stp xzr, xzr, [{a}, #32]",
                    "stp xzr, xzr, [{a}, #48]",
                    a = in(reg) at,
                    options(nostack, preserves_flags),
                );
            }
            at += 64;
        }
    }
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// Makes page-table writes visible to the table walkers of every CPU.
pub fn dsb_ishst() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}
