//! Building a VM from a plan, and tearing it down.
//!
//! The order and every value follow `rampart_attest`'s measurement
//! definition: the image copied to the start of guest RAM and the rest
//! zero (the VMM writes the image pages; the hypervisor zeroes the rest:
//! `VM_DONATE_ZEROED`, issue 16); `VM_CREATE` with the manifest's flags and
//! vCPU count; `VCPU_CREATE` for every vCPU; `VM_DONATE` of the image pages
//! and `VM_DONATE_ZEROED` of the rest of guest RAM at `GUEST_RAM_BASE`; `VCPU_SET_REGS` for vCPU 0 (PC = `GUEST_RAM_BASE +
//! entry_offset`, `x0` = memory size); then `VM_SET_SIGNATURE` with the
//! bundle's signer and signature.
//!
//! Or, given on first touch ([`create_on_demand`], issue 16): only the
//! image pages before the first run, a protected VM's RAM declared zero
//! (`VM_DECLARE_ZERO`) so it measures the same, and the rest in
//! [`CHUNK_PAGES`] chunks at each `EXIT_MEMORY_FAULT` ([`OnDemand`]).

use std::time::Duration;

use anyhow::{Result, anyhow};
use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{DONATE_ZEROED_MAX_PAGES, HostCall, PAGE_SIZE, bytes_to_words};
use rampart_attest::BundleRef;

use crate::hyp::{CallError, Hyp, checked};
use crate::mem::{GuestRam, Mapping};
use crate::plan::Plan;

/// What the VMM wrote into guest RAM before creating the VM: ranges of
/// guest RAM pages `(first, pages)`, in order and disjoint, each page of
/// them written in full (a part's first and last page zero-padded). The
/// pages outside them were not touched: [`create_loaded`] has the
/// hypervisor zero them (`VM_DONATE_ZEROED`, issue 16).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The written ranges, `(first page, pages)`.
    pub written: Vec<(u64, u64)>,
}

impl Loaded {
    /// Adds pages `first..first + pages` (at or after every range so
    /// far), merging it with the last range where they touch.
    pub fn push(&mut self, first: u64, pages: u64) {
        if pages == 0 {
            return;
        }
        if let Some(last) = self.written.last_mut()
            && first <= last.0 + last.1
        {
            let end = (first + pages).max(last.0 + last.1);
            last.1 = end - last.0;
            return;
        }
        self.written.push((first, pages));
    }
}

/// Copies the image to the start of guest RAM in `region` and zeroes the
/// rest of its last page (the region must be the host's). The rest of
/// guest RAM is left as it is: [`create_loaded`] has the hypervisor zero
/// it (`VM_DONATE_ZEROED`, issue 16), or zeroes it itself on a hypervisor
/// without that call.
pub fn load_image(region: &Mapping, plan: &Plan, image: &[u8]) -> Loaded {
    let start = usize::try_from(plan.memory_offset()).expect("offset fits usize");
    let size = usize::try_from(plan.memory_size).expect("memory size fits usize");
    let page = usize::try_from(PAGE_SIZE).expect("page size fits usize");
    region.write_bytes(start, image);
    let written = image.len().next_multiple_of(8);
    let image_end = image.len().next_multiple_of(page).min(size);
    region.zero(start + written, image_end.saturating_sub(written));
    let mut loaded = Loaded::default();
    loaded.push(0, (image_end / page) as u64);
    loaded
}

/// Where the VM's pages are, physically.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// Physical address of the VM's pool region.
    pub region_phys: u64,
}

impl Placement {
    /// Physical address of guest RAM.
    #[must_use]
    pub const fn ram(&self, plan: &Plan) -> u64 {
        self.region_phys + plan.memory_offset()
    }

    /// Physical address of the metadata pages.
    #[must_use]
    pub const fn metadata(&self, plan: &Plan) -> u64 {
        self.region_phys + plan.metadata_offset()
    }
}

fn explain(e: CallError, plan: &Plan, place: &Placement) -> anyhow::Error {
    let hint = match (HostCall::try_from(e.id), e.error()) {
        (Ok(HostCall::VmCreate), Some(Error::NoMemory)) => {
            "every VM slot is in use: `rampart-vmm list` shows them, `rampart-vmm reclaim` destroys those of VMMs that were killed".to_string()
        }
        (Ok(HostCall::VmCreate | HostCall::VmDonate | HostCall::VmDonateZeroed), Some(Error::Denied)) => format!(
            "some pool pages at {:#x}..{:#x} are not the host's: a VM left by a killed VMM may still hold them (`rampart-vmm reclaim`)",
            place.region_phys,
            place.region_phys + plan.total_pages() * PAGE_SIZE
        ),
        (Ok(HostCall::VmCreate | HostCall::VmDonate | HostCall::VmDonateZeroed), Some(Error::Range)) => {
            "the pool is not RAM the hypervisor lets the host give away".to_string()
        }
        (Ok(HostCall::VmDonate | HostCall::VmDonateZeroed), Some(Error::NoMemory)) => format!(
            "the VM ran out of stage-2 table pages ({} metadata pages): pass a larger --stage2-pages",
            plan.metadata_pages
        ),
        _ => String::new(),
    };
    if hint.is_empty() {
        anyhow!("{e}")
    } else {
        anyhow!("{e}: {hint}")
    }
}

/// Creates the VM (all of guest RAM must already hold what the guest
/// starts with, the image and zeros): returns its handle. `created` is
/// called with the handle right after `VM_CREATE` (to record it). If a
/// later step fails the VM is destroyed again.
///
/// # Errors
///
/// The failing call, explained.
#[cfg(test)]
pub fn create(
    hyp: &dyn Hyp,
    plan: &Plan,
    place: &Placement,
    bundle: &BundleRef<'_>,
    created: &mut dyn FnMut(u64),
) -> Result<u64> {
    create_as(hyp, plan, place, bundle, None, false, created).map(|(h, _)| h)
}

