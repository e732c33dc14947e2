//! PCI for the DMA checks: the device tree's generic ECAM host bridge
//! (`pci-host-ecam-generic`), its first bus enumerated, one function's
//! memory BAR 0 placed in the bridge's 32-bit memory window, memory
//! decoding and bus mastering switched on.
//!
//! The host bridge is read from the device tree once, into
//! [`Platform`](crate::platform::Platform) (`pci`), like everything else
//! the checks need. No firmware ran before the test host (QEMU loads it
//! directly), so no BAR is assigned yet: [`enable`] assigns the one it
//! needs. Header layout, BAR decoding and the command register come from
//! the `pci_types` crate; configuration reads and writes go through
//! [`arch::Ecam`].

use dtoolkit::fdt::FdtNode;
use dtoolkit::{Node, Property};
use pci_types::{Bar, CommandRegister, EndpointHeader, HeaderType, PciAddress, PciHeader};

use crate::arch::{self, Ecam};
use crate::msg::Msg;
use crate::ranges::Range;
use crate::{ensure, fail, msg};

/// The compatible string of the generic ECAM host bridge.
pub const ECAM_COMPATIBLE: &str = "pci-host-ecam-generic";

/// Bytes of configuration space per bus.
const BUS_SIZE: u64 = 1 << 20;

/// `phys.hi` of a `ranges` entry: the address-space code (bits 24..26).
const SPACE_SHIFT: u32 = 24;
/// Address-space code of 32-bit memory.
const SPACE_MEM32: u32 = 0b10;
/// Address-space code of 64-bit memory.
const SPACE_MEM64: u32 = 0b11;

/// Offset of BAR 0 in a type-0 header.
const BAR0: u16 = 0x10;

/// One memory window of the host bridge: CPU addresses
/// `cpu..cpu + size` reach PCI addresses `pci..pci + size`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// CPU (physical) address of the window.
    pub cpu: u64,
    /// PCI bus address the window starts at.
    pub pci: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The generic ECAM host bridge the device tree describes.
#[derive(Clone, Copy, Debug)]
pub struct HostBridge {
    /// The ECAM window (`reg`).
    pub ecam: Range,
    /// First bus (`bus-range`, else 0).
    pub first_bus: u8,
    /// Last bus the ECAM window covers.
    pub last_bus: u8,
    /// The 32-bit memory window (`ranges`), if any.
    pub mem32: Option<Window>,
    /// The 64-bit memory window (`ranges`), if any.
    pub mem64: Option<Window>,
}

impl HostBridge {
    /// Reads the bridge from its device-tree node.
    pub fn from_node(node: FdtNode<'_>) -> Result<Self, Msg> {
        let name = node.name();
        let reg = node
            .reg()
            .map_err(|e| msg!("{name}: bad reg: {e}"))?
            .and_then(|mut regs| regs.next())
            .ok_or_else(|| msg!("{name}: no reg"))?;
        let ecam_base = reg.address::<u64>().map_err(|e| msg!("{name}: reg: {e}"))?;
        let ecam_size = reg.size::<u64>().map_err(|e| msg!("{name}: reg: {e}"))?;
        ensure!(
            ecam_size >= BUS_SIZE && ecam_base.is_multiple_of(BUS_SIZE),
            "{name}: ECAM window {ecam_base:#x} + {ecam_size:#x} is not whole buses"
        );
        let (first_bus, last_bus_named) = match node.property("bus-range") {
            None => (0, 255),
            Some(p) => {
                let v = p.value();
                ensure!(v.len() == 8, "{name}: bus-range is not two cells");
                let cell = |at: usize| u32::from_be_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
                let (first, last) = (cell(0), cell(4));
                ensure!(
                    first <= last && last <= 255,
                    "{name}: bus-range {first}..{last}"
                );
                (first as u8, last as u8)
            }
        };
        // Bus `first_bus` is at the window's start; the window may cover
        // fewer buses than `bus-range` names.
        let buses_in_window = (ecam_size / BUS_SIZE).min(256);
        let last_bus =
            (u64::from(first_bus) + buses_in_window - 1).min(u64::from(last_bus_named)) as u8;
        let mut bridge = HostBridge {
            ecam: Range::from_base_size(ecam_base, ecam_size),
            first_bus,
            last_bus,
            mem32: None,
            mem64: None,
        };
        let Some(ranges) = node.ranges().map_err(|e| msg!("{name}: bad ranges: {e}"))? else {
            return Ok(bridge);
        };
        for range in ranges {
            let child = range
                .child_bus_address::<u128>()
                .map_err(|e| msg!("{name}: ranges: {e}"))?;
            let cpu = range
                .parent_bus_address::<u64>()
                .map_err(|e| msg!("{name}: ranges: {e}"))?;
            let size = range
                .length::<u64>()
                .map_err(|e| msg!("{name}: ranges: {e}"))?;
            let hi = (child >> 64) as u32;
            let window = Window {
                cpu,
                pci: child as u64,
                size,
            };
            match (hi >> SPACE_SHIFT) & 0b11 {
                SPACE_MEM32 if bridge.mem32.is_none() => bridge.mem32 = Some(window),
                SPACE_MEM64 if bridge.mem64.is_none() => bridge.mem64 = Some(window),
                _ => {}
            }
        }
        Ok(bridge)
    }

