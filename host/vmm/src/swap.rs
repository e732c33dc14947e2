//! Sealed swap (issue 14): `rampart-vmm run BUNDLE --swap FILE --resident
//! PAGES` gives a VM more guest RAM than the host lets it hold at once.
//!
//! The hypervisor does the cryptography (`VM_EVICT` / `VM_RESTORE`,
//! `docs/abi.md`, *Sealed swap*): an evicted page leaves the VM only as 4096
//! bytes of ciphertext plus a version and a 16-byte tag, under a per-VM key
//! that never leaves EL2. This module is the untrusted half: it decides
//! which pages go, stores what the hypervisor hands out in FILE, and gives
//! it back when the guest touches the page again (`EXIT_EVICTED`).
//!
//! - **Launch.** A protected VM is measured at its first run over every
//!   page of guest RAM, so the whole of guest RAM is donated at launch as
//!   without `--swap`. Right after the first `VCPU_RUN` the hypervisor
//!   accepted (vCPU 0's first exit) the VMM evicts down to the limit; from
//!   then on at most `--resident` pages of guest RAM are the VM's at any
//!   time.
//! - **Policy: FIFO of arrivals.** The host cannot see which resident pages
//!   a protected guest uses: it has no access flags for them and may not
//!   read them. The only signal it gets is the `EXIT_EVICTED` of a page the
//!   guest wants back. So the resident pages are kept in the order they
//!   (re)arrived, and the one that arrived first goes first: a page just
//!   restored was just used, a page restored long ago may no longer be.
//!   (Clock / second chance needs a referenced bit the host does not have;
//!   emulating one by evicting pages to see whether they come back costs a
//!   seal and an unseal per sample.) At launch the highest guest addresses
//!   go first: the image, its stack and data sit at the bottom of guest
//!   RAM.
//! - **Frames.** Guest RAM starts identity-placed in the VM's pool region;
//!   an evicted page's frame (zeroed by the hypervisor and the host's
//!   again) joins a free list and the next restore takes one from there.
//!   One more pool page, the *staging page*, carries the ciphertext in both
//!   directions.
//! - **Refusals.** The hypervisor checks every restore; a refusal leaves
//!   the VM unchanged (the page stays evicted). In a normal run the VMM
//!   cannot do better than the hypervisor's answer, so the VM stops with
//!   the error's name.
//!
//! The file format (`docs/formats.md`, *Swap file*): a 64-byte header, then
//! one fixed slot per guest page ([`RECORD_SIZE`] bytes: guest address,
//! version, tag, ciphertext), slot `i` for guest address `GUEST_RAM_BASE +
//! i * 4096`. The VMM writes a slot when it evicts the page and reads it
//! back when it restores; nothing in the file is secret or trusted.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result, anyhow, bail};
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{ExitReason, HostCall, PAGE_SIZE, VmConfig};

use crate::hyp::{Hyp, call, error_name};
use crate::mem::{Fault, Mapping};

/// `RAMPART_HOST_VM_EVICT` (`HOST_FUNCTION_BASE + 0x20`).
pub const VM_EVICT: u32 = HostCall::VmEvict.id();
/// `RAMPART_HOST_VM_RESTORE` (`HOST_FUNCTION_BASE + 0x21`).
pub const VM_RESTORE: u32 = HostCall::VmRestore.id();
/// `EXIT_EVICTED`: `VCPU_RUN`'s `x1` when the guest touched an evicted
/// page; `x2` = the page, `x3` = 1 for a write.
pub const EXIT_EVICTED: u64 = ExitReason::Evicted as u64;

/// A page, as a length.
const PAGE: usize = 4096;
/// The swap file's magic (bytes 0..8).
pub const MAGIC: [u8; 8] = *b"RMPSWAP\0";
/// The format's version (bytes 8..12).
pub const FORMAT_VERSION: u32 = 1;
/// Header bytes before the first slot.
const HEADER_LEN: usize = 64;
/// One slot: guest address (8), version (8), tag (16), ciphertext (4096).
const RECORD_LEN: usize = 32 + PAGE;
/// [`HEADER_LEN`] as a file offset.
pub const HEADER_SIZE: u64 = HEADER_LEN as u64;
/// [`RECORD_LEN`] as a file offset.
pub const RECORD_SIZE: u64 = RECORD_LEN as u64;
/// The fewest resident pages `--resident` may ask for: a guest
/// instruction can need its own page, a data page and a stack page at
/// once; 16 leaves room for several vCPUs.
pub const MIN_RESIDENT: u64 = 16;

