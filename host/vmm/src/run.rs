//! Running a VM: one thread per vCPU (vCPU 0 on the main thread), each in
//! a `VCPU_RUN` loop on its own channel, with the console and the test
//! guests' share protocol emulated.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rampart_abi::Error;
use rampart_abi::guest::test_protocol::{SHARE_PING, SHARE_PONG, share_ping_byte, share_pong_byte};
use rampart_abi::guest::{GUEST_RAM_BASE, GUEST_UART_BASE, layout};
use rampart_abi::host::{ExitReason, HostCall, PAGE_SIZE, mmio};

use crate::console::{Event, LineBuffer, Tally, classify};
use crate::hyp::{CallError, Hyp, call};
use crate::mem::{Fault, GuestRam};
use crate::plan::{Plan, ram_offset};
use crate::stats::Counters;

/// A page, as a length.
const PAGE: usize = 4096;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called PSCI SYSTEM_OFF.
    SystemOff,
    /// The guest called PSCI SYSTEM_RESET (not emulated: the VM stops).
    SystemReset,
    /// SIGINT/SIGTERM.
    Interrupted(i32),
    /// The first `VCPU_RUN` was refused: `NOT_SIGNED`, `UNTRUSTED_KEY` or
    /// `BAD_SIGNATURE`.
    Refused(i64),
    /// Something else stopped it.
    Error(String),
    /// A memory fault with `--stop-on-fault`.
    MemoryFault(u64),
    /// `VCPU_RUN` answered `MIGRATING`: `rampart-vmm migrate-out` exported
    /// the VM (issue 14); it never runs here again.
    Exported,
}

impl Outcome {
    /// For the stats file.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Outcome::SystemOff => "system off".into(),
            Outcome::SystemReset => "system reset (not emulated: stopped)".into(),
            Outcome::Interrupted(s) => format!("interrupted by signal {s}"),
            Outcome::Refused(c) => format!("refused: {}", crate::hyp::error_name(*c)),
            Outcome::Error(e) => format!("error: {e}"),
            Outcome::MemoryFault(ipa) => format!("stopped at a memory fault at {ipa:#x}"),
            Outcome::Exported => "exported (rampart-vmm migrate-out): the VM left this machine".into(),
        }
    }
}

/// Options of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Stop the VM at an `EXIT_MEMORY_FAULT` instead of declining it.
    pub stop_on_fault: bool,
    /// Print every exit.
    pub trace: bool,
}

/// What runs once after the first evictions (`--swap-attack`).
pub type AfterTrim<'a> = &'a (dyn Fn(&dyn Hyp) + Sync);

/// Everything the vCPU threads share.
pub struct Run<'a> {
    /// Name for console prefixes.
    pub name: &'a str,
    /// VM handle.
    pub handle: u64,
    /// The plan.
    pub plan: &'a Plan,
    /// The VM's pool region (guest RAM at `plan.memory_offset()`),
    /// possibly mapped only when first needed.
    pub region: GuestRam<'a>,
    /// Counters.
    pub counters: &'a Counters,
    /// Options.
    pub options: Options,
    /// Test protocol totals.
    pub tally: Mutex<Tally>,
    stop: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    first_run_done: AtomicBool,
    finished_threads: AtomicUsize,
    /// Returns a pending termination signal, if any.
    pub signal: &'a (dyn Fn() -> Option<i32> + Sync),
    /// `--hold-at TEXT`: after the first console line containing TEXT, the
    /// vCPU that printed it calls the function before it runs on (it
    /// returns a termination signal that arrived meanwhile, if any).
    hold_at: Option<(&'a str, &'a (dyn Fn() -> Option<i32> + Sync))>,
    held: AtomicBool,
    /// `--swap` (issue 14): restores pages at `EXIT_EVICTED`; evicts down
    /// to its limit after vCPU 0's first run.
    swap: Option<&'a crate::swap::Swap<'a>>,
    /// Called once after the first eviction (the hostile swap test).
    after_trim: Option<AfterTrim<'a>>,
    /// Guest RAM given on first touch (issue 16): a memory fault in guest
    /// RAM gives its chunk and runs the vCPU again.
    on_demand: Option<&'a crate::vm::OnDemand>,
}

impl<'a> Run<'a> {
    /// A run of VM `handle`.
    #[must_use]
    pub fn new(
        name: &'a str,
        handle: u64,
        plan: &'a Plan,
        region: impl Into<GuestRam<'a>>,
        counters: &'a Counters,
        options: Options,
        signal: &'a (dyn Fn() -> Option<i32> + Sync),
    ) -> Self {
        Run {
            name,
            handle,
            plan,
            region: region.into(),
            counters,
            options,
            tally: Mutex::new(Tally::default()),
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            first_run_done: AtomicBool::new(false),
            finished_threads: AtomicUsize::new(0),
            signal,
            hold_at: None,
            held: AtomicBool::new(false),
            swap: None,
            after_trim: None,
            on_demand: None,
        }
    }

    /// Gives guest RAM on first touch (issue 16): at a memory fault in
    /// guest RAM, `on_demand` gives the pages around it and the vCPU runs
    /// again; faults outside guest RAM are handled as before.
    #[must_use]
    pub fn with_on_demand(mut self, on_demand: &'a crate::vm::OnDemand) -> Self {
        self.on_demand = Some(on_demand);
        self
    }

