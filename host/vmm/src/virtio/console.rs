//! virtio-console (device ID 3), one port (hvc0): what the guest writes goes
//! to the VMM's stdout a line at a time, prefixed with the VM's name. Input
//! is not implemented: the receive queue is never filled.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use super::guest::Cursor;
use super::{Ctx, DeviceError, VirtioDevice};
use crate::console::LineBuffer;

/// Receive queue (host to guest).
const RX: usize = 0;
/// Transmit queue (guest to host).
const TX: usize = 1;
/// Most bytes taken from one chain.
const MAX_PER_CHAIN: usize = 64 * 1024;

/// Where finished lines go.
pub type Sink = Arc<Mutex<dyn Write + Send>>;

/// The console device.
pub struct Console {
    prefix: String,
    line: LineBuffer,
    out: Sink,
}

impl Console {
    /// A console printing `[name] line` to stdout.
    #[must_use]
    pub fn stdout(name: &str) -> Self {
        Self::new(name, Arc::new(Mutex::new(std::io::stdout())))
    }

    /// A console printing to `out`.
    pub fn new(name: &str, out: Sink) -> Self {
        Self {
            prefix: format!("[{name}]"),
            line: LineBuffer::default(),
            out,
        }
    }

    fn emit(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // stdout gone: nothing to do about it.
        let _ = writeln!(out, "{} {line}", self.prefix);
        let _ = out.flush();
    }
}

impl VirtioDevice for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn device_id(&self) -> u32 {
        3
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[64, 64]
    }

    fn config(&self) -> Vec<u8> {
        // cols, rows (u16 each), max_nr_ports (u32), emerg_wr: nothing
        // offered (no SIZE/MULTIPORT/EMERG_WRITE features).
        vec![0; 12]
    }

    fn notify(&mut self, queue: usize, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        if queue != TX {
            // RX buffers are kept for input we never send.
            let _ = RX;
            return Ok(());
        }
        while let Some(chain) = ctx.pop(TX)? {
            let mut r = Cursor::new(ctx.mem, &chain.readable, 0, MAX_PER_CHAIN);
            let mut buf = vec![0u8; r.remaining()];
            r.read_exact(&mut buf)?;
            for &b in &buf {
                if let Some(line) = self.line.push(b) {
                    self.emit(&line);
                }
            }
            ctx.add_used(TX, chain.head, 0)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(line) = self.line.flush() {
            self.emit(&line);
        }
    }
}
