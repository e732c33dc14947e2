//! `vb`: what verified boot and attestation cost at EL2.
//!
//! **First entry by initial memory size.** The bench guest of [`super::vm`]
//! (the same image) in 1, 2 and 4 MiB of guest RAM, the rest zero-filled,
//! vCPU 0 entered at its start with `x0` = the RAM size: exactly what xtask
//! measured and signed for each size (`testhost.bench-signature=`, names
//! [`SIZES`]). The whole range is donated with one `VM_DONATE`. For a
//! protected VM each round runs the vCPU twice:
//!
//! | `VCPU_RUN` | what EL2 does | figure |
//! |---|---|---|
//! | before `VM_SET_SIGNATURE` | measures every page, finds no signature, refuses (`NOT_SIGNED`) | `unsigned-run` |
//! | after it | measures again, verifies the Ed25519 signature, enters the guest, which exits at its `wfi` | `first-entry` |
//!
//! so `first-entry - unsigned-run` is the signature check plus the entry
//! (minus the refusal), and the slope of either over the sizes is the
//! measurement's cost per MiB. A non-protected VM of the same sizes is not
//! measured: its `first-entry` is the contrast. `donate` (the whole range
//! in one call) and `destroy` (which zeroes it) are reported too.
//!
//! **Attestation.** A second hand-assembled guest
//! (`attest_guest_code.rs`, signed by xtask as `attest`) reads a selector
//! from an MMIO register, makes the selected guest call and writes `x0`
//! and `x1` back. The `VCPU_RUN` that resumes the guest after the read and
//! returns at the first write is measured with selector 0 (no call: the
//! `base`), 1 (`RAMPART_ATTEST`, 64-byte nonce, report into the guest's
//! second page) and 2 (`RAMPART_SEALING_KEY`, 32-byte label); the
//! difference to `base` is the call, guest to EL2 and back. EL2 answers
//! it while the protected guest's `MDCR_EL2` (`HPMD`, `HCCD`) is live and
//! the host's PMU counters are paused, so the PMU cannot see it: the
//! `vb/attest` and `vb/sealing-key` rows are the virtual counter's
//! difference (below), instructions at every EL to one counter tick (16
//! instructions under QEMU 7.2), the guest's 1 or 2 instructions more
//! than its no-call path included.
//!
//! Every measured call is also timed with the virtual counter
//! (`BENCH-WALL <name> <median ns> min= max= n=`). Under `-icount` that
//! clock counts instructions at every EL (1 ns each); only a run without
//! `-icount` (`cargo xtask bench vb --wall`) makes it wall time, and then
//! only the emulator's.

use rampart_abi::host::{DONATE_ZEROED_MAX_PAGES, ExitReason, HostCall, VmConfig, mmio};

use super::vm::{GUEST, GUEST_BASE, METADATA_PAGES, UART, expect, set_signature, write_image};
use super::{Delta, PAGE, ROUNDS, Scratch, Series, pmu};
use crate::arch;
use crate::msg::Msg;
use crate::{ensure, msg, println};

/// Initial memory sizes in MiB, and the names xtask signs them under.
pub const SIZES: [(u64, &str); 3] = [(1, "pvm-1m"), (2, "pvm-2m"), (4, "pvm-4m")];
/// VMs per size and protection: every figure is exact (min = max shows it).
const SIZE_ROUNDS: usize = 3;
/// VMs of the attestation guest.
const ATTEST_ROUNDS: usize = ROUNDS / 2;

/// The attestation guest (checked with `llvm-mc -triple=aarch64`); xtask
/// signs the same words.
const ATTEST_GUEST: [u32; 29] = include!("attest_guest_code.rs");
/// Its RAM: the image and the page the report goes to.
pub const ATTEST_GUEST_PAGES: u64 = 2;
/// The name xtask signs it under.
pub const ATTEST_SIGNATURE_NAME: &str = "attest";
/// Its selectors (the value of its MMIO read).
const SELECT_NONE: u64 = 0;
const SELECT_ATTEST: u64 = 1;
const SELECT_SEALING_KEY: u64 = 2;

/// One figure: EL2 instructions and the virtual counter's ticks.
#[derive(Clone, Copy)]
struct Timed {
    el2: Series,
    ticks: [u64; Timed::CAPACITY],
    len: usize,
}

