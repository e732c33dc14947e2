//! The transitions, their per-page rules, and the effect the hypervisor
//! applies to its page tables after a transition commits.

use core::fmt;

use crate::{Component, Error, MAX_PINS, PageState, PhysAddr, State, VmId};

/// A change of ownership. Each variant documents the state of every party
/// before and after, for each page of the range (pKVM style); parties not
/// listed are `Absent` before and after. "Zero" says the hypervisor must zero
/// the pages before the new owner can reach them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transition {
    /// The host lends pages to the hypervisor (e.g. a vCPU's shared state).
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Owned  | SharedOwned |
    /// | hyp   | Absent | SharedBorrowed (0 pins) |
    HostShareHyp,
    /// The host takes back pages lent to the hypervisor. Fails with `Busy`
    /// if any page is pinned.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | SharedOwned | Owned |
    /// | hyp   | SharedBorrowed (0 pins) | Absent |
    HostUnshareHyp,
    /// The host gives pages to the hypervisor (page-table pool, VM
    /// metadata).
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Owned  | Absent |
    /// | hyp   | Absent | Owned |
    HostDonateHyp,
    /// The hypervisor gives pages back to the host. Zero.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Absent | Owned |
    /// | hyp   | Owned  | Absent |
    HypDonateHost,
    /// The host gives pages to a guest (protected VM memory). Where the
    /// pages appear in the guest's address space is the hypervisor's
    /// business.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Owned  | Absent |
    /// | guest | Absent | Owned |
    HostDonateGuest(VmId),
    /// A guest shares its pages with the host (MEM_SHARE).
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Absent | SharedBorrowed |
    /// | guest | Owned  | SharedOwned |
    GuestShareHost(VmId),
    /// A guest takes back pages it shared with the host (MEM_UNSHARE).
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | SharedBorrowed | Absent |
    /// | guest | SharedOwned | Owned |
    GuestUnshareHost(VmId),
    /// The host lends pages to a non-protected guest.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Owned  | SharedOwned |
    /// | guest | Absent | SharedBorrowed |
    HostShareGuest(VmId),
    /// The host takes back pages lent to a non-protected guest (also used
    /// at teardown for the pages a dead guest borrowed).
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | SharedOwned | Owned |
    /// | guest | SharedBorrowed | Absent |
    HostUnshareGuest(VmId),
    /// A guest gives pages back to the host (MEM_RELINQUISH, balloon). The
    /// pages must not be shared (unshare first). Zero.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Absent | Owned |
    /// | guest | Owned  | Absent |
    GuestRelinquish(VmId),
    /// The host reclaims the pages of a dead guest. The hypervisor calls it
    /// only once the guest can no longer run (its stage-2 is torn down).
    /// Pages the guest had shared with the host come back too. Zero (all
    /// pages, shared ones included: the guest may have written them after
    /// the host last looked).
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Absent or SharedBorrowed | Owned |
    /// | guest | Owned or SharedOwned | Absent |
    HostReclaimGuest(VmId),
    /// The hypervisor pins pages the host shared with it, so the host cannot
    /// unshare them while the hypervisor uses them. Pins nest (up to
    /// [`MAX_PINS`]). No party's access changes.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | SharedOwned | SharedOwned |
    /// | hyp   | SharedBorrowed (n pins) | SharedBorrowed (n + 1 pins) |
    HypPin,
    /// The hypervisor drops one pin from each page. No party's access
    /// changes.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | SharedOwned | SharedOwned |
    /// | hyp   | SharedBorrowed (n > 0 pins) | SharedBorrowed (n − 1 pins) |
    HypUnpin,
    /// The host gives pages to the hypervisor to hold for one VM's own
    /// structures (`VM_CREATE`: vCPU state, stage-2 tables). The pages
    /// become [`PageState::HypOwnedForVm`]: unlike pages given with
    /// [`HostDonateHyp`](Transition::HostDonateHyp), no host call can take
    /// them back; only [`HypReleaseVmMeta`](Transition::HypReleaseVmMeta)
    /// for the same VM does, when the VM is destroyed.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Owned  | Absent |
    /// | hyp   | Absent | Owned (held for *vm*) |
    /// | guest | Absent | Absent |
    HostDonateVmMeta(VmId),
    /// The hypervisor gives back the pages it held for a VM, once that VM's
    /// structures are gone (`VM_DESTROY`). Zero. Fails with `WrongGuest` on
    /// a page held for another VM and `NotOwner` on any other page.
    ///
    /// | party | before | after |
    /// |-------|--------|-------|
    /// | host  | Absent | Owned |
    /// | hyp   | Owned (held for *vm*) | Absent |
    HypReleaseVmMeta(VmId),
}

