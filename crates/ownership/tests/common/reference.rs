//! A deliberately naive reference model of page ownership, written from the
//! specification (the table in the crate docs and the before/after states on
//! each `Transition`) without looking at the crate's encoding or rules: one
//! `HashMap` entry per (page, component) state, a pin count per page, and
//! the ghost contents of every page.
//!
//! Shared by the differential property test and the fuzz target (which
//! includes this file with `#[path]`), so it depends on `std` and the crate's
//! vocabulary types only.

use std::collections::{BTreeSet, HashMap};

use rampart_ownership::{Component, Error, PAGE_SIZE, State, VmId};

/// A call under test: the crate's transitions, spelt out independently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    HostShareHyp,
    HostUnshareHyp,
    HostDonateHyp,
    HypDonateHost,
    HostDonateGuest(VmId),
    GuestShareHost(VmId),
    GuestUnshareHost(VmId),
    HostShareGuest(VmId),
    HostUnshareGuest(VmId),
    GuestRelinquish(VmId),
    HostReclaimGuest(VmId),
    HypPin,
    HypUnpin,
    HostDonateVmMeta(VmId),
    HypReleaseVmMeta(VmId),
}

impl Call {
    /// The crate's name for the same call.
    pub fn transition(self) -> rampart_ownership::Transition {
        use rampart_ownership::Transition as T;
        match self {
            Call::HostShareHyp => T::HostShareHyp,
            Call::HostUnshareHyp => T::HostUnshareHyp,
            Call::HostDonateHyp => T::HostDonateHyp,
            Call::HypDonateHost => T::HypDonateHost,
            Call::HostDonateGuest(vm) => T::HostDonateGuest(vm),
            Call::GuestShareHost(vm) => T::GuestShareHost(vm),
            Call::GuestUnshareHost(vm) => T::GuestUnshareHost(vm),
            Call::HostShareGuest(vm) => T::HostShareGuest(vm),
            Call::HostUnshareGuest(vm) => T::HostUnshareGuest(vm),
            Call::GuestRelinquish(vm) => T::GuestRelinquish(vm),
            Call::HostReclaimGuest(vm) => T::HostReclaimGuest(vm),
            Call::HypPin => T::HypPin,
            Call::HypUnpin => T::HypUnpin,
            Call::HostDonateVmMeta(vm) => T::HostDonateVmMeta(vm),
            Call::HypReleaseVmMeta(vm) => T::HypReleaseVmMeta(vm),
        }
    }
}

/// What a page holds, as far as secrecy goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Content {
    /// All zeroes.
    #[default]
    Zero,
    /// Data its writer does not mind others seeing.
    Public,
    /// A guest's secret, written while it owned the page exclusively.
    Secret(VmId),
}

/// A live VM as the hypervisor sees it: the metadata range it was created
/// with and the pages its structures use (the stage-2 root from creation,
/// then a vCPU or stage-2 table page per allocation, lowest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveVm {
    /// First page frame of the metadata.
    pub first: u64,
    /// Pages of metadata.
    pub pages: u64,
    /// Page frames a live structure uses.
    pub used: BTreeSet<u64>,
}

impl LiveVm {
    /// A VM just created on `pages` pages from `first`: its stage-2 root is
    /// the first page.
    pub fn new(first: u64, pages: u64) -> Self {
        Self {
            first,
            pages,
            used: BTreeSet::from([first]),
        }
    }

    /// A structure takes the lowest unused metadata page, if any is left.
    pub fn allocate(&mut self) {
        if let Some(pfn) = (self.first..self.first + self.pages).find(|p| !self.used.contains(p)) {
            self.used.insert(pfn);
        }
    }
}

/// The naive model.
#[derive(Clone, Debug)]
pub struct Reference {
    /// First page frame of the modelled region.
    pub base: u64,
    /// Number of pages.
    pub len: u64,
    /// (pfn, component) → state; missing means `Absent`.
    pub states: HashMap<(u64, Component), State>,
    /// pfn → hypervisor pins.
    pub pins: HashMap<u64, u32>,
    /// pfn → ghost contents.
    pub content: HashMap<u64, Content>,
    /// pfn → the VM the hypervisor holds the page for (VM metadata). Such a
    /// page is the hypervisor's (`Owned` in its view) but only its VM's
    /// release gives it back.
    pub held: HashMap<u64, VmId>,
    /// The verdict of the last call.
    pub last: Result<(), (Error, u64)>,
    /// Live VMs (the hypervisor's lifecycle, not the table's business).
    pub vms: HashMap<VmId, LiveVm>,
}

