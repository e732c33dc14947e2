//! Host memory ownership: the per-page state table (`rampart-ownership`)
//! and the host stage 2 and EL2 stage 1 that always reflect it.
//!
//! Every change runs under one lock, in three steps: check every
//! precondition (the ownership table's side-effect-free `check`, plus the
//! page-table memory the change may need), commit the new states (cannot
//! fail), then rewrite the mappings the states imply. The host may touch a
//! page while its stage-2 entry is being rewritten; that fault lands in
//! [`handle_host_fault`], which waits for the lock and maps the page again if
//! the host still may reach it.

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_paging::descriptor::{El23Attributes, PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, El2, MemoryRegion, Stage2};
use rampart_abi::Error as AbiError;
use rampart_abi::host::{HostRequest, PageRange};
use rampart_ownership::{self as own, Component, Effect, PhysAddr, State, Transition, Update};
use rampart_platform::{BLOCK_2M, MemRange, PAGE_SIZE, tables};
use spin::mutex::SpinMutex;

use crate::arch;
use crate::mm::{self, Shared, host_s2};

/// Everything the lock protects.
pub struct HostMemory {
    /// Who owns each page of RAM.
    pub table: own::Table<'static>,
    /// The host's stage 2 (VMID 0).
    pub stage2: Shared<Stage2>,
    /// The hypervisor's own stage 1.
    pub el2: Shared<El2>,
    /// RAM banks (page-aligned).
    pub ram: alloc::vec::Vec<MemRange>,
    /// The hypervisor's carve-out, never given to the host: its fixed part
    /// and its boot-sized part (`layout::place_boot_sized`).
    pub carveout: [MemRange; 2],
}

static HOST_MEMORY: SpinMutex<Option<HostMemory>> = SpinMutex::new(None);

/// Root level of the EL2 stage 1 (39-bit VA, `mm::new_el2_table`).
const EL2_ROOT_LEVEL: usize = 1;

/// The fixmap: the top 2 MiB of the EL2 VA space, where pages the
/// hypervisor does not own are mapped for a moment (to zero, measure or
/// write a report into them). Its tables are built at boot and never
/// freed, so using it allocates nothing. Identity mappings never reach it:
/// [`install`] refuses RAM or a carve-out that overlaps it.
const FIXMAP_BASE: u64 = (1 << 39) - BLOCK_2M;
/// Pages mapped in the fixmap at once: fewer than 512, so an unmap never
/// covers the whole level-3 table (aarch64-paging frees a table whose
/// whole range is unmapped).
const FIXMAP_PAGES: u64 = 256;

/// Host stage-2 table pages held back for each VM (index: VMID) for
/// handing its pages back at `VM_DESTROY` (see
/// [`HostMemory::check_for_guest`]). Changed only under the host memory
/// lock.
static GUEST_HOLDS: [AtomicU64; crate::vm::MAX_VMS + 1] = [const { AtomicU64::new(0) }; crate::vm::MAX_VMS + 1];

/// The host stage 2's root level (0 with more than 39 IPA bits); level 0,
/// the larger estimate, until boot has said.
fn stage2_level() -> usize {
    crate::BOOT.get().map_or(0, |b| b.stage2_level)
}

/// Host stage-2 tables that handing `range` back to the host may cost:
/// [`tables::tables_to_remap`], plus one boundary chain for the point a
/// teardown (which returns pages in ascending order) has reached.
fn return_cost(range: MemRange) -> u64 {
    let level = stage2_level();
    tables::tables_to_remap(range.start(), range.end(), level)
        + tables::tables_per_boundary(level)
        + smmu_mirror_return_cost(range)
}

/// Pool pages only giving pages back to the host may use: the most one
/// such change of a range can need from the host stage 2.
fn return_reserve() -> u64 {
    let level = stage2_level();
    2 * tables::tables_per_boundary(level) + 2 + smmu_mirror_return_reserve()
}

/// The SMMU mirror's share of [`return_cost`] (0 without an SMMU).
fn smmu_mirror_return_cost(range: MemRange) -> u64 {
    if crate::smmu::active() { tables::mirror_return_cost(range.start(), range.end()) } else { 0 }
}

/// The SMMU mirror's share of [`return_reserve`] (0 without an SMMU).
fn smmu_mirror_return_reserve() -> u64 {
    if crate::smmu::active() { tables::mirror_return_reserve() } else { 0 }
}

/// Puts the boot-time state in place and builds the fixmap's tables.
/// Runs at boot only: a fixmap that cannot be built stops the machine
/// before the host runs.
pub fn install(mut memory: HostMemory) {
    let window = MemRange::from_base_size(FIXMAP_BASE, BLOCK_2M);
    let clash = window.is_none_or(|w| memory.carveout.iter().any(|c| c.overlaps(&w)) || memory.ram.iter().any(|r| r.overlaps(&w)));
    if clash {
        crate::println!("RAM reaches the EL2 fixmap window at {FIXMAP_BASE:#x}; stopping");
        crate::power_off();
    }
    // A page mapped through level 3 and unmapped again creates the
    // fixmap's level-2 and level-3 tables, which later maps only fill in
    // (an invalid entry alone creates none: aarch64-paging leaves an
    // invalid level-1 entry as it is). The page is the carve-out's first,
    // the hypervisor's own, never accessed through the window.
    let first = MemoryRegion::new(FIXMAP_BASE as usize, (FIXMAP_BASE + PAGE_SIZE) as usize);
    let own = memory.carveout[0].start();
    if let Err(e) = memory
        .el2
        .0
        .map_range(&first, PhysicalAddress(own as usize), mm::el2::DATA, Constraints::NO_BLOCK_MAPPINGS)
        .and_then(|()| {
            memory.el2.0.map_range(&first, PhysicalAddress(0), El23Attributes::empty(), Constraints::NO_BLOCK_MAPPINGS)
        })
    {
        crate::println!("cannot build the EL2 fixmap: {e}; stopping");
        crate::power_off();
    }
    arch::dsb_ishst();
    arch::tlbi_el2_va(FIXMAP_BASE);
    *HOST_MEMORY.lock() = Some(memory);
}

/// Runs a host memory call.
pub fn host_call(request: HostRequest) -> Result<(), AbiError> {
    let (transition, range) = match request {
        HostRequest::ShareHyp(r) => (Transition::HostShareHyp, r),
        HostRequest::UnshareHyp(r) => (Transition::HostUnshareHyp, r),
        HostRequest::DonateHyp(r) => (Transition::HostDonateHyp, r),
        HostRequest::ReclaimHyp(r) => (Transition::HypDonateHost, r),
        _ => return Err(AbiError::NotSupported),
    };
    run_transition(transition, range)
}

/// A host memory call (`SHARE_HYP`, `UNSHARE_HYP`, `DONATE_HYP`,
/// `RECLAIM_HYP`) decoded straight from its registers, or `None` for any
/// other function ID. The same decoding as `HostRequest::decode` (the
/// function ID is `w0`; `x1`, `x2` go through `PageRange::new`), without
/// building and copying the 112-byte request on the host's hottest path.
#[inline]
pub fn host_call_from_regs(function: u32, x1: u64, x2: u64) -> Option<Result<(), AbiError>> {
    use rampart_abi::host::HostCall;
    let transition = match function {
        f if f == HostCall::ShareHyp as u32 => Transition::HostShareHyp,
        f if f == HostCall::UnshareHyp as u32 => Transition::HostUnshareHyp,
        f if f == HostCall::DonateHyp as u32 => Transition::HostDonateHyp,
        f if f == HostCall::ReclaimHyp as u32 => Transition::HypDonateHost,
        _ => return None,
    };
    Some(PageRange::new(x1, x2).and_then(|range| run_transition(transition, range)))
}

