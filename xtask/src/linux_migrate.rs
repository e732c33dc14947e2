//! Issue 14, secure migration between two Linux hosts: the case
//! `linux-migrate/two-hosts`.
//!
//! Two QEMU machines, each Rampart with Debian's stock kernel as the host
//! and `rampart-vmm`, with **different device secrets** (so different
//! attestation identities) and the same migration secret. They are linked
//! only by a loopback TCP socket of this machine: QEMU's `-netdev socket`
//! (`listen=127.0.0.1:P` on the destination, `connect=` on the source)
//! behind a `virtio-net-pci` on each, whose DMA goes through the SMMU
//! Rampart owns; `/init` loads `virtio_net` and sets a static address
//! (`linux_migrate/two_hosts.sh`, sourced on both). Then:
//!
//! 1. the source runs the protected `count` guest, `rampart-vmm
//!    migrate-out count --to 10.0.0.2:PORT` moves it live, and the
//!    destination's `migrate-in` runs it on from the next count;
//! 2. a second count guest is sent with one byte flipped on the wire: the
//!    destination refuses it with `NOT_AUTHENTIC` and holds nothing of it;
//! 3. the first stream, saved by the source, is sent again: refused with
//!    `STALE_STREAM`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, linux, linux_vmm};

const SCRIPT: &str = include_str!("linux_migrate/two_hosts.sh");
/// Each machine's time limit.
const TIMEOUT: Duration = Duration::from_secs(420);
/// The TCP port `migrate-in` listens on (inside the private link).
const PORT: u16 = 7014;
/// The byte the hostile sender flips: in the fourth page record (the
/// preamble and header are 1 600 bytes, a page record 4 136).
pub const FLIP: u64 = 1600 + 3 * 4136 + 500;
/// The network drivers, in load order (Debian builds them as modules).
const NET_MODULES: [(&str, &str); 3] = [
    ("net/core/failover.ko", "failover"),
    ("drivers/net/net_failover.ko", "net_failover"),
    ("drivers/net/virtio_net.ko", "virtio_net"),
];

/// Registers `linux-migrate/two-hosts` (skipped with `--no-linux`).
pub fn cases(args: &crate::suite::TestArgs, case: &mut linux_vmm::CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    case("linux-migrate/two-hosts".into(), &two_hosts_case);
}

/// One of the two machines.
fn machine(
    hyp: std::path::PathBuf,
    role: &str,
    addr: &str,
    peer: &str,
    net: &str,
    mac: &str,
) -> Result<Machine> {
    crate::guests::guests()?;
    let count = artifacts::build_dir().join("guests").join("count.bundle");
    if !count.is_file() {
        bail!("no signed bundle {}", count.display());
    }
    let modules: Vec<(std::path::PathBuf, String)> = NET_MODULES
        .iter()
        .map(|(rel, name)| {
            Ok((
                linux::debian_module(rel)?,
                format!("lib/modules/rampart-net/{name}.ko"),
            ))
        })
        .collect::<Result<_>>()?;
    let mut files: Vec<(std::path::PathBuf, &str)> = vec![
        (linux_vmm::vmm_binary()?, "bin/rampart-vmm"),
        (count, "guests/count.bundle"),
    ];
    files.extend(modules.iter().map(|(p, n)| (p.clone(), n.as_str())));
    let script =
        format!("ROLE={role}\nADDR={addr}\nPEER={peer}\nPORT={PORT}\nFLIP={FLIP}\n{SCRIPT}");
    let host = linux::prepare_with(&files, &script)?;
    let mut m = Machine::new(hyp);
    m.smp = 2;
    m.mem = "1G".into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={} -- console=ttyAMA0 earlycon panic=-1 {}",
        linux_vmm::POOL_MIB,
        linux::BRIEF_FLAG
    );
    linux::add_pci_devices(&mut m)?;
    m.extra.extend([
        "-netdev".to_string(),
        format!("socket,id=mig0,{net}"),
        "-device".to_string(),
        // No option ROM: Debian's QEMU does not ship efi-virtio.rom.
        format!("virtio-net-pci,netdev=mig0,mac={mac},romfile="),
    ]);
    Ok(m)
}

