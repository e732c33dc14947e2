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

/// Prints a line on the console, prefixed `rampart: `.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("rampart: {}\r\n", format_args!($($arg)*)))
    };
}
