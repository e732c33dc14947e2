//! Realm guest: runs as a realm VM (`VM_CREATE` config bit 2) and checks
//! the Realm Services Interface (`rampart_abi::rsi`, RSI 1.0 over `SMC`).
//!
//! Protocol (vCPU 0 only):
//!
//! 1. **Conduit.** `RSI_VERSION(1.0)` succeeds with 1.0/1.0 (a request for
//!    2.0 is `ERROR_INPUT`); PSCI works through SMC; KVM's vendor calls
//!    through SMC and every HVC are `NOT_SUPPORTED`; `FEATURES(0)` = 0;
//!    `HOST_CALL` with a bad structure address (unaligned, the alias, past
//!    RAM) is `ERROR_INPUT` without an exit.
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
//! 6. **Host call** (issue 12). The guest fills an `RsiHostCall` at offset
//!    0x100 of its config granule: `imm` = [`HOST_CALL_IMM`] (the padding
//!    after it all ones), `gprs[i]` = `0x4843_0000 + i`, with canaries just
//!    before and after it, and calls `RSI_HOST_CALL`: an `EXIT_HOST_CALL`
//!    the test host answers (it checks `imm` and the 31 registers, and
//!    sets `gprs[i]` = `0x414e_0000 + i`, trying to reach past them too).
//!    The guest sees `SUCCESS`, exactly the host's registers, and the
//!    immediate, padding and canaries untouched.
//! 7. **Eviction** (issue 12). The guest fills a granule with a pattern and
//!    prints **`GUEST-REALM-EVICT <ipa hex>`**: the test host evicts it
//!    (`VM_EVICT`). The granule is still RAM: `IPA_STATE_GET` says RAM and
//!    `IPA_STATE_SET(EMPTY)` is `REJECT` (x1 = base). On
//!    **`GUEST-REALM-RESTORE`** the host restores it, and the guest reads
//!    its pattern back.
//!
//! 8. **Two vCPUs racing** (issue 12). The guest prints
//!    **`GUEST-REALM-RACE-PAGE <ipa hex>`** and starts vCPU 1, which
//!    hammers that granule through its protected IPA (a store of
//!    [`RACE_SECRET`] and a load, word after word, catching aborts) while
//!    vCPU 0 flips it EMPTY and back to RAM [`RACE_ROUNDS`] times. While it
//!    is EMPTY, vCPU 0 reads the alias (never the secret: zeroed on the way
//!    out) and, every 8th round, prints **`GUEST-REALM-RACE <n>`**: the test
//!    host then reads the page (never the secret) and fills it with
//!    [`RACE_HOST`]. Back in RAM, neither vCPU ever reads `RACE_HOST`
//!    (zeroed on the way in). vCPU 1's accesses to the unmapped granule are
//!    memory faults the test host declines (aborts vCPU 1 catches).
//!
//!    Then both vCPUs run `ATTESTATION_TOKEN_INIT`/`CONTINUE` at once, each
//!    with its own challenge into its own granule (vCPU 0 three times):
//!    each token is whole and carries its own vCPU's challenge.
//!
//! Expected exits: `EXIT_MMIO` (console and the alias after step 3),
//! `EXIT_HOST_CALL`, `EXIT_MEMORY_FAULT` (step 8, declined),
//! `EXIT_POWERED_OFF` (vCPU 1), `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use rampart_guest::abi::{GRANULE, GUEST_RAM_BASE, psci, vcpu_mpidr};
use rampart_guest::rampart_abi::rsi::{self, RsiCall, change_flags, response, ripas, status};
use rampart_guest::{arch, hvc, println, realm, report, wait_until};
use sha2::{Digest, Sha256};

rampart_guest::entry!(main, secondary);

