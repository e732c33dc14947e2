//! The swap file, the policy and the swapper against a fake hypervisor
//! that implements the swap ABI (a toy seal: XOR with a per-VM, per-page,
//! per-version stream and a keyed checksum as the tag; the real AEAD is at
//! EL2, this checks only the VMM's side of the protocol).

#![allow(clippy::cast_possible_truncation, reason = "small test values")]

use std::sync::Mutex;

use super::*;
use crate::hyp::Hyp;

const BAD_SEAL: i64 = rampart_abi::Error::SealInvalid.code();
const STALE: i64 = rampart_abi::Error::StaleVersion.code();
const NOT_EVICTED: i64 = rampart_abi::Error::NotEvicted.code();
const INVALID: i64 = rampart_abi::Error::InvalidParameter.code();

/// A fake hypervisor with one or more VMs whose guest RAM lives in a
/// region (physical `BASE` = region offset 0).
struct FakeSwap<'a> {
    region: &'a Mapping,
    state: Mutex<FakeState>,
    /// A broken hypervisor: accepts every restore without checking.
    accept_all: bool,
    /// A leaking hypervisor: the "sealed" page is the plaintext.
    leak: bool,
}

#[derive(Default)]
struct FakeState {
    /// (vm, ipa) -> frame (physical) of resident pages.
    mapped: HashMap<(u64, u64), u64>,
    /// (vm, ipa) -> current version of evicted pages.
    evicted: HashMap<(u64, u64), u64>,
    /// (vm, ipa) -> the last version handed out.
    versions: HashMap<(u64, u64), u64>,
    vms: Vec<u64>,
    next: u64,
    calls: Vec<[u64; 18]>,
}

const BASE: u64 = 0x7c00_0000;
const VM: u64 = 0x1_0000_1000;

fn stream(vm: u64, ipa: u64, version: u64, i: usize) -> u8 {
    let x =
        (vm ^ ipa.rotate_left(17) ^ version.rotate_left(40) ^ (i as u64).wrapping_mul(0x9e37_79b9))
            .wrapping_mul(0xff51_afd7_ed55_8ccd);
    (x >> 29) as u8
}

fn tag(vm: u64, ipa: u64, version: u64, sealed: &[u8]) -> [u64; 2] {
    let mut h = vm ^ 0x5151 ^ ipa.rotate_left(7) ^ version.rotate_left(23);
    for (i, b) in sealed.iter().enumerate() {
        h = (h ^ u64::from(*b) ^ (i as u64)).wrapping_mul(0x100_0000_01b3);
    }
    [h, h.rotate_left(31) ^ 0xa5a5]
}

impl<'a> FakeSwap<'a> {
    fn new(region: &'a Mapping, pages: u64) -> Self {
        let mut s = FakeState {
            next: VM + 1,
            vms: vec![VM],
            ..FakeState::default()
        };
        for i in 0..pages {
            s.mapped
                .insert((VM, GUEST_RAM_BASE + i * PAGE_SIZE), BASE + i * PAGE_SIZE);
        }
        FakeSwap {
            region,
            state: Mutex::new(s),
            accept_all: false,
            leak: false,
        }
    }

    fn off(phys: u64) -> usize {
        usize::try_from(phys - BASE).unwrap()
    }

    fn read(&self, phys: u64) -> Vec<u8> {
        (0..PAGE)
            .step_by(8)
            .flat_map(|o| self.region.read_u64(Self::off(phys) + o).to_le_bytes())
            .collect()
    }

    /// The guest's view of its page `ipa` (None if evicted).
    fn guest_page(&self, ipa: u64) -> Option<Vec<u8>> {
        let frame = *self.state.lock().unwrap().mapped.get(&(VM, ipa))?;
        Some(self.read(frame))
    }

    fn guest_write(&self, ipa: u64, fill: u8) {
        let frame = self.state.lock().unwrap().mapped[&(VM, ipa)];
        self.region.write_bytes(Self::off(frame), &[fill; PAGE]);
    }

    fn guest_frames(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .mapped
            .keys()
            .filter(|(vm, _)| *vm == VM)
            .count()
    }
}

