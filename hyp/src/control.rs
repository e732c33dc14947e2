//! The control pages: host user space (a VMM, through `/dev/mem`) makes the
//! same calls as `HVC #0` by storing registers into a channel page and
//! ringing its doorbell. The pages are the last ones of the carve-out and
//! are mapped nowhere, so every access traps here as a stage-2 fault.

use rampart_abi::boot::control::{CHANNELS, DOORBELL, REGISTER_COUNT, REGISTERS};
use rampart_platform::{MemRange, PAGE_SIZE};
use spin::Once;
use spin::mutex::SpinMutex;

use crate::arch::{self, Frame};

/// Where the channels are.
static REGION: Once<MemRange> = Once::new();

/// Each channel's registers.
static CHANNELS_STATE: [SpinMutex<[u64; REGISTER_COUNT as usize]>; CHANNELS as usize] =
    [const { SpinMutex::new([0; REGISTER_COUNT as usize]) }; CHANNELS as usize];

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
    const ISV: u64 = 1 << 24;
    const SAS_64: u64 = 0b11 << 22;
    let Some(region) = region() else { return false };
    if !region.contains(ipa) {
        return false;
    }
    // Only naturally aligned 64-bit loads and stores with a valid syndrome.
    if esr & ISV == 0 || esr & (0b11 << 22) != SAS_64 || !ipa.is_multiple_of(8) {
        return false;
    }
    let write = esr & (1 << 6) != 0;
    let register = ((esr >> 16) & 0x1f) as usize;
    let channel = ((ipa - region.start()) / PAGE_SIZE) as usize;
    let offset = ipa % PAGE_SIZE;
    let Some(state) = CHANNELS_STATE.get(channel) else { return false };
    // A channel busy on another CPU (in a long VCPU_RUN) is refused rather
    // than waited for: one channel per thread is the protocol.
    let Some(mut regs) = state.try_lock() else { return false };
    let index = offset.checked_sub(REGISTERS).map(|o| (o / 8) as usize).filter(|&i| i < REGISTER_COUNT as usize);
    match (write, offset, index) {
        (true, DOORBELL, _) => crate::host::dispatch(&mut regs),
        (true, _, Some(i)) => regs[i] = if register == 31 { 0 } else { frame.x[register] },
        (false, _, Some(i)) => {
            if register != 31 {
                frame.x[register] = regs[i];
            }
        }
        _ => return false,
    }
    // The access is done: step over it.
    // SAFETY: the host resumes at its next instruction, as after a store or
    // load that completed.
    unsafe { arch::set_elr_el2(arch::elr_el2().wrapping_add(4)) };
    true
}
