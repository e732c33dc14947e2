//! Bundle format version 2 (issue 12): a Linux VM as typed parts.
//!
//! After the 176-byte header of version 1 (with version = 2, entry offset
//! 0, and the "image length" counting every byte after the header):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 176 | 4 | part count, 1 to 8 |
//! | 180 | 4 | reserved, zero |
//! | 184 | 32 × count | the part table |
//! | … | | the parts' contents, in table order |
//!
//! A table entry: u32 kind, u32 flags (zero), u64 guest-physical load
//! address, u64 file offset, u64 length. Contents start 8-byte aligned
//! right after the table / the previous part (zero padding between), and
//! the file ends with the last part.
//!
//! Kinds: 1 arm64 `Image` (the kernel), 2 initrd, 3 kernel command line
//! (not placed: load address 0; the device tree's `/chosen/bootargs`
//! carries it), 4 the flattened device tree the VMM generated. A kernel
//! and a device tree are required; each kind appears at most once.
//!
//! The measurement is the one the hypervisor computes at the first run
//! over every page of guest RAM after the kernel, the initrd and the
//! device tree are copied to their load addresses (every other byte zero),
//! with vCPU 0 entering at the kernel's load address with `x0` = the
//! device tree's address.

use rampart_abi::guest::GUEST_RAM_BASE;

use crate::manifest::{MAX_MEMORY_SIZE, MAX_VCPUS};
use crate::measure::{InitialState, Measurement, Measurer, PAGE_SIZE, VmFlags};

/// The version-2 format number.
pub const BUNDLE_VERSION_LINUX: u32 = 2;
/// Offset of the part count.
pub const PART_COUNT_OFFSET: usize = 176;
/// Offset of the reserved word after it.
pub const PART_RESERVED_OFFSET: usize = 180;
/// Offset of the part table.
pub const PART_TABLE_OFFSET: usize = 184;
/// Bytes per table entry.
pub const PART_ENTRY_LEN: usize = 32;
/// At most this many parts.
pub const MAX_PARTS: usize = 8;
/// A Linux VM's RAM is a multiple of this (its base is 2 MiB-aligned).
pub const LINUX_RAM_ALIGN: u64 = 2 << 20;
/// The largest device tree Linux accepts (`booting.rst`).
pub const MAX_DTB_LEN: u64 = 2 << 20;
/// The longest command line (arm64's `COMMAND_LINE_SIZE`, NUL excluded).
pub const MAX_CMDLINE_LEN: u64 = 2047;
/// The arm64 `Image` magic at offset 0x38 (`"ARM\x64"`).
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// The flattened device tree magic (big-endian at offset 0).
pub const FDT_MAGIC: u32 = 0xd00d_feed;

/// What a part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PartKind {
    /// An arm64 `Image`.
    Kernel = 1,
    /// The initial ramdisk.
    Initrd = 2,
    /// The kernel command line (UTF-8, no NUL; not placed).
    Cmdline = 3,
    /// The flattened device tree.
    DeviceTree = 4,
}

impl PartKind {
    /// Decodes a kind number.
    #[must_use]
    pub const fn from_u32(kind: u32) -> Option<Self> {
        match kind {
            1 => Some(PartKind::Kernel),
            2 => Some(PartKind::Initrd),
            3 => Some(PartKind::Cmdline),
            4 => Some(PartKind::DeviceTree),
            _ => None,
        }
    }

    /// Its name in messages and `rampart inspect`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            PartKind::Kernel => "kernel",
            PartKind::Initrd => "initrd",
            PartKind::Cmdline => "cmdline",
            PartKind::DeviceTree => "device tree",
        }
    }

    /// Whether it is copied into guest RAM.
    #[must_use]
    pub const fn placed(self) -> bool {
        !matches!(self, PartKind::Cmdline)
    }
}

/// One part, borrowed from the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// What it is.
    pub kind: PartKind,
    /// Guest-physical load address (0 for the command line).
    pub load: u64,
    /// Offset of its contents in the file.
    pub offset: u64,
    /// Its contents.
    pub data: &'a [u8],
}

impl Part<'_> {
    /// The guest-physical range it occupies: for the kernel up to its
    /// header's `image_size` (text, data and bss), else its length.
    #[must_use]
    pub fn footprint(&self) -> (u64, u64) {
        let len = match self.kind {
            PartKind::Kernel => image_header(self.data).map_or(self.data.len() as u64, |h| h.1),
            _ => self.data.len() as u64,
        };
        (self.load, self.load.saturating_add(len))
    }
}

