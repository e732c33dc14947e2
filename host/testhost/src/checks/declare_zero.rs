//! `vm-declare-zero*` (issue 16): `VM_DECLARE_ZERO` lets a VMM leave a
//! protected VM's RAM unmapped until the guest touches it, and the first
//! run still measures it as the zeros the signer measured. Only unmapped
//! declared pages are measured as zero: what the host maps there is read,
//! an evicted page is never taken for zero, and every page the guest gets
//! after its first run reads zero however the host filled it.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::HostCall;

use super::vm::{arena, protected};
use super::vmm::run::{FaultAction, Policy};
use super::vmm::{
    Arena, PAGE, REALM_OVERRIDE, Spec, Vm, ZEROED_TAIL_PAGES, ZEROED_TAIL_SKIP, call, code,
};
use crate::arch;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, msg, note};

const INVALID: i64 = Error::InvalidParameter.code();
const DENIED: i64 = Error::Denied.code();
const RANGE: i64 = Error::Range.code();
const NO_MEMORY: i64 = Error::NoMemory.code();
const BAD_SIGNATURE: i64 = Error::BadSignature.code();

/// Pages at the end of the attacker's RAM that [`Vm::create`] fills with
/// garbage and does not give with `VM_DONATE` (some of them with
/// `VM_DONATE_ZEROED`, the rest not at all).
const TAIL: u64 = 4;

/// What the host writes into the pages it gives on the guest's touch.
const GARBAGE: u64 = 0x6a7b_a6e0_0d0e_d2c1;

/// Declared-zero runs the hypervisor keeps per VM (`DECLARED_ZERO_RUNS`).
const RUNS: u64 = 8;

/// Creates the protected `attacker` VM with its image and RAM given with
/// `VM_DONATE` except the last [`TAIL`] pages: the first `TAIL - skip` of
/// them given with `VM_DONATE_ZEROED`, the last `skip` left the host's
/// (garbage filled, unmapped in the VM).
fn attacker_with_tail(arena: &mut Arena, skip: u64) -> Result<Vm, Msg> {
    let spec = protected("attacker")?;
    ZEROED_TAIL_PAGES.store(TAIL, Ordering::Relaxed);
    ZEROED_TAIL_SKIP.store(skip, Ordering::Relaxed);
    let created = Vm::create(arena, spec);
    ZEROED_TAIL_PAGES.store(0, Ordering::Relaxed);
    ZEROED_TAIL_SKIP.store(0, Ordering::Relaxed);
    created
}

/// `VM_DECLARE_ZERO(vm, guest_address, pages, flags)`'s code.
fn declare(vm: u64, ipa: u64, pages: u64, flags: u64) -> i64 {
    code(HostCall::VmDeclareZero, &[vm, ipa, pages, flags])
}

/// The first `VCPU_RUN` of vCPU 0 must be refused with `BAD_SIGNATURE`.
fn expect_bad_signature(vm: &Vm, what: &str) -> Result<(), Msg> {
    let c = call(HostCall::VcpuRun, &[vm.handle, 0, 0])[0] as i64;
    ensure!(
        c == BAD_SIGNATURE,
        "{what}: the first VCPU_RUN = {c}, expected BAD_SIGNATURE ({BAD_SIGNATURE}){}",
        if c == 0 {
            ": the VM ran, measured as if the pages were zero"
        } else {
            ""
        }
    );
    Ok(())
}

/// Gives a page full of [`GARBAGE`] with plain `VM_DONATE` at each fault
/// in `[from, to)` (the declared RAM nothing mapped at the first run) and
/// declines every other fault (the attacker's announced probes outside its
/// RAM, which expect an abort).
struct GiveOnTouch<'a> {
    arena: &'a mut Arena,
    from: u64,
    to: u64,
    given: u64,
}

impl Policy for GiveOnTouch<'_> {
    fn memory_fault(
        &mut self,
        vms: &mut [Vm],
        vm: usize,
        ipa: u64,
        _write: bool,
    ) -> Result<FaultAction, Msg> {
        if !(self.from..self.to).contains(&ipa) {
            return Ok(FaultAction::Decline);
        }
        let c = vms[vm].donate_patterned_page(self.arena, ipa, GARBAGE)?;
        ensure!(c == 0, "VM_DONATE of a garbage page at {ipa:#x} on the guest's touch = {c}");
        self.given += 1;
        Ok(FaultAction::Donated)
    }
}

