//! The host's GICv3 redistributors, without LPIs (`docs/design.md`, "DMA").
//!
//! A redistributor that supports LPIs reads its LPI configuration table and
//! reads and writes its LPI pending table in memory, at the addresses in
//! `GICR_PROPBASER` and `GICR_PENDBASER`, once `GICR_CTLR.EnableLPIs` is
//! set. No SMMU translates those accesses, so a host that programs them can
//! make the GIC read the carve-out or a protected VM (a set bit there
//! becomes a pending LPI the host sees) and clear bits in it (when the LPI
//! is acknowledged). The ITS is hidden from the host (`devices.rs`), and
//! without it LPIs have no use there; so Rampart traps the first 4 KiB of
//! each redistributor's `RD_base` frame, where those three registers live,
//! and emulates it: reads pass through except that `GICR_TYPER` says no
//! LPIs and the table bases read as zero; writes reach only `GICR_CTLR`
//! (with `EnableLPIs` kept clear), `GICR_STATUSR` and `GICR_WAKER`.
//!
//! This module holds the decisions; the hypervisor performs the accesses.

use alloc::vec::Vec;

use crate::MemRange;

/// The trapped part of each `RD_base` frame.
pub const RD_PAGE: u64 = crate::PAGE_SIZE;

/// `GICR_CTLR`.
pub const GICR_CTLR: u64 = 0x0;
/// `GICR_TYPER` (64-bit).
pub const GICR_TYPER: u64 = 0x8;
/// `GICR_STATUSR`.
pub const GICR_STATUSR: u64 = 0x10;
/// `GICR_WAKER`.
pub const GICR_WAKER: u64 = 0x14;
/// `GICR_PROPBASER` (64-bit).
pub const GICR_PROPBASER: u64 = 0x70;
/// `GICR_PENDBASER` (64-bit).
pub const GICR_PENDBASER: u64 = 0x78;

/// `GICR_CTLR.EnableLPIs`.
pub const CTLR_ENABLE_LPIS: u32 = 1;
/// `GICR_TYPER.PLPIS`: physical LPIs supported.
pub const TYPER_PLPIS: u32 = 1;
/// `GICR_TYPER.VLPIS`: a GICv4 redistributor (four 64 KiB frames).
pub const TYPER_VLPIS: u32 = 1 << 1;
/// `GICR_TYPER.DirectLPI`.
pub const TYPER_DIRECT_LPI: u32 = 1 << 3;
/// `GICR_TYPER.Last`: the last redistributor of its region.
pub const TYPER_LAST: u32 = 1 << 4;

/// GICv3: `RD_base` and `SGI_base`; GICv4 adds `VLPI_base` and a reserved
/// frame.
const STRIDE_V3: u64 = 0x2_0000;
const STRIDE_V4: u64 = 0x4_0000;

/// The first 4 KiB page of every redistributor's `RD_base` frame in
/// `regions` (from the device tree), walking each region frame by frame
/// with `read_typer_low` (the low word of `GICR_TYPER` at an address) until
/// a frame says `Last` or the region ends.
pub fn rd_pages(regions: &[MemRange], mut read_typer_low: impl FnMut(u64) -> u32) -> Vec<MemRange> {
    let mut pages = Vec::new();
    for region in regions {
        let mut frame = region.start();
        // Every frame must fit whole (its RD_base and SGI_base frames).
        while frame.checked_add(STRIDE_V3).is_some_and(|end| end <= region.end()) {
            let Some(page) = MemRange::from_base_size(frame, RD_PAGE) else { break };
            pages.push(page);
            let typer = read_typer_low(frame + GICR_TYPER);
            if typer & TYPER_LAST != 0 {
                break;
            }
            let stride = if typer & TYPER_VLPIS != 0 { STRIDE_V4 } else { STRIDE_V3 };
            let Some(next) = frame.checked_add(stride) else { break };
            frame = next;
        }
    }
    pages
}

/// What to do with one 32-bit word access to a trapped page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the word at `offset` and clear the bits of `clear`.
    Read {
        /// Offset in the page.
        offset: u64,
        /// Bits the host reads as zero.
        clear: u32,
    },
    /// Read as zero, touch nothing.
    ReadZero,
    /// Write `value` to the word at `offset`.
    Write {
        /// Offset in the page.
        offset: u64,
        /// The value written.
        value: u32,
    },
    /// Drop the write.
    Ignore,
}

