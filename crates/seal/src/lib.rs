//! Sealed swap: how the hypervisor hands a VM's page to the untrusted host
//! and takes it back only if it is exactly what left (issue 14,
//! `VM_EVICT` / `VM_RESTORE` in `docs/abi.md`).
//!
//! Hardware-free and `no_std`: the hypervisor calls it at EL2, the tests
//! run it on the build machine.
//!
//! - [`VmKey`]: the per-VM key, HKDF-SHA256 of a root the hypervisor
//!   derives from its device secret, salted with a value drawn at boot, and
//!   the VM's creation serial (a counter never reused while the machine
//!   runs). It never leaves EL2 and is wiped when dropped.
//! - [`Place`]: what makes a sealed page valid in exactly one place: the
//!   VM (its serial, and its key), the guest address and the version.
//! - [`seal`] / [`open`]: XChaCha20-Poly1305 over one 4096-byte page, in
//!   place, with a detached 16-byte tag.
//! - [`VersionMap`]: the version of every guest address a VM ever evicted,
//!   and which are evicted now.
//!
//! # Nonce uniqueness
//!
//! The 192-bit nonce is `guest address ‖ version ‖ VM serial` (little-endian
//! 64-bit words). Under one key (one VM of one boot) a guest address's
//! version only grows: [`VersionMap`] keeps it for the VM's whole life (it
//! survives restore, the guest giving the page up and the host donating a
//! new one) and refuses to go past [`MAX_VERSION`] rather than wrap. So no
//! `(address, version)` pair, hence no nonce, is ever used twice with one
//! key. Keys differ between VMs (the serial) and between boots (the boot
//! value), so no nonce repeats across keys either, and a sealed page from
//! another VM or an earlier boot cannot authenticate.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The bytes sealed at once: one page.
pub const PAGE_SIZE: usize = 4096;
/// The authentication tag's length.
pub const TAG_SIZE: usize = 16;

/// HKDF info for a VM's swap key (domain separation from every other key
/// derived from the device secret).
const KEY_INFO: &[u8] = b"rampart swap vm key v1";
/// First bytes of the associated data.
const AD_MAGIC: &[u8; 8] = b"RSWAP001";

/// A VM's swap key. Never leaves EL2; wiped when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct VmKey([u8; 32]);

impl VmKey {
    /// Derives the key of VM `vm_serial`: HKDF-SHA256 with `root` (derived
    /// from the device secret) as input key material, `boot` (drawn once per
    /// boot) as salt, and the serial in the info.
    #[must_use]
    pub fn derive(root: &[u8; 32], boot: &[u8; 32], vm_serial: u64) -> Self {
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: this cannot
        // fail, and a failure would leave an all-zero key, never a panic.
        let _ = Hkdf::<Sha256>::new(Some(boot), root)
            .expand_multi_info(&[KEY_INFO, &vm_serial.to_le_bytes()], &mut key);
        let out = VmKey(key);
        key.zeroize();
        out
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

impl core::fmt::Debug for VmKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("VmKey(..)")
    }
}

/// Where a sealed page is valid: one VM, one guest address, one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The VM's creation serial (its key is derived from it too).
    pub vm_serial: u64,
    /// The guest-physical address of the page.
    pub guest_address: u64,
    /// The address's version at the eviction.
    pub version: u64,
}

impl Place {
    /// The associated data: magic, VM serial, guest address, version.
    #[must_use]
    pub fn associated_data(&self) -> [u8; 32] {
        let mut ad = [0u8; 32];
        ad[..8].copy_from_slice(AD_MAGIC);
        ad[8..16].copy_from_slice(&self.vm_serial.to_le_bytes());
        ad[16..24].copy_from_slice(&self.guest_address.to_le_bytes());
        #[cfg(not(feature = "mutant-no-version-binding"))]
        ad[24..32].copy_from_slice(&self.version.to_le_bytes());
        ad
    }

    /// The nonce: guest address, version, VM serial (see the crate
    /// documentation for why it never repeats under one key).
    #[must_use]
    pub fn nonce(&self) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&self.guest_address.to_le_bytes());
        #[cfg(not(feature = "mutant-no-version-binding"))]
        nonce[8..16].copy_from_slice(&self.version.to_le_bytes());
        nonce[16..24].copy_from_slice(&self.vm_serial.to_le_bytes());
        nonce
    }
}

