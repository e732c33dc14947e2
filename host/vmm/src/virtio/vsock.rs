//! virtio-vsock (device ID 19), bridged to Unix sockets the way Firecracker
//! does it. Packets are parsed and built with rust-vmm's `virtio-vsock`.
//!
//! - **Host to guest**: a host program connects to the Unix socket `PATH`
//!   and writes `CONNECT <port>\n`; the device connects to the guest's
//!   `port` (from host CID 2, a local port it picks) and, once the guest
//!   accepts, writes `OK <local port>\n` on the Unix connection. From then on
//!   the Unix connection is the stream. If the guest refuses, the Unix
//!   connection is closed.
//! - **Guest to host**: a guest connection to CID 2, port `P` becomes a Unix
//!   connection to `PATH_P` (for example `/run/rampart-vmm/vm.vsock_1234`);
//!   nobody listening there: the guest gets a reset (`ECONNRESET`).
//!
//! Flow control follows the virtio-vsock credit scheme: the device never
//! sends the guest more than the guest's advertised buffer allows and
//! advertises [`BUF_ALLOC`] bytes per connection itself; a guest that sends
//! beyond it is reset. Each connection keeps at most [`BUF_ALLOC`] bytes the
//! host side has not read yet. Host sockets are non-blocking; one I/O thread
//! polls them and runs the device through the transport's [`Waker`].
//!
//! A guest packet the device cannot parse (a chain `virtio-vsock` refuses)
//! puts the device in `DEVICE_NEEDS_RESET`; a well-formed packet that makes
//! no sense (unknown connection, wrong CIDs, not a stream) is answered with a
//! reset or dropped.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::Bytes;

use super::guest::Cursor;
use super::{Ctx, DeviceError, VirtioDevice, Waker};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Stream sockets (the only type offered: no `VIRTIO_VSOCK_F_SEQPACKET`).
pub const TYPE_STREAM: u16 = 1;
/// Operations.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset / refused.
pub const OP_RST: u16 = 3;
/// Half or full shutdown (flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit announcement.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Shutdown flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Receive buffer the device advertises per connection (bytes).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest data payload in one packet either way.
const MAX_PKT_DATA: u32 = 64 * 1024;
/// Queues: rx (device to guest), tx (guest to device), event.
const RX: usize = 0;
const TX: usize = 1;
/// At most this many connections (and half-open host connections).
const MAX_CONNS: usize = 256;
/// At most this many control packets waiting for guest rx buffers.
const MAX_CTRL: usize = 4096;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// First local (host-side) port of host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated, waiting for the guest's RESPONSE.
    Connecting,
    /// Open.
    Established,
}

struct Conn {
    stream: UnixStream,
    state: ConnState,
    /// The guest's receive buffer and how much of what we sent it consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes from the guest written to the host socket.
    fwd_cnt: u32,
    /// `fwd_cnt` last told to the guest.
    fwd_cnt_sent: u32,
    /// Guest data the host socket has not taken yet.
    out: VecDeque<u8>,
    /// The host socket reached end of file (we told the guest SHUTDOWN_SEND).
    host_eof: bool,
    /// The guest's shutdown flags.
    peer_shutdown: u32,
}

impl Conn {
    fn new(stream: UnixStream, state: ConnState) -> Self {
        Self {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            out: VecDeque::new(),
            host_eof: false,
            peer_shutdown: 0,
        }
    }

    /// Bytes the guest can take now.
    fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether we want to read the host socket.
    fn wants_host_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.credit() > 0
    }
}

/// A control packet waiting for an rx buffer: (local port, peer port, op, flags).
#[derive(Clone, Copy, Debug)]
struct Ctrl {
    local: u32,
    peer: u32,
    op: u16,
    flags: u32,
}

