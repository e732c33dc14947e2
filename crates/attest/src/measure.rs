//! The measurement of a VM's initial state.

use core::fmt;

use zerocopy::FromBytes;

use crate::sha256::{Compress, Sha256};

use crate::hex::Hex;

/// The granule the measurement is taken in (4 KiB, the stage-2 page size).
pub const PAGE_SIZE: usize = 4096;

/// The first bytes hashed into every measurement: the definition's
/// version (2) is part of them, so a measurement of one version never
/// equals one of another (version 1 hashed `"rampart.measurement.v1\0"`
/// and every page's 4096 bytes, zero or not).
pub const MEASUREMENT_DOMAIN: &[u8] = b"rampart.measurement.v2\0";

/// The tag of a content record: `tag || ipa || the page's 4096 bytes`, for a
/// page with at least one non-zero byte.
pub const RECORD_CONTENT: u64 = 1;

/// The tag of a zero record: `tag || ipa || count`, for a maximal run of
/// `count` pages at consecutive guest-physical addresses from `ipa` whose
/// bytes are all zero.
pub const RECORD_ZERO: u64 = 2;

/// Whether every byte of `page` is zero. Reads the page in 64-byte steps
/// of eight 8-byte words OR-ed together and stops at the first step with a
/// non-zero byte, so a content page costs one step and a zero page one read
/// of each byte. A page that is 8-byte aligned (the hypervisor's always is)
/// is read as aligned words, which the compiler turns into paired loads even
/// for targets that forbid unaligned accesses (the EL2 build); any other
/// buffer is read byte by byte into the same words.
#[must_use]
#[inline]
pub fn is_zero_page(page: &[u8; PAGE_SIZE]) -> bool {
    if let Ok(words) = <[u64; PAGE_SIZE / 8]>::ref_from_bytes(page) {
        let (steps, _) = words.as_chunks::<8>();
        for &[a, b, c, d, e, f, g, h] in steps {
            if a | b | c | d | e | f | g | h != 0 {
                return false;
            }
        }
        return true;
    }
    let (steps, _) = page.as_chunks::<64>();
    for step in steps {
        let (words, _) = step.as_chunks::<8>();
        let mut any = 0u64;
        for word in words {
            any |= u64::from_ne_bytes(*word);
        }
        if any != 0 {
            return false;
        }
    }
    true
}

/// A SHA-256 measurement: of a VM's initial state ([`Measurer`]), or of the
/// hypervisor itself (a report's claim 4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Measurement(pub [u8; 32]);

impl Measurement {
    /// Plain SHA-256 of `data`: for claim 4 of a report, the hypervisor's
    /// measurement of its own image. (Not a VM measurement: use
    /// [`Measurer`].)
    #[must_use]
    pub fn sha256(data: &[u8]) -> Self {
        Measurement(Sha256::digest_with(crate::sha256::portable_compress, data))
    }

    /// [`sha256`](Self::sha256) with the block function `compress` (the
    /// same digest, computed differently: see [`crate::sha256`]).
    #[must_use]
    pub fn sha256_with(compress: Compress, data: &[u8]) -> Self {
        Measurement(Sha256::digest_with(compress, data))
    }

    /// The 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Measurement {
    /// 64 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Hex(&self.0), f)
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measurement({})", Hex(&self.0))
    }
}

/// A VM's flags, as measured, signed (bundle offset 12) and reported (claim
/// 5): bit 0 = protected, bit 1 = debug, bit 2 = realm (guest ABI RSI; only
/// with bit 0), every other bit reserved (zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VmFlags {
    /// The host may not read or write the VM's memory or registers.
    pub protected: bool,
    /// The VM was configured for debugging (a verifier should not trust it
    /// with production secrets).
    pub debug: bool,
    /// issue 12: the VM's guest ABI is the Realm Services Interface (a
    /// realm VM, `VM_CREATE` config bit 2), not KVM/pKVM's calls. Measured,
    /// so an image signed for one ABI never runs under the other.
    pub realm: bool,
}

impl VmFlags {
    /// Bit 0: protected.
    pub const PROTECTED: u32 = 1 << 0;
    /// Bit 1: debug.
    pub const DEBUG: u32 = 1 << 1;
    /// Bit 2: realm (only with [`VmFlags::PROTECTED`]).
    pub const REALM: u32 = 1 << 2;
    /// Every defined bit.
    pub const KNOWN: u32 = Self::PROTECTED | Self::DEBUG | Self::REALM;

    /// The encoded bits.
    #[must_use]
    pub const fn bits(self) -> u32 {
        (if self.protected { Self::PROTECTED } else { 0 })
            | (if self.debug { Self::DEBUG } else { 0 })
            | (if self.realm { Self::REALM } else { 0 })
    }

