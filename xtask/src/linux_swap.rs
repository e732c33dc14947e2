//! Issue 14, sealed swap, end to end: `linux-vmm/swap` boots Rampart with
//! Debian's kernel as the host (`linux_vmm::machine`) and runs the
//! protected `swap` guest (`guest/swap`) under `rampart-vmm run --swap
//! FILE --resident N`, with a working set more than three times what it
//! may hold (`linux_swap/swap.sh`). The case passes if the guest's memory test
//! passes to the end with pages going out and in, the four hostile modes
//! (`--swap-attack`) are each refused by the hypervisor with the expected
//! error and leave the VM unchanged, no restore outside them is refused,
//! and the guest's secret is found neither in the swap file nor in any
//! pool page of the VM the host can read (`--swap-scan`); the guest image
//! itself is checked not to hold it.
//!
//! `cargo xtask bench swap` boots the same way and times the guest
//! without swap and with each of [`BENCH_RESIDENT`] (docs/perf.md).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::{artifacts, linux_vmm};

const SCRIPT: &str = include_str!("linux_swap/swap.sh");
/// The swap guest's RAM (its signed manifest, `guests::GUESTS`): 256
/// pages, of which its image takes about 37 and its working set the rest.
const GUEST_RAM: u64 = 1 << 20;
/// Pages the guest may hold in the test: a quarter of its RAM, under a
/// third of its working set.
pub const RESIDENT: u64 = 64;
/// Limits `cargo xtask bench swap` times (`none`: without `--swap`): a
/// quarter, half and three quarters of guest RAM swapped out.
pub const BENCH_RESIDENT: [&str; 4] = ["none", "192", "128", "64"];
/// The boot's time limit.
const TIMEOUT: Duration = Duration::from_secs(240);
/// The bench boot's.
const BENCH_TIMEOUT: Duration = Duration::from_secs(900);

