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
fn no_memory_only_when_the_pool_may_be_short_and_busy_never_for_memory_calls() {
    let mut s = spec();
    run(&mut s, HostCall::ShareHyp, &[page(20), 2], 0, 0).unwrap();
    run(&mut s, HostCall::DonateHyp, &[page(30), 2], 0, 0).unwrap();
    // No page is a call page here: UNSHARE_HYP is never BUSY.
    let p = s.predict_host(&regs(HostCall::UnshareHyp, &[page(20), 2]));
    assert!(!p.allowed.allows(Error::Busy.code()));
    for (pool, short) in [(Some(10_000), false), (Some(5), true), (None, true)] {
        s.set_pool(pool);
        for (call, args) in [
            (HostCall::ShareHyp, [page(40), 3]),
            (HostCall::DonateHyp, [page(40), 3]),
            (HostCall::UnshareHyp, [page(20), 2]),
            (HostCall::ReclaimHyp, [page(30), 2]),
        ] {
            let p = s.predict_host(&regs(call, &args));
            assert!(p.allowed.allows_success());
            assert_eq!(
                p.allowed.allows(Error::NoMemory.code()),
                short,
                "{call:?} pool {pool:?}"
            );
        }
        let p = s.predict_host(&regs(HostCall::VmCreate, &[page(100), 11, 1 << 8]));
        assert_eq!(
            p.allowed.allows(Error::NoMemory.code()),
            short,
            "VM_CREATE pool {pool:?}"
        );
    }
    // With a full pool, a refusal for memory is a violation.
    s.set_pool(Some(10_000));
    let p = s.predict_host(&regs(HostCall::ShareHyp, &[page(40), 3]));
    assert!(s.commit(&p, Error::NoMemory.code(), 0).is_err());
    // With every slot taken, VM_CREATE may answer NO_MEMORY whatever the pool.
    for i in 0..MAX_VMS as u64 {
        create(&mut s, 150 + 11 * i, false);
    }
    let p = s.predict_host(&regs(HostCall::VmCreate, &[page(400), 11, 1 << 8]));
    assert_eq!(p.allowed, Outcomes::error(Error::NoMemory));
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
    // Destroy: everything comes back; owned pages and metadata zeroed (the
    // page the guest shared with the host is not checked: the host could
    // write it until the end).
    let p = s.predict_host(&regs(HostCall::VmDestroy, &[vm]));
    let mut zero = 0;
    s.must_be_zero(&p.effect, &mut |_, n| zero += n);
    assert_eq!(zero, 11 + 2);
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
            // What a VM_DESTROY will change, by Spec::vm_pages (the
            // oracle's check after it looks only there).
            let mut held: Vec<u64> = Vec::new();
            if let (0, Effect::DestroyVm { slot }) = (code, p.effect) {
                s.vm_pages(slot, &mut |start, n| held.extend((0..n).map(|k| start + k * PAGE)));
            }
            prop_assert!(s.commit(&p, code, handle).is_ok());
            if code != 0 {
                prop_assert_eq!(&before, &snapshot(&s));
            } else if let Effect::CreateVm { .. } = p.effect {
                handles.push(handle);
            }
            if let (0, Effect::DestroyVm { .. }) = (code, p.effect) {
                let after = snapshot(&s);
                let changed: Vec<u64> = (0..512).filter(|&i| before[i as usize] != after[i as usize]).map(page).collect();
                prop_assert_eq!(&held, &changed);
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

// ---- vCPU lifecycle, signatures, runs, PSCI, MMIO guard (issue 15) ----

fn vcpu(s: &mut Spec<'_>, h: u64, index: u64) {
    run(s, HostCall::VcpuCreate, &[h, index], 0, 0).unwrap();
}

/// Predicts a `VCPU_RUN`, enters the guest if `enter`, and checks the end.
fn run_vcpu(
    s: &mut Spec<'_>,
    h: u64,
    index: u64,
    x0: i64,
    exit: u64,
    enter: bool,
    stopped: bool,
) -> Result<(), Violation> {
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, index, 0]));
    let claimed = s.claim(&p);
    if enter {
        s.enter(&p);
    }
    let r = s.finish_run(&p, x0, exit, enter, stopped);
    if claimed {
        s.release(&p, h);
    }
    r
}

fn guest(
    s: &mut Spec<'_>,
    slot: usize,
    index: usize,
    call: GuestCall,
    args: [u64; 3],
    x0: u64,
) -> Result<(), Violation> {
    let p = s
        .predict_guest_call(slot, index, call.id(), args, None, true)
        .unwrap();
    let x0 = if call == GuestCall::CpuOff {
        0
    } else {
        x0 as i64
    };
    s.commit(&p, x0, 0)
}

fn slot_of(h: u64) -> usize {
    ((h & 0xffff_ffff) - HANDLE_BASE) as usize
}

#[test]
fn a_protected_vm_runs_only_signed_and_its_measurement_is_then_fixed() {
    let mut s = spec();
    let h = create(&mut s, 100, true);
    vcpu(&mut s, h, 0);
    vcpu(&mut s, h, 1);
    run(
        &mut s,
        HostCall::VmDonate,
        &[h, page(200), 4, 0x8000_0000],
        0,
        0,
    )
    .unwrap();
    // Never signed: NOT_SIGNED only; entering is a violation.
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, 0, 0]));
    assert_eq!(p.allowed, Outcomes::error(Error::NotSigned));
    assert!(run_vcpu(&mut s, h, 0, Error::NotSigned.code(), 0, false, false).is_ok());
    assert!(s.finish_run(&p, 0, 3, true, false).is_err());
    // A powered-off vCPU answers EXIT_POWERED_OFF before any signature check.
    assert!(run_vcpu(&mut s, h, 1, 0, EXIT_POWERED_OFF, false, false).is_ok());
    assert!(run_vcpu(&mut s, h, 1, Error::NotSigned.code(), 0, false, false).is_err());
    assert!(run_vcpu(&mut s, h, 1, 0, 1, false, false).is_err());
    // Signed: the hypervisor judges the signature; never NOT_SIGNED.
    run(&mut s, HostCall::VmSetSignature, &[h], 0, 0).unwrap();
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, 0, 0]));
    assert!(!p.allowed.allows(Error::NotSigned.code()));
    assert!(p.allowed.allows(Error::BadSignature.code()) && p.allowed.allows_success());
    // A refused run leaves everything settable.
    assert!(run_vcpu(&mut s, h, 0, Error::BadSignature.code(), 0, false, false).is_ok());
    assert!(run(&mut s, HostCall::VcpuSetRegs, &[h, 1, 0x8000_0000, 0], 0, 0).is_ok());
    // Entered: measured; SET_SIGNATURE and every SET_REGS are DENIED.
    assert!(run_vcpu(&mut s, h, 0, 0, 3, true, false).is_ok());
    assert!(s.vms[slot_of(h)].as_ref().unwrap().measured);
    assert!(run(&mut s, HostCall::VmSetSignature, &[h], 0, 0).is_err());
    assert!(
        run(
            &mut s,
            HostCall::VmSetSignature,
            &[h],
            Error::Denied.code(),
            0
        )
        .is_ok()
    );
    for i in 0..2 {
        let p = s.predict_host(&regs(HostCall::VcpuSetRegs, &[h, i, 0, 0]));
        assert_eq!(p.allowed, Outcomes::error(Error::Denied), "vCPU {i}");
    }
    // An entered run never answers an error, and EXIT_POWERED_OFF only
    // after CPU_OFF.
    assert!(run_vcpu(&mut s, h, 0, Error::Busy.code(), 0, true, false).is_err());
    assert!(run_vcpu(&mut s, h, 0, 0, EXIT_POWERED_OFF, true, false).is_err());
    assert!(run_vcpu(&mut s, h, 0, 0, 9, true, false).is_err());
}

