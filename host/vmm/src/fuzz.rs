//! `rampart-fuzz` (`rampart-vmm fuzz`): fuzzes the control pages from
//! Linux user space, as a hostile VMM would, while real VMMs run guests
//! beside it (`docs/testing.md`, "From Linux user space").
//!
//! The parent opens one session (a slice of the guest pool per worker, one
//! private channel per worker and one more channel that every worker uses)
//! and forks `--procs` worker **processes**: separate address spaces, as
//! separate VMMs would be, so that the hypervisor sees the same CPU-level
//! races it would see from unrelated programs, and a worker that dies
//! (a SIGBUS nobody expected) cannot take the others with it.
//!
//! Each worker makes `--calls` seeded random requests. Its requests are a
//! function of the seed, its index and the answers it got (an answer such
//! as `NO_MEMORY` depends on what the other processes did):
//! - on its **own channel**, every host call the control pages carry, on
//!   its own pool pages (whose state it models: host, shared with or
//!   donated to the hypervisor, given to one of its VMs), with predicted
//!   results: a call the model says must fail must not succeed, a call it
//!   says may succeed must succeed or say `NO_MEMORY`; pages that come back
//!   (`RECLAIM_HYP`, `VM_DESTROY`) must be zero;
//! - calls that must fail wherever they are made: on the control pages and
//!   the carve-out below them, MMIO, beyond RAM, unaligned, zero, huge and
//!   overflowing counts, stale and forged VM handles, `RECLAIM_HYP` and
//!   `UNSHARE_HYP` of every page outside its allocation (other VMMs' guest
//!   memory and VM metadata, the kernel's RAM), unknown function IDs
//!   (`NOT_SUPPORTED`), garbage in the unused registers;
//! - accesses a channel refuses (other offsets and widths): each must be
//!   answered with SIGBUS;
//! - on the **shared channel**, the same harmless requests racing with the
//!   other workers' (their register writes interleave), and its own VMs'
//!   `VCPU_RUN`s, so that other workers ring a doorbell while a request is
//!   in flight: the hypervisor refuses such an access with SIGBUS, which
//!   the worker counts as "busy" and skips.
//!
//! Any result code not documented in `docs/abi.md`, a SIGBUS on a private
//! channel, a refused access that was not refused, or a prediction that
//! did not hold is an unexpected outcome: the worker prints the seed, the
//! call index and its last requests, and stops.

#![allow(
    clippy::cast_possible_truncation,
    reason = "page indices of a 64-page slice, and 64-bit targets only"
)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rampart_abi::Error;
use rampart_abi::guest::{GUEST_RAM_BASE, GUEST_UART_BASE};
use rampart_abi::host::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR, HostCall, PAGE_SIZE, VmConfig};

use crate::dt::CHANNEL_SIZE;
use crate::hyp::DOORBELL;
use crate::mem::Mapping;
use crate::session::{Env, Session};

/// The test-only `RAMPART_HOST_ORACLE_CHECK` (`HOST_FUNCTION_BASE +
/// 0xF00`): `x1` = invariant violations since boot, `x2` = events checked;
/// `NOT_SUPPORTED` from a hypervisor built without the `oracle` feature.
pub const ORACLE_CHECK: u32 = 0xC600_8F00;

/// Pool pages each worker owns.
const SLICE_PAGES: u64 = 64;
/// Live VMs a worker keeps at most.
const MAX_VMS: usize = 3;
/// Requests printed after an unexpected outcome.
const HISTORY: usize = 16;
/// The registers of a channel.
const REGS: usize = 18;

/// `rampart-fuzz`'s options.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Worker processes.
    pub procs: u32,
    /// Requests per worker.
    pub calls: u64,
    /// The seed.
    pub seed: u64,
}

// ---------------------------------------------------------------------------
// Random numbers (SplitMix64: deterministic, no dependency).

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        #[allow(clippy::cast_possible_truncation, reason = "below len")]
        let i = self.below(from.len() as u64) as usize;
        from[i]
    }
}

// ---------------------------------------------------------------------------
// SIGBUS: an access the hypervisor refuses is answered with a synchronous
// external abort. While `ARMED`, the handler counts it and steps over the
// faulting instruction (each access is one `LDR`/`STR`), so the worker
// learns that its access was refused and goes on.

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_bus(signal: libc::c_int, _info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    if !ARMED.load(Ordering::SeqCst) {
        // Not ours to explain: the default action on the retried access.
        // SAFETY: signal(2) is async-signal-safe.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
        return;
    }
    FAULTS.fetch_add(1, Ordering::SeqCst);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the kernel passes the interrupted context; resuming at the
    // next instruction skips the one 4-byte access that aborted.
    unsafe {
        let uc = context.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.pc += 4;
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = context;
        // SAFETY: as above: nothing to step over here, so die.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

fn install_bus_skip() {
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler that touches
    // only atomics and the context it is given.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        libc::sigemptyset(&raw mut action.sa_mask);
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut());
    }
}

/// Runs `f` with refused accesses counted instead of fatal; returns its
/// result and how many accesses were refused.
fn armed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = FAULTS.load(Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let r = f();
    ARMED.store(false, Ordering::SeqCst);
    (r, FAULTS.load(Ordering::SeqCst) - before)
}

/// A request on channel `ch`: the registers, the doorbell, the results.
/// Returns them and whether any access was refused (busy channel).
fn ring(control: &Mapping, ch: u32, regs: &[u64; REGS]) -> ([u64; REGS], bool) {
    #[allow(clippy::cast_possible_truncation, reason = "channel offsets are small")]
    let base = (u64::from(ch) * CHANNEL_SIZE) as usize;
    let (out, faults) = armed(|| {
        for (i, v) in regs.iter().enumerate() {
            control.write_u64(base + 8 * i, *v);
        }
        control.write_u64(base + DOORBELL, 1);
        std::array::from_fn(|i| control.read_u64(base + 8 * i))
    });
    (out, faults > 0)
}

