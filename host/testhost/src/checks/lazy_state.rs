//! `vm-lazy-state` (issue 16): the world switch moves a guest's FP/SIMD
//! registers and pointer-authentication keys lazily, at the guest's first
//! use in a `VCPU_RUN` (`CPTR_EL2.TFP`, `HCR_EL2.API`/`APK` traps in
//! `hyp/src/vcpu.rs`). This check plays the host whose state must survive
//! and the guest that must see only its own:
//!
//! - the guest's first FP read and first key read in a run return its own
//!   values (zero after reset, then what it wrote), never the host's,
//!   which the host loaded into the same registers just before `VCPU_RUN`;
//! - the host's `q0` (both halves) and `APIAKeyLo_EL1` come back unchanged
//!   from every run: runs where the guest loaded its state (the host's
//!   must be restored) and runs where it did not (the host's must never
//!   have been moved);
//! - the guest's values survive exits to the host and runs in between
//!   that do not touch them.
//!
//! The guest is hand-assembled (checked with `llvm-mc -triple=aarch64`). On
//! a CPU without FEAT_PAuth the key accesses are replaced by `mov x1, #0`
//! and `nop`, and only the FP half is checked.

use rampart_abi::host::{ExitReason, HostCall, VmConfig, mmio};

use super::vm::arena;
use crate::arch::{self, apia_key, has_pauth, run_with_host_fp, set_apia_key};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, msg, note};

const GUEST_BASE: u64 = rampart_abi::guest::GUEST_RAM_BASE;
/// The guest's MMIO: QEMU virt's PL011 (only its address matters here).
const UART: u64 = 0x0900_0000;
/// The value the guest writes into its `d0` and `APIAKeyLo_EL1`.
const GUEST_VALUE: u64 = 0x1234_0000_0fb5_6a6a;

/// `mrs x1, APIAKeyLo_EL1` and `msr APIAKeyLo_EL1, x2`, and what replaces
/// them without FEAT_PAuth.
const MRS_KEY: u32 = 0xd538_2101;
const MSR_KEY: u32 = 0xd518_2102;
const MOV_X1_0: u32 = 0xd280_0001;
const NOP: u32 = 0xd503_201f;

/// The guest. Each `str` to the UART is an MMIO write exit whose value the
/// host reads.
fn guest(pauth: bool) -> [u32; 20] {
    let (mrs, msr) = if pauth {
        (MRS_KEY, MSR_KEY)
    } else {
        (MOV_X1_0, NOP)
    };
    [
        0xd2a0_0600, // movz x0, #0x30, lsl #16 (CPACR_EL1.FPEN = 0b11:
        0xd518_1040, // msr  cpacr_el1, x0       the guest's own FP trap off)
        0xd503_3fdf, // isb
        0xd2a1_2014, // 00: movz x20, #0x0900, lsl #16
        0x9e66_0001, // 04: fmov x1, d0            first FP use: own d0 (0)
        0xf900_0281, // 08: str  x1, [x20]         -> exit 1
        mrs,         // 0c: mrs  x1, APIAKeyLo_EL1 first key use: own key (0)
        0xf900_0281, // 10: str  x1, [x20]         -> exit 2
        0xd28d_4d42, // 14: movz x2, #0x6a6a
        0xf2a1_f6a2, // 18: movk x2, #0x0fb5, lsl #16
        0xf2e2_4682, // 1c: movk x2, #0x1234, lsl #48
        0x9e67_0040, // 20: fmov d0, x2
        msr,         // 24: msr  APIAKeyLo_EL1, x2
        0xf900_029f, // 28: str  xzr, [x20]        -> exit 3
        0x9e66_0001, // 2c: loop: fmov x1, d0      own d0 (GUEST_VALUE)
        0xf900_0281, // 30: str  x1, [x20]         -> exit
        mrs,         // 34: mrs  x1, APIAKeyLo_EL1 own key
        0xf900_0281, // 38: str  x1, [x20]         -> exit
        0xf900_029f, // 3c: str  xzr, [x20]        -> exit (a run touching neither)
        0x17ff_fffb, // 40: b    loop
    ]
}

