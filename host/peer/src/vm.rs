//! The KVM VM: one vCPU, guest RAM at `GUEST_RAM_BASE`, the console.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use kvm_bindings::{
    KVM_ARM_VCPU_PSCI_0_2, KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_SIZE_U64,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_userspace_memory_region, kvm_vcpu_init,
};
use kvm_ioctls::{Kvm, VcpuExit};

use rampart_abi::guest::layout::{GUEST_RAM_BASE, GUEST_UART_BASE, UART_DR};

use crate::report::{self, Args, Console, Counters, Outcome, UART_PAGE};

/// `PSTATE` at entry: EL1h, D, A, I, F masked (what `KVM_ARM_VCPU_INIT`
/// resets to; set explicitly so the entry state does not depend on it).
pub(crate) const PSTATE_EL1H_DAIF: u64 = 0x3c5;

/// The `KVM_{GET,SET}_ONE_REG` id of a 64-bit core register at byte
/// `offset` in `struct kvm_regs` (`Documentation/virt/kvm/api.rst`: the
/// index is the offset in 32-bit words).
pub(crate) fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

/// `regs.regs[0]`, `regs.pc`, `regs.pstate` in `struct kvm_regs`
/// (`user_pt_regs` first: 31 registers, `sp`, `pc`, `pstate`).
pub(crate) const X0: usize = 0;
pub(crate) const PC: usize = 32 * 8;
pub(crate) const PSTATE: usize = 33 * 8;

/// Anonymous memory for guest RAM, unmapped on drop.
pub(crate) struct Ram {
    pub(crate) addr: *mut u8,
    pub(crate) len: usize,
}

impl Ram {
    pub(crate) fn new(len: usize) -> Result<Ram> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched, and the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "mmap of {len} bytes of guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Ram {
            addr: addr.cast(),
            len,
        })
    }

    fn load(&mut self, image: &[u8]) -> Result<()> {
        self.write_at(0, image)
    }

    /// Copies `data` to byte `offset` of guest RAM.
    pub(crate) fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        if offset > self.len || data.len() > self.len - offset {
            bail!(
                "{} bytes at offset {offset:#x} do not fit in {} bytes of guest RAM",
                data.len(),
                self.len
            );
        }
        // SAFETY: `addr..addr + len` is our mapping (readable and
        // writable) and `offset + data.len() <= len` (checked above without
        // overflow); `data` is a separate allocation, so the ranges do not
        // overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(offset), data.len());
        }
        Ok(())
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; the VM (which
        // refers to it) has been dropped before, see `run`.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Runs the guest of `args` to its `SYSTEM_OFF`; prints its lines and the
/// `stats:` lines.
pub fn run(args: &Args, started: Instant) -> Result<Outcome> {
    let mut c = Counters::default();
    let image = std::fs::read(&args.image).with_context(|| format!("reading {}", args.image))?;
    c.step("image read", started);
    let mem = args.mem_mib << 20;
    let mut ram = Ram::new(usize::try_from(mem)?)?;
    ram.load(&image)?;
    c.step("RAM mapped and loaded", started);

    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    c.step("VM created", started);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_RAM_BASE,
        memory_size: mem,
        userspace_addr: ram.addr as u64,
    };
    // SAFETY: the region is `ram`'s whole mapping, which outlives `vm`
    // (declared before it, dropped after it).
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    c.step("memory slot set", started);

    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .context("KVM_ARM_PREFERRED_TARGET")?;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    vcpu.vcpu_init(&init).context("KVM_ARM_VCPU_INIT")?;
    c.step("vCPU initialised", started);
    for (reg, value, what) in [
        (PC, GUEST_RAM_BASE, "pc"),
        (X0, mem, "x0"),
        (PSTATE, PSTATE_EL1H_DAIF, "pstate"),
    ] {
        vcpu.set_one_reg(core_reg(reg), &value.to_le_bytes())
            .with_context(|| format!("KVM_SET_ONE_REG {what}"))?;
    }

    Counters::reached(&mut c.vm_ready, started);
    let mut console = Console::default();
    let run_start = Instant::now();
    let result = loop {
        let exit = vcpu.run();
        Counters::reached(&mut c.first_exit, started);
        match exit {
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                c.mmio += 1;
                if addr == GUEST_UART_BASE + UART_DR {
                    Counters::reached(&mut c.first_output, started);
                    if let Some(line) = data.first().and_then(|b| console.push(*b)) {
                        println!("[{}] {line}", args.name);
                    }
                } else if addr & !(UART_PAGE - 1) != GUEST_UART_BASE {
                    c.unhandled_mmio += 1;
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                c.mmio += 1;
                // UARTFR and the rest of the console page read as 0, and
                // so does anything else (counted).
                data.fill(0);
                if addr & !(UART_PAGE - 1) != GUEST_UART_BASE {
                    c.unhandled_mmio += 1;
                }
            }
            Ok(VcpuExit::SystemEvent(kind, _))
                if kind == KVM_SYSTEM_EVENT_SHUTDOWN || kind == KVM_SYSTEM_EVENT_RESET =>
            {
                c.other += 1;
                break if kind == KVM_SYSTEM_EVENT_SHUTDOWN {
                    "SYSTEM_OFF"
                } else {
                    "SYSTEM_RESET"
                };
            }
            Ok(other) => {
                c.other += 1;
                bail!("unexpected exit {other:?} after {} MMIO exits", c.mmio);
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => c.other += 1,
            Err(e) => bail!("KVM_RUN: {e}"),
        }
    };
    let wall = run_start.elapsed();
    drop(vcpu);
    drop(vm);
    drop(ram);
    let outcome = console.outcome();
    let what = match (outcome, console.done_failed) {
        (Outcome::Passed, _) => format!("guest powered off ({result}), 0 failed"),
        (_, Some(n)) => format!("guest powered off ({result}), {n} failed"),
        (_, None) => format!("guest powered off ({result}) without GUEST-DONE"),
    };
    print!("{}", report::stats(&args.name, &c, wall, &what));
    Ok(outcome)
}