impl Transition {
    /// Every transition for guest `vm`, and every guest-independent one:
    /// handy for exhaustive tests.
    #[must_use]
    pub const fn all(vm: VmId) -> [Transition; 15] {
        [
            Transition::HostShareHyp,
            Transition::HostUnshareHyp,
            Transition::HostDonateHyp,
            Transition::HypDonateHost,
            Transition::HostDonateGuest(vm),
            Transition::GuestShareHost(vm),
            Transition::GuestUnshareHost(vm),
            Transition::HostShareGuest(vm),
            Transition::HostUnshareGuest(vm),
            Transition::GuestRelinquish(vm),
            Transition::HostReclaimGuest(vm),
            Transition::HypPin,
            Transition::HypUnpin,
            Transition::HostDonateVmMeta(vm),
            Transition::HypReleaseVmMeta(vm),
        ]
    }

    /// The guest this transition involves, if any.
    #[must_use]
    pub const fn vm(self) -> Option<VmId> {
        match self {
            Transition::HostDonateGuest(vm)
            | Transition::GuestShareHost(vm)
            | Transition::GuestUnshareHost(vm)
            | Transition::HostShareGuest(vm)
            | Transition::HostUnshareGuest(vm)
            | Transition::GuestRelinquish(vm)
            | Transition::HostReclaimGuest(vm)
            | Transition::HostDonateVmMeta(vm)
            | Transition::HypReleaseVmMeta(vm) => Some(vm),
            Transition::HostShareHyp
            | Transition::HostUnshareHyp
            | Transition::HostDonateHyp
            | Transition::HypDonateHost
            | Transition::HypPin
            | Transition::HypUnpin => None,
        }
    }

    /// The component on whose behalf the transition runs (who asked).
    #[must_use]
    pub const fn initiator(self) -> Component {
        match self {
            Transition::HostShareHyp
            | Transition::HostUnshareHyp
            | Transition::HostDonateHyp
            | Transition::HostDonateGuest(_)
            | Transition::HostShareGuest(_)
            | Transition::HostUnshareGuest(_)
            | Transition::HostReclaimGuest(_)
            | Transition::HostDonateVmMeta(_) => Component::Host,
            Transition::HypDonateHost
            | Transition::HypPin
            | Transition::HypUnpin
            | Transition::HypReleaseVmMeta(_) => Component::Hyp,
            Transition::GuestShareHost(vm)
            | Transition::GuestUnshareHost(vm)
            | Transition::GuestRelinquish(vm) => Component::Guest(vm),
        }
    }

    /// Whether the transition gives the hypervisor's own pages (mapped at
    /// EL2) back to the host: they are zeroed through the hypervisor's
    /// existing mapping rather than a temporary one.
    #[must_use]
    pub const fn returns_hyp_pages(self) -> bool {
        matches!(
            self,
            Transition::HypDonateHost | Transition::HypReleaseVmMeta(_)
        )
    }

