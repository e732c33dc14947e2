//! Parsers for command-line values: sizes and hex.

use std::str::FromStr;

/// Parses a size or offset: decimal or `0x` hex, with an optional `K`, `M`
/// or `G` suffix (powers of 1024).
///
/// # Errors
///
/// A message saying what is wrong.
pub fn size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = if let Some(hex) = number
        .strip_prefix("0x")
        .or_else(|| number.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
    } else {
        number.parse()
    }
    .map_err(|_| format!("{text:?} is not a number (decimal or 0x hex, optional K/M/G)"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Decodes hex (an optional `0x`, whitespace ignored).
///
/// # Errors
///
/// A message saying what is wrong.
pub fn hex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let s = std::str::from_utf8(pair).map_err(|_| format!("not hex at digit {}", 2 * i))?;
            u8::from_str_radix(s, 16).map_err(|_| format!("not hex at digit {}: {s:?}", 2 * i))
        })
        .collect()
}

/// Decodes exactly 32 bytes of hex.
///
/// # Errors
///
/// A message saying what is wrong.
pub fn hex32(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex(text)?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("expected 32 bytes (64 hex digits), got {len} bytes"))
}

/// The marker the attest guest prints before its report on the console
/// (`[attest] GUEST-REPORT d284…`).
pub const REPORT_MARKER: &str = "GUEST-REPORT";

/// A report as given: the raw COSE_Sign1 bytes, or hex text as the console
/// prints it — with or without the `GUEST-REPORT` marker (and whatever
/// precedes it on its line), with any whitespace and line ends.
///
/// Raw bytes are told from text by their first byte: a COSE_Sign1 starts
/// with 0xd2 (tag 18) or 0x84 (an untagged array), never with ASCII.
///
/// # Errors
///
/// A message saying what is wrong with the text.
pub fn report(raw: &[u8]) -> Result<Vec<u8>, String> {
    if !raw.is_ascii() {
        return Ok(raw.to_vec());
    }
    // ASCII, so UTF-8.
    let text = std::str::from_utf8(raw).map_err(|_| "not text".to_string())?;
    let marked: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_once(REPORT_MARKER).map(|(_, rest)| rest))
        .collect();
    let digits = match marked.as_slice() {
        [] => text,
        [one] => one,
        more => {
            return Err(format!(
                "{} {REPORT_MARKER} lines: keep the one to verify",
                more.len()
            ));
        }
    };
    if digits.trim().is_empty() {
        return Err("no report: the text is empty".to_string());
    }
    hex(digits).map_err(|e| format!("a report as text is hex ({REPORT_MARKER} optional): {e}"))
}

/// Whether `text` looks like a key given as hex rather than a file name:
/// only hex digits (after an optional `0x`).
#[must_use]
pub fn looks_like_hex(text: &str) -> bool {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 32 bytes given as hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hex32(pub [u8; 32]);

impl FromStr for Hex32 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        hex32(s).map(Hex32)
    }
}

/// Bytes given as hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl FromStr for HexBytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        hex(s).map(HexBytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("0x1000"), Ok(4096));
        assert_eq!(size("16M"), Ok(16 << 20));
        assert_eq!(size("4k"), Ok(4096));
        assert_eq!(size("0x10M"), Ok(16 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert!(size("").is_err());
        assert!(size("M").is_err());
        assert!(size("12Q").is_err());
        assert!(size("-1").is_err());
        assert!(size("99999999999999G").unwrap_err().contains("too large"));
    }

    #[test]
    fn hex_values() {
        assert_eq!(hex(""), Ok(vec![]));
        assert_eq!(hex("0x00ff10"), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(hex("ab cd\n"), Ok(vec![0xab, 0xcd]));
        assert!(hex("abc").unwrap_err().contains("odd"));
        assert!(hex("zz").unwrap_err().contains("not hex at digit 0"));
        assert!(hex32("00").unwrap_err().contains("got 1 bytes"));
        assert_eq!(hex32(&"11".repeat(32)), Ok([0x11; 32]));
    }

    #[test]
    fn reports_as_bytes_or_console_text() {
        let raw = [0xd2, 0x84, 0x43, 0xa1];
        assert_eq!(report(&raw), Ok(raw.to_vec()));
        for text in [
            "d2844 3a1",
            "d28443a1\n",
            "GUEST-REPORT d28443a1\n",
            "  [attest] GUEST-REPORT d28443a1\r\n",
            "boot log\n[attest] GUEST-NONCE 0102\n[attest] GUEST-REPORT d28443a1\nmore\n",
        ] {
            assert_eq!(report(text.as_bytes()), Ok(raw.to_vec()), "{text:?}");
        }
        assert!(
            report(b"GUEST-REPORT aa\nGUEST-REPORT bb\n")
                .unwrap_err()
                .contains("2 GUEST-REPORT lines")
        );
        assert!(report(b"GUEST-REPORT zz").unwrap_err().contains("not hex"));
        assert!(report(b"GUEST-REPORT \n").unwrap_err().contains("empty"));
        assert!(report(b"").unwrap_err().contains("empty"));
        assert!(looks_like_hex("0xabcdef"));
        assert!(looks_like_hex(&"a".repeat(62)));
        assert!(!looks_like_hex("attestation.pub"));
        assert!(!looks_like_hex(""));
    }
}
