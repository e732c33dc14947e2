//! The `rampart` binary end to end, on the fixture files in
//! `tests/fixtures` (good and broken bundles, keys, reports).
//!
//! The fixtures are generated deterministically from `rampart-attest` and
//! fixed seeds; `fixtures_are_current` fails if the formats drift from them.
//! Regenerate with `RAMPART_BLESS=1 cargo test -p rampart --test cli`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, KeypairBytes};
use rampart_attest::test_fixtures::minimal_fdt as fdt;
use rampart_attest::{
    Bundle, Claims, DeviceSecret, Manifest, Measurement, SigningKey, VmFlags, build_report,
    measure_image,
};

const NONCE: &str = "00112233445566778899aabbccddeeff";
const DEVICE_SECRET: [u8; 32] = [0x5a; 32];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> String {
    fixture_dir().join(name).display().to_string()
}

fn signer() -> SigningKey {
    SigningKey::from_bytes(&core::array::from_fn(|i| u8::try_from(i).unwrap()))
}

fn other() -> SigningKey {
    SigningKey::from_bytes(&[0xee; 32])
}

fn manifest() -> Manifest {
    Manifest {
        memory_size: 0x4000,
        vcpus: 2,
        entry_offset: 4,
        flags: VmFlags {
            protected: true,
            debug: false,
            realm: false,
        },
    }
}

fn image() -> Vec<u8> {
    (0..300u32).map(|i| (i * 13 + 7).to_le_bytes()[0]).collect()
}

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0x01;
    bytes
}

fn private_pem(key: &SigningKey) -> Vec<u8> {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .unwrap()
    .as_bytes()
    .to_vec()
}

fn public_pem(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
        .into_bytes()
}

fn report_claims(measurement: Measurement) -> Vec<u8> {
    let nonce: Vec<u8> = (0..16).map(|i| i * 0x11).collect();
    build_report(
        &Claims {
            measurement,
            nonce: &nonce,
            hypervisor_version: "rampart 0.1.0",
            hypervisor_measurement: Measurement([0x11; 32]),
            flags: manifest().flags,
        },
        &DeviceSecret::from_bytes(&DEVICE_SECRET).attestation_key(),
    )
    .unwrap()
}

