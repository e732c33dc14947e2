//! Which DMA masters the host gets (`docs/design.md`, "DMA").
//!
//! Stage 2 stops the host's CPUs, not its devices: a device the host
//! programs reads and writes whatever physical address it is told, unless an
//! IOMMU that Rampart owns translates its accesses through the host's
//! stage 2. At boot Rampart sorts every DMA master of the boot device tree
//! it can recognise, on the root's address space (the root's children and
//! the children of identity-mapped `ranges;` buses, as `dt::parse` reads
//! MMIO):
//!
//! - an SMMUv3 (`arm,smmu-v3`) is Rampart's: its node leaves the host's
//!   tree and its registers the host's stage 2; the `iommus`/`iommu-map`
//!   that name it leave the nodes that keep them (Linux would otherwise wait
//!   for an IOMMU it never finds);
//! - the GICv3 ITS (`arm,gic-v3-its`) is hidden: the host chooses where its
//!   command queue, device and collection tables and ITTs live, so it is a
//!   DMA master no SMMU guards. Its node, its `reg` and every
//!   `msi-parent`/`msi-map` naming it go; Linux then gives PCI devices INTx;
//! - a PCI host bridge (`device_type = "pci"`) stays when its `iommu-map`
//!   sends every requester ID of its bus range to an SMMU Rampart owns;
//!   otherwise it leaves with its configuration space and windows;
//! - `virtio,mmio` transports, and any other node that says it is a DMA
//!   master (`dma-coherent`, or `iommus` naming an IOMMU Rampart does not
//!   own) unless all of its `iommus` name SMMUs Rampart owns, leave.
//!
//! `rampart.unguarded-dma=on` (development only) hands the unguarded
//! masters back: virtio-mmio, unguarded PCI and the other DMA masters. The
//! SMMU and the ITS never go back.
//!
//! Everything here is decided from the boot tree alone; [`apply`] then
//! edits the host's tree, and the hypervisor subtracts
//! [`DevicePlan::withheld_ranges`] from the host's stage 2.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use dtoolkit::fdt::Fdt;
use dtoolkit::model::{DeviceTree, DeviceTreeNode};
use dtoolkit::{Node, Property};

use crate::{BootError, MemRange, PAGE_SIZE, range};

/// The kind of DMA master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// An SMMUv3: Rampart's own.
    Smmu,
    /// The GICv3 ITS.
    Its,
    /// A `virtio,mmio` transport.
    VirtioMmio,
    /// A PCI host bridge (root complex).
    Pci,
    /// Another node that says it does DMA (`dma-coherent` or `iommus`).
    Other,
}

impl Class {
    /// A short name for boot logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Class::Smmu => "SMMUv3",
            Class::Its => "GICv3 ITS",
            Class::VirtioMmio => "virtio-mmio",
            Class::Pci => "PCIe root complex",
            Class::Other => "DMA master",
        }
    }

    /// Why a master of this class is withheld from the host.
    #[must_use]
    pub const fn why_withheld(self) -> &'static str {
        match self {
            Class::Smmu => "Rampart owns it",
            Class::Its => "its tables are DMA the host would aim; hidden, PCI uses INTx",
            Class::VirtioMmio | Class::Pci | Class::Other => "no SMMU Rampart owns guards it",
        }
    }

    /// Whether `rampart.unguarded-dma=on` gives it back to the host.
    #[must_use]
    pub const fn may_be_given_back(self) -> bool {
        matches!(self, Class::VirtioMmio | Class::Pci | Class::Other)
    }
}

/// One DMA master of the boot tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    /// Its path in the tree, e.g. `/intc@8000000/its@8080000`.
    pub path: String,
    /// What it is.
    pub class: Class,
    /// Its MMIO (page-aligned `reg` and, for PCI, the bridge's windows).
    pub mmio: Vec<MemRange>,
    /// Its `phandle`, if it has one.
    pub phandle: Option<u32>,
}

/// What Rampart does with a master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Removed from the host's tree and unmapped from its stage 2.
    Withheld,
    /// Left to the host because an SMMU Rampart owns translates its DMA;
    /// `smmu` is that SMMU's path.
    Guarded {
        /// The guarding SMMU's path.
        smmu: String,
    },
    /// Unguarded, but handed to the host by `rampart.unguarded-dma=on`.
    GivenBack,
}

/// One master and its fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The master.
    pub master: Master,
    /// What happens to it.
    pub fate: Fate,
}

/// Rampart's decision for every DMA master of the boot tree, in tree order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicePlan {
    /// Every master found.
    pub decisions: Vec<Decision>,
}

