//! `cargo xtask bench`: benchmarks whose figures go to docs/perf.md.

use anyhow::{Result, bail};

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark.
    pub which: String,
}

/// Runs a benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    bail!("unknown benchmark {}", args.which)
}
