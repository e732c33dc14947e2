//! DMA masters Rampart keeps from the host (`docs/design.md`, "DMA"): the
//! host's device tree has no GICv3 ITS, no SMMU, no `virtio,mmio`
//! transport and no reference to any of them, and their registers abort.
//!
//! The addresses probed are QEMU `virt`'s fixed map (`hw/arm/virt.c`,
//! `base_memmap`), the only machine these checks run on: the ITS frame at
//! 0x0808_0000, the SMMUv3 at 0x0905_0000, fw_cfg (which has a DMA
//! interface) at 0x0902_0000, the virtio-mmio transports from 0x0a00_0000,
//! and, when the host's tree has no PCI host bridge (no SMMU guards it),
//! the high ECAM at 0x40_1000_0000 and the 32-bit window at 0x1000_0000.
//!
//! With `testhost.unguarded-dma` on the test host's command line (xtask
//! passes it when it gives Rampart `rampart.unguarded-dma=on`), the
//! virtio-mmio transports must instead be present and readable: the
//! check then shows it can tell the two apart.

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::standard::NodeStandard as _;
use dtoolkit::{Node, Property};

use super::carveout::expect_abort;
use crate::arch::{self, Access};
use crate::msg::Msg;
use crate::platform::{Name, Platform};
use crate::{ensure, fail, note};

/// Test-host bootarg: Rampart was told to give the unguarded masters back.
pub const UNGUARDED_BOOTARG: &str = "testhost.unguarded-dma";

/// QEMU virt's GICv3 ITS frame (`VIRT_GIC_ITS`).
const ITS: u64 = 0x0808_0000;
/// QEMU virt's SMMUv3 (`VIRT_SMMU`).
const SMMU: u64 = 0x0905_0000;
/// QEMU virt's fw_cfg (`VIRT_FW_CFG`).
const FW_CFG: u64 = 0x0902_0000;
/// QEMU virt's first and last virtio-mmio transports (`VIRT_MMIO`, 32 of
/// 0x200 bytes).
const VIRTIO_FIRST: u64 = 0x0a00_0000;
const VIRTIO_LAST: u64 = 0x0a00_3e00;
/// QEMU virt's high PCIe ECAM (`VIRT_HIGH_PCIE_ECAM`) and 32-bit MMIO
/// window (`VIRT_PCIE_MMIO`).
const PCIE_ECAM: u64 = 0x40_1000_0000;
const PCIE_MMIO: u64 = 0x1000_0000;
/// `MagicValue` of a virtio-mmio transport: "virt" little-endian.
const VIRTIO_MAGIC: u32 = 0x7472_6976;

/// What the host's tree says about DMA masters, read at boot.
#[derive(Clone, Default)]
pub struct DmaNodes {
    /// Nodes with `compatible = "arm,gic-v3-its"`.
    pub its: usize,
    /// Nodes with `compatible = "arm,smmu-v3"`.
    pub smmu: usize,
    /// Nodes with `compatible = "virtio,mmio"`.
    pub virtio_mmio: usize,
    /// Nodes with `compatible = "qemu,fw-cfg-mmio"`.
    pub fw_cfg: usize,
    /// PCI host bridges.
    pub pci: usize,
    /// Properties `iommus`, `iommu-map`, `msi-map`, `msi-parent` anywhere.
    pub references: usize,
    /// The first node or property found that should not be there.
    pub first: Option<Name>,
    /// `testhost.unguarded-dma` was given.
    pub unguarded: bool,
}

fn record(first: &mut Option<Name>, node: &FdtNode<'_>, what: &str) {
    if first.is_none() {
        let mut n = Name::new();
        let _ = core::fmt::Write::write_fmt(&mut n, format_args!("{}{what}", node.name()));
        *first = Some(n);
    }
}

