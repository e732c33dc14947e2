//! SIGINT / SIGTERM / SIGHUP: the first one asks the VMM to stop (the vCPU
//! threads stop at their next exit, the VM is destroyed, its pages come
//! back); the handler then restores the default action, so a second one
//! kills the process at once (and `rampart-vmm reclaim` cleans up).

use std::sync::atomic::{AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn handler(signal: libc::c_int) {
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
}

/// The signal received, if any.
#[must_use]
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}
