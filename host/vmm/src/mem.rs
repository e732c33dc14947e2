//! Physical memory through `/dev/mem`: the control pages and the guest
//! pool.
//!
//! The kernel maps `/dev/mem` ranges that are not its RAM as Device memory,
//! so every access here is a naturally aligned 64-bit load or store, one
//! plain `LDR`/`STR` each: no `memcpy`, `memset` or `DC ZVA`, which could
//! use unaligned or cache-maintenance accesses that fault on Device memory,
//! and no paired or writeback forms, which the control pages refuse.
//!
//! **Caches.** For a `no-map` range `/dev/mem` with `O_SYNC` gives a
//! Device-nGnRnE mapping: every VMM access goes straight to DRAM. A guest
//! (and the hypervisor) use the same memory as Normal write-back cacheable,
//! so the two views are mismatched, which QEMU cannot show but hardware
//! does: a guest's write may sit dirty in a CPU's cache while the VMM reads
//! stale DRAM, and a VMM write to DRAM may be hidden from the guest by a
//! stale clean line, or overwritten later when a dirty line is evicted. A
//! mapping made with [`Mapping::guest_memory`] therefore does data-cache
//! maintenance by VA from EL0 around every access (`DC CIVAC`, which Linux
//! lets user space run: `SCTLR_EL1.UCI`; it applies to the physical line
//! whatever the mapping's memory type): before a read, so that dirty guest
//! data reaches DRAM first; before a write, so that no dirty line is later
//! written back over it; after a write, so that no stale clean line hides
//! it; each followed by `DSB SY`. The control pages are never maintained:
//! they are trapped, not memory. `docs/design.md` has the whole argument.
//!
//! Pages a protected guest owns are not the host's: touching them is an
//! abort, which Linux delivers as `SIGBUS`. Accesses that may legitimately
//! abort (pages a guest shared and may have taken back) go through
//! [`Mapping::guarded_read`] / [`Mapping::guarded_write`], which make them
//! in a forked child so that a `SIGBUS` ends the child, not the VMM.

use std::ffi::CString;
use std::io;

use anyhow::{Result, bail};

/// The physical-memory device (normally `/dev/mem`), open read-write with
/// `O_SYNC`, for any number of [`Mapping`]s (issue 16: an `open` and a
/// `close` a mapping were four system calls of a launch).
pub struct DevMem {
    fd: std::os::fd::OwnedFd,
    path: String,
}

/// `phys` and `len` make a non-empty page-aligned range.
fn check_range(phys: u64, len: usize, what: &str) -> Result<()> {
    if !phys.is_multiple_of(page_size() as u64) || len == 0 {
        bail!("{what}: {phys:#x} (+{len:#x}) is not a page-aligned range");
    }
    Ok(())
}

