//! Issue 14, secure migration from a Linux host: `rampart-vmm migrate-out
//! VM --to HOST:PORT` (the source) and `rampart-vmm migrate-in --listen
//! PORT` (the destination), over TCP.
//!
//! The hypervisors do the security (`docs/abi.md` "Secure migration"): the
//! stream is sealed record by record under a key the hosts never see, the
//! destination accepts it once, whole and unmodified, or holds nothing of
//! the VM. The VMMs only carry bytes and memory:
//!
//! 1. `migrate-in` asks its hypervisor for a challenge (`VM_IMPORT_BEGIN`)
//!    and its identity (`ATTESTATION_KEY`), listens, and sends both to the
//!    first source that connects (the **hello**, `docs/formats.md`
//!    "Migration over TCP").
//! 2. `migrate-out` finds the `rampart-vmm run` process that runs the VM
//!    (the pool table names it), stops it with `SIGSTOP` (its vCPU threads
//!    return from `VCPU_RUN` at the host's next tick and stay out), and
//!    calls `VM_EXPORT` until the stream is complete, sending each chunk
//!    as it comes. After the first call the VM never runs again: the run
//!    process is let go (`SIGCONT`), gets `MIGRATING`, waits until the
//!    export has destroyed the VM and exits 0.
//! 3. `migrate-in` reads the clear header, allocates the VM's memory in
//!    the pool, imports (`VM_IMPORT`, `VM_DONATE`, `VM_IMPORT_DATA`),
//!    answers the source with its verdict (`ACCEPTED` or `REFUSED NAME`),
//!    and runs the VM to its end as `run` does.
//!
//! Hidden test modes (`linux-migrate/two-hosts`): `migrate-out
//! --save-stream FILE` keeps a copy of what was sent, `--replay FILE`
//! sends such a copy again instead of exporting, `--hostile-flip-byte N`
//! flips byte N of what goes on the wire; `migrate-in --from-file FILE`
//! imports a file instead of listening.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{HostCall, PAGE_SIZE, VmConfig};
use rampart_migrate::{HEADER_LEN, Header, Opener, PREAMBLE_LEN, RECORD_HEADER_LEN, TAG_LEN};

use crate::hyp::{self, CallError, Hyp, call, checked};
use crate::mem::Mapping;
use crate::plan::{Plan, stage2_extra_pages};
use crate::pool::Entry;
use crate::session::{Env, Session};

/// Pages of the transfer buffer: `VM_EXPORT` takes at most 16, and
/// `VM_IMPORT`/`VM_IMPORT_DATA` at most 65 536 bytes.
pub const BUFFER_PAGES: u64 = 16;
/// The transfer buffer in bytes.
#[allow(clippy::cast_possible_truncation, reason = "64 KiB")]
const BUFFER: usize = (BUFFER_PAGES * PAGE_SIZE) as usize;
/// The hello's magic.
pub const HELLO_MAGIC: [u8; 8] = *b"RMIGHELO";
/// The hello's version.
pub const HELLO_VERSION: u32 = 1;
/// Bytes of the hello: magic, version u32, reserved u32, challenge (16),
/// identity (32).
pub const HELLO_LEN: usize = 8 + 4 + 4 + 16 + 32;
/// The preamble and the header record: what `migrate-in` reads before it
/// allocates anything.
pub const FIRST_LEN: usize = PREAMBLE_LEN + RECORD_HEADER_LEN + HEADER_LEN + TAG_LEN;
/// The longest verdict line accepted.
const VERDICT_MAX: usize = 256;

/// `migrate-out`'s arguments.
#[derive(clap::Args, Debug)]
pub struct OutArgs {
    /// The VM: the name of the `rampart-vmm run` that runs it (`--name`,
    /// or the bundle's file name), that process's pid, or the VM's handle
    /// (`rampart-vmm list`).
    #[arg(required_unless_present = "replay")]
    pub vm: Option<String>,
    /// The destination: where `rampart-vmm migrate-in --listen PORT` runs.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Seconds to keep trying to connect (the destination may not listen yet).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub wait: u64,
    /// Test: also write the stream, as sent, to FILE.
    #[arg(long, hide = true, value_name = "FILE")]
    pub save_stream: Option<PathBuf>,
    /// Test: send FILE (a saved stream) instead of exporting a VM.
    #[arg(long, hide = true, value_name = "FILE", conflicts_with = "vm")]
    pub replay: Option<PathBuf>,
    /// Hostile test: flip byte N of the stream on the wire (not in the
    /// saved copy).
    #[arg(long, hide = true, value_name = "N")]
    pub hostile_flip_byte: Option<u64>,
}

/// `migrate-in`'s arguments.
#[derive(clap::Args, Debug)]
pub struct InArgs {
    /// The TCP port to listen on (all addresses).
    #[arg(long, value_name = "PORT", required_unless_present = "from_file")]
    pub listen: Option<u16>,
    /// The name console lines are prefixed with.
    #[arg(long, default_value = "migrated")]
    pub name: String,
    /// Test: import the stream in FILE instead of listening.
    #[arg(long, hide = true, value_name = "FILE", conflicts_with = "listen")]
    pub from_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// The wire.

/// What the destination sends first: its challenge and identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// `VM_IMPORT_BEGIN`'s `x1`, `x2`.
    pub challenge: [u64; 2],
    /// `ATTESTATION_KEY`'s `x1`..`x4`.
    pub identity: [u64; 4],
}

