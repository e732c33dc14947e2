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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::reference::{Call, Content, Reference};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use rampart_ownership::{
    Component, Effect, PAGE_SIZE, PageMeta, Pfn, PhysAddr, State, Table, Update, VmId,
};

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

/// One step of a sequence.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A call with (possibly hostile) arguments.
    Call { call: Call, addr: u64, pages: u64 },
    /// A component writes to a page (ghost action: tracks secrets).
    Write { page: u64, by: Component },
}

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
        1 => Just(u64::MAX & !(PAGE_SIZE - 1)),
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
        // Aim at pages where the call can succeed, so that sequences reach
        // deep states; sometimes overshoot by a page to hit a failing tail.
        let targeted = (call(), any::<Index>(), 1..=4u64, prop::bool::weighted(0.2)).prop_map(
            move |(call, index, want, overshoot)| {
                let eligible = state.eligible(call);
                let Some(&start) = eligible.get(index.index(eligible.len().max(1))) else {
                    return Step::Call { call, addr: BASE * PAGE_SIZE, pages: want };
                };
                let mut pages = 1;
                while pages < want && eligible.contains(&(start + pages)) {
                    pages += 1;
                }
                Step::Call { call, addr: start * PAGE_SIZE, pages: pages + u64::from(overshoot) }
            },
        );
        prop_oneof![
            6 => targeted,
            3 => (call(), addr(), pages()).prop_map(|(call, addr, pages)| Step::Call { call, addr, pages }),
            1 => (BASE..BASE + PAGES, component()).prop_map(|(page, by)| Step::Write { page, by }),
        ]
        .boxed()
    }

    fn apply(mut state: Reference, step: &Step) -> Reference {
        match *step {
            Step::Call { call, addr, pages } => {
                let _ = state.call(call, addr, pages);
            }
            Step::Write { page, by } => state.write(page, by),
        }
        state
    }
}

/// The system under test plus what a hypervisor would build from effects.
struct Sut {
    meta: Vec<PageMeta>,
    /// Page tables as maintained from `Effect`s alone.
    mapped: HashMap<(u64, Component), State>,
    /// Page contents, as zeroed per `Effect`s and written per mappings.
    content: HashMap<u64, Content>,
}

impl Sut {
    fn table(&mut self) -> Table<'_> {
        Table::new(&mut self.meta, Pfn(BASE)).expect("table fits")
    }

    fn mapping(&self, pfn: u64, component: Component) -> State {
        self.mapped.get(&(pfn, component)).copied().unwrap_or_default()
    }

    /// What the hypervisor does with an effect.
    fn consume(&mut self, effect: &Effect) {
        let first = effect.start.0 / PAGE_SIZE;
        let parties = [
            (Component::Host, effect.updates.host),
            (Component::Hyp, effect.updates.hyp),
        ]
        .into_iter()
        .chain(effect.vm().map(|vm| (Component::Guest(vm), effect.updates.guest)));
        let parties: Vec<_> = parties.collect();
        for pfn in first..first + effect.pages {
            for &(party, update) in &parties {
                if update == Update::Set(State::Absent) {
                    self.mapped.remove(&(pfn, party));
                }
            }
            if effect.updates.zero {
                self.content.insert(pfn, Content::Zero);
            }
            for &(party, update) in &parties {
                if let Update::Set(state) = update
                    && state != State::Absent
                {
                    self.mapped.insert((pfn, party), state);
                }
            }
        }
    }
}

struct Test;

impl StateMachineTest for Test {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(_: &Reference) -> Sut {
        let mut mapped = HashMap::new();
        for pfn in BASE..BASE + PAGES {
            mapped.insert((pfn, Component::Host), State::Owned);
        }
        Sut {
            meta: vec![PageMeta::HOST_OWNED; PAGES as usize],
            mapped,
            content: HashMap::new(),
        }
    }

    fn apply(mut sut: Sut, reference: &Reference, step: Step) -> Sut {
        EXECUTED.fetch_add(1, Ordering::Relaxed);
        match step {
            Step::Call { call, addr, pages } => {
                let before = sut.meta.clone();
                let result = sut.table().apply(call.transition(), PhysAddr(addr), pages);
                let expected = reference.last;
                match (result, expected) {
                    (Ok(effect), Ok(())) => {
                        SUCCEEDED.fetch_add(1, Ordering::Relaxed);
                        assert_eq!((effect.start, effect.pages), (PhysAddr(addr), pages));
                        assert_eq!(effect.transition, call.transition());
                        sut.consume(&effect);
                        if let Call::GuestShareHost(_) = call {
                            for pfn in addr / PAGE_SIZE..addr / PAGE_SIZE + pages {
                                sut.content.insert(pfn, Content::Public);
                            }
                        }
                    }
                    (Err(rejection), Err((error, at))) => {
                        assert_eq!((rejection.error, rejection.addr), (error, PhysAddr(at)), "{step:?}");
                        assert_eq!(sut.meta, before, "a failed call changed the table: {step:?}");
                    }
                    (result, expected) => {
                        panic!("{step:?}: crate says {result:?}, reference says {expected:?}")
                    }
                }
            }
            Step::Write { page, by } => {
                // The write lands according to the hypervisor's page tables.
                let content = match (by, sut.mapping(page, by)) {
                    (_, State::Absent) => None,
                    (Component::Guest(vm), State::Owned) => Some(Content::Secret(vm)),
                    _ => Some(Content::Public),
                };
                if let Some(content) = content {
                    sut.content.insert(page, content);
                }
            }
        }
        sut
    }

    fn check_invariants(sut: &Sut, reference: &Reference) {
        let mut meta = sut.meta.clone();
        let table = Table::new(&mut meta, Pfn(BASE)).expect("table fits");
        table.check_invariants().expect("invariants");
        let mut parties = vec![Component::Host, Component::Hyp];
        parties.extend(VMS.map(Component::Guest));
        for pfn in BASE..BASE + PAGES {
            let addr = PhysAddr(pfn * PAGE_SIZE);
            for &party in &parties {
                let view = table.state_of(addr, party).expect("in range");
                assert_eq!(view, reference.get(pfn, party), "{party} on pfn {pfn:#x}");
                assert_eq!(sut.mapping(pfn, party), view, "effects disagree: {party} on {pfn:#x}");
            }
            let pins = table.page_state(addr).expect("valid").pins();
            assert_eq!(u32::from(pins), reference.pins.get(&pfn).copied().unwrap_or(0));
            // Invariants 4 and 5 on what the page tables expose.
            if let Some(Content::Secret(owner)) = sut.content.get(&pfn) {
                for &party in &parties {
                    if party != Component::Guest(*owner) {
                        assert_eq!(sut.mapping(pfn, party), State::Absent, "{party} sees a secret");
                    }
                }
            }
        }
        assert_eq!(reference.leak(), None);
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
    println!("differential: {executed} operations executed, {succeeded} calls succeeded");
    assert!(executed >= MIN_OPERATIONS, "only {executed} operations ran");
    assert!(succeeded * 10 >= executed, "too few successful calls: {succeeded}/{executed}");
}
