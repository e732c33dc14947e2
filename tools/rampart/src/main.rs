//! `rampart`: keys, signed guest bundles, inspection and attestation-report verification for the Rampart hypervisor.
//!
//! Every format it reads or writes is defined by `rampart-attest` and
//! specified in `docs/formats.md`. Design principles:
//! - **Errors name the file and what is wrong with it**, and the exit code
//!   says which kind of failure it was ([`Exit`]), so scripts can tell "the
//!   file is broken" from "the signature is wrong".
//! - **Private keys never leave their file**: written 0600, never printed,
//!   wiped from memory after use (ed25519-dalek zeroizes on drop).
//! - **Standard formats where they exist**: PKCS#8 / SPKI PEM keys (the
//!   same files `openssl genpkey -algorithm ed25519` makes), COSE_Sign1
//!   reports.

#![forbid(unsafe_code)]

mod cli;
mod keyfile;
mod parse;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser;
use rampart_attest::{
    Bundle, BundleError, CcaError, CcaExpected, CcaPublicKey, DeviceSecret, Manifest,
    ManifestError, Measurement, ReportError, SignatureError, VerifyingKey, VmFlags, cca,
    verify_cca_token, verify_report,
};

use cli::{Cli, Command};

/// The process exit codes (also in `--help` and `docs/formats.md`): the
/// usual 0 success, 1 failure, 2 usage error, and two failures scripts
/// want to tell apart, kept distinct from both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A failure that is none of the others: a file could not be read or
    /// written, or exists already.
    Io = 1,
    /// Bad command line: unknown option, missing or malformed argument
    /// (clap's own status for its errors, too).
    Usage = 2,
    /// An input file is malformed: not a bundle, truncated, bad key file,
    /// fields out of range, not a COSE_Sign1 report.
    Malformed = 3,
    /// A well-formed input failed verification: unsigned, untrusted or bad
    /// signature, measurement or nonce mismatch.
    Verification = 4,
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub exit: Exit,
    /// The message (with context).
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure of `kind` with a message.
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            exit,
            error: error.into(),
        }
    }
}

/// A command's result.
pub type Outcome<T = ()> = Result<T, Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(Exit::Usage as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("rampart: {:#}", failure.error);
            ExitCode::from(failure.exit as u8)
        }
    }
}

fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Sign(args) => sign(&args),
        Command::Verify { bundle, keys } => verify(&bundle, &keys),
        Command::Inspect { bundle, measure } => inspect(&bundle, measure),
        Command::AttestVerify(args) => attest_verify(&args),
        Command::AttestationKey { device_secret, out } => {
            attestation_key(&device_secret, out.as_deref())
        }
        Command::CcaPlatformKey { device_secret, out } => {
            cca_platform_key(&device_secret, out.as_deref())
        }
        Command::Completions { shell } => {
            cli::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir: None } => cli::man(&mut std::io::stdout())
            .map_err(|e| Failure::new(Exit::Io, anyhow!("writing the man page: {e}"))),
        Command::Man { dir: Some(dir) } => man_pages(&dir),
    }
}

fn man_pages(dir: &Path) -> Outcome {
    let pages = cli::man_pages()
        .map_err(|e| Failure::new(Exit::Io, anyhow!("rendering the man pages: {e}")))?;
    for (name, page) in pages {
        let path = dir.join(&name);
        keyfile::write_file(&path, &page, true, Some(0o644))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Reads a whole file; failures are [`Exit::Io`] naming the file.
pub fn read(path: &Path) -> Outcome<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Failure::new(Exit::Io, anyhow!("{}: cannot read: {e}", path.display())))
}

fn keygen(out: &Path, force: bool) -> Outcome {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut())
        .map_err(|e| Failure::new(Exit::Io, anyhow!("no randomness from the OS: {e}")))?;
    let key = rampart_attest::SigningKey::from_bytes(&seed);
    let public = keyfile::public_path(out);
    keyfile::write_private(out, &key, force)?;
    keyfile::write_public(&public, &key.verifying_key(), force)?;
    println!(
        "wrote {} (private key, PKCS#8 PEM, mode 0600) and {} (public key)",
        out.display(),
        public.display()
    );
    println!("public key: {}", hex(key.verifying_key().as_bytes()));
    Ok(())
}

