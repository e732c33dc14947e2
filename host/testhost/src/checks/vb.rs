//! Verified boot and attestation (`docs/abi.md`, "Verified boot";
//! `docs/formats.md`).
//!
//! A protected VM's first `VCPU_RUN` is refused unless `VM_SET_SIGNATURE`
//! gave a trusted signature over exactly what the hypervisor measured:
//! `NOT_SIGNED`, `UNTRUSTED_KEY` or `BAD_SIGNATURE`, and nothing runs. The
//! `vb-refuse-*` checks show "nothing ran" the strongest way the host can:
//! after the refusal (and a second one), the right signature makes the same
//! VM run to `GUEST-DONE`, which it could not if any of its memory or vCPU
//! state had changed (the measurement would differ); where the VM itself
//! is wrong (flipped image or manifest) it stays refused, and it is
//! destroyed with every page zeroed. After the first run the measurement
//! is fixed (`vb-measurement-fixed`, `vb-late-donation-zeroed` in
//! `vm.rs`). The `attest` guest gets a report and sealing keys
//! (`vb-attest`; `cargo xtask` verifies the report on the build machine)
//! and no secret ever reaches the host (`vb-no-leaks`).

use core::sync::atomic::{AtomicBool, Ordering};

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::HostCall;

use super::vm::{arena, expect, protected, run_and_destroy};
use super::vmm::run::{Plain, Policy, error_name};
use super::vmm::{self, PAGE, Spec, Vm, call, set_signature};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{arch, cpus, ensure, fail, msg, note, secrets};

const NOT_SIGNED: i64 = Error::NotSigned.code();
const UNTRUSTED_KEY: i64 = Error::UntrustedKey.code();
const BAD_SIGNATURE: i64 = Error::BadSignature.code();
const DENIED: i64 = Error::Denied.code();

/// The first 32 bytes of the attest guest's nonce
/// (`guest/attest/src/main.rs`).
const NONCE_PREFIX: &[u8; 32] = b"rampart attest guest nonce v1 ::";

/// `vb-attest` ran the attest guest to the end.
static ATTESTED: AtomicBool = AtomicBool::new(false);

fn describe(code: i64) -> Msg<64> {
    if code == 0 {
        Msg::from_text("SUCCESS")
    } else {
        let mut m = Msg::new();
        let _ = core::fmt::write(&mut m, format_args!("{code} ({})", error_name(code)));
        m
    }
}

/// `VCPU_RUN` of vCPU `vcpu` must be refused with `want`, twice, with no
/// exit record.
fn expect_refused(vm: &Vm, vcpu: u64, want: i64, what: &str) -> Result<(), Msg> {
    for attempt in ["first", "second"] {
        let r = call(HostCall::VcpuRun, &[vm.handle, vcpu, 0]);
        let code = r[0] as i64;
        ensure!(
            code == want,
            "{what}: the {attempt} VCPU_RUN(vCPU {vcpu}) = {}, expected {}{}",
            describe(code).as_str(),
            describe(want).as_str(),
            if code == 0 { ": the VM ran" } else { "" }
        );
        // Nothing but the error: x1..x3 as passed or zero, x4.. preserved.
        ensure!(
            (r[1] == vm.handle || r[1] == 0)
                && (r[2] == vcpu || r[2] == 0)
                && r[3] == 0
                && r[4..] == [0; 14],
            "{what}: the refused VCPU_RUN returned {:#x?} in x1..x4, as if there were an exit record",
            &r[1..5]
        );
    }
    Ok(())
}

/// Gives the bundle's signature and runs the VM to `GUEST-DONE` (it must
/// be exactly the VM that was signed: nothing ran before), then destroys it
/// and checks its pages read zero.
fn then_runs(p: &Platform, vm: Vm, what: &str) -> Result<(), Msg> {
    let b = vmm::bundle(vm.name)?;
    let c = set_signature(vm.handle, &b.signer, &b.signature);
    let mut vms = [vm];
    if c != 0 {
        let _ = vms[0].destroy();
        fail!("{what}: VM_SET_SIGNATURE with the right signature after the refusal = {c}");
    }
    run_and_destroy(p, &mut vms, &[&[0, 1, 2, 3]], &mut Plain, 8_000)
        .map_err(|e| msg!("{what}: with the right signature after the refusal: {e}"))?;
    Ok(())
}

