//! Running a Linux guest: one thread per vCPU in a `VCPU_RUN` loop on its
//! own channel, the MMIO bus (GIC, PL011, virtio-mmio), interrupt
//! injection and `WFI` sleeps.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use rampart_abi::host::{ExitReason, HostCall, mmio};

use super::gic::{Gic, Injection, Window};
use super::layout;
use super::pl011::Pl011;
use crate::bus::{IrqLine, MmioDevice};
use crate::hyp::{Channel, Hyp, call, checked};
use crate::plan::Plan;
use crate::run::Outcome;
use crate::stats::{self, Counters};

/// The VM being run.
pub struct Vm<'a> {
    /// Console prefix.
    pub name: &'a str,
    /// VM handle.
    pub handle: u64,
    /// vCPUs.
    pub vcpus: usize,
    /// Channels: vCPU *i* on `channels[i]`, the injector on the last.
    pub channels: &'a [Channel<'a>],
    /// Print every exit.
    pub trace: bool,
    /// For the statistics.
    pub plan: &'a Plan,
    /// For the statistics.
    pub region_phys: u64,
    /// For the statistics.
    pub state_dir: &'a Path,
    /// For the statistics.
    pub kernel: &'a Path,
}

/// Per-device MMIO exit counters (`rampart-vmm stats`).
#[derive(Default)]
pub struct DeviceCounters {
    /// GIC distributor.
    pub gicd: AtomicU64,
    /// GIC redistributors.
    pub gicr: AtomicU64,
    /// PL011.
    pub uart: AtomicU64,
    /// virtio-mmio transports.
    pub virtio: [AtomicU64; layout::VIRTIO_MAX as usize],
    /// Anything else (reads 0, writes ignored).
    pub other: AtomicU64,
}

/// Wakes a vCPU thread sleeping in `WFI`.
#[derive(Default)]
struct Kick {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Kick {
    fn kick(&self) {
        *self
            .flag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    /// Sleeps up to `d`, or until kicked.
    fn sleep(&self, d: Duration) {
        let mut f = self
            .flag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*f {
            f = self
                .cv
                .wait_timeout(f, d)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        *f = false;
    }
}

/// The devices on the bus.
pub struct Bus {
    /// The UART.
    pub uart: Mutex<Pl011>,
    /// virtio-mmio transports, window *i* at `virtio_base(i)`.
    pub virtio: Vec<Mutex<Box<dyn MmioDevice>>>,
}

/// An SPI line of the emulated GIC, for a device.
pub struct SpiLine {
    gic: Arc<Gic>,
    intid: u32,
    tx: Mutex<mpsc::Sender<Injection>>,
}

impl IrqLine for SpiLine {
    fn set(&self, level: bool) {
        if let Some(inj) = self.gic.set_level(self.intid, level) {
            let _ = self
                .tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(inj);
        }
    }
}

struct Shared<'a> {
    vm: &'a Vm<'a>,
    gic: Arc<Gic>,
    bus: Bus,
    devices: DeviceCounters,
    counters: Arc<Counters>,
    /// When the kernel started `/init` ("Run /init" on its console), µs
    /// after the VMM started.
    init_us: Arc<AtomicU64>,
    kicks: Vec<Kick>,
    /// Each vCPU thread's `pthread_t` while it is inside `VCPU_RUN`, else 0.
    running: Vec<AtomicU64>,
    /// Wake-ups asked for by guest SGIs (`EXIT_INTERRUPT` with `x2` = 2).
    sgi_kicks: AtomicU64,
    stop: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    console: Arc<Mutex<Vec<u8>>>,
    unhandled: AtomicU64,
}

impl Shared<'_> {
    fn finish(&self, o: Outcome) {
        let mut g = self
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_none() {
            *g = Some(o);
        }
        self.stop.store(true, Ordering::Release);
        for k in &self.kicks {
            k.kick();
        }
    }

    fn stopping(&self) -> bool {
        if let Some(sig) = crate::signals::pending() {
            self.finish(Outcome::Interrupted(sig));
        }
        self.stop.load(Ordering::Acquire)
    }

