//! Unit tests: every transition's success path (before/after views of every
//! party and its effect) and every error.

use rampart_ownership::{
    Component, Error, MAX_PINS, PAGE_SIZE, PageMeta, PageState, Pfn, PhysAddr, Rejection, State,
    Table, Transition, Update, VmId,
};

const BASE: Pfn = Pfn(0x80);
const PAGES: usize = 8;
const VM1: VmId = VmId(1);
const VM2: VmId = VmId(2);
const HOST: Component = Component::Host;
const HYP: Component = Component::Hyp;
const G1: Component = Component::Guest(VM1);
const G2: Component = Component::Guest(VM2);

fn page(index: u64) -> PhysAddr {
    PhysAddr((BASE.0 + index) * PAGE_SIZE)
}

fn reject(error: Error, addr: PhysAddr) -> Result<rampart_ownership::Effect, Rejection> {
    Err(Rejection { error, addr })
}

/// Views of (host, hyp, guest 1, guest 2) on a page.
fn views(table: &Table<'_>, index: u64) -> [State; 4] {
    [HOST, HYP, G1, G2].map(|c| table.state_of(page(index), c).unwrap())
}

fn snapshot(meta: &[PageMeta]) -> Vec<u32> {
    meta.iter().map(|m| m.bits()).collect()
}

use State::{Absent as A, Owned as O, SharedBorrowed as B, SharedOwned as S};

#[test]
fn initial_table_is_host_owned_and_consistent() {
    let mut meta = [PageMeta::default(); PAGES];
    let table = Table::new(&mut meta, BASE).unwrap();
    assert_eq!(table.len(), PAGES);
    for i in 0..PAGES as u64 {
        assert_eq!(views(&table, i), [O, A, A, A]);
        assert_eq!(table.page_state(page(i)), Ok(PageState::HostOwned));
    }
    table.check_invariants().unwrap();
    assert_eq!(core::mem::size_of::<PageMeta>(), 4);
}

#[test]
fn host_share_and_unshare_hyp() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let e = t.host_share_hyp(page(1), 2).unwrap();
    assert_eq!((e.start, e.pages), (page(1), 2));
    assert_eq!(e.updates.host, Update::Set(S));
    assert_eq!(e.updates.hyp, Update::Set(B));
    assert_eq!(e.updates.guest, Update::Keep);
    assert!(!e.updates.zero);
    assert_eq!(views(&t, 1), [S, B, A, A]);
    assert_eq!(views(&t, 2), [S, B, A, A]);
    assert_eq!(views(&t, 3), [O, A, A, A]);
    assert_eq!(
        t.host_share_hyp(page(2), 1),
        reject(Error::AlreadyShared, page(2))
    );
    let e = t.host_unshare_hyp(page(1), 2).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.hyp),
        (Update::Set(O), Update::Set(A))
    );
    assert_eq!(views(&t, 1), [O, A, A, A]);
    assert_eq!(
        t.host_unshare_hyp(page(1), 1),
        reject(Error::NotShared, page(1))
    );
    t.check_invariants().unwrap();
}

#[test]
fn pinned_page_cannot_be_unshared() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    t.host_share_hyp(page(0), 3).unwrap();
    let e = t.hyp_pin(page(1), 1).unwrap();
    assert_eq!(e.updates.host, Update::Keep);
    assert_eq!(e.updates.hyp, Update::Keep);
    t.hyp_pin(page(1), 1).unwrap();
    assert_eq!(
        t.page_state(page(1)),
        Ok(PageState::HostSharedWithHyp { pins: 2 })
    );
    // Whole range refused because of the middle page; nothing changes.
    assert_eq!(t.host_unshare_hyp(page(0), 3), reject(Error::Busy, page(1)));
    assert_eq!(views(&t, 0), [S, B, A, A]);
    t.hyp_unpin(page(1), 1).unwrap();
    assert_eq!(t.host_unshare_hyp(page(1), 1), reject(Error::Busy, page(1)));
    t.hyp_unpin(page(1), 1).unwrap();
    assert_eq!(t.hyp_unpin(page(1), 1), reject(Error::NotPinned, page(1)));
    t.host_unshare_hyp(page(0), 3).unwrap();
    assert_eq!(t.hyp_pin(page(0), 1), reject(Error::NotShared, page(0)));
    assert_eq!(t.hyp_unpin(page(0), 1), reject(Error::NotShared, page(0)));
    t.check_invariants().unwrap();
}

