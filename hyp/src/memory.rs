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

use aarch64_paging::descriptor::Stage2Attributes;
use aarch64_paging::paging::{El2, MemoryRegion, Stage2};
use rampart_abi::Error as AbiError;
use rampart_abi::host::{HostRequest, PageRange};
use rampart_ownership::{self as own, Component, Effect, PhysAddr, State, Transition, Update};
use rampart_platform::{MemRange, PAGE_SIZE};
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
    /// The hypervisor's carve-out: never given to the host.
    pub carveout: MemRange,
}

static HOST_MEMORY: SpinMutex<Option<HostMemory>> = SpinMutex::new(None);

/// Most table pages a stage-2 rewrite of one 2 MiB or smaller range can
/// need beyond its size: two split ends, each down to level 3.
const SPLIT_TABLE_PAGES: u64 = 8;

/// Puts the boot-time state in place.
pub fn install(memory: HostMemory) {
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
    let mut guard = HOST_MEMORY.lock();
    let memory = guard.as_mut().ok_or(AbiError::NotSupported)?;
    memory.transition(transition, range)
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
}

impl HostMemory {
    fn transition(&mut self, transition: Transition, request: PageRange) -> Result<(), AbiError> {
        let checked = self.check(transition, request)?;
        self.commit(checked);
        Ok(())
    }

    /// Every precondition of `transition` over `request`, without changing
    /// anything: the range is RAM, the carve-out is never handed out, the
    /// ownership table agrees, and the pool holds enough table pages.
    ///
    /// # Errors
    ///
    /// `RANGE`, `DENIED`, `BUSY` or `NO_MEMORY` as `docs/abi.md` lists.
    pub fn check(&self, transition: Transition, request: PageRange) -> Result<Checked, AbiError> {
        // Decoding checked alignment, count and wrap-around; next, is it RAM.
        let (start, pages) = (PhysAddr(request.start()), request.pages());
        let range = MemRange::new(request.start(), request.end()).ok_or(AbiError::InvalidParameter)?;
        if !self.ram.iter().any(|bank| bank.contains_range(&range)) {
            return Err(AbiError::Range);
        }
        if transition == Transition::HypDonateHost && range.overlaps(&self.carveout) {
            return Err(AbiError::Denied);
        }
        let effect = self.table.check(transition, start, pages).map_err(|r| abi_error(r.error))?;
        self.ensure_table_memory(&effect, range)?;
        Ok(Checked { transition, range, effect })
    }

