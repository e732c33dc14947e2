//! Host → hypervisor calls: `HVC #0` with an SMCCC fast-call ID in `w0`.
//!
//! Rampart's host calls sit in the vendor-specific hypervisor range
//! (owning entity 6), function numbers 0x8000 and up, 64-bit convention:
//! `0xC600_8000 + n`. The numbers below 0x8000 are left free for the
//! KVM-compatible guest interface, whose IDs a later guest ABI reuses.
//!
//! Arguments are in `x1`..`x6`; the result is in `x0` (`SUCCESS` or a
//! negative [`Error`](crate::Error) code) with values in `x1`..`x3`.

use crate::smccc::{fast_call_id, owner};

/// The major version of the host ABI. Bumped on incompatible change.
pub const ABI_VERSION_MAJOR: u64 = 0;
/// The minor version of the host ABI. Bumped when calls are added.
pub const ABI_VERSION_MINOR: u64 = 10;

/// First function number of Rampart's host calls.
pub const HOST_FUNCTION_BASE: u16 = 0x8000;

/// A host call, decoded from its function ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HostCall {
    /// `RAMPART_HOST_VERSION`: no arguments. Returns `x0 = SUCCESS`,
    /// `x1 = ABI major`, `x2 = ABI minor`.
    Version = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE),
    /// `RAMPART_HOST_FEATURES`: `x1` = a function ID. Returns `x0 = SUCCESS`
    /// if the host may call it, `NOT_SUPPORTED` otherwise.
    Features = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 1),
    /// `RAMPART_HOST_SHARE_HYP`: `x1` = physical address (page-aligned),
    /// `x2` = number of pages. The host keeps the pages and lends them to
    /// the hypervisor, which maps them. Returns `x0 = SUCCESS`.
    ShareHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 2),
    /// `RAMPART_HOST_UNSHARE_HYP`: `x1`, `x2` as for share. Ends the loan;
    /// `BUSY` while the hypervisor has a page pinned.
    UnshareHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 3),
    /// `RAMPART_HOST_DONATE_HYP`: `x1`, `x2` as for share. The pages become
    /// the hypervisor's and leave the host's stage 2.
    DonateHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 4),
    /// `RAMPART_HOST_RECLAIM_HYP`: `x1`, `x2` as for share. Pages the host
    /// donated come back to it, zeroed. Never the hypervisor's own carve-out.
    ReclaimHyp = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 5),
    /// `RAMPART_HOST_VM_CREATE`: `x1` = physical address of the metadata
    /// pages the host donates, `x2` = how many, `x3` = [`VmConfig`] bits.
    /// Returns `x1` = the VM handle.
    VmCreate = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x10),
    /// `RAMPART_HOST_VM_DESTROY`: `x1` = VM handle.
    VmDestroy = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x11),
    /// `RAMPART_HOST_VCPU_CREATE`: `x1` = VM handle, `x2` = vCPU index.
    VcpuCreate = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x12),
    /// `RAMPART_HOST_VM_DONATE`: `x1` = VM handle, `x2` = host physical
    /// address, `x3` = pages, `x4` = guest-physical address.
    VmDonate = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x13),
    /// `RAMPART_HOST_VM_SHARE`: as `VM_DONATE`, but the host keeps the pages
    /// and lends them (non-protected VMs only).
    VmShare = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x14),
    /// `RAMPART_HOST_VM_DONATE_ZEROED` (issue 16, new in 0.9): as
    /// `VM_DONATE` (`x1` = VM handle, `x2` = host physical address, `x3` =
    /// pages, at most [`DONATE_ZEROED_MAX_PAGES`], `x4` = guest-physical
    /// address), plus `x5` = flags, all reserved (must be 0). The hypervisor
    /// zeroes the pages (and cleans them to the point of coherency) after
    /// the host lost them and before the guest can map them, so the host
    /// need not write them and nothing it wrote there reaches the guest.
    VmDonateZeroed = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x22),
    /// `RAMPART_HOST_VM_DECLARE_ZERO` (issue 16, new in 0.10): `x1` = VM
    /// handle, `x2` = guest-physical address (page-aligned), `x3` = pages
    /// (at least 1), `x4` = flags, all reserved (must be 0). Before a
    /// protected VM's first run: the range is guest RAM the host gives
    /// later (on the guest's first touch, `EXIT_MEMORY_FAULT`), and the
    /// first run measures each of its pages that nothing maps then as a
    /// page of zeros, as if the host had donated it zeroed. Every page a
    /// protected VM gets after its first run is zeroed by the hypervisor,
    /// so the guest reads zeros wherever it first touches such a page.
    VmDeclareZero = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x23),
    /// `RAMPART_HOST_VCPU_SET_REGS`: `x1` = VM handle, `x2` = vCPU index,
    /// `x3` = entry PC, `x4` = initial `x0`. Before the vCPU's first run.
    VcpuSetRegs = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x15),
    /// `RAMPART_HOST_VCPU_RUN`: `x1` = VM handle, `x2` = vCPU index, `x3` =
    /// the value of an MMIO read the previous exit asked for. Returns an
    /// exit record: `x1` = [`ExitReason`], `x2`..`x4` its details.
    VcpuRun = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x16),
    /// `RAMPART_HOST_VCPU_INJECT`: `x1` = VM handle, `x2` = vCPU index,
    /// `x3` = virtual interrupt ID, `x4` = [`inject`] flags (0: an edge).
    VcpuInject = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x17),
    /// `RAMPART_HOST_VM_SET_SIGNATURE`: `x1` = VM handle, `x2`..`x5` = the
    /// signer's Ed25519 public key, `x6`..`x13` = the Ed25519 signature over
    /// the VM's measurement (32 and 64 bytes, little-endian words). Before
    /// the VM's first run.
    VmSetSignature = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x18),
    /// `RAMPART_HOST_ATTESTATION_KEY`: returns `x1`..`x4` = the hypervisor's
    /// public attestation key (Ed25519, 32 bytes, little-endian words).
    AttestationKey = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x19),
    /// `RAMPART_HOST_VM_LIST`: `x1` = a VM handle, or 0 to start. Returns
    /// `x1` = the next live VM's handle in slot order, or 0 when there is
    /// none (so a VMM can find, and destroy, VMs a killed VMM left behind).
    VmList = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x1A),
    /// `RAMPART_HOST_VM_IMPORT_BEGIN` (issue 14, migration; destination):
    /// no arguments. Returns `x1`, `x2` = a fresh 16-byte challenge
    /// (little-endian words) that the source's `VM_EXPORT` must bind. A
    /// challenge is spent by the import that completes with it; at most
    /// four are outstanding (a fifth replaces the oldest).
    /// `NOT_SUPPORTED` without a migration secret.
    VmImportBegin = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x28),
    /// `RAMPART_HOST_VM_EXPORT` (issue 14, migration; source): `x1` = VM
    /// handle, `x2` = buffer (host-owned pages, page-aligned), `x3` = its
    /// pages (2..=16), `x4`, `x5` = the destination's challenge, `x6`..`x9`
    /// = the destination's identity (its attestation public key). The first
    /// call stops the VM for good; each call writes the next whole records
    /// of the stream into the buffer. Returns `x1` = bytes written, `x2` = 1
    /// when the stream is complete: the VM is then destroyed (its pages
    /// zeroed and returned, its handle dead).
    VmExport = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x29),
    /// `RAMPART_HOST_VM_IMPORT` (issue 14, migration; destination): `x1` =
    /// metadata start, `x2` = metadata pages (as `VM_CREATE`), `x3` = the
    /// address of the stream's start in host-owned memory (any alignment),
    /// `x4` = its bytes (at least the preamble and header record; at most
    /// 64 KiB). Returns `x1` = the new VM's
    /// handle (it cannot run until its import completes), `x2` = bytes
    /// consumed.
    VmImport = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x2A),
    /// `RAMPART_HOST_VM_IMPORT_DATA` (issue 14, migration; destination):
    /// `x1` = VM handle (from `VM_IMPORT`), `x2` = the address of the next
    /// records in host-owned memory (any alignment), `x3` = their bytes (at
    /// most 64 KiB). Opens every whole record there.
    /// Returns `x1` = bytes consumed, `x2` = 1 when the end record was
    /// accepted (the VM may run). A refused record ends the import: the VM
    /// is destroyed (its pages zeroed and returned).
    VmImportData = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x2B),
    /// `RAMPART_HOST_VM_EVICT`: `x1` = VM handle, `x2` = guest address
    /// (page-aligned) of a page the host donated to the VM, `x3` = the
    /// sealed page (host-owned exclusively, not the guest page) that
    /// receives the 4096 bytes of ciphertext. Returns `x1` = the page's new
    /// version, `x2`, `x3` = the 16-byte tag (little-endian words). The
    /// guest page is unmapped, zeroed and the host's again.
    VmEvict = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x20),
    /// `RAMPART_HOST_VM_RESTORE`: `x1` = VM handle, `x2` = evicted guest
    /// address, `x3` = sealed page (host-owned, read only), `x4` = fresh
    /// page (host-owned exclusively, not `x3`), `x5` = version, `x6`, `x7`
    /// = tag. On success the fresh page holds the plaintext, is the VM's
    /// and is mapped at `x2`; on any error nothing changed.
    VmRestore = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x21),
    /// `RAMPART_HOST_VCPU_HOST_CALL_GET` (issue 12, realms): `x1` = VM
    /// handle, `x2` = vCPU index, `x3` = first register (0, 8, 16 or 24).
    /// After an [`ExitReason::HostCall`] of that vCPU, returns `x1`..`x8` =
    /// the answer's `gprs[first..first + 8]` (as the guest passed them
    /// until the host sets them; 0 past `gprs[30]`). `DENIED` if the vCPU
    /// has no host call pending.
    VcpuHostCallGet = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x30),
    /// `RAMPART_HOST_VCPU_HOST_CALL_SET` (issue 12, realms): `x1` = VM
    /// handle, `x2` = vCPU index, `x3` = first register (0, 8, 16 or 24),
    /// `x4`..`x11` = the values of the answer's `gprs[first..first + 8]`
    /// (past `gprs[30]` ignored). The next `VCPU_RUN` of the vCPU writes
    /// the answer's 31 registers (and nothing else) into the guest's
    /// `RsiHostCall` structure. `DENIED` if no host call is pending.
    VcpuHostCallSet = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0x31),
    /// `RAMPART_HOST_ORACLE_CHECK`: test builds only (hypervisor feature
    /// `oracle`): no arguments. Runs the oracle's correspondence check now
    /// and returns `x1` = violations found since boot (specification and
    /// correspondence), `x2` = host and guest events the specification has
    /// checked since boot. `NOT_SUPPORTED` in every other build.
    OracleCheck = fast_call_id(true, owner::VENDOR_HYPERVISOR, HOST_FUNCTION_BASE + 0xF00),
}