/// Destroys a VM that must stay refused; its pages must read zero.
fn destroyed(mut vm: Vm, what: &str) -> Result<(), Msg> {
    vm.destroy().map_err(|e| msg!("{what}: {e}"))
}

/// `vb-refuse-unsigned`: a protected VM given no signature is refused with
/// `NOT_SIGNED` at its first run (twice); the refused run is not a run:
/// `VCPU_SET_REGS` still works, and with the right signature the VM then
/// runs to `GUEST-DONE`.
pub fn vb_refuse_unsigned(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = Spec {
        sign: false,
        ..protected("hello")?
    };
    let vm = Vm::create(&mut arena, spec)?;
    let steps = || -> Result<(), Msg> {
        expect_refused(&vm, 0, NOT_SIGNED, "no VM_SET_SIGNATURE")?;
        expect(
            HostCall::VcpuSetRegs,
            &[vm.handle, 0, GUEST_RAM_BASE, spec.ram],
            0,
            "VCPU_SET_REGS (the same values) after a refused first run",
        )?;
        Ok(())
    };
    if let Err(e) = steps() {
        let _ = destroyed(vm, "");
        return Err(e);
    }
    then_runs(p, vm, "unsigned")?;
    note!("NOT_SIGNED twice, VCPU_SET_REGS still allowed; then signed, hello ran to GUEST-DONE");
    Ok(())
}

/// `vb-refuse-wrong-key`: the same measurement signed by a key the
/// hypervisor does not trust is refused with `UNTRUSTED_KEY`; a flipped
/// bit of the trusted signer's key likewise; then the right signature runs.
pub fn vb_refuse_wrong_key(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let good = vmm::bundle("hello")?;
    let other = vmm::untrusted_hello()?;
    ensure!(
        other.measurement == good.measurement && other.signer != good.signer,
        "hello.untrusted.bundle is not the same measurement by another signer"
    );
    let vm = Vm::create(
        &mut arena,
        Spec {
            sign: false,
            ..protected("hello")?
        },
    )?;
    let steps = || -> Result<(), Msg> {
        let c = set_signature(vm.handle, &other.signer, &other.signature);
        ensure!(c == 0, "VM_SET_SIGNATURE (untrusted signer) = {c}");
        expect_refused(&vm, 0, UNTRUSTED_KEY, "signed by an untrusted key")?;
        let mut signer = good.signer;
        signer[31] ^= 0x40;
        let c = set_signature(vm.handle, &signer, &good.signature);
        ensure!(c == 0, "VM_SET_SIGNATURE (flipped signer) = {c}");
        let r = call(HostCall::VcpuRun, &[vm.handle, 0, 0])[0] as i64;
        ensure!(
            r == UNTRUSTED_KEY,
            "a bit of the trusted signer's key flipped: VCPU_RUN = {}, expected {}",
            describe(r).as_str(),
            describe(UNTRUSTED_KEY).as_str()
        );
        Ok(())
    };
    if let Err(e) = steps() {
        let _ = destroyed(vm, "");
        return Err(e);
    }
    then_runs(p, vm, "untrusted key")?;
    note!("UNTRUSTED_KEY for another signer and for a flipped signer key; then signed, hello ran");
    Ok(())
}

