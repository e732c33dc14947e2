//! Virtual machines: the test host as a (hostile) VMM.
//!
//! The `vm-<guest>` checks run Rampart's test guests (`guest/`) through the
//! VMM in `src/vmm/`: create the VM, load and donate its image, run its
//! vCPUs to `SYSTEM_OFF`, count its `GUEST-PASS`/`GUEST-FAIL` lines, then
//! (while it still exists) check a load, a store and an instruction fetch
//! of its memory abort, destroy it and check every page it owned reads zero.
//! The `vm-attack-*` checks make the calls a hostile host would make and
//! expect the documented refusal, with nothing changed.

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::guest::test_protocol::{
    PROBE, RELINQUISHED, SHARE_PING, SHARE_PONG, SHARED, UNSHARED, share_ping_byte,
    share_pong_byte,
};
use rampart_abi::host::{ExitReason, HostCall, VmConfig};

use super::carveout::expect_abort;
use super::ownership::Layout;
use super::vmm::run::{self, FaultAction, Plain, Policy, Report};
use super::vmm::{self, Arena, PAGE, Spec, Vm, code, short};
use crate::arch::{self, Access, Exception};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::psci::{self, Conduit};
use crate::{ensure, fail, msg, note};

const INVALID: i64 = Error::InvalidParameter.code();
const DENIED: i64 = Error::Denied.code();
const RANGE: i64 = Error::Range.code();
/// `RET`.
const RET: u64 = 0xd65f_03c0;

fn call(call: HostCall, args: &[u64]) -> [u64; 18] {
    psci::call_via(Conduit::Hvc, call.id(), args)
}

/// Makes `c` and expects `want` in `x0`.
pub(super) fn expect(c: HostCall, args: &[u64], want: i64, what: &str) -> Result<(), Msg> {
    let got = code(c, args);
    ensure!(
        got == want,
        "{what}: {}({:x?}) = {got}, expected {want}",
        short(c),
        args
    );
    Ok(())
}

/// A fresh page allocator over the ownership checks' scratch window (every
/// VM a check makes is destroyed before it returns, which gives the pages
/// back zeroed).
pub(super) fn arena(p: &Platform) -> Result<(Arena, Layout), Msg> {
    let layout = Layout::find(p)?;
    Ok((Arena::new(layout.scratch), layout))
}

/// A 64-bit load that may abort.
fn load(address: u64) -> Result<u64, Exception> {
    let outcome = arch::probe(Access::Load, address, 0x5e47_14e1_0000_0f00);
    outcome.fault.map_or(Ok(outcome.register), Err)
}

/// A 64-bit store that may abort.
fn store(address: u64, value: u64) -> Result<(), Exception> {
    arch::probe(Access::Store, address, value)
        .fault
        .map_or(Ok(()), Err)
}

/// A load, a store and an instruction fetch of `page` (which the host
/// donated) all abort; the fetch as an instruction abort (EC 0x21, IFSC
/// 0x10, FAR = ELR = the page).
pub(super) fn expect_inaccessible(page: u64) -> Result<(), Msg> {
    expect_abort(Access::Load, page)?;
    expect_abort(Access::Store, page + 8)?;
    expect_abort(Access::Load, page + PAGE - 8)?;
    expect_no_fetch(page)
}

fn expect_no_fetch(page: u64) -> Result<(), Msg> {
    let Some([esr, far, elr, _spsr]) = vmm::hw::fetch_probe(page) else {
        fail!("a branch to {page:#x} ran the code there instead of aborting");
    };
    let ec = esr >> 26;
    ensure!(
        ec == 0x21 && esr & 0x3f == 0x10 && esr & (1 << 25) != 0 && far == page && elr == page,
        "a branch to {page:#x}: ESR {esr:#x} (EC {ec:#x}), FAR {far:#x}, ELR {elr:#x}; expected EC 0x21, IL 1, IFSC 0x10, FAR = ELR = the page"
    );
    Ok(())
}

/// Runs `vms` on `lanes` with `policy`, checks each VM's verdict, checks
/// its RAM is out of the host's reach, destroys it and checks its pages
/// read zero. Destroys every VM even when something fails.
pub(super) fn run_and_destroy(
    p: &Platform,
    vms: &mut [Vm],
    lanes: &[&[usize]],
    policy: &mut dyn Policy,
    timeout_ms: u64,
) -> Result<Report, Msg> {
    let report = run::run(p, vms, lanes, policy, timeout_ms);
    let mut result = Ok(());
    if let Ok(report) = &report {
        for i in 0..vms.len() {
            result = result.and(report.verdict(vms, i));
        }
    }
    for vm in vms.iter_mut() {
        let access = [vm.ram.start, vm.ram.end - PAGE]
            .into_iter()
            .try_for_each(expect_inaccessible)
            .map_err(|e| msg!("{} while it exists: {e}", vm.name));
        result = result.and(access);
        result = result.and(vm.destroy());
    }
    let report = report?;
    result?;
    Ok(report)
}

/// Runs one guest alone on vCPU 0 of a VM on the boot CPU.
pub(super) fn solo(p: &Platform, spec: Spec, policy: &mut dyn Policy, timeout_ms: u64) -> Result<Report, Msg> {
    let (mut arena, _) = arena(p)?;
    let mut vms = [Vm::create(&mut arena, spec)?];
    let report = run_and_destroy(p, &mut vms, &[&[0]], policy, timeout_ms)?;
    note!(
        "{} ({}): {} guest checks passed, {} exits, {} ms; {} pages zeroed on VM_DESTROY",
        spec.guest,
        if vms[0].protected { "protected" } else { "not protected" },
        report.tallies[0].passed,
        report.exits[0],
        report.millis,
        vms[0].pages()
    );
    Ok(report)
}

/// Guest `guest` in a protected VM as its bundle's manifest says, signed.
pub(super) fn protected(guest: &'static str) -> Result<Spec, Msg> {
    Spec::signed(guest)
}

