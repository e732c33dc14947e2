//! `ownership`: EL2 instructions of the host memory calls, on one page and
//! on a whole 2 MiB block, plus the floor of any host call.
//!
//! Each round shares, unshares, donates and reclaims the same range, so
//! every call starts from the state the previous round left: the first
//! round's single-page share is the one that splits the 2 MiB block mapping
//! of the host stage 2 (`first=` in the output shows it).

use rampart_abi::host::HostCall::{self, DonateHyp, ReclaimHyp, ShareHyp, UnshareHyp, Version};

use super::{BLOCK, PAGE, ROUNDS, Scratch, Series, UNKNOWN_HOST_CALL, measure, measure_id};
use crate::msg::Msg;
use crate::psci::{self, Conduit};
use crate::{ensure, msg};

/// The four calls, in the order each round makes them.
const CALLS: [(HostCall, &str); 4] = [
    (ShareHyp, "share-hyp"),
    (UnshareHyp, "unshare-hyp"),
    (DonateHyp, "donate-hyp"),
    (ReclaimHyp, "reclaim-hyp"),
];

/// Runs the group.
pub fn run(scratch: &Scratch) -> Result<(), Msg> {
    let mut unknown = Series::new();
    let mut version = Series::new();
    for _ in 0..ROUNDS {
        let (d, r) = measure_id(UNKNOWN_HOST_CALL, &[]);
        ensure!(r[0] as i64 == -1, "unknown call returned {}", r[0] as i64);
        unknown.push(d);
        let (d, r) = measure(Version, &[]);
        ensure!(r[0] == 0, "VERSION returned {}", r[0] as i64);
        version.push(d);
    }
    unknown.report("host/hvc-unknown");
    version.report("host/version");

    // A page in the middle of a block that starts out mapped as one 2 MiB
    // block, and a whole other such block.
    let ranges = [
        ("1p", scratch.block(0) + 100 * PAGE, 1),
        ("2m", scratch.block(1), BLOCK / PAGE),
    ];
    for (label, start, pages) in ranges {
        let result = transitions(label, start, pages);
        if result.is_err() {
            restore(start, pages);
        }
        result?;
    }
    Ok(())
}

fn transitions(label: &str, start: u64, pages: u64) -> Result<(), Msg> {
    let mut series = [Series::new(); 4];
    for round in 0..ROUNDS {
        for ((call, name), s) in CALLS.iter().zip(&mut series) {
            let (d, r) = measure(*call, &[start, pages]);
            ensure!(
                r[0] == 0,
                "round {round}: {name}({start:#x}, {pages}) returned {}",
                r[0] as i64
            );
            s.push(d);
        }
    }
    for ((_, name), s) in CALLS.iter().zip(&series) {
        s.report(msg!("ownership/{name}-{label}").as_str());
    }
    Ok(())
}

/// Gives the range back to the host whatever state a failure left it in.
fn restore(start: u64, pages: u64) {
    for call in [ReclaimHyp, UnshareHyp] {
        psci::call_via(Conduit::Hvc, call.id(), &[start, pages]);
    }
}