/// `vm-lazy-state`: see the module documentation.
pub fn vm_lazy_state(p: &Platform) -> Result<(), Msg> {
    let pauth = has_pauth();
    let (mut arena, _) = arena(p)?;
    let config = VmConfig {
        debug: false,
        protected: false,
        max_vcpus: 1,
    };
    let pages = config.min_metadata_pages();
    let metadata = arena.take(pages)?;
    let image = arena.take(1)?;
    for (i, pair) in guest(pauth).chunks(2).enumerate() {
        let low = u64::from(pair[0]);
        let high = u64::from(pair.get(1).copied().unwrap_or(0));
        arch::ram_write(image + 8 * i as u64, low | (high << 32));
    }
    let r = call(HostCall::VmCreate, &[metadata, pages, config.encode()]);
    ensure!(r[0] == 0, "VM_CREATE = {}", r[0] as i64);
    let handle = r[1];
    let saved_key = if pauth { apia_key() } else { 0 };
    let result = drive(handle, image, pauth);
    if pauth {
        set_apia_key(saved_key);
    }
    let destroyed = call(HostCall::VmDestroy, &[handle])[0];
    result?;
    ensure!(destroyed == 0, "VM_DESTROY = {}", destroyed as i64);
    Ok(())
}

fn call(c: HostCall, args: &[u64]) -> [u64; 18] {
    crate::psci::call_via(crate::psci::Conduit::Hvc, c.id(), args)
}

fn drive(handle: u64, image: u64, pauth: bool) -> Result<(), Msg> {
    let r = call(HostCall::VcpuCreate, &[handle, 0]);
    ensure!(r[0] == 0, "VCPU_CREATE = {}", r[0] as i64);
    let r = call(HostCall::VmDonate, &[handle, image, 1, GUEST_BASE]);
    ensure!(r[0] == 0, "VM_DONATE = {}", r[0] as i64);
    let r = call(HostCall::VcpuSetRegs, &[handle, 0, GUEST_BASE, 0]);
    ensure!(r[0] == 0, "VCPU_SET_REGS = {}", r[0] as i64);
    // What each run's exit must carry, and what that value is.
    let own_key = |v: u64| if pauth { v } else { 0 };
    let mut expected: [(u64, &str); 3] = [
        (0, "d0 after reset"),
        (own_key(0), "APIAKeyLo_EL1 after reset"),
        (0, "str xzr"),
    ];
    let mut checked = 0;
    for round in 0..3u64 {
        for (step, &(want, what)) in expected.iter().enumerate() {
            // A fresh host pattern for every run: the host's state in the
            // registers is what the guest must not see.
            let n = round * 3 + step as u64;
            let host_low = 0x4f57_0000_0000_0000 | n;
            let host_high = 0x4f57_1111_0000_0000 | n;
            let host_key = 0x4b45_5900_0000_0000 | n;
            let out = run_with_host_fp(handle, pauth, host_low, host_high, host_key);
            let when = msg!("round {round}, run {step} ({what})");
            ensure!(out.r[0] == 0, "{when}: VCPU_RUN = {}", out.r[0] as i64);
            ensure!(
                out.r[1] == ExitReason::Mmio as u64
                    && out.r[2] == UART
                    && out.r[3] == (3 | mmio::WRITE),
                "{when}: exit {:x?}, expected a 64-bit MMIO write to {UART:#x}",
                &out.r[1..4]
            );
            ensure!(
                out.r[4] == want,
                "{when}: the guest read {:#x}, expected its own {want:#x}{}",
                out.r[4],
                if out.r[4] == host_low || out.r[4] == host_key {
                    " (the host's value: the lazy switch leaked it)"
                } else {
                    ""
                }
            );
            ensure!(
                out.q0 == (host_low, host_high),
                "{when}: the host's q0 came back as {:#x}:{:#x}, expected {host_high:#x}:{host_low:#x}",
                out.q0.1,
                out.q0.0
            );
            ensure!(
                out.key == host_key,
                "{when}: the host's APIAKeyLo_EL1 came back as {:#x}, expected {host_key:#x}",
                out.key
            );
            checked += 1;
        }
        // From the first loop on, the guest reads back what it wrote.
        expected = [
            (GUEST_VALUE, "own d0"),
            (own_key(GUEST_VALUE), "own APIAKeyLo_EL1"),
            (0, "a run touching neither"),
        ];
    }
    note!(
        "{checked} runs: the guest saw only its own d0{}, the host's q0{} survived every run",
        if pauth { " and APIA key" } else { "" },
        if pauth { " and APIA key" } else { "" }
    );
    Ok(())
}
