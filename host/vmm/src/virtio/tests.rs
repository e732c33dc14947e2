//! The devices driven through the transport, the way a guest driver would,
//! over anonymous guest memory and hand-built rings. Hostile chains included.

#![allow(clippy::cast_possible_truncation)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::block::{self, Block};
use super::console::Console;
use super::mmio::{
    INT_CONFIG, INT_USED_RING, MAGIC, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1, reg, status,
};
use super::rng::Rng;
use super::testutil::{Driver, RAM, RAM_SIZE};
use super::vsock::{self, Vsock};
use crate::bus::MmioDevice;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rampart-virtio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- transport

#[test]
fn transport_identifies_itself_and_offers_version_1_and_access_platform() {
    let mut d = Driver::new(Box::new(Rng::new()));
    assert_eq!(d.r32(reg::MAGIC), MAGIC);
    assert_eq!(d.r32(reg::VERSION), 2);
    assert_eq!(d.r32(reg::DEVICE_ID), 4);
    let f = d.device_features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & VIRTIO_F_ACCESS_PLATFORM, 0);
    // Only 32-bit register accesses count.
    let mut b = [0xffu8; 2];
    d.t.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    d.w32(reg::QUEUE_SEL, 5);
    assert_eq!(d.r32(reg::QUEUE_NUM_MAX), 0, "no queue 5");
    d.w32(reg::QUEUE_SEL, 0);
    assert_eq!(d.r32(reg::QUEUE_NUM_MAX), 64);
}

#[test]
fn a_driver_without_version_1_or_with_unoffered_features_is_refused() {
    let mut d = Driver::new(Box::new(Rng::new()));
    let f = d.device_features();
    assert!(
        !d.negotiate(f & !VIRTIO_F_VERSION_1),
        "legacy driver accepted"
    );
    assert!(!d.negotiate(f | (1 << 40)), "unoffered feature accepted");
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    // DRIVER_OK without FEATURES_OK does not take.
    d.w32(reg::STATUS, 0);
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(d.status() & status::DRIVER_OK, 0);
}

