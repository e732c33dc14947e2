//! The control pages' call page (host ABI 0.6, `docs/abi.md` "The control
//! pages"): a page of host RAM bound to a channel carries a call's
//! registers, and one trapped store to the channel's `CALL` doorbell makes
//! the call.
//!
//! Hostile cases: a call on a channel with no page bound is refused (an
//! abort); only a page the host shared with the hypervisor can be bound,
//! page-aligned, to one channel at a time; while it is bound, no ownership
//! change can take it (`UNSHARE_HYP` is `BUSY`, `SHARE_HYP`, `DONATE_HYP`
//! and `RECLAIM_HYP` are `DENIED`); after an unbind it is the host's to
//! unshare again and the channel refuses calls again.

use rampart_abi::Error;
use rampart_abi::boot::control::{BIND, CALL, CHANNELS};
use rampart_abi::host::HostCall::{self, DonateHyp, ReclaimHyp, ShareHyp, UnshareHyp};
use rampart_abi::host::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR};

use super::carveout::expect_abort;
use super::ownership::{Layout, OK, PAGE, expect, raw_call, short};
use crate::arch::{self, Access};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, msg, note};

const BUSY: i64 = Error::Busy.code();
const DENIED: i64 = Error::Denied.code();
const INVALID: i64 = Error::InvalidParameter.code();

/// Binds `page` (0: unbinds) to the channel at `channel`; returns the
/// result code the channel's `x0` holds afterwards.
fn bind(channel: u64, page: u64) -> i64 {
    arch::mmio_write64(channel + BIND, page);
    arch::mmio_read64(channel) as i64
}

/// Expects binding `page` to `channel` to return `want`.
fn expect_bind(channel: u64, page: u64, want: i64, what: &str) -> Result<(), Msg> {
    let got = bind(channel, page);
    ensure!(
        got == want,
        "BIND {page:#x} ({what}) on channel {channel:#x} returned {got}, expected {want}"
    );
    Ok(())
}

/// A call through the call page `page` of `channel`: `regs` in, one store
/// to `CALL`, the results out.
fn call(channel: u64, page: u64, regs: &[u64; 18]) -> [u64; 18] {
    for (i, v) in regs.iter().enumerate() {
        arch::mmio_write64(page + 8 * i as u64, *v);
    }
    arch::mmio_write64(channel + CALL, 0);
    core::array::from_fn(|i| arch::mmio_read64(page + 8 * i as u64))
}

/// Registers for call `id` with `args` in `x1`.. and a pattern after them.
fn request(id: HostCall, args: &[u64]) -> [u64; 18] {
    core::array::from_fn(|i| match i {
        0 => u64::from(id.id()),
        i if i <= args.len() => args[i - 1],
        i => 0x5a5a_0000 + i as u64,
    })
}

/// `control-call-page`: see the module documentation.
pub fn control_call_page(p: &Platform) -> Result<(), Msg> {
    let control = p
        .control_pages()
        .ok_or_else(|| msg!("no rampart,control node in the DT"))?;
    ensure!(
        control.size() == CHANNELS * PAGE,
        "the control pages {control} are not {CHANNELS} pages"
    );
    let l = Layout::find(p)?;
    // Pages of scratch block 0 no other check uses.
    let page = l.block(0) + 300 * PAGE;
    let other = page + PAGE;
    // The last two channels (the fuzz mode's CPUs start at channel 0).
    let ch = control.start + (CHANNELS - 1) * PAGE;
    let ch2 = control.start + (CHANNELS - 2) * PAGE;
    let result = (|| {
        // Nothing bound: the call doorbell refuses, so does an unbind.
        expect_abort(Access::Store, ch + CALL).map_err(|m| msg!("CALL with no page bound: {m}"))?;
        expect_bind(ch, 0, INVALID, "unbind with nothing bound")?;
        // Only a page the host shared with the hypervisor.
        expect_bind(ch, page, DENIED, "a page the host did not share")?;
        expect_bind(ch, l.carveout.start, DENIED, "the carve-out")?;
        expect_bind(ch, control.start, DENIED, "a control page")?;
        expect_bind(ch, page + 8, INVALID, "not page-aligned")?;
        expect_abort(Access::Store, ch + CALL)
            .map_err(|m| msg!("CALL after refused binds: {m}"))?;

        expect(ShareHyp, page, 1, OK)?;
        expect(ShareHyp, other, 1, OK)?;
        expect_bind(ch, page, OK, "a shared page")?;
        expect_bind(ch, page, OK, "the page already bound")?;
        expect_bind(ch, other, BUSY, "a second page")?;
        expect_bind(ch2, page, BUSY, "a page bound to another channel")?;

        // Bound, the page is out of reach of every ownership change.
        for (c, want) in [
            (UnshareHyp, BUSY),
            (ShareHyp, DENIED),
            (DonateHyp, DENIED),
            (ReclaimHyp, DENIED),
        ] {
            expect(c, page, 1, want).map_err(|m| msg!("the bound call page: {m}"))?;
            // A range that only starts on it.
            let got = raw_call(c, page - PAGE, 2);
            ensure!(
                got != OK,
                "{}({:#x}, 2) over the bound call page succeeded",
                short(c),
                page - PAGE
            );
        }

        // Calls through the page: VERSION, then a memory call with
        // arguments (SHARE_HYP, UNSHARE_HYP of the unbound shared page's
        // neighbour), each answered in the page.
        let r = call(ch, page, &request(HostCall::Version, &[]));
        ensure!(
            (r[0], r[1], r[2]) == (0, ABI_VERSION_MAJOR, ABI_VERSION_MINOR),
            "VERSION through the call page returned {:#x} {:#x} {:#x}",
            r[0],
            r[1],
            r[2]
        );
        let third = other + PAGE;
        for (c, want) in [(ShareHyp, OK), (ShareHyp, DENIED), (UnshareHyp, OK)] {
            let r = call(ch, page, &request(c, &[third, 1]));
            ensure!(
                r[0] as i64 == want,
                "{}({third:#x}, 1) through the call page returned {}, expected {want}",
                short(c),
                r[0] as i64
            );
        }
        // An unknown function: NOT_SUPPORTED, as over HVC.
        let mut bogus = request(HostCall::Version, &[]);
        bogus[0] = 0xc600_7fff;
        let r = call(ch, page, &bogus);
        ensure!(
            r[0] as i64 == Error::NotSupported.code(),
            "an unknown function through the call page returned {:#x}",
            r[0]
        );

        // The other channel still has nothing bound.
        expect_abort(Access::Store, ch2 + CALL)
            .map_err(|m| msg!("CALL on an unbound channel: {m}"))?;

        // Unbound, the page is the host's to unshare, and the channel
        // refuses calls again.
        expect_bind(ch, 0, OK, "unbind")?;
        expect_abort(Access::Store, ch + CALL).map_err(|m| msg!("CALL after the unbind: {m}"))?;
        expect(UnshareHyp, page, 1, OK)?;
        expect(UnshareHyp, other, 1, OK)?;
        note!(
            "control-call-page: channel {ch:#x}, page {page:#x}: bind, refusals and calls as documented"
        );
        Ok(())
    })();
    if result.is_err() {
        bind(ch, 0);
        bind(ch2, 0);
        for a in [page, other, other + PAGE] {
            raw_call(UnshareHyp, a, 1);
        }
    }
    result
}
