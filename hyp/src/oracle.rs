//! The oracle (test builds only: cargo feature `oracle`, never a release
//! image; `docs/design.md`, "The oracle").
//!
//! Two checks against the executable specification in `crates/spec`:
//!
//! - **every event**: each host call (from `HVC` or a control-page
//!   doorbell) and each guest memory call is predicted from the abstract
//!   state before it runs; its real result must be one the contract allows,
//!   and on success the abstract state follows the predicted effect. Pages
//!   the contract says come back zeroed are read through the fixmap at once.
//! - **correspondence** ([`check_now`]: `RAMPART_HOST_ORACLE_CHECK`, and
//!   every [`CHECK_EVERY`] events): the ownership table, the host stage 2,
//!   every VM's stage 2 and its table pages, the EL2 stage 1, the SMMU
//!   mirror and the VM records are compared with the abstract state.
//!
//! Host calls run one at a time under the oracle's lock (so prediction and
//! result belong together), except `VCPU_RUN`, which never holds it: the
//! guest's own memory calls take it from the exit handler. The lock is
//! always taken first (before a VM's, a vCPU's or the host memory lock).
//! The abstract state lives in the carve-out's boot-sized part, one byte per
//! page after the ownership table; nothing here allocates.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aarch64_paging::paging::MemoryRegion;
use rampart_abi::host::HostCall;
use rampart_ownership::{PageState, Transition, VmId};
use rampart_platform::{MemRange, PAGE_SIZE};
use rampart_spec::{Effect, Page, Prediction, Spec, Violation};
use spin::mutex::SpinMutex;

use crate::config::MAX_CPUS;
use crate::println;

/// Bytes of abstract state per page of the RAM span (added to the
/// ownership table's share of the boot-sized part).
pub const BYTES_PER_PAGE: u64 = 1;

/// The build's default for the events between two automatic
/// correspondence checks: the build-time environment variable
/// `RAMPART_ORACLE_EVERY` (default 64; 0 = only on `ORACLE_CHECK`). The
/// command line's `rampart.oracle-every=K` overrides it
/// ([`set_check_every`]).
pub const DEFAULT_CHECK_EVERY: u64 = match option_env!("RAMPART_ORACLE_EVERY") {
    Some(s) => parse(s.as_bytes()),
    None => 64,
};

/// Events between two automatic correspondence checks (0: only on
/// `ORACLE_CHECK`).
static CHECK_EVERY: AtomicU64 = AtomicU64::new(DEFAULT_CHECK_EVERY);

/// Boot: `rampart.oracle-every=K` from the command line, if given.
pub fn set_check_every(every: Option<u64>) {
    if let Some(k) = every {
        CHECK_EVERY.store(k, Ordering::Relaxed);
    }
}

/// Whether `since` events since the last check call for another.
fn check_due(since: u64) -> bool {
    let every = CHECK_EVERY.load(Ordering::Relaxed);
    every != 0 && since >= every
}

const fn parse(s: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < s.len() {
        v = v * 10 + (s[i] - b'0') as u64;
        i += 1;
    }
    v
}

// The specification's VM slots are the hypervisor's.
const _: () = assert!(rampart_spec::MAX_VMS == crate::vm::MAX_VMS);

/// Violations printed in full; the rest are counted.
const PRINTED: u64 = 32;

struct Oracle {
    spec: Spec<'static>,
    ready: bool,
    since_check: u64,
    /// The first `ATTESTATION_KEY` answer (`x0`..`x4`): every later one
    /// must be the same.
    key: Option<[u64; 5]>,
}

static ORACLE: SpinMutex<Oracle> = SpinMutex::new(Oracle {
    spec: Spec::empty(&mut []),
    ready: false,
    since_check: 0,
    key: None,
});

/// The oracle's lock, held by a `VCPU_RUN` from its prediction until it
/// enters the guest ([`entering`]), so the hypervisor's decisions before
/// the guest runs (BUSY, the signature check, the power state) and the
/// specification's prediction see one state. Only the CPU holding the
/// lock can be in a run that has not entered yet, so one place suffices.
struct Held {
    cpu: usize,
    guard: spin::mutex::SpinMutexGuard<'static, Oracle>,
    prediction: Prediction,
}

static HELD: SpinMutex<Option<Held>> = SpinMutex::new(None);
/// Per CPU: its current `VCPU_RUN` entered the guest.
static ENTERED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: pages the call in flight gave back to the host that were not
/// zero at the moment of return ([`returning`]): the first few, and how
/// many.
struct Returned {
    nonzero: [u64; 8],
    count: usize,
}

static RETURNED: [SpinMutex<Returned>; MAX_CPUS] = [const {
    SpinMutex::new(Returned {
        nonzero: [0; 8],
        count: 0,
    })
}; MAX_CPUS];

