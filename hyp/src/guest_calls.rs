//! The guest interface at EL2: SMCCC, KVM's vendor-hypervisor calls as
//! pKVM offers them, PSCI 1.1 and SMCCC TRNG.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::guest::{self as ids, GuestCall as G};
use rampart_abi::host::ExitReason;
use rampart_ownership::Transition;
use rampart_platform::PAGE_SIZE;
use rampart_platform::smc::psci;

use crate::arch;
use crate::vcpu::{GUEST_RAM_BASE, Outcome};
use crate::vm::{self, VCPU_BOOT, VCPU_POWER, power};

/// The UUID of Rampart's TRNG back end (the CPU's RNDR), as four words.
const TRNG_UUID: [u64; 4] = [0x7261_6d70, 0x6172_7420, 0x524e_4452, 0x0000_0001];

const PSCI_INVALID_ADDRESS: i64 = psci::INVALID_ADDRESS;

/// SMCCC / KVM return: invalid parameter.
const INVALID: u64 = rampart_abi::smccc::INVALID_PARAMETER as u64;
const NOT_SUPPORTED: u64 = rampart_abi::smccc::NOT_SUPPORTED as u64;

fn set(regs: &mut [u64; 31], values: [u64; 4]) -> Outcome {
    // Four stores: `copy_from_slice` became a `memcpy` call at opt-level
    // "s" (45 instructions on a 186-instruction guest HVC).
    let [x0, x1, x2, x3] = values;
    regs[0] = x0;
    regs[1] = x1;
    regs[2] = x2;
    regs[3] = x3;
    Outcome::Resume
}

fn code(regs: &mut [u64; 31], value: u64) -> Outcome {
    regs[0] = value;
    Outcome::Resume
}

fn result(regs: &mut [u64; 31], r: Result<(), Error>) -> Outcome {
    code(regs, if r.is_ok() { 0 } else { INVALID })
}

/// Decodes `w0`: a `match` over the ID of every call in `GuestCall::ALL`
/// as it stands, which the compiler turns into a decision tree (about 15
/// instructions) instead of `GuestCall::try_from`'s binary-search loop
/// (54). An ID the match does not list (a call added to `ALL` later) goes
/// to `try_from`, so the answer is always `try_from`'s: each arm's ID is
/// the constant of the very call it returns.
fn decode(function: u32) -> Option<G> {
    macro_rules! by_id {
        ($($call:ident),* $(,)?) => {{
            #[allow(non_upper_case_globals)]
            mod id {
                use super::G;
                $(pub const $call: u32 = G::$call.id();)*
            }
            match function {
                $(id::$call => Some(G::$call),)*
                other => G::try_from(other).ok(),
            }
        }};
    }
    by_id!(
        SmcccVersion, SmcccArchFeatures, PsciVersion, CpuSuspend32, CpuSuspend64, CpuOff, CpuOn32, CpuOn64,
        AffinityInfo32, AffinityInfo64, MigrateInfoType, SystemOff, SystemReset, PsciFeatures, TrngVersion,
        TrngFeatures, TrngGetUuid, TrngRnd32, TrngRnd64, VendorHypCallUid, KvmFeatures, HypMeminfo, MemShare,
        MemUnshare, MmioGuardInfo, MmioGuardEnroll, MmioGuardMap, MmioGuardUnmap, MemRelinquish, RampartAttest,
        RampartSealingKey,
    )
}

/// Handles an `HVC` from vCPU `index` of the VM in `slot` whose kind the
/// caller does not know (the world switch calls [`handle_with`]).
pub fn handle(slot: usize, index: usize, regs: &mut [u64; 31]) -> Outcome {
    let protected = vm::VMS[slot].lock().as_ref().is_some_and(|vm| vm.protected);
    handle_with(slot, index, protected, regs)
}

/// [`handle`] for a VM whose kind the caller knows (`protected` is fixed at
/// `VM_CREATE`; the world switch reads it under the VM's lock at each
/// `VCPU_RUN`), so no guest call takes the VM's lock to learn it.
pub fn handle_with(slot: usize, index: usize, protected: bool, regs: &mut [u64; 31]) -> Outcome {
    #[allow(clippy::cast_possible_truncation, reason = "the function ID is w0")]
    let function = regs[0] as u32;
    let Some(call) = decode(function) else { return code(regs, NOT_SUPPORTED) };
    // The calls answered from constants take a leaf path: no lock, no
    // state, none of the big handler's register spills.
    if let Some(answer) = constant_answer(call, protected) {
        return answer.write(regs);
    }
    handle_call(slot, index, protected, call, regs)
}

