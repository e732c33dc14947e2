//! `vm-donate-zeroed` (issue 16): `VM_DONATE_ZEROED` gives a guest pages
//! that read zero however the host filled them, before the VM's first
//! run; hostile argument sets are refused with nothing changed.

use core::sync::atomic::Ordering;

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{DONATE_ZEROED_MAX_PAGES, HostCall};

use super::vm::{arena, expect_inaccessible, protected};
use super::vmm::run::{self, FaultAction, Policy};
use super::vmm::{PAGE, Vm, ZEROED_TAIL_GARBAGE, ZEROED_TAIL_PAGES, code};
use crate::arch;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, fail, msg, note};

const INVALID: i64 = Error::InvalidParameter.code();
const DENIED: i64 = Error::Denied.code();
const RANGE: i64 = Error::Range.code();

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
    let (mut arena, _) = arena(p)?;
    let spec = protected("attacker")?;
    ZEROED_TAIL_PAGES.store(TAIL, Ordering::Relaxed);
    let created = Vm::create(&mut arena, spec);
    ZEROED_TAIL_PAGES.store(0, Ordering::Relaxed);
    let mut vms = [created?];
    let vm = &mut vms[0];
    let h = vm.handle;
    let tail_host = vm.ram.end - TAIL * PAGE;
    let ram_end = GUEST_RAM_BASE + spec.ram;
    let mut result = expect_inaccessible(tail_host);
    let page = arena.take(1)?;
    for offset in (0..PAGE).step_by(8) {
        arch::ram_write(page + offset, GARBAGE ^ offset);
    }
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
        let mut policy = DeclineAll;
        result = run::run(p, &mut vms, &[&[0]], &mut policy, 8_000).and_then(|r| {
            if let Some(problem) = &r.problems[0] {
                fail!("{problem} (BAD_SIGNATURE here: the hypervisor did not zero the pages)");
            }
            let t = &r.tallies[0];
            if let Some(first) = &t.first_fail {
                fail!("the guest reported {first}");
            }
            ensure!(
                r.states[0] == run::state::SYSTEM_OFF && t.done.is_some() && t.passed > 0,
                "the guest did not run to GUEST-DONE and SYSTEM_OFF (state {}, {} passed)",
                r.states[0],
                t.passed
            );
            Ok(())
        });
    }
    // Every page the VM had, the zeroed ones too, reads zero after this.
    result = result.and(vms[0].destroy());
    result?;
    note!(
        "8 hostile VM_DONATE_ZEROED refused with nothing changed; the protected guest ran (its measurement has them zero) and read 0 from {TAIL} pages the host filled with {ZEROED_TAIL_GARBAGE:#x}.."
    );
    Ok(())
}
