//! Host memory ownership calls: `RAMPART_HOST_SHARE_HYP`, `UNSHARE_HYP`,
//! `DONATE_HYP` and `RECLAIM_HYP` (`docs/abi.md`, "Memory calls").
//!
//! What the host can see of each transition: a shared page stays readable
//! and writable with its data; a donated page aborts on any access (the same
//! synchronous external abort as the carve-out); a reclaimed page comes back
//! zeroed, so a store the host tried while it was donated did not land. Every
//! refused call returns its documented code and changes nothing, which the
//! checks see by probing the pages afterwards and by making the calls that
//! only the old state allows (a page a failed share left shared could not be
//! shared again; one a failed donate took could not be read).
//!
//! The checks work in a scratch window of usable RAM (six 2 MiB blocks away
//! from the image and the DT, below the last block of RAM) and on single
//! pages at the edges of RAM and of the carve-out. They leave every page
//! host-owned; a check that fails gives back what it used (reclaim, then
//! unshare, page by page), so `ram-rw`, which runs after them over all RAM,
//! fails only if that did not work either.

use core::fmt;

use rampart_abi::Error;
use rampart_abi::host::HostCall::{self, DonateHyp, ReclaimHyp, ShareHyp, UnshareHyp};

use super::carveout::expect_abort;
use super::smccc::{arguments, preserved};
use crate::arch::{self, Access, Exception};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::psci::{self, Conduit};
use crate::ranges::{Range, RangeSet};
use crate::{ensure, fail, msg, note};

/// Page size of the memory calls.
pub(super) const PAGE: u64 = rampart_abi::host::PAGE_SIZE;
/// Size of a level-2 block mapping (2 MiB with 4 KiB pages).
pub(super) const BLOCK: u64 = 2 << 20;
/// Pages in a [`BLOCK`].
pub(super) const BLOCK_PAGES: u64 = BLOCK / PAGE;
/// 2 MiB blocks in the scratch window: 0 for single-page checks, 1 to 4 for
/// the transitions (a page, a range across the 2..3 boundary, block 4
/// whole), 5 for `own-concurrent`.
const SCRATCH_BLOCKS: u64 = 6;
/// Pages on each side of a transition's range whose contents are checked.
const NEIGHBOUR_PAGES: u64 = 16;

/// `x0` of a call that succeeded.
pub(super) const OK: i64 = rampart_abi::error::SUCCESS;
/// `INVALID_PARAMETER`.
const INVALID: i64 = Error::InvalidParameter.code();
/// `RANGE`.
const RANGE: i64 = Error::Range.code();
/// `DENIED`.
pub(super) const DENIED: i64 = Error::Denied.code();

/// The four memory calls.
pub(super) const MEMORY_CALLS: [HostCall; 4] = [ShareHyp, UnshareHyp, DonateHyp, ReclaimHyp];

/// Pattern seeds (low six bits zero, as `arch::ram_fill` wants).
const SEEDS: [u64; 4] = [
    0x0a11_ce00_5eed_0000,
    0x0b0b_0000_5eed_1000,
    0x0c4a_7000_5eed_2000,
    0x0d06_0000_5eed_3000,
];
/// What a probing load leaves in its register if no data arrives.
const LOAD_SENTINEL: u64 = 0x5e47_14e1_0000_0f00;

/// A call's name without the `RAMPART_HOST_` prefix.
pub(super) fn short(call: HostCall) -> &'static str {
    call.name()
        .strip_prefix("RAMPART_HOST_")
        .unwrap_or(call.name())
}

/// A result code, printed with its name: `DENIED (-16)`.
#[derive(Clone, Copy)]
pub(super) struct Code(pub i64);

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Error::try_from(self.0) {
            _ if self.0 == OK => write!(f, "SUCCESS (0)"),
            Ok(e) => write!(f, "{e}"),
            Err(code) => write!(f, "{code} (not a Rampart code)"),
        }
    }
}

