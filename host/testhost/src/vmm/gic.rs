//! The host's side of the GIC, as a VMM's kernel would set it up.
//!
//! Rampart leaves physical interrupts, timers and the GIC to the host
//! (`docs/design.md`): a guest's virtual timer reaches the hypervisor while
//! the guest runs only as the physical PPI 27 the host enabled. So before
//! running vCPUs on a CPU the test host enables the distributor (once), that
//! CPU's redistributor and PPI 27 there as Group 1, and its CPU interface
//! (`ICC_PMR_EL1` = 0xff, `ICC_IGRPEN1_EL1` = 1). `PSTATE.I` stays masked: the
//! host never takes the interrupt itself; the hypervisor sees it while the
//! guest runs and the vCPU exits with `EXIT_INTERRUPT`. Nothing is injected.

use core::sync::atomic::{AtomicU64, Ordering};

use dtoolkit::Node as _;
use dtoolkit::fdt::Fdt;
use dtoolkit::standard::NodeStandard as _;

use super::hw::{mmio_read32, mmio_write32};
use crate::arch::{self, MPIDR_AFFINITY_MASK};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{cpus, msg};

/// The virtual timer's PPI.
const TIMER_PPI: u32 = rampart_abi::guest::VIRTUAL_TIMER_INTID;
/// `GICD_CTLR`: ARE, EnableGrp1 (NS), EnableGrp0; RWP.
const GICD_CTLR_ENABLE: u32 = (1 << 4) | (1 << 1) | 1;
const GICD_CTLR_RWP: u32 = 1 << 31;
/// A GICv3 redistributor's two 64 KiB frames.
const GICR_STRIDE: u64 = 0x2_0000;
const GICR_TYPER: u64 = 0x8;
const GICR_WAKER: u64 = 0x14;
const SGI_FRAME: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = SGI_FRAME + 0x80;
const GICR_ISENABLER0: u64 = SGI_FRAME + 0x100;
const GICR_ISPENDR0: u64 = SGI_FRAME + 0x200;
const GICR_IPRIORITYR: u64 = SGI_FRAME + 0x400;

static GICD: AtomicU64 = AtomicU64::new(0);
static GICR: AtomicU64 = AtomicU64::new(0);
static GICR_SIZE: AtomicU64 = AtomicU64::new(0);

/// Finds the GICv3 in the device tree and enables its distributor. Boot
/// CPU, once before any vCPU runs (idempotent).
pub fn init(p: &Platform) -> Result<(), Msg> {
    if GICD.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let blob = arch::device_tree_blob(p.boot.x[0]).map_err(Msg::from_text)?;
    let fdt = Fdt::new(blob).map_err(|e| msg!("device tree: {e}"))?;
    let node = fdt
        .root()
        .children()
        .find(|n| n.is_compatible("arm,gic-v3"))
        .ok_or_else(|| msg!("no arm,gic-v3 node in the device tree"))?;
    let mut regs = node
        .reg()
        .map_err(|e| msg!("GIC reg: {e}"))?
        .ok_or_else(|| msg!("GIC node has no reg"))?;
    let mut next = || -> Result<(u64, u64), Msg> {
        let reg = regs.next().ok_or_else(|| msg!("GIC reg too short"))?;
        Ok((
            reg.address::<u64>().map_err(|e| msg!("GIC reg: {e}"))?,
            reg.size::<u64>().map_err(|e| msg!("GIC reg: {e}"))?,
        ))
    };
    let (gicd, _) = next()?;
    let (gicr, gicr_size) = next()?;
    let ctlr = mmio_read32(gicd);
    mmio_write32(gicd, ctlr | GICD_CTLR_ENABLE);
    if !cpus::wait_until(100, || mmio_read32(gicd) & GICD_CTLR_RWP == 0) {
        return Err(msg!("GICD_CTLR.RWP stuck"));
    }
    GICR.store(gicr, Ordering::Release);
    GICR_SIZE.store(gicr_size, Ordering::Release);
    GICD.store(gicd, Ordering::Release);
    Ok(())
}

/// This CPU's redistributor, found by `GICR_TYPER`'s affinity.
pub fn redistributor() -> Option<u64> {
    let (base, size) = (GICR.load(Ordering::Acquire), GICR_SIZE.load(Ordering::Acquire));
    let mpidr = arch::mpidr() & MPIDR_AFFINITY_MASK;
    // MPIDR Aff3 is bits 39:32; GICR_TYPER packs Aff3.Aff2.Aff1.Aff0.
    let affinity = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
    let mut frame = base;
    while frame + GICR_STRIDE <= base + size {
        let typer_high = u64::from(mmio_read32(frame + GICR_TYPER + 4));
        let last = mmio_read32(frame + GICR_TYPER) & (1 << 4) != 0;
        if typer_high == affinity {
            return Some(frame);
        }
        if last {
            break;
        }
        frame += GICR_STRIDE;
    }
    None
}

/// Wakes this CPU's redistributor, makes PPI 27 an enabled Group 1
/// interrupt there and opens the CPU interface. Any CPU, after [`init`].
/// Returns false if the GIC was not found.
pub fn enable_this_cpu() -> bool {
    if GICD.load(Ordering::Acquire) == 0 {
        return false;
    }
    let Some(r) = redistributor() else {
        return false;
    };
    let waker = mmio_read32(r + GICR_WAKER);
    mmio_write32(r + GICR_WAKER, waker & !(1 << 1));
    cpus::wait_until(100, || mmio_read32(r + GICR_WAKER) & (1 << 2) == 0);
    mmio_write32(
        r + GICR_IGROUPR0,
        mmio_read32(r + GICR_IGROUPR0) | (1 << TIMER_PPI),
    );
    let priority = r + GICR_IPRIORITYR + u64::from(TIMER_PPI & !3);
    let shift = (TIMER_PPI & 3) * 8;
    mmio_write32(
        priority,
        (mmio_read32(priority) & !(0xff << shift)) | (0xa0 << shift),
    );
    mmio_write32(r + GICR_ISENABLER0, 1 << TIMER_PPI);
    super::hw::gic_cpu_interface_enable();
    true
}

/// Whether SGI/PPI `intid` (below 32) is pending in this CPU's
/// redistributor; `None` before [`init`] or without one.
pub fn ppi_pending(intid: u32) -> Option<bool> {
    if GICD.load(Ordering::Acquire) == 0 || intid >= 32 {
        return None;
    }
    let r = redistributor()?;
    Some(mmio_read32(r + GICR_ISPENDR0) & (1 << intid) != 0)
}
