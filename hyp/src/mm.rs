//! The hypervisor's own memory: the heap, the page pool that serves
//! page-table pages, EL2 stage-1 tables, and reading boot input from
//! physical memory.
//!
//! With `arch` and `console`, one of the few modules with `unsafe`: it
//! turns physical addresses into pointers.

use core::ptr::NonNull;

use aarch64_paging::descriptor::{El23Attributes, PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{
    Constraints, El2, MemoryRegion, PageTable, Stage2, Translation, TranslationRegime,
};
use aarch64_paging::{MapError, Mapping};
use buddy_system_allocator::LockedHeap;
use rampart_platform::{BLOCK_2M, MemRange, PAGE_SIZE};
use spin::mutex::SpinMutex;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Gives the heap its memory.
///
/// # Safety
///
/// `range` must be memory in the carve-out that nothing else uses, ever.
pub unsafe fn init_heap(range: MemRange) {
    // SAFETY: the caller gives us exclusive use of the range.
    unsafe { HEAP.lock().init(range.start() as usize, range.size() as usize) };
}

/// Pages for page tables, taken from the end of the carve-out.
///
/// After boot, every allocation happens under the host memory lock
/// (`memory.rs`), which first checks that the change's worst-case table
/// count fits in [`pool_available`] pages and keeps `held` pages back for VM
/// teardown (see `docs/design.md`, "Table memory").
struct PagePool {
    next: u64,
    end: u64,
    free: Option<u64>,
    free_pages: u64,
    used: u64,
    /// Pages promised to future work (VM teardown): not available to new
    /// changes, but the promised work may draw on them.
    held: u64,
    /// Tables freed so far (a counter: callers compare it across a change
    /// to know whether a table was freed and walk caches need invalidating).
    frees: u64,
    /// Pages in the pool.
    size: u64,
}

static POOL: SpinMutex<PagePool> =
    SpinMutex::new(PagePool { next: 0, end: 0, free: None, free_pages: 0, used: 0, held: 0, frees: 0, size: 0 });

impl PagePool {
    fn free_count(&self) -> u64 {
        (self.end - self.next) / PAGE_SIZE + self.free_pages
    }
}

/// Hands the page pool its memory.
///
/// # Safety
///
/// `range` must be page-aligned carve-out memory that nothing else uses.
pub unsafe fn init_pool(range: MemRange) {
    let mut pool = POOL.lock();
    pool.next = range.start();
    pool.end = range.end();
    pool.size = range.size() / PAGE_SIZE;
}

/// Takes `pages` contiguous zeroed pages from the pool, for boot-time
/// structures that live for ever (the ownership table).
#[allow(dead_code, reason = "kept for boot-time tables that need contiguous pool pages; the ownership table moved to the boot-sized part")]
pub fn allocate_contiguous(pages: u64) -> Option<MemRange> {
    let mut pool = POOL.lock();
    let bytes = pages.checked_mul(PAGE_SIZE)?;
    let range = MemRange::from_base_size(pool.next, bytes)?;
    if range.end() > pool.end {
        return None;
    }
    pool.next = range.end();
    pool.used += pages;
    // SAFETY: the range belongs to the pool, is identity-mapped (or the MMU
    // is off) and is handed out exactly once.
    unsafe { core::ptr::write_bytes(range.start() as *mut u8, 0, bytes as usize) };
    Some(range)
}

/// The ownership table's entries in `range` (the carve-out's boot-sized
/// table part). Any bit pattern is a valid entry; the caller resets them.
///
/// # Safety
///
/// `range` must be page-aligned RAM writable at its address (the MMU off,
/// or mapped at EL2), used for nothing else, and this must be called once
/// for it.
pub unsafe fn page_meta_table(range: MemRange) -> &'static mut [rampart_ownership::PageMeta] {
    let len = range.size() as usize / core::mem::size_of::<rampart_ownership::PageMeta>();
    // SAFETY: the caller hands over exclusive, suitably aligned
    // (page-aligned) memory; PageMeta is a u32, valid for any bits.
    unsafe { core::slice::from_raw_parts_mut(range.start() as *mut rampart_ownership::PageMeta, len) }
}

/// The oracle's abstract state (test builds, feature `oracle`): one byte
/// per page of the RAM span.
///
/// # Safety
///
/// `range` must be RAM writable at its address (the MMU off, or mapped at
/// EL2), used for nothing else, and this must be called once for it.
#[cfg(feature = "oracle")]
pub unsafe fn oracle_bytes(range: MemRange) -> &'static mut [u8] {
    // SAFETY: the caller hands over exclusive memory; any bits are a u8.
    unsafe { core::slice::from_raw_parts_mut(range.start() as *mut u8, range.size() as usize) }
}