/// A sealed page that does not authenticate for its key and place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// Encrypts `page` in place for `place` and returns its tag.
///
/// # Errors
///
/// `Refused` only if the AEAD refuses a buffer of 4096 bytes (it never
/// does); `page` is then unchanged.
pub fn seal(
    key: &VmKey,
    place: &Place,
    page: &mut [u8; PAGE_SIZE],
) -> Result<[u8; TAG_SIZE], Refused> {
    let nonce = place.nonce();
    let tag = key
        .cipher()
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &place.associated_data(), page)
        .map_err(|_| Refused)?;
    let mut out = [0u8; TAG_SIZE];
    out.copy_from_slice(&tag);
    Ok(out)
}

/// Checks and decrypts `page` in place for `place`.
///
/// # Errors
///
/// `Refused` if the ciphertext and tag were not made by [`seal`] with this
/// key and place; `page` then still holds the ciphertext (the tag is
/// checked before anything is decrypted).
pub fn open(
    key: &VmKey,
    place: &Place,
    page: &mut [u8; PAGE_SIZE],
    tag: &[u8; TAG_SIZE],
) -> Result<(), Refused> {
    let nonce = place.nonce();
    key.cipher()
        .decrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &place.associated_data(),
            page,
            Tag::from_slice(tag),
        )
        .map_err(|_| Refused)
}

/// The largest version an address can have: [`VersionMap`] packs it in 26
/// bits, and evicting past it is refused rather than wrapped (a wrapped
/// version would reuse a nonce and let an old seal back in).
pub const MAX_VERSION: u64 = (1 << 26) - 1;

/// The largest guest address [`VersionMap`] can hold (48-bit IPAs).
pub const MAX_GUEST_ADDRESS: u64 = (1 << 48) - 1;

const VERSION_MASK: u64 = MAX_VERSION;
const EVICTED: u64 = 1 << 27;
const HELD: u64 = 1 << 26;
const PAGE_SHIFT: u32 = 28;

/// Why a [`VersionMap`] refuses an eviction or a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Eviction: the map holds as many addresses as it may.
    Full,
    /// Eviction: the address's version is at [`MAX_VERSION`].
    Overflow,
    /// Eviction: the address is evicted already.
    AlreadyEvicted,
    /// Eviction: the address is beyond [`MAX_GUEST_ADDRESS`] or unaligned.
    BadAddress,
    /// Restore: the address is not evicted.
    NotEvicted,
    /// Restore: the version is not the address's current one.
    StaleVersion,
}

/// A checked eviction, applied by [`VersionMap::commit_evict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedEvict {
    index: usize,
    entry: u64,
    new: bool,
    /// The version the page gets.
    pub version: u64,
    /// The page mapped at the address now came from a restore that held
    /// back pool pages for its return to the host ([`VersionMap::commit_restore`]):
    /// the eviction gives the page back, so the caller releases them.
    pub held: bool,
}

/// A checked restore, applied by [`VersionMap::commit_restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedRestore {
    index: usize,
}

/// Every guest address a VM has evicted since it was created: its current
/// version and whether it is evicted now. Open addressing over `N` 64-bit
/// entries (`N` a power of two), filled to at most 7/8; entries are never
/// removed while the VM lives, so a version never goes back.
///
/// Entry layout: bits 63..28 = guest page number, bit 27 = evicted, bit 26
/// = held (see [`PlannedEvict::held`]), bits 25..0 = version (at least 1 in
/// a used entry, so 0 means empty).
#[derive(Clone, Debug)]
pub struct VersionMap<const N: usize> {
    entries: [u64; N],
    used: usize,
    evicted: usize,
}

impl<const N: usize> Default for VersionMap<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> VersionMap<N> {
    /// Addresses the map holds at most.
    pub const LIMIT: usize = N - N / 8;

    /// An empty map.
    #[must_use]
    pub const fn new() -> Self {
        const { assert!(N.is_power_of_two() && N >= 8) };
        VersionMap {
            entries: [0; N],
            used: 0,
            evicted: 0,
        }
    }

    /// Forgets everything (a new VM in the slot).
    pub fn clear(&mut self) {
        self.entries.fill(0);
        self.used = 0;
        self.evicted = 0;
    }

    /// Addresses evicted now.
    #[must_use]
    pub const fn evicted(&self) -> usize {
        self.evicted
    }

    /// Addresses ever evicted.
    #[must_use]
    pub const fn used(&self) -> usize {
        self.used
    }

    fn page_number(guest_address: u64) -> Option<u64> {
        (guest_address <= MAX_GUEST_ADDRESS && guest_address.trailing_zeros() >= 12)
            .then_some(guest_address >> 12)
    }

