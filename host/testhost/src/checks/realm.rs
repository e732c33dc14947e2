//! Realm VMs (issue 12): the `realm` guest runs as a realm VM (`VM_CREATE`
//! config bit 2) and checks RSI 1.0 from the inside
//! (`guest/realm/src/main.rs`); the test host, as the hostile VMM, checks
//! the IPA split from the outside:
//!
//! - when the guest announces a granule it set EMPTY
//!   (`GUEST-REALM-SHARED <ipa>`), the host can read that page: it holds
//!   the mark the guest wrote through the alias and not one word of the
//!   secret the guest kept there while it was RAM (zeroed on the change);
//!   the next page, set EMPTY in the same call, is all zero; the page the
//!   guest keeps protected just below stays out of the host's reach; the
//!   host writes a mark the guest must then see through the alias;
//! - once the guest set the granule back to RAM (`GUEST-PASS
//!   rsi-ipa-state-set-ram`) the host has lost the page again;
//! - the guest's one access to the alias of a RAM granule is a memory
//!   fault the VMM declines (the guest takes an abort);
//! - the guest's CCA token and challenge are printed for `cargo xtask`,
//!   which verifies them with `rampart attest-verify` on the build machine.

use rampart_abi::guest::GUEST_RAM_BASE;

use super::vb::stays_refused;
use super::vm::{expect_inaccessible, protected};
use super::vmm::run::{FaultAction, Policy};
use super::vmm::{PAGE, REALM_OVERRIDE, Vm};
use crate::arch::{self, Access};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, fail, msg, note};

/// `guest/realm`'s mark in the shared page.
const SHARED_MARK: &[u8; 32] = b"rampart realm shared page v1 ::)";
/// The guest's secret (it must never reach the host).
const SECRET: &[u8; 32] = b"realm secret: never the host's! ";
/// What the host writes at offset 2048 of the shared page.
const HOST_MARK: u64 = 0x686f_7374_2077_6173;

struct RealmPolicy {
    /// The granule the guest shared (guest-physical) and its host address.
    shared: Option<(u64, u64)>,
    /// The host lost the page again after the guest took it back.
    taken_back: bool,
    /// Memory faults declined (the alias of a RAM granule).
    declined: u32,
    token_hex_len: usize,
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

fn parse_ipa(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim(), 16).ok()
}

impl RealmPolicy {
    fn shared_page(&mut self, vms: &mut [Vm], vm: usize, ipa: u64) -> Result<(), Msg> {
        let ram = vms[vm].ram;
        ensure!(
            ipa >= GUEST_RAM_BASE
                && ipa.is_multiple_of(PAGE)
                && ipa + 2 * PAGE <= GUEST_RAM_BASE + ram.size(),
            "GUEST-REALM-SHARED {ipa:#x} is not a granule of its RAM"
        );
        let pa = ram.start + (ipa - GUEST_RAM_BASE);
        // The host may read it now: first a probe, so a refusal is a
        // failure and not a crash of the test host.
        let probe = arch::probe(Access::Load, pa, 0);
        ensure!(
            probe.fault.is_none(),
            "the host cannot read the page the realm shared ({pa:#x}): {:?}",
            probe.fault
        );
        let mark_ok =
            (0..4).all(|i| arch::ram_read(pa + 8 * i) == word(&SHARED_MARK[8 * i as usize..]));
        ensure!(
            mark_ok,
            "the shared page at {pa:#x} does not start with the guest's mark"
        );
        let secret_words: [u64; 4] = core::array::from_fn(|i| word(&SECRET[8 * i..]));
        for page in [pa, pa + PAGE] {
            let probe = arch::probe(Access::Load, page, 0);
            ensure!(
                probe.fault.is_none(),
                "the host cannot read shared page {page:#x}"
            );
            for at in (page..page + PAGE).step_by(8) {
                let v = arch::ram_read(at);
                ensure!(
                    !secret_words.contains(&v),
                    "the realm's secret is in the page it shared, at {at:#x}: not zeroed on RAM -> EMPTY"
                );
                ensure!(
                    page == pa || v == 0,
                    "the second shared page holds {v:#x} at {at:#x}, not zero"
                );
            }
        }
        // The guest's protected page below (its token granule) stays out of
        // reach.
        expect_inaccessible(pa - PAGE)
            .map_err(|e| msg!("the realm's protected page next to the shared one: {e}"))?;
        let store = arch::probe(Access::Store, pa + 2048, HOST_MARK);
        ensure!(
            store.fault.is_none(),
            "the host cannot write the page the realm shared"
        );
        self.shared = Some((ipa, pa));
        Ok(())
    }
}

