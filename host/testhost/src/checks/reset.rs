//! `testhost.reset`: a host-initiated reset must not leak a protected VM's
//! memory into the next boot.
//!
//! The same command line runs twice (QEMU keeps RAM across a reset and
//! reloads only the images it was given), so the test host tells the boots
//! apart by a marker it leaves in the last page of RAM, which nothing else
//! uses:
//!
//! 1. **First boot** (no marker): writes the marker and runs the signed
//!    `attest` guest in a protected VM on the boot CPU and, with a second
//!    CPU, a VM that never exits on CPU 1 (a store loop). Once `attest` has
//!    printed its third sealing-key line — its keys are now in its stack
//!    and in the vCPU registers the hypervisor saved in the VM's metadata
//!    pages — the test host asks PSCI `SYSTEM_RESET` right there, with both
//!    VMs alive and the loop still running. Returning from that call is a
//!    failure.
//! 2. **Second boot** (marker found): clears the marker, scans every page
//!    of RAM it can read (what was the VM's memory and metadata included)
//!    for the secrets `testhost.secrets=` names, checks the scan itself
//!    finds a planted secret, prints `PASS reset-no-leaks` or `FAIL ...`
//!    and the usual summary, and powers off.
//!
//! `testhost.reset=off` runs the first boot only and asks `SYSTEM_OFF`
//! instead: QEMU (`-no-shutdown`) keeps the machine, and `cargo xtask`
//! dumps all of RAM through QMP and scans it — the carve-out included,
//! which no host can read.

use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::guest::psci::{SYSTEM_OFF, SYSTEM_RESET};
use rampart_abi::host::{HostCall, VmConfig};

use super::vm::{arena, protected};
use super::vmm::run::{self, Policy};
use super::vmm::{Arena, MAX_EXTRA_PAGES, PAGE, Vm, call, code};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::ranges::Range;
use crate::{arch, cpus, ensure, fail, msg, note, println, psci, secrets};

/// The bootarg that selects this mode.
pub const BOOTARG: &str = "testhost.reset";
/// The marker's first word: "RSTMARK1", XORed so the constant in the test
/// host's image is not itself the marker.
const MAGIC: u64 = 0x5253_544d_4152_4b31 ^ 0xffff_ffff_ffff_ffff;

/// What the bootargs ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `testhost.reset`: reset, then scan RAM in the next boot.
    Reset,
    /// `testhost.reset=off`: `SYSTEM_OFF` instead; `cargo xtask` dumps RAM
    /// after the power-off (QEMU `-no-shutdown`) and scans it.
    Off,
}

/// Whether the bootargs ask for the reset test, and which.
pub fn selected(p: &Platform) -> Option<Mode> {
    let blob = arch::device_tree_blob(p.boot.x[0]).ok()?;
    let fdt = dtoolkit::fdt::Fdt::new(blob).ok()?;
    let chosen = fdt.chosen()?;
    let bootargs = chosen.bootargs().ok()??;
    bootargs
        .split_ascii_whitespace()
        .find_map(|a| match a.strip_prefix(BOOTARG)? {
            "" => Some(Mode::Reset),
            "=off" => Some(Mode::Off),
            _ => None,
        })
}

/// The marker's page: the last page of the highest usable RAM range.
fn marker_page(p: &Platform) -> Option<u64> {
    let usable = p.usable_memory();
    let top = usable.as_slice().iter().max_by_key(|r| r.end)?;
    (top.end - top.start >= PAGE).then(|| (top.end & !(PAGE - 1)) - PAGE)
}

/// Runs the mode and powers off (or resets).
pub fn run(p: &Platform, mode: Mode) -> ! {
    let result = match marker_page(p) {
        _ if mode == Mode::Off => first_boot(p, None),
        None => Err(msg!("no usable RAM for the boot marker")),
        Some(marker) if arch::ram_read(marker) == !MAGIC => {
            let boots = arch::ram_read(marker + 8);
            arch::ram_zero(marker, marker + PAGE);
            println!(
                "reset: boot {} after the reset (marker at {marker:#x})",
                boots + 1
            );
            second_boot(p, marker)
        }
        Some(marker) => first_boot(p, Some(marker)),
    };
    match result {
        Ok(()) => {
            println!("PASS reset-no-leaks");
            println!("1 passed, 0 failed");
        }
        Err(reason) => {
            println!("FAIL reset-no-leaks: {reason}");
            println!("0 passed, 1 failed");
        }
    }
    psci::system_off();
    arch::halt();
}

/// Counts the attest guest's `GUEST-SEALING` lines; after the third, with
/// the spinner still running on another CPU, resets the machine from
/// inside the VMM's loop.
struct ResetAfterSealing {
    lines: u32,
    spinner: bool,
    /// `SYSTEM_RESET`, or `SYSTEM_OFF` for [`Mode::Off`].
    function: u32,
}

impl Policy for ResetAfterSealing {
    fn line(&mut self, vms: &mut [Vm], vm: usize, text: &str) -> Result<(), Msg> {
        if vm == 0 && text.starts_with("GUEST-SEALING ") {
            self.lines += 1;
        }
        if self.lines == 3 {
            note!(
                "reset: the protected attest guest derived its sealing keys in {} ({} pages of RAM, {} of metadata){}; {} with every VM alive",
                vms[0].ram,
                vms[0].ram.size() / PAGE,
                vms[0].metadata.size() / PAGE,
                if self.spinner {
                    "; the spinner VM runs on CPU 1"
                } else {
                    ""
                },
                if self.function == SYSTEM_OFF {
                    "SYSTEM_OFF"
                } else {
                    "SYSTEM_RESET"
                }
            );
            let code = psci::call(self.function, &[]);
            fail!("SYSTEM_RESET/SYSTEM_OFF returned {code}");
        }
        Ok(())
    }
}

