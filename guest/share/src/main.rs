//! Memory-sharing guest: `MEM_SHARE` a granule, exchange data with the
//! host through it, `MEM_UNSHARE` it, and `MEM_RELINQUISH` another.
//!
//! Protocol (constants in `rampart_abi::guest::test_protocol`):
//!
//! 1. The guest picks the first granule of free RAM after its image, writes
//!    `"ping"` ([`SHARE_PING`]) to its first word and [`share_ping_byte`]
//!    to bytes 4..4096, and shares it with `MEM_SHARE`.
//! 2. It prints `GUEST-SHARED 0x<ipa>`, then polls: it reads the console's
//!    flag register (an `EXIT_MMIO`) and the page's first word, for up to
//!    [`TIMEOUT_MS`] of the virtual counter, until that word is `"pong"`
//!    ([`SHARE_PONG`]).
//! 3. The VMM, on an MMIO exit after the `GUEST-SHARED` line, checks the
//!    page holds the ping data, writes [`share_pong_byte`] to bytes 4..4096
//!    and then `"pong"` to the first word, and runs the vCPU again.
//! 4. The guest checks the pong data, unshares the granule and prints
//!    `GUEST-UNSHARED 0x<ipa>` (the host must now be refused access), checks
//!    that a second unshare and a share of an unaligned address fail.
//! 5. If `KVM_FEATURES` advertises it, the guest relinquishes the next
//!    granule and prints `GUEST-RELINQUISHED 0x<ipa>` (the hypervisor must
//!    have zeroed it; the guest never touches it again).
//!
//! vCPU 0 only. Expected exits: `EXIT_MMIO`, `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::abi::test_protocol::{
    RELINQUISHED, SHARE_PING, SHARE_PONG, SHARED, UNSHARED, share_ping_byte, share_pong_byte,
};
use rampart_guest::abi::{GRANULE, kvm_function};
use rampart_guest::{arch, hvc, println, protected, report, wait_until};

rampart_guest::entry!(main);

/// How long the guest waits for the host's `"pong"`, in milliseconds.
const TIMEOUT_MS: u64 = 5_000;

fn page_bytes() -> impl Iterator<Item = u64> {
    4..GRANULE
}

fn offset(i: u64) -> usize {
    usize::try_from(i).unwrap_or(0)
}

fn main(_ram_size: u64) {
    if !protected() {
        report::skip(
            "share",
            format_args!("not a protected VM (or no hypervisor)"),
        );
        return;
    }
    let granule = hvc::hyp_meminfo();
    report::check(
        "share-meminfo",
        u64::try_from(granule) == Ok(GRANULE),
        format_args!("HYP_MEMINFO = {granule}, want {GRANULE}"),
    );
    let (start, end) = arch::free_ram();
    let page = start.next_multiple_of(GRANULE);
    if page + 2 * GRANULE > end {
        report::fail(
            "share",
            format_args!("no free granule in {start:#x}..{end:#x}"),
        );
        return;
    }

    arch::ram_write_u32(page, SHARE_PING);
    for i in page_bytes() {
        arch::ram_write_u8(page + i, share_ping_byte(offset(i)));
    }
    let shared = hvc::mem_share(page);
    if !report::check(
        "share",
        shared == 0,
        format_args!("MEM_SHARE({page:#x}) = {shared}"),
    ) {
        return;
    }
    println!("{SHARED}{page:#x}");
    let answered = wait_until(TIMEOUT_MS, || arch::ram_read_u32(page) == SHARE_PONG);
    report::check(
        "share-pong",
        answered,
        format_args!(
            "first word still {:#x} after {TIMEOUT_MS} ms",
            arch::ram_read_u32(page)
        ),
    );
    if answered {
        let wrong =
            page_bytes().find(|&i| arch::ram_read_u8(page + i) != share_pong_byte(offset(i)));
        report::check(
            "share-host-data",
            wrong.is_none(),
            format_args!("byte {wrong:?} of the page is not the host's reply"),
        );
    }
    let again = hvc::mem_share(page);
    report::check(
        "share-twice-refused",
        again != 0,
        format_args!("a second MEM_SHARE of a shared granule returned {again}"),
    );

    let unshared = hvc::mem_unshare(page);
    report::check(
        "unshare",
        unshared == 0,
        format_args!("MEM_UNSHARE({page:#x}) = {unshared}"),
    );
    println!("{UNSHARED}{page:#x}");
    let again = hvc::mem_unshare(page);
    report::check(
        "unshare-twice-refused",
        again != 0,
        format_args!("a second MEM_UNSHARE returned {again}"),
    );
    arch::ram_write_u32(page, SHARE_PING);
    report::check(
        "unshared-page-still-ours",
        arch::ram_read_u32(page) == SHARE_PING,
        format_args!("the guest cannot write its unshared page"),
    );
    let unaligned = hvc::mem_share(page + 8);
    report::check(
        "share-unaligned-refused",
        unaligned != 0,
        format_args!("MEM_SHARE({:#x}) = {unaligned}", page + 8),
    );
    let reshared = (hvc::mem_share(page), hvc::mem_unshare(page));
    report::check(
        "share-again",
        reshared == (0, 0),
        format_args!("MEM_SHARE, MEM_UNSHARE after unsharing = {reshared:?}"),
    );

    let spare = page + GRANULE;
    if !hvc::kvm_has(kvm_function::MEM_RELINQUISH) {
        report::skip("relinquish", format_args!("MEM_RELINQUISH not advertised"));
        return;
    }
    arch::ram_write_u64(spare, 0x7265_6c69_6e71_7569); // "relinqui": must not survive
    let relinquished = hvc::mem_relinquish(spare);
    report::check(
        "relinquish",
        relinquished == 0,
        format_args!("MEM_RELINQUISH({spare:#x}) = {relinquished}"),
    );
    println!("{RELINQUISHED}{spare:#x}");
    let again = hvc::mem_relinquish(spare);
    report::check(
        "relinquish-twice-refused",
        again != 0,
        format_args!("a second MEM_RELINQUISH returned {again}"),
    );
}
