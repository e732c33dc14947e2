//! The SMMUv3 driver: Rampart owns the SMMU, and every host stream
//! translates through a stage-1 **mirror** of the host's stage 2 (see
//! docs/design.md, "The SMMU's stage").
//!
//! - Boot ([`init`], boot CPU, MMU off, before the host runs): check the
//!   SMMU is usable, put it in global abort and disable it, build the
//!   stream table (every stream no host device uses aborts), the context
//!   descriptor, the command and event queues and the mirror in the
//!   carve-out's pool, then enable the queues and translation.
//! - Every change of the host stage 2 ([`mirror_rewrite`],
//!   [`mirror_coalesce`], called by `memory.rs` under the host memory lock)
//!   changes the mirror the same way, break-before-make, and invalidates
//!   the SMMU's TLBs through the command queue (`CMD_SYNC` polled with a
//!   time limit) before the caller hands the pages to anyone else.
//! - [`poll_events`] drains the event queue and `GERROR`, logging each
//!   fault rate-limited; never fatal.
//!
//! A driver: the MMIO accesses here are raw volatile reads and writes of
//! the SMMU's register frame, which only this module touches.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::El23Attributes;
use aarch64_paging::paging::{El2, MemoryRegion};
use alloc::format;
use alloc::string::String;
use rampart_ownership::{self as own, Component, PhysAddr, State};
use rampart_platform::dt::SmmuV3;
use rampart_platform::smmu::{
    self as hw, CMD_BYTES, EVENT_BYTES, Event, Features, QueueIndex, STE_BYTES, cmd, cr0, gbpa, gerror, reg,
};
use rampart_platform::{BLOCK_1G, MemRange, PAGE_SIZE};
use spin::mutex::SpinMutex;

use crate::arch;
use crate::mm::{self, PoolTranslation};

/// The ASID of the mirror's context descriptor.
const MIRROR_ASID: u16 = 1;
/// The most stream table entries Rampart allocates: 256 (PCI bus 0). A
/// stream ID above the table is refused by the SMMU (`C_BAD_STREAMID`).
const MAX_TABLE_BITS: u32 = 8;
/// Command queue: 256 entries (one page).
const CMDQ_LOG2: u32 = 8;
/// Event queue: 128 entries (one page).
const EVENTQ_LOG2: u32 = 7;
/// How long a `CMD_SYNC` or a `CR0`/`GBPA` update may take, in
/// milliseconds, before the SMMU counts as stuck.
const TIMEOUT_MS: u64 = 100;
/// Leaves invalidated one by one; more, or a freed table, invalidate all.
const MAX_TARGETED: usize = 16;
/// Fault lines per second on the console; the rest are counted.
const EVENTS_PER_SECOND: u32 = 10;

/// The mirror's entries: Normal write-back RAM (MAIR index 1),
/// inner-shareable, accessed, readable and writable by privileged and
/// unprivileged streams (AP[1] = 1, AP[2] = 0), never executable, tagged
/// with the CD's ASID (nG).
const MIRROR_RAM: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ACCESSED)
    .union(El23Attributes::USER_RES1)
    .union(El23Attributes::ATTRIBUTE_INDEX_1)
    .union(El23Attributes::INNER_SHAREABLE)
    .union(El23Attributes::NON_GLOBAL)
    .union(El23Attributes::XN);

// The bits the SMMU's walker reads, as `rampart_platform::smmu` documents
// and tests them (plus VALID, which the table code writes).
const _: () = assert!(MIRROR_RAM.bits() as u64 == hw::MIRROR_ENTRY_BITS | 1);

/// Whether an SMMU is owned and translating (set once at boot).
static ACTIVE: AtomicBool = AtomicBool::new(false);

static SMMU: SpinMutex<Option<Smmu>> = SpinMutex::new(None);

struct Smmu {
    base: u64,
    cmdq: u64,
    cmdq_prod: QueueIndex,
    eventq: u64,
    /// The stage-1 mirror of the host stage 2 (RAM only).
    mirror: mm::Table<El2>,
    /// A `CMD_SYNC` timed out and the SMMU was switched to abort all.
    broken: bool,
    /// Rate limit: start (counter ticks) of the current one-second window,
    /// lines printed in it, lines suppressed.
    window_start: u64,
    printed: u32,
    suppressed: u64,
    /// Host stage-2 changes the mirror followed (for the mirror check).
    changes: u64,
}

