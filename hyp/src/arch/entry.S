// Rampart's EL2 entry points and exception vectors.
//
// The image starts with the arm64 Linux Image header so that any loader
// that boots Linux boots Rampart: it enters at _start in EL2 with x0 = the
// device tree's physical address, MMU and caches off.

.section .text.head, "ax"
.global _start
_start:
    b       primary_entry               // code0
    .long   0                           // code1
    .quad   {text_offset}               // text_offset
    .quad   {image_size}                // image_size: the whole carve-out
    .quad   0xa                         // flags: LE, 4 KiB pages, any placement
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"                   // magic
    .long   0

primary_entry:
    mov     x19, x0                     // device tree address
    mrs     x20, CurrentEL
    lsr     x20, x20, #2
    cmp     x20, #2
    b.ne    1f
    ldr     x1, ={sctlr_mmu_off}
    msr     sctlr_el2, x1
    isb
1:
    // Rampart is linked at a fixed address; refuse to run anywhere else.
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    park
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:
    // The boot CPU's stack slot is the one in the image (slot 0); the
    // others are set at boot (arch::set_stack_slot).
    ldr     x1, ={stack_slots}
    ldr     x2, ={stacks}
    str     x2, [x1]
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
    bl      inval_poc
    // Paint the boot CPU's stacks, so that the deepest use can be read back.
    ldr     x1, ={stacks}
    ldr     x2, ={stacks_size}
    add     x2, x1, x2
    ldr     x3, ={stack_paint}
4:  cmp     x1, x2
    b.hs    5f
    stp     x3, x3, [x1], #16
    b       4b
5:
    ldr     x0, ={stacks}
    ldr     x1, ={stacks_size}
    add     x1, x0, x1
    bl      inval_poc
    cmp     x20, #2
    b.eq    6f
    // Not at EL2 (a CPU without EL2, or a boot chain that keeps it): run
    // on CPU 0's stack without touching any EL2 register, with vectors
    // that power off, only so that primary_main can say why it stops.
    ldr     x1, ={stacks}
    ldr     x2, ={stack_stride}
    add     x1, x1, x2
    mov     sp, x1
    adr     x1, low_el_vectors
    msr     vbar_el1, x1
    isb
    b       7f
6:  mov     x0, #0
    bl      set_cpu_stack
7:  mov     x0, x19
    mov     x1, x20
    bl      {primary_main}
    b       park

// Secondary CPUs and CPUs resuming from a power-down suspend enter here,
// at EL2, with x0 = the context id Rampart gave firmware: the CPU index.
.global secondary_entry
secondary_entry:
    ldr     x1, ={sctlr_mmu_off}
    msr     sctlr_el2, x1
    isb
    cmp     x0, #{max_cpus}
    b.hs    park
    mov     x19, x0
    bl      set_cpu_stack
    mov     x0, x19
    bl      {secondary_main}
    b       park

