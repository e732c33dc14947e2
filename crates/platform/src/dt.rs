//! Reading what the hypervisor needs from the boot device tree.
//!
//! The blob is validated as a whole by `dtoolkit` first; after that every
//! property is checked for size and value as it is read.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::{Node, Property};

use crate::{BootError, MemRange, PAGE_SIZE, range};

/// What the hypervisor takes from the boot device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceTreeInfo {
    /// RAM banks, sorted.
    pub memory: Vec<MemRange>,
    /// The MPIDR affinity value of each CPU, in device-tree order. CPU 0 in
    /// Rampart's numbering is the first one listed.
    pub cpus: Vec<u64>,
    /// The console UART (`/chosen/stdout-path`, else the first PL011).
    pub uart: Option<MemRange>,
    /// MMIO the host may use: every enabled node's `reg` outside RAM, and
    /// the windows of PCI host bridges, page-aligned and sorted.
    pub devices: Vec<MemRange>,
    /// `/chosen/bootargs`, empty if absent.
    pub bootargs: String,
    /// The initrd the loader placed, from `/chosen/linux,initrd-*`.
    pub initrd: Option<MemRange>,
    /// Ranges already reserved (`/memreserve/` entries and
    /// `/reserved-memory` children with a `reg`).
    pub reserved: Vec<MemRange>,
    /// `totalsize` from the header: the bytes the blob occupies.
    pub total_size: usize,
    /// `/chosen/rampart,device-secret`: the device secret, where the board
    /// provides it this way (QEMU test setups). Never handed to the host.
    pub device_secret: Option<[u8; 32]>,
    /// `/chosen/rampart,trusted-key`: extra Ed25519 public keys trusted to
    /// sign protected VMs (a multiple of 32 bytes).
    pub trusted_keys: Vec<[u8; 32]>,
}

fn malformed(e: impl core::fmt::Display) -> BootError {
    BootError::MalformedDeviceTree(e.to_string())
}

fn bad_property(node: &FdtNode<'_>, property: &'static str, reason: impl ToString) -> BootError {
    BootError::BadProperty {
        node: node.name().to_string(),
        property,
        reason: reason.to_string(),
    }
}

/// The `reg` entries of `node` as ranges.
fn regs(node: &FdtNode<'_>) -> Result<Vec<MemRange>, BootError> {
    let Some(entries) = node.reg().map_err(|e| bad_property(node, "reg", e))? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for reg in entries {
        let address: u64 = reg.address().map_err(|e| bad_property(node, "reg", e))?;
        let size: u64 = reg.size().map_err(|e| bad_property(node, "reg", e))?;
        let range = MemRange::from_base_size(address, size).ok_or_else(|| {
            bad_property(
                node,
                "reg",
                format!("{address:#x} + {size:#x} wraps around"),
            )
        })?;
        out.push(range);
    }
    Ok(out)
}

fn is_enabled(node: &FdtNode<'_>) -> bool {
    match node.property("status") {
        None => true,
        Some(p) => matches!(p.value_as::<&str>(), Ok("okay" | "ok")),
    }
}

fn string_property<'a>(
    node: &FdtNode<'a>,
    name: &'static str,
) -> Result<Option<&'a str>, BootError> {
    match node.property(name) {
        None => Ok(None),
        Some(p) => p
            .value_as::<&str>()
            .map(Some)
            .map_err(|e| bad_property(node, name, e)),
    }
}

fn u64_property(node: &FdtNode<'_>, name: &'static str) -> Result<Option<u64>, BootError> {
    let Some(p) = node.property(name) else {
        return Ok(None);
    };
    match p.value().len() {
        4 => p.value_as::<u32>().map(|v| Some(u64::from(v))),
        8 => p.value_as::<u64>().map(Some),
        n => {
            return Err(bad_property(
                node,
                name,
                format!("is {n} bytes, want 4 or 8"),
            ));
        }
    }
    .map_err(|e| bad_property(node, name, e))
}

fn has_compatible(node: &FdtNode<'_>, want: &str) -> bool {
    node.compatible().is_some_and(|mut c| c.any(|s| s == want))
}