/// Before a call: nothing returned yet.
fn returned_clear() {
    if let Some(r) = RETURNED.get(crate::cpu::current()) {
        r.lock().count = 0;
    }
}

/// The hypervisor gives `range` back to the host (`transition`), after
/// zeroing it and before the host stage 2 maps it again (one cfg'd line in
/// `memory.rs`): the host cannot reach the pages yet, so what they hold is
/// the hypervisor's doing alone. Notes every page that is not zero; the
/// call's check ([`settle`]) reports those the contract says come back
/// zeroed. Pages the host could reach before (a guest's pages shared with
/// it) are not read: the host may be writing them.
pub fn returning(m: &mut crate::memory::HostMemory, transition: Transition, range: MemRange) {
    if !matches!(
        transition,
        Transition::HypDonateHost
            | Transition::GuestRelinquish(_)
            | Transition::HostReclaimGuest(_)
            | Transition::HypReleaseVmMeta(_)
    ) {
        return;
    }
    let Some(slot) = RETURNED.get(crate::cpu::current()) else {
        return;
    };
    let mut r = slot.lock();
    let _ = m.with_pages(range, &mut |pa, bytes| {
        if bytes.iter().any(|&b| b != 0) {
            let at = r.count;
            if let Some(n) = r.nonzero.get_mut(at) {
                *n = pa;
            }
            r.count += 1;
        }
    });
}

/// Where the oracle's time goes (counter ticks), printed by [`check_now`]
/// as `oracle: cost ...`: full correspondence checks, the per-event checks
/// over the pages an event changed, the predictions, and the waits for
/// the oracle's lock.
struct Cost {
    checks: AtomicU64,
    check_ticks: AtomicU64,
    effects: AtomicU64,
    effect_ticks: AtomicU64,
    predict_ticks: AtomicU64,
    zero_ticks: AtomicU64,
    lock_wait_ticks: AtomicU64,
}

static COST: Cost = Cost {
    checks: AtomicU64::new(0),
    check_ticks: AtomicU64::new(0),
    effects: AtomicU64::new(0),
    effect_ticks: AtomicU64::new(0),
    predict_ticks: AtomicU64::new(0),
    zero_ticks: AtomicU64::new(0),
    lock_wait_ticks: AtomicU64::new(0),
};

fn now() -> u64 {
    crate::arch::cache::counter()
}

/// Adds the ticks since `start` to `to`.
fn spent(to: &AtomicU64, start: u64) {
    to.fetch_add(now().wrapping_sub(start), Ordering::Relaxed);
}

/// Takes the oracle's lock, counting the wait.
fn lock() -> spin::mutex::SpinMutexGuard<'static, Oracle> {
    let start = now();
    let guard = ORACLE.lock();
    spent(&COST.lock_wait_ticks, start);
    guard
}

/// Per CPU: the guest called `PSCI_CPU_OFF` during its current run.
static STOPPED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static EVENTS: AtomicU64 = AtomicU64::new(0);
static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

macro_rules! violation {
    ($($arg:tt)*) => {{
        let n = VIOLATIONS.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED {
            println!("oracle: VIOLATION at event {}: {}", EVENTS.load(Ordering::Relaxed), format_args!($($arg)*));
        }
    }};
}

/// Boot: the abstract state starts as the contract says boot leaves the
/// machine (the host owns RAM but the carve-out). `bytes` is the oracle's
/// share of the boot-sized part.
pub fn init(bytes: &'static mut [u8], ram: &[MemRange], carveout: [MemRange; 2], ipa_bits: u32) {
    let mut banks = [(0u64, 0u64); rampart_spec::MAX_BANKS];
    for (b, r) in banks.iter_mut().zip(ram) {
        *b = (r.start(), r.end());
    }
    let count = ram.len().min(banks.len());
    let mut o = ORACLE.lock();
    let ok = o.spec.init(
        bytes,
        &banks[..count],
        carveout.map(|c| (c.start(), c.end())),
        ipa_bits,
    );
    o.ready = ok;
    if ok {
        println!(
            "test build (oracle): every host call, guest call and exit is checked against the specification; correspondence every {} events (0: only on ORACLE_CHECK)",
            CHECK_EVERY.load(Ordering::Relaxed)
        );
    } else {
        println!(
            "oracle: cannot follow this machine's RAM ({} banks); oracle off",
            ram.len()
        );
    }
}

