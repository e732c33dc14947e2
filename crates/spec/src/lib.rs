//! Rampart's executable specification (issue 15).
//!
//! An abstract state — who owns, shares or borrows every page of RAM and
//! why, every VM's and vCPU's lifecycle, the handles' generations — and,
//! for every host call and every guest call that changes ownership, a
//! [`Prediction`]: the set of result codes `docs/abi.md` allows from that
//! state, and what the state becomes on success. The hypervisor's test
//! build (`--features oracle`, `hyp/src/oracle.rs`) runs it beside the real
//! implementation and reports every disagreement.
//!
//! It is written from `docs/abi.md` and `docs/design.md`, **not** from the
//! implementation: it shares no code with `rampart-ownership` (only the ABI's
//! numbers and register decoding from `rampart-abi`), so a bug has to be made
//! twice, the same way, to go unseen.
//!
//! Where the contract allows several answers (`NO_MEMORY` when the page pool
//! runs low, `BUSY` for a pinned page or a vCPU running on another CPU, the
//! order of errors the ABI does not fix) the prediction is a set. A failed
//! call changes nothing; a successful one applies its [`Effect`].
#![no_std]
#![allow(
    clippy::cast_possible_truncation,
    reason = "slots (< MAX_VMS), vCPU indices (< 8) and error codes (> -63) are small"
)]

use rampart_abi::Error;
use rampart_abi::guest::GuestCall;
use rampart_abi::host::{HostRequest, MAX_VCPUS, PageRange, VmConfig, VmHandle};

/// Size of a page.
pub const PAGE: u64 = 4096;
/// VM slots the hypervisor has (a build constant of the hypervisor).
pub const MAX_VMS: usize = 16;
/// The low 32 bits of a handle are `HANDLE_BASE + slot`.
pub const HANDLE_BASE: u64 = 0x1000;
/// A slot whose generation reaches this is retired.
pub const RETIRED: u32 = u32::MAX;
/// RAM banks the specification follows.
pub const MAX_BANKS: usize = 8;
/// Guest-physical runs remembered per VM; beyond them the VM's address
/// space is *imprecise* (see [`VmSpec::imprecise`]).
pub const MAX_RUNS: usize = 128;
/// Metadata pages a VM needs beyond one per vCPU and one for the VM.
pub const META_TABLE_PAGES: u64 = 8;

/// The abstract state of one page: its owner, its borrower and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The host owns it exclusively.
    Host,
    /// The host owns it and lent it to the hypervisor (`SHARE_HYP`).
    HostSharedHyp,
    /// The host owns it and lent it to VM `slot` (`VM_SHARE`).
    HostSharedVm(u8),
    /// The hypervisor's own (carve-out, holes between banks): never the
    /// host's to take.
    HypOwn,
    /// The hypervisor's because the host donated it (`DONATE_HYP`): the
    /// only pages `RECLAIM_HYP` gives back.
    HypDonated,
    /// Held by the hypervisor for VM `slot`'s metadata (`VM_CREATE`).
    VmMeta(u8),
    /// Owned by VM `slot` (`VM_DONATE`).
    Vm(u8),
    /// Owned by VM `slot` and lent to the host (`KVM_MEM_SHARE`).
    VmSharedHost(u8),
}

impl Page {
    /// One byte per page: kind in bits 7:5, slot in bits 4:0.
    #[must_use]
    pub const fn encode(self) -> u8 {
        let (kind, slot) = match self {
            Page::Host => (0, 0),
            Page::HostSharedHyp => (1, 0),
            Page::HostSharedVm(s) => (2, s),
            Page::HypOwn => (3, 0),
            Page::HypDonated => (4, 0),
            Page::VmMeta(s) => (5, s),
            Page::Vm(s) => (6, s),
            Page::VmSharedHost(s) => (7, s),
        };
        (kind << 5) | (slot & 0x1f)
    }