/// Parses and checks the boot device tree.
///
/// # Errors
///
/// A [`BootError`] naming the malformed node or property, or the missing
/// piece (memory, CPUs, PSCI).
pub fn parse(blob: &[u8]) -> Result<DeviceTreeInfo, BootError> {
    let fdt = Fdt::new(blob).map_err(malformed)?;
    let total_size = blob.len();
    let root = fdt.root();

    let mut memory = Vec::new();
    let mut devices = Vec::new();
    let mut uart_candidates = Vec::new();
    let mut psci = None;
    for child in root.children() {
        let name = child.name_without_address();
        let device_type = string_property(&child, "device_type")?;
        if device_type == Some("memory") || name == "memory" {
            if is_enabled(&child) {
                memory.extend(regs(&child)?);
            }
            continue;
        }
        match name {
            "cpus" | "chosen" | "reserved-memory" | "aliases" => continue,
            "psci" => {
                psci = Some(child);
                continue;
            }
            _ => {}
        }
        if !is_enabled(&child) {
            continue;
        }
        collect_devices(&child, &mut devices)?;
        if has_compatible(&child, "arm,pl011")
            && let Some(first) = regs(&child)?.first()
        {
            uart_candidates.push((child.name().to_string(), *first));
        }
    }
    memory.retain(|r| !r.is_empty());
    memory.sort();
    if memory.is_empty() {
        return Err(BootError::NoMemory);
    }
    for pair in memory.windows(2) {
        if pair[0].overlaps(&pair[1]) {
            return Err(BootError::Overlap {
                what: "RAM bank",
                range: pair[0],
                with: "RAM bank",
                other: pair[1],
            });
        }
    }

    let psci = psci.ok_or(BootError::MissingNode("/psci"))?;
    match string_property(&psci, "method")? {
        Some("smc") => {}
        Some(other) => {
            return Err(BootError::UnsupportedPsci(format!(
                "method is `{other}`; Rampart owns EL2, so firmware must be reached by `smc`"
            )));
        }
        None => return Err(BootError::UnsupportedPsci("/psci has no `method`".into())),
    }

    let cpus_node = fdt
        .find_node("/cpus")
        .ok_or(BootError::MissingNode("/cpus"))?;
    let mut cpus = Vec::new();
    for cpu in cpus_node.children() {
        if string_property(&cpu, "device_type")? != Some("cpu") || !is_enabled(&cpu) {
            continue;
        }
        let reg = cpu
            .property("reg")
            .ok_or_else(|| bad_property(&cpu, "reg", "is missing"))?;
        let mpidr = match reg.value().len() {
            4 => u64::from(
                reg.value_as::<u32>()
                    .map_err(|e| bad_property(&cpu, "reg", e))?,
            ),
            8 => reg
                .value_as::<u64>()
                .map_err(|e| bad_property(&cpu, "reg", e))?,
            n => {
                return Err(bad_property(
                    &cpu,
                    "reg",
                    format!("is {n} bytes, want 4 or 8"),
                ));
            }
        };
        if let Some(method) = string_property(&cpu, "enable-method")?
            && method != "psci"
        {
            return Err(bad_property(
                &cpu,
                "enable-method",
                format!("is `{method}`, want `psci`"),
            ));
        }
        if cpus.contains(&mpidr) {
            return Err(bad_property(
                &cpu,
                "reg",
                format!("MPIDR {mpidr:#x} listed twice"),
            ));
        }
        cpus.push(mpidr);
    }
    if cpus.is_empty() {
        return Err(BootError::NoCpus);
    }

    let mut bootargs = String::new();
    let mut initrd = None;
    let mut stdout_path = None;
    let mut device_secret = None;
    let mut trusted_keys = Vec::new();
    if let Some(chosen) = fdt.find_node("/chosen") {
        if let Some(p) = chosen.property(DEVICE_SECRET_PROPERTY) {
            let bytes: [u8; 32] = p
                .value()
                .try_into()
                .map_err(|_| bad_property(&chosen, DEVICE_SECRET_PROPERTY, format!("is {} bytes, want 32", p.value().len())))?;
            device_secret = Some(bytes);
        }
        if let Some(p) = chosen.property(TRUSTED_KEY_PROPERTY) {
            let value = p.value();
            if value.is_empty() || value.len() % 32 != 0 {
                return Err(bad_property(
                    &chosen,
                    TRUSTED_KEY_PROPERTY,
                    format!("is {} bytes, want a non-zero multiple of 32", value.len()),
                ));
            }
            for key in value.chunks_exact(32) {
                let mut k = [0u8; 32];
                k.copy_from_slice(key);
                trusted_keys.push(k);
            }
        }
        if let Some(args) = string_property(&chosen, "bootargs")? {
            bootargs = args.to_string();
        }
        let start = u64_property(&chosen, "linux,initrd-start")?;
        let end = u64_property(&chosen, "linux,initrd-end")?;
        initrd = match (start, end) {
            (Some(s), Some(e)) => Some(MemRange::new(s, e).ok_or_else(|| {
                bad_property(
                    &chosen,
                    "linux,initrd-end",
                    format!("{e:#x} is before the start {s:#x}"),
                )
            })?),
            (None, None) => None,
            _ => {
                return Err(bad_property(
                    &chosen,
                    "linux,initrd-start",
                    "comes without its end",
                ));
            }
        };
        stdout_path = string_property(&chosen, "stdout-path")?
            .map(|p| p.split(':').next().unwrap_or(p).to_string());
    }
    let uart = match stdout_path.as_deref().map(|p| p.trim_start_matches('/')) {
        Some(path) => uart_candidates
            .iter()
            .find(|(n, _)| n == path)
            .map(|(_, r)| *r),
        None => None,
    }
    .or_else(|| uart_candidates.first().map(|(_, r)| *r));

    let mut reserved: Vec<MemRange> = Vec::new();
    for entry in fdt.memory_reservations() {
        let (address, size) = (entry.address(), entry.size());
        reserved.push(MemRange::from_base_size(address, size).ok_or_else(|| {
            malformed(format!(
                "/memreserve/ {address:#x} + {size:#x} wraps around"
            ))
        })?);
    }
    if let Some(rmem) = fdt.find_node("/reserved-memory") {
        for child in rmem.children() {
            reserved.extend(regs(&child)?);
        }
    }

    let devices = range::subtract_all(&range::merge(devices), &memory);
    Ok(DeviceTreeInfo {
        memory,
        cpus,
        uart,
        devices,
        bootargs,
        initrd,
        reserved,
        total_size,
        device_secret,
        trusted_keys,
    })
}

