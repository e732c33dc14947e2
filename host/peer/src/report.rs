//! What `rampart-peer` reads and prints, independent of KVM (so it is
//! tested on the build machine): the command line, the console's lines,
//! the counters and the `stats:` lines in `rampart-vmm`'s format.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The console's page size.
pub const UART_PAGE: u64 = 0x1000;

/// The help text.
pub const USAGE: &str = "usage: rampart-peer run IMAGE [--mem MIB] [--name NAME]
       rampart-peer run --kernel IMAGE [--initrd FILE] [--mem SIZE] [--cpus N] [--cmdline TEXT] [--name NAME]
       rampart-peer time-to MARKER -- COMMAND [ARG...]";

/// What `rampart-peer` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `run IMAGE`: a bare-metal test guest.
    Bare(Args),
    /// `run --kernel IMAGE`: a Linux guest.
    Linux(LinuxArgs),
    /// `time-to MARKER -- COMMAND...`: run COMMAND, pass its output on,
    /// and say when a line with MARKER first appeared.
    TimeTo {
        /// What to wait for.
        marker: String,
        /// The command and its arguments.
        argv: Vec<String>,
    },
}

impl Command {
    /// Parses the command line (without the program name).
    pub fn parse(args: &[String]) -> Result<Command, String> {
        match args.first().map(String::as_str) {
            Some("time-to") => {
                let marker = args.get(1).ok_or("time-to needs a MARKER")?.clone();
                if marker.is_empty() {
                    return Err("time-to: an empty MARKER".into());
                }
                if args.get(2).map(String::as_str) != Some("--") {
                    return Err("time-to MARKER -- COMMAND: no `--`".into());
                }
                let argv = args[3..].to_vec();
                if argv.is_empty() {
                    return Err("time-to: no COMMAND".into());
                }
                Ok(Command::TimeTo { marker, argv })
            }
            Some("run") if args.iter().any(|a| a == "--kernel") => {
                LinuxArgs::parse(&args[1..]).map(Command::Linux)
            }
            _ => Args::parse(args).map(Command::Bare),
        }
    }
}

/// Most guest RAM for a Linux guest, MiB.
pub const MAX_LINUX_MEM_MIB: u64 = 2048;

/// `run --kernel`'s options (`rampart-vmm run --kernel`'s, with its
/// defaults: 256 MiB, 1 vCPU, `console=ttyAMA0 earlycon panic=-1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxArgs {
    /// The arm64 `Image`.
    pub kernel: String,
    /// The initrd.
    pub initrd: Option<String>,
    /// Guest RAM, MiB (even: RAM is 2 MiB-aligned).
    pub mem_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// The kernel command line.
    pub cmdline: String,
    /// The prefix of every output line.
    pub name: String,
}

/// `192M`, `1G` or `192` (MiB) as MiB.
fn parse_mib(v: &str) -> Option<u64> {
    let (n, unit) = match v.strip_suffix(['G', 'g']) {
        Some(n) => (n, 1024),
        None => (v.strip_suffix(['M', 'm']).unwrap_or(v), 1),
    };
    n.parse::<u64>().ok()?.checked_mul(unit)
}

impl LinuxArgs {
    /// Parses the options after `run`.
    pub fn parse(args: &[String]) -> Result<LinuxArgs, String> {
        let mut it = args.iter();
        let mut a = LinuxArgs {
            kernel: String::new(),
            initrd: None,
            mem_mib: 256,
            cpus: 1,
            cmdline: "console=ttyAMA0 earlycon panic=-1".into(),
            name: "linux".into(),
        };
        while let Some(opt) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{opt} needs a value"));
            match opt.as_str() {
                "--kernel" => a.kernel = value()?.clone(),
                "--initrd" => a.initrd = Some(value()?.clone()),
                "--cmdline" => a.cmdline = value()?.clone(),
                "--name" => a.name = value()?.clone(),
                "--mem" => {
                    let v = value()?;
                    a.mem_mib = parse_mib(v)
                        .filter(|m| (2..=MAX_LINUX_MEM_MIB).contains(m) && m % 2 == 0)
                        .ok_or_else(|| {
                            format!(
                                "--mem {v}: want an even number of MiB, 2..={MAX_LINUX_MEM_MIB}"
                            )
                        })?;
                }
                "--cpus" => {
                    let v = value()?;
                    a.cpus = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=crate::boot::MAX_VCPUS).contains(n))
                        .ok_or_else(|| {
                            format!("--cpus {v}: want 1..={}", crate::boot::MAX_VCPUS)
                        })?;
                }
                s => return Err(format!("unknown option `{s}`")),
            }
        }
        if a.kernel.is_empty() {
            return Err("--kernel needs a value".into());
        }
        Ok(a)
    }
}

