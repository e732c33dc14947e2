//! The hypervisor's page-table memory under a host that drains it on
//! purpose (`docs/design.md`, "Table memory").
//!
//! - `pool-vm-stage2-straddle`: a VM with the fewest stage-2 table pages
//!   gets two pages across a 512 GiB guest-physical boundary when only
//!   four table pages are left: the hypervisor must refuse with
//!   `NO_MEMORY` (the mapping needs five, six in the worst case), change
//!   nothing, and keep running. (An estimate of four let it through and
//!   the allocator ran dry mid-mapping: a panic at EL2.)
//! - `pool-drain`: the host shares one page per 2 MiB of its RAM with the
//!   hypervisor (each costs EL2 stage-1 and host stage-2 tables) and
//!   donates single scattered pages to a VM (each holds back what its
//!   return costs) until a call says `NO_MEMORY`; then it makes every call,
//!   runs two protected guests (`hello`, `timer`) through their first run
//!   (measurement) and their exits, donates to one late, destroys every VM and gives everything
//!   back. Everything answers, nothing stops the machine, and a second
//!   drain takes at least as many calls as the first (the pool recovered).

use rampart_abi::Error;
use rampart_abi::host::HostCall::{self, ShareHyp, UnshareHyp};
use rampart_abi::host::VmConfig;

use super::ownership::{Layout, OK, expect_zero, pages, rewrite};
use super::vm::arena;
use super::vmm::run::{self, Plain};
use super::vmm::{Arena, PAGE, Spec, Vm, code, short};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::ranges::{Range, RangeSet};
use crate::{ensure, fail, msg, note};

const NO_MEMORY: i64 = Error::NoMemory.code();
const RANGE: i64 = Error::Range.code();
/// A 2 MiB block.
const BLOCK: u64 = 2 << 20;
/// Where the host-side pattern of the straddle check starts.
const SEED: u64 = 0x5742_dd1e_0000_0000;
/// Page offset inside each 2 MiB block of the pages shared to drain.
const SHARE_OFFSET: u64 = 7;
/// Page offsets of the donation passes (one page per block each).
const DONATE_OFFSETS: [u64; 12] = [9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];

/// `x0` of a host call.
fn call(c: HostCall, args: &[u64]) -> i64 {
    code(c, args)
}

/// Expects `want` from a call.
fn expect(c: HostCall, args: &[u64], want: i64, what: &str) -> Result<(), Msg> {
    let got = call(c, args);
    ensure!(
        got == want,
        "{what}: {}({args:x?}) = {got}, expected {want}",
        short(c)
    );
    Ok(())
}

/// Expects `OK` or `NO_MEMORY`; returns whether it succeeded.
fn ok_or_no_memory(c: HostCall, args: &[u64], what: &str) -> Result<bool, Msg> {
    let got = call(c, args);
    ensure!(
        got == OK || got == NO_MEMORY,
        "{what} with the pool drained: {}({args:x?}) = {got}, expected OK or NO_MEMORY",
        short(c)
    );
    Ok(got == OK)
}

/// Creates a VM that is not protected with `metadata_pages` of metadata
/// from `arena`; returns its handle.
fn bare_vm(arena: &mut Arena, metadata_pages: u64) -> Result<u64, Msg> {
    let config = VmConfig {
        debug: false,
        protected: false,
        max_vcpus: 1,
    };
    let metadata = arena.take(metadata_pages)?;
    let r = super::vmm::call(
        HostCall::VmCreate,
        &[metadata, metadata_pages, config.encode()],
    );
    ensure!(
        r[0] == 0,
        "VM_CREATE({metadata:#x}, {metadata_pages}) = {}",
        r[0] as i64
    );
    Ok(r[1])
}