impl Timed {
    const CAPACITY: usize = ROUNDS;

    const fn new() -> Self {
        Timed {
            el2: Series::new(),
            ticks: [0; Self::CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, (d, ticks): (Delta, u64)) {
        self.el2.push(d);
        if let Some(slot) = self.ticks.get_mut(self.len) {
            *slot = ticks;
            self.len += 1;
        }
    }

    /// Prints the `BENCH` and `BENCH-WALL` lines.
    fn report(&self, name: &str) {
        self.el2.report(name);
        if self.len == 0 {
            return;
        }
        let mut ns = [0u64; Self::CAPACITY];
        for (slot, &t) in ns.iter_mut().zip(&self.ticks[..self.len]) {
            *slot = nanoseconds(t);
        }
        let ns = &mut ns[..self.len];
        ns.sort_unstable();
        println!(
            "BENCH-WALL {name} {} min={} max={} n={}",
            ns[ns.len() / 2],
            ns[0],
            ns[ns.len() - 1],
            ns.len()
        );
    }
}

/// Nanoseconds of `ticks` of the virtual counter. Under `-icount shift=0`
/// QEMU's virtual clock advances one nanosecond per instruction at every
/// EL, so this is also the instructions run, to one tick
/// ([`tick_instructions`]).
fn nanoseconds(ticks: u64) -> u64 {
    let frequency = arch::counter_frequency().max(1);
    u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(frequency)).unwrap_or(u64::MAX)
}

/// Instructions one tick of the virtual counter stands for under
/// `-icount shift=0` (16 with QEMU 7.2's 62.5 MHz counter).
fn tick_instructions() -> u64 {
    nanoseconds(1).max(1)
}

/// A host call, measured by the PMU and timed by the virtual counter.
fn timed(call: HostCall, args: &[u64]) -> ((Delta, u64), [u64; 18]) {
    let start = arch::counter();
    let before = pmu::read();
    let result = crate::psci::call_via(crate::psci::Conduit::Hvc, call.id(), args);
    let after = pmu::read();
    let end = arch::counter();
    ((before.until(after), end.wrapping_sub(start)), result)
}

/// Runs the group.
pub fn run(scratch: &Scratch) -> Result<(), Msg> {
    let memory = scratch.block(Scratch::GUEST_MEMORY);
    let metadata = scratch.block(Scratch::METADATA);
    for protected in [false, true] {
        let tag = if protected { "pvm" } else { "vm" };
        for (mib, signature_name) in SIZES {
            let signature = if protected {
                Some(crate::platform::bench_signature(signature_name).ok_or_else(|| {
                    msg!("no `{signature_name}` in testhost.bench-signature=: xtask signs every size")
                })?)
            } else {
                None
            };
            let vm = |ram: Ram, kind: Kind<'_>| {
                let mut f = SizeFigures::default();
                for round in 0..SIZE_ROUNDS {
                    sized_vm(&mut f, metadata, memory, mib << 20, ram, kind)
                        .map_err(|m| msg!("{tag} {mib} MiB{}, round {round}: {m}", ram.label()))?;
                }
                Ok::<_, Msg>(f)
            };
            let f = vm(Ram::Zero, signature.as_ref().map_or(Kind::Plain, Kind::Signed))?;
            let name = |what: &str| msg!("vb/{tag}-{mib}m/{what}");
            f.donate.report(name("donate").as_str());
            if protected {
                f.unsigned_run.report(name("unsigned-run").as_str());
            }
            f.first_entry.report(name("first-entry").as_str());
            f.destroy.report(name("destroy").as_str());
            if let Some(signature) = &signature {
                // issue 16: the same size with no zero page, measured only
                // (a zero page is hashed as a short record since
                // measurement v2, a content page whole).
                let content = vm(Ram::Content, Kind::Unsigned)?;
                content.unsigned_run.report(msg!("vb/{tag}-{mib}m-content/unsigned-run").as_str());
                // issue 16: the same VM with its RAM past the image's page
                // given with VM_DONATE_ZEROED over host garbage: measured
                // without reading those pages, to the same measurement
                // (the size's signature verifies).
                let zeroed = vm(Ram::Zeroed, Kind::Signed(signature))?;
                let name = |what: &str| msg!("vb/{tag}-{mib}m-zeroed/{what}");
                zeroed.donate.report(name("donate-zeroed-first-call").as_str());
                zeroed.unsigned_run.report(name("unsigned-run").as_str());
                zeroed.first_entry.report(name("first-entry").as_str());
                // issue 16: the same VM with only the image's page given
                // and the rest declared zero (VM_DECLARE_ZERO, nothing
                // mapped there): the same measurement again.
                let declared = vm(Ram::Declared, Kind::Signed(signature))?;
                let name = |what: &str| msg!("vb/{tag}-{mib}m-declared/{what}");
                declared.donate.report(name("declare").as_str());
                declared.unsigned_run.report(name("unsigned-run").as_str());
                declared.first_entry.report(name("first-entry").as_str());
            }
        }
    }
    attestation(metadata, memory)
}