#[test]
fn queue_registers_only_change_before_driver_ok_and_reset_clears_everything() {
    let mut d = Driver::new(Box::new(Rng::new()));
    // Before FEATURES_OK the queue cannot be configured.
    d.w32(reg::QUEUE_SEL, 0);
    d.w32(reg::QUEUE_READY, 1);
    assert_eq!(d.r32(reg::QUEUE_READY), 0);
    d.start(1, 16);
    assert_eq!(d.r32(reg::QUEUE_READY), 1);
    // A live queue cannot be moved.
    d.w32(reg::QUEUE_DESC_LOW, 0x1234_0000);
    d.w32(reg::QUEUE_NUM, 8);
    let buf = d.alloc(32);
    let head = d.add_chain(0, &[(buf, 32, true)]);
    d.notify(0);
    assert_eq!(d.used(0), vec![(head, 32)], "queue still where it was");
    // Status bits cannot be taken away, only reset.
    d.w32(reg::STATUS, status::ACKNOWLEDGE);
    assert_ne!(d.status() & status::DRIVER_OK, 0);
    d.w32(reg::STATUS, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.r32(reg::QUEUE_READY), 0);
    assert_eq!(d.r32(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn a_ring_outside_guest_memory_needs_reset() {
    let mut d = Driver::new(Box::new(Rng::new()));
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.w32(reg::QUEUE_SEL, 0);
    d.w32(reg::QUEUE_NUM, 64);
    d.w32(reg::QUEUE_DESC_LOW, 0x1000); // below RAM
    d.w32(reg::QUEUE_DRIVER_LOW, (RAM + 0x1000) as u32);
    d.w32(reg::QUEUE_DEVICE_LOW, (RAM + 0x2000) as u32);
    d.w32(reg::QUEUE_READY, 1);
    assert_eq!(d.r32(reg::QUEUE_READY), 0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.r32(reg::INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(d.irq.level.load(Ordering::SeqCst), 1);
}

#[test]
fn used_buffers_raise_the_line_and_acking_drops_it() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.start(1, 16);
    let buf = d.alloc(64);
    d.add_chain(0, &[(buf, 64, true)]);
    d.notify(0);
    assert_eq!(d.irq.edges.load(Ordering::SeqCst), 1);
    assert_eq!(d.irq.level.load(Ordering::SeqCst), 1);
    assert_eq!(d.ack(), INT_USED_RING);
    assert_eq!(d.irq.level.load(Ordering::SeqCst), 0);
    assert_eq!(d.r32(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn a_hostile_available_index_needs_reset() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.start(1, 16);
    // avail.idx 100 ahead of next_avail with a 16-entry ring.
    let avail = d.rings[0].avail;
    d.write_bytes(avail + 2, &100u16.to_le_bytes());
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    // The device is quiet until reset, then works again.
    d.start(1, 16);
    let buf = d.alloc(8);
    d.add_chain(0, &[(buf, 8, true)]);
    d.notify(0);
    assert_eq!(d.used(0).len(), 1);
}

/// With EVENT_IDX, the driver notifies only when its available index
/// passes the device's `avail_event` (end of the used ring): once the
/// device has emptied the ring, `avail_event` must be where it stopped, or
/// Linux never notifies again.
#[test]
fn an_emptied_ring_asks_for_the_next_notification() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.start(1, 16);
    let avail_event = d.rings[0].used + 4 + 8 * 16;
    for round in 1..=3u16 {
        let a = d.alloc(16);
        d.add_chain(0, &[(a, 16, true)]);
        let b = d.alloc(16);
        d.add_chain(0, &[(b, 16, true)]);
        d.notify(0);
        assert_eq!(d.used(0).len(), 2);
        let ev = u16::from_le_bytes(d.read_bytes(avail_event, 2).try_into().unwrap());
        assert_eq!(ev, 2 * round, "avail_event after round {round}");
    }
}

// ---------------------------------------------------------------- rng

#[test]
fn rng_fills_the_buffers() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.start(1, 16);
    let (a, b) = (d.alloc(256), d.alloc(256));
    let ha = d.add_chain(0, &[(a, 100, true), (a + 100, 156, true)]);
    let hb = d.add_chain(0, &[(b, 256, true)]);
    d.notify(0);
    assert_eq!(d.used(0), vec![(ha, 256), (hb, 256)]);
    let (x, y) = (d.read_bytes(a, 256), d.read_bytes(b, 256));
    assert_ne!(x, y);
    assert!(
        x.iter().filter(|&&v| v == 0).count() < 32,
        "not random: {x:?}"
    );
}

#[test]
fn rng_refuses_a_buffer_outside_guest_memory() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.start(1, 16);
    d.add_chain(0, &[(RAM + RAM_SIZE as u64 - 16, 64, true)]);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert!(d.used(0).is_empty());
}

// ---------------------------------------------------------------- block

const DISK_SECTORS: u64 = 2048; // 1 MiB

fn disk(name: &str, ro: bool) -> (Driver, PathBuf) {
    let path = scratch(name).join("disk.img");
    let data: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut d = Driver::new(Box::new(Block::open(&path, ro).unwrap()));
    d.start(1, 64);
    (d, path)
}

/// A request: header, data buffer of `len` (device-writable for reads),
/// status byte. Returns (head, data address, status address).
fn blk_req(d: &mut Driver, ty: u32, sector: u64, data: Option<&[u8]>, len: u32) -> (u16, u64, u64) {
    let hdr = d.alloc(16);
    let mut h = Vec::new();
    h.extend_from_slice(&ty.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    d.write_bytes(hdr, &h);
    let buf = d.alloc(u64::from(len.max(1)));
    if let Some(data) = data {
        d.write_bytes(buf, data);
    }
    let st = d.alloc(1);
    d.write_bytes(st, &[0xff]);
    let mut descs = vec![(hdr, 16, false)];
    if len > 0 {
        descs.push((buf, len, data.is_none()));
    }
    descs.push((st, 1, true));
    let head = d.add_chain(0, &descs);
    (head, buf, st)
}

fn status_of(d: &Driver, st: u64) -> u8 {
    d.read_bytes(st, 1)[0]
}

#[test]
fn blk_reads_writes_flushes_and_names_itself() {
    let (mut d, path) = disk("rw", false);
    assert_eq!(d.config(0, 8), (DISK_SECTORS).to_le_bytes());
    assert_eq!(d.device_features() & block::F_RO, 0);
    // Read sectors 2..10.
    let (h, buf, st) = blk_req(&mut d, block::T_IN, 2, None, 4096);
    d.notify(0);
    assert_eq!(d.used(0), vec![(h, 4097)]);
    assert_eq!(status_of(&d, st), block::S_OK);
    let want: Vec<u8> = (1024..1024 + 4096).map(|i| (i % 251) as u8).collect();
    assert_eq!(d.read_bytes(buf, 4096), want);
    // Write sector 5.
    let data = vec![0xa5u8; 1024];
    let (_, _, st) = blk_req(&mut d, block::T_OUT, 5, Some(&data), 1024);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_OK);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[5 * 512..7 * 512], &data[..]);
    assert_eq!(file[7 * 512], ((7 * 512) % 251) as u8);
    // Flush and get-id.
    let (_, _, st) = blk_req(&mut d, block::T_FLUSH, 0, None, 0);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_OK);
    let (h, buf, st) = blk_req(&mut d, block::T_GET_ID, 0, None, 20);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_OK);
    assert_eq!(&d.read_bytes(buf, 8), b"disk.img");
    assert_eq!(d.used(0).last(), Some(&(h, 21)));
    // Unknown request type.
    let (_, _, st) = blk_req(&mut d, 99, 0, None, 0);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_UNSUPP);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn blk_read_only_refuses_writes() {
    let (mut d, path) = disk("ro", true);
    assert_ne!(d.device_features() & block::F_RO, 0);
    let before = std::fs::read(&path).unwrap();
    let (_, _, st) = blk_req(&mut d, block::T_OUT, 0, Some(&[1u8; 512]), 512);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_IOERR);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let (_, _, st) = blk_req(&mut d, block::T_IN, 0, None, 512);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_OK);
}

