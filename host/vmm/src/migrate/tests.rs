//! `migrate-out`/`migrate-in`'s logic against a fake hypervisor that
//! seals and opens real streams with `rampart_migrate` (the same code EL2
//! runs), so a flipped byte, a replay or a truncation is refused here as
//! it would be there.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "test values"
)]

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::Mutex;

use rampart_migrate::{MigrationSecret, Preamble, Record, Sealer, VcpuRecord};

use super::*;

const NOT_AUTHENTIC: i64 = -27;
const STALE_STREAM: i64 = -29;
/// Where the fake says the test's mapping is, physically.
const PHYS: u64 = 0x4000_0000;

fn page_of(i: u64) -> [u8; 4096] {
    let mut p = [0u8; 4096];
    for (j, b) in p.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ (j as u8) ^ 0x5a;
    }
    p
}

#[derive(Default)]
struct State {
    /// Source: the VM's pages (none once exported), the stream's records
    /// still to write, calls answered BUSY first.
    pages: u64,
    records: VecDeque<Vec<u8>>,
    export_started: bool,
    busy: u32,
    exported: bool,
    /// Destination: challenges outstanding and spent, the import.
    outstanding: Vec<[u8; 16]>,
    spent: Vec<[u8; 16]>,
    next_challenge: u8,
    importing: Option<(u64, Opener, [u8; 16])>,
    ram: Option<(u64, u64)>,
    live: Vec<u64>,
    calls: Vec<u32>,
}

struct Fake<'a> {
    map: &'a Mapping,
    identity: [u8; 32],
    state: Mutex<State>,
}