    /// Applies a checked transition: the states, then the mappings. Cannot
    /// fail (a failure here is a broken invariant and stops the machine).
    pub fn commit(&mut self, checked: Checked) {
        let Checked { transition, range, effect } = checked;
        if let Err(r) = self.table.apply(transition, PhysAddr(range.start()), range.size() / PAGE_SIZE) {
            crate::println!("ownership commit failed after its check: {r}; stopping");
            crate::power_off();
        }
        self.reflect(&effect, range);
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
            let checked = PageRange::new(run.start.0, run.pages).ok().and_then(|r| self.check(transition, r).ok());
            match checked {
                Some(checked) => self.commit(checked),
                None => {
                    crate::println!("cannot reclaim {} pages of VM {} at {}; stopping", run.pages, vm.0, run.start);
                    crate::power_off();
                }
            }
        }
    }

    /// Zeroes pages the hypervisor does not map (a guest's, before it can
    /// see them) through a temporary EL2 mapping.
    pub fn zero_unowned(&mut self, range: MemRange) {
        self.map_el2(range);
        // SAFETY: mapped just above; the pages belong to a guest that cannot
        // reach them yet, and nothing in Rust refers to them.
        unsafe { mm::zero(range) };
        self.unmap_el2(range);
    }

    /// Maps pages the hypervisor does not own at EL2 for the length of `f`,
    /// one 2 MiB chunk at a time, and calls `f` with each page's address and
    /// bytes in ascending order. The caller must make sure no guest vCPU or
    /// host CPU can write the pages meanwhile (a guest that has not run
    /// yet, or pages the host has just given up).
    ///
    /// # Errors
    ///
    /// `NO_MEMORY` if the pool cannot hold the temporary mappings.
    pub fn with_pages(&mut self, range: MemRange, f: &mut dyn FnMut(u64, &mut [u8; 4096])) -> Result<(), AbiError> {
        const CHUNK: u64 = 2 << 20;
        let (_, left) = mm::pool_usage();
        if left < 8 {
            return Err(AbiError::NoMemory);
        }
        let mut start = range.start();
        while start < range.end() {
            let end = (start + CHUNK).min(range.end());
            let chunk = MemRange::new(start, end).ok_or(AbiError::InvalidParameter)?;
            self.map_el2(chunk);
            let mut page = start;
            while page < end {
                // SAFETY: mapped just above; the caller guarantees nobody
                // else writes the page while `f` runs.
                f(page, unsafe { mm::page_bytes(page) });
                page += PAGE_SIZE;
            }
            self.unmap_el2(chunk);
            start = end;
        }
        Ok(())
    }

    /// Refuses with NO_MEMORY if the pool could run dry mid-change.
    fn ensure_table_memory(&self, effect: &Effect, range: MemRange) -> Result<(), AbiError> {
        let mut need = 0;
        if let Update::Set(state) = effect.updates.hyp
            && state != State::Absent
        {
            // 4 KiB mappings: one level-3 table per 2 MiB, plus the levels above.
            need += range.size().div_ceil(2 << 20) + 4;
        }
        if let Update::Set(_) = effect.updates.host {
            need += range.size().div_ceil(2 << 20) + SPLIT_TABLE_PAGES;
        }
        if effect.updates.zero && effect.transition != Transition::HypDonateHost {
            // A temporary EL2 mapping to zero pages the hypervisor does not map.
            need += range.size().div_ceil(2 << 20) + 4;
        }
        let (_, left) = mm::pool_usage();
        if need > left { Err(AbiError::NoMemory) } else { Ok(()) }
    }

    /// Rewrites the mappings for `range` after the states changed:
    /// unmap, zero, then map (the order `Effect` documents).
    fn reflect(&mut self, effect: &Effect, range: MemRange) {
        if effect.updates.host == Update::Set(State::Absent) {
            self.rewrite_host_stage2(range);
        }
        if effect.updates.zero {
            // Pages the hypervisor owned are mapped at EL2 already; a guest's
            // are mapped just long enough to be cleared.
            let mapped = effect.transition == Transition::HypDonateHost;
            if !mapped {
                self.map_el2(range);
            }
            // SAFETY: the pages are mapped at EL2 (above); no guest runs on
            // them any more and the host cannot reach them until the host
            // stage 2 below gives them back; nothing in Rust refers to them.
            unsafe { mm::zero(range) };
            if !mapped {
                self.unmap_el2(range);
            }
        }
        match effect.updates.hyp {
            Update::Set(State::Absent) => self.unmap_el2(range),
            Update::Set(_) => self.map_el2(range),
            Update::Keep => {}
        }
        if let Update::Set(state) = effect.updates.host
            && state != State::Absent
        {
            self.rewrite_host_stage2(range);
        }
    }

    fn map_el2(&mut self, range: MemRange) {
        if let Err(e) = mm::identity_map_pages(&mut self.el2.0, range, mm::el2::DATA) {
            fail_closed("EL2 map", range, e);
        }
        arch::dsb_ishst();
    }

    fn unmap_el2(&mut self, range: MemRange) {
        if let Err(e) = mm::identity_map_pages(&mut self.el2.0, range, aarch64_paging::descriptor::El23Attributes::empty()) {
            fail_closed("EL2 unmap", range, e);
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
        const MAX_TARGETED: usize = 16;
        let mut envelope = range;
        let mut leaves = [0u64; MAX_TARGETED];
        let mut leaf_count = 0usize;
        let region = MemoryRegion::new(range.start() as usize, range.end() as usize);
        let _ = self.stage2.0.walk_range(&region, &mut |mr, desc, level| {
            let is_table = level < 3 && desc.is_table_or_page();
            if desc.is_valid() && !is_table {
                let (start, end) = (mr.start().0 as u64, mr.end().0 as u64);
                envelope = MemRange::new(envelope.start().min(start), envelope.end().max(end)).unwrap_or(envelope);
                if leaf_count < MAX_TARGETED {
                    leaves[leaf_count] = start;
                }
                leaf_count += 1;
            }
            Ok(())
        });

        // Break.
        if let Err(e) = mm::identity_map(&mut self.stage2.0, envelope, Stage2Attributes::empty()) {
            fail_closed("stage-2 break", envelope, e);
        }
        arch::dsb_ishst();
        let host_vttbr = crate::BOOT.get().map_or(0, |b| b.config.vttbr);
        arch::with_vttbr(host_vttbr, || {
            if leaf_count <= MAX_TARGETED {
                for &ipa in &leaves[..leaf_count] {
                    arch::tlbi_ipa(ipa);
                }
                arch::tlbi_stage1_of_vmid();
            } else {
                arch::tlbi_vmid();
            }
        });

        // Make.
        let pages = envelope.size() / PAGE_SIZE;
        let Ok(runs) = self.table.runs(PhysAddr(envelope.start()), pages, Component::Host) else {
            fail_closed_msg("stage-2 make outside the ownership table", envelope);
        };
        for run in runs {
            let Some(attributes) = host_attributes(run.state) else { continue };
            let Some(run_range) = MemRange::from_base_size(run.start.0, run.pages * PAGE_SIZE) else { continue };
            if let Err(e) = mm::identity_map(&mut self.stage2.0, run_range, attributes) {
                fail_closed("stage-2 make", run_range, e);
            }
        }
        arch::dsb_ishst();
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
            let Ok(block) = memory.table.largest_uniform_block(page, Component::Host, &[512]) else { return false };
            let Some(range) = MemRange::from_base_size(block.start.0, block.pages * PAGE_SIZE) else { return false };
            if !memory.ram.iter().any(|bank| bank.contains_range(&range)) {
                return false;
            }
            memory.rewrite_host_stage2(range);
            true
        }
    }
}

