#![allow(clippy::cast_possible_truncation, reason = "test patterns")]
//! The stream's guarantees: what the source seals the destination opens
//! exactly once, whole and in order; anything else is refused.

use proptest::prelude::*;
use rampart_migrate::*;

const SECRET: [u8; 32] = [0x4d; 32];
const DEST: [u8; 32] = [0xd5; 32];
const OTHER_DEST: [u8; 32] = [0xd6; 32];

fn preamble(challenge: u8, destination: [u8; 32]) -> Preamble {
    Preamble {
        stream_id: [0x51; 16],
        challenge: [challenge; 16],
        destination,
        source: [0x50; 32],
    }
}

fn page(ipa: u64) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (ipa as usize / PAGE_SIZE * 31 + i * 7) as u8;
    }
    p
}

/// A VM of `pages` guest pages in two runs and `vcpus` vCPUs, sealed.
fn stream(p: &Preamble, pages: &[u64], vcpus: u32) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let secret = MigrationSecret::from_bytes(&SECRET);
    let mut header = Header::new(true, false, vcpus, [0x33; 32]);
    header.signature = Some(([1; 32], [2; 64]));
    header.mmio[0] = 0x0900_0000;
    header.mmio_count = 1;
    for &ipa in pages {
        header.add_page(ipa).unwrap();
    }
    let mut out = p.encode().to_vec();
    let mut records = Vec::new();
    let mut sealer = Sealer::new(&secret, p);
    let mut buf = vec![0u8; MAX_RECORD];
    let mut push = |out: &mut Vec<u8>, n: usize, buf: &[u8]| {
        records.push(out.len()..out.len() + n);
        out.extend_from_slice(&buf[..n]);
    };
    let n = sealer.header(&header, &mut buf).unwrap();
    push(&mut out, n, &buf);
    for &ipa in pages {
        let n = sealer.page(ipa, &page(ipa), &mut buf).unwrap();
        push(&mut out, n, &buf);
    }
    for i in 0..vcpus {
        let mut v = VcpuRecord::zeroed(i);
        v.pc = 0x8000_0000 + u64::from(i);
        v.regs[5] = 0xdead_beef;
        v.power = 2;
        let n = sealer.vcpu(&v, &mut buf).unwrap();
        push(&mut out, n, &buf);
    }
    let n = sealer.end(&mut buf).unwrap();
    push(&mut out, n, &buf);
    assert!(sealer.done());
    (out, records)
}

const PAGES: [u64; 5] = [
    0x8000_0000,
    0x8000_1000,
    0x8000_2000,
    0x8010_0000,
    0x8010_1000,
];

/// Opens a whole stream as the destination would: preamble checks, then
/// records; returns the pages and vCPUs it accepted, or the first error.
type Imported = (Vec<(u64, Vec<u8>)>, Vec<VcpuRecord>);

fn import(bytes: &[u8], destination: [u8; 32], challenge: u8) -> Result<Imported, Error> {
    let p = Preamble::decode(bytes)?;
    if p.destination != destination || p.challenge != [challenge; 16] {
        return Err(Error::Malformed);
    }
    let secret = MigrationSecret::from_bytes(&SECRET);
    let mut opener = Opener::new(&secret, &p);
    let mut at = PREAMBLE_LEN;
    let (mut pages, mut vcpus) = (Vec::new(), Vec::new());
    while at < bytes.len() {
        let mut copy = bytes[at..].to_vec();
        let (record, n) = opener.open(&mut copy)?;
        match record {
            Record::Header(h) => {
                assert_eq!(h.pages(), PAGES.len() as u64);
            }
            Record::Page { ipa, data } => pages.push((ipa, data.to_vec())),
            Record::Vcpu(v) => vcpus.push(v),
            Record::End => {}
        }
        at += n;
    }
    opener.finish()?;
    Ok((pages, vcpus))
}

#[test]
fn round_trip() {
    let (bytes, records) = stream(&preamble(7, DEST), &PAGES, 2);
    assert_eq!(records.len(), 1 + PAGES.len() + 2 + 1);
    let (pages, vcpus) = import(&bytes, DEST, 7).unwrap();
    assert_eq!(pages.len(), PAGES.len());
    for (ipa, data) in &pages {
        assert_eq!(data[..], page(*ipa)[..]);
    }
    assert_eq!(vcpus.len(), 2);
    assert_eq!(vcpus[1].pc, 0x8000_0001);
    assert_eq!(vcpus[0].regs[5], 0xdead_beef);
}

#[test]
fn nothing_of_the_guest_in_clear() {
    let (bytes, _) = stream(&preamble(7, DEST), &PAGES, 1);
    // Every page has a distinctive 32-byte run; none appears in the stream.
    for ipa in PAGES {
        let p = page(ipa);
        assert!(
            !bytes.windows(32).any(|w| w == &p[100..132]),
            "page {ipa:#x} in clear"
        );
    }
    assert!(
        !bytes.windows(8).any(|w| w == 0xdead_beefu64.to_le_bytes()),
        "a register in clear"
    );
}

