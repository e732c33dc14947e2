//! What a CPU's ID registers mean for Rampart: whether it can run at all,
//! the stage-2 geometry (IPA size, first lookup level) every stage 2 uses,
//! and the EL2 register values the host runs with (debug, PMU, trace,
//! activity monitors, fine-grained traps, `HCRX_EL2`).
//!
//! Pure functions of the raw ID register values, so every CPU model and
//! every combination of features is tested on the build machine; the
//! hypervisor only reads the registers and writes the results.

/// The raw ID registers Rampart looks at, as read on the boot CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRegs {
    /// `ID_AA64PFR0_EL1`
    pub pfr0: u64,
    /// `ID_AA64PFR1_EL1`
    pub pfr1: u64,
    /// `ID_AA64DFR0_EL1`
    pub dfr0: u64,
    /// `ID_AA64MMFR0_EL1`
    pub mmfr0: u64,
    /// `ID_AA64MMFR1_EL1`
    pub mmfr1: u64,
    /// `ID_AA64MMFR3_EL1` (reads as zero before Armv8.9)
    pub mmfr3: u64,
    /// `ID_AA64ISAR1_EL1`
    pub isar1: u64,
    /// `ID_AA64ISAR2_EL1`
    pub isar2: u64,
}

/// The 4-bit field of `reg` at `shift`.
#[must_use]
pub const fn field(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xf
}

/// `ID_AA64DFR0_EL1.PMUVer` values.
pub mod pmu {
    /// No PMU.
    pub const NONE: u64 = 0;
    /// PMUv3.
    pub const V3: u64 = 1;
    /// FEAT_PMUv3p1: `MDCR_EL2.HPMD`.
    pub const V3P1: u64 = 4;
    /// FEAT_PMUv3p5: `MDCR_EL2.HCCD`.
    pub const V3P5: u64 = 6;
    /// An IMPLEMENTATION DEFINED PMU, not PMUv3.
    pub const IMP_DEF: u64 = 0xf;
}

/// The CPU features that change how EL2 is configured, decoded once from
/// the ID registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one flag per architectural feature"
)]
pub struct CpuFeatures {
    /// `ID_AA64MMFR0_EL1.PARange`, as read.
    pub pa_range: u64,
    /// `ID_AA64DFR0_EL1.PMUVer`.
    pub pmu_ver: u64,
    /// PMUv3 of any revision: `PMCR_EL0` and friends exist.
    pub pmuv3: bool,
    /// FEAT_PMUv3p1: `MDCR_EL2.HPMD` stops event counting at EL2.
    pub pmuv3p1: bool,
    /// FEAT_PMUv3p5: `MDCR_EL2.HCCD` stops the cycle counter at EL2.
    pub pmuv3p5: bool,
    /// FEAT_HPMN0: `MDCR_EL2.HPMN` may be 0 (no event counter for EL1).
    pub hpmn0: bool,
    /// FEAT_TRF: `TRFCR_EL1`/`TRFCR_EL2` and `MDCR_EL2.TTRF`.
    pub trace_filter: bool,
    /// FEAT_TRBE: a trace buffer (`MDCR_EL2.E2TB`).
    pub trace_buffer: bool,
    /// FEAT_SPE version (`PMSVer`), 0 without.
    pub spe_ver: u64,
    /// FEAT_BRBE: branch record buffer.
    pub brbe: bool,
    /// FEAT_AMUv1: activity monitors (`CPTR_EL2.TAM`).
    pub amu: bool,
    /// FEAT_FGT: fine-grained trap registers.
    pub fgt: bool,
    /// FEAT_HCX: `HCRX_EL2`.
    pub hcx: bool,
    /// FEAT_MOPS: memcpy/memset instructions (`HCRX_EL2.MSCEn`).
    pub mops: bool,
    /// FEAT_SME.
    pub sme: bool,
    /// FEAT_LS64_ACCDATA (`HCRX_EL2.EnAS0`, `HFGxTR_EL2.nACCDATA_EL1`).
    pub ls64_accdata: bool,
    /// FEAT_LS64 (`HCRX_EL2.EnALS`).
    pub ls64: bool,
    /// FEAT_LS64_V (`HCRX_EL2.EnASR`).
    pub ls64_v: bool,
    /// FEAT_GCS.
    pub gcs: bool,
    /// FEAT_THE (`RCWMASK_EL1`).
    pub the: bool,
    /// FEAT_TCR2 (`HCRX_EL2.TCR2En`).
    pub tcr2: bool,
    /// FEAT_SCTLR2 (`HCRX_EL2.SCTLR2En`).
    pub sctlr2: bool,
    /// FEAT_S1PIE (`PIR_EL1`, `PIRE0_EL1`).
    pub s1pie: bool,
    /// FEAT_S1POE (`POR_EL1`, `POR_EL0`).
    pub s1poe: bool,
    /// FEAT_S2POE (`S2POR_EL1`).
    pub s2poe: bool,
    /// FEAT_AIE (`MAIR2_EL1`, `AMAIR2_EL1`).
    pub aie: bool,
}

