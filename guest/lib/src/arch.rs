//! Everything that touches the machine: entry code, exception vectors,
//! system registers, MMIO, guest-RAM access and fault probes. This is the
//! only module with `unsafe` or `asm!`.
//!
//! The guest runs with its MMU off, so every data access is Device-nGnRnE
//! and every address is guest-physical. The target has `strict-align`, so
//! compiled Rust never makes an unaligned access. Atomics: loads and stores
//! are plain `LDAR`/`STLR`; read-modify-write atomics (only the console
//! lock) compile to `LDAXR`/`STLXR`, which the architecture leaves
//! CONSTRAINED UNPREDICTABLE on Device memory but QEMU's TCG implements as
//! on Normal memory, which is all these test guests run on.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rampart_abi::guest::layout::{GUEST_RAM_BASE, GUEST_UART_BASE, UART_DR, UART_FR};

/// Most vCPUs a guest supports (the linker script has one stack each).
pub const MAX_VCPUS: usize = 8;
/// Bytes of stack per vCPU; must match `STACK_SIZE` in `guest.ld`.
pub const STACK_SIZE: usize = 0x4000;
/// Guest RAM assumed when vCPU 0 is entered with `x0` = 0 (plain QEMU with
/// `-device loader`, no VMM to pass the size).
pub const DEFAULT_RAM_SIZE: u64 = 16 << 20;

/// `SCTLR_EL1`: the ARMv8.0 RES1 bits, I-cache on, SP alignment check on,
/// MMU and D-cache off, little-endian.
const SCTLR_EL1_VALUE: u64 = 0x30d0_0800 | (1 << 12) | (1 << 3);

// ---------------------------------------------------------------------------
// Entry: vCPU 0 at the image's first byte, secondaries at `secondary_entry`.
// ---------------------------------------------------------------------------

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    // vCPU 0: x0 = guest RAM size in bytes.
    mov     x19, x0
    mov     x20, #0
    b       common_entry

    .section .text.entry, "ax"
    // PSCI CPU_ON entry: x0 = context = the vCPU's index.
    .global rampart_guest_secondary_entry
rampart_guest_secondary_entry:
    mov     x19, #0
    mov     x20, x0
common_entry:
    msr     daifset, #0xf
    mov     x9, #(3 << 20)          // CPACR_EL1.FPEN = 0b11: Rust uses SIMD
    msr     cpacr_el1, x9
    ldr     x9, ={sctlr}
    msr     sctlr_el1, x9
    msr     spsel, #1
    isb
    cmp     x20, #{max_vcpus}
    b.hs    9f                      // no stack for it: park
    msr     tpidr_el1, x20          // the vCPU index, for cpu_index()
    adrp    x9, __stacks_start
    add     x9, x9, :lo12:__stacks_start
    add     x10, x20, #1
    mov     x11, #{stack_size}
    madd    x9, x10, x11, x9        // top of this vCPU's stack
    mov     sp, x9
    adrp    x9, vectors
    add     x9, x9, :lo12:vectors
    msr     vbar_el1, x9
    isb
    cbnz    x20, 2f
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
1:  cmp     x9, x10
    b.hs    3f
    stp     xzr, xzr, [x9], #16
    b       1b
3:  mov     x0, x19
    bl      {primary}
2:  mov     x0, x20
    bl      {secondary}
9:  wfi
    b       9b
    "#,
    sctlr = const SCTLR_EL1_VALUE,
    stack_size = const STACK_SIZE,
    max_vcpus = const MAX_VCPUS,
    primary = sym primary_entry_rust,
    secondary = sym secondary_entry_rust,
);

unsafe extern "Rust" {
    // Defined by `rampart_guest::entry!` in the guest binary.
    fn rampart_guest_main(ram_size: u64);
    fn rampart_guest_secondary(index: usize);
}

unsafe extern "C" {
    fn rampart_guest_secondary_entry();
    static __image_start: u8;
    static __image_end: u8;
}

/// Guest RAM size, from `x0` at entry (or [`DEFAULT_RAM_SIZE`]).
static RAM_SIZE: AtomicU64 = AtomicU64::new(DEFAULT_RAM_SIZE);