/// The range of `count` pages at `start`.
pub(super) fn pages(start: u64, count: u64) -> Range {
    Range::from_base_size(start, count * PAGE)
}

/// The first address of every page of `range`.
pub(super) fn each_page(range: Range) -> impl Iterator<Item = u64> {
    (0..range.size() / PAGE).map(move |i| range.start + i * PAGE)
}

/// Prefixes a failure message with what was going on.
pub(super) fn ctx<'a>(what: &'a dyn fmt::Display) -> impl FnOnce(Msg) -> Msg + 'a {
    move |m| msg!("{what}: {m}")
}

/// A memory call from any CPU; returns `x0`.
pub(super) fn raw_call(call: HostCall, address: u64, count: u64) -> i64 {
    psci::call_via(Conduit::Hvc, call.id(), &[address, count])[0] as i64
}

/// A memory call from the boot CPU: returns `x0` after checking `x4`..`x17`
/// came back unchanged.
fn call(call: HostCall, address: u64, count: u64) -> Result<i64, Msg> {
    let sent = arguments(&[address, count]);
    let got = psci::call_via(Conduit::Hvc, call.id(), &sent);
    preserved(call.id(), &sent, &got)?;
    Ok(got[0] as i64)
}

/// Makes a memory call and expects `want` in `x0`.
pub(super) fn expect(c: HostCall, address: u64, count: u64, want: i64) -> Result<(), Msg> {
    let got = call(c, address, count)?;
    ensure!(
        got == want,
        "{}({address:#x}, {count:#x}) = {}, expected {}",
        short(c),
        Code(got),
        Code(want)
    );
    Ok(())
}

/// Gives every page of `range` back to the host as far as the hypervisor
/// lets it: reclaim, then unshare, one page at a time; results ignored.
pub(super) fn restore(range: Range) {
    for page in each_page(range) {
        raw_call(ReclaimHyp, page, 1);
        raw_call(UnshareHyp, page, 1);
    }
}

/// Runs `f`; if it fails, [`restore`]s `ranges`.
pub(super) fn restoring(ranges: &[Range], f: impl FnOnce() -> Result<(), Msg>) -> Result<(), Msg> {
    let result = f();
    if result.is_err() {
        for range in ranges {
            restore(*range);
        }
    }
    result
}

/// A 64-bit load from `address` that may abort: the value, or the exception.
fn load(address: u64) -> Result<u64, Exception> {
    let outcome = arch::probe(Access::Load, address, LOAD_SENTINEL);
    outcome.fault.map_or(Ok(outcome.register), Err)
}

/// A 64-bit store to `address` that may abort.
fn store(address: u64, value: u64) -> Result<(), Exception> {
    arch::probe(Access::Store, address, value)
        .fault
        .map_or(Ok(()), Err)
}

/// Loads from the first and last word of every page of `range` complete.
pub(super) fn expect_loads(range: Range) -> Result<(), Msg> {
    for page in each_page(range) {
        for address in [page, page + PAGE - 8] {
            if let Err(e) = load(address) {
                fail!("load from {address:#x} aborted: {e}");
            }
        }
    }
    Ok(())
}

/// Every page of `range` can be loaded from and holds `seed`'s pattern.
pub(super) fn expect_pattern(range: Range, seed: u64) -> Result<(), Msg> {
    if range.is_empty() {
        return Ok(());
    }
    expect_loads(range)?;
    if let Some(block) = arch::ram_verify(range.start, range.end, seed) {
        for address in (block..block + arch::RAM_BLOCK).step_by(8) {
            let (got, expected) = (arch::ram_read(address), arch::ram_pattern(address, seed));
            if got != expected {
                fail!("{address:#x} reads {got:#x}, expected {expected:#x} (its contents changed)");
            }
        }
        fail!("the block at {block:#x} read back differently, then matched on a re-read");
    }
    Ok(())
}

