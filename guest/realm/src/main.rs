//! Realm guest: runs as a realm VM (`VM_CREATE` config bit 2) and checks
//! the Realm Services Interface (`rampart_abi::rsi`, RSI 1.0 over `SMC`).
//!
//! Protocol (vCPU 0 only):
//!
//! 1. **Conduit.** `RSI_VERSION(1.0)` succeeds with 1.0/1.0 (a request for
//!    2.0 is `ERROR_INPUT`); PSCI works through SMC; KVM's vendor calls
//!    through SMC and every HVC are `NOT_SUPPORTED`; `FEATURES(0)` = 0;
//!    `HOST_CALL` is `NOT_SUPPORTED`.
//! 2. **`REALM_CONFIG`** fills a granule: `ipa_bits` (>= 32, the shared
//!    bit is `ipa_bits - 1`, above guest RAM), `hash_algo` 0, a zero RPV;
//!    unaligned, past RAM and alias addresses are `ERROR_INPUT`.
//! 3. **RIPAS.** Every granule of RAM is RAM. The guest fills granule S
//!    with [`SECRET`], sets S..S+2 granules EMPTY (one call, ACCEPT, x1 =
//!    the end), reads S's alias (`S | shared bit`): all zero; writes
//!    [`SHARED_MARK`] there and prints **`GUEST-REALM-SHARED <S hex>`**,
//!    on which the test host reads that page (it must see the mark and no
//!    byte of the secret) and writes [`HOST_MARK`] into it. The guest sees
//!    the host's write through the alias, then sets S back to RAM: S reads
//!    all zero (nothing the host wrote survives), and its alias is gone
//!    (an access there is a memory fault the VMM declines: an abort).
//!    `IPA_STATE_GET` reports the runs. A granule with no memory at either
//!    IPA (past RAM) cannot become RAM: `SUCCESS` + `REJECT` with x1 = base
//!    (no progress, no endless loop). Bad inputs (unaligned, empty, top past
//!    the shared bit, RIPAS 2/3, unknown flags) are `ERROR_INPUT`.
//! 4. **Measurements.** `MEASUREMENT_READ(0)` (the RIM) is non-zero; REM 1
//!    starts at zero; `EXTEND(1, "hello")` gives SHA-256(zeros || "hello");
//!    index 0 and 5, and size 65, are `ERROR_INPUT`.
//! 5. **Attestation.** `CONTINUE` before `INIT` is `ERROR_STATE`; `INIT`
//!    with a 64-byte challenge gives the token size; `CONTINUE` in 400-byte
//!    steps (`INCOMPLETE` until the last) into a protected granule writes a
//!    CCA token (CBOR tag 399) of exactly that size, carrying the challenge;
//!    a shared granule is `ERROR_INPUT`. The guest prints
//!    **`GUEST-CCA-TOKEN <hex>`** lines (256 bytes each, in order) and
//!    **`GUEST-CCA-CHALLENGE <hex>`**.
//!
//! Expected exits: `EXIT_MMIO` (console and the alias after step 3),
//! `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::fmt;

use rampart_guest::abi::{GRANULE, GUEST_RAM_BASE};
use rampart_guest::rampart_abi::rsi::{self, RsiCall, change_flags, response, ripas, status};
use rampart_guest::{arch, hvc, println, realm, report};
use sha2::{Digest, Sha256};

rampart_guest::entry!(main);

/// What the guest keeps in the granule it then gives up.
const SECRET: &[u8; 32] = b"realm secret: never the host's! ";
/// What the guest writes into the shared page for the host.
pub const SHARED_MARK: &[u8; 32] = b"rampart realm shared page v1 ::)";
/// What the test host writes back at offset 2048 of the shared page.
pub const HOST_MARK: u64 = 0x686f_7374_2077_6173;
/// CONTINUE asks for this many bytes at a time (the token is ~950 bytes:
/// several calls, INCOMPLETE until the last).
const STEP: u64 = 400;
/// The challenge's first 32 bytes.
const CHALLENGE_PREFIX: &[u8; 32] = b"rampart realm challenge v1 :: ::";

