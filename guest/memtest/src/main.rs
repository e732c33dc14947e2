//! Memory test guest: guest RAM must keep its contents across thousands of
//! exits, and registers must survive hypervisor calls and MMIO exits.
//!
//! It fills all free guest RAM (from the end of its image to
//! `GUEST_RAM_BASE + x0`) with an address-dependent pattern and checks it,
//! [`PASSES`] times with a different pattern each time. After every
//! [`CHUNK`] bytes written or checked it reads the console's flag register
//! (an `EXIT_MMIO` to the VMM) and calls `KVM_FEATURES` (handled at EL2
//! without an exit). Between passes it checks that an HVC and an MMIO read
//! preserve `x4`..`x28` / `x2`..`x28` and all SIMD registers.
//!
//! Protocol: console only; vCPU 0 only. The VMM answers MMIO reads of
//! `UARTFR` with 0. Expected exits: many `EXIT_MMIO`, then
//! `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::abi::GuestCall;
use rampart_guest::{arch, hvc, println, report};

rampart_guest::entry!(main);

/// Full fill-and-check passes.
const PASSES: u64 = 4;
/// Bytes between exits.
const CHUNK: u64 = 64 << 10;

fn pattern(addr: u64, pass: u64) -> u64 {
    (addr ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xff51_afd7_ed55_8ccd)
        .rotate_left(u32::try_from(pass % 64).unwrap_or(0))
        ^ addr
}

/// The first mismatch seen and how many there were.
#[derive(Default)]
struct Mismatches {
    count: u64,
    first: Option<(u64, u64, u64)>,
}

fn exit_point(exits: &mut u64) {
    arch::uart_flags();
    hvc::call0(GuestCall::KvmFeatures);
    *exits += 1;
}

fn main(_ram_size: u64) {
    let (start, end) = arch::free_ram();
    let end = end & !7;
    if end <= start {
        report::fail("memtest", format_args!("no free RAM: {start:#x}..{end:#x}"));
        return;
    }
    println!(
        "memtest: {:#x}..{:#x} ({} KiB), {PASSES} passes, an exit every {} KiB",
        start,
        end,
        (end - start) >> 10,
        CHUNK >> 10
    );
    let mut exits = 0;
    let mut bad = Mismatches::default();
    let mut hvc_regs = Ok(());
    let mut mmio_regs = Ok(());
    for pass in 0..PASSES {
        let mut chunk = start;
        while chunk < end {
            let stop = end.min(chunk + CHUNK);
            for addr in (chunk..stop).step_by(8) {
                arch::ram_write_u64(addr, pattern(addr, pass));
            }
            exit_point(&mut exits);
            chunk = stop;
        }
        let mut chunk = start;
        while chunk < end {
            let stop = end.min(chunk + CHUNK);
            for addr in (chunk..stop).step_by(8) {
                let (got, want) = (arch::ram_read_u64(addr), pattern(addr, pass));
                if got != want {
                    bad.count += 1;
                    bad.first.get_or_insert((addr, got, want));
                }
            }
            exit_point(&mut exits);
            chunk = stop;
        }
        hvc_regs = hvc_regs.and(arch::hvc_preserves_registers(GuestCall::KvmFeatures.id()));
        mmio_regs = mmio_regs.and(arch::mmio_read_preserves_registers());
        println!(
            "memtest: pass {} of {PASSES} done, {} mismatches, {exits} exits so far",
            pass + 1,
            bad.count
        );
    }
    match bad.first {
        None => report::pass("memtest-pattern"),
        Some((addr, got, want)) => report::fail(
            "memtest-pattern",
            format_args!(
                "{} mismatched words; first at {addr:#x}: {got:#x}, want {want:#x}",
                bad.count
            ),
        ),
    }
    report::check(
        "memtest-exits",
        exits >= 1000 || end - start < 1000 * CHUNK / (2 * PASSES),
        format_args!("only {exits} exits"),
    );
    report::check(
        "memtest-hvc-registers",
        hvc_regs.is_ok(),
        format_args!(
            "register {:?} changed across HVC KVM_FEATURES (100+n = v<n>)",
            hvc_regs.err()
        ),
    );
    report::check(
        "memtest-mmio-registers",
        mmio_regs.is_ok(),
        format_args!(
            "register {:?} changed across an MMIO read (100+n = v<n>)",
            mmio_regs.err()
        ),
    );
}