impl HostCall {
    /// Every host call, in ID order.
    pub const ALL: [HostCall; 28] = [
        HostCall::Version,
        HostCall::Features,
        HostCall::ShareHyp,
        HostCall::UnshareHyp,
        HostCall::DonateHyp,
        HostCall::ReclaimHyp,
        HostCall::VmCreate,
        HostCall::VmDestroy,
        HostCall::VcpuCreate,
        HostCall::VmDonate,
        HostCall::VmShare,
        HostCall::VcpuSetRegs,
        HostCall::VcpuRun,
        HostCall::VcpuInject,
        HostCall::VmSetSignature,
        HostCall::AttestationKey,
        HostCall::VmList,
        HostCall::VmImportBegin,
        HostCall::VmExport,
        HostCall::VmImport,
        HostCall::VmImportData,
        HostCall::VmEvict,
        HostCall::VmRestore,
        HostCall::VmDonateZeroed,
        HostCall::VmDeclareZero,
        HostCall::VcpuHostCallGet,
        HostCall::VcpuHostCallSet,
        HostCall::OracleCheck,
    ];

    /// The function ID placed in `w0`.
    #[must_use]
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The stable name used in `docs/abi.md`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            HostCall::Version => "RAMPART_HOST_VERSION",
            HostCall::Features => "RAMPART_HOST_FEATURES",
            HostCall::ShareHyp => "RAMPART_HOST_SHARE_HYP",
            HostCall::UnshareHyp => "RAMPART_HOST_UNSHARE_HYP",
            HostCall::DonateHyp => "RAMPART_HOST_DONATE_HYP",
            HostCall::ReclaimHyp => "RAMPART_HOST_RECLAIM_HYP",
            HostCall::VmCreate => "RAMPART_HOST_VM_CREATE",
            HostCall::VmDestroy => "RAMPART_HOST_VM_DESTROY",
            HostCall::VcpuCreate => "RAMPART_HOST_VCPU_CREATE",
            HostCall::VmDonate => "RAMPART_HOST_VM_DONATE",
            HostCall::VmShare => "RAMPART_HOST_VM_SHARE",
            HostCall::VcpuSetRegs => "RAMPART_HOST_VCPU_SET_REGS",
            HostCall::VcpuRun => "RAMPART_HOST_VCPU_RUN",
            HostCall::VcpuInject => "RAMPART_HOST_VCPU_INJECT",
            HostCall::VmSetSignature => "RAMPART_HOST_VM_SET_SIGNATURE",
            HostCall::AttestationKey => "RAMPART_HOST_ATTESTATION_KEY",
            HostCall::VmList => "RAMPART_HOST_VM_LIST",
            HostCall::VmImportBegin => "RAMPART_HOST_VM_IMPORT_BEGIN",
            HostCall::VmExport => "RAMPART_HOST_VM_EXPORT",
            HostCall::VmImport => "RAMPART_HOST_VM_IMPORT",
            HostCall::VmImportData => "RAMPART_HOST_VM_IMPORT_DATA",
            HostCall::VmEvict => "RAMPART_HOST_VM_EVICT",
            HostCall::VmRestore => "RAMPART_HOST_VM_RESTORE",
            HostCall::VmDonateZeroed => "RAMPART_HOST_VM_DONATE_ZEROED",
            HostCall::VmDeclareZero => "RAMPART_HOST_VM_DECLARE_ZERO",
            HostCall::VcpuHostCallGet => "RAMPART_HOST_VCPU_HOST_CALL_GET",
            HostCall::VcpuHostCallSet => "RAMPART_HOST_VCPU_HOST_CALL_SET",
            HostCall::OracleCheck => "RAMPART_HOST_ORACLE_CHECK",
        }
    }
}

