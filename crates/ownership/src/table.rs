//! The per-page metadata table and the check-then-commit engine.

use core::fmt;

use crate::{
    Component, Effect, Error, PAGE_SHIFT, PageMeta, PageState, Pfn, PhysAddr, Rejection, State,
    Transition, VmId,
};

/// One past the highest page frame whose every byte has a 64-bit address.
const PFN_LIMIT: u64 = 1 << (64 - PAGE_SHIFT);

/// The ownership table: one [`PageMeta`] per page of a contiguous physical
/// region, borrowed from the caller (the hypervisor allocates it from its
/// carve-out, zero-filled, which means "the host owns everything").
///
/// Every transition validates its range, checks every page, and only then
/// writes; a rejected transition changes nothing.
pub struct Table<'a> {
    entries: &'a mut [PageMeta],
    base: Pfn,
}

impl fmt::Debug for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("base", &self.base)
            .field("pages", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Which invariant [`Table::check_invariants`] found broken, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvariantViolation {
    /// The invariant's number in the crate documentation (1–6).
    pub invariant: u8,
    /// The page.
    pub addr: PhysAddr,
    /// A fixed description of what is wrong.
    pub what: &'static str,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant {} broken at {}: {}",
            self.invariant, self.addr, self.what
        )
    }
}

/// A maximal run of contiguous pages in which one component has the same
/// state: the unit the hypervisor maps with one block descriptor when
/// alignment allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    /// The first byte of the run.
    pub start: PhysAddr,
    /// Number of pages in the run.
    pub pages: u64,
    /// The component's state on every page of the run.
    pub state: State,
}

impl<'a> Table<'a> {
    /// A table whose entry `i` describes page frame `base.0 + i`. The
    /// entries are used as they are (all-zero entries: the host owns
    /// everything).
    ///
    /// # Errors
    /// `Overflow` if the region does not fit in the 64-bit physical address
    /// space.
    pub fn new(entries: &'a mut [PageMeta], base: Pfn) -> Result<Self, Error> {
        let len = u64::try_from(entries.len()).map_err(|_| Error::Overflow)?;
        match base.0.checked_add(len) {
            Some(end) if end <= PFN_LIMIT => Ok(Self { entries, base }),
            _ => Err(Error::Overflow),
        }
    }

    /// The page frame of the first entry.
    #[must_use]
    pub fn base(&self) -> Pfn {
        self.base
    }

    /// Number of pages the table describes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table describes no page at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, read-only, entry `i` describing page frame
    /// `base() + i` (for a checker that compares the whole table with a
    /// model in one pass, e.g. the hypervisor's test-build oracle).
    #[must_use]
    pub fn entries(&self) -> &[PageMeta] {
        self.entries
    }

    /// Sets every page back to host-owned (boot-time initialisation of a
    /// table whose memory was not zero).
    pub fn reset(&mut self) {
        self.entries.fill(PageMeta::HOST_OWNED);
    }

    /// The address of entry `index` (in range by construction).
    fn addr_of(&self, index: usize) -> PhysAddr {
        // `new` checked that base + len fits below PFN_LIMIT.
        PhysAddr((self.base.0 + index as u64) << PAGE_SHIFT)
    }

    /// The index of the page containing `addr`, if the table covers it.
    fn index_of(&self, addr: PhysAddr) -> Option<usize> {
        let offset = addr.pfn().0.checked_sub(self.base.0)?;
        let index = usize::try_from(offset).ok()?;
        (index < self.entries.len()).then_some(index)
    }

    /// Validates a range: aligned, non-empty, not wrapping, inside the
    /// table. Returns the index of its first page and its length.
    fn validate(&self, start: PhysAddr, pages: u64) -> Result<(usize, usize), Rejection> {
        let reject = |error, addr| Rejection { error, addr };
        if !start.is_page_aligned() {
            return Err(reject(Error::Unaligned, start));
        }
        if pages == 0 {
            return Err(reject(Error::ZeroCount, start));
        }
        let first = start.pfn().0;
        if pages > PFN_LIMIT - first {
            return Err(reject(Error::Overflow, start));
        }
        let Some(index) = self.index_of(start) else {
            return Err(reject(Error::OutOfRange, start));
        };
        let room = self.entries.len() - index;
        match usize::try_from(pages) {
            Ok(count) if count <= room => Ok((index, count)),
            _ => Err(reject(Error::OutOfRange, self.addr_of(self.entries.len()))),
        }
    }