/// Whether Rampart owns an SMMU: then every host stage-2 change needs the
/// mirror's share of table pages too.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// What boot reports.
pub struct Owned {
    pub regs: MemRange,
    pub streams: alloc::vec::Vec<(u64, u64)>,
    pub table_entries: u64,
    pub features: Features,
    pub mirror_pages: u64,
}

/// Takes the SMMU described by `dt`: its frame must already be mapped at
/// EL2 as device memory (or the MMU be off), and `host_ram` is the RAM the
/// host stage 2 maps. Runs once, on the boot CPU, before the host runs.
///
/// # Errors
///
/// A one-line reason the SMMU cannot be owned; boot must then stop (an
/// SMMU left in bypass would let the host's devices reach all of RAM).
pub fn init(dt: &SmmuV3, host_ram: &[MemRange], pa_bits: u32) -> Result<Owned, String> {
    let base = dt.regs.start();
    let mmio = Mmio(base);
    let features = Features::decode(mmio.read32(reg::IDR0), mmio.read32(reg::IDR1), mmio.read32(reg::IDR5));
    let table_bits = hw::linear_table_bits(dt.stream_end(), MAX_TABLE_BITS.min(features.sid_bits));
    features.check(table_bits, pa_bits).map_err(|why| format!("SMMUv3 at {:#x} cannot be owned: {why}", base))?;
    if features.cmdq_log2 < CMDQ_LOG2 || features.eventq_log2 < EVENTQ_LOG2 {
        return Err(format!("SMMUv3 at {base:#x} cannot be owned: its queues are smaller than Rampart's"));
    }

    // Abort everything while it is off, then turn it off.
    mmio.update_gbpa(gbpa::ABORT).map_err(|()| format!("SMMUv3 at {base:#x}: GBPA update never completed"))?;
    mmio.write_cr0(0).map_err(|()| format!("SMMUv3 at {base:#x}: CR0 never acknowledged disabling"))?;
    mmio.write32(reg::IRQ_CTRL, 0);
    let _ = mmio.wait(|m| m.read32(reg::IRQ_CTRLACK) == 0);
    // Acknowledge any global error left from before.
    mmio.write32(reg::GERRORN, mmio.read32(reg::GERROR));

    // The stream table must be aligned to its size: over-allocate and align.
    let entries = 1u64 << table_bits;
    let table_bytes = (entries * STE_BYTES).max(PAGE_SIZE);
    let table_pages = table_bytes / PAGE_SIZE;
    let raw =
        mm::allocate_contiguous(2 * table_pages - 1).ok_or("the carve-out is too small for the SMMU's stream table")?;
    let strtab = raw.start().next_multiple_of(table_bytes);
    let cd = mm::allocate_contiguous(1).ok_or("the carve-out is too small for the SMMU's context descriptor")?.start();
    let cmdq = mm::allocate_contiguous(1).ok_or("the carve-out is too small for the SMMU's command queue")?.start();
    let eventq = mm::allocate_contiguous(1).ok_or("the carve-out is too small for the SMMU's event queue")?.start();

    // The mirror: identity, RAM only, largest blocks (like the host stage 2).
    let used_before = mm::pool_usage().0;
    let mut mirror = Mapping::new(PoolTranslation, hw::MIRROR_ROOT_LEVEL, El2);
    // In pieces that never hold a whole aligned GiB: no 1 GiB blocks, so
    // the first change inside a GiB breaks one 2 MiB block of host DMA for
    // its moment, not the whole GiB (one level-2 table per GiB of RAM).
    for range in host_ram {
        let mut start = range.start();
        while start < range.end() {
            let end = (start + 1).next_multiple_of(BLOCK_1G / 2).min(range.end());
            let Some(piece) = MemRange::new(start, end) else { break };
            mm::identity_map(&mut mirror, piece, MIRROR_RAM)
                .map_err(|e| format!("cannot build the SMMU's mirror of host RAM {piece}: {e}"))?;
            start = end;
        }
    }
    let mirror_pages = mm::pool_usage().0 - used_before;

    write_words(cd, &hw::cd_mirror(mirror.root_address().0 as u64, MIRROR_ASID, features.oas_field));
    for sid in 0..entries {
        let used = dt.streams.iter().any(|&(start, end)| (start..end).contains(&sid));
        let ste = if used { hw::ste_stage1(cd) } else { hw::ste_abort() };
        write_words(strtab + sid * STE_BYTES, &ste);
    }
    dsb_st();

    mmio.write32(reg::CR1, hw::CR1_WB_ISH);
    mmio.write32(reg::CR2, hw::CR2_RECINVSID_PTM);
    const ALLOCATE: u64 = 1 << 62; // RA (stream table, command queue), WA (event queue)
    mmio.write64(reg::STRTAB_BASE, ALLOCATE | (strtab & 0x000f_ffff_ffff_ffc0));
    mmio.write32(reg::STRTAB_BASE_CFG, table_bits); // FMT 0: linear
    mmio.write64(reg::CMDQ_BASE, ALLOCATE | (cmdq & 0x000f_ffff_ffff_ffe0) | u64::from(CMDQ_LOG2));
    mmio.write32(reg::CMDQ_PROD, 0);
    mmio.write32(reg::CMDQ_CONS, 0);
    mmio.write64(reg::EVENTQ_BASE, ALLOCATE | (eventq & 0x000f_ffff_ffff_ffe0) | u64::from(EVENTQ_LOG2));
    mmio.write32(reg::EVENTQ_PROD, 0);
    mmio.write32(reg::EVENTQ_CONS, 0);

    let mut smmu = Smmu {
        base,
        cmdq,
        cmdq_prod: QueueIndex::new(CMDQ_LOG2),
        eventq,
        mirror,
        broken: false,
        window_start: arch::cache::counter(),
        printed: 0,
        suppressed: 0,
        changes: 0,
    };
    mmio.write_cr0(cr0::CMDQEN).map_err(|()| format!("SMMUv3 at {base:#x}: the command queue never came on"))?;
    // Forget anything cached from before Rampart.
    let mut commands = alloc::vec![cmd::cfgi_all(), cmd::tlbi_nsnh_all()];
    if features.hyp {
        commands.push(cmd::tlbi_el2_all());
    }
    smmu.issue(&commands).map_err(|why| format!("SMMUv3 at {base:#x}: {why}"))?;
    mmio.write_cr0(cr0::CMDQEN | cr0::EVENTQEN)
        .map_err(|()| format!("SMMUv3 at {base:#x}: the event queue never came on"))?;
    mmio.write_cr0(cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN)
        .map_err(|()| format!("SMMUv3 at {base:#x}: translation never came on"))?;
    *SMMU.lock() = Some(smmu);
    ACTIVE.store(true, Ordering::Release);
    Ok(Owned { regs: dt.regs, streams: dt.streams.clone(), table_entries: entries, features, mirror_pages })
}

