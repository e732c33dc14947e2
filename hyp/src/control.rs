//! The control pages: host user space (a VMM, through `/dev/mem`) makes the
//! same calls as `HVC #0` by storing registers into a channel page and
//! ringing its doorbell. The pages are the last ones of the carve-out and
//! are mapped nowhere, so every access traps here as a stage-2 fault.

use rampart_abi::boot::control::{CHANNELS, REGISTER_COUNT};
use rampart_platform::trap::ControlAccess;
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
    let Some(region) = region() else { return false };
    if !region.contains(ipa) {
        return false;
    }
    let channel = ((ipa - region.start()) / PAGE_SIZE) as usize;
    let Some(access) = ControlAccess::decode(ipa % PAGE_SIZE, esr & 0x1ff_ffff) else { return false };
    let Some(state) = CHANNELS_STATE.get(channel) else { return false };
    // A channel busy on another CPU (in a long VCPU_RUN) is refused rather
    // than waited for: one channel per thread is the protocol.
    let Some(mut regs) = state.try_lock() else { return false };
    match access {
        ControlAccess::Doorbell => crate::host::dispatch(&mut regs),
        ControlAccess::SetRegister { slot, from } => regs[slot] = if from == 31 { 0 } else { frame.x[from] },
        ControlAccess::GetRegister { slot, to } => {
            if to != 31 {
                frame.x[to] = regs[slot];
            }
        }
    }
    // The access is done: step over it.
    // SAFETY: the host resumes at its next instruction, as after a store or
    // load that completed.
    unsafe { arch::set_elr_el2(arch::elr_el2().wrapping_add(4)) };
    true
}