#[test]
fn truncated_at_every_record_boundary_is_refused() {
    let (bytes, records) = stream(&preamble(7, DEST), &PAGES, 2);
    for r in &records {
        let cut = &bytes[..r.start];
        assert_eq!(
            import(cut, DEST, 7).unwrap_err(),
            Error::Truncated,
            "cut at {}",
            r.start
        );
    }
}

#[test]
fn a_partial_record_is_short() {
    let (bytes, records) = stream(&preamble(7, DEST), &PAGES, 1);
    let p = Preamble::decode(&bytes).unwrap();
    let mut opener = Opener::new(&MigrationSecret::from_bytes(&SECRET), &p);
    let r = &records[0];
    let mut copy = bytes[r.start..r.end - 1].to_vec();
    assert_eq!(opener.open(&mut copy).unwrap_err(), Error::Short);
    // Nothing moved: the whole record still opens.
    let mut copy = bytes[r.clone()].to_vec();
    assert!(matches!(
        opener.open(&mut copy).unwrap().0,
        Record::Header(_)
    ));
}

#[test]
fn dropped_or_swapped_records_are_refused() {
    let (bytes, records) = stream(&preamble(7, DEST), &PAGES, 2);
    for i in 1..records.len() {
        // Drop record i.
        let mut dropped = bytes[..records[i].start].to_vec();
        dropped.extend_from_slice(&bytes[records[i].end..]);
        assert!(import(&dropped, DEST, 7).is_err(), "record {i} dropped");
        // Swap records i-1 and i.
        let mut swapped = bytes[..records[i - 1].start].to_vec();
        swapped.extend_from_slice(&bytes[records[i].clone()]);
        swapped.extend_from_slice(&bytes[records[i - 1].clone()]);
        swapped.extend_from_slice(&bytes[records[i].end..]);
        assert_eq!(
            import(&swapped, DEST, 7).unwrap_err(),
            Error::Sequence,
            "records {} and {i} swapped",
            i - 1
        );
        // Repeat record i.
        let mut repeated = bytes[..records[i].end].to_vec();
        repeated.extend_from_slice(&bytes[records[i].clone()]);
        repeated.extend_from_slice(&bytes[records[i].end..]);
        assert_eq!(
            import(&repeated, DEST, 7).unwrap_err(),
            Error::Sequence,
            "record {i} repeated"
        );
    }
}

#[test]
fn anything_after_the_end_is_refused() {
    let (mut bytes, records) = stream(&preamble(7, DEST), &PAGES, 1);
    let last = records.last().unwrap().clone();
    let again = bytes[last].to_vec();
    bytes.extend_from_slice(&again);
    assert!(import(&bytes, DEST, 7).is_err());
}

#[test]
fn retargeted_stream_is_refused() {
    let (bytes, _) = stream(&preamble(7, DEST), &PAGES, 1);
    // The other destination sees the preamble name someone else...
    assert!(import(&bytes, OTHER_DEST, 7).is_err());
    // ...and a preamble rewritten to name it changes the key: the first
    // record no longer authenticates.
    let mut rewritten = bytes.clone();
    rewritten[48..80].copy_from_slice(&OTHER_DEST);
    assert_eq!(
        import(&rewritten, OTHER_DEST, 7).unwrap_err(),
        Error::NotAuthentic
    );
    // The same for a challenge rewritten to a fresh one.
    let mut rechallenged = bytes.clone();
    rechallenged[32..48].copy_from_slice(&[8; 16]);
    assert_eq!(
        import(&rechallenged, DEST, 8).unwrap_err(),
        Error::NotAuthentic
    );
}

#[test]
fn a_stream_is_bound_to_its_challenge_so_a_replay_needs_an_unused_one() {
    // Two exports for two challenges: records of one do not open in the
    // other (the destination refuses the old challenge itself; this shows
    // the old stream cannot be spliced into a new one).
    let (a, ra) = stream(&preamble(7, DEST), &PAGES, 1);
    let (b, rb) = stream(&preamble(8, DEST), &PAGES, 1);
    let mut spliced = b[..rb[1].start].to_vec();
    spliced.extend_from_slice(&a[ra[1].start..]);
    assert_eq!(import(&spliced, DEST, 8).unwrap_err(), Error::NotAuthentic);
}

#[test]
fn another_migration_secret_is_refused() {
    let (bytes, _) = stream(&preamble(7, DEST), &PAGES, 1);
    let p = Preamble::decode(&bytes).unwrap();
    let mut opener = Opener::new(&MigrationSecret::from_bytes(&[0x4e; 32]), &p);
    let mut copy = bytes[PREAMBLE_LEN..].to_vec();
    assert_eq!(opener.open(&mut copy).unwrap_err(), Error::NotAuthentic);
}