/// Every page of `range` can be loaded from and reads zero.
pub(super) fn expect_zero(range: Range) -> Result<(), Msg> {
    expect_loads(range)?;
    if let Some(block) = arch::ram_find_nonzero(range.start, range.end) {
        for address in (block..block + arch::RAM_BLOCK).step_by(8) {
            let got = arch::ram_read(address);
            if got != 0 {
                fail!(
                    "{address:#x} reads {got:#x}, expected 0 (a reclaimed page comes back zeroed)"
                );
            }
        }
        fail!("the block at {block:#x} read non-zero, then zero on a re-read");
    }
    Ok(())
}

/// Writes `seed`'s pattern over `range` (a store to each page first, so an
/// abort is reported as such) and checks it reads back.
pub(super) fn rewrite(range: Range, seed: u64) -> Result<(), Msg> {
    if range.is_empty() {
        return Ok(());
    }
    for page in each_page(range) {
        for address in [page, page + PAGE - 8] {
            if let Err(e) = store(address, arch::ram_pattern(address, seed)) {
                fail!("store to {address:#x} aborted: {e}");
            }
        }
    }
    arch::ram_fill(range.start, range.end, seed);
    expect_pattern(range, seed)
}

/// Loads and stores to every page of `range` abort as the carve-out's do.
pub(super) fn expect_no_access(range: Range) -> Result<(), Msg> {
    for page in each_page(range) {
        expect_abort(Access::Load, page)?;
        expect_abort(Access::Store, page)?;
    }
    expect_abort(Access::Load, range.end - 8)
}

/// Where the ownership checks work.
pub(super) struct Layout {
    /// [`SCRATCH_BLOCKS`] 2 MiB blocks of usable RAM, 2 MiB-aligned.
    pub scratch: Range,
    /// The hypervisor's carve-out (the DT's node).
    pub carveout: Range,
    /// Lowest RAM address.
    pub ram_start: u64,
    /// End of the RAM bank that ends highest.
    pub ram_end: u64,
    /// Pages the checks may write: usable RAM minus the image, the DT and
    /// the first 64 KiB.
    writable: RangeSet<64>,
    /// Whether the first page of RAM is usable memory (readable).
    ram_start_usable: bool,
}

impl Layout {
    /// Finds the scratch window and the carve-out.
    pub fn find(p: &Platform) -> Result<Self, Msg> {
        let carveout = p
            .carveout_nodes()
            .next()
            .and_then(|node| node.reg.as_slice().first().copied())
            .ok_or_else(|| {
                msg!("no carve-out node with a reg in the DT (not running under Rampart?)")
            })?;
        let memory = p.memory.as_slice();
        let ram_start = memory.iter().map(|r| r.start).min().unwrap_or(0);
        let ram_end = memory.iter().map(|r| r.end).max().unwrap_or(0);
        let writable = super::ram::test_ranges(p)?;
        // Leave the block holding the last page of RAM to `own-partial-range`.
        let top = (ram_end - PAGE) & !(BLOCK - 1);
        let size = SCRATCH_BLOCKS * BLOCK;
        let scratch = writable
            .as_slice()
            .iter()
            .filter_map(|r| {
                let aligned = r.align_inward(BLOCK);
                let end = aligned.end.min(top);
                (end >= aligned.start + size).then(|| Range::from_base_size(end - size, size))
            })
            .max_by_key(|r| r.start)
            .ok_or_else(|| {
                msg!(
                    "no {} MiB of usable, 2 MiB-aligned RAM for a scratch area",
                    size >> 20
                )
            })?;
        let first = pages(ram_start, 1);
        let ram_start_usable = p
            .usable_memory()
            .as_slice()
            .iter()
            .any(|r| r.contains_range(&first));
        Ok(Layout {
            scratch,
            carveout,
            ram_start,
            ram_end,
            writable,
            ram_start_usable,
        })
    }

    /// The first address of scratch block `block`.
    pub fn block(&self, block: u64) -> u64 {
        self.scratch.start + block * BLOCK
    }

