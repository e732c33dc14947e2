// Entering and leaving a guest.
//
// guest_enter(regs: *mut [u64; 31]) -> exit kind
//   Saves the hypervisor's callee-saved registers and the regs pointer on
//   the EL2 stack, loads the guest's general registers and ERETs
//   (ELR_EL2/SPSR_EL2 were set by the caller). VBAR_EL2 already points at
//   guest_vectors: `vcpu::load_guest` installs them (with the ISB that
//   makes every other guest register take effect) and `vcpu::unload_guest`
//   puts the hypervisor's own vectors back, so the switch is not paid on
//   every exit EL2 handles itself. Any exception from the guest lands in
//   guest_vectors, which stores the guest's x0..x30 back through the saved
//   pointer, restores the hypervisor's registers, and returns the vector's
//   kind (8 = sync, 9 = IRQ, 10 = FIQ, 11 = SError, 12..15 = from AArch32).
//   An exception EL2 takes itself while guest_vectors are installed goes
//   through the first eight entries to the hypervisor's own handlers,
//   exactly as with `vectors`.

.section .text, "ax"
.global guest_enter
guest_enter:
    sub     sp, sp, #112
    str     x0, [sp, #0]
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    stp     x29, x30, [sp, #96]
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret
    // Speculation barrier after ERET.
    dsb     nsh
    isb

.macro gentry kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       guest_exit
.endm

.balign 2048
.global guest_vectors
guest_vectors:
    // Exceptions at EL2 while a guest is loaded cannot happen (the
    // hypervisor runs nothing between entry and exit); treat them as the
    // hypervisor's own unexpected exceptions.
    .balign 0x80
    b       vectors + 0x000
    .balign 0x80
    b       vectors + 0x080
    .balign 0x80
    b       vectors + 0x100
    .balign 0x80
    b       vectors + 0x180
    .balign 0x80
    b       vectors + 0x200
    .balign 0x80
    b       vectors + 0x280
    .balign 0x80
    b       vectors + 0x300
    .balign 0x80
    b       vectors + 0x380
    gentry 8
    gentry 9
    gentry 10
    gentry 11
    gentry 12
    gentry 13
    gentry 14
    gentry 15

guest_exit:
    // [sp] = guest x0, x1; [sp + 16] = the regs pointer.
    ldr     x1, [sp, #16]
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     x29, x30, [sp, #96]
    add     sp, sp, #112
    ret