/// `run`'s swap options.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct SwapArgs {
    /// Sealed swap: evict cold guest pages (encrypted and authenticated by
    /// the hypervisor) to FILE, restore them when the guest touches them.
    #[arg(long, value_name = "FILE")]
    pub swap: Option<PathBuf>,
    /// With --swap: guest RAM pages the VM may hold at once (default: a
    /// quarter of guest RAM).
    #[arg(
        long,
        value_name = "PAGES",
        requires = "swap",
        conflicts_with = "resident_mib"
    )]
    pub resident: Option<u64>,
    /// With --swap: the same limit in MiB.
    #[arg(long, value_name = "N", requires = "swap")]
    pub resident_mib: Option<u64>,
    /// Hostile self-test (with --swap): right after the first evictions,
    /// flip a bit of a sealed page in FILE, replay an old version, swap
    /// two records, restore into another VM; each must be refused and the
    /// page must then restore untouched (exit 1 otherwise).
    #[arg(long, requires = "swap", hide = true)]
    pub swap_attack: bool,
    /// Test (with --swap): before the VM is destroyed, look for these bytes
    /// (hex) in FILE and in every pool page of the VM the host can read;
    /// exit 1 if they are found.
    #[arg(long, value_name = "HEX", requires = "swap", hide = true, value_parser = parse_hex)]
    pub swap_scan: Option<Secret>,
}

/// `--swap-scan`'s bytes (a newtype: clap would take a `Vec<u8>` for a
/// list of values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

/// Parses `--swap-scan`'s hex (at least 8 bytes: shorter strings occur by
/// chance in ciphertext).
///
/// # Errors
///
/// What is wrong.
pub fn parse_hex(text: &str) -> Result<Secret, String> {
    if !text.len().is_multiple_of(2) || text.len() < 16 || !text.is_ascii() {
        return Err("want an even number of hex digits, at least 16".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| format!("{text:?} is not hex"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Secret)
}

impl SwapArgs {
    /// The resident limit for a VM of `ram_pages`, checked.
    ///
    /// # Errors
    ///
    /// A limit below [`MIN_RESIDENT`] or not below guest RAM.
    pub fn limit(&self, ram_pages: u64) -> Result<u64> {
        let pages = match (self.resident, self.resident_mib) {
            (Some(p), _) => p,
            (None, Some(mib)) => mib
                .checked_mul((1 << 20) / PAGE_SIZE)
                .ok_or_else(|| anyhow!("--resident-mib {mib} is too large"))?,
            (None, None) => (ram_pages / 4).max(MIN_RESIDENT),
        };
        if pages < MIN_RESIDENT {
            bail!("--resident: at least {MIN_RESIDENT} pages");
        }
        if pages >= ram_pages {
            bail!(
                "--resident {pages} pages: guest RAM is only {ram_pages} pages, nothing would be swapped"
            );
        }
        Ok(pages)
    }
}

// ---------------------------------------------------------------------------
// The file.

/// One sealed page as the hypervisor handed it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The guest address it was evicted from.
    pub ipa: u64,
    /// `VM_EVICT`'s version (0: an empty slot).
    pub version: u64,
    /// `VM_EVICT`'s tag (`x2`, `x3` as little-endian bytes).
    pub tag: [u8; 16],
    /// The ciphertext.
    pub sealed: Vec<u8>,
}

impl Record {
    /// The slot's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.extend_from_slice(&self.ipa.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.tag);
        out.extend_from_slice(&self.sealed);
        out.resize(RECORD_LEN, 0);
        out
    }

    /// A slot's bytes (exactly [`RECORD_SIZE`]).
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let mut tag = [0; 16];
        tag.copy_from_slice(&bytes[16..32]);
        Some(Record {
            ipa: word(0),
            version: word(8),
            tag,
            sealed: bytes[32..].to_vec(),
        })
    }

    /// The tag as `VM_RESTORE`'s `x6`, `x7`.
    #[must_use]
    pub fn tag_words(&self) -> [u64; 2] {
        let w = |i: usize| u64::from_le_bytes(self.tag[i..i + 8].try_into().unwrap_or([0; 8]));
        [w(0), w(8)]
    }
}

/// The header's bytes.
#[must_use]
pub fn header(vm: u64, pages: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&4096u32.to_le_bytes());
    h.extend_from_slice(&vm.to_le_bytes());
    h.extend_from_slice(&GUEST_RAM_BASE.to_le_bytes());
    h.extend_from_slice(&pages.to_le_bytes());
    h.extend_from_slice(&RECORD_SIZE.to_le_bytes());
    h.resize(HEADER_LEN, 0);
    h
}

/// The swap file: a header and one slot per guest page.
pub struct Store {
    file: File,
    path: PathBuf,
    pages: u64,
}