impl DevicePlan {
    /// The masters removed from the host.
    pub fn withheld(&self) -> impl Iterator<Item = &Master> {
        self.decisions
            .iter()
            .filter(|d| d.fate == Fate::Withheld)
            .map(|d| &d.master)
    }

    /// The MMIO the host's stage 2 must not map: every withheld master's,
    /// merged and sorted. It wins over any other device range that shares a
    /// page with it.
    #[must_use]
    pub fn withheld_ranges(&self) -> Vec<MemRange> {
        range::merge(self.withheld().flat_map(|m| m.mmio.iter().copied()).collect())
    }

    /// Whether any unguarded master went back to the host.
    #[must_use]
    pub fn any_given_back(&self) -> bool {
        self.decisions.iter().any(|d| d.fate == Fate::GivenBack)
    }
}

fn bad(node: &str, property: &'static str, reason: impl ToString) -> BootError {
    BootError::BadProperty {
        node: node.to_string(),
        property,
        reason: reason.to_string(),
    }
}

/// A property's value as big-endian 32-bit cells.
fn cells_of(node: &str, property: &'static str, value: &[u8]) -> Result<Vec<u32>, BootError> {
    if !value.len().is_multiple_of(4) {
        return Err(bad(node, property, format!("is {} bytes, not whole cells", value.len())));
    }
    Ok(value
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A one-cell property, if present.
fn u32_property(node: &DeviceTreeNode, path: &str, name: &'static str) -> Result<Option<u32>, BootError> {
    match node.property(name) {
        None => Ok(None),
        Some(p) => match cells_of(path, name, p.value())?.as_slice() {
            [v] => Ok(Some(*v)),
            _ => Err(bad(path, name, format!("is {} bytes, want 4", p.value().len()))),
        },
    }
}

/// `#address-cells` or `#size-cells`, `default` if absent; more than 4
/// cells is refused (no bus needs them, and the sums below stay small).
fn cell_count(node: &DeviceTreeNode, path: &str, name: &'static str, default: u32) -> Result<u32, BootError> {
    match u32_property(node, path, name)?.unwrap_or(default) {
        n @ 0..=4 => Ok(n),
        n => Err(bad(path, name, format!("is {n}; at most 4 cells are supported"))),
    }
}

fn phandle_of(node: &DeviceTreeNode, path: &str) -> Result<Option<u32>, BootError> {
    match u32_property(node, path, "phandle")? {
        Some(p) => Ok(Some(p)),
        None => u32_property(node, path, "linux,phandle"),
    }
}

fn has_compatible(node: &DeviceTreeNode, want: &str) -> bool {
    node.property("compatible")
        .is_some_and(|p| p.value().split(|&b| b == 0).any(|s| s == want.as_bytes()))
}

fn is_enabled(node: &DeviceTreeNode) -> bool {
    node.property("status")
        .is_none_or(|p| matches!(p.value(), b"okay\0" | b"ok\0" | b"okay" | b"ok"))
}

/// Big-endian cells to a number; `None` beyond 64 bits.
fn number(cells: &[u32]) -> Option<u64> {
    if cells.len() > 2 {
        return None;
    }
    Some(cells.iter().fold(0u64, |acc, &c| (acc << 32) | u64::from(c)))
}

/// The page-aligned cover of `r`, if not empty.
fn page_cover(r: MemRange) -> Option<MemRange> {
    if r.is_empty() {
        return None;
    }
    MemRange::new(range::align_down(r.start(), PAGE_SIZE), range::align_up(r.end(), PAGE_SIZE)?)
}

/// `node`'s `reg` on a bus of `address_cells`/`size_cells`.
fn regs(node: &DeviceTreeNode, path: &str, address_cells: u32, size_cells: u32) -> Result<Vec<MemRange>, BootError> {
    let Some(p) = node.property("reg") else { return Ok(Vec::new()) };
    let cells = cells_of(path, "reg", p.value())?;
    let entry = (address_cells + size_cells) as usize;
    if entry == 0 || !cells.len().is_multiple_of(entry) {
        return Err(bad(path, "reg", format!("{} cells are not {entry}-cell entries", cells.len())));
    }
    let mut out = Vec::new();
    for e in cells.chunks_exact(entry) {
        let (a, s) = e.split_at(address_cells as usize);
        let (Some(address), Some(size)) = (number(a), number(s)) else {
            return Err(bad(path, "reg", "an entry is wider than 64 bits"));
        };
        let r = MemRange::from_base_size(address, size).ok_or_else(|| bad(path, "reg", "an entry wraps around"))?;
        out.extend(page_cover(r));
    }
    Ok(out)
}

/// A PCI bridge's windows on its parent bus (`ranges` entries).
fn pci_windows(node: &DeviceTreeNode, path: &str, parent_cells: u32) -> Result<Vec<MemRange>, BootError> {
    let Some(p) = node.property("ranges") else { return Ok(Vec::new()) };
    let child_cells = cell_count(node, path, "#address-cells", 3)?;
    let size_cells = cell_count(node, path, "#size-cells", 2)?;
    let cells = cells_of(path, "ranges", p.value())?;
    let entry = (child_cells + parent_cells + size_cells) as usize;
    if entry == 0 || !cells.len().is_multiple_of(entry) {
        return Err(bad(path, "ranges", format!("{} cells are not {entry}-cell entries", cells.len())));
    }
    let mut out = Vec::new();
    for e in cells.chunks_exact(entry) {
        let parent = &e[child_cells as usize..(child_cells + parent_cells) as usize];
        let size = &e[(child_cells + parent_cells) as usize..];
        let (Some(address), Some(size)) = (number(parent), number(size)) else {
            return Err(bad(path, "ranges", "an entry is wider than 64 bits"));
        };
        let r = MemRange::from_base_size(address, size).ok_or_else(|| bad(path, "ranges", "a window wraps around"))?;
        out.extend(page_cover(r));
    }
    Ok(out)
}

/// A node of the root's address space, as found by [`walk`].
struct Found<'a> {
    node: &'a DeviceTreeNode,
    path: String,
    address_cells: u32,
    size_cells: u32,
}

/// Collects the enabled nodes on the root's address space: the root's
/// children (but memory, `/cpus`, `/chosen`, `/reserved-memory`,
/// `/aliases`, `/psci`), and the children of `ranges;` buses.
fn walk<'a>(node: &'a DeviceTreeNode, path: &str, top: bool, out: &mut Vec<Found<'a>>) -> Result<(), BootError> {
    let address_cells = cell_count(node, path, "#address-cells", 2)?;
    let size_cells = cell_count(node, path, "#size-cells", 1)?;
    for child in node.children() {
        let name = child.name();
        let base = name.split('@').next().unwrap_or(name);
        if top {
            let is_memory = child.property("device_type").is_some_and(|p| p.value() == b"memory\0");
            if is_memory || matches!(base, "memory" | "cpus" | "chosen" | "reserved-memory" | "aliases" | "psci") {
                continue;
            }
        }
        if !is_enabled(child) {
            continue;
        }
        let child_path = format!("{path}/{name}");
        let identity_bus = child.property("ranges").is_some_and(|p| p.value().is_empty());
        out.push(Found { node: child, path: child_path.clone(), address_cells, size_cells });
        if identity_bus {
            walk(child, &child_path, false, out)?;
        }
    }
    Ok(())
}

