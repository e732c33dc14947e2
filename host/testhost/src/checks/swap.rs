//! Sealed swap (issue 14): `VM_EVICT` / `VM_RESTORE` from a hostile host.
//!
//! `swap-memtest`: the `memtest` guest in a protected VM runs its four
//! fill-and-check passes while the host evicts its pages (code, stack and
//! data alike) at every exit and restores each one when the guest touches
//! it (`EXIT_EVICTED`); the guest's own pattern checks must pass. Every
//! sealed page is checked for the guest's data in clear, every evicted
//! page must come back to the host zeroed. On the way, each hostile
//! restore is tried once and must be refused with its documented error,
//! the fresh page staying the host's, before the real restore succeeds
//! (the guest's pattern checks then prove the VM's memory unchanged): a
//! flipped bit in the sealed page, a flipped tag, another address's sealed
//! page, a sealed page restored into another VM, an old version replayed
//! (with its own version and with the current one), sealed = fresh, a
//! fresh page that is not the host's, pages outside RAM; and the hostile
//! evictions and donations.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::guest::GUEST_UART_BASE;
use rampart_abi::guest::layout::UART_DR;
use rampart_abi::guest::test_protocol::{DONE, FAIL, PASS};
use rampart_abi::host::{ExitReason, HostCall, mmio};

use super::vm::{arena, protected};
use super::vmm::{Arena, PAGE, Vm, call, code};
use crate::arch;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, fail, msg, note};

const INVALID: i64 = Error::InvalidParameter.code();
const DENIED: i64 = Error::Denied.code();
const RANGE: i64 = Error::Range.code();
const SEAL_INVALID: i64 = Error::SealInvalid.code();
const STALE_VERSION: i64 = Error::StaleVersion.code();
const NOT_EVICTED: i64 = Error::NotEvicted.code();
const NOT_EVICTABLE: i64 = Error::NotEvictable.code();

/// Pages evicted at each exit of the guest.
const PER_EXIT: usize = 3;
/// Pages kept evicted at most (and records kept).
const WINDOW: usize = 40;
/// Spare host pages for sealed copies and fresh pages.
const POOL: usize = 2 * WINDOW + 8;
/// The guest page evicted first, in both VMs.
const VICTIM: usize = 200;
/// A page that is RAM nowhere (the guest UART's page, MMIO in QEMU virt).
const NOT_RAM: u64 = 0x0900_0000;

/// memtest's pattern (guest/memtest/src/main.rs): the guest's "secret".
fn pattern(addr: u64, pass: u64) -> u64 {
    (addr ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xff51_afd7_ed55_8ccd)
        .rotate_left(u32::try_from(pass % 64).unwrap_or(0))
        ^ addr
}