impl Store {
    /// Creates (or truncates) `path` for a VM of `pages` guest pages.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn create(path: &Path, vm: u64, pages: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating the swap file {}", path.display()))?;
        file.write_all_at(&header(vm, pages), 0)
            .with_context(|| format!("writing {}", path.display()))?;
        file.set_len(HEADER_SIZE + pages * RECORD_SIZE)
            .with_context(|| format!("sizing {}", path.display()))?;
        Ok(Store {
            file,
            path: path.to_path_buf(),
            pages,
        })
    }

    /// The slot of guest address `ipa`.
    #[must_use]
    pub fn slot(&self, ipa: u64) -> Option<u64> {
        let off = ipa.checked_sub(GUEST_RAM_BASE)?;
        (off.is_multiple_of(PAGE_SIZE) && off / PAGE_SIZE < self.pages).then_some(off / PAGE_SIZE)
    }

    fn offset(&self, ipa: u64) -> Result<u64> {
        let slot = self
            .slot(ipa)
            .ok_or_else(|| anyhow!("{ipa:#x} is not a page of guest RAM"))?;
        Ok(HEADER_SIZE + slot * RECORD_SIZE)
    }

    /// Writes the slot of `ipa`.
    ///
    /// # Errors
    ///
    /// I/O errors, or `ipa` outside guest RAM.
    pub fn write(&self, ipa: u64, record: &Record) -> Result<()> {
        self.file
            .write_all_at(&record.encode(), self.offset(ipa)?)
            .with_context(|| format!("writing the slot of {ipa:#x} in {}", self.path.display()))
    }

    /// Reads the slot of `ipa`.
    ///
    /// # Errors
    ///
    /// I/O errors, or `ipa` outside guest RAM.
    pub fn read(&self, ipa: u64) -> Result<Record> {
        let mut bytes = vec![0; RECORD_LEN];
        self.file
            .read_exact_at(&mut bytes, self.offset(ipa)?)
            .with_context(|| format!("reading the slot of {ipa:#x} in {}", self.path.display()))?;
        Record::decode(&bytes).ok_or_else(|| anyhow!("short slot"))
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------------------
// The policy: which pages are resident, in which frames.

/// Resident pages (FIFO of arrivals), evicted pages and free frames.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Guest address -> frame (byte offset in the pool region).
    resident: HashMap<u64, u64>,
    /// Resident guest addresses, oldest arrival first.
    order: VecDeque<u64>,
    /// Evicted guest addresses.
    evicted: HashSet<u64>,
    /// Frames the host holds for guest RAM, free.
    free: BTreeSet<u64>,
    /// The most pages that may be resident.
    limit: u64,
}

impl Policy {
    /// Guest RAM of `pages` pages, all resident, page `i` in frame `i *
    /// 4096`; the highest addresses first in line to go.
    #[must_use]
    pub fn new(pages: u64, limit: u64) -> Self {
        let mut p = Policy {
            limit,
            ..Policy::default()
        };
        for i in (0..pages).rev() {
            let ipa = GUEST_RAM_BASE + i * PAGE_SIZE;
            p.resident.insert(ipa, i * PAGE_SIZE);
            p.order.push_back(ipa);
        }
        p
    }

    /// The page to evict next, if one must go before another can arrive
    /// (or to come down to the limit).
    #[must_use]
    pub fn victim(&self, making_room: bool) -> Option<u64> {
        let over = self.resident.len() as u64 + u64::from(making_room) > self.limit;
        (over || (making_room && self.free.is_empty()))
            .then(|| self.order.front().copied())
            .flatten()
    }

    /// `ipa` was evicted: its frame is free.
    pub fn evicted(&mut self, ipa: u64) {
        if let Some(frame) = self.resident.remove(&ipa) {
            self.free.insert(frame);
            self.order.retain(|&a| a != ipa);
            self.evicted.insert(ipa);
        }
    }

    /// A free frame for a restore.
    #[must_use]
    pub fn free_frame(&self) -> Option<u64> {
        self.free.first().copied()
    }

    /// `ipa` was restored into `frame`: it is the newest arrival.
    pub fn restored(&mut self, ipa: u64, frame: u64) {
        if self.free.remove(&frame) && self.evicted.remove(&ipa) {
            self.resident.insert(ipa, frame);
            self.order.push_back(ipa);
        }
    }

    /// Whether `ipa` is evicted.
    #[must_use]
    pub fn is_evicted(&self, ipa: u64) -> bool {
        self.evicted.contains(&ipa)
    }

    /// Resident pages.
    #[must_use]
    pub fn resident_pages(&self) -> u64 {
        self.resident.len() as u64
    }

    /// Evicted pages.
    #[must_use]
    pub fn evicted_pages(&self) -> u64 {
        self.evicted.len() as u64
    }