fn run_transition(transition: Transition, range: PageRange) -> Result<(), AbiError> {
    let mut guard = HOST_MEMORY.lock();
    let memory = guard.as_mut().ok_or(AbiError::NotSupported)?;
    #[cfg(feature = "mutants")]
    let transition = mutant_reclaim_vm_meta(memory, transition, range);
    memory.transition(transition, range)
}

/// Planted bug (test only, `crate::mutant`, `rampart.mutant=reclaim-vm-meta`):
/// `RECLAIM_HYP` takes pages held for a live VM back, as before issue 9's
/// fix.
#[cfg(feature = "mutants")]
fn mutant_reclaim_vm_meta(memory: &HostMemory, transition: Transition, range: PageRange) -> Transition {
    if !crate::mutant::active(crate::mutant::Mutant::ReclaimVmMeta) {
        return transition;
    }
    match (transition, memory.table.page_state(PhysAddr(range.start()))) {
        (Transition::HypDonateHost, Ok(own::PageState::HypOwnedForVm(vm))) => Transition::HypReleaseVmMeta(vm),
        _ => transition,
    }
}

/// Maps the ownership crate's refusal onto the ABI's error codes.
fn abi_error(error: own::Error) -> AbiError {
    match error {
        own::Error::Unaligned | own::Error::ZeroCount | own::Error::Overflow => AbiError::InvalidParameter,
        own::Error::OutOfRange => AbiError::Range,
        own::Error::Busy | own::Error::PinLimit => AbiError::Busy,
        own::Error::NotOwner
        | own::Error::AlreadyShared
        | own::Error::NotShared
        | own::Error::WrongGuest
        | own::Error::NotPinned => AbiError::Denied,
        own::Error::Corrupt => {
            crate::println!("ownership table corrupt; stopping");
            crate::power_off()
        }
    }
}

/// Runs `f` with the host memory state locked.
pub fn with<R>(f: impl FnOnce(&mut HostMemory) -> Result<R, AbiError>) -> Result<R, AbiError> {
    let mut guard = HOST_MEMORY.lock();
    let memory = guard.as_mut().ok_or(AbiError::NotSupported)?;
    f(memory)
}

/// A transition that passed every check and may be committed.
pub struct Checked {
    transition: Transition,
    range: MemRange,
    effect: Effect,
    /// Pool pages to hold back for a VM's teardown when the change commits.
    hold: Option<(own::VmId, u64)>,
    /// The worst-case table pages the change needs (for the self-check).
    need: u64,
}

/// Where the table pages of a change come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// The pool's available pages, less [`return_reserve`]: refused with
    /// `NO_MEMORY` if too few.
    Pool,
    /// The pool's available pages, [`return_reserve`] included: the host
    /// giving pages back (`UNSHARE_HYP`, `RECLAIM_HYP`) may use pages no
    /// new change may take, so a host that drained the pool can always
    /// give back a whole range it took (which frees tables).
    Return,
    /// Pages held back for this VM's teardown.
    Teardown,
}

impl HostMemory {
    fn transition(&mut self, transition: Transition, request: PageRange) -> Result<(), AbiError> {
        let checked = self.check(transition, request)?;
        // By reference: moving the checked change into `commit` cost a
        // 55-instruction `memcpy` per host memory call.
        self.commit_ref(&checked);
        Ok(())
    }

    /// Every precondition of `transition` over `request`, without changing
    /// anything: the range is RAM, the carve-out is never handed out, the
    /// ownership table agrees, and the pool has the worst-case table pages
    /// the change needs. Nothing else allocates from the pool while the
    /// lock is held, so this reserves them for [`HostMemory::commit`].
    ///
    /// # Errors
    ///
    /// `RANGE`, `DENIED`, `BUSY` or `NO_MEMORY` as `docs/abi.md` lists.
    pub fn check(&self, transition: Transition, request: PageRange) -> Result<Checked, AbiError> {
        self.check_budget(transition, request, Budget::Pool, None)
    }

    /// [`HostMemory::check`] for pages given to VM `vm` (its RAM or its
    /// metadata): the commit also holds back what handing them back to the
    /// host at `VM_DESTROY` may cost, so teardown never needs memory it
    /// might not get.
    ///
    /// # Errors
    ///
    /// As [`HostMemory::check`]; `NO_MEMORY` also if the pool cannot hold
    /// back the return's cost.
    pub fn check_for_guest(&self, transition: Transition, request: PageRange, vm: own::VmId) -> Result<Checked, AbiError> {
        let range = MemRange::new(request.start(), request.end()).ok_or(AbiError::InvalidParameter)?;
        self.check_budget(transition, request, Budget::Pool, Some((vm, return_cost(range))))
    }

    /// [`HostMemory::check`] for `VM_DESTROY`: the tables come from the
    /// pages held back for the VM, so this never refuses for memory.
    ///
    /// # Errors
    ///
    /// As [`HostMemory::check`], except `NO_MEMORY`.
    pub fn check_teardown(&self, transition: Transition, request: PageRange) -> Result<Checked, AbiError> {
        self.check_budget(transition, request, Budget::Teardown, None)
    }

    fn check_budget(
        &self,
        transition: Transition,
        request: PageRange,
        budget: Budget,
        hold: Option<(own::VmId, u64)>,
    ) -> Result<Checked, AbiError> {
        // Decoding checked alignment, count and wrap-around; next, is it RAM.
        let (start, pages) = (PhysAddr(request.start()), request.pages());
        let range = MemRange::new(request.start(), request.end()).ok_or(AbiError::InvalidParameter)?;
        if !self.ram.iter().any(|bank| bank.contains_range(&range)) {
            return Err(AbiError::Range);
        }
        if transition.returns_hyp_pages() && self.carveout.iter().any(|c| range.overlaps(c)) {
            return Err(AbiError::Denied);
        }
        if let Some((vm, _)) = hold
            && GUEST_HOLDS.get(usize::from(vm.0)).is_none()
        {
            return Err(AbiError::InvalidParameter);
        }
        let effect = self.table.check(transition, start, pages).map_err(|r| abi_error(r.error))?;
        let tables = tables_needed(&effect, range);
        let need = tables.saturating_add(hold.map_or(0, |(_, pages)| pages));
        let budget = match budget {
            Budget::Pool if matches!(transition, Transition::HostUnshareHyp | Transition::HypDonateHost) => Budget::Return,
            other => other,
        };
        let available = match budget {
            Budget::Pool => mm::pool_available().saturating_sub(return_reserve()),
            Budget::Return => mm::pool_available(),
            Budget::Teardown => u64::MAX,
        };
        if need > available {
            return Err(AbiError::NoMemory);
        }
        Ok(Checked { transition, range, effect, hold, need: tables })
    }

    /// Applies a checked transition: the states, then the mappings. Cannot
    /// fail (a failure here is a broken invariant and stops the machine).
    pub fn commit(&mut self, checked: Checked) {
        self.commit_ref(&checked);
    }

