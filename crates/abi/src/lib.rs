//! The contract between Rampart and everything that calls it.
//!
//! This crate is the only code the hypervisor shares with its callers (the
//! host, guests and tools). It holds numbers, not behaviour: SMCCC function
//! IDs, how arguments and results are encoded, the error codes, and the boot
//! protocol's conventions. `docs/abi.md` documents every item here and a test
//! in `xtask` checks the two agree.
//!
//! Design rules:
//! - Every value that crosses a trust boundary is decoded with `TryFrom`;
//!   an unknown value is an error, never a default.
//! - Codes are stable: a number, once given a meaning, keeps it.

#![no_std]
#![forbid(unsafe_code)]

pub mod boot;
pub mod error;
pub mod guest;
pub mod host;
mod id_table;
pub mod rsi;
pub mod smccc;

pub use error::Error;