/// `vm-declare-zero`: the protected `attacker` VM with its last [`TAIL`]
/// RAM pages not given by `VM_DONATE`: two with `VM_DONATE_ZEROED`, two
/// not at all. Hostile `VM_DECLARE_ZERO` calls, each naming a range that
/// would change the measurement if recorded, are refused; then all of its
/// RAM is declared, in two overlapping calls (image pages and zeroed pages
/// mapped, the last two not). The VM must run with the signature its
/// bundle has for all of its RAM given as zeros (the same measurement as
/// `vm-attacker`'s fully donated VM: mapped pages read, known-zero pages
/// and unmapped declared pages merged into the same zero run). The guest
/// touches the last two pages first in its `free-ram-zero` read; the VMM
/// gives each with plain `VM_DONATE` of garbage, and the guest must read
/// zero. After the first run `VM_DECLARE_ZERO` is `DENIED`.
pub fn vm_declare_zero(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("attacker")?;
    let unmapped = 2;
    let vm = attacker_with_tail(&mut arena, unmapped)?;
    let h = vm.handle;
    let ram_end = GUEST_RAM_BASE + spec.ram;
    let first_unmapped = ram_end - unmapped * PAGE;
    let skipped_host = vm.ram.end - unmapped * PAGE;
    let mut vms = [vm];
    let mut result = (|| -> Result<(), Msg> {
        let hostile: [(u64, u64, u64, u64, i64, &str); 8] = [
            (h, ram_end, 1, 1, INVALID, "flags bit 0 set"),
            (h, ram_end, 1, 1 << 63, INVALID, "flags bit 63 set"),
            (h, ram_end + 8, 1, 0, INVALID, "an unaligned guest address"),
            (h, ram_end, 0, 0, INVALID, "0 pages"),
            (h, !0xfff, 2, 0, INVALID, "a range that wraps"),
            (h ^ (1 << 32), ram_end, 1, 0, INVALID, "a stale handle"),
            (h, ram_end, 1 << 50, 0, RANGE, "a range past the IPA space"),
            (h, 1 << 60, 1, 0, RANGE, "a guest address beyond the IPA space"),
        ];
        for (vm, ipa, pages, flags, want, what) in hostile {
            let c = declare(vm, ipa, pages, flags);
            ensure!(c == want, "VM_DECLARE_ZERO with {what} = {c}, want {want}");
        }
        let half = spec.ram / PAGE / 2;
        let c = declare(h, GUEST_RAM_BASE, half + 1, 0);
        ensure!(c == 0, "VM_DECLARE_ZERO of the first {} pages of RAM = {c}", half + 1);
        let c = declare(h, GUEST_RAM_BASE + half * PAGE, spec.ram / PAGE - half, 0);
        ensure!(c == 0, "VM_DECLARE_ZERO of the rest of RAM (overlapping) = {c}");
        Ok(())
    })();
    let mut given = 0;
    if result.is_ok() {
        let mut policy = GiveOnTouch {
            arena: &mut arena,
            from: first_unmapped,
            to: ram_end,
            given: 0,
        };
        result = super::donate_zeroed::run_with_policy(
            p,
            &mut vms,
            &mut policy,
            "(BAD_SIGNATURE here: the declared pages were not measured as the zeros the signer measured)",
            " (free-ram-zero: a page given after the first run was not zeroed)",
        );
        given = policy.given;
        if result.is_ok() && given != unmapped {
            result = Err(msg!("the guest touched {given} of the {unmapped} unmapped declared pages, expected all"));
        }
        if result.is_ok() {
            let c = declare(h, ram_end, 1, 0);
            if c != DENIED {
                result = Err(msg!("VM_DECLARE_ZERO after the first run = {c}, want DENIED ({DENIED})"));
            }
        }
    }
    // The skipped pages stay the host's, garbage filled: zero them so
    // `destroy` can check the VM's RAM range reads zero.
    arch::ram_zero(skipped_host, skipped_host + unmapped * PAGE);
    result = result.and(vms[0].destroy());
    result?;
    note!(
        "8 hostile VM_DECLARE_ZERO refused; RAM declared in 2 overlapping calls with {unmapped} pages unmapped: ran with the bundle's signature, the guest read 0 from the {given} pages given with garbage on its touch; DENIED after the first run"
    );
    Ok(())
}

