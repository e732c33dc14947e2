//! Drives the crate and the reference model with the same steps, and checks
//! after each that they agree, that failed calls changed nothing, that the
//! table's invariants hold, and that page tables kept *only* from the
//! returned effects match the table and never expose a guest's secret.

use std::collections::HashMap;

use rampart_ownership::{
    Component, Effect, Error, PAGE_SIZE, PageMeta, Pfn, PhysAddr, State, Table, Update, VmId,
};

use super::reference::{Call, Content, Reference};

/// One step of a sequence.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A call with (possibly hostile) arguments.
    Call {
        /// What is called.
        call: Call,
        /// Start address.
        addr: u64,
        /// Page count.
        pages: u64,
    },
    /// A component writes to a page (ghost action: tracks secrets).
    Write {
        /// Page frame.
        page: u64,
        /// Writer.
        by: Component,
    },
}

impl Step {
    /// Applies the step to the reference model.
    pub fn apply_to(self, reference: &mut Reference) {
        match self {
            Step::Call { call, addr, pages } => {
                let _ = reference.call(call, addr, pages);
            }
            Step::Write { page, by } => reference.write(page, by),
        }
    }
}

/// The system under test plus what a hypervisor would build from effects.
pub struct Harness {
    base: u64,
    meta: Vec<PageMeta>,
    /// Page tables as maintained from `Effect`s alone.
    mapped: HashMap<(u64, Component), State>,
    /// Page contents, as zeroed per `Effect`s and written per mappings.
    content: HashMap<u64, Content>,
    /// Guests whose views are compared.
    guests: Vec<VmId>,
    /// Calls that succeeded.
    pub succeeded: u64,
}

impl Harness {
    /// A host-owned table of `len` pages from `base`.
    pub fn new(base: u64, len: u64, guests: &[VmId]) -> Self {
        let mapped = (base..base + len)
            .map(|pfn| ((pfn, Component::Host), State::Owned))
            .collect();
        Self {
            base,
            meta: vec![PageMeta::HOST_OWNED; usize::try_from(len).expect("small")],
            mapped,
            content: HashMap::new(),
            guests: guests.to_vec(),
            succeeded: 0,
        }
    }

    fn mapping(&self, pfn: u64, component: Component) -> State {
        self.mapped
            .get(&(pfn, component))
            .copied()
            .unwrap_or_default()
    }

    /// What the hypervisor does with an effect, in the documented order.
    fn consume(&mut self, effect: &Effect) {
        let first = effect.start.0 / PAGE_SIZE;
        let mut parties = vec![
            (Component::Host, effect.updates.host),
            (Component::Hyp, effect.updates.hyp),
        ];
        parties.extend(
            effect
                .vm()
                .map(|vm| (Component::Guest(vm), effect.updates.guest)),
        );
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

    /// Runs a step on the crate; `expected` is the reference's verdict for
    /// the same step.
    pub fn apply(&mut self, step: Step, expected: Result<(), (Error, u64)>) {
        match step {
            Step::Call { call, addr, pages } => {
                let before = self.meta.clone();
                let mut table = Table::new(&mut self.meta, Pfn(self.base)).expect("table fits");
                let result = table.apply(call.transition(), PhysAddr(addr), pages);
                match (result, expected) {
                    (Ok(effect), Ok(())) => {
                        self.succeeded += 1;
                        assert_eq!((effect.start, effect.pages), (PhysAddr(addr), pages));
                        assert_eq!(effect.transition, call.transition());
                        self.consume(&effect);
                        if let Call::GuestShareHost(_) = call {
                            // The guest shares what the page holds on purpose.
                            for pfn in addr / PAGE_SIZE..addr / PAGE_SIZE + pages {
                                self.content.insert(pfn, Content::Public);
                            }
                        }
                    }
                    (Err(rejection), Err((error, at))) => {
                        assert_eq!(
                            (rejection.error, rejection.addr),
                            (error, PhysAddr(at)),
                            "{step:?}"
                        );
                        assert_eq!(
                            self.meta, before,
                            "a failed call changed the table: {step:?}"
                        );
                    }
                    (result, expected) => {
                        panic!("{step:?}: crate says {result:?}, reference says {expected:?}")
                    }
                }
            }
            Step::Write { page, by } => {
                // The write lands according to the hypervisor's page tables.
                let content = match (by, self.mapping(page, by)) {
                    (_, State::Absent) => None,
                    (Component::Guest(vm), State::Owned) => Some(Content::Secret(vm)),
                    _ => Some(Content::Public),
                };
                if let Some(content) = content {
                    self.content.insert(page, content);
                }
            }
        }
    }

    /// Everything that must hold after every step.
    pub fn check(&self, reference: &Reference) {
        let mut meta = self.meta.clone();
        let table = Table::new(&mut meta, Pfn(self.base)).expect("table fits");
        table.check_invariants().expect("invariants");
        let mut parties = vec![Component::Host, Component::Hyp];
        parties.extend(self.guests.iter().map(|&vm| Component::Guest(vm)));
        for (index, _) in self.meta.iter().enumerate() {
            let pfn = self.base + index as u64;
            let addr = PhysAddr(pfn * PAGE_SIZE);
            for &party in &parties {
                let view = table.state_of(addr, party).expect("in range");
                assert_eq!(view, reference.get(pfn, party), "{party} on pfn {pfn:#x}");
                assert_eq!(
                    self.mapping(pfn, party),
                    view,
                    "effects disagree: {party} on {pfn:#x}"
                );
            }
            let pins = table.page_state(addr).expect("valid").pins();
            assert_eq!(
                u32::from(pins),
                reference.pins.get(&pfn).copied().unwrap_or(0)
            );
            // Invariants 4 and 5 on what the page tables expose.
            if let Some(Content::Secret(owner)) = self.content.get(&pfn) {
                for &party in &parties {
                    if party != Component::Guest(*owner) {
                        assert_eq!(
                            self.mapping(pfn, party),
                            State::Absent,
                            "{party} sees a secret"
                        );
                    }
                }
            }
        }
        assert_eq!(reference.leak(), None);
    }
}