/// Runs host call `regs` through `run` with the specification beside it.
pub fn host_call(regs: &mut [u64; 18], run: fn(&mut [u64; 18])) {
    #[allow(clippy::cast_possible_truncation, reason = "the function ID is w0")]
    let function = regs[0] as u32;
    if function == HostCall::OracleCheck.id() {
        let (violations, events) = check_now();
        regs[..4].copy_from_slice(&[rampart_abi::error::SUCCESS as u64, violations, events, 0]);
        return;
    }
    if function == HostCall::VcpuRun.id() {
        return vcpu_run(regs, run);
    }
    let mut o = lock();
    if !o.ready {
        drop(o);
        return run(regs);
    }
    let sent = *regs;
    // Every pool user takes the oracle's lock first: this holds for the call.
    o.spec.set_pool(Some(crate::mm::pool_available()));
    // Sealed swap: the page VM_EVICT names, for a VM whose layout the
    // specification lost.
    o.spec.set_swap_pa((function == HostCall::VmEvict.id()).then(|| crate::swap::oracle_translate(sent[1], sent[2])).flatten());
    let start = now();
    let prediction = o.spec.predict_host(&sent);
    spent(&COST.predict_ticks, start);
    returned_clear();
    run(regs);
    let name = HostCall::try_from(function).map_or("unknown", HostCall::name);
    if function == HostCall::AttestationKey.id() {
        let got = [regs[0], regs[1], regs[2], regs[3], regs[4]];
        if *o.key.get_or_insert(got) != got {
            violation!("ATTESTATION_KEY answered {got:x?}, earlier {:x?}", o.key);
        }
    }
    // Migration (issue 14): what the stream made of an imported VM, which
    // the specification cannot open.
    let imports = function == HostCall::VmImport.id() || function == HostCall::VmImportData.id();
    let handle = if function == HostCall::VmImport.id() { regs[1] } else { sent[1] };
    o.spec.set_imported((imports && regs[0] == 0).then(|| crate::migrate::oracle_imported(handle)).flatten());
    settle(&mut o, &prediction, regs[0] as i64, [regs[1], regs[2]], &mut |v| {
        violation!(
            "host call {name} ({:#x}, {:#x}, {:#x}, {:#x}): {v}",
            sent[1],
            sent[2],
            sent[3],
            sent[4]
        );
    });
}

/// A store of `page` to control channel `channel`'s `BIND` register, made
/// by `run` (`hyp/src/control.rs`), with the specification beside it. The
/// caller holds the channel's lock (taken before the oracle's, as on the
/// call-page path into [`host_call`]).
pub fn bind(
    channel: usize,
    page: u64,
    run: &mut dyn FnMut() -> Result<(), rampart_abi::Error>,
) -> Result<(), rampart_abi::Error> {
    let mut o = ORACLE.lock();
    if !o.ready {
        drop(o);
        return run();
    }
    let prediction = o.spec.predict_bind(channel, page);
    let result = run();
    let x0 = match result {
        Ok(()) => 0,
        Err(e) => e.code(),
    };
    settle(&mut o, &prediction, x0, [0, 0], &mut |v| {
        violation!("control channel {channel} BIND({page:#x}): {v}");
    });
    result
}

/// `VCPU_RUN`: predicted and claimed under the lock, which the run keeps
/// until it enters the guest ([`entering`]); checked after the exit.
fn vcpu_run(regs: &mut [u64; 18], run: fn(&mut [u64; 18])) {
    let mut o = lock();
    if !o.ready {
        drop(o);
        return run(regs);
    }
    let sent = *regs;
    let prediction = o.spec.predict_host(&sent);
    let claimed = o.spec.claim(&prediction);
    let cpu = crate::cpu::current();
    let (Some(entered), Some(stopped)) = (ENTERED.get(cpu), STOPPED.get(cpu)) else {
        drop(o);
        return run(regs);
    };
    entered.store(false, Ordering::Relaxed);
    stopped.store(false, Ordering::Relaxed);
    *HELD.lock() = Some(Held {
        cpu,
        guard: o,
        prediction,
    });
    run(regs);
    // Still held: the run never entered the guest.
    // (HELD's own lock is dropped before the oracle's is taken: a CPU
    // holding the oracle's waits for HELD's.)
    // Only this CPU's: another CPU may have put its own there since.
    let still = {
        let mut held = HELD.lock();
        if held.as_ref().is_some_and(|h| h.cpu == cpu) {
            held.take()
        } else {
            None
        }
    };
    let mut o = match still {
        Some(held) => held.guard,
        None => lock(),
    };
    EVENTS.fetch_add(1, Ordering::Relaxed);
    let (went_in, off) = (
        entered.load(Ordering::Relaxed),
        stopped.load(Ordering::Relaxed),
    );
    if let Err(v) = o
        .spec
        .finish_run(&prediction, regs[0] as i64, regs[1], went_in, off)
    {
        violation!(
            "host call RAMPART_HOST_VCPU_RUN ({:#x}, {:#x}) returned {} with exit {} (entered: {went_in}, CPU_OFF: {off}): {}",
            sent[1],
            sent[2],
            regs[0] as i64,
            regs[1],
            Shown(&v, &prediction)
        );
    }
    if claimed {
        o.spec.release(&prediction, sent[1]);
    }
    // A run changes no ownership: it does not count towards the next
    // correspondence check (a guest that exits often would make them
    // dominate).
}