/// An access a channel must refuse (docs/abi.md: "any other access"):
/// kind 0 = 32-bit doorbell store, 1 = 32-bit register load, 2 = 64-bit
/// store past the registers (`x18`), 3 = 64-bit load at 0x800, 4 = 64-bit
/// store beyond the doorbell. Returns whether it was refused.
fn bad_access(control: &Mapping, ch: u32, kind: u64) -> bool {
    #[allow(clippy::cast_possible_truncation, reason = "channel offsets are small")]
    let base = control.span().0 + (u64::from(ch) * CHANNEL_SIZE) as usize;
    let ((), faults) = armed(|| {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: addresses inside our mapping of the control pages; the
        // hypervisor refuses each (SIGBUS, stepped over by `on_bus`), or, if
        // it wrongly accepted one, the access touched only its registers.
        unsafe {
            match kind {
                0 => {
                    core::arch::asm!("str {v:w}, [{p}]", p = in(reg) base + DOORBELL, v = in(reg) 1u64, options(nostack, preserves_flags))
                }
                1 => {
                    core::arch::asm!("ldr {v:w}, [{p}]", p = in(reg) base, v = out(reg) _, options(nostack, preserves_flags))
                }
                2 => {
                    core::arch::asm!("str {v}, [{p}]", p = in(reg) base + 8 * REGS, v = in(reg) 0u64, options(nostack, preserves_flags))
                }
                3 => {
                    core::arch::asm!("ldr {v}, [{p}]", p = in(reg) base + 0x800, v = out(reg) _, options(nostack, preserves_flags))
                }
                _ => {
                    core::arch::asm!("str {v}, [{p}]", p = in(reg) base + DOORBELL + 8, v = in(reg) 0u64, options(nostack, preserves_flags))
                }
            }
        }
        #[cfg(not(target_arch = "aarch64"))]
        let _ = (base, kind);
    });
    faults > 0
}

// ---------------------------------------------------------------------------
// Memory shared by the parent and the workers: progress and live handles,
// so that the parent can report and clean up after a worker that died.

#[repr(C)]
struct Slot {
    calls: AtomicU64,
    busy: AtomicU64,
    refused: AtomicU64,
    handles: [AtomicU64; MAX_VMS],
}

struct Board {
    ptr: *mut Slot,
    len: usize,
}

impl Board {
    fn new(procs: usize) -> Result<Self> {
        let bytes = procs * std::mem::size_of::<Slot>();
        // SAFETY: an anonymous shared mapping; checked below. Zeroed
        // memory is a valid `Slot` (atomics of 0).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of the workers' board: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Board {
            ptr: ptr.cast(),
            len: procs,
        })
    }

    fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.len);
        // SAFETY: in bounds; the mapping lives as long as `self`.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len * std::mem::size_of::<Slot>()) };
    }
}

// ---------------------------------------------------------------------------
// A worker's model of its own pages and VMs.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Host,
    SharedHyp,
    DonatedHyp,
    /// Held for or donated to the VM with this handle.
    Vm(u64),
    /// Shared with the VM with this handle (still the host's).
    VmShared(u64),
}

struct Vm {
    handle: u64,
    vcpus: u64,
    protected: bool,
    /// Guest-physical ranges mapped: (IPA, pages).
    mapped: Vec<(u64, u64)>,
    next_ipa: u64,
}

/// The fixed addresses of the platform a worker aims at.
#[derive(Clone, Debug)]
struct Targets {
    /// Pages every memory call must refuse: the control pages, the
    /// carve-out pages below them, MMIO, beyond RAM.
    never: Vec<u64>,
    /// Pages outside the fuzzer's allocation (other VMMs' pool pages, the
    /// kernel's RAM): `RECLAIM_HYP` and `UNSHARE_HYP` must refuse them.
    foreign: Vec<u64>,
}

struct Worker<'a> {
    id: usize,
    seed: u64,
    rng: Rng,
    control: &'a Mapping,
    pool: &'a Mapping,
    own: u32,
    shared: u32,
    slice_phys: u64,
    slice_offset: usize,
    pages: Vec<Page>,
    vms: Vec<Vm>,
    stale: Vec<u64>,
    targets: Targets,
    history: VecDeque<String>,
    index: u64,
    slot: &'a Slot,
    /// The session (the parent's), to read the other VMMs' regions.
    session: &'a Session,
    /// The other VMMs' pool regions `(physical address, pages)`, re-read
    /// from the allocation table every [`REREAD`] requests.
    others: Vec<(u64, u64)>,
    /// When to re-read them.
    next_read: u64,
}

/// Requests between two reads of the allocation table.
const REREAD: u64 = 128;

fn documented(code: i64) -> bool {
    code == 0 || Error::try_from(code).is_ok()
}

#[allow(clippy::cast_possible_wrap, reason = "x0 is a signed SMCCC code")]
const fn code_of(out: &[u64; REGS]) -> i64 {
    out[0] as i64
}

fn name(id: u64) -> String {
    #[allow(clippy::cast_possible_truncation, reason = "w0 is the function ID")]
    let w0 = id as u32;
    if w0 == ORACLE_CHECK {
        return "ORACLE_CHECK".into();
    }
    HostCall::try_from(w0).map_or_else(
        |_| format!("{id:#x}"),
        |c| {
            c.name()
                .strip_prefix("RAMPART_HOST_")
                .unwrap_or(c.name())
                .to_string()
        },
    )
}

fn code_name(code: i64) -> String {
    if code == 0 {
        "SUCCESS".into()
    } else {
        crate::hyp::error_name(code)
    }
}

/// What a request's answer must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Any documented code.
    Documented,
    /// A documented error, never `SUCCESS`.
    Fail,
    /// `SUCCESS`, or `NO_MEMORY` (the pool is shared with everyone).
    Succeed,
    /// Exactly this code.
    Exactly(i64),
    /// On the shared channel: a documented code, or a function ID another
    /// worker stored in `x0` after our call (its call not made yet).
    Shared,
}

type Step = std::result::Result<(), String>;