/// The SMMUs Rampart owns, by phandle.
struct Smmus(Vec<(u32, String)>);

impl Smmus {
    fn path(&self, phandle: u32) -> Option<&str> {
        self.0.iter().find(|(p, _)| *p == phandle).map(|(_, path)| path.as_str())
    }
}

/// The SMMU that guards every requester ID of PCI bridge `node`, if one
/// does: all `iommu-map` entries (4 cells each: RID base, phandle, output
/// base, length) name the same SMMU Rampart owns, and together they cover
/// the IDs the bus range can produce (after `iommu-map-mask`).
fn pci_guard(node: &DeviceTreeNode, path: &str, smmus: &Smmus) -> Result<Option<String>, BootError> {
    let Some(map) = node.property("iommu-map") else { return Ok(None) };
    let cells = cells_of(path, "iommu-map", map.value())?;
    if cells.is_empty() || !cells.len().is_multiple_of(4) {
        return Err(bad(path, "iommu-map", format!("{} cells are not 4-cell entries", cells.len())));
    }
    let (first_bus, last_bus) = match node.property("bus-range") {
        None => (0, 0xff),
        Some(p) => match cells_of(path, "bus-range", p.value())?.as_slice() {
            [a, b] if a <= b && *b <= 0xff => (*a, *b),
            _ => return Err(bad(path, "bus-range", "is not two bus numbers in order")),
        },
    };
    // Requester IDs the devices below can use; with a mask, the masked
    // IDs lie in [0, mask], and the whole of that is asked for.
    let needed = match u32_property(node, path, "iommu-map-mask")? {
        None => MemRange::new(u64::from(first_bus) << 8, (u64::from(last_bus) + 1) << 8),
        Some(mask) => MemRange::new(0, u64::from(mask & 0xffff) + 1),
    }
    .ok_or_else(|| bad(path, "bus-range", "is empty"))?;
    let mut smmu: Option<&str> = None;
    let mut covered = Vec::new();
    for e in cells.chunks_exact(4) {
        let Some(target) = smmus.path(e[1]) else { return Ok(None) };
        if smmu.is_some_and(|s| s != target) {
            return Ok(None);
        }
        smmu = Some(target);
        covered.push(MemRange::from_base_size(u64::from(e[0]), u64::from(e[3])).ok_or_else(|| bad(path, "iommu-map", "wraps"))?);
    }
    let uncovered = range::subtract_all(&[needed], &covered);
    Ok(if uncovered.is_empty() { smmu.map(ToString::to_string) } else { None })
}