#[test]
fn a_vm_that_is_not_protected_needs_no_signature() {
    let mut s = spec();
    let h = create(&mut s, 100, false);
    vcpu(&mut s, h, 0);
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, 0, 0]));
    assert_eq!(p.allowed, Outcomes::success());
    assert!(run_vcpu(&mut s, h, 0, 0, 1, true, false).is_ok());
    // SET_REGS is DENIED for the vCPU that ran.
    assert_eq!(
        s.predict_host(&regs(HostCall::VcpuSetRegs, &[h, 0, 0, 0]))
            .allowed,
        Outcomes::error(Error::Denied)
    );
    // A vCPU that does not exist, a stale handle: INVALID_PARAMETER.
    for (call, args) in [
        (HostCall::VcpuRun, [h, 1, 0]),
        (HostCall::VcpuSetRegs, [h, 1, 0]),
        (HostCall::VcpuInject, [h, 1, 32]),
        (HostCall::VcpuRun, [h + (1 << 32), 0, 0]),
    ] {
        assert_eq!(
            s.predict_host(&regs(call, &args)).allowed,
            Outcomes::error(Error::InvalidParameter),
            "{call:?}"
        );
    }
    assert_eq!(
        s.predict_host(&regs(HostCall::VcpuInject, &[h, 0, 1019]))
            .allowed,
        Outcomes::success()
    );
    assert_eq!(
        s.predict_host(&regs(HostCall::VcpuInject, &[h, 0, 1020]))
            .allowed,
        Outcomes::error(Error::InvalidParameter)
    );
}

#[test]
fn busy_only_while_a_run_is_in_flight() {
    let mut s = spec();
    let h = create(&mut s, 100, false);
    vcpu(&mut s, h, 0);
    let busy = |s: &Spec<'_>, call, args: &[u64]| {
        s.predict_host(&regs(call, args))
            .allowed
            .allows(Error::Busy.code())
    };
    for (call, args) in [
        (HostCall::VcpuRun, &[h, 0, 0][..]),
        (HostCall::VcpuSetRegs, &[h, 0, 0, 0][..]),
        (HostCall::VcpuCreate, &[h, 0][..]),
        (HostCall::VmDestroy, &[h][..]),
    ] {
        assert!(!busy(&s, call, args), "{call:?} BUSY with nothing running");
    }
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, 0, 0]));
    assert!(s.claim(&p));
    // A second run may be in flight before the first one's result was
    // checked: BUSY stays allowed until both are released.
    assert!(s.claim(&p));
    s.release(&p, h);
    for (call, args) in [
        (HostCall::VcpuRun, &[h, 0, 0][..]),
        (HostCall::VcpuSetRegs, &[h, 0, 0, 0][..]),
        (HostCall::VcpuCreate, &[h, 0][..]),
        (HostCall::VmDestroy, &[h][..]),
    ] {
        assert!(
            busy(&s, call, args),
            "{call:?} may be BUSY while a run is in flight"
        );
    }
    // Another vCPU of the VM is not busy; injecting never is.
    vcpu(&mut s, h, 1);
    assert!(!busy(&s, HostCall::VcpuRun, &[h, 1, 0]));
    assert!(!busy(&s, HostCall::VcpuInject, &[h, 0, 1]));
    s.release(&p, h);
    assert!(!busy(&s, HostCall::VmDestroy, &[h]));
}

#[test]
fn psci_power_states_follow_cpu_on_and_cpu_off() {
    let mut s = spec();
    let h = create(&mut s, 100, false);
    let slot = slot_of(h);
    vcpu(&mut s, h, 0);
    vcpu(&mut s, h, 1);
    run(
        &mut s,
        HostCall::VmDonate,
        &[h, page(200), 4, 0x8000_0000],
        0,
        0,
    )
    .unwrap();
    let aff = |s: &mut Spec<'_>, t: u64, want: u64| {
        guest(s, slot, 0, GuestCall::AffinityInfo64, [t, 0, 0], want)
    };
    assert!(aff(&mut s, 1, 1).is_ok());
    assert!(aff(&mut s, 0, 0).is_ok());
    assert!(aff(&mut s, 2, -2i64 as u64).is_ok(), "no vCPU 2");
    assert!(aff(&mut s, 1, 0).is_err());
    // CPU_ON: entry outside the VM's memory, then a good one.
    assert!(
        guest(
            &mut s,
            slot,
            0,
            GuestCall::CpuOn64,
            [1, 0x9000_0000, 0],
            -9i64 as u64
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            slot,
            0,
            GuestCall::CpuOn64,
            [1, 0x8000_0002, 0],
            -9i64 as u64
        )
        .is_ok(),
        "unaligned"
    );
    assert!(guest(&mut s, slot, 0, GuestCall::CpuOn64, [1, 0x8000_1000, 7], 0).is_ok());
    assert!(aff(&mut s, 1, 2).is_ok(), "on pending");
    assert!(
        guest(
            &mut s,
            slot,
            0,
            GuestCall::CpuOn64,
            [1, 0x8000_1000, 7],
            -5i64 as u64
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            slot,
            0,
            GuestCall::CpuOn64,
            [0, 0x8000_1000, 7],
            -4i64 as u64
        )
        .is_ok()
    );
    // Its run now enters; then it is on.
    assert_eq!(
        s.predict_host(&regs(HostCall::VcpuRun, &[h, 1, 0])).allowed,
        Outcomes::success()
    );
    assert!(run_vcpu(&mut s, h, 1, 0, EXIT_POWERED_OFF, false, false).is_err());
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, 1, 0]));
    s.claim(&p);
    s.enter(&p);
    assert!(aff(&mut s, 1, 0).is_ok());
    // CPU_OFF during the run: it ends with EXIT_POWERED_OFF.
    assert!(guest(&mut s, slot, 1, GuestCall::CpuOff, [0; 3], 0).is_ok());
    assert!(s.finish_run(&p, 0, 3, true, true).is_err());
    assert!(s.finish_run(&p, 0, EXIT_POWERED_OFF, true, true).is_ok());
    s.release(&p, h);
    assert!(aff(&mut s, 1, 1).is_ok());
    assert!(run_vcpu(&mut s, h, 1, 0, EXIT_POWERED_OFF, false, false).is_ok());
    // The 32-bit calls read w1 only.
    assert!(
        guest(
            &mut s,
            slot,
            0,
            GuestCall::AffinityInfo32,
            [(1 << 32) | 1, 0, 0],
            1
        )
        .is_ok()
    );
}

