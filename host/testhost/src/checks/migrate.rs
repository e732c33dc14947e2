//! `testhost.migrate`: secure migration of a protected VM (issue 14).
//!
//! A protected `count` guest (it counts in its own memory and prints every
//! value) runs for a while; the hypervisor exports it as a sealed stream
//! (`VM_EXPORT`) and the VM is gone; a destination imports the stream
//! (`VM_IMPORT_BEGIN`, `VM_IMPORT`, `VM_DONATE` of the header's layout,
//! `VM_IMPORT_DATA`) and the guest carries on from the next count.
//!
//! - `testhost.migrate=local`: both ends on this machine (one QEMU run):
//!   also the hostile cases, each of which must leave nothing of the VM
//!   behind (pages zeroed and the host's again): a flipped byte in a page
//!   record (`NOT_AUTHENTIC`), a stream without its end record (the VM
//!   never runs: `MIGRATING`; `VM_DESTROY` frees it), the same stream a
//!   second time (`STALE_STREAM`), a preamble naming another destination
//!   (`STALE_STREAM`), and no 32 bytes of the guest's image in the stream.
//! - `testhost.migrate=out` / `=in` with `testhost.migrate-dir=DIR`: the
//!   source and the destination on two machines (`cargo xtask`, case
//!   `migrate/two-machines`) with different device secrets and the same
//!   migration secret. The stream moves through files in DIR on the build
//!   machine (QEMU semihosting): the destination writes `challenge.bin`
//!   (its challenge and identity), the source writes `stream.bin`, the
//!   destination imports it, then a copy with a flipped byte and the
//!   same stream again.
//!
//! Prints `PASS`/`FAIL` lines and the usual summary, then powers off.

use rampart_abi::guest::GUEST_UART_BASE;
use rampart_abi::guest::layout::{UART_DR, UART_FR};
use rampart_abi::host::{ExitReason, HostCall, VmConfig, mmio};
use rampart_migrate::{HEADER_LEN, Header, PREAMBLE_LEN, RECORD_HEADER_LEN};

use super::vm::{arena, protected};
use super::vmm::{Arena, PAGE, Vm, call, code, image};
use crate::msg::Msg;
use crate::platform::Platform;
use crate::ranges::Range;
use crate::{arch, ensure, fail, msg, note, println};

/// The bootarg that selects this mode.
pub const BOOTARG: &str = "testhost.migrate";
/// The bootarg naming the directory of the two-machine test's files.
const DIR_BOOTARG: &str = "testhost.migrate-dir=";

/// Error codes (`docs/abi.md`).
const INVALID_PARAMETER: i64 = -3;
const DENIED: i64 = -16;
const NOT_AUTHENTIC: i64 = -27;
const STALE_STREAM: i64 = -29;
const MIGRATING: i64 = -30;

/// Bytes per `VM_EXPORT` buffer and `VM_IMPORT_DATA` chunk (the most a
/// call takes).
const CHUNK: u64 = 16 * PAGE;
/// Room for a stream: the count guest's 64 pages and then some.
const STREAM_PAGES: u64 = 128;
/// Lines the guest prints on each machine.
const LINES: u64 = 20;

/// What the bootargs ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Both ends here, with the hostile cases.
    Local,
    /// The source of the two-machine test.
    Out,
    /// The destination of the two-machine test.
    In,
}

/// The two-machine test's directory on the build machine.
pub struct Dir {
    bytes: [u8; 192],
    len: usize,
}