fn smc(call: RsiCall, args: &[u64]) -> [u64; 18] {
    let mut all = [0u64; 17];
    all[..args.len()].copy_from_slice(args);
    smccc::smc64(call.id(), all)
}

/// Hex of bytes in free guest RAM.
struct RamHex {
    at: u64,
    len: u64,
}

impl fmt::Display for RamHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in self.at..self.at + self.len {
            write!(f, "{:02x}", arch::ram_read_u8(a))?;
        }
        Ok(())
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn write_bytes(at: u64, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        arch::ram_write_u64(at + 8 * i as u64, word);
    }
}

fn main(_ram_size: u64) {
    if !realm() {
        report::fail(
            "realm",
            format_args!("not a realm VM: RSI_VERSION over SMC failed"),
        );
        return;
    }
    let (start, end) = arch::free_ram();
    let first = start.next_multiple_of(GRANULE);
    // config, token, two to share, and the token copy (2 granules).
    let [config, token_page, secret, secret2, copy] =
        core::array::from_fn(|i| first + i as u64 * GRANULE);
    if copy + 2 * GRANULE > end {
        report::fail(
            "realm",
            format_args!("no 6 free granules in {start:#x}..{end:#x}"),
        );
        return;
    }
    conduit();
    let Some(ipa_bits) = realm_config(config, end) else {
        return;
    };
    let shared = 1u64 << (ipa_bits - 1);
    ripas_changes(secret, secret2, end, shared);
    measurements();
    attestation(token_page, copy, secret | shared);
}

fn conduit() {
    let v = smc(RsiCall::Version, &[rsi::VERSION_1_0]);
    report::check(
        "rsi-version",
        v[0] == status::SUCCESS && v[1] == rsi::VERSION_1_0 && v[2] == rsi::VERSION_1_0,
        format_args!("RSI_VERSION(1.0) = {:#x} {:#x} {:#x}", v[0], v[1], v[2]),
    );
    let v2 = smc(RsiCall::Version, &[2 << 16]);
    report::check(
        "rsi-version-2.0",
        v2[0] == status::ERROR_INPUT && v2[1] == rsi::VERSION_1_0,
        format_args!("RSI_VERSION(2.0) = {:#x} {:#x}", v2[0], v2[1]),
    );
    // PSCI through SMC (the guest library's conduit in a realm).
    let psci = hvc::psci::version();
    report::check(
        "realm-psci-smc",
        psci == 0x1_0001,
        format_args!("PSCI_VERSION over SMC = {psci:#x}"),
    );
    // Linux finds RSI only on a conduit with SMCCC >= 1.1, which it learns
    // only if PSCI_FEATURES says SMCCC_VERSION is there (psci_init_smccc).
    let smccc_feature = smccc::smc64(0x8400_000A, {
        let mut a = [0; 17];
        a[0] = 0x8000_0000;
        a
    });
    let smccc_version = smccc::smc64(0x8000_0000, [0; 17]);
    report::check(
        "realm-smccc-discoverable",
        smccc_feature[0] == 0 && smccc_version[0] >= 0x1_0001,
        format_args!(
            "PSCI_FEATURES(SMCCC_VERSION) = {:#x}, SMCCC_VERSION = {:#x}",
            smccc_feature[0], smccc_version[0]
        ),
    );
    let kvm = smccc::smc64(rampart_guest::abi::GuestCall::KvmFeatures.id(), [0; 17]);
    report::check(
        "realm-no-kvm-calls",
        kvm[0] == u64::MAX,
        format_args!("KVM_FEATURES over SMC = {:#x}, want NOT_SUPPORTED", kvm[0]),
    );
    let by_hvc = smccc::hvc64(
        RsiCall::Version.id(),
        [
            rsi::VERSION_1_0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ],
    );
    let psci_hvc = smccc::hvc64(0x8400_0000, [0; 17]);
    report::check(
        "realm-no-hvc",
        by_hvc[0] == u64::MAX && psci_hvc[0] == u64::MAX,
        format_args!(
            "RSI_VERSION over HVC = {:#x}, PSCI_VERSION over HVC = {:#x}",
            by_hvc[0], psci_hvc[0]
        ),
    );
    let f = smc(RsiCall::Features, &[0]);
    report::check(
        "rsi-features",
        f[0] == 0 && f[1] == 0,
        format_args!("FEATURES(0) = {:#x} {:#x}", f[0], f[1]),
    );
    let h = smc(RsiCall::HostCall, &[0]);
    report::check(
        "rsi-host-call",
        h[0] == u64::MAX,
        format_args!("HOST_CALL = {:#x}", h[0]),
    );
    let unknown = smccc::smc64(rsi::RSI_BASE + 0xA, [0; 17]);
    report::check(
        "rsi-unknown",
        unknown[0] == u64::MAX,
        format_args!("RSI id 0x19A = {:#x}", unknown[0]),
    );
}