/// Every fixture: name and contents.
fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let good = Bundle::build(&manifest(), &image(), &signer()).unwrap();
    let measurement = measure_image(&manifest(), &image()).unwrap();
    let report = report_claims(measurement);
    let attestation = DeviceSecret::from_bytes(&DEVICE_SECRET)
        .attestation_key()
        .public_key();
    let mut vcpus9 = good.clone();
    vcpus9[16] = 9;
    // Version 2 is a Linux bundle (issue 12): 3 is the first unknown one.
    let mut version3 = good.clone();
    version3[8] = 3;
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    vec![
        ("signer.pem", private_pem(&signer())),
        ("signer.pem.pub", public_pem(&signer())),
        ("other.pem.pub", public_pem(&other())),
        (
            "signer.hex",
            format!("{}\n", hex(signer().verifying_key().as_bytes())).into_bytes(),
        ),
        ("not-a-key.pem", b"hello, I am not a key\n".to_vec()),
        ("image.bin", image()),
        ("good.bundle", good.clone()),
        (
            "other-signer.bundle",
            Bundle::build(&manifest(), &image(), &other()).unwrap(),
        ),
        (
            "unsigned.bundle",
            Bundle::build_unsigned(&manifest(), &image()).unwrap(),
        ),
        ("truncated.bundle", good[..200].to_vec()),
        ("truncated-header.bundle", good[..100].to_vec()),
        ("trailing.bundle", trailing),
        ("bad-magic.bundle", flip(good.clone(), 0)),
        ("version3.bundle", version3),
        ("flipped-image.bundle", flip(good.clone(), 176 + 100)),
        // vCPUs 2 -> 3: still in range, so only the measurement catches it.
        ("flipped-manifest.bundle", flip(good.clone(), 16)),
        ("vcpus-out-of-range.bundle", vcpus9),
        ("flipped-measurement.bundle", flip(good.clone(), 48 + 5)),
        ("flipped-signature.bundle", flip(good.clone(), 112 + 10)),
        ("flipped-signer.bundle", flip(good.clone(), 80 + 3)),
        (
            "attestation.pub",
            format!("{}\n", hex(attestation.as_bytes())).into_bytes(),
        ),
        ("report.cbor", report.clone()),
        (
            "report-truncated.cbor",
            report[..report.len() - 10].to_vec(),
        ),
        ("report-flipped.cbor", flip(report.clone(), 60)),
        ("measurement.txt", format!("{measurement}\n").into_bytes()),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn fixtures_are_current() {
    let bless = std::env::var_os("RAMPART_BLESS").is_some();
    for (name, contents) in fixtures() {
        let path = fixture_dir().join(name);
        if bless {
            std::fs::create_dir_all(fixture_dir()).unwrap();
            std::fs::write(&path, &contents).unwrap();
        } else {
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run with RAMPART_BLESS=1)", path.display()));
            assert!(
                on_disk == contents,
                "{name} differs from what the code makes: the format changed? (RAMPART_BLESS=1 regenerates)"
            );
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn rampart(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .output()
        .expect("running rampart");
    Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

#[track_caller]
fn expect(args: &[&str], code: i32, message: &str) -> Run {
    let run = rampart(args);
    assert_eq!(
        run.code, code,
        "rampart {args:?}\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains(message),
        "rampart {args:?}: expected {message:?} in\n{all}"
    );
    run
}

fn verify(bundle: &str, code: i32, message: &str) -> Run {
    expect(
        &[
            "verify",
            &fixture(bundle),
            "--key",
            &fixture("signer.pem.pub"),
        ],
        code,
        message,
    )
}

#[test]
fn verify_accepts_a_good_bundle() {
    let run = verify("good.bundle", 0, "good.bundle: OK");
    let measurement = measure_image(&manifest(), &image()).unwrap().to_string();
    assert!(run.stdout.contains(&measurement));
    assert!(run.stdout.contains("signer.pem.pub"));
    // Several trusted keys, hex key files, the --trusted spelling.
    expect(
        &[
            "verify",
            &fixture("good.bundle"),
            "--trusted",
            &fixture("other.pem.pub"),
            "--key",
            &fixture("signer.hex"),
        ],
        0,
        "OK",
    );
}

#[test]
fn verify_names_each_failure() {
    verify(
        "unsigned.bundle",
        4,
        "unsigned.bundle: not signed: the signature (offset 112) is all zeros",
    );
    verify(
        "other-signer.bundle",
        4,
        "which is not a trusted key (trusted: ",
    );
    expect(
        &[
            "verify",
            &fixture("good.bundle"),
            "--key",
            &fixture("other.pem.pub"),
        ],
        4,
        &format!(
            "good.bundle: signed by {}, which is not a trusted key",
            hex(signer().verifying_key().as_bytes())
        ),
    );
    verify(
        "flipped-image.bundle",
        4,
        "flipped-image.bundle: measurement does not match the image and manifest",
    );
    verify(
        "flipped-manifest.bundle",
        4,
        "flipped-manifest.bundle: measurement does not match the image and manifest",
    );
    // The signature covers the declared measurement and is checked first.
    verify(
        "flipped-measurement.bundle",
        4,
        "flipped-measurement.bundle: bad signature (offset 112)",
    );
    verify(
        "flipped-signature.bundle",
        4,
        "flipped-signature.bundle: bad signature (offset 112)",
    );
    verify(
        "flipped-signer.bundle",
        4,
        "flipped-signer.bundle: signed by",
    );
    verify(
        "vcpus-out-of-range.bundle",
        3,
        "vcpus-out-of-range.bundle: manifest field vcpus at offset 16: vcpus is 9, expected 1 to 8",
    );
    verify(
        "truncated.bundle",
        3,
        "truncated.bundle: truncated: expected 476 bytes, got 200",
    );
    verify(
        "truncated-header.bundle",
        3,
        "truncated-header.bundle: truncated: expected 176 bytes, got 100",
    );
    verify(
        "trailing.bundle",
        3,
        "image length mismatch: the header (offset 40) declares a 300-byte image but 304 bytes follow the header",
    );
    verify(
        "bad-magic.bundle",
        3,
        "bad-magic.bundle: not a Rampart bundle: bad magic at offset 0",
    );
    verify(
        "image.bin",
        3,
        "image.bin: not a Rampart bundle: bad magic at offset 0",
    );
    verify(
        "version3.bundle",
        3,
        "version3.bundle: unsupported bundle format version 3 at offset 8",
    );
    verify("no-such.bundle", 1, "no-such.bundle: cannot read");
}

#[test]
fn verify_rejects_bad_key_files() {
    for (key, code, message) in [
        (
            "signer.pem",
            3,
            "signer.pem: this is a private key; give the public key",
        ),
        ("not-a-key.pem", 3, "not-a-key.pem: not a public key file"),
        ("image.bin", 3, "image.bin: not a key file: not text"),
        ("no-such.pub", 1, "no-such.pub: cannot read"),
    ] {
        expect(
            &["verify", &fixture("good.bundle"), "--key", &fixture(key)],
            code,
            message,
        );
    }
    expect(&["verify", &fixture("good.bundle")], 2, "--key <KEY.pub>");
}

#[test]
fn inspect_prints_the_manifest() {
    let run = expect(&["inspect", &fixture("good.bundle")], 0, "vcpus         2");
    let measurement = measure_image(&manifest(), &image()).unwrap();
    for line in [
        "flags         0x1 (protected)".to_string(),
        "memory size   0x4000 (4 pages)".into(),
        "entry offset  0x4 (vCPU 0 starts at 0x80000004, x0 = 0x4000)".into(),
        "image         300 bytes".into(),
        format!("measurement   {measurement} (matches the image and manifest)"),
        format!("signer        {}", hex(signer().verifying_key().as_bytes())),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in\n{}", run.stdout);
    }
    expect(
        &["inspect", &fixture("flipped-image.bundle")],
        0,
        "(DOES NOT MATCH the image and manifest, which give",
    );
    expect(
        &["inspect", &fixture("unsigned.bundle")],
        0,
        "signer        none (unsigned)",
    );
    expect(
        &["inspect", &fixture("truncated.bundle")],
        3,
        "truncated: expected 476 bytes, got 200",
    );
}

#[test]
fn keygen_sign_verify() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let key_s = key.to_str().unwrap();
    let public = format!("{key_s}.pub");
    expect(&["keygen", "--out", key_s], 0, "public key: ");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
    expect(
        &["keygen", "--out", key_s],
        1,
        "k.pem: already exists (use --force to overwrite)",
    );
    expect(&["keygen", "--out", key_s, "--force"], 0, "wrote");
    assert_ne!(std::fs::read_to_string(&key).unwrap(), text, "a new key");

    let bundle = dir.path().join("g.bundle");
    let bundle_s = bundle.to_str().unwrap();
    let image = fixture("image.bin");
    expect(
        &[
            "sign", "--key", key_s, "--image", &image, "--memory", "16K", "--vcpus", "2",
            "--entry", "0x4", "--out", bundle_s,
        ],
        0,
        "wrote",
    );
    // Same inputs as good.bundle except the key: same measurement.
    let signed = std::fs::read(&bundle).unwrap();
    let good = std::fs::read(fixture("good.bundle")).unwrap();
    assert_eq!(signed[..80], good[..80]);
    assert_eq!(signed[176..], good[176..]);
    expect(&["verify", bundle_s, "--key", &public], 0, "OK");
    expect(
        &["verify", bundle_s, "--key", &fixture("signer.pem.pub")],
        4,
        "not a trusted key",
    );
    expect(
        &[
            "sign", "--key", key_s, "--image", &image, "--memory", "16K", "--out", bundle_s,
        ],
        1,
        "g.bundle: already exists",
    );

    // The fixture key reproduces the fixture bundle byte for byte.
    expect(
        &[
            "sign",
            "--key",
            &fixture("signer.pem"),
            "--image",
            &image,
            "--memory",
            "0x4000",
            "--vcpus",
            "2",
            "--entry",
            "4",
            "--protected",
            "--out",
            bundle_s,
            "--force",
        ],
        0,
        "wrote",
    );
    assert_eq!(std::fs::read(&bundle).unwrap(), good);

    // Flags.
    expect(
        &[
            "sign",
            "--key",
            key_s,
            "--image",
            &image,
            "--memory",
            "16K",
            "--no-protected",
            "--debug",
            "--out",
            bundle_s,
            "--force",
        ],
        0,
        "wrote",
    );
    expect(&["inspect", bundle_s], 0, "flags         0x2 (debug)");
}

#[test]
fn sign_names_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.bundle");
    let out = out.to_str().unwrap();
    let key = fixture("signer.pem");
    let image = fixture("image.bin");
    let sign = |extra: &[&str], code: i32, message: &str| {
        let mut args = vec!["sign", "--key", &key, "--image", &image, "--out", out];
        args.extend_from_slice(extra);
        expect(&args, code, message);
    };
    sign(
        &["--memory", "100"],
        2,
        "--memory: memory size 0x64 is not a multiple of 4096",
    );
    sign(&["--memory", "0"], 2, "--memory: memory size is 0");
    sign(
        &["--memory", "lots"],
        2,
        "invalid value 'lots' for '--memory <SIZE>'",
    );
    sign(
        &["--memory", "4K", "--vcpus", "9"],
        2,
        "--vcpus: vcpus is 9, expected 1 to 8",
    );
    sign(
        &["--memory", "4K", "--entry", "2"],
        2,
        "--entry: entry offset 0x2 is not 4-byte aligned",
    );
    sign(
        &["--memory", "4K", "--entry", "300"],
        2,
        "--entry: entry offset 0x12c is outside the 300-byte image",
    );
    sign(
        &["--memory", "128G"],
        2,
        "--memory: memory size 0x2000000000 is above the maximum of 64 GiB",
    );
    sign(
        &["--memory", "4K", "--bogus"],
        2,
        "unexpected argument '--bogus'",
    );
    assert!(!Path::new(out).exists(), "nothing written on failure");

    let mut args = vec![
        "sign", "--key", "", "--image", &image, "--memory", "4K", "--out", out,
    ];
    let public = fixture("signer.pem.pub");
    args[2] = &public;
    expect(
        &args,
        3,
        "signer.pem.pub: this is a public key; signing needs the private key",
    );
    let not_a_key = fixture("not-a-key.pem");
    args[2] = &not_a_key;
    expect(
        &args,
        3,
        "not-a-key.pem: not a private key file (expected PKCS#8 PEM",
    );
    args[2] = &key;
    args[4] = "/nonexistent/image.bin";
    expect(&args, 1, "/nonexistent/image.bin: cannot read");
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let empty = empty.to_str().unwrap().to_owned();
    args[4] = &empty;
    expect(&args, 3, "--image: the image is empty");
}

fn attest(extra: &[&str], code: i32, message: &str) -> Run {
    let key = fixture("attestation.pub");
    let mut args = vec!["attest-verify", "--attestation-key", &key];
    args.extend_from_slice(extra);
    expect(&args, code, message)
}

#[test]
fn attest_verify() {
    let report = fixture("report.cbor");
    let measurement = measure_image(&manifest(), &image()).unwrap().to_string();
    let run = attest(
        &[
            "--report",
            &report,
            "--measurement",
            &measurement,
            "--nonce",
            NONCE,
        ],
        0,
        "report.cbor: OK",
    );
    for line in [
        format!("measurement            {measurement}"),
        format!("nonce                  {NONCE}"),
        "hypervisor version     rampart 0.1.0".into(),
        format!("hypervisor measurement {}", "11".repeat(32)),
        "VM flags               0x1 (protected)".into(),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in\n{}", run.stdout);
    }
    // Hex on the command line, key as hex, no measurement check.
    let bytes = std::fs::read(&report).unwrap();
    let key_hex = std::fs::read_to_string(fixture("attestation.pub")).unwrap();
    expect(
        &[
            "attest-verify",
            "--report-hex",
            &hex(&bytes),
            "--attestation-key",
            key_hex.trim(),
            "--nonce",
            NONCE,
        ],
        0,
        "(measurement not checked: no --measurement given)",
    );

    attest(
        &[
            "--report",
            &report,
            "--measurement",
            &"00".repeat(32),
            "--nonce",
            NONCE,
        ],
        4,
        &format!(
            "report.cbor: measurement mismatch: the report says {measurement}, expected {}",
            "00".repeat(32)
        ),
    );
    attest(
        &["--report", &report, "--nonce", "0011"],
        4,
        "report.cbor: nonce mismatch",
    );
    attest(
        &[
            "--report",
            &fixture("report-flipped.cbor"),
            "--nonce",
            NONCE,
        ],
        4,
        "report-flipped.cbor: bad signature",
    );
    attest(
        &[
            "--report",
            &fixture("report-truncated.cbor"),
            "--nonce",
            NONCE,
        ],
        3,
        "report-truncated.cbor: bad CBOR: malformed or truncated CBOR",
    );
    attest(
        &["--report", &fixture("good.bundle"), "--nonce", NONCE],
        3,
        "good.bundle: bad CBOR",
    );
    attest(
        &["--report", &fixture("no-such.cbor"), "--nonce", NONCE],
        1,
        "no-such.cbor: cannot read",
    );
    attest(
        &["--report", &report, "--nonce", "xyz"],
        2,
        "invalid value 'xyz' for '--nonce <HEX>'",
    );
    attest(
        &[
            "--report",
            &report,
            "--nonce",
            NONCE,
            "--measurement",
            "1234",
        ],
        2,
        "expected 32 bytes (64 hex digits), got 2 bytes",
    );
    attest(&["--nonce", NONCE], 2, "--report <REPORT>");
    // The report, but checked against another key.
    expect(
        &[
            "attest-verify",
            "--report",
            &report,
            "--attestation-key",
            &fixture("signer.pem.pub"),
            "--nonce",
            NONCE,
        ],
        4,
        "bad signature: the report was not signed by this attestation key",
    );
}

#[test]
fn attestation_key_matches_the_device_secret() {
    let expected = std::fs::read_to_string(fixture("attestation.pub")).unwrap();
    expect(
        &["attestation-key", "--device-secret", &hex(&DEVICE_SECRET)],
        0,
        &format!("attestation public key: {}", expected.trim()),
    );
    expect(
        &["attestation-key", "--device-secret", "00"],
        2,
        "--device-secret: expected 32 bytes",
    );
}

#[test]
fn help_is_self_contained() {
    let run = expect(&["--help"], 0, "Exit codes:");
    for text in [
        "keygen",
        "sign",
        "verify",
        "inspect",
        "attest-verify",
        "3  malformed input",
        "4  verification failed",
    ] {
        assert!(run.stdout.contains(text), "{text:?} in --help");
    }
    expect(&["sign", "--help"], 0, "K, M or G");
    expect(
        &["--version"],
        0,
        &format!("rampart {}", env!("CARGO_PKG_VERSION")),
    );
    expect(&["frobnicate"], 2, "unrecognized subcommand");
    expect(&[], 2, "Usage:");
}

/// `good.bundle` with its memory size field (offset 24) set to 64 GiB: 476
/// bytes whose measurement would take 64 GiB of hashing to recompute.
fn huge_bundle() -> Vec<u8> {
    let mut huge = std::fs::read(fixture("good.bundle")).unwrap();
    huge[24..32].copy_from_slice(&(64u64 << 30).to_le_bytes());
    huge
}

#[test]
fn a_small_bundle_claiming_64_gib_is_refused_before_hashing() {
    // Before the signature was checked first, each of these hashed 64 GiB of
    // zero pages (minutes in a release build, hours in a debug one) before
    // saying what was wrong.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let huge = huge_bundle();
    std::fs::write(path("huge.bundle"), &huge).unwrap();
    let mut unsigned = huge.clone();
    unsigned[112..176].fill(0);
    std::fs::write(path("unsigned.bundle"), &unsigned).unwrap();
    let mut forged = huge.clone();
    forged[112..176].copy_from_slice(&other().sign(b"rampart.bundle.v1\0anything").to_bytes());
    std::fs::write(path("forged.bundle"), &forged).unwrap();

    expect(
        &[
            "verify",
            &path("huge.bundle"),
            "--key",
            &fixture("other.pem.pub"),
        ],
        4,
        &format!(
            "huge.bundle: signed by {}, which is not a trusted key",
            hex(signer().verifying_key().as_bytes())
        ),
    );
    for (name, message) in [
        ("unsigned.bundle", "unsigned.bundle: not signed"),
        ("forged.bundle", "forged.bundle: bad signature (offset 112)"),
    ] {
        expect(
            &["verify", &path(name), "--key", &fixture("signer.pem.pub")],
            4,
            message,
        );
    }
    // `inspect` trusts no key: it shows the manifest and leaves the
    // measurement of so much memory to --measure.
    let run = expect(
        &["inspect", &path("huge.bundle")],
        0,
        "memory size   0x1000000000 (16777216 pages)",
    );
    assert!(
        run.stdout
            .contains("(not recomputed: that hashes all 64 GiB of guest memory; use --measure"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("matches"), "{}", run.stdout);
}

#[test]
fn inspect_tells_a_zero_signature_from_no_signer() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("zeroed.bundle");
    let mut zeroed = std::fs::read(fixture("good.bundle")).unwrap();
    zeroed[112..176].fill(0);
    std::fs::write(&bundle, &zeroed).unwrap();
    let run = expect(
        &["inspect", bundle.to_str().unwrap()],
        0,
        &format!(
            "signer        {}\n",
            hex(signer().verifying_key().as_bytes())
        ),
    );
    assert!(
        run.stdout
            .contains("signature     none (all zero: the bundle is not signed)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("signer        none"), "{}", run.stdout);
    // A signature without a signer.
    let mut no_signer = std::fs::read(fixture("good.bundle")).unwrap();
    no_signer[80..112].fill(0);
    std::fs::write(&bundle, &no_signer).unwrap();
    expect(
        &["inspect", bundle.to_str().unwrap()],
        0,
        &format!("signer        {} (all zero: no signer)", "00".repeat(32)),
    );
}

#[test]
fn attest_verify_reads_the_console_line() {
    let report = std::fs::read(fixture("report.cbor")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "console.txt",
            format!(
                "[attest] GUEST-NONCE {NONCE}\n[attest] GUEST-REPORT {}\n",
                hex(&report)
            ),
        ),
        ("marker.txt", format!("GUEST-REPORT {}\n", hex(&report))),
        ("plain.hex", format!("{}\n", hex(&report))),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        attest(
            &["--report", file.to_str().unwrap(), "--nonce", NONCE],
            0,
            &format!("{name}: OK"),
        );
    }
    attest(
        &[
            "--report-hex",
            &format!("GUEST-REPORT {}\n", hex(&report)),
            "--nonce",
            NONCE,
        ],
        0,
        "--report-hex: OK",
    );
    let twice = dir.path().join("twice.txt");
    std::fs::write(
        &twice,
        format!("GUEST-REPORT {0}\nGUEST-REPORT {0}\n", hex(&report)),
    )
    .unwrap();
    attest(
        &["--report", twice.to_str().unwrap(), "--nonce", NONCE],
        3,
        "twice.txt: 2 GUEST-REPORT lines: keep the one to verify",
    );
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "GUEST-REPORT d28x\n").unwrap();
    attest(
        &["--report", garbage.to_str().unwrap(), "--nonce", NONCE],
        3,
        "garbage.txt: a report as text is hex (GUEST-REPORT optional): not hex at digit 2",
    );
}

#[test]
fn attestation_keys_of_the_wrong_length_or_invalid() {
    let report = fixture("report.cbor");
    let key = std::fs::read_to_string(fixture("attestation.pub")).unwrap();
    let key = key.trim();
    let with_key = |key: &str, code: i32, message: &str| {
        expect(
            &[
                "attest-verify",
                "--report",
                &report,
                "--attestation-key",
                key,
                "--nonce",
                NONCE,
            ],
            code,
            message,
        );
    };
    with_key(
        &key[..62],
        2,
        "--attestation-key: a key is 64 hex digits, this has 62 (and no file has that name)",
    );
    with_key(
        &format!("{key}00"),
        2,
        "--attestation-key: a key is 64 hex digits, this has 66",
    );
    // y = 2: no point has it.
    let not_a_point = format!("02{}", "00".repeat(31));
    with_key(
        &not_a_point,
        3,
        "not a valid Ed25519 public key (not a curve point)",
    );
    // The identity: a point, of small order; no signature verifies with it.
    let identity = format!("01{}", "00".repeat(31));
    with_key(
        &identity,
        3,
        "not a valid Ed25519 public key (a point of small order)",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("identity.hex");
    std::fs::write(&file, format!("{identity}\n")).unwrap();
    with_key(
        file.to_str().unwrap(),
        3,
        "identity.hex: not a valid Ed25519 public key (a point of small order)",
    );
    expect(
        &[
            "verify",
            &fixture("good.bundle"),
            "--key",
            file.to_str().unwrap(),
        ],
        3,
        "identity.hex: not a valid Ed25519 public key (a point of small order)",
    );
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let run = expect(&["completions", shell], 0, "attest-verify");
        assert!(run.stdout.contains("attestation-key"), "{shell}");
    }
    expect(&["completions", "tcsh"], 2, "invalid value 'tcsh'");
    expect(&["completions"], 2, "<SHELL>");
    let run = expect(&["man"], 0, ".TH rampart 1");
    for text in [
        "rampart\\-attest\\-verify(1)",
        "Exit codes:",
        "verification failed",
    ] {
        assert!(run.stdout.contains(text), "{text:?} in the man page");
    }
    // Every page the overview refers to.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    expect(&["man", "--dir", out], 0, "rampart-attest-verify.1");
    let page = std::fs::read_to_string(dir.path().join("rampart-attest-verify.1")).unwrap();
    assert!(page.starts_with(".ie"), "{page}");
    assert!(page.contains(".TH rampart-attest-verify 1"), "{page}");
    assert!(page.contains("\\-\\-attestation\\-key"), "{page}");
    for name in ["rampart.1", "rampart-verify.1", "rampart-completions.1"] {
        assert!(dir.path().join(name).exists(), "{name}");
    }
    expect(
        &["man", "--dir", "/nonexistent/dir"],
        1,
        "/nonexistent/dir/rampart.1: cannot write",
    );
}

/// `cca-platform-key` and `attest-verify` on a CCA token (issue 12), made
/// here from the device secret the other tests use.
#[test]
fn attest_verify_cca_token() {
    use rampart_attest::cca::{self, PlatformClaims, RealmClaims};
    let dir = tempfile::tempdir().unwrap();
    let secret = DeviceSecret::from_bytes(&DEVICE_SECRET);
    let iak = secret.cca_platform_key().unwrap();
    let rak = secret.cca_realm_key(&[3; 32]).unwrap();
    let challenge: Vec<u8> = (0..40).collect();
    let rim = Measurement([0x21; 32]);
    let hyp = Measurement([0x11; 32]);
    let token = cca::build_cca_token(
        &RealmClaims {
            challenge: cca::pad_challenge(&challenge).unwrap(),
            personalization_value: [0; 64],
            initial_measurement: rim,
            extensible_measurements: [[0; 32]; 4],
        },
        &rak,
        &PlatformClaims {
            implementation_id: cca::RAMPART_IMPLEMENTATION_ID,
            config: b"",
            lifecycle: cca::LIFECYCLE_SECURED,
            hypervisor_measurement: hyp,
            hypervisor_version: "rampart 0.1.0",
            hypervisor_signer_id: [0; 32],
            verification_service: "",
        },
        &iak,
    )
    .unwrap();
    let token_path = dir.path().join("token.cbor");
    std::fs::write(&token_path, &token).unwrap();
    let token_arg = token_path.display().to_string();
    let key_path = dir.path().join("platform.pub");
    let key_arg = key_path.display().to_string();
    let secret_hex = hex(&DEVICE_SECRET);
    let key_hex = hex(&cca::public_key_bytes(&iak.public_key()));
    expect(
        &[
            "cca-platform-key",
            "--device-secret",
            &secret_hex,
            "--out",
            &key_arg,
        ],
        0,
        &format!("cca platform public key: {key_hex}"),
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap().trim(), key_hex);

    let challenge_hex = hex(&challenge);
    let rim_hex = rim.to_string();
    let hyp_hex = hyp.to_string();
    let run = expect(
        &[
            "attest-verify",
            "--report",
            &token_arg,
            "--platform-key",
            &key_arg,
            "--challenge",
            &challenge_hex,
            "--measurement",
            &rim_hex,
            "--hypervisor-measurement",
            &hyp_hex,
        ],
        0,
        "token.cbor: OK (CCA attestation token",
    );
    assert!(
        run.stdout
            .contains(&format!("rampart {hyp_hex} version rampart 0.1.0"))
    );
    // The key as hex, the token as hex.
    expect(
        &[
            "attest-verify",
            "--report-hex",
            &hex(&token),
            "--platform-key",
            &key_hex,
            "--nonce",
            &challenge_hex,
        ],
        0,
        "(initial measurement not checked: no --measurement given)",
    );
    let cca_verify = |extra: &[&str], code: i32, message: &str| {
        let mut args = vec!["attest-verify", "--report", &token_arg];
        args.extend_from_slice(extra);
        expect(&args, code, message);
    };
    let k = ["--platform-key", key_arg.as_str()];
    cca_verify(
        &[k[0], k[1], "--challenge", "00112233"],
        2,
        "challenge is 4 bytes; it must be 32 to 64",
    );
    let other_challenge = hex(&[9; 40]);
    cca_verify(
        &[k[0], k[1], "--challenge", &other_challenge],
        4,
        "challenge mismatch",
    );
    let zeros = "00".repeat(32);
    cca_verify(
        &[
            k[0],
            k[1],
            "--challenge",
            &challenge_hex,
            "--measurement",
            &zeros,
        ],
        4,
        "initial measurement mismatch",
    );
    cca_verify(
        &[
            k[0],
            k[1],
            "--challenge",
            &challenge_hex,
            "--hypervisor-measurement",
            &zeros,
        ],
        4,
        "hypervisor measurement mismatch",
    );
    let other_key = hex(&cca::public_key_bytes(
        &DeviceSecret::from_bytes(&[1; 32])
            .cca_platform_key()
            .unwrap()
            .public_key(),
    ));
    cca_verify(
        &["--platform-key", &other_key, "--challenge", &challenge_hex],
        4,
        "platform token: bad signature",
    );
    cca_verify(&["--challenge", &challenge_hex], 2, "give --platform-key");
    let ed_key = fixture("attestation.pub");
    cca_verify(
        &["--attestation-key", &ed_key, "--challenge", &challenge_hex],
        2,
        "give --platform-key, not --attestation-key",
    );
    // A flipped byte in the realm token's signature (the last byte).
    let mut flipped = token.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let flipped_path = dir.path().join("flipped.cbor");
    std::fs::write(&flipped_path, &flipped).unwrap();
    expect(
        &[
            "attest-verify",
            "--report",
            &flipped_path.display().to_string(),
            "--platform-key",
            &key_arg,
            "--challenge",
            &challenge_hex,
        ],
        4,
        "realm token: bad signature",
    );
}

/// A small version-2 (Linux) bundle, unsigned: a fake arm64 `Image`, an
/// initrd, a command line and a device tree in 2 MiB of RAM.
fn linux_bundle(realm: bool) -> Vec<u8> {
    use rampart_attest::{GUEST_RAM_BASE, PartKind, PartSpec};
    let mut kernel: Vec<u8> = (0..5000u32).map(|i| (i % 249) as u8).collect();
    kernel[8..16].copy_from_slice(&0u64.to_le_bytes());
    kernel[16..24].copy_from_slice(&0x1_0000u64.to_le_bytes());
    kernel[24..32].copy_from_slice(&0xau64.to_le_bytes());
    kernel[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let dtb = fdt("console=ttyAMA0 quiet");
    let parts = [
        PartSpec {
            kind: PartKind::Kernel,
            load: GUEST_RAM_BASE,
            data: &kernel,
        },
        PartSpec {
            kind: PartKind::Initrd,
            load: GUEST_RAM_BASE + 0x10_0000,
            data: &[3; 77],
        },
        PartSpec {
            kind: PartKind::Cmdline,
            load: 0,
            data: b"console=ttyAMA0 quiet",
        },
        PartSpec {
            kind: PartKind::DeviceTree,
            load: GUEST_RAM_BASE + 0x18_0000,
            data: &dtb,
        },
    ];
    let flags = VmFlags {
        protected: true,
        debug: false,
        realm,
    };
    Bundle::build_linux(2 << 20, 1, flags, &parts, None).unwrap()
}

/// issue 12: `rampart sign --bundle` signs a Linux bundle from
/// `rampart-vmm pack`; `inspect` shows its parts; `verify` accepts it and
/// refuses it after one flipped byte in any part.
#[test]
fn sign_inspect_verify_a_linux_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("k.pem"), private_pem(&signer())).unwrap();
    std::fs::write(path("k.pem.pub"), public_pem(&signer())).unwrap();
    std::fs::write(path("unsigned.bundle"), linux_bundle(false)).unwrap();
    let (key, unsigned, signed) = (
        path("k.pem"),
        path("unsigned.bundle"),
        path("signed.bundle"),
    );
    expect(
        &["verify", &unsigned, "--key", &path("k.pem.pub")],
        4,
        "not signed",
    );
    expect(
        &[
            "sign", "--key", &key, "--bundle", &unsigned, "--out", &signed,
        ],
        0,
        "signed by ",
    );
    expect(&["verify", &signed, "--key", &path("k.pem.pub")], 0, "OK");
    let run = expect(
        &["inspect", &signed],
        0,
        "format        version 2 (Linux VM: typed parts)",
    );
    for line in [
        "flags         0x1 (protected)",
        "entry         vCPU 0 starts at the kernel, 0x80000000, x0 = the device tree, 0x80180000",
        "kernel      5000 bytes",
        "initrd      77 bytes",
        "cmdline     21 bytes",
        "not placed (in the device tree's bootargs)",
        "device tree ",
        "cmdline       console=ttyAMA0 quiet",
        "(matches the image and manifest)",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in\n{}", run.stdout);
    }
    // One flipped byte in each part's contents: refused.
    let bytes = std::fs::read(&signed).unwrap();
    let parsed = Bundle::parse(&bytes).unwrap();
    let offsets: Vec<usize> = parsed
        .linux
        .unwrap()
        .iter()
        .map(|p| usize::try_from(p.offset).unwrap() + 10)
        .collect();
    for at in offsets {
        std::fs::write(path("bad.bundle"), flip(bytes.clone(), at)).unwrap();
        let run = rampart(&["verify", &path("bad.bundle"), "--key", &path("k.pem.pub")]);
        assert!(
            matches!(run.code, 3 | 4),
            "byte {at}: {} {}",
            run.code,
            run.stderr
        );
    }
    // --bundle takes the manifest from the bundle.
    expect(
        &[
            "sign",
            "--key",
            &key,
            "--bundle",
            &unsigned,
            "--realm",
            "--out",
            &path("x"),
        ],
        2,
        "cannot be used with",
    );
}

/// issue 12: `sign --realm` measures the realm flag (a bare-metal image
/// signed for the RSI guest ABI); it needs a protected VM.
#[test]
fn sign_realm() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("k.pem"), private_pem(&signer())).unwrap();
    let image = fixture("image.bin");
    let base = [
        "sign",
        "--key",
        &path("k.pem"),
        "--image",
        &image,
        "--memory",
        "16K",
    ];
    let with = |extra: &[&str], out: &str| {
        let mut a: Vec<String> = base.iter().map(ToString::to_string).collect();
        a.extend(extra.iter().map(ToString::to_string));
        a.extend(["--out".to_string(), path(out)]);
        a
    };
    let realm = with(&["--realm"], "realm.bundle");
    expect(
        &realm.iter().map(String::as_str).collect::<Vec<_>>(),
        0,
        "wrote",
    );
    let plain = with(&[], "plain.bundle");
    expect(
        &plain.iter().map(String::as_str).collect::<Vec<_>>(),
        0,
        "wrote",
    );
    let realm_bytes = std::fs::read(path("realm.bundle")).unwrap();
    let r = Bundle::parse(&realm_bytes).unwrap();
    let plain_bytes = std::fs::read(path("plain.bundle")).unwrap();
    let p = Bundle::parse(&plain_bytes).unwrap();
    assert!(r.manifest.flags.realm && !p.manifest.flags.realm);
    assert_ne!(r.measurement, p.measurement, "the realm flag is measured");
    assert_eq!(&realm_bytes[12..16], &5u32.to_le_bytes());
    expect(
        &["inspect", &path("realm.bundle")],
        0,
        "0x5 (protected, realm)",
    );
    let bad = with(&["--realm", "--no-protected"], "bad.bundle");
    expect(
        &bad.iter().map(String::as_str).collect::<Vec<_>>(),
        2,
        "cannot be used with",
    );
}
