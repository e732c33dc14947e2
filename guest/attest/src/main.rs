//! Attestation guest: asks the hypervisor for an attestation report and for
//! sealing keys, and checks that both calls refuse bad arguments.
//!
//! Protocol (vCPU 0 only, protected VM):
//!
//! 1. **Report.** The nonce is 64 bytes: [`NONCE_PREFIX`] (fixed, so a
//!    verifier knows what to expect), then 32 bytes from `TRNG_RND64`
//!    (the prefix again where the CPU has no `RNDR`). `RAMPART_ATTEST`
//!    writes the report into the first free granule; the guest checks its
//!    length (1..=512), that it starts like a tagged COSE_Sign1
//!    (`0xD2 0x84`) and that it carries the nonce (`0x58 0x40` + nonce),
//!    then prints **`GUEST-REPORT <hex>`** and **`GUEST-NONCE <hex>`** for
//!    the VMM, which hands them to a verifier (`rampart attest-verify`). A
//!    report with an empty nonce works too.
//! 2. **Sealing keys.** Label `disk` twice (the same key), `other` and the
//!    empty label (different keys, none zero). The keys never leave the
//!    guest's registers and stack: the guest prints only
//!    **`GUEST-SEALING <label> <8 hex digits>`**, the first 4 bytes of
//!    SHA-256 of the key, so a test can compare keys across boots without
//!    learning them.
//! 3. **Bad arguments**, each `INVALID_PARAMETER` with the target page
//!    unchanged: a nonce length of 65, a label length of 33, a report
//!    address past the end of guest RAM, below it, unaligned, all ones, and
//!    the address of a granule the guest shared with the host (`MEM_SHARE`;
//!    a report may only land in memory the host cannot read).
//!
//! Expected exits: `EXIT_MMIO` (console), `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::fmt;

use rampart_guest::abi::GRANULE;
use rampart_guest::hvc::{self, trng};
use rampart_guest::rampart_abi::Error;
use rampart_guest::{arch, println, protected, report};
use sha2::{Digest, Sha256};

rampart_guest::entry!(main);

/// The first half of the nonce; `xtask/src/attest.rs` checks the nonce a
/// report carries starts with it.
const NONCE_PREFIX: &[u8; 32] = b"rampart attest guest nonce v1 ::";
/// The most bytes `RAMPART_ATTEST` writes (`docs/formats.md`).
const MAX_REPORT_SIZE: u64 = 512;
/// `INVALID_PARAMETER`.
const INVALID: i64 = Error::InvalidParameter.code();
/// What the guest writes over a page before a call that must not touch it.
const FILL: u8 = 0xa5;

/// Hex of bytes in free guest RAM.
struct RamHex {
    at: u64,
    len: u64,
}

impl fmt::Display for RamHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in self.at..self.at + self.len {
            write!(f, "{:02x}", arch::ram_read_u8(a))?;
        }
        Ok(())
    }
}

/// Hex of a byte slice.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn fill(page: u64) {
    for a in (page..page + GRANULE).step_by(8) {
        arch::ram_write_u64(a, u64::from_ne_bytes([FILL; 8]));
    }
}

/// The first offset in `page` that is not [`FILL`].
fn changed(page: u64) -> Option<u64> {
    (0..GRANULE).find(|&i| arch::ram_read_u8(page + i) != FILL)
}

fn nonce() -> ([u8; 64], bool) {
    let mut nonce = [0u8; 64];
    nonce[..32].copy_from_slice(NONCE_PREFIX);
    nonce[32..].copy_from_slice(NONCE_PREFIX);
    if trng::version() < 0 {
        return (nonce, false);
    }
    for half in 0..2 {
        let Ok([_, high, low]) = trng::rnd64(128) else {
            return (nonce, false);
        };
        let at = 32 + 16 * half;
        nonce[at..at + 8].copy_from_slice(&high.to_le_bytes());
        nonce[at + 8..at + 16].copy_from_slice(&low.to_le_bytes());
    }
    (nonce, true)
}

