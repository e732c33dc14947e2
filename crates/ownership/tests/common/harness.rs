//! Drives the crate and the reference model with the same steps, and checks
//! after each that they agree, that failed calls changed nothing, that the
//! table's invariants hold, and that page tables kept *only* from the
//! returned effects match the table and never expose a guest's secret.

use std::collections::HashMap;

use rampart_ownership::{
    Component, Effect, Error, PAGE_SIZE, PageMeta, PageState, Pfn, PhysAddr, State, Table,
    Transition, Update, VmId,
};

use super::reference::{Call, Content, LiveVm, Reference};

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
    /// `VM_CREATE` (a no-op for a live VM).
    VmCreate {
        /// The VM.
        vm: VmId,
        /// Start of the metadata.
        addr: u64,
        /// Metadata pages.
        pages: u64,
    },
    /// A live VM puts a vCPU or stage-2 table in its next metadata page.
    VmAllocate {
        /// The VM.
        vm: VmId,
    },
    /// `VM_DESTROY` (a no-op for a VM that is not live).
    VmDestroy {
        /// The VM.
        vm: VmId,
    },
}

/// Every transition a host call or a guest call can trigger on a page it
/// names (`SHARE_HYP`, `UNSHARE_HYP`, `DONATE_HYP`, `RECLAIM_HYP`,
/// `VM_DONATE`, `VM_SHARE`, `VM_CREATE`, `MEM_SHARE`, `MEM_UNSHARE`,
/// `MEM_RELINQUISH`), for each of `vms`.
pub fn host_or_guest_reachable(vms: &[VmId]) -> Vec<Transition> {
    let mut all = vec![
        Transition::HostShareHyp,
        Transition::HostUnshareHyp,
        Transition::HostDonateHyp,
        Transition::HypDonateHost,
    ];
    for &vm in vms {
        all.extend([
            Transition::HostDonateGuest(vm),
            Transition::HostShareGuest(vm),
            Transition::HostDonateVmMeta(vm),
            Transition::GuestShareHost(vm),
            Transition::GuestUnshareHost(vm),
            Transition::GuestRelinquish(vm),
        ]);
    }
    all
}

impl Step {
    /// Applies the step to the reference model.
    pub fn apply_to(self, reference: &mut Reference) {
        match self {
            Step::Call { call, addr, pages } => {
                let _ = reference.call(call, addr, pages);
            }
            Step::Write { page, by } => reference.write(page, by),
            Step::VmCreate { vm, addr, pages } => reference.vm_create(vm, addr, pages),
            Step::VmAllocate { vm } => reference.vm_allocate(vm),
            Step::VmDestroy { vm } => reference.vm_destroy(vm),
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
    /// Live VMs, kept by the harness itself (as the hypervisor would).
    vms: HashMap<VmId, LiveVm>,
    /// VMs created, and destroyed, so far.
    pub lifecycles: (u64, u64),
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
            vms: HashMap::new(),
            lifecycles: (0, 0),
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

    /// Runs a transition the hypervisor makes itself, which must succeed.
    fn hyp_call(&mut self, transition: Transition, pfn: u64, pages: u64) {
        let mut table = Table::new(&mut self.meta, Pfn(self.base)).expect("table fits");
        let effect = table
            .apply(transition, PhysAddr(pfn * PAGE_SIZE), pages)
            .unwrap_or_else(|r| panic!("{transition} on pfn {pfn:#x}: {r}"));
        self.consume(&effect);
    }

    /// Runs a step on the crate; `expected` is the reference's verdict for
    /// the same step.
    pub fn apply(&mut self, step: Step, expected: Result<(), (Error, u64)>) {
        match step {
            Step::VmCreate { vm, addr, pages } => {
                if self.vms.contains_key(&vm) {
                    assert_eq!(expected, Ok(()));
                    return;
                }
                let call = Step::Call {
                    call: Call::HostDonateVmMeta(vm),
                    addr,
                    pages,
                };
                let before = self.succeeded;
                self.apply(call, expected);
                if self.succeeded > before {
                    self.vms.insert(vm, LiveVm::new(addr / PAGE_SIZE, pages));
                    self.lifecycles.0 += 1;
                }
            }
            Step::VmAllocate { vm } => {
                if let Some(live) = self.vms.get_mut(&vm) {
                    live.allocate();
                }
            }
            Step::VmDestroy { vm } => {
                let Some(live) = self.vms.remove(&vm) else {
                    assert_eq!(expected, Ok(()));
                    return;
                };
                for index in 0..self.meta.len() {
                    let pfn = self.base + index as u64;
                    let state = self.meta[index].decode().expect("valid");
                    let transition = match state {
                        PageState::GuestOwned(owner) | PageState::GuestSharedWithHost(owner)
                            if owner == vm =>
                        {
                            Transition::HostReclaimGuest(vm)
                        }
                        PageState::HostSharedWithGuest(borrower) if borrower == vm => {
                            Transition::HostUnshareGuest(vm)
                        }
                        _ => continue,
                    };
                    self.hyp_call(transition, pfn, 1);
                }
                assert_eq!(
                    expected,
                    Ok(()),
                    "the reference could not release {vm}'s metadata"
                );
                self.hyp_call(Transition::HypReleaseVmMeta(vm), live.first, live.pages);
                self.succeeded += 1;
                self.lifecycles.1 += 1;
            }
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
        // The hypervisor's structures: no page a live VM's metadata uses is
        // host- or guest-accessible, and every call the host or a guest can
        // make refuses it.
        assert_eq!(self.vms, reference.vms, "live VMs");
        let reachable = host_or_guest_reachable(&self.guests);
        for (vm, live) in &self.vms {
            for &pfn in &live.used {
                let addr = PhysAddr(pfn * PAGE_SIZE);
                assert_eq!(
                    table.page_state(addr),
                    Ok(PageState::HypOwnedForVm(*vm)),
                    "pfn {pfn:#x} of {vm}"
                );
                for &party in &parties {
                    let expected = if party == Component::Hyp {
                        State::Owned
                    } else {
                        State::Absent
                    };
                    assert_eq!(
                        self.mapping(pfn, party),
                        expected,
                        "{party} on {vm}'s pfn {pfn:#x}"
                    );
                }
                for &transition in &reachable {
                    assert!(
                        table.check(transition, addr, 1).is_err(),
                        "{transition} accepted {vm}'s pfn {pfn:#x}"
                    );
                }
            }
        }
    }
}
