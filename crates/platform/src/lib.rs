//! Rampart's boot logic that needs no hardware: reading the device tree,
//! laying out memory, validating the host image and writing the host's
//! device tree.
//!
//! Design principles:
//! - Everything here is a pure function of its inputs, so it runs under
//!   `cargo test` on the build machine; the hypervisor only feeds it bytes
//!   read from memory and applies the result.
//! - Boot input is untrusted in the sense that it may be malformed: every
//!   failure is a [`BootError`] whose message says what was wrong and where.
//!   Nothing here panics on bad input.
//! - Address arithmetic is checked: ranges are half-open `[start, end)` and
//!   every sum that could overflow is computed with `checked_*`.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cache;
pub mod cmdline;
pub mod cpu;
pub mod devices;
pub mod dt;
pub mod gicr;
pub mod error;
pub mod hostdt;
pub mod image;
pub mod inject;
pub mod layout;
pub mod range;
pub mod smc;
pub mod smmu;
pub mod tables;
pub mod trap;

pub use error::BootError;
pub use range::MemRange;

/// The translation granule Rampart uses everywhere.
pub const PAGE_SIZE: u64 = 4096;
/// A level-2 block.
pub const BLOCK_2M: u64 = 2 << 20;
/// A level-1 block.
pub const BLOCK_1G: u64 = 1 << 30;
