//! Memory calls on another CPU's window (issue 15): two CPUs race
//! ownership calls on the same pages, and the window's owner still knows
//! their state exactly.
//!
//! Each CPU's model of its window is private, so a page may be named by
//! another CPU only while its owner can account for the result. The
//! hand-over (`docs/testing.md`, "Races on one window"):
//!
//! 1. the **owner** picks 1 or 2 pages of its pool in one known state `S`
//!    (the host's, shared with or donated to the hypervisor), draws its
//!    own memory call `c1`, and offers the pages in [`Shared`]'s `race`
//!    slot (one race at a time in the whole run);
//! 2. a **partner** (any other CPU, at the start of its next action)
//!    accepts with its own drawn memory call `c2` on the same pages;
//! 3. the owner says go; both make their call at once (under the oracle
//!    they are serialized in some order; without it they really race in
//!    the hypervisor);
//! 4. the partner posts its result and goes back to its own stream; the
//!    owner checks that the two results are what one of the two orders
//!    gives from `S` ([`outcome`]) and sets the pages to the state that
//!    order leaves. A result no order explains is a failure.
//!
//! The partner's own model is untouched: the pages were never its.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::host::HostCall;

use super::SHARED;
use super::model::Page;

/// `race[0]`: no race.
pub const IDLE: u64 = 0;
/// `race[0]`: the owner offers pages.
pub const OFFERED: u64 = 1;
/// `race[0]`: a partner took them (its call in `race[5]`).
pub const ACCEPTED: u64 = 2;
/// `race[0]`: both may call.
pub const GO: u64 = 3;
/// `race[0]`: the partner posted its result (`race[6]`).
pub const DONE: u64 = 4;
/// `race[0]`: an owner is filling in its offer.
pub const CLAIMED: u64 = 5;
/// How long an owner waits for a partner (then it withdraws the offer).
pub const OFFER_MS: u64 = 10;

/// The four memory calls a race draws from, by index.
pub const CALLS: [HostCall; 4] = [
    HostCall::ShareHyp,
    HostCall::UnshareHyp,
    HostCall::DonateHyp,
    HostCall::ReclaimHyp,
];

/// The state a memory call needs on every page, and the state it leaves.
pub fn transition(call: HostCall) -> (Page, Page) {
    match call {
        HostCall::ShareHyp => (Page::Host, Page::SharedHyp),
        HostCall::UnshareHyp => (Page::SharedHyp, Page::Host),
        HostCall::DonateHyp => (Page::Host, Page::DonatedHyp),
        _ => (Page::DonatedHyp, Page::Host),
    }
}

/// What the calls `c1` (answer `r1`) and `c2` (answer `r2`) on pages in
/// state `s` leave, if one of their two orders explains both answers:
/// each call that succeeded found the state it needs and moved the pages
/// on; each refused with `DENIED` found another; a transient refusal
/// (`NO_MEMORY`, `BUSY`) changed nothing and says nothing. `None`: no order
/// explains the answers.
pub fn outcome(s: Page, c1: HostCall, r1: i64, c2: HostCall, r2: i64) -> Option<Page> {
    let transient = |r: i64| r == Error::NoMemory.code() || r == Error::Busy.code();
    let step = |state: Page, call: HostCall, r: i64| -> Option<Page> {
        let (need, after) = transition(call);
        if r == 0 {
            (state == need).then_some(after)
        } else if transient(r) {
            Some(state)
        } else if r == Error::Denied.code() {
            (state != need).then_some(state)
        } else {
            None
        }
    };
    step(s, c1, r1)
        .and_then(|m| step(m, c2, r2))
        .or_else(|| step(s, c2, r2).and_then(|m| step(m, c1, r1)))
}

/// Counts a race by how many of its calls succeeded.
pub fn count(ok1: bool, ok2: bool) {
    let i = usize::from(ok1) + usize::from(ok2);
    if let Some(c) = SHARED.races.get(i) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Races run: (none succeeded, one, both).
pub fn counts() -> [u64; 3] {
    SHARED.races.each_ref().map(|c| c.load(Ordering::Relaxed))
}

/// Whether another CPU than `cpu` offers pages now.
pub fn offered_to(cpu: usize) -> bool {
    let r = &SHARED.race;
    r[0].load(Ordering::Acquire) == OFFERED && r[1].load(Ordering::Acquire) != cpu as u64
}