impl DevMem {
    /// Opens `dev`; `what` names the first range it is opened for, in
    /// errors.
    ///
    /// # Errors
    ///
    /// Explains permission refusals and a kernel without `/dev/mem`.
    pub fn open(dev: &str, what: &str) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let path = CString::new(dev)?;
        // SAFETY: a plain open(2) of a NUL-terminated path.
        let fd =
            unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => {
                    "rampart-vmm must run as root (it needs CAP_SYS_RAWIO to open /dev/mem)"
                }
                Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => {
                    "the host kernel has no /dev/mem (CONFIG_DEVMEM)"
                }
                _ => "",
            };
            bail!(
                "opening {dev} for {what}: {e}{}{hint}",
                if hint.is_empty() { "" } else { ": " }
            );
        }
        Ok(DevMem {
            // SAFETY: open(2) just returned this descriptor; nothing else
            // owns it.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
            path: dev.to_string(),
        })
    }

    /// Maps `len` bytes of physical memory at `phys`, read-write, shared.
    /// `what` names the range in errors.
    ///
    /// # Errors
    ///
    /// Explains `STRICT_DEVMEM` refusals and ranges that do not fit.
    pub fn map(&self, phys: u64, len: usize, what: &str) -> Result<Mapping> {
        use std::os::fd::AsRawFd;
        check_range(phys, len, what)?;
        let dev = &self.path;
        let Ok(offset) = libc::off_t::try_from(phys) else {
            bail!("{what}: physical address {phys:#x} does not fit off_t");
        };
        // SAFETY: mapping a file we hold open; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => {
                    " (with STRICT_DEVMEM / IO_STRICT_DEVMEM the kernel lets /dev/mem reach only ranges that are neither System RAM nor claimed by a driver: the guest pool must be a `no-map` /reserved-memory node, and no driver may claim the control pages; running as root is also required)"
                }
                Some(libc::EINVAL) => {
                    " (the range is not page-aligned, or beyond what /dev/mem can map)"
                }
                _ => "",
            };
            bail!(
                "mmap of {dev} for {what} at {phys:#x}..{:#x} failed: {e}{hint}",
                phys + len as u64
            );
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            maintain: false,
        })
    }

    /// Like [`DevMem::map`], for memory guests use
    /// ([`Mapping::guest_memory`]).
    ///
    /// # Errors
    ///
    /// As [`DevMem::map`].
    pub fn map_guest_memory(&self, phys: u64, len: usize, what: &str) -> Result<Mapping> {
        let mut m = self.map(phys, len, what)?;
        m.maintain = true;
        Ok(m)
    }
}

/// A memory mapping, unmapped on drop.
pub struct Mapping {
    ptr: *mut u64,
    len: usize,
    /// Guest memory: maintain the data cache around every access.
    maintain: bool,
}

// SAFETY: the mapping is plain shared memory; every access is a volatile
// 64-bit load or store, which is atomic for aligned words on AArch64 and
// x86-64, and the VMM's protocol decides who writes what.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// How a guarded access went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The access aborted (the child died of this signal, normally SIGBUS).
    Signal(i32),
    /// fork/pipe/wait failed, or the child exited oddly.
    Failed,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Signal(s) if *s == libc::SIGBUS => write!(f, "the access aborted (SIGBUS)"),
            Fault::Signal(s) => write!(f, "the access was killed by signal {s}"),
            Fault::Failed => write!(f, "the probe process failed"),
        }
    }
}

fn page_size() -> usize {
    4096
}

/// A 64-bit load as one plain `LDR Xt, [Xn]`.
///
/// The control pages are emulated by the hypervisor from the trapped
/// access's syndrome, which is valid only for single loads and stores
/// without writeback; a compiler-chosen `LDP`/`STP` or post-indexed form
/// would be refused (`SIGBUS`). So the instruction is fixed here, as
/// Linux's `readq`/`writeq` do.
///
/// # Safety
///
/// `p` must be valid and 8-byte aligned.
#[inline]
unsafe fn load(p: *const u64) -> u64 {
    #[cfg(target_arch = "aarch64")]
    {
        let value: u64;
        // SAFETY: the caller's contract; a single aligned load.
        unsafe {
            core::arch::asm!("ldr {v}, [{p}]", p = in(reg) p, v = out(reg) value, options(nostack, preserves_flags));
        }
        value
    }
    #[cfg(not(target_arch = "aarch64"))]
    // SAFETY: the caller's contract.
    unsafe {
        p.read_volatile()
    }
}

/// A 64-bit store as one plain `STR Xt, [Xn]` (see [`load`]).
///
/// # Safety
///
/// `p` must be valid and 8-byte aligned.
#[inline]
unsafe fn store(p: *mut u64, value: u64) {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the caller's contract; a single aligned store.
    unsafe {
        core::arch::asm!("str {v}, [{p}]", p = in(reg) p, v = in(reg) value, options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "aarch64"))]
    // SAFETY: the caller's contract.
    unsafe {
        p.write_volatile(value);
    }
}