    /// The page `page` pages from the start of scratch block `block`.
    fn page(&self, block: u64, page: u64) -> u64 {
        self.block(block) + page * PAGE
    }

    /// `address` if its page is RAM the checks may write, outside the
    /// scratch window and the carve-out.
    fn spare_page(&self, address: u64) -> Option<u64> {
        let page = pages(address, 1);
        let writable = self
            .writable
            .as_slice()
            .iter()
            .any(|r| r.contains_range(&page));
        (writable && !page.overlaps(&self.scratch) && !page.overlaps(&self.carveout))
            .then_some(address)
    }
}

/// `range` widened to whole 2 MiB blocks and [`NEIGHBOUR_PAGES`] beyond.
fn zone_of(range: Range) -> Range {
    Range {
        start: (range.start & !(BLOCK - 1)) - NEIGHBOUR_PAGES * PAGE,
        end: range.end.next_multiple_of(BLOCK) + NEIGHBOUR_PAGES * PAGE,
    }
}

/// The ranges the transitions are checked on: one page inside a block, 32
/// pages across a 2 MiB boundary, and a whole 2 MiB-aligned block.
fn transition_ranges(l: &Layout) -> [(&'static str, Range); 3] {
    [
        ("1 page", pages(l.page(1, 100), 1)),
        (
            "32 pages across a 2 MiB boundary",
            pages(l.block(3) - 8 * PAGE, 32),
        ),
        ("512 pages, 2 MiB-aligned", pages(l.block(4), BLOCK_PAGES)),
    ]
}

/// `own-share-unshare`: SHARE_HYP and UNSHARE_HYP succeed on a page, on a
/// range across a 2 MiB boundary and on a whole 2 MiB block; throughout, the
/// range and 2 MiB around it stay readable and writable with their data.
pub fn own_share_unshare(p: &Platform) -> Result<(), Msg> {
    let l = Layout::find(p)?;
    for (name, range) in transition_ranges(&l) {
        let label = msg!("{name} {range}");
        restoring(&[range], || share_unshare(range)).map_err(ctx(&label))?;
    }
    note!("scratch {}", l.scratch);
    Ok(())
}

fn share_unshare(range: Range) -> Result<(), Msg> {
    let (start, count) = (range.start, range.size() / PAGE);
    let zone = zone_of(range);
    rewrite(zone, SEEDS[0]).map_err(ctx(&"before the calls"))?;
    expect(ShareHyp, start, count, OK)?;
    expect_pattern(zone, SEEDS[0]).map_err(ctx(&"while shared"))?;
    rewrite(zone, SEEDS[1]).map_err(ctx(&"while shared"))?;
    expect(UnshareHyp, start, count, OK)?;
    expect_pattern(zone, SEEDS[1]).map_err(ctx(&"after UNSHARE_HYP"))?;
    rewrite(zone, SEEDS[2]).map_err(ctx(&"after UNSHARE_HYP"))
}

/// `own-donate-reclaim`: DONATE_HYP makes every page of the range abort on
/// loads and stores while the pages around it stay usable; RECLAIM_HYP gives
/// it back zeroed (so no store landed) and writable; on the same three
/// ranges as `own-share-unshare`.
pub fn own_donate_reclaim(p: &Platform) -> Result<(), Msg> {
    let l = Layout::find(p)?;
    for (name, range) in transition_ranges(&l) {
        let label = msg!("{name} {range}");
        restoring(&[range], || donate_reclaim(range)).map_err(ctx(&label))?;
    }
    Ok(())
}

fn donate_reclaim(range: Range) -> Result<(), Msg> {
    let (start, count) = (range.start, range.size() / PAGE);
    let zone = zone_of(range);
    let neighbours = [
        Range {
            start: zone.start,
            end: range.start,
        },
        Range {
            start: range.end,
            end: zone.end,
        },
    ];
    rewrite(zone, SEEDS[0]).map_err(ctx(&"before the calls"))?;
    expect(DonateHyp, start, count, OK)?;
    expect_no_access(range).map_err(ctx(&"while donated"))?;
    for n in neighbours {
        expect_pattern(n, SEEDS[0]).map_err(ctx(&"next to the donated range"))?;
        rewrite(n, SEEDS[1]).map_err(ctx(&"next to the donated range"))?;
    }
    expect(ReclaimHyp, start, count, OK)?;
    expect_zero(range).map_err(ctx(&"after RECLAIM_HYP"))?;
    for n in neighbours {
        expect_pattern(n, SEEDS[1]).map_err(ctx(&"next to the reclaimed range"))?;
    }
    rewrite(zone, SEEDS[2]).map_err(ctx(&"after RECLAIM_HYP"))
}

/// Shows that `page`, which the host owns and holds `seed`'s pattern, is
/// still in that state: it can be shared, unshared, donated and reclaimed
/// (then reads zero), and is left holding `next_seed`'s pattern.
fn expect_owned(page: u64, seed: u64, next_seed: u64) -> Result<(), Msg> {
    let range = pages(page, 1);
    expect_pattern(range, seed)?;
    expect(ShareHyp, page, 1, OK)?;
    expect(UnshareHyp, page, 1, OK)?;
    expect(DonateHyp, page, 1, OK)?;
    expect(ReclaimHyp, page, 1, OK)?;
    expect_zero(range)?;
    rewrite(range, next_seed)
}

/// `own-bad-args`: malformed calls return INVALID_PARAMETER (unaligned
/// address, zero count, a range that wraps) and ranges that are not RAM
/// return RANGE (above and below RAM, MMIO, 2^40 pages), for all four calls;
/// none changes the page it names.
pub fn own_bad_args(p: &Platform) -> Result<(), Msg> {
    let l = Layout::find(p)?;
    let x = l.page(0, 16);
    let zone = pages(x - 4 * PAGE, 9);
    let mmio = p.console.unwrap_or(0x0900_0000);
    let in_ram = |a: u64| {
        p.memory
            .as_slice()
            .iter()
            .any(|r| r.start <= a && a < r.end)
    };
    let list = [
        (x + 1, 1, INVALID),
        (x + 0x800, 1, INVALID),
        (x, 0, INVALID),
        (x, u64::MAX, INVALID),
        (x, 1 << 52, INVALID),
        (!(PAGE - 1) - PAGE, 3, INVALID),
        (mmio + 1, 1, INVALID),
        (x, 1 << 40, RANGE),
        (1 << 48, 1, RANGE),
        (mmio, 1, RANGE),
        (0x3000_0000, 1, RANGE),
        (0x3000_0000, 0x1000, RANGE),
    ];
    // An address that is RAM on this machine is no RANGE case.
    let cases = list.map(|(address, count, want)| {
        (want != RANGE || count >= 1 << 20 || !in_ram(address)).then_some((address, count, want))
    });
    restoring(&[zone], || {
        rewrite(zone, SEEDS[0])?;
        for c in MEMORY_CALLS {
            for &(address, count, want) in cases.iter().flatten() {
                expect(c, address, count, want)?;
                expect_pattern(zone, SEEDS[0])
                    .map_err(ctx(&msg!("after {}({address:#x}, {count:#x})", short(c))))?;
            }
        }
        expect_owned(x, SEEDS[0], SEEDS[1]).map_err(ctx(&msg!("page {x:#x} afterwards")))?;
        let (before, after) = around(zone, x);
        expect_pattern(before, SEEDS[0]).and_then(|()| expect_pattern(after, SEEDS[0]))
    })?;
    note!("console at {mmio:#x} still works after the calls on it");
    Ok(())
}

/// The parts of `zone` before and after the page at `page`.
fn around(zone: Range, page: u64) -> (Range, Range) {
    (
        Range {
            start: zone.start,
            end: page,
        },
        Range {
            start: page + PAGE,
            end: zone.end,
        },
    )
}

/// `own-wrong-state`: calls on pages in the wrong state return DENIED and
/// change nothing: all four on each part of the carve-out (which still
/// aborts), unshare
/// or reclaim of an owned page (not zeroed), share, donate or reclaim of a
/// shared page (still shared, data intact), donate, share or unshare of a
/// donated page (still aborting), and a second reclaim.
pub fn own_wrong_state(p: &Platform) -> Result<(), Msg> {
    let l = Layout::find(p)?;
    let x = l.page(0, 64);
    let page = pages(x, 1);
    let zone = pages(x - 4 * PAGE, 9);
    let (before, after) = around(zone, x);
    // The carve-out's fixed part, then the part the hypervisor sized at
    // boot (its ownership table, per-CPU state and stacks: the node's
    // second reg), which the host must not get back either.
    let sized = p
        .carveout_nodes()
        .next()
        .and_then(|n| n.reg.as_slice().get(1).copied());
    restoring(&[zone], || {
        for c in [Some(l.carveout), sized].into_iter().flatten() {
            let carveout_pages = c.size() / PAGE;
            for call in MEMORY_CALLS {
                for (address, count) in
                    [(c.start, 1), (c.end - PAGE, 1), (c.start, carveout_pages)]
                {
                    expect(call, address, count, DENIED)
                        .map_err(|m| msg!("the carve-out {c}: {m}"))?;
                }
            }
            for address in [c.start, c.end - 8] {
                expect_abort(Access::Load, address)
                    .and_then(|()| expect_abort(Access::Store, address))
                    .map_err(|m| msg!("the carve-out {c} after the calls: {m}"))?;
            }
        }

        rewrite(zone, SEEDS[0])?;
        let intact = |seed: u64, what: &'static str| {
            expect_pattern(zone, seed).map_err(move |m| msg!("{what}: {m}"))
        };
        expect(UnshareHyp, x, 1, DENIED).map_err(ctx(&"a page never shared"))?;
        intact(SEEDS[0], "after UNSHARE_HYP of a page never shared")?;
        expect(ReclaimHyp, x, 1, DENIED).map_err(ctx(&"a page never donated"))?;
        intact(SEEDS[0], "after RECLAIM_HYP of a page never donated")?;

        expect(ShareHyp, x, 1, OK)?;
        expect(ShareHyp, x, 1, DENIED).map_err(ctx(&"a shared page"))?;
        intact(SEEDS[0], "after a second SHARE_HYP")?;
        expect(DonateHyp, x, 1, DENIED).map_err(ctx(&"a shared page"))?;
        intact(SEEDS[0], "after DONATE_HYP of a shared page")?;
        expect(ReclaimHyp, x, 1, DENIED).map_err(ctx(&"a shared page"))?;
        intact(SEEDS[0], "after RECLAIM_HYP of a shared page")?;
        rewrite(zone, SEEDS[1]).map_err(ctx(&"a shared page"))?;
        expect(UnshareHyp, x, 1, OK)
            .map_err(ctx(&"a page the refused calls should have left shared"))?;
        expect(UnshareHyp, x, 1, DENIED).map_err(ctx(&"a page just unshared"))?;
        intact(SEEDS[1], "after a second UNSHARE_HYP")?;

        expect(DonateHyp, x, 1, OK)?;
        for (call, what) in [
            (DonateHyp, "after a second DONATE_HYP"),
            (ShareHyp, "after SHARE_HYP of a donated page"),
            (UnshareHyp, "after UNSHARE_HYP of a donated page"),
        ] {
            expect(call, x, 1, DENIED).map_err(ctx(&"a donated page"))?;
            expect_no_access(page).map_err(ctx(&what))?;
            expect_pattern(before, SEEDS[1])
                .and_then(|()| expect_pattern(after, SEEDS[1]))
                .map_err(ctx(&what))?;
        }
        expect(ReclaimHyp, x, 1, OK)
            .map_err(ctx(&"a page the refused calls should have left donated"))?;
        expect_zero(page).map_err(ctx(&"after RECLAIM_HYP"))?;
        rewrite(zone, SEEDS[2])?;
        expect(ReclaimHyp, x, 1, DENIED).map_err(ctx(&"a page just reclaimed"))?;
        intact(SEEDS[2], "after a second RECLAIM_HYP")?;
        expect_owned(x, SEEDS[2], SEEDS[3]).map_err(ctx(&"afterwards"))
    })
}