impl CpuFeatures {
    /// Decodes the ID registers.
    #[must_use]
    pub fn decode(id: &IdRegs) -> Self {
        let pmu_ver = field(id.dfr0, 8);
        let pmuv3 = pmu_ver != pmu::NONE && pmu_ver != pmu::IMP_DEF;
        CpuFeatures {
            pa_range: field(id.mmfr0, 0),
            pmu_ver,
            pmuv3,
            pmuv3p1: pmuv3 && pmu_ver >= pmu::V3P1,
            pmuv3p5: pmuv3 && pmu_ver >= pmu::V3P5,
            hpmn0: field(id.dfr0, 60) >= 1,
            trace_filter: field(id.dfr0, 40) >= 1,
            trace_buffer: field(id.dfr0, 44) >= 1,
            spe_ver: field(id.dfr0, 32),
            brbe: field(id.dfr0, 52) >= 1,
            amu: field(id.pfr0, 44) >= 1,
            fgt: field(id.mmfr0, 56) >= 1,
            hcx: field(id.mmfr1, 40) >= 1,
            mops: field(id.isar2, 16) >= 1,
            sme: field(id.pfr1, 24) >= 1,
            ls64: field(id.isar1, 60) >= 1,
            ls64_v: field(id.isar1, 60) >= 2,
            ls64_accdata: field(id.isar1, 60) >= 3,
            gcs: field(id.pfr1, 44) >= 1,
            the: field(id.pfr1, 48) >= 1,
            tcr2: field(id.mmfr3, 0) >= 1,
            sctlr2: field(id.mmfr3, 4) >= 1,
            s1pie: field(id.mmfr3, 8) >= 1,
            s1poe: field(id.mmfr3, 16) >= 1,
            s2poe: field(id.mmfr3, 20) >= 1,
            aie: field(id.mmfr3, 24) >= 1,
        }
    }
}

/// Why Rampart cannot run on a CPU: one line for the boot log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// No 4 KiB translation granule at stage 1 (EL2's own tables).
    NoGranule4kStage1,
    /// No 4 KiB translation granule at stage 2 (the host's and VMs').
    NoGranule4kStage2,
    /// EL1 cannot run AArch64 (`ID_AA64PFR0_EL1.EL1` is 0).
    NoAArch64El1,
}

impl core::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Unsupported::NoGranule4kStage1 => {
                "unsupported CPU: no 4 KiB translation granule (ID_AA64MMFR0_EL1.TGran4 = 0xf); Rampart's tables use 4 KiB pages"
            }
            Unsupported::NoGranule4kStage2 => {
                "unsupported CPU: no 4 KiB translation granule at stage 2 (ID_AA64MMFR0_EL1.TGran4_2); Rampart's stage 2 uses 4 KiB pages"
            }
            Unsupported::NoAArch64El1 => "unsupported CPU: EL1 cannot run AArch64 (ID_AA64PFR0_EL1.EL1 = 0)",
        })
    }
}

/// Checks what Rampart needs of every CPU beyond having EL2 (which the
/// entry code checks): AArch64 at EL1 and the 4 KiB granule at both stages.
///
/// # Errors
///
/// The first missing feature.
pub fn check_supported(id: &IdRegs) -> Result<(), Unsupported> {
    if field(id.pfr0, 4) == 0 {
        return Err(Unsupported::NoAArch64El1);
    }
    let tgran4 = field(id.mmfr0, 28);
    // TGran4 is signed: 0 = 4 KiB, 1 = 4 KiB with 52-bit output, 0xf = none.
    if tgran4 == 0xf {
        return Err(Unsupported::NoGranule4kStage1);
    }
    // TGran4_2: 0 = as TGran4, 1 = not at stage 2, 2 = supported, 3 = 52-bit.
    if field(id.mmfr0, 40) == 1 {
        return Err(Unsupported::NoGranule4kStage2);
    }
    Ok(())
}

