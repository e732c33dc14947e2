//! Per-CPU state and the EL2 configuration every CPU runs with.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use spin::Once;

use rampart_platform::cpu::{self as el2, CpuFeatures, IdRegs, Stage2Geometry};
use rampart_platform::inject;

use crate::arch;
use crate::config::MAX_CPUS;

/// Power state of a CPU as Rampart tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Power {
    /// Off, or never started.
    Off = 0,
    /// CPU_ON accepted; the CPU has not reached the host yet.
    Pending = 1,
    /// Running the host.
    On = 2,
}

/// What Rampart keeps for each CPU.
pub struct PerCpu {
    power: AtomicU8,
    /// MPIDR affinity of this CPU (from the device tree).
    pub mpidr: AtomicU64,
    /// Where the host asked this CPU to start (CPU_ON or CPU_SUSPEND).
    pub host_entry: AtomicU64,
    /// The context id the host passed with it.
    pub host_context: AtomicU64,
    /// This CPU's own features, probed when it first enters EL2 (cores of
    /// a big.LITTLE system may differ; see [`features`]).
    features: Once<Features>,
}

impl PerCpu {
    const fn new() -> Self {
        PerCpu {
            power: AtomicU8::new(Power::Off as u8),
            mpidr: AtomicU64::new(u64::MAX),
            host_entry: AtomicU64::new(0),
            host_context: AtomicU64::new(0),
            features: Once::new(),
        }
    }

    /// Moves from `from` to `to` atomically; fails with the actual state.
    pub fn transition(&self, from: Power, to: Power) -> Result<(), Power> {
        self.power
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|actual| match actual {
                0 => Power::Off,
                1 => Power::Pending,
                _ => Power::On,
            })
    }

    /// Sets the state unconditionally (this CPU, about itself).
    pub fn set_power(&self, to: Power) {
        self.power.store(to as u8, Ordering::Release);
    }
}

/// Every CPU's state, indexed by Rampart's CPU number (the boot CPU is 0,
/// then the others in device-tree order): one per CPU the device tree
/// lists, in the carve-out's boot-sized part ([`init_cpus`]).
static CPUS: Once<&'static [PerCpu]> = Once::new();

/// What [`this`] answers before [`init_cpus`] (the boot CPU's early boot
/// and its power-off paths): a CPU that is on and has no host entry.
static EARLY: PerCpu = PerCpu::new();

/// Bytes of one CPU's [`PerCpu`], for sizing the carve-out at boot.
pub const PER_CPU_BYTES: u64 = core::mem::size_of::<PerCpu>() as u64;

/// Every CPU's state (empty before [`init_cpus`]).
pub fn cpus() -> &'static [PerCpu] {
    CPUS.get().copied().unwrap_or(&[])
}

/// Places the state of `count` CPUs at the start of `range` (boot, once;
/// at most [`MAX_CPUS`]). False if they do not fit.
///
/// # Safety
///
/// As [`crate::mm::boot_array`]: `range` is RAM nothing else uses.
pub unsafe fn init_cpus(range: rampart_platform::MemRange, count: usize) -> bool {
    if count > MAX_CPUS {
        return false;
    }
    // SAFETY: forwarded from the caller.
    let Some(all) = (unsafe { crate::mm::boot_array(range, count, PerCpu::new) }) else { return false };
    CPUS.call_once(|| all);
    true
}

/// This CPU's index.
pub fn current() -> usize {
    arch::tpidr_el2() as usize
}

/// This CPU's state.
pub fn this() -> &'static PerCpu {
    // TPIDR_EL2 is an index the entry code gave a stack slot, so one the
    // device tree lists: every such CPU has its state once boot is done.
    cpus().get(current()).unwrap_or(&EARLY)
}

/// The features of the CPU this runs on: its own ID registers (probed in
/// [`init_this_cpu`]), for values that depend on what this core
/// implements, such as the world switch's `MDCR_EL2` or which trap
/// registers exist. The translation settings stay the boot CPU's
/// (`BOOT.config.features`), shared by all.
#[allow(dead_code, reason = "for the world switch's per-CPU MDCR_EL2 and trace values")]
pub fn features() -> Features {
    match this().features.get() {
        Some(f) => *f,
        None => Features::probe(),
    }
}

/// `f` applied to this CPU's features, borrowed where they are recorded
/// (on hot paths: [`features`] copies the whole structure).
pub fn with_features<R>(f: impl FnOnce(&Features) -> R) -> R {
    match this().features.get() {
        Some(features) => f(features),
        None => f(&Features::probe()),
    }
}

