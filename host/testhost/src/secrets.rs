//! The secrets `vb-no-leaks` looks for, and the scans that look.
//!
//! `cargo xtask` derives them from the development device secret and the
//! `attest` guest's measurement and passes them on the command line:
//! `testhost.secrets=<64 hex>,<64 hex>,...` (in the order of [`NAMES`]).
//! The test host keeps them only **XOR-masked** ([`MASK`]), as the eight
//! 8-byte windows `secret[j..j + 8]` (`j` = 0..8) of each: any copy of a
//! 32-byte secret at any byte alignment contains one of its windows at an
//! 8-byte-aligned address, so comparing every aligned word finds it. The
//! plain secret never sits in the test host's memory, so the scan can cover
//! the test host's own image too; only the device tree (which holds the
//! command line, in hex) is skipped.
//!
//! Every value a VMM host call returns (`x1`..`x17`, so every exit record
//! of every VM) is checked as it arrives ([`scan_registers`]); RAM is
//! scanned by [`scan_ram`], skipping all-zero 64-byte blocks quickly.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arch;

/// The command-line option.
pub const BOOTARG: &str = "testhost.secrets=";
/// Secrets held at most.
pub const MAX_SECRETS: usize = 8;
/// What xtask passes, in order.
pub const NAMES: [&str; 7] = [
    "the device secret",
    "the attestation key's seed",
    "the attestation key's expanded scalar (SHA-512(seed)[..32])",
    "the attestation key's nonce prefix (SHA-512(seed)[32..])",
    "the attest guest's sealing key \"disk\"",
    "the attest guest's sealing key \"other\"",
    "the attest guest's sealing key \"\"",
];
/// The byte every secret byte is XORed with in memory.
const MASK_BYTE: u8 = 0xa5;
/// [`MASK_BYTE`] in every byte of a word.
const MASK: u64 = u64::from_ne_bytes([MASK_BYTE; 8]);
/// Windows per secret.
const WINDOWS: usize = 8;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static MASKED: [[AtomicU64; WINDOWS]; MAX_SECRETS] =
    [const { [const { AtomicU64::new(0) }; WINDOWS] }; MAX_SECRETS];
/// One bit per value of a masked window's top 12 bits.
static FILTER: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// Register values checked, and the first hit: `1 + secret` and the
/// register index.
static REGISTERS_SCANNED: AtomicU64 = AtomicU64::new(0);
static REGISTER_HIT: AtomicU64 = AtomicU64::new(0);

/// The name of secret `i`.
pub fn name(i: usize) -> &'static str {
    NAMES
        .get(i)
        .copied()
        .unwrap_or("a secret from testhost.secrets=")
}

