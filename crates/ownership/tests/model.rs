//! Exhaustive model check with `stateright`: every sequence of calls by the
//! host, the hypervisor and two guests over a three-page table (with a
//! range that runs off its end), plus ghost writes that plant guest secrets.
//!
//! The invariants are `always` properties; `sometimes` properties prove the
//! exploration reaches the interesting states; a mutant that forgets to zero
//! must produce a counterexample, so the properties have teeth.

use stateright::{Checker, Model, Property};

use rampart_ownership::{
    Component, PAGE_SIZE, PageMeta, PageState, Pfn, PhysAddr, State, Table, Transition, VmId,
};

/// Pages in the modelled table.
const PAGES: usize = 3;
/// First page frame of the table.
const BASE: u64 = 0x10;
/// Guests in the model.
const VMS: [VmId; 2] = [VmId(1), VmId(2)];
/// Pins per page the model explores (the crate allows far more).
const MODEL_PIN_BOUND: u16 = 2;
/// Ranges (first page, page count) the calls use; the last runs off the end
/// of the table, so partly-valid ranges are explored too.
const RANGES: [(u64, u64); 7] = [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (0, 3), (2, 2)];
/// Unique states a complete exploration reaches. Pages are independent, and
/// each can be in 15 (state, content) combinations: the 13 page states with
/// guests 1 and 2 and up to two pins (host-owned, shared with the hyp with
/// 0, 1 or 2 pins, lent to guest 1 or 2, hyp-owned, held by the hyp for VM
/// 1 or 2, owned by guest 1 or 2, shared by guest 1 or 2), with clean
/// content, plus the two guest-owned states holding that guest's secret.
/// So 15³ states, no more (anything else would be a secret somewhere it
/// must not be) and no fewer (a pruned or broken model). The VM lifecycle
/// on top of these transitions is model-checked in `tests/lifecycle.rs`.
const EXPECTED_STATES: usize = 15 * 15 * 15;

/// What a page holds, as far as secrecy goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Content {
    /// Zeroes or data anyone it is shared with may see.
    Clean,
    /// A guest's secret, written while it owned the page alone.
    Secret(VmId),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    meta: [PageMeta; PAGES],
    content: [Content; PAGES],
    /// Set when a step broke a property of histories (all-or-nothing, a
    /// failed call changing something, a pinned page being unshared).
    broken: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Call {
        transition: Transition,
        first: u64,
        pages: u64,
    },
    Write {
        page: usize,
        by: Component,
    },
}

struct Ownership {
    /// Mutant for the self-test: ignore the effect's request to zero.
    forget_zeroing: bool,
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

impl Model for Ownership {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        vec![World {
            meta: [PageMeta::HOST_OWNED; PAGES],
            content: [Content::Clean; PAGES],
            broken: None,
        }]
    }

    fn actions(&self, _: &World, actions: &mut Vec<Action>) {
        let mut transitions = Vec::new();
        for vm in VMS {
            for transition in Transition::all(vm) {
                if !transitions.contains(&transition) {
                    transitions.push(transition);
                }
            }
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
            }
            Action::Call {
                transition,
                first,
                pages,
            } => {
                let result = Table::new(&mut next.meta, Pfn(BASE)).expect("fits").apply(
                    transition,
                    addr(first),
                    pages,
                );
                let Ok(effect) = result else {
                    if next.meta != world.meta {
                        next.broken = Some("a failed call changed the table");
                        return Some(next);
                    }
                    return None;
                };
                let range = usize::try_from(first).expect("small")
                    ..usize::try_from(first + pages).expect("small");
                for page in 0..PAGES {
                    let (before, after) = (decode(world.meta[page]), decode(next.meta[page]));
                    if !range.contains(&page) && before != after {
                        next.broken = Some("a page outside the range changed");
                    }
                    if range.contains(&page)
                        && before.pins() > 0
                        && after.view(Component::Hyp) != State::SharedBorrowed
                    {
                        next.broken = Some("a pinned page was unshared");
                    }
                }
                for page in range {
                    if effect.updates.zero && !self.forget_zeroing {
                        next.content[page] = Content::Clean;
                    }
                    if let Transition::GuestShareHost(_) = transition {
                        // The guest shares what the page holds on purpose.
                        next.content[page] = Content::Clean;
                    }
                }
            }
        }
        Some(next)
    }

    fn within_boundary(&self, world: &World) -> bool {
        world
            .meta
            .iter()
            .all(|m| decode(*m).pins() <= MODEL_PIN_BOUND)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
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
            Property::always(
                "no secret is reachable by another component (4, 5)",
                |_, world: &World| {
                    (0..PAGES).all(|page| match world.content[page] {
                        Content::Clean => true,
                        Content::Secret(owner) => parties().into_iter().all(|party| {
                            party == Component::Guest(owner)
                                || decode(world.meta[page]).view(party) == State::Absent
                        }),
                    })
                },
            ),
            Property::always(
                "every step is all-or-nothing and respects pins (6)",
                |_, world: &World| world.broken.is_none(),
            ),
            Property::sometimes("a guest shares a page with the host", |_, world: &World| {
                world
                    .meta
                    .iter()
                    .any(|m| matches!(decode(*m), PageState::GuestSharedWithHost(_)))
            }),
            Property::sometimes("a page is pinned twice", |_, world: &World| {
                world.meta.iter().any(|m| decode(*m).pins() == 2)
            }),
            Property::sometimes(
                "both guests hold secrets while the hyp owns a page",
                |_, world: &World| {
                    world.content.contains(&Content::Secret(VMS[0]))
                        && world.content.contains(&Content::Secret(VMS[1]))
                        && world.meta.iter().any(|m| decode(*m) == PageState::HypOwned)
                },
            ),
            Property::sometimes(
                "one page lent to a guest, another shared by a guest",
                |_, world: &World| {
                    world
                        .meta
                        .iter()
                        .any(|m| matches!(decode(*m), PageState::HostSharedWithGuest(_)))
                        && world
                            .meta
                            .iter()
                            .any(|m| matches!(decode(*m), PageState::GuestSharedWithHost(_)))
                },
            ),
        ]
    }
}

#[test]
fn exhaustive_model_check() {
    let checker = Ownership {
        forget_zeroing: false,
    }
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    let states = checker.unique_state_count();
    println!(
        "stateright: {states} unique states, {} state visits, max depth {}",
        checker.state_count(),
        checker.max_depth()
    );
    assert!(checker.is_done(), "exploration did not complete");
    checker.assert_properties();
    assert_eq!(states, EXPECTED_STATES, "explored {states} states");
}

#[test]
fn model_check_catches_a_missing_zeroing() {
    let checker = Ownership {
        forget_zeroing: true,
    }
    .checker()
    .threads(2)
    .spawn_bfs()
    .join();
    let path = checker
        .discovery("no secret is reachable by another component (4, 5)")
        .expect("a hypervisor that does not zero must leak a secret");
    println!(
        "counterexample found for the mutant: {:?}",
        path.into_actions()
    );
}
