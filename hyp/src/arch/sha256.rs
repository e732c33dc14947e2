//! SHA-256 blocks with the CPU's instructions (FEAT_SHA256).
//!
//! The hypervisor is built soft-float, so `sha2` runs its portable code at
//! EL2 (about 2 300 instructions per 64-byte block). Where the CPU has the
//! SHA-256 instructions (`ID_AA64ISAR0_EL1.SHA2` != 0), [`compress`] runs
//! them instead (about 50 per block). They use SIMD registers, which belong
//! to the host or a guest: the routine saves the ones it uses on the EL2
//! stack first and restores them before it returns, so no hash state is
//! left in them and the owner sees its own values.
//!
//! [`init`] decides once at boot, after a known-answer test against the
//! portable block function: the instructions are used only if they give
//! the portable code's result on a test vector. [`compress`] is a
//! [`rampart_attest::sha256::Compress`] for `Measurer::with_compress` and
//! `Measurement::sha256_with`.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU8, Ordering};

use rampart_attest::sha256::{INITIAL_STATE, portable_compress};

/// SHA-256's round constants (FIPS 180-4, 4.2.2), read by the routine.
static K: [u32; 64] = [
    0x428a_2f98,
    0x7137_4491,
    0xb5c0_fbcf,
    0xe9b5_dba5,
    0x3956_c25b,
    0x59f1_11f1,
    0x923f_82a4,
    0xab1c_5ed5,
    0xd807_aa98,
    0x1283_5b01,
    0x2431_85be,
    0x550c_7dc3,
    0x72be_5d74,
    0x80de_b1fe,
    0x9bdc_06a7,
    0xc19b_f174,
    0xe49b_69c1,
    0xefbe_4786,
    0x0fc1_9dc6,
    0x240c_a1cc,
    0x2de9_2c6f,
    0x4a74_84aa,
    0x5cb0_a9dc,
    0x76f9_88da,
    0x983e_5152,
    0xa831_c66d,
    0xb003_27c8,
    0xbf59_7fc7,
    0xc6e0_0bf3,
    0xd5a7_9147,
    0x06ca_6351,
    0x1429_2967,
    0x27b7_0a85,
    0x2e1b_2138,
    0x4d2c_6dfc,
    0x5338_0d13,
    0x650a_7354,
    0x766a_0abb,
    0x81c2_c92e,
    0x9272_2c85,
    0xa2bf_e8a1,
    0xa81a_664b,
    0xc24b_8b70,
    0xc76c_51a3,
    0xd192_e819,
    0xd699_0624,
    0xf40e_3585,
    0x106a_a070,
    0x19a4_c116,
    0x1e37_6c08,
    0x2748_774c,
    0x34b0_bcb5,
    0x391c_0cb3,
    0x4ed8_aa4a,
    0x5b9c_ca4f,
    0x682e_6ff3,
    0x748f_82ee,
    0x78a5_636f,
    0x84c8_7814,
    0x8cc7_0208,
    0x90be_fffa,
    0xa450_6ceb,
    0xbef9_a3f7,
    0xc671_78f2,
];

