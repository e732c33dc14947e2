//! Helpers shared by the differential test and the fuzz target (which
//! includes this directory with `#[path]`).

#![allow(dead_code, reason = "each user needs a different subset")]

pub mod harness;
pub mod reference;