impl Hyp for FakeSwap<'_> {
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
        let mut s = self.state.lock().unwrap();
        s.calls.push(regs);
        let mut out = [0u64; 18];
        let err = |code: i64| {
            let mut o = [0u64; 18];
            o[0] = code as u64;
            o
        };
        let id = regs[0] as u32;
        let (vm, ipa) = (regs[1], regs[2]);
        if id == VM_EVICT {
            let Some(frame) = s.mapped.get(&(vm, ipa)).copied() else {
                return err(NOT_EVICTED);
            };
            let sealed_at = regs[3];
            let plain = self.read(frame);
            let version = s.versions.get(&(vm, ipa)).copied().unwrap_or(0) + 1;
            let sealed: Vec<u8> = if self.leak {
                plain
            } else {
                plain
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ stream(vm, ipa, version, i))
                    .collect()
            };
            self.region.write_bytes(Self::off(sealed_at), &sealed);
            self.region.zero(Self::off(frame), PAGE);
            s.mapped.remove(&(vm, ipa));
            s.evicted.insert((vm, ipa), version);
            s.versions.insert((vm, ipa), version);
            let t = tag(vm, ipa, version, &sealed);
            out[1] = version;
            out[2] = t[0];
            out[3] = t[1];
        } else if id == VM_RESTORE {
            if !s.vms.contains(&vm) {
                return err(INVALID);
            }
            let (sealed_at, fresh, version) = (regs[3], regs[4], regs[5]);
            let Some(&current) = s.evicted.get(&(vm, ipa)) else {
                return err(NOT_EVICTED);
            };
            if sealed_at == fresh {
                return err(INVALID);
            }
            let sealed = self.read(sealed_at);
            if !self.accept_all {
                if version != current {
                    return err(STALE);
                }
                if tag(vm, ipa, version, &sealed) != [regs[6], regs[7]] {
                    return err(BAD_SEAL);
                }
            }
            let plain: Vec<u8> = sealed
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if self.leak {
                        *b
                    } else {
                        b ^ stream(vm, ipa, version, i)
                    }
                })
                .collect();
            self.region.write_bytes(Self::off(fresh), &plain);
            s.evicted.remove(&(vm, ipa));
            s.mapped.insert((vm, ipa), fresh);
        } else if id == HostCall::VmCreate.id() {
            let h = s.next;
            s.next += 1;
            s.vms.push(h);
            out[1] = h;
        } else if id == HostCall::VmDonate.id() {
            // [handle, phys, pages, ipa]
            s.mapped.insert((regs[1], regs[4]), regs[2]);
        } else if id == HostCall::VmDestroy.id() {
            let h = regs[1];
            s.vms.retain(|&v| v != h);
            s.mapped.retain(|(v, _), _| *v != h);
            s.evicted.retain(|(v, _), _| *v != h);
        } else {
            return err(-1);
        }
        out
    }
}

struct Setup {
    region: Mapping,
    dir: PathBuf,
}

fn setup(pages: u64, tag: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("rampart-swap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Guest RAM, 64 pages of metadata room, the staging page.
    let region =
        Mapping::anonymous(usize::try_from((pages + 64 + 1) * PAGE_SIZE).unwrap()).unwrap();
    Setup { region, dir }
}

fn swap<'a>(s: &'a Setup, pages: u64, limit: u64, attack: bool) -> Swap<'a> {
    let args = SwapArgs {
        swap: Some(s.dir.join("swap")),
        swap_attack: attack,
        ..SwapArgs::default()
    };
    Swap::new(
        &args,
        &s.dir.join("swap"),
        VM,
        &s.region,
        BASE,
        pages,
        (pages + 64) * PAGE_SIZE,
        limit,
    )
    .unwrap()
}

fn ipa(i: u64) -> u64 {
    GUEST_RAM_BASE + i * PAGE_SIZE
}

#[test]
fn records_and_the_header_have_the_documented_layout() {
    let r = Record {
        ipa: 0x8000_3000,
        version: 7,
        tag: std::array::from_fn(|i| i as u8),
        sealed: vec![0xab; PAGE],
    };
    let bytes = r.encode();
    assert_eq!(bytes.len() as u64, RECORD_SIZE);
    assert_eq!(bytes[..8], 0x8000_3000u64.to_le_bytes());
    assert_eq!(bytes[8..16], 7u64.to_le_bytes());
    assert_eq!(bytes[16..32], r.tag);
    assert!(bytes[32..].iter().all(|&b| b == 0xab));
    assert_eq!(Record::decode(&bytes), Some(r.clone()));
    assert_eq!(Record::decode(&bytes[1..]), None);
    assert_eq!(
        r.tag_words(),
        [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908]
    );

    let h = header(0x1_0000_1000, 512);
    assert_eq!(h.len() as u64, HEADER_SIZE);
    assert_eq!(&h[..8], b"RMPSWAP\0");
    assert_eq!(h[8..12], 1u32.to_le_bytes());
    assert_eq!(h[12..16], 4096u32.to_le_bytes());
    assert_eq!(h[16..24], 0x1_0000_1000u64.to_le_bytes());
    assert_eq!(h[24..32], GUEST_RAM_BASE.to_le_bytes());
    assert_eq!(h[32..40], 512u64.to_le_bytes());
    assert_eq!(h[40..48], RECORD_SIZE.to_le_bytes());
    assert!(h[48..].iter().all(|&b| b == 0));
}

