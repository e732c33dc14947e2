//! Virtual machines: slots, handles, VMIDs, guest memory and teardown.
//!
//! Lock order, outermost first: a vCPU's lock, its VM's lock, the host
//! memory lock. A vCPU's lock is held for the whole of `VCPU_RUN`, so a VM
//! cannot be torn down under a running vCPU.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, MemoryRegion};
use aarch64_paging::Mapping;
use rampart_abi::Error;
use rampart_abi::host::{MAX_VCPUS, PageRange, VcpuRef, VmConfig, VmHandle};
use rampart_ownership::{Transition, VmId};
use rampart_platform::{MemRange, PAGE_SIZE};
use spin::mutex::SpinMutex;

use crate::arch;
use crate::mm::{self, VmPool, VmTable};
use crate::vcpu::{Vcpu, VcpuState};

/// VM slots. Slot `n` uses VMID `n + 1` (VMID 0 is the host's).
pub const MAX_VMS: usize = 16;
const VCPUS: usize = MAX_VCPUS as usize;
/// Handles are `(generation << 32) | (HANDLE_BASE + slot)`.
const HANDLE_BASE: u64 = 0x1000;

/// One VM.
pub struct Vm {
    /// The handle the host knows it by.
    pub handle: VmHandle,
    /// Its VMID (slot + 1).
    pub vmid: u16,
    /// Whether the host is kept out of its memory and registers.
    pub protected: bool,
    /// vCPUs it may have.
    pub max_vcpus: usize,
    /// The metadata pages the host donated.
    metadata: MemRange,
    /// Its stage 2, with tables from the metadata.
    stage2: VmTable,
    /// MMIO guard: `None` until the guest enrolls, then the guarded pages.
    pub mmio_guard: Option<MmioGuard>,
    /// Configured for debugging (measured and reported).
    pub debug: bool,
    /// The signer and signature the host gave for the first run.
    signature: Option<([u8; 32], [u8; 64])>,
    /// The measurement, fixed at the first run.
    pub measurement: Option<rampart_attest::Measurement>,
    /// A realm VM (guest ABI RSI, `crate::rsi`), and its realm state.
    pub realm: Option<crate::rsi::Realm>,
    /// Guest ranges EL2 zeroed itself before the first run and nobody can
    /// have written since: measured without being read ([`KnownZero`]).
    known_zero: KnownZero,
    /// Guest ranges the host declared zero before the first run
    /// (`VM_DECLARE_ZERO`): measured as zero pages where nothing maps
    /// them then ([`DeclaredZero`]).
    declared_zero: DeclaredZero,
}

/// Runs of known-zero guest pages a VM keeps before its first run.
/// Contiguous `VM_DONATE_ZEROED` calls merge into one run, so a VMM that
/// zero-fills its RAM in chunks needs one; when the list is full a call
/// records nothing and its pages are read at the first run instead.
const KNOWN_ZERO_RUNS: usize = 8;

/// The known-zero list (issue 16). Its soundness argument: a guest
/// address is recorded only by [`give`] for `VM_DONATE_ZEROED` of a
/// protected VM not yet measured, after the pages' ownership commit (host
/// stage 2 and SMMU mirror unmapped, their TLBs invalidated and synced:
/// `HostMemory::reflect`), after `zero_unowned` zeroed and cleaned them to
/// the point of coherency, and with the VM's lock held throughout, the
/// lock [`measure_first_run`] takes too. From then until the measurement:
/// - the host cannot write the pages: it no longer maps them, nor can its
///   DMA (SMMU), and ownership refuses to give them to anyone else (the
///   hypervisor itself, another VM, the host) while this VM owns them;
/// - no guest runs: the VM is not measured, so none of its vCPUs has run
///   (`VCPU_RUN` measures first), and guest calls, RSI and MMIO emulation,
///   which are the hypervisor's only writers into guest pages besides
///   migration, all come from a running vCPU;
/// - the mapping at the address cannot change without an unmap: [`give`]
///   refuses mapped addresses, and every unmap ([`unmap_guest_page`]:
///   `VM_EVICT`, relinquish, RSI) and every remap ([`map_guest_page`]:
///   `VM_RESTORE`; [`map_realm_page`]) clears the whole list;
/// - migration import fixes the measurement at creation
///   ([`set_imported`], which clears the list) before `write_page` can
///   write a page, so nothing is ever recorded for an imported VM;
/// - `VM_DESTROY` drops the VM with its list, so a reused slot or handle
///   starts with an empty one; a second VM has its own;
/// - the first run clears it: after it the guest writes its pages.
type KnownZero = rampart_attest::KnownZero<KNOWN_ZERO_RUNS>;

/// Runs a protected VM may declare zero before its first run
/// (`VM_DECLARE_ZERO`); overlapping and adjacent declarations merge.
const DECLARED_ZERO_RUNS: usize = 8;

/// The declared-zero list (issue 16, `VM_DECLARE_ZERO`). Its soundness
/// argument: an unmapped declared page is measured as a page of zeros, so
/// it must be one that can only ever reach the guest as zeros.
/// - Only a protected VM that is not a realm and is not measured yet
///   declares ([`declare_zero`]); an imported VM is measured at creation
///   ([`set_imported`]); the first run's measurement drops the list.
/// - A declared page that IS mapped at the first run is measured as always
///   (read, or [`KnownZero`]): whatever the host put there is hashed.
/// - A declared page that nothing maps at the first run can reach the
///   guest later only through [`give`] (`VM_DONATE`, `VM_DONATE_ZEROED`),
///   which zeroes every page of a measured VM first (`zero_first`), or
///   through `VM_RESTORE`, which maps only content evicted from this VM at
///   that address. `VM_SHARE` to a protected VM is refused. So an evicted
///   page is the one unmapped page that holds content: [`declare_zero`]
///   refuses a range holding one, and [`measure_first_run`] leaves out of
///   the measurement every piece of a declared gap that holds a page
///   evicted after the declaration (as if it had not been declared).
/// - A realm's protected IPAs become RAM at the guest's request (RSI), with
///   content the realm's own; realms are refused rather than reasoned
///   about, and the CCA measurement has no such notion.
/// - MMIO: a protected guest's accesses to unmapped IPAs reach the host
///   as MMIO only at pages the guest itself guarded (after it ran).
type DeclaredZero = rampart_attest::DeclaredZero<DECLARED_ZERO_RUNS>;