impl Policy for RealmPolicy {
    fn line(&mut self, vms: &mut [Vm], vm: usize, text: &str) -> Result<(), Msg> {
        if let Some(rest) = text.strip_prefix("GUEST-REALM-SHARED ") {
            let Some(ipa) = parse_ipa(rest) else {
                fail!("GUEST-REALM-SHARED {rest}: not hex")
            };
            self.shared_page(vms, vm, ipa)?;
        } else if text == "GUEST-PASS rsi-ipa-state-set-ram" {
            let Some((_, pa)) = self.shared else {
                fail!("the guest took back a page it never announced")
            };
            expect_inaccessible(pa)
                .map_err(|e| msg!("the granule the realm set back to RAM: {e}"))?;
            self.taken_back = true;
        } else if let Some(hex) = text.strip_prefix("GUEST-CCA-TOKEN ") {
            self.token_hex_len += hex.trim().len();
        }
        Ok(())
    }

    fn memory_fault(
        &mut self,
        _vms: &mut [Vm],
        _vm: usize,
        ipa: u64,
        _write: bool,
    ) -> Result<FaultAction, Msg> {
        let Some((shared, _)) = self.shared else {
            fail!("EXIT_MEMORY_FAULT at {ipa:#x} before any shared page")
        };
        // The alias of the granule the guest took back: `shared | bit`.
        let alias_of_it = ipa > shared && (ipa ^ shared).is_power_of_two();
        ensure!(
            alias_of_it && self.taken_back && self.declined == 0,
            "EXIT_MEMORY_FAULT at {ipa:#x}: not the one access to the alias of {shared:#x}"
        );
        self.declined += 1;
        Ok(FaultAction::Decline)
    }
}

/// `realm-rsi`: see the module.
pub fn realm_rsi(p: &Platform) -> Result<(), Msg> {
    let mut policy = RealmPolicy {
        shared: None,
        taken_back: false,
        declined: 0,
        token_hex_len: 0,
    };
    super::vm::solo(p, protected("realm")?, &mut policy, 20_000)?;
    ensure!(policy.shared.is_some(), "the realm guest shared no page");
    ensure!(
        policy.taken_back,
        "the realm guest did not take its page back"
    );
    ensure!(
        policy.declined == 1,
        "the realm guest's alias access did not fault"
    );
    ensure!(
        policy.token_hex_len > 0,
        "the realm guest printed no GUEST-CCA-TOKEN"
    );
    note!(
        "realm: RSI answered, a granule went RAM -> EMPTY -> RAM zeroed both ways, the host saw only what the guest shared; a {}-byte CCA token (verified by `cargo xtask`)",
        policy.token_hex_len / 2
    );
    Ok(())
}

/// `realm-measured`: the guest ABI is measured. The `realm` guest (signed
/// as a realm, bundle flags 5) created without the realm bit, and the
/// `hello` guest (signed for pKVM, flags 1) created as a realm, are both
/// `BAD_SIGNATURE` at every `VCPU_RUN`, however often the signature is
/// given; each VM is destroyed, its pages zeroed.
pub fn realm_measured(p: &Platform) -> Result<(), Msg> {
    use core::sync::atomic::Ordering;
    let result = (|| {
        REALM_OVERRIDE.store(1, Ordering::Relaxed);
        stays_refused(
            p,
            protected("realm")?,
            &|_| Ok(()),
            "the realm guest (signed as a realm) created without the realm bit",
        )?;
        REALM_OVERRIDE.store(2, Ordering::Relaxed);
        stays_refused(
            p,
            protected("hello")?,
            &|_| Ok(()),
            "the hello guest (signed for pKVM) created as a realm",
        )
    })();
    REALM_OVERRIDE.store(0, Ordering::Relaxed);
    result?;
    note!("a realm image run as pKVM and a pKVM image run as a realm: BAD_SIGNATURE");
    Ok(())
}
