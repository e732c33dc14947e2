//! The boot command line: Rampart's own options and the host's remainder.
//!
//! See [`rampart_abi::boot`] for the format.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use rampart_abi::boot::{GUEST_POOL_KEY, HOST_IMAGE_KEY, MUTANT_KEY, OPTION_PREFIX, ORACLE_EVERY_KEY, UNGUARDED_DMA_KEY};

use crate::BootError;

/// What Rampart takes from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// Physical address of the host's `Image`.
    pub host_image: u64,
    /// What remains for the host's `bootargs`.
    pub host_bootargs: String,
    /// Size of the guest pool for a user-space VMM, in MiB (0 = none).
    pub guest_pool_mib: u64,
    /// `rampart.unguarded-dma=on`: the host gets the DMA masters no SMMU
    /// Rampart owns guards (development only; `devices.rs`).
    pub unguarded_dma: bool,
    /// `rampart.oracle-every=K`: the oracle's correspondence-check interval
    /// (test builds with the oracle only; `None`: the build's default).
    pub oracle_every: Option<u64>,
    /// `rampart.mutant=<name>`: the planted bug to turn on (test builds
    /// with the `mutants` feature only; the hypervisor checks the name).
    pub mutant: Option<String>,
}

/// Splits `bootargs` into Rampart's options and the host's command line.
///
/// # Errors
///
/// [`BootError::NoHostImage`] when `rampart.host=` is absent, and
/// [`BootError::BadCommandLine`] for an unknown `rampart.` option, a
/// repeated one, or a value that is not a number.
pub fn parse(bootargs: &str) -> Result<CommandLine, BootError> {
    let mut host_image = None;
    let mut guest_pool_mib = None;
    let mut unguarded_dma = None;
    let mut oracle_every = None;
    let mut mutant = None;
    let mut host = Vec::new();
    let mut separator_seen = false;
    for word in bootargs.split_ascii_whitespace() {
        if word == "--" && !separator_seen {
            separator_seen = true;
            continue;
        }
        let Some(option) = word.strip_prefix(OPTION_PREFIX) else {
            host.push(word);
            continue;
        };
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        let full_key = &word[..OPTION_PREFIX.len() + key.len()];
        if full_key == HOST_IMAGE_KEY {
            if host_image.is_some() {
                return Err(BootError::BadCommandLine(alloc::format!(
                    "{HOST_IMAGE_KEY} given twice"
                )));
            }
            host_image = Some(parse_number(value).ok_or_else(|| {
                BootError::BadCommandLine(alloc::format!(
                    "{HOST_IMAGE_KEY}=`{value}` is not an address (use 0x... or decimal)"
                ))
            })?);
        } else if full_key == GUEST_POOL_KEY {
            if guest_pool_mib.is_some() {
                return Err(BootError::BadCommandLine(alloc::format!("{GUEST_POOL_KEY} given twice")));
            }
            let mib = value.parse::<u64>().ok().filter(|&m| m <= 1 << 20).ok_or_else(|| {
                BootError::BadCommandLine(alloc::format!("{GUEST_POOL_KEY}=`{value}` is not a size in MiB"))
            })?;
            guest_pool_mib = Some(mib);
        } else if full_key == UNGUARDED_DMA_KEY {
            if unguarded_dma.is_some() {
                return Err(BootError::BadCommandLine(alloc::format!("{UNGUARDED_DMA_KEY} given twice")));
            }
            unguarded_dma = Some(match value {
                "on" => true,
                "off" => false,
                _ => {
                    return Err(BootError::BadCommandLine(alloc::format!(
                        "{UNGUARDED_DMA_KEY}=`{value}`: use on or off"
                    )));
                }
            });
        } else if full_key == ORACLE_EVERY_KEY {
            if oracle_every.is_some() {
                return Err(BootError::BadCommandLine(alloc::format!("{ORACLE_EVERY_KEY} given twice")));
            }
            oracle_every = Some(value.parse::<u64>().map_err(|_| {
                BootError::BadCommandLine(alloc::format!("{ORACLE_EVERY_KEY}=`{value}` is not a number"))
            })?);
        } else if full_key == MUTANT_KEY {
            if mutant.is_some() {
                return Err(BootError::BadCommandLine(alloc::format!("{MUTANT_KEY} given twice")));
            }
            if value.is_empty() {
                return Err(BootError::BadCommandLine(alloc::format!("{MUTANT_KEY}= names no planted bug")));
            }
            mutant = Some(value.to_string());
        } else {
            return Err(BootError::BadCommandLine(alloc::format!(
                "unknown option `{word}`"
            )));
        }
    }
    Ok(CommandLine {
        host_image: host_image.ok_or(BootError::NoHostImage)?,
        host_bootargs: host.join(" ").to_string(),
        guest_pool_mib: guest_pool_mib.unwrap_or(0),
        unguarded_dma: unguarded_dma.unwrap_or(false),
        oracle_every,
        mutant,
    })
}

