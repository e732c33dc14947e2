//! `rampart-peer run --kernel`: a Linux guest under KVM, kvmtool-style and
//! minimal: the `Image`, initrd and device tree in guest RAM
//! ([`crate::boot`]), KVM's in-kernel GICv3 (`KVM_CREATE_DEVICE`), its
//! arch timer and PSCI 0.2+ (`KVM_ARM_VCPU_PSCI_0_2`), one thread per vCPU,
//! and the PL011 console in user space. The run ends at the guest's PSCI
//! `SYSTEM_OFF` (exit 0) or `SYSTEM_RESET` (exit 3: `panic=-1` reboots).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    kvm_userspace_memory_region, kvm_vcpu_init,
};
use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};

use crate::boot::{self, GICD_BASE, GICR_BASE, Pl011, RAM_BASE, UART_BASE, UART_SIZE};
use crate::report::{self, Console, Counters, LinuxArgs, Outcome};
use crate::vm::{PC, PSTATE, PSTATE_EL1H_DAIF, Ram, X0, core_reg};

/// What the vCPU threads share: the console and the counters.
struct Shared {
    uart: Pl011,
    console: Console,
    c: Counters,
}

/// How a vCPU thread ended the run.
type Ended = Result<&'static str, String>;

fn read(path: &str, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {path}"))
}

/// Sets a `u64` address attribute of the vGIC (`KVM_DEV_ARM_VGIC_GRP_ADDR`).
fn gic_addr(gic: &DeviceFd, which: u32, addr: u64) -> Result<()> {
    let value = addr;
    let attr = kvm_device_attr {
        group: KVM_DEV_ARM_VGIC_GRP_ADDR,
        attr: u64::from(which),
        addr: std::ptr::from_ref(&value) as u64,
        flags: 0,
    };
    gic.set_device_attr(&attr)
        .with_context(|| format!("KVM_SET_DEVICE_ATTR vGIC address {which} = {addr:#x}"))
}

/// KVM's GICv3: distributor and redistributors where the device tree says,
/// initialised once every vCPU exists.
fn create_gic(vm: &VmFd) -> Result<DeviceFd> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm
        .create_device(&mut dev)
        .context("KVM_CREATE_DEVICE GICv3 (does the host have a GICv3?)")?;
    gic_addr(&gic, KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE)?;
    gic_addr(&gic, KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)?;
    gic.set_device_attr(&kvm_device_attr {
        group: KVM_DEV_ARM_VGIC_GRP_CTRL,
        attr: u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        addr: 0,
        flags: 0,
    })
    .context("KVM_DEV_ARM_VGIC_CTRL_INIT")?;
    Ok(gic)
}