fn sign(args: &cli::SignArgs) -> Outcome {
    let key = keyfile::read_private(&args.key)?;
    if let Some(path) = &args.bundle {
        let bytes = read(path)?;
        let bundle = Bundle::sign(&bytes, &key).map_err(|e| bundle_failure(path, e))?;
        return wrote(args, &bundle);
    }
    let (Some(image_path), Some(memory)) = (&args.image, args.memory) else {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!("give --image and --memory, or --bundle"),
        ));
    };
    let image = read(image_path)?;
    let manifest = Manifest {
        memory_size: memory,
        vcpus: args.vcpus,
        entry_offset: args.entry,
        flags: VmFlags {
            protected: !args.no_protected,
            debug: args.debug,
            realm: args.realm,
        },
    };
    let bundle = Bundle::build(&manifest, &image, &key).map_err(|error| {
        let (exit, option) = match error {
            ManifestError::Vcpus(_) => (Exit::Usage, "--vcpus"),
            ManifestError::EntryUnaligned(_) | ManifestError::EntryOutsideImage { .. } => {
                (Exit::Usage, "--entry")
            }
            ManifestError::EmptyImage => (Exit::Malformed, "--image"),
            _ => (Exit::Usage, "--memory"),
        };
        Failure::new(
            exit,
            anyhow!("{option}: {error} (image {})", image_path.display()),
        )
    })?;
    wrote(args, &bundle)
}

fn wrote(args: &cli::SignArgs, bundle: &[u8]) -> Outcome {
    keyfile::write_file(&args.out, bundle, args.force, None)?;
    let parsed = Bundle::parse(bundle)
        .map_err(|e| Failure::new(Exit::Malformed, anyhow!("internal error: {e}")))?;
    println!(
        "wrote {} ({} bytes): measurement {}, signed by {}",
        args.out.display(),
        bundle.len(),
        parsed.measurement,
        hex(&parsed.signer)
    );
    Ok(())
}

fn bundle_failure(path: &Path, error: BundleError) -> Failure {
    let exit = match error {
        BundleError::MeasurementMismatch { .. } | BundleError::Signature(_) => Exit::Verification,
        _ => Exit::Malformed,
    };
    Failure::new(exit, anyhow!("{}: {error}", path.display()))
}

fn verify(path: &Path, key_files: &[PathBuf]) -> Outcome {
    let mut trusted: Vec<(VerifyingKey, &Path)> = Vec::new();
    for file in key_files {
        trusted.push((keyfile::read_public(file)?, file));
    }
    let bytes = read(path)?;
    let bundle = Bundle::parse(&bytes).map_err(|e| bundle_failure(path, e))?;
    let keys: Vec<VerifyingKey> = trusted.iter().map(|(key, _)| *key).collect();
    let refused = |e: BundleError| match e {
        BundleError::Signature(SignatureError::UntrustedSigner(_)) => {
            let names: Vec<String> = key_files.iter().map(|p| p.display().to_string()).collect();
            Failure::new(
                Exit::Verification,
                anyhow!("{}: {e} (trusted: {})", path.display(), names.join(", ")),
            )
        }
        other => bundle_failure(path, other),
    };
    // The signature first (as `verify` does): a bundle no trusted key
    // signed is refused before its memory is hashed, whatever size it
    // claims. Then say why what follows may take a while.
    rampart_attest::verify_measurement(
        &bundle.measurement,
        &bundle.signer,
        &bundle.signature,
        &keys,
    )
    .map_err(|e| refused(e.into()))?;
    if bundle.manifest.memory_size > INSPECT_MEASURE_LIMIT {
        eprintln!(
            "rampart: {}: signature OK; recomputing the measurement of {} of guest memory (every page is hashed, as the hypervisor does)",
            path.display(),
            size_text(bundle.manifest.memory_size)
        );
    }
    let signer = bundle.verify(&keys).map_err(refused)?;
    let file = trusted
        .iter()
        .find(|(key, _)| *key == signer)
        .map_or_else(String::new, |(_, file)| format!(" ({})", file.display()));
    println!("{}: OK", path.display());
    println!("  signed by   {}{file}", hex(signer.as_bytes()));
    println!("  measurement {}", bundle.measurement);
    Ok(())
}