#[test]
fn guest_calls_answer_what_the_contract_fixes() {
    let mut s = spec();
    let hp = create(&mut s, 100, true);
    let hn = create(&mut s, 120, false);
    let (p, n) = (slot_of(hp), slot_of(hn));
    vcpu(&mut s, hp, 0);
    vcpu(&mut s, hn, 0);
    assert!(guest(&mut s, n, 0, GuestCall::SmcccVersion, [0; 3], 0x1_0001).is_ok());
    assert!(guest(&mut s, n, 0, GuestCall::SmcccVersion, [0; 3], 0x1_0000).is_err());
    assert!(guest(&mut s, n, 0, GuestCall::KvmFeatures, [0; 3], 1).is_ok());
    assert!(guest(&mut s, p, 0, GuestCall::KvmFeatures, [0; 3], 0x3fd).is_ok());
    assert!(
        guest(
            &mut s,
            n,
            0,
            GuestCall::MmioGuardMap,
            [0x0900_0000, 0, 0],
            -1i64 as u64
        )
        .is_ok()
    );
    assert!(guest(&mut s, p, 0, GuestCall::HypMeminfo, [0; 3], 4096).is_ok());
    assert!(guest(&mut s, p, 0, GuestCall::HypMeminfo, [1, 0, 0], -3i64 as u64).is_ok());
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::PsciFeatures,
            [u64::from(GuestCall::CpuOn64.id()), 0, 0],
            0
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::PsciFeatures,
            [u64::from(GuestCall::TrngRnd64.id()), 0, 0],
            0
        )
        .is_err()
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::PsciFeatures,
            [u64::from(GuestCall::SmcccVersion.id()), 0, 0],
            0
        )
        .is_ok()
    );
    assert!(guest(&mut s, p, 0, GuestCall::MigrateInfoType, [0; 3], 2).is_ok());
    let unknown = s
        .predict_guest_call(n, 0, 0xC600_7777, [0; 3], None, true)
        .unwrap();
    assert!(s.commit(&unknown, -1, 0).is_ok());
    // Without RNDR there is no TRNG.
    let trng = s
        .predict_guest_call(n, 0, GuestCall::TrngVersion.id(), [0; 3], None, false)
        .unwrap();
    assert!(s.commit(&trng, 0x1_0000, 0).is_err());
    assert!(
        guest(
            &mut s,
            n,
            0,
            GuestCall::TrngRnd64,
            [193, 0, 0],
            -2i64 as u64
        )
        .is_ok()
    );
    assert!(guest(&mut s, n, 0, GuestCall::TrngRnd64, [192, 0, 0], 0).is_ok());
    // MMIO guard: below guest RAM, not memory; at most GUARD_PAGES.
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardUnmap,
            [0x0900_0000, 0, 0],
            -3i64 as u64
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardMap,
            [0x0900_0000, 0, 0],
            0
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardMap,
            [0x0900_0000, 0, 0],
            0
        )
        .is_ok(),
        "again"
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardMap,
            [0x8000_0000, 0, 0],
            -3i64 as u64
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardMap,
            [0x0900_0004, 0, 0],
            -3i64 as u64
        )
        .is_ok()
    );
    for i in 1..GUARD_PAGES as u64 {
        assert!(
            guest(
                &mut s,
                p,
                0,
                GuestCall::MmioGuardMap,
                [0x0a00_0000 + i * PAGE, 0, 0],
                0
            )
            .is_ok()
        );
    }
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardMap,
            [0x0b00_0000, 0, 0],
            -3i64 as u64
        )
        .is_ok(),
        "full"
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardUnmap,
            [0x0900_0000, 0, 0],
            0
        )
        .is_ok()
    );
    assert!(
        guest(
            &mut s,
            p,
            0,
            GuestCall::MmioGuardMap,
            [0x0b00_0000, 0, 0],
            0
        )
        .is_ok()
    );
    // VM_LIST in slot order; the first answer of ATTESTATION_KEY is either.
    let first = s.predict_host(&regs(HostCall::VmList, &[0]));
    assert!(s.commit(&first, 0, hp).is_ok());
    assert!(s.commit(&first, 0, hn).is_err());
    let next = s.predict_host(&regs(HostCall::VmList, &[hp]));
    assert!(s.commit(&next, 0, hn).is_ok());
    let last = s.predict_host(&regs(HostCall::VmList, &[hn]));
    assert!(s.commit(&last, 0, 0).is_ok());
    assert!(
        s.predict_host(&regs(HostCall::AttestationKey, &[]))
            .allowed
            .allows(Error::NotSupported.code())
    );
    assert_eq!(
        s.predict_host(&regs(
            HostCall::Features,
            &[u64::from(HostCall::VmList.id())]
        ))
        .allowed,
        Outcomes::success()
    );
    assert_eq!(
        s.predict_host(&regs(HostCall::Features, &[0xC600_8FFF]))
            .allowed,
        Outcomes::error(Error::NotSupported)
    );
}

/// One lifecycle step on one of two VMs.
#[derive(Clone, Debug)]
enum Life {
    Vcpu(usize, u64),
    SetRegs(usize, u64),
    Sign(usize),
    Run(usize, u64, bool),
    CpuOn(usize, u64),
    CpuOff(usize, u64),
    Claim(usize, u64),
}

fn life() -> impl Strategy<Value = Life> {
    prop_oneof![
        (0usize..2, 0u64..3).prop_map(|(v, i)| Life::Vcpu(v, i)),
        (0usize..2, 0u64..3).prop_map(|(v, i)| Life::SetRegs(v, i)),
        (0usize..2).prop_map(Life::Sign),
        (0usize..2, 0u64..3, any::<bool>()).prop_map(|(v, i, e)| Life::Run(v, i, e)),
        (0usize..2, 0u64..3).prop_map(|(v, i)| Life::CpuOn(v, i)),
        (0usize..2, 0u64..3).prop_map(|(v, i)| Life::CpuOff(v, i)),
        (0usize..2, 0u64..3).prop_map(|(v, i)| Life::Claim(v, i)),
    ]
}

