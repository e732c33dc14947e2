//! Building QEMU command lines and running them with a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Where the host's `Image` is placed for Rampart to start (RAM + 32 MiB).
/// It must lie outside the hypervisor's carve-out, which starts at
/// RAM + 2 MiB (see `hyp/linker.ld`).
pub const HOST_LOAD_ADDRESS: u64 = 0x4200_0000;

/// One QEMU `virt` machine.
#[derive(Clone, Debug)]
pub struct Machine {
    /// `-smp`
    pub smp: u32,
    /// `-m`, e.g. `512M`.
    pub mem: String,
    /// `-cpu`
    pub cpu: String,
    /// Whether EL2 exists (`virtualization=on`).
    pub virtualization: bool,
    /// Whether the PCIe root complex sits behind an emulated SMMUv3
    /// (`iommu=smmuv3`).
    pub smmu: bool,
    /// `-kernel`: the image QEMU enters first.
    pub kernel: PathBuf,
    /// `-initrd`
    pub initrd: Option<PathBuf>,
    /// `-append`
    pub append: String,
    /// Raw files placed at physical addresses (`-device loader`).
    pub loaders: Vec<(PathBuf, u64)>,
    /// Extra arguments appended verbatim.
    pub extra: Vec<String>,
    /// Let a guest reset restart the machine (RAM kept, images reloaded)
    /// instead of ending QEMU (`-no-reboot`, the default). The run's
    /// timeout still bounds a machine that keeps resetting.
    pub allow_reboot: bool,
}

impl Machine {
    /// A machine with the defaults the demo and the tests use.
    pub fn new(kernel: PathBuf) -> Self {
        Machine {
            smp: 2,
            mem: "512M".into(),
            cpu: "max".into(),
            virtualization: true,
            smmu: false,
            kernel,
            initrd: None,
            append: String::new(),
            loaders: Vec::new(),
            extra: Vec::new(),
            allow_reboot: false,
        }
    }