/// `vm-bringup`: a hand-assembled non-protected guest that writes `H` to
/// the UART and powers off; destroy; its page comes back zeroed; the
/// destroyed VM's handle is refused.
pub fn vm_bringup(p: &Platform) -> Result<(), Msg> {
    /// movz x1, #0x0900, lsl #16; movz x2, #'H'; strb w2, [x1];
    /// movz x0, #8; movk x0, #0x8400, lsl #16; hvc #0; b .
    const HELLO: [u32; 7] = [
        0xD2A1_2001,
        0xD280_0902,
        0x3900_0022,
        0xD280_0100,
        0xF2B0_8000,
        0xD400_0002,
        0x1400_0000,
    ];
    let layout = Layout::find(p)?;
    let metadata = layout.block(0);
    let guest = layout.block(1);
    for (i, word) in HELLO.chunks(2).enumerate() {
        let value = u64::from(word[0]) | (u64::from(*word.get(1).unwrap_or(&0)) << 32);
        arch::ram_write(guest + 8 * i as u64, value);
    }
    let config = VmConfig {
        debug: false,
        protected: false,
        max_vcpus: 1,
    }
    .encode();
    let r = call(HostCall::VmCreate, &[metadata, 16, config]);
    ensure!(r[0] == 0, "VM_CREATE returned {}", r[0] as i64);
    let handle = r[1];
    let steps = || -> Result<(), Msg> {
        expect(HostCall::VcpuCreate, &[handle, 0], 0, "vCPU 0")?;
        expect(HostCall::VmDonate, &[handle, guest, 1, GUEST_RAM_BASE], 0, "its page")?;
        let r = call(HostCall::VcpuRun, &[handle, 0, 0]);
        ensure!(
            r[0] == 0
                && r[1] == ExitReason::Mmio as u64
                && r[2] == 0x0900_0000
                && r[4] == u64::from(b'H'),
            "expected an MMIO write of 'H' to 0x9000000, got {} / exit {} {:#x} {:#x} {:#x}",
            r[0] as i64,
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
        Ok(())
    };
    let result = steps();
    let destroyed = code(HostCall::VmDestroy, &[handle]);
    result?;
    ensure!(destroyed == 0, "VM_DESTROY returned {destroyed}");
    ensure!(
        arch::ram_find_nonzero(guest, guest + PAGE).is_none(),
        "the guest page was not zeroed on teardown"
    );
    expect(HostCall::VcpuRun, &[handle, 0, 0], INVALID, "the destroyed VM")?;
    note!("guest wrote 'H' and powered off; VM destroyed, its page zeroed");
    Ok(())
}

/// `vm-hello`: the `hello` guest in a protected VM (its lines are printed,
/// prefixed `[hello]`).
pub fn vm_hello(p: &Platform) -> Result<(), Msg> {
    solo(p, protected("hello")?, &mut Plain, 5_000).map(|_| ())
}

/// `vm-hello-unprotected`: the `hello` guest in a VM that is not protected
/// (pKVM-only checks skip).
pub fn vm_hello_unprotected(p: &Platform) -> Result<(), Msg> {
    let spec = Spec {
        protected: false,
        sign: false,
        ..protected("hello")?
    };
    solo(p, spec, &mut Plain, 5_000).map(|_| ())
}

/// `vm-memtest`: the `memtest` guest (RAM keeps its contents across
/// exits; registers survive HVCs and MMIO exits) in a protected VM.
pub fn vm_memtest(p: &Platform) -> Result<(), Msg> {
    solo(p, protected("memtest")?, &mut Plain, 8_000).map(|_| ())
}

/// `vm-host-timer`: the host keeps its clock while a guest runs. The
/// `spin` guest computes for 10 s without a single exit; once it spins,
/// the test host arms its own virtual timer 20 ms ahead (IRQs masked, as
/// always). The run must end with `EXIT_INTERRUPT`, `x2` = 1, after the
/// deadline and long before the spin would end; the host's timer then
/// reads its own deadline with ISTATUS set and its PPI 27 is pending,
/// while the EL2 timer's PPI 26 is not. The guest's own checks (its BRK
/// reached its own vector) must have passed.
pub fn vm_host_timer(p: &Platform) -> Result<(), Msg> {
    vmm::gic::init(p)?;
    ensure!(vmm::gic::enable_this_cpu(), "no GICv3 redistributor for this CPU");
    let (mut arena, _) = arena(p)?;
    let mut vm = Vm::create(&mut arena, protected("spin")?)?;
    let outcome = host_timer_run(vm.handle);
    let (ctl, cval) = vmm::hw::host_virtual_timer();
    let ppi26 = vmm::gic::ppi_pending(26);
    let ppi27 = vmm::gic::ppi_pending(27);
    vmm::hw::set_host_virtual_timer(0, 0);
    let destroyed = vm.destroy();
    let (deadline, at, passes) = outcome?;
    destroyed?;
    let frequency = arch::counter_frequency().max(1);
    let late_us = at.saturating_sub(deadline).saturating_mul(1_000_000) / frequency;
    ensure!(
        at >= deadline,
        "the run ended {} us before the host's deadline",
        (deadline - at).saturating_mul(1_000_000) / frequency
    );
    ensure!(late_us <= 500_000, "the run ended {late_us} us after the host's deadline");
    ensure!(
        cval == deadline && ctl & 0b111 == 0b101,
        "after the run the host's CNTV_CTL is {ctl:#x}, CVAL {cval:#x}: want ENABLE and ISTATUS, not IMASK, and its own deadline {deadline:#x}"
    );
    ensure!(ppi27 == Some(true), "the host's PPI 27 is not pending after its deadline ({ppi27:?})");
    ensure!(ppi26 == Some(false), "the EL2 timer's PPI 26 is pending for the host ({ppi26:?})");
    ensure!(passes >= 1, "the spin guest's BRK check did not pass before it spun");
    note!("a spinning guest's run ended {late_us} us after the host's deadline; host PPI 27 pending, PPI 26 not");
    Ok(())
}

/// Runs the spin guest; arms the host's virtual timer once the guest
/// says it spins. Returns (deadline, count at the exit, `GUEST-PASS`
/// lines seen).
fn host_timer_run(handle: u64) -> Result<(u64, u64, u32), Msg> {
    use rampart_abi::guest::GUEST_UART_BASE;
    use rampart_abi::host::mmio;
    const MARKER: &[u8; 10] = b"GUEST-SPIN";
    const PASS: &[u8; 10] = b"GUEST-PASS";
    let frequency = arch::counter_frequency();
    let mut window = [0u8; 10];
    let mut marker = false;
    let mut passes = 0;
    let mut deadline = None;
    for _ in 0..100_000 {
        let r = call(HostCall::VcpuRun, &[handle, 0, 0]);
        ensure!(r[0] == 0, "VCPU_RUN = {}", r[0] as i64);
        match ExitReason::try_from(r[1]) {
            Ok(ExitReason::Mmio) => {
                if let Some(d) = deadline {
                    let late = arch::counter().saturating_sub(d).saturating_mul(1000) / frequency.max(1);
                    fail!("the spinning guest's next exit was EXIT_MMIO at {:#x}, {late} ms after the host's deadline: the host was not interrupted", r[2]);
                }
                if r[2] == GUEST_UART_BASE && r[3] & mmio::WRITE != 0 {
                    let byte = r[4] as u8;
                    window.copy_within(1.., 0);
                    window[9] = byte;
                    marker |= &window == MARKER;
                    passes += u32::from(&window == PASS);
                    if marker && byte == b'\n' {
                        let d = arch::counter() + frequency / 50;
                        vmm::hw::set_host_virtual_timer(d, 1);
                        deadline = Some(d);
                    }
                }
            }
            Ok(ExitReason::Interrupt) if r[2] == 1 => {
                let at = arch::counter();
                let Some(d) = deadline else {
                    fail!("EXIT_INTERRUPT with x2 = 1 before the host armed its timer");
                };
                return Ok((d, at, passes));
            }
            Ok(ExitReason::Interrupt) => {}
            other => fail!("unexpected exit {other:?}, details {:#x} {:#x} {:#x}", r[2], r[3], r[4]),
        }
    }
    fail!("no EXIT_INTERRUPT for the host's timer in 100000 runs")
}

/// `vm-timer`: the `timer` guest; the VMM injects nothing: the virtual
/// timer's interrupt must arrive while the guest spins and after `WFI`
/// (the VMM just runs the vCPU again after `EXIT_WAIT`).
pub fn vm_timer(p: &Platform) -> Result<(), Msg> {
    solo(p, protected("timer")?, &mut Plain, 8_000).map(|_| ())
}

/// The `share` guest's protocol, host side.
#[derive(Default)]
struct SharePolicy {
    exchanged: Option<u64>,
    unshared: bool,
    relinquished: bool,
}

fn hex_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?.split_whitespace().last()?;
    u64::from_str_radix(rest.strip_prefix("0x")?, 16).ok()
}