/// The guest-physical MMIO pages a protected guest allows to exit to the
/// host.
#[derive(Clone, Copy, Debug, Default)]
pub struct MmioGuard {
    pages: [u64; 32],
    count: usize,
}

impl MmioGuard {
    /// Whether `ipa`'s page is guarded.
    pub fn contains(&self, ipa: u64) -> bool {
        self.pages[..self.count].contains(&(ipa & !(PAGE_SIZE - 1)))
    }

    /// Adds a page; `Err` when full.
    pub fn insert(&mut self, page: u64) -> Result<(), Error> {
        if self.contains(page) {
            return Ok(());
        }
        let slot = self.pages.get_mut(self.count).ok_or(Error::NoMemory)?;
        *slot = page;
        self.count += 1;
        Ok(())
    }

    /// Removes a page; `Err` if it was not guarded.
    pub fn remove(&mut self, page: u64) -> Result<(), Error> {
        let at = self.pages[..self.count].iter().position(|&p| p == page).ok_or(Error::InvalidParameter)?;
        self.pages.copy_within(at + 1..self.count, at);
        self.count -= 1;
        Ok(())
    }
}

/// Every VM slot.
pub static VMS: [SpinMutex<Option<Vm>>; MAX_VMS] = [const { SpinMutex::new(None) }; MAX_VMS];
static GENERATIONS: [AtomicU32; MAX_VMS] = [const { AtomicU32::new(0) }; MAX_VMS];
/// Every vCPU, by slot and index.
pub static VCPU_SLOTS: [[SpinMutex<Option<Vcpu>>; VCPUS]; MAX_VMS] =
    [const { [const { SpinMutex::new(None) }; VCPUS] }; MAX_VMS];

/// Power state of each vCPU, readable by the VM's other vCPUs while it runs.
pub static VCPU_POWER: [[AtomicU8; VCPUS]; MAX_VMS] = [const { [const { AtomicU8::new(0) }; VCPUS] }; MAX_VMS];
/// Whether each vCPU exists (readable without its lock, which a running
/// vCPU holds).
pub static VCPU_EXISTS: [[core::sync::atomic::AtomicBool; VCPUS]; MAX_VMS] =
    [const { [const { core::sync::atomic::AtomicBool::new(false) }; VCPUS] }; MAX_VMS];
/// Virtual interrupts the host made pending, one bit per INTID (0..1023),
/// collected by the vCPU when it next enters the guest.
pub static VCPU_PENDING: [[[AtomicU64; 16]; VCPUS]; MAX_VMS] =
    [const { [const { [const { AtomicU64::new(0) }; 16] }; VCPUS] }; MAX_VMS];
/// Entry point and context id for a vCPU started with PSCI CPU_ON.
pub static VCPU_BOOT: [[(AtomicU64, AtomicU64); VCPUS]; MAX_VMS] =
    [const { [const { (AtomicU64::new(0), AtomicU64::new(0)) }; VCPUS] }; MAX_VMS];

/// vCPU power states in [`VCPU_POWER`].
pub mod power {
    /// Not created, or off.
    pub const OFF: u8 = 0;
    /// CPU_ON accepted; starts at its boot entry on the next run.
    pub const PENDING: u8 = 1;
    /// Running, or runnable.
    pub const ON: u8 = 2;
}

/// The slot a handle names, if the handle is current.
#[inline]
pub fn slot_of(handle: VmHandle) -> Result<usize, Error> {
    let low = handle.0 & 0xffff_ffff;
    let slot = low.checked_sub(HANDLE_BASE).filter(|&s| s < MAX_VMS as u64).ok_or(Error::InvalidParameter)? as usize;
    let generation = handle.0 >> 32;
    if u64::from(GENERATIONS[slot].load(Ordering::Acquire)) != generation {
        return Err(Error::InvalidParameter);
    }
    Ok(slot)
}

/// Whether `handle`'s generation is still its slot's. Only `VM_DESTROY`
/// changes a generation, holding every vCPU lock of the slot: a caller that
/// holds one of them (`VCPU_RUN`) and finds the vCPU there knows it is the
/// live VM's, without the VM's lock.
#[inline]
pub fn is_current(slot: usize, handle: VmHandle) -> bool {
    GENERATIONS.get(slot).is_some_and(|g| u64::from(g.load(Ordering::Acquire)) == handle.0 >> 32)
}

/// Locks the VM a handle names.
pub fn lock(handle: VmHandle) -> Result<(usize, spin::mutex::SpinMutexGuard<'static, Option<Vm>>), Error> {
    let slot = slot_of(handle)?;
    let guard = VMS[slot].lock();
    match guard.as_ref() {
        Some(vm) if vm.handle == handle => Ok((slot, guard)),
        _ => Err(Error::InvalidParameter),
    }
}

fn vm_id(slot: usize) -> VmId {
    VmId(slot as u16 + 1)
}

/// VTTBR_EL2 value for a VM.
pub fn vttbr(vm: &Vm) -> u64 {
    (u64::from(vm.vmid) << 48) | vm.stage2.root_address().0 as u64
}

/// A slot whose generation reaches this value is retired for good (no VM
/// is ever created in it again), so a handle's 32-bit generation never
/// wraps and a stale handle can never name a later VM. Each slot serves
/// 2^32 − 1 VMs first.
const RETIRED: u32 = u32::MAX;

