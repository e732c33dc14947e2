//! Hostile DMA (issue 10): the host points a bus master, QEMU's `edu`
//! device (`crate::edu`), at memory it may not touch. Stage 2 stops only
//! the CPU; these checks pass only if every host DMA goes through an IOMMU
//! that follows the host's stage 2 (Rampart's SMMU).
//!
//! The device's 4 KiB buffer is readable only by DMA, so every read attack
//! has three transfers: a host page with a known pattern into the buffer,
//! the target into the buffer (the attack), the buffer into another host
//! page. A blocked read leaves the buffer as it was, or fills it with zeros
//! (QEMU returns zeros for a read its IOMMU aborted); anything else is data
//! the host must not have. Each target is chosen so its real content is
//! not all zero: the start of the carve-out is Rampart's image (its header,
//! then the EL2 vectors, `hyp/linker.ld`, then its code), a guest's first
//! pages are its image, whose bytes the test host knows, and so is the
//! page the `share` guest unshares (it holds the answer the device wrote).
//! The device used each guest page while it was still the host's or
//! shared, so a translation the SMMU cached then must have been
//! invalidated when the host lost the page.
//!
//! Write attacks are judged by their effect: a protected VM whose image
//! was written before its first run would be refused (`BAD_SIGNATURE`:
//! the measurement would differ); one whose image or metadata was written
//! after its first run would not run to `GUEST-DONE`; and a write over the
//! carve-out's first pages (the EL2 vectors) would take the next host call
//! down. Later checks (`pool-*`, `ram-rw`) run after these.
//!
//! Without an `edu` device every check says `dma: skipped` and passes; the
//! xtask case `testhost/dma-attack` adds the device and fails on that line.

use rampart_abi::guest::test_protocol::{
    RELINQUISHED, SHARE_PING, SHARE_PONG, SHARED, UNSHARED, share_ping_byte, share_pong_byte,
};
use rampart_abi::host::HostCall;

use super::vm::{arena, protected, run_and_destroy};
use super::vmm::run::{Plain, Policy, error_name};
use super::vmm::{self, Arena, PAGE, Vm, call};
use crate::arch;
use crate::edu::{Edu, MAX_TRANSFER};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::{ensure, fail, msg, note};

/// What a check prints when there is no `edu` device; `xtask/src/suite.rs`
/// (`DMA_SKIPPED`) fails the DMA case on it.
pub const SKIPPED: &str = "dma: skipped";

/// Bytes each attack moves (one transfer).
const CHUNK: u64 = MAX_TRANSFER;
/// Pattern the device buffer holds before a read attack.
const BUFFER_SEED: u64 = 0xb0ff_e200_0000_0000;
/// Pattern a readback page holds before the buffer is written over it.
const READBACK_SEED: u64 = 0x4ead_bac0_0000_0000;
/// What the write attacks on hypervisor memory write: `UDF #0xdead`.
const UDF_WORDS: u64 = 0x0000_dead_0000_dead;
/// What the write attacks on a guest's image write: `B .+64MiB`, a branch
/// out of the guest's RAM from wherever it runs next, so a guest whose
/// image was overwritten leaves the run with memory-fault exits instead of
/// spinning in its own exception vectors without an exit.
const BRANCH_OUT_WORDS: u64 = 0x1500_0000_1500_0000;

/// The word at byte `offset` of a pattern (never zero: the seeds have
/// high bits set).
fn pattern(seed: u64, offset: u64) -> u64 {
    seed ^ offset
}

/// Writes pattern `seed` over `len` bytes at `at` (host RAM).
fn fill(at: u64, len: u64, seed: u64) {
    for offset in (0..len).step_by(8) {
        arch::ram_write(at + offset, pattern(seed, offset));
    }
}

/// The device, or `None` after saying the check is skipped.
fn device(p: &Platform) -> Result<Option<Edu>, Msg> {
    let edu = Edu::probe(p)?;
    if edu.is_none() {
        note!(
            "{SKIPPED}: no QEMU edu device ({:04x}:{:04x}) on the first PCI bus (`cargo xtask test --only testhost/dma-attack` adds one)",
            crate::edu::VENDOR,
            crate::edu::DEVICE
        );
    }
    Ok(edu)
}

/// Host pages the DMA checks stage data in.
struct Staging {
    /// Holds what is loaded into the device's buffer.
    source: u64,
    /// Receives the device's buffer.
    readback: u64,
}

