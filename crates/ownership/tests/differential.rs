//! Differential test: the crate against the naive reference model in
//! `common/reference.rs`, driven by `proptest-state-machine` with long random
//! sequences of calls from every component, hostile arguments included.
//!
//! After every step it checks that both agree on the result (error and
//! offending page) and on every component's view of every page, that a
//! failed call changed no bit of the table, that the table's invariants
//! hold, and that page tables maintained *only* from the returned effects
//! match the table and never expose a guest's secret to anyone else.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::harness::{Harness, Step};
use common::reference::{Call, Reference};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use rampart_ownership::{Component, PAGE_SIZE, VmId};

/// First page frame of the table under test.
const BASE: u64 = 0x100;
/// Pages in the table under test.
const PAGES: u64 = 16;
/// Guests the calls name: three real ones and a stranger.
const VMS: [VmId; 4] = [VmId(1), VmId(2), VmId(3), VmId(0xffff)];

/// Number of random sequences.
const CASES: u32 = 200;
/// Shortest sequence; with `CASES` this bounds the number of operations.
const MIN_STEPS: usize = 500;
/// Longest sequence.
const MAX_STEPS: usize = 600;
/// Operations per run, at least.
const MIN_OPERATIONS: u64 = CASES as u64 * MIN_STEPS as u64;
const _: () = assert!(MIN_OPERATIONS >= 100_000);

/// Operations actually executed (counted by the test itself).
static EXECUTED: AtomicU64 = AtomicU64::new(0);
/// Of which succeeded.
static SUCCEEDED: AtomicU64 = AtomicU64::new(0);
/// VMs created and destroyed by `VmCreate` / `VmDestroy` steps.
static CREATED: AtomicU64 = AtomicU64::new(0);
static DESTROYED: AtomicU64 = AtomicU64::new(0);

struct Model;

fn vm() -> impl Strategy<Value = VmId> {
    prop_oneof![
        10 => (0..3usize).prop_map(|i| VMS[i]),
        1 => Just(VMS[3]),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        Just(Call::HostShareHyp),
        Just(Call::HostUnshareHyp),
        Just(Call::HostDonateHyp),
        Just(Call::HypDonateHost),
        vm().prop_map(Call::HostDonateGuest),
        vm().prop_map(Call::GuestShareHost),
        vm().prop_map(Call::GuestUnshareHost),
        vm().prop_map(Call::HostShareGuest),
        vm().prop_map(Call::HostUnshareGuest),
        vm().prop_map(Call::GuestRelinquish),
        vm().prop_map(Call::HostReclaimGuest),
        Just(Call::HypPin),
        Just(Call::HypUnpin),
        // The hypervisor's own metadata calls, outside a VM lifecycle: only
        // for the stranger, whose pages no live VM uses (releasing a live
        // VM's metadata behind its back would be a hypervisor bug, not a
        // call anyone can make).
        Just(Call::HostDonateVmMeta(VMS[3])),
        Just(Call::HypReleaseVmMeta(VMS[3])),
    ]
}

/// A start address: mostly a page of the table, sometimes hostile.
fn addr() -> impl Strategy<Value = u64> {
    let page = |pfn: u64| pfn * PAGE_SIZE;
    prop_oneof![
        40 => (BASE..BASE + PAGES).prop_map(page),
        1 => (BASE..BASE + PAGES, 1..PAGE_SIZE).prop_map(move |(p, off)| page(p) + off),
        1 => (0..BASE).prop_map(page),
        1 => (BASE + PAGES..BASE + 2 * PAGES).prop_map(page),
        1 => Just(!(PAGE_SIZE - 1)),
        1 => any::<u64>(),
    ]
}

/// A page count: mostly small, sometimes zero, huge or overflowing.
fn pages() -> impl Strategy<Value = u64> {
    prop_oneof![
        30 => 1..=3u64,
        6 => 1..=PAGES + 2,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => Just(1u64 << 52),
        1 => any::<u64>(),
    ]
}

fn component() -> impl Strategy<Value = Component> {
    prop_oneof![
        Just(Component::Host),
        Just(Component::Hyp),
        vm().prop_map(Component::Guest),
    ]
}

impl ReferenceStateMachine for Model {
    type State = Reference;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Reference> {
        Just(Reference::new(BASE, PAGES)).boxed()
    }