/// A free TCP port on 127.0.0.1 for the link.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn two_hosts_case() -> Result<String> {
    let link = free_port()?;
    let dest = machine(
        crate::migrate::dest_hypervisor()?,
        "dest",
        "10.0.0.2",
        "10.0.0.1",
        &format!("listen=127.0.0.1:{link}"),
        "52:54:00:14:00:02",
    )?;
    let source = machine(
        artifacts::hypervisor()?,
        "source",
        "10.0.0.1",
        "10.0.0.2",
        &format!("connect=127.0.0.1:{link}"),
        "52:54:00:14:00:01",
    )?;
    let dest_thread =
        std::thread::spawn(move || dest.run(TIMEOUT, Some("RAMPART-INIT: done"), false));
    // The source's QEMU connects to the destination's socket at start.
    std::thread::sleep(Duration::from_secs(3));
    let source_run = source.run(TIMEOUT, Some("RAMPART-INIT: done"), false);
    let dest_run = dest_thread
        .join()
        .map_err(|_| anyhow!("the destination's thread panicked"))??;
    let source_run = source_run?;
    let dir = artifacts::build_dir().join("linux");
    let _ = std::fs::create_dir_all(&dir);
    for (run, what) in [(&source_run, "source"), (&dest_run, "dest")] {
        let text = format!(
            "{}\n--- QEMU: {}\n--- stderr:\n{}",
            run.console, run.command, run.stderr
        );
        let _ = std::fs::write(dir.join(format!("migrate-{what}.log")), text);
    }
    for (run, what, file) in [
        (&source_run, "source", "source"),
        (&dest_run, "destination", "dest"),
    ] {
        if run.timed_out {
            bail!(run.failure(&format!(
                "the {what} timed out (console: build/linux/migrate-{file}.log)"
            )));
        }
    }
    let attestation_key = |run: &Run| {
        run.console
            .lines()
            .find(|l| l.contains("attestation key"))
            .map(str::to_owned)
    };
    if attestation_key(&source_run).is_some()
        && attestation_key(&source_run) == attestation_key(&dest_run)
    {
        bail!(
            "both machines report the same attestation key: the destination was not built with another device secret"
        );
    }
    // When each step ended, from QEMU's start (the boot is most of it).
    let at = |run: &Run, mark: &str| {
        run.lines
            .iter()
            .find(|(_, l)| l.contains(mark))
            .map_or_else(
                || "?".to_string(),
                |(t, _)| format!("{:.0}", t.as_secs_f64()),
            )
    };
    let times = format!(
        "; source: /init at {} s, migrated at {} s, done at {} s; destination: /init at {} s, done at {} s",
        at(&source_run, "RAMPART-INIT: start"),
        at(&source_run, "RAMPART-MIGRATE: out1 exit"),
        at(&source_run, "RAMPART-INIT: done"),
        at(&dest_run, "RAMPART-INIT: start"),
        at(&dest_run, "RAMPART-INIT: done"),
    );
    check(&source_run.console, &dest_run.console)
        .map(|s| s + &times)
        .map_err(|e| {
            anyhow!("{e}\n  consoles: build/linux/migrate-source.log, build/linux/migrate-dest.log")
        })
}

