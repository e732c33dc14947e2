//! Run statistics. The hypervisor keeps none, so the VMM counts what it
//! sees (exits by reason and vCPU, pages it donated, pages the guest
//! announced sharing or relinquishing) and writes them as `key: value`
//! lines:
//!
//! - while running, every second, to `<state dir>/live/<pid>.stats`;
//! - at the end to `<state dir>/last-stats` (and the live file is removed).
//!
//! `rampart-vmm stats` prints the live files of running VMMs, then the
//! last run's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use rampart_abi::host::{ExitReason, MAX_VCPUS};

const _: () = assert!(VCPUS as u64 == MAX_VCPUS);

/// Exit reasons counted: index = `x1` (0 = an unknown reason).
/// Exit reasons 0 (unknown) .. 13 (the last number `crates/abi` assigns).
const REASONS: usize = 14;
/// vCPUs counted (`rampart_abi::host::MAX_VCPUS`).
const VCPUS: usize = 8;

static START: OnceLock<Instant> = OnceLock::new();

/// Notes when the process started (the first call wins); `main` calls it
/// first thing, so launch times count from the command's start.
pub fn mark_start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Microseconds since [`mark_start`] (at least 1, so 0 can mean "not yet").
#[must_use]
pub fn since_start_us() -> u64 {
    u64::try_from(mark_start().elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Counters the vCPU threads bump.
pub struct Counters {
    exits: [[AtomicU64; REASONS]; VCPUS],
    /// MMIO accesses outside the console.
    pub unhandled_mmio: AtomicU64,
    /// Memory faults declined.
    pub memory_faults: AtomicU64,
    /// Memory faults in guest RAM served by giving its chunk (issue 16).
    pub faults_served: AtomicU64,
    /// Pages those faults gave.
    pub pages_on_demand: AtomicU64,
    /// `EXIT_INTERRUPT`s for the host's own timer deadline (`x2` = 1).
    pub host_timer_exits: AtomicU64,
    /// When the last vCPU thread stopped (`signals::monotonic_ns`).
    pub vcpus_stopped_ns: AtomicU64,
    /// Pages the guest announced sharing (`GUEST-SHARED`).
    pub shared_pages: AtomicU64,
    /// Pages the guest announced relinquishing (`GUEST-RELINQUISHED`).
    pub relinquished_pages: AtomicU64,
    /// Launch milestones, µs after the process started (0 = not reached):
    /// the VM built and signed (before the first `VCPU_RUN`).
    pub vm_ready_us: AtomicU64,
    /// vCPU 0's first `VCPU_RUN` the hypervisor accepted returned (it
    /// measured the VM and checked the signature); the other vCPUs'
    /// returns do not count.
    pub first_exit_us: AtomicU64,
    /// The guest's first console byte.
    pub first_output_us: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            exits: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            unhandled_mmio: AtomicU64::new(0),
            memory_faults: AtomicU64::new(0),
            faults_served: AtomicU64::new(0),
            pages_on_demand: AtomicU64::new(0),
            host_timer_exits: AtomicU64::new(0),
            vcpus_stopped_ns: AtomicU64::new(0),
            shared_pages: AtomicU64::new(0),
            relinquished_pages: AtomicU64::new(0),
            vm_ready_us: AtomicU64::new(0),
            first_exit_us: AtomicU64::new(0),
            first_output_us: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Counts an exit of `vcpu` with reason `x1`.
    pub fn exit(&self, vcpu: usize, reason: u64) {
        let r = usize::try_from(reason)
            .ok()
            .filter(|&r| r < REASONS)
            .unwrap_or(0);
        if let Some(row) = self.exits.get(vcpu) {
            row[r].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records `milestone` now, if it was not reached before.
    pub fn reached(milestone: &AtomicU64) {
        let _ =
            milestone.compare_exchange(0, since_start_us(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Exits of `vcpu` with reason index `r`.
    #[must_use]
    pub fn exits(&self, vcpu: usize, r: usize) -> u64 {
        self.exits[vcpu][r].load(Ordering::Relaxed)
    }
}

fn reason_name(r: usize) -> &'static str {
    ExitReason::try_from(r as u64).map_or("unknown", ExitReason::name)
}

/// What a report says besides the counters.
pub struct Header<'a> {
    /// The guest's name.
    pub name: &'a str,
    /// The bundle's path.
    pub bundle: &'a str,
    /// The VM handle.
    pub vm: u64,
    /// vCPUs.
    pub vcpus: usize,
    /// Protected VM.
    pub protected: bool,
    /// Guest RAM pages donated.
    pub ram_pages: u64,
    /// Metadata pages donated.
    pub metadata_pages: u64,
    /// Physical base of the VM's pool region.
    pub region: u64,
    /// Milliseconds since the run started.
    pub wall_ms: u128,
    /// `running`, or how it ended.
    pub state: &'a str,
    /// The test protocol's summary.
    pub result: &'a str,
}

/// The report text.
#[must_use]
pub fn render(h: &Header<'_>, c: &Counters, reclaimed: Option<u64>) -> String {
    let mut out = String::new();
    let mut put = |k: &str, v: String| {
        out += &format!("{k}: {v}\n");
    };
    put("name", h.name.to_string());
    put("bundle", h.bundle.to_string());
    put("pid", std::process::id().to_string());
    put("vm", format!("{:#x}", h.vm));
    put("state", h.state.to_string());
    put(
        "wall time",
        format!("{}.{:03} s", h.wall_ms / 1000, h.wall_ms % 1000),
    );
    put("protected", h.protected.to_string());
    put("vcpus", h.vcpus.to_string());
    put("pool region", format!("{:#x}", h.region));
    put(
        "pages donated",
        format!(
            "{} ({} guest RAM + {} metadata)",
            h.ram_pages + h.metadata_pages,
            h.ram_pages,
            h.metadata_pages
        ),
    );
    put(
        "pages shared by the guest",
        c.shared_pages.load(Ordering::Relaxed).to_string(),
    );
    put(
        "pages relinquished by the guest",
        c.relinquished_pages.load(Ordering::Relaxed).to_string(),
    );
    if let Some(pages) = reclaimed {
        put("pages reclaimed", pages.to_string());
    }
    let mut total = 0;
    for r in (1..REASONS).chain([0]) {
        let per: Vec<u64> = (0..h.vcpus).map(|v| c.exits(v, r)).collect();
        let sum: u64 = per.iter().sum();
        total += sum;
        if sum > 0 || (r != 0 && ExitReason::try_from(r as u64).is_ok()) {
            let detail = if h.vcpus > 1 {
                format!(
                    " ({})",
                    per.iter()
                        .enumerate()
                        .map(|(v, n)| format!("vCPU {v}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            };
            put(
                &format!("exits {}", reason_name(r)),
                format!("{sum}{detail}"),
            );
        }
    }
    put("exits total", total.to_string());
    put(
        "host timer exits",
        c.host_timer_exits.load(Ordering::Relaxed).to_string(),
    );
    let mmio: u64 = (0..h.vcpus).map(|v| c.exits(v, 1)).sum();
    if let (Some(all), Some(mmio)) = (
        (u128::from(total) * 1000).checked_div(h.wall_ms),
        (u128::from(mmio) * 1000).checked_div(h.wall_ms),
    ) {
        put("exits per second", format!("{all} (EXIT_MMIO: {mmio})"));
    }
    let ms = |m: &AtomicU64| match m.load(Ordering::Acquire) {
        0 => "-".to_string(),
        us => format!("{}.{:03} ms", us / 1000, us % 1000),
    };
    put(
        "launch",
        format!(
            "VM ready {}, first exit {}, first console output {} (after the VMM started)",
            ms(&c.vm_ready_us),
            ms(&c.first_exit_us),
            ms(&c.first_output_us)
        ),
    );
    put(
        "unhandled MMIO accesses",
        c.unhandled_mmio.load(Ordering::Relaxed).to_string(),
    );
    put(
        "memory faults declined",
        c.memory_faults.load(Ordering::Relaxed).to_string(),
    );
    put(
        "memory faults served",
        format!(
            "{} ({} pages of guest RAM given on first touch)",
            c.faults_served.load(Ordering::Relaxed),
            c.pages_on_demand.load(Ordering::Relaxed)
        ),
    );
    for (k, v) in crate::virtio::stats_lines() {
        put(&k, v);
    }
    for (k, v) in crate::swap::stats_lines() {
        put(&k, v);
    }
    put("result", h.result.to_string());
    out
}

/// What a run process's live report says about its VM's guest RAM
/// (`migrate-out` reads it: [`crate::migrate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveRam {
    /// The process that wrote the report.
    pub pid: u32,
    /// Its VM's handle.
    pub vm: u64,
    /// Whether the VM is protected.
    pub protected: bool,
    /// Physical base of its pool region (guest RAM starts there).
    pub region: u64,
    /// Pages of guest RAM (all of it, given yet or not).
    pub ram_pages: u64,
}

/// Reads back the `pid`, `vm`, `protected`, `pool region` and `pages
/// donated` lines [`render`] writes; `None` if one is missing or does not
/// parse. (The report is the host's own file: the caller still checks
/// what it says against the pool table.)
#[must_use]
pub fn parse_live_ram(text: &str) -> Option<LiveRam> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(": ")))
    };
    let hex = |v: &str| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok();
    // `pages donated: N (R guest RAM + M metadata)`.
    let ram_pages = field("pages donated")?
        .split_once('(')?
        .1
        .split_once(" guest RAM")?
        .0
        .parse()
        .ok()?;
    Some(LiveRam {
        pid: field("pid")?.parse().ok()?,
        vm: hex(field("vm")?)?,
        protected: field("protected")?.parse().ok()?,
        region: hex(field("pool region")?)?,
        ram_pages,
    })
}

/// The live report of process `pid`, if it has written one.
#[must_use]
pub fn read_live(state_dir: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(Files::new(state_dir).live(pid)).ok()
}

/// Where reports go.
#[derive(Clone, Debug)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// Under the state directory.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Files {
            dir: state_dir.to_path_buf(),
        }
    }

    fn live(&self, pid: u32) -> PathBuf {
        self.dir.join("live").join(format!("{pid}.stats"))
    }

    /// `<dir>/last-stats`.
    #[must_use]
    pub fn last(&self) -> PathBuf {
        self.dir.join("last-stats")
    }

    /// Writes this process's live report (atomically: a rename).
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn write_live(&self, text: &str) -> Result<()> {
        let path = self.live(std::process::id());
        write_atomic(&path, text)
    }

    /// Writes the final report and removes the live one.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn finish(&self, text: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.live(std::process::id()));
        write_atomic(&self.last(), text)
    }

    /// The live reports of processes that still run (`alive(pid)`), and
    /// the last run's report.
    #[must_use]
    pub fn read(&self, alive: impl Fn(u32) -> bool) -> (Vec<String>, Option<String>) {
        let mut live = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.dir.join("live")) {
            let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let pid = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok());
                match pid {
                    Some(pid) if alive(pid) => {
                        if let Ok(text) = std::fs::read_to_string(&path) {
                            live.push(text);
                        }
                    }
                    Some(_) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    None => {}
                }
            }
        }
        (live, std::fs::read_to_string(self.last()).ok())
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("a stats path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The launch milestones recorded so far: (microseconds since start,
/// page faults so far or -1, what).
static TRACE: std::sync::Mutex<Vec<(u64, i64, &'static str)>> = std::sync::Mutex::new(Vec::new());

/// With `RAMPART_VMM_LAUNCH_TRACE` set in the environment: records a
/// launch milestone, printed by [`launch_trace_flush`] as `launch: <ms
/// since start> ms <what>` on stderr, so `cargo xtask bench peer` can
/// show where a launch's time goes. Recording is a clock read (vDSO, no
/// system call) and a push, so the trace barely changes what it measures
/// (issue 16: printing each line at once was a `write` per milestone,
/// inside the launch figure). With `RAMPART_VMM_LAUNCH_TRACE=faults` each
/// line also gives the process's page faults so far (`getrusage`, one
/// system call a milestone). Costs one environment lookup (cached)
/// otherwise.
pub fn launch_trace(what: &'static str) {
    static ON: OnceLock<Option<bool>> = OnceLock::new();
    let on = ON.get_or_init(|| {
        std::env::var_os("RAMPART_VMM_LAUNCH_TRACE").map(|v| v == "faults")
    });
    if let Some(faults) = *on {
        let us = since_start_us();
        let n = if faults { page_faults() } else { -1 };
        if let Ok(mut t) = TRACE.lock() {
            // Room for every milestone at once: no reallocation (and
            // allocator system calls) inside the launch it measures.
            if t.capacity() == 0 {
                t.reserve(64);
            }
            t.push((us, n, what));
        }
    }
}

/// Prints the milestones [`launch_trace`] recorded (and forgets them).
pub fn launch_trace_flush() {
    let lines = TRACE.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
    let mut text = String::new();
    for (us, faults, what) in lines {
        #[allow(clippy::cast_precision_loss, reason = "microseconds for display")]
        let ms = us as f64 / 1000.0;
        if faults >= 0 {
            let _ = writeln!(text, "launch: {ms:.3} ms {what} ({faults} faults)");
        } else {
            let _ = writeln!(text, "launch: {ms:.3} ms {what}");
        }
    }
    if !text.is_empty() {
        eprint!("{text}");
    }
}

/// The process's page faults so far (minor and major), or 0 if
/// `getrusage` fails.
fn page_faults() -> i64 {
    // SAFETY: an all-zero `rusage` is a valid value of it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given, which we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
        return 0;
    }
    usage.ru_minflt + usage.ru_majflt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(state: &str) -> Header<'_> {
        Header {
            name: "smp",
            bundle: "build/guests/smp.bundle",
            vm: 0x1_0000_1000,
            vcpus: 2,
            protected: true,
            ram_pages: 256,
            metadata_pages: 30,
            region: 0x7c00_0000,
            wall_ms: 1234,
            state,
            result: "3 passed",
        }
    }

    #[test]
    fn every_exit_reason_has_its_own_line() {
        // EXIT_EVICTED (issue 14) and whatever the ABI adds after it.
        let c = Counters::default();
        c.exit(0, ExitReason::Evicted as u64);
        let text = render(&header("running"), &c, None);
        assert!(text.contains("exits EXIT_EVICTED: 1 (vCPU 0: 1, vCPU 1: 0)\n"), "{text}");
        assert!(!text.contains("exits unknown"), "{text}");
    }

    #[test]
    fn renders_exits_by_reason_and_vcpu() {
        let c = Counters::default();
        c.exit(0, 1);
        c.exit(0, 1);
        c.exit(1, 7);
        c.exit(1, 99);
        c.shared_pages.fetch_add(1, Ordering::Relaxed);
        let text = render(&header("system off"), &c, Some(286));
        assert!(
            text.contains("exits EXIT_MMIO: 2 (vCPU 0: 2, vCPU 1: 0)\n"),
            "{text}"
        );
        assert!(
            text.contains("exits EXIT_POWERED_OFF: 1 (vCPU 0: 0, vCPU 1: 1)\n"),
            "{text}"
        );
        assert!(text.contains("exits unknown: 1"), "{text}");
        assert!(text.contains("exits total: 4\n"), "{text}");
        assert!(
            text.contains("pages donated: 286 (256 guest RAM + 30 metadata)"),
            "{text}"
        );
        assert!(text.contains("pages shared by the guest: 1"), "{text}");
        assert!(text.contains("pages reclaimed: 286"), "{text}");
        assert!(text.contains("wall time: 1.234 s"), "{text}");
        assert!(text.contains("exits EXIT_WAIT: 0"), "{text}");
        assert!(
            text.contains("exits per second: 3 (EXIT_MMIO: 1)\n"),
            "{text}"
        );
        assert!(
            text.contains("launch: VM ready -, first exit -, first console output -"),
            "{text}"
        );
        c.first_output_us.store(12_345, Ordering::Relaxed);
        Counters::reached(&c.first_output_us);
        assert_eq!(c.first_output_us.load(Ordering::Relaxed), 12_345);
        let text = render(&header("system off"), &c, None);
        assert!(text.contains("first console output 12.345 ms"), "{text}");
    }

    /// What `migrate-out` reads back is what a run wrote (so a reworded
    /// line fails here, not in a migration).
    #[test]
    fn the_live_report_gives_back_guest_ram() {
        let text = render(&header("running"), &Counters::default(), None);
        assert_eq!(
            parse_live_ram(&text),
            Some(LiveRam {
                pid: std::process::id(),
                vm: 0x1_0000_1000,
                protected: true,
                region: 0x7c00_0000,
                ram_pages: 256,
            })
        );
        let cut = text.replace("pool region", "pool");
        assert_eq!(parse_live_ram(&cut), None);
        let odd = text.replace("(256 guest RAM", "(x guest RAM");
        assert_eq!(parse_live_ram(&odd), None);
    }

    #[test]
    fn live_and_last_files() {
        let s = crate::dt::tests::Scratch::new("stats");
        let files = Files::new(&s.0);
        files.write_live("state: running\n").unwrap();
        let (live, last) = files.read(|_| true);
        assert_eq!(live, vec!["state: running\n".to_string()]);
        assert_eq!(last, None);
        files.finish("state: system off\n").unwrap();
        let (live, last) = files.read(|_| true);
        assert!(live.is_empty());
        assert_eq!(last.as_deref(), Some("state: system off\n"));
        // A dead process's live file is dropped.
        files.write_live("x").unwrap();
        assert!(files.read(|_| false).0.is_empty());
        assert!(files.read(|_| true).0.is_empty());
    }
}