    /// [`HostMemory::commit`] of a change the caller keeps.
    fn commit_ref(&mut self, checked: &Checked) {
        let &Checked { transition, range, effect, hold, need } = checked;
        // Planted bug (test only, `crate::mutant`): a VM's pages go back
        // unzeroed.
        #[cfg(feature = "mutants")]
        let effect = Effect {
            updates: own::Updates {
                zero: effect.updates.zero
                    && !(crate::mutant::active(crate::mutant::Mutant::TeardownNoZero)
                        && matches!(transition, Transition::HostReclaimGuest(_) | Transition::HypReleaseVmMeta(_))),
                ..effect.updates
            },
            ..effect
        };
        let (free_before, _) = mm::pool_free_held();
        if let Err(r) = self.table.apply(transition, PhysAddr(range.start()), range.size() / PAGE_SIZE) {
            // The check ran under the same lock: only a broken invariant
            // gets here, with the states unknown; stop.
            crate::println!("ownership commit failed after its check: {r}; stopping");
            crate::power_off();
        }
        // The check counted the hold with the tables, so it fits.
        if let Some((vm, pages)) = hold
            && let Some(slot) = GUEST_HOLDS.get(usize::from(vm.0))
            && mm::pool_hold(pages)
        {
            slot.fetch_add(pages, Ordering::Relaxed);
        }
        self.reflect(&effect, range);
        self.after_commit_smmu();
        let (free_after, held) = mm::pool_free_held();
        let used = free_before.saturating_sub(free_after);
        if used > need || free_after < held {
            // A worst-case estimate was wrong: a later change or teardown
            // might find the pool empty. Say so (the test suite fails on it).
            crate::println!("rampart: table estimate exceeded: {transition:?} on {range} used {used} pages, estimated {need}");
        }
    }

    /// Gives back the pool pages held for `vm`'s teardown (the end of
    /// `VM_DESTROY`).
    pub fn release_guest_hold(&mut self, vm: own::VmId) {
        if let Some(slot) = GUEST_HOLDS.get(usize::from(vm.0)) {
            mm::pool_release(slot.swap(0, Ordering::Relaxed));
        }
    }

    /// Returns the pages of `[start, start + pages)` that a dead guest
    /// owned or borrowed to the host: owned pages zeroed, lent pages given
    /// back. The guest must not be able to run any more.
    pub fn reclaim_guest_range(&mut self, vm: own::VmId, start: u64, pages: u64) {
        let mut cursor = start;
        let end = start + pages * PAGE_SIZE;
        while cursor < end {
            let left = (end - cursor) / PAGE_SIZE;
            let Some(run) = self.table.runs(PhysAddr(cursor), left, Component::Guest(vm)).ok().and_then(|mut r| r.next())
            else {
                return;
            };
            cursor = run.start.0 + run.pages * PAGE_SIZE;
            let transition = match run.state {
                State::Absent => continue,
                State::SharedBorrowed => Transition::HostUnshareGuest(vm),
                _ => Transition::HostReclaimGuest(vm),
            };
            match PageRange::new(run.start.0, run.pages).and_then(|r| self.check_teardown(transition, r)) {
                Ok(checked) => self.commit(checked),
                // The VM's stage 2 and the ownership table disagree (a bug).
                // The pages stay the dead VM's: the host cannot reach them
                // and no stage 2 maps them, so leaving them is safe.
                Err(e) => {
                    crate::println!("cannot reclaim {} pages of VM {} at {}: {e:?}; leaving them", run.pages, vm.0, run.start);
                }
            }
        }
    }

    /// Zeroes pages the hypervisor does not map (a guest's, before it can
    /// see them) through the fixmap. Allocates nothing.
    pub fn zero_unowned(&mut self, range: MemRange) {
        let mut start = range.start();
        while start < range.end() {
            let pages = ((range.end() - start) / PAGE_SIZE).min(FIXMAP_PAGES);
            self.fixmap(start, pages);
            if let Some(window) = MemRange::from_base_size(FIXMAP_BASE, pages * PAGE_SIZE) {
                // SAFETY: the fixmap maps `pages` pages writable at
                // FIXMAP_BASE just above; they belong to a guest that cannot
                // reach them yet or to nobody, and nothing in Rust refers to
                // them.
                unsafe { mm::zero(window) };
            }
            self.fixunmap(pages);
            start += pages * PAGE_SIZE;
        }
    }

    /// Maps pages the hypervisor does not own in the fixmap, a batch at a
    /// time, and calls `f` with each page's physical address and bytes in
    /// ascending order. Allocates nothing. The caller must make sure no
    /// guest vCPU or host CPU can write the pages meanwhile (a guest that
    /// has not run yet, or pages the host has just given up).
    ///
    /// # Errors
    ///
    /// None today: the fixmap needs no memory.
    pub fn with_pages(&mut self, range: MemRange, f: &mut dyn FnMut(u64, &mut [u8; 4096])) -> Result<(), AbiError> {
        let mut start = range.start();
        while start < range.end() {
            let pages = ((range.end() - start) / PAGE_SIZE).min(FIXMAP_PAGES);
            self.fixmap(start, pages);
            for i in 0..pages {
                // SAFETY: mapped in the fixmap just above; the caller
                // guarantees nobody else writes the page while `f` runs, and
                // the reference dies before the page is unmapped.
                f(start + i * PAGE_SIZE, unsafe { mm::page_bytes(FIXMAP_BASE + i * PAGE_SIZE) });
            }
            self.fixunmap(pages);
            start += pages * PAGE_SIZE;
        }
        Ok(())
    }

    /// Writes `bytes` at the start of `page`, a page the hypervisor does not
    /// map (a guest's), through the fixmap and volatile stores: the guest's
    /// other vCPUs may write the page meanwhile, so no Rust reference to it
    /// is ever formed. Allocates nothing.
    ///
    /// # Errors
    ///
    /// `INVALID_PARAMETER` for an unaligned page or more than a page of
    /// bytes.
    pub fn write_unowned_page(&mut self, page: u64, bytes: &[u8]) -> Result<(), AbiError> {
        if !page.is_multiple_of(PAGE_SIZE) || bytes.len() as u64 > PAGE_SIZE {
            return Err(AbiError::InvalidParameter);
        }
        self.fixmap(page, 1);
        // SAFETY: the fixmap's first page now maps `page` writable at EL2;
        // it is a guest's own page, whose concurrent writers can only spoil
        // what the guest reads back, and no Rust reference to it exists.
        unsafe { mm::write_volatile_bytes(FIXMAP_BASE, bytes) };
        self.fixunmap(1);
        Ok(())
    }

    /// Migration: checks that every page of `address..address + len` is
    /// RAM outside the carve-out that the host owns exclusively; returns
    /// the end address.
    ///
    /// # Errors
    ///
    /// As [`HostMemory::copy_host`].
    pub fn check_host_exclusive(&self, address: u64, len: u64) -> Result<u64, AbiError> {
        let end = address.checked_add(len).ok_or(AbiError::InvalidParameter)?;
        let mut page = address & !(PAGE_SIZE - 1);
        while page < end {
            let range = MemRange::from_base_size(page, PAGE_SIZE).ok_or(AbiError::InvalidParameter)?;
            if !self.ram.iter().any(|bank| bank.contains_range(&range)) {
                return Err(AbiError::Range);
            }
            if self.carveout.iter().any(|c| range.overlaps(c))
                || !matches!(self.table.page_state(PhysAddr(page)), Ok(own::PageState::HostOwned))
            {
                return Err(AbiError::Denied);
            }
            page += PAGE_SIZE;
        }
        Ok(end)
    }

