//! Build-time configuration.

/// The most CPUs Rampart supports; a device tree with more is refused.
///
/// This bounds only the tiny per-CPU flags kept in static arrays (a stack
/// slot address, a few atomics: under 100 bytes a CPU); stacks and the
/// larger per-CPU state are allocated at boot for the CPUs the device tree
/// lists, in the carve-out's boot-sized part (`layout::place_boot_sized`).
/// 512 is what QEMU `virt` starts with GICv3 (`virt_max_cpus` with the
/// second, high redistributor region) and above the largest Arm servers
/// shipping (192 cores); GICv3's 16-bit target lists and PSCI's MPIDR
/// arguments allow more, so raising it costs only those static bytes.
pub const MAX_CPUS: usize = 512;

/// Bytes of stack per CPU (plus a guard page below each).
pub const STACK_SIZE: usize = 32 * 1024;

/// Bytes of each CPU's emergency stack, on which an exception taken at EL2
/// itself (always fatal: a stack overflow or another hypervisor bug) is
/// reported before the machine powers off. It has its own guard page.
pub const EMERGENCY_STACK_SIZE: usize = 8 * 1024;

/// The byte every stack is painted with at boot, so that the deepest use
/// can be read back (`arch::stack_high_water`).
pub const STACK_PAINT: u64 = 0x5354_4143_4b50_4149; // "STACKPAI"

/// The carve-out's fixed part: Rampart's image plus its heap and page
/// pool, starting at the image base. Set with `RAMPART_CARVEOUT_MIB` at
/// build time (a multiple of 2, at least 4); 16 MiB by default. What grows
/// with the machine (the ownership table, secondary CPUs' stacks and
/// per-CPU state) is sized at boot and placed at the top of RAM instead.
pub const CARVEOUT_SIZE: u64 = carveout_mib() << 20;

/// Bytes of the carve-out given to the heap (device-tree work at boot).
pub const HEAP_SIZE: usize = 2 << 20;

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
