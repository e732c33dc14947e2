//! Model check of the VM lifecycle over the ownership table, with
//! `stateright`: the hypervisor creates VMs on metadata the host gives it
//! (`VM_CREATE`), puts its own structures in those pages (the stage-2 root
//! at creation, then vCPU state pages and stage-2 table pages), runs the VMs
//! (which writes their register state into those pages) and destroys them
//! (`VM_DESTROY`: guest pages reclaimed, then the metadata released); in
//! between, the host and the guests make every call they can, with every
//! range, and write wherever they can reach.
//!
//! The property the hypervisor's memory safety rests on: **no page that a
//! live hypervisor structure uses is host-accessible, shareable or
//! reclaimable** (nor reachable by any guest). It is checked in every state,
//! together with the table invariants, secrecy of guest state, and that
//! `VM_DESTROY` always gets its metadata back.
//!
//! The same model with the metadata rule Rampart used to have (`VM_CREATE`
//! = `HostDonateHyp`, `VM_DESTROY` = `HypDonateHost`, the transitions behind
//! `DONATE_HYP` and `RECLAIM_HYP`) must fail: the host reclaims a page the
//! hypervisor still uses. That test keeps the property honest.

use stateright::{Checker, HasDiscoveries, Model, Property};

use rampart_ownership::{
    Component, PAGE_SIZE, PageMeta, PageState, Pfn, PhysAddr, State, Table, Transition, VmId,
};

/// Pages in the modelled table: enough for a VM with a stage-2 root, a
/// vCPU and a stage-2 table beside a guest page.
const PAGES: usize = 4;
/// First page frame of the table.
const BASE: u64 = 0x20;
/// Guests (and VM slots) in the model.
const VMS: [VmId; 2] = [VmId(1), VmId(2)];
/// The property the old metadata rule breaks, three ways.
const STRUCTURES_UNREACHABLE: &str =
    "no page a live hypervisor structure uses is host-accessible, shareable or reclaimable";
const NO_SECRET_REACHABLE: &str =
    "no guest secret (memory or registers) is reachable by another component";
const HISTORY: &str = "calls are all-or-nothing, the host never writes a live structure, VM_DESTROY always gets its metadata back";
/// Ranges (first page, page count) calls and `VM_CREATE` use; the last runs
/// off the end of the table.
const RANGES: [(u8, u8); 9] = [
    (0, 1),
    (1, 1),
    (2, 1),
    (3, 1),
    (0, 2),
    (2, 2),
    (1, 3),
    (0, 4),
    (3, 2),
];

/// Which transitions `VM_CREATE` and `VM_DESTROY` use for the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaRule {
    /// Rampart's rule: held for the VM until it is destroyed.
    HeldForVm,
    /// The old rule (the mutant): an ordinary donation to the hypervisor,
    /// which `RECLAIM_HYP` could undo.
    DonateHyp,
}

impl MetaRule {
    fn take(self, vm: VmId) -> Transition {
        match self {
            MetaRule::HeldForVm => Transition::HostDonateVmMeta(vm),
            MetaRule::DonateHyp => Transition::HostDonateHyp,
        }
    }

    fn release(self, vm: VmId) -> Transition {
        match self {
            MetaRule::HeldForVm => Transition::HypReleaseVmMeta(vm),
            MetaRule::DonateHyp => Transition::HypDonateHost,
        }
    }
}

/// What a page holds, as far as secrecy goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Content {
    /// Zeroes or data anyone it is shared with may see.
    Clean,
    /// A guest's secret (its memory, or its registers in a vCPU page).
    Secret(VmId),
}

/// What a hypervisor structure uses a metadata page for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    /// The stage-2 root, allocated by `VM_CREATE`.
    Stage2Root,
    /// A vCPU's saved state (`VCPU_CREATE`).
    Vcpu,
    /// A stage-2 table below the root (a mapping that needed one).
    Stage2Table,
}