/// CPU features that change how EL2 is configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// FEAT_SVE
    pub sve: bool,
    /// FEAT_SME
    pub sme: bool,
    /// GICv3 system-register interface
    pub gic_sysregs: bool,
    /// FEAT_FGT
    pub fgt: bool,
    /// FEAT_HCX
    pub hcx: bool,
    /// Pointer authentication (any algorithm)
    pub pauth: bool,
    /// FEAT_RNG: the `RNDR` register
    pub rng: bool,
    /// Physical address bits (capped at 48: see `rampart_platform::cpu`)
    pub pa_bits: u32,
    /// ID_AA64MMFR0_EL1.PARange, capped at 48 bits
    pub pa_range_field: u64,
    /// What changes an injected exception's PSTATE.
    pub inject: inject::Features,
    /// Debug, PMU, trace, activity-monitor and trap-register features
    /// (FEAT_PMUv3p1/p5, FEAT_HPMN0, FEAT_TRF, FEAT_TRBE, FEAT_SPE,
    /// FEAT_AMUv1, FEAT_MOPS, ...), for the host's and guests' EL2 values.
    pub cpu: CpuFeatures,
    /// The raw ID registers they were decoded from.
    pub id: IdRegs,
}

fn field(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xf
}

impl Features {
    /// Reads the ID registers of this CPU.
    pub fn probe() -> Self {
        let id = IdRegs {
            pfr0: arch::id_aa64pfr0_el1(),
            pfr1: arch::id_aa64pfr1_el1(),
            dfr0: arch::id_aa64dfr0_el1(),
            mmfr0: arch::id_aa64mmfr0_el1(),
            mmfr1: arch::id_aa64mmfr1_el1(),
            mmfr3: arch::id_aa64mmfr3_el1(),
            isar1: arch::id_aa64isar1_el1(),
            isar2: arch::id_aa64isar2_el1(),
        };
        let cpu = CpuFeatures::decode(&id);
        let pa_range_field = field(id.mmfr0, 0).min(rampart_platform::cpu::PS_MAX);
        Features {
            sve: field(id.pfr0, 32) != 0,
            gic_sysregs: field(id.pfr0, 24) != 0,
            sme: cpu.sme,
            fgt: cpu.fgt,
            hcx: cpu.hcx,
            pauth: [4, 8, 24, 28].iter().any(|&s| field(id.isar1, s) != 0)
                || [8, 12].iter().any(|&s| field(id.isar2, s) != 0),
            rng: (arch::id_aa64isar0_el1() >> 60) & 0xf != 0,
            pa_bits: rampart_platform::cpu::pa_bits(pa_range_field),
            pa_range_field,
            inject: inject::Features {
                pan: field(id.mmfr1, 20) != 0,
                ssbs: field(id.pfr1, 4) != 0,
                mte: field(id.pfr1, 8) >= 2,
            },
            cpu,
            id,
        }
    }
}

/// The EL2 register values every CPU installs, computed once at boot.
#[derive(Clone, Copy, Debug)]
pub struct El2Config {
    /// Features the values were computed for.
    pub features: Features,
    /// MAIR_EL2
    pub mair: u64,
    /// TCR_EL2
    pub tcr: u64,
    /// TTBR0_EL2: the EL2 stage-1 root.
    pub ttbr0: u64,
    /// VTCR_EL2
    pub vtcr: u64,
    /// VTTBR_EL2: the host stage-2 root, VMID 0.
    pub vttbr: u64,
    /// HCR_EL2 while the host runs.
    pub hcr: u64,
}

/// HCR_EL2 bits for the host.
pub mod hcr {
    /// Stage 2 on.
    pub const VM: u64 = 1 << 0;
    /// Set/way cache maintenance becomes clean+invalidate.
    pub const SWIO: u64 = 1 << 1;
    /// Broadcast TLB and cache maintenance to the inner shareable domain.
    pub const FB: u64 = 1 << 9;
    /// Barriers are inner shareable.
    pub const BSU_IS: u64 = 1 << 10;
    /// Trap SMC.
    pub const TSC: u64 = 1 << 19;
    /// EL1 is AArch64.
    pub const RW: u64 = 1 << 31;
    /// Pointer-authentication keys: no trap.
    pub const APK: u64 = 1 << 40;
    /// Pointer-authentication instructions: no trap.
    pub const API: u64 = 1 << 41;
    /// Forced write-back (FEAT_S2FWB): stage 2 alone decides that guest
    /// RAM is Normal write-back, whatever the guest's stage 1 (or its MMU
    /// being off) says. Guests only; the host's stage 2 keeps the classic
    /// combining (see [`s2fwb`]).
    pub const FWB: u64 = 1 << 46;
}

/// Whether guests run with `HCR_EL2.FWB` and their stage 2 uses the
/// FEAT_S2FWB encoding for RAM: decided once, from the boot CPU, because
/// every VM's stage 2 is shared by all CPUs.
static S2FWB: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// `ID_AA64MMFR2_EL1.FWB` of this CPU.
pub fn has_s2fwb() -> bool {
    (arch::id_aa64mmfr2_el1() >> 40) & 0xf != 0
}

/// Records whether the boot CPU has FEAT_S2FWB (boot only, before any VM).
pub fn init_s2fwb() {
    S2FWB.store(has_s2fwb(), core::sync::atomic::Ordering::Release);
}

/// Whether guest stage 2s use forced write-back (the boot CPU has
/// FEAT_S2FWB). A later CPU without it runs guests without `HCR_EL2.FWB`:
/// it then reads the FWB encoding classically (Normal inner write-through,
/// outer non-cacheable) — still Normal memory, and the cache maintenance
/// before a first run and after every scrub keeps it correct.
pub fn s2fwb() -> bool {
    S2FWB.load(core::sync::atomic::Ordering::Acquire)
}

