//! `rampart-vmm run --kernel IMAGE`: a stock arm64 Linux kernel as a
//! non-protected Rampart guest on a small virtual platform.
//!
//! | what | guest-physical | interrupt |
//! |---|---|---|
//! | GICv3 distributor | `0x0800_0000` (64 KiB) | |
//! | GICv3 redistributors | `0x080A_0000`, 128 KiB per vCPU | |
//! | PL011 UART (`ttyAMA0`) | `0x0900_0000` (4 KiB) | SPI 1 (INTID 33), level |
//! | virtio-mmio transport *i* | `0x0A00_0000 + 0x200 * i` | SPI 16 + *i*, edge |
//! | RAM | `0x8000_0000` | |
//! | virtual timer | | PPI 11 (INTID 27), level |
//!
//! Boot (`Documentation/arch/arm64/booting.rst`): the `Image` at RAM +
//! `text_offset` (RAM is 2 MiB-aligned), the device tree in the last 2 MiB
//! of RAM, the initrd just below it (page-aligned), vCPU 0 at the kernel's
//! first instruction with `x0` = the device tree, MMU off; the other vCPUs
//! start through PSCI `CPU_ON` (handled at EL2). Guest RAM is *shared*
//! with the VM (`VM_SHARE`), not donated: a non-protected guest's memory
//! stays readable and writable by the VMM, which its virtio devices need.

pub mod bundle;
pub mod fdt;
pub mod gic;
pub mod image;
pub mod pl011;
pub mod realm;
pub mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use rampart_abi::host::{HostCall, PAGE_SIZE, VmConfig};

use crate::hyp::checked;
use crate::plan::{Plan, stage2_extra_pages};
use crate::session::{Env, Session};
use crate::{signals, vm};

/// The virtual platform's addresses and interrupts.
pub mod layout {
    /// Guest RAM.
    pub const RAM_BASE: u64 = rampart_abi::guest::GUEST_RAM_BASE;
    /// GICv3 distributor.
    pub const GICD_BASE: u64 = 0x0800_0000;
    /// Its size.
    pub const GICD_SIZE: u64 = 0x1_0000;
    /// The first redistributor (RD_base + SGI_base).
    pub const GICR_BASE: u64 = 0x080a_0000;
    /// Per vCPU.
    pub const GICR_STRIDE: u64 = 0x2_0000;
    /// The PL011.
    pub const UART_BASE: u64 = rampart_abi::guest::GUEST_UART_BASE;
    /// Its window.
    pub const UART_SIZE: u64 = 0x1000;
    /// Its SPI (INTID 33).
    pub const UART_SPI: u32 = 1;
    /// The first virtio-mmio transport.
    pub const VIRTIO_BASE: u64 = 0x0a00_0000;
    /// Each transport's window.
    pub const VIRTIO_SIZE: u64 = 0x200;
    /// At most this many transports.
    pub const VIRTIO_MAX: u32 = 32;

    /// Transport `n`'s window.
    #[must_use]
    pub const fn virtio_base(n: u32) -> u64 {
        VIRTIO_BASE + VIRTIO_SIZE * n as u64
    }

    /// Transport `n`'s SPI (INTID 48 + n).
    #[must_use]
    pub const fn virtio_spi(n: u32) -> u32 {
        16 + n
    }
}

/// Guest memory for the VMM's devices: guest RAM as the guest sees it
/// (guest-physical addresses from [`layout::RAM_BASE`]), over the VMM's
/// `/dev/mem` mapping of the pool.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Builds one virtio-mmio transport once guest memory and its interrupt
/// line exist (the `virtio` module's constructors fit: `virtio::block(path,
/// ro, mem, irq)` etc.). Transport *i* (in `Config::devices` order) sits at
/// `layout::virtio_base(i)` with SPI `layout::virtio_spi(i)`.
pub type DeviceFactory = Box<
    dyn FnOnce(
            GuestMemory,
            std::sync::Arc<dyn crate::bus::IrqLine>,
        ) -> Result<Box<dyn crate::bus::MmioDevice>>
        + Send,
>;

