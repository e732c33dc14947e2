//! Rampart's secure-migration stream (issue 14): a protected VM leaves one
//! Rampart hypervisor and enters another only sealed, record by record,
//! under a key the hosts never see. `docs/formats.md` ("Migration stream")
//! specifies every byte; this crate is the code both hypervisors run.
//!
//! ```text
//! stream   = preamble (128 bytes, clear) || record*
//! record   = kind u16 || 0u16 || len u32 || seq u64 || payload (len) || tag (16)
//! key      = HKDF-SHA256(salt = "rampart.migrate.key.v1\0", IKM = migration secret,
//!                        info = the 128 preamble bytes, L = 32)
//! nonce    = seq u64 LE || 0u32
//! AAD      = "rampart.migrate.record.v1\0" || the record's first 16 bytes
//!            (|| the payload, for the header record, whose payload is clear)
//! ```
//! Records come in one order only: the header (seq 0), every guest page in
//! strictly ascending guest-physical order, every vCPU in ascending index
//! order, then the end record. The key binds the whole preamble (stream id,
//! the destination's challenge, the destination's and source's identities),
//! the nonce and AAD bind each record's position, and the end record makes
//! truncation visible: an [`Opener`] refuses a tampered, reordered,
//! dropped, duplicated or misplaced record, and [`Opener::finish`] refuses
//! a stream that stopped before its end record.
//!
//! What this crate cannot see, its caller checks (`hyp/src/migrate.rs`):
//! that the challenge is one the destination issued and has not used
//! (a stream replayed whole), and that the destination identity is its
//! own (a stream re-targeted to another machine; the key differs too).
//!
//! `#![no_std]`, no allocation, no `unsafe`, no panics on any input: it
//! builds for `aarch64-unknown-none-softfloat` and runs at EL2.

#![no_std]
#![forbid(unsafe_code)]

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The preamble's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"RMIGRATE";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the preamble.
pub const PREAMBLE_LEN: usize = 128;
/// Bytes of a record's header (kind, reserved, length, sequence number).
pub const RECORD_HEADER_LEN: usize = 16;
/// Bytes of a record's authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a guest page.
pub const PAGE_SIZE: usize = 4096;
/// The largest record payload: a page record's guest address and page.
pub const MAX_PAYLOAD: usize = 8 + PAGE_SIZE;
/// The largest record, header and tag included.
pub const MAX_RECORD: usize = RECORD_HEADER_LEN + MAX_PAYLOAD + TAG_LEN;
/// The most runs of contiguous guest memory a header describes.
pub const MAX_RUNS: usize = 64;
/// The most MMIO-guard pages a header carries.
pub const MAX_MMIO: usize = 32;
/// The most vCPUs a stream carries.
pub const MAX_VCPUS: u32 = 8;
/// HKDF salt for the stream key.
pub const KEY_SALT: &[u8] = b"rampart.migrate.key.v1\0";
/// The first bytes of every record's associated data.
pub const AAD_DOMAIN: &[u8] = b"rampart.migrate.record.v1\0";

/// Why a stream, or one of its records, is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Bytes that do not parse: a bad magic, version, kind, length or
    /// reserved field, or a header that contradicts itself.
    Malformed,
    /// The record's tag does not verify: tampered, sealed under another
    /// key (another destination, challenge or migration secret), or not a
    /// record of this stream.
    NotAuthentic,
    /// The record's sequence number is not the next one: records dropped,
    /// reordered or repeated.
    Sequence,
    /// The record is authentic and in sequence but not allowed here: a
    /// page out of ascending order or outside the header's memory, a vCPU
    /// out of order or beyond the header's count, an end record whose
    /// counts disagree, or anything after the end record.
    Order,
    /// The stream stopped before its end record.
    Truncated,
    /// The output buffer is too small for the record (sealing only), or the
    /// input holds less than one whole record (opening: read more).
    Short,
}

