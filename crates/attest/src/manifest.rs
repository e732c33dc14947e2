//! What the signer promises about a VM besides its image.

use rampart_abi::guest::GUEST_RAM_BASE;

use crate::measure::{InitialState, Measurement, Measurer, PAGE_SIZE, VmFlags};

/// The most vCPUs a VM may have (`rampart_abi::host::MAX_VCPUS`).
#[allow(clippy::cast_possible_truncation, reason = "MAX_VCPUS is 8")]
pub const MAX_VCPUS: u32 = rampart_abi::host::MAX_VCPUS as u32;

/// The largest guest RAM a manifest may ask for: 64 GiB. (The hypervisor
/// may refuse less if its IPA space is smaller.)
pub const MAX_MEMORY_SIZE: u64 = 64 << 30;

/// How a VM is configured and entered; signed together with its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// Bytes of guest RAM from [`GUEST_RAM_BASE`]: a multiple of 4096, above
    /// zero, at most [`MAX_MEMORY_SIZE`], at least the image's length.
    pub memory_size: u64,
    /// vCPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// vCPU 0's entry point as an offset into the image: 4-byte aligned,
    /// inside the image.
    pub entry_offset: u64,
    /// Protected and debug flags.
    pub flags: VmFlags,
}

/// A manifest field out of range, alone or against the image's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// `vcpus` is 0 or above [`MAX_VCPUS`].
    #[error("vcpus is {0}, expected 1 to 8")]
    Vcpus(u32),
    /// `memory_size` is zero.
    #[error("memory size is 0")]
    MemoryZero,
    /// `memory_size` is not a multiple of 4096.
    #[error("memory size {0:#x} is not a multiple of 4096")]
    MemoryUnaligned(u64),
    /// `memory_size` is above [`MAX_MEMORY_SIZE`].
    #[error("memory size {0:#x} is above the maximum of 64 GiB")]
    MemoryTooLarge(u64),
    /// The image does not fit in guest RAM.
    #[error("the {image_len}-byte image does not fit in {memory_size:#x} bytes of memory")]
    ImageLargerThanMemory {
        /// The image's length.
        image_len: u64,
        /// The manifest's memory size.
        memory_size: u64,
    },
    /// The image is empty.
    #[error("the image is empty")]
    EmptyImage,
    /// `entry_offset` is not 4-byte aligned.
    #[error("entry offset {0:#x} is not 4-byte aligned")]
    EntryUnaligned(u64),
    /// `entry_offset` is not inside the image.
    #[error("entry offset {entry_offset:#x} is outside the {image_len}-byte image")]
    EntryOutsideImage {
        /// The manifest's entry offset.
        entry_offset: u64,
        /// The image's length.
        image_len: u64,
    },
}

impl ManifestError {
    /// The manifest field at fault (`"vcpus"`, `"memory_size"`,
    /// `"entry_offset"`, or `"image"` when the image itself is empty).
    #[must_use]
    pub const fn field(&self) -> &'static str {
        match self {
            ManifestError::Vcpus(_) => "vcpus",
            ManifestError::MemoryZero
            | ManifestError::MemoryUnaligned(_)
            | ManifestError::MemoryTooLarge(_)
            | ManifestError::ImageLargerThanMemory { .. } => "memory_size",
            ManifestError::EmptyImage => "image",
            ManifestError::EntryUnaligned(_) | ManifestError::EntryOutsideImage { .. } => {
                "entry_offset"
            }
        }
    }
}

impl Manifest {
    /// Checks every field, and the fields against an image of `image_len`
    /// bytes, in the order the variants of [`ManifestError`] are listed.
    ///
    /// # Errors
    ///
    /// The first [`ManifestError`] found.
    pub const fn validate(&self, image_len: u64) -> Result<(), ManifestError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ManifestError::Vcpus(self.vcpus));
        }
        if self.memory_size == 0 {
            return Err(ManifestError::MemoryZero);
        }
        if !self.memory_size.is_multiple_of(PAGE_SIZE as u64) {
            return Err(ManifestError::MemoryUnaligned(self.memory_size));
        }
        if self.memory_size > MAX_MEMORY_SIZE {
            return Err(ManifestError::MemoryTooLarge(self.memory_size));
        }
        if image_len > self.memory_size {
            return Err(ManifestError::ImageLargerThanMemory {
                image_len,
                memory_size: self.memory_size,
            });
        }
        if image_len == 0 {
            return Err(ManifestError::EmptyImage);
        }
        if !self.entry_offset.is_multiple_of(4) {
            return Err(ManifestError::EntryUnaligned(self.entry_offset));
        }
        if self.entry_offset >= image_len {
            return Err(ManifestError::EntryOutsideImage {
                entry_offset: self.entry_offset,
                image_len,
            });
        }
        Ok(())
    }

    /// The initial state the VMM sets up for this manifest: vCPU 0 at
    /// `GUEST_RAM_BASE + entry_offset` with `x0 = memory_size`. Meaningful
    /// only for a manifest that [`validate`](Self::validate)s.
    #[must_use]
    pub const fn initial_state(&self) -> InitialState {
        InitialState {
            flags: self.flags,
            vcpus: self.vcpus,
            entry_pc: GUEST_RAM_BASE.wrapping_add(self.entry_offset),
            x0: self.memory_size,
        }
    }

    /// Pages of guest RAM.
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.memory_size / PAGE_SIZE as u64
    }
}