/// The swap guest's secret for `ram_size` (`guest/swap`'s `secret`), as
/// the bytes it writes (two little-endian words).
#[must_use]
pub fn secret(ram_size: u64) -> [u8; 16] {
    let a = (ram_size ^ 0x5357_4150_5345_4352).rotate_left(13) ^ 0x0123_4567_89ab_cdef;
    let b = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2121_2121_2121_2121;
    let mut out = [0; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Registers `linux-vmm/swap` (skipped with `--no-linux`).
pub fn cases(args: &crate::suite::TestArgs, case: &mut linux_vmm::CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    case("linux-vmm/swap".into(), &swap_case);
}

/// Boots once with `bench` limits to time after the test run; returns the
/// console.
fn boot(bench: &[&str], timeout: Duration) -> Result<String> {
    let image = artifacts::build_dir().join("guests").join("swap.bin");
    let s = secret(GUEST_RAM);
    let script = format!("SECRET={}\nRESIDENT={RESIDENT}\nBENCH=\"{}\"\n{SCRIPT}", hex(&s), bench.join(" "));
    // RAMPART_SWAP_HYP_FEATURES=<feature>: the same run on a hypervisor
    // built with that feature (a `mutant-swap-*` one must make it fail).
    let m = match std::env::var("RAMPART_SWAP_HYP_FEATURES") {
        Ok(f) if !f.is_empty() => {
            let features: Vec<&str> = f.split(',').collect();
            linux_vmm::machine_with(artifacts::hypervisor_with_features(&features)?, 2, "1G", "max", &script)?
        }
        _ => linux_vmm::machine(2, "1G", "max", &script)?,
    };
    // The image is built (and signed) by `machine`: it must not hold the
    // secret, or finding it would prove nothing.
    let bin = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    if bin.windows(8).any(|w| w == &s[..8] || w == &s[8..]) {
        bail!("{} holds the secret itself", image.display());
    }
    let run = m.run(timeout, None, false)?;
    let log = artifacts::build_dir().join("linux").join("vmm-swap.log");
    let _ = std::fs::write(&log, &run.console);
    if run.timed_out {
        bail!(run.failure(&format!("timed out after {timeout:?} (whole console: {})", log.display())));
    }
    Ok(run.console)
}

fn swap_case() -> Result<String> {
    let console = boot(&[], TIMEOUT)?;
    check(&console).map_err(|e| {
        let log = artifacts::build_dir().join("linux").join("vmm-swap.log");
        anyhow!("{e}\n  whole console: {}", log.display())
    })
}

/// The hostile modes and the error each must get.
const ATTACKS: [(&str, &str); 4] = [
    ("a bit flipped in a sealed page in the swap file", "SEAL_INVALID"),
    ("an old version replayed", "STALE_VERSION"),
    ("two sealed pages swapped in the swap file", "SEAL_INVALID"),
    ("a sealed page restored into another VM", "SEAL_INVALID"),
];

/// Reads the console of a `swap.sh` boot; returns a summary.
pub fn check(console: &str) -> Result<String, String> {
    let lines: Vec<&str> = console.lines().map(str::trim_end).collect();
    let find = |text: &str| lines.iter().copied().find(|l| l.contains(text));
    if let Some(l) = lines.iter().find(|l| l.contains("[swap]") && (l.contains("FAIL") || l.contains("GUEST-FAIL"))) {
        return Err(format!("the swap run reported: {l}"));
    }
    let done = find("[swap] GUEST-DONE").ok_or("the swap guest never finished (no GUEST-DONE)")?;
    if !done.ends_with(" 0 failed") {
        return Err(format!("the swap guest failed: {done}"));
    }
    find("[swap] GUEST-PASS swap-pattern").ok_or("no GUEST-PASS swap-pattern")?;
    for (what, error) in ATTACKS {
        let l = lines
            .iter()
            .find(|l| l.contains("swap attack refused: ") && l.contains(what))
            .ok_or_else(|| format!("no refusal of `{what}`"))?;
        if !l.contains(&format!("refused with {error}")) || !l.contains("the VM is unchanged") {
            return Err(format!("`{what}`: want {error} and the VM unchanged: {l}"));
        }
    }
    // `swap: E evictions, R restores, F refusals; ...`: every refusal is
    // one of the attacks' five restores.
    let summary = find("rampart-vmm: swap: ")
        .and_then(|_| lines.iter().rev().find(|l| l.contains("rampart-vmm: swap: ") && l.contains(" evictions, ")));
    let summary = summary.ok_or("no swap summary line")?;
    let number = |word: &str| -> Option<u64> {
        let words: Vec<&str> = summary.split_whitespace().collect();
        let i = words.iter().position(|w| w.trim_end_matches([',', ';']) == word)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let (evictions, restores, refusals) = (
        number("evictions").ok_or("no eviction count")?,
        number("restores").ok_or("no restore count")?,
        number("refusals").ok_or("no refusal count")?,
    );
    if refusals != 5 {
        return Err(format!("want exactly the attacks' 5 refusals: {summary}"));
    }
    if evictions < 400 || restores < 400 {
        return Err(format!("too little swapping to mean anything: {summary}"));
    }
    let scan = find("swap scan: ").ok_or("no swap scan line")?;
    if !scan.contains("appears 0 times in /tmp/swap.img and 0 times in the") {
        return Err(format!("the secret leaked: {scan}"));
    }
    let evicted_at_scan: u64 = scan
        .rsplit_once("; ")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no evicted count in {scan}"))?;
    if evicted_at_scan < 100 {
        return Err(format!("too few pages evicted at the scan for it to mean anything: {scan}"));
    }
    let status = find("RAMPART-SWAP: run exit ").ok_or("the run's status is missing")?;
    if !status.ends_with("exit 0") {
        return Err(format!("rampart-vmm: {status}"));
    }
    let stats = find("RAMPART-SWAP-STATS: swap: ").ok_or("`rampart-vmm stats` shows no swap line")?;
    let limit = find("rampart-vmm: swap: ").unwrap_or_default();
    Ok(format!(
        "{evictions} evictions, {restores} restores, 4 attacks refused (5 refusals), secret in neither the file nor {} host-readable pool pages; {}; stats: {}",
        scan.split(" times in the ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?"),
        limit.split("rampart-vmm: ").nth(1).unwrap_or_default(),
        stats.trim_start_matches("RAMPART-SWAP-STATS: ")
    ))
}

/// `cargo xtask bench swap`: the guest's wall time without swap and with
/// each limit of [`BENCH_RESIDENT`].
pub fn bench() -> Result<()> {
    let console = boot(&BENCH_RESIDENT, BENCH_TIMEOUT)?;
    // The same boot ran the test first: it must pass too.
    let summary = check(&console).map_err(|e| anyhow!("the test run before the bench failed: {e}"))?;
    println!("test run: {summary}");
    let rows: Vec<&str> =
        console.lines().filter_map(|l| l.split_once("RAMPART-SWAP: bench ").map(|(_, r)| r.trim_end())).collect();
    if rows.len() != BENCH_RESIDENT.len() {
        bail!("{} of {} bench runs reported:\n{}", rows.len(), BENCH_RESIDENT.len(), rows.join("\n"));
    }
    println!("swap guest (1 MiB, protected) under rampart-vmm, 2 host CPUs under QEMU TCG:");
    println!("| resident limit | exit | wall time | swap | pages/s (VMM side) | µs per VM_EVICT/VM_RESTORE call |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let w: Vec<&str> = r.split_whitespace().collect();
        let field = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1)).copied().unwrap_or("?");
        let swap = r.split_once(" swap ").and_then(|(_, s)| s.split_once(" rate ")).map_or("?", |(s, _)| s);
        let ms: f64 = field("wall").parse().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.3} s | {swap} | {} | {} |",
            w[0],
            field("exit"),
            ms / 1000.0,
            field("rate"),
            field("call")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_the_guests() {
        // guest/swap computes the same words (little-endian in memory).
        let s = secret(1 << 20);
        let a = u64::from_le_bytes(s[..8].try_into().unwrap());
        assert_eq!(a, ((1u64 << 20) ^ 0x5357_4150_5345_4352).rotate_left(13) ^ 0x0123_4567_89ab_cdef);
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }

    const GOOD: &str = "\
[swap] rampart-vmm: swap: 450 pages evicted to /tmp/swap.img, 64 resident (limit 64)
[swap] rampart-vmm: swap attack refused: a bit flipped in a sealed page in the swap file: VM_RESTORE of 0x801ff000 refused with SEAL_INVALID; the VM is unchanged (the honest record then restored)
[swap] rampart-vmm: swap attack refused: an old version replayed: VM_RESTORE of 0x801fe000 refused with STALE_VERSION; the VM is unchanged (the honest record then restored) (version 1 replayed, current 2)
[swap] rampart-vmm: swap attack refused: two sealed pages swapped in the swap file: VM_RESTORE of 0x801fd000 refused with SEAL_INVALID; the VM is unchanged (the honest record then restored); VM_RESTORE of 0x801fc000 refused with SEAL_INVALID; the VM is unchanged
[swap] rampart-vmm: swap attack refused: a sealed page restored into another VM: VM_RESTORE of VM 0x1's page 0x801fb000 (version 1) into VM 0x2 (where it is evicted, version 1) refused with SEAL_INVALID; the VM is unchanged (the record then restored into it)
[swap] GUEST-PASS swap-pattern
[swap] GUEST-DONE 3 passed, 0 failed
[swap] rampart-vmm: swap: 2900 evictions, 2850 restores, 5 refusals; 64 pages resident, 450 evicted at the end
[swap] rampart-vmm: swap scan: the secret appears 0 times in /tmp/swap.img and 0 times in the 80 pool pages the host can read (64 pages are the VM's: reading them aborts); 450 pages evicted now
RAMPART-SWAP: run exit 0
RAMPART-SWAP-STATS: swap: 2900 evictions, 2850 restores, 5 refusals
";

    #[test]
    fn reads_a_good_run_and_refuses_bad_ones() {
        let ok = check(GOOD).unwrap();
        assert!(ok.contains("2900 evictions, 2850 restores"), "{ok}");
        let bad = |from: &str, to: &str| check(&GOOD.replace(from, to)).unwrap_err();
        assert!(bad("appears 0 times in /tmp", "appears 3 times in /tmp").contains("leaked"));
        assert!(bad("0 times in the 80", "1 times in the 80").contains("leaked"));
        assert!(bad("with STALE_VERSION", "with SEAL_INVALID").contains("old version"));
        assert!(bad("5 refusals;", "6 refusals;").contains("5 refusals"));
        assert!(bad("0 failed", "1 failed").contains("failed"));
        assert!(bad("run exit 0", "run exit 1").contains("exit 1"));
        assert!(
            bad("2900 evictions, 2850 restores, 5 refusals;", "20 evictions, 10 restores, 5 refusals;")
                .contains("too little")
        );
        assert!(bad("450 pages evicted now", "3 pages evicted now").contains("too few"));
        let no_attack: String = GOOD.lines().filter(|l| !l.contains("another VM")).map(|l| format!("{l}\n")).collect();
        assert!(check(&no_attack).unwrap_err().contains("another VM"));
    }
}
