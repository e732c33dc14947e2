//! Everything that touches the machine: entry code, exception vectors,
//! system registers, the SMCCC conduits, fault probes, the RAM test loops and
//! the console. This is the only module with `unsafe` or `asm!`.
//!
//! The test host runs with the MMU off, so every data access is
//! Device-nGnRnE and every address is physical. The target has `strict-align`,
//! so compiled Rust never makes an unaligned access. Atomics compile to
//! LDXR/STXR loops; exclusives on Device memory are CONSTRAINED UNPREDICTABLE
//! in the architecture, but QEMU's TCG implements them as on Normal memory,
//! which is all the cross-CPU counters below need.
//!
//! Only the boot CPU prints, runs checks and probes; secondaries write their
//! own slot of `cpus::SLOTS` and the shared arrival counter, and in
//! `own-concurrent` also make hypervisor calls and use the RAM loops on
//! scratch pages.

use core::arch::{asm, global_asm};
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use arm_pl011_uart::{PL011Registers, Uart};
use safe_mmio::UniqueMmioPointer;

/// Most CPUs the test host drives (the linker script has one stack per CPU).
pub const MAX_CPUS: usize = 64;
/// Bytes of stack per CPU; must match `STACK_SIZE` in `testhost.ld`.
pub const STACK_SIZE: usize = 0x10000;
/// `MPIDR_EL1` affinity fields (Aff3, Aff2, Aff1, Aff0), as PSCI wants them.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;
/// `SPSR`/`PSTATE.M` value of EL1 using `SP_EL1` (EL1h).
pub const MODE_EL1H: u64 = 0b0101;
/// The `DAIF` bits (D, A, I, F) in `PSTATE`/`SPSR` layout.
pub const DAIF_ALL: u64 = 0xf << 6;

/// Exception vector offsets divided by 0x80: which of the 16 vectors ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKind {
    /// Synchronous exception from the current EL using `SP_EL1`.
    CurrentSync,
    /// Any other vector (IRQ, FIQ, SError, `SP_EL0`, lower EL).
    Other(u64),
}

impl VectorKind {
    /// The vector with offset `index * 0x80` from `VBAR_EL1`.
    pub fn from_index(index: u64) -> Self {
        if index == 4 {
            VectorKind::CurrentSync
        } else {
            VectorKind::Other(index)
        }
    }

    /// A short description of the vector.
    pub fn describe(self) -> &'static str {
        const NAMES: [&str; 16] = [
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
        match self {
            VectorKind::CurrentSync => NAMES[4],
            VectorKind::Other(i) => usize::try_from(i)
                .ok()
                .and_then(|i| NAMES.get(i))
                .copied()
                .unwrap_or("?"),
        }
    }
}

/// What the exception vector saw when an exception was taken.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exception {
    /// Vector index (0..16, 4 = current EL sync with `SP_EL1`).
    pub vector: u64,
    /// `ESR_EL1`.
    pub esr: u64,
    /// `FAR_EL1`.
    pub far: u64,
    /// `ELR_EL1`.
    pub elr: u64,
    /// `SPSR_EL1`.
    pub spsr: u64,
    /// `DAIF` as the vector's first instructions read it.
    pub daif_on_entry: u64,
}

impl Exception {
    /// `ESR_EL1.EC`.
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exception, ESR={:#x} (EC={:#x}) FAR={:#x} ELR={:#x} SPSR={:#x}",
            VectorKind::from_index(self.vector).describe(),
            self.esr,
            self.ec(),
            self.far,
            self.elr,
            self.spsr
        )
    }
}

/// Register frame the vector code saves; layout shared with the assembly.
#[repr(C)]
struct Frame {
    x: [u64; 31],
    sp: u64,
    elr: u64,
    spsr: u64,
    esr: u64,
    far: u64,
    daif: u64,
    _pad: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<Frame>();
const _: () = assert!(FRAME_SIZE == 304 && FRAME_SIZE.is_multiple_of(16));

// ---------------------------------------------------------------------------
// Entry: the Image header, the boot CPU's and the secondaries' entry code.
// ---------------------------------------------------------------------------

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .word   0                       // code1
    .quad   0x02000000              // text_offset
    .quad   __image_size            // image_size, including bss and stacks
    .quad   0xa                     // flags: LE, 4K pages, place anywhere
    .quad   0, 0, 0                 // res2..res4
    .ascii  "ARM\x64"               // magic
    .word   0                       // res5: no PE header

    .section .text.entry, "ax"
primary_entry:
    // Record the boot state before changing it; x0..x3 as the loader left them.
    mov     x19, x0
    mov     x20, x1
    mov     x21, x2
    mov     x22, x3
    mrs     x23, daif
    mrs     x24, sctlr_el1
    mrs     x25, CurrentEL
    msr     daifset, #0xf
    mov     x9, #(3 << 20)          // CPACR_EL1.FPEN = 0b11: Rust uses SIMD
    msr     cpacr_el1, x9
    ldr     x9, ={sctlr}
    msr     sctlr_el1, x9           // MMU and D-cache off, alignment checks on SP
    msr     spsel, #1
    isb
    msr     tpidr_el1, xzr          // CPU slot 0: the boot CPU
    adrp    x9, __stacks_start
    add     x9, x9, :lo12:__stacks_start
    add     sp, x9, #{stack_size}
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
1:  cmp     x9, x10
    b.hs    2f
    stp     xzr, xzr, [x9], #16
    b       1b
2:  adrp    x9, vectors
    add     x9, x9, :lo12:vectors
    msr     vbar_el1, x9
    isb
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    mov     x3, x22
    mov     x4, x23
    mov     x5, x24
    mov     x6, x25
    bl      {primary_main}
3:  wfe
    b       3b