/// The hypervisor enters the guest for the `VCPU_RUN` this CPU is making
/// (its point of no return: nothing is refused after it): the
/// specification takes the run's effect and the lock is released, so the
/// guest's own calls can take it.
pub fn entering() {
    let cpu = crate::cpu::current();
    let mut held = HELD.lock();
    if held.as_ref().is_some_and(|h| h.cpu == cpu)
        && let Some(mut h) = held.take()
    {
        drop(held);
        h.guard.spec.enter(&h.prediction);
        if let Some(e) = ENTERED.get(cpu) {
            e.store(true, Ordering::Relaxed);
        }
    }
}

/// A violation with the prediction it broke, for the console.
struct Shown<'a>(&'a Violation, &'a Prediction);

impl core::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self.0 {
            Violation::Result { got, allowed } => write!(
                f,
                "returned {got}, the contract allows {allowed} (on success: {:?})",
                self.1.effect
            ),
            Violation::Handle { got } => {
                write!(
                    f,
                    "VM_CREATE returned handle {got:#x}, which no free slot gives"
                )
            }
            Violation::Value {
                register,
                got,
                want,
            } => write!(f, "x{register} = {got:#x}, the contract says {want:#x}"),
            Violation::Run { what, exit } => write!(f, "{what} (exit {exit})"),
            Violation::Imported { slot } => write!(
                f,
                "the VM imported into slot {slot} holds a configuration or vCPUs its stream could not make"
            ),
        }
    }
}

/// Runs guest call `regs` from vCPU `index` of the VM in `slot` through
/// `run`: every call is checked against the specification.
pub fn guest_call<T>(
    slot: usize,
    index: usize,
    regs: &mut [u64; 31],
    run: impl FnOnce(&mut [u64; 31]) -> T,
) -> T {
    use rampart_abi::guest::GuestCall as G;
    #[allow(clippy::cast_possible_truncation, reason = "the function ID is w0")]
    let function = regs[0] as u32;
    let mut o = lock();
    if !o.ready {
        drop(o);
        return run(regs);
    }
    let args = [regs[1], regs[2], regs[3]];
    let concrete = crate::vm::VMS.get(slot).and_then(|m| {
        m.lock()
            .as_ref()
            .and_then(|vm| crate::vm::translate(vm, args[0]))
    });
    let rng = crate::BOOT.get().is_some_and(|b| b.config.features.rng);
    o.spec.set_pool(Some(crate::mm::pool_available()));
    let start = now();
    let prediction = o
        .spec
        .predict_guest_call(slot, index, function, args, concrete, rng);
    spent(&COST.predict_ticks, start);
    returned_clear();
    let out = run(regs);
    if let Some(prediction) = prediction {
        let name = G::try_from(function).map_or("unknown", G::name);
        // CPU_OFF exits with the guest's x0 as it was: its effect applies.
        let off = G::try_from(function) == Ok(G::CpuOff);
        if off && let Some(s) = STOPPED.get(crate::cpu::current()) {
            s.store(true, Ordering::Relaxed);
        }
        let x0 = if off { 0 } else { regs[0] as i64 };
        settle(&mut o, &prediction, x0, [regs[1], 0], &mut |v| {
            violation!(
                "guest call {name} ({:#x}, {:#x}) from vCPU {index} of VM slot {slot}: {v}",
                args[0],
                args[1]
            );
        });
    }
    out
}

/// After a call: zero check, then the result and effect, then perhaps the
/// correspondence check.
/// issue 12: a realm's `RSI_IPA_STATE_SET` from `base`, run under the
/// oracle's lock (taken before the VM's, as for every guest call), so no
/// correspondence check sees the pages moved before the specification does.
/// `run` makes the change and returns the bitmap of granules it moved (bit
/// i: `base + i` pages); `pa_of` gives the page now at a guest address.
/// `shared`: RAM -> EMPTY (`to` is the alias).
pub fn realm_ipa_state_set<T>(
    slot: usize,
    base: u64,
    shared_bit: u64,
    shared: bool,
    run: impl FnOnce() -> (T, u64),
    pa_of: impl Fn(u64) -> Option<u64>,
) -> T {
    let mut o = ORACLE.lock();
    if !o.ready {
        drop(o);
        return run().0;
    }
    let (out, moved) = run();
    for i in (0..64u64).filter(|i| moved & (1 << i) != 0) {
        let ipa = base + i * PAGE_SIZE;
        let (from, to) = if shared { (ipa, ipa | shared_bit) } else { (ipa | shared_bit, ipa) };
        let Some(pa) = pa_of(to) else {
            violation!("RSI_IPA_STATE_SET {from:#x} -> {to:#x} of VM slot {slot}: nothing mapped at {to:#x} afterwards");
            continue;
        };
        EVENTS.fetch_add(1, Ordering::Relaxed);
        match o.spec.realm_ripas_moved(slot, from, to, pa, shared) {
            Some(prediction) => {
                if let Err(v) = o.spec.commit(&prediction, 0, 0) {
                    violation!("RSI_IPA_STATE_SET {from:#x} -> {to:#x} (page {pa:#x}) of VM slot {slot}: {}", Shown(&v, &prediction));
                }
                check_effect(&o.spec, &prediction.effect, &Ranges::new());
                o.since_check += 1;
            }
            None => violation!(
                "RSI_IPA_STATE_SET {from:#x} -> {to:#x} (page {pa:#x}) of VM slot {slot}: the specification does not have that page there in that state"
            ),
        }
    }
    // Once every move is known.
    if check_due(o.since_check) {
        correspondence(&mut o);
    }
    out
}

