//! Sealed swap (issue 14): the predictions of `VM_EVICT` and `VM_RESTORE`
//! (docs/abi.md, "Sealed swap").
//!
//! The specification does not follow keys, versions or which addresses
//! are evicted (the oracle cannot see the ciphertext either), so it admits
//! every refusal the ABI lists and fixes what success means for ownership:
//! an eviction gives the VM's page back to the host, zeroed, as
//! `KVM_MEM_RELINQUISH` does; a restore gives the fresh page to the VM at
//! the address, as `VM_DONATE` of one page does. A VM that evicted a page
//! is marked [`VmSpec::swapped`]: `VM_DONATE`/`VM_SHARE` there may then be
//! `DENIED` (an evicted address), which the specification cannot tell.

use rampart_abi::Error;
use rampart_abi::host::{PageRange, VmHandle};

use crate::{Effect, Outcomes, PAGE, Page, Prediction, Spec, live_slot};

/// Refusals either call may answer whatever the specification's state.
fn refusals() -> Outcomes {
    Outcomes::error(Error::Range)
        .or_error(Error::Denied)
        .or_error(Error::NoMemory)
        .or_error(Error::InvalidParameter)
        // No device secret: no swap key.
        .or_error(Error::NotSupported)
}

impl Spec<'_> {
    /// `VM_EVICT` of guest page `ipa` into host page `sealed`.
    pub(crate) fn predict_evict(&self, vm: VmHandle, ipa: u64, sealed: u64) -> Prediction {
        let Some(slot) = live_slot(self, vm.0) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let Some(spec) = self.vms[slot].as_ref() else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let allowed = refusals().or_error(Error::NotEvictable);
        // A VM whose layout the specification lost: the oracle's page.
        let pa = if spec.imprecise {
            self.swap_pa
        } else {
            spec.translate(ipa)
        };
        let sealed_ok = PageRange::new(sealed, 1).is_ok_and(|r| self.in_one_bank(&r))
            && self.page(sealed) == Some(Page::Host);
        match pa {
            Some(pa) if sealed_ok && self.page(pa) == Some(Page::Vm(slot as u8)) => Prediction {
                allowed: allowed.union(Outcomes::success()),
                effect: Effect::Evict {
                    slot: slot as u8,
                    ipa,
                    pa,
                    sealed,
                },
            },
            _ => Prediction::refuse(allowed),
        }
    }

    /// `VM_RESTORE` of guest page `ipa` from host page `sealed` into host
    /// page `fresh`.
    pub(crate) fn predict_restore(
        &self,
        vm: VmHandle,
        ipa: u64,
        sealed: u64,
        fresh: u64,
    ) -> Prediction {
        if sealed == fresh {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        }
        let Some(slot) = live_slot(self, vm.0) else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let Some(spec) = self.vms[slot].as_ref() else {
            return Prediction::refuse(Outcomes::error(Error::InvalidParameter));
        };
        let allowed = refusals()
            .or_error(Error::NotEvicted)
            .or_error(Error::StaleVersion)
            .or_error(Error::SealInvalid);
        let fresh_range = PageRange::new(fresh, 1);
        let fresh_ok =
            fresh_range.is_ok_and(|r| self.in_one_bank(&r)) && self.page(fresh) == Some(Page::Host);
        let sealed_ok = PageRange::new(sealed, 1).is_ok_and(|r| self.in_one_bank(&r))
            && self.page(sealed) == Some(Page::Host);
        let unmapped = spec.imprecise || spec.translate(ipa).is_none();
        match fresh_range {
            Ok(range)
                if fresh_ok
                    && sealed_ok
                    && unmapped
                    && spec.swapped
                    && ipa.is_multiple_of(PAGE) =>
            {
                Prediction {
                    allowed: allowed.union(Outcomes::success()),
                    effect: Effect::GiveVm {
                        slot: slot as u8,
                        range,
                        ipa,
                        share: false,
                    },
                }
            }
            _ => Prediction::refuse(allowed),
        }
    }
}
