//! Decoding trapped accesses: the syndrome fields of a data abort or a
//! system-register trap, MMIO value widths, the ID registers a protected
//! guest may see, and the control-page protocol. Pure functions of the
//! syndrome, so they are tested here rather than at EL2.

use rampart_abi::boot::control;

/// ESR ISS bit 24: the syndrome describes the access (ISV).
const ISV: u64 = 1 << 24;

/// A single load or store the hardware described in its syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// A store (WnR).
    pub write: bool,
    /// The general register transferred (31 = xzr/wzr).
    pub register: usize,
    /// log2 of the access width in bytes (SAS).
    pub size_log2: u64,
    /// A load sign-extends (SSE).
    pub sign_extend: bool,
    /// The register is 64-bit (SF).
    pub sixty_four: bool,
}

impl MmioAccess {
    /// Decodes a data abort's ISS; `None` without a valid syndrome.
    #[must_use]
    pub fn decode(iss: u64) -> Option<Self> {
        if iss & ISV == 0 {
            return None;
        }
        Some(MmioAccess {
            write: iss & (1 << 6) != 0,
            register: usize::from(((iss >> 16) & 0x1f) as u8),
            size_log2: (iss >> 22) & 0b11,
            sign_extend: iss & (1 << 21) != 0,
            sixty_four: iss & (1 << 15) != 0,
        })
    }

    /// The access width in bits.
    #[must_use]
    pub const fn bits(&self) -> u32 {
        8 << self.size_log2
    }

    /// What a store writes, from the source register's value.
    #[must_use]
    pub fn store_value(&self, register_value: u64) -> u64 {
        truncate(register_value, self.bits())
    }

    /// What a load puts in its register, from the value read: truncated to
    /// the width, then sign-extended to 32 or 64 bits if the load says so.
    #[must_use]
    pub fn load_value(&self, value: u64) -> u64 {
        let bits = self.bits();
        let masked = truncate(value, bits);
        if !self.sign_extend || bits == 64 {
            return masked;
        }
        let shift = 64 - bits;
        let wide = (((masked << shift) as i64) >> shift) as u64;
        if self.sixty_four { wide } else { wide & 0xffff_ffff }
    }
}

fn truncate(value: u64, bits: u32) -> u64 {
    if bits >= 64 { value } else { value & ((1 << bits) - 1) }
}

/// A trapped `MRS`/`MSR` (EC 0x18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysregAccess {
    /// `MRS` (a read).
    pub read: bool,
    /// The general register (31 = xzr).
    pub register: usize,
    /// op0, op1, CRn, CRm, op2.
    pub encoding: (u64, u64, u64, u64, u64),
}

impl SysregAccess {
    /// Decodes the ISS of a system-register trap.
    #[must_use]
    pub fn decode(iss: u64) -> Self {
        SysregAccess {
            read: iss & 1 == 1,
            register: usize::from(((iss >> 5) & 0x1f) as u8),
            encoding: ((iss >> 20) & 0x3, (iss >> 14) & 0x7, (iss >> 10) & 0xf, (iss >> 1) & 0xf, (iss >> 17) & 0x7),
        }
    }

    /// For a read of an AArch64 ID register (op0 3, op1 0, CRn 0, CRm
    /// 1..7): its (CRm, op2).
    #[must_use]
    pub fn id_register(&self) -> Option<(u64, u64)> {
        let (op0, op1, crn, crm, op2) = self.encoding;
        (self.read && op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm)).then_some((crm, op2))
    }
}

impl SysregAccess {
    /// A debug or trace system register (op0 = 2: breakpoints,
    /// watchpoints, `MDSCR_EL1`, the OS lock, `MDCCINT_EL1`, trace unit
    /// registers; and the trace filter `TRFCR_EL1`). Trapped for guests
    /// (`MDCR_EL2.TDA`/`TDOSA`/`TDRA`/`TTRF`, `CPTR_EL2.TTA`) and
    /// read-as-zero / write-ignored, as pKVM does for
    /// protected guests, so a guest kernel that probes or clears them at
    /// boot (Linux writes `OSLAR_EL1` and `MDSCR_EL1`) keeps running with
    /// no debug state of its own.
    #[must_use]
    pub fn is_debug_or_trace(&self) -> bool {
        /// `TRFCR_EL1`: op0 3, op1 0, CRn 1, CRm 2, op2 1.
        const TRFCR_EL1: (u64, u64, u64, u64, u64) = (3, 0, 1, 2, 1);
        self.encoding.0 == 2 || self.encoding == TRFCR_EL1
    }
}