impl TryFrom<u32> for HostCall {
    type Error = crate::Error;

    fn try_from(id: u32) -> Result<Self, crate::Error> {
        crate::id_table::sorted_id_table!(SORTED, HostCall);
        crate::id_table::find(&SORTED, id).ok_or(crate::Error::NotSupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_in_the_vendor_hypervisor_range() {
        assert_eq!(HostCall::Version.id(), 0xC600_8000);
        assert_eq!(HostCall::Features.id(), 0xC600_8001);
        for call in HostCall::ALL {
            assert_eq!(crate::smccc::owner_of(call.id()), owner::VENDOR_HYPERVISOR);
            assert_eq!(HostCall::try_from(call.id()), Ok(call));
        }
    }

    #[test]
    fn unknown_ids_are_refused() {
        for id in [
            0,
            0xC600_0000,
            0xC600_8006,
            0xC600_801B,
            0xC600_8EFF,
            0xC600_8F01,
            0x8600_8000,
            u32::MAX,
        ] {
            assert_eq!(HostCall::try_from(id), Err(crate::Error::NotSupported));
        }
    }
}

/// Size of a page in the host memory calls.
pub const PAGE_SIZE: u64 = 4096;

/// A range of whole pages named by a host call: `x1` = physical address,
/// `x2` = number of pages. Decoding guarantees it is page-aligned, not
/// empty, and does not wrap around the 64-bit address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    start: u64,
    pages: u64,
}

impl PageRange {
    /// Validates `x1` and `x2`.
    ///
    /// # Errors
    ///
    /// `InvalidParameter` if the address is not page-aligned, the count is
    /// zero, or the range wraps around.
    pub fn new(start: u64, pages: u64) -> Result<Self, crate::Error> {
        let aligned = start.is_multiple_of(PAGE_SIZE);
        let fits = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|bytes| start.checked_add(bytes))
            .is_some();
        if !aligned || pages == 0 || !fits {
            return Err(crate::Error::InvalidParameter);
        }
        Ok(PageRange { start, pages })
    }

    /// The first byte.
    #[must_use]
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// The number of pages.
    #[must_use]
    pub const fn pages(&self) -> u64 {
        self.pages
    }

    /// One past the last byte (cannot overflow, checked at construction).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.start + self.pages * PAGE_SIZE
    }
}