/// After the host's state changed over `range` (host memory lock held),
/// makes the mirror map exactly what `table` says the host may reach
/// there: break every mirror entry that overlaps `range` (whole entries:
/// a block is invalidated, never split while live), invalidate the SMMU's
/// TLBs and wait for it, then map back the host's pages over the broken
/// span with the largest blocks. When this returns, no
/// device can reach a page the host no longer may. Allocates at most
/// `tables::tables_to_remap(range, MIRROR_ROOT_LEVEL)` pages (the caller
/// reserved them).
pub fn mirror_rewrite(range: MemRange, table: &own::Table<'_>) {
    let mut guard = SMMU.lock();
    let Some(smmu) = guard.as_mut() else { return };
    let mut envelope = range;
    let mut leaves = [0u64; MAX_TARGETED];
    let mut leaf_count = 0usize;
    let region = MemoryRegion::new(range.start() as usize, range.end() as usize);
    let _ = smmu.mirror.walk_range(&region, &mut |mr, desc, level| {
        let is_table = level < 3 && desc.is_table_or_page();
        if desc.is_valid() && !is_table {
            // The walk clips each leaf to the range: widen it to the whole
            // entry, so the break below invalidates whole entries and never
            // turns a live block into a table (which would need
            // break-before-make itself).
            let span = leaf_span(level);
            let start = (mr.start().0 as u64) & !(span - 1);
            let end = (mr.end().0 as u64).next_multiple_of(span);
            envelope = MemRange::new(envelope.start().min(start), envelope.end().max(end)).unwrap_or(envelope);
            if let Some(slot) = leaves.get_mut(leaf_count) {
                *slot = start;
            }
            leaf_count += 1;
        }
        Ok(())
    });
    smmu.changes += 1;
    // Break: unmapping may free tables (a whole span unmapped); then any
    // walk cache entry in the span may point at them, so invalidate all.
    let frees_before = mm::pool_frees();
    if leaf_count > 0 {
        if let Err(e) = mm::identity_map(&mut smmu.mirror, envelope, El23Attributes::empty()) {
            fail_closed("SMMU mirror break", envelope, e);
        }
        let freed = mm::pool_frees() != frees_before;
        let mut commands = heapless_commands();
        if leaf_count <= MAX_TARGETED && !freed {
            for &va in leaves.get(..leaf_count).unwrap_or(&[]) {
                commands.push(cmd::tlbi_nh_vaa(va));
            }
        } else {
            commands.push(cmd::tlbi_nh_all());
        }
        smmu.invalidate(&commands);
    }
    // Make.
    let pages = envelope.size() / PAGE_SIZE;
    let Ok(runs) = table.runs(PhysAddr(envelope.start()), pages, Component::Host) else {
        crate::println!("smmu: mirror {envelope} is outside the ownership table; left unmapped");
        return;
    };
    for run in runs {
        if run.state == State::Absent {
            continue;
        }
        let Some(run_range) = MemRange::from_base_size(run.start.0, run.pages * PAGE_SIZE) else { continue };
        if let Err(e) = mm::identity_map(&mut smmu.mirror, run_range, MIRROR_RAM) {
            fail_closed("SMMU mirror make", run_range, e);
        }
    }
    // The new entries are in memory before any device is told to use them
    // (the host's next MMIO write comes after this EL2 exit).
    dsb_st();
}

