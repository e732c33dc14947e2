//! A small VMM: the test host creates VMs (protected or not), loads the
//! test guests (`guest/`) into its own pages, donates them, runs the vCPUs
//! and emulates the guests' console, then destroys the VMs and checks that
//! every page a guest owned comes back zeroed.
//!
//! - [`Vm`]: `VM_CREATE` with metadata from a scratch [`Arena`], the image
//!   loaded (over zeroes for a protected VM, exactly as its bundle was
//!   measured; over a host pattern otherwise) and `VM_DONATE`d at
//!   `GUEST_RAM_BASE` (`x0` = RAM size), `VCPU_CREATE` for each vCPU,
//!   `VM_SET_SIGNATURE` with the signer and signature of the guest's
//!   bundle, and [`Vm::destroy`].
//! - Signed bundles: every guest is embedded with the bundle `cargo xtask`
//!   signed it into, whose manifest (memory size, vCPUs) is how the VMM
//!   runs it ([`Spec::signed`]).
//! - [`run`]: the `VCPU_RUN` loops, on the boot CPU and on secondaries
//!   (one vCPU lane per physical CPU, interleaved when there are fewer), the
//!   console emulation and the guests' `GUEST-*` result lines.
//! - [`gic`]: the host's GIC set-up that lets a guest's virtual timer
//!   interrupt reach the hypervisor while the guest runs.
//! - [`hw`]: 32-bit MMIO, GIC system registers and an instruction-fetch
//!   probe.

pub mod gic;
pub mod hw;
pub mod run;

mod images {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{HostCall, VmConfig};

use crate::arch;
use crate::msg::Msg;
use crate::psci::{self, Conduit};
use crate::ranges::Range;
use crate::{ensure, fail, msg};

/// Guests the VMM creates as realm VMs (`VM_CREATE` config bit 2, guest
/// ABI RSI) when protected.
pub const REALM_GUESTS: [&str; 1] = ["realm"];

/// issue 12, `realm-measured`: which protected VMs are created as realms:
/// 0 = the [`REALM_GUESTS`], 1 = none, 2 = every one.
pub static REALM_OVERRIDE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Page size of every call.
pub const PAGE: u64 = rampart_abi::host::PAGE_SIZE;
/// Stage-2 table pages a VM gets beyond the minimum.
const EXTRA_STAGE2_PAGES: u64 = 24;

/// issue 16: when not 0, [`Vm::create`] fills this many pages at the end
/// of a VM's RAM with [`ZEROED_TAIL_GARBAGE`] and gives them with
/// `VM_DONATE_ZEROED` (at most all pages after the image's).
pub static ZEROED_TAIL_PAGES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// issue 16: of the [`ZEROED_TAIL_PAGES`], how many at the very end
/// [`Vm::create`] does not give at all (they stay the host's, garbage
/// filled, for a check to give later at the same guest address).
pub static ZEROED_TAIL_SKIP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// What the host writes into those pages (`arch::ram_fill`'s seed).
pub const ZEROED_TAIL_GARBAGE: u64 = 0x6a7b_a6e0_0d0e_a7c0;
/// Pages the VMM may add to a VM after it starts (memory faults).
pub const MAX_EXTRA_PAGES: usize = 8;

fn embedded(name: &str) -> Result<&'static (&'static str, &'static [u8], &'static [u8]), Msg> {
    if images::GUESTS.is_empty() {
        fail!(
            "built without guests: RAMPART_GUEST_DIR was not set when the test host was built (build it with `cargo xtask`)"
        );
    }
    images::GUESTS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| msg!("guest {name} is not embedded (guests from {})", images::GUEST_SOURCE))
}

/// The flat binary of guest `name`.
pub fn image(name: &str) -> Result<&'static [u8], Msg> {
    Ok(embedded(name)?.1)
}

