//! `run --attack-metadata`: the calls a hostile host makes on the pages the
//! hypervisor holds for a live VM (its metadata: vCPU state pages, the
//! stage-2 root and tables, the unused rest of the table pool), from user
//! space through the control pages. Every one must be refused with
//! `DENIED`; the VM must then still run (nothing changed).

use rampart_abi::Error;
use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::{HostCall, PAGE_SIZE, VmConfig};

use crate::hyp::{Hyp, call, error_name};

/// What the attacks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Calls refused with `DENIED`.
    pub refused: usize,
    /// Calls answered anything else: what, and the answer.
    pub accepted: Vec<String>,
}

/// The kinds of metadata page of a VM with `vcpus` vCPUs and `pages`
/// metadata pages from `metadata`: `(what, first page, pages)`.
#[must_use]
pub fn targets(metadata: u64, pages: u64, vcpus: u64) -> [(&'static str, u64, u64); 5] {
    [
        ("vCPU 0's state page", metadata, 1),
        ("the stage-2 root", metadata + vcpus * PAGE_SIZE, 1),
        ("a stage-2 table", metadata + (vcpus + 1) * PAGE_SIZE, 1),
        (
            "an unused stage-2 pool page",
            metadata + (pages - 1) * PAGE_SIZE,
            1,
        ),
        ("the whole metadata", metadata, pages),
    ]
}

/// Makes every call on every kind of metadata page of VM `handle`.
pub fn attack_metadata(
    hyp: &dyn Hyp,
    handle: u64,
    metadata: u64,
    pages: u64,
    vcpus: u64,
) -> Findings {
    let mut findings = Findings::default();
    let far = GUEST_RAM_BASE + (256 << 20);
    let config = VmConfig {
        debug: false,
        protected: true,
        max_vcpus: 1,
    };
    for (what, page, count) in targets(metadata, pages, vcpus) {
        let create_pages = config.min_metadata_pages().max(count);
        let attempts: [(HostCall, &[u64]); 7] = [
            (HostCall::ReclaimHyp, &[page, count]),
            (HostCall::UnshareHyp, &[page, count]),
            (HostCall::ShareHyp, &[page, count]),
            (HostCall::DonateHyp, &[page, count]),
            (HostCall::VmDonate, &[handle, page, count, far]),
            (HostCall::VmShare, &[handle, page, count, far]),
            (HostCall::VmCreate, &[page, create_pages, config.encode()]),
        ];
        for (c, args) in attempts {
            let r = call(hyp, c.id(), args);
            let code = r[0] as i64;
            if c == HostCall::VmCreate && code == 0 {
                let _ = call(hyp, HostCall::VmDestroy.id(), &[r[1]]);
            }
            if code == Error::Denied.code() {
                findings.refused += 1;
            } else {
                let answer = if code == 0 {
                    "SUCCESS".to_string()
                } else {
                    error_name(code)
                };
                findings.accepted.push(format!(
                    "{} of {what} ({page:#x}, {count} pages) = {answer}",
                    c.name()
                ));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyp::fake::Fake;

    #[test]
    fn targets_cover_every_kind_of_metadata_page() {
        let t = targets(0x4000_0000, 34, 2);
        assert_eq!(t[0].1, 0x4000_0000);
        assert_eq!(t[1].1, 0x4000_2000);
        assert_eq!(t[2].1, 0x4000_3000);
        assert_eq!(t[3].1, 0x4000_0000 + 33 * 0x1000);
        assert_eq!((t[4].1, t[4].2), (0x4000_0000, 34));
    }

    #[test]
    fn anything_but_denied_is_reported() {
        // The fake hypervisor answers SUCCESS to every call.
        let fake = Fake::with_scripts(Vec::new());
        let f = attack_metadata(&fake, 0x1000, 0x4000_0000, 34, 1);
        assert_eq!(f.refused, 0);
        assert_eq!(f.accepted.len(), 35);
        assert!(
            f.accepted[0].contains("RAMPART_HOST_RECLAIM_HYP of vCPU 0's state page"),
            "{}",
            f.accepted[0]
        );
    }
}
