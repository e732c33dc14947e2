//! The Realm Services Interface at EL2: what a *realm* VM (`VM_CREATE`
//! config bit 2) gets instead of the KVM/pKVM guest calls.
//!
//! A realm calls through `SMC #0`: the RSI range (`rampart_abi::rsi`) is
//! answered here, PSCI, SMCCC and TRNG by `crate::guest_calls` as for any
//! VM, and KVM's vendor-hypervisor calls (and every `HVC`) get
//! `NOT_SUPPORTED`: one VM never sees both guest ABIs.
//!
//! **The IPA split.** A realm's IPA space is `2^ipa_bits` (the host stage
//! 2's size, which every VM shares through `VTCR_EL2`); the top bit is the
//! *shared bit*. Below it lie protected pages: mapped at their IPA, owned by
//! the guest alone (RIPAS RAM). Above it is the unprotected alias: a page
//! the guest gave up with `IPA_STATE_SET(EMPTY)` is mapped at
//! `IPA | shared bit`, shared with the host (RIPAS EMPTY), and anything
//! unmapped there is emulated MMIO (the VMM sees the address without the
//! shared bit). RIPAS is not stored: a granule is RAM exactly when its
//! protected IPA is mapped or evicted by the host (`VM_EVICT`, restored
//! there by `VM_RESTORE`), so the stage 2, the swap map and the ownership
//! table cannot disagree with it. An evicted granule's RIPAS cannot change
//! (`REJECT`) until the host restores it.
//!
//! Every RIPAS change moves the page between the two IPAs in place (the
//! same physical page) and zeroes it while neither side can reach it:
//! RAM → EMPTY unmaps the protected IPA (TLB invalidated), zeroes the page
//! to DRAM, then shares it with the host (`GuestShareHost`) and maps the
//! alias; EMPTY → RAM unmaps the alias, takes the page back from the host
//! (`GuestUnshareHost`, the host's mapping invalidated), zeroes it, then
//! maps it protected. An EMPTY granule with no page at its alias (nothing
//! the host gave) cannot become RAM: that granule is *rejected*
//! (`response::REJECT`), as the RMM reports a host that refuses.
//!
//! **Attestation** state is per vCPU, as the RMM keeps it per REC: INIT
//! builds the CCA token (`crate::security::cca_token`) for the guest's
//! challenge; CONTINUE copies its next part into a protected granule of the
//! realm.

use rampart_abi::Error;
use rampart_abi::host::ExitReason;
use rampart_abi::rsi::{self, RsiCall, change_flags, realm_config, response, ripas, status};
use rampart_ownership::{Component, PhysAddr, State, Transition, VmId};
use rampart_platform::{MemRange, PAGE_SIZE};
use spin::mutex::SpinMutex;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::vcpu::Outcome;
use crate::vm::{self, MAX_VMS, Vm};

const NOT_SUPPORTED: u64 = rampart_abi::smccc::NOT_SUPPORTED as u64;

/// The most granules one `IPA_STATE_SET` changes (each is a stage-2 update,
/// a TLB invalidation and a page of zeroes): the guest calls again for the
/// rest, so one call stays short.
pub const MAX_SET_GRANULES: u64 = 64;
// The oracle hook records the granules moved in a 64-bit map.
const _: () = assert!(MAX_SET_GRANULES <= 64);
/// The most granules one `IPA_STATE_GET` looks at.
pub const MAX_GET_GRANULES: u64 = 512;

/// A realm VM's own state (in its `Vm`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Realm {
    /// The realm extensible measurements (REM 0..=3, indices 1..=4).
    rems: [[u8; 32]; rsi::REM_COUNT],
}

/// One vCPU's attestation in progress: the token INIT built, and how much
/// of it CONTINUE handed out. `handle` ties it to the VM it was made for
/// (a later VM in the same slot never sees it).
struct Attestation {
    handle: u64,
    token: Vec<u8>,
    sent: usize,
}

const VCPUS: usize = rampart_abi::host::MAX_VCPUS as usize;
static ATTESTATION: [[SpinMutex<Option<Attestation>>; VCPUS]; MAX_VMS] =
    [const { [const { SpinMutex::new(None) }; VCPUS] }; MAX_VMS];