/// Reads the host's tree (at boot, before any check writes memory).
pub fn scan(fdt: Fdt<'_>, bootargs: Option<&str>) -> DmaNodes {
    let mut out = DmaNodes {
        unguarded: bootargs.is_some_and(|b| b.split_ascii_whitespace().any(|w| w == UNGUARDED_BOOTARG)),
        ..DmaNodes::default()
    };
    let mut pending: [Option<FdtNode<'_>>; 64] = [const { None }; 64];
    let mut top = 0;
    pending[top] = Some(fdt.root());
    top += 1;
    while top > 0 {
        top -= 1;
        let Some(node) = pending[top].take() else { continue };
        if node.is_compatible("arm,gic-v3-its") {
            out.its += 1;
            record(&mut out.first, &node, "");
        }
        if node.is_compatible("arm,smmu-v3") {
            out.smmu += 1;
            record(&mut out.first, &node, "");
        }
        if node.is_compatible("virtio,mmio") {
            out.virtio_mmio += 1;
            if !out.unguarded {
                record(&mut out.first, &node, "");
            }
        }
        if node.is_compatible("qemu,fw-cfg-mmio") {
            out.fw_cfg += 1;
            if !out.unguarded {
                record(&mut out.first, &node, "");
            }
        }
        if node.property("device_type").is_some_and(|p| p.value() == b"pci\0") {
            out.pci += 1;
        }
        for property in ["iommus", "iommu-map", "msi-map", "msi-parent"] {
            if node.property(property).is_some() {
                out.references += 1;
                record(&mut out.first, &node, if property == "iommus" { " iommus" } else { " *-map/msi-parent" });
            }
        }
        for child in node.children() {
            if top < pending.len() {
                pending[top] = Some(child);
                top += 1;
            }
        }
    }
    out
}

/// The first offending node's name, for a failure message.
fn first(d: &DmaNodes) -> Name {
    d.first.clone().unwrap_or_else(Name::new)
}

/// `dma-withheld-dt`: the host's tree has no ITS, no SMMU and no reference
/// to an IOMMU or MSI controller; no virtio-mmio transport nor fw_cfg
/// either unless `testhost.unguarded-dma` says Rampart gave them back.
pub fn dma_withheld_dt(p: &Platform) -> Result<(), Msg> {
    let d = &p.dma_nodes;
    note!(
        "host tree: {} ITS, {} SMMU, {} virtio-mmio, {} fw_cfg, {} PCI host bridge(s), {} IOMMU/MSI reference(s){}",
        d.its,
        d.smmu,
        d.virtio_mmio,
        d.fw_cfg,
        d.pci,
        d.references,
        if d.unguarded { "; unguarded DMA given back" } else { "" }
    );
    ensure!(d.its == 0, "the host's tree has a GICv3 ITS ({})", first(d));
    ensure!(d.smmu == 0, "the host's tree has an SMMUv3 ({})", first(d));
    ensure!(
        d.references == 0,
        "the host's tree still names an IOMMU or MSI controller ({})",
        first(d)
    );
    if d.unguarded {
        ensure!(d.virtio_mmio > 0, "rampart.unguarded-dma=on, but no virtio-mmio transport came back");
    } else {
        ensure!(d.virtio_mmio == 0, "the host's tree has {} virtio-mmio transports", d.virtio_mmio);
        ensure!(d.fw_cfg == 0, "the host's tree has fw_cfg, whose DMA no SMMU guards");
    }
    Ok(())
}

/// `dma-withheld-mmio`: loads from the withheld masters' registers abort
/// (a synchronous external abort, as for the carve-out); with
/// `testhost.unguarded-dma`, the first virtio-mmio transport reads its
/// magic instead.
pub fn dma_withheld_mmio(p: &Platform) -> Result<(), Msg> {
    let d = &p.dma_nodes;
    let mut targets: [(&str, u64); 8] = [("", 0); 8];
    let mut n = 0;
    let mut add = |what: &'static str, address: u64| {
        if n < targets.len() {
            targets[n] = (what, address);
            n += 1;
        }
    };
    add("ITS GITS_CTLR", ITS);
    add("ITS GITS_TRANSLATER page", ITS + 0x1_0000);
    add("SMMUv3 SMMU_IDR0", SMMU);
    if !d.unguarded {
        add("fw_cfg", FW_CFG);
        add("the first virtio-mmio transport", VIRTIO_FIRST);
        add("the last virtio-mmio transport", VIRTIO_LAST);
        if d.pci == 0 {
            add("the PCIe ECAM", PCIE_ECAM);
            add("the PCIe 32-bit window", PCIE_MMIO);
        }
    }
    for &(what, address) in &targets[..n] {
        expect_abort(Access::Load, address).map_err(|e| crate::msg!("{what} at {address:#x}: {e}"))?;
    }
    note!("{n} withheld register ranges abort");
    if d.unguarded {
        let outcome = arch::probe(Access::Load, VIRTIO_FIRST, 0);
        if let Some(e) = outcome.fault {
            fail!("rampart.unguarded-dma=on, but reading virtio-mmio at {VIRTIO_FIRST:#x} took {e}");
        }
        let magic = outcome.register as u32;
        ensure!(magic == VIRTIO_MAGIC, "virtio-mmio at {VIRTIO_FIRST:#x} reads {magic:#x}, want the magic {VIRTIO_MAGIC:#x}");
        note!("virtio-mmio given back: {VIRTIO_FIRST:#x} reads its magic");
    }
    Ok(())
}