/// What is wrong with one field of a part-table entry or with a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// Not a known kind.
    #[error("unknown kind {0} (1 kernel, 2 initrd, 3 cmdline, 4 device tree)")]
    UnknownKind(u32),
    /// A second part of one kind.
    #[error("a second {0} part")]
    Duplicate(&'static str),
    /// Flags not zero.
    #[error("flags are {0:#x}, expected 0")]
    Flags(u32),
    /// Contents not where they must start.
    #[error(
        "contents at {got:#x}, expected {expected:#x} (8-byte aligned, right after the previous part, in table order)"
    )]
    Offset {
        /// Declared.
        got: u64,
        /// Where the previous part (or the table) ends, aligned up to 8.
        expected: u64,
    },
    /// Empty.
    #[error("length is 0")]
    Empty,
    /// Past the end of the file.
    #[error("{length} bytes from {offset:#x} run past the end of the {file}-byte file")]
    PastEnd {
        /// Offset.
        offset: u64,
        /// Length.
        length: u64,
        /// File length.
        file: u64,
    },
    /// Padding before the part is not zero.
    #[error("padding byte at {0:#x} before the part is not zero")]
    Padding(u64),
    /// The command line is placed.
    #[error("load address {0:#x}: the command line is not placed (its load address must be 0)")]
    CmdlinePlaced(u64),
    /// The command line is not UTF-8 without NUL, or too long.
    #[error("the command line is not UTF-8 without NUL bytes of at most 2047 bytes")]
    Cmdline,
    /// A placed part outside guest RAM.
    #[error(
        "guest-physical {start:#x}..{end:#x} is not inside guest RAM {ram_start:#x}..{ram_end:#x}"
    )]
    OutsideRam {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// RAM start.
        ram_start: u64,
        /// RAM end.
        ram_end: u64,
    },
    /// Two placed parts overlap.
    #[error("guest-physical {start:#x}..{end:#x} overlaps the {other} part")]
    Overlap {
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// The other part's kind.
        other: &'static str,
    },
    /// The kernel is not a little-endian arm64 `Image`.
    #[error(
        "not a little-endian arm64 Image (magic \"ARM\\x64\" at 0x38, flags bit 0 clear, text_offset 4 KiB-aligned below 2 MiB, image_size at least the file)"
    )]
    NotImage,
    /// The kernel's load address does not match its `text_offset`.
    #[error(
        "load address {load:#x} is not a 2 MiB-aligned base + the Image's text_offset {text_offset:#x}"
    )]
    KernelLoad {
        /// Load address.
        load: u64,
        /// From the header.
        text_offset: u64,
    },
    /// The device tree's header is wrong.
    #[error(
        "not a flattened device tree of at most 2 MiB (magic 0xd00dfeed, totalsize = the part's length)"
    )]
    NotFdt,
    /// The device tree's load address is not 8-byte aligned.
    #[error("load address {0:#x} is not 8-byte aligned")]
    Unaligned(u64),
}

/// What is wrong with a version-2 bundle beyond its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    /// The part count is 0 or above 8.
    #[error("part count at offset 176 is {0}, expected 1 to 8")]
    PartCount(u32),
    /// The reserved word is not zero.
    #[error("reserved field at offset 180 is {0:#x}, expected 0")]
    Reserved(u32),
    /// The entry offset (version 1's) is not zero.
    #[error(
        "entry offset at offset 32 is {0:#x}, expected 0 in a version-2 bundle (vCPU 0 enters at the kernel)"
    )]
    EntryOffset(u64),
    /// vCPUs out of range.
    #[error("vcpus at offset 16 is {0}, expected 1 to 8")]
    Vcpus(u32),
    /// Memory size not a non-zero multiple of 2 MiB up to 64 GiB.
    #[error(
        "memory size at offset 24 is {0:#x}, expected a non-zero multiple of 2 MiB up to 64 GiB"
    )]
    MemorySize(u64),
    /// A part-table field or a part.
    #[error("part {index} ({kind}), {field} at offset {offset}: {error}")]
    Part {
        /// Its index in the table.
        index: usize,
        /// Its kind's name (or `"?"`).
        kind: &'static str,
        /// Which field.
        field: &'static str,
        /// The field's offset in the file.
        offset: usize,
        /// What is wrong.
        error: PartError,
    },
    /// A required part is missing.
    #[error("no {0} part")]
    Missing(&'static str),
    /// Bytes after the last part.
    #[error("{0} bytes follow the last part")]
    Trailing(u64),
    /// The command-line part is not what the device tree gives the kernel.
    #[error(
        "the command line part does not match the device tree's /chosen/bootargs (or the device tree is malformed)"
    )]
    Bootargs,
}