/// One vCPU's `RSI_HOST_CALL` waiting for the host's answer: where the
/// guest's structure is, and the answer's registers (the guest's until the
/// host sets them). `handle` ties it to its VM, as for [`Attestation`].
struct PendingHostCall {
    handle: u64,
    ipa: u64,
    gprs: [u64; GPRS],
}

const GPRS: usize = rsi::host_call::GPRS;
static HOST_CALLS: [[SpinMutex<Option<PendingHostCall>>; VCPUS]; MAX_VMS] =
    [const { [const { SpinMutex::new(None) }; VCPUS] }; MAX_VMS];

/// The IPA width a realm is told (`REALM_CONFIG.ipa_bits`).
pub fn ipa_bits() -> u32 {
    crate::BOOT.get().map_or(32, |b| b.ipa_bits)
}

/// The shared (unprotected alias) bit.
pub fn shared_bit() -> u64 {
    rsi::shared_bit(ipa_bits())
}

/// Whether each slot's VM is a realm: set by `VM_CREATE` before the VM is
/// published (so before any of its vCPUs can run), read without the VM's
/// lock on every guest `HVC` and `SMC`.
static REALM_SLOTS: [AtomicBool; MAX_VMS] = [const { AtomicBool::new(false) }; MAX_VMS];

/// `VM_CREATE` of the VM in `slot`: whether it is a realm.
pub fn set_realm(slot: usize, realm: bool) {
    if let Some(flag) = REALM_SLOTS.get(slot) {
        flag.store(realm, Ordering::Release);
    }
}

/// Whether the VM in `slot` is a realm (meaningful while it exists).
pub fn is_realm(slot: usize) -> bool {
    REALM_SLOTS.get(slot).is_some_and(|flag| flag.load(Ordering::Acquire))
}

fn set(regs: &mut [u64; 31], values: [u64; 3]) -> Outcome {
    regs[..3].copy_from_slice(&values);
    Outcome::Resume
}

fn code(regs: &mut [u64; 31], value: u64) -> Outcome {
    regs[0] = value;
    Outcome::Resume
}

/// A trapped `SMC` (its PC already advanced) from vCPU `index` of the VM in
/// `slot`; `iss` is the trap's syndrome (the immediate in bits 15:0).
pub fn smc(slot: usize, index: usize, regs: &mut [u64; 31], iss: u64) -> Outcome {
    // Only a realm has the SMC conduit, and only SMC #0 is a call.
    if iss & 0xffff != 0 || !is_realm(slot) {
        return code(regs, NOT_SUPPORTED);
    }
    #[allow(clippy::cast_possible_truncation, reason = "the function ID is w0")]
    let function = regs[0] as u32;
    if rsi::in_range(function) {
        return handle(slot, index, regs);
    }
    if rampart_abi::smccc::owner_of(function) == rampart_abi::smccc::owner::VENDOR_HYPERVISOR {
        // KVM/pKVM and Rampart's own guest calls: not for a realm.
        return code(regs, NOT_SUPPORTED);
    }
    #[cfg(not(feature = "oracle"))]
    return crate::guest_calls::handle(slot, index, regs);
    #[cfg(feature = "oracle")]
    return crate::oracle::guest_call(slot, index, regs, |regs| {
        crate::guest_calls::handle(slot, index, regs)
    });
}

/// An RSI call from vCPU `index` of realm `slot`.
fn handle(slot: usize, index: usize, regs: &mut [u64; 31]) -> Outcome {
    #[allow(clippy::cast_possible_truncation, reason = "the function ID is w0")]
    let Ok(call) = RsiCall::try_from(regs[0] as u32) else {
        return code(regs, NOT_SUPPORTED);
    };
    match call {
        RsiCall::Version => {
            // 1.0 is the only revision: a request for it (or any 1.x, which
            // 1.0 serves per the RMM's negotiation) succeeds.
            let ok = regs[1] >> 16 == 1 && regs[1] >> 32 == 0;
            let result = if ok {
                status::SUCCESS
            } else {
                status::ERROR_INPUT
            };
            set(regs, [result, rsi::VERSION_1_0, rsi::VERSION_1_0])
        }
        // RSI 1.0 defines feature register 0 with every bit reserved (0);
        // other indices read 0 too.
        RsiCall::Features => set(regs, [status::SUCCESS, 0, 0]),
        RsiCall::RealmConfig => code(regs, realm_config(slot, regs[1])),
        RsiCall::IpaStateSet => ipa_state_set(slot, regs),
        RsiCall::IpaStateGet => ipa_state_get(slot, regs),
        RsiCall::MeasurementRead => measurement_read(slot, regs),
        RsiCall::MeasurementExtend => measurement_extend(slot, regs),
        RsiCall::AttestationTokenInit => token_init(slot, index, regs),
        RsiCall::AttestationTokenContinue => token_continue(slot, index, regs),
        RsiCall::HostCall => host_call(slot, index, regs),
    }
}

