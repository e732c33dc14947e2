//! Building a VM from a plan, and tearing it down.
//!
//! The order and every value follow `rampart_attest`'s measurement
//! definition: the image copied to the start of guest RAM and the rest
//! zeroed *before* donation; `VM_CREATE` with the manifest's flags and vCPU
//! count; `VCPU_CREATE` for every vCPU; one `VM_DONATE` of all of guest RAM
//! at `GUEST_RAM_BASE`; `VCPU_SET_REGS` for vCPU 0 (PC = `GUEST_RAM_BASE +
//! entry_offset`, `x0` = memory size); then `VM_SET_SIGNATURE` with the
//! bundle's signer and signature.

use std::time::Duration;

use anyhow::{Result, anyhow};
use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{HostCall, PAGE_SIZE, bytes_to_words};
use rampart_attest::BundleRef;

use crate::hyp::{CallError, Hyp, checked};
use crate::mem::Mapping;
use crate::plan::Plan;

/// Copies the image to the start of guest RAM in `region` and zeroes the
/// rest of guest RAM (the region must be the host's).
pub fn load_image(region: &Mapping, plan: &Plan, image: &[u8]) {
    let start = usize::try_from(plan.memory_offset()).expect("offset fits usize");
    let size = usize::try_from(plan.memory_size).expect("memory size fits usize");
    region.write_bytes(start, image);
    let written = image.len().next_multiple_of(8);
    region.zero(start + written, size - written);
}

/// Where the VM's pages are, physically.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// Physical address of the VM's pool region.
    pub region_phys: u64,
}

impl Placement {
    /// Physical address of guest RAM.
    #[must_use]
    pub const fn ram(&self, plan: &Plan) -> u64 {
        self.region_phys + plan.memory_offset()
    }

    /// Physical address of the metadata pages.
    #[must_use]
    pub const fn metadata(&self, plan: &Plan) -> u64 {
        self.region_phys + plan.metadata_offset()
    }
}

fn explain(e: CallError, plan: &Plan, place: &Placement) -> anyhow::Error {
    let hint = match (HostCall::try_from(e.id), e.error()) {
        (Ok(HostCall::VmCreate), Some(Error::NoMemory)) => {
            "every VM slot is in use: `rampart-vmm list` shows them, `rampart-vmm reclaim` destroys those of VMMs that were killed".to_string()
        }
        (Ok(HostCall::VmCreate | HostCall::VmDonate), Some(Error::Denied)) => format!(
            "some pool pages at {:#x}..{:#x} are not the host's: a VM left by a killed VMM may still hold them (`rampart-vmm reclaim`)",
            place.region_phys,
            place.region_phys + plan.total_pages() * PAGE_SIZE
        ),
        (Ok(HostCall::VmCreate | HostCall::VmDonate), Some(Error::Range)) => {
            "the pool is not RAM the hypervisor lets the host give away".to_string()
        }
        (Ok(HostCall::VmDonate), Some(Error::NoMemory)) => format!(
            "the VM ran out of stage-2 table pages ({} metadata pages): pass a larger --stage2-pages",
            plan.metadata_pages
        ),
        _ => String::new(),
    };
    if hint.is_empty() {
        anyhow!("{e}")
    } else {
        anyhow!("{e}: {hint}")
    }
}

