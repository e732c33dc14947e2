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
//!   host writes a mark the guest must then see through the alias; a
//!   `VM_DONATE` at the granule's protected IPA is `DENIED` (the host may
//!   not make it RAM behind the guest's back);
//! - once the guest set the granule back to RAM (`GUEST-PASS
//!   rsi-ipa-state-set-ram`) the host has lost the page again;
//! - the guest's one access to the alias of a RAM granule is a memory
//!   fault the VMM declines (the guest takes an abort);
//! - the guest's CCA token and challenge are printed for `cargo xtask`,
//!   which verifies them with `rampart attest-verify` on the build machine;
//! - issue 12, `RSI_HOST_CALL`: the guest's one `EXIT_HOST_CALL` carries its
//!   immediate and its 31 registers (`VCPU_HOST_CALL_GET`); the host
//!   answers them (`VCPU_HOST_CALL_SET`), also trying past the 31 and
//!   with bad windows, another vCPU and a stale handle (all refused); while
//!   the realm is stopped there, `VM_EXPORT` of it is `DENIED`;
//! - issue 12, two vCPUs racing: vCPU 1 hammers a granule (protected IPA)
//!   while vCPU 0 flips it EMPTY and RAM 64 times (`guest/realm` step 8);
//!   on each `GUEST-REALM-RACE <n>` (the granule shared) the host reads it,
//!   never finding vCPU 1's secret, and fills it with its own word, which
//!   neither vCPU may read once the granule is RAM again. vCPU 1's faults
//!   on the unmapped granule are declined, on whichever CPU runs it;
//! - issue 12, eviction: on `GUEST-REALM-EVICT <ipa>` the host evicts that
//!   granule (`VM_EVICT`), and the guest must still find it RAM (not EMPTY,
//!   and no RIPAS change accepted); on `GUEST-REALM-RESTORE` the host
//!   restores it and the guest finds its data.

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::HostCall;

use super::vb::stays_refused;
use super::vm::{arena, expect_inaccessible, protected, run_and_destroy};
use super::vmm::run::{FaultAction, Policy, SECONDARY_DECLINED, SECONDARY_DECLINES};
use core::sync::atomic::Ordering;
use super::vmm::{PAGE, REALM_OVERRIDE, Vm, call, code};
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
    /// Two host pages for the eviction (sealed, fresh) and two for the
    /// export attempt's buffer.
    pool: u64,
    /// The granule evicted: `(ipa, version, tag)`.
    evicted: Option<(u64, u64, [u64; 2])>,
    restored: bool,
    host_calls: u32,
    /// The racing granule (guest-physical) once announced, and how many
    /// times the host found it shared, and faults declined on it here.
    race: Option<u64>,
    race_reads: u32,
    race_declined: u32,
}

/// `GUEST-REALM-RACE` lines: every 8th of 64 rounds.
const RACE_ROUNDS_CHECKED: u64 = 64 / 8;
/// `guest/realm`'s words in the racing granule.
const RACE_SECRET: u64 = 0x7365_6372_6574_2121;
const RACE_HOST: u64 = 0x686f_7374_6461_7461;

/// What `guest/realm` passes and expects in its host call.
const HOST_CALL_IMM: u64 = 0x5a17;
const HOST_CALL_IN: u64 = 0x4843_0000;
const HOST_CALL_OUT: u64 = 0x414e_0000;
/// What a hostile answer writes past `gprs[30]` (must land nowhere).
const PAST_THE_END: u64 = 0xbad0_bad0_bad0_bad0;
const GPRS: u64 = rampart_abi::rsi::host_call::GPRS as u64;

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
        // The granule is EMPTY now: the host may not make it RAM behind the
        // guest's back by giving the realm a page at its protected IPA
        // (only the guest's RSI_IPA_STATE_SET may). Refused, nothing changed:
        // the page stays the host's.
        let spare = self.pool + PAGE;
        let donate = code(HostCall::VmDonate, &[vms[vm].handle, spare, 1, ipa]);
        ensure!(
            donate == Error::Denied.code(),
            "VM_DONATE of a host page at the protected IPA {ipa:#x} of a granule the running realm set EMPTY = {donate}, want DENIED ({})",
            Error::Denied.code()
        );
        let probe = arch::probe(Access::Load, spare, 0);
        ensure!(
            probe.fault.is_none(),
            "the page a refused VM_DONATE named ({spare:#x}) is no longer the host's"
        );
        self.shared = Some((ipa, pa));
        Ok(())
    }
}

