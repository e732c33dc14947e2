//! The Linux guest's virtio devices (issue 11): a virtio-mmio version 2
//! transport ([`mmio`]) around block, entropy, console and vsock devices.
//!
//! The rings are parsed by rust-vmm's `virtio-queue` over `vm-memory`'s
//! `GuestMemoryMmap` (bounds-checked guest-physical accesses); vsock
//! packet headers by `virtio-vsock`. Every descriptor the guest hands us is
//! hostile: a chain the device cannot use either completes with an error
//! status the guest's driver understands or puts the device in
//! `DEVICE_NEEDS_RESET`; nothing a guest writes panics the VMM.
//!
//! Guest-physical layout (`linux::layout`, fixed with the device tree):
//! transport `i` at `0x0a00_0000 + 0x200 * i`, SPI `16 + i`, edge-rising.

pub mod block;
pub mod console;
pub mod guest;
pub mod mmio;
pub mod rng;
pub mod vsock;
pub mod vsock_cli;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use vm_memory::GuestMemoryMmap;

use crate::bus::{IrqLine, MmioDevice};
pub use mmio::{Ctx, DeviceStats, Transport, Waker};

/// Why a device stopped: the transport then sets `DEVICE_NEEDS_RESET`.
#[derive(Debug)]
pub enum DeviceError {
    /// A queue index the device does not have.
    Queue(usize),
    /// The ring itself is unusable (outside guest memory, a hostile index).
    Ring(String),
    /// A descriptor chain that breaks the device's protocol so badly that
    /// no status can be returned in it.
    Chain(String),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queue(q) => write!(f, "no queue {q}"),
            Self::Ring(s) => write!(f, "bad ring: {s}"),
            Self::Chain(s) => write!(f, "malformed descriptor chain: {s}"),
        }
    }
}

