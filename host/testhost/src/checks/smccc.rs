//! PSCI and hypervisor calls over the SMCCC conduits.
//!
//! Register rules the checks hold the hypervisor to (SMCCC 1.1, 64-bit
//! calls): `x4`..`x17` come back unchanged; for a call that fails with
//! NOT_SUPPORTED, `x1`..`x3` come back either unchanged or zero (anything
//! else could be hypervisor data leaking to the host). Every argument
//! register the call does not use holds a distinct sentinel so both rules
//! can be seen.

use rampart_abi::host::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR, HOST_FUNCTION_BASE, HostCall};
use rampart_abi::smccc::{NOT_SUPPORTED, fast_call_id, owner};

use crate::arch::SmcccRegisters;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::psci::{self, Conduit};
use crate::{ensure, fail, note};

/// Sentinel for argument register `n`: recognisable, different per register.
fn sentinel(n: usize) -> u64 {
    0x5e57_1000_0000_0000 | (n as u64) << 32 | 0xcafe_0000 | n as u64
}

/// Arguments `x1`..`x17`: `given` first, sentinels after.
pub(super) fn arguments(given: &[u64]) -> [u64; 17] {
    let mut args = [0u64; 17];
    for (i, arg) in args.iter_mut().enumerate() {
        *arg = given.get(i).copied().unwrap_or_else(|| sentinel(i + 1));
    }
    args
}

/// Checks `x4`..`x17` still hold what was passed.
pub(super) fn preserved(function: u32, sent: &[u64; 17], got: &SmcccRegisters) -> Result<(), Msg> {
    for n in 4..=17 {
        ensure!(
            got[n] == sent[n - 1],
            "call {function:#x}: x{n} not preserved: passed {:#x}, got {:#x}",
            sent[n - 1],
            got[n]
        );
    }
    Ok(())
}

/// Calls `function` with sentinels and expects NOT_SUPPORTED under the
/// register rules above.
fn expect_not_supported(conduit: Conduit, function: u32) -> Result<(), Msg> {
    let sent = arguments(&[]);
    let got = psci::call_via(conduit, function, &sent);
    let x0 = got[0] as i64;
    ensure!(
        x0 == NOT_SUPPORTED,
        "{} {function:#x}: expected x0 = NOT_SUPPORTED (-1), got {x0} ({:#x})",
        conduit.name(),
        got[0]
    );
    for n in 1..=3 {
        ensure!(
            got[n] == sent[n - 1] || got[n] == 0,
            "{} {function:#x}: x{n} = {:#x} is neither the value passed ({:#x}) nor 0",
            conduit.name(),
            got[n],
            sent[n - 1]
        );
    }
    preserved(function, &sent, &got)
}

/// `psci-conduit`: the DT tells the host to make PSCI calls with SMC, which
/// the hypervisor traps and relays.
pub fn psci_conduit(p: &Platform) -> Result<(), Msg> {
    match p.psci_method {
        Some(Conduit::Smc) => Ok(()),
        Some(other) => fail!(
            "expected /psci method = \"smc\", the DT says \"{}\" (no hypervisor?)",
            other.name()
        ),
        None => fail!("expected /psci method = \"smc\", the DT has no usable /psci node"),
    }
}

/// `psci-version`: PSCI_VERSION through the DT's conduit reports 1.0 or later.
pub fn psci_version(p: &Platform) -> Result<(), Msg> {
    let version = psci::call(psci::VERSION, &[]);
    ensure!(
        (0..=i64::from(u32::MAX >> 1)).contains(&version),
        "PSCI_VERSION via {}: expected a version, got {version}",
        p.psci_conduit.name()
    );
    let (major, minor) = (version >> 16, version & 0xffff);
    note!("PSCI {major}.{minor} via {}", p.psci_conduit.name());
    ensure!(
        major >= 1,
        "expected PSCI 1.0 or later, got {major}.{minor}"
    );
    Ok(())
}

