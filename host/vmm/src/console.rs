//! The guest console (bytes → lines) and the test guests' line protocol
//! (`rampart_abi::guest::test_protocol`, `guest/README.md`).

use rampart_abi::guest::test_protocol::{
    DONE, FAIL, PASS, PROBE, RELINQUISHED, SHARED, SKIP, UNSHARED,
};

/// Longest line kept; longer ones are split. Room for the attest guest's
/// `GUEST-REPORT <hex>` line: a report of up to 512 bytes
/// (`rampart_attest::MAX_REPORT_SIZE`) is 1024 hex digits.
pub const MAX_LINE: usize = 2048;

/// Assembles UART bytes into lines.
#[derive(Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Adds a byte; returns a finished line (without `\n`, `\r` dropped).
    pub fn push(&mut self, byte: u8) -> Option<String> {
        match byte {
            b'\n' => Some(self.take()),
            b'\r' => None,
            _ => {
                self.buf.push(byte);
                (self.buf.len() >= MAX_LINE).then(|| self.take())
            }
        }
    }

    /// What is left (a last line without `\n`), if anything.
    pub fn flush(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        line
    }
}

/// What a line asks of the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing.
    None,
    /// `GUEST-PASS`.
    Pass,
    /// `GUEST-FAIL`.
    Fail,
    /// `GUEST-SKIP`.
    Skip,
    /// `GUEST-DONE n passed, m failed` (None if malformed).
    Done(Option<(u32, u32)>),
    /// `GUEST-SHARED 0x<ipa>`: answer the ping.
    Shared(u64),
    /// `GUEST-UNSHARED 0x<ipa>`: the host must be refused that page now.
    Unshared(u64),
    /// `GUEST-RELINQUISHED 0x<ipa>`: the page is the host's again, zeroed.
    Relinquished(u64),
    /// `GUEST-PROBE <name> 0x<ipa>`: a memory fault may follow.
    Probe(u64),
}

fn hex_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?.split_whitespace().last()?;
    u64::from_str_radix(rest.strip_prefix("0x")?, 16).ok()
}

/// `<n> passed, <m> failed`.
#[must_use]
pub fn parse_done(rest: &str) -> Option<(u32, u32)> {
    let (passed, failed) = rest.trim().split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.trim().parse().ok()?, failed.trim().parse().ok()?))
}

/// Classifies a console line.
#[must_use]
pub fn classify(line: &str) -> Event {
    if line.starts_with(PASS) {
        Event::Pass
    } else if line.starts_with(FAIL) {
        Event::Fail
    } else if line.starts_with(SKIP) {
        Event::Skip
    } else if let Some(rest) = line.strip_prefix(DONE) {
        Event::Done(parse_done(rest))
    } else if let Some(ipa) = hex_after(line, SHARED) {
        Event::Shared(ipa)
    } else if let Some(ipa) = hex_after(line, UNSHARED) {
        Event::Unshared(ipa)
    } else if let Some(ipa) = hex_after(line, RELINQUISHED) {
        Event::Relinquished(ipa)
    } else if let Some(ipa) = hex_after(line, PROBE) {
        Event::Probe(ipa)
    } else {
        Event::None
    }
}

/// The test protocol's running totals for one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Console lines.
    pub lines: u64,
    /// `GUEST-PASS` lines.
    pub passed: u32,
    /// `GUEST-FAIL` lines.
    pub failed: u32,
    /// `GUEST-SKIP` lines.
    pub skipped: u32,
    /// The `GUEST-DONE` line's counts, once seen (`Some(None)`: malformed).
    pub done: Option<Option<(u32, u32)>>,
    /// Checks the VMM itself made for the share protocol that failed.
    pub vmm_failed: u32,
    /// ... and passed.
    pub vmm_passed: u32,
}