impl Policy for SharePolicy {
    fn line(&mut self, vms: &mut [Vm], vm: usize, text: &str) -> Result<(), Msg> {
        let vm = &vms[vm];
        let page_of = |prefix| -> Result<Option<(u64, u64)>, Msg> {
            let Some(ipa) = hex_after(text, prefix) else {
                return Ok(None);
            };
            let host = vm
                .host_address(ipa)
                .filter(|a| a.is_multiple_of(PAGE))
                .ok_or_else(|| msg!("`{text}`: not a page of the guest's RAM"))?;
            Ok(Some((ipa, host)))
        };
        if let Some((_, host)) = page_of(SHARED)? {
            let first = load(host).map_err(|e| msg!("reading the shared page {host:#x}: {e}"))?;
            ensure!(
                first as u32 == SHARE_PING,
                "shared page {host:#x} starts {first:#x}, expected \"ping\""
            );
            for offset in (8..PAGE as usize).step_by(8) {
                let word = arch::ram_read(host + offset as u64).to_le_bytes();
                for (k, &b) in word.iter().enumerate() {
                    ensure!(
                        b == share_ping_byte(offset + k),
                        "shared page byte {} is {b:#x}, expected {:#x}",
                        offset + k,
                        share_ping_byte(offset + k)
                    );
                }
            }
            for offset in (8..PAGE as usize).step_by(8) {
                let bytes: [u8; 8] = core::array::from_fn(|k| share_pong_byte(offset + k));
                store(host + offset as u64, u64::from_le_bytes(bytes))
                    .map_err(|e| msg!("writing the shared page: {e}"))?;
            }
            let head = u64::from(SHARE_PONG)
                | u64::from(u32::from_le_bytes(core::array::from_fn(|k| {
                    share_pong_byte(4 + k)
                }))) << 32;
            store(host, head).map_err(|e| msg!("writing the shared page: {e}"))?;
            self.exchanged = Some(host);
        } else if let Some((_, host)) = page_of(UNSHARED)? {
            expect_abort(Access::Load, host).map_err(|e| msg!("after GUEST-UNSHARED: {e}"))?;
            expect_abort(Access::Store, host + 8)
                .map_err(|e| msg!("after GUEST-UNSHARED: {e}"))?;
            self.unshared = true;
        } else if let Some((_, host)) = page_of(RELINQUISHED)? {
            // Back to the host, zeroed, and writable.
            let first = load(host).map_err(|e| msg!("relinquished page {host:#x}: {e}"))?;
            ensure!(
                first == 0 && arch::ram_find_nonzero(host, host + PAGE).is_none(),
                "the relinquished page {host:#x} was not zeroed (first word {first:#x})"
            );
            store(host, 0x1234).map_err(|e| msg!("relinquished page {host:#x}: {e}"))?;
            arch::ram_write(host, 0);
            self.relinquished = true;
        }
        Ok(())
    }
}