proptest! {
    /// Over random lifecycles: BUSY is never allowed for a vCPU no run is
    /// in flight for; a protected VM never signed never enters; once a
    /// protected VM entered, SET_SIGNATURE and SET_REGS are DENIED; a
    /// powered-off vCPU's only success is EXIT_POWERED_OFF.
    #[test]
    fn lifecycles_keep_the_contract(steps in proptest::collection::vec(life(), 1..80)) {
        let mut s = spec();
        let hs = [create(&mut s, 100, true), create(&mut s, 120, false)];
        run(&mut s, HostCall::VmDonate, &[hs[0], page(200), 4, 0x8000_0000], 0, 0).unwrap();
        run(&mut s, HostCall::VmDonate, &[hs[1], page(210), 4, 0x8000_0000], 0, 0).unwrap();
        let mut claims: Vec<Prediction> = Vec::new();
        for step in steps {
            let choose = |p: &Prediction| if p.allowed.allows_success() { 0 } else { (1..63).map(|c| -c).find(|&c| p.allowed.allows(c)).unwrap_or(0) };
            match step {
                Life::Vcpu(v, i) => {
                    let p = s.predict_host(&regs(HostCall::VcpuCreate, &[hs[v], i]));
                    prop_assert!(s.commit(&p, choose(&p), 0).is_ok());
                }
                Life::SetRegs(v, i) => {
                    let p = s.predict_host(&regs(HostCall::VcpuSetRegs, &[hs[v], i, 0, 0]));
                    let vm = s.vms[slot_of(hs[v])].as_ref().unwrap();
                    if vm.measured && vm.vcpus & (1 << i) != 0 {
                        prop_assert!(!p.allowed.allows_success());
                    }
                    prop_assert!(s.commit(&p, choose(&p), 0).is_ok());
                }
                Life::Sign(v) => {
                    let p = s.predict_host(&regs(HostCall::VmSetSignature, &[hs[v]]));
                    if s.vms[slot_of(hs[v])].as_ref().unwrap().measured {
                        prop_assert_eq!(p.allowed, Outcomes::error(Error::Denied));
                    }
                    prop_assert!(s.commit(&p, choose(&p), 0).is_ok());
                }
                Life::Run(v, i, enter) => {
                    let p = s.predict_host(&regs(HostCall::VcpuRun, &[hs[v], i, 0]));
                    let vm = *s.vms[slot_of(hs[v])].as_ref().unwrap();
                    let busy = p.allowed.allows(Error::Busy.code());
                    prop_assert_eq!(busy, vm.running[i as usize] != 0);
                    if vm.config.protected && !vm.signed && !vm.measured && vm.power[i as usize] != Power::Off {
                        prop_assert!(!p.allowed.allows_success());
                    }
                    let claimed = s.claim(&p);
                    let Effect::Run { off, .. } = p.effect else {
                        prop_assert!(!p.allowed.allows_success());
                        continue;
                    };
                    // `enter` false: an allowed refusal if there is one.
                    let refusal = (1..63).map(|c| -c).find(|&c| p.allowed.allows(c));
                    let code = if enter { choose(&p) } else { refusal.unwrap_or(choose(&p)) };
                    let go = code == 0 && !off;
                    if go {
                        s.enter(&p);
                    }
                    let exit = if off && code == 0 { EXIT_POWERED_OFF } else { 3 };
                    prop_assert!(s.finish_run(&p, code, exit, go, false).is_ok());
                    if off {
                        prop_assert!(s.finish_run(&p, 0, 3, false, false).is_err());
                    }
                    if claimed {
                        s.release(&p, hs[v]);
                    }
                }
                Life::CpuOn(v, t) => {
                    let slot = slot_of(hs[v]);
                    if let Some(p) = s.predict_guest_call(slot, 0, GuestCall::CpuOn64.id(), [t, 0x8000_0000, 0], None, true) {
                        let x0 = match p.effect { Effect::Value { x0 } => x0 as i64, _ => 0 };
                        prop_assert!(s.commit(&p, x0, 0).is_ok());
                    }
                }
                Life::CpuOff(v, i) => {
                    let slot = slot_of(hs[v]);
                    if s.vms[slot].as_ref().unwrap().vcpus & (1 << i) != 0 {
                        let p = s.predict_guest_call(slot, i as usize, GuestCall::CpuOff.id(), [0; 3], None, true).unwrap();
                        prop_assert!(s.commit(&p, 0, 0).is_ok());
                        prop_assert_eq!(s.vms[slot].as_ref().unwrap().power[i as usize], Power::Off);
                    }
                }
                Life::Claim(v, i) => {
                    // A run held in flight (another CPU's) until the end.
                    let p = s.predict_host(&regs(HostCall::VcpuRun, &[hs[v], i, 0]));
                    if s.claim(&p) {
                        claims.push(p);
                    }
                }
            }
        }
        // Once every claim is released, BUSY is gone again.
        for p in &claims {
            if let Effect::Run { slot, .. } = p.effect {
                let h = s.vms[usize::from(slot)].as_ref().unwrap().handle;
                s.release(p, h);
            }
        }
        for h in hs {
            for i in 0..3 {
                let again = s.predict_host(&regs(HostCall::VcpuRun, &[h, i, 0]));
                prop_assert!(!again.allowed.allows(Error::Busy.code()));
            }
        }
    }
}

