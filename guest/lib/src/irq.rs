//! The IRQ handler: acknowledges through `ICC_IAR1_EL1`, counts, masks the
//! virtual timer if it was the source (its line stays high until the
//! guest re-arms it), and ends through `ICC_EOIR1_EL1`.
//!
//! Counters are per interrupt ID below 32 (SGIs and PPIs), summed over all
//! vCPUs; they use plain loads and stores, so only one vCPU should take
//! interrupts at a time.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rampart_abi::guest::VIRTUAL_TIMER_INTID;

use crate::arch;

/// `CNTV_CTL_EL0.IMASK`.
pub const TIMER_IMASK: u64 = 1 << 1;
/// `CNTV_CTL_EL0.ISTATUS`.
pub const TIMER_ISTATUS: u64 = 1 << 2;
/// `CNTV_CTL_EL0.ENABLE`.
pub const TIMER_ENABLE: u64 = 1;

static COUNTS: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];
static SPURIOUS: AtomicU32 = AtomicU32::new(0);
static OTHER: AtomicU32 = AtomicU32::new(0);
/// `CNTV_CTL_EL0` as the last timer interrupt found it.
static LAST_TIMER_CONTROL: AtomicU64 = AtomicU64::new(0);
/// `CNTVCT_EL0` when the last timer interrupt was taken.
static LAST_TIMER_COUNT: AtomicU64 = AtomicU64::new(0);

fn bump(counter: &AtomicU32) {
    counter.store(counter.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
}

/// Called from the IRQ vector.
pub(crate) fn handle() {
    let intid = arch::gic_acknowledge();
    if intid >= 1020 {
        bump(&SPURIOUS);
        return;
    }
    if intid == VIRTUAL_TIMER_INTID {
        let control = arch::virtual_timer_control();
        LAST_TIMER_CONTROL.store(control, Ordering::SeqCst);
        LAST_TIMER_COUNT.store(arch::virtual_count(), Ordering::SeqCst);
        arch::set_virtual_timer_control(control | TIMER_IMASK);
    }
    match usize::try_from(intid).ok().and_then(|i| COUNTS.get(i)) {
        Some(counter) => bump(counter),
        None => bump(&OTHER),
    }
    arch::gic_end(intid);
}

/// Interrupts with ID `intid` (below 32) taken so far.
pub fn count(intid: u32) -> u32 {
    usize::try_from(intid)
        .ok()
        .and_then(|i| COUNTS.get(i))
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

/// Spurious acknowledgements (`ICC_IAR1_EL1` read 1020..1023).
pub fn spurious() -> u32 {
    SPURIOUS.load(Ordering::SeqCst)
}

/// Interrupts with IDs of 32 and above taken so far.
pub fn other() -> u32 {
    OTHER.load(Ordering::SeqCst)
}

/// `CNTV_CTL_EL0` and `CNTVCT_EL0` when the last timer interrupt was taken.
pub fn last_timer() -> (u64, u64) {
    (
        LAST_TIMER_CONTROL.load(Ordering::SeqCst),
        LAST_TIMER_COUNT.load(Ordering::SeqCst),
    )
}
