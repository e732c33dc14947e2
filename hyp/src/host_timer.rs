//! The host keeps its clock while a guest runs.
//!
//! A host at EL1 (Linux under Rampart) ticks with the EL1 virtual timer,
//! the very timer a guest is given. While a vCPU runs, the guest's
//! `CNTV_*` are loaded and the host's deadline would be lost: a guest that
//! never exits would stop the host's clock on that CPU. So while a guest
//! is loaded the hypervisor moves the host's deadline into the EL2
//! physical timer (`CNTHP_*`, PPI 26), which no lower EL can touch; its
//! interrupt is taken at EL2 (`HCR_EL2.IMO`) and ends the run with
//! `EXIT_INTERRUPT` (`x2` = 1). When the host's context comes back, the EL2
//! timer is off again and the host's own virtual timer, restored with its
//! deadline passed, raises the host's PPI 27 as usual.
//!
//! PPI 26 must be enabled in the CPU's redistributor, which a host at EL1
//! has no reason to do; so this module finds each CPU's redistributor
//! (`GICR_TYPER` affinity) in the regions the boot device tree names and
//! enables PPI 26 there as a Group 1 interrupt. It writes nothing else in
//! the GIC.

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;
use rampart_platform::MemRange;
use spin::Once;

use crate::arch::{self, guest};
use crate::config::MAX_CPUS;

/// The EL2 physical timer's PPI.
pub const EL2_TIMER_PPI: u32 = 26;

const CTL_ENABLE: u64 = 1;
const CTL_IMASK: u64 = 1 << 1;
const CTL_ISTATUS: u64 = 1 << 2;

/// Frame layout of a GICv3 redistributor.
const GICR_TYPER: u64 = 0x8;
const TYPER_VLPIS: u32 = 1 << 1;
const TYPER_LAST: u32 = 1 << 4;
const SGI_FRAME: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = SGI_FRAME + 0x80;
const GICR_ISENABLER0: u64 = SGI_FRAME + 0x100;
const GICR_ISPENDR0: u64 = SGI_FRAME + 0x200;
/// How many times [`disarm`] reads the pending bit before it gives up.
const DROP_POLLS: u32 = 1000;
const GICR_IPRIORITYR: u64 = SGI_FRAME + 0x400;
/// GICv3: RD and SGI frames; GICv4 adds two (VLPI, reserved).
const STRIDE_V3: u64 = 0x2_0000;
const STRIDE_V4: u64 = 0x4_0000;
/// Linux's default interrupt priority: below (more urgent than) the
/// host's usual priority mask.
const PRIORITY: u32 = 0xa0;

/// The redistributor regions mapped at EL2.
static REGIONS: Once<Vec<MemRange>> = Once::new();
/// Per CPU: its redistributor's RD frame; 0 = not looked up yet,
/// 1 = none found.
static REDISTRIBUTOR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
const NONE_FOUND: u64 = 1;

/// Records the redistributor regions (already mapped at EL2 as device
/// memory by the boot CPU). Once, at boot.
pub fn init(regions: Vec<MemRange>) {
    REGIONS.call_once(|| regions);
}

/// Walks the regions for the frame whose `GICR_TYPER` affinity is this
/// CPU's.
fn find_redistributor() -> Option<u64> {
    let mpidr = arch::mpidr_el1();
    // GICR_TYPER[63:32] = Aff3.Aff2.Aff1.Aff0; MPIDR has Aff3 at 39:32.
    let affinity = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0x00ff_ffff);
    for region in REGIONS.get()? {
        let mut frame = region.start();
        // Every register read below lies in the frame's first 64 KiB.
        while frame.checked_add(SGI_FRAME * 2).is_some_and(|end| end <= region.end()) {
            // SAFETY: the frame lies inside a region mapped at EL2 as
            // device memory (checked just above); TYPER is aligned.
            let (low, high) = unsafe { (guest::gicr_read32(frame + GICR_TYPER), guest::gicr_read32(frame + GICR_TYPER + 4)) };
            if u64::from(high) == affinity {
                return Some(frame);
            }
            if low & TYPER_LAST != 0 {
                break;
            }
            let stride = if low & TYPER_VLPIS != 0 { STRIDE_V4 } else { STRIDE_V3 };
            let Some(next) = frame.checked_add(stride) else { break };
            frame = next;
        }
    }
    None
}

fn this_redistributor() -> Option<u64> {
    let slot = &REDISTRIBUTOR[crate::cpu::current() % MAX_CPUS];
    match slot.load(Ordering::Relaxed) {
        0 => {
            let found = find_redistributor();
            slot.store(found.unwrap_or(NONE_FOUND), Ordering::Relaxed);
            found
        }
        NONE_FOUND => None,
        frame => Some(frame),
    }
}