/// What the guest keeps in the granule it then gives up.
const SECRET: &[u8; 32] = b"realm secret: never the host's! ";
/// What the guest writes into the shared page for the host.
pub const SHARED_MARK: &[u8; 32] = b"rampart realm shared page v1 ::)";
/// What the test host writes back at offset 2048 of the shared page.
pub const HOST_MARK: u64 = 0x686f_7374_2077_6173;
/// CONTINUE asks for this many bytes at a time (the token is ~950 bytes:
/// several calls, INCOMPLETE until the last).
const STEP: u64 = 400;
/// The immediate of the guest's `RSI_HOST_CALL` (the test host expects it).
pub const HOST_CALL_IMM: u64 = 0x5a17;
/// What the guest passes in `gprs[i]` (+ i).
pub const HOST_CALL_IN: u64 = 0x4843_0000;
/// What the test host answers in `gprs[i]` (+ i).
pub const HOST_CALL_OUT: u64 = 0x414e_0000;
/// The canaries around the structure.
const CANARY: u64 = 0xc0ff_ee00_5afe_0001;
/// The evicted granule's pattern at word `i` (address `a`).
fn evict_pattern(a: u64) -> u64 {
    a ^ 0x6576_6963_7465_6421
}

/// What vCPU 1 stores in the racing granule (step 8).
pub const RACE_SECRET: u64 = 0x7365_6372_6574_2121;
/// What the test host writes into it while it is shared (step 8).
pub const RACE_HOST: u64 = 0x686f_7374_6461_7461;
/// RAM -> EMPTY -> RAM flips of step 8.
pub const RACE_ROUNDS: u64 = 64;
/// The racing granule (0 until step 8).
static RACE_PAGE: AtomicU64 = AtomicU64::new(0);
static RACE_STOP: AtomicU64 = AtomicU64::new(0);
static RACE_DONE: AtomicU64 = AtomicU64::new(0);
/// vCPU 1's accesses that completed, that aborted, and loads of RACE_HOST.
static RACE_OK: AtomicU64 = AtomicU64::new(0);
static RACE_FAULTS: AtomicU64 = AtomicU64::new(0);
static RACE_CROSSED: AtomicU64 = AtomicU64::new(0);