/// A virtio device behind a [`Transport`].
pub trait VirtioDevice: Send {
    /// Short name (`blk`, `rng`, `console`, `vsock`) for messages.
    fn name(&self) -> &'static str;
    /// The virtio device ID (virtio 1.2, section 5).
    fn device_id(&self) -> u32;
    /// The device-specific feature bits offered (the transport adds
    /// `VERSION_1`, `ACCESS_PLATFORM`, `EVENT_IDX`).
    fn features(&self) -> u64 {
        0
    }
    /// The maximum size of each queue; the number of queues.
    fn queue_max_sizes(&self) -> &'static [u16];
    /// Reads the configuration space (`data` is zeroed; out of range reads
    /// leave it so).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }
    /// The configuration space, for the default [`VirtioDevice::read_config`].
    fn config(&self) -> Vec<u8> {
        Vec::new()
    }
    /// A guest store to the configuration space; returns whether the
    /// configuration changed. Read-only by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }
    /// Called once with a [`Waker`] for the device's own I/O thread.
    fn start(&mut self, _waker: Waker) {}
    /// The driver set `DRIVER_OK` with these features.
    fn activate(&mut self, _features: u64, _ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        Ok(())
    }
    /// The driver notified queue `queue`.
    fn notify(&mut self, queue: usize, ctx: &mut Ctx<'_>) -> Result<(), DeviceError>;
    /// The device's I/O thread asked to run ([`Waker::wake`]).
    fn poll(&mut self, _ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        Ok(())
    }
    /// The driver reset the device: forget everything but the backend.
    fn reset(&mut self) {}
}

/// Copies `config[offset..]` into `data`; bytes beyond the space stay 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// The per-device counters of this VMM, for `rampart-vmm stats`.
static STATS: Mutex<Vec<(String, Arc<DeviceStats>)>> = Mutex::new(Vec::new());

fn register(label: String, t: &Transport) {
    STATS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((label, t.stats()));
}

/// The `rampart-vmm stats` lines of every virtio device: `(key, value)`.
pub fn stats_lines() -> Vec<(String, String)> {
    let stats = STATS.lock().unwrap_or_else(PoisonError::into_inner);
    stats
        .iter()
        .map(|(label, s)| {
            let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            (
                format!("device {label}"),
                format!(
                    "{} MMIO exits ({} reads, {} writes, {} notifies), {} interrupts, {} requests, {} errors",
                    r(&s.reads) + r(&s.writes),
                    r(&s.reads),
                    r(&s.writes),
                    r(&s.notifies),
                    r(&s.interrupts),
                    r(&s.completed),
                    r(&s.errors)
                ),
            )
        })
        .collect()
}

fn transport(
    label: String,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap<()>,
    irq: Arc<dyn IrqLine>,
) -> Result<Box<dyn MmioDevice>> {
    let t = Transport::new(device, mem, irq)?;
    register(label, &t);
    Ok(Box::new(t))
}

/// A virtio-blk device backed by the file `path` (read-only: `VIRTIO_BLK_F_RO`).
pub fn block(
    path: &Path,
    read_only: bool,
    mem: GuestMemoryMmap<()>,
    irq: Arc<dyn IrqLine>,
) -> Result<Box<dyn MmioDevice>> {
    transport(
        format!("virtio-blk {}", path.display()),
        Box::new(block::Block::open(path, read_only)?),
        mem,
        irq,
    )
}

/// A virtio-rng device fed by the host's `getrandom` (`/dev/urandom`).
pub fn rng(mem: GuestMemoryMmap<()>, irq: Arc<dyn IrqLine>) -> Result<Box<dyn MmioDevice>> {
    transport("virtio-rng".into(), Box::new(rng::Rng::new()), mem, irq)
}

/// A virtio-console whose output goes to the VMM's stdout, each line
/// prefixed with `[name]`; with `input`, what the VMM reads on its stdin
/// is the guest's input (hvc0).
pub fn console(
    name: &str,
    input: bool,
    mem: GuestMemoryMmap<()>,
    irq: Arc<dyn IrqLine>,
) -> Result<Box<dyn MmioDevice>> {
    let mut c = console::Console::stdout(name);
    if input {
        c = c.with_input(Box::new(std::io::stdin()));
    }
    transport("virtio-console".into(), Box::new(c), mem, irq)
}

/// A virtio-vsock device for guest CID `guest_cid`, bridged to Unix sockets
/// at `socket` (see [`vsock`]).
pub fn vsock(
    guest_cid: u64,
    socket: &Path,
    mem: GuestMemoryMmap<()>,
    irq: Arc<dyn IrqLine>,
) -> Result<Box<dyn MmioDevice>> {
    transport(
        "virtio-vsock".into(),
        Box::new(vsock::Vsock::new(guest_cid, socket)?),
        mem,
        irq,
    )
}

/// A `--disk FILE[,ro]` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    /// The image file.
    pub path: PathBuf,
    /// `,ro`: the guest cannot write it.
    pub read_only: bool,
}

/// Parses `FILE` or `FILE,ro` (`FILE,rw` is accepted too).
pub fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => return Err(format!("unknown disk option `{opt}` (expected `ro`)")),
        None => (s, false),
    };
    if path.is_empty() {
        return Err("empty file name".into());
    }
    Ok(DiskArg {
        path: PathBuf::from(path),
        read_only,
    })
}

/// The virtio options of `rampart-vmm run` (for a Linux guest).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct VirtioArgs {
    /// A virtio-blk disk backed by FILE (`,ro`: read-only); repeatable, the
    /// guest sees them as /dev/vda, /dev/vdb, ... in this order.
    #[arg(long = "disk", value_name = "FILE[,ro]", value_parser = parse_disk)]
    pub disks: Vec<DiskArg>,
    /// A virtio-vsock device with this guest CID (3 or more).
    #[arg(long, value_name = "CID", value_parser = clap::value_parser!(u64).range(3..=0xffff_fffe))]
    pub vsock: Option<u64>,
    /// The Unix socket vsock is bridged to: host programs connect to PATH
    /// and write `CONNECT <port>\n`; guest connections to port P go to
    /// `PATH_P` (default: `<state dir>/<name>.vsock`).
    #[arg(long, value_name = "PATH", requires = "vsock")]
    pub vsock_socket: Option<PathBuf>,
    /// A virtio-rng device (on by default; `--rng false` to leave it out).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub rng: bool,
    /// A virtio-console (hvc0) whose output goes to stdout.
    #[arg(long)]
    pub virtio_console: bool,
    /// The virtio-console (implied) reads the guest's input from stdin.
    #[arg(long)]
    pub virtio_console_input: bool,
}