/// `vb-refuse-flipped-signature`: one bit of the signature flipped (first
/// byte, then last) is `BAD_SIGNATURE`; then the right one runs.
pub fn vb_refuse_flipped_signature(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let good = vmm::bundle("hello")?;
    let vm = Vm::create(
        &mut arena,
        Spec {
            sign: false,
            ..protected("hello")?
        },
    )?;
    let steps = || -> Result<(), Msg> {
        for (byte, bit) in [(0, 0x01), (63, 0x10)] {
            let mut signature = good.signature;
            signature[byte] ^= bit;
            let c = set_signature(vm.handle, &good.signer, &signature);
            ensure!(c == 0, "VM_SET_SIGNATURE (flipped) = {c}");
            expect_refused(&vm, 0, BAD_SIGNATURE, "a bit of the signature flipped")?;
        }
        Ok(())
    };
    if let Err(e) = steps() {
        let _ = destroyed(vm, "");
        return Err(e);
    }
    then_runs(p, vm, "flipped signature")?;
    // issue 16: hello's (measurement, signer, signature) has now verified,
    // so EL2 has it in its cache of verified triples; a flipped signature
    // over that same measurement must still be BAD_SIGNATURE (the cache is
    // keyed by all three, not by the measurement).
    let what = "a flipped signature for a measurement that verified before (cached)";
    let vm = Vm::create(
        &mut arena,
        Spec {
            sign: false,
            ..protected("hello")?
        },
    )?;
    let mut signature = good.signature;
    signature[31] ^= 0x04;
    let c = set_signature(vm.handle, &good.signer, &signature);
    let refused = if c == 0 {
        expect_refused(&vm, 0, BAD_SIGNATURE, what)
    } else {
        Err(msg!("{what}: VM_SET_SIGNATURE = {c}"))
    };
    let torn = destroyed(vm, what);
    refused?;
    torn?;
    note!(
        "BAD_SIGNATURE for a flipped bit in byte 0 and in byte 63; then the right signature ran; then BAD_SIGNATURE for a flipped bit in byte 31 after the right one verified (cached)"
    );
    Ok(())
}

/// A VM built as `spec` (signed with the bundle's signature) must be
/// refused with `BAD_SIGNATURE`, also after the signature is set again,
/// and destroyed with every page zeroed.
pub(super) fn stays_refused(
    p: &Platform,
    spec: Spec,
    setup: &dyn Fn(&Vm) -> Result<(), Msg>,
    what: &str,
) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let vm = Vm::create(&mut arena, spec).map_err(|e| msg!("{what}: {e}"))?;
    let steps = || -> Result<(), Msg> {
        setup(&vm)?;
        expect_refused(&vm, 0, BAD_SIGNATURE, what)?;
        let b = vmm::bundle(spec.guest)?;
        let c = set_signature(vm.handle, &b.signer, &b.signature);
        ensure!(
            c == 0,
            "{what}: VM_SET_SIGNATURE again after the refusal = {c}"
        );
        expect_refused(&vm, 0, BAD_SIGNATURE, what)
    };
    let result = steps();
    let torn = destroyed(vm, what);
    result?;
    torn
}

/// `vb-refuse-flipped-image`: one byte of the image flipped before
/// donation (in its code, and in the zero fill after it) is `BAD_SIGNATURE`
/// however often the signature is given; the VM is destroyed, its pages
/// zeroed.
pub fn vb_refuse_flipped_image(p: &Platform) -> Result<(), Msg> {
    let spec = protected("hello")?;
    let image = vmm::image("hello")?.len() as u64;
    stays_refused(
        p,
        Spec {
            tamper: Some(image / 2),
            ..spec
        },
        &|_| Ok(()),
        "a byte of the image flipped",
    )?;
    stays_refused(
        p,
        Spec {
            tamper: Some(spec.ram - 1),
            ..spec
        },
        &|_| Ok(()),
        "the last byte of RAM (zero fill) flipped",
    )?;
    note!(
        "BAD_SIGNATURE for byte {:#x} of the image and for the last byte of RAM",
        image / 2
    );
    Ok(())
}