#[derive(Clone, Copy)]
struct SizeFigures {
    donate: Timed,
    unsigned_run: Timed,
    first_entry: Timed,
    destroy: Timed,
}

impl Default for SizeFigures {
    fn default() -> Self {
        SizeFigures {
            donate: Timed::new(),
            unsigned_run: Timed::new(),
            first_entry: Timed::new(),
            destroy: Timed::new(),
        }
    }
}

/// What the host fills a sized VM's RAM with before the bench guest's
/// image goes at its start: no 8-byte word of it is zero.
const PATTERN: u64 = 0x5a5a_5a5a_0000_0000;

/// How a sized VM's RAM is filled and given to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ram {
    /// The image, then zeroes; the whole range with one `VM_DONATE`.
    Zero,
    /// issue 16: the image over [`PATTERN`], no zero page; the whole range
    /// with one `VM_DONATE` (EL2 measures every page as content).
    Content,
    /// issue 16: only the image's page written and given with
    /// `VM_DONATE`; the rest, [`PATTERN`] garbage, with
    /// `VM_DONATE_ZEROED` (512 pages a call at most; the first call, 255
    /// or 511 pages, is the `donate` figure). EL2 knows those pages are
    /// zero and measures them without reading them, to [`Ram::Zero`]'s
    /// measurement: the size's signature verifies.
    Zeroed,
    /// issue 16: only the image's page written and given with
    /// `VM_DONATE`; the rest not given at all: one `VM_DECLARE_ZERO`
    /// names it (the `donate` figure), and the first run measures it as
    /// zero pages with no stage-2 mapping, to [`Ram::Zero`]'s measurement
    /// (the guest touches only its image's page).
    Declared,
}

impl Ram {
    /// Said in an error after the size.
    fn label(self) -> &'static str {
        match self {
            Ram::Zero => "",
            Ram::Content => " of content",
            Ram::Zeroed => " zeroed at EL2",
            Ram::Declared => " declared zero",
        }
    }

    /// Writes the host's side of `size` bytes at `memory`: the contents,
    /// then the bench guest's image at the start.
    fn fill(self, memory: u64, size: u64) {
        match self {
            Ram::Zero => arch::ram_zero(memory, memory + size),
            Ram::Content => arch::ram_fill(memory, memory + size, PATTERN),
            Ram::Zeroed => {
                arch::ram_fill(memory, memory + size, PATTERN);
                arch::ram_zero(memory, memory + PAGE);
            }
            Ram::Declared => arch::ram_zero(memory, memory + PAGE),
        }
        write_image(memory, &GUEST);
    }

    /// Gives VM `handle` the `size` bytes at `memory` at `GUEST_BASE`; the
    /// figure of the first donation call.
    fn donate(self, handle: u64, memory: u64, size: u64) -> Result<(Delta, u64), Msg> {
        if self == Ram::Declared {
            call(HostCall::VmDonate, &[handle, memory, 1, GUEST_BASE])?;
            let pages = size / PAGE - 1;
            let (d, r) = timed(HostCall::VmDeclareZero, &[handle, GUEST_BASE + PAGE, pages, 0]);
            ensure!(r[0] == 0, "VM_DECLARE_ZERO of {pages} pages returned {}", r[0] as i64);
            return Ok(d);
        }
        if self != Ram::Zeroed {
            let (d, r) = timed(HostCall::VmDonate, &[handle, memory, size / PAGE, GUEST_BASE]);
            ensure!(r[0] == 0, "VM_DONATE of {} pages returned {}", size / PAGE, r[0] as i64);
            return Ok(d);
        }
        call(HostCall::VmDonate, &[handle, memory, 1, GUEST_BASE])?;
        let mut first = None;
        let mut at = PAGE;
        while at < size {
            let pages = ((size - at) / PAGE).min(DONATE_ZEROED_MAX_PAGES);
            let (d, r) = timed(HostCall::VmDonateZeroed, &[handle, memory + at, pages, GUEST_BASE + at, 0]);
            ensure!(r[0] == 0, "VM_DONATE_ZEROED of {pages} pages returned {}", r[0] as i64);
            first.get_or_insert(d);
            at += pages * PAGE;
        }
        first.ok_or_else(|| msg!("no page past the image to give with VM_DONATE_ZEROED"))
    }
}

