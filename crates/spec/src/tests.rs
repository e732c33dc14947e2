//! The specification's own tests: the contract's examples from
//! `docs/abi.md`, and properties over random call sequences.

extern crate std;

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;
use rampart_abi::guest::GuestCall;
use rampart_abi::host::HostCall;

use super::*;

const RAM: (u64, u64) = (0x4000_0000, 0x4000_0000 + 512 * PAGE);
const CARVE: (u64, u64) = (0x4000_0000, 0x4000_0000 + 16 * PAGE);
const NONE: (u64, u64) = (0, 0);

fn spec() -> Box<Spec<'static>> {
    let bytes: &'static mut [u8] = Box::leak(vec![0u8; 512].into_boxed_slice());
    let mut s = Box::new(Spec::empty(&mut []));
    assert!(s.init(bytes, &[RAM], [CARVE, NONE], 40));
    s
}

fn regs(call: HostCall, args: &[u64]) -> [u64; 18] {
    let mut r = [0u64; 18];
    r[0] = u64::from(call.id());
    r[1..=args.len()].copy_from_slice(args);
    r
}

fn page(n: u64) -> u64 {
    RAM.0 + n * PAGE
}

/// Predicts and commits as if the hypervisor answered `x0` (`x1`).
fn run(s: &mut Spec<'_>, call: HostCall, args: &[u64], x0: i64, x1: u64) -> Result<(), Violation> {
    let p = s.predict_host(&regs(call, args));
    s.commit(&p, x0, x1)
}

fn create(s: &mut Spec<'_>, meta: u64, protected: bool) -> u64 {
    let p = s.predict_host(&regs(
        HostCall::VmCreate,
        &[page(meta), 11, (2 << 8) | u64::from(protected)],
    ));
    let slot = (0..MAX_VMS).find(|&i| s.vms[i].is_none()).unwrap();
    let handle = (u64::from(s.generations[slot]) << 32) | (HANDLE_BASE + slot as u64);
    s.commit(&p, 0, handle).unwrap();
    handle
}

#[test]
fn boot_state() {
    let s = spec();
    assert_eq!(s.page(CARVE.0), Some(Page::HypOwn));
    assert_eq!(s.page(page(16)), Some(Page::Host));
    assert_eq!(s.page(RAM.1), None);
}

#[test]
fn memory_calls_follow_the_table() {
    let mut s = spec();
    run(&mut s, HostCall::ShareHyp, &[page(20), 2], 0, 0).unwrap();
    assert_eq!(s.page(page(21)), Some(Page::HostSharedHyp));
    // Already shared: DENIED, and success would be a violation.
    assert!(
        run(
            &mut s,
            HostCall::DonateHyp,
            &[page(21), 1],
            Error::Denied.code(),
            0
        )
        .is_ok()
    );
    assert!(run(&mut s, HostCall::ShareHyp, &[page(21), 1], 0, 0).is_err());
    run(&mut s, HostCall::UnshareHyp, &[page(20), 2], 0, 0).unwrap();
    assert_eq!(s.page(page(20)), Some(Page::Host));
    run(&mut s, HostCall::DonateHyp, &[page(30), 1], 0, 0).unwrap();
    assert_eq!(s.page(page(30)), Some(Page::HypDonated));
    let p = s.predict_host(&regs(HostCall::ReclaimHyp, &[page(30), 1]));
    let mut zero = Vec::new();
    s.must_be_zero(&p.effect, &mut |a, n| zero.push((a, n)));
    assert_eq!(zero, vec![(page(30), 1)]);
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(30)), Some(Page::Host));
}

#[test]
fn errors_come_in_the_documented_order() {
    let s = spec();
    let code = |call, args: &[u64]| s.predict_host(&regs(call, args)).allowed;
    assert_eq!(
        code(HostCall::ShareHyp, &[page(1) + 1, 1]),
        Outcomes::error(Error::InvalidParameter)
    );
    assert_eq!(
        code(HostCall::ShareHyp, &[page(20), 0]),
        Outcomes::error(Error::InvalidParameter)
    );
    assert_eq!(
        code(HostCall::ShareHyp, &[RAM.1 - PAGE, 2]),
        Outcomes::error(Error::Range)
    );
    assert_eq!(
        code(HostCall::ShareHyp, &[0x0900_0000, 1]),
        Outcomes::error(Error::Range)
    );
    assert_eq!(
        code(HostCall::ReclaimHyp, &[CARVE.0, 1]),
        Outcomes::error(Error::Denied)
    );
    assert_eq!(
        code(HostCall::DonateHyp, &[CARVE.0, 1]),
        Outcomes::error(Error::Denied)
    );
    assert!(!code(HostCall::ShareHyp, &[page(20), 1]).allows(Error::Busy.code()));
    assert!(code(HostCall::ShareHyp, &[page(20), 1]).allows(Error::NoMemory.code()));
}

