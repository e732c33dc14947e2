//! Signed Linux bundles (bundle format version 2, issue 12).
//!
//! - `rampart-vmm pack --kernel IMAGE [--initrd FILE] [--cmdline TEXT]
//!   [--mem SIZE] [--cpus N] [--realm] -o FILE` places the kernel, the
//!   initrd and the device tree exactly as `run --kernel` does, generates
//!   the device tree with this VMM's own generator ([`super::fdt`], no
//!   seeds: a measured device tree is public) and writes an unsigned
//!   version-2 bundle carrying all of them (`rampart sign` signs it).
//! - `rampart-vmm run BUNDLE` with a version-2 bundle: a protected Linux
//!   VM. Guest RAM is *donated*, not lent: the parts are copied to their
//!   load addresses (the rest of their pages zeroed) and donated with
//!   `VM_DONATE`; every other page goes with `VM_DONATE_ZEROED`, so the
//!   hypervisor zeroes it (issue 16; a hypervisor without that call gets
//!   the VMM's zeros). vCPU 0 enters at the kernel with `x0` = the device tree, the
//!   bundle's signature is set, and the hypervisor measures all of RAM at
//!   the first `VCPU_RUN` and refuses the VM unless a trusted key signed
//!   that measurement. The console works through PL011 MMIO exits; virtio
//!   needs shared memory, which a protected VM does not give the VMM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use rampart_abi::host::VmConfig;
use rampart_attest::{Bundle, BundleRef, LinuxBundle, PartKind, PartSpec, VmFlags};

use super::{DTB_SLOT, fdt, image, layout, place};
use crate::plan::{Plan, stage2_extra_pages};
use crate::session::{Env, Session};
use crate::{hyp, signals, vm};

/// What `pack` was asked.
pub struct PackArgs {
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
    /// A realm VM (guest ABI RSI; PSCI over SMC).
    pub realm: bool,
    /// virtio-mmio transports in the device tree (a realm's devices).
    pub virtio_devices: u32,
    /// A debug VM.
    pub debug: bool,
    /// The bundle to write.
    pub out: PathBuf,
}

/// The device tree of a measured Linux VM: what `run --kernel` generates,
/// with no seeds (they would be public) and PSCI over SMC for a realm.
///
/// # Errors
///
/// The generator refusing a value (a NUL in the command line).
pub fn measured_dtb(
    memory_size: u64,
    vcpus: u32,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    realm: bool,
    virtio_devices: u32,
) -> Result<Vec<u8>> {
    fdt::build(&fdt::Inputs {
        memory_size,
        vcpus,
        cmdline: cmdline.to_string(),
        initrd,
        conduit: if realm {
            fdt::Conduit::Smc
        } else {
            fdt::Conduit::Hvc
        },
        virtio_devices,
        kaslr_seed: 0,
        rng_seed: [0; 64],
    })
}

/// Builds the unsigned version-2 bundle for `kernel`, `initrd` and the rest
/// of `a`.
///
/// # Errors
///
/// Not an arm64 `Image`, RAM too small, a malformed result.
pub fn pack_bytes(a: &PackArgs, kernel: &[u8], initrd: Option<&[u8]>) -> Result<Vec<u8>> {
    let header = image::parse(kernel).context("the kernel")?;
    if !a.memory_size.is_multiple_of(2 << 20) {
        bail!(
            "--mem {:#x}: a Linux guest's RAM must be a multiple of 2 MiB",
            a.memory_size
        );
    }
    let at = place(a.memory_size, &header, initrd.map(|i| i.len() as u64))?;
    if a.virtio_devices > layout::VIRTIO_MAX || (a.virtio_devices > 0 && !a.realm) {
        bail!(
            "--virtio-devices {}: at most {} and only for a realm (a protected VM that is not one shares no memory with the VMM)",
            a.virtio_devices,
            layout::VIRTIO_MAX
        );
    }
    let dtb = measured_dtb(
        a.memory_size,
        a.vcpus,
        &a.cmdline,
        at.initrd,
        a.realm,
        a.virtio_devices,
    )?;
    if dtb.len() as u64 > DTB_SLOT {
        bail!("the device tree is {} bytes, more than 2 MiB", dtb.len());
    }
    let mut parts = vec![PartSpec {
        kind: PartKind::Kernel,
        load: at.kernel,
        data: kernel,
    }];
    if let (Some(data), Some((start, _))) = (initrd, at.initrd) {
        parts.push(PartSpec {
            kind: PartKind::Initrd,
            load: start,
            data,
        });
    }
    if !a.cmdline.is_empty() {
        parts.push(PartSpec {
            kind: PartKind::Cmdline,
            load: 0,
            data: a.cmdline.as_bytes(),
        });
    }
    parts.push(PartSpec {
        kind: PartKind::DeviceTree,
        load: at.dtb,
        data: &dtb,
    });
    let flags = VmFlags {
        protected: true,
        debug: a.debug,
        realm: a.realm,
    };
    Bundle::build_linux(a.memory_size, a.vcpus, flags, &parts, None)
        .map_err(|e| anyhow!("the packed bundle: {e}"))
}

