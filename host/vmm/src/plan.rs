//! From a bundle and the command line to what the VMM will do: the VM's
//! configuration, its entry registers, how many pool pages it needs and
//! how they are laid out.
//!
//! Everything here follows `rampart_attest`'s measurement definition
//! (`docs/formats.md`): the image at `GUEST_RAM_BASE`, `memory_size` bytes
//! donated there as one range (image, zero padding, zero pages), vCPU 0 at
//! `GUEST_RAM_BASE + entry_offset` with `x0 = memory_size`.

use anyhow::{Result, bail};
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{PAGE_SIZE, VmConfig};
use rampart_attest::{BundleRef, Manifest};

/// Where each part of a VM lives inside the pool region it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The VM's configuration (`VM_CREATE`'s `x3`).
    pub config: VmConfig,
    /// Guest RAM in bytes (donated at `GUEST_RAM_BASE`).
    pub memory_size: u64,
    /// vCPU 0's entry PC.
    pub entry_pc: u64,
    /// vCPU 0's `x0`.
    pub x0: u64,
    /// Metadata pages donated with `VM_CREATE`.
    pub metadata_pages: u64,
    /// Whether the run differs from the signed manifest (the hypervisor
    /// will then refuse a protected VM).
    pub differs_from_manifest: bool,
}

/// Alignment of every region in the pool, and of guest RAM inside it.
pub const REGION_ALIGN: u64 = 64 << 10;

impl Plan {
    /// Guest RAM pages.
    #[must_use]
    pub const fn memory_pages(&self) -> u64 {
        self.memory_size / PAGE_SIZE
    }

    /// Offset of guest RAM in the region (first: it stays aligned).
    #[must_use]
    pub const fn memory_offset(&self) -> u64 {
        0
    }

    /// Offset of the metadata pages in the region.
    #[must_use]
    pub const fn metadata_offset(&self) -> u64 {
        self.memory_size
    }

    /// Pool pages the VM needs.
    #[must_use]
    pub const fn total_pages(&self) -> u64 {
        self.memory_pages() + self.metadata_pages
    }
}

/// Stage-2 table pages to give a VM with `memory_size` bytes of RAM, beyond
/// [`VmConfig::min_metadata_pages`]: one last-level table per 2 MiB, one
/// per GiB above it, and 16 for the upper levels, the console's MMIO-guard
/// mapping and pages donated later.
#[must_use]
pub const fn stage2_extra_pages(memory_size: u64) -> u64 {
    16 + memory_size.div_ceil(2 << 20) + memory_size.div_ceil(1 << 30)
}

/// What the command line asks for beyond the bundle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--mem`.
    pub memory_size: Option<u64>,
    /// `--cpus`.
    pub vcpus: Option<u32>,
    /// `--ignore-manifest`: run even if the above differ from the manifest.
    pub ignore_manifest: bool,
    /// `--stage2-pages`: extra stage-2 pages instead of the estimate.
    pub stage2_pages: Option<u64>,
}

/// Plans the VM for `bundle`.
///
/// # Errors
///
/// If `--mem`/`--cpus` differ from the signed manifest (unless
/// `ignore_manifest`), or are out of range.
pub fn plan(bundle: &BundleRef<'_>, over: &Overrides) -> Result<Plan> {
    let m = bundle.manifest;
    let memory_size = over.memory_size.unwrap_or(m.memory_size);
    let vcpus = over.vcpus.unwrap_or(m.vcpus);
    let mut mismatches = Vec::new();
    if memory_size != m.memory_size {
        mismatches.push(format!(
            "--mem {memory_size:#x} differs from the manifest's memory size {:#x} ({} KiB)",
            m.memory_size,
            m.memory_size / 1024
        ));
    }
    if vcpus != m.vcpus {
        mismatches.push(format!(
            "--cpus {vcpus} differs from the manifest's {} vCPU(s)",
            m.vcpus
        ));
    }
    let differs = !mismatches.is_empty();
    if differs && !over.ignore_manifest {
        let consequence = if m.flags.protected {
            "the signed measurement covers the manifest, so the hypervisor would refuse this protected VM (BAD_SIGNATURE)"
        } else {
            "the VM would not match its signed measurement (its attestation reports would show a different one)"
        };
        bail!(
            "{}: {consequence}; leave them out to use the manifest's values, or pass --ignore-manifest to run anyway",
            mismatches.join("; ")
        );
    }
    // The same range checks as the manifest's, for the values actually used.
    let effective = Manifest {
        memory_size,
        vcpus,
        ..m
    };
    effective
        .validate(bundle.image.len() as u64)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.field()))?;
    let config = VmConfig {
        protected: m.flags.protected,
        debug: m.flags.debug,
        max_vcpus: u64::from(vcpus),
    };
    let state = effective.initial_state();
    Ok(Plan {
        config,
        memory_size,
        entry_pc: state.entry_pc,
        x0: state.x0,
        metadata_pages: config.min_metadata_pages()
            + over.stage2_pages.unwrap_or(stage2_extra_pages(memory_size)),
        differs_from_manifest: differs,
    })
}