/// Whether the report at `page` (`len` bytes) contains `0x58 0x40` and the
/// nonce: claim 2 as a 64-byte CBOR byte string.
fn carries_nonce(page: u64, len: u64, nonce: &[u8; 64]) -> bool {
    let needle_len = 2 + nonce.len() as u64;
    (0..=len.saturating_sub(needle_len)).any(|start| {
        let at = page + start;
        arch::ram_read_u8(at) == 0x58
            && arch::ram_read_u8(at + 1) == 0x40
            && nonce
                .iter()
                .enumerate()
                .all(|(i, &b)| arch::ram_read_u8(at + 2 + i as u64) == b)
    })
}

/// Checks a report call's result: a length of 1..=512 and a tagged
/// COSE_Sign1 header (`0xD2`, then a 4-item array `0x84`).
fn check_report(name: &str, page: u64, result: Result<u64, i64>) -> Option<u64> {
    let len = match result {
        Ok(len) => len,
        Err(code) => {
            report::fail(name, format_args!("RAMPART_ATTEST({page:#x}) = {code}"));
            return None;
        }
    };
    if len == 0 || len > MAX_REPORT_SIZE {
        report::fail(
            name,
            format_args!("report length {len}, want 1..={MAX_REPORT_SIZE}"),
        );
        return None;
    }
    let head = [arch::ram_read_u8(page), arch::ram_read_u8(page + 1)];
    report::check(
        name,
        head == [0xd2, 0x84],
        format_args!("the report starts {head:02x?}, want [d2, 84] (tag 18, 4-item array)"),
    )
    .then_some(len)
}

fn main(ram_size: u64) {
    if !protected() {
        report::skip(
            "attest",
            format_args!("not a protected VM (or no hypervisor)"),
        );
        return;
    }
    let (start, end) = arch::free_ram();
    let page = start.next_multiple_of(GRANULE);
    let shared = page + GRANULE;
    if shared + GRANULE > end {
        report::fail(
            "attest",
            format_args!("no two free granules in {start:#x}..{end:#x}"),
        );
        return;
    }

    // 1. The report.
    let (nonce, random) = nonce();
    fill(page);
    let result = hvc::rampart_attest(page, 64, &nonce);
    if let Some(len) = check_report("attest-report", page, result) {
        report::check(
            "attest-report-nonce",
            carries_nonce(page, len, &nonce),
            format_args!("the {len}-byte report does not contain the nonce as a 64-byte bstr"),
        );
        println!("GUEST-REPORT {}", RamHex { at: page, len });
        println!("GUEST-NONCE {}", Hex(&nonce));
        if !random {
            report::skip(
                "attest-nonce-random",
                format_args!("no TRNG: the nonce is fixed"),
            );
        }
    }
    fill(page);
    let empty = hvc::rampart_attest(page, 0, &[0xee; 64]);
    check_report("attest-report-empty-nonce", page, empty);

    // 2. Sealing keys.
    sealing_keys();

    // 3. Bad arguments.
    let wrong = core::cell::Cell::new(0u32);
    let refused = |what: &str, result: Result<u64, i64>, page: Option<u64>| {
        let untouched = page.and_then(changed);
        if result != Err(INVALID) || untouched.is_some() {
            wrong.set(wrong.get() + 1);
            report::fail(
                "attest-bad-arguments",
                format_args!(
                    "{what}: {result:?}, want Err({INVALID}){}",
                    if untouched.is_some() {
                        " and the page unchanged"
                    } else {
                        ""
                    }
                ),
            );
        }
    };
    fill(page);
    refused(
        "nonce length 65",
        hvc::rampart_attest(page, 65, &nonce),
        Some(page),
    );
    refused(
        "nonce length 2^32 + 1",
        hvc::rampart_attest(page, (1 << 32) + 1, &nonce),
        Some(page),
    );
    let past = rampart_guest::abi::GUEST_RAM_BASE + ram_size;
    refused(
        "report past the end of RAM",
        hvc::rampart_attest(past, 64, &nonce),
        None,
    );
    refused(
        "report below RAM",
        hvc::rampart_attest(0x1000, 64, &nonce),
        None,
    );
    refused(
        "report at an unaligned address",
        hvc::rampart_attest(page + 8, 64, &nonce),
        Some(page),
    );
    refused(
        "report at all ones",
        hvc::rampart_attest(!(GRANULE - 1), 64, &nonce),
        None,
    );
    let label = *b"a label of exactly 32 bytes ....";
    match hvc::rampart_sealing_key(33, &label) {
        Err(INVALID) => {}
        other => {
            wrong.set(wrong.get() + 1);
            report::fail(
                "attest-bad-arguments",
                format_args!("label length 33: {}, want Err({INVALID})", describe(&other)),
            );
        }
    }
    // A granule shared with the host: the hypervisor must not write a
    // report where the host can read it.
    fill(shared);
    let c = hvc::mem_share(shared);
    if c == 0 {
        refused(
            "report into a shared granule",
            hvc::rampart_attest(shared, 64, &nonce),
            Some(shared),
        );
        let c = hvc::mem_unshare(shared);
        if c != 0 {
            wrong.set(wrong.get() + 1);
            report::fail(
                "attest-bad-arguments",
                format_args!("MEM_UNSHARE({shared:#x}) = {c}"),
            );
        }
    } else {
        wrong.set(wrong.get() + 1);
        report::fail(
            "attest-bad-arguments",
            format_args!("MEM_SHARE({shared:#x}) = {c}"),
        );
    }
    if wrong.get() == 0 {
        report::pass("attest-bad-arguments");
    }
    // Still works after the refusals.
    fill(page);
    let again = hvc::rampart_attest(page, 64, &nonce);
    check_report("attest-report-after-refusals", page, again);
}

