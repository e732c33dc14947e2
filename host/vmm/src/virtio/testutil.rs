//! A guest driver for the unit tests: anonymous guest memory, hand-built
//! split rings, and the transport's registers driven the way Linux's
//! virtio_mmio does it.

#![allow(clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{VIRTIO_F_VERSION_1, reg, status};
use super::{Transport, VirtioDevice};
use crate::bus::{IrqLine, MmioDevice};

/// Guest RAM of the tests: 16 MiB at 1 GiB.
pub const RAM: u64 = 0x4000_0000;
pub const RAM_SIZE: usize = 16 << 20;

/// Counts assertions and remembers the level.
#[derive(Default)]
pub struct Irq {
    pub edges: AtomicU32,
    pub level: AtomicU32,
}

impl IrqLine for Irq {
    fn set(&self, level: bool) {
        if level {
            self.edges.fetch_add(1, Ordering::SeqCst);
        }
        self.level.store(u32::from(level), Ordering::SeqCst);
    }
}

pub fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM), RAM_SIZE)]).unwrap()
}

/// One split ring the "driver" owns.
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    pub used_seen: u16,
}

/// A descriptor: (guest address, length, device-writable).
pub type Desc = (u64, u32, bool);

pub struct Driver {
    pub t: Transport,
    pub mem: GuestMemoryMmap<()>,
    pub irq: Arc<Irq>,
    pub rings: Vec<Ring>,
    /// Next free data address.
    heap: u64,
    /// ORed into every address the device is given (a realm's shared bit:
    /// Linux 7.2 hands its devices alias addresses).
    pub alias: u64,
}

impl Driver {
    pub fn new(dev: Box<dyn VirtioDevice>) -> Self {
        Self::with_memory(dev, memory(), 0)
    }

    /// Over `mem` (guest RAM at [`RAM`] and wherever else `mem` maps it),
    /// giving the device addresses ORed with `alias`.
    pub fn with_memory(dev: Box<dyn VirtioDevice>, mem: GuestMemoryMmap<()>, alias: u64) -> Self {
        let irq = Arc::new(Irq::default());
        let t = Transport::new(dev, mem.clone(), irq.clone()).unwrap();
        Self {
            t,
            mem,
            irq,
            rings: Vec::new(),
            heap: RAM + 0x10_0000,
            alias,
        }
    }

    pub fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn w32(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    pub fn device_features(&mut self) -> u64 {
        self.w32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r32(reg::DEVICE_FEATURES);
        self.w32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.r32(reg::DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Negotiates `features`; returns whether FEATURES_OK stuck.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.w32(reg::STATUS, 0);
        self.w32(reg::STATUS, status::ACKNOWLEDGE);
        self.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w32(reg::DRIVER_FEATURES_SEL, 0);
        self.w32(reg::DRIVER_FEATURES, features as u32);
        self.w32(reg::DRIVER_FEATURES_SEL, 1);
        self.w32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w32(reg::STATUS, s);
        self.r32(reg::STATUS) & status::FEATURES_OK != 0
    }

    /// The whole start-up: features (everything offered), queues, DRIVER_OK.
    pub fn start(&mut self, queues: usize, size: u16) {
        let f = self.device_features();
        assert!(f & VIRTIO_F_VERSION_1 != 0);
        assert!(self.negotiate(f));
        for q in 0..queues {
            self.setup_queue(q, size);
        }
        let s = self.r32(reg::STATUS);
        self.w32(reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(self.r32(reg::STATUS) & status::DRIVER_OK, status::DRIVER_OK);
    }

    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.heap;
        self.heap += len.div_ceil(16) * 16;
        assert!(self.heap < RAM + RAM_SIZE as u64);
        a
    }

    pub fn setup_queue(&mut self, q: usize, size: u16) {
        self.w32(reg::QUEUE_SEL, q as u32);
        let size = size.min(self.r32(reg::QUEUE_NUM_MAX) as u16);
        let n = u64::from(size);
        let desc = self.alloc(16 * n);
        let avail = self.alloc(6 + 2 * n);
        let used = self.alloc(6 + 8 * n);
        assert!(size > 0);
        self.w32(reg::QUEUE_NUM, u32::from(size));
        for (lo, v) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_DRIVER_LOW, avail),
            (reg::QUEUE_DEVICE_LOW, used),
        ] {
            let v = v | self.alias;
            self.w32(lo, v as u32);
            self.w32(lo + 4, (v >> 32) as u32);
        }
        self.w32(reg::QUEUE_READY, 1);
        while self.rings.len() <= q {
            self.rings.push(Ring {
                size: 0,
                desc: 0,
                avail: 0,
                used: 0,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            });
        }
        self.rings[q] = Ring {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
    }

    /// Writes a chain (descriptors chained with NEXT) and makes it available;
    /// returns its head index. Does not notify.
    pub fn add_chain(&mut self, q: usize, descs: &[Desc]) -> u16 {
        let mem = self.mem.clone();
        let r = &mut self.rings[q];
        let head = r.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % r.size;
            let next = (idx + 1) % r.size;
            let mut flags = 0u16;
            if i + 1 < descs.len() {
                flags |= 1;
            }
            if write {
                flags |= 2;
            }
            let d = GuestAddress(r.desc + 16 * u64::from(idx));
            mem.write_obj(addr | self.alias, d).unwrap();
            mem.write_obj(len, GuestAddress(d.0 + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d.0 + 12)).unwrap();
            mem.write_obj(next, GuestAddress(d.0 + 14)).unwrap();
        }
        r.next_desc = (head + descs.len() as u16) % r.size;
        self.publish(q, head);
        head
    }

    /// Puts `head` in the available ring as it is (for hostile chains).
    pub fn publish(&mut self, q: usize, head: u16) {
        let r = &mut self.rings[q];
        let slot = GuestAddress(r.avail + 4 + 2 * u64::from(r.avail_idx % r.size));
        self.mem.write_obj(head, slot).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(r.avail_idx, GuestAddress(r.avail + 2))
            .unwrap();
    }

    /// Writes raw descriptor `idx` of queue `q`.
    pub fn raw_desc(&mut self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = GuestAddress(self.rings[q].desc + 16 * u64::from(idx));
        self.mem.write_obj(addr, d).unwrap();
        self.mem.write_obj(len, GuestAddress(d.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(d.0 + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(d.0 + 14)).unwrap();
    }

    pub fn notify(&mut self, q: usize) {
        self.w32(reg::QUEUE_NOTIFY, q as u32);
    }

    /// Used entries not seen yet: (head, len).
    pub fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let r = &mut self.rings[q];
        let idx: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        let mut out = Vec::new();
        while r.used_seen != idx {
            let e = GuestAddress(r.used + 4 + 8 * u64::from(r.used_seen % r.size));
            let id: u32 = self.mem.read_obj(e).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(e.0 + 4)).unwrap();
            out.push((id as u16, len));
            r.used_seen = r.used_seen.wrapping_add(1);
        }
        out
    }

    /// Acknowledges every interrupt; returns the status read.
    pub fn ack(&mut self) -> u32 {
        let s = self.r32(reg::INTERRUPT_STATUS);
        self.w32(reg::INTERRUPT_ACK, s);
        s
    }

    pub fn status(&mut self) -> u32 {
        self.r32(reg::STATUS)
    }

    pub fn write_bytes(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    pub fn config(&mut self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.t.read(reg::CONFIG + off, &mut v);
        v
    }
}