fn secret() -> MigrationSecret {
    MigrationSecret::from_bytes(&[7; 32])
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn bytes_of(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl<'a> Fake<'a> {
    fn new(map: &'a Mapping, id: u8, pages: u64) -> Self {
        Fake {
            map,
            identity: [id; 32],
            state: Mutex::new(State {
                pages,
                live: vec![0x1_0000_1000],
                ..State::default()
            }),
        }
    }

    fn read(&self, phys: u64, len: u64) -> Vec<u8> {
        let len = usize::try_from(len).unwrap();
        let mut b = self.map.read_bytes(self.off(phys), len.next_multiple_of(8));
        b.truncate(len);
        b
    }

    fn off(&self, phys: u64) -> usize {
        usize::try_from(phys - PHYS).unwrap()
    }

    /// Seals the source VM's stream for `challenge` and `destination`.
    fn seal(&self, s: &mut State, challenge: &[u8], destination: &[u8]) {
        let preamble = Preamble {
            stream_id: [3; 16],
            challenge: challenge.try_into().unwrap(),
            destination: destination.try_into().unwrap(),
            source: self.identity,
        };
        let mut sealer = Sealer::new(&secret(), &preamble);
        let mut header = Header::new(true, false, 1, [9; 32]);
        for i in 0..s.pages {
            header.add_page(GUEST_RAM_BASE + i * 4096).unwrap();
        }
        let mut first = preamble.encode().to_vec();
        let mut out = vec![0u8; rampart_migrate::MAX_RECORD];
        let n = sealer.header(&header, &mut out).unwrap();
        first.extend_from_slice(&out[..n]);
        s.records.push_back(first);
        for i in 0..s.pages {
            let n = sealer
                .page(GUEST_RAM_BASE + i * 4096, &page_of(i), &mut out)
                .unwrap();
            s.records.push_back(out[..n].to_vec());
        }
        let n = sealer.vcpu(&VcpuRecord::zeroed(0), &mut out).unwrap();
        s.records.push_back(out[..n].to_vec());
        let n = sealer.end(&mut out).unwrap();
        s.records.push_back(out[..n].to_vec());
    }

    /// The import failed: the VM goes, its RAM zeroed, the challenge
    /// outstanding again.
    fn abandon(&self, s: &mut State) {
        if let Some((h, _, c)) = s.importing.take() {
            s.live.retain(|&v| v != h);
            s.outstanding.push(c);
        }
        if let Some((phys, pages)) = s.ram.take() {
            self.map
                .zero(self.off(phys), usize::try_from(pages * 4096).unwrap());
        }
    }
}

fn err(code: i64) -> u64 {
    code as u64
}

impl Hyp for Fake<'_> {
    fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
        let mut s = self.state.lock().unwrap();
        let id = regs[0] as u32;
        s.calls.push(id);
        let mut out = [0u64; 18];
        if id == HostCall::VmImportBegin.id() {
            s.next_challenge += 1;
            let c = [s.next_challenge; 16];
            s.outstanding.push(c);
            out[1..3].copy_from_slice(&words(&c));
        } else if id == HostCall::AttestationKey.id() {
            out[1..5].copy_from_slice(&words(&self.identity));
        } else if id == crate::hyp::VM_LIST {
            out[1] = s.live.iter().copied().find(|&h| h > regs[1]).unwrap_or(0);
        } else if id == HostCall::VmExport.id() {
            if s.exported || !s.live.contains(&regs[1]) {
                out[0] = err(Error::InvalidParameter.code());
            } else if s.busy > 0 {
                s.busy -= 1;
                out[0] = err(Error::Busy.code());
            } else {
                if !s.export_started {
                    s.export_started = true;
                    let (c, d) = (bytes_of(&regs[4..6]), bytes_of(&regs[6..10]));
                    self.seal(&mut s, &c, &d);
                }
                let room = usize::try_from(regs[3] * 4096).unwrap();
                let mut n = 0;
                while let Some(r) = s.records.front() {
                    if n + r.len() > room {
                        break;
                    }
                    let r = s.records.pop_front().unwrap();
                    self.map.write_bytes(self.off(regs[2]) + n, &r);
                    n += r.len();
                }
                out[1] = n as u64;
                if s.records.is_empty() {
                    out[2] = 1;
                    s.exported = true;
                    s.live.clear();
                }
            }
        } else if id == HostCall::VmImport.id() {
            let bytes = self.read(regs[3], regs[4]);
            let Ok(preamble) = Preamble::decode(&bytes) else {
                out[0] = err(-28);
                return out;
            };
            if preamble.destination != self.identity || !s.outstanding.contains(&preamble.challenge)
            {
                out[0] = err(STALE_STREAM);
                return out;
            }
            let mut opener = Opener::new(&secret(), &preamble);
            let mut rest = bytes[PREAMBLE_LEN..].to_vec();
            match opener.open(&mut rest) {
                Ok((Record::Header(_), n)) => {
                    s.outstanding.retain(|c| *c != preamble.challenge);
                    let h = 0x2_0000_1001;
                    s.live.push(h);
                    s.importing = Some((h, opener, preamble.challenge));
                    out[1] = h;
                    out[2] = (PREAMBLE_LEN + n) as u64;
                }
                _ => out[0] = err(NOT_AUTHENTIC),
            }
        } else if id == HostCall::VmDonate.id() {
            s.ram = Some((regs[2], regs[3]));
        } else if id == HostCall::VmImportData.id() {
            let mut bytes = self.read(regs[2], regs[3]);
            let ram = s.ram.unwrap();
            let mut at = 0;
            loop {
                let Some((_, opener, _)) = s.importing.as_mut() else {
                    out[0] = err(Error::InvalidParameter.code());
                    return out;
                };
                match opener.open(&mut bytes[at..]) {
                    Ok((Record::Page { ipa, data }, n)) => {
                        let data = *data;
                        self.map
                            .write_bytes(self.off(ram.0 + (ipa - GUEST_RAM_BASE)), &data);
                        at += n;
                    }
                    Ok((Record::End, n)) => {
                        at += n;
                        let (_, _, c) = s.importing.take().unwrap();
                        s.spent.push(c);
                        out[1] = at as u64;
                        out[2] = 1;
                        return out;
                    }
                    Ok((_, n)) => at += n,
                    Err(rampart_migrate::Error::Short) => {
                        out[1] = at as u64;
                        return out;
                    }
                    Err(e) => {
                        self.abandon(&mut s);
                        out[0] = err(if e == rampart_migrate::Error::NotAuthentic {
                            NOT_AUTHENTIC
                        } else {
                            -28
                        });
                        return out;
                    }
                }
            }
        }
        out
    }
}