    fn inject(&self, hyp: &dyn Hyp, (vcpu, intid, level): Injection) {
        let flags = if level { rampart_abi::host::inject::LEVEL } else { 0 };
        if let Err(e) = checked(
            hyp,
            HostCall::VcpuInject.id(),
            &[self.vm.handle, vcpu as u64, u64::from(intid), flags],
        ) {
            eprintln!(
                "[{}] rampart-vmm: injecting INTID {intid} into vCPU {vcpu}: {e}",
                self.vm.name
            );
        }
        if let Some(k) = self.kicks.get(vcpu) {
            k.kick();
        }
    }

    /// Wakes the vCPUs in `mask` (not `from`) for an SGI pending for them
    /// at EL2: a thread sleeping in `WFI` through its condition variable,
    /// a thread inside `VCPU_RUN` with `SIGUSR2` — the host kernel then
    /// interrupts the CPU running it, which ends the run (`EXIT_INTERRUPT`),
    /// and the next entry delivers the SGI.
    fn wake(&self, from: usize, mask: u64) {
        for t in 0..self.vm.vcpus.min(64) {
            if t == from || mask & (1 << t) == 0 {
                continue;
            }
            self.sgi_kicks.fetch_add(1, Ordering::Relaxed);
            self.kicks[t].kick();
            let thread = self.running[t].load(Ordering::Acquire);
            if thread != 0 {
                // SAFETY: `thread` is a live vCPU thread of this process
                // (the scope joins them all before `Shared` goes away);
                // SIGUSR2's handler does nothing.
                unsafe { libc::pthread_kill(thread as libc::pthread_t, libc::SIGUSR2) };
            }
        }
    }

    /// An MMIO exit: returns the value of a read.
    fn mmio(&self, hyp: &dyn Hyp, vcpu: usize, address: u64, flags: u64, value: u64) -> u64 {
        let write = flags & mmio::WRITE != 0;
        let size = 1usize << (flags & mmio::SIZE_LOG2_MASK);
        let d = &self.devices;
        if let Some(w) = self.gic.decode(address) {
            return match w {
                Window::Dist(off) => {
                    d.gicd.fetch_add(1, Ordering::Relaxed);
                    if write {
                        for inj in self.gic.dist_write(off, size, value) {
                            self.inject(hyp, inj);
                        }
                        0
                    } else {
                        self.gic.dist_read(off, size)
                    }
                }
                Window::Redist(cpu, off) => {
                    d.gicr.fetch_add(1, Ordering::Relaxed);
                    if write {
                        self.gic.redist_write(cpu, off, size, value);
                        0
                    } else {
                        self.gic.redist_read(cpu, off, size)
                    }
                }
            };
        }
        let mut data = [0u8; 8];
        let mut window = |dev: &mut dyn MmioDevice, off: u64| -> u64 {
            if write {
                data[..size].copy_from_slice(&value.to_le_bytes()[..size]);
                dev.write(off, &data[..size]);
                0
            } else {
                dev.read(off, &mut data[..size]);
                u64::from_le_bytes(data)
            }
        };
        if (layout::UART_BASE..layout::UART_BASE + layout::UART_SIZE).contains(&address) {
            d.uart.fetch_add(1, Ordering::Relaxed);
            let mut uart = self
                .bus
                .uart
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            return window(&mut *uart, address - layout::UART_BASE);
        }
        if let Some(off) = address.checked_sub(layout::VIRTIO_BASE) {
            let n = usize::try_from(off / layout::VIRTIO_SIZE).unwrap_or(usize::MAX);
            if let Some(dev) = self.bus.virtio.get(n) {
                d.virtio[n].fetch_add(1, Ordering::Relaxed);
                let mut dev = dev
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                return window(dev.as_mut(), off % layout::VIRTIO_SIZE);
            }
        }
        d.other.fetch_add(1, Ordering::Relaxed);
        if self.unhandled.fetch_add(1, Ordering::Relaxed) < 8 {
            eprintln!(
                "[{}/{vcpu}] rampart-vmm: unhandled MMIO {} of {size} bytes at {address:#x}{}",
                self.vm.name,
                if write { "write" } else { "read" },
                if write {
                    format!(" (value {value:#x}): ignored")
                } else {
                    ": reads as 0".into()
                }
            );
        }
        0
    }

