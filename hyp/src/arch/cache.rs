//! Cache maintenance, the counter, SGIs, and the last steps of a wiped
//! reset: the instructions behind `rampart_platform::cache`'s sequences.

use core::arch::asm;

use rampart_platform::MemRange;
use rampart_platform::cache::{self, CacheOps};

/// The data-cache line size (`CTR_EL0.DminLine`): the stride of `DC` by VA.
pub fn dcache_line() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    cache::dcache_line_size(ctr)
}

/// [`CacheOps`] on this CPU, broadcast to the inner-shareable domain.
pub struct El2Cache {
    line: u64,
}

impl El2Cache {
    /// The operations with this CPU's line size.
    pub fn new() -> Self {
        El2Cache { line: dcache_line() }
    }
}

impl CacheOps for El2Cache {
    fn clean_inval_dcache_poc(&mut self, range: MemRange) {
        for line in cache::lines(range, self.line) {
            // SAFETY: DC CIVAC writes dirty data back and drops the line; it
            // does not change memory contents as software sees them. An
            // unmapped VA would fault at EL2: callers pass only ranges mapped
            // at EL2 (or run with the MMU off, where VA = PA).
            unsafe { asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags)) };
        }
    }

    fn inval_icache_all(&mut self) {
        // SAFETY: invalidating instruction caches only drops cached copies.
        unsafe { asm!("ic ialluis", options(nostack, preserves_flags)) };
    }

    fn dsb_sy(&mut self) {
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
    }

    fn dsb_ish(&mut self) {
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    }

    fn isb(&mut self) {
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { asm!("isb", options(nostack, preserves_flags)) };
    }
}

/// After zeroing `range` through the cache: the zeroes reach DRAM before
/// anyone else gets the pages (`rampart_platform::cache::scrub_then_release`).
/// `range` must be mapped at EL2, or the MMU off.
pub fn scrub_then_release(range: MemRange) {
    cache::scrub_then_release(&mut El2Cache::new(), range);
}

/// Before measuring guest memory (mapped at EL2): what the hypervisor
/// reads is what DRAM holds, which the guest's MMU-off fetches will see.
pub fn before_reading(range: MemRange) {
    cache::before_reading(&mut El2Cache::new(), range);
}

/// Before a VM's first instruction, once its memory is clean to PoC (for
/// a protected VM, [`before_reading`] during its measurement; every later
/// page is zeroed through [`scrub_then_release`]): no CPU keeps stale
/// instructions for the physical pages it may execute, such as a
/// destroyed VM's code.
pub fn before_first_run() {
    cache::before_first_run(&mut El2Cache::new(), &[], false);
}

/// Memory became executable for a VM after its first run (donated later,
/// zeroed and cleaned): drop stale instructions for it everywhere.
pub fn made_executable() {
    cache::before_first_run(&mut El2Cache::new(), &[], false);
}

/// The physical counter (`CNTPCT_EL0`).
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: reading the counter has no side effects.
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The counter's frequency in Hz (`CNTFRQ_EL0`, set by firmware).
pub fn counter_frequency() -> u64 {
    let value: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Sends SGI `intid` (0..16, Group 1) to every CPU but this one
/// (`ICC_SGI1R_EL1.IRM`). A CPU running a guest (`HCR_EL2.IMO`) leaves it
/// for EL2; a CPU running the host just takes a spurious interrupt.
pub fn sgi_to_others(intid: u64) {
    let value = (1u64 << 40) | ((intid & 0xf) << 24);
    // SAFETY: generating an SGI changes no memory and no EL2 state; the
    // GIC system-register interface is enabled at EL2 (`ICC_SRE_EL2.SRE`)
    // whenever the caller calls this (it checks the CPU feature).
    unsafe { asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags)) };
}

/// Drops every stage-1 and stage-2 TLB entry of the EL1&0 regime, for
/// every VMID, on every CPU: after a guest's stage-2 tables are zeroed, no
/// guest can reach memory through an old translation.
pub fn tlbi_all_guests() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe { asm!("dsb ish", "tlbi alle1is", "dsb ish", "isb", options(nostack, preserves_flags)) };
}