/// Checks calls on `[start, start + count pages)`, which holds the host page
/// `valid` and at least one page the calls cannot act on, all return `want`
/// and leave `valid` as it was: with `valid` owned, shared, then donated.
fn partly_valid(valid: u64, start: u64, count: u64, want: i64) -> Result<(), Msg> {
    let page = pages(valid, 1);
    rewrite(page, SEEDS[0])?;
    for c in MEMORY_CALLS {
        expect(c, start, count, want)?;
        expect_pattern(page, SEEDS[0])
            .map_err(ctx(&msg!("owned page {valid:#x} after {}", short(c))))?;
    }
    expect_owned(valid, SEEDS[0], SEEDS[1])
        .map_err(ctx(&msg!("owned page {valid:#x} afterwards")))?;

    expect(ShareHyp, valid, 1, OK)?;
    for c in [ShareHyp, UnshareHyp, DonateHyp] {
        expect(c, start, count, want)?;
        expect_pattern(page, SEEDS[1])
            .map_err(ctx(&msg!("shared page {valid:#x} after {}", short(c))))?;
    }
    expect(DonateHyp, valid, 1, DENIED).map_err(ctx(&msg!("shared page {valid:#x} afterwards")))?;
    expect(UnshareHyp, valid, 1, OK).map_err(ctx(&msg!("shared page {valid:#x} afterwards")))?;

    expect(DonateHyp, valid, 1, OK)?;
    for c in [ShareHyp, DonateHyp, ReclaimHyp] {
        expect(c, start, count, want)?;
        expect_no_access(page).map_err(ctx(&msg!("donated page {valid:#x} after {}", short(c))))?;
    }
    expect(ReclaimHyp, valid, 1, OK).map_err(ctx(&msg!("donated page {valid:#x} afterwards")))?;
    expect_zero(page)?;
    rewrite(page, SEEDS[2])
}