fn realm_config(page: u64, ram_end: u64) -> Option<u32> {
    for a in (page..page + GRANULE).step_by(8) {
        arch::ram_write_u64(a, u64::MAX);
    }
    let r = smc(RsiCall::RealmConfig, &[page]);
    let ipa_bits = arch::ram_read_u64(page + rsi::realm_config::IPA_BITS as u64);
    let hash = arch::ram_read_u64(page + rsi::realm_config::HASH_ALGO as u64);
    let rest_zero = (page + 16..page + GRANULE)
        .step_by(8)
        .all(|a| arch::ram_read_u64(a) == 0);
    let ok = r[0] == status::SUCCESS
        && (32..=52).contains(&ipa_bits)
        && (1u64 << (ipa_bits - 1)) >= ram_end
        && hash == rsi::realm_config::HASH_SHA256
        && rest_zero;
    report::check(
        "rsi-realm-config",
        ok,
        format_args!(
            "REALM_CONFIG = {:#x}: ipa_bits {ipa_bits}, hash {hash}, rest zero {rest_zero}",
            r[0]
        ),
    );
    if !ok {
        return None;
    }
    let shared = 1u64 << (ipa_bits - 1);
    let bad = [
        page + 8,
        ram_end,
        ram_end + GRANULE,
        page | shared,
        0,
        !0xfff,
    ];
    let refused = bad
        .iter()
        .all(|&a| smc(RsiCall::RealmConfig, &[a])[0] == status::ERROR_INPUT);
    report::check(
        "rsi-realm-config-bad",
        refused,
        format_args!("a bad REALM_CONFIG address was accepted"),
    );
    #[allow(clippy::cast_possible_truncation, reason = "checked to be 32..=52")]
    Some(ipa_bits as u32)
}

fn state_get(base: u64, top: u64) -> [u64; 18] {
    smc(RsiCall::IpaStateGet, &[base, top])
}

fn state_set(base: u64, top: u64, ripas: u64, flags: u64) -> [u64; 18] {
    smc(RsiCall::IpaStateSet, &[base, top, ripas, flags])
}