/// `vm-share`: the `share` guest's ping/pong through a page it shares;
/// after `GUEST-UNSHARED` the host's accesses abort; a relinquished page
/// comes back to the host zeroed.
pub fn vm_share(p: &Platform) -> Result<(), Msg> {
    let mut policy = SharePolicy::default();
    solo(p, protected("share")?, &mut policy, 10_000)?;
    ensure!(policy.exchanged.is_some(), "the guest never printed GUEST-SHARED");
    ensure!(policy.unshared, "the guest never printed GUEST-UNSHARED");
    ensure!(policy.relinquished, "the guest never printed GUEST-RELINQUISHED");
    Ok(())
}

/// `vm-smp`: the `smp` guest with the 4 vCPUs it is signed for, one per
/// physical CPU (interleaved when the machine has fewer).
pub fn vm_smp(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("smp")?;
    let vcpus = spec.vcpus;
    let mut vms = [Vm::create(&mut arena, spec)?];
    let report = run_and_destroy(p, &mut vms, &[&[0, 1, 2, 3]], &mut Plain, 10_000)?;
    note!(
        "smp: {vcpus} vCPUs on {} CPUs, {} guest checks passed, {} exits, {} ms",
        report.cpus,
        report.tallies[0].passed,
        report.exits[0],
        report.millis
    );
    Ok(())
}

/// `vm-two-at-once`: a protected `memtest` VM (1 vCPU) and a protected
/// `smp` VM (4 vCPUs) at once, as signed: on four CPUs memtest has CPU 0
/// and smp's vCPUs 0..2 the other three (its vCPU 3 shares CPU 0), on
/// fewer they share more. Both pass, their memory stays apart (memtest's
/// pattern survives the other VM running), both tear down to zero.
pub fn vm_two_at_once(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let memtest = protected("memtest")?;
    let smp = protected("smp")?;
    let a = Vm::create(&mut arena, memtest)?;
    let b = Vm::create(&mut arena, smp)?;
    ensure!(a.handle != b.handle, "two VMs got the same handle {:#x}", a.handle);
    let mut vms = [a, b];
    let report = run_and_destroy(p, &mut vms, &[&[0], &[1, 2, 3, 0]], &mut Plain, 10_000)?;
    note!(
        "memtest (1 vCPU) and smp (4 vCPUs) on {} CPUs: {} + {} guest checks passed in {} ms",
        report.cpus,
        report.tallies[0].passed,
        report.tallies[1].passed,
        report.millis
    );
    Ok(())
}

/// The attacker guest's memory faults: each must be at the address the
/// guest announced (`GUEST-PROBE`), and the VMM declines it (runs the vCPU
/// again without memory there), so the guest takes a synchronous external
/// abort, which its probe expects. A second fault at the same page without
/// a new announcement fails the check.
struct AttackerPolicy {
    announced: Option<u64>,
    declined: u32,
}

impl Policy for AttackerPolicy {
    fn line(&mut self, _vms: &mut [Vm], _vm: usize, text: &str) -> Result<(), Msg> {
        if text.starts_with(PROBE) {
            self.announced = hex_after(text, PROBE);
        }
        Ok(())
    }

    fn memory_fault(
        &mut self,
        _vms: &mut [Vm],
        _vm: usize,
        ipa: u64,
        write: bool,
    ) -> Result<FaultAction, Msg> {
        let announced = self.announced.take().map(|a| a & !(PAGE - 1));
        ensure!(
            announced == Some(ipa),
            "EXIT_MEMORY_FAULT at {ipa:#x} (write {write}), but the last unanswered GUEST-PROBE was {announced:x?}"
        );
        self.declined += 1;
        Ok(FaultAction::Decline)
    }
}

/// `vm-attacker`: the `attacker` guest (bad calls, SMCs, MMIO guard,
/// accesses outside its RAM) in a protected VM; see [`AttackerPolicy`].
pub fn vm_attacker(p: &Platform) -> Result<(), Msg> {
    let mut policy = AttackerPolicy {
        announced: None,
        declined: 0,
    };
    solo(p, protected("attacker")?, &mut policy, 8_000)?;
    note!(
        "attacker: {} memory faults at announced probes declined (the guest took an abort each time)",
        policy.declined
    );
    Ok(())
}

/// The attacker again, but the VMM donates a page at its first memory
/// fault (`read-past-ram`, at the end of its RAM) while it runs: the page
/// is full of a host pattern, but the VM's measurement is fixed, so the
/// hypervisor must zero it before the guest sees it: the guest's read must
/// complete with 0; the following `write-past-ram` lands in the same page.
/// The guest reports both probes as failed (the accesses completed); those
/// two lines are the expected outcome here. Later faults are declined.
struct DonatingPolicy<'a> {
    arena: &'a mut Arena,
    announced: Option<u64>,
    donated: Option<u64>,
}

const DONATED_WORD: u64 = 0xd0a7_ed00_5eed_0001;