impl Dir {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// Whether the bootargs ask for a migration test, which, and its directory.
pub fn selected(p: &Platform) -> Option<(Mode, Dir)> {
    let blob = arch::device_tree_blob(p.boot.x[0]).ok()?;
    let fdt = dtoolkit::fdt::Fdt::new(blob).ok()?;
    let chosen = fdt.chosen()?;
    let bootargs = chosen.bootargs().ok()??;
    let mode =
        bootargs
            .split_ascii_whitespace()
            .find_map(|a| match a.strip_prefix(BOOTARG)? {
                "=local" => Some(Mode::Local),
                "=out" => Some(Mode::Out),
                "=in" => Some(Mode::In),
                _ => None,
            })?;
    let text = bootargs
        .split_ascii_whitespace()
        .find_map(|a| a.strip_prefix(DIR_BOOTARG))
        .unwrap_or("");
    let mut dir = Dir {
        bytes: [0; 192],
        len: 0,
    };
    if text.len() <= dir.bytes.len() {
        dir.bytes[..text.len()].copy_from_slice(text.as_bytes());
        dir.len = text.len();
    }
    Some((mode, dir))
}

/// Runs the mode's checks, prints the summary and powers off.
pub fn run(p: &Platform, mode: Mode, dir: &Dir) -> ! {
    let dir = dir.as_str();
    let result = match mode {
        Mode::Local => local(p),
        Mode::Out => out(p, dir),
        Mode::In => into(p, dir),
    };
    let (passed, failed) = match result {
        Ok(passed) => (passed, 0),
        Err((passed, reason)) => {
            println!("FAIL {}: {}", reason.0, reason.1);
            (passed, 1)
        }
    };
    println!("{passed} passed, {failed} failed");
    crate::psci::system_off();
    arch::halt();
}

/// A failed check: its name and why.
type Failure = (u32, (&'static str, Msg));

/// Runs the named checks in order, stopping at the first failure.
struct Checks {
    passed: u32,
}

impl Checks {
    fn check<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, Msg>,
    ) -> Result<T, Failure> {
        match f() {
            Ok(v) => {
                println!("PASS {name}");
                self.passed += 1;
                Ok(v)
            }
            Err(e) => Err((self.passed, (name, e))),
        }
    }
}

/// Runs the count guest's vCPU 0 until it printed `lines` more complete
/// lines; returns the first and last counts seen.
fn run_count(handle: u64, lines: u64) -> Result<(u64, u64), Msg> {
    let mut line = [0u8; 64];
    let mut len = 0;
    let (mut first, mut last, mut seen) = (None, 0, 0);
    let mut read_value = 0;
    for _ in 0..2_000_000u64 {
        let r = call(HostCall::VcpuRun, &[handle, 0, read_value]);
        read_value = 0;
        ensure!(r[0] == 0, "VCPU_RUN = {}", r[0] as i64);
        match ExitReason::try_from(r[1]) {
            Ok(ExitReason::Mmio)
                if r[2] == GUEST_UART_BASE + UART_DR && r[3] & mmio::WRITE != 0 =>
            {
                let byte = r[4] as u8;
                if byte != b'\n' {
                    if len < line.len() {
                        line[len] = byte;
                        len += 1;
                    }
                    continue;
                }
                let text = core::str::from_utf8(&line[..len]).unwrap_or("");
                len = 0;
                let Some(n) = text
                    .strip_prefix("GUEST-COUNT ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                else {
                    // The line the source stopped in (its '\n' store is
                    // executed again at the destination) is empty here.
                    continue;
                };
                ensure!(
                    first.is_none() || n == last + 1,
                    "count {n} after {last}: the guest skipped or repeated"
                );
                first.get_or_insert(n);
                last = n;
                seen += 1;
                if seen == lines {
                    return Ok((first.unwrap_or(0), last));
                }
            }
            Ok(ExitReason::Mmio)
                if r[2] == GUEST_UART_BASE + UART_FR && r[3] & mmio::WRITE == 0 => {}
            Ok(ExitReason::Wait | ExitReason::Interrupt) => {}
            other => fail!(
                "unexpected exit {other:?} ({:#x} {:#x} {:#x})",
                r[2],
                r[3],
                r[4]
            ),
        }
    }
    fail!("the guest printed {seen} lines in 2 000 000 runs")
}

/// Copies `bytes` bytes (a multiple of 8) between host RAM ranges.
fn copy(from: u64, to: u64, bytes: u64) {
    for off in (0..bytes).step_by(8) {
        arch::ram_write(to + off, arch::ram_read(from + off));
    }
}

fn read_byte(address: u64) -> u8 {
    (arch::ram_read(address & !7) >> (8 * (address & 7))) as u8
}

fn flip_byte(address: u64) {
    let word = address & !7;
    arch::ram_write(word, arch::ram_read(word) ^ (1 << (8 * (address & 7))));
}

/// The destination's identity: its attestation public key.
fn identity() -> Result<[u64; 4], Msg> {
    let r = call(HostCall::AttestationKey, &[]);
    ensure!(r[0] == 0, "ATTESTATION_KEY = {}", r[0] as i64);
    Ok([r[1], r[2], r[3], r[4]])
}

fn import_begin() -> Result<[u64; 2], Msg> {
    let r = call(HostCall::VmImportBegin, &[]);
    ensure!(
        r[0] == 0,
        "VM_IMPORT_BEGIN = {} (a hypervisor without a migration secret?)",
        r[0] as i64
    );
    Ok([r[1], r[2]])
}

/// Exports `vm` for `challenge` and `destination` into `stream` (host
/// RAM); returns the stream's length. Checks on the way that the VM no
/// longer runs once the export started, and that it is gone after.
fn export(
    vm: &mut Vm,
    arena: &mut Arena,
    challenge: [u64; 2],
    destination: [u64; 4],
    stream: u64,
) -> Result<u64, Msg> {
    let buffer = arena.take(CHUNK / PAGE)?;
    let mut len = 0u64;
    let mut calls = 0;
    let mut ticks = 0;
    loop {
        let args = [
            vm.handle,
            buffer,
            CHUNK / PAGE,
            challenge[0],
            challenge[1],
            destination[0],
            destination[1],
            destination[2],
            destination[3],
        ];
        let t = arch::counter();
        let r = call(HostCall::VmExport, &args);
        ticks += arch::counter() - t;
        ensure!(r[0] == 0, "VM_EXPORT (call {calls}) = {}", r[0] as i64);
        ensure!(
            len + r[1] <= STREAM_PAGES * PAGE,
            "the stream outgrew {STREAM_PAGES} pages"
        );
        copy(buffer, stream + len, r[1].next_multiple_of(8));
        len += r[1];
        calls += 1;
        if r[2] == 1 {
            break;
        }
        if calls == 1 {
            let c = code(HostCall::VcpuRun, &[vm.handle, 0, 0]);
            ensure!(
                c == MIGRATING,
                "VCPU_RUN during the export = {c}, want MIGRATING ({MIGRATING})"
            );
        }
        ensure!(calls < 1000, "VM_EXPORT never finished");
    }
    // The VM is gone: its handle is dead and its RAM zeroed and the host's.
    let c = code(HostCall::VcpuRun, &[vm.handle, 0, 0]);
    ensure!(
        c == INVALID_PARAMETER,
        "VCPU_RUN after the export = {c}, want INVALID_PARAMETER"
    );
    vm.destroyed = true;
    zeroed_and_ours(vm.ram)?;
    zeroed_and_ours(vm.metadata)?;
    let us = ticks * 1_000_000 / arch::counter_frequency().max(1);
    note!(
        "exported in {calls} calls: {len} bytes for {} KiB of guest memory in {us} us in VM_EXPORT ({} KiB/s)",
        vm.ram.size() >> 10,
        (vm.ram.size() >> 10) * 1_000_000 / us.max(1)
    );
    Ok(len)
}

/// Every word of `range` reads zero and the host can write it.
fn zeroed_and_ours(range: Range) -> Result<(), Msg> {
    if let Some(block) = arch::ram_find_nonzero(range.start, range.end) {
        fail!("{range} is not zero at {block:#x} after the VM went away");
    }
    for a in [range.start, range.end - 8] {
        arch::ram_write(a, 0x600d ^ a);
        ensure!(
            arch::ram_read(a) == 0x600d ^ a,
            "{a:#x} is not the host's again"
        );
        arch::ram_write(a, 0);
    }
    Ok(())
}

/// An import attempt's pages.
struct Imported {
    handle: u64,
    metadata: Range,
    ram: [Range; 4],
    runs: usize,
}

/// Imports the stream at `stream` (`len` bytes): `VM_IMPORT`, the header's
/// layout donated, then `VM_IMPORT_DATA` chunks. `Err(code)` for a
/// refused call (with what it created, if anything).
fn import(
    arena: &mut Arena,
    stream: u64,
    len: u64,
) -> Result<Result<Imported, (i64, Option<Imported>)>, Msg> {
    // The header (clear, authenticated) says the VM's vCPUs and layout.
    let mut bytes = [0u8; HEADER_LEN];
    let at = stream + (PREAMBLE_LEN + RECORD_HEADER_LEN) as u64;
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = read_byte(at + i as u64);
    }
    let header =
        Header::decode(&bytes).map_err(|e| msg!("the stream's header does not parse: {e:?}"))?;
    let config = VmConfig {
        protected: header.protected,
        debug: header.debug,
        max_vcpus: u64::from(header.vcpus),
    };
    let metadata_pages = config.min_metadata_pages() + 24;
    let metadata = Range::from_base_size(arena.take(metadata_pages)?, metadata_pages * PAGE);
    let r = call(
        HostCall::VmImport,
        &[metadata.start, metadata_pages, stream, len.min(CHUNK)],
    );
    if r[0] != 0 {
        return Ok(Err((r[0] as i64, None)));
    }
    let mut imported = Imported {
        handle: r[1],
        metadata,
        ram: [Range::default(); 4],
        runs: 0,
    };
    let mut pos = r[2];
    ensure!(
        header.run_count <= imported.ram.len(),
        "{} memory runs",
        header.run_count
    );
    for &(ipa, pages) in &header.runs[..header.run_count] {
        let pages_at = arena.take(pages)?;
        let c = code(HostCall::VmDonate, &[imported.handle, pages_at, pages, ipa]);
        ensure!(c == 0, "VM_DONATE of {pages} pages at {ipa:#x} = {c}");
        imported.ram[imported.runs] = Range::from_base_size(pages_at, pages * PAGE);
        imported.runs += 1;
    }
    let mut calls = 0;
    let mut ticks = 0;
    while pos < len {
        let t = arch::counter();
        let r = call(
            HostCall::VmImportData,
            &[imported.handle, stream + pos, (len - pos).min(CHUNK)],
        );
        ticks += arch::counter() - t;
        calls += 1;
        if r[0] != 0 {
            return Ok(Err((r[0] as i64, Some(imported))));
        }
        ensure!(
            r[1] != 0 || r[2] == 1,
            "VM_IMPORT_DATA consumed nothing at {pos} of {len}"
        );
        pos += r[1];
        if r[2] == 1 {
            ensure!(pos == len, "the import completed at {pos} of {len} bytes");
            let us = ticks * 1_000_000 / arch::counter_frequency().max(1);
            note!(
                "imported in {} calls: {len} bytes in {us} us in VM_IMPORT_DATA ({} KiB/s of stream)",
                calls + 1,
                (len >> 10) * 1_000_000 / us.max(1)
            );
            return Ok(Ok(imported));
        }
    }
    // Ran out of stream before the end record.
    Ok(Err((0, Some(imported))))
}

/// After a refused import: the VM is gone (its handle dead) and every page
/// the host gave it is zero and the host's again.
fn nothing_held(imported: &Imported) -> Result<(), Msg> {
    let c = code(HostCall::VmDestroy, &[imported.handle]);
    ensure!(
        c == INVALID_PARAMETER,
        "VM_DESTROY of the refused import = {c}, want INVALID_PARAMETER (it should be gone)"
    );
    zeroed_and_ours(imported.metadata)?;
    for range in &imported.ram[..imported.runs] {
        zeroed_and_ours(*range)?;
    }
    Ok(())
}

/// The stream's offset of its `n`th record (0 = header).
fn record_offset(stream: u64, len: u64, n: usize) -> Option<u64> {
    let mut at = PREAMBLE_LEN as u64;
    for _ in 0..n {
        // Records start 8-byte aligned; the length is the first word's
        // upper half.
        let payload = arch::ram_read(stream + at) >> 32;
        at += (RECORD_HEADER_LEN + 16) as u64 + payload;
        if at >= len {
            return None;
        }
    }
    Some(at)
}

/// Whether any 32 bytes of the count guest's image appear in the stream.
fn image_in_clear(stream: u64, len: u64) -> Result<Option<usize>, Msg> {
    let img = image("count")?;
    let mut bytes = [0u8; 32];
    for start in (64..img.len().saturating_sub(32)).step_by(img.len() / 8 + 1) {
        let needle = &img[start..start + 32];
        if needle.iter().all(|&b| b == 0) {
            continue;
        }
        for at in 0..len.saturating_sub(32) {
            if read_byte(stream + at) != needle[0] {
                continue;
            }
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = read_byte(stream + at + i as u64);
            }
            if bytes == needle {
                return Ok(Some(start));
            }
        }
    }
    Ok(None)
}