/// Creates the VM (guest RAM must already hold the image): returns its
/// handle. `created` is called with the handle right after `VM_CREATE`
/// (to record it). If a later step fails the VM is destroyed again.
///
/// # Errors
///
/// The failing call, explained.
pub fn create(
    hyp: &dyn Hyp,
    plan: &Plan,
    place: &Placement,
    bundle: &BundleRef<'_>,
    created: &mut dyn FnMut(u64),
) -> Result<u64> {
    let r = checked(
        hyp,
        HostCall::VmCreate.id(),
        &[
            place.metadata(plan),
            plan.metadata_pages,
            // issue 12: a realm bundle (measured flag) makes a realm VM.
            plan.config.encode()
                | if bundle.manifest.flags.realm {
                    rampart_abi::host::VmConfig::REALM
                } else {
                    0
                },
        ],
    )
    .map_err(|e| explain(e, plan, place))?;
    let handle = r[1];
    created(handle);
    let setup = || -> Result<()> {
        for i in 0..plan.config.max_vcpus {
            checked(hyp, HostCall::VcpuCreate.id(), &[handle, i])
                .map_err(|e| explain(e, plan, place).context(format!("vCPU {i}")))?;
        }
        checked(
            hyp,
            HostCall::VmDonate.id(),
            &[handle, place.ram(plan), plan.memory_pages(), GUEST_RAM_BASE],
        )
        .map_err(|e| explain(e, plan, place))?;
        checked(
            hyp,
            HostCall::VcpuSetRegs.id(),
            &[handle, 0, plan.entry_pc, plan.x0],
        )
        .map_err(|e| explain(e, plan, place))?;
        if bundle.signer != [0; 32] || bundle.signature != [0; 64] {
            let mut args = [0u64; 13];
            args[0] = handle;
            args[1..5].copy_from_slice(&bytes_to_words::<4>(&bundle.signer));
            args[5..13].copy_from_slice(&bytes_to_words::<8>(&bundle.signature));
            checked(hyp, HostCall::VmSetSignature.id(), &args)
                .map_err(|e| explain(e, plan, place))?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        if let Err(d) = destroy(hyp, handle) {
            return Err(e.context(format!(
                "and destroying the half-built VM {handle:#x} failed too: {d}"
            )));
        }
        return Err(e);
    }
    Ok(handle)
}

/// `VM_DESTROY`, retrying `BUSY` for up to 2 s (a vCPU still running).
///
/// # Errors
///
/// The call's error.
pub fn destroy(hyp: &dyn Hyp, handle: u64) -> Result<(), CallError> {
    let mut tries = 0;
    loop {
        match checked(hyp, HostCall::VmDestroy.id(), &[handle]) {
            Err(e) if e.error() == Some(Error::Busy) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::fake::Fake;
    use crate::plan::{Overrides, plan, tests::bundle_bytes};
    use rampart_attest::{Bundle, measure_image};

    #[test]
    fn loads_and_creates_exactly_what_is_measured() {
        let image: Vec<u8> = (0..5003u32).map(|i| (i % 251) as u8).collect();
        let bytes = bundle_bytes(64 << 10, 2, true, &image);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let region =
            Mapping::anonymous(usize::try_from(p.total_pages() * PAGE_SIZE).unwrap()).unwrap();
        // Garbage first: loading must zero it.
        region.write_bytes(0, &[0xee; 64 << 10]);
        load_image(&region, &p, b.image);

        // What the hypervisor would measure from those pages.
        let mut m = rampart_attest::Measurer::new(&b.manifest.initial_state());
        for page in 0..p.memory_pages() {
            let words: Vec<u8> = (0..512)
                .flat_map(|w| {
                    region
                        .read_u64(usize::try_from(page * 4096).unwrap() + w * 8)
                        .to_le_bytes()
                })
                .collect();
            m.page(GUEST_RAM_BASE + page * 4096, &words.try_into().unwrap())
                .unwrap();
        }
        assert_eq!(m.finish(), measure_image(&b.manifest, b.image).unwrap());
        assert_eq!(b.computed_measurement(), b.measurement);

        let fake = Fake::with_scripts(vec![]);
        let place = Placement {
            region_phys: 0x7c01_0000,
        };
        let mut recorded = 0;
        let h = create(&fake, &p, &place, &b, &mut |h| recorded = h).unwrap();
        assert_eq!(h, recorded);
        let calls = fake.state.lock().unwrap().calls.clone();
        let ids: Vec<u64> = calls.iter().map(|r| r[0]).collect();
        assert_eq!(
            ids,
            [
                HostCall::VmCreate,
                HostCall::VcpuCreate,
                HostCall::VcpuCreate,
                HostCall::VmDonate,
                HostCall::VcpuSetRegs,
                HostCall::VmSetSignature
            ]
            .map(|c| u64::from(c.id()))
        );
        assert_eq!(
            calls[0][1..4],
            [0x7c01_0000 + (64 << 10), p.metadata_pages, 0x201]
        );
        assert_eq!(calls[2][1..3], [h, 1]);
        assert_eq!(calls[3][1..5], [h, 0x7c01_0000, 16, GUEST_RAM_BASE]);
        assert_eq!(calls[4][1..5], [h, 0, GUEST_RAM_BASE + 4, 64 << 10]);
        assert_eq!(
            rampart_abi::host::words_to_bytes::<32>(&calls[5][2..6]),
            b.signer
        );
        assert_eq!(
            rampart_abi::host::words_to_bytes::<64>(&calls[5][6..14]),
            b.signature
        );
    }

    #[test]
    fn a_failed_step_destroys_the_vm_and_explains() {
        let bytes = bundle_bytes(64 << 10, 1, true, &[1; 100]);
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let fake = Fake::with_scripts(vec![]);
        fake.state.lock().unwrap().fail = Some((HostCall::VmDonate.id(), -18));
        let place = Placement {
            region_phys: 0x7c00_0000,
        };
        let e = format!(
            "{:#}",
            create(&fake, &p, &place, &b, &mut |_| {}).unwrap_err()
        );
        assert!(
            e.contains("VM_DONATE returned NO_MEMORY") && e.contains("--stage2-pages"),
            "{e}"
        );
        assert!(fake.state.lock().unwrap().live.is_empty(), "destroyed");
        assert_eq!(fake.calls_of(HostCall::VmDestroy).len(), 1);

        fake.state.lock().unwrap().fail = Some((HostCall::VmCreate.id(), -18));
        let e = format!(
            "{:#}",
            create(&fake, &p, &place, &b, &mut |_| {}).unwrap_err()
        );
        assert!(e.contains("every VM slot is in use"), "{e}");
    }

    #[test]
    fn an_unsigned_bundle_sets_no_signature() {
        let m = rampart_attest::Manifest {
            memory_size: 8192,
            vcpus: 1,
            entry_offset: 0,
            flags: rampart_attest::VmFlags::default(),
        };
        let bytes = Bundle::build_unsigned(&m, &[1; 8]).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        let p = plan(&b, &Overrides::default()).unwrap();
        let fake = Fake::with_scripts(vec![]);
        create(&fake, &p, &Placement { region_phys: 0 }, &b, &mut |_| {}).unwrap();
        assert!(fake.calls_of(HostCall::VmSetSignature).is_empty());
        assert_eq!(fake.calls_of(HostCall::VmCreate)[0][3], 0x100);
    }
}