/// Exports a 5-page VM from a fake source to a fake destination's hello;
/// returns the stream and how the export went.
fn exported(pages: u64, busy: u32, dest: &Fake<'_>) -> (Vec<u8>, Exported, u32) {
    let src_map = Mapping::anonymous(BUFFER).unwrap();
    let src = Fake::new(&src_map, 0x11, pages);
    src.state.lock().unwrap().busy = busy;
    let r = call(dest, HostCall::VmImportBegin.id(), &[]);
    let k = call(dest, HostCall::AttestationKey.id(), &[]);
    let hello = Hello {
        challenge: [r[1], r[2]],
        identity: [k[1], k[2], k[3], k[4]],
    };
    let hello = Hello::decode(&hello.encode()).unwrap();
    let mut stream = Vec::new();
    let mut started = 0;
    let e = export(
        &src,
        0x1_0000_1000,
        &src_map,
        PHYS,
        &hello,
        Duration::from_secs(5),
        &mut || started += 1,
        &mut |b| {
            stream.extend_from_slice(b);
            Ok(())
        },
    )
    .unwrap();
    assert!(
        src.state.lock().unwrap().live.is_empty(),
        "the source VM is gone"
    );
    (stream, e, started)
}

fn dest_plan(pages: u64) -> Plan {
    let mut h = Header::new(true, false, 1, [0; 32]);
    for i in 0..pages {
        h.add_page(GUEST_RAM_BASE + i * 4096).unwrap();
    }
    plan_for(&h).unwrap()
}

fn import_into(dest: &Fake<'_>, map: &Mapping, plan: &Plan, stream: &[u8]) -> (Imported, Progress) {
    let mut progress = Progress::default();
    let first = &stream[..FIRST_LEN];
    progress.feed(first);
    let mut rest = Cursor::new(stream[FIRST_LEN..].to_vec());
    let r = import(
        dest,
        plan,
        map,
        PHYS,
        first,
        &mut rest,
        &mut progress,
        &mut |_| {},
    )
    .unwrap();
    (r, progress)
}

fn dest_map(plan: &Plan) -> Mapping {
    Mapping::anonymous(usize::try_from((plan.total_pages() + BUFFER_PAGES) * 4096).unwrap())
        .unwrap()
}

#[test]
fn a_vm_moves_and_its_memory_arrives() {
    let plan = dest_plan(40);
    let map = dest_map(&plan);
    let dest = Fake::new(&map, 0x22, 0);
    dest.state.lock().unwrap().live.clear();
    let (stream, e, started) = exported(40, 3, &dest);
    assert_eq!(started, 1, "the VM is let go once, after the first call");
    assert!(e.calls >= 3, "{e:?}: 40 pages do not fit one 64 KiB buffer");
    assert_eq!(e.bytes, stream.len() as u64);
    assert_eq!(stream.len(), 128 + 1472 + 4136 * 40 + 1328 + 48);
    let (r, progress) = import_into(&dest, &map, &plan, &stream);
    assert_eq!(r, Imported::Done(0x2_0000_1001));
    assert_eq!(progress.bytes(), stream.len() as u64);
    assert_eq!(progress.records(), 1 + 40 + 1 + 1);
    for i in [0u64, 17, 39] {
        assert_eq!(
            map.read_bytes(usize::try_from(i * 4096).unwrap(), 4096),
            page_of(i),
            "page {i}"
        );
    }
}