/// Starts the count guest and runs it for [`LINES`] lines; returns the VM
/// and the last count.
fn start_source(arena: &mut Arena) -> Result<(Vm, u64), Msg> {
    let vm = Vm::create(arena, protected("count")?)?;
    let (first, last) = run_count(vm.handle, LINES)?;
    ensure!(first == 1, "the guest started at {first}");
    Ok((vm, last))
}

fn local(p: &Platform) -> Result<u32, Failure> {
    let mut c = Checks { passed: 0 };
    let (mut arena, layout) = c.check("migrate-arena", || arena(p))?;
    let (mut vm, last) = c.check("migrate-source-runs", || start_source(&mut arena))?;
    let stream = c.check("migrate-stream-room", || arena.take(STREAM_PAGES))?;
    let (challenge, me) = c.check("migrate-begin", || Ok((import_begin()?, identity()?)))?;
    let last = c.check("migrate-bad-args-change-nothing", || {
        let export = |buffer: u64, pages: u64| {
            let [c0, c1] = challenge;
            code(
                HostCall::VmExport,
                &[vm.handle, buffer, pages, c0, c1, me[0], me[1], me[2], me[3]],
            )
        };
        let buffer = arena.take(2)?;
        for (what, buffer, pages, want) in [
            ("the VM's own page", vm.ram.start, 2, DENIED),
            ("the carve-out", layout.carveout.start, 2, DENIED),
            ("one page", buffer, 1, INVALID_PARAMETER),
            ("17 pages", buffer, 17, INVALID_PARAMETER),
            ("unaligned", buffer + 8, 2, INVALID_PARAMETER),
        ] {
            let got = export(buffer, pages);
            ensure!(got == want, "VM_EXPORT into {what} = {got}, want {want}");
        }
        let got = code(HostCall::VmImportData, &[vm.handle, buffer, 64]);
        ensure!(
            got == DENIED,
            "VM_IMPORT_DATA of a VM that is not being imported = {got}, want DENIED"
        );
        let got = code(HostCall::VmImport, &[vm.ram.start, 40, buffer, 64]);
        ensure!(
            got == INVALID_PARAMETER,
            "VM_IMPORT of 64 bytes = {got}, want INVALID_PARAMETER"
        );
        // The VM was not stopped by any of them: it counts on.
        let (first, last_now) = run_count(vm.handle, 2)?;
        ensure!(
            first == last + 1,
            "after the refused calls the guest went on at {first}, want {}",
            last + 1
        );
        Ok(last_now)
    })?;
    note!("source: the guest counted to {last}");
    let len = c.check("migrate-export", || {
        export(&mut vm, &mut arena, challenge, me, stream)
    })?;
    c.check("migrate-nothing-in-clear", || {
        match image_in_clear(stream, len)? {
            Some(at) => {
                fail!("32 bytes of the guest's image (offset {at}) are in the stream in clear")
            }
            None => Ok(()),
        }
    })?;
    c.check("migrate-flipped-byte-refused", || {
        // A byte in the middle of the third record (a guest page).
        let at = record_offset(stream, len, 3).ok_or_else(|| msg!("no third record"))? + 2000;
        flip_byte(stream + at);
        let result = import(&mut arena, stream, len);
        flip_byte(stream + at);
        match result? {
            Err((code, Some(imported))) if code == NOT_AUTHENTIC => nothing_held(&imported),
            Err((code, _)) => {
                fail!("import with a flipped byte = {code}, want NOT_AUTHENTIC ({NOT_AUTHENTIC})")
            }
            Ok(_) => fail!("an import with a flipped byte succeeded"),
        }
    })?;
    c.check("migrate-truncated-never-runs", || {
        // Everything but the end record (48 bytes).
        match import(&mut arena, stream, len - 48)? {
            Err((0, Some(imported))) => {
                let c = code(HostCall::VcpuRun, &[imported.handle, 0, 0]);
                ensure!(
                    c == MIGRATING,
                    "VCPU_RUN of a truncated import = {c}, want MIGRATING ({MIGRATING})"
                );
                let c = code(HostCall::VmDestroy, &[imported.handle]);
                ensure!(c == 0, "VM_DESTROY of a truncated import = {c}");
                zeroed_and_ours(imported.metadata)?;
                for range in &imported.ram[..imported.runs] {
                    zeroed_and_ours(*range)?;
                }
                Ok(())
            }
            Err((code, _)) => fail!("truncated import = {code}, want it to wait for more"),
            Ok(_) => fail!("an import without its end record completed"),
        }
    })?;
    c.check("migrate-retargeted-refused", || {
        // The preamble names another destination (identity at bytes 48..80).
        flip_byte(stream + 50);
        let result = import(&mut arena, stream, len);
        flip_byte(stream + 50);
        match result? {
            Err((code, None)) if code == STALE_STREAM => Ok(()),
            Err((code, _)) => {
                fail!("import of a stream for another destination = {code}, want STALE_STREAM")
            }
            Ok(_) => fail!("a stream for another destination was imported"),
        }
    })?;
    let imported = c.check("migrate-import", || {
        match import(&mut arena, stream, len)? {
            Ok(imported) => Ok(imported),
            Err((code, _)) => fail!("import = {code}"),
        }
    })?;
    c.check("migrate-carries-on", || {
        let (first, end) = run_count(imported.handle, LINES)?;
        ensure!(
            first == last + 1,
            "the imported guest went on at {first}, want {}",
            last + 1
        );
        note!("destination: the guest went on from {first} to {end}");
        Ok(())
    })?;
    c.check("migrate-replay-refused", || {
        match import(&mut arena, stream, len)? {
            Err((code, None)) if code == STALE_STREAM => Ok(()),
            Err((code, _)) => {
                fail!("the same stream a second time = {code}, want STALE_STREAM ({STALE_STREAM})")
            }
            Ok(_) => fail!("the same stream was imported twice"),
        }
    })?;
    c.check("migrate-destroy-imported", || {
        let c = code(HostCall::VmDestroy, &[imported.handle]);
        ensure!(c == 0, "VM_DESTROY = {c}");
        zeroed_and_ours(imported.metadata)?;
        for range in &imported.ram[..imported.runs] {
            zeroed_and_ours(*range)?;
        }
        Ok(())
    })?;
    Ok(c.passed)
}