    // PSCI CPU_ON entry: EL1, MMU off, x0 = context id.
    .global secondary_entry
secondary_entry:
    mov     x19, x0
    mrs     x20, daif
    mrs     x21, sctlr_el1
    mrs     x22, CurrentEL
    msr     daifset, #0xf
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    ldr     x9, ={sctlr}
    msr     sctlr_el1, x9
    msr     spsel, #1
    isb
    and     x9, x19, #0xff          // CPU index from the context id
    cmp     x9, #{max_cpus}
    b.hs    4f                      // no stack for it: park, the boot CPU times out
    add     x10, x9, #1
    msr     tpidr_el1, x10          // CPU slot index + 1
    add     x10, x9, #2             // stack slot index + 2 is the top of slot index + 1
    mov     x11, #{stack_size}
    mul     x10, x10, x11
    adrp    x9, __stacks_start
    add     x9, x9, :lo12:__stacks_start
    add     sp, x9, x10
    adrp    x9, vectors
    add     x9, x9, :lo12:vectors
    msr     vbar_el1, x9
    isb
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    mov     x3, x22
    bl      {secondary_main}
4:  wfe
    b       4b
    "#,
    sctlr = const SCTLR_EL1_VALUE,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
    primary_main = sym primary_entry_rust,
    secondary_main = sym secondary_entry_rust,
);

/// `SCTLR_EL1`: the ARMv8.0 RES1 bits, I-cache on, SP alignment check on,
/// MMU and D-cache off, little-endian.
const SCTLR_EL1_VALUE: u64 = 0x30d0_0800 | (1 << 12) | (1 << 3);

/// The boot CPU's state at entry, as the loader (or hypervisor) left it.
#[derive(Clone, Copy, Debug)]
pub struct BootState {
    /// `x0`..`x3` at entry (`x0` is the device tree address).
    pub x: [u64; 4],
    /// `DAIF` at entry.
    pub daif: u64,
    /// `SCTLR_EL1` at entry.
    pub sctlr: u64,
    /// `CurrentEL` at entry.
    pub current_el: u64,
}

/// State a secondary CPU saw at its PSCI entry point.
#[derive(Clone, Copy, Debug)]
pub struct SecondaryEntry {
    /// `x0` at entry: the context id.
    pub context: u64,
    /// `DAIF` at entry.
    pub daif: u64,
    /// `SCTLR_EL1` at entry.
    pub sctlr: u64,
    /// `CurrentEL` at entry.
    pub current_el: u64,
}

extern "C" fn primary_entry_rust(
    x0: u64,
    x1: u64,
    x2: u64,
    x3: u64,
    daif: u64,
    sctlr: u64,
    current_el: u64,
) -> ! {
    crate::primary_main(BootState {
        x: [x0, x1, x2, x3],
        daif,
        sctlr,
        current_el,
    })
}

extern "C" fn secondary_entry_rust(context: u64, daif: u64, sctlr: u64, current_el: u64) -> ! {
    crate::cpus::secondary_main(SecondaryEntry {
        context,
        daif,
        sctlr,
        current_el,
    })
}

unsafe extern "C" {
    fn secondary_entry();
    fn guard_recover();
    static __image_start: u8;
    static __image_end: u8;
    static __stacks_start: u8;
}

/// What [`boot_stack_paint`] leaves in the unused boot stack.
const STACK_PAINT: u64 = 0x57ac_57ac_57ac_57ac;

/// Fills the boot CPU's stack below the current stack pointer (less a
/// margin) with a pattern, so [`boot_stack_used`] can tell how deep it got.
/// Boot CPU only.
pub fn boot_stack_paint() {
    let bottom = core::ptr::addr_of!(__stacks_start) as u64;
    let sp: u64;
    // SAFETY: reads the stack pointer; touches nothing.
    unsafe { asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    let top = (sp - 512).max(bottom) & !7;
    for a in (bottom..top).step_by(8) {
        // SAFETY: `[bottom, top)` is the boot CPU's own stack slot below
        // its stack pointer (less a margin): no live Rust object is there,
        // and no other CPU uses slot 0.
        unsafe { (a as *mut u64).write_volatile(STACK_PAINT) };
    }
}

/// Bytes of the boot CPU's stack used since [`boot_stack_paint`].
pub fn boot_stack_used() -> u64 {
    let bottom = core::ptr::addr_of!(__stacks_start) as u64;
    let end = bottom + STACK_SIZE as u64;
    // SAFETY: reads words of the boot stack's unused part (aligned, inside
    // the image); any bit pattern is a valid u64.
    let untouched = (bottom..end)
        .step_by(8)
        .find(|&a| unsafe { (a as *const u64).read_volatile() } != STACK_PAINT)
        .unwrap_or(end);
    end - untouched
}

/// Physical address of the secondary CPUs' PSCI entry point.
pub fn secondary_entry_address() -> u64 {
    secondary_entry as *const () as usize as u64
}

/// The physical range `[start, end)` the test host's image, bss and stacks
/// occupy.
pub fn image_range() -> (u64, u64) {
    // Only the addresses of the linker symbols are taken; nothing is read.
    (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__image_end) as u64,
    )
}

// ---------------------------------------------------------------------------
// Exception vectors.
// ---------------------------------------------------------------------------

