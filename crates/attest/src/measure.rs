//! The measurement of a VM's initial state.

use core::fmt;

use crate::sha256::{Compress, Sha256};

use crate::hex::Hex;

/// The granule the measurement is taken in (4 KiB, the stage-2 page size).
pub const PAGE_SIZE: usize = 4096;

/// The first bytes hashed into every measurement (version 1).
pub const MEASUREMENT_DOMAIN: &[u8] = b"rampart.measurement.v1\0";

/// A SHA-256 measurement: of a VM's initial state ([`Measurer`]), or of the
/// hypervisor itself (a report's claim 4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Measurement(pub [u8; 32]);

impl Measurement {
    /// Plain SHA-256 of `data`: for claim 4 of a report, the hypervisor's
    /// measurement of its own image. (Not a VM measurement: use
    /// [`Measurer`].)
    #[must_use]
    pub fn sha256(data: &[u8]) -> Self {
        Measurement(Sha256::digest_with(crate::sha256::portable_compress, data))
    }

    /// [`sha256`](Self::sha256) with the block function `compress` (the
    /// same digest, computed differently: see [`crate::sha256`]).
    #[must_use]
    pub fn sha256_with(compress: Compress, data: &[u8]) -> Self {
        Measurement(Sha256::digest_with(compress, data))
    }

    /// The 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Measurement {
    /// 64 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Hex(&self.0), f)
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measurement({})", Hex(&self.0))
    }
}

/// A VM's flags, as measured, signed (bundle offset 12) and reported (claim
/// 5): bit 0 = protected, bit 1 = debug, bit 2 = realm (guest ABI RSI; only
/// with bit 0), every other bit reserved (zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VmFlags {
    /// The host may not read or write the VM's memory or registers.
    pub protected: bool,
    /// The VM was configured for debugging (a verifier should not trust it
    /// with production secrets).
    pub debug: bool,
    /// issue 12: the VM's guest ABI is the Realm Services Interface (a
    /// realm VM, `VM_CREATE` config bit 2), not KVM/pKVM's calls. Measured,
    /// so an image signed for one ABI never runs under the other.
    pub realm: bool,
}

impl VmFlags {
    /// Bit 0: protected.
    pub const PROTECTED: u32 = 1 << 0;
    /// Bit 1: debug.
    pub const DEBUG: u32 = 1 << 1;
    /// Bit 2: realm (only with [`VmFlags::PROTECTED`]).
    pub const REALM: u32 = 1 << 2;
    /// Every defined bit.
    pub const KNOWN: u32 = Self::PROTECTED | Self::DEBUG | Self::REALM;

    /// The encoded bits.
    #[must_use]
    pub const fn bits(self) -> u32 {
        (if self.protected { Self::PROTECTED } else { 0 })
            | (if self.debug { Self::DEBUG } else { 0 })
            | (if self.realm { Self::REALM } else { 0 })
    }

    /// Decodes bits; `None` if a reserved bit is set, or realm without
    /// protected.
    #[must_use]
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::KNOWN != 0 || (bits & Self::REALM != 0 && bits & Self::PROTECTED == 0) {
            return None;
        }
        Some(VmFlags {
            protected: bits & Self::PROTECTED != 0,
            debug: bits & Self::DEBUG != 0,
            realm: bits & Self::REALM != 0,
        })
    }
}

/// The measured part of a VM's configuration and vCPU 0's entry registers
/// (every other register starts at zero and is not measured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InitialState {
    /// The VM's flags.
    pub flags: VmFlags,
    /// The number of vCPUs the VM was created with.
    pub vcpus: u32,
    /// vCPU 0's first PC (guest-physical).
    pub entry_pc: u64,
    /// vCPU 0's first `x0`.
    pub x0: u64,
}