/// The value of `/chosen/bootargs` in a flattened device tree, without its
/// NUL: `Ok(None)` if absent, `Err(())` if the tree is malformed.
fn fdt_bootargs(dtb: &[u8]) -> Result<Option<&[u8]>, ()> {
    let be = |at: usize| -> Result<usize, ()> {
        let b = dtb.get(at..at.checked_add(4).ok_or(())?).ok_or(())?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let structs = be(8)?;
    let strings = be(12)?;
    let mut at = structs;
    let mut depth = 0usize;
    let mut in_chosen = false;
    loop {
        let token = be(at)?;
        at += 4;
        match token {
            1 => {
                let rest = dtb.get(at..).ok_or(())?;
                let len = rest.iter().position(|&b| b == 0).ok_or(())?;
                depth += 1;
                if depth == 2 {
                    in_chosen = &rest[..len] == b"chosen";
                }
                at = (at + len + 1).next_multiple_of(4);
            }
            2 => {
                if depth == 0 {
                    return Err(());
                }
                if depth == 2 {
                    in_chosen = false;
                }
                depth -= 1;
            }
            3 => {
                let len = be(at)?;
                let name_off = be(at + 4)?;
                let value = dtb
                    .get(at + 8..(at + 8).checked_add(len).ok_or(())?)
                    .ok_or(())?;
                let name = dtb
                    .get(strings.checked_add(name_off).ok_or(())?..)
                    .ok_or(())?;
                let name = &name[..name.iter().position(|&b| b == 0).ok_or(())?];
                if in_chosen && depth == 2 && name == b"bootargs" {
                    return match value.split_last() {
                        Some((0, text)) => Ok(Some(text)),
                        _ => Err(()),
                    };
                }
                at = (at + 8 + len).next_multiple_of(4);
            }
            4 => {}
            9 => return Ok(None),
            _ => return Err(()),
        }
    }
}

/// A validated version-2 bundle's parts and configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxBundle<'a> {
    /// Flags.
    pub flags: VmFlags,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM bytes at [`GUEST_RAM_BASE`].
    pub memory_size: u64,
    /// Parts in table order.
    pub parts: [Option<Part<'a>>; MAX_PARTS],
}

impl<'a> LinuxBundle<'a> {
    /// The part of `kind`, if any.
    #[must_use]
    pub fn part(&self, kind: PartKind) -> Option<&Part<'a>> {
        self.parts.iter().flatten().find(|p| p.kind == kind)
    }

    /// The parts in table order.
    pub fn iter(&self) -> impl Iterator<Item = &Part<'a>> {
        self.parts.iter().flatten()
    }

    /// The command line (empty without a command-line part).
    #[must_use]
    pub fn cmdline(&self) -> &'a str {
        self.part(PartKind::Cmdline)
            .and_then(|p| core::str::from_utf8(p.data).ok())
            .unwrap_or("")
    }

    /// vCPU 0's entry state: PC = the kernel, `x0` = the device tree.
    #[must_use]
    pub fn initial_state(&self) -> InitialState {
        InitialState {
            flags: self.flags,
            vcpus: self.vcpus,
            entry_pc: self.part(PartKind::Kernel).map_or(0, |p| p.load),
            x0: self.part(PartKind::DeviceTree).map_or(0, |p| p.load),
        }
    }

    /// The measurement the hypervisor computes at the first run: every
    /// page of guest RAM with the placed parts copied in, zero elsewhere.
    #[must_use]
    pub fn measure(&self) -> Measurement {
        let mut m = Measurer::new(&self.initial_state());
        let placed: heapless_parts::Placed<'_> = heapless_parts::placed(self);
        let page = PAGE_SIZE as u64;
        let mut buf = [0u8; PAGE_SIZE];
        let mut ipa = GUEST_RAM_BASE;
        let end = GUEST_RAM_BASE + self.memory_size;
        while ipa < end {
            let mut touched = false;
            for (load, data) in placed.iter().flatten() {
                let (s, e) = (*load, load + data.len() as u64);
                if e <= ipa || s >= ipa + page {
                    continue;
                }
                if !touched {
                    buf.fill(0);
                    touched = true;
                }
                let from = s.max(ipa);
                let to = e.min(ipa + page);
                #[allow(clippy::cast_possible_truncation, reason = "inside one page / part")]
                buf[(from - ipa) as usize..(to - ipa) as usize]
                    .copy_from_slice(&data[(from - s) as usize..(to - s) as usize]);
            }
            if touched {
                m.feed(ipa, &buf);
            } else {
                // No part here: zero by construction, one more page of the
                // zero run (not read).
                m.feed_zeros(ipa, 1);
            }
            ipa += page;
        }
        m.finish()
    }
}

