//! Sharing the guest pool and the control channels between `rampart-vmm`
//! processes.
//!
//! Every process that talks to Rampart holds an entry in one allocation
//! table, `<state dir>/pool` (default `/run/rampart-vmm/pool`), read and
//! rewritten under an exclusive `flock` on that file:
//!
//! ```text
//! rampart-vmm-pool v1 base=0x7c000000 size=0x4000000 channels=16
//! pid=812 offset=0x0 pages=284 channels=0x1 vm=0x100001000 name=hello
//! pid=815 offset=0x120000 pages=287 channels=0x1e vm=0x200001001 name=smp
//! ```
//!
//! - **Pool.** A `run` takes the lowest free range of the pages its plan
//!   needs, 64 KiB aligned (first fit), or exactly `--pool-offset`; a
//!   range in use by a live entry is never handed out twice.
//! - **Channels.** A channel's registers are shared state, so two
//!   processes must never use the same one: each process gets up to the
//!   channels it asks for (one per vCPU for `run`, 1 for `list`/`reclaim`)
//!   from those no live entry holds, at least one; threads of one process
//!   share its channels under a lock when there are fewer than threads.
//! - **Stale entries.** Each process holds an `flock` on
//!   `<state dir>/pids/<pid>.lock` while it lives ([`Alive`]); an entry
//!   whose process no longer holds it (killed) is reclaimed by the next process that takes the lock: its VM (`vm=`,
//!   recorded right after `VM_CREATE`) is destroyed first, which returns
//!   its pages zeroed, then the entry is dropped. If the VM cannot be
//!   destroyed the entry stays, with `pid=0`, so its pages are not reused.
//! - **A different boot.** If the header does not match the device tree
//!   (another pool, another channel count), the old entries are dropped:
//!   `/run` is a tmpfs, so this only happens when the state directory is
//!   moved elsewhere.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rampart_abi::host::PAGE_SIZE;

use crate::plan::REGION_ALIGN;

/// One process's share of the pool and channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The process (0: an orphan whose VM could not be destroyed).
    pub pid: u32,
    /// Byte offset of its region in the pool.
    pub offset: u64,
    /// Pages in its region (0 for processes that only make calls).
    pub pages: u64,
    /// Bit `i` = channel `i`.
    pub channels: u64,
    /// Its VM's handle, once created (0: none).
    pub vm: u64,
    /// A label for `list`/`stats` (the guest's name).
    pub name: String,
}

impl Entry {
    /// One past the region's last byte (pool offset).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.offset + self.pages * PAGE_SIZE
    }

    /// The channel indices, ascending.
    #[must_use]
    pub fn channel_list(&self) -> Vec<u32> {
        (0..64).filter(|i| self.channels & (1 << i) != 0).collect()
    }
}

/// The allocation table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Pool size in bytes.
    pub pool_size: u64,
    /// Pool base (physical), to detect a different pool.
    pub pool_base: u64,
    /// Channels the control region has (at most 64 are used).
    pub channels: u32,
    /// Allocations, in no particular order.
    pub entries: Vec<Entry>,
}

const MAGIC: &str = "rampart-vmm-pool v1";

fn hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

impl Table {
    /// An empty table for this pool.
    #[must_use]
    pub fn new(pool_base: u64, pool_size: u64, channels: u32) -> Self {
        Table {
            pool_base,
            pool_size,
            channels: channels.min(64),
            entries: Vec::new(),
        }
    }

    /// Reads a table file's text. Entries of another pool, and lines that
    /// do not parse, are dropped.
    #[must_use]
    pub fn parse(text: &str, pool_base: u64, pool_size: u64, channels: u32) -> Self {
        let mut table = Table::new(pool_base, pool_size, channels);
        let mut lines = text.lines();
        let header = format!(
            "{MAGIC} base={pool_base:#x} size={pool_size:#x} channels={}",
            table.channels
        );
        if lines.next().map(str::trim) != Some(header.as_str()) {
            return table;
        }
        let mask = table.channel_mask();
        for line in lines {
            let mut e = Entry {
                pid: u32::MAX,
                offset: u64::MAX,
                pages: u64::MAX,
                channels: u64::MAX,
                vm: u64::MAX,
                name: String::new(),
            };
            for field in line.split_whitespace() {
                let Some((key, value)) = field.split_once('=') else {
                    continue;
                };
                match key {
                    "pid" => e.pid = value.parse().unwrap_or(u32::MAX),
                    "offset" => e.offset = hex(value).unwrap_or(u64::MAX),
                    "pages" => e.pages = value.parse().unwrap_or(u64::MAX),
                    "channels" => e.channels = hex(value).unwrap_or(u64::MAX),
                    "vm" => e.vm = hex(value).unwrap_or(u64::MAX),
                    "name" => e.name = value.to_string(),
                    _ => {}
                }
            }
            let fits = e.pages != u64::MAX
                && e.offset.is_multiple_of(PAGE_SIZE)
                && e.pages
                    .checked_mul(PAGE_SIZE)
                    .and_then(|b| b.checked_add(e.offset))
                    .is_some_and(|end| end <= pool_size);
            if e.pid != u32::MAX && fits && e.channels & !mask == 0 && e.vm != u64::MAX {
                table.entries.push(e);
            }
        }
        table
    }