/// A host call with its arguments decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRequest {
    /// See [`HostCall::Version`].
    Version,
    /// See [`HostCall::OracleCheck`].
    OracleCheck,
    /// See [`HostCall::Features`]: the function ID asked about.
    Features(u32),
    /// See [`HostCall::ShareHyp`].
    ShareHyp(PageRange),
    /// See [`HostCall::UnshareHyp`].
    UnshareHyp(PageRange),
    /// See [`HostCall::DonateHyp`].
    DonateHyp(PageRange),
    /// See [`HostCall::ReclaimHyp`].
    ReclaimHyp(PageRange),
    /// See [`HostCall::VmCreate`].
    VmCreate {
        /// The metadata pages the host donates.
        metadata: PageRange,
        /// Protection and vCPU count.
        config: VmConfig,
    },
    /// See [`HostCall::VmDestroy`].
    VmDestroy(VmHandle),
    /// See [`HostCall::VcpuCreate`].
    VcpuCreate(VcpuRef),
    /// See [`HostCall::VmDonate`].
    VmDonate {
        /// The VM.
        vm: VmHandle,
        /// Host pages to give.
        pages: PageRange,
        /// Where the guest sees them (page-aligned).
        guest_address: u64,
    },
    /// See [`HostCall::VmDonateZeroed`] (issue 16): a `VM_DONATE` whose
    /// pages the hypervisor zeroes.
    VmDonateZeroed {
        /// The VM.
        vm: VmHandle,
        /// Host pages to give (at most [`DONATE_ZEROED_MAX_PAGES`]).
        pages: PageRange,
        /// Where the guest sees them (page-aligned).
        guest_address: u64,
    },
    /// See [`HostCall::VmDeclareZero`] (issue 16): guest RAM the first
    /// run measures as zeros where nothing maps it.
    VmDeclareZero {
        /// The VM.
        vm: VmHandle,
        /// First guest-physical address (page-aligned).
        guest_address: u64,
        /// How many pages (at least 1; the range does not wrap).
        pages: u64,
    },
    /// See [`HostCall::VmShare`].
    VmShare {
        /// The VM.
        vm: VmHandle,
        /// Host pages to lend.
        pages: PageRange,
        /// Where the guest sees them (page-aligned).
        guest_address: u64,
    },
    /// See [`HostCall::VcpuSetRegs`].
    VcpuSetRegs {
        /// The vCPU.
        vcpu: VcpuRef,
        /// Entry point.
        pc: u64,
        /// Initial `x0`.
        x0: u64,
    },
    /// See [`HostCall::VcpuRun`].
    VcpuRun {
        /// The vCPU.
        vcpu: VcpuRef,
        /// The value of the MMIO read the previous exit asked for.
        mmio_read_value: u64,
    },
    /// See [`HostCall::VcpuInject`].
    VcpuInject {
        /// The vCPU.
        vcpu: VcpuRef,
        /// The virtual interrupt ID (SGI, PPI or SPI: below 1020).
        intid: u32,
        /// [`inject::LEVEL`]: the guest's EOI of this interrupt ends its
        /// run with [`ExitReason::Eoi`].
        level: bool,
    },
    /// See [`HostCall::VmSetSignature`].
    VmSetSignature {
        /// The VM.
        vm: VmHandle,
        /// The signer's Ed25519 public key.
        signer: [u8; 32],
        /// The Ed25519 signature over the measurement.
        signature: [u8; 64],
    },
    /// See [`HostCall::AttestationKey`].
    AttestationKey,
    /// See [`HostCall::VmList`]: the handle to continue after (0 = start).
    VmList(u64),
    /// See [`HostCall::VmImportBegin`].
    VmImportBegin,
    /// See [`HostCall::VmExport`].
    VmExport {
        /// The VM.
        vm: VmHandle,
        /// Host pages the records are written into.
        buffer: PageRange,
        /// The destination's challenge.
        challenge: [u8; 16],
        /// The destination's identity.
        destination: [u8; 32],
    },
    /// See [`HostCall::VmImport`].
    VmImport {
        /// The metadata pages the host donates.
        metadata: PageRange,
        /// Where the stream's start is in host memory (any alignment).
        address: u64,
        /// Its bytes.
        bytes: u64,
    },
    /// See [`HostCall::VmImportData`].
    VmImportData {
        /// The VM being imported.
        vm: VmHandle,
        /// Where the next records are in host memory (any alignment).
        address: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// See [`HostCall::VmEvict`].
    VmEvict {
        /// The VM.
        vm: VmHandle,
        /// The guest page to evict (page-aligned).
        guest_address: u64,
        /// The host page that receives the ciphertext (page-aligned).
        sealed: u64,
    },
    /// See [`HostCall::VmRestore`].
    VmRestore {
        /// The VM.
        vm: VmHandle,
        /// The evicted guest page (page-aligned).
        guest_address: u64,
        /// The host page holding the ciphertext (page-aligned).
        sealed: u64,
        /// The host page that receives the plaintext and becomes the VM's
        /// (page-aligned).
        fresh: u64,
        /// The version `VM_EVICT` returned.
        version: u64,
        /// The tag `VM_EVICT` returned.
        tag: [u8; 16],
    },
    /// See [`HostCall::VcpuHostCallGet`].
    VcpuHostCallGet {
        /// The vCPU.
        vcpu: VcpuRef,
        /// The first register (0, 8, 16 or 24).
        first: u64,
    },
    /// See [`HostCall::VcpuHostCallSet`].
    VcpuHostCallSet {
        /// The vCPU.
        vcpu: VcpuRef,
        /// The first register (0, 8, 16 or 24).
        first: u64,
        /// `gprs[first..first + 8]` of the answer.
        values: [u64; 8],
    },}

/// The most pages one `VM_DONATE_ZEROED` may give (2 MiB): the zeroing
/// and cleaning is done with interrupts masked, so each call's work is
/// bounded (about 0.3 million instructions at EL2); a larger range takes
/// several calls.
pub const DONATE_ZEROED_MAX_PAGES: u64 = 512;

/// The most pages a migration call's buffer may have.
pub const MIGRATE_BUFFER_MAX_PAGES: u64 = 16;

/// `bytes` stream bytes at `address` (1 to [`MIGRATE_BUFFER_MAX_PAGES`]
/// pages' worth, not wrapping): `(address, bytes)`.
fn stream_bytes(address: u64, bytes: u64) -> Result<(u64, u64), crate::Error> {
    if bytes == 0 || bytes > MIGRATE_BUFFER_MAX_PAGES * PAGE_SIZE || address.checked_add(bytes).is_none() {
        return Err(crate::Error::InvalidParameter);
    }
    Ok((address, bytes))
}

/// A page address argument: `InvalidParameter` unless page-aligned.
fn page_aligned(address: u64) -> Result<u64, crate::Error> {
    if address.is_multiple_of(PAGE_SIZE) { Ok(address) } else { Err(crate::Error::InvalidParameter) }
}