/// Cleans and invalidates both ranges of `keep_coherent` to the point of
/// coherency and turns this CPU's EL2 MMU and data cache off, with no
/// store in between, so that everything written there through the cache
/// is in DRAM when the CPU starts reading it uncached. From here on this
/// CPU's data accesses are Device-nGnRnE: aligned only (the target is
/// built `+strict-align`), no `DC ZVA`, no exclusives.
///
/// # Safety
///
/// `keep_coherent` must cover all memory this CPU reads from now on (its
/// stack, the hypervisor's data) and be mapped at EL2; nothing else may
/// rely on this CPU's EL2 translation again: it never returns to the host.
pub unsafe fn clean_and_disable_mmu(keep_coherent: [MemRange; 2]) {
    const SCTLR_M: u64 = 1 << 0;
    const SCTLR_C: u64 = 1 << 2;
    let line = dcache_line();
    let [a, b] = keep_coherent;
    // SAFETY: the loops only clean lines; the SCTLR write turns off
    // translation, which is an identity map of the code and data in use,
    // so execution continues at the next instruction.
    unsafe {
        asm!(
            "1:",
            "cmp {at}, {end}",
            "b.hs 3f",
            "2:",
            "dc civac, {at}",
            "add {at}, {at}, {line}",
            "cmp {at}, {end}",
            "b.lo 2b",
            "3:",
            // The second range, then nothing (0, 0).
            "mov {at}, {at2}",
            "mov {end}, {end2}",
            "mov {at2}, xzr",
            "mov {end2}, xzr",
            "cmp {at}, {end}",
            "b.lo 1b",
            "dsb sy",
            "mrs {tmp}, sctlr_el2",
            "bic {tmp}, {tmp}, {bits}",
            "msr sctlr_el2, {tmp}",
            "isb",
            "ic iallu",
            "dsb nsh",
            "isb",
            at = inout(reg) a.start() & !(line - 1) => _,
            end = inout(reg) a.end() => _,
            at2 = inout(reg) b.start() & !(line - 1) => _,
            end2 = inout(reg) b.end() => _,
            line = in(reg) line,
            bits = in(reg) SCTLR_M | SCTLR_C,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// Overwrites `range` with zeroes while the MMU is off: each line is first
/// cleaned and invalidated to the point of coherency (a dirty copy in any
/// CPU's cache is written back now, not over the zeroes later), then
/// zeroed with non-cacheable stores that go straight to DRAM.
///
/// # Safety
///
/// This CPU's MMU must be off ([`clean_and_disable_mmu`]); `range` must be
/// 64-byte-aligned RAM that nothing this CPU still uses lies in.
pub unsafe fn wipe_uncached(range: MemRange) {
    let line = dcache_line().max(64);
    // SAFETY: the caller guarantees the range is RAM nobody needs; the
    // stores are aligned 16-byte pairs inside it.
    unsafe {
        asm!(
            "cmp {at}, {end}",
            "b.hs 3f",
            "2:",
            "dc civac, {at}",
            "mov {tmp}, {line}",
            "4:",
            "stp xzr, xzr, [{at}], #16",
            "subs {tmp}, {tmp}, #16",
            "b.ne 4b",
            "cmp {at}, {end}",
            "b.lo 2b",
            "3:",
            "dsb sy",
            at = inout(reg) range.start() => _,
            end = in(reg) range.end(),
            line = in(reg) line,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// The last step of a wiped reset: overwrites both ranges — the
/// hypervisor's own writable memory and this CPU's stack — without touching
/// memory otherwise, then calls firmware with `function` (`x1`, `x2` as
/// given). If that returns, tries `SYSTEM_RESET`, then `SYSTEM_OFF`, then
/// parks: the hypervisor has no state left to return to.
///
/// # Safety
///
/// As [`wipe_uncached`]; the MMU must be off; nothing runs after it.
pub unsafe fn wipe_uncached_then_smc(ranges: [MemRange; 2], function: u32, x1: u64, x2: u64) -> ! {
    let line = dcache_line().max(64);
    let [range, second] = ranges;
    // SAFETY: uses only registers from here; the stack it runs on may be
    // zeroed, which nothing reads again.
    unsafe {
        asm!(
            "cmp x9, x10",
            "b.hs 3f",
            "2:",
            "dc civac, x9",
            "mov x12, x11",
            "4:",
            "stp xzr, xzr, [x9], #16",
            "subs x12, x12, #16",
            "b.ne 4b",
            "cmp x9, x10",
            "b.lo 2b",
            "3:",
            // The second range, then nothing (0, 0).
            "mov x9, x16",
            "mov x10, x17",
            "mov x16, xzr",
            "mov x17, xzr",
            "cmp x9, x10",
            "b.lo 2b",
            "dsb sy",
            "mov x0, x13",
            "mov x1, x14",
            "mov x2, x15",
            "mov x3, xzr",
            "smc #0",
            "ldr x0, ={reset}",
            "mov x1, xzr",
            "mov x2, xzr",
            "smc #0",
            "ldr x0, ={off}",
            "smc #0",
            "5:",
            "wfe",
            "b 5b",
            reset = const rampart_platform::smc::psci::SYSTEM_RESET,
            off = const rampart_platform::smc::psci::SYSTEM_OFF,
            in("x9") range.start(),
            in("x10") range.end(),
            in("x11") line,
            in("x13") u64::from(function),
            in("x14") x1,
            in("x15") x2,
            in("x16") second.start(),
            in("x17") second.end(),
            options(noreturn, nostack),
        );
    }
}