/// The action for a 32-bit word access at `offset` of a trapped page:
/// a read when `write` is `None`, else a write of that value. Offsets
/// that are not word-aligned or lie outside the page read as zero and
/// ignore writes.
#[must_use]
pub fn decide(offset: u64, write: Option<u32>) -> Action {
    if !offset.is_multiple_of(4) || offset >= RD_PAGE {
        return if write.is_some() { Action::Ignore } else { Action::ReadZero };
    }
    let tables = GICR_PROPBASER..GICR_PENDBASER + 8;
    match write {
        None if tables.contains(&offset) => Action::ReadZero,
        None if offset == GICR_CTLR => Action::Read { offset, clear: CTLR_ENABLE_LPIS },
        None if offset == GICR_TYPER => Action::Read { offset, clear: TYPER_PLPIS | TYPER_DIRECT_LPI },
        None => Action::Read { offset, clear: 0 },
        Some(value) if offset == GICR_CTLR => Action::Write { offset, value: value & !CTLR_ENABLE_LPIS },
        Some(value) if offset == GICR_STATUSR || offset == GICR_WAKER => Action::Write { offset, value },
        Some(_) => Action::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn r(start: u64, end: u64) -> MemRange {
        MemRange::new(start, end).unwrap()
    }

    #[test]
    fn finds_every_rd_frame_until_last() {
        // QEMU virt, 4 CPUs: frames at 0x080a_0000 + n * 0x2_0000, the
        // fourth says Last; the region is larger than that.
        let region = r(0x080a_0000, 0x0900_0000);
        let pages = rd_pages(&[region], |a| if a == 0x080a_0000 + 3 * 0x2_0000 + 8 { TYPER_LAST } else { 0 });
        assert_eq!(
            pages,
            (0..4).map(|n| r(0x080a_0000 + n * 0x2_0000, 0x080a_1000 + n * 0x2_0000)).collect::<Vec<_>>()
        );
        // GICv4 frames are twice as far apart.
        let pages = rd_pages(&[r(0, 0x10_0000)], |a| if a == 0x4_0000 + 8 { TYPER_VLPIS | TYPER_LAST } else { TYPER_VLPIS });
        assert_eq!(pages, vec![r(0, 0x1000), r(0x4_0000, 0x4_1000)]);
        // No Last bit: the walk stops at the region's end.
        assert_eq!(rd_pages(&[r(0, 0x5_0000)], |_| 0).len(), 2);
        // A region too small for one frame gives nothing; one near the top
        // of the address space does not wrap.
        assert!(rd_pages(&[r(0, 0x1000)], |_| 0).is_empty());
        assert_eq!(rd_pages(&[r(u64::MAX - 0x2_0000, u64::MAX)], |_| 0).len(), 1);
    }

    #[test]
    fn the_host_can_never_turn_lpis_on_or_aim_the_tables() {
        assert_eq!(decide(GICR_CTLR, Some(0xffff_ffff)), Action::Write { offset: 0, value: 0xffff_fffe });
        for offset in [GICR_PROPBASER, GICR_PROPBASER + 4, GICR_PENDBASER, GICR_PENDBASER + 4] {
            assert_eq!(decide(offset, Some(0x4020_0000)), Action::Ignore);
            assert_eq!(decide(offset, None), Action::ReadZero);
        }
        // SETLPIR, CLRLPIR, INVLPIR, INVALLR and anything unknown.
        for offset in [0x40, 0x48, 0xa0, 0xb0, 0xc0, 0xffc] {
            assert_eq!(decide(offset, Some(1)), Action::Ignore);
        }
        assert_eq!(decide(GICR_TYPER, None), Action::Read { offset: 8, clear: TYPER_PLPIS | TYPER_DIRECT_LPI });
        assert_eq!(decide(GICR_TYPER + 4, None), Action::Read { offset: 12, clear: 0 });
        assert_eq!(decide(GICR_CTLR, None), Action::Read { offset: 0, clear: CTLR_ENABLE_LPIS });
        // What Linux needs: WAKER and STATUSR pass.
        assert_eq!(decide(GICR_WAKER, Some(2)), Action::Write { offset: GICR_WAKER, value: 2 });
        assert_eq!(decide(GICR_WAKER, None), Action::Read { offset: GICR_WAKER, clear: 0 });
        assert_eq!(decide(GICR_STATUSR, Some(1)), Action::Write { offset: GICR_STATUSR, value: 1 });
        // Misaligned or outside the page.
        assert_eq!(decide(2, None), Action::ReadZero);
        assert_eq!(decide(2, Some(1)), Action::Ignore);
        assert_eq!(decide(RD_PAGE, None), Action::ReadZero);
        assert_eq!(decide(u64::MAX - 3, Some(1)), Action::Ignore);
    }
}