/// The 32-byte secret two machines share for migration (provisioned like
/// the device secret; never visible to either host). Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MigrationSecret([u8; 32]);

impl MigrationSecret {
    /// Wraps a secret. The caller should wipe its own copy.
    #[must_use]
    pub const fn from_bytes(bytes: &[u8; 32]) -> Self {
        MigrationSecret(*bytes)
    }
}

impl MigrationSecret {
    /// A 16-byte value derived from the secret and `context`, for a
    /// machine without a random-number generator: unique as long as
    /// `context` is (the caller puts a counter and the time in it).
    #[must_use]
    pub fn derive_id(&self, context: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        // 16 bytes is always a valid HKDF-SHA256 output length.
        let _ = Hkdf::<Sha256>::new(Some(ID_SALT), &self.0).expand(context, &mut out);
        out
    }
}

/// HKDF salt for [`MigrationSecret::derive_id`].
pub const ID_SALT: &[u8] = b"rampart.migrate.id.v1\0";

/// The clear start of a stream: who it is from and for, and the
/// destination's challenge. Every field is bound into the stream key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Preamble {
    /// Chosen by the source for this stream (random where the CPU has a
    /// random-number generator).
    pub stream_id: [u8; 16],
    /// Chosen by the destination (`VM_IMPORT_BEGIN`); single use.
    pub challenge: [u8; 16],
    /// The destination's identity: its attestation public key.
    pub destination: [u8; 32],
    /// The source's identity: its attestation public key.
    pub source: [u8; 32],
}

impl Preamble {
    /// The preamble's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[16..32].copy_from_slice(&self.stream_id);
        out[32..48].copy_from_slice(&self.challenge);
        out[48..80].copy_from_slice(&self.destination);
        out[80..112].copy_from_slice(&self.source);
        out
    }

    /// Parses a preamble.
    ///
    /// # Errors
    ///
    /// [`Error::Short`] for fewer than [`PREAMBLE_LEN`] bytes,
    /// [`Error::Malformed`] for another magic or version or a reserved byte
    /// that is not zero.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: &[u8; PREAMBLE_LEN] = bytes
            .get(..PREAMBLE_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Short)?;
        if bytes[0..8] != MAGIC
            || u32_at(bytes, 8) != VERSION
            || bytes[12..16] != [0; 4]
            || bytes[112..] != [0; 16]
        {
            return Err(Error::Malformed);
        }
        Ok(Preamble {
            stream_id: array(&bytes[16..32]),
            challenge: array(&bytes[32..48]),
            destination: array(&bytes[48..80]),
            source: array(&bytes[80..112]),
        })
    }

    fn cipher(&self, secret: &MigrationSecret) -> ChaCha20Poly1305 {
        let mut key = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = Hkdf::<Sha256>::new(Some(KEY_SALT), &secret.0).expand(&self.encode(), &mut key);
        let cipher = ChaCha20Poly1305::new(&key.into());
        key.zeroize();
        cipher
    }
}

/// Record kinds.
pub mod kind {
    /// The header: the VM's configuration, measurement and memory layout
    /// (authenticated, not encrypted).
    pub const HEADER: u16 = 1;
    /// One guest page (encrypted).
    pub const PAGE: u16 = 2;
    /// One vCPU's state (encrypted).
    pub const VCPU: u16 = 3;
    /// The end of the stream: its counts (encrypted).
    pub const END: u16 = 4;
}

/// The VM as the header describes it. Nothing here is the guest's own
/// data: the host chose the configuration and the memory layout, and the
/// measurement is what attestation reports show anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// A protected VM.
    pub protected: bool,
    /// A debug VM.
    pub debug: bool,
    /// vCPUs the VM may have (1..=[`MAX_VCPUS`]); the stream carries one
    /// record for each.
    pub vcpus: u32,
    /// The VM's measurement (fixed at its first run on the source).
    pub measurement: [u8; 32],
    /// The signer and signature the source accepted for that measurement;
    /// the destination checks them against its own trusted keys.
    pub signature: Option<([u8; 32], [u8; 64])>,
    /// Guest memory: `(guest address, pages)` runs, page-aligned, ascending
    /// and disjoint; the first `run_count` entries are used.
    pub runs: [(u64, u64); MAX_RUNS],
    /// Entries of `runs` used.
    pub run_count: usize,
    /// The MMIO-guard pages the guest enrolled; first `mmio_count` used.
    pub mmio: [u64; MAX_MMIO],
    /// Entries of `mmio` used.
    pub mmio_count: usize,
}

