//! Bringing CPUs up and down through PSCI.

use core::sync::atomic::Ordering;

use crate::arch::{self, DAIF_ALL, MPIDR_AFFINITY_MASK};
use crate::bench::pmu;
use crate::cpus::{self, ARRIVALS, RELEASED, SLOTS};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::psci;
use crate::{ensure, fail, msg, note};

/// How long the boot CPU waits for secondaries to arrive or switch off.
const TIMEOUT_MS: u64 = 5_000;
/// How many times every secondary is switched on and off.
const ROUNDS: u64 = 2;

/// The boot CPU's index in the DT's CPU list.
pub(super) fn boot_cpu_index(p: &Platform) -> Result<usize, Msg> {
    let mpidr = arch::mpidr() & MPIDR_AFFINITY_MASK;
    p.cpus[..p.cpu_count]
        .iter()
        .position(|&id| id == mpidr)
        .ok_or_else(|| msg!("the boot CPU's MPIDR {mpidr:#x} is not in /cpus"))
}

/// `cpu-on-all`: every secondary in `/cpus` starts through `CPU_ON` at the
/// given entry point (EL1, MMU off, DAIF masked, `x0` = context id, on the
/// CPU with the given MPIDR), `AFFINITY_INFO` reports it ON while it waits
/// and OFF after its `CPU_OFF`; twice, so a CPU that was switched off can be
/// switched on again.
pub fn cpu_on_all(p: &Platform) -> Result<(), Msg> {
    let boot = boot_cpu_index(p)?;
    let state = psci::affinity_info(p.cpus[boot]);
    ensure!(
        state == psci::AFFINITY_ON,
        "AFFINITY_INFO(boot CPU {:#x}) = {state}, expected ON (0)",
        p.cpus[boot]
    );
    let secondaries = p.cpu_count - 1;
    if secondaries == 0 {
        note!("single CPU: no secondaries to start");
        return Ok(());
    }
    let result = (1..=ROUNDS).try_for_each(|round| bring_up_round(p, boot, round));
    // Whatever happened, let parked secondaries switch themselves off.
    RELEASED.store(u64::MAX, Ordering::Release);
    result?;
    note!("{secondaries} secondaries started and stopped {ROUNDS} times");
    Ok(())
}

fn bring_up_round(p: &Platform, boot: usize, round: u64) -> Result<(), Msg> {
    let entry = arch::secondary_entry_address();
    let others = || (0..p.cpu_count).filter(move |&i| i != boot);
    let expected = others().count() as u64;
    for i in others() {
        SLOTS[i].reset();
    }
    ARRIVALS.store(0, Ordering::Release);
    RELEASED.store(round - 1, Ordering::Release);
    let start = arch::counter();

    for i in others() {
        let mpidr = p.cpus[i];
        let state = psci::affinity_info(mpidr);
        ensure!(
            state == psci::AFFINITY_OFF,
            "round {round}: AFFINITY_INFO({mpidr:#x}) before CPU_ON = {state}, expected OFF (1)"
        );
        let ret = psci::cpu_on(mpidr, entry, cpus::context_id(round, i));
        ensure!(
            ret == psci::SUCCESS,
            "round {round}: CPU_ON({mpidr:#x}, {entry:#x}) = {ret}, expected SUCCESS (0)"
        );
    }

    let all_arrived = cpus::wait_until(TIMEOUT_MS, || ARRIVALS.load(Ordering::Acquire) >= expected);
    let arrival_ms = cpus::elapsed_ms(start);
    for i in others() {
        check_arrival(p, i, round)?;
    }
    ensure!(
        all_arrived,
        "round {round}: {} of {expected} secondaries arrived within {TIMEOUT_MS} ms",
        ARRIVALS.load(Ordering::Acquire)
    );
    let arrivals = ARRIVALS.load(Ordering::Acquire);
    ensure!(
        arrivals == expected,
        "round {round}: the arrival counter is {arrivals}, expected {expected}"
    );

    for i in others() {
        let mpidr = p.cpus[i];
        let state = psci::affinity_info(mpidr);
        ensure!(
            state == psci::AFFINITY_ON,
            "round {round}: AFFINITY_INFO({mpidr:#x}) of a running CPU = {state}, expected ON (0)"
        );
        if round == 1 {
            let ret = psci::cpu_on(mpidr, entry, cpus::context_id(round, i));
            ensure!(
                ret == psci::ALREADY_ON || ret == psci::INVALID_PARAMETERS,
                "CPU_ON({mpidr:#x}) of a running CPU = {ret}, expected ALREADY_ON (-4) or INVALID_PARAMETERS (-2)"
            );
        }
    }

    RELEASED.store(round, Ordering::Release);
    for i in others() {
        let mpidr = p.cpus[i];
        let mut state = 0;
        let off = cpus::wait_until(TIMEOUT_MS, || {
            state = psci::affinity_info(mpidr);
            state == psci::AFFINITY_OFF
        });
        let off_error = SLOTS[i].off_error.load(Ordering::Acquire);
        ensure!(
            off_error == 0,
            "round {round}: CPU {mpidr:#x}: CPU_OFF returned {}",
            off_error as i64 & i64::MAX
        );
        ensure!(
            off,
            "round {round}: AFFINITY_INFO({mpidr:#x}) = {state} {TIMEOUT_MS} ms after CPU_OFF, expected OFF (1)"
        );
    }
    note!("round {round}: {expected} secondaries on in {arrival_ms} ms, then off");
    Ok(())
}

