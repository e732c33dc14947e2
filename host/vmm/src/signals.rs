//! SIGINT / SIGTERM / SIGHUP: the first one asks the VMM to stop (the vCPU
//! threads stop at their next exit, the VM is destroyed, its pages come
//! back); the handler then restores the default action, so a second one
//! kills the process at once (and `rampart-vmm reclaim` cleans up).
//!
//! SIGUSR1 ends a hold (`run --hold`, `--hold-at`): [`wait_continue`].

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

static PENDING: AtomicI32 = AtomicI32::new(0);
static CONTINUE: AtomicBool = AtomicBool::new(false);
/// `CLOCK_MONOTONIC` in ns when the termination signal arrived.
static PENDING_AT_NS: AtomicU64 = AtomicU64::new(0);

/// `CLOCK_MONOTONIC` now, in ns (async-signal-safe).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) is async-signal-safe and writes only `ts`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

extern "C" fn continue_handler(_: libc::c_int) {
    CONTINUE.store(true, Ordering::Release);
}

extern "C" fn handler(signal: libc::c_int) {
    let _ = PENDING_AT_NS.compare_exchange(0, monotonic_ns(), Ordering::AcqRel, Ordering::Acquire);
    PENDING.store(signal, Ordering::Release);
    // SAFETY: signal(2) is async-signal-safe; restoring the default action.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Installs the handlers.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a plain handler is valid; the
        // handler only stores an atomic and calls signal(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&raw mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
    // SAFETY: as above; the handler only stores an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = continue_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&raw mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &raw const action, std::ptr::null_mut());
    }
}

/// Waits until SIGUSR1 arrives (`Ok`) or `stop()` reports a termination
/// signal (`Err(signal)`). Each call waits for a new SIGUSR1.
///
/// # Errors
///
/// The termination signal that ended the wait.
pub fn wait_continue(stop: &dyn Fn() -> Option<i32>) -> Result<(), i32> {
    loop {
        if CONTINUE.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(signal) = stop() {
            return Err(signal);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `text` to stderr from a signal handler.
fn raw_write(text: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, text.as_ptr().cast(), text.len());
    }
}

/// Which of the VMM's `/dev/mem` mappings an address is in, for the SIGBUS
/// message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Region {
    /// The control pages.
    Control = 1,
    /// This VMM's part of the guest pool.
    Pool = 2,
}

/// Up to this many mappings are remembered (a VMM has the control pages,
/// and the pool's image pages and later all of its region).
const MAPPINGS: usize = 6;
/// Start, end (exclusive) and [`Region`] of each remembered mapping.
static MAPPED: [[AtomicUsize; 3]; MAPPINGS] = [const {
    [
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]
}; MAPPINGS];
/// The memory device's path (`--dev-mem`), leaked once, for the message.
static DEV_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static DEV_LEN: AtomicUsize = AtomicUsize::new(0);

/// Remembers the memory device's path for the SIGBUS message (once).
pub fn set_dev_mem(path: &str) {
    let bytes: &'static mut [u8] = Box::leak(path.as_bytes().to_vec().into_boxed_slice());
    DEV_LEN.store(bytes.len(), Ordering::Release);
    if DEV_PTR
        .compare_exchange(
            std::ptr::null_mut(),
            bytes.as_mut_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        DEV_LEN.store(0, Ordering::Release);
    }
}

/// Remembers a mapping `(start, len)` of `region`, so that a SIGBUS in it
/// is explained by what it is.
pub fn note_mapping((start, len): (usize, usize), region: Region) {
    for slot in &MAPPED {
        if slot[2]
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            slot[0].store(start, Ordering::Release);
            slot[1].store(start.saturating_add(len), Ordering::Release);
            slot[2].store(region as usize, Ordering::Release);
            return;
        }
    }
}

/// The region `address` is in, if it is in a remembered mapping.
fn region_of(address: usize) -> Option<Region> {
    MAPPED.iter().find_map(|slot| {
        let kind = slot[2].load(Ordering::Acquire);
        let inside =
            address >= slot[0].load(Ordering::Acquire) && address < slot[1].load(Ordering::Acquire);
        match kind {
            1 if inside => Some(Region::Control),
            2 if inside => Some(Region::Pool),
            _ => None,
        }
    })
}

/// What a SIGBUS at an address in `region` means (after "SIGBUS at X in
/// ... mapped from DEV").
fn bus_error_meaning(region: Option<Region>) -> (&'static [u8], &'static [u8]) {
    match region {
        Some(Region::Control) => (
            b" in the control pages mapped from ",
            b": Rampart refused the access (not a single aligned 64-bit load or store, or a channel another CPU is using), or that file does not reach Rampart's control pages\n",
        ),
        Some(Region::Pool) => (
            b" in the guest pool mapped from ",
            b": the host does not own that page (still held by a VM? one left behind by a killed VMM is freed by `rampart-vmm reclaim`)\n",
        ),
        None => (
            b" outside the VMM's mappings of ",
            b": a bug in rampart-vmm\n",
        ),
    }
}

extern "C" fn bus_error(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut head = *b"\nrampart-vmm: SIGBUS at 0x0000000000000000";
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let digits = b"0123456789abcdef";
    let start = head.len() - 16;
    for i in 0..16 {
        head[start + i] = digits[(address >> (60 - 4 * i)) & 0xf];
    }
    raw_write(&head);
    let (what, meaning) = bus_error_meaning(region_of(address));
    raw_write(what);
    let dev = DEV_PTR.load(Ordering::Acquire);
    let len = DEV_LEN.load(Ordering::Acquire);
    if dev.is_null() || len == 0 {
        raw_write(b"the memory device");
    } else {
        // SAFETY: `set_dev_mem` leaked `len` bytes at `dev`, never freed.
        raw_write(unsafe { std::slice::from_raw_parts(dev, len) });
    }
    raw_write(meaning);
    // SAFETY: leave at once; the VM (if any) stays until `reclaim` or the
    // next VMM destroys it.
    unsafe { libc::_exit(128 + libc::SIGBUS) };
}

/// Installs a SIGBUS handler that says what probably happened (an access
/// the hypervisor refused) before the process dies.
pub fn install_bus_error() {
    // SAFETY: as in `install`, with an SA_SIGINFO handler that only
    // formats into a stack buffer, calls write(2) and _exit(2).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = bus_error
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        libc::sigemptyset(&raw mut action.sa_mask);
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut());
    }
}

/// When the first termination signal arrived ([`monotonic_ns`]), if one
/// did.
#[must_use]
pub fn pending_at_ns() -> Option<u64> {
    match PENDING_AT_NS.load(Ordering::Acquire) {
        0 => None,
        at => Some(at),
    }
}

/// The signal received, if any.
#[must_use]
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sigbus_is_explained_by_the_mapping_it_hit() {
        let control = [0u64; 4];
        let pool = [0u64; 4];
        let c = control.as_ptr() as usize;
        let p = pool.as_ptr() as usize;
        note_mapping((c, 32), Region::Control);
        note_mapping((p, 32), Region::Pool);
        assert_eq!(region_of(c + 8), Some(Region::Control));
        assert_eq!(region_of(p), Some(Region::Pool));
        assert_eq!(region_of(p + 32), None);
        let text = |r| {
            let (a, b) = bus_error_meaning(r);
            String::from_utf8_lossy(&[a, b].concat()).into_owned()
        };
        // Only a pool page can be one a VM left behind holds.
        assert!(text(Some(Region::Pool)).contains("reclaim"));
        assert!(!text(Some(Region::Control)).contains("left behind"));
        assert!(text(Some(Region::Control)).contains("control pages"));
    }
}