#[test]
fn blk_out_of_range_and_partial_sectors_are_io_errors() {
    let (mut d, path) = disk("range", false);
    let before = std::fs::read(&path).unwrap();
    for (ty, sector, len) in [
        (block::T_IN, DISK_SECTORS - 1, 1024),  // runs past the end
        (block::T_IN, DISK_SECTORS, 512),       // starts at the end
        (block::T_IN, u64::MAX, 512),           // sector overflow
        (block::T_IN, u64::MAX / 512 + 1, 512), // byte offset overflow
        (block::T_IN, 0, 100),                  // not whole sectors
        (block::T_OUT, DISK_SECTORS - 1, 1024), // write past the end
        (block::T_OUT, 1 << 60, 512),
    ] {
        let data = (ty == block::T_OUT).then(|| vec![7u8; len as usize]);
        let (_, _, st) = blk_req(&mut d, ty, sector, data.as_deref(), len);
        d.notify(0);
        assert_eq!(
            status_of(&d, st),
            block::S_IOERR,
            "type {ty} sector {sector} len {len}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), DISK_SECTORS * 512);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn blk_malformed_chains_need_reset_or_fail_cleanly() {
    // No writable status byte at all.
    let (mut d, _) = disk("nostatus", false);
    let hdr = d.alloc(16);
    d.add_chain(0, &[(hdr, 16, false)]);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.r32(reg::INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);

    // A header too short: IOERR in the status byte.
    let (mut d, _) = disk("shorthdr", false);
    let hdr = d.alloc(16);
    let st = d.alloc(1);
    d.add_chain(0, &[(hdr, 8, false), (st, 1, true)]);
    d.notify(0);
    assert_eq!(status_of(&d, st), block::S_IOERR);

    // A data buffer outside guest memory.
    let (mut d, _) = disk("outside", false);
    let hdr = d.alloc(16);
    let st = d.alloc(1);
    d.add_chain(0, &[(hdr, 16, false), (0x1000, 512, true), (st, 1, true)]);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);

    // A descriptor chain that loops on itself: it ends (TTL), no hang.
    let (mut d, _) = disk("loop", false);
    let hdr = d.alloc(16);
    d.raw_desc(0, 0, hdr, 16, 1, 0);
    d.publish(0, 0);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);

    // A next index beyond the table.
    let (mut d, _) = disk("next", false);
    let hdr = d.alloc(16);
    d.raw_desc(0, 0, hdr, 16, 1, 1000);
    d.publish(0, 0);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);

    // A head index beyond the table.
    let (mut d, _) = disk("head", false);
    d.publish(0, 999);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