/// The answer to a call that reads no argument and no state.
#[derive(Clone, Copy)]
enum Answer {
    /// `x0` only.
    Code(u64),
    /// `x0`..`x3`.
    Set([u64; 4]),
}

impl Answer {
    fn write(self, regs: &mut [u64; 31]) -> Outcome {
        match self {
            Answer::Code(value) => code(regs, value),
            Answer::Set(values) => set(regs, values),
        }
    }
}

/// `SMCCC_VERSION`, `PSCI_VERSION`, `PSCI_MIGRATE_INFO_TYPE`,
/// `VENDOR_HYP_CALL_UID` and `KVM_FEATURES`: the same answers
/// [`handle_call`] gives (it asks this function for them).
#[inline]
fn constant_answer(call: G, protected: bool) -> Option<Answer> {
    Some(match call {
        G::SmcccVersion => Answer::Code(u64::from(rampart_abi::smccc::SMCCC_VERSION_1_1)),
        G::VendorHypCallUid => Answer::Set(ids::KVM_UID.map(u64::from)),
        G::KvmFeatures => {
            let bitmap = if protected { ids::KVM_FEATURES_PROTECTED } else { 1 << ids::kvm_function::FEATURES };
            Answer::Set([u64::from(bitmap), 0, 0, 0])
        }
        G::PsciVersion => Answer::Code(0x1_0001),
        G::MigrateInfoType => Answer::Code(2),
        _ => return None,
    })
}

