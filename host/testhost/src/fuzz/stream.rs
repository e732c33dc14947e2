//! One CPU's seeded stream of actions and the host-side checks on their
//! results.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{
    ExitReason, HOST_FUNCTION_BASE, HostCall, MIN_STAGE2_PAGES, VmConfig, mmio,
};

use super::cost;
use super::model::{MAX_VMS, Page, Vm};
use super::race;
use super::{ORACLE_CHECK, SHARED, WINDOW_PAGES};

#[path = "sealed.rs"]
mod sealed;
use crate::arch::{self, Access, MAX_CPUS};
use crate::checks::vmm;
use crate::fuzz_line;
use crate::psci::{self, Conduit};

const PAGE: u64 = rampart_abi::host::PAGE_SIZE;
/// Calls kept for a failure report.
const HISTORY: usize = 20;
/// The fuzz guest's RAM: the top pages of the window.
pub(super) const GUEST_RAM_PAGES: usize = 128;
pub(super) const GUEST_RAM_FIRST: usize = WINDOW_PAGES - GUEST_RAM_PAGES;
/// Its metadata, just below.
const GUEST_META_PAGES: usize = 18;
const GUEST_META_FIRST: usize = GUEST_RAM_FIRST - 64;
/// Pages most random ranges come from (the rest is for the fuzz guest).
pub(super) const POOL_PAGES: usize = GUEST_META_FIRST;
/// Where the fuzz guest reads its seed (`guest/fuzz`).
const SEED_ADDRESS: u64 = 0x0a00_0000;
/// A `fuzz: progress` line every this many actions per CPU (a hang shows
/// which CPU stopped where).
const PROGRESS_EVERY: u64 = 25_000;
/// Notes about refusals the model did not expect, per CPU.
const MAX_NOTES: u64 = 4;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

#[derive(Clone, Copy, Default)]
struct Record {
    index: u64,
    id: u32,
    args: [u64; 4],
    x0: u64,
    x1: u64,
    doorbell: bool,
}

/// Why a stream stopped early.
struct Failed;

type Step = Result<(), Failed>;

struct Stream {
    cpu: usize,
    index: u64,
    rng: Rng,
    base: u64,
    pages: [Page; WINDOW_PAGES],
    vms: [Option<Vm>; MAX_VMS],
    stale: [u64; 4],
    stale_next: usize,
    history: [Record; HISTORY],
    calls: u64,
    channel: u64,
    boot: bool,
    oracle_seen: u64,
}

/// Runs CPU `cpu`'s stream; `extra` more actions than the others (the
/// boot CPU takes the remainder).
pub fn run(cpu: usize, extra: u64) {
    let s = &SHARED;
    let seed = s.seed.load(Ordering::Acquire);
    let calls = s.calls_per_cpu.load(Ordering::Acquire) + extra;
    let stop = s.stop.load(Ordering::Acquire);
    let check = s.check.load(Ordering::Acquire);
    let control = s.control[0].load(Ordering::Acquire);
    let mut st = Stream {
        cpu,
        index: 0,
        rng: Rng(seed ^ (cpu as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)),
        base: s.window_base.load(Ordering::Acquire) + cpu as u64 * WINDOW_PAGES as u64 * PAGE,
        pages: [Page::Host; WINDOW_PAGES],
        vms: [None; MAX_VMS],
        stale: [0; 4],
        stale_next: 0,
        history: [Record::default(); HISTORY],
        calls: 0,
        channel: if control != 0 {
            control + (cpu as u64 % 16) * PAGE
        } else {
            0
        },
        boot: cpu == 0,
        oracle_seen: 0,
    };
    // A guest's virtual timer and the host's deadline reach the hypervisor
    // only through this CPU's redistributor (`vmm::gic`).
    let _ = vmm::gic::enable_this_cpu();
    while st.index < calls && st.index <= stop {
        if s.failed.load(Ordering::Relaxed) {
            break;
        }
        if st.step().is_err() {
            break;
        }
        st.index += 1;
        s.done[cpu].store(st.index, Ordering::Release);
        if st.boot && st.index.is_multiple_of(cost::RATE_EVERY) {
            cost::rate(s.cpus.load(Ordering::Relaxed) as usize);
        }
        if st.index.is_multiple_of(PROGRESS_EVERY) {
            fuzz_line!(
                "progress cpu={cpu} index={} hypercalls={}",
                st.index,
                st.calls
            );
        }
        if check != 0 && st.index.is_multiple_of(check) && st.oracle().is_err() {
            break;
        }
    }
    if !s.failed.load(Ordering::Relaxed) {
        let _ = st.oracle();
    }
    // Leave no VM behind for the final check's sake (best effort).
    for slot in 0..MAX_VMS {
        if let Some(vm) = st.vms[slot] {
            let r = st.call(HostCall::VmDestroy.id(), &[vm.handle]);
            if r[0] == 0 {
                st.forget(slot);
            }
        }
    }
    s.hypercalls[cpu].store(st.calls, Ordering::Release);
}

impl Stream {
    /// One action.
    fn step(&mut self) -> Step {
        // The boot CPU waits to write into pages coming back: give it some.
        if !self.boot && SHARED.waiting.load(Ordering::SeqCst) {
            let start = arch::counter();
            let step = self.give_back_for_writer();
            cost::action(self.cpu, 14, arch::counter().wrapping_sub(start));
            return step;
        }
        // Another CPU offers pages of its window for a race: take part.
        if race::offered_to(self.cpu) {
            let start = arch::counter();
            let step = self.race_partner();
            cost::action(self.cpu, 16, arch::counter().wrapping_sub(start));
            return step;
        }
        let start = arch::counter();
        let (kind, step) = match self.rng.below(100) {
            0..=1 => (15, self.race_owner()),
            // Issue 14: sealed swap and migration (taken from the memory
            // calls and misc, so the CI slice keeps its length).
            2..=4 => (17, self.sealed_swap()),
            5..=27 => (0, self.memory_call()),
            28..=35 => (1, self.memory_call_interesting()),
            36..=42 => (2, self.vm_create()),
            43..=46 => (3, self.guest_vm()),
            47..=51 => (4, self.vm_destroy()),
            52..=59 => (5, self.vm_give()),
            60..=63 => (6, self.vcpu_create()),
            64..=75 => (7, self.vcpu_run()),
            76..=79 => (8, self.vcpu_poke()),
            80..=82 => (9, self.signature()),
            83..=84 => (18, self.migration()),
            85..=86 => (10, self.misc()),
            87..=92 => (11, self.bad_handle()),
            93 if self.boot => (12, self.write_returned()),
            _ => (13, self.touch()),
        };
        cost::action(self.cpu, kind, arch::counter().wrapping_sub(start));
        step
    }

    // ----- calls, history and failures -----

