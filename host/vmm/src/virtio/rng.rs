//! virtio-rng (device ID 4): fills the guest's buffers from the host's
//! `getrandom(2)` (the `/dev/urandom` pool).

use super::guest::Cursor;
use super::{Ctx, DeviceError, VirtioDevice};

/// Most bytes given per request (the driver asks for small amounts; a
/// hostile one gets no more than this per chain).
const MAX_PER_REQUEST: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng;

impl Rng {
    /// A new device.
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes
        // that outlives the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "rng"
    }

    fn device_id(&self) -> u32 {
        4
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[64]
    }

    fn notify(&mut self, queue: usize, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        if queue != 0 {
            return Ok(());
        }
        while let Some(chain) = ctx.pop(0)? {
            let mut w = Cursor::new(ctx.mem, &chain.writable, 0, MAX_PER_REQUEST);
            let mut buf = vec![0u8; w.remaining()];
            let written = match getrandom(&mut buf) {
                Ok(()) => {
                    w.write_all(&buf)?;
                    buf.len()
                }
                Err(e) => {
                    eprintln!("rampart-vmm: virtio-rng: getrandom: {e}");
                    0
                }
            };
            ctx.add_used(0, chain.head, u32::try_from(written).unwrap_or(0))?;
        }
        Ok(())
    }
}