fn describe(result: &Result<[u8; 32], i64>) -> &'static str {
    match result {
        Ok(_) => "a key",
        Err(-1) => "NOT_SUPPORTED",
        Err(_) => "another error",
    }
}

/// The first 4 bytes of SHA-256(key): enough to compare keys, useless to
/// recover one.
fn fingerprint(key: &[u8; 32]) -> [u8; 4] {
    let digest = Sha256::digest(key);
    [digest[0], digest[1], digest[2], digest[3]]
}

fn sealing_key(label: &[u8]) -> Result<[u8; 32], i64> {
    let mut padded = [0u8; 32];
    padded[..label.len()].copy_from_slice(label);
    hvc::rampart_sealing_key(label.len() as u64, &padded)
}

fn sealing_keys() {
    let (disk, disk_again, other, empty) = (
        sealing_key(b"disk"),
        sealing_key(b"disk"),
        sealing_key(b"other"),
        sealing_key(b""),
    );
    let (Ok(disk), Ok(disk_again), Ok(other), Ok(empty)) = (disk, disk_again, other, empty) else {
        report::fail(
            "sealing-key",
            format_args!(
                "RAMPART_SEALING_KEY: disk {}, disk again {}, other {}, empty {}",
                describe(&disk),
                describe(&disk_again),
                describe(&other),
                describe(&empty)
            ),
        );
        return;
    };
    report::check(
        "sealing-key-stable",
        disk == disk_again,
        format_args!("two keys for label \"disk\" differ"),
    );
    report::check(
        "sealing-key-per-label",
        disk != other
            && disk != empty
            && other != empty
            && [disk, other, empty].iter().all(|k| *k != [0; 32]),
        format_args!(
            "the keys for \"disk\", \"other\" and \"\" are not three different non-zero keys"
        ),
    );
    for (label, key) in [("disk", &disk), ("other", &other), ("empty", &empty)] {
        println!("GUEST-SEALING {label} {}", Hex(&fingerprint(key)));
    }
}
