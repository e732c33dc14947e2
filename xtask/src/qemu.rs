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
        cmd.arg("-M")
            .arg(format!("virt,virtualization={virt},gic-version=3"))
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
        Ok(Run {
            console,
            lines: marks,
            stderr,
            exit_code: status.code(),
            timed_out,
            elapsed: start.elapsed(),
            command: self.command_line(),
        })
    }
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

    /// A failure report: what went wrong, the command and the console tail.
    pub fn failure(&self, what: &str) -> String {
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
