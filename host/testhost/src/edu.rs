//! A driver for QEMU's `edu` PCI device (`hw/misc/edu.c`): a bus master
//! whose DMA engine the host points at any address, which is what the DMA
//! checks need.
//!
//! BAR 0 (1 MiB) holds 32-bit registers below 0x80 (0x00 identification
//! `0x010000ed`, 0x04 liveness: reads back the bitwise inverse of what was
//! written) and the DMA registers, 64-bit wide: 0x80 source, 0x88
//! destination, 0x90 count, 0x98 command (bit 0 start, reads 1 until the
//! transfer ends; bit 1 direction: 0 RAM to the device's buffer, 1 the
//! buffer to RAM; bit 2 raise an interrupt, never set here). The buffer is
//! 4 KiB at device address 0x40000; it is reachable only through DMA. A
//! transfer runs 100 ms (QEMU's virtual clock) after the command is
//! written; the driver polls the command register, bounded by a time-out.
//!
//! Two facts of QEMU 7.2's model shape the driver:
//! - The device ANDs every RAM address with its `dma_mask` property, 28
//!   bits by default: it must be started with `dma_mask=` wide enough for
//!   RAM at 0x4000_0000 and above (xtask passes all ones). A too-narrow
//!   mask sends the transfer elsewhere; `dma-host-to-host` sees that.
//! - Its buffer-range check stops QEMU (`hw_error`) unless
//!   `offset + count < 4096`, strictly (fixed in later QEMU): the driver
//!   refuses every transfer that would reach the buffer's last byte.

use pci_types::PciAddress;

use crate::arch;
use crate::cpus;
use crate::msg::Msg;
use crate::pci::{self, HostBridge, MappedBar};
use crate::platform::Platform;
use crate::{ensure, fail};

/// QEMU's PCI vendor ID.
pub const VENDOR: u16 = 0x1234;
/// The `edu` device's ID.
pub const DEVICE: u16 = 0x11e8;

/// Identification register: `0x010000ed` (version 1.0, magic `0xed`).
const ID: u64 = 0x00;
/// Liveness register: reads the inverse of the last write.
const LIVENESS: u64 = 0x04;
/// DMA source address.
const DMA_SOURCE: u64 = 0x80;
/// DMA destination address.
const DMA_DESTINATION: u64 = 0x88;
/// DMA byte count.
const DMA_COUNT: u64 = 0x90;
/// DMA command.
const DMA_COMMAND: u64 = 0x98;
/// Command bit 0: start; reads 1 while the transfer is pending.
const COMMAND_RUN: u64 = 1 << 0;
/// Command bit 1: from the device's buffer to RAM (0: RAM to the buffer).
const COMMAND_TO_RAM: u64 = 1 << 1;
/// The magic in the identification register's low byte.
const MAGIC: u32 = 0xed;

/// Device address of the DMA buffer.
pub const BUFFER: u64 = 0x40000;
/// Bytes in the DMA buffer.
pub const BUFFER_SIZE: u64 = 4096;
/// The most bytes one transfer moves here: half the buffer, so that
/// `offset + count` stays below `BUFFER_SIZE` for offsets 0..2040.
pub const MAX_TRANSFER: u64 = BUFFER_SIZE / 2;
/// How long a transfer may take: 100 ms in the model, on a busy machine.
const TIMEOUT_MS: u64 = 3_000;

/// The `edu` device, BAR 0 mapped, bus mastering on.
pub struct Edu {
    /// Where it sits.
    pub address: PciAddress,
    /// Its register BAR.
    pub bar: MappedBar,
}

/// Direction of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// RAM to the device's buffer (the device reads RAM).
    ToDevice,
    /// The device's buffer to RAM (the device writes RAM).
    ToRam,
}