/// The placed parts as (load address, bytes), without allocating.
mod heapless_parts {
    use super::{LinuxBundle, MAX_PARTS};
    pub type Placed<'a> = [Option<(u64, &'a [u8])>; MAX_PARTS];
    pub fn placed<'a>(b: &LinuxBundle<'a>) -> Placed<'a> {
        let mut out = [None; MAX_PARTS];
        for (slot, p) in out.iter_mut().zip(b.parts.iter()) {
            if let Some(p) = p
                && p.kind.placed()
            {
                *slot = Some((p.load, p.data));
            }
        }
        out
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// `(text_offset, image_size)` of a little-endian arm64 `Image`, or `None`.
#[must_use]
pub fn image_header(image: &[u8]) -> Option<(u64, u64)> {
    if image.len() < 64 || u32_at(image, 0x38) != IMAGE_MAGIC {
        return None;
    }
    let (mut text_offset, mut image_size, flags) =
        (u64_at(image, 8), u64_at(image, 16), u64_at(image, 24));
    if image_size == 0 {
        text_offset = 0x8_0000;
        image_size = image.len() as u64;
    }
    if flags & 1 != 0
        || !text_offset.is_multiple_of(4096)
        || text_offset >= 2 << 20
        || image_size < image.len() as u64
    {
        return None;
    }
    Some((text_offset, image_size))
}

