//! The host's GICv3 redistributors without LPIs: Rampart traps the first
//! page of each `RD_base` frame and emulates it with the decisions of
//! `rampart_platform::gicr` (`docs/design.md`, "DMA"), so the host can
//! neither aim `GICR_PROPBASER`/`GICR_PENDBASER` nor set
//! `GICR_CTLR.EnableLPIs`: the redistributors never read or write LPI
//! tables in memory no SMMU guards.

use alloc::vec::Vec;

use rampart_platform::MemRange;
use rampart_platform::gicr::{self, Action};
use spin::Once;

use crate::arch::{self, Frame, guest};

/// The trapped pages, set once at boot.
static PAGES: Once<Vec<MemRange>> = Once::new();

/// `ESR_EL2.ISS` of a data abort: the syndrome is valid, its access size,
/// sign extension, register, 64-bit register, write.
const ESR_ISV: u64 = 1 << 24;
const ESR_SSE: u64 = 1 << 21;
const ESR_SF: u64 = 1 << 15;
const ESR_WNR: u64 = 1 << 6;

/// Records the trapped pages: each lies in a redistributor region the
/// boot CPU maps at EL2 as device memory, and none is in the host's
/// stage 2. Once, at boot.
pub fn init(pages: Vec<MemRange>) {
    PAGES.call_once(|| pages);
}

/// Emulates a host data abort at `ipa` if it hit a trapped page with a
/// valid syndrome (a single `LDR`/`STR` of 32 or 64 bits; other sizes
/// read as zero and ignore writes). Returns false otherwise, and the
/// caller injects the abort as for any unmapped address.
pub fn handle(ipa: u64, esr: u64, frame: &mut Frame) -> bool {
    let Some(page) = PAGES.get().and_then(|p| p.iter().find(|r| r.contains(ipa)).copied()) else {
        return false;
    };
    if esr & ESR_ISV == 0 {
        return false;
    }
    let size = 1u64 << ((esr >> 22) & 3);
    let register = ((esr >> 16) & 0x1f) as usize;
    let offset = ipa - page.start();
    let words = if (size == 4 || size == 8) && offset.is_multiple_of(size) { size / 4 } else { 0 };
    if esr & ESR_WNR != 0 {
        let value = frame.x.get(register).copied().unwrap_or(0);
        for i in 0..words {
            let word = (value >> (32 * i)) as u32;
            if let Action::Write { offset, value } = gicr::decide(offset + 4 * i, Some(word)) {
                // SAFETY: `offset` is a word-aligned offset inside the
                // page (gicr::decide returns no other), and the page lies
                // in a redistributor region mapped at EL2 as device
                // memory. The write reaches GICR_CTLR without EnableLPIs,
                // GICR_STATUSR or GICR_WAKER: state the host owns, which
                // touches no memory.
                unsafe { guest::gicr_write32(page.start() + offset, value) };
            }
        }
    } else {
        let mut value = 0u64;
        for i in 0..words {
            let word = match gicr::decide(offset + 4 * i, None) {
                Action::Read { offset, clear } => {
                    // SAFETY: as above; reading a redistributor's RD_base
                    // registers has no side effect.
                    let raw = unsafe { guest::gicr_read32(page.start() + offset) };
                    raw & !clear
                }
                _ => 0,
            };
            value |= u64::from(word) << (32 * i);
        }
        if esr & ESR_SSE != 0 && size < 8 {
            let shift = 64 - 8 * size;
            value = (((value << shift) as i64) >> shift) as u64;
        }
        if esr & ESR_SF == 0 {
            value &= 0xffff_ffff;
        }
        if let Some(x) = frame.x.get_mut(register) {
            *x = value;
        }
    }
    // SAFETY: the access is done; the host resumes at its next instruction
    // (a data abort with a valid syndrome is a 32-bit instruction).
    unsafe { arch::set_elr_el2(arch::elr_el2().wrapping_add(4)) };
    true
}