#[test]
fn pin_limit() {
    let mut meta = [PageMeta::default(); PAGES];
    meta[0] = PageState::HostSharedWithHyp { pins: MAX_PINS }.encode();
    let mut t = Table::new(&mut meta, BASE).unwrap();
    assert_eq!(t.hyp_pin(page(0), 1), reject(Error::PinLimit, page(0)));
    t.hyp_unpin(page(0), 1).unwrap();
    t.hyp_pin(page(0), 1).unwrap();
}

#[test]
fn host_donate_hyp_and_back_zeroes() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let e = t.host_donate_hyp(page(4), 4).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.hyp),
        (Update::Set(A), Update::Set(O))
    );
    assert!(!e.updates.zero);
    assert_eq!(views(&t, 7), [A, O, A, A]);
    assert_eq!(
        t.host_donate_hyp(page(4), 1),
        reject(Error::NotOwner, page(4))
    );
    assert_eq!(
        t.host_share_hyp(page(3), 2),
        reject(Error::NotOwner, page(4))
    );
    assert_eq!(
        t.hyp_donate_host(page(3), 2),
        reject(Error::NotOwner, page(3))
    );
    let e = t.hyp_donate_host(page(4), 4).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.hyp),
        (Update::Set(O), Update::Set(A))
    );
    assert!(e.updates.zero);
    assert_eq!(views(&t, 4), [O, A, A, A]);
    t.check_invariants().unwrap();
}

#[test]
fn host_donate_guest_and_guest_share_unshare() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let e = t.host_donate_guest(VM1, page(0), 4).unwrap();
    assert_eq!(e.vm(), Some(VM1));
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(A), Update::Set(O))
    );
    assert_eq!(e.update_for(G1), Update::Set(O));
    assert_eq!(e.update_for(G2), Update::Keep);
    assert_eq!(views(&t, 0), [A, A, O, A]);

    let e = t.guest_share_host(VM1, page(1), 1).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(B), Update::Set(S))
    );
    assert_eq!(views(&t, 1), [B, A, S, A]);
    assert_eq!(
        t.guest_share_host(VM1, page(1), 1),
        reject(Error::AlreadyShared, page(1))
    );
    assert_eq!(
        t.guest_share_host(VM2, page(0), 1),
        reject(Error::WrongGuest, page(0))
    );
    assert_eq!(
        t.guest_share_host(VM1, page(4), 1),
        reject(Error::NotOwner, page(4))
    );
    // The host cannot take a guest's page, shared or not.
    assert_eq!(
        t.host_donate_hyp(page(1), 1),
        reject(Error::NotOwner, page(1))
    );
    assert_eq!(
        t.host_share_guest(VM2, page(1), 1),
        reject(Error::NotOwner, page(1))
    );
    assert_eq!(
        t.host_unshare_guest(VM1, page(1), 1),
        reject(Error::NotOwner, page(1))
    );

    let e = t.guest_unshare_host(VM1, page(1), 1).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(A), Update::Set(O))
    );
    assert_eq!(views(&t, 1), [A, A, O, A]);
    assert_eq!(
        t.guest_unshare_host(VM1, page(1), 1),
        reject(Error::NotShared, page(1))
    );
    assert_eq!(
        t.guest_unshare_host(VM2, page(1), 1),
        reject(Error::WrongGuest, page(1))
    );
    assert_eq!(
        t.guest_unshare_host(VM1, page(5), 1),
        reject(Error::NotOwner, page(5))
    );
    t.check_invariants().unwrap();
}

