//! Fuzz target: raw bytes become a sequence of ownership calls (hostile
//! arguments included) and ghost writes, run on the crate and on the naive
//! reference model; after every step the harness checks they agree, that a
//! failed call changed nothing, the table invariants, and that page tables
//! kept from the returned effects never expose a guest's secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_ownership::{Component, PAGE_SIZE, VmId};

#[path = "../../crates/ownership/tests/common/mod.rs"]
mod common;

use common::harness::{Harness, Step};
use common::reference::{Call, Reference};

/// First page frame of the fuzzed table.
const BASE: u64 = 0x4_0000;
/// Pages in the fuzzed table.
const PAGES: u64 = 32;
/// Guests the calls can name: three real ones and a stranger.
const VMS: [VmId; 4] = [VmId(1), VmId(2), VmId(3), VmId(0xffff)];
/// Longest sequence decoded from one input.
const MAX_STEPS: usize = 512;

/// Reads bytes off the front of the input; zeroes once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        first
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
}

fn decode(bytes: &mut Bytes<'_>) -> Step {
    let kind = bytes.u8();
    let who = bytes.u8();
    let vm = VMS[usize::from(who & 3)];
    // The VM lifecycle for the three real guests (the stranger's
    // metadata calls are free calls below).
    let lifecycle_vm = VMS[usize::from(who % 3)];
    match kind % 22 {
        15 | 16 => {
            let start = bytes.u8();
            let count = bytes.u8();
            return Step::VmCreate {
                vm: lifecycle_vm,
                addr: (BASE + u64::from(start) % PAGES) * PAGE_SIZE,
                pages: 1 + u64::from(count) % 6,
            };
        }
        17 | 18 => return Step::VmAllocate { vm: lifecycle_vm },
        19 => return Step::VmDestroy { vm: lifecycle_vm },
        _ => {}
    }
    let call = match kind % 22 {
        0 => Call::HostShareHyp,
        1 => Call::HostUnshareHyp,
        2 => Call::HostDonateHyp,
        3 => Call::HypDonateHost,
        4 => Call::HostDonateGuest(vm),
        5 => Call::GuestShareHost(vm),
        6 => Call::GuestUnshareHost(vm),
        7 => Call::HostShareGuest(vm),
        8 => Call::HostUnshareGuest(vm),
        9 => Call::GuestRelinquish(vm),
        10 => Call::HostReclaimGuest(vm),
        11 => Call::HypPin,
        12 => Call::HypUnpin,
        13 => Call::HostDonateVmMeta(VMS[3]),
        14 => Call::HypReleaseVmMeta(VMS[3]),
        writer => {
            let by = if writer % 2 == 0 {
                Component::Host
            } else {
                Component::Guest(vm)
            };
            let page = BASE + u64::from(bytes.u8()) % PAGES;
            return Step::Write { page, by };
        }
    };
    // Start: a page of the table or just past it, else something hostile.
    let start = bytes.u8();
    let addr = match start {
        0..=0xef => (BASE + u64::from(start) % (PAGES + 2)) * PAGE_SIZE,
        0xf0..=0xf3 => {
            (BASE + u64::from(bytes.u8()) % PAGES) * PAGE_SIZE + u64::from(bytes.u8()) + 1
        }
        0xf4..=0xf7 => u64::from(bytes.u8()) * PAGE_SIZE,
        0xf8..=0xfb => !(PAGE_SIZE - 1),
        _ => bytes.u64(),
    };
    // Count: a few pages, else something hostile.
    let count = bytes.u8();
    let pages = match count {
        0..=0xef => 1 + u64::from(count) % 8,
        0xf0..=0xf3 => 0,
        0xf4..=0xf7 => u64::MAX,
        0xf8..=0xfb => 1 << 52,
        _ => bytes.u64(),
    };
    Step::Call { call, addr, pages }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes(data);
    let mut reference = Reference::new(BASE, PAGES);
    let mut harness = Harness::new(BASE, PAGES, &VMS);
    for _ in 0..MAX_STEPS {
        if bytes.0.is_empty() {
            break;
        }
        let step = decode(&mut bytes);
        step.apply_to(&mut reference);
        harness.apply(step, reference.last);
        harness.check(&reference);
    }
});