#[test]
fn a_bound_call_page_is_pinned_until_unbound() {
    let mut s = spec();
    // Only a page lent to the hypervisor can be bound.
    let p = s.predict_bind(3, page(20));
    assert!(!p.allowed.allows_success() && p.allowed.allows(Error::Denied.code()));
    assert!(s.predict_bind(3, page(20) + 8).allowed.allows(Error::InvalidParameter.code()));
    assert!(s.predict_bind(3, 0).allowed.allows(Error::InvalidParameter.code()));
    assert!(s.predict_bind(CHANNELS, page(20)).allowed.allows(Error::InvalidParameter.code()));
    run(&mut s, HostCall::ShareHyp, &[page(20), 2], 0, 0).unwrap();
    let p = s.predict_bind(3, page(20));
    assert!(p.allowed.allows_success());
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(20)), Some(Page::HostPinnedHyp));
    assert!(Page::HostPinnedHyp.host_reachable());
    assert_eq!(Page::decode(Page::HostPinnedHyp.encode()), Page::HostPinnedHyp);
    // Its own page again: success, nothing changes; another page, or the
    // same page on another channel: BUSY.
    assert!(s.predict_bind(3, page(20)).allowed.allows_success());
    assert!(!s.predict_bind(3, page(21)).allowed.allows_success());
    assert!(s.predict_bind(4, page(20)).allowed.allows(Error::Busy.code()));
    // UNSHARE_HYP: BUSY (exactly, where every page is lent); every other
    // change: DENIED.
    let p = s.predict_host(&regs(HostCall::UnshareHyp, &[page(20), 2]));
    assert!(p.allowed.allows(Error::Busy.code()) && !p.allowed.allows_success());
    assert!(!p.allowed.allows(Error::Denied.code()));
    for call in [HostCall::ShareHyp, HostCall::DonateHyp, HostCall::ReclaimHyp] {
        let p = s.predict_host(&regs(call, &[page(20), 1]));
        assert!(p.allowed.allows(Error::Denied.code()) && !p.allowed.allows_success(), "{call:?}");
    }
    // A huge count is refused from the range alone, not page by page (this
    // call would not return otherwise).
    let p = s.predict_host(&regs(HostCall::UnshareHyp, &[page(20), 1 << 50]));
    assert!(p.allowed.allows(Error::Range.code()) && !p.allowed.allows(Error::Busy.code()));
    // Unbinding makes it an ordinary lent page again.
    let p = s.predict_bind(3, 0);
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(20)), Some(Page::HostSharedHyp));
    let p = s.predict_host(&regs(HostCall::UnshareHyp, &[page(20), 2]));
    assert!(p.allowed.allows_success() && !p.allowed.allows(Error::Busy.code()));
    // The answer a hypervisor gives that the contract does not is a
    // violation: BUSY for an unshare of a page no channel holds.
    assert!(s.commit(&p, Error::Busy.code(), 0).is_err());
}

/// Sealed swap (issue 14): an eviction gives the VM's page to the host, a
/// restore gives the fresh page to the VM; every other success is a
/// violation, the ABI's refusals are admitted.
#[test]
fn sealed_swap_moves_pages_like_relinquish_and_donate() {
    let mut s = spec();
    let h = create(&mut s, 30, true);
    let slot = slot_of(h) as u8;
    let ipa = 0x8000_0000;
    run(&mut s, HostCall::VmDonate, &[h, page(50), 2, ipa], 0, 0).unwrap();
    // Into the VM's other page or its metadata: only a refusal.
    assert!(run(&mut s, HostCall::VmEvict, &[h, ipa, page(51)], 0, 1).is_err());
    assert!(run(&mut s, HostCall::VmEvict, &[h, ipa, page(30)], 0, 1).is_err());
    assert!(run(&mut s, HostCall::VmEvict, &[h, ipa, page(51)], Error::Denied.code(), 0).is_ok());
    // Of an unmapped address: NOT_EVICTABLE, never success.
    assert!(run(&mut s, HostCall::VmEvict, &[h, ipa + 0x10_0000, page(60)], 0, 1).is_err());
    run(&mut s, HostCall::VmEvict, &[h, ipa, page(60)], 0, 1).unwrap();
    assert_eq!(s.page(page(50)), Some(Page::Host));
    assert_eq!(s.vms[usize::from(slot)].as_ref().and_then(|v| v.translate(ipa)), None);
    // VM_DONATE at the evicted address may now be DENIED.
    assert!(run(&mut s, HostCall::VmDonate, &[h, page(70), 1, ipa], Error::Denied.code(), 0).is_ok());
    let restore = |sealed: u64, fresh: u64| [h, ipa, page(sealed), page(fresh), 1, 0, 0];
    assert!(run(&mut s, HostCall::VmRestore, &restore(60, 60), 0, 0).is_err());
    assert!(run(&mut s, HostCall::VmRestore, &restore(60, 30), 0, 0).is_err());
    for refusal in [Error::SealInvalid, Error::StaleVersion, Error::NotEvicted] {
        assert!(run(&mut s, HostCall::VmRestore, &restore(60, 61), refusal.code(), 0).is_ok());
    }
    run(&mut s, HostCall::VmRestore, &restore(60, 61), 0, 0).unwrap();
    assert_eq!(s.page(page(61)), Some(Page::Vm(slot)));
    // Mapped again: a second restore cannot succeed.
    assert!(run(&mut s, HostCall::VmRestore, &restore(60, 62), 0, 0).is_err());
}

/// issue 12: a realm's RIPAS changes move a page between its two IPA
/// halves and between `Vm` and `VmSharedHost`; a move the specification
/// does not expect is refused and changes nothing.
#[test]
fn realm_ripas_moves_follow_the_page() {
    let mut s = spec();
    let vm = create(&mut s, 100, true);
    run(&mut s, HostCall::VmDonate, &[vm, page(200), 2, 0x8000_0000], 0, 0).unwrap();
    let shared_bit = 1u64 << 39;
    let alias = 0x8000_1000 | shared_bit;
    // RAM -> EMPTY.
    let p = s.realm_ripas_moved(0, 0x8000_1000, alias, page(201), true).unwrap();
    let mut zero = 0;
    s.must_be_zero(&p.effect, &mut |_, n| zero += n);
    assert_eq!(zero, 1);
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(201)), Some(Page::VmSharedHost(0)));
    let v = s.vms[0].as_ref().unwrap();
    assert_eq!(v.translate(0x8000_1000), None);
    assert_eq!(v.translate(alias), Some(page(201)));
    assert_eq!(v.translate(0x8000_0000), Some(page(200)));
    // Again, or the wrong page, or the other VM page: refused, no change.
    assert!(s.realm_ripas_moved(0, 0x8000_1000, alias, page(201), true).is_none());
    assert!(s.realm_ripas_moved(0, 0x8000_0000, 0x8000_0000 | shared_bit, page(201), true).is_none());
    assert!(s.realm_ripas_moved(0, alias, 0x8000_1000, page(200), false).is_none());
    assert_eq!(s.vms[0].as_ref().unwrap().translate(alias), Some(page(201)));
    // EMPTY -> RAM.
    let p = s.realm_ripas_moved(0, alias, 0x8000_1000, page(201), false).unwrap();
    s.commit(&p, 0, 0).unwrap();
    assert_eq!(s.page(page(201)), Some(Page::Vm(0)));
    let v = s.vms[0].as_ref().unwrap();
    assert_eq!(v.translate(alias), None);
    assert_eq!(v.translate(0x8000_1000), Some(page(201)));
}