#[test]
fn guest_relinquish_zeroes_and_refuses_shared_pages() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    t.host_donate_guest(VM1, page(0), 3).unwrap();
    t.guest_share_host(VM1, page(2), 1).unwrap();
    assert_eq!(
        t.guest_relinquish(VM1, page(0), 3),
        reject(Error::AlreadyShared, page(2))
    );
    assert_eq!(
        t.guest_relinquish(VM2, page(0), 1),
        reject(Error::WrongGuest, page(0))
    );
    assert_eq!(
        t.guest_relinquish(VM1, page(3), 1),
        reject(Error::NotOwner, page(3))
    );
    let e = t.guest_relinquish(VM1, page(0), 2).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(O), Update::Set(A))
    );
    assert!(e.updates.zero);
    assert_eq!(views(&t, 0), [O, A, A, A]);
    assert_eq!(views(&t, 2), [B, A, S, A]);
    t.check_invariants().unwrap();
}

#[test]
fn host_reclaim_guest_takes_owned_and_shared_pages() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    t.host_donate_guest(VM1, page(0), 3).unwrap();
    t.host_donate_guest(VM2, page(3), 1).unwrap();
    t.guest_share_host(VM1, page(1), 1).unwrap();
    assert_eq!(
        t.host_reclaim_guest(VM1, page(0), 4),
        reject(Error::WrongGuest, page(3))
    );
    assert_eq!(
        t.host_reclaim_guest(VM1, page(5), 1),
        reject(Error::NotOwner, page(5))
    );
    let e = t.host_reclaim_guest(VM1, page(0), 3).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(O), Update::Set(A))
    );
    assert!(e.updates.zero);
    for i in 0..3 {
        assert_eq!(views(&t, i), [O, A, A, A]);
    }
    assert_eq!(views(&t, 3), [A, A, A, O]);
    t.check_invariants().unwrap();
}

#[test]
fn host_share_and_unshare_guest() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let e = t.host_share_guest(VM2, page(6), 2).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(S), Update::Set(B))
    );
    assert_eq!(views(&t, 6), [S, A, A, B]);
    assert_eq!(
        t.host_share_guest(VM1, page(6), 1),
        reject(Error::AlreadyShared, page(6))
    );
    assert_eq!(
        t.host_share_hyp(page(7), 1),
        reject(Error::AlreadyShared, page(7))
    );
    assert_eq!(
        t.host_donate_guest(VM1, page(7), 1),
        reject(Error::AlreadyShared, page(7))
    );
    assert_eq!(
        t.host_unshare_guest(VM1, page(6), 1),
        reject(Error::WrongGuest, page(6))
    );
    assert_eq!(
        t.host_unshare_hyp(page(6), 1),
        reject(Error::NotShared, page(6))
    );
    assert_eq!(
        t.host_unshare_guest(VM2, page(5), 1),
        reject(Error::NotShared, page(5))
    );
    // A borrower cannot act as an owner.
    assert_eq!(
        t.guest_share_host(VM2, page(6), 1),
        reject(Error::NotOwner, page(6))
    );
    assert_eq!(
        t.guest_relinquish(VM2, page(6), 1),
        reject(Error::NotOwner, page(6))
    );
    let e = t.host_unshare_guest(VM2, page(6), 2).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.guest),
        (Update::Set(O), Update::Set(A))
    );
    assert_eq!(views(&t, 6), [O, A, A, A]);
    t.check_invariants().unwrap();
}

