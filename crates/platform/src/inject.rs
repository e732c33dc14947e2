//! Injecting a synchronous exception into the host's EL1, computed as the
//! architecture's `AArch64.TakeException` would for a real one.
//!
//! Rampart answers a host access to memory it does not own with a
//! synchronous external abort, as pKVM does, so the host sees a bus error
//! and never data. This module computes every register value; the
//! hypervisor's `arch` module only writes them.

/// Exception class: unknown reason (used to inject UNDEF).
pub const EC_UNKNOWN: u64 = 0x00;
/// Exception class: instruction abort from a lower EL.
pub const EC_IABT_LOWER: u64 = 0x20;
/// Exception class: instruction abort from the current EL.
pub const EC_IABT_CURRENT: u64 = 0x21;
/// Exception class: data abort from a lower EL.
pub const EC_DABT_LOWER: u64 = 0x24;
/// Exception class: data abort from the current EL.
pub const EC_DABT_CURRENT: u64 = 0x25;
/// Fault status code: synchronous external abort, not on a table walk.
pub const FSC_SEA: u64 = 0x10;
/// ESR.IL: 32-bit instruction.
pub const ESR_IL: u64 = 1 << 25;
/// ESR ISS WnR bit for data aborts.
pub const ESR_WNR: u64 = 1 << 6;
/// ESR ISS FnV bit: FAR is not valid.
pub const ESR_FNV: u64 = 1 << 10;

const PSTATE_M_MASK: u64 = 0xf;
const PSTATE_M_EL0T: u64 = 0b0000;
const PSTATE_M_EL1T: u64 = 0b0100;
const PSTATE_M_EL1H: u64 = 0b0101;
const PSTATE_DAIF: u64 = 0xf << 6;
const PSTATE_PAN: u64 = 1 << 22;
const PSTATE_SSBS: u64 = 1 << 12;
const PSTATE_TCO: u64 = 1 << 25;
const PSTATE_NRW: u64 = 1 << 4;
const PSTATE_M_AARCH32_USR: u64 = 0b1_0000;
const SCTLR_SPAN: u64 = 1 << 23;
const SCTLR_DSSBS: u64 = 1 << 44;

/// The kind of exception to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Synchronous external abort on a data access.
    DataAbort {
        /// The access was a write.
        write: bool,
        /// FAR does not hold the faulting address.
        far_not_valid: bool,
    },
    /// Synchronous external abort on an instruction fetch.
    InstructionAbort {
        /// FAR does not hold the faulting address.
        far_not_valid: bool,
    },
    /// A level-3 permission fault on a data access (not an external
    /// abort): what the host's kernel gets when it reads, from its own
    /// abort path, the page it just took an abort on (see `docs/abi.md`).
    DataPermissionFault {
        /// The access was a write.
        write: bool,
    },
    /// An undefined instruction.
    Undefined,
}

/// Fault status code: permission fault, level 3.
pub const FSC_PERMISSION_L3: u64 = 0x0f;

/// Architecture features that change the exception's PSTATE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// FEAT_PAN.
    pub pan: bool,
    /// FEAT_SSBS.
    pub ssbs: bool,
    /// FEAT_MTE2 or later.
    pub mte: bool,
}

/// The interrupted host state an injection starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted {
    /// `SPSR_EL2`: the host's PSTATE when it trapped.
    pub spsr: u64,
    /// `ELR_EL2`: the trapping instruction.
    pub elr: u64,
    /// `FAR_EL2`.
    pub far: u64,
    /// The host's `VBAR_EL1`.
    pub vbar_el1: u64,
    /// The host's `SCTLR_EL1`.
    pub sctlr_el1: u64,
}

/// The register values that deliver the exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// New `ESR_EL1`.
    pub esr_el1: u64,
    /// New `FAR_EL1` (unchanged for UNDEF: `None`).
    pub far_el1: Option<u64>,
    /// New `ELR_EL1`: where the host resumes after handling.
    pub elr_el1: u64,
    /// New `SPSR_EL1`: the interrupted PSTATE.
    pub spsr_el1: u64,
    /// New `ELR_EL2`: the host's vector entry.
    pub elr_el2: u64,
    /// New `SPSR_EL2`: PSTATE at the vector.
    pub spsr_el2: u64,
}