global_asm!(
    r#"
    .macro VECTOR index
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    mrs     x0, daif                // DAIF as the exception left it
    mov     x1, #\index
    b       exception_common
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

exception_common:
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
    add     x2, sp, #{frame_size}
    stp     x30, x2, [sp, #240]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #256]
    mrs     x2, esr_el1
    mrs     x3, far_el1
    stp     x2, x3, [sp, #272]
    str     x0, [sp, #288]
    mov     x0, sp
    bl      {handler}
    ldp     x2, x3, [sp, #256]
    msr     elr_el1, x2
    msr     spsr_el1, x3
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
    ldr     x30, [sp, #240]
    add     sp, sp, #{frame_size}
    eret
    "#,
    frame_size = const FRAME_SIZE,
    handler = sym handle_exception,
);

// ---------------------------------------------------------------------------
// Guarded calls: run a check so that an unexpected exception ends the check
// (not the program). `guard_call` saves the callee-saved registers and the
// stack pointer; on an unexpected exception the handler returns to
// `guard_recover`, which restores them and makes `guard_call` return 1.
// ---------------------------------------------------------------------------

global_asm!(
    r#"
    .section .text.entry, "ax"
    // u64 guard_call(fn(*mut u8), *mut u8)
    .global guard_call
guard_call:
    stp     x29, x30, [sp, #-160]!
    mov     x29, sp
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    adrp    x9, {guard_sp}
    mov     x10, sp
    str     x10, [x9, :lo12:{guard_sp}]
    mov     x9, x0
    mov     x0, x1
    blr     x9
    mov     x0, #0
guard_return:
    adrp    x9, {guard_sp}
    str     xzr, [x9, :lo12:{guard_sp}]
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    ldp     x29, x30, [sp], #160
    ret

    .global guard_recover
guard_recover:
    adrp    x9, {guard_sp}
    ldr     x9, [x9, :lo12:{guard_sp}]
    mov     sp, x9
    mov     x0, #1
    b       guard_return
    "#,
    guard_sp = sym GUARD_SP,
);

unsafe extern "C" {
    fn guard_call(f: extern "C" fn(*mut u8), arg: *mut u8) -> u64;
}

/// Stack pointer saved by `guard_call`; 0 when no guarded call is running.
static GUARD_SP: AtomicU64 = AtomicU64::new(0);
/// The exception that ended the last guarded call early.
static GUARD_FAULT: ExceptionCell = ExceptionCell::new();

/// Per CPU slot (every CPU may probe): address of the load or store a
/// probe expects to fault; 0 = no probe armed.
static PROBE_PC: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU slot: the exception a probe caught.
static PROBE_FAULT: [ExceptionCell; MAX_CPUS] = [const { ExceptionCell::new() }; MAX_CPUS];
/// Per CPU slot: whether the probe caught an exception.
static PROBE_HIT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU slot: `x1` (the probe's data register) as the exception frame
/// held it.
static PROBE_REGISTER: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// This CPU's probe slot.
fn probe_slot() -> usize {
    cpu_slot().min(MAX_CPUS - 1)
}
/// Depth of nested exceptions on the boot CPU.
static HANDLER_DEPTH: AtomicU64 = AtomicU64::new(0);

/// An [`Exception`] stored in atomics so the handler and the checks can share it.
struct ExceptionCell([AtomicU64; 6]);

impl ExceptionCell {
    const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; 6])
    }

    fn store(&self, e: &Exception) {
        let values = [e.vector, e.esr, e.far, e.elr, e.spsr, e.daif_on_entry];
        for (cell, value) in self.0.iter().zip(values) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    fn load(&self) -> Exception {
        let v = |i: usize| self.0[i].load(Ordering::Relaxed);
        Exception {
            vector: v(0),
            esr: v(1),
            far: v(2),
            elr: v(3),
            spsr: v(4),
            daif_on_entry: v(5),
        }
    }
}

/// Runs `f`; if it takes an exception the test host did not expect, stops it
/// there and returns what the vector saw.
///
/// Only the boot CPU may call this, and not recursively. `f` is abandoned
/// without running destructors of its frames, so checks hold no values with
/// `Drop` (they use fixed buffers, not allocations or locks).
pub fn guarded<F: FnMut()>(f: &mut F) -> Result<(), Exception> {
    extern "C" fn trampoline<F: FnMut()>(arg: *mut u8) {
        // SAFETY: `arg` is the `&mut F` that `guarded` passed to `guard_call`
        // just below, still alive and not otherwise borrowed during the call.
        let f = unsafe { &mut *arg.cast::<F>() };
        f();
    }
    assert!(cpu_slot() == 0, "only the boot CPU runs guarded calls");
    assert!(
        GUARD_SP.load(Ordering::Relaxed) == 0,
        "guarded calls do not nest"
    );
    // SAFETY: `guard_call` is the assembly routine above; it saves and restores
    // every callee-saved register (x19..x30, d8..d15) and SP, so it follows the
    // C ABI whether `trampoline` returns or the handler sends it to
    // `guard_recover`. `arg` points to `f`, which outlives the call. Frames
    // skipped on recovery own nothing with a destructor (documented above).
    let status = unsafe { guard_call(trampoline::<F>, core::ptr::from_mut(f).cast()) };
    PROBE_PC[probe_slot()].store(0, Ordering::Relaxed);
    if status == 0 {
        Ok(())
    } else {
        Err(GUARD_FAULT.load())
    }
}

/// Handles every exception; called by `exception_common` with the saved frame.
extern "C" fn handle_exception(frame: &mut Frame, vector: u64) {
    let exception = Exception {
        vector,
        esr: frame.esr,
        far: frame.far,
        elr: frame.elr,
        spsr: frame.spsr,
        daif_on_entry: frame.daif,
    };
    let slot = cpu_slot();
    let me = probe_slot();
    let probe_pc = PROBE_PC[me].load(Ordering::Relaxed);
    let probed = probe_pc != 0
        && frame.elr == probe_pc
        && VectorKind::from_index(vector) == VectorKind::CurrentSync;
    if slot != 0 {
        if probed {
            // A secondary's own probe: recorded and skipped as on the boot
            // CPU (nothing else runs in its handler).
            PROBE_FAULT[me].store(&exception);
            PROBE_REGISTER[me].store(frame.x[1], Ordering::Relaxed);
            PROBE_HIT[me].store(1, Ordering::Relaxed);
            PROBE_PC[me].store(0, Ordering::Relaxed);
            frame.elr += 4;
            return;
        }
        // A secondary: record and switch the CPU off; the boot CPU reports it.
        crate::cpus::secondary_fault(slot - 1, &exception);
    }
    let depth = HANDLER_DEPTH.fetch_add(1, Ordering::Relaxed);
    if depth > 0 {
        // An exception in the handler itself: give up without printing.
        crate::power_off_quietly();
    }
    if probed {
        // The fault a probe was waiting for: record it and skip the access.
        PROBE_FAULT[me].store(&exception);
        PROBE_REGISTER[me].store(frame.x[1], Ordering::Relaxed);
        PROBE_HIT[me].store(1, Ordering::Relaxed);
        PROBE_PC[me].store(0, Ordering::Relaxed);
        frame.elr += 4;
    } else if GUARD_SP.load(Ordering::Relaxed) != 0 {
        // Unexpected, inside a check: end the check.
        GUARD_FAULT.store(&exception);
        PROBE_PC[me].store(0, Ordering::Relaxed);
        frame.elr = guard_recover as *const () as usize as u64;
        frame.spsr = MODE_EL1H | DAIF_ALL;
    } else {
        crate::fatal_exception(&exception);
    }
    HANDLER_DEPTH.fetch_sub(1, Ordering::Relaxed);
}

/// What a probe access did.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOutcome {
    /// Address of the load or store instruction.
    pub pc: u64,
    /// The exception it took, if any.
    pub fault: Option<Exception>,
    /// The data register after the access (for a load: the sentinel if no
    /// data arrived).
    pub register: u64,
    /// The data register as the exception frame saved it.
    pub register_in_frame: u64,
    /// `DAIF` right before the access (0: all unmasked for the probe).
    pub daif_before: u64,
}

/// `NZCV` the probes set before the access, so `SPSR_EL1` is predictable.
pub const PROBE_NZCV: u64 = 0b1010 << 28;

/// Kind of access a probe makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `ldr x1, [x0]`.
    Load,
    /// `str x1, [x0]`.
    Store,
}

/// Makes one 64-bit access to `address` that is expected to fault, with DAIF
/// unmasked for exactly that instruction and `NZCV` = [`PROBE_NZCV`]. If it
/// faults at the current-EL synchronous vector, the handler records the
/// exception and skips the instruction.
///
/// The caller must make sure a store cannot corrupt anything the test host
/// uses: the address is outside its image and device tree (asserted here).
pub fn probe(access: Access, address: u64, value: u64) -> ProbeOutcome {
    assert!(
        address.is_multiple_of(8),
        "probe address must be 8-byte aligned"
    );
    let (image_start, image_end) = image_range();
    assert!(
        address < image_start || address >= image_end,
        "probe inside the test host image"
    );
    // Every CPU may probe: its own slot of the probe state (a secondary's
    // handler skips exactly its own armed access; anything else stops it).
    let me = probe_slot();
    PROBE_HIT[me].store(0, Ordering::Relaxed);
    let mut register = value;
    let pc: u64;
    let daif_before: u64;
    match access {
        // SAFETY: one load from `address`, which is not memory Rust knows
        // about (outside the image, asserted above), so no Rust value changes.
        // The handler skips the load if it faults and restores every register
        // from its frame; it is a Rust function, so `clobber_abi("C")` covers
        // the registers it may change. Flags are clobbered (no
        // `preserves_flags`); DAIF is masked again before the block ends.
        Access::Load => unsafe {
            asm!(
                "adr x2, 2f",
                "str x2, [{probe_pc}]",
                "msr nzcv, {nzcv}",
                "msr daifclr, #0xf",
                "mrs x3, daif",
                "2: ldr x1, [x0]",
                "msr daifset, #0xf",
                out("x2") pc,
                out("x3") daif_before,
                nzcv = in(reg) PROBE_NZCV,
                probe_pc = in(reg) PROBE_PC[me].as_ptr(),
                in("x0") address,
                inout("x1") register,
                clobber_abi("C"),
            );
        },
        // SAFETY: as for the load; the store writes `address`, which the
        // caller chose outside the test host's own memory (asserted above) and
        // expects to fault.
        Access::Store => unsafe {
            asm!(
                "adr x2, 2f",
                "str x2, [{probe_pc}]",
                "msr nzcv, {nzcv}",
                "msr daifclr, #0xf",
                "mrs x3, daif",
                "2: str x1, [x0]",
                "msr daifset, #0xf",
                out("x2") pc,
                out("x3") daif_before,
                nzcv = in(reg) PROBE_NZCV,
                probe_pc = in(reg) PROBE_PC[me].as_ptr(),
                in("x0") address,
                inout("x1") register,
                clobber_abi("C"),
            );
        },
    }
    PROBE_PC[me].store(0, Ordering::Relaxed);
    let hit = PROBE_HIT[me].swap(0, Ordering::Relaxed) != 0;
    ProbeOutcome {
        pc,
        fault: hit.then(|| PROBE_FAULT[me].load()),
        register,
        register_in_frame: PROBE_REGISTER[me].load(Ordering::Relaxed),
        daif_before,
    }
}

// ---------------------------------------------------------------------------
// SMCCC conduits.
// ---------------------------------------------------------------------------

/// `x0`..`x17` of an SMCCC call: arguments in, results out.
pub type SmcccRegisters = [u64; 18];

macro_rules! smccc_call {
    ($instruction:literal, $r:ident) => {
        asm!(
            $instruction,
            inout("x0") $r[0], inout("x1") $r[1], inout("x2") $r[2], inout("x3") $r[3],
            inout("x4") $r[4], inout("x5") $r[5], inout("x6") $r[6], inout("x7") $r[7],
            inout("x8") $r[8], inout("x9") $r[9], inout("x10") $r[10], inout("x11") $r[11],
            inout("x12") $r[12], inout("x13") $r[13], inout("x14") $r[14],
            inout("x15") $r[15], inout("x16") $r[16], inout("x17") $r[17],
            clobber_abi("C"),
        )
    };
}

/// `HVC #0` with `x0`..`x17` from `registers`; the results replace them.
pub fn hvc(registers: &mut SmcccRegisters) {
    // SAFETY: an SMCCC call changes no memory the test host owns (the calls
    // made here take no pointers the callee writes through, except CPU_ON's
    // entry point, which is code). x0..x17 are inputs and outputs;
    // `clobber_abi("C")` also covers the SIMD registers in case the callee
    // does not preserve them. If HVC is undefined, the exception ends the
    // current guarded check.
    unsafe { smccc_call!("hvc #0", registers) }
}

/// `SMC #0` with `x0`..`x17` from `registers`; the results replace them.
pub fn smc(registers: &mut SmcccRegisters) {
    // SAFETY: as for `hvc`.
    unsafe { smccc_call!("smc #0", registers) }
}

// ---------------------------------------------------------------------------
// System registers and timing.
// ---------------------------------------------------------------------------

/// `MPIDR_EL1`.
pub fn mpidr() -> u64 {
    let value: u64;
    // SAFETY: reads a register; no memory, stack or flags touched.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// This CPU's slot: 0 = boot CPU, `i + 1` = secondary with CPU index `i`
/// (kept in `TPIDR_EL1` by the entry code).
pub fn cpu_slot() -> usize {
    let value: u64;
    // SAFETY: reads a register; no memory, stack or flags touched.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) value, options(nomem, nostack, preserves_flags)) };
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// The virtual counter `CNTVCT_EL0` (always readable at EL1).
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: `isb` orders the read after earlier instructions; reads a
    // register; no memory, stack or flags touched.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// `CNTFRQ_EL0`: counter ticks per second.
pub fn counter_frequency() -> u64 {
    let value: u64;
    // SAFETY: reads a register; no memory, stack or flags touched.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Hints that this CPU is spinning.
pub fn spin_hint() {
    // SAFETY: `yield` is a hint with no architectural effect.
    unsafe { asm!("yield", options(nomem, nostack, preserves_flags)) };
}

/// Stops this CPU forever (interrupts are masked, so it never wakes to run
/// anything).
pub fn halt() -> ! {
    loop {
        // SAFETY: `wfe` waits for an event; no memory, stack or flags touched.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

// ---------------------------------------------------------------------------
// RAM test loops.
// ---------------------------------------------------------------------------

/// Granule of the RAM loops: ranges must be aligned to it.
pub const RAM_BLOCK: u64 = 64;

/// The pattern word at `address`: `address ^ seed`.
pub fn ram_pattern(address: u64, seed: u64) -> u64 {
    address ^ seed
}

fn check_ram_range(start: u64, end: u64, seed: u64) {
    assert!(start.is_multiple_of(RAM_BLOCK) && end.is_multiple_of(RAM_BLOCK) && start < end);
    assert!(
        seed.is_multiple_of(RAM_BLOCK),
        "seed low bits must be zero so blocks can add offsets"
    );
    let (image_start, image_end) = image_range();
    assert!(
        end <= image_start || start >= image_end,
        "RAM test range overlaps the image"
    );
}

/// Writes [`ram_pattern`] to every 64-bit word of `[start, end)`.
///
/// The range must be RAM the test host owns that nothing else uses: not its
/// image (asserted) and not the device tree (the caller excludes it).
pub fn ram_fill(start: u64, end: u64, seed: u64) {
    check_ram_range(start, end, seed);
    // SAFETY: writes only `[start, end)`, which is outside every Rust object
    // (the image is excluded above; the caller excludes the DT). Each 64-byte
    // block at `a` gets `a ^ seed + 8 * i` in word i, which equals
    // `(a + 8 * i) ^ seed` because bits 3..5 of `a ^ seed` are zero
    // (both are 64-byte aligned). Uses the named scratch registers only; the
    // flags are clobbered.
    unsafe {
        asm!(
            "1:",
            "eor {p0}, {cur}, {seed}",
            "add {p1}, {p0}, #8",
            "stp {p0}, {p1}, [{cur}]",
            "add {p2}, {p0}, #16",
            "add {p3}, {p0}, #24",
            "stp {p2}, {p3}, [{cur}, #16]",
            "add {p1}, {p0}, #32",
            "add {p2}, {p0}, #40",
            "stp {p1}, {p2}, [{cur}, #32]",
            "add {p1}, {p0}, #48",
            "add {p2}, {p0}, #56",
            "stp {p1}, {p2}, [{cur}, #48]",
            "add {cur}, {cur}, #64",
            "cmp {cur}, {end}",
            "b.lo 1b",
            cur = inout(reg) start => _,
            end = in(reg) end,
            seed = in(reg) seed,
            p0 = out(reg) _,
            p1 = out(reg) _,
            p2 = out(reg) _,
            p3 = out(reg) _,
            options(nostack),
        );
    }
}

/// Checks every 64-bit word of `[start, end)` holds [`ram_pattern`]; returns
/// the first 64-byte block that does not.
pub fn ram_verify(start: u64, end: u64, seed: u64) -> Option<u64> {
    check_ram_range(start, end, seed);
    let bad: u64;
    // SAFETY: reads only `[start, end)` (see `ram_fill`), writes nothing.
    // Returns the address of the first block whose XOR with the expected
    // pattern is non-zero, or `end`. Uses the named scratch registers only;
    // the flags are clobbered.
    unsafe {
        asm!(
            "1:",
            "eor {p0}, {cur}, {seed}",
            "ldp {a}, {b}, [{cur}]",
            "eor {acc}, {a}, {p0}",
            "add {p1}, {p0}, #8",
            "eor {b}, {b}, {p1}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #16]",
            "add {p1}, {p0}, #16",
            "eor {a}, {a}, {p1}",
            "add {p1}, {p0}, #24",
            "eor {b}, {b}, {p1}",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #32]",
            "add {p1}, {p0}, #32",
            "eor {a}, {a}, {p1}",
            "add {p1}, {p0}, #40",
            "eor {b}, {b}, {p1}",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #48]",
            "add {p1}, {p0}, #48",
            "eor {a}, {a}, {p1}",
            "add {p1}, {p0}, #56",
            "eor {b}, {b}, {p1}",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "cbnz {acc}, 2f",
            "add {cur}, {cur}, #64",
            "cmp {cur}, {end}",
            "b.lo 1b",
            "2:",
            cur = inout(reg) start => bad,
            end = in(reg) end,
            seed = in(reg) seed,
            p0 = out(reg) _,
            p1 = out(reg) _,
            a = out(reg) _,
            b = out(reg) _,
            acc = out(reg) _,
            options(nostack, readonly),
        );
    }
    (bad < end).then_some(bad)
}

/// Reads the 64-bit word at `address` (to report a RAM test mismatch, or a
/// secondary CPU's look at pages the ownership checks use).
///
/// The caller passes RAM outside the test host's image that the host should
/// be able to read; if it cannot, the load aborts like any other access.
pub fn ram_read(address: u64) -> u64 {
    assert!(address.is_multiple_of(8));
    let value: u64;
    // SAFETY: an aligned read of RAM outside every Rust object (the caller
    // only passes pages of usable RAM outside the image and the DT); it
    // changes nothing.
    unsafe {
        asm!("ldr {}, [{}]", out(reg) value, in(reg) address, options(nostack, readonly, preserves_flags))
    };
    value
}

/// Writes the 64-bit word `value` at `address`.
///
/// The address must be RAM the test host owns that nothing else uses: not
/// its image (asserted) and not the device tree (the caller excludes it).
pub fn ram_write(address: u64, value: u64) {
    assert!(address.is_multiple_of(8));
    let (image_start, image_end) = image_range();
    assert!(
        address < image_start || address >= image_end,
        "RAM write inside the image"
    );
    // SAFETY: an aligned store to RAM outside every Rust object (the image is
    // excluded above; the caller excludes the DT), so no Rust value changes.
    unsafe {
        asm!("str {}, [{}]", in(reg) value, in(reg) address, options(nostack, preserves_flags))
    };
}

/// Checks every 64-bit word of `[start, end)` is zero; returns the first
/// 64-byte block that is not.
pub fn ram_find_nonzero(start: u64, end: u64) -> Option<u64> {
    check_ram_range(start, end, 0);
    let bad: u64;
    // SAFETY: reads only `[start, end)` (see `ram_fill`), writes nothing.
    // Returns the address of the first block with a non-zero word, or `end`.
    // Uses the named scratch registers only; the flags are clobbered.
    unsafe {
        asm!(
            "1:",
            "ldp {a}, {b}, [{cur}]",
            "orr {acc}, {a}, {b}",
            "ldp {a}, {b}, [{cur}, #16]",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #32]",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #48]",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "cbnz {acc}, 2f",
            "add {cur}, {cur}, #64",
            "cmp {cur}, {end}",
            "b.lo 1b",
            "2:",
            cur = inout(reg) start => bad,
            end = in(reg) end,
            a = out(reg) _,
            b = out(reg) _,
            acc = out(reg) _,
            options(nostack, readonly),
        );
    }
    (bad < end).then_some(bad)
}

/// The first 64-byte block of `[start, end)` (64-byte aligned) holding a
/// non-zero word, like [`ram_find_nonzero`] but for any readable RAM,
/// the test host's own image included (the leak scan reads everything).
pub fn ram_next_nonzero(start: u64, end: u64) -> Option<u64> {
    assert!(start.is_multiple_of(RAM_BLOCK) && end.is_multiple_of(RAM_BLOCK) && start < end);
    let bad: u64;
    // SAFETY: reads only `[start, end)` and writes nothing; the asm block
    // is `readonly`, so reading memory that Rust objects occupy (the image)
    // cannot break their invariants; other CPUs are parked or only read.
    // Uses the named scratch registers only; the flags are clobbered.
    unsafe {
        asm!(
            "1:",
            "ldp {a}, {b}, [{cur}]",
            "orr {acc}, {a}, {b}",
            "ldp {a}, {b}, [{cur}, #16]",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #32]",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "ldp {a}, {b}, [{cur}, #48]",
            "orr {acc}, {acc}, {a}",
            "orr {acc}, {acc}, {b}",
            "cbnz {acc}, 2f",
            "add {cur}, {cur}, #64",
            "cmp {cur}, {end}",
            "b.lo 1b",
            "2:",
            cur = inout(reg) start => bad,
            end = in(reg) end,
            a = out(reg) _,
            b = out(reg) _,
            acc = out(reg) _,
            options(nostack, readonly),
        );
    }
    (bad < end).then_some(bad)
}

/// Zeroes `[start, end)` (64-byte aligned RAM the test host owns, not its
/// image and not the device tree).
pub fn ram_zero(start: u64, end: u64) {
    check_ram_range(start, end, 0);
    // SAFETY: writes only `[start, end)`, outside every Rust object (see
    // `ram_fill`). Uses the named register only; the flags are clobbered.
    unsafe {
        asm!(
            "1:",
            "stp xzr, xzr, [{cur}]",
            "stp xzr, xzr, [{cur}, #16]",
            "stp xzr, xzr, [{cur}, #32]",
            "stp xzr, xzr, [{cur}, #48]",
            "add {cur}, {cur}, #64",
            "cmp {cur}, {end}",
            "b.lo 1b",
            cur = inout(reg) start => _,
            end = in(reg) end,
            options(nostack),
        );
    }
}

// ---------------------------------------------------------------------------
// Device registers: PCI configuration space and BARs, and DMA ordering.
// ---------------------------------------------------------------------------

/// Reads the 32-bit device register at `address` (4-byte aligned).
///
/// The caller passes a register the device tree or a BAR the test host
/// assigned names (identity-mapped with the MMU off). If the hypervisor has
/// not mapped it, the load aborts like any other access and ends the check.
pub fn mmio_read32(address: u64) -> u32 {
    assert!(address.is_multiple_of(4));
    let value: u32;
    // SAFETY: an aligned 32-bit load from a device register outside every
    // Rust object; a device read may change the device, never Rust memory.
    unsafe {
        asm!("ldr {:w}, [{}]", out(reg) value, in(reg) address,
             options(nostack, readonly, preserves_flags))
    };
    value
}

/// Writes the 32-bit device register at `address` (4-byte aligned, outside
/// the image: asserted).
pub fn mmio_write32(address: u64, value: u32) {
    assert!(address.is_multiple_of(4));
    let (image_start, image_end) = image_range();
    assert!(
        address < image_start || address >= image_end,
        "MMIO write inside the image"
    );
    // SAFETY: an aligned 32-bit store to a device register outside the image
    // (asserted), so no Rust object changes.
    unsafe {
        asm!("str {:w}, [{}]", in(reg) value, in(reg) address,
             options(nostack, preserves_flags))
    };
}

/// Reads the 64-bit device register at `address` (8-byte aligned).
pub fn mmio_read64(address: u64) -> u64 {
    assert!(address.is_multiple_of(8));
    let value: u64;
    // SAFETY: as for `mmio_read32`, 64 bits wide.
    unsafe {
        asm!("ldr {}, [{}]", out(reg) value, in(reg) address,
             options(nostack, readonly, preserves_flags))
    };
    value
}

/// Writes the 64-bit device register at `address` (8-byte aligned, outside
/// the image: asserted).
pub fn mmio_write64(address: u64, value: u64) {
    assert!(address.is_multiple_of(8));
    let (image_start, image_end) = image_range();
    assert!(
        address < image_start || address >= image_end,
        "MMIO write inside the image"
    );
    // SAFETY: as for `mmio_write32`, 64 bits wide.
    unsafe {
        asm!("str {}, [{}]", in(reg) value, in(reg) address,
             options(nostack, preserves_flags))
    };
}

/// `DSB SY`: every memory access before it completes before any after it,
/// as observed by every observer, bus masters included. Before a DMA
/// starts, its source data must have reached memory; after it ends (its
/// status read), reads of its destination must not be satisfied earlier.
/// (With the MMU off every data access is Device-nGnRnE, so no cache
/// maintenance is needed; only ordering, which Device memory guarantees
/// only per peripheral.)
pub fn dma_barrier() {
    // SAFETY: a barrier; changes no register or memory.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Configuration space of a PCIe ECAM host bridge (`pci-host-ecam-generic`):
/// bus `b`, device `d`, function `f`, register `r` at
/// `base + (b << 20 | d << 15 | f << 12 | r)`, for the buses the window
/// covers.
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    base: u64,
    first_bus: u8,
    last_bus: u8,
}

impl Ecam {
    /// The ECAM window at `base` for buses `first_bus..=last_bus` (bus
    /// `first_bus` at `base`, as the device tree's `bus-range` says).
    pub fn new(base: u64, first_bus: u8, last_bus: u8) -> Self {
        Self {
            base,
            first_bus,
            last_bus,
        }
    }

    /// Where register `offset` of `address` lies, if the window covers it.
    fn register(&self, address: pci_types::PciAddress, offset: u16) -> Option<u64> {
        let bus = address.bus();
        let in_window = address.segment() == 0
            && (self.first_bus..=self.last_bus).contains(&bus)
            && address.device() < 32
            && address.function() < 8
            && offset < 4096
            && offset.is_multiple_of(4);
        in_window.then(|| {
            self.base
                + (u64::from(bus - self.first_bus) << 20
                    | u64::from(address.device()) << 15
                    | u64::from(address.function()) << 12
                    | u64::from(offset))
        })
    }

    /// Reads a configuration register; all ones (what a missing function
    /// reads) outside the window.
    pub fn read(&self, address: pci_types::PciAddress, offset: u16) -> u32 {
        self.register(address, offset).map_or(u32::MAX, mmio_read32)
    }

    /// Writes a configuration register; nothing outside the window.
    pub fn write(&self, address: pci_types::PciAddress, offset: u16, value: u32) {
        if let Some(register) = self.register(address, offset) {
            mmio_write32(register, value);
        }
    }
}

impl pci_types::ConfigRegionAccess for Ecam {
    // The trait's methods are `unsafe` for implementations that cannot check
    // their arguments; these check them (`Ecam::register`) and are safe.
    unsafe fn read(&self, address: pci_types::PciAddress, offset: u16) -> u32 {
        Ecam::read(self, address, offset)
    }

    unsafe fn write(&self, address: pci_types::PciAddress, offset: u16, value: u32) {
        Ecam::write(self, address, offset, value);
    }
}

// ---------------------------------------------------------------------------
// Device tree blob and console.
// ---------------------------------------------------------------------------

/// The flattened device tree at `address`, as a byte slice of its
/// `totalsize`, if the header's magic is right.
///
/// The test host never writes the blob (the RAM test excludes it), so the
/// slice stays valid for the whole run.
pub fn device_tree_blob(address: u64) -> Result<&'static [u8], &'static str> {
    const FDT_MAGIC: u32 = 0xd00d_feed;
    const MAX_SIZE: u32 = 2 << 20;
    if address == 0 || !address.is_multiple_of(8) {
        return Err("device tree address is null or not 8-byte aligned");
    }
    let (image_start, image_end) = image_range();
    if (image_start..image_end).contains(&address) {
        return Err("device tree address is inside the test host image");
    }
    let word = |offset: u64| -> u32 {
        let value: u32;
        // SAFETY: a 4-byte aligned read of the DT header that the boot
        // protocol says is at `address` (aligned, checked above); it reads no
        // Rust object.
        unsafe {
            asm!("ldr {:w}, [{}]", out(reg) value, in(reg) address + offset,
                 options(nostack, readonly, preserves_flags))
        };
        u32::from_be(value)
    };
    if word(0) != FDT_MAGIC {
        return Err("no device tree magic at the boot address");
    }
    let size = word(4);
    if !(40..=MAX_SIZE).contains(&size) {
        return Err("device tree totalsize is implausible");
    }
    // SAFETY: `address..address + size` is the blob the loader placed in RAM
    // (magic and size checked above, size at most 2 MiB). Nothing in the test
    // host writes it: it is outside the image, and the RAM test excludes it.
    Ok(unsafe { core::slice::from_raw_parts(address as *const u8, size as usize) })
}

/// Physical address of the PL011 the console writes to.
static UART_BASE: AtomicU64 = AtomicU64::new(0x0900_0000);

/// Points the console at the PL011 at `base`.
pub fn set_console_base(base: u64) {
    UART_BASE.store(base, Ordering::Relaxed);
}

/// Writes `s` to the console. Only the boot CPU prints; on other CPUs this
/// does nothing.
pub fn console_write(s: &str) {
    if cpu_slot() != 0 {
        return;
    }
    let base = UART_BASE.load(Ordering::Relaxed);
    let Some(base) = NonNull::new(base as *mut PL011Registers) else {
        return;
    };
    // SAFETY: `base` is the PL011's MMIO frame (from the DT's stdout-path, or
    // QEMU virt's default), identity-mapped with the MMU off. Only the boot
    // CPU gets here and the exception handler never prints while a print is
    // in progress except to report a fatal error, so this pointer is the only
    // live access to the device; it is dropped at the end of this function
    // and the UART driver keeps no other state.
    let regs = unsafe { UniqueMmioPointer::new(base) };
    let mut uart = Uart::new(regs);
    let _ = fmt::Write::write_str(&mut uart, s);
}

/// QEMU semihosting (`-semihosting-config enable=on`; issue 14's
/// two-machine migration test moves its stream through files of the
/// build machine): operation `op` with its parameter block at `block`
/// (physical address; the test host runs identity-mapped). Returns `x0`.
/// Only under a QEMU started with semihosting: elsewhere `HLT` is an
/// undefined instruction.
pub fn semihosting(op: u64, block: &[u64]) -> u64 {
    let result: u64;
    // SAFETY: QEMU handles `HLT #0xf000` itself (no exception); it reads
    // the parameter block (a live slice) and, for SYS_READ, writes the
    // buffer the block names, which the caller owns (RAM it took from its
    // arena, outside every Rust object).
    unsafe {
        asm!("hlt #0xf000", inout("x0") op => result, in("x1") block.as_ptr(), options(nostack))
    };
    result
}

// ---------------------------------------------------------------------------
// `vm-lazy-state` (issue 16): the host's FP and pointer-authentication state
// around one `VCPU_RUN` (`checks/lazy_state.rs`).
// ---------------------------------------------------------------------------

/// Whether this CPU has FEAT_PAuth, by the fields the hypervisor reads
/// (`hyp/src/cpu.rs`): `ID_AA64ISAR1_EL1` APA, API, GPA, GPI and
/// `ID_AA64ISAR2_EL1` GPA3, APA3.
pub fn has_pauth() -> bool {
    let (isar1, isar2): (u64, u64);
    // SAFETY: reading ID registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {a}, id_aa64isar1_el1",
            "mrs {b}, s3_0_c0_c6_2",
            a = out(reg) isar1,
            b = out(reg) isar2,
            options(nomem, nostack, preserves_flags),
        );
    }
    let field = |v: u64, s: u32| (v >> s) & 0xf != 0;
    [4, 8, 24, 28].iter().any(|&s| field(isar1, s)) || [8, 12].iter().any(|&s| field(isar2, s))
}

/// What one `VCPU_RUN` returned and what the host's registers held after.
pub struct LazyRun {
    /// `x0`..`x4` after the call.
    pub r: [u64; 5],
    /// The host's `q0` (low, high) after the call.
    pub q0: (u64, u64),
    /// The host's `APIAKeyLo_EL1` after the call (`key` without `pauth`).
    pub key: u64,
}

/// `VCPU_RUN` of vCPU 0 with the host's `q0` = `(low, high)` and, with
/// `pauth`, its `APIAKeyLo_EL1` = `key` loaded just before the call, and
/// both read back right after it, in one `asm!` so nothing else runs in
/// between.
pub fn run_with_host_fp(handle: u64, pauth: bool, low: u64, high: u64, key: u64) -> LazyRun {
    let (mut x0, mut x1, mut x2, mut x3, x4): (u64, u64, u64, u64, u64);
    let (q_low, q_high, key_after): (u64, u64, u64);
    x0 = u64::from(rampart_abi::host::HostCall::VcpuRun.id());
    x1 = handle;
    x2 = 0;
    x3 = 0;
    // SAFETY: an HVC to the hypervisor with SMCCC 1.1 register use (x0..x17
    // may change; every one is an output or clobber here); v0 is declared
    // clobbered, and the APIA key is not used by the compiled test host (no
    // pointer authentication) and is put back by the caller.
    unsafe {
        if pauth {
            core::arch::asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "fmov d0, {low}",
                "mov v0.d[1], {high}",
                "msr s3_0_c2_c1_0, {key}",
                "isb",
                "hvc #0",
                "fmov {ql}, d0",
                "mov {qh}, v0.d[1]",
                "mrs {ka}, s3_0_c2_c1_0",
                low = in(reg) low,
                high = in(reg) high,
                key = in(reg) key,
                ql = lateout(reg) q_low,
                qh = lateout(reg) q_high,
                ka = lateout(reg) key_after,
                inout("x0") x0,
                inout("x1") x1,
                inout("x2") x2,
                inout("x3") x3,
                lateout("x4") x4,
                lateout("x5") _, lateout("x6") _, lateout("x7") _, lateout("x8") _,
                lateout("x9") _, lateout("x10") _, lateout("x11") _, lateout("x12") _,
                lateout("x13") _, lateout("x14") _, lateout("x15") _, lateout("x16") _,
                lateout("x17") _,
                out("v0") _,
                options(nostack),
            );
        } else {
            core::arch::asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "fmov d0, {low}",
                "mov v0.d[1], {high}",
                "hvc #0",
                "fmov {ql}, d0",
                "mov {qh}, v0.d[1]",
                low = in(reg) low,
                high = in(reg) high,
                ql = lateout(reg) q_low,
                qh = lateout(reg) q_high,
                inout("x0") x0,
                inout("x1") x1,
                inout("x2") x2,
                inout("x3") x3,
                lateout("x4") x4,
                lateout("x5") _, lateout("x6") _, lateout("x7") _, lateout("x8") _,
                lateout("x9") _, lateout("x10") _, lateout("x11") _, lateout("x12") _,
                lateout("x13") _, lateout("x14") _, lateout("x15") _, lateout("x16") _,
                lateout("x17") _,
                out("v0") _,
                options(nostack),
            );
            key_after = key;
        }
    }
    LazyRun { r: [x0, x1, x2, x3, x4], q0: (q_low, q_high), key: key_after }
}

/// The host's `APIAKeyLo_EL1` (FEAT_PAuth only).
pub fn apia_key() -> u64 {
    let v: u64;
    // SAFETY: reading the host's own key register (FEAT_PAuth checked).
    unsafe { core::arch::asm!("mrs {}, s3_0_c2_c1_0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets the host's `APIAKeyLo_EL1` (FEAT_PAuth only).
pub fn set_apia_key(v: u64) {
    // SAFETY: the test host does not use pointer authentication; this puts
    // back the value it had before the check.
    unsafe { core::arch::asm!("msr s3_0_c2_c1_0, {}", "isb", in(reg) v, options(nostack, preserves_flags)) };
}