#[test]
fn vm_metadata_is_held_until_destroy() {
    let mut s = spec();
    let vm = create(&mut s, 100, true);
    assert_eq!(s.page(page(100)), Some(Page::VmMeta(0)));
    for call in [
        HostCall::ReclaimHyp,
        HostCall::ShareHyp,
        HostCall::UnshareHyp,
        HostCall::DonateHyp,
    ] {
        // Issue 9: taking back a live VM's tables must be refused.
        assert_eq!(
            s.predict_host(&regs(call, &[page(104), 1])).allowed,
            Outcomes::error(Error::Denied),
            "{call:?}"
        );
        assert!(run(&mut s, call, &[page(104), 1], 0, 0).is_err());
        // The failed commit above changed nothing.
    }
    // (The violation above was committed as success; start again.)
    let mut s = spec();
    let vm2 = create(&mut s, 100, true);
    assert_eq!(vm, vm2);
    run(
        &mut s,
        HostCall::VmDonate,
        &[vm, page(200), 4, 0x8000_0000],
        0,
        0,
    )
    .unwrap();
    assert_eq!(s.page(page(203)), Some(Page::Vm(0)));
    // Same guest address again: DENIED.
    assert_eq!(
        s.predict_host(&regs(HostCall::VmDonate, &[vm, page(210), 1, 0x8000_3000]))
            .allowed,
        Outcomes::error(Error::Denied).or_error(Error::NoMemory)
    );
    // Sharing with a protected VM: DENIED.
    assert_eq!(
        s.predict_host(&regs(HostCall::VmShare, &[vm, page(210), 1, 0x9000_0000]))
            .allowed,
        Outcomes::error(Error::Denied).or_error(Error::NoMemory)
    );
    // The guest shares a page, relinquishes another.
    let p = s
        .predict_guest(0, GuestCall::MemShare.id(), [0x8000_1000, 0, 0], None)
        .unwrap();
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(201)), Some(Page::VmSharedHost(0)));
    let p = s
        .predict_guest(0, GuestCall::MemRelinquish.id(), [0x8000_2000, 0, 0], None)
        .unwrap();
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(202)), Some(Page::Host));
    assert_eq!(s.vms[0].as_ref().unwrap().translate(0x8000_2000), None);
    assert_eq!(
        s.vms[0].as_ref().unwrap().translate(0x8000_3000),
        Some(page(203))
    );
    // Destroy: everything comes back; owned pages and metadata zeroed.
    let p = s.predict_host(&regs(HostCall::VmDestroy, &[vm]));
    let mut zero = 0;
    s.must_be_zero(&p.effect, &mut |_, n| zero += n);
    assert_eq!(zero, 11 + 3);
    s.commit(&p, 0, 0).unwrap();
    assert!(
        (0..512)
            .all(|i| s.page(page(i)) != Some(Page::Vm(0))
                && s.page(page(i)) != Some(Page::VmMeta(0)))
    );
    // The stale handle is dead; the next VM in the slot has generation 1.
    assert_eq!(
        s.predict_host(&regs(HostCall::VmDestroy, &[vm])).allowed,
        Outcomes::error(Error::InvalidParameter)
    );
    let vm3 = create(&mut s, 300, false);
    assert_eq!(vm3 >> 32, 1);
    // A handle a free slot could not have given is a violation.
    let mut s = spec();
    let p = s.predict_host(&regs(HostCall::VmCreate, &[page(100), 11, 2 << 8]));
    assert_eq!(
        s.commit(&p, 0, (5 << 32) | HANDLE_BASE),
        Err(Violation::Handle {
            got: (5 << 32) | HANDLE_BASE
        })
    );
}

/// One random host call over a small, collision-prone argument space.
#[derive(Clone, Debug)]
enum Op {
    Mem(u8, u64, u64),
    Create(u64, u64, bool),
    Destroy(usize),
    Give(usize, u64, u64, u64, bool),
    Guest(usize, u8, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u64..40, 1u64..4).prop_map(|(c, p, n)| Op::Mem(c, p, n)),
        (0u64..40, 9u64..14, any::<bool>()).prop_map(|(p, n, pr)| Op::Create(p, n, pr)),
        (0usize..3).prop_map(Op::Destroy),
        (0usize..3, 0u64..40, 1u64..3, 0u64..6, any::<bool>())
            .prop_map(|(v, p, n, g, sh)| Op::Give(v, p, n, g, sh)),
        (0usize..3, 0u8..3, 0u64..6).prop_map(|(v, c, g)| Op::Guest(v, c, g)),
    ]
}