/// `vb-refuse-flipped-manifest`: the signed image run with another memory
/// size, vCPU count, entry point, `x0` or the debug flag than signed is
/// `BAD_SIGNATURE`.
pub fn vb_refuse_flipped_manifest(p: &Platform) -> Result<(), Msg> {
    let spec = protected("hello")?;
    let none = |_: &Vm| Ok(());
    stays_refused(
        p,
        Spec {
            ram: spec.ram + PAGE,
            ..spec
        },
        &none,
        "one page more memory than signed",
    )?;
    stays_refused(
        p,
        Spec {
            vcpus: spec.vcpus + 1,
            ..spec
        },
        &none,
        "one vCPU more than signed",
    )?;
    stays_refused(
        p,
        Spec {
            debug: true,
            ..spec
        },
        &none,
        "the debug flag, not signed",
    )?;
    let regs = |pc: u64, x0: u64| {
        move |vm: &Vm| {
            expect(
                HostCall::VcpuSetRegs,
                &[vm.handle, 0, pc, x0],
                0,
                "VCPU_SET_REGS before the first run",
            )
        }
    };
    stays_refused(
        p,
        spec,
        &regs(GUEST_RAM_BASE + 4, spec.ram),
        "entry point + 4",
    )?;
    stays_refused(
        p,
        spec,
        &regs(GUEST_RAM_BASE, spec.ram - PAGE),
        "x0 one page less",
    )?;
    note!("BAD_SIGNATURE for memory + 4 KiB, vCPUs + 1, debug, entry + 4 and x0 - 4 KiB");
    Ok(())
}

/// `vb-first-run-vcpu1`: running vCPU 1 (still off) first neither runs an
/// unsigned VM nor gets around its check: it is refused (`NOT_SIGNED`) or
/// answered `EXIT_POWERED_OFF` (nothing ran), and vCPU 0 is then still
/// refused. The measurement covers vCPU 0's entry state whichever vCPU the
/// host runs first: signed, vCPU 1's run first is not refused, and the VM
/// then runs to `GUEST-DONE`.
pub fn vb_first_run_vcpu1(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let vm = Vm::create(
        &mut arena,
        Spec {
            sign: false,
            ..protected("smp")?
        },
    )?;
    let steps = || -> Result<(), Msg> {
        let r = call(HostCall::VcpuRun, &[vm.handle, 1, 0]);
        let powered_off = r[0] == 0 && r[1] == rampart_abi::host::ExitReason::PoweredOff as u64;
        ensure!(
            r[0] as i64 == NOT_SIGNED || powered_off,
            "unsigned, vCPU 1 (off) run first: VCPU_RUN = {}, exit {}; expected NOT_SIGNED or EXIT_POWERED_OFF",
            describe(r[0] as i64).as_str(),
            r[1]
        );
        if powered_off {
            note!(
                "unsigned, vCPU 1 (off) run first: EXIT_POWERED_OFF, not NOT_SIGNED (docs/abi.md: the first VCPU_RUN is refused)"
            );
        }
        expect_refused(&vm, 0, NOT_SIGNED, "unsigned, vCPU 0 after vCPU 1")?;
        let b = vmm::bundle("smp")?;
        let c = set_signature(vm.handle, &b.signer, &b.signature);
        ensure!(c == 0, "VM_SET_SIGNATURE = {c}");
        let r = call(HostCall::VcpuRun, &[vm.handle, 1, 0]);
        ensure!(
            r[0] == 0,
            "signed, vCPU 1 (off) run first: VCPU_RUN = {}, expected SUCCESS (the measurement is of vCPU 0's entry state, which the host set as signed)",
            describe(r[0] as i64).as_str()
        );
        Ok(())
    };
    let result = steps();
    let mut vms = [vm];
    if let Err(e) = result {
        let _ = vms[0].destroy();
        return Err(e);
    }
    run_and_destroy(p, &mut vms, &[&[0, 1, 2, 3]], &mut Plain, 10_000)?;
    note!("vCPU 1 first: NOT_SIGNED unsigned, SUCCESS signed; then smp ran to GUEST-DONE");
    Ok(())
}