fn settle(
    o: &mut Oracle,
    prediction: &Prediction,
    x0: i64,
    [x1, x2]: [u64; 2],
    report: &mut dyn FnMut(&dyn core::fmt::Display),
) {
    EVENTS.fetch_add(1, Ordering::Relaxed);
    let start = now();
    // The VM this answer destroyed, if any (VM_DESTROY, the export's last
    // call, a refused import): its pages must come back zeroed.
    let destroyed = o.spec.destroyed_by(prediction, x0, x2);
    if (x0 == 0 && prediction.allowed.allows_success()) || destroyed.is_some() {
        // Pages noted at the moment they went back ([`returning`]).
        let (nonzero, count) = RETURNED
            .get(crate::cpu::current())
            .map_or(([0; 8], 0), |r| {
                let r = r.lock();
                (r.nonzero, r.count)
            });
        let mut reported = false;
        o.spec
            .must_be_zero(&prediction.effect, &mut |start, pages| {
                let end = start.saturating_add(pages.saturating_mul(PAGE_SIZE));
                for &pa in nonzero.iter().take(count) {
                    if (start..end).contains(&pa) && !reported {
                        reported = true;
                        report(&format_args!(
                            "page {pa:#x} returned to the host is not zero ({count} such pages)"
                        ));
                    }
                }
            });
    }
    spent(&COST.zero_ticks, start);
    // A VM's teardown changes only the pages it held: noted before the
    // commit forgets whose they were.
    let mut held = Ranges::new();
    if let Some(slot) = destroyed {
        o.spec.vm_pages(slot, &mut |start, pages| {
            held.add(start, start.saturating_add(pages.saturating_mul(PAGE_SIZE)));
        });
    }
    if let Err(v) = o.spec.commit_call(prediction, x0, x1, x2) {
        report(&Shown(&v, prediction));
    }
    if destroyed.is_some() {
        check_effect(&o.spec, &Effect::DestroyVm { slot: 0 }, &held);
    } else if x0 == 0 {
        check_effect(&o.spec, &prediction.effect, &held);
    }
    // Only events that may change the abstract state count towards the next
    // correspondence check: a guest spinning on PSCI or SMCCC queries would
    // otherwise make the checks dominate its run.
    if !matches!(
        prediction.effect,
        Effect::None | Effect::Value { .. } | Effect::List { .. }
    ) {
        o.since_check += 1;
    }
    if check_due(o.since_check) {
        correspondence(o);
    }
}

/// `RAMPART_HOST_ORACLE_CHECK`: the correspondence check now; returns
/// (violations, events) since boot.
pub fn check_now() -> (u64, u64) {
    let mut o = lock();
    if o.ready {
        correspondence(&mut o);
    }
    let (v, e) = (
        VIOLATIONS.load(Ordering::Relaxed),
        EVENTS.load(Ordering::Relaxed),
    );
    println!("oracle: checked {e} events, {v} violations");
    let ms = |t: &AtomicU64| {
        t.load(Ordering::Relaxed).saturating_mul(1000)
            / crate::arch::cache::counter_frequency().max(1)
    };
    println!(
        "oracle: cost checks={} check_ms={} effect_checks={} effect_ms={} predict_ms={} zero_ms={} lock_wait_ms={}",
        COST.checks.load(Ordering::Relaxed),
        ms(&COST.check_ticks),
        COST.effects.load(Ordering::Relaxed),
        ms(&COST.effect_ticks),
        ms(&COST.predict_ticks),
        ms(&COST.zero_ticks),
        ms(&COST.lock_wait_ticks)
    );
    (v, e)
}