/// Packs little-endian words into bytes (the way 32- and 64-byte values
/// travel in registers).
#[must_use]
pub fn words_to_bytes<const N: usize>(words: &[u64]) -> [u8; N] {
    let mut out = [0u8; N];
    for (chunk, word) in out.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Splits bytes into little-endian words (the inverse of [`words_to_bytes`]).
#[must_use]
pub fn bytes_to_words<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(b);
    }
    out
}

impl HostRequest {
    /// Decodes the registers of an `HVC #0`: `regs[0]` is `x0` (only `w0`,
    /// the function ID, is read), `regs[1..]` are `x1`.. .
    ///
    /// # Errors
    ///
    /// `NotSupported` for an unknown function ID, `InvalidParameter` for
    /// malformed arguments.
    pub fn decode(regs: &[u64; 18]) -> Result<Self, crate::Error> {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "SMCCC function IDs are w0 and w1"
        )]
        let (function, w1) = (regs[0] as u32, regs[1] as u32);
        let range = || PageRange::new(regs[1], regs[2]);
        let vcpu = || VcpuRef::new(VmHandle(regs[1]), regs[2]);
        let guest_address = || {
            if regs[4].is_multiple_of(PAGE_SIZE) {
                Ok(regs[4])
            } else {
                Err(crate::Error::InvalidParameter)
            }
        };
        Ok(match HostCall::try_from(function)? {
            HostCall::Version => HostRequest::Version,
            HostCall::Features => HostRequest::Features(w1),
            HostCall::ShareHyp => HostRequest::ShareHyp(range()?),
            HostCall::UnshareHyp => HostRequest::UnshareHyp(range()?),
            HostCall::DonateHyp => HostRequest::DonateHyp(range()?),
            HostCall::ReclaimHyp => HostRequest::ReclaimHyp(range()?),
            HostCall::VmCreate => HostRequest::VmCreate {
                metadata: range()?,
                config: VmConfig::decode(regs[3])?,
            },
            HostCall::VmDestroy => HostRequest::VmDestroy(VmHandle(regs[1])),
            HostCall::VcpuCreate => HostRequest::VcpuCreate(vcpu()?),
            HostCall::VmDonate => HostRequest::VmDonate {
                vm: VmHandle(regs[1]),
                pages: PageRange::new(regs[2], regs[3])?,
                guest_address: guest_address()?,
            },
            HostCall::VmDonateZeroed => HostRequest::VmDonateZeroed {
                vm: VmHandle(regs[1]),
                pages: PageRange::new(regs[2], regs[3])
                    .ok()
                    .filter(|p| p.pages() <= DONATE_ZEROED_MAX_PAGES && regs[5] == 0)
                    .ok_or(crate::Error::InvalidParameter)?,
                guest_address: guest_address()?,
            },
            HostCall::VmDeclareZero => {
                let (guest_address, pages) = (regs[2], regs[3]);
                let fits = pages
                    .checked_mul(PAGE_SIZE)
                    .and_then(|bytes| guest_address.checked_add(bytes))
                    .is_some();
                if !guest_address.is_multiple_of(PAGE_SIZE) || pages == 0 || !fits || regs[4] != 0 {
                    return Err(crate::Error::InvalidParameter);
                }
                HostRequest::VmDeclareZero { vm: VmHandle(regs[1]), guest_address, pages }
            }
            HostCall::VmShare => HostRequest::VmShare {
                vm: VmHandle(regs[1]),
                pages: PageRange::new(regs[2], regs[3])?,
                guest_address: guest_address()?,
            },
            HostCall::VcpuSetRegs => HostRequest::VcpuSetRegs {
                vcpu: vcpu()?,
                pc: regs[3],
                x0: regs[4],
            },
            HostCall::VcpuRun => HostRequest::VcpuRun {
                vcpu: vcpu()?,
                mmio_read_value: regs[3],
            },
            HostCall::VcpuInject => HostRequest::VcpuInject {
                vcpu: vcpu()?,
                intid: u32::try_from(regs[3])
                    .ok()
                    .filter(|&i| i < 1020)
                    .ok_or(crate::Error::InvalidParameter)?,
                level: match regs[4] {
                    0 => false,
                    inject::LEVEL => true,
                    _ => return Err(crate::Error::InvalidParameter),
                },
            },
            HostCall::VmSetSignature => HostRequest::VmSetSignature {
                vm: VmHandle(regs[1]),
                signer: words_to_bytes(&regs[2..6]),
                signature: words_to_bytes(&regs[6..14]),
            },
            HostCall::AttestationKey => HostRequest::AttestationKey,
            HostCall::VmList => HostRequest::VmList(regs[1]),
            HostCall::VmImportBegin => HostRequest::VmImportBegin,
            HostCall::VmExport => HostRequest::VmExport {
                vm: VmHandle(regs[1]),
                buffer: PageRange::new(regs[2], regs[3])
                    .ok()
                    .filter(|b| (2..=MIGRATE_BUFFER_MAX_PAGES).contains(&b.pages()))
                    .ok_or(crate::Error::InvalidParameter)?,
                challenge: words_to_bytes(&regs[4..6]),
                destination: words_to_bytes(&regs[6..10]),
            },
            HostCall::VmImport => {
                let (address, bytes) = stream_bytes(regs[3], regs[4])?;
                HostRequest::VmImport {
                    metadata: range()?,
                    address,
                    bytes,
                }
            }
            HostCall::VmImportData => {
                let (address, bytes) = stream_bytes(regs[2], regs[3])?;
                HostRequest::VmImportData {
                    vm: VmHandle(regs[1]),
                    address,
                    bytes,
                }
            }
            HostCall::VmEvict => HostRequest::VmEvict {
                vm: VmHandle(regs[1]),
                guest_address: page_aligned(regs[2])?,
                sealed: page_aligned(regs[3])?,
            },
            HostCall::VmRestore => HostRequest::VmRestore {
                vm: VmHandle(regs[1]),
                guest_address: page_aligned(regs[2])?,
                sealed: page_aligned(regs[3])?,
                fresh: page_aligned(regs[4])?,
                version: regs[5],
                tag: words_to_bytes(&regs[6..8]),
            },
            HostCall::VcpuHostCallGet => HostRequest::VcpuHostCallGet {
                vcpu: vcpu()?,
                first: host_call_first(regs[3])?,
            },
            HostCall::VcpuHostCallSet => {
                let mut values = [0u64; 8];
                values.copy_from_slice(&regs[4..12]);
                HostRequest::VcpuHostCallSet {
                    vcpu: vcpu()?,
                    first: host_call_first(regs[3])?,
                    values,
                }
            }
            HostCall::OracleCheck => HostRequest::OracleCheck,
        })
    }
}