/// Physical address bits for a `PARange` value (values above 52 bits,
/// reserved today, count as 52).
#[must_use]
pub const fn pa_bits(pa_range: u64) -> u32 {
    match pa_range {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// The largest `PARange` Rampart programs into `TCR_EL2.PS`/`VTCR_EL2.PS`:
/// 48 bits (52-bit output addresses need FEAT_LPA/LPA2 descriptors, which
/// Rampart does not use).
pub const PS_MAX: u64 = 5;

/// The geometry every stage-2 table shares (one `VTCR_EL2` for the host
/// and every VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Geometry {
    /// Bits of IPA translated (`64 - VTCR_EL2.T0SZ`).
    pub ipa_bits: u32,
    /// Level of the root table: 0 or 1.
    pub root_level: usize,
    /// `VTCR_EL2.PS` (and `TCR_EL2.PS`).
    pub ps: u64,
}

impl Stage2Geometry {
    /// Chooses the IPA size and root level for a CPU's `PARange`.
    ///
    /// With the 4 KiB granule a stage-2 walk may start at level 0 only
    /// when the CPU implements at least 44 physical address bits
    /// (`VTCR_EL2.SL0 = 0b10` is reserved below that, and a walk with a
    /// reserved SL0 faults at level 0). Below 44 bits the walk starts at
    /// level 1, where one 4 KiB table translates 39 bits; 40- and 42-bit
    /// IPAs would need 2 or 8 concatenated level-1 tables, which
    /// `aarch64-paging` cannot build. So a 40- or 42-bit CPU gets a 39-bit
    /// IPA (512 GiB): the host's identity map covers every RAM bank and
    /// device below 512 GiB, and boot names whatever lies above and leaves
    /// it unmapped. From 44 bits up the IPA is the PA size (at most 48),
    /// with a level-0 root.
    #[must_use]
    pub fn for_pa_range(pa_range: u64) -> Self {
        let ps = pa_range.min(PS_MAX);
        let pa = pa_bits(ps);
        if pa >= 44 {
            Stage2Geometry {
                ipa_bits: pa,
                root_level: 0,
                ps,
            }
        } else {
            Stage2Geometry {
                ipa_bits: pa.min(39),
                root_level: 1,
                ps,
            }
        }
    }

    /// One past the highest IPA.
    #[must_use]
    pub const fn ipa_limit(&self) -> u64 {
        1 << self.ipa_bits
    }

    /// `VTCR_EL2` for this geometry: 4 KiB granule, inner-shareable
    /// write-back walks, 8-bit VMIDs.
    #[must_use]
    pub fn vtcr(&self) -> u64 {
        const TG0_4K: u64 = 0 << 14;
        const SH0_INNER: u64 = 3 << 12;
        const ORGN0_WB: u64 = 1 << 10;
        const IRGN0_WB: u64 = 1 << 8;
        const RES1: u64 = 1 << 31;
        let t0sz = u64::from(64 - self.ipa_bits);
        // SL0 with the 4 KiB granule: 0b10 = level 0, 0b01 = level 1.
        let sl0: u64 = if self.root_level == 0 { 0b10 } else { 0b01 };
        t0sz | (sl0 << 6) | IRGN0_WB | ORGN0_WB | SH0_INNER | TG0_4K | (self.ps << 16) | RES1
    }
}

/// `MDCR_EL2` bits.
pub mod mdcr {
    /// Event counters `[0, HPMN)` belong to EL1/EL0.
    pub const HPMN_MASK: u64 = 0x1f;
    /// Trap `PMCR_EL0` accesses.
    pub const TPMCR: u64 = 1 << 5;
    /// Trap every PMU register access.
    pub const TPM: u64 = 1 << 6;
    /// Route debug exceptions to EL2.
    pub const TDE: u64 = 1 << 8;
    /// Trap debug register accesses.
    pub const TDA: u64 = 1 << 9;
    /// Trap OS-lock/OS-related debug register accesses.
    pub const TDOSA: u64 = 1 << 10;
    /// Trap debug ROM accesses.
    pub const TDRA: u64 = 1 << 11;
    /// Trap SPE register accesses.
    pub const TPMS: u64 = 1 << 14;
    /// No event counting at EL2 (FEAT_PMUv3p1).
    pub const HPMD: u64 = 1 << 17;
    /// Trap `TRFCR_EL1` accesses (FEAT_TRF).
    pub const TTRF: u64 = 1 << 19;
    /// No cycle counting at EL2 (FEAT_PMUv3p5).
    pub const HCCD: u64 = 1 << 23;
}

/// `MDCR_EL2` while the host runs.
///
/// The host owns the PMU, the debug registers and its own trace filter
/// (`HPMN` = every counter `PMCR_EL0.N` reports, nothing trapped), but the
/// PMU stops counting at EL2: `HPMD` stops event counters there (PMUv3p1)
/// and `HCCD` the cycle counter (PMUv3p5). The statistical profiling and
/// trace buffers stay owned by EL2 (`E2PB`/`E2TB` = 0: their EL1 registers
/// trap and the host sees them UNDEFINED), so neither can sample EL2 or a
/// guest. Debug exceptions go to EL1 (`TDE` = 0): they are never taken from
/// EL2, which is above the debug target.
#[must_use]
pub fn host_mdcr(f: &CpuFeatures, pmcr_n: u64) -> u64 {
    let mut value = 0;
    if f.pmuv3 {
        value |= pmcr_n & mdcr::HPMN_MASK;
        if f.pmuv3p1 {
            value |= mdcr::HPMD;
        }
        if f.pmuv3p5 {
            value |= mdcr::HCCD;
        }
    }
    if f.spe_ver != 0 {
        value |= mdcr::TPMS;
    }
    value
}

/// `MDCR_EL2` while a guest runs (for the world switch): every PMU,
/// debug, OS-lock, debug-ROM, trace-filter and profiling register traps
/// (`TPM`, `TPMCR`, `TDA`, `TDOSA`, `TDRA`, `TTRF`, `TPMS`), debug
/// exceptions stay with the guest (`TDE` = 0: a Linux guest's `BRK`, its
/// `BUG()` and `WARN()`, reaches its own EL1 vector), and EL2 stays
/// invisible to the PMU
/// (`HPMD`, `HCCD`) -- the hypervisor works at EL2 on the guest's behalf
/// while this value is live, so it needs them as much as the host's value
/// does.
///
/// `HPMN` = 0 hands every event counter to EL2, where `HPME` = 0 stops
/// them, so the host's counters cannot count the guest; that value is
/// UNPREDICTABLE without FEAT_HPMN0, so there `HPMN` stays `PMCR_EL0.N`
/// and the world switch must stop the host's counters itself
/// (`PMCNTENCLR_EL0`) and restart them on the way out. The cycle counter
/// is not partitioned by `HPMN` either way: stopping it during a guest is
/// also the world switch's job.
#[must_use]
pub fn guest_mdcr(f: &CpuFeatures, pmcr_n: u64) -> u64 {
    let mut value = mdcr::TPM | mdcr::TPMCR | mdcr::TDA | mdcr::TDOSA | mdcr::TDRA;
    if f.pmuv3 {
        if !f.hpmn0 {
            value |= pmcr_n & mdcr::HPMN_MASK;
        }
        if f.pmuv3p1 {
            value |= mdcr::HPMD;
        }
        if f.pmuv3p5 {
            value |= mdcr::HCCD;
        }
    }
    if f.trace_filter {
        value |= mdcr::TTRF;
    }
    if f.spe_ver != 0 {
        value |= mdcr::TPMS;
    }
    value
}

/// `CPTR_EL2` bits (the nVHE layout).
pub mod cptr {
    /// RES1 bits 0-7, 9 and 13.
    pub const RES1: u64 = 0xff | (1 << 9) | (1 << 13);
    /// Trap SME (RES1 without FEAT_SME).
    pub const TSM: u64 = 1 << 12;
    /// Trap activity monitor accesses (FEAT_AMUv1).
    pub const TAM: u64 = 1 << 30;
}

/// `CPTR_EL2` while the host runs: FP/SIMD, SVE and SME untrapped; the
/// activity monitors trapped, because they count at every exception level
/// without a filter and would show the host what EL2 and guests do.
#[must_use]
pub fn host_cptr(f: &CpuFeatures) -> u64 {
    let mut value = cptr::RES1;
    if !f.sme {
        value |= cptr::TSM;
    }
    if f.amu {
        value |= cptr::TAM;
    }
    value
}

/// The fine-grained trap registers' values (FEAT_FGT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FineGrainedTraps {
    /// `HFGRTR_EL2`
    pub hfgrtr: u64,
    /// `HFGWTR_EL2`
    pub hfgwtr: u64,
    /// `HFGITR_EL2`
    pub hfgitr: u64,
    /// `HDFGRTR_EL2`
    pub hdfgrtr: u64,
    /// `HDFGWTR_EL2`
    pub hdfgwtr: u64,
}