/// The measurement the hypervisor will compute for `image` loaded as
/// `manifest` says (see the crate documentation): the image's pages at
/// [`GUEST_RAM_BASE`] onwards, its last page zero-padded, then zero pages up
/// to `memory_size` (one zero run, in constant time: the cost follows the
/// image, not `memory_size`).
///
/// # Errors
///
/// [`ManifestError`] if the manifest is out of range or does not fit the
/// image.
pub fn measure_image(manifest: &Manifest, image: &[u8]) -> Result<Measurement, ManifestError> {
    manifest.validate(image.len() as u64)?;
    let mut measurer = Measurer::new(&manifest.initial_state());
    let mut ipa = GUEST_RAM_BASE;
    let (full, rest) = image.as_chunks::<PAGE_SIZE>();
    for page in full {
        measurer.feed(ipa, page);
        ipa += PAGE_SIZE as u64;
    }
    if !rest.is_empty() {
        let mut last = [0; PAGE_SIZE];
        last[..rest.len()].copy_from_slice(rest);
        measurer.feed(ipa, &last);
        ipa += PAGE_SIZE as u64;
    }
    // The rest of RAM is zero by construction: one zero run, not read.
    let end = GUEST_RAM_BASE + manifest.memory_size;
    if ipa < end {
        measurer.feed_zeros(ipa, (end - ipa) / PAGE_SIZE as u64);
    }
    Ok(measurer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            memory_size: 4 * PAGE_SIZE as u64,
            vcpus: 1,
            entry_offset: 0,
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = manifest();
        assert_eq!(ok.validate(100), Ok(()));
        assert_eq!(ok.validate(4 * 4096), Ok(()));
        let cases: [(Manifest, u64, ManifestError); 9] = [
            (Manifest { vcpus: 0, ..ok }, 100, ManifestError::Vcpus(0)),
            (Manifest { vcpus: 9, ..ok }, 100, ManifestError::Vcpus(9)),
            (
                Manifest {
                    memory_size: 0,
                    ..ok
                },
                100,
                ManifestError::MemoryZero,
            ),
            (
                Manifest {
                    memory_size: 4097,
                    ..ok
                },
                100,
                ManifestError::MemoryUnaligned(4097),
            ),
            (
                Manifest {
                    memory_size: MAX_MEMORY_SIZE + 4096,
                    ..ok
                },
                100,
                ManifestError::MemoryTooLarge(MAX_MEMORY_SIZE + 4096),
            ),
            (
                ok,
                4 * 4096 + 1,
                ManifestError::ImageLargerThanMemory {
                    image_len: 4 * 4096 + 1,
                    memory_size: 4 * 4096,
                },
            ),
            (ok, 0, ManifestError::EmptyImage),
            (
                Manifest {
                    entry_offset: 2,
                    ..ok
                },
                100,
                ManifestError::EntryUnaligned(2),
            ),
            (
                Manifest {
                    entry_offset: 100,
                    ..ok
                },
                100,
                ManifestError::EntryOutsideImage {
                    entry_offset: 100,
                    image_len: 100,
                },
            ),
        ];
        for (m, len, error) in cases {
            assert_eq!(m.validate(len), Err(error), "{m:?} with {len} bytes");
        }
        assert_eq!(ManifestError::Vcpus(0).field(), "vcpus");
        assert_eq!(ManifestError::MemoryZero.field(), "memory_size");
        assert_eq!(ManifestError::EntryUnaligned(2).field(), "entry_offset");
    }

    #[test]
    fn image_measurement_is_what_the_hypervisor_sees() {
        let m = Manifest {
            entry_offset: 8,
            vcpus: 2,
            ..manifest()
        };
        let image: alloc::vec::Vec<u8> = (0..5000u32).map(|i| (i % 251).to_le_bytes()[0]).collect();
        let mut page0 = [0; PAGE_SIZE];
        page0.copy_from_slice(&image[..PAGE_SIZE]);
        let mut page1 = [0; PAGE_SIZE];
        page1[..5000 - PAGE_SIZE].copy_from_slice(&image[PAGE_SIZE..]);

        let mut hyp = Measurer::new(&InitialState {
            flags: m.flags,
            vcpus: 2,
            entry_pc: GUEST_RAM_BASE + 8,
            x0: 4 * 4096,
        });
        hyp.page(GUEST_RAM_BASE, &page0).unwrap();
        hyp.page(GUEST_RAM_BASE + 0x1000, &page1).unwrap();
        hyp.page(GUEST_RAM_BASE + 0x2000, &[0; PAGE_SIZE]).unwrap();
        hyp.page(GUEST_RAM_BASE + 0x3000, &[0; PAGE_SIZE]).unwrap();
        assert_eq!(measure_image(&m, &image), Ok(hyp.finish()));
    }

    #[test]
    fn image_measurement_depends_on_the_manifest() {
        let image = [0x11u8; 64];
        let base = measure_image(&manifest(), &image).unwrap();
        for other in [
            Manifest {
                memory_size: 8 * 4096,
                ..manifest()
            },
            Manifest {
                vcpus: 2,
                ..manifest()
            },
            Manifest {
                entry_offset: 4,
                ..manifest()
            },
            Manifest {
                flags: VmFlags::default(),
                ..manifest()
            },
        ] {
            assert_ne!(measure_image(&other, &image).unwrap(), base, "{other:?}");
        }
        assert_eq!(
            measure_image(
                &Manifest {
                    vcpus: 0,
                    ..manifest()
                },
                &image
            ),
            Err(ManifestError::Vcpus(0))
        );
    }
}