/// Zeroes `words` 64-bit words at `p`: single `STR`s up to a 16-byte
/// boundary and after the last whole pair, `STP XZR, XZR` pairs in between
/// (aligned, so valid on Device memory too).
///
/// # Safety
///
/// `p` must be 8-byte aligned and `words` words from it writable memory
/// that is not trapped (pairs are not emulated on the control pages).
unsafe fn zero_words(p: *mut u64, words: usize) {
    let mut at = p;
    let mut left = words;
    if left > 0 && !(at as usize).is_multiple_of(16) {
        // SAFETY: inside the caller's range.
        unsafe {
            store(at, 0);
            at = at.add(1);
        }
        left -= 1;
    }
    #[cfg(target_arch = "aarch64")]
    {
        let blocks = left / 8;
        if blocks > 0 {
            // SAFETY: 64 * `blocks` bytes from `at` (16-aligned) are inside
            // the caller's range; `at` ends one past them.
            unsafe {
                core::arch::asm!(
                    "2:",
                    "stp xzr, xzr, [{p}]",
                    "stp xzr, xzr, [{p}, #16]",
                    "stp xzr, xzr, [{p}, #32]",
                    "stp xzr, xzr, [{p}, #48]",
                    "add {p}, {p}, #64",
                    "subs {n}, {n}, #1",
                    "b.ne 2b",
                    p = inout(reg) at,
                    n = inout(reg) blocks => _,
                    options(nostack),
                );
            }
            left -= blocks * 8;
        }
    }
    for _ in 0..left {
        // SAFETY: inside the caller's range.
        unsafe {
            store(at, 0);
            at = at.add(1);
        }
    }
}

/// Guest memory mapped through `/dev/mem` on its first use (issue 16).
/// Mapping a range costs the kernel a check of every page (`/dev/mem`'s
/// `range_is_allowed` walks the resource tree twice a page, then the page
/// tables are filled): about 470 instructions a page under TCG, 0.13
/// million of a launch for the bench guest's 284 pages, all before the
/// guest runs. A bare-metal run writes only its image pages before the
/// first run (through a mapping of just those) and touches the rest of
/// its region only for the test protocol's checks, `--swap` and
/// migration, so the whole region is mapped the first time one of them
/// needs it.
pub struct LazyMapping {
    /// `/dev/mem`, the range and its name; `None`: made mapped.
    source: Option<(String, u64, usize, &'static str)>,
    map: std::sync::OnceLock<Result<Mapping, String>>,
}

impl LazyMapping {
    /// `len` bytes of guest memory at `phys` through `dev`, mapped (as
    /// [`Mapping::guest_memory`]) when [`LazyMapping::get`] first needs
    /// them; `what` names the range in errors.
    #[must_use]
    pub fn new(dev: &str, phys: u64, len: usize, what: &'static str) -> Self {
        LazyMapping {
            source: Some((dev.to_string(), phys, len, what)),
            map: std::sync::OnceLock::new(),
        }
    }

    /// A mapping made already.
    #[cfg(test)]
    #[must_use]
    pub fn ready(mapping: Mapping) -> Self {
        let map = std::sync::OnceLock::new();
        let _ = map.set(Ok(mapping));
        LazyMapping { source: None, map }
    }