    /// Migration (`hyp/src/migrate.rs`): copies between an EL2 buffer and
    /// host memory at `address`, page by page through the fixmap with
    /// volatile accesses (the host's other CPUs may touch the pages
    /// meanwhile; only the copy is used). Every page touched must be RAM
    /// outside the carve-out that the host owns exclusively (not shared,
    /// lent, donated or pinned); nothing is copied otherwise.
    ///
    /// # Errors
    ///
    /// `RANGE` for memory that is not RAM, `DENIED` for a page the host
    /// does not own exclusively, `INVALID_PARAMETER` for a wrapping range.
    pub fn copy_host(&mut self, address: u64, read: Option<&mut [u8]>, write: Option<&[u8]>) -> Result<(), AbiError> {
        let len = read.as_ref().map_or(0, |b| b.len()) + write.map_or(0, <[u8]>::len);
        let end = self.check_host_exclusive(address, len as u64)?;
        let (mut read, mut done) = (read, 0usize);
        let mut at = address;
        while at < end {
            let page = at & !(PAGE_SIZE - 1);
            let offset = at - page;
            let n = ((PAGE_SIZE - offset).min(end - at)) as usize;
            self.fixmap(page, 1);
            if let Some(out) = read.as_deref_mut() {
                // SAFETY: the fixmap's first page maps `page`, a host page,
                // at FIXMAP_BASE; `offset + n` is within it; only the copy
                // is used afterwards.
                unsafe { mm::read_volatile_bytes(FIXMAP_BASE + offset, &mut out[done..done + n]) };
            }
            if let Some(bytes) = write {
                // SAFETY: as above, writable; the host's concurrent writers
                // only spoil what the host itself reads back.
                unsafe { mm::write_volatile_words_or_bytes(FIXMAP_BASE + offset, &bytes[done..done + n]) };
            }
            self.fixunmap(1);
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    /// [`HostMemory::write_unowned_page`] at byte `offset` of the page (a
    /// realm's attestation token granule, `crate::rsi`).
    ///
    /// # Errors
    ///
    /// `INVALID_PARAMETER` for an unaligned page or bytes past its end.
    pub fn write_unowned_bytes(&mut self, page: u64, offset: u64, bytes: &[u8]) -> Result<(), AbiError> {
        let end = offset.checked_add(bytes.len() as u64).ok_or(AbiError::InvalidParameter)?;
        if !page.is_multiple_of(PAGE_SIZE) || end > PAGE_SIZE {
            return Err(AbiError::InvalidParameter);
        }
        self.fixmap(page, 1);
        // SAFETY: the fixmap's first page now maps `page` writable at EL2 and
        // `offset + len` lies inside it; it is a guest's own page, whose
        // concurrent writers can only spoil what the guest reads back, and
        // no Rust reference to it exists.
        unsafe { mm::write_volatile_bytes(FIXMAP_BASE + offset, bytes) };
        self.fixunmap(1);
        Ok(())
    }

    /// Reads `N` words at byte `offset` (8-byte aligned) of page `page`, a
    /// realm's own page (its `RsiHostCall` structure, `crate::rsi`), with
    /// volatile loads: the guest's other vCPUs may write it meanwhile, and
    /// only the copy is used.
    ///
    /// # Errors
    ///
    /// `INVALID_PARAMETER` for an unaligned page or offset, or words past
    /// the page's end.
    pub fn read_unowned_words<const N: usize>(&mut self, page: u64, offset: u64) -> Result<[u64; N], AbiError> {
        let end = offset.checked_add(8 * N as u64).ok_or(AbiError::InvalidParameter)?;
        if !page.is_multiple_of(PAGE_SIZE) || !offset.is_multiple_of(8) || end > PAGE_SIZE {
            return Err(AbiError::InvalidParameter);
        }
        self.fixmap(page, 1);
        // SAFETY: the fixmap's first page now maps `page` at EL2 and
        // `offset..end` lies inside it, 8-byte aligned; volatile loads, no
        // Rust reference to the guest's page.
        let words = unsafe { mm::read_volatile_words::<N>(FIXMAP_BASE + offset) };
        self.fixunmap(1);
        Ok(words)
    }

    /// Maps `pages` pages (at most [`FIXMAP_PAGES`]) from `pa` at
    /// [`FIXMAP_BASE`] (see [`fixmap_in`]).
    fn fixmap(&mut self, pa: u64, pages: u64) {
        fixmap_in(&mut self.el2, self.carveout[0], pa, pages);
    }

    /// Unmaps the first `pages` fixmap pages and invalidates them.
    fn fixunmap(&mut self, pages: u64) {
        fixunmap_in(&mut self.el2, self.carveout[0], pages);
    }

    /// Rewrites the mappings for `range` after the states changed:
    /// unmap, zero, then map (the order `Effect` documents).
    fn reflect(&mut self, effect: &Effect, range: MemRange) {
        // Planted bug (test only, `crate::mutant`): DONATE_HYP leaves the
        // host's mapping.
        let keep = crate::mutant::active(crate::mutant::Mutant::DonateKeepsHostMapping)
            && effect.transition == Transition::HostDonateHyp;
        if effect.updates.host == Update::Set(State::Absent) && !keep {
            self.rewrite_host_stage2_as(range, Some(State::Absent));
            // The SMMU's TLBs are invalidated here, before the zeroing
            // below and before any new owner can reach the pages.
            if crate::smmu::active() {
                crate::smmu::mirror_rewrite(range, &self.table);
            }
            self.coalesce_host_ends(range);
        }
        if effect.updates.zero {
            // Pages the hypervisor owned are mapped at EL2 already; a guest's
            // are cleared through the fixmap.
            if effect.transition.returns_hyp_pages() {
                // SAFETY: the hypervisor owned the pages, so they are mapped
                // at EL2; no guest runs on them and the host cannot reach
                // them until the host stage 2 below gives them back; nothing
                // in Rust refers to them.
                unsafe { mm::zero(range) };
            } else {
                self.zero_unowned(range);
            }
        }
        match effect.updates.hyp {
            Update::Set(State::Absent) => self.unmap_el2(range),
            Update::Set(_) => self.map_el2(range),
            Update::Keep => {}
        }
        #[cfg(feature = "oracle")]
        crate::oracle::returning(self, effect.transition, range);
        if let Update::Set(state) = effect.updates.host
            && state != State::Absent
        {
            self.rewrite_host_stage2_as(range, Some(state));
            if crate::smmu::active() {
                crate::smmu::mirror_rewrite(range, &self.table);
            }
            self.coalesce_host_ends(range);
        }
    }

    /// After a rewrite of `range`, maps the 2 MiB block at each of its ends
    /// as one block again if the host's state is now the same all over it,
    /// which frees the block's level-3 table: pages given back return their
    /// table pages to the pool. (The rewrite remapped whole blocks inside
    /// the range already.) Allocates nothing: the break covers the whole
    /// block, freeing its table, and the make writes one entry.
    ///
    /// Only when the pool runs low ([`mm::pool_low`]): merging costs a
    /// VMID-wide TLB invalidation and the next split rebuilds the table,
    /// which a host sharing and unsharing one page would pay every time.
    fn coalesce_host_ends(&mut self, range: MemRange) {
        if !mm::pool_low() {
            return;
        }
        let first = range.start() & !(BLOCK_2M - 1);
        let last = (range.end() - 1) & !(BLOCK_2M - 1);
        let ends = [Some(first), (last != first).then_some(last)];
        for block in ends.into_iter().flatten() {
            let Some(block_range) = MemRange::from_base_size(block, BLOCK_2M) else { continue };
            if !self.ram.iter().any(|bank| bank.contains_range(&block_range)) {
                continue;
            }
            // Is the block translated through a level-3 table? (Stop at the
            // first entry: a table's entries are all level 3.)
            let mut has_table = false;
            let region = MemoryRegion::new(block as usize, (block + BLOCK_2M) as usize);
            let _ = self.stage2.0.walk_range(&region, &mut |_, _, level| {
                has_table = level == 3;
                Err(())
            });
            if !has_table {
                continue;
            }
            let Ok(Some(state)) = self.table.uniform_state(PhysAddr(block), BLOCK_2M / PAGE_SIZE, Component::Host)
            else {
                continue;
            };
            // Break: one invalid level-2 entry, which frees the table; the
            // whole VMID is invalidated (walk caches may point at the table
            // from anywhere in the block) before the pool can reuse it.
            if let Err(e) = mm::identity_map(&mut self.stage2.0, block_range, Stage2Attributes::empty()) {
                fail_closed("stage-2 coalesce", block_range, e);
            }
            arch::dsb_ishst();
            let host_vttbr = crate::BOOT.get().map_or(0, |b| b.config.vttbr);
            arch::with_vttbr(host_vttbr, arch::tlbi_vmid);
            // Make: one block (nothing, if the host may not reach it).
            if let Some(attributes) = host_attributes(state)
                && let Err(e) = mm::identity_map(&mut self.stage2.0, block_range, attributes)
            {
                fail_closed("stage-2 coalesce", block_range, e);
            }
            arch::dsb_ishst();
            crate::smmu::mirror_coalesce(block_range, host_attributes(state).is_some());
        }
    }

    fn map_el2(&mut self, range: MemRange) {
        // One page whose level-3 table exists (every page after the first
        // of its 2 MiB block): write the entry directly. It was invalid, so
        // no TLB holds it: the DSB below is all the architecture asks
        // before a walk may use it, as on the general path.
        if range.size() == PAGE_SIZE
            && let Some(entry) = mm::level3_entry(&mut self.el2.0, EL2_ROOT_LEVEL, range.start())
            && !entry.is_valid()
        {
            entry.set_page(range.start(), mm::el2::DATA);
            arch::dsb_ishst();
            return;
        }
        if let Err(e) = mm::identity_map_pages(&mut self.el2.0, range, mm::el2::DATA) {
            fail_closed("EL2 map", range, e);
        }
        arch::dsb_ishst();
    }

    fn unmap_el2(&mut self, range: MemRange) {
        // One page mapped through a level-3 table: clear its entry directly
        // (what aarch64-paging writes, a zero); the TLB invalidation below
        // follows as on the general path.
        let direct = range.size() == PAGE_SIZE
            && mm::level3_entry(&mut self.el2.0, EL2_ROOT_LEVEL, range.start()).map(|entry| entry.clear()).is_some();
        if !direct && let Err(e) = mm::identity_map_pages(&mut self.el2.0, range, El23Attributes::empty()) {
            fail_closed("EL2 unmap", range, e);
        }
        // Unmapping a whole 2 MiB block frees its level-3 table; when the
        // pool runs low, at the two ends of the range, free it too if
        // nothing in the block is mapped any more, so pages given back
        // return their table pages to the pool. The invalidation below, by
        // VA inside each such block, also drops walk-cache entries that
        // point at a freed table before the pool can hand it out again
        // (zeroed).
        let first = range.start() & !(BLOCK_2M - 1);
        let last = (range.end() - 1) & !(BLOCK_2M - 1);
        let ends = if mm::pool_low() { [Some(first), (last != first).then_some(last)] } else { [None, None] };
        for block in ends.into_iter().flatten() {
            let Some(block_range) = MemRange::from_base_size(block, BLOCK_2M) else { continue };
            if self.carveout.iter().any(|c| block_range.overlaps(c)) || block == FIXMAP_BASE {
                continue;
            }
            let mut has_table = false;
            let region = MemoryRegion::new(block as usize, (block + BLOCK_2M) as usize);
            let _ = self.el2.0.walk_range(&region, &mut |_, _, level| {
                has_table = level == 3;
                Err(())
            });
            // Outside the carve-out, EL2 maps exactly the pages the
            // hypervisor owns or borrows: none in the block, per the table
            // (cheaper than walking 512 entries).
            if has_table
                && matches!(
                    self.table.uniform_state(PhysAddr(block), BLOCK_2M / PAGE_SIZE, Component::Hyp),
                    Ok(Some(State::Absent))
                )
                && let Err(e) = mm::identity_map_pages(&mut self.el2.0, block_range, El23Attributes::empty())
            {
                fail_closed("EL2 unmap", block_range, e);
            }
        }
        let mut page = range.start();
        while page < range.end() {
            arch::tlbi_el2_va(page);
            page += PAGE_SIZE;
        }
    }

    /// Break-before-make over every stage-2 leaf that overlaps `range`,
    /// then maps back whatever the table says the host may reach, with the
    /// largest blocks that fit. Blocks outside the range's leaves are
    /// untouched, so a block is split only where a state boundary now
    /// falls inside it.
    fn rewrite_host_stage2(&mut self, range: MemRange) {
        self.rewrite_host_stage2_as(range, None);
    }

    /// [`HostMemory::rewrite_host_stage2`], told the host's state on every
    /// page of `range` when the caller knows it (`uniform`: a committed
    /// transition's `Update::Set`, which the ownership table applies
    /// uniformly over its range): then the make reads the table only for
    /// the parts of the envelope outside `range`, not page by page inside
    /// it (~50 instructions a page). The mappings written are the same:
    /// adjacent runs of one state are merged across the seams, so the
    /// largest blocks that fit are chosen as over the whole envelope.
    fn rewrite_host_stage2_as(&mut self, range: MemRange, uniform: Option<State>) {
        const MAX_TARGETED: usize = 16;
        if range.size() == 0 || (range.size() == PAGE_SIZE && self.rewrite_host_page(range.start())) {
            return;
        }
        // The oracle build checks the caller's claim against the table.
        #[cfg(feature = "oracle")]
        if let Some(state) = uniform
            && !matches!(self.table.uniform_state(PhysAddr(range.start()), range.size() / PAGE_SIZE, Component::Host), Ok(Some(s)) if s == state)
        {
            fail_closed_msg("host stage-2 rewrite told a state the table does not hold on", range);
        }
        let envelope = self.leaf_envelope(range);
        let mut leaves = [0u64; MAX_TARGETED];
        let leaf_count = self.leaves(range, &mut leaves);

        // Break. Unmapping a whole block whose entry points at a table frees
        // that table (aarch64-paging): then walk caches may still point at
        // it anywhere in its span, not only at the leaves seen above, so
        // invalidate the whole VMID before the pool can hand it out again.
        let freed_tables = self.break_host(envelope);
        arch::dsb_ishst();
        let host_vttbr = crate::BOOT.get().map_or(0, |b| b.config.vttbr);
        arch::with_vttbr(host_vttbr, || {
            if leaf_count <= MAX_TARGETED && !freed_tables {
                for &ipa in leaves.get(..leaf_count).unwrap_or(&[]) {
                    arch::tlbi_ipa(ipa);
                }
                arch::tlbi_stage1_of_vmid();
            } else {
                arch::tlbi_vmid();
            }
        });

        // Make.
        let mut make = HostMake { stage2: &mut self.stage2.0, level: stage2_level(), pending: None };
        match uniform {
            None => make.runs(&self.table, envelope),
            Some(state) => {
                make.runs(&self.table, MemRange::new(envelope.start(), range.start()).unwrap_or(range));
                make.push(range.start(), range.size() / PAGE_SIZE, state);
                make.runs(&self.table, MemRange::new(range.end(), envelope.end()).unwrap_or(range));
            }
        }
        make.finish();
        arch::dsb_ishst();
    }

    /// The break of [`HostMemory::rewrite_host_stage2`]: invalid host
    /// stage-2 entries over `envelope`, with no barrier or invalidation
    /// (the caller's); whether a table was freed. Where an end of
    /// `envelope` falls inside a 2 MiB block translated through a level-3
    /// table, that part's entries are cleared directly, one store a page
    /// (exactly what aarch64-paging writes there, zero, and it frees no
    /// table for part of a block; the table is not live for it, so it
    /// issues no invalidation either); the rest goes through
    /// aarch64-paging in one call, as before (whole blocks, which may free
    /// their tables).
    fn break_host(&mut self, envelope: MemRange) -> bool {
        let level = stage2_level();
        let (mut start, mut end) = (envelope.start(), envelope.end());
        if !start.is_multiple_of(BLOCK_2M) {
            let stop = ((start & !(BLOCK_2M - 1)) + BLOCK_2M).min(end);
            if clear_level3(&mut self.stage2.0, level, start, stop) {
                start = stop;
            }
        }
        if start < end && !end.is_multiple_of(BLOCK_2M) {
            let tail = (end & !(BLOCK_2M - 1)).max(start);
            if clear_level3(&mut self.stage2.0, level, tail, end) {
                end = tail;
            }
        }
        let frees_before = mm::pool_frees();
        if let Some(rest) = MemRange::new(start, end).filter(|r| r.size() != 0)
            && let Err(e) = mm::identity_map(&mut self.stage2.0, rest, Stage2Attributes::empty())
        {
            fail_closed("stage-2 break", rest, e);
        }
        mm::pool_frees() != frees_before
    }

    /// The span of the host stage-2 leaves that overlap `range`, joined with
    /// `range`: the break covers whole leaves, so it invalidates entries and
    /// never turns a live block into a table. Only the leaves holding its first and last page can reach
    /// outside it (leaves are aligned, contiguous spans: one that overlaps
    /// `range` and holds neither end page lies inside it), so two lookups
    /// find it, not a walk of every entry in the range.
    fn leaf_envelope(&self, range: MemRange) -> MemRange {
        let mut envelope = range;
        for page in [range.start(), range.end() - PAGE_SIZE] {
            if let Some((_, level)) = mm::lookup(&self.stage2.0, stage2_level(), page) {
                let span = PAGE_SIZE << (9 * (3 - level.min(3)));
                let start = page & !(span - 1);
                envelope = MemRange::new(envelope.start().min(start), envelope.end().max(start + span)).unwrap_or(envelope);
            }
        }
        envelope
    }

    /// The first `leaves.len()` host stage-2 leaves overlapping `range`
    /// (their aligned starts, into `leaves`), and how many there are, but
    /// counting stops past `leaves.len()` (the caller then invalidates the
    /// whole VMID and needs no more). The walk stops there too, so a large
    /// range costs a few dozen leaves, not a visit of every entry.
    fn leaves(&self, range: MemRange, leaves: &mut [u64]) -> usize {
        let mut count = 0usize;
        let region = MemoryRegion::new(range.start() as usize, range.end() as usize);
        let _ = self.stage2.0.walk_range(&region, &mut |mr, desc, level| {
            let is_table = level < 3 && desc.is_table_or_page();
            if desc.is_valid() && !is_table {
                let span = PAGE_SIZE << (9 * (3 - level.min(3)));
                if let Some(slot) = leaves.get_mut(count) {
                    *slot = (mr.start().0 as u64) & !(span - 1);
                }
                count += 1;
                if count > leaves.len() {
                    return Err(());
                }
            }
            Ok(())
        });
        count
    }

}

/// Clears the level-3 entries of `[start, end)`, which lies inside one
/// 2 MiB block, if `stage2` (root at `level`) translates that block
/// through a level-3 table; `false`, writing nothing, otherwise.
fn clear_level3(stage2: &mut mm::Table<Stage2>, level: usize, start: u64, end: u64) -> bool {
    let first = ((start % BLOCK_2M) / PAGE_SIZE) as usize;
    let count = (end.saturating_sub(start) / PAGE_SIZE) as usize;
    mm::level3_table(stage2, level, start).is_some_and(|table| table.clear(first, count))
}

/// Maps `[start, end)`, which lies inside one 2 MiB block, at the same
/// address with `attributes` if `stage2` (root at `level`) translates that
/// block through a level-3 table whose entries there are all invalid;
/// `false`, writing nothing, otherwise.
fn fill_level3(stage2: &mut mm::Table<Stage2>, level: usize, start: u64, end: u64, attributes: Stage2Attributes) -> bool {
    let first = ((start % BLOCK_2M) / PAGE_SIZE) as usize;
    let count = (end.saturating_sub(start) / PAGE_SIZE) as usize;
    mm::level3_table(stage2, level, start)
        .is_some_and(|table| table.all_invalid(first, count) && table.set_pages(first, start, count, attributes))
}

/// The make of [`HostMemory::rewrite_host_stage2`]: maps runs of host
/// state given in ascending order, joining a run to the one before it
/// when it continues it with the same state, so each maximal run is mapped
/// once with the largest blocks that fit (as mapping the table's runs over
/// the whole envelope at once would).
struct HostMake<'a> {
    stage2: &'a mut mm::Table<Stage2>,
    /// The host stage 2's root level.
    level: usize,
    /// A run (start, pages, state) seen but not mapped yet.
    pending: Option<(u64, u64, State)>,
}

impl HostMake<'_> {
    /// Feeds the ownership table's runs over `part` (nothing if empty).
    fn runs(&mut self, table: &own::Table<'static>, part: MemRange) {
        if part.size() == 0 {
            return;
        }
        let Ok(runs) = table.runs(PhysAddr(part.start()), part.size() / PAGE_SIZE, Component::Host) else {
            fail_closed_msg("stage-2 make outside the ownership table", part);
        };
        for run in runs {
            self.push(run.start.0, run.pages, run.state);
        }
    }