#[test]
fn a_flipped_byte_is_refused_and_the_destination_holds_nothing() {
    let plan = dest_plan(8);
    let map = dest_map(&plan);
    let dest = Fake::new(&map, 0x22, 0);
    dest.state.lock().unwrap().live.clear();
    let (mut stream, _, _) = exported(8, 0, &dest);
    // A byte of the fifth page's ciphertext.
    stream[FIRST_LEN + 4 * 4136 + 100] ^= 1;
    let (r, _) = import_into(&dest, &map, &plan, &stream);
    assert_eq!(
        r,
        Imported::Refused {
            call: HostCall::VmImportData.id(),
            code: NOT_AUTHENTIC,
            handle: Some(0x2_0000_1001)
        }
    );
    let held = held_nothing(&dest, Some(0x2_0000_1001), &plan, &map).unwrap();
    assert!(
        held.contains("is gone") && held.contains("read zero"),
        "{held}"
    );
    // And the check sees a VM still held.
    dest.state.lock().unwrap().live.push(0x2_0000_1001);
    assert!(
        held_nothing(&dest, Some(0x2_0000_1001), &plan, &map)
            .unwrap_err()
            .contains("still alive")
    );
    dest.state.lock().unwrap().live.clear();
    map.write_bytes(4096, &[1]);
    assert!(
        held_nothing(&dest, Some(0x2_0000_1001), &plan, &map)
            .unwrap_err()
            .contains("not zero")
    );
}

#[test]
fn the_same_stream_twice_is_stale_and_a_cut_one_never_completes() {
    let plan = dest_plan(4);
    let map = dest_map(&plan);
    let dest = Fake::new(&map, 0x22, 0);
    dest.state.lock().unwrap().live.clear();
    let (stream, _, _) = exported(4, 0, &dest);
    let (cut, _) = import_into(&dest, &map, &plan, &stream[..stream.len() - 20]);
    assert_eq!(cut, Imported::Truncated(Some(0x2_0000_1001)));
    let plan2 = dest_plan(4);
    let map2 = dest_map(&plan2);
    let dest2 = Fake::new(&map2, 0x22, 0);
    dest2.state.lock().unwrap().live.clear();
    let (stream2, _, _) = exported(4, 0, &dest2);
    let (ok, _) = import_into(&dest2, &map2, &plan2, &stream2);
    assert_eq!(ok, Imported::Done(0x2_0000_1001));
    let (again, _) = import_into(&dest2, &map2, &plan2, &stream2);
    assert_eq!(
        again,
        Imported::Refused {
            call: HostCall::VmImport.id(),
            code: STALE_STREAM,
            handle: None
        }
    );
    assert_eq!(hyp::error_name(STALE_STREAM), "STALE_STREAM");
}