impl RealmPolicy {
    fn evict(&mut self, vms: &mut [Vm], vm: usize, ipa: u64) -> Result<(), Msg> {
        let v = &vms[vm];
        ensure!(
            ipa >= GUEST_RAM_BASE && ipa.is_multiple_of(PAGE) && ipa + PAGE <= GUEST_RAM_BASE + v.ram.size(),
            "GUEST-REALM-EVICT {ipa:#x} is not a granule of its RAM"
        );
        ensure!(self.evicted.is_none(), "a second GUEST-REALM-EVICT");
        let r = call(HostCall::VmEvict, &[v.handle, ipa, self.pool]);
        ensure!(r[0] == 0, "VM_EVICT of the realm's granule {ipa:#x} = {}", r[0] as i64);
        self.evicted = Some((ipa, r[1], [r[2], r[3]]));
        Ok(())
    }

    /// `GUEST-REALM-RACE <n>`: the granule is shared now (vCPU 0 stopped
    /// between its two changes; vCPU 1 may be running on another CPU).
    fn race_round(&mut self, vms: &mut [Vm], vm: usize, text: &str) -> Result<(), Msg> {
        let Some(ipa) = self.race else {
            fail!("{text} before GUEST-REALM-RACE-PAGE")
        };
        let pa = vms[vm].ram.start + (ipa - GUEST_RAM_BASE);
        for at in (pa..pa + PAGE).step_by(8) {
            let load = arch::probe(Access::Load, at, 0);
            ensure!(
                load.fault.is_none(),
                "{text}: the host cannot read the shared granule at {at:#x}: {:?}",
                load.fault
            );
            ensure!(
                load.register != RACE_SECRET,
                "{text}: the realm's private word is in the granule it shared, at {at:#x}"
            );
            let store = arch::probe(Access::Store, at, RACE_HOST);
            ensure!(store.fault.is_none(), "{text}: the host cannot write the shared granule");
        }
        self.race_reads += 1;
        Ok(())
    }

    fn restore(&mut self, vms: &mut [Vm], vm: usize) -> Result<(), Msg> {
        let Some((ipa, version, tag)) = self.evicted else {
            fail!("GUEST-REALM-RESTORE before GUEST-REALM-EVICT")
        };
        let handle = vms[vm].handle;
        let c = code(
            HostCall::VmRestore,
            &[handle, ipa, self.pool, self.pool + PAGE, version, tag[0], tag[1]],
        );
        ensure!(c == 0, "VM_RESTORE of the realm's granule {ipa:#x} = {c}");
        self.restored = true;
        Ok(())
    }
}

impl Policy for RealmPolicy {
    fn host_call(&mut self, vms: &mut [Vm], vm: usize, vcpu: usize, imm: u64) -> Result<(), Msg> {
        let handle = vms[vm].handle;
        self.host_calls += 1;
        ensure!(
            vcpu == 0 && imm == HOST_CALL_IMM && self.host_calls == 1,
            "EXIT_HOST_CALL #{} from vCPU {vcpu} with imm {imm:#x}, want one from vCPU 0 with {HOST_CALL_IMM:#x}",
            self.host_calls
        );
        // The guest's registers, 8 at a time.
        for first in (0..GPRS).step_by(8) {
            let r = call(HostCall::VcpuHostCallGet, &[handle, 0, first]);
            ensure!(r[0] == 0, "VCPU_HOST_CALL_GET(first {first}) = {}", r[0] as i64);
            for (k, &got) in r[1..9].iter().enumerate() {
                let i = first + k as u64;
                let want = if i < GPRS { HOST_CALL_IN + i } else { 0 };
                ensure!(got == want, "VCPU_HOST_CALL_GET: gprs[{i}] = {got:#x}, want {want:#x}");
            }
        }
        // Hostile answers: a window past the 31 or not on a boundary, a
        // vCPU with no host call, a stale handle.
        let invalid = Error::InvalidParameter.code();
        let denied = Error::Denied.code();
        let cases: [(&str, HostCall, [u64; 3], i64); 5] = [
            ("GET first 32", HostCall::VcpuHostCallGet, [handle, 0, 32], invalid),
            ("SET first 4", HostCall::VcpuHostCallSet, [handle, 0, 4], invalid),
            ("GET of vCPU 1", HostCall::VcpuHostCallGet, [handle, 1, 0], denied),
            ("SET of vCPU 9", HostCall::VcpuHostCallSet, [handle, 9, 0], invalid),
            ("GET with a stale handle", HostCall::VcpuHostCallGet, [handle ^ (1 << 32), 0, 0], invalid),
        ];
        for (what, which, args, want) in cases {
            let got = code(which, &args);
            ensure!(got == want, "VCPU_HOST_CALL {what} = {got}, want {want}");
        }
        // The answer; the last window's eighth value would be gprs[31].
        for first in (0..GPRS).step_by(8) {
            let mut args = [0u64; 11];
            args[..3].copy_from_slice(&[handle, 0, first]);
            for k in 0..8 {
                let i = first + k;
                args[3 + k as usize] = if i < GPRS { HOST_CALL_OUT + i } else { PAST_THE_END };
            }
            let c = code(HostCall::VcpuHostCallSet, &args);
            ensure!(c == 0, "VCPU_HOST_CALL_SET(first {first}) = {c}");
        }
        let back = call(HostCall::VcpuHostCallGet, &[handle, 0, 24]);
        ensure!(
            back[0] == 0 && back[7] == HOST_CALL_OUT + 30 && back[8] == 0,
            "VCPU_HOST_CALL_GET after SET: gprs[30] {:#x}, past the end {:#x}",
            back[7],
            back[8]
        );
        // A realm cannot be exported (the stream has no realm state): the
        // first VM_EXPORT is refused, the VM untouched (it runs on).
        let export = code(
            HostCall::VmExport,
            &[handle, self.pool + 2 * PAGE, 2, 0, 0, 0, 0, 0, 0],
        );
        ensure!(
            export == denied,
            "VM_EXPORT of a realm = {export}, want DENIED ({denied})"
        );
        Ok(())
    }

