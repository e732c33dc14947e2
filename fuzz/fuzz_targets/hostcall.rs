//! Fuzz target: raw bytes become host hypercalls (`x0`, `x1`, `x2`) that go
//! through the ABI decoder (`HostRequest::decode`) and then, as the
//! hypervisor does, through the ownership table. After every call the
//! harness checks the table invariants, that a refused call changed no
//! entry, and that no call changed a page held for a VM (`VM_CREATE`
//! metadata): only `VM_DESTROY` may release it, and the host cannot call
//! that on a page.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_abi::host::{HostCall, HostRequest};
use rampart_ownership::{PAGE_SIZE, PageMeta, PageState, Pfn, PhysAddr, Table, Transition, VmId};

/// First page frame of the fuzzed table (RAM at 1 GiB, as on QEMU virt).
const BASE: u64 = 0x4_0000;
/// Pages in the fuzzed table.
const PAGES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut entries = [PageMeta::HOST_OWNED; PAGES];
    let mut table = Table::new(&mut entries, Pfn(BASE)).expect("table fits");
    // The first four pages play the hypervisor's carve-out.
    table.host_donate_hyp(PhysAddr(BASE * PAGE_SIZE), 4).expect("fresh table");
    for chunk in data.chunks(17).take(256) {
        let mut word = [0u8; 17];
        word[..chunk.len()].copy_from_slice(chunk);
        let function = match word[0] % 9 {
            n @ 0..=6 => u64::from(HostCall::ALL[usize::from(n)].id()),
            7 => u64::from(u32::from_le_bytes([word[1], word[2], word[3], word[4]])),
            _ => u64::from_le_bytes(word[1..9].try_into().unwrap()),
        };
        // x1: mostly a page in or near the table; x2: mostly a small count.
        let raw1 = u64::from_le_bytes(word[1..9].try_into().unwrap());
        let x1 = if word[9] < 0xe0 { (BASE + u64::from(word[10]) % (PAGES as u64 + 4)) * PAGE_SIZE } else { raw1 };
        let x2 = if word[11] < 0xe0 { u64::from(word[12] % 16) } else { u64::from_le_bytes(word[9..17].try_into().unwrap()) };
        // x3 of VM_CREATE: one vCPU, protected.
        let x3 = if function == u64::from(HostCall::VmCreate.id()) { 0x101 } else { 0 };
        let Ok(request) = HostRequest::decode(&{ let mut r = [0u64; 18]; r[0] = function; r[1] = x1; r[2] = x2; r[3] = x3; r }) else { continue };
        let (transition, range) = match request {
            HostRequest::ShareHyp(r) => (Transition::HostShareHyp, r),
            HostRequest::UnshareHyp(r) => (Transition::HostUnshareHyp, r),
            HostRequest::DonateHyp(r) => (Transition::HostDonateHyp, r),
            HostRequest::ReclaimHyp(r) => {
                // The hypervisor refuses to hand out its carve-out.
                if r.start() < (BASE + 4) * PAGE_SIZE && r.end() > BASE * PAGE_SIZE {
                    continue;
                }
                (Transition::HypDonateHost, r)
            }
            // VM_CREATE's metadata, held for VM 1 (the hypervisor's slot
            // logic is not modelled here).
            HostRequest::VmCreate { metadata, .. } => (Transition::HostDonateVmMeta(VmId(1)), metadata),
            _ => continue,
        };
        // Decoding guarantees what the table's range checks also enforce.
        assert_eq!(range.start() % PAGE_SIZE, 0);
        assert!(range.pages() > 0);
        let before: Vec<u32> = (0..PAGES as u64)
            .map(|i| table.page_state(PhysAddr((BASE + i) * PAGE_SIZE)).map(|s| s.encode().bits()).unwrap_or(u32::MAX))
            .collect();
        let result = table.apply(transition, PhysAddr(range.start()), range.pages());
        if result.is_err() {
            let after: Vec<u32> = (0..PAGES as u64)
                .map(|i| table.page_state(PhysAddr((BASE + i) * PAGE_SIZE)).map(|s| s.encode().bits()).unwrap_or(u32::MAX))
                .collect();
            assert_eq!(before, after, "a refused call changed the table");
        }
        for i in 0..PAGES as u64 {
            let before_state = PageMeta::from_bits(before[i as usize]).decode();
            if let Some(PageState::HypOwnedForVm(_)) = before_state {
                let now = table.page_state(PhysAddr((BASE + i) * PAGE_SIZE)).ok();
                assert_eq!(now, before_state, "a host call changed a page held for a VM");
            }
        }
        table.check_invariants().expect("invariants hold after every call");
    }
});