fn snapshot(s: &Spec<'_>) -> Vec<Option<Page>> {
    (0..512).map(|i| s.page(page(i))).collect()
}

proptest! {
    /// Against an implementation that answers with the first allowed
    /// result (success when allowed): a refused call changes nothing; the
    /// state stays well-formed (every page held for or owned by a VM names
    /// a live VM; the carve-out stays the hypervisor's); destroying every
    /// VM gives every page but the carve-out back to the host.
    #[test]
    fn random_sequences_keep_the_state_well_formed(ops in proptest::collection::vec(op(), 1..60), fail in any::<u64>()) {
        let mut s = spec();
        let mut handles: Vec<u64> = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let before = snapshot(&s);
            let p = match op {
                Op::Mem(c, p, n) => {
                    let call = [HostCall::ShareHyp, HostCall::UnshareHyp, HostCall::DonateHyp, HostCall::ReclaimHyp][c as usize];
                    s.predict_host(&regs(call, &[page(p), n]))
                }
                Op::Create(p, n, pr) => s.predict_host(&regs(HostCall::VmCreate, &[page(p), n, (2 << 8) | u64::from(pr)])),
                Op::Destroy(v) => s.predict_host(&regs(HostCall::VmDestroy, &[handles.get(v).copied().unwrap_or(7)])),
                Op::Give(v, p, n, g, sh) => {
                    let call = if sh { HostCall::VmShare } else { HostCall::VmDonate };
                    s.predict_host(&regs(call, &[handles.get(v).copied().unwrap_or(7), page(p), n, 0x8000_0000 + g * PAGE]))
                }
                Op::Guest(v, c, g) => {
                    let f = [GuestCall::MemShare, GuestCall::MemUnshare, GuestCall::MemRelinquish][c as usize].id();
                    match s.predict_guest(v, f, [0x8000_0000 + g * PAGE, 0, 0], None) {
                        Some(p) => p,
                        None => continue,
                    }
                }
            };
            // Sometimes an allowed refusal (NO_MEMORY, BUSY) instead.
            let refuse = (fail >> (i % 64)) & 1 == 1;
            let code = if p.allowed.allows_success() && !refuse {
                0
            } else {
                (1..63).map(|c| -c).find(|&c| p.allowed.allows(c)).unwrap_or(0)
            };
            let handle = if let Effect::CreateVm { .. } = p.effect {
                let slot = (0..MAX_VMS).find(|&i| s.vms[i].is_none()).unwrap();
                (u64::from(s.generations[slot]) << 32) | (HANDLE_BASE + slot as u64)
            } else { 0 };
            prop_assert!(s.commit(&p, code, handle).is_ok());
            if code != 0 {
                prop_assert_eq!(&before, &snapshot(&s));
            } else if let Effect::CreateVm { .. } = p.effect {
                handles.push(handle);
            }
            for i in 0..512 {
                let pg = s.page(page(i)).unwrap();
                if let Page::VmMeta(v) | Page::Vm(v) | Page::VmSharedHost(v) | Page::HostSharedVm(v) = pg {
                    prop_assert!(s.vms[usize::from(v)].is_some());
                }
                if page(i) < CARVE.1 {
                    prop_assert_eq!(pg, Page::HypOwn);
                }
            }
        }
        for h in handles {
            let p = s.predict_host(&regs(HostCall::VmDestroy, &[h]));
            let code = if p.allowed.allows_success() { 0 } else { Error::InvalidParameter.code() };
            prop_assert!(s.commit(&p, code, 0).is_ok());
        }
        for i in 16..512 {
            let pg = s.page(page(i)).unwrap();
            prop_assert!(matches!(pg, Page::Host | Page::HostSharedHyp | Page::HypDonated), "{:?}", pg);
        }
    }

    /// Encoding round-trips for every kind and slot.
    #[test]
    fn page_encoding_round_trips(kind in 0u8..8, slot in 0u8..16) {
        let p = Page::decode((kind << 5) | slot);
        prop_assert_eq!(Page::decode(p.encode()), p);
    }
}
