//! Per-page state: the compact [`PageMeta`] entry, its decoded form
//! [`PageState`], and the per-component view [`State`] derived from it.

use core::fmt;

use crate::VmId;

/// A party that can own or borrow a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The host operating system (EL1 behind the host stage-2).
    Host,
    /// The hypervisor itself (EL2 stage-1).
    Hyp,
    /// A guest, behind its own stage-2.
    Guest(VmId),
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Host => f.write_str("host"),
            Component::Hyp => f.write_str("hyp"),
            Component::Guest(vm) => write!(f, "guest ({vm})"),
        }
    }
}

/// What one component may do with one page: the pKVM page states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum State {
    /// The component may not access the page (no mapping).
    #[default]
    Absent,
    /// The component owns the page and nobody else can reach it.
    Owned,
    /// The component owns the page and has shared it with one borrower.
    SharedOwned,
    /// The component may access a page another component owns and shared.
    SharedBorrowed,
}

impl State {
    /// Whether the component may map and access the page.
    #[must_use]
    pub const fn is_accessible(self) -> bool {
        !matches!(self, State::Absent)
    }

    /// Whether the component is the page's owner (shared or not).
    #[must_use]
    pub const fn is_owner(self) -> bool {
        matches!(self, State::Owned | State::SharedOwned)
    }
}

/// Largest number of simultaneous hypervisor pins on one page.
pub const MAX_PINS: u16 = u16::MAX;

/// The whole state of one page, for every component at once.
///
/// This is the decoded form of a [`PageMeta`]. Its shape makes most of the
/// invariants hold by construction: there is exactly one owner, at most one
/// borrower, a guest-owned page can only be lent to the host, and only a
/// page lent to the hypervisor can carry pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PageState {
    /// The host owns the page exclusively. The initial state of all RAM.
    #[default]
    HostOwned,
    /// The host owns the page and has shared it with the hypervisor, which
    /// holds `pins` pins on it (a pinned page cannot be unshared).
    HostSharedWithHyp {
        /// Number of outstanding hypervisor pins.
        pins: u16,
    },
    /// The host owns the page and has shared it with a (non-protected)
    /// guest.
    HostSharedWithGuest(VmId),
    /// The hypervisor owns the page exclusively (its own memory, donated by
    /// the host or reserved at boot).
    HypOwned,
    /// A guest owns the page exclusively.
    GuestOwned(VmId),
    /// A guest owns the page and has shared it with the host (MEM_SHARE).
    GuestSharedWithHost(VmId),
    /// The hypervisor holds the page for one VM's own structures (its
    /// metadata: vCPU state, stage-2 tables), from `VM_CREATE` until
    /// `VM_DESTROY`. Only [`Transition::HypReleaseVmMeta`] for that VM
    /// gives it back (zeroed): the host can neither reclaim, share nor
    /// donate it while the VM lives, and the guest itself cannot reach it.
    ///
    /// [`Transition::HypReleaseVmMeta`]: crate::Transition::HypReleaseVmMeta
    HypOwnedForVm(VmId),
}

impl PageState {
    /// The page's single owner.
    #[must_use]
    pub const fn owner(self) -> Component {
        match self {
            PageState::HostOwned
            | PageState::HostSharedWithHyp { .. }
            | PageState::HostSharedWithGuest(_) => Component::Host,
            PageState::HypOwned | PageState::HypOwnedForVm(_) => Component::Hyp,
            PageState::GuestOwned(vm) | PageState::GuestSharedWithHost(vm) => Component::Guest(vm),
        }
    }

    /// The page's single borrower, if the owner shared it.
    #[must_use]
    pub const fn borrower(self) -> Option<Component> {
        match self {
            PageState::HostOwned
            | PageState::HypOwned
            | PageState::HypOwnedForVm(_)
            | PageState::GuestOwned(_) => None,
            PageState::HostSharedWithHyp { .. } => Some(Component::Hyp),
            PageState::HostSharedWithGuest(vm) => Some(Component::Guest(vm)),
            PageState::GuestSharedWithHost(_) => Some(Component::Host),
        }
    }

    /// Number of hypervisor pins (zero unless shared with the hypervisor).
    #[must_use]
    pub const fn pins(self) -> u16 {
        match self {
            PageState::HostSharedWithHyp { pins } => pins,
            _ => 0,
        }
    }