/// For a reset (`host::wipe_and_reset`): takes the host memory lock for
/// good (waiting while `keep_waiting` says so), then runs two passes over
/// every page of RAM outside the carve-out that the host does not own — a
/// guest's, lent by a guest, or donated to the hypervisor (VM metadata:
/// vCPU registers, stage-2 tables) — calling `scrub` on each range while it
/// is mapped at EL2 (pages the hypervisor does not map get a temporary
/// mapping), and `between` between the passes. Returns `false`, having
/// scrubbed nothing, if the lock or the page-table memory for temporary
/// mappings is not available; the caller must then wipe all of RAM.
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
    // The temporary mappings: one level-3 table per 2 MiB and its parents.
    if mm::pool_usage().1 < 8 {
        return false;
    }
    for pass in 0..2 {
        if pass == 1 {
            between();
        }
        for bank_index in 0..memory.ram.len() {
            let bank = memory.ram[bank_index];
            for part in rampart_platform::cache::outside(bank, memory.carveout).into_iter().flatten() {
                memory.scrub_part_for_reset(part, scrub);
            }
        }
    }
    // Never unlocked: no ownership change may follow a wipe.
    core::mem::forget(guard);
    true
}

impl HostMemory {
    /// One pass over `part` (RAM outside the carve-out) for
    /// [`scrub_for_reset`]. Allocates nothing: it may run after a panic.
    fn scrub_part_for_reset(&mut self, part: MemRange, scrub: &mut dyn FnMut(MemRange)) {
        const CHUNK: u64 = 2 << 20;
        let HostMemory { table, el2, .. } = self;
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
                    let end = (start + CHUNK).min(range.end());
                    if let Some(chunk) = MemRange::new(start, end) {
                        if let Err(e) = mm::identity_map_pages(&mut el2.0, chunk, mm::el2::DATA) {
                            fail_closed("EL2 map", chunk, e);
                        }
                        arch::dsb_ishst();
                        scrub(chunk);
                        let none = aarch64_paging::descriptor::El23Attributes::empty();
                        if let Err(e) = mm::identity_map_pages(&mut el2.0, chunk, none) {
                            fail_closed("EL2 unmap", chunk, e);
                        }
                        let mut page = chunk.start();
                        while page < chunk.end() {
                            arch::tlbi_el2_va(page);
                            page += PAGE_SIZE;
                        }
                    }
                    start = end;
                }
            }
        }
    }
}

fn fail_closed(what: &str, range: MemRange, error: aarch64_paging::MapError) -> ! {
    crate::println!("{what} of {range} failed: {error}; stopping");
    crate::power_off()
}

fn fail_closed_msg(what: &str, range: MemRange) -> ! {
    crate::println!("{what} {range}; stopping");
    crate::power_off()
}
