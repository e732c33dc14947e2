//! SIGINT / SIGTERM / SIGHUP: the first one asks the VMM to stop (the vCPU
//! threads stop at their next exit, the VM is destroyed, its pages come
//! back); the handler then restores the default action, so a second one
//! kills the process at once (and `rampart-vmm reclaim` cleans up).
//!
//! SIGUSR1 ends a hold (`run --hold`, `--hold-at`): [`wait_continue`].

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
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

extern "C" fn bus_error(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut line = *b"\nrampart-vmm: SIGBUS at 0x0000000000000000: a host access to memory the host does not own (a pool page still held by a VM left behind? try `rampart-vmm reclaim`), or to the control pages in a way Rampart refuses\n";
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let digits = b"0123456789abcdef";
    let start = line.iter().position(|&b| b == b'x').unwrap_or(0) + 1;
    for i in 0..16 {
        line[start + i] = digits[(address >> (60 - 4 * i)) & 0xf];
    }
    raw_write(&line);
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