fn with_realm<T>(slot: usize, f: impl FnOnce(&mut Vm) -> T) -> Option<T> {
    let mut guard = vm::VMS.get(slot)?.lock();
    let vm = guard.as_mut().filter(|vm| vm.realm.is_some())?;
    Some(f(vm))
}

/// The physical page behind protected granule `ipa` if it is the realm's
/// alone (RIPAS RAM, not shared): where the hypervisor may write for it.
fn private_page(vm: &Vm, ipa: u64) -> Option<u64> {
    if !ipa.is_multiple_of(PAGE_SIZE) || ipa >= shared_bit() {
        return None;
    }
    let pa = vm::translate(vm, ipa)?;
    let owner = Component::Guest(VmId(vm.vmid));
    let owned =
        crate::memory::with(|mem| Ok(mem.table.state_of(PhysAddr(pa), owner) == Ok(State::Owned)));
    (owned == Ok(true)).then_some(pa)
}

/// `RSI_REALM_CONFIG`: fills the realm's granule at `ipa`.
fn realm_config(slot: usize, ipa: u64) -> u64 {
    let r = with_realm(slot, |vm| {
        let pa = private_page(vm, ipa).ok_or(Error::InvalidParameter)?;
        // Written in 256-byte pieces: no 4 KiB buffer on the EL2 stack.
        let mut piece = [0u8; 256];
        piece[realm_config::IPA_BITS..realm_config::IPA_BITS + 8].copy_from_slice(&u64::from(ipa_bits()).to_le_bytes());
        piece[realm_config::HASH_ALGO..realm_config::HASH_ALGO + 8]
            .copy_from_slice(&realm_config::HASH_SHA256.to_le_bytes());
        // The personalization value (0x200..0x240) and the rest are zero.
        crate::memory::with(|mem| {
            for offset in (0..realm_config::SIZE as u64).step_by(piece.len()) {
                mem.write_unowned_bytes(pa, offset, &piece)?;
                piece[..16].fill(0);
            }
            Ok(())
        })
    });
    match r {
        Some(Ok(())) => status::SUCCESS,
        _ => status::ERROR_INPUT,
    }
}

/// Whether protected granule `ipa` of `vm` is RAM the host evicted
/// (`VM_EVICT`): unmapped, yet RAM (the caller holds the VM's lock, so no
/// eviction or restore of it runs meanwhile).
fn evicted(vm: &Vm, ipa: u64) -> bool {
    vm::slot_of(vm.handle).is_ok_and(|slot| crate::swap::is_evicted(slot, vm.handle, ipa))
}

/// Why one granule's RIPAS did not change.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Nothing the hypervisor can make RAM (no page at the alias), or the
    /// page is not in the state the change needs.
    Rejected,
}

/// `RSI_IPA_STATE_SET(base, top, ripas, flags)`.
fn ipa_state_set(slot: usize, regs: &mut [u64; 31]) -> Outcome {
    let (base, top, target, flags) = (regs[1], regs[2], regs[3], regs[4]);
    let valid = base.is_multiple_of(PAGE_SIZE)
        && top.is_multiple_of(PAGE_SIZE)
        && base < top
        && top <= shared_bit()
        && flags & !change_flags::KNOWN == 0
        && (target == ripas::EMPTY || target == ripas::RAM);
    if !valid {
        return code(regs, status::ERROR_INPUT);
    }
    // Which granules moved (bit i: base + i granules), for the oracle of a
    // test build: a bitmap, not a list, to keep the EL2 stack small.
    let change = || {
        let mut moved = 0u64;
        let done = with_realm(slot, |vm| {
            let mut at = base;
            let last = top.min(base.saturating_add(MAX_SET_GRANULES * PAGE_SIZE));
            while at < last {
                let changed = if target == ripas::EMPTY { make_empty(vm, at) } else { make_ram(vm, at) };
                match changed {
                    Ok(Some(_)) => moved |= 1 << ((at - base) / PAGE_SIZE),
                    Ok(None) => {}
                    Err(_) => break,
                }
                at += PAGE_SIZE;
            }
            at
        });
        (done, moved)
    };
    #[cfg(feature = "oracle")]
    let done = crate::oracle::realm_ipa_state_set(slot, base, shared_bit(), target == ripas::EMPTY, change, |ipa| {
        with_realm(slot, |vm| vm::translate(vm, ipa)).flatten()
    });
    #[cfg(not(feature = "oracle"))]
    let done = change().0;
    match done {
        // Progress: [base, at) changed; the guest calls again from `at`.
        Some(at) if at > base => set(regs, [status::SUCCESS, at, response::ACCEPT]),
        // The first granule could not change: rejected, `x1` stays (the
        // guest never loops on a call that makes no progress).
        Some(_) => set(regs, [status::SUCCESS, base, response::REJECT]),
        None => code(regs, NOT_SUPPORTED),
    }
}

