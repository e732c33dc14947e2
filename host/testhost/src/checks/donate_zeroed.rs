//! `vm-donate-zeroed` (issue 16): `VM_DONATE_ZEROED` gives a guest pages
//! that read zero however the host filled them, before the VM's first
//! run; hostile argument sets are refused with nothing changed.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{DONATE_ZEROED_MAX_PAGES, HostCall};

use super::vm::{arena, expect_inaccessible, protected};
use super::vmm::run::{self, FaultAction, Policy};
use super::vmm::{
    Arena, PAGE, Vm, ZEROED_TAIL_GARBAGE, ZEROED_TAIL_PAGES, ZEROED_TAIL_SKIP, call, code,
};
use crate::arch;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, fail, msg, note};

const INVALID: i64 = Error::InvalidParameter.code();
const DENIED: i64 = Error::Denied.code();
const RANGE: i64 = Error::Range.code();
const BAD_SIGNATURE: i64 = Error::BadSignature.code();

/// Pages at the end of the attacker's RAM given with `VM_DONATE_ZEROED`.
const TAIL: u64 = 4;

/// What the host writes into the extra page of the hostile calls.
const GARBAGE: u64 = 0x6a7b_a6e0_0d0e_a7e5;

/// The attacker's announced probes outside its RAM fault; each is declined
/// (the guest takes an abort, which it expects).
struct DeclineAll;

impl Policy for DeclineAll {
    fn memory_fault(
        &mut self,
        _vms: &mut [Vm],
        _vm: usize,
        _ipa: u64,
        _write: bool,
    ) -> Result<FaultAction, Msg> {
        Ok(FaultAction::Decline)
    }
}

/// Every word of the host page `page` is still `GARBAGE ^ offset`, and the
/// host can still write it: a refused call changed nothing.
fn still_the_hosts(page: u64, what: &str) -> Result<(), Msg> {
    for offset in (0..PAGE).step_by(8) {
        let word = arch::ram_read(page + offset);
        ensure!(
            word == GARBAGE ^ offset,
            "after the refused VM_DONATE_ZEROED with {what}, word {offset:#x} of the host page reads {word:#x}"
        );
    }
    arch::ram_write(page, GARBAGE);
    Ok(())
}

/// Fills the host page `page` with `GARBAGE ^ offset` in every word.
fn fill_with_garbage(page: u64) {
    for offset in (0..PAGE).step_by(8) {
        arch::ram_write(page + offset, GARBAGE ^ offset);
    }
}

/// Runs the VM in `vms` (the `attacker`, its zeroed tail in place) to
/// `GUEST-DONE` and `SYSTEM_OFF`, declining every fault: its
/// `free-ram-zero` read every word past its image zero. A refused run is
/// reported with `refused` after it.
fn run_to_system_off(p: &Platform, vms: &mut [Vm; 1], refused: &str) -> Result<(), Msg> {
    run_with_policy(p, vms, &mut DeclineAll, refused, "")
}

/// [`run_to_system_off`] with `policy` answering the guest's faults (also
/// `vm-declare-zero`'s); `failed` follows a failure the guest reported.
pub(super) fn run_with_policy(
    p: &Platform,
    vms: &mut [Vm; 1],
    policy: &mut dyn Policy,
    refused: &str,
    failed: &str,
) -> Result<(), Msg> {
    let r = run::run(p, vms, &[&[0]], policy, 8_000)?;
    if let Some(problem) = &r.problems[0] {
        fail!("{problem} {refused}");
    }
    let t = &r.tallies[0];
    if let Some(e) = &t.policy_error {
        fail!("{e}");
    }
    if let Some(first) = &t.first_fail {
        fail!("the guest reported {first}{failed}");
    }
    ensure!(
        r.states[0] == run::state::SYSTEM_OFF && t.done.is_some() && t.passed > 0,
        "the guest did not run to GUEST-DONE and SYSTEM_OFF (state {}, {} passed)",
        r.states[0],
        t.passed
    );
    Ok(())
}