/// Bundle offsets (`docs/formats.md`, `rampart_attest::offset`).
mod offset {
    pub const FLAGS: usize = 12;
    pub const VCPUS: usize = 16;
    pub const MEMORY_SIZE: usize = 24;
    pub const ENTRY_OFFSET: usize = 32;
    pub const MEASUREMENT: usize = 48;
    pub const SIGNER: usize = 80;
    pub const SIGNATURE: usize = 112;
    pub const IMAGE: usize = 176;
}

/// What a guest's bundle says: the manifest it was signed for, its
/// measurement, the signer and the signature.
#[derive(Clone, Copy)]
pub struct Signed {
    /// Bundle flags: bit 0 protected, bit 1 debug.
    pub flags: u32,
    /// vCPUs.
    pub vcpus: u64,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Entry offset into the image.
    pub entry: u64,
    /// The measurement the signer computed.
    pub measurement: [u8; 32],
    /// The signer's public key.
    pub signer: [u8; 32],
    /// The signature over the measurement.
    pub signature: [u8; 64],
}

fn parse_bundle(bytes: &[u8]) -> Option<Signed> {
    if bytes.len() < offset::IMAGE || &bytes[..8] != b"RAMPART\0" {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
    let dword = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let mut signed = Signed {
        flags: word(offset::FLAGS),
        vcpus: u64::from(word(offset::VCPUS)),
        memory: dword(offset::MEMORY_SIZE),
        entry: dword(offset::ENTRY_OFFSET),
        measurement: [0; 32],
        signer: [0; 32],
        signature: [0; 64],
    };
    signed.measurement.copy_from_slice(&bytes[offset::MEASUREMENT..offset::SIGNER]);
    signed.signer.copy_from_slice(&bytes[offset::SIGNER..offset::SIGNATURE]);
    signed.signature.copy_from_slice(&bytes[offset::SIGNATURE..offset::IMAGE]);
    Some(signed)
}

/// The bundle guest `name` was signed into.
pub fn bundle(name: &str) -> Result<Signed, Msg> {
    let (_, _, bytes) = embedded(name)?;
    parse_bundle(bytes).ok_or_else(|| {
        msg!("guest {name} has no signed bundle (guests from {}; build with `cargo xtask`)", images::GUEST_SOURCE)
    })
}

/// The `hello` guest's bundle signed by a key the hypervisor does not
/// trust.
pub fn untrusted_hello() -> Result<Signed, Msg> {
    parse_bundle(images::UNTRUSTED_HELLO)
        .ok_or_else(|| msg!("no hello.untrusted.bundle was embedded (build with `cargo xtask`)"))
}

/// A host call; returns `x0`..`x17`. Every result is checked for the
/// secrets of `testhost.secrets=` (see `vb-no-leaks`).
pub fn call(call: HostCall, args: &[u64]) -> [u64; 18] {
    let r = psci::call_via(Conduit::Hvc, call.id(), args);
    crate::secrets::scan_registers(&r);
    r
}

/// `VM_SET_SIGNATURE(handle, signer, signature)`: `x0`.
pub fn set_signature(handle: u64, signer: &[u8; 32], signature: &[u8; 64]) -> i64 {
    let mut args = [0u64; 13];
    args[0] = handle;
    args[1..5].copy_from_slice(&rampart_abi::host::bytes_to_words::<4>(signer));
    args[5..13].copy_from_slice(&rampart_abi::host::bytes_to_words::<8>(signature));
    code(HostCall::VmSetSignature, &args)
}

/// A host call's `x0` as a signed code.
pub fn code(call_: HostCall, args: &[u64]) -> i64 {
    call(call_, args)[0] as i64
}

/// A call's name without `RAMPART_HOST_`.
pub fn short(call: HostCall) -> &'static str {
    call.name().strip_prefix("RAMPART_HOST_").unwrap_or(call.name())
}