#[test]
fn a_refused_first_export_changes_nothing_and_busy_gives_up() {
    let map = Mapping::anonymous(BUFFER).unwrap();
    let src = Fake::new(&map, 0x11, 2);
    src.state.lock().unwrap().busy = u32::MAX;
    let hello = Hello {
        challenge: [1, 2],
        identity: [3, 4, 5, 6],
    };
    let mut started = false;
    let e = export(
        &src,
        0x1_0000_1000,
        &map,
        PHYS,
        &hello,
        Duration::from_millis(30),
        &mut || started = true,
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(!started);
    let text = format!("{e:#}");
    assert!(
        text.contains("BUSY") && text.contains("nothing changed"),
        "{text}"
    );
    let e = export(
        &src,
        0x9,
        &map,
        PHYS,
        &hello,
        Duration::ZERO,
        &mut || {},
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("INVALID_PARAMETER"), "{e:#}");
}

#[test]
fn hello_verdict_and_progress() {
    let h = Hello {
        challenge: [0x0102, u64::MAX],
        identity: [1, 2, 3, 4],
    };
    let mut bytes = h.encode();
    assert_eq!(Hello::decode(&bytes).unwrap(), h);
    bytes[0] ^= 1;
    assert!(Hello::decode(&bytes).is_err());
    let mut bytes = h.encode();
    bytes[8] = 2;
    assert!(Hello::decode(&bytes).is_err());
    for v in [
        Verdict::Accepted,
        Verdict::Refused("NOT_AUTHENTIC".into()),
        Verdict::Failed("no room".into()),
    ] {
        assert_eq!(Verdict::parse(&v.line()), Some(v.clone()));
    }
    assert_eq!(Verdict::parse("ACCEPTEDX"), None);
    assert_eq!(Verdict::Failed("a\nb".into()).line(), "FAILED ab\n");
    // Records counted however the bytes are cut.
    let plan = dest_plan(3);
    let map = dest_map(&plan);
    let dest = Fake::new(&map, 0x22, 0);
    let (stream, _, _) = exported(3, 0, &dest);
    for cut in [1, 7, 16, 100, 4136, 70_000] {
        let mut p = Progress::default();
        for c in stream.chunks(cut) {
            p.feed(c);
        }
        assert_eq!(
            (p.records(), p.bytes()),
            (6, stream.len() as u64),
            "chunks of {cut}"
        );
        assert!(p.summary().contains("6 records"));
    }
}

#[test]
fn only_the_layout_run_makes_is_run() {
    let mut h = Header::new(true, false, 2, [0; 32]);
    h.add_page(GUEST_RAM_BASE).unwrap();
    h.add_page(GUEST_RAM_BASE + 3 * 4096).unwrap();
    assert!(format!("{:#}", plan_for(&h).unwrap_err()).contains("2 runs"));
    let mut h = Header::new(false, false, 2, [0; 32]);
    h.add_page(0x4000_0000).unwrap();
    assert!(format!("{:#}", plan_for(&h).unwrap_err()).contains("not at"));
    let mut h = Header::new(true, true, 2, [0; 32]);
    h.add_page(GUEST_RAM_BASE).unwrap();
    let p = plan_for(&h).unwrap();
    assert_eq!(
        (
            p.memory_size,
            p.config.max_vcpus,
            p.config.protected,
            p.config.debug
        ),
        (4096, 2, true, true)
    );
}

/// A hypervisor that only knows which guest RAM pages the VM holds:
/// `VM_DONATE_ZEROED` of a range with a held page is `DENIED`.
struct Holder {
    held: Mutex<Vec<u32>>,
    calls: Mutex<Vec<(u64, u64)>>,
    zeroed: bool,
}

impl Holder {
    fn new(pages: usize, held: &[u64], zeroed: bool) -> Self {
        let mut v = vec![0u32; pages];
        for &p in held {
            v[p as usize] = 1;
        }
        Holder { held: Mutex::new(v), calls: Mutex::new(Vec::new()), zeroed }
    }
}

impl Hyp for Holder {
    fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
        let mut out = regs;
        out[0] = 0;
        let donate = regs[0] == u64::from(HostCall::VmDonate.id());
        let zeroed = regs[0] == u64::from(HostCall::VmDonateZeroed.id());
        if zeroed && !self.zeroed {
            out[0] = err(Error::NotSupported.code());
            return out;
        }
        if !(donate || zeroed) || regs[1] != 0x77 {
            out[0] = err(Error::InvalidParameter.code());
            return out;
        }
        let (phys, pages, ipa) = (regs[2], regs[3], regs[4]);
        assert!((1..=512).contains(&pages), "{pages}");
        let first = (ipa - GUEST_RAM_BASE) / PAGE_SIZE;
        assert_eq!(phys, PHYS + first * PAGE_SIZE, "page i of the region backs page i of RAM");
        self.calls.lock().unwrap().push((first, pages));
        let mut held = self.held.lock().unwrap();
        let range = first as usize..(first + pages) as usize;
        if range.end > held.len() {
            out[0] = err(Error::Range.code());
        } else if held[range.clone()].iter().any(|&h| h > 0) {
            out[0] = err(Error::Denied.code());
        } else {
            held[range].iter_mut().for_each(|h| *h += 1);
        }
        out
    }
}