    /// Decodes bits; `None` if a reserved bit is set, or realm without
    /// protected.
    #[must_use]
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::KNOWN != 0 || (bits & Self::REALM != 0 && bits & Self::PROTECTED == 0) {
            return None;
        }
        Some(VmFlags {
            protected: bits & Self::PROTECTED != 0,
            debug: bits & Self::DEBUG != 0,
            realm: bits & Self::REALM != 0,
        })
    }
}

/// The measured part of a VM's configuration and vCPU 0's entry registers
/// (every other register starts at zero and is not measured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InitialState {
    /// The VM's flags.
    pub flags: VmFlags,
    /// The number of vCPUs the VM was created with.
    pub vcpus: u32,
    /// vCPU 0's first PC (guest-physical).
    pub entry_pc: u64,
    /// vCPU 0's first `x0`.
    pub x0: u64,
}

/// Pages fed to a [`Measurer`] in a way the definition does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The guest-physical address is not 4096-byte aligned.
    #[error("page at guest-physical {ipa:#x} is not 4096-byte aligned")]
    Unaligned {
        /// The address given.
        ipa: u64,
    },
    /// Pages must come in strictly ascending guest-physical order.
    #[error(
        "page at guest-physical {ipa:#x} does not follow the previous page at {previous:#x}: pages must be measured in strictly ascending order"
    )]
    OutOfOrder {
        /// The address given.
        ipa: u64,
        /// The previous page's address.
        previous: u64,
    },
    /// A run of zero pages that is empty or runs past the top of the
    /// 64-bit address space.
    #[error(
        "{pages} zero pages at guest-physical {ipa:#x}: empty, or past the end of the address space"
    )]
    BadRun {
        /// The run's first address.
        ipa: u64,
        /// Its length in pages.
        pages: u64,
    },
}

/// Computes a measurement incrementally, the way the hypervisor walks a
/// VM's memory: [`new`](Self::new) with the configuration, one
/// [`page`](Self::page) per mapped page in ascending order, then
/// [`finish`](Self::finish).
///
/// Version 2 of the definition (`docs/formats.md`): a page with a non-zero
/// byte is hashed as a content record (its address and its 4096 bytes); a
/// maximal run of all-zero pages at consecutive addresses as one zero
/// record (its first address and its length). The measurer decides which
/// by reading the page ([`is_zero_page`]), and it keeps a zero run open
/// until a page that does not extend it (or [`finish`](Self::finish)), so
/// the records depend only on the pages, never on how they were fed.
#[derive(Clone)]
pub struct Measurer {
    hash: Sha256,
    /// The last page measured (the last page of an open zero run included).
    previous: Option<u64>,
    pages: u64,
    /// The zero run not yet hashed: first address and length in pages.
    zero_run: Option<(u64, u64)>,
}

impl Measurer {
    /// Starts a measurement: hashes the domain string, the flags, the vCPU
    /// count and vCPU 0's entry registers.
    #[must_use]
    pub fn new(state: &InitialState) -> Self {
        Self::with_compress(state, crate::sha256::portable_compress)
    }

    /// [`new`](Self::new), hashing with the block function `compress` (the
    /// same measurement, computed differently: see [`crate::sha256`]).
    #[must_use]
    pub fn with_compress(state: &InitialState, compress: Compress) -> Self {
        let mut hash = Sha256::with(compress);
        hash.update(MEASUREMENT_DOMAIN);
        hash.update(&state.flags.bits().to_le_bytes());
        hash.update(&state.vcpus.to_le_bytes());
        hash.update(&state.entry_pc.to_le_bytes());
        hash.update(&state.x0.to_le_bytes());
        Measurer {
            hash,
            previous: None,
            pages: 0,
            zero_run: None,
        }
    }

    /// Adds the page mapped at guest-physical `ipa`: reads every byte of
    /// it, and hashes it as a content record if any is non-zero, else adds
    /// it to the zero run.
    ///
    /// # Errors
    ///
    /// [`MeasureError`] if `ipa` is unaligned or not above the previous
    /// page's; the measurement is then unchanged.
    pub fn page(&mut self, ipa: u64, contents: &[u8; PAGE_SIZE]) -> Result<(), MeasureError> {
        self.check(ipa)?;
        self.feed(ipa, contents);
        Ok(())
    }