    fn transitions(state: &Reference) -> BoxedStrategy<Step> {
        let state = Arc::new(state.clone());
        let hosts = Arc::clone(&state);
        // Aim at pages where the call can succeed, so that sequences reach
        // deep states; sometimes overshoot by a page to hit a failing tail.
        let targeted = (call(), any::<Index>(), 1..=4u64, prop::bool::weighted(0.2)).prop_map(
            move |(call, index, want, overshoot)| {
                let eligible = state.eligible(call);
                let Some(&start) = eligible.get(index.index(eligible.len().max(1))) else {
                    return Step::Call {
                        call,
                        addr: BASE * PAGE_SIZE,
                        pages: want,
                    };
                };
                let mut pages = 1;
                while pages < want && eligible.contains(&(start + pages)) {
                    pages += 1;
                }
                Step::Call {
                    call,
                    addr: start * PAGE_SIZE,
                    pages: pages + u64::from(overshoot),
                }
            },
        );
        let create = (0..3usize, any::<Index>(), 1..=5u64).prop_map(move |(i, index, want)| {
            let vm = VMS[i];
            let eligible = hosts.eligible(Call::HostDonateVmMeta(vm));
            let Some(&start) = eligible.get(index.index(eligible.len().max(1))) else {
                return Step::VmCreate {
                    vm,
                    addr: BASE * PAGE_SIZE,
                    pages: want,
                };
            };
            let mut pages = 1;
            while pages < want && eligible.contains(&(start + pages)) {
                pages += 1;
            }
            Step::VmCreate {
                vm,
                addr: start * PAGE_SIZE,
                pages,
            }
        });
        let lifecycle = prop_oneof![
            3 => create,
            3 => (0..3usize).prop_map(|i| Step::VmAllocate { vm: VMS[i] }),
            1 => (0..3usize).prop_map(|i| Step::VmDestroy { vm: VMS[i] }),
        ];
        prop_oneof![
            1 => lifecycle,
            6 => targeted,
            3 => (call(), addr(), pages()).prop_map(|(call, addr, pages)| Step::Call { call, addr, pages }),
            1 => (BASE..BASE + PAGES, component()).prop_map(|(page, by)| Step::Write { page, by }),
        ]
        .boxed()
    }

    fn apply(mut state: Reference, step: &Step) -> Reference {
        step.apply_to(&mut state);
        state
    }
}

struct Test;

impl StateMachineTest for Test {
    type SystemUnderTest = Harness;
    type Reference = Model;

    fn init_test(_: &Reference) -> Harness {
        Harness::new(BASE, PAGES, &VMS)
    }

    fn apply(mut sut: Harness, reference: &Reference, step: Step) -> Harness {
        EXECUTED.fetch_add(1, Ordering::Relaxed);
        let before = (sut.succeeded, sut.lifecycles);
        sut.apply(step, reference.last);
        SUCCEEDED.fetch_add(sut.succeeded - before.0, Ordering::Relaxed);
        CREATED.fetch_add(sut.lifecycles.0 - before.1.0, Ordering::Relaxed);
        DESTROYED.fetch_add(sut.lifecycles.1 - before.1.1, Ordering::Relaxed);
        sut
    }

    fn check_invariants(sut: &Harness, reference: &Reference) {
        sut.check(reference);
    }
}

#[test]
fn crate_matches_reference_model() {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_time: 60_000,
        // ChaCha is slow unoptimised; the test runs in debug builds.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let strategy = Model::sequential_strategy(MIN_STEPS..=MAX_STEPS);
    let result = runner.run(&strategy, |(initial, steps, seen)| {
        Test::test_sequential(config.clone(), initial, steps, seen);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let executed = EXECUTED.load(Ordering::Relaxed);
    let succeeded = SUCCEEDED.load(Ordering::Relaxed);
    let (created, destroyed) = (
        CREATED.load(Ordering::Relaxed),
        DESTROYED.load(Ordering::Relaxed),
    );
    println!(
        "differential: {executed} operations executed, {succeeded} calls succeeded, \
         {created} VMs created and {destroyed} destroyed"
    );
    assert!(
        created >= u64::from(CASES) && destroyed >= u64::from(CASES) / 2,
        "too few VM lifecycles: {created} created, {destroyed} destroyed"
    );
    assert!(executed >= MIN_OPERATIONS, "only {executed} operations ran");
    assert!(
        succeeded * 10 >= executed,
        "too few successful calls: {succeeded}/{executed}"
    );
}