/// Every call [`constant_answer`] does not answer.
#[inline(never)]
fn handle_call(slot: usize, index: usize, protected: bool, call: G, regs: &mut [u64; 31]) -> Outcome {
    let (x1, x2, x3) = (regs[1], regs[2], regs[3]);
    let protected = || protected;
    let protected_only = matches!(
        call,
        G::HypMeminfo
            | G::MemShare
            | G::MemUnshare
            | G::MemRelinquish
            | G::MmioGuardInfo
            | G::MmioGuardEnroll
            | G::MmioGuardMap
            | G::MmioGuardUnmap
            | G::RampartAttest
            | G::RampartSealingKey
    );
    if protected_only && !protected() {
        return code(regs, NOT_SUPPORTED);
    }
    let trng_call = matches!(call, G::TrngVersion | G::TrngFeatures | G::TrngGetUuid | G::TrngRnd32 | G::TrngRnd64);
    if trng_call && !crate::BOOT.get().is_some_and(|b| b.config.features.rng) {
        // No RNDR on this CPU: no TRNG at all.
        return code(regs, NOT_SUPPORTED);
    }
    match call {
        G::SmcccVersion | G::VendorHypCallUid | G::KvmFeatures | G::PsciVersion | G::MigrateInfoType => {
            constant_answer(call, protected()).map_or(Outcome::Resume, |answer| answer.write(regs))
        }
        G::SmcccArchFeatures => {
            #[allow(clippy::cast_possible_truncation, reason = "the function ID asked about is w1")]
            let asked = x1 as u32;
            let ok = matches!(G::try_from(asked), Ok(G::SmcccVersion | G::SmcccArchFeatures));
            code(regs, if ok { 0 } else { NOT_SUPPORTED })
        }
        G::HypMeminfo => {
            if x1 != 0 || x2 != 0 || x3 != 0 {
                return code(regs, INVALID);
            }
            code(regs, PAGE_SIZE)
        }
        G::MemShare | G::MemUnshare | G::MemRelinquish => {
            if x1 % PAGE_SIZE != 0 || x2 != 0 || x3 != 0 {
                return code(regs, INVALID);
            }
            let r = with_vm(slot, |vm| match call {
                G::MemShare => vm::guest_page_transition(vm, x1, Transition::GuestShareHost, false),
                G::MemUnshare => vm::guest_page_transition(vm, x1, Transition::GuestUnshareHost, false),
                _ => vm::guest_page_transition(vm, x1, Transition::GuestRelinquish, true),
            });
            result(regs, r)
        }
        G::MmioGuardInfo => code(regs, ids::GRANULE),
        // A protected VM is enrolled from creation.
        G::MmioGuardEnroll => code(regs, 0),
        G::MmioGuardMap | G::MmioGuardUnmap => {
            if !x1.is_multiple_of(PAGE_SIZE) {
                return code(regs, INVALID);
            }
            let page = x1;
            let r = with_vm(slot, |vm| {
                if page >= GUEST_RAM_BASE || vm::translate(vm, page).is_some() {
                    return Err(Error::InvalidParameter);
                }
                let guard = vm.mmio_guard.as_mut().ok_or(Error::NotSupported)?;
                if call == G::MmioGuardMap { guard.insert(page) } else { guard.remove(page) }
            });
            result(regs, r)
        }
        G::PsciFeatures => {
            #[allow(clippy::cast_possible_truncation, reason = "the function ID asked about is w1")]
            let asked = x1 as u32;
            // SMCCC_VERSION too (PSCI 1.0, 5.15.2): Linux learns SMCCC 1.1
            // only through it, and a realm's RSI needs SMCCC 1.1.
            let ok = matches!(
                G::try_from(asked),
                Ok(G::SmcccVersion
                    | G::PsciVersion
                    | G::PsciFeatures
                    | G::CpuOn32
                    | G::CpuOn64
                    | G::CpuOff
                    | G::CpuSuspend32
                    | G::CpuSuspend64
                    | G::AffinityInfo32
                    | G::AffinityInfo64
                    | G::MigrateInfoType
                    | G::SystemOff
                    | G::SystemReset)
            );
            code(regs, if ok { 0 } else { NOT_SUPPORTED })
        }
        G::CpuOn32 => code(regs, cpu_on(slot, x1 & 0xffff_ffff, x2 & 0xffff_ffff, x3 & 0xffff_ffff) as u64),
        G::CpuOn64 => code(regs, cpu_on(slot, x1, x2, x3) as u64),
        // Suspend is a standby: the host sees a wait, the guest a return.
        G::CpuSuspend32 | G::CpuSuspend64 => {
            regs[0] = 0;
            Outcome::Exit([ExitReason::Wait as u64, 0, 0, 0])
        }
        G::CpuOff => {
            VCPU_POWER[slot][index].store(power::OFF, Ordering::Release);
            Outcome::Exit([ExitReason::PoweredOff as u64, 0, 0, 0])
        }
        G::AffinityInfo32 | G::AffinityInfo64 => {
            // SMCCC: an SMC32 call reads only w1.
            let mpidr = if call == G::AffinityInfo32 { x1 & 0xffff_ffff } else { x1 };
            let state = target(slot, mpidr).map(|t| match VCPU_POWER[slot][t].load(Ordering::Acquire) {
                power::ON => 0,
                power::PENDING => 2,
                _ => 1,
            });
            code(regs, state.unwrap_or(psci::INVALID_PARAMETERS) as u64)
        }
        G::SystemOff => Outcome::Exit([ExitReason::SystemOff as u64, 0, 0, 0]),
        G::SystemReset => Outcome::Exit([ExitReason::SystemReset as u64, 0, 0, 0]),
        G::TrngVersion => code(regs, 0x1_0000),
        G::TrngFeatures => {
            #[allow(clippy::cast_possible_truncation, reason = "the function ID asked about is w1")]
            let asked = x1 as u32;
            let ok = matches!(G::try_from(asked), Ok(G::TrngVersion | G::TrngFeatures | G::TrngGetUuid | G::TrngRnd32 | G::TrngRnd64));
            code(regs, if ok { 0 } else { NOT_SUPPORTED })
        }
        G::TrngGetUuid => set(regs, TRNG_UUID),
        G::TrngRnd32 | G::TrngRnd64 => trng(regs, call == G::TrngRnd64, x1),
        G::RampartAttest => attest(slot, regs),
        G::RampartSealingKey => sealing_key(slot, regs),
    }
}

fn with_vm(slot: usize, f: impl FnOnce(&mut vm::Vm) -> Result<(), Error>) -> Result<(), Error> {
    let mut guard = vm::VMS[slot].lock();
    let vm = guard.as_mut().ok_or(Error::InvalidParameter)?;
    f(vm)
}

/// The vCPU index a PSCI target MPIDR names (Aff0 = index, nothing else).
fn target(slot: usize, mpidr: u64) -> Option<usize> {
    let index = usize::try_from(mpidr & 0xff_00ff_ffff).ok()?;
    let max = vm::VMS[slot].lock().as_ref().map_or(0, |vm| vm.max_vcpus);
    (index < max && vm::VCPU_EXISTS[slot][index].load(Ordering::Acquire)).then_some(index)
}

fn cpu_on(slot: usize, mpidr: u64, entry: u64, context: u64) -> i64 {
    let Some(index) = target(slot, mpidr) else { return psci::INVALID_PARAMETERS };
    let entry_is_memory = entry.is_multiple_of(4) && vm::VMS[slot].lock().as_ref().is_some_and(|vm| vm::translate(vm, entry).is_some());
    if !entry_is_memory {
        return PSCI_INVALID_ADDRESS;
    }
    let power_state = &VCPU_POWER[slot][index];
    let (boot_entry, boot_context) = &VCPU_BOOT[slot][index];
    boot_entry.store(entry, Ordering::Relaxed);
    boot_context.store(context, Ordering::Relaxed);
    match power_state.compare_exchange(power::OFF, power::PENDING, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => psci::SUCCESS,
        Err(power::PENDING) => psci::ON_PENDING,
        Err(_) => psci::ALREADY_ON,
    }
}