    /// Configuration access to this bridge's buses.
    pub fn config(&self) -> Ecam {
        Ecam::new(self.ecam.start, self.first_bus, self.last_bus)
    }

    /// The first function on the bridge's first bus with `vendor:device`.
    pub fn find(&self, vendor: u16, device: u16) -> Option<PciAddress> {
        let ecam = self.config();
        for slot in 0..32 {
            for function in 0..8 {
                let address = PciAddress::new(0, self.first_bus, slot, function);
                let header = PciHeader::new(address);
                let (v, d) = header.id(ecam);
                if v == 0xffff {
                    // No such function; without function 0 no others.
                    if function == 0 {
                        break;
                    }
                    continue;
                }
                if (v, d) == (vendor, device) {
                    return Some(address);
                }
                if function == 0 && !header.has_multiple_functions(ecam) {
                    break;
                }
            }
        }
        None
    }
}

/// A function's BAR 0 as [`enable`] placed it.
#[derive(Clone, Copy, Debug)]
pub struct MappedBar {
    /// CPU (physical) address of the BAR.
    pub cpu: u64,
    /// PCI bus address written to the BAR.
    pub pci: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Places BAR 0 of the endpoint at `address` (a 32-bit, non-prefetchable
/// memory BAR) at the start of the bridge's 32-bit window, then enables
/// memory decoding and bus mastering. Decoding is off while the BAR is
/// sized and written.
pub fn enable(bridge: &HostBridge, address: PciAddress) -> Result<MappedBar, Msg> {
    let ecam = bridge.config();
    let header = PciHeader::new(address);
    ensure!(
        header.header_type(ecam) == HeaderType::Endpoint,
        "{address}: not an endpoint (header type {:?})",
        header.header_type(ecam)
    );
    let Some(mut endpoint) = EndpointHeader::from_header(header, ecam) else {
        fail!("{address}: no endpoint header");
    };
    let Some(window) = bridge.mem32 else {
        fail!("the host bridge has no 32-bit memory window in its ranges");
    };
    endpoint.update_command(ecam, |c| {
        c - (CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE)
    });
    // pci_types panics on a reserved memory type; look first.
    let raw = ecam.read(address, BAR0);
    ensure!(
        raw & 1 == 0 && (raw >> 1) & 0b11 == 0,
        "{address}: BAR 0 reads {raw:#x}, not a 32-bit memory BAR"
    );
    let size = match endpoint.bar(0, ecam) {
        Some(Bar::Memory32 { size, .. }) => u64::from(size),
        other => fail!("{address}: BAR 0 is {other:?}, not a 32-bit memory BAR"),
    };
    ensure!(
        size.is_power_of_two() && size >= 16,
        "{address}: BAR 0 size {size:#x}"
    );
    let window_end = window.pci.checked_add(window.size);
    let Some(pci) = window.pci.checked_next_multiple_of(size).filter(|&pci| {
        pci.checked_add(size)
            .is_some_and(|end| window_end.is_some_and(|w| end <= w) && end <= 1 << 32)
    }) else {
        fail!(
            "{address}: BAR 0 ({size:#x} bytes) does not fit the 32-bit window {:#x} + {:#x}",
            window.pci,
            window.size
        );
    };
    ecam.write(address, BAR0, pci as u32);
    let readback = u64::from(ecam.read(address, BAR0) & !0xf);
    ensure!(
        readback == pci,
        "{address}: BAR 0 reads {readback:#x} after writing {pci:#x}"
    );
    endpoint.update_command(ecam, |c| {
        c | CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE
    });
    let command = endpoint.command(ecam);
    ensure!(
        command.contains(CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE),
        "{address}: command register {:#x}: memory decoding and bus mastering did not stay on",
        command.bits()
    );
    arch::dma_barrier();
    Ok(MappedBar {
        cpu: window.cpu.wrapping_add(pci - window.pci),
        pci,
        size,
    })
}