/// The ownership table's state a page in abstract state `page` must have.
fn expected(page: Page, state: PageState) -> bool {
    let id = |s: u8| VmId(u16::from(s) + 1);
    match page {
        Page::Host => state == PageState::HostOwned,
        Page::HostSharedHyp => state == PageState::HostSharedWithHyp { pins: 0 },
        Page::HostPinnedHyp => matches!(state, PageState::HostSharedWithHyp { pins } if pins > 0),
        Page::HostSharedVm(s) => state == PageState::HostSharedWithGuest(id(s)),
        Page::HypOwn | Page::HypDonated => state == PageState::HypOwned,
        Page::VmMeta(s) => state == PageState::HypOwnedForVm(id(s)),
        Page::Vm(s) => state == PageState::GuestOwned(id(s)),
        Page::VmSharedHost(s) => state == PageState::GuestSharedWithHost(id(s)),
    }
}

/// Leaf ranges a table maps in `[start, end)`, and every next-level table
/// it points to, with `f(is_table, start, end, output)`.
fn walk<T, R>(
    table: &aarch64_paging::Mapping<T, R>,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(bool, u64, u64, u64),
) where
    T: aarch64_paging::paging::Translation<R::Attributes>,
    R: aarch64_paging::paging::TranslationRegime<Asid = (), VaRange = ()>,
{
    let region = MemoryRegion::new(start as usize, end as usize);
    let _ = table.walk_range(&region, &mut |mr, desc, level| {
        if desc.is_valid() {
            let is_table = level < 3 && desc.is_table_or_page();
            f(
                is_table,
                mr.start().0 as u64,
                mr.end().0 as u64,
                desc.output_address().0 as u64,
            );
        }
        Ok(())
    });
}

/// Calls `note(lo, hi, mapped)` for `[start, end)` cut into ranges that
/// `table` maps (leaf by leaf) or does not map (each gap), in order;
/// `on_table(pa)` for every table page the walk passes through.
fn for_each_run<T, R>(
    table: &aarch64_paging::Mapping<T, R>,
    start: u64,
    end: u64,
    note: &mut dyn FnMut(u64, u64, bool),
    on_table: &mut dyn FnMut(u64),
) where
    T: aarch64_paging::paging::Translation<R::Attributes>,
    R: aarch64_paging::paging::TranslationRegime<Asid = (), VaRange = ()>,
{
    let mut cursor = start;
    walk(table, start, end, &mut |is_table, s, e, out| {
        if is_table {
            on_table(out);
            return;
        }
        let (s, e) = (s.max(start), e.min(end));
        if cursor < s {
            note(cursor, s, false);
        }
        if s < e {
            note(s, e, true);
        }
        cursor = cursor.max(e);
    });
    if cursor < end {
        note(cursor, end, false);
    }
}

