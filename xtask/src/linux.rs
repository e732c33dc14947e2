//! The stock Linux host: Debian's arm64 cloud kernel and a busybox initramfs.
//!
//! (Being written: fetch + initramfs.)

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Printed by `/init` as its first line.
pub const INIT_MARKER: &str = "RAMPART-INIT: start";

/// A kernel and initramfs ready to boot.
pub struct LinuxHost {
    /// The kernel's uncompressed arm64 `Image`.
    pub kernel: PathBuf,
    /// The gzip'd newc initramfs.
    pub initramfs: PathBuf,
    /// The Debian kernel package version.
    pub version: String,
}

/// Fetches (or reuses) the kernel and busybox and builds the initramfs.
pub fn prepare() -> Result<LinuxHost> {
    bail!("not yet")
}