#[test]
fn range_errors_are_checked_first_and_change_nothing() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let start = page(0);
    for tr in Transition::all(VM1) {
        let unaligned = PhysAddr(start.0 + 1);
        assert_eq!(
            t.apply(tr, unaligned, 1),
            reject(Error::Unaligned, unaligned),
            "{tr}"
        );
        assert_eq!(
            t.apply(tr, start, 0),
            reject(Error::ZeroCount, start),
            "{tr}"
        );
        assert_eq!(
            t.apply(tr, start, u64::MAX),
            reject(Error::Overflow, start),
            "{tr}"
        );
        let top = PhysAddr(!(PAGE_SIZE - 1));
        assert_eq!(t.apply(tr, top, 2), reject(Error::Overflow, top), "{tr}");
        assert_eq!(t.apply(tr, top, 1), reject(Error::OutOfRange, top), "{tr}");
        assert_eq!(
            t.apply(tr, PhysAddr(0), 1),
            reject(Error::OutOfRange, PhysAddr(0)),
            "{tr}"
        );
        // Partly inside: the first page outside is reported.
        assert_eq!(
            t.apply(tr, page(6), 3),
            reject(Error::OutOfRange, page(8)),
            "{tr}"
        );
        assert_eq!(
            t.apply(tr, page(8), 1),
            reject(Error::OutOfRange, page(8)),
            "{tr}"
        );
        // Straddling the start of the table.
        let below = PhysAddr((BASE.0 - 1) * PAGE_SIZE);
        assert_eq!(
            t.apply(tr, below, 2),
            reject(Error::OutOfRange, below),
            "{tr}"
        );
    }
    assert!(meta.iter().all(|m| *m == PageMeta::HOST_OWNED));
}

#[test]
fn failure_on_last_page_changes_nothing() {
    let mut meta = [PageMeta::default(); PAGES];
    {
        let mut t = Table::new(&mut meta, BASE).unwrap();
        t.host_donate_hyp(page(7), 1).unwrap();
    }
    let before = snapshot(&meta);
    let mut t = Table::new(&mut meta, BASE).unwrap();
    for tr in [
        Transition::HostShareHyp,
        Transition::HostDonateHyp,
        Transition::HostDonateGuest(VM1),
        Transition::HostShareGuest(VM1),
    ] {
        assert_eq!(
            t.apply(tr, page(0), 8),
            reject(Error::NotOwner, page(7)),
            "{tr}"
        );
        assert_eq!(
            t.check(tr, page(0), 8),
            reject(Error::NotOwner, page(7)),
            "{tr}"
        );
    }
    assert_eq!(snapshot(&meta), before);
}

#[test]
fn check_is_side_effect_free_and_predicts_apply() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let predicted = t
        .check(Transition::HostDonateGuest(VM1), page(2), 3)
        .unwrap();
    assert_eq!(views(&t, 2), [O, A, A, A]);
    let applied = t.host_donate_guest(VM1, page(2), 3).unwrap();
    assert_eq!(predicted, applied);
}

#[test]
fn corrupt_entries_are_refused() {
    let mut meta = [PageMeta::default(); PAGES];
    meta[3] = PageMeta::from_bits(0xdead_beef);
    meta[4] = PageMeta::from_bits(0x0000_0001); // host-owned with a payload
    let mut t = Table::new(&mut meta, BASE).unwrap();
    assert_eq!(
        t.host_share_hyp(page(0), 8),
        reject(Error::Corrupt, page(3))
    );
    assert_eq!(
        t.host_share_hyp(page(4), 1),
        reject(Error::Corrupt, page(4))
    );
    assert_eq!(t.page_state(page(3)).unwrap_err().error, Error::Corrupt);
    let broken = t.check_invariants().unwrap_err();
    assert_eq!((broken.invariant, broken.addr), (1, page(3)));
    // Runs read corrupt entries as absent (fail closed).
    let runs: Vec<_> = t.runs(page(0), 8, HOST).unwrap().collect();
    assert_eq!(runs.len(), 3);
    assert_eq!(
        (runs[1].start, runs[1].pages, runs[1].state),
        (page(3), 2, A)
    );
    t.reset();
    t.check_invariants().unwrap();
}

#[test]
fn every_error_is_reachable() {
    // Each error variant is produced by at least one test above; this
    // checks the list and messages stay in sync.
    for error in Error::ALL {
        assert!(!error.message().is_empty());
        assert_eq!(format!("{error}"), error.message());
    }
    let r = Rejection {
        error: Error::Busy,
        addr: PhysAddr(0x1000),
    };
    assert_eq!(r.to_string(), "page is pinned by the hypervisor at 0x1000");
}

