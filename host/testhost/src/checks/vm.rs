//! Virtual machines: the test host as a (hostile) VMM.

use rampart_abi::host::{ExitReason, HostCall, VmConfig};

use super::ownership::Layout;
use crate::arch;
use crate::msg::Msg;
use crate::platform::Platform;
use crate::psci::{self, Conduit};
use crate::{ensure, note};

fn call(call: HostCall, args: &[u64]) -> [u64; 18] {
    psci::call_via(Conduit::Hvc, call.id(), args)
}

/// A tiny non-protected guest, hand-assembled: prints `H` through the UART
/// at 0x0900_0000 and powers off with PSCI SYSTEM_OFF over HVC.
const HELLO: [u32; 7] = [
    0xD2A1_2001, // movz x1, #0x0900, lsl #16
    0xD280_0902, // movz x2, #'H'
    0x3900_0022, // strb w2, [x1]
    0xD280_0100, // movz x0, #8
    0xF2B0_8000, // movk x0, #0x8400, lsl #16
    0xD400_0002, // hvc #0
    0x1400_0000, // b .
];

/// `vm-bringup`: create a VM, run a tiny guest to its MMIO write and
/// SYSTEM_OFF, destroy it, and check every page came back.
pub fn vm_bringup(p: &Platform) -> Result<(), Msg> {
    let layout = Layout::find(p)?;
    let metadata = layout.block(0);
    let guest = layout.block(1);
    for (i, word) in HELLO.chunks(2).enumerate() {
        let value = u64::from(word[0]) | (u64::from(*word.get(1).unwrap_or(&0)) << 32);
        arch::ram_write(guest + 8 * i as u64, value);
    }
    let config = VmConfig { protected: false, max_vcpus: 1 }.encode();
    let r = call(HostCall::VmCreate, &[metadata, 16, config]);
    ensure!(r[0] == 0, "VM_CREATE returned {}", r[0] as i64);
    let handle = r[1];
    let r = call(HostCall::VcpuCreate, &[handle, 0]);
    ensure!(r[0] == 0, "VCPU_CREATE returned {}", r[0] as i64);
    let r = call(HostCall::VmDonate, &[handle, guest, 1, 0x8000_0000]);
    ensure!(r[0] == 0, "VM_DONATE returned {}", r[0] as i64);
    let r = call(HostCall::VcpuRun, &[handle, 0, 0]);
    ensure!(r[0] == 0, "VCPU_RUN returned {}", r[0] as i64);
    ensure!(
        r[1] == ExitReason::Mmio as u64 && r[2] == 0x0900_0000 && r[4] == u64::from(b'H'),
        "expected an MMIO write of 'H' to 0x9000000, got exit {} {:#x} {:#x} {:#x}",
        r[1],
        r[2],
        r[3],
        r[4]
    );
    let r = call(HostCall::VcpuRun, &[handle, 0, 0]);
    ensure!(
        r[0] == 0 && r[1] == ExitReason::SystemOff as u64,
        "expected SYSTEM_OFF, got {} / exit {}",
        r[0] as i64,
        r[1]
    );
    let r = call(HostCall::VmDestroy, &[handle]);
    ensure!(r[0] == 0, "VM_DESTROY returned {}", r[0] as i64);
    ensure!(arch::ram_read(guest) == 0, "the guest page was not zeroed on teardown");
    let r = call(HostCall::VcpuRun, &[handle, 0, 0]);
    ensure!(r[0] as i64 == -3, "running a destroyed VM returned {}", r[0] as i64);
    note!("guest wrote 'H' and powered off; VM destroyed, its page zeroed");
    Ok(())
}
