//! `rampart-peer time-to MARKER -- COMMAND...`: how long after a VMM was
//! started its output first had a line containing MARKER (for `cargo xtask
//! bench peer`'s "Linux guest: VMM start to /init", the same stopwatch for
//! `rampart-vmm` and `rampart-peer`).
//!
//! The clock starts just before COMMAND is spawned (so the VMM's `exec` is
//! in it, for both VMMs alike) and stops when the line is read from its
//! standard output, a pipe: both VMMs write a console line at a time.
//! Every line is passed on; standard error is COMMAND's own. Then the
//! result line ([`crate::report::time_to_line`]) and COMMAND's exit status
//! (128 + the signal if it was killed by one).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::report;

/// Runs `argv`, passes its output on and prints when `marker` appeared.
pub fn run(marker: &str, argv: &[String]) -> Result<ExitCode> {
    let (program, args) = argv.split_first().context("no COMMAND")?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let out = child.stdout.take().context("no pipe from the command")?;
    let mut seen = None;
    let mut reader = BufReader::new(out);
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if seen.is_none() && contains(&line, marker.as_bytes()) {
            seen = Some(started.elapsed());
        }
        let mut o = stdout.lock();
        o.write_all(&line)?;
        o.flush()?;
    }
    let status = child.wait().context("waiting for the command")?;
    println!("{}", report::time_to_line(marker, seen));
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker_in_a_line() {
        assert!(contains(b"[pl1] RAMPART-GUEST: init reached: 7.2\n", b"init reached"));
        assert!(!contains(b"init reache", b"init reached"));
    }
}