    /// The file's text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = format!(
            "{MAGIC} base={:#x} size={:#x} channels={}\n",
            self.pool_base, self.pool_size, self.channels
        );
        for e in &self.entries {
            let name: String = e
                .name
                .chars()
                .map(|c| {
                    if c.is_whitespace() || c == '=' {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            out += &format!(
                "pid={} offset={:#x} pages={} channels={:#x} vm={:#x} name={name}\n",
                e.pid, e.offset, e.pages, e.channels, e.vm
            );
        }
        out
    }

    fn channel_mask(&self) -> u64 {
        if self.channels >= 64 {
            u64::MAX
        } else {
            (1u64 << self.channels) - 1
        }
    }

    /// Removes and returns the entries whose process is gone (and orphans).
    pub fn take_stale(&mut self, alive: impl Fn(u32) -> bool) -> Vec<Entry> {
        let (stale, live) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.pid == 0 || !alive(e.pid));
        self.entries = live;
        stale
    }

    /// Puts back a stale entry whose VM could not be destroyed, as an
    /// orphan that keeps its pages (but not its channels).
    pub fn keep_orphan(&mut self, mut entry: Entry) {
        entry.pid = 0;
        entry.channels = 0;
        self.entries.push(entry);
    }

    /// Allocates `pages` pages (at `fixed` if given, a byte offset) and up
    /// to `want_channels` channels (at least one) for `pid`.
    ///
    /// # Errors
    ///
    /// If the pool has no free range that large, `fixed` is taken or
    /// misaligned, or every channel is in use.
    pub fn allocate(
        &mut self,
        pid: u32,
        pages: u64,
        want_channels: u32,
        fixed: Option<u64>,
        name: &str,
    ) -> Result<Entry> {
        if self.entries.iter().any(|e| e.pid == pid) {
            bail!("process {pid} already holds an allocation");
        }
        let used_channels = self.entries.iter().fold(0, |m, e| m | e.channels);
        let free_channels = self.channel_mask() & !used_channels;
        if free_channels == 0 {
            bail!(
                "all {} control channels are in use by other rampart-vmm processes ({}); wait for one to finish",
                self.channels,
                self.holders()
            );
        }
        let mut channels = 0u64;
        for i in 0..64 {
            if channels.count_ones() >= want_channels.max(1) {
                break;
            }
            if free_channels & (1 << i) != 0 {
                channels |= 1 << i;
            }
        }
        let bytes = pages
            .checked_mul(PAGE_SIZE)
            .context("allocation size overflows")?;
        let mut regions: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter(|e| e.pages > 0)
            .map(|e| (e.offset, e.end()))
            .collect();
        regions.sort_unstable();
        let offset = if pages == 0 {
            0
        } else if let Some(at) = fixed {
            if !at.is_multiple_of(PAGE_SIZE) {
                bail!("--pool-offset {at:#x} is not page-aligned");
            }
            if at.checked_add(bytes).is_none_or(|end| end > self.pool_size) {
                bail!(
                    "--pool-offset {at:#x} + {pages} pages runs past the end of the {}-KiB pool",
                    self.pool_size / 1024
                );
            }
            if let Some(e) = self
                .entries
                .iter()
                .find(|e| e.pages > 0 && e.offset < at + bytes && at < e.end())
            {
                bail!(
                    "--pool-offset {at:#x} ({pages} pages) overlaps the region {:#x}..{:#x} of pid {} ({})",
                    e.offset,
                    e.end(),
                    e.pid,
                    e.name
                );
            }
            at
        } else {
            let mut candidate = 0u64;
            let mut largest = 0u64;
            let mut found = None;
            for (start, end) in regions
                .iter()
                .copied()
                .chain([(self.pool_size, self.pool_size)])
            {
                if start >= candidate {
                    let gap = start - candidate;
                    largest = largest.max(gap);
                    if gap >= bytes {
                        found = Some(candidate);
                        break;
                    }
                }
                candidate = candidate.max(end.next_multiple_of(REGION_ALIGN));
            }
            found.with_context(|| self.exhausted(pages, largest))?
        };
        let entry = Entry {
            pid,
            offset,
            pages,
            channels,
            vm: 0,
            name: name.to_string(),
        };
        self.entries.push(entry.clone());
        Ok(entry)
    }

    /// Who holds channels: every entry with some (orphans hold none).
    fn holders(&self) -> String {
        self.entries
            .iter()
            .filter(|e| e.channels != 0)
            .map(|e| format!("pid {} ({})", e.pid, e.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Why `pages` pages do not fit, when the largest free range has
    /// `largest` bytes: says who holds the pool's pages (live VMMs, and
    /// orphans a killed VMM left), or that the VM is larger than the whole
    /// pool when nothing holds any.
    fn exhausted(&self, pages: u64, largest: u64) -> String {
        let total = self.pool_size / PAGE_SIZE;
        let holding: Vec<&Entry> = self.entries.iter().filter(|e| e.pages > 0).collect();
        let used: u64 = holding.iter().map(|e| e.pages).sum();
        let needs = format!(
            "this VM needs {pages} pages ({} KiB)",
            pages.saturating_mul(PAGE_SIZE) / 1024
        );
        if holding.is_empty() {
            return format!(
                "the guest pool is too small: {needs} but the whole pool has {total} pages ({} KiB), none of them in use; boot the host with a larger `rampart.pool=<MiB>`",
                self.pool_size / 1024
            );
        }
        let who = holding
            .iter()
            .map(|e| {
                if e.pid == 0 {
                    format!(
                        "{} by VM {:#x} left by a killed VMM (`rampart-vmm reclaim` frees them)",
                        e.pages, e.vm
                    )
                } else {
                    format!("{} by pid {} ({})", e.pages, e.pid, e.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "the guest pool is exhausted: {needs} but the largest free range has {} pages ({} KiB); the pool has {total} pages, {used} in use: {who}",
            largest / PAGE_SIZE,
            largest / 1024,
        )
    }

    /// Records `pid`'s VM handle.
    pub fn set_vm(&mut self, pid: u32, vm: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.pid == pid) {
            e.vm = vm;
        }
    }

    /// Drops `pid`'s entry.
    pub fn release(&mut self, pid: u32) {
        self.entries.retain(|e| e.pid != pid);
    }
}

/// Proof of life: every process with an entry holds an exclusive `flock`
/// on `<state dir>/pids/<pid>.lock` until it exits (the kernel drops the
/// lock however it dies). Robust against renamed binaries and reused pids.
pub struct Alive {
    _file: File,
    path: PathBuf,
}

impl Alive {
    /// Takes this process's lock.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn hold(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("pids");
        let path = dir.join(format!("{}.lock", std::process::id()));
        // The directory is made only when the file cannot be created
        // without it (the first process of a boot): one system call less
        // per launch (issue 16).
        let file = match File::create(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                File::create(&path)
            }
            other => other,
        }
        .with_context(|| format!("creating {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Alive { _file: file, path })
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` still holds its [`Alive`] lock.
#[must_use]
pub fn alive(state_dir: &Path, pid: u32) -> bool {
    let path = state_dir.join("pids").join(format!("{pid}.lock"));
    let Ok(file) = File::open(&path) else {
        return false;
    };
    match file.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => true,
        Ok(()) => {
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

/// The table file, locked for the lifetime of this value.
pub struct Locked {
    file: File,
    /// The table as read.
    pub table: Table,
    original: String,
}

/// The allocation table's file.
#[derive(Clone, Debug)]
pub struct TableFile {
    path: PathBuf,
}

impl TableFile {
    /// `<state dir>/pool`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        TableFile {
            path: state_dir.join("pool"),
        }
    }

    /// Opens (creating it and its directory), locks and reads the table.
    ///
    /// # Errors
    ///
    /// I/O errors, named.
    pub fn lock(&self, pool_base: u64, pool_size: u64, channels: u32) -> Result<Locked> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
        };
        // The state directory is made only when the table cannot be
        // opened without it (one system call less per launch, issue 16).
        let mut file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("creating the state directory {}", dir.display())
                    })?;
                }
                open()
            }
            other => other,
        }
        .with_context(|| {
                format!("opening the pool allocation table {}", self.path.display())
            })?;
        file.lock()
            .with_context(|| format!("locking {}", self.path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(Locked {
            table: Table::parse(&text, pool_base, pool_size, channels),
            original: text,
            file,
        })
    }
}

impl Locked {
    /// Writes the table back if it changed, and unlocks it: the new text
    /// over the old from the start, then the file cut to its length (no
    /// moment at which the file is empty, and no `lseek`).
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn commit(self) -> Result<()> {
        let text = self.table.render();
        if text != self.original {
            self.file.write_all_at(text.as_bytes(), 0)?;
            self.file.set_len(text.len() as u64)?;
            self.file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: u64 = 64 << 20;

    fn table() -> Table {
        Table::new(0x7c00_0000, POOL, 16)
    }

    #[test]
    fn first_fit_aligned_regions_and_channels() {
        let mut t = table();
        let a = t.allocate(10, 285, 2, None, "hello").unwrap();
        assert_eq!((a.offset, a.channels), (0, 0b11));
        let b = t.allocate(11, 541, 5, None, "smp").unwrap();
        assert_eq!(b.offset, (285 * 4096u64).next_multiple_of(REGION_ALIGN));
        assert_eq!(b.channels, 0b111_1100);
        assert_eq!(b.channel_list(), vec![2, 3, 4, 5, 6]);
        // A caller with no pages takes only a channel.
        let c = t.allocate(12, 0, 1, None, "list").unwrap();
        assert_eq!((c.pages, c.channels), (0, 1 << 7));
        // A freed hole is reused.
        t.release(10);
        let d = t.allocate(13, 100, 1, None, "small").unwrap();
        assert_eq!((d.offset, d.channels), (0, 1));
        let e = t.allocate(14, 100, 1, None, "small2").unwrap();
        assert_eq!(e.offset, (100 * 4096u64).next_multiple_of(REGION_ALIGN));
        assert!(t.allocate(14, 1, 1, None, "again").is_err());
    }

    #[test]
    fn four_vms_fit_and_never_overlap() {
        let mut t = table();
        let mut regions = Vec::new();
        for pid in 1..=4 {
            let e = t.allocate(pid, 2 * 256 + 40, 5, None, "vm").unwrap();
            regions.push((e.offset, e.end(), e.channels));
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:?} {b:?}");
                assert_eq!(a.2 & b.2, 0, "channels shared");
            }
        }
        // 16 channels: 3 processes got 5, the 4th the last one.
        assert_eq!(regions[3].2.count_ones(), 1);
        let e = t.allocate(5, 1, 1, None, "x").unwrap_err().to_string();
        assert!(e.contains("all 16 control channels are in use"), "{e}");
    }

    #[test]
    fn exhaustion_says_how_much() {
        let mut t = table();
        t.allocate(1, 10_000, 1, None, "big").unwrap();
        let e = t
            .allocate(2, 10_000, 1, None, "big2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 10000 pages"), "{e}");
        assert!(e.contains("largest free range has"), "{e}");
        assert!(e.contains("10000 in use: 10000 by pid 1 (big)"), "{e}");
        assert!(t.allocate(3, (POOL / 4096) + 1, 1, None, "huge").is_err());
    }

    #[test]
    fn a_vm_larger_than_an_empty_pool_is_not_blamed_on_anyone() {
        let mut t = table();
        // `list` holds a channel but no pages.
        t.allocate(7, 0, 1, None, "list").unwrap();
        let e = t
            .allocate(2, (POOL / 4096) + 1, 1, None, "huge")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("nobody") && !e.contains("0 in use"), "{e}");
        assert!(
            e.contains("too small") && e.contains("none of them in use"),
            "{e}"
        );
        assert!(e.contains("rampart.pool="), "{e}");
    }

    #[test]
    fn exhaustion_names_orphans_and_only_page_holders() {
        let mut t = table();
        t.allocate(1, 8_000, 1, None, "a").unwrap();
        let orphan = t.allocate(9, 8_000, 1, None, "gone").unwrap();
        t.release(9);
        t.keep_orphan(Entry {
            vm: 0x4_0000_1000,
            ..orphan
        });
        t.allocate(7, 0, 1, None, "list").unwrap();
        let e = t.allocate(2, 8_000, 1, None, "b").unwrap_err().to_string();
        assert!(
            e.contains("16000 in use: 8000 by pid 1 (a), 8000 by VM 0x400001000"),
            "{e}"
        );
        assert!(e.contains("reclaim"), "{e}");
        assert!(!e.contains("list"), "{e}");
    }

    #[test]
    fn fixed_offsets_are_checked() {
        let mut t = table();
        t.allocate(1, 16, 1, Some(0x10_0000), "a").unwrap();
        assert!(
            t.allocate(2, 16, 1, Some(0x10_8000), "b")
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        assert!(
            t.allocate(2, 16, 1, Some(0x123), "b")
                .unwrap_err()
                .to_string()
                .contains("page-aligned")
        );
        assert!(
            t.allocate(2, 16, 1, Some(POOL - 4096), "b")
                .unwrap_err()
                .to_string()
                .contains("past the end")
        );
        assert_eq!(
            t.allocate(2, 16, 1, Some(0x11_0000), "b").unwrap().offset,
            0x11_0000
        );
        // Automatic allocation goes around fixed regions.
        assert_eq!(t.allocate(3, 300, 1, None, "c").unwrap().offset, 0x12_0000);
    }

    #[test]
    fn stale_entries_and_orphans() {
        let mut t = table();
        t.allocate(1, 16, 2, None, "dead").unwrap();
        t.set_vm(1, 0x1_0000_1000);
        t.allocate(2, 16, 2, None, "alive").unwrap();
        let stale = t.take_stale(|pid| pid == 2);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].vm, 0x1_0000_1000);
        assert_eq!(t.entries.len(), 1);
        // Its VM could not be destroyed: the pages stay reserved, the
        // channels are free again.
        t.keep_orphan(stale[0].clone());
        let n = t.allocate(3, 16, 2, None, "new").unwrap();
        assert_ne!(n.offset, 0);
        assert_eq!(n.channels, 0b11);
        // Orphans are retried every time.
        assert_eq!(t.take_stale(|_| true).len(), 1);
    }

    #[test]
    fn round_trips_through_text() {
        let mut t = table();
        t.allocate(7, 285, 2, None, "hello world").unwrap();
        t.set_vm(7, 0x3_0000_1002);
        t.allocate(8, 0, 1, None, "list").unwrap();
        let text = t.render();
        assert!(
            text.starts_with("rampart-vmm-pool v1 base=0x7c000000 size=0x4000000 channels=16\n")
        );
        assert!(
            text.contains(
                "pid=7 offset=0x0 pages=285 channels=0x3 vm=0x300001002 name=hello_world"
            )
        );
        let back = Table::parse(&text, 0x7c00_0000, POOL, 16);
        assert_eq!(back.entries.len(), 2);
        assert_eq!(back.entries[0].vm, 0x3_0000_1002);
        assert_eq!(back.render(), text);
        // Another pool or channel count: the old entries do not apply.
        assert!(
            Table::parse(&text, 0x8000_0000, POOL, 16)
                .entries
                .is_empty()
        );
        assert!(Table::parse(&text, 0x7c00_0000, POOL, 8).entries.is_empty());
        // Garbage and out-of-range lines are dropped.
        let bad =
            format!("{text}pid=9 offset=0x0 pages=99999999 channels=0x0 vm=0x0 name=x\nnonsense\n");
        assert_eq!(Table::parse(&bad, 0x7c00_0000, POOL, 16).entries.len(), 2);
    }

    #[test]
    fn liveness_is_a_held_lock() {
        let s = crate::dt::tests::Scratch::new("alive");
        let me = std::process::id();
        assert!(!alive(&s.0, me));
        let a = Alive::hold(&s.0).unwrap();
        assert!(alive(&s.0, me));
        drop(a);
        assert!(!alive(&s.0, me));
        // A lock file nobody holds (its process died) is dead, and removed.
        std::fs::write(s.0.join("pids/4242.lock"), "").unwrap();
        assert!(!alive(&s.0, 4242));
        assert!(!s.0.join("pids/4242.lock").exists());
    }

    #[test]
    fn the_file_is_locked_and_rewritten() {
        let s = crate::dt::tests::Scratch::new("pool");
        let file = TableFile::new(&s.0.join("state"));
        let mut l = file.lock(0x7c00_0000, POOL, 16).unwrap();
        l.table.allocate(1, 16, 1, None, "a").unwrap();
        l.commit().unwrap();
        let l = file.lock(0x7c00_0000, POOL, 16).unwrap();
        assert_eq!(l.table.entries.len(), 1);
        drop(l);
    }
}