impl Policy for DonatingPolicy<'_> {
    fn line(&mut self, _vms: &mut [Vm], _vm: usize, text: &str) -> Result<(), Msg> {
        if text.starts_with(PROBE) {
            self.announced = hex_after(text, PROBE);
        }
        Ok(())
    }

    fn excuse(&mut self, _vm: usize, text: &str) -> bool {
        let Some(ipa) = self.donated else {
            return false;
        };
        text == msg!("GUEST-FAIL read-past-ram: access to {ipa:#x} completed, read 0x0").as_str()
            || text == msg!("GUEST-FAIL write-past-ram: access to {ipa:#x} completed, read 0x0").as_str()
    }

    fn memory_fault(
        &mut self,
        vms: &mut [Vm],
        vm: usize,
        ipa: u64,
        _write: bool,
    ) -> Result<FaultAction, Msg> {
        let announced = self.announced.take().map(|a| a & !(PAGE - 1));
        ensure!(
            announced == Some(ipa),
            "EXIT_MEMORY_FAULT at {ipa:#x}, but the last unanswered GUEST-PROBE was {announced:x?}"
        );
        if self.donated.is_some() {
            return Ok(FaultAction::Decline);
        }
        let c = vms[vm].donate_patterned_page(self.arena, ipa, DONATED_WORD)?;
        ensure!(c == 0, "VM_DONATE at {ipa:#x} while the VM runs = {c}");
        self.donated = Some(ipa);
        Ok(FaultAction::Donated)
    }
}

/// `vb-late-donation-zeroed`: memory added while a protected VM runs, in
/// answer to `EXIT_MEMORY_FAULT`, reaches the guest zeroed however the host
/// filled it (see [`DonatingPolicy`]); it is out of the host's reach while
/// the VM lives and zeroed after.
pub fn vb_late_donation_zeroed(p: &Platform) -> Result<(), Msg> {
    note!(
        "expected: the attacker guest reports 2 failures, read-past-ram and write-past-ram \
         (the host donates the page it probes, so both accesses complete and read 0), \
         and ends with GUEST-DONE <n> passed, 2 failed"
    );
    let (mut arena, _) = arena(p)?;
    let mut vms = [Vm::create(&mut arena, protected("attacker")?)?];
    let mut policy = DonatingPolicy {
        arena: &mut arena,
        announced: None,
        donated: None,
    };
    let report = run::run(p, &mut vms, &[&[0]], &mut policy, 8_000);
    let donated = policy.donated;
    // The attacker's other checks are `vm-attacker`'s business: here only
    // the run, the two probes and the page matter.
    let mut result = report.and_then(|r| {
        if let Some(problem) = &r.problems[0] {
            fail!("{problem}");
        }
        if let Some(e) = &r.tallies[0].policy_error {
            fail!("{e}");
        }
        let t = &r.tallies[0];
        ensure!(
            r.states[0] == run::state::SYSTEM_OFF && t.done.is_some(),
            "the guest did not run to GUEST-DONE and SYSTEM_OFF (state {})",
            r.states[0]
        );
        ensure!(
            t.excused == 2,
            "{} of the 2 expected probe results seen (read 0x0 from the page the host filled with {DONATED_WORD:#x}.., then a write); a read of the host's pattern means the hypervisor did not zero the page",
            t.excused
        );
        Ok(())
    });
    let vm = &mut vms[0];
    if vm.extra_count > 0 {
        result = result.and(expect_inaccessible(vm.extra[0].0));
    }
    result = result.and(vm.destroy());
    result?;
    ensure!(donated.is_some(), "the guest never faulted");
    Ok(())
}

/// A protected VM with no vCPU run yet, for the attack checks.
pub(super) fn bare_vm(arena: &mut Arena, vcpus: u64) -> Result<(u64, u64), Msg> {
    let config = VmConfig {
        debug: false,
        protected: true,
        max_vcpus: vcpus,
    };
    let pages = config.min_metadata_pages() + 8;
    let metadata = arena.take(pages)?;
    let r = call(HostCall::VmCreate, &[metadata, pages, config.encode()]);
    ensure!(r[0] == 0, "VM_CREATE = {}", r[0] as i64);
    Ok((r[1], metadata))
}

/// Destroys `handles` (ignoring zero), then checks `pages` (host pages that
/// were the VMs') read zero and are writable.
fn teardown(handles: &[u64], zeroed: &[(u64, u64)]) -> Result<(), Msg> {
    let mut result = Ok(());
    for &h in handles.iter().filter(|&&h| h != 0) {
        let c = code(HostCall::VmDestroy, &[h]);
        if c != 0 && result.is_ok() {
            result = Err(msg!("VM_DESTROY({h:#x}) = {c}"));
        }
    }
    result?;
    for &(start, pages) in zeroed {
        let end = start + pages * PAGE;
        if let Some(at) = arch::ram_find_nonzero(start, end) {
            fail!("after VM_DESTROY, {at:#x} is not zero");
        }
        arch::ram_write(start, 1);
        arch::ram_write(start, 0);
    }
    Ok(())
}

/// `page` is the host's: a load and a store complete, `value` is there.
fn expect_host_page(page: u64, value: u64, what: &str) -> Result<(), Msg> {
    let got = load(page).map_err(|e| msg!("{what}: the host's page {page:#x} aborts: {e}"))?;
    ensure!(got == value, "{what}: page {page:#x} reads {got:#x}, expected {value:#x}");
    store(page, value).map_err(|e| msg!("{what}: store to {page:#x}: {e}"))?;
    Ok(())
}

/// `vm-attack-access`: a page donated to a protected VM (never run) is out
/// of the host's reach: a load, a store and an instruction fetch abort
/// (before donation the same fetch ran the `RET` placed there); after
/// `VM_DESTROY` it is the host's again, zeroed.
pub fn vm_attack_access(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let page = arena.take(1)?;
    vmm::zero(page);
    arch::ram_write(page, RET);
    arch::ram_write(page + 8, 0x5ec2_e700_0000_0001);
    ensure!(
        vmm::hw::fetch_probe(page).is_none(),
        "a branch to the host's own page {page:#x} (holding RET) did not return"
    );
    let (h, metadata) = bare_vm(&mut arena, 1)?;
    let result = (|| {
        expect(HostCall::VmDonate, &[h, page, 1, GUEST_RAM_BASE], 0, "donating")?;
        expect_inaccessible(page)?;
        expect_abort(Access::Load, metadata)?;
        Ok(())
    })();
    let torn = teardown(&[h], &[(page, 1), (metadata, 1)]);
    result?;
    torn?;
    ensure!(
        vmm::hw::fetch_probe(page).is_some_and(|[esr, ..]| esr >> 26 == 0x21 || esr >> 26 == 0),
        "after teardown the zeroed page should not return to the caller (a zero word is UDF)"
    );
    Ok(())
}

