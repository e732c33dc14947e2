//! Key files: PKCS#8 PEM private keys (RFC 8410), SubjectPublicKeyInfo PEM
//! public keys, or 64 hex digits for a public key.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use rampart_attest::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::{Exit, Failure, Outcome, parse, read};

/// `KEY.pub` for `KEY`.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn malformed(path: &Path, what: impl std::fmt::Display) -> Failure {
    Failure::new(Exit::Malformed, anyhow!("{}: {what}", path.display()))
}

fn read_text(path: &Path) -> Outcome<Zeroizing<String>> {
    let bytes = Zeroizing::new(read(path)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| malformed(path, "not a key file: not text (expected PEM or hex)"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Reads a PKCS#8 PEM Ed25519 private key.
pub fn read_private(path: &Path) -> Outcome<SigningKey> {
    let text = read_text(path)?;
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(malformed(path, "encrypted private keys are not supported"));
    }
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(malformed(
            path,
            "this is a public key; signing needs the private key",
        ));
    }
    if !text.contains("-----BEGIN PRIVATE KEY-----") {
        return Err(malformed(
            path,
            "not a private key file (expected PKCS#8 PEM, \"-----BEGIN PRIVATE KEY-----\")",
        ));
    }
    SigningKey::from_pkcs8_pem(text.trim())
        .map_err(|e| malformed(path, format_args!("not a PKCS#8 Ed25519 private key: {e}")))
}

/// Reads a public key: SubjectPublicKeyInfo PEM, or 64 hex digits.
pub fn read_public(path: &Path) -> Outcome<VerifyingKey> {
    let text = read_text(path)?;
    if text.contains("PRIVATE KEY-----") {
        return Err(malformed(
            path,
            "this is a private key; give the public key (KEY.pub)",
        ));
    }
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        return VerifyingKey::from_public_key_pem(text.trim())
            .map_err(|e| malformed(path, format_args!("not an Ed25519 public key: {e}")));
    }
    let bytes = parse::hex32(&text).map_err(|e| {
        malformed(
            path,
            format_args!("not a public key file (expected PEM \"-----BEGIN PUBLIC KEY-----\" or 64 hex digits): {e}"),
        )
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| malformed(path, "not a valid Ed25519 public key (not a curve point)"))
}

/// A public key given as a file name or as 64 hex digits.
pub fn read_public_or_hex(argument: &str) -> Outcome<VerifyingKey> {
    let path = Path::new(argument);
    if !path.exists()
        && let Ok(bytes) = parse::hex32(argument)
    {
        return VerifyingKey::from_bytes(&bytes).map_err(|_| {
            Failure::new(
                Exit::Malformed,
                anyhow!("{argument}: not a valid Ed25519 public key (not a curve point)"),
            )
        });
    }
    read_public(path)
}

/// Writes a file; refuses to overwrite unless `force`. `mode` (Unix
/// permissions) also applies to an overwritten file.
pub fn write_file(path: &Path, bytes: &[u8], force: bool, mode: Option<u32>) -> Outcome {
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::new(
                Exit::Io,
                anyhow!(
                    "{}: already exists (use --force to overwrite)",
                    path.display()
                ),
            )
        } else {
            Failure::new(Exit::Io, anyhow!("{}: cannot write: {e}", path.display()))
        }
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes a private key as PKCS#8 v1 PEM (RFC 8410, the private key
/// only, as OpenSSL writes and reads it), mode 0600.
pub fn write_private(path: &Path, key: &SigningKey, force: bool) -> Outcome {
    let pem = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| Failure::new(Exit::Io, anyhow!("encoding the private key: {e}")))?;
    write_file(path, pem.as_bytes(), force, Some(0o600))
}

/// Writes a public key as SubjectPublicKeyInfo PEM, mode 0644.
pub fn write_public(path: &Path, key: &VerifyingKey, force: bool) -> Outcome {
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| Failure::new(Exit::Io, anyhow!("encoding the public key: {e}")))?;
    write_file(path, pem.as_bytes(), force, Some(0o644))
}