fn ripas_changes(secret: u64, secret2: u64, ram_end: u64, shared: u64) {
    // All of RAM is RAM.
    let g = state_get(GUEST_RAM_BASE, ram_end);
    report::check(
        "rsi-ipa-state-get-ram",
        g[0] == status::SUCCESS && g[2] == ripas::RAM && g[1] > GUEST_RAM_BASE && g[1] <= ram_end,
        format_args!(
            "IPA_STATE_GET(RAM) = {:#x} top {:#x} ripas {}",
            g[0], g[1], g[2]
        ),
    );
    let past = state_get(ram_end, ram_end + 4 * GRANULE);
    report::check(
        "rsi-ipa-state-get-past-ram",
        past[0] == status::SUCCESS && past[2] == ripas::EMPTY && past[1] == ram_end + 4 * GRANULE,
        format_args!(
            "IPA_STATE_GET(past RAM) = {:#x} top {:#x} ripas {}",
            past[0], past[1], past[2]
        ),
    );
    for page in [secret, secret2] {
        for a in (page..page + GRANULE).step_by(32) {
            write_bytes(a, SECRET);
        }
    }
    let s = state_set(
        secret,
        secret2 + GRANULE,
        ripas::EMPTY,
        change_flags::CHANGE_DESTROYED,
    );
    report::check(
        "rsi-ipa-state-set-empty",
        s[0] == status::SUCCESS && s[1] == secret2 + GRANULE && s[2] == response::ACCEPT,
        format_args!(
            "IPA_STATE_SET(EMPTY) = {:#x} x1 {:#x} response {}",
            s[0], s[1], s[2]
        ),
    );
    let g = state_get(secret, ram_end);
    report::check(
        "rsi-ipa-state-get-empty",
        g[0] == status::SUCCESS && g[1] == secret2 + GRANULE && g[2] == ripas::EMPTY,
        format_args!(
            "IPA_STATE_GET(shared) = {:#x} top {:#x} ripas {}",
            g[0], g[1], g[2]
        ),
    );
    // Again: nothing to do, still progress.
    let again = state_set(secret, secret + GRANULE, ripas::EMPTY, 0);
    report::check(
        "rsi-ipa-state-set-empty-again",
        again[0] == status::SUCCESS && again[1] == secret + GRANULE && again[2] == response::ACCEPT,
        format_args!(
            "IPA_STATE_SET(EMPTY) of an EMPTY granule = {:#x} x1 {:#x} response {}",
            again[0], again[1], again[2]
        ),
    );
    let alias = secret | shared;
    let zeroed = (alias..alias + GRANULE)
        .step_by(8)
        .all(|a| arch::probe_read(a) == Ok(0));
    report::check(
        "rsi-shared-zeroed",
        zeroed,
        format_args!("the granule's alias does not read as zeroes"),
    );
    for (i, chunk) in SHARED_MARK.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let _ = arch::probe_write(alias + 8 * i as u64, word);
    }
    // The test host reads the page now, and writes HOST_MARK at 2048.
    println!("GUEST-REALM-SHARED {secret:x}");
    let seen = arch::probe_read(alias + 2048);
    report::check(
        "rsi-shared-host-write",
        seen == Ok(HOST_MARK),
        format_args!("the host's write is not in the shared page: {seen:x?}"),
    );
    let back = state_set(secret, secret + GRANULE, ripas::RAM, 0);
    report::check(
        "rsi-ipa-state-set-ram",
        back[0] == status::SUCCESS && back[1] == secret + GRANULE && back[2] == response::ACCEPT,
        format_args!(
            "IPA_STATE_SET(RAM) = {:#x} x1 {:#x} response {}",
            back[0], back[1], back[2]
        ),
    );
    let clean = (secret..secret + GRANULE)
        .step_by(8)
        .all(|a| arch::ram_read_u64(a) == 0);
    report::check(
        "rsi-private-zeroed",
        clean,
        format_args!("the granule back in RAM is not all zero"),
    );
    let g = state_get(secret, secret2 + GRANULE);
    report::check(
        "rsi-ipa-state-get-mixed",
        g[0] == status::SUCCESS && g[1] == secret + GRANULE && g[2] == ripas::RAM,
        format_args!(
            "IPA_STATE_GET after RAM = {:#x} top {:#x} ripas {}",
            g[0], g[1], g[2]
        ),
    );
    // The alias of a RAM granule is not memory any more: a memory fault the
    // test host's VMM declines, so the guest takes an abort.
    let gone = arch::probe_read(alias);
    report::check(
        "rsi-alias-gone",
        gone.is_err(),
        format_args!("the alias of a RAM granule still reads: {gone:x?}"),
    );
    // No memory past RAM: the change is rejected, x1 does not move.
    let none = state_set(ram_end, ram_end + GRANULE, ripas::RAM, 0);
    report::check(
        "rsi-ipa-state-set-reject",
        none[0] == status::SUCCESS && none[1] == ram_end && none[2] == response::REJECT,
        format_args!(
            "IPA_STATE_SET(RAM) past RAM = {:#x} x1 {:#x} response {}",
            none[0], none[1], none[2]
        ),
    );
    let bad: [[u64; 4]; 7] = [
        [secret + 8, secret + GRANULE, ripas::EMPTY, 0],
        [secret, secret, ripas::EMPTY, 0],
        [secret + GRANULE, secret, ripas::EMPTY, 0],
        [secret, shared + GRANULE, ripas::EMPTY, 0],
        [secret, secret + GRANULE, ripas::DESTROYED, 0],
        [secret, secret + GRANULE, ripas::DEV, 0],
        [secret, secret + GRANULE, ripas::EMPTY, 2],
    ];
    let refused = bad
        .iter()
        .all(|b| state_set(b[0], b[1], b[2], b[3])[0] == status::ERROR_INPUT)
        && state_get(secret, secret)[0] == status::ERROR_INPUT
        && state_get(secret | shared, (secret | shared) + GRANULE)[0] == status::ERROR_INPUT;
    report::check(
        "rsi-ipa-state-bad",
        refused,
        format_args!("a bad IPA_STATE_SET/GET was accepted"),
    );
    // secret2 stays EMPTY: the VM is destroyed with a shared page.
}