/// Bytes of an encoded header.
pub const HEADER_LEN: usize = 16 + 32 + 4 + 32 + 64 + MAX_RUNS * 16 + MAX_MMIO * 8 + 12;

impl Header {
    /// An empty header for `vcpus` vCPUs.
    #[must_use]
    pub const fn new(protected: bool, debug: bool, vcpus: u32, measurement: [u8; 32]) -> Self {
        Header {
            protected,
            debug,
            vcpus,
            measurement,
            signature: None,
            runs: [(0, 0); MAX_RUNS],
            run_count: 0,
            mmio: [0; MAX_MMIO],
            mmio_count: 0,
        }
    }

    /// Adds a guest page at `ipa` to the layout (pages in ascending order
    /// extend the last run).
    ///
    /// # Errors
    ///
    /// [`Error::Order`] for a page not above the last one or unaligned,
    /// [`Error::Malformed`] when the runs are full.
    pub fn add_page(&mut self, ipa: u64) -> Result<(), Error> {
        if !ipa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(Error::Order);
        }
        if let Some(last) = self
            .run_count
            .checked_sub(1)
            .and_then(|i| self.runs.get_mut(i))
        {
            let end = last
                .0
                .checked_add(last.1 * PAGE_SIZE as u64)
                .ok_or(Error::Malformed)?;
            if ipa < end {
                return Err(Error::Order);
            }
            if ipa == end {
                last.1 += 1;
                return Ok(());
            }
        }
        let slot = self.runs.get_mut(self.run_count).ok_or(Error::Malformed)?;
        *slot = (ipa, 1);
        self.run_count += 1;
        Ok(())
    }

    /// The guest pages the layout holds.
    #[must_use]
    pub fn pages(&self) -> u64 {
        self.runs[..self.run_count.min(MAX_RUNS)]
            .iter()
            .map(|r| r.1)
            .sum()
    }

    /// Whether the layout holds the page at `ipa`.
    #[must_use]
    pub fn contains(&self, ipa: u64) -> bool {
        self.runs[..self.run_count.min(MAX_RUNS)]
            .iter()
            .any(|&(start, pages)| ipa >= start && (ipa - start) / (PAGE_SIZE as u64) < pages)
    }

    /// The header's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let flags = u32::from(self.protected) | u32::from(self.debug) << 1;
        out[0..4].copy_from_slice(&flags.to_le_bytes());
        out[4..8].copy_from_slice(&self.vcpus.to_le_bytes());
        out[8..12].copy_from_slice(
            &u32::try_from(self.run_count)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out[12..16].copy_from_slice(
            &u32::try_from(self.mmio_count)
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out[16..48].copy_from_slice(&self.measurement);
        if let Some((signer, signature)) = &self.signature {
            out[48..52].copy_from_slice(&1u32.to_le_bytes());
            out[52..84].copy_from_slice(signer);
            out[84..148].copy_from_slice(signature);
        }
        let mut at = 148;
        for &(ipa, pages) in &self.runs {
            out[at..at + 8].copy_from_slice(&ipa.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&pages.to_le_bytes());
            at += 16;
        }
        for &page in &self.mmio {
            out[at..at + 8].copy_from_slice(&page.to_le_bytes());
            at += 8;
        }
        out[at..at + 8].copy_from_slice(&self.pages().to_le_bytes());
        out
    }

    /// Parses and checks a header: flags, counts, runs page-aligned,
    /// non-empty, ascending, disjoint and without wrap-around; unused
    /// entries zero; the page total agrees.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: &[u8; HEADER_LEN] = bytes.try_into().map_err(|_| Error::Malformed)?;
        let flags = u32_at(bytes, 0);
        let vcpus = u32_at(bytes, 4);
        let run_count = u32_at(bytes, 8) as usize;
        let mmio_count = u32_at(bytes, 12) as usize;
        let signed = u32_at(bytes, 48);
        if flags & !3 != 0
            || vcpus == 0
            || vcpus > MAX_VCPUS
            || run_count > MAX_RUNS
            || mmio_count > MAX_MMIO
            || signed > 1
        {
            return Err(Error::Malformed);
        }
        if signed == 0 && bytes[52..148].iter().any(|&b| b != 0) {
            return Err(Error::Malformed);
        }
        let mut header = Header::new(flags & 1 != 0, flags & 2 != 0, vcpus, array(&bytes[16..48]));
        if signed == 1 {
            header.signature = Some((array(&bytes[52..84]), array(&bytes[84..148])));
        }
        let mut at = 148;
        let mut previous_end = 0u64;
        for i in 0..MAX_RUNS {
            let (ipa, pages) = (u64_at(bytes, at), u64_at(bytes, at + 8));
            at += 16;
            if i >= run_count {
                if ipa != 0 || pages != 0 {
                    return Err(Error::Malformed);
                }
                continue;
            }
            let end = pages
                .checked_mul(PAGE_SIZE as u64)
                .and_then(|b| ipa.checked_add(b))
                .ok_or(Error::Malformed)?;
            if !ipa.is_multiple_of(PAGE_SIZE as u64)
                || pages == 0
                || (i > 0 && ipa <= previous_end)
                || (i == 0 && ipa < previous_end)
            {
                // Adjacent runs would have been one run: refused, so a
                // layout has exactly one encoding.
                return Err(Error::Malformed);
            }
            previous_end = end;
            header.runs[i] = (ipa, pages);
        }
        header.run_count = run_count;
        for i in 0..MAX_MMIO {
            let page = u64_at(bytes, at);
            at += 8;
            if (i >= mmio_count && page != 0) || !page.is_multiple_of(PAGE_SIZE as u64) {
                return Err(Error::Malformed);
            }
            header.mmio[i] = page;
        }
        header.mmio_count = mmio_count;
        if u64_at(bytes, at) != header.pages() {
            return Err(Error::Malformed);
        }
        Ok(header)
    }
}

