//! Secure migration (issue 14): the predictions of `VM_IMPORT_BEGIN`,
//! `VM_EXPORT`, `VM_IMPORT` and `VM_IMPORT_DATA` and their memory effects
//! (docs/abi.md, "Secure migration").
//!
//! The specification cannot open a stream (it has no key), so it admits
//! every stream refusal the ABI lists; what it fixes is ownership:
//! - the first successful `VM_EXPORT` stops the VM for good
//!   ([`Migration::Export`]: `VCPU_RUN` is `MIGRATING`), and the call that
//!   answers "complete" destroys it (every page it held zeroed and the
//!   host's, as `VM_DESTROY`); a refused call changes nothing;
//! - a successful `VM_IMPORT` creates a VM over the metadata pages
//!   ([`Migration::Import`]: not runnable, measured); its configuration
//!   and, after each `VM_IMPORT_DATA`, which vCPUs the stream created are
//!   read from the hypervisor by the oracle ([`Spec::set_imported`]), since
//!   they come from the sealed header and records — the specification
//!   checks they are possible (metadata large enough, no vCPU beyond
//!   `max_vcpus`, none lost);
//! - `VM_IMPORT_DATA` of a VM being imported, past its buffer's check,
//!   either succeeds (the VM's pages stay its own; "complete" makes it
//!   runnable) or is refused and then destroys the VM: nothing of it stays.

use rampart_abi::Error;
use rampart_abi::host::{HostRequest, PageRange, VmConfig, VmHandle};

use crate::{
    Effect, MAX_VMS, META_TABLE_PAGES, Outcomes, PAGE, Page, Power, Prediction, Spec, handle_slot,
    live_slot,
};

/// Where a VM is in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Migration {
    /// Not migrating.
    #[default]
    None,
    /// Being exported: stopped for good.
    Export,
    /// Being imported: runs only after the stream's end record.
    Import,
}

/// What the oracle read from the hypervisor about an imported VM after a
/// successful `VM_IMPORT` or `VM_IMPORT_DATA` ([`Spec::set_imported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Its configuration (from the stream's sealed header).
    pub config: VmConfig,
    /// vCPUs that exist (bit i).
    pub vcpus: u8,
    /// Each vCPU's power state.
    pub power: [Power; 8],
}

/// Errors a stream can earn (the specification cannot open it).
fn stream_errors() -> Outcomes {
    Outcomes::error(Error::NotAuthentic)
        .or_error(Error::StreamOrder)
        .or_error(Error::StaleStream)
        .or_error(Error::NotSupported)
}