/// `own-partial-range`: ranges that are only partly valid are refused as a
/// whole and leave the valid part alone: from the last page of RAM past its
/// end and from below RAM into it (RANGE), from a host page into the
/// carve-out and out of it (DENIED), and ranges that meet a page in the
/// wrong state (DENIED).
pub fn own_partial_range(p: &Platform) -> Result<(), Msg> {
    let l = Layout::find(p)?;
    let c = l.carveout;
    let mut done = 0;
    let cases = [
        ("the end of RAM", l.spare_page(l.ram_end - PAGE), 0, RANGE),
        (
            "into the carve-out",
            c.start.checked_sub(PAGE).and_then(|a| l.spare_page(a)),
            0,
            DENIED,
        ),
        ("out of the carve-out", l.spare_page(c.end), 1, DENIED),
    ];
    for (name, valid, pages_before, want) in cases {
        let Some(valid) = valid else {
            note!("no usable page at {name}; skipped");
            continue;
        };
        let start = valid - pages_before * PAGE;
        restoring(&[pages(valid, 1)], || partly_valid(valid, start, 2, want))
            .map_err(ctx(&msg!("[{start:#x}, 2 pages) {name}")))?;
        done += 1;
    }
    ensure!(
        done > 0,
        "no page at the edge of RAM or the carve-out to check"
    );

    // From below RAM into its first page: read-only (the boot stub's page).
    if let Some(below) = l.ram_start.checked_sub(PAGE) {
        let first = l.ram_start;
        let before = if l.ram_start_usable {
            Some(load(first))
        } else {
            None
        };
        for call in MEMORY_CALLS {
            expect(call, below, 2, RANGE).map_err(ctx(&"from below RAM into it"))?;
        }
        if let Some(Ok(value)) = before {
            match load(first) {
                Ok(now) => ensure!(
                    now == value,
                    "{first:#x} read {value:#x} before the calls on [{below:#x}, 2 pages), {now:#x} after"
                ),
                Err(e) => fail!(
                    "{first:#x} was readable before the calls on [{below:#x}, 2 pages), now a load aborts: {e}"
                ),
            }
        }
    }

    let x = l.page(0, 128);
    let y = x + PAGE;
    restoring(&[pages(x, 2)], || mixed_states(x, y)).map_err(ctx(&msg!("[{x:#x}, 2 pages)")))?;

    // A whole block whose last page is shared: nothing of it is donated.
    let start = l.page(0, 256);
    let last = start + (BLOCK_PAGES / 2 - 1) * PAGE;
    let half = pages(start, BLOCK_PAGES / 2);
    restoring(&[half], || {
        rewrite(half, SEEDS[0])?;
        expect(ShareHyp, last, 1, OK)?;
        expect(DonateHyp, start, BLOCK_PAGES / 2, DENIED)?;
        expect_pattern(half, SEEDS[0])
            .map_err(ctx(&"after DONATE_HYP of 256 pages whose last is shared"))?;
        expect(ShareHyp, start, BLOCK_PAGES / 2, DENIED)?;
        expect_pattern(half, SEEDS[0])
            .map_err(ctx(&"after SHARE_HYP of 256 pages whose last is shared"))?;
        expect(UnshareHyp, last, 1, OK)?;
        expect(DonateHyp, start, BLOCK_PAGES / 2, OK)
            .map_err(ctx(&"the refused calls should have changed nothing"))?;
        expect(ReclaimHyp, start, BLOCK_PAGES / 2, OK)?;
        expect_zero(half)?;
        rewrite(half, SEEDS[1])
    })
    .map_err(ctx(&msg!("{half}")))?;
    Ok(())
}