    /// The inverse of [`Page::encode`].
    #[must_use]
    pub const fn decode(byte: u8) -> Page {
        let slot = byte & 0x1f;
        match byte >> 5 {
            0 => Page::Host,
            1 => Page::HostSharedHyp,
            2 => Page::HostSharedVm(slot),
            3 => Page::HypOwn,
            4 => Page::HypDonated,
            5 => Page::VmMeta(slot),
            6 => Page::Vm(slot),
            _ => Page::VmSharedHost(slot),
        }
    }

    /// Whether the host may read and write it (its stage 2 and the SMMU
    /// mirror map exactly these pages).
    #[must_use]
    pub const fn host_reachable(self) -> bool {
        matches!(
            self,
            Page::Host | Page::HostSharedHyp | Page::HostSharedVm(_) | Page::VmSharedHost(_)
        )
    }

    /// Whether VM `slot`'s stage 2 may map it.
    #[must_use]
    pub const fn vm_reachable(self, slot: u8) -> bool {
        matches!(self, Page::Vm(s) | Page::VmSharedHost(s) | Page::HostSharedVm(s) if s == slot)
    }

    /// Whether a live hypervisor structure (or the hypervisor's memory) may
    /// be in it: never host-reachable, never reclaimable.
    #[must_use]
    pub const fn hyp_structure(self) -> bool {
        matches!(self, Page::HypOwn | Page::VmMeta(_))
    }
}

/// A set of result codes (`SUCCESS` and the ABI's negative errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Outcomes(u64);

impl Outcomes {
    /// No outcome at all (the start of a union).
    pub const NONE: Outcomes = Outcomes(0);
    /// Any result code: for calls whose result the specification leaves
    /// to other checks (they change no ownership).
    pub const ANY: Outcomes = Outcomes(u64::MAX);

    const fn bit(code: i64) -> u64 {
        if code <= 0 && code > -63 {
            1 << (-code) as u32
        } else {
            1 << 63
        }
    }

    /// Just `code`.
    #[must_use]
    pub const fn only(code: i64) -> Outcomes {
        Outcomes(Self::bit(code))
    }

    /// Just success.
    #[must_use]
    pub const fn success() -> Outcomes {
        Outcomes::only(0)
    }

    /// Just `error`.
    #[must_use]
    pub const fn error(error: Error) -> Outcomes {
        Outcomes::only(error.code())
    }

    /// This set and `code`.
    #[must_use]
    pub const fn or(self, code: i64) -> Outcomes {
        Outcomes(self.0 | Self::bit(code))
    }

    /// This set and `error`.
    #[must_use]
    pub const fn or_error(self, error: Error) -> Outcomes {
        self.or(error.code())
    }

    /// Whether `code` is allowed.
    #[must_use]
    pub const fn allows(self, code: i64) -> bool {
        self.0 & Self::bit(code) != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether success is allowed.
    #[must_use]
    pub const fn allows_success(self) -> bool {
        self.allows(0)
    }
}

impl core::fmt::Display for Outcomes {
    /// `{SUCCESS, NO_MEMORY}`, or `any`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if *self == Outcomes::ANY {
            return f.write_str("any");
        }
        f.write_str("{")?;
        let mut first = true;
        for code in (0..63).map(|c: i64| -c).filter(|&c| self.allows(c)) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            match Error::try_from(code) {
                Ok(e) => f.write_str(e.name())?,
                Err(_) if code == 0 => f.write_str("SUCCESS")?,
                Err(_) => write!(f, "{code}")?,
            }
        }
        f.write_str("}")
    }
}