impl Staging {
    fn new(arena: &mut Arena) -> Result<Self, Msg> {
        Ok(Self {
            source: arena.take(1)?,
            readback: arena.take(1)?,
        })
    }

    /// Fills the device's buffer (first `CHUNK` bytes) with pattern `seed`.
    fn load(&self, edu: &Edu, seed: u64) -> Result<(), Msg> {
        fill(self.source, CHUNK, seed);
        edu.ram_to_device(self.source, 0, CHUNK)?;
        Ok(())
    }

    /// Copies the device's buffer into the readback page and says what it
    /// holds.
    fn read_buffer(&self, edu: &Edu) -> Result<Buffer, Msg> {
        fill(self.readback, CHUNK, READBACK_SEED);
        edu.device_to_ram(0, self.readback, CHUNK)?;
        let word = |offset: u64| arch::ram_read(self.readback + offset);
        let words = || (0..CHUNK).step_by(8);
        if words().all(|o| word(o) == pattern(READBACK_SEED, o)) {
            fail!(
                "the device's buffer never reached host page {:#x}: DMA to host RAM is broken",
                self.readback
            );
        }
        if words().all(|o| word(o) == pattern(BUFFER_SEED, o)) {
            return Ok(Buffer::Kept);
        }
        if words().all(|o| word(o) == 0) {
            return Ok(Buffer::Zeroed);
        }
        let first = words()
            .find(|&o| word(o) != pattern(BUFFER_SEED, o) && word(o) != 0)
            .unwrap_or(0);
        Ok(Buffer::Changed {
            offset: first,
            words: [word(first), word((first + 8) % CHUNK)],
        })
    }