/// `rampart-vmm pack`.
///
/// # Errors
///
/// Unreadable inputs, as [`pack_bytes`], or writing the bundle.
pub fn cmd_pack(a: &PackArgs) -> Result<()> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    let kernel = read(&a.kernel, "kernel")?;
    let initrd = a.initrd.as_deref().map(|p| read(p, "initrd")).transpose()?;
    let bytes = pack_bytes(a, &kernel, initrd.as_deref())?;
    let b = Bundle::parse(&bytes).map_err(|e| anyhow!("{e}"))?;
    std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{}: version-2 bundle, {} bytes, {} MiB of RAM, {} vCPU(s), flags {:#x}; measurement {} (unsigned: `rampart sign` it)",
        a.out.display(),
        bytes.len(),
        a.memory_size >> 20,
        a.vcpus,
        b.manifest.flags.bits(),
        b.measurement
    );
    Ok(())
}

/// The plan of a version-2 bundle: its configuration (the realm bit is set
/// by [`vm::create`] from the flags), RAM, vCPU 0 at the kernel with `x0`
/// = the device tree.
#[must_use]
pub fn plan(l: &LinuxBundle<'_>) -> Plan {
    let config = VmConfig {
        protected: l.flags.protected,
        debug: l.flags.debug,
        max_vcpus: u64::from(l.vcpus),
    };
    let state = l.initial_state();
    Plan {
        config,
        memory_size: l.memory_size,
        entry_pc: state.entry_pc,
        x0: state.x0,
        metadata_pages: config.min_metadata_pages() + stage2_extra_pages(l.memory_size),
        differs_from_manifest: false,
    }
}

/// Copies the placed parts to their load addresses in `region` (guest RAM
/// from offset 0) and zeroes the rest of every page they touch; returns
/// those pages. Every other page of the `memory_size` bytes is left as it
/// is: [`vm::create_loaded`] has the hypervisor zero it
/// (`VM_DONATE_ZEROED`, issue 16), so the pages the hypervisor measures
/// are the parts and zeros, as before.
pub fn load(region: &crate::mem::Mapping, l: &LinuxBundle<'_>) -> vm::Loaded {
    const PAGE: usize = 4096;
    let mut placed: Vec<(usize, &[u8])> = l
        .iter()
        .filter(|p| p.kind.placed())
        .map(|p| {
            let off = usize::try_from(p.load - layout::RAM_BASE).unwrap_or(usize::MAX);
            (off, p.data)
        })
        .collect();
    placed.sort_by_key(|p| p.0);
    let end = usize::try_from(l.memory_size).unwrap_or(usize::MAX);
    let mut loaded = vm::Loaded::default();
    // `cursor`: the end of what is written (parts and zeros) so far.
    let mut cursor = 0usize;
    for (off, data) in placed {
        if data.is_empty() {
            continue;
        }
        let page_start = off - off % PAGE;
        // Zero the rest of the previous part's last page, unless this part
        // starts in it; then from the start of this part's first page.
        let previous_end = cursor.next_multiple_of(PAGE);
        let from = if page_start >= previous_end {
            region.zero(cursor, previous_end - cursor);
            page_start
        } else {
            cursor
        };
        // `zero` and `write_bytes` work in whole words: align the gap.
        let gap_end = off & !7;
        if gap_end > from {
            region.zero(from, gap_end - from);
        }
        if off > gap_end.max(from) {
            let at = gap_end.max(from);
            region.write_bytes(at, &vec![0u8; off - at]);
        }
        let mut padded = data.to_vec();
        padded.resize(data.len().next_multiple_of(8), 0);
        region.write_bytes(off, &padded);
        cursor = off + padded.len();
        let page_end = cursor.next_multiple_of(PAGE).min(end);
        loaded.push((page_start / PAGE) as u64, ((page_end - page_start) / PAGE) as u64);
    }
    // The rest of the last part's page.
    let page_end = cursor.next_multiple_of(PAGE).min(end);
    if page_end > cursor {
        region.zero(cursor, page_end - cursor);
    }
    loaded
}

