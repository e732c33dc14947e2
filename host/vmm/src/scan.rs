//! `rampart-vmm scan-ram --phys ADDR --size SIZE --find HEX...` (issue 12):
//! what a host process sees of a guest's RAM through `/dev/mem`. Every page
//! is first probed with one load whose abort is caught
//! (`virtio::guest::reachable`): a page the hypervisor refuses to the host
//! (a protected guest's private page) counts as *aborted*; every other page
//! is read and searched for each pattern (matches straddling two readable
//! pages included), and readable pages holding any non-zero byte are
//! counted (after a VM's teardown there must be none).
//!
//! The realm test (`xtask/src/linux_realm.rs`) runs it on a live realm's
//! RAM: the secret the guest keeps in private memory must not appear,
//! while data it wrote to its virtio disk does (in the shared bounce
//! buffers), and most of its RAM must abort.

use anyhow::{Context, Result, bail};

use crate::mem::Mapping;

const PAGE: usize = 4096;

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Pages the host could read.
    pub readable: u64,
    /// Pages whose probe aborted.
    pub aborted: u64,
    /// Readable pages holding a non-zero byte (after a VM's teardown: none
    /// may).
    pub nonzero: u64,
    /// Matches of each pattern, in order.
    pub hits: Vec<u64>,
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    if needle.is_empty() || haystack.len() < needle.len() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

/// Scans `len` bytes (whole pages) from `start`, with `read(page pointer)`
/// giving a readable page's bytes.
fn scan_with(
    start: *const u8,
    len: usize,
    patterns: &[Vec<u8>],
    mut read: impl FnMut(*const u8) -> Option<Vec<u8>>,
) -> Found {
    let mut f = Found {
        hits: vec![0; patterns.len()],
        ..Found::default()
    };
    let longest = patterns.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut tail: Vec<u8> = Vec::new();
    for i in 0..len / PAGE {
        let p = start.wrapping_add(i * PAGE);
        let Some(page) = read(p) else {
            f.aborted += 1;
            tail.clear();
            continue;
        };
        f.readable += 1;
        if page.iter().any(|&b| b != 0) {
            f.nonzero += 1;
        }
        let mut joined = std::mem::take(&mut tail);
        let carried = joined.len();
        joined.extend_from_slice(&page);
        for (h, pat) in f.hits.iter_mut().zip(patterns) {
            // Only matches that end in this page: those wholly inside the
            // carried tail were counted with the previous page.
            let from = carried.saturating_sub(pat.len() - 1);
            *h += count(&joined[from..], pat);
        }
        tail = page[PAGE - (longest - 1).min(PAGE)..].to_vec();
    }
    f
}

/// Reads one page at `p` of a `/dev/mem` mapping if the host may.
fn read_page(p: *const u8) -> Option<Vec<u8>> {
    if !crate::virtio::guest::reachable(p, PAGE) {
        return None;
    }
    let mut out = vec![0u8; PAGE];
    // SAFETY: `p..p + PAGE` lies in the caller's live mapping and was just
    // found readable; aligned 64-bit volatile loads (Device memory).
    unsafe {
        crate::mem::clean_inval_poc(p, PAGE);
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            let v = p.add(8 * i).cast::<u64>().read_volatile();
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
    }
    Some(out)
}

/// A `--find` pattern (a newtype: clap would take a `Vec<u8>` for a list
/// of values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(pub Vec<u8>);

/// Parses a `--find` pattern.
///
/// # Errors
///
/// As [`parse_hex`].
pub fn parse_pattern(s: &str) -> Result<Pattern, String> {
    parse_hex(s).map(Pattern)
}

/// Parses a hex pattern (at least 8 bytes: shorter ones occur by chance).
///
/// # Errors
///
/// Not hex, or too short.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect::<Result<Vec<u8>, String>>()?;
    if bytes.len() < 8 {
        return Err("a pattern needs at least 8 bytes".into());
    }
    Ok(bytes)
}

/// `rampart-vmm scan-ram`.
///
/// # Errors
///
/// An unaligned range, or mapping it failed.
pub fn cmd_scan(dev_mem: &str, phys: u64, size: u64, patterns: &[Pattern]) -> Result<Found> {
    let patterns: Vec<Vec<u8>> = patterns.iter().map(|p| p.0.clone()).collect();
    let patterns = &patterns[..];
    if !phys.is_multiple_of(PAGE as u64) || !size.is_multiple_of(PAGE as u64) || size == 0 {
        bail!("--phys {phys:#x} and --size {size:#x} must be whole pages");
    }
    let len = usize::try_from(size)?;
    let m = Mapping::guest_memory(dev_mem, phys, len, "the scanned RAM")
        .with_context(|| format!("mapping {phys:#x}+{size:#x}"))?;
    let (start, _) = m.span();
    let f = scan_with(start as *const u8, len, patterns, read_page);
    println!(
        "rampart-vmm: scan of {phys:#x}..{:#x}: {} pages readable, {} aborted (not the host's)",
        phys + size,
        f.readable,
        f.aborted
    );
    println!(
        "rampart-vmm: scan: {} readable pages hold a non-zero byte",
        f.nonzero
    );
    for (pat, h) in patterns.iter().zip(&f.hits) {
        let hex: String = pat.iter().map(|b| format!("{b:02x}")).collect();
        println!("rampart-vmm: scan: pattern {hex}: {h} hits in readable pages");
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_patterns_across_readable_pages_and_skips_aborted_ones() {
        // Page 4 stays all zero.
        let mut mem = vec![0u8; 5 * PAGE];
        let a = b"SECRET-0123456789".to_vec();
        let b = b"MARKER-abcdefgh".to_vec();
        // `a` straddles pages 0 and 1; `b` twice in page 1; `a` in page 3,
        // which "aborts"; `b` straddles pages 2 and 3 (broken: not counted).
        mem[PAGE - 5..PAGE - 5 + a.len()].copy_from_slice(&a);
        mem[PAGE + 100..PAGE + 100 + b.len()].copy_from_slice(&b);
        mem[PAGE + 200..PAGE + 200 + b.len()].copy_from_slice(&b);
        mem[3 * PAGE + 10..3 * PAGE + 10 + a.len()].copy_from_slice(&a);
        mem[3 * PAGE - 3..3 * PAGE - 3 + b.len()].copy_from_slice(&b);
        let base = mem.as_ptr();
        let f = scan_with(base, mem.len(), &[a, b], |p| {
            let i = (p as usize - base as usize) / PAGE;
            (i != 3).then(|| mem[i * PAGE..(i + 1) * PAGE].to_vec())
        });
        assert_eq!(
            f,
            Found {
                readable: 4,
                aborted: 1,
                nonzero: 3,
                hits: vec![1, 2]
            }
        );
    }

    #[test]
    fn patterns_are_hex_of_eight_bytes_or_more() {
        assert_eq!(parse_pattern("0011223344556677").unwrap().0.len(), 8);
        assert!(parse_hex("00112233445566").is_err());
        assert!(parse_hex("001122334455667").is_err());
        assert!(parse_hex("zz11223344556677").is_err());
    }
}