/// A page a RIPAS change moved: `(from IPA, to IPA, physical address)`.
type Moved = (u64, u64, u64);

/// RAM → EMPTY for granule `ipa` (below the shared bit); `None` if it was
/// EMPTY already.
fn make_empty(vm: &mut Vm, ipa: u64) -> Result<Option<Moved>, Refused> {
    let alias = ipa | shared_bit();
    // A RAM granule the host evicted (`VM_EVICT`) is still RAM, only not
    // mapped until the host restores it: it cannot change now (and is not
    // EMPTY already, which the unmapped IPA alone would say).
    if evicted(vm, ipa) {
        return Err(Refused::Rejected);
    }
    // Already EMPTY: nothing protected there.
    let Some(pa) = vm::translate(vm, ipa) else {
        return Ok(None);
    };
    if vm::translate(vm, alias).is_some() {
        // The host donated a page at the alias too: the protected page has
        // nowhere to go.
        return Err(Refused::Rejected);
    }
    vm::map_realm_page(vm, alias, pa, true).map_err(|_| Refused::Rejected)?;
    let id = VmId(vm.vmid);
    let page = rampart_abi::host::PageRange::new(pa, 1).map_err(|_| Refused::Rejected)?;
    let range = MemRange::from_base_size(pa, PAGE_SIZE).ok_or(Refused::Rejected)?;
    crate::memory::with(|mem| {
        if mem.table.state_of(PhysAddr(pa), Component::Guest(id)) != Ok(State::Owned) {
            return Err(Error::Denied);
        }
        let checked = mem.check(Transition::GuestShareHost(id), page)?;
        // Nothing can fail from here. The guest loses the page (TLB
        // invalidated), then it is zeroed to DRAM while nobody maps it,
        // then the host may map it.
        vm::unmap_guest_page(vm, ipa);
        mem.zero_unowned(range);
        mem.commit(checked);
        Ok(())
    })
    .map_err(|_| Refused::Rejected)?;
    // Checked above under the VM's lock: the tables are there.
    vm::map_realm_page(vm, alias, pa, false).map_err(|_| Refused::Rejected)?;
    Ok(Some((ipa, alias, pa)))
}

/// EMPTY → RAM for granule `ipa` (below the shared bit); `None` if it was
/// RAM already.
fn make_ram(vm: &mut Vm, ipa: u64) -> Result<Option<Moved>, Refused> {
    let alias = ipa | shared_bit();
    // Already RAM (mapped, or evicted by the host and still RAM).
    if vm::translate(vm, ipa).is_some() || evicted(vm, ipa) {
        return Ok(None);
    }
    // No page to make protected: the host gave none at the alias.
    let pa = vm::translate(vm, alias).ok_or(Refused::Rejected)?;
    vm::map_realm_page(vm, ipa, pa, true).map_err(|_| Refused::Rejected)?;
    let id = VmId(vm.vmid);
    let page = rampart_abi::host::PageRange::new(pa, 1).map_err(|_| Refused::Rejected)?;
    let range = MemRange::from_base_size(pa, PAGE_SIZE).ok_or(Refused::Rejected)?;
    crate::memory::with(|mem| {
        // Only a page the guest shared (not one the host donated at the
        // alias, which the guest owns already, nor anything else).
        if mem.table.state_of(PhysAddr(pa), Component::Guest(id)) != Ok(State::SharedOwned) {
            return Err(Error::Denied);
        }
        let checked = mem.check(Transition::GuestUnshareHost(id), page)?;
        // The guest's alias goes (TLB invalidated), the host loses the page
        // (its stage 2 updated and invalidated by the commit), and only
        // then is it zeroed: nothing the host writes later can land in it.
        vm::unmap_guest_page(vm, alias);
        mem.commit(checked);
        mem.zero_unowned(range);
        Ok(())
    })
    .map_err(|_| Refused::Rejected)?;
    vm::map_realm_page(vm, ipa, pa, false).map_err(|_| Refused::Rejected)?;
    Ok(Some((alias, ipa, pa)))
}