impl Hello {
    /// The hello's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..8].copy_from_slice(&HELLO_MAGIC);
        out[8..12].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        for (i, w) in self.challenge.iter().chain(&self.identity).enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses a hello.
    ///
    /// # Errors
    ///
    /// If the magic, version or reserved word is wrong.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Self> {
        if bytes[..8] != HELLO_MAGIC {
            bail!("the peer is not rampart-vmm migrate-in (no hello)");
        }
        let word = |i: usize| {
            u64::from_le_bytes(bytes[16 + 8 * i..24 + 8 * i].try_into().unwrap_or_default())
        };
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != HELLO_VERSION || bytes[12..16] != [0; 4] {
            bail!("the destination speaks hello version {version}, this is {HELLO_VERSION}");
        }
        Ok(Hello {
            challenge: [word(0), word(1)],
            identity: [word(2), word(3), word(4), word(5)],
        })
    }
}

/// The destination's answer after the stream: `ACCEPTED` or `REFUSED
/// NAME` (a hypervisor error's name) or `FAILED text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The import completed.
    Accepted,
    /// The destination's hypervisor refused the stream with this error.
    Refused(String),
    /// Something else went wrong at the destination.
    Failed(String),
}

impl Verdict {
    /// The line sent.
    #[must_use]
    pub fn line(&self) -> String {
        match self {
            Verdict::Accepted => "ACCEPTED\n".into(),
            Verdict::Refused(name) => format!("REFUSED {name}\n"),
            Verdict::Failed(text) => {
                let mut t: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
                t.push('\n');
                format!("FAILED {t}")
            }
        }
    }

    /// Parses a line (without its newline).
    #[must_use]
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        if line == "ACCEPTED" {
            return Some(Verdict::Accepted);
        }
        if let Some(name) = line.strip_prefix("REFUSED ") {
            return Some(Verdict::Refused(name.to_string()));
        }
        line.strip_prefix("FAILED ")
            .map(|t| Verdict::Failed(t.to_string()))
    }
}

/// Counts a stream's bytes and records as it passes (the records are
/// counted from their clear lengths; nothing is authenticated here).
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    bytes: u64,
    records: u64,
    /// Offset of the next record's start.
    next: u64,
    /// The next record's first bytes, while fewer than its header.
    partial: Vec<u8>,
    /// Lengths stopped parsing (a malformed stream): records no longer counted.
    lost: bool,
    /// Time spent in the hypervisor's export or import calls.
    pub in_calls: Duration,
    last_print: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            bytes: 0,
            records: 0,
            next: PREAMBLE_LEN as u64,
            partial: Vec::new(),
            lost: false,
            in_calls: Duration::ZERO,
            last_print: Instant::now(),
        }
    }
}

impl Progress {
    /// Takes the next bytes of the stream.
    #[allow(clippy::cast_possible_truncation, reason = "bounded by bytes.len()")]
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0usize;
        while i < bytes.len() && !self.lost {
            let at = self.bytes + i as u64;
            if at < self.next && self.partial.is_empty() {
                i += (self.next - at).min((bytes.len() - i) as u64) as usize;
                continue;
            }
            let take = (RECORD_HEADER_LEN - self.partial.len()).min(bytes.len() - i);
            self.partial.extend_from_slice(&bytes[i..i + take]);
            i += take;
            if self.partial.len() == RECORD_HEADER_LEN {
                match Opener::record_len(&self.partial) {
                    Ok(len) => {
                        self.records += 1;
                        self.next += len as u64;
                    }
                    Err(_) => self.lost = true,
                }
                self.partial.clear();
            }
        }
        self.bytes += bytes.len() as u64;
    }

    /// Bytes so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records begun so far.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.records
    }

    /// `N bytes (K KiB), R records, in T s, X MiB/s`.
    #[must_use]
    #[allow(clippy::cast_precision_loss, reason = "for display")]
    pub fn summary(&self) -> String {
        let s = self.started.elapsed().as_secs_f64();
        let rate = self.bytes as f64 / (1 << 20) as f64 / s.max(1e-6);
        format!(
            "{} bytes ({} KiB), {} records, in {s:.3} s, {rate:.2} MiB/s",
            self.bytes,
            self.bytes / 1024,
            self.records()
        )
    }

    /// The summary once a second at most.
    pub fn maybe_print(&mut self, what: &str) {
        if self.last_print.elapsed() >= Duration::from_secs(1) {
            self.last_print = Instant::now();
            println!("{what}: {}", self.summary());
        }
    }
}

// ---------------------------------------------------------------------------
// The source.

/// The VM's handle and the pool table entry of the `rampart-vmm run`
/// that runs it.
fn resolve(session: &Session, hyp: &dyn Hyp, vm: &str) -> Result<(u64, Option<Entry>)> {
    let others = session.others()?;
    let live = hyp::list_vms(hyp).context("listing VMs")?;
    if let Some(e) = others.iter().find(|e| e.name == vm && e.vm != 0) {
        return Ok((e.vm, Some(e.clone())));
    }
    let number = vm.strip_prefix("0x").map_or_else(
        || vm.parse::<u64>().ok(),
        |h| u64::from_str_radix(h, 16).ok(),
    );
    if let Some(n) = number {
        if let Some(e) = others.iter().find(|e| u64::from(e.pid) == n && e.vm != 0) {
            return Ok((e.vm, Some(e.clone())));
        }
        if live.contains(&n) {
            return Ok((n, others.iter().find(|e| e.vm == n).cloned()));
        }
    }
    bail!(
        "no VM `{vm}`: give the name or pid of the `rampart-vmm run` that runs it, or its handle (`rampart-vmm list`)"
    )
}