/// Checks what secondary `i` recorded at its entry point.
fn check_arrival(p: &Platform, i: usize, round: u64) -> Result<(), Msg> {
    let slot = &SLOTS[i];
    let mpidr = p.cpus[i];
    let fault_vector = slot.fault[3].load(Ordering::Acquire);
    if fault_vector != 0 {
        fail!(
            "round {round}: CPU {mpidr:#x} took an exception: vector {}, ESR={:#x} ELR={:#x} FAR={:#x}",
            fault_vector - 1,
            slot.fault[0].load(Ordering::Relaxed),
            slot.fault[1].load(Ordering::Relaxed),
            slot.fault[2].load(Ordering::Relaxed)
        );
    }
    let arrived = slot.arrived.load(Ordering::Acquire);
    ensure!(
        arrived != 0,
        "round {round}: CPU {mpidr:#x} never reached its entry point"
    );
    let context = slot.context.load(Ordering::Relaxed);
    let expected_context = cpus::context_id(round, i);
    ensure!(
        context == expected_context,
        "round {round}: CPU {mpidr:#x} got context id {context:#x}, expected {expected_context:#x}"
    );
    let actual_mpidr = slot.mpidr.load(Ordering::Relaxed);
    ensure!(
        actual_mpidr == mpidr,
        "round {round}: CPU_ON({mpidr:#x}) started the CPU with MPIDR {actual_mpidr:#x}"
    );
    let el = (slot.current_el.load(Ordering::Relaxed) >> 2) & 3;
    ensure!(
        el == 1,
        "round {round}: CPU {mpidr:#x} entered at EL{el}, expected EL1"
    );
    let sctlr = slot.sctlr.load(Ordering::Relaxed);
    ensure!(
        sctlr & 1 == 0,
        "round {round}: CPU {mpidr:#x} entered with the MMU on (SCTLR_EL1 = {sctlr:#x})"
    );
    let daif = slot.daif.load(Ordering::Relaxed);
    ensure!(
        daif & DAIF_ALL == DAIF_ALL,
        "round {round}: CPU {mpidr:#x} entered with DAIF = {daif:#x}, expected all masked"
    );
    Ok(())
}

/// `cpu-on-already-on`: `CPU_ON` of the calling CPU itself is refused with
/// ALREADY_ON or INVALID_PARAMETERS.
pub fn cpu_on_already_on(p: &Platform) -> Result<(), Msg> {
    let boot = boot_cpu_index(p)?;
    let mpidr = p.cpus[boot];
    let ret = psci::cpu_on(
        mpidr,
        arch::secondary_entry_address(),
        cpus::context_id(1, boot),
    );
    ensure!(
        ret == psci::ALREADY_ON || ret == psci::INVALID_PARAMETERS,
        "CPU_ON(boot CPU {mpidr:#x}) = {ret}, expected ALREADY_ON (-4) or INVALID_PARAMETERS (-2)"
    );
    Ok(())
}