/// The host stage 2 mapped the 2 MiB `block` as one block again (the pool
/// runs low): if the mirror translates it through a level-3 table, do the
/// same, which frees the table. `host_may_reach` says whether the block is
/// the host's. Allocates nothing.
pub fn mirror_coalesce(block: MemRange, host_may_reach: bool) {
    let mut guard = SMMU.lock();
    let Some(smmu) = guard.as_mut() else { return };
    let mut has_table = false;
    let region = MemoryRegion::new(block.start() as usize, block.end() as usize);
    let _ = smmu.mirror.walk_range(&region, &mut |_, _, level| {
        has_table = level == 3;
        Err(())
    });
    if !has_table {
        return;
    }
    if let Err(e) = mm::identity_map(&mut smmu.mirror, block, El23Attributes::empty()) {
        fail_closed("SMMU mirror coalesce", block, e);
    }
    let mut commands = heapless_commands();
    commands.push(cmd::tlbi_nh_all());
    smmu.invalidate(&commands);
    if host_may_reach && let Err(e) = mm::identity_map(&mut smmu.mirror, block, MIRROR_RAM) {
        fail_closed("SMMU mirror coalesce", block, e);
    }
    dsb_st();
}

/// Bytes one entry at `level` maps (4 KiB granule).
const fn leaf_span(level: usize) -> u64 {
    PAGE_SIZE << (9 * (3 - if level > 3 { 3 } else { level }))
}

/// A small command list on the stack.
fn heapless_commands() -> Commands {
    Commands { words: [[0; 2]; MAX_TARGETED + 1], len: 0 }
}

struct Commands {
    words: [[u64; 2]; MAX_TARGETED + 1],
    len: usize,
}

