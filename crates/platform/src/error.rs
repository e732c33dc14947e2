//! Why boot could not continue.

use alloc::string::String;
use core::fmt;

use crate::MemRange;

/// A reason the hypervisor refuses to boot. The `Display` text is printed on
/// the console before Rampart powers the machine off; it names what was
/// wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The loader passed no device tree (`x0` was 0).
    NoDeviceTree,
    /// The blob is not a valid flattened device tree.
    MalformedDeviceTree(String),
    /// A node the hypervisor needs is missing.
    MissingNode(&'static str),
    /// A property has the wrong size or value.
    BadProperty {
        /// Path or name of the node.
        node: String,
        /// Name of the property.
        property: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The device tree describes no RAM.
    NoMemory,
    /// The device tree lists no CPUs.
    NoCpus,
    /// More CPUs than the hypervisor was built for.
    TooManyCpus {
        /// CPUs in the device tree.
        found: usize,
        /// The build-time maximum.
        max: usize,
    },
    /// PSCI is missing or not reached through SMC.
    UnsupportedPsci(String),
    /// The carve-out does not fit in RAM.
    RamTooSmall {
        /// The carve-out the hypervisor needs.
        carveout: MemRange,
        /// The RAM bank it would have to sit in, if any.
        ram: Option<MemRange>,
        /// All RAM, in bytes.
        total: u64,
    },
    /// The part of the hypervisor's memory that grows with the machine (the
    /// ownership table, per-CPU stacks and state) has no room.
    NoRoomForHypervisor {
        /// CPUs in the device tree.
        cpus: usize,
        /// All RAM, in bytes.
        ram: u64,
        /// Bytes it needs.
        needed: u64,
        /// Why it cannot be placed.
        reason: String,
    },
    /// No `rampart.host=` on the command line.
    NoHostImage,
    /// The command line has an option Rampart does not understand.
    BadCommandLine(String),
    /// The host image is not a valid arm64 `Image` or does not fit.
    BadHostImage {
        /// Where the host image was said to be.
        address: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Two things the boot needs overlap.
    Overlap {
        /// The first thing.
        what: &'static str,
        /// Its range.
        range: MemRange,
        /// The thing it overlaps.
        with: &'static str,
        /// Its range.
        other: MemRange,
    },
    /// The host's device tree could not be written.
    HostDeviceTree(String),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::NoDeviceTree => write!(f, "no device tree: the loader passed x0 = 0"),
            BootError::MalformedDeviceTree(why) => write!(f, "malformed device tree: {why}"),
            BootError::MissingNode(node) => write!(f, "device tree has no {node} node"),
            BootError::BadProperty {
                node,
                property,
                reason,
            } => {
                write!(f, "device tree node {node}: property `{property}` {reason}")
            }
            BootError::NoMemory => write!(f, "device tree describes no RAM"),
            BootError::NoCpus => write!(f, "device tree lists no CPUs under /cpus"),
            BootError::TooManyCpus { found, max } => write!(
                f,
                "too many CPUs: the device tree lists {found}, this build supports at most {max}"
            ),
            BootError::UnsupportedPsci(why) => write!(f, "unsupported PSCI: {why}"),
            BootError::RamTooSmall { carveout, ram, total } => match ram {
                Some(ram) if ram.contains_range(carveout) => write!(
                    f,
                    "RAM too small: {} MiB of RAM leaves the host less than {} MiB beside the {} MiB carve-out",
                    total >> 20,
                    crate::layout::MIN_HOST_RAM >> 20,
                    carveout.size() >> 20
                ),
                Some(ram) => write!(
                    f,
                    "RAM too small: the carve-out {carveout} does not fit in the RAM bank {ram}"
                ),
                None => write!(f, "RAM too small: no RAM bank holds the carve-out {carveout}"),
            },
            BootError::NoRoomForHypervisor { cpus, ram, needed, reason } => write!(
                f,
                "no room for the hypervisor's per-machine memory: {cpus} CPUs and {} MiB of RAM need {} KiB (ownership table, per-CPU stacks and state), but {reason}",
                ram >> 20,
                needed.div_ceil(1024)
            ),
            BootError::NoHostImage => write!(
                f,
                "no host image: pass rampart.host=<address of the host's arm64 Image> in bootargs"
            ),
            BootError::BadCommandLine(why) => write!(f, "bad command line: {why}"),
            BootError::BadHostImage { address, reason } => {
                write!(f, "bad host image at {address:#x}: {reason}")
            }
            BootError::Overlap {
                what,
                range,
                with,
                other,
            } => {
                write!(f, "{what} {range} overlaps {with} {other}")
            }
            BootError::HostDeviceTree(why) => write!(f, "cannot write the host device tree: {why}"),
        }
    }
}