/// Places `count` values made by `init` at the start of `range` and
/// returns them as a slice that lives for good: per-CPU state sized at
/// boot. `None`, writing nothing, if they do not fit or `range` is not
/// aligned for `T`.
///
/// # Safety
///
/// `range` must be RAM that nothing else uses, now or later, and writable
/// at the same address (the MMU off at boot, or mapped at EL2).
pub unsafe fn boot_array<T>(range: MemRange, count: usize, init: impl Fn() -> T) -> Option<&'static [T]> {
    let bytes = core::mem::size_of::<T>().checked_mul(count)?;
    if (bytes as u64) > range.size() || !range.start().is_multiple_of(core::mem::align_of::<T>() as u64) {
        return None;
    }
    let first = range.start() as *mut T;
    for i in 0..count {
        // SAFETY: element `i` lies inside `range` (size checked above) and
        // is aligned for T; the caller hands the range over exclusively.
        unsafe { first.add(i).write(init()) };
    }
    // SAFETY: every element was just initialised; the memory stays this
    // slice's alone for the rest of the hypervisor's life.
    Some(unsafe { core::slice::from_raw_parts(first, count) })
}

/// Fills a page-aligned range with zeroes through its EL2 mapping.
///
/// # Safety
///
/// The range must be mapped writable at EL2 at the same address and must
/// not be reachable by the host or referenced by Rust code.
pub unsafe fn zero(range: MemRange) {
    // SAFETY: as below; zeroes and cleans the range in one pass, or
    // touches nothing and says so.
    if range.is_aligned(PAGE_SIZE) && unsafe { crate::arch::zero_clean_pages(range.start(), range.size()) } {
        return;
    }
    if range.is_aligned(PAGE_SIZE) {
        // SAFETY: the caller guarantees the range is mapped as normal
        // memory at EL2 and unaliased; it is page-aligned.
        unsafe { crate::arch::zero_pages(range.start(), range.size()) };
    } else {
        // SAFETY: the caller guarantees the range is mapped and unaliased.
        unsafe { core::ptr::write_bytes(range.start() as *mut u8, 0, range.size() as usize) };
    }
    // The zeroes must be in DRAM before the pages change hands: a
    // non-cacheable alias or a guest with its MMU off reads DRAM.
    crate::arch::cache::scrub_then_release(range);
}

/// A page table shared between CPUs behind a lock.
pub struct Shared<R: TranslationRegime>(pub Table<R>);

// SAFETY: the tables are reached only through the `SpinMutex` that holds
// them, so one CPU at a time touches them; the raw pointers inside are
// identity-mapped pool pages valid on every CPU.
unsafe impl<R: TranslationRegime> Send for Shared<R> {}

/// Pages handed out by the pool so far, and pages left for new changes
/// (free pages not held back for VM teardown).
pub fn pool_usage() -> (u64, u64) {
    let pool = POOL.lock();
    (pool.used, pool.free_count().saturating_sub(pool.held))
}

/// Free pages, including those held back for VM teardown, and pages held
/// back, read under one lock.
pub fn pool_free_held() -> (u64, u64) {
    let pool = POOL.lock();
    (pool.free_count(), pool.held)
}

/// Pages available to a new change: free pages not held back.
pub fn pool_available() -> u64 {
    pool_usage().1
}

/// Holds `pages` back for later work (VM teardown) if that many are
/// available; `false` (and nothing held) otherwise.
pub fn pool_hold(pages: u64) -> bool {
    let mut pool = POOL.lock();
    if pool.free_count().saturating_sub(pool.held) < pages {
        return false;
    }
    pool.held += pages;
    true
}

/// Whether the pool is low: under a quarter of it available. Then pages
/// given back also give back the tables that mapped them separately
/// (`memory.rs` coalesces); above, those tables stay for the next change.
pub fn pool_low() -> bool {
    let pool = POOL.lock();
    pool.free_count().saturating_sub(pool.held) < pool.size / 4
}

/// Gives back `pages` held with [`pool_hold`].
pub fn pool_release(pages: u64) {
    let mut pool = POOL.lock();
    pool.held = pool.held.saturating_sub(pages);
}

fn allocate_page() -> u64 {
    let mut pool = POOL.lock();
    let page = if let Some(page) = pool.free {
        // SAFETY: a page on the free list holds the next free page's
        // address in its first word, written by `free_page`.
        pool.free = NonNull::new(unsafe { *(page as *const u64) } as *mut u8).map(|p| p.as_ptr() as u64);
        pool.free_pages -= 1;
        page
    } else if pool.next < pool.end {
        let page = pool.next;
        pool.next += PAGE_SIZE;
        page
    } else {
        // At boot, the pool is sized for every table boot builds: running
        // out is a configuration error. After boot, every caller checked
        // its worst case against `pool_available` under the host memory
        // lock (teardown draws on pages held for it), so this cannot
        // happen; the aarch64-paging allocator cannot report failure, so
        // a broken invariant stops the machine rather than corrupt a table.
        panic!("page pool exhausted: build with a larger RAMPART_CARVEOUT_MIB");
    };
    pool.used += 1;
    // SAFETY: the page belongs to the pool, is identity-mapped (or the MMU
    // is off) and nothing else refers to it now that it is taken.
    unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE_SIZE as usize) };
    page
}