/// The correspondence check (cost: a few table lookups and stage-2 walks
/// per page of RAM, plus each VM's stage 2; tens of milliseconds per GiB
/// under QEMU).
/// Sections 1 to 3 of the correspondence check over `[lo, hi)`: the
/// ownership table, the host stage 2 and the EL2 stage 1.
fn check_memory(spec: &Spec<'_>, m: &crate::memory::HostMemory, lo: u64, hi: u64) {
    // 1. The ownership table: one pass over the abstract state's bytes and
    // the table's entries side by side; a pair equal to the last one that
    // matched needs no decoding (most of RAM is long runs of one state).
    let (base, pages) = spec.span();
    let mut bad = 0u64;
    let first = lo.max(base);
    let last = hi.min(base.saturating_add(pages.saturating_mul(PAGE_SIZE)));
    let entries = m.table.entries();
    let table_base = m.table.base().0;
    let mut matched: Option<(u32, u8)> = None;
    let mut pa = first;
    while pa < last {
        let (i, j) = ((pa - base) / PAGE_SIZE, (pa / PAGE_SIZE).wrapping_sub(table_base));
        let pair = usize::try_from(i)
            .ok()
            .and_then(|i| spec.bytes().get(i))
            .zip(usize::try_from(j).ok().and_then(|j| entries.get(j)));
        if let Some((&byte, entry)) = pair
            && matched != Some((entry.bits(), byte))
            && let Some(state) = entry.decode()
        {
            let page = Page::decode(byte);
            if expected(page, state) {
                matched = Some((entry.bits(), byte));
            } else {
                if bad == 0 {
                    violation!(
                        "page {pa:#x}: the specification says {page:?}, the ownership table {state:?}"
                    );
                }
                bad += 1;
            }
        }
        pa += PAGE_SIZE;
    }
    if bad > 1 {
        println!(
            "oracle: ... and {} more pages where the ownership table differs",
            bad - 1
        );
    }
    // 2. The host stage 2 maps exactly what the host may reach; its
    // tables are the hypervisor's own.
    for (start, end) in spec
        .banks()
        .iter()
        .filter(|b| b.0 < hi && lo < b.1)
        .map(|b| (b.0.max(lo), b.1.min(hi)))
    {
        let mut first: Option<(u64, bool)> = None;
        let mut note = |lo: u64, hi: u64, mapped: bool| {
            if first.is_none()
                && let Some(pa) =
                    spec.first_page(lo, hi, |p| p.is_some_and(Page::host_reachable) != mapped)
            {
                first = Some((pa, mapped));
            }
        };
        for_each_run(&m.stage2.0, start, end, &mut note, &mut |out| {
            if !matches!(spec.page(out), None | Some(Page::HypOwn)) {
                violation!("host stage-2 table at {out:#x} is in {:?}", spec.page(out));
            }
        });
        if let Some((pa, mapped)) = first {
            let what = if mapped { "maps" } else { "does not map" };
            violation!(
                "the host stage 2 {what} page {pa:#x}, which the specification says is {:?}",
                spec.page(pa)
            );
        }
    }
    // 3. The EL2 stage 1 maps no page the host or a guest owns or
    // borrows, and maps every page lent or given to the hypervisor
    // (SHARE_HYP, DONATE_HYP, VM metadata).
    for (start, end) in spec
        .banks()
        .iter()
        .filter(|b| b.0 < hi && lo < b.1)
        .map(|b| (b.0.max(lo), b.1.min(hi)))
    {
        let mut first: Option<(u64, bool)> = None;
        let mut note = |lo: u64, hi: u64, mapped: bool| {
            let bad = |page: Option<Page>| {
                let forbidden = matches!(
                    page,
                    Some(Page::Host | Page::Vm(_) | Page::VmSharedHost(_) | Page::HostSharedVm(_))
                );
                let required = matches!(
                    page,
                    Some(Page::HostSharedHyp | Page::HostPinnedHyp | Page::HypDonated | Page::VmMeta(_))
                );
                (mapped && forbidden) || (!mapped && required)
            };
            if first.is_none()
                && let Some(pa) = spec.first_page(lo, hi, bad)
            {
                first = Some((pa, mapped));
            }
        };
        for_each_run(&m.el2.0, start, end, &mut note, &mut |_| {});
        if let Some((pa, mapped)) = first {
            let what = if mapped { "maps" } else { "does not map" };
            violation!(
                "the EL2 stage 1 {what} page {pa:#x}, which the specification says is {:?}",
                spec.page(pa)
            );
        }
    }
}

/// Physical ranges an event changed, for [`check_effect`]: at most
/// [`Ranges::MAX`]; past that the last one grows to cover the rest (a
/// superset: checking more pages is never wrong, only slower).
#[derive(Clone, Copy)]
struct Ranges {
    ranges: [(u64, u64); Ranges::MAX],
    count: usize,
}

impl Ranges {
    const MAX: usize = 32;

    const fn new() -> Self {
        Ranges {
            ranges: [(0, 0); Ranges::MAX],
            count: 0,
        }
    }

    fn add(&mut self, lo: u64, hi: u64) {
        match self
            .count
            .checked_sub(1)
            .and_then(|i| self.ranges.get_mut(i))
        {
            Some(last) if self.count == Ranges::MAX || last.1 == lo => {
                last.0 = last.0.min(lo);
                last.1 = last.1.max(hi);
            }
            _ => {
                if let Some(r) = self.ranges.get_mut(self.count) {
                    *r = (lo, hi);
                    self.count += 1;
                }
            }
        }
    }

    fn as_slice(&self) -> &[(u64, u64)] {
        self.ranges.get(..self.count).unwrap_or(&[])
    }
}

/// After a successful event: sections 1 to 3 over the pages it changed, so a
/// mapping that disagrees is seen at once, not only at the next full check.
/// `held`: for `VM_DESTROY`, the pages the VM held before it
/// ([`Spec::vm_pages`]), which are all its teardown changes.
fn check_effect(spec: &Spec<'_>, effect: &Effect, held: &Ranges) {
    let mut changed = Ranges::new();
    match *effect {
        Effect::SetPages { range, .. } | Effect::GiveVm { range, .. } => {
            changed.add(range.start(), range.end());
        }
        Effect::CreateVm { metadata, .. } | Effect::Import { metadata } => {
            changed.add(metadata.start(), metadata.end());
        }
        Effect::Relinquish { pa, .. } => changed.add(pa, pa + PAGE_SIZE),
        // The sealed page EL2 wrote: still the host's alone, mapped.
        Effect::Evict { pa, sealed, .. } => {
            changed.add(pa, pa + PAGE_SIZE);
            changed.add(sealed, sealed + PAGE_SIZE);
        }
        Effect::Bind { page, .. } | Effect::Unbind { page, .. } => {
            changed.add(page, page + PAGE_SIZE);
        }
        Effect::DestroyVm { .. } => changed = *held,
        _ => {}
    }
    if changed.count == 0 {
        return;
    }
    let start = now();
    let _ = crate::memory::with(|m| {
        for &(lo, hi) in changed.as_slice() {
            check_memory(spec, m, lo, hi);
        }
        Ok(())
    });
    COST.effects.fetch_add(1, Ordering::Relaxed);
    spent(&COST.effect_ticks, start);
}

