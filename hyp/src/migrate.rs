//! Secure migration of a protected VM (issue 14; `docs/design.md`,
//! "Secure migration"; the stream is `crates/migrate`, `docs/formats.md`).
//!
//! - The **source** (`VM_EXPORT`) stops the VM for good at the first call,
//!   then writes the stream, whole records at a time, into host pages the
//!   host names: the clear preamble, the header, every guest page
//!   (encrypted), every vCPU (encrypted), the end record. Once the end
//!   record is out, the VM is destroyed (`vm::destroy`: pages zeroed and
//!   returned).
//! - The **destination** issues single-use challenges
//!   (`VM_IMPORT_BEGIN`), creates the VM from the preamble and header
//!   (`VM_IMPORT`: the challenge must be outstanding and the destination
//!   its own identity; a protected VM's measurement must be signed by a key
//!   it trusts), lets the host donate the header's memory layout
//!   (`VM_DONATE`), and opens the records (`VM_IMPORT_DATA`): each page is
//!   decrypted into the page the VM owns at that address, each vCPU into
//!   its state page. The VM runs only after the end record; any refused
//!   record destroys it (nothing of it stays), and the challenge may be
//!   used again. The end record spends the challenge: the same stream a
//!   second time is refused (`STALE_STREAM`).
//!
//! The migration key is the build's `RAMPART_MIGRATION_SECRET` (a secret
//! the machines share, provisioned like the device secret, never visible
//! to a host); each stream's key is derived from it and the preamble.
//!
//! Locks, outermost first: a migration slot ([`EXPORTS`], [`IMPORTS`]),
//! [`SCRATCH`], then the usual vCPU → VM → host memory order.

use core::sync::atomic::{AtomicU64, Ordering};

use rampart_abi::Error;
use rampart_abi::host::{PageRange, VcpuRef, VmConfig, VmHandle};
use rampart_attest::Measurement;
use rampart_migrate::{
    self as stream, EL1_WORDS, Header, MAX_RECORD, MigrationSecret, Opener, PAGE_SIZE,
    PREAMBLE_LEN, Preamble, RECORD_HEADER_LEN, Record, Sealer, TAG_LEN, VcpuRecord,
};
use rampart_ownership::{PageState, PhysAddr, VmId};
use rampart_platform::MemRange;
use spin::mutex::SpinMutex;

use crate::vcpu::{MigrationFlags, VcpuState};
use crate::vm::{self, MAX_VMS, VCPU_BOOT, VCPU_EXISTS, VCPU_PENDING, VCPU_POWER, VCPU_SLOTS};

const PAGE: u64 = PAGE_SIZE as u64;
/// Outstanding challenges a destination keeps.
const CHALLENGES: usize = 4;

/// vCPU record flags (`VcpuRecord::flags`).
mod flag {
    pub const RAN: u32 = 1;
    pub const HALTED: u32 = 2;
    pub const VSERROR: u32 = 4;
    pub const EXISTS: u32 = 8;
}

/// Per slot: the handle of the VM being exported or imported, or 0.
/// `VCPU_RUN` of that VM is refused ([`may_run`]).
static MIGRATING: [AtomicU64; MAX_VMS] = [const { AtomicU64::new(0) }; MAX_VMS];

/// Where an export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Preamble,
    Header,
    /// The next guest page at or above this address.
    Pages(u64),
    /// The next vCPU index.
    Vcpus(u32),
    End,
    /// The end record is out; the VM is destroyed (or will be, if the
    /// first try was busy).
    Done,
}

struct Export {
    handle: VmHandle,
    preamble: Preamble,
    header: Header,
    sealer: Sealer,
    stage: Stage,
}

struct Import {
    handle: VmHandle,
    opener: Opener,
}

static EXPORTS: [SpinMutex<Option<Export>>; MAX_VMS] = [const { SpinMutex::new(None) }; MAX_VMS];
static IMPORTS: [SpinMutex<Option<Import>>; MAX_VMS] = [const { SpinMutex::new(None) }; MAX_VMS];

/// A destination's challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Challenge {
    Free,
    /// Issued, usable once; the number orders them by age.
    Outstanding([u8; 16], u64),
    /// Named by the import of this VM, in progress.
    InUse([u8; 16], VmHandle, u64),
}

static CHALLENGE_TABLE: SpinMutex<[Challenge; CHALLENGES]> =
    SpinMutex::new([Challenge::Free; CHALLENGES]);
static ISSUED: AtomicU64 = AtomicU64::new(0);

/// EL2's copies of records and pages: never the host's memory directly.
struct Scratch {
    record: [u8; MAX_RECORD],
    page: [u8; PAGE_SIZE],
}