/// `vb-measurement-fixed`: after a signed VM's first run,
/// `VM_SET_SIGNATURE` (even the right one) and `VCPU_SET_REGS` (of vCPU 0,
/// and of vCPU 1, which never ran) are `DENIED`; the VM then runs on
/// unchanged to `GUEST-DONE`.
pub fn vb_measurement_fixed(p: &Platform) -> Result<(), Msg> {
    let (mut arena, _) = arena(p)?;
    let spec = protected("smp")?;
    let b = vmm::bundle("smp")?;
    let vm = Vm::create(&mut arena, spec)?;
    let steps = || -> Result<(), Msg> {
        let r = call(HostCall::VcpuRun, &[vm.handle, 0, 0]);
        ensure!(
            r[0] == 0,
            "first VCPU_RUN = {}",
            describe(r[0] as i64).as_str()
        );
        // The first exit is a console write: answer nothing, run on later.
        let c = set_signature(vm.handle, &b.signer, &b.signature);
        ensure!(
            c == DENIED,
            "VM_SET_SIGNATURE after the first run = {}, expected DENIED",
            describe(c).as_str()
        );
        let mut other = b.signature;
        other[5] ^= 2;
        let c = set_signature(vm.handle, &b.signer, &other);
        ensure!(
            c == DENIED,
            "VM_SET_SIGNATURE (another signature) after the first run = {}, expected DENIED",
            describe(c).as_str()
        );
        for vcpu in [0, 1] {
            expect(
                HostCall::VcpuSetRegs,
                &[vm.handle, vcpu, GUEST_RAM_BASE + 0x40, 0x1234],
                DENIED,
                "VCPU_SET_REGS after the VM's first run",
            )?;
        }
        Ok(())
    };
    let result = steps();
    let mut vms = [vm];
    if let Err(e) = result {
        let _ = vms[0].destroy();
        return Err(e);
    }
    run_and_destroy(p, &mut vms, &[&[0, 1, 2, 3]], &mut Plain, 10_000)?;
    note!(
        "VM_SET_SIGNATURE and VCPU_SET_REGS (vCPUs 0 and 1) DENIED after the first run; smp ran on to GUEST-DONE"
    );
    Ok(())
}

/// The attest guest's lines, collected.
struct AttestPolicy {
    report: [u8; 512],
    report_len: Option<usize>,
    nonce: [u8; 64],
    nonce_len: Option<usize>,
    sealing: u32,
}

fn parse_hex(text: &str, out: &mut [u8]) -> Option<usize> {
    let digits = text.trim().as_bytes();
    if !digits.len().is_multiple_of(2) || digits.len() / 2 > out.len() {
        return None;
    }
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = core::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(digits.len() / 2)
}

impl Policy for AttestPolicy {
    fn line(&mut self, _vms: &mut [Vm], _vm: usize, text: &str) -> Result<(), Msg> {
        if let Some(hex) = text.strip_prefix("GUEST-REPORT ") {
            self.report_len = parse_hex(hex, &mut self.report);
            ensure!(
                self.report_len.is_some(),
                "GUEST-REPORT is not hex of at most 512 bytes"
            );
        } else if let Some(hex) = text.strip_prefix("GUEST-NONCE ") {
            self.nonce_len = parse_hex(hex, &mut self.nonce);
            ensure!(
                self.nonce_len == Some(64),
                "GUEST-NONCE is not 64 bytes of hex"
            );
        } else if text.starts_with("GUEST-SEALING ") {
            self.sealing += 1;
        }
        Ok(())
    }
}