fn correspondence(o: &mut Oracle) {
    let start = now();
    correspondence_inner(o);
    COST.checks.fetch_add(1, Ordering::Relaxed);
    spent(&COST.check_ticks, start);
}

fn correspondence_inner(o: &mut Oracle) {
    o.since_check = 0;
    let spec = &o.spec;
    let _ = crate::memory::with(|m| {
        check_memory(spec, m, 0, u64::MAX);
        // 4. The SMMU mirror maps what the host stage 2 maps.
        if let Some(diff) = crate::smmu::mirror_differs(&m.stage2.0, &m.ram) {
            violation!("the SMMU mirror differs from the host stage 2: {diff}");
        }
        Ok(())
    });
    // 5. Every VM: record, generation, vCPUs, stage 2 and its tables.
    for slot in 0..rampart_spec::MAX_VMS {
        let expected_vm = spec.vms.get(slot).and_then(Option::as_ref);
        let generation = spec.generations.get(slot).copied().unwrap_or(0);
        if crate::vm::oracle_generation(slot) != generation {
            violation!(
                "VM slot {slot}: generation {}, the specification says {}",
                crate::vm::oracle_generation(slot),
                generation
            );
        }
        let Some(guard) = crate::vm::VMS.get(slot).map(SpinMutex::lock) else {
            continue;
        };
        match (guard.as_ref(), expected_vm) {
            (None, None) => continue,
            (Some(vm), Some(want)) => {
                let (metadata, stage2) = crate::vm::oracle_view(vm);
                if vm.handle.0 != want.handle
                    || vm.protected != want.config.protected
                    || metadata.start() != want.metadata.start()
                    || metadata.size() != want.metadata.pages() * PAGE_SIZE
                {
                    violation!(
                        "VM slot {slot}: record (handle {:#x}, metadata {metadata}) differs from the specification (handle {:#x})",
                        vm.handle.0,
                        want.handle
                    );
                }
                let s = slot as u8;
                let mut mapped = 0u64;
                let mut first: Option<(u64, u64)> = None;
                let mut bad_table = None;
                walk(
                    stage2,
                    0,
                    crate::vm::ipa_limit(),
                    &mut |is_table, start, end, out| {
                        if is_table {
                            if spec.page(out) != Some(Page::VmMeta(s)) && bad_table.is_none() {
                                bad_table = Some(out);
                            }
                            return;
                        }
                        let mut ipa = start;
                        while ipa < end {
                            let pa = out + (ipa - start);
                            let ok = spec.page(pa).is_some_and(|p| p.vm_reachable(s))
                                && (want.imprecise || want.translate(ipa) == Some(pa));
                            if !ok && first.is_none() {
                                first = Some((ipa, pa));
                            }
                            mapped += 1;
                            ipa += PAGE_SIZE;
                        }
                    },
                );
                if let Some((ipa, pa)) = first {
                    violation!(
                        "VM slot {slot} maps IPA {ipa:#x} to {pa:#x} ({:?}), which the specification does not give it",
                        spec.page(pa)
                    );
                }
                if let Some(t) = bad_table {
                    violation!(
                        "VM slot {slot}: a stage-2 table at {t:#x} is not its held metadata ({:?})",
                        spec.page(t)
                    );
                }
                let runs: u64 = want.runs.iter().take(want.run_count).map(|r| r.pages).sum();
                if !want.imprecise && runs != mapped {
                    violation!(
                        "VM slot {slot}: its stage 2 maps {mapped} pages, the specification {runs}"
                    );
                }
                for index in 0..vm.max_vcpus.min(8) {
                    // A vCPU running elsewhere is locked: it exists.
                    let exists = crate::vm::VCPU_SLOTS
                        .get(slot)
                        .and_then(|v| v.get(index))
                        .is_none_or(|v| v.try_lock().is_none_or(|g| g.is_some()));
                    if exists != (want.vcpus & (1 << index) != 0) {
                        violation!(
                            "VM slot {slot}: vCPU {index} exists: {exists}, the specification says otherwise"
                        );
                    }
                }
            }
            (real, want) => {
                violation!(
                    "VM slot {slot}: live {} in the hypervisor, {} in the specification",
                    real.is_some(),
                    want.is_some()
                );
            }
        }
    }
}