/// What a successful call does to the abstract state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the specification follows changes.
    None,
    /// Every page of `range` becomes `to`; `zero`: they must read as zero
    /// when the call returns.
    SetPages {
        /// The pages.
        range: PageRange,
        /// Their new state.
        to: Page,
        /// Whether they must be zero on return.
        zero: bool,
    },
    /// `VM_CREATE`: the metadata pages are held for the new VM, whose handle
    /// the call returns in `x1`.
    CreateVm {
        /// The metadata.
        metadata: PageRange,
        /// Its configuration.
        config: VmConfig,
    },
    /// `VM_DESTROY` of the VM in `slot`.
    DestroyVm {
        /// The slot.
        slot: u8,
    },
    /// `VCPU_CREATE`.
    CreateVcpu {
        /// The VM's slot.
        slot: u8,
        /// The vCPU.
        index: u8,
    },
    /// `VM_DONATE` / `VM_SHARE`.
    GiveVm {
        /// The VM's slot.
        slot: u8,
        /// Host pages.
        range: PageRange,
        /// Where in the guest.
        ipa: u64,
        /// Lent (`VM_SHARE`) rather than given.
        share: bool,
    },
    /// `KVM_MEM_RELINQUISH`: the guest page at `ipa` (physical `pa`) leaves
    /// the VM and returns to the host, zeroed.
    Relinquish {
        /// The VM's slot.
        slot: u8,
        /// Guest-physical page.
        ipa: u64,
        /// Its physical page.
        pa: u64,
    },
}

/// A prediction: the allowed results and, on success, the effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// Result codes the contract allows.
    pub allowed: Outcomes,
    /// What success does.
    pub effect: Effect,
}

impl Prediction {
    const fn refuse(allowed: Outcomes) -> Prediction {
        Prediction {
            allowed,
            effect: Effect::None,
        }
    }
}

/// A disagreement between the hypervisor and the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The result code is not one the contract allows.
    Result {
        /// What the hypervisor returned.
        got: i64,
        /// What was allowed.
        allowed: Outcomes,
    },
    /// `VM_CREATE` succeeded with a handle no free slot could have given.
    Handle {
        /// The handle returned.
        got: u64,
    },
}

/// A guest-physical run of a VM: `pages` pages at `ipa` backed by `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Run {
    /// Guest-physical start.
    pub ipa: u64,
    /// Physical start.
    pub pa: u64,
    /// Pages.
    pub pages: u64,
}

/// What the specification knows about one live VM.
#[derive(Clone, Copy, Debug)]
pub struct VmSpec {
    /// Its handle.
    pub handle: u64,
    /// Its configuration.
    pub config: VmConfig,
    /// Its metadata pages.
    pub metadata: PageRange,
    /// vCPUs created (bit i = vCPU i).
    pub vcpus: u8,
    /// Its guest-physical memory, as runs (`runs[..run_count]`).
    pub runs: [Run; MAX_RUNS],
    /// How many of `runs` are in use.
    pub run_count: usize,
    /// More runs than [`MAX_RUNS`] were needed: the specification no
    /// longer knows this VM's guest-physical layout exactly, and its
    /// predictions that depend on it admit either answer.
    pub imprecise: bool,
}

impl VmSpec {
    /// The physical page behind guest page `ipa`, if the VM has one there.
    #[must_use]
    pub fn translate(&self, ipa: u64) -> Option<u64> {
        self.runs.get(..self.run_count)?.iter().find_map(|r| {
            let off = ipa.checked_sub(r.ipa)?;
            (off < r.pages * PAGE).then(|| r.pa + (off & !(PAGE - 1)))
        })
    }

    /// Whether any of `pages` guest pages from `ipa` is mapped.
    #[must_use]
    pub fn any_mapped(&self, ipa: u64, pages: u64) -> bool {
        let end = ipa.saturating_add(pages.saturating_mul(PAGE));
        self.runs
            .iter()
            .take(self.run_count)
            .any(|r| r.ipa < end && ipa < r.ipa + r.pages * PAGE)
    }