/// [`create`] after [`load_image`] (or a Linux bundle's `load`): the
/// pages the VMM wrote are donated with `VM_DONATE`, the rest of guest
/// RAM, which the VMM never wrote, with `VM_DONATE_ZEROED` (at most
/// `DONATE_ZEROED_MAX_PAGES` a call), in guest-address order, so the
/// hypervisor zeroes it (issue 16: the VMM's stores and cache maintenance
/// over all of guest RAM were most of a launch's instructions). A
/// hypervisor without that call (`NOT_SUPPORTED`) gets the VMM's zeros
/// and one `VM_DONATE`, as before. The guest's memory, and so a protected
/// VM's measurement, is the same either way.
///
/// # Errors
///
/// The failing call, explained.
pub fn create_loaded<'r>(
    hyp: &dyn Hyp,
    region: impl Into<GuestRam<'r>>,
    plan: &Plan,
    place: &Placement,
    bundle: &BundleRef<'_>,
    loaded: &Loaded,
    created: &mut dyn FnMut(u64),
) -> Result<u64> {
    create_as(hyp, plan, place, bundle, Some((region.into(), loaded)), false, created)
        .map(|(h, _)| h)
}

/// [`create_loaded`], giving guest RAM on the guest's first touch (issue
/// 16): only the pages the VMM wrote are donated before the first run;
/// the caller gives the rest at each `EXIT_MEMORY_FAULT` through the
/// returned record ([`OnDemand::serve`]). A protected VM's other pages are
/// declared zero first (`VM_DECLARE_ZERO`), so it measures as it would
/// with all of them donated. Returns `None` for the record when all of
/// guest RAM was donated now instead, as [`create_loaded`] does: for a
/// realm (which may get no RAM after its first run), and for a protected
/// VM on a hypervisor that answers `VM_DECLARE_ZERO` with `NOT_SUPPORTED`
/// or `NO_MEMORY`.
///
/// # Errors
///
/// The failing call, explained.
pub fn create_on_demand<'r>(
    hyp: &dyn Hyp,
    region: impl Into<GuestRam<'r>>,
    plan: &Plan,
    place: &Placement,
    bundle: &BundleRef<'_>,
    loaded: &Loaded,
    created: &mut dyn FnMut(u64),
) -> Result<(u64, Option<OnDemand>)> {
    let lazy = !bundle.manifest.flags.realm;
    create_as(hyp, plan, place, bundle, Some((region.into(), loaded)), lazy, created)
}

/// One donation of guest RAM pages `first..first + pages`: written by the
/// VMM (`VM_DONATE`) or to be zeroed by the hypervisor
/// (`VM_DONATE_ZEROED`, at most `DONATE_ZEROED_MAX_PAGES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Donation {
    first: u64,
    pages: u64,
    zeroed: bool,
}

/// The donations that cover guest RAM's `pages` pages exactly once, in
/// order: each written range whole, each gap between them in zeroed calls
/// of at most `DONATE_ZEROED_MAX_PAGES`. Written ranges past the end are
/// cut (a plan never makes them).
fn donations(pages: u64, loaded: &Loaded) -> Vec<Donation> {
    let mut out = Vec::new();
    let mut next = 0;
    let gap = |out: &mut Vec<Donation>, mut from: u64, to: u64| {
        while from < to {
            let count = (to - from).min(DONATE_ZEROED_MAX_PAGES);
            out.push(Donation { first: from, pages: count, zeroed: true });
            from += count;
        }
    };
    for &(first, count) in &loaded.written {
        let first = first.clamp(next, pages);
        let end = first.saturating_add(count).min(pages);
        if end <= first {
            continue;
        }
        gap(&mut out, next, first);
        out.push(Donation { first, pages: end - first, zeroed: false });
        next = end;
    }
    gap(&mut out, next, pages);
    out
}