/// One vCPU's state. The hypervisor's `VcpuState` maps onto it field by
/// field (`hyp/src/migrate.rs`); `docs/formats.md` lists the EL1 registers
/// in `el1`'s order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuRecord {
    /// Its index (0..vcpus).
    pub index: u32,
    /// Power state: 0 off, 1 CPU_ON pending, 2 on.
    pub power: u32,
    /// Bit 0: has run; bit 1: halted; bit 2: a virtual SError is pending;
    /// bit 3: the vCPU exists (was created; the other fields are zero
    /// otherwise).
    pub flags: u32,
    /// CPU_ON entry point and context id (power state 1).
    pub boot: [u64; 2],
    /// x0..x30.
    pub regs: [u64; 31],
    /// PC.
    pub pc: u64,
    /// PSTATE.
    pub pstate: u64,
    /// The EL1 system registers and the virtual timer, in
    /// `docs/formats.md`'s order.
    pub el1: [u64; EL1_WORDS],
    /// V0..V31 as little-endian 128-bit values, two words each.
    pub fp: [u64; 64],
    /// FPSR, FPCR.
    pub fp_status: [u64; 2],
    /// The pointer-authentication keys (APIA lo/hi, APIB, APDA, APDB, APGA).
    pub pauth: [u64; 10],
    /// ICH_VMCR_EL2, ICH_AP1R0_EL2, ICH_LR0..3_EL2.
    pub vgic: [u64; 6],
    /// Virtual interrupts pending for it and not yet in a list register,
    /// one bit per INTID 0..1023.
    pub pending: [u64; 16],
    /// The source's counter (CNTVCT) when the vCPU was saved.
    pub counter: u64,
}