impl Commands {
    fn push(&mut self, command: [u64; 2]) {
        if let Some(slot) = self.words.get_mut(self.len) {
            *slot = command;
            self.len += 1;
        }
    }
    fn as_slice(&self) -> &[[u64; 2]] {
        self.words.get(..self.len).unwrap_or(&[])
    }
}

/// Compares the mirror with the host stage 2 over `ram`: the same RAM
/// pages must be reachable through both. Returns the first difference.
/// For the test build's check (feature `smmu-mirror-check`).
#[cfg(feature = "smmu-mirror-check")]
pub fn mirror_differs(stage2: &mm::Table<aarch64_paging::paging::Stage2>, ram: &[MemRange]) -> Option<String> {
    use alloc::vec::Vec;
    fn mapped<R: aarch64_paging::paging::TranslationRegime<Asid = (), VaRange = ()>>(
        table: &mm::Table<R>,
        bank: MemRange,
    ) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let region = MemoryRegion::new(bank.start() as usize, bank.end() as usize);
        let _ = table.walk_range(&region, &mut |mr, desc, level| {
            if desc.is_valid() && !(level < 3 && desc.is_table_or_page()) {
                let (start, end) = ((mr.start().0 as u64).max(bank.start()), (mr.end().0 as u64).min(bank.end()));
                match out.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => out.push((start, end)),
                }
            }
            Ok(())
        });
        out
    }
    let guard = SMMU.lock();
    let smmu = guard.as_ref()?;
    for bank in ram {
        let (host, mirror) = (mapped(stage2, *bank), mapped(&smmu.mirror, *bank));
        if host != mirror {
            return Some(format!("in {bank}: host stage 2 maps {host:x?}, the SMMU mirror {mirror:x?}"));
        }
    }
    None
}

/// Host stage-2 changes the mirror has followed.
#[cfg(feature = "smmu-mirror-check")]
pub fn changes() -> u64 {
    SMMU.lock().as_ref().map_or(0, |s| s.changes)
}

/// Drains the event queue and `GERROR`: each fault is logged (at most
/// [`EVENTS_PER_SECOND`] lines a second; the rest are counted and the
/// count printed later). Never fatal. Called after every host memory
/// change and at every VM run exit.
pub fn poll_events() {
    if !active() {
        return;
    }
    // Another CPU draining is as good as this one doing it.
    let Some(mut guard) = SMMU.try_lock() else { return };
    let Some(smmu) = guard.as_mut() else { return };
    smmu.drain();
}

impl Smmu {
    fn mmio(&self) -> Mmio {
        Mmio(self.base)
    }

    /// Issues `commands` then a `CMD_SYNC` and waits for it. On a timeout
    /// the SMMU is switched to abort every transaction (see
    /// [`Smmu::fail_safe`]).
    fn invalidate(&mut self, commands: &Commands) {
        if self.broken {
            return;
        }
        if let Err(why) = self.issue(commands.as_slice()) {
            crate::println!("smmu: {why}");
            self.fail_safe();
        }
    }