    /// Sealed swap (`--swap`); `after_trim` runs once on vCPU 0's thread
    /// after the first evictions, before the guest runs on.
    #[must_use]
    pub fn with_swap(
        mut self,
        swap: &'a crate::swap::Swap<'a>,
        after_trim: Option<AfterTrim<'a>>,
    ) -> Self {
        self.swap = Some(swap);
        self.after_trim = after_trim;
        self
    }

    /// Holds the VM (`hold`) after the first console line containing
    /// `text`, before the vCPU that printed it runs on.
    #[must_use]
    pub fn with_hold_at(
        mut self,
        text: &'a str,
        hold: &'a (dyn Fn() -> Option<i32> + Sync),
    ) -> Self {
        self.hold_at = Some((text, hold));
        self
    }

    /// Stops every vCPU thread at its next exit; the first outcome wins.
    pub fn finish(&self, outcome: Outcome) {
        let mut o = self
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if o.is_none() {
            *o = Some(outcome);
        }
        self.stop.store(true, Ordering::Release);
    }

    /// How it ended (after the threads are done).
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many vCPU threads have left their loop.
    #[must_use]
    pub fn finished_threads(&self) -> usize {
        self.finished_threads.load(Ordering::Acquire)
    }

    fn stopping(&self) -> bool {
        if let Some(sig) = (self.signal)() {
            self.finish(Outcome::Interrupted(sig));
        }
        self.stop.load(Ordering::Acquire)
    }

