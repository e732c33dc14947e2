//! What the host believes about its window's pages and its VMs.

/// VMs one CPU keeps at once.
pub const MAX_VMS: usize = 3;

/// A page of the window, as the host's bookkeeping has it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Page {
    /// The host's.
    Host,
    /// Shared with the hypervisor (`SHARE_HYP`): still the host's, mapped.
    SharedHyp,
    /// Donated to the hypervisor (`DONATE_HYP`): unmapped.
    DonatedHyp,
    /// Given to VM `n` (`VM_DONATE`): unmapped until `VM_DESTROY`.
    Vm(u8),
    /// Lent to VM `n` (`VM_SHARE`): still mapped for the host.
    VmShared(u8),
    /// Held by the hypervisor for VM `n` (`VM_CREATE` metadata).
    Meta(u8),
    /// RAM of a protected fuzz-guest VM `n`: the guest may share it with
    /// the host or relinquish it at any moment, so whether the host can
    /// reach it is unknown until `VM_DESTROY` (never touched, never named
    /// in a call before then).
    GuestRam(u8),
}

impl Page {
    /// Whether a host access to the page must succeed (else it must
    /// abort).
    pub fn host_mapped(self) -> bool {
        matches!(self, Page::Host | Page::SharedHyp | Page::VmShared(_))
    }
}

/// A VM this CPU made.
#[derive(Clone, Copy, Debug)]
pub struct Vm {
    pub handle: u64,
    pub protected: bool,
    pub vcpus: u64,
    /// vCPUs created (bit i).
    pub created: u64,
    /// Whether it runs the fuzz guest (RAM donated, entry set).
    pub guest: bool,
    /// The guest powered off.
    pub off: bool,
    /// A pending MMIO read's answer for the next `VCPU_RUN`.
    pub mmio_answer: u64,
    /// A protected fuzz guest given its build's signature (the one case a
    /// protected VM may run).
    pub signed: bool,
}
