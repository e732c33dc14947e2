//! Sealed-swap test guest (issue 14): a working set larger than what the
//! host lets the VM hold, with a secret in every page.
//!
//! It fills every page of free guest RAM (from the end of its image to
//! `GUEST_RAM_BASE + x0`), [`PASSES`] times: words 0 and 1 of each page
//! are the *secret* ([`secret`]), the rest an address- and pass-dependent
//! pattern; then it checks every page in a scattered order (a stride
//! coprime with the page count), so that with `rampart-vmm run --swap FILE
//! --resident N` most touches are of evicted pages. The secret is computed
//! from `x0` at run time, so it is not in the image; the test computes it
//! the same way and looks for it in the swap file and in host memory
//! (`rampart-vmm run --swap-scan`). The guest never prints it.
//!
//! Protocol: console only; vCPU 0 only. Exits: `EXIT_MMIO` (console),
//! `EXIT_EVICTED` (as many as the VMM's limit makes), `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::{arch, println, report};

rampart_guest::entry!(main);

/// Fill-and-check passes.
const PASSES: u64 = 2;
/// A page.
const PAGE: u64 = 4096;

/// The secret words for a VM with `ram_size` bytes of RAM (the formula is
/// in docs/testing.md and `xtask/src/linux_swap.rs`).
fn secret(ram_size: u64) -> [u64; 2] {
    let a = (ram_size ^ 0x5357_4150_5345_4352).rotate_left(13) ^ 0x0123_4567_89ab_cdef;
    [
        a,
        a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2121_2121_2121_2121,
    ]
}

fn pattern(addr: u64, pass: u64) -> u64 {
    (addr ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd) ^ addr
}

/// A stride through `pages` pages that visits each once (coprime).
fn stride(pages: u64) -> u64 {
    [97, 89, 83, 79, 73]
        .into_iter()
        .find(|&s| !pages.is_multiple_of(s))
        .unwrap_or(1)
}

fn main(ram_size: u64) {
    let (start, end) = arch::free_ram();
    let start = start.next_multiple_of(PAGE);
    let end = end & !(PAGE - 1);
    if end <= start + PAGE {
        report::fail("swap", format_args!("no free RAM: {start:#x}..{end:#x}"));
        return;
    }
    let pages = (end - start) / PAGE;
    let step = stride(pages);
    let s = secret(ram_size);
    println!(
        "swap: {pages} pages of free RAM at {start:#x}..{end:#x} ({} KiB), {PASSES} passes, checked with stride {step}",
        (end - start) >> 10
    );
    let mut bad = 0u64;
    let mut first = None;
    for pass in 0..PASSES {
        for p in 0..pages {
            let page = start + p * PAGE;
            arch::ram_write_u64(page, s[0]);
            arch::ram_write_u64(page + 8, s[1]);
            for addr in (page + 16..page + PAGE).step_by(8) {
                arch::ram_write_u64(addr, pattern(addr, pass));
            }
        }
        for i in 0..pages {
            let page = start + (i * step % pages) * PAGE;
            let mut check = |addr: u64, want: u64| {
                let got = arch::ram_read_u64(addr);
                if got != want {
                    bad += 1;
                    first.get_or_insert((addr, got, want));
                }
            };
            check(page, s[0]);
            check(page + 8, s[1]);
            for addr in (page + 16..page + PAGE).step_by(8) {
                check(addr, pattern(addr, pass));
            }
        }
        println!(
            "swap: pass {} of {PASSES} done, {bad} mismatches so far",
            pass + 1
        );
    }
    match first {
        None => report::pass("swap-pattern"),
        Some((addr, got, want)) => report::fail(
            "swap-pattern",
            format_args!("{bad} mismatched words; first at {addr:#x}: {got:#x}, want {want:#x}"),
        ),
    }
}
