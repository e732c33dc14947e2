// The bench guest, hand-assembled (checked with `llvm-mc -triple=aarch64`).
// Shared by the test host (which runs it) and xtask (which signs it for the
// protected-VM figures): one expression, included by both.
[
    0xD503_207F, // 00: wfi                       -> EXIT_WAIT
    0xD2A1_2014, // 04: movz x20, #0x0900, lsl #16 (UART)
    0xD280_00E0, // 08: movz x0, #7
    0xF2B8_C000, // 0c: movk x0, #0xC600, lsl #16 (MMIO_GUARD_MAP)
    0xAA14_03E1, // 10: mov  x1, x20
    0xD400_0002, // 14: hvc  #0
    0xB900_029F, // 18: str  wzr, [x20]            -> MMIO write
    0xF940_0693, // 1c: ldr  x19, [x20, #8]        -> MMIO read: x19 = HVCs
    0xB400_00B3, // 20: cbz  x19, 0x34
    0xD2B0_C000, // 24: movz x0, #0x8600, lsl #16 (KVM_FEATURES)
    0xD400_0002, // 28: hvc  #0
    0xD100_0673, // 2c: sub  x19, x19, #1
    0x17FF_FFFC, // 30: b    0x20
    0xB900_029F, // 34: str  wzr, [x20]            -> MMIO write
    0x17FF_FFF9, // 38: b    0x1c
]