/// The targets of a guest's write to `ICC_SGI1R_EL1` / `ICC_ASGI1R_EL1` /
/// `ICC_SGI0R_EL1` (GICv3: `TargetList` [15:0], `Aff1` [23:16], `INTID`
/// [27:24], `Aff2` [39:32], `IRM` [40], `RS` [47:44], `Aff3` [55:48]), for
/// vCPUs whose affinity is 0.0.0.*index*.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgiTargets {
    /// The SGI (0..16).
    pub intid: u32,
    /// `IRM`: every PE but the sender.
    pub all_but_self: bool,
    /// The vCPU indices named by the target list (bit *i* = vCPU *i*),
    /// already 0 when `Aff3.Aff2.Aff1` or `RS` name no vCPU.
    pub list: u64,
}

impl SgiTargets {
    /// Decodes the written value.
    #[must_use]
    pub fn decode(value: u64) -> Self {
        let intid = ((value >> 24) & 0xf) as u32;
        let all_but_self = value & (1 << 40) != 0;
        let aff_high = (value >> 16) & 0xff | ((value >> 32) & 0xff) << 8 | ((value >> 48) & 0xff) << 16;
        let rs = (value >> 44) & 0xf;
        // vCPU i is Aff0 = i < 16 here (at most 8 vCPUs), so RS must be 0.
        let list = if aff_high == 0 && rs == 0 { value & 0xffff } else { 0 };
        SgiTargets { intid, all_but_self, list }
    }

    /// Whether vCPU `index` is a target of a write by vCPU `sender`.
    #[must_use]
    pub fn includes(&self, index: usize, sender: usize) -> bool {
        if self.all_but_self {
            index != sender
        } else {
            index < 16 && self.list & (1 << index) != 0
        }
    }
}

/// What a guest's exit to EL2 was, from the vector it took (the vector's
/// offset / 0x80 in the lower-EL half of the table: 8..11 from AArch64,
/// 12..15 from AArch32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestVector {
    /// A synchronous exception: decode `ESR_EL2`.
    Sync,
    /// A physical IRQ or FIQ: the host's.
    Interrupt,
    /// A physical SError while the guest ran: the guest's own error, given
    /// back to it as a virtual SError.
    SError,
    /// Not a lower-EL vector.
    Unexpected,
}

impl GuestVector {
    /// Classifies vector kind `kind`.
    #[must_use]
    pub fn of(kind: u64) -> Self {
        match kind {
            8 | 12 => GuestVector::Sync,
            9 | 10 | 13 | 14 => GuestVector::Interrupt,
            11 | 15 => GuestVector::SError,
            _ => GuestVector::Unexpected,
        }
    }
}

/// `VSESR_EL2` for a virtual SError given to a guest: an
/// implementation-defined syndrome (`IDS`, bit 24) and nothing else, so
/// nothing about the physical error leaks; `None` without FEAT_RAS, where
/// the virtual SError's syndrome is implementation defined and
/// `VSESR_EL2` does not exist.
#[must_use]
pub fn virtual_serror_syndrome(ras: bool) -> Option<u64> {
    ras.then_some(1 << 24)
}

/// What a protected guest sees of the ID register (CRm, op2) whose real
/// value is `raw`: features Rampart does not give guests (SVE, SME, MTE,
/// AMU, MPAM, RME, PMU, statistical profiling, trace, EL2, EL3, AArch32)
/// are hidden; registers it does not know read as zero.
#[must_use]
pub fn sanitise_id_register(crm: u64, op2: u64, raw: u64) -> u64 {
    fn clear(value: u64, fields: &[u32]) -> u64 {
        fields.iter().fold(value, |v, &shift| v & !(0xf << shift))
    }
    match (crm, op2) {
        // ID_AA64PFR0_EL1: EL0 and EL1 AArch64 only; no EL2, EL3, RAS,
        // SVE, SEL2, MPAM, AMU, RME.
        (4, 0) => (clear(raw, &[8, 12, 28, 32, 36, 40, 44, 52]) & !0xff) | 0x11,
        // ID_AA64PFR1_EL1: no MTE, MPAM, SME, RNDR trap, MTE fractions,
        // NMI, GCS or THE (their EL1 registers are not context-switched).
        (4, 1) => clear(raw, &[8, 16, 24, 28, 32, 36, 40, 44, 48]),
        // ID_AA64DFR0_EL1: the debug architecture version only.
        (5, 0) => raw & 0xf,
        // Instruction sets and memory model: as the CPU has them.
        (6, 0..=2) | (7, 0..=2) => raw,
        _ => 0,
    }
}

/// One access to a control page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlAccess {
    /// A store to register slot `slot` from general register `from`.
    SetRegister {
        /// The channel register (x0..x17).
        slot: usize,
        /// The host's source register (31 = xzr).
        from: usize,
    },
    /// A load of register slot `slot` into general register `to`.
    GetRegister {
        /// The channel register (x0..x17).
        slot: usize,
        /// The host's destination register (31 = xzr).
        to: usize,
    },
    /// A store to the doorbell: make the call.
    Doorbell,
    /// A store to the call doorbell: make the call held in the channel's
    /// bound page (host ABI 0.6).
    Call,
    /// A store to the bind register from general register `from` (31 =
    /// xzr): bind that page to the channel, or unbind (0).
    Bind {
        /// The host's source register (31 = xzr).
        from: usize,
    },
}