impl Tally {
    /// Counts a classified line.
    pub fn count(&mut self, event: &Event) {
        self.lines += 1;
        match event {
            Event::Pass => self.passed += 1,
            Event::Fail => self.failed += 1,
            Event::Skip => self.skipped += 1,
            Event::Done(d) => self.done = Some(*d),
            _ => {}
        }
    }

    /// Whether the run failed: the guest said so (a `GUEST-FAIL` line or a
    /// `GUEST-DONE` with failures or malformed), or a VMM check failed.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failed > 0
            || self.vmm_failed > 0
            || matches!(self.done, Some(None) | Some(Some((_, 1..))))
    }

    /// One line for the end of a run.
    #[must_use]
    pub fn summary(&self) -> String {
        let done = match self.done {
            None => "no GUEST-DONE line".to_string(),
            Some(None) => "a malformed GUEST-DONE line".to_string(),
            Some(Some((p, f))) => format!("GUEST-DONE {p} passed, {f} failed"),
        };
        format!(
            "{} passed, {} failed, {} skipped ({done}); VMM checks: {} passed, {} failed",
            self.passed, self.failed, self.skipped, self.vmm_passed, self.vmm_failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_lines() {
        let mut b = LineBuffer::default();
        let mut lines = Vec::new();
        for byte in b"one\r\ntwo\nthr" {
            if let Some(l) = b.push(*byte) {
                lines.push(l);
            }
        }
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(b.flush().as_deref(), Some("thr"));
        assert_eq!(b.flush(), None);
        let long: Vec<String> = (0..MAX_LINE + 3).filter_map(|_| b.push(b'x')).collect();
        assert_eq!(long.len(), 1);
        assert_eq!(long[0].len(), MAX_LINE);
        assert_eq!(b.push(0xff), None);
        assert_eq!(b.flush().unwrap().len(), 3 + 3);
    }

    #[test]
    fn classifies_the_protocol() {
        assert_eq!(classify("GUEST-PASS hypervisor"), Event::Pass);
        assert_eq!(classify("GUEST-FAIL x: y"), Event::Fail);
        assert_eq!(classify("GUEST-SKIP smp: one vCPU"), Event::Skip);
        assert_eq!(
            classify("GUEST-DONE 12 passed, 0 failed"),
            Event::Done(Some((12, 0)))
        );
        assert_eq!(classify("GUEST-DONE lots"), Event::Done(None));
        assert_eq!(
            classify("GUEST-SHARED 0x80042000"),
            Event::Shared(0x8004_2000)
        );
        assert_eq!(
            classify("GUEST-UNSHARED 0x80042000"),
            Event::Unshared(0x8004_2000)
        );
        assert_eq!(
            classify("GUEST-RELINQUISHED 0x80043000"),
            Event::Relinquished(0x8004_3000)
        );
        assert_eq!(
            classify("GUEST-PROBE past-end 0x80100000"),
            Event::Probe(0x8010_0000)
        );
        assert_eq!(classify("GUEST-SHARED nonsense"), Event::None);
        assert_eq!(classify("Hello from a Rampart guest"), Event::None);
    }

    #[test]
    fn tallies_and_verdicts() {
        let mut t = Tally::default();
        for line in [
            "GUEST-PASS a",
            "GUEST-SKIP b: c",
            "GUEST-DONE 1 passed, 0 failed",
        ] {
            t.count(&classify(line));
        }
        assert!(!t.failed());
        assert_eq!(t.lines, 3);
        assert!(t.summary().contains("GUEST-DONE 1 passed, 0 failed"));
        let mut bad = t.clone();
        bad.count(&classify("GUEST-DONE 1 passed, 2 failed"));
        assert!(bad.failed());
        let mut vmm = t.clone();
        vmm.vmm_failed = 1;
        assert!(vmm.failed());
        let mut malformed = t;
        malformed.count(&Event::Done(None));
        assert!(malformed.failed());
        // A guest that does not speak the protocol passes if it ends.
        assert!(!Tally::default().failed());
    }
}
