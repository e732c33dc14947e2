//! Sealed swap: `VM_EVICT` and `VM_RESTORE` (docs/abi.md, "Sealed swap").

use rampart_abi::Error;
use rampart_abi::host::VmHandle;

/// `VM_EVICT`: returns the page's new version and its tag.
pub fn evict(_vm: VmHandle, _guest_address: u64, _sealed: u64) -> Result<(u64, [u8; 16]), Error> {
    Err(Error::NotSupported)
}

/// `VM_RESTORE`.
pub fn restore(
    _vm: VmHandle,
    _guest_address: u64,
    _sealed: u64,
    _fresh: u64,
    _version: u64,
    _tag: [u8; 16],
) -> Result<(), Error> {
    Err(Error::NotSupported)
}
