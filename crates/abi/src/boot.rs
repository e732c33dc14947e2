//! The boot protocol between the loader, Rampart and the host.
//!
//! Rampart is an arm64 Linux `Image` (it carries the 64-byte Image header),
//! so any loader that boots Linux boots Rampart: it is entered at EL2 with
//! `x0` = the physical address of the device tree. The loader also places the
//! host's own kernel (an arm64 `Image`) in RAM and names it on the command
//! line in `/chosen/bootargs`:
//!
//! ```text
//! rampart.host=<address> [more rampart.* options] [-- host command line]
//! ```
//!
//! Rampart removes every `rampart.` option, and the `--` separator if
//! present, and hands what remains to the host as its own `bootargs`.

/// Command-line key giving the size, in MiB, of the guest-memory pool
/// Rampart reserves at the top of RAM for a user-space VMM (0 or absent:
/// no pool).
pub const GUEST_POOL_KEY: &str = "rampart.pool";

/// Command-line key naming the physical address of the host's `Image`.
pub const HOST_IMAGE_KEY: &str = "rampart.host";
/// Command-line key that hands the DMA masters no SMMU Rampart owns guards
/// (virtio-mmio transports, PCI host bridges without an owned SMMU, other
/// `dma-coherent` devices) back to the host: `rampart.unguarded-dma=on`.
/// Development only: their DMA reaches all memory. `off` is the default.
pub const UNGUARDED_DMA_KEY: &str = "rampart.unguarded-dma";
/// Command-line key setting, in a test build with the oracle (issue 15,
/// `docs/design.md` "The oracle"), the events between two automatic
/// correspondence checks: `rampart.oracle-every=<K>` (0 = only on
/// `ORACLE_CHECK`). Other builds accept and ignore it.
pub const ORACLE_EVERY_KEY: &str = "rampart.oracle-every";
/// Command-line key naming the planted bug a test build with the
/// `mutants` feature turns on: `rampart.mutant=<name>` (`cargo xtask test`,
/// cases `oracle/mutant-*`; docs/testing.md). Any other build refuses it.
pub const MUTANT_KEY: &str = "rampart.mutant";
/// Prefix of every command-line option Rampart consumes.
pub const OPTION_PREFIX: &str = "rampart.";
/// Name of the `/reserved-memory` child node that describes the carve-out in
/// the host's device tree (the unit address follows the `@`).
pub const CARVEOUT_NODE_NAME: &str = "rampart-hypervisor";
/// `compatible` string of that node.
pub const CARVEOUT_COMPATIBLE: &str = "rampart,hypervisor-carveout";

/// Name (before the `@`) of the root node that describes the control pages.
pub const CONTROL_NODE_NAME: &str = "rampart-control";
/// `compatible` of the control node.
pub const CONTROL_COMPATIBLE: &str = "rampart,control";
/// Property of the control node: the number of channels (one page each).
pub const CONTROL_CHANNELS_PROPERTY: &str = "rampart,channels";
/// Property of the control node: the IPA width of every VM's stage 2 in
/// bits (a realm's `REALM_CONFIG.ipa_bits`), so the VMM knows a realm's
/// shared (unprotected alias) bit, `1 << (bits - 1)` (issue 12).
pub const CONTROL_IPA_BITS_PROPERTY: &str = "rampart,ipa-bits";
/// Name of the `/reserved-memory` child that describes the guest pool.
pub const GUEST_POOL_NODE_NAME: &str = "rampart-guest-pool";
/// `compatible` of the guest-pool node.
pub const GUEST_POOL_COMPATIBLE: &str = "rampart,guest-pool";

/// The control page: host user space (through `/dev/mem`) makes the same
/// calls as `HVC #0` by storing the registers into a channel page and
/// ringing its doorbell. Only naturally aligned 64-bit accesses are allowed.
pub mod control {
    /// Number of channels (pages).
    pub const CHANNELS: u64 = 16;
    /// Offset of register `xi` (i in 0..18) in a channel page: `8 * i`.
    pub const REGISTERS: u64 = 0x000;
    /// Number of registers in a channel.
    pub const REGISTER_COUNT: u64 = 18;
    /// Offset of the doorbell: a 64-bit store makes the call.
    pub const DOORBELL: u64 = 0x100;
    /// Offset of the **call** doorbell (host ABI 0.6): a 64-bit store of any
    /// value makes the call whose `x0`..`x17` are in the channel's bound page
    /// (see [`BIND`]), which the hypervisor reads exactly once; the results
    /// replace them there before the store retires. One trapped access per
    /// call. On a channel with no bound page the store is refused (an
    /// external abort), like any other access the protocol does not allow.
    pub const CALL: u64 = 0x180;
    /// Offset of the **bind** register (host ABI 0.6): a 64-bit store of the
    /// physical address of a page of host RAM the host shared with the
    /// hypervisor (`SHARE_HYP`) binds it to the channel as its call page; a
    /// store of 0 unbinds. The result code (`SUCCESS` or an error) replaces
    /// register `x0` of the channel (a load at offset 0 reads it).
    pub const BIND: u64 = 0x188;
    /// Offset in a bound call page of argument/result register `xi`
    /// (i in 0..18): `8 * i`, as in the channel itself.
    pub const CALL_PAGE_REGISTERS: u64 = 0x000;
    /// The first host ABI minor version (major 0) with [`CALL`] and [`BIND`].
    pub const CALL_PAGE_ABI_MINOR: u64 = 6;
}