    fn add_run(&mut self, run: Run) {
        if let Some(last) = self
            .run_count
            .checked_sub(1)
            .and_then(|i| self.runs.get_mut(i))
            && last.ipa + last.pages * PAGE == run.ipa
            && last.pa + last.pages * PAGE == run.pa
        {
            last.pages += run.pages;
            return;
        }
        match self.runs.get_mut(self.run_count) {
            Some(slot) => {
                *slot = run;
                self.run_count += 1;
            }
            None => self.imprecise = true,
        }
    }

    /// Removes guest page `ipa`, splitting its run.
    fn remove_page(&mut self, ipa: u64) {
        let Some(i) = self
            .runs
            .iter()
            .take(self.run_count)
            .position(|r| r.ipa <= ipa && ipa < r.ipa + r.pages * PAGE)
        else {
            return;
        };
        let r = self.runs[i];
        let before = (ipa - r.ipa) / PAGE;
        let after = r.pages - before - 1;
        let tail = Run {
            ipa: ipa + PAGE,
            pa: r.pa + (before + 1) * PAGE,
            pages: after,
        };
        if before == 0 {
            self.runs[i] = tail;
        } else {
            self.runs[i].pages = before;
            if after > 0 {
                self.add_run_anywhere(tail);
            }
        }
        if self.runs[i].pages == 0 {
            self.runs[i] = self.runs[self.run_count - 1];
            self.run_count -= 1;
        }
    }

    fn add_run_anywhere(&mut self, run: Run) {
        match self.runs.get_mut(self.run_count) {
            Some(slot) => {
                *slot = run;
                self.run_count += 1;
            }
            None => self.imprecise = true,
        }
    }
}

/// The abstract state.
pub struct Spec<'a> {
    /// One [`Page::encode`] byte per page from `base`.
    pages: &'a mut [u8],
    /// Physical address of the first page.
    base: u64,
    banks: [(u64, u64); MAX_BANKS],
    bank_count: usize,
    carveout: [(u64, u64); 2],
    ipa_bits: u32,
    /// Live VMs by slot.
    pub vms: [Option<VmSpec>; MAX_VMS],
    /// Every slot's generation.
    pub generations: [u32; MAX_VMS],
}

/// Returns the slot a handle names, if it is live in `spec`.
fn live_slot(spec: &Spec<'_>, handle: u64) -> Option<usize> {
    let slot = (handle & 0xffff_ffff).checked_sub(HANDLE_BASE)? as usize;
    spec.vms
        .get(slot)?
        .as_ref()
        .filter(|vm| vm.handle == handle)
        .map(|_| slot)
}

impl<'a> Spec<'a> {
    /// A state with no memory yet; [`Spec::init`] gives it the machine.
    #[must_use]
    pub const fn empty(pages: &'a mut [u8]) -> Self {
        Spec {
            pages,
            base: 0,
            banks: [(0, 0); MAX_BANKS],
            bank_count: 0,
            carveout: [(0, 0); 2],
            ipa_bits: 0,
            vms: [None; MAX_VMS],
            generations: [0; MAX_VMS],
        }
    }

    /// The state at boot: the host owns all RAM but the carve-out
    /// (`carveout`: its fixed and boot-sized parts), the hypervisor owns the
    /// carve-out and the holes between banks; no VM. `pages` must hold one
    /// byte per page from the lowest bank's start to the highest's end.
    /// Returns false (changing nothing) if it does not, or for more than
    /// [`MAX_BANKS`] banks.
    pub fn init(
        &mut self,
        pages: &'a mut [u8],
        banks: &[(u64, u64)],
        carveout: [(u64, u64); 2],
        ipa_bits: u32,
    ) -> bool {
        let (Some(low), Some(high)) = (
            banks.iter().map(|b| b.0).min(),
            banks.iter().map(|b| b.1).max(),
        ) else {
            return false;
        };
        if banks.len() > MAX_BANKS || (high - low) / PAGE > pages.len() as u64 {
            return false;
        }
        self.pages = pages;
        self.base = low;
        self.bank_count = banks.len();
        self.banks[..banks.len()].copy_from_slice(banks);
        self.carveout = carveout;
        self.ipa_bits = ipa_bits;
        self.vms = [None; MAX_VMS];
        self.generations = [0; MAX_VMS];
        for (i, byte) in self.pages.iter_mut().enumerate() {
            let pa = low + i as u64 * PAGE;
            let in_ram = banks.iter().any(|b| b.0 <= pa && pa < b.1);
            let in_carveout = carveout.iter().any(|c| c.0 <= pa && pa < c.1);
            *byte = if in_ram && !in_carveout {
                Page::Host
            } else {
                Page::HypOwn
            }
            .encode();
        }
        true
    }

