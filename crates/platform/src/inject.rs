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

/// Identical aborts from the host's kernel in a row after which it is
/// taken to be unable to take them.
pub const STUCK_AFTER: u64 = 3;

/// What the hypervisor remembers, per CPU, of the last abort it injected
/// into the host, to recognise a host kernel that gave away pages it needs
/// itself (`docs/abi.md`, *Illegal host access*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbortHistory {
    elr: u64,
    far: u64,
    repeats: u64,
    kernel: bool,
}

/// What to do about a host access to memory it does not own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortDecision {
    /// Inject this exception.
    Inject(Kind),
    /// The host's kernel faulted at the same instruction and address this
    /// many times in a row: it cannot take the abort.
    Stuck(u64),
}

impl AbortHistory {
    /// No abort yet.
    pub const NEW: Self = AbortHistory {
        elr: 0,
        far: 0,
        repeats: 0,
        kernel: false,
    };

    /// Decides about an abort of `kind` at `elr` / `far`, taken from the
    /// host's kernel (EL1) or not, and remembers it. `host_elr_el1` is the
    /// host's `ELR_EL1` as the abort is taken: while it still holds what the
    /// previous injection wrote there (that abort's `elr`), the host has not
    /// completed taking that abort (it never returned from it nor moved on).
    ///
    /// - the same kernel abort more than [`STUCK_AFTER`] times in a row,
    ///   each time before the host took the previous one, is
    ///   [`AbortDecision::Stuck`] (a host that handles the abort and then
    ///   touches the same page from the same instruction again — a probe
    ///   loop — is making progress and is never stuck);
    /// - a kernel data read of an upper-half (TTBR1) address in the page of
    ///   the previous kernel abort, by another instruction, is a level-3
    ///   permission fault (Linux's oops reading the code it lost, which an
    ///   external abort would deadlock);
    /// - anything else is injected as it is.
    pub fn decide(&mut self, kind: Kind, from_kernel: bool, elr: u64, far: u64, host_elr_el1: u64) -> AbortDecision {
        let previous = *self;
        let same = from_kernel
            && previous.kernel
            && (previous.elr, previous.far) == (elr, far)
            && host_elr_el1 == previous.elr;
        *self = AbortHistory {
            elr,
            far,
            repeats: if same { previous.repeats + 1 } else { 0 },
            kernel: from_kernel,
        };
        if self.repeats >= STUCK_AFTER {
            return AbortDecision::Stuck(self.repeats + 1);
        }
        let page = !(crate::PAGE_SIZE - 1);
        let rereads_lost_page = from_kernel
            && previous.kernel
            && far & (1 << 55) != 0
            && matches!(
                kind,
                Kind::DataAbort {
                    write: false,
                    far_not_valid: false
                }
            )
            && far & page == previous.far & page
            && elr != previous.elr;
        if rereads_lost_page {
            AbortDecision::Inject(Kind::DataPermissionFault { write: false })
        } else {
            AbortDecision::Inject(kind)
        }
    }
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

    const READ: Kind = Kind::DataAbort {
        write: false,
        far_not_valid: false,
    };
    const FETCH: Kind = Kind::InstructionAbort {
        far_not_valid: false,
    };

    #[test]
    fn a_kernel_reading_the_code_it_lost_gets_a_permission_fault() {
        let mut h = AbortHistory::default();
        let pc = 0xffff_8000_1245_e3c0;
        assert_eq!(h.decide(FETCH, true, pc, pc, pc), AbortDecision::Inject(FETCH));
        // The oops dumps pc - 16 .. pc through a no-fault read.
        let reader = 0xffff_8000_1011_2040;
        assert_eq!(
            h.decide(READ, true, reader, pc - 16, reader),
            AbortDecision::Inject(Kind::DataPermissionFault { write: false })
        );
        // Another page, a write, a user address, user space: external aborts.
        let mut h = AbortHistory::default();
        h.decide(FETCH, true, pc, pc, pc);
        assert_eq!(h.decide(READ, true, reader, pc + 0x1000, reader), AbortDecision::Inject(READ));
        let write = Kind::DataAbort {
            write: true,
            far_not_valid: false,
        };
        h.decide(FETCH, true, pc, pc, pc);
        assert_eq!(h.decide(write, true, reader, pc, reader), AbortDecision::Inject(write));
        let mut h = AbortHistory::default();
        h.decide(FETCH, true, 0x4000_1000, 0x4000_1000, 0x4000_1000);
        assert_eq!(h.decide(READ, true, 0x4000_2000, 0x4000_1008, 0x4000_2000), AbortDecision::Inject(READ));
        let mut h = AbortHistory::default();
        h.decide(READ, false, 0x1000, pc, 0x1000);
        assert_eq!(h.decide(READ, true, reader, pc, reader), AbortDecision::Inject(READ));
    }