/// Pages handed out in order from a scratch range the host owns.
pub struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    /// Hands out pages of `range` (page-aligned).
    pub fn new(range: Range) -> Self {
        Self {
            next: range.start.next_multiple_of(PAGE),
            end: range.end & !(PAGE - 1),
        }
    }

    /// `pages` fresh pages.
    pub fn take(&mut self, pages: u64) -> Result<u64, Msg> {
        let start = self.next;
        ensure!(
            start + pages * PAGE <= self.end,
            "scratch exhausted: {pages} pages wanted at {start:#x}, end {:#x}",
            self.end
        );
        self.next += pages * PAGE;
        Ok(start)
    }

    /// Skips to the next multiple of `align` bytes.
    pub fn align(&mut self, align: u64) {
        self.next = self.next.next_multiple_of(align);
    }
}

/// What to create.
#[derive(Clone, Copy)]
pub struct Spec {
    /// Guest name (an embedded image).
    pub guest: &'static str,
    /// A protected VM.
    pub protected: bool,
    /// vCPUs (all created; vCPU 0 runs first).
    pub vcpus: u64,
    /// Guest RAM in bytes (a multiple of the page size).
    pub ram: u64,
    /// Seed of the host pattern written over the RAM of a VM that is not
    /// protected before the image, so that zeroing at teardown shows (a
    /// protected VM's RAM beyond its image is zero, as it was measured).
    pub seed: u64,
    /// Whether to give the bundle's signature with `VM_SET_SIGNATURE`
    /// (protected VMs only).
    pub sign: bool,
    /// A debug VM (`VM_CREATE` config bit 1).
    pub debug: bool,
    /// Flip the low bit of this byte of the image after loading it (a
    /// tampered image).
    pub tamper: Option<u64>,
}

impl Spec {
    /// Guest `name` in a protected VM, exactly as its bundle's manifest
    /// says, signed.
    pub fn signed(name: &'static str) -> Result<Spec, Msg> {
        let b = bundle(name)?;
        // Flags 1 (protected), or 5 (protected realm) for a realm guest.
        let realm = REALM_GUESTS.contains(&name);
        ensure!(
            b.entry == 0 && b.flags == if realm { 5 } else { 1 },
            "{name}'s bundle is signed for entry offset {:#x} and flags {:#x}; the VMM runs guests at offset 0, protected, not debug",
            b.entry,
            b.flags
        );
        Ok(Spec {
            guest: name,
            protected: true,
            vcpus: b.vcpus,
            ram: b.memory,
            seed: 0x9e57_0000_0000_0000 ^ b.memory << 8,
            sign: true,
            debug: false,
            tamper: None,
        })
    }
}

/// A VM the test host made.
pub struct Vm {
    /// The guest it runs.
    pub name: &'static str,
    /// Its handle.
    pub handle: u64,
    /// Whether it is protected.
    pub protected: bool,
    /// vCPUs created.
    pub vcpus: u64,
    /// Host pages donated as metadata.
    pub metadata: Range,
    /// Host pages donated at `GUEST_RAM_BASE`.
    pub ram: Range,
    /// Single pages donated later (memory faults): `(host, guest)`.
    pub extra: [(u64, u64); MAX_EXTRA_PAGES],
    /// How many of `extra` are used.
    pub extra_count: usize,
    /// Set once `VM_DESTROY` succeeded.
    pub destroyed: bool,
}

/// Zeroes `[start, end)` (page-aligned RAM the host owns).
fn zero_range(start: u64, end: u64) {
    arch::ram_zero(start, end);
}