    /// The read attack on `target`: the buffer must come back as it was or
    /// zeroed. `known`, if given, is the target's real content (words):
    /// a match says so in the failure.
    fn read_attack(
        &self,
        edu: &Edu,
        target: u64,
        what: &str,
        known: Option<&[u64]>,
    ) -> Result<Buffer, Msg> {
        self.load(edu, BUFFER_SEED)?;
        let ms = edu.ram_to_device(target, 0, CHUNK)?;
        let buffer = self.read_buffer(edu)?;
        match buffer {
            Buffer::Kept => note!("{what} {target:#x}: the buffer kept its pattern ({ms} ms)"),
            Buffer::Zeroed => {
                note!("{what} {target:#x}: the buffer reads zero, not the target's data ({ms} ms)")
            }
            Buffer::Changed { offset, words } => {
                let same = known.is_some_and(|known| {
                    known
                        .iter()
                        .enumerate()
                        .all(|(i, &w)| arch::ram_read(self.readback + 8 * i as u64) == w)
                });
                fail!(
                    "DMA read {CHUNK} bytes of {what} at {target:#x} into the device: +{offset:#x} holds {:#018x} {:#018x}{}",
                    words[0],
                    words[1],
                    if same {
                        ", exactly the target's content"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(buffer)
    }
}

/// What the device's buffer held after a read attack.
#[derive(Clone, Copy)]
enum Buffer {
    /// Its pattern, untouched.
    Kept,
    /// All zero (an aborted read).
    Zeroed,
    /// Something else: the first word that differs from the pattern and is
    /// not zero, and the next one.
    Changed { offset: u64, words: [u64; 2] },
}

/// `dma-host-to-host`: the device moves 4 KiB between two host pages
/// through its buffer, both halves, and the data arrives intact (DMA the
/// host may do works through the SMMU).
pub fn dma_host_to_host(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let (mut arena, _) = arena(p)?;
    let (from, to) = (arena.take(1)?, arena.take(1)?);
    const FROM: u64 = 0x0f00_d000_0000_0000;
    const TO: u64 = 0x7000_0000_0000_0000;
    fill(from, PAGE, FROM);
    fill(to, PAGE, TO);
    let mut ms = 0;
    for half in [0, CHUNK] {
        ms += edu.ram_to_device(from + half, 0, CHUNK)?;
        ms += edu.device_to_ram(0, to + half, CHUNK)?;
    }
    for offset in (0..PAGE).step_by(8) {
        let got = arch::ram_read(to + offset);
        ensure!(
            got == pattern(FROM, offset),
            "{:#x}: {got:#x} after copying {from:#x} to {to:#x} by DMA, expected {:#x}{}",
            to + offset,
            pattern(FROM, offset),
            if got == pattern(TO, offset) {
                " (not written: is the device's dma_mask wide enough for RAM above 256 MiB?)"
            } else {
                ""
            }
        );
        ensure!(
            arch::ram_read(from + offset) == pattern(FROM, offset),
            "the source page changed at +{offset:#x}"
        );
    }
    note!(
        "edu at {} (BAR 0 at PCI {:#x}, CPU {:#x}, {} KiB): {from:#x} -> buffer -> {to:#x}, 4 KiB in 4 transfers, {ms} ms",
        edu.address,
        edu.bar.pci,
        edu.bar.cpu,
        edu.bar.size >> 10
    );
    Ok(())
}

/// Where in the carve-out Rampart's code surely is: its `.text` is over
/// 256 KiB.
const CODE_OFFSET: u64 = 128 << 10;

/// `dma-read-carveout`: the device reads the carve-out's first page
/// (Rampart's image header and EL2 vectors), a page of its code, a page in
/// its middle and its last page; none of it reaches the device's buffer.
pub fn dma_read_carveout(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let (mut arena, layout) = arena(p)?;
    let staging = Staging::new(&mut arena)?;
    let carveout = layout.carveout;
    let middle = (carveout.start + carveout.size() / 2) & !(PAGE - 1);
    let mut first_error = None;
    for (target, what) in [
        (carveout.start, "the carve-out (Rampart's image header)"),
        (carveout.start + CHUNK, "the carve-out (EL2 vectors)"),
        (
            carveout.start + CODE_OFFSET,
            "the carve-out (Rampart's code)",
        ),
        (middle, "the middle of the carve-out"),
        (carveout.end - PAGE, "the carve-out's last page"),
    ] {
        // Every target is tried, so a failure shows them all.
        if let Err(e) = staging.read_attack(&edu, target, what, None) {
            note!("{e}");
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(())
}

/// The guest image's words at `offset`, `CHUNK` bytes.
fn image_words(name: &str, offset: u64) -> Result<[u64; (CHUNK / 8) as usize], Msg> {
    let image = vmm::image(name)?;
    let mut words = [0u64; (CHUNK / 8) as usize];
    for (i, word) in words.iter_mut().enumerate() {
        let at = offset as usize + 8 * i;
        let mut bytes = [0u8; 8];
        if let Some(chunk) = image.get(at..(at + 8).min(image.len())) {
            bytes[..chunk.len()].copy_from_slice(chunk);
        }
        *word = u64::from_le_bytes(bytes);
    }
    Ok(words)
}

/// Runs vCPU 0 of a fresh VM until its first exit (the measurement is
/// taken and the signature checked then); the guest's first console byte
/// is left unanswered, and the run continues later.
fn first_run(vm: &Vm) -> Result<(), Msg> {
    let r = call(HostCall::VcpuRun, &[vm.handle, 0, 0]);
    let code = r[0] as i64;
    ensure!(
        code == 0,
        "{}: first VCPU_RUN = {code} ({})",
        vm.name,
        error_name(code)
    );
    Ok(())
}

/// A protected VM of `guest` whose RAM and metadata pages the device has
/// just read and written while they were still the host's, so that any
/// translation the SMMU cached for them is stale once they are donated:
/// `VM_CREATE` and `VM_DONATE` must have invalidated it. (A first VM is
/// made and destroyed to learn where the VMM puts the pages; the second,
/// made the same way from the same scratch area, gets the same ones.)
fn vm_after_dma(p: &Platform, edu: &Edu, guest: &'static str) -> Result<(Staging, Vm), Msg> {
    let spec = protected(guest)?;
    let (mut first, _) = arena(p)?;
    let _ = Staging::new(&mut first)?;
    let mut vm = Vm::create(&mut first, spec)?;
    let (ram, metadata) = (vm.ram, vm.metadata);
    vm.destroy()?;
    for page in [ram.start, ram.start + 2 * PAGE, metadata.start] {
        edu.ram_to_device(page, 0, CHUNK)?;
        edu.device_to_ram(0, page, CHUNK)?;
    }
    let (mut arena, _) = arena(p)?;
    let staging = Staging::new(&mut arena)?;
    let vm = Vm::create(&mut arena, spec)?;
    ensure!(
        vm.ram == ram && vm.metadata == metadata,
        "the second VM's pages ({} and {}) are not the first's ({ram} and {metadata})",
        vm.ram,
        vm.metadata
    );
    Ok((staging, vm))
}

/// `dma-read-guest`: the device reads two pages of a protected VM's image
/// (the first, and the one at 8 KiB), which it had read while they were
/// the host's, after `VM_DONATE` and again after the VM's first run; none
/// of it reaches the device's buffer, and the guest then runs to
/// `GUEST-DONE`. After `VM_DESTROY` the device reaches the pages again.
pub fn dma_read_guest(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let (staging, vm) = vm_after_dma(p, &edu, "hello")?;
    let attacks = |when: &str| -> Result<(), Msg> {
        for offset in [0, 2 * PAGE] {
            let known = image_words(vm.name, offset)?;
            let what = msg!("the protected VM's image +{offset:#x} ({when})");
            staging.read_attack(&edu, vm.ram.start + offset, what.as_str(), Some(&known))?;
        }
        Ok(())
    };
    let steps = || -> Result<(), Msg> {
        attacks("donated")?;
        first_run(&vm)?;
        attacks("after its first run")
    };
    let result = steps();
    let mut vms = [vm];
    if let Err(e) = result {
        let _ = vms[0].destroy();
        return Err(e);
    }
    let ram = vms[0].ram;
    run_and_destroy(p, &mut vms, &[&[0]], &mut Plain, 8_000)?;
    // The pages are the host's again, and so the device's: it writes the
    // first one (the SMMU maps reclaimed pages back).
    const RETURNED: u64 = 0x2e70_0000_0000_0000;
    fill(staging.source, CHUNK, RETURNED);
    edu.ram_to_device(staging.source, 0, CHUNK)?;
    edu.device_to_ram(0, ram.start, CHUNK)?;
    let arrived = (0..CHUNK)
        .step_by(8)
        .all(|o| arch::ram_read(ram.start + o) == pattern(RETURNED, o));
    arch::ram_zero(ram.start, ram.start + CHUNK);
    ensure!(
        arrived,
        "after VM_DESTROY the device could not write {:#x}, a page the host owns again",
        ram.start
    );
    note!("hello ran on to GUEST-DONE; after VM_DESTROY the device writes its pages again");
    Ok(())
}

/// Word `offset / 8` of the share guest's page as it shares it (`ping`)
/// or as the host answers (`pong`): `README` of `guest/`, "share".
fn share_word(offset: u64, pong: bool) -> u64 {
    let head = if pong { SHARE_PONG } else { SHARE_PING }.to_le_bytes();
    let bytes: [u8; 8] = core::array::from_fn(|k| {
        let at = offset as usize + k;
        match head.get(at) {
            Some(&b) => b,
            None if pong => share_pong_byte(at),
            None => share_ping_byte(at),
        }
    });
    u64::from_le_bytes(bytes)
}

/// The host page behind the guest address at the end of `text`, if the
/// line starts with `prefix`.
fn shared_page(vm: &Vm, text: &str, prefix: &str) -> Result<Option<u64>, Msg> {
    let Some(rest) = text.strip_prefix(prefix) else {
        return Ok(None);
    };
    let ipa = rest
        .trim()
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| msg!("`{text}`: no guest address"))?;
    vm.host_address(ipa)
        .filter(|a| a.is_multiple_of(PAGE))
        .map(Some)
        .ok_or_else(|| msg!("`{text}`: not a page of the guest's RAM"))
}

/// The `share` guest's protocol, answered by DMA.
struct DmaShare<'a> {
    edu: &'a Edu,
    staging: &'a Staging,
    shared: bool,
    unshared: bool,
    relinquished: bool,
}

impl Policy for DmaShare<'_> {
    fn line(&mut self, vms: &mut [Vm], vm: usize, text: &str) -> Result<(), Msg> {
        let (edu, staging) = (self.edu, self.staging);
        let vm = &vms[vm];
        if let Some(host) = shared_page(vm, text, SHARED)?.filter(|_| !self.shared) {
            // Shared: the device reads the guest's ping, and writes the
            // host's answer (its second half first, the head last).
            edu.ram_to_device(host, 0, CHUNK)?;
            edu.device_to_ram(0, staging.readback, CHUNK)?;
            if let Some(offset) = (0..CHUNK)
                .step_by(8)
                .find(|&o| arch::ram_read(staging.readback + o) != share_word(o, false))
            {
                fail!(
                    "the device read {:#x} at +{offset:#x} of the page the guest shared ({host:#x}), expected {:#x}",
                    arch::ram_read(staging.readback + offset),
                    share_word(offset, false)
                );
            }
            for offset in (0..PAGE).step_by(8) {
                arch::ram_write(staging.source + offset, share_word(offset, true));
            }
            for half in [CHUNK, 0] {
                edu.ram_to_device(staging.source + half, 0, CHUNK)?;
                edu.device_to_ram(0, host + half, CHUNK)?;
            }
            self.shared = true;
        } else if let Some(host) = shared_page(vm, text, UNSHARED)?.filter(|_| !self.unshared) {
            // The guest's again, holding the host's answer: out of reach.
            let known: [u64; (CHUNK / 8) as usize] =
                core::array::from_fn(|i| share_word(8 * i as u64, true));
            staging.read_attack(edu, host, "the page the guest unshared", Some(&known))?;
            self.unshared = true;
        } else if let Some(host) =
            shared_page(vm, text, RELINQUISHED)?.filter(|_| !self.relinquished)
        {
            // The host's again, zeroed: the device writes it.
            const BACK: u64 = 0x4e1e_0000_0000_0000;
            fill(staging.source, CHUNK, BACK);
            edu.ram_to_device(staging.source, 0, CHUNK)?;
            edu.device_to_ram(0, host, CHUNK)?;
            let arrived = (0..CHUNK)
                .step_by(8)
                .all(|o| arch::ram_read(host + o) == pattern(BACK, o));
            arch::ram_zero(host, host + CHUNK);
            ensure!(
                arrived,
                "the device could not write the page the guest relinquished ({host:#x})"
            );
            self.relinquished = true;
        }
        Ok(())
    }
}

/// `dma-guest-share`: the `share` guest's ping/pong done by the device: it
/// reads the page the guest shared and writes the host's answer there
/// (the guest checks it); once the guest unshares the page, the device's
/// read of it (the answer it wrote itself, known) is blocked; the page the
/// guest relinquishes is the device's to write again. The guest's
/// `MEM_UNSHARE` changes the host stage 2 from the guest's side, right
/// after the device used the page.
pub fn dma_guest_share(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let (mut arena, _) = arena(p)?;
    let staging = Staging::new(&mut arena)?;
    let mut vms = [Vm::create(&mut arena, protected("share")?)?];
    let mut policy = DmaShare {
        edu: &edu,
        staging: &staging,
        shared: false,
        unshared: false,
        relinquished: false,
    };
    run_and_destroy(p, &mut vms, &[&[0]], &mut policy, 10_000)?;
    ensure!(policy.shared, "the guest never printed {}", SHARED.trim());
    ensure!(
        policy.unshared,
        "the guest never printed {}",
        UNSHARED.trim()
    );
    ensure!(
        policy.relinquished,
        "the guest never printed {}",
        RELINQUISHED.trim()
    );
    note!(
        "ping read and pong written by the device; the unshared page out of its reach; the relinquished page in it again"
    );
    Ok(())
}

/// Writes `word`s from the device over `[start, start + len)`, `CHUNK`
/// bytes at a time (the buffer is loaded once). Returns the transfers made.
fn write_attack(edu: &Edu, staging: &Staging, start: u64, len: u64, word: u64) -> Result<u64, Msg> {
    for offset in (0..CHUNK).step_by(8) {
        arch::ram_write(staging.source + offset, word);
    }
    edu.ram_to_device(staging.source, 0, CHUNK)?;
    let mut transfers = 0;
    for at in (start..start + len).step_by(CHUNK as usize) {
        edu.device_to_ram(0, at, CHUNK.min(start + len - at))?;
        transfers += 1;
    }
    Ok(transfers)
}

/// The guest's image rounded up to whole transfers.
fn image_span(name: &str) -> Result<u64, Msg> {
    Ok((vmm::image(name)?.len() as u64).next_multiple_of(CHUNK))
}

/// `dma-write-guest`: the device writes branches out of RAM over a protected VM's
/// whole measured image (pages it had written while they were the host's),
/// once after `VM_DONATE` and `VM_SET_SIGNATURE` (before its first run: the
/// run would be refused, `BAD_SIGNATURE`, had a byte changed) and once
/// after its first run (the guest would fault at its next instruction).
/// Both guests run to `GUEST-DONE`.
pub fn dma_write_guest(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let span = image_span("hello")?;

    let (staging, vm) = vm_after_dma(p, &edu, "hello")?;
    let before = write_attack(&edu, &staging, vm.ram.start, span, BRANCH_OUT_WORDS);
    let mut vms = [vm];
    if let Err(e) = before {
        let _ = vms[0].destroy();
        return Err(e);
    }
    run_and_destroy(p, &mut vms, &[&[0]], &mut Plain, 8_000)
        .map_err(|e| msg!("after DMA writes over its image before its first run: {e}"))?;

    let (staging, vm) = vm_after_dma(p, &edu, "hello")?;
    let after = first_run(&vm)
        .and_then(|()| write_attack(&edu, &staging, vm.ram.start, span, BRANCH_OUT_WORDS));
    let mut vms = [vm];
    let transfers = match after {
        Ok(n) => n,
        Err(e) => {
            let _ = vms[0].destroy();
            return Err(e);
        }
    };
    run_and_destroy(p, &mut vms, &[&[0]], &mut Plain, 8_000)
        .map_err(|e| msg!("after DMA writes over its image after its first run: {e}"))?;
    note!(
        "{span} bytes of hello's image written by DMA before its first run and after it ({transfers} transfers each): both ran to GUEST-DONE"
    );
    Ok(())
}

/// `dma-write-metadata`: after a protected VM's first run, the device
/// writes `UDF` words over the metadata pages the host donated at
/// `VM_CREATE` (the VM and vCPU records whole, the first half of each
/// initial stage-2 page); the guest runs on to `GUEST-DONE` and the pages
/// come back zeroed at `VM_DESTROY`.
pub fn dma_write_metadata(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let (staging, vm) = vm_after_dma(p, &edu, "hello")?;
    let records = 1 + vm.vcpus;
    let initial = rampart_abi::host::VmConfig {
        debug: false,
        protected: true,
        max_vcpus: vm.vcpus,
    }
    .min_metadata_pages();
    let attack = || -> Result<u64, Msg> {
        first_run(&vm)?;
        let mut transfers =
            write_attack(&edu, &staging, vm.metadata.start, records * PAGE, UDF_WORDS)?;
        for page in records..initial.min(vm.metadata.size() / PAGE) {
            transfers += write_attack(
                &edu,
                &staging,
                vm.metadata.start + page * PAGE,
                CHUNK,
                UDF_WORDS,
            )?;
        }
        Ok(transfers)
    };
    let result = attack();
    let mut vms = [vm];
    let transfers = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = vms[0].destroy();
            return Err(e);
        }
    };
    run_and_destroy(p, &mut vms, &[&[0]], &mut Plain, 8_000)
        .map_err(|e| msg!("after DMA writes over its metadata: {e}"))?;
    note!(
        "{transfers} DMA writes over {initial} metadata pages of a running protected VM: it ran on to GUEST-DONE, its pages came back zeroed"
    );
    Ok(())
}

/// `dma-write-carveout`: the device writes `UDF` words over the carve-out's
/// last page, a page in its middle, and last its first 8 KiB (Rampart's
/// image header and EL2 vector tables); the hypervisor then still answers
/// `RAMPART_HOST_VERSION` and runs a protected VM to `GUEST-DONE`.
pub fn dma_write_carveout(p: &Platform) -> Result<(), Msg> {
    let Some(edu) = device(p)? else { return Ok(()) };
    let (mut arena, layout) = arena(p)?;
    let staging = Staging::new(&mut arena)?;
    let carveout = layout.carveout;
    let middle = (carveout.start + carveout.size() / 2) & !(PAGE - 1);
    let mut transfers = 0;
    for (start, len) in [
        (carveout.end - PAGE, PAGE),
        (middle, PAGE),
        (carveout.start, 2 * PAGE),
    ] {
        transfers += write_attack(&edu, &staging, start, len, UDF_WORDS)?;
    }
    // If the writes landed, this call is where the run stops: say so first.
    note!("{transfers} DMA writes over the carve-out made; now RAMPART_HOST_VERSION");
    let r = call(HostCall::Version, &[]);
    ensure!(
        r[0] == 0,
        "RAMPART_HOST_VERSION after the DMA writes = {}",
        r[0] as i64
    );
    let mut vms = [Vm::create(&mut arena, protected("hello")?)?];
    run_and_destroy(p, &mut vms, &[&[0]], &mut Plain, 8_000)
        .map_err(|e| msg!("after DMA writes over the carve-out: {e}"))?;
    note!(
        "{transfers} DMA writes over the carve-out (first 8 KiB, middle, last page): RAMPART_HOST_VERSION answered, hello ran to GUEST-DONE"
    );
    Ok(())
}