/// What a sized VM is and how far it runs.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// Not protected: entered once (not measured).
    Plain,
    /// Protected, run before `VM_SET_SIGNATURE` (measured, refused with
    /// `NOT_SIGNED`), then signed with this and entered.
    Signed(&'a ([u8; 32], [u8; 64])),
    /// Protected, run once unsigned: measured and refused only.
    Unsigned,
}

/// Creates a VM of `size` bytes of RAM (the bench guest at its start),
/// its RAM filled and given as `ram` says, runs it as `kind` says
/// (`x0` = the RAM size, as a signed manifest says) and destroys it.
fn sized_vm(f: &mut SizeFigures, metadata: u64, memory: u64, size: u64, ram: Ram, kind: Kind<'_>) -> Result<(), Msg> {
    ram.fill(memory, size);
    let handle = create(metadata, !matches!(kind, Kind::Plain))?;
    let result = (|| -> Result<(), Msg> {
        call(HostCall::VcpuCreate, &[handle, 0])?;
        f.donate.push(ram.donate(handle, memory, size)?);
        call(HostCall::VcpuSetRegs, &[handle, 0, GUEST_BASE, size])?;
        if !matches!(kind, Kind::Plain) {
            let (d, r) = timed(HostCall::VcpuRun, &[handle, 0, 0]);
            let not_signed = rampart_abi::Error::NotSigned.code();
            ensure!(
                r[0] as i64 == not_signed,
                "the run before VM_SET_SIGNATURE returned {}, not NOT_SIGNED ({not_signed})",
                r[0] as i64
            );
            f.unsigned_run.push(d);
        }
        match kind {
            Kind::Unsigned => return Ok(()),
            Kind::Signed(signature) => set_signature(handle, signature)?,
            Kind::Plain => {}
        }
        let (d, r) = timed(HostCall::VcpuRun, &[handle, 0, 0]);
        expect(&r, ExitReason::Wait as u64, 0, 0, "the first run")?;
        f.first_entry.push(d);
        Ok(())
    })();
    let (d, r) = timed(HostCall::VmDestroy, &[handle]);
    result?;
    ensure!(r[0] == 0, "VM_DESTROY returned {}", r[0] as i64);
    f.destroy.push(d);
    Ok(())
}

/// `VM_CREATE` with one vCPU; the handle.
fn create(metadata: u64, protected: bool) -> Result<u64, Msg> {
    let config = VmConfig {
        debug: false,
        protected,
        max_vcpus: 1,
    }
    .encode();
    let r = call(HostCall::VmCreate, &[metadata, METADATA_PAGES, config])?;
    Ok(r[1])
}

/// A host call that must succeed.
fn call(call: HostCall, args: &[u64]) -> Result<[u64; 18], Msg> {
    let r = crate::psci::call_via(crate::psci::Conduit::Hvc, call.id(), args);
    ensure!(r[0] == 0, "{call:?} returned {}", r[0] as i64);
    Ok(r)
}

#[derive(Clone, Copy)]
struct AttestFigures {
    first_entry: Timed,
    base: Timed,
    attest: Timed,
    sealing_key: Timed,
    report_len: u64,
}