    /// The entry's index, or the empty index where it would go.
    fn probe(&self, page: u64) -> (usize, bool) {
        let mask = N - 1;
        let bits = N.trailing_zeros();
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the hash keeps `bits` bits, fewer than usize has"
        )]
        let mut index = (page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize & mask;
        // At most 7/8 full: an empty entry is always found within N steps.
        for _ in 0..N {
            let entry = self.entries[index];
            if entry == 0 {
                return (index, false);
            }
            if entry >> PAGE_SHIFT == page {
                return (index, true);
            }
            index = (index + 1) & mask;
        }
        (index, false)
    }

    /// The address's version and whether it is evicted, if it ever was.
    #[must_use]
    pub fn lookup(&self, guest_address: u64) -> Option<(u64, bool)> {
        let page = Self::page_number(guest_address & !0xfff)?;
        if self.used == 0 {
            return None;
        }
        let (index, found) = self.probe(page);
        let entry = self.entries[index];
        found.then_some((entry & VERSION_MASK, entry & EVICTED != 0))
    }

    /// Whether the page at `guest_address` is evicted now.
    #[must_use]
    pub fn is_evicted(&self, guest_address: u64) -> bool {
        self.evicted > 0
            && self
                .lookup(guest_address)
                .is_some_and(|(_, evicted)| evicted)
    }

    /// Whether any page of `[start, end)` is evicted now.
    #[must_use]
    pub fn any_evicted_in(&self, start: u64, end: u64) -> bool {
        self.evicted > 0
            && self.entries.iter().any(|&e| {
                e & EVICTED != 0
                    && ((e >> PAGE_SHIFT) << 12) >= start
                    && ((e >> PAGE_SHIFT) << 12) < end
            })
    }

    /// Checks an eviction without changing anything.
    ///
    /// # Errors
    ///
    /// `BadAddress`, `AlreadyEvicted`, `Overflow`, then `Full`.
    pub fn plan_evict(&self, guest_address: u64) -> Result<PlannedEvict, MapError> {
        let page = Self::page_number(guest_address).ok_or(MapError::BadAddress)?;
        let (index, found) = self.probe(page);
        if found {
            let entry = self.entries[index];
            if entry & EVICTED != 0 {
                return Err(MapError::AlreadyEvicted);
            }
            let version = entry & VERSION_MASK;
            if version >= MAX_VERSION {
                return Err(MapError::Overflow);
            }
            let version = version + 1;
            let held = entry & HELD != 0;
            return Ok(PlannedEvict {
                index,
                entry: (page << PAGE_SHIFT) | EVICTED | version,
                new: false,
                version,
                held,
            });
        }
        if self.used >= Self::LIMIT || self.entries[index] != 0 {
            return Err(MapError::Full);
        }
        Ok(PlannedEvict {
            index,
            entry: (page << PAGE_SHIFT) | EVICTED | 1,
            new: true,
            version: 1,
            held: false,
        })
    }

    /// Applies a planned eviction (nothing changed the map since).
    pub fn commit_evict(&mut self, planned: PlannedEvict) {
        if let Some(entry) = self.entries.get_mut(planned.index) {
            *entry = planned.entry;
            self.used += usize::from(planned.new);
            self.evicted += 1;
        }
    }

    /// Checks a restore without changing anything.
    ///
    /// # Errors
    ///
    /// `NotEvicted`, then `StaleVersion`.
    pub fn plan_restore(
        &self,
        guest_address: u64,
        version: u64,
    ) -> Result<PlannedRestore, MapError> {
        let page = Self::page_number(guest_address).ok_or(MapError::NotEvicted)?;
        let (index, found) = self.probe(page);
        let entry = self.entries[index];
        if !found || entry & EVICTED == 0 {
            return Err(MapError::NotEvicted);
        }
        #[cfg(not(feature = "mutant-no-version-check"))]
        if entry & VERSION_MASK != version {
            return Err(MapError::StaleVersion);
        }
        #[cfg(feature = "mutant-no-version-check")]
        let _ = version;
        Ok(PlannedRestore { index })
    }

    /// Applies a planned restore: the address is mapped again, its version
    /// kept for its next eviction; `held` records that the caller held back
    /// pool pages for the restored page (returned by the next eviction's
    /// [`PlannedEvict::held`]).
    pub fn commit_restore(&mut self, planned: PlannedRestore, held: bool) {
        if let Some(entry) = self.entries.get_mut(planned.index)
            && *entry & EVICTED != 0
        {
            *entry &= !EVICTED;
            if held {
                *entry |= HELD;
            }
            self.evicted -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
