//! Spin guest: computes for a long time without a single exit, the way a
//! CPU-bound guest does, so a host can check that it keeps its own clock
//! (its timer interrupts, and a VMM that stops on a signal) while the
//! guest runs. Also checks that a `BRK` reaches the guest's own EL1
//! vector (Linux's `BUG()`/`WARN()`), not the hypervisor.
//!
//! Protocol: console only. vCPU 0 only. Prints
//! `GUEST-SPIN <n> s` and then spins for `n` seconds of its virtual
//! counter with IRQs masked, touching neither MMIO nor the hypervisor, then
//! prints `GUEST-SPIN done` and powers off. Expected exits: `EXIT_MMIO`
//! (console), any number of `EXIT_INTERRUPT` while it spins (the host's
//! own interrupts), then `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::{arch, println, report};

rampart_guest::entry!(main);

/// How long the guest spins.
const SPIN_SECONDS: u64 = 10;

/// `ESR_ELx.EC` of a `BRK` from AArch64.
const EC_BRK64: u64 = 0x3c;

fn main(_ram_size: u64) {
    match arch::probe_brk() {
        Some(trap) => report::check(
            "brk-own-vector",
            trap.ec() == EC_BRK64 && trap.esr & 0xffff == 0x5a,
            format_args!(
                "BRK #0x5a reached the guest's EL1 vector as {trap}, want EC {EC_BRK64:#x} ISS 0x5a"
            ),
        ),
        None => report::check(
            "brk-own-vector",
            false,
            format_args!("BRK #0x5a took no exception"),
        ),
    };
    let frequency = arch::counter_frequency();
    if !report::check(
        "spin-frequency",
        frequency >= 1_000,
        format_args!("CNTFRQ_EL0 = {frequency}"),
    ) {
        return;
    }
    println!("GUEST-SPIN {SPIN_SECONDS} s");
    let end = arch::virtual_count().saturating_add(frequency.saturating_mul(SPIN_SECONDS));
    let mut state = 1u64;
    let mut rounds = 0u64;
    while arch::virtual_count() < end {
        for _ in 0..1_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
        }
        rounds += 1;
    }
    println!("GUEST-SPIN done: {rounds} rounds, state {state:#x}");
    report::check("spin", rounds > 0, format_args!("{rounds} rounds"));
}