fn free_page(page: u64) {
    let mut pool = POOL.lock();
    // SAFETY: the page came from `allocate_page` and its user has stopped
    // using it; its first word links the free list.
    unsafe { *(page as *mut u64) = pool.free.unwrap_or(0) };
    pool.free = Some(page);
    pool.free_pages += 1;
    pool.used -= 1;
    pool.frees = pool.frees.wrapping_add(1);
}

/// How many tables the pool has taken back so far (wraps; compare for
/// equality).
pub fn pool_frees() -> u64 {
    POOL.lock().frees
}

/// Page-table memory from the pool, identity-mapped.
#[derive(Debug)]
pub struct PoolTranslation;

impl<A: aarch64_paging::descriptor::PagingAttributes> Translation<A> for PoolTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<A>>, PhysicalAddress) {
        let page = allocate_page();
        let ptr = NonNull::new(page as *mut PageTable<A>).expect("the pool never hands out page 0");
        (ptr, PhysicalAddress(page as usize))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<PageTable<A>>) {
        free_page(page_table.as_ptr() as u64);
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<A>> {
        NonNull::new(pa.0 as *mut PageTable<A>).expect("page tables are never at address 0")
    }
}

/// A page table of either regime, backed by the pool.
pub type Table<R> = Mapping<PoolTranslation, R>;

/// Maps `range` at the same address with 4 KiB pages only.
pub fn identity_map_pages<R: TranslationRegime<Asid = (), VaRange = ()>>(
    table: &mut Table<R>,
    range: MemRange,
    attributes: R::Attributes,
) -> Result<(), MapError> {
    let region = MemoryRegion::new(range.start() as usize, range.end() as usize);
    table.map_range(&region, PhysicalAddress(range.start() as usize), attributes, Constraints::NO_BLOCK_MAPPINGS)
}

/// Maps `range` at the same address.
pub fn identity_map<R: TranslationRegime<Asid = (), VaRange = ()>>(
    table: &mut Table<R>,
    range: MemRange,
    attributes: R::Attributes,
) -> Result<(), MapError> {
    let region = MemoryRegion::new(range.start() as usize, range.end() as usize);
    table.map_range(&region, PhysicalAddress(range.start() as usize), attributes, Constraints::empty())
}

/// A new, empty EL2 stage-1 table (root at level 1: 39-bit VA).
pub fn new_el2_table() -> Table<El2> {
    Mapping::new(PoolTranslation, 1, El2)
}

/// A new, empty stage-2 table with its root at `level`.
pub fn new_stage2_table(level: usize) -> Table<Stage2> {
    Mapping::new(PoolTranslation, level, Stage2)
}

/// Attributes of EL2 stage-1 mappings (MAIR index 0 = device, 1 = normal).
pub mod el2 {
    use super::El23Attributes as A;

    const BASE: A = A::VALID.union(A::ACCESSED).union(A::USER_RES1);
    const NORMAL: A = BASE.union(A::ATTRIBUTE_INDEX_1).union(A::INNER_SHAREABLE);
    /// Code: read and execute.
    pub const TEXT: A = NORMAL.union(A::READ_ONLY);
    /// Read-only data.
    pub const RODATA: A = NORMAL.union(A::READ_ONLY).union(A::XN);
    /// Data, stacks, heap and page pool: read-write, never executed.
    pub const DATA: A = NORMAL.union(A::XN);
    /// Device registers.
    pub const DEVICE: A = BASE.union(A::ATTRIBUTE_INDEX_0).union(A::XN);
    /// MAIR_EL2: index 0 Device-nGnRE, index 1 Normal write-back.
    pub const MAIR: u64 = 0x04 | (0xff << 8);
}

/// Attributes of the host's stage-2 mappings.
pub mod host_s2 {
    use super::Stage2Attributes as A;