/// `RSI_IPA_STATE_GET(base, top)`: the RIPAS of `base` and how far it
/// holds.
fn ipa_state_get(slot: usize, regs: &mut [u64; 31]) -> Outcome {
    let (base, top) = (regs[1], regs[2]);
    if !base.is_multiple_of(PAGE_SIZE)
        || !top.is_multiple_of(PAGE_SIZE)
        || base >= top
        || top > shared_bit()
    {
        return code(regs, status::ERROR_INPUT);
    }
    let r = with_realm(slot, |vm| {
        let state = |ipa: u64| {
            if vm::translate(vm, ipa).is_some() || evicted(vm, ipa) {
                ripas::RAM
            } else {
                ripas::EMPTY
            }
        };
        let first = state(base);
        let last = top.min(base.saturating_add(MAX_GET_GRANULES * PAGE_SIZE));
        let mut at = base + PAGE_SIZE;
        while at < last && state(at) == first {
            at += PAGE_SIZE;
        }
        (at, first)
    });
    match r {
        Some((end, state)) => set(regs, [status::SUCCESS, end, state]),
        None => code(regs, NOT_SUPPORTED),
    }
}

/// `RSI_MEASUREMENT_READ(index)`: x1..x8 = the 64-byte value.
fn measurement_read(slot: usize, regs: &mut [u64; 31]) -> Outcome {
    let index = regs[1];
    let value = with_realm(slot, |vm| match index {
        0 => vm.measurement.map(|m| m.0),
        1..=4 => vm
            .realm
            .as_ref()
            .and_then(|r| r.rems.get(index as usize - 1).copied()),
        _ => None,
    })
    .flatten();
    let Some(value) = value else {
        return code(regs, status::ERROR_INPUT);
    };
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&value);
    let words: [u64; 8] = rampart_abi::host::bytes_to_words(&bytes);
    regs[0] = status::SUCCESS;
    regs[1..9].copy_from_slice(&words);
    Outcome::Resume
}

/// `RSI_MEASUREMENT_EXTEND(index, size, value)`: REM = SHA-256(REM ||
/// value[..size]).
fn measurement_extend(slot: usize, regs: &mut [u64; 31]) -> Outcome {
    let (index, size) = (regs[1], regs[2]);
    if !(1..=rsi::REM_COUNT as u64).contains(&index) || size > rsi::MAX_EXTEND_SIZE {
        return code(regs, status::ERROR_INPUT);
    }
    let value: [u8; 64] = rampart_abi::host::words_to_bytes(&regs[3..11]);
    let done = with_realm(slot, |vm| {
        let Some(realm) = vm.realm.as_mut() else {
            return false;
        };
        let Some(rem) = realm.rems.get_mut(index as usize - 1) else {
            return false;
        };
        // EL2's block function, with the guest's state loaded (its
        // CPTR_EL2 traps FP/SIMD and SME, which `compress` lifts for itself).
        let mut hash = rampart_attest::sha256::Sha256::with(crate::arch::sha256::compress);
        hash.update(rem);
        hash.update(value.get(..size as usize).unwrap_or(&[]));
        *rem = hash.finish();
        true
    });
    code(
        regs,
        if done == Some(true) {
            status::SUCCESS
        } else {
            status::ERROR_INPUT
        },
    )
}