    /// The first page followed and how many.
    #[must_use]
    pub fn span(&self) -> (u64, u64) {
        (self.base, self.pages.len() as u64)
    }

    /// RAM banks.
    #[must_use]
    pub fn banks(&self) -> &[(u64, u64)] {
        self.banks.get(..self.bank_count).unwrap_or(&[])
    }

    /// The abstract state of the page at `pa`, if it is followed.
    #[must_use]
    pub fn page(&self, pa: u64) -> Option<Page> {
        let index = pa.checked_sub(self.base)? / PAGE;
        self.pages
            .get(usize::try_from(index).ok()?)
            .map(|b| Page::decode(*b))
    }

    fn set(&mut self, pa: u64, page: Page) {
        if let Some(index) = pa
            .checked_sub(self.base)
            .map(|o| o / PAGE)
            .and_then(|i| usize::try_from(i).ok())
            && let Some(b) = self.pages.get_mut(index)
        {
            *b = page.encode();
        }
    }

    fn in_one_bank(&self, range: &PageRange) -> bool {
        self.banks()
            .iter()
            .any(|b| b.0 <= range.start() && range.end() <= b.1)
    }

    fn overlaps_carveout(&self, range: &PageRange) -> bool {
        self.carveout
            .iter()
            .any(|c| range.start() < c.1 && c.0 < range.end())
    }

    fn all(&self, range: &PageRange, f: impl Fn(Page) -> bool) -> bool {
        (0..range.pages()).all(|i| self.page(range.start() + i * PAGE).is_some_and(&f))
    }

    /// Predicts a host call from its registers `x0`..`x17`.
    #[must_use]
    pub fn predict_host(&self, regs: &[u64; 18]) -> Prediction {
        let request = match HostRequest::decode(regs) {
            Ok(r) => r,
            Err(e) => return Prediction::refuse(Outcomes::error(e)),
        };
        match request {
            HostRequest::ShareHyp(r) => {
                self.memory_call(r, |p| p == Page::Host, Page::HostSharedHyp, false, false)
            }
            HostRequest::DonateHyp(r) => {
                self.memory_call(r, |p| p == Page::Host, Page::HypDonated, false, false)
            }
            HostRequest::UnshareHyp(r) => {
                self.memory_call(r, |p| p == Page::HostSharedHyp, Page::Host, true, false)
            }
            HostRequest::ReclaimHyp(r) => {
                self.memory_call(r, |p| p == Page::HypDonated, Page::Host, false, true)
            }
            HostRequest::VmCreate { metadata, config } => self.vm_create(metadata, config),
            HostRequest::VmDestroy(VmHandle(h)) => match live_slot(self, h) {
                None => Prediction::refuse(Outcomes::error(Error::InvalidParameter)),
                Some(slot) => Prediction {
                    allowed: Outcomes::success().or_error(Error::Busy),
                    effect: Effect::DestroyVm { slot: slot as u8 },
                },
            },
            HostRequest::VcpuCreate(v) => {
                match live_slot(self, v.vm.0).and_then(|s| Some((s, self.vms[s].as_ref()?))) {
                    None => Prediction::refuse(Outcomes::error(Error::InvalidParameter)),
                    Some((_, vm)) if v.index as u64 >= vm.config.max_vcpus => {
                        Prediction::refuse(Outcomes::error(Error::InvalidParameter))
                    }
                    // Existing: DENIED, or BUSY while it runs on another CPU.
                    Some((_, vm)) if vm.vcpus & (1 << v.index) != 0 => {
                        Prediction::refuse(Outcomes::error(Error::Denied).or_error(Error::Busy))
                    }
                    Some((slot, _)) => Prediction {
                        allowed: Outcomes::success(),
                        effect: Effect::CreateVcpu {
                            slot: slot as u8,
                            index: v.index as u8,
                        },
                    },
                }
            }
            HostRequest::VmDonate {
                vm,
                pages,
                guest_address,
            } => self.give(vm, pages, guest_address, false),
            HostRequest::VmShare {
                vm,
                pages,
                guest_address,
            } => self.give(vm, pages, guest_address, true),
            // No ownership changes; results checked by other tests.
            HostRequest::Version
            | HostRequest::Features(_)
            | HostRequest::VcpuSetRegs { .. }
            | HostRequest::VcpuRun { .. }
            | HostRequest::VcpuInject { .. }
            | HostRequest::VmSetSignature { .. }
            | HostRequest::AttestationKey
            | HostRequest::VmList(_)
            | HostRequest::OracleCheck => Prediction::refuse(Outcomes::ANY),
        }
    }