fn flags_text(flags: VmFlags) -> String {
    let mut words = Vec::new();
    if flags.protected {
        words.push("protected");
    }
    if flags.debug {
        words.push("debug");
    }
    if flags.realm {
        words.push("realm");
    }
    if words.is_empty() {
        words.push("none");
    }
    format!("{:#x} ({})", flags.bits(), words.join(", "))
}

/// The largest guest memory `inspect` recomputes the measurement of
/// without `--measure` (1 GiB: under a second, debug builds included, as
/// sha2 is optimised in the dev profile too). Above it, hashing every page
/// takes long however small the bundle is.
pub const INSPECT_MEASURE_LIMIT: u64 = 1 << 30;

/// A byte count in the largest binary unit that divides it.
fn size_text(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

fn inspect(path: &Path, measure: bool) -> Outcome {
    let bytes = read(path)?;
    let bundle = Bundle::parse(&bytes).map_err(|e| bundle_failure(path, e))?;
    let manifest = &bundle.manifest;
    let state = bundle.initial_state();
    println!("bundle        {} ({} bytes)", path.display(), bytes.len());
    println!(
        "format        version {}{}",
        bundle.version,
        if bundle.linux.is_some() {
            " (Linux VM: typed parts)"
        } else {
            ""
        }
    );
    println!("flags         {}", flags_text(manifest.flags));
    println!("vcpus         {}", manifest.vcpus);
    println!(
        "memory size   {:#x} ({} pages)",
        manifest.memory_size,
        manifest.pages()
    );
    if let Some(linux) = &bundle.linux {
        println!(
            "entry         vCPU 0 starts at the kernel, {:#x}, x0 = the device tree, {:#x}",
            state.entry_pc, state.x0
        );
        for (i, part) in linux.iter().enumerate() {
            let at = if part.kind.placed() {
                format!(
                    "at {:#x}..{:#x}",
                    part.load,
                    part.load + part.data.len() as u64
                )
            } else {
                "not placed (in the device tree's bootargs)".to_string()
            };
            println!(
                "part {i}        {:<11} {} bytes at file offset {:#x}, {at}",
                part.kind.name(),
                part.data.len(),
                part.offset
            );
        }
        println!("cmdline       {}", linux.cmdline());
    } else {
        println!(
            "entry offset  {:#x} (vCPU 0 starts at {:#x}, x0 = {:#x})",
            manifest.entry_offset, state.entry_pc, state.x0
        );
        println!("image         {} bytes", bundle.image.len());
    }
    // The signer and signature fields say what they hold, independently:
    // a set signer with a zero signature is not "unsigned by nobody".
    let signer_set = bundle.signer != [0; 32];
    if !signer_set && !bundle.is_signed() {
        println!("signer        none (unsigned)");
    } else {
        let note = if !signer_set {
            " (all zero: no signer)"
        } else if VerifyingKey::from_bytes(&bundle.signer).is_ok_and(|key| !key.is_weak()) {
            ""
        } else {
            " (not a valid Ed25519 public key)"
        };
        println!("signer        {}{note}", hex(&bundle.signer));
        if bundle.is_signed() {
            println!("signature     {}", hex(&bundle.signature));
        } else {
            println!("signature     none (all zero: the bundle is not signed)");
        }
    }
    if !measure && manifest.memory_size > INSPECT_MEASURE_LIMIT {
        println!(
            "measurement   {} (not recomputed: that hashes all {} of guest memory; use --measure, or `rampart verify`)",
            bundle.measurement,
            size_text(manifest.memory_size)
        );
        return Ok(());
    }
    let computed = bundle.computed_measurement();
    if computed == bundle.measurement {
        println!(
            "measurement   {} (matches the image and manifest)",
            bundle.measurement
        );
    } else {
        println!(
            "measurement   {} (DOES NOT MATCH the image and manifest, which give {computed})",
            bundle.measurement
        );
    }
    Ok(())
}

fn attest_verify(args: &cli::AttestVerifyArgs) -> Outcome {
    let (bytes, source) = match (&args.report, &args.report_hex) {
        (Some(path), _) => {
            let raw = read(path)?;
            let bytes = parse::report(&raw)
                .map_err(|e| Failure::new(Exit::Malformed, anyhow!("{}: {e}", path.display())))?;
            (bytes, path.display().to_string())
        }
        (None, Some(text)) => (
            parse::report(text.as_bytes())
                .map_err(|e| Failure::new(Exit::Usage, anyhow!("--report-hex: {e}")))?,
            "--report-hex".to_string(),
        ),
        (None, None) => {
            return Err(Failure::new(
                Exit::Usage,
                anyhow!("give --report FILE or --report-hex HEX"),
            ));
        }
    };
    let Some(nonce) = &args.nonce else {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!("give --nonce HEX (--challenge HEX): the challenge the guest answered"),
        ));
    };
    if rampart_attest::is_cca_token(&bytes) {
        return cca_verify(args, &bytes, &source, &nonce.0);
    }
    if args.platform_key.is_some() || args.hypervisor_measurement.is_some() {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!(
                "{source}: a Rampart report, not a CCA token: --platform-key and --hypervisor-measurement are for CCA tokens"
            ),
        ));
    }
    let Some(attestation_key) = &args.attestation_key else {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!("{source}: a Rampart report: give --attestation-key"),
        ));
    };
    let key = keyfile::read_public_or_hex(attestation_key, "--attestation-key")?;
    let report = verify_report(
        &bytes,
        key.as_bytes(),
        args.measurement.as_ref().map(|m| &m.0),
        &nonce.0,
    )
    .map_err(|error| {
        let exit = match error {
            ReportError::BadSignature
            | ReportError::MeasurementMismatch { .. }
            | ReportError::NonceMismatch => Exit::Verification,
            ReportError::NonceTooLong(_) => Exit::Usage,
            _ => Exit::Malformed,
        };
        Failure::new(exit, anyhow!("{source}: {error}"))
    })?;
    println!("{source}: OK");
    println!("  measurement            {}", report.measurement);
    println!("  nonce                  {}", hex(&report.nonce));
    println!("  hypervisor version     {}", report.hypervisor_version);
    println!("  hypervisor measurement {}", report.hypervisor_measurement);
    println!("  VM flags               {}", flags_text(report.flags));
    if args.measurement.is_none() {
        println!("  (measurement not checked: no --measurement given)");
    }
    Ok(())
}

