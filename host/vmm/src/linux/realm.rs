//! The realm platform (issue 12): what changes in the virtual platform of
//! [`super`] when the Linux guest is a *realm* (a protected VM created with
//! `VM_CREATE` config bit 2, talking RSI over `SMC`; `docs/abi.md`, "Realm
//! guests (RSI)").
//!
//! - **The shared bit.** A realm's IPA space splits at its top bit
//!   (`ipa_bits - 1`); EL2 tells the host the width in the control node's
//!   `rampart,ipa-bits` ([`shared_bit`]).
//! - **Guest memory for the devices** ([`guest_memory`]) covers guest RAM
//!   twice: at its IPA and at the unprotected alias (`IPA | shared bit`),
//!   both over the VMM's one mapping of the pool pages it donated. Linux
//!   7.2 hands devices alias addresses (`dma_addr_unencrypted()`), earlier
//!   CCA kernels canonical ones; either reaches the same pool page, which
//!   EL2 shared with the host *in place* when the guest set it RIPAS EMPTY.
//!   A page the guest keeps private is not the host's: the devices check
//!   every page before they touch it (`virtio::guest`), so such an address
//!   fails the request instead of killing the VMM with `SIGBUS`.
//! - **MMIO** exits arrive with the shared bit stripped (EL2's
//!   `rsi::mmio_address`), so the PL011 and the virtio-mmio transports
//!   answer at either address with no change to the bus.
//! - **PSCI** is called with `SMC` (`fdt::Conduit::Smc`): Linux looks for
//!   RSI only on the SMC conduit.
//! - **earlycon** runs before Linux knows it is a realm and maps the UART
//!   as given: [`cmdline`] points it at the alias of the PL011, as
//!   `Documentation/arch/arm64/arm-cca.rst` asks.
//! - **virtio** devices offer `VIRTIO_F_ACCESS_PLATFORM` (every transport
//!   does: `virtio::mmio::TRANSPORT_FEATURES`), without which Linux would
//!   not bounce their DMA through its shared swiotlb pool.

#![allow(
    dead_code,
    reason = "used by the protected Linux path once it runs realms"
)]

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rampart_abi::boot::{CONTROL_IPA_BITS_PROPERTY, CONTROL_NODE_NAME};

use super::{GuestMemory, layout};

/// The IPA widths a realm can have (`docs/abi.md`: 39 to 48 on the CPUs
/// Rampart supports; 52 with FEAT_LPA2 would still fit Linux's encoding).
pub const IPA_BITS: std::ops::RangeInclusive<u32> = 36..=52;

/// The shared bit for an IPA width of `ipa_bits`.
///
/// # Errors
///
/// A width outside [`IPA_BITS`].
pub fn shared_bit_for(ipa_bits: u32) -> Result<u64> {
    if !IPA_BITS.contains(&ipa_bits) {
        bail!(
            "an IPA width of {ipa_bits} bits is not one a realm can have ({}..={})",
            IPA_BITS.start(),
            IPA_BITS.end()
        );
    }
    Ok(rampart_abi::rsi::shared_bit(ipa_bits))
}

/// The shared bit of a realm on this host: from `rampart,ipa-bits` of the
/// control node under the device tree `root`.
///
/// # Errors
///
/// No control node, no such property (a hypervisor older than issue 12's
/// VMM side), or a malformed value.
pub fn shared_bit(root: &Path) -> Result<u64> {
    let node = crate::dt::find_child(root, CONTROL_NODE_NAME)?
        .with_context(|| format!("no /{CONTROL_NODE_NAME}@... node in {}", root.display()))?;
    let path = node.join(CONTROL_IPA_BITS_PROPERTY);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (the hypervisor does not say its IPA width: too old for realm guests?)",
            path.display()
        )
    })?;
    let bits = crate::dt::parse_u32(&bytes).with_context(|| path.display().to_string())?;
    shared_bit_for(bits).with_context(|| path.display().to_string())
}

