//! [`Msg`]: a fixed-capacity string for failure messages (no allocator).

use core::fmt::{self, Write};

/// Bytes a failure message holds; longer text is cut and ends with `...`.
const DEFAULT_CAPACITY: usize = 480;

/// A failure message (or any short text) of at most `CAPACITY` bytes.
#[derive(Clone)]
pub struct Msg<const CAPACITY: usize = DEFAULT_CAPACITY> {
    bytes: [u8; CAPACITY],
    len: usize,
    truncated: bool,
}

impl<const CAPACITY: usize> Msg<CAPACITY> {
    /// An empty message.
    pub const fn new() -> Self {
        Self {
            bytes: [0; CAPACITY],
            len: 0,
            truncated: false,
        }
    }

    /// A message holding `s`.
    pub fn from_text(s: &str) -> Self {
        let mut m = Self::new();
        let _ = m.write_str(s);
        m
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        // Only whole `str`s are appended (cut on a char boundary), so this
        // never fails; fall back to an empty string rather than panic.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const CAPACITY: usize> Write for Msg<CAPACITY> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = CAPACITY - self.len;
        if s.len() <= room {
            self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.bytes[self.len..self.len + cut].copy_from_slice(&s.as_bytes()[..cut]);
            self.len += cut;
            self.truncated = true;
        }
        Ok(())
    }
}

impl<const CAPACITY: usize> fmt::Display for Msg<CAPACITY> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("...")
        } else {
            Ok(())
        }
    }
}

impl<const CAPACITY: usize> fmt::Debug for Msg<CAPACITY> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Builds a [`Msg`] with `format!` syntax.
#[macro_export]
macro_rules! msg {
    ($($arg:tt)*) => {{
        let mut m = <$crate::msg::Msg>::new();
        let _ = core::fmt::Write::write_fmt(&mut m, format_args!($($arg)*));
        m
    }};
}

/// Returns `Err(msg!(...))` from the enclosing check.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::msg!($($arg)*))
    };
}

/// Fails the enclosing check with `msg!(...)` unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}