extern "C" fn primary_entry_rust(x0: u64) -> ! {
    RAM_SIZE.store(
        if x0 == 0 { DEFAULT_RAM_SIZE } else { x0 },
        Ordering::SeqCst,
    );
    crate::start_primary(x0);
    // SAFETY: `entry!` defines `rampart_guest_main` with exactly this
    // signature (a plain Rust fn); the binary fails to link without it.
    unsafe { rampart_guest_main(ram_size()) };
    crate::report::done()
}

extern "C" fn secondary_entry_rust(index: u64) -> ! {
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    // SAFETY: as for `rampart_guest_main`.
    unsafe { rampart_guest_secondary(index) };
    crate::hvc::psci::cpu_off();
    park()
}

/// Guest-physical address of the PSCI `CPU_ON` entry point for secondary
/// vCPUs (pass the vCPU's index as the context).
pub fn secondary_entry_address() -> u64 {
    rampart_guest_secondary_entry as *const () as usize as u64
}

/// Guest RAM size in bytes (`x0` at entry; [`DEFAULT_RAM_SIZE`] if that was 0).
pub fn ram_size() -> u64 {
    RAM_SIZE.load(Ordering::SeqCst)
}

/// `[start, end)` of the image including bss and stacks.
pub fn image_range() -> (u64, u64) {
    // Only the addresses of the linker symbols are taken; nothing is read.
    (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__image_end) as u64,
    )
}

/// `[start, end)` of guest RAM the image does not use: free for tests.
pub fn free_ram() -> (u64, u64) {
    let (_, image_end) = image_range();
    let end = GUEST_RAM_BASE.saturating_add(ram_size());
    (image_end, end.max(image_end))
}

// ---------------------------------------------------------------------------
// Free guest RAM: volatile access, checked to stay outside the image.
// ---------------------------------------------------------------------------

fn assert_free(addr: u64, size: u64) {
    let (start, end) = free_ram();
    assert!(
        addr >= start && addr.checked_add(size).is_some_and(|e| e <= end),
        "{addr:#x} is not free guest RAM"
    );
    assert!(addr.is_multiple_of(size), "{addr:#x} is unaligned");
}

/// Writes `value` at `addr`, which must be 8-byte aligned free guest RAM.
pub fn ram_write_u64(addr: u64, value: u64) {
    assert_free(addr, 8);
    // SAFETY: `addr` is aligned, inside guest RAM and outside the image,
    // stacks and bss (checked above), so no Rust object lives there.
    unsafe { (addr as *mut u64).write_volatile(value) }
}

/// Reads the 8 bytes at `addr` (aligned free guest RAM).
pub fn ram_read_u64(addr: u64) -> u64 {
    assert_free(addr, 8);
    // SAFETY: as for `ram_write_u64`; any bit pattern is a valid u64.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Writes `value` at `addr` (4-byte aligned free guest RAM).
pub fn ram_write_u32(addr: u64, value: u32) {
    assert_free(addr, 4);
    // SAFETY: as for `ram_write_u64`.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

/// Reads the 4 bytes at `addr` (aligned free guest RAM).
pub fn ram_read_u32(addr: u64) -> u32 {
    assert_free(addr, 4);
    // SAFETY: as for `ram_read_u64`.
    unsafe { (addr as *const u32).read_volatile() }
}

/// Writes the byte at `addr` (free guest RAM).
pub fn ram_write_u8(addr: u64, value: u8) {
    assert_free(addr, 1);
    // SAFETY: as for `ram_write_u64`.
    unsafe { (addr as *mut u8).write_volatile(value) }
}

/// Reads the byte at `addr` (free guest RAM).
pub fn ram_read_u8(addr: u64) -> u8 {
    assert_free(addr, 1);
    // SAFETY: as for `ram_read_u64`.
    unsafe { (addr as *const u8).read_volatile() }
}

// ---------------------------------------------------------------------------
// Console MMIO.
// ---------------------------------------------------------------------------

/// Writes one byte to the console's data register (an MMIO exit in a VM).
pub fn uart_write(byte: u8) {
    // SAFETY: GUEST_UART_BASE + UART_DR is the console's data register,
    // device memory no Rust object aliases; a 32-bit write is what a PL011
    // expects.
    unsafe { ((GUEST_UART_BASE + UART_DR) as *mut u32).write_volatile(u32::from(byte)) }
}

/// `UARTCR`, the console's control register: the VMMs ignore writes to it.
pub const UART_CR: u64 = 0x30;

/// Writes `value` to the console's control register: one MMIO exit in a VM
/// that the VMM handles and ignores (the bench guest's MMIO workload).
pub fn uart_write_control(value: u32) {
    // SAFETY: as for `uart_write`: UARTCR is a register of the console's
    // device page, which no Rust object aliases.
    unsafe { ((GUEST_UART_BASE + UART_CR) as *mut u32).write_volatile(value) }
}

/// Reads the console's flag register (an MMIO exit in a VM).
pub fn uart_flags() -> u32 {
    // SAFETY: as for `uart_write`; reading UARTFR has no side effect.
    unsafe { ((GUEST_UART_BASE + UART_FR) as *const u32).read_volatile() }
}

// ---------------------------------------------------------------------------
// System registers and instructions.
// ---------------------------------------------------------------------------

macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading this system register has no side effect and
        // touches no memory.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags)) };
        value
    }};
}