/// `VM_CREATE`: the metadata becomes [`PageState::HypOwnedForVm`], held
/// for this VM until `VM_DESTROY` (no host call can take it back, share it
/// or give it to a guest meanwhile); vCPU state pages come first, then the
/// stage-2 table pool.
///
/// [`PageState::HypOwnedForVm`]: rampart_ownership::PageState::HypOwnedForVm
///
/// A realm VM if `realm` (`VM_CREATE` config bit 2, only with the
/// protected bit: `VmConfig::decode` refused it otherwise).
pub fn create_as(metadata: PageRange, config: VmConfig, realm: bool) -> Result<VmHandle, Error> {
    if metadata.pages() < config.min_metadata_pages() || (realm && !config.protected) {
        return Err(Error::InvalidParameter);
    }
    // Everything that can be refused is checked before the pages move.
    let range = MemRange::new(metadata.start(), metadata.end()).ok_or(Error::InvalidParameter)?;
    let vcpu_pages = config.max_vcpus;
    let pool_start = range.start() + vcpu_pages * PAGE_SIZE;
    let pool_range = MemRange::new(pool_start, range.end()).ok_or(Error::InvalidParameter)?;
    // Take a free slot that is not retired and hold its lock for the whole
    // creation. The generation is read under the slot's lock, which
    // `destroy` holds when it advances it.
    let (slot, mut guard) = VMS
        .iter()
        .enumerate()
        .find_map(|(i, s)| {
            let guard = s.try_lock().filter(|g| g.is_none())?;
            (GENERATIONS[i].load(Ordering::Acquire) != RETIRED).then_some((i, guard))
        })
        .ok_or(Error::NoMemory)?;
    let id = vm_id(slot);
    crate::memory::with(|mem| {
        // Holds back what giving the metadata back at VM_DESTROY may cost.
        let checked = mem.check_for_guest(Transition::HostDonateVmMeta(id), metadata, id)?;
        mem.commit(checked);
        Ok(())
    })?;
    // The metadata is now held for this VM, mapped at EL2 and zeroed below.
    // SAFETY: the pages were just donated to the hypervisor for this VM, are
    // mapped at EL2, and nothing refers to them.
    unsafe { mm::zero(range) };
    let pool = VmPool::new(pool_range);
    let level = crate::BOOT.get().map_or(1, |b| b.stage2_level);
    let stage2 = Mapping::new(pool, level, aarch64_paging::paging::Stage2);
    let generation = GENERATIONS[slot].load(Ordering::Acquire);
    let handle = VmHandle((u64::from(generation) << 32) | (HANDLE_BASE + slot as u64));
    for power in &VCPU_POWER[slot] {
        power.store(power::OFF, Ordering::Release);
    }
    crate::rsi::set_realm(slot, realm);
    *guard = Some(Vm {
        handle,
        vmid: id.0,
        protected: config.protected,
        max_vcpus: config.max_vcpus as usize,
        metadata: range,
        stage2,
        // A protected VM is enrolled in MMIO guard from the start; a realm
        // VM's MMIO is its unprotected alias (`crate::rsi`), no guard.
        mmio_guard: (config.protected && !realm).then(MmioGuard::default),
        debug: config.debug,
        signature: None,
        measurement: None,
        realm: realm.then(crate::rsi::Realm::default),
        known_zero: KnownZero::new(),
        declared_zero: DeclaredZero::new(),
    });
    Ok(handle)
}

/// `VCPU_CREATE`.
pub fn create_vcpu(vcpu: VcpuRef) -> Result<(), Error> {
    let (slot, guard) = lock(vcpu.vm)?;
    let vm = guard.as_ref().ok_or(Error::InvalidParameter)?;
    if vcpu.index >= vm.max_vcpus {
        return Err(Error::InvalidParameter);
    }
    let mut vcpu_slot = VCPU_SLOTS[slot][vcpu.index].try_lock().ok_or(Error::Busy)?;
    if vcpu_slot.is_some() {
        return Err(Error::Denied);
    }
    let page = vm.metadata.start() + vcpu.index as u64 * PAGE_SIZE;
    // SAFETY: page `index` of the metadata is reserved for this vCPU, is the
    // hypervisor's and mapped at EL2, was zeroed at creation and is viewed
    // only here, once, until the VM is destroyed.
    let state: &'static mut VcpuState = unsafe { mm::metadata_page(page) };
    *vcpu_slot = Some(Vcpu::new(state, vcpu.index));
    VCPU_POWER[slot][vcpu.index].store(if vcpu.index == 0 { power::ON } else { power::OFF }, Ordering::Release);
    for word in &VCPU_PENDING[slot][vcpu.index] {
        word.store(0, Ordering::Relaxed);
    }
    crate::vcpu::clear_level(slot, vcpu.index);
    VCPU_EXISTS[slot][vcpu.index].store(true, Ordering::Release);
    Ok(())
}

/// Tables mapping `bytes` at guest address `ipa` may need at most, for
/// the stage-2 root level in use, counting 4 KiB pages: blocks need fewer,
/// and the difference is what splitting them later can cost.
fn tables_needed(ipa: u64, bytes: u64) -> u64 {
    let level = crate::BOOT.get().map_or(1, |b| b.stage2_level);
    rampart_platform::tables::tables_to_map(ipa, ipa.saturating_add(bytes), level)
}

/// Attributes of guest memory in a VM's stage 2.
const GUEST_RAM: Stage2Attributes = mm::host_s2::RAM;

/// Attributes of guest memory in a VM's stage 2: forced write-back where
/// guests run with `HCR_EL2.FWB` (`crate::cpu::s2fwb`), else the host's.
fn guest_ram() -> Stage2Attributes {
    if crate::cpu::s2fwb() { mm::host_s2::RAM_FORCED_WB } else { GUEST_RAM }
}