/// A virtio device to attach: its start-up description and constructor.
pub struct Device {
    /// One line for the start-up output (`block /disk.img (read-only)`).
    pub describe: String,
    /// The constructor.
    pub build: DeviceFactory,
}

/// What `run --kernel` was asked.
pub struct Config {
    /// The `Image`.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: Option<PathBuf>,
    /// The command line.
    pub cmdline: String,
    /// Guest RAM, bytes.
    pub memory_size: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Console prefix.
    pub name: String,
    /// Print every exit.
    pub trace: bool,
    /// virtio-mmio devices, in transport order.
    pub devices: Vec<Device>,
}

/// The default command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0 earlycon panic=-1";
/// The default guest RAM.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// Where the boot inputs go in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The kernel's load address and first instruction.
    pub kernel: u64,
    /// The device tree.
    pub dtb: u64,
    /// The initrd's `[start, end)`.
    pub initrd: Option<(u64, u64)>,
}

/// The device tree's slot: the last 2 MiB of RAM (`booting.rst`: at most
/// 2 MiB, 8-byte aligned).
pub const DTB_SLOT: u64 = 2 << 20;

/// Places the kernel (`header`), an initrd of `initrd_len` bytes and the
/// device tree in `memory_size` bytes of RAM.
///
/// # Errors
///
/// If they do not fit, saying how much RAM they need.
pub fn place(
    memory_size: u64,
    header: &image::Header,
    initrd_len: Option<u64>,
) -> Result<Placement> {
    let kernel = layout::RAM_BASE + header.text_offset;
    let kernel_end = (header.text_offset + header.image_size).next_multiple_of(2 << 20);
    let need = |extra: u64| (kernel_end + extra + DTB_SLOT).div_ceil(1 << 20);
    if memory_size < kernel_end + DTB_SLOT {
        bail!(
            "the kernel needs {:#x} bytes (image_size) from RAM + {:#x}: --mem must be at least {} MiB",
            header.image_size,
            header.text_offset,
            need(0)
        );
    }
    let dtb = layout::RAM_BASE + memory_size - DTB_SLOT;
    let initrd = match initrd_len {
        None => None,
        Some(len) => {
            let start = (dtb - len) & !(PAGE_SIZE - 1);
            if len > memory_size || start < layout::RAM_BASE + kernel_end {
                bail!(
                    "the kernel and the initrd ({len} bytes) do not fit: --mem must be at least {} MiB",
                    need(len.next_multiple_of(PAGE_SIZE))
                );
            }
            Some((start, start + len))
        }
    };
    Ok(Placement {
        kernel,
        dtb,
        initrd,
    })
}