/// The protected `attacker` VM with its last [`TAIL`] RAM pages filled
/// by the host with garbage and the first `TAIL - skip` of them given with
/// `VM_DONATE_ZEROED` (the rest of its RAM with `VM_DONATE`, as always;
/// the last `skip` stay the host's); the arena it came from and the guest
/// address its RAM ends at.
fn attacker_with_zeroed_tail(p: &Platform, skip: u64) -> Result<(Arena, Vm, u64), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("attacker")?;
    ZEROED_TAIL_PAGES.store(TAIL, Ordering::Relaxed);
    ZEROED_TAIL_SKIP.store(skip, Ordering::Relaxed);
    let created = Vm::create(&mut arena, spec);
    ZEROED_TAIL_PAGES.store(0, Ordering::Relaxed);
    ZEROED_TAIL_SKIP.store(0, Ordering::Relaxed);
    Ok((arena, created?, GUEST_RAM_BASE + spec.ram))
}

/// `vm-donate-zeroed`: the protected `attacker` VM, its last [`TAIL`] RAM
/// pages filled by the host with garbage and given with
/// `VM_DONATE_ZEROED` (the rest with `VM_DONATE`, as always). The signed
/// measurement has those pages zero, so the VM runs only if EL2 zeroed
/// them, and the guest's own `free-ram-zero` reads every word past its
/// image, those pages included, before it writes anything (with plain
/// `VM_DONATE` the first run is refused, `BAD_SIGNATURE`). Before the run,
/// hostile argument sets are refused and leave a garbage-filled host page
/// the host's, unchanged.
pub fn vm_donate_zeroed(p: &Platform) -> Result<(), Msg> {
    let (mut arena, vm, ram_end) = attacker_with_zeroed_tail(p, 0)?;
    let h = vm.handle;
    let tail_host = vm.ram.end - TAIL * PAGE;
    let mut vms = [vm];
    let mut result = expect_inaccessible(tail_host);
    let page = arena.take(1)?;
    fill_with_garbage(page);
    let too_many = DONATE_ZEROED_MAX_PAGES + 1;
    let hostile: [(&[u64], i64, &str); 8] = [
        (&[h, page, 1, ram_end, 1], INVALID, "flags bit 0 set"),
        (&[h, page, 1, ram_end, 1 << 63], INVALID, "flags bit 63 set"),
        (
            &[h, page, too_many, ram_end, 0],
            INVALID,
            "one page more than the limit",
        ),
        (
            &[h, page, 1, ram_end + 8, 0],
            INVALID,
            "an unaligned guest address",
        ),
        (
            &[h ^ (1 << 32), page, 1, ram_end, 0],
            INVALID,
            "a stale handle",
        ),
        (
            &[h, page, 1, GUEST_RAM_BASE, 0],
            DENIED,
            "a mapped guest address",
        ),
        (
            &[h, tail_host, 1, ram_end, 0],
            DENIED,
            "a page the VM owns already",
        ),
        (
            &[h, page, 1, 1 << 60, 0],
            RANGE,
            "a guest address beyond the IPA space",
        ),
    ];
    for (args, want, what) in hostile {
        if result.is_err() {
            break;
        }
        let c = code(HostCall::VmDonateZeroed, args);
        result = if c == want {
            still_the_hosts(page, what)
        } else {
            Err(msg!("VM_DONATE_ZEROED with {what} = {c}, want {want}"))
        };
    }
    if result.is_ok() {
        result = run_to_system_off(
            p,
            &mut vms,
            "(BAD_SIGNATURE here: the hypervisor did not zero the pages)",
        );
    }
    // Every page the VM had, the zeroed ones too, reads zero after this.
    result = result.and(vms[0].destroy());
    result?;
    note!(
        "8 hostile VM_DONATE_ZEROED refused with nothing changed; the protected guest ran (its measurement has them zero) and read 0 from {TAIL} pages the host filled with {ZEROED_TAIL_GARBAGE:#x}.."
    );
    Ok(())
}

/// The first `VCPU_RUN` of vCPU 0 must be refused with `BAD_SIGNATURE`:
/// the hypervisor measured something other than the signed zero pages.
fn expect_bad_signature(vm: &Vm, what: &str) -> Result<(), Msg> {
    let c = call(HostCall::VcpuRun, &[vm.handle, 0, 0])[0] as i64;
    ensure!(
        c == BAD_SIGNATURE,
        "{what}: the first VCPU_RUN = {c}, expected BAD_SIGNATURE ({BAD_SIGNATURE}){}",
        if c == 0 {
            ": the VM ran, measured as if the page were zero"
        } else {
            ""
        }
    );
    Ok(())
}