/// The phandles an `iommus` or `msi-parent` list names, given each
/// provider's `#iommu-cells`/`#msi-cells` from `cells_of_provider`.
fn specifier_phandles(
    path: &str,
    property: &'static str,
    value: &[u8],
    cells_of_provider: &dyn Fn(u32) -> Option<u32>,
) -> Result<Vec<u32>, BootError> {
    let cells = cells_of(path, property, value)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < cells.len() {
        let phandle = cells[i];
        let n = cells_of_provider(phandle)
            .ok_or_else(|| bad(path, property, format!("names phandle {phandle:#x}, which has no cell count")))?;
        out.push(phandle);
        i = i
            .checked_add(1 + n as usize)
            .filter(|&next| next <= cells.len())
            .ok_or_else(|| bad(path, property, "ends in the middle of a specifier"))?;
    }
    Ok(out)
}

/// Sorts the DMA masters of the boot tree `blob`. `unguarded_dma` is
/// `rampart.unguarded-dma=on`.
///
/// # Errors
///
/// [`BootError::MalformedDeviceTree`] or [`BootError::BadProperty`] when a
/// property this needs is malformed.
pub fn plan(blob: &[u8], unguarded_dma: bool) -> Result<DevicePlan, BootError> {
    let fdt = Fdt::new(blob).map_err(|e| BootError::MalformedDeviceTree(e.to_string()))?;
    plan_of(&DeviceTree::from_fdt(&fdt), unguarded_dma)
}

/// [`plan`] on a model of the boot tree that was read already (the
/// hypervisor's boot reads the blob into one model for this and for the
/// host's tree, [`crate::hostdt::host_tree_of`]).
///
/// # Errors
///
/// As [`plan`].
pub fn plan_of(tree: &DeviceTree, unguarded_dma: bool) -> Result<DevicePlan, BootError> {
    let mut found = Vec::new();
    walk(&tree.root, "", true, &mut found)?;

    let mut smmus = Vec::new();
    for f in &found {
        if has_compatible(f.node, "arm,smmu-v3")
            && let Some(p) = phandle_of(f.node, &f.path)?
        {
            smmus.push((p, f.path.clone()));
        }
    }
    let smmus = Smmus(smmus);
    let iommu_cells = |phandle: u32| -> Option<u32> {
        find_by_phandle(&tree.root, phandle)
            .and_then(|n| n.property("#iommu-cells"))
            .and_then(|p| <[u8; 4]>::try_from(p.value()).ok())
            .map(u32::from_be_bytes)
    };

    let mut decisions = Vec::new();
    for f in &found {
        let node = f.node;
        let path = f.path.as_str();
        let is_pci = node.property("device_type").is_some_and(|p| p.value() == b"pci\0");
        let (class, guard) = if has_compatible(node, "arm,smmu-v3") {
            (Class::Smmu, None)
        } else if has_compatible(node, "arm,gic-v3-its") {
            (Class::Its, None)
        } else if has_compatible(node, "virtio,mmio") {
            (Class::VirtioMmio, None)
        } else if is_pci {
            (Class::Pci, pci_guard(node, path, &smmus)?)
        } else if let Some(iommus) = node.property("iommus") {
            let targets = specifier_phandles(path, "iommus", iommus.value(), &iommu_cells)?;
            let mut guard = targets.first().and_then(|&t| smmus.path(t));
            if targets.iter().any(|&t| smmus.path(t) != guard) {
                guard = None;
            }
            (Class::Other, guard.map(ToString::to_string))
        } else if node.property("dma-coherent").is_some() {
            (Class::Other, None)
        } else {
            continue;
        };
        let mut mmio = regs(node, path, f.address_cells, f.size_cells)?;
        if is_pci {
            mmio.extend(pci_windows(node, path, f.address_cells)?);
        }
        let fate = match guard {
            Some(smmu) => Fate::Guarded { smmu },
            None if unguarded_dma && class.may_be_given_back() => Fate::GivenBack,
            None => Fate::Withheld,
        };
        decisions.push(Decision {
            master: Master { path: f.path.clone(), class, mmio: range::merge(mmio), phandle: phandle_of(node, path)? },
            fate,
        });
    }
    Ok(DevicePlan { decisions })
}

