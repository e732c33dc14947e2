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

/// Granules a protected VM may have mapped with `KVM_MMIO_GUARD_MAP` at
/// once (`docs/abi.md`); a map beyond them is refused.
pub const GUARD_PAGES: usize = 32;

/// A vCPU's PSCI power state (`docs/abi.md`, `VCPU_CREATE` and the PSCI
/// guest calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Off: `VCPU_RUN` answers `EXIT_POWERED_OFF` and enters nothing.
    Off,
    /// Turned on by `CPU_ON`, not yet run.
    Pending,
    /// On.
    On,
}

/// The abstract state of one page: its owner, its borrower and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The host owns it exclusively.
    Host,
    /// The host owns it and lent it to the hypervisor (`SHARE_HYP`).
    HostSharedHyp,
    /// Lent to the hypervisor and bound as a control channel's call page
    /// (`BIND`): pinned, so `UNSHARE_HYP` is `BUSY` and every other
    /// ownership change `DENIED` until the channel unbinds it.
    HostPinnedHyp,
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
            Page::HostPinnedHyp => (1, 1),
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
            1 if slot == 0 => Page::HostSharedHyp,
            1 => Page::HostPinnedHyp,
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
            Page::Host
                | Page::HostSharedHyp
                | Page::HostPinnedHyp
                | Page::HostSharedVm(_)
                | Page::VmSharedHost(_)
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

    /// The union of this set and `other`.
    #[must_use]
    pub const fn union(self, other: Outcomes) -> Outcomes {
        Outcomes(self.0 | other.0)
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
        /// A realm VM (`VM_CREATE` config bit 2, issue 12).
        realm: bool,
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
    /// `VM_SET_SIGNATURE` of the VM in `slot`.
    Sign {
        /// The slot.
        slot: u8,
    },
    /// A call that changes nothing and returns exactly `x1` (`VM_LIST`).
    List {
        /// The handle `x1` must hold.
        x1: u64,
    },
    /// A call that changes nothing and must return exactly `x0` (a guest
    /// call answering a value, e.g. `SMCCC_VERSION`); its
    /// [`Prediction::allowed`] is [`Outcomes::ANY`].
    Value {
        /// The value `x0` must hold.
        x0: u64,
    },
    /// `VCPU_RUN` of vCPU `index` of the VM in `slot`: see
    /// [`Spec::enter`] and [`Spec::finish_run`].
    Run {
        /// The VM's slot.
        slot: u8,
        /// The vCPU.
        index: u8,
        /// It is powered off: the only success is `EXIT_POWERED_OFF`
        /// without entering the guest.
        off: bool,
    },
    /// A PSCI call sets vCPU `index`'s power state (`CPU_ON`: `Pending`;
    /// `CPU_OFF`: `Off`, ending the run with `EXIT_POWERED_OFF`).
    Power {
        /// The VM's slot.
        slot: u8,
        /// The vCPU.
        index: u8,
        /// Its new state.
        to: Power,
    },
    /// `KVM_MMIO_GUARD_MAP` (`map`) or `_UNMAP` of granule `page`.
    Guard {
        /// The VM's slot.
        slot: u8,
        /// Guest-physical granule.
        page: u64,
        /// Map rather than unmap.
        map: bool,
    },
    /// A control channel's `BIND` of `page`: it becomes the channel's call
    /// page, pinned.
    Bind {
        /// The channel.
        channel: u8,
        /// The page.
        page: u64,
    },
    /// A control channel's `BIND` of 0: its call page `page` is unpinned.
    Unbind {
        /// The channel.
        channel: u8,
        /// The page.
        page: u64,
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
    /// `VM_EVICT` (sealed swap): as [`Effect::Relinquish`], and the VM is
    /// [`VmSpec::swapped`]; the host's page `sealed`, which EL2 wrote,
    /// stays the host's alone.
    Evict {
        /// The VM's slot.
        slot: u8,
        /// Guest-physical page.
        ipa: u64,
        /// Its physical page.
        pa: u64,
        /// The host page the sealed copy went into.
        sealed: u64,
    },
    /// `VM_EXPORT` of the VM in `slot` (issue 14, [`migrate`]): stopped for
    /// good; destroyed by the call that answers complete (`x2` = 1).
    Export {
        /// The slot.
        slot: u8,
    },
    /// `VM_IMPORT`: a VM over `metadata`, being imported, whose handle the
    /// call returns in `x1` (its configuration: [`Spec::set_imported`]).
    Import {
        /// The metadata.
        metadata: PageRange,
    },
    /// `VM_IMPORT_DATA` into the VM in `slot`: complete (`x2` = 1) makes it
    /// runnable; a refusal destroys it.
    ImportData {
        /// The slot.
        slot: u8,
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
    /// A register holds another value than the one the contract fixes.
    Value {
        /// Which register (0 or 1).
        register: u8,
        /// What it held.
        got: u64,
        /// What the contract says.
        want: u64,
    },
    /// `VCPU_RUN` ended in a way the contract does not allow from the
    /// state before it (see [`Spec::finish_run`]).
    Run {
        /// What went wrong.
        what: &'static str,
        /// The exit reason (`x1`).
        exit: u64,
    },
    /// An imported VM's configuration or vCPUs, as the hypervisor holds
    /// them after the call, are not ones its stream could have made
    /// ([`Spec::set_imported`]).
    Imported {
        /// The VM's slot.
        slot: u8,
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
    /// `VM_SET_SIGNATURE` succeeded at least once.
    pub signed: bool,
    /// A page of it was evicted (`VM_EVICT`): `VM_DONATE`/`VM_SHARE` may be
    /// `DENIED` at an evicted address, which the specification does not
    /// follow.
    pub swapped: bool,
    /// A protected VM was entered: its measurement is fixed
    /// (`VM_SET_SIGNATURE` and every `VCPU_SET_REGS` are `DENIED`).
    pub measured: bool,
    /// vCPUs that entered the guest at least once (bit i = vCPU i):
    /// `VCPU_SET_REGS` is `DENIED` for them.
    pub ran: u8,
    /// Each vCPU's PSCI power state.
    pub power: [Power; 8],
    /// `VCPU_RUN`s in flight per vCPU (claimed by the oracle before the
    /// call, released after its result was checked; a second run of the
    /// same vCPU may be in flight while the first one's result waits to be
    /// checked): only vCPUs with one may be `BUSY`.
    pub running: [u8; 8],
    /// vCPUs that called `PSCI_CPU_OFF` during their current run: that run
    /// must end with `EXIT_POWERED_OFF`, and no other may.
    pub stopped: u8,
    /// Granules mapped with `MMIO_GUARD_MAP` (`guard[..guard_count]`).
    pub guard: [u64; GUARD_PAGES],
    /// How many of `guard` are in use.
    pub guard_count: usize,
    /// Where it is in a migration (issue 14).
    pub migration: Migration,
    /// A realm VM (issue 12): once measured, its protected IPAs (below the
    /// shared bit) take no `VM_DONATE`/`VM_SHARE` (`DENIED`): only the
    /// guest's `RSI_IPA_STATE_SET` makes a granule RAM.
    pub realm: bool,
}

impl VmSpec {
    /// A VM just created: no vCPU, no memory.
    #[must_use]
    pub const fn new(handle: u64, config: VmConfig, metadata: PageRange) -> VmSpec {
        VmSpec {
            handle,
            config,
            metadata,
            vcpus: 0,
            runs: [Run { ipa: 0, pa: 0, pages: 0 }; MAX_RUNS],
            run_count: 0,
            imprecise: false,
            signed: false,
            measured: false,
            ran: 0,
            power: [Power::Off; 8],
            running: [0; 8],
            stopped: 0,
            guard: [0; GUARD_PAGES],
            guard_count: 0,
            swapped: false,
            migration: Migration::None,
            realm: false,
        }
    }

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

    /// Whether granule `page` is MMIO-guard mapped.
    #[must_use]
    pub fn guarded(&self, page: u64) -> bool {
        self.guard.iter().take(self.guard_count).any(|&g| g == page)
    }

    fn guard_set(&mut self, page: u64, map: bool) {
        let at = self
            .guard
            .iter()
            .take(self.guard_count)
            .position(|&g| g == page);
        match (at, map) {
            (None, true) => {
                if let Some(g) = self.guard.get_mut(self.guard_count) {
                    *g = page;
                    self.guard_count += 1;
                }
            }
            (Some(i), false) => {
                self.guard.copy_within(i + 1..self.guard_count, i);
                self.guard_count -= 1;
            }
            _ => {}
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
    /// The page pool's available pages before the call, if known
    /// ([`Spec::set_pool`]).
    pool: Option<u64>,
    /// Each control channel's bound call page (0: none).
    channels: [u64; CHANNELS],
    /// The page the VM's real stage 2 maps at a `VM_EVICT`'s guest
    /// address, given by the oracle before the call ([`Spec::set_swap_pa`]):
    /// used only for a VM whose layout the specification lost.
    swap_pa: Option<u64>,
    /// What the oracle read about the VM the next migration call imports
    /// ([`Spec::set_imported`]).
    imported: Option<Imported>,
}

/// Control channels (`rampart_abi::boot::control::CHANNELS`).
pub const CHANNELS: usize = rampart_abi::boot::control::CHANNELS as usize;

/// The slot a handle's low half names, live or not.
fn handle_slot(handle: u64) -> Option<usize> {
    let slot = (handle & 0xffff_ffff).checked_sub(HANDLE_BASE)?;
    (slot < MAX_VMS as u64).then_some(slot as usize)
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
            pool: None,
            channels: [0; CHANNELS],
            swap_pa: None,
            imported: None,
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

    /// The state bytes ([`Page::encode`]), byte `i` for the page at
    /// `span().0 + i * PAGE` (for a checker comparing all of them in one
    /// pass).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.pages
    }

    /// The first page of `[lo, hi)` (page-aligned `lo`) whose state
    /// satisfies `which` (`None`: a page the specification does not
    /// follow), if any. One pass over the state bytes with a table of
    /// `which` for each byte value, so the oracle's checks over all of RAM
    /// stay cheap.
    pub fn first_page(
        &self,
        lo: u64,
        hi: u64,
        which: impl Fn(Option<Page>) -> bool,
    ) -> Option<u64> {
        if lo >= hi {
            return None;
        }
        let end = self.base + self.pages.len() as u64 * PAGE;
        let outside = which(None);
        if outside && lo < self.base {
            return Some(lo);
        }
        let (from, to) = (lo.max(self.base), hi.min(end));
        if from < to {
            let mut table = [false; 256];
            for (b, t) in table.iter_mut().enumerate() {
                *t = which(Some(Page::decode(b as u8)));
            }
            let i0 = usize::try_from((from - self.base) / PAGE).ok()?;
            let i1 = usize::try_from((to - self.base).div_ceil(PAGE)).ok()?;
            if let Some(at) = self
                .pages
                .get(i0..i1)?
                .iter()
                .position(|&b| table[usize::from(b)])
            {
                return Some(self.base + (i0 + at) as u64 * PAGE);
            }
        }
        (outside && hi > end).then(|| lo.max(end))
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

    /// The page pool's available pages before the next call (`None`:
    /// unknown, so `NO_MEMORY` stays allowed wherever memory is taken).
    pub fn set_pool(&mut self, available: Option<u64>) {
        self.pool = available;
    }

    /// The physical page the VM's real stage 2 maps at the next
    /// `VM_EVICT`'s guest address (sealed swap), if any.
    pub fn set_swap_pa(&mut self, pa: Option<u64>) {
        self.swap_pa = pa;
    }

    /// Whether the pool may be too small for a change over `range`: it
    /// holds fewer pages than an upper bound of the change's worst case
    /// (`docs/design.md`, "Table memory": one table per 512 GiB, 1 GiB and
    /// 2 MiB span for the EL2 mapping; a chain of at most 3 tables at each
    /// end plus a level-1 table per 512 GiB span for each rewrite, of the
    /// host stage 2 and of the SMMU mirror; the give-back reserves of at
    /// most 8 pages each; for VM calls the teardown hold, a rewrite plus one
    /// chain for each). Above it the contract leaves no room for
    /// `NO_MEMORY`; below it the exact need depends on the concrete tables.
    fn pool_short(&self, range: &PageRange, vm: bool) -> bool {
        let spans = |shift: u32| ((range.end() - 1) >> shift) - (range.start() >> shift) + 1;
        let n39 = spans(39);
        let map = n39 + spans(30) + spans(21);
        let remap = 6 + n39;
        let mut bound = map + 2 * remap + 16;
        if vm {
            bound += 2 * (remap + 3);
        }
        self.pool.is_none_or(|p| p < bound)
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

    /// Predicts a store of `page` to control channel `channel`'s `BIND`
    /// register (docs/abi.md, "Call pages"): 0 unbinds the channel's page;
    /// otherwise a page the host lent to the hypervisor (`SHARE_HYP`) and no
    /// other channel has becomes the channel's call page, pinned.
    #[must_use]
    pub fn predict_bind(&self, channel: usize, page: u64) -> Prediction {
        let Some(&current) = self.channels.get(channel) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let ch = channel as u8;
        if page == 0 {
            return if current == 0 {
                Prediction::refuse(Outcomes::error(Error::InvalidParameter))
            } else {
                Prediction {
                    allowed: Outcomes::success(),
                    effect: Effect::Unbind { channel: ch, page: current },
                }
            };
        }
        if !page.is_multiple_of(PAGE) {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        }
        if current != 0 {
            // Its own page again changes nothing; another is BUSY.
            return if current == page {
                Prediction::refuse(Outcomes::success())
            } else {
                Prediction::refuse(Outcomes::error(Error::Busy))
            };
        }
        if self.channels.contains(&page) {
            return Prediction::refuse(Outcomes::error(Error::Busy));
        }
        if page.checked_add(PAGE).is_none() {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        }
        match self.page(page) {
            Some(Page::HostSharedHyp) => Prediction {
                allowed: Outcomes::success(),
                effect: Effect::Bind { channel: ch, page },
            },
            Some(_) => Prediction::refuse(Outcomes::error(Error::Denied)),
            // Beyond the pages the specification follows: outside RAM.
            None => Prediction::refuse(
                Outcomes::error(Error::Range)
                    .or_error(Error::Denied)
                    .or_error(Error::InvalidParameter),
            ),
        }
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
                // Only a range inside one bank is looked at page by page
                // (a hostile count can name 2^52 pages).
                let pinned = self.in_one_bank(&r)
                    && (0..r.pages())
                        .any(|i| self.page(r.start() + i * PAGE) == Some(Page::HostPinnedHyp));
                if pinned {
                    // A call page (docs/abi.md, "Call pages"): BUSY; where
                    // other pages of the range are not lent at all, the
                    // contract fixes no order between BUSY and DENIED.
                    let lent = self.all(&r, |p| matches!(p, Page::HostSharedHyp | Page::HostPinnedHyp));
                    let allowed = if lent {
                        Outcomes::error(Error::Busy)
                    } else {
                        Outcomes::error(Error::Busy).or_error(Error::Denied)
                    };
                    return Prediction::refuse(allowed);
                }
                self.memory_call(r, |p| p == Page::HostSharedHyp, Page::Host, true, false)
            }
            HostRequest::ReclaimHyp(r) => {
                self.memory_call(r, |p| p == Page::HypDonated, Page::Host, false, true)
            }
            HostRequest::VmCreate { metadata, config } => {
                self.vm_create(metadata, config, regs[3] & VmConfig::REALM != 0)
            }
            HostRequest::VmDestroy(VmHandle(h)) => {
                // BUSY (any vCPU of the slot locked by a run in flight) and
                // INVALID_PARAMETER come in no fixed order.
                let busy = handle_slot(h).is_some_and(|s| self.any_running(s));
                let busy = if busy {
                    Outcomes::error(Error::Busy)
                } else {
                    Outcomes::NONE
                };
                match live_slot(self, h) {
                    None => Prediction::refuse(busy.or_error(Error::InvalidParameter)),
                    Some(slot) => Prediction {
                        allowed: busy.or(0),
                        effect: Effect::DestroyVm { slot: slot as u8 },
                    },
                }
            }
            HostRequest::VcpuCreate(v) => {
                match live_slot(self, v.vm.0).and_then(|s| Some((s, self.vms[s].as_ref()?))) {
                    None => Prediction::refuse(Outcomes::error(Error::InvalidParameter)),
                    Some((_, vm)) if v.index as u64 >= vm.config.max_vcpus => {
                        Prediction::refuse(Outcomes::error(Error::InvalidParameter))
                    }
                    // Existing: DENIED, or BUSY while a run of it is in flight.
                    Some((slot, vm)) if vm.vcpus & (1 << v.index) != 0 => Prediction::refuse(
                        self.busy_if_running(slot, v.index, Outcomes::error(Error::Denied)),
                    ),
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
            // issue 16: as VM_DONATE; the zeroing is not a state the
            // specification follows (the guest's reads are the test host's
            // `vm-donate-zeroed` check). Reserved flags and too many pages
            // were refused by decoding.
            HostRequest::VmDonateZeroed {
                vm,
                pages,
                guest_address,
            } => self.give(vm, pages, guest_address, false),
            HostRequest::VmDeclareZero {
                vm,
                guest_address,
                pages,
            } => self.declare_zero(vm, guest_address, pages),
            HostRequest::Version => Prediction::refuse(Outcomes::success()),
            HostRequest::Features(function) => {
                // Every host call the ABI lists; ORACLE_CHECK too, since the
                // specification runs only in builds that have it.
                Prediction::refuse(if rampart_abi::host::HostCall::try_from(function).is_ok() {
                    Outcomes::success()
                } else {
                    Outcomes::error(Error::NotSupported)
                })
            }
            HostRequest::VcpuSetRegs { vcpu, .. } => self.set_regs(vcpu),
            HostRequest::VcpuRun { vcpu, .. } => self.run(vcpu),
            HostRequest::VcpuInject { vcpu, .. } => {
                // Allowed while the vCPU runs; INTID >= 1020 was refused
                // by decoding.
                match self.vcpu_of(vcpu) {
                    Some(_) => Prediction::refuse(Outcomes::success()),
                    None => Prediction::refuse(Outcomes::error(Error::InvalidParameter)),
                }
            }
            HostRequest::VmSetSignature { vm, .. } => match live_slot(self, vm.0) {
                None => Prediction::refuse(Outcomes::error(Error::InvalidParameter)),
                Some(slot) if self.vms[slot].as_ref().is_some_and(|v| v.measured) => {
                    Prediction::refuse(Outcomes::error(Error::Denied))
                }
                Some(slot) => Prediction {
                    allowed: Outcomes::success(),
                    effect: Effect::Sign { slot: slot as u8 },
                },
            },
            HostRequest::VmList(after) => Prediction {
                allowed: Outcomes::success(),
                effect: Effect::List {
                    x1: self.list_after(after),
                },
            },
            // Its answer depends on the device secret, which the
            // specification does not see: the oracle checks that every
            // answer is the first one ([`Spec::attestation_key`]).
            HostRequest::AttestationKey => {
                Prediction::refuse(Outcomes::success().or_error(Error::NotSupported))
            }
            HostRequest::OracleCheck => Prediction::refuse(Outcomes::success()),
            HostRequest::VmImportBegin
            | HostRequest::VmExport { .. }
            | HostRequest::VmImport { .. }
            | HostRequest::VmImportData { .. } => self.predict_migration(request),
            HostRequest::VmEvict {
                vm,
                guest_address,
                sealed,
            } => self.predict_evict(vm, guest_address, sealed),
            HostRequest::VmRestore {
                vm,
                guest_address,
                sealed,
                fresh,
                ..
            } => self.predict_restore(vm, guest_address, sealed, fresh),
            HostRequest::VcpuHostCallGet { vcpu, .. } | HostRequest::VcpuHostCallSet { vcpu, .. } => {
                self.predict_host_call_answer(vcpu)
            }
        }
    }

    /// issue 12: `VCPU_HOST_CALL_GET`/`SET` touch only the answer to a
    /// realm vCPU's pending `RSI_HOST_CALL`, which the specification does
    /// not model: `SUCCESS` or `DENIED` (none pending) for a vCPU of a live
    /// VM, `DENIED` for one never created, `INVALID_PARAMETER` (or
    /// `DENIED`) for a handle that names no live VM. Nothing else changes.
    fn predict_host_call_answer(&self, vcpu: rampart_abi::host::VcpuRef) -> Prediction {
        if live_slot(self, vcpu.vm.0).is_none() {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter).or_error(Error::Denied));
        }
        match self.vcpu_of(vcpu) {
            Some(_) => Prediction::refuse(Outcomes::success().or_error(Error::Denied)),
            None => Prediction::refuse(Outcomes::error(Error::Denied)),
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
        // BUSY is for a page the hypervisor pinned, and no call of the ABI
        // pins one (docs/abi.md): never admissible.
        let _ = returns;
        let mut allowed = Outcomes::success();
        if self.pool_short(&range, false) {
            allowed = allowed.or_error(Error::NoMemory);
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

    fn vm_create(&self, metadata: PageRange, config: VmConfig, realm: bool) -> Prediction {
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
        let mut allowed = if errors.is_empty() && free {
            Outcomes::success()
        } else {
            errors
        };
        // No free slot, or the pool may be short.
        if !free || self.pool_short(&metadata, true) {
            allowed = allowed.or_error(Error::NoMemory);
        }
        Prediction {
            allowed,
            effect: Effect::CreateVm { metadata, config, realm },
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
        let shared_bit = self.ipa_bits.checked_sub(1).and_then(|b| 1u64.checked_shl(b)).unwrap_or(u64::MAX);
        if spec.realm && spec.measured && ipa < shared_bit {
            errors = errors.or_error(Error::Denied);
        }
        let mut allowed = if errors.is_empty() {
            Outcomes::success()
        } else {
            errors
        };
        if spec.imprecise || spec.swapped {
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

    /// `VM_DECLARE_ZERO` (issue 16): changes nothing the specification
    /// follows (the declared ranges matter only to the first run's
    /// measurement, which the test host's `vm-declare-zero-*` checks
    /// verify). Decoding refused flags, unaligned, empty and wrapping
    /// ranges already.
    fn declare_zero(&self, vm: VmHandle, ipa: u64, pages: u64) -> Prediction {
        let Some(spec) = live_slot(self, vm.0).and_then(|slot| self.vms[slot].as_ref()) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        // No fixed order among those that apply.
        let mut errors = Outcomes::NONE;
        if !spec.config.protected || spec.realm || spec.measured {
            errors = errors.or_error(Error::Denied);
        }
        let end = pages.checked_mul(PAGE).and_then(|bytes| ipa.checked_add(bytes));
        if !end.is_some_and(|end| self.ipa_bits >= 64 || end <= 1 << self.ipa_bits) {
            errors = errors.or_error(Error::Range);
        }
        if !errors.is_empty() {
            return Prediction::refuse(errors);
        }
        // The per-VM list may be full (NO_MEMORY); a range holding an
        // evicted page is DENIED (the specification does not follow
        // which addresses are evicted).
        let mut allowed = Outcomes::success().or_error(Error::NoMemory);
        if spec.swapped {
            allowed = allowed.or_error(Error::Denied);
        }
        Prediction::refuse(allowed)
    }

    /// issue 12: a realm VM's `RSI_IPA_STATE_SET` moved guest page `from`
    /// to `to` (its other IPA half) at physical page `pa`: RAM -> EMPTY
    /// (`shared`: the guest's own page becomes shared with the host) or
    /// EMPTY -> RAM (back to the guest alone), zeroed either way
    /// (`docs/abi.md`, "Realm guests (RSI)"). Moves the VM's run and returns
    /// the page's change for [`Spec::commit`]; `None` (a violation) if the
    /// specification did not have `pa` at `from` in the state the change
    /// needs, and then nothing changes.
    pub fn realm_ripas_moved(&mut self, slot: usize, from: u64, to: u64, pa: u64, shared: bool) -> Option<Prediction> {
        let s = u8::try_from(slot).ok()?;
        let need = if shared { Page::Vm(s) } else { Page::VmSharedHost(s) };
        if self.page(pa)? != need {
            return None;
        }
        let vm = self.vms.get_mut(slot)?.as_mut()?;
        if !vm.imprecise && (vm.translate(from) != Some(pa) || vm.translate(to).is_some()) {
            return None;
        }
        vm.remove_page(from);
        vm.add_run(Run { ipa: to, pa, pages: 1 });
        Some(Prediction {
            allowed: Outcomes::success(),
            effect: Effect::SetPages {
                range: PageRange::new(pa, 1).ok()?,
                to: if shared { Page::VmSharedHost(s) } else { Page::Vm(s) },
                zero: true,
            },
        })
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
        // A refused call is INVALID_PARAMETER, also when the pool is low:
        // only then may a valid call be refused.
        let ok = if self.pool_short(&range, false) {
            Outcomes::success().or_error(Error::InvalidParameter)
        } else {
            Outcomes::success()
        };
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
            Effect::Relinquish { pa, .. } | Effect::Evict { pa, .. } => f(pa, 1),
            // A guest's pages shared with the host are not checked: the
            // host could write them until the end.
            Effect::DestroyVm { slot }
            | Effect::Export { slot }
            | Effect::ImportData { slot } => self.page_runs(
                |p| matches!(p, Page::Vm(s) | Page::VmMeta(s) if s == slot),
                f,
            ),
            _ => {}
        }
    }

    /// Calls `f(start, pages)` for every maximal run of pages whose state
    /// satisfies `which`, in address order.
    fn page_runs(&self, which: impl Fn(Page) -> bool, f: &mut dyn FnMut(u64, u64)) {
        let mut run: Option<(u64, u64)> = None;
        for (i, b) in self.pages.iter().enumerate() {
            let pa = self.base + i as u64 * PAGE;
            run = match (run, which(Page::decode(*b))) {
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

    /// Calls `f(start, pages)` for every maximal run of pages VM `slot`
    /// owns, borrows, lent to the host or has as metadata: exactly the
    /// pages its `VM_DESTROY` gives back to the host (the oracle compares
    /// only those after the call, not all of RAM).
    pub fn vm_pages(&self, slot: u8, f: &mut dyn FnMut(u64, u64)) {
        self.page_runs(
            |p| {
                matches!(p, Page::Vm(s) | Page::VmSharedHost(s) | Page::VmMeta(s) | Page::HostSharedVm(s)
                    if s == slot)
            },
            f,
        );
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
        self.commit_call(prediction, x0, x1, 0)
    }

    /// [`Spec::commit`] with `x2` too (`VM_EXPORT` and `VM_IMPORT_DATA`
    /// answer "complete" there).
    ///
    /// # Errors
    ///
    /// The [`Violation`].
    pub fn commit_call(
        &mut self,
        prediction: &Prediction,
        x0: i64,
        x1: u64,
        x2: u64,
    ) -> Result<(), Violation> {
        let allowed = prediction.allowed;
        let verdict = if allowed.allows(x0) {
            Ok(())
        } else {
            Err(Violation::Result { got: x0, allowed })
        };
        if let Effect::Value { x0: want } = prediction.effect {
            return if x0 as u64 == want {
                Ok(())
            } else {
                Err(Violation::Value {
                    register: 0,
                    got: x0 as u64,
                    want,
                })
            };
        }
        if let Some(slot) = self.destroyed_by(prediction, x0, x2) {
            self.destroy_slot(slot);
            return verdict;
        }
        if x0 != 0 {
            return verdict;
        }
        match prediction.effect {
            Effect::None | Effect::Value { .. } | Effect::Run { .. } => {}
            Effect::List { x1: want } => {
                if x1 != want {
                    return verdict.and(Err(Violation::Value {
                        register: 1,
                        got: x1,
                        want,
                    }));
                }
            }
            Effect::Sign { slot } => {
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.signed = true;
                }
            }
            Effect::Power { slot, index, to } => {
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot))
                    && let Some(p) = vm.power.get_mut(usize::from(index))
                {
                    *p = to;
                }
            }
            Effect::Guard { slot, page, map } => {
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.guard_set(page, map);
                }
            }
            Effect::SetPages { range, to, .. } => self.set_range(range, to),
            Effect::CreateVm { metadata, config, realm } => {
                let Some(slot) = self.fresh_slot(x1) else {
                    return verdict.and(Err(Violation::Handle { got: x1 }));
                };
                self.set_range(metadata, Page::VmMeta(slot as u8));
                let mut vm = VmSpec::new(x1, config, metadata);
                vm.realm = realm;
                self.vms[slot] = Some(vm);
            }
            // Destroyed above.
            Effect::DestroyVm { .. } => {}
            Effect::Export { slot } => {
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.migration = Migration::Export;
                }
            }
            Effect::Import { metadata } => {
                let Some(slot) = self.fresh_slot(x1) else {
                    return verdict.and(Err(Violation::Handle { got: x1 }));
                };
                let config = self.imported.map_or(
                    VmConfig {
                        protected: true,
                        debug: false,
                        max_vcpus: 1,
                    },
                    |i| i.config,
                );
                self.set_range(metadata, Page::VmMeta(slot as u8));
                self.vms[slot] = Some(VmSpec::new(x1, config, metadata));
                if let Some(Some(vm)) = self.vms.get_mut(slot) {
                    vm.migration = Migration::Import;
                    // An exported VM was measured; its signature came along.
                    vm.measured = true;
                    vm.signed = true;
                }
                if !self.apply_imported(slot, true) {
                    return verdict.and(Err(Violation::Imported { slot: slot as u8 }));
                }
            }
            Effect::ImportData { slot } => {
                if !self.apply_imported(usize::from(slot), false) {
                    return verdict.and(Err(Violation::Imported { slot }));
                }
                if x2 == 1
                    && let Some(Some(vm)) = self.vms.get_mut(usize::from(slot))
                {
                    vm.migration = Migration::None;
                }
            }
            Effect::CreateVcpu { slot, index } => {
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.vcpus |= 1 << index;
                    if let Some(p) = vm.power.get_mut(usize::from(index)) {
                        // vCPU 0 starts on; the others wait for CPU_ON.
                        *p = if index == 0 { Power::On } else { Power::Off };
                    }
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
            Effect::Evict { slot, ipa, pa, .. } => {
                self.set(pa, Page::Host);
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.remove_page(ipa);
                    vm.swapped = true;
                }
            }
            Effect::Relinquish { slot, ipa, pa } => {
                self.set(pa, Page::Host);
                if let Some(Some(vm)) = self.vms.get_mut(usize::from(slot)) {
                    vm.remove_page(ipa);
                }
            }
            Effect::Bind { channel, page } => {
                self.set(page, Page::HostPinnedHyp);
                if let Some(c) = self.channels.get_mut(usize::from(channel)) {
                    *c = page;
                }
            }
            Effect::Unbind { channel, page } => {
                self.set(page, Page::HostSharedHyp);
                if let Some(c) = self.channels.get_mut(usize::from(channel)) {
                    *c = 0;
                }
            }
        }
        verdict
    }

    /// The free slot a new VM's handle `x1` names, if a creation could
    /// have returned it.
    fn fresh_slot(&self, x1: u64) -> Option<usize> {
        let slot = (x1 & 0xffff_ffff)
            .checked_sub(HANDLE_BASE)
            .map(|s| s as usize);
        slot.filter(|&s| {
            s < MAX_VMS
                && self.vms[s].is_none()
                && self.generations[s] != RETIRED
                && x1 >> 32 == u64::from(self.generations[s])
        })
    }

    /// The VM in `slot` goes: every page it owned, borrowed, lent or held
    /// as metadata is the host's again; its slot's generation moves on.
    fn destroy_slot(&mut self, slot: u8) {
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

    fn set_range(&mut self, range: PageRange, to: Page) {
        for i in 0..range.pages() {
            self.set(range.start() + i * PAGE, to);
        }
    }
}

/// Guest-call answers the contract fixes (`docs/abi.md`, "Guest calls").
mod guest_values {
    /// `SMCCC_VERSION`, `PSCI_VERSION`: 1.1.
    pub const VERSION_1_1: u64 = 0x1_0001;
    /// `TRNG_VERSION`: 1.0.
    pub const TRNG_1_0: u64 = 0x1_0000;
    /// `PSCI_MIGRATE_INFO_TYPE`: no trusted OS.
    pub const MIGRATE_NONE: u64 = 2;
    /// SMCCC `NOT_SUPPORTED`.
    pub const NOT_SUPPORTED: u64 = -1i64 as u64;
    /// SMCCC / KVM `INVALID_PARAMETER`.
    pub const INVALID: u64 = -3i64 as u64;
    /// PSCI `INVALID_PARAMETERS`.
    pub const PSCI_INVALID: u64 = -2i64 as u64;
    /// PSCI `ALREADY_ON`.
    pub const ALREADY_ON: u64 = -4i64 as u64;
    /// PSCI `ON_PENDING`.
    pub const ON_PENDING: u64 = -5i64 as u64;
    /// PSCI `INVALID_ADDRESS`.
    pub const INVALID_ADDRESS: u64 = -9i64 as u64;
}

/// Exit reasons (`docs/abi.md`, `VCPU_RUN`).
pub const EXIT_POWERED_OFF: u64 = 7;
/// `EXIT_EVICTED` (sealed swap): the last exit reason.
pub const EXIT_EVICTED: u64 = 8;
/// `EXIT_HOST_CALL` (issue 12): a realm's `RSI_HOST_CALL`.
pub const EXIT_HOST_CALL: u64 = 10;

impl Spec<'_> {
    /// Whether a `VCPU_RUN` of vCPU `index` in `slot` is in flight.
    #[must_use]
    pub fn is_running(&self, slot: usize, index: usize) -> bool {
        self.vms
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|vm| vm.running.get(index).is_some_and(|&n| n != 0))
    }

    fn any_running(&self, slot: usize) -> bool {
        self.vms
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|vm| vm.running.iter().any(|&n| n != 0))
    }

    /// `allowed`, and BUSY if a run of that vCPU is in flight (its lock
    /// may be held at this moment).
    fn busy_if_running(&self, slot: usize, index: usize, allowed: Outcomes) -> Outcomes {
        if self.is_running(slot, index) {
            allowed.or_error(Error::Busy)
        } else {
            allowed
        }
    }

    /// The live VM and existing vCPU a reference names.
    fn vcpu_of(&self, v: rampart_abi::host::VcpuRef) -> Option<(usize, &VmSpec)> {
        let slot = live_slot(self, v.vm.0)?;
        let vm = self.vms.get(slot)?.as_ref()?;
        (v.index < 8 && vm.vcpus & (1 << v.index) != 0).then_some((slot, vm))
    }

    /// BUSY if the handle's slot has a run of vCPU `index` in flight,
    /// whether or not the handle is live (the ABI fixes no order between
    /// BUSY and INVALID_PARAMETER).
    fn busy_for(&self, handle: u64, index: usize) -> Outcomes {
        if handle_slot(handle).is_some_and(|s| self.is_running(s, index)) {
            Outcomes::error(Error::Busy)
        } else {
            Outcomes::NONE
        }
    }

    fn set_regs(&self, v: rampart_abi::host::VcpuRef) -> Prediction {
        let busy = self.busy_for(v.vm.0, v.index);
        let Some((_, vm)) = self.vcpu_of(v) else {
            return Prediction::refuse(busy.or_error(Error::InvalidParameter));
        };
        // DENIED after the vCPU's first run, and for every vCPU once a
        // protected VM's measurement is fixed.
        if vm.ran & (1 << v.index) != 0 || vm.measured {
            return Prediction::refuse(busy.or_error(Error::Denied));
        }
        Prediction::refuse(busy.or(0))
    }

    fn run(&self, v: rampart_abi::host::VcpuRef) -> Prediction {
        let busy = self.busy_for(v.vm.0, v.index);
        let Some((slot, vm)) = self.vcpu_of(v) else {
            return Prediction::refuse(busy.or_error(Error::InvalidParameter));
        };
        if vm.migration != Migration::None {
            // Being exported or imported (issue 14): checked before the
            // power state.
            return Prediction::refuse(busy.or_error(Error::Migrating));
        }
        let off = vm.power.get(v.index) == Some(&Power::Off);
        let allowed = if off {
            // EXIT_POWERED_OFF before any signature check.
            Outcomes::success()
        } else if vm.config.protected && !vm.measured {
            if vm.signed {
                // The specification does not verify signatures: any of
                // these, but never NOT_SIGNED.
                Outcomes::success()
                    .or_error(Error::UntrustedKey)
                    .or_error(Error::BadSignature)
            } else {
                Outcomes::error(Error::NotSigned)
            }
        } else {
            Outcomes::success()
        };
        Prediction {
            allowed: busy.union(allowed),
            effect: Effect::Run {
                slot: slot as u8,
                index: v.index as u8,
                off,
            },
        }
    }

    fn list_after(&self, after: u64) -> u64 {
        let first = if after == 0 {
            0
        } else {
            match handle_slot(after) {
                Some(s) => s + 1,
                None => return 0,
            }
        };
        (first..MAX_VMS)
            .find_map(|s| self.vms[s].as_ref().map(|vm| vm.handle))
            .unwrap_or(0)
    }

    /// Counts a `VCPU_RUN` of the vCPU the prediction names as in flight;
    /// false (changing nothing) if it is not a run of an existing vCPU.
    pub fn claim(&mut self, prediction: &Prediction) -> bool {
        let Effect::Run { slot, index, .. } = prediction.effect else {
            return false;
        };
        match self.vms.get_mut(usize::from(slot)) {
            Some(Some(vm)) => match vm.running.get_mut(usize::from(index)) {
                Some(n) => {
                    *n = n.saturating_add(1);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// Ends a claim [`Spec::claim`] made, if the VM `handle` still lives.
    pub fn release(&mut self, prediction: &Prediction, handle: u64) {
        if let Effect::Run { slot, index, .. } = prediction.effect
            && let Some(Some(vm)) = self.vms.get_mut(usize::from(slot))
            && vm.handle == handle
            && let Some(n) = vm.running.get_mut(usize::from(index))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// The run the prediction names enters the guest (the hypervisor's
    /// point of no return): the vCPU has run, is on, and a protected VM's
    /// measurement is fixed.
    pub fn enter(&mut self, prediction: &Prediction) {
        if let Effect::Run { slot, index, .. } = prediction.effect
            && let Some(Some(vm)) = self.vms.get_mut(usize::from(slot))
        {
            vm.ran |= 1 << index;
            vm.measured |= vm.config.protected;
            if let Some(p) = vm.power.get_mut(usize::from(index)) {
                *p = Power::On;
            }
        }
    }

    /// Checks a finished `VCPU_RUN`: `x0`, the exit reason `exit`, whether
    /// it `entered` the guest and whether the guest called `CPU_OFF`
    /// during it (`stopped`). A run that entered always succeeds; a
    /// success without entering is `EXIT_POWERED_OFF` of a powered-off
    /// vCPU; `EXIT_POWERED_OFF` after entering means the guest called
    /// `CPU_OFF`, and `CPU_OFF` always ends the run with it.
    ///
    /// # Errors
    ///
    /// The [`Violation`].
    pub fn finish_run(
        &self,
        prediction: &Prediction,
        x0: i64,
        exit: u64,
        entered: bool,
        stopped: bool,
    ) -> Result<(), Violation> {
        let Effect::Run { off, .. } = prediction.effect else {
            return prediction
                .allowed
                .allows(x0)
                .then_some(())
                .ok_or(Violation::Result {
                    got: x0,
                    allowed: prediction.allowed,
                });
        };
        let fail = |what| Err(Violation::Run { what, exit });
        if !prediction.allowed.allows(x0) {
            return Err(Violation::Result {
                got: x0,
                allowed: prediction.allowed,
            });
        }
        match (x0 == 0, entered) {
            (false, true) => fail("entered the guest, then answered an error"),
            (false, false) => Ok(()),
            (true, false) if !off => fail("succeeded without entering a vCPU that is on"),
            (true, false) if exit != EXIT_POWERED_OFF => {
                fail("a powered-off vCPU answered another exit than EXIT_POWERED_OFF")
            }
            (true, false) => Ok(()),
            (true, true) if off => fail("entered a powered-off vCPU"),
            (true, true) if !(1..=EXIT_EVICTED).contains(&exit) && exit != EXIT_HOST_CALL => {
                fail("no such exit reason")
            }
            (true, true) if stopped != (exit == EXIT_POWERED_OFF) => {
                fail("EXIT_POWERED_OFF if and only if the guest called CPU_OFF")
            }
            (true, true) => Ok(()),
        }
    }

    /// Predicts every guest call `function` with `x1`..`x3` from vCPU
    /// `index` of the VM in `slot` (`None` if no VM is there).
    /// `concrete_pa` as for [`Spec::predict_guest`]; `rng`: the CPU has
    /// `RNDR` (the TRNG calls exist).
    #[must_use]
    pub fn predict_guest_call(
        &self,
        slot: usize,
        index: usize,
        function: u32,
        args: [u64; 3],
        concrete_pa: Option<u64>,
        rng: bool,
    ) -> Option<Prediction> {
        use guest_values as gv;
        use rampart_abi::guest::{self as ids, psci};
        let vm = self.vms.get(slot)?.as_ref()?;
        let value = |x0: u64| Prediction {
            allowed: Outcomes::ANY,
            effect: Effect::Value { x0 },
        };
        let Ok(call) = GuestCall::try_from(function) else {
            return Some(value(gv::NOT_SUPPORTED));
        };
        let protected_only = matches!(
            call,
            GuestCall::HypMeminfo
                | GuestCall::MemShare
                | GuestCall::MemUnshare
                | GuestCall::MemRelinquish
                | GuestCall::MmioGuardInfo
                | GuestCall::MmioGuardEnroll
                | GuestCall::MmioGuardMap
                | GuestCall::MmioGuardUnmap
                | GuestCall::RampartAttest
                | GuestCall::RampartSealingKey
        );
        if protected_only && !vm.config.protected {
            return Some(value(gv::NOT_SUPPORTED));
        }
        let trng = matches!(
            call,
            GuestCall::TrngVersion
                | GuestCall::TrngFeatures
                | GuestCall::TrngGetUuid
                | GuestCall::TrngRnd32
                | GuestCall::TrngRnd64
        );
        if trng && !rng {
            return Some(value(gv::NOT_SUPPORTED));
        }
        let [x1, x2, x3] = args;
        let s = slot as u8;
        let w = |x: u64| x & 0xffff_ffff;
        // PSCI's target: Aff0 is the vCPU index, every other affinity bit 0.
        let target = |mpidr: u64| {
            let i = usize::try_from(mpidr & 0xff_00ff_ffff).ok()?;
            (i < 8 && (i as u64) < vm.config.max_vcpus && vm.vcpus & (1 << i) != 0).then_some(i)
        };
        let is = |asked: u64, set: &[GuestCall]| {
            GuestCall::try_from(w(asked) as u32).is_ok_and(|c| set.contains(&c))
        };
        let features = |ok: bool| value(if ok { 0 } else { gv::NOT_SUPPORTED });
        Some(match call {
            GuestCall::SmcccVersion | GuestCall::PsciVersion => value(gv::VERSION_1_1),
            GuestCall::SmcccArchFeatures => features(is(
                x1,
                &[GuestCall::SmcccVersion, GuestCall::SmcccArchFeatures],
            )),
            GuestCall::VendorHypCallUid => value(u64::from(ids::KVM_UID[0])),
            GuestCall::KvmFeatures => value(if vm.config.protected {
                u64::from(ids::KVM_FEATURES_PROTECTED)
            } else {
                1
            }),
            GuestCall::HypMeminfo => value(if x1 == 0 && x2 == 0 && x3 == 0 {
                ids::GRANULE
            } else {
                gv::INVALID
            }),
            GuestCall::MemShare | GuestCall::MemUnshare | GuestCall::MemRelinquish => {
                self.predict_guest(slot, function, args, concrete_pa)?
            }
            GuestCall::MmioGuardInfo => value(ids::GRANULE),
            GuestCall::MmioGuardEnroll => value(0),
            GuestCall::MmioGuardMap | GuestCall::MmioGuardUnmap => {
                let map = call == GuestCall::MmioGuardMap;
                let memory = if vm.imprecise {
                    concrete_pa.is_some()
                } else {
                    vm.translate(x1).is_some()
                };
                let ok = x1.is_multiple_of(PAGE)
                    && x1 < ids::GUEST_RAM_BASE
                    && !memory
                    && if map {
                        vm.guarded(x1) || vm.guard_count < GUARD_PAGES
                    } else {
                        vm.guarded(x1)
                    };
                if ok {
                    Prediction {
                        allowed: Outcomes::success(),
                        effect: Effect::Guard {
                            slot: s,
                            page: x1,
                            map,
                        },
                    }
                } else {
                    value(gv::INVALID)
                }
            }
            GuestCall::PsciFeatures => features(is(
                x1,
                &[
                    // PSCI 1.0 lets PSCI_FEATURES report SMCCC_VERSION:
                    // Linux learns SMCCC 1.1 only through it (issue 12).
                    GuestCall::SmcccVersion,
                    GuestCall::PsciVersion,
                    GuestCall::PsciFeatures,
                    GuestCall::CpuOn32,
                    GuestCall::CpuOn64,
                    GuestCall::CpuOff,
                    GuestCall::CpuSuspend32,
                    GuestCall::CpuSuspend64,
                    GuestCall::AffinityInfo32,
                    GuestCall::AffinityInfo64,
                    GuestCall::MigrateInfoType,
                    GuestCall::SystemOff,
                    GuestCall::SystemReset,
                ],
            )),
            GuestCall::MigrateInfoType => value(gv::MIGRATE_NONE),
            GuestCall::CpuOn32 | GuestCall::CpuOn64 => {
                let (mpidr, entry) = if call == GuestCall::CpuOn32 {
                    (w(x1), w(x2))
                } else {
                    (x1, x2)
                };
                let Some(t) = target(mpidr) else {
                    return Some(value(gv::PSCI_INVALID));
                };
                let in_memory = |pa: Option<u64>| entry.is_multiple_of(4) && pa.is_some();
                // Where the specification lost the VM's layout, only the
                // page `x1` names is known concretely: either answer.
                if vm.imprecise {
                    return Some(Prediction::refuse(Outcomes::ANY));
                }
                if !in_memory(vm.translate(entry)) {
                    return Some(value(gv::INVALID_ADDRESS));
                }
                match vm.power.get(t) {
                    Some(Power::Off) => Prediction {
                        allowed: Outcomes::only(psci::SUCCESS.into()),
                        effect: Effect::Power {
                            slot: s,
                            index: t as u8,
                            to: Power::Pending,
                        },
                    },
                    Some(Power::Pending) => value(gv::ON_PENDING),
                    _ => value(gv::ALREADY_ON),
                }
            }
            GuestCall::CpuOff => Prediction {
                // Exits with EXIT_POWERED_OFF; x0 is the guest's, unchanged.
                allowed: Outcomes::ANY,
                effect: Effect::Power {
                    slot: s,
                    index: index as u8,
                    to: Power::Off,
                },
            },
            GuestCall::CpuSuspend32 | GuestCall::CpuSuspend64 => value(0),
            GuestCall::AffinityInfo32 | GuestCall::AffinityInfo64 => {
                let mpidr = if call == GuestCall::AffinityInfo32 {
                    w(x1)
                } else {
                    x1
                };
                match target(mpidr).and_then(|t| vm.power.get(t)) {
                    None => value(gv::PSCI_INVALID),
                    Some(Power::On) => value(psci::AFFINITY_ON as u64),
                    Some(Power::Off) => value(psci::AFFINITY_OFF as u64),
                    Some(Power::Pending) => value(psci::AFFINITY_ON_PENDING as u64),
                }
            }
            // They exit to the host; x0 is the guest's, unchanged.
            GuestCall::SystemOff | GuestCall::SystemReset => Prediction::refuse(Outcomes::ANY),
            GuestCall::TrngVersion => value(gv::TRNG_1_0),
            GuestCall::TrngFeatures => features(is(
                x1,
                &[
                    GuestCall::TrngVersion,
                    GuestCall::TrngFeatures,
                    GuestCall::TrngGetUuid,
                    GuestCall::TrngRnd32,
                    GuestCall::TrngRnd64,
                ],
            )),
            // The back end's UUID: the specification does not fix it.
            GuestCall::TrngGetUuid => Prediction::refuse(Outcomes::ANY),
            GuestCall::TrngRnd32 | GuestCall::TrngRnd64 => {
                let max = if call == GuestCall::TrngRnd64 {
                    192
                } else {
                    96
                };
                let bits = if call == GuestCall::TrngRnd64 {
                    x1
                } else {
                    w(x1)
                };
                if bits == 0 || bits > max {
                    value(gv::PSCI_INVALID)
                } else {
                    // NO_ENTROPY (-3) if RNDR failed.
                    Prediction::refuse(Outcomes::success().or(-3))
                }
            }
            GuestCall::RampartAttest => {
                let pa = if vm.imprecise {
                    concrete_pa
                } else {
                    vm.translate(x1)
                };
                let owned = pa.and_then(|pa| self.page(pa)) == Some(Page::Vm(s));
                if x1.is_multiple_of(PAGE) && x2 <= 64 && owned && vm.measured {
                    // NOT_SUPPORTED without a device secret.
                    Prediction::refuse(Outcomes::success().or(-1))
                } else {
                    value(gv::INVALID)
                }
            }
            GuestCall::RampartSealingKey => {
                if x1 <= 32 && vm.measured {
                    Prediction::refuse(Outcomes::success().or(-1))
                } else {
                    value(gv::INVALID)
                }
            }
        })
    }
}

/// The vCPU limit, re-exported for the hook.
pub const VCPU_LIMIT: u64 = MAX_VCPUS;

#[cfg(test)]
mod tests;

mod swap;

pub mod migrate;
pub use migrate::{Imported, Migration};
