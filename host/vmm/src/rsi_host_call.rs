//! issue 12: the VMM's answer to a realm's `RSI_HOST_CALL`
//! (`EXIT_HOST_CALL`, docs/abi.md "Realm guests (RSI)").
//!
//! The hypervisor has copied the guest's `RsiHostCall` structure; the VMM
//! reads its 31 registers with `VCPU_HOST_CALL_GET` and may change them with
//! `VCPU_HOST_CALL_SET` before it runs the vCPU again, which completes the
//! call. `rampart-vmm` offers no host-call service: its documented default
//! answers every immediate with the registers unchanged (the guest reads
//! back what it passed, with `RSI_HOST_CALL` = `SUCCESS`). It reads them
//! anyway, so that a refused read (no call pending: a hypervisor that
//! broke its ABI) stops the VM rather than going unnoticed.

use rampart_abi::host::HostCall;
use rampart_abi::rsi::host_call::GPRS;

use crate::hyp::{Hyp, call};

/// The answer to host call `imm` with `gprs` (the default: unchanged).
#[must_use]
pub fn reply(_imm: u64, gprs: [u64; GPRS]) -> [u64; GPRS] {
    gprs
}

/// Answers vCPU `vcpu`'s pending host call (immediate `imm`) of VM
/// `handle`. `Err` names the call the hypervisor refused.
pub fn answer(hyp: &dyn Hyp, handle: u64, vcpu: usize, imm: u64) -> Result<(), String> {
    let mut gprs = [0u64; GPRS];
    for first in (0..GPRS).step_by(8) {
        let r = call(hyp, HostCall::VcpuHostCallGet.id(), &[handle, vcpu as u64, first as u64]);
        if r[0] != 0 {
            #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
            return Err(format!("VCPU_HOST_CALL_GET(vCPU {vcpu}, {first}) returned {}", r[0] as i64));
        }
        let end = (first + 8).min(GPRS);
        gprs[first..end].copy_from_slice(&r[1..=end - first]);
    }
    let answer = reply(imm, gprs);
    for first in (0..GPRS).step_by(8) {
        let end = (first + 8).min(GPRS);
        if answer[first..end] == gprs[first..end] {
            continue;
        }
        let mut args = [0u64; 11];
        args[..3].copy_from_slice(&[handle, vcpu as u64, first as u64]);
        args[3..3 + end - first].copy_from_slice(&answer[first..end]);
        let r = call(hyp, HostCall::VcpuHostCallSet.id(), &args);
        if r[0] != 0 {
            #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
            return Err(format!("VCPU_HOST_CALL_SET(vCPU {vcpu}, {first}) returned {}", r[0] as i64));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::fake::Fake;

    #[test]
    fn default_answer_reads_the_registers_and_sets_none() {
        let fake = Fake::default();
        assert_eq!(answer(&fake, 0x1_0000_1000, 1, 7), Ok(()));
        let gets = fake.calls_of(HostCall::VcpuHostCallGet);
        assert_eq!(gets.len(), 4);
        for (i, g) in gets.iter().enumerate() {
            assert_eq!(g[1..4], [0x1_0000_1000, 1, 8 * i as u64]);
        }
        assert!(fake.calls_of(HostCall::VcpuHostCallSet).is_empty());
        assert_eq!(reply(3, [5; GPRS]), [5; GPRS]);
    }

    #[test]
    fn a_refused_read_is_an_error() {
        let fake = Fake::default();
        fake.state.lock().unwrap().fail = Some((HostCall::VcpuHostCallGet.id(), -4));
        assert!(answer(&fake, 0x1_0000_1000, 0, 0).is_err());
    }
}