    /// The limit.
    #[must_use]
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// `count` free frames in a row (pool offsets), taken out of the free
    /// list (for the hostile test's second VM).
    fn take_run(&mut self, count: u64) -> Option<u64> {
        let frames: Vec<u64> = self.free.iter().copied().collect();
        let window = usize::try_from(count).ok().filter(|&n| n > 0)?;
        let start = frames
            .windows(window)
            .find_map(|w| (w[w.len() - 1] - w[0] == (count - 1) * PAGE_SIZE).then_some(w[0]))?;
        for i in 0..count {
            self.free.remove(&(start + i * PAGE_SIZE));
        }
        Some(start)
    }

    /// Gives frames taken with `take_run` back.
    fn give_back(&mut self, start: u64, count: u64) {
        for i in 0..count {
            self.free.insert(start + i * PAGE_SIZE);
        }
    }
}

// ---------------------------------------------------------------------------
// Counters for `rampart-vmm stats`.

static ENABLED: AtomicBool = AtomicBool::new(false);
static EVICTIONS: AtomicU64 = AtomicU64::new(0);
static RESTORES: AtomicU64 = AtomicU64::new(0);
static REFUSALS: AtomicU64 = AtomicU64::new(0);
static EVICTED_EXITS: AtomicU64 = AtomicU64::new(0);
static RESIDENT: AtomicU64 = AtomicU64::new(0);
static LIMIT: AtomicU64 = AtomicU64::new(0);
static SWAP_NS: AtomicU64 = AtomicU64::new(0);
/// Of `SWAP_NS`, the time inside `VM_EVICT` and `VM_RESTORE` themselves.
static CALL_NS: AtomicU64 = AtomicU64::new(0);
static LAST_REFUSAL: Mutex<String> = Mutex::new(String::new());

/// The swap lines of `rampart-vmm stats` (none without `--swap`).
#[must_use]
pub fn stats_lines() -> Vec<(String, String)> {
    if !ENABLED.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let last = LAST_REFUSAL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let ns = r(&SWAP_NS);
    let moved = r(&EVICTIONS) + r(&RESTORES);
    let rate = if ns == 0 {
        "-".to_string()
    } else {
        (u128::from(moved) * 1_000_000_000 / u128::from(ns)).to_string()
    };
    vec![
        (
            "swap".into(),
            format!(
                "{} evictions, {} restores, {} refusals{}",
                r(&EVICTIONS),
                r(&RESTORES),
                r(&REFUSALS),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {last})")
                }
            ),
        ),
        (
            "swap resident pages".into(),
            format!("{} of at most {}", r(&RESIDENT), r(&LIMIT)),
        ),
        (
            "swap EXIT_EVICTED exits".into(),
            r(&EVICTED_EXITS).to_string(),
        ),
        (
            "swap time in VM_EVICT and VM_RESTORE".into(),
            format!(
                "{}.{:03} ms ({} us per call)",
                r(&CALL_NS) / 1_000_000,
                (r(&CALL_NS) / 1000) % 1000,
                r(&CALL_NS) / 1000 / moved.max(1)
            ),
        ),
        (
            "swap pages per second".into(),
            format!(
                "{rate} (evictions and restores over {}.{:03} ms spent in them)",
                ns / 1_000_000,
                (ns / 1000) % 1000
            ),
        ),
    ]
}

/// Counter values, for tests and the run's summary line.
#[must_use]
pub fn counts() -> (u64, u64, u64) {
    (
        EVICTIONS.load(Ordering::Relaxed),
        RESTORES.load(Ordering::Relaxed),
        REFUSALS.load(Ordering::Relaxed),
    )
}

// ---------------------------------------------------------------------------
// The swapper.

/// A refused or failed swap call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapError {
    /// The hypervisor refused: the call's name and `x0`.
    Refused(&'static str, i64),
    /// Anything else (I/O, no frame).
    Other(String),
}

impl std::fmt::Display for SwapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwapError::Refused(what, code) => write!(f, "{what} refused: {}", error_name(*code)),
            SwapError::Other(e) => write!(f, "{e}"),
        }
    }
}

impl From<anyhow::Error> for SwapError {
    fn from(e: anyhow::Error) -> Self {
        SwapError::Other(format!("{e:#}"))
    }
}

/// One VM's sealed swap.
pub struct Swap<'a> {
    handle: u64,
    region: &'a Mapping,
    region_phys: u64,
    /// Pool offset of the staging page.
    staging: u64,
    store: Store,
    /// The policy, under one lock: two vCPUs faulting on one page restore
    /// it once, and a victim is never restored while it is being evicted.
    state: Mutex<Policy>,
    attack: bool,
}

/// Pages `--swap` adds to the VM's pool region: the staging page.
pub const EXTRA_POOL_PAGES: u64 = 1;

#[allow(clippy::cast_possible_wrap, reason = "x0 is a signed SMCCC code")]
fn code_of(r: &[u64; 18]) -> i64 {
    r[0] as i64
}