impl Worker<'_> {
    fn phys(&self, page: u64) -> u64 {
        self.slice_phys + page * PAGE_SIZE
    }

    #[allow(clippy::cast_possible_truncation, reason = "pages of a small slice")]
    fn offset(&self, page: u64) -> usize {
        self.slice_offset + (page * PAGE_SIZE) as usize
    }

    /// Makes a request and records it; `Err` on a refused access to the
    /// private channel.
    fn request(
        &mut self,
        on_shared: bool,
        regs: [u64; REGS],
    ) -> std::result::Result<([u64; REGS], bool), String> {
        let ch = if on_shared { self.shared } else { self.own };
        let (out, busy) = ring(self.control, ch, &regs);
        let mut line = format!(
            "#{} {}{}({:#x}, {:#x}, {:#x}, {:#x})",
            self.index,
            if on_shared { "[shared] " } else { "" },
            name(regs[0]),
            regs[1],
            regs[2],
            regs[3],
            regs[4]
        );
        if busy {
            line.push_str(" -> refused (SIGBUS: channel busy)");
        } else {
            let _ = write!(
                line,
                " -> {} {:#x} {:#x}",
                code_name(code_of(&out)),
                out[1],
                out[2]
            );
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(line);
        if busy {
            self.slot.busy.fetch_add(1, Ordering::Relaxed);
            if !on_shared {
                return Err("an access to this worker's own channel was refused (SIGBUS)".into());
            }
        }
        Ok((out, busy))
    }

    /// Makes a request the contract must refuse on this worker's own
    /// channel; on the shared channel, where another worker's registers
    /// may have been used instead, only a documented answer is required.
    fn expect_refused(&mut self, call: HostCall, args: &[u64], on_shared: bool) -> Step {
        let regs = self.regs(u64::from(call.id()), args);
        let (out, busy) = self.request(on_shared, regs)?;
        if busy {
            return Ok(());
        }
        check(&out, if on_shared { Expect::Shared } else { Expect::Fail })
    }

    /// Garbage for the registers a call does not use.
    fn regs(&mut self, id: u64, args: &[u64]) -> [u64; REGS] {
        let mut r = [0u64; REGS];
        r[0] = id;
        for (i, a) in args.iter().enumerate() {
            r[1 + i] = *a;
        }
        if self.rng.chance(50) {
            for x in r.iter_mut().skip(1 + args.len()) {
                *x = self.rng.next();
            }
        }
        r
    }

    /// Makes a call on the private channel and checks `expect`.
    fn call(
        &mut self,
        call: HostCall,
        args: &[u64],
        expect: Expect,
    ) -> std::result::Result<[u64; REGS], String> {
        let regs = self.regs(u64::from(call.id()), args);
        let (out, _) = self.request(false, regs)?;
        check(&out, expect).map_err(|e| format!("{}: {e}", name(regs[0])))?;
        Ok(out)
    }

    fn fill(&self, page: u64) {
        let at = self.offset(page);
        for word in [0, 8, 2048, 4088] {
            self.pool.write_u64(
                at + word,
                0x5A5A_0000_0000_0000 | (self.seed & 0xFFFF_FFFF) | 1,
            );
        }
    }

    /// Checks that `pages` of the slice read as zero (they just came back).
    fn zeroed(&self, pages: &[u64], what: &str) -> Step {
        for &p in pages {
            let at = self.offset(p);
            let (nonzero, faults) = armed(|| {
                (0..PAGE_SIZE as usize)
                    .step_by(8)
                    .find(|w| self.pool.read_u64(at + w) != 0)
            });
            if faults > 0 {
                return Err(format!(
                    "page {:#x} came back from {what} but the host's read of it aborted",
                    self.phys(p)
                ));
            }
            if let Some(w) = nonzero {
                return Err(format!(
                    "page {:#x} came back from {what} not zeroed (word at +{w:#x} is {:#x})",
                    self.phys(p),
                    self.pool.read_u64(at + w)
                ));
            }
        }
        Ok(())
    }

    /// A run of `n` own pages starting at a random page (possibly
    /// overrunning the slice's model: then only pages inside count).
    fn run_of(&mut self, max: u64) -> (u64, u64) {
        let n = 1 + self.rng.below(max);
        let first = self.rng.below(SLICE_PAGES - n + 1);
        (first, n)
    }

    /// The first run of `n` host pages in the slice, from a random start.
    fn host_run(&mut self, n: u64) -> Option<u64> {
        let start = self.rng.below(SLICE_PAGES);
        (0..SLICE_PAGES)
            .map(|k| (start + k) % SLICE_PAGES)
            .find(|&f| {
                f + n <= SLICE_PAGES && (f..f + n).all(|p| self.pages[p as usize] == Page::Host)
            })
    }

    fn all(&self, first: u64, n: u64, state: Page) -> bool {
        (first..first + n).all(|p| self.pages[p as usize] == state)
    }

    fn set(&mut self, first: u64, n: u64, state: Page) {
        for p in first..first + n {
            self.pages[p as usize] = state;
        }
    }

    fn record_handles(&self) {
        for (i, h) in self.slot.handles.iter().enumerate() {
            h.store(self.vms.get(i).map_or(0, |v| v.handle), Ordering::SeqCst);
        }
    }

    /// A handle that names no live VM: a stale one of ours, a retired
    /// generation, a slot out of range, or garbage.
    fn dead_handle(&mut self) -> u64 {
        match self.rng.below(5) {
            0 if !self.stale.is_empty() => self.rng.pick(&self.stale),
            1 => (0xFFFF_FFFF << 32) | (0x1000 + self.rng.below(64)),
            2 => 0x1000 + 4096 + self.rng.below(1 << 20),
            3 => 0,
            _ => self.rng.next() | (1 << 63),
        }
    }

    /// An address range every memory call must refuse.
    fn never_range(&mut self) -> (u64, u64) {
        let page = self.rng.below(SLICE_PAGES);
        let own = self.phys(page);
        match self.rng.below(7) {
            0 => (
                self.rng.pick(&self.targets.never.clone()),
                1 + self.rng.below(4),
            ),
            1 => (own + 8 * (1 + self.rng.below(511)), 1), // unaligned
            2 => (own, 0),                                 // zero pages
            3 => (own, 1 << (20 + self.rng.below(40))),    // huge
            4 => (!(PAGE_SIZE - 1), 2 + self.rng.below(16)), // wraps
            5 => (own, u64::MAX / PAGE_SIZE),              // overflows
            _ => (self.rng.pick(&self.targets.never.clone()), u64::MAX), // both
        }
    }

    /// One random request. `Err` describes an unexpected outcome.
    #[allow(clippy::too_many_lines, reason = "one arm per kind of request")]
    fn step(&mut self) -> Step {
        let kind = self.rng.below(100);
        match kind {
            // The memory calls on the worker's own pages, predicted.
            0..=19 => {
                let (first, n) = self.run_of(4);
                let addr = self.phys(first);
                let which = self.rng.below(4);
                let (call, from, to) = match which {
                    0 => (HostCall::ShareHyp, Page::Host, Page::SharedHyp),
                    1 => (HostCall::DonateHyp, Page::Host, Page::DonatedHyp),
                    2 => (HostCall::UnshareHyp, Page::SharedHyp, Page::Host),
                    _ => (HostCall::ReclaimHyp, Page::DonatedHyp, Page::Host),
                };
                if call == HostCall::DonateHyp && self.all(first, n, Page::Host) {
                    for p in first..first + n {
                        self.fill(p);
                    }
                }
                let expect = if self.all(first, n, from) {
                    Expect::Succeed
                } else {
                    Expect::Fail
                };
                let out = self.call(call, &[addr, n], expect)?;
                if code_of(&out) == 0 {
                    self.set(first, n, to);
                    if call == HostCall::ReclaimHyp {
                        let pages: Vec<u64> = (first..first + n).collect();
                        self.zeroed(&pages, "RECLAIM_HYP")?;
                    }
                }
                Ok(())
            }
            // Memory calls that must fail anywhere.
            20..=29 => {
                let (addr, n) = self.never_range();
                let call = self.rng.pick(&[
                    HostCall::ShareHyp,
                    HostCall::UnshareHyp,
                    HostCall::DonateHyp,
                    HostCall::ReclaimHyp,
                    HostCall::VmCreate,
                    HostCall::VmDonate,
                    HostCall::VmShare,
                ]);
                let args: Vec<u64> = match call {
                    HostCall::VmCreate => vec![addr, n, 0x100],
                    HostCall::VmDonate | HostCall::VmShare => {
                        let h = match self.vms.first() {
                            Some(v) if self.rng.chance(70) => v.handle,
                            _ => self.dead_handle(),
                        };
                        vec![h, addr, n, GUEST_RAM_BASE + (self.rng.below(4096) << 12)]
                    }
                    _ => vec![addr, n],
                };
                // On the shared channel only calls that take nothing from
                // the host: with another worker's `x1`/`x2` (a page of
                // another VMM's region, say) a SHARE_HYP or DONATE_HYP could
                // succeed and break that VMM or the kernel.
                let on_shared = self.rng.chance(30)
                    && matches!(call, HostCall::UnshareHyp | HostCall::ReclaimHyp);
                self.expect_refused(call, &args, on_shared)
            }
            // RECLAIM_HYP / UNSHARE_HYP of pages outside the allocation:
            // other VMMs' guests and VM metadata, the kernel's RAM.
            30..=37 => {
                if self.index >= self.next_read {
                    self.next_read = self.index + REREAD;
                    let base = self.session.platform.pool.base;
                    self.others = self
                        .session
                        .others()
                        .unwrap_or_default()
                        .iter()
                        .filter(|e| e.pages > 0)
                        .map(|e| (base + e.offset, e.pages))
                        .collect();
                }
                // Half the time a page of another VMM's region (its VM's
                // metadata, stage-2 tables, memory or image): the attack
                // the Linux fuzzer found.
                let page = if !self.others.is_empty() && self.rng.chance(50) {
                    let (at, pages) = self.rng.pick(&self.others);
                    at + self.rng.below(pages) * PAGE_SIZE
                } else {
                    self.rng.pick(&self.targets.foreign.clone())
                };
                let n = 1 + self.rng.below(3);
                let call = if self.rng.chance(50) {
                    HostCall::ReclaimHyp
                } else {
                    HostCall::UnshareHyp
                };
                let on_shared = self.rng.chance(30);
                self.expect_refused(call, &[page, n], on_shared)
            }
            // VM_CREATE on own pages.
            38..=43 => {
                let vcpus = 1 + self.rng.below(2);
                let protected = self.rng.chance(30);
                let mut config = VmConfig {
                    protected,
                    debug: self.rng.chance(20),
                    max_vcpus: vcpus,
                }
                .encode();
                let mut bad = false;
                // At its limit a worker asks only what must fail: 4 workers
                // x 3 VMs leave the hypervisor's 16 slots room for the
                // VMMs running guests beside them.
                if self.rng.chance(10) || self.vms.len() >= MAX_VMS {
                    config |= 1 << (16 + self.rng.below(48));
                    bad = true;
                }
                let n = VmConfig {
                    protected,
                    debug: false,
                    max_vcpus: vcpus,
                }
                .min_metadata_pages()
                    + self.rng.below(4);
                let (first, expect) = match self.host_run(n) {
                    Some(f) if self.vms.len() < MAX_VMS && !bad => (f, Expect::Succeed),
                    Some(f) if !bad => (f, Expect::Documented), // slots: NO_MEMORY, or ours
                    Some(f) => (f, Expect::Fail),
                    None => (self.rng.below(SLICE_PAGES - n), Expect::Documented),
                };
                let fits = self.all(first, n, Page::Host);
                let expect = if fits { expect } else { Expect::Fail };
                let out = self.call(HostCall::VmCreate, &[self.phys(first), n, config], expect)?;
                if code_of(&out) == 0 {
                    let handle = out[1];
                    if self.vms.len() >= MAX_VMS {
                        // Over our own limit: give it straight back.
                        self.set(first, n, Page::Vm(handle));
                        self.vms.push(Vm {
                            handle,
                            vcpus,
                            protected,
                            mapped: Vec::new(),
                            next_ipa: GUEST_RAM_BASE,
                        });
                        return self.destroy(self.vms.len() - 1);
                    }
                    self.set(first, n, Page::Vm(handle));
                    self.vms.push(Vm {
                        handle,
                        vcpus,
                        protected,
                        mapped: Vec::new(),
                        next_ipa: GUEST_RAM_BASE,
                    });
                    self.record_handles();
                }
                Ok(())
            }
            // VM_DONATE / VM_SHARE of own pages to own VMs.
            44..=53 if !self.vms.is_empty() => {
                let v = self.rng.below(self.vms.len() as u64) as usize;
                let share = self.rng.chance(30);
                let want = 1 + self.rng.below(4);
                let (first, n) = match self.host_run(want) {
                    Some(f) if self.rng.chance(85) => (f, want),
                    _ => self.run_of(3),
                };
                let (ipa, fresh) = {
                    let vm = &self.vms[v];
                    match self.rng.below(10) {
                        0 if !vm.mapped.is_empty() => (vm.mapped[0].0, false),
                        1 => (vm.next_ipa + 8, false),
                        2 => (1 << 52, false),
                        _ => (vm.next_ipa, true),
                    }
                };
                let vm = &self.vms[v];
                let expect = if self.all(first, n, Page::Host) && fresh && !(share && vm.protected)
                {
                    Expect::Succeed
                } else if !fresh || !self.all(first, n, Page::Host) || (share && vm.protected) {
                    Expect::Fail
                } else {
                    Expect::Documented
                };
                let handle = vm.handle;
                if expect == Expect::Succeed {
                    self.program(first, n, ipa == GUEST_RAM_BASE);
                }
                let call = if share {
                    HostCall::VmShare
                } else {
                    HostCall::VmDonate
                };
                let out = self.call(call, &[handle, self.phys(first), n, ipa], expect)?;
                if code_of(&out) == 0 {
                    self.set(
                        first,
                        n,
                        if share {
                            Page::VmShared(handle)
                        } else {
                            Page::Vm(handle)
                        },
                    );
                    let vm = &mut self.vms[v];
                    vm.mapped.push((ipa, n));
                    vm.next_ipa = ipa + n * PAGE_SIZE;
                }
                Ok(())
            }
            // vCPU calls on own VMs (lenient: only documented codes, and
            // what can never succeed).
            54..=69 if !self.vms.is_empty() => {
                let v = self.rng.below(self.vms.len() as u64) as usize;
                let (handle, vcpus) = (self.vms[v].handle, self.vms[v].vcpus);
                let vcpu = if self.rng.chance(90) {
                    self.rng.below(vcpus)
                } else {
                    vcpus + self.rng.below(1 << 20)
                };
                let bad_vcpu = vcpu >= vcpus;
                match self.rng.below(5) {
                    0 => {
                        self.call(
                            HostCall::VcpuCreate,
                            &[handle, vcpu],
                            if bad_vcpu {
                                Expect::Fail
                            } else {
                                Expect::Documented
                            },
                        )?;
                    }
                    1 => {
                        let pc = if self.rng.chance(80) {
                            GUEST_RAM_BASE
                        } else {
                            self.rng.next()
                        };
                        let x0 = self.rng.next();
                        self.call(
                            HostCall::VcpuSetRegs,
                            &[handle, vcpu, pc, x0],
                            if bad_vcpu {
                                Expect::Fail
                            } else {
                                Expect::Documented
                            },
                        )?;
                    }
                    2 => {
                        let intid = if self.rng.chance(80) {
                            self.rng.below(1020)
                        } else {
                            1020 + self.rng.below(1 << 30)
                        };
                        let expect = if bad_vcpu || intid >= 1020 {
                            Expect::Fail
                        } else {
                            Expect::Documented
                        };
                        self.call(HostCall::VcpuInject, &[handle, vcpu, intid], expect)?;
                    }
                    3 => {
                        let mut args = [0u64; 13];
                        args[0] = handle;
                        for a in args.iter_mut().skip(1) {
                            *a = self.rng.next();
                        }
                        self.call(HostCall::VmSetSignature, &args, Expect::Documented)?;
                    }
                    _ => {
                        // VCPU_RUN, often on the shared channel: a request in
                        // flight there while the others ring its doorbell.
                        let on_shared = self.rng.chance(50);
                        let value = self.rng.next();
                        let regs =
                            self.regs(u64::from(HostCall::VcpuRun.id()), &[handle, vcpu, value]);
                        let (out, busy) = self.request(on_shared, regs)?;
                        if !busy {
                            check(
                                &out,
                                if on_shared {
                                    Expect::Shared
                                } else if bad_vcpu {
                                    Expect::Fail
                                } else {
                                    Expect::Documented
                                },
                            )?;
                            if !on_shared && code_of(&out) == 0 && !(1..=7).contains(&out[1]) {
                                return Err(format!(
                                    "VCPU_RUN returned exit reason {} (documented: 1..7)",
                                    out[1]
                                ));
                            }
                        }
                    }
                }
                Ok(())
            }
            // VM_DESTROY of an own VM: every page comes back zeroed.
            70..=73 if !self.vms.is_empty() => {
                let v = self.rng.below(self.vms.len() as u64) as usize;
                self.destroy(v)
            }
            // Stale and forged handles: every VM call must fail.
            70..=79 => {
                let h = self.dead_handle();
                let call = self.rng.pick(&[
                    HostCall::VmDestroy,
                    HostCall::VmDestroy,
                    HostCall::VcpuCreate,
                    HostCall::VcpuSetRegs,
                    HostCall::VcpuRun,
                    HostCall::VcpuInject,
                    HostCall::VmSetSignature,
                    HostCall::VmDonate,
                    HostCall::VmShare,
                ]);
                let page = self.rng.below(SLICE_PAGES);
                let own_page = self.phys(page);
                let args = match call {
                    HostCall::VmDonate | HostCall::VmShare => vec![h, own_page, 1, GUEST_RAM_BASE],
                    _ => vec![h, self.rng.below(2), self.rng.below(1020)],
                };
                // Never VM_DESTROY on the shared channel: mixed with another
                // worker's registers it could name that worker's live VM.
                let on_shared = self.rng.chance(40)
                    && !matches!(
                        call,
                        HostCall::VmDonate | HostCall::VmShare | HostCall::VmDestroy
                    );
                self.expect_refused(call, &args, on_shared)
            }
            // Calls that change nothing, and unknown function IDs.
            80..=91 => {
                let on_shared = self.rng.chance(50);
                // ORACLE_CHECK (4) a quarter as often: with the oracle it walks
                // every table.
                let pick = match self.rng.below(6) {
                    4 if !self.rng.chance(25) => 0,
                    p => p,
                };
                let (id, args, expect): (u64, Vec<u64>, Expect) = match pick {
                    0 => (
                        u64::from(HostCall::Version.id()) | (self.rng.next() << 32),
                        vec![],
                        Expect::Exactly(0),
                    ),
                    1 => {
                        let (f, known) = self.some_id();
                        (
                            u64::from(HostCall::Features.id()),
                            vec![f],
                            if known {
                                Expect::Exactly(0)
                            } else {
                                Expect::Exactly(Error::NotSupported.code())
                            },
                        )
                    }
                    2 => (
                        u64::from(HostCall::VmList.id()),
                        vec![if self.rng.chance(50) {
                            0
                        } else {
                            self.rng.next()
                        }],
                        Expect::Exactly(0),
                    ),
                    3 => (
                        u64::from(HostCall::AttestationKey.id()),
                        vec![],
                        Expect::Documented,
                    ),
                    4 => (u64::from(ORACLE_CHECK), vec![], Expect::Documented),
                    _ => {
                        let (f, known) = self.some_id();
                        if known {
                            (
                                u64::from(HostCall::Version.id()),
                                vec![],
                                Expect::Exactly(0),
                            )
                        } else {
                            // Garbage IDs go to the own channel only; on the
                            // shared one an unknown ID near the host calls.
                            let f = if on_shared {
                                u64::from(HostCall::Version.id()) + 0x40 + self.rng.below(0xC0)
                            } else {
                                f
                            };
                            (
                                f | (self.rng.next() << 32),
                                vec![],
                                Expect::Exactly(Error::NotSupported.code()),
                            )
                        }
                    }
                };
                let regs = self.regs(id, &args);
                let (out, busy) = self.request(on_shared, regs)?;
                if busy {
                    return Ok(());
                }
                if on_shared {
                    // Another worker's request may have been made instead.
                    return check(&out, Expect::Shared);
                }
                check(&out, expect)?;
                if pick == 0 && (out[1], out[2]) != (ABI_VERSION_MAJOR, ABI_VERSION_MINOR) {
                    return Err(format!("VERSION said {}.{}", out[1], out[2]));
                }
                if pick == 4 && code_of(&out) == 0 && out[1] != 0 {
                    return Err(format!(
                        "ORACLE_CHECK reports {} invariant violations",
                        out[1]
                    ));
                }
                Ok(())
            }
            // Accesses a channel must refuse.
            92..=95 => {
                let what = self.rng.below(5);
                self.history.push_back(format!(
                    "#{} refused access of kind {what} to the own channel",
                    self.index
                ));
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
                if bad_access(self.control, self.own, what) {
                    self.slot.refused.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                } else {
                    Err(format!(
                        "a malformed control-page access (kind {what}) was not refused"
                    ))
                }
            }
            // A burst on the shared channel: VERSION, racing with the rest.
            _ => {
                for _ in 0..4 {
                    let regs = self.regs(u64::from(HostCall::Version.id()), &[]);
                    let (out, busy) = self.request(true, regs)?;
                    if !busy {
                        check(&out, Expect::Shared)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// A function ID: a host call (known) or a number near them (unknown).
    fn some_id(&mut self) -> (u64, bool) {
        let f = if self.rng.chance(50) {
            u64::from(HostCall::Version.id()) + self.rng.below(0x40)
        } else {
            u64::from(self.rng.next() as u32)
        };
        #[allow(clippy::cast_possible_truncation, reason = "w0")]
        let w = f as u32;
        if w == ORACLE_CHECK {
            return (u64::from(HostCall::Version.id()), true);
        }
        (f, HostCall::try_from(w).is_ok())
    }

    /// Writes a small guest program (or garbage) into pages about to be
    /// given to a VM.
    fn program(&mut self, first: u64, n: u64, entry: bool) {
        for p in first..first + n {
            self.fill(p);
        }
        if !entry {
            return;
        }
        // MOVZ/MOVK x0 = PSCI_SYSTEM_OFF; HVC #0; B .
        let off: [u32; 4] = [0xD280_0100, 0xF2B0_8000, 0xD400_0002, 0x1400_0000];
        // MOVZ x2, #UART; STR w1, [x2] (an MMIO exit); then `off`.
        let uart = [
            0xD2A0_0002 | (((GUEST_UART_BASE >> 16) as u32) << 5),
            0xB900_0041,
        ];
        let mut words: Vec<u32> = match self.rng.below(5) {
            0 => off.to_vec(),
            1 => uart.iter().chain(off.iter()).copied().collect(),
            2 => vec![0x1400_0000, 0x1400_0000], // B . (runs to the host's tick)
            3 => vec![0xD503_207F, 0x17FF_FFFF], // WFI; B .-4
            _ => (0..16).map(|_| self.rng.next() as u32).collect(), // garbage
        };
        if words.len() % 2 == 1 {
            words.push(0x1400_0000);
        }
        let at = self.offset(first);
        for (i, pair) in words.chunks(2).enumerate() {
            self.pool
                .write_u64(at + 8 * i, u64::from(pair[0]) | (u64::from(pair[1]) << 32));
        }
    }

    /// VM_DESTROY of own VM `v`: must succeed (nothing of ours runs it
    /// now), and every page it held must come back zeroed.
    fn destroy(&mut self, v: usize) -> Step {
        let handle = self.vms[v].handle;
        // BUSY only while a vCPU runs: another worker's VCPU_RUN on the
        // shared channel may have taken our handle from mixed registers.
        for _ in 0..1000 {
            let out = self.call(HostCall::VmDestroy, &[handle], Expect::Documented)?;
            match code_of(&out) {
                0 => break,
                c if c == Error::Busy.code() => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                c => {
                    return Err(format!(
                        "VM_DESTROY of a live VM of ours answered {}",
                        code_name(c)
                    ));
                }
            }
        }
        let pages: Vec<u64> = (0..SLICE_PAGES)
            .filter(|&p| self.pages[p as usize] == Page::Vm(handle))
            .collect();
        for p in 0..SLICE_PAGES as usize {
            if matches!(self.pages[p], Page::Vm(h) | Page::VmShared(h) if h == handle) {
                self.pages[p] = Page::Host;
            }
        }
        self.vms.remove(v);
        self.stale.push(handle);
        self.record_handles();
        self.zeroed(&pages, "VM_DESTROY")
    }

    /// Gives everything back: destroys the worker's VMs, reclaims and
    /// unshares its pages.
    fn clean_up(&mut self) -> Step {
        while !self.vms.is_empty() {
            self.destroy(0)?;
        }
        for p in 0..SLICE_PAGES {
            match self.pages[p as usize] {
                Page::DonatedHyp => {
                    self.call(HostCall::ReclaimHyp, &[self.phys(p), 1], Expect::Exactly(0))?;
                    self.pages[p as usize] = Page::Host;
                    self.zeroed(&[p], "RECLAIM_HYP")?;
                }
                Page::SharedHyp => {
                    self.call(HostCall::UnshareHyp, &[self.phys(p), 1], Expect::Exactly(0))?;
                    self.pages[p as usize] = Page::Host;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn report(&self, what: &str) {
        let mut text = format!(
            "rampart-fuzz: UNEXPECTED seed={} proc={} index={}: {what}\nrampart-fuzz: its last requests (proc {}):\n",
            self.seed, self.id, self.index, self.id
        );
        for l in &self.history {
            let _ = writeln!(text, "rampart-fuzz:   {l}");
        }
        eprint!("{text}");
    }

    fn run(&mut self, calls: u64) -> bool {
        while self.index < calls {
            if let Err(e) = self.step() {
                self.report(&e);
                let _ = self.clean_up();
                return false;
            }
            self.index += 1;
            self.slot.calls.store(self.index, Ordering::Relaxed);
        }
        if let Err(e) = self.clean_up() {
            self.report(&format!("cleaning up: {e}"));
            return false;
        }
        true
    }
}

/// Checks an answer against what it must be.
fn check(out: &[u64; REGS], expect: Expect) -> Step {
    let code = code_of(out);
    if expect == Expect::Shared && (0xC600_8000..=0xC600_8FFF).contains(&(out[0] as u32)) {
        return Ok(());
    }
    if !documented(code) {
        return Err(format!(
            "x0 = {code:#x}: not a result code docs/abi.md documents"
        ));
    }
    let ok = match expect {
        Expect::Documented | Expect::Shared => true,
        Expect::Fail => code != 0,
        Expect::Succeed => code == 0 || code == Error::NoMemory.code(),
        Expect::Exactly(c) => code == c,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("answered {}, expected {expect:?}", code_name(code)))
    }
}

/// The worker seeds: distinct, from the run's seed.
const fn worker_seed(seed: u64, i: usize) -> u64 {
    seed ^ (0xA076_1D64_78BD_642F_u64.wrapping_mul(i as u64 + 1))
}

/// RAM banks from the device tree's `/memory*` nodes.
fn ram_banks(root: &std::path::Path) -> Vec<crate::dt::PhysRange> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(root) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name == "memory" || name.starts_with("memory@"))
            && let Ok(reg) = std::fs::read(e.path().join("reg"))
        {
            out.extend(crate::dt::parse_reg(&reg, 2, 2).unwrap_or_default());
        }
    }
    out
}

/// `rampart-fuzz`: the whole run. Returns whether nothing unexpected
/// happened.
///
/// # Errors
///
/// If Rampart cannot be reached or the workers cannot start.
#[allow(clippy::too_many_lines, reason = "the run, step by step")]
pub fn run(env: &Env, o: Options) -> Result<bool> {
    let procs = usize::try_from(o.procs.max(1))?;
    let session = Session::open(
        env,
        SLICE_PAGES * procs as u64,
        o.procs + 1,
        None,
        "rampart-fuzz",
    )?;
    let channels = session.entry.channel_list();
    if channels.len() < 2 {
        bail!("rampart-fuzz needs at least two free channels, got {channels:?}");
    }
    let procs = procs.min(channels.len() - 1);
    let shared = channels[channels.len() - 1];
    let pool = session.map_region()?;
    let base = session.region_phys();
    let end = base + session.entry.pages * PAGE_SIZE;
    let p = &session.platform;
    println!(
        "rampart-fuzz: seed={} procs={procs} calls={} per process (worker processes); pool slice {base:#x}..{end:#x}, channels {:?} (shared: {shared})",
        o.seed,
        o.calls,
        &channels[..procs],
    );

    // Targets: the control pages and the carve-out pages just below them;
    // MMIO; beyond RAM. Foreign: pool and kernel pages outside ours.
    let mut never: Vec<u64> = (0..u64::from(p.channels))
        .map(|i| p.control.base + i * PAGE_SIZE)
        .collect();
    never.extend(
        (1..=4)
            .map(|i| p.control.base - i * PAGE_SIZE)
            .filter(|a| !(p.pool.base..p.pool.end()).contains(a)),
    );
    never.extend([0, 0x0800_0000, 0x0900_0000, 1 << 46, 0xFFFF_FFFF_FFFF_0000]);
    let mut foreign: Vec<u64> = Vec::new();
    let step = PAGE_SIZE * 61;
    let mut a = p.pool.base;
    while a < p.pool.end() {
        if a < base || a >= end {
            foreign.push(a);
        }
        a += step;
    }
    let root = crate::dt::root(&env.dt_roots)?;
    for bank in ram_banks(&root) {
        let mut a = bank.base;
        while a < bank.end() && foreign.len() < 4096 {
            if !(p.pool.base..p.pool.end()).contains(&a)
                && !(p.control.base..p.control.end()).contains(&a)
                && a < p.pool.base
            {
                foreign.push(a);
            }
            a += PAGE_SIZE * 4093;
        }
    }
    if foreign.is_empty() {
        foreign.push(1 << 46);
    }
    let targets = Targets { never, foreign };

    let board = Board::new(procs)?;
    let started = Instant::now();
    let mut children = Vec::new();
    for (i, &own) in channels.iter().enumerate().take(procs) {
        // SAFETY: fork(2); the child runs only this worker and _exit(2)s.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            install_bus_skip();
            let seed = worker_seed(o.seed, i);
            let mut w = Worker {
                id: i,
                seed: o.seed,
                rng: Rng(seed),
                control: &session.control,
                pool: &pool,
                own,
                shared,
                slice_phys: base + i as u64 * SLICE_PAGES * PAGE_SIZE,
                #[allow(clippy::cast_possible_truncation, reason = "a small slice")]
                slice_offset: (i as u64 * SLICE_PAGES * PAGE_SIZE) as usize,
                pages: vec![Page::Host; SLICE_PAGES as usize],
                vms: Vec::new(),
                stale: Vec::new(),
                targets: targets.clone(),
                history: VecDeque::new(),
                index: 0,
                slot: board.slot(i),
                session: &session,
                others: Vec::new(),
                next_read: 0,
            };
            let ok = w.run(o.calls);
            // SAFETY: leave without running the parent's destructors (the
            // session is the parent's to close).
            unsafe { libc::_exit(i32::from(!ok)) };
        }
        children.push(pid);
    }
    let mut failed = 0;
    for (i, pid) in children.iter().enumerate() {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(*pid, &raw mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            continue;
        }
        failed += 1;
        if libc::WIFSIGNALED(status) {
            eprintln!(
                "rampart-fuzz: UNEXPECTED seed={} proc={i} index={}: the worker was killed by signal {}",
                o.seed,
                board.slot(i).calls.load(Ordering::SeqCst),
                libc::WTERMSIG(status)
            );
        }
    }
    let elapsed = started.elapsed();

    // After a worker that died: destroy what it left, give pages back.
    install_bus_skip();
    let main = channels[0];
    let mut left = 0;
    for i in 0..procs {
        for h in &board.slot(i).handles {
            let handle = h.load(Ordering::SeqCst);
            if handle != 0 {
                let (out, _) = ring(
                    &session.control,
                    main,
                    &hregs(HostCall::VmDestroy, &[handle]),
                );
                left += u64::from(out[0] == 0);
            }
        }
    }
    if failed > 0 {
        for page in 0..session.entry.pages {
            for call in [HostCall::ReclaimHyp, HostCall::UnshareHyp] {
                let _ = ring(
                    &session.control,
                    main,
                    &hregs(call, &[base + page * PAGE_SIZE, 1]),
                );
            }
        }
    }
    // Every page of the allocation is the host's again: readable.
    #[allow(clippy::cast_possible_truncation, reason = "a small allocation")]
    let ((), faults) = armed(|| {
        for off in (0..(session.entry.pages * PAGE_SIZE) as usize).step_by(PAGE_SIZE as usize) {
            let _ = pool.read_u64(off);
        }
    });
    if failed == 0 && (left > 0 || faults > 0) {
        eprintln!(
            "rampart-fuzz: UNEXPECTED seed={}: after the workers, {left} VMs were live and {faults} pages not the host's",
            o.seed
        );
        failed += 1;
    }

    let calls: u64 = (0..procs)
        .map(|i| board.slot(i).calls.load(Ordering::SeqCst))
        .sum();
    let busy: u64 = (0..procs)
        .map(|i| board.slot(i).busy.load(Ordering::SeqCst))
        .sum();
    let refused: u64 = (0..procs)
        .map(|i| board.slot(i).refused.load(Ordering::SeqCst))
        .sum();
    let (oracle, _) = ring(&session.control, main, &hregs_id(ORACLE_CHECK, &[]));
    let oracle_text = match code_of(&oracle) {
        0 => {
            if oracle[1] != 0 {
                failed += 1;
            }
            format!(
                "oracle: {} violations, {} events checked",
                oracle[1], oracle[2]
            )
        }
        c if c == Error::NotSupported.code() => {
            "oracle: not built in (ORACLE_CHECK is NOT_SUPPORTED): crash checks only".to_string()
        }
        c => {
            failed += 1;
            format!("oracle: ORACLE_CHECK answered {}", code_name(c))
        }
    };
    let secs = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let rate = calls as f64 / secs.max(1e-9);
    println!(
        "rampart-fuzz: done seed={} procs={procs} calls={calls} in {secs:.1} s ({rate:.0} calls/s), {busy} refused as busy on the shared channel, {refused} malformed accesses refused, unexpected={failed}; {oracle_text}",
        o.seed
    );
    drop(pool);
    session.close();
    Ok(failed == 0)
}

fn hregs(call: HostCall, args: &[u64]) -> [u64; REGS] {
    hregs_id(call.id(), args)
}

fn hregs_id(id: u32, args: &[u64]) -> [u64; REGS] {
    let mut r = [0u64; REGS];
    r[0] = u64::from(id);
    r[1..=args.len()].copy_from_slice(args);
    r
}

/// Parses `--seed`: decimal or 0x hex.
///
/// # Errors
///
/// If it is neither.
pub fn parse_seed(s: &str) -> Result<u64> {
    let r = s
        .strip_prefix("0x")
        .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16));
    r.with_context(|| format!("bad seed {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_sequence_is_a_function_of_the_seed() {
        let a: Vec<u64> = {
            let mut r = Rng(worker_seed(7, 0));
            (0..8).map(|_| r.next()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng(worker_seed(7, 0));
            (0..8).map(|_| r.next()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng(worker_seed(7, 1));
            (0..8).map(|_| r.next()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn undocumented_codes_and_broken_predictions_are_unexpected() {
        let mut out = [0u64; REGS];
        assert!(check(&out, Expect::Succeed).is_ok());
        assert!(
            check(&out, Expect::Fail).is_err(),
            "a call that must fail succeeded"
        );
        out[0] = Error::NoMemory.code() as u64;
        assert!(check(&out, Expect::Succeed).is_ok());
        assert!(check(&out, Expect::Fail).is_ok());
        out[0] = Error::Denied.code() as u64;
        assert!(check(&out, Expect::Succeed).is_err());
        assert!(check(&out, Expect::Exactly(Error::NotSupported.code())).is_err());
        out[0] = (-4i64) as u64;
        assert!(
            check(&out, Expect::Documented)
                .unwrap_err()
                .contains("not a result code")
        );
        out[0] = u64::from(HostCall::Version.id());
        assert!(
            check(&out, Expect::Shared).is_ok(),
            "on the shared channel, another worker's unrung request"
        );
        out[0] = 0x5357_196f_485f_750b;
        assert!(check(&out, Expect::Shared).is_err());
        out[0] = u64::from(HostCall::Version.id());
        assert!(
            check(&out, Expect::Documented).is_err(),
            "a function ID left in x0"
        );
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("12").unwrap(), 12);
        assert_eq!(parse_seed("0x1f").unwrap(), 31);
        assert!(parse_seed("z").is_err());
    }
}