    /// The mapping, made now if it was not yet (and noted for the SIGBUS
    /// handler as the pool).
    ///
    /// # Errors
    ///
    /// The mapping's error (kept: later calls give it again).
    pub fn get(&self) -> Result<&Mapping, String> {
        self.map
            .get_or_init(|| {
                let Some((dev, phys, len, what)) = &self.source else {
                    return Err("no mapping".to_string());
                };
                let m = Mapping::guest_memory(dev, *phys, *len, what).map_err(|e| format!("{e:#}"))?;
                crate::signals::note_mapping(m.span(), crate::signals::Region::Pool);
                Ok(m)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Guest memory for a run: mapped, or mapped on first use.
#[derive(Clone, Copy)]
pub enum GuestRam<'a> {
    /// Mapped.
    Mapped(&'a Mapping),
    /// Mapped on first use.
    Lazy(&'a LazyMapping),
}

impl GuestRam<'_> {
    /// The mapping (made now if it is lazy and was not yet).
    ///
    /// # Errors
    ///
    /// The mapping's error.
    pub fn get(&self) -> Result<&Mapping, String> {
        match self {
            GuestRam::Mapped(m) => Ok(m),
            GuestRam::Lazy(l) => l.get(),
        }
    }
}

impl<'a> From<&'a Mapping> for GuestRam<'a> {
    fn from(m: &'a Mapping) -> Self {
        GuestRam::Mapped(m)
    }
}

impl<'a> From<&'a LazyMapping> for GuestRam<'a> {
    fn from(l: &'a LazyMapping) -> Self {
        GuestRam::Lazy(l)
    }
}

impl Mapping {
    /// Maps `len` bytes of physical memory at `phys` through `dev` (normally
    /// `/dev/mem`), read-write, shared, with `O_SYNC`. `what` names the
    /// range in errors. (A VMM making several mappings opens the device
    /// once: [`DevMem`].)
    ///
    /// # Errors
    ///
    /// Explains permission and `STRICT_DEVMEM` refusals.
    pub fn phys(dev: &str, phys: u64, len: usize, what: &str) -> Result<Self> {
        check_range(phys, len, what)?;
        DevMem::open(dev, what)?.map(phys, len, what)
    }

    /// Like [`Mapping::phys`], for memory guests use (the guest pool): every
    /// access is wrapped in data-cache maintenance (see the module's
    /// documentation), so the VMM's uncached view and the guests' cached
    /// one agree.
    ///
    /// # Errors
    ///
    /// As [`Mapping::phys`].
    pub fn guest_memory(dev: &str, phys: u64, len: usize, what: &str) -> Result<Self> {
        let mut m = Self::phys(dev, phys, len, what)?;
        m.maintain = true;
        Ok(m)
    }

    /// The mapping's first byte and its length, to tell which mapping a
    /// faulting address is in ([`crate::signals::note_mapping`]).
    #[must_use]
    pub fn span(&self) -> (usize, usize) {
        (self.ptr as usize, self.len)
    }

    /// Cleans and invalidates the data-cache lines of `[offset, offset +
    /// len)` to the point of coherency, then `DSB SY` (guest memory only).
    fn sync(&self, offset: usize, len: usize) {
        if !self.maintain || len == 0 {
            return;
        }
        #[cfg(test)]
        SYNCS.with(|s| s.borrow_mut().push((offset, len)));
        // SAFETY: `word` checked the range; the lines lie in our mapping.
        unsafe { clean_inval_poc(self.ptr.cast::<u8>().add(offset), len) };
    }

    #[cfg(test)]
    /// Anonymous shared memory (tests: stands in for the pool; shared so a
    /// forked child's writes reach it).
    ///
    /// # Errors
    ///
    /// If mmap fails.
    pub fn anonymous(len: usize) -> Result<Self> {
        // SAFETY: an anonymous mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "anonymous mmap of {len} bytes: {}",
                io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            maintain: false,
        })
    }