/// `pool-vm-stage2-straddle`.
pub fn pool_vm_stage2_straddle(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let config = VmConfig {
        debug: false,
        protected: false,
        max_vcpus: 1,
    };
    // The root and 7 more stage-2 table pages.
    let handle = bare_vm(&mut arena, config.min_metadata_pages())?;
    let data = arena.take(4)?;
    rewrite(pages(data, 4), SEED)?;
    let result = (|| -> Result<&'static str, Msg> {
        // One page at guest address 0: a level-1, a level-2 and a level-3
        // table under a level-0 root; one page at 2 MiB: a level-3 table.
        // Of the 1 + 8 table pages VM_CREATE gives the VM's stage 2 (the
        // root among them), four are left.
        expect(
            HostCall::VmDonate,
            &[handle, data, 1, 0],
            OK,
            "one page at IPA 0",
        )?;
        expect(
            HostCall::VmDonate,
            &[handle, data + 3 * PAGE, 1, BLOCK],
            OK,
            "one page at IPA 2 MiB",
        )?;
        let ipa = (1u64 << 39) - PAGE;
        let got = call(HostCall::VmDonate, &[handle, data + PAGE, 2, ipa]);
        if got == RANGE {
            // A level-1 root (39-bit IPA): there is no 512 GiB boundary.
            // Nothing changed; give the VM the two pages where they fit, so
            // the teardown below returns all four zeroed as on other CPUs.
            super::ownership::expect_pattern(pages(data + PAGE, 2), SEED)?;
            expect(HostCall::VmDonate, &[handle, data + PAGE, 2, PAGE], OK, "two pages at IPA 4 KiB")?;
            return Ok("39-bit IPA: no 512 GiB boundary to straddle");
        }
        ensure!(
            got == NO_MEMORY,
            "two pages across 512 GiB need 6 table pages, 4 are left: VM_DONATE = {got}, expected NO_MEMORY"
        );
        // Nothing changed: the pages are still the host's, with their data.
        super::ownership::expect_pattern(pages(data + PAGE, 2), SEED)?;
        // What fits still works: the same two pages next to the first.
        expect(
            HostCall::VmDonate,
            &[handle, data + PAGE, 2, PAGE],
            OK,
            "two pages at IPA 4 KiB",
        )?;
        Ok("refused with NO_MEMORY, nothing changed")
    })();
    let destroyed = expect(HostCall::VmDestroy, &[handle], OK, "VM_DESTROY");
    let outcome = result?;
    destroyed?;
    expect_zero(pages(data, 4))?;
    rewrite(pages(data, 4), SEED)?;
    note!("{outcome}");
    Ok(())
}

/// Host RAM the drain may use: writable RAM outside the scratch window.
fn drain_ranges(p: &Platform, layout: &Layout) -> Result<RangeSet<64>, Msg> {
    let mut ranges = super::ram::test_ranges(p)?;
    ranges.subtract(&layout.scratch);
    ensure!(!ranges.overflowed(), "too many RAM ranges");
    Ok(ranges)
}

/// Calls `f` with the page `offset` pages into every 2 MiB block of
/// `ranges`, in address order, until it returns `Ok(true)`; returns
/// whether it did.
fn each_block_page(
    ranges: &RangeSet<64>,
    offset: u64,
    f: &mut dyn FnMut(u64) -> Result<bool, Msg>,
) -> Result<bool, Msg> {
    for r in ranges.as_slice() {
        let mut block = r.start & !(BLOCK - 1);
        while block < r.end {
            let page = block + offset * PAGE;
            if r.contains_range(&Range::from_base_size(page, PAGE)) && f(page)? {
                return Ok(true);
            }
            block += BLOCK;
        }
    }
    Ok(false)
}

/// What one drain took.
#[derive(Clone, Copy, Default)]
struct Drained {
    /// Pages shared with the hypervisor (one per block, at [`SHARE_OFFSET`]).
    shared: u64,
    /// Pages donated to the drain VM.
    donated: u64,
    /// Whether a call said `NO_MEMORY`.
    exhausted: bool,
}