/// EL1 system-register words in a [`VcpuRecord`].
pub const EL1_WORDS: usize = 26;
/// Bytes of an encoded [`VcpuRecord`].
pub const VCPU_LEN: usize = 12 + 4 + 8 * (2 + 31 + 2 + EL1_WORDS + 64 + 2 + 10 + 6 + 16 + 1);

impl VcpuRecord {
    /// A record of zeros for vCPU `index`.
    #[must_use]
    pub const fn zeroed(index: u32) -> Self {
        VcpuRecord {
            index,
            power: 0,
            flags: 0,
            boot: [0; 2],
            regs: [0; 31],
            pc: 0,
            pstate: 0,
            el1: [0; EL1_WORDS],
            fp: [0; 64],
            fp_status: [0; 2],
            pauth: [0; 10],
            vgic: [0; 6],
            pending: [0; 16],
            counter: 0,
        }
    }

    fn words(&self) -> impl Iterator<Item = &u64> {
        self.boot
            .iter()
            .chain(&self.regs)
            .chain([&self.pc, &self.pstate])
            .chain(&self.el1)
            .chain(&self.fp)
            .chain(&self.fp_status)
            .chain(&self.pauth)
            .chain(&self.vgic)
            .chain(&self.pending)
            .chain([&self.counter])
    }

    fn words_mut(&mut self) -> impl Iterator<Item = &mut u64> {
        self.boot
            .iter_mut()
            .chain(&mut self.regs)
            .chain([&mut self.pc, &mut self.pstate])
            .chain(&mut self.el1)
            .chain(&mut self.fp)
            .chain(&mut self.fp_status)
            .chain(&mut self.pauth)
            .chain(&mut self.vgic)
            .chain(&mut self.pending)
            .chain([&mut self.counter])
    }

    /// The record's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; VCPU_LEN] {
        let mut out = [0u8; VCPU_LEN];
        out[0..4].copy_from_slice(&self.index.to_le_bytes());
        out[4..8].copy_from_slice(&self.power.to_le_bytes());
        out[8..12].copy_from_slice(&self.flags.to_le_bytes());
        for (chunk, word) in out[16..].chunks_exact_mut(8).zip(self.words()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Parses a record: the power state is 0..=2, unknown flags and the
    /// reserved word are zero. (Register values are the guest's business;
    /// the hypervisor sanitises what it must when it loads them.)
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: &[u8; VCPU_LEN] = bytes.try_into().map_err(|_| Error::Malformed)?;
        let mut record = VcpuRecord::zeroed(u32_at(bytes, 0));
        record.power = u32_at(bytes, 4);
        record.flags = u32_at(bytes, 8);
        if record.power > 2
            || record.flags & !0xf != 0
            || u32_at(bytes, 12) != 0
            || record.index >= MAX_VCPUS
        {
            return Err(Error::Malformed);
        }
        for (chunk, word) in bytes[16..].chunks_exact(8).zip(record.words_mut()) {
            *word = u64::from_le_bytes(array(chunk));
        }
        Ok(record)
    }
}

/// Bytes of an end record's payload: pages u64, vCPUs u32, reserved u32.
pub const END_LEN: usize = 16;

/// Where a stream is: which record may come next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Pages,
    Vcpus,
    Done,
}

/// The order every stream follows, enforced on both sides.
#[derive(Clone, Copy, Debug)]
struct Order {
    stage: Stage,
    header: Option<Header>,
    pages: u64,
    last_ipa: Option<u64>,
    vcpus: u32,
}

impl Order {
    const fn new() -> Self {
        Order {
            stage: Stage::Header,
            header: None,
            pages: 0,
            last_ipa: None,
            vcpus: 0,
        }
    }