// rampart_sha256_blocks(state: *mut [u32; 8], blocks: *const u8, count: u64,
//                       k: *const [u32; 64])
//   Runs the SHA-256 compression function over `count` 64-byte blocks.
//   Saves q0-q7 and q16-q18 on the stack before touching them and restores
//   them before returning: every SIMD register is left as it was found.
//   Uses no general register beyond x0-x4 (caller-saved).
global_asm!(
    r#"
    .arch_extension fp
    .arch_extension simd
    .arch_extension sha2

    // Four rounds: W + K into v16, then the two hash halves (v17 keeps
    // ABCD from before sha256h for sha256h2). With \sched, the schedule
    // turns \w0 into the words 16 further on.
    .macro rampart_sha256_rounds4 w0, w1, w2, w3, sched
    ld1     {{v16.4s}}, [x4], #16
    add     v16.4s, v16.4s, \w0\().4s
    mov     v17.16b, v0.16b
    sha256h q0, q1, v16.4s
    sha256h2 q1, q17, v16.4s
    .if \sched
    sha256su0 \w0\().4s, \w1\().4s
    sha256su1 \w0\().4s, \w2\().4s, \w3\().4s
    .endif
    .endm

    .section .text.rampart_sha256_blocks, "ax"
    .balign 16
    .global rampart_sha256_blocks
rampart_sha256_blocks:
    cbz     x2, 2f
    sub     sp, sp, #192
    stp     q0, q1, [sp, #0]
    stp     q2, q3, [sp, #32]
    stp     q4, q5, [sp, #64]
    stp     q6, q7, [sp, #96]
    stp     q16, q17, [sp, #128]
    str     q18, [sp, #160]
    ld1     {{v0.4s, v1.4s}}, [x0]
1:  ld1     {{v4.16b, v5.16b, v6.16b, v7.16b}}, [x1], #64
    rev32   v4.16b, v4.16b
    rev32   v5.16b, v5.16b
    rev32   v6.16b, v6.16b
    rev32   v7.16b, v7.16b
    mov     v2.16b, v0.16b
    mov     v3.16b, v1.16b
    mov     x4, x3
    rampart_sha256_rounds4 v4, v5, v6, v7, 1
    rampart_sha256_rounds4 v5, v6, v7, v4, 1
    rampart_sha256_rounds4 v6, v7, v4, v5, 1
    rampart_sha256_rounds4 v7, v4, v5, v6, 1
    rampart_sha256_rounds4 v4, v5, v6, v7, 1
    rampart_sha256_rounds4 v5, v6, v7, v4, 1
    rampart_sha256_rounds4 v6, v7, v4, v5, 1
    rampart_sha256_rounds4 v7, v4, v5, v6, 1
    rampart_sha256_rounds4 v4, v5, v6, v7, 1
    rampart_sha256_rounds4 v5, v6, v7, v4, 1
    rampart_sha256_rounds4 v6, v7, v4, v5, 1
    rampart_sha256_rounds4 v7, v4, v5, v6, 1
    rampart_sha256_rounds4 v4, v5, v6, v7, 0
    rampart_sha256_rounds4 v5, v6, v7, v4, 0
    rampart_sha256_rounds4 v6, v7, v4, v5, 0
    rampart_sha256_rounds4 v7, v4, v5, v6, 0
    add     v0.4s, v0.4s, v2.4s
    add     v1.4s, v1.4s, v3.4s
    subs    x2, x2, #1
    b.ne    1b
    st1     {{v0.4s, v1.4s}}, [x0]
    ldp     q0, q1, [sp, #0]
    ldp     q2, q3, [sp, #32]
    ldp     q4, q5, [sp, #64]
    ldp     q6, q7, [sp, #96]
    ldp     q16, q17, [sp, #128]
    ldr     q18, [sp, #160]
    add     sp, sp, #192
2:  ret

    .purgem rampart_sha256_rounds4
    .text
"#
);

unsafe extern "C" {
    fn rampart_sha256_blocks(
        state: *mut [u32; 8],
        blocks: *const u8,
        count: u64,
        k: *const [u32; 64],
    );
}

/// What [`init`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The CPU's SHA-256 instructions, which passed the known-answer test.
    Instructions,
    /// Portable code: the CPU has no FEAT_SHA256.
    PortableNoFeature,
    /// Portable code: a benchmark build (feature `portable-sha256`).
    PortableForced,
    /// Portable code: the instructions gave a wrong answer (a CPU or
    /// emulator fault; reported at boot).
    PortableFailedTest,
}

const UNDECIDED: u8 = 0;
const USE_INSTRUCTIONS: u8 = 1;
const USE_PORTABLE: u8 = 2;

/// The decision, made once at boot by [`init`].
static DECISION: AtomicU8 = AtomicU8::new(UNDECIDED);

/// `CPTR_EL2.TFP` (nVHE layout): trap FP/SIMD, at EL2 too.
const CPTR_TFP: u64 = 1 << 10;
/// `CPTR_EL2.TSM` (nVHE layout, FEAT_SME): trap SME, SVCR included, at EL2
/// too.
const CPTR_TSM: u64 = 1 << 12;

/// Whether this CPU implements the SHA-256 instructions.
fn has_feature() -> bool {
    (super::id_aa64isar0_el1() >> 12) & 0xf != 0
}

/// Whether the interrupted world left this CPU in SME streaming mode, where
/// the SHA-256 instructions are illegal.
fn in_streaming_mode() -> bool {
    if (super::id_aa64pfr1_el1() >> 24) & 0xf == 0 {
        return false;
    }
    // With a guest's state loaded, CPTR_EL2.TSM traps SME (SVCR included)
    // at EL2 too: lift it for the read. A guest cannot enter streaming mode
    // (SME is trapped for it), but the host may have left the CPU in it
    // before its VCPU_RUN, so the read is still needed.
    let cptr = super::cptr_el2();
    if cptr & CPTR_TSM != 0 {
        // SAFETY: only lifts the SME trap for EL2's own read until the
        // restore below; no lower level runs in between.
        unsafe { super::set_cptr_el2(cptr & !CPTR_TSM) };
        super::isb();
    }
    let svcr: u64;
    // SAFETY: SVCR exists (FEAT_SME, checked above) and is not trapped at
    // EL2 (just ensured); reading it has no side effect.
    unsafe {
        asm!("mrs {}, s3_3_c4_c2_2", out(reg) svcr, options(nomem, nostack, preserves_flags))
    };
    if cptr & CPTR_TSM != 0 {
        // SAFETY: puts back the value read above.
        unsafe { super::set_cptr_el2(cptr) };
        super::isb();
    }
    svcr & 1 != 0
}

/// The instructions over `blocks`, `CPTR_EL2.TFP` cleared for the call if
/// it was set. The caller checked the feature.
fn with_instructions(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    let cptr = super::cptr_el2();
    if cptr & CPTR_TFP != 0 {
        // SAFETY: only lifts the FP/SIMD trap for EL2's own use until the
        // restore below; no lower level runs in between.
        unsafe { super::set_cptr_el2(cptr & !CPTR_TFP) };
        super::isb();
    }
    // SAFETY: `state` is 8 exclusive words, `blocks` is `blocks.len()` whole
    // 64-byte blocks and `K` the 64 constants; the routine reads and writes
    // nothing else but 192 bytes of the EL2 stack below SP, and leaves
    // every SIMD register it uses as it found it. FP/SIMD is not trapped
    // at EL2 (just ensured) and the CPU has FEAT_SHA256 (checked by the
    // caller); the CPU is not in streaming mode (checked by the caller).
    unsafe { rampart_sha256_blocks(state, blocks.as_ptr().cast(), blocks.len() as u64, &K) };
    if cptr & CPTR_TFP != 0 {
        // SAFETY: puts back the value read above.
        unsafe { super::set_cptr_el2(cptr) };
        super::isb();
    }
}

/// The SHA-256 block function for everything EL2 hashes.
pub fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    if DECISION.load(Ordering::Relaxed) == USE_INSTRUCTIONS && has_feature() && !in_streaming_mode()
    {
        with_instructions(state, blocks);
    } else {
        portable_compress(state, blocks);
    }
}

/// Decides, once, whether [`compress`] uses the CPU's instructions: only if
/// the CPU has them and they give the portable code's result on three
/// blocks of test data from a state other than the initial one.
pub fn init() -> Engine {
    if cfg!(feature = "portable-sha256") {
        DECISION.store(USE_PORTABLE, Ordering::Relaxed);
        return Engine::PortableForced;
    }
    if !has_feature() || in_streaming_mode() {
        DECISION.store(USE_PORTABLE, Ordering::Relaxed);
        return Engine::PortableNoFeature;
    }
    let mut blocks = [[0u8; 64]; 3];
    for (i, byte) in blocks.as_flattened_mut().iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(0x9d) ^ 0x5c;
    }
    let mut expected = INITIAL_STATE;
    portable_compress(&mut expected, &blocks[..1]);
    let start = expected;
    portable_compress(&mut expected, &blocks);
    let mut got = start;
    with_instructions(&mut got, &blocks);
    let engine = if got == expected && got != start {
        Engine::Instructions
    } else {
        Engine::PortableFailedTest
    };
    let decision = if engine == Engine::Instructions {
        USE_INSTRUCTIONS
    } else {
        USE_PORTABLE
    };
    DECISION.store(decision, Ordering::Relaxed);
    engine
}