/// Computes the injection of `kind` into the host interrupted in `from`,
/// or `None` if the host was not in AArch64 EL0/EL1 or AArch32 user mode
/// (the only states it can trap from).
#[must_use]
pub fn compute(kind: Kind, from: &Interrupted, features: Features) -> Option<Injection> {
    let mode = from.spsr & (PSTATE_M_MASK | PSTATE_NRW);
    let (same_el, vector_offset) = match mode {
        PSTATE_M_EL1H => (true, 0x200),
        PSTATE_M_EL1T => (true, 0x000),
        PSTATE_M_EL0T => (false, 0x400),
        PSTATE_M_AARCH32_USR => (false, 0x600),
        _ => return None,
    };
    let (ec, iss, far) = match kind {
        Kind::DataAbort {
            write,
            far_not_valid,
        } => (
            if same_el {
                EC_DABT_CURRENT
            } else {
                EC_DABT_LOWER
            },
            FSC_SEA | if write { ESR_WNR } else { 0 } | if far_not_valid { ESR_FNV } else { 0 },
            Some(from.far),
        ),
        Kind::InstructionAbort { far_not_valid } => (
            if same_el {
                EC_IABT_CURRENT
            } else {
                EC_IABT_LOWER
            },
            FSC_SEA | if far_not_valid { ESR_FNV } else { 0 },
            Some(from.far),
        ),
        Kind::DataPermissionFault { write } => (
            if same_el {
                EC_DABT_CURRENT
            } else {
                EC_DABT_LOWER
            },
            FSC_PERMISSION_L3 | if write { ESR_WNR } else { 0 },
            Some(from.far),
        ),
        Kind::Undefined => (EC_UNKNOWN, 0, None),
    };

    let mut pstate = PSTATE_M_EL1H | PSTATE_DAIF;
    if features.pan {
        // PAN is set on exception entry if SCTLR_EL1.SPAN is 0, else kept.
        if from.sctlr_el1 & SCTLR_SPAN == 0 {
            pstate |= PSTATE_PAN;
        } else {
            pstate |= from.spsr & PSTATE_PAN;
        }
    }
    if features.ssbs && from.sctlr_el1 & SCTLR_DSSBS != 0 {
        pstate |= PSTATE_SSBS;
    }
    if features.mte {
        pstate |= PSTATE_TCO;
    }
    Some(Injection {
        esr_el1: (ec << 26) | ESR_IL | iss,
        far_el1: far,
        elr_el1: from.elr,
        spsr_el1: from.spsr,
        elr_el2: from.vbar_el1.wrapping_add(vector_offset),
        spsr_el2: pstate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EL1H_IRQS_ON: u64 = 0b0101 | (0b0011 << 6); // D and A masked
    fn host(spsr: u64) -> Interrupted {
        Interrupted {
            spsr,
            elr: 0xffff_8000_1000_0040,
            far: 0x4020_0000,
            vbar_el1: 0xffff_8000_1001_0000,
            sctlr_el1: 0,
        }
    }

    #[test]
    fn data_abort_from_the_kernel_goes_to_the_current_el_vector() {
        let i = compute(
            Kind::DataAbort {
                write: false,
                far_not_valid: false,
            },
            &host(EL1H_IRQS_ON),
            Features::default(),
        )
        .unwrap();
        assert_eq!(i.esr_el1, (0x25 << 26) | (1 << 25) | 0x10);
        assert_eq!(i.far_el1, Some(0x4020_0000));
        assert_eq!(i.elr_el1, 0xffff_8000_1000_0040);
        assert_eq!(i.spsr_el1, EL1H_IRQS_ON);
        assert_eq!(i.elr_el2, 0xffff_8000_1001_0200);
        assert_eq!(i.spsr_el2, 0b0101 | 0x3c0);
    }

    #[test]
    fn a_permission_fault_is_a_data_abort_with_a_level_3_permission_status() {
        let i = compute(
            Kind::DataPermissionFault { write: false },
            &host(EL1H_IRQS_ON),
            Features::default(),
        )
        .unwrap();
        assert_eq!(i.esr_el1, (0x25 << 26) | (1 << 25) | 0x0f);
        assert_eq!(i.far_el1, Some(0x4020_0000));
        assert_eq!(i.elr_el2, 0xffff_8000_1001_0200);
    }

    #[test]
    fn write_from_user_space_goes_to_the_lower_el_vector() {
        let i = compute(
            Kind::DataAbort {
                write: true,
                far_not_valid: false,
            },
            &host(0),
            Features::default(),
        )
        .unwrap();
        assert_eq!(i.esr_el1 >> 26, 0x24);
        assert_eq!(i.esr_el1 & ESR_WNR, ESR_WNR);
        assert_eq!(i.elr_el2, 0xffff_8000_1001_0400);
        let t = compute(
            Kind::InstructionAbort {
                far_not_valid: true,
            },
            &host(0b0100),
            Features::default(),
        )
        .unwrap();
        assert_eq!(t.esr_el1 >> 26, 0x21);
        assert_eq!(t.esr_el1 & ESR_FNV, ESR_FNV);
        assert_eq!(t.elr_el2, 0xffff_8000_1001_0000);
    }

    #[test]
    fn pstate_follows_the_architecture() {
        let mut h = host(EL1H_IRQS_ON);
        let all = Features {
            pan: true,
            ssbs: true,
            mte: true,
        };
        let i = compute(Kind::Undefined, &h, all).unwrap();
        assert_eq!(i.spsr_el2 & PSTATE_PAN, PSTATE_PAN, "SPAN=0 sets PAN");
        assert_eq!(i.spsr_el2 & PSTATE_SSBS, 0, "DSSBS=0 clears SSBS");
        assert_eq!(i.spsr_el2 & PSTATE_TCO, PSTATE_TCO);
        assert_eq!(i.esr_el1, 1 << 25);
        assert_eq!(i.far_el1, None);
        h.sctlr_el1 = SCTLR_SPAN | SCTLR_DSSBS;
        let i = compute(Kind::Undefined, &h, all).unwrap();
        assert_eq!(i.spsr_el2 & PSTATE_PAN, 0, "SPAN=1 keeps PAN (clear here)");
        assert_eq!(i.spsr_el2 & PSTATE_SSBS, PSTATE_SSBS);
    }

    #[test]
    fn refuses_states_the_host_cannot_be_in() {
        assert_eq!(
            compute(Kind::Undefined, &host(0b1001), Features::default()),
            None
        ); // EL2h
        assert_eq!(compute(Kind::Undefined, &host(0b10011), Features::default()), None); // AArch32 SVC
        let user32 = compute(
            Kind::DataAbort { write: false, far_not_valid: false },
            &host(0b10000),
            Features::default(),
        )
        .unwrap();
        assert_eq!(user32.elr_el2, 0xffff_8000_1001_0600);
        assert_eq!(user32.esr_el1 >> 26, 0x24);
    }
}