    fn vcpu_loop(&self, vcpu: usize, hyp: &dyn Hyp) {
        let name = self.vm.name;
        let mut read_value = 0;
        let mut off_sleep = Duration::from_micros(100);
        loop {
            if self.stopping() {
                break;
            }
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() } as u64;
            self.running[vcpu].store(me, Ordering::Release);
            let r = call(
                hyp,
                HostCall::VcpuRun.id(),
                &[self.vm.handle, vcpu as u64, read_value],
            );
            self.running[vcpu].store(0, Ordering::Release);
            read_value = 0;
            if r[0] != 0 {
                #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
                let code = r[0] as i64;
                if code == rampart_abi::Error::Busy as i64 {
                    std::thread::yield_now();
                    continue;
                }
                // A signed bundle's VM refused at its first run (issue 12).
                if [
                    rampart_abi::Error::NotSigned,
                    rampart_abi::Error::UntrustedKey,
                    rampart_abi::Error::BadSignature,
                ]
                .map(rampart_abi::Error::code)
                .contains(&code)
                {
                    self.finish(Outcome::Refused(code));
                    break;
                }
                self.finish(Outcome::Error(format!(
                    "vCPU {vcpu}: VCPU_RUN returned {}",
                    crate::hyp::error_name(code)
                )));
                break;
            }
            // The launch milestone is vCPU 0's first return: the run at
            // which the hypervisor measured the VM and checked its
            // signature. The other vCPUs are off until PSCI CPU_ON and
            // their EXIT_POWERED_OFF can come back before it.
            if vcpu == 0 {
                Counters::reached(&self.counters.first_exit_us);
            }
            self.counters.exit(vcpu, r[1]);
            let reason = ExitReason::try_from(r[1]);
            if self.vm.trace {
                eprintln!(
                    "[{name}/{vcpu}] exit {} {:#x} {:#x} {:#x}",
                    reason.map_or("?", ExitReason::name),
                    r[2],
                    r[3],
                    r[4]
                );
            }
            if !matches!(reason, Ok(ExitReason::PoweredOff)) {
                off_sleep = Duration::from_micros(100);
            }
            match reason {
                Ok(ExitReason::Mmio) => read_value = self.mmio(hyp, vcpu, r[2], r[3], r[4]),
                Ok(ExitReason::Wait) => {
                    // x3: the guest's timer deadline (virtual count), or
                    // u64::MAX. Sleep until then or an injection, at most
                    // 10 ms (an SGI from another vCPU is pending at EL2,
                    // where the VMM cannot see it).
                    let now = counter();
                    let ticks = r[3].saturating_sub(now); // WAIT_NO_DEADLINE: capped below
                    let d = Duration::from_nanos(
                        u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(frequency()))
                            .unwrap_or(u64::MAX),
                    );
                    let d = d.min(Duration::from_millis(10));
                    if d > Duration::from_micros(50) {
                        self.kicks[vcpu].sleep(d);
                    }
                }
                Ok(ExitReason::Interrupt) => match r[2] {
                    1 => {
                        self.counters
                            .host_timer_exits
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // The guest sent SGIs to the vCPUs in x3: wake them.
                    2 => self.wake(vcpu, r[3]),
                    _ => {}
                },
                Ok(ExitReason::SystemOff) => {
                    self.finish(Outcome::SystemOff);
                    break;
                }
                Ok(ExitReason::SystemReset) => {
                    self.finish(Outcome::SystemReset);
                    break;
                }
                Ok(ExitReason::PoweredOff) => {
                    self.kicks[vcpu].sleep(off_sleep);
                    off_sleep = (off_sleep * 2).min(Duration::from_millis(5));
                }
                Ok(ExitReason::Evicted) => {
                    // Only a VMM that evicts pages (VM_EVICT) can see this.
                    self.finish(Outcome::Error(format!(
                        "vCPU {vcpu}: EXIT_EVICTED at {:#x}, but this VMM evicted nothing",
                        r[2]
                    )));
                    break;
                }
                // issue 12: a realm's RSI_HOST_CALL (the default answer).
                Ok(ExitReason::HostCall) => {
                    if let Err(e) = crate::rsi_host_call::answer(hyp, self.vm.handle, vcpu, r[2]) {
                        self.finish(Outcome::Error(format!("vCPU {vcpu}: {e}")));
                        break;
                    }
                }
                // The guest ended a level-sensitive SPI: resample its line.
                Ok(ExitReason::Eoi) => {
                    if let Some(inj) = self.gic.eoi(r[2]) {
                        self.inject(hyp, inj);
                    }
                }
                Ok(ExitReason::MemoryFault) => {
                    self.counters.memory_faults.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "[{name}/{vcpu}] rampart-vmm: memory fault ({}) at {:#x}, outside RAM: the guest gets an abort",
                        if r[3] & 1 != 0 { "write" } else { "read" },
                        r[2]
                    );
                }
                Err(other) => {
                    self.finish(Outcome::Error(format!(
                        "vCPU {vcpu}: VCPU_RUN returned an unknown exit reason {other}"
                    )));
                    break;
                }
            }
        }
        self.counters
            .vcpus_stopped_ns
            .fetch_max(crate::signals::monotonic_ns(), Ordering::AcqRel);
    }

    fn report(&self, state: &str, wall: Duration) -> String {
        let header = stats::Header {
            name: self.vm.name,
            bundle: &self.vm.kernel.display().to_string(),
            vm: self.vm.handle,
            vcpus: self.vm.vcpus,
            // A signed version-2 bundle runs protected (a realm or not);
            // a guest started from a kernel and initrd does not.
            protected: self.vm.plan.config.protected,
            ram_pages: self.vm.plan.memory_pages(),
            metadata_pages: self.vm.plan.metadata_pages,
            region: self.vm.region_phys,
            wall_ms: wall.as_millis(),
            state,
            result: "",
        };
        let mut text = stats::render(&header, &self.counters, None);
        let d = &self.devices;
        let mut line = format!(
            "mmio exits by device: gicd {}, gicr {}, pl011 {}",
            d.gicd.load(Ordering::Relaxed),
            d.gicr.load(Ordering::Relaxed),
            d.uart.load(Ordering::Relaxed)
        );
        for (i, c) in d.virtio.iter().enumerate().take(self.bus.virtio.len()) {
            line += &format!(", virtio{i} {}", c.load(Ordering::Relaxed));
        }
        line += &format!(", other {}\n", d.other.load(Ordering::Relaxed));
        text += &line;
        text += &format!(
            "vCPU wake-ups for guest SGIs: {}\n",
            self.sgi_kicks.load(Ordering::Relaxed)
        );
        let init = self.init_us.load(Ordering::Relaxed);
        if init != 0 {
            text += &format!(
                "guest kernel started /init: {}.{:03} ms after the VMM started\n",
                init / 1000,
                init % 1000
            );
        }
        text
    }
}

