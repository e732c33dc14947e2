//! Timer guest: the EL1 virtual timer's interrupt (PPI 27) must reach the
//! guest through the GICv3 CPU interface, while it runs and while it waits.
//!
//! The guest enables the CPU interface with system registers only
//! (`ICC_SRE_EL1`, `ICC_PMR_EL1` = 0xff, `ICC_IGRPEN1_EL1` = 1); it touches
//! no distributor (in a Rampart VM there is none; the hypervisor injects
//! the timer interrupt through a list register). The IRQ handler
//! acknowledges through `ICC_IAR1_EL1`, sets `CNTV_CTL_EL0.IMASK` and ends
//! through `ICC_EOIR1_EL1`. Checks, each with a 2 s timeout:
//!
//! - `timer-busy`: three interrupts taken while spinning (IRQs unmasked);
//! - `timer-wfi`: three taken after `WFI` (an `EXIT_WAIT` in a VM; the
//!   hypervisor or VMM must resume the vCPU when its timer fires);
//! - `timer-wfi-masked`: `WFI` with IRQs masked wakes when the timer
//!   fires, and the interrupt is taken as soon as they are unmasked;
//! - `timer-many`: twenty back-to-back 1 ms interrupts;
//! - `timer-imask`: a timer with `IMASK` set fires no interrupt;
//! - `timer-no-stray`: no spurious and no other interrupt IDs.
//!
//! Each interrupt must arrive after its deadline with `ISTATUS` set.
//! vCPU 0 only. Expected exits: `EXIT_MMIO`, `EXIT_WAIT`, possibly
//! `EXIT_INTERRUPT`, then `EXIT_SYSTEM_OFF`. On plain QEMU (no hypervisor)
//! the guest also programs QEMU's GIC distributor and redistributor.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::abi::VIRTUAL_TIMER_INTID as TIMER;
use rampart_guest::irq::{self, TIMER_ENABLE, TIMER_IMASK, TIMER_ISTATUS};
use rampart_guest::{arch, no_hypervisor, println, report};

rampart_guest::entry!(main);

/// Timeout of each wait, in milliseconds.
const TIMEOUT_MS: u64 = 2_000;

/// How a wait for one timer interrupt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Taken after its deadline with ISTATUS set.
    Taken,
    /// Taken, but early or without ISTATUS: (deadline, count at IRQ, CTL).
    Wrong(u64, u64, u64),
    /// Not taken before the timeout.
    Missed,
}

struct Clock {
    ticks_per_ms: u64,
}

impl Clock {
    fn arm(&self, millis: u64) -> u64 {
        let ticks = self.ticks_per_ms * millis;
        let deadline = arch::virtual_count() + ticks;
        arch::set_virtual_timer_value(ticks);
        arch::set_virtual_timer_control(TIMER_ENABLE);
        deadline
    }

    fn timeout(&self) -> u64 {
        arch::virtual_count() + self.ticks_per_ms * TIMEOUT_MS
    }

    /// Arms the timer for `millis` and waits for its interrupt, spinning
    /// or in `WFI`.
    fn one(&self, millis: u64, wfi: bool) -> Outcome {
        let before = irq::count(TIMER);
        let deadline = self.arm(millis);
        let timeout = self.timeout();
        arch::irq_enable();
        while irq::count(TIMER) == before && arch::virtual_count() < timeout {
            if wfi {
                arch::wait_for_interrupt();
            }
        }
        arch::irq_disable();
        self.outcome(before, deadline)
    }

    fn outcome(&self, before: u32, deadline: u64) -> Outcome {
        if irq::count(TIMER) == before {
            arch::set_virtual_timer_control(0);
            return Outcome::Missed;
        }
        let (control, count) = irq::last_timer();
        if control & TIMER_ISTATUS != 0 && count >= deadline {
            Outcome::Taken
        } else {
            Outcome::Wrong(deadline, count, control)
        }
    }
}

