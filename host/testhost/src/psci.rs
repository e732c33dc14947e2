//! PSCI (Arm DEN0022) calls through the conduit the device tree names.
//!
//! Under Rampart the host's `/psci` node says `method = "smc"` and the
//! hypervisor traps and relays those SMCs. Standalone (QEMU entering the test
//! host at EL1 with no EL2 or EL3) QEMU answers PSCI on `hvc` instead, so the
//! conduit is whatever the DT says; `psci-conduit` checks it is SMC.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::arch::{self, SmcccRegisters};

/// `PSCI_VERSION`.
pub const VERSION: u32 = 0x8400_0000;
/// `CPU_OFF`.
pub const CPU_OFF: u32 = 0x8400_0002;
/// `CPU_ON` (SMC64).
pub const CPU_ON: u32 = 0xC400_0003;
/// `AFFINITY_INFO` (SMC64).
pub const AFFINITY_INFO: u32 = 0xC400_0004;
/// `SYSTEM_OFF`.
pub const SYSTEM_OFF: u32 = 0x8400_0008;

/// PSCI return code `SUCCESS`.
pub const SUCCESS: i64 = 0;
/// PSCI return code `INVALID_PARAMETERS`.
pub const INVALID_PARAMETERS: i64 = -2;
/// PSCI return code `ALREADY_ON`.
pub const ALREADY_ON: i64 = -4;

/// `AFFINITY_INFO` result: the CPU is on.
pub const AFFINITY_ON: i64 = 0;
/// `AFFINITY_INFO` result: the CPU is off.
pub const AFFINITY_OFF: i64 = 1;

/// How PSCI calls reach the firmware (or the hypervisor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `SMC #0`.
    Smc,
    /// `HVC #0`.
    Hvc,
}

impl Conduit {
    /// The DT `method` string.
    pub fn name(self) -> &'static str {
        match self {
            Conduit::Smc => "smc",
            Conduit::Hvc => "hvc",
        }
    }
}

static CONDUIT: AtomicU8 = AtomicU8::new(0);

/// Chooses the conduit every PSCI call in this module uses.
pub fn set_conduit(conduit: Conduit) {
    CONDUIT.store(u8::from(conduit == Conduit::Hvc), Ordering::Relaxed);
}

/// The conduit PSCI calls use (SMC until the DT says otherwise).
pub fn conduit() -> Conduit {
    if CONDUIT.load(Ordering::Relaxed) == 0 {
        Conduit::Smc
    } else {
        Conduit::Hvc
    }
}

/// Makes an SMCCC call with `x0 = function`, `x1..` = `args` through `conduit`
/// and returns all of `x0`..`x17`. Unused argument registers hold zero.
pub fn call_via(conduit: Conduit, function: u32, args: &[u64]) -> SmcccRegisters {
    let mut registers = [0u64; 18];
    registers[0] = u64::from(function);
    for (slot, arg) in registers[1..].iter_mut().zip(args) {
        *slot = *arg;
    }
    match conduit {
        Conduit::Smc => arch::smc(&mut registers),
        Conduit::Hvc => arch::hvc(&mut registers),
    }
    registers
}

/// A PSCI call through the DT's conduit; returns `x0` as a signed value.
pub fn call(function: u32, args: &[u64]) -> i64 {
    call_via(conduit(), function, args)[0] as i64
}

/// `CPU_ON(target, entry, context)`.
pub fn cpu_on(target_mpidr: u64, entry: u64, context: u64) -> i64 {
    call(CPU_ON, &[target_mpidr, entry, context])
}

/// `AFFINITY_INFO(target, level 0)`.
pub fn affinity_info(target_mpidr: u64) -> i64 {
    call(AFFINITY_INFO, &[target_mpidr, 0])
}

/// `CPU_OFF`; returns only if the call failed.
pub fn cpu_off() -> i64 {
    call(CPU_OFF, &[])
}

/// `SYSTEM_OFF`; returns only if the call failed.
pub fn system_off() {
    call(SYSTEM_OFF, &[]);
}