/// Semihosting operations.
mod sys {
    pub const OPEN: u64 = 0x01;
    pub const CLOSE: u64 = 0x02;
    pub const WRITE: u64 = 0x05;
    pub const READ: u64 = 0x06;
    pub const FLEN: u64 = 0x0c;
    pub const RENAME: u64 = 0x0f;
    /// `fopen` modes.
    pub const READ_BINARY: u64 = 1;
    pub const WRITE_BINARY: u64 = 5;
}

/// `DIR/name` as a NUL-terminated path in `buf`; its length without NUL.
fn path(buf: &mut [u8; 256], dir: &str, name: &str) -> Result<usize, Msg> {
    let len = dir.len() + 1 + name.len();
    ensure!(
        !dir.is_empty() && len < buf.len(),
        "no usable {DIR_BOOTARG} ({dir})"
    );
    buf[..dir.len()].copy_from_slice(dir.as_bytes());
    buf[dir.len()] = b'/';
    buf[dir.len() + 1..len].copy_from_slice(name.as_bytes());
    buf[len] = 0;
    Ok(len)
}

fn open(dir: &str, name: &str, mode: u64) -> Result<Option<u64>, Msg> {
    let mut buf = [0u8; 256];
    let len = path(&mut buf, dir, name)?;
    let handle = arch::semihosting(sys::OPEN, &[buf.as_ptr() as u64, mode, len as u64]);
    Ok((handle != u64::MAX).then_some(handle))
}

