//! The control pages: host user space (a VMM, through `/dev/mem`) makes the
//! same calls as `HVC #0` through a channel page. The pages are the last
//! ones of the carve-out and are mapped nowhere, so every access traps here
//! as a stage-2 fault.
//!
//! Two ways to call (docs/abi.md "The control pages"):
//! - **Registers** (every ABI version): 18 trapped stores of `x0`..`x17`,
//!   a trapped store to the doorbell, trapped loads of the results.
//! - **Call page** (host ABI 0.6): the host binds one page of its own RAM,
//!   which it shared with the hypervisor (`SHARE_HYP`), to the channel (a
//!   store to `BIND`). The hypervisor pins it: while it is bound no
//!   ownership change can take it (`UNSHARE_HYP` is `BUSY`; `DONATE_HYP`,
//!   `SHARE_HYP`, `RECLAIM_HYP`, `VM_DONATE`, `VM_SHARE` are `DENIED`, as
//!   for any page the host lent to the hypervisor). A call is then plain
//!   stores of the arguments into that page and **one** trapped store to
//!   `CALL`: the hypervisor copies the 18 words out of the page exactly
//!   once, validates and uses only that copy, runs the call and writes the
//!   results back before the store retires.

use rampart_abi::Error;
use rampart_abi::boot::control::{CHANNELS, REGISTER_COUNT};
use rampart_abi::error::SUCCESS;
use rampart_abi::host::PageRange;
use rampart_ownership::Transition;
use rampart_platform::cache::CacheOps;
use rampart_platform::trap::ControlAccess;
use rampart_platform::{MemRange, PAGE_SIZE};
use spin::Once;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::mutex::{SpinMutex, SpinMutexGuard};

use crate::arch::cache::El2Cache;
use crate::arch::{self, Frame};

/// Where the channels are.
static REGION: Once<MemRange> = Once::new();

const WORDS: usize = REGISTER_COUNT as usize;

/// One channel's state. Its lock is held for the whole of an access,
/// a call included: a second CPU on the same channel is refused.
struct Channel {
    /// The register-path registers (`x0`..`x17`).
    regs: [u64; WORDS],
    /// The bound call page (pinned shared host RAM), if any.
    page: Option<u64>,
}

/// Each channel's state.
static CHANNELS_STATE: [SpinMutex<Channel>; CHANNELS as usize] = [const {
    SpinMutex::new(Channel {
        regs: [0; WORDS],
        page: None,
    })
}; CHANNELS as usize];

/// Every channel's bound page, to refuse binding one page to two channels
/// (taken after a channel's lock, never before).
static BOUND: SpinMutex<[u64; CHANNELS as usize]> = SpinMutex::new([0; CHANNELS as usize]);

/// Each channel's "a call is in it" flag, set and cleared under the
/// channel's lock around a call (doorbell or call page).
static CALLING: [AtomicBool; CHANNELS as usize] = [const { AtomicBool::new(false) }; CHANNELS as usize];

/// How long an access waits for another CPU's access to the same channel
/// (register accesses and `BIND` hold the lock for a bounded handful of
/// instructions at EL2 with interrupts masked, so on hardware this is never
/// reached; under an emulator a holder's thread may be descheduled: at
/// 100 ms a loaded 2-core build machine made an owner's store abort once in
/// an oracle run, so the bound leaves room for that).
const CONTENDED_WAIT_MS: u64 = 1000;

/// Takes `channel`'s lock for one access. Another CPU's register access or
/// `BIND` is waited for; a call in flight on another CPU (which may run a
/// guest for as long as the host lets it) is not: the access is refused
/// (`None`), as is one that waited [`CONTENDED_WAIT_MS`] in vain.
fn lock(channel: usize) -> Option<SpinMutexGuard<'static, Channel>> {
    let state = CHANNELS_STATE.get(channel)?;
    let calling = CALLING.get(channel)?;
    let mut deadline = None;
    loop {
        if let Some(guard) = state.try_lock() {
            return Some(guard);
        }
        if calling.load(Ordering::Acquire) {
            return None;
        }
        let now = arch::cache::counter();
        match deadline {
            None => deadline = Some(now.saturating_add(arch::cache::counter_frequency() / 1000 * CONTENDED_WAIT_MS)),
            Some(end) if now >= end => return None,
            Some(_) => {}
        }
        core::hint::spin_loop();
    }
}