impl<'a> Swap<'a> {
    /// Swap for VM `handle` whose guest RAM (`ram_pages`) starts at offset
    /// 0 of `region` (physical `region_phys`); the staging page is at pool
    /// offset `staging`.
    ///
    /// # Errors
    ///
    /// The swap file cannot be created.
    #[allow(clippy::too_many_arguments, reason = "the run's facts")]
    pub fn new(
        args: &SwapArgs,
        path: &Path,
        handle: u64,
        region: &'a Mapping,
        region_phys: u64,
        ram_pages: u64,
        staging: u64,
        limit: u64,
    ) -> Result<Self> {
        let store = Store::create(path, handle, ram_pages)?;
        ENABLED.store(true, Ordering::Relaxed);
        LIMIT.store(limit, Ordering::Relaxed);
        RESIDENT.store(ram_pages, Ordering::Relaxed);
        Ok(Swap {
            handle,
            region,
            region_phys,
            staging,
            store,
            state: Mutex::new(Policy::new(ram_pages, limit)),
            attack: args.swap_attack,
        })
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `--swap-attack` was given.
    #[must_use]
    pub const fn attacking(&self) -> bool {
        self.attack
    }

    /// The swap file.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    fn read_staging(&self) -> Vec<u8> {
        let at = usize::try_from(self.staging).unwrap_or(usize::MAX);
        self.region.read_bytes(at, PAGE)
    }

    fn timed<T>(f: impl FnOnce() -> T) -> T {
        let t = std::time::Instant::now();
        let r = f();
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        SWAP_NS.fetch_add(ns, Ordering::Relaxed);
        r
    }

    /// `VM_EVICT` of `ipa` of VM `vm`; returns the record.
    fn evict_call(&self, hyp: &dyn Hyp, vm: u64, ipa: u64) -> Result<Record, SwapError> {
        let t = std::time::Instant::now();
        let r = call(hyp, VM_EVICT, &[vm, ipa, self.region_phys + self.staging]);
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        CALL_NS.fetch_add(ns, Ordering::Relaxed);
        if r[0] != 0 {
            return Err(SwapError::Refused("VM_EVICT", code_of(&r)));
        }
        let mut tag = [0; 16];
        tag[..8].copy_from_slice(&r[2].to_le_bytes());
        tag[8..].copy_from_slice(&r[3].to_le_bytes());
        Ok(Record {
            ipa,
            version: r[1],
            tag,
            sealed: self.read_staging(),
        })
    }

    /// `VM_RESTORE` of `record` at `ipa` of VM `vm` into the frame at pool
    /// offset `frame`.
    fn restore_call(
        &self,
        hyp: &dyn Hyp,
        vm: u64,
        ipa: u64,
        record: &Record,
        frame: u64,
    ) -> Result<(), SwapError> {
        let at = usize::try_from(self.staging).unwrap_or(usize::MAX);
        self.region.write_bytes(at, &record.sealed);
        let [t0, t1] = record.tag_words();
        let t = std::time::Instant::now();
        let r = call(
            hyp,
            VM_RESTORE,
            &[
                vm,
                ipa,
                self.region_phys + self.staging,
                self.region_phys + frame,
                record.version,
                t0,
                t1,
            ],
        );
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        CALL_NS.fetch_add(ns, Ordering::Relaxed);
        if r[0] != 0 {
            let code = code_of(&r);
            REFUSALS.fetch_add(1, Ordering::Relaxed);
            *LAST_REFUSAL.lock().unwrap_or_else(PoisonError::into_inner) =
                format!("VM_RESTORE of {ipa:#x}: {}", error_name(code));
            return Err(SwapError::Refused("VM_RESTORE", code));
        }
        Ok(())
    }

    /// Evicts the FIFO's oldest page (with the lock held).
    fn evict_one(
        &self,
        hyp: &dyn Hyp,
        p: &mut Policy,
        making_room: bool,
    ) -> Result<bool, SwapError> {
        let Some(ipa) = p.victim(making_room) else {
            return Ok(false);
        };
        let record = self.evict_call(hyp, self.handle, ipa)?;
        // The page is gone from the VM whatever happens next: a failed
        // write loses it (the VM cannot go on), so it is fatal.
        p.evicted(ipa);
        EVICTIONS.fetch_add(1, Ordering::Relaxed);
        RESIDENT.store(p.resident_pages(), Ordering::Relaxed);
        self.store.write(ipa, &record)?;
        Ok(true)
    }

    /// Evicts until at most the limit is resident (after the first run).
    ///
    /// # Errors
    ///
    /// A refused eviction or an I/O error.
    pub fn trim(&self, hyp: &dyn Hyp) -> Result<u64, SwapError> {
        Self::timed(|| {
            let mut p = self.policy();
            let mut n = 0;
            while self.evict_one(hyp, &mut p, false)? {
                n += 1;
            }
            Ok(n)
        })
    }

