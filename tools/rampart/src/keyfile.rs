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
        let key = VerifyingKey::from_public_key_pem(text.trim())
            .map_err(|e| malformed(path, format_args!("not an Ed25519 public key: {e}")))?;
        return public_key(key.as_bytes()).map_err(|what| malformed(path, what));
    }
    let bytes = parse::hex32(&text).map_err(|e| {
        malformed(
            path,
            format_args!("not a public key file (expected PEM \"-----BEGIN PUBLIC KEY-----\" or 64 hex digits): {e}"),
        )
    })?;
    public_key(&bytes).map_err(|what| malformed(path, what))
}

/// A public key given (as the value of `option`) as a file name or as 64
/// hex digits. An argument of hex digits only that names no file is a key
/// of the wrong length, not a file name.
pub fn read_public_or_hex(argument: &str, option: &str) -> Outcome<VerifyingKey> {
    let path = Path::new(argument);
    if !path.exists() && parse::looks_like_hex(argument) {
        let bytes = parse::hex32(argument).map_err(|_| {
            let digits = argument.strip_prefix("0x").unwrap_or(argument).len();
            Failure::new(
                Exit::Usage,
                anyhow!("{option}: a key is 64 hex digits, this has {digits} (and no file has that name)"),
            )
        })?;
        return public_key(&bytes).map_err(|what| {
            Failure::new(Exit::Malformed, anyhow!("{option}: {argument}: {what}"))
        });
    }
    read_public(path)
}

/// 32 bytes as an Ed25519 public key fit to verify with: a curve point,
/// and not one of small order (`verify_strict` accepts no signature from
/// those, so they are invalid keys rather than causes of bad signatures).
fn public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, &'static str> {
    let key = VerifyingKey::from_bytes(bytes)
        .map_err(|_| "not a valid Ed25519 public key (not a curve point)")?;
    if key.is_weak() {
        return Err("not a valid Ed25519 public key (a point of small order)");
    }
    Ok(key)
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