/// A host connection that has not sent its `CONNECT` line yet.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What the I/O thread polls, kept up to date by the device.
#[derive(Default)]
struct PollSet {
    fds: Vec<libc::pollfd>,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    pending: Vec<Pending>,
    /// Keyed by (local port, guest port).
    conns: HashMap<(u32, u32), Conn>,
    ctrl: VecDeque<Ctrl>,
    next_local_port: u32,
    rx_starved: bool,
    live: bool,
    pollset: Arc<Mutex<PollSet>>,
    wake_rd: Arc<OwnedFd>,
    wake_wr: OwnedFd,
    stop: Arc<AtomicBool>,
    /// Guest packets that were well formed but refused (for tests and logs).
    pub refused: u64,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: pipe2 succeeded: both are new descriptors that we own alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn kick(fd: &OwnedFd) {
    let b = 1u8;
    // SAFETY: writes one byte from a valid local to our own pipe; a full
    // pipe (EAGAIN) already means a wake-up is pending.
    unsafe { libc::write(fd.as_raw_fd(), std::ptr::from_ref(&b).cast(), 1) };
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a valid local buffer from our own non-blocking pipe.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

impl Vsock {
    /// A device for guest CID `cid` listening on the Unix socket `socket`
    /// (a stale socket file there is replaced; any other file is an error).
    pub fn new(cid: u64, socket: &Path) -> Result<Self> {
        if !(3..=0xffff_fffe).contains(&cid) {
            bail!("vsock guest CID {cid}: must be 3 to 4294967294");
        }
        if let Ok(m) = std::fs::symlink_metadata(socket) {
            if !m.file_type().is_socket() {
                bail!(
                    "vsock socket {}: exists and is not a socket",
                    socket.display()
                );
            }
            std::fs::remove_file(socket).with_context(|| {
                format!("vsock socket {}: removing the stale one", socket.display())
            })?;
        }
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("vsock socket {}", socket.display()))?;
        listener.set_nonblocking(true)?;
        let (rd, wr) = pipe()?;
        Ok(Self {
            cid,
            socket: socket.to_path_buf(),
            listener,
            pending: Vec::new(),
            conns: HashMap::new(),
            ctrl: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_starved: false,
            live: false,
            pollset: Arc::new(Mutex::new(PollSet::default())),
            wake_rd: Arc::new(rd),
            wake_wr: wr,
            stop: Arc::new(AtomicBool::new(false)),
            refused: 0,
        })
    }

    /// The Unix socket guest connections to `port` go to.
    #[must_use]
    pub fn guest_port_path(&self, port: u32) -> PathBuf {
        let mut s = self.socket.clone().into_os_string();
        s.push(format!("_{port}"));
        PathBuf::from(s)
    }

    fn queue_ctrl(&mut self, local: u32, peer: u32, op: u16, flags: u32) {
        if self.ctrl.len() < MAX_CTRL {
            self.ctrl.push_back(Ctrl {
                local,
                peer,
                op,
                flags,
            });
        }
    }

    fn rst(&mut self, local: u32, peer: u32) {
        self.queue_ctrl(local, peer, OP_RST, 0);
    }

    /// One packet from the guest, with its data (`pkt.len()` bytes).
    fn on_packet(&mut self, pkt: &VsockPacket<'_, ()>, data: &[u8]) {
        if pkt.src_cid() != self.cid || pkt.dst_cid() != HOST_CID {
            self.refused += 1;
            return;
        }
        let (local, peer) = (pkt.dst_port(), pkt.src_port());
        if pkt.type_() != TYPE_STREAM {
            self.refused += 1;
            if pkt.op() != OP_RST {
                self.rst(local, peer);
            }
            return;
        }
        let key = (local, peer);
        if pkt.op() == OP_REQUEST {
            self.on_request(pkt, local, peer);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.refused += 1;
            if pkt.op() != OP_RST {
                self.rst(local, peer);
            }
            return;
        };
        conn.peer_buf_alloc = pkt.buf_alloc();
        conn.peer_fwd_cnt = pkt.fwd_cnt();
        match pkt.op() {
            OP_RESPONSE if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Established;
                let ok = format!("OK {local}\n");
                // A fresh socket's buffer takes a few bytes without blocking.
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.conns.remove(&key);
                    self.rst(local, peer);
                }
            }
            OP_RST => {
                self.conns.remove(&key);
            }
            OP_SHUTDOWN => {
                conn.peer_shutdown |= pkt.flags() & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flush(key);
            }
            OP_RW if conn.state == ConnState::Established => {
                let len = data.len();
                let room = (BUF_ALLOC as usize).saturating_sub(conn.out.len());
                if len > room || conn.peer_shutdown & SHUTDOWN_SEND != 0 {
                    // Beyond the credit we gave, or after it said it was done.
                    self.refused += 1;
                    self.conns.remove(&key);
                    self.rst(local, peer);
                    return;
                }
                conn.out.extend(data);
                self.flush(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.queue_ctrl(local, peer, OP_CREDIT_UPDATE, 0),
            _ => {
                self.refused += 1;
                self.conns.remove(&key);
                self.rst(local, peer);
            }
        }
    }

    fn on_request(&mut self, pkt: &VsockPacket<'_, ()>, local: u32, peer: u32) {
        let key = (local, peer);
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.refused += 1;
            self.rst(local, peer);
            return;
        }
        let path = self.guest_port_path(local);
        match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(stream) => {
                let mut c = Conn::new(stream, ConnState::Established);
                c.peer_buf_alloc = pkt.buf_alloc();
                c.peer_fwd_cnt = pkt.fwd_cnt();
                self.conns.insert(key, c);
                self.queue_ctrl(local, peer, OP_RESPONSE, 0);
            }
            Err(_) => self.rst(local, peer),
        }
    }

    /// Writes what the host socket takes; closes the connection when the
    /// guest is done and everything went out; tells the guest about credit.
    fn flush(&mut self, key: (u32, u32)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        while !conn.out.is_empty() {
            let (a, _) = conn.out.as_slices();
            match conn.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    conn.out.drain(..n);
                    conn.fwd_cnt = conn.fwd_cnt.wrapping_add(u32::try_from(n).unwrap_or(0));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // The host side went away.
                    self.conns.remove(&key);
                    self.rst(key.0, key.1);
                    return;
                }
            }
        }
        if conn.out.is_empty() && conn.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            if conn.peer_shutdown & SHUTDOWN_RCV != 0 || conn.host_eof {
                // Both directions done: the guest waits for our reset.
                self.conns.remove(&key);
                self.rst(key.0, key.1);
                return;
            }
        }
        if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_sent) >= BUF_ALLOC / 4 {
            conn.fwd_cnt_sent = conn.fwd_cnt;
            self.queue_ctrl(key.0, key.1, OP_CREDIT_UPDATE, 0);
        }
    }

    /// New host connections and their `CONNECT` lines.
    fn accept(&mut self) {
        while self.pending.len() + self.conns.len() < MAX_CONNS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        self.pending.push(Pending {
                            stream,
                            line: Vec::new(),
                        });
                    }
                }
                Err(_) => break,
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            match self.read_connect_line(i) {
                None => i += 1,
                Some(port) => {
                    let p = self.pending.swap_remove(i);
                    if let Some(port) = port {
                        self.connect_to_guest(p.stream, port);
                    }
                }
            }
        }
    }

    /// `None`: not complete yet; `Some(None)`: drop it; `Some(Some(port))`.
    fn read_connect_line(&mut self, i: usize) -> Option<Option<u32>> {
        let p = &mut self.pending[i];
        let mut b = [0u8; 1];
        loop {
            match p.stream.read(&mut b) {
                Ok(0) => return Some(None),
                Ok(_) if b[0] == b'\n' => {
                    let line = String::from_utf8_lossy(&p.line).into_owned();
                    let port = line
                        .strip_prefix("CONNECT ")
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    return Some(port);
                }
                Ok(_) => {
                    p.line.push(b[0]);
                    if p.line.len() > MAX_CONNECT_LINE {
                        return Some(None);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(_) => return Some(None),
            }
        }
    }

    fn connect_to_guest(&mut self, stream: UnixStream, port: u32) {
        let mut local = self.next_local_port;
        while self.conns.contains_key(&(local, port)) {
            local = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
        }
        self.next_local_port = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
        self.conns
            .insert((local, port), Conn::new(stream, ConnState::Connecting));
        self.queue_ctrl(local, port, OP_REQUEST, 0);
    }

    /// Fills guest rx buffers: control packets first, then host data.
    fn fill_rx(&mut self, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        loop {
            let want_data = self.conns.values().any(Conn::wants_host_data);
            if self.ctrl.is_empty() && !want_data {
                return Ok(());
            }
            let Some(chain) = ctx.pop(RX)? else {
                self.rx_starved = true;
                return Ok(());
            };
            let space = chain.writable_len();
            if !chain.readable.is_empty() || space < PKT_HEADER_SIZE {
                return Err(DeviceError::Chain(
                    "vsock rx: a buffer the device cannot write a header into".into(),
                ));
            }
            // The packet is built in the VMM's memory with virtio-vsock,
            // then copied into the guest's buffers (guest::Cursor).
            let mut hdr = [0u8; PKT_HEADER_SIZE];
            let mut data = vec![0u8; (space - PKT_HEADER_SIZE).min(MAX_PKT_DATA as usize)];
            let n = {
                // SAFETY: `hdr` and `data` are this function's own buffers;
                // they outlive `pkt` and nothing else touches them meanwhile.
                let mut pkt = unsafe { VsockPacket::new(&mut hdr, Some(&mut data)) }
                    .map_err(|e| DeviceError::Chain(format!("vsock rx: {e}")))?;
                if let Some(c) = self.ctrl.pop_front() {
                    let fwd = self.conns.get_mut(&(c.local, c.peer)).map_or(0, |conn| {
                        conn.fwd_cnt_sent = conn.fwd_cnt;
                        conn.fwd_cnt
                    });
                    self.header(&mut pkt, c.local, c.peer, c.op, fwd);
                    pkt.set_flags(c.flags).set_len(0);
                    0
                } else if let Some(n) = self.host_data(&mut pkt) {
                    n
                } else {
                    // No data after all (every socket would block, or one
                    // hit end of file and queued a SHUTDOWN, sent next time
                    // round).
                    ctx.unpop(RX);
                    if self.ctrl.is_empty() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let mut w = Cursor::new(ctx.mem, &chain.writable, 0, usize::MAX);
            w.write_all(&hdr)?;
            w.write_all(&data[..n])?;
            ctx.add_used(
                RX,
                chain.head,
                u32::try_from(PKT_HEADER_SIZE + n).unwrap_or(0),
            )?;
        }
    }

    fn header(&self, pkt: &mut VsockPacket<'_, ()>, local: u32, peer: u32, op: u16, fwd: u32) {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(local)
            .set_dst_port(peer)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(0)
            .set_buf_alloc(BUF_ALLOC)
            .set_fwd_cnt(fwd);
    }

    /// Reads one connection's host data into `pkt`; returns the data length.
    /// A host socket at end of file queues a SHUTDOWN_SEND instead.
    fn host_data(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Option<usize> {
        let room = pkt
            .data_slice()
            .map_or(0, |s| s.len())
            .min(MAX_PKT_DATA as usize);
        if room == 0 {
            return None;
        }
        let keys: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_host_data())
            .map(|(k, _)| *k)
            .collect();
        let mut buf = vec![0u8; room];
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let n = room.min(conn.credit() as usize);
            match conn.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    conn.host_eof = true;
                    let done = conn.peer_shutdown & SHUTDOWN_SEND != 0 && conn.out.is_empty();
                    if done {
                        // Both sides finished sending: close.
                        self.conns.remove(&key);
                        self.rst(key.0, key.1);
                    } else {
                        self.queue_ctrl(key.0, key.1, OP_SHUTDOWN, SHUTDOWN_SEND);
                    }
                }
                Ok(n) => {
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(u32::try_from(n).unwrap_or(0));
                    conn.fwd_cnt_sent = conn.fwd_cnt;
                    let fwd = conn.fwd_cnt;
                    let data = pkt.data_slice()?;
                    data.write_slice(&buf[..n], 0).ok()?;
                    self.header(pkt, key.0, key.1, OP_RW, fwd);
                    pkt.set_len(u32::try_from(n).unwrap_or(0));
                    return Some(n);
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.conns.remove(&key);
                    self.rst(key.0, key.1);
                }
            }
        }
        None
    }

    /// Recomputes what the I/O thread polls and wakes it.
    fn update_pollset(&mut self) {
        let mut fds = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        };
        if self.live {
            if self.pending.len() + self.conns.len() < MAX_CONNS {
                add(self.listener.as_raw_fd(), libc::POLLIN);
            }
            for p in &self.pending {
                add(p.stream.as_raw_fd(), libc::POLLIN);
            }
            for c in self.conns.values() {
                let mut ev = 0;
                if c.wants_host_data() && !self.rx_starved {
                    ev |= libc::POLLIN;
                }
                if !c.out.is_empty() {
                    ev |= libc::POLLOUT;
                }
                if ev != 0 {
                    add(c.stream.as_raw_fd(), ev);
                }
            }
        }
        self.pollset
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fds = fds;
        kick(&self.wake_wr);
    }

    /// Everything the host side may have for the guest.
    fn run(&mut self, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        self.accept();
        let keys: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.out.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.flush(k);
        }
        let r = self.fill_rx(ctx);
        self.update_pollset();
        r
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        kick(&self.wake_wr);
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn device_id(&self) -> u32 {
        19
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[256, 256, 16]
    }

    fn config(&self) -> Vec<u8> {
        self.cid.to_le_bytes().to_vec()
    }

    fn start(&mut self, waker: Waker) {
        let pollset = self.pollset.clone();
        let wake_rd = self.wake_rd.clone();
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("vsock".into())
            .spawn(move || io_thread(&pollset, &wake_rd, &stop, &waker));
        if let Err(e) = spawned {
            eprintln!("rampart-vmm: virtio-vsock: no I/O thread: {e}");
        }
    }

    fn activate(&mut self, _features: u64, _ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        self.live = true;
        self.update_pollset();
        Ok(())
    }

    fn notify(&mut self, queue: usize, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        if queue == RX {
            self.rx_starved = false;
        }
        if queue == TX {
            while let Some(chain) = ctx.pop(TX)? {
                let avail = chain.readable_len();
                if !chain.writable.is_empty() || avail < PKT_HEADER_SIZE {
                    return Err(DeviceError::Chain(
                        "vsock tx: no packet header, or a device-writable buffer".into(),
                    ));
                }
                // Copied out of the guest first (guest::Cursor), then parsed
                // with virtio-vsock in the VMM's memory.
                let mut r = Cursor::new(
                    ctx.mem,
                    &chain.readable,
                    0,
                    PKT_HEADER_SIZE + MAX_PKT_DATA as usize,
                );
                let mut raw = vec![0u8; r.remaining()];
                r.read_exact(&mut raw)?;
                let data = raw[PKT_HEADER_SIZE..].to_vec();
                let mut hdr = [0u8; PKT_HEADER_SIZE];
                hdr.copy_from_slice(&raw[..PKT_HEADER_SIZE]);
                let mut hdr_buf = hdr;
                // SAFETY: `hdr_buf` is this function's own buffer; it
                // outlives `pkt` and nothing else touches it meanwhile.
                let mut pkt = unsafe { VsockPacket::new(&mut hdr_buf, None) }
                    .map_err(|e| DeviceError::Chain(format!("vsock tx: {e}")))?;
                pkt.set_header_from_raw(&hdr)
                    .map_err(|e| DeviceError::Chain(format!("vsock tx: {e}")))?;
                let len = pkt.len() as usize;
                if len > data.len() {
                    return Err(DeviceError::Chain(format!(
                        "vsock tx: the header says {len} bytes, the chain carries {} (at most {MAX_PKT_DATA})",
                        data.len()
                    )));
                }
                self.on_packet(&pkt, &data[..len]);
                ctx.add_used(TX, chain.head, 0)?;
            }
        }
        // The event queue (2) only holds buffers for transport resets,
        // which this device never sends.
        self.run(ctx)
    }

    fn poll(&mut self, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        self.run(ctx)
    }

    fn reset(&mut self) {
        self.live = false;
        self.conns.clear();
        self.pending.clear();
        self.ctrl.clear();
        self.rx_starved = false;
        self.update_pollset();
    }
}

/// The I/O thread: waits for the host sockets the device cares about (or a
/// wake-up from the device), then runs the device.
fn io_thread(pollset: &Mutex<PollSet>, wake_rd: &OwnedFd, stop: &AtomicBool, waker: &Waker) {
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut fds = vec![libc::pollfd {
            fd: wake_rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(
            pollset
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fds
                .iter()
                .copied(),
        );
        let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: `fds` is a valid array of `n` pollfd structures.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, 1000) };
        if stop.load(Ordering::Acquire) {
            return;
        }
        if fds[0].revents != 0 {
            drain(wake_rd.as_raw_fd());
        }
        let host_ready = r > 0 && fds[1..].iter().any(|f| f.revents != 0);
        if (host_ready || r == 0) && !waker.wake() {
            return;
        }
    }
}
