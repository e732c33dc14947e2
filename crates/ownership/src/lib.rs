//! Rampart's page-ownership state machine: who owns, shares and borrows every page of RAM.
//!
//! Every isolation guarantee the hypervisor makes reduces to this crate. It
//! knows nothing about page tables or hardware: it keeps one 4-byte
//! [`PageMeta`] per 4 KiB page (0.1 % of RAM) in a table the hypervisor
//! lends it, and tells the hypervisor, for each transition, how every
//! party's mappings must change ([`Effect`]).
//!
//! # Design principles
//! - **One owner per page, by construction.** A page's state is one
//!   [`PageState`]: the owner, at most one borrower and a pin count are a
//!   single tagged value, so "two owners" or "a borrower the owner does not
//!   know about" cannot be written down. Each component's view ([`State`]:
//!   `Owned`, `SharedOwned`, `SharedBorrowed`, `Absent`) is derived from it
//!   by [`PageState::view`] / [`Table::state_of`].
//! - **Check, then commit.** A transition takes a page range, runs a
//!   side-effect-free check of every precondition on every page
//!   ([`Table::check`]), and only then writes every page (a commit step
//!   that cannot fail). A rejected call changes nothing and says which
//!   precondition failed at which page ([`Rejection`]).
//! - **One rule per page.** [`Transition::step`] is a pure, total function
//!   from a page's state to its next state or an [`Error`]; the table only
//!   applies it. It is what the tests, the model checker and the fuzzer
//!   exercise.
//! - **Effects, not side effects.** The crate never touches memory or page
//!   tables. A committed transition returns an [`Effect`] that is uniform
//!   over its range: the new host, hypervisor and guest access, and whether
//!   the pages must be zeroed first. [`Table::runs`] and
//!   [`Table::largest_uniform_block`] give coalesced runs so block mappings
//!   survive.
//! - **Untrusted numbers are allegations.** Addresses, counts and VM ids
//!   come from the host or a guest. Every combination gets a typed error,
//!   never a panic; `#![forbid(unsafe_code)]`, `no_std`, no allocation.
//!
//! # States and transitions
//! | page state | host | hyp | guest *vm* |
//! |---|---|---|---|
//! | [`HostOwned`](PageState::HostOwned) | Owned | Absent | Absent |
//! | [`HostSharedWithHyp`](PageState::HostSharedWithHyp) | SharedOwned | SharedBorrowed (+pins) | Absent |
//! | [`HostSharedWithGuest(vm)`](PageState::HostSharedWithGuest) | SharedOwned | Absent | SharedBorrowed |
//! | [`HypOwned`](PageState::HypOwned) | Absent | Owned | Absent |
//! | [`GuestOwned(vm)`](PageState::GuestOwned) | Absent | Absent | Owned |
//! | [`GuestSharedWithHost(vm)`](PageState::GuestSharedWithHost) | SharedBorrowed | Absent | SharedOwned |
//! | [`HypOwnedForVm(vm)`](PageState::HypOwnedForVm) | Absent | Owned | Absent |
//!
//! Every other guest is `Absent` on every page it does not own or borrow.
//! The transitions and each party's before/after states are documented on
//! [`Transition`]; each has a [`Table`] method of the same name.
//!
//! # Invariants
//! 1. Each page has exactly one owner.
//! 2. A component can reach a page only when it owns or borrows it.
//! 3. A borrowed page is shared-owned by exactly one owner, and the owner's
//!    record of borrowers is exact.
//! 4. A page owned by a guest is reachable by no other component unless
//!    that guest shared it (and then only by the host).
//! 5. A page that was guest-owned and not shared comes back to the host
//!    only after it has been zeroed: every transition that takes a page
//!    away from a guest (or the hypervisor) and gives it to the host has
//!    `zero` set in its effect, and the hypervisor zeroes before mapping.
//! 6. A page the hypervisor has pinned cannot be unshared (`Busy`).
//! 7. A page the hypervisor holds for a VM's own structures
//!    ([`HypOwnedForVm(vm)`](PageState::HypOwnedForVm)) is reachable by
//!    nobody but the hypervisor, and every transition except
//!    [`HypReleaseVmMeta(vm)`](Transition::HypReleaseVmMeta) refuses it:
//!    the host can neither reclaim (`HypDonateHost`), share, unshare nor
//!    donate it, and no guest can map it. The hypervisor releases it only
//!    once the VM's structures are gone (`VM_DESTROY`), zeroed.
//!
//! 1–4 and 6 hold by construction of [`PageState`] and are re-checked on
//! the whole table by [`Table::check_invariants`]. 5 and 6 are also
//! properties of histories: the differential test, the model checker
//! (`tests/model.rs`) and the fuzzer track page contents and pins across
//! steps to check them. 7 is a property of [`Transition::step`]; the model
//! checker and the differential test check it over whole VM lifecycles
//! (create, vCPUs, stage-2 table pages, destroy) against the pages the
//! hypervisor's live structures use.
//!
//! # Using it from the hypervisor
//! ```
//! use rampart_ownership::{Component, PageMeta, Pfn, PhysAddr, State, Table, Update, VmId};
//!
//! let mut meta = [PageMeta::HOST_OWNED; 16]; // from the carve-out, zeroed
//! let mut table = Table::new(&mut meta, Pfn(0x40000)).unwrap();
//! let page = PhysAddr(0x4000_2000);
//!
//! let effect = table.host_donate_guest(VmId(1), page, 2).unwrap();
//! assert_eq!(effect.updates.host, Update::Set(State::Absent)); // unmap from host
//! assert_eq!(effect.updates.guest, Update::Set(State::Owned));
//!
//! let effect = table.guest_relinquish(VmId(1), page, 1).unwrap();
//! assert!(effect.updates.zero); // zero before the host maps it again
//! assert_eq!(table.state_of(page, Component::Host), Ok(State::Owned));
//! ```
#![no_std]
#![forbid(unsafe_code)]

mod addr;
mod error;
mod state;
mod table;
mod transition;

pub use addr::{PAGE_SHIFT, PAGE_SIZE, Pfn, PhysAddr, VmId};
pub use error::{Error, Rejection};
pub use state::{Component, MAX_PINS, PageMeta, PageState, State};
pub use table::{InvariantViolation, Run, Runs, Table};
pub use transition::{Effect, Transition, Update, Updates};