    const BASE: A = A::VALID.union(A::ACCESS_FLAG).union(A::S2AP_ACCESS_RW);
    /// Host RAM: normal write-back, executable.
    pub const RAM: A = BASE
        .union(A::MEMATTR_NORMAL_INNER_WB)
        .union(A::MEMATTR_NORMAL_OUTER_WB)
        .union(A::SH_INNER);
    /// Host MMIO: Device-nGnRE, never executed.
    pub const DEVICE: A = BASE.union(A::MEMATTR_DEVICE_nGnRE).union(A::XN);
    /// Guest RAM under `HCR_EL2.FWB` (FEAT_S2FWB): `MemAttr` = `0b0110`,
    /// forced Normal write-back whatever the guest's stage 1 says — a guest
    /// with its MMU off (every data access Device otherwise) reads and
    /// writes through the caches, as the hypervisor measured and scrubbed
    /// it. aarch64-paging names its bits for the classic encoding: `0b0110`
    /// is its inner write-through bits (`0b10 << 2`) with its outer
    /// non-cacheable bits (`0b01 << 4`).
    pub const RAM_FORCED_WB: A = BASE
        .union(A::MEMATTR_NORMAL_INNER_WT)
        .union(A::MEMATTR_NORMAL_OUTER_NC)
        .union(A::SH_INNER);
    // The FEAT_S2FWB encoding, checked at build time: MemAttr (descriptor
    // bits [5:2]) = 0b0110 is Normal write-back under FWB, and the Device
    // encoding 0b0001 means the same with and without it.
    const _: () = assert!(RAM_FORCED_WB.bits() & (0xf << 2) == 0b0110 << 2);
    const _: () = assert!(DEVICE.bits() & (0xf << 2) == 0b0001 << 2);
    /// Software bit: the host owns the page and lends it out.
    pub const SW_SHARED_OWNED: A = A::SWFLAG_0;
    /// Software bit: the host borrows the page from its owner.
    pub const SW_SHARED_BORROWED: A = A::SWFLAG_1;
}

/// The device tree blob at `address`, after checking its header's magic and
/// size (at most `max_size` bytes).
///
/// # Safety
///
/// `address..address + 8`, and then the blob's `totalsize` bytes, must be
/// readable memory that nothing writes while the slice lives.
pub unsafe fn device_tree_blob(address: u64, max_size: usize) -> Result<&'static [u8], &'static str> {
    if !address.is_multiple_of(8) {
        return Err("device tree address is not 8-byte aligned");
    }
    // SAFETY: the caller guarantees the header is readable.
    let header = unsafe { core::slice::from_raw_parts(address as *const u8, 8) };
    if header[..4] != [0xd0, 0x0d, 0xfe, 0xed] {
        return Err("no device tree magic (0xd00dfeed) at the address in x0");
    }
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if !(40..=max_size).contains(&size) {
        return Err("device tree totalsize is below 40 bytes or above 2 MiB");
    }
    // SAFETY: the caller guarantees the blob is readable and unchanging.
    Ok(unsafe { core::slice::from_raw_parts(address as *const u8, size) })
}

/// Reads `N` bytes of physical memory.
///
/// # Safety
///
/// The range must be readable RAM (MMU off, or identity-mapped).
pub unsafe fn read_phys<const N: usize>(address: u64) -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: the caller guarantees the range is readable.
    unsafe { core::ptr::copy_nonoverlapping(address as *const u8, out.as_mut_ptr(), N) };
    out
}

/// Writes `bytes` to physical memory.
///
/// # Safety
///
/// The range must be writable RAM that no live Rust reference covers.
pub unsafe fn write_phys(address: u64, bytes: &[u8]) {
    // SAFETY: the caller guarantees the range is writable and unaliased.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
}

/// Page-table pages for one VM's stage 2, taken from the metadata the host
/// donated for it.
///
/// Mapping guest memory checks [`VmPool::available`] against the
/// worst case for 4 KiB pages (`rampart_platform::tables::tables_to_map`)
/// and then holds back what the block mappings did not use: that is what
/// splitting those blocks later (a guest giving up one page) can cost, so
/// a split never finds the pool empty.
#[derive(Debug)]
pub struct VmPool {
    next: u64,
    end: u64,
    free: Option<u64>,
    free_pages: u64,
    /// A `Cell`: the pool sits inside its `Mapping`, which lends it out
    /// only by shared reference.
    held: core::cell::Cell<u64>,
}

impl VmPool {
    /// A pool over `range` (page-aligned, donated to the hypervisor and
    /// mapped at EL2).
    pub fn new(range: MemRange) -> Self {
        VmPool { next: range.start(), end: range.end(), free: None, free_pages: 0, held: core::cell::Cell::new(0) }
    }

    /// Free pages, including those held back for splits.
    pub fn free(&self) -> u64 {
        (self.end - self.next) / PAGE_SIZE + self.free_pages
    }

    /// Pages left for new mappings: free pages not held back for splits.
    pub fn available(&self) -> u64 {
        self.free().saturating_sub(self.held.get())
    }