/// Donates guest RAM: `loaded` says which pages the VMM wrote (the rest
/// is donated zeroed); `None`: all of it was written. On a hypervisor
/// without `VM_DONATE_ZEROED` (`NOT_SUPPORTED`, which changes nothing)
/// the VMM zeroes each unwritten range itself and donates it with
/// `VM_DONATE`.
fn donate_ram(
    hyp: &dyn Hyp,
    handle: u64,
    plan: &Plan,
    place: &Placement,
    loaded: Option<(GuestRam<'_>, &Loaded)>,
) -> Result<(), CallError> {
    let pages = plan.memory_pages();
    let Some((region, loaded)) = loaded else {
        return checked(
            hyp,
            HostCall::VmDonate.id(),
            &[handle, place.ram(plan), pages, GUEST_RAM_BASE],
        )
        .map(|_| ());
    };
    let list = donations(pages, loaded);
    let mut zeroed_supported = true;
    let mut not_supported = None;
    let mut i = 0;
    while let Some(d) = list.get(i).copied() {
        let at = d.first * PAGE_SIZE;
        if !d.zeroed {
            checked(
                hyp,
                HostCall::VmDonate.id(),
                &[handle, place.ram(plan) + at, d.pages, GUEST_RAM_BASE + at],
            )?;
            i += 1;
            continue;
        }
        if zeroed_supported {
            match checked(
                hyp,
                HostCall::VmDonateZeroed.id(),
                &[handle, place.ram(plan) + at, d.pages, GUEST_RAM_BASE + at, 0],
            ) {
                Ok(_) => {
                    i += 1;
                    continue;
                }
                Err(e) if e.error() == Some(Error::NotSupported) => {
                    zeroed_supported = false;
                    not_supported = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        // A hypervisor before host ABI 0.9: zero this whole gap (its
        // zeroed calls that follow) here and give it with one VM_DONATE.
        let mut count = 0;
        while let Some(z) = list.get(i).filter(|z| z.zeroed) {
            count += z.pages;
            i += 1;
        }
        // The region's mapping, made now if it is lazy; if it cannot be,
        // the pages stay the host's and the call's refusal is the answer.
        let Ok(region) = region.get() else {
            return Err(not_supported.unwrap_or(CallError {
                id: HostCall::VmDonateZeroed.id(),
                code: Error::NotSupported.code(),
            }));
        };
        region.zero(
            usize::try_from(plan.memory_offset() + at).unwrap_or(usize::MAX),
            usize::try_from(count * PAGE_SIZE).unwrap_or(usize::MAX),
        );
        checked(
            hyp,
            HostCall::VmDonate.id(),
            &[handle, place.ram(plan) + at, count, GUEST_RAM_BASE + at],
        )?;
    }
    Ok(())
}

/// Guest RAM given on the guest's first touch (issue 16) comes in
/// naturally aligned chunks of this many pages (128 KiB), clipped to guest
/// RAM: one `EXIT_MEMORY_FAULT` round trip (exit, `VM_DONATE_ZEROED`, run)
/// then covers the pages a guest usually touches next (its stack, the
/// next part of a buffer it fills), while a guest that touches little
/// gets little more than it uses. `docs/perf.md`, "Guest RAM on first
/// touch", has the measurement behind the size.
pub const CHUNK_PAGES: u64 = 32;

/// Which pages of guest RAM the VM was given so far, one bit a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    bits: Vec<u64>,
    pages: u64,
}

impl Given {
    /// Nothing of guest RAM's `pages` pages given yet.
    #[must_use]
    pub fn new(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Given {
            bits: vec![0; words],
            pages,
        }
    }

    /// Whether page `page` was given (pages past the end never are).
    #[must_use]
    pub fn contains(&self, page: u64) -> bool {
        let Ok(word) = usize::try_from(page / 64) else {
            return false;
        };
        page < self.pages && self.bits.get(word).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Records pages `first..first + count` (clipped to guest RAM) as given.
    pub fn mark(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count).min(self.pages);
        for page in first..end {
            if let Some(w) = usize::try_from(page / 64).ok().and_then(|i| self.bits.get_mut(i)) {
                *w |= 1 << (page % 64);
            }
        }
    }

    /// Pages given.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The ranges `(first, pages)` of pages in `from..to` (clipped to guest
    /// RAM) not given yet, in order, each as long as it can be.
    #[must_use]
    pub fn missing(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for page in from..to.min(self.pages) {
            if self.contains(page) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.0 + last.1 == page => last.1 += 1,
                _ => out.push((page, 1)),
            }
        }
        out
    }
}

/// Guest RAM given on first touch (issue 16): the record of given pages,
/// shared by every vCPU thread, and how to give more. Built by
/// [`create_on_demand`]; a vCPU thread calls [`OnDemand::serve`] at each
/// `EXIT_MEMORY_FAULT`.
#[derive(Debug)]
pub struct OnDemand {
    given: std::sync::Mutex<Given>,
    /// Physical address of guest RAM.
    ram_phys: u64,
    /// Whether `VM_DONATE_ZEROED` is answered (cleared at its first
    /// `NOT_SUPPORTED`: from then on the VMM zeroes and uses `VM_DONATE`).
    zeroed: std::sync::atomic::AtomicBool,
}

impl OnDemand {
    pub(crate) fn new(given: Given, ram_phys: u64) -> Self {
        OnDemand {
            given: std::sync::Mutex::new(given),
            ram_phys,
            zeroed: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Pages given so far (before the first run and since).
    #[must_use]
    pub fn given_pages(&self) -> u64 {
        self.given
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .count()
    }

    /// A memory fault of VM `handle` at `ipa`: `None` if `ipa` is not in
    /// guest RAM (the caller handles it as before). Otherwise gives the
    /// pages of its [`CHUNK_PAGES`] chunk that were not given yet and
    /// returns how many (0: all were, e.g. another vCPU thread just gave
    /// them; running the vCPU again retries the access, and if the page is
    /// still not the guest's, such as one it relinquished, the guest gets
    /// an abort as before). The record is locked through the calls, so no
    /// page is offered twice. Zeroed by the hypervisor
    /// (`VM_DONATE_ZEROED`), or by the VMM and donated with `VM_DONATE` on
    /// a hypervisor without that call.
    ///
    /// # Errors
    ///
    /// The failing call (the pages it named stay the host's and are not
    /// recorded; those given before it in this fault are).
    pub fn serve(
        &self,
        hyp: &dyn Hyp,
        handle: u64,
        plan: &Plan,
        region: &GuestRam<'_>,
        ipa: u64,
    ) -> Result<Option<u64>, CallError> {
        let Some(offset) = crate::plan::ram_offset(plan, ipa & !(PAGE_SIZE - 1)) else {
            return Ok(None);
        };
        let first = (offset / PAGE_SIZE) & !(CHUNK_PAGES - 1);
        let mut given = self
            .given
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut total = 0;
        for (page, pages) in given.missing(first, first + CHUNK_PAGES) {
            match self.give(hyp, handle, plan, region, page, pages) {
                Ok(()) => total += pages,
                // Part of the run is held already: `migrate-out` gives a
                // stopped VM the rest of its RAM before exporting it, and
                // if that export then failed the VM runs on with pages
                // this record does not know. Page by page: a page refused
                // with DENIED is the VM's already.
                Err(e) if e.error() == Some(Error::Denied) => {
                    for one in page..page + pages {
                        match self.give(hyp, handle, plan, region, one, 1) {
                            Ok(()) => total += 1,
                            Err(e) if e.error() == Some(Error::Denied) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            given.mark(page, pages);
        }
        Ok(Some(total))
    }

    /// Gives guest RAM pages `page..page + pages` (at most
    /// `DONATE_ZEROED_MAX_PAGES`), zeroed.
    fn give(
        &self,
        hyp: &dyn Hyp,
        handle: u64,
        plan: &Plan,
        region: &GuestRam<'_>,
        page: u64,
        pages: u64,
    ) -> Result<(), CallError> {
        use std::sync::atomic::Ordering;
        let at = page * PAGE_SIZE;
        let (phys, ipa) = (self.ram_phys + at, GUEST_RAM_BASE + at);
        let mut refusal = None;
        if self.zeroed.load(Ordering::Relaxed) {
            match checked(
                hyp,
                HostCall::VmDonateZeroed.id(),
                &[handle, phys, pages, ipa, 0],
            ) {
                Ok(_) => return Ok(()),
                Err(e) if e.error() == Some(Error::NotSupported) => {
                    self.zeroed.store(false, Ordering::Relaxed);
                    refusal = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        // A hypervisor before host ABI 0.9: the VMM's zeros.
        let Ok(mapped) = region.get() else {
            return Err(refusal.unwrap_or(CallError {
                id: HostCall::VmDonateZeroed.id(),
                code: Error::NotSupported.code(),
            }));
        };
        mapped.zero(
            usize::try_from(plan.memory_offset() + at).unwrap_or(usize::MAX),
            usize::try_from(pages * PAGE_SIZE).unwrap_or(usize::MAX),
        );
        checked(hyp, HostCall::VmDonate.id(), &[handle, phys, pages, ipa]).map(|_| ())
    }
}

/// Before the first run of a VM whose RAM is given on demand: donates the
/// pages the VMM wrote (`loaded`) and, for a protected VM, declares all of
/// guest RAM zero first (`VM_DECLARE_ZERO`, one call: the hypervisor
/// measures declared pages that are mapped at the first run as they are,
/// so the written pages need no gap, and its list of declared ranges is
/// short), so that its measurement stays that of the image and zeros.
/// Returns the record, or `None` if
/// the hypervisor cannot take the declaration (`NOT_SUPPORTED`: before
/// that call was built; `NO_MEMORY`: its list is full): then the caller
/// donates all of guest RAM now, as before (ranges declared already do no
/// harm: donated pages are measured as they are).
fn donate_written(
    hyp: &dyn Hyp,
    handle: u64,
    plan: &Plan,
    place: &Placement,
    loaded: &Loaded,
) -> Result<Option<OnDemand>, CallError> {
    let pages = plan.memory_pages();
    let mut given = Given::new(pages);
    for &(first, count) in &loaded.written {
        given.mark(first, count);
    }
    if plan.config.protected {
        match checked(
            hyp,
            HostCall::VmDeclareZero.id(),
            &[handle, GUEST_RAM_BASE, pages, 0],
        ) {
            Ok(_) => {}
            Err(e) if matches!(e.error(), Some(Error::NotSupported | Error::NoMemory)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    for d in donations(pages, loaded).iter().filter(|d| !d.zeroed) {
        let at = d.first * PAGE_SIZE;
        checked(
            hyp,
            HostCall::VmDonate.id(),
            &[handle, place.ram(plan) + at, d.pages, GUEST_RAM_BASE + at],
        )?;
    }
    Ok(Some(OnDemand::new(given, place.ram(plan))))
}

fn create_as(
    hyp: &dyn Hyp,
    plan: &Plan,
    place: &Placement,
    bundle: &BundleRef<'_>,
    loaded: Option<(GuestRam<'_>, &Loaded)>,
    lazy: bool,
    created: &mut dyn FnMut(u64),
) -> Result<(u64, Option<OnDemand>)> {
    let r = checked(
        hyp,
        HostCall::VmCreate.id(),
        &[
            place.metadata(plan),
            plan.metadata_pages,
            // issue 12: a realm bundle (measured flag) makes a realm VM.
            plan.config.encode()
                | if bundle.manifest.flags.realm {
                    rampart_abi::host::VmConfig::REALM
                } else {
                    0
                },
        ],
    )
    .map_err(|e| explain(e, plan, place))?;
    let handle = r[1];
    crate::stats::launch_trace("VM_CREATE");
    created(handle);
    crate::stats::launch_trace("VM recorded");
    let setup = || -> Result<Option<OnDemand>> {
        for i in 0..plan.config.max_vcpus {
            checked(hyp, HostCall::VcpuCreate.id(), &[handle, i])
                .map_err(|e| explain(e, plan, place).context(format!("vCPU {i}")))?;
        }
        crate::stats::launch_trace("vCPUs created");
        let on_demand = match loaded {
            Some((_, written)) if lazy => donate_written(hyp, handle, plan, place, written)
                .map_err(|e| explain(e, plan, place))?,
            _ => None,
        };
        if on_demand.is_none() {
            donate_ram(hyp, handle, plan, place, loaded).map_err(|e| explain(e, plan, place))?;
        }
        crate::stats::launch_trace("guest RAM donated");
        checked(
            hyp,
            HostCall::VcpuSetRegs.id(),
            &[handle, 0, plan.entry_pc, plan.x0],
        )
        .map_err(|e| explain(e, plan, place))?;
        if bundle.signer != [0; 32] || bundle.signature != [0; 64] {
            let mut args = [0u64; 13];
            args[0] = handle;
            args[1..5].copy_from_slice(&bytes_to_words::<4>(&bundle.signer));
            args[5..13].copy_from_slice(&bytes_to_words::<8>(&bundle.signature));
            checked(hyp, HostCall::VmSetSignature.id(), &args)
                .map_err(|e| explain(e, plan, place))?;
        }
        Ok(on_demand)
    };
    match setup() {
        Ok(on_demand) => Ok((handle, on_demand)),
        Err(e) => {
            if let Err(d) = destroy(hyp, handle) {
                return Err(e.context(format!(
                    "and destroying the half-built VM {handle:#x} failed too: {d}"
                )));
            }
            Err(e)
        }
    }
}

/// `VM_DESTROY`, retrying `BUSY` for up to 2 s (a vCPU still running).
///
/// # Errors
///
/// The call's error.
pub fn destroy(hyp: &dyn Hyp, handle: u64) -> Result<(), CallError> {
    let mut tries = 0;
    loop {
        match checked(hyp, HostCall::VmDestroy.id(), &[handle]) {
            Err(e) if e.error() == Some(Error::Busy) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::fake::Fake;
    use crate::plan::{Overrides, plan, tests::bundle_bytes};
    use rampart_attest::{Bundle, measure_image};

    #[test]
    fn loads_and_creates_exactly_what_is_measured() {
        let image: Vec<u8> = (0..5003u32).map(|i| (i % 251) as u8).collect();
        let bytes = bundle_bytes(64 << 10, 2, true, &image);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let region =
            Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        // Garbage first: loading must zero the image's last page; the
        // pages after it are the hypervisor's to zero (`VM_DONATE_ZEROED`)
        // and must not be written by the VMM.
        region.write_bytes(0, &[0xee; 64 << 10]);
        let loaded = load_image(&region, &p, b.image);
        assert_eq!(loaded.written, [(0, 2)]);
        assert_eq!(region.read_u64(2 * 4096), 0xeeee_eeee_eeee_eeee, "past the image: untouched");

        // What the hypervisor would measure from those pages, once it has
        // zeroed the ones donated with VM_DONATE_ZEROED.
        let mut m = rampart_attest::Measurer::new(&b.manifest.initial_state());
        for page in 0..p.memory_pages() {
            let words: Vec<u8> = (0..512)
                .flat_map(|w| {
                    if page < 2 {
                        region
                            .read_u64(usize::try_from(page * 4096).unwrap() + w * 8)
                            .to_le_bytes()
                    } else {
                        [0; 8]
                    }
                })
                .collect();
            m.page(GUEST_RAM_BASE + page * 4096, &words.try_into().unwrap())
                .unwrap();
        }
        assert_eq!(m.finish(), measure_image(&b.manifest, b.image).unwrap());
        assert_eq!(b.computed_measurement(), b.measurement);

        let fake = Fake::with_scripts(vec![]);
        let place = Placement {
            region_phys: 0x7c01_0000,
        };
        let mut recorded = 0;
        let h = create_loaded(&fake, &region, &p, &place, &b, &loaded, &mut |h| recorded = h).unwrap();
        assert_eq!(h, recorded);
        let calls = fake.state.lock().unwrap().calls.clone();
        let ids: Vec<u64> = calls.iter().map(|r| r[0]).collect();
        assert_eq!(
            ids,
            [
                HostCall::VmCreate,
                HostCall::VcpuCreate,
                HostCall::VcpuCreate,
                HostCall::VmDonate,
                HostCall::VmDonateZeroed,
                HostCall::VcpuSetRegs,
                HostCall::VmSetSignature
            ]
            .map(|c| u64::from(c.id()))
        );
        assert_eq!(
            calls[0][1..4],
            [0x7c01_0000 + (64 << 10), p.metadata_pages, 0x201]
        );
        assert_eq!(calls[2][1..3], [h, 1]);
        assert_eq!(calls[3][1..5], [h, 0x7c01_0000, 2, GUEST_RAM_BASE]);
        assert_eq!(
            calls[4][1..6],
            [h, 0x7c01_2000, 14, GUEST_RAM_BASE + 0x2000, 0]
        );
        assert_eq!(calls[5][1..5], [h, 0, GUEST_RAM_BASE + 4, 64 << 10]);
        assert_eq!(
            rampart_abi::host::words_to_bytes::<32>(&calls[6][2..6]),
            b.signer
        );
        assert_eq!(
            rampart_abi::host::words_to_bytes::<64>(&calls[6][6..14]),
            b.signature
        );
        assert_eq!(region.read_u64(2 * 4096), 0xeeee_eeee_eeee_eeee, "the VMM wrote no zeros");
    }

    /// Zeroed donations come in calls of at most `DONATE_ZEROED_MAX_PAGES`
    /// that cover guest RAM after the image exactly once.
    #[test]
    fn large_zero_ranges_take_bounded_calls() {
        let bytes = bundle_bytes(5 << 20, 1, true, &[7; 100]);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let region = Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        let loaded = load_image(&region, &p, b.image);
        assert_eq!(loaded.written, [(0, 1)]);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x4000_0000 };
        create_loaded(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let zeroed = fake.calls_of(HostCall::VmDonateZeroed);
        let mut next = 1;
        for c in &zeroed {
            assert!(c[3] >= 1 && c[3] <= DONATE_ZEROED_MAX_PAGES, "{c:x?}");
            assert_eq!((c[2], c[4], c[5]), (0x4000_0000 + next * PAGE_SIZE, GUEST_RAM_BASE + next * PAGE_SIZE, 0));
            next += c[3];
        }
        assert_eq!(next, p.memory_pages());
        assert_eq!(zeroed.len(), 3, "1279 pages in calls of 512");
    }

    /// A hypervisor without `VM_DONATE_ZEROED` (`NOT_SUPPORTED`): the VMM
    /// zeroes the rest of guest RAM itself and donates it with `VM_DONATE`.
    #[test]
    fn an_older_hypervisor_gets_the_vmms_zeros() {
        let image: Vec<u8> = (0..5003u32).map(|i| (i % 251) as u8).collect();
        let bytes = bundle_bytes(64 << 10, 1, true, &image);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let region = Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        region.write_bytes(0, &[0xee; 64 << 10]);
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonateZeroed.id(), -1));
        let place = Placement { region_phys: 0x7c00_0000 };
        create_loaded(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let donated = fake.calls_of(HostCall::VmDonate);
        assert_eq!(donated.len(), 2);
        assert_eq!(donated[0][1..5], [donated[0][1], 0x7c00_0000, 2, GUEST_RAM_BASE]);
        assert_eq!(donated[1][2..5], [0x7c00_2000, 14, GUEST_RAM_BASE + 0x2000]);
        for at in (2 * 4096..64 << 10).step_by(8) {
            assert_eq!(region.read_u64(at), 0, "word {at:#x}");
        }
    }

    /// Written ranges anywhere in guest RAM (a Linux bundle's kernel,
    /// initrd and device tree): every page donated exactly once, in
    /// order, the gaps zeroed in bounded calls.
    #[test]
    fn donations_cover_guest_ram_once_in_order() {
        let mut l = Loaded::default();
        l.push(0, 3);
        l.push(2, 2); // overlaps: merged
        l.push(5, 1); // after a one-page gap
        l.push(6, 1); // touches: merged
        l.push(1200, 10);
        assert_eq!(l.written, [(0, 4), (5, 2), (1200, 10)]);
        let d = donations(1300, &l);
        let mut next = 0;
        for x in &d {
            assert_eq!(x.first, next, "{d:?}");
            assert!(x.pages > 0 && (!x.zeroed || x.pages <= DONATE_ZEROED_MAX_PAGES));
            next += x.pages;
        }
        assert_eq!(next, 1300);
        let shape: Vec<(u64, bool)> = d.iter().map(|x| (x.pages, x.zeroed)).collect();
        assert_eq!(
            shape,
            [(4, false), (1, true), (2, false), (512, true), (512, true), (169, true), (10, false), (90, true)]
        );
        // Nothing written: all zeroed; all written: one donation; a range
        // past the end is cut.
        assert!(donations(3, &Loaded::default()).iter().all(|x| x.zeroed));
        let mut all = Loaded::default();
        all.push(0, 9);
        assert_eq!(donations(4, &all), [Donation { first: 0, pages: 4, zeroed: false }]);
    }

    /// An older hypervisor with several gaps: each gap zeroed by the VMM
    /// and donated in one `VM_DONATE`, the written pages untouched.
    #[test]
    fn an_older_hypervisor_gets_every_gap_zeroed() {
        let bytes = bundle_bytes(64 << 10, 1, true, &[7; 100]);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let region = Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        region.write_bytes(0, &[0xee; 64 << 10]);
        let mut l = Loaded::default();
        l.push(1, 2);
        l.push(10, 1);
        let fake = Fake::with_scripts(vec![]);
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonateZeroed.id(), -1));
        let place = Placement { region_phys: 0x7c00_0000 };
        create_loaded(&fake, &region, &p, &place, &b, &l, &mut |_| {}).unwrap();
        let got: Vec<(u64, u64)> = fake
            .calls_of(HostCall::VmDonate)
            .iter()
            .map(|c| ((c[2] - 0x7c00_0000) / PAGE_SIZE, c[3]))
            .collect();
        assert_eq!(got, [(0, 1), (1, 2), (3, 7), (10, 1), (11, 5)]);
        for page in 0..16u64 {
            let word = region.read_u64(usize::try_from(page * PAGE_SIZE).unwrap() + 8);
            let written = (1..3).contains(&page) || page == 10;
            assert_eq!(word == 0, !written, "page {page}");
        }
    }

    /// A bundle of `memory` bytes with a 5003-byte image (2 pages), loaded
    /// over garbage, and its plan and region.
    fn loaded_bundle(memory: u64, protected: bool) -> (Vec<u8>, Plan, Mapping) {
        let image: Vec<u8> = (0..5003u32).map(|i| (i % 251) as u8).collect();
        let bytes = bundle_bytes(memory, 1, protected, &image);
        let p = plan(&Bundle::parse(&bytes).unwrap(), &Overrides::default()).unwrap();
        let region = Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        region.write_bytes(0, &vec![0xee; usize::try_from(memory).unwrap()]);
        (bytes, p, region)
    }

    /// Guest RAM pages named by donation calls `(first page, pages)`.
    fn donated_pages(fake: &Fake, ram: u64) -> Vec<(u64, u64)> {
        let s = fake.state.lock().unwrap();
        s.calls
            .iter()
            .filter(|c| {
                c[0] == u64::from(HostCall::VmDonate.id())
                    || c[0] == u64::from(HostCall::VmDonateZeroed.id())
            })
            .map(|c| ((c[2] - ram) / PAGE_SIZE, c[3]))
            .collect()
    }

    /// Issue 16, not protected: only the image's pages before the first
    /// run; no declaration (only a protected VM is measured).
    #[test]
    fn on_demand_donates_only_the_written_pages() {
        let (bytes, p, region) = loaded_bundle(1 << 20, false);
        let b = Bundle::parse(&bytes).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x7c00_0000 };
        let (h, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let d = d.expect("given on demand");
        assert_eq!(donated_pages(&fake, place.ram(&p)), [(0, 2)]);
        assert!(fake.calls_of(HostCall::VmDeclareZero).is_empty());
        assert_eq!(fake.calls_of(HostCall::VmDonate)[0][1..5], [h, place.ram(&p), 2, GUEST_RAM_BASE]);
        assert_eq!(d.given_pages(), 2);
        assert_eq!(fake.calls_of(HostCall::VcpuSetRegs).len(), 1);
    }

    /// Protected: all of guest RAM is declared zero, in one call, before
    /// the first run (the image's pages are measured as they are: they
    /// are mapped then).
    #[test]
    fn a_protected_vm_declares_the_rest_zero() {
        let (bytes, p, region) = loaded_bundle(1 << 20, true);
        let b = Bundle::parse(&bytes).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x7c00_0000 };
        let (h, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        assert_eq!(d.unwrap().given_pages(), 2);
        let declared = fake.calls_of(HostCall::VmDeclareZero);
        assert_eq!(declared.len(), 1);
        assert_eq!(declared[0][1..5], [h, GUEST_RAM_BASE, 256, 0]);
        assert_eq!(donated_pages(&fake, place.ram(&p)), [(0, 2)]);
        assert_eq!(fake.calls_of(HostCall::VmSetSignature).len(), 1);
    }

    /// A hypervisor that cannot take the declaration (`NOT_SUPPORTED`:
    /// main before branch dz; `NO_MEMORY`: its list is full): all of guest
    /// RAM is donated before the first run, exactly as `create_loaded`
    /// does, and there is no record.
    #[test]
    fn a_protected_vm_falls_back_to_eager_donation() {
        for code in [-1, -18] {
            let (bytes, p, region) = loaded_bundle(1 << 20, true);
            let b = Bundle::parse(&bytes).unwrap();
            let loaded = load_image(&region, &p, b.image);
            let fake = Fake::with_scripts(vec![]);
            fake.state.lock().unwrap().fail = Some((HostCall::VmDeclareZero.id(), code));
            let place = Placement { region_phys: 0x7c00_0000 };
            let (_, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
            assert!(d.is_none(), "code {code}");
            assert_eq!(donated_pages(&fake, place.ram(&p)), [(0, 2), (2, 254)], "code {code}");
            assert!(fake.state.lock().unwrap().live.len() == 1);
        }
        // Any other refusal fails the launch (and destroys the VM).
        let (bytes, p, region) = loaded_bundle(1 << 20, true);
        let b = Bundle::parse(&bytes).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        fake.state.lock().unwrap().fail = Some((HostCall::VmDeclareZero.id(), -16));
        let place = Placement { region_phys: 0x7c00_0000 };
        let e = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("VM_DECLARE_ZERO returned DENIED"), "{e:#}");
        assert!(fake.state.lock().unwrap().live.is_empty());
        assert!(donated_pages(&fake, place.ram(&p)).is_empty());
    }

    /// A realm may get no RAM after its first run: all of it now.
    #[test]
    fn a_realm_gets_all_its_ram_before_the_first_run() {
        let m = rampart_attest::Manifest {
            memory_size: 1 << 20,
            vcpus: 1,
            entry_offset: 0,
            flags: rampart_attest::VmFlags { protected: true, debug: false, realm: true },
        };
        let bytes = Bundle::build_unsigned(&m, &[1; 8]).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let region = Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x7c00_0000 };
        let (_, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        assert!(d.is_none());
        assert_eq!(donated_pages(&fake, place.ram(&p)), [(0, 1), (1, 255)]);
        assert!(fake.calls_of(HostCall::VmDeclareZero).is_empty());
    }

    /// A fault gives its naturally aligned chunk, clipped to guest RAM,
    /// skipping what was given; a second fault in it gives nothing; a
    /// fault outside guest RAM is not served. Faults at every page, in a
    /// scrambled order, give every page of guest RAM exactly once.
    #[test]
    fn faults_give_each_page_once_in_chunks() {
        // 1 MiB + 32 KiB, 264 pages: a last chunk of 8.
        let memory = (1 << 20) + (32 << 10);
        let (bytes, p, region) = loaded_bundle(memory, false);
        let b = Bundle::parse(&bytes).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x7c00_0000 };
        let (h, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let d = d.unwrap();
        let ram = GuestRam::from(&region);
        let serve = |ipa| d.serve(&fake, h, &p, &ram, ipa).unwrap();
        // In the image's chunk: its 30 other pages, one zeroed call.
        assert_eq!(serve(GUEST_RAM_BASE + 5 * PAGE_SIZE + 0x18), Some(30));
        let zeroed = fake.calls_of(HostCall::VmDonateZeroed);
        assert_eq!(zeroed[0][1..6], [h, place.ram(&p) + 2 * PAGE_SIZE, 30, GUEST_RAM_BASE + 2 * PAGE_SIZE, 0]);
        assert_eq!(serve(GUEST_RAM_BASE + 31 * PAGE_SIZE), Some(0), "same chunk");
        assert_eq!(serve(GUEST_RAM_BASE + 263 * PAGE_SIZE), Some(8), "clipped to RAM (264 pages)");
        assert_eq!(serve(GUEST_RAM_BASE + 264 * PAGE_SIZE), None, "past RAM");
        assert_eq!(serve(GUEST_RAM_BASE - PAGE_SIZE), None, "below RAM");
        assert_eq!(serve(0x0900_0000), None);
        for i in 0..264u64 {
            let page = (i * 97) % 264;
            serve(GUEST_RAM_BASE + page * PAGE_SIZE).unwrap();
        }
        assert_eq!(d.given_pages(), 264);
        let mut seen = vec![0u32; 264];
        for (first, pages) in donated_pages(&fake, place.ram(&p)) {
            assert!(pages <= CHUNK_PAGES || first == 0);
            for page in first..first + pages {
                seen[usize::try_from(page).unwrap()] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        assert_eq!(region.read_u64(40 * 4096), 0xeeee_eeee_eeee_eeee, "the hypervisor zeroes");
    }

    /// The fake, with each `VM_DONATE_ZEROED` taking 2 ms: long enough
    /// for a second thread to fault meanwhile.
    struct SlowDonations<'a>(&'a Fake);

    impl Hyp for SlowDonations<'_> {
        fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
            if regs[0] == u64::from(HostCall::VmDonateZeroed.id()) {
                std::thread::sleep(Duration::from_millis(2));
            }
            self.0.call_raw(regs)
        }
    }

    /// Two vCPU threads faulting in one chunk at once (released together
    /// while the first one's donation is slow): one gives it, the other
    /// gives nothing; neither fails.
    #[test]
    fn concurrent_faults_in_a_chunk_are_harmless() {
        let (bytes, p, region) = loaded_bundle(1 << 20, false);
        let b = Bundle::parse(&bytes).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x7c00_0000 };
        let (h, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let d = d.unwrap();
        let slow = SlowDonations(&fake);
        for round in 0..14u64 {
            let chunk = 1 + round % 7;
            let ipa = GUEST_RAM_BASE + chunk * CHUNK_PAGES * PAGE_SIZE;
            let start = std::sync::Barrier::new(2);
            let got: Vec<u64> = std::thread::scope(|s| {
                let t: Vec<_> = (0..2u64)
                    .map(|k| {
                        let ram = GuestRam::from(&region);
                        let (d, slow, p, start) = (&d, &slow, &p, &start);
                        s.spawn(move || {
                            start.wait();
                            if k == 1 {
                                std::thread::sleep(Duration::from_micros(500));
                            }
                            d.serve(slow, h, p, &ram, ipa + k * PAGE_SIZE).unwrap().unwrap()
                        })
                    })
                    .collect();
                t.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let expect = if round < 7 { CHUNK_PAGES } else { 0 };
            assert_eq!(got.iter().sum::<u64>(), expect, "round {round}: {got:?}");
            assert!(got.contains(&0));
        }
        assert_eq!(fake.calls_of(HostCall::VmDonateZeroed).len(), 7);
    }

    /// Without `VM_DONATE_ZEROED`: the VMM zeroes the chunk and donates it
    /// with `VM_DONATE` (and asks no more with the zeroed call).
    #[test]
    fn an_older_hypervisor_gets_the_vmms_zeros_on_demand() {
        let (bytes, p, region) = loaded_bundle(1 << 20, false);
        let b = Bundle::parse(&bytes).unwrap();
        let loaded = load_image(&region, &p, b.image);
        let fake = Fake::with_scripts(vec![]);
        let place = Placement { region_phys: 0x7c00_0000 };
        let (h, d) = create_on_demand(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let d = d.unwrap();
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonateZeroed.id(), -1));
        let ram = GuestRam::from(&region);
        assert_eq!(d.serve(&fake, h, &p, &ram, GUEST_RAM_BASE + 0x4_0000).unwrap(), Some(32));
        assert_eq!(d.serve(&fake, h, &p, &ram, GUEST_RAM_BASE + 0x6_0000).unwrap(), Some(32));
        assert_eq!(fake.calls_of(HostCall::VmDonateZeroed).len(), 1, "asked once");
        let donated = fake.calls_of(HostCall::VmDonate);
        assert_eq!(donated[1][1..5], [h, place.ram(&p) + 0x4_0000, 32, GUEST_RAM_BASE + 0x4_0000]);
        assert_eq!(donated[2][1..5], [h, place.ram(&p) + 0x6_0000, 32, GUEST_RAM_BASE + 0x6_0000]);
        for at in (0x4_0000..0x8_0000).step_by(8) {
            assert_eq!(region.read_u64(at), 0, "word {at:#x}");
        }
        assert_eq!(region.read_u64(0x8_0000), 0xeeee_eeee_eeee_eeee, "only the chunks");
        // A refused donation: an error, and the pages stay unrecorded.
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonate.id(), -18));
        let e = d.serve(&fake, h, &p, &ram, GUEST_RAM_BASE + 0x8_0000).unwrap_err();
        assert_eq!(e.error(), Some(Error::NoMemory));
        assert_eq!(d.given_pages(), 66);
        // DENIED: held already (`migrate-out` filled the VM's RAM before a
        // failed export). Retried page by page; each page DENIED is the
        // VM's, recorded, nothing given, no error.
        let before = fake.calls_of(HostCall::VmDonate).len();
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonate.id(), -16));
        assert_eq!(d.serve(&fake, h, &p, &ram, GUEST_RAM_BASE + 0x8_0000).unwrap(), Some(0));
        assert_eq!(fake.calls_of(HostCall::VmDonate).len(), before + 1 + 32, "the chunk, then each page");
        assert_eq!(d.given_pages(), 98);
    }

    #[test]
    fn the_record_of_given_pages() {
        let mut g = Given::new(130);
        g.mark(0, 2);
        g.mark(63, 3);
        g.mark(128, 10);
        assert_eq!(g.count(), 7);
        assert!(g.contains(64) && !g.contains(66) && g.contains(129) && !g.contains(130));
        assert_eq!(g.missing(0, 200), [(2, 61), (66, 62)]);
        assert_eq!(g.missing(64, 66), []);
        assert_eq!(Given::new(0).missing(0, 5), []);
    }

    #[test]
    fn a_failed_step_destroys_the_vm_and_explains() {
        let bytes = bundle_bytes(64 << 10, 1, true, &[1; 100]);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let fake = Fake::with_scripts(vec![]);
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonate.id(), -18));
        let place = Placement {
            region_phys: 0x7c00_0000,
        };
        let e = format!(
            "{:#}",
            create(&fake, &p, &place, &b, &mut |_| {}).unwrap_err()
        );
        assert!(
            e.contains("VM_DONATE returned NO_MEMORY") && e.contains("--stage2-pages"),
            "{e}"
        );
        assert!(fake.state.lock().unwrap().live.is_empty(), "destroyed");
        assert_eq!(fake.calls_of(HostCall::VmDestroy).len(), 1);

        fake.state.lock().unwrap().fail = Some((HostCall::VmCreate.id(), -18));
        let e = format!(
            "{:#}",
            create(&fake, &p, &place, &b, &mut |_| {}).unwrap_err()
        );
        assert!(e.contains("every VM slot is in use"), "{e}");
    }

    #[test]
    fn an_unsigned_bundle_sets_no_signature() {
        let m = rampart_attest::Manifest {
            memory_size: 8192,
            vcpus: 1,
            entry_offset: 0,
            flags: rampart_attest::VmFlags::default(),
        };
        let bytes = Bundle::build_unsigned(&m, &[1; 8]).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let fake = Fake::with_scripts(vec![]);
        create(&fake, &p, &Placement { region_phys: 0 }, &b, &mut |_| {}).unwrap();
        assert!(fake.calls_of(HostCall::VmSetSignature).is_empty());
        assert_eq!(fake.calls_of(HostCall::VmCreate)[0][3], 0x100);
    }
}