/// The GICv3 redistributor regions of the boot device tree: the `reg`
/// entries after the distributor's of the first enabled `arm,gic-v3` node
/// (`#redistributor-regions` of them, 1 if absent). Empty without a GICv3.
/// The hypervisor uses them for one thing only: to enable the EL2 timer's
/// PPI in each CPU's own redistributor (`docs/design.md`, the host's clock).
///
/// # Errors
///
/// A malformed blob, `reg` or `#redistributor-regions`, or fewer `reg`
/// entries than the regions named.
pub fn gic_redistributors(blob: &[u8]) -> Result<Vec<MemRange>, BootError> {
    let fdt = Fdt::new(blob).map_err(malformed)?;
    let mut pending = Vec::new();
    pending.push(fdt.root());
    while let Some(node) = pending.pop() {
        if !is_enabled(&node) {
            continue;
        }
        if has_compatible(&node, "arm,gic-v3") {
            let count = u64_property(&node, "#redistributor-regions")?.unwrap_or(1);
            let regs = regs(&node)?;
            let wanted = usize::try_from(count).ok().and_then(|c| c.checked_add(1));
            return match wanted {
                Some(end) if count > 0 && end <= regs.len() => Ok(regs[1..end].to_vec()),
                _ => Err(bad_property(
                    &node,
                    "reg",
                    format!("{} entries for {count} redistributor region(s)", regs.len()),
                )),
            };
        }
        pending.extend(node.children());
    }
    Ok(Vec::new())
}

/// An SMMUv3 in the boot device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuV3 {
    /// Its register frame (`reg`, page-aligned).
    pub regs: MemRange,
    /// The stream IDs devices use through it: `[start, end)` from every
    /// `iommu-map` (PCI) and `iommus` (platform devices) entry naming it.
    pub streams: Vec<(u64, u64)>,
    /// The tree says its walks are coherent (`dma-coherent`).
    pub coherent: bool,
}

impl SmmuV3 {
    /// One past the highest stream ID any device uses (0 if none).
    #[must_use]
    pub fn stream_end(&self) -> u64 {
        self.streams.iter().map(|&(_, end)| end).max().unwrap_or(0)
    }
}