/// Parses `0x`-prefixed hexadecimal or decimal.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_rampart_options_and_passes_the_rest() {
        let c = parse("rampart.host=0x42000000 -- console=ttyAMA0 earlycon -- init-arg").unwrap();
        assert_eq!(c.host_image, 0x4200_0000);
        assert_eq!(c.host_bootargs, "console=ttyAMA0 earlycon -- init-arg");
        let c = parse("quiet rampart.host=1107296256").unwrap();
        assert_eq!(c.host_image, 0x4200_0000);
        assert_eq!(c.host_bootargs, "quiet");
    }

    #[test]
    fn reads_the_guest_pool_size() {
        assert_eq!(parse("rampart.host=0x1 rampart.pool=64").unwrap().guest_pool_mib, 64);
        assert_eq!(parse("rampart.host=0x1").unwrap().guest_pool_mib, 0);
        for bad in ["rampart.host=0x1 rampart.pool=", "rampart.host=0x1 rampart.pool=64M", "rampart.host=0x1 rampart.pool=1 rampart.pool=2"] {
            assert!(matches!(parse(bad), Err(BootError::BadCommandLine(_))), "{bad}");
        }
    }

    #[test]
    fn reads_the_mutant_option() {
        assert_eq!(parse("rampart.host=0x1").unwrap().mutant, None);
        let c = parse("rampart.host=0x1 rampart.mutant=teardown-no-zero -- quiet").unwrap();
        assert_eq!(c.mutant.as_deref(), Some("teardown-no-zero"));
        assert_eq!(c.host_bootargs, "quiet");
        for bad in ["rampart.host=0x1 rampart.mutant=", "rampart.host=0x1 rampart.mutant", "rampart.host=0x1 rampart.mutant=a rampart.mutant=b"] {
            assert!(matches!(parse(bad), Err(BootError::BadCommandLine(_))), "{bad}");
        }
    }

    #[test]
    fn reads_the_unguarded_dma_option() {
        assert!(!parse("rampart.host=0x1").unwrap().unguarded_dma);
        assert_eq!(parse("rampart.host=0x1").unwrap().oracle_every, None);
        assert_eq!(parse("rampart.host=0x1 rampart.oracle-every=0").unwrap().oracle_every, Some(0));
        assert_eq!(parse("rampart.host=0x1 rampart.oracle-every=17").unwrap().oracle_every, Some(17));
        for bad in ["rampart.host=0x1 rampart.oracle-every=", "rampart.host=0x1 rampart.oracle-every=-1", "rampart.host=0x1 rampart.oracle-every=1 rampart.oracle-every=1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("rampart.host=0x1 rampart.unguarded-dma=on").unwrap().unguarded_dma);
        assert!(!parse("rampart.host=0x1 rampart.unguarded-dma=off").unwrap().unguarded_dma);
        // Never passed on to the host.
        assert_eq!(parse("rampart.host=0x1 rampart.unguarded-dma=on -- quiet").unwrap().host_bootargs, "quiet");
        for bad in [
            "rampart.host=0x1 rampart.unguarded-dma",
            "rampart.host=0x1 rampart.unguarded-dma=yes",
            "rampart.host=0x1 rampart.unguarded-dma=on rampart.unguarded-dma=on",
        ] {
            assert!(matches!(parse(bad), Err(BootError::BadCommandLine(_))), "{bad}");
        }
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert_eq!(parse(""), Err(BootError::NoHostImage));
        assert_eq!(parse("console=ttyAMA0"), Err(BootError::NoHostImage));
        for bad in [
            "rampart.host=",
            "rampart.host=0x",
            "rampart.host=0xZZ",
            "rampart.host",
            "rampart.host=0x1 rampart.host=0x2",
            "rampart.hots=0x1",
            "rampart.=1",
        ] {
            assert!(
                matches!(parse(bad), Err(BootError::BadCommandLine(_))),
                "{bad} gave {:?}",
                parse(bad)
            );
        }
    }
}