/// Connects to `to`, trying for `wait`.
fn connect(to: &str, wait: Duration) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        let addrs: Vec<_> = to
            .to_socket_addrs()
            .with_context(|| format!("{to}: not HOST:PORT"))?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(5)) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        if start.elapsed() >= wait {
            return Err(anyhow!(
                "connecting to {to}: {}",
                last.map_or_else(|| "no address".into(), |e| e.to_string())
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Reads the destination's verdict line.
fn read_verdict(sock: &mut TcpStream) -> Result<Verdict> {
    sock.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < VERDICT_MAX {
        match sock.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&line);
    Verdict::parse(&text)
        .ok_or_else(|| anyhow!("the destination closed without a verdict (`{text}`)"))
}

/// Where exported bytes go: the socket (with the hostile flip) and the
/// saved copy.
struct Sink {
    sock: TcpStream,
    save: Option<std::fs::File>,
    flip: Option<u64>,
    progress: Progress,
    /// The first send error: later bytes are only saved (an export, once
    /// started, runs to its end: the VM cannot run here again anyway, and
    /// a complete saved stream can still be replayed).
    broken: Option<String>,
}

impl Sink {
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(f) = &mut self.save {
            f.write_all(bytes).context("writing the saved stream")?;
        }
        let at = self.progress.bytes();
        self.progress.feed(bytes);
        if self.broken.is_some() {
            return Ok(());
        }
        let sent = match self.flip {
            Some(n) if n >= at && n - at < bytes.len() as u64 => {
                let mut copy = bytes.to_vec();
                #[allow(clippy::cast_possible_truncation, reason = "below bytes.len()")]
                let i = (n - at) as usize;
                copy[i] ^= 0x01;
                println!("migrate-out: hostile: byte {n} of the stream flipped on the wire");
                self.sock.write_all(&copy)
            }
            _ => self.sock.write_all(bytes),
        };
        if let Err(e) = sent {
            println!("migrate-out: the link broke after {at} bytes: {e}");
            self.broken = Some(e.to_string());
        }
        Ok(())
    }
}

/// Sends `SIGSTOP`/`SIGCONT` to `pid`.
fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling pid {pid}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Guest RAM given on first touch (issue 16): the source gives the rest.

/// Pages a call of [`give_missing_ram`] names at most
/// (`DONATE_ZEROED_MAX_PAGES`).
const GIVE_CHUNK: u64 = rampart_abi::host::DONATE_ZEROED_MAX_PAGES;

/// Guest RAM of the VM to export: `pages` pages at `phys` (page `i` backs
/// `GUEST_RAM_BASE + i * PAGE_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRam {
    /// Physical address of its first page (its pool region's base).
    pub phys: u64,
    /// Its pages, held by the VM yet or not.
    pub pages: u64,
}

/// How [`give_missing_ram`] went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Given {
    /// Pages given now.
    pub pages: u64,
    /// Pages the VM held already (`DENIED` one by one).
    pub held: u64,
    /// Calls made.
    pub calls: u64,
}

/// Gives VM `handle` every page of `ram` it does not hold yet, zeroed: a
/// VM launched with its RAM given on first touch (`rampart-vmm run`,
/// issue 16) holds only what its guest touched, and `VM_EXPORT` carries
/// only what the VM holds, so without this the destination would get a
/// VM with less RAM than it was signed for (or a layout of several runs
/// that `migrate-in` refuses). `VM_DONATE_ZEROED` in chunks of at most
/// [`GIVE_CHUNK`] pages; a chunk refused `DENIED` holds a page the VM
/// has already, so it is given again page by page, and a single page
/// refused `DENIED` is taken as held (the VM's own, or evicted: EL2
/// refuses both, so an evicted page is never replaced by zeros). On a
/// hypervisor without `VM_DONATE_ZEROED` (`NOT_SUPPORTED`) plain
/// `VM_DONATE`: only a measured protected VM can be exported, and EL2
/// zeroes every page donated to one.
///
/// The caller must have stopped the run process first (`SIGSTOP`): it
/// gives pages at the guest's memory faults, and two givers of the same
/// pages would each see the other's as `DENIED`.
///
/// # Errors
///
/// Any other refusal: the pages given before it stay the VM's (it holds
/// more of its own RAM; nothing else changed).
pub fn give_missing_ram(hyp: &dyn Hyp, handle: u64, ram: GuestRam) -> Result<Given, CallError> {
    let mut out = Given::default();
    let mut zeroed = true;
    let mut give = |first: u64, pages: u64, out: &mut Given| -> Result<bool, CallError> {
        let at = first * PAGE_SIZE;
        let (phys, ipa) = (ram.phys + at, GUEST_RAM_BASE + at);
        loop {
            out.calls += 1;
            let r = if zeroed {
                checked(hyp, HostCall::VmDonateZeroed.id(), &[handle, phys, pages, ipa, 0])
            } else {
                checked(hyp, HostCall::VmDonate.id(), &[handle, phys, pages, ipa])
            };
            match r {
                Ok(_) => return Ok(true),
                Err(e) if e.error() == Some(Error::Denied) => return Ok(false),
                Err(e) if zeroed && e.error() == Some(Error::NotSupported) => zeroed = false,
                Err(e) => return Err(e),
            }
        }
    };
    let mut first = 0;
    while first < ram.pages {
        let pages = (ram.pages - first).min(GIVE_CHUNK);
        if give(first, pages, &mut out)? {
            out.pages += pages;
        } else {
            for page in first..first + pages {
                if give(page, 1, &mut out)? {
                    out.pages += 1;
                } else {
                    out.held += 1;
                }
            }
        }
        first += pages;
    }
    Ok(out)
}