/// Bits of the fine-grained trap registers whose name starts with `n`:
/// they trap when 0, so leaving them 0 takes a feature from the host.
pub mod fgt {
    /// `HFGxTR_EL2.nAMAIR2_EL1` (FEAT_AIE)
    pub const N_AMAIR2_EL1: u64 = 1 << 63;
    /// `HFGxTR_EL2.nMAIR2_EL1` (FEAT_AIE)
    pub const N_MAIR2_EL1: u64 = 1 << 62;
    /// `HFGxTR_EL2.nS2POR_EL1` (FEAT_S2POE)
    pub const N_S2POR_EL1: u64 = 1 << 61;
    /// `HFGxTR_EL2.nPOR_EL1` (FEAT_S1POE)
    pub const N_POR_EL1: u64 = 1 << 60;
    /// `HFGxTR_EL2.nPOR_EL0` (FEAT_S1POE)
    pub const N_POR_EL0: u64 = 1 << 59;
    /// `HFGxTR_EL2.nPIR_EL1` (FEAT_S1PIE)
    pub const N_PIR_EL1: u64 = 1 << 58;
    /// `HFGxTR_EL2.nPIRE0_EL1` (FEAT_S1PIE)
    pub const N_PIRE0_EL1: u64 = 1 << 57;
    /// `HFGxTR_EL2.nRCWMASK_EL1` (FEAT_THE)
    pub const N_RCWMASK_EL1: u64 = 1 << 56;
    /// `HFGxTR_EL2.nTPIDR2_EL0` (FEAT_SME)
    pub const N_TPIDR2_EL0: u64 = 1 << 55;
    /// `HFGxTR_EL2.nSMPRI_EL1` (FEAT_SME)
    pub const N_SMPRI_EL1: u64 = 1 << 54;
    /// `HFGxTR_EL2.nGCS_EL1` (FEAT_GCS)
    pub const N_GCS_EL1: u64 = 1 << 53;
    /// `HFGxTR_EL2.nGCS_EL0` (FEAT_GCS)
    pub const N_GCS_EL0: u64 = 1 << 52;
    /// `HFGxTR_EL2.nACCDATA_EL1` (FEAT_LS64_ACCDATA)
    pub const N_ACCDATA_EL1: u64 = 1 << 50;
    /// `HFGITR_EL2.nGCSEPP` (FEAT_GCS)
    pub const N_GCSEPP: u64 = 1 << 59;
    /// `HFGITR_EL2.nGCSSTR_EL1` (FEAT_GCS)
    pub const N_GCSSTR_EL1: u64 = 1 << 58;
    /// `HFGITR_EL2.nGCSPUSHM_EL1` (FEAT_GCS)
    pub const N_GCSPUSHM_EL1: u64 = 1 << 57;
    /// `HFGITR_EL2.nBRBIALL` (FEAT_BRBE)
    pub const N_BRBIALL: u64 = 1 << 56;
    /// `HFGITR_EL2.nBRBINJ` (FEAT_BRBE)
    pub const N_BRBINJ: u64 = 1 << 55;
    /// `HDFGxTR_EL2.nPMSNEVFR_EL1` (FEAT_SPEv1p2)
    pub const N_PMSNEVFR_EL1: u64 = 1 << 62;
    /// `HDFGxTR_EL2.nBRBDATA` (FEAT_BRBE)
    pub const N_BRBDATA: u64 = 1 << 61;
    /// `HDFGxTR_EL2.nBRBCTL` (FEAT_BRBE)
    pub const N_BRBCTL: u64 = 1 << 60;
    /// `HDFGRTR_EL2.nBRBIDR` (FEAT_BRBE; read only)
    pub const N_BRBIDR: u64 = 1 << 59;
}