/// `RSI_ATTESTATION_TOKEN_INIT(challenge)`: builds this vCPU's token.
fn token_init(slot: usize, index: usize, regs: &mut [u64; 31]) -> Outcome {
    let challenge: [u8; 64] = rampart_abi::host::words_to_bytes(&regs[1..9]);
    let Some(entry) = ATTESTATION.get(slot).and_then(|s| s.get(index)) else {
        return code(regs, status::ERROR_INPUT);
    };
    let claims = with_realm(slot, |vm| {
        (vm.handle.0, vm.measurement, vm.realm.map(|r| r.rems))
    });
    let Some((handle, Some(rim), Some(rems))) = claims else {
        return code(regs, status::ERROR_STATE);
    };
    // Any earlier token of this vCPU is dropped first (a new INIT restarts).
    *entry.lock() = None;
    match crate::security::cca_token(challenge, rim, rems) {
        Ok(token) => {
            let len = token.len() as u64;
            *entry.lock() = Some(Attestation {
                handle,
                token,
                sent: 0,
            });
            set(regs, [status::SUCCESS, len, 0])
        }
        Err(_) => code(regs, status::ERROR_UNKNOWN),
    }
}

/// `RSI_ATTESTATION_TOKEN_CONTINUE(granule, offset, size)`.
fn token_continue(slot: usize, index: usize, regs: &mut [u64; 31]) -> Outcome {
    let (granule, offset, size) = (regs[1], regs[2], regs[3]);
    let Some(entry) = ATTESTATION.get(slot).and_then(|s| s.get(index)) else {
        return code(regs, status::ERROR_INPUT);
    };
    let handle = with_realm(slot, |vm| vm.handle.0);
    let mut attestation = entry.lock();
    let Some(a) = attestation.as_mut().filter(|a| Some(a.handle) == handle) else {
        return code(regs, status::ERROR_STATE);
    };
    let fits = offset < PAGE_SIZE
        && size != 0
        && offset.checked_add(size).is_some_and(|end| end <= PAGE_SIZE);
    if !fits {
        return code(regs, status::ERROR_INPUT);
    }
    let rest = a.token.get(a.sent..).unwrap_or(&[]);
    let count = rest.len().min(size as usize);
    let chunk = rest.get(..count).unwrap_or(&[]);
    let written = with_realm(slot, |vm| {
        let pa = private_page(vm, granule).ok_or(Error::InvalidParameter)?;
        crate::memory::with(|mem| mem.write_unowned_bytes(pa, offset, chunk))
    });
    if written != Some(Ok(())) {
        return code(regs, status::ERROR_INPUT);
    }
    a.sent += count;
    let result = if a.sent >= a.token.len() {
        // All sent: the next CONTINUE needs a new INIT.
        *attestation = None;
        status::SUCCESS
    } else {
        status::INCOMPLETE
    };
    set(regs, [result, count as u64, 0])
}

/// The private page behind the `RsiHostCall` structure at `ipa`, which
/// must be aligned to its size (so it lies in one granule).
fn host_call_page(vm: &Vm, ipa: u64) -> Option<u64> {
    if !ipa.is_multiple_of(rsi::host_call::SIZE as u64) {
        return None;
    }
    private_page(vm, ipa & !(PAGE_SIZE - 1))
}

/// `RSI_HOST_CALL(ipa)`: copies the structure's `imm` and registers, keeps
/// them for the host and exits to it (`EXIT_HOST_CALL`, `x2` = `imm`). The
/// guest's registers stay as they are until [`complete_host_call`].
fn host_call(slot: usize, index: usize, regs: &mut [u64; 31]) -> Outcome {
    let ipa = regs[1];
    let Some(entry) = HOST_CALLS.get(slot).and_then(|s| s.get(index)) else {
        return code(regs, status::ERROR_INPUT);
    };
    let read = with_realm(slot, |vm| {
        let pa = host_call_page(vm, ipa)?;
        let offset = ipa & (PAGE_SIZE - 1);
        let words = crate::memory::with(|mem| mem.read_unowned_words::<{ rsi::host_call::SIZE / 8 }>(pa, offset)).ok()?;
        Some((vm.handle.0, words))
    })
    .flatten();
    let Some((handle, words)) = read else {
        return code(regs, status::ERROR_INPUT);
    };
    // imm: the low 16 bits of the first word (the rest is padding).
    let imm = words[0] & 0xffff;
    let mut gprs = [0u64; GPRS];
    gprs.copy_from_slice(&words[1..]);
    *entry.lock() = Some(PendingHostCall { handle, ipa, gprs });
    Outcome::Exit([ExitReason::HostCall as u64, imm, 0, 0])
}