/// The source gives a lazily launched VM exactly the pages it lacks,
/// each once, in calls of at most 512 pages; a second pass gives none.
#[test]
fn the_source_gives_the_missing_ram_once() {
    let held = [0, 1, 2, 3, 100, 511, 512, 700, 1299];
    for zeroed in [true, false] {
        let hyp = Holder::new(1300, &held, zeroed);
        let ram = GuestRam { phys: PHYS, pages: 1300 };
        let g = give_missing_ram(&hyp, 0x77, ram).unwrap();
        assert_eq!(g.pages, 1300 - held.len() as u64);
        assert_eq!(g.held, held.len() as u64);
        // Every page held exactly once: the missing ones given once, the
        // held ones never given again.
        assert!(hyp.held.lock().unwrap().iter().all(|&h| h == 1));
        // Chunks 0..512 and 512..1024 and 1024..1300 each hold a page:
        // refused whole, then page by page.
        let calls = hyp.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3 + 1300);
        assert_eq!(g.calls, calls.len() as u64 + if zeroed { 0 } else { 1 });
        let again = give_missing_ram(&hyp, 0x77, ram).unwrap();
        assert_eq!((again.pages, again.held), (0, 1300));
        assert!(hyp.held.lock().unwrap().iter().all(|&h| h == 1));
    }
    // Nothing held: whole chunks only.
    let hyp = Holder::new(1100, &[], true);
    let g = give_missing_ram(&hyp, 0x77, GuestRam { phys: PHYS, pages: 1100 }).unwrap();
    assert_eq!((g.pages, g.held, g.calls), (1100, 0, 3));
    assert_eq!(*hyp.calls.lock().unwrap(), vec![(0, 512), (512, 512), (1024, 76)]);
}

/// Another refusal stops the fill and is the answer.
#[test]
fn a_refused_fill_stops_at_the_refusal() {
    let hyp = Holder::new(600, &[], true);
    let e = give_missing_ram(&hyp, 0x78, GuestRam { phys: PHYS, pages: 600 }).unwrap_err();
    assert_eq!(e.error(), Some(Error::InvalidParameter));
    assert_eq!(hyp.calls.lock().unwrap().len(), 0);
    // RAM past what the hypervisor allows: RANGE, not taken for held.
    let hyp = Holder::new(600, &[5], true);
    let e = give_missing_ram(&hyp, 0x77, GuestRam { phys: PHYS, pages: 700 }).unwrap_err();
    assert_eq!(e.error(), Some(Error::Range));
}

/// The run process's report is believed only where the pool table
/// agrees: a report naming more RAM than the region (which would give the
/// VM pages of the next region), another VM or region is refused.
#[test]
fn the_live_report_must_agree_with_the_pool_table() {
    use crate::stats::LiveRam;
    let owner = Entry {
        pid: 127,
        offset: 0x20_0000,
        pages: 92,
        channels: 1,
        vm: 0x1000,
        name: "count".into(),
    };
    let base = 0x7bc0_0000;
    let live = LiveRam {
        pid: 127,
        vm: 0x1000,
        protected: true,
        region: base + 0x20_0000,
        ram_pages: 64,
    };
    let ram = checked_ram(&live, &owner, base, 0x1000).unwrap();
    assert_eq!(ram, Some(GuestRam { phys: base + 0x20_0000, pages: 64 }));
    let not_protected = LiveRam { protected: false, ..live };
    assert_eq!(checked_ram(&not_protected, &owner, base, 0x1000).unwrap(), None);
    for bad in [
        LiveRam { ram_pages: 93, ..live },
        LiveRam { ram_pages: 0, ..live },
        LiveRam { region: base, ..live },
        LiveRam { vm: 0x2000, ..live },
        LiveRam { pid: 128, ..live },
    ] {
        assert!(checked_ram(&bad, &owner, base, 0x1000).is_err(), "{bad:?}");
    }
    assert!(checked_ram(&live, &owner, base, 0x2000).is_err());
}