/// Largest pin count the crate allows.
pub const PIN_LIMIT: u32 = 65_535;

impl Reference {
    /// A region of `len` pages from `base`, all owned by the host.
    pub fn new(base: u64, len: u64) -> Self {
        let mut states = HashMap::new();
        for pfn in base..base + len {
            states.insert((pfn, Component::Host), State::Owned);
        }
        Self {
            base,
            len,
            states,
            pins: HashMap::new(),
            content: HashMap::new(),
            held: HashMap::new(),
            last: Ok(()),
            vms: HashMap::new(),
        }
    }

    /// The state of `component` on page frame `pfn`.
    pub fn get(&self, pfn: u64, component: Component) -> State {
        self.states
            .get(&(pfn, component))
            .copied()
            .unwrap_or(State::Absent)
    }

    fn set(&mut self, pfn: u64, component: Component, state: State) {
        if state == State::Absent {
            self.states.remove(&(pfn, component));
        } else {
            self.states.insert((pfn, component), state);
        }
    }

    /// Every guest that has some state on some page.
    pub fn guests(&self) -> BTreeSet<VmId> {
        self.states
            .keys()
            .filter_map(|(_, c)| match c {
                Component::Guest(vm) => Some(*vm),
                _ => None,
            })
            .collect()
    }

    /// The guest (other than `vm`) that owns `pfn`, if any.
    fn other_guest_owns(&self, pfn: u64, vm: VmId) -> bool {
        self.states.iter().any(|((p, c), s)| {
            *p == pfn
                && matches!(c, Component::Guest(other) if *other != vm)
                && matches!(s, State::Owned | State::SharedOwned)
        })
    }

    /// The guest (other than `vm`) that borrows `pfn`, if any.
    fn other_guest_borrows(&self, pfn: u64, vm: VmId) -> bool {
        self.states.iter().any(|((p, c), s)| {
            *p == pfn
                && matches!(c, Component::Guest(other) if *other != vm)
                && *s == State::SharedBorrowed
        })
    }