/// Whether any page of `ipa..ipa+bytes` is mapped in the VM's stage 2.
fn any_mapped(vm: &Vm, ipa: u64, bytes: u64) -> bool {
    let mut mapped = false;
    let region = MemoryRegion::new(ipa as usize, (ipa + bytes) as usize);
    let _ = vm.stage2.walk_range(&region, &mut |_, desc, level| {
        if desc.is_valid() && !(level < 3 && desc.is_table_or_page()) {
            mapped = true;
        }
        Ok(())
    });
    mapped
}

/// The physical address behind a guest page, if mapped: a direct
/// descriptor walk (`mm::lookup`; every stage-2 fault of a guest asks).
pub fn translate(vm: &Vm, ipa: u64) -> Option<u64> {
    let level = crate::BOOT.get().map_or(1, |b| b.stage2_level);
    mm::lookup(&vm.stage2, level, ipa).map(|(pa, _)| pa)
}

/// `VM_DONATE` and `VM_SHARE`: gives (or lends) host pages to the VM at
/// `guest_address`.
pub fn give_memory(vm_handle: VmHandle, pages: PageRange, guest_address: u64, share: bool) -> Result<(), Error> {
    give(vm_handle, pages, guest_address, share, false)
}

/// `VM_DONATE_ZEROED` (issue 16): `VM_DONATE`, and the pages are zeroed
/// (`DC ZVA` where the CPU allows it) and cleaned to the point of coherency
/// after they left the host's stage 2 and before the guest's stage 2 maps
/// them, so a guest that starts with its MMU off reads zeros from DRAM
/// whatever the host left in them. The decoder bounds the range
/// (`DONATE_ZEROED_MAX_PAGES`), so the work per call is bounded.
pub fn donate_zeroed(vm_handle: VmHandle, pages: PageRange, guest_address: u64) -> Result<(), Error> {
    give(vm_handle, pages, guest_address, false, true)
}

/// [`give_memory`] and [`donate_zeroed`]: `zero` asks for the pages to be
/// zeroed even before the VM's first run.
fn give(vm_handle: VmHandle, pages: PageRange, guest_address: u64, share: bool, zero: bool) -> Result<(), Error> {
    let (slot, mut guard) = lock(vm_handle)?;
    let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
    if share && vm.protected {
        return Err(Error::Denied);
    }
    // A running realm's protected IPAs become RAM only when the guest asks
    // (`RSI_IPA_STATE_SET`): after its first run the host may not make an
    // EMPTY granule RAM behind the guest's back, which the CCA architecture
    // gives a host no way to do either. The alias half is not affected.
    if vm.realm.is_some() && vm.measurement.is_some() && guest_address < crate::rsi::shared_bit() {
        return Err(Error::Denied);
    }
    let bytes = pages.pages() * PAGE_SIZE;
    let ipa_end = guest_address.checked_add(bytes).ok_or(Error::InvalidParameter)?;
    if ipa_end > ipa_limit() {
        return Err(Error::Range);
    }
    if any_mapped(vm, guest_address, bytes) || crate::swap::any_evicted(slot, vm_handle, guest_address, ipa_end) {
        return Err(Error::Denied);
    }
    let tables = tables_needed(guest_address, bytes);
    if vm.stage2.translation().available() < tables {
        return Err(Error::NoMemory);
    }
    let id = vm_id(slot);
    let transition = if share { Transition::HostShareGuest(id) } else { Transition::HostDonateGuest(id) };
    let zero_first = zero || vm.measurement.is_some();
    // Known zero from here to the first run (see [`KnownZero`]): zeroed
    // below, after the host lost the pages, for a protected VM that has
    // not run. Not for `VM_SHARE` (the host keeps the pages).
    let known_zero = zero && !share && vm.protected && vm.measurement.is_none();
    let range = MemRange::new(pages.start(), pages.end()).ok_or(Error::InvalidParameter)?;
    crate::memory::with(|mem| {
        // Also holds back what handing these pages back to the host at
        // teardown may cost the host stage 2.
        let checked = mem.check_for_guest(transition, pages, id)?;
        mem.commit(checked);
        if zero_first {
            // After the first run nothing the host wrote may reach the
            // guest: the pages are the guest's now, and cleared before it
            // can map them. `VM_DONATE_ZEROED` asks for the same before
            // the first run. `zero_unowned` cleans the zeros to the point
            // of coherency (`mm::zero`), which a guest whose MMU is off
            // reads.
            mem.zero_unowned(range);
        }
        Ok(())
    })?;
    if known_zero {
        // Cannot fail: a full list records nothing, and the pages are read.
        let _ = vm.known_zero.record(guest_address, pages.pages());
    }
    let region = MemoryRegion::new(guest_address as usize, ipa_end as usize);
    // 4 KiB pages only: a page the guest later relinquishes is then unmapped
    // without splitting a live block (see `unmap_guest_page`).
    let free_before = vm.stage2.translation().free();
    if let Err(e) =
        vm.stage2.map_range(&region, PhysicalAddress(pages.start() as usize), guest_ram(), Constraints::NO_BLOCK_MAPPINGS)
    {
        // The range was checked against the IPA limit and is page-aligned:
        // only a broken invariant gets here.
        crate::println!("VM stage-2 map failed after its checks: {e}; stopping");
        crate::power_off();
    }
    // Splitting the blocks just mapped down to pages (a guest giving up
    // pages one at a time) may need what mapping them as pages would have
    // used and the blocks did not; hold that back.
    let used = free_before.saturating_sub(vm.stage2.translation().free());
    let split = rampart_platform::tables::split_cost(guest_address, pages.start(), bytes);
    vm.stage2.translation().hold(split.min(tables.saturating_sub(used)));
    arch::dsb_ishst();
    // Zeroed pages may be executed at once by a VM that runs already (a
    // non-protected VM's run is not recorded here): drop stale
    // instructions for them everywhere.
    if zero_first {
        crate::arch::cache::made_executable();
    }
    Ok(())
}