/// The first register of `VCPU_HOST_CALL_GET`/`SET`: 0, 8, 16 or 24.
fn host_call_first(first: u64) -> Result<u64, crate::Error> {
    if first < crate::rsi::host_call::GPRS as u64 && first.is_multiple_of(8) {
        Ok(first)
    } else {
        Err(crate::Error::InvalidParameter)
    }
}

/// The most vCPUs a VM may have.
pub const MAX_VCPUS: u64 = 8;

/// A VM handle as the host holds it: `(generation << 32) | (0x1000 +
/// slot)`. Only the hypervisor makes them; a stale or forged handle is
/// refused with `INVALID_PARAMETER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmHandle(pub u64);

/// A vCPU of a VM: handle plus an index below [`MAX_VCPUS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VcpuRef {
    /// The VM.
    pub vm: VmHandle,
    /// The vCPU's index in it.
    pub index: usize,
}

impl VcpuRef {
    /// Validates the index (not whether the vCPU exists).
    ///
    /// # Errors
    ///
    /// `InvalidParameter` if `index` is not below [`MAX_VCPUS`].
    pub fn new(vm: VmHandle, index: u64) -> Result<Self, crate::Error> {
        if index >= MAX_VCPUS {
            return Err(crate::Error::InvalidParameter);
        }
        Ok(VcpuRef {
            vm,
            index: usize::try_from(index).map_err(|_| crate::Error::InvalidParameter)?,
        })
    }
}

/// `VM_CREATE`'s `x3`: bit 0 = protected; bit 1 = debug (measured and
/// reported, so a verifier can refuse it); bit 2 = realm (the guest ABI is
/// RSI, [`crate::rsi`], through `SMC`; only with bit 0); bits 15:8 = the
/// number of vCPUs (1 to [`MAX_VCPUS`]); every other bit must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The host may not read or write the VM's memory or registers.
    pub protected: bool,
    /// The VM is configured for debugging.
    pub debug: bool,
    /// How many vCPUs the VM may have.
    pub max_vcpus: u64,
}

impl VmConfig {
    /// Bit 2: a realm VM (guest ABI RSI over SMC instead of KVM/pKVM over
    /// HVC); only for a protected VM.
    pub const REALM: u64 = 4;

    /// Whether `x3` of `VM_CREATE` asks for a realm VM (bit 2). Decoded
    /// apart from [`VmConfig::decode`] so that the struct stays as it is.
    ///
    /// # Errors
    ///
    /// `InvalidParameter` for the realm bit without the protected bit.
    pub const fn decode_realm(bits: u64) -> Result<bool, crate::Error> {
        let realm = bits & Self::REALM != 0;
        if realm && bits & Self::PROTECTED == 0 {
            return Err(crate::Error::InvalidParameter);
        }
        Ok(realm)
    }
}

impl VmConfig {
    /// Bit 0: a protected VM.
    pub const PROTECTED: u64 = 1;
    /// Bit 1: a debug VM.
    pub const DEBUG: u64 = 2;

    /// Encodes for `x3`.
    #[must_use]
    pub const fn encode(&self) -> u64 {
        (self.max_vcpus << 8)
            | if self.protected { Self::PROTECTED } else { 0 }
            | if self.debug { Self::DEBUG } else { 0 }
    }

    /// Decodes `x3`.
    ///
    /// # Errors
    ///
    /// `InvalidParameter` for reserved bits or a vCPU count out of range.
    pub fn decode(bits: u64) -> Result<Self, crate::Error> {
        let max_vcpus = (bits >> 8) & 0xff;
        if bits & !0xff07 != 0 || max_vcpus == 0 || max_vcpus > MAX_VCPUS || Self::decode_realm(bits).is_err() {
            return Err(crate::Error::InvalidParameter);
        }
        Ok(VmConfig {
            protected: bits & Self::PROTECTED != 0,
            debug: bits & Self::DEBUG != 0,
            max_vcpus,
        })
    }

    /// Metadata pages `VM_CREATE` needs at least: one for the VM, one per
    /// vCPU, and [`MIN_STAGE2_PAGES`] for the VM's stage-2 tables. Pages
    /// beyond that also go to stage-2 tables.
    #[must_use]
    pub const fn min_metadata_pages(&self) -> u64 {
        1 + self.max_vcpus + MIN_STAGE2_PAGES
    }
}

/// The fewest stage-2 table pages a VM starts with.
pub const MIN_STAGE2_PAGES: u64 = 8;

/// `x3` of an [`ExitReason::Wait`] whose guest has no timer deadline
/// (its virtual timer disabled or masked).
pub const WAIT_NO_DEADLINE: u64 = u64::MAX;