/// An LPI configuration table in the test host's own memory: 8192 LPIs
/// (INTIDs 8192 to 16383), each enabled at priority 0xa0.
#[repr(C, align(4096))]
struct PropTable([core::sync::atomic::AtomicU8; 8192]);
static PROP_TABLE: PropTable = PropTable([const { core::sync::atomic::AtomicU8::new(0) }; 8192]);

const GICR_CTLR: u64 = 0;
const GICR_TYPER: u64 = 8;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;

/// `gicr-lpi-tables`: a redistributor with LPIs enabled reads its LPI
/// pending table from wherever `GICR_PENDBASER` points, with no SMMU in
/// the way: a set bit there becomes a pending LPI the host sees, and
/// acknowledging it clears the bit in memory. The host points
/// `GICR_PENDBASER` at the carve-out (and `GICR_PROPBASER` at its own
/// table enabling every LPI) and sets `GICR_CTLR.EnableLPIs`: no LPI may
/// become pending, and the register must not hold the carve-out's address.
/// Everything is put back before returning.
pub fn gicr_lpi_tables(p: &Platform) -> Result<(), Msg> {
    use crate::checks::vmm::{gic, hw};
    gic::init(p)?;
    ensure!(gic::enable_this_cpu(), "no GICv3 redistributor for this CPU");
    let r = gic::redistributor().ok_or_else(|| crate::msg!("no redistributor"))?;
    let typer = hw::mmio_read32(r + GICR_TYPER);
    note!("GICR_TYPER low word {typer:#x}, PLPIS {}", typer & 1);
    let target = p.probe_target()?;
    for b in &PROP_TABLE.0 {
        b.store(0xa3, core::sync::atomic::Ordering::Relaxed);
    }
    let prop = core::ptr::from_ref(&PROP_TABLE) as u64;
    // IDbits = 13: 14-bit INTIDs.
    hw::mmio_write32(r + GICR_PROPBASER, (prop as u32) | 13);
    hw::mmio_write32(r + GICR_PROPBASER + 4, (prop >> 32) as u32);
    hw::mmio_write32(r + GICR_PENDBASER, target.start as u32);
    hw::mmio_write32(r + GICR_PENDBASER + 4, (target.start >> 32) as u32);
    let ctlr = hw::mmio_read32(r + GICR_CTLR);
    hw::mmio_write32(r + GICR_CTLR, ctlr | 1);
    let enabled = hw::mmio_read32(r + GICR_CTLR) & 1;
    let pendbaser = u64::from(hw::mmio_read32(r + GICR_PENDBASER)) | (u64::from(hw::mmio_read32(r + GICR_PENDBASER + 4)) << 32);
    let pending = hw::icc_hppir1() & 0xff_ffff;
    hw::mmio_write32(r + GICR_CTLR, ctlr & !1);
    hw::mmio_write32(r + GICR_PENDBASER, 0);
    hw::mmio_write32(r + GICR_PENDBASER + 4, 0);
    hw::mmio_write32(r + GICR_PROPBASER, 0);
    hw::mmio_write32(r + GICR_PROPBASER + 4, 0);
    note!("EnableLPIs read back {enabled}, GICR_PENDBASER {pendbaser:#x}; highest pending Group 1 INTID {pending}");
    ensure!(
        pending < 8192,
        "LPI {pending} is pending: the redistributor read bit {} of byte {:#x} of the carve-out",
        pending % 8,
        target.start + pending / 8
    );
    ensure!(
        pendbaser & 0x000f_ffff_ffff_0000 != target.start,
        "GICR_PENDBASER holds the carve-out's address {:#x}",
        target.start
    );
    Ok(())
}