/// `VM_DECLARE_ZERO` (issue 16): `pages` pages from `guest_address` (the
/// decoder checked alignment, a non-zero count and no wrap) are measured as
/// zeros at the first run wherever nothing maps them then (see
/// [`DeclaredZero`]). Maps nothing, allocates nothing; on an error nothing
/// changed.
pub fn declare_zero(vm_handle: VmHandle, guest_address: u64, pages: u64) -> Result<(), Error> {
    let (slot, mut guard) = lock(vm_handle)?;
    let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
    if !vm.protected || vm.realm.is_some() || vm.measurement.is_some() {
        return Err(Error::Denied);
    }
    let ipa_end = pages
        .checked_mul(PAGE_SIZE)
        .and_then(|bytes| guest_address.checked_add(bytes))
        .ok_or(Error::InvalidParameter)?;
    if ipa_end > ipa_limit() {
        return Err(Error::Range);
    }
    // An evicted page holds content the host can restore after the first
    // run: never measured as zero.
    if crate::swap::any_evicted(slot, vm_handle, guest_address, ipa_end) {
        return Err(Error::Denied);
    }
    vm.declared_zero.declare(guest_address, pages).map_err(|e| match e {
        rampart_attest::DeclareError::Full => Error::NoMemory,
        rampart_attest::DeclareError::Malformed => Error::InvalidParameter,
    })
}

/// `VM_LIST`: the handle of the first live VM in a slot after `after`'s
/// (or from the first slot for 0), or 0.
pub fn list_after(after: u64) -> u64 {
    let first = if after == 0 {
        0
    } else {
        match (after & 0xffff_ffff).checked_sub(HANDLE_BASE) {
            Some(slot) if slot < MAX_VMS as u64 => slot as usize + 1,
            _ => return 0,
        }
    };
    (first..MAX_VMS).find_map(|slot| VMS[slot].lock().as_ref().map(|vm| vm.handle.0)).unwrap_or(0)
}

/// `VM_SET_SIGNATURE`: before the VM's first run.
pub fn set_signature(handle: VmHandle, signer: [u8; 32], signature: [u8; 64]) -> Result<(), Error> {
    let (_, mut guard) = lock(handle)?;
    let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
    if vm.measurement.is_some() {
        return Err(Error::Denied);
    }
    vm.signature = Some((signer, signature));
    Ok(())
}