/// A hostile restore: what, sealed page, fresh page (0: the VM's
/// metadata), version, tag, the error expected.
type RestoreCase = (&'static str, u64, u64, u64, [u64; 2], i64);

/// One evicted guest page.
#[derive(Clone, Copy, Default)]
struct Sealed {
    ipa: u64,
    sealed: u64,
    version: u64,
    tag: [u64; 2],
}

/// The VMM's state.
struct Swapper {
    handle: u64,
    /// The VM's first metadata page (never the host's while it lives).
    metadata: u64,
    /// Host pages free for use as sealed or fresh pages.
    free: [u64; POOL],
    free_count: usize,
    /// Pages evicted now.
    out: [Sealed; WINDOW],
    out_count: usize,
    /// Host page behind each guest page now (index: page of guest RAM).
    backing: [u64; 512],
    pages: usize,
    /// Next guest page to evict (round robin).
    cursor: usize,
    /// The first seal of the first address evicted twice, kept for the
    /// replay cases.
    kept: Option<Sealed>,
    evictions: u64,
    restores: u64,
    /// Counter ticks spent in successful `VM_EVICT` / `VM_RESTORE` calls.
    evict_ticks: u64,
    restore_ticks: u64,
    refused: u64,
    /// Which hostile cases ran.
    done_batch: bool,
    done_replay: bool,
    done_other_vm: bool,
}

fn evict_call(handle: u64, ipa: u64, sealed: u64) -> [u64; 18] {
    call(HostCall::VmEvict, &[handle, ipa, sealed])
}

fn restore_code(
    handle: u64,
    ipa: u64,
    sealed: u64,
    fresh: u64,
    version: u64,
    tag: [u64; 2],
) -> i64 {
    code(
        HostCall::VmRestore,
        &[handle, ipa, sealed, fresh, version, tag[0], tag[1]],
    )
}

/// The host can still write and read `page` (it stayed the host's).
fn host_still_owns(page: u64, what: &str) -> Result<(), Msg> {
    let probe = arch::probe(arch::Access::Store, page, 0x5eed_0000 ^ page);
    ensure!(
        probe.fault.is_none(),
        "{what}: the fresh page {page:#x} is no longer the host's after a refused restore"
    );
    ensure!(
        arch::ram_read(page) == 0x5eed_0000 ^ page,
        "{what}: the fresh page {page:#x} did not keep the host's write"
    );
    arch::ram_write(page, 0);
    Ok(())
}

impl Swapper {
    fn take(&mut self) -> Result<u64, Msg> {
        ensure!(self.free_count > 0, "the test's page pool is empty");
        self.free_count -= 1;
        Ok(self.free[self.free_count])
    }

    fn give(&mut self, page: u64) {
        if self.free_count < POOL {
            self.free[self.free_count] = page;
            self.free_count += 1;
        }
    }

    /// Evicts guest page `index`, checks the sealed page and the returned
    /// page. `Ok(false)` if the page is evicted already.
    fn evict(&mut self, index: usize) -> Result<bool, Msg> {
        let ipa = GUEST_RAM_BASE + index as u64 * PAGE;
        if self.out[..self.out_count].iter().any(|s| s.ipa == ipa) {
            return Ok(false);
        }
        let sealed = self.take()?;
        let t = arch::counter();
        let r = evict_call(self.handle, ipa, sealed);
        self.evict_ticks += arch::counter() - t;
        ensure!(
            r[0] == 0,
            "VM_EVICT({ipa:#x}, {sealed:#x}) = {}",
            r[0] as i64
        );
        self.evictions += 1;
        let old = self.backing[index];
        // The guest's data is nowhere in clear in the sealed page.
        let mut zero_words = 0;
        for offset in (0..PAGE).step_by(8) {
            let word = arch::ram_read(sealed + offset);
            zero_words += u32::from(word == 0);
            for pass in 0..4 {
                ensure!(
                    word != pattern(ipa + offset, pass),
                    "the sealed page of {ipa:#x} holds the guest's word for pass {pass} in clear at offset {offset:#x}"
                );
            }
        }
        ensure!(
            zero_words < 8,
            "the sealed page of {ipa:#x} has {zero_words} zero words: not ciphertext"
        );
        // The guest page is the host's again, zeroed.
        if let Some(at) = arch::ram_find_nonzero(old, old + PAGE) {
            fail!("the page {old:#x} VM_EVICT gave back ({ipa:#x}) is not zero at {at:#x}");
        }
        self.give(old);
        if self.kept.is_none() {
            // The very first seal is copied aside (never recycled) for the
            // replay cases, once the address has a newer version.
            let copy = self.take()?;
            for offset in (0..PAGE).step_by(8) {
                arch::ram_write(copy + offset, arch::ram_read(sealed + offset));
            }
            self.kept = Some(Sealed {
                ipa,
                sealed: copy,
                version: r[1],
                tag: [r[2], r[3]],
            });
        }
        self.out[self.out_count] = Sealed {
            ipa,
            sealed,
            version: r[1],
            tag: [r[2], r[3]],
        };
        self.out_count += 1;
        Ok(true)
    }

    /// After an exit: evict the next few pages, keeping at most WINDOW out.
    fn evict_some(&mut self) -> Result<(), Msg> {
        for _ in 0..PER_EXIT {
            if self.out_count >= WINDOW || self.free_count < 4 {
                return Ok(());
            }
            let index = self.cursor;
            self.cursor = (self.cursor + 7) % self.pages;
            self.evict(index)?;
        }
        Ok(())
    }

    /// `EXIT_EVICTED` at `ipa`: hostile restores first (once each), then
    /// the real one.
    fn fault(&mut self, ipa: u64, other: &mut Vm, other_sealed: Option<Sealed>) -> Result<(), Msg> {
        let at = self.out[..self.out_count]
            .iter()
            .position(|s| s.ipa == ipa)
            .ok_or_else(|| msg!("EXIT_EVICTED at {ipa:#x}, which the host did not evict"))?;
        let record = self.out[at];
        let fresh = self.take()?;
        if !self.done_batch && self.out_count >= 2 {
            self.hostile_batch(record, fresh)?;
            self.done_batch = true;
        }
        if !self.done_other_vm
            && let Some(o) = other_sealed
            && o.ipa == ipa
            && record.version == o.version
        {
            // The same address and version, evicted in another VM: this
            // VM's seal must not open there (another key), nor the other's
            // here.
            let c = restore_code(
                other.handle,
                ipa,
                record.sealed,
                fresh,
                record.version,
                record.tag,
            );
            ensure!(
                c == SEAL_INVALID,
                "this VM's sealed page restored into another VM at the same address and version: {c}, expected SEAL_INVALID"
            );
            host_still_owns(fresh, "another VM")?;
            let c = restore_code(self.handle, ipa, o.sealed, fresh, o.version, o.tag);
            ensure!(
                c == SEAL_INVALID,
                "another VM's sealed page restored here: {c}, expected SEAL_INVALID"
            );
            host_still_owns(fresh, "another VM's page")?;
            self.refused += 2;
            self.done_other_vm = true;
        }
        if let Some(k) = self.kept
            && k.ipa == ipa
            && record.version > k.version
        {
            // Replay: the first seal of this address, with its own version
            // (no longer current) and with the current one.
            let c = restore_code(self.handle, ipa, k.sealed, fresh, k.version, k.tag);
            ensure!(
                c == STALE_VERSION,
                "an old version (v{}) replayed with its own version: {c}, expected STALE_VERSION",
                k.version
            );
            host_still_owns(fresh, "replay")?;
            let c = restore_code(self.handle, ipa, k.sealed, fresh, record.version, k.tag);
            ensure!(
                c == SEAL_INVALID,
                "an old version (v{}) replayed as v{}: {c}, expected SEAL_INVALID",
                k.version,
                record.version
            );
            host_still_owns(fresh, "replay as current")?;
            self.refused += 2;
            self.done_replay = true;
        }
        let t = arch::counter();
        let c = restore_code(
            self.handle,
            ipa,
            record.sealed,
            fresh,
            record.version,
            record.tag,
        );
        self.restore_ticks += arch::counter() - t;
        ensure!(c == 0, "VM_RESTORE({ipa:#x}, v{}) = {c}", record.version);
        self.restores += 1;
        // The fresh page left the host.
        let probe = arch::probe(arch::Access::Load, fresh, 0);
        ensure!(
            probe.fault.is_some(),
            "the host can still read the fresh page {fresh:#x} after VM_RESTORE"
        );
        let c = restore_code(
            self.handle,
            ipa,
            record.sealed,
            fresh,
            record.version,
            record.tag,
        );
        ensure!(
            c == NOT_EVICTED,
            "a second VM_RESTORE of {ipa:#x} = {c}, expected NOT_EVICTED"
        );
        self.backing[((ipa - GUEST_RAM_BASE) / PAGE) as usize] = fresh;
        self.give(record.sealed);
        self.out[at] = self.out[self.out_count - 1];
        self.out_count -= 1;
        Ok(())
    }

    /// Hostile restores of `record` (another record is out too) and
    /// hostile evictions; each refused, nothing changed.
    fn hostile_batch(&mut self, record: Sealed, fresh: u64) -> Result<(), Msg> {
        let (h, ipa, v, tag) = (self.handle, record.ipa, record.version, record.tag);
        let other = *self.out[..self.out_count]
            .iter()
            .find(|s| s.ipa != ipa)
            .ok_or_else(|| msg!("no second evicted page"))?;
        // A flipped bit of the ciphertext, in a copy.
        let copy = self.take()?;
        for offset in (0..PAGE).step_by(8) {
            arch::ram_write(copy + offset, arch::ram_read(record.sealed + offset));
        }
        arch::ram_write(copy + 0x808, arch::ram_read(copy + 0x808) ^ (1 << 17));
        let cases: [RestoreCase; 9] = [
            (
                "a flipped bit in the sealed page",
                copy,
                fresh,
                v,
                tag,
                SEAL_INVALID,
            ),
            (
                "a flipped bit in the tag",
                record.sealed,
                fresh,
                v,
                [tag[0], tag[1] ^ (1 << 63)],
                SEAL_INVALID,
            ),
            (
                "another address's sealed page and tag",
                other.sealed,
                fresh,
                v,
                other.tag,
                SEAL_INVALID,
            ),
            (
                "a version never issued",
                record.sealed,
                fresh,
                v + 1,
                tag,
                STALE_VERSION,
            ),
            (
                "sealed page = fresh page",
                record.sealed,
                record.sealed,
                v,
                tag,
                INVALID,
            ),
            (
                "a fresh page that is the VM's metadata",
                record.sealed,
                0,
                v,
                tag,
                DENIED,
            ),
            ("a sealed page outside RAM", NOT_RAM, fresh, v, tag, RANGE),
            (
                "a fresh page outside RAM",
                record.sealed,
                NOT_RAM,
                v,
                tag,
                RANGE,
            ),
            (
                "an unaligned fresh page",
                record.sealed,
                fresh + 8,
                v,
                tag,
                INVALID,
            ),
        ];
        for (what, sealed, fresh_page, version, t, want) in cases {
            let fresh_page = if fresh_page == 0 {
                self.metadata
            } else {
                fresh_page
            };
            let c = restore_code(h, ipa, sealed, fresh_page, version, t);
            ensure!(c == want, "VM_RESTORE with {what}: {c}, expected {want}");
            host_still_owns(fresh, what)?;
            self.refused += 1;
        }
        self.give(copy);
        // A page the host lent to the hypervisor is not the host's alone.
        let lent = self.take()?;
        let c = code(HostCall::ShareHyp, &[lent, 1]);
        ensure!(c == 0, "SHARE_HYP of a spare page = {c}");
        let as_fresh = restore_code(h, ipa, record.sealed, lent, v, tag);
        let as_sealed = evict_call(h, GUEST_RAM_BASE, lent)[0] as i64;
        let c = code(HostCall::UnshareHyp, &[lent, 1]);
        ensure!(c == 0, "UNSHARE_HYP = {c}");
        self.give(lent);
        ensure!(
            as_fresh == DENIED,
            "VM_RESTORE into a page shared with the hypervisor: {as_fresh}, expected DENIED"
        );
        ensure!(
            as_sealed == DENIED || as_sealed == NOT_EVICTABLE,
            "VM_EVICT into a page shared with the hypervisor: {as_sealed}, expected DENIED"
        );
        // Hostile evictions and donations.
        let mapped = (0..self.pages)
            .map(|i| GUEST_RAM_BASE + i as u64 * PAGE)
            .find(|a| !self.out[..self.out_count].iter().any(|s| s.ipa == *a))
            .ok_or_else(|| msg!("every page is evicted"))?;
        let own_page = self.backing[((mapped - GUEST_RAM_BASE) / PAGE) as usize];
        let spare = self.take()?;
        let evictions: [(&str, u64, u64, i64); 6] = [
            ("into the guest page itself", mapped, own_page, DENIED),
            ("into the VM's metadata", mapped, self.metadata, DENIED),
            ("into a page outside RAM", mapped, NOT_RAM, RANGE),
            ("of an evicted page", ipa, spare, NOT_EVICTABLE),
            (
                "of an unmapped guest address",
                GUEST_RAM_BASE + (self.pages as u64 + 16) * PAGE,
                spare,
                NOT_EVICTABLE,
            ),
            (
                "of an unaligned guest address",
                mapped + 0x10,
                spare,
                INVALID,
            ),
        ];
        for (what, at, sealed, want) in evictions {
            let r = evict_call(h, at, sealed);
            ensure!(
                r[0] as i64 == want,
                "VM_EVICT {what}: {}, expected {want}",
                r[0] as i64
            );
            self.refused += 1;
        }
        self.give(spare);
        let c = code(HostCall::VmDonate, &[h, fresh, 1, ipa]);
        ensure!(
            c == DENIED,
            "VM_DONATE at the evicted address {ipa:#x}: {c}, expected DENIED"
        );
        host_still_owns(fresh, "VM_DONATE at an evicted address")?;
        let c = restore_code(h, mapped, record.sealed, fresh, v, tag);
        ensure!(
            c == NOT_EVICTED,
            "VM_RESTORE at a mapped address: {c}, expected NOT_EVICTED"
        );
        self.refused += 2;
        Ok(())
    }
}

/// `swap-memtest`: see the module documentation.
pub fn swap_memtest(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let mut vm = Vm::create(&mut arena, protected("memtest")?)?;
    let result = run_swapped(&mut arena, &mut vm);
    let destroyed = vm.destroy();
    let summary = result?;
    destroyed?;
    note!("{summary}");
    Ok(())
}

/// `swap-evicted-before-run` (issue 16, hostile): the host gives a
/// protected VM a page of its own content at an address outside the signed
/// layout, evicts it before the first run (so the measurement, which sees
/// only what is mapped, matches the signature), lets the VM run, then tries
/// to restore the sealed page: content no measurement covered would reach
/// the guest. The hypervisor forgets a VM's evictions when its first run is
/// measured, so the restore must be refused (and the fresh page stay the
/// host's).
pub fn swap_evicted_before_run(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("memtest")?;
    let mut vm = Vm::create(&mut arena, spec)?;
    let h = vm.handle;
    // Past the signed RAM, inside the VM's IPA space.
    let ipa = GUEST_RAM_BASE + spec.ram + 64 * PAGE;
    let sealed = arena.take(1)?;
    let fresh = arena.take(1)?;
    // Whether the fresh page went to the VM (a restore that should not
    // have succeeded): it is then the guest's until VM_DESTROY zeroes it.
    let mut restored = false;
    let result = (|| -> Result<Msg, Msg> {
        let c = vm.donate_patterned_page(&mut arena, ipa, 0x0bad_c0de_5ea1_ed00)?;
        ensure!(c == 0, "VM_DONATE of a host page at {ipa:#x}, outside the signed layout = {c}");
        let r = evict_call(h, ipa, sealed);
        ensure!(r[0] == 0, "VM_EVICT of that page before the first run = {}", r[0] as i64);
        let (version, tag) = (r[1], [r[2], r[3]]);
        let run = call(HostCall::VcpuRun, &[h, 0, 0]);
        ensure!(
            run[0] == 0,
            "the first VCPU_RUN = {} (the evicted page is outside the layout: the measurement matches)",
            run[0] as i64
        );
        let c = restore_code(h, ipa, sealed, fresh, version, tag);
        restored = c == 0;
        ensure!(
            c != 0,
            "VM_RESTORE after the first run of a page evicted before it succeeded: the guest now holds content no measurement covered"
        );
        host_still_owns(fresh, "the refused restore")?;
        Ok(msg!("a page evicted before the first run is not restored after it (VM_RESTORE = {c})"))
    })();
    arch::ram_zero(sealed, sealed + PAGE);
    if !restored {
        arch::ram_zero(fresh, fresh + PAGE);
    }
    let destroyed = vm.destroy();
    let summary = result?;
    destroyed?;
    note!("{summary}");
    Ok(())
}

fn run_swapped(arena: &mut Arena, vm: &mut Vm) -> Result<Msg, Msg> {
    // Another VM with the same guest address evicted at version 1.
    let mut other = Vm::create(arena, protected("hello")?)?;
    // A page of memtest's free RAM (touched every pass) that the smaller
    // `hello` VM also has.
    let victim = GUEST_RAM_BASE + VICTIM as u64 * PAGE;
    let other_page = arena.take(1)?;
    let r = evict_call(other.handle, victim, other_page);
    ensure!(
        r[0] == 0 && r[1] == 1,
        "VM_EVICT in the second VM = {} (version {})",
        r[0] as i64,
        r[1]
    );
    let other_sealed = Sealed {
        ipa: victim,
        sealed: other_page,
        version: 1,
        tag: [r[2], r[3]],
    };

    let pool = arena.take(POOL as u64)?;
    let pages = (vm.ram.size() / PAGE) as usize;
    ensure!(
        pages <= 512,
        "memtest has {pages} pages, more than the test tracks"
    );
    let mut s = Swapper {
        handle: vm.handle,
        metadata: vm.metadata.start,
        free: core::array::from_fn(|i| pool + i as u64 * PAGE),
        free_count: POOL,
        out: [Sealed::default(); WINDOW],
        out_count: 0,
        backing: core::array::from_fn(|i| vm.ram.start + i as u64 * PAGE),
        pages,
        cursor: VICTIM,
        kept: None,
        evictions: 0,
        restores: 0,
        evict_ticks: 0,
        restore_ticks: 0,
        refused: 0,
        done_batch: false,
        done_replay: false,
        done_other_vm: false,
    };
    // Evictions start at the first exit (the measurement of a protected
    // VM at its first run covers every page), with the page the other VM
    // evicted, at version 1.
    let outcome = drive(&mut s, &mut other, other_sealed);
    let other_destroyed = other.destroy();
    // Every page the host holds now (free, sealed copies) is the host's
    // own: clean them, so that the VM's pages read zero after VM_DESTROY
    // wherever they came from. Restored pages are the VM's: untouched.
    for &page in &s.free[..s.free_count] {
        arch::ram_zero(page, page + PAGE);
    }
    for record in s.out[..s.out_count].iter().chain(s.kept.as_ref()) {
        arch::ram_zero(record.sealed, record.sealed + PAGE);
    }
    arch::ram_zero(other_page, other_page + PAGE);
    let (passed, exits) = outcome?;
    other_destroyed?;
    ensure!(
        s.done_batch && s.done_other_vm && s.done_replay,
        "not every hostile case ran: batch {}, other VM {}, replay {}",
        s.done_batch,
        s.done_other_vm,
        s.done_replay
    );
    let frequency = arch::counter_frequency().max(1);
    let rate = |pages: u64, ticks: u64| pages.saturating_mul(frequency) / ticks.max(1);
    Ok(msg!(
        "memtest (protected): {passed} guest checks passed, {exits} exits; {} evictions ({} pages/s), {} restores ({} pages/s) on EXIT_EVICTED, {} hostile calls refused; no sealed page held the guest's data in clear",
        s.evictions,
        rate(s.evictions, s.evict_ticks),
        s.restores,
        rate(s.restores, s.restore_ticks),
        s.refused
    ))
}

/// Runs the memtest VM to SYSTEM_OFF, evicting and restoring.
fn drive(s: &mut Swapper, other: &mut Vm, other_sealed: Sealed) -> Result<(u32, u64), Msg> {
    let mut line = [0u8; 160];
    let mut len = 0;
    let (mut passed, mut done) = (0u32, false);
    let mut exits = 0u64;
    let deadline = arch::counter() + 120 * arch::counter_frequency();
    loop {
        ensure!(
            arch::counter() < deadline,
            "memtest did not finish in 120 s ({exits} exits, {} evictions)",
            s.evictions
        );
        let r = call(HostCall::VcpuRun, &[s.handle, 0, 0]);
        ensure!(r[0] == 0, "VCPU_RUN = {}", r[0] as i64);
        exits += 1;
        match ExitReason::try_from(r[1]) {
            Ok(ExitReason::Mmio) => {
                if r[2] == GUEST_UART_BASE + UART_DR && r[3] & mmio::WRITE != 0 {
                    let byte = r[4] as u8;
                    if byte == b'\n' || len == line.len() {
                        let text = core::str::from_utf8(&line[..len]).unwrap_or("");
                        if text.starts_with(PASS) {
                            passed += 1;
                        } else if text.starts_with(FAIL) {
                            fail!("memtest under swap: {text}");
                        } else if text.starts_with(DONE) {
                            done = true;
                        }
                        len = 0;
                    } else {
                        line[len] = byte;
                        len += 1;
                    }
                }
                s.evict_some()?;
            }
            Ok(ExitReason::Evicted) => {
                ensure!(
                    r[2] & (PAGE - 1) == 0 && r[3] <= 1,
                    "EXIT_EVICTED details {:#x} {:#x}",
                    r[2],
                    r[3]
                );
                s.fault(r[2], other, Some(other_sealed))?;
            }
            Ok(ExitReason::Wait | ExitReason::Interrupt) => {}
            Ok(ExitReason::SystemOff) => break,
            other_exit => fail!("unexpected exit {other_exit:?} ({:#x} {:#x})", r[2], r[3]),
        }
    }
    ensure!(
        done && passed >= 4,
        "memtest ended with {passed} passed, GUEST-DONE {done}"
    );
    Ok((passed, exits))
}

// ---- swap-race: evict/restore against a vCPU running on another CPU,
// ---- and against VM_DESTROY (issue 14) ----

/// [`crate::cpus::TASK`]: run the `swap-race` VM's vCPU (see [`race_secondary`]).
pub const TASK_SWAP_RACE: u64 = 0x5a;
/// The `CPU_ON` round in the context ids.
const RACE_ROUND: u64 = 0x5a;

/// What the boot CPU and the running CPU share in `swap-race`.
struct Race {
    handle: AtomicU64,
    /// 1: run the vCPU; 2: also evict and restore between runs.
    mode: AtomicU64,
    /// The running CPU's own sealed page (mode 2).
    sealed: AtomicU64,
    /// The VM's RAM (guest page i at `ram + i * PAGE`) and its pages.
    ram: AtomicU64,
    pages: AtomicU64,
    stop: AtomicBool,
    exited: AtomicBool,
    /// Runs that returned, `EXIT_EVICTED` exits, guest PASS lines, a guest
    /// FAIL line seen, GUEST-DONE seen, SYSTEM_OFF seen.
    runs: AtomicU64,
    faults: AtomicU64,
    passed: AtomicU64,
    failed: AtomicBool,
    done: AtomicBool,
    off: AtomicBool,
    /// The running CPU's evictions and restores, and its calls refused
    /// because the VM was gone.
    evictions: AtomicU64,
    restores: AtomicU64,
    gone: AtomicU64,
    /// The first thing the running CPU found wrong: (what, value).
    problem: [AtomicU64; 2],
}

static RACE: Race = Race {
    handle: AtomicU64::new(0),
    mode: AtomicU64::new(0),
    sealed: AtomicU64::new(0),
    ram: AtomicU64::new(0),
    pages: AtomicU64::new(0),
    stop: AtomicBool::new(false),
    exited: AtomicBool::new(false),
    runs: AtomicU64::new(0),
    faults: AtomicU64::new(0),
    passed: AtomicU64::new(0),
    failed: AtomicBool::new(false),
    done: AtomicBool::new(false),
    off: AtomicBool::new(false),
    evictions: AtomicU64::new(0),
    restores: AtomicU64::new(0),
    gone: AtomicU64::new(0),
    problem: [const { AtomicU64::new(0) }; 2],
};

/// Problems the running CPU records.
mod problem {
    pub const RUN: u64 = 1;
    pub const EXIT: u64 = 2;
    pub const EVICT: u64 = 3;
    pub const RESTORE: u64 = 4;
    pub const CLEAR: u64 = 5;
    pub const NOT_ZERO: u64 = 6;
}

impl Race {
    fn reset(&self, handle: u64, mode: u64, sealed: u64, vm: &Vm) {
        self.handle.store(handle, Ordering::Relaxed);
        self.mode.store(mode, Ordering::Relaxed);
        self.sealed.store(sealed, Ordering::Relaxed);
        self.ram.store(vm.ram.start, Ordering::Relaxed);
        self.pages.store(vm.ram.size() / PAGE, Ordering::Relaxed);
        for a in [&self.runs, &self.faults, &self.passed, &self.evictions, &self.restores, &self.gone] {
            a.store(0, Ordering::Relaxed);
        }
        for b in [&self.stop, &self.exited, &self.failed, &self.done, &self.off] {
            b.store(false, Ordering::Relaxed);
        }
        self.problem[0].store(0, Ordering::Relaxed);
        self.problem[1].store(0, Ordering::Release);
    }

    fn report(&self, what: u64, value: u64) {
        if self.problem[0].compare_exchange(0, what, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.problem[1].store(value, Ordering::Release);
        }
    }

    fn problem(&self) -> Result<(), Msg> {
        let (what, value) = (self.problem[0].load(Ordering::Acquire), self.problem[1].load(Ordering::Acquire));
        match what {
            0 => Ok(()),
            problem::RUN => fail!("VCPU_RUN on the other CPU = {}", value as i64),
            problem::EXIT => fail!("unexpected exit {value} on the other CPU"),
            problem::EVICT => fail!("VM_EVICT on the other CPU = {}", value as i64),
            problem::RESTORE => fail!("VM_RESTORE on the other CPU = {}", value as i64),
            problem::CLEAR => fail!("a sealed page held the guest's data in clear (guest address {value:#x})"),
            problem::NOT_ZERO => fail!("the page VM_EVICT gave back ({value:#x}) is not zero"),
            _ => fail!("problem {what} ({value:#x}) on the other CPU"),
        }
    }
}

/// Whether a sealed page of guest page `ipa` holds one of memtest's words
/// in clear.
fn holds_clear(sealed: u64, ipa: u64) -> bool {
    (0..PAGE).step_by(8).any(|offset| {
        let word = arch::ram_read(sealed + offset);
        (0..4).any(|pass| word == pattern(ipa + offset, pass))
    })
}

/// The running CPU: `VCPU_RUN` in a loop (each run bounded by the host's
/// own 20 ms deadline), counting the guest's lines; in mode 2, every few
/// runs it evicts a page of the VM and restores it into the page it came
/// from, racing the boot CPU's `VM_DESTROY`. Stops at SYSTEM_OFF, when
/// the VM is gone, or when told.
pub fn race_secondary(_index: usize) {
    let r = &RACE;
    let _ = super::vmm::gic::enable_this_cpu();
    let handle = r.handle.load(Ordering::Acquire);
    let mode = r.mode.load(Ordering::Acquire);
    let (ram, pages, sealed) = (r.ram.load(Ordering::Acquire), r.pages.load(Ordering::Acquire), r.sealed.load(Ordering::Acquire));
    let frequency = arch::counter_frequency().max(1);
    let mut line = [0u8; 16];
    let mut len = 0usize;
    let mut k = 0u64;
    while !r.stop.load(Ordering::Acquire) {
        super::vmm::hw::set_host_virtual_timer(arch::counter() + frequency / 50, 1);
        let x = call(HostCall::VcpuRun, &[handle, 0, 0]);
        super::vmm::hw::set_host_virtual_timer(0, 0);
        let c = x[0] as i64;
        if c == INVALID {
            r.gone.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if c == Error::Busy.code() {
            continue;
        }
        if c != 0 {
            r.report(problem::RUN, x[0]);
            break;
        }
        r.runs.fetch_add(1, Ordering::AcqRel);
        match ExitReason::try_from(x[1]) {
            Ok(ExitReason::Mmio) => {
                if x[2] == GUEST_UART_BASE + UART_DR && x[3] & mmio::WRITE != 0 {
                    let byte = x[4] as u8;
                    if byte == b'\n' {
                        let text = &line[..len];
                        if text.starts_with(PASS.as_bytes()) {
                            r.passed.fetch_add(1, Ordering::Relaxed);
                        } else if text.starts_with(FAIL.as_bytes()) {
                            r.failed.store(true, Ordering::Release);
                        } else if text.starts_with(DONE.as_bytes()) {
                            r.done.store(true, Ordering::Release);
                        }
                        len = 0;
                    } else if len < line.len() {
                        line[len] = byte;
                        len += 1;
                    }
                }
            }
            Ok(ExitReason::Evicted) => {
                r.faults.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ExitReason::Wait | ExitReason::Interrupt) => {}
            Ok(ExitReason::SystemOff) => {
                r.off.store(true, Ordering::Release);
                break;
            }
            _ => {
                r.report(problem::EXIT, x[1]);
                break;
            }
        }
        if mode != 2 || pages <= VICTIM as u64 {
            continue;
        }
        k += 1;
        let index = VICTIM as u64 + (k * 13) % (pages - VICTIM as u64);
        let ipa = GUEST_RAM_BASE + index * PAGE;
        let e = evict_call(handle, ipa, sealed);
        let c = e[0] as i64;
        if c == INVALID {
            r.gone.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if c != 0 {
            // The boot CPU's evicted pages are NOT_EVICTABLE here.
            if c != NOT_EVICTABLE {
                r.report(problem::EVICT, e[0]);
                break;
            }
            continue;
        }
        r.evictions.fetch_add(1, Ordering::Relaxed);
        let orig = ram + index * PAGE;
        if holds_clear(sealed, ipa) {
            r.report(problem::CLEAR, ipa);
        }
        if arch::ram_find_nonzero(orig, orig + PAGE).is_some() {
            r.report(problem::NOT_ZERO, orig);
        }
        let c = restore_code(handle, ipa, sealed, orig, e[1], [e[2], e[3]]);
        if c == INVALID {
            r.gone.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if c != 0 {
            r.report(problem::RESTORE, c as u64);
            break;
        }
        r.restores.fetch_add(1, Ordering::Relaxed);
    }
    r.exited.store(true, Ordering::Release);
}

/// Starts the running CPU on the first secondary.
fn start_runner(p: &Platform) -> Result<(), Msg> {
    let boot = super::cpu::boot_cpu_index(p)?;
    let Some(cpu) = (0..p.cpu_count).find(|&i| i != boot) else {
        fail!("one CPU only");
    };
    crate::cpus::ARRIVALS.store(0, Ordering::Release);
    crate::cpus::TASK.store(TASK_SWAP_RACE, Ordering::Release);
    crate::cpus::SLOTS[cpu].reset();
    let ret = crate::psci::cpu_on(p.cpus[cpu], arch::secondary_entry_address(), crate::cpus::context_id(RACE_ROUND, cpu));
    ensure!(ret == crate::psci::SUCCESS, "CPU_ON({:#x}) = {ret}", p.cpus[cpu]);
    Ok(())
}

/// Stops the running CPU and waits for it.
fn stop_runner() -> Result<(), Msg> {
    RACE.stop.store(true, Ordering::Release);
    ensure!(
        crate::cpus::wait_until(10_000, || RACE.exited.load(Ordering::Acquire)),
        "the CPU running the vCPU did not stop"
    );
    Ok(())
}

/// `swap-race` (two CPUs or more): (1) the protected memtest guest runs
/// its fill-and-check passes on another CPU while this one evicts pages
/// it is reading and writing and restores them into the pages they left
/// (the guest may touch each in between: `EXIT_EVICTED` there, and again
/// until it is back); every sealed page is free of the guest's words,
/// every page given back reads zero, and the guest's own checks pass (its
/// data survived every round trip). (2) A second memtest VM runs on the
/// other CPU, which also evicts and restores its pages between runs,
/// while this CPU evicts one page for good and destroys the VM (retrying
/// while a run holds a vCPU): no EL2 crash; afterwards every page the VM
/// had (RAM, metadata) reads zero and is the host's, the other CPU's calls
/// after the destroy are refused, and restoring the kept page is refused
/// with the fresh page staying the host's.
pub fn swap_race(p: &Platform) -> Result<(), Msg> {
    if p.cpu_count < 2 {
        note!("one CPU: nothing to race");
        return Ok(());
    }
    let (mut arena, _) = arena(p)?;
    let spare = arena.take(4)?;
    let first = race_running(p, &mut arena, spare);
    let first = match first {
        Ok(m) => m,
        Err(e) => {
            let _ = stop_runner();
            return Err(e);
        }
    };
    let second = race_destroy(p, &mut arena, spare);
    if second.is_err() {
        let _ = stop_runner();
    }
    let second = second?;
    note!("{first}; {second}");
    Ok(())
}

fn race_running(p: &Platform, arena: &mut Arena, spare: u64) -> Result<Msg, Msg> {
    let mut vm = Vm::create(arena, protected("memtest")?)?;
    let pages = vm.ram.size() / PAGE;
    ensure!(pages > VICTIM as u64 + 8, "memtest has only {pages} pages");
    RACE.reset(vm.handle, 1, 0, &vm);
    start_runner(p)?;
    // The first run measures the VM: evictions start after it.
    ensure!(
        crate::cpus::wait_until(20_000, || RACE.runs.load(Ordering::Acquire) > 0 || RACE.exited.load(Ordering::Acquire)),
        "the vCPU never ran on the other CPU"
    );
    let sealed = spare;
    let frequency = arch::counter_frequency().max(1);
    let deadline = arch::counter() + 120 * frequency;
    let (mut evictions, mut k) = (0u64, 0u64);
    while !RACE.exited.load(Ordering::Acquire) {
        RACE.problem()?;
        ensure!(arch::counter() < deadline, "memtest did not finish in 120 s on the other CPU ({evictions} evictions)");
        k += 1;
        let index = VICTIM as u64 + (k * 7) % (pages - VICTIM as u64);
        let ipa = GUEST_RAM_BASE + index * PAGE;
        let orig = vm.ram.start + index * PAGE;
        let r = evict_call(vm.handle, ipa, sealed);
        if r[0] as i64 == INVALID {
            // Powered off and the VM ... still exists: INVALID means gone.
            fail!("VM_EVICT({ipa:#x}) = INVALID_PARAMETER while the VM lives");
        }
        ensure!(r[0] == 0, "VM_EVICT({ipa:#x}) while the vCPU runs = {}", r[0] as i64);
        evictions += 1;
        ensure!(!holds_clear(sealed, ipa), "the sealed page of {ipa:#x} holds the guest's data in clear");
        if let Some(at) = arch::ram_find_nonzero(orig, orig + PAGE) {
            fail!("the page {orig:#x} VM_EVICT gave back ({ipa:#x}) while the vCPU ran is not zero at {at:#x}");
        }
        // Out for a moment (the guest may touch it), then back where it was.
        let until = arch::counter() + frequency / 2000;
        while arch::counter() < until {
            arch::spin_hint();
        }
        let c = restore_code(vm.handle, ipa, sealed, orig, r[1], [r[2], r[3]]);
        ensure!(c == 0, "VM_RESTORE({ipa:#x}) while the vCPU runs = {c}");
    }
    RACE.problem()?;
    let (passed, faults, runs) = (RACE.passed.load(Ordering::Acquire), RACE.faults.load(Ordering::Acquire), RACE.runs.load(Ordering::Acquire));
    ensure!(!RACE.failed.load(Ordering::Acquire), "memtest reported a FAIL line while its pages were evicted under it");
    ensure!(
        RACE.off.load(Ordering::Acquire) && RACE.done.load(Ordering::Acquire) && passed >= 4,
        "memtest on the other CPU ended with {passed} passed, done {}, off {}",
        RACE.done.load(Ordering::Acquire),
        RACE.off.load(Ordering::Acquire)
    );
    arch::ram_zero(sealed, sealed + PAGE);
    vm.destroy()?;
    Ok(msg!(
        "memtest on another CPU: {passed} guest checks passed, {runs} runs, {evictions} pages evicted under it and restored, {faults} EXIT_EVICTED"
    ))
}

fn race_destroy(p: &Platform, arena: &mut Arena, spare: u64) -> Result<Msg, Msg> {
    let mut vm = Vm::create(arena, protected("memtest")?)?;
    let runner_sealed = spare + PAGE;
    let kept_sealed = spare + 2 * PAGE;
    RACE.reset(vm.handle, 2, runner_sealed, &vm);
    start_runner(p)?;
    ensure!(
        crate::cpus::wait_until(20_000, || RACE.runs.load(Ordering::Acquire) >= 3 || RACE.exited.load(Ordering::Acquire)),
        "the vCPU never ran on the other CPU"
    );
    RACE.problem()?;
    // One page out for good.
    let index = (VICTIM + 1) as u64;
    let kept_ipa = GUEST_RAM_BASE + index * PAGE;
    let kept_orig = vm.ram.start + index * PAGE;
    let kept = evict_call(vm.handle, kept_ipa, kept_sealed);
    ensure!(kept[0] == 0, "VM_EVICT({kept_ipa:#x}) = {}", kept[0] as i64);
    // Let the other CPU evict and restore a few, then destroy under it.
    let _ = crate::cpus::wait_until(2_000, || RACE.restores.load(Ordering::Acquire) >= 3);
    let mut busy = 0u64;
    let mut pause = 1u64;
    let c = loop {
        let c = code(HostCall::VmDestroy, &[vm.handle]);
        if c != Error::Busy.code() || busy > 100_000 {
            break c;
        }
        busy += 1;
        pause = (pause * 5 + 3) % 97;
        let until = arch::counter() + pause * 16;
        while arch::counter() < until {
            arch::spin_hint();
        }
    };
    ensure!(c == 0, "VM_DESTROY while the vCPU runs and its pages move = {c} (after {busy} BUSY)");
    vm.destroyed = true;
    ensure!(
        crate::cpus::wait_until(10_000, || RACE.exited.load(Ordering::Acquire)),
        "the other CPU did not stop after VM_DESTROY"
    );
    RACE.problem()?;
    // Everything the VM had: zero, and the host's (writable).
    for range in [vm.ram, vm.metadata] {
        if let Some(at) = arch::ram_find_nonzero(range.start, range.end) {
            fail!("after VM_DESTROY under a running vCPU and moving pages, {at:#x} (in {range}) is not zero");
        }
        for a in [range.start, range.end - 8] {
            arch::ram_write(a, 0x600d_0000 ^ a);
            ensure!(arch::ram_read(a) == 0x600d_0000 ^ a, "{a:#x} is not writable after VM_DESTROY");
            arch::ram_write(a, 0);
        }
    }
    // The kept page: its restore is refused, the fresh page the host's.
    let c = restore_code(vm.handle, kept_ipa, kept_sealed, kept_orig, kept[1], [kept[2], kept[3]]);
    ensure!(c == INVALID, "VM_RESTORE into the destroyed VM = {c}, expected INVALID_PARAMETER");
    host_still_owns(kept_orig, "VM_RESTORE after VM_DESTROY")?;
    host_still_owns(kept_sealed, "the sealed page after VM_DESTROY")?;
    host_still_owns(runner_sealed, "the other CPU's sealed page after VM_DESTROY")?;
    arch::ram_zero(spare, spare + 4 * PAGE);
    Ok(msg!(
        "VM_DESTROY under a running vCPU: {busy} BUSY first, the other CPU had {} runs, {} evictions and {} restores, {} calls refused after; every page zero and the host's",
        RACE.runs.load(Ordering::Acquire),
        RACE.evictions.load(Ordering::Acquire),
        RACE.restores.load(Ordering::Acquire),
        RACE.gone.load(Ordering::Acquire)
    ))
}

/// The bootarg that runs only `swap-race` (`cargo xtask`, case
/// `swap/race`), under whichever hypervisor build the case boots.
pub const RACE_BOOTARG: &str = "testhost.swap-race";

/// Whether the bootargs ask for `swap-race` alone.
pub fn race_selected(p: &Platform) -> bool {
    let Some(chosen) = arch::device_tree_blob(p.boot.x[0])
        .ok()
        .and_then(|blob| dtoolkit::fdt::Fdt::new(blob).ok())
        .and_then(|fdt| fdt.chosen())
    else {
        return false;
    };
    let Ok(Some(bootargs)) = chosen.bootargs() else {
        return false;
    };
    bootargs.split_ascii_whitespace().any(|a| a == RACE_BOOTARG)
}

/// Runs `swap-race`, then the oracle's verdict if the build has one,
/// prints the summary and powers off.
pub fn race_mode(p: &Platform) -> ! {
    let mut failed = 0;
    match swap_race(p) {
        Ok(()) => crate::println!("PASS swap-race"),
        Err(reason) => {
            failed += 1;
            crate::println!("FAIL swap-race: {reason}");
        }
    }
    let oracle = call(HostCall::OracleCheck, &[]);
    if oracle[0] == 0 {
        crate::println!("  oracle: {} violations in {} checked events", oracle[1], oracle[2]);
        if oracle[1] != 0 {
            failed += 1;
            crate::println!("FAIL oracle: {} violations", oracle[1]);
        }
    }
    crate::println!("{} passed, {failed} failed", 1 - failed.min(1));
    crate::psci::system_off();
    arch::halt();
}