    /// Holds `pages` back for splitting blocks mapped earlier.
    pub fn hold(&self, pages: u64) {
        self.held.set(self.held.get().saturating_add(pages).min(self.free()));
    }

    /// Gives back `pages` held with [`VmPool::hold`] (a split used them).
    pub fn release(&self, pages: u64) {
        self.held.set(self.held.get().saturating_sub(pages));
    }
}

impl<A: aarch64_paging::descriptor::PagingAttributes> Translation<A> for VmPool {
    fn allocate_table(&mut self) -> (NonNull<PageTable<A>>, PhysicalAddress) {
        let page = if let Some(page) = self.free {
            // SAFETY: a free page's first word links the free list.
            self.free = NonNull::new(unsafe { *(page as *const u64) } as *mut u8).map(|p| p.as_ptr() as u64);
            self.free_pages -= 1;
            page
        } else if self.next < self.end {
            let page = self.next;
            self.next += PAGE_SIZE;
            page
        } else {
            // Every mapping checks its worst case against `available`
            // first and holds back what splits may need later, so this
            // cannot happen; the allocator cannot report failure.
            panic!("VM stage-2 pool exhausted despite the reserve check");
        };
        // SAFETY: the page belongs to this VM's pool, is mapped at EL2 and
        // is referenced by nothing now that it is taken.
        unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE_SIZE as usize) };
        let ptr = NonNull::new(page as *mut PageTable<A>).expect("pool pages are never at 0");
        (ptr, PhysicalAddress(page as usize))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<PageTable<A>>) {
        let page = page_table.as_ptr() as u64;
        // SAFETY: the table came from this pool and is no longer used.
        unsafe { *(page as *mut u64) = self.free.unwrap_or(0) };
        self.free = Some(page);
        self.free_pages += 1;
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<A>> {
        NonNull::new(pa.0 as *mut PageTable<A>).expect("page tables are never at address 0")
    }
}

/// A VM's stage-2 table.
pub type VmTable = Mapping<VmPool, Stage2>;

/// A typed view of one donated metadata page.
///
/// # Safety
///
/// `page` must be a page donated to the hypervisor, mapped at EL2, zeroed,
/// used for nothing else, and viewed this way once, until the reference is
/// dropped before the page is handed back.
pub unsafe fn metadata_page<T: zerocopy::FromZeros>(page: u64) -> &'static mut T {
    const { assert!(core::mem::size_of::<T>() <= PAGE_SIZE as usize) };
    const { assert!(core::mem::align_of::<T>() <= PAGE_SIZE as usize) };
    // SAFETY: the caller hands over an exclusive, zeroed, page-aligned page;
    // T fits in it and, being FromZeros, is valid when all-zero.
    unsafe { &mut *(page as *mut T) }
}

/// A 4 KiB page mapped at EL2, viewed as bytes.
///
/// # Safety
///
/// `page` must be page-aligned, mapped writable at EL2 for as long as the
/// reference lives, and reachable by no running guest or host CPU, and by
/// no other Rust reference.
pub unsafe fn page_bytes<'a>(page: u64) -> &'a mut [u8; PAGE_SIZE as usize] {
    // SAFETY: the caller guarantees exclusive, mapped, aligned access.
    unsafe { &mut *(page as *mut [u8; PAGE_SIZE as usize]) }
}

/// The hypervisor's own code and read-only data, as bytes (for its
/// measurement).
pub fn own_image(start: u64, end: u64) -> &'static [u8] {
    // SAFETY: [start, end) is the image's text and rodata (from linker
    // symbols), which nothing ever writes; it is mapped (or the MMU is off).
    unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
}

/// Copies `bytes` to physical memory with volatile byte stores, forming no
/// Rust reference to the destination: for memory another agent (a guest's
/// other vCPUs) may write at the same time.
///
/// # Safety
///
/// `address..address + bytes.len()` must be mapped writable at EL2 and be
/// memory whose concurrent writers cannot break the hypervisor (a guest's
/// own page: it only loses what it races with).
pub unsafe fn write_volatile_bytes(address: u64, bytes: &[u8]) {
    let base = address as *mut u8;
    for (i, &byte) in bytes.iter().enumerate() {
        // SAFETY: in range and mapped per the caller; volatile, so the
        // compiler assumes nothing about the destination's contents.
        unsafe { core::ptr::write_volatile(base.add(i), byte) };
    }
}

/// Reads `N` 64-bit words at `address` with volatile loads, forming no
/// Rust reference to the source: for memory another agent (the host's
/// other CPUs) may write at the same time. The caller uses only the copy.
///
/// # Safety
///
/// `address..address + 8 * N` must be 8-byte aligned and mapped readable at
/// EL2 for the duration of the call.
pub unsafe fn read_volatile_words<const N: usize>(address: u64) -> [u64; N] {
    let base = address as *const u64;
    // SAFETY: in range, aligned and mapped per the caller; volatile, so
    // each word is read exactly once, here.
    core::array::from_fn(|i| unsafe { core::ptr::read_volatile(base.add(i)) })
}