    fn header(&mut self, header: &Header) -> Result<(), Error> {
        if self.stage != Stage::Header {
            return Err(Error::Order);
        }
        self.header = Some(*header);
        self.stage = Stage::Pages;
        Ok(())
    }

    fn page(&mut self, ipa: u64) -> Result<(), Error> {
        let header = self.header.as_ref().ok_or(Error::Order)?;
        if self.stage != Stage::Pages
            || !header.contains(ipa)
            || self.last_ipa.is_some_and(|last| ipa <= last)
        {
            return Err(Error::Order);
        }
        self.last_ipa = Some(ipa);
        self.pages += 1;
        Ok(())
    }

    fn vcpu(&mut self, index: u32) -> Result<(), Error> {
        let header = self.header.as_ref().ok_or(Error::Order)?;
        let all_pages = self.pages == header.pages();
        match self.stage {
            Stage::Pages if all_pages => self.stage = Stage::Vcpus,
            Stage::Vcpus => {}
            _ => return Err(Error::Order),
        }
        if index != self.vcpus || index >= header.vcpus {
            return Err(Error::Order);
        }
        self.vcpus += 1;
        Ok(())
    }

    fn end(&mut self, pages: u64, vcpus: u32) -> Result<(), Error> {
        let header = self.header.as_ref().ok_or(Error::Order)?;
        if self.stage != Stage::Vcpus
            || self.vcpus != header.vcpus
            || pages != self.pages
            || vcpus != self.vcpus
        {
            return Err(Error::Order);
        }
        self.stage = Stage::Done;
        Ok(())
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

fn record_header(kind: u16, len: usize, seq: u64) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..2].copy_from_slice(&kind.to_le_bytes());
    h[4..8].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Associated data: the domain, the record header, and (header record
/// only) the clear payload. At most 26 + 16 + [`HEADER_LEN`] bytes.
fn aad<'a>(
    buf: &'a mut [u8; 32 + RECORD_HEADER_LEN + HEADER_LEN],
    header: &[u8],
    clear: &[u8],
) -> &'a [u8] {
    let d = AAD_DOMAIN.len();
    buf[..d].copy_from_slice(AAD_DOMAIN);
    buf[d..d + RECORD_HEADER_LEN].copy_from_slice(header);
    let n = clear.len().min(HEADER_LEN);
    buf[d + RECORD_HEADER_LEN..d + RECORD_HEADER_LEN + n].copy_from_slice(&clear[..n]);
    &buf[..d + RECORD_HEADER_LEN + n]
}

/// The source's side: seals records in the one allowed order.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    seq: u64,
    order: Order,
}

impl Sealer {
    /// Starts a stream for `preamble` (written first, by the caller, with
    /// [`Preamble::encode`]).
    #[must_use]
    pub fn new(secret: &MigrationSecret, preamble: &Preamble) -> Self {
        Sealer {
            cipher: preamble.cipher(secret),
            seq: 0,
            order: Order::new(),
        }
    }

    /// Seals the header record into `out`; returns its length.
    ///
    /// # Errors
    ///
    /// [`Error::Order`] if it is not the first record, [`Error::Short`]
    /// if `out` is too small.
    pub fn header(&mut self, header: &Header, out: &mut [u8]) -> Result<usize, Error> {
        let mut order = self.order;
        order.header(header)?;
        let n = self.seal(kind::HEADER, &header.encode(), true, out)?;
        self.order = order;
        Ok(n)
    }

    /// Seals a guest page.
    ///
    /// # Errors
    ///
    /// As [`Sealer::header`].
    pub fn page(
        &mut self,
        ipa: u64,
        page: &[u8; PAGE_SIZE],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let mut order = self.order;
        order.page(ipa)?;
        let mut payload = [0u8; MAX_PAYLOAD];
        payload[..8].copy_from_slice(&ipa.to_le_bytes());
        payload[8..].copy_from_slice(page);
        let n = self.seal(kind::PAGE, &payload, false, out);
        payload.zeroize();
        let n = n?;
        self.order = order;
        Ok(n)
    }