impl El2Config {
    /// The translation and trap settings for the given tables.
    pub fn new(features: Features, el2_root: u64, stage2_root: u64, stage2: Stage2Geometry) -> Self {
        let pa = features.pa_range_field;
        let tcr = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (pa << 16) | (1 << 23) | (1 << 31);
        let mut hcr = hcr::VM | hcr::SWIO | hcr::FB | hcr::BSU_IS | hcr::TSC | hcr::RW;
        if features.pauth {
            hcr |= hcr::API | hcr::APK;
        }
        El2Config {
            features,
            mair: crate::mm::el2::MAIR,
            tcr,
            ttbr0: el2_root,
            vtcr: stage2.vtcr(),
            vttbr: stage2_root,
            hcr,
        }
    }
}

/// `SCTLR_EL1` handed to the host: MMU and caches off, RES1 bits set.
const SCTLR_EL1_RESET: u64 = 0x30D0_0800;

/// `MDCR_EL2` for the host on this CPU: see [`el2::host_mdcr`]. Reads
/// `PMCR_EL0.N` only when the CPU has PMUv3 (the register is UNDEFINED
/// otherwise).
pub fn host_mdcr(features: &Features) -> u64 {
    let n = if features.cpu.pmuv3 { (arch::pmcr_el0() >> 11) & 0x1f } else { 0 };
    let value = el2::host_mdcr(&features.cpu, n);
    // The benchmark build lets the host count EL2 (never a release image).
    #[cfg(feature = "bench-el2-pmu")]
    let value = value & !(el2::mdcr::HPMD | el2::mdcr::HCCD);
    value
}

/// Configures this CPU's EL2 and turns on its MMU and the host stage 2.
///
/// The translation settings are the boot CPU's, shared by every CPU; the
/// feature-dependent trap and enable values come from this CPU's own ID
/// registers, which may differ between the cores of a big.LITTLE system
/// (writing FGT or HCRX registers a core lacks would be UNDEFINED at EL2).
/// A CPU with fewer physical address bits than the boot CPU cannot use the
/// shared `VTCR_EL2.PS`: it says so and powers the machine off.
pub fn init_this_cpu(config: &El2Config) {
    let f = *this().features.call_once(Features::probe);
    if f.pa_range_field < config.features.pa_range_field {
        crate::println!(
            "CPU {} implements {} physical address bits, fewer than the boot CPU's {}: unsupported; powering off",
            current(),
            f.pa_bits,
            config.features.pa_bits
        );
        crate::power_off()
    }
    let mdcr = host_mdcr(&f);
    let cptr = el2::host_cptr(&f.cpu);
    let fgt = el2::host_fgt(&f.cpu);
    let hcrx = el2::host_hcrx(&f.cpu);
    // SAFETY: each value below hands EL1 features to the host without
    // touching the hypervisor's own translation or memory; the MMU and
    // stage 2 are installed last, from tables built and checked at boot.
    // The trace filter and the profiling control stop EL2 from being
    // traced or sampled; the PMU filter bits in MDCR_EL2 stop it counting.
    unsafe {
        arch::set_cptr_el2(cptr);
        arch::isb();
        if f.sve {
            arch::set_zcr_el2(0xf);
        }
        if f.sme {
            arch::set_smcr_el2(0xf);
        }
        arch::set_cnthctl_el2(0b11);
        arch::set_cntvoff_el2(0);
        // The EL2 timer is armed only while a guest runs (host_timer.rs).
        arch::guest::set_host_timer(0, 0);
        arch::set_vpidr_el2(arch::midr_el1());
        arch::set_vmpidr_el2(arch::mpidr_el1());
        arch::set_mdcr_el2(mdcr);
        if f.cpu.trace_filter {
            // E2TRE = 0, E0HTRE = 0: nothing at EL2 is traced.
            arch::set_trfcr_el2(0);
        }
        if f.cpu.spe_ver != 0 {
            // E2SPE = 0, E0HSPE = 0: nothing at EL2 is sampled.
            arch::set_pmscr_el2(0);
        }
        arch::set_hstr_el2(0);
        if f.gic_sysregs {
            arch::set_icc_sre_el2(0b1001);
            arch::isb();
            arch::set_ich_hcr_el2(0);
        }
        if f.fgt {
            arch::set_hfgrtr_el2(fgt.hfgrtr);
            arch::set_hfgwtr_el2(fgt.hfgwtr);
            arch::set_hfgitr_el2(fgt.hfgitr);
            arch::set_hdfgrtr_el2(fgt.hdfgrtr);
            arch::set_hdfgwtr_el2(fgt.hdfgwtr);
        }
        if f.hcx {
            arch::set_hcrx_el2(hcrx);
        }
        arch::isb();
        arch::set_sctlr_el1(SCTLR_EL1_RESET);
        arch::enable_el2_mmu(config.mair, config.tcr, config.ttbr0);
        arch::install_stage2(config.vtcr, config.vttbr, config.hcr);
    }
}