/// `vm-known-zero-refused` (issue 16): the hypervisor measures pages it
/// zeroed itself without reading them; only a `VM_DONATE_ZEROED` that
/// succeeded may make it skip them. The attacker's last RAM page is left
/// out of the zeroed tail; `VM_DONATE_ZEROED` calls naming its guest
/// address are refused (a page the VM owns, a flag, a stale handle), then
/// plain `VM_DONATE` puts a host page full of garbage there. The signed
/// measurement has that page zero, so the first run must be refused with
/// `BAD_SIGNATURE`: a refused call recorded nothing, and the page right
/// after the zeroed run is not taken for a zeroed one.
pub fn vm_known_zero_refused(p: &Platform) -> Result<(), Msg> {
    let (mut arena, mut vm, ram_end) = attacker_with_zeroed_tail(p, 1)?;
    let h = vm.handle;
    let last_ipa = ram_end - PAGE;
    let last_host = vm.ram.end - PAGE;
    let owned = last_host - PAGE;
    let steps = |vm: &mut Vm, arena: &mut Arena| -> Result<(), Msg> {
        let hostile: [(&[u64], i64, &str); 3] = [
            (&[h, owned, 1, last_ipa, 0], DENIED, "a page the VM owns"),
            (&[h, last_host, 1, last_ipa, 1], INVALID, "flags bit 0 set"),
            (&[h ^ (1 << 32), last_host, 1, last_ipa, 0], INVALID, "a stale handle"),
        ];
        for (args, want, what) in hostile {
            let c = code(HostCall::VmDonateZeroed, args);
            ensure!(c == want, "VM_DONATE_ZEROED at the last page with {what} = {c}, want {want}");
        }
        let c = vm.donate_patterned_page(arena, last_ipa, GARBAGE)?;
        ensure!(c == 0, "VM_DONATE of a garbage page at the last page = {c}");
        expect_bad_signature(vm, "garbage given with VM_DONATE after refused VM_DONATE_ZEROED")
    };
    let result = steps(&mut vm, &mut arena);
    // The skipped page is still the host's, with garbage in it: zero it so
    // `destroy` can check the VM's RAM range reads zero.
    arch::ram_zero(last_host, last_host + PAGE);
    result.and(vm.destroy())?;
    note!(
        "3 VM_DONATE_ZEROED refused at the last page, then garbage given there with VM_DONATE: first run BAD_SIGNATURE (measured, not assumed zero)"
    );
    Ok(())
}

/// `vm-known-zero-evicted` (issue 16): a page of the zeroed tail evicted
/// before the first run (`VM_EVICT`) is no longer in the VM: the first run
/// must be refused (`BAD_SIGNATURE`: the page is missing from the
/// measurement, not assumed zero). Restored (`VM_RESTORE`, into a fresh
/// host page full of garbage) the page is the zero page it was, read at
/// the first run, and the VM runs and finds its memory zero.
pub fn vm_known_zero_evicted(p: &Platform) -> Result<(), Msg> {
    let (mut arena, vm, ram_end) = attacker_with_zeroed_tail(p, 0)?;
    let h = vm.handle;
    let ipa = ram_end - 2 * PAGE;
    let sealed = arena.take(1)?;
    let fresh = arena.take(1)?;
    fill_with_garbage(fresh);
    let mut vms = [vm];
    let mut result = (|| -> Result<(u64, [u64; 2]), Msg> {
        let r = call(HostCall::VmEvict, &[h, ipa, sealed]);
        ensure!(r[0] == 0, "VM_EVICT of a zeroed page before the first run = {}", r[0] as i64);
        expect_bad_signature(&vms[0], "a zeroed page evicted")?;
        Ok((r[1], [r[2], r[3]]))
    })()
    .and_then(|(version, tag)| {
        let c = code(HostCall::VmRestore, &[h, ipa, sealed, fresh, version, tag[0], tag[1]]);
        ensure!(c == 0, "VM_RESTORE of the evicted zero page = {c}");
        Ok(())
    });
    if result.is_ok() {
        result = run_to_system_off(p, &mut vms, "after the restore");
    }
    result = result.and(vms[0].destroy());
    // The fresh page was the VM's: zeroed at VM_DESTROY.
    if result.is_ok() && arch::ram_find_nonzero(fresh, fresh + PAGE).is_some() {
        result = Err(msg!("the restored page {fresh:#x} is not zero after VM_DESTROY"));
    }
    arch::ram_zero(sealed, sealed + PAGE);
    result?;
    note!(
        "zeroed page evicted before the first run: BAD_SIGNATURE; restored into a garbage-filled page: ran and read zero"
    );
    Ok(())
}
