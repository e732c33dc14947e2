use proptest::prelude::*;

use super::*;

const ROOT: [u8; 32] = [7; 32];
const BOOT: [u8; 32] = [9; 32];

fn page_from(seed: u64) -> [u8; PAGE_SIZE] {
    let mut page = [0u8; PAGE_SIZE];
    let mut x = seed | 1;
    for b in &mut page {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    page
}

fn place(vm_serial: u64, guest_address: u64, version: u64) -> Place {
    Place {
        vm_serial,
        guest_address,
        version,
    }
}

#[test]
fn round_trip_and_ciphertext_hides_the_page() {
    let key = VmKey::derive(&ROOT, &BOOT, 1);
    let plain = page_from(42);
    let mut page = plain;
    let p = place(1, 0x8000_0000, 1);
    let tag = seal(&key, &p, &mut page).unwrap();
    assert_ne!(page, plain);
    // No 16-byte window of the plaintext survives in the ciphertext.
    assert!(!page.windows(16).any(|w| w == &plain[..16]));
    open(&key, &p, &mut page, &tag).unwrap();
    assert_eq!(page, plain);
}

#[test]
fn keys_differ_by_vm_and_boot_and_root() {
    let p = place(1, 0x8000_0000, 1);
    let mut a = [0u8; PAGE_SIZE];
    let mut b = [0u8; PAGE_SIZE];
    let mut c = [0u8; PAGE_SIZE];
    let mut d = [0u8; PAGE_SIZE];
    let ta = seal(&VmKey::derive(&ROOT, &BOOT, 1), &p, &mut a).unwrap();
    let tb = seal(&VmKey::derive(&ROOT, &BOOT, 2), &p, &mut b).unwrap();
    let tc = seal(&VmKey::derive(&ROOT, &[8; 32], 1), &p, &mut c).unwrap();
    let td = seal(&VmKey::derive(&[6; 32], &BOOT, 1), &p, &mut d).unwrap();
    assert!(a != b && a != c && a != d && b != c);
    assert!(ta != tb && ta != tc && ta != td);
}

#[test]
fn the_same_page_sealed_twice_at_two_versions_differs() {
    let key = VmKey::derive(&ROOT, &BOOT, 1);
    let (mut a, mut b) = ([5u8; PAGE_SIZE], [5u8; PAGE_SIZE]);
    seal(&key, &place(1, 0x1000, 1), &mut a).unwrap();
    seal(&key, &place(1, 0x1000, 2), &mut b).unwrap();
    assert_ne!(a, b, "a version must change the nonce");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_flipped_bit_is_refused(seed: u64, bit in 0usize..(PAGE_SIZE + TAG_SIZE) * 8) {
        let key = VmKey::derive(&ROOT, &BOOT, 3);
        let p = place(3, 0x4000_0000, 5);
        let mut page = page_from(seed);
        let mut tag = seal(&key, &p, &mut page).unwrap();
        if bit < PAGE_SIZE * 8 {
            page[bit / 8] ^= 1 << (bit % 8);
        } else {
            let b = bit - PAGE_SIZE * 8;
            tag[b / 8] ^= 1 << (b % 8);
        }
        let before = page;
        prop_assert_eq!(open(&key, &p, &mut page, &tag), Err(Refused));
        prop_assert_eq!(page, before, "nothing is decrypted on refusal");
    }

    #[test]
    fn another_place_or_key_is_refused(seed: u64, serial in 1u64..1000, address in 0u64..(1 << 36), version in 1u64..MAX_VERSION,
                                       other_serial in 1u64..1000, other_address in 0u64..(1 << 36), other_version in 1u64..MAX_VERSION) {
        let address = address << 12;
        let other_address = other_address << 12;
        let key = VmKey::derive(&ROOT, &BOOT, serial);
        let p = place(serial, address, version);
        let mut sealed = page_from(seed);
        let tag = seal(&key, &p, &mut sealed).unwrap();
        // Another address, another version, another VM (its key and serial),
        // another VM's key with this VM's place: all refused.
        let tries = [
            (VmKey::derive(&ROOT, &BOOT, serial), place(serial, other_address, version), other_address != address),
            (VmKey::derive(&ROOT, &BOOT, serial), place(serial, address, other_version), other_version != version),
            (VmKey::derive(&ROOT, &BOOT, other_serial), place(other_serial, address, version), other_serial != serial),
            (VmKey::derive(&ROOT, &BOOT, other_serial), p, other_serial != serial),
            (VmKey::derive(&ROOT, &[1; 32], serial), p, true),
        ];
        for (k, q, differs) in tries {
            if differs {
                let mut page = sealed;
                prop_assert_eq!(open(&k, &q, &mut page, &tag), Err(Refused), "{:?}", q);
            }
        }
        let mut page = sealed;
        prop_assert_eq!(open(&key, &p, &mut page, &tag), Ok(()));
        prop_assert_eq!(page, page_from(seed));
    }
}

#[test]
fn versions_start_at_one_and_grow_per_address() {
    let mut map = VersionMap::<64>::new();
    assert_eq!(map.plan_restore(0x1000, 1), Err(MapError::NotEvicted));
    let e = map.plan_evict(0x1000).unwrap();
    assert_eq!(e.version, 1);
    map.commit_evict(e);
    assert!(map.is_evicted(0x1000) && !map.is_evicted(0x2000));
    assert_eq!(map.plan_evict(0x1000), Err(MapError::AlreadyEvicted));
    // Another address has its own count.
    let e2 = map.plan_evict(0x2000).unwrap();
    assert_eq!(e2.version, 1);
    map.commit_evict(e2);
    assert!(map.any_evicted_in(0x2000, 0x3000) && !map.any_evicted_in(0x3000, 0x10_0000));
    assert_eq!(map.plan_restore(0x1000, 0), Err(MapError::StaleVersion));
    assert_eq!(map.plan_restore(0x1000, 2), Err(MapError::StaleVersion));
    let r = map.plan_restore(0x1000, 1).unwrap();
    map.commit_restore(r, true);
    assert_eq!(map.lookup(0x1000), Some((1, false)));
    assert_eq!(map.plan_restore(0x1000, 1), Err(MapError::NotEvicted));
    let e = map.plan_evict(0x1000).unwrap();
    assert_eq!((e.version, e.held), (2, true));
    map.commit_evict(e);
    map.commit_restore(map.plan_restore(0x1000, 2).unwrap(), false);
    let e = map.plan_evict(0x1000).unwrap();
    assert_eq!((e.version, e.held), (3, false));
    map.commit_evict(e);
    assert_eq!(map.plan_restore(0x1000, 2), Err(MapError::StaleVersion));
    // The old version is now a replay.
    assert_eq!(map.plan_restore(0x1000, 1), Err(MapError::StaleVersion));
    assert_eq!(map.evicted(), 2);
    assert_eq!(map.used(), 2);
    map.clear();
    assert_eq!(map.lookup(0x1000), None);
}

#[test]
fn a_plan_changes_nothing_until_committed() {
    let mut map = VersionMap::<64>::new();
    let before = map.clone();
    let _ = map.plan_evict(0x5000).unwrap();
    assert_eq!(map.entries, before.entries);
    map.commit_evict(map.plan_evict(0x5000).unwrap());
    let snapshot = map.clone();
    let _ = map.plan_restore(0x5000, 1).unwrap();
    assert_eq!(map.entries, snapshot.entries);
}

#[test]
fn version_overflow_is_refused_not_wrapped() {
    let mut map = VersionMap::<64>::new();
    map.commit_evict(map.plan_evict(0x7000).unwrap());
    // Force the version to the maximum (what 2^27 - 1 evictions would do).
    let (index, _) = map.probe(0x7);
    map.entries[index] = (0x7 << PAGE_SHIFT) | MAX_VERSION;
    map.evicted = 0;
    assert_eq!(map.plan_evict(0x7000), Err(MapError::Overflow));
    map.entries[index] = (0x7 << PAGE_SHIFT) | (MAX_VERSION - 1);
    assert_eq!(map.plan_evict(0x7000).map(|p| p.version), Ok(MAX_VERSION));
}

#[test]
fn a_full_map_refuses_new_addresses_but_serves_old_ones() {
    let mut map = VersionMap::<64>::new();
    for i in 0..VersionMap::<64>::LIMIT as u64 {
        let p = map.plan_evict(i << 12).unwrap();
        map.commit_evict(p);
    }
    assert_eq!(map.plan_evict(0x100_0000), Err(MapError::Full));
    for i in 0..VersionMap::<64>::LIMIT as u64 {
        assert_eq!(map.lookup(i << 12), Some((1, true)), "{i}");
        map.commit_restore(map.plan_restore(i << 12, 1).unwrap(), false);
        assert_eq!(map.plan_evict(i << 12).map(|p| p.version), Ok(2));
    }
    assert_eq!(map.evicted(), 0);
}

#[test]
fn bad_addresses_are_refused() {
    let map = VersionMap::<64>::new();
    assert_eq!(map.plan_evict(0x1001), Err(MapError::BadAddress));
    assert_eq!(map.plan_evict(1 << 48), Err(MapError::BadAddress));
    assert_eq!(map.plan_restore(1 << 48, 1), Err(MapError::NotEvicted));
    assert_eq!(map.lookup(u64::MAX), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a model: any sequence of evictions and restores.
    #[test]
    fn matches_a_model(ops in proptest::collection::vec((0u64..40, any::<bool>(), 0u64..4), 1..300)) {
        let mut map = VersionMap::<64>::new();
        let mut model: std::collections::BTreeMap<u64, (u64, bool)> = Default::default();
        for (page, evict, skew) in ops {
            let address = page << 12;
            if evict {
                let expect = match model.get(&address) {
                    Some((_, true)) => Err(MapError::AlreadyEvicted),
                    Some((v, false)) => Ok(v + 1),
                    None => Ok(1),
                };
                let got = map.plan_evict(address);
                prop_assert_eq!(got.map(|p| p.version), expect);
                // Held exactly when a restore put the current page there.
                prop_assert_eq!(got.map(|p| p.held).unwrap_or(false), model.get(&address).is_some_and(|(v, e)| !e && *v > 0));
                if let Ok(p) = got {
                    map.commit_evict(p);
                    model.insert(address, (p.version, true));
                }
            } else {
                let current = model.get(&address).copied();
                let version = current.map_or(1, |(v, _)| v).wrapping_sub(skew);
                let expect = match current {
                    Some((v, true)) if v == version => Ok(()),
                    Some((_, true)) => Err(MapError::StaleVersion),
                    _ => Err(MapError::NotEvicted),
                };
                let got = map.plan_restore(address, version);
                prop_assert_eq!(got.map(|_| ()), expect);
                if let Ok(p) = got {
                    map.commit_restore(p, true);
                    model.insert(address, (version, false));
                }
            }
            prop_assert_eq!(map.evicted(), model.values().filter(|(_, e)| *e).count());
        }
    }
}