/// `vm-attack-donate`: `VM_DONATE` of a page already donated (to the same
/// VM at another address, or to a second VM), at a guest address already
/// mapped, of a page shared with or donated to the hypervisor, of the
/// carve-out, of another VM's metadata, a range whose second page is
/// donated, and `VM_SHARE` to a protected VM: each refused with `DENIED`
/// and nothing changed (the pages keep their state and data).
pub fn vm_attack_donate(p: &Platform) -> Result<(), Msg> {
    let (mut arena, layout) = arena(p)?;
    let x = arena.take(2)?;
    let y = x + PAGE;
    let z = arena.take(1)?;
    let w = arena.take(1)?;
    for (page, value) in [(x, 0xa1), (y, 0xb2), (z, 0xc3), (w, 0xd4)] {
        arch::ram_write(page, value);
    }
    let (a, meta_a) = bare_vm(&mut arena, 1)?;
    let (b, meta_b) = match bare_vm(&mut arena, 1) {
        Ok(v) => v,
        Err(e) => {
            let _ = code(HostCall::VmDestroy, &[a]);
            return Err(e);
        }
    };
    let g = GUEST_RAM_BASE;
    let result = (|| -> Result<(), Msg> {
        expect(HostCall::VmDonate, &[a, x, 1, g], 0, "first donation")?;
        expect(HostCall::VmDonate, &[a, x, 1, g + PAGE], DENIED, "the same page again")?;
        expect(HostCall::VmDonate, &[b, x, 1, g], DENIED, "a page of VM A to VM B")?;
        expect(HostCall::VmDonate, &[a, y, 1, g], DENIED, "at a mapped guest address")?;
        expect_host_page(y, 0xb2, "after the refusals")?;
        expect(HostCall::VmDonate, &[b, y - PAGE, 2, g], DENIED, "a range starting at A's page")?;
        expect_host_page(y, 0xb2, "after a partly donated range")?;
        expect(HostCall::VmShare, &[a, y, 1, g + PAGE], DENIED, "VM_SHARE to a protected VM")?;
        expect_host_page(y, 0xb2, "after VM_SHARE")?;

        expect(HostCall::ShareHyp, &[z, 1], 0, "SHARE_HYP")?;
        expect(HostCall::VmDonate, &[a, z, 1, g + 2 * PAGE], DENIED, "a page shared with the hypervisor")?;
        expect_host_page(z, 0xc3, "shared with the hypervisor")?;
        expect(HostCall::UnshareHyp, &[z, 1], 0, "UNSHARE_HYP after the refusal")?;

        expect(HostCall::DonateHyp, &[w, 1], 0, "DONATE_HYP")?;
        expect(HostCall::VmDonate, &[a, w, 1, g + 3 * PAGE], DENIED, "a page donated to the hypervisor")?;
        expect(HostCall::ReclaimHyp, &[w, 1], 0, "RECLAIM_HYP after the refusal")?;

        let carveout = layout.carveout.start;
        expect(HostCall::VmDonate, &[a, carveout, 1, g + 4 * PAGE], DENIED, "the carve-out")?;
        expect(HostCall::VmDonate, &[b, meta_a, 1, g + PAGE], DENIED, "VM A's metadata to VM B")?;
        expect(HostCall::VmDonate, &[a, meta_b, 1, g + 5 * PAGE], DENIED, "VM B's metadata to VM A")?;
        // Guest addresses: unaligned, past the IPA space.
        expect(HostCall::VmDonate, &[a, y, 1, g + 8], INVALID, "an unaligned guest address")?;
        let far = code(HostCall::VmDonate, &[a, y, 1, 1 << 52]);
        ensure!(
            far == RANGE || far == INVALID,
            "VM_DONATE at guest address 1 << 52 = {far}, expected RANGE or INVALID_PARAMETER"
        );
        expect_host_page(y, 0xb2, "after the bad guest addresses")?;
        expect_abort(Access::Load, x)?;
        Ok(())
    })();
    let torn = teardown(&[a, b], &[(x, 1), (meta_a, 1), (meta_b, 1)]);
    // Leave the pages as found (whatever state a failure left them in).
    for page in [z, w] {
        let _ = code(HostCall::ReclaimHyp, &[page, 1]);
        let _ = code(HostCall::UnshareHyp, &[page, 1]);
    }
    result?;
    torn?;
    for page in [y, z, w] {
        arch::ram_write(page, 0);
    }
    Ok(())
}

