//! The device tree handed to the host: the boot tree, plus the carve-out as
//! `no-map` reserved memory, with Rampart's options taken off the command
//! line.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;

use dtoolkit::fdt::Fdt;
use dtoolkit::model::{DeviceTree, DeviceTreeNode, DeviceTreeProperty};
use dtoolkit::{Node, Property};
use rampart_abi::boot::{
    CARVEOUT_COMPATIBLE, CARVEOUT_NODE_NAME, CONTROL_CHANNELS_PROPERTY, CONTROL_COMPATIBLE, CONTROL_IPA_BITS_PROPERTY,
    CONTROL_NODE_NAME,
    GUEST_POOL_COMPATIBLE, GUEST_POOL_NODE_NAME,
};

use crate::{BootError, MemRange};

fn err(e: impl core::fmt::Display) -> BootError {
    BootError::HostDeviceTree(e.to_string())
}

/// Encodes `value` in `cells` 32-bit big-endian cells.
fn cells(value: u64, cells: u32) -> Result<Vec<u32>, BootError> {
    match cells {
        1 => u32::try_from(value)
            .map(|v| alloc::vec![v])
            .map_err(|_| err(format!("{value:#x} does not fit in one cell"))),
        2 => {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "splitting into 32-bit halves"
            )]
            let halves = alloc::vec![(value >> 32) as u32, value as u32];
            Ok(halves)
        }
        n => Err(err(format!(
            "/reserved-memory uses {n} cells; only 1 or 2 are supported"
        ))),
    }
}