    /// Restores `ipa` (with the lock held), evicting first if needed.
    fn restore_locked(&self, hyp: &dyn Hyp, p: &mut Policy, ipa: u64) -> Result<(), SwapError> {
        while self.evict_one(hyp, p, true)? {}
        let frame = p
            .free_frame()
            .ok_or_else(|| SwapError::Other("no free frame".into()))?;
        let record = self.store.read(ipa)?;
        self.restore_call(hyp, self.handle, ipa, &record, frame)?;
        p.restored(ipa, frame);
        RESTORES.fetch_add(1, Ordering::Relaxed);
        RESIDENT.store(p.resident_pages(), Ordering::Relaxed);
        Ok(())
    }

    /// `EXIT_EVICTED` at `ipa`: restores the page (another vCPU may have
    /// already).
    ///
    /// # Errors
    ///
    /// The hypervisor refused (the VM cannot go on), or I/O failed.
    pub fn fault(&self, hyp: &dyn Hyp, ipa: u64) -> Result<(), SwapError> {
        EVICTED_EXITS.fetch_add(1, Ordering::Relaxed);
        let ipa = ipa & !(PAGE_SIZE - 1);
        Self::timed(|| {
            let mut p = self.policy();
            if !p.is_evicted(ipa) {
                if self.store.slot(ipa).is_none() {
                    return Err(SwapError::Other(format!(
                        "EXIT_EVICTED at {ipa:#x}, not a page of guest RAM"
                    )));
                }
                // Restored by another vCPU meanwhile.
                return Ok(());
            }
            self.restore_locked(hyp, &mut p, ipa)
        })
    }

    /// `(resident, evicted)` pages now.
    #[must_use]
    pub fn pages(&self) -> (u64, u64) {
        let p = self.policy();
        (p.resident_pages(), p.evicted_pages())
    }

    // -----------------------------------------------------------------------
    // Hostile self-test.

    /// Runs the four hostile cases on pages evicted now; returns one line
    /// per case, `Ok` if the hypervisor refused and the page then restored
    /// honestly, `Err` otherwise.
    pub fn attack(&self, hyp: &dyn Hyp, meta_pages: u64) -> Vec<Result<String, String>> {
        let mut p = self.policy();
        let mut evicted: Vec<u64> = p.evicted.iter().copied().collect();
        evicted.sort_unstable();
        if evicted.len() < 5 {
            return vec![Err(format!(
                "only {} pages are evicted; the attacks need 5",
                evicted.len()
            ))];
        }
        // Each case uses its own page(s), from the top (never touched by
        // the guest yet: it restores them itself later).
        let pick = |i: usize| evicted[evicted.len() - 1 - i];
        vec![
            self.attack_flip(hyp, &mut p, pick(0)),
            self.attack_replay(hyp, &mut p, pick(1)),
            self.attack_swap(hyp, &mut p, pick(2), pick(3)),
            self.attack_other_vm(hyp, &mut p, pick(4), meta_pages),
        ]
    }

    /// Makes a restore of `ipa` with the file's slot as `tamper` leaves it,
    /// expects a refusal, puts the slot back, and restores honestly.
    fn refused_then_honest(
        &self,
        hyp: &dyn Hyp,
        p: &mut Policy,
        what: &str,
        ipa: u64,
        tampered: &Record,
    ) -> Result<String, String> {
        let good = self.store.read(ipa).map_err(|e| format!("{what}: {e:#}"))?;
        self.store
            .write(ipa, tampered)
            .map_err(|e| format!("{what}: {e:#}"))?;
        let frame = p.free_frame().ok_or(format!("{what}: no free frame"))?;
        let refused = match self.restore_locked(hyp, p, ipa) {
            Err(SwapError::Refused(_, code)) => Ok(code),
            Err(e) => Err(format!("{what}: {e}")),
            Ok(()) => Err(format!(
                "{what}: VM_RESTORE of {ipa:#x} ACCEPTED a tampered page (frame {frame:#x})"
            )),
        };
        self.store
            .write(ipa, &good)
            .map_err(|e| format!("{what}: {e:#}"))?;
        let code = refused?;
        if !p.is_evicted(ipa) {
            return Err(format!(
                "{what}: {ipa:#x} is no longer evicted after the refusal"
            ));
        }
        self.restore_locked(hyp, p, ipa).map_err(|e| {
            format!(
                "{what}: refused with {}, but the honest restore then failed: {e}",
                error_name(code)
            )
        })?;
        Ok(format!(
            "{what}: VM_RESTORE of {ipa:#x} refused with {}; the VM is unchanged (the honest record then restored)",
            error_name(code)
        ))
    }