    /// Feeds one run.
    fn push(&mut self, start: u64, pages: u64, state: State) {
        match self.pending {
            Some((first, count, pending)) if pending == state && first + count * PAGE_SIZE == start => {
                self.pending = Some((first, count + pages, state));
            }
            _ => {
                self.finish();
                self.pending = Some((start, pages, state));
            }
        }
    }

    /// Maps the pending run with its state's attributes (nothing for a
    /// state the host may not reach). Where an end of the run is part of a
    /// 2 MiB block translated through a level-3 table whose entries there
    /// are all invalid (the break just cleared them), those entries are
    /// written directly, one store a page: exactly the page descriptors
    /// aarch64-paging writes for part of a block (it can map no block
    /// there), invalid to valid, so no break-before-make is due; the
    /// caller's `DSB ISHST` publishes them. The rest goes through
    /// aarch64-paging in one call, which picks the largest blocks.
    fn finish(&mut self) {
        let Some((start, pages, state)) = self.pending.take() else { return };
        let Some(attributes) = host_attributes(state) else { return };
        let Some(run_range) = MemRange::from_base_size(start, pages * PAGE_SIZE) else { return };
        let (mut start, mut end) = (run_range.start(), run_range.end());
        if !start.is_multiple_of(BLOCK_2M) {
            let stop = ((start & !(BLOCK_2M - 1)) + BLOCK_2M).min(end);
            if fill_level3(self.stage2, self.level, start, stop, attributes) {
                start = stop;
            }
        }
        if start < end && !end.is_multiple_of(BLOCK_2M) {
            let tail = (end & !(BLOCK_2M - 1)).max(start);
            if fill_level3(self.stage2, self.level, tail, end, attributes) {
                end = tail;
            }
        }
        if let Some(rest) = MemRange::new(start, end).filter(|r| r.size() != 0)
            && let Err(e) = mm::identity_map(self.stage2, rest, attributes)
        {
            fail_closed("stage-2 make", rest, e);
        }
    }
}