fn words_to_bytes(words: &[u64]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, w) in words.iter().take(8).enumerate() {
        out[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn measurements() {
    let rim = smc(RsiCall::MeasurementRead, &[0]);
    let rim_bytes = words_to_bytes(&rim[1..9]);
    report::check(
        "rsi-measurement-rim",
        rim[0] == status::SUCCESS && rim_bytes[..32] != [0; 32] && rim_bytes[32..] == [0; 32],
        format_args!("MEASUREMENT_READ(0) = {:#x} {}", rim[0], Hex(&rim_bytes)),
    );
    let rem = smc(RsiCall::MeasurementRead, &[1]);
    report::check(
        "rsi-measurement-rem-zero",
        rem[0] == status::SUCCESS && words_to_bytes(&rem[1..9]) == [0; 64],
        format_args!("MEASUREMENT_READ(1) before any extend"),
    );
    let hello = u64::from_le_bytes(*b"hello\0\0\0");
    let e = smc(RsiCall::MeasurementExtend, &[1, 5, hello]);
    let after = smc(RsiCall::MeasurementRead, &[1]);
    let mut hash = Sha256::new();
    hash.update([0u8; 32]);
    hash.update(b"hello");
    let want: [u8; 32] = hash.finalize().into();
    let got = words_to_bytes(&after[1..9]);
    report::check(
        "rsi-measurement-extend",
        e[0] == status::SUCCESS
            && after[0] == status::SUCCESS
            && got[..32] == want
            && got[32..] == [0; 32],
        format_args!("EXTEND(1, hello) = {:#x}; REM 1 = {}", e[0], Hex(&got)),
    );
    let refused = smc(RsiCall::MeasurementRead, &[5])[0] == status::ERROR_INPUT
        && smc(RsiCall::MeasurementExtend, &[0, 1, 0])[0] == status::ERROR_INPUT
        && smc(RsiCall::MeasurementExtend, &[5, 1, 0])[0] == status::ERROR_INPUT
        && smc(RsiCall::MeasurementExtend, &[2, 65, 0])[0] == status::ERROR_INPUT;
    report::check(
        "rsi-measurement-bad",
        refused,
        format_args!("a bad MEASUREMENT call was accepted"),
    );
}

fn attestation(page: u64, copy: u64, shared_alias: u64) {
    let early = smc(RsiCall::AttestationTokenContinue, &[page, 0, GRANULE]);
    report::check(
        "rsi-token-continue-first",
        early[0] == status::ERROR_STATE,
        format_args!("CONTINUE before INIT = {:#x}", early[0]),
    );
    let mut challenge = [0u8; 64];
    challenge[..32].copy_from_slice(CHALLENGE_PREFIX);
    for (i, b) in challenge[32..].iter_mut().enumerate() {
        let mixed = arch::virtual_count().wrapping_add(i as u64 * 37);
        *b = mixed.to_le_bytes()[0];
    }
    let mut args = [0u64; 8];
    for (i, w) in args.iter_mut().enumerate() {
        *w = u64::from_le_bytes(challenge[8 * i..8 * i + 8].try_into().unwrap_or_default());
    }
    let init = smc(RsiCall::AttestationTokenInit, &args);
    let size = init[1];
    if !report::check(
        "rsi-token-init",
        init[0] == status::SUCCESS && size > 0 && size <= 2 * GRANULE,
        format_args!("TOKEN_INIT = {:#x}, size {size}", init[0]),
    ) {
        return;
    }
    // Into a shared granule: refused.
    let shared = smc(
        RsiCall::AttestationTokenContinue,
        &[shared_alias, 0, GRANULE],
    );
    let bad = smc(RsiCall::AttestationTokenContinue, &[page, 4000, 200]);
    report::check(
        "rsi-token-continue-bad",
        shared[0] == status::ERROR_INPUT && bad[0] == status::ERROR_INPUT,
        format_args!(
            "CONTINUE into the alias = {:#x}, past the granule = {:#x}",
            shared[0], bad[0]
        ),
    );
    let mut got = 0u64;
    let mut calls = 0;
    let last = loop {
        let r = smc(RsiCall::AttestationTokenContinue, &[page, 0, STEP]);
        calls += 1;
        if r[0] != status::SUCCESS && r[0] != status::INCOMPLETE
            || r[1] > STEP
            || got + r[1] > 2 * GRANULE
            || calls > 20
        {
            break r[0];
        }
        for i in 0..r[1] {
            arch::ram_write_u8(copy + got + i, arch::ram_read_u8(page + i));
        }
        got += r[1];
        if r[0] == status::SUCCESS {
            break r[0];
        }
    };
    let starts = [
        arch::ram_read_u8(copy),
        arch::ram_read_u8(copy + 1),
        arch::ram_read_u8(copy + 2),
    ];
    let carries = (0..got.saturating_sub(66)).any(|at| {
        arch::ram_read_u8(copy + at) == 0x58
            && arch::ram_read_u8(copy + at + 1) == 0x40
            && challenge
                .iter()
                .enumerate()
                .all(|(i, &b)| arch::ram_read_u8(copy + at + 2 + i as u64) == b)
    });
    let ok = last == status::SUCCESS
        && got == size
        && starts == [0xd9, 0x01, 0x8f]
        && carries
        && calls > 1;
    report::check(
        "rsi-token",
        ok,
        format_args!(
            "CONTINUE ended {last:#x} after {calls} calls, {got} of {size} bytes, starts {starts:02x?}, carries the challenge {carries}"
        ),
    );
    let after = smc(RsiCall::AttestationTokenContinue, &[page, 0, GRANULE]);
    report::check(
        "rsi-token-continue-after",
        after[0] == status::ERROR_STATE,
        format_args!("CONTINUE after the whole token = {:#x}", after[0]),
    );
    if ok {
        // In 256-byte lines (the test host's console lines hold 640
        // characters); a verifier joins them in order.
        for at in (0..got).step_by(256) {
            println!("GUEST-CCA-TOKEN {}", RamHex { at: copy + at, len: (got - at).min(256) });
        }
        println!("GUEST-CCA-CHALLENGE {}", Hex(&challenge));
    }
}
