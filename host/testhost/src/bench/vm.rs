//! `vm` and `pvm`: EL2 instructions of a VM's life, for a non-protected and
//! a protected VM: `VM_CREATE`, `VCPU_CREATE`, `VM_DONATE` of one page (into
//! a fresh stage 2, then into one whose tables exist), the vCPU's first
//! entry, an MMIO exit to the host and the resume, a guest HVC handled at
//! EL2, and `VM_DESTROY`.
//!
//! The guest is hand-assembled ([`GUEST`]). Each round makes a new VM,
//! runs it through the sequence below and destroys it:
//!
//! | `VCPU_RUN` | guest runs (EL1, not counted) | exit | figure |
//! |---|---|---|---|
//! | 1 | `wfi` | `EXIT_WAIT` | `first-entry` |
//! | 2 | `MMIO_GUARD_MAP` of the UART page (an HVC handled at EL2), `str` | MMIO write | |
//! | 3 | `ldr` from the UART | MMIO read | `mmio-after-write` |
//! | 4, `x3` = 0 | no HVC, `str` | MMIO write | `mmio-after-read`, base of `hvc` |
//! | 5 | `ldr` | MMIO read | `mmio-after-write` |
//! | 6, `x3` = 16 | 16 × `KVM_FEATURES` HVC, `str` | MMIO write | `hvc` = (run 6 − run 4) / 16 |
//!
//! `mmio-after-write` is one `VCPU_RUN` that resumes the guest after an
//! MMIO write (stepping over it) and comes back at the next MMIO exit: the
//! cost of one MMIO exit as the host's VMM sees it, both world switches
//! included. `mmio-after-read` is the same after a read, which also writes
//! the value the host supplies into the guest's register. `hvc` is a guest
//! HVC that EL2 answers itself (`KVM_FEATURES`), guest to EL2 and back.
//!
//! Then (issue 14, sealed swap) `evict`: `VM_EVICT` of the second guest
//! page into a sealed page, and `restore`: `VM_RESTORE` of it into a fresh
//! page (the first round's `evict` also derives the VM's key).

use rampart_abi::host::{ExitReason, HostCall, VmConfig, mmio};

use super::{PAGE, ROUNDS, Scratch, Series, measure, per_op};
use crate::arch;
use crate::msg::Msg;
use crate::{ensure, msg};

/// Where the guest's RAM starts (its first page is the image).
pub(super) const GUEST_BASE: u64 = rampart_abi::guest::GUEST_RAM_BASE;
/// The guest's MMIO: QEMU virt's PL011, which the host emulates.
pub(super) const UART: u64 = 0x0900_0000;
/// Guest HVCs in the long run.
const HVCS: u64 = 16;
/// Metadata pages given to `VM_CREATE`.
pub(super) const METADATA_PAGES: u64 = 16;

/// The guest, hand-assembled (checked with `llvm-mc -triple=aarch64`); xtask
/// signs the same words for the protected VM.
pub(super) const GUEST: [u32; 15] = include!("guest_code.rs");
/// Guest RAM: the image page and one more (as xtask signs it).
pub const GUEST_PAGES: u64 = 2;
/// The name xtask signs this configuration under (`testhost.bench-signature=`).
pub const SIGNATURE_NAME: &str = "pvm";

/// The non-protected VM.
pub fn run_unprotected(scratch: &Scratch) -> Result<(), Msg> {
    run(scratch, false)
}

/// The protected VM.
pub fn run_protected(scratch: &Scratch) -> Result<(), Msg> {
    run(scratch, true)
}

/// One figure per row of the table in the module documentation, plus the
/// lifecycle calls.
#[derive(Clone, Copy)]
struct Figures {
    create: Series,
    vcpu_create: Series,
    donate_first: Series,
    donate: Series,
    first_entry: Series,
    mmio_after_write: Series,
    mmio_after_read: Series,
    hvc: Series,
    destroy: Series,
    evict: Series,
    restore: Series,
}