/// `movz x2, #0x8000, lsl #16; add x2, x2, #0x800; 1: str x0, [x2];
/// add x0, x0, #1; b 1b`: a guest that never leaves unless made to.
const SPINNER: [u32; 5] = [
    0xD2B0_0002,
    0x9120_0042,
    0xF900_0040,
    0x9100_0400,
    0x17FF_FFFE,
];

/// A VM that is not protected, with one page of RAM running [`SPINNER`].
fn spinner(arena: &mut Arena) -> Result<Vm, Msg> {
    let config = VmConfig {
        debug: false,
        protected: false,
        max_vcpus: 1,
    };
    let metadata_pages = config.min_metadata_pages() + 4;
    let metadata = Range::from_base_size(arena.take(metadata_pages)?, metadata_pages * PAGE);
    let ram = Range::from_base_size(arena.take(1)?, PAGE);
    arch::ram_zero(ram.start, ram.end);
    for (i, pair) in SPINNER.chunks(2).enumerate() {
        let word = u64::from(pair[0]) | u64::from(*pair.get(1).unwrap_or(&0)) << 32;
        arch::ram_write(ram.start + 8 * i as u64, word);
    }
    let r = call(
        HostCall::VmCreate,
        &[metadata.start, metadata_pages, config.encode()],
    );
    ensure!(r[0] == 0, "spinner: VM_CREATE = {}", r[0] as i64);
    let vm = Vm {
        name: "spinner",
        handle: r[1],
        protected: false,
        vcpus: 1,
        metadata,
        ram,
        extra: [(0, 0); MAX_EXTRA_PAGES],
        extra_count: 0,
        destroyed: false,
    };
    for (what, call_, args) in [
        (
            "VM_DONATE",
            HostCall::VmDonate,
            [vm.handle, ram.start, 1, GUEST_RAM_BASE],
        ),
        ("VCPU_CREATE", HostCall::VcpuCreate, [vm.handle, 0, 0, 0]),
        (
            "VCPU_SET_REGS",
            HostCall::VcpuSetRegs,
            [vm.handle, 0, GUEST_RAM_BASE, 0],
        ),
    ] {
        let c = code(call_, &args);
        ensure!(c == 0, "spinner: {what} = {c}");
    }
    Ok(vm)
}

/// The first boot ([`Mode::Reset`], with the marker's page) or the only
/// one ([`Mode::Off`], without).
fn first_boot(p: &Platform, marker: Option<u64>) -> Result<(), Msg> {
    ensure!(
        p.secrets.is_ok_and(|n| n > 0),
        "no {} on the command line: run through `cargo xtask`",
        secrets::BOOTARG
    );
    if let Some(marker) = marker {
        arch::ram_zero(marker, marker + PAGE);
        arch::ram_write(marker, !MAGIC);
        arch::ram_write(marker + 8, 1);
    }
    let (mut arena, _) = arena(p)?;
    let attest = Vm::create(&mut arena, protected("attest")?)?;
    if let Some(marker) = marker {
        let marker_range = Range::from_base_size(marker, PAGE);
        ensure!(
            !attest.ram.overlaps(&marker_range) && !attest.metadata.overlaps(&marker_range),
            "the VM's memory overlaps the boot marker"
        );
    }
    let mut policy = ResetAfterSealing {
        lines: 0,
        spinner: p.cpu_count >= 2,
        function: if marker.is_some() {
            SYSTEM_RESET
        } else {
            SYSTEM_OFF
        },
    };
    // With a second CPU, a VM that never exits runs there while the boot
    // CPU resets: the hypervisor must stop it before it wipes.
    if policy.spinner {
        let spin = spinner(&mut arena)?;
        let mut vms = [attest, spin];
        run::run(p, &mut vms, &[&[0], &[1]], &mut policy, 8_000)?;
    } else {
        let mut vms = [attest];
        run::run(p, &mut vms, &[&[0]], &mut policy, 8_000)?;
    }
    fail!(
        "the attest guest ended after {} GUEST-SEALING lines without the reset",
        policy.lines
    )
}

fn second_boot(p: &Platform, marker: u64) -> Result<(), Msg> {
    let count = match p.secrets {
        Ok(0) => fail!("no {} on the command line", secrets::BOOTARG),
        Ok(n) => n,
        Err(e) => fail!("{}: {e}", secrets::BOOTARG),
    };
    let start = arch::counter();
    let mut ranges = secrets::scannable_ram(p);
    ranges.subtract(&Range::from_base_size(marker, PAGE));
    let scanned = match secrets::scan_ranges(ranges.as_slice()) {
        Ok(scanned) => scanned,
        Err((at, secret)) => fail!("{} survived the reset: 8 of its bytes at {at:#x}", secrets::name(secret)),
    };
    let (scanned, nonzero) = (scanned.bytes, scanned.nonzero);
    let (mut arena, _) = arena(p)?;
    let page = arena.take(1)?;
    let planted = secrets::self_test(page).map_err(|e| msg!("the leak scan's self-test: {e}"))?;
    note!("self-test: 15 bytes of a secret planted at {page:#x} + 3 were found at {planted:#x}");
    note!(
        "{count} secrets: none in {} MiB of RAM after the reset ({} KiB not zero); {} ms",
        scanned >> 20,
        nonzero >> 10,
        cpus::elapsed_ms(start)
    );
    Ok(())
}