    /// Runs every precondition of `transition` over the range without
    /// changing anything, and returns the effect it would have.
    ///
    /// # Errors
    /// The first failed precondition and the page it failed on.
    pub fn check(
        &self,
        transition: Transition,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        let (first, count) = self.validate(start, pages)?;
        for (offset, entry) in self.entries[first..first + count].iter().enumerate() {
            let fail = |error| Rejection {
                error,
                addr: self.addr_of(first + offset),
            };
            let page = entry.decode().ok_or_else(|| fail(Error::Corrupt))?;
            transition.step(page).map_err(fail)?;
        }
        Ok(Effect {
            transition,
            start,
            pages,
            updates: transition.updates(),
        })
    }

    /// Checks `transition` over the whole range, then applies it to every
    /// page; all or nothing.
    ///
    /// # Errors
    /// The first failed precondition and the page it failed on; the table
    /// is unchanged.
    pub fn apply(
        &mut self,
        transition: Transition,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        let effect = self.check(transition, start, pages)?;
        // Commit: cannot fail. `check` proved every entry decodes and
        // steps, and `&mut self` means nothing changed since.
        let (first, count) = self.validate(start, pages)?;
        for entry in &mut self.entries[first..first + count] {
            if let Some(next) = entry.decode().and_then(|page| transition.step(page).ok()) {
                *entry = next.encode();
            }
        }
        Ok(effect)
    }

    /// See [`Transition::HostShareHyp`].
    ///
    /// # Errors
    /// `AlreadyShared` if a page is lent, `NotOwner` if the host does not
    /// own it, or a range error.
    pub fn host_share_hyp(&mut self, start: PhysAddr, pages: u64) -> Result<Effect, Rejection> {
        self.apply(Transition::HostShareHyp, start, pages)
    }

    /// See [`Transition::HostUnshareHyp`].
    ///
    /// # Errors
    /// `Busy` if a page is pinned, `NotShared` if it is not lent to the
    /// hypervisor, `NotOwner` if the host does not own it, or a range error.
    pub fn host_unshare_hyp(&mut self, start: PhysAddr, pages: u64) -> Result<Effect, Rejection> {
        self.apply(Transition::HostUnshareHyp, start, pages)
    }

    /// See [`Transition::HostDonateHyp`].
    ///
    /// # Errors
    /// `AlreadyShared`, `NotOwner`, or a range error.
    pub fn host_donate_hyp(&mut self, start: PhysAddr, pages: u64) -> Result<Effect, Rejection> {
        self.apply(Transition::HostDonateHyp, start, pages)
    }

    /// See [`Transition::HypDonateHost`]. The effect asks for zeroing.
    ///
    /// # Errors
    /// `NotOwner` if the hypervisor does not own a page, or a range error.
    pub fn hyp_donate_host(&mut self, start: PhysAddr, pages: u64) -> Result<Effect, Rejection> {
        self.apply(Transition::HypDonateHost, start, pages)
    }