    /// Writes `commands` and a `CMD_SYNC` to the command queue and polls
    /// `CMDQ_CONS` until the SMMU has consumed the sync, for at most
    /// [`TIMEOUT_MS`]. A command error (`GERROR.CMDQ_ERR`) is logged, the
    /// faulty command replaced with a `CMD_SYNC`, and the wait goes on.
    fn issue(&mut self, commands: &[[u64; 2]]) -> Result<(), &'static str> {
        let mmio = self.mmio();
        let size = 1u32 << CMDQ_LOG2;
        let needed = commands.len() as u32 + 1;
        // Room for every command and the sync (the queue is drained after
        // every sync, so this waits only if the SMMU is slow).
        mmio.wait(|m| {
            let cons = QueueIndex::from_register(m.read32(reg::CMDQ_CONS), CMDQ_LOG2);
            size - cons.used_until(self.cmdq_prod) >= needed
        })
        .map_err(|()| "the command queue stays full")?;
        for command in commands.iter().chain(core::iter::once(&cmd::sync())) {
            let slot = u64::from(self.cmdq_prod.slot());
            write_words(self.cmdq + slot * CMD_BYTES, command);
            self.cmdq_prod = self.cmdq_prod.next();
        }
        let sync_index = self.cmdq_prod.previous();
        // Table and queue writes reach memory before the SMMU sees PROD.
        dsb_st();
        mmio.write32(reg::CMDQ_PROD, self.cmdq_prod.register());
        let start = arch::cache::counter();
        let limit = arch::cache::counter_frequency().max(1000) / 1000 * TIMEOUT_MS;
        loop {
            let cons_register = mmio.read32(reg::CMDQ_CONS);
            let cons = QueueIndex::from_register(cons_register, CMDQ_LOG2);
            if cons.passed(sync_index) {
                return Ok(());
            }
            let errors = mmio.read32(reg::GERROR) ^ mmio.read32(reg::GERRORN);
            if errors & gerror::CMDQ_ERR != 0 {
                // CONS points at the faulty command; its reason is CONS.ERR.
                crate::println!(
                    "smmu: command {:#x} refused (CMDQ_CONS.ERR {:#x}); replaced with CMD_SYNC",
                    read_word(self.cmdq + u64::from(cons.slot()) * CMD_BYTES) & 0xff,
                    (cons_register >> 24) & 0x7f
                );
                write_words(self.cmdq + u64::from(cons.slot()) * CMD_BYTES, &cmd::sync());
                dsb_st();
                mmio.write32(reg::GERRORN, mmio.read32(reg::GERRORN) ^ gerror::CMDQ_ERR);
            }
            if arch::cache::counter().wrapping_sub(start) > limit {
                return Err("CMD_SYNC did not complete within 100 ms");
            }
            core::hint::spin_loop();
        }
    }

    /// The SMMU did not complete an invalidation: Rampart cannot know
    /// whether devices still reach pages the host gave up. Switch
    /// translation off with `GBPA.ABORT` set, so every host DMA aborts
    /// (fail closed; the host loses DMA, not the guests their memory),
    /// and stop issuing commands. If even that is not acknowledged, the
    /// SMMU is unresponsive and the log says isolation is not assured.
    fn fail_safe(&mut self) {
        self.broken = true;
        let mmio = self.mmio();
        let gbpa_done = mmio.update_gbpa(gbpa::ABORT).is_ok();
        let off = mmio.write_cr0(0).is_ok();
        if gbpa_done && off {
            crate::println!("smmu: switched off with every transaction aborted; host DMA no longer works");
        } else {
            crate::println!("smmu: unresponsive; DMA isolation from host devices is NOT assured any more");
        }
    }

    fn drain(&mut self) {
        let mmio = self.mmio();
        let errors = (mmio.read32(reg::GERROR) ^ mmio.read32(reg::GERRORN)) & gerror::ALL & !gerror::CMDQ_ERR;
        if errors != 0 {
            self.log(format_args!("smmu: global error GERROR {errors:#x}"));
            mmio.write32(reg::GERRORN, mmio.read32(reg::GERRORN) ^ errors);
        }
        let prod_register = mmio.read32(reg::EVENTQ_PROD);
        let mut cons_register = mmio.read32(reg::EVENTQ_CONS);
        let prod = QueueIndex::from_register(prod_register, EVENTQ_LOG2);
        let mut cons = QueueIndex::from_register(cons_register, EVENTQ_LOG2);
        if cons == prod && (prod_register ^ cons_register) >> 31 == 0 {
            return;
        }
        // The records are read after PROD was.
        dsb_ld();
        let mut budget = 1u32 << EVENTQ_LOG2;
        while cons != prod && budget > 0 {
            let at = self.eventq + u64::from(cons.slot()) * EVENT_BYTES;
            let record = [read_word(at), read_word(at + 8), read_word(at + 16), read_word(at + 24)];
            let event = Event::decode(record);
            self.log(format_args!("smmu: fault {event}"));
            cons = cons.next();
            budget -= 1;
        }
        if (prod_register ^ cons_register) >> 31 != 0 {
            self.log(format_args!("smmu: event queue overflowed: events were lost"));
            cons_register ^= 1 << 31;
        }
        // Every record is read before the SMMU may overwrite it.
        dsb_sy();
        mmio.write32(reg::EVENTQ_CONS, (cons_register & (1 << 31)) | cons.register());
    }

    /// Prints a line unless this second's budget is spent.
    fn log(&mut self, line: core::fmt::Arguments<'_>) {
        let now = arch::cache::counter();
        if now.wrapping_sub(self.window_start) > arch::cache::counter_frequency() {
            if self.suppressed > 0 {
                crate::println!("smmu: {} more event lines suppressed", self.suppressed);
            }
            self.window_start = now;
            self.printed = 0;
            self.suppressed = 0;
        }
        if self.printed < EVENTS_PER_SECOND {
            self.printed += 1;
            crate::println!("{line}");
        } else {
            self.suppressed += 1;
        }
    }
}

