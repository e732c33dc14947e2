//! The hypervisor's carve-out: described to the host as `no-map` reserved
//! memory, and unreadable and unwritable by it (an access becomes a
//! synchronous external abort at the host's own EL1 vector).

use core::fmt::Write as _;

use rampart_abi::boot::{CARVEOUT_COMPATIBLE, CARVEOUT_NODE_NAME};

use crate::arch::{self, Access, DAIF_ALL, MODE_EL1H, PROBE_NZCV, VectorKind};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::ranges::Range;
use crate::{ensure, fail, note};

/// `ESR_ELx.EC` of a data abort taken without a change in exception level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// `ESR_ELx.IL`: 32-bit instruction.
const ESR_IL: u64 = 1 << 25;
/// Data fault status code of a synchronous external abort (not on a walk).
const DFSC_SYNC_EXTERNAL_ABORT: u64 = 0x10;
/// `ESR_ELx.ISS.WnR`.
const ESR_WNR: u64 = 1 << 6;
/// `ESR_ELx.ISS.FnV`: `FAR` is not valid.
const ESR_FNV: u64 = 1 << 10;
/// What a load that faults must leave in its destination register.
const SENTINEL: u64 = 0x5e47_14e1_dead_c0de;
/// What the probing store tries to write.
const STORE_VALUE: u64 = 0x0bad_f00d_0bad_f00d;

/// `carveout-dt`: exactly one `/reserved-memory/rampart-hypervisor@<addr>`
/// node, with the right `compatible`, `no-map`, one or two page-aligned
/// `reg` entries (the fixed carve-out, whose address matches the unit
/// address, then the part sized at boot); and none of it is memory the host was
/// handed as usable (or holds the host's image or DT).
pub fn carveout_dt(p: &Platform) -> Result<(), Msg> {
    let mut nodes = p.carveout_nodes();
    let Some(node) = nodes.next() else {
        fail!(
            "expected a /reserved-memory/{CARVEOUT_NODE_NAME}@<addr> node, found none (not running under Rampart?)"
        );
    };
    ensure!(
        nodes.next().is_none(),
        "expected one carve-out node, found several (first: {})",
        node.name
    );
    let name = &node.name;
    ensure!(
        node.name_matches,
        "node {name} has compatible {CARVEOUT_COMPATIBLE} but is not named {CARVEOUT_NODE_NAME}@<addr>"
    );
    ensure!(
        node.compatible_matches,
        "node {name}: expected compatible = \"{CARVEOUT_COMPATIBLE}\""
    );
    ensure!(node.no_map, "node {name}: expected a no-map property");
    let regs = node.reg.as_slice();
    // The fixed carve-out (named by the unit address), then the part the
    // hypervisor sized at boot from the machine (ownership table, per-CPU
    // stacks and state).
    ensure!(
        regs.len() == 1 || regs.len() == 2,
        "node {name}: expected one or two reg entries, found {}",
        regs.len()
    );
    ensure!(
        node.unit_address == Some(regs[0].start),
        "node {name}: unit address does not match reg {}",
        regs[0]
    );
    for &carveout in regs {
        ensure!(
            carveout.size() > 0 && carveout.start % 4096 == 0 && carveout.size() % 4096 == 0,
            "node {name}: reg {carveout} is empty or not page-aligned"
        );
        note!("carve-out {carveout} ({} KiB)", carveout.size() >> 10);
        for usable in p.usable_memory().as_slice() {
            ensure!(
                !usable.overlaps(&carveout),
                "carve-out {carveout} overlaps usable memory {usable}"
            );
        }
        ensure!(
            !p.image.overlaps(&carveout),
            "carve-out {carveout} overlaps the host image {}",
            p.image
        );
        ensure!(
            !p.dt.overlaps(&carveout),
            "carve-out {carveout} overlaps the host's DT {}",
            p.dt
        );
        if !p
            .memory
            .as_slice()
            .iter()
            .any(|m| m.contains_range(&carveout))
        {
            note!("the carve-out {carveout} is not inside any /memory node");
        }
    }
    Ok(())
}

/// The first and last 64-bit words of `range`, which must not hold anything
/// the test host uses (a store there could otherwise land).
fn ends(p: &Platform, range: Range) -> Result<[u64; 2], Msg> {
    ensure!(
        range.size() >= 8 && range.start.is_multiple_of(8),
        "probe range {range} is too small or unaligned"
    );
    ensure!(
        !range.overlaps(&p.image) && !range.overlaps(&p.dt),
        "probe range {range} overlaps the test host image {} or its DT {}",
        p.image,
        p.dt
    );
    Ok([range.start, (range.end - 8) & !7])
}