/// The command line a realm boots with: a bare `earlycon` (which would
/// take the UART's protected address from `stdout-path`) becomes
/// `earlycon=pl011,mmio32,<alias of the PL011>`; an explicit
/// `earlycon=...` is left as the user wrote it.
#[must_use]
pub fn cmdline(cmdline: &str, shared_bit: u64) -> String {
    let alias = format!(
        "earlycon=pl011,mmio32,{:#x}",
        layout::UART_BASE | shared_bit
    );
    cmdline
        .split(' ')
        .map(|w| if w == "earlycon" { alias.as_str() } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Guest memory for a realm's devices: the first `size` bytes of `region`
/// at guest-physical [`layout::RAM_BASE`] and again at `RAM_BASE |
/// shared_bit` (the unprotected alias of the same pages).
///
/// # Errors
///
/// `vm-memory` refusing the regions, or a shared bit that does not lie
/// above guest RAM.
pub fn guest_memory(
    region: &crate::mem::Mapping,
    size: u64,
    shared_bit: u64,
) -> Result<GuestMemory> {
    let (start, len) = region.span();
    // SAFETY: `start..start + len` is the live mapping `region`, which the
    // caller keeps mapped until every device (and so every clone of this
    // memory) is dropped.
    unsafe { alias_memory(start as *mut u8, len, size, layout::RAM_BASE, shared_bit) }
}

/// [`guest_memory`] over raw memory, with guest RAM at `ram_base`.
///
/// # Safety
///
/// `start..start + len` must stay mapped, readable and writable for as
/// long as the result or a clone of it lives.
pub(crate) unsafe fn alias_memory(
    start: *mut u8,
    len: usize,
    size: u64,
    ram_base: u64,
    shared_bit: u64,
) -> Result<GuestMemory> {
    use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};
    let bytes = usize::try_from(size)?;
    if bytes > len {
        bail!("guest RAM ({bytes} bytes) is larger than its mapping ({len} bytes)");
    }
    if !shared_bit.is_power_of_two() || shared_bit <= ram_base + size || ram_base & shared_bit != 0
    {
        bail!("shared bit {shared_bit:#x} does not lie above guest RAM");
    }
    let mut regions = Vec::new();
    for base in [ram_base, ram_base | shared_bit] {
        // SAFETY: by this function's contract; both regions alias the same
        // memory, which `vm-memory` allows (it never assumes exclusivity of
        // raw regions) and the devices' copies (volatile, `virtio::guest`)
        // do not mind.
        let raw = unsafe {
            MmapRegion::<()>::build_raw(
                start,
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(|e| anyhow!("guest memory for the devices: {e}"))?;
        regions.push(
            GuestRegionMmap::new(raw, GuestAddress(base))
                .ok_or_else(|| anyhow!("guest memory for the devices: the region wraps"))?,
        );
    }
    GuestMemory::from_regions(regions).map_err(|e| anyhow!("guest memory for the devices: {e}"))
}

/// How many virtio-mmio transports the device tree `dtb` declares (one
/// `virtio_mmio@...` node each: `fdt::build` names them so).
#[must_use]
pub fn declared_transports(dtb: &[u8]) -> usize {
    let name = b"virtio_mmio@";
    dtb.windows(name.len()).filter(|w| *w == name).count()
}

/// The virtio devices and their guest memory for a signed Linux bundle's
/// VM (`linux::bundle`): a realm gets the devices `args` asks for (as many
/// as its measured device tree declares) over guest memory at both the IPA
/// and the alias; a protected VM that is not a realm shares nothing with
/// the VMM, so it gets none.
///
/// # Errors
///
/// Devices asked for a VM that cannot have them, a count that differs from
/// the device tree's, no shared bit, a disk that cannot be opened.
pub fn bundle_devices(
    env: &crate::session::Env,
    realm: bool,
    dtb: &[u8],
    args: &crate::virtio::VirtioArgs,
    name: &str,
    region: &crate::mem::Mapping,
    size: u64,
) -> Result<(Vec<super::Device>, GuestMemory)> {
    let declared = declared_transports(dtb);
    if !realm {
        if args.any_device() {
            bail!("--disk, --vsock and --virtio-console need a realm bundle: this protected VM shares no memory with the VMM");
        }
        // No device touches guest RAM: the mapping only satisfies the run
        // loop's signature.
        return Ok((Vec::new(), super::guest_memory(region, size)?));
    }
    let devices = if declared == 0 && !args.any_device() {
        Vec::new()
    } else {
        crate::virtio::devices(args, name, &env.state_dir)?
    };
    if devices.len() != declared {
        bail!(
            "the bundle's measured device tree declares {declared} virtio transport(s), the options give {} (disks, then entropy unless --rng false, console, vsock): pack with --virtio-devices {}",
            devices.len(),
            devices.len()
        );
    }
    let bit = shared_bit(&crate::dt::root(&env.dt_roots)?)?;
    println!(
        "[{name}] rampart-vmm: realm: shared bit {bit:#x}; devices accept guest addresses at the IPA and at IPA | {bit:#x}"
    );
    for (i, d) in devices.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation, reason = "at most VIRTIO_MAX")]
        let n = i as u32;
        let (kind, what) = d
            .describe
            .split_once(": ")
            .unwrap_or((d.describe.as_str(), ""));
        println!(
            "[{name}] rampart-vmm: {kind} at {:#010x} irq {}: {what}",
            layout::virtio_base(n),
            32 + layout::virtio_spi(n)
        );
    }
    Ok((devices, guest_memory(region, size, bit)?))
}

