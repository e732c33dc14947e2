//! The console: the emulated PL011-compatible UART at `GUEST_UART_BASE`.
//!
//! Each byte is one 32-bit write of `UARTDR` (one MMIO exit in a VM); the
//! flag register is never polled, since the emulation is always ready.
//! Lines from different vCPUs do not interleave: a spin lock covers each
//! `print!`. An exception handler that prints while its own vCPU holds the
//! lock takes it over rather than deadlock.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::arch;

/// Lock owner: 0 = free, else vCPU index + 1.
static OWNER: AtomicUsize = AtomicUsize::new(0);

struct Uart;

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            arch::uart_write(byte);
        }
        Ok(())
    }
}

/// Prints `args` under the console lock. Use [`print!`](crate::print) and
/// [`println!`](crate::println).
pub fn print(args: fmt::Arguments) {
    let me = arch::cpu_index() + 1;
    let mut reentered = false;
    loop {
        match OWNER.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => break,
            Err(owner) if owner == me => {
                reentered = true;
                break;
            }
            Err(_) => core::hint::spin_loop(),
        }
    }
    let _ = fmt::write(&mut Uart, args);
    if !reentered {
        OWNER.store(0, Ordering::Release);
    }
}

/// Prints to the guest console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the guest console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