    fn attack_flip(&self, hyp: &dyn Hyp, p: &mut Policy, ipa: u64) -> Result<String, String> {
        let what = "a bit flipped in a sealed page in the swap file";
        let mut r = self.store.read(ipa).map_err(|e| format!("{what}: {e:#}"))?;
        r.sealed[1234] ^= 0x10;
        self.refused_then_honest(hyp, p, what, ipa, &r)
    }

    fn attack_replay(&self, hyp: &dyn Hyp, p: &mut Policy, ipa: u64) -> Result<String, String> {
        let what = "an old version replayed";
        let old = self.store.read(ipa).map_err(|e| format!("{what}: {e:#}"))?;
        // Restore it, evict it again: the slot now holds a newer version.
        let mut again = || -> Result<(), SwapError> {
            self.restore_locked(hyp, p, ipa)?;
            let record = self.evict_call(hyp, self.handle, ipa)?;
            p.evicted(ipa);
            EVICTIONS.fetch_add(1, Ordering::Relaxed);
            self.store.write(ipa, &record)?;
            Ok(())
        };
        again().map_err(|e| format!("{what}: {e}"))?;
        let new = self.store.read(ipa).map_err(|e| format!("{what}: {e:#}"))?;
        if new.version <= old.version {
            return Err(format!(
                "{what}: evicting {ipa:#x} again gave version {} after {}",
                new.version, old.version
            ));
        }
        self.refused_then_honest(hyp, p, what, ipa, &old).map(|s| {
            format!(
                "{s} (version {} replayed, current {})",
                old.version, new.version
            )
        })
    }

    fn attack_swap(&self, hyp: &dyn Hyp, p: &mut Policy, a: u64, b: u64) -> Result<String, String> {
        let what = "two sealed pages swapped in the swap file";
        let rb = self.store.read(b).map_err(|e| format!("{what}: {e:#}"))?;
        let ra = self.store.read(a).map_err(|e| format!("{what}: {e:#}"))?;
        let one = self.refused_then_honest(hyp, p, what, a, &rb)?;
        let two = self.refused_then_honest(hyp, p, what, b, &ra)?;
        Ok(format!(
            "{one}; {}",
            two.trim_start_matches(what).trim_start_matches(": ")
        ))
    }

    /// Creates a second (non-protected) VM in free frames, evicts its page
    /// at `ipa` (so that address is evicted there too, version 1), and
    /// offers it this VM's record of `ipa`.
    fn attack_other_vm(
        &self,
        hyp: &dyn Hyp,
        p: &mut Policy,
        ipa: u64,
        meta_pages: u64,
    ) -> Result<String, String> {
        let what = "a sealed page restored into another VM";
        let config = VmConfig {
            protected: false,
            debug: false,
            max_vcpus: 1,
        };
        let meta = config.min_metadata_pages() + meta_pages;
        // Metadata, the page the other VM gets, and the fresh page.
        let count = meta + 2;
        let start = p
            .take_run(count)
            .ok_or(format!("{what}: no {count} free frames in a row"))?;
        let phys = self.region_phys + start;
        let result = (|| -> Result<String, String> {
            let r = call(hyp, HostCall::VmCreate.id(), &[phys, meta, config.encode()]);
            if r[0] != 0 {
                return Err(format!("{what}: VM_CREATE: {}", error_name(code_of(&r))));
            }
            let other = r[1];
            let inner = (|| -> Result<String, String> {
                let page = phys + meta * PAGE_SIZE;
                let r = call(hyp, HostCall::VmDonate.id(), &[other, page, 1, ipa]);
                if r[0] != 0 {
                    return Err(format!("{what}: VM_DONATE: {}", error_name(code_of(&r))));
                }
                let theirs = self
                    .evict_call(hyp, other, ipa)
                    .map_err(|e| format!("{what}: evicting the other VM's page: {e}"))?;
                let ours = self.store.read(ipa).map_err(|e| format!("{what}: {e:#}"))?;
                let fresh = start + (meta + 1) * PAGE_SIZE;
                match self.restore_call(hyp, other, ipa, &ours, fresh) {
                    Ok(()) => Err(format!(
                        "{what}: VM {other:#x} ACCEPTED VM {:#x}'s page {ipa:#x} (versions {} and {})",
                        self.handle, ours.version, theirs.version
                    )),
                    Err(SwapError::Refused(_, code)) => Ok(format!(
                        "{what}: VM_RESTORE of VM {:#x}'s page {ipa:#x} (version {}) into VM {other:#x} (where it is evicted, version {}) refused with {}",
                        self.handle,
                        ours.version,
                        theirs.version,
                        error_name(code)
                    )),
                    Err(e) => Err(format!("{what}: {e}")),
                }
            })();
            let r = call(hyp, HostCall::VmDestroy.id(), &[other]);
            if r[0] != 0 {
                return Err(format!(
                    "{what}: VM_DESTROY of the other VM: {} (its frames stay out of use)",
                    error_name(code_of(&r))
                ));
            }
            inner
        })();
        let destroyed = !result
            .as_ref()
            .is_err_and(|e| e.contains("VM_DESTROY of the other VM"));
        if destroyed {
            p.give_back(start, count);
        }
        let line = result?;
        // The record still restores into this VM.
        self.restore_locked(hyp, p, ipa)
            .map_err(|e| format!("{what}: the honest restore then failed: {e}"))?;
        Ok(format!(
            "{line}; the VM is unchanged (the record then restored into it)"
        ))
    }