/// Page-aligned anonymous memory for the tests, unmapped on drop.
#[cfg(test)]
pub(crate) struct Anon {
    pub ptr: *mut u8,
    pub len: usize,
}

#[cfg(test)]
impl Anon {
    pub fn new(len: usize) -> Self {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Anon { ptr: p.cast(), len }
    }
}

#[cfg(test)]
impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn the_shared_bit_comes_from_the_control_node() {
        let dir = std::env::temp_dir().join(format!("rampart-realm-dt-{}", std::process::id()));
        let node = dir.join("rampart-control@41100000");
        std::fs::create_dir_all(&node).unwrap();
        let e = format!("{:#}", shared_bit(&dir).unwrap_err());
        assert!(e.contains("too old for realm guests"), "{e}");
        std::fs::write(node.join("rampart,ipa-bits"), 44u32.to_be_bytes()).unwrap();
        assert_eq!(shared_bit(&dir).unwrap(), 1 << 43);
        std::fs::write(node.join("rampart,ipa-bits"), 64u32.to_be_bytes()).unwrap();
        assert!(
            shared_bit(&dir).is_err(),
            "a 64-bit IPA has no shared bit Linux can use"
        );
        std::fs::write(node.join("rampart,ipa-bits"), [0, 44]).unwrap();
        assert!(shared_bit(&dir).is_err(), "not one cell");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(shared_bit(&dir).is_err());
    }

    #[test]
    fn counts_the_transports_of_a_device_tree() {
        let mut i = super::super::fdt::tests::inputs();
        i.virtio_devices = 5;
        assert_eq!(declared_transports(&super::super::fdt::build(&i).unwrap()), 5);
        i.virtio_devices = 0;
        assert_eq!(declared_transports(&super::super::fdt::build(&i).unwrap()), 0);
    }

    #[test]
    fn earlycon_goes_to_the_alias_of_the_uart() {
        let bit = 1u64 << 47;
        assert_eq!(
            cmdline("console=ttyAMA0 earlycon panic=-1", bit),
            "console=ttyAMA0 earlycon=pl011,mmio32,0x800009000000 panic=-1"
        );
        assert_eq!(
            cmdline("earlycon=pl011,mmio32,0x9000000 quiet", bit),
            "earlycon=pl011,mmio32,0x9000000 quiet",
            "an explicit earlycon stays"
        );
        assert_eq!(cmdline("quiet", bit), "quiet");
    }

    #[test]
    fn both_aliases_reach_the_same_page() {
        let backing = Anon::new(4 * 4096);
        let len = backing.len;
        let bit = 1u64 << 38;
        // SAFETY: `backing` outlives `mem` (dropped first).
        let mem =
            unsafe { alias_memory(backing.ptr, len, len as u64, layout::RAM_BASE, bit) }.unwrap();
        let ram = layout::RAM_BASE;
        mem.write_obj(0x1122_3344_u32, GuestAddress((ram | bit) + 0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(ram + 0x1000)).unwrap(),
            0x1122_3344
        );
        assert!(mem.read_obj::<u32>(GuestAddress(ram + len as u64)).is_err());
        assert!(
            mem.read_obj::<u32>(GuestAddress((ram | bit) + len as u64))
                .is_err()
        );
        assert!(
            mem.read_obj::<u32>(GuestAddress(ram | (bit >> 1))).is_err(),
            "only the one alias"
        );
        drop(mem);
        // SAFETY: as above: `backing` is this test's own allocation of
        // `len` bytes, and 0x1000 + 4 lies inside it.
        let word = unsafe { backing.ptr.add(0x1000).cast::<u32>().read() };
        assert_eq!(word, 0x1122_3344);
        // SAFETY: as above.
        let bad = unsafe { alias_memory(backing.ptr, len, len as u64, layout::RAM_BASE, 3 << 38) };
        assert!(bad.is_err());
        // SAFETY: as above.
        let low = unsafe { alias_memory(backing.ptr, len, len as u64, layout::RAM_BASE, 1 << 20) };
        assert!(low.is_err(), "the shared bit must lie above RAM");
    }
}