/// The fine-grained traps while the host runs: nothing trapped. Every
/// positive bit is 0, and every `n` bit of a feature the CPU has is 1 (an
/// `n` bit of an absent feature is RES0 and stays 0). The host's SPE and
/// BRBE registers other than these are governed by `MDCR_EL2`.
#[must_use]
pub fn host_fgt(f: &CpuFeatures) -> FineGrainedTraps {
    let mut rw = 0;
    let mut bit = |present: bool, bits: u64| {
        if present {
            rw |= bits;
        }
    };
    bit(f.aie, fgt::N_AMAIR2_EL1 | fgt::N_MAIR2_EL1);
    bit(f.s2poe, fgt::N_S2POR_EL1);
    bit(f.s1poe, fgt::N_POR_EL1 | fgt::N_POR_EL0);
    bit(f.s1pie, fgt::N_PIR_EL1 | fgt::N_PIRE0_EL1);
    bit(f.the, fgt::N_RCWMASK_EL1);
    bit(f.sme, fgt::N_TPIDR2_EL0 | fgt::N_SMPRI_EL1);
    bit(f.gcs, fgt::N_GCS_EL1 | fgt::N_GCS_EL0);
    bit(f.ls64_accdata, fgt::N_ACCDATA_EL1);
    let mut hfgitr = 0;
    if f.gcs {
        hfgitr |= fgt::N_GCSEPP | fgt::N_GCSSTR_EL1 | fgt::N_GCSPUSHM_EL1;
    }
    if f.brbe {
        hfgitr |= fgt::N_BRBIALL | fgt::N_BRBINJ;
    }
    let mut hdfgwtr = 0;
    if f.spe_ver >= 3 {
        hdfgwtr |= fgt::N_PMSNEVFR_EL1;
    }
    if f.brbe {
        hdfgwtr |= fgt::N_BRBDATA | fgt::N_BRBCTL;
    }
    let hdfgrtr = hdfgwtr | if f.brbe { fgt::N_BRBIDR } else { 0 };
    FineGrainedTraps {
        hfgrtr: rw,
        hfgwtr: rw,
        hfgitr,
        hdfgrtr,
        hdfgwtr,
    }
}