#[test]
fn the_store_keeps_one_slot_per_page() {
    let s = setup(1, "store");
    let path = s.dir.join("f");
    let store = Store::create(&path, VM, 8).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        HEADER_SIZE + 8 * RECORD_SIZE
    );
    let r = |v: u64| Record {
        ipa: ipa(5),
        version: v,
        tag: [v as u8; 16],
        sealed: vec![v as u8; PAGE],
    };
    store.write(ipa(5), &r(3)).unwrap();
    store.write(ipa(5), &r(4)).unwrap();
    assert_eq!(store.read(ipa(5)).unwrap(), r(4));
    let file = std::fs::read(&path).unwrap();
    let at = usize::try_from(HEADER_SIZE + 5 * RECORD_SIZE).unwrap();
    assert_eq!(file[at + 8..at + 16], 4u64.to_le_bytes());
    // An empty slot reads as version 0.
    assert_eq!(store.read(ipa(0)).unwrap().version, 0);
    assert!(store.read(ipa(8)).is_err());
    assert!(store.read(ipa(1) + 8).is_err());
    assert!(store.read(0x1000).is_err());
}

#[test]
fn the_policy_is_a_fifo_of_arrivals_within_the_limit() {
    let mut p = Policy::new(8, 4);
    // Highest addresses go first.
    assert_eq!(p.victim(false), Some(ipa(7)));
    for i in (4..8).rev() {
        assert_eq!(p.victim(false), Some(ipa(i)));
        p.evicted(ipa(i));
    }
    assert_eq!(p.victim(false), None, "at the limit");
    assert_eq!((p.resident_pages(), p.evicted_pages()), (4, 4));
    // Making room for one more: the oldest arrival (ipa 3) goes.
    assert_eq!(p.victim(true), Some(ipa(3)));
    p.evicted(ipa(3));
    let frame = p.free_frame().unwrap();
    p.restored(ipa(6), frame);
    assert!(!p.is_evicted(ipa(6)));
    // ipa 6 is now the newest: 2, 1, 0 go before it.
    assert_eq!(Vec::from(p.order.clone()), [ipa(2), ipa(1), ipa(0), ipa(6)]);
    assert_eq!(p.victim(true), Some(ipa(2)));
    p.evicted(ipa(2));
    assert_eq!(
        p.victim(true),
        None,
        "a frame is free and the limit allows one more"
    );
    // A restore of a page that is not evicted, or into a frame that is
    // not free, changes nothing.
    let before = p.clone();
    p.restored(ipa(0), 0x0777_7000);
    assert_eq!(p, before);
}

#[test]
fn the_limit_comes_from_the_options_and_is_checked() {
    let a = |resident, resident_mib| SwapArgs {
        swap: Some("f".into()),
        resident,
        resident_mib,
        ..SwapArgs::default()
    };
    assert_eq!(a(Some(100), None).limit(512).unwrap(), 100);
    assert_eq!(a(None, Some(1)).limit(512).unwrap(), 256);
    assert_eq!(a(None, None).limit(512).unwrap(), 128);
    assert_eq!(a(None, None).limit(20).unwrap(), MIN_RESIDENT);
    assert!(a(Some(15), None).limit(512).is_err());
    assert!(a(Some(512), None).limit(512).is_err());
    assert!(a(None, Some(u64::MAX)).limit(512).is_err());
    assert_eq!(parse_hex("0011223344556677").unwrap().0.len(), 8);
    assert!(parse_hex("00112233").is_err());
    assert!(parse_hex("zz11223344556677").is_err());
}