/// Big-endian 32-bit cells of a property.
fn cells(value: &[u8]) -> impl Iterator<Item = u32> + '_ {
    value
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// Finds the SMMUv3 (`compatible = "arm,smmu-v3"`) and the stream IDs
/// that devices use through it. `Ok(None)` if there is none.
///
/// # Errors
///
/// A malformed SMMU node, an `iommu-map` or `iommus` entry naming it that
/// does not parse (its `#iommu-cells` must be 1), or more than one enabled
/// SMMUv3: Rampart owns exactly one, and an SMMU it did not take would
/// leave its devices in bypass.
pub fn smmu_v3(blob: &[u8]) -> Result<Option<SmmuV3>, BootError> {
    let fdt = Fdt::new(blob).map_err(malformed)?;
    let mut found: Option<(SmmuV3, Option<u32>)> = None;
    let mut users = Vec::new();
    let mut pending = Vec::new();
    pending.push(fdt.root());
    while let Some(node) = pending.pop() {
        if !is_enabled(&node) {
            continue;
        }
        if has_compatible(&node, "arm,smmu-v3") {
            if found.is_some() {
                return Err(bad_property(
                    &node,
                    "compatible",
                    "a second SMMUv3: Rampart owns exactly one",
                ));
            }
            let regs = regs(&node)?;
            let frame = regs
                .first()
                .copied()
                .and_then(page_cover)
                .ok_or_else(|| bad_property(&node, "reg", "is missing"))?;
            if frame.size() < crate::smmu::reg::FRAME_SIZE {
                return Err(bad_property(
                    &node,
                    "reg",
                    format!("{frame} is smaller than the two 64 KiB register pages"),
                ));
            }
            if u64_property(&node, "#iommu-cells")? != Some(1) {
                return Err(bad_property(
                    &node,
                    "#iommu-cells",
                    "must be 1 (a stream ID)",
                ));
            }
            let phandle = u64_property(&node, "phandle")?.and_then(|p| u32::try_from(p).ok());
            let coherent = node.property("dma-coherent").is_some();
            found = Some((
                SmmuV3 {
                    regs: frame,
                    streams: Vec::new(),
                    coherent,
                },
                phandle,
            ));
        }
        if let Some(map) = node.property("iommu-map") {
            users.push((node.name().to_string(), "iommu-map", map.value().to_vec()));
        }
        if let Some(iommus) = node.property("iommus") {
            users.push((node.name().to_string(), "iommus", iommus.value().to_vec()));
        }
        pending.extend(node.children());
    }
    let Some((mut smmu, phandle)) = found else {
        return Ok(None);
    };
    let bad = |node: &str, property: &'static str, reason: &str| BootError::BadProperty {
        node: node.to_string(),
        property,
        reason: reason.to_string(),
    };
    for (node, property, value) in users {
        if value.len() % 4 != 0 {
            return Err(bad(&node, property, "is not a list of 32-bit cells"));
        }
        let cells: Vec<u32> = cells(&value).collect();
        // iommu-map: (rid-base, iommu, iommu-base, length); iommus: (iommu, id).
        let width = if property == "iommu-map" { 4 } else { 2 };
        if cells.is_empty() || !cells.len().is_multiple_of(width) {
            return Err(bad(
                &node,
                property,
                "has a partial entry (the SMMU's #iommu-cells is 1)",
            ));
        }
        for entry in cells.chunks_exact(width) {
            let (target, base, length) = if width == 4 {
                (entry[1], entry[2], entry[3])
            } else {
                (entry[0], entry[1], 1)
            };
            if phandle.is_some_and(|p| p != target) {
                continue;
            }
            let end = u64::from(base) + u64::from(length);
            if length == 0 || end > 1 << 32 {
                return Err(bad(
                    &node,
                    property,
                    "names an empty stream range or one past 2^32",
                ));
            }
            smmu.streams.push((u64::from(base), end));
        }
    }
    Ok(Some(smmu))
}

/// `/chosen` property holding the device secret (32 bytes).
pub const DEVICE_SECRET_PROPERTY: &str = "rampart,device-secret";
/// `/chosen` property holding extra trusted signing keys (32 bytes each).
pub const TRUSTED_KEY_PROPERTY: &str = "rampart,trusted-key";

/// Adds the MMIO of `node` and of its descendants reached through identity
/// (`ranges;`) buses, plus PCI host bridge windows.
fn collect_devices(node: &FdtNode<'_>, out: &mut Vec<MemRange>) -> Result<(), BootError> {
    for r in regs(node)? {
        if let Some(aligned) = page_cover(r) {
            out.push(aligned);
        }
    }
    if string_property(node, "device_type")? == Some("pci") {
        if let Some(ranges) = node.ranges().map_err(|e| bad_property(node, "ranges", e))? {
            for window in ranges {
                let parent: u64 = window
                    .parent_bus_address()
                    .map_err(|e| bad_property(node, "ranges", e))?;
                let len: u64 = window
                    .length()
                    .map_err(|e| bad_property(node, "ranges", e))?;
                let r = MemRange::from_base_size(parent, len)
                    .ok_or_else(|| bad_property(node, "ranges", "a window wraps around"))?;
                if let Some(aligned) = page_cover(r) {
                    out.push(aligned);
                }
            }
        }
        return Ok(());
    }
    // Children share the parent's address space only through an empty
    // `ranges`; other translations are not followed.
    if node
        .property("ranges")
        .is_some_and(|p| p.value().is_empty())
    {
        for child in node.children() {
            if is_enabled(&child) {
                collect_devices(&child, out)?;
            }
        }
    }
    Ok(())
}

/// The page-aligned range that covers `r`, if it is not empty and fits.
fn page_cover(r: MemRange) -> Option<MemRange> {
    if r.is_empty() {
        return None;
    }
    let start = range::align_down(r.start(), PAGE_SIZE);
    let end = range::align_up(r.end(), PAGE_SIZE)?;
    MemRange::new(start, end)
}

#[cfg(test)]
mod tests;