    /// Length in bytes.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    fn word(&self, offset: usize) -> *mut u64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len,
            "access at {offset:#x} outside or unaligned in a {:#x}-byte mapping",
            self.len
        );
        // SAFETY: in bounds (checked above).
        unsafe { self.ptr.add(offset / 8) }
    }

    /// A 64-bit load at byte `offset` (8-aligned).
    ///
    /// # Panics
    ///
    /// If `offset` is unaligned or out of range.
    #[must_use]
    pub fn read_u64(&self, offset: usize) -> u64 {
        let p = self.word(offset);
        self.sync(offset, 8);
        // SAFETY: an aligned word inside the mapping.
        unsafe { load(p) }
    }

    /// `len` bytes (a multiple of 8) at `offset` (8-aligned), word by word,
    /// with one cache maintenance for the whole range (sealed swap: a page
    /// the hypervisor just wrote).
    ///
    /// # Panics
    ///
    /// If the range is unaligned or out of range.
    #[must_use]
    pub fn read_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(len.is_multiple_of(8));
        if len == 0 {
            return Vec::new();
        }
        let _ = self.word(offset + len - 8);
        self.sync(offset, len);
        (offset..offset + len)
            .step_by(8)
            // SAFETY: an aligned word inside the mapping (checked above).
            .flat_map(|at| unsafe { load(self.word(at)) }.to_le_bytes())
            .collect()
    }

    /// A 64-bit store at byte `offset` (8-aligned).
    ///
    /// # Panics
    ///
    /// If `offset` is unaligned or out of range.
    pub fn write_u64(&self, offset: usize, value: u64) {
        let p = self.word(offset);
        self.sync(offset, 8);
        // SAFETY: an aligned word inside the mapping.
        unsafe { store(p, value) }
        self.sync(offset, 8);
    }

    /// Copies `bytes` to `offset` (8-aligned) word by word; the last word
    /// is zero-padded.
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        let len = bytes.len().next_multiple_of(8);
        if len == 0 {
            return;
        }
        let _ = self.word(offset);
        let _ = self.word(offset + len - 8);
        self.sync(offset, len);
        // SAFETY: `[offset, offset + len)` is inside the mapping and
        // 8-aligned (both ends checked above).
        let base = unsafe { self.ptr.add(offset / 8) };
        let mut words = bytes.chunks_exact(8);
        for (i, chunk) in words.by_ref().enumerate() {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            // SAFETY: word `i` of the checked range.
            unsafe { store(base.add(i), word) };
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            // SAFETY: the checked range's last word.
            unsafe { store(base.add(len / 8 - 1), u64::from_le_bytes(word)) };
        }
        self.sync(offset, len);
    }

    /// Zeroes `len` bytes (a multiple of 8) at `offset`.
    ///
    /// Guest memory (never trapped: pool RAM the host owns) is zeroed with
    /// `STP XZR, XZR` of aligned 16-byte pairs, four a loop: about 6
    /// instructions per 64 bytes where one checked `STR` a word took about
    /// 10 per 8 (launch zeroes most of a guest's RAM this way). The control
    /// pages keep single `STR`s (see [`load`]).
    pub fn zero(&self, offset: usize, len: usize) {
        assert!(len.is_multiple_of(8));
        if len == 0 {
            return;
        }
        let _ = self.word(offset);
        let _ = self.word(offset + len - 8);
        self.sync(offset, len);
        if self.maintain {
            // SAFETY: `[offset, offset + len)` is inside the mapping and
            // 8-aligned (both ends checked above).
            unsafe { zero_words(self.ptr.add(offset / 8), len / 8) };
        } else {
            for at in (offset..offset + len).step_by(8) {
                // SAFETY: an aligned word inside the mapping (checked above).
                unsafe { store(self.word(at), 0) };
            }
        }
        self.sync(offset, len);
    }

    /// Reads `len` bytes (a multiple of 8) at `offset` in a child process:
    /// an abort kills the child, not the VMM.
    ///
    /// # Errors
    ///
    /// [`Fault`] if the access aborted or the probe failed.
    pub fn guarded_read(&self, offset: usize, len: usize) -> Result<Vec<u8>, Fault> {
        assert!(len.is_multiple_of(8) && offset + len <= self.len);
        let _ = self.word(offset);
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a 2-element array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(Fault::Failed);
        }
        // SAFETY: fork(2); the child only does volatile loads, write(2) and
        // _exit(2), all safe after fork in a multi-threaded process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            // SAFETY: our fds.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            return Err(Fault::Failed);
        }
        if pid == 0 {
            // SAFETY: in the child: close the read end, stream the words
            // out, exit without running any Rust teardown.
            unsafe {
                default_fault_actions();
                libc::close(fds[0]);
                self.sync(offset, len);
                let mut buf = [0u8; 512];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(buf.len());
                    for k in (0..n).step_by(8) {
                        let w = load(self.ptr.add((at + k) / 8));
                        buf[k..k + 8].copy_from_slice(&w.to_le_bytes());
                    }
                    let mut sent = 0;
                    while sent < n {
                        let r = libc::write(fds[1], buf[sent..].as_ptr().cast(), n - sent);
                        if r <= 0 {
                            libc::_exit(3);
                        }
                        sent += r.cast_unsigned();
                    }
                    at += n;
                }
                libc::_exit(0);
            }
        }
        // SAFETY: the parent's copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::with_capacity(len);
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a local buffer.
            let r = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                out.extend_from_slice(&buf[..r.cast_unsigned()]);
            } else if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fds[0]) };
        wait(pid)?;
        if out.len() == len {
            Ok(out)
        } else {
            Err(Fault::Failed)
        }
    }

    /// Stores `words` from `offset` (8-aligned), in order, in a child
    /// process: an abort kills the child, not the VMM.
    ///
    /// # Errors
    ///
    /// [`Fault`] if the access aborted or the probe failed.
    pub fn guarded_write(&self, offset: usize, words: &[(usize, u64)]) -> Result<(), Fault> {
        for (at, _) in words {
            let _ = self.word(offset + at);
        }
        // SAFETY: fork(2); the child only does volatile stores and _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Fault::Failed);
        }
        if pid == 0 {
            // SAFETY: in the child.
            unsafe { default_fault_actions() };
            for (at, value) in words {
                self.sync(offset + at, 8);
                // SAFETY: checked in bounds above, in the parent.
                unsafe { store(self.ptr.add((offset + at) / 8), *value) };
                self.sync(offset + at, 8);
            }
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(0) };
        }
        wait(pid)
    }
}