proptest! {
    /// `first_page` finds what a page-by-page search finds, inside,
    /// around and outside the followed span.
    #[test]
    fn first_page_is_the_page_by_page_search(
        ops in proptest::collection::vec((0u64..512, 1u64..8), 0..20),
        lo in 0u64..600, len in 0u64..600, kind in 0u8..4,
    ) {
        let mut s = spec();
        for (p, n) in ops {
            let p = s.predict_host(&regs(HostCall::ShareHyp, &[page(p), n]));
            let _ = s.commit(&p, if p.allowed.allows_success() { 0 } else { Error::Denied.code() }, 0);
        }
        let which = |p: Option<Page>| match kind {
            0 => p == Some(Page::HostSharedHyp),
            1 => p.is_none_or(|p| !p.host_reachable()),
            2 => p.is_none(),
            _ => p == Some(Page::HypOwn),
        };
        // From 40 pages below RAM to past its end.
        let lo = RAM.0 - 40 * PAGE + lo * PAGE;
        let hi = lo + len * PAGE;
        let slow = (0..len).map(|k| lo + k * PAGE).find(|&pa| which(s.page(pa)));
        prop_assert_eq!(s.first_page(lo, hi, which), slow);
    }
}

// ---- secure migration's memory effects (issue 14) ----

/// A protected VM over metadata at `meta`, `pages` pages donated at
/// 0x8000_0000 from `at`, vCPU 0 created and run once (so measured).
fn measured_vm(s: &mut Spec<'_>, meta: u64, at: u64, pages: u64) -> u64 {
    let h = create(s, meta, true);
    run(s, HostCall::VmDonate, &[h, page(at), pages, 0x8000_0000], 0, 0).unwrap();
    vcpu(s, h, 0);
    run(s, HostCall::VmSetSignature, &[h], 0, 0).ok();
    let p = s.predict_host(&regs(HostCall::VcpuRun, &[h, 0, 0]));
    s.claim(&p);
    s.enter(&p);
    s.release(&p, h);
    assert!(s.vms[slot_of(h)].as_ref().unwrap().measured);
    h
}

fn export(s: &mut Spec<'_>, h: u64, buffer: u64, x0: i64, complete: bool) -> Result<(), Violation> {
    let p = s.predict_host(&regs(HostCall::VmExport, &[h, page(buffer), 2, 0, 0, 0, 0, 0, 0]));
    s.commit_call(&p, x0, 2 * PAGE, u64::from(complete))
}

fn imported(vcpus: u8) -> Imported {
    Imported {
        config: VmConfig {
            protected: true,
            debug: false,
            max_vcpus: 2,
        },
        vcpus,
        power: [Power::On, Power::Off, Power::Off, Power::Off, Power::Off, Power::Off, Power::Off, Power::Off],
    }
}

/// Imports over metadata at `meta` with the stream at `stream`: the handle.
fn import(s: &mut Spec<'_>, meta: u64, stream: u64) -> u64 {
    let p = s.predict_host(&regs(HostCall::VmImport, &[page(meta), 11, page(stream), 4 * PAGE]));
    let slot = (0..MAX_VMS).find(|&i| s.vms[i].is_none()).unwrap();
    let handle = (u64::from(s.generations[slot]) << 32) | (HANDLE_BASE + slot as u64);
    s.set_imported(Some(imported(0)));
    s.commit_call(&p, 0, handle, 0).unwrap();
    handle
}

fn import_data(s: &mut Spec<'_>, h: u64, stream: u64, x0: i64, complete: bool, read: Option<Imported>) -> Result<(), Violation> {
    let p = s.predict_host(&regs(HostCall::VmImportData, &[h, page(stream), 4 * PAGE]));
    s.set_imported(read);
    s.commit_call(&p, x0, 4 * PAGE, u64::from(complete))
}

#[test]
fn an_export_stops_the_vm_and_its_last_call_destroys_it() {
    let mut s = spec();
    let h = measured_vm(&mut s, 30, 50, 4);
    let slot = slot_of(h) as u8;
    // Into a buffer the host does not own alone: refused, nothing changes.
    assert!(export(&mut s, h, 50, 0, false).is_err());
    assert!(export(&mut s, h, 50, Error::Denied.code(), false).is_ok());
    assert_eq!(s.vms[usize::from(slot)].as_ref().unwrap().migration, Migration::None);
    // A refused first call leaves it runnable.
    assert!(export(&mut s, h, 100, Error::Busy.code(), false).is_err());
    assert!(export(&mut s, h, 100, Error::NoMemory.code(), false).is_ok());
    assert!(run_vcpu(&mut s, h, 0, 0, 1, true, false).is_ok());
    // The first call that writes stops it for good.
    export(&mut s, h, 100, 0, false).unwrap();
    assert!(run_vcpu(&mut s, h, 0, 0, 1, true, false).is_err());
    assert!(run_vcpu(&mut s, h, 0, Error::Migrating.code(), 0, false, false).is_ok());
    assert_eq!(s.page(page(50)), Some(Page::Vm(slot)));
    // The call that answers complete: every page the host's again.
    let mut held = Vec::new();
    s.vm_pages(slot, &mut |start, n| held.push((start, n)));
    export(&mut s, h, 100, 0, true).unwrap();
    assert_eq!(held, vec![(page(30), 11), (page(50), 4)]);
    for i in (30..41).chain(50..54) {
        assert_eq!(s.page(page(i)), Some(Page::Host));
    }
    assert!(s.vms[usize::from(slot)].is_none());
    assert!(run(&mut s, HostCall::VmDestroy, &[h], 0, 0).is_err());
}

#[test]
fn an_unmeasured_vm_is_never_exported() {
    let mut s = spec();
    let h = create(&mut s, 30, true);
    run(&mut s, HostCall::VmDonate, &[h, page(50), 2, 0x8000_0000], 0, 0).unwrap();
    let p = s.predict_host(&regs(HostCall::VmExport, &[h, page(100), 2, 0, 0, 0, 0, 0, 0]));
    assert!(!p.allowed.allows_success());
    assert!(export(&mut s, h, 100, Error::Denied.code(), false).is_ok());
    // A stale handle: INVALID_PARAMETER before the buffer.
    run(&mut s, HostCall::VmDestroy, &[h], 0, 0).unwrap();
    assert!(export(&mut s, h, 50, Error::Denied.code(), false).is_err());
    assert!(export(&mut s, h, 50, Error::InvalidParameter.code(), false).is_ok());
}

