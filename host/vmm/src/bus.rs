//! The guest's MMIO bus: the devices the VMM emulates and their interrupt
//! lines.

/// One interrupt line from a device to the guest's interrupt controller.
pub trait IrqLine: Send + Sync {
    /// Drives the line: `true` asserts it, `false` drops it. An
    /// edge-triggered line delivers one interrupt per assertion.
    fn set(&self, level: bool);
}

/// A device in a window of guest-physical MMIO space. `offset` is from the
/// window's base; `data` is 1, 2, 4 or 8 bytes, little-endian.
pub trait MmioDevice: Send {
    /// A guest load.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest store.
    fn write(&mut self, offset: u64, data: &[u8]);
}