/// `vm-declare-zero-refused`: `VM_DECLARE_ZERO` is `DENIED` for a VM that
/// is not protected and for a realm; a protected VM holds [`RUNS`]
/// separate runs and refuses a ninth with `NO_MEMORY` (a declaration that
/// merges into a run still succeeds). The runs, all past its RAM, are
/// measured as zero pages at the first run: the signature made for its RAM
/// alone is refused, `BAD_SIGNATURE`.
pub fn vm_declare_zero_refused(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("attacker")?;
    let ram_end = GUEST_RAM_BASE + spec.ram;
    let plain = Spec {
        protected: false,
        seed: 0x5eed_d2c1_0000_0000,
        ..spec
    };
    let mut vm = Vm::create(&mut arena, plain)?;
    let c = declare(vm.handle, ram_end, 1, 0);
    let result = if c == DENIED {
        Ok(())
    } else {
        Err(msg!("VM_DECLARE_ZERO for a VM that is not protected = {c}, want DENIED"))
    };
    result.and(vm.destroy())?;
    REALM_OVERRIDE.store(2, Ordering::Relaxed);
    let created = Vm::create(&mut arena, spec);
    REALM_OVERRIDE.store(0, Ordering::Relaxed);
    let mut vm = created?;
    let c = declare(vm.handle, ram_end, 1, 0);
    let result = if c == DENIED {
        Ok(())
    } else {
        Err(msg!("VM_DECLARE_ZERO for a realm VM = {c}, want DENIED"))
    };
    result.and(vm.destroy())?;

    let mut vm = Vm::create(&mut arena, spec)?;
    let h = vm.handle;
    let result = (|| -> Result<(), Msg> {
        for i in 0..RUNS {
            let c = declare(h, ram_end + 2 * i * PAGE, 1, 0);
            ensure!(c == 0, "VM_DECLARE_ZERO of separate run {i} = {c}");
        }
        let c = declare(h, ram_end + 2 * RUNS * PAGE, 1, 0);
        ensure!(c == NO_MEMORY, "VM_DECLARE_ZERO of separate run {RUNS} = {c}, want NO_MEMORY ({NO_MEMORY})");
        let c = declare(h, ram_end + PAGE, 1, 0);
        ensure!(c == 0, "VM_DECLARE_ZERO joining runs 0 and 1 with the list full = {c}");
        expect_bad_signature(&vm, "8 runs declared past the RAM the signer measured")
    })();
    result.and(vm.destroy())?;
    note!(
        "DENIED for a VM not protected and for a realm; {RUNS} runs held, a ninth NO_MEMORY, a joining one accepted; runs past RAM measured: BAD_SIGNATURE"
    );
    Ok(())
}

/// `vm-declare-zero-laundered`: the attacker's last [`TAIL`] pages are
/// declared zero and not given; then the host gives its first one with
/// plain `VM_DONATE` of garbage before the first run. A mapped page is
/// read whatever was declared: the signature made for zeros there is
/// refused, `BAD_SIGNATURE`. The host then evicts that page (`VM_EVICT`,
/// it is unmapped again and its content sealed for a later `VM_RESTORE`):
/// an unmapped declared page that holds content, never measured as zero,
/// so the first run is still refused; declaring it again is `DENIED`.
pub fn vm_declare_zero_laundered(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("attacker")?;
    let mut vm = attacker_with_tail(&mut arena, TAIL)?;
    let h = vm.handle;
    let ram_end = GUEST_RAM_BASE + spec.ram;
    let tail = ram_end - TAIL * PAGE;
    let tail_host = vm.ram.end - TAIL * PAGE;
    let sealed = arena.take(1)?;
    let result = (|| -> Result<(), Msg> {
        let c = declare(h, tail, TAIL, 0);
        ensure!(c == 0, "VM_DECLARE_ZERO of the last {TAIL} pages = {c}");
        let c = vm.donate_patterned_page(&mut arena, tail, GARBAGE)?;
        ensure!(c == 0, "VM_DONATE of a garbage page at a declared address = {c}");
        expect_bad_signature(&vm, "garbage given at a declared address")?;
        let r = call(HostCall::VmEvict, &[h, tail, sealed]);
        ensure!(r[0] == 0, "VM_EVICT of the garbage page before the first run = {}", r[0] as i64);
        expect_bad_signature(&vm, "the garbage page evicted from a declared address")?;
        let c = declare(h, tail, 1, 0);
        ensure!(c == DENIED, "VM_DECLARE_ZERO over the evicted page = {c}, want DENIED ({DENIED})");
        Ok(())
    })();
    // The tail stays the host's, garbage filled; the sealed copy too.
    arch::ram_zero(tail_host, tail_host + TAIL * PAGE);
    arch::ram_zero(sealed, sealed + PAGE);
    result.and(vm.destroy())?;
    note!(
        "garbage given at a declared address: BAD_SIGNATURE (read, not assumed zero); evicted from there: BAD_SIGNATURE, and declaring it DENIED"
    );
    Ok(())
}