/// A random number from the CPU's `RNDR`, if it has one and it gave one.
pub(crate) fn random() -> Option<u64> {
    let has_rng = crate::BOOT.get().is_some_and(|b| b.config.features.rng);
    // SAFETY: only called when the CPU has FEAT_RNG.
    has_rng.then(|| unsafe { arch::guest::rndr() }).flatten()
}

/// TRNG_RNG: `bits` random bits in x1..x3 (x3 least significant).
fn trng(regs: &mut [u64; 31], sixty_four: bool, bits: u64) -> Outcome {
    const NO_ENTROPY: u64 = -3i64 as u64;
    let max = if sixty_four { 192 } else { 96 };
    if bits == 0 || bits > max {
        return code(regs, -2i64 as u64);
    }
    let word_bits = if sixty_four { 64 } else { 32 };
    let mut out = [0u64; 3];
    let mut left = bits;
    for slot in out.iter_mut().rev() {
        if left == 0 {
            break;
        }
        let Some(r) = random() else { return code(regs, NO_ENTROPY) };
        let take = left.min(word_bits);
        *slot = if take == 64 { r } else { r & ((1 << take) - 1) };
        left -= take;
    }
    set(regs, [0, out[0], out[1], out[2]])
}

/// `RAMPART_ATTEST`: writes a signed report into a granule the guest owns.
fn attest(slot: usize, regs: &mut [u64; 31]) -> Outcome {
    let (ipa, nonce_len) = (regs[1], regs[2]);
    let Ok(nonce_len) = usize::try_from(nonce_len) else { return code(regs, INVALID) };
    if !ipa.is_multiple_of(PAGE_SIZE) || nonce_len > 64 {
        return code(regs, INVALID);
    }
    let nonce: [u8; 64] = rampart_abi::host::words_to_bytes(&regs[3..11]);
    let mut length = 0u64;
    let r = with_vm(slot, |vm| {
        let pa = vm::translate(vm, ipa).ok_or(Error::InvalidParameter)?;
        let measurement = vm.measurement.ok_or(Error::InvalidParameter)?;
        let report = crate::security::report(measurement, &nonce[..nonce_len], vm.protected, vm.debug)?;
        let page = rampart_platform::MemRange::from_base_size(pa, PAGE_SIZE).ok_or(Error::InvalidParameter)?;
        let owner = rampart_ownership::Component::Guest(rampart_ownership::VmId(vm.vmid));
        crate::memory::with(|mem| {
            // Only the guest's own, unshared memory: never a page the host
            // can read.
            if mem.table.state_of(rampart_ownership::PhysAddr(pa), owner) != Ok(rampart_ownership::State::Owned) {
                return Err(Error::InvalidParameter);
            }
            // The guest's other vCPUs may be writing the page: copy with
            // volatile stores, never through a Rust reference to it.
            mem.write_unowned_page(page.start(), &report)
        })?;
        length = report.len() as u64;
        Ok(())
    });
    match r {
        Ok(()) => set(regs, [0, length, 0, 0]),
        Err(Error::NotSupported) => code(regs, NOT_SUPPORTED),
        Err(_) => code(regs, INVALID),
    }
}

/// `RAMPART_SEALING_KEY`: a key only this image gets, for the guest's label.
fn sealing_key(slot: usize, regs: &mut [u64; 31]) -> Outcome {
    let Ok(len) = usize::try_from(regs[1]) else { return code(regs, INVALID) };
    if len > 32 {
        return code(regs, INVALID);
    }
    let label: [u8; 32] = rampart_abi::host::words_to_bytes(&regs[2..6]);
    let measurement = vm::VMS[slot].lock().as_ref().and_then(|vm| vm.measurement);
    let Some(measurement) = measurement else { return code(regs, INVALID) };
    match crate::security::sealing_key(&measurement, &label[..len]) {
        Ok(mut key) => {
            let words: [u64; 4] = rampart_abi::host::bytes_to_words(&key);
            zeroize::Zeroize::zeroize(&mut key);
            regs[0] = 0;
            regs[1..5].copy_from_slice(&words);
            Outcome::Resume
        }
        Err(Error::NotSupported) => code(regs, NOT_SUPPORTED),
        Err(_) => code(regs, INVALID),
    }
}