impl HostMemory {
    /// [`HostMemory::rewrite_host_stage2`] for one page the host stage 2
    /// translates through a level-3 table (every page of a 2 MiB block
    /// after the block's first split): the same break-before-make on the
    /// one entry, written directly instead of through aarch64-paging's
    /// generic walks. `false`, having changed nothing, if the page has no
    /// level-3 entry (a block, or no table): the caller takes the general
    /// path, which splits.
    ///
    /// Why this is the general path's sequence: that path would find the
    /// one leaf (this entry), unmap it (no table is freed: the range is one
    /// page of a 512-entry table), `DSB ISHST`, `TLBI IPAS2E1IS` for the
    /// page and `DSB ISH; TLBI VMALLE1IS; DSB ISH; ISB` under the host's
    /// VMID, then map the page back with the attributes its host state
    /// implies and `DSB ISHST`. Here the same, except that an entry that
    /// was already invalid needs no break and no invalidation (a TLB
    /// never holds a translation that faulted, so nothing can be stale).
    fn rewrite_host_page(&mut self, ipa: u64) -> bool {
        let Ok(state) = self.table.state_of(PhysAddr(ipa), Component::Host) else { return false };
        let Some(entry) = mm::level3_entry(&mut self.stage2.0, stage2_level(), ipa) else { return false };
        if entry.is_valid() {
            // Break.
            entry.clear();
            arch::dsb_ishst();
            let host_vttbr = crate::BOOT.get().map_or(0, |b| b.config.vttbr);
            arch::with_vttbr(host_vttbr, || {
                arch::tlbi_ipa(ipa);
                arch::tlbi_stage1_of_vmid();
            });
        }
        // Make.
        if let Some(attributes) = host_attributes(state) {
            entry.set_page(ipa, attributes);
        }
        arch::dsb_ishst();
        true
    }
}