/// The guest's console: bytes to lines prefixed `[name] `; records the
/// first byte and the kernel's "Run /init" line.
fn console_sink(
    name: String,
    buf: Arc<Mutex<Vec<u8>>>,
    counters: Arc<Counters>,
    init_us: Arc<AtomicU64>,
) -> Box<dyn FnMut(u8) + Send> {
    Box::new(move |b| {
        Counters::reached(&counters.first_output_us);
        let mut line = buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b == b'\n' {
            let text = String::from_utf8_lossy(&line);
            if text.contains("Run /init as init process") {
                Counters::reached(&init_us);
            }
            println!("[{name}] {}", text.trim_end_matches('\r'));
            line.clear();
        } else if line.len() < 4096 {
            line.push(b);
        }
    })
}

/// The virtual counter (`CNTVCT_EL0`, which Linux lets user space read).
#[cfg(target_arch = "aarch64")]
fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe { std::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

#[cfg(target_arch = "aarch64")]
fn frequency() -> u64 {
    let v: u64;
    // SAFETY: reading the counter frequency has no side effects.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v.max(1)
}

#[cfg(not(target_arch = "aarch64"))]
fn counter() -> u64 {
    crate::signals::monotonic_ns()
}

#[cfg(not(target_arch = "aarch64"))]
fn frequency() -> u64 {
    1_000_000_000
}

extern "C" fn on_sigusr2(_: libc::c_int) {}

/// Installs the (empty) `SIGUSR2` handler [`Shared::wake`] relies on.
fn install_wake_signal() {
    // SAFETY: a zeroed sigaction with an empty handler is valid.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr2 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&raw mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR2, &raw const action, std::ptr::null_mut());
    }
}