/// Probes `address` once and checks the host saw exactly a synchronous
/// external abort at its current-EL vector, with the syndrome, addresses and
/// saved state the architecture gives a real one.
pub(super) fn expect_abort(access: Access, address: u64) -> Result<(), Msg> {
    let value = if access == Access::Load {
        SENTINEL
    } else {
        STORE_VALUE
    };
    let what = if access == Access::Load {
        "load from"
    } else {
        "store to"
    };
    let outcome = arch::probe(access, address, value);
    let Some(e) = outcome.fault else {
        if access == Access::Load {
            fail!(
                "{what} {address:#x} completed without an exception and read {:#x}",
                outcome.register
            );
        }
        fail!("{what} {address:#x} completed without an exception");
    };
    let mut problems = <Msg>::new();
    let mut problem = |args: core::fmt::Arguments<'_>| {
        let separator = if problems.is_empty() { "" } else { "; " };
        let _ = write!(problems, "{separator}{args}");
    };
    if VectorKind::from_index(e.vector) != VectorKind::CurrentSync {
        problem(format_args!(
            "taken at the {} vector, expected sync/EL1h (VBAR_EL1 + 0x200)",
            VectorKind::from_index(e.vector).describe()
        ));
    }
    if e.ec() != EC_DATA_ABORT_SAME_EL {
        problem(format_args!(
            "ESR.EC = {:#x}, expected 0x25 (data abort, same EL)",
            e.ec()
        ));
    }
    if e.esr & ESR_IL == 0 {
        problem(format_args!("ESR.IL = 0, expected 1"));
    }
    if e.esr & 0x3f != DFSC_SYNC_EXTERNAL_ABORT {
        problem(format_args!(
            "DFSC = {:#x}, expected 0x10 (synchronous external abort)",
            e.esr & 0x3f
        ));
    }
    let wnr = e.esr & ESR_WNR != 0;
    if wnr != (access == Access::Store) {
        problem(format_args!(
            "WnR = {}, expected {}",
            u8::from(wnr),
            u8::from(access == Access::Store)
        ));
    }
    if e.esr & ESR_FNV != 0 {
        problem(format_args!("FnV = 1 (FAR not valid), expected 0"));
    }
    if e.far != address {
        problem(format_args!("FAR = {:#x}, expected {address:#x}", e.far));
    }
    if e.elr != outcome.pc {
        problem(format_args!(
            "ELR = {:#x}, expected the access at {:#x}",
            e.elr, outcome.pc
        ));
    }
    let expected_spsr = PROBE_NZCV | outcome.daif_before | MODE_EL1H;
    let spsr_fields = (0xf << 28) | DAIF_ALL | 0x1f;
    if e.spsr & spsr_fields != expected_spsr {
        problem(format_args!(
            "SPSR = {:#x}, expected NZCV/DAIF/M = {expected_spsr:#x} (the PSTATE at the access)",
            e.spsr
        ));
    }
    if e.daif_on_entry & DAIF_ALL != DAIF_ALL {
        problem(format_args!(
            "the vector ran with DAIF = {:#x}, expected all masked",
            e.daif_on_entry
        ));
    }
    if access == Access::Load
        && (outcome.register != SENTINEL || outcome.register_in_frame != SENTINEL)
    {
        problem(format_args!(
            "the destination register changed to {:#x} (frame {:#x}): data reached the host",
            outcome.register, outcome.register_in_frame
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::msg!(
            "{what} {address:#x}: {problems} [ESR={:#x}]",
            e.esr
        ))
    }
}

/// The ranges the abort checks probe: [`Platform::probe_target`], then,
/// unless `testhost.probe=` overrides it, the carve-out's part sized at
/// boot (its node's second `reg`), if the node has one.
fn targets(p: &Platform) -> Result<[Option<Range>; 2], Msg> {
    let first = p.probe_target()?;
    let second = if p.probe_override.is_some() {
        None
    } else {
        p.carveout_nodes().next().and_then(|n| n.reg.as_slice().get(1).copied())
    };
    Ok([Some(first), second])
}

/// `carveout-read`: 64-bit loads from the first and last word of the
/// carve-out (each of its ranges) abort as described at [`expect_abort`]
/// and return no data.
pub fn carveout_read(p: &Platform) -> Result<(), Msg> {
    for target in targets(p)?.into_iter().flatten() {
        for address in ends(p, target)? {
            expect_abort(Access::Load, address)?;
        }
    }
    Ok(())
}

/// `carveout-write`: 64-bit stores to the first and last word of the
/// carve-out (each of its ranges) abort with WnR = 1; afterwards the host
/// still runs and a load still aborts.
pub fn carveout_write(p: &Platform) -> Result<(), Msg> {
    for target in targets(p)?.into_iter().flatten() {
        let [first, last] = ends(p, target)?;
        expect_abort(Access::Store, first)?;
        expect_abort(Access::Store, last)?;
        expect_abort(Access::Load, first).map_err(|m| crate::msg!("after the stores: {m}"))?;
    }
    Ok(())
}
