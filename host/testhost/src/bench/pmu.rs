//! The PMU as the benchmarks use it: one event counter counting
//! `INST_RETIRED` at EL2 only, and the cycle counter filtered to EL2 only.
//!
//! Under QEMU TCG with `-icount shift=0`, `INST_RETIRED` (event 0x08) is
//! QEMU's instruction count, and the cycle counter is the virtual clock in
//! nanoseconds, which with `shift=0` advances by exactly one per
//! instruction. Both apply the filter bits of `PMEVTYPER<n>_EL0` /
//! `PMCCFILTR_EL0` at every exception entry and return, so with P = 1, U = 1
//! and NSH = 1 they see only the instructions the hypervisor runs at EL2.
//!
//! Neither counts while a guest's state is loaded: from the world switch's
//! write of the guest's `MDCR_EL2` (`HPMD` and `HCCD` set: no counting at
//! EL2; `HPMN` partitions the event counters away) until the host's value
//! is back, and for a protected guest the host's enabled counters are
//! paused over the same window. So EL2's own work for a guest there (a
//! guest HVC answered at EL2: `vm/hvc`, `RAMPART_ATTEST`,
//! `RAMPART_SEALING_KEY`) is invisible to them; `vb` counts its guest
//! calls with the virtual counter instead, and xtask allows a 0 only in
//! the `hvc` rows.

use core::arch::asm;

/// `PMCR_EL0.E`: enable.
const PMCR_E: u64 = 1 << 0;
/// `PMCR_EL0.P`: reset the event counters.
const PMCR_P: u64 = 1 << 1;
/// `PMCR_EL0.C`: reset the cycle counter.
const PMCR_C: u64 = 1 << 2;
/// `PMCR_EL0.LC`: the cycle counter overflows at 64 bits.
const PMCR_LC: u64 = 1 << 6;

/// Filter bit P: do not count at EL1.
const FILTER_P: u64 = 1 << 31;
/// Filter bit U: do not count at EL0.
const FILTER_U: u64 = 1 << 30;
/// Filter bit NSH: count at (non-secure) EL2.
const FILTER_NSH: u64 = 1 << 27;
/// Count at EL2 only.
pub const EL2_ONLY: u64 = FILTER_P | FILTER_U | FILTER_NSH;
/// Count at EL1 only.
pub const EL1_ONLY: u64 = FILTER_U;

/// `CPU_CYCLES`: processor cycles (an event counter's view of the clock).
pub const CPU_CYCLES: u64 = 0x11;

/// `INST_RETIRED`: instruction architecturally executed.
pub const INST_RETIRED: u64 = 0x08;

/// `PMCNTENSET_EL0` bit of the cycle counter.
const CYCLE_COUNTER: u64 = 1 << 31;

/// Both counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// `PMEVCNTR0_EL0` (32 bits): `INST_RETIRED` at EL2.
    pub instructions: u32,
    /// `PMCCNTR_EL0`: cycles at EL2 (= instructions under `-icount shift=0`).
    pub cycles: u64,
}

impl Sample {
    /// What happened between `self` and `later`.
    pub fn until(self, later: Sample) -> Delta {
        Delta {
            instructions: u64::from(later.instructions.wrapping_sub(self.instructions)),
            cycles: later.cycles.wrapping_sub(self.cycles),
        }
    }
}

/// The counts of one measured interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// EL2 `INST_RETIRED`.
    pub instructions: u64,
    /// EL2 cycles.
    pub cycles: u64,
}

/// What the PMU says about itself.
#[derive(Clone, Copy, Debug)]
pub struct Info {
    /// `PMCR_EL0` as found.
    pub pmcr: u64,
    /// `PMCR_EL0.N`: event counters.
    pub counters: u64,
    /// `PMCEID0_EL0`: common events implemented (bit n = event n).
    pub pmceid0: u64,
    /// `ID_AA64DFR0_EL1.PMUVer`.
    pub pmu_version: u64,
}

impl Info {
    /// Whether the PMU reports `INST_RETIRED` (QEMU does only with icount).
    pub fn has_inst_retired(&self) -> bool {
        self.pmceid0 & (1 << INST_RETIRED) != 0
    }
}

/// Reads the PMU's identification.
pub fn info() -> Info {
    let (pmcr, pmceid0, dfr0): (u64, u64, u64);
    // SAFETY: reads three registers the host may read (the hypervisor leaves
    // the PMU untrapped for the host); no memory, stack or flags touched.
    unsafe {
        asm!(
            "mrs {0}, pmcr_el0",
            "mrs {1}, pmceid0_el0",
            "mrs {2}, id_aa64dfr0_el1",
            out(reg) pmcr, out(reg) pmceid0, out(reg) dfr0,
            options(nomem, nostack, preserves_flags)
        );
    }
    Info {
        pmcr,
        counters: (pmcr >> 11) & 0x1f,
        pmceid0,
        pmu_version: (dfr0 >> 8) & 0xf,
    }
}

/// Programs counter 0 for `event` with `filter`, the cycle counter with
/// `filter`, resets both and starts them.
pub fn start(event: u64, filter: u64) {
    // SAFETY: PMU configuration only: no memory, stack or flags touched.
    // The host owns the PMU (MDCR_EL2.HPMN = PMCR_EL0.N, TPM clear).
    unsafe {
        asm!(
            "msr pmcntenclr_el0, {all}",
            "msr pmselr_el0, xzr",
            "msr pmevtyper0_el0, {event}",
            "msr pmccfiltr_el0, {filter}",
            "msr pmintenclr_el1, {all}",
            "msr pmovsclr_el0, {all}",
            "msr pmcr_el0, {pmcr}",
            "msr pmcntenset_el0, {enable}",
            "isb",
            all = in(reg) u64::from(u32::MAX),
            event = in(reg) event | filter,
            filter = in(reg) filter,
            pmcr = in(reg) PMCR_E | PMCR_P | PMCR_C | PMCR_LC,
            enable = in(reg) CYCLE_COUNTER | 1,
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Stops both counters.
pub fn stop() {
    // SAFETY: as for `start`.
    unsafe {
        asm!(
            "msr pmcntenclr_el0, {all}",
            "msr pmcr_el0, xzr",
            "isb",
            all = in(reg) u64::from(u32::MAX),
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// Reads both counters (after an `isb`, so earlier instructions are done).
#[inline(always)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "PMEVCNTR0_EL0 is a 32-bit counter (PMCR_EL0.LP is clear)"
)]
pub fn read() -> Sample {
    let (events, cycles): (u64, u64);
    // SAFETY: reads two counters; no memory, stack or flags touched.
    unsafe {
        asm!(
            "isb",
            "mrs {0}, pmevcntr0_el0",
            "mrs {1}, pmccntr_el0",
            out(reg) events, out(reg) cycles,
            options(nomem, nostack, preserves_flags)
        );
    }
    Sample {
        instructions: events as u32,
        cycles,
    }
}

/// Runs `iterations` of a short loop at EL1 (to check EL1 is not counted).
pub fn el1_loop(iterations: u64) {
    if iterations == 0 {
        return;
    }
    // SAFETY: register arithmetic only; no memory or stack touched.
    unsafe {
        asm!(
            "1:",
            "add {acc}, {acc}, {n}",
            "eor {acc}, {acc}, {acc}, lsl #3",
            "subs {n}, {n}, #1",
            "b.ne 1b",
            n = inout(reg) iterations => _,
            acc = inout(reg) 0u64 => _,
            options(nomem, nostack)
        );
    }
}