/// The attestation guest's calls.
fn attestation(metadata: u64, memory: u64) -> Result<(), Msg> {
    let signature = crate::platform::bench_signature(ATTEST_SIGNATURE_NAME)
        .ok_or_else(|| msg!("no `{ATTEST_SIGNATURE_NAME}` in testhost.bench-signature=: xtask signs the attestation guest"))?;
    let mut f = AttestFigures {
        first_entry: Timed::new(),
        base: Timed::new(),
        attest: Timed::new(),
        sealing_key: Timed::new(),
        report_len: 0,
    };
    for round in 0..ATTEST_ROUNDS {
        attest_vm(&mut f, metadata, memory, &signature).map_err(|m| msg!("attestation guest, round {round}: {m}"))?;
    }
    f.first_entry.report("vb/attest-guest/first-entry");
    f.base.report("vb/attest-guest/no-call");
    f.attest.report("vb/attest");
    f.sealing_key.report("vb/sealing-key");
    println!("BENCH-INFO vb/attest: reports of {} bytes", f.report_len);
    println!(
        "BENCH-INFO vb/attest, vb/sealing-key: instructions at every EL by the virtual counter \
         (under -icount, to {} instructions a reading), the guest's 1 or 2 more than the no-call path's \
         included: the PMU does not count EL2 while a protected guest's state is loaded",
        tick_instructions()
    );
    Ok(())
}

fn attest_vm(f: &mut AttestFigures, metadata: u64, memory: u64, signature: &([u8; 32], [u8; 64])) -> Result<(), Msg> {
    let size = ATTEST_GUEST_PAGES * PAGE;
    arch::ram_zero(memory, memory + size);
    write_image(memory, &ATTEST_GUEST);
    let handle = create(metadata, true)?;
    let result = (|| -> Result<(), Msg> {
        call(HostCall::VcpuCreate, &[handle, 0])?;
        call(HostCall::VmDonate, &[handle, memory, ATTEST_GUEST_PAGES, GUEST_BASE])?;
        call(HostCall::VcpuSetRegs, &[handle, 0, GUEST_BASE, size])?;
        set_signature(handle, signature)?;
        let run = |value: u64| timed(HostCall::VcpuRun, &[handle, 0, value]);
        let write = |r: &[u64; 18], offset: u64, width: u64, when: &str| {
            expect(r, ExitReason::Mmio as u64, UART + offset, width | mmio::WRITE, when)
        };
        let (d, r) = run(0);
        expect(&r, ExitReason::Wait as u64, 0, 0, "the first run")?;
        f.first_entry.push(d);
        let (_, r) = run(0);
        write(&r, 0, 2, "after MMIO_GUARD_MAP")?;
        let mut base = None;
        for (selector, what) in [(SELECT_NONE, "no call"), (SELECT_ATTEST, "ATTEST"), (SELECT_SEALING_KEY, "SEALING_KEY")] {
            let (_, r) = run(0);
            expect(&r, ExitReason::Mmio as u64, UART + 8, 3, "the selector read")?;
            let (d, r) = run(selector);
            write(&r, 0, 3, what)?;
            ensure!(r[4] == 0, "{what}: the guest's x0 is {}", r[4] as i64);
            let (_, r) = run(0);
            write(&r, 16, 3, what)?;
            let x1 = r[4];
            match selector {
                SELECT_NONE => {
                    f.base.push(d);
                    base = Some(d);
                }
                _ => {
                    let Some(b) = base else { return Err(msg!("no base run")) };
                    // EL2 answers the call while the protected guest's
                    // MDCR_EL2 (HPMD, HCCD) is live and the host's PMU
                    // counters are paused, so the PMU sees the same EL2
                    // count as without a call. The virtual counter runs at
                    // every EL: the difference of the two runs is the
                    // call, guest to EL2 and back.
                    let ticks = d.1.saturating_sub(b.1);
                    let instructions = nanoseconds(ticks);
                    let call = (
                        Delta {
                            instructions,
                            cycles: instructions,
                        },
                        ticks,
                    );
                    if selector == SELECT_ATTEST {
                        ensure!(x1 > 0 && x1 <= PAGE, "ATTEST returned a report of {x1} bytes");
                        f.report_len = x1;
                        f.attest.push(call);
                    } else {
                        ensure!(x1 != 0, "SEALING_KEY returned a key starting with 8 zero bytes");
                        f.sealing_key.push(call);
                    }
                }
            }
        }
        Ok(())
    })();
    let (_, r) = timed(HostCall::VmDestroy, &[handle]);
    result?;
    ensure!(r[0] == 0, "VM_DESTROY returned {}", r[0] as i64);
    Ok(())
}