/// Two-page ranges `[x, y]` where `y` is shared, then donated: every call
/// on both is DENIED; `x` stays owned with its data and `y` keeps its state.
fn mixed_states(x: u64, y: u64) -> Result<(), Msg> {
    let (px, py) = (pages(x, 1), pages(y, 1));
    rewrite(pages(x, 2), SEEDS[0])?;

    expect(ShareHyp, y, 1, OK)?;
    for c in MEMORY_CALLS {
        expect(c, x, 2, DENIED).map_err(ctx(&"second page shared"))?;
        expect_pattern(pages(x, 2), SEEDS[0])
            .map_err(ctx(&msg!("after {} (second page shared)", short(c))))?;
    }
    expect(DonateHyp, y, 1, DENIED).map_err(ctx(&"the second page should still be shared"))?;
    expect_owned(x, SEEDS[0], SEEDS[1]).map_err(ctx(&"the first page should still be owned"))?;
    expect(UnshareHyp, y, 1, OK)?;

    expect(DonateHyp, y, 1, OK)?;
    for c in MEMORY_CALLS {
        expect(c, x, 2, DENIED).map_err(ctx(&"second page donated"))?;
        let what = msg!("after {} (second page donated)", short(c));
        expect_pattern(px, SEEDS[1]).map_err(ctx(&what))?;
        expect_no_access(py).map_err(ctx(&what))?;
    }
    expect_owned(x, SEEDS[1], SEEDS[2]).map_err(ctx(&"the first page should still be owned"))?;
    // Both donated: now the two pages come back together.
    expect(DonateHyp, x, 1, OK)?;
    expect(ReclaimHyp, x, 2, OK).map_err(ctx(&"the second page should still be donated"))?;
    expect_zero(pages(x, 2))?;
    rewrite(pages(x, 2), SEEDS[3])
}