/// `cpu-on-bogus`: `CPU_ON` of an MPIDR no CPU has is INVALID_PARAMETERS.
pub fn cpu_on_bogus(p: &Platform) -> Result<(), Msg> {
    let present = &p.cpus[..p.cpu_count];
    for bogus in [0x00ff_00ff_u64, 0xfe_0000_fe00, 0x0000_ff00] {
        if present.contains(&bogus) {
            continue;
        }
        let ret = psci::cpu_on(
            bogus,
            arch::secondary_entry_address(),
            cpus::context_id(1, 0),
        );
        ensure!(
            ret == psci::INVALID_PARAMETERS,
            "CPU_ON({bogus:#x}) of a CPU that does not exist = {ret}, expected INVALID_PARAMETERS (-2)"
        );
        let state = psci::affinity_info(bogus);
        ensure!(
            state == psci::INVALID_PARAMETERS,
            "AFFINITY_INFO({bogus:#x}) of a CPU that does not exist = {state}, expected INVALID_PARAMETERS (-2)"
        );
    }
    Ok(())
}

/// An unknown host call: decoded and refused at EL2.
const UNKNOWN_HOST_CALL: u32 = 0xC600_80FF;

/// `pmu-el2-hidden`: the host's PMU does not count what the hypervisor
/// does. With both counters filtered to EL2 only (`P = U = 1`, `NSH = 1`),
/// a thousand host calls leave the event counter (`CPU_CYCLES`) at zero on
/// FEAT_PMUv3p1 (Rampart sets `MDCR_EL2.HPMD`) and the cycle counter at
/// zero on FEAT_PMUv3p5 (`MDCR_EL2.HCCD`). The same counters filtered to
/// EL1 count a loop there, so a zero means "hidden", not "broken".
pub fn pmu_el2_hidden(_: &Platform) -> Result<(), Msg> {
    const CALLS: u32 = 1000;
    let info = pmu::info();
    let version = info.pmu_version;
    if version == 0 || version == 0xf {
        note!("no PMUv3 (PMUVer {version:#x}): nothing to hide");
        return Ok(());
    }
    pmu::start(pmu::CPU_CYCLES, pmu::EL1_ONLY);
    let before = pmu::read();
    pmu::el1_loop(100_000);
    let el1 = before.until(pmu::read());
    pmu::stop();
    let events = info.counters > 0;
    ensure!(
        el1.cycles > 0 && (!events || el1.instructions > 0),
        "the PMU counted nothing at EL1 (cycles {}, CPU_CYCLES {}): it cannot show what EL2 hides",
        el1.cycles,
        el1.instructions
    );

    pmu::start(pmu::CPU_CYCLES, pmu::EL2_ONLY);
    let before = pmu::read();
    for _ in 0..CALLS {
        let _ = crate::psci::call_via(crate::psci::Conduit::Hvc, UNKNOWN_HOST_CALL, &[]);
    }
    let el2 = before.until(pmu::read());
    pmu::stop();
    if version >= 4 && events {
        ensure!(
            el2.instructions == 0,
            "{CALLS} host calls: the event counter filtered to EL2 counted {} CPU_CYCLES (PMUVer {version:#x} has MDCR_EL2.HPMD)",
            el2.instructions
        );
    }
    if version >= 6 {
        ensure!(
            el2.cycles == 0,
            "{CALLS} host calls: the cycle counter filtered to EL2 counted {} (PMUVer {version:#x} has MDCR_EL2.HCCD)",
            el2.cycles
        );
    }
    note!(
        "PMUVer {version:#x}: {CALLS} host calls counted at EL2: CPU_CYCLES {}, cycles {}; at EL1 a loop counted {} and {}",
        el2.instructions,
        el2.cycles,
        el1.instructions,
        el1.cycles
    );
    if version < 6 {
        note!("before FEAT_PMUv3p5 the cycle counter cannot be stopped at EL2 (no MDCR_EL2.HCCD)");
    }
    Ok(())
}
