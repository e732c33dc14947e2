//! Count guest (issue 14, secure migration): counts in its own memory and
//! prints every value, so a host that migrates it can show it carried on
//! from the same count on another machine.
//!
//! Protocol: console only. vCPU 0 only. Prints `GUEST-COUNT <n>` for
//! n = 1, 2, 3, ... forever; the counter lives in guest RAM (a static),
//! and each line is printed from the value read back from memory. Expected
//! exits: `EXIT_MMIO` (console), `EXIT_INTERRUPT`; it never stops by
//! itself (the host stops running it).

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use rampart_guest::println;

rampart_guest::entry!(main);

/// The count, in guest RAM.
static COUNT: AtomicU64 = AtomicU64::new(0);

fn main(_ram_size: u64) {
    loop {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        println!("GUEST-COUNT {n}");
        // A little work between lines, so most of the time is spent in
        // the guest, not in console exits.
        let mut x = n;
        for _ in 0..2_000 {
            x = core::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}