    fn prefix(&self, vcpu: usize) -> String {
        if vcpu == 0 {
            format!("[{}]", self.name)
        } else {
            format!("[{}/{vcpu}]", self.name)
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn vmm_check(&self, vcpu: usize, ok: Result<String, String>) {
        let mut t = self.tally();
        match ok {
            Ok(msg) => {
                t.vmm_passed += 1;
                println!("{} rampart-vmm: {msg}", self.prefix(vcpu));
            }
            Err(msg) => {
                t.vmm_failed += 1;
                println!("{} rampart-vmm: FAIL {msg}", self.prefix(vcpu));
            }
        }
    }

    /// Offset of the guest page `ipa` in the region.
    fn page_offset(&self, ipa: u64) -> Option<usize> {
        let off = ram_offset(self.plan, ipa)?;
        usize::try_from(self.plan.memory_offset() + off).ok()
    }

    fn line(&self, vcpu: usize, text: &str) {
        println!("{} {text}", self.prefix(vcpu));
        let event = classify(text);
        self.tally().count(&event);
        match event {
            Event::Shared(ipa) => {
                self.counters.shared_pages.fetch_add(1, Ordering::Relaxed);
                let r = self.answer_ping(ipa);
                self.vmm_check(vcpu, r);
            }
            Event::Unshared(ipa) => {
                let r = self.check_unshared(ipa);
                self.vmm_check(vcpu, r);
            }
            Event::Relinquished(ipa) => {
                self.counters
                    .relinquished_pages
                    .fetch_add(1, Ordering::Relaxed);
                let r = self.check_relinquished(ipa);
                self.vmm_check(vcpu, r);
            }
            _ => {}
        }
        if let Some((want, hold)) = self.hold_at
            && text.contains(want)
            && !self.held.swap(true, Ordering::AcqRel)
            && let Some(sig) = hold()
        {
            self.finish(Outcome::Interrupted(sig));
        }
    }

    /// `GUEST-SHARED`: check the ping, write the pong (bytes 4.. first,
    /// then the first word).
    fn answer_ping(&self, ipa: u64) -> Result<String, String> {
        let at = self
            .page_offset(ipa)
            .ok_or_else(|| format!("GUEST-SHARED {ipa:#x} is not a page of guest RAM"))?;
        let region = self.region.get()?;
        let page = region
            .guarded_read(at, PAGE)
            .map_err(|e| format!("reading the shared page {ipa:#x}: {e}"))?;
        let first = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
        if first != SHARE_PING {
            return Err(format!(
                "the shared page {ipa:#x} starts {first:#x}, expected \"ping\" ({SHARE_PING:#x})"
            ));
        }
        if let Some(i) = (4..page.len()).find(|&i| page[i] != share_ping_byte(i)) {
            return Err(format!(
                "shared page {ipa:#x} byte {i} is {:#x}, expected {:#x}",
                page[i],
                share_ping_byte(i)
            ));
        }
        let word = |offset: usize| {
            u64::from_le_bytes(std::array::from_fn(|k| share_pong_byte(offset + k)))
        };
        let mut words: Vec<(usize, u64)> = (8..PAGE).step_by(8).map(|o| (o, word(o))).collect();
        let head = u64::from(SHARE_PONG) | (word(0) & !0xffff_ffff);
        words.push((0, head));
        region
            .guarded_write(at, &words)
            .map_err(|e| format!("writing the pong to the shared page {ipa:#x}: {e}"))?;
        Ok(format!("shared page {ipa:#x} held the ping; answered pong"))
    }

    /// `GUEST-UNSHARED`: the host's access must now abort.
    fn check_unshared(&self, ipa: u64) -> Result<String, String> {
        let at = self
            .page_offset(ipa)
            .ok_or_else(|| format!("GUEST-UNSHARED {ipa:#x} is not a page of guest RAM"))?;
        if !self.plan.config.protected {
            return Ok(format!(
                "page {ipa:#x} unshared (not protected: not probed)"
            ));
        }
        let region = self.region.get()?;
        match region.guarded_read(at, 8) {
            Err(Fault::Signal(libc::SIGBUS)) => {}
            Err(e) => {
                return Err(format!(
                    "reading the unshared page {ipa:#x}: expected SIGBUS, {e}"
                ));
            }
            Ok(_) => {
                return Err(format!(
                    "the host could still read page {ipa:#x} after the guest unshared it"
                ));
            }
        }
        match region.guarded_write(at + 8, &[(0, 0x5a5a)]) {
            Err(Fault::Signal(libc::SIGBUS)) => Ok(format!(
                "page {ipa:#x} is the guest's again: host read and write abort (SIGBUS)"
            )),
            Err(e) => Err(format!(
                "writing the unshared page {ipa:#x}: expected SIGBUS, {e}"
            )),
            Ok(()) => Err(format!(
                "the host could still write page {ipa:#x} after the guest unshared it"
            )),
        }
    }

    /// `GUEST-RELINQUISHED`: the page is the host's again, zeroed.
    fn check_relinquished(&self, ipa: u64) -> Result<String, String> {
        let at = self
            .page_offset(ipa)
            .ok_or_else(|| format!("GUEST-RELINQUISHED {ipa:#x} is not a page of guest RAM"))?;
        let region = self.region.get()?;
        let page = region
            .guarded_read(at, PAGE)
            .map_err(|e| format!("reading the relinquished page {ipa:#x}: {e}"))?;
        if let Some(i) = page.iter().position(|&b| b != 0) {
            return Err(format!(
                "the relinquished page {ipa:#x} was not zeroed (byte {i} is {:#x})",
                page[i]
            ));
        }
        region
            .guarded_write(at, &[(0, 0x1234), (0, 0)])
            .map_err(|e| format!("writing the relinquished page {ipa:#x}: {e}"))?;
        Ok(format!(
            "relinquished page {ipa:#x} came back zeroed and writable"
        ))
    }

    /// Runs `vcpus` vCPUs until the run ends: vCPU 0 on the calling
    /// thread, each other one on a thread of its own, vCPU `v` on
    /// `channels[v % channels.len()]`. `every_second` runs about once a
    /// second on one more thread, started by vCPU 0 when the launch is
    /// over ([`Run::launched`]), until every loop has ended.
    ///
    /// Issue 16: vCPU 0 used to run on a thread of its own while this
    /// thread waited; creating that thread (its stack's `mmap` and guard
    /// page, `clone`, the thread's signal stack, its first page faults)
    /// was about 0.07 million instructions between "VM ready" and the
    /// guest's first instruction.
    pub fn run_vcpus<H: Hyp>(
        &self,
        vcpus: usize,
        channels: &[H],
        every_second: &(dyn Fn() + Sync),
    ) {
        if channels.is_empty() {
            self.finish(Outcome::Error("no channel to run the vCPUs on".into()));
            return;
        }
        let watcher = std::sync::OnceLock::new();
        std::thread::scope(|s| {
            let others: Vec<_> = (1..vcpus)
                .map(|v| {
                    let channel = &channels[v % channels.len()];
                    s.spawn(move || self.vcpu_loop(v, channel))
                })
                .collect();
            let start_watcher = || {
                let spawned = std::thread::Builder::new()
                    .name("stats".into())
                    .spawn_scoped(s, || self.watch(vcpus, every_second));
                match spawned {
                    Ok(handle) => {
                        let _ = watcher.set(handle.thread().clone());
                    }
                    Err(e) => {
                        eprintln!("rampart-vmm: warning: no thread for the live statistics: {e}")
                    }
                }
            };
            self.vcpu_loop_then(0, &channels[0], Some(&start_watcher));
            for other in others {
                if other.join().is_err() {
                    self.finish(Outcome::Error("a vCPU thread panicked".into()));
                }
            }
            // Every loop has ended: the watcher need not sleep out its
            // 50 ms.
            if let Some(thread) = watcher.get() {
                thread.unpark();
            }
        });
    }

    /// Whether the launch is over: the first run was accepted and the
    /// guest's first console byte handled, or a second has passed since
    /// its first exit (a guest that prints nothing).
    fn launched(&self) -> bool {
        let first_exit = self.counters.first_exit_us.load(Ordering::Acquire);
        self.first_run_done.load(Ordering::Acquire)
            && (self.counters.first_output_us.load(Ordering::Acquire) != 0
                || crate::stats::since_start_us() >= first_exit.saturating_add(1_000_000))
    }

    /// The watcher thread of [`Run::run_vcpus`].
    fn watch(&self, vcpus: usize, every_second: &(dyn Fn() + Sync)) {
        let mut last = std::time::Instant::now();
        while self.finished_threads() < vcpus {
            std::thread::park_timeout(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = std::time::Instant::now();
                every_second();
            }
        }
    }

    /// The `VCPU_RUN` loop of `vcpu` on `hyp` (its channel).
    pub fn vcpu_loop(&self, vcpu: usize, hyp: &dyn Hyp) {
        self.vcpu_loop_then(vcpu, hyp, None);
    }

    /// [`Run::vcpu_loop`], calling `after_launch` once, on this thread,
    /// between two runs, when [`Run::launched`].
    fn vcpu_loop_then(&self, vcpu: usize, hyp: &dyn Hyp, after_launch: Option<&dyn Fn()>) {
        self.vcpu_loop_inner(vcpu, hyp, after_launch);
        self.counters
            .vcpus_stopped_ns
            .fetch_max(crate::signals::monotonic_ns(), Ordering::AcqRel);
        self.finished_threads.fetch_add(1, Ordering::AcqRel);
    }

    #[allow(
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation,
        reason = "register values"
    )]
    fn vcpu_loop_inner(&self, vcpu: usize, hyp: &dyn Hyp, after_launch: Option<&dyn Fn()>) {
        let mut console = LineBuffer::default();
        let mut read_value = 0u64;
        let mut waits = 0u32;
        let mut off_sleep = Duration::from_micros(100);
        let mut busy = 0u32;
        let mut unhandled = 0u32;
        let mut after_launch = after_launch;
        // The page of this vCPU's last memory fault if serving it gave
        // nothing (another vCPU had just given it: the access is retried
        // once). A second such fault in a row at the same page is a page the
        // VM held and lost (the guest relinquished it): declined, not run
        // again forever.
        let mut retried_fault: Option<u64> = None;
        loop {
            if after_launch.is_some()
                && self.launched()
                && let Some(after) = after_launch.take()
            {
                after();
            }
            if self.stopping() {
                break;
            }
            // Secondaries wait until vCPU 0's first run was accepted (the
            // VM's measurement and signature check happen at the first run).
            if vcpu != 0 && !self.first_run_done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let r = call(
                hyp,
                HostCall::VcpuRun.id(),
                &[self.handle, vcpu as u64, read_value],
            );
            read_value = 0;
            let code = r[0] as i64;
            if code != 0 {
                let refusal = [Error::NotSigned, Error::UntrustedKey, Error::BadSignature]
                    .map(Error::code)
                    .contains(&code);
                if refusal && !self.first_run_done.load(Ordering::Acquire) {
                    self.finish(Outcome::Refused(code));
                    break;
                }
                if code == Error::Migrating.code() {
                    // Issue 14: `migrate-out` stopped the VM for good.
                    self.finish(Outcome::Exported);
                    break;
                }
                if code == Error::Busy.code() && busy < 1000 {
                    busy += 1;
                    std::thread::yield_now();
                    continue;
                }
                let e = CallError {
                    id: HostCall::VcpuRun.id(),
                    code,
                };
                self.finish(Outcome::Error(format!("vCPU {vcpu}: {e}")));
                break;
            }
            busy = 0;
            if vcpu == 0 && !self.first_run_done.load(Ordering::Acquire) {
                // The VM is measured now: from here on it holds at most
                // the swap limit.
                if let Some(swap) = self.swap {
                    // The launch milestone, before the evictions.
                    Counters::reached(&self.counters.first_exit_us);
                    if let Err(e) = swap.trim(hyp) {
                        self.finish(Outcome::Error(format!(
                            "swap: evicting down to the limit: {e}"
                        )));
                        break;
                    }
                    if let Some(after) = self.after_trim {
                        after(hyp);
                    }
                }
                self.first_run_done.store(true, Ordering::Release);
            }
            Counters::reached(&self.counters.first_exit_us);
            self.counters.exit(vcpu, r[1]);
            let reason = ExitReason::try_from(r[1]);
            if reason == Ok(ExitReason::Interrupt) && r[2] == 1 {
                self.counters
                    .host_timer_exits
                    .fetch_add(1, Ordering::Relaxed);
            }
            if r[1] == crate::swap::EXIT_EVICTED
                && let Some(swap) = self.swap
            {
                // EXIT_EVICTED (issue 14): x2 = the page, x3 = 1 for a write.
                if let Err(e) = swap.fault(hyp, r[2]) {
                    self.finish(Outcome::Error(format!(
                        "vCPU {vcpu}: swap: restoring {:#x}: {e}",
                        r[2]
                    )));
                    break;
                }
                continue;
            }
            if self.options.trace {
                eprintln!(
                    "{} exit {} {:#x} {:#x} {:#x}",
                    self.prefix(vcpu),
                    reason.map_or("?", ExitReason::name),
                    r[2],
                    r[3],
                    r[4]
                );
            }
            if !matches!(reason, Ok(ExitReason::Wait)) {
                waits = 0;
            }
            if !matches!(reason, Ok(ExitReason::PoweredOff)) {
                off_sleep = Duration::from_micros(100);
            }
            match reason {
                Ok(ExitReason::Mmio) => {
                    let (address, flags, value) = (r[2], r[3], r[4]);
                    let write = flags & mmio::WRITE != 0;
                    if address == GUEST_UART_BASE + layout::UART_DR && write {
                        Counters::reached(&self.counters.first_output_us);
                        if let Some(line) = console.push(value as u8) {
                            self.line(vcpu, &line);
                        }
                    } else if address & !(PAGE_SIZE - 1) == GUEST_UART_BASE {
                        // UARTFR and the rest of the UART page read as 0.
                    } else {
                        self.counters.unhandled_mmio.fetch_add(1, Ordering::Relaxed);
                        unhandled += 1;
                        if unhandled <= 8 {
                            eprintln!(
                                "{} rampart-vmm: unhandled MMIO {} of {} bytes at {address:#x}{}",
                                self.prefix(vcpu),
                                if write { "write" } else { "read" },
                                1u32 << (flags & mmio::SIZE_LOG2_MASK),
                                if write {
                                    format!(" (value {value:#x}): ignored")
                                } else {
                                    ": reads as 0".into()
                                }
                            );
                        }
                    }
                }
                Ok(ExitReason::MemoryFault) => {
                    let (ipa, write) = (r[2], r[3] & 1 != 0);
                    let page = ipa & !(PAGE_SIZE - 1);
                    let retried = retried_fault.take() == Some(page);
                    if let Some(on_demand) = self.on_demand {
                        match on_demand.serve(hyp, self.handle, self.plan, &self.region, ipa) {
                            Ok(Some(0)) if retried => {}
                            Ok(Some(pages)) => {
                                if pages == 0 {
                                    retried_fault = Some(page);
                                }
                                self.counters.faults_served.fetch_add(1, Ordering::Relaxed);
                                self.counters.pages_on_demand.fetch_add(pages, Ordering::Relaxed);
                                continue;
                            }
                            // Outside guest RAM: as before.
                            Ok(None) => {}
                            Err(e) => {
                                self.finish(Outcome::Error(format!(
                                    "vCPU {vcpu}: giving guest RAM at {ipa:#x}: {e}"
                                )));
                                break;
                            }
                        }
                    }
                    self.counters.memory_faults.fetch_add(1, Ordering::Relaxed);
                    let what = if write { "write" } else { "read" };
                    if self.options.stop_on_fault {
                        eprintln!(
                            "{} rampart-vmm: memory fault ({what}) at {ipa:#x}, outside guest RAM {GUEST_RAM_BASE:#x}..{:#x}: stopping (--stop-on-fault)",
                            self.prefix(vcpu),
                            GUEST_RAM_BASE + self.plan.memory_size
                        );
                        self.finish(Outcome::MemoryFault(ipa));
                        break;
                    }
                    eprintln!(
                        "{} rampart-vmm: memory fault ({what}) at {ipa:#x}: declined, the guest gets an abort",
                        self.prefix(vcpu)
                    );
                }
                Ok(ExitReason::Evicted) => {
                    // Only a VMM that evicts pages (VM_EVICT) can see this.
                    self.finish(Outcome::Error(format!(
                        "vCPU {vcpu}: EXIT_EVICTED at {:#x}, but this VMM evicted nothing",
                        r[2]
                    )));
                    break;
                }
                Ok(ExitReason::Wait) => {
                    waits += 1;
                    if waits < 64 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                // Bundles' devices inject no level-sensitive interrupts.
                Ok(ExitReason::Interrupt | ExitReason::Eoi) => {}
                // issue 12: a realm's RSI_HOST_CALL (the default answer).
                Ok(ExitReason::HostCall) => {
                    if let Err(e) = crate::rsi_host_call::answer(hyp, self.handle, vcpu, r[2]) {
                        self.finish(Outcome::Error(format!("vCPU {vcpu}: {e}")));
                        break;
                    }
                }
                Ok(ExitReason::SystemOff) => {
                    self.finish(Outcome::SystemOff);
                    break;
                }
                Ok(ExitReason::SystemReset) => {
                    self.finish(Outcome::SystemReset);
                    break;
                }
                Ok(ExitReason::PoweredOff) => {
                    std::thread::sleep(off_sleep);
                    off_sleep = (off_sleep * 2).min(Duration::from_millis(2));
                }
                Err(other) => {
                    self.finish(Outcome::Error(format!(
                        "vCPU {vcpu}: VCPU_RUN returned an unknown exit reason {other}"
                    )));
                    break;
                }
            }
        }
        if let Some(rest) = console.flush() {
            self.line(vcpu, &rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::fake::{Fake, Step, print};
    use crate::mem::Mapping;
    use crate::plan::{Overrides, plan, tests::bundle_bytes};
    use rampart_attest::Bundle;

    fn no_signal() -> Option<i32> {
        None
    }

    fn setup(vcpus: u32) -> (Plan, Mapping) {
        let bytes = bundle_bytes(64 << 10, vcpus, true, &[1; 100]);
        let p = plan(&Bundle::parse(&bytes).unwrap(), &Overrides::default()).unwrap();
        let region = Mapping::anonymous(usize::try_from(p.total_pages() * 4096).unwrap()).unwrap();
        (p, region)
    }

    /// As `run` does: vCPU 0 on this thread, the others on their own.
    fn run_all(run: &Run<'_>, fake: &Fake, vcpus: usize) {
        run.run_vcpus(vcpus, std::slice::from_ref(fake), &|| {});
    }

    /// A [`Fake`] that notes which threads made vCPU 0's `VCPU_RUN`s and
    /// what was counted when the launch hook ran.
    struct Threads<'a> {
        fake: &'a Fake,
        vcpu0: Mutex<Vec<std::thread::ThreadId>>,
        others: Mutex<Vec<std::thread::ThreadId>>,
    }

    impl Hyp for Threads<'_> {
        fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
            if regs[0] == u64::from(HostCall::VcpuRun.id()) {
                let list = if regs[2] == 0 {
                    &self.vcpu0
                } else {
                    &self.others
                };
                list.lock().unwrap().push(std::thread::current().id());
            }
            self.fake.call_raw(regs)
        }
    }

    #[test]
    fn vcpu_0_runs_on_the_calling_thread_and_the_others_on_their_own() {
        let (p, region) = setup(3);
        let mut v0 = print("hello\n");
        v0.push(Step::AwaitVcpu(1));
        v0.push(Step::AwaitVcpu(2));
        v0.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let fake = Fake::with_scripts(vec![v0, print("one\n"), print("two\n")]);
        let hyp = Threads {
            fake: &fake,
            vcpu0: Mutex::new(Vec::new()),
            others: Mutex::new(Vec::new()),
        };
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run.run_vcpus(3, std::slice::from_ref(&hyp), &|| {});
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        assert_eq!(run.finished_threads(), 3);
        assert_eq!(run.tally.lock().unwrap().lines, 3);
        let me = std::thread::current().id();
        let vcpu0 = hyp.vcpu0.lock().unwrap();
        assert!(!vcpu0.is_empty() && vcpu0.iter().all(|&t| t == me));
        let others = hyp.others.lock().unwrap();
        assert!(others.len() >= 8, "every byte of the secondaries' lines");
        assert!(others.iter().all(|&t| t != me));
    }

    #[test]
    fn the_launch_hook_runs_once_after_the_first_console_byte() {
        let (p, region) = setup(1);
        let mut script = vec![Step::Exit(ExitReason::Interrupt, [0; 3])];
        script.extend(print("xy\n"));
        script.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let fake = Fake::with_scripts(vec![script]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        let seen = Mutex::new(Vec::new());
        let hook = || {
            let exits = [ExitReason::Interrupt, ExitReason::Mmio]
                .map(|r| counters.exits(0, r as usize))
                .iter()
                .sum::<u64>();
            let output = counters.first_output_us.load(Ordering::Acquire);
            seen.lock().unwrap().push((exits, output));
        };
        run.vcpu_loop_then(0, &fake, Some(&hook));
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        let seen = seen.lock().unwrap();
        // Called once, right after the first byte's exit (the interrupt
        // before it did not end the launch), never before the first run.
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, 2, "{seen:?}");
        assert!(seen[0].1 > 0, "{seen:?}");

        // A first run refused: the launch never ends, no hook.
        let fake = Fake::with_scripts(vec![vec![Step::Error(-22)]]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        let calls = AtomicUsize::new(0);
        run.vcpu_loop_then(
            0,
            &fake,
            Some(&|| {
                calls.fetch_add(1, Ordering::Relaxed);
            }),
        );
        assert_eq!(run.outcome(), Some(Outcome::Refused(-22)));
        assert_eq!(calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_test_guest_runs_to_system_off() {
        let (p, region) = setup(2);
        let mut v0 = print("hello\nGUEST-PASS a\n");
        v0.push(Step::Exit(ExitReason::Mmio, [GUEST_UART_BASE + 0x18, 2, 0]));
        v0.push(Step::Exit(ExitReason::Wait, [0, 0, 0]));
        v0.push(Step::Exit(ExitReason::Interrupt, [0, 0, 0]));
        v0.push(Step::Exit(ExitReason::MemoryFault, [0x1_0000_0000, 0, 0]));
        v0.push(Step::Exit(ExitReason::Mmio, [0x0a00_0000, 2, 0]));
        v0.extend(print("GUEST-DONE 1 passed, 0 failed\n"));
        v0.push(Step::AwaitVcpu(1));
        v0.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let v1 = print("GUEST-CPU 1 up\n");
        let fake = Fake::with_scripts(vec![v0, v1]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            0x1_0000_1000,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run_all(&run, &fake, 2);
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        assert_eq!(run.finished_threads(), 2);
        let t = run.tally.lock().unwrap().clone();
        assert_eq!((t.passed, t.failed, t.done), (1, 0, Some(Some((1, 0)))));
        assert_eq!(t.lines, 4);
        assert!(!t.failed());
        assert_eq!(counters.exits(0, 3), 1);
        assert_eq!(counters.exits(0, 2), 1);
        assert!(counters.exits(0, 4) >= 2);
        assert_eq!(counters.memory_faults.load(Ordering::Relaxed), 1);
        assert_eq!(counters.unhandled_mmio.load(Ordering::Relaxed), 1);
        assert_eq!(counters.exits(1, 1), 15, "every byte of vCPU 1's line");
        // The UARTFR read's value (0) went into x3 of the next run; vCPU
        // numbers and the handle in every run.
        let runs = fake.calls_of(HostCall::VcpuRun);
        assert!(
            runs.iter()
                .all(|r| r[1] == 0x1_0000_1000 && r[3] == 0 && r[2] < 2)
        );
    }

    #[test]
    fn holds_once_at_the_first_matching_line() {
        let (p, region) = setup(1);
        let mut script = print("memtest: pass 1 of 4 done\nmemtest: pass 2 of 4 done\n");
        script.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let fake = Fake::with_scripts(vec![script]);
        let counters = Counters::default();
        let holds = AtomicUsize::new(0);
        let hold = || {
            holds.fetch_add(1, Ordering::Relaxed);
            None
        };
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        )
        .with_hold_at("pass ", &hold);
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        assert_eq!(holds.load(Ordering::Relaxed), 1);

        // A termination signal during the hold stops the VM there.
        let fake = Fake::with_scripts(vec![print("pass 1\nmore\n")]);
        let hold = || Some(15);
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        )
        .with_hold_at("pass 1", &hold);
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::Interrupted(15)));
        assert_eq!(
            run.tally.lock().unwrap().lines,
            1,
            "nothing ran after the hold"
        );
    }

    #[test]
    fn records_the_first_exit_and_console_output() {
        let (p, region) = setup(1);
        let mut script = vec![Step::Exit(ExitReason::Interrupt, [0; 3])];
        script.extend(print("x\n"));
        script.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let fake = Fake::with_scripts(vec![script]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run_all(&run, &fake, 1);
        let exit = counters.first_exit_us.load(Ordering::Relaxed);
        let output = counters.first_output_us.load(Ordering::Relaxed);
        assert!(exit > 0 && output >= exit, "{exit} {output}");
    }

    #[test]
    fn counts_the_host_timer_exits() {
        let (p, region) = setup(1);
        let script = vec![
            Step::Exit(ExitReason::Interrupt, [1, 0, 0]),
            Step::Exit(ExitReason::Interrupt, [0, 0, 0]),
            Step::Exit(ExitReason::Interrupt, [1, 0, 0]),
            Step::Exit(ExitReason::SystemOff, [0; 3]),
        ];
        let fake = Fake::with_scripts(vec![script]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        assert_eq!(counters.host_timer_exits.load(Ordering::Relaxed), 2);
        assert_eq!(counters.exits(0, 4), 3);
    }

    #[test]
    fn a_refused_first_run_is_reported() {
        let (p, region) = setup(2);
        let fake = Fake::with_scripts(vec![vec![Step::Error(-22)], vec![]]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run_all(&run, &fake, 2);
        assert_eq!(run.outcome(), Some(Outcome::Refused(-22)));
        // vCPU 1 never ran.
        assert!(fake.calls_of(HostCall::VcpuRun).iter().all(|r| r[2] == 0));
    }

    #[test]
    fn other_errors_and_faults_stop_the_vm() {
        let (p, region) = setup(1);
        let fake = Fake::with_scripts(vec![vec![
            Step::Exit(ExitReason::Interrupt, [0; 3]),
            Step::Error(-16),
        ]]);
        let counters = Counters::default();
        let run = Run::new(
            "t",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run_all(&run, &fake, 1);
        assert!(
            matches!(run.outcome(), Some(Outcome::Error(e)) if e.contains("VCPU_RUN returned DENIED"))
        );

        let fake = Fake::with_scripts(vec![vec![Step::Exit(
            ExitReason::MemoryFault,
            [0x1000, 1, 0],
        )]]);
        let options = Options {
            stop_on_fault: true,
            trace: false,
        };
        let run = Run::new("t", 1, &p, &region, &counters, options, &no_signal);
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::MemoryFault(0x1000)));
    }

    /// Issue 16: a memory fault in guest RAM gives its chunk and runs the
    /// vCPU again (no abort, nothing declined); a second fault in that
    /// chunk gives nothing; a fault outside guest RAM is declined as
    /// before, or stops the VM with `--stop-on-fault`.
    #[test]
    fn faults_in_guest_ram_are_served_on_demand() {
        let (p, region) = setup(1);
        let on_demand = crate::vm::OnDemand::new(crate::vm::Given::new(p.memory_pages()), 0x7c00_0000);
        let fault = |ipa: u64, write: u64| Step::Exit(ExitReason::MemoryFault, [ipa, write, 0]);
        let script = vec![
            fault(GUEST_RAM_BASE + 0x4000, 1),
            fault(GUEST_RAM_BASE + 0xf000, 0),
            fault(0x1_0000_0000, 0),
            Step::Exit(ExitReason::SystemOff, [0; 3]),
        ];
        let fake = Fake::with_scripts(vec![script]);
        let counters = Counters::default();
        let run = Run::new("t", 7, &p, &region, &counters, Options::default(), &no_signal)
            .with_on_demand(&on_demand);
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        let zeroed = fake.calls_of(HostCall::VmDonateZeroed);
        assert_eq!(zeroed.len(), 1, "one chunk");
        assert_eq!(zeroed[0][1..6], [7, 0x7c00_0000, 16, GUEST_RAM_BASE, 0]);
        // The 64 KiB guest's RAM is 16 pages: the chunk is clipped.
        assert_eq!(p.memory_pages(), 16);
        assert_eq!(on_demand.given_pages(), 16);
        assert_eq!(counters.faults_served.load(Ordering::Relaxed), 2);
        assert_eq!(counters.pages_on_demand.load(Ordering::Relaxed), 16);
        assert_eq!(counters.memory_faults.load(Ordering::Relaxed), 1, "the one outside RAM");
        assert_eq!(fake.calls_of(HostCall::VcpuRun).len(), 4, "run again after each fault, to the end");

        // Outside guest RAM with --stop-on-fault: stopped, nothing given.
        let fake = Fake::with_scripts(vec![vec![fault(GUEST_RAM_BASE + p.memory_size, 1)]]);
        let options = Options { stop_on_fault: true, trace: false };
        let run = Run::new("t", 7, &p, &region, &counters, options, &no_signal).with_on_demand(&on_demand);
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::MemoryFault(GUEST_RAM_BASE + p.memory_size)));
        assert!(fake.calls_of(HostCall::VmDonateZeroed).is_empty());
    }

    /// Two vCPUs faulting in one chunk: the VM runs on, the chunk is given
    /// once; a refused donation stops the VM with the error.
    #[test]
    fn concurrent_faults_and_refusals() {
        let (p, region) = setup(2);
        let on_demand = crate::vm::OnDemand::new(crate::vm::Given::new(p.memory_pages()), 0x7c00_0000);
        let fault = |ipa: u64| Step::Exit(ExitReason::MemoryFault, [ipa, 1, 0]);
        let mut v0 = vec![fault(GUEST_RAM_BASE + 0x1000); 3];
        v0.push(Step::AwaitVcpu(1));
        v0.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let v1 = vec![fault(GUEST_RAM_BASE + 0x2000); 3];
        let fake = Fake::with_scripts(vec![v0, v1]);
        let counters = Counters::default();
        let run = Run::new("t", 7, &p, &region, &counters, Options::default(), &no_signal)
            .with_on_demand(&on_demand);
        run_all(&run, &fake, 2);
        assert_eq!(run.outcome(), Some(Outcome::SystemOff));
        assert_eq!(fake.calls_of(HostCall::VmDonateZeroed).len(), 1);
        // Per vCPU: the first fault gives (or finds given) the chunk and
        // runs again, the second finds nothing to give and runs again once,
        // the third in a row at the same page is a page the VM lost:
        // declined (the guest gets an abort), not run again forever.
        assert_eq!(counters.faults_served.load(Ordering::Relaxed), 4);
        assert_eq!(counters.memory_faults.load(Ordering::Relaxed), 2);
        assert_eq!(counters.pages_on_demand.load(Ordering::Relaxed), 16);

        let on_demand = crate::vm::OnDemand::new(crate::vm::Given::new(p.memory_pages()), 0x7c00_0000);
        let fake = Fake::with_scripts(vec![vec![fault(GUEST_RAM_BASE)]]);
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonateZeroed.id(), -18));
        let run = Run::new("t", 7, &p, &region, &counters, Options::default(), &no_signal)
            .with_on_demand(&on_demand);
        run_all(&run, &fake, 1);
        assert!(
            matches!(run.outcome(), Some(Outcome::Error(e)) if e.contains("giving guest RAM at 0x") && e.contains("NO_MEMORY")),
            "{:?}",
            run.outcome()
        );
        assert_eq!(on_demand.given_pages(), 0);
    }

    #[test]
    fn a_signal_stops_the_threads() {
        let (p, region) = setup(1);
        // Runs forever: powered off again and again.
        let fake = Fake::with_scripts(vec![vec![]]);
        let counters = Counters::default();
        let calls = AtomicUsize::new(0);
        let signal = || (calls.fetch_add(1, Ordering::Relaxed) > 5).then_some(15);
        let run = Run::new("t", 1, &p, &region, &counters, Options::default(), &signal);
        run_all(&run, &fake, 1);
        assert_eq!(run.outcome(), Some(Outcome::Interrupted(15)));
    }

    #[test]
    fn the_share_protocol() {
        let (p, region) = setup(1);
        let ipa = GUEST_RAM_BASE + 0x3000;
        // The guest's ping.
        let mut ping = vec![0u8; 4096];
        ping[..4].copy_from_slice(&SHARE_PING.to_le_bytes());
        for (i, b) in ping.iter_mut().enumerate().skip(4) {
            *b = share_ping_byte(i);
        }
        region.write_bytes(0x3000, &ping);
        let mut script = print(&format!(
            "GUEST-SHARED {ipa:#x}\nGUEST-RELINQUISHED {:#x}\n",
            ipa + 0x1000
        ));
        script.extend(print("GUEST-DONE 3 passed, 0 failed\n"));
        script.push(Step::Exit(ExitReason::SystemOff, [0; 3]));
        let fake = Fake::with_scripts(vec![script]);
        let counters = Counters::default();
        let run = Run::new(
            "share",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        run_all(&run, &fake, 1);
        let t = run.tally.lock().unwrap().clone();
        assert_eq!((t.vmm_passed, t.vmm_failed), (2, 0), "{t:?}");
        assert_eq!(region.read_u64(0x3000) & 0xffff_ffff, u64::from(SHARE_PONG));
        for i in 4..4096usize {
            let w = region.read_u64(0x3000 + (i & !7));
            assert_eq!(w.to_le_bytes()[i & 7], share_pong_byte(i), "byte {i}");
        }
        assert_eq!(counters.shared_pages.load(Ordering::Relaxed), 1);
        assert_eq!(counters.relinquished_pages.load(Ordering::Relaxed), 1);

        // A wrong ping, an unshared page the host can still read, a dirty
        // relinquished page: three VMM failures.
        region.write_u64(0x5000, 7);
        let script = print(&format!(
            "GUEST-SHARED {:#x}\nGUEST-UNSHARED {ipa:#x}\nGUEST-RELINQUISHED {:#x}\nGUEST-SHARED 0x1000\n",
            ipa + 0x1000,
            GUEST_RAM_BASE + 0x5000
        ));
        let fake = Fake::with_scripts(vec![script]);
        let run = Run::new(
            "share",
            1,
            &p,
            &region,
            &counters,
            Options::default(),
            &no_signal,
        );
        std::thread::scope(|s| {
            s.spawn(|| run.vcpu_loop(0, &fake));
            while run.tally.lock().unwrap().lines < 4 {
                std::thread::sleep(Duration::from_millis(1));
            }
            run.finish(Outcome::SystemOff);
        });
        let t = run.tally.lock().unwrap().clone();
        assert_eq!((t.vmm_passed, t.vmm_failed), (0, 4), "{t:?}");
        assert!(t.failed());
    }
}