    /// The rule for one page: the page's next state, or the precondition
    /// it fails. Pure, total and side-effect free; the table runs it over
    /// the whole range to check, then again to commit.
    pub fn step(self, page: PageState) -> Result<PageState, Error> {
        use PageState as P;
        match self {
            Transition::HostShareHyp => host_owned(page).map(|()| P::HostSharedWithHyp { pins: 0 }),
            Transition::HostDonateHyp => host_owned(page).map(|()| P::HypOwned),
            Transition::HostDonateGuest(vm) => host_owned(page).map(|()| P::GuestOwned(vm)),
            Transition::HostShareGuest(vm) => host_owned(page).map(|()| P::HostSharedWithGuest(vm)),
            Transition::HostDonateVmMeta(vm) => host_owned(page).map(|()| P::HypOwnedForVm(vm)),
            Transition::HypReleaseVmMeta(vm) => match page {
                P::HypOwnedForVm(holder) if holder == vm => Ok(P::HostOwned),
                P::HypOwnedForVm(_) => Err(Error::WrongGuest),
                _ => Err(Error::NotOwner),
            },
            Transition::HostUnshareHyp => match page {
                P::HostSharedWithHyp { pins: 0 } => Ok(P::HostOwned),
                P::HostSharedWithHyp { .. } => Err(Error::Busy),
                P::HostOwned | P::HostSharedWithGuest(_) => Err(Error::NotShared),
                P::HypOwned
                | P::HypOwnedForVm(_)
                | P::GuestOwned(_)
                | P::GuestSharedWithHost(_) => Err(Error::NotOwner),
            },
            Transition::HostUnshareGuest(vm) => match page {
                P::HostSharedWithGuest(lent) if lent == vm => Ok(P::HostOwned),
                P::HostSharedWithGuest(_) => Err(Error::WrongGuest),
                P::HostOwned | P::HostSharedWithHyp { .. } => Err(Error::NotShared),
                P::HypOwned
                | P::HypOwnedForVm(_)
                | P::GuestOwned(_)
                | P::GuestSharedWithHost(_) => Err(Error::NotOwner),
            },
            // Only what the host donated comes back this way: a page held
            // for a VM is refused like any page the hypervisor does not own
            // on the host's behalf.
            Transition::HypDonateHost => match page {
                P::HypOwned => Ok(P::HostOwned),
                _ => Err(Error::NotOwner),
            },
            Transition::GuestShareHost(vm) => match page {
                P::GuestOwned(owner) if owner == vm => Ok(P::GuestSharedWithHost(vm)),
                P::GuestSharedWithHost(owner) if owner == vm => Err(Error::AlreadyShared),
                other => Err(not_this_guests(other)),
            },
            Transition::GuestUnshareHost(vm) => match page {
                P::GuestSharedWithHost(owner) if owner == vm => Ok(P::GuestOwned(vm)),
                P::GuestOwned(owner) if owner == vm => Err(Error::NotShared),
                other => Err(not_this_guests(other)),
            },
            Transition::GuestRelinquish(vm) => match page {
                P::GuestOwned(owner) if owner == vm => Ok(P::HostOwned),
                P::GuestSharedWithHost(owner) if owner == vm => Err(Error::AlreadyShared),
                other => Err(not_this_guests(other)),
            },
            Transition::HostReclaimGuest(vm) => match page {
                P::GuestOwned(owner) | P::GuestSharedWithHost(owner) if owner == vm => {
                    Ok(P::HostOwned)
                }
                other => Err(not_this_guests(other)),
            },
            Transition::HypPin => match page {
                P::HostSharedWithHyp { pins } if pins < MAX_PINS => {
                    Ok(P::HostSharedWithHyp { pins: pins + 1 })
                }
                P::HostSharedWithHyp { .. } => Err(Error::PinLimit),
                _ => Err(Error::NotShared),
            },
            Transition::HypUnpin => match page {
                P::HostSharedWithHyp { pins: 0 } => Err(Error::NotPinned),
                P::HostSharedWithHyp { pins } => Ok(P::HostSharedWithHyp { pins: pins - 1 }),
                _ => Err(Error::NotShared),
            },
        }
    }