#[test]
fn sealer_refuses_out_of_order_input() {
    let secret = MigrationSecret::from_bytes(&SECRET);
    let p = preamble(1, DEST);
    let mut sealer = Sealer::new(&secret, &p);
    let mut buf = vec![0u8; MAX_RECORD];
    assert_eq!(
        sealer
            .page(0x8000_0000, &[0; PAGE_SIZE], &mut buf)
            .unwrap_err(),
        Error::Order
    );
    let mut header = Header::new(true, false, 1, [0; 32]);
    header.add_page(0x8000_0000).unwrap();
    assert_eq!(header.add_page(0x8000_0000).unwrap_err(), Error::Order);
    assert_eq!(
        sealer.header(&header, &mut buf[..10]).unwrap_err(),
        Error::Short
    );
    sealer.header(&header, &mut buf).unwrap();
    assert_eq!(sealer.end(&mut buf).unwrap_err(), Error::Order);
    assert_eq!(
        sealer.vcpu(&VcpuRecord::zeroed(0), &mut buf).unwrap_err(),
        Error::Order,
        "pages first"
    );
    assert_eq!(
        sealer
            .page(0x9000_0000, &[0; PAGE_SIZE], &mut buf)
            .unwrap_err(),
        Error::Order,
        "not in the layout"
    );
    sealer.page(0x8000_0000, &[0; PAGE_SIZE], &mut buf).unwrap();
    assert_eq!(
        sealer.vcpu(&VcpuRecord::zeroed(1), &mut buf).unwrap_err(),
        Error::Order,
        "index beyond"
    );
    sealer.vcpu(&VcpuRecord::zeroed(0), &mut buf).unwrap();
    sealer.end(&mut buf).unwrap();
    assert!(sealer.done());
}

#[test]
fn header_round_trip_and_malformed_layouts() {
    let mut h = Header::new(true, true, 3, [9; 32]);
    for ipa in [0x8000_0000u64, 0x8000_1000, 0x9000_0000] {
        h.add_page(ipa).unwrap();
    }
    let bytes = h.encode();
    assert_eq!(Header::decode(&bytes).unwrap(), h);
    assert_eq!(h.run_count, 2);
    // Adjacent runs (two encodings of one layout), overlapping runs, an
    // unaligned run, a wrong total: each refused.
    let run = |b: &mut [u8; HEADER_LEN], i: usize, ipa: u64, pages: u64| {
        b[148 + 16 * i..156 + 16 * i].copy_from_slice(&ipa.to_le_bytes());
        b[156 + 16 * i..164 + 16 * i].copy_from_slice(&pages.to_le_bytes());
    };
    let mut b = bytes;
    run(&mut b, 1, 0x8000_2000, 1);
    assert_eq!(
        Header::decode(&b).unwrap_err(),
        Error::Malformed,
        "adjacent"
    );
    let mut b = bytes;
    run(&mut b, 1, 0x8000_1000, 1);
    assert_eq!(Header::decode(&b).unwrap_err(), Error::Malformed, "overlap");
    let mut b = bytes;
    run(&mut b, 1, 0x9000_0800, 1);
    assert_eq!(
        Header::decode(&b).unwrap_err(),
        Error::Malformed,
        "unaligned"
    );
    let mut b = bytes;
    run(&mut b, 1, !0xfff, 2);
    assert_eq!(Header::decode(&b).unwrap_err(), Error::Malformed, "wraps");
    let mut b = bytes;
    b[HEADER_LEN - 12] ^= 1;
    assert_eq!(Header::decode(&b).unwrap_err(), Error::Malformed, "total");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any single flipped bit anywhere in the stream is refused (the
    /// preamble's by the checks or the key, a record's by its tag, its
    /// sequence number or its framing).
    #[test]
    fn any_flipped_bit_is_refused(at in 0usize..100_000, bit in 0u8..8) {
        let (mut bytes, _) = stream(&preamble(7, DEST), &PAGES, 2);
        let at = at % bytes.len();
        bytes[at] ^= 1 << bit;
        prop_assert!(import(&bytes, DEST, 7).is_err(), "flip at {} bit {}", at, bit);
    }

    /// Any byte string after a valid preamble is refused without a panic,
    /// and never yields a record (a forgery would need the key).
    #[test]
    fn garbage_records_are_refused(garbage in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let p = preamble(7, DEST);
        let mut opener = Opener::new(&MigrationSecret::from_bytes(&SECRET), &p);
        let mut copy = garbage.clone();
        prop_assert!(opener.open(&mut copy).is_err());
    }

    /// Garbage headers and vCPU records parse or are refused, never panic.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..HEADER_LEN + 8)) {
        let _ = Header::decode(&bytes);
        let _ = VcpuRecord::decode(&bytes);
        let _ = Preamble::decode(&bytes);
    }

    /// vCPU records round-trip for any contents the decoder accepts.
    #[test]
    fn vcpu_round_trip(index in 0u32..8, power in 0u32..3, flags in 0u32..8, w in any::<u64>()) {
        let mut v = VcpuRecord::zeroed(index);
        v.power = power;
        v.flags = flags;
        v.el1[25] = w;
        v.fp[63] = w.rotate_left(7);
        v.counter = !w;
        prop_assert_eq!(VcpuRecord::decode(&v.encode()).unwrap(), v);
    }
}