#[cfg(test)]
std::thread_local! {
    /// `(offset, len)` of every maintenance call on this thread (tests).
    static SYNCS: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `DC CIVAC` over every line of `[p, p + len)`, then `DSB SY`. No-op on
/// the build machine's architecture (tests).
///
/// # Safety
///
/// The range must lie in one of this process's mappings.
#[allow(unused_variables, reason = "used on aarch64 only")]
pub(crate) unsafe fn clean_inval_poc(p: *const u8, len: usize) {
    #[cfg(target_arch = "aarch64")]
    {
        let ctr: u64;
        // SAFETY: CTR_EL0 is readable at EL0 (or emulated by Linux).
        unsafe {
            core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags))
        };
        let line = 4usize << ((ctr >> 16) & 0xf);
        let mut at = p as usize & !(line - 1);
        let end = p as usize + len;
        while at < end {
            // SAFETY: the line is in the caller's mapping; DC CIVAC does not
            // change memory contents as software sees them.
            unsafe {
                core::arch::asm!("dc civac, {}", in(reg) at, options(nostack, preserves_flags))
            };
            at += line;
        }
        // SAFETY: a barrier.
        unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
    }
}

/// In a probe child: let SIGBUS and SIGSEGV kill it (not the VMM's
/// SIGBUS handler, which would exit with a message).
///
/// # Safety
///
/// Only in a forked child (signal(2) is async-signal-safe).
unsafe fn default_fault_actions() {
    // SAFETY: restoring default actions.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
    }
}