/// `vb-attest`: `ATTESTATION_KEY` returns a key (printed for xtask, which
/// checks it is the one the device secret gives); the `attest` guest runs
/// to `GUEST-DONE`: its report is a tagged COSE_Sign1 of at most 512 bytes
/// carrying its nonce, which starts with the documented prefix; both are
/// printed as the guest's `GUEST-REPORT` / `GUEST-NONCE` lines, and
/// `cargo xtask` verifies the report with `rampart attest-verify`.
pub fn vb_attest(p: &Platform) -> Result<(), Msg> {
    let r = call(HostCall::AttestationKey, &[]);
    ensure!(
        r[0] == 0,
        "ATTESTATION_KEY = {}",
        describe(r[0] as i64).as_str()
    );
    let key: [u8; 32] = rampart_abi::host::words_to_bytes(&r[1..5]);
    ensure!(key != [0; 32], "ATTESTATION_KEY returned zero");
    let mut line: Msg<96> = Msg::new();
    for b in key {
        let _ = core::fmt::write(&mut line, format_args!("{b:02x}"));
    }
    note!("vb-attest: ATTESTATION_KEY {}", line.as_str());

    let mut policy = AttestPolicy {
        report: [0; 512],
        report_len: None,
        nonce: [0; 64],
        nonce_len: None,
        sealing: 0,
    };
    super::vm::solo(p, protected("attest")?, &mut policy, 8_000)?;
    let Some(len) = policy.report_len else {
        fail!("the attest guest printed no GUEST-REPORT");
    };
    ensure!(
        policy.nonce_len == Some(64),
        "the attest guest printed no GUEST-NONCE"
    );
    let report = &policy.report[..len];
    ensure!(
        report.starts_with(&[0xd2, 0x84]),
        "the report starts {:02x?}, not a tagged COSE_Sign1",
        &report[..len.min(2)]
    );
    ensure!(
        policy.nonce[..32] == NONCE_PREFIX[..],
        "the nonce does not start with the documented prefix"
    );
    let mut needle = [0u8; 66];
    needle[..2].copy_from_slice(&[0x58, 0x40]);
    needle[2..].copy_from_slice(&policy.nonce);
    ensure!(
        report.windows(66).any(|w| w == needle),
        "the report does not carry the nonce as a 64-byte bstr"
    );
    ensure!(
        policy.sealing == 3,
        "{} GUEST-SEALING lines, expected 3",
        policy.sealing
    );
    ATTESTED.store(true, Ordering::Release);
    note!(
        "attest report: {len} bytes, carries the nonce; verified on the build machine by `cargo xtask`"
    );
    Ok(())
}

/// `vb-no-leaks`: after the attest guest ran (and was destroyed), none of
/// the secrets `testhost.secrets=` names — the device secret, the
/// attestation private key (seed and expanded form) and the attest guest's
/// sealing keys — appears, at any byte alignment, in any page of RAM the
/// host can read (all host RAM, the test host's own image included; only
/// the device tree, which holds the command line, is skipped) or in any
/// value a host call returned to the VMM (every exit record of every VM).
pub fn vb_no_leaks(p: &Platform) -> Result<(), Msg> {
    let count = match p.secrets {
        Ok(0) => fail!(
            "no {} on the command line: run through `cargo xtask`, which derives them",
            secrets::BOOTARG
        ),
        Ok(n) => n,
        Err(e) => fail!("{}: {e}", secrets::BOOTARG),
    };
    ensure!(
        ATTESTED.load(Ordering::Acquire),
        "vb-attest did not run the attest guest to the end"
    );
    let (registers, hit) = secrets::register_scan();
    if let Some((secret, register)) = hit {
        fail!(
            "{} was returned to the host in x{register} of a host call",
            secrets::name(secret)
        );
    }
    let start = arch::counter();
    let ranges = secrets::scannable_ram(p);
    let scanned = match secrets::scan_ranges(ranges.as_slice()) {
        Ok(scanned) => scanned,
        Err((at, secret)) => fail!("{} is in host RAM: 8 of its bytes at {at:#x}", secrets::name(secret)),
    };
    let (scanned, nonzero) = (scanned.bytes, scanned.nonzero);
    let (mut arena, _) = arena(p)?;
    let page = arena.take(1)?;
    let planted = secrets::self_test(page).map_err(|e| msg!("the leak scan's self-test: {e}"))?;
    note!("self-test: 15 bytes of a secret planted at {page:#x} + 3 were found at {planted:#x}");
    note!(
        "{count} secrets: not in {} MiB of host RAM ({} KiB not zero) nor in {registers} register values returned to the host; {} ms",
        scanned >> 20,
        nonzero >> 10,
        cpus::elapsed_ms(start)
    );
    Ok(())
}