impl Spec<'_> {
    /// The hypervisor's check of a host buffer of `len` bytes at `address`
    /// (every page it touches RAM, outside the carve-out, the host's
    /// alone), exactly: `Err` is the call's refusal.
    pub(crate) fn host_exclusive(&self, address: u64, len: u64) -> Result<(), Error> {
        let end = address.checked_add(len).ok_or(Error::InvalidParameter)?;
        let mut page = address & !(PAGE - 1);
        while page < end {
            let one = PageRange::new(page, 1).map_err(|_| Error::InvalidParameter)?;
            // Page by page, like the hypervisor (adjacent banks pass): a
            // hostile length stops at the first page outside RAM.
            if !self.in_one_bank(&one) {
                return Err(Error::Range);
            }
            if self.overlaps_carveout(&one) || self.page(page) != Some(Page::Host) {
                return Err(Error::Denied);
            }
            page += PAGE;
        }
        Ok(())
    }

    /// The four migration calls.
    pub(crate) fn predict_migration(&self, request: HostRequest) -> Prediction {
        match request {
            HostRequest::VmImportBegin => {
                Prediction::refuse(Outcomes::success().or_error(Error::NotSupported))
            }
            HostRequest::VmExport { vm, buffer, .. } => self.predict_export(vm, buffer),
            HostRequest::VmImport {
                metadata,
                address,
                bytes,
            } => self.predict_import(metadata, address, bytes),
            HostRequest::VmImportData { vm, address, bytes } => {
                self.predict_import_data(vm, address, bytes)
            }
            _ => Prediction::refuse(Outcomes::error(Error::NotSupported)),
        }
    }

    /// Whether the handle names its slot's current generation (the
    /// hypervisor's first check, before liveness).
    fn current(&self, handle: u64) -> Option<usize> {
        let slot = handle_slot(handle)?;
        (u64::from(self.generations[slot]) == handle >> 32).then_some(slot)
    }

    fn predict_export(&self, vm: VmHandle, buffer: PageRange) -> Prediction {
        if self.current(vm.0).is_none() {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        }
        if let Err(e) = self.host_exclusive(buffer.start(), buffer.pages() * PAGE) {
            return Prediction::refuse(Outcomes::error(e));
        }
        let Some(slot) = live_slot(self, vm.0) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let Some(spec) = self.vms[slot].as_ref() else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let busy = if self.any_running(slot) {
            Outcomes::error(Error::Busy)
        } else {
            Outcomes::NONE
        };
        let allowed = match spec.migration {
            // Being imported: refused (no secret: NOT_SUPPORTED first).
            Migration::Import => {
                return Prediction::refuse(
                    Outcomes::error(Error::Migrating).or_error(Error::NotSupported),
                );
            }
            // A later call: another challenge or destination, or a page
            // given to the stopped VM meanwhile that it does not own alone.
            Migration::Export => Outcomes::success()
                .or_error(Error::InvalidParameter)
                .or_error(Error::Denied)
                .or_error(Error::Busy),
            // Only a measured VM leaves; realms and VMs sharing pages with
            // the host are DENIED; a layout beyond the header's room is
            // NO_MEMORY.
            Migration::None if spec.measured => busy
                .or(0)
                .or_error(Error::NotSupported)
                .or_error(Error::Denied)
                .or_error(Error::NoMemory),
            Migration::None => busy.or_error(Error::NotSupported).or_error(Error::Denied),
        };
        Prediction {
            allowed,
            effect: Effect::Export { slot: slot as u8 },
        }
    }

    fn predict_import(&self, metadata: PageRange, address: u64, bytes: u64) -> Prediction {
        // The stream, the signature and VM_CREATE's own checks of the
        // metadata (the configuration is the sealed header's).
        let allowed = stream_errors()
            .or_error(Error::InvalidParameter)
            .or_error(Error::Range)
            .or_error(Error::Denied)
            .or_error(Error::NoMemory)
            .or_error(Error::NotSigned)
            .or_error(Error::UntrustedKey)
            .or_error(Error::BadSignature);
        let free =
            (0..MAX_VMS).any(|s| self.vms[s].is_none() && self.generations[s] != crate::RETIRED);
        let ok = free
            && self.in_one_bank(&metadata)
            && self.all(&metadata, |p| p == Page::Host)
            && metadata.pages() > META_TABLE_PAGES
            && bytes > 0
            && self.host_exclusive(address, 1).is_ok();
        if !ok {
            return Prediction::refuse(allowed);
        }
        Prediction {
            allowed: allowed.or(0),
            effect: Effect::Import { metadata },
        }
    }

    fn predict_import_data(&self, vm: VmHandle, address: u64, bytes: u64) -> Prediction {
        if self.current(vm.0).is_none() {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        }
        let Some(slot) = live_slot(self, vm.0) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let importing = self.vms[slot]
            .as_ref()
            .is_some_and(|v| v.migration == Migration::Import);
        if !importing {
            // A live VM that is not being imported.
            return Prediction::refuse(Outcomes::error(Error::Denied));
        }
        if let Err(e) = self.host_exclusive(address, bytes) {
            return Prediction::refuse(Outcomes::error(e));
        }
        // Past the buffer's check: success, or any refusal of a record,
        // which destroys the VM.
        Prediction {
            allowed: stream_errors()
                .or(0)
                .or_error(Error::InvalidParameter)
                .or_error(Error::Range)
                .or_error(Error::Denied)
                .or_error(Error::Busy),
            effect: Effect::ImportData { slot: slot as u8 },
        }
    }

    /// The VM a call's answer destroyed, if any: `VM_DESTROY`'s success, the
    /// `VM_EXPORT` that answered complete (`x2` = 1), a refused
    /// `VM_IMPORT_DATA` past its buffer's check.
    #[must_use]
    pub fn destroyed_by(&self, prediction: &Prediction, x0: i64, x2: u64) -> Option<u8> {
        if !prediction.allowed.allows(x0) {
            // A result the contract does not allow: reported, and the
            // state follows a success only (see [`Spec::commit`]).
            if x0 != 0 {
                return None;
            }
        }
        match prediction.effect {
            Effect::DestroyVm { slot } if x0 == 0 => Some(slot),
            Effect::Export { slot } if x0 == 0 && x2 == 1 => Some(slot),
            Effect::ImportData { slot } if x0 != 0 => Some(slot),
            _ => None,
        }
    }

    /// The oracle's reading of the VM a successful `VM_IMPORT` created or
    /// a `VM_IMPORT_DATA` filled (see the module's comment), for the next
    /// [`Spec::commit`].
    pub fn set_imported(&mut self, imported: Option<Imported>) {
        self.imported = imported;
    }

    /// Applies an imported VM's reading; false (a violation) if it is not
    /// one the stream could have made.
    pub(crate) fn apply_imported(&mut self, slot: usize, config_too: bool) -> bool {
        let Some(read) = self.imported else {
            return false;
        };
        let Some(Some(vm)) = self.vms.get_mut(slot) else {
            return false;
        };
        if config_too {
            if vm.metadata.pages() < 1 + read.config.max_vcpus + META_TABLE_PAGES
                || read.config.max_vcpus == 0
                || read.config.max_vcpus > 8
            {
                return false;
            }
            vm.config = read.config;
        }
        let limit = if vm.config.max_vcpus >= 8 {
            u8::MAX
        } else {
            (1u8 << vm.config.max_vcpus) - 1
        };
        // vCPUs appear, never vanish, never beyond max_vcpus.
        if read.vcpus & !limit != 0 || vm.vcpus & !read.vcpus != 0 {
            return false;
        }
        vm.vcpus = read.vcpus;
        vm.power = read.power;
        // An imported vCPU ran on the source; set-regs is DENIED anyway
        // (measured).
        vm.ran = read.vcpus;
        true
    }
}