/// Marks a call in flight on a channel while it lives (its lock held).
struct Calling(&'static AtomicBool);

impl Calling {
    fn enter(channel: usize) -> Option<Self> {
        let flag = CALLING.get(channel)?;
        flag.store(true, Ordering::Release);
        Some(Calling(flag))
    }
}

impl Drop for Calling {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Records where the control pages are (at boot).
pub fn init(region: MemRange) {
    REGION.call_once(|| region);
}

/// The control pages, once set.
pub fn region() -> Option<MemRange> {
    REGION.get().copied()
}

/// Handles a host stage-2 data abort at `ipa` if it is a control-page
/// access: returns `true` when it was (emulated, or refused with an
/// injected abort by returning `false` for anything malformed).
pub fn handle(ipa: u64, esr: u64, frame: &mut Frame) -> bool {
    let Some(region) = region() else { return false };
    if !region.contains(ipa) {
        return false;
    }
    let channel = ((ipa - region.start()) / PAGE_SIZE) as usize;
    let Some(access) = ControlAccess::decode(ipa % PAGE_SIZE, esr & 0x1ff_ffff) else { return false };
    let Some(mut state) = lock(channel) else { return false };
    match access {
        ControlAccess::Doorbell => {
            let _calling = Calling::enter(channel);
            crate::host::dispatch(&mut state.regs);
        }
        ControlAccess::SetRegister { slot, from } => state.regs[slot] = if from == 31 { 0 } else { frame.x[from] },
        ControlAccess::GetRegister { slot, to } => {
            if to != 31 {
                frame.x[to] = state.regs[slot];
            }
        }
        ControlAccess::Bind { from } => {
            let page = if from == 31 { 0 } else { frame.x[from] };
            #[cfg(feature = "oracle")]
            let result = crate::oracle::bind(channel, page, &mut || bind(&mut state, channel, page));
            #[cfg(not(feature = "oracle"))]
            let result = bind(&mut state, channel, page);
            let code = match result {
                Ok(()) => SUCCESS,
                Err(e) => e.code(),
            };
            state.regs[0] = code as u64;
        }
        ControlAccess::Call => {
            // An unbound channel has nowhere to take the call from.
            let Some(page) = state.page else { return false };
            let _calling = Calling::enter(channel);
            call(page);
        }
    }
    // The access is done: step over it.
    // SAFETY: the host resumes at its next instruction, as after a store or
    // load that completed.
    unsafe { arch::set_elr_el2(arch::elr_el2().wrapping_add(4)) };
    true
}

/// Binds `page` to `channel` (or unbinds it, for 0), under the channel's
/// lock. Nothing changes on error.
fn bind(state: &mut Channel, channel: usize, page: u64) -> Result<(), Error> {
    if page == 0 {
        let old = state.page.ok_or(Error::InvalidParameter)?;
        pin(old, Transition::HypUnpin)?;
        state.page = None;
        if let Some(slot) = BOUND.lock().get_mut(channel) {
            *slot = 0;
        }
        return Ok(());
    }
    if !page.is_multiple_of(PAGE_SIZE) {
        return Err(Error::InvalidParameter);
    }
    if let Some(current) = state.page {
        // Binding the page it already has changes nothing.
        return if current == page {
            Ok(())
        } else {
            Err(Error::Busy)
        };
    }
    // The bound list is checked and updated under its lock, with the pin in
    // between, so two channels binding one page cannot both succeed.
    let mut bound = BOUND.lock();
    if bound.contains(&page) {
        return Err(Error::Busy);
    }
    // The pin is the only check of the page itself: it succeeds only for
    // host RAM the host shared with the hypervisor (so mapped at EL2).
    pin(page, Transition::HypPin)?;
    if let Some(slot) = bound.get_mut(channel) {
        *slot = page;
    }
    state.page = Some(page);
    Ok(())
}

/// Pins or unpins one page in the ownership table.
fn pin(page: u64, transition: Transition) -> Result<(), Error> {
    let range = PageRange::new(page, 1)?;
    crate::memory::with(|m| {
        let checked = m.check(transition, range)?;
        m.commit(checked);
        Ok(())
    })
}

/// One call through the bound call page `page`.
fn call(page: u64) {
    // A bound page is RAM, so this cannot wrap; nothing is read otherwise.
    let Some(request) = MemRange::new(page, page.saturating_add(8 * REGISTER_COUNT)) else {
        return;
    };
    let mut ops = El2Cache::new();
    // The host's stores (through an uncached mapping, in a VMM) complete
    // before anything here reads DRAM; then no stale line of the cacheable
    // EL2 alias may hide them.
    ops.dsb_sy();
    rampart_platform::cache::before_reading(&mut ops, request);
    // SAFETY: `page` is bound, hence pinned host RAM the host shared with
    // the hypervisor: mapped at EL2 (page-aligned, readable) and no host
    // call can unshare it while the channel's lock, held by our caller,
    // keeps it bound. Only host CPUs may write it meanwhile; the call uses
    // only this one copy.
    let mut regs: [u64; WORDS] = unsafe { crate::mm::read_volatile_words(page) };
    crate::host::dispatch(&mut regs);
    // SAFETY: as above; the page is the host's, which loses only what it
    // races with by writing it during its own call.
    unsafe { crate::mm::write_volatile_words(page, &regs) };
    // The results reach DRAM before the host's (uncached) loads.
    rampart_platform::cache::before_reading(&mut ops, request);
}