#[test]
fn an_import_holds_its_metadata_runs_only_when_complete_and_a_refusal_leaves_nothing() {
    let mut s = spec();
    let h = import(&mut s, 30, 100);
    let slot = slot_of(h) as u8;
    assert_eq!(s.page(page(30)), Some(Page::VmMeta(slot)));
    // Not runnable, measured: no signature, no registers.
    assert!(run(&mut s, HostCall::VmSetSignature, &[h], 0, 0).is_err());
    run(&mut s, HostCall::VmDonate, &[h, page(50), 4, 0x8000_0000], 0, 0).unwrap();
    // A buffer the host does not own alone: refused, the VM stays.
    assert!(import_data(&mut s, h, 50, Error::NotAuthentic.code(), false, None).is_err());
    assert!(import_data(&mut s, h, 50, Error::Denied.code(), false, None).is_ok());
    assert_eq!(s.page(page(50)), Some(Page::Vm(slot)));
    // Records taken, vCPU 0 made by the stream.
    import_data(&mut s, h, 100, 0, false, Some(imported(1))).unwrap();
    assert!(run_vcpu(&mut s, h, 0, Error::Migrating.code(), 0, false, false).is_ok());
    assert!(run(&mut s, HostCall::VcpuCreate, &[h, 0], 0, 0).is_err());
    // A vCPU beyond max_vcpus, or one lost: not a stream's doing.
    assert!(import_data(&mut s, h, 100, 0, false, Some(imported(4))).is_err());
    let mut s2 = spec();
    let h2 = import(&mut s2, 30, 100);
    import_data(&mut s2, h2, 100, 0, false, Some(imported(1))).unwrap();
    assert!(import_data(&mut s2, h2, 100, 0, false, Some(imported(0))).is_err());
    // A refused record: the VM is gone, every page zeroed and the host's.
    let p = s.predict_host(&regs(HostCall::VmImportData, &[h, page(100), 4 * PAGE]));
    let mut zero = Vec::new();
    s.must_be_zero(&p.effect, &mut |start, n| zero.push((start, n)));
    assert_eq!(zero, vec![(page(30), 11), (page(50), 4)]);
    assert_eq!(s.destroyed_by(&p, Error::NotAuthentic.code(), 0), Some(slot));
    assert_eq!(s.destroyed_by(&p, 0, 0), None);
    s.commit_call(&p, Error::NotAuthentic.code(), 0, 0).unwrap();
    assert!(s.vms[usize::from(slot)].is_none());
    for i in (30..41).chain(50..54) {
        assert_eq!(s.page(page(i)), Some(Page::Host));
    }
    // Complete: runnable.
    let h = import(&mut s, 30, 100);
    import_data(&mut s, h, 100, 0, true, Some(imported(1))).unwrap();
    assert!(run_vcpu(&mut s, h, 0, 0, 1, true, false).is_ok());
    // A VM not being imported: DENIED, and it stays.
    assert!(import_data(&mut s, h, 100, Error::NotAuthentic.code(), false, None).is_err());
    assert!(import_data(&mut s, h, 100, Error::Denied.code(), false, None).is_ok());
    assert!(s.vms[slot_of(h)].is_some());
}

#[test]
fn an_import_into_metadata_the_host_does_not_own_never_succeeds() {
    let mut s = spec();
    let h = create(&mut s, 30, true);
    let p = s.predict_host(&regs(HostCall::VmImport, &[page(30), 11, page(100), 4 * PAGE]));
    assert!(!p.allowed.allows_success());
    let _ = h;
    // Metadata too small for the header's vCPUs: a violation.
    let p = s.predict_host(&regs(HostCall::VmImport, &[page(60), 9, page(100), 4 * PAGE]));
    s.set_imported(Some(imported(0)));
    let slot = (0..MAX_VMS).find(|&i| s.vms[i].is_none()).unwrap();
    let handle = (u64::from(s.generations[slot]) << 32) | (HANDLE_BASE + slot as u64);
    assert!(s.commit_call(&p, 0, handle, 0).is_err());
}

/// One step of a migration sequence.
#[derive(Clone, Debug)]
enum Mig {
    Measured(u64),
    Export(usize, u64, bool, i64),
    Import(u64, u64),
    Data(usize, u64, bool, i64, u8),
    Donate(usize, u64),
    Destroy(usize),
}

fn mig() -> impl Strategy<Value = Mig> {
    prop_oneof![
        (20u64..200).prop_map(Mig::Measured),
        (0usize..4, 20u64..400, any::<bool>(), -30i64..1).prop_map(|(v, b, c, x)| Mig::Export(v, b, c, x)),
        (20u64..200, 200u64..400).prop_map(|(m, b)| Mig::Import(m, b)),
        (0usize..4, 20u64..400, any::<bool>(), -30i64..1, 0u8..4).prop_map(|(v, b, c, x, n)| Mig::Data(v, b, c, x, n)),
        (0usize..4, 200u64..400).prop_map(|(v, p)| Mig::Donate(v, p)),
        (0usize..4).prop_map(Mig::Destroy),
    ]
}

proptest! {
    /// Random exports, imports and their data against an implementation
    /// that answers any allowed result: every page the specification
    /// gives a VM names a live VM; a call the specification says destroyed
    /// a VM changed exactly the pages [`Spec::vm_pages`] listed before it
    /// (the oracle compares only those); any other refusal changes nothing;
    /// a VM being migrated never runs.
    #[test]
    fn migration_sequences_keep_ownership_exact(steps in proptest::collection::vec(mig(), 1..50)) {
        let mut s = spec();
        let mut handles: Vec<u64> = Vec::new();
        for step in steps {
            let before = snapshot(&s);
            let h = |v: usize| handles.get(v).copied().unwrap_or(0x1007);
            let (p, x0, x1, x2, read) = match step {
                Mig::Measured(m) => {
                    if s.all(&PageRange::new(page(m), 11).unwrap(), |p| p == Page::Host)
                        && s.all(&PageRange::new(page(m + 11), 2).unwrap(), |p| p == Page::Host)
                        && (0..MAX_VMS).any(|i| s.vms[i].is_none())
                    {
                        handles.push(measured_vm(&mut s, m, m + 11, 2));
                    }
                    continue;
                }
                Mig::Export(v, b, c, x) => {
                    let p = s.predict_host(&regs(HostCall::VmExport, &[h(v), page(b), 2, 0, 0, 0, 0, 0, 0]));
                    (p, x, 0, u64::from(c), None)
                }
                Mig::Import(m, b) => {
                    let p = s.predict_host(&regs(HostCall::VmImport, &[page(m), 11, page(b), PAGE]));
                    let slot = (0..MAX_VMS).find(|&i| s.vms[i].is_none()).unwrap_or(0);
                    let handle = (u64::from(s.generations[slot]) << 32) | (HANDLE_BASE + slot as u64);
                    (p, 0, handle, 0, Some(imported(0)))
                }
                Mig::Data(v, b, c, x, n) => {
                    let p = s.predict_host(&regs(HostCall::VmImportData, &[h(v), page(b), PAGE]));
                    let have = s.vms.get(slot_of(h(v))).and_then(|vm| vm.as_ref()).map_or(0, |vm| vm.vcpus);
                    (p, x, 0, u64::from(c), Some(imported(have | (n & 3))))
                }
                Mig::Donate(v, pg) => {
                    let p = s.predict_host(&regs(HostCall::VmDonate, &[h(v), page(pg), 1, 0x9000_0000 + pg * PAGE]));
                    (p, 0, 0, 0, None)
                }
                Mig::Destroy(v) => (s.predict_host(&regs(HostCall::VmDestroy, &[h(v)])), 0, 0, 0, None),
            };
            if !p.allowed.allows(x0) {
                continue;
            }
            let mut held: Vec<u64> = Vec::new();
            let destroyed = s.destroyed_by(&p, x0, x2);
            if let Some(slot) = destroyed {
                s.vm_pages(slot, &mut |start, n| held.extend((0..n).map(|k| start + k * PAGE)));
            }
            s.set_imported(read);
            prop_assert!(s.commit_call(&p, x0, x1, x2).is_ok());
            if let Effect::Import { .. } = p.effect {
                handles.push(x1);
            }
            let after = snapshot(&s);
            let changed: Vec<u64> = (0..512).filter(|&i| before[i as usize] != after[i as usize]).map(page).collect();
            if destroyed.is_some() {
                prop_assert_eq!(&held, &changed);
            } else if x0 != 0 {
                prop_assert!(changed.is_empty());
            }
            for i in 0..512 {
                if let Some(Page::VmMeta(v) | Page::Vm(v)) = s.page(page(i)) {
                    prop_assert!(s.vms[usize::from(v)].is_some());
                }
            }
            for (slot, vm) in s.vms.iter().enumerate() {
                if let Some(vm) = vm && vm.migration != Migration::None {
                    let r = s.predict_host(&regs(HostCall::VcpuRun, &[vm.handle, 0, 0]));
                    prop_assert!(!r.allowed.allows_success(), "slot {}", slot);
                }
            }
        }
    }
}

