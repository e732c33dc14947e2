//! Result lines and exit.
//!
//! Every check prints one line, `GUEST-PASS <name>` or `GUEST-FAIL <name>:
//! <why>` (or `GUEST-SKIP <name>: <why>`, counted in neither total); the
//! guest ends with `GUEST-DONE <n> passed, <m> failed` and PSCI
//! `SYSTEM_OFF`. Only vCPU 0 reports, so the counters need no
//! read-modify-write atomics.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use rampart_abi::guest::test_protocol::{DONE, FAIL, PASS, SKIP};

use crate::{arch, hvc, println};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

fn bump(counter: &AtomicU32) {
    counter.store(counter.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
}

/// Reports a passed check.
pub fn pass(name: &str) {
    bump(&PASSED);
    println!("{PASS}{name}");
}

/// Reports a failed check and why.
pub fn fail(name: &str, why: fmt::Arguments) {
    bump(&FAILED);
    println!("{FAIL}{name}: {why}");
}

/// Reports a check that could not run and why.
pub fn skip(name: &str, why: fmt::Arguments) {
    println!("{SKIP}{name}: {why}");
}

/// Reports `name` as passed if `ok`, else failed with `why`. Returns `ok`.
pub fn check(name: &str, ok: bool, why: fmt::Arguments) -> bool {
    if ok {
        pass(name);
    } else {
        fail(name, why);
    }
    ok
}

/// Checks passed so far.
pub fn passed() -> u32 {
    PASSED.load(Ordering::SeqCst)
}

/// Checks failed so far.
pub fn failed() -> u32 {
    FAILED.load(Ordering::SeqCst)
}

/// Prints `GUEST-DONE` and powers off.
pub fn done() -> ! {
    println!("{DONE}{} passed, {} failed", passed(), failed());
    exit()
}

/// A failure the guest cannot continue after (unexpected exception,
/// panic): reports it, then `GUEST-DONE`, then powers off.
pub fn fatal(why: fmt::Arguments) -> ! {
    fail("fatal", why);
    done()
}

/// PSCI `SYSTEM_OFF` through the HVC conduit. If it returns (no hypervisor
/// and no PSCI), waits in `WFI` for ever.
pub fn exit() -> ! {
    let result = hvc::psci::system_off();
    println!("rampart guest: SYSTEM_OFF returned {result}; parking");
    arch::park()
}