/// Writes `len` bytes of host RAM at `at` to `DIR/name` (via a temporary
/// name, renamed when complete, so a reader never sees half a file).
fn write_file(dir: &str, name: &str, at: u64, len: u64) -> Result<(), Msg> {
    let mut part = [0u8; 64];
    let part_len = name.len() + 5;
    part[..name.len()].copy_from_slice(name.as_bytes());
    part[name.len()..part_len].copy_from_slice(b".part");
    let part_name = core::str::from_utf8(&part[..part_len]).unwrap_or("part");
    let handle = open(dir, part_name, sys::WRITE_BINARY)?
        .ok_or_else(|| msg!("cannot create {dir}/{part_name}"))?;
    let left = arch::semihosting(sys::WRITE, &[handle, at, len]);
    arch::semihosting(sys::CLOSE, &[handle]);
    ensure!(
        left == 0,
        "{left} of {len} bytes not written to {dir}/{part_name}"
    );
    let (mut from, mut to) = ([0u8; 256], [0u8; 256]);
    let from_len = path(&mut from, dir, part_name)?;
    let to_len = path(&mut to, dir, name)?;
    let r = arch::semihosting(
        sys::RENAME,
        &[
            from.as_ptr() as u64,
            from_len as u64,
            to.as_ptr() as u64,
            to_len as u64,
        ],
    );
    ensure!(r == 0, "renaming {dir}/{part_name} to {name} failed");
    Ok(())
}