/// Guest RAM of VM `handle`, run by the process of pool table entry
/// `owner`, as that process's live report says (`stats.rs`; it is
/// rewritten every second from the first run on, so this waits up to
/// 3 s for it), checked against the pool table: the VM, the region's
/// base and a page count within the region must agree. `None`: nothing
/// to give (not a protected VM, which `VM_EXPORT` refuses anyway), or no
/// report (the process runs a VM it imported, which holds all its RAM).
fn guest_ram(env: &Env, session: &Session, owner: &Entry, handle: u64) -> Result<Option<GuestRam>> {
    let start = Instant::now();
    let text = loop {
        match crate::stats::read_live(&env.state_dir, owner.pid) {
            Some(t) => break t,
            None if start.elapsed() < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            None => {
                println!(
                    "migrate-out: pid {} has no live report: its VM's RAM is exported as it holds it",
                    owner.pid
                );
                return Ok(None);
            }
        }
    };
    let live = crate::stats::parse_live_ram(&text)
        .with_context(|| format!("pid {}'s live report does not parse", owner.pid))?;
    checked_ram(&live, owner, session.platform.pool.base, handle)
}

/// What `live` (a run process's report) says of VM `handle`'s guest RAM,
/// if it agrees with the pool table entry `owner` of a pool at
/// `pool_base`: the same process and VM, the region's base, and at least
/// one and at most the region's pages. `None` for a VM that is not
/// protected (`VM_EXPORT` refuses it: nothing to give).
///
/// # Errors
///
/// Where they disagree.
pub fn checked_ram(
    live: &crate::stats::LiveRam,
    owner: &Entry,
    pool_base: u64,
    handle: u64,
) -> Result<Option<GuestRam>> {
    let region = pool_base + owner.offset;
    if live.pid != owner.pid || live.vm != handle || live.region != region {
        bail!(
            "pid {}'s live report (pid {}, VM {:#x}, region {:#x}) disagrees with the pool table (VM {handle:#x}, region {region:#x}); nothing changed",
            owner.pid,
            live.pid,
            live.vm,
            live.region
        );
    }
    if live.ram_pages == 0 || live.ram_pages > owner.pages {
        bail!(
            "pid {}'s live report says {} pages of guest RAM, its pool region has {}; nothing changed",
            owner.pid,
            live.ram_pages,
            owner.pages
        );
    }
    Ok(live.protected.then_some(GuestRam {
        phys: region,
        pages: live.ram_pages,
    }))
}