impl ControlAccess {
    /// Decodes an access at `offset` in a channel page; `None` for anything
    /// the protocol does not allow (no syndrome, not 64-bit, misaligned,
    /// another offset, a load from the doorbell).
    #[must_use]
    pub fn decode(offset: u64, iss: u64) -> Option<Self> {
        let access = MmioAccess::decode(iss)?;
        if access.size_log2 != 3 || !offset.is_multiple_of(8) {
            return None;
        }
        let slot = offset
            .checked_sub(control::REGISTERS)
            .map(|o| o / 8)
            .filter(|&i| i < control::REGISTER_COUNT)
            .and_then(|i| usize::try_from(i).ok());
        match (access.write, offset, slot) {
            (true, control::DOORBELL, _) => Some(ControlAccess::Doorbell),
            (true, control::CALL, _) => Some(ControlAccess::Call),
            (true, control::BIND, _) => Some(ControlAccess::Bind { from: access.register }),
            (true, _, Some(slot)) => Some(ControlAccess::SetRegister { slot, from: access.register }),
            (false, _, Some(slot)) => Some(ControlAccess::GetRegister { slot, to: access.register }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ISS of a data abort with a valid syndrome.
    fn iss(write: bool, register: u64, size_log2: u64, sign_extend: bool, sixty_four: bool) -> u64 {
        ISV | (size_log2 << 22)
            | if sign_extend { 1 << 21 } else { 0 }
            | (register << 16)
            | if sixty_four { 1 << 15 } else { 0 }
            | if write { 1 << 6 } else { 0 }
    }

    #[test]
    fn sgi_targets() {
        // Linux's IPI 3 to vCPUs 1 and 2 (Aff1..3 = 0).
        let t = SgiTargets::decode((3 << 24) | 0b110);
        assert_eq!(t.intid, 3);
        assert!(!t.includes(0, 0) && t.includes(1, 0) && t.includes(2, 0) && !t.includes(3, 0));
        // Another cluster (Aff1 = 1) or range selector names no vCPU.
        assert!(!SgiTargets::decode((1 << 16) | 0b11).includes(0, 5));
        assert!(!SgiTargets::decode((1 << 44) | 0b11).includes(0, 5));
        assert!(!SgiTargets::decode((1 << 32) | 0b11).includes(1, 5));
        assert!(!SgiTargets::decode((1 << 48) | 0b11).includes(1, 5));
        // IRM: everyone but the sender, whatever the list says.
        let t = SgiTargets::decode((1 << 40) | (15 << 24));
        assert_eq!(t.intid, 15);
        assert!(t.includes(0, 1) && !t.includes(1, 1) && t.includes(7, 1));
    }

    #[test]
    fn mmio_widths_and_sign_extension() {
        let ldrb = MmioAccess::decode(iss(false, 3, 0, false, false)).unwrap();
        assert_eq!((ldrb.register, ldrb.bits()), (3, 8));
        assert_eq!(ldrb.load_value(0x1234_5680), 0x80);
        let ldrsb_x = MmioAccess::decode(iss(false, 3, 0, true, true)).unwrap();
        assert_eq!(ldrsb_x.load_value(0x80), 0xffff_ffff_ffff_ff80);
        let ldrsh_w = MmioAccess::decode(iss(false, 3, 1, true, false)).unwrap();
        assert_eq!(ldrsh_w.load_value(0x8001), 0xffff_8001);
        let ldr_x = MmioAccess::decode(iss(false, 3, 3, true, true)).unwrap();
        assert_eq!(ldr_x.load_value(u64::MAX), u64::MAX);
        let str_w = MmioAccess::decode(iss(true, 7, 2, false, false)).unwrap();
        assert!(str_w.write);
        assert_eq!(str_w.store_value(0xdead_beef_0000_0041), 0x41);
        assert_eq!(MmioAccess::decode(0), None, "no syndrome, no emulation");
    }

    #[test]
    fn id_registers_hide_what_guests_do_not_get() {
        let all = u64::MAX;
        let pfr0 = sanitise_id_register(4, 0, all);
        assert_eq!(pfr0 & 0xff, 0x11, "EL0 and EL1 AArch64 only");
        for shift in [8, 12, 32, 44] {
            assert_eq!((pfr0 >> shift) & 0xf, 0, "field at {shift}");
        }
        assert_eq!((pfr0 >> 16) & 0xff, 0xff, "FP and AdvSIMD stay");
        assert_eq!((sanitise_id_register(4, 1, all) >> 24) & 0xf, 0, "no SME");
        assert_eq!((sanitise_id_register(4, 1, all) >> 44) & 0xf, 0, "no GCS");
        assert_eq!(sanitise_id_register(7, 3, all), 0, "no TCR2, S1PIE, S1POE");
        assert_eq!(sanitise_id_register(5, 0, all), 0xf, "no PMU, SPE or trace");
        assert_eq!(sanitise_id_register(6, 1, 0x1234), 0x1234);
        assert_eq!(sanitise_id_register(3, 0, all), 0, "AArch32 registers read as zero");
        let access = SysregAccess::decode((3 << 20) | (4 << 1) | (5 << 5) | 1);
        assert_eq!(access.id_register(), Some((4, 0)));
        assert_eq!(access.register, 5);
        let write = SysregAccess::decode((3 << 20) | (4 << 1));
        assert_eq!(write.id_register(), None, "writes are not ID reads");
    }

    #[test]
    fn control_page_protocol() {
        let store = |reg| iss(true, reg, 3, false, true);
        let load = |reg| iss(false, reg, 3, false, true);
        assert_eq!(ControlAccess::decode(0, store(4)), Some(ControlAccess::SetRegister { slot: 0, from: 4 }));
        assert_eq!(ControlAccess::decode(17 * 8, load(9)), Some(ControlAccess::GetRegister { slot: 17, to: 9 }));
        assert_eq!(ControlAccess::decode(control::DOORBELL, store(0)), Some(ControlAccess::Doorbell));
        assert_eq!(ControlAccess::decode(control::CALL, store(31)), Some(ControlAccess::Call));
        assert_eq!(ControlAccess::decode(control::BIND, store(7)), Some(ControlAccess::Bind { from: 7 }));
        for (offset, syndrome) in [
            (control::CALL, load(1)),            // the call doorbell is write-only
            (control::BIND, load(1)),            // so is the bind register
            (control::CALL, iss(true, 1, 2, false, false)), // 32-bit
            (control::DOORBELL + 8, store(1)),   // between the doorbells
            (18 * 8, store(1)),                  // past x17
            (control::DOORBELL, load(1)),        // doorbell is write-only
            (4, store(1)),                       // misaligned
            (0, iss(true, 1, 2, false, false)),  // 32-bit
            (0x200, store(1)),                   // nothing there
            (0, 0),                              // no syndrome (e.g. LDP)
        ] {
            assert_eq!(ControlAccess::decode(offset, syndrome), None, "{offset:#x} {syndrome:#x}");
        }
    }

    #[test]
    fn guest_vectors_are_classified() {
        assert_eq!(GuestVector::of(8), GuestVector::Sync);
        assert_eq!(GuestVector::of(12), GuestVector::Sync);
        for k in [9, 10, 13, 14] {
            assert_eq!(GuestVector::of(k), GuestVector::Interrupt, "{k}");
        }
        // An SError is the guest's, not an interrupt for the host.
        assert_eq!(GuestVector::of(11), GuestVector::SError);
        assert_eq!(GuestVector::of(15), GuestVector::SError);
        for k in [0, 4, 7, 16, u64::MAX] {
            assert_eq!(GuestVector::of(k), GuestVector::Unexpected, "{k}");
        }
        assert_eq!(virtual_serror_syndrome(true), Some(1 << 24));
        assert_eq!(virtual_serror_syndrome(false), None);
    }

    #[test]
    fn debug_and_trace_registers_are_op0_2() {
        // ISS of MSR/MRS: op0 21:20, op2 19:17, op1 16:14, CRn 13:10,
        // Rt 9:5, CRm 4:1, direction 0.
        let sysreg = |op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, read: bool| {
            SysregAccess::decode((op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (3 << 5) | (crm << 1) | u64::from(read))
        };
        // MDSCR_EL1, OSLAR_EL1, DBGBCR0_EL1, TRCPRGCTLR.
        for (op1, crn, crm, op2) in [(0, 0, 2, 2), (0, 1, 0, 4), (0, 0, 0, 5), (1, 0, 1, 0)] {
            assert!(sysreg(2, op1, crn, crm, op2, false).is_debug_or_trace());
        }
        assert!(sysreg(3, 0, 1, 2, 1, true).is_debug_or_trace(), "TRFCR_EL1");
        // PMCR_EL0, ID_AA64DFR0_EL1 and CPACR_EL1 are not.
        assert!(!sysreg(3, 0, 1, 0, 2, false).is_debug_or_trace());
        assert!(!sysreg(3, 3, 9, 12, 0, true).is_debug_or_trace());
        assert!(!sysreg(3, 0, 0, 5, 0, true).is_debug_or_trace());
    }
}