    /// What `component` may do with this page.
    #[must_use]
    pub fn view(self, component: Component) -> State {
        if self.owner() == component {
            if self.borrower().is_some() {
                State::SharedOwned
            } else {
                State::Owned
            }
        } else if self.borrower() == Some(component) {
            State::SharedBorrowed
        } else {
            State::Absent
        }
    }

    /// The compact encoding of this state.
    #[must_use]
    pub const fn encode(self) -> PageMeta {
        let (tag, payload) = match self {
            PageState::HostOwned => (TAG_HOST_OWNED, 0),
            PageState::HostSharedWithHyp { pins } => (TAG_HOST_SHARED_HYP, pins),
            PageState::HostSharedWithGuest(vm) => (TAG_HOST_SHARED_GUEST, vm.0),
            PageState::HypOwned => (TAG_HYP_OWNED, 0),
            PageState::GuestOwned(vm) => (TAG_GUEST_OWNED, vm.0),
            PageState::GuestSharedWithHost(vm) => (TAG_GUEST_SHARED_HOST, vm.0),
            PageState::HypOwnedForVm(vm) => (TAG_HYP_OWNED_FOR_VM, vm.0),
        };
        PageMeta((tag << TAG_SHIFT) | payload as u32)
    }
}

const TAG_SHIFT: u32 = 16;
const PAYLOAD_MASK: u32 = 0xffff;
const TAG_HOST_OWNED: u32 = 0;
const TAG_HOST_SHARED_HYP: u32 = 1;
const TAG_HOST_SHARED_GUEST: u32 = 2;
const TAG_HYP_OWNED: u32 = 3;
const TAG_GUEST_OWNED: u32 = 4;
const TAG_GUEST_SHARED_HOST: u32 = 5;
const TAG_HYP_OWNED_FOR_VM: u32 = 6;

/// One page's ownership metadata: 4 bytes per 4 KiB page (0.1 % of RAM).
///
/// Layout (a `u32`): bits 0..16 hold a payload (the guest's [`VmId`] for a
/// guest-owned or guest-borrowed page or a page the hypervisor holds for
/// that VM, the pin count for a page shared with
/// the hypervisor, zero otherwise); bits 16..19 hold the state tag; bits
/// 19..32 are reserved and zero. Only one VM id is ever needed because a
/// guest-owned page can only be lent to the host and a host-owned page is
/// lent to at most one party.
///
/// **All-zero bits encode [`PageState::HostOwned`]**, so a zero-filled table
/// is a valid initial table in which the host owns everything. Any other
/// bit pattern that [`PageState::encode`] cannot produce is reported as
/// [`Error::Corrupt`](crate::Error::Corrupt) rather than trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct PageMeta(u32);

impl PageMeta {
    /// The entry of a page the host owns exclusively (all-zero bits).
    pub const HOST_OWNED: PageMeta = PageMeta(0);

    /// Decodes the entry, or `None` if it is not a valid encoding.
    #[must_use]
    pub const fn decode(self) -> Option<PageState> {
        let payload = (self.0 & PAYLOAD_MASK) as u16;
        let vm = VmId(payload);
        let state = match self.0 >> TAG_SHIFT {
            TAG_HOST_OWNED if payload == 0 => PageState::HostOwned,
            TAG_HOST_SHARED_HYP => PageState::HostSharedWithHyp { pins: payload },
            TAG_HOST_SHARED_GUEST => PageState::HostSharedWithGuest(vm),
            TAG_HYP_OWNED if payload == 0 => PageState::HypOwned,
            TAG_GUEST_OWNED => PageState::GuestOwned(vm),
            TAG_GUEST_SHARED_HOST => PageState::GuestSharedWithHost(vm),
            TAG_HYP_OWNED_FOR_VM => PageState::HypOwnedForVm(vm),
            _ => return None,
        };
        Some(state)
    }

    /// The raw bits (for debugging dumps and for storing the table).
    #[must_use]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// An entry from raw bits, for a table read back from memory. Nothing
    /// is trusted: an invalid pattern decodes to `None` and every
    /// transition touching it fails with `Corrupt`.
    #[must_use]
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }
}

impl From<PageState> for PageMeta {
    fn from(state: PageState) -> Self {
        state.encode()
    }
}
