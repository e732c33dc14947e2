//! `vm-donate-zeroed` (issue 16): `VM_DONATE_ZEROED` gives the guest
//! pages that read zero however the host filled them, before the VM's
//! first run; hostile argument sets are refused with nothing changed.

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{DONATE_ZEROED_MAX_PAGES, HostCall};

use super::vm::{arena, expect_inaccessible, protected};
use super::vmm::run::{self, FaultAction, Policy};
use super::vmm::{PAGE, Spec, Vm, code};
use crate::arch;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, fail, msg, note};

const INVALID: i64 = Error::InvalidParameter.code();
const DENIED: i64 = Error::Denied.code();
const RANGE: i64 = Error::Range.code();

/// What the host writes into the page before donating it.
const GARBAGE: u64 = 0x6a7b_a6e0_0d0e_a7e5;

/// The attacker guest probes the page past its RAM: the host gave that page
/// with `VM_DONATE_ZEROED` before the first run, so both probes complete
/// and read 0 (the guest reports them as failures, which are the expected
/// outcome here). Any other fault is declined.
struct Predonated {
    ipa: u64,
}

impl Policy for Predonated {
    fn excuse(&mut self, _vm: usize, text: &str) -> bool {
        let ipa = self.ipa;
        text == msg!("GUEST-FAIL read-past-ram: access to {ipa:#x} completed, read 0x0").as_str()
            || text
                == msg!("GUEST-FAIL write-past-ram: access to {ipa:#x} completed, read 0x0")
                    .as_str()
    }

    fn memory_fault(
        &mut self,
        _vms: &mut [Vm],
        _vm: usize,
        ipa: u64,
        _write: bool,
    ) -> Result<FaultAction, Msg> {
        ensure!(
            ipa != self.ipa,
            "EXIT_MEMORY_FAULT at {ipa:#x}, the page donated before the run"
        );
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
            "after the refused {what}, word {offset:#x} of the host page reads {word:#x}"
        );
    }
    arch::ram_write(page, GARBAGE);
    Ok(())
}

/// `vm-donate-zeroed`: a non-protected `attacker` VM (its RAM donated
/// with plain `VM_DONATE`, full of a host pattern past the image), and one
/// page at the end of its RAM that the host filled with garbage and gave
/// with `VM_DONATE_ZEROED` before the first run. The guest's
/// `read-past-ram` must read 0 there (plain `VM_DONATE` would show the
/// garbage). Before that, hostile argument sets are refused and leave the
/// page the host's, unchanged.
pub fn vm_donate_zeroed(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = Spec {
        protected: false,
        sign: false,
        ..protected("attacker")?
    };
    let ram_end = (GUEST_RAM_BASE + spec.ram).next_multiple_of(PAGE);
    let mut vms = [Vm::create(&mut arena, spec)?];
    let vm = &mut vms[0];
    let h = vm.handle;
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
            "at a mapped guest address",
        ),
        (
            &[h, vm.ram.start, 1, ram_end, 0],
            DENIED,
            "a page the VM owns already",
        ),
        (
            &[h, page, 1, 1 << 60, 0],
            RANGE,
            "beyond the guest address space",
        ),
    ];
    let mut result = Ok(());
    for (args, want, what) in hostile {
        let c = code(HostCall::VmDonateZeroed, args);
        if c != want {
            result = Err(msg!("VM_DONATE_ZEROED with {what} = {c}, want {want}"));
            break;
        }
        if let Err(e) = still_the_hosts(page, what) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        let c = code(HostCall::VmDonateZeroed, &[h, page, 1, ram_end, 0]);
        if c == 0 {
            vm.extra[vm.extra_count] = (page, ram_end);
            vm.extra_count += 1;
            result = expect_inaccessible(page);
        } else {
            result = Err(msg!(
                "VM_DONATE_ZEROED of one garbage page at {ram_end:#x} = {c}"
            ));
        }
    }
    if result.is_ok() {
        let mut policy = Predonated { ipa: ram_end };
        result = run::run(p, &mut vms, &[&[0]], &mut policy, 8_000).and_then(|r| {
            if let Some(problem) = &r.problems[0] {
                fail!("{problem}");
            }
            if let Some(e) = &r.tallies[0].policy_error {
                fail!("{e}");
            }
            let t = &r.tallies[0];
            if let Some(first) = &t.first_fail {
                fail!("the guest reported {first}");
            }
            ensure!(
                r.states[0] == run::state::SYSTEM_OFF && t.done.is_some(),
                "the guest did not run to GUEST-DONE and SYSTEM_OFF (state {})",
                r.states[0]
            );
            ensure!(
                t.excused == 2,
                "{} of the 2 expected probe results seen (read 0x0, then a write, at {ram_end:#x}); a read of {GARBAGE:#x} means the hypervisor did not zero the page",
                t.excused
            );
            Ok(())
        });
    }
    // Every page the VM had, the donated one too, reads zero after this.
    result = result.and(vms[0].destroy());
    result?;
    note!(
        "8 hostile VM_DONATE_ZEROED refused with nothing changed; the guest read 0 from a page the host filled with {GARBAGE:#x}"
    );
    Ok(())
}