    /// What the hypervisor must do to its page tables once this transition
    /// has committed. The same for every page of the range.
    #[must_use]
    pub const fn updates(self) -> Updates {
        use State::{Absent, Owned, SharedBorrowed, SharedOwned};
        use Update::{Keep, Set};
        let (host, hyp, guest, zero) = match self {
            Transition::HostShareHyp => (Set(SharedOwned), Set(SharedBorrowed), Keep, false),
            Transition::HostUnshareHyp => (Set(Owned), Set(Absent), Keep, false),
            Transition::HostDonateHyp | Transition::HostDonateVmMeta(_) => {
                (Set(Absent), Set(Owned), Keep, false)
            }
            Transition::HypDonateHost | Transition::HypReleaseVmMeta(_) => {
                (Set(Owned), Set(Absent), Keep, true)
            }
            Transition::HostDonateGuest(_) => (Set(Absent), Keep, Set(Owned), false),
            Transition::GuestShareHost(_) => (Set(SharedBorrowed), Keep, Set(SharedOwned), false),
            Transition::GuestUnshareHost(_) => (Set(Absent), Keep, Set(Owned), false),
            Transition::HostShareGuest(_) => (Set(SharedOwned), Keep, Set(SharedBorrowed), false),
            Transition::HostUnshareGuest(_) => (Set(Owned), Keep, Set(Absent), false),
            Transition::GuestRelinquish(_) | Transition::HostReclaimGuest(_) => {
                (Set(Owned), Keep, Set(Absent), true)
            }
            Transition::HypPin | Transition::HypUnpin => (Keep, Keep, Keep, false),
        };
        Updates {
            host,
            hyp,
            guest,
            zero,
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Transition::HostShareHyp => "host_share_hyp",
            Transition::HostUnshareHyp => "host_unshare_hyp",
            Transition::HostDonateHyp => "host_donate_hyp",
            Transition::HypDonateHost => "hyp_donate_host",
            Transition::HostDonateGuest(_) => "host_donate_guest",
            Transition::GuestShareHost(_) => "guest_share_host",
            Transition::GuestUnshareHost(_) => "guest_unshare_host",
            Transition::HostShareGuest(_) => "host_share_guest",
            Transition::HostUnshareGuest(_) => "host_unshare_guest",
            Transition::GuestRelinquish(_) => "guest_relinquish",
            Transition::HostReclaimGuest(_) => "host_reclaim_guest",
            Transition::HypPin => "hyp_pin",
            Transition::HypUnpin => "hyp_unpin",
            Transition::HostDonateVmMeta(_) => "host_donate_vm_meta",
            Transition::HypReleaseVmMeta(_) => "hyp_release_vm_meta",
        };
        match self.vm() {
            Some(vm) => write!(f, "{name}({vm})"),
            None => f.write_str(name),
        }
    }
}

/// Precondition of the host-initiated share and donate calls: the host
/// owns the page and has not lent it.
fn host_owned(page: PageState) -> Result<(), Error> {
    match page {
        PageState::HostOwned => Ok(()),
        PageState::HostSharedWithHyp { .. } | PageState::HostSharedWithGuest(_) => {
            Err(Error::AlreadyShared)
        }
        PageState::HypOwned
        | PageState::HypOwnedForVm(_)
        | PageState::GuestOwned(_)
        | PageState::GuestSharedWithHost(_) => Err(Error::NotOwner),
    }
}

/// The error for a guest call on a page that is not that guest's own.
fn not_this_guests(page: PageState) -> Error {
    match page {
        PageState::GuestOwned(_) | PageState::GuestSharedWithHost(_) => Error::WrongGuest,
        _ => Error::NotOwner,
    }
}

/// How one party's mapping of the range changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Update {
    /// No change for this party: leave its mapping alone.
    Keep,
    /// The party's state becomes this: unmap for `Absent`, otherwise map
    /// read-write and record the state (e.g. in stage-2 software bits),
    /// replacing any earlier mapping.
    Set(State),
}

/// What a transition does to every party's page tables, uniformly over its
/// range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Updates {
    /// The host's new access (host stage-2).
    pub host: Update,
    /// The hypervisor's new access (EL2 stage-1).
    pub hyp: Update,
    /// The guest's new access (its stage-2), for transitions that involve a
    /// guest; `Keep` otherwise.
    pub guest: Update,
    /// Whether the pages must be zeroed before the new owner can reach them.
    pub zero: bool,
}

/// The result of a committed (or, from [`Table::check`](crate::Table::check),
/// a would-be) transition: the range and what the hypervisor must do to
/// make the page tables agree with the table.
///
/// Apply it in this order, under the same lock as the transition:
/// 1. every `Set(State::Absent)`: unmap and invalidate TLBs;
/// 2. if `zero`, zero the pages (through a private mapping);
/// 3. every other `Set(state)`: map with that state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Effect {
    /// The transition that ran.
    pub transition: Transition,
    /// The first byte of the range.
    pub start: PhysAddr,
    /// Number of pages in the range.
    pub pages: u64,
    /// What to do to each party's mappings.
    pub updates: Updates,
}

impl Effect {
    /// The guest whose stage-2 `updates.guest` applies to.
    #[must_use]
    pub const fn vm(&self) -> Option<VmId> {
        self.transition.vm()
    }

    /// The update for `component` (`Keep` for guests the transition does
    /// not involve).
    #[must_use]
    pub fn update_for(&self, component: Component) -> Update {
        match component {
            Component::Host => self.updates.host,
            Component::Hyp => self.updates.hyp,
            Component::Guest(vm) if self.vm() == Some(vm) => self.updates.guest,
            Component::Guest(_) => Update::Keep,
        }
    }
}