/// Shares one page per block (each needs EL2 stage-1 and host stage-2
/// tables), then donates single pages (each also holds back what its
/// return costs) until a call says `NO_MEMORY`.
fn drain(ranges: &RangeSet<64>, vm: u64) -> Result<Drained, Msg> {
    let mut d = Drained::default();
    let mut share = |page: u64| -> Result<bool, Msg> {
        match call(ShareHyp, &[page, 1]) {
            OK => {
                d.shared += 1;
                Ok(false)
            }
            NO_MEMORY => Ok(true),
            other => Err(msg!("SHARE_HYP({page:#x}, 1) = {other} while draining")),
        }
    };
    let mut exhausted = each_block_page(ranges, SHARE_OFFSET, &mut share)?;
    let mut offsets = DONATE_OFFSETS.iter();
    while !exhausted && let Some(&offset) = offsets.next() {
        exhausted = each_block_page(ranges, offset, &mut |page| match call(
            HostCall::VmDonate,
            &[vm, page, 1, d.donated * PAGE],
        ) {
            OK => {
                d.donated += 1;
                Ok(false)
            }
            NO_MEMORY => Ok(true),
            other => Err(msg!(
                "VM_DONATE({page:#x}, 1, IPA {:#x}) = {other} while draining",
                d.donated * PAGE
            )),
        })?;
    }
    d.exhausted = exhausted;
    Ok(d)
}

/// Unshares the pages [`drain`] shared; all must succeed.
fn unshare(ranges: &RangeSet<64>, d: &Drained) -> Result<(), Msg> {
    let mut failure = None;
    let mut left = d.shared;
    each_block_page(ranges, SHARE_OFFSET, &mut |page| {
        if left == 0 {
            return Ok(true);
        }
        left -= 1;
        let got = call(UnshareHyp, &[page, 1]);
        if got != OK && failure.is_none() {
            failure = Some(msg!(
                "UNSHARE_HYP({page:#x}, 1) = {got} when giving the drain back"
            ));
        }
        Ok(false)
    })?;
    failure.map_or(Ok(()), Err)
}