fn find_by_phandle(node: &DeviceTreeNode, phandle: u32) -> Option<&DeviceTreeNode> {
    let own = node
        .property("phandle")
        .and_then(|p| <[u8; 4]>::try_from(p.value()).ok())
        .map(u32::from_be_bytes);
    if own == Some(phandle) {
        return Some(node);
    }
    node.children().find_map(|c| find_by_phandle(c, phandle))
}

/// Properties that name a DMA master's provider, each with its mask
/// companion; removed from a node whenever one names a withheld master.
const REFERENCES: &[(&str, Option<&str>)] = &[
    ("iommu-map", Some("iommu-map-mask")),
    ("msi-map", Some("msi-map-mask")),
    ("iommus", None),
    ("msi-parent", None),
];

/// Edits the host's `tree` to match `plan` (made from the same boot tree):
/// removes every withheld master's node, and every `iommus`, `iommu-map`,
/// `msi-map` and `msi-parent` that names a withheld master (with its
/// `-mask`).
///
/// # Errors
///
/// [`BootError::HostDeviceTree`] if a withheld node is no longer in the
/// tree; [`BootError::BadProperty`] if a reference is malformed.
pub fn apply(tree: &mut DeviceTree, plan: &DevicePlan) -> Result<(), BootError> {
    let gone: Vec<u32> = plan.withheld().filter_map(|m| m.phandle).collect();
    // Provider cell counts, read before anything is removed.
    let mut providers: Vec<(u32, u32)> = Vec::new();
    collect_provider_cells(&tree.root, &mut providers);
    let mut removed: Vec<&str> = Vec::new();
    for master in plan.withheld() {
        // A master below one already removed went with it.
        let inside = |r: &&str| master.path.strip_prefix(*r).is_some_and(|rest| rest.starts_with('/'));
        if removed.iter().any(inside) {
            continue;
        }
        remove_path(&mut tree.root, &master.path)
            .ok_or_else(|| BootError::HostDeviceTree(format!("{} vanished from the host's tree", master.path)))?;
        removed.push(&master.path);
    }
    let cells = |p: u32| providers.iter().find(|(h, _)| *h == p).map(|(_, c)| *c);
    drop_references(&mut tree.root, "", &gone, &cells)
}

/// `(phandle, #iommu-cells or #msi-cells)` of every provider in the tree
/// (an `msi-controller` without `#msi-cells` has none).
fn collect_provider_cells(node: &DeviceTreeNode, out: &mut Vec<(u32, u32)>) {
    let read = |name: &str| {
        node.property(name)
            .and_then(|p| <[u8; 4]>::try_from(p.value()).ok())
            .map(u32::from_be_bytes)
    };
    if let Some(phandle) = read("phandle") {
        if let Some(c) = read("#iommu-cells").or_else(|| read("#msi-cells")) {
            out.push((phandle, c));
        } else if node.property("msi-controller").is_some() {
            out.push((phandle, 0));
        }
    }
    for child in node.children() {
        collect_provider_cells(child, out);
    }
}

fn remove_path(root: &mut DeviceTreeNode, path: &str) -> Option<DeviceTreeNode> {
    let mut parts = path.trim_start_matches('/').split('/').peekable();
    let mut node = root;
    loop {
        let part = parts.next()?;
        if parts.peek().is_none() {
            return node.remove_child(part);
        }
        node = node.child_mut(part)?;
    }
}