    /// The four memory calls: errors in the documented order.
    fn memory_call(
        &self,
        range: PageRange,
        before: impl Fn(Page) -> bool,
        to: Page,
        returns: bool,
        reclaim: bool,
    ) -> Prediction {
        if !self.in_one_bank(&range) {
            return Prediction::refuse(Outcomes::error(Error::Range));
        }
        if (reclaim && self.overlaps_carveout(&range)) || !self.all(&range, before) {
            return Prediction::refuse(Outcomes::error(Error::Denied));
        }
        let mut allowed = Outcomes::success().or_error(Error::NoMemory);
        if returns {
            // A page the hypervisor pinned.
            allowed = allowed.or_error(Error::Busy);
        }
        Prediction {
            allowed,
            effect: Effect::SetPages {
                range,
                to,
                zero: reclaim,
            },
        }
    }

    fn vm_create(&self, metadata: PageRange, config: VmConfig) -> Prediction {
        // The ABI fixes no order between these: any that applies; and
        // NO_MEMORY (no free slot, or the pool) may come before any of them.
        let mut errors = Outcomes::NONE;
        if metadata.pages() < 1 + config.max_vcpus + META_TABLE_PAGES {
            errors = errors.or_error(Error::InvalidParameter);
        }
        if !self.in_one_bank(&metadata) {
            errors = errors.or_error(Error::Range);
        } else if !self.all(&metadata, |p| p == Page::Host) {
            errors = errors.or_error(Error::Denied);
        }
        let free = (0..MAX_VMS).any(|s| self.vms[s].is_none() && self.generations[s] != RETIRED);
        let allowed = if errors.is_empty() && free {
            Outcomes::success()
        } else {
            errors
        };
        Prediction {
            allowed: allowed.or_error(Error::NoMemory),
            effect: Effect::CreateVm { metadata, config },
        }
    }

