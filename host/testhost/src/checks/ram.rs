//! The host can use all of its RAM.

use crate::arch::{self, RAM_BLOCK};
use crate::cpus;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::ranges::{Range, RangeSet};
use crate::{ensure, fail, note};

/// Page size the RAM test works in.
const PAGE: u64 = 4096;
/// Bytes at the start of RAM left alone (QEMU's boot stub lives there).
const LOW_RESERVE: u64 = 64 << 10;
/// Pattern seed; low six bits zero as `arch::ram_fill` requires.
const SEED: u64 = 0xa5c3_5a3c_96e1_69c0;

/// The pages the RAM test may overwrite: usable memory minus the test host's
/// image, bss and stacks, the DT blob and the first 64 KiB of RAM.
pub(super) fn test_ranges(p: &Platform) -> Result<RangeSet<64>, Msg> {
    let mut ranges = p.usable_memory();
    let ram_base = p
        .memory
        .as_slice()
        .iter()
        .map(|r| r.start)
        .min()
        .unwrap_or(0);
    for cut in [p.image, p.dt, Range::from_base_size(ram_base, LOW_RESERVE)] {
        ranges.subtract(&cut);
    }
    let mut aligned = RangeSet::<64>::default();
    for r in ranges.as_slice() {
        aligned.push(r.align_inward(PAGE));
    }
    ensure!(
        !ranges.overflowed() && !aligned.overflowed(),
        "too many memory ranges to track (more than 64)"
    );
    Ok(aligned)
}

/// The most RAM `ram-rw` writes: on a larger machine it tests the lowest
/// and the highest [`RAM_RW_MAX`]/2 of what the host may overwrite (where
/// the host's image and the hypervisor's boot-sized part meet host RAM),
/// so that a 64 GiB machine under TCG neither takes minutes nor makes QEMU
/// allocate all of its RAM.
const RAM_RW_MAX: u64 = 2 << 30;

/// [`test_ranges`], cut to at most [`RAM_RW_MAX`] bytes at its two ends.
fn bounded(ranges: RangeSet<64>) -> RangeSet<64> {
    let all = ranges.as_slice();
    let (Some(low), Some(high)) = (all.first(), all.last()) else { return ranges };
    if ranges.total() <= RAM_RW_MAX {
        return ranges;
    }
    let half = RAM_RW_MAX / 2;
    let windows = [
        Range { start: low.start, end: low.start.saturating_add(half) },
        Range { start: high.end.saturating_sub(half), end: high.end },
    ];
    let mut out = RangeSet::<64>::default();
    for r in all {
        for w in &windows {
            let cut = Range { start: r.start.max(w.start), end: r.end.min(w.end) };
            // Windows that overlap each other are merged by keeping the
            // second only from where the first ends.
            let cut = match out.as_slice().last() {
                Some(last) if last.end > cut.start => Range { start: last.end, end: cut.end },
                _ => cut,
            };
            if cut.start < cut.end {
                out.push(cut);
            }
        }
    }
    out
}

/// `ram-rw`: every 64-bit word of every page the host owns (on a machine
/// with more than [`RAM_RW_MAX`] of it, of the lowest and highest pages:
/// see [`bounded`]) can be written with an address-dependent pattern and
/// reads back unchanged.
pub fn ram_rw(p: &Platform) -> Result<(), Msg> {
    let all = test_ranges(p)?;
    let owned = all.total();
    let ranges = bounded(all);
    let bytes = ranges.total();
    ensure!(bytes > 0, "no usable RAM outside the image and the DT");
    let start = arch::counter();
    for r in ranges.as_slice() {
        arch::ram_fill(r.start, r.end, SEED);
    }
    for r in ranges.as_slice() {
        debug_assert!(r.start % RAM_BLOCK == 0);
        if let Some(block) = arch::ram_verify(r.start, r.end, SEED) {
            for address in (block..block + RAM_BLOCK).step_by(8) {
                let got = arch::ram_read(address);
                let expected = arch::ram_pattern(address, SEED);
                if got != expected {
                    fail!("RAM at {address:#x} read back {got:#x}, wrote {expected:#x}");
                }
            }
            fail!("RAM block at {block:#x} read back differently, then matched on a re-read");
        }
    }
    note!(
        "{} pages ({} MiB) in {} ranges written and verified in {} ms{}",
        bytes / PAGE,
        bytes >> 20,
        ranges.as_slice().len(),
        cpus::elapsed_ms(start),
        if bytes < owned { " (the lowest and highest pages only)" } else { "" }
    );
    Ok(())
}