/// Writes `words` at `address` with volatile stores, forming no Rust
/// reference to the destination (another agent may write it meanwhile).
///
/// # Safety
///
/// `address..address + 8 * words.len()` must be 8-byte aligned, mapped
/// writable at EL2, and memory whose concurrent writers cannot break the
/// hypervisor (host memory it lends: the host only loses what it races with).
pub unsafe fn write_volatile_words(address: u64, words: &[u64]) {
    let base = address as *mut u64;
    for (i, &word) in words.iter().enumerate() {
        // SAFETY: in range, aligned and mapped per the caller.
        unsafe { core::ptr::write_volatile(base.add(i), word) };
    }
}

/// Reads `out.len()` bytes at `address` with volatile loads, forming no
/// Rust reference to the source: for host memory the host's other CPUs
/// may write meanwhile (a migration stream chunk). The caller uses only
/// the copy.
///
/// # Safety
///
/// `address..address + out.len()` must be mapped readable at EL2 for the
/// duration of the call.
pub unsafe fn read_volatile_bytes(address: u64, out: &mut [u8]) {
    let base = address as *const u8;
    let mut i = 0;
    while i < out.len() {
        // Whole aligned words where the source allows (a stream chunk
        // usually is), bytes elsewhere.
        if (address + i as u64).is_multiple_of(8)
            && let Some(chunk) = out.get_mut(i..i + 8)
        {
            // SAFETY: in range, 8-byte aligned and mapped per the caller;
            // volatile, so each word is read exactly once, here.
            let word = unsafe { core::ptr::read_volatile(base.add(i).cast::<u64>()) };
            chunk.copy_from_slice(&word.to_ne_bytes());
            i += 8;
            continue;
        }
        // SAFETY: in range and mapped per the caller; volatile, so each
        // byte is read exactly once, here.
        out[i] = unsafe { core::ptr::read_volatile(base.add(i)) };
        i += 1;
    }
}

/// Writes `bytes` at `address` with volatile stores, whole aligned words
/// where it can, forming no Rust reference to the destination: for host
/// memory the host's other CPUs may touch meanwhile (a migration stream
/// chunk).
///
/// # Safety
///
/// As [`write_volatile_bytes`].
pub unsafe fn write_volatile_words_or_bytes(address: u64, bytes: &[u8]) {
    let base = address as *mut u8;
    let mut i = 0;
    while i < bytes.len() {
        if (address + i as u64).is_multiple_of(8)
            && let Some(chunk) = bytes.get(i..i + 8)
        {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            // SAFETY: in range, 8-byte aligned and mapped per the caller.
            unsafe { core::ptr::write_volatile(base.add(i).cast::<u64>(), u64::from_ne_bytes(word)) };
            i += 8;
            continue;
        }
        // SAFETY: in range and mapped per the caller.
        unsafe { core::ptr::write_volatile(base.add(i), bytes[i]) };
        i += 1;
    }
}
/// Translations whose table pages sit at their physical address at EL2
/// (the pool's and each VM's pool pages are identity-mapped), so a table
/// descriptor's output address is also where EL2 reads the next table.
pub trait IdentityTables {}
impl IdentityTables for PoolTranslation {}
impl IdentityTables for VmPool {}

/// Descriptor bits [1:0] of a table (levels 0-2) or page (level 3) entry.
const TABLE_OR_PAGE: u64 = 0b11;
/// Descriptor bits [47:12]: a table's or page's output address (what
/// aarch64-paging writes and reads: 48-bit addresses, 4 KiB granule).
const OUTPUT_ADDRESS: u64 = 0x0000_ffff_ffff_f000;

/// The descriptor slot of `va` at `stop_level` or above, found by reading
/// table descriptors directly (no allocation, no visitor): `Ok` with the
/// slot and its level where the walk ends (an invalid entry, a block, a
/// page, or the slot at `stop_level`), `None` if `va` is outside the table.
fn slot<T: Translation<R::Attributes> + IdentityTables, R: TranslationRegime>(
    table: &Mapping<T, R>,
    root_level: usize,
    va: u64,
    stop_level: usize,
) -> Option<(&core::sync::atomic::AtomicU64, usize)> {
    if va >= table.size() as u64 || root_level > 3 {
        return None;
    }
    let mut table_pa = table.root_address().0 as u64;
    let mut level = root_level;
    loop {
        let index = (va >> (12 + 9 * (3 - level))) & 0x1ff;
        // SAFETY: `table_pa` is the root or a table a valid table descriptor
        // of this mapping points at: a pool page holding 512 descriptors,
        // identity-mapped at EL2 (`IdentityTables`), which stays a table of
        // this mapping while `table` is borrowed (only `&mut` access to the
        // mapping frees tables). aarch64-paging keeps descriptors as atomic
        // words, so reading one as `AtomicU64` matches how it writes them.
        let entry = unsafe { &*((table_pa + index * 8) as *const core::sync::atomic::AtomicU64) };
        let bits = entry.load(core::sync::atomic::Ordering::Acquire);
        if level == stop_level || level == 3 || bits & TABLE_OR_PAGE != TABLE_OR_PAGE {
            return Some((entry, level));
        }
        table_pa = bits & OUTPUT_ADDRESS;
        level += 1;
    }
}