/// Stage-2 attributes for a host state, or `None` if unmapped.
fn host_attributes(state: State) -> Option<Stage2Attributes> {
    match state {
        State::Absent => None,
        State::Owned => Some(host_s2::RAM),
        State::SharedOwned => Some(host_s2::RAM | host_s2::SW_SHARED_OWNED),
        State::SharedBorrowed => Some(host_s2::RAM | host_s2::SW_SHARED_BORROWED),
    }
}

/// A host stage-2 fault at `ipa`: if the host may reach the page (it raced
/// with a rewrite of its mapping), map it again and return `true` so the
/// access is retried; otherwise `false`, and the caller injects an abort.
pub fn handle_host_fault(ipa: u64) -> bool {
    let mut guard = HOST_MEMORY.lock();
    let Some(memory) = guard.as_mut() else { return false };
    let page = PhysAddr(ipa & !(PAGE_SIZE - 1));
    match memory.table.state_of(page, Component::Host) {
        Ok(State::Absent) | Err(_) => false,
        Ok(_) => {
            // The rewrite the access raced with has finished (we hold the
            // lock it held): if the page is mapped now, just retry.
            let mut mapped = false;
            let region = MemoryRegion::new(page.0 as usize, (page.0 + PAGE_SIZE) as usize);
            let _ = memory.stage2.0.walk_range(&region, &mut |_, desc, level| {
                mapped |= desc.is_valid() && !(level < 3 && desc.is_table_or_page());
                Ok(())
            });
            if mapped {
                return true;
            }
            let Ok(block) = memory.table.largest_uniform_block(page, Component::Host, &[512]) else { return false };
            let Some(range) = MemRange::from_base_size(block.start.0, block.pages * PAGE_SIZE) else { return false };
            if !memory.ram.iter().any(|bank| bank.contains_range(&range)) {
                return false;
            }
            // Every commit maps what the host may reach, so this is a
            // defence only, and it must not overdraw the pool either.
            if tables::tables_to_remap(range.start(), range.end(), stage2_level()) > mm::pool_available() {
                return false;
            }
            memory.rewrite_host_stage2(range);
            true
        }
    }
}

/// The worst-case table pages `effect` over `range` needs from the pool:
/// the EL2 stage 1 maps hypervisor pages with 4 KiB pages (unmapping them
/// needs none: their tables exist), and the host stage 2 is rewritten with
/// the largest blocks, uniformly over the range. Zeroing uses the fixmap
/// and needs none.
fn tables_needed(effect: &Effect, range: MemRange) -> u64 {
    let mut need = 0;
    if let Update::Set(state) = effect.updates.hyp
        && state != State::Absent
    {
        need += tables::tables_to_map(range.start(), range.end(), EL2_ROOT_LEVEL);
    }
    if let Update::Set(_) = effect.updates.host {
        need += tables::tables_to_remap(range.start(), range.end(), stage2_level());
        if crate::smmu::active() {
            need += tables::mirror_tables_to_remap(range.start(), range.end());
        }
    }
    need
}

impl HostMemory {
    /// After every commit: drain the SMMU's events, and in the test build
    /// (`smmu-mirror-check`) compare the mirror with the host stage 2.
    fn after_commit_smmu(&mut self) {
        crate::smmu::poll_events();
        #[cfg(feature = "smmu-mirror-check")]
        if crate::smmu::active() {
            match crate::smmu::mirror_differs(&self.stage2.0, &self.ram) {
                Some(difference) => crate::println!("SMMU mirror check FAILED {difference}"),
                None => {
                    let changes = crate::smmu::changes();
                    if changes.is_power_of_two() {
                        crate::println!("SMMU mirror check: equal to the host stage 2 after {changes} changes");
                    }
                }
            }
        }
    }
}

/// For a reset (`host::wipe_and_reset`): takes the host memory lock for
/// good (waiting while `keep_waiting` says so), then runs two passes over
/// every page of RAM outside the carve-out that the host does not own — a
/// guest's, lent by a guest, or donated to the hypervisor (VM metadata:
/// vCPU registers, stage-2 tables) — calling `scrub` on each range while it
/// is mapped at EL2 (pages the hypervisor does not map are scrubbed through
/// the fixmap, so `scrub` gets the fixmap's virtual range), and `between`
/// between the passes. Allocates nothing. Returns `false`, having scrubbed
/// nothing, if the lock is not available; the caller must then wipe all of
/// RAM.
pub fn scrub_for_reset(
    keep_waiting: &mut dyn FnMut() -> bool,
    scrub: &mut dyn FnMut(MemRange),
    between: &mut dyn FnMut(),
) -> bool {
    let mut guard = loop {
        if let Some(guard) = HOST_MEMORY.try_lock() {
            break guard;
        }
        if !keep_waiting() {
            return false;
        }
        core::hint::spin_loop();
    };
    let Some(memory) = guard.as_mut() else { return false };
    for pass in 0..2 {
        if pass == 1 {
            between();
        }
        for bank_index in 0..memory.ram.len() {
            let bank = memory.ram[bank_index];
            let carveout = memory.carveout;
            rampart_platform::cache::outside_each(bank, &carveout, &mut |part| memory.scrub_part_for_reset(part, scrub));
        }
    }
    // Never unlocked: no ownership change may follow a wipe.
    core::mem::forget(guard);
    true
}

impl HostMemory {
    /// One pass over `part` (RAM outside the carve-out) for
    /// [`scrub_for_reset`]. Allocates nothing (the fixmap's tables exist):
    /// it may run after a panic.
    fn scrub_part_for_reset(&mut self, part: MemRange, scrub: &mut dyn FnMut(MemRange)) {
        let HostMemory { table, el2, carveout, .. } = self;
        let Ok(host_runs) = table.runs(PhysAddr(part.start()), part.size() / PAGE_SIZE, Component::Host) else { return };
        for run in host_runs.filter(|r| matches!(r.state, State::Absent | State::SharedBorrowed)) {
            let Ok(hyp_runs) = table.runs(run.start, run.pages, Component::Hyp) else { continue };
            for hyp_run in hyp_runs {
                let Some(range) = MemRange::from_base_size(hyp_run.start.0, hyp_run.pages * PAGE_SIZE) else { continue };
                if hyp_run.state != State::Absent {
                    // The hypervisor's pages are mapped at EL2 already.
                    scrub(range);
                    continue;
                }
                let mut start = range.start();
                while start < range.end() {
                    let pages = ((range.end() - start) / PAGE_SIZE).min(FIXMAP_PAGES);
                    fixmap_in(el2, carveout[0], start, pages);
                    if let Some(window) = MemRange::from_base_size(FIXMAP_BASE, pages * PAGE_SIZE) {
                        scrub(window);
                    }
                    fixunmap_in(el2, carveout[0], pages);
                    start += pages * PAGE_SIZE;
                }
            }
        }
    }
}