/// A live VM: its metadata range and what each of its pages is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LiveVm {
    first: u8,
    pages: u8,
    uses: [Option<Role>; PAGES],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    meta: [PageMeta; PAGES],
    content: [Content; PAGES],
    vms: [Option<LiveVm>; VMS.len()],
    /// Set when a step broke a property of histories.
    broken: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// A host, guest or hypervisor ownership call outside the lifecycle.
    Call {
        transition: Transition,
        first: u8,
        pages: u8,
    },
    /// The host or a guest stores to a page, if it can reach it.
    Write { page: usize, by: Component },
    /// `VM_CREATE` in slot `vm` with this metadata.
    Create { vm: usize, first: u8, pages: u8 },
    /// The VM puts a new structure in its lowest unused metadata page.
    Allocate { vm: usize, role: Role },
    /// A vCPU of the VM runs and exits: the hypervisor saves the guest's
    /// registers into every vCPU page and walks its stage-2 tables.
    Run { vm: usize },
    /// `VM_DESTROY`.
    Destroy { vm: usize },
}

struct Lifecycle {
    rule: MetaRule,
}

fn addr(page: u64) -> PhysAddr {
    PhysAddr((BASE + page) * PAGE_SIZE)
}

fn decode(meta: PageMeta) -> PageState {
    meta.decode().expect("the model only writes valid entries")
}

fn parties() -> [Component; 4] {
    [
        Component::Host,
        Component::Hyp,
        Component::Guest(VMS[0]),
        Component::Guest(VMS[1]),
    ]
}

