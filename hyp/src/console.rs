//! The console: a PL011 UART shared with the host.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use arm_pl011_uart::{PL011Registers, Uart};
use safe_mmio::UniqueMmioPointer;
use spin::mutex::SpinMutex;

static CONSOLE: SpinMutex<Option<Uart<'static>>> = SpinMutex::new(None);

/// Starts printing to the PL011 at `base`.
///
/// # Safety
///
/// `base` must be the physical address of a PL011 that is reachable at
/// that address now (MMU off, or identity-mapped as device memory) and for
/// as long as Rampart prints, and nothing else in Rampart may access it.
pub unsafe fn init(base: u64) {
    let Some(regs) = NonNull::new(base as *mut PL011Registers) else { return };
    // SAFETY: the caller guarantees `base` is a live PL011 used by nothing
    // else in the hypervisor.
    let uart = Uart::new(unsafe { UniqueMmioPointer::new(regs) });
    *CONSOLE.lock() = Some(uart);
}

/// Writes formatted text; used by `println!`.
pub fn print(args: fmt::Arguments<'_>) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Writes formatted text from a fatal path, which must not wait for ever:
/// if the console stays locked (by this CPU, interrupted in the middle of
/// a line, or by one that stopped), the lock is taken over. Only for a CPU
/// that powers the machine off right after.
pub fn print_fatal(args: fmt::Arguments<'_>) {
    for _ in 0..10_000_000 {
        if let Some(mut console) = CONSOLE.try_lock() {
            if let Some(uart) = console.as_mut() {
                let _ = uart.write_fmt(args);
            }
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder is this CPU (interrupted while printing) or a CPU
    // that has not let go for seconds; the machine powers off right after
    // this line, so the holder never touches the UART again.
    unsafe { CONSOLE.force_unlock() };
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints a line on the console, prefixed `rampart: `.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("rampart: {}\r\n", format_args!($($arg)*)))
    };
}