fn wait(pid: libc::pid_t) -> Result<(), Fault> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(Fault::Failed);
        }
    }
    if libc::WIFSIGNALED(status) {
        Err(Fault::Signal(libc::WTERMSIG(status)))
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(Fault::Failed)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_bytes_and_zero() {
        let m = Mapping::anonymous(8192).unwrap();
        m.write_bytes(8, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(m.read_u64(8), 0x0807_0605_0403_0201);
        assert_eq!(m.read_u64(16), 0x0a09);
        m.zero(8, 16);
        assert_eq!((m.read_u64(8), m.read_u64(16)), (0, 0));
    }

    #[test]
    fn guest_memory_is_maintained_around_each_access_and_control_pages_never() {
        let s = crate::dt::tests::Scratch::new("maintain");
        let path = s.0.join("mem");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let take = || SYNCS.with(|v| std::mem::take(&mut *v.borrow_mut()));
        let plain = Mapping::phys(path.to_str().unwrap(), 0, 8192, "control").unwrap();
        plain.write_bytes(0, &[1; 24]);
        let _ = plain.read_u64(0);
        assert_eq!(take(), []);
        let guest = Mapping::guest_memory(path.to_str().unwrap(), 0, 8192, "pool").unwrap();
        guest.write_bytes(64, &[1; 20]);
        assert_eq!(take(), [(64, 24), (64, 24)], "before and after the write");
        assert_eq!(guest.read_u64(64), 0x0101_0101_0101_0101);
        assert_eq!(take(), [(64, 8)], "before the read");
        guest.zero(4096, 4096);
        assert_eq!(take(), [(4096, 4096), (4096, 4096)]);
        guest.write_u64(8, 3);
        assert_eq!(take(), [(8, 8), (8, 8)]);
        guest.zero(0, 0);
        assert_eq!(take(), []);
    }

    /// A lazy mapping maps nothing until it is first used: a device that
    /// does not exist is an error only then, and every later use gives the
    /// same answer; once mapped it is the range of the device.
    #[test]
    fn a_lazy_mapping_maps_on_first_use() {
        let s = crate::dt::tests::Scratch::new("lazy");
        let path = s.0.join("mem");
        let missing = LazyMapping::new(path.to_str().unwrap(), 4096, 4096, "the guest pool");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        // Created before the file existed, mapped after: it maps now.
        assert_eq!(missing.get().unwrap().read_u64(0), 0x0707_0707_0707_0707);
        let gone = s.0.join("none");
        let lazy = LazyMapping::new(gone.to_str().unwrap(), 0, 4096, "the guest pool");
        let e = lazy.get().err().unwrap();
        assert!(e.contains("the guest pool"), "{e}");
        let e = Some(e);
        std::fs::write(&gone, vec![0u8; 4096]).unwrap();
        assert_eq!(lazy.get().err(), e, "the first answer is kept");
        let ready = LazyMapping::ready(Mapping::anonymous(4096).unwrap());
        assert!(GuestRam::from(&ready).get().is_ok());
    }

    /// Zeroing guest memory (the paired path) clears exactly the range,
    /// from any 8-aligned start and length, and nothing next to it.
    #[test]
    fn guest_memory_zero_clears_exactly_the_range() {
        let s = crate::dt::tests::Scratch::new("zero");
        let path = s.0.join("mem");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let guest = Mapping::guest_memory(path.to_str().unwrap(), 0, 8192, "pool").unwrap();
        for (offset, len) in [
            (0, 8192),
            (8, 8),
            (8, 4096),
            (16, 64),
            (24, 520),
            (4088, 8),
            (40, 8152),
        ] {
            guest.write_bytes(0, &[0xa5; 8192]);
            guest.zero(offset, len);
            for w in (0..8192).step_by(8) {
                let want = if (offset..offset + len).contains(&w) {
                    0
                } else {
                    0xa5a5_a5a5_a5a5_a5a5
                };
                assert_eq!(
                    guest.read_u64(w),
                    want,
                    "word {w:#x} after zero({offset}, {len})"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "unaligned")]
    fn unaligned_access_is_a_bug() {
        let m = Mapping::anonymous(4096).unwrap();
        let _ = m.read_u64(4);
    }

    #[test]
    fn guarded_accesses_reach_shared_memory() {
        let m = Mapping::anonymous(8192).unwrap();
        m.write_u64(4096, 0x1122);
        m.write_u64(8184, 0x3344);
        let bytes = m.guarded_read(4096, 4096).unwrap();
        assert_eq!(bytes[..8], 0x1122u64.to_le_bytes());
        assert_eq!(bytes[4088..], 0x3344u64.to_le_bytes());
        m.guarded_write(4096, &[(8, 7), (0, 9)]).unwrap();
        assert_eq!((m.read_u64(4096), m.read_u64(4104)), (9, 7));
    }

    #[test]
    fn a_faulting_access_kills_only_the_child() {
        let m = Mapping::anonymous(8192).unwrap();
        // SAFETY: revoking access to our own test mapping's second page.
        unsafe {
            libc::mprotect(m.ptr.add(512).cast(), 4096, libc::PROT_NONE);
        }
        let e = m.guarded_read(4096, 8).unwrap_err();
        assert!(
            matches!(e, Fault::Signal(libc::SIGSEGV | libc::SIGBUS)),
            "{e:?}"
        );
        assert!(m.guarded_write(4096, &[(0, 1)]).is_err());
        // SAFETY: restore it before unmapping.
        unsafe {
            libc::mprotect(
                m.ptr.add(512).cast(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
            );
        }
    }

    #[test]
    fn a_real_sigbus_is_caught_even_with_the_vmm_handler() {
        crate::signals::install_bus_error();
        let s = crate::dt::tests::Scratch::new("sigbus");
        let path = s.0.join("mem");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let m = Mapping::phys(path.to_str().unwrap(), 0, 8192, "test").unwrap();
        m.write_u64(4096, 5);
        assert_eq!(m.guarded_read(4096, 8).unwrap(), 5u64.to_le_bytes());
        // Past the end of the file: SIGBUS, like a page the host lost.
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert_eq!(m.guarded_read(4096, 8), Err(Fault::Signal(libc::SIGBUS)));
        assert_eq!(
            m.guarded_write(4096, &[(0, 1)]),
            Err(Fault::Signal(libc::SIGBUS))
        );
        assert_eq!(m.guarded_read(0, 8).unwrap(), [0; 8]);
    }

    #[test]
    fn dev_mem_errors_say_why() {
        let e = Mapping::phys("/nonexistent/mem", 0x4000_0000, 4096, "the guest pool")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("the guest pool") && e.contains("CONFIG_DEVMEM"),
            "{e}"
        );
        let e = Mapping::phys("/dev/null", 0x123, 4096, "x")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("page-aligned"), "{e}");
    }

    #[test]
    fn one_descriptor_serves_every_mapping() {
        let s = crate::dt::tests::Scratch::new("devmem");
        let path = s.0.join("mem");
        std::fs::write(&path, vec![0u8; 3 * 4096]).unwrap();
        let dev = DevMem::open(path.to_str().unwrap(), "the control pages").unwrap();
        let control = dev.map(0, 4096, "the control pages").unwrap();
        let pool = dev
            .map_guest_memory(4096, 2 * 4096, "the guest pool")
            .unwrap();
        let again = dev.map(4096, 4096, "the guest pool").unwrap();
        pool.write_u64(8, 0x1122_3344_5566_7788);
        control.write_u64(0, 7);
        assert_eq!(
            again.read_u64(8),
            0x1122_3344_5566_7788,
            "the same file, shared"
        );
        assert_eq!(pool.read_u64(0), 0);
        assert!(pool.maintain && !control.maintain);
        // Range errors name the range; the descriptor stays usable.
        let e = dev.map(0x123, 4096, "odd").err().unwrap().to_string();
        assert!(e.contains("odd") && e.contains("page-aligned"), "{e}");
        let e = dev.map(0, 0, "empty").err().unwrap().to_string();
        assert!(e.contains("page-aligned"), "{e}");
        assert_eq!(dev.map(8192, 4096, "last").unwrap().read_u64(0), 0);
        let e = DevMem::open("/nonexistent/mem", "the control pages")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("the control pages") && e.contains("CONFIG_DEVMEM"),
            "{e}"
        );
    }
}
