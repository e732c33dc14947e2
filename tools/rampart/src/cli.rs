//! The command line.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::parse::{Hex32, HexBytes, size};

const AFTER_HELP: &str = "\
Typical use:
  rampart keygen --out signer.pem                # signer.pem (0600) + signer.pem.pub
  rampart sign --key signer.pem --image guest.bin --memory 16M --vcpus 2 --out guest.bundle
  rampart verify guest.bundle --key signer.pem.pub
  rampart inspect guest.bundle
  rampart attest-verify --report report.cbor --attestation-key attestation.pub \\
      --measurement <64 hex digits> --nonce <hex>
  rampart cca-platform-key --device-secret <64 hex digits> --out platform.pub
  rampart attest-verify --report token.cbor --platform-key platform.pub \
      --challenge <hex> --measurement <RIM> --hypervisor-measurement <hex>

Exit codes:
  0  success
  1  failure: a file could not be read or written (or already exists)
  2  usage: bad command line (unknown option, malformed or out-of-range argument)
  3  malformed input: not a bundle, truncated, bad or invalid key, not a COSE_Sign1 report
  4  verification failed: unsigned, untrusted signer, bad signature,
     measurement or nonce mismatch

Shell completions: rampart completions bash|zsh|fish|elvish|powershell
Man page:          rampart man > rampart.1

Formats (keys, bundles, measurement, reports): docs/formats.md.";

/// Keys, signed guest bundles and attestation reports for the Rampart
/// hypervisor.
///
/// A protected VM runs only if a trusted key signed the measurement of its
/// initial state. `rampart sign` measures a guest image exactly as the
/// hypervisor will (image at guest-physical 0x8000_0000, zero-filled RAM up
/// to --memory, vCPU 0 at the entry point with x0 = memory size) and writes
/// a bundle the VMM loads.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make an Ed25519 signing key pair.
    ///
    /// Writes KEY (the private key, PKCS#8 PEM, mode 0600) and KEY.pub (the
    /// public key, SubjectPublicKeyInfo PEM). The files are those `openssl
    /// genpkey -algorithm ed25519` and `openssl pkey -pubout` produce.
    Keygen {
        /// Where to write the private key; the public key goes to KEY.pub.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Measure a guest image and sign it into a bundle.
    Sign(SignArgs),
    /// Check that a bundle is intact and signed by a trusted key.
    ///
    /// Checks that the signer is one of the --key files and that its
    /// signature verifies, then recomputes the measurement from the image
    /// and manifest (hashing every page of guest memory, as the hypervisor
    /// does: only for a bundle a trusted key signed).
    Verify {
        /// The bundle.
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// A trusted public key (KEY.pub, or a file with 64 hex digits);
        /// repeat for several.
        #[arg(
            long = "key",
            visible_alias = "trusted",
            value_name = "KEY.pub",
            required = true
        )]
        keys: Vec<PathBuf>,
    },
    /// Print a bundle's manifest, measurement and signer.
    ///
    /// Checks the bundle's structure and recomputes its measurement (for
    /// guest memory up to 1 GiB, or with --measure), but trusts no key: use
    /// `verify` for that.
    Inspect {
        /// The bundle.
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// Recompute the measurement whatever the memory size (hashing
        /// 64 GiB takes a minute or more).
        #[arg(long)]
        measure: bool,
    },
    /// Verify an attestation report (COSE_Sign1) a guest obtained.
    AttestVerify(AttestVerifyArgs),
    /// Print the attestation public key a device secret yields.
    ///
    /// For development setups (QEMU) where the device secret is known; on a
    /// real device take the public key from the device instead.
    AttestationKey {
        /// The 32-byte device secret, 64 hex digits.
        #[arg(long, value_name = "HEX")]
        device_secret: String,
        /// Also write it as a PEM public key file.
        #[arg(long, value_name = "PUB")]
        out: Option<PathBuf>,
    },
    /// Print the CCA platform public key (IAK, ECDSA P-384) a device
    /// secret yields, and the instance id CCA tokens carry with it.
    ///
    /// For development setups (QEMU) where the device secret is known; give
    /// it to `attest-verify --platform-key` or to a CCA verifier.
    CcaPlatformKey {
        /// The 32-byte device secret, 64 hex digits.
        #[arg(long, value_name = "HEX")]
        device_secret: String,
        /// Also write it to a file, as hex (97 bytes, SEC1 uncompressed).
        #[arg(long, value_name = "PUB")]
        out: Option<PathBuf>,
    },
    /// Print a shell completion script.
    ///
    /// For example `rampart completions bash > /etc/bash_completion.d/rampart`,
    /// or `source <(rampart completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page rampart(1), or write every page to a directory.
    ///
    /// For example `rampart man > rampart.1 && man ./rampart.1`, or
    /// `rampart man --dir /usr/local/share/man/man1` for rampart(1) and a
    /// rampart-COMMAND(1) page per command.
    Man {
        /// Write rampart.1 and rampart-COMMAND.1 into this directory
        /// (overwriting them) instead of printing rampart(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "rampart", out);
}