/// Checks the header fields version 2 reads differently and the part
/// table; `bytes` is the whole file (at least the 176-byte header, whose
/// magic, version, flags and lengths the caller checked).
///
/// # Errors
///
/// The first [`LinuxError`], in file order: header fields, part count,
/// reserved word, then each table entry's kind, flags, offset (with the
/// padding before it), length, load address; then the missing parts and
/// bytes after the last part.
#[allow(clippy::too_many_lines, reason = "every check in file order")]
pub fn parse(bytes: &[u8], flags: VmFlags) -> Result<LinuxBundle<'_>, LinuxError> {
    let vcpus = u32_at(bytes, 16);
    let memory_size = u64_at(bytes, 24);
    let entry = u64_at(bytes, 32);
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(LinuxError::Vcpus(vcpus));
    }
    if memory_size == 0
        || !memory_size.is_multiple_of(LINUX_RAM_ALIGN)
        || memory_size > MAX_MEMORY_SIZE
    {
        return Err(LinuxError::MemorySize(memory_size));
    }
    if entry != 0 {
        return Err(LinuxError::EntryOffset(entry));
    }
    let file = bytes.len() as u64;
    if bytes.len() < PART_TABLE_OFFSET {
        // The caller's length check guarantees at least the header; a
        // version-2 file needs the count and reserved word too.
        return Err(LinuxError::PartCount(0));
    }
    let count = u32_at(bytes, PART_COUNT_OFFSET);
    if count == 0 || count as usize > MAX_PARTS {
        return Err(LinuxError::PartCount(count));
    }
    let reserved = u32_at(bytes, PART_RESERVED_OFFSET);
    if reserved != 0 {
        return Err(LinuxError::Reserved(reserved));
    }
    let count = count as usize;
    let table_end = (PART_TABLE_OFFSET + PART_ENTRY_LEN * count) as u64;
    if file < table_end {
        let at = PART_TABLE_OFFSET
            + PART_ENTRY_LEN * (bytes.len().saturating_sub(PART_TABLE_OFFSET) / PART_ENTRY_LEN);
        return Err(LinuxError::Part {
            index: (at - PART_TABLE_OFFSET) / PART_ENTRY_LEN,
            kind: "?",
            field: "table entry",
            offset: at,
            error: PartError::PastEnd {
                offset: at as u64,
                length: PART_ENTRY_LEN as u64,
                file,
            },
        });
    }
    let ram = (GUEST_RAM_BASE, GUEST_RAM_BASE + memory_size);
    let mut out = LinuxBundle {
        flags,
        vcpus,
        memory_size,
        parts: [None; MAX_PARTS],
    };
    let mut next = table_end;
    for index in 0..count {
        let at = PART_TABLE_OFFSET + PART_ENTRY_LEN * index;
        let fail = |kind: &'static str, field: &'static str, off: usize, error| LinuxError::Part {
            index,
            kind,
            field,
            offset: at + off,
            error,
        };
        let raw_kind = u32_at(bytes, at);
        let kind = PartKind::from_u32(raw_kind)
            .ok_or_else(|| fail("?", "kind", 0, PartError::UnknownKind(raw_kind)))?;
        let name = kind.name();
        if out.part(kind).is_some() {
            return Err(fail(name, "kind", 0, PartError::Duplicate(name)));
        }
        let part_flags = u32_at(bytes, at + 4);
        if part_flags != 0 {
            return Err(fail(name, "flags", 4, PartError::Flags(part_flags)));
        }
        let load = u64_at(bytes, at + 8);
        let offset = u64_at(bytes, at + 16);
        let length = u64_at(bytes, at + 24);
        let expected = next.next_multiple_of(8);
        if offset != expected {
            return Err(fail(
                name,
                "offset",
                16,
                PartError::Offset {
                    got: offset,
                    expected,
                },
            ));
        }
        if let Some(p) =
            (next..offset.min(file)).find(|&p| usize::try_from(p).is_ok_and(|p| bytes[p] != 0))
        {
            return Err(fail(name, "offset", 16, PartError::Padding(p)));
        }
        if length == 0 {
            return Err(fail(name, "length", 24, PartError::Empty));
        }
        if offset.checked_add(length).is_none_or(|e| e > file) {
            return Err(fail(
                name,
                "length",
                24,
                PartError::PastEnd {
                    offset,
                    length,
                    file,
                },
            ));
        }
        #[allow(clippy::cast_possible_truncation, reason = "inside the file")]
        let data = &bytes[offset as usize..(offset + length) as usize];
        let part = Part {
            kind,
            load,
            offset,
            data,
        };
        let load_error = |e| fail(name, "load address", 8, e);
        match kind {
            PartKind::Cmdline => {
                if load != 0 {
                    return Err(load_error(PartError::CmdlinePlaced(load)));
                }
                if length > MAX_CMDLINE_LEN
                    || data.contains(&0)
                    || core::str::from_utf8(data).is_err()
                {
                    return Err(fail(name, "contents", 16, PartError::Cmdline));
                }
            }
            PartKind::Kernel => {
                let (text_offset, _) = image_header(data)
                    .ok_or_else(|| fail(name, "contents", 16, PartError::NotImage))?;
                if load.wrapping_sub(text_offset) % (2 << 20) != 0 || load < text_offset {
                    return Err(load_error(PartError::KernelLoad { load, text_offset }));
                }
            }
            PartKind::DeviceTree => {
                let be = |at: usize| {
                    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
                };
                if !(40..=MAX_DTB_LEN).contains(&length)
                    || be(0) != FDT_MAGIC
                    || u64::from(be(4)) != length
                {
                    return Err(fail(name, "contents", 16, PartError::NotFdt));
                }
            }
            PartKind::Initrd => {}
        }
        if kind.placed() {
            if !load.is_multiple_of(8) {
                return Err(load_error(PartError::Unaligned(load)));
            }
            let (start, end) = part.footprint();
            if start < ram.0 || end > ram.1 || end < start {
                return Err(load_error(PartError::OutsideRam {
                    start,
                    end,
                    ram_start: ram.0,
                    ram_end: ram.1,
                }));
            }
            for other in out.iter().filter(|p| p.kind.placed()) {
                let (s, e) = other.footprint();
                if start < e && s < end {
                    return Err(load_error(PartError::Overlap {
                        start,
                        end,
                        other: other.kind.name(),
                    }));
                }
            }
        }
        out.parts[index] = Some(part);
        next = offset + length;
    }
    for kind in [PartKind::Kernel, PartKind::DeviceTree] {
        if out.part(kind).is_none() {
            return Err(LinuxError::Missing(kind.name()));
        }
    }
    if next < file {
        return Err(LinuxError::Trailing(file - next));
    }
    // The command line is not placed: it reaches the kernel (and the
    // measurement) only through the device tree, so the part must say
    // exactly what the tree does, or `inspect` would show an unmeasured
    // command line.
    let dtb = out.part(PartKind::DeviceTree).map_or(&[][..], |p| p.data);
    let cmdline = out.part(PartKind::Cmdline).map_or(&[][..], |p| p.data);
    match fdt_bootargs(dtb) {
        Ok(Some(args)) if args == cmdline => {}
        Ok(None) if cmdline.is_empty() => {}
        _ => return Err(LinuxError::Bootargs),
    }
    Ok(out)
}