fn run(scratch: &Scratch, protected: bool) -> Result<(), Msg> {
    let tag = if protected { "pvm" } else { "vm" };
    let metadata = scratch.block(2);
    let image = scratch.block(3);
    let extra = image + PAGE;
    let mut f = Figures {
        create: Series::new(),
        vcpu_create: Series::new(),
        donate_first: Series::new(),
        donate: Series::new(),
        first_entry: Series::new(),
        mmio_after_write: Series::new(),
        mmio_after_read: Series::new(),
        hvc: Series::new(),
        destroy: Series::new(),
        evict: Series::new(),
        restore: Series::new(),
    };
    for round in 0..ROUNDS {
        one_vm(&mut f, protected, metadata, image, extra)
            .map_err(|m| msg!("round {round}: {m}"))?;
    }
    let name = |what: &str| msg!("{tag}/{what}");
    f.create.report(name("create").as_str());
    f.vcpu_create.report(name("vcpu-create").as_str());
    f.donate_first.report(name("donate-1p-first").as_str());
    f.donate.report(name("donate-1p").as_str());
    f.first_entry.report(name("first-entry").as_str());
    f.mmio_after_write.report(name("mmio-after-write").as_str());
    f.mmio_after_read.report(name("mmio-after-read").as_str());
    f.hvc.report(name("hvc").as_str());
    f.evict.report(name("evict").as_str());
    f.restore.report(name("restore").as_str());
    f.destroy.report(name("destroy").as_str());
    Ok(())
}

fn one_vm(f: &mut Figures, protected: bool, metadata: u64, image: u64, extra: u64) -> Result<(), Msg> {
    write_image(image, &GUEST);
    let config = VmConfig {
        debug: false,
        protected,
        max_vcpus: 1,
    }
    .encode();
    let (d, r) = measure(HostCall::VmCreate, &[metadata, METADATA_PAGES, config]);
    ensure!(r[0] == 0, "VM_CREATE returned {}", r[0] as i64);
    f.create.push(d);
    let handle = r[1];
    let signature = if protected { crate::platform::bench_signature(SIGNATURE_NAME) } else { None };
    if protected && signature.is_none() {
        return Err(msg!("no testhost.bench-signature= on the command line: xtask signs the bench guest"));
    }
    let result = drive(f, handle, image, extra, signature.as_ref());
    let (d, r) = measure(HostCall::VmDestroy, &[handle]);
    result?;
    ensure!(r[0] == 0, "VM_DESTROY returned {}", r[0] as i64);
    f.destroy.push(d);
    Ok(())
}

