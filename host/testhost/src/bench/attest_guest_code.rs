// The attestation bench guest, hand-assembled (checked with
// `llvm-mc -triple=aarch64`). Shared by the test host (which runs it) and
// xtask (which signs it: a protected VM with two pages, the image and the
// page the report is written to): one expression, included by both.
//
// After the first exit and `MMIO_GUARD_MAP` of the UART page, each pass
// reads a selector from the UART (an MMIO read the host answers), makes
// that call, and writes its `x0` then its `x1` back (two MMIO writes):
// selector 0 = no call, 1 = `RAMPART_ATTEST` with a 64-byte nonce (x3..x10,
// zero) into the page at 0x8000_1000, 2 = `RAMPART_SEALING_KEY` with a
// 32-byte label (x2..x5). The guest's own instructions run at EL1 and are
// not counted, so (run with a call - run with selector 0) is the call.
[
    0xD503_207F, // 00: wfi                         -> EXIT_WAIT
    0xD2A1_2014, // 04: movz x20, #0x0900, lsl #16   (UART)
    0xD280_00E0, // 08: movz x0, #7
    0xF2B8_C000, // 0c: movk x0, #0xC600, lsl #16   (MMIO_GUARD_MAP)
    0xAA14_03E1, // 10: mov  x1, x20
    0xD400_0002, // 14: hvc  #0
    0xB900_029F, // 18: str  wzr, [x20]              -> MMIO write
    0xF940_0693, // 1c: ldr  x19, [x20, #8]          -> MMIO read: x19 = selector
    0xF100_067F, // 20: cmp  x19, #1
    0x5400_00C0, // 24: b.eq 0x3c
    0xF100_0A7F, // 28: cmp  x19, #2
    0x5400_0160, // 2c: b.eq 0x58
    0xAA1F_03E0, // 30: mov  x0, xzr
    0xAA1F_03E1, // 34: mov  x1, xzr
    0x1400_000C, // 38: b    0x68
    0xD288_0000, // 3c: movz x0, #0x4000
    0xF2B8_C000, // 40: movk x0, #0xC600, lsl #16   (RAMPART_ATTEST)
    0xD282_0001, // 44: movz x1, #0x1000
    0xF2B0_0001, // 48: movk x1, #0x8000, lsl #16   (report page 0x8000_1000)
    0xD280_0802, // 4c: movz x2, #64                  (nonce length)
    0xD400_0002, // 50: hvc  #0
    0x1400_0005, // 54: b    0x68
    0xD288_0020, // 58: movz x0, #0x4001
    0xF2B8_C000, // 5c: movk x0, #0xC600, lsl #16   (RAMPART_SEALING_KEY)
    0xD280_0401, // 60: movz x1, #32                  (label length)
    0xD400_0002, // 64: hvc  #0
    0xF900_0280, // 68: str  x0, [x20]               -> MMIO write: x0
    0xF900_0A81, // 6c: str  x1, [x20, #16]          -> MMIO write: x1
    0x17FF_FFEB, // 70: b    0x1c
]
