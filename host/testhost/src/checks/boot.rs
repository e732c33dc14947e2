//! The state the host was entered in (arm64 Linux boot protocol).

use crate::arch::{self, DAIF_ALL};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, note};

/// `boot-state`: entered at EL1 with the MMU and D-cache off, DAIF masked,
/// `x1`..`x3` zero (Documentation/arch/arm64/booting.rst) and `CNTFRQ_EL0`
/// programmed.
pub fn boot_state(p: &Platform) -> Result<(), Msg> {
    let boot = &p.boot;
    let el = (boot.current_el >> 2) & 3;
    note!(
        "entered at EL{el}, x0={:#x} x1={:#x} x2={:#x} x3={:#x}, DAIF={:#x}, SCTLR_EL1={:#x}",
        boot.x[0],
        boot.x[1],
        boot.x[2],
        boot.x[3],
        boot.daif,
        boot.sctlr
    );
    ensure!(el == 1, "expected entry at EL1, entered at EL{el}");
    ensure!(
        boot.sctlr & 1 == 0,
        "expected MMU off, SCTLR_EL1 = {:#x} has M set",
        boot.sctlr
    );
    ensure!(
        boot.sctlr & (1 << 2) == 0,
        "expected D-cache off, SCTLR_EL1 = {:#x} has C set",
        boot.sctlr
    );
    ensure!(
        boot.daif & DAIF_ALL == DAIF_ALL,
        "expected DAIF all masked, DAIF = {:#x}",
        boot.daif
    );
    ensure!(
        boot.x[1..] == [0, 0, 0],
        "expected x1..x3 = 0, got {:#x} {:#x} {:#x}",
        boot.x[1],
        boot.x[2],
        boot.x[3]
    );
    let frequency = arch::counter_frequency();
    ensure!(
        frequency != 0,
        "CNTFRQ_EL0 is 0: the counter frequency was not programmed"
    );
    Ok(())
}
