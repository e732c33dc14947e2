//! Rampart's verified-boot and attestation formats: one definition that the offline signer, the VMM and the hypervisor share.
//!
//! A protected VM's initial state is **measured** (SHA-256 over its
//! configuration, entry registers and every page mapped at its first run),
//! the measurement is **signed** offline into a **bundle** (`rampart sign`),
//! and the hypervisor refuses the VM's first run unless a trusted key signed
//! what it measured itself. At run time a guest can ask for an
//! **attestation report** (COSE_Sign1 over a CBOR claims map, signed by a key
//! derived from the device secret, which the host never sees) and for
//! **sealing keys** derived from the device secret and its measurement.
//! `docs/formats.md` specifies every byte; this crate is the code both sides
//! run, so they cannot disagree.
//!
//! # Design principles
//! - **One source of truth.** The signer's [`measure_image`] and the
//!   hypervisor's incremental [`Measurer`] are the same code path over the
//!   same bytes; the bundle layout, the report's claim keys and the HKDF
//!   labels are constants here and nowhere else.
//! - **Usable at EL2.** `#![no_std]` with `alloc`, `#![forbid(unsafe_code)]`,
//!   no hardware access, no randomness (Ed25519 signing is deterministic), no
//!   panics on any input. It builds for `aarch64-unknown-none-softfloat`.
//! - **Untrusted bytes are allegations.** Bundles and reports are parsed
//!   into typed values; every malformed input gets a specific error naming
//!   the field and, for bundles, its offset ([`BundleError`],
//!   [`ReportError`]).
//! - **Secrets are wiped.** [`DeviceSecret`], [`AttestationKey`] and
//!   [`SealingKey`] zeroize on drop and never print their contents.
//!   (The `hkdf`/`hmac` crates do not zeroize their own intermediate state;
//!   it lives on the caller's stack.)
//! - **Domain separation.** Every hash, signature and derivation starts with
//!   a versioned, NUL-terminated or fixed-length label
//!   ([`MEASUREMENT_DOMAIN`], [`BUNDLE_SIGNATURE_DOMAIN`],
//!   [`ATTESTATION_KEY_INFO`], [`SEALING_KEY_INFO`]).
//!
//! # The measurement
//! ```text
//! M = SHA-256( "rampart.measurement.v2\0"
//!            || flags    u32 LE   (bit 0 protected, bit 1 debug, bit 2 realm)
//!            || vcpus    u32 LE
//!            || entry_pc u64 LE   (vCPU 0's first PC)
//!            || x0       u64 LE   (vCPU 0's first x0)
//!            || for every guest page mapped at first run, in strictly
//!               ascending guest-physical order, one record per page with
//!               a non-zero byte and one per maximal run of zero pages:
//!                  1 u64 LE || ipa u64 LE || the page's 4096 bytes
//!                  2 u64 LE || ipa u64 LE || count u64 LE )
//! ```
//! The hypervisor feeds [`Measurer`] from its own view of the VM (its
//! configuration, the registers `VCPU_SET_REGS` set and the pages in the
//! VM's stage 2) just before the first `VCPU_RUN`; it never trusts a value
//! the host computed.
//!
//! # How a bundle becomes a VM
//! [`measure_image`] predicts that measurement from a [`Manifest`] and an
//! image, following the guest machine layout of
//! [`rampart_abi::guest::layout`]: the VMM loads the image at
//! [`GUEST_RAM_BASE`] and donates `memory_size` bytes — the image, then
//! zero-filled pages — as one contiguous range starting there (every page of
//! it mapped at first run, nothing else mapped); vCPU 0 starts at
//! `GUEST_RAM_BASE + entry_offset` with `x0 = memory_size`; the VM is
//! created with `vcpus` vCPUs and the manifest's flags.
//!
//! # Hypervisor-side use
//! ```
//! use rampart_attest::*;
//! # let (config_flags, vcpus, pc, x0) = (VmFlags { protected: true, debug: false, realm: false }, 1, GUEST_RAM_BASE, 4096);
//! # let pages: [(u64, [u8; PAGE_SIZE]); 1] = [(GUEST_RAM_BASE, [0; PAGE_SIZE])];
//! # let signing = SigningKey::from_bytes(&[7; 32]);
//! # let trusted = [signing.verifying_key()];
//! # let mut m = Measurer::new(&InitialState { flags: config_flags, vcpus, entry_pc: pc, x0 });
//! # m.page(GUEST_RAM_BASE, &[0; PAGE_SIZE]).unwrap();
//! # let signature = sign_measurement(&m.finish(), &signing).to_bytes();
//! # let signer = trusted[0].to_bytes();
//! let mut measurer = Measurer::new(&InitialState { flags: config_flags, vcpus, entry_pc: pc, x0 });
//! for (ipa, page) in &pages {
//!     measurer.page(*ipa, page)?; // ascending order, else MeasureError
//! }
//! let measurement = measurer.finish();
//! verify_measurement(&measurement, &signer, &signature, &trusted)?;
//!
//! let secret = DeviceSecret::from_bytes(&[0x5a; 32]);
//! let report = build_report(
//!     &Claims {
//!         measurement,
//!         nonce: b"guest nonce",
//!         hypervisor_version: "rampart 0.1.0",
//!         hypervisor_measurement: Measurement([0; 32]),
//!         flags: config_flags,
//!     },
//!     &secret.attestation_key(),
//! )?;
//! assert!(report.len() <= MAX_REPORT_SIZE);
//! let sealing = secret.sealing_key(&measurement, b"disk")?;
//! # let _ = sealing.as_bytes();
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod bundle;
pub mod cca;
mod declared;
mod hex;
mod keys;
pub mod linux;
mod manifest;
mod measure;
mod report;
pub mod sha256;
#[cfg(any(test, feature = "test-fixtures"))]
#[doc(hidden)]
pub mod test_fixtures;

pub use bundle::{
    BUNDLE_MAGIC, BUNDLE_SIGNATURE_DOMAIN, BUNDLE_VERSION, Bundle, BundleError, BundleRef,
    HEADER_LEN, SignatureError, offset, sign_measurement, verify, verify_measurement,
};
pub use cca::{
    CcaError, CcaExpected, CcaPublicKey, CcaToken, PlatformClaims, PlatformKey, RealmClaims,
    RealmKey, build_cca_token, is_cca_token, verify_cca_token,
};
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
pub use keys::{
    ATTESTATION_KEY_INFO, AttestationKey, DeviceSecret, LabelTooLong, MAX_LABEL_LEN,
    SEALING_KEY_INFO, SealingKey,
};
pub use linux::{BUNDLE_VERSION_LINUX, LinuxBundle, LinuxError, Part, PartError, PartKind, PartSpec};
pub use manifest::{MAX_MEMORY_SIZE, MAX_VCPUS, Manifest, ManifestError, measure_image};
pub use declared::{DeclareError, DeclaredZero};
pub use measure::{
    InitialState, KnownZero, MEASUREMENT_DOMAIN, MeasureError, Measurement, Measurer, PAGE_SIZE,
    RECORD_CONTENT, RECORD_ZERO, VmFlags, is_zero_page,
};
pub use rampart_abi::guest::GUEST_RAM_BASE;
pub use report::{
    ClaimError, Claims, MAX_NONCE_LEN, MAX_REPORT_SIZE, MAX_VERSION_LEN, Report, ReportError,
    build_report, claim, verify_report,
};