    /// Seals a vCPU.
    ///
    /// # Errors
    ///
    /// As [`Sealer::header`].
    pub fn vcpu(&mut self, vcpu: &VcpuRecord, out: &mut [u8]) -> Result<usize, Error> {
        let mut order = self.order;
        order.vcpu(vcpu.index)?;
        let mut payload = vcpu.encode();
        let n = self.seal(kind::VCPU, &payload, false, out);
        payload.zeroize();
        let n = n?;
        self.order = order;
        Ok(n)
    }

    /// Seals the end record.
    ///
    /// # Errors
    ///
    /// As [`Sealer::header`].
    pub fn end(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        let mut order = self.order;
        order.end(order.pages, order.vcpus)?;
        let mut payload = [0u8; END_LEN];
        payload[..8].copy_from_slice(&order.pages.to_le_bytes());
        payload[8..12].copy_from_slice(&order.vcpus.to_le_bytes());
        let n = self.seal(kind::END, &payload, false, out)?;
        self.order = order;
        Ok(n)
    }

    /// Whether the end record has been sealed.
    #[must_use]
    pub fn done(&self) -> bool {
        self.order.stage == Stage::Done
    }

    fn seal(
        &mut self,
        kind: u16,
        payload: &[u8],
        clear: bool,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let total = RECORD_HEADER_LEN + payload.len() + TAG_LEN;
        let out = out.get_mut(..total).ok_or(Error::Short)?;
        let header = record_header(kind, payload.len(), self.seq);
        out[..RECORD_HEADER_LEN].copy_from_slice(&header);
        let (body, tag_out) = out[RECORD_HEADER_LEN..].split_at_mut(payload.len());
        body.copy_from_slice(payload);
        let mut aad_buf = [0u8; 32 + RECORD_HEADER_LEN + HEADER_LEN];
        let tag = if clear {
            let aad = aad(&mut aad_buf, &header, payload);
            self.cipher
                .encrypt_inout_detached(&nonce(self.seq), aad, (&mut [][..]).into())
        } else {
            let aad = aad(&mut aad_buf, &header, &[]);
            self.cipher
                .encrypt_inout_detached(&nonce(self.seq), aad, body.into())
        }
        .map_err(|_| Error::Malformed)?;
        tag_out.copy_from_slice(&tag);
        self.seq += 1;
        Ok(total)
    }
}

/// An opened record, its payload decrypted in the caller's buffer.
#[derive(Debug)]
pub enum Record<'a> {
    /// The header.
    Header(Header),
    /// A guest page.
    Page {
        /// Its guest-physical address.
        ipa: u64,
        /// Its contents.
        data: &'a [u8; PAGE_SIZE],
    },
    /// A vCPU.
    Vcpu(VcpuRecord),
    /// The end: the stream is complete.
    End,
}

/// The destination's side: opens records, refusing anything but the
/// stream the source sealed, whole and in order.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    seq: u64,
    order: Order,
}

impl Opener {
    /// Opens the stream that `preamble` starts. The caller has checked the
    /// preamble's challenge and destination.
    #[must_use]
    pub fn new(secret: &MigrationSecret, preamble: &Preamble) -> Self {
        Opener {
            cipher: preamble.cipher(secret),
            seq: 0,
            order: Order::new(),
        }
    }

    /// The length of the record at the start of `bytes`, from its header
    /// alone (not yet authenticated).
    ///
    /// # Errors
    ///
    /// [`Error::Short`] for fewer than 16 bytes, [`Error::Malformed`] for a
    /// length beyond [`MAX_PAYLOAD`].
    pub fn record_len(bytes: &[u8]) -> Result<usize, Error> {
        let header = bytes.get(..RECORD_HEADER_LEN).ok_or(Error::Short)?;
        let len = u32_at(header, 4) as usize;
        if len > MAX_PAYLOAD {
            return Err(Error::Malformed);
        }
        Ok(RECORD_HEADER_LEN + len + TAG_LEN)
    }