macro_rules! write_sysreg {
    ($name:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: the callers below write only registers that control this
        // vCPU's timer and GIC CPU interface, which no Rust object depends
        // on; followed by an ISB so the effect is visible at once.
        unsafe { asm!(concat!("msr ", $name, ", {}"), "isb", in(reg) value, options(nostack, preserves_flags)) };
    }};
}

/// This vCPU's index (0 for the boot vCPU, the `CPU_ON` context for others).
pub fn cpu_index() -> usize {
    usize::try_from(read_sysreg!("tpidr_el1")).unwrap_or(0) % MAX_VCPUS
}

/// `MPIDR_EL1`.
pub fn mpidr() -> u64 {
    read_sysreg!("mpidr_el1")
}

/// `CurrentEL` (the exception level in bits 3:2).
pub fn current_el() -> u64 {
    (read_sysreg!("CurrentEL") >> 2) & 3
}

/// `CNTFRQ_EL0`: the counter frequency in Hz.
pub fn counter_frequency() -> u64 {
    read_sysreg!("cntfrq_el0")
}

/// `CNTVCT_EL0`: the virtual count.
pub fn virtual_count() -> u64 {
    // SAFETY: reads a register, no memory; the ISB orders it after
    // earlier instructions.
    unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
    read_sysreg!("cntvct_el0")
}

/// `CNTV_CTL_EL0`.
pub fn virtual_timer_control() -> u64 {
    read_sysreg!("cntv_ctl_el0")
}

/// Writes `CNTV_CTL_EL0` (bit 0 ENABLE, bit 1 IMASK; bit 2 ISTATUS is RO).
pub fn set_virtual_timer_control(value: u64) {
    write_sysreg!("cntv_ctl_el0", value);
}

/// Writes `CNTV_TVAL_EL0`: the timer fires `ticks` counts from now.
pub fn set_virtual_timer_value(ticks: u64) {
    write_sysreg!("cntv_tval_el0", ticks);
}

/// Enables the GICv3 CPU interface for Group 1 interrupts of any priority:
/// `ICC_SRE_EL1.SRE`, `ICC_PMR_EL1` = 0xff, `ICC_BPR1_EL1` = 0,
/// `ICC_CTLR_EL1.EOImode` = 0, `ICC_IGRPEN1_EL1` = 1.
pub fn gic_cpu_interface_enable() {
    write_sysreg!("S3_0_C12_C12_5", read_sysreg!("S3_0_C12_C12_5") | 1); // ICC_SRE_EL1
    write_sysreg!("S3_0_C4_C6_0", 0xff); // ICC_PMR_EL1
    write_sysreg!("S3_0_C12_C12_3", 0); // ICC_BPR1_EL1
    write_sysreg!("S3_0_C12_C12_4", read_sysreg!("S3_0_C12_C12_4") & !2); // ICC_CTLR_EL1
    write_sysreg!("S3_0_C12_C12_7", 1); // ICC_IGRPEN1_EL1
}