    /// Adds `pages` pages from guest-physical `ipa` on that the caller
    /// knows to be all zero without reading them (the same records as
    /// [`page`](Self::page) with zero pages, in constant time): for a
    /// signer predicting the measurement of memory it zero-fills, and for
    /// the hypervisor's pages that it zeroed itself and nobody could write
    /// since ([`KnownZero`]).
    ///
    /// # Errors
    ///
    /// [`MeasureError`] if `ipa` is unaligned or not above the previous
    /// page's, or the run is empty or runs past 2^64; the measurement is
    /// then unchanged.
    pub fn zero_pages(&mut self, ipa: u64, pages: u64) -> Result<(), MeasureError> {
        self.check(ipa)?;
        let last = pages
            .checked_sub(1)
            .and_then(|more| more.checked_mul(PAGE_SIZE as u64))
            .and_then(|offset| ipa.checked_add(offset))
            .ok_or(MeasureError::BadRun { ipa, pages })?;
        self.zeros(ipa, pages, last);
        Ok(())
    }

    fn check(&self, ipa: u64) -> Result<(), MeasureError> {
        if !ipa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(MeasureError::Unaligned { ipa });
        }
        if let Some(previous) = self.previous
            && ipa <= previous
        {
            return Err(MeasureError::OutOfOrder { ipa, previous });
        }
        Ok(())
    }

    /// Adds a page whose order the caller guarantees.
    pub(crate) fn feed(&mut self, ipa: u64, contents: &[u8; PAGE_SIZE]) {
        if is_zero_page(contents) {
            self.zeros(ipa, 1, ipa);
            return;
        }
        self.close_zero_run();
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&RECORD_CONTENT.to_le_bytes());
        head[8..].copy_from_slice(&ipa.to_le_bytes());
        self.hash.update(&head);
        self.hash.update(contents);
        self.previous = Some(ipa);
        self.pages += 1;
    }

    /// Adds `pages` (at least 1) zero pages from `ipa` whose order and
    /// range the caller guarantees (a signer's memory that is zero by
    /// construction).
    pub(crate) fn feed_zeros(&mut self, ipa: u64, pages: u64) {
        let last = ipa.saturating_add(pages.saturating_sub(1).saturating_mul(PAGE_SIZE as u64));
        self.zeros(ipa, pages, last);
    }

    /// Adds `pages` zero pages from `ipa` to `last`, in order.
    fn zeros(&mut self, ipa: u64, pages: u64, last: u64) {
        match &mut self.zero_run {
            Some((start, count))
                if count
                    .checked_mul(PAGE_SIZE as u64)
                    .and_then(|len| start.checked_add(len))
                    == Some(ipa) =>
            {
                *count += pages;
            }
            _ => {
                self.close_zero_run();
                self.zero_run = Some((ipa, pages));
            }
        }
        self.previous = Some(last);
        self.pages += pages;
    }

    /// Hashes the open zero run's record, if there is one.
    fn close_zero_run(&mut self) {
        if let Some((start, count)) = self.zero_run.take() {
            let mut record = [0u8; 24];
            record[..8].copy_from_slice(&RECORD_ZERO.to_le_bytes());
            record[8..16].copy_from_slice(&start.to_le_bytes());
            record[16..].copy_from_slice(&count.to_le_bytes());
            self.hash.update(&record);
        }
    }

    /// How many pages have been measured.
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.pages
    }

    /// The measurement.
    #[must_use]
    pub fn finish(mut self) -> Measurement {
        self.close_zero_run();
        Measurement(self.hash.finish())
    }
}

/// Guest-physical ranges of a VM that the hypervisor zeroed itself and
/// that nobody can have written since: measured with
/// [`Measurer::zero_pages`] without being read (issue 16).
///
/// A small fixed list of disjoint page runs, in no particular order.
/// It never allocates and never fails: a run that does not fit (the list is
/// full) or that is malformed is simply not recorded, and then the pages
/// are read, which gives the same measurement. The owner must
/// [`clear`](Self::clear) it whenever anything at any recorded address may
/// change (an unmap, a remap, a write by the hypervisor) and once the
/// measurement is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownZero<const N: usize> {
    /// `(first address, pages)`; the first `count` are in use.
    runs: [(u64, u64); N],
    count: usize,
}