fn drive(f: &mut Figures, handle: u64, image: u64, extra: u64, signature: Option<&([u8; 32], [u8; 64])>) -> Result<(), Msg> {
    let (d, r) = measure(HostCall::VcpuCreate, &[handle, 0]);
    ensure!(r[0] == 0, "VCPU_CREATE returned {}", r[0] as i64);
    f.vcpu_create.push(d);
    let (d, r) = measure(HostCall::VmDonate, &[handle, image, 1, GUEST_BASE]);
    ensure!(r[0] == 0, "VM_DONATE of the image returned {}", r[0] as i64);
    f.donate_first.push(d);
    let (d, r) = measure(HostCall::VmDonate, &[handle, extra, 1, GUEST_BASE + PAGE]);
    ensure!(r[0] == 0, "VM_DONATE of a second page returned {}", r[0] as i64);
    f.donate.push(d);
    // x0 = the RAM size, as a signed manifest says (the guest ignores it).
    let r = super::measure(HostCall::VcpuSetRegs, &[handle, 0, GUEST_BASE, GUEST_PAGES * PAGE]).1;
    ensure!(r[0] == 0, "VCPU_SET_REGS returned {}", r[0] as i64);
    if let Some(signature) = signature {
        set_signature(handle, signature)?;
    }

    let run = |value: u64| measure(HostCall::VcpuRun, &[handle, 0, value]);
    let (d, r) = run(0);
    expect(&r, ExitReason::Wait as u64, 0, 0, "the first run")?;
    f.first_entry.push(d);
    let (_, r) = run(0);
    expect(&r, ExitReason::Mmio as u64, UART, 2 | mmio::WRITE, "after MMIO_GUARD_MAP")?;
    let (d, r) = run(0);
    expect(&r, ExitReason::Mmio as u64, UART + 8, 3, "resuming after a write")?;
    f.mmio_after_write.push(d);
    let (base, r) = run(0);
    expect(&r, ExitReason::Mmio as u64, UART, 2 | mmio::WRITE, "resuming a read with 0 HVCs")?;
    f.mmio_after_read.push(base);
    let (d, r) = run(0);
    expect(&r, ExitReason::Mmio as u64, UART + 8, 3, "resuming after a write")?;
    f.mmio_after_write.push(d);
    let (long, r) = run(HVCS);
    expect(&r, ExitReason::Mmio as u64, UART, 2 | mmio::WRITE, "after the HVCs")?;
    ensure!(
        (long.cycles - base.cycles) % HVCS == 0,
        "{HVCS} HVCs added {} instructions, not a multiple of {HVCS}",
        long.cycles - base.cycles
    );
    f.hvc.push(per_op(long, base, HVCS));
    // Sealed swap (issue 14): the second guest page out into a sealed page
    // and back into a fresh one (both single pages of block 0).
    let (sealed, fresh) = (scratch_page(image, 0), scratch_page(image, 1));
    let (d, r) = measure(HostCall::VmEvict, &[handle, GUEST_BASE + PAGE, sealed]);
    ensure!(r[0] == 0, "VM_EVICT returned {}", r[0] as i64);
    f.evict.push(d);
    let (d, r) = measure(HostCall::VmRestore, &[handle, GUEST_BASE + PAGE, sealed, fresh, r[1], r[2], r[3]]);
    ensure!(r[0] == 0, "VM_RESTORE returned {}", r[0] as i64);
    f.restore.push(d);
    Ok(())
}

/// Single page `n` of scratch block 0, found from the guest image's block
/// (block 3): the blocks are consecutive 2 MiB blocks.
fn scratch_page(image: u64, n: u64) -> u64 {
    image - 3 * (2 << 20) + n * PAGE
}

/// Writes a hand-assembled guest at `image` (RAM the test host owns).
pub(super) fn write_image(image: u64, words: &[u32]) {
    for (i, pair) in words.chunks(2).enumerate() {
        let low = u64::from(pair[0]);
        let high = u64::from(pair.get(1).copied().unwrap_or(0));
        arch::ram_write(image + 8 * i as u64, low | (high << 32));
    }
}

/// `VM_SET_SIGNATURE` with a signer and signature from xtask.
pub(super) fn set_signature(handle: u64, (signer, signature): &([u8; 32], [u8; 64])) -> Result<(), Msg> {
    let mut args = [0u64; 13];
    args[0] = handle;
    for (i, chunk) in signer.chunks(8).enumerate() {
        args[1 + i] = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    for (i, chunk) in signature.chunks(8).enumerate() {
        args[5 + i] = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
    }
    let r = measure(HostCall::VmSetSignature, &args).1;
    ensure!(r[0] == 0, "VM_SET_SIGNATURE returned {}", r[0] as i64);
    Ok(())
}

/// Checks a `VCPU_RUN` result: `x0` = SUCCESS, the exit reason, and for an
/// MMIO exit its address and flags.
pub(super) fn expect(r: &[u64; 18], reason: u64, address: u64, flags: u64, when: &str) -> Result<(), Msg> {
    ensure!(r[0] == 0, "{when}: VCPU_RUN returned {}", r[0] as i64);
    let mmio_ok = reason != ExitReason::Mmio as u64 || (r[2] == address && r[3] == flags);
    ensure!(
        r[1] == reason && mmio_ok,
        "{when}: expected exit {reason} ({address:#x}, flags {flags:#x}), got exit {} ({:#x}, flags {:#x}, value {:#x})",
        r[1],
        r[2],
        r[3],
        r[4]
    );
    Ok(())
}
