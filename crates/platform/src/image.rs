//! The arm64 Linux `Image` header (Linux `Documentation/arch/arm64/booting.rst`).
//!
//! ```text
//! offset  size  field
//! 0x00    4     code0 (executable)
//! 0x04    4     code1
//! 0x08    8     text_offset: image load offset from a 2 MiB-aligned base
//! 0x10    8     image_size: effective image size, including bss
//! 0x18    8     flags: bit 0 big-endian, bits 1-2 page size, bit 3 placement
//! 0x20    24    reserved
//! 0x38    4     magic "ARM\x64"
//! 0x3c    4     reserved (PE header offset)
//! ```

use alloc::format;

use crate::{BLOCK_2M, BootError, MemRange};

/// Size of the header.
pub const HEADER_SIZE: usize = 64;
/// `"ARM\x64"` read as a little-endian u32.
pub const MAGIC: u32 = 0x644d_5241;

/// A validated `Image` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Load offset from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the image occupies once running, bss included.
    pub image_size: u64,
    /// The header's flags.
    pub flags: u64,
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

impl ImageHeader {
    /// Parses and validates the header of the image loaded at `address`.
    ///
    /// # Errors
    ///
    /// [`BootError::BadHostImage`] if the bytes are not an arm64 `Image`
    /// header that a little-endian kernel at `address` could boot from.
    pub fn parse(address: u64, bytes: &[u8]) -> Result<Self, BootError> {
        let bad = |reason: alloc::string::String| BootError::BadHostImage { address, reason };
        if bytes.len() < HEADER_SIZE {
            return Err(bad(format!(
                "only {} bytes, a header needs {HEADER_SIZE}",
                bytes.len()
            )));
        }
        let magic = u32::from_le_bytes([bytes[0x38], bytes[0x39], bytes[0x3a], bytes[0x3b]]);
        if magic != MAGIC {
            return Err(bad(format!(
                "no arm64 Image magic at offset 0x38 (found {magic:#010x}, want {MAGIC:#010x})"
            )));
        }
        let header = ImageHeader {
            text_offset: le64(bytes, 0x08),
            image_size: le64(bytes, 0x10),
            flags: le64(bytes, 0x18),
        };
        if header.image_size == 0 {
            return Err(bad(
                "image_size is 0 (kernels before Linux 3.17 are not supported)".into(),
            ));
        }
        if header.flags & 1 != 0 {
            return Err(bad(
                "the image is big-endian; Rampart boots little-endian hosts".into(),
            ));
        }
        if address
            .checked_sub(header.text_offset)
            .is_none_or(|base| base % BLOCK_2M != 0)
        {
            return Err(bad(format!(
                "loaded at {address:#x}, but text_offset {:#x} needs a 2 MiB-aligned base",
                header.text_offset
            )));
        }
        Ok(header)
    }

    /// The memory the running image occupies when loaded at `address`.
    #[must_use]
    pub fn footprint(&self, address: u64) -> Option<MemRange> {
        MemRange::from_base_size(address, self.image_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[0x38..0x3c].copy_from_slice(&MAGIC.to_le_bytes());
        h
    }

    #[test]
    fn accepts_a_linux_image() {
        let h = ImageHeader::parse(0x4200_0000, &header(0, 0x200_0000, 0xa)).unwrap();
        assert_eq!(h.image_size, 0x200_0000);
        assert_eq!(
            h.footprint(0x4200_0000),
            MemRange::new(0x4200_0000, 0x4400_0000)
        );
        ImageHeader::parse(0x4208_0000, &header(0x8_0000, 0x1000, 0)).unwrap();
    }

    #[test]
    fn refuses_bad_headers() {
        let cases: [(u64, &[u8], &str); 6] = [
            (0x4200_0000, &[0u8; 10], "only 10 bytes"),
            (0x4200_0000, &[0u8; 64], "no arm64 Image magic"),
            (0x4200_0000, &header(0, 0, 0), "image_size is 0"),
            (0x4200_0000, &header(0, 0x1000, 1), "big-endian"),
            (0x4210_0000, &header(0, 0x1000, 0), "2 MiB-aligned"),
            (0x1000, &header(0x8_0000, 0x1000, 0), "2 MiB-aligned"),
        ];
        for (addr, bytes, why) in cases {
            match ImageHeader::parse(addr, bytes) {
                Err(BootError::BadHostImage { reason, address }) => {
                    assert_eq!(address, addr);
                    assert!(reason.contains(why), "{reason} lacks {why}");
                }
                other => panic!("{why}: got {other:?}"),
            }
        }
    }
}