/// vCPU 1 (step 8): hammers the racing granule until told to stop.
fn secondary(index: usize) {
    let page = RACE_PAGE.load(Ordering::SeqCst);
    if index != 1 || page == 0 {
        return;
    }
    let mut k = 0u64;
    while RACE_STOP.load(Ordering::SeqCst) == 0 {
        let at = page + 8 * (k % (GRANULE / 8));
        let counter = match arch::probe_write_free(at, RACE_SECRET) {
            Ok(()) => &RACE_OK,
            Err(_) => &RACE_FAULTS,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        match arch::probe_read_free(at) {
            Ok(v) => {
                if v == RACE_HOST {
                    RACE_CROSSED.fetch_add(1, Ordering::SeqCst);
                }
                RACE_OK.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                RACE_FAULTS.fetch_add(1, Ordering::SeqCst);
            }
        }
        k += 1;
        if k % 16 == 0 {
            // An exit to the host now and then: on a machine where both
            // vCPUs share one physical CPU, the host can run vCPU 0 only
            // when this one exits (its loop otherwise never traps).
            arch::uart_flags();
        }
    }
    RACE_DONE.store(1, Ordering::SeqCst);
    // Then a token of its own while vCPU 0 makes its own.
    if wait_until(10_000, || TOKEN_GO.load(Ordering::SeqCst) != 0) {
        let (status, len, own) = token_into(page, challenge_of(1));
        let ok = status == status::SUCCESS && len > 0 && own;
        TOKEN_DONE.store(VALID | u64::from(ok) | len << 1, Ordering::SeqCst);
    }
}

/// Set in `TOKEN_DONE` once written.
const VALID: u64 = 1 << 63;
/// vCPU 0 lets vCPU 1 start its token; vCPU 1's result (`VALID | len << 1
/// | ok`).
static TOKEN_GO: AtomicU64 = AtomicU64::new(0);
static TOKEN_DONE: AtomicU64 = AtomicU64::new(0);

/// vCPU `index`'s challenge in step 8 (every word names it).
fn challenge_of(index: u64) -> [u64; 8] {
    core::array::from_fn(|i| 0x7663_7075_0000_0000 | index << 16 | i as u64)
}

/// `ATTESTATION_TOKEN_INIT(challenge)`, then `CONTINUE` into `page` (from
/// offset 0 on) until done: `(last status, bytes, whether the token carries
/// exactly this challenge)`.
fn token_into(page: u64, challenge: [u64; 8]) -> (u64, u64, bool) {
    let init = smc(RsiCall::AttestationTokenInit, &challenge);
    if init[0] != status::SUCCESS || init[1] == 0 || init[1] > GRANULE {
        return (init[0], 0, false);
    }
    let mut got = 0u64;
    let mut last = status::INCOMPLETE;
    for _ in 0..20 {
        let r = smc(RsiCall::AttestationTokenContinue, &[page, got, STEP.min(GRANULE - got)]);
        last = r[0];
        if (r[0] != status::SUCCESS && r[0] != status::INCOMPLETE) || r[1] > STEP {
            break;
        }
        got += r[1];
        if r[0] == status::SUCCESS || got >= GRANULE {
            break;
        }
    }
    let mut bytes = [0u8; 64];
    for (i, w) in challenge.iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    let carries = (0..got.saturating_sub(66)).any(|at| {
        arch::ram_read_u8(page + at) == 0x58
            && arch::ram_read_u8(page + at + 1) == 0x40
            && bytes
                .iter()
                .enumerate()
                .all(|(i, &b)| arch::ram_read_u8(page + at + 2 + i as u64) == b)
    });
    (last, got, carries && got == init[1])
}

/// Step 8: vCPU 0 flips the granule while vCPU 1 hammers it.
fn race(page: u64, shared: u64, token_page: u64) {
    println!("GUEST-REALM-RACE-PAGE {page:x}");
    RACE_PAGE.store(page, Ordering::SeqCst);
    let on = hvc::psci::cpu_on(vcpu_mpidr(1), arch::secondary_entry_address(), 1);
    let started = on == psci::SUCCESS && wait_until(10_000, || RACE_OK.load(Ordering::SeqCst) > 0);
    if !report::check(
        "rsi-race-start",
        started,
        format_args!("CPU_ON(vCPU 1) = {on}; vCPU 1 made no access"),
    ) {
        RACE_STOP.store(1, Ordering::SeqCst);
        return;
    }
    let alias = page | shared;
    let (mut bad_calls, mut secret_shared, mut host_private) = (0u64, 0u64, 0u64);
    for round in 0..RACE_ROUNDS {
        let e = state_set(page, page + GRANULE, ripas::EMPTY, 0);
        if e[0] != status::SUCCESS || e[1] != page + GRANULE || e[2] != response::ACCEPT {
            bad_calls += 1;
        }
        for at in (alias..alias + GRANULE).step_by(8) {
            if arch::probe_read(at) == Ok(RACE_SECRET) {
                secret_shared += 1;
            }
        }
        if round % 8 == 0 {
            // The test host reads the shared page and writes RACE_HOST.
            println!("GUEST-REALM-RACE {round}");
        }
        let r = state_set(page, page + GRANULE, ripas::RAM, 0);
        if r[0] != status::SUCCESS || r[1] != page + GRANULE || r[2] != response::ACCEPT {
            bad_calls += 1;
        }
        for at in (page..page + GRANULE).step_by(8) {
            if arch::probe_read_free(at) == Ok(RACE_HOST) {
                host_private += 1;
            }
        }
    }
    RACE_STOP.store(1, Ordering::SeqCst);
    let stopped = wait_until(10_000, || RACE_DONE.load(Ordering::SeqCst) != 0);
    let (ok, faults, crossed) = (
        RACE_OK.load(Ordering::SeqCst),
        RACE_FAULTS.load(Ordering::SeqCst),
        RACE_CROSSED.load(Ordering::SeqCst),
    );
    // INIT and CONTINUE on both vCPUs at once: each gets its own token.
    TOKEN_GO.store(1, Ordering::SeqCst);
    let mut mine = 0;
    for _ in 0..3 {
        let (st, len, own) = token_into(token_page, challenge_of(0));
        if st == status::SUCCESS && len > 0 && own {
            mine += 1;
        }
    }
    let theirs = wait_until(10_000, || TOKEN_DONE.load(Ordering::SeqCst) != 0)
        .then(|| TOKEN_DONE.load(Ordering::SeqCst));
    report::check(
        "rsi-race-tokens",
        mine == 3 && theirs.is_some_and(|t| t & 1 == 1),
        format_args!("vCPU 0 got its own token {mine} of 3 times; vCPU 1: {theirs:x?}"),
    );
    report::check(
        "rsi-race",
        stopped && bad_calls == 0 && secret_shared == 0 && host_private == 0 && crossed == 0,
        format_args!(
            "{RACE_ROUNDS} flips: {bad_calls} bad RIPAS answers, the secret seen shared {secret_shared} times, host data seen private {host_private} times by vCPU 0 and {crossed} by vCPU 1; vCPU 1: {ok} accesses, {faults} aborts, stopped {stopped}"
        ),
    );
}

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
    // config, token, two to share, the token copy (2 granules), and one
    // the host evicts.
    let [config, token_page, secret, secret2, copy] =
        core::array::from_fn(|i| first + i as u64 * GRANULE);
    let evict = copy + 2 * GRANULE;
    let racing = evict + GRANULE;
    if racing + GRANULE > end {
        report::fail(
            "realm",
            format_args!("no 8 free granules in {start:#x}..{end:#x}"),
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
    host_call(config, end, shared);
    evicted(evict);
    race(racing, shared, token_page);
}

/// Step 6: `RSI_HOST_CALL` answered by the test host.
fn host_call(page: u64, ram_end: u64, shared: u64) {
    let structure = page + 0x100;
    let size = rsi::host_call::SIZE as u64;
    arch::ram_write_u64(structure - 8, CANARY);
    arch::ram_write_u64(structure + size, CANARY);
    // imm in the low 16 bits, the padding after it all ones.
    let first_word = !0xffff | HOST_CALL_IMM;
    arch::ram_write_u64(structure, first_word);
    for i in 0..rsi::host_call::GPRS as u64 {
        arch::ram_write_u64(structure + 8 + 8 * i, HOST_CALL_IN + i);
    }
    // Bad addresses: refused without an exit (the test host would fail an
    // unexpected one).
    let refused = [structure + 8, structure | shared, ram_end, ram_end + 0x100]
        .iter()
        .all(|&a| smc(RsiCall::HostCall, &[a])[0] == status::ERROR_INPUT);
    report::check(
        "rsi-host-call-bad",
        refused,
        format_args!("RSI_HOST_CALL with a bad address was not ERROR_INPUT"),
    );
    let r = smc(RsiCall::HostCall, &[structure]);
    let answered = (0..rsi::host_call::GPRS as u64)
        .all(|i| arch::ram_read_u64(structure + 8 + 8 * i) == HOST_CALL_OUT + i);
    let untouched = arch::ram_read_u64(structure) == first_word
        && arch::ram_read_u64(structure - 8) == CANARY
        && arch::ram_read_u64(structure + size) == CANARY;
    report::check(
        "rsi-host-call",
        r[0] == status::SUCCESS && answered && untouched,
        format_args!(
            "RSI_HOST_CALL = {:#x}; the host's registers {answered}; imm, padding and canaries untouched {untouched} (gprs[0] {:#x}, after {:#x})",
            r[0],
            arch::ram_read_u64(structure + 8),
            arch::ram_read_u64(structure + size)
        ),
    );
}

/// Step 7: a granule the host evicted is still RAM.
fn evicted(page: u64) {
    for a in (page..page + GRANULE).step_by(8) {
        arch::ram_write_u64(a, evict_pattern(a));
    }
    println!("GUEST-REALM-EVICT {page:x}");
    let g = state_get(page, page + GRANULE);
    report::check(
        "rsi-evicted-is-ram",
        g[0] == status::SUCCESS && g[1] == page + GRANULE && g[2] == ripas::RAM,
        format_args!(
            "IPA_STATE_GET of an evicted granule = {:#x} top {:#x} ripas {}",
            g[0], g[1], g[2]
        ),
    );
    let s = state_set(page, page + GRANULE, ripas::EMPTY, 0);
    report::check(
        "rsi-evicted-stays-ram",
        s[0] == status::SUCCESS && s[1] == page && s[2] == response::REJECT,
        format_args!(
            "IPA_STATE_SET(EMPTY) of an evicted granule = {:#x} x1 {:#x} response {}",
            s[0], s[1], s[2]
        ),
    );
    println!("GUEST-REALM-RESTORE");
    let intact = (page..page + GRANULE)
        .step_by(8)
        .all(|a| arch::ram_read_u64(a) == evict_pattern(a));
    report::check(
        "rsi-evicted-restored",
        intact,
        format_args!("the restored granule does not hold the guest's pattern"),
    );
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