#[test]
fn pages_go_out_sealed_and_come_back_intact_within_the_limit() {
    let pages = 64;
    let s = setup(pages, "roundtrip");
    let fake = FakeSwap::new(&s.region, pages);
    for i in 0..pages {
        fake.guest_write(ipa(i), i as u8 + 1);
    }
    let sw = swap(&s, pages, 16, false);
    assert_eq!(sw.trim(&fake).unwrap(), 48);
    assert_eq!(sw.pages(), (16, 48));
    assert_eq!(fake.guest_frames(), 16);
    // The file holds every evicted page's record, sealed (not the
    // plaintext), with its version.
    let store = &sw.store;
    for i in 16..pages {
        let r = store.read(ipa(i)).unwrap();
        assert_eq!((r.ipa, r.version), (ipa(i), 1));
        assert_ne!(r.sealed, vec![i as u8 + 1; PAGE]);
    }
    // A guest sweeping all of its RAM three times: every touch of an
    // evicted page restores it, never more than 16 resident.
    for round in 0..3u64 {
        for i in 0..pages {
            let page = ipa((i * 7 + round) % pages);
            if fake.guest_page(page).is_none() {
                sw.fault(&fake, page + 0x18).unwrap();
            }
            let got = fake.guest_page(page).expect("restored");
            let want = ((page - GUEST_RAM_BASE) / PAGE_SIZE) as u8 + 1;
            assert!(got.iter().all(|&b| b == want), "page {page:#x}");
            assert!(fake.guest_frames() <= 16);
            assert!(sw.pages().0 <= 16);
        }
    }
    // A fault on a page another vCPU already restored does nothing.
    let resident = (0..pages)
        .map(ipa)
        .find(|&a| fake.guest_page(a).is_some())
        .unwrap();
    let calls = fake.state.lock().unwrap().calls.len();
    sw.fault(&fake, resident).unwrap();
    assert_eq!(fake.state.lock().unwrap().calls.len(), calls);
    // Outside guest RAM: an error, no call.
    assert!(sw.fault(&fake, ipa(pages)).is_err());
    // Versions grow by one per eviction of an address.
    let versions: Vec<u64> = (0..pages)
        .map(|i| store.read(ipa(i)).unwrap().version)
        .collect();
    assert!(versions.iter().any(|&v| v >= 3), "{versions:?}");
}

#[test]
fn a_refused_restore_stops_the_fault_and_changes_nothing() {
    let pages = 32;
    let s = setup(pages, "refused");
    let fake = FakeSwap::new(&s.region, pages);
    let sw = swap(&s, pages, 16, false);
    sw.trim(&fake).unwrap();
    // The disk flipped a bit.
    let mut r = sw.store.read(ipa(20)).unwrap();
    r.sealed[9] ^= 1;
    sw.store.write(ipa(20), &r).unwrap();
    let refused_before = counts().2;
    let e = sw.fault(&fake, ipa(20)).unwrap_err();
    assert_eq!(e, SwapError::Refused("VM_RESTORE", BAD_SEAL));
    assert!(counts().2 > refused_before);
    assert!(sw.policy().is_evicted(ipa(20)));
    assert!(fake.guest_page(ipa(20)).is_none());
    // Room was made (one page evicted), the frame stays free for later.
    assert!(sw.pages().0 <= 16);
    assert!(
        stats_lines()
            .iter()
            .any(|(k, v)| k == "swap" && v.contains("refusals"))
    );
    let lines = stats_lines();
    assert!(
        lines
            .iter()
            .any(|(k, v)| k == "swap time in VM_EVICT and VM_RESTORE"
                && v.ends_with(" us per call)")),
        "{lines:?}"
    );
}

#[test]
fn the_hostile_modes_are_refused_and_the_vm_is_unchanged() {
    let pages = 96;
    let s = setup(pages, "attack");
    let fake = FakeSwap::new(&s.region, pages);
    for i in 0..pages {
        fake.guest_write(ipa(i), 0x40 + i as u8);
    }
    let sw = swap(&s, pages, 16, true);
    sw.trim(&fake).unwrap();
    let results = sw.attack(&fake, 4);
    assert_eq!(results.len(), 4);
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let text: Vec<String> = results.into_iter().map(Result::unwrap).collect();
    assert!(text[0].contains("SEAL_INVALID"), "{}", text[0]);
    assert!(
        text[1].contains("STALE_VERSION") && text[1].contains("version 1 replayed, current 2"),
        "{}",
        text[1]
    );
    assert!(text[2].contains("SEAL_INVALID"), "{}", text[2]);
    assert!(
        text[3].contains("into VM 0x100001001") && text[3].contains("SEAL_INVALID"),
        "{}",
        text[3]
    );
    // The other VM is gone; its frames are free again.
    assert_eq!(fake.state.lock().unwrap().vms, vec![VM]);
    // Every page still holds what the guest wrote.
    for i in 0..pages {
        if fake.guest_page(ipa(i)).is_none() {
            sw.fault(&fake, ipa(i)).unwrap();
        }
        let page = fake.guest_page(ipa(i)).unwrap();
        assert!(page.iter().all(|&b| b == 0x40 + i as u8), "page {i}");
        assert!(sw.pages().0 <= 16);
    }
}

