//! virtio-console (device ID 3), one port (hvc0): what the guest writes goes
//! to the VMM's stdout a line at a time, prefixed with the VM's name. Input
//! (host to guest) comes from a byte source given at start-up (the VMM's
//! stdin with `--virtio-console-input`): an I/O thread reads it into a
//! bounded buffer and the bytes fill the receive queue's buffers as the
//! guest's driver posts them.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, PoisonError};

use super::guest::Cursor;
use super::{Ctx, DeviceError, VirtioDevice, Waker};
use crate::console::LineBuffer;

/// Input bytes buffered for the guest at most; the reader thread waits
/// while the guest does not take them.
const INPUT_LIMIT: usize = 64 * 1024;

/// Bytes read from the input source and not yet given to the guest.
#[derive(Default)]
struct Input {
    bytes: VecDeque<u8>,
    /// The source ended (EOF or an error).
    closed: bool,
}

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
    /// The input source, until `start` hands it to the reader thread.
    source: Option<Box<dyn Read + Send>>,
    input: Arc<(Mutex<Input>, std::sync::Condvar)>,
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
            source: None,
            input: Arc::default(),
        }
    }

    /// The console with input read from `source` (the VMM's stdin).
    #[must_use]
    pub fn with_input(mut self, source: Box<dyn Read + Send>) -> Self {
        self.source = Some(source);
        self
    }

    /// Moves buffered input into the receive queue's buffers, one chain at
    /// a time, while both last.
    fn deliver(&mut self, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        let (lock, cv) = &*self.input;
        let mut input = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !input.bytes.is_empty() {
            let Some(chain) = ctx.pop(RX)? else { break };
            let mut w = Cursor::new(ctx.mem, &chain.writable, 0, MAX_PER_CHAIN);
            let n = w.remaining().min(input.bytes.len());
            let chunk: Vec<u8> = input.bytes.drain(..n).collect();
            w.write_all(&chunk)?;
            ctx.add_used(RX, chain.head, u32::try_from(n).unwrap_or(0))?;
        }
        cv.notify_all();
        Ok(())
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

    fn start(&mut self, waker: Waker) {
        let Some(mut source) = self.source.take() else { return };
        let input = self.input.clone();
        let spawned = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match source.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    {
                        let (lock, cv) = &*input;
                        let mut i = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        if n == 0 {
                            i.closed = true;
                        }
                        i.bytes.extend(&buf[..n]);
                        // Bounded: wait (re-offering the bytes to the
                        // guest every 100 ms) until it took some.
                        while i.bytes.len() >= INPUT_LIMIT {
                            drop(i);
                            if !waker.wake() {
                                return;
                            }
                            i = lock.lock().unwrap_or_else(PoisonError::into_inner);
                            if i.bytes.len() >= INPUT_LIMIT {
                                i = cv
                                    .wait_timeout(i, std::time::Duration::from_millis(100))
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .0;
                            }
                        }
                    }
                    if !waker.wake() || n == 0 {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("rampart-vmm: virtio-console: no input thread: {e}");
        }
    }

    fn poll(&mut self, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        self.deliver(ctx)
    }

    fn notify(&mut self, queue: usize, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        if queue == RX {
            // New receive buffers: give them what input waits.
            return self.deliver(ctx);
        }
        if queue != TX {
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
