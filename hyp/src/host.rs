//! Handling the host's traps: hypercalls, SMCs and stage-2 faults.

use rampart_abi::host::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR, HostCall, HostRequest};
use rampart_abi::{Error, error::SUCCESS};
use rampart_platform::inject::{self, Interrupted, Kind};
use rampart_platform::smc::{self, SmcAction, psci};

use crate::arch::{self, Frame};
use crate::cpu::{self, CPUS, Power};
use crate::println;

const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_IABT_LOWER: u64 = 0x20;
const EC_DABT_LOWER: u64 = 0x24;
const ESR_WNR: u64 = 1 << 6;
const ESR_FNV: u64 = 1 << 10;

/// Handles a synchronous exception from the host.
pub fn handle_sync(frame: &mut Frame) {
    let esr = arch::esr_el2();
    match (esr >> 26) & 0x3f {
        EC_HVC64 => hypercall(frame, esr & 0xffff),
        EC_SMC64 => {
            // A trapped SMC returns to the SMC itself; step over it.
            // SAFETY: the host resumes at the next instruction, as it would
            // after an SMC that firmware handled.
            unsafe { arch::set_elr_el2(arch::elr_el2().wrapping_add(4)) };
            host_smc(frame);
        }
        EC_DABT_LOWER => {
            let ipa = ((arch::hpfar_el2() >> 4) & 0xff_ffff_ffff) << 12 | (arch::far_el2() & 0xfff);
            if crate::control::handle(ipa, esr, frame) {
                return;
            }
            if !retry_after_race() {
                inject_into_host(Kind::DataAbort { write: esr & ESR_WNR != 0, far_not_valid: esr & ESR_FNV != 0 });
            }
        }
        EC_IABT_LOWER => {
            if !retry_after_race() {
                inject_into_host(Kind::InstructionAbort { far_not_valid: esr & ESR_FNV != 0 });
            }
        }
        // Nothing else is trapped on purpose; whatever it was, the host
        // sees an undefined instruction.
        _ => inject_into_host(Kind::Undefined),
    }
}

/// The low 32 bits of a register: SMCCC function IDs are passed in `w0`
/// (and PSCI_FEATURES / ARCH_FEATURES take one in `w1`); the upper half is
/// ignored by definition.
#[allow(clippy::cast_possible_truncation, reason = "SMCCC reads w registers")]
fn lower32(x: u64) -> u32 {
    x as u32
}

/// A stage-2 fault on a page the host may reach happens only while the
/// hypervisor rewrites that mapping on another CPU; the page is mapped
/// again and the access retried. Returns whether that was the case.
fn retry_after_race() -> bool {
    // HPFAR_EL2.FIPA holds IPA[51:12] in bits [43:4].
    let ipa = ((arch::hpfar_el2() >> 4) & 0xff_ffff_ffff) << 12;
    crate::memory::handle_host_fault(ipa)
}

/// Sets the SMCCC result registers.
fn ret(regs: &mut [u64], values: [u64; 4]) {
    regs[..4].copy_from_slice(&values);
}

fn ret_code(regs: &mut [u64], code: i64) {
    regs[0] = code as u64;
}

/// Host hypercalls (`HVC #0`, SMCCC fast calls).
fn hypercall(frame: &mut Frame, immediate: u64) {
    if immediate != 0 {
        frame.x[0] = Error::NotSupported.code() as u64;
        return;
    }
    if let Some(regs) = frame.x.first_chunk_mut::<18>() {
        dispatch(regs);
    }
}

