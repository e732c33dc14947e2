//! Sealed swap (issue 14): `VM_EVICT` and `VM_RESTORE` (docs/abi.md,
//! "Sealed swap"; docs/design.md, "Sealed swap").
//!
//! The cryptography and the per-address versions are `rampart-seal`'s; this
//! module owns the per-VM state (key, serial, version map), the order of
//! checks and the point after which nothing can fail.
//!
//! Lock order: the VM's lock, then its [`SLOTS`] entry, then the host
//! memory lock, then [`BOUNCE`]. Every path that takes a [`SLOTS`] entry
//! holds the VM's lock already (the fault path in `vcpu.rs` included).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rampart_abi::Error;
use rampart_abi::host::{PageRange, VmHandle};
use rampart_ownership::{Transition, VmId};
use rampart_platform::PAGE_SIZE;
use rampart_seal::{MapError, Place, VersionMap, VmKey};
use spin::mutex::SpinMutex;
use zeroize::Zeroize;

use crate::vm::{self, MAX_VMS};

/// Version-map entries per VM slot (32 KiB); 7/8 of them usable, so a VM
/// may evict 3584 distinct guest addresses over its life.
const MAP_ENTRIES: usize = 4096;

/// Host 2 MiB regions per VM whose restored pages' return to the host is
/// held back (see [`HeldRegion`]).
const HELD_REGIONS: usize = 128;

/// Pool pages held back for returning restored pages to the host at
/// `VM_DESTROY`, per 2 MiB host region: returning one page inside a
/// region whose host stage-2 level-3 table exists (it does while any page
/// of it is a guest's) needs no table, so one worst-case hold per region
/// covers every restored page in it. Released when the last restored page
/// of the region leaves the VM again (`VM_EVICT`).
#[derive(Clone, Copy)]
struct HeldRegion {
    /// The region's first byte >> 21, plus one (0: unused entry).
    region: u64,
    /// Restored pages of the region the VM holds.
    pages: u32,
    /// Pool pages held for it.
    held: u64,
}

/// One VM slot's swap state.
struct SlotSwap {
    /// The handle of the VM this state belongs to (0: none yet). A state
    /// found with another handle is a dead VM's and is reset before use.
    owner: u64,
    /// The VM's creation serial for its key and associated data: unique
    /// among all VMs since boot.
    serial: u64,
    /// The VM's key, derived at its first eviction.
    key: Option<VmKey>,
    /// Every address it evicted: version, evicted now or not.
    map: VersionMap<MAP_ENTRIES>,
    /// Host regions holding restored pages, and what is held for them.
    held: [HeldRegion; HELD_REGIONS],
}

impl SlotSwap {
    const fn new() -> Self {
        SlotSwap { owner: 0, serial: 0, key: None, map: VersionMap::new(), held: [HeldRegion { region: 0, pages: 0, held: 0 }; HELD_REGIONS] }
    }

    /// The held-region entry of host page `pa`, if any.
    fn held_region(&mut self, pa: u64) -> Option<&mut HeldRegion> {
        let region = (pa >> 21) + 1;
        self.held.iter_mut().find(|h| h.region == region)
    }

    /// The state for VM `handle`, a fresh one if the slot's belongs to a
    /// destroyed VM.
    fn adopt(&mut self, handle: VmHandle) -> Result<(), Error> {
        if self.owner == handle.0 {
            return Ok(());
        }
        let serial = NEXT_SERIAL.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_add(1)).map_err(|_| Error::NotSupported)?;
        self.forget();
        self.owner = handle.0;
        self.serial = serial;
        Ok(())
    }

    /// Drops the key (wiped on drop) and the versions.
    fn forget(&mut self) {
        self.owner = 0;
        self.serial = 0;
        self.key = None;
        // 32 KiB: only if the VM evicted anything (VM_DESTROY of every VM
        // comes here).
        if self.map.used() > 0 {
            self.map.clear();
        }
        // What was held is released with the VM's other holds at
        // VM_DESTROY (`release_guest_hold`).
        self.held.fill(HeldRegion { region: 0, pages: 0, held: 0 });
    }

    /// The VM's key, derived on first use: device-secret root, boot value,
    /// serial. `NOT_SUPPORTED` without a device secret.
    fn key(&mut self) -> Result<&VmKey, Error> {
        if self.key.is_none() {
            let root = crate::security::swap_root()?;
            self.key = Some(VmKey::derive(&root, boot_value(), self.serial));
        }
        self.key.as_ref().ok_or(Error::NotSupported)
    }

    /// Whether this state is VM `handle`'s.
    fn owned_by(&self, handle: VmHandle) -> bool {
        self.owner == handle.0 && handle.0 != 0
    }
}