/// Runs the VM until it powers off, resets, fails or a signal arrives;
/// `devices` become virtio-mmio transports 0, 1, ... over `memory`.
pub fn run(vm: &Vm<'_>, devices: Vec<super::Device>, memory: &super::GuestMemory) -> Outcome {
    let started = Instant::now();
    install_wake_signal();
    let gic = Arc::new(Gic::new(vm.vcpus));
    let console = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<Injection>();
    let mut virtio = Vec::new();
    for (n, d) in (0u32..).zip(devices) {
        let line: Arc<dyn IrqLine> = Arc::new(SpiLine {
            gic: gic.clone(),
            intid: 32 + layout::virtio_spi(n),
            tx: Mutex::new(tx.clone()),
        });
        match (d.build)(memory.clone(), line) {
            Ok(dev) => virtio.push(Mutex::new(dev)),
            Err(e) => return Outcome::Error(format!("virtio{n} ({}): {e:#}", d.describe)),
        }
    }
    let uart_line: Arc<dyn IrqLine> = Arc::new(SpiLine {
        gic: gic.clone(),
        intid: 32 + layout::UART_SPI,
        tx: Mutex::new(tx.clone()),
    });
    drop(tx);
    let counters = Arc::new(Counters::default());
    let init_us = Arc::new(AtomicU64::new(0));
    let shared = Shared {
        vm,
        gic,
        bus: Bus {
            uart: Mutex::new(Pl011::new(
                console_sink(
                    vm.name.to_string(),
                    console.clone(),
                    counters.clone(),
                    init_us.clone(),
                ),
                uart_line,
            )),
            virtio,
        },
        devices: DeviceCounters::default(),
        counters,
        init_us,
        kicks: (0..vm.vcpus).map(|_| Kick::default()).collect(),
        running: (0..vm.vcpus).map(|_| AtomicU64::new(0)).collect(),
        sgi_kicks: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        outcome: Mutex::new(None),
        console,
        unhandled: AtomicU64::new(0),
    };
    Counters::reached(&shared.counters.vm_ready_us);
    let files = stats::Files::new(vm.state_dir);
    let finished = AtomicU64::new(0);
    std::thread::scope(|s| {
        for v in 0..vm.vcpus {
            let (shared, finished) = (&shared, &finished);
            let hyp = &vm.channels[v];
            s.spawn(move || {
                shared.vcpu_loop(v, hyp);
                finished.fetch_add(1, Ordering::AcqRel);
                shared.finish(Outcome::Error(format!("vCPU {v}'s thread stopped")));
            });
        }
        let injector = &vm.channels[vm.vcpus.min(vm.channels.len() - 1)];
        let shared = &shared;
        s.spawn(move || {
            while !shared.stop.load(Ordering::Acquire) {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(inj) => shared.inject(injector, inj),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        let mut last = Instant::now();
        while finished.load(Ordering::Acquire) < vm.vcpus as u64 {
            std::thread::sleep(Duration::from_millis(50));
            let _ = shared.stopping();
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let _ = files.write_live(&shared.report("running", started.elapsed()));
            }
        }
    });
    let outcome = shared
        .outcome
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| Outcome::Error("every vCPU thread stopped without a reason".into()));
    if let Ok(rest) = shared.console.lock()
        && !rest.is_empty()
    {
        println!("[{}] {}", vm.name, String::from_utf8_lossy(&rest));
    }
    let text = shared.report(&outcome.describe(), started.elapsed());
    let _ = files.finish(&text);
    print!(
        "{}",
        text.lines()
            .map(|l| format!("[{}] stats: {l}\n", vm.name))
            .collect::<String>()
    );
    outcome
}

#[cfg(test)]
mod tests {
    use rampart_abi::host::VmConfig;

    use super::*;
    use crate::hyp::fake::{Fake, Step};

    struct NoLine;

    impl IrqLine for NoLine {
        fn set(&self, _: bool) {}
    }

    fn plan() -> Plan {
        Plan {
            config: VmConfig {
                protected: true,
                debug: false,
                max_vcpus: 2,
            },
            memory_size: 64 << 10,
            entry_pc: 0,
            x0: 0,
            metadata_pages: 0,
            differs_from_manifest: false,
        }
    }

    fn shared<'a>(vm: &'a Vm<'a>) -> Shared<'a> {
        let counters = Arc::new(Counters::default());
        let console = Arc::new(Mutex::new(Vec::new()));
        let init_us = Arc::new(AtomicU64::new(0));
        let sink = console_sink(
            vm.name.to_string(),
            console.clone(),
            counters.clone(),
            init_us.clone(),
        );
        Shared {
            vm,
            gic: Arc::new(Gic::new(vm.vcpus)),
            bus: Bus {
                uart: Mutex::new(Pl011::new(sink, Arc::new(NoLine))),
                virtio: Vec::new(),
            },
            devices: DeviceCounters::default(),
            counters,
            init_us,
            kicks: (0..vm.vcpus).map(|_| Kick::default()).collect(),
            running: (0..vm.vcpus).map(|_| AtomicU64::new(0)).collect(),
            sgi_kicks: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            console,
            unhandled: AtomicU64::new(0),
        }
    }

    /// The launch milestone "first exit" is vCPU 0's first `VCPU_RUN`
    /// return (the run the hypervisor measures), not whichever vCPU came
    /// back first: vCPU 1 is off until PSCI `CPU_ON` and returns first.
    #[test]
    fn the_first_exit_is_vcpu_0s_not_a_powered_off_secondarys() {
        let plan = plan();
        let path = Path::new("/nonexistent");
        let vm = Vm {
            name: "t",
            handle: 0x1_0000_1000,
            vcpus: 2,
            channels: &[],
            trace: false,
            plan: &plan,
            region_phys: 0,
            state_dir: path,
            kernel: path,
        };
        let fake = Fake::with_scripts(vec![
            vec![Step::Exit(ExitReason::SystemOff, [0; 3])],
            vec![
                Step::Exit(ExitReason::PoweredOff, [0; 3]),
                Step::Exit(ExitReason::SystemOff, [0; 3]),
            ],
        ]);
        let s = shared(&vm);
        s.vcpu_loop(1, &fake);
        assert_eq!(s.counters.exits(1, ExitReason::PoweredOff as usize), 1);
        assert_eq!(
            s.counters.first_exit_us.load(Ordering::Acquire),
            0,
            "vCPU 1's returns set the milestone"
        );
        // vCPU 1's EXIT_SYSTEM_OFF stopped the run: start again for vCPU 0.
        s.stop.store(false, Ordering::Release);
        s.vcpu_loop(0, &fake);
        assert_eq!(s.counters.exits(0, ExitReason::SystemOff as usize), 1);
        assert_ne!(s.counters.first_exit_us.load(Ordering::Acquire), 0);
    }
}