/// `vm-attack-handles`: after `VM_DESTROY` every call with the old handle
/// is `INVALID_PARAMETER` (run, set registers, inject, create a vCPU,
/// donate, set a signature, destroy again), also once a new VM took its slot; forged
/// handles (other generation, slot out of range, zero, all ones) are
/// refused and the live VM still works.
pub fn vm_attack_handles(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let page = arena.take(1)?;
    arch::ram_write(page, 0x77);
    let (old, meta_old) = bare_vm(&mut arena, 1)?;
    expect(HostCall::VcpuCreate, &[old, 0], 0, "vCPU 0")?;
    teardown(&[old], &[(meta_old, 1)])?;
    let stale = |h: u64, what: &str| -> Result<(), Msg> {
        expect(HostCall::VcpuRun, &[h, 0, 0], INVALID, what)?;
        expect(HostCall::VcpuSetRegs, &[h, 0, GUEST_RAM_BASE, 0], INVALID, what)?;
        expect(HostCall::VcpuInject, &[h, 0, 27], INVALID, what)?;
        expect(HostCall::VcpuCreate, &[h, 0], INVALID, what)?;
        expect(HostCall::VmDonate, &[h, page, 1, GUEST_RAM_BASE], INVALID, what)?;
        expect(HostCall::VmSetSignature, &[h, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], INVALID, what)?;
        expect(HostCall::VmDestroy, &[h], INVALID, what)?;
        expect_host_page(page, 0x77, what)
    };
    stale(old, "the destroyed VM's handle")?;
    let (live, meta_live) = bare_vm(&mut arena, 1)?;
    let result = (|| -> Result<(), Msg> {
        ensure!(live != old, "a new VM got the destroyed VM's handle {old:#x}");
        stale(old, "the destroyed VM's handle after a new VM was created")?;
        let slot = live & 0xffff_ffff;
        for forged in [
            live ^ (1 << 32),
            live.wrapping_add(1 << 32),
            (live & !0xffff_ffff) | (0x1000 + 16),
            (live & !0xffff_ffff) | 0x0fff,
            slot,
            0,
            u64::MAX,
        ] {
            if forged == live {
                continue;
            }
            stale(forged, "a forged handle")?;
        }
        expect(HostCall::VcpuCreate, &[live, 0], 0, "the live VM after the forgeries")?;
        Ok(())
    })();
    let torn = teardown(&[live], &[(meta_live, 1)]);
    result?;
    torn?;
    arch::ram_write(page, 0);
    Ok(())
}

/// `vm-attack-vcpu`: calls on vCPUs that do not exist (not created, index
/// 8) and with bad interrupt IDs are `INVALID_PARAMETER`; a second
/// `VCPU_CREATE` is `DENIED`, one past the VM's count `INVALID_PARAMETER`;
/// `VCPU_SET_REGS` after the vCPU first ran is `DENIED`; the VM still runs.
/// (The signed `smp` guest: 4 vCPUs.)
pub fn vm_attack_vcpu(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("smp")?;
    let n = spec.vcpus;
    let mut vm = Vm::create(&mut arena, spec)?;
    let h = vm.handle;
    let result = (|| -> Result<(), Msg> {
        // Vm::create made vCPUs 0..n; a VM with n vCPUs has no vCPU n.
        expect(HostCall::VcpuCreate, &[h, 0], DENIED, "a second VCPU_CREATE")?;
        expect(HostCall::VcpuCreate, &[h, n], INVALID, "vCPU n of an n-vCPU VM")?;
        expect(HostCall::VcpuCreate, &[h, 8], INVALID, "vCPU 8")?;
        expect(HostCall::VcpuInject, &[h, 8, 27], INVALID, "injecting into vCPU 8")?;
        expect(HostCall::VcpuInject, &[h, n, 27], INVALID, "injecting into vCPU n (none)")?;
        expect(HostCall::VcpuInject, &[h, 0, 1020], INVALID, "INTID 1020")?;
        expect(HostCall::VcpuInject, &[h, 0, 1 << 32 | 27], INVALID, "INTID 2^32 + 27")?;
        expect(HostCall::VcpuInject, &[h, 0, u64::MAX], INVALID, "INTID all ones")?;
        // x4 flags: bit 0 (LEVEL) only.
        expect(HostCall::VcpuInject, &[h, 0, 27, 2], INVALID, "VCPU_INJECT flag bit 1")?;
        expect(HostCall::VcpuInject, &[h, 0, 27, u64::MAX], INVALID, "VCPU_INJECT flags all ones")?;
        expect(HostCall::VcpuRun, &[h, n, 0], INVALID, "running vCPU n (none)")?;
        expect(HostCall::VcpuSetRegs, &[h, n, GUEST_RAM_BASE, 0], INVALID, "vCPU n (none)")?;
        let r = call(HostCall::VcpuRun, &[h, 0, 0]);
        ensure!(r[0] == 0, "first VCPU_RUN = {}", r[0] as i64);
        expect(HostCall::VcpuSetRegs, &[h, 0, GUEST_RAM_BASE, 0], DENIED, "after the first run")?;
        Ok(())
    })();
    let torn = vm.destroy();
    result?;
    torn
}

/// `vm-create-bad`: `VM_CREATE` with too few metadata pages, 0 or 9 vCPUs,
/// reserved bits, an unaligned address, metadata in the carve-out, or a
/// range holding a page shared with the hypervisor is refused, and the
/// pages stay the host's.
pub fn vm_create_bad(p: &Platform) -> Result<(), Msg> {
    let (mut arena, layout) = arena(p)?;
    let m = arena.take(16)?;
    for i in 0..16 {
        arch::ram_write(m + i * PAGE, 0xfeed_0000 + i);
    }
    let one = VmConfig {
        debug: false,
        protected: true,
        max_vcpus: 1,
    };
    let min = one.min_metadata_pages();
    let cases: [(&str, [u64; 3], i64); 8] = [
        ("too few metadata pages", [m, min - 1, one.encode()], INVALID),
        ("0 vCPUs", [m, 16, 0x001], INVALID),
        ("9 vCPUs", [m, 16, 0x901], INVALID),
        ("reserved config bit 16", [m, 16, 0x1_0101], INVALID),
        ("reserved config bit 3", [m, 16, 0x109], INVALID),
        ("realm (bit 2) without protected", [m, 16, 0x104], INVALID),
        ("unaligned metadata", [m + 8, 16, one.encode()], INVALID),
        ("metadata in the carve-out", [layout.carveout.start, 16, one.encode()], DENIED),
    ];
    for (what, args, want) in cases {
        let r = call(HostCall::VmCreate, &args);
        if r[0] == 0 {
            let _ = code(HostCall::VmDestroy, &[r[1]]);
        }
        ensure!(
            r[0] as i64 == want,
            "{what}: VM_CREATE({:#x}, {}, {:#x}) = {}, expected {want}",
            args[0],
            args[1],
            args[2],
            r[0] as i64
        );
        for i in [0, 15] {
            expect_host_page(m + i * PAGE, 0xfeed_0000 + i, what)?;
        }
    }
    expect(HostCall::ShareHyp, &[m + 15 * PAGE, 1], 0, "SHARE_HYP")?;
    let r = call(HostCall::VmCreate, &[m, 16, one.encode()]);
    if r[0] == 0 {
        let _ = code(HostCall::VmDestroy, &[r[1]]);
    }
    let _ = code(HostCall::UnshareHyp, &[m + 15 * PAGE, 1]);
    ensure!(
        r[0] as i64 == DENIED,
        "VM_CREATE over a page shared with the hypervisor = {}, expected {DENIED}",
        r[0] as i64
    );
    for i in [0, 14, 15] {
        expect_host_page(m + i * PAGE, 0xfeed_0000 + i, "after the shared-page refusal")?;
    }
    for i in 0..16 {
        arch::ram_write(m + i * PAGE, 0);
    }
    Ok(())
}