/// A `time-to` result line: `MARKER` seen `at` after COMMAND was spawned.
pub fn time_to_line(marker: &str, at: Option<Duration>) -> String {
    match at {
        Some(d) => {
            let us = d.as_micros();
            format!(
                "rampart-peer: time-to \"{marker}\": {}.{:03} ms after the VMM started",
                us / 1000,
                us % 1000
            )
        }
        None => format!("rampart-peer: time-to \"{marker}\": not seen"),
    }
}

/// Most guest RAM the peer gives (MiB): the guests need 1 to 16.
pub const MAX_MEM_MIB: u64 = 1024;

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The guest's flat binary.
    pub image: String,
    /// Guest RAM in MiB (default 16, as `x0` = 0 would mean).
    pub mem_mib: u64,
    /// The prefix of every output line, `[NAME]`.
    pub name: String,
}

impl Args {
    /// Parses `run IMAGE [--mem MIB] [--name NAME]`.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut it = args.iter();
        match it.next().map(String::as_str) {
            Some("run") => {}
            Some(other) => return Err(format!("unknown command `{other}`")),
            None => return Err("no command".into()),
        }
        let mut image = None;
        let mut mem_mib = 16;
        let mut name = None;
        while let Some(a) = it.next() {
            match a.as_str() {
                "--mem" => {
                    let v = it.next().ok_or("--mem needs a value")?;
                    mem_mib = v
                        .parse()
                        .map_err(|_| format!("--mem {v}: not a number of MiB"))?;
                    if mem_mib == 0 || mem_mib > MAX_MEM_MIB {
                        return Err(format!("--mem {v}: want 1..={MAX_MEM_MIB} MiB"));
                    }
                }
                "--name" => name = Some(it.next().ok_or("--name needs a value")?.clone()),
                s if s.starts_with('-') => return Err(format!("unknown option `{s}`")),
                s if image.is_none() => image = Some(s.to_string()),
                s => return Err(format!("unexpected argument `{s}`")),
            }
        }
        let image = image.ok_or("no IMAGE")?;
        let name = name.unwrap_or_else(|| {
            let file = image.rsplit('/').next().unwrap_or(&image);
            file.split('.').next().unwrap_or(file).to_string()
        });
        Ok(Args {
            image,
            mem_mib,
            name,
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `GUEST-DONE n passed, 0 failed`, then `SYSTEM_OFF`.
    Passed,
    /// Failures reported, or no `GUEST-DONE` before the guest stopped.
    GuestFailed,
}

/// Collects console bytes into lines.
#[derive(Debug, Default)]
pub struct Console {
    line: Vec<u8>,
    /// The `GUEST-DONE` line's failure count, once seen.
    pub done_failed: Option<u64>,
}

/// The longest line kept; longer output is split.
const MAX_LINE: usize = 512;

impl Console {
    /// Adds one byte; returns the line it completes (without the newline).
    pub fn push(&mut self, byte: u8) -> Option<String> {
        if byte == b'\r' {
            return None;
        }
        if byte != b'\n' {
            self.line.push(byte);
            if self.line.len() < MAX_LINE {
                return None;
            }
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if let Some(rest) = line.strip_prefix("GUEST-DONE ") {
            // "<n> passed, <m> failed"
            self.done_failed = rest
                .split(", ")
                .nth(1)
                .and_then(|f| f.strip_suffix(" failed"))
                .and_then(|n| n.trim().parse().ok());
        }
        Some(line)
    }

    /// The outcome once the guest has powered off.
    pub fn outcome(&self) -> Outcome {
        if self.done_failed == Some(0) {
            Outcome::Passed
        } else {
            Outcome::GuestFailed
        }
    }
}

/// Exit counters and launch milestones.
#[derive(Debug, Default)]
pub struct Counters {
    /// `KVM_RUN` returns with `KVM_EXIT_MMIO`.
    pub mmio: u64,
    /// Every other `KVM_RUN` return (system events, signals).
    pub other: u64,
    /// MMIO outside the console page (reads as 0, writes ignored).
    pub unhandled_mmio: u64,
    /// The VM and vCPU are set up, before the first `KVM_RUN`.
    pub vm_ready: Option<Duration>,
    /// The first `KVM_RUN` returned.
    pub first_exit: Option<Duration>,
    /// The guest's first console byte.
    pub first_output: Option<Duration>,
    /// The set-up steps before `vm_ready`, each when it was done.
    pub steps: Vec<(&'static str, Duration)>,
    /// vCPUs (0 is printed as 1).
    pub vcpus: u32,
}

impl Counters {
    /// Records that set-up step `what` is done.
    pub fn step(&mut self, what: &'static str, started: Instant) {
        self.steps.push((what, started.elapsed()));
    }

    /// Records `at` (since the process started) in `slot` once.
    pub fn reached(slot: &mut Option<Duration>, started: Instant) {
        if slot.is_none() {
            *slot = Some(started.elapsed());
        }
    }
}

/// The `stats:` lines, in `rampart-vmm`'s format (`host/vmm/src/stats.rs`)
/// so `xtask/src/linux_vmm.rs`'s parser reads both.
pub fn stats(name: &str, c: &Counters, wall: Duration, result: &str) -> String {
    let mut s = String::new();
    let mut put = |k: &str, v: String| {
        let _ = writeln!(s, "[{name}] stats: {k}: {v}");
    };
    let wall_ms = wall.as_millis();
    put(
        "wall time",
        format!("{}.{:03} s", wall_ms / 1000, wall_ms % 1000),
    );
    put("protected", "false".into());
    put("vcpus", c.vcpus.max(1).to_string());
    put("exits EXIT_MMIO", c.mmio.to_string());
    put("exits other", c.other.to_string());
    put("exits total", (c.mmio + c.other).to_string());
    let ms = |d: Option<Duration>| match d {
        None => "-".to_string(),
        Some(d) => {
            let us = d.as_micros();
            format!("{}.{:03} ms", us / 1000, us % 1000)
        }
    };
    put(
        "launch",
        format!(
            "VM ready {}, first exit {}, first console output {} (after the VMM started)",
            ms(c.vm_ready),
            ms(c.first_exit),
            ms(c.first_output)
        ),
    );
    if !c.steps.is_empty() {
        let steps: Vec<String> = c
            .steps
            .iter()
            .map(|(what, at)| format!("{what} {}", ms(Some(*at))))
            .collect();
        put(
            "set-up",
            format!("{} (after the VMM started)", steps.join(", ")),
        );
    }
    put("unhandled MMIO accesses", c.unhandled_mmio.to_string());
    put("result", result.to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        Args::parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_the_command_line() {
        let a = args("run /guests/bench.bin").unwrap();
        assert_eq!(
            a,
            Args {
                image: "/guests/bench.bin".into(),
                mem_mib: 16,
                name: "bench".into()
            }
        );
        let a = args("run x.bin --mem 2 --name r1").unwrap();
        assert_eq!((a.mem_mib, a.name.as_str()), (2, "r1"));
        for bad in [
            "",
            "go x",
            "run",
            "run x --mem",
            "run x --mem 0",
            "run x --mem 4096",
            "run x --mem z",
            "run x y",
            "run x --what",
        ] {
            assert!(args(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn command(s: &[&str]) -> Result<Command, String> {
        Command::parse(&s.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_the_linux_and_time_to_commands() {
        let c = command(&[
            "run",
            "--kernel",
            "/guest/Image",
            "--initrd",
            "/guest/initrd.cpio.gz",
            "--mem",
            "192M",
            "--cpus",
            "2",
            "--cmdline",
            "console=ttyAMA0 quiet",
            "--name",
            "pl1",
        ])
        .unwrap();
        assert_eq!(
            c,
            Command::Linux(LinuxArgs {
                kernel: "/guest/Image".into(),
                initrd: Some("/guest/initrd.cpio.gz".into()),
                mem_mib: 192,
                cpus: 2,
                cmdline: "console=ttyAMA0 quiet".into(),
                name: "pl1".into(),
            })
        );
        let Command::Linux(d) = command(&["run", "--kernel", "k", "--mem", "1G"]).unwrap() else {
            panic!("not a Linux run")
        };
        assert_eq!((d.mem_mib, d.cpus, d.initrd), (1024, 1, None));
        assert_eq!(d.cmdline, "console=ttyAMA0 earlycon panic=-1");
        for bad in [
            &["run", "--kernel"][..],
            &["run", "--kernel", "k", "--mem", "3M"],
            &["run", "--kernel", "k", "--mem", "0"],
            &["run", "--kernel", "k", "--mem", "4G"],
            &["run", "--kernel", "k", "--mem", "99999999999999999999G"],
            &["run", "--kernel", "k", "--cpus", "0"],
            &["run", "--kernel", "k", "--cpus", "9"],
            &["run", "--kernel", "k", "--what"],
            &["run", "--kernel", "k", "extra"],
        ] {
            assert!(command(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(command(&["run", "x.bin"]), Ok(Command::Bare(_))));
        assert_eq!(
            command(&["time-to", "init reached", "--", "rampart-vmm", "run"]).unwrap(),
            Command::TimeTo {
                marker: "init reached".into(),
                argv: vec!["rampart-vmm".into(), "run".into()]
            }
        );
        for bad in [
            &["time-to"][..],
            &["time-to", "m"],
            &["time-to", "m", "--"],
            &["time-to", "m", "x"],
            &["time-to", "", "--", "x"],
        ] {
            assert!(command(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn time_to_lines() {
        assert_eq!(
            time_to_line("init", Some(Duration::from_micros(1_234_567))),
            "rampart-peer: time-to \"init\": 1234.567 ms after the VMM started"
        );
        assert_eq!(
            time_to_line("init", None),
            "rampart-peer: time-to \"init\": not seen"
        );
    }

    #[test]
    fn assembles_lines_and_reads_guest_done() {
        let mut c = Console::default();
        let mut lines = Vec::new();
        for b in b"hi\r\nGUEST-DONE 3 passed, 0 failed\n" {
            lines.extend(c.push(*b));
        }
        assert_eq!(lines, ["hi", "GUEST-DONE 3 passed, 0 failed"]);
        assert_eq!(c.outcome(), Outcome::Passed);
        for b in b"GUEST-DONE 2 passed, 1 failed\n" {
            c.push(*b);
        }
        assert_eq!(c.outcome(), Outcome::GuestFailed);
        assert_eq!(Console::default().outcome(), Outcome::GuestFailed);
        let mut long = Console::default();
        let cut: Vec<String> = std::iter::repeat_n(b'a', MAX_LINE + 1)
            .filter_map(|b| long.push(b))
            .collect();
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].len(), MAX_LINE);
    }

    #[test]
    fn stats_lines_match_rampart_vmm() {
        let c = Counters {
            mmio: 2000,
            other: 1,
            unhandled_mmio: 0,
            vm_ready: Some(Duration::from_micros(1500)),
            first_exit: Some(Duration::from_micros(2250)),
            first_output: None,
            steps: vec![
                ("image read", Duration::from_micros(200)),
                ("VM created", Duration::from_micros(1000)),
            ],
            vcpus: 1,
        };
        let s = stats(
            "b1",
            &c,
            Duration::from_millis(1234),
            "GUEST-DONE 3 passed, 0 failed",
        );
        assert!(s.contains("[b1] stats: wall time: 1.234 s\n"), "{s}");
        assert!(s.contains("[b1] stats: exits EXIT_MMIO: 2000\n"), "{s}");
        assert!(s.contains("[b1] stats: exits total: 2001\n"), "{s}");
        assert!(s.contains("[b1] stats: set-up: image read 0.200 ms, VM created 1.000 ms (after the VMM started)\n"), "{s}");
        assert!(
            s.contains("[b1] stats: launch: VM ready 1.500 ms, first exit 2.250 ms, first console output - (after the VMM started)\n"),
            "{s}"
        );
    }
}