static SLOTS: [SpinMutex<SlotSwap>; MAX_VMS] = [const { SpinMutex::new(SlotSwap::new()) }; MAX_VMS];

/// The next VM serial; never reused while the machine runs.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One page of EL2 memory for sealing and opening in place (used under
/// the host memory lock; plaintext never stays in it after a call).
static BOUNCE: SpinMutex<[u8; PAGE_SIZE as usize]> = SpinMutex::new([0; PAGE_SIZE as usize]);

/// The value drawn once per boot that salts every VM key, so that no key
/// (hence no nonce) repeats across boots and no sealed page of an earlier
/// boot authenticates: 256 bits from `RNDR` on a CPU with FEAT_RNG; on
/// one without, the physical counter and this CPU's identity at the first
/// eviction (distinct across boots in practice, but not secret: see
/// docs/design.md, "Sealed swap").
static BOOT_VALUE: spin::Once<[u8; 32]> = spin::Once::new();

fn boot_value() -> &'static [u8; 32] {
    BOOT_VALUE.call_once(|| {
        let mut value = [0u8; 32];
        for (i, chunk) in value.chunks_exact_mut(8).enumerate() {
            let random = (0..8).find_map(|_| crate::guest_calls::random());
            let word = random.unwrap_or_else(|| crate::arch::cache::counter().rotate_left(i as u32 * 16) ^ crate::arch::mpidr_el1());
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        value
    })
}

/// The ESR's data/instruction fault status is a translation fault (level 0
/// to 3).
pub fn translation_fault(iss: u64) -> bool {
    iss & 0b11_1100 == 0b00_0100
}

/// Whether the VM slot's version map may hold an entry: set (under the
/// VM's lock) before a `VM_EVICT` records one, cleared when the map is
/// emptied (under the same lock). Lets [`is_evicted`], on every stage-2
/// fault of a guest (each MMIO exit), skip the swap state's lock for the
/// VMs that never evicted a page.
static MAY_HOLD: [AtomicBool; MAX_VMS] = [const { AtomicBool::new(false) }; MAX_VMS];

/// Whether `ipa`'s page is evicted in the VM in `slot` with `handle`.
/// The caller holds the VM's lock.
#[inline]
pub fn is_evicted(slot: usize, handle: VmHandle, ipa: u64) -> bool {
    // The VM's lock orders this load after the store of any VM_EVICT
    // (which holds it too): relaxed is enough.
    if !MAY_HOLD.get(slot).is_some_and(|m| m.load(Ordering::Relaxed)) {
        return false;
    }
    SLOTS.get(slot).is_some_and(|s| {
        let state = s.lock();
        state.owned_by(handle) && state.map.is_evicted(ipa & !(PAGE_SIZE - 1))
    })
}

/// Whether a page of `[start, end)` is evicted in the VM (`VM_DONATE` and
/// `VM_SHARE` there are refused). The caller holds the VM's lock.
pub fn any_evicted(slot: usize, handle: VmHandle, start: u64, end: u64) -> bool {
    SLOTS.get(slot).is_some_and(|s| {
        let state = s.lock();
        state.owned_by(handle) && state.map.any_evicted_in(start, end)
    })
}

/// `VM_DESTROY`: the VM's key and versions go (its lock is held).
pub fn forget(slot: usize) {
    if let Some(s) = SLOTS.get(slot) {
        s.lock().forget();
    }
    if let Some(may_hold) = MAY_HOLD.get(slot) {
        may_hold.store(false, Ordering::Relaxed);
    }
}