/// Waits (up to `seconds`) for `DIR/name`, then reads it into host RAM at
/// `at` (at most `max` bytes); returns its length.
fn read_file(dir: &str, name: &str, at: u64, max: u64, seconds: u64) -> Result<u64, Msg> {
    let deadline = arch::counter() + arch::counter_frequency() * seconds;
    let handle = loop {
        if let Some(h) = open(dir, name, sys::READ_BINARY)? {
            break h;
        }
        ensure!(
            arch::counter() < deadline,
            "{dir}/{name} did not appear in {seconds} s"
        );
        let wait = arch::counter() + arch::counter_frequency() / 5;
        while arch::counter() < wait {
            arch::spin_hint();
        }
    };
    let len = arch::semihosting(sys::FLEN, &[handle]);
    if len > max {
        arch::semihosting(sys::CLOSE, &[handle]);
        fail!("{dir}/{name} has {len} bytes, more than {max}");
    }
    let left = arch::semihosting(sys::READ, &[handle, at, len]);
    arch::semihosting(sys::CLOSE, &[handle]);
    ensure!(left == 0, "{left} of {len} bytes of {dir}/{name} not read");
    Ok(len)
}

/// The source: reads the destination's challenge and identity, exports
/// the running guest into `stream.bin`.
fn out(p: &Platform, dir: &str) -> Result<u32, Failure> {
    let mut c = Checks { passed: 0 };
    let (mut arena, _) = c.check("migrate-arena", || arena(p))?;
    let (mut vm, last) = c.check("migrate-source-runs", || start_source(&mut arena))?;
    println!("MIGRATE-OUT last count {last}");
    let words = c.check("migrate-read-challenge", || {
        let at = arena.take(1)?;
        let len = read_file(dir, "challenge.bin", at, PAGE, 240)?;
        ensure!(
            len == 48,
            "challenge.bin has {len} bytes, want 48 (challenge, identity)"
        );
        Ok(core::array::from_fn::<u64, 6, _>(|i| {
            arch::ram_read(at + 8 * i as u64)
        }))
    })?;
    let stream = c.check("migrate-stream-room", || arena.take(STREAM_PAGES))?;
    let len = c.check("migrate-export", || {
        export(
            &mut vm,
            &mut arena,
            [words[0], words[1]],
            [words[2], words[3], words[4], words[5]],
            stream,
        )
    })?;
    c.check("migrate-nothing-in-clear", || {
        match image_in_clear(stream, len)? {
            Some(at) => {
                fail!("32 bytes of the guest's image (offset {at}) are in the stream in clear")
            }
            None => Ok(()),
        }
    })?;
    c.check("migrate-write-stream", || {
        write_file(dir, "stream.bin", stream, len)
    })?;
    println!("MIGRATE-OUT stream {len} bytes");
    Ok(c.passed)
}

