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
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::report;

/// Runs `argv`, passes its output on and prints when `marker` appeared.
pub fn run(marker: &str, argv: &[String]) -> Result<ExitCode> {
    let (seen, code) = watch(marker, argv, &mut std::io::stdout())?;
    println!("{}", report::time_to_line(marker, seen));
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

/// Runs `argv`, copies its standard output to `out` a line at a time and
/// returns when the first line containing `marker` was read (after the
/// spawn) and the exit status (128 + the signal if killed by one).
fn watch(marker: &str, argv: &[String], out: &mut dyn Write) -> Result<(Option<Duration>, i32)> {
    let (program, args) = argv.split_first().context("no COMMAND")?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pipe = child.stdout.take().context("no pipe from the command")?;
    let mut seen = None;
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if seen.is_none() && contains(&line, marker.as_bytes()) {
            seen = Some(started.elapsed());
        }
        out.write_all(&line)?;
        out.flush()?;
    }
    let status = child.wait().context("waiting for the command")?;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok((seen, code))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker_in_a_line() {
        assert!(contains(
            b"[pl1] RAMPART-GUEST: init reached: 7.2\n",
            b"init reached"
        ));
        assert!(!contains(b"init reache", b"init reached"));
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn times_the_marker_and_passes_output_and_status_on() {
        let mut out = Vec::new();
        let (seen, code) = watch(
            "MARK",
            &sh("echo a; sleep 0.3; echo xMARKy; echo MARK again; exit 3"),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"a\nxMARKy\nMARK again\n");
        assert_eq!(code, 3);
        let at = seen.unwrap();
        assert!(
            at >= Duration::from_millis(300) && at < Duration::from_secs(20),
            "{at:?}"
        );
        let (seen, code) = watch("MARK", &sh("echo nothing"), &mut Vec::new()).unwrap();
        assert_eq!((seen, code), (None, 0));
        let (_, code) = watch("MARK", &sh("kill -9 $$"), &mut Vec::new()).unwrap();
        assert_eq!(code, 128 + 9);
        assert!(watch("MARK", &["/nonexistent/vmm".into()], &mut Vec::new()).is_err());
    }
}