/// A VM that is not protected and has never run (a `VM_SHARE` target).
pub(super) fn bare_unprotected_vm(arena: &mut Arena) -> Result<(u64, u64), Msg> {
    let config = VmConfig {
        debug: false,
        protected: false,
        max_vcpus: 1,
    };
    let pages = config.min_metadata_pages();
    let metadata = arena.take(pages)?;
    let r = call(HostCall::VmCreate, &[metadata, pages, config.encode()]);
    ensure!(r[0] == 0, "VM_CREATE (not protected) = {}", r[0] as i64);
    Ok((r[1], metadata))
}

/// Every call a host can make on a page the hypervisor holds for a live
/// VM, each of which must be refused with `DENIED`: the hypervisor's own
/// memory calls, and giving or lending the page to a VM (`other` is a
/// second, unprotected VM, `own` the VM the page belongs to). `count` pages
/// from `page`.
fn attack_metadata(own: u64, other: u64, page: u64, count: u64, what: &str) -> Result<(), Msg> {
    let far = GUEST_RAM_BASE + (64 << 20);
    let config = VmConfig {
        debug: false,
        protected: true,
        max_vcpus: 1,
    };
    let create_pages = config.min_metadata_pages().max(count);
    let attempts: [(HostCall, &[u64], &str); 8] = [
        (HostCall::ReclaimHyp, &[page, count], "RECLAIM_HYP"),
        (HostCall::UnshareHyp, &[page, count], "UNSHARE_HYP"),
        (HostCall::ShareHyp, &[page, count], "SHARE_HYP"),
        (HostCall::DonateHyp, &[page, count], "DONATE_HYP"),
        (HostCall::VmDonate, &[own, page, count, far], "VM_DONATE to its own VM"),
        (HostCall::VmDonate, &[other, page, count, far], "VM_DONATE to another VM"),
        (HostCall::VmShare, &[other, page, count, far], "VM_SHARE to another VM"),
        (HostCall::VmCreate, &[page, create_pages, config.encode()], "VM_CREATE over it"),
    ];
    for (c, args, name) in attempts {
        let r = call(c, args);
        if c == HostCall::VmCreate && r[0] == 0 {
            let _ = code(HostCall::VmDestroy, &[r[1]]);
        }
        ensure!(
            r[0] as i64 == DENIED,
            "{name} of {what} ({page:#x}, {count} pages) = {}, expected DENIED ({DENIED})",
            super::ownership::Code(r[0] as i64)
        );
        // Nothing changed: still out of the host's reach.
        expect_abort(Access::Load, page).map_err(|e| msg!("{what} after {name}: {e}"))?;
    }
    Ok(())
}

/// `vm-attack-metadata`: the pages a live VM's metadata uses — a vCPU's
/// state page, the stage-2 root, a stage-2 table below it, an unused page
/// of the table pool, and the whole range — are held by the hypervisor for
/// that VM: `RECLAIM_HYP`, `UNSHARE_HYP`, `SHARE_HYP`, `DONATE_HYP`,
/// `VM_DONATE` (to the same or another VM), `VM_SHARE` and `VM_CREATE` on
/// each are refused with `DENIED` and change nothing: every page still
/// aborts, and the VM then runs the `hello` guest to the end (its stage 2
/// and vCPU state are intact); after `VM_DESTROY` the metadata is the
/// host's again, zeroed.
pub fn vm_attack_metadata(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let (other, other_meta) = bare_unprotected_vm(&mut arena)?;
    let mut vms = match Vm::create(&mut arena, protected("hello")?) {
        Ok(vm) => [vm],
        Err(e) => {
            let _ = code(HostCall::VmDestroy, &[other]);
            return Err(e);
        }
    };
    let (own, meta, vcpus) = (vms[0].handle, vms[0].metadata, vms[0].vcpus);
    let kinds = [
        ("vCPU 0's state page", meta.start, 1),
        ("the stage-2 root", meta.start + vcpus * PAGE, 1),
        ("a stage-2 table", meta.start + (vcpus + 1) * PAGE, 1),
        ("an unused stage-2 pool page", meta.end - PAGE, 1),
        ("the whole metadata", meta.start, meta.size() / PAGE),
    ];
    let attacks = kinds
        .iter()
        .try_for_each(|&(what, page, count)| attack_metadata(own, other, page, count, what));
    let attacked = attacks.is_ok();
    // The VM still works (if an attack got through, its run shows what it
    // broke); then it is destroyed and its metadata checked zero.
    let ran = run_and_destroy(p, &mut vms, &[&[0]], &mut Plain, 5_000);
    let torn = teardown(&[other], &[(other_meta, 1)]);
    attacks?;
    ran?;
    torn?;
    if attacked {
        note!(
            "8 calls on each of {} kinds of metadata page refused with DENIED; the VM then ran hello to the end",
            kinds.len()
        );
    }
    Ok(())
}