/// A protected VM's first run (its lock is held): a page evicted before
/// the measurement held what the host put there, and the measurement
/// cannot see it (an address outside the signed layout measures the same
/// with or without it). Restoring it after the first run would hand the
/// guest content nobody measured, so once the measurement succeeds the
/// VM's evictions are forgotten ([`forget_evictions`]): a fresh serial (a
/// new key and associated data, so no page sealed before authenticates
/// again) and an empty version map. Those addresses are then plain
/// unmapped guest addresses, and a page given there later is zeroed (every
/// donation to a measured VM is). Pages restored before the first run stay
/// the VM's, measured as they are; what is held back for returning them
/// stays held.
///
/// This half runs before the measurement and reserves the fresh serial, so
/// nothing can fail after the measurement succeeded: `Some(serial)` if the
/// VM evicted anything.
///
/// # Errors
///
/// `NOT_SUPPORTED` if no fresh serial is left (never, in practice): the
/// first run is refused and nothing changes.
pub fn serial_for_first_run(slot: usize, handle: VmHandle) -> Result<Option<u64>, Error> {
    let Some(s) = SLOTS.get(slot) else {
        return Ok(None);
    };
    let state = s.lock();
    if !state.owned_by(handle) || state.map.used() == 0 {
        return Ok(None);
    }
    NEXT_SERIAL.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_add(1)).map(Some).map_err(|_| Error::NotSupported)
}

/// The second half of [`serial_for_first_run`], after the measurement
/// succeeded (the VM's lock still held since): forgets the VM's evictions
/// under the serial reserved then.
pub fn forget_evictions(slot: usize, handle: VmHandle, serial: Option<u64>) {
    let (Some(serial), Some(s)) = (serial, SLOTS.get(slot)) else {
        return;
    };
    let mut state = s.lock();
    if !state.owned_by(handle) {
        return;
    }
    state.serial = serial;
    state.key = None;
    state.map.clear();
    if let Some(may_hold) = MAY_HOLD.get(slot) {
        may_hold.store(false, Ordering::Relaxed);
    }
}

/// `VM_EVICT`: returns the page's new version and its tag.
pub fn evict(handle: VmHandle, guest_address: u64, sealed: u64) -> Result<(u64, [u8; 16]), Error> {
    let (slot, mut guard) = vm::lock(handle)?;
    let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
    let mut state = SLOTS.get(slot).ok_or(Error::InvalidParameter)?.lock();
    let id = VmId(vm.vmid);
    crate::memory::with(|mem| {
        mem.swap_check_ram(sealed)?;
        // NOT_EVICTABLE: nothing of the VM's own at the address.
        let pa = vm::translate(vm, guest_address).ok_or(Error::NotEvictable)?;
        if !mem.swap_guest_owns(pa, id) {
            return Err(Error::NotEvictable);
        }
        state.adopt(handle)?;
        let planned = match state.map.plan_evict(guest_address) {
            Ok(planned) => Ok(planned),
            Err(MapError::Full) => Err(Error::NoMemory),
            Err(_) => return Err(Error::NotEvictable),
        };
        // DENIED: the sealed page is not the host's alone (the guest page,
        // the VM's metadata, a lent, pinned or bound page...).
        mem.swap_host_owns(sealed)?;
        // NO_MEMORY: the version map, then the host stage 2's tables for
        // taking the guest page back.
        let planned = planned?;
        let page = PageRange::new(pa, 1)?;
        let checked = mem.check(Transition::GuestRelinquish(id), page)?;
        let serial = state.serial;
        let key = state.key()?;
        let place = Place { vm_serial: serial, guest_address, version: planned.version };

        // Nothing is refused from here on.
        // The page leaves the VM first: its TLB entries are invalidated on
        // every CPU (a vCPU may run elsewhere) before the hypervisor reads
        // it, so no guest store can land after the copy.
        vm::unmap_guest_page(vm, guest_address);
        let mut buffer = BOUNCE.lock();
        mem.swap_read_page(pa, &mut buffer);
        let tag = match rampart_seal::seal(key, &place, &mut buffer) {
            Ok(tag) => tag,
            Err(_) => {
                // The AEAD never refuses a page; should it, the page goes
                // back where it was and the call fails having changed
                // nothing.
                buffer.zeroize();
                vm::map_guest_page(vm, guest_address, pa);
                return Err(Error::InvalidParameter);
            }
        };
        // Ciphertext only, cleaned to the point of coherency.
        mem.swap_write_page(sealed, &buffer);
        buffer.zeroize();
        drop(buffer);
        // The guest page: zeroed, then the host's again.
        mem.commit(checked);
        if planned.held
            && let Some(region) = state.held_region(pa)
        {
            region.pages = region.pages.saturating_sub(1);
            if region.pages == 0 {
                let held = region.held;
                *region = HeldRegion { region: 0, pages: 0, held: 0 };
                mem.swap_release_hold(id, held);
            }
        }
        if let Some(may_hold) = MAY_HOLD.get(slot) {
            may_hold.store(true, Ordering::Relaxed);
        }
        state.map.commit_evict(planned);
        Ok((planned.version, tag))
    })
}