/// Pages fed to a [`Measurer`] in a way the definition does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    /// The guest-physical address is not 4096-byte aligned.
    #[error("page at guest-physical {ipa:#x} is not 4096-byte aligned")]
    Unaligned {
        /// The address given.
        ipa: u64,
    },
    /// Pages must come in strictly ascending guest-physical order.
    #[error(
        "page at guest-physical {ipa:#x} does not follow the previous page at {previous:#x}: pages must be measured in strictly ascending order"
    )]
    OutOfOrder {
        /// The address given.
        ipa: u64,
        /// The previous page's address.
        previous: u64,
    },
}

/// Computes a measurement incrementally, the way the hypervisor walks a
/// VM's memory: [`new`](Self::new) with the configuration, one
/// [`page`](Self::page) per mapped page in ascending order, then
/// [`finish`](Self::finish).
#[derive(Clone)]
pub struct Measurer {
    hash: Sha256,
    previous: Option<u64>,
    pages: u64,
}

impl Measurer {
    /// Starts a measurement: hashes the domain string, the flags, the vCPU
    /// count and vCPU 0's entry registers.
    #[must_use]
    pub fn new(state: &InitialState) -> Self {
        Self::with_compress(state, crate::sha256::portable_compress)
    }

    /// [`new`](Self::new), hashing with the block function `compress` (the
    /// same measurement, computed differently: see [`crate::sha256`]).
    #[must_use]
    pub fn with_compress(state: &InitialState, compress: Compress) -> Self {
        let mut hash = Sha256::with(compress);
        hash.update(MEASUREMENT_DOMAIN);
        hash.update(&state.flags.bits().to_le_bytes());
        hash.update(&state.vcpus.to_le_bytes());
        hash.update(&state.entry_pc.to_le_bytes());
        hash.update(&state.x0.to_le_bytes());
        Measurer {
            hash,
            previous: None,
            pages: 0,
        }
    }