/// `VCPU_RUN` of vCPU `index` of the VM in `slot` (`handle`), before the
/// guest runs: completes its `RSI_HOST_CALL` if one is pending. The answer's
/// registers go into the guest's structure, if it is still a private
/// granule of the realm (`x0` = `SUCCESS`); otherwise the structure is left
/// alone and `x0` = `ERROR_INPUT`. Nothing but `gprs[0..31]` is written.
pub fn complete_host_call(slot: usize, handle: u64, index: usize, regs: &mut [u64; 31]) {
    let Some(entry) = HOST_CALLS.get(slot).and_then(|s| s.get(index)) else {
        return;
    };
    let Some(pending) = entry.lock().take() else {
        return;
    };
    if pending.handle != handle {
        // Left by an earlier VM in this slot: not this guest's.
        return;
    }
    let written = with_realm(slot, |vm| {
        let pa = host_call_page(vm, pending.ipa).ok_or(Error::InvalidParameter)?;
        let offset = (pending.ipa & (PAGE_SIZE - 1)) + rsi::host_call::GPRS_OFFSET as u64;
        let mut bytes = [0u8; 8 * GPRS];
        for (chunk, value) in bytes.chunks_exact_mut(8).zip(pending.gprs) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        crate::memory::with(|mem| mem.write_unowned_bytes(pa, offset, &bytes))
    });
    regs[0] = if written == Some(Ok(())) {
        status::SUCCESS
    } else {
        status::ERROR_INPUT
    };
}

/// Which registers `VCPU_HOST_CALL_GET`/`SET` name: `first..first + 8`,
/// clipped to the 31.
fn host_call_window(first: u64) -> Result<core::ops::Range<usize>, Error> {
    let first = usize::try_from(first).map_err(|_| Error::InvalidParameter)?;
    if first >= GPRS || !first.is_multiple_of(8) {
        return Err(Error::InvalidParameter);
    }
    Ok(first..(first + 8).min(GPRS))
}

/// The pending host call of `vcpu`: `INVALID_PARAMETER` for a VM or vCPU
/// that does not exist, `DENIED` if it has none pending.
fn with_pending<T>(
    vcpu: rampart_abi::host::VcpuRef,
    f: impl FnOnce(&mut PendingHostCall) -> T,
) -> Result<T, Error> {
    let slot = vm::slot_of(vcpu.vm)?;
    let entry = HOST_CALLS.get(slot).and_then(|s| s.get(vcpu.index)).ok_or(Error::InvalidParameter)?;
    let mut guard = entry.lock();
    match guard.as_mut() {
        Some(pending) if pending.handle == vcpu.vm.0 => Ok(f(pending)),
        _ => Err(Error::Denied),
    }
}

/// `VCPU_HOST_CALL_GET(vcpu, first)`: the answer's `gprs[first..first + 8]`
/// (0 past the 31).
pub fn host_call_get(vcpu: rampart_abi::host::VcpuRef, first: u64) -> Result<[u64; 8], Error> {
    let window = host_call_window(first)?;
    with_pending(vcpu, |pending| {
        let mut out = [0u64; 8];
        for (slot, value) in out.iter_mut().zip(pending.gprs.get(window).unwrap_or(&[])) {
            *slot = *value;
        }
        out
    })
}

/// `VCPU_HOST_CALL_SET(vcpu, first, values)`: sets the answer's
/// `gprs[first..first + 8]` (values past the 31 are ignored).
pub fn host_call_set(vcpu: rampart_abi::host::VcpuRef, first: u64, values: [u64; 8]) -> Result<(), Error> {
    let window = host_call_window(first)?;
    with_pending(vcpu, |pending| {
        if let Some(target) = pending.gprs.get_mut(window) {
            for (slot, value) in target.iter_mut().zip(values) {
                *slot = value;
            }
        }
    })
}

/// Where a realm's stage-2 fault at `ipa` (not mapped) goes: an address in
/// the unprotected alias of the MMIO space below guest RAM is that MMIO
/// address (the shared bit stripped); anything else stays as it is (a
/// memory fault at or above guest RAM, in either half).
pub fn mmio_address(ipa: u64) -> u64 {
    let canonical = ipa & !shared_bit();
    if ipa & shared_bit() != 0 && canonical < crate::vcpu::GUEST_RAM_BASE {
        canonical
    } else {
        ipa
    }
}