/// The leaf that maps `va` in `table` (root at `root_level`): the output
/// address of `va`'s page and the leaf's level, or `None` if `va` is not
/// mapped. The same answer as a `walk_range` over the page, in a few dozen
/// instructions instead of a few hundred: a guest exit asks this for every
/// stage-2 fault.
pub fn lookup<T: Translation<R::Attributes> + IdentityTables, R: TranslationRegime>(
    table: &Mapping<T, R>,
    root_level: usize,
    va: u64,
) -> Option<(u64, usize)> {
    let found = slot(table, root_level, va, 3).and_then(|(entry, level)| {
        let bits = entry.load(core::sync::atomic::Ordering::Acquire);
        // Invalid, a table where the walk stopped (cannot happen), or a
        // level-0 "block" (not a valid descriptor with a 4 KiB granule;
        // aarch64-paging never writes one): not mapped.
        if bits & 1 == 0 || (level < 3 && bits & TABLE_OR_PAGE == TABLE_OR_PAGE) || level == 0 {
            return None;
        }
        let span = PAGE_SIZE << (9 * (3 - level));
        let page = va & !(PAGE_SIZE - 1);
        Some(((bits & OUTPUT_ADDRESS & !(span - 1)) + (page & (span - 1)), level))
    });
    // Oracle builds (the test host's whole run under the specification)
    // check every lookup against aarch64-paging's own walk.
    #[cfg(feature = "oracle")]
    if found.map(|(pa, _)| pa) != walked_output(table, va) {
        crate::println!("mm::lookup of {va:#x} gave {found:?}, aarch64-paging's walk {:?}; stopping", walked_output(table, va));
        crate::power_off();
    }
    found
}

/// `va`'s output address by aarch64-paging's `walk_range` (what
/// [`lookup`] replaced), for the oracle build's cross-check.
#[cfg(feature = "oracle")]
fn walked_output<T: Translation<R::Attributes>, R: TranslationRegime>(table: &Mapping<T, R>, va: u64) -> Option<u64> {
    let page = va & !(PAGE_SIZE - 1);
    let region = MemoryRegion::new(page as usize, page.checked_add(PAGE_SIZE)? as usize);
    let mut out = None;
    let _ = table.walk_range(&region, &mut |_, desc, level| {
        if desc.is_valid() && !(level < 3 && desc.is_table_or_page()) {
            // The walk's region is the leaf clipped to the page walked:
            // its start is the page, not the leaf's. The page's offset in
            // a block is its offset in the leaf's aligned span.
            let span = PAGE_SIZE << (9 * (3 - level.min(3)));
            out = Some(desc.output_address().0 as u64 + (page & (span - 1)));
        }
        Ok(())
    });
    out
}

/// One level-3 entry of a table, reached through table descriptors only
/// (see [`level3_entry`]). Writing it changes a live translation: the
/// caller issues the barriers and TLB invalidation the change needs.
pub struct Level3Entry<'a> {
    entry: &'a core::sync::atomic::AtomicU64,
}

impl Level3Entry<'_> {
    /// Whether the entry maps a page.
    pub fn is_valid(&self) -> bool {
        self.entry.load(core::sync::atomic::Ordering::Acquire) & 1 != 0
    }

    /// Writes an invalid entry (all zero, as aarch64-paging unmaps).
    pub fn clear(&self) {
        self.entry.store(0, core::sync::atomic::Ordering::Release);
    }

    /// Writes a page entry: `pa` with `attributes` (which must include
    /// `VALID`), exactly the bits aarch64-paging's `map_range` writes at
    /// level 3 (`pa | attributes | TABLE_OR_PAGE`).
    pub fn set_page<A: aarch64_paging::descriptor::PagingAttributes>(&self, pa: u64, attributes: A) {
        let bits = (pa & OUTPUT_ADDRESS) | (attributes | A::TABLE_OR_PAGE).bits() as u64;
        self.entry.store(bits, core::sync::atomic::Ordering::Release);
    }
}