impl<const N: usize> KnownZero<N> {
    /// An empty list: nothing known.
    #[must_use]
    pub const fn new() -> Self {
        KnownZero {
            runs: [(0, 0); N],
            count: 0,
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// The recorded runs, as `(first address, pages)`, in no order.
    #[must_use]
    pub fn runs(&self) -> &[(u64, u64)] {
        self.runs.get(..self.count).unwrap_or(&[])
    }

    /// Records that `pages` pages from guest-physical `ipa` hold zeros,
    /// merged with the runs it touches at either end. Returns whether it
    /// was recorded: not if `ipa` is unaligned, the run is empty or ends
    /// past 2^64, or the list is full. A run that overlaps a recorded one
    /// contradicts the owner's invariant (an address is recorded only while
    /// the page zeroed for it stays mapped there): then the whole list is
    /// dropped and nothing is recorded.
    pub fn record(&mut self, ipa: u64, pages: u64) -> bool {
        let Some(mut end) = end_of(ipa, pages) else {
            return false;
        };
        let mut start = ipa;
        if self.runs().iter().any(|&(s, n)| {
            end_of(s, n).is_some_and(|e| s < end && start < e)
        }) {
            self.clear();
            return false;
        }
        // Absorb every run adjacent to the new one (at most one on each
        // side, since runs are disjoint).
        let mut i = 0;
        while i < self.count {
            let (s, n) = self.runs[i];
            match end_of(s, n) {
                Some(e) if e == start || s == end => {
                    start = start.min(s);
                    end = end.max(e);
                    self.count -= 1;
                    self.runs[i] = self.runs[self.count];
                }
                _ => i += 1,
            }
        }
        let Some(slot) = self.runs.get_mut(self.count) else {
            // Full, and nothing merged (a merge frees a slot): the list
            // stays as it was and these pages will be read.
            return false;
        };
        *slot = (start, (end - start) / PAGE_SIZE as u64);
        self.count += 1;
        true
    }

    /// Splits the start of `pages` pages from guest-physical `ipa`:
    /// `(true, n)` if its first `n` pages are all recorded as zero, or
    /// `(false, n)` if its first `n` pages are all not recorded; `n` is
    /// the longest such prefix, at least 1 when `pages` is (0 for an
    /// empty or malformed range, which is never known).
    #[must_use]
    pub fn prefix(&self, ipa: u64, pages: u64) -> (bool, u64) {
        if pages == 0 || !ipa.is_multiple_of(PAGE_SIZE as u64) {
            return (false, 0);
        }
        let page = PAGE_SIZE as u64;
        // Pages left in the address space from `ipa` (at least 1).
        let room = (u64::MAX - ipa) / page + 1;
        let pages = pages.min(room);
        for &(s, n) in self.runs() {
            if s <= ipa && (ipa - s) / page < n {
                return (true, (n - (ipa - s) / page).min(pages));
            }
        }
        let mut unknown = pages;
        for &(s, _) in self.runs() {
            if s > ipa {
                unknown = unknown.min((s - ipa) / page);
            }
        }
        (false, unknown)
    }
}

impl<const N: usize> Default for KnownZero<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// One past the last byte of `pages` pages from `ipa`, if `ipa` is aligned,
/// `pages` is not zero and the run ends at or below 2^64 (the end is then
/// `None` for a run reaching exactly 2^64, which is refused too).
fn end_of(ipa: u64, pages: u64) -> Option<u64> {
    if pages == 0 || !ipa.is_multiple_of(PAGE_SIZE as u64) {
        return None;
    }
    pages
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|len| ipa.checked_add(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn state() -> InitialState {
        InitialState {
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
            vcpus: 2,
            entry_pc: 0x8000_0000,
            x0: 0x10_0000,
        }
    }

    use alloc::vec::Vec;
    use proptest::prelude::*;
    use sha2::Digest;

    /// The header every v2 measurement of [`state`] starts with.
    fn header(raw: &mut sha2::Sha256, version: &[u8]) {
        raw.update(version);
        raw.update([1, 0, 0, 0]);
        raw.update([2, 0, 0, 0]);
        raw.update([0, 0, 0, 0x80, 0, 0, 0, 0]);
        raw.update([0, 0, 0x10, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn matches_the_written_definition() {
        let page_a = [0xa5; PAGE_SIZE];
        let page_b = [0x3c; PAGE_SIZE];
        let zero = [0; PAGE_SIZE];
        let mut m = Measurer::new(&state());
        m.page(0x8000_0000, &page_a).unwrap();
        m.page(0x8000_2000, &zero).unwrap();
        m.page(0x8000_3000, &zero).unwrap();
        m.page(0x8000_4000, &page_b).unwrap();
        m.page(0x8000_6000, &zero).unwrap();
        assert_eq!(m.pages(), 5);

        let mut raw = sha2::Sha256::new();
        header(&mut raw, b"rampart.measurement.v2\0");
        // Content record: tag 1, ipa, the bytes.
        raw.update([1, 0, 0, 0, 0, 0, 0, 0]);
        raw.update([0, 0, 0, 0x80, 0, 0, 0, 0]);
        raw.update(page_a);
        // Zero record: tag 2, ipa, 2 pages (0x8000_2000 and 0x8000_3000).
        raw.update([2, 0, 0, 0, 0, 0, 0, 0]);
        raw.update([0, 0x20, 0, 0x80, 0, 0, 0, 0]);
        raw.update([2, 0, 0, 0, 0, 0, 0, 0]);
        raw.update([1, 0, 0, 0, 0, 0, 0, 0]);
        raw.update([0, 0x40, 0, 0x80, 0, 0, 0, 0]);
        raw.update(page_b);
        // A gap ends a run: 0x8000_6000 is a run of its own.
        raw.update([2, 0, 0, 0, 0, 0, 0, 0]);
        raw.update([0, 0x60, 0, 0x80, 0, 0, 0, 0]);
        raw.update([1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(m.finish().0, <[u8; 32]>::from(raw.finalize()));
    }

    #[test]
    fn known_answer() {
        // Computed independently (Python hashlib) from the written definition
        // (docs/formats.md): zero run 0x8000_0000 x 2, content 0x8000_2000
        // (0xa5 bytes), zero run 0x8000_4000 x 1. Changing it must be a
        // deliberate v3.
        let mut m = Measurer::new(&state());
        m.page(0x8000_0000, &[0; PAGE_SIZE]).unwrap();
        m.page(0x8000_1000, &[0; PAGE_SIZE]).unwrap();
        m.page(0x8000_2000, &[0xa5; PAGE_SIZE]).unwrap();
        m.page(0x8000_4000, &[0; PAGE_SIZE]).unwrap();
        assert_eq!(
            m.finish().to_string(),
            "56cbf6132c108c5581d0039bdfef3a6b8e6d0543cea8655dda96240729ba2ae7"
        );
        // One zero page (version 1 gave 93b2da39... for the same layout).
        let mut m = Measurer::new(&state());
        m.page(0x8000_0000, &[0; PAGE_SIZE]).unwrap();
        assert_eq!(
            m.finish().to_string(),
            "6b05e0d0f49306ae0501e6f9ce9b4c4ef39d5115e67caab18355d0f2d92f665c"
        );
    }

    /// Version 1 hashed every page's bytes after a v1 domain string: the
    /// same layout never measures the same under v2, zero pages or not.
    #[test]
    fn version_1_never_equals_version_2() {
        for byte in [0u8, 0x5a] {
            let page = [byte; PAGE_SIZE];
            let mut v1 = sha2::Sha256::new();
            header(&mut v1, b"rampart.measurement.v1\0");
            v1.update([0, 0, 0, 0x80, 0, 0, 0, 0]);
            v1.update(page);
            let mut m = Measurer::new(&state());
            m.page(0x8000_0000, &page).unwrap();
            assert_ne!(
                m.finish().0,
                <[u8; 32]>::from(v1.finalize()),
                "byte {byte:#x}"
            );
        }
    }

    #[test]
    fn known_zero_merges_contiguous_calls_and_splits_runs() {
        let mut k = KnownZero::<2>::new();
        assert_eq!(k.prefix(0x8000_0000, 4), (false, 4));
        // Contiguous calls (a VMM's 512-page chunks) make one run, on
        // either side, and a call bridging two runs joins them.
        assert!(k.record(0x8000_1000, 1));
        assert!(k.record(0x8000_2000, 2));
        assert!(k.record(0x8000_6000, 1));
        assert!(k.record(0x8000_5000, 1));
        assert_eq!(k.runs().len(), 2);
        assert!(k.record(0x8000_4000, 1));
        assert_eq!(k.runs(), &[(0x8000_1000, 6)]);
        assert_eq!(k.prefix(0x8000_0000, 16), (false, 1));
        assert_eq!(k.prefix(0x8000_1000, 16), (true, 6));
        assert_eq!(k.prefix(0x8000_3000, 2), (true, 2));
        assert_eq!(k.prefix(0x8000_7000, 16), (false, 16));
        // Full: a run that merges with nothing is not recorded.
        assert!(k.record(0x9000_0000, 1));
        assert!(!k.record(0xa000_0000, 1));
        assert_eq!(k.prefix(0xa000_0000, 1), (false, 1));
        // Overlap breaks the owner's invariant: everything is dropped.
        assert!(!k.record(0x8000_3000, 8));
        assert!(k.runs().is_empty());
        k.record(0x8000_0000, 1);
        k.clear();
        assert_eq!(k.prefix(0x8000_0000, 1), (false, 1));
    }

    #[test]
    fn known_zero_refuses_malformed_runs() {
        let mut k = KnownZero::<4>::new();
        assert!(!k.record(0x8000_0800, 1));
        assert!(!k.record(0x8000_0000, 0));
        assert!(!k.record(!0xfffu64, 1));
        assert!(!k.record(0x8000_0000, u64::MAX / 4096));
        assert!(k.runs().is_empty());
        assert_eq!(k.prefix(0x8000_0800, 1), (false, 0));
        assert_eq!(k.prefix(0x8000_0000, 0), (false, 0));
        // The top page of the address space: a prefix never runs past it.
        assert_eq!(k.prefix(!0xfffu64, 4), (false, 1));
    }

    proptest! {
        /// Against a model (a set of pages): every page [`KnownZero::prefix`]
        /// calls known was recorded and is still recorded (never cleared
        /// since), the prefixes tile the range, and measuring a mix of read
        /// zero pages and known runs gives the same measurement as reading
        /// every page.
        #[test]
        fn known_zero_matches_a_model(
            ops in proptest::collection::vec((0u8..8, 0u64..30, 1u64..6), 1..40),
            content in proptest::array::uniform32(any::<bool>()),
        ) {
            let base = 0x8000_0000u64;
            let mut k = KnownZero::<3>::new();
            let mut model = alloc::collections::BTreeSet::new();
            for (op, at, n) in ops {
                if op == 0 {
                    k.clear();
                    model.clear();
                    continue;
                }
                // Only ranges disjoint from what is known, as the
                // hypervisor records (it never maps over a mapping).
                let pages: Vec<u64> = (at..at + n).collect();
                if pages.iter().any(|p| model.contains(p)) {
                    continue;
                }
                let recorded = k.record(base + at * 4096, n);
                if recorded {
                    model.extend(pages);
                }
                // Not recorded: the list keeps (a subset of) what it had.
                let listed: alloc::collections::BTreeSet<u64> = k
                    .runs()
                    .iter()
                    .flat_map(|&(s, n)| (0..n).map(move |i| (s - base) / 4096 + i))
                    .collect();
                prop_assert!(listed.is_subset(&model));
                if recorded {
                    prop_assert_eq!(&listed, &model);
                }
                model = listed;
            }
            // Tiling: prefixes cover [0, 32) exactly; known pages are the
            // model's.
            let mut page = 0u64;
            while page < 32 {
                let (known, n) = k.prefix(base + page * 4096, 32 - page);
                prop_assert!(n >= 1 && page + n <= 32);
                for p in page..page + n {
                    prop_assert_eq!(known, model.contains(&p), "page {}", p);
                }
                page += n;
            }
            // Same measurement: known pages fed as runs, the rest read
            // (zero or not per `content`, known pages zero by definition).
            let zero = [0u8; PAGE_SIZE];
            let full = [0x77u8; PAGE_SIZE];
            let mut read = Measurer::new(&state());
            let mut fast = Measurer::new(&state());
            for p in 0..32u64 {
                let bytes = if model.contains(&p) || !content[usize::try_from(p).unwrap()] { &zero } else { &full };
                read.page(base + p * 4096, bytes).unwrap();
            }
            let mut page = 0u64;
            while page < 32 {
                let (known, n) = k.prefix(base + page * 4096, 32 - page);
                if known {
                    fast.zero_pages(base + page * 4096, n).unwrap();
                } else {
                    for p in page..page + n {
                        let bytes = if content[usize::try_from(p).unwrap()] { &full } else { &zero };
                        fast.page(base + p * 4096, bytes).unwrap();
                    }
                }
                page += n;
            }
            prop_assert_eq!(read.finish(), fast.finish());
        }
    }

    #[test]
    fn zero_pages_is_the_same_as_reading_zero_pages() {
        let zero = [0; PAGE_SIZE];
        let mut read = Measurer::new(&state());
        let mut known = Measurer::new(&state());
        for i in 0..5u64 {
            read.page(0x8000_0000 + i * 0x1000, &zero).unwrap();
        }
        read.page(0x8000_5000, &[1; PAGE_SIZE]).unwrap();
        read.page(0x8000_6000, &zero).unwrap();
        // Split differently: the records are the same.
        known.zero_pages(0x8000_0000, 2).unwrap();
        known.zero_pages(0x8000_2000, 3).unwrap();
        known.page(0x8000_5000, &[1; PAGE_SIZE]).unwrap();
        known.zero_pages(0x8000_6000, 1).unwrap();
        assert_eq!(read.pages(), known.pages());
        assert_eq!(read.finish(), known.finish());
    }

    #[test]
    fn zero_runs_are_checked() {
        let mut m = Measurer::new(&state());
        m.zero_pages(0x8000_0000, 4).unwrap();
        let before = m.clone().finish();
        assert_eq!(
            m.zero_pages(0x8000_3000, 1),
            Err(MeasureError::OutOfOrder {
                ipa: 0x8000_3000,
                previous: 0x8000_3000
            })
        );
        assert_eq!(
            m.zero_pages(0x8000_4000, 0),
            Err(MeasureError::BadRun {
                ipa: 0x8000_4000,
                pages: 0
            })
        );
        assert_eq!(
            m.zero_pages(0x8000_4000, u64::MAX / 4096),
            Err(MeasureError::BadRun {
                ipa: 0x8000_4000,
                pages: u64::MAX / 4096
            })
        );
        assert_eq!(
            m.zero_pages(0x8000_4001, 1),
            Err(MeasureError::Unaligned { ipa: 0x8000_4001 })
        );
        assert_eq!(m.pages(), 4);
        assert_eq!(m.finish(), before, "a rejected run changes nothing");
        // The very last page of the address space is measurable.
        let top = u64::MAX - 0xfff;
        let mut m = Measurer::new(&state());
        m.zero_pages(top - 0x1000, 2).unwrap();
        assert_eq!(
            m.page(top, &[0; PAGE_SIZE]),
            Err(MeasureError::OutOfOrder {
                ipa: top,
                previous: top
            })
        );
        let mut m = Measurer::new(&state());
        m.zero_pages(top, 1).unwrap();
        assert_eq!(m.pages(), 1);
    }

    #[test]
    fn the_zero_check() {
        // Both paths: an 8-byte aligned page (words) and one that is not
        // (bytes).
        #[repr(align(8))]
        struct Aligned([u8; PAGE_SIZE + 1]);
        let mut buffer = Aligned([0; PAGE_SIZE + 1]);
        for offset in [0, 1] {
            let page: &mut [u8; PAGE_SIZE] = (&mut buffer.0[offset..offset + PAGE_SIZE])
                .try_into()
                .unwrap();
            assert!(is_zero_page(page), "offset {offset}");
            for at in [0, 1, 7, 8, 63, 64, 2047, 4032, 4095] {
                page[at] = 0x80;
                assert!(!is_zero_page(page), "offset {offset}, byte {at}");
                page[at] = 0;
            }
        }
    }

    /// The definition, written out independently of [`Measurer`]: the
    /// byte stream for `pages` (ascending, each address and contents).
    fn reference(pages: &[(u64, [u8; PAGE_SIZE])]) -> [u8; 32] {
        let mut raw = sha2::Sha256::new();
        header(&mut raw, b"rampart.measurement.v2\0");
        let mut run: Option<(u64, u64)> = None;
        let close = |raw: &mut sha2::Sha256, run: &mut Option<(u64, u64)>| {
            if let Some((ipa, n)) = run.take() {
                raw.update(2u64.to_le_bytes());
                raw.update(ipa.to_le_bytes());
                raw.update(n.to_le_bytes());
            }
        };
        for (ipa, bytes) in pages {
            if bytes.iter().all(|&b| b == 0) {
                match &mut run {
                    Some((start, n)) if *start + *n * 4096 == *ipa => *n += 1,
                    _ => {
                        close(&mut raw, &mut run);
                        run = Some((*ipa, 1));
                    }
                }
            } else {
                close(&mut raw, &mut run);
                raw.update(1u64.to_le_bytes());
                raw.update(ipa.to_le_bytes());
                raw.update(bytes);
            }
        }
        close(&mut raw, &mut run);
        raw.finalize().into()
    }

    /// A layout: page slots 0..16 from 0x8000_0000, each absent (None),
    /// zero (Some(None)) or with one byte set (Some(Some((at, value)))).
    type Layout = Vec<Option<Option<(usize, u8)>>>;

    fn layout() -> impl Strategy<Value = Layout> {
        proptest::collection::vec(
            prop_oneof![
                Just(None),
                Just(Some(None)),
                Just(Some(None)),
                (0..PAGE_SIZE, any::<u8>()).prop_map(|c| Some(Some(c))),
            ],
            0..16,
        )
    }

    fn pages_of(layout: &Layout) -> Vec<(u64, [u8; PAGE_SIZE])> {
        let mut out = Vec::new();
        for (i, slot) in layout.iter().enumerate() {
            if let Some(contents) = slot {
                let mut page = [0u8; PAGE_SIZE];
                if let Some((at, value)) = contents {
                    page[*at] = *value;
                }
                out.push((0x8000_0000 + i as u64 * 0x1000, page));
            }
        }
        out
    }

    fn measure_pages(pages: &[(u64, [u8; PAGE_SIZE])]) -> Measurement {
        let mut m = Measurer::new(&state());
        for (ipa, page) in pages {
            m.page(*ipa, page).unwrap();
        }
        m.finish()
    }

    proptest! {
        /// A page with any single non-zero byte is measured as content:
        /// its bytes, not a zero record.
        #[test]
        fn one_nonzero_byte_makes_a_content_page(at in 0..PAGE_SIZE, value in 1..=255u8, before in 0..3u64, after in 0..3u64) {
            let mut pages = Vec::new();
            for i in 0..before {
                pages.push((0x8000_0000 + i * 0x1000, [0u8; PAGE_SIZE]));
            }
            let mut page = [0u8; PAGE_SIZE];
            page[at] = value;
            let ipa = 0x8000_0000 + before * 0x1000;
            pages.push((ipa, page));
            for i in 1..=after {
                pages.push((ipa + i * 0x1000, [0u8; PAGE_SIZE]));
            }
            let m = measure_pages(&pages);
            prop_assert_eq!(m.0, reference(&pages));
            // Not what the same layout measures with that page zero.
            pages[usize::try_from(before).unwrap()].1[at] = 0;
            prop_assert_ne!(m, measure_pages(&pages));
        }

        /// The measurement follows the written definition for any layout,
        /// and differs whenever any page's presence or contents differ.
        #[test]
        fn layouts_measure_differently(a in layout(), b in layout()) {
            let (pa, pb) = (pages_of(&a), pages_of(&b));
            let (ma, mb) = (measure_pages(&pa), measure_pages(&pb));
            prop_assert_eq!(ma.0, reference(&pa));
            prop_assert_eq!(ma == mb, pa == pb);
        }
    }

    #[test]
    fn rejects_out_of_order_and_unaligned_pages() {
        let page = [0; PAGE_SIZE];
        let mut m = Measurer::new(&state());
        m.page(0x8000_1000, &page).unwrap();
        let before = m.clone().finish();
        assert_eq!(
            m.page(0x8000_1000, &page),
            Err(MeasureError::OutOfOrder {
                ipa: 0x8000_1000,
                previous: 0x8000_1000
            })
        );
        assert_eq!(
            m.page(0x8000_0000, &page),
            Err(MeasureError::OutOfOrder {
                ipa: 0x8000_0000,
                previous: 0x8000_1000
            })
        );
        assert_eq!(
            m.page(0x8000_2001, &page),
            Err(MeasureError::Unaligned { ipa: 0x8000_2001 })
        );
        assert_eq!(m.pages(), 1);
        assert_eq!(m.finish(), before, "a rejected page changes nothing");
    }

    #[test]
    fn every_input_matters() {
        let base = state();
        let measure = |s: &InitialState, ipa: u64, byte: u8| {
            let mut m = Measurer::new(s);
            m.page(ipa, &[byte; PAGE_SIZE]).unwrap();
            m.finish()
        };
        let reference = measure(&base, 0x8000_0000, 0);
        let variants = [
            measure(
                &InitialState {
                    flags: VmFlags {
                        protected: false,
                        debug: false,
                        realm: false,
                    },
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(
                &InitialState {
                    flags: VmFlags {
                        protected: true,
                        debug: true,
                        realm: false,
                    },
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(&InitialState { vcpus: 3, ..base }, 0x8000_0000, 0),
            measure(
                &InitialState {
                    entry_pc: 0x8000_0004,
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(
                &InitialState {
                    x0: 0x20_0000,
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(&base, 0x8000_1000, 0),
            measure(&base, 0x8000_0000, 1),
            Measurer::new(&base).finish(),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, reference, "variant {i}");
        }
    }

    #[test]
    fn plain_digest() {
        assert_eq!(
            Measurement::sha256(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn flags_round_trip_and_reject_reserved_bits() {
        for bits in [0, 1, 2, 3, 5, 7] {
            assert_eq!(VmFlags::from_bits(bits).unwrap().bits(), bits);
        }
        // Realm (bit 2) only with protected (bit 0); bit 3 is reserved.
        assert_eq!(VmFlags::from_bits(4), None);
        assert_eq!(VmFlags::from_bits(6), None);
        assert_eq!(VmFlags::from_bits(8), None);
        assert_eq!(VmFlags::from_bits(0x8000_0001), None);
    }

    #[test]
    fn the_realm_bit_is_measured() {
        // issue 12: the same image and entry state as a realm VM and as a
        // pKVM VM measure differently.
        let pkvm = InitialState {
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
            vcpus: 1,
            entry_pc: 0x8000_0000,
            x0: 0x10_0000,
        };
        let realm = InitialState {
            flags: VmFlags {
                realm: true,
                ..pkvm.flags
            },
            ..pkvm
        };
        assert_ne!(
            Measurer::new(&pkvm).finish(),
            Measurer::new(&realm).finish()
        );
    }
}