/// A part to pack: kind, load address, contents.
#[derive(Clone, Copy, Debug)]
pub struct PartSpec<'a> {
    /// What it is.
    pub kind: PartKind,
    /// Guest-physical load address (0 for the command line).
    pub load: u64,
    /// Contents.
    pub data: &'a [u8],
}

/// The bytes after the 176-byte header for `parts`: the count, the
/// reserved word, the table and the contents (8-byte aligned, zero
/// padding).
#[must_use]
pub fn encode_parts(parts: &[PartSpec<'_>]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec::Vec::new();
    out.extend_from_slice(&u32::try_from(parts.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut offset = (PART_TABLE_OFFSET + PART_ENTRY_LEN * parts.len()) as u64;
    for p in parts {
        offset = offset.next_multiple_of(8);
        out.extend_from_slice(&(p.kind as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&p.load.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(p.data.len() as u64).to_le_bytes());
        offset += p.data.len() as u64;
    }
    for p in parts {
        while !(out.len() + PART_COUNT_OFFSET).is_multiple_of(8) {
            out.push(0);
        }
        out.extend_from_slice(p.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Bundle, BundleError, HEADER_LEN};
    use crate::test_fixtures::minimal_fdt as fdt;
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use ed25519_dalek::SigningKey;

    const MIB: u64 = 1 << 20;

    fn kernel() -> Vec<u8> {
        let mut k: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        k[8..16].copy_from_slice(&0u64.to_le_bytes());
        k[16..24].copy_from_slice(&0x1_0000u64.to_le_bytes());
        k[24..32].copy_from_slice(&0xau64.to_le_bytes());
        k[0x38..0x3c].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        k
    }

    fn dtb() -> Vec<u8> {
        fdt("console=ttyAMA0")
    }

    fn flags() -> VmFlags {
        VmFlags {
            protected: true,
            debug: false,
            realm: false,
        }
    }

    fn build(parts: &[PartSpec<'_>]) -> Result<Vec<u8>, BundleError> {
        Bundle::build_linux(2 * MIB, 2, flags(), parts, None)
    }

    fn good() -> Vec<u8> {
        let (k, d) = (kernel(), dtb());
        build(&[
            PartSpec {
                kind: PartKind::Kernel,
                load: GUEST_RAM_BASE,
                data: &k,
            },
            PartSpec {
                kind: PartKind::Initrd,
                load: GUEST_RAM_BASE + MIB,
                data: &[7; 333],
            },
            PartSpec {
                kind: PartKind::Cmdline,
                load: 0,
                data: b"console=ttyAMA0",
            },
            PartSpec {
                kind: PartKind::DeviceTree,
                load: GUEST_RAM_BASE + 3 * MIB / 2,
                data: &d,
            },
        ])
        .unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let bytes = good();
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(b.version, 2);
        assert_eq!(&bytes[8..12], &2u32.to_le_bytes());
        assert_eq!(&bytes[176..180], &4u32.to_le_bytes());
        let l = b.linux.unwrap();
        assert_eq!(l.cmdline(), "console=ttyAMA0");
        assert_eq!(l.part(PartKind::Kernel).unwrap().data, &kernel()[..]);
        assert_eq!(l.part(PartKind::Initrd).unwrap().data, &[7; 333][..]);
        let first = l.part(PartKind::Kernel).unwrap().offset;
        assert_eq!(first, (PART_TABLE_OFFSET + 4 * PART_ENTRY_LEN) as u64);
        for p in l.iter() {
            assert_eq!(p.offset % 8, 0);
        }
        let s = b.initial_state();
        assert_eq!(
            (s.entry_pc, s.x0),
            (GUEST_RAM_BASE, GUEST_RAM_BASE + 3 * MIB / 2)
        );
        assert_eq!(b.computed_measurement(), b.measurement);
    }

    /// The measurement is exactly the definition's: every page of RAM with
    /// the placed parts (not the command line) copied in.
    #[test]
    fn measures_every_page_with_the_parts_placed() {
        let bytes = good();
        let b = Bundle::parse(&bytes).unwrap();
        let mut ram = alloc::vec![0u8; 2 << 20];
        for p in b.linux.unwrap().iter().filter(|p| p.kind.placed()) {
            let at = usize::try_from(p.load - GUEST_RAM_BASE).unwrap();
            ram[at..at + p.data.len()].copy_from_slice(p.data);
        }
        let mut m = Measurer::new(&b.initial_state());
        for (i, page) in ram.chunks(PAGE_SIZE).enumerate() {
            m.page(
                GUEST_RAM_BASE + (i * PAGE_SIZE) as u64,
                page.try_into().unwrap(),
            )
            .unwrap();
        }
        assert_eq!(m.finish(), b.measurement);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = good();
        for len in 0..bytes.len() {
            assert!(Bundle::parse(&bytes[..len]).is_err(), "length {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Bundle::parse(&longer).is_err());
    }

    /// Flipping any byte of the header or table gives an error naming the
    /// field, or a bundle whose measurement or signature no longer holds.
    #[test]
    fn every_flipped_byte_is_caught() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let signed = Bundle::sign(&good(), &key).unwrap();
        let trusted = [key.verifying_key()];
        let table_end = PART_TABLE_OFFSET + 4 * PART_ENTRY_LEN;
        // Header, table, and a sample of every part's contents.
        let sample = (0..table_end).chain((table_end..signed.len()).step_by(97));
        for at in sample {
            let mut bad = signed.clone();
            bad[at] ^= 0x01;
            if let Ok(b) = Bundle::parse(&bad) {
                assert!(
                    b.verify(&trusted).is_err(),
                    "byte {at} flipped and still verifies"
                );
            }
        }
        assert!(Bundle::parse(&signed).unwrap().verify(&trusted).is_ok());
    }

    #[test]
    fn errors_name_the_part_field_and_offset() {
        let (k, d) = (kernel(), dtb());
        let kp = PartSpec {
            kind: PartKind::Kernel,
            load: GUEST_RAM_BASE,
            data: &k,
        };
        let dp = PartSpec {
            kind: PartKind::DeviceTree,
            load: GUEST_RAM_BASE + 3 * MIB / 2,
            data: &d,
        };
        let e = |parts: &[PartSpec<'_>]| build(parts).unwrap_err().to_string();
        assert_eq!(e(&[kp]), "no device tree part");
        assert_eq!(e(&[dp]), "no kernel part");
        assert!(
            e(&[kp, kp, dp])
                .starts_with("part 1 (kernel), kind at offset 216: a second kernel part")
        );
        let outside = PartSpec {
            load: GUEST_RAM_BASE + 2 * MIB - 8,
            ..dp
        };
        let msg = e(&[kp, outside]);
        assert!(
            msg.starts_with("part 1 (device tree), load address at offset 224:"),
            "{msg}"
        );
        assert!(msg.contains("not inside guest RAM"), "{msg}");
        let overlap = PartSpec {
            kind: PartKind::Initrd,
            load: GUEST_RAM_BASE + 0x8000,
            data: &[1; 8],
        };
        assert!(e(&[kp, overlap, dp]).contains("overlaps the kernel part"));
        let moved = PartSpec {
            load: GUEST_RAM_BASE + 0x1000,
            ..kp
        };
        assert!(e(&[moved, dp]).contains("text_offset"));
        let placed_cmdline = PartSpec {
            kind: PartKind::Cmdline,
            load: GUEST_RAM_BASE,
            data: b"x",
        };
        assert!(e(&[kp, placed_cmdline, dp]).contains("the command line is not placed"));
        let nul = PartSpec {
            kind: PartKind::Cmdline,
            load: 0,
            data: b"a\0b",
        };
        assert!(e(&[kp, nul, dp]).contains("UTF-8 without NUL"));
        let not_fdt = PartSpec {
            data: &[0; 64],
            ..dp
        };
        assert!(e(&[kp, not_fdt]).contains("not a flattened device tree"));
        let unaligned = PartSpec {
            load: GUEST_RAM_BASE + 3 * MIB / 2 + 4,
            ..dp
        };
        assert!(e(&[kp, unaligned]).contains("not 8-byte aligned"));

        // Raw table fields.
        let bytes = good();
        let mut bad = bytes.clone();
        bad[PART_COUNT_OFFSET] = 9;
        assert_eq!(
            Bundle::parse(&bad),
            Err(BundleError::Linux(LinuxError::PartCount(9)))
        );
        let mut bad = bytes.clone();
        bad[PART_RESERVED_OFFSET] = 1;
        assert_eq!(
            Bundle::parse(&bad),
            Err(BundleError::Linux(LinuxError::Reserved(1)))
        );
        let mut bad = bytes.clone();
        bad[PART_TABLE_OFFSET + PART_ENTRY_LEN] = 5;
        assert_eq!(
            Bundle::parse(&bad).unwrap_err().to_string(),
            "part 1 (?), kind at offset 216: unknown kind 5 (1 kernel, 2 initrd, 3 cmdline, 4 device tree)"
        );
        let mut bad = bytes.clone();
        bad[PART_TABLE_OFFSET + 4] = 1;
        assert!(
            Bundle::parse(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("part 0 (kernel), flags at offset 188")
        );
        let mut bad = bytes.clone();
        bad[PART_TABLE_OFFSET + 16] += 8;
        assert!(
            Bundle::parse(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("part 0 (kernel), offset at offset 200")
        );
        let mut bad = bytes.clone();
        bad[32] = 4;
        assert_eq!(
            Bundle::parse(&bad),
            Err(BundleError::Linux(LinuxError::EntryOffset(4)))
        );
        let mut bad = bytes.clone();
        bad[24..32].copy_from_slice(&(3 * MIB).to_le_bytes());
        assert_eq!(
            Bundle::parse(&bad),
            Err(BundleError::Linux(LinuxError::MemorySize(3 * MIB)))
        );
        // Non-zero padding between parts.
        let mut bad = bytes.clone();
        let l = Bundle::parse(&bytes).unwrap().linux.unwrap();
        let initrd_end = l.part(PartKind::Initrd).unwrap().offset + 333;
        bad[usize::try_from(initrd_end).unwrap()] = 1;
        assert!(
            Bundle::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("padding byte")
        );
        const { assert!(HEADER_LEN < PART_TABLE_OFFSET) };

        // The command line must be the device tree's bootargs: it is not
        // placed, so it is measured only through the tree.
        let other = PartSpec {
            kind: PartKind::Cmdline,
            load: 0,
            data: b"console=ttyAMA1",
        };
        assert_eq!(
            build(&[kp, other, dp]),
            Err(BundleError::Linux(LinuxError::Bootargs))
        );
        assert_eq!(
            build(&[kp, dp]),
            Err(BundleError::Linux(LinuxError::Bootargs))
        );
        let d2 = fdt("");
        let empty = PartSpec { data: &d2, ..dp };
        assert!(build(&[kp, empty]).is_ok());
        let mut broken = dtb();
        let n = broken.len();
        broken[n - 5] ^= 0xff; // the strings block: no "bootargs"
        let broken = PartSpec {
            data: &broken,
            ..dp
        };
        let c = PartSpec {
            kind: PartKind::Cmdline,
            load: 0,
            data: b"console=ttyAMA0",
        };
        assert_eq!(
            build(&[kp, c, broken]),
            Err(BundleError::Linux(LinuxError::Bootargs))
        );
    }

    #[test]
    fn the_realm_flag_is_measured() {
        let (k, d) = (kernel(), fdt(""));
        let parts = [
            PartSpec {
                kind: PartKind::Kernel,
                load: GUEST_RAM_BASE,
                data: &k,
            },
            PartSpec {
                kind: PartKind::DeviceTree,
                load: GUEST_RAM_BASE + 3 * MIB / 2,
                data: &d,
            },
        ];
        let plain = Bundle::build_linux(2 * MIB, 1, flags(), &parts, None).unwrap();
        let realm_flags = VmFlags {
            realm: true,
            ..flags()
        };
        let realm = Bundle::build_linux(2 * MIB, 1, realm_flags, &parts, None).unwrap();
        assert_ne!(
            Bundle::parse(&plain).unwrap().measurement,
            Bundle::parse(&realm).unwrap().measurement
        );
        // Realm without protected is refused.
        let bad = VmFlags {
            protected: false,
            ..realm_flags
        };
        assert!(Bundle::build_linux(2 * MIB, 1, bad, &parts, None).is_err());
    }
}