/// Every call the host or a guest can make that could take, share, lend or
/// map a page: `SHARE_HYP`, `UNSHARE_HYP`, `DONATE_HYP`, `RECLAIM_HYP`,
/// `VM_DONATE`, `VM_SHARE`, `VM_CREATE` for any VM, and the guests'
/// `MEM_SHARE`, `MEM_UNSHARE`, `MEM_RELINQUISH`.
fn host_or_guest_reachable() -> Vec<Transition> {
    let mut all = vec![
        Transition::HostShareHyp,
        Transition::HostUnshareHyp,
        Transition::HostDonateHyp,
        Transition::HypDonateHost,
    ];
    for vm in VMS {
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

/// Applies `transition` to `meta` (all or nothing); `Err` if refused.
fn apply(
    meta: &mut [PageMeta; PAGES],
    transition: Transition,
    first: u64,
    pages: u64,
) -> Result<rampart_ownership::Effect, ()> {
    Table::new(meta, Pfn(BASE))
        .expect("fits")
        .apply(transition, addr(first), pages)
        .map_err(drop)
}

/// Whether any live structure uses `page`, and whose.
fn user(world: &World, page: usize) -> Option<(VmId, Role)> {
    world
        .vms
        .iter()
        .zip(VMS)
        .find_map(|(live, vm)| live.and_then(|l| l.uses[page]).map(|role| (vm, role)))
}

impl Model for Lifecycle {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        vec![World {
            meta: [PageMeta::HOST_OWNED; PAGES],
            content: [Content::Clean; PAGES],
            vms: [None; VMS.len()],
            broken: None,
        }]
    }

    fn actions(&self, world: &World, actions: &mut Vec<Action>) {
        // Every call outside the lifecycle. The metadata transitions are
        // the hypervisor's own (it makes them only in VM_CREATE and
        // VM_DESTROY), and pins are covered by `tests/model.rs`.
        let mut transitions = vec![
            Transition::HostShareHyp,
            Transition::HostUnshareHyp,
            Transition::HostDonateHyp,
            Transition::HypDonateHost,
        ];
        for vm in VMS {
            transitions.extend([
                Transition::HostDonateGuest(vm),
                Transition::GuestShareHost(vm),
                Transition::GuestUnshareHost(vm),
                Transition::HostShareGuest(vm),
                Transition::HostUnshareGuest(vm),
                Transition::GuestRelinquish(vm),
            ]);
        }
        for transition in transitions {
            for (first, pages) in RANGES {
                actions.push(Action::Call {
                    transition,
                    first,
                    pages,
                });
            }
        }
        for page in 0..PAGES {
            for by in [
                Component::Host,
                Component::Guest(VMS[0]),
                Component::Guest(VMS[1]),
            ] {
                actions.push(Action::Write { page, by });
            }
        }
        for (vm, live) in world.vms.iter().enumerate() {
            match live {
                None => {
                    for (first, pages) in RANGES {
                        actions.push(Action::Create { vm, first, pages });
                    }
                }
                Some(live) => {
                    if live.uses[usize::from(live.first)..usize::from(live.first + live.pages)]
                        .contains(&None)
                    {
                        actions.push(Action::Allocate {
                            vm,
                            role: Role::Vcpu,
                        });
                        actions.push(Action::Allocate {
                            vm,
                            role: Role::Stage2Table,
                        });
                    }
                    actions.push(Action::Run { vm });
                    actions.push(Action::Destroy { vm });
                }
            }
        }
    }

    fn next_state(&self, world: &World, action: Action) -> Option<World> {
        let mut next = world.clone();
        match action {
            Action::Write { page, by } => {
                let content = match decode(world.meta[page]).view(by) {
                    State::Absent => return None,
                    State::Owned => match by {
                        Component::Guest(vm) => Content::Secret(vm),
                        _ => Content::Clean,
                    },
                    State::SharedOwned | State::SharedBorrowed => Content::Clean,
                };
                next.content[page] = content;
                if by == Component::Host && user(world, page).is_some() {
                    next.broken = Some("the host wrote a page a live hypervisor structure uses");
                }
            }
            Action::Call {
                transition,
                first,
                pages,
            } => {
                let (first, pages) = (u64::from(first), u64::from(pages));
                let Ok(effect) = apply(&mut next.meta, transition, first, pages) else {
                    if next.meta != world.meta {
                        next.broken = Some("a failed call changed the table");
                        return Some(next);
                    }
                    return None;
                };
                for page in first..(first + pages) {
                    let page = usize::try_from(page).expect("small");
                    if effect.updates.zero {
                        next.content[page] = Content::Clean;
                    }
                    if let Transition::GuestShareHost(_) = transition {
                        next.content[page] = Content::Clean;
                    }
                }
            }
            Action::Create { vm, first, pages } => {
                if world.vms[vm].is_some() {
                    return None;
                }
                let take = self.rule.take(VMS[vm]);
                apply(&mut next.meta, take, u64::from(first), u64::from(pages)).ok()?;
                let mut uses = [None; PAGES];
                uses[usize::from(first)] = Some(Role::Stage2Root);
                next.vms[vm] = Some(LiveVm { first, pages, uses });
                // VM_CREATE zeroes its metadata.
                for page in usize::from(first)..usize::from(first + pages) {
                    next.content[page] = Content::Clean;
                }
            }
            Action::Allocate { vm, role } => {
                let live = next.vms[vm].as_mut()?;
                let range = usize::from(live.first)..usize::from(live.first + live.pages);
                let page = range.clone().find(|&p| live.uses[p].is_none())?;
                live.uses[page] = Some(role);
                // A new vCPU page or table page is zeroed when it is taken.
                next.content[page] = Content::Clean;
            }
            Action::Run { vm } => {
                let live = world.vms[vm]?;
                for page in 0..PAGES {
                    if live.uses[page] == Some(Role::Vcpu) {
                        next.content[page] = Content::Secret(VMS[vm]);
                    }
                }
            }
            Action::Destroy { vm } => {
                let live = world.vms[vm]?;
                let id = VMS[vm];
                // Every page the guest owns or borrows goes back to the host.
                for page in 0..PAGES {
                    let reclaim = match decode(next.meta[page]) {
                        PageState::GuestOwned(owner) | PageState::GuestSharedWithHost(owner)
                            if owner == id =>
                        {
                            Transition::HostReclaimGuest(id)
                        }
                        PageState::HostSharedWithGuest(borrower) if borrower == id => {
                            Transition::HostUnshareGuest(id)
                        }
                        _ => continue,
                    };
                    let effect = apply(&mut next.meta, reclaim, page as u64, 1).ok()?;
                    if effect.updates.zero {
                        next.content[page] = Content::Clean;
                    }
                }
                // Then the metadata, once the structures are gone.
                next.vms[vm] = None;
                let release = self.rule.release(id);
                let (first, pages) = (u64::from(live.first), u64::from(live.pages));
                match apply(&mut next.meta, release, first, pages) {
                    Ok(effect) => {
                        for page in first..first + pages {
                            if effect.updates.zero {
                                next.content[usize::try_from(page).expect("small")] =
                                    Content::Clean;
                            }
                        }
                    }
                    Err(()) => next.broken = Some("VM_DESTROY could not release its metadata"),
                }
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(STRUCTURES_UNREACHABLE, |_, world: &World| {
                (0..PAGES).all(|page| {
                    if user(world, page).is_none() {
                        return true;
                    }
                    let state = decode(world.meta[page]);
                    let unreachable = parties()
                        .into_iter()
                        .all(|party| party == Component::Hyp || state.view(party) == State::Absent);
                    let refused = host_or_guest_reachable()
                        .into_iter()
                        .all(|transition| transition.step(state).is_err());
                    unreachable && refused && state.view(Component::Hyp) == State::Owned
                })
            }),
            Property::always(
                "invariants 1-4 and 6 hold on the table",
                |_, world: &World| {
                    let mut meta = world.meta;
                    Table::new(&mut meta, Pfn(BASE))
                        .expect("fits")
                        .check_invariants()
                        .is_ok()
                },
            ),
            Property::always(NO_SECRET_REACHABLE, |_, world: &World| {
                (0..PAGES).all(|page| match world.content[page] {
                    Content::Clean => true,
                    Content::Secret(owner) => parties().into_iter().all(|party| {
                        party == Component::Guest(owner)
                            || party == Component::Hyp
                            || decode(world.meta[page]).view(party) == State::Absent
                    }),
                })
            }),
            Property::always(HISTORY, |_, world: &World| world.broken.is_none()),
            Property::sometimes("two live VMs at once", |_, world: &World| {
                world.vms.iter().all(Option::is_some)
            }),
            Property::sometimes(
                "a live VM with a vCPU and a stage-2 table page while a guest owns memory",
                |_, world: &World| {
                    let full = world.vms.iter().flatten().any(|live| {
                        live.uses.contains(&Some(Role::Vcpu))
                            && live.uses.contains(&Some(Role::Stage2Table))
                    });
                    let guest_page = world
                        .meta
                        .iter()
                        .any(|m| matches!(decode(*m), PageState::GuestOwned(_)));
                    full && guest_page
                },
            ),
            Property::sometimes(
                "a vCPU page holds a guest's registers",
                |_, world: &World| {
                    (0..PAGES).any(|page| {
                        matches!(user(world, page), Some((_, Role::Vcpu)))
                            && matches!(world.content[page], Content::Secret(_))
                    })
                },
            ),
            Property::sometimes(
                "a VM's metadata held while the host shares and lends other pages",
                |_, world: &World| {
                    let held = world
                        .meta
                        .iter()
                        .any(|m| matches!(decode(*m), PageState::HypOwnedForVm(_)));
                    let shared = world
                        .meta
                        .iter()
                        .any(|m| matches!(decode(*m), PageState::HostSharedWithHyp { .. }));
                    let lent = world
                        .meta
                        .iter()
                        .any(|m| matches!(decode(*m), PageState::HostSharedWithGuest(_)));
                    held && shared && lent
                },
            ),
        ]
    }
}

#[test]
fn vm_lifecycle_model_check() {
    let checker = Lifecycle {
        rule: MetaRule::HeldForVm,
    }
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    println!(
        "stateright (VM lifecycle): {} unique states, {} state visits, max depth {}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth()
    );
    assert!(checker.is_done(), "exploration did not complete");
    checker.assert_properties();
}

#[test]
fn model_check_catches_metadata_taken_like_donate_hyp() {
    let broken = [STRUCTURES_UNREACHABLE, NO_SECRET_REACHABLE, HISTORY];
    let checker = Lifecycle {
        rule: MetaRule::DonateHyp,
    }
    .checker()
    .threads(2)
    .finish_when(HasDiscoveries::AllOf(broken.into_iter().collect()))
    .spawn_bfs()
    .join();
    for property in broken {
        let path = checker
            .discovery(property)
            .unwrap_or_else(|| panic!("the old rule must break \"{property}\""));
        let actions = path.into_actions();
        println!("old rule breaks \"{property}\": {actions:?}");
        assert!(
            actions.iter().any(|a| matches!(a, Action::Create { .. })),
            "the counterexample must create a VM"
        );
    }
    // The first property breaks as soon as VM_CREATE has run: with the old
    // rule RECLAIM_HYP (HypDonateHost) would succeed on the stage-2 root.
    for (rule, holds) in [(MetaRule::DonateHyp, false), (MetaRule::HeldForVm, true)] {
        let model = Lifecycle { rule };
        let init = model.init_states().remove(0);
        let created = model
            .next_state(
                &init,
                Action::Create {
                    vm: 0,
                    first: 0,
                    pages: 1,
                },
            )
            .expect("VM_CREATE on a host page succeeds");
        let property = model
            .properties()
            .into_iter()
            .find(|p| p.name == STRUCTURES_UNREACHABLE)
            .expect("listed");
        assert_eq!((property.condition)(&model, &created), holds, "{rule:?}");
    }
}
