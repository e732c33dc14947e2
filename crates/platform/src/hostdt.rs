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
    CARVEOUT_COMPATIBLE, CARVEOUT_NODE_NAME, CONTROL_CHANNELS_PROPERTY, CONTROL_COMPATIBLE, CONTROL_NODE_NAME,
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
/// cell sizes Rampart cannot write, or already has a node of Rampart's name.
pub fn build(blob: &[u8], carveout: MemRange, host_bootargs: &str, vmm: VmmNodes) -> Result<Vec<u8>, BootError> {
    let fdt = Fdt::new(blob).map_err(|e| BootError::MalformedDeviceTree(e.to_string()))?;
    let mut tree = DeviceTree::from_fdt(&fdt);

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
    let name = format!("{CARVEOUT_NODE_NAME}@{:x}", carveout.start());
    if rmem.child(&name).is_some() {
        return Err(err(format!("/reserved-memory/{name} already exists")));
    }
    let mut reg = cells(carveout.start(), address_cells)?;
    reg.extend(cells(carveout.size(), size_cells)?);
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
    Ok(tree.to_dtb())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dt;

    const QEMU_VIRT: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-2cpu.dtb");

    #[test]
    fn adds_the_carveout_and_rewrites_bootargs() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let out = build(QEMU_VIRT, carveout, "console=ttyAMA0", VmmNodes::default()).unwrap();
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
    fn describes_the_control_pages_and_the_guest_pool() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let control = MemRange::new(0x4110_0000, 0x4111_0000).unwrap();
        let pool = MemRange::new(0x5c00_0000, 0x6000_0000).unwrap();
        let out = build(QEMU_VIRT, carveout, "", VmmNodes { control: Some((control, 16)), guest_pool: Some(pool) }).unwrap();
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
    fn empty_host_bootargs_remove_the_property() {
        let carveout = MemRange::new(0x4020_0000, 0x4120_0000).unwrap();
        let out = build(QEMU_VIRT, carveout, "", VmmNodes::default()).unwrap();
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
        let out = build(&with_secret, carveout, "", VmmNodes::default()).unwrap();
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
        let once = build(QEMU_VIRT, carveout, "", VmmNodes::default()).unwrap();
        assert!(matches!(
            build(&once, carveout, "", VmmNodes::default()),
            Err(BootError::HostDeviceTree(_))
        ));
    }
}