/// Reads `ICC_IAR1_EL1`: acknowledges the highest-priority pending Group 1
/// interrupt and returns its ID (1023 if none).
pub fn gic_acknowledge() -> u32 {
    let intid: u64;
    // SAFETY: acknowledging changes only the GIC's state for this vCPU; no
    // memory is touched.
    unsafe {
        asm!("mrs {}, S3_0_C12_C12_0", out(reg) intid, options(nomem, nostack, preserves_flags))
    };
    u32::try_from(intid & 0xff_ffff).unwrap_or(1023)
}

/// Writes `ICC_EOIR1_EL1`: ends (drops priority and deactivates) `intid`.
pub fn gic_end(intid: u32) {
    write_sysreg!("S3_0_C12_C12_1", u64::from(intid));
}

/// Unmasks IRQs (`PSTATE.I` = 0).
pub fn irq_enable() {
    // SAFETY: the IRQ vector saves and restores every register it uses.
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack, preserves_flags)) };
}

/// Masks IRQs (`PSTATE.I` = 1).
pub fn irq_disable() {
    // SAFETY: masking interrupts has no memory effect.
    unsafe { asm!("msr daifset, #2", "isb", options(nostack, preserves_flags)) };
}

/// `WFI`: waits for an interrupt (an `EXIT_WAIT` in a VM).
pub fn wait_for_interrupt() {
    // SAFETY: WFI only waits.
    unsafe { asm!("dsb sy", "wfi", options(nostack, preserves_flags)) };
}

/// Waits for ever (after SYSTEM_OFF failed, or for a parked vCPU).
pub fn park() -> ! {
    loop {
        wait_for_interrupt();
    }
}

// ---------------------------------------------------------------------------
// GICv3 distributor and redistributor of plain QEMU `virt` — only when no
// hypervisor runs the guest (in a Rampart VM these addresses are not the
// guest's and no distributor is emulated).
// ---------------------------------------------------------------------------

const QEMU_GICD: u64 = 0x0800_0000;
const QEMU_GICR: u64 = 0x080a_0000;

fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: called only for the QEMU `virt` GIC registers below, device
    // memory that no Rust object aliases.
    unsafe { (addr as *const u32).read_volatile() }
}

fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: as for `mmio_read32`.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

/// On plain QEMU `virt` (GICv3, no security extensions), routes PPI
/// `intid` to vCPU 0 as a Group 1 interrupt: enables the distributor,
/// wakes redistributor 0 and enables the PPI there. Call only when
/// [`crate::no_hypervisor`] is true and only on vCPU 0.
pub fn qemu_gic_enable_ppi(intid: u32) {
    assert!(crate::no_hypervisor() && cpu_index() == 0 && (16..32).contains(&intid));
    mmio_write32(QEMU_GICD, (1 << 4) | (1 << 1) | 1); // ARE, EnableGrp1, EnableGrp0
    while mmio_read32(QEMU_GICD) & (1 << 31) != 0 {} // RWP
    let waker = QEMU_GICR + 0x14;
    mmio_write32(waker, mmio_read32(waker) & !(1 << 1)); // ProcessorSleep = 0
    while mmio_read32(waker) & (1 << 2) != 0 {} // ChildrenAsleep
    let sgi = QEMU_GICR + 0x1_0000;
    mmio_write32(sgi + 0x80, mmio_read32(sgi + 0x80) | (1 << intid)); // IGROUPR0
    let priority = sgi + 0x400 + u64::from(intid & !3);
    let shift = (intid & 3) * 8;
    mmio_write32(
        priority,
        (mmio_read32(priority) & !(0xff << shift)) | (0x80 << shift),
    );
    mmio_write32(sgi + 0x100, 1 << intid); // ISENABLER0
}

// ---------------------------------------------------------------------------
// Exception vectors.
// ---------------------------------------------------------------------------

/// Register frame the vector code saves; layout shared with the assembly.
#[repr(C)]
struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    esr: u64,
    far: u64,
    vector: u64,
    q: [u128; 32],
    fpsr: u64,
    fpcr: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<Frame>();
const _: () = assert!(FRAME_SIZE == 816 && FRAME_SIZE.is_multiple_of(16));
const _: () = assert!(core::mem::offset_of!(Frame, q) == 288);