/// The destination: issues a challenge, waits for the stream, refuses a
/// flipped copy, imports it, runs the guest on, refuses it a second time.
fn into(p: &Platform, dir: &str) -> Result<u32, Failure> {
    let mut c = Checks { passed: 0 };
    let (mut arena, _) = c.check("migrate-arena", || arena(p))?;
    c.check("migrate-write-challenge", || {
        let challenge = import_begin()?;
        let me = identity()?;
        let at = arena.take(1)?;
        for (i, w) in challenge.iter().chain(&me).enumerate() {
            arch::ram_write(at + 8 * i as u64, *w);
        }
        write_file(dir, "challenge.bin", at, 48)
    })?;
    println!("MIGRATE-IN waiting for the stream");
    let stream = c.check("migrate-stream-room", || arena.take(STREAM_PAGES))?;
    let len = c.check("migrate-read-stream", || {
        read_file(dir, "stream.bin", stream, STREAM_PAGES * PAGE, 300)
    })?;
    c.check("migrate-flipped-byte-refused", || {
        let at = record_offset(stream, len, 3).ok_or_else(|| msg!("no third record"))? + 2000;
        flip_byte(stream + at);
        let result = import(&mut arena, stream, len);
        flip_byte(stream + at);
        match result? {
            Err((code, Some(imported))) if code == NOT_AUTHENTIC => nothing_held(&imported),
            Err((code, _)) => {
                fail!("import with a flipped byte = {code}, want NOT_AUTHENTIC ({NOT_AUTHENTIC})")
            }
            Ok(_) => fail!("an import with a flipped byte succeeded"),
        }
    })?;
    let imported = c.check("migrate-import", || {
        match import(&mut arena, stream, len)? {
            Ok(imported) => Ok(imported),
            Err((code, _)) => fail!("import = {code}"),
        }
    })?;
    c.check("migrate-carries-on", || {
        let (first, end) = run_count(imported.handle, LINES)?;
        println!("MIGRATE-IN first count {first}, last {end}");
        Ok(())
    })?;
    c.check("migrate-replay-refused", || {
        match import(&mut arena, stream, len)? {
            Err((code, None)) if code == STALE_STREAM => Ok(()),
            Err((code, _)) => {
                fail!("the same stream a second time = {code}, want STALE_STREAM ({STALE_STREAM})")
            }
            Ok(_) => fail!("the same stream was imported twice"),
        }
    })?;
    c.check("migrate-destroy-imported", || {
        let c = code(HostCall::VmDestroy, &[imported.handle]);
        ensure!(c == 0, "VM_DESTROY = {c}");
        Ok(())
    })?;
    Ok(c.passed)
}