/// The value of an MMIO write (little-endian, 1 to 8 bytes), truncated to
/// the UART's 32-bit registers.
fn value_of(data: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    let n = data.len().min(4);
    w[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(w)
}

/// One vCPU's loop: runs it until the guest powers off or something fails.
fn vcpu_loop(mut vcpu: VcpuFd, shared: &Mutex<Shared>, name: &str, started: Instant) -> Ended {
    let uart = UART_BASE..UART_BASE + UART_SIZE;
    loop {
        let exit = vcpu.run();
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        Counters::reached(&mut s.c.first_exit, started);
        match exit {
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                s.c.mmio += 1;
                if uart.contains(&addr) {
                    if let Some(byte) = s.uart.write(addr - UART_BASE, value_of(data)) {
                        Counters::reached(&mut s.c.first_output, started);
                        if let Some(line) = s.console.push(byte) {
                            println!("[{name}] {line}");
                        }
                    }
                } else {
                    s.c.unhandled_mmio += 1;
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                s.c.mmio += 1;
                let v = if uart.contains(&addr) {
                    s.uart.read(addr - UART_BASE)
                } else {
                    s.c.unhandled_mmio += 1;
                    0
                };
                let bytes = u64::from(v).to_le_bytes();
                let n = data.len().min(8);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) if kind == KVM_SYSTEM_EVENT_SHUTDOWN => {
                s.c.other += 1;
                return Ok("SYSTEM_OFF");
            }
            Ok(VcpuExit::SystemEvent(kind, _)) if kind == KVM_SYSTEM_EVENT_RESET => {
                s.c.other += 1;
                return Ok("SYSTEM_RESET");
            }
            Ok(other) => {
                s.c.other += 1;
                return Err(format!("unexpected exit {other:?}"));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => s.c.other += 1,
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}

/// Boots the Linux guest of `a` and runs it until it powers off.
pub fn run(a: &LinuxArgs, started: Instant) -> Result<Outcome> {
    let mut c = Counters {
        vcpus: a.cpus,
        ..Counters::default()
    };
    let kernel = read(&a.kernel, "kernel")?;
    let header = boot::parse_image(&kernel).map_err(|e| anyhow!("{}: {e}", a.kernel))?;
    let initrd = a.initrd.as_deref().map(|p| read(p, "initrd")).transpose()?;
    let mem = a.mem_mib << 20;
    let at = boot::place(mem, &header, initrd.as_ref().map(|i| i.len() as u64))
        .map_err(|e| anyhow!("{}: {e}", a.kernel))?;
    let dtb = boot::device_tree(mem, a.cpus, &a.cmdline, at.initrd).map_err(|e| anyhow!(e))?;
    if dtb.len() as u64 > boot::DTB_SLOT {
        bail!("the device tree is {} bytes, more than 2 MiB", dtb.len());
    }
    c.step("kernel and initrd read", started);
    let off = |ipa: u64| usize::try_from(ipa - RAM_BASE).unwrap_or(usize::MAX);
    let mut ram = Ram::new(usize::try_from(mem)?)?;
    ram.write_at(off(at.kernel), &kernel)?;
    if let (Some(data), Some((start, _))) = (&initrd, at.initrd) {
        ram.write_at(off(start), data)?;
    }
    ram.write_at(off(at.dtb), &dtb)?;
    drop((kernel, initrd));
    // The vCPU threads may still be inside KVM_RUN when the run ends (KVM
    // stops the others at SYSTEM_OFF): guest RAM stays mapped until the
    // process exits.
    let ram: &'static Ram = Box::leak(Box::new(ram));
    c.step("RAM mapped and loaded", started);

    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    c.step("VM created", started);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: RAM_BASE,
        memory_size: mem,
        userspace_addr: ram.addr as u64,
    };
    // SAFETY: the region is `ram`'s whole mapping, which is leaked: it
    // outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    c.step("memory slot set", started);

    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .context("KVM_ARM_PREFERRED_TARGET")?;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    let mut vcpus = Vec::new();
    for i in 0..a.cpus {
        let vcpu = vm
            .create_vcpu(u64::from(i))
            .with_context(|| format!("KVM_CREATE_VCPU {i}"))?;
        let mut mine = init;
        if i > 0 {
            // The others wait for the guest's PSCI CPU_ON.
            mine.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        vcpu.vcpu_init(&mine)
            .with_context(|| format!("KVM_ARM_VCPU_INIT {i}"))?;
        vcpus.push(vcpu);
    }
    c.step("vCPUs initialised", started);
    let gic = create_gic(&vm)?;
    c.step("vGIC created", started);
    let first = vcpus.first().context("no vCPU")?;
    for (reg, value, what) in [
        (PC, at.kernel, "pc"),
        (X0, at.dtb, "x0"),
        (PSTATE, PSTATE_EL1H_DAIF, "pstate"),
    ] {
        first
            .set_one_reg(core_reg(reg), &value.to_le_bytes())
            .with_context(|| format!("KVM_SET_ONE_REG {what}"))?;
    }
    println!(
        "[{}] rampart-peer: KVM VM ({} vCPU{}, {} MiB of RAM), kernel {} at {:#x}, device tree at {:#x}{}, in-kernel GICv3, console pl011 at {UART_BASE:#x}",
        a.name,
        a.cpus,
        if a.cpus == 1 { "" } else { "s" },
        a.mem_mib,
        a.kernel,
        at.kernel,
        at.dtb,
        at.initrd.map_or(String::new(), |(s, e)| format!(
            ", initrd at {s:#x}..{e:#x}"
        ))
    );

    Counters::reached(&mut c.vm_ready, started);
    let shared = Arc::new(Mutex::new(Shared {
        uart: Pl011::default(),
        console: Console::default(),
        c,
    }));
    let (tx, rx) = mpsc::channel::<Ended>();
    let run_start = Instant::now();
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (shared, tx, name) = (shared.clone(), tx.clone(), a.name.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let ended = vcpu_loop(vcpu, &shared, &name, started);
                let _ = tx.send(ended.map_err(|e| format!("vCPU {i}: {e}")));
            })
            .with_context(|| format!("starting vCPU {i}'s thread"))?;
    }
    drop(tx);
    let ended = rx
        .recv()
        .map_err(|_| anyhow!("every vCPU thread ended without a result"))?;
    let wall = run_start.elapsed();
    let s = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let (result, outcome) = match ended {
        Ok(how @ "SYSTEM_OFF") => (format!("guest powered off ({how})"), Outcome::Passed),
        Ok(how) => (
            format!("guest reset ({how}): a panic?"),
            Outcome::GuestFailed,
        ),
        Err(e) => {
            print!("{}", report::stats(&a.name, &s.c, wall, &e));
            bail!("{e}");
        }
    };
    print!("{}", report::stats(&a.name, &s.c, wall, &result));
    // The VM, the vGIC and the vCPU threads end with the process.
    std::mem::forget(gic);
    std::mem::forget(vm);
    Ok(outcome)
}