    fn line(&mut self, vms: &mut [Vm], vm: usize, text: &str) -> Result<(), Msg> {
        if let Some(rest) = text.strip_prefix("GUEST-REALM-EVICT ") {
            let Some(ipa) = parse_ipa(rest) else {
                fail!("GUEST-REALM-EVICT {rest}: not hex")
            };
            self.evict(vms, vm, ipa)?;
        } else if text == "GUEST-REALM-RESTORE" {
            self.restore(vms, vm)?;
        } else if let Some(rest) = text.strip_prefix("GUEST-REALM-RACE-PAGE ") {
            let Some(ipa) = parse_ipa(rest) else {
                fail!("GUEST-REALM-RACE-PAGE {rest}: not hex")
            };
            let ram = vms[vm].ram;
            ensure!(
                ipa >= GUEST_RAM_BASE && ipa.is_multiple_of(PAGE) && ipa + PAGE <= GUEST_RAM_BASE + ram.size(),
                "GUEST-REALM-RACE-PAGE {ipa:#x} is not a granule of its RAM"
            );
            self.race = Some(ipa);
            SECONDARY_DECLINES.store(ipa, Ordering::Release);
        } else if text.starts_with("GUEST-REALM-RACE ") {
            self.race_round(vms, vm, text)?;
        } else if let Some(rest) = text.strip_prefix("GUEST-REALM-SHARED ") {
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
        if self.race == Some(ipa) {
            // vCPU 1 touched the racing granule while it was EMPTY.
            self.race_declined += 1;
            return Ok(FaultAction::Decline);
        }
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
    let (mut arena, _) = arena(p)?;
    let mut vms = [Vm::create(&mut arena, protected("realm")?)?];
    let mut policy = RealmPolicy {
        shared: None,
        taken_back: false,
        declined: 0,
        token_hex_len: 0,
        pool: arena.take(4)?,
        evicted: None,
        restored: false,
        host_calls: 0,
        race: None,
        race_reads: 0,
        race_declined: 0,
    };
    SECONDARY_DECLINED.store(0, Ordering::Relaxed);
    // vCPU 0 on the boot CPU (its lines need the host at once), vCPU 1 on
    // the next CPU (the same one on a single-CPU machine).
    let report = run_and_destroy(p, &mut vms, &[&[0, 1]], &mut policy, 30_000);
    SECONDARY_DECLINES.store(0, Ordering::Release);
    let report = report?;
    note!(
        "realm: {} guest checks passed, {} exits, {} ms; race: the host read the shared granule {} times, {} faults of vCPU 1 declined ({} on the boot CPU)",
        report.tallies[0].passed,
        report.exits[0],
        report.millis,
        policy.race_reads,
        policy.race_declined + SECONDARY_DECLINED.load(Ordering::Relaxed) as u32,
        policy.race_declined
    );
    ensure!(
        policy.race_reads == (RACE_ROUNDS_CHECKED as u32),
        "the host read the racing granule {} times, want {RACE_ROUNDS_CHECKED}",
        policy.race_reads
    );
    ensure!(policy.host_calls == 1, "the realm guest made no RSI_HOST_CALL");
    ensure!(policy.restored, "the realm guest's evicted granule was not restored");
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
