//! Fuzz guest: makes seeded random guest calls and touches random
//! guest-physical addresses (its free RAM, MMIO, beyond its RAM, beyond the
//! IPA space) forever, for the test host's fuzz mode (`testhost.fuzz=`).
//! It never stops by itself: the host bounds it with an exit budget and
//! destroys the VM.
//!
//! Protocol: vCPU 0 only. First it reads its seed with a 64-bit load from
//! [`SEED_ADDRESS`] (an `EXIT_MMIO` read; the host answers with the seed in
//! `x3` of the next `VCPU_RUN`; 0 or a fault means "use the RAM size").
//! Then, forever: a random guest call from `rampart_abi::guest::GuestCall`
//! (except `SYSTEM_OFF`, `SYSTEM_RESET` and `CPU_OFF`, which would end it)
//! with arguments drawn from interesting values, or a random touch. Memory
//! calls that give a page away or write into it (`MEM_RELINQUISH`,
//! `RAMPART_ATTEST`) name pages of the upper half of its free RAM, which it
//! never touches, or pages beyond its RAM; its own loads and
//! stores in RAM go to the lower half, so a page it gave away never
//! faults it. Every 256 actions it stores the action count to
//! [`PROGRESS_ADDRESS`] (an `EXIT_MMIO` write the host counts). Aborts from
//! probes outside its RAM are expected and skipped.

#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![allow(
    clippy::cast_possible_truncation,
    reason = "aarch64 only: usize is 64 bits"
)]

use rampart_abi::guest::{GUEST_RAM_BASE, GuestCall};
use rampart_guest::{arch, hvc};

rampart_guest::entry!(main);

/// Where the guest reads its seed (an MMIO exit).
pub const SEED_ADDRESS: u64 = 0x0a00_0000;
/// Where it reports progress (an MMIO exit).
pub const PROGRESS_ADDRESS: u64 = 0x0a00_0008;

const PAGE: u64 = 4096;

/// SplitMix64: one 64-bit state, full period, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn main(ram_size: u64) {
    let seed = match arch::probe_read(SEED_ADDRESS) {
        Ok(0) | Err(_) => ram_size,
        Ok(seed) => seed,
    };
    let mut rng = Rng(seed);
    let (free_start, free_end) = arch::free_ram();
    let free_start = free_start.next_multiple_of(PAGE);
    let free_end = free_end & !(PAGE - 1);
    let middle = (free_start + (free_end - free_start) / 2) & !(PAGE - 1);
    let ram_end = GUEST_RAM_BASE + ram_size;
    let mut actions: u64 = 0;
    loop {
        actions = actions.wrapping_add(1);
        if actions.is_multiple_of(256) {
            let _ = arch::probe_write(PROGRESS_ADDRESS, actions);
        }
        match rng.below(8) {
            0..=3 => {
                let calls = GuestCall::ALL;
                let call = calls[rng.below(calls.len() as u64) as usize];
                if matches!(
                    call,
                    GuestCall::SystemOff | GuestCall::SystemReset | GuestCall::CpuOff
                ) {
                    continue;
                }
                let mut args = [0u64; 3];
                for arg in &mut args {
                    *arg = match rng.below(8) {
                        0 => 0,
                        1 if middle < free_end => {
                            middle + rng.below((free_end - middle) / PAGE) * PAGE
                        }
                        2 => GUEST_RAM_BASE + rng.below(ram_size / PAGE) * PAGE,
                        3 => ram_end + rng.below(64) * PAGE,
                        4 => 0x0900_0000,
                        5 => u64::MAX - rng.below(4),
                        6 => rng.below(16),
                        _ => rng.next(),
                    };
                }
                // A call that gives a page away or writes into it
                // (`MEM_RELINQUISH`, `RAMPART_ATTEST`'s report) must not
                // name the image (case 2: its code, data or stacks): only
                // the upper half of free RAM, or beyond RAM.
                if matches!(call, GuestCall::MemRelinquish | GuestCall::RampartAttest)
                    && !(middle..free_end).contains(&args[0])
                {
                    args[0] = ram_end + rng.below(16) * PAGE;
                }
                // CPU_ON of vCPU 0 at a random entry is harmless (it is
                // on); of another index there is no such vCPU.
                let _ = hvc::call(call.id(), args);
            }
            4 | 5 => {
                if middle > free_start {
                    let at = free_start + rng.below((middle - free_start) / 8) * 8;
                    arch::ram_write_u64(at, rng.next());
                    let _ = arch::ram_read_u64(at);
                }
            }
            _ => {
                let at = match rng.below(5) {
                    0 => 0x0900_0000 + rng.below(0x1000 / 8) * 8,
                    1 => ram_end + rng.below(1 << 20) * 8,
                    2 => rng.below(GUEST_RAM_BASE / 8) * 8,
                    3 => (1 << 48) + rng.below(1 << 20) * 8,
                    _ => (rng.next() & !7) | (1 << 63),
                };
                if rng.below(2) == 0 {
                    let _ = arch::probe_read(at);
                } else {
                    let _ = arch::probe_write(at, rng.next());
                }
            }
        }
    }
}