fn read_cells(node: &DeviceTreeNode, name: &str) -> Result<u32, BootError> {
    match node.property(name) {
        None => Ok(2),
        Some(p) => {
            let v = p.value();
            let bytes: [u8; 4] = v
                .try_into()
                .map_err(|_| err(format!("/reserved-memory `{name}` is {} bytes", v.len())))?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

/// What Rampart adds to the host's tree for a user-space VMM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmmNodes {
    /// The control pages and their number.
    pub control: Option<(MemRange, u32)>,
    /// The guest pool.
    pub guest_pool: Option<MemRange>,
}

fn reg_property(address_cells: u32, size_cells: u32, range: MemRange) -> Result<DeviceTreeProperty, BootError> {
    let mut reg = cells(range.start(), address_cells)?;
    reg.extend(cells(range.size(), size_cells)?);
    DeviceTreeProperty::new("reg", reg).map_err(err)
}

/// Builds the host's device tree from the boot tree `blob`.
///
/// # Errors
///
/// [`BootError::HostDeviceTree`] if the boot tree's `/reserved-memory` uses
/// cell sizes Rampart cannot write, or already has a node of Rampart's name,
/// or `carveout` is empty.
///
/// `carveout` lists the hypervisor's ranges: the fixed carve-out first
/// (it names the node), then the part sized at boot. All of them go in the
/// one `no-map` node's `reg`.
pub fn build(blob: &[u8], carveout: &[MemRange], host_bootargs: &str, vmm: VmmNodes) -> Result<Vec<u8>, BootError> {
    let mut tree = model(blob)?;
    add_rampart_nodes(&mut tree, carveout, host_bootargs, vmm)?;
    Ok(tree.to_dtb())
}

/// The tree `blob` holds, as an editable model.
///
/// # Errors
///
/// [`BootError::MalformedDeviceTree`] if `blob` is not a valid tree.
pub fn model(blob: &[u8]) -> Result<DeviceTree, BootError> {
    let fdt = Fdt::new(blob).map_err(|e| BootError::MalformedDeviceTree(e.to_string()))?;
    Ok(DeviceTree::from_fdt(&fdt))
}

/// Everything the hypervisor changes in the boot tree to make the host's,
/// in one pass: [`build`], then [`withhold_dma_masters`] with `plan`,
/// [`drop_unreachable_pci_windows`] below `ipa_limit` and
/// [`describe_ipa_bits`] with `ipa_bits`, applied to one model of the tree
/// that is read from `blob` once and written out once (each step on its
/// own reads and writes the whole tree again: about 3.4 million EL2
/// instructions of boot for QEMU `virt`'s tree, docs/perf.md "Host boot").
/// The result is the same bytes as those four calls in that order, and
/// every check and error of each is kept. Returns the host's tree and the
/// PCI windows dropped.
///
/// # Errors
///
/// Any error of the four steps.
pub fn host_tree(
    blob: &[u8],
    carveout: &[MemRange],
    host_bootargs: &str,
    vmm: VmmNodes,
    plan: &crate::devices::DevicePlan,
    ipa_bits: u32,
) -> Result<(Vec<u8>, Vec<MemRange>), BootError> {
    host_tree_of(model(blob)?, carveout, host_bootargs, vmm, plan, ipa_bits)
}

/// [`host_tree`] on the model of the boot tree (from [`model`]), which it
/// consumes: the boot reads the blob once, makes its [`crate::devices`]
/// plan from the model with [`crate::devices::plan_of`], then this.
///
/// # Errors
///
/// As [`host_tree`].
pub fn host_tree_of(
    mut tree: DeviceTree,
    carveout: &[MemRange],
    host_bootargs: &str,
    vmm: VmmNodes,
    plan: &crate::devices::DevicePlan,
    ipa_bits: u32,
) -> Result<(Vec<u8>, Vec<MemRange>), BootError> {
    let ipa_limit = 1u64.checked_shl(ipa_bits).ok_or_else(|| err(format!("an IPA of {ipa_bits} bits")))?;
    add_rampart_nodes(&mut tree, carveout, host_bootargs, vmm)?;
    if plan.withheld().next().is_some() {
        crate::devices::apply(&mut tree, plan)?;
    }
    let mut dropped = Vec::new();
    let root_cells = read_cells(&tree.root, "#address-cells")?;
    trim_windows(&mut tree.root, root_cells, ipa_limit, &mut dropped)?;
    add_ipa_bits(&mut tree, ipa_bits)?;
    Ok((tree.to_dtb(), dropped))
}

/// [`build`]'s edits, on a model.
fn add_rampart_nodes(tree: &mut DeviceTree, carveout: &[MemRange], host_bootargs: &str, vmm: VmmNodes) -> Result<(), BootError> {
    let first = carveout.first().ok_or_else(|| err("no carve-out to describe"))?;
    if tree.root.child("reserved-memory").is_none() {
        let node = DeviceTreeNode::builder("reserved-memory")
            .map_err(err)?
            .property(DeviceTreeProperty::new("#address-cells", 2u32).map_err(err)?)
            .property(DeviceTreeProperty::new("#size-cells", 2u32).map_err(err)?)
            .property(DeviceTreeProperty::new("ranges", &[] as &[u8]).map_err(err)?)
            .build();
        tree.root.add_child(node);
    }
    let rmem = tree
        .root
        .child_mut("reserved-memory")
        .ok_or_else(|| err("/reserved-memory vanished"))?;
    let address_cells = read_cells(rmem, "#address-cells")?;
    let size_cells = read_cells(rmem, "#size-cells")?;
    let name = format!("{CARVEOUT_NODE_NAME}@{:x}", first.start());
    if rmem.child(&name).is_some() {
        return Err(err(format!("/reserved-memory/{name} already exists")));
    }
    let mut reg = Vec::new();
    for range in carveout {
        reg.extend(cells(range.start(), address_cells)?);
        reg.extend(cells(range.size(), size_cells)?);
    }
    let node = DeviceTreeNode::builder(name)
        .map_err(err)?
        .property(DeviceTreeProperty::new("compatible", CARVEOUT_COMPATIBLE).map_err(err)?)
        .property(DeviceTreeProperty::new("reg", reg).map_err(err)?)
        .property(DeviceTreeProperty::new("no-map", &[] as &[u8]).map_err(err)?)
        .build();
    rmem.add_child(node);
    if let Some(pool) = vmm.guest_pool {
        let name = format!("{GUEST_POOL_NODE_NAME}@{:x}", pool.start());
        let node = DeviceTreeNode::builder(name)
            .map_err(err)?
            .property(DeviceTreeProperty::new("compatible", GUEST_POOL_COMPATIBLE).map_err(err)?)
            .property(reg_property(address_cells, size_cells, pool)?)
            .property(DeviceTreeProperty::new("no-map", &[] as &[u8]).map_err(err)?)
            .build();
        rmem.add_child(node);
    }
    if let Some((control, channels)) = vmm.control {
        let root_address = read_cells(&tree.root, "#address-cells")?;
        let root_size = read_cells(&tree.root, "#size-cells")?;
        let node = DeviceTreeNode::builder(format!("{CONTROL_NODE_NAME}@{:x}", control.start()))
            .map_err(err)?
            .property(DeviceTreeProperty::new("compatible", CONTROL_COMPATIBLE).map_err(err)?)
            .property(reg_property(root_address, root_size, control)?)
            .property(DeviceTreeProperty::new(CONTROL_CHANNELS_PROPERTY, channels).map_err(err)?)
            .build();
        tree.root.add_child(node);
    }

    let chosen = match tree.root.child_mut("chosen") {
        Some(c) => c,
        None => tree
            .root
            .add_child_mut(DeviceTreeNode::new("chosen").map_err(err)?),
    };
    chosen.remove_property("bootargs");
    // Rampart's own configuration (the device secret above all) never
    // reaches the host.
    chosen.remove_property(crate::dt::DEVICE_SECRET_PROPERTY);
    chosen.remove_property(crate::dt::TRUSTED_KEY_PROPERTY);
    if !host_bootargs.is_empty() {
        chosen.add_property(DeviceTreeProperty::new("bootargs", host_bootargs).map_err(err)?);
    }
    Ok(())
}

/// Removes from the host's tree `dtb` every PCI host bridge window (a
/// `ranges` entry of a `device_type = "pci"` node on the root's address
/// space) that ends beyond `ipa_limit`: the host's stage 2 cannot map it,
/// so the host must not place device BARs there (on a 40-bit CPU with its
/// 39-bit IPA, QEMU `virt`'s 64-bit window at 512 GiB). Returns the new
/// tree and the windows removed; the tree is unchanged if none is.
///
/// # Errors
///
/// [`BootError::HostDeviceTree`] if the tree or a PCI node's `ranges` is
/// malformed.
pub fn drop_unreachable_pci_windows(dtb: &[u8], ipa_limit: u64) -> Result<(Vec<u8>, Vec<MemRange>), BootError> {
    let mut tree = model(dtb)?;
    let root_cells = read_cells(&tree.root, "#address-cells")?;
    let mut dropped = Vec::new();
    trim_windows(&mut tree.root, root_cells, ipa_limit, &mut dropped)?;
    if dropped.is_empty() {
        return Ok((dtb.to_vec(), dropped));
    }
    Ok((tree.to_dtb(), dropped))
}

/// Tells the VMM the IPA width every VM's stage 2 has (issue 12: a realm's
/// shared bit is its top bit): adds `rampart,ipa-bits = <ipa_bits>` to the
/// control node of `dtb`. The tree is unchanged if it has no control node.
///
/// # Errors
///
/// [`BootError::HostDeviceTree`] if the tree is malformed.
pub fn describe_ipa_bits(dtb: &[u8], ipa_bits: u32) -> Result<Vec<u8>, BootError> {
    let mut tree = model(dtb)?;
    if !add_ipa_bits(&mut tree, ipa_bits)? {
        return Ok(dtb.to_vec());
    }
    Ok(tree.to_dtb())
}

/// [`describe_ipa_bits`]'s edit, on a model: whether there was a control
/// node to describe it in.
fn add_ipa_bits(tree: &mut DeviceTree, ipa_bits: u32) -> Result<bool, BootError> {
    let prefix = format!("{CONTROL_NODE_NAME}@");
    let mut found = false;
    for node in tree.root.children_mut() {
        if node.name().starts_with(&prefix) {
            node.add_property(DeviceTreeProperty::new(CONTROL_IPA_BITS_PROPERTY, ipa_bits).map_err(err)?);
            found = true;
        }
    }
    Ok(found)
}

/// Removes from the host's tree `dtb` the DMA masters `plan` withholds
/// (made from the boot tree with [`crate::devices::plan`]) and every
/// reference to them (`devices.rs`). The tree is unchanged if nothing is
/// withheld.
///
/// # Errors
///
/// [`BootError::HostDeviceTree`] or [`BootError::BadProperty`] if the tree
/// no longer matches the plan or a reference is malformed.
pub fn withhold_dma_masters(dtb: &[u8], plan: &crate::devices::DevicePlan) -> Result<Vec<u8>, BootError> {
    if plan.withheld().next().is_none() {
        return Ok(dtb.to_vec());
    }
    let mut tree = model(dtb)?;
    crate::devices::apply(&mut tree, plan)?;
    Ok(tree.to_dtb())
}

/// Big-endian cells to a number (at most two cells are significant).
fn read_number(bytes: &[u8]) -> Option<u64> {
    if !bytes.len().is_multiple_of(4) || bytes.len() > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Trims the PCI windows of `node`'s children, whose parent bus is the
/// root's address space with `address_cells` cells, and descends through
/// identity-mapped (`ranges;`) buses as `dt::parse` does.
fn trim_windows(
    node: &mut DeviceTreeNode,
    address_cells: u32,
    ipa_limit: u64,
    dropped: &mut Vec<MemRange>,
) -> Result<(), BootError> {
    for child in node.children_mut() {
        let is_pci = child.property("device_type").is_some_and(|p| p.value() == b"pci\0");
        if is_pci {
            let child_cells = read_cells(child, "#address-cells")?;
            let size_cells = match child.property("#size-cells") {
                None => 1,
                Some(_) => read_cells(child, "#size-cells")?,
            };
            let Some(ranges) = child.property("ranges") else { continue };
            let entry = 4 * (child_cells + address_cells + size_cells) as usize;
            let value = ranges.value();
            if entry == 0 || !value.len().is_multiple_of(entry) {
                return Err(err(format!("a PCI `ranges` of {} bytes is not made of {entry}-byte entries", value.len())));
            }
            let parent_at = 4 * child_cells as usize;
            let size_at = parent_at + 4 * address_cells as usize;
            let mut kept = Vec::with_capacity(value.len());
            for e in value.chunks_exact(entry) {
                let (Some(parent), Some(size)) = (read_number(&e[parent_at..size_at]), read_number(&e[size_at..]))
                else {
                    return Err(err("a PCI `ranges` entry has addresses wider than 64 bits"));
                };
                let window = MemRange::from_base_size(parent, size)
                    .ok_or_else(|| err("a PCI `ranges` window wraps around"))?;
                if window.end() > ipa_limit {
                    dropped.push(window);
                } else {
                    kept.extend_from_slice(e);
                }
            }
            if kept.len() != value.len() {
                child.remove_property("ranges");
                child.add_property(DeviceTreeProperty::new("ranges", kept).map_err(err)?);
            }
        } else if child.property("ranges").is_some_and(|p| p.value().is_empty()) {
            let cells = read_cells(child, "#address-cells")?;
            trim_windows(child, cells, ipa_limit, dropped)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dt;

    const QEMU_VIRT: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-2cpu.dtb");

    #[test]
    fn adds_the_carveout_and_rewrites_bootargs() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let out = build(QEMU_VIRT, &[carveout], "console=ttyAMA0", VmmNodes::default()).unwrap();
        let info = dt::parse(&out).unwrap();
        assert_eq!(info.reserved, alloc::vec![carveout]);
        assert_eq!(info.bootargs, "console=ttyAMA0");
        let fdt = Fdt::new(&out).unwrap();
        let node = fdt
            .find_node("/reserved-memory/rampart-hypervisor@40200000")
            .unwrap();
        assert!(node.property("no-map").is_some());
        let compat = node.property("compatible").unwrap();
        assert_eq!(compat.value_as::<&str>().unwrap(), CARVEOUT_COMPATIBLE);
        // The rest of the tree is unchanged.
        let before = dt::parse(QEMU_VIRT).unwrap();
        assert_eq!(info.memory, before.memory);
        assert_eq!(info.cpus, before.cpus);
        assert_eq!(info.devices, before.devices);
    }

    #[test]
    fn drops_pci_windows_beyond_the_ipa_space() {
        let pci_windows = |blob: &[u8]| {
            let info = dt::parse(blob).unwrap();
            info.devices.iter().filter(|d| d.end() > 0x40_0000_0000).copied().collect::<Vec<_>>()
        };
        let high = MemRange::new(0x80_0000_0000, 0x100_0000_0000).unwrap();
        assert!(pci_windows(QEMU_VIRT).contains(&high), "the fixture has QEMU's 64-bit PCI window");
        // A 48-bit IPA reaches everything: the tree is untouched.
        let (out, dropped) = drop_unreachable_pci_windows(QEMU_VIRT, 1 << 48).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(out, QEMU_VIRT);
        // A 39-bit IPA: the 64-bit window goes, the 32-bit ones and the
        // ECAM (at 256 GiB) stay.
        let (out, dropped) = drop_unreachable_pci_windows(QEMU_VIRT, 1 << 39).unwrap();
        assert_eq!(dropped, alloc::vec![high]);
        let before = dt::parse(QEMU_VIRT).unwrap();
        let after = dt::parse(&out).unwrap();
        let mut expected = before.devices.clone();
        expected.retain(|d| *d != high);
        assert_eq!(after.devices, expected);
        assert_eq!(after.memory, before.memory);
        let fdt = Fdt::new(&out).unwrap();
        let pcie = fdt.find_node("/pcie@10000000").unwrap();
        assert_eq!(pcie.property("ranges").unwrap().value().len(), 2 * 7 * 4);
        // Nothing left to drop the second time.
        let (again, dropped) = drop_unreachable_pci_windows(&out, 1 << 39).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(again, out);
    }

    #[test]
    fn the_host_tree_has_no_dma_master_rampart_withholds() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let host = build(QEMU_VIRT, &[carveout], "", VmmNodes::default()).unwrap();
        let plan = crate::devices::plan(QEMU_VIRT, false).unwrap();
        let out = withhold_dma_masters(&host, &plan).unwrap();
        let fdt = Fdt::new(&out).unwrap();
        assert!(fdt.find_node("/intc@8000000/its@8080000").is_none());
        assert!(fdt.find_node("/virtio_mmio@a000000").is_none());
        // What `build` added stays.
        assert!(fdt.find_node("/reserved-memory/rampart-hypervisor@40200000").is_some());
        // With everything given back but the ITS, only the ITS goes.
        let plan = crate::devices::plan(QEMU_VIRT, true).unwrap();
        let out = withhold_dma_masters(&host, &plan).unwrap();
        let fdt = Fdt::new(&out).unwrap();
        assert!(fdt.find_node("/intc@8000000/its@8080000").is_none());
        assert!(fdt.find_node("/virtio_mmio@a000000").is_some());
        // Nothing withheld: the same bytes.
        let none = crate::devices::DevicePlan::default();
        assert_eq!(withhold_dma_masters(&host, &none).unwrap(), host);
    }

    #[test]
    fn the_control_node_tells_the_ipa_width() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let control = MemRange::new(0x4110_0000, 0x4111_0000).unwrap();
        let host = build(QEMU_VIRT, &[carveout], "", VmmNodes { control: Some((control, 16)), guest_pool: None }).unwrap();
        let out = describe_ipa_bits(&host, 44).unwrap();
        let fdt = Fdt::new(&out).unwrap();
        let node = fdt.find_node("/rampart-control@41100000").unwrap();
        assert_eq!(node.property("rampart,ipa-bits").unwrap().value_as::<u32>().unwrap(), 44);
        assert_eq!(node.property("rampart,channels").unwrap().value_as::<u32>().unwrap(), 16);
        // No control node: nothing to describe.
        let bare = build(QEMU_VIRT, &[carveout], "", VmmNodes::default()).unwrap();
        assert_eq!(describe_ipa_bits(&bare, 44).unwrap(), bare);
    }

    #[test]
    fn host_tree_in_one_pass_is_the_four_steps_in_order() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let control = MemRange::new(0x4110_0000, 0x4111_0000).unwrap();
        let pool = MemRange::new(0x5c00_0000, 0x6000_0000).unwrap();
        let vmm = VmmNodes { control: Some((control, 16)), guest_pool: Some(pool) };
        let withholding = crate::devices::plan(QEMU_VIRT, false).unwrap();
        assert!(withholding.withheld().next().is_some(), "the fixture has masters to withhold");
        let plans = [withholding, crate::devices::plan(QEMU_VIRT, true).unwrap(), crate::devices::DevicePlan::default()];
        for plan in &plans {
            for (ipa_bits, vmm) in [(39, vmm), (48, vmm), (40, VmmNodes::default())] {
                let one = host_tree(QEMU_VIRT, &[carveout], "console=ttyAMA0", vmm, plan, ipa_bits).unwrap();
                let step = build(QEMU_VIRT, &[carveout], "console=ttyAMA0", vmm).unwrap();
                let step = withhold_dma_masters(&step, plan).unwrap();
                let (step, dropped) = drop_unreachable_pci_windows(&step, 1 << ipa_bits).unwrap();
                let step = describe_ipa_bits(&step, ipa_bits).unwrap();
                assert_eq!(one.1, dropped, "{ipa_bits}-bit IPA");
                assert_eq!(one.0, step, "{ipa_bits}-bit IPA, {} withheld", plan.withheld().count());
            }
        }
        // One model for the plan and the host's tree, as the boot does.
        let tree = model(QEMU_VIRT).unwrap();
        let plan = crate::devices::plan_of(&tree, false).unwrap();
        assert_eq!(plan, plans[0]);
        let one = host_tree_of(tree, &[carveout], "console=ttyAMA0", vmm, &plan, 39).unwrap();
        assert_eq!(one, host_tree(QEMU_VIRT, &[carveout], "console=ttyAMA0", vmm, &plan, 39).unwrap());
        // The steps' errors stay: a tree that already has Rampart's node.
        let once = build(QEMU_VIRT, &[carveout], "", VmmNodes::default()).unwrap();
        assert!(matches!(
            host_tree(&once, &[carveout], "", VmmNodes::default(), &plans[2], 48),
            Err(BootError::HostDeviceTree(_))
        ));
        assert!(host_tree(QEMU_VIRT, &[], "", VmmNodes::default(), &plans[2], 48).is_err());
        assert!(host_tree(&QEMU_VIRT[..64], &[carveout], "", VmmNodes::default(), &plans[2], 48).is_err());
    }

    #[test]
    fn describes_the_control_pages_and_the_guest_pool() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let control = MemRange::new(0x4110_0000, 0x4111_0000).unwrap();
        let pool = MemRange::new(0x5c00_0000, 0x6000_0000).unwrap();
        let out = build(QEMU_VIRT, &[carveout], "", VmmNodes { control: Some((control, 16)), guest_pool: Some(pool) }).unwrap();
        let fdt = Fdt::new(&out).unwrap();
        let node = fdt.find_node("/rampart-control@41100000").unwrap();
        assert_eq!(node.property("rampart,channels").unwrap().value_as::<u32>().unwrap(), 16);
        let pool_node = fdt.find_node("/reserved-memory/rampart-guest-pool@5c000000").unwrap();
        assert!(pool_node.property("no-map").is_some());
        let info = dt::parse(&out).unwrap();
        assert!(info.reserved.contains(&pool));
        // The control pages lie in the carve-out, which the host never maps
        // as RAM: they are not host devices either.
        assert!(!info.devices.iter().any(|d| d.overlaps(&control)));
    }

    #[test]
    fn one_node_reserves_every_range_of_the_carveout() {
        let fixed = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let grown = MemRange::new(0x5fe0_0000, 0x6000_0000).unwrap();
        let out = build(QEMU_VIRT, &[fixed, grown], "", VmmNodes::default()).unwrap();
        let info = dt::parse(&out).unwrap();
        assert_eq!(info.reserved, alloc::vec![fixed, grown]);
        let fdt = Fdt::new(&out).unwrap();
        let node = fdt.find_node("/reserved-memory/rampart-hypervisor@40200000").unwrap();
        assert!(node.property("no-map").is_some());
        assert!(build(QEMU_VIRT, &[], "", VmmNodes::default()).is_err());
    }

    #[test]
    fn empty_host_bootargs_remove_the_property() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let out = build(QEMU_VIRT, &[carveout], "", VmmNodes::default()).unwrap();
        let fdt = Fdt::new(&out).unwrap();
        assert!(
            fdt.find_node("/chosen")
                .unwrap()
                .property("bootargs")
                .is_none()
        );
    }

    #[test]
    fn the_device_secret_and_trusted_keys_never_reach_the_host() {
        let fdt = Fdt::new(QEMU_VIRT).unwrap();
        let mut tree = DeviceTree::from_fdt(&fdt);
        let chosen = tree.root.child_mut("chosen").unwrap();
        chosen.add_property(DeviceTreeProperty::new(crate::dt::DEVICE_SECRET_PROPERTY, &[0x5a_u8; 32][..]).unwrap());
        chosen.add_property(DeviceTreeProperty::new(crate::dt::TRUSTED_KEY_PROPERTY, &[0x11_u8; 64][..]).unwrap());
        let with_secret = tree.to_dtb();
        let info = dt::parse(&with_secret).unwrap();
        assert_eq!(info.device_secret, Some([0x5a; 32]));
        assert_eq!(info.trusted_keys, alloc::vec![[0x11; 32], [0x11; 32]]);
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let out = build(&with_secret, &[carveout], "", VmmNodes::default()).unwrap();
        let host = dt::parse(&out).unwrap();
        assert_eq!(host.device_secret, None);
        assert!(host.trusted_keys.is_empty());
        assert!(!out.windows(32).any(|w| w == [0x5a; 32]), "the secret's bytes are in the host tree");
    }

    #[test]
    fn malformed_secret_properties_are_refused() {
        for (name, len) in [(crate::dt::DEVICE_SECRET_PROPERTY, 31), (crate::dt::TRUSTED_KEY_PROPERTY, 33)] {
            let fdt = Fdt::new(QEMU_VIRT).unwrap();
            let mut tree = DeviceTree::from_fdt(&fdt);
            let chosen = tree.root.child_mut("chosen").unwrap();
            chosen.add_property(DeviceTreeProperty::new(name, &alloc::vec![1u8; len][..]).unwrap());
            let blob = tree.to_dtb();
            assert!(matches!(dt::parse(&blob), Err(BootError::BadProperty { .. })), "{name}");
        }
    }

    #[test]
    fn refuses_to_add_the_node_twice() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let once = build(QEMU_VIRT, &[carveout], "", VmmNodes::default()).unwrap();
        assert!(matches!(
            build(&once, &[carveout], "", VmmNodes::default()),
            Err(BootError::HostDeviceTree(_))
        ));
    }
}