global_asm!(
    r#"
    .macro VECTOR index
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    mov     x0, #\index
    b       vector_common
    .endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global vectors
vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15

vector_common:
    str     x0, [sp, #280]          // vector index
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el1
    stp     x30, x2, [sp, #240]
    mrs     x2, spsr_el1
    mrs     x3, esr_el1
    stp     x2, x3, [sp, #256]
    mrs     x2, far_el1
    str     x2, [sp, #272]
    add     x2, sp, #288
    stp     q0, q1, [x2, #0]
    stp     q2, q3, [x2, #32]
    stp     q4, q5, [x2, #64]
    stp     q6, q7, [x2, #96]
    stp     q8, q9, [x2, #128]
    stp     q10, q11, [x2, #160]
    stp     q12, q13, [x2, #192]
    stp     q14, q15, [x2, #224]
    stp     q16, q17, [x2, #256]
    stp     q18, q19, [x2, #288]
    stp     q20, q21, [x2, #320]
    stp     q22, q23, [x2, #352]
    stp     q24, q25, [x2, #384]
    stp     q26, q27, [x2, #416]
    stp     q28, q29, [x2, #448]
    stp     q30, q31, [x2, #480]
    mrs     x3, fpsr
    mrs     x4, fpcr
    str     x3, [sp, #800]
    str     x4, [sp, #808]
    mov     x0, sp
    bl      {handler}
    ldr     x3, [sp, #800]
    ldr     x4, [sp, #808]
    add     x2, sp, #288
    msr     fpsr, x3
    msr     fpcr, x4
    ldp     q0, q1, [x2, #0]
    ldp     q2, q3, [x2, #32]
    ldp     q4, q5, [x2, #64]
    ldp     q6, q7, [x2, #96]
    ldp     q8, q9, [x2, #128]
    ldp     q10, q11, [x2, #160]
    ldp     q12, q13, [x2, #192]
    ldp     q14, q15, [x2, #224]
    ldp     q16, q17, [x2, #256]
    ldp     q18, q19, [x2, #288]
    ldp     q20, q21, [x2, #320]
    ldp     q22, q23, [x2, #352]
    ldp     q24, q25, [x2, #384]
    ldp     q26, q27, [x2, #416]
    ldp     q28, q29, [x2, #448]
    ldp     q30, q31, [x2, #480]
    ldp     x30, x2, [sp, #240]
    msr     elr_el1, x2
    ldr     x2, [sp, #256]
    msr     spsr_el1, x2
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #{frame_size}
    eret
    "#,
    frame_size = const FRAME_SIZE,
    handler = sym handle_exception,
);

/// What an exception left in the syndrome registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trap {
    /// `ESR_EL1`.
    pub esr: u64,
    /// `FAR_EL1` (valid for aborts).
    pub far: u64,
    /// `ELR_EL1`: the instruction that trapped.
    pub elr: u64,
}

impl Trap {
    /// `ESR_EL1.EC`.
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }

    /// `ESR_EL1.ISS` fault status code (DFSC/IFSC, bits 5:0).
    pub fn fault_status(&self) -> u64 {
        self.esr & 0x3f
    }

    /// A synchronous external abort on a data access from EL1 (EC 0x25,
    /// DFSC 0x10), what Rampart injects for an access it refuses.
    pub fn is_external_data_abort(&self) -> bool {
        self.ec() == 0x25 && self.fault_status() == 0x10
    }

    /// An undefined instruction (EC 0).
    pub fn is_undefined(&self) -> bool {
        self.ec() == 0
    }
}

impl core::fmt::Display for Trap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ESR={:#x} (EC={:#x} FSC={:#x}) FAR={:#x} ELR={:#x}",
            self.esr,
            self.ec(),
            self.fault_status(),
            self.far,
            self.elr
        )
    }
}

/// Vector names by index (offset / 0x80).
const VECTOR_NAMES: [&str; 16] = [
    "sync/EL1t",
    "irq/EL1t",
    "fiq/EL1t",
    "serror/EL1t",
    "sync/EL1h",
    "irq/EL1h",
    "fiq/EL1h",
    "serror/EL1h",
    "sync/EL0-64",
    "irq/EL0-64",
    "fiq/EL0-64",
    "serror/EL0-64",
    "sync/EL0-32",
    "irq/EL0-32",
    "fiq/EL0-32",
    "serror/EL0-32",
];

const VECTOR_SYNC_EL1H: u64 = 4;
const VECTOR_IRQ_EL1H: u64 = 5;

/// Per vCPU: a probe is running and a synchronous exception is expected.
static ARMED: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Per vCPU: the armed probe took an exception.
static TRAPPED: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
static TRAP_ESR: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static TRAP_FAR: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
static TRAP_ELR: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// An `HVC` was undefined: no hypervisor at EL2.
static HVC_UNDEFINED: AtomicBool = AtomicBool::new(false);

/// Whether an `HVC` has been undefined (no EL2: plain QEMU).
pub fn hvc_undefined() -> bool {
    HVC_UNDEFINED.load(Ordering::SeqCst)
}

/// `HVC #imm`: `0xd4000002 | imm16 << 5`.
fn is_hvc(instruction: u32) -> bool {
    instruction & 0xffe0_001f == 0xd400_0002
}

/// `SMC #imm`: `0xd4000003 | imm16 << 5`.
fn is_smc(instruction: u32) -> bool {
    instruction & 0xffe0_001f == 0xd400_0003
}

fn instruction_at(addr: u64) -> u32 {
    if !addr.is_multiple_of(4) {
        return 0;
    }
    // SAFETY: `addr` is ELR_EL1 of a synchronous exception taken from EL1,
    // the address of an instruction this guest executed, so it is mapped
    // (MMU off: any guest RAM) and 4-byte aligned (checked).
    unsafe { (addr as *const u32).read_volatile() }
}

extern "C" fn handle_exception(frame: &mut Frame) {
    let cpu = cpu_index();
    let trap = Trap {
        esr: frame.esr,
        far: frame.far,
        elr: frame.elr,
    };
    match frame.vector {
        VECTOR_SYNC_EL1H if ARMED[cpu].load(Ordering::SeqCst) => {
            TRAP_ESR[cpu].store(trap.esr, Ordering::SeqCst);
            TRAP_FAR[cpu].store(trap.far, Ordering::SeqCst);
            TRAP_ELR[cpu].store(trap.elr, Ordering::SeqCst);
            TRAPPED[cpu].store(true, Ordering::SeqCst);
            ARMED[cpu].store(false, Ordering::SeqCst);
            frame.elr += 4;
        }
        VECTOR_SYNC_EL1H if trap.is_undefined() && is_smc(instruction_at(trap.elr)) => {
            // No EL2 or EL3 to take it (plain QEMU): NOT_SUPPORTED.
            frame.x[0] = u64::MAX;
            frame.elr += 4;
        }
        VECTOR_SYNC_EL1H if trap.is_undefined() && is_hvc(instruction_at(trap.elr)) => {
            // No EL2 (plain QEMU): the call returns NOT_SUPPORTED.
            HVC_UNDEFINED.store(true, Ordering::SeqCst);
            frame.x[0] = u64::MAX;
            frame.elr += 4;
        }
        VECTOR_IRQ_EL1H => crate::irq::handle(),
        vector => {
            let name = usize::try_from(vector)
                .ok()
                .and_then(|v| VECTOR_NAMES.get(v))
                .unwrap_or(&"?");
            crate::report::fatal(format_args!(
                "unexpected {name} exception on vCPU {cpu}: {trap} SPSR={:#x}",
                frame.spsr
            ))
        }
    }
}

/// Runs `f` with a synchronous exception expected: if one is taken, the
/// faulting instruction is skipped and its syndrome returned.
fn armed<R>(f: impl FnOnce() -> R) -> (R, Option<Trap>) {
    let cpu = cpu_index();
    TRAPPED[cpu].store(false, Ordering::SeqCst);
    ARMED[cpu].store(true, Ordering::SeqCst);
    let result = f();
    ARMED[cpu].store(false, Ordering::SeqCst);
    let trap = TRAPPED[cpu].load(Ordering::SeqCst).then(|| Trap {
        esr: TRAP_ESR[cpu].load(Ordering::SeqCst),
        far: TRAP_FAR[cpu].load(Ordering::SeqCst),
        elr: TRAP_ELR[cpu].load(Ordering::SeqCst),
    });
    (result, trap)
}

/// Value a probed load leaves if it was skipped.
const PROBE_SENTINEL: u64 = 0xdead_beef_dead_beef;

fn assert_outside_ram(addr: u64) {
    let (image_start, _) = image_range();
    let ram_end = GUEST_RAM_BASE.saturating_add(ram_size());
    assert!(
        addr.is_multiple_of(8) && (addr < image_start || addr >= ram_end),
        "probe address {addr:#x} is guest RAM or unaligned"
    );
}

/// Loads 8 bytes from `addr`, outside guest RAM, catching an abort.
pub fn probe_read(addr: u64) -> Result<u64, Trap> {
    assert_outside_ram(addr);
    let (value, trap) = armed(|| {
        let mut value = PROBE_SENTINEL;
        // SAFETY: `addr` is aligned and outside guest RAM (checked), so no
        // Rust object is read; an abort skips the load (see `armed`),
        // leaving `value` as it was.
        unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = inout(reg) value, options(nostack)) };
        value
    });
    trap.map_or(Ok(value), Err)
}

/// Stores 8 bytes at `addr`, outside guest RAM, catching an abort.
pub fn probe_write(addr: u64, value: u64) -> Result<(), Trap> {
    assert_outside_ram(addr);
    let ((), trap) = armed(|| {
        // SAFETY: `addr` is aligned and outside guest RAM (checked), so no
        // Rust object is written; an abort skips the store.
        unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)) };
    });
    trap.map_or(Ok(()), Err)
}

/// Loads 8 bytes from free guest RAM (past the image: no Rust object),
/// catching an abort: for a realm granule another vCPU may make EMPTY
/// meanwhile (issue 12, `guest/realm`'s race).
pub fn probe_read_free(addr: u64) -> Result<u64, Trap> {
    assert_free(addr, 8);
    let (value, trap) = armed(|| {
        let mut value = PROBE_SENTINEL;
        // SAFETY: `addr` is aligned free RAM (checked), so no Rust object
        // is read; an abort skips the load (see `armed`).
        unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = inout(reg) value, options(nostack)) };
        value
    });
    trap.map_or(Ok(value), Err)
}

/// Stores 8 bytes in free guest RAM, catching an abort (see
/// [`probe_read_free`]).
pub fn probe_write_free(addr: u64, value: u64) -> Result<(), Trap> {
    assert_free(addr, 8);
    let ((), trap) = armed(|| {
        // SAFETY: `addr` is aligned free RAM (checked), so no Rust object
        // is written; an abort skips the store.
        unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)) };
    });
    trap.map_or(Ok(()), Err)
}

/// `SMC #0` with `x0` = `function`, `x1`..`x3` = `args`, catching an
/// undefined-instruction exception. Returns `x0`..`x3`.
pub fn probe_smc(function: u32, args: [u64; 3]) -> Result<[u64; 4], Trap> {
    let (regs, trap) = armed(|| {
        let mut r = [u64::from(function), args[0], args[1], args[2]];
        // SAFETY: an SMCCC call: x0..x3 in/out, x4..x17 declared clobbered
        // (SMCCC 1.0 callers may not rely on them); no memory of ours is
        // touched. If it is undefined it is skipped (see `armed`).
        unsafe {
            asm!("smc #0",
                inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _, options(nostack))
        };
        r
    });
    trap.map_or(Ok(regs), Err)
}

/// `HVC #1` (a non-zero immediate) with `x0` = `function`, catching an
/// undefined-instruction exception. Returns `x0`.
pub fn probe_hvc_immediate_1(function: u32) -> Result<u64, Trap> {
    let (x0, trap) = armed(|| {
        let mut x0 = u64::from(function);
        // SAFETY: as for `probe_smc`.
        unsafe {
            asm!("hvc #1",
                inout("x0") x0, out("x1") _, out("x2") _, out("x3") _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _, options(nostack))
        };
        x0
    });
    // An undefined `HVC #1` is not "no hypervisor": report it as a trap.
    trap.map_or(Ok(x0), Err)
}

/// `BRK #0x5a` (what Linux's `BUG()` and `WARN()` execute, with their own
/// immediates), catching the exception. Returns the trap the guest's own
/// EL1 vector saw, if any.
pub fn probe_brk() -> Option<Trap> {
    let ((), trap) = armed(|| {
        // SAFETY: a breakpoint instruction touches no memory; the armed
        // vector skips it.
        unsafe { asm!("brk #0x5a", options(nomem, nostack)) };
    });
    trap
}

// ---------------------------------------------------------------------------
// Register preservation across exits.
// ---------------------------------------------------------------------------

global_asm!(
    r#"
    .section .text.regcheck, "ax"
    // x0 = 0: HVC #0 with function ID x1; x0 = 1: 32-bit load from x1.
    // Fills x2..x28 and v0..v31 with known values, makes the exit, and
    // returns 0 if every register the exit may not change kept its value
    // (HVC: x4..x28, load: x2..x28; both: all of v0..v31), else 1 + the
    // number of the first x register that changed, or 100 + the number of
    // the first v register.
    .global rampart_guest_regcheck
rampart_guest_regcheck:
    stp     x29, x30, [sp, #-176]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    str     x18, [sp, #160]
    mov     x29, x0
    mov     x30, x1
    .irp n, 2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28
    movz    x\n, #(0x1100 + \n)
    movk    x\n, #\n, lsl #32
    movk    x\n, #0xa5a5, lsl #48
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    movz    x0, #(0x2200 + \n)
    movk    x0, #0x5a5a, lsl #48
    fmov    d\n, x0
    mvn     x0, x0
    mov     v\n\().d[1], x0
    .endr
    cbnz    x29, 1f
    mov     x0, x30
    mov     x1, #0
    hvc     #0
    b       2f
1:  ldr     w0, [x30]
    .irp n, 2,3
    movz    x0, #(0x1100 + \n)
    movk    x0, #\n, lsl #32
    movk    x0, #0xa5a5, lsl #48
    cmp     x\n, x0
    b.eq    3f
    mov     x0, #(\n + 1)
    b       9f
3:
    .endr
2:
    .irp n, 4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28
    movz    x0, #(0x1100 + \n)
    movk    x0, #\n, lsl #32
    movk    x0, #0xa5a5, lsl #48
    cmp     x\n, x0
    b.eq    3f
    mov     x0, #(\n + 1)
    b       9f
3:
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    movz    x0, #(0x2200 + \n)
    movk    x0, #0x5a5a, lsl #48
    fmov    x1, d\n
    cmp     x1, x0
    b.ne    8f
    mvn     x0, x0
    mov     x1, v\n\().d[1]
    cmp     x1, x0
    b.eq    3f
8:  mov     x0, #(101 + \n)
    b       9f
3:
    .endr
    mov     x0, #0
9:  ldr     x18, [sp, #160]
    ldp     d14, d15, [sp, #144]
    ldp     d12, d13, [sp, #128]
    ldp     d10, d11, [sp, #112]
    ldp     d8, d9, [sp, #96]
    ldp     x27, x28, [sp, #80]
    ldp     x25, x26, [sp, #64]
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #176
    ret
    "#
);

unsafe extern "C" {
    fn rampart_guest_regcheck(mode: u64, operand: u64) -> u64;
}

/// Makes `HVC #0` with `function` (and `x1`..`x3` = 0, other registers set
/// to known values) and checks that `x4`..`x28` and all of `v0`..`v31`
/// came back unchanged (SMCCC 1.1). Returns `Err` with the first register
/// that changed (`x<n>` as n, `v<n>` as 100 + n).
pub fn hvc_preserves_registers(function: u32) -> Result<(), u64> {
    // SAFETY: `rampart_guest_regcheck` follows AAPCS64: it saves and
    // restores x18..x30 and d8..d15, uses only its own stack frame, and
    // the HVC touches no memory of ours.
    match unsafe { rampart_guest_regcheck(0, u64::from(function)) } {
        0 => Ok(()),
        code => Err(code - 1),
    }
}

/// Reads the console's flag register (an MMIO exit) with every other
/// register set to known values, and checks `x2`..`x28` and `v0`..`v31`
/// came back unchanged. Errors as [`hvc_preserves_registers`].
pub fn mmio_read_preserves_registers() -> Result<(), u64> {
    // SAFETY: as for `hvc_preserves_registers`; the load reads the
    // console's flag register, which has no side effect.
    match unsafe { rampart_guest_regcheck(1, GUEST_UART_BASE + UART_FR) } {
        0 => Ok(()),
        code => Err(code - 1),
    }
}