static SCRATCH: SpinMutex<Scratch> = SpinMutex::new(Scratch {
    record: [0; MAX_RECORD],
    page: [0; PAGE_SIZE],
});

impl Scratch {
    fn wipe(&mut self) {
        self.record.fill(0);
        self.page.fill(0);
    }
}

fn secret() -> Result<MigrationSecret, Error> {
    crate::security::BUILD_MIGRATION_SECRET
        .as_ref()
        .map(MigrationSecret::from_bytes)
        .ok_or(Error::NotSupported)
}

fn stream_error(e: stream::Error) -> Error {
    match e {
        stream::Error::NotAuthentic => Error::NotAuthentic,
        _ => Error::StreamOrder,
    }
}

/// 16 unpredictable bytes: the CPU's RNDR where it has FEAT_RNG; else
/// derived from the migration secret, a boot-wide counter and the time
/// (unique within a boot; see docs/design.md for what that costs).
fn fresh_id(secret: &MigrationSecret) -> [u8; 16] {
    if let (Some(a), Some(b)) = (crate::guest_calls::random(), crate::guest_calls::random()) {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&b.to_le_bytes());
        return out;
    }
    let n = ISSUED.fetch_add(1, Ordering::AcqRel);
    let mut context = [0u8; 16];
    context[..8].copy_from_slice(&n.to_le_bytes());
    context[8..].copy_from_slice(&crate::arch::cache::counter().to_le_bytes());
    secret.derive_id(&context)
}

/// `VCPU_RUN`'s check: refused while the VM is exported or imported.
pub fn may_run(slot: usize, handle: VmHandle) -> Result<(), Error> {
    match MIGRATING.get(slot) {
        Some(m) if m.load(Ordering::Acquire) == handle.0 => Err(Error::Migrating),
        _ => Ok(()),
    }
}

/// `VM_IMPORT_BEGIN`: a fresh challenge.
pub fn import_begin() -> Result<[u8; 16], Error> {
    let secret = secret()?;
    let challenge = fresh_id(&secret);
    let age = ISSUED.fetch_add(1, Ordering::AcqRel);
    let mut table = CHALLENGE_TABLE.lock();
    // A free entry, else the oldest outstanding one; entries in use by an
    // import in progress stay (an import abandoned by VM_DESTROY frees its
    // entry: see `claim`).
    release_abandoned(&mut table);
    let slot = table
        .iter()
        .position(|c| *c == Challenge::Free)
        .or_else(|| {
            table
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c {
                    Challenge::Outstanding(_, age) => Some((i, *age)),
                    _ => None,
                })
                .min_by_key(|&(_, age)| age)
                .map(|(i, _)| i)
        })
        .ok_or(Error::Busy)?;
    if let Some(entry) = table.get_mut(slot) {
        *entry = Challenge::Outstanding(challenge, age);
    }
    Ok(challenge)
}

/// Entries in use by imports whose VM is gone (destroyed by the host
/// before the end) are outstanding again.
fn release_abandoned(table: &mut [Challenge; CHALLENGES]) {
    for entry in table.iter_mut() {
        if let Challenge::InUse(c, handle, age) = *entry
            && vm::lock(handle).is_err()
        {
            *entry = Challenge::Outstanding(c, age);
        }
    }
}

/// Marks an outstanding challenge in use; its index.
fn claim(challenge: &[u8; 16]) -> Result<usize, Error> {
    let mut table = CHALLENGE_TABLE.lock();
    release_abandoned(&mut table);
    let i = table
        .iter()
        .position(|c| matches!(c, Challenge::Outstanding(x, _) if x == challenge))
        .ok_or(Error::StaleStream)?;
    if let Some(entry) = table.get_mut(i)
        && let Challenge::Outstanding(c, age) = *entry
    {
        *entry = Challenge::InUse(c, VmHandle(0), age);
    }
    Ok(i)
}

/// Sets what an entry becomes: in use by `handle`, outstanding again
/// (`None`: the import was refused), or spent.
fn settle(index: usize, outcome: Option<Option<VmHandle>>) {
    let mut table = CHALLENGE_TABLE.lock();
    if let Some(entry) = table.get_mut(index)
        && let Challenge::InUse(c, _, age) = *entry
    {
        *entry = match outcome {
            Some(Some(handle)) => Challenge::InUse(c, handle, age),
            Some(None) => Challenge::Free,
            None => Challenge::Outstanding(c, age),
        };
    }
}

