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

/// Command-line key naming the physical address of the host's `Image`.
pub const HOST_IMAGE_KEY: &str = "rampart.host";
/// Prefix of every command-line option Rampart consumes.
pub const OPTION_PREFIX: &str = "rampart.";
/// Name of the `/reserved-memory` child node that describes the carve-out in
/// the host's device tree (the unit address follows the `@`).
pub const CARVEOUT_NODE_NAME: &str = "rampart-hypervisor";
/// `compatible` string of that node.
pub const CARVEOUT_COMPATIBLE: &str = "rampart,hypervisor-carveout";