    fn give(&self, vm: VmHandle, range: PageRange, ipa: u64, share: bool) -> Prediction {
        let Some(slot) = live_slot(self, vm.0) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let Some(spec) = self.vms[slot].as_ref() else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        // The ABI fixes no order between these: any that applies. NO_MEMORY
        // (the VM's stage-2 pages, or the pool) may come before any of them.
        let mut errors = Outcomes::NONE;
        if !ipa.is_multiple_of(PAGE) {
            errors = errors.or_error(Error::InvalidParameter);
        }
        let ipa_end = range
            .pages()
            .checked_mul(PAGE)
            .and_then(|b| ipa.checked_add(b));
        let ipa_fits = ipa_end.is_some_and(|end| self.ipa_bits >= 64 || end <= 1 << self.ipa_bits);
        if ipa_end.is_none() {
            // Wrapping past 2^64: malformed, or beyond the address space.
            errors = errors.or_error(Error::InvalidParameter);
        }
        if !self.in_one_bank(&range) || !ipa_fits {
            errors = errors.or_error(Error::Range);
        }
        if share && spec.config.protected {
            errors = errors.or_error(Error::Denied);
        }
        if self.in_one_bank(&range) && !self.all(&range, |p| p == Page::Host) {
            errors = errors.or_error(Error::Denied);
        }
        if ipa_fits && spec.any_mapped(ipa, range.pages()) {
            errors = errors.or_error(Error::Denied);
        }
        let mut allowed = if errors.is_empty() {
            Outcomes::success()
        } else {
            errors
        };
        if spec.imprecise {
            allowed = allowed.or_error(Error::Denied);
        }
        Prediction {
            allowed: allowed.or_error(Error::NoMemory),
            effect: Effect::GiveVm {
                slot: slot as u8,
                range,
                ipa,
                share,
            },
        }
    }

    /// Predicts guest call `function` with `x1`..`x3` from the VM in
    /// `slot`; `None` for calls that change no ownership. `concrete_pa` is
    /// the page the VM's real stage 2 maps at `x1`, used only when the
    /// specification lost track of this VM's layout ([`VmSpec::imprecise`]).
    #[must_use]
    pub fn predict_guest(
        &self,
        slot: usize,
        function: u32,
        args: [u64; 3],
        concrete_pa: Option<u64>,
    ) -> Option<Prediction> {
        let call = GuestCall::try_from(function).ok()?;
        if !matches!(
            call,
            GuestCall::MemShare | GuestCall::MemUnshare | GuestCall::MemRelinquish
        ) {
            return None;
        }
        let invalid = Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        let vm = self.vms.get(slot)?.as_ref()?;
        if !vm.config.protected {
            return Some(Prediction::refuse(Outcomes::error(Error::NotSupported)));
        }
        let [ipa, x2, x3] = args;
        if !ipa.is_multiple_of(PAGE) || x2 != 0 || x3 != 0 {
            return Some(invalid);
        }
        let pa = if vm.imprecise {
            concrete_pa
        } else {
            vm.translate(ipa)
        };
        let Some(pa) = pa else { return Some(invalid) };
        let s = slot as u8;
        let page = self.page(pa)?;
        let range = PageRange::new(pa, 1).ok()?;
        // A refused call is INVALID_PARAMETER, also when the pool is low.
        let ok = Outcomes::success().or_error(Error::InvalidParameter);
        Some(match (call, page) {
            (GuestCall::MemShare, Page::Vm(o)) if o == s => Prediction {
                allowed: ok,
                effect: Effect::SetPages {
                    range,
                    to: Page::VmSharedHost(s),
                    zero: false,
                },
            },
            (GuestCall::MemUnshare, Page::VmSharedHost(o)) if o == s => Prediction {
                allowed: ok,
                effect: Effect::SetPages {
                    range,
                    to: Page::Vm(s),
                    zero: false,
                },
            },
            (GuestCall::MemRelinquish, Page::Vm(o)) if o == s => Prediction {
                allowed: ok,
                effect: Effect::Relinquish { slot: s, ipa, pa },
            },
            _ => invalid,
        })
    }