/// 64 random bytes from the host's `getrandom`.
fn random_seed() -> Result<[u8; 64]> {
    let mut seed = [0u8; 64];
    let mut got = 0;
    while got < seed.len() {
        // SAFETY: writes at most the buffer's remaining length into it.
        let n = unsafe { libc::getrandom(seed[got..].as_mut_ptr().cast(), seed.len() - got, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("getrandom");
        }
        got += usize::try_from(n).unwrap_or(0);
    }
    Ok(seed)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// [`GuestMemory`] over `region`'s first `size` bytes, at guest-physical
/// [`layout::RAM_BASE`].
///
/// # Errors
///
/// `vm-memory` refusing the region.
fn guest_memory(region: &crate::mem::Mapping, size: u64) -> Result<GuestMemory> {
    use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};
    let (start, len) = region.span();
    let size = usize::try_from(size)?;
    if size > len {
        bail!("guest RAM ({size} bytes) is larger than its mapping ({len} bytes)");
    }
    // SAFETY: `start..start + size` lies inside the live shared mapping
    // `region`, which `cmd_run` keeps mapped until after every device (and
    // so every clone of this memory) is dropped at the end of the run.
    let raw = unsafe {
        MmapRegion::<()>::build_raw(
            start as *mut u8,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
    }
    .map_err(|e| anyhow!("guest memory for the devices: {e}"))?;
    let r = GuestRegionMmap::new(raw, GuestAddress(layout::RAM_BASE))
        .ok_or_else(|| anyhow!("guest memory for the devices: the region wraps"))?;
    GuestMemory::from_regions(vec![r]).map_err(|e| anyhow!("guest memory for the devices: {e}"))
}

/// `rampart-vmm run --kernel`: builds the VM, runs it until it powers off
/// or a signal, tears it down.
///
/// # Errors
///
/// Unreadable or malformed inputs (naming the file), no room, refused host
/// calls.
pub fn cmd_run(env: &Env, mut c: Config) -> Result<ExitCode> {
    let devices = std::mem::take(&mut c.devices);
    let c = &c;
    if devices.len() > layout::VIRTIO_MAX as usize {
        bail!("at most {} virtio devices", layout::VIRTIO_MAX);
    }
    signals::install();
    let kernel = read(&c.kernel, "kernel")?;
    let header = image::parse(&kernel).with_context(|| c.kernel.display().to_string())?;
    let initrd = c.initrd.as_deref().map(|p| read(p, "initrd")).transpose()?;
    if !c.memory_size.is_multiple_of(2 << 20) {
        bail!(
            "--mem {:#x}: a Linux guest's RAM must be a multiple of 2 MiB",
            c.memory_size
        );
    }
    let at = place(
        c.memory_size,
        &header,
        initrd.as_ref().map(|i| i.len() as u64),
    )
    .with_context(|| c.kernel.display().to_string())?;
    let seed = random_seed()?;
    let mut kaslr = [0u8; 8];
    kaslr.copy_from_slice(&seed[..8]);
    let dtb = fdt::build(&fdt::Inputs {
        memory_size: c.memory_size,
        vcpus: c.vcpus,
        cmdline: c.cmdline.clone(),
        initrd: at.initrd,
        conduit: fdt::Conduit::Hvc,
        virtio_devices: u32::try_from(devices.len())?,
        kaslr_seed: u64::from_le_bytes(kaslr),
        rng_seed: seed,
    })?;
    if dtb.len() as u64 > DTB_SLOT {
        bail!("the device tree is {} bytes, more than 2 MiB", dtb.len());
    }

    let config = VmConfig {
        protected: false,
        debug: false,
        max_vcpus: u64::from(c.vcpus),
    };
    let plan = Plan {
        config,
        memory_size: c.memory_size,
        entry_pc: at.kernel,
        x0: at.dtb,
        metadata_pages: config.min_metadata_pages() + stage2_extra_pages(c.memory_size),
        differs_from_manifest: false,
    };
    // One channel per vCPU thread and one for the interrupt injector.
    let session = Session::open(env, plan.total_pages(), c.vcpus + 1, None, &c.name)?;
    let channels = session.channels();
    let main = &channels[0];
    let region = session.map_region()?;
    let region_phys = session.region_phys();
    let off = |ipa: u64| usize::try_from(ipa - layout::RAM_BASE).unwrap_or(usize::MAX);
    region.write_bytes(off(at.kernel), &kernel);
    if let (Some(data), Some((start, _))) = (&initrd, at.initrd) {
        region.write_bytes(off(start), data);
    }
    region.write_bytes(off(at.dtb), &dtb);

    let r = checked(
        main,
        HostCall::VmCreate.id(),
        &[
            region_phys + plan.metadata_offset(),
            plan.metadata_pages,
            config.encode(),
        ],
    )
    .map_err(|e| anyhow!("{e}"))?;
    let handle = r[1];
    session.set_vm(handle);
    let setup = || -> Result<()> {
        for i in 0..u64::from(c.vcpus) {
            checked(main, HostCall::VcpuCreate.id(), &[handle, i])
                .map_err(|e| anyhow!("vCPU {i}: {e}"))?;
        }
        checked(
            main,
            HostCall::VmShare.id(),
            &[handle, region_phys, plan.memory_pages(), layout::RAM_BASE],
        )
        .map_err(|e| anyhow!("{e}"))?;
        checked(
            main,
            HostCall::VcpuSetRegs.id(),
            &[handle, 0, at.kernel, at.dtb],
        )
        .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = vm::destroy(main, handle);
        return Err(e.context("setting up the Linux VM"));
    }
    println!(
        "[{}] rampart-vmm: VM {handle:#x} (not protected, {} vCPU{}, {} MiB of RAM at {region_phys:#x} shared), kernel {} ({} bytes, image_size {:#x}) at {:#x}, device tree at {:#x}{}",
        c.name,
        c.vcpus,
        if c.vcpus == 1 { "" } else { "s" },
        c.memory_size >> 20,
        c.kernel.display(),
        kernel.len(),
        header.image_size,
        at.kernel,
        at.dtb,
        at.initrd.map_or(String::new(), |(s, e)| format!(
            ", initrd at {s:#x}..{e:#x}"
        ))
    );
    println!(
        "[{}] rampart-vmm: console: pl011 at {:#x} (ttyAMA0)",
        c.name,
        layout::UART_BASE
    );
    for (i, d) in devices.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation, reason = "at most VIRTIO_MAX")]
        let n = i as u32;
        // crosvm's style: `virtio-blk at 0x0a000000 irq 48: disk.img (...)`.
        let (kind, what) = d.describe.split_once(": ").unwrap_or((d.describe.as_str(), ""));
        println!(
            "[{}] rampart-vmm: {kind} at {:#010x} irq {}: {what}",
            c.name,
            layout::virtio_base(n),
            32 + layout::virtio_spi(n)
        );
    }
    let memory = guest_memory(&region, c.memory_size)?;

    let outcome = run::run(
        &run::Vm {
            name: &c.name,
            handle,
            vcpus: usize::try_from(c.vcpus)?,
            channels: &channels,
            trace: c.trace,
            plan: &plan,
            region_phys,
            state_dir: &env.state_dir,
            kernel: &c.kernel,
        },
        devices,
        &memory,
    );

    let destroyed = vm::destroy(main, handle);
    match &destroyed {
        Ok(()) => println!(
            "[{}] rampart-vmm: VM {handle:#x} destroyed; {} pages ({} KiB) reclaimed, zeroed by the hypervisor",
            c.name,
            plan.total_pages(),
            plan.total_pages() * PAGE_SIZE / 1024
        ),
        Err(e) => eprintln!(
            "rampart-vmm: destroying VM {handle:#x}: {e}; its pool pages stay reserved (run `rampart-vmm reclaim`)"
        ),
    }
    if destroyed.is_ok() {
        // The RAM was lent (VM_SHARE), so VM_DESTROY hands it back as it
        // is: the VMM clears what the guest left before the pool range is
        // anyone else's.
        region.zero(0, usize::try_from(c.memory_size)?);
        println!(
            "[{}] rampart-vmm: guest RAM {region_phys:#x}..{:#x} zeroed by the VMM",
            c.name,
            region_phys + c.memory_size
        );
        session.close();
    } else {
        std::mem::forget(session);
    }
    println!("[{}] rampart-vmm: {}", c.name, outcome.describe());
    let status = match outcome {
        crate::run::Outcome::SystemOff | crate::run::Outcome::SystemReset if destroyed.is_ok() => 0,
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "signal numbers"
        )]
        crate::run::Outcome::Interrupted(sig) if destroyed.is_ok() => 128 + sig as u8,
        _ => 1,
    };
    println!("[{}] rampart-vmm: exit status {status}", c.name);
    Ok(ExitCode::from(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_kernel_initrd_and_device_tree() {
        let h = image::Header {
            text_offset: 0,
            image_size: 0x25c_0000,
            flags: 0xa,
        };
        let p = place(192 << 20, &h, Some(0x100_0001)).unwrap();
        assert_eq!(p.kernel, 0x8000_0000);
        assert_eq!(p.dtb, 0x8000_0000 + (190 << 20));
        let (s, e) = p.initrd.unwrap();
        assert_eq!(e - s, 0x100_0001);
        assert_eq!(s % 4096, 0);
        assert!(e <= p.dtb && s >= 0x8000_0000 + 0x25c_0000);
        assert_eq!(place(192 << 20, &h, None).unwrap().initrd, None);
        let e = format!("{:#}", place(32 << 20, &h, None).unwrap_err());
        assert!(e.contains("at least 40 MiB"), "{e}");
        let e = format!("{:#}", place(64 << 20, &h, Some(60 << 20)).unwrap_err());
        assert!(
            e.contains("do not fit") && e.contains("at least 100 MiB"),
            "{e}"
        );
    }
}