// x0 = CPU index, below max_cpus. Points SP_EL2 at the top of that CPU's
// stack, records the index in TPIDR_EL2 and installs the vectors; parks a
// CPU that has no stack slot. Clobbers x1, x2.
set_cpu_stack:
    ldr     x1, ={stack_slots}
    ldr     x1, [x1, x0, lsl #3]
    cbz     x1, park
    ldr     x2, ={stack_stride}
    add     x1, x1, x2
    mov     sp, x1
    msr     tpidr_el2, x0
    adr     x1, vectors
    msr     vbar_el2, x1
    isb
    ret

// Invalidates [x0, x1) from every data cache to the point of coherency,
// after the MMU-off stores above wrote it straight to memory: no line a
// loader left in a cache may later hide (or, if dirty, overwrite) them.
// Clobbers x0, x2, x3.
inval_poc:
    mrs     x3, ctr_el0
    ubfx    x3, x3, #16, #4             // DminLine: log2(words per line)
    mov     x2, #4
    lsl     x2, x2, x3                  // line size in bytes
    sub     x3, x2, #1
    bic     x0, x0, x3
1:  cmp     x0, x1
    b.hs    2f
    dc      ivac, x0
    add     x0, x0, x2
    b       1b
2:  dsb     sy
    ret

// Powers off from below EL2, where the PSCI conduit is unknown: HVC first
// (QEMU answers it when it emulates no EL2), then SMC (firmware at EL3);
// whichever is UNDEFINED lands in low_el_vectors, which tries the next.
// x21 records the attempt. Never returns.
.global power_off_low_el
power_off_low_el:
    ldr     x21, ={low_el_tried_hvc}
    ldr     x0, ={system_off}
    hvc     #0
low_el_try_smc:
    ldr     x21, ={low_el_tried_smc}
    ldr     x0, ={system_off}
    smc     #0
    b       park

.balign 2048
low_el_vectors:
    .rept 16
    .balign 0x80
    b       low_el_exception
    .endr
low_el_exception:
    ldr     x0, ={low_el_tried_hvc}
    cmp     x21, x0
    b.eq    low_el_try_smc
    ldr     x0, ={low_el_tried_smc}
    cmp     x21, x0
    b.eq    park
    b       power_off_low_el

.global park
park:
    wfe
    b       park

// enter_host after painting this CPU's whole stack again: the boot CPU's
// way into the host, so that the high-water mark printed at power-off
// measures what the host made EL2 do, not the boot (which is printed
// separately). Nothing on the stack is live: enter_host resets SP to the top.
.global enter_host_repaint
enter_host_repaint:
    mrs     x2, tpidr_el2
    ldr     x3, ={stack_slots}
    ldr     x3, [x3, x2, lsl #3]
    ldr     x4, ={stack_stride}
    add     x3, x3, x4                  // top of this CPU's stack
    ldr     x4, ={stack_size}
    sub     x4, x3, x4                  // its bottom
    ldr     x5, ={stack_paint}
1:  cmp     x4, x3
    b.hs    enter_host
    stp     x5, x5, [x4], #16
    b       1b

// Enters the host at EL1: x0 = entry point, x1 = value for the host's x0.
// Resets SP_EL2 to the top of this CPU's stack and clears every other
// general-purpose register so no hypervisor value reaches the host.
.global enter_host
enter_host:
    msr     elr_el2, x0
    ldr     x2, ={spsr_el1h}
    msr     spsr_el2, x2
    mrs     x2, tpidr_el2
    ldr     x3, ={stack_slots}
    ldr     x3, [x3, x2, lsl #3]
    ldr     x4, ={stack_stride}
    add     x3, x3, x4
    mov     sp, x3
    mov     x0, x1
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
    eret

// ---------------------------------------------------------------------------
// Exception vectors. Each entry saves x0/x1 in a 256-byte frame on SP_EL2,
// puts its kind in x0 and joins the common path, which saves the rest and
// calls handle_exception(kind, &mut frame). If that returns, the frame is
// restored and the exception returns.

// An exception taken at EL2 itself is always fatal: Rampart has no EL2
// code that faults on purpose. It may be a stack overflow with SP in the
// guard page, where any store would fault again, so these vectors store
// nothing: they leave the faulting stack for this CPU's emergency stack
// at once and report from there (el2_fatal).
.macro vfatal kind
    .balign 0x80
    mov     x1, sp
    mov     x0, #\kind
    b       el2_fatal
.endm

.macro ventry kind
    .balign 0x80
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       exception_common
.endm

// The host's synchronous exceptions from AArch64: as `ventry 8`, except
// that an `HVC #0` (ESR_EL2 = EC 0x16, IL 1, ISS 0: exactly 0x5a000000)
// with VCPU_RUN's function ID in w0 takes host_vcpu_run_entry. ESR_EL2's
// upper half is RES0 for this EC, so the whole register is compared.
.macro vhost_sync
    .balign 0x80
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    mrs     x1, esr_el2
    movz    x0, #0x5a00, lsl #16
    cmp     x1, x0
    b.ne    1f
    ldr     w1, [sp, #0]
    movz    w0, #({vcpu_run_id} & 0xffff)
    movk    w0, #({vcpu_run_id} >> 16), lsl #16
    cmp     w1, w0
    b.eq    host_vcpu_run_entry
1:  mov     x0, #8
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global vectors
vectors:
    vfatal 0    // current EL, SP_EL0: sync
    vfatal 1    //   irq
    vfatal 2    //   fiq
    vfatal 3    //   serror
    vfatal 4    // current EL, SP_ELx: sync
    vfatal 5    //   irq
    vfatal 6    //   fiq
    vfatal 7    //   serror
    vhost_sync  // lower EL, AArch64: sync (ventry 8, or VCPU_RUN)
    ventry 9    //   irq
    ventry 10   //   fiq
    ventry 11   //   serror
    ventry 12   // lower EL, AArch32: sync
    ventry 13   //   irq
    ventry 14   //   fiq
    ventry 15   //   serror

// x0 = vector kind, x1 = SP when the exception was taken. Runs the report
// once per CPU on its emergency stack; a second EL2 exception on the same
// CPU (the report itself failed) powers off without Rust. Never returns.
el2_fatal:
    mrs     x2, tpidr_el2
    cmp     x2, #{max_cpus}
    b.hs    1f
    ldr     x3, ={fatal_entered}
    ldrb    w4, [x3, x2]
    cbnz    w4, 1f
    mov     w4, #1
    strb    w4, [x3, x2]
    ldr     x3, ={stack_slots}
    ldr     x3, [x3, x2, lsl #3]
    cbz     x3, 1f
    ldr     x4, ={emergency_top}
    add     x3, x3, x4
    mov     sp, x3
    bl      {el2_fatal}
1:  ldr     x0, ={system_off}
    smc     #0
    b       park

// VCPU_RUN from the host (vhost_sync): x0/x1 are in the frame. Saves
// what a Rust call may change (x2..x18, x30: x19..x29 are callee-saved
// under AAPCS64 and the Rust code here keeps them), calls
// host_vcpu_run(&mut frame.x[..18]) and returns with x0..x4 its results
// and every other register as the host left it.
host_vcpu_run_entry:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    str     x18, [sp, #144]
    str     x30, [sp, #240]
    mov     x0, sp
    bl      {host_vcpu_run}
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldr     x18, [sp, #144]
    ldr     x30, [sp, #240]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #256
    eret

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
    str     x30, [sp, #240]
    mov     x1, sp
    bl      {handle_exception}
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
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #256
    eret