/// `VM_RESTORE`.
pub fn restore(handle: VmHandle, guest_address: u64, sealed: u64, fresh: u64, version: u64, tag: [u8; 16]) -> Result<(), Error> {
    if sealed == fresh {
        return Err(Error::InvalidParameter);
    }
    let (slot, mut guard) = vm::lock(handle)?;
    let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
    let mut state = SLOTS.get(slot).ok_or(Error::InvalidParameter)?.lock();
    let id = VmId(vm.vmid);
    crate::memory::with(|mem| {
        mem.swap_check_ram(sealed)?;
        mem.swap_check_ram(fresh)?;
        if !state.owned_by(handle) {
            return Err(Error::NotEvicted);
        }
        let planned = state.map.plan_restore(guest_address, version).map_err(|e| match e {
            MapError::StaleVersion => Error::StaleVersion,
            _ => Error::NotEvicted,
        })?;
        mem.swap_host_owns(sealed)?;
        // DENIED if the fresh page is not the host's alone; NO_MEMORY if
        // the pool cannot hold back its return at VM_DESTROY (once per
        // host 2 MiB region, see `HeldRegion`) or no region entry is free.
        let fresh_page = PageRange::new(fresh, 1)?;
        let tracked = state.held_region(fresh).is_some();
        let checked = if tracked {
            mem.check(Transition::HostDonateGuest(id), fresh_page)?
        } else {
            mem.swap_host_owns(fresh)?;
            if !state.held.iter().any(|h| h.region == 0) {
                return Err(Error::NoMemory);
            }
            mem.check_for_guest(Transition::HostDonateGuest(id), fresh_page, id)?
        };
        if vm::page_needs_table(vm, guest_address) && vm::tables_available(vm) < vm::page_tables_needed(guest_address) {
            return Err(Error::NoMemory);
        }
        let serial = state.serial;
        let key = state.key()?;
        let place = Place { vm_serial: serial, guest_address, version };
        // One read of the sealed page; only this copy is checked and used.
        let mut buffer = BOUNCE.lock();
        mem.swap_read_page(sealed, &mut buffer);
        if rampart_seal::open(key, &place, &mut buffer, &tag).is_err() {
            buffer.zeroize();
            return Err(Error::SealInvalid);
        }

        // Nothing is refused from here on.
        // The fresh page leaves the host (its stage 2 and TLBs) before the
        // plaintext is written into it.
        mem.commit(checked);
        mem.swap_write_page(fresh, &buffer);
        buffer.zeroize();
        drop(buffer);
        // The guest may execute what it gets back: no CPU keeps stale
        // instructions for this physical page.
        crate::arch::cache::made_executable();
        vm::map_guest_page(vm, guest_address, fresh);
        if let Some(region) = state.held_region(fresh) {
            region.pages = region.pages.saturating_add(1);
        } else if let Some(free) = state.held.iter_mut().find(|h| h.region == 0) {
            *free = HeldRegion { region: (fresh >> 21) + 1, pages: 1, held: crate::memory::swap_return_cost(fresh) };
        }
        state.map.commit_restore(planned, true);
        Ok(())
    })
}

/// The page VM `handle`'s stage 2 maps at `ipa`, for the oracle (test
/// builds, feature `oracle`).
#[cfg(feature = "oracle")]
pub fn oracle_translate(handle: u64, ipa: u64) -> Option<u64> {
    let (_, guard) = vm::lock(VmHandle(handle)).ok()?;
    vm::translate(guard.as_ref()?, ipa)
}