fn attestation_key(secret: &str, out: Option<&Path>) -> Outcome {
    let bytes = parse::hex32(secret)
        .map_err(|e| Failure::new(Exit::Usage, anyhow!("--device-secret: {e}")))?;
    let key = DeviceSecret::from_bytes(&bytes)
        .attestation_key()
        .public_key();
    if let Some(out) = out {
        keyfile::write_public(out, &key, true)?;
        println!("wrote {}", out.display());
    }
    println!("attestation public key: {}", hex(key.as_bytes()));
    Ok(())
}

/// Reads a CCA platform public key: 194 hex digits (97 bytes, SEC1
/// uncompressed) on the command line or in a file.
fn read_cca_key(argument: &str) -> Outcome<CcaPublicKey> {
    let path = Path::new(argument);
    let text = if !path.exists() && parse::looks_like_hex(argument) {
        argument.to_string()
    } else {
        String::from_utf8(read(path)?).map_err(|_| {
            Failure::new(
                Exit::Malformed,
                anyhow!("--platform-key: {argument}: not text (a CCA platform key file is hex)"),
            )
        })?
    };
    let bytes = parse::hex(&text)
        .map_err(|e| Failure::new(Exit::Malformed, anyhow!("--platform-key: {argument}: {e}")))?;
    if bytes.len() != cca::PUBLIC_KEY_LEN {
        return Err(Failure::new(
            Exit::Malformed,
            anyhow!(
                "--platform-key: {argument}: a CCA platform key is 97 bytes (194 hex digits), this is {} bytes",
                bytes.len()
            ),
        ));
    }
    cca::public_key_from_bytes(&bytes).ok_or_else(|| {
        Failure::new(
            Exit::Malformed,
            anyhow!("--platform-key: {argument}: not a P-384 public key (not a curve point)"),
        )
    })
}