fn drop_references(
    node: &mut DeviceTreeNode,
    path: &str,
    gone: &[u32],
    cells: &dyn Fn(u32) -> Option<u32>,
) -> Result<(), BootError> {
    for &(property, mask) in REFERENCES {
        let Some(p) = node.property(property) else { continue };
        let named = if property.ends_with("-map") {
            let c = cells_of(path, property, p.value())?;
            if !c.len().is_multiple_of(4) {
                return Err(bad(path, property, format!("{} cells are not 4-cell entries", c.len())));
            }
            c.chunks_exact(4).map(|e| e[1]).collect()
        } else {
            specifier_phandles(path, property, p.value(), cells)?
        };
        if named.iter().any(|h| gone.contains(h)) {
            node.remove_property(property);
            if let Some(mask) = mask {
                node.remove_property(mask);
            }
        }
    }
    for child in node.children_mut() {
        let child_path = format!("{path}/{}", child.name());
        drop_references(child, &child_path, gone, cells)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dt;

    const VIRT: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-2cpu.dtb");
    const VIRT_SMMU: &[u8] = include_bytes!("../tests/fixtures/qemu-virt-smmuv3-2cpu.dtb");

    /// The phandles of the SMMU and the ITS in the SMMU fixture.
    const SMMU_PH: u32 = 0x8005;
    const ITS_PH: u32 = 0x8004;

    fn r(start: u64, end: u64) -> MemRange {
        MemRange::new(start, end).unwrap()
    }

    fn fate_of<'a>(plan: &'a DevicePlan, path: &str) -> &'a Fate {
        &plan.decisions.iter().find(|d| d.master.path == path).unwrap_or_else(|| panic!("{path} not found")).fate
    }

    fn host_tree(blob: &[u8], plan: &DevicePlan) -> Vec<u8> {
        let mut tree = DeviceTree::from_fdt(&Fdt::new(blob).unwrap());
        apply(&mut tree, plan).unwrap();
        tree.to_dtb()
    }

    const ITS: MemRange = match MemRange::new(0x808_0000, 0x80a_0000) {
        Some(r) => r,
        None => panic!(),
    };
    const SMMU: MemRange = match MemRange::new(0x905_0000, 0x907_0000) {
        Some(r) => r,
        None => panic!(),
    };
    const VIRTIO: MemRange = match MemRange::new(0xa00_0000, 0xa00_4000) {
        Some(r) => r,
        None => panic!(),
    };
    const ECAM: MemRange = match MemRange::new(0x40_1000_0000, 0x40_2000_0000) {
        Some(r) => r,
        None => panic!(),
    };

    #[test]
    fn without_an_smmu_every_dma_master_is_withheld() {
        let plan = plan(VIRT, false).unwrap();
        let classes = |c: Class| plan.decisions.iter().filter(|d| d.master.class == c).count();
        assert_eq!(classes(Class::VirtioMmio), 32);
        assert_eq!(classes(Class::Its), 1);
        assert_eq!(classes(Class::Smmu), 0);
        assert_eq!(classes(Class::Pci), 1);
        // QEMU's fw_cfg has a DMA interface and says `dma-coherent`.
        assert_eq!(*fate_of(&plan, "/fw-cfg@9020000"), Fate::Withheld);
        assert!(plan.decisions.iter().all(|d| d.fate == Fate::Withheld));
        assert_eq!(*fate_of(&plan, "/intc@8000000/its@8080000"), Fate::Withheld);
        let withheld = plan.withheld_ranges();
        for must in [ITS, VIRTIO, ECAM, r(0x1000_0000, 0x3eff_0000), r(0x3eff_0000, 0x3f00_0000), r(0x80_0000_0000, 0x100_0000_0000), r(0x902_0000, 0x902_1000)] {
            assert!(withheld.iter().any(|w| w.contains_range(&must)), "{must} is not withheld: {withheld:?}");
        }
        // Nothing else: the UART, RTC, GPIO, flash and the GIC's
        // distributor and redistributors stay.
        let kept = range::subtract_all(&dt::parse(VIRT).unwrap().devices, &withheld);
        for must in [r(0x900_0000, 0x900_1000), r(0x800_0000, 0x801_0000), r(0x80a_0000, 0x900_0000), r(0, 0x800_0000)] {
            assert!(kept.iter().any(|k| k.contains_range(&must)), "{must} was withheld: {kept:?}");
        }
        assert!(!plan.any_given_back());
    }

    #[test]
    fn the_host_tree_loses_the_withheld_nodes_and_references() {
        let plan = plan(VIRT, false).unwrap();
        let out = host_tree(VIRT, &plan);
        let fdt = Fdt::new(&out).unwrap();
        assert!(fdt.find_node("/intc@8000000/its@8080000").is_none());
        assert!(fdt.find_node("/intc@8000000").is_some(), "the GIC itself stays");
        assert!(fdt.find_node("/virtio_mmio@a000000").is_none());
        assert!(fdt.find_node("/pcie@10000000").is_none());
        assert!(fdt.find_node("/fw-cfg@9020000").is_none());
        assert!(fdt.find_node("/pl011@9000000").is_some());
        // The host's MMIO, read back from its tree, avoids every withheld range.
        let info = dt::parse(&out).unwrap();
        for d in &info.devices {
            for w in plan.withheld_ranges() {
                assert!(!d.overlaps(&w), "{d} overlaps withheld {w}");
            }
        }
        // Nothing is left to withhold.
        assert!(super::plan(&out, false).unwrap().decisions.is_empty());
    }

    #[test]
    fn behind_the_smmu_pci_stays_and_the_smmu_goes() {
        let plan = plan(VIRT_SMMU, false).unwrap();
        assert_eq!(*fate_of(&plan, "/smmuv3@9050000"), Fate::Withheld);
        assert_eq!(*fate_of(&plan, "/pcie@10000000"), Fate::Guarded { smmu: "/smmuv3@9050000".into() });
        assert_eq!(*fate_of(&plan, "/intc@8000000/its@8080000"), Fate::Withheld);
        assert_eq!(*fate_of(&plan, "/virtio_mmio@a000000"), Fate::Withheld);
        let withheld = plan.withheld_ranges();
        assert!(withheld.iter().any(|w| w.contains_range(&SMMU)));
        assert!(!withheld.iter().any(|w| w.overlaps(&ECAM)));
        let out = host_tree(VIRT_SMMU, &plan);
        let fdt = Fdt::new(&out).unwrap();
        assert!(fdt.find_node("/smmuv3@9050000").is_none());
        let pcie = fdt.find_node("/pcie@10000000").unwrap();
        for gone in ["iommu-map", "iommu-map-mask", "msi-map", "msi-map-mask"] {
            assert!(pcie.property(gone).is_none(), "{gone} stayed");
        }
        assert!(pcie.property("interrupt-map").is_some(), "INTx routing stays");
        assert!(pcie.property("ranges").is_some());
        let info = dt::parse(&out).unwrap();
        assert!(info.devices.iter().any(|d| d.contains_range(&ECAM)));
        assert!(!info.devices.iter().any(|d| d.overlaps(&SMMU) || d.overlaps(&ITS)));
    }

    #[test]
    fn the_development_option_gives_back_only_the_unguarded_masters() {
        for (blob, smmu) in [(VIRT, false), (VIRT_SMMU, true)] {
            let plan = plan(blob, true).unwrap();
            assert!(plan.any_given_back());
            assert_eq!(*fate_of(&plan, "/virtio_mmio@a000000"), Fate::GivenBack);
            assert_eq!(*fate_of(&plan, "/intc@8000000/its@8080000"), Fate::Withheld, "the ITS never goes back");
            if smmu {
                assert_eq!(*fate_of(&plan, "/smmuv3@9050000"), Fate::Withheld, "the SMMU never goes back");
                assert!(matches!(fate_of(&plan, "/pcie@10000000"), Fate::Guarded { .. }));
            } else {
                assert_eq!(*fate_of(&plan, "/pcie@10000000"), Fate::GivenBack);
            }
            let out = host_tree(blob, &plan);
            let fdt = Fdt::new(&out).unwrap();
            assert!(fdt.find_node("/virtio_mmio@a000000").is_some());
            // Given-back PCI loses its msi-map: the ITS it names is gone.
            let pcie = fdt.find_node("/pcie@10000000").unwrap();
            assert!(pcie.property("msi-map").is_none());
        }
    }

    /// Edits a fixture's tree, returning the new blob.
    fn edit(blob: &[u8], f: impl FnOnce(&mut DeviceTree)) -> Vec<u8> {
        let mut tree = DeviceTree::from_fdt(&Fdt::new(blob).unwrap());
        f(&mut tree);
        tree.to_dtb()
    }

    fn set(tree: &mut DeviceTree, path: &str, name: &str, cells: &[u32]) {
        let mut node = &mut tree.root;
        for part in path.trim_start_matches('/').split('/') {
            node = node.child_mut(part).unwrap();
        }
        node.remove_property(name);
        node.add_property(dtoolkit::model::DeviceTreeProperty::new(name, cells.to_vec()).unwrap());
    }

    #[test]
    fn pci_is_guarded_only_when_every_requester_id_reaches_an_owned_smmu() {
        // The map covers only bus 0: devices on other buses would bypass.
        let partial = edit(VIRT_SMMU, |t| set(t, "/pcie@10000000", "iommu-map", &[0, SMMU_PH, 0, 0x100]));
        assert_eq!(*fate_of(&plan(&partial, false).unwrap(), "/pcie@10000000"), Fate::Withheld);
        // Two entries that together cover every ID are enough.
        let split = edit(VIRT_SMMU, |t| set(t, "/pcie@10000000", "iommu-map", &[0, SMMU_PH, 0, 0x8000, 0x8000, SMMU_PH, 0x8000, 0x8000]));
        assert!(matches!(fate_of(&plan(&split, false).unwrap(), "/pcie@10000000"), Fate::Guarded { .. }));
        // A bus range of buses 0..=1 needs only their 512 IDs.
        let small = edit(VIRT_SMMU, |t| {
            set(t, "/pcie@10000000", "bus-range", &[0, 1]);
            set(t, "/pcie@10000000", "iommu-map", &[0, SMMU_PH, 0, 0x200]);
        });
        assert!(matches!(fate_of(&plan(&small, false).unwrap(), "/pcie@10000000"), Fate::Guarded { .. }));
        // An entry that names something other than the SMMU (the ITS).
        let elsewhere = edit(VIRT_SMMU, |t| set(t, "/pcie@10000000", "iommu-map", &[0, ITS_PH, 0, 0x10000]));
        assert_eq!(*fate_of(&plan(&elsewhere, false).unwrap(), "/pcie@10000000"), Fate::Withheld);
        // Malformed maps are refused with the node's name.
        let bad = edit(VIRT_SMMU, |t| set(t, "/pcie@10000000", "iommu-map", &[0, SMMU_PH, 0]));
        assert!(matches!(plan(&bad, false), Err(BootError::BadProperty { property: "iommu-map", .. })));
    }

    #[test]
    fn platform_devices_with_iommus() {
        // fw-cfg behind the SMMU stays (its `iommus` goes); behind an
        // IOMMU Rampart does not own it leaves.
        let behind = edit(VIRT_SMMU, |t| set(t, "/fw-cfg@9020000", "iommus", &[SMMU_PH, 7]));
        let p = plan(&behind, false).unwrap();
        assert!(matches!(fate_of(&p, "/fw-cfg@9020000"), Fate::Guarded { .. }));
        let out = host_tree(&behind, &p);
        let fdt = Fdt::new(&out).unwrap();
        assert!(fdt.find_node("/fw-cfg@9020000").unwrap().property("iommus").is_none());
        // A cell count that runs off the end is malformed.
        let short = edit(VIRT_SMMU, |t| set(t, "/fw-cfg@9020000", "iommus", &[SMMU_PH]));
        assert!(matches!(plan(&short, false), Err(BootError::BadProperty { property: "iommus", .. })));
        // Naming a provider with no cell count is malformed too.
        let unknown = edit(VIRT_SMMU, |t| set(t, "/fw-cfg@9020000", "iommus", &[0x1234, 0]));
        assert!(matches!(plan(&unknown, false), Err(BootError::BadProperty { property: "iommus", .. })));
    }

    #[test]
    fn corrupted_trees_give_errors_not_panics() {
        // Flip bytes of the structure and strings blocks at random
        // (xorshift, fixed seed); whatever parses must plan and apply
        // without panicking.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut planned, mut refused) = (0, 0);
        for _ in 0..3000 {
            let mut blob = VIRT_SMMU.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = 0x40 + usize::try_from(next() % (blob.len() as u64 - 0x40)).unwrap();
                blob[at] = next().to_le_bytes()[0];
            }
            if Fdt::new(&blob).is_err() {
                continue;
            }
            match plan(&blob, next() % 2 == 0) {
                Ok(p) => {
                    planned += 1;
                    let mut tree = DeviceTree::from_fdt(&Fdt::new(&blob).unwrap());
                    let _ = apply(&mut tree, &p);
                }
                Err(_) => refused += 1,
            }
        }
        assert!(planned > 100 && refused > 0, "{planned} planned, {refused} refused");
    }

    #[test]
    fn absurd_cell_counts_are_refused() {
        let huge = edit(VIRT, |t| set(t, "/pcie@10000000", "#address-cells", &[u32::MAX]));
        assert!(matches!(plan(&huge, false), Err(BootError::BadProperty { property: "#address-cells", .. })));
        let huge = edit(VIRT, |t| set(t, "/intc@8000000", "#size-cells", &[5]));
        assert!(matches!(plan(&huge, false), Err(BootError::BadProperty { property: "#size-cells", .. })));
    }

    #[test]
    fn disabled_nodes_are_ignored() {
        let off = edit(VIRT, |t| {
            let n = t.root.child_mut("virtio_mmio@a000000").unwrap();
            n.add_property(dtoolkit::model::DeviceTreeProperty::new("status", "disabled").unwrap());
        });
        let p = plan(&off, false).unwrap();
        assert!(p.decisions.iter().all(|d| d.master.path != "/virtio_mmio@a000000"));
        assert_eq!(p.decisions.len(), plan(VIRT, false).unwrap().decisions.len() - 1);
    }
}