    // -----------------------------------------------------------------------
    // Leak scan.

    /// Looks for `secret` in the swap file and in every page of the pool
    /// region the host can read (`pool_pages` pages from offset 0).
    /// Returns `(hits in the file, hits in host-readable pages, pages read,
    /// pages that aborted)`.
    ///
    /// # Errors
    ///
    /// I/O errors reading the file.
    pub fn scan(&self, secret: &[u8], pool_pages: u64) -> Result<(u64, u64, u64, u64)> {
        let file = std::fs::read(self.store.path())
            .with_context(|| format!("reading {}", self.store.path().display()))?;
        let in_file = count(&file, secret);
        let (mut hits, mut read, mut aborted) = (0, 0, 0);
        // Straddling pages: keep the previous page's tail.
        let mut tail: Vec<u8> = Vec::new();
        for i in 0..pool_pages {
            let at = usize::try_from(i * PAGE_SIZE)?;
            match self.region.guarded_read(at, PAGE) {
                Ok(page) => {
                    read += 1;
                    // A match inside the tail alone is impossible: it is
                    // one byte shorter than the secret.
                    let mut joined = std::mem::take(&mut tail);
                    joined.extend_from_slice(&page);
                    hits += count(&joined, secret);
                    tail = page[PAGE - (secret.len() - 1).min(PAGE)..].to_vec();
                }
                Err(Fault::Signal(_)) => {
                    aborted += 1;
                    tail.clear();
                }
                Err(Fault::Failed) => bail!("the probe of pool page {i} failed"),
            }
        }
        Ok((in_file, hits, read, aborted))
    }
}

/// After the first evictions (vCPU 0's thread, before the guest runs on):
/// says what went, and runs `--swap-attack`. Returns the attacks that were
/// not refused.
pub fn after_trim(name: &str, swap: &Swap<'_>, hyp: &dyn Hyp) -> usize {
    let (resident, evicted) = swap.pages();
    println!(
        "[{name}] rampart-vmm: swap: {evicted} pages evicted to {}, {resident} resident (limit {})",
        swap.path().display(),
        swap.policy().limit()
    );
    if !swap.attacking() {
        return 0;
    }
    let mut failed = 0;
    for r in swap.attack(hyp, crate::plan::stage2_extra_pages(PAGE_SIZE)) {
        match r {
            Ok(line) => println!("[{name}] rampart-vmm: swap attack refused: {line}"),
            Err(line) => {
                failed += 1;
                println!("[{name}] rampart-vmm: FAIL swap attack: {line}");
            }
        }
    }
    failed
}

/// Before the VM is destroyed: the swap summary, and `--swap-scan`.
/// Returns 1 if the secret was found (or the scan failed), else 0.
pub fn at_end(name: &str, swap: &Swap<'_>, args: &SwapArgs, pool_pages: u64) -> usize {
    let (evictions, restores, refusals) = counts();
    let (resident, evicted) = swap.pages();
    println!(
        "[{name}] rampart-vmm: swap: {evictions} evictions, {restores} restores, {refusals} refusals; {resident} pages resident, {evicted} evicted at the end"
    );
    let Some(secret) = &args.swap_scan else {
        return 0;
    };
    match swap.scan(&secret.0, pool_pages) {
        Ok((in_file, in_pool, read, aborted)) => {
            let ok = in_file == 0 && in_pool == 0;
            println!(
                "[{name}] rampart-vmm: {}swap scan: the secret appears {in_file} times in {} and {in_pool} times in the {read} pool pages the host can read ({aborted} pages are the VM's: reading them aborts); {evicted} pages evicted now",
                if ok { "" } else { "FAIL " },
                swap.path().display()
            );
            usize::from(!ok)
        }
        Err(e) => {
            println!("[{name}] rampart-vmm: FAIL swap scan: {e:#}");
            1
        }
    }
}

/// Occurrences of `needle` in `hay`.
#[must_use]
pub fn count(hay: &[u8], needle: &[u8]) -> u64 {
    if needle.is_empty() || hay.len() < needle.len() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

#[cfg(test)]
mod tests;