fn rounds(clock: &Clock, n: u32, millis: u64, wfi: bool) -> Result<(), (u32, Outcome)> {
    for round in 0..n {
        match clock.one(millis, wfi) {
            Outcome::Taken => {}
            other => return Err((round, other)),
        }
    }
    Ok(())
}

fn main(_ram_size: u64) {
    let frequency = arch::counter_frequency();
    if !report::check(
        "timer-frequency",
        frequency >= 1_000,
        format_args!("CNTFRQ_EL0 = {frequency}"),
    ) {
        return;
    }
    let clock = Clock {
        ticks_per_ms: frequency / 1_000,
    };
    arch::gic_cpu_interface_enable();
    if no_hypervisor() {
        println!("timer: no hypervisor, programming QEMU's GIC distributor");
        arch::qemu_gic_enable_ppi(TIMER);
    }

    let busy = rounds(&clock, 3, 2, false);
    report::check(
        "timer-busy",
        busy.is_ok(),
        format_args!("round, outcome: {busy:x?}"),
    );
    let wfi = rounds(&clock, 3, 5, true);
    report::check(
        "timer-wfi",
        wfi.is_ok(),
        format_args!("round, outcome: {wfi:x?}"),
    );

    // WFI with IRQs masked wakes on the pending interrupt.
    let before = irq::count(TIMER);
    let deadline = clock.arm(5);
    let timeout = clock.timeout();
    while arch::virtual_timer_control() & TIMER_ISTATUS == 0 && arch::virtual_count() < timeout {
        arch::wait_for_interrupt();
    }
    let woke = arch::virtual_timer_control() & TIMER_ISTATUS != 0;
    arch::irq_enable();
    for _ in 0..1000 {
        if irq::count(TIMER) != before {
            break;
        }
        arch::uart_flags();
    }
    arch::irq_disable();
    let masked = clock.outcome(before, deadline);
    report::check(
        "timer-wfi-masked",
        woke && masked == Outcome::Taken,
        format_args!("ISTATUS after WFI: {woke}; after unmasking: {masked:x?}"),
    );

    let many = rounds(&clock, 20, 1, false);
    report::check(
        "timer-many",
        many.is_ok(),
        format_args!("round, outcome: {many:x?}"),
    );

    // IMASK set: the timer fires (ISTATUS) but raises no interrupt. It is
    // armed masked in one write: armed unmasked first, it could fire
    // before the mask if this vCPU is held up for a millisecond between
    // the two writes (an exit to a loaded host), and the interrupt it
    // raised then may rightly still be delivered.
    let before = irq::count(TIMER);
    arch::set_virtual_timer_value(clock.ticks_per_ms);
    arch::set_virtual_timer_control(TIMER_ENABLE | TIMER_IMASK);
    arch::irq_enable();
    let quiet_until = arch::virtual_count() + clock.ticks_per_ms * 20;
    while arch::virtual_count() < quiet_until {}
    arch::irq_disable();
    let control = arch::virtual_timer_control();
    report::check(
        "timer-imask",
        irq::count(TIMER) == before && control & TIMER_ISTATUS != 0,
        format_args!(
            "{} interrupts with IMASK set; CNTV_CTL = {control:#x}",
            irq::count(TIMER) - before
        ),
    );
    arch::set_virtual_timer_control(0);

    let stray: u32 = (0..32).filter(|&i| i != TIMER).map(irq::count).sum();
    println!(
        "timer: {} timer interrupts, {} spurious, {} other PPIs/SGIs, {} SPIs; CNTFRQ {frequency} Hz",
        irq::count(TIMER),
        irq::spurious(),
        stray,
        irq::other()
    );
    report::check(
        "timer-no-stray",
        stray == 0 && irq::spurious() == 0 && irq::other() == 0,
        format_args!(
            "{stray} stray, {} spurious, {} other",
            irq::spurious(),
            irq::other()
        ),
    );
}