/// Writes the man page rampart(1): synopsis, description, options, the
/// commands (each with its own page, see [`man_pages`]), and the exit codes
/// and examples of `--help`.
///
/// # Errors
///
/// Writing failed.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// Every man page: (file name, roff), rampart.1 first, then
/// rampart-COMMAND.1 for each command.
///
/// # Errors
///
/// Rendering failed.
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut command = Cli::command();
    command.build();
    let mut pages = Vec::new();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    pages.push(("rampart.1".to_string(), page));
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        let name = format!("rampart-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

/// `rampart sign`.
#[derive(Debug, Args)]
#[command(
    after_help = "SIZE and OFFSET: decimal or 0x hex; SIZE may end in K, M or G (KiB, MiB, GiB)."
)]
pub struct SignArgs {
    /// The private signing key (PKCS#8 PEM, from `rampart keygen`).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The guest image, loaded at guest-physical 0x8000_0000.
    #[arg(long, value_name = "IMG", required_unless_present = "bundle")]
    pub image: Option<PathBuf>,
    /// Sign an existing bundle instead (a Linux bundle from `rampart-vmm
    /// pack`, or any bundle to re-sign): its measurement is recomputed from
    /// its contents, its manifest and parts are kept.
    #[arg(
        long,
        value_name = "BUNDLE",
        conflicts_with_all = ["image", "memory", "vcpus", "entry", "protected", "no_protected", "debug", "realm"]
    )]
    pub bundle: Option<PathBuf>,
    /// Guest RAM in bytes: a multiple of 4 KiB, at least the image, at most 64G.
    #[arg(long, value_name = "SIZE", value_parser = size, required_unless_present = "bundle")]
    pub memory: Option<u64>,
    /// Number of vCPUs, 1 to 8.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// vCPU 0's entry point as an offset into the image (4-byte aligned).
    #[arg(long, value_name = "OFFSET", value_parser = size, default_value = "0")]
    pub entry: u64,
    /// A protected VM (the default).
    #[arg(long, overrides_with = "no_protected")]
    pub protected: bool,
    /// A non-protected VM: the host may read and write its memory.
    #[arg(long, overrides_with = "protected")]
    pub no_protected: bool,
    /// Mark the VM as a debug build (reported to verifiers).
    #[arg(long)]
    pub debug: bool,
    /// A realm VM (guest ABI RSI over SMC; VM_CREATE bit 2): measured, so
    /// the image runs only as a realm. Protected only.
    #[arg(long, conflicts_with = "no_protected")]
    pub realm: bool,
    /// Where to write the bundle.
    #[arg(long, value_name = "BUNDLE")]
    pub out: PathBuf,
    /// Overwrite BUNDLE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `rampart attest-verify`.
#[derive(Debug, Args)]
pub struct AttestVerifyArgs {
    /// The report: a file holding the raw COSE_Sign1 bytes, or the hex the
    /// console prints (`GUEST-REPORT d284…`, the marker optional). A CCA
    /// attestation token (CBOR tag 399) is recognised and verified as one.
    #[arg(
        long,
        value_name = "REPORT",
        conflicts_with = "report_hex",
        required_unless_present = "report_hex"
    )]
    pub report: Option<PathBuf>,
    /// The report as hex on the command line (`GUEST-REPORT` optional).
    #[arg(long, value_name = "HEX")]
    pub report_hex: Option<String>,
    /// The device's attestation public key: a PEM or hex file, or 64 hex
    /// digits. Required for a Rampart report.
    #[arg(long, value_name = "PUB")]
    pub attestation_key: Option<String>,
    /// The device's CCA platform public key (`rampart cca-platform-key`):
    /// 194 hex digits or a file holding them. Required for a CCA token.
    #[arg(long, value_name = "PUB")]
    pub platform_key: Option<String>,
    /// The measurement the VM must have (64 hex digits, as `rampart inspect`
    /// prints; for a CCA token its realm initial measurement). Without it
    /// any measurement is accepted and printed.
    #[arg(long, value_name = "HEX")]
    pub measurement: Option<Hex32>,
    /// For a CCA token: the hypervisor measurement Rampart's software
    /// component must have (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub hypervisor_measurement: Option<Hex32>,
    /// The nonce the guest was challenged with (hex, at most 64 bytes; ""
    /// for none). For a CCA token: the challenge, 32 to 64 bytes, compared
    /// zero-padded to 64. Required.
    #[arg(
        long,
        visible_alias = "challenge",
        value_name = "HEX",
        allow_hyphen_values = false
    )]
    pub nonce: Option<HexBytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