/// issue 12: once a realm has run, the host cannot give it memory at a
/// protected IPA (only the guest's `RSI_IPA_STATE_SET` makes a granule
/// RAM); the alias half, and a protected non-realm VM, are not affected.
#[test]
fn a_measured_realm_takes_no_memory_below_the_shared_bit() {
    let mut s = spec();
    let p = s.predict_host(&regs(HostCall::VmCreate, &[page(100), 11, (2 << 8) | VmConfig::REALM | 1]));
    let handle = (u64::from(s.generations[0]) << 32) | HANDLE_BASE;
    s.commit(&p, 0, handle).unwrap();
    let plain = create(&mut s, 120, true);
    run(&mut s, HostCall::VmDonate, &[handle, page(200), 1, 0x8000_0000], 0, 0).unwrap();
    let denied = Error::Denied.code();
    // Before the first run: allowed, as for any VM.
    assert!(s.predict_host(&regs(HostCall::VmDonate, &[handle, page(201), 1, 0x8000_1000])).allowed.allows(0));
    for vm in s.vms.iter_mut().flatten() {
        vm.measured = true;
    }
    // Measured: DENIED below the shared bit (1 << 39), and only DENIED.
    let p = s.predict_host(&regs(HostCall::VmDonate, &[handle, page(201), 1, 0x8000_1000]));
    assert!(!p.allowed.allows(0));
    run(&mut s, HostCall::VmDonate, &[handle, page(201), 1, 0x8000_1000], denied, 0).unwrap();
    // At the alias, and for a protected VM that is not a realm: allowed.
    run(&mut s, HostCall::VmDonate, &[handle, page(201), 1, (1 << 39) | 0x8000_1000], 0, 0).unwrap();
    run(&mut s, HostCall::VmDonate, &[plain, page(202), 1, 0x8000_1000], 0, 0).unwrap();
}

/// issue 16: `VM_DECLARE_ZERO` is for a protected VM that is not a realm,
/// before its first run; a range past the IPA space (40 bits here) is
/// RANGE; a well-formed call may find the list full (NO_MEMORY) and
/// changes nothing the specification follows.
#[test]
fn declare_zero_only_before_a_protected_vms_first_run() {
    let mut s = spec();
    let protected = create(&mut s, 100, true);
    let plain = create(&mut s, 120, false);
    let p = s.predict_host(&regs(HostCall::VmCreate, &[page(140), 11, (2 << 8) | VmConfig::REALM | 1]));
    let realm = (u64::from(s.generations[2]) << 32) | (HANDLE_BASE + 2);
    s.commit(&p, 0, realm).unwrap();
    let allowed = |s: &Spec<'_>, args: &[u64]| s.predict_host(&regs(HostCall::VmDeclareZero, args)).allowed;
    let denied = Outcomes::error(Error::Denied);
    let ok = Outcomes::success().or_error(Error::NoMemory);
    assert_eq!(allowed(&s, &[protected, 0x8000_0000, 16, 0]), ok);
    // Malformed (decoding): flags, unaligned, 0 pages, wrapping.
    for args in [
        [protected, 0x8000_0000, 1, 1],
        [protected, 0x8000_0800, 1, 0],
        [protected, 0x8000_0000, 0, 0],
        [protected, !0xfff, 2, 0],
        [protected ^ (1 << 32), 0x8000_0000, 1, 0],
    ] {
        assert_eq!(allowed(&s, &args), Outcomes::error(Error::InvalidParameter), "{args:x?}");
    }
    // Past the IPA space: RANGE; ending exactly at it: allowed.
    assert_eq!(allowed(&s, &[protected, (1 << 40) - PAGE, 2, 0]), Outcomes::error(Error::Range));
    assert_eq!(allowed(&s, &[protected, (1 << 40) - PAGE, 1, 0]), ok);
    assert_eq!(allowed(&s, &[plain, 0x8000_0000, 1, 0]), denied);
    assert_eq!(allowed(&s, &[realm, 0x8000_0000, 1, 0]), denied);
    // Both apply: either.
    assert_eq!(allowed(&s, &[plain, 1 << 40, 1, 0]), denied.or_error(Error::Range));
    // Success changes nothing; a success the specification refuses is a
    // violation.
    let before: Vec<Option<Page>> = snapshot(&s);
    run(&mut s, HostCall::VmDeclareZero, &[protected, 0x8000_0000, 16, 0], 0, 0).unwrap();
    assert_eq!(snapshot(&s), before);
    assert!(run(&mut s, HostCall::VmDeclareZero, &[plain, 0x8000_0000, 1, 0], 0, 0).is_err());
    // An evicted page may be in the range: DENIED allowed too.
    s.vms[slot_of(protected)].as_mut().unwrap().swapped = true;
    assert_eq!(allowed(&s, &[protected, 0x8000_0000, 1, 0]), ok.or_error(Error::Denied));
    // Measured (first run, or imported): DENIED.
    let h = measured_vm(&mut s, 160, 200, 4);
    assert_eq!(allowed(&s, &[h, 0x9000_0000, 1, 0]), denied);
}