    fn call(&mut self, id: u32, args: &[u64]) -> [u64; 18] {
        let doorbell = self.channel != 0 && self.rng.chance(8);
        // What this CPU is doing, for the boot CPU's hang report.
        let cur = &SHARED.current[self.cpu];
        cur[1].store(args.first().copied().unwrap_or(0), Ordering::Relaxed);
        cur[2].store(self.index, Ordering::Relaxed);
        cur[0].store(u64::from(id), Ordering::Release);
        let start = arch::counter();
        let r = if doorbell {
            self.doorbell(id, args)
        } else {
            psci::call_via(Conduit::Hvc, id, args)
        };
        cost::call(self.cpu, id, arch::counter().wrapping_sub(start));
        cur[0].store(0, Ordering::Release);
        SHARED.progress[self.cpu].fetch_add(1, Ordering::Release);
        self.calls += 1;
        let mut rec = Record {
            index: self.index,
            id,
            x0: r[0],
            x1: r[1],
            doorbell,
            ..Record::default()
        };
        for (d, a) in rec.args.iter_mut().zip(args) {
            *d = *a;
        }
        self.history.copy_within(1.., 0);
        self.history[HISTORY - 1] = rec;
        r
    }

    /// Arms the host's own deadline, which bounds a guest that stops
    /// exiting (`VCPU_RUN` answers EXIT_INTERRUPT, x2 = 1): 50 ms. Every
    /// `VCPU_RUN` that may enter a guest runs with it armed.
    fn arm_deadline(&self) {
        let frequency = arch::counter_frequency().max(1);
        vmm::hw::set_host_virtual_timer(arch::counter() + frequency / 20, 1);
    }