    #[test]
    fn a_kernel_faulting_in_the_same_place_again_and_again_is_stuck() {
        let mut h = AbortHistory::default();
        let vector = 0xffff_8000_1001_0200;
        for _ in 0..=2 {
            assert_eq!(h.decide(FETCH, true, vector, vector, vector), AbortDecision::Inject(FETCH));
        }
        assert_eq!(h.decide(FETCH, true, vector, vector, vector), AbortDecision::Stuck(4));
        // User space retrying the same access (a SIGBUS handler) never is.
        let mut h = AbortHistory::default();
        for _ in 0..10 {
            assert_eq!(h.decide(READ, false, 0x40_0000, 0x7f00_0000, 0x40_0000), AbortDecision::Inject(READ));
        }
        // A kernel that took each abort (its ELR_EL1 moved on: a handler
        // that skips the access) and probes the same page from the same
        // instruction again is never stuck.
        let mut h = AbortHistory::default();
        for _ in 0..10 {
            assert_eq!(h.decide(READ, true, 0x4203_08ec, 0x5f20_a000, 0x4203_08f0), AbortDecision::Inject(READ));
        }
        // Progress in between starts the count again.
        let mut h = AbortHistory::default();
        for i in 0..10 {
            let far = 0x4000_0000 + (i % 2) * 8;
            assert_eq!(h.decide(READ, true, 0x4000_1000, far, 0x4000_1000), AbortDecision::Inject(READ));
        }
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

/// GICv3 list registers (`ICH_LR<n>_EL2`): where a virtual interrupt
/// queued for a vCPU goes.
pub mod list_register {
    /// `State`, bits 63:62.
    pub const STATE_MASK: u64 = 0b11 << 62;
    /// State = pending.
    pub const PENDING: u64 = 0b01 << 62;
    /// State = active.
    pub const ACTIVE: u64 = 0b10 << 62;
    /// `Group` = 1.
    pub const GROUP1: u64 = 1 << 60;
    /// The priority virtual interrupts are given (bits 55:48).
    pub const PRIORITY: u64 = 0xa0 << 48;
    /// `EOI` (bit 41, with `HW` = 0): the guest's deactivation of this
    /// interrupt asserts the maintenance interrupt (`ICH_EISR_EL2` bit
    /// *n*, `ICH_MISR_EL2.EOI`). Set for level-sensitive interrupts, whose
    /// line the host resamples after the guest's EOI.
    pub const EOI: u64 = 1 << 41;
    /// `ICH_HCR_EL2.En`: the virtual CPU interface is on.
    pub const HCR_EN: u64 = 1;
    /// `ICH_HCR_EL2.NPIE`: maintenance interrupt while no list register
    /// holds a pending interrupt.
    pub const HCR_NPIE: u64 = 1 << 3;
    /// A queued INTID's flag (bit 31; INTIDs are below 1020): it is
    /// level-sensitive, its list register gets [`EOI`].
    pub const QUEUED_LEVEL: u32 = 1 << 31;

    /// What to do with virtual interrupt `intid` given the list registers'
    /// current values.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Place {
        /// An LR already holds it pending (or active and pending): the
        /// edge merges into that one.
        Merged,
        /// LR `n` holds it active (the guest is handling the previous
        /// one): make it active and pending, so the guest takes it again
        /// after its EOI.
        AddPending(usize),
        /// LR `n` is free: write a new pending entry.
        Fill(usize),
        /// No LR is free: keep it queued.
        Full,
    }

    /// Decides where `intid` goes.
    #[must_use]
    pub fn place(lrs: &[u64], intid: u32) -> Place {
        let intid = u64::from(intid);
        if let Some(n) = lrs.iter().position(|lr| lr & STATE_MASK != 0 && lr & 0xffff_ffff == intid) {
            return if lrs[n] & PENDING != 0 { Place::Merged } else { Place::AddPending(n) };
        }
        lrs.iter().position(|lr| lr & STATE_MASK == 0).map_or(Place::Full, Place::Fill)
    }

    /// A new pending Group 1 entry for `intid`.
    #[must_use]
    pub const fn pending(intid: u32) -> u64 {
        PENDING | GROUP1 | PRIORITY | intid as u64
    }

    /// A new pending Group 1 entry for a queued INTID, with [`EOI`] when
    /// it carries [`QUEUED_LEVEL`].
    #[must_use]
    pub const fn pending_queued(queued: u32) -> u64 {
        let entry = pending(queued & !QUEUED_LEVEL);
        if queued & QUEUED_LEVEL != 0 { entry | EOI } else { entry }
    }

    /// `ICH_HCR_EL2` for the next entry: the interface on, and the "no
    /// pending" maintenance interrupt while INTIDs still wait in the queue
    /// for a free list register (`waiting`), so that the guest's taking of
    /// the last pending one brings control back to EL2 to place them,
    /// instead of leaving them until the vCPU's next exit for another
    /// reason.
    #[must_use]
    pub const fn hcr(waiting: bool) -> u64 {
        if waiting { HCR_EN | HCR_NPIE } else { HCR_EN }
    }

    /// The INTIDs of level-sensitive interrupts the guest has ended, from
    /// `ICH_EISR_EL2` (`eisr`) and the list registers: an LR that is
    /// neither pending nor active with [`EOI`] set. Returns them (at most
    /// one per list register) with the mask of list registers to clear.
    #[must_use]
    pub fn ended(lrs: &[u64], eisr: u64) -> ([u32; 16], usize, u64) {
        let mut out = [0u32; 16];
        let mut count = 0;
        let mut clear = 0u64;
        for (n, &lr) in lrs.iter().enumerate().take(16) {
            if eisr & (1 << n) != 0 && lr & STATE_MASK == 0 && lr & EOI != 0 {
                #[allow(clippy::cast_possible_truncation, reason = "the vINTID field is 32 bits")]
                let intid = (lr & 0xffff_ffff) as u32;
                out[count] = intid;
                count += 1;
                clear |= 1 << n;
            }
        }
        (out, count, clear)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_interrupt_raised_while_its_previous_one_is_active_is_not_lost() {
            // Linux's IRQ-work IPI (SGI 5) raised again in its own handler.
            let lrs = [ACTIVE | GROUP1 | PRIORITY | 5, 0, 0, 0];
            assert_eq!(place(&lrs, 5), Place::AddPending(0));
            let lrs = [pending(27), ACTIVE | PENDING | 5, 0, 0];
            assert_eq!(place(&lrs, 5), Place::Merged);
            assert_eq!(place(&lrs, 27), Place::Merged);
            assert_eq!(place(&lrs, 3), Place::Fill(2));
            let full = [pending(1), pending(2), pending(3), ACTIVE | 4];
            assert_eq!(place(&full, 9), Place::Full);
            assert_eq!(place(&full, 4), Place::AddPending(3));
            assert_eq!(pending(33), (1 << 62) | (1 << 60) | (0xa0 << 48) | 33);
        }

        #[test]
        fn level_interrupts_ask_for_an_eoi_maintenance_interrupt() {
            assert_eq!(pending_queued(33), pending(33));
            assert_eq!(pending_queued(33 | QUEUED_LEVEL), pending(33) | EOI);
            // An ended level interrupt: state invalid, EOI set, its EISR bit.
            let lrs = [EOI | GROUP1 | PRIORITY | 33, ACTIVE | EOI | 34, pending(35), EOI | 36];
            let (ids, n, clear) = ended(&lrs, 0b0001);
            assert_eq!((&ids[..n], clear), (&[33][..], 0b0001));
            // Only LRs the EISR names, and never a live one.
            let (ids, n, clear) = ended(&lrs, 0b1111);
            assert_eq!((&ids[..n], clear), (&[33, 36][..], 0b1001));
            assert_eq!(ended(&lrs, 0).1, 0);
        }

        #[test]
        fn waiting_interrupts_ask_for_the_no_pending_maintenance_interrupt() {
            assert_eq!(hcr(false), 1);
            assert_eq!(hcr(true), 1 | (1 << 3));
        }
    }
}