/// `HCRX_EL2` bits.
pub mod hcrx {
    /// `ST64BV0` at EL1/EL0 (FEAT_LS64_ACCDATA).
    pub const EN_AS0: u64 = 1 << 0;
    /// `LD64B`/`ST64B` at EL1/EL0 (FEAT_LS64).
    pub const EN_ALS: u64 = 1 << 1;
    /// `ST64BV` at EL1/EL0 (FEAT_LS64_V).
    pub const EN_ASR: u64 = 1 << 2;
    /// MOPS exceptions go to EL2 (0: to EL1, where the host handles them).
    pub const MCE2: u64 = 1 << 10;
    /// MOPS instructions at EL1/EL0 (FEAT_MOPS; UNDEFINED when 0).
    pub const MSC_EN: u64 = 1 << 11;
    /// `TCR2_EL1` at EL1 (FEAT_TCR2).
    pub const TCR2_EN: u64 = 1 << 14;
    /// `SCTLR2_EL1` at EL1 (FEAT_SCTLR2).
    pub const SCTLR2_EN: u64 = 1 << 15;
    /// Guarded control stacks at EL1/EL0 (FEAT_GCS).
    pub const GCS_EN: u64 = 1 << 22;
}

/// `HCRX_EL2` while the host runs (FEAT_HCX): each feature the CPU has
/// that this register gates is enabled for the host, nothing is trapped
/// (a 0 enable bit makes the feature UNDEFINED at EL1/EL0: MOPS needs
/// `MSCEn`).
#[must_use]
pub fn host_hcrx(f: &CpuFeatures) -> u64 {
    let mut value = 0;
    for (present, bit) in [
        (f.ls64_accdata, hcrx::EN_AS0),
        (f.ls64, hcrx::EN_ALS),
        (f.ls64_v, hcrx::EN_ASR),
        (f.mops, hcrx::MSC_EN),
        (f.tcr2, hcrx::TCR2_EN),
        (f.sctlr2, hcrx::SCTLR2_EN),
        (f.gcs, hcrx::GCS_EN),
    ] {
        if present {
            value |= bit;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ID registers of the CPU models QEMU 7.2 emulates with EL2 (the
    /// fields that matter here), as QEMU's `target/arm/cpu64.c` sets them.
    fn mmfr0_with_pa(pa_range: u64) -> u64 {
        0x0000_0000_0000_1120 | pa_range
    }

    #[test]
    fn pa_ranges_of_every_qemu_model_get_a_valid_stage2() {
        // a53, a35, a76, a64fx: 40 bits; a57, a72: 44; neoverse-n1: 48;
        // max: 52.
        for (pa_range, ipa, level) in [(2, 39, 1), (4, 44, 0), (5, 48, 0), (6, 48, 0)] {
            let g = Stage2Geometry::for_pa_range(pa_range);
            assert_eq!(
                (g.ipa_bits, g.root_level),
                (ipa, level),
                "PARange {pa_range}"
            );
        }
    }

    #[test]
    fn level0_start_only_with_44_bits_or_more() {
        for pa_range in 0..=15 {
            let g = Stage2Geometry::for_pa_range(pa_range);
            // The rules of VTCR_EL2 with a 4 KiB granule, from the Arm ARM:
            // SL0 = 0b10 (level 0) needs PARange >= 44 bits; a level-0 walk
            // covers 40..=48 bits, a level-1 walk without concatenation at
            // most 39; the IPA never exceeds the PA size.
            let pa = pa_bits(pa_range.min(PS_MAX));
            assert!(
                g.ipa_bits <= pa,
                "PARange {pa_range}: IPA {} > PA {pa}",
                g.ipa_bits
            );
            if g.root_level == 0 {
                assert!(
                    pa >= 44 && (40..=48).contains(&g.ipa_bits),
                    "PARange {pa_range}"
                );
            } else {
                assert_eq!(g.root_level, 1);
                assert!(g.ipa_bits <= 39, "PARange {pa_range}");
                // Every RAM base QEMU virt uses (1 GiB) and all of its
                // low memory map fit.
                assert!(g.ipa_limit() >= 1 << 32);
            }
            assert!(g.ps <= PS_MAX);
        }
    }

    #[test]
    fn vtcr_fields() {
        let g = Stage2Geometry::for_pa_range(2);
        let v = g.vtcr();
        assert_eq!(v & 0x3f, 25, "T0SZ for a 39-bit IPA");
        assert_eq!((v >> 6) & 3, 1, "SL0 = level 1");
        assert_eq!((v >> 14) & 3, 0, "TG0 = 4 KiB");
        assert_eq!((v >> 16) & 7, 2, "PS = 40 bits");
        assert_eq!(v & (1 << 19), 0);
        let g = Stage2Geometry::for_pa_range(6);
        let v = g.vtcr();
        assert_eq!(v & 0x3f, 16, "T0SZ for a 48-bit IPA");
        assert_eq!((v >> 6) & 3, 2, "SL0 = level 0");
        assert_eq!((v >> 16) & 7, 5, "PS capped at 48 bits");
        assert_eq!(v & (1 << 19), 0, "8-bit VMIDs");
        assert_ne!(v & (1 << 31), 0, "RES1");
    }

    #[test]
    fn unsupported_cpus_are_named() {
        let good = IdRegs {
            pfr0: 0x11,
            mmfr0: mmfr0_with_pa(2),
            ..IdRegs::default()
        };
        assert_eq!(check_supported(&good), Ok(()));
        let no_el1 = IdRegs { pfr0: 0x01, ..good };
        assert_eq!(check_supported(&no_el1), Err(Unsupported::NoAArch64El1));
        let no_4k = IdRegs {
            mmfr0: good.mmfr0 | (0xf << 28),
            ..good
        };
        assert_eq!(check_supported(&no_4k), Err(Unsupported::NoGranule4kStage1));
        let no_4k_s2 = IdRegs {
            mmfr0: good.mmfr0 | (1 << 40),
            ..good
        };
        assert_eq!(
            check_supported(&no_4k_s2),
            Err(Unsupported::NoGranule4kStage2)
        );
        let explicit_s2 = IdRegs {
            mmfr0: good.mmfr0 | (2 << 40),
            ..good
        };
        assert_eq!(check_supported(&explicit_s2), Ok(()));
        for e in [
            Unsupported::NoAArch64El1,
            Unsupported::NoGranule4kStage1,
            Unsupported::NoGranule4kStage2,
        ] {
            let line = alloc::format!("{e}");
            assert!(line.starts_with("unsupported CPU: ") && !line.contains('\n'));
        }
    }

    fn dfr0(pmu_ver: u64) -> u64 {
        pmu_ver << 8
    }

    #[test]
    fn host_mdcr_hides_el2_from_the_pmu() {
        // No PMU (or an IMPLEMENTATION DEFINED one): nothing to program.
        for v in [pmu::NONE, pmu::IMP_DEF] {
            let f = CpuFeatures::decode(&IdRegs {
                dfr0: dfr0(v),
                ..IdRegs::default()
            });
            assert_eq!(host_mdcr(&f, 6), 0);
        }
        // PMUv3 without p1: the host gets every counter; nothing can stop
        // EL2 counting except trapping the PMU.
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3),
            ..IdRegs::default()
        });
        assert_eq!(host_mdcr(&f, 6), 6);
        // PMUv3p1: HPMD.
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3P1),
            ..IdRegs::default()
        });
        assert_eq!(host_mdcr(&f, 31), 31 | mdcr::HPMD);
        // PMUv3p5 and later: HPMD and HCCD.
        for v in [pmu::V3P5, 7, 8] {
            let f = CpuFeatures::decode(&IdRegs {
                dfr0: dfr0(v),
                ..IdRegs::default()
            });
            let m = host_mdcr(&f, 6);
            assert_eq!(m, 6 | mdcr::HPMD | mdcr::HCCD, "PMUVer {v}");
            assert_eq!(
                m & (mdcr::TPM | mdcr::TPMCR | mdcr::TDE | mdcr::TDA | mdcr::TTRF),
                0
            );
        }
        // HPMN never takes more than its field.
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3),
            ..IdRegs::default()
        });
        assert_eq!(host_mdcr(&f, 0xff) & !mdcr::HPMN_MASK, 0);
        // SPE: the host's profiling registers trap (EL2 owns the buffer).
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3P5) | (1 << 32),
            ..IdRegs::default()
        });
        assert_ne!(host_mdcr(&f, 6) & mdcr::TPMS, 0);
    }

    #[test]
    fn guest_mdcr_traps_everything_and_hides_el2() {
        let traps = mdcr::TPM | mdcr::TPMCR | mdcr::TDA | mdcr::TDOSA | mdcr::TDRA;
        // A guest's debug exceptions (BRK) are its own: never TDE.
        assert_eq!(guest_mdcr(&CpuFeatures::default(), 6) & mdcr::TDE, 0);
        // No PMU at all: the traps only.
        assert_eq!(guest_mdcr(&CpuFeatures::default(), 6), traps);
        // PMUv3p5 with FEAT_HPMN0: HPMN = 0, EL2 hidden.
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3P5) | (1 << 60),
            ..IdRegs::default()
        });
        assert_eq!(guest_mdcr(&f, 6), traps | mdcr::HPMD | mdcr::HCCD);
        // Without FEAT_HPMN0, HPMN = 0 is UNPREDICTABLE: it stays N.
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3P1),
            ..IdRegs::default()
        });
        assert_eq!(guest_mdcr(&f, 6), traps | 6 | mdcr::HPMD);
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3),
            ..IdRegs::default()
        });
        assert_eq!(guest_mdcr(&f, 6) & mdcr::HPMN_MASK, 6);
        // The trace filter and profiling registers trap when present.
        let f = CpuFeatures::decode(&IdRegs {
            dfr0: dfr0(pmu::V3) | (1 << 40) | (1 << 32),
            ..IdRegs::default()
        });
        assert_ne!(guest_mdcr(&f, 6) & mdcr::TTRF, 0);
        assert_ne!(guest_mdcr(&f, 6) & mdcr::TPMS, 0);
        assert_eq!(
            host_mdcr(&f, 6) & mdcr::TTRF,
            0,
            "the host keeps its trace filter"
        );
    }

    #[test]
    fn features_decode_their_fields() {
        let id = IdRegs {
            pfr0: 1 << 44,
            pfr1: (1 << 24) | (1 << 44) | (1 << 48),
            dfr0: (1 << 60) | (1 << 52) | (1 << 44) | (1 << 40) | (3 << 32) | (6 << 8),
            mmfr0: (1 << 56) | 5,
            mmfr1: 1 << 40,
            mmfr3: 0x0111_0111,
            isar1: 3 << 60,
            isar2: 1 << 16,
        };
        let f = CpuFeatures::decode(&id);
        assert!(f.amu && f.sme && f.gcs && f.the);
        assert!(f.hpmn0 && f.brbe && f.trace_buffer && f.trace_filter && f.pmuv3p5);
        assert_eq!(f.spe_ver, 3);
        assert!(f.fgt && f.hcx && f.mops && f.ls64 && f.ls64_v && f.ls64_accdata);
        assert!(f.tcr2 && f.sctlr2 && f.s1pie && f.s1poe && f.s2poe && f.aie);
        assert_eq!(f.pa_range, 5);
        assert_eq!(
            CpuFeatures::decode(&IdRegs::default()),
            CpuFeatures::default()
        );
    }

    #[test]
    fn host_cptr_traps_only_the_activity_monitors() {
        let plain = CpuFeatures::default();
        assert_eq!(host_cptr(&plain), cptr::RES1 | cptr::TSM);
        let amu = CpuFeatures {
            amu: true,
            sme: true,
            ..plain
        };
        assert_eq!(host_cptr(&amu), cptr::RES1 | cptr::TAM);
        // FP/SIMD (TFP, bit 10), SVE (TZ, bit 8 is RES1 in nVHE) and trace
        // (TTA, bit 20) stay with the host.
        assert_eq!(host_cptr(&amu) & ((1 << 10) | (1 << 20) | (1 << 31)), 0);
    }

    #[test]
    fn host_fgt_sets_the_n_bits_of_present_features_only() {
        let none = host_fgt(&CpuFeatures::default());
        assert_eq!(none, FineGrainedTraps::default());
        let all = CpuFeatures {
            aie: true,
            s2poe: true,
            s1poe: true,
            s1pie: true,
            the: true,
            sme: true,
            gcs: true,
            ls64_accdata: true,
            brbe: true,
            spe_ver: 3,
            ..CpuFeatures::default()
        };
        let t = host_fgt(&all);
        // Every n bit of HFGxTR_EL2 (63..=52 and 50) and nothing else.
        assert_eq!(t.hfgrtr, (0xfff << 52) | (1 << 50));
        assert_eq!(t.hfgwtr, t.hfgrtr);
        assert_eq!(t.hfgitr, 0x1f << 55);
        assert_eq!(t.hdfgrtr, 0xf << 59);
        assert_eq!(t.hdfgwtr, 0x7 << 60);
        // SME alone: only its two registers.
        let sme = host_fgt(&CpuFeatures {
            sme: true,
            ..CpuFeatures::default()
        });
        assert_eq!(sme.hfgrtr, fgt::N_TPIDR2_EL0 | fgt::N_SMPRI_EL1);
        assert_eq!((sme.hfgitr, sme.hdfgrtr, sme.hdfgwtr), (0, 0, 0));
        // SPE before v1p2 has no PMSNEVFR_EL1: its bit is RES0.
        let spe = host_fgt(&CpuFeatures {
            spe_ver: 2,
            ..CpuFeatures::default()
        });
        assert_eq!(spe.hdfgwtr, 0);
    }

    #[test]
    fn host_hcrx_enables_present_features() {
        assert_eq!(host_hcrx(&CpuFeatures::default()), 0);
        let mops = CpuFeatures {
            mops: true,
            ..CpuFeatures::default()
        };
        assert_eq!(host_hcrx(&mops), hcrx::MSC_EN);
        assert_eq!(
            host_hcrx(&mops) & hcrx::MCE2,
            0,
            "MOPS exceptions stay with the host"
        );
        let all = CpuFeatures {
            mops: true,
            ls64: true,
            ls64_v: true,
            ls64_accdata: true,
            tcr2: true,
            sctlr2: true,
            gcs: true,
            ..CpuFeatures::default()
        };
        assert_eq!(
            host_hcrx(&all),
            0b111 | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 22)
        );
    }
}