/// Why `VCPU_RUN` returned: `x1` of its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ExitReason {
    /// The guest accessed MMIO: `x2` = guest-physical address, `x3` =
    /// [`mmio`] flags, `x4` = the value written (writes only). For a read,
    /// pass the value in `x3` of the next `VCPU_RUN`.
    Mmio = 1,
    /// The guest touched a guest-physical address with no memory behind it
    /// and outside its MMIO: `x2` = the page, `x3` = 1 for a write. Donate
    /// memory there and run again, or give up on the VM.
    MemoryFault = 2,
    /// The guest waits for an interrupt (`WFI`, `x2` = 0) or event (`WFE`,
    /// `x2` = 1) and nothing is pending for it; `x3` = its virtual-timer
    /// deadline (`CNTV_CVAL_EL0`; the virtual count equals the physical
    /// count) or [`WAIT_NO_DEADLINE`]. The host may sleep until then or
    /// until it injects an interrupt; running the vCPU earlier is correct.
    Wait = 3,
    /// A physical interrupt arrived while the guest ran; run it again.
    /// `x2` = 1 if it was the host's own timer deadline (kept by the
    /// hypervisor's EL2 timer while the guest owns the virtual timer), 0
    /// otherwise; `x2` = 2 if instead the guest sent an SGI to other vCPUs
    /// of its VM, `x3` = their bitmap (wake their threads).
    Interrupt = 4,
    /// The guest asked to power off (PSCI SYSTEM_OFF).
    SystemOff = 5,
    /// The guest asked to reset (PSCI SYSTEM_RESET).
    SystemReset = 6,
    /// The vCPU is off: not yet started with PSCI CPU_ON, or it called
    /// CPU_OFF. Run it again later.
    PoweredOff = 7,
    /// The guest touched a page the host evicted (`VM_EVICT`): `x2` = the
    /// guest page (page-aligned), `x3` = 1 for a write, 0 for a read.
    /// Restore it (`VM_RESTORE`) and run again: the access is retried.
    Evicted = 8,
    /// The guest ended (EOI) a level-sensitive interrupt the host injected
    /// with [`inject::LEVEL`]: `x2` = its INTID, `x3` = how many more such
    /// EOIs the next runs report. The host resamples the line (injects it
    /// again if it is still asserted) and runs the vCPU again.
    Eoi = 12,
    /// A realm's `RSI_HOST_CALL` (issue 12): `x2` = the call's immediate
    /// (`RsiHostCall.imm`). Its 31 registers are read with
    /// [`HostCall::VcpuHostCallGet`] and answered with
    /// [`HostCall::VcpuHostCallSet`]; the next `VCPU_RUN` completes the
    /// call (registers the host did not set go back as the guest passed
    /// them).
    HostCall = 10,
}

impl ExitReason {
    /// Every exit reason.
    pub const ALL: [ExitReason; 10] = [
        ExitReason::Mmio,
        ExitReason::MemoryFault,
        ExitReason::Wait,
        ExitReason::Interrupt,
        ExitReason::SystemOff,
        ExitReason::SystemReset,
        ExitReason::PoweredOff,
        ExitReason::Evicted,
        ExitReason::Eoi,
        ExitReason::HostCall,
    ];

    /// The stable name used in `docs/abi.md`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            ExitReason::Mmio => "EXIT_MMIO",
            ExitReason::MemoryFault => "EXIT_MEMORY_FAULT",
            ExitReason::Wait => "EXIT_WAIT",
            ExitReason::Interrupt => "EXIT_INTERRUPT",
            ExitReason::SystemOff => "EXIT_SYSTEM_OFF",
            ExitReason::SystemReset => "EXIT_SYSTEM_RESET",
            ExitReason::PoweredOff => "EXIT_POWERED_OFF",
            ExitReason::Evicted => "EXIT_EVICTED",
            ExitReason::Eoi => "EXIT_EOI",
            ExitReason::HostCall => "EXIT_HOST_CALL",
        }
    }
}

impl TryFrom<u64> for ExitReason {
    type Error = u64;

    fn try_from(value: u64) -> Result<Self, u64> {
        ExitReason::ALL
            .into_iter()
            .find(|r| *r as u64 == value)
            .ok_or(value)
    }
}

/// The `x4` flags of `VCPU_INJECT`.
pub mod inject {
    /// Bit 0: the interrupt is level-sensitive; the guest's EOI of it ends
    /// the vCPU's run with [`super::ExitReason::Eoi`], so the host can
    /// resample the line. Any other bit is `INVALID_PARAMETER`.
    pub const LEVEL: u64 = 1;
}

/// The `x3` flags of an [`ExitReason::Mmio`] exit.
pub mod mmio {
    /// Bits 1:0: log2 of the access width in bytes (0 = 1 byte .. 3 = 8).
    pub const SIZE_LOG2_MASK: u64 = 0b11;
    /// Bit 8: the access is a write.
    pub const WRITE: u64 = 1 << 8;
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    fn regs18(first: [u64; 5]) -> [u64; 18] {
        let mut r = [0; 18];
        r[..5].copy_from_slice(&first);
        r
    }

    #[test]
    fn words_and_bytes_round_trip() {
        let bytes: [u8; 32] = core::array::from_fn(|i| u8::try_from(i).unwrap_or(0));
        let words: [u64; 4] = bytes_to_words(&bytes);
        assert_eq!(words[0], 0x0706_0504_0302_0100);
        assert_eq!(words_to_bytes::<32>(&words), bytes);
    }
    use crate::Error;

    #[test]
    fn vcpu_inject_takes_only_the_level_flag() {
        let id = u64::from(HostCall::VcpuInject.id());
        let decode = |x4: u64| {
            let mut r = regs18([id, 0x1000, 1, 33, x4]);
            r[5] = 0;
            HostRequest::decode(&r)
        };
        let vcpu = VcpuRef { vm: VmHandle(0x1000), index: 1 };
        assert_eq!(decode(0), Ok(HostRequest::VcpuInject { vcpu, intid: 33, level: false }));
        assert_eq!(decode(inject::LEVEL), Ok(HostRequest::VcpuInject { vcpu, intid: 33, level: true }));
        for bad in [2, 3, 1 << 63, u64::MAX] {
            assert_eq!(decode(bad), Err(Error::InvalidParameter), "x4 = {bad:#x}");
        }
    }