/// `rampart-vmm run BUNDLE` for a version-2 bundle.
///
/// # Errors
///
/// `--mem`/`--cpus` differing from the bundle, no room, refused host calls.
#[allow(clippy::too_many_lines, clippy::too_many_arguments, reason = "the run, step by step")]
pub fn cmd_run(
    env: &Env,
    path: &Path,
    bundle: &BundleRef<'_>,
    name: String,
    mem: Option<u64>,
    cpus: Option<u32>,
    trace: bool,
    virtio: &crate::virtio::VirtioArgs,
) -> Result<ExitCode> {
    let shown = path.display().to_string();
    let l = bundle
        .linux
        .as_ref()
        .ok_or_else(|| anyhow!("{shown}: not a version-2 (Linux) bundle"))?;
    if mem.is_some_and(|m| m != l.memory_size) || cpus.is_some_and(|c| c != l.vcpus) {
        bail!(
            "{shown}: --mem/--cpus differ from the bundle's {} MiB and {} vCPU(s): the device tree and the measurement cover them; re-pack instead",
            l.memory_size >> 20,
            l.vcpus
        );
    }
    signals::install();
    let plan = plan(l);
    let vcpus = l.vcpus;
    // One channel per vCPU thread and one for the interrupt injector.
    // The table is written once, with the VM, right after VM_CREATE.
    let session = Session::open_for_vm(env, plan.total_pages(), vcpus + 1, None, &name)?;
    let channels = session.channels();
    let main = &channels[0];
    let region = session.map_region()?;
    let place = vm::Placement {
        region_phys: session.region_phys(),
    };
    let loaded = load(&region, l);
    let handle = vm::create_loaded(main, &region, &plan, &place, bundle, &loaded, &mut |h| {
        session.set_vm(h);
    })
        .with_context(|| format!("setting up the Linux VM for {shown}"))?;
    let part = |k: PartKind| l.part(k).map(|p| (p.load, p.data.len()));
    println!(
        "[{name}] rampart-vmm: VM {handle:#x} ({}{}, {vcpus} vCPU{}, {} MiB of RAM at {:#x} donated), signed bundle {shown}: kernel at {:#x}, device tree at {:#x}{}",
        if l.flags.realm {
            "protected realm"
        } else {
            "protected"
        },
        if l.flags.debug { ", debug" } else { "" },
        if vcpus == 1 { "" } else { "s" },
        l.memory_size >> 20,
        place.ram(&plan),
        plan.entry_pc,
        plan.x0,
        part(PartKind::Initrd).map_or(String::new(), |(s, n)| format!(
            ", initrd at {s:#x}..{:#x}",
            s + n as u64
        ))
    );
    println!("[{name}] rampart-vmm: cmdline: {}", l.cmdline());
    println!(
        "[{name}] rampart-vmm: console: pl011 at {:#x} (ttyAMA0)",
        layout::UART_BASE
    );
    // issue 12: a realm's virtio devices (none for another protected VM).
    let dtb = l.part(PartKind::DeviceTree).map_or(&[][..], |p| p.data);
    let (devices, memory) = match super::realm::bundle_devices(
        env,
        l.flags.realm,
        dtb,
        virtio,
        &name,
        &region,
        l.memory_size,
    ) {
        Ok(d) => d,
        Err(e) => {
            let _ = vm::destroy(main, handle);
            return Err(e);
        }
    };
    let started = std::time::Instant::now();
    let outcome = super::run::run(
        &super::run::Vm {
            name: &name,
            handle,
            vcpus: usize::try_from(vcpus)?,
            channels: &channels,
            trace,
            plan: &plan,
            region_phys: place.region_phys,
            state_dir: &env.state_dir,
            kernel: path,
        },
        devices,
        &memory,
    );
    let destroyed = vm::destroy(main, handle);
    session.finish_teardown(&name, handle, plan.total_pages(), &destroyed);
    println!("[{name}] rampart-vmm: {}", outcome.describe());
    if let crate::run::Outcome::Refused(code) = outcome {
        // The first VCPU_RUN measured all of guest RAM before refusing.
        println!(
            "[{name}] rampart-vmm: refused after {} ms: the first VCPU_RUN, in which the hypervisor measured {} MiB of guest RAM",
            started.elapsed().as_millis(),
            l.memory_size >> 20
        );
        eprintln!(
            "rampart-vmm: the hypervisor refused {shown}: {}: {}",
            hyp::error_name(code),
            hyp::error_meaning(code)
        );
        if code == rampart_abi::Error::BadSignature.code() {
            if bundle.computed_measurement() == bundle.measurement {
                eprintln!(
                    "rampart-vmm:   the bundle is self-consistent, so the signature itself does not verify for its measurement"
                );
            } else {
                eprintln!(
                    "rampart-vmm:   the bundle's parts no longer match its measurement field: it was modified (or re-packed) after signing"
                );
            }
        }
    }
    let status: u8 = match outcome {
        crate::run::Outcome::SystemOff | crate::run::Outcome::SystemReset if destroyed.is_ok() => 0,
        crate::run::Outcome::Refused(_) => 4,
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "signal numbers"
        )]
        crate::run::Outcome::Interrupted(sig) if destroyed.is_ok() => 128 + sig as u8,
        _ => 1,
    };
    println!("[{name}] rampart-vmm: exit status {status}");
    Ok(ExitCode::from(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_attest::{Measurer, SigningKey};

    fn args(realm: bool) -> PackArgs {
        PackArgs {
            kernel: "Image".into(),
            initrd: None,
            cmdline: "console=ttyAMA0 quiet".into(),
            memory_size: 8 << 20,
            vcpus: 2,
            realm,
            virtio_devices: 0,
            debug: false,
            out: "x".into(),
        }
    }

    fn kernel() -> Vec<u8> {
        let mut k = image::tests::image(0, 0x2_0000, 0xa, 0x9000);
        for (i, b) in k.iter_mut().enumerate().skip(64) {
            *b = u8::try_from(i % 253).unwrap();
        }
        k
    }

    #[test]
    fn packs_what_run_loads_and_the_hypervisor_measures() {
        let k = kernel();
        let initrd: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8 + 1).collect();
        let bytes = pack_bytes(&args(false), &k, Some(&initrd)).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        let l = b.linux.unwrap();
        assert_eq!(b.version, 2);
        assert_eq!(l.cmdline(), "console=ttyAMA0 quiet");
        let p = plan(&l);
        assert_eq!(p.entry_pc, 0x8000_0000);
        assert_eq!(p.x0, 0x8000_0000 + (6 << 20));
        assert_eq!(p.config.encode(), 0x201);
        assert_eq!(b.computed_measurement(), b.measurement);

        // Load into garbage: the VMM writes only the parts' pages; what
        // the hypervisor would measure once it has zeroed the others
        // (`VM_DONATE_ZEROED`) is the bundle's measurement.
        let region = crate::mem::Mapping::anonymous(
            usize::try_from(p.total_pages() * 4096).unwrap(),
        )
        .unwrap();
        region.write_bytes(0, &vec![0xee; 8 << 20]);
        let loaded = load(&region, &l);
        let written = |page: u64| {
            loaded
                .written
                .iter()
                .any(|&(first, n)| (first..first + n).contains(&page))
        };
        // The kernel (0x9000 bytes at 0), the initrd and the device tree:
        // a few pages, each part's last one zero-padded.
        let pages_written: u64 = loaded.written.iter().map(|r| r.1).sum();
        assert!(loaded.written.len() >= 2 && pages_written < 16, "{loaded:?}");
        assert!(written(0) && written(8) && !written(9), "{loaded:?}");
        let mut m = Measurer::new(&b.initial_state());
        for page in 0..p.memory_pages() {
            let at = usize::try_from(page * 4096).unwrap();
            let bytes = if written(page) {
                region.read_bytes(at, 4096)
            } else {
                assert_eq!(region.read_u64(at + 4088), 0xeeee_eeee_eeee_eeee, "page {page}: untouched");
                vec![0; 4096]
            };
            m.page(0x8000_0000 + page * 4096, &bytes.try_into().unwrap())
                .unwrap();
        }
        assert_eq!(m.finish(), b.measurement);

        // Created from those pages: the written ranges with VM_DONATE,
        // every other page with VM_DONATE_ZEROED, each page once, in
        // guest-address order.
        let fake = crate::hyp::fake::Fake::with_scripts(vec![]);
        let place = vm::Placement { region_phys: 0x4000_0000 };
        vm::create_loaded(&fake, &region, &p, &place, &b, &loaded, &mut |_| {}).unwrap();
        let calls = fake.state.lock().unwrap().calls.clone();
        let (donate, zeroed) = (
            u64::from(rampart_abi::host::HostCall::VmDonate.id()),
            u64::from(rampart_abi::host::HostCall::VmDonateZeroed.id()),
        );
        let mut next = 0;
        for c in calls.iter().filter(|c| c[0] == donate || c[0] == zeroed) {
            let first = (c[2] - place.ram(&p)) / 4096;
            assert_eq!((first, c[4]), (next, 0x8000_0000 + next * 4096), "{c:x?}");
            for page in first..first + c[3] {
                assert_eq!(written(page), c[0] == donate, "page {page}: {c:x?}");
            }
            if c[0] == zeroed {
                assert!(c[3] <= rampart_abi::host::DONATE_ZEROED_MAX_PAGES && c[5] == 0);
            }
            next += c[3];
        }
        assert_eq!(next, p.memory_pages());
        assert_eq!(region.read_u64(9 * 4096), 0xeeee_eeee_eeee_eeee, "the VMM wrote no zeros");

        // The generated device tree is in the bundle and has no seeds.
        let dtb = l.part(PartKind::DeviceTree).unwrap().data;
        assert!(fdt::tests::prop(dtb, "/chosen", "kaslr-seed").is_none());
        assert!(fdt::tests::prop(dtb, "/chosen", "rng-seed").is_none());
        assert_eq!(
            fdt::tests::prop(dtb, "/chosen", "bootargs").unwrap(),
            b"console=ttyAMA0 quiet\0"
        );
        // Deterministic: packing twice gives the same bytes.
        assert_eq!(bytes, pack_bytes(&args(false), &k, Some(&initrd)).unwrap());
    }

    #[test]
    fn every_input_changes_the_measurement() {
        let k = kernel();
        let base = Bundle::parse(&pack_bytes(&args(false), &k, Some(&[1; 100])).unwrap())
            .unwrap()
            .measurement;
        let mut k2 = k.clone();
        k2[0x5000] ^= 1;
        let mut a = args(false);
        a.cmdline.push('x');
        let others = [
            pack_bytes(&args(false), &k2, Some(&[1; 100])).unwrap(),
            pack_bytes(&args(false), &k, Some(&[2; 100])).unwrap(),
            pack_bytes(&a, &k, Some(&[1; 100])).unwrap(),
            pack_bytes(&args(true), &k, Some(&[1; 100])).unwrap(),
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(Bundle::parse(o).unwrap().measurement, base, "variant {i}");
        }
        // A realm bundle: PSCI over SMC, the realm flag.
        let realm = Bundle::parse(&others[3]).unwrap();
        assert!(realm.manifest.flags.realm);
        let dtb = realm
            .linux
            .unwrap()
            .part(PartKind::DeviceTree)
            .unwrap()
            .data;
        assert_eq!(fdt::tests::prop(dtb, "/psci", "method").unwrap(), b"smc\0");
        // Signing keeps the measurement and verifies.
        let key = SigningKey::from_bytes(&[9; 32]);
        let signed = Bundle::sign(&others[0], &key).unwrap();
        let s = Bundle::parse(&signed).unwrap();
        assert_eq!(s.verify(&[key.verifying_key()]), Ok(key.verifying_key()));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let k = kernel();
        let mut a = args(false);
        a.memory_size = 3 << 20;
        assert!(pack_bytes(&a, &k, None).is_err());
        a.memory_size = 9 << 20;
        assert!(
            format!("{:#}", pack_bytes(&a, &k, None).unwrap_err()).contains("multiple of 2 MiB")
        );
        assert!(pack_bytes(&args(false), &[0; 100], None).is_err());
    }
}
