//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2), around
//! a [`VirtioDevice`].
//!
//! Every register access comes from the guest and is hostile: unknown
//! offsets read as 0 and ignore writes, register accesses that are not 32
//! bits wide are ignored, queue registers cannot change a queue that is
//! ready, the status only gains bits (0 resets), a driver that does not
//! accept `VIRTIO_F_VERSION_1` (or accepts features the device did not
//! offer) never gets `FEATURES_OK`. A device error (a malformed descriptor
//! chain, a ring out of guest memory) sets `DEVICE_NEEDS_RESET` and raises a
//! configuration-change interrupt; the device then does nothing until the
//! driver resets it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::guest::{self, Chain};
use super::{DeviceError, VirtioDevice};
use crate::bus::{IrqLine, MmioDevice};

/// `MagicValue`: "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (the "modern" one).
pub const VERSION: u32 = 2;
/// `VendorID`: Rampart's own, the bytes "RAMP" read little-endian (drivers
/// do not look at it).
pub const VENDOR: u32 = u32::from_le_bytes(*b"RAMP");

/// Register offsets (virtio 1.2, table 4.1).
#[allow(dead_code, reason = "the whole register map, for reference")]
pub mod reg {
    /// Magic value.
    pub const MAGIC: u64 = 0x000;
    /// Version.
    pub const VERSION: u64 = 0x004;
    /// Device ID.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor ID.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features, 32 bits selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word selector.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features, 32 bits selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word selector.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue selector.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Ready bit of the selected queue.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notifier (the queue index).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Driver (available) ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Driver (available) ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Device (used) ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Device (used) ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Shared memory region selector (none here).
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory length, low 32 bits (all ones: no region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory length, high 32 bits.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Configuration generation counter.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
#[allow(dead_code, reason = "the whole set, for reference")]
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation done.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// `InterruptStatus` bit: a used buffer was added.
pub const INT_USED_RING: u32 = 1;
/// `InterruptStatus` bit: the configuration changed (or `DEVICE_NEEDS_RESET`).
pub const INT_CONFIG: u32 = 2;

/// Feature bit: the device conforms to virtio 1.x (mandatory here).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: the device accesses memory through the platform's DMA
/// translation (confidential guests bounce through shared memory).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Feature bit: used/available event indices (interrupt suppression).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Features every transport offers on top of the device's own.
pub const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_RING_F_EVENT_IDX;

/// Counters of one transport, for `rampart-vmm stats`.
#[derive(Default, Debug)]
pub struct DeviceStats {
    /// Guest loads from the window (each one an MMIO exit).
    pub reads: AtomicU64,
    /// Guest stores to the window (each one an MMIO exit), notifications included.
    pub writes: AtomicU64,
    /// `QueueNotify` stores.
    pub notifies: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Descriptor chains completed (put in a used ring).
    pub completed: AtomicU64,
    /// Times the device went to `DEVICE_NEEDS_RESET`.
    pub errors: AtomicU64,
}

/// What a device sees while it handles a queue: guest memory and its queues.
pub struct Ctx<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap<()>,
    /// The device's queues, in the device's order.
    pub queues: &'a mut [Queue],
    used: u64,
    stats: &'a DeviceStats,
}

impl<'a> Ctx<'a> {
    /// Puts a finished chain in queue `q`'s used ring (`len` bytes written).
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> Result<(), DeviceError> {
        let queue = self.queues.get_mut(q).ok_or(DeviceError::Queue(q))?;
        let used = (
            GuestAddress(queue.used_ring()),
            6 + 8 * usize::from(queue.size()),
        );
        guest::sync(self.mem, used.0, used.1)?;
        queue
            .add_used(self.mem, head, len)
            .map_err(|e| DeviceError::Ring(format!("queue {q}: {e}")))?;
        guest::sync(self.mem, used.0, used.1)?;
        self.used |= 1 << q;
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The next chain the driver made available on queue `q`, if any, split
    /// into its buffers ([`Chain::parse`]). A hostile available index, or a
    /// chain naming memory outside guest RAM, is an error.
    pub fn pop(&mut self, q: usize) -> Result<Option<Chain>, DeviceError> {
        let mem = self.mem;
        let queue = self.queues.get_mut(q).ok_or(DeviceError::Queue(q))?;
        if !queue.ready() {
            return Ok(None);
        }
        let n = usize::from(queue.size());
        // The driver's side of the ring, as the guest last wrote it.
        guest::sync(mem, GuestAddress(queue.desc_table()), 16 * n)?;
        guest::sync(mem, GuestAddress(queue.avail_ring()), 6 + 2 * n)?;
        let ring = |e: virtio_queue::Error| DeviceError::Ring(format!("queue {q}: {e}"));
        let mut chain = queue.iter(mem).map_err(ring)?.next();
        if chain.is_none() {
            // The ring is empty: ask for the driver's next notification
            // (with EVENT_IDX, avail_event = next_avail; without it, clear
            // NO_NOTIFY). A driver that added a chain meanwhile did not
            // notify: take it now.
            let used = (GuestAddress(queue.used_ring()), 6 + 8 * n);
            guest::sync(mem, used.0, used.1)?;
            let more = queue.enable_notification(mem).map_err(ring)?;
            guest::sync(mem, used.0, used.1)?;
            if more {
                guest::sync(mem, GuestAddress(queue.avail_ring()), 6 + 2 * n)?;
                chain = queue.iter(mem).map_err(ring)?.next();
            }
        }
        if let Some(c) = &chain {
            no_indirect(
                mem,
                GuestAddress(queue.desc_table()),
                queue.size(),
                c.head_index(),
            )?;
        }
        chain.map(|c| Chain::parse(c, mem)).transpose()
    }

    /// Gives back the chain that [`Ctx::pop`] returned last on queue `q`
    /// (the device had nothing to put in it).
    pub fn unpop(&mut self, q: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.go_to_previous_position();
        }
    }
}

/// Refuses a chain from `head` that uses an indirect table: the transport
/// does not offer `VIRTIO_F_INDIRECT_DESC`, and `virtio-queue` would follow
/// the flag into memory the VMM has not probed (`guest::reachable`: for a
/// realm, a private page would abort). Reads the descriptors through
/// [`guest::read`], whose probes cover the table.
fn no_indirect(
    mem: &GuestMemoryMmap<()>,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<(), DeviceError> {
    const F_NEXT: u16 = 1;
    const F_INDIRECT: u16 = 4;
    let mut idx = head;
    for _ in 0..size {
        if idx >= size {
            // virtio-queue refuses it when it walks the chain.
            return Ok(());
        }
        let mut d = [0u8; 16];
        guest::read(mem, GuestAddress(table.0 + 16 * u64::from(idx)), &mut d)?;
        let flags = u16::from_le_bytes([d[12], d[13]]);
        if flags & F_INDIRECT != 0 {
            return Err(DeviceError::Chain(
                "an indirect descriptor, which the device did not offer".into(),
            ));
        }
        if flags & F_NEXT == 0 {
            return Ok(());
        }
        idx = u16::from_le_bytes([d[14], d[15]]);
    }
    Ok(())
}

/// The state shared between the transport (vCPU threads) and a device's own
/// I/O thread (through a [`Waker`]).
struct State {
    mem: GuestMemoryMmap<()>,
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    irq: Arc<dyn IrqLine>,
    stats: Arc<DeviceStats>,
    status: u32,
    interrupt_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

impl State {
    fn offered(&self) -> u64 {
        self.device.features() | TRANSPORT_FEATURES
    }

    fn raise(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        self.irq.set(true);
    }

    fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    fn fail(&mut self, e: &DeviceError) {
        eprintln!(
            "rampart-vmm: virtio-{}: {e}; the device needs a reset",
            self.device.name()
        );
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.status |= status::DEVICE_NEEDS_RESET;
        self.raise(INT_CONFIG);
    }

    /// Runs `f` on the device with its queues, then raises the used-buffer
    /// interrupt if a queue that got used buffers wants one.
    fn with_device(
        &mut self,
        f: impl FnOnce(&mut dyn VirtioDevice, &mut Ctx<'_>) -> Result<(), DeviceError>,
    ) {
        if !self.live() {
            return;
        }
        let mut ctx = Ctx {
            mem: &self.mem,
            queues: &mut self.queues,
            used: 0,
            stats: &self.stats,
        };
        let result = f(self.device.as_mut(), &mut ctx);
        let used = ctx.used;
        let mut notify = false;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if used & (1 << i) != 0 {
                // Reads the driver's used_event (EVENT_IDX) or NO_INTERRUPT
                // flag in the available ring.
                // A ring the VMM cannot reach (a realm took its page
                // back): notify, as when the flag cannot be read.
                notify |= guest::sync(
                    &self.mem,
                    GuestAddress(q.avail_ring()),
                    6 + 2 * usize::from(q.size()),
                )
                .map_or(true, |()| q.needs_notification(&self.mem).unwrap_or(true));
            }
        }
        if notify {
            self.raise(INT_USED_RING);
        }
        if let Err(e) = result {
            self.fail(&e);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.device_features_sel = 0;
        self.queue_sel = 0;
        if self.interrupt_status != 0 {
            self.interrupt_status = 0;
            self.irq.set(false);
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The selected queue if the driver may still configure it: it exists,
    /// it is not ready, and the driver has not finished (`DRIVER_OK`).
    fn configurable(&mut self) -> Option<&mut Queue> {
        if self.status & status::FEATURES_OK == 0 || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.selected().filter(|q| !q.ready())
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => low(self.offered()),
                1 => high(self.offered()),
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Only while negotiating (DRIVER set, FEATURES_OK not yet).
            reg::DRIVER_FEATURES
                if self.status & status::FEATURES_OK == 0 && self.status & status::DRIVER != 0 =>
            {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32);
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let (Some(q), Ok(size)) = (self.configurable(), u16::try_from(v)) {
                    // Refused (not a power of two, 0, above the maximum): the
                    // size stays; the ring check at QueueReady catches it.
                    let _ = q.try_set_size(size);
                }
            }
            reg::QUEUE_READY => self.set_queue_ready(v),
            reg::QUEUE_DESC_LOW => self.queue_addr(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.queue_addr(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.queue_addr(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => self.queue_addr(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW => self.queue_addr(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.queue_addr(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => {
                self.stats.notifies.fetch_add(1, Ordering::Relaxed);
                let q = v as usize;
                if q < self.queues.len() {
                    self.with_device(|d, ctx| d.notify(q, ctx));
                }
            }
            reg::INTERRUPT_ACK => {
                let was = self.interrupt_status;
                self.interrupt_status &= !v;
                if was != 0 && self.interrupt_status == 0 {
                    self.irq.set(false);
                }
            }
            reg::STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn queue_addr(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.configurable() {
            f(q);
        }
    }

    fn set_queue_ready(&mut self, v: u32) {
        let mem = self.mem.clone();
        let Some(q) = self.configurable() else {
            // Writing 0 to a ready queue would reset it in virtio 1.2
            // (VIRTIO_F_RING_RESET), which is not offered: ignored.
            return;
        };
        if v != 1 {
            return;
        }
        q.set_ready(true);
        if !q.is_valid(&mem) {
            q.set_ready(false);
            let e = DeviceError::Ring(format!(
                "queue {} placed outside guest memory or misaligned",
                self.queue_sel
            ));
            self.fail(&e);
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added; the device's own bit is not the driver's.
        let v = v & !status::DEVICE_NEEDS_RESET;
        if v & self.status != self.status & !status::DEVICE_NEEDS_RESET {
            return;
        }
        let added = v & !self.status;
        if added & status::FEATURES_OK != 0 {
            let f = self.driver_features;
            if f & VIRTIO_F_VERSION_1 == 0 || f & !self.offered() != 0 {
                // Not accepted: FEATURES_OK stays clear, the driver sees it.
                self.status |= v & !status::FEATURES_OK & !status::DRIVER_OK;
                return;
            }
            let event_idx = f & VIRTIO_RING_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
        }
        if added & status::DRIVER_OK != 0 && (v & status::FEATURES_OK == 0) {
            return;
        }
        self.status |= v;
        if added & status::DRIVER_OK != 0 {
            let features = self.driver_features;
            self.with_device(|d, ctx| d.activate(features, ctx));
        }
    }
}

fn low(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

fn high(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(0)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets a device's own I/O thread run the device (with its queues) and raise
/// its interrupt. Holds the transport weakly: once the transport is dropped,
/// [`Waker::wake`] returns `false` and the thread should end.
#[derive(Clone)]
pub struct Waker {
    state: Weak<Mutex<State>>,
}

impl Waker {
    /// Calls the device's [`VirtioDevice::poll`] if the driver is live.
    /// Returns `false` once the transport is gone.
    pub fn wake(&self) -> bool {
        let Some(state) = self.state.upgrade() else {
            return false;
        };
        lock(&state).with_device(|d, ctx| d.poll(ctx));
        true
    }
}

/// A virtio-mmio v2 transport: what the MMIO bus dispatches to.
pub struct Transport {
    state: Arc<Mutex<State>>,
    stats: Arc<DeviceStats>,
}

impl Transport {
    /// A transport around `device`, with its queues in `mem`, interrupting
    /// through `irq`. Calls the device's [`VirtioDevice::start`] with a
    /// [`Waker`] for its I/O thread, if it has one.
    pub fn new(
        mut device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap<()>,
        irq: Arc<dyn IrqLine>,
    ) -> anyhow::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&n| Queue::new(n).map_err(|e| anyhow::anyhow!("queue of {n}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stats = Arc::new(DeviceStats::default());
        let state = Arc::new_cyclic(|weak: &Weak<Mutex<State>>| {
            device.start(Waker {
                state: weak.clone(),
            });
            Mutex::new(State {
                mem,
                device,
                queues,
                irq,
                stats: stats.clone(),
                status: 0,
                interrupt_status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                config_generation: 0,
            })
        });
        Ok(Self { state, stats })
    }

    /// The transport's counters.
    pub fn stats(&self) -> Arc<DeviceStats> {
        self.stats.clone()
    }
}

impl MmioDevice for Transport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
        let mut s = lock(&self.state);
        if offset >= reg::CONFIG {
            s.device.read_config(offset - reg::CONFIG, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&s.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.state);
        if offset >= reg::CONFIG {
            if s.device.write_config(offset - reg::CONFIG, data) {
                s.config_generation = s.config_generation.wrapping_add(1);
            }
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            s.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}