    #[test]
    fn decodes_memory_calls() {
        let r = HostRequest::decode(&regs18([0xC600_8002, 0x4800_0000, 3, 0, 0])).unwrap();
        assert_eq!(
            r,
            HostRequest::ShareHyp(PageRange::new(0x4800_0000, 3).unwrap())
        );
        let PageRange { start, pages } = PageRange::new(0x4800_0000, 3).unwrap();
        assert_eq!((start, pages), (0x4800_0000, 3));
        assert_eq!(PageRange::new(0x4800_0000, 3).unwrap().end(), 0x4800_3000);
        // Upper half of x0 ignored, as SMCCC says.
        assert_eq!(
            HostRequest::decode(&regs18([0xDEAD_0000_C600_8000, 0, 0, 0, 0])),
            Ok(HostRequest::Version)
        );
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8001, 0x1_C600_8000, 0, 0, 0])),
            Ok(HostRequest::Features(0xC600_8000))
        );
    }

    #[test]
    fn refuses_malformed_ranges() {
        for (addr, pages) in [
            (0x4800_0001, 1),
            (0x4800_0000, 0),
            (0x4800_0000, u64::MAX),
            (!0xfff, 2),
            (0, 1 << 52),
        ] {
            assert_eq!(
                HostRequest::decode(&regs18([0xC600_8004, addr, pages, 0, 0])),
                Err(Error::InvalidParameter),
                "{addr:#x} {pages}"
            );
        }
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_80FF, 0, 0, 0, 0])),
            Err(Error::NotSupported)
        );
        // VM calls.
        let vm = VmHandle(0x1_0000_1000);
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8010, 0x4800_0000, 12, 0x201, 0])),
            Ok(HostRequest::VmCreate {
                metadata: PageRange::new(0x4800_0000, 12).unwrap(),
                config: VmConfig {
                    protected: true,
                    debug: false,
                    max_vcpus: 2
                }
            })
        );
        assert_eq!(
            VmConfig {
                protected: true,
                debug: false,
                max_vcpus: 2
            }
            .encode(),
            0x201
        );
        assert_eq!(VmConfig::decode(0x203).map(|c| c.debug), Ok(true));
        // Bit 2 (realm) only with bit 0 (protected).
        assert_eq!(VmConfig::decode(0x105).map(|c| c.protected), Ok(true));
        assert_eq!(VmConfig::decode_realm(0x105), Ok(true));
        assert_eq!(VmConfig::decode_realm(0x101), Ok(false));
        assert_eq!(VmConfig::decode(0x104), Err(crate::Error::InvalidParameter));
        assert_eq!(VmConfig::decode(0x10c), Err(crate::Error::InvalidParameter));
        for bad in [0x001, 0x901, 0x10201, 0x209, 0x204] {
            assert_eq!(
                HostRequest::decode(&regs18([0xC600_8010, 0x4800_0000, 12, bad, 0])),
                Err(Error::InvalidParameter),
                "{bad:#x}"
            );
        }
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8016, vm.0, 1, 7, 0])),
            Ok(HostRequest::VcpuRun {
                vcpu: VcpuRef { vm, index: 1 },
                mmio_read_value: 7
            })
        );
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8016, vm.0, 8, 0, 0])),
            Err(Error::InvalidParameter)
        );
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8013, vm.0, 0x4800_0000, 1, 0x8000_0001])),
            Err(Error::InvalidParameter)
        );
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8017, vm.0, 0, 1020, 0])),
            Err(Error::InvalidParameter)
        );
        for r in ExitReason::ALL {
            assert_eq!(ExitReason::try_from(r as u64), Ok(r));
        }
        // Swap calls: addresses page-aligned, the tag in x6, x7.
        let mut r = [0u64; 18];
        r[..8].copy_from_slice(&[0xC600_8021, vm.0, 0x8000_0000, 0x4800_0000, 0x4800_1000, 3, 0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908]);
        assert_eq!(
            HostRequest::decode(&r),
            Ok(HostRequest::VmRestore {
                vm,
                guest_address: 0x8000_0000,
                sealed: 0x4800_0000,
                fresh: 0x4800_1000,
                version: 3,
                tag: core::array::from_fn(|i| u8::try_from(i).unwrap_or(0)),
            })
        );
        for bad in 2..5 {
            let mut r2 = r;
            r2[bad] |= 0x10;
            assert_eq!(HostRequest::decode(&r2), Err(Error::InvalidParameter), "x{bad}");
        }
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8020, vm.0, 0x8000_0000, 0x4800_0000, 0])),
            Ok(HostRequest::VmEvict { vm, guest_address: 0x8000_0000, sealed: 0x4800_0000 })
        );
        assert_eq!(
            HostRequest::decode(&regs18([0xC600_8020, vm.0, 0x8000_0800, 0x4800_0000, 0])),
            Err(Error::InvalidParameter)
        );
        // A range must end at a representable address.
        assert!(PageRange::new(!0xfff - 0x1000, 1).is_ok());
    }

    /// issue 16: `VM_DONATE_ZEROED` decodes as `VM_DONATE` does, with its
    /// flags register (`x5`) reserved and its page count bounded.
    #[test]
    fn decodes_donate_zeroed() {
        let vm = VmHandle(0x1000);
        let id = u64::from(HostCall::VmDonateZeroed.id());
        assert_eq!(id, 0xC600_8022);
        let decode = |pages: u64, ipa: u64, x5: u64| {
            let mut r = regs18([id, vm.0, 0x4800_0000, pages, ipa]);
            r[5] = x5;
            HostRequest::decode(&r)
        };
        assert_eq!(
            decode(DONATE_ZEROED_MAX_PAGES, 0x8000_0000, 0),
            Ok(HostRequest::VmDonateZeroed {
                vm,
                pages: PageRange::new(0x4800_0000, DONATE_ZEROED_MAX_PAGES).unwrap(),
                guest_address: 0x8000_0000,
            })
        );
        for (pages, ipa, x5) in [
            (DONATE_ZEROED_MAX_PAGES + 1, 0x8000_0000, 0),
            (0, 0x8000_0000, 0),
            (1, 0x8000_0008, 0),
            (1, 0x8000_0000, 1),
            (1, 0x8000_0000, 1 << 63),
            (u64::MAX, 0x8000_0000, 0),
        ] {
            assert_eq!(decode(pages, ipa, x5), Err(Error::InvalidParameter), "{pages} {ipa:#x} {x5:#x}");
        }
        assert_eq!(HostCall::VmDonateZeroed.name(), "RAMPART_HOST_VM_DONATE_ZEROED");
    }
}