impl VirtioArgs {
    /// Whether any option asks for a device beyond the default entropy one.
    pub fn any_device(&self) -> bool {
        !self.disks.is_empty()
            || self.vsock.is_some()
            || self.virtio_console
            || self.virtio_console_input
    }
}

/// The devices `args` asks for, as the Linux guest's run path takes them
/// (`linux::Device`: a start-up description and a constructor called with
/// guest memory and the interrupt line), in window order: disks, entropy,
/// console, vsock. Disk images are opened now, so a bad path fails before
/// anything runs; `state_dir` and `name` make the default vsock socket.
///
/// # Errors
///
/// A disk image that cannot be opened (naming it).
pub fn devices(
    args: &VirtioArgs,
    name: &str,
    state_dir: &Path,
) -> Result<Vec<crate::linux::Device>> {
    let mut out: Vec<crate::linux::Device> = Vec::new();
    for d in &args.disks {
        let size = block::Block::open(&d.path, d.read_only)?.capacity_bytes();
        let (path, ro) = (d.path.clone(), d.read_only);
        out.push(crate::linux::Device {
            describe: format!(
                "virtio-blk: {} ({}, {})",
                path.display(),
                human(size),
                if ro { "read-only" } else { "read-write" }
            ),
            build: Box::new(move |mem, irq| block(&path, ro, mem, irq)),
        });
    }
    if args.rng {
        out.push(crate::linux::Device {
            describe: "virtio-rng: getrandom (/dev/urandom)".into(),
            build: Box::new(rng),
        });
    }
    if args.virtio_console || args.virtio_console_input {
        let name = name.to_string();
        let input = args.virtio_console_input;
        out.push(crate::linux::Device {
            describe: if input {
                "virtio-console: hvc0 to stdout, input from stdin".into()
            } else {
                "virtio-console: hvc0 to stdout".into()
            },
            build: Box::new(move |mem, irq| console(&name, input, mem, irq)),
        });
    }
    if let Some(cid) = args.vsock {
        let socket = args
            .vsock_socket
            .clone()
            .unwrap_or_else(|| state_dir.join(format!("{name}.vsock")));
        out.push(crate::linux::Device {
            describe: format!(
                "virtio-vsock: guest CID {cid}, host socket {} (guest ports P: {}_P)",
                socket.display(),
                socket.display()
            ),
            build: Box::new(move |mem, irq| vsock(cid, &socket, mem, irq)),
        });
    }
    Ok(out)
}

/// `64 MiB`, `1.5 GiB`, `512 bytes`.
fn human(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB && (bytes * 10).is_multiple_of(GIB) {
        format!("{} GiB", fmt_tenths(bytes * 10 / GIB))
    } else if bytes >= MIB {
        format!("{} MiB", fmt_tenths(bytes * 10 / MIB))
    } else {
        format!("{bytes} bytes")
    }
}

fn fmt_tenths(t: u64) -> String {
    if t.is_multiple_of(10) {
        format!("{}", t / 10)
    } else {
        format!("{}.{}", t / 10, t % 10)
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod args_tests {
    use super::*;

    #[test]
    fn disk_arguments() {
        assert_eq!(
            parse_disk("a.img,ro"),
            Ok(DiskArg {
                path: "a.img".into(),
                read_only: true
            })
        );
        assert_eq!(
            parse_disk("dir,x/a.img"),
            Err("unknown disk option `x/a.img` (expected `ro`)".into())
        );
        assert!(!parse_disk("a.img").unwrap().read_only);
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn sizes_read_like_crosvm() {
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(512), "512 bytes");
    }
}