    /// Calls `f` with every range the effect leaves that must read as zero
    /// once the call returns (computed before [`Spec::commit`]).
    pub fn must_be_zero(&self, effect: &Effect, f: &mut dyn FnMut(u64, u64)) {
        match *effect {
            Effect::SetPages {
                range, zero: true, ..
            } => f(range.start(), range.pages()),
            Effect::Relinquish { pa, .. } => f(pa, 1),
            Effect::DestroyVm { slot } => {
                let mut run: Option<(u64, u64)> = None;
                for (i, b) in self.pages.iter().enumerate() {
                    let pa = self.base + i as u64 * PAGE;
                    let zeroed = matches!(Page::decode(*b), Page::Vm(s) | Page::VmSharedHost(s) | Page::VmMeta(s) if s == slot);
                    run = match (run, zeroed) {
                        (Some((start, n)), true) if start + n * PAGE == pa => Some((start, n + 1)),
                        (Some((start, n)), true) => {
                            f(start, n);
                            Some((pa, 1))
                        }
                        (None, true) => Some((pa, 1)),
                        (Some((start, n)), false) => {
                            f(start, n);
                            None
                        }
                        (None, false) => None,
                    };
                }
                if let Some((start, n)) = run {
                    f(start, n);
                }
            }
            _ => {}
        }
    }

    /// Checks the real result (`x0`, and `x1` for `VM_CREATE`) against the
    /// prediction and, on success, applies the effect. On a violation the
    /// state is left alone when the call failed and follows the success
    /// otherwise, so one bug is reported once.
    ///
    /// # Errors
    ///
    /// The [`Violation`].
    pub fn commit(&mut self, prediction: &Prediction, x0: i64, x1: u64) -> Result<(), Violation> {
        let allowed = prediction.allowed;
        let verdict = if allowed.allows(x0) {
            Ok(())
        } else {
            Err(Violation::Result { got: x0, allowed })
        };
        if x0 != 0 {
            return verdict;
        }
        match prediction.effect {
            Effect::None => {}
            Effect::SetPages { range, to, .. } => self.set_range(range, to),
            Effect::CreateVm { metadata, config } => {
                let slot = (x1 & 0xffff_ffff)
                    .checked_sub(HANDLE_BASE)
                    .map(|s| s as usize);
                let fits = slot.filter(|&s| {
                    s < MAX_VMS
                        && self.vms[s].is_none()
                        && self.generations[s] != RETIRED
                        && x1 >> 32 == u64::from(self.generations[s])
                });
                let Some(slot) = fits else {
                    return verdict.and(Err(Violation::Handle { got: x1 }));
                };
                self.set_range(metadata, Page::VmMeta(slot as u8));
                self.vms[slot] = Some(VmSpec {
                    handle: x1,
                    config,
                    metadata,
                    vcpus: 0,
                    runs: [Run::default(); MAX_RUNS],
                    run_count: 0,
                    imprecise: false,
                });
            }
            Effect::DestroyVm { slot } => {
                let s = usize::from(slot);
                for b in self.pages.iter_mut() {
                    let back = matches!(Page::decode(*b),
                        Page::Vm(o) | Page::VmSharedHost(o) | Page::VmMeta(o) | Page::HostSharedVm(o) if o == slot);
                    if back {
                        *b = Page::Host.encode();
                    }
                }
                if let Some(vm) = self.vms.get_mut(s) {
                    *vm = None;
                }
                if let Some(g) = self.generations.get_mut(s) {
                    *g = g.saturating_add(1);
                }
            }
            Effect::CreateVcpu { slot, index } => {
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.vcpus |= 1 << index;
                }
            }
            Effect::GiveVm {
                slot,
                range,
                ipa,
                share,
            } => {
                self.set_range(
                    range,
                    if share {
                        Page::HostSharedVm(slot)
                    } else {
                        Page::Vm(slot)
                    },
                );
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.add_run(Run {
                        ipa,
                        pa: range.start(),
                        pages: range.pages(),
                    });
                }
            }
            Effect::Relinquish { slot, ipa, pa } => {
                self.set(pa, Page::Host);
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.remove_page(ipa);
                }
            }
        }
        verdict
    }

    fn set_range(&mut self, range: PageRange, to: Page) {
        for i in 0..range.pages() {
            self.set(range.start() + i * PAGE, to);
        }
    }
}

/// The vCPU limit, re-exported for the hook.
pub const VCPU_LIMIT: u64 = MAX_VCPUS;

#[cfg(test)]
mod tests;