    /// Adds the page mapped at guest-physical `ipa`.
    ///
    /// # Errors
    ///
    /// [`MeasureError`] if `ipa` is unaligned or not above the previous
    /// page's; the measurement is then unchanged.
    pub fn page(&mut self, ipa: u64, contents: &[u8; PAGE_SIZE]) -> Result<(), MeasureError> {
        if !ipa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(MeasureError::Unaligned { ipa });
        }
        if let Some(previous) = self.previous
            && ipa <= previous
        {
            return Err(MeasureError::OutOfOrder { ipa, previous });
        }
        self.feed(ipa, contents);
        Ok(())
    }

    /// Adds a page whose order the caller guarantees.
    pub(crate) fn feed(&mut self, ipa: u64, contents: &[u8; PAGE_SIZE]) {
        self.hash.update(&ipa.to_le_bytes());
        self.hash.update(contents);
        self.previous = Some(ipa);
        self.pages += 1;
    }

    /// How many pages have been measured.
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.pages
    }

    /// The measurement.
    #[must_use]
    pub fn finish(self) -> Measurement {
        Measurement(self.hash.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn state() -> InitialState {
        InitialState {
            flags: VmFlags {
                protected: true,
                debug: false,
                realm: false,
            },
            vcpus: 2,
            entry_pc: 0x8000_0000,
            x0: 0x10_0000,
        }
    }

    #[test]
    fn matches_the_written_definition() {
        let page_a = [0xa5; PAGE_SIZE];
        let page_b = [0x3c; PAGE_SIZE];
        let mut m = Measurer::new(&state());
        m.page(0x8000_0000, &page_a).unwrap();
        m.page(0x8000_2000, &page_b).unwrap();
        assert_eq!(m.pages(), 2);

        use sha2::Digest;
        let mut raw = sha2::Sha256::new();
        raw.update(b"rampart.measurement.v1\0");
        raw.update([1, 0, 0, 0]);
        raw.update([2, 0, 0, 0]);
        raw.update([0, 0, 0, 0x80, 0, 0, 0, 0]);
        raw.update([0, 0, 0x10, 0, 0, 0, 0, 0]);
        raw.update([0, 0, 0, 0x80, 0, 0, 0, 0]);
        raw.update(page_a);
        raw.update([0, 0x20, 0, 0x80, 0, 0, 0, 0]);
        raw.update(page_b);
        assert_eq!(m.finish().0, <[u8; 32]>::from(raw.finalize()));
    }

    #[test]
    fn known_answer() {
        // Computed independently (Python hashlib) from the written definition;
        // changing it must be a deliberate v2.
        let mut m = Measurer::new(&state());
        m.page(0x8000_0000, &[0; PAGE_SIZE]).unwrap();
        assert_eq!(
            m.finish().to_string(),
            "93b2da394a28c9e61e069cac05193daf73bca9da37f3d0b8ec9d71ec25e64b5b"
        );
    }

    #[test]
    fn rejects_out_of_order_and_unaligned_pages() {
        let page = [0; PAGE_SIZE];
        let mut m = Measurer::new(&state());
        m.page(0x8000_1000, &page).unwrap();
        let before = m.clone().finish();
        assert_eq!(
            m.page(0x8000_1000, &page),
            Err(MeasureError::OutOfOrder {
                ipa: 0x8000_1000,
                previous: 0x8000_1000
            })
        );
        assert_eq!(
            m.page(0x8000_0000, &page),
            Err(MeasureError::OutOfOrder {
                ipa: 0x8000_0000,
                previous: 0x8000_1000
            })
        );
        assert_eq!(
            m.page(0x8000_2001, &page),
            Err(MeasureError::Unaligned { ipa: 0x8000_2001 })
        );
        assert_eq!(m.pages(), 1);
        assert_eq!(m.finish(), before, "a rejected page changes nothing");
    }

    #[test]
    fn every_input_matters() {
        let base = state();
        let measure = |s: &InitialState, ipa: u64, byte: u8| {
            let mut m = Measurer::new(s);
            m.page(ipa, &[byte; PAGE_SIZE]).unwrap();
            m.finish()
        };
        let reference = measure(&base, 0x8000_0000, 0);
        let variants = [
            measure(
                &InitialState {
                    flags: VmFlags {
                        protected: false,
                        debug: false,
                        realm: false,
                    },
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(
                &InitialState {
                    flags: VmFlags {
                        protected: true,
                        debug: true,
                        realm: false,
                    },
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(&InitialState { vcpus: 3, ..base }, 0x8000_0000, 0),
            measure(
                &InitialState {
                    entry_pc: 0x8000_0004,
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(
                &InitialState {
                    x0: 0x20_0000,
                    ..base
                },
                0x8000_0000,
                0,
            ),
            measure(&base, 0x8000_1000, 0),
            measure(&base, 0x8000_0000, 1),
            Measurer::new(&base).finish(),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, reference, "variant {i}");
        }
    }

    #[test]
    fn plain_digest() {
        assert_eq!(
            Measurement::sha256(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn flags_round_trip_and_reject_reserved_bits() {
        for bits in [0, 1, 2, 3, 5, 7] {
            assert_eq!(VmFlags::from_bits(bits).unwrap().bits(), bits);
        }
        // Realm (bit 2) only with protected (bit 0); bit 3 is reserved.
        assert_eq!(VmFlags::from_bits(4), None);
        assert_eq!(VmFlags::from_bits(6), None);
        assert_eq!(VmFlags::from_bits(8), None);
        assert_eq!(VmFlags::from_bits(0x8000_0001), None);
    }

    #[test]
    fn the_realm_bit_is_measured() {
        // issue 12: the same image and entry state as a realm VM and as a
        // pKVM VM measure differently.
        let pkvm = InitialState {
            flags: VmFlags { protected: true, debug: false, realm: false },
            vcpus: 1,
            entry_pc: 0x8000_0000,
            x0: 0x10_0000,
        };
        let realm = InitialState { flags: VmFlags { realm: true, ..pkvm.flags }, ..pkvm };
        assert_ne!(Measurer::new(&pkvm).finish(), Measurer::new(&realm).finish());
    }
}
