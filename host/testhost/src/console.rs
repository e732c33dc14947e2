//! `print!`/`println!` to the PL011 console (boot CPU only).

use core::fmt::{self, Write};

/// A [`Write`] sink for the console.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The PL011 wants CR LF on a terminal; QEMU's -nographic shows LF fine
        // but log scrapers prefer plain LF, so text is written unchanged.
        crate::arch::console_write(s);
        Ok(())
    }
}

/// Prints formatted text to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Console, format_args!($($arg)*));
    }};
}

/// Prints formatted text and a newline to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

/// Prints an indented note line that belongs to the check running now.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        $crate::print!("  ");
        $crate::println!($($arg)*);
    }};
}
