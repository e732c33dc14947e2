//! SMP guest: vCPU 0 starts every other vCPU with PSCI `CPU_ON`, each says
//! who it is and powers itself off with `CPU_OFF`, and vCPU 0 waits until
//! `AFFINITY_INFO` reports them off.
//!
//! vCPU count: not passed in `x0` (which stays the RAM size). vCPU 0 probes
//! `AFFINITY_INFO` for MPIDRs 1, 2, .. (vCPU `i` has `Aff0` = `i`, see
//! `rampart_abi::guest::vcpu_mpidr`) and counts those that do not return
//! `INVALID_PARAMETERS`, stopping at the first that does. The VMM must
//! therefore create vCPUs 0..n-1 with no gaps.
//!
//! Phases:
//! 1. one at a time: `CPU_ON(i, entry, context = i)`; vCPU `i` records its
//!    `MPIDR_EL1`, prints `GUEST-CPU <i> up, MPIDR 0x..` and returns (the
//!    library calls `CPU_OFF`); vCPU 0 waits for it to be `OFF`.
//! 2. all at once: every secondary makes 100 `KVM_FEATURES` calls and
//!    checks its registers survive an HVC, records the result, and powers
//!    off; vCPU 0 waits for all of them.
//! 3. refusals: `CPU_ON` of vCPU 0 itself (`ALREADY_ON`), of an MPIDR with
//!    no vCPU (`INVALID_PARAMETERS`), and (under a hypervisor) with an entry
//!    point outside guest RAM (`INVALID_ADDRESS`).
//!
//! Waiting loops read the console's flag register (an `EXIT_MMIO`) between
//! polls, so a VMM may run all vCPUs on one thread and switch on any exit.
//! Expected exits: `EXIT_MMIO`; `EXIT_POWERED_OFF` on each secondary
//! (twice); `EXIT_SYSTEM_OFF` on vCPU 0.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use rampart_guest::abi::{GuestCall, MPIDR_AFFINITY_MASK, psci, vcpu_mpidr};
use rampart_guest::arch::{self, MAX_VCPUS};
use rampart_guest::hvc::{self, psci as call};
use rampart_guest::{no_hypervisor, println, report, wait_until};

rampart_guest::entry!(main, secondary);

/// How long vCPU 0 waits for a secondary's progress, in milliseconds.
const TIMEOUT_MS: u64 = 10_000;
/// Set in a slot once written.
const VALID: u64 = 1 << 63;

/// Which phase the secondaries run (written by vCPU 0 before CPU_ON).
static PHASE: AtomicU64 = AtomicU64::new(0);
/// Phase 1: `VALID | MPIDR_EL1` of each vCPU.
static MPIDRS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Phase 2: `VALID | 0` if vCPU i's calls went well, `VALID | 1 + n` if
/// register n changed.
static RESULTS: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

fn secondary(index: usize) {
    let Some(slot) = MPIDRS.get(index) else {
        return;
    };
    match PHASE.load(Ordering::SeqCst) {
        1 => {
            let mpidr = arch::mpidr();
            slot.store(VALID | mpidr, Ordering::SeqCst);
            println!("GUEST-CPU {index} up, MPIDR {mpidr:#x}");
        }
        2 => {
            let mut result = Ok(());
            for _ in 0..100 {
                hvc::call0(GuestCall::KvmFeatures);
                result = result.and(arch::hvc_preserves_registers(GuestCall::KvmFeatures.id()));
            }
            let code = result.err().map_or(0, |register| register + 1);
            RESULTS[index].store(VALID | code, Ordering::SeqCst);
        }
        _ => {}
    }
}

fn index_of(mpidr: u64) -> u64 {
    mpidr & MPIDR_AFFINITY_MASK
}