    /// Authenticates, decrypts (in place) and checks the record at the
    /// start of `bytes`, which the caller owns (never the host's memory
    /// directly). Returns the record and its length. On an error nothing
    /// about the opener changed, except that the stream is then dead to
    /// the caller (the hypervisor abandons the import).
    ///
    /// # Errors
    ///
    /// [`Error::Short`] if `bytes` holds less than a whole record;
    /// otherwise as [`Error`] describes.
    pub fn open<'a>(&mut self, bytes: &'a mut [u8]) -> Result<(Record<'a>, usize), Error> {
        let total = Self::record_len(bytes)?;
        let bytes = bytes.get_mut(..total).ok_or(Error::Short)?;
        let header: [u8; RECORD_HEADER_LEN] = array(&bytes[..RECORD_HEADER_LEN]);
        let kind = u16::from_le_bytes([header[0], header[1]]);
        let len = total - RECORD_HEADER_LEN - TAG_LEN;
        let seq = u64_at(&header, 8);
        let expected_len = match kind {
            kind::HEADER => HEADER_LEN,
            kind::PAGE => MAX_PAYLOAD,
            kind::VCPU => VCPU_LEN,
            kind::END => END_LEN,
            _ => return Err(Error::Malformed),
        };
        if header[2..4] != [0, 0] || len != expected_len {
            return Err(Error::Malformed);
        }
        if seq != self.seq {
            return Err(Error::Sequence);
        }
        let (body, tag) = bytes[RECORD_HEADER_LEN..].split_at_mut(len);
        let tag: Tag = array::<TAG_LEN>(tag).into();
        let mut aad_buf = [0u8; 32 + RECORD_HEADER_LEN + HEADER_LEN];
        if kind == kind::HEADER {
            let aad = aad(&mut aad_buf, &header, body);
            self.cipher
                .decrypt_inout_detached(&nonce(seq), aad, (&mut [][..]).into(), &tag)
        } else {
            let aad = aad(&mut aad_buf, &header, &[]);
            self.cipher
                .decrypt_inout_detached(&nonce(seq), aad, (&mut *body).into(), &tag)
        }
        .map_err(|_| Error::NotAuthentic)?;
        let mut order = self.order;
        let record = match kind {
            kind::HEADER => {
                let h = Header::decode(body)?;
                order.header(&h)?;
                Record::Header(h)
            }
            kind::PAGE => {
                let (ipa, data) = body.split_at(8);
                let ipa = u64::from_le_bytes(array(ipa));
                order.page(ipa)?;
                Record::Page {
                    ipa,
                    data: data.try_into().map_err(|_| Error::Malformed)?,
                }
            }
            kind::VCPU => {
                let v = VcpuRecord::decode(body)?;
                order.vcpu(v.index)?;
                Record::Vcpu(v)
            }
            _ => {
                if body[12..16] != [0; 4] {
                    return Err(Error::Malformed);
                }
                order.end(u64_at(body, 0), u32_at(body, 8))?;
                Record::End
            }
        };
        self.order = order;
        self.seq += 1;
        Ok((record, total))
    }

    /// The header, once opened.
    #[must_use]
    pub fn header(&self) -> Option<&Header> {
        self.order.header.as_ref()
    }

    /// Whether the end record was accepted.
    #[must_use]
    pub fn done(&self) -> bool {
        self.order.stage == Stage::Done
    }

    /// Succeeds only once the end record was accepted.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] before that.
    pub fn finish(&self) -> Result<(), Error> {
        if self.done() {
            Ok(())
        } else {
            Err(Error::Truncated)
        }
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(bytes.get(at..).unwrap_or(&[])))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(bytes.get(at..).unwrap_or(&[])))
}