/// The guest-physical address `ipa` as an offset into guest RAM, if it is
/// a page of it.
#[must_use]
pub fn ram_offset(plan: &Plan, ipa: u64) -> Option<u64> {
    let offset = ipa.checked_sub(GUEST_RAM_BASE)?;
    (offset < plan.memory_size && offset.is_multiple_of(PAGE_SIZE)).then_some(offset)
}

/// Parses a size: decimal or `0x` hex with an optional `K`, `M` or `G`
/// suffix (powers of 1024), as `rampart sign --memory` takes.
///
/// # Errors
///
/// A message saying what is wrong.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = if let Some(hex) = number
        .strip_prefix("0x")
        .or_else(|| number.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
    } else {
        number.parse()
    }
    .map_err(|_| format!("{text:?} is not a size (decimal or 0x hex, optional K/M/G)"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rampart_attest::{Bundle, SigningKey, VmFlags};

    pub fn bundle_bytes(memory_size: u64, vcpus: u32, protected: bool, image: &[u8]) -> Vec<u8> {
        let manifest = Manifest {
            memory_size,
            vcpus,
            entry_offset: 4,
            flags: VmFlags {
                protected,
                debug: false,
                realm: false,
            },
        };
        Bundle::build(&manifest, image, &SigningKey::from_bytes(&[7; 32])).unwrap()
    }

    #[test]
    fn follows_the_manifest() {
        let bytes = bundle_bytes(1 << 20, 2, true, &[0xaa; 5000]);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        assert_eq!(p.config.encode(), 0x201);
        assert_eq!(p.memory_size, 1 << 20);
        assert_eq!(p.memory_pages(), 256);
        assert_eq!(p.entry_pc, GUEST_RAM_BASE + 4);
        assert_eq!(p.x0, 1 << 20);
        // 1 VM + 2 vCPUs + 8 stage-2 minimum + 16 + 1 (2 MiB) + 1 (1 GiB).
        assert_eq!(p.metadata_pages, 11 + 18);
        assert_eq!(p.total_pages(), 256 + 29);
        assert_eq!(p.metadata_offset(), 1 << 20);
        assert!(!p.differs_from_manifest);
        assert_eq!(p.config.protected, b.manifest.flags.protected);
        // The same values the measurement uses.
        assert_eq!(b.manifest.initial_state().entry_pc, p.entry_pc);
        assert_eq!(b.manifest.initial_state().x0, p.x0);
    }

    #[test]
    fn overrides_must_match_the_manifest() {
        let bytes = bundle_bytes(1 << 20, 1, true, &[1; 64]);
        let b = Bundle::parse(&bytes).unwrap();
        let same = Overrides {
            memory_size: Some(1 << 20),
            vcpus: Some(1),
            ..Overrides::default()
        };
        assert!(plan(&b, &same).is_ok());
        let more = Overrides {
            memory_size: Some(2 << 20),
            ..Overrides::default()
        };
        let e = plan(&b, &more).unwrap_err().to_string();
        assert!(
            e.contains("--mem 0x200000 differs") && e.contains("BAD_SIGNATURE"),
            "{e}"
        );
        let cpus = Overrides {
            vcpus: Some(2),
            ..Overrides::default()
        };
        assert!(
            plan(&b, &cpus)
                .unwrap_err()
                .to_string()
                .contains("--cpus 2")
        );
        let forced = Overrides {
            ignore_manifest: true,
            ..more
        };
        let p = plan(&b, &forced).unwrap();
        assert!(p.differs_from_manifest);
        assert_eq!((p.memory_size, p.x0), (2 << 20, 2 << 20));
        // Out of range even when forced.
        let bad = Overrides {
            vcpus: Some(9),
            ignore_manifest: true,
            ..Overrides::default()
        };
        assert!(plan(&b, &bad).unwrap_err().to_string().contains("vcpus"));
        let small = Overrides {
            memory_size: Some(4096 * 3),
            ignore_manifest: true,
            ..Overrides::default()
        };
        assert!(
            plan(
                &Bundle::parse(&bundle_bytes(1 << 20, 1, false, &[1; 5 * 4096])).unwrap(),
                &small
            )
            .is_err()
        );
    }

    #[test]
    fn stage2_estimate_grows_with_memory() {
        assert_eq!(stage2_extra_pages(4096), 18);
        assert_eq!(stage2_extra_pages(16 << 20), 16 + 8 + 1);
        assert_eq!(stage2_extra_pages(3 << 30), 16 + 1536 + 3);
        let bytes = bundle_bytes(1 << 20, 1, false, &[1; 64]);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(
            &b,
            &Overrides {
                stage2_pages: Some(0),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(p.metadata_pages, 10);
    }

    #[test]
    fn translates_guest_addresses() {
        let bytes = bundle_bytes(1 << 20, 1, true, &[1; 64]);
        let p = plan(&Bundle::parse(&bytes).unwrap(), &Overrides::default()).unwrap();
        assert_eq!(ram_offset(&p, GUEST_RAM_BASE), Some(0));
        assert_eq!(ram_offset(&p, GUEST_RAM_BASE + 0x3000), Some(0x3000));
        assert_eq!(ram_offset(&p, GUEST_RAM_BASE + 0x3008), None);
        assert_eq!(ram_offset(&p, GUEST_RAM_BASE + (1 << 20)), None);
        assert_eq!(ram_offset(&p, 0x4000_0000), None);
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0xffffffffffffffffK").is_err());
    }
}