/// Frees the challenge an import of `handle` holds: outstanding again
/// (refused) or spent (`spent`).
fn settle_by_handle(handle: VmHandle, spent: bool) {
    let index = CHALLENGE_TABLE
        .lock()
        .iter()
        .position(|c| matches!(c, Challenge::InUse(_, h, _) if *h == handle));
    if let Some(i) = index {
        settle(i, if spent { Some(None) } else { None });
    }
}

fn record_len(payload: usize) -> u64 {
    (RECORD_HEADER_LEN + payload + TAG_LEN) as u64
}

/// `VM_EXPORT`: returns (bytes written, complete).
pub fn export(
    handle: VmHandle,
    buffer: PageRange,
    challenge: [u8; 16],
    destination: [u8; 32],
) -> Result<(u64, bool), Error> {
    let slot = vm::slot_of(handle)?;
    let mut guard = EXPORTS[slot].try_lock().ok_or(Error::Busy)?;
    // The buffer first: a call refused for it changes nothing (the VM is
    // not stopped by a first call that fails).
    crate::memory::with(|mem| {
        mem.check_host_exclusive(buffer.start(), buffer.pages() * PAGE)
            .map(drop)
    })?;
    let fresh = match guard.as_ref() {
        Some(ex) if ex.handle == handle => {
            if ex.preamble.challenge != challenge || ex.preamble.destination != destination {
                return Err(Error::InvalidParameter);
            }
            false
        }
        _ => {
            *guard = Some(export_start(slot, handle, challenge, destination)?);
            true
        }
    };
    let Some(ex) = guard.as_mut() else {
        return Err(Error::InvalidParameter);
    };
    if ex.stage == Stage::Done {
        vm::destroy(handle)?;
        *guard = None;
        return Ok((0, true));
    }
    let mut scratch = SCRATCH.try_lock().ok_or(Error::Busy)?;
    let written = export_fill(slot, ex, buffer, &mut scratch);
    scratch.wipe();
    let written = match written {
        Ok(n) => n,
        Err(e) => {
            // Only the buffer's check can fail (nothing was written), and
            // the host changed the buffer since the check above. A first
            // call undoes its start: the VM runs again.
            if fresh {
                *guard = None;
                let _ = MIGRATING[slot].compare_exchange(
                    handle.0,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            return Err(e);
        }
    };
    if ex.stage != Stage::Done {
        return Ok((written, false));
    }
    // The stream is out: the VM goes. Its vCPUs cannot be running (they
    // were stopped at the start), so only a concurrent call touching a
    // vCPU's lock can make this busy; the host then calls again.
    match vm::destroy(handle) {
        Ok(()) => {
            *guard = None;
            Ok((written, true))
        }
        Err(_) => Ok((written, false)),
    }
}

/// The first `VM_EXPORT` of a VM: checks, stops it, describes it.
fn export_start(
    slot: usize,
    handle: VmHandle,
    challenge: [u8; 16],
    destination: [u8; 32],
) -> Result<Export, Error> {
    let secret = secret()?;
    let source = crate::security::attestation_public_key()?;
    // Every check that can refuse, first under the VM's lock alone: a
    // refused call takes no vCPU's lock, so it cannot make a VCPU_RUN of
    // the VM on another CPU answer BUSY meanwhile (the ABI allows BUSY
    // there only while that vCPU runs elsewhere).
    describe(handle)?;
    // Every vCPU's lock: none runs while the VM is stopped.
    let vcpus = vm::lock_vcpus(slot)?;
    // Again, with no vCPU running: a run since the first look may have
    // shared a page with the host, and only this answer counts.
    let header = describe(handle)?;
    let preamble = Preamble {
        stream_id: fresh_id(&secret),
        challenge,
        destination,
        source,
    };
    let sealer = Sealer::new(&secret, &preamble);
    // Stopped for good: VCPU_RUN checks this under the vCPU's lock, which
    // is held here.
    MIGRATING[slot].store(handle.0, Ordering::Release);
    drop(vcpus);
    Ok(Export {
        handle,
        preamble,
        header,
        sealer,
        stage: Stage::Preamble,
    })
}

/// A first `VM_EXPORT`'s checks of the VM, under its lock, and the stream
/// header that describes it.
fn describe(handle: VmHandle) -> Result<Header, Error> {
    let (slot, vm_guard) = vm::lock(handle)?;
    let vm = vm_guard.as_ref().ok_or(Error::InvalidParameter)?;
    // A realm (issue 12) is never exported: the stream carries neither its
    // guest ABI nor its RIPAS layout, so it could only arrive as another
    // kind of VM.
    if vm.realm.is_some() {
        return Err(Error::Denied);
    }
    if MIGRATING[slot].load(Ordering::Acquire) == handle.0 {
        // Being imported.
        return Err(Error::Migrating);
    }
    // Only a measured VM (a protected one that ran): any other the host
    // can build again itself.
    let measurement = vm.measurement.ok_or(Error::Denied)?;
    let vcpu_count = u32::try_from(vm.max_vcpus).map_err(|_| Error::InvalidParameter)?;
    let mut header = Header::new(vm.protected, vm.debug, vcpu_count, measurement.0);
    header.signature = vm::signature(vm);
    if let Some(guard) = vm.mmio_guard.as_ref() {
        for (slot, page) in header.mmio.iter_mut().zip(guard.pages()) {
            *slot = *page;
        }
        header.mmio_count = guard.pages().len().min(stream::MAX_MMIO);
    }
    // Every page must be the VM's alone: a page it shares with the host
    // (MEM_SHARE) would come back private, which the guest does not expect.
    let id = VmId(vm.vmid);
    crate::memory::with(|mem| {
        let mut from = 0;
        while let Some((ipa, pa)) = vm::next_page(vm, from) {
            if mem.table.page_state(PhysAddr(pa)).ok() != Some(PageState::GuestOwned(id)) {
                return Err(Error::Denied);
            }
            header.add_page(ipa).map_err(|_| Error::NoMemory)?;
            from = ipa + PAGE;
        }
        Ok(())
    })?;
    Ok(header)
}

/// Writes as many whole records as the buffer holds.
fn export_fill(
    slot: usize,
    ex: &mut Export,
    buffer: PageRange,
    scratch: &mut Scratch,
) -> Result<u64, Error> {
    let capacity = buffer.pages() * PAGE;
    let (_, vm_guard) = vm::lock(ex.handle)?;
    let vm = vm_guard.as_ref().ok_or(Error::InvalidParameter)?;
    let id = VmId(vm.vmid);
    crate::memory::with(|mem| {
        // The whole buffer first: a bad one changes nothing.
        mem.check_host_exclusive(buffer.start(), capacity)?;
        let mut written = 0u64;
        loop {
            // The next record's size, moving past the end of the pages.
            let size = match ex.stage {
                Stage::Preamble => PREAMBLE_LEN as u64,
                Stage::Header => record_len(stream::HEADER_LEN),
                Stage::Pages(from) => match vm::next_page(vm, from) {
                    Some(_) => record_len(stream::MAX_PAYLOAD),
                    None => {
                        ex.stage = Stage::Vcpus(0);
                        continue;
                    }
                },
                Stage::Vcpus(i) if i >= ex.header.vcpus => {
                    ex.stage = Stage::End;
                    continue;
                }
                Stage::Vcpus(_) => record_len(stream::VCPU_LEN),
                Stage::End => record_len(stream::END_LEN),
                Stage::Done => break,
            };
            if written + size > capacity {
                break;
            }
            let produced = (|| -> Result<(usize, Stage), Error> {
                let out = &mut scratch.record;
                Ok(match ex.stage {
                    Stage::Preamble => {
                        out[..PREAMBLE_LEN].copy_from_slice(&ex.preamble.encode());
                        (PREAMBLE_LEN, Stage::Header)
                    }
                    Stage::Header => (
                        ex.sealer.header(&ex.header, out).map_err(stream_error)?,
                        Stage::Pages(0),
                    ),
                    Stage::Pages(from) => {
                        let (ipa, pa) = vm::next_page(vm, from).ok_or(Error::InvalidParameter)?;
                        if mem.table.page_state(PhysAddr(pa)).ok()
                            != Some(PageState::GuestOwned(id))
                        {
                            return Err(Error::Denied);
                        }
                        let range =
                            MemRange::from_base_size(pa, PAGE).ok_or(Error::InvalidParameter)?;
                        let page = &mut scratch.page;
                        mem.with_pages(range, &mut |_, bytes| {
                            // What DRAM holds: the guest may run with its MMU off.
                            if let Some(window) =
                                MemRange::from_base_size(bytes.as_ptr() as u64, PAGE)
                            {
                                crate::arch::cache::before_reading(window);
                            }
                            page.copy_from_slice(bytes);
                        })?;
                        (
                            ex.sealer.page(ipa, page, out).map_err(stream_error)?,
                            Stage::Pages(ipa + PAGE),
                        )
                    }
                    Stage::Vcpus(i) => {
                        let record = save_vcpu(slot, i)?;
                        (
                            ex.sealer.vcpu(&record, out).map_err(stream_error)?,
                            Stage::Vcpus(i + 1),
                        )
                    }
                    Stage::End => (ex.sealer.end(out).map_err(stream_error)?, Stage::Done),
                    Stage::Done => (0, Stage::Done),
                })
            })();
            let (n, next) = match produced {
                Ok(record) => record,
                // Nothing was sealed (a vCPU's lock busy for a moment):
                // what this call wrote stands; the host calls again.
                Err(_) if written > 0 => break,
                Err(e) => return Err(e),
            };
            // Checked above, under this lock: cannot fail.
            mem.copy_host(buffer.start() + written, None, Some(&scratch.record[..n]))?;
            written += n as u64;
            ex.stage = next;
        }
        Ok(written)
    })
}

/// vCPU `index`'s lock in VM slot `slot` (export's and import's vCPU
/// records): `BUSY` if another CPU holds it, `INVALID_PARAMETER` for an
/// index beyond the VM's.
fn lock_vcpu(
    slot: usize,
    index: usize,
) -> Result<spin::mutex::SpinMutexGuard<'static, Option<crate::vcpu::Vcpu>>, Error> {
    VCPU_SLOTS
        .get(slot)
        .and_then(|vcpus| vcpus.get(index))
        .ok_or(Error::InvalidParameter)?
        .try_lock()
        .ok_or(Error::Busy)
}

/// vCPU `index`'s record (zero but its index if it was never created).
fn save_vcpu(slot: usize, index: u32) -> Result<VcpuRecord, Error> {
    let i = index as usize;
    let mut record = VcpuRecord::zeroed(index);
    if !VCPU_EXISTS
        .get(slot)
        .and_then(|s| s.get(i))
        .is_some_and(|e| e.load(Ordering::Acquire))
    {
        return Ok(record);
    }
    let mut guard = lock_vcpu(slot, i)?;
    let v = guard.as_mut().ok_or(Error::InvalidParameter)?;
    let (state, flags, queued) = v.migration_view();
    record.flags = flag::EXISTS
        | if flags.ran { flag::RAN } else { 0 }
        | if flags.halted { flag::HALTED } else { 0 }
        | if flags.vserror { flag::VSERROR } else { 0 };
    record.power = u32::from(VCPU_POWER[slot][i].load(Ordering::Acquire));
    record.boot = [
        VCPU_BOOT[slot][i].0.load(Ordering::Acquire),
        VCPU_BOOT[slot][i].1.load(Ordering::Acquire),
    ];
    for (word, pending) in record.pending.iter_mut().zip(&VCPU_PENDING[slot][i]) {
        *word = pending.load(Ordering::Acquire);
    }
    for &intid in queued {
        if let Some(word) = record.pending.get_mut((intid / 64) as usize) {
            *word |= 1 << (intid % 64);
        }
    }
    state_to_record(state, &mut record);
    record.counter = crate::arch::cache::counter();
    Ok(record)
}

fn el1_words(s: &mut VcpuState) -> [&mut u64; EL1_WORDS] {
    let e = &mut s.el1;
    [
        &mut e.sctlr,
        &mut e.ttbr0,
        &mut e.ttbr1,
        &mut e.tcr,
        &mut e.mair,
        &mut e.amair,
        &mut e.vbar,
        &mut e.contextidr,
        &mut e.tpidr_el1,
        &mut e.tpidr_el0,
        &mut e.tpidrro_el0,
        &mut e.sp_el0,
        &mut e.sp_el1,
        &mut e.elr_el1,
        &mut e.spsr_el1,
        &mut e.esr_el1,
        &mut e.far_el1,
        &mut e.afsr0,
        &mut e.afsr1,
        &mut e.par,
        &mut e.cpacr,
        &mut e.csselr,
        &mut e.cntkctl,
        &mut e.mdscr,
        &mut e.cntv_ctl,
        &mut e.cntv_cval,
    ]
}

fn pauth_words(s: &mut VcpuState) -> [&mut u64; 10] {
    let p = &mut s.pauth;
    [
        &mut p.apia_lo,
        &mut p.apia_hi,
        &mut p.apib_lo,
        &mut p.apib_hi,
        &mut p.apda_lo,
        &mut p.apda_hi,
        &mut p.apdb_lo,
        &mut p.apdb_hi,
        &mut p.apga_lo,
        &mut p.apga_hi,
    ]
}

fn state_to_record(s: &mut VcpuState, r: &mut VcpuRecord) {
    r.regs = s.regs;
    r.pc = s.pc;
    r.pstate = s.pstate;
    for (out, word) in r.el1.iter_mut().zip(el1_words(s)) {
        *out = *word;
    }
    for (pair, v) in r.fp.chunks_exact_mut(2).zip(&s.fp.v) {
        pair[0] = *v as u64;
        pair[1] = (*v >> 64) as u64;
    }
    r.fp_status = [s.fp.fpsr, s.fp.fpcr];
    for (out, word) in r.pauth.iter_mut().zip(pauth_words(s)) {
        *out = *word;
    }
    r.vgic = [
        s.vgic.vmcr,
        s.vgic.ap1r0,
        s.vgic.lr[0],
        s.vgic.lr[1],
        s.vgic.lr[2],
        s.vgic.lr[3],
    ];
}

/// PSTATE.M values a guest may be in: EL0t, EL1t, EL1h (AArch64).
fn guest_pstate(pstate: u64) -> bool {
    matches!(pstate & 0x1f, 0b00000 | 0b00100 | 0b00101)
}

/// ICH_LR<n>_EL2.HW: a list register linked to a physical interrupt.
const LR_HW: u64 = 1 << 61;

/// Checks what an authentic record may still not ask for (defence in
/// depth: the source is a Rampart hypervisor, but a guest's state must
/// never reach EL2 or a physical interrupt).
fn check_record(r: &VcpuRecord) -> Result<(), Error> {
    let lrs_virtual = r.vgic[2..].iter().all(|lr| lr & LR_HW == 0);
    if (r.flags & flag::EXISTS != 0 && !guest_pstate(r.pstate)) || !lrs_virtual {
        return Err(Error::StreamOrder);
    }
    Ok(())
}

fn record_to_state(r: &VcpuRecord, s: &mut VcpuState) {
    s.regs = r.regs;
    s.pc = r.pc;
    s.pstate = r.pstate;
    for (word, value) in el1_words(s).into_iter().zip(&r.el1) {
        *word = *value;
    }
    for (v, pair) in s.fp.v.iter_mut().zip(r.fp.chunks_exact(2)) {
        *v = u128::from(pair[0]) | (u128::from(pair[1]) << 64);
    }
    s.fp.fpsr = r.fp_status[0];
    s.fp.fpcr = r.fp_status[1];
    for (word, value) in pauth_words(s).into_iter().zip(&r.pauth) {
        *word = *value;
    }
    s.vgic.vmcr = r.vgic[0];
    s.vgic.ap1r0 = r.vgic[1];
    s.vgic.lr.copy_from_slice(&r.vgic[2..6]);
}

/// `VM_IMPORT`: returns (the new VM's handle, bytes consumed).
pub fn import(metadata: PageRange, address: u64, bytes: u64) -> Result<(VmHandle, u64), Error> {
    let secret = secret()?;
    let me = crate::security::attestation_public_key()?;
    let need = PREAMBLE_LEN + RECORD_HEADER_LEN + stream::HEADER_LEN + TAG_LEN;
    if bytes < need as u64 {
        return Err(Error::InvalidParameter);
    }
    let mut scratch = SCRATCH.try_lock().ok_or(Error::Busy)?;
    let result = import_header(&secret, &me, metadata, address, &mut scratch.record[..need]);
    scratch.wipe();
    result.map(|handle| (handle, need as u64))
}

fn import_header(
    secret: &MigrationSecret,
    me: &[u8; 32],
    metadata: PageRange,
    address: u64,
    copy: &mut [u8],
) -> Result<VmHandle, Error> {
    crate::memory::with(|mem| mem.copy_host(address, Some(&mut *copy), None))?;
    let preamble = Preamble::decode(copy).map_err(stream_error)?;
    if preamble.destination != *me {
        return Err(Error::StaleStream);
    }
    let claimed = claim(&preamble.challenge)?;
    let result = create_imported(
        secret,
        &preamble,
        metadata,
        copy.get_mut(PREAMBLE_LEN..).unwrap_or_default(),
    );
    settle(
        claimed,
        match &result {
            Ok((handle, _)) => Some(Some(*handle)),
            Err(_) => None,
        },
    );
    let (handle, opener) = result?;
    let slot = vm::slot_of(handle)?;
    *IMPORTS[slot].lock() = Some(Import { handle, opener });
    Ok(handle)
}

fn create_imported(
    secret: &MigrationSecret,
    preamble: &Preamble,
    metadata: PageRange,
    record: &mut [u8],
) -> Result<(VmHandle, Opener), Error> {
    let mut opener = Opener::new(secret, preamble);
    let header = match opener.open(record).map_err(stream_error)? {
        (Record::Header(h), _) => h,
        _ => return Err(Error::StreamOrder),
    };
    let measurement = Measurement(header.measurement);
    if header.protected {
        // Only a VM this machine would have started itself.
        crate::security::check_signature(&measurement, header.signature.as_ref())?;
    }
    let config = VmConfig {
        protected: header.protected,
        debug: header.debug,
        max_vcpus: u64::from(header.vcpus),
    };
    let handle = vm::create_as(metadata, config, false)?;
    let slot = vm::slot_of(handle)?;
    // Not runnable until the end record: set before the host learns the
    // handle.
    MIGRATING[slot].store(handle.0, Ordering::Release);
    let guarded = {
        let (_, mut guard) = vm::lock(handle)?;
        let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
        vm::set_imported(vm, measurement, header.signature);
        let mut ok = true;
        if let Some(g) = vm.mmio_guard.as_mut() {
            for &page in &header.mmio[..header.mmio_count.min(stream::MAX_MMIO)] {
                ok &= g.insert(page).is_ok();
            }
        }
        ok
    };
    if !guarded {
        let _ = vm::destroy(handle);
        return Err(Error::StreamOrder);
    }
    Ok((handle, opener))
}

/// `VM_IMPORT_DATA`: returns (bytes consumed, complete).
pub fn import_data(handle: VmHandle, address: u64, bytes: u64) -> Result<(u64, bool), Error> {
    let slot = vm::slot_of(handle)?;
    let mut guard = IMPORTS[slot].try_lock().ok_or(Error::Busy)?;
    match guard.as_ref() {
        Some(import) if import.handle == handle => {}
        // A live VM that is not being imported.
        _ => {
            return Err(if vm::lock(handle).is_ok() {
                Error::Denied
            } else {
                Error::InvalidParameter
            });
        }
    }
    crate::memory::with(|mem| mem.check_host_exclusive(address, bytes).map(drop))?;
    let mut scratch = SCRATCH.try_lock().ok_or(Error::Busy)?;
    let result = import_records(slot, handle, &mut guard, address, bytes, &mut scratch);
    scratch.wipe();
    match result {
        Ok(done) => Ok(done),
        Err(e) => {
            // Refused: nothing of the VM stays.
            *guard = None;
            abort(slot, handle);
            Err(e)
        }
    }
}

/// A refused import: the VM is destroyed (pages zeroed and returned),
/// its challenge usable again.
fn abort(slot: usize, handle: VmHandle) {
    // Its vCPUs cannot run (MIGRATING), so nothing holds their locks but
    // a concurrent call that fails at once; try a few times.
    for _ in 0..64 {
        // Planted bug (test only, `crate::mutant`): the refused import's
        // VM stays.
        if crate::mutant::active(crate::mutant::Mutant::ImportKeepsVm) {
            break;
        }
        if vm::destroy(handle) != Err(Error::Busy) {
            break;
        }
        core::hint::spin_loop();
    }
    let _ = MIGRATING[slot].compare_exchange(handle.0, 0, Ordering::AcqRel, Ordering::Acquire);
    settle_by_handle(handle, false);
}

fn import_records(
    slot: usize,
    handle: VmHandle,
    guard: &mut Option<Import>,
    start: u64,
    bytes: u64,
    scratch: &mut Scratch,
) -> Result<(u64, bool), Error> {
    let Some(import) = guard.as_mut() else {
        return Err(Error::InvalidParameter);
    };
    let mut consumed = 0u64;
    while consumed + RECORD_HEADER_LEN as u64 <= bytes {
        let at = start + consumed;
        // A host buffer that changed hands since the check: stop here;
        // what was consumed stays consumed.
        let mut head = [0u8; RECORD_HEADER_LEN];
        if crate::memory::with(|mem| mem.copy_host(at, Some(&mut head), None)).is_err() {
            break;
        }
        let total = Opener::record_len(&head).map_err(stream_error)?;
        if consumed + total as u64 > bytes {
            break;
        }
        let record = scratch.record.get_mut(..total).ok_or(Error::StreamOrder)?;
        if crate::memory::with(|mem| mem.copy_host(at, Some(&mut *record), None)).is_err() {
            break;
        }
        let (opened, _) = import.opener.open(record).map_err(stream_error)?;
        match opened {
            Record::Page { ipa, data } => write_page(handle, ipa, data)?,
            Record::Vcpu(r) => load_vcpu(slot, handle, &r)?,
            Record::End => {
                finish(
                    slot,
                    handle,
                    import.opener.header().map_or(0, Header::pages),
                )?;
                *guard = None;
                return Ok((consumed + total as u64, true));
            }
            Record::Header(_) => return Err(Error::StreamOrder),
        }
        consumed += total as u64;
    }
    Ok((consumed, false))
}

/// Decrypted page → the page the VM owns at `ipa` (donated by the host
/// after `VM_IMPORT`, so zeroed, and the VM's alone).
fn write_page(handle: VmHandle, ipa: u64, data: &[u8; PAGE_SIZE]) -> Result<(), Error> {
    let (_, guard) = vm::lock(handle)?;
    let vm = guard.as_ref().ok_or(Error::InvalidParameter)?;
    // The host did not donate the page the stream needs.
    let pa = vm::translate(vm, ipa).ok_or(Error::Range)?;
    let id = VmId(vm.vmid);
    crate::memory::with(|mem| {
        if mem.table.page_state(PhysAddr(pa)).ok() != Some(PageState::GuestOwned(id)) {
            // Lent by the host (VM_SHARE): the guest's data would be the host's.
            return Err(Error::Denied);
        }
        let range = MemRange::from_base_size(pa, PAGE).ok_or(Error::InvalidParameter)?;
        mem.with_pages(range, &mut |_, bytes| {
            bytes.copy_from_slice(data);
            // To DRAM: the guest may start with its MMU off.
            if let Some(window) = MemRange::from_base_size(bytes.as_ptr() as u64, PAGE) {
                crate::arch::cache::before_reading(window);
            }
        })
    })
}

fn load_vcpu(slot: usize, handle: VmHandle, r: &VcpuRecord) -> Result<(), Error> {
    check_record(r)?;
    if r.flags & flag::EXISTS == 0 {
        return Ok(());
    }
    let i = r.index as usize;
    // Fails if the host created this vCPU itself meanwhile (DENIED).
    vm::create_vcpu(VcpuRef::new(handle, u64::from(r.index))?)?;
    let mut guard = lock_vcpu(slot, i)?;
    let v = guard.as_mut().ok_or(Error::InvalidParameter)?;
    let (state, _, _) = v.migration_view();
    record_to_state(r, state);
    v.set_migration_flags(&MigrationFlags {
        ran: r.flags & flag::RAN != 0,
        halted: r.flags & flag::HALTED != 0,
        vserror: r.flags & flag::VSERROR != 0,
    });
    VCPU_POWER[slot][i].store(
        u8::try_from(r.power).map_err(|_| Error::StreamOrder)?,
        Ordering::Release,
    );
    VCPU_BOOT[slot][i].0.store(r.boot[0], Ordering::Release);
    VCPU_BOOT[slot][i].1.store(r.boot[1], Ordering::Release);
    for (word, bits) in VCPU_PENDING[slot][i].iter().zip(&r.pending) {
        word.store(*bits, Ordering::Release);
    }
    // After the words: its first entry looks at them (`vcpu::run`).
    crate::vcpu::mark_pending(slot, i);
    Ok(())
}

/// The end record: the VM holds exactly the stream's pages; then it may
/// run, and the challenge is spent.
fn finish(slot: usize, handle: VmHandle, pages: u64) -> Result<(), Error> {
    {
        let (_, guard) = vm::lock(handle)?;
        let vm = guard.as_ref().ok_or(Error::InvalidParameter)?;
        let mut mapped = 0u64;
        let mut from = 0;
        while let Some((ipa, _)) = vm::next_page(vm, from) {
            mapped += 1;
            from = ipa + PAGE;
        }
        // Pages the host donated beyond the stream's layout.
        if mapped != pages {
            return Err(Error::Denied);
        }
    }
    // No CPU keeps stale instructions for the pages just written.
    crate::arch::cache::before_first_run();
    settle_by_handle(handle, true);
    MIGRATING[slot].store(0, Ordering::Release);
    Ok(())
}

/// What an imported VM holds after a migration call, for the oracle (test
/// builds, feature `oracle`): the specification cannot open the stream
/// its configuration and vCPUs come from.
#[cfg(feature = "oracle")]
pub fn oracle_imported(handle: u64) -> Option<rampart_spec::Imported> {
    let (slot, guard) = vm::lock(VmHandle(handle)).ok()?;
    let vm = guard.as_ref()?;
    let config = VmConfig {
        protected: vm.protected,
        debug: vm.debug,
        max_vcpus: vm.max_vcpus as u64,
    };
    let mut vcpus = 0u8;
    let mut power = [rampart_spec::Power::Off; 8];
    for (i, p) in power.iter_mut().enumerate().take(VCPU_EXISTS[slot].len().min(8)) {
        if VCPU_EXISTS[slot][i].load(Ordering::Acquire) {
            vcpus |= 1 << i;
        }
        *p = match VCPU_POWER[slot][i].load(Ordering::Acquire) {
            vm::power::ON => rampart_spec::Power::On,
            vm::power::PENDING => rampart_spec::Power::Pending,
            _ => rampart_spec::Power::Off,
        };
    }
    Some(rampart_spec::Imported { config, vcpus, power })
}