impl Vm {
    /// Creates the VM: metadata, RAM with the image, vCPUs, vCPU 0's `x0`.
    /// Undoes what it did if a step fails.
    pub fn create(arena: &mut Arena, spec: Spec) -> Result<Vm, Msg> {
        let image = image(spec.guest)?;
        ensure!(
            (image.len() as u64) < spec.ram && spec.ram.is_multiple_of(PAGE),
            "guest {} ({} bytes) does not fit {} bytes of RAM",
            spec.guest,
            image.len(),
            spec.ram
        );
        let config = VmConfig {
            debug: spec.debug,
            protected: spec.protected,
            max_vcpus: spec.vcpus,
        };
        let metadata_pages = config.min_metadata_pages() + EXTRA_STAGE2_PAGES;
        let metadata = Range::from_base_size(arena.take(metadata_pages)?, metadata_pages * PAGE);
        arena.align(64 << 10);
        let ram = Range::from_base_size(arena.take(spec.ram / PAGE)?, spec.ram);
        if spec.protected {
            zero_range(ram.start, ram.end);
        } else {
            arch::ram_fill(ram.start, ram.end, spec.seed);
        }
        load(ram.start, image);
        if let Some(at) = spec.tamper {
            let word = ram.start + (at & !7);
            arch::ram_write(word, arch::ram_read(word) ^ 1 << (8 * (at & 7)));
        }

        // issue 12: the `realm` guest runs as a realm VM (config bit 2).
        let as_realm = match REALM_OVERRIDE.load(core::sync::atomic::Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => REALM_GUESTS.contains(&spec.guest),
        };
        let realm = if spec.protected && as_realm {
            VmConfig::REALM
        } else {
            0
        };
        let r = call(
            HostCall::VmCreate,
            &[metadata.start, metadata_pages, config.encode() | realm],
        );
        ensure!(
            r[0] == 0,
            "VM_CREATE({:#x}, {metadata_pages}, {:#x}) = {}",
            metadata.start,
            config.encode(),
            r[0] as i64
        );
        let mut vm = Vm {
            name: spec.guest,
            handle: r[1],
            protected: spec.protected,
            vcpus: spec.vcpus,
            metadata,
            ram,
            extra: [(0, 0); MAX_EXTRA_PAGES],
            extra_count: 0,
            destroyed: false,
        };
        let setup = || -> Result<(), Msg> {
            // issue 16 (`vm-donate-zeroed`): the last pages filled with
            // garbage and given with VM_DONATE_ZEROED.
            let tail = ZEROED_TAIL_PAGES
                .load(core::sync::atomic::Ordering::Relaxed)
                .min(spec.ram / PAGE - image.len() as u64 / PAGE - 1);
            let c = code(
                HostCall::VmDonate,
                &[vm.handle, ram.start, spec.ram / PAGE - tail, GUEST_RAM_BASE],
            );
            ensure!(c == 0, "VM_DONATE of its RAM = {c}");
            let skip = ZEROED_TAIL_SKIP
                .load(core::sync::atomic::Ordering::Relaxed)
                .min(tail);
            if tail > 0 {
                let at = spec.ram - tail * PAGE;
                arch::ram_fill(ram.start + at, ram.end, ZEROED_TAIL_GARBAGE);
                let given = tail - skip;
                let c = code(
                    HostCall::VmDonateZeroed,
                    &[vm.handle, ram.start + at, given, GUEST_RAM_BASE + at, 0],
                );
                ensure!(
                    given == 0 || c == 0,
                    "VM_DONATE_ZEROED of its last {given} pages = {c}"
                );
            }
            for i in 0..spec.vcpus {
                let c = code(HostCall::VcpuCreate, &[vm.handle, i]);
                ensure!(c == 0, "VCPU_CREATE({i}) = {c}");
            }
            let c = code(
                HostCall::VcpuSetRegs,
                &[vm.handle, 0, GUEST_RAM_BASE, spec.ram],
            );
            ensure!(c == 0, "VCPU_SET_REGS(0) = {c}");
            if spec.protected && spec.sign {
                let b = bundle(spec.guest)?;
                let c = set_signature(vm.handle, &b.signer, &b.signature);
                ensure!(c == 0, "VM_SET_SIGNATURE = {c}");
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = vm.destroy();
            return Err(msg!("{}: {e}", spec.guest));
        }
        Ok(vm)
    }

    /// Donates one fresh page from `arena` at guest page `ipa`, every word
    /// `pattern ^ offset` (a host pattern the hypervisor must not let a
    /// running protected VM see). Returns `VM_DONATE`'s code.
    pub fn donate_patterned_page(
        &mut self,
        arena: &mut Arena,
        ipa: u64,
        pattern: u64,
    ) -> Result<i64, Msg> {
        ensure!(
            self.extra_count < MAX_EXTRA_PAGES,
            "more than {MAX_EXTRA_PAGES} pages donated on faults"
        );
        let page = arena.take(1)?;
        for offset in (0..PAGE).step_by(8) {
            arch::ram_write(page + offset, pattern ^ offset);
        }
        let c = code(HostCall::VmDonate, &[self.handle, page, 1, ipa]);
        if c == 0 {
            self.extra[self.extra_count] = (page, ipa);
            self.extra_count += 1;
        }
        Ok(c)
    }

    /// The host page behind guest address `ipa` of the VM's RAM.
    pub fn host_address(&self, ipa: u64) -> Option<u64> {
        let offset = ipa.checked_sub(GUEST_RAM_BASE)?;
        (offset < self.ram.size()).then(|| self.ram.start + offset)
    }

    /// `VM_DESTROY`, then every page the guest owned (its RAM, pages added
    /// later, the metadata) must read zero and be the host's again.
    pub fn destroy(&mut self) -> Result<(), Msg> {
        if self.destroyed {
            return Ok(());
        }
        let c = code(HostCall::VmDestroy, &[self.handle]);
        ensure!(c == 0, "{}: VM_DESTROY = {c}", self.name);
        self.destroyed = true;
        let mut ranges = [Range::default(); MAX_EXTRA_PAGES + 2];
        ranges[0] = self.ram;
        ranges[1] = self.metadata;
        for (i, (page, _)) in self.extra[..self.extra_count].iter().enumerate() {
            ranges[i + 2] = Range::from_base_size(*page, PAGE);
        }
        for range in &ranges[..self.extra_count + 2] {
            if let Some(block) = arch::ram_find_nonzero(range.start, range.end) {
                let words = (block..block + arch::RAM_BLOCK).step_by(8);
                let (at, value) = words
                    .map(|a| (a, arch::ram_read(a)))
                    .find(|&(_, v)| v != 0)
                    .unwrap_or((block, 0));
                fail!(
                    "{}: after VM_DESTROY, {at:#x} (in {range}) reads {value:#x}, expected 0",
                    self.name
                );
            }
            // Writable again: a word at each end.
            for a in [range.start, range.end - 8] {
                arch::ram_write(a, 0x600d_0000 ^ a);
                ensure!(
                    arch::ram_read(a) == 0x600d_0000 ^ a,
                    "{}: {a:#x} not writable after VM_DESTROY",
                    self.name
                );
                arch::ram_write(a, 0);
            }
        }
        Ok(())
    }

    /// Pages the guest owned (for messages).
    pub fn pages(&self) -> u64 {
        (self.ram.size() + self.metadata.size()) / PAGE + self.extra_count as u64
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A check that fails part-way leaves no VM behind (best effort; a VM
        // whose vCPU still runs on another CPU refuses with BUSY).
        if !self.destroyed {
            let _ = code(HostCall::VmDestroy, &[self.handle]);
            self.destroyed = true;
        }
    }
}

/// Copies `image` to `start` (8 bytes at a time; the tail zero-padded).
fn load(start: u64, image: &[u8]) {
    for (i, chunk) in image.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        arch::ram_write(start + 8 * i as u64, u64::from_le_bytes(word));
    }
}

/// Zeroes one page the host owns.
pub fn zero(page: u64) {
    for a in (page..page + PAGE).step_by(8) {
        arch::ram_write(a, 0);
    }
}