    /// The same call through a control-page channel: this CPU's, or one
    /// in four times another CPU's (under the test host's lock for that
    /// channel, so the registers stay one caller's).
    fn doorbell(&mut self, id: u32, args: &[u64]) -> [u64; 18] {
        let s = &SHARED;
        let own = (self.cpu % 16) as u64;
        let cpus = s.cpus.load(Ordering::Relaxed).clamp(1, 16);
        // Never a VCPU_RUN on another CPU's channel: it holds the channel
        // for up to the run's deadline, and its owner would wait for it.
        let index = if id != HostCall::VcpuRun.id() && self.rng.chance(4) {
            self.rng.below(cpus)
        } else {
            own
        };
        let lock = &s.channel_lock[index as usize % 16];
        // A CPU that stopped (an exception it did not ask for) while it
        // held the lock would stop this one too, silently: after
        // `STALL_MS` the call goes through `HVC` instead, and the run ends
        // with that CPU's exception reported.
        let limit = arch::counter_frequency().saturating_mul(super::STALL_MS) / 1000;
        let start = arch::counter();
        while lock
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if arch::counter().wrapping_sub(start) > limit {
                fuzz_line!(
                    "note cpu={} index={}: channel {index}'s lock was held for {} s; calling through HVC",
                    self.cpu,
                    self.index,
                    super::STALL_MS / 1000
                );
                return psci::call_via(Conduit::Hvc, id, args);
            }
            core::hint::spin_loop();
        }
        if index != own {
            s.foreign_channel.fetch_add(1, Ordering::Relaxed);
        }
        let ch = self.channel - own * PAGE + index * PAGE;
        let r = self.ring(ch, id, args);
        lock.store(false, Ordering::Release);
        r
    }

    fn ring(&mut self, ch: u64, id: u32, args: &[u64]) -> [u64; 18] {
        arch::mmio_write64(ch, u64::from(id));
        for i in 1..18u64 {
            let v = args.get(i as usize - 1).copied().unwrap_or(0);
            arch::mmio_write64(ch + 8 * i, v);
        }
        arch::mmio_write64(ch + rampart_abi::boot::control::DOORBELL, 0);
        let mut r = [0u64; 18];
        for (i, v) in r.iter_mut().enumerate().take(4) {
            *v = arch::mmio_read64(ch + 8 * i as u64);
        }
        r
    }

    fn fail(&self, why: core::fmt::Arguments<'_>) -> Step {
        let s = &SHARED;
        s.failed.store(true, Ordering::Release);
        s.violations[self.cpu].fetch_add(1, Ordering::AcqRel);
        let seed = s.seed.load(Ordering::Relaxed);
        fuzz_line!(
            "FAILED seed={seed} cpu={} index={}: {why}",
            self.cpu,
            self.index
        );
        for rec in self.history.iter().filter(|r| r.id != 0) {
            fuzz_line!(
                "  call cpu={} index={} {}{}({:#x}, {:#x}, {:#x}, {:#x}) = {} [{:#x}]",
                self.cpu,
                rec.index,
                name(rec.id),
                if rec.doorbell { "@doorbell" } else { "" },
                rec.args[0],
                rec.args[1],
                rec.args[2],
                rec.args[3],
                rec.x0 as i64,
                rec.x1
            );
        }
        Err(Failed)
    }

    /// A refusal the model did not expect: counted, the first few noted.
    fn refused(&mut self, what: &str, code: u64) {
        let n = SHARED.refusals[self.cpu].fetch_add(1, Ordering::AcqRel);
        if n < MAX_NOTES {
            fuzz_line!(
                "note cpu={} index={}: {what} = {} though the model expected success",
                self.cpu,
                self.index,
                code as i64
            );
        }
    }

    fn oracle(&mut self) -> Step {
        if SHARED.oracle.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let r = self.call(ORACLE_CHECK, &[]);
        if r[0] != 0 {
            return self.fail(format_args!("ORACLE_CHECK = {}", r[0] as i64));
        }
        if r[1] > self.oracle_seen {
            self.oracle_seen = r[1];
            return self.fail(format_args!(
                "oracle: {} violations so far (events checked {})",
                r[1], r[2]
            ));
        }
        if self.boot {
            fuzz_line!(
                "oracle checked {} events, {} violations (cpu={} index={})",
                r[2],
                r[1],
                self.cpu,
                self.index
            );
        }
        Ok(())
    }

    // ----- drawing values -----

    fn page_address(&self, i: usize) -> u64 {
        self.base + i as u64 * PAGE
    }

    /// A range of 1..=4 window pages (mostly from the pool).
    fn draw_range(&mut self) -> (usize, usize) {
        // One draw in four names a page the hypervisor holds for a VM or a
        // VM owns (any state outside the pool would leave the fuzz guest's
        // area unusable).
        let mut first = self.rng.below(POOL_PAGES as u64) as usize;
        if self.rng.chance(4) {
            let from = self.rng.below(WINDOW_PAGES as u64) as usize;
            if let Some(i) = (0..WINDOW_PAGES)
                .map(|k| (from + k) % WINDOW_PAGES)
                .find(|&i| matches!(self.pages[i], Page::Meta(_) | Page::Vm(_)))
            {
                first = i;
            }
        }
        let count = (1 + self.rng.below(4) as usize).min(WINDOW_PAGES - first);
        (first, count)
    }

    fn all(&self, first: usize, count: usize, state: Page) -> bool {
        self.pages[first..first + count].iter().all(|p| *p == state)
    }

    fn set(&mut self, first: usize, count: usize, state: Page) {
        for p in &mut self.pages[first..first + count] {
            *p = state;
        }
    }

    /// Writes a non-zero word into each page (the host's own), so that a
    /// page that comes back unzeroed shows.
    fn mark(&mut self, first: usize, count: usize) {
        for i in first..first + count {
            let a = self.page_address(i) + 8 * self.rng.below(512);
            arch::ram_write(a, 0x6d61_726b_0000_0000 | a);
        }
    }

    /// Checks pages that just came back to the host read zero.
    fn expect_zero(&mut self, first: usize, count: usize, how: &str) -> Step {
        let (start, end) = (self.page_address(first), self.page_address(first + count));
        if let Some(block) = arch::ram_find_nonzero(start, end) {
            return self.fail(format_args!(
                "{how}: page {:#x} came back to the host not zeroed (non-zero near {block:#x})",
                block & !(PAGE - 1)
            ));
        }
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_VMS).filter(|&i| self.vms[i].is_some())
    }

    fn pick_vm(&mut self) -> Option<usize> {
        let n = self.live().count() as u64;
        if n == 0 {
            return None;
        }
        let k = self.rng.below(n) as usize;
        self.live().nth(k)
    }

    fn free_slot(&self) -> Option<usize> {
        (0..MAX_VMS).find(|&i| self.vms[i].is_none())
    }

    /// A handle that must name no VM: stale (destroyed), the next
    /// generation of a live slot, or made up.
    fn bad_handle_value(&mut self) -> u64 {
        match self.rng.below(5) {
            0 if self.stale[0] != 0 => self.stale[self.rng.below(4) as usize].max(self.stale[0]),
            1 => self
                .pick_vm()
                .and_then(|i| self.vms[i])
                .map_or(0, |vm| vm.handle.wrapping_add(1 << 32)),
            2 => 0,
            3 => u64::MAX - self.rng.below(3),
            _ => (self.rng.next() & !0xffff_ffff) | (0x1000 + 0x8000 + self.rng.below(0x1000)),
        }
    }

    fn forget(&mut self, slot: usize) {
        if let Some(vm) = self.vms[slot].take() {
            let _ = SHARED.sealed_target[self.cpu].compare_exchange(vm.handle, 0, Ordering::AcqRel, Ordering::Acquire);
            self.stale[self.stale_next % 4] = vm.handle;
            self.stale_next += 1;
        }
        SHARED.handles[self.cpu][slot].store(0, Ordering::Release);
    }

    // ----- actions -----

    /// `SHARE_HYP`, `UNSHARE_HYP`, `DONATE_HYP`, `RECLAIM_HYP` on window
    /// pages, checked against the model.
    fn memory_call(&mut self) -> Step {
        let calls = [
            HostCall::ShareHyp,
            HostCall::UnshareHyp,
            HostCall::DonateHyp,
            HostCall::ReclaimHyp,
        ];
        let call = calls[self.rng.below(4) as usize];
        let (first, count) = self.draw_range();
        let (need, after) = match call {
            HostCall::ShareHyp => (Page::Host, Page::SharedHyp),
            HostCall::UnshareHyp => (Page::SharedHyp, Page::Host),
            HostCall::DonateHyp => (Page::Host, Page::DonatedHyp),
            _ => (Page::DonatedHyp, Page::Host),
        };
        let ok = self.all(first, count, need);
        if call == HostCall::DonateHyp && ok {
            self.mark(first, count);
        }
        // The boot CPU waits to write into pages coming back: let it.
        let visits = SHARED.visits[self.cpu].load(Ordering::SeqCst);
        let announced = call == HostCall::ReclaimHyp && ok && self.announce(first, count);
        let r = self.call(call.id(), &[self.page_address(first), count as u64]);
        let written = announced && {
            self.withdraw();
            SHARED.visits[self.cpu].load(Ordering::SeqCst) != visits
        };
        if r[0] == 0 {
            if !ok {
                let states = self.pages[first..first + count]
                    .iter()
                    .find(|p| **p != need)
                    .copied();
                return self.fail(format_args!(
                    "{}({:#x}, {count}) succeeded, but the host's bookkeeping has a page {:?}, not {need:?}",
                    name(call.id()),
                    self.page_address(first),
                    states
                ));
            }
            self.set(first, count, after);
            // (Pages another CPU wrote while they came back are the
            // oracle's to judge, at the moment of return.)
            if call == HostCall::ReclaimHyp && !written {
                self.expect_zero(first, count, "RECLAIM_HYP")?;
            }
        } else if ok && !transient(r[0]) {
            self.refused(name(call.id()), r[0]);
        }
        Ok(())
    }

    /// A memory call on an address or count that must be refused: the
    /// carve-out, control pages, MMIO, beyond or across the end of RAM,
    /// unaligned, zero, huge and wrapping counts.
    fn memory_call_interesting(&mut self) -> Step {
        let s = &SHARED;
        let calls = [
            HostCall::ShareHyp,
            HostCall::UnshareHyp,
            HostCall::DonateHyp,
            HostCall::ReclaimHyp,
            HostCall::VmCreate,
        ];
        let call = calls[self.rng.below(calls.len() as u64) as usize];
        let ram_end = s.ram_end.load(Ordering::Relaxed);
        let carve = |i: usize| s.carveout[i].load(Ordering::Relaxed);
        let own_page = self.rng.below(POOL_PAGES as u64) as usize;
        let own = self.page_address(own_page);
        let (address, count) = match self.rng.below(11) {
            0 if carve(1) > carve(0) => (
                carve(0) + self.rng.below((carve(1) - carve(0)) / PAGE) * PAGE,
                1 + self.rng.below(4),
            ),
            1 if carve(3) > carve(2) => (
                carve(2) + self.rng.below((carve(3) - carve(2)) / PAGE) * PAGE,
                1 + self.rng.below(4),
            ),
            2 if s.control[0].load(Ordering::Relaxed) != 0 => (
                s.control[0].load(Ordering::Relaxed) + self.rng.below(16) * PAGE,
                1,
            ),
            3 => (
                [0x0900_0000, 0x0800_0000, 0x0a00_0000, 0x1000_0000][self.rng.below(4) as usize],
                1,
            ),
            4 => (
                ram_end + self.rng.below(1 << 20) * PAGE,
                1 + self.rng.below(4),
            ),
            5 => (ram_end - PAGE, 2),
            6 => (own + 8 * (1 + self.rng.below(511)), 1),
            7 => (own, 0),
            8 => (own, 1 << (32 + self.rng.below(20))),
            9 => (!(PAGE - 1), 2 + self.rng.below(4)),
            _ => (0, 1 + self.rng.below(4)),
        };
        let args = [
            address,
            count,
            VmConfig {
                debug: false,
                protected: false,
                max_vcpus: 1,
            }
            .encode(),
        ];
        let r = self.call(call.id(), &args);
        if r[0] == 0 {
            return self.fail(format_args!("{}({address:#x}, {count:#x}) succeeded on an address or count that must be refused", name(call.id())));
        }
        Ok(())
    }

    /// `VM_CREATE` with metadata from the window: valid, too few pages,
    /// pages the host does not hold, or a bad configuration.
    fn vm_create(&mut self) -> Step {
        let Some(slot) = self.free_slot() else {
            return self.misc();
        };
        let vcpus = 1 + self.rng.below(8);
        let protected = self.rng.chance(2);
        let mut config = VmConfig {
            debug: self.rng.chance(8),
            protected,
            max_vcpus: vcpus,
        }
        .encode();
        let bad_config = self.rng.chance(10);
        if bad_config {
            config = match self.rng.below(3) {
                0 => config & !0xff00,
                1 => (config & !0xff00) | (9 + self.rng.below(200)) << 8,
                _ => config | 1 << (16 + self.rng.below(48)),
            };
        }
        let min = 1 + vcpus + MIN_STAGE2_PAGES;
        let count = match self.rng.below(4) {
            0 => min - 1,
            1 => min,
            _ => min + self.rng.below(8),
        } as usize;
        let first = self.rng.below((POOL_PAGES - count) as u64) as usize;
        let ok = !bad_config && count as u64 >= min && self.all(first, count, Page::Host);
        let r = self.call(
            HostCall::VmCreate.id(),
            &[self.page_address(first), count as u64, config],
        );
        if r[0] == 0 {
            if !ok {
                return self.fail(format_args!(
                    "VM_CREATE({:#x}, {count}, {config:#x}) succeeded: config valid {}, {} pages for a minimum of {min}, all the host's {}",
                    self.page_address(first),
                    !bad_config,
                    count,
                    self.all(first, count, Page::Host)
                ));
            }
            self.set(first, count, Page::Meta(slot as u8));
            self.vms[slot] = Some(Vm {
                handle: r[1],
                protected,
                vcpus,
                created: 0,
                guest: false,
                off: false,
                mmio_answer: 0,
                signed: false,
            });
            SHARED.handles[self.cpu][slot].store(r[1], Ordering::Release);
        } else if ok && !transient(r[0]) {
            self.refused("VM_CREATE", r[0]);
        }
        Ok(())
    }

    /// A VM that runs the fuzz guest: metadata and RAM from the top of the
    /// window, image loaded over a host pattern, vCPU 0 at the image.
    fn guest_vm(&mut self) -> Step {
        let Some(slot) = self.free_slot() else {
            return self.vcpu_run();
        };
        if !self.all(GUEST_META_FIRST, GUEST_META_PAGES, Page::Host)
            || !self.all(GUEST_RAM_FIRST, GUEST_RAM_PAGES, Page::Host)
        {
            return self.vcpu_run();
        }
        let Ok(image) = vmm::image("fuzz") else {
            return self.fail(format_args!(
                "the fuzz guest is not embedded (build with `cargo xtask`)"
            ));
        };
        let ram = self.page_address(GUEST_RAM_FIRST);
        let ram_size = GUEST_RAM_PAGES as u64 * PAGE;
        // One in six is protected and signed (the build signs the fuzz
        // guest for exactly this RAM, zero-filled past its image): its
        // MMIO guard, memory sharing and relinquishing run for real.
        let bundle = vmm::bundle("fuzz")
            .ok()
            .filter(|b| b.memory == ram_size && b.vcpus == 1 && b.entry == 0);
        let protected = bundle.is_some() && self.rng.chance(6);
        if protected {
            arch::ram_fill(ram, ram + ram_size, 0);
        } else {
            arch::ram_fill(
                ram,
                ram + ram_size,
                0x6675_7a7a_0000_0000 ^ (self.index << 12),
            );
        }
        for (i, chunk) in image.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            arch::ram_write(ram + 8 * i as u64, u64::from_le_bytes(word));
        }
        let config = VmConfig {
            debug: false,
            protected,
            max_vcpus: 1,
        }
        .encode();
        let meta = self.page_address(GUEST_META_FIRST);
        let r = self.call(
            HostCall::VmCreate.id(),
            &[meta, GUEST_META_PAGES as u64, config],
        );
        if r[0] != 0 {
            if !transient(r[0]) {
                self.refused("VM_CREATE (fuzz guest)", r[0]);
            }
            return Ok(());
        }
        let handle = r[1];
        self.set(GUEST_META_FIRST, GUEST_META_PAGES, Page::Meta(slot as u8));
        self.vms[slot] = Some(Vm {
            handle,
            protected,
            vcpus: 1,
            created: 0,
            guest: false,
            off: false,
            mmio_answer: 0,
            signed: false,
        });
        SHARED.handles[self.cpu][slot].store(handle, Ordering::Release);
        let r = self.call(
            HostCall::VmDonate.id(),
            &[handle, ram, GUEST_RAM_PAGES as u64, GUEST_RAM_BASE],
        );
        if r[0] != 0 {
            if !transient(r[0]) {
                self.refused("VM_DONATE (fuzz guest RAM)", r[0]);
            }
            return Ok(());
        }
        self.set(
            GUEST_RAM_FIRST,
            GUEST_RAM_PAGES,
            if protected {
                Page::GuestRam(slot as u8)
            } else {
                Page::Vm(slot as u8)
            },
        );
        SHARED.guests[self.cpu].fetch_add(1, Ordering::Relaxed);
        let c0 = self.call(HostCall::VcpuCreate.id(), &[handle, 0])[0];
        let c1 = self.call(
            HostCall::VcpuSetRegs.id(),
            &[handle, 0, GUEST_RAM_BASE, ram_size],
        )[0];
        let mut signed = false;
        if let Some(b) = bundle.filter(|_| protected) {
            let mut args = [0u64; 13];
            args[0] = handle;
            args[1..5].copy_from_slice(&rampart_abi::host::bytes_to_words::<4>(&b.signer));
            args[5..13].copy_from_slice(&rampart_abi::host::bytes_to_words::<8>(&b.signature));
            let r = self.call(HostCall::VmSetSignature.id(), &args)[0];
            signed = r == 0;
            if signed {
                // Issue 14: other CPUs evict and restore its pages while
                // it runs here (`sealed.rs`).
                SHARED.sealed_target[self.cpu].store(handle, Ordering::Release);
            }
            if !signed {
                self.refused("VM_SET_SIGNATURE (fuzz guest)", r);
            }
            SHARED.protected_guests[self.cpu].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(vm) = self.vms[slot].as_mut() {
            if c0 == 0 {
                vm.created |= 1;
            }
            vm.guest = c0 == 0 && c1 == 0;
            vm.signed = signed;
        }
        if c0 != 0 || c1 != 0 {
            self.refused(
                "VCPU_CREATE/VCPU_SET_REGS (fuzz guest)",
                if c0 != 0 { c0 } else { c1 },
            );
        }
        Ok(())
    }

    /// `VM_DESTROY` of an own VM (every page it held comes back zeroed) or
    /// of a handle that names none (must fail).
    fn vm_destroy(&mut self) -> Step {
        if self.rng.chance(4) {
            let h = self.bad_handle_value();
            let r = self.call(HostCall::VmDestroy.id(), &[h]);
            if r[0] == 0 {
                return self.fail(format_args!(
                    "VM_DESTROY({h:#x}) succeeded on a stale or made-up handle"
                ));
            }
            return Ok(());
        }
        let Some(slot) = self.pick_vm() else {
            return self.vm_create();
        };
        let Some(vm) = self.vms[slot] else {
            return Ok(());
        };
        let r = self.call(HostCall::VmDestroy.id(), &[vm.handle]);
        if r[0] != 0 {
            if !transient(r[0]) {
                self.refused("VM_DESTROY", r[0]);
            }
            return Ok(());
        }
        self.forget(slot);
        let tag = slot as u8;
        let mut i = 0;
        while i < WINDOW_PAGES {
            match self.pages[i] {
                Page::Meta(n) | Page::Vm(n) | Page::GuestRam(n) if n == tag => {
                    self.pages[i] = Page::Host;
                    self.expect_zero(i, 1, "VM_DESTROY")?;
                }
                Page::VmShared(n) if n == tag => self.pages[i] = Page::Host,
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    /// issue 16: `VM_DECLARE_ZERO` of a drawn range. It maps nothing and
    /// changes no page the fuzzer follows; only a protected VM that has not
    /// run may succeed (a measured one, a realm, a full list or an evicted
    /// page refuse too). The signed fuzz guest is only given ranges of its
    /// own RAM, all mapped, so its measurement and its run stay as signed.
    fn vm_declare_zero(&mut self) -> Step {
        let own = if self.rng.chance(5) {
            None
        } else {
            self.pick_vm()
        };
        let vm = own.and_then(|slot| self.vms[slot]);
        let handle = vm.map_or_else(|| self.bad_handle_value(), |vm| vm.handle);
        let guest = vm.is_some_and(|vm| vm.guest);
        let pages = 1 + self.rng.below(if guest { GUEST_RAM_PAGES as u64 / 4 } else { 64 });
        let bad = self.rng.chance(6);
        let (ipa, pages, flags) = if bad {
            match self.rng.below(4) {
                0 => (GUEST_RAM_BASE + 8, pages, 0),
                1 => (GUEST_RAM_BASE, 0, 0),
                2 => (!(PAGE - 1), pages.max(2), 0),
                _ => (GUEST_RAM_BASE, pages, 1 << self.rng.below(64)),
            }
        } else if guest {
            let first = self.rng.below(GUEST_RAM_PAGES as u64 - pages + 1);
            (GUEST_RAM_BASE + first * PAGE, pages, 0)
        } else {
            match self.rng.below(3) {
                0 => (GUEST_RAM_BASE + self.rng.below(GUEST_RAM_PAGES as u64 + 64) * PAGE, pages, 0),
                1 => (self.rng.below(GUEST_RAM_BASE / PAGE) * PAGE, pages, 0),
                _ => ((1 << 60) + self.rng.below(64) * PAGE, pages, 0),
            }
        };
        let beyond = ipa >= 1 << 60;
        let must_fail = vm.is_none_or(|vm| !vm.protected) || bad || beyond;
        let r = self.call(HostCall::VmDeclareZero.id(), &[handle, ipa, pages, flags]);
        if r[0] == 0 && must_fail {
            return self.fail(format_args!(
                "VM_DECLARE_ZERO({handle:#x}, {ipa:#x}, {pages}, {flags:#x}) succeeded: own VM {}, protected {}, arguments bad {bad}, beyond the IPA space {beyond}",
                vm.is_some(),
                vm.is_some_and(|vm| vm.protected)
            ));
        }
        Ok(())
    }

    /// `VM_DONATE` / `VM_SHARE` of window pages to a VM at a drawn IPA.
    fn vm_give(&mut self) -> Step {
        if self.rng.chance(8) {
            return self.vm_declare_zero();
        }
        let share = self.rng.chance(3);
        // issue 16: a quarter of the donations ask the hypervisor to zero
        // the pages (`VM_DONATE_ZEROED`), one in eight of those with a
        // reserved flag set.
        let zeroed = !share && self.rng.chance(4);
        let flags = if zeroed && self.rng.chance(8) {
            1 << self.rng.below(64)
        } else {
            0
        };
        let call = if share {
            HostCall::VmShare
        } else if zeroed {
            HostCall::VmDonateZeroed
        } else {
            HostCall::VmDonate
        };
        let own = if self.rng.chance(5) {
            None
        } else {
            self.pick_vm()
        };
        let handle = match own {
            Some(slot) => self.vms[slot].map_or(0, |vm| vm.handle),
            None => self.bad_handle_value(),
        };
        let (first, count) = self.draw_range();
        let ipa_bad = self.rng.chance(6);
        let ipa = if ipa_bad {
            match self.rng.below(3) {
                0 => (1 << 48) + self.rng.below(64) * PAGE,
                1 => GUEST_RAM_BASE + 8,
                _ => !(PAGE - 1),
            }
        } else {
            match self.rng.below(3) {
                0 => GUEST_RAM_BASE + self.rng.below(GUEST_RAM_PAGES as u64 + 64) * PAGE,
                1 => self.rng.below(GUEST_RAM_BASE / PAGE) * PAGE,
                _ => (1 << 36) + self.rng.below(1 << 20) * PAGE,
            }
        };
        let protected = own.and_then(|s| self.vms[s]).is_some_and(|vm| vm.protected);
        let host_pages = self.all(first, count, Page::Host);
        let must_fail = own.is_none()
            || !host_pages
            || ipa_bad
            || (share && protected)
            || flags != 0
            || (zeroed && count as u64 > rampart_abi::host::DONATE_ZEROED_MAX_PAGES);
        // A protected fuzz guest may relinquish or share any page it owns:
        // none from the pool goes to it (the pool's model stays exact).
        if !must_fail && protected && own.and_then(|s| self.vms[s]).is_some_and(|vm| vm.guest) {
            return Ok(());
        }
        if host_pages && !share {
            self.mark(first, count);
        }
        let r = self.call(
            call.id(),
            &[handle, self.page_address(first), count as u64, ipa, flags],
        );
        if r[0] == 0 {
            if must_fail {
                return self.fail(format_args!(
                    "{}({handle:#x}, {:#x}, {count}, {ipa:#x}, {flags:#x}) succeeded: own VM {}, pages all the host's {host_pages}, IPA bad {ipa_bad}, protected {protected}",
                    name(call.id()),
                    self.page_address(first),
                    own.is_some()
                ));
            }
            if let Some(slot) = own {
                let tag = slot as u8;
                self.set(
                    first,
                    count,
                    if share {
                        Page::VmShared(tag)
                    } else {
                        Page::Vm(tag)
                    },
                );
            }
        }
        Ok(())
    }

    /// `VCPU_CREATE` of a drawn index.
    fn vcpu_create(&mut self) -> Step {
        let Some(slot) = self.pick_vm() else {
            return self.vm_create();
        };
        let Some(vm) = self.vms[slot] else {
            return Ok(());
        };
        let idx = self.rng.below(10);
        let must_fail = idx >= vm.vcpus || vm.created & (1 << idx) != 0;
        let r = self.call(HostCall::VcpuCreate.id(), &[vm.handle, idx]);
        if r[0] == 0 {
            if must_fail {
                return self.fail(format_args!(
                    "VCPU_CREATE({:#x}, {idx}) succeeded for a VM of {} vCPUs whose created set is {:#b}",
                    vm.handle, vm.vcpus, vm.created
                ));
            }
            if let Some(v) = self.vms[slot].as_mut() {
                v.created |= 1 << idx;
            }
        } else if !must_fail && !transient(r[0]) {
            self.refused("VCPU_CREATE", r[0]);
        }
        Ok(())
    }

    /// `VCPU_RUN` for a budget of exits, answering the fuzz guest's MMIO
    /// reads (its seed) and sometimes its memory faults; or one run of
    /// another CPU's VM.
    fn vcpu_run(&mut self) -> Step {
        if self.rng.chance(10) {
            let other = self.rng.below(SHARED.cpus.load(Ordering::Relaxed)) as usize % MAX_CPUS;
            let h = SHARED.handles[other][self.rng.below(MAX_VMS as u64) as usize]
                .load(Ordering::Acquire);
            if h != 0 {
                // The same deadline as for an own VM: the other CPU's VM
                // may be a guest that has stopped exiting (a random
                // VCPU_SET_REGS, a WFI), and without it this CPU would
                // stay in the guest for good.
                self.arm_deadline();
                let r = self.call(HostCall::VcpuRun.id(), &[h, 0, 0]);
                vmm::hw::set_host_virtual_timer(0, 0);
                if r[0] == 0 {
                    SHARED.exits[self.cpu].fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(());
        }
        // Mostly the fuzz guest, when there is one.
        let guest = (0..MAX_VMS).find(|&i| self.vms[i].is_some_and(|vm| vm.guest && !vm.off));
        let picked = match guest {
            Some(g) if !self.rng.chance(4) => Some(g),
            _ => self.pick_vm(),
        };
        let Some(slot) = picked else { return Ok(()) };
        let Some(vm) = self.vms[slot] else {
            return Ok(());
        };
        let vcpu = if vm.guest || self.rng.chance(2) {
            0
        } else {
            self.rng.below(10)
        };
        // A protected VM runs only as the signed fuzz guest.
        let must_fail = vcpu >= 8 || vm.created & (1 << vcpu) == 0 || (vm.protected && !vm.signed);
        let budget = 1 + self.rng.below(48);
        let mut answer = vm.mmio_answer;
        self.arm_deadline();
        for n in 0..budget {
            let r = self.call(HostCall::VcpuRun.id(), &[vm.handle, vcpu, answer]);
            if r[0] != 0 {
                break;
            }
            // A vCPU that is off answers EXIT_POWERED_OFF without entering
            // the guest; anything else means the guest ran.
            if must_fail
                && !(r[1] == ExitReason::PoweredOff as u64 && vm.created & (1 << vcpu) != 0)
            {
                return self.fail(format_args!(
                    "VCPU_RUN({:#x}, {vcpu}) entered the guest (exit {}): created {:#b}, protected {} (never correctly signed)",
                    vm.handle, r[1], vm.created, vm.protected
                ));
            }
            SHARED.exits[self.cpu].fetch_add(1, Ordering::Relaxed);
            answer = 0;
            let reason = r[1];
            if reason == ExitReason::Mmio as u64 {
                if r[3] & mmio::WRITE == 0 {
                    answer = if r[2] == SEED_ADDRESS {
                        self.rng.next() | 1
                    } else {
                        self.rng.next()
                    };
                }
            } else if reason == ExitReason::MemoryFault as u64 {
                let ipa = r[2] & !(PAGE - 1);
                let page = self.rng.below(POOL_PAGES as u64) as usize;
                if self.rng.chance(2) && self.pages[page] == Page::Host && !vm.protected {
                    self.mark(page, 1);
                    let c = self.call(
                        HostCall::VmDonate.id(),
                        &[vm.handle, self.page_address(page), 1, ipa],
                    );
                    if c[0] == 0 {
                        self.pages[page] = Page::Vm(slot as u8);
                    }
                }
            } else if reason == ExitReason::SystemOff as u64
                || reason == ExitReason::SystemReset as u64
                || reason == ExitReason::PoweredOff as u64
            {
                if let Some(v) = self.vms[slot].as_mut() {
                    v.off = true;
                }
                break;
            }
            let _ = n;
        }
        vmm::hw::set_host_virtual_timer(0, 0);
        if let Some(v) = self.vms[slot].as_mut() {
            v.mmio_answer = answer;
        }
        Ok(())
    }

    /// `VCPU_INJECT` and `VCPU_SET_REGS` with drawn arguments (never the
    /// fuzz guest's entry).
    fn vcpu_poke(&mut self) -> Step {
        let Some(slot) = self.pick_vm() else {
            return self.misc();
        };
        let Some(vm) = self.vms[slot] else {
            return Ok(());
        };
        let vcpu = self.rng.below(10);
        if self.rng.chance(2) || vm.guest {
            let intid = match self.rng.below(4) {
                0 => self.rng.below(16),
                1 => 16 + self.rng.below(16),
                2 => 1000 + self.rng.below(40),
                _ => self.rng.next(),
            };
            let r = self.call(HostCall::VcpuInject.id(), &[vm.handle, vcpu, intid]);
            if r[0] == 0 && (intid >= 1020 || vcpu >= 8) {
                return self.fail(format_args!("VCPU_INJECT({:#x}, {vcpu}, {intid:#x}) succeeded for an INTID or vCPU that does not exist", vm.handle));
            }
        } else {
            let pc = GUEST_RAM_BASE + self.rng.below(1 << 20) * 4;
            let x0 = self.rng.next();
            let r = self.call(HostCall::VcpuSetRegs.id(), &[vm.handle, vcpu, pc, x0]);
            if r[0] == 0 && vm.created & (1 << vcpu.min(63)) == 0 {
                return self.fail(format_args!(
                    "VCPU_SET_REGS({:#x}, {vcpu}) succeeded for a vCPU never created",
                    vm.handle
                ));
            }
        }
        Ok(())
    }

    /// `VM_SET_SIGNATURE`: forged (random key and signature) or a valid
    /// bundle's for another image (hello's); neither may let a protected VM
    /// run (checked in [`Self::vcpu_run`]).
    fn signature(&mut self) -> Step {
        let handle = match self.pick_vm() {
            Some(slot) if !self.rng.chance(5) => self.vms[slot].map_or(0, |vm| vm.handle),
            _ => self.bad_handle_value(),
        };
        let mut args = [0u64; 13];
        args[0] = handle;
        match vmm::bundle("hello") {
            Ok(b) if self.rng.chance(2) => {
                args[1..5].copy_from_slice(&rampart_abi::host::bytes_to_words::<4>(&b.signer));
                args[5..13].copy_from_slice(&rampart_abi::host::bytes_to_words::<8>(&b.signature));
            }
            _ => {
                for a in &mut args[1..] {
                    *a = self.rng.next();
                }
            }
        }
        let _ = self.call(HostCall::VmSetSignature.id(), &args);
        Ok(())
    }

    /// Calls with no state: version, features, attestation key, the VM
    /// list (own, foreign, made-up handles), and unassigned function IDs
    /// (which must be refused).
    fn misc(&mut self) -> Step {
        match self.rng.below(6) {
            0 => {
                let _ = self.call(HostCall::Version.id(), &[]);
            }
            1 => {
                let f = self.rng.next() & 0xffff_ffff;
                let _ = self.call(HostCall::Features.id(), &[f]);
            }
            2 => {
                let _ = self.call(HostCall::AttestationKey.id(), &[]);
            }
            3 | 4 => {
                let h = if self.rng.chance(2) {
                    0
                } else {
                    self.bad_handle_value()
                };
                let _ = self.call(HostCall::VmList.id(), &[h]);
            }
            _ => {
                // Unassigned IDs of the hypervisor's range (0xF00 is the
                // oracle's test call).
                let mut offset = match self.rng.below(3) {
                    0 => 6 + self.rng.below(10),
                    1 => 0x1B + self.rng.below(0x40),
                    _ => self.rng.below(0x8000),
                };
                if offset == 0xF00
                    || HostCall::ALL.iter().any(|c| {
                        c.id()
                            == rampart_abi::smccc::fast_call_id(
                                true,
                                rampart_abi::smccc::owner::VENDOR_HYPERVISOR,
                                HOST_FUNCTION_BASE + offset as u16,
                            )
                    })
                {
                    offset = 0x7ff;
                }
                let id = rampart_abi::smccc::fast_call_id(
                    true,
                    rampart_abi::smccc::owner::VENDOR_HYPERVISOR,
                    HOST_FUNCTION_BASE.wrapping_add(offset as u16),
                );
                let (a, b) = (self.rng.next(), self.rng.next());
                let r = self.call(id, &[a, b]);
                if r[0] == 0 {
                    return self.fail(format_args!(
                        "unassigned host function {id:#x} returned SUCCESS"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every VM call with a handle that names no VM must fail.
    fn bad_handle(&mut self) -> Step {
        let h = self.bad_handle_value();
        let calls = [
            HostCall::VmDestroy,
            HostCall::VcpuCreate,
            HostCall::VmDonate,
            HostCall::VmShare,
            HostCall::VcpuSetRegs,
            HostCall::VcpuRun,
            HostCall::VcpuInject,
        ];
        let call = calls[self.rng.below(calls.len() as u64) as usize];
        let (first, count) = self.draw_range();
        let args: [u64; 4] = match call {
            HostCall::VmDonate | HostCall::VmShare => [
                h,
                self.page_address(first),
                count as u64,
                GUEST_RAM_BASE + (1 << 30),
            ],
            _ => [h, self.rng.below(2), self.rng.below(64), 0],
        };
        let r = self.call(call.id(), &args);
        if r[0] == 0 {
            return self.fail(format_args!(
                "{}({h:#x}, ...) succeeded on a stale or made-up handle",
                name(call.id())
            ));
        }
        Ok(())
    }

    /// `write-returned` (boot CPU): waits a moment for another CPU's
    /// `RECLAIM_HYP` ([`Stream::announce`]) and stores into its pages
    /// until the call returned, probing (a page still donated aborts; one
    /// already back takes the store). An oracle that read the pages after
    /// the call, not at the moment of return, would report them.
    fn write_returned(&mut self) -> Step {
        let s = &SHARED;
        let cpus = s.cpus.load(Ordering::Relaxed) as usize;
        if cpus < 2 {
            return Ok(());
        }
        s.waiting.store(true, Ordering::SeqCst);
        let mut target = None;
        crate::cpus::wait_until(20, || {
            target = (1..cpus).find(|&c| s.returning[c][0].load(Ordering::SeqCst) != 0);
            target.is_some()
        });
        s.waiting.store(false, Ordering::SeqCst);
        let Some(c) = target else { return Ok(()) };
        s.writers[c].fetch_add(1, Ordering::SeqCst);
        s.visits[c].fetch_add(1, Ordering::SeqCst);
        let seq = s.returning[c][0].load(Ordering::SeqCst);
        let (start, pages) = (
            s.returning[c][1].load(Ordering::SeqCst),
            s.returning[c][2].load(Ordering::SeqCst),
        );
        let mut landed = 0u64;
        let mut tries = 0u32;
        while seq != 0 && s.returning[c][0].load(Ordering::SeqCst) == seq && tries < 100_000 {
            tries += 1;
            let address = start + self.rng.below(pages.max(1) * PAGE / 8) * 8;
            if arch::probe(Access::Store, address, 0x7772_6974_6500_0000 | tries as u64)
                .fault
                .is_none()
            {
                landed += 1;
            }
        }
        s.writers[c].fetch_sub(1, Ordering::SeqCst);
        if landed > 0 {
            s.raced_stores.fetch_add(landed, Ordering::AcqRel);
            s.raced_calls.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// For `write-returned`: `DONATE_HYP` of two of the pool's host pages,
    /// then their `RECLAIM_HYP` with the boot CPU storing into them while
    /// it runs.
    fn give_back_for_writer(&mut self) -> Step {
        let start = self.rng.below(POOL_PAGES as u64 - 2) as usize;
        let Some(first) = (0..POOL_PAGES - 2)
            .map(|k| (start + k) % (POOL_PAGES - 2))
            .find(|&i| self.all(i, 2, Page::Host))
        else {
            return Ok(());
        };
        self.mark(first, 2);
        let r = self.call(HostCall::DonateHyp.id(), &[self.page_address(first), 2]);
        if r[0] != 0 {
            return Ok(());
        }
        self.set(first, 2, Page::DonatedHyp);
        let visits = SHARED.visits[self.cpu].load(Ordering::SeqCst);
        let announced = self.announce(first, 2);
        let r = self.call(HostCall::ReclaimHyp.id(), &[self.page_address(first), 2]);
        let written = announced && {
            self.withdraw();
            SHARED.visits[self.cpu].load(Ordering::SeqCst) != visits
        };
        if r[0] == 0 {
            self.set(first, 2, Page::Host);
            if !written {
                self.expect_zero(first, 2, "RECLAIM_HYP")?;
            }
        } else if !transient(r[0]) {
            self.refused("RECLAIM_HYP", r[0]);
        }
        Ok(())
    }

    /// Before a `RECLAIM_HYP` of window pages on a secondary: if the boot
    /// CPU waits to write into returning pages, names them and waits a
    /// moment for it to start. True if announced.
    fn announce(&mut self, first: usize, count: usize) -> bool {
        let s = &SHARED;
        if self.boot || !s.waiting.load(Ordering::SeqCst) {
            return false;
        }
        let r = &s.returning[self.cpu];
        r[1].store(self.page_address(first), Ordering::SeqCst);
        r[2].store(count as u64, Ordering::SeqCst);
        r[0].store(self.index + 1, Ordering::SeqCst);
        crate::cpus::wait_until(2, || s.writers[self.cpu].load(Ordering::SeqCst) != 0);
        true
    }

    /// After the call: withdraws the announcement and waits until no
    /// writer is inside the pages.
    fn withdraw(&mut self) {
        let s = &SHARED;
        s.returning[self.cpu][0].store(0, Ordering::SeqCst);
        while s.writers[self.cpu].load(Ordering::SeqCst) != 0 {
            core::hint::spin_loop();
        }
    }

    /// Races a memory call on 1 or 2 pages of this CPU's pool against
    /// another CPU's memory call on the same pages ([`race`]); with one
    /// CPU, a plain memory call.
    fn race_owner(&mut self) -> Step {
        let s = &SHARED;
        if s.cpus.load(Ordering::Relaxed) < 2 {
            return self.memory_call();
        }
        let count = 1 + self.rng.below(2) as usize;
        let span = POOL_PAGES - count;
        let from = self.rng.below(span as u64) as usize;
        let c1 = race::CALLS[self.rng.below(4) as usize];
        let Some(first) = (0..span).map(|k| (from + k) % span).find(|&i| {
            matches!(
                self.pages[i],
                Page::Host | Page::SharedHyp | Page::DonatedHyp
            ) && self.all(i, count, self.pages[i])
        }) else {
            return Ok(());
        };
        let state = self.pages[first];
        let address = self.page_address(first);
        let r = &s.race;
        if r[0]
            .compare_exchange(
                race::IDLE,
                race::CLAIMED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Ok(());
        }
        if state == Page::Host {
            self.mark(first, count);
        }
        r[1].store(self.cpu as u64, Ordering::Relaxed);
        r[2].store(address, Ordering::Relaxed);
        r[3].store(count as u64, Ordering::Relaxed);
        r[0].store(race::OFFERED, Ordering::Release);
        crate::cpus::wait_until(race::OFFER_MS, || {
            r[0].load(Ordering::Acquire) != race::OFFERED
        });
        if r[0]
            .compare_exchange(
                race::OFFERED,
                race::IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            // Nobody came.
            return Ok(());
        }
        // Accepted: both call now.
        r[0].store(race::GO, Ordering::Release);
        let r1 = self.call(c1.id(), &[address, count as u64])[0] as i64;
        let finished = crate::cpus::wait_until(super::STALL_MS, || {
            r[0].load(Ordering::Acquire) == race::DONE
        });
        let (c2, r2) = (
            race::CALLS[r[5].load(Ordering::Acquire) as usize % 4],
            r[6].load(Ordering::Acquire) as i64,
        );
        r[0].store(race::IDLE, Ordering::Release);
        if !finished {
            return self.fail(format_args!(
                "race on {address:#x} ({count} pages): the other CPU's call did not return within {} s",
                super::STALL_MS / 1000
            ));
        }
        let Some(after) = race::outcome(state, c1, r1, c2, r2) else {
            return self.fail(format_args!(
                "race on {address:#x} ({count} pages, {state:?}): {}={r1} here and {}={r2} on another CPU, which no order of the two calls gives",
                name(c1.id()),
                name(c2.id())
            ));
        };
        race::count(r1 == 0, r2 == 0);
        self.set(first, count, after);
        let reclaimed =
            (c1 == HostCall::ReclaimHyp && r1 == 0) || (c2 == HostCall::ReclaimHyp && r2 == 0);
        if reclaimed && after.host_mapped() {
            self.expect_zero(first, count, "RECLAIM_HYP (raced)")?;
        }
        Ok(())
    }

    /// Takes part in another CPU's race ([`race`]): its pages, this CPU's
    /// drawn memory call, at its go.
    fn race_partner(&mut self) -> Step {
        let r = &SHARED.race;
        if r[0]
            .compare_exchange(
                race::OFFERED,
                race::ACCEPTED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Ok(());
        }
        let (address, count) = (r[2].load(Ordering::Acquire), r[3].load(Ordering::Acquire));
        let index = self.rng.below(4);
        let c2 = race::CALLS[index as usize];
        r[5].store(index, Ordering::Relaxed);
        // The owner says go as soon as it sees the acceptance.
        let go =
            crate::cpus::wait_until(super::STALL_MS, || r[0].load(Ordering::Acquire) == race::GO);
        if !go {
            return self.fail(format_args!(
                "race on {address:#x}: the offering CPU never said go"
            ));
        }
        let x0 = self.call(c2.id(), &[address, count])[0];
        r[6].store(x0, Ordering::Relaxed);
        r[0].store(race::DONE, Ordering::Release);
        Ok(())
    }

    /// A host load from a window page: it must work exactly when the model
    /// says the host holds the page (every CPU: a probe that catches the
    /// abort).
    fn touch(&mut self) -> Step {
        let i = self.rng.below(WINDOW_PAGES as u64) as usize;
        let address = self.page_address(i) + 8 * self.rng.below(512);
        let mapped = self.pages[i].host_mapped();
        if matches!(self.pages[i], Page::GuestRam(_)) {
            return Ok(());
        }
        if self.rng.chance(16) {
            return self.peek_channel();
        }
        if self.rng.chance(8) {
            return self.touch_forbidden();
        }
        let outcome = arch::probe(Access::Load, address, 0);
        match (mapped, outcome.fault) {
            (true, Some(e)) => self.fail(format_args!("host load from {address:#x} ({:?}) aborted: {e}", self.pages[i])),
            (false, None) => self.fail(format_args!(
                "host load from {address:#x} ({:?}) worked: a page the host gave away is still mapped for it (read {:#x})",
                self.pages[i], outcome.register
            )),
            _ => Ok(()),
        }
    }
}

impl Stream {
    /// A load of a register of any CPU's channel, without the test host's
    /// lock: it works, or aborts while another CPU's call is in it (`docs/abi.md`,
    /// "a channel another CPU is using"); either way nothing else changes.
    fn peek_channel(&mut self) -> Step {
        let s = &SHARED;
        let k0 = s.control[0].load(Ordering::Relaxed);
        let cpus = s.cpus.load(Ordering::Relaxed).clamp(1, 16);
        if k0 == 0 {
            return Ok(());
        }
        let address = k0 + self.rng.below(cpus) * PAGE + 8 * self.rng.below(18);
        let _ = arch::probe(Access::Load, address, 0);
        Ok(())
    }

    /// A host load that must abort (any CPU): the carve-out, or a control
    /// page at an offset that is neither a register nor allowed for loads
    /// (`0x90` and up, the doorbell included).
    fn touch_forbidden(&mut self) -> Step {
        let s = &SHARED;
        let (c0, c1) = (
            s.carveout[0].load(Ordering::Relaxed),
            s.carveout[1].load(Ordering::Relaxed),
        );
        let (k0, k1) = (
            s.control[0].load(Ordering::Relaxed),
            s.control[1].load(Ordering::Relaxed),
        );
        let mut address = if c1 > c0 && self.rng.chance(2) {
            c0 + 8 * self.rng.below((c1 - c0) / 8)
        } else if k1 > k0 {
            k0 + self.rng.below((k1 - k0) / PAGE) * PAGE
        } else {
            return Ok(());
        };
        if (k0..k1).contains(&address) {
            address = (address & !(PAGE - 1)) + 0x90 + 8 * self.rng.below((PAGE - 0x90) / 8);
        }
        let outcome = arch::probe(Access::Load, address, 0);
        if outcome.fault.is_none() {
            return self.fail(format_args!(
                "host load from {address:#x} (carve-out or a control page's forbidden offset) worked, read {:#x}",
                outcome.register
            ));
        }
        Ok(())
    }
}

/// Refusals that depend on other CPUs or the page pool, not on the model.
fn transient(code: u64) -> bool {
    let c = code as i64;
    c == Error::NoMemory.code() || c == Error::Busy.code()
}

/// A host function's short name.
pub(super) fn name(id: u32) -> &'static str {
    if id == ORACLE_CHECK {
        return "ORACLE_CHECK";
    }
    HostCall::ALL
        .iter()
        .find(|c| c.id() == id)
        .map_or("UNASSIGNED", |c| {
            c.name().strip_prefix("RAMPART_HOST_").unwrap_or(c.name())
        })
}