#[test]
fn a_hypervisor_that_accepts_tampered_pages_fails_the_hostile_modes() {
    let pages = 96;
    let s = setup(pages, "broken");
    let mut fake = FakeSwap::new(&s.region, pages);
    fake.accept_all = true;
    let sw = swap(&s, pages, 16, true);
    sw.trim(&fake).unwrap();
    let results = sw.attack(&fake, 4);
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(results[0].as_ref().unwrap_err().contains("ACCEPTED"));
}

#[test]
fn the_scan_finds_a_secret_in_clear_and_not_in_sealed_pages() {
    let secret = b"SECRET!!swapTEST";
    for leak in [false, true] {
        let pages = 32;
        let s = setup(pages, if leak { "leak" } else { "noleak" });
        let mut fake = FakeSwap::new(&s.region, pages);
        fake.leak = leak;
        for i in 0..pages {
            let mut page = vec![0u8; PAGE];
            page[100..116].copy_from_slice(secret);
            let frame = fake.state.lock().unwrap().mapped[&(VM, ipa(i))];
            s.region.write_bytes(FakeSwap::off(frame), &page);
        }
        let sw = swap(&s, pages, 16, false);
        sw.trim(&fake).unwrap();
        // The anonymous region stands in for the pool: the resident
        // guest pages are readable here (on the real host they abort), so
        // scan only from the first evicted page's frame on.
        let (in_file, _, read, aborted) = sw.scan(secret, pages + 65).unwrap();
        assert_eq!((read, aborted), (pages + 65, 0));
        if leak {
            assert_eq!(in_file, 16, "every evicted page leaked into the file");
        } else {
            assert_eq!(in_file, 0);
        }
        // The staging page holds the last sealed page: in clear only when
        // the hypervisor leaks.
        let staging = usize::try_from((pages + 64) * PAGE_SIZE).unwrap();
        let bytes: Vec<u8> = (0..PAGE)
            .step_by(8)
            .flat_map(|o| s.region.read_u64(staging + o).to_le_bytes())
            .collect();
        assert_eq!(count(&bytes, secret), u64::from(leak));
    }
    // Straddling a page boundary still counts.
    assert_eq!(count(b"xxSECRETyy", b"SECRET"), 1);
    assert_eq!(count(b"SECRE", b"SECRET"), 0);
}

#[test]
fn the_command_line_takes_the_swap_options() {
    let cli = crate::parse_cli([
        "rampart-vmm",
        "run",
        "/guests/swap.bundle",
        "--swap",
        "/tmp/s",
        "--resident",
        "64",
        "--swap-attack",
        "--swap-scan",
        "00112233445566778899aabbccddeeff",
    ])
    .unwrap();
    let crate::Command::Run { swap, .. } = cli.command else {
        panic!("not run");
    };
    assert_eq!(swap.swap.as_deref(), Some(Path::new("/tmp/s")));
    assert_eq!(swap.resident, Some(64));
    assert!(swap.swap_attack);
    assert_eq!(swap.swap_scan.unwrap().0[15], 0xff);
    for bad in [
        &["rampart-vmm", "run", "b", "--resident", "64"][..],
        &[
            "rampart-vmm",
            "run",
            "b",
            "--swap",
            "f",
            "--resident",
            "64",
            "--resident-mib",
            "1",
        ],
        &[
            "rampart-vmm",
            "run",
            "b",
            "--swap",
            "f",
            "--swap-scan",
            "0011",
        ],
    ] {
        assert!(crate::parse_cli(bad).is_err(), "{bad:?}");
    }
    // Linux guests have no swap.
    assert!(
        crate::parse_cli(["rampart-vmm", "run", "--kernel", "k", "--swap", "f"]).is_ok(),
        "refused later, by the run command"
    );
}