impl Edu {
    /// Finds the `edu` device on the device tree's ECAM host bridge,
    /// maps its BAR 0, enables it as a bus master and checks it answers.
    /// `Ok(None)`: there is no host bridge, or no `edu` on its first bus.
    pub fn probe(p: &Platform) -> Result<Option<Edu>, Msg> {
        let bridge: &HostBridge = match &p.pci {
            None => return Ok(None),
            Some(Err(e)) => fail!("the device tree's {}: {e}", pci::ECAM_COMPATIBLE),
            Some(Ok(bridge)) => bridge,
        };
        let Some(address) = bridge.find(VENDOR, DEVICE) else {
            return Ok(None);
        };
        let bar = pci::enable(bridge, address)?;
        ensure!(
            bar.size >= 0x100,
            "{address}: BAR 0 is {:#x} bytes, too small for edu's registers",
            bar.size
        );
        let edu = Edu { address, bar };
        let id = edu.read32(ID);
        ensure!(
            id & 0xff == MAGIC,
            "{address}: edu's identification register at {:#x} reads {id:#x}, expected magic {MAGIC:#x}",
            bar.cpu
        );
        for value in [0x1234_5678, 0xa5a5_0ff0] {
            arch::mmio_write32(bar.cpu + LIVENESS, value);
            let got = edu.read32(LIVENESS);
            ensure!(
                got == !value,
                "{address}: edu's liveness register: wrote {value:#x}, read {got:#x}"
            );
        }
        ensure!(
            edu.read64(DMA_COMMAND) & COMMAND_RUN == 0,
            "{address}: a DMA transfer is already pending"
        );
        Ok(Some(edu))
    }

    fn read32(&self, register: u64) -> u32 {
        arch::mmio_read32(self.bar.cpu + register)
    }

    fn read64(&self, register: u64) -> u64 {
        arch::mmio_read64(self.bar.cpu + register)
    }

    fn write64(&self, register: u64, value: u64) {
        arch::mmio_write64(self.bar.cpu + register, value);
    }

    /// The device reads `len` bytes of RAM at `ram` into its buffer at
    /// `offset`. Returns the milliseconds the transfer took.
    pub fn ram_to_device(&self, ram: u64, offset: u64, len: u64) -> Result<u64, Msg> {
        self.transfer(Direction::ToDevice, ram, offset, len)
    }

    /// The device writes `len` bytes of its buffer at `offset` to RAM at
    /// `ram`. Returns the milliseconds the transfer took.
    pub fn device_to_ram(&self, offset: u64, ram: u64, len: u64) -> Result<u64, Msg> {
        self.transfer(Direction::ToRam, ram, offset, len)
    }

    /// One transfer: checks the arguments (nothing is started on an error),
    /// orders earlier RAM writes before it, starts it and waits for the
    /// command register to say it ended.
    fn transfer(&self, direction: Direction, ram: u64, offset: u64, len: u64) -> Result<u64, Msg> {
        ensure!(
            len > 0
                && len <= MAX_TRANSFER
                && offset.checked_add(len).is_some_and(|end| end < BUFFER_SIZE),
            "edu: {len} bytes at buffer offset {offset:#x}: outside the {BUFFER_SIZE}-byte buffer (less its last byte)"
        );
        ensure!(
            ram.checked_add(len).is_some(),
            "edu: RAM address {ram:#x} + {len} wraps"
        );
        ensure!(
            self.read64(DMA_COMMAND) & COMMAND_RUN == 0,
            "edu: a transfer is still pending"
        );
        let (source, destination, command) = match direction {
            Direction::ToDevice => (ram, BUFFER + offset, COMMAND_RUN),
            Direction::ToRam => (BUFFER + offset, ram, COMMAND_RUN | COMMAND_TO_RAM),
        };
        self.write64(DMA_SOURCE, source);
        self.write64(DMA_DESTINATION, destination);
        self.write64(DMA_COUNT, len);
        for (register, want) in [
            (DMA_SOURCE, source),
            (DMA_DESTINATION, destination),
            (DMA_COUNT, len),
        ] {
            let got = self.read64(register);
            ensure!(
                got == want,
                "edu: DMA register {register:#x} reads {got:#x} after writing {want:#x}"
            );
        }
        // The source data (or the destination's old contents) must be in
        // memory before the device can see the command.
        arch::dma_barrier();
        let start = arch::counter();
        self.write64(DMA_COMMAND, command);
        loop {
            if self.read64(DMA_COMMAND) & COMMAND_RUN == 0 {
                break;
            }
            if cpus::elapsed_ms(start) > TIMEOUT_MS {
                fail!(
                    "edu: DMA {direction:?} of {len} bytes, RAM {ram:#x}, buffer offset {offset:#x}: still running after {TIMEOUT_MS} ms"
                );
            }
            arch::spin_hint();
        }
        // Reads of the destination come after the device said it is done.
        arch::dma_barrier();
        Ok(cpus::elapsed_ms(start))
    }
}