fn fail_closed(what: &str, range: MemRange, error: aarch64_paging::MapError) -> ! {
    crate::println!("{what} of {range} failed: {error}; stopping");
    crate::power_off()
}

/// Writes little-endian words to pool memory only this module uses (the
/// SMMU's tables and queues, identity-mapped at EL2).
fn write_words(address: u64, words: &[u64]) {
    for (i, word) in words.iter().enumerate() {
        // SAFETY: `address` is in a stream table, context descriptor or
        // command queue page this module took from the pool at boot; it is
        // identity-mapped at EL2 (or the MMU is off), 8-byte aligned, and
        // no Rust reference to it exists. Volatile: the SMMU reads it.
        unsafe { core::ptr::write_volatile((address + 8 * i as u64) as *mut u64, word.to_le()) };
    }
}

/// Reads a word of the event or command queue.
fn read_word(address: u64) -> u64 {
    // SAFETY: as `write_words`: a queue page of this module's,
    // identity-mapped and aligned; the SMMU writes it, hence volatile.
    u64::from_le(unsafe { core::ptr::read_volatile(address as *const u64) })
}

fn dsb_st() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb st", options(nostack, preserves_flags)) };
}

fn dsb_ld() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb ld", options(nostack, preserves_flags)) };
}

fn dsb_sy() {
    // SAFETY: a barrier has no effect on memory contents.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// The SMMU's register frame.
#[derive(Clone, Copy)]
struct Mmio(u64);

impl Mmio {
    fn read32(self, offset: u64) -> u32 {
        // SAFETY: `self.0` is the SMMUv3 frame from the device tree
        // (`reg::FRAME_SIZE` long, checked), identity-mapped at EL2 as
        // device memory (or the MMU is off), used by this module only and
        // mapped nowhere for the host; `offset` is a register in it.
        unsafe { core::ptr::read_volatile((self.0 + offset) as *const u32) }
    }
    fn write32(self, offset: u64, value: u32) {
        // SAFETY: as `read32`.
        unsafe { core::ptr::write_volatile((self.0 + offset) as *mut u32, value) };
    }
    fn write64(self, offset: u64, value: u64) {
        // SAFETY: as `read32`; the 64-bit registers are 8-byte aligned.
        unsafe { core::ptr::write_volatile((self.0 + offset) as *mut u64, value) };
    }

    /// Polls `done` for at most [`TIMEOUT_MS`].
    fn wait(self, mut done: impl FnMut(Mmio) -> bool) -> Result<(), ()> {
        let start = arch::cache::counter();
        let limit = arch::cache::counter_frequency().max(1000) / 1000 * TIMEOUT_MS;
        loop {
            if done(self) {
                return Ok(());
            }
            if arch::cache::counter().wrapping_sub(start) > limit {
                return Err(());
            }
            core::hint::spin_loop();
        }
    }

    fn write_cr0(self, value: u32) -> Result<(), ()> {
        dsb_st();
        self.write32(reg::CR0, value);
        self.wait(|m| m.read32(reg::CR0ACK) == value)
    }

    fn update_gbpa(self, value: u32) -> Result<(), ()> {
        self.wait(|m| m.read32(reg::GBPA) & gbpa::UPDATE == 0)?;
        self.write32(reg::GBPA, value | gbpa::UPDATE);
        self.wait(|m| m.read32(reg::GBPA) & gbpa::UPDATE == 0)
    }
}