/// The level-3 entry for `va` if `table` (root at `root_level`) reaches a
/// level-3 table for it through valid table descriptors; `None` if the
/// walk ends earlier (an invalid entry or a block above level 3), when the
/// caller must go through aarch64-paging (which may split or allocate).
/// Borrowing the mapping mutably for the entry's life means nothing else
/// can change or free its tables meanwhile.
pub fn level3_entry<T: Translation<R::Attributes> + IdentityTables, R: TranslationRegime>(
    table: &mut Mapping<T, R>,
    root_level: usize,
    va: u64,
) -> Option<Level3Entry<'_>> {
    let (entry, level) = slot(table, root_level, va, 3)?;
    (level == 3).then_some(Level3Entry { entry })
}

/// A whole level-3 table of a mapping: the 512 entries that map one 2 MiB
/// block of VA, reached through table descriptors once (see
/// [`level3_table`]). For a window whose table aarch64-paging never
/// changes again (the EL2 fixmap): a batch of pages is mapped or unmapped
/// with one store an entry instead of a walk, or a `map_range`, a page.
/// Writing entries changes live translations: the caller issues the
/// barriers and TLB invalidation each change needs.
pub struct Level3Table<'a> {
    entries: &'a [core::sync::atomic::AtomicU64; 512],
}

impl Level3Table<'_> {
    /// Writes page entries for `count` pages from `pa` at entries
    /// `first..first + count`, exactly the bits [`Level3Entry::set_page`]
    /// writes (`pa | attributes | TABLE_OR_PAGE`). `false`, writing
    /// nothing, if the entries run past the table.
    pub fn set_pages<A: aarch64_paging::descriptor::PagingAttributes>(
        &self,
        first: usize,
        pa: u64,
        count: usize,
        attributes: A,
    ) -> bool {
        let Some(entries) = first.checked_add(count).and_then(|end| self.entries.get(first..end)) else {
            return false;
        };
        let bits = (attributes | A::TABLE_OR_PAGE).bits() as u64;
        let mut address = pa & OUTPUT_ADDRESS;
        for entry in entries {
            // Relaxed: the caller's `DSB ISHST` (and `ISB`) orders these
            // stores before any walk that uses them, as aarch64-paging's
            // own stores rely on.
            entry.store(address | bits, core::sync::atomic::Ordering::Relaxed);
            address = address.wrapping_add(PAGE_SIZE) & OUTPUT_ADDRESS;
        }
        true
    }

    /// Writes invalid entries (all zero, as aarch64-paging unmaps) at
    /// `first..first + count`. `false`, writing nothing, if they run past
    /// the table.
    pub fn clear(&self, first: usize, count: usize) -> bool {
        let Some(entries) = first.checked_add(count).and_then(|end| self.entries.get(first..end)) else {
            return false;
        };
        for entry in entries {
            entry.store(0, core::sync::atomic::Ordering::Relaxed);
        }
        true
    }

    /// Whether every entry in `first..first + count` is invalid (`false`
    /// also if they run past the table): before writing page entries
    /// directly, which must not replace a valid entry without a break.
    pub fn all_invalid(&self, first: usize, count: usize) -> bool {
        first.checked_add(count).and_then(|end| self.entries.get(first..end)).is_some_and(|entries| {
            entries.iter().all(|entry| entry.load(core::sync::atomic::Ordering::Relaxed) & 1 == 0)
        })
    }
}

/// The level-3 table that translates the 2 MiB block holding `va` in
/// `table` (root at `root_level`), if `table` reaches one through valid
/// table descriptors; `None` if the walk ends earlier (an invalid entry or
/// a block). Borrowing the mapping mutably for the table's life means
/// nothing else can change or free its tables meanwhile.
pub fn level3_table<T: Translation<R::Attributes> + IdentityTables, R: TranslationRegime>(
    table: &mut Mapping<T, R>,
    root_level: usize,
    va: u64,
) -> Option<Level3Table<'_>> {
    let block = va & !(BLOCK_2M - 1);
    let (entry, level) = slot(table, root_level, block, 3)?;
    if level != 3 {
        return None;
    }
    // SAFETY: `entry` is entry 0 of a level-3 table (`block` is 2 MiB
    // aligned, so its level-3 index is 0): a pool page of 512 descriptors,
    // page-aligned and identity-mapped at EL2, which stays a table of this
    // mapping while `table` is mutably borrowed (see `slot`). An array of
    // 512 `AtomicU64` has the page's size and alignment requirements
    // (8 bytes, met by a page), and aarch64-paging keeps descriptors as
    // atomic words.
    let entries = unsafe { &*(core::ptr::from_ref(entry).cast::<[core::sync::atomic::AtomicU64; 512]>()) };
    Some(Level3Table { entries })
}