/// Runs one host call on its registers (`x0`..`x17`), from `HVC #0` or a
/// control-page doorbell alike; the results replace them.
pub fn dispatch(regs: &mut [u64; 18]) {
    let result = match HostRequest::decode(regs) {
        Ok(HostRequest::Version) => {
            return ret(regs, [SUCCESS as u64, ABI_VERSION_MAJOR, ABI_VERSION_MINOR, 0]);
        }
        Ok(HostRequest::Features(function)) => HostCall::try_from(function).map(|_| ()),
        Ok(
            memory_request @ (HostRequest::ShareHyp(_)
            | HostRequest::UnshareHyp(_)
            | HostRequest::DonateHyp(_)
            | HostRequest::ReclaimHyp(_)),
        ) => crate::memory::host_call(memory_request),
        Ok(HostRequest::VmCreate { metadata, config }) => match crate::vm::create(metadata, config) {
            Ok(handle) => return ret(regs, [SUCCESS as u64, handle.0, 0, 0]),
            Err(e) => Err(e),
        },
        Ok(HostRequest::VmDestroy(handle)) => crate::vm::destroy(handle),
        Ok(HostRequest::VcpuCreate(vcpu)) => crate::vm::create_vcpu(vcpu),
        Ok(HostRequest::VmDonate { vm, pages, guest_address }) => crate::vm::give_memory(vm, pages, guest_address, false),
        Ok(HostRequest::VmShare { vm, pages, guest_address }) => crate::vm::give_memory(vm, pages, guest_address, true),
        Ok(HostRequest::VcpuSetRegs { vcpu, pc, x0 }) => crate::vcpu::set_regs(vcpu, pc, x0),
        Ok(HostRequest::VcpuRun { vcpu, mmio_read_value }) => match crate::vcpu::run(vcpu, mmio_read_value) {
            Ok(record) => {
                regs[0] = SUCCESS as u64;
                regs[1..5].copy_from_slice(&record);
                return;
            }
            Err(e) => Err(e),
        },
        Ok(HostRequest::VcpuInject { vcpu, intid }) => crate::vcpu::inject_irq(vcpu, intid),
        Ok(HostRequest::VmSetSignature { vm, signer, signature }) => crate::vm::set_signature(vm, signer, signature),
        Ok(HostRequest::VmList(after)) => return ret(regs, [SUCCESS as u64, crate::vm::list_after(after), 0, 0]),
        Ok(HostRequest::AttestationKey) => match crate::security::attestation_public_key() {
            Ok(key) => {
                let words: [u64; 4] = rampart_abi::host::bytes_to_words(&key);
                regs[0] = SUCCESS as u64;
                regs[1..5].copy_from_slice(&words);
                return;
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    ret_code(regs, result.map_or_else(Error::code, |()| SUCCESS));
}

fn forward(function: u32, frame: &Frame) -> [u64; 4] {
    let mut args = [0u64; 17];
    args.copy_from_slice(&frame.x[1..18]);
    arch::smc(function, &args)
}

/// Host SMCs: PSCI relay, the firmware allow-list, and refusal.
fn host_smc(frame: &mut Frame) {
    let function = lower32(frame.x[0]);
    let firmware = *crate::FIRMWARE.get().unwrap_or(&smc::Firmware::default());
    let is_32 = function & (1 << 30) == 0;
    let arg = |i: usize| if is_32 { frame.x[i] & 0xffff_ffff } else { frame.x[i] };
    match smc::classify(function, firmware) {
        SmcAction::Answer(code) => ret_code(&mut frame.x, code),
        SmcAction::Forward => {
            let r = forward(function, frame);
            ret(&mut frame.x, r);
        }
        SmcAction::PsciFeatures => match smc::psci_features(lower32(frame.x[1]), firmware) {
            Some(code) => ret_code(&mut frame.x, code),
            None => {
                let r = forward(function, frame);
                ret(&mut frame.x, r);
            }
        },
        SmcAction::ArchFeatures => match smc::arch_features(lower32(frame.x[1]), firmware) {
            Some(code) => ret_code(&mut frame.x, code),
            None => {
                let r = forward(function, frame);
                ret(&mut frame.x, r);
            }
        },
        SmcAction::CpuOn => {
            let code = cpu_on(arg(1), arg(2), arg(3));
            ret_code(&mut frame.x, code);
        }
        SmcAction::CpuOff => {
            let code = cpu_off();
            ret_code(&mut frame.x, code);
        }
        SmcAction::CpuSuspend => {
            let code = cpu_suspend(function, arg(1), arg(2), arg(3));
            ret_code(&mut frame.x, code);
        }
    }
}

/// MPIDR bits that name a CPU (Aff3, Aff2, Aff1, Aff0).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// CPU_ON from the host: start the target at Rampart's entry, which sets
/// up EL2 there and then enters the host's `entry` with `context`.
fn cpu_on(target: u64, entry: u64, context: u64) -> i64 {
    let Some(boot) = crate::BOOT.get() else { return psci::INTERNAL_FAILURE };
    let Some(index) = (0..boot.cpu_count).find(|&i| CPUS[i].mpidr.load(core::sync::atomic::Ordering::Relaxed) == target & MPIDR_AFFINITY) else {
        return psci::INVALID_PARAMETERS;
    };
    if target & !MPIDR_AFFINITY & !(1 << 31) != 0 {
        return psci::INVALID_PARAMETERS;
    }
    if !boot.host_ram.iter().any(|r| r.contains(entry)) || !entry.is_multiple_of(4) {
        return PSCI_INVALID_ADDRESS;
    }
    let cpu = &CPUS[index];
    match cpu.transition(Power::Off, Power::Pending) {
        Ok(()) => {}
        Err(Power::Pending) => return psci::ON_PENDING,
        Err(_) => return psci::ALREADY_ON,
    }
    cpu.host_entry.store(entry, core::sync::atomic::Ordering::Relaxed);
    cpu.host_context.store(context, core::sync::atomic::Ordering::Release);
    let mut args = [0u64; 17];
    args[0] = target;
    args[1] = arch::secondary_entry_address();
    args[2] = index as u64;
    let code = arch::smc(psci::CPU_ON_64, &args)[0] as i64;
    if code != psci::SUCCESS {
        cpu.set_power(Power::Off);
    }
    code
}

const PSCI_INVALID_ADDRESS: i64 = psci::INVALID_ADDRESS;

/// CPU_OFF from the host. Returns only if firmware refuses.
fn cpu_off() -> i64 {
    let me = cpu::this();
    me.set_power(Power::Off);
    let code = arch::smc(psci::CPU_OFF, &[0; 17])[0] as i64;
    me.set_power(Power::On);
    code
}

/// CPU_SUSPEND from the host. A power-down state resumes at Rampart's
/// entry, which re-initialises EL2 and enters the host's `entry`.
fn cpu_suspend(function: u32, power_state: u64, entry: u64, context: u64) -> i64 {
    let Some(boot) = crate::BOOT.get() else { return psci::INTERNAL_FAILURE };
    let powerdown = power_state & psci::POWER_STATE_TYPE_POWERDOWN != 0;
    if powerdown && (!boot.host_ram.iter().any(|r| r.contains(entry)) || !entry.is_multiple_of(4)) {
        return PSCI_INVALID_ADDRESS;
    }
    let me = cpu::this();
    me.host_entry.store(entry, core::sync::atomic::Ordering::Relaxed);
    me.host_context.store(context, core::sync::atomic::Ordering::Release);
    let mut args = [0u64; 17];
    args[0] = power_state;
    args[1] = arch::secondary_entry_address();
    args[2] = cpu::current() as u64;
    arch::smc(function, &args)[0] as i64
}

/// Delivers a synchronous exception to the host's EL1 vector, as the
/// hardware would have.
fn inject_into_host(kind: Kind) {
    let features = crate::BOOT.get().map(|b| b.config.features.inject).unwrap_or_default();
    let from = Interrupted {
        spsr: arch::spsr_el2(),
        elr: arch::elr_el2(),
        far: arch::far_el2(),
        vbar_el1: arch::vbar_el1(),
        sctlr_el1: arch::sctlr_el1(),
    };
    let Some(injection) = inject::compute(kind, &from, features) else {
        println!("host trapped from an impossible state: SPSR_EL2 {:#x}", from.spsr);
        crate::power_off();
    };
    // SAFETY: these registers describe the exception to the host's EL1 and
    // where it resumes; none of them affects the hypervisor's own state.
    unsafe {
        arch::set_esr_el1(injection.esr_el1);
        if let Some(far) = injection.far_el1 {
            arch::set_far_el1(far);
        }
        arch::set_elr_el1(injection.elr_el1);
        arch::set_spsr_el1(injection.spsr_el1);
        arch::set_elr_el2(injection.elr_el2);
        arch::set_spsr_el2(injection.spsr_el2);
    }
}