/// The virtual CPU interface's maintenance interrupt (`vcpu.rs`), taken at
/// EL2 while a guest runs, like PPI 26.
pub const MAINTENANCE_PPI: u32 = 25;

/// Makes PPI 25 an enabled Group 1 interrupt in this CPU's redistributor
/// (as PPI 26 below). Nothing else asserts it: the virtual interface's
/// maintenance conditions hold only while a guest is loaded
/// (`ICH_HCR_EL2.En`), and `vcpu.rs` clears each one it enables before the
/// host runs. False if there is no redistributor.
pub fn enable_maintenance() -> bool {
    enable_ppi(MAINTENANCE_PPI)
}

/// Makes `ppi` (below 32) an enabled Group 1 interrupt in this CPU's
/// redistributor unless it is already enabled. False if there is no
/// redistributor.
fn enable_ppi(ppi: u32) -> bool {
    let Some(rd) = this_redistributor() else { return false };
    let bit = 1u32 << (ppi % 32);
    // SAFETY: `rd` is this CPU's RD frame inside a region mapped at EL2
    // (found by `find_redistributor`, which checked that both 64 KiB
    // frames lie in it); the register is aligned and reading it changes
    // nothing.
    let enabled = unsafe { guest::gicr_read32(rd + GICR_ISENABLER0) };
    if enabled & bit != 0 {
        return true;
    }
    let group = rd + GICR_IGROUPR0;
    let priority = rd + GICR_IPRIORITYR + u64::from((ppi % 32) & !3);
    let shift = (ppi & 3) * 8;
    // SAFETY: as above, aligned registers of this CPU's own SGI frame;
    // read-modify-write of the PPI's group bit and priority byte only,
    // then its write-1-to-set enable bit.
    unsafe {
        guest::gicr_write32(group, guest::gicr_read32(group) | bit);
        guest::gicr_write32(priority, (guest::gicr_read32(priority) & !(0xff << shift)) | (PRIORITY << shift));
        guest::gicr_write32(rd + GICR_ISENABLER0, bit);
    }
    true
}

/// What to arm the EL2 timer with for the host's saved virtual timer:
/// `Some(cval)` in physical-count terms if the host's timer is enabled and
/// unmasked, else `None` (the host asked for no interrupt).
fn deadline(host_cntv_ctl: u64, host_cntv_cval: u64, cntvoff: u64) -> Option<u64> {
    (host_cntv_ctl & CTL_ENABLE != 0 && host_cntv_ctl & CTL_IMASK == 0).then(|| host_cntv_cval.wrapping_add(cntvoff))
}

/// Called as a guest is loaded, with the host's virtual timer just saved:
/// arms the EL2 timer with the host's deadline.
pub fn arm(host_cntv_ctl: u64, host_cntv_cval: u64) {
    match deadline(host_cntv_ctl, host_cntv_cval, arch::cntvoff_el2()) {
        Some(cval) if enable_ppi(EL2_TIMER_PPI) => guest::set_host_timer(cval, CTL_ENABLE),
        _ => guest::set_host_timer(0, 0),
    }
}

/// Called before the host's context comes back: the EL2 timer goes off, so
/// its level-sensitive PPI 26 drops and the host never sees it. The
/// timer's output reaches the GIC with some delay on real hardware, so if
/// the timer had fired, this waits (boundedly) until the redistributor no
/// longer shows PPI 26 pending; otherwise a host at EL1 with the interrupt
/// enabled could acknowledge an interrupt it has no handler for.
pub fn disarm() {
    let was_firing = fired();
    guest::set_host_timer(0, 0);
    if !was_firing {
        return;
    }
    wait_for_drop(EL2_TIMER_PPI);
}

/// Waits (boundedly) until this CPU's redistributor no longer shows `ppi`
/// pending, after its level-sensitive source was turned off.
pub fn wait_for_drop(ppi: u32) {
    let Some(rd) = this_redistributor() else { return };
    let bit = 1u32 << (ppi % 32);
    for _ in 0..DROP_POLLS {
        // SAFETY: `rd` is this CPU's RD frame in a region mapped at EL2
        // (`find_redistributor`); reading the aligned pending register
        // changes nothing.
        if unsafe { guest::gicr_read32(rd + GICR_ISPENDR0) } & bit == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Whether the host's deadline has passed while the guest was loaded.
#[inline]
pub fn fired() -> bool {
    let ctl = guest::cnthp_ctl();
    ctl & CTL_ENABLE != 0 && ctl & CTL_ISTATUS != 0
}