#[test]
fn table_bounds() {
    let mut meta = [PageMeta::default(); 4];
    assert_eq!(
        Table::new(&mut meta, Pfn(u64::MAX)).unwrap_err(),
        Error::Overflow
    );
    assert_eq!(
        Table::new(&mut meta, Pfn((1 << 52) - 3)).unwrap_err(),
        Error::Overflow
    );
    let t = Table::new(&mut meta, Pfn((1 << 52) - 4)).unwrap();
    let last = PhysAddr(!(PAGE_SIZE - 1));
    assert_eq!(t.state_of(last, HOST), Ok(O));
    assert_eq!(t.state_of(PhysAddr(u64::MAX), HOST), Ok(O));
    let mut empty: [PageMeta; 0] = [];
    let t = Table::new(&mut empty, Pfn(0)).unwrap();
    assert!(t.is_empty());
    assert_eq!(
        t.state_of(PhysAddr(0), HOST).unwrap_err().error,
        Error::OutOfRange
    );
}

#[test]
fn runs_coalesce_host_state() {
    let mut meta = [PageMeta::default(); 1024];
    let base = Pfn(0x400); // 4 MiB: 2 MiB aligned
    let mut t = Table::new(&mut meta, base).unwrap();
    let at = |i: u64| PhysAddr((base.0 + i) * PAGE_SIZE);
    t.host_share_hyp(at(10), 2).unwrap();
    t.host_donate_guest(VM1, at(600), 1).unwrap();
    let runs: Vec<_> = t
        .runs(at(0), 1024, HOST)
        .unwrap()
        .map(|r| (r.pages, r.state))
        .collect();
    assert_eq!(runs, [(10, O), (2, S), (588, O), (1, A), (423, O)]);
    assert_eq!(t.uniform_state(at(512), 88, HOST), Ok(Some(O)));
    assert_eq!(t.uniform_state(at(512), 512, HOST), Ok(None));
    // Around page 700 only 4 KiB is possible (block 512..1024 has a guest page).
    let run = t.largest_uniform_block(at(700), HOST, &[512, 16]).unwrap();
    assert_eq!((run.start, run.pages, run.state), (at(688), 16, O));
    t.host_reclaim_guest(VM1, at(600), 1).unwrap();
    let run = t
        .largest_uniform_block(at(700), HOST, &[262_144, 512])
        .unwrap();
    assert_eq!((run.start, run.pages, run.state), (at(512), 512, O));
    let run = t.largest_uniform_block(at(11), HOST, &[512, 3]).unwrap();
    assert_eq!((run.start, run.pages, run.state), (at(11), 1, S));
}

#[test]
fn zeroing_whenever_a_page_leaves_a_guest_or_the_hyp_for_the_host() {
    // Invariant 5, statically: every rule that turns a page the host could
    // not read into one it owns asks for zeroing.
    let states = [
        PageState::HostOwned,
        PageState::HostSharedWithHyp { pins: 0 },
        PageState::HostSharedWithHyp { pins: 1 },
        PageState::HostSharedWithGuest(VM1),
        PageState::HypOwned,
        PageState::GuestOwned(VM1),
        PageState::GuestOwned(VM2),
        PageState::GuestSharedWithHost(VM1),
        PageState::HypOwnedForVm(VM1),
        PageState::HypOwnedForVm(VM2),
    ];
    for tr in Transition::all(VM1) {
        for before in states {
            if let Ok(after) = tr.step(before) {
                let was_hidden = before.view(HOST) == A && before.owner() != HOST;
                if was_hidden && after.view(HOST).is_accessible() && after.owner() == HOST {
                    assert!(tr.updates().zero, "{tr} from {before:?}");
                }
                // The effect's updates describe the views exactly.
                for party in [HOST, HYP, G1, G2] {
                    let update = match party {
                        Component::Host => tr.updates().host,
                        Component::Hyp => tr.updates().hyp,
                        Component::Guest(vm) if Some(vm) == tr.vm() => tr.updates().guest,
                        Component::Guest(_) => Update::Keep,
                    };
                    match update {
                        Update::Keep => assert_eq!(before.view(party), after.view(party)),
                        Update::Set(s) => assert_eq!(after.view(party), s, "{tr} {party}"),
                    }
                }
            }
        }
    }
}

