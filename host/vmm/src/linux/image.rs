//! The arm64 `Image` header (Linux `Documentation/arch/arm64/booting.rst`).
//!
//! ```text
//! 0x00 code0, code1 (u32 each)   0x08 text_offset (u64, LE)
//! 0x10 image_size (u64, LE)       0x18 flags (u64, LE)
//! 0x20..0x38 reserved             0x38 magic "ARM\x64"   0x3c PE offset
//! ```
//!
//! `image_size` is the memory the kernel needs from its load address
//! (text, data, bss and its early page tables), at least the file's size.
//! A header with `image_size` = 0 is a kernel older than 3.17: text offset
//! 0x80000, size unknown (the file's).

use anyhow::{Result, bail};

/// The magic at offset 0x38.
pub const MAGIC: u32 = 0x644d_5241;
/// The header's size.
pub const HEADER_SIZE: usize = 64;

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the load address from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (>= the file's size).
    pub image_size: u64,
    /// Flags: bit 0 big-endian, bits 2:1 page size, bit 3 placed anywhere.
    pub flags: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Parses and checks the header of `image` (the whole file).
///
/// # Errors
///
/// Not an arm64 `Image` (short, no magic), a big-endian kernel, a text
/// offset that is not 4 KiB-aligned or beyond 2 MiB, or an `image_size`
/// smaller than the file.
pub fn parse(image: &[u8]) -> Result<Header> {
    if image.len() < HEADER_SIZE {
        bail!(
            "{} bytes: too short for an arm64 Image header ({HEADER_SIZE} bytes)",
            image.len()
        );
    }
    let magic = u32::from_le_bytes([image[0x38], image[0x39], image[0x3a], image[0x3b]]);
    if magic != MAGIC {
        bail!(
            "not an arm64 Image: no \"ARM\\x64\" magic at offset 0x38 (found {magic:#010x}; a compressed vmlinuz.gz or an ELF vmlinux must be unpacked/converted first)"
        );
    }
    let mut text_offset = le64(image, 0x08);
    let mut image_size = le64(image, 0x10);
    let flags = le64(image, 0x18);
    if image_size == 0 {
        // Before Linux 3.17: fixed text offset, size unknown.
        text_offset = 0x8_0000;
        image_size = image.len() as u64;
    }
    if flags & 1 != 0 {
        bail!("a big-endian kernel (Image flags bit 0): guests are little-endian");
    }
    if !text_offset.is_multiple_of(4096) || text_offset >= 2 << 20 {
        bail!("text_offset {text_offset:#x} is not 4 KiB-aligned below 2 MiB");
    }
    if image_size < image.len() as u64 {
        bail!(
            "image_size {image_size:#x} is smaller than the file ({:#x} bytes)",
            image.len()
        );
    }
    Ok(Header {
        text_offset,
        image_size,
        flags,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal Image: header fields as given, `len` bytes.
    pub fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(HEADER_SIZE)];
        b[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b #64
        b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&MAGIC.to_le_bytes());
        b
    }

    #[test]
    fn debian_header() {
        // Debian 7.2's cloud Image: text offset 0, 0x25c0000 bytes, LE,
        // 4 KiB pages, anywhere.
        let h = parse(&image(0, 0x25c_0000, 0xa, 4096)).unwrap();
        assert_eq!(
            h,
            Header {
                text_offset: 0,
                image_size: 0x25c_0000,
                flags: 0xa
            }
        );
    }

    #[test]
    fn old_kernels_get_the_fixed_offset() {
        let h = parse(&image(0, 0, 0, 8192)).unwrap();
        assert_eq!((h.text_offset, h.image_size), (0x8_0000, 8192));
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        let e = |b: &[u8]| format!("{:#}", parse(b).unwrap_err());
        assert!(e(&[0; 10]).contains("too short"));
        let mut gz = image(0, 0x10000, 0, 4096);
        gz[0x38] = 0x1f;
        assert!(e(&gz).contains("not an arm64 Image"));
        assert!(e(&image(0, 0x10000, 1, 4096)).contains("big-endian"));
        assert!(e(&image(0x123, 0x10000, 0, 4096)).contains("text_offset"));
        assert!(e(&image(2 << 20, 0x10000, 0, 4096)).contains("text_offset"));
        assert!(e(&image(0, 0x100, 0, 4096)).contains("smaller than the file"));
    }
}