/// `pool-drain`.
pub fn pool_drain(p: &Platform) -> Result<(), Msg> {
    let (mut arena, layout) = arena(p)?;
    let ranges = drain_ranges(p, &layout)?;
    // Made before the drain: protected guests to run afterwards (console
    // MMIO, hypercalls, timer interrupts, waits, power-off).
    let mut vms = [
        Vm::create(&mut arena, Spec::signed("hello")?)?,
        Vm::create(&mut arena, Spec::signed("timer")?)?,
    ];
    let late_page = arena.take(1)?;
    // Two single pages, then metadata for a VM_CREATE while drained.
    let spare = arena.take(
        2 + VmConfig {
            debug: false,
            protected: false,
            max_vcpus: 1,
        }
        .min_metadata_pages(),
    )?;
    let drain_vm = bare_vm(
        &mut arena,
        VmConfig {
            debug: false,
            protected: false,
            max_vcpus: 1,
        }
        .min_metadata_pages()
            + 24,
    )?;

    let mut first = Drained::default();
    let mut destroyed = false;
    let mut result = (|| -> Result<(), Msg> {
        first = drain(&ranges, drain_vm)?;
        ensure!(
            first.exhausted,
            "the pool never ran out: {} pages shared, {} donated",
            first.shared,
            first.donated
        );
        // Every call answers with the pool drained.
        ensure_nonnegative(call(HostCall::Version, &[]), "VERSION")?;
        expect(
            HostCall::VmDonate,
            &[drain_vm, spare, 1, 1 << 30],
            NO_MEMORY,
            "VM_DONATE",
        )?;
        expect(
            HostCall::VmShare,
            &[drain_vm, spare, 1, 1 << 30],
            NO_MEMORY,
            "VM_SHARE",
        )?;
        if ok_or_no_memory(ShareHyp, &[spare, 1], "SHARE_HYP")? {
            expect(UnshareHyp, &[spare, 1], OK, "UNSHARE_HYP")?;
        }
        if ok_or_no_memory(HostCall::DonateHyp, &[spare + PAGE, 1], "DONATE_HYP")? {
            expect(HostCall::ReclaimHyp, &[spare + PAGE, 1], OK, "RECLAIM_HYP")?;
        }
        let config = VmConfig {
            debug: false,
            protected: false,
            max_vcpus: 1,
        };
        let r = super::vmm::call(
            HostCall::VmCreate,
            &[
                spare + 2 * PAGE,
                config.min_metadata_pages(),
                config.encode(),
            ],
        );
        ensure!(
            r[0] as i64 == NO_MEMORY || r[0] == 0,
            "VM_CREATE with the pool drained = {}, expected OK or NO_MEMORY",
            r[0] as i64
        );
        if r[0] == 0 {
            expect(
                HostCall::VmDestroy,
                &[r[1]],
                OK,
                "VM_DESTROY of a VM made while drained",
            )?;
        }
        expect(HostCall::VcpuCreate, &[drain_vm, 0], OK, "VCPU_CREATE")?;
        expect(
            HostCall::VcpuSetRegs,
            &[drain_vm, 0, 0, 0],
            OK,
            "VCPU_SET_REGS",
        )?;
        ensure_nonnegative(call(HostCall::VmList, &[0]), "VM_LIST")?;
        ensure_nonnegative(
            call(HostCall::Features, &[HostCall::VmDonate.id().into()]),
            "FEATURES",
        )?;
        let key = call(HostCall::AttestationKey, &[]);
        ensure!(
            key == OK || key == Error::NotSupported.code(),
            "ATTESTATION_KEY with the pool drained = {key}"
        );
        expect(HostCall::VcpuInject, &[drain_vm, 0, 32], OK, "VCPU_INJECT")?;
        // Protected guests' first runs (measured through the fixmap) and
        // their exits.
        let report = run::run(p, &mut vms, &[&[0], &[0]], &mut Plain, 8_000)?;
        report.verdict(&vms, 0)?;
        report.verdict(&vms, 1)?;
        // A late donation must be zeroed before the guest sees it; with
        // the pool drained it may be refused, never stop the machine.
        if ok_or_no_memory(
            HostCall::VmDonate,
            &[vms[0].handle, late_page, 1, 64 << 20],
            "late VM_DONATE",
        )? {
            vms[0].extra[0] = (late_page, 64 << 20);
            vms[0].extra_count = 1;
        }
        // Teardown while drained.
        vms[0].destroy()?;
        vms[1].destroy()?;
        expect(
            HostCall::VmDestroy,
            &[drain_vm],
            OK,
            "VM_DESTROY of the drain VM",
        )?;
        destroyed = true;
        unshare(&ranges, &first)?;
        Ok(())
    })();
    if !destroyed {
        let _ = call(HostCall::VmDestroy, &[drain_vm]);
        let _ = unshare(&ranges, &first);
    }
    result?;

    // The pool recovered: a second drain gets as far.
    let drain_vm = bare_vm(
        &mut arena,
        VmConfig {
            debug: false,
            protected: false,
            max_vcpus: 1,
        }
        .min_metadata_pages()
            + 24,
    )?;
    let second = drain(&ranges, drain_vm);
    result = expect(
        HostCall::VmDestroy,
        &[drain_vm],
        OK,
        "VM_DESTROY of the second drain VM",
    );
    if let Ok(second) = &second {
        result = result.and(unshare(&ranges, second));
    }
    let second = second?;
    result?;
    let total = |d: &Drained| d.shared + d.donated;
    ensure!(
        second.exhausted && total(&second) >= total(&first),
        "the pool did not recover: the first drain took {} calls ({} shares, {} donations), the second {} ({}, {})",
        total(&first),
        first.shared,
        first.donated,
        total(&second),
        second.shared,
        second.donated
    );
    note!(
        "drained with {} shares and {} donations; every call answered; the second drain took {} and {}",
        first.shared,
        first.donated,
        second.shared,
        second.donated
    );
    Ok(())
}

fn ensure_nonnegative(x0: i64, what: &str) -> Result<(), Msg> {
    if x0 < 0 {
        fail!("{what} with the pool drained = {x0}");
    }
    Ok(())
}