/// Waits (up to 2 s) until every thread of `pid` is stopped (`T` in
/// `/proc/PID/task/*/stat`): `kill` only queues `SIGSTOP`, and a thread
/// busy in user space stops at its next entry to the kernel.
fn wait_stopped(pid: u32) -> Result<()> {
    let start = Instant::now();
    let dir = format!("/proc/{pid}/task");
    loop {
        let mut all = true;
        for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let path = task?.path().join("stat");
            let Ok(stat) = std::fs::read_to_string(&path) else {
                continue; // the thread has exited
            };
            // `pid (comm) S ...`: comm may hold spaces and parentheses.
            let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
            if !matches!(state, Some('T' | 't')) {
                all = false;
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() >= Duration::from_secs(2) {
            bail!("pid {pid} did not stop within 2 s of SIGSTOP");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How [`export`] went.
#[derive(Debug, PartialEq, Eq)]
pub struct Exported {
    /// `VM_EXPORT` calls that wrote something or finished.
    pub calls: u64,
    /// Stream bytes.
    pub bytes: u64,
    /// Wall time inside the calls that succeeded.
    pub in_calls: Duration,
}

/// Exports VM `handle` for `hello` through the buffer at `buffer_phys`
/// (mapped at offset 0 of `buffer`), handing each chunk to `sink`.
/// `started` runs once, after the first call succeeded (the VM is stopped
/// for good from then on). The first call is retried while it is `BUSY`
/// (a vCPU still in `VCPU_RUN`) for `busy_for`.
///
/// # Errors
///
/// The refusing call, by name (nothing changed if it was the first), or
/// the sink's error.
#[allow(clippy::too_many_arguments, reason = "the call's parts")]
pub fn export(
    hyp: &dyn Hyp,
    handle: u64,
    buffer: &Mapping,
    buffer_phys: u64,
    hello: &Hello,
    busy_for: Duration,
    started: &mut dyn FnMut(),
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<Exported> {
    let args = [
        handle,
        buffer_phys,
        BUFFER_PAGES,
        hello.challenge[0],
        hello.challenge[1],
        hello.identity[0],
        hello.identity[1],
        hello.identity[2],
        hello.identity[3],
    ];
    let first = Instant::now();
    let mut out = Exported {
        calls: 0,
        bytes: 0,
        in_calls: Duration::ZERO,
    };
    let mut idle = 0u32;
    loop {
        let t = Instant::now();
        let r = checked(hyp, HostCall::VmExport.id(), &args);
        let took = t.elapsed();
        let r = match r {
            Err(e)
                if out.calls == 0
                    && e.error() == Some(Error::Busy)
                    && first.elapsed() < busy_for =>
            {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => {
                let when = if out.calls == 0 {
                    "nothing changed: the VM runs on".to_string()
                } else {
                    format!("after {} bytes: the VM is stopped for good", out.bytes)
                };
                return Err(anyhow!(e).context(when));
            }
            Ok(r) => r,
        };
        out.in_calls += took;
        out.calls += 1;
        if out.calls == 1 {
            started();
        }
        let n = usize::try_from(r[1])?;
        if n > BUFFER {
            bail!("VM_EXPORT wrote {n} bytes into a {BUFFER}-byte buffer");
        }
        if n > 0 {
            let mut bytes = buffer.read_bytes(0, n.next_multiple_of(8));
            bytes.truncate(n);
            sink(&bytes)?;
            out.bytes += r[1];
        }
        if r[2] == 1 {
            return Ok(out);
        }
        // A call may write nothing (the end record's destruction was
        // busy: the next call finishes it); only a long run of them is
        // a hypervisor that makes no progress.
        if n == 0 {
            idle += 1;
            if idle > 1000 {
                bail!("VM_EXPORT made no progress in 1000 calls");
            }
            std::thread::sleep(Duration::from_millis(1));
        } else {
            idle = 0;
        }
    }
}

/// `rampart-vmm migrate-out`.
///
/// # Errors
///
/// What failed, with the hypervisor's error by name.
pub fn cmd_out(env: &Env, args: &OutArgs) -> Result<ExitCode> {
    let save = match &args.save_stream {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let wait = Duration::from_secs(args.wait);
    if let Some(file) = &args.replay {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let mut sock = connect(&args.to, wait)?;
        let hello = read_hello(&mut sock)?;
        println!(
            "migrate-out: replaying {} ({} bytes) to {} (its challenge now {:016x}{:016x})",
            file.display(),
            bytes.len(),
            args.to,
            hello.challenge[0],
            hello.challenge[1]
        );
        let mut sink = Sink {
            sock,
            save,
            flip: args.hostile_flip_byte,
            progress: Progress::default(),
            broken: None,
        };
        sink.send(&bytes)?;
        return finish_out(sink, None);
    }
    let vm = args.vm.as_deref().unwrap_or_default();
    let session = Session::open(env, BUFFER_PAGES, 1, None, "migrate-out")?;
    let channel = session.main_channel();
    let (handle, owner) = resolve(&session, &channel, vm)?;
    let buffer = session.map_region()?;
    let mut sock = connect(&args.to, wait)?;
    let hello = read_hello(&mut sock)?;
    println!(
        "migrate-out: VM {handle:#x}{} to {} (destination identity {:016x}{:016x}...)",
        owner.as_ref().map_or_else(String::new, |e| format!(" (run by pid {})", e.pid)),
        args.to,
        hello.identity[0].swap_bytes(),
        hello.identity[1].swap_bytes()
    );
    let mut sink = Sink {
        sock,
        save,
        flip: args.hostile_flip_byte,
        progress: Progress::default(),
        broken: None,
    };
    let ram = match &owner {
        Some(e) => guest_ram(env, &session, e, handle)?,
        None => None,
    };
    let owner = owner.map(|e| e.pid);
    let stopped = Instant::now();
    if let Some(pid) = owner {
        signal(pid, libc::SIGSTOP)?;
    }
    // Guest RAM given on first touch: the rest now, while the run process
    // (which gives pages at the guest's faults) is stopped.
    if let Some(ram) = ram {
        let given = owner
            .map_or(Ok(()), wait_stopped)
            .and_then(|()| give_missing_ram(&channel, handle, ram).map_err(anyhow::Error::from));
        match given {
            Ok(g) => println!(
                "migrate-out: VM {handle:#x}: {} pages of guest RAM given now ({} held already) in {} calls: all {} pages move",
                g.pages, g.held, g.calls, ram.pages
            ),
            Err(e) => {
                if let Some(pid) = owner {
                    let _ = signal(pid, libc::SIGCONT);
                }
                eprintln!(
                    "rampart-vmm: migrate-out: giving the VM the rest of its RAM: {e:#}; not exported: the VM runs on"
                );
                session.close();
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let mut resumed = false;
    let result = export(
        &channel,
        handle,
        &buffer,
        session.region_phys(),
        &hello,
        Duration::from_secs(10),
        &mut || {
            // Stopped for good: the run process may go on, to find that out.
            if let Some(pid) = owner {
                let _ = signal(pid, libc::SIGCONT);
            }
            resumed = true;
            println!("migrate-out: VM {handle:#x} stopped for good; exporting");
        },
        &mut |bytes| {
            sink.send(bytes)?;
            sink.progress.maybe_print("migrate-out");
            Ok(())
        },
    );
    if !resumed && let Some(pid) = owner {
        let _ = signal(pid, libc::SIGCONT);
    }
    let exported = match result {
        Ok(e) => e,
        Err(e) => {
            eprintln!("rampart-vmm: migrate-out: {e:#}");
            let refused = e.chain().any(|c| c.downcast_ref::<CallError>().is_some());
            session.close();
            return Ok(ExitCode::from(if refused {
                crate::EXIT_REFUSED
            } else {
                1
            }));
        }
    };
    println!(
        "migrate-out: exported in {} VM_EXPORT calls ({:.3} s in them); VM {handle:#x} destroyed here (its pages zeroed and the host's)",
        exported.calls,
        exported.in_calls.as_secs_f64()
    );
    session.close();
    finish_out(sink, Some(stopped))
}

fn read_hello(sock: &mut TcpStream) -> Result<Hello> {
    sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut bytes = [0u8; HELLO_LEN];
    sock.read_exact(&mut bytes)
        .context("reading the destination's hello")?;
    Hello::decode(&bytes)
}

fn finish_out(mut sink: Sink, stopped: Option<Instant>) -> Result<ExitCode> {
    // The destination may have refused early and closed: its verdict may
    // still be readable, so errors here are not the end.
    let _ = sink.sock.flush();
    let _ = sink.sock.shutdown(std::net::Shutdown::Write);
    println!(
        "migrate-out: {} {}",
        if sink.broken.is_some() {
            "exported"
        } else {
            "sent"
        },
        sink.progress.summary()
    );
    let verdict = match (read_verdict(&mut sink.sock), &sink.broken) {
        (Ok(v), _) => v,
        (Err(e), None) => return Err(e),
        (Err(_), Some(broken)) => Verdict::Failed(format!("the link broke ({broken}); no verdict")),
    };
    match verdict {
        Verdict::Accepted => {
            println!(
                "migrate-out: the destination accepted the stream{}",
                stopped.map_or_else(String::new, |t| format!(
                    " {:.3} s after the VM stopped here (it runs there from now)",
                    t.elapsed().as_secs_f64()
                ))
            );
            Ok(ExitCode::SUCCESS)
        }
        other => {
            let what = match &other {
                Verdict::Refused(name) => format!("refused it: {name}"),
                Verdict::Failed(text) => format!("failed: {text}"),
                Verdict::Accepted => unreachable!(),
            };
            eprintln!("rampart-vmm: migrate-out: the destination {what}");
            if stopped.is_some() {
                eprintln!(
                    "rampart-vmm: migrate-out: the VM left this machine; only a saved copy of the stream (its challenge is outstanding again) can still bring it back"
                );
            }
            Ok(ExitCode::from(crate::EXIT_REFUSED))
        }
    }
}

// ---------------------------------------------------------------------------
// The destination.

/// The plan for the VM the header describes, as `rampart-vmm run` would
/// have made it: one run of RAM at `GUEST_RAM_BASE`.
///
/// # Errors
///
/// For another layout.
pub fn plan_for(header: &Header) -> Result<Plan> {
    let runs = &header.runs[..header.run_count.min(header.runs.len())];
    let &[(base, pages)] = runs else {
        bail!(
            "the stream's memory is {} runs; migrate-in runs VMs with one run at {GUEST_RAM_BASE:#x} (as rampart-vmm run makes them)",
            runs.len()
        );
    };
    if base != GUEST_RAM_BASE {
        bail!("the stream's memory starts at {base:#x}, not at {GUEST_RAM_BASE:#x}");
    }
    let config = VmConfig {
        protected: header.protected,
        debug: header.debug,
        max_vcpus: u64::from(header.vcpus),
    };
    let memory_size = pages.checked_mul(PAGE_SIZE).context("memory size")?;
    Ok(Plan {
        config,
        memory_size,
        entry_pc: 0,
        x0: 0,
        metadata_pages: config.min_metadata_pages() + stage2_extra_pages(memory_size),
        differs_from_manifest: false,
    })
}

/// How an import ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// Complete: the VM's handle.
    Done(u64),
    /// `call` refused the stream with `code`; `handle` is the VM
    /// `VM_IMPORT` had created, if any (the hypervisor destroyed it).
    Refused {
        /// The refusing call.
        call: u32,
        /// Its error.
        code: i64,
        /// The VM created before, if any.
        handle: Option<u64>,
    },
    /// The stream ended before its end record (the VM, if created, is
    /// still there and never runs).
    Truncated(Option<u64>),
}

/// Imports the stream whose first bytes are `first` and whose rest comes
/// from `input`: the VM's metadata, RAM and the buffer as `plan` and
/// `region` (at `region_phys`) lay them out, the buffer after them.
/// `created` is called with the handle as soon as there is one.
///
/// # Errors
///
/// I/O errors of `input`, or a `VM_DONATE` failure.
#[allow(clippy::too_many_arguments, reason = "the import's parts")]
pub fn import(
    hyp: &dyn Hyp,
    plan: &Plan,
    region: &Mapping,
    region_phys: u64,
    first: &[u8],
    input: &mut dyn Read,
    progress: &mut Progress,
    created: &mut dyn FnMut(u64),
) -> Result<Imported> {
    let buf_off = usize::try_from(plan.total_pages() * PAGE_SIZE)?;
    let buf_phys = region_phys + plan.total_pages() * PAGE_SIZE;
    let mut pending: Vec<u8> = first.to_vec();
    fill(input, &mut pending, progress)?;
    region.write_bytes(buf_off, &pending);
    let t = Instant::now();
    let r = call(
        hyp,
        HostCall::VmImport.id(),
        &[
            region_phys + plan.metadata_offset(),
            plan.metadata_pages,
            buf_phys,
            pending.len() as u64,
        ],
    );
    progress.in_calls += t.elapsed();
    #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
    if r[0] != 0 {
        return Ok(Imported::Refused {
            call: HostCall::VmImport.id(),
            code: r[0] as i64,
            handle: None,
        });
    }
    let handle = r[1];
    created(handle);
    pending.drain(..usize::try_from(r[2])?.min(pending.len()));
    checked(
        hyp,
        HostCall::VmDonate.id(),
        &[
            handle,
            region_phys + plan.memory_offset(),
            plan.memory_pages(),
            GUEST_RAM_BASE,
        ],
    )?;
    loop {
        let eof = fill(input, &mut pending, progress)?;
        if pending.is_empty() {
            return Ok(Imported::Truncated(Some(handle)));
        }
        region.write_bytes(buf_off, &pending);
        let t = Instant::now();
        let r = call(
            hyp,
            HostCall::VmImportData.id(),
            &[handle, buf_phys, pending.len() as u64],
        );
        progress.in_calls += t.elapsed();
        #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
        if r[0] != 0 {
            return Ok(Imported::Refused {
                call: HostCall::VmImportData.id(),
                code: r[0] as i64,
                handle: Some(handle),
            });
        }
        pending.drain(..usize::try_from(r[1])?.min(pending.len()));
        if r[2] == 1 {
            return Ok(Imported::Done(handle));
        }
        if r[1] == 0 && eof {
            return Ok(Imported::Truncated(Some(handle)));
        }
    }
}

/// Reads from `input` until `pending` holds a buffer's worth or the input
/// ends; returns whether it ended.
fn fill(input: &mut dyn Read, pending: &mut Vec<u8>, progress: &mut Progress) -> Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    while pending.len() < BUFFER {
        let want = (BUFFER - pending.len()).min(chunk.len());
        let n = match input.read(&mut chunk[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the stream"),
        };
        if n == 0 {
            return Ok(true);
        }
        progress.feed(&chunk[..n]);
        pending.extend_from_slice(&chunk[..n]);
        if pending.len() >= RECORD_HEADER_LEN + 4096 {
            // Enough for the next call; don't wait for a full buffer
            // when the source is slower than the import.
            return Ok(false);
        }
    }
    Ok(false)
}

/// Whether the destination holds nothing of the VM `handle` once refused:
/// the handle is dead and the VM's RAM and metadata pages read zero and
/// are the host's. Returns a sentence saying so, or what is still held.
pub fn held_nothing(
    hyp: &dyn Hyp,
    handle: Option<u64>,
    plan: &Plan,
    region: &Mapping,
) -> Result<String, String> {
    if let Some(h) = handle {
        match hyp::list_vms(hyp) {
            Ok(v) if v.contains(&h) => return Err(format!("VM {h:#x} is still alive")),
            Ok(_) => {}
            Err(e) => return Err(format!("listing VMs: {e}")),
        }
    }
    let len = usize::try_from(plan.total_pages() * PAGE_SIZE).map_err(|e| e.to_string())?;
    match region.guarded_read(0, len) {
        Ok(bytes) => match bytes.iter().position(|&b| b != 0) {
            Some(i) => Err(format!("byte {i:#x} of the VM's pool pages is not zero")),
            None => Ok(format!(
                "{}its {} pages (RAM and metadata) read zero and are the host's",
                handle.map_or_else(
                    || "no VM was created; ".to_string(),
                    |h| format!("VM {h:#x} is gone; ")
                ),
                plan.total_pages()
            )),
        },
        Err(f) => Err(format!("the host cannot read the VM's pool pages: {f:?}")),
    }
}

/// `rampart-vmm migrate-in`.
///
/// # Errors
///
/// What failed, with the hypervisor's error by name.
#[allow(clippy::too_many_lines, reason = "the import, step by step")]
pub fn cmd_in(env: &Env, args: &InArgs) -> Result<ExitCode> {
    let name = args.name.as_str();
    // The challenge and identity first: no memory needed yet.
    let hello = {
        let session = Session::open(env, 0, 1, None, name)?;
        let ch = session.main_channel();
        let r =
            checked(&ch, HostCall::VmImportBegin.id(), &[]).context("asking for a challenge")?;
        let k = checked(&ch, HostCall::AttestationKey.id(), &[])
            .context("reading this machine's identity")?;
        session.close();
        Hello {
            challenge: [r[1], r[2]],
            identity: [k[1], k[2], k[3], k[4]],
        }
    };
    let mut sock = None;
    let mut input: Box<dyn Read> = if let Some(file) = &args.from_file {
        println!(
            "[{name}] rampart-vmm: migrate-in: importing {}",
            file.display()
        );
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    } else {
        let port = args.listen.unwrap_or_default();
        let listener = TcpListener::bind(("0.0.0.0", port))
            .with_context(|| format!("listening on port {port}"))?;
        println!(
            "[{name}] rampart-vmm: migrate-in: listening on port {port}; challenge {:016x}{:016x}",
            hello.challenge[0], hello.challenge[1]
        );
        let _ = std::io::stdout().flush();
        let (mut s, peer) = listener.accept().context("accepting")?;
        drop(listener);
        s.write_all(&hello.encode()).context("sending the hello")?;
        println!(
            "[{name}] rampart-vmm: migrate-in: source {peer} connected; challenge and identity sent"
        );
        sock = Some(s.try_clone()?);
        Box::new(s)
    };
    let answer = |v: &Verdict| {
        if let Some(s) = &sock {
            let mut s: &TcpStream = s;
            let _ = s.write_all(v.line().as_bytes());
        }
    };
    // After an early verdict: read what the source still sends (up to 30 s
    // of silence), so it can finish and read the verdict instead of
    // having its connection reset.
    let drain = |input: &mut dyn Read| {
        if let Some(s) = &sock {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = std::io::copy(input, &mut std::io::sink());
        }
    };
    let mut progress = Progress::default();
    let mut first = vec![0u8; FIRST_LEN];
    if let Err(e) = input.read_exact(&mut first) {
        answer(&Verdict::Failed(
            "the stream ended before its header".into(),
        ));
        return Err(e).context("reading the stream's preamble and header");
    }
    progress.feed(&first);
    let header_at = PREAMBLE_LEN + RECORD_HEADER_LEN;
    let plan = Header::decode(&first[header_at..header_at + HEADER_LEN])
        .map_err(|e| anyhow!("the stream's header does not parse: {e:?}"))
        .and_then(|h| plan_for(&h));
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            answer(&Verdict::Failed(format!("{e:#}")));
            return Err(e);
        }
    };
    let vcpus = u32::try_from(plan.config.max_vcpus)?;
    let session = Session::open(env, plan.total_pages() + BUFFER_PAGES, vcpus, None, name)?;
    let channels = session.channels();
    let main = &channels[0];
    let region = session.map_region()?;
    let mut created = None;
    let result = import(
        main,
        &plan,
        &region,
        session.region_phys(),
        &first,
        &mut input,
        &mut progress,
        &mut |h| {
            created = Some(h);
            session.set_vm(h);
        },
    );
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            // Our own failure (a read, VM_DONATE): the VM, if created,
            // never ran; destroy it so its pages are the host's again.
            answer(&Verdict::Failed(format!("{e:#}")));
            if let Some(h) = created
                && let Err(d) = crate::vm::destroy(main, h)
            {
                std::mem::forget(session);
                return Err(e.context(format!("and destroying the half-imported VM {h:#x}: {d}")));
            }
            session.close();
            return Err(e);
        }
    };
    let handle = match result {
        Imported::Done(h) => h,
        Imported::Refused { call, code, handle } => {
            let e = CallError { id: call, code };
            println!("[{name}] rampart-vmm: migrate-in: refused: {e}");
            answer(&Verdict::Refused(hyp::error_name(code)));
            drain(&mut input);
            match held_nothing(main, handle, &plan, &region) {
                Ok(s) => println!(
                    "[{name}] rampart-vmm: migrate-in: the destination holds nothing of the VM: {s}"
                ),
                Err(s) => {
                    eprintln!("rampart-vmm: migrate-in: after the refusal: {s}");
                    std::mem::forget(session);
                    return Ok(ExitCode::FAILURE);
                }
            }
            session.close();
            return Ok(ExitCode::from(crate::EXIT_REFUSED));
        }
        Imported::Truncated(handle) => {
            answer(&Verdict::Failed(
                "the stream ended before its end record".into(),
            ));
            eprintln!(
                "rampart-vmm: migrate-in: the stream ended before its end record; the VM never runs"
            );
            if let Some(h) = handle {
                let _ = crate::vm::destroy(main, h);
            }
            session.close();
            return Ok(ExitCode::FAILURE);
        }
    };
    answer(&Verdict::Accepted);
    drop(sock);
    println!(
        "[{name}] rampart-vmm: migrate-in: VM {handle:#x} imported ({} KiB of RAM, {vcpus} vCPU{}): {}; {:.3} s in VM_IMPORT and VM_IMPORT_DATA",
        plan.memory_size / 1024,
        if vcpus == 1 { "" } else { "s" },
        progress.summary(),
        progress.in_calls.as_secs_f64()
    );
    Ok(ExitCode::from(run_imported(
        &channels, &plan, &region, handle, name,
    )))
}

/// Runs the imported VM to its end as `run` does; returns the exit status.
fn run_imported(
    channels: &[crate::hyp::Channel<'_>],
    plan: &Plan,
    region: &Mapping,
    handle: u64,
    name: &str,
) -> u8 {
    use crate::run::{Options, Outcome, Run};
    crate::signals::install();
    let counters = crate::stats::Counters::default();
    let signal = crate::signals::pending;
    let run = Run::new(
        name,
        handle,
        plan,
        region,
        &counters,
        Options::default(),
        &signal,
    );
    let vcpus = usize::try_from(plan.config.max_vcpus).unwrap_or(1);
    std::thread::scope(|s| {
        for v in 0..vcpus {
            let channel = &channels[v % channels.len()];
            let run = &run;
            s.spawn(move || run.vcpu_loop(v, channel));
        }
        while run.finished_threads() < vcpus {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let outcome = run
        .outcome()
        .unwrap_or_else(|| Outcome::Error("every vCPU thread stopped without a reason".into()));
    if outcome == Outcome::Exported {
        wait_until_gone(&channels[0], handle, name);
    }
    let destroyed = match crate::vm::destroy(&channels[0], handle) {
        Err(e) if e.error() == Some(Error::InvalidParameter) => Ok(()),
        other => other,
    };
    let tally = run.tally.lock().map(|t| t.clone()).unwrap_or_default();
    println!(
        "[{name}] rampart-vmm: {}; {}",
        outcome.describe(),
        tally.summary()
    );
    if let Err(e) = &destroyed {
        eprintln!("rampart-vmm: destroying VM {handle:#x}: {e}");
    }
    crate::run_status(&outcome, false, tally.failed(), destroyed.is_ok())
}

/// After `MIGRATING`: waits (up to ten minutes) until the export has
/// destroyed VM `handle`, so its pages are the host's again before the
/// run gives them back to the pool.
pub fn wait_until_gone(hyp: &dyn Hyp, handle: u64, name: &str) {
    println!(
        "[{name}] rampart-vmm: VM {handle:#x} is being exported (rampart-vmm migrate-out); waiting until it has left"
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        match hyp::list_vms(hyp) {
            Ok(v) if v.contains(&handle) => std::thread::sleep(Duration::from_millis(100)),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests;