/// Maps `pages` pages (at most [`FIXMAP_PAGES`]) from `pa` at
/// [`FIXMAP_BASE`]. The fixmap's tables exist (built by [`install`]), so
/// this only writes level-3 entries and allocates nothing: one walk to the
/// window's level-3 table, then one store an entry (not `map_range`, which
/// walks and splits a page at a time: ~57 instructions a page against ~4).
///
/// Why no break-before-make or invalidation is needed here: the window's
/// entries are invalid between uses ([`fixunmap_in`] clears and
/// invalidates every entry it maps; the oracle build checks it), and a
/// TLB never holds a translation that faulted, so no stale entry exists
/// for these VAs. `DSB ISHST` makes the new entries visible to this CPU's
/// walker, and `ISB` keeps later accesses from using an earlier fetch.
fn fixmap_in(el2: &mut Shared<El2>, carveout: MemRange, pa: u64, pages: u64) {
    let range = MemRange::from_base_size(pa, pages * PAGE_SIZE).unwrap_or(carveout);
    let Some(table) = mm::level3_table(&mut el2.0, EL2_ROOT_LEVEL, FIXMAP_BASE) else {
        // `install` built the table and nothing frees it (no unmap covers
        // the whole window).
        fail_closed_msg("fixmap: no level-3 table for", range)
    };
    #[cfg(feature = "oracle")]
    if !table.all_invalid(0, pages as usize) {
        fail_closed_msg("fixmap: window in use when mapping", range);
    }
    if pages > FIXMAP_PAGES || !table.set_pages(0, pa, pages as usize, mm::el2::DATA) {
        fail_closed_msg("fixmap: batch larger than the window for", range);
    }
    arch::dsb_ishst();
    arch::isb();
}

/// Unmaps the first `pages` fixmap pages and invalidates them: invalid
/// entries written directly (as [`fixmap_in`] wrote them), then
/// [`arch::tlbi_el2_leaf_range`] (`DSB ISHST`, `TLBI VALE2IS` per page,
/// `DSB ISH`, `ISB`): when it returns no CPU holds a translation for the
/// window, so the next [`fixmap_in`] may point it at other pages. The
/// level-3 table itself is never freed (aarch64-paging does not see these
/// writes), so last-level invalidation suffices.
fn fixunmap_in(el2: &mut Shared<El2>, carveout: MemRange, pages: u64) {
    let Some(table) = mm::level3_table(&mut el2.0, EL2_ROOT_LEVEL, FIXMAP_BASE) else {
        fail_closed_msg("fixmap unmap: no level-3 table for", carveout)
    };
    if pages > FIXMAP_PAGES || !table.clear(0, pages as usize) {
        fail_closed_msg("fixmap unmap: batch larger than the window for", carveout);
    }
    arch::tlbi_el2_leaf_range(FIXMAP_BASE, pages);
}

fn fail_closed(what: &str, range: MemRange, error: aarch64_paging::MapError) -> ! {
    crate::println!("{what} of {range} failed: {error}; stopping");
    crate::power_off()
}

fn fail_closed_msg(what: &str, range: MemRange) -> ! {
    crate::println!("{what} {range}; stopping");
    crate::power_off()
}

/// Pool pages `VM_RESTORE` holds back for returning one restored page to
/// the host at `VM_DESTROY` (what `check_for_guest` holds for it).
pub fn swap_return_cost(page: u64) -> u64 {
    MemRange::from_base_size(page, PAGE_SIZE).map_or(0, return_cost)
}

/// The sealed swap's page checks and copies (issue 14, `crate::swap`).
impl HostMemory {
    /// `RANGE` unless `page` (page-aligned) lies inside one RAM bank.
    ///
    /// # Errors
    ///
    /// `RANGE`, or `INVALID_PARAMETER` for a page that wraps.
    pub fn swap_check_ram(&self, page: u64) -> Result<(), AbiError> {
        let range = MemRange::from_base_size(page, PAGE_SIZE).ok_or(AbiError::InvalidParameter)?;
        if self.ram.iter().any(|bank| bank.contains_range(&range)) { Ok(()) } else { Err(AbiError::Range) }
    }

    /// `DENIED` unless the host owns `page` exclusively: not lent to the
    /// hypervisor (so not pinned or bound as a call page) or a guest, not
    /// donated, not held for a VM, not the carve-out.
    ///
    /// # Errors
    ///
    /// `DENIED`.
    pub fn swap_host_owns(&self, page: u64) -> Result<(), AbiError> {
        match self.table.page_state(PhysAddr(page)) {
            Ok(own::PageState::HostOwned) if !self.carveout.iter().any(|c| c.contains(page)) => Ok(()),
            _ => Err(AbiError::Denied),
        }
    }

    /// Whether VM `vm` owns `page` exclusively (not shared with the host,
    /// not lent by it).
    pub fn swap_guest_owns(&self, page: u64, vm: own::VmId) -> bool {
        matches!(self.table.page_state(PhysAddr(page)), Ok(own::PageState::GuestOwned(owner)) if owner == vm)
    }

    /// Copies page `page` into `out`, reading what memory holds (the cache
    /// cleaned and invalidated first: a guest without caches, or a host's
    /// non-coherent DMA, may have written DRAM directly). Volatile loads,
    /// each word read once and no Rust reference to the page: the host may
    /// be writing it meanwhile, and only the copy is used.
    pub fn swap_read_page(&mut self, page: u64, out: &mut [u8; PAGE_SIZE as usize]) {
        self.fixmap(page, 1);
        if let Some(window) = MemRange::from_base_size(FIXMAP_BASE, PAGE_SIZE) {
            arch::cache::before_reading(window);
        }
        for (i, chunk) in out.chunks_exact_mut(512).enumerate() {
            // SAFETY: the fixmap's first page maps `page` readable at EL2
            // until `fixunmap` below; 512-byte chunks stay inside it and are
            // 8-byte aligned.
            let words: [u64; 64] = unsafe { mm::read_volatile_words(FIXMAP_BASE + i as u64 * 512) };
            for (bytes, word) in chunk.chunks_exact_mut(8).zip(words) {
                bytes.copy_from_slice(&word.to_le_bytes());
            }
        }
        self.fixunmap(1);
    }

    /// Writes `bytes` over page `page` with volatile stores (no Rust
    /// reference to the page) and cleans it to the point of coherency, so
    /// that a reader without caches (a guest's MMU-off accesses, a host's
    /// non-coherent DMA) sees it.
    pub fn swap_write_page(&mut self, page: u64, bytes: &[u8; PAGE_SIZE as usize]) {
        self.fixmap(page, 1);
        for (i, chunk) in bytes.chunks_exact(512).enumerate() {
            let mut words = [0u64; 64];
            for (word, b) in words.iter_mut().zip(chunk.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                *word = u64::from_le_bytes(w);
            }
            // SAFETY: the fixmap's first page maps `page` writable at EL2
            // until `fixunmap` below; the chunk is inside it and aligned. The
            // page is the host's own sealed page (concurrent host writes only
            // spoil what the host gets) or a page no one else can reach yet.
            unsafe { mm::write_volatile_words(FIXMAP_BASE + i as u64 * 512, &words) };
        }
        if let Some(window) = MemRange::from_base_size(FIXMAP_BASE, PAGE_SIZE) {
            arch::cache::scrub_then_release(window);
        }
        self.fixunmap(1);
    }

    /// Gives back up to `pages` of the pool pages held for `vm`'s teardown
    /// (a restored page went back to the host with `VM_EVICT`).
    pub fn swap_release_hold(&mut self, vm: own::VmId, pages: u64) {
        if let Some(slot) = GUEST_HOLDS.get(usize::from(vm.0)) {
            let released = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(pages))).map_or(0, |h| h.min(pages));
            mm::pool_release(released);
        }
    }
}