/// Measures the VM at its first run: its configuration, vCPU 0's entry
/// state and every page of its stage 2 in guest-physical order. Every page
/// is read (measurement v2, docs/formats.md: one it reads as all zero
/// joins a zero-run record, any other is hashed whole), except those EL2
/// zeroed itself and nobody could write since ([`KnownZero`]), which join
/// the zero runs unread: the same records. A protected VM runs
/// only if a trusted key signed that measurement. On success the
/// measurement is fixed for the VM's life.
pub fn measure_first_run(vm: &mut Vm, entry_pc: u64, x0: u64) -> Result<(), Error> {
    let vcpus = u32::try_from(vm.max_vcpus).map_err(|_| Error::InvalidParameter)?;
    // The guest ABI (realm or not, issue 12) is measured: an image signed
    // for one never runs under the other.
    let flags = rampart_attest::VmFlags { protected: vm.protected, debug: vm.debug, realm: vm.realm.is_some() };
    let mut measurer = crate::security::measurer_as(flags, vcpus, entry_pc, x0);
    let mut failed = None;
    // Leaves are 4 KiB pages: measure runs contiguous in both address
    // spaces at once, so each needs one temporary EL2 mapping, not one per
    // page.
    let mut pending: Option<(u64, u64, u64)> = None;
    let known = measured_known_zero(vm);
    let declared = vm.declared_zero;
    let (slot, handle) = (usize::from(vm.vmid).saturating_sub(1), vm.handle);
    // Declared pages between mapped runs are measured as zero pages, in
    // IPA order, except a piece holding a page evicted since it was
    // declared (see [`DeclaredZero`]): that piece is left out.
    let mut keep = |start: u64, end: u64| !crate::swap::any_evicted(slot, handle, start, end);
    // One past the last mapped page measured.
    let mut measured_to = 0;
    let region = MemoryRegion::new(0, ipa_limit() as usize);
    let _ = vm.stage2.walk_range(&region, &mut |mr, desc, level| {
        if !desc.is_valid() || (level < 3 && desc.is_table_or_page()) {
            return Ok(());
        }
        let ipa = mr.start().0 as u64;
        let pa = desc.output_address().0 as u64;
        let size = (mr.end().0 - mr.start().0) as u64;
        if let Some((run_ipa, run_pa, run_size)) = &mut pending
            && *run_ipa + *run_size == ipa
            && *run_pa + *run_size == pa
        {
            *run_size += size;
            return Ok(());
        }
        if let Some(run) = pending.replace((ipa, pa, size))
            && let Err(e) = measure_mapped(&mut measurer, &known, &declared, &mut measured_to, run, &mut keep)
        {
            failed = Some(e);
            return Err(());
        }
        Ok(())
    });
    if failed.is_none()
        && let Some(run) = pending
        && let Err(e) = measure_mapped(&mut measurer, &known, &declared, &mut measured_to, run, &mut keep)
    {
        failed = Some(e);
    }
    if failed.is_none()
        && declared.measure_between(&mut measurer, measured_to, ipa_limit(), &mut keep).is_err()
    {
        failed = Some(Error::InvalidParameter);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let measurement = measurer.finish();
    if vm.protected {
        crate::security::check_signature(&measurement, vm.signature.as_ref())?;
    }
    vm.measurement = Some(measurement);
    // The guest runs next and writes its pages; every page it gets from
    // now on is zeroed first (`give`'s `zero_first`).
    vm.known_zero.clear();
    vm.declared_zero.clear();
    Ok(())
}

/// The known-zero list the first run measures with: the VM's, or, with
/// the planted bug `declared-hides-mapped` (test builds only), the
/// declared ranges too, so that a mapped declared page is measured as zero
/// without being read (the laundering `vm-declare-zero-laundered` catches).
fn measured_known_zero(vm: &Vm) -> KnownZero {
    let mut known = vm.known_zero;
    if crate::mutant::active(crate::mutant::Mutant::DeclaredHidesMapped) {
        for &(start, end) in vm.declared_zero.runs() {
            let _ = known.record(start, (end - start) / PAGE_SIZE);
        }
    }
    known
}

/// Measures the declared pages between the last mapped run and this one
/// (`measured_to` up to `run`'s start), then the mapped run `run` itself
/// ([`measure_run`]), and moves `measured_to` past it.
fn measure_mapped(
    measurer: &mut rampart_attest::Measurer,
    known: &KnownZero,
    declared: &DeclaredZero,
    measured_to: &mut u64,
    run: (u64, u64, u64),
    keep: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<(), Error> {
    let (ipa, _, size) = run;
    declared.measure_between(measurer, *measured_to, ipa, keep).map_err(|_| Error::InvalidParameter)?;
    measure_run(measurer, known, run)?;
    *measured_to = ipa + size;
    Ok(())
}

/// Measures `size` bytes of guest memory at guest address `ipa`, physical
/// address `pa`: pages `known` holds as zero as zero runs, unread (the
/// same records reading them gives, docs/formats.md), the others read
/// page by page.
fn measure_run(
    measurer: &mut rampart_attest::Measurer,
    known: &KnownZero,
    (ipa, pa, size): (u64, u64, u64),
) -> Result<(), Error> {
    let pages = size / PAGE_SIZE;
    let mut done = 0;
    while done < pages {
        let at = ipa + done * PAGE_SIZE;
        let (zero, count) = known.prefix(at, pages - done);
        if count == 0 {
            return Err(Error::InvalidParameter);
        }
        if zero {
            measurer.zero_pages(at, count).map_err(|_| Error::InvalidParameter)?;
        } else {
            read_run(measurer, at, pa + done * PAGE_SIZE, count * PAGE_SIZE)?;
        }
        done += count;
    }
    Ok(())
}

/// Measures `size` bytes of guest memory at guest address `ipa`, physical
/// address `pa`, reading every page.
fn read_run(measurer: &mut rampart_attest::Measurer, ipa: u64, pa: u64, size: u64) -> Result<(), Error> {
    let range = MemRange::from_base_size(pa, size).ok_or(Error::InvalidParameter)?;
    let mut failed = None;
    crate::memory::with(|mem| {
        mem.with_pages(range, &mut |page, bytes| {
            // Measure what DRAM holds: the guest starts with its MMU off.
            // (`bytes` is the page's EL2 mapping, the fixmap.) `page` reads
            // every byte: the zero check, then the hash unless all zero.
            if let Some(window) = MemRange::from_base_size(bytes.as_ptr() as u64, PAGE_SIZE) {
                crate::arch::cache::before_reading(window);
            }
            if measurer.page(ipa + (page - pa), bytes).is_err() {
                failed = Some(Error::InvalidParameter);
            }
        })
    })?;
    failed.map_or(Ok(()), Err)
}

/// One past the highest guest-physical address a VM can have: the same
/// IPA size as the host's stage 2 (VTCR_EL2 is shared).
pub fn ipa_limit() -> u64 {
    1 << crate::BOOT.get().map_or(32, |b| b.ipa_bits)
}

/// Unmaps one guest page from the VM's stage 2 and invalidates it.
///
/// Guest stage 2 holds only 4 KiB page descriptors (`give_memory` maps with
/// `NO_BLOCK_MAPPINGS`), so this replaces one valid level-3 descriptor with
/// an invalid one and never splits a live block: no break-before-make is
/// needed, and no table page is allocated. Then: DSB (the store is visible
/// to the walkers), TLBI by IPA for the VM's VMID, DSB, and the VMID's
/// combined stage-1+2 entries (`tlbi_stage1_of_vmid`).
pub fn unmap_guest_page(vm: &mut Vm, ipa: u64) {
    // Whatever comes to be mapped here later is not what EL2 zeroed.
    vm.known_zero.clear();
    let page = ipa & !(PAGE_SIZE - 1);
    let region = MemoryRegion::new(page as usize, (page + PAGE_SIZE) as usize);
    // Guest stage 2 maps 4 KiB pages only (`give_memory`), so this clears one
    // level-3 entry and never splits a live block; should a table ever be
    // needed, it comes from what `give_memory` held back.
    let free_before = vm.stage2.translation().free();
    if let Err(e) =
        vm.stage2.map_range(&region, PhysicalAddress(0), Stage2Attributes::empty(), Constraints::NO_BLOCK_MAPPINGS)
    {
        crate::println!("VM stage-2 unmap failed: {e}; stopping");
        crate::power_off();
    }
    vm.stage2.translation().release(free_before.saturating_sub(vm.stage2.translation().free()));
    arch::dsb_ishst();
    arch::with_vttbr(vttbr(vm), || {
        arch::tlbi_ipa(page);
        arch::tlbi_stage1_of_vmid();
    });
}

/// Whether mapping one page at `ipa` needs a new stage-2 table (no
/// level-3 table covers it yet).
pub fn page_needs_table(vm: &Vm, ipa: u64) -> bool {
    let page = ipa & !(PAGE_SIZE - 1);
    let Some(end) = page.checked_add(PAGE_SIZE) else { return true };
    let mut leaf_level = false;
    let region = MemoryRegion::new(page as usize, end as usize);
    let _ = vm.stage2.walk_range(&region, &mut |_, _, level| {
        leaf_level |= level == 3;
        Ok(())
    });
    !leaf_level
}

/// Stage-2 table pages still available to the VM.
pub fn tables_available(vm: &Vm) -> u64 {
    vm.stage2.translation().available()
}

/// Worst-case stage-2 tables for mapping one page at `ipa`.
pub fn page_tables_needed(ipa: u64) -> u64 {
    tables_needed(ipa & !(PAGE_SIZE - 1), PAGE_SIZE)
}

/// Maps one 4 KiB guest page (`VM_RESTORE`): `ipa` was checked against the
/// IPA limit and the tables it needs ([`page_needs_table`]) are available.
/// Invalid-to-valid: no TLB entry can exist for it, so a DSB publishes it.
pub fn map_guest_page(vm: &mut Vm, ipa: u64, pa: u64) {
    // The unmap before it cleared the list already; a remap never keeps it.
    vm.known_zero.clear();
    let page = ipa & !(PAGE_SIZE - 1);
    let region = MemoryRegion::new(page as usize, (page + PAGE_SIZE) as usize);
    if let Err(e) = vm.stage2.map_range(&region, PhysicalAddress(pa as usize), guest_ram(), Constraints::NO_BLOCK_MAPPINGS) {
        // Checked by the caller: only a broken invariant gets here.
        crate::println!("VM stage-2 page map failed after its checks: {e}; stopping");
        crate::power_off();
    }
    arch::dsb_ishst();
}

/// Maps host-checked page `pa` at guest page `ipa` (nothing mapped there)
/// in the VM's stage 2, for a realm's RIPAS change (`crate::rsi`). `check`
/// is `true` to ask only whether the tables it needs are there.
pub fn map_realm_page(vm: &mut Vm, ipa: u64, pa: u64, check: bool) -> Result<(), Error> {
    let page = ipa & !(PAGE_SIZE - 1);
    let end = page.checked_add(PAGE_SIZE).ok_or(Error::Range)?;
    if end > ipa_limit() {
        return Err(Error::Range);
    }
    if vm.stage2.translation().available() < tables_needed(page, PAGE_SIZE) {
        return Err(Error::NoMemory);
    }
    if check {
        return Ok(());
    }
    vm.known_zero.clear();
    let region = MemoryRegion::new(page as usize, end as usize);
    if let Err(e) =
        vm.stage2.map_range(&region, PhysicalAddress(pa as usize), guest_ram(), Constraints::NO_BLOCK_MAPPINGS)
    {
        // Checked above: only a broken invariant gets here.
        crate::println!("VM stage-2 map of a realm page failed after its checks: {e}; stopping");
        crate::power_off();
    }
    // An invalid entry became valid: no TLB entry can exist for it; the
    // store must be visible to the walkers before the guest retries.
    arch::dsb_ishst();
    Ok(())
}

/// Runs a guest's page transition on the page behind `ipa`. With `unmap`,
/// the page also leaves the guest's stage 2 — after every check passed and
/// before the new owner can reach it, so no vCPU of the VM can still write
/// it once it is zeroed and handed over.
pub fn guest_page_transition(vm: &mut Vm, ipa: u64, make: fn(VmId) -> Transition, unmap: bool) -> Result<(), Error> {
    let pa = translate(vm, ipa).ok_or(Error::InvalidParameter)?;
    let id = VmId(vm.vmid);
    let page = PageRange::new(pa & !(PAGE_SIZE - 1), 1)?;
    crate::memory::with(|mem| {
        let checked = mem.check(make(id), page)?;
        if unmap {
            unmap_guest_page(vm, ipa);
        }
        mem.commit(checked);
        Ok(())
    })
}

/// Every vCPU's lock of VM slot `slot` (`VM_DESTROY`, `VM_EXPORT`'s first
/// call), or `BUSY` with none held if one is taken (a vCPU running on
/// another CPU, or another call holding it for a moment). Take it only for
/// a call whose checks have passed: see [`destroy`].
pub fn lock_vcpus(slot: usize) -> Result<[Option<spin::mutex::SpinMutexGuard<'static, Option<Vcpu>>>; VCPUS], Error> {
    let mut vcpus: [Option<spin::mutex::SpinMutexGuard<'static, Option<Vcpu>>>; VCPUS] = [const { None }; VCPUS];
    for (held, vcpu) in vcpus.iter_mut().zip(VCPU_SLOTS.get(slot).ok_or(Error::InvalidParameter)?) {
        *held = Some(vcpu.try_lock().ok_or(Error::Busy)?);
    }
    Ok(vcpus)
}

/// `VM_DESTROY`'s refusals, under the VM's lock (`guard` is slot `slot`'s):
/// the handle must still name the VM, and the metadata's release (the last
/// step) must be possible: its pages' state, and the page-table memory the
/// host's mapping needs, asked while the answer can still be "no, nothing
/// changed". Returns the metadata's pages.
fn teardown_check(slot: usize, guard: &Option<Vm>, handle: VmHandle) -> Result<PageRange, Error> {
    let metadata = match guard.as_ref() {
        Some(vm) if vm.handle == handle => vm.metadata,
        _ => return Err(Error::InvalidParameter),
    };
    let metadata_pages = PageRange::new(metadata.start(), metadata.size() / PAGE_SIZE)?;
    crate::memory::with(|mem| mem.check_teardown(Transition::HypReleaseVmMeta(vm_id(slot)), metadata_pages).map(drop))?;
    Ok(metadata_pages)
}

/// `VM_DESTROY`: refused while a vCPU runs; then every guest page is
/// zeroed and returned, and the metadata and VMID are released.
///
/// Every refusal comes before anything changes; once the VM starts going
/// away the call succeeds.
pub fn destroy(handle: VmHandle) -> Result<(), Error> {
    let slot = slot_of(handle)?;
    // Every check that can refuse, first under the VM's lock alone: a
    // refused call takes no vCPU's lock, so it cannot make a VCPU_RUN of
    // this VM on another CPU answer BUSY meanwhile (the ABI allows BUSY
    // there only while that vCPU runs elsewhere).
    teardown_check(slot, &VMS[slot].lock(), handle)?;
    // Hold every vCPU's lock: none can run while the VM goes away.
    let mut vcpus = lock_vcpus(slot)?;
    let mut guard = VMS[slot].lock();
    // Again, now that no vCPU runs: only a concurrent VM_DESTROY can have
    // changed the answer.
    let metadata_pages = teardown_check(slot, &guard, handle)?;
    let id = vm_id(slot);

    // From here on nothing is refused.
    // The handle dies now: no new call can find the VM. A slot whose
    // generation reaches RETIRED is never used again (see `create`), so a
    // live VM's generation is below RETIRED and this never wraps.
    let _ = GENERATIONS[slot].fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| g.checked_add(1));
    // Its swap key and versions go too: its sealed pages are now useless.
    crate::swap::forget(slot);
    let Some(vm) = guard.take() else { return Ok(()) };
    for vcpu in vcpus.iter_mut().flatten() {
        **vcpu = None;
    }
    for power in &VCPU_POWER[slot] {
        power.store(power::OFF, Ordering::Release);
    }
    for exists in &VCPU_EXISTS[slot] {
        exists.store(false, Ordering::Release);
    }
    let vttbr = vttbr(&vm);
    // No vCPU can run (their locks are held); drop any translation the VMID
    // still has cached before its pages go anywhere.
    arch::with_vttbr(vttbr, arch::tlbi_vmid);
    // Every page the guest owns or borrows is mapped in its stage 2: walk
    // that (not all of RAM), in batches of physically contiguous runs,
    // handing each run back.
    let limit = ipa_limit();
    let mut cursor = 0u64;
    loop {
        let mut batch = [(0u64, 0u64); 32];
        let mut count = 0usize;
        let mut next = limit;
        let region = MemoryRegion::new(cursor as usize, limit as usize);
        let _ = vm.stage2.walk_range(&region, &mut |mr, desc, level| {
            if !desc.is_valid() || (level < 3 && desc.is_table_or_page()) {
                return Ok(());
            }
            let pa = desc.output_address().0 as u64;
            let pages = (mr.end().0 - mr.start().0) as u64 / PAGE_SIZE;
            if let Some(last) = count.checked_sub(1).and_then(|i| batch.get_mut(i))
                && last.0 + last.1 * PAGE_SIZE == pa
            {
                last.1 += pages;
                return Ok(());
            }
            if count == batch.len() {
                next = mr.start().0 as u64;
                return Err(());
            }
            batch[count] = (pa, pages);
            count += 1;
            Ok(())
        });
        // `with` fails only before boot installed the memory state, and the
        // check above used it.
        let _ = crate::memory::with(|mem| {
            for &(pa, pages) in &batch[..count] {
                mem.reclaim_guest_range(id, pa, pages);
            }
            Ok(())
        });
        if next >= limit || next <= cursor {
            break;
        }
        cursor = next;
    }
    // The VM's stage-2 tables and vCPU state live in its metadata: drop
    // them before the pages go back.
    drop(vcpus);
    drop(vm);

    // Teardown draws on the table pages held back for it at VM_CREATE and
    // VM_DONATE/VM_SHARE, so it never fails for want of memory; the pages'
    // state was checked above and no other call can change it.
    let released = crate::memory::with(|mem| {
        let result = mem.check_teardown(Transition::HypReleaseVmMeta(id), metadata_pages).map(|checked| mem.commit(checked));
        mem.release_guest_hold(id);
        result
    });
    if let Err(e) = released {
        // A broken invariant only (a corrupt ownership entry): the VM is
        // gone; its metadata stays the hypervisor's, out of everyone's
        // reach, rather than failing a call that has already done its work.
        crate::println!("VM {} destroyed; its metadata at {:#x} ({} pages) stays held: {e}", id.0, metadata_pages.start(), metadata_pages.pages());
    }
    Ok(())
}

/// The oracle's view of a VM's private parts: its metadata and stage 2
/// (test builds, feature `oracle`).
#[cfg(feature = "oracle")]
pub fn oracle_view(vm: &Vm) -> (MemRange, &VmTable) {
    (vm.metadata, &vm.stage2)
}

/// A slot's generation, for the oracle (test builds, feature `oracle`).
#[cfg(feature = "oracle")]
pub fn oracle_generation(slot: usize) -> u32 {
    GENERATIONS.get(slot).map_or(0, |g| g.load(Ordering::Acquire))
}

/// Migration (`hyp/src/migrate.rs`): the first guest page mapped at or
/// above `from`, as `(guest address, physical address)`.
pub fn next_page(vm: &Vm, from: u64) -> Option<(u64, u64)> {
    let limit = ipa_limit();
    if from >= limit {
        return None;
    }
    let mut found = None;
    let region = MemoryRegion::new(from as usize, limit as usize);
    let _ = vm.stage2.walk_range(&region, &mut |mr, desc, level| {
        if !desc.is_valid() || (level < 3 && desc.is_table_or_page()) {
            return Ok(());
        }
        let ipa = (mr.start().0 as u64).max(from);
        let pa = desc.output_address().0 as u64 + (ipa - mr.start().0 as u64);
        found = Some((ipa, pa));
        Err(())
    });
    found
}

/// Migration: the signer and signature the VM's first run accepted.
pub fn signature(vm: &Vm) -> Option<([u8; 32], [u8; 64])> {
    vm.signature
}

/// Migration: a VM created by an import takes the measurement, signature
/// and MMIO guard the stream carries; it is then "measured" (no
/// `VM_SET_SIGNATURE`, `VCPU_SET_REGS`; donations are zeroed first).
pub fn set_imported(vm: &mut Vm, measurement: rampart_attest::Measurement, signature: Option<([u8; 32], [u8; 64])>) {
    // Measured already: nothing is ever known zero (`write_page` writes
    // the VM's pages), see [`KnownZero`].
    vm.known_zero.clear();
    // Nothing declared either: `declare_zero` refuses a measured VM.
    vm.declared_zero.clear();
    vm.measurement = Some(measurement);
    vm.signature = signature;
}

impl MmioGuard {
    /// Migration: the guarded pages.
    pub fn pages(&self) -> &[u64] {
        &self.pages[..self.count]
    }
}