/// The number at the end of `line`.
fn last_number(line: &str) -> Option<u64> {
    let digits: String = line
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// Reads both consoles; returns a summary.
pub fn check(source: &str, dest: &str) -> Result<String, String> {
    fn find<'a>(console: &'a str, text: &str) -> Option<&'a str> {
        console
            .lines()
            .find(|l| l.contains(text))
            .map(str::trim_end)
    }
    let status = |console: &str, step: &str, want: &str| -> Result<(), String> {
        let l = find(console, &format!("RAMPART-MIGRATE: {step} exit "))
            .ok_or_else(|| format!("no exit status for {step}"))?;
        if l.ends_with(&format!("exit {want}")) {
            Ok(())
        } else {
            Err(format!("{step}: want exit {want}: {l}"))
        }
    };
    for l in source.lines().chain(dest.lines()) {
        if l.contains("RAMPART-MIGRATE: insmod") || l.contains("never counted") {
            return Err(l.trim_end().to_string());
        }
    }
    // 1. Live.
    status(source, "out1", "0")?;
    status(source, "run1", "0")?;
    find(
        source,
        "OUT1: migrate-out: the destination accepted the stream",
    )
    .ok_or("the destination did not accept the stream")?;
    find(source, "RUN1: [count] rampart-vmm: exported")
        .ok_or("the source's run did not end as exported")?;
    // The source's last lines; the very last may be the line it stopped
    // in, printed unfinished when its run ended ("GUEST-COUNT 26" of 2640).
    let tail: Vec<(u64, String)> = source
        .lines()
        .filter_map(|l| l.split_once("RUN1: (last) [count] GUEST-COUNT "))
        .filter_map(|(_, r)| {
            let digits = r.trim_end();
            Some((digits.parse().ok()?, digits.to_string()))
        })
        .collect();
    let (last, partial) = match tail.as_slice() {
        [.., (a, _), (b, text)] if *b != a + 1 => (*a, Some(text.clone())),
        [.., (b, _)] => (*b, None),
        [] => return Err("no count on the source".into()),
    };
    status(dest, "in1", "143")?;
    find(dest, "in1 counted on").ok_or("the migrated guest did not count on")?;
    let in1: Vec<&str> = dest
        .lines()
        .filter_map(|l| l.split_once("IN1: [migrated] "))
        .map(|(_, r)| r.trim_end())
        .collect();
    let counts: Vec<u64> = in1
        .iter()
        .filter(|l| l.starts_with("GUEST-COUNT "))
        .filter_map(|l| last_number(l))
        .collect();
    let first = *counts.first().ok_or("no count on the destination")?;
    // If the source stopped in the middle of a line, the rest of it comes
    // first at the destination (the guest's console store in flight is
    // executed again there).
    let fragment = in1
        .iter()
        .find(|l| !l.starts_with("GUEST-COUNT ") && !l.contains("rampart-vmm"))
        .map(|l| l.chars().filter(char::is_ascii_digit).collect::<String>())
        .unwrap_or_default();
    let stopped_in = (last + 1).to_string();
    let how = if first == last + 1 && partial.is_none() {
        "the next count"
    } else if first == last + 2
        && !fragment.is_empty()
        && stopped_in.ends_with(&fragment)
        && partial.as_deref().is_none_or(|p| stopped_in.starts_with(p))
    {
        "the rest of the line it stopped in, then the next count"
    } else {
        return Err(format!(
            "the guest stopped at {last} (then {partial:?}) on the source and went on at {first} on the destination (first lines {:?})",
            &in1[..in1.len().min(3)]
        ));
    };
    if counts.windows(2).take(7).any(|w| w[1] != w[0] + 1) {
        return Err(format!("the destination's counts skip: {counts:?}"));
    }
    let sent = find(source, "OUT1: migrate-out: sent ").ok_or("no transfer summary")?;
    let imported =
        find(dest, "IN1: [migrated] rampart-vmm: migrate-in: VM ").ok_or("no import line")?;
    // The source run gives guest RAM on first touch: migrate-out gave the
    // rest before the export, and the destination got all of it.
    let filled = source
        .lines()
        .find(|l| {
            l.contains("OUT1: migrate-out: VM ") && l.contains(" pages of guest RAM given now (")
        })
        .map(str::trim_end)
        .ok_or("migrate-out did not give the VM the rest of its RAM")?;
    let number_before = |l: &str, text: &str| -> Option<u64> {
        last_number(l.split_once(text)?.0)
    };
    let given = number_before(filled, " pages of guest RAM given now").unwrap_or(0);
    let pages = number_before(filled, " pages move").ok_or("no RAM size on the source")?;
    if given == 0 {
        return Err(format!(
            "the source's VM held all its RAM already (not launched lazily?): {filled}"
        ));
    }
    let kib = number_before(imported, " KiB of RAM").ok_or("no RAM size on the destination")?;
    if kib != pages * 4 {
        return Err(format!(
            "the destination's VM has {kib} KiB of RAM, the source's {pages} pages: {imported}"
        ));
    }
    // 2. A byte flipped on the wire.
    status(source, "out2", "4")?;
    find(
        source,
        "OUT2: rampart-vmm: migrate-out: the destination refused it: NOT_AUTHENTIC",
    )
    .ok_or("the source did not hear NOT_AUTHENTIC for the flipped stream")?;
    status(dest, "in2", "4")?;
    find(
        dest,
        "migrate-in: refused: VM_IMPORT_DATA returned NOT_AUTHENTIC",
    )
    .ok_or("the flipped byte was not refused with NOT_AUTHENTIC")?;
    let nothing = find(
        dest,
        "IN2: [flipped] rampart-vmm: migrate-in: the destination holds nothing of the VM: ",
    )
    .ok_or("the destination did not show it holds nothing of the refused VM")?;
    // 3. The first stream replayed.
    status(source, "out3", "4")?;
    status(dest, "in3", "4")?;
    find(dest, "migrate-in: refused: VM_IMPORT returned STALE_STREAM")
        .ok_or("the replayed stream was not refused with STALE_STREAM")?;
    find(dest, "LIST: no live VMs").ok_or("VMs left on the destination")?;
    let bytes = find(source, "RAMPART-MIGRATE: stream bytes ")
        .and_then(last_number)
        .unwrap_or(0);
    Ok(format!(
        "stopped at {last} on the source, went on with {how} ({first}); given before the export: {}; {bytes}-byte stream; {}; {}; flipped byte: NOT_AUTHENTIC, {}; replay: STALE_STREAM",
        filled.split_once(": ").map_or("", |(_, r)| r.split_once(": ").map_or(r, |(_, r)| r)),
        sent.split("migrate-out: ").nth(1).unwrap_or_default(),
        imported.split("migrate-in: ").nth(1).unwrap_or_default(),
        nothing
            .split("holds nothing of the VM: ")
            .nth(1)
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "\
RAMPART-MIGRATE: out1 exit 0
RAMPART-MIGRATE: run1 exit 0
RUN1: [count] rampart-vmm: exported (rampart-vmm migrate-out): the VM left this machine; 0 passed
RUN1: (last) [count] GUEST-COUNT 41
RUN1: (last) [count] GUEST-COUNT 42
OUT1: migrate-out: VM 0x1 (run by pid 127) to 10.0.0.2:7014 (destination identity d9f4bc10c43f3077...)
OUT1: migrate-out: VM 0x1: 40 pages of guest RAM given now (24 held already) in 25 calls: all 64 pages move
OUT1: migrate-out: sent 267680 bytes (261 KiB), 67 records, in 1.000 s, 0.26 MiB/s
OUT1: migrate-out: the destination accepted the stream
RAMPART-MIGRATE: stream bytes 267680
RAMPART-MIGRATE: out2 exit 4
OUT2: rampart-vmm: migrate-out: the destination refused it: NOT_AUTHENTIC
RAMPART-MIGRATE: out3 exit 4
";
    const DEST: &str = "\
RAMPART-MIGRATE: in1 counted on
RAMPART-MIGRATE: in1 exit 143
IN1: [migrated] rampart-vmm: migrate-in: VM 0x1 imported (256 KiB of RAM, 1 vCPU): 267680 bytes
IN1: [migrated] GUEST-COUNT 43
IN1: [migrated] GUEST-COUNT 44
RAMPART-MIGRATE: in2 exit 4
IN2: [flipped] rampart-vmm: migrate-in: refused: VM_IMPORT_DATA returned NOT_AUTHENTIC (x)
IN2: [flipped] rampart-vmm: migrate-in: the destination holds nothing of the VM: VM 0x2 is gone; its 90 pages read zero
RAMPART-MIGRATE: in3 exit 4
IN3: [replayed] rampart-vmm: migrate-in: refused: VM_IMPORT returned STALE_STREAM (x)
LIST: no live VMs
";

    #[test]
    fn reads_a_good_run_and_refuses_bad_ones() {
        let ok = check(SOURCE, DEST).unwrap();
        assert!(
            ok.contains("stopped at 42") && ok.contains("the next count (43)"),
            "{ok}"
        );
        let mid = DEST.replace(
            "IN1: [migrated] GUEST-COUNT 43\nIN1: [migrated] GUEST-COUNT 44",
            "IN1: [migrated] NT 43\nIN1: [migrated] GUEST-COUNT 44\nIN1: [migrated] GUEST-COUNT 45",
        );
        assert!(check(SOURCE, &mid).unwrap().contains("rest of the line"));
        // The source printed the line it stopped in unfinished.
        let cut = SOURCE.replace(
            "RUN1: (last) [count] GUEST-COUNT 42\n",
            "RUN1: (last) [count] GUEST-COUNT 42\nRUN1: (last) [count] GUEST-COUNT 4\n",
        );
        let mid3 = DEST.replace(
            "IN1: [migrated] GUEST-COUNT 43\nIN1: [migrated] GUEST-COUNT 44",
            "IN1: [migrated] 3\nIN1: [migrated] GUEST-COUNT 44\nIN1: [migrated] GUEST-COUNT 45",
        );
        assert!(check(&cut, &mid3).unwrap().contains("stopped at 42"));
        assert!(check(&cut, &mid3.replace("] 3\n", "] 7\n")).is_err());
        assert!(
            check(&cut, DEST).is_err(),
            "an unfinished line needs its rest"
        );
        let bad = |s: &str, d: &str| check(s, d).unwrap_err();
        assert!(bad(SOURCE, &DEST.replace("COUNT 43", "COUNT 1")).contains("went on at"));
        assert!(bad(SOURCE, &DEST.replace("in2 exit 4", "in2 exit 0")).contains("in2"));
        assert!(
            bad(SOURCE, &DEST.replace("STALE_STREAM", "NOT_AUTHENTIC")).contains("STALE_STREAM")
        );
        assert!(bad(SOURCE, &DEST.replace("holds nothing", "holds")).contains("nothing"));
        assert!(bad(SOURCE, &DEST.replace("no live VMs", "0x1")).contains("left"));
        assert!(bad(&SOURCE.replace("out1 exit 0", "out1 exit 1"), DEST).contains("out1"));
        // A VM that arrives with less RAM, or a source that gave nothing.
        assert!(bad(SOURCE, &DEST.replace("(256 KiB", "(96 KiB")).contains("96 KiB"));
        assert!(bad(&SOURCE.replace(": 40 pages", ": 0 pages"), DEST).contains("lazily"));
        assert!(bad(&SOURCE.replace("pages of guest RAM given", "given"), DEST).contains("rest"));
        assert_eq!(last_number("x GUEST-COUNT 17"), Some(17));
        assert_eq!(last_number("abc"), None);
    }
}