/// Parses the option's value; returns how many secrets it named.
pub fn parse(value: &str) -> Result<usize, &'static str> {
    let mut count = 0;
    for item in value.split(',').filter(|s| !s.is_empty()) {
        if count == MAX_SECRETS {
            return Err("more than 8 secrets");
        }
        let digits = item.as_bytes();
        if digits.len() != 64 {
            return Err("a secret is not 64 hex digits");
        }
        let mut masked = [0u8; 32];
        for (i, out) in masked.iter_mut().enumerate() {
            let (Some(high), Some(low)) = (nibble(digits[2 * i]), nibble(digits[2 * i + 1])) else {
                return Err("a secret is not hexadecimal");
            };
            *out = ((high << 4) | low) ^ MASK_BYTE;
        }
        for j in 0..WINDOWS {
            let mut word = [0u8; 8];
            word.copy_from_slice(&masked[j..j + 8]);
            let w = u64::from_le_bytes(word);
            MASKED[count][j].store(w, Ordering::Relaxed);
            let bit = (w >> 52) as usize;
            FILTER[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
        count += 1;
    }
    COUNT.store(count, Ordering::Release);
    Ok(count)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// How many secrets the test host knows.
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// The secret `word` is an 8-byte window of, if any.
#[inline]
pub fn hit(word: u64) -> Option<usize> {
    let x = word ^ MASK;
    let bit = (x >> 52) as usize;
    if FILTER[bit / 64].load(Ordering::Relaxed) & (1 << (bit % 64)) == 0 {
        return None;
    }
    (0..count()).find(|&i| MASKED[i].iter().any(|w| w.load(Ordering::Relaxed) == x))
}

/// Checks `x1`..`x17` of a host call's result.
pub fn scan_registers(registers: &[u64; 18]) {
    if count() == 0 {
        return;
    }
    REGISTERS_SCANNED.fetch_add(17, Ordering::Relaxed);
    for (n, &value) in registers.iter().enumerate().skip(1) {
        if let Some(i) = hit(value) {
            let _ = REGISTER_HIT.compare_exchange(
                0,
                (1 + i as u64) << 8 | n as u64,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

/// Register values scanned so far, and the first hit: `(secret, register)`.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the secret index is below 8, the register below 18"
)]
pub fn register_scan() -> (u64, Option<(usize, usize)>) {
    let hit = REGISTER_HIT.load(Ordering::Acquire);
    (
        REGISTERS_SCANNED.load(Ordering::Acquire),
        (hit != 0).then(|| (((hit >> 8) - 1) as usize, (hit & 0xff) as usize)),
    )
}

/// Scans every aligned word of `[start, end)` (64-byte aligned, readable
/// RAM); returns the first `(address, secret)` found and the bytes that
/// were not zero.
pub fn scan_ram(start: u64, end: u64) -> (Option<(u64, usize)>, u64) {
    let mut at = start;
    let mut nonzero = 0;
    while at < end {
        let Some(block) = arch::ram_next_nonzero(at, end) else {
            break;
        };
        nonzero += arch::RAM_BLOCK;
        for a in (block..block + arch::RAM_BLOCK).step_by(8) {
            if let Some(i) = hit(arch::ram_read(a)) {
                return (Some((a, i)), nonzero);
            }
        }
        at = block + arch::RAM_BLOCK;
    }
    (None, nonzero)
}

/// The host RAM a leak scan reads: all usable memory but the RAM blocks
/// that hold the device tree (which carries the secrets on its command
/// line).
pub fn scannable_ram(p: &crate::platform::Platform) -> crate::ranges::RangeSet<64> {
    let dt = crate::ranges::Range {
        start: p.dt.start & !(arch::RAM_BLOCK - 1),
        end: p.dt.end.next_multiple_of(arch::RAM_BLOCK),
    };
    let mut ranges = p.usable_memory();
    ranges.subtract(&dt);
    ranges
}

/// What [`scan_ranges`] read: bytes scanned and bytes not zero.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scanned {
    /// Bytes read.
    pub bytes: u64,
    /// Bytes that were not zero.
    pub nonzero: u64,
}

/// Scans every whole RAM block of `ranges` (each range shrunk to
/// [`arch::RAM_BLOCK`] boundaries) with [`scan_ram`]. Returns what it read,
/// or the first secret found: its address and index.
pub fn scan_ranges(ranges: &[crate::ranges::Range]) -> Result<Scanned, (u64, usize)> {
    let mut scanned = Scanned::default();
    for r in ranges {
        let (start, end) = (r.start.next_multiple_of(arch::RAM_BLOCK), r.end & !(arch::RAM_BLOCK - 1));
        if start >= end {
            continue;
        }
        let (found, busy) = scan_ram(start, end);
        scanned.nonzero += busy;
        scanned.bytes += end - start;
        if let Some(hit) = found {
            return Err(hit);
        }
    }
    Ok(scanned)
}

/// Checks the RAM scan finds what it should: plants the first 15 bytes of
/// secret 0 (all the test host can rebuild from its windows) at byte
/// offset 3 of `page` (a scratch page the host owns), scans the page, and
/// zeroes it again. Returns where the scan found it. Run it after the real
/// scan: the plain bytes pass through registers and the stack.
pub fn self_test(page: u64) -> Result<u64, &'static str> {
    if count() == 0 {
        return Err("no secrets");
    }
    // Windows 0 and 7 hold bytes 0..15.
    let mut masked = [0u8; 15];
    masked[..8].copy_from_slice(&MASKED[0][0].load(Ordering::Relaxed).to_le_bytes());
    masked[8..].copy_from_slice(&MASKED[0][WINDOWS - 1].load(Ordering::Relaxed).to_le_bytes()[1..]);
    let mut words = [0u64; 3];
    for (i, b) in masked.iter().enumerate() {
        let at = 3 + i;
        words[at / 8] |= u64::from(b ^ MASK_BYTE) << (8 * (at % 8));
    }
    for (i, w) in words.iter().enumerate() {
        arch::ram_write(page + 8 * i as u64, *w);
    }
    let (found, _) = scan_ram(page, page + 4096);
    arch::ram_zero(page, page + 4096);
    match found {
        Some((at, 0)) => Ok(at),
        Some(_) => Err("the planted bytes were taken for another secret"),
        None => Err("the scan missed 15 bytes of a secret planted at offset 3"),
    }
}