#[test]
fn vm_metadata_is_held_until_its_vm_releases_it() {
    let mut meta = [PageMeta::default(); PAGES];
    let mut t = Table::new(&mut meta, BASE).unwrap();
    let e = t.host_donate_vm_meta(VM1, page(0), 3).unwrap();
    assert_eq!(e.updates.host, Update::Set(A));
    assert_eq!(e.updates.hyp, Update::Set(O));
    assert_eq!(e.updates.guest, Update::Keep);
    assert!(!e.updates.zero);
    assert_eq!(e.vm(), Some(VM1));
    assert_eq!(views(&t, 1), [A, O, A, A]);
    assert_eq!(t.page_state(page(1)), Ok(PageState::HypOwnedForVm(VM1)));
    t.host_donate_hyp(page(3), 1).unwrap();
    t.check_invariants().unwrap();
    let before = snapshot(&meta);
    let mut t = Table::new(&mut meta, BASE).unwrap();

    // RECLAIM_HYP returns only what DONATE_HYP gave: the ordinary hyp page
    // in the same range is not enough, and the refusal names the first
    // held page.
    assert_eq!(
        t.hyp_donate_host(page(0), 1),
        reject(Error::NotOwner, page(0))
    );
    assert_eq!(
        t.hyp_donate_host(page(2), 2),
        reject(Error::NotOwner, page(2))
    );
    // No other host, hypervisor or guest call takes, shares or maps it.
    for vm in [VM1, VM2] {
        for tr in Transition::all(vm) {
            if tr == Transition::HypReleaseVmMeta(VM1) {
                continue;
            }
            let error = t.apply(tr, page(1), 1).unwrap_err().error;
            let expected = match tr {
                Transition::HypReleaseVmMeta(_) => Error::WrongGuest,
                Transition::HypPin | Transition::HypUnpin => Error::NotShared,
                _ => Error::NotOwner,
            };
            assert_eq!(error, expected, "{tr}");
        }
    }
    assert_eq!(snapshot(&meta), before);

    // VM 2 cannot release VM 1's pages; VM 1 cannot release a plain hyp page.
    let mut t = Table::new(&mut meta, BASE).unwrap();
    assert_eq!(
        t.hyp_release_vm_meta(VM2, page(0), 3),
        reject(Error::WrongGuest, page(0))
    );
    assert_eq!(
        t.hyp_release_vm_meta(VM1, page(0), 4),
        reject(Error::NotOwner, page(3))
    );
    assert_eq!(
        t.hyp_release_vm_meta(VM1, page(4), 1),
        reject(Error::NotOwner, page(4))
    );
    let e = t.hyp_release_vm_meta(VM1, page(0), 3).unwrap();
    assert_eq!(
        (e.updates.host, e.updates.hyp, e.updates.zero),
        (Update::Set(O), Update::Set(A), true)
    );
    assert!(e.transition.returns_hyp_pages());
    assert_eq!(views(&t, 2), [O, A, A, A]);
    t.hyp_donate_host(page(3), 1).unwrap();
    t.check_invariants().unwrap();
    assert!(meta.iter().all(|m| *m == PageMeta::HOST_OWNED));
}

#[test]
fn vm_metadata_encoding_round_trips() {
    for vm in [VmId(0), VM1, VmId(0xffff)] {
        let state = PageState::HypOwnedForVm(vm);
        assert_eq!(state.encode().decode(), Some(state));
        assert_eq!(state.owner(), HYP);
        assert_eq!(state.borrower(), None);
        assert_eq!(state.view(Component::Guest(vm)), A);
    }
    assert_eq!(PageState::HypOwnedForVm(VM1).encode().bits(), 0x0006_0001);
    // Tag 7 is still invalid.
    assert_eq!(PageMeta::from_bits(0x0007_0000).decode(), None);
}
