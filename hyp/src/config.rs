//! Build-time configuration.

/// The most CPUs this build supports. A device tree with more is refused.
pub const MAX_CPUS: usize = 8;

/// Bytes of stack per CPU (plus a guard page below each).
pub const STACK_SIZE: usize = 32 * 1024;

/// Bytes of each CPU's emergency stack, on which an exception taken at EL2
/// itself (always fatal: a stack overflow or another hypervisor bug) is
/// reported before the machine powers off. It has its own guard page.
pub const EMERGENCY_STACK_SIZE: usize = 8 * 1024;

/// The byte every stack is painted with at boot, so that the deepest use
/// can be read back (`arch::stack_high_water`).
pub const STACK_PAINT: u64 = 0x5354_4143_4b50_4149; // "STACKPAI"

/// The carve-out: Rampart's image plus its heap and page pool, starting at
/// the image base. Set with `RAMPART_CARVEOUT_MIB` at build time (a
/// multiple of 2, at least 4); 16 MiB by default.
pub const CARVEOUT_SIZE: u64 = carveout_mib() << 20;

/// Bytes of the carve-out given to the heap (device-tree work at boot).
pub const HEAP_SIZE: usize = 1 << 20;

/// The console used before the device tree is read (QEMU virt's PL011);
/// boot errors found while reading the device tree are printed here.
pub const EARLY_UART: u64 = 0x0900_0000;

const fn carveout_mib() -> u64 {
    let Some(text) = option_env!("RAMPART_CARVEOUT_MIB") else { return 16 };
    let bytes = text.as_bytes();
    assert!(!bytes.is_empty(), "RAMPART_CARVEOUT_MIB is empty");
    let mut value = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        let digit = bytes[i];
        assert!(digit.is_ascii_digit(), "RAMPART_CARVEOUT_MIB must be a decimal number");
        value = value * 10 + (digit - b'0') as u64;
        i += 1;
    }
    assert!(value >= 4 && value.is_multiple_of(2), "RAMPART_CARVEOUT_MIB must be even and at least 4");
    value
}