// ---------------------------------------------------------------- console

#[test]
fn console_prints_lines_with_the_vm_prefix() {
    let out: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let mut d = Driver::new(Box::new(Console::new("vm1", out.clone())));
    d.start(2, 16);
    let a = d.alloc(16);
    d.write_bytes(a, b"hello\nwor");
    let b = d.alloc(16);
    d.write_bytes(b, b"ld\n");
    d.add_chain(1, &[(a, 9, false)]);
    d.add_chain(1, &[(b, 3, false)]);
    d.notify(1);
    assert_eq!(d.used(1).len(), 2);
    assert_eq!(
        String::from_utf8(out.lock().unwrap().clone()).unwrap(),
        "[vm1] hello\n[vm1] world\n"
    );
}

#[test]
fn console_input_fills_the_receive_queue() {
    let out: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let input: &'static [u8] = b"ping from the host\nsecond";
    let console = Console::new("vm1", out).with_input(Box::new(input));
    let mut d = Driver::new(Box::new(console));
    d.start(2, 16);
    // Two receive buffers of 8 and 64 bytes; whichever comes first (this
    // notify or the reader thread's wake-up) delivers.
    let a = d.alloc(8);
    let b = d.alloc(64);
    d.add_chain(0, &[(a, 8, true)]);
    d.add_chain(0, &[(b, 64, true)]);
    d.notify(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut used = Vec::new();
    while used.len() < 2 && Instant::now() < deadline {
        used.extend(d.used(0));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(used.len(), 2, "{used:?}");
    assert_eq!(used[0].1, 8, "the first buffer is filled");
    let mut got = d.read_bytes(a, 8);
    got.extend(d.read_bytes(b, used[1].1 as usize));
    assert_eq!(got, input);
}

// ---------------------------------------------------------------- vsock

const GUEST_CID: u64 = 3;
const HDR: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    ty: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn guest(src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: GUEST_CID,
            dst_cid: vsock::HOST_CID,
            src_port,
            dst_port,
            len: 0,
            ty: vsock::TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HDR);
        v.extend_from_slice(&self.src_cid.to_le_bytes());
        v.extend_from_slice(&self.dst_cid.to_le_bytes());
        v.extend_from_slice(&self.src_port.to_le_bytes());
        v.extend_from_slice(&self.dst_port.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(&self.ty.to_le_bytes());
        v.extend_from_slice(&self.op.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.buf_alloc.to_le_bytes());
        v.extend_from_slice(&self.fwd_cnt.to_le_bytes());
        v
    }

    fn parse(b: &[u8]) -> Self {
        let u64_ = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_ = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_ = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        Self {
            src_cid: u64_(0),
            dst_cid: u64_(8),
            src_port: u32_(16),
            dst_port: u32_(20),
            len: u32_(24),
            ty: u16_(28),
            op: u16_(30),
            flags: u32_(32),
            buf_alloc: u32_(36),
            fwd_cnt: u32_(40),
        }
    }
}

/// The guest side of vsock: rx buffers it posted (by head), and what it got.
struct VGuest {
    d: Driver,
    rx_bufs: std::collections::HashMap<u16, u64>,
    /// Guest-side receive accounting per connection.
    fwd_cnt: u32,
}

const RX_BUF: u32 = 4096;

impl VGuest {
    fn new(name: &str) -> (Self, PathBuf) {
        let socket = scratch(name).join("vm.vsock");
        let dev = Vsock::new(GUEST_CID, &socket).unwrap();
        let mut d = Driver::new(Box::new(dev));
        d.start(3, 64);
        assert_eq!(d.config(0, 8), GUEST_CID.to_le_bytes());
        let mut g = Self {
            d,
            rx_bufs: std::collections::HashMap::new(),
            fwd_cnt: 0,
        };
        g.post_rx(32);
        (g, socket)
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let a = self.d.alloc(u64::from(RX_BUF));
            let h = self.d.add_chain(0, &[(a, RX_BUF, true)]);
            self.rx_bufs.insert(h, a);
        }
        self.d.notify(0);
    }

    fn send(&mut self, h: Hdr, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        h.fwd_cnt = self.fwd_cnt;
        let a = self.d.alloc(HDR as u64);
        self.d.write_bytes(a, &h.bytes());
        if data.is_empty() {
            self.d.add_chain(1, &[(a, HDR as u32, false)]);
        } else {
            let b = self.d.alloc(data.len() as u64);
            self.d.write_bytes(b, data);
            self.d
                .add_chain(1, &[(a, HDR as u32, false), (b, data.len() as u32, false)]);
        }
        self.d.notify(1);
    }

    /// The next packet the device put in the rx ring (waits up to 5 s);
    /// reposts the buffer.
    fn recv(&mut self) -> (Hdr, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(&(head, len)) = self.pending().first() {
                self.d.rings[0].used_seen = self.d.rings[0].used_seen.wrapping_add(1);
                let a = self.rx_bufs.remove(&head).expect("a buffer we posted");
                let bytes = self.d.read_bytes(a, len as usize);
                let h = Hdr::parse(&bytes);
                assert_eq!(h.len as usize + HDR, len as usize, "used length");
                assert_eq!((h.src_cid, h.dst_cid), (vsock::HOST_CID, GUEST_CID));
                self.post_rx(1);
                return (h, bytes[HDR..].to_vec());
            }
            assert!(Instant::now() < deadline, "no packet from the device");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pending(&mut self) -> Vec<(u16, u32)> {
        let seen = self.d.rings[0].used_seen;
        let v = self.d.used(0);
        self.d.rings[0].used_seen = seen;
        v
    }

    fn recv_op(&mut self, op: u16) -> (Hdr, Vec<u8>) {
        loop {
            let (h, data) = self.recv();
            if h.op == op {
                return (h, data);
            }
            assert_eq!(h.op, vsock::OP_CREDIT_UPDATE, "unexpected {h:?}");
        }
    }
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn vsock_guest_connects_to_a_host_unix_socket_and_both_ways_carry_data() {
    let (mut g, socket) = VGuest::new("g2h");
    let mut p = socket.clone().into_os_string();
    p.push("_1234");
    let listener = UnixListener::bind(PathBuf::from(p)).unwrap();
    g.send(Hdr::guest(5000, 1234, vsock::OP_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (vsock::OP_RESPONSE, 1234, 5000)
    );
    assert_eq!(h.buf_alloc, vsock::BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();

    // Guest to host: 200 KiB in 4 KiB packets (within the 256 KiB credit).
    let up = pattern(200 * 1024, 1);
    for chunk in up.chunks(4096) {
        g.send(
            Hdr {
                op: vsock::OP_RW,
                ..Hdr::guest(5000, 1234, 0)
            },
            chunk,
        );
    }
    assert_eq!(read_exactly(&mut host, up.len()), up);

    // Host to guest: 300 KiB, more than the guest's 64 KiB buffer: needs
    // the guest's credit updates.
    let down = pattern(300 * 1024, 7);
    let writer = {
        let mut host = host.try_clone().unwrap();
        let down = down.clone();
        std::thread::spawn(move || host.write_all(&down).unwrap())
    };
    let mut got = Vec::new();
    while got.len() < down.len() {
        let (h, data) = g.recv();
        match h.op {
            vsock::OP_RW => {
                assert!(h.len <= 64 * 1024);
                got.extend_from_slice(&data);
                g.fwd_cnt = g.fwd_cnt.wrapping_add(h.len);
                // Never more in flight than the guest allowed.
                assert!(got.len() as u32 - g.fwd_cnt <= 64 * 1024);
                if g.fwd_cnt % (16 * 1024) < h.len {
                    g.send(Hdr::guest(5000, 1234, vsock::OP_CREDIT_UPDATE), &[]);
                }
            }
            vsock::OP_CREDIT_UPDATE => {}
            op => panic!("unexpected op {op}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(got, down);

    // The guest closes: the host reads end of file, the guest gets RST.
    g.send(
        Hdr {
            flags: vsock::SHUTDOWN_RCV | vsock::SHUTDOWN_SEND,
            ..Hdr::guest(5000, 1234, vsock::OP_SHUTDOWN)
        },
        &[],
    );
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let (h, _) = g.recv_op(vsock::OP_RST);
    assert_eq!((h.src_port, h.dst_port), (1234, 5000));
    assert_eq!(g.d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn vsock_host_connects_to_a_guest_port_and_half_closes() {
    let (mut g, socket) = VGuest::new("h2g");
    let mut host = UnixStream::connect(&socket).unwrap();
    host.write_all(b"CONNECT 80\n").unwrap();
    let (req, _) = g.recv();
    assert_eq!((req.op, req.dst_port), (vsock::OP_REQUEST, 80));
    let local = req.src_port;
    g.send(Hdr::guest(80, local, vsock::OP_RESPONSE), &[]);
    let ok = format!("OK {local}\n");
    assert_eq!(read_exactly(&mut host, ok.len()), ok.as_bytes());

    // Host to guest, then the host shuts its sending side.
    host.write_all(b"ping over vsock").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, data) = g.recv_op(vsock::OP_RW);
    assert_eq!((h.src_port, h.dst_port), (local, 80));
    assert_eq!(data, b"ping over vsock");
    g.fwd_cnt = h.len;
    let (h, _) = g.recv_op(vsock::OP_SHUTDOWN);
    assert_eq!(h.flags, vsock::SHUTDOWN_SEND);

    // The guest answers and closes; the host reads the answer and EOF.
    g.send(
        Hdr {
            op: vsock::OP_RW,
            ..Hdr::guest(80, local, 0)
        },
        b"pong",
    );
    g.send(
        Hdr {
            flags: vsock::SHUTDOWN_RCV | vsock::SHUTDOWN_SEND,
            ..Hdr::guest(80, local, vsock::OP_SHUTDOWN)
        },
        &[],
    );
    let mut answer = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"pong");
    g.recv_op(vsock::OP_RST);
}

#[test]
fn vsock_refusals() {
    let (mut g, socket) = VGuest::new("refuse");
    // Nobody listens on the host port: RST.
    g.send(Hdr::guest(5001, 4321, vsock::OP_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (vsock::OP_RST, 4321, 5001));
    // Data on a connection that does not exist: RST.
    g.send(
        Hdr {
            op: vsock::OP_RW,
            ..Hdr::guest(5002, 1, 0)
        },
        b"x",
    );
    assert_eq!(g.recv().0.op, vsock::OP_RST);
    // The guest refuses a host connection: the Unix connection is closed.
    let mut host = UnixStream::connect(&socket).unwrap();
    host.write_all(b"CONNECT 81\n").unwrap();
    let (req, _) = g.recv();
    g.send(Hdr::guest(81, req.src_port, vsock::OP_RST), &[]);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // A malformed CONNECT line: closed, no packet to the guest.
    let mut bad = UnixStream::connect(&socket).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(g.pending().is_empty());
    assert_eq!(g.d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn vsock_malformed_tx_chains_need_reset() {
    // A header descriptor shorter than a header.
    let (mut g, _) = VGuest::new("short");
    let a = g.d.alloc(64);
    g.d.add_chain(1, &[(a, 20, false)]);
    g.d.notify(1);
    assert_ne!(g.d.status() & status::DEVICE_NEEDS_RESET, 0);
    // A header that claims more data than its buffer holds.
    let (mut g, _) = VGuest::new("long");
    let a = g.d.alloc(64);
    let h = Hdr {
        len: 4096,
        op: vsock::OP_RW,
        ..Hdr::guest(1, 2, 0)
    };
    g.d.write_bytes(a, &h.bytes());
    let b = g.d.alloc(16);
    g.d.add_chain(1, &[(a, HDR as u32, false), (b, 16, false)]);
    g.d.notify(1);
    assert_ne!(g.d.status() & status::DEVICE_NEEDS_RESET, 0);
    // A device-writable tx buffer.
    let (mut g, _) = VGuest::new("wo");
    let a = g.d.alloc(64);
    g.d.add_chain(1, &[(a, HDR as u32, true)]);
    g.d.notify(1);
    assert_ne!(g.d.status() & status::DEVICE_NEEDS_RESET, 0);
}

// ---------------------------------------------------------------- wire-up

#[test]
fn devices_come_in_window_order_with_their_start_up_descriptions() {
    let dir = scratch("build");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 3 << 20]).unwrap();
    let args = super::VirtioArgs {
        disks: vec![super::parse_disk(&format!("{},ro", img.display())).unwrap()],
        vsock: Some(3),
        vsock_socket: Some(dir.join("vm.vsock")),
        rng: true,
        virtio_console: false,
        virtio_console_input: false,
    };
    let devices = super::devices(&args, "vm", &dir).unwrap();
    let lines: Vec<&str> = devices.iter().map(|d| d.describe.as_str()).collect();
    assert_eq!(
        lines,
        [
            format!("virtio-blk: {} (3 MiB, read-only)", img.display()).as_str(),
            "virtio-rng: getrandom (/dev/urandom)",
            format!(
                "virtio-vsock: guest CID 3, host socket {0} (guest ports P: {0}_P)",
                dir.join("vm.vsock").display()
            )
            .as_str(),
        ]
    );
    // The constructors make the transports, wired to the line they get.
    let mem = super::testutil::memory();
    let ids: Vec<u32> = devices
        .into_iter()
        .map(|d| {
            let irq = Arc::new(super::testutil::Irq::default());
            let mut t = (d.build)(mem.clone(), irq).unwrap();
            let mut b = [0u8; 4];
            t.read(reg::DEVICE_ID, &mut b);
            u32::from_le_bytes(b)
        })
        .collect();
    assert_eq!(ids, [2, 4, 19]);
    assert!(
        super::stats_lines()
            .iter()
            .any(|(k, _)| k.starts_with("device virtio-blk"))
    );
    // A missing disk names the file, before anything runs.
    let bad = super::VirtioArgs {
        disks: vec![super::parse_disk("/nonexistent/x.img").unwrap()],
        ..args
    };
    let e = super::devices(&bad, "vm", &dir).err().unwrap();
    assert!(format!("{e:#}").contains("/nonexistent/x.img"), "{e:#}");
}

// ---------------------------------------------------------------- realm (issue 12)

/// A realm's disk: guest RAM seen at its IPA and at the unprotected alias
/// (`linux::realm::guest_memory`). Linux 7.2 gives the device alias
/// addresses for the rings and every buffer; both views reach the same page.
#[test]
fn a_realm_disk_works_through_the_alias_and_refuses_beyond_it() {
    let bit = 1u64 << 47;
    let backing = crate::linux::realm::Anon::new(RAM_SIZE);
    // SAFETY: `backing` outlives the driver (dropped first, below).
    let mem = unsafe {
        crate::linux::realm::alias_memory(backing.ptr, RAM_SIZE, RAM_SIZE as u64, RAM, bit)
    }
    .unwrap();
    let path = scratch("realm").join("disk.img");
    let data: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut d = Driver::with_memory(Box::new(Block::open(&path, false).unwrap()), mem, bit);
    assert_ne!(d.device_features() & VIRTIO_F_ACCESS_PLATFORM, 0);
    d.start(1, 64);
    // Rings and buffers at the alias: a read and a write both land.
    let (h, buf, st) = blk_req(&mut d, block::T_IN, 2, None, 4096);
    d.notify(0);
    assert_eq!(d.used(0), vec![(h, 4097)]);
    assert_eq!(status_of(&d, st), block::S_OK);
    let want: Vec<u8> = (1024..1024 + 4096).map(|i| (i % 251) as u8).collect();
    assert_eq!(d.read_bytes(buf, 4096), want);
    let secret = vec![0x5au8; 512];
    let (h, _, st) = blk_req(&mut d, block::T_OUT, 9, Some(&secret), 512);
    d.notify(0);
    assert_eq!(d.used(0), vec![(h, 1)]);
    assert_eq!(status_of(&d, st), block::S_OK);
    assert_eq!(
        &std::fs::read(&path).unwrap()[9 * 512..10 * 512],
        &secret[..]
    );
    // Canonical addresses (earlier CCA kernels) reach the same pages.
    d.alias = 0;
    let (h, buf, st) = blk_req(&mut d, block::T_IN, 9, None, 512);
    d.notify(0);
    assert_eq!(d.used(0), vec![(h, 513)]);
    assert_eq!(status_of(&d, st), block::S_OK);
    assert_eq!(d.read_bytes(buf, 512), secret);
    // Another high bit is not the alias: that buffer is not guest RAM, and
    // the device needs a reset rather than touching anything.
    d.alias = bit >> 1;
    let _ = blk_req(&mut d, block::T_IN, 0, None, 512);
    d.notify(0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    drop(d);
    drop(backing);
}

/// `VIRTIO_F_INDIRECT_DESC` is not offered: a chain that uses an indirect
/// table anyway is refused before `virtio-queue` reads the table (for a
/// realm it could be a private page, whose read would kill the VMM).
#[test]
fn an_indirect_descriptor_needs_reset() {
    let (mut d, _path) = disk("indirect", false);
    let table = d.alloc(48);
    // A well-formed indirect table of a read request, as a driver would
    // write it if the feature were offered.
    let hdr = d.alloc(16);
    d.write_bytes(hdr, &[0u8; 16]);
    let buf = d.alloc(512);
    let st = d.alloc(1);
    for (i, (addr, len, flags)) in [(hdr, 16u32, 1u16), (buf, 512, 3), (st, 1, 2)]
        .iter()
        .enumerate()
    {
        let mut e = Vec::new();
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&(i as u16 + 1).to_le_bytes());
        d.write_bytes(table + 16 * i as u64, &e);
    }
    d.raw_desc(0, 0, table, 48, 4, 0);
    d.publish(0, 0);
    d.notify(0);
    assert!(d.used(0).is_empty());
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}