    /// Range checks, in the documented order, with wide arithmetic.
    fn validate(&self, addr: u64, pages: u64) -> Result<(u64, u64), (Error, u64)> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err((Error::Unaligned, addr));
        }
        if pages == 0 {
            return Err((Error::ZeroCount, addr));
        }
        if u128::from(addr) + u128::from(pages) * u128::from(PAGE_SIZE) > 1u128 << 64 {
            return Err((Error::Overflow, addr));
        }
        let first = addr / PAGE_SIZE;
        let end = self.base + self.len;
        if first < self.base || first >= end {
            return Err((Error::OutOfRange, addr));
        }
        if u128::from(first) + u128::from(pages) > u128::from(end) {
            return Err((Error::OutOfRange, end * PAGE_SIZE));
        }
        Ok((first, first + pages))
    }

    /// The precondition check for one page.
    fn check_page(&self, call: Call, pfn: u64) -> Result<(), Error> {
        use State::{Owned, SharedBorrowed, SharedOwned};
        let host = self.get(pfn, Component::Host);
        let hyp = self.get(pfn, Component::Hyp);
        let pins = self.pins.get(&pfn).copied().unwrap_or(0);
        // The usual answer when the host wants to give or lend a page.
        let host_gives = || match host {
            Owned => Ok(()),
            SharedOwned => Err(Error::AlreadyShared),
            _ => Err(Error::NotOwner),
        };
        match call {
            Call::HostShareHyp
            | Call::HostDonateHyp
            | Call::HostDonateGuest(_)
            | Call::HostShareGuest(_)
            | Call::HostDonateVmMeta(_) => host_gives(),
            Call::HypReleaseVmMeta(vm) => match self.held.get(&pfn) {
                Some(&holder) if holder == vm => Ok(()),
                Some(_) => Err(Error::WrongGuest),
                None => Err(Error::NotOwner),
            },
            Call::HostUnshareHyp => match (host, hyp) {
                (SharedOwned, SharedBorrowed) if pins > 0 => Err(Error::Busy),
                (SharedOwned, SharedBorrowed) => Ok(()),
                (SharedOwned | Owned, _) => Err(Error::NotShared),
                _ => Err(Error::NotOwner),
            },
            Call::HypDonateHost => {
                if hyp == Owned && !self.held.contains_key(&pfn) {
                    Ok(())
                } else {
                    Err(Error::NotOwner)
                }
            }
            Call::HostUnshareGuest(vm) => {
                let guest = self.get(pfn, Component::Guest(vm));
                match host {
                    SharedOwned if guest == SharedBorrowed => Ok(()),
                    SharedOwned if self.other_guest_borrows(pfn, vm) => Err(Error::WrongGuest),
                    SharedOwned | Owned => Err(Error::NotShared),
                    _ => Err(Error::NotOwner),
                }
            }
            Call::GuestShareHost(vm)
            | Call::GuestUnshareHost(vm)
            | Call::GuestRelinquish(vm)
            | Call::HostReclaimGuest(vm) => {
                let guest = self.get(pfn, Component::Guest(vm));
                let verdict = match (call, guest) {
                    (Call::GuestShareHost(_), Owned) => Ok(()),
                    (Call::GuestShareHost(_), SharedOwned) => Err(Error::AlreadyShared),
                    (Call::GuestUnshareHost(_), SharedOwned) => Ok(()),
                    (Call::GuestUnshareHost(_), Owned) => Err(Error::NotShared),
                    (Call::GuestRelinquish(_), Owned) => Ok(()),
                    (Call::GuestRelinquish(_), SharedOwned) => Err(Error::AlreadyShared),
                    (Call::HostReclaimGuest(_), Owned | SharedOwned) => Ok(()),
                    _ => Err(Error::NotOwner),
                };
                match verdict {
                    Err(Error::NotOwner) if self.other_guest_owns(pfn, vm) => {
                        Err(Error::WrongGuest)
                    }
                    other => other,
                }
            }
            Call::HypPin => match hyp {
                SharedBorrowed if pins >= PIN_LIMIT => Err(Error::PinLimit),
                SharedBorrowed => Ok(()),
                _ => Err(Error::NotShared),
            },
            Call::HypUnpin => match hyp {
                SharedBorrowed if pins == 0 => Err(Error::NotPinned),
                SharedBorrowed => Ok(()),
                _ => Err(Error::NotShared),
            },
        }
    }

    /// Applies the call to one page whose check passed.
    fn apply_page(&mut self, call: Call, pfn: u64) {
        use State::{Absent, Owned, SharedBorrowed, SharedOwned};
        let (host, hyp, guest) = (Component::Host, Component::Hyp, Component::Guest);
        match call {
            Call::HostShareHyp => {
                self.set(pfn, host, SharedOwned);
                self.set(pfn, hyp, SharedBorrowed);
            }
            Call::HostUnshareHyp => {
                self.set(pfn, host, Owned);
                self.set(pfn, hyp, Absent);
            }
            Call::HostDonateHyp => {
                self.set(pfn, host, Absent);
                self.set(pfn, hyp, Owned);
            }
            Call::HypDonateHost => {
                self.set(pfn, hyp, Absent);
                self.content.insert(pfn, Content::Zero);
                self.set(pfn, host, Owned);
            }
            Call::HostDonateGuest(vm) => {
                self.set(pfn, host, Absent);
                self.set(pfn, guest(vm), Owned);
            }
            Call::GuestShareHost(vm) => {
                self.set(pfn, guest(vm), SharedOwned);
                self.set(pfn, host, SharedBorrowed);
                // The guest reveals what the page holds.
                self.content.insert(pfn, Content::Public);
            }
            Call::GuestUnshareHost(vm) => {
                self.set(pfn, guest(vm), Owned);
                self.set(pfn, host, Absent);
            }
            Call::HostShareGuest(vm) => {
                self.set(pfn, host, SharedOwned);
                self.set(pfn, guest(vm), SharedBorrowed);
            }
            Call::HostUnshareGuest(vm) => {
                self.set(pfn, host, Owned);
                self.set(pfn, guest(vm), Absent);
            }
            Call::GuestRelinquish(vm) | Call::HostReclaimGuest(vm) => {
                self.set(pfn, guest(vm), Absent);
                self.content.insert(pfn, Content::Zero);
                self.set(pfn, host, Owned);
            }
            Call::HostDonateVmMeta(vm) => {
                self.set(pfn, host, Absent);
                self.set(pfn, hyp, Owned);
                self.held.insert(pfn, vm);
            }
            Call::HypReleaseVmMeta(_) => {
                self.set(pfn, hyp, Absent);
                self.held.remove(&pfn);
                self.content.insert(pfn, Content::Zero);
                self.set(pfn, host, Owned);
            }
            Call::HypPin => *self.pins.entry(pfn).or_default() += 1,
            Call::HypUnpin => *self.pins.entry(pfn).or_default() -= 1,
        }
    }

    /// Runs a call: every check on every page, then every change. Returns
    /// the error and the offending address on failure (nothing changes).
    pub fn call(&mut self, call: Call, addr: u64, pages: u64) -> Result<(), (Error, u64)> {
        self.last = self.call_inner(call, addr, pages);
        self.last
    }

    fn call_inner(&mut self, call: Call, addr: u64, pages: u64) -> Result<(), (Error, u64)> {
        let (first, end) = self.validate(addr, pages)?;
        for pfn in first..end {
            self.check_page(call, pfn)
                .map_err(|e| (e, pfn * PAGE_SIZE))?;
        }
        for pfn in first..end {
            self.apply_page(call, pfn);
        }
        Ok(())
    }

    /// `VM_CREATE` for `vm` (a no-op if it is live): the metadata is held
    /// for it and its stage-2 root takes the first page.
    pub fn vm_create(&mut self, vm: VmId, addr: u64, pages: u64) {
        if self.vms.contains_key(&vm) {
            self.last = Ok(());
            return;
        }
        if self.call(Call::HostDonateVmMeta(vm), addr, pages).is_ok() {
            self.vms.insert(vm, LiveVm::new(addr / PAGE_SIZE, pages));
        }
    }

    /// A live VM allocates a vCPU or stage-2 table page.
    pub fn vm_allocate(&mut self, vm: VmId) {
        if let Some(live) = self.vms.get_mut(&vm) {
            live.allocate();
        }
        self.last = Ok(());
    }

    /// `VM_DESTROY` (a no-op if `vm` is not live): every page the guest
    /// owns is reclaimed and every page it borrows unshared, then its
    /// metadata is released. `last` is the release's verdict.
    pub fn vm_destroy(&mut self, vm: VmId) {
        let Some(live) = self.vms.remove(&vm) else {
            self.last = Ok(());
            return;
        };
        for pfn in self.base..self.base + self.len {
            let call = match self.get(pfn, Component::Guest(vm)) {
                State::Owned | State::SharedOwned => Call::HostReclaimGuest(vm),
                State::SharedBorrowed => Call::HostUnshareGuest(vm),
                State::Absent => continue,
            };
            let _ = self.call(call, pfn * PAGE_SIZE, 1);
        }
        let _ = self.call(
            Call::HypReleaseVmMeta(vm),
            live.first * PAGE_SIZE,
            live.pages,
        );
    }

    /// The pages on which `call` would pass its checks, in address order.
    pub fn eligible(&self, call: Call) -> Vec<u64> {
        (self.base..self.base + self.len)
            .filter(|&pfn| self.check_page(call, pfn).is_ok())
            .collect()
    }

    /// A component writes to a page; it only lands if the component can
    /// reach the page. A guest writing a page it owns alone writes a secret.
    pub fn write(&mut self, pfn: u64, component: Component) {
        let content = match (component, self.get(pfn, component)) {
            (_, State::Absent) => return,
            (Component::Guest(vm), State::Owned) => Content::Secret(vm),
            _ => Content::Public,
        };
        self.content.insert(pfn, content);
    }

    /// Whether any component other than the owning guest can reach a page
    /// holding that guest's secret (invariants 4 and 5).
    pub fn leak(&self) -> Option<(u64, Component)> {
        self.states.iter().find_map(|((pfn, reader), state)| {
            let secret = self.content.get(pfn).copied().unwrap_or_default();
            match secret {
                Content::Secret(vm)
                    if *state != State::Absent && *reader != Component::Guest(vm) =>
                {
                    Some((*pfn, *reader))
                }
                _ => None,
            }
        })
    }
}