    /// The QEMU command line.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-aarch64");
        let virt = if self.virtualization { "on" } else { "off" };
        let iommu = if self.smmu { ",iommu=smmuv3" } else { "" };
        // Large RAM comes from a backend QEMU maps without reserving it
        // (MAP_NORESERVE): with the kernel's default overcommit heuristic a
        // 64 GiB machine could not start on a 24 GiB build machine, though
        // the guest touches only what it uses.
        let lazy = parse_mem(&self.mem).is_ok_and(|b| b >= LAZY_RAM);
        let backend = if lazy { ",memory-backend=rampart-ram" } else { "" };
        if lazy {
            cmd.arg("-object").arg(format!("memory-backend-ram,id=rampart-ram,size={},reserve=off", self.mem));
        }
        cmd.arg("-M")
            .arg(format!("virt,virtualization={virt},gic-version=3{iommu}{backend}"))
            .arg("-cpu")
            .arg(&self.cpu)
            .arg("-smp")
            .arg(self.smp.to_string())
            .arg("-m")
            .arg(&self.mem)
            .args(["-nographic", "-nic", "none"])
            .args(if self.allow_reboot { &[][..] } else { &["-no-reboot"][..] })
            .arg("-kernel")
            .arg(&self.kernel);
        if let Some(initrd) = &self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        if !self.append.is_empty() {
            cmd.arg("-append").arg(&self.append);
        }
        for (file, addr) in &self.loaders {
            cmd.arg("-device")
                .arg(format!("loader,file={},addr={addr:#x},force-raw=on", file.display()));
        }
        cmd.args(&self.extra);
        cmd
    }

    /// The command line as one shell-quotable string, for error messages.
    pub fn command_line(&self) -> String {
        let cmd = self.command();
        let mut s = cmd.get_program().to_string_lossy().into_owned();
        for arg in cmd.get_args() {
            s.push(' ');
            s.push_str(&arg.to_string_lossy());
        }
        s
    }

    /// Refuses a `-cpu` model that cannot run an AArch64 image at all
    /// (QEMU's 32-bit A, R and M profile models): such a CPU would start
    /// decoding Rampart's A64 code as A32 and hang without a word, so the
    /// reason is given here instead.
    pub fn check_cpu(&self) -> Result<()> {
        let cpu = self.cpu.as_str();
        let aarch32_only = ["arm", "pxa", "sa11", "ti925", "cortex-m", "cortex-r"].iter().any(|p| cpu.starts_with(p))
            || ["cortex-a5", "cortex-a7", "cortex-a8", "cortex-a9", "cortex-a15"].contains(&cpu);
        if aarch32_only {
            anyhow::bail!(
                "-cpu {cpu} has no AArch64 state: Rampart is an AArch64 hypervisor; use a model with EL2 such as {}",
                crate::suite::CPU_MODELS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }

    /// Runs QEMU with the console captured, until it exits or `timeout`
    /// passes. `stop_at`, if given, ends the run early once that text has
    /// appeared on the console. With `echo`, the console is streamed to
    /// stdout as it arrives.
    pub fn run(&self, timeout: Duration, stop_at: Option<&str>, echo: bool) -> Result<Run> {
        self.check_cpu()?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.command_line()))?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let mut stderr = child.stderr.take().context("qemu stderr")?;
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                if tx.send((Instant::now(), text)).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let mut console = String::new();
        let mut marks = Vec::new();
        let mut timed_out = false;
        let mut stopped_early = false;
        let mut cpu_at_stop = None;
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((at, text)) => {
                    if echo {
                        print!("{text}");
                        let _ = std::io::stdout().flush();
                    }
                    marks.push((at.duration_since(start), text.trim_end().to_string()));
                    console.push_str(&text);
                    if let Some(stop) = stop_at
                        && text.contains(stop)
                    {
                        cpu_at_stop = cpu_time(child.id());
                        stopped_early = true;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if start.elapsed() >= timeout {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        if timed_out || stopped_early {
            let _ = child.kill();
        }
        let status = child.wait()?;
        let _ = reader.join();
        // Drain anything still queued.
        for (at, text) in rx.try_iter() {
            marks.push((at.duration_since(start), text.trim_end().to_string()));
            console.push_str(&text);
        }
        let stderr = err_reader.join().unwrap_or_default();
        // Debugging aid: RAMPART_XTASK_CONSOLE=<file> appends every run's
        // console there (e.g. to read the oracle's lines in Linux cases).
        if let Ok(path) = std::env::var("RAMPART_XTASK_CONSOLE") {
            use std::io::Write as _;
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
            let _ = file.and_then(|mut f| f.write_all(console.as_bytes()));
        }
        Ok(Run {
            console,
            lines: marks,
            stderr,
            exit_code: status.code(),
            timed_out,
            elapsed: start.elapsed(),
            cpu_at_stop,
            command: self.command_line(),
        })
    }
}

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat`. None if unreadable.
fn cpu_time(pid: u32) -> Option<Duration> {
    parse_cpu_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`cpu_time`] of a `/proc/<pid>/stat` line: fields 14 and 15, in clock
/// ticks of 1/100 s (Linux's `USER_HZ` on every architecture xtask runs on).
fn parse_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing one.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// RAM from which [`Machine::command`] asks QEMU not to reserve the
/// machine's memory up front.
pub const LAZY_RAM: u64 = 4 << 30;

/// Bytes of the hypervisor's memory sized at boot for `smp` CPUs and
/// `ram` bytes of RAM, as `layout::place_boot_sized` works it out: 4 bytes
/// of ownership table per 4 KiB page, 48 KiB of stacks and guard pages per
/// secondary CPU and (at most) 1.25 KiB of per-CPU state, each rounded up
/// to pages. An estimate for refusing a machine before it starts; the
/// hypervisor's own check is the exact one.
pub fn boot_sized_bytes(smp: u32, ram: u64) -> u64 {
    let page = |b: u64| b.next_multiple_of(4096);
    let smp = u64::from(smp);
    page(ram / 4096 * 4) + page(smp * 1280) + page(smp.saturating_sub(1) * (48 << 10))
}

/// The RAM base of QEMU `virt`.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Where Rampart's image, and so its carve-out, starts: RAM + 2 MiB.
pub const CARVEOUT_OFFSET: u64 = 2 << 20;

/// The carve-out size the hypervisor is built with: `RAMPART_CARVEOUT_MIB`
/// if set (as for the build), else the default in `hyp/src/config.rs`.
pub fn carveout_bytes() -> u64 {
    std::env::var("RAMPART_CARVEOUT_MIB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(16) << 20
}

/// The least RAM a one-CPU `cargo xtask run` machine needs, in whole MiB:
/// Rampart's own checks (`crates/platform/src/layout.rs`, `check_ram` and
/// `place_boot_sized`) want the carve-out, at RAM + 2 MiB, in RAM, its part
/// sized at boot (the ownership table) beside it, and `MIN_HOST_RAM`
/// (32 MiB) left to the host; the host image at [`HOST_LOAD_ADDRESS`] must
/// be in RAM too. With the default 16 MiB carve-out that is 49 MiB.
pub fn min_ram(carveout: u64) -> u64 {
    const MIN_HOST_RAM: u64 = 32 << 20;
    let host_image_end = HOST_LOAD_ADDRESS - RAM_BASE + (2 << 20);
    let fixed = (carveout + MIN_HOST_RAM).max(CARVEOUT_OFFSET + carveout).max(host_image_end);
    (fixed + boot_sized_bytes(1, fixed)).next_multiple_of(1 << 20)
}

/// Parses a RAM size as `--mem` takes it and QEMU's `-m` understands it
/// (a number with an optional `K`, `M`, `G` or `T` suffix; no suffix means
/// MiB, as for QEMU). Returns bytes.
pub fn parse_mem(mem: &str) -> Result<u64> {
    let text = mem.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => anyhow::bail!("--mem {mem}: unknown unit `{c}`; use K, M, G or T (e.g. 512M, 2G)"),
            };
            (&text[..i], shift)
        }
        _ => (text, 20),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("--mem {mem}: not a size; write a whole number with K, M, G or T (e.g. 512M, 2G)"))?;
    let bytes = value
        .checked_mul(1 << shift)
        .ok_or_else(|| anyhow::anyhow!("--mem {mem}: too large"))?;
    if bytes == 0 {
        anyhow::bail!("--mem {mem}: a machine needs some RAM");
    }
    if bytes % 4096 != 0 {
        anyhow::bail!("--mem {mem}: not a whole number of 4 KiB pages");
    }
    Ok(bytes)
}

/// The most CPUs the hypervisor supports: `MAX_CPUS` in
/// `hyp/src/config.rs`, read from the source it is built from.
pub fn hyp_max_cpus() -> Option<u32> {
    let config = std::fs::read_to_string(crate::artifacts::root().join("hyp/src/config.rs")).ok()?;
    parse_max_cpus(&config)
}

/// Refuses a `--cpu` model this QEMU does not have (from
/// `qemu-system-aarch64 -M virt -cpu help`), naming the ones to use.
pub fn check_cpu_model(cpu: &str) -> Result<()> {
    let out = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-cpu", "help"])
        .output()
        .context("running qemu-system-aarch64 -cpu help")?;
    let models = parse_cpu_help(&String::from_utf8_lossy(&out.stdout));
    // `-cpu max,sve=off`: the model is the part before the first comma.
    let name = cpu.split(',').next().unwrap_or(cpu);
    if !models.is_empty() && !models.iter().any(|m| m == name) {
        anyhow::bail!(
            "--cpu {cpu}: QEMU has no CPU model `{name}`; AArch64 models with EL2: {}",
            crate::suite::CPU_MODELS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The model names in `-cpu help` output (`Available CPUs:` then one
/// indented name per line).
fn parse_cpu_help(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn parse_max_cpus(config: &str) -> Option<u32> {
    let line = config.lines().find(|l| l.trim_start().starts_with("pub const MAX_CPUS:"))?;
    line.split_once('=')?.1.trim().trim_end_matches(';').replace('_', "").parse().ok()
}

/// Checks `cargo xtask run`'s machine before anything is built or started.
/// `max_cpus` is the hypervisor's limit if known, `min_ram` the least RAM
/// it boots in.
pub fn validate(smp: u32, mem: &str, cpu: &str, max_cpus: Option<u32>, min_ram: u64) -> Result<()> {
    if smp == 0 {
        anyhow::bail!("--smp 0: a machine needs at least one CPU");
    }
    if let Some(max) = max_cpus
        && smp > max
    {
        anyhow::bail!("--smp {smp}: Rampart supports at most {max} CPUs (MAX_CPUS in hyp/src/config.rs)");
    }
    let bytes = parse_mem(mem)?;
    if bytes < min_ram {
        anyhow::bail!(
            "--mem {mem}: Rampart needs at least {} MiB: its {} MiB carve-out at RAM + 2 MiB and the ownership table, the host image at RAM + {} MiB and 32 MiB for the host",
            min_ram >> 20,
            carveout_bytes() >> 20,
            (HOST_LOAD_ADDRESS - RAM_BASE) >> 20
        );
    }
    // What grows with the machine (ownership table, per-CPU stacks and
    // state) comes out of RAM too, beside the 32 MiB the host keeps.
    let grown = boot_sized_bytes(smp, bytes);
    let needed = carveout_bytes() + grown + (32 << 20);
    if bytes < needed {
        anyhow::bail!(
            "--mem {mem}: with {smp} CPUs Rampart needs at least {} MiB: its {} MiB carve-out, {} KiB of ownership table and per-CPU stacks and 32 MiB for the host",
            needed.div_ceil(1 << 20),
            carveout_bytes() >> 20,
            grown >> 10
        );
    }
    let mut m = Machine::new(PathBuf::new());
    m.cpu = cpu.into();
    m.check_cpu()
}

/// What a QEMU run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Everything the guest printed on its console.
    pub console: String,
    /// Each console line with the time it arrived, from QEMU's start.
    pub lines: Vec<(Duration, String)>,
    /// QEMU's own error output.
    pub stderr: String,
    /// QEMU's exit code (None if killed).
    pub exit_code: Option<i32>,
    /// Whether the run hit its timeout.
    pub timed_out: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// QEMU's CPU time (all threads, user and system) when the line
    /// `stop_at` named arrived; None without one or if unreadable.
    pub cpu_at_stop: Option<Duration>,
    /// The command line, for reports.
    pub command: String,
}

impl Run {
    /// When the first line containing `text` arrived.
    pub fn time_of(&self, text: &str) -> Option<Duration> {
        self.lines.iter().find(|(_, l)| l.contains(text)).map(|(t, _)| *t)
    }

    /// The last `n` console lines, for failure reports.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        let from = lines.len().saturating_sub(n);
        let mut s = lines[from..].join("\n");
        if !self.stderr.trim().is_empty() {
            s.push_str("\n[qemu stderr] ");
            s.push_str(self.stderr.trim());
        }
        s
    }

    /// Why the machine never got going, when the run says so itself:
    /// QEMU's own error when it refused to start or died, else Rampart's
    /// one-line reason before a power-off (the `rampart:` line before
    /// `rampart: cannot boot; powering off`, a panic, or the last
    /// `rampart:` line of a boot that never entered the host).
    pub fn cause(&self) -> Option<String> {
        if self.exit_code != Some(0) && !self.timed_out {
            // QEMU's error names itself (`qemu-system-aarch64: ...`);
            // notes about missing display modules and the like come first.
            let mut lines = self.stderr.lines().map(str::trim).filter(|l| !l.is_empty());
            let own = self.stderr.lines().map(str::trim).find(|l| l.starts_with("qemu-system-"));
            if let Some(line) = own.or_else(|| lines.next()) {
                return Some(line.to_string());
            }
        }
        let lines: Vec<&str> = self.console.lines().map(str::trim_end).collect();
        fn rampart(l: &&&str) -> bool {
            l.starts_with("rampart: ")
        }
        if let Some(i) = lines.iter().position(|l| l.starts_with("rampart: cannot boot")) {
            return lines[..i].iter().rev().find(rampart).map(|l| (*l).to_string());
        }
        if let Some(l) = lines.iter().find(|l| {
            rampart(l) && (l.contains("panic") || l.contains("unexpected exception") || l.contains("stack overflow on CPU"))
        }) {
            return Some((*l).to_string());
        }
        if !self.console.contains("rampart: entering host") {
            let last = lines.iter().rev().find(rampart)?;
            let how = if self.timed_out { "hung after" } else { "stopped after" };
            return Some(format!("the hypervisor never entered the host; it {how}: {last}"));
        }
        None
    }

    /// A failure report: the cause the run itself gives first (see
    /// [`Run::cause`]), then what the check found wrong, the command and
    /// the console tail.
    pub fn failure(&self, what: &str) -> String {
        let what = match self.cause() {
            Some(cause) if !what.contains(&cause) => format!("{cause}\n  so: {what}"),
            _ => what.to_string(),
        };
        format!(
            "{what}\n  command: {}\n  exit: {:?}{}, {:.1}s\n  console tail:\n{}",
            self.command,
            self.exit_code,
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed.as_secs_f64(),
            indent(&self.tail(30))
        )
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    | {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::Machine;

    #[test]
    fn aarch32_only_models_are_refused_with_a_reason() {
        let mut m = Machine::new("rampart.bin".into());
        for cpu in ["cortex-a15", "cortex-a7", "cortex-m3", "arm926", "pxa270", "cortex-r5f"] {
            m.cpu = cpu.into();
            let e = m.check_cpu().unwrap_err().to_string();
            assert!(e.contains("no AArch64 state") && e.contains("cortex-a53"), "{cpu}: {e}");
        }
        for (cpu, _) in crate::suite::CPU_MODELS {
            m.cpu = (*cpu).into();
            assert!(m.check_cpu().is_ok(), "{cpu}");
        }
    }
}

#[cfg(test)]
mod validation {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parses_memory_sizes_as_qemu_does() {
        assert_eq!(parse_mem("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_mem("2G").unwrap(), 2048 * MIB);
        assert_eq!(parse_mem("2g").unwrap(), 2048 * MIB);
        assert_eq!(parse_mem("1T").unwrap(), 1 << 40);
        assert_eq!(parse_mem("65536K").unwrap(), 64 * MIB);
        // No unit: MiB, as for QEMU's -m.
        assert_eq!(parse_mem("256").unwrap(), 256 * MIB);
        for (bad, why) in [
            ("0", "needs some RAM"),
            ("0G", "needs some RAM"),
            ("1X", "unknown unit `X`"),
            ("", "not a size"),
            ("G", "not a size"),
            ("1.5G", "not a size"),
            ("-1M", "not a size"),
            ("99999999999T", "too large"),
            ("3K", "4 KiB pages"),
        ] {
            let e = parse_mem(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--mem {bad}:")) && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_least_ram_follows_the_carveout() {
        // The default build: 16 MiB carve-out + 32 MiB for the host + the
        // ownership table of that RAM, rounded up to whole MiB.
        assert_eq!(min_ram(16 * MIB), 49 * MIB);
        assert_eq!(min_ram(64 * MIB), 97 * MIB);
        // A tiny carve-out still needs the host image at RAM + 32 MiB.
        assert_eq!(min_ram(4 * MIB), 37 * MIB);
    }

    #[test]
    fn reads_max_cpus_from_the_hypervisor_source() {
        assert_eq!(parse_max_cpus("/// x\npub const MAX_CPUS: usize = 8;\n"), Some(8));
        assert_eq!(parse_max_cpus("pub const MAX_CPUS: usize = 1_024;"), Some(1024));
        assert_eq!(parse_max_cpus("pub const OTHER: usize = 8;"), None);
        // The real file: if MAX_CPUS moves, `--smp` must learn where.
        assert!(hyp_max_cpus().is_some_and(|n| n >= 1), "no MAX_CPUS in hyp/src/config.rs");
    }

    #[test]
    fn refuses_bad_machines_with_the_argument_and_the_reason() {
        let ok = |smp, mem: &str, cpu: &str| validate(smp, mem, cpu, Some(512), min_ram(16 * MIB));
        // 48 MiB leave the host 32 MiB beside the carve-out, but not beside
        // the ownership table too.
        ok(1, "49M", "max").unwrap();
        ok(8, "2G", "cortex-a53").unwrap();
        ok(512, "1G", "max").unwrap();
        ok(32, "64G", "max").unwrap();
        // Unknown limit: the hypervisor decides.
        validate(64, "512M", "max", None, min_ram(16 * MIB)).unwrap();
        for (smp, mem, cpu, want) in [
            (0, "512M", "max", "--smp 0: a machine needs at least one CPU"),
            (513, "2G", "max", "--smp 513: Rampart supports at most 512 CPUs"),
            (1, "48M", "max", "--mem 48M: Rampart needs at least 49 MiB"),
            (512, "64M", "max", "--mem 64M: with 512 CPUs Rampart needs at least 73 MiB"),
            (2, "0", "max", "--mem 0: a machine needs some RAM"),
            (2, "1X", "max", "--mem 1X: unknown unit"),
            (2, "47M", "max", "--mem 47M: Rampart needs at least 49 MiB"),
            (2, "512M", "cortex-a15", "-cpu cortex-a15 has no AArch64 state"),
        ] {
            let e = ok(smp, mem, cpu).unwrap_err().to_string();
            assert!(e.starts_with(want), "{smp} {mem} {cpu}: {e}");
            assert!(!e.contains('\n'), "not one line: {e}");
        }
    }

    #[test]
    fn estimates_what_grows_with_the_machine() {
        // 64 GiB: a 64 MiB ownership table; 32 CPUs: 31 stack slots.
        assert_eq!(boot_sized_bytes(32, 64 << 30), (64 << 20) + 40960 + 31 * (48 << 10));
        assert_eq!(boot_sized_bytes(1, 512 * MIB), (512 << 10) + 4096);
    }

    #[test]
    fn large_ram_is_not_reserved_up_front() {
        let mut m = Machine::new("rampart.bin".into());
        assert!(!m.command_line().contains("reserve=off"));
        m.mem = "64G".into();
        let line = m.command_line();
        assert!(line.contains("-object memory-backend-ram,id=rampart-ram,size=64G,reserve=off"), "{line}");
        assert!(line.contains("gic-version=3,memory-backend=rampart-ram -cpu"), "{line}");
        assert!(line.contains("-m 64G"), "{line}");
    }

    #[test]
    fn reads_cpu_time_from_proc_stat() {
        // A command name with a space and a parenthesis, utime 1234 and
        // stime 56 ticks.
        let stat = "4242 (qemu-system (x) a) S 1 4242 4242 0 -1 4194560 9 0 0 0 1234 56 0 0 20 0 5 0 100 0 0";
        assert_eq!(parse_cpu_time(stat), Some(Duration::from_millis(12_900)));
        assert_eq!(parse_cpu_time("4242 (qemu) S 1 2"), None);
        assert_eq!(parse_cpu_time(""), None);
    }

    #[test]
    fn lists_qemus_cpu_models() {
        let help = "Available CPUs:\n  a64fx\n  arm1026\n  cortex-a53\n  max\n  neoverse-n1\n";
        assert_eq!(parse_cpu_help(help), ["a64fx", "arm1026", "cortex-a53", "max", "neoverse-n1"]);
        assert!(parse_cpu_help("").is_empty());
    }

    fn run(console: &str, stderr: &str, exit_code: Option<i32>, timed_out: bool) -> Run {
        Run {
            console: console.into(),
            lines: Vec::new(),
            stderr: stderr.into(),
            exit_code,
            timed_out,
            elapsed: Duration::from_secs(1),
            cpu_at_stop: None,
            command: "qemu-system-aarch64 ...".into(),
        }
    }

    #[test]
    fn the_cause_comes_first() {
        // QEMU refused to start: its own error.
        let r = run("", "qemu-system-aarch64: Some ROM regions are overlapping\nThese ROM regions...\n", Some(1), false);
        assert_eq!(r.cause().as_deref(), Some("qemu-system-aarch64: Some ROM regions are overlapping"));
        let f = r.failure("the hypervisor's boot log has no `rampart: attestation key` line");
        assert!(f.starts_with("qemu-system-aarch64: Some ROM regions are overlapping\n  so: the hypervisor's"), "{f}");
        let r = run("", "qemu: module ui-ui-gtk not found, do you want to install qemu-system-gui package?\nqemu-system-aarch64: unable to find CPU model 'nonsense'\n", Some(1), false);
        assert_eq!(r.cause().as_deref(), Some("qemu-system-aarch64: unable to find CPU model 'nonsense'"));
        // Rampart's reason before it powers off.
        let log = "rampart: Rampart 0.1.0 starting at EL2\nrampart: too many CPUs: the device tree lists 9, this build supports at most 8\nrampart: cannot boot; powering off\n";
        let r = run(log, "", Some(0), false);
        assert_eq!(r.cause().as_deref(), Some("rampart: too many CPUs: the device tree lists 9, this build supports at most 8"));
        // A boot that stops without saying `cannot boot`.
        let r = run("rampart: Rampart 0.1.0 starting at EL2\nrampart: entered at EL1; Rampart must be entered at EL2\n", "", Some(0), false);
        assert!(r.cause().unwrap().ends_with("stopped after: rampart: entered at EL1; Rampart must be entered at EL2"));
        let r = run("rampart: Rampart 0.1.0 starting at EL2\nrampart: carve-out [0x40200000, 0x41200000)\n", "", None, true);
        assert!(r.cause().unwrap().contains("hung after: rampart: carve-out"));
        // A run that reached the host has no cause of its own: the
        // checks say what went wrong.
        let r = run("rampart: entering host at 0x42000000\nFAIL x\n", "", Some(0), false);
        assert_eq!(r.cause(), None);
        assert!(r.failure("1 checks failed").starts_with("1 checks failed\n  command:"));
        let r = run("rampart: entering host\nrampart: panic at hyp/src/vm.rs:1: oops\n", "", Some(0), false);
        assert_eq!(r.cause().as_deref(), Some("rampart: panic at hyp/src/vm.rs:1: oops"));
    }
}