fn main(_ram_size: u64) {
    let vcpus = 1
        + (1..MAX_VCPUS as u64)
            .take_while(|&i| call::affinity_info(vcpu_mpidr(i)) != psci::INVALID_PARAMETERS)
            .count();
    println!("smp: {vcpus} vCPUs (AFFINITY_INFO probe)");
    report::check(
        "smp-vcpu0-mpidr",
        index_of(arch::mpidr()) == 0,
        format_args!("vCPU 0 has MPIDR {:#x}", arch::mpidr()),
    );
    if vcpus == 1 {
        report::skip("smp", format_args!("only one vCPU"));
        return;
    }
    let secondaries = 1..vcpus;
    let states: [i32; MAX_VCPUS] =
        core::array::from_fn(|i| call::affinity_info(vcpu_mpidr(i as u64)));
    report::check(
        "smp-initially-off",
        states[0] == psci::AFFINITY_ON && states[1..vcpus].iter().all(|&s| s == psci::AFFINITY_OFF),
        format_args!("AFFINITY_INFO of vCPUs 0..{vcpus}: {:?}", &states[..vcpus]),
    );
    let state32 = hvc::call(psci::AFFINITY_INFO_32, [vcpu_mpidr(1), 0, 0])[0] & 0xffff_ffff;
    report::check(
        "smp-affinity-info-32",
        state32 == psci::AFFINITY_OFF as u64,
        format_args!("AFFINITY_INFO_32(1) = {state32:#x}"),
    );

    // Phase 1: one at a time.
    PHASE.store(1, Ordering::SeqCst);
    let mut problem = None;
    for i in secondaries.clone() {
        let slot = &MPIDRS[i];
        let on = call::cpu_on(
            vcpu_mpidr(i as u64),
            arch::secondary_entry_address(),
            i as u64,
        );
        let arrived =
            on == psci::SUCCESS && wait_until(TIMEOUT_MS, || slot.load(Ordering::SeqCst) != 0);
        let off = arrived
            && wait_until(TIMEOUT_MS, || {
                call::affinity_info(vcpu_mpidr(i as u64)) == psci::AFFINITY_OFF
            });
        let mpidr = slot.load(Ordering::SeqCst) & !VALID;
        if on != psci::SUCCESS || !arrived || !off || index_of(mpidr) != i as u64 {
            problem.get_or_insert((i, on, arrived, off, mpidr));
        }
    }
    report::check(
        "smp-cpu-on-one-at-a-time",
        problem.is_none(),
        format_args!("vCPU, CPU_ON result, arrived, off again, its MPIDR: {problem:x?}"),
    );

    // Phase 2: all at once.
    PHASE.store(2, Ordering::SeqCst);
    let mut refused = None;
    for i in secondaries.clone() {
        let on = call::cpu_on(
            vcpu_mpidr(i as u64),
            arch::secondary_entry_address(),
            i as u64,
        );
        if on != psci::SUCCESS {
            refused.get_or_insert((i, on));
        }
    }
    let all_done = wait_until(TIMEOUT_MS, || {
        secondaries.clone().all(|i| {
            RESULTS[i].load(Ordering::SeqCst) != 0
                && call::affinity_info(vcpu_mpidr(i as u64)) == psci::AFFINITY_OFF
        })
    });
    let results: [u64; MAX_VCPUS] = core::array::from_fn(|i| RESULTS[i].load(Ordering::SeqCst));
    report::check(
        "smp-concurrent",
        refused.is_none() && all_done && results[1..vcpus].iter().all(|&r| r == VALID),
        format_args!(
            "CPU_ON refused: {refused:?}; all off: {all_done}; results (bit 63 = done, else 1 + changed register): {:x?}",
            &results[1..vcpus]
        ),
    );

    // Phase 3: refusals.
    let me = call::cpu_on(vcpu_mpidr(0), arch::secondary_entry_address(), 0);
    report::check(
        "smp-cpu-on-self-refused",
        me == psci::ALREADY_ON,
        format_args!("CPU_ON of vCPU 0 by itself = {me}, want ALREADY_ON"),
    );
    let absent = if vcpus < MAX_VCPUS {
        vcpus as u64
    } else {
        1 << 8
    };
    let nobody = call::cpu_on(absent, arch::secondary_entry_address(), 0);
    report::check(
        "smp-cpu-on-absent-refused",
        nobody == psci::INVALID_PARAMETERS,
        format_args!("CPU_ON of MPIDR {absent:#x} = {nobody}, want INVALID_PARAMETERS"),
    );
    if no_hypervisor() {
        report::skip(
            "smp-cpu-on-bad-entry-refused",
            format_args!("no hypervisor"),
        );
        return;
    }
    let bad = call::cpu_on(vcpu_mpidr(1), 0x1000, 1);
    report::check(
        "smp-cpu-on-bad-entry-refused",
        bad == psci::INVALID_ADDRESS,
        format_args!("CPU_ON with entry 0x1000 (outside guest RAM) = {bad}, want INVALID_ADDRESS"),
    );
}