/// `hyp-version`: RAMPART_HOST_VERSION returns SUCCESS and this ABI version.
pub fn hyp_version(_: &Platform) -> Result<(), Msg> {
    let function = HostCall::Version.id();
    let sent = arguments(&[]);
    let got = psci::call_via(Conduit::Hvc, function, &sent);
    let x0 = got[0] as i64;
    ensure!(
        x0 == rampart_abi::error::SUCCESS,
        "hvc {function:#x}: expected x0 = SUCCESS (0), got {x0}"
    );
    ensure!(
        got[1] == ABI_VERSION_MAJOR && got[2] == ABI_VERSION_MINOR,
        "expected ABI {ABI_VERSION_MAJOR}.{ABI_VERSION_MINOR}, hypervisor says {}.{}",
        got[1],
        got[2]
    );
    note!("Rampart host ABI {}.{}", got[1], got[2]);
    preserved(function, &sent, &got)
}

/// `hyp-features`: RAMPART_HOST_FEATURES says SUCCESS for every host call
/// and NOT_SUPPORTED for unknown IDs.
pub fn hyp_features(_: &Platform) -> Result<(), Msg> {
    let function = HostCall::Features.id();
    // ORACLE_CHECK exists only in the oracle's test build.
    for call in HostCall::ALL.into_iter().filter(|&c| c != HostCall::OracleCheck) {
        let sent = arguments(&[u64::from(call.id())]);
        let got = psci::call_via(Conduit::Hvc, function, &sent);
        ensure!(
            got[0] as i64 == rampart_abi::error::SUCCESS,
            "FEATURES({}): expected SUCCESS (0), got {}",
            call.name(),
            got[0] as i64
        );
        preserved(function, &sent, &got)?;
    }
    // FEATURES(ORACLE_CHECK) says SUCCESS exactly when the call answers
    // (the oracle's test build), NOT_SUPPORTED otherwise.
    let oracle = HostCall::OracleCheck.id();
    let offered = psci::call_via(Conduit::Hvc, function, &arguments(&[u64::from(oracle)]))[0] as i64;
    let answers = psci::call_via(Conduit::Hvc, oracle, &[])[0] as i64;
    ensure!(
        (offered, answers) == (0, 0) || (offered, answers) == (NOT_SUPPORTED, NOT_SUPPORTED),
        "FEATURES(RAMPART_HOST_ORACLE_CHECK) = {offered} but the call returns {answers}"
    );
    for unknown in [
        0xC600_8FFF_u32,
        first_unassigned_host_call(),
        0x8600_8000,
        0,
    ] {
        let sent = arguments(&[u64::from(unknown)]);
        let got = psci::call_via(Conduit::Hvc, function, &sent);
        ensure!(
            got[0] as i64 == NOT_SUPPORTED,
            "FEATURES({unknown:#x}): expected NOT_SUPPORTED (-1), got {}",
            got[0] as i64
        );
        preserved(function, &sent, &got)?;
    }
    Ok(())
}

/// The lowest function ID in Rampart's host range that this ABI version does
/// not define.
fn first_unassigned_host_call() -> u32 {
    // Host call IDs are not contiguous: pick the first free number after
    // the highest one in use.
    let highest = HostCall::ALL.iter().map(|c| c.id() & 0xffff).max().unwrap_or(0);
    let next = u16::try_from(highest + 1).unwrap_or(HOST_FUNCTION_BASE);
    fast_call_id(true, owner::VENDOR_HYPERVISOR, next)
}

/// `hvc-unknown`: HVCs the hypervisor does not implement return
/// NOT_SUPPORTED and leak nothing.
pub fn hvc_unknown(_: &Platform) -> Result<(), Msg> {
    let ids = [
        0xC600_8FFF,                  // Rampart's range, unassigned
        first_unassigned_host_call(), // next host call a later ABI may add
        0x8600_8000,                  // VERSION's number with the SMC32 convention
        0x4600_8000,                  // VERSION's number as a yielding call
        0x8600_1234,                  // vendor hypervisor, SMC32
        0xC500_0000,                  // standard hypervisor service
    ];
    for id in ids {
        expect_not_supported(Conduit::Hvc, id)?;
    }
    Ok(())
}

/// `smc-unknown`: SMCs not on the hypervisor's allow-list return
/// NOT_SUPPORTED (the hypervisor answers them; they never reach firmware).
pub fn smc_unknown(_: &Platform) -> Result<(), Msg> {
    let ids = [
        0xC200_0001, // SiP service, SMC64
        0x8200_0000, // SiP service, SMC32
        0x8600_1234, // vendor hypervisor number over SMC
        0xC300_0000, // OEM service
        0xF200_0000, // trusted OS call
    ];
    for id in ids {
        expect_not_supported(Conduit::Smc, id)?;
    }
    Ok(())
}