fn cca_verify(
    args: &cli::AttestVerifyArgs,
    bytes: &[u8],
    source: &str,
    challenge: &[u8],
) -> Outcome {
    if args.attestation_key.is_some() {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!("{source}: a CCA token: give --platform-key, not --attestation-key"),
        ));
    }
    let Some(platform_key) = &args.platform_key else {
        return Err(Failure::new(
            Exit::Usage,
            anyhow!(
                "{source}: a CCA token: give --platform-key (rampart cca-platform-key prints it)"
            ),
        ));
    };
    let key = read_cca_key(platform_key)?;
    let rim = args.measurement.as_ref().map(|m| Measurement(m.0));
    let hyp = args
        .hypervisor_measurement
        .as_ref()
        .map(|m| Measurement(m.0));
    let token = verify_cca_token(
        bytes,
        &CcaExpected {
            platform_key: &key,
            challenge: Some(challenge),
            initial_measurement: rim.as_ref(),
            hypervisor_measurement: hyp.as_ref(),
        },
    )
    .map_err(|error| {
        let exit = match error {
            CcaError::ChallengeLength(_) => Exit::Usage,
            CcaError::PlatformSignature
            | CcaError::InstanceId
            | CcaError::RealmSignature
            | CcaError::Binding
            | CcaError::ChallengeMismatch
            | CcaError::InitialMeasurementMismatch { .. }
            | CcaError::NoHypervisorComponent
            | CcaError::HypervisorMeasurementMismatch { .. } => Exit::Verification,
            _ => Exit::Malformed,
        };
        Failure::new(exit, anyhow!("{source}: {error}"))
    })?;
    let realm = &token.realm;
    let platform = &token.platform;
    println!("{source}: OK (CCA attestation token, platform and realm signatures, binding)");
    println!("  realm challenge        {}", hex(&realm.claims.challenge));
    println!(
        "  realm initial meas.    {}",
        realm.claims.initial_measurement
    );
    for (i, rem) in realm.claims.extensible_measurements.iter().enumerate() {
        println!("  realm extensible {i}     {}", hex(rem));
    }
    println!(
        "  personalization value  {}",
        hex(&realm.claims.personalization_value)
    );
    println!("  realm public key       {}", hex(&realm.public_key));
    println!("  platform instance id   {}", hex(&platform.instance_id));
    println!(
        "  implementation id      {}",
        hex(&platform.implementation_id)
    );
    println!("  lifecycle              {:#06x}", platform.lifecycle);
    for component in &platform.sw_components {
        println!(
            "  software component     {} {} version {} signer {}",
            component.measurement_type.as_deref().unwrap_or("-"),
            component.measurement,
            component.version.as_deref().unwrap_or("-"),
            hex(&component.signer_id),
        );
    }
    if let Some(service) = &platform.verification_service {
        println!("  verification service   {service}");
    }
    println!("  platform config        {}", hex(&platform.config));
    if args.measurement.is_none() {
        println!("  (initial measurement not checked: no --measurement given)");
    }
    if args.hypervisor_measurement.is_none() {
        println!("  (hypervisor measurement not checked: no --hypervisor-measurement given)");
    }
    Ok(())
}

fn cca_platform_key(secret: &str, out: Option<&Path>) -> Outcome {
    let bytes = parse::hex32(secret)
        .map_err(|e| Failure::new(Exit::Usage, anyhow!("--device-secret: {e}")))?;
    let key = DeviceSecret::from_bytes(&bytes)
        .cca_platform_key()
        .map_err(|e| Failure::new(Exit::Io, anyhow!("{e}")))?
        .public_key();
    let text = hex(&cca::public_key_bytes(&key));
    if let Some(out) = out {
        keyfile::write_file(out, format!("{text}\n").as_bytes(), true, Some(0o644))?;
        println!("wrote {}", out.display());
    }
    println!("cca platform public key: {text}");
    println!("cca instance id:         {}", hex(&cca::instance_id(&key)));
    Ok(())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