    /// See [`Transition::HostDonateGuest`].
    ///
    /// # Errors
    /// `AlreadyShared`, `NotOwner`, or a range error.
    pub fn host_donate_guest(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::HostDonateGuest(vm), start, pages)
    }

    /// See [`Transition::GuestShareHost`].
    ///
    /// # Errors
    /// `AlreadyShared`, `WrongGuest` (another guest's page), `NotOwner`, or
    /// a range error.
    pub fn guest_share_host(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::GuestShareHost(vm), start, pages)
    }

    /// See [`Transition::GuestUnshareHost`].
    ///
    /// # Errors
    /// `NotShared`, `WrongGuest`, `NotOwner`, or a range error.
    pub fn guest_unshare_host(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::GuestUnshareHost(vm), start, pages)
    }

    /// See [`Transition::HostShareGuest`].
    ///
    /// # Errors
    /// `AlreadyShared`, `NotOwner`, or a range error.
    pub fn host_share_guest(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::HostShareGuest(vm), start, pages)
    }

    /// See [`Transition::HostUnshareGuest`].
    ///
    /// # Errors
    /// `WrongGuest` (lent to another guest), `NotShared`, `NotOwner`, or a
    /// range error.
    pub fn host_unshare_guest(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::HostUnshareGuest(vm), start, pages)
    }

    /// See [`Transition::GuestRelinquish`]. The effect asks for zeroing.
    ///
    /// # Errors
    /// `AlreadyShared` (unshare first), `WrongGuest`, `NotOwner`, or a range
    /// error.
    pub fn guest_relinquish(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::GuestRelinquish(vm), start, pages)
    }

    /// See [`Transition::HostReclaimGuest`]. The effect asks for zeroing.
    ///
    /// # Errors
    /// `WrongGuest`, `NotOwner`, or a range error.
    pub fn host_reclaim_guest(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::HostReclaimGuest(vm), start, pages)
    }

    /// See [`Transition::HostDonateVmMeta`].
    ///
    /// # Errors
    /// `AlreadyShared`, `NotOwner`, or a range error.
    pub fn host_donate_vm_meta(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::HostDonateVmMeta(vm), start, pages)
    }

    /// See [`Transition::HypReleaseVmMeta`]. The effect asks for zeroing.
    ///
    /// # Errors
    /// `WrongGuest` (held for another VM), `NotOwner`, or a range error.
    pub fn hyp_release_vm_meta(
        &mut self,
        vm: VmId,
        start: PhysAddr,
        pages: u64,
    ) -> Result<Effect, Rejection> {
        self.apply(Transition::HypReleaseVmMeta(vm), start, pages)
    }

    /// See [`Transition::HypPin`].
    ///
    /// # Errors
    /// `NotShared` if a page is not lent to the hypervisor, `PinLimit`, or a
    /// range error.
    pub fn hyp_pin(&mut self, start: PhysAddr, pages: u64) -> Result<Effect, Rejection> {
        self.apply(Transition::HypPin, start, pages)
    }

    /// See [`Transition::HypUnpin`].
    ///
    /// # Errors
    /// `NotPinned`, `NotShared`, or a range error.
    pub fn hyp_unpin(&mut self, start: PhysAddr, pages: u64) -> Result<Effect, Rejection> {
        self.apply(Transition::HypUnpin, start, pages)
    }

    /// The whole state of the page containing `addr` (which need not be
    /// aligned).
    ///
    /// # Errors
    /// `OutOfRange` if the table does not cover `addr`; `Corrupt` if its
    /// entry is invalid.
    pub fn page_state(&self, addr: PhysAddr) -> Result<PageState, Rejection> {
        let index = self.index_of(addr).ok_or(Rejection {
            error: Error::OutOfRange,
            addr,
        })?;
        self.entries[index].decode().ok_or(Rejection {
            error: Error::Corrupt,
            addr: self.addr_of(index),
        })
    }

    /// What `component` may do with the page containing `addr`.
    ///
    /// # Errors
    /// As [`Table::page_state`].
    pub fn state_of(&self, addr: PhysAddr, component: Component) -> Result<State, Rejection> {
        Ok(self.page_state(addr)?.view(component))
    }

    /// The maximal runs of equal `component` state over a range, in address
    /// order. Corrupt entries read as `Absent` (fail closed).
    ///
    /// # Errors
    /// A range error if the range is malformed or not inside the table.
    pub fn runs(
        &self,
        start: PhysAddr,
        pages: u64,
        component: Component,
    ) -> Result<Runs<'_>, Rejection> {
        let (first, count) = self.validate(start, pages)?;
        Ok(Runs {
            entries: self.entries,
            base: self.base,
            next: first,
            end: first + count,
            component,
        })
    }

    /// The state `component` has on every page of the range, or `None` if
    /// it is not the same everywhere (or an entry is corrupt).
    ///
    /// # Errors
    /// A range error if the range is malformed or not inside the table.
    pub fn uniform_state(
        &self,
        start: PhysAddr,
        pages: u64,
        component: Component,
    ) -> Result<Option<State>, Rejection> {
        let (first, count) = self.validate(start, pages)?;
        let mut states = self.entries[first..first + count]
            .iter()
            .map(|entry| entry.decode().map(|page| page.view(component)));
        let Some(Some(state)) = states.next() else {
            return Ok(None);
        };
        Ok(states.all(|other| other == Some(state)).then_some(state))
    }

    /// The largest naturally aligned block around `addr` over which
    /// `component` has one state, trying the block sizes (in pages, powers
    /// of two, largest first, e.g. `[262144, 512]` for 1 GiB and 2 MiB) in
    /// order, then falling back to the single page. This is how the
    /// hypervisor keeps block mappings when it maps on a fault.
    ///
    /// # Errors
    /// `OutOfRange` if the table does not cover `addr`; `Corrupt` if its
    /// entry is invalid.
    pub fn largest_uniform_block(
        &self,
        addr: PhysAddr,
        component: Component,
        block_pages: &[u64],
    ) -> Result<Run, Rejection> {
        let state = self.state_of(addr, component)?;
        let pfn = addr.pfn().0;
        for &size in block_pages {
            if !size.is_power_of_two() {
                continue;
            }
            let Some(block) = PhysAddr::from_pfn(Pfn(pfn & !(size - 1))) else {
                continue;
            };
            if let Ok(Some(uniform)) = self.uniform_state(block, size, component) {
                return Ok(Run {
                    start: block,
                    pages: size,
                    state: uniform,
                });
            }
        }
        Ok(Run {
            start: PhysAddr(pfn << PAGE_SHIFT),
            pages: 1,
            state,
        })
    }

    /// Checks invariants 1–4 and 6 on every page (invariant 5 is about
    /// history; see the crate docs). Cheap enough to run after every step in
    /// tests; the hypervisor may run it in debug builds.
    ///
    /// # Errors
    /// The first broken invariant found, in address order.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        for (index, entry) in self.entries.iter().enumerate() {
            let addr = self.addr_of(index);
            let broken = |invariant, what| InvariantViolation {
                invariant,
                addr,
                what,
            };
            let page = entry
                .decode()
                .ok_or(broken(1, "entry does not decode to one owner"))?;
            if page.encode() != *entry {
                return Err(broken(1, "entry is not in canonical form"));
            }
            // The components that can possibly see the page, plus one guest
            // that must not.
            let guest = match page {
                PageState::HostSharedWithGuest(vm)
                | PageState::GuestOwned(vm)
                | PageState::GuestSharedWithHost(vm)
                | PageState::HypOwnedForVm(vm) => vm,
                _ => VmId(0),
            };
            let stranger = VmId(guest.0.wrapping_add(1));
            let parties = [
                Component::Host,
                Component::Hyp,
                Component::Guest(guest),
                Component::Guest(stranger),
            ];
            let views = parties.map(|party| (party, page.view(party)));
            let owners = views.iter().filter(|(_, state)| state.is_owner()).count();
            if owners != 1 {
                return Err(broken(1, "page does not have exactly one owner"));
            }
            let borrowers = views
                .iter()
                .filter(|(_, state)| *state == State::SharedBorrowed)
                .count();
            let owner_state = page.view(page.owner());
            let expected_borrowers = usize::from(owner_state == State::SharedOwned);
            if borrowers != expected_borrowers {
                return Err(broken(3, "borrowers do not match the owner's record"));
            }
            for (party, state) in views {
                let allowed = party == page.owner() || Some(party) == page.borrower();
                if state.is_accessible() && !allowed {
                    return Err(broken(
                        2,
                        "a component reaches a page it neither owns nor borrows",
                    ));
                }
            }
            if views[3].1.is_accessible() {
                return Err(broken(2, "an uninvolved guest reaches the page"));
            }
            if let Component::Guest(_) = page.owner()
                && page
                    .borrower()
                    .is_some_and(|borrower| borrower != Component::Host)
            {
                return Err(broken(
                    4,
                    "a guest page is reachable by a non-host borrower",
                ));
            }
            if page.pins() > 0 && page.view(Component::Hyp) != State::SharedBorrowed {
                return Err(broken(6, "a pinned page is not lent to the hypervisor"));
            }
        }
        Ok(())
    }
}

/// Iterator over the runs of a range; see [`Table::runs`].
#[derive(Debug)]
pub struct Runs<'t> {
    entries: &'t [PageMeta],
    base: Pfn,
    next: usize,
    end: usize,
    component: Component,
}

impl Iterator for Runs<'_> {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        if self.next >= self.end {
            return None;
        }
        let view = |index: usize| {
            self.entries[index]
                .decode()
                .map_or(State::Absent, |page| page.view(self.component))
        };
        let first = self.next;
        let state = view(first);
        let mut index = first + 1;
        while index < self.end && view(index) == state {
            index += 1;
        }
        self.next = index;
        Some(Run {
            // The table checked that every page's address fits in 64 bits.
            start: PhysAddr((self.base.0 + first as u64) << PAGE_SHIFT),
            pages: (index - first) as u64,
            state,
        })
    }
}
