//! Signed Linux bundles (bundle format version 2, issue 12).
//!
//! - `rampart-vmm pack --kernel IMAGE [--initrd FILE] [--cmdline TEXT]
//!   [--mem SIZE] [--cpus N] [--realm] -o FILE` places the kernel, the
//!   initrd and the device tree exactly as `run --kernel` does, generates
//!   the device tree with this VMM's own generator ([`super::fdt`], no
//!   seeds: a measured device tree is public) and writes an unsigned
//!   version-2 bundle carrying all of them (`rampart sign` signs it).
//! - `rampart-vmm run BUNDLE` with a version-2 bundle: a protected Linux
//!   VM. Guest RAM is *donated* (`VM_DONATE`), not lent: the parts are
//!   copied to their load addresses and every other byte of RAM is zeroed
//!   first, vCPU 0 enters at the kernel with `x0` = the device tree, the
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
/// from offset 0) and zeroes every other byte of the `memory_size` bytes:
/// the pages the hypervisor will measure.
pub fn load(region: &crate::mem::Mapping, l: &LinuxBundle<'_>) {
    let mut placed: Vec<(u64, &[u8])> = l
        .iter()
        .filter(|p| p.kind.placed())
        .map(|p| (p.load - layout::RAM_BASE, p.data))
        .collect();
    placed.sort_by_key(|p| p.0);
    let mut cursor = 0usize;
    let end = usize::try_from(l.memory_size).unwrap_or(usize::MAX);
    for (off, data) in placed {
        let off = usize::try_from(off).unwrap_or(usize::MAX);
        // `zero` and `write_bytes` work in whole words: align the gap.
        let gap_end = off & !7;
        if gap_end > cursor {
            region.zero(cursor, gap_end - cursor);
        }
        if off > gap_end {
            region.write_bytes(gap_end, &vec![0u8; off - gap_end]);
        }
        let mut padded = data.to_vec();
        padded.resize(data.len().next_multiple_of(8), 0);
        region.write_bytes(off, &padded);
        cursor = off + padded.len();
    }
    if end > cursor {
        region.zero(cursor, end - cursor);
    }
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
    let session = Session::open(env, plan.total_pages(), vcpus + 1, None, &name)?;
    let channels = session.channels();
    let main = &channels[0];
    let region = session.map_region()?;
    let place = vm::Placement {
        region_phys: session.region_phys(),
    };
    load(&region, l);
    let handle = vm::create(main, &plan, &place, bundle, &mut |h| session.set_vm(h))
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

        // Load into garbage: what the hypervisor would measure is the
        // bundle's measurement.
        let region = crate::mem::Mapping::anonymous(8 << 20).unwrap();
        region.write_bytes(0, &vec![0xee; 8 << 20]);
        load(&region, &l);
        let mut m = Measurer::new(&b.initial_state());
        for page in 0..p.memory_pages() {
            let bytes = region.read_bytes(usize::try_from(page * 4096).unwrap(), 4096);
            m.page(0x8000_0000 + page * 4096, &bytes.try_into().unwrap())
                .unwrap();
        }
        assert_eq!(m.finish(), b.measurement);

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
