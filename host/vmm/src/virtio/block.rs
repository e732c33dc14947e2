//! virtio-blk (device ID 2), backed by a file: read, write (unless
//! read-only), flush, get-id. A request the device can answer gets a status
//! (`OK`, `IOERR` for a bad sector range, a length that is not whole
//! sectors, a write to a read-only disk or a host I/O error, `UNSUPP` for an
//! unknown type); a chain without a writable status byte at its end breaks
//! the protocol and puts the device in `DEVICE_NEEDS_RESET`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use vm_memory::GuestMemoryMmap;

use super::guest::{Chain, Cursor};
use super::{Ctx, DeviceError, VirtioDevice};

/// Sector size of the virtio-blk protocol.
pub const SECTOR: u64 = 512;
/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Device ID string (20 bytes).
pub const T_GET_ID: u32 = 8;
/// Status: done.
pub const S_OK: u8 = 0;
/// Status: failed.
pub const S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const S_UNSUPP: u8 = 2;
/// Feature: the device gives `seg_max`.
pub const F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only.
pub const F_RO: u64 = 1 << 5;
/// Feature: the device supports flush.
pub const F_FLUSH: u64 = 1 << 9;

/// Queue size (the driver's maximum request count).
const QUEUE_SIZE: u16 = 256;
/// `seg_max`: data segments per request (queue size minus header and status).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes moved per host I/O call.
const CHUNK: usize = 256 * 1024;

/// The block device.
pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; 20],
}

impl Block {
    /// Opens `path` (read-only or read-write).
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .with_context(|| format!("disk {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("disk {}", path.display()))?
            .len();
        let mut id = [0u8; 20];
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = name.len().min(id.len());
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only,
            sectors: len / SECTOR,
            id,
        })
    }

    /// The disk's size as the guest sees it (whole sectors).
    #[must_use]
    pub fn capacity_bytes(&self) -> u64 {
        self.sectors * SECTOR
    }

    /// Byte offset of `len` bytes at `sector`, if they are whole sectors
    /// inside the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = u64::try_from(len).ok()?;
        if len % SECTOR != 0 {
            return None;
        }
        let end = sector.checked_add(len / SECTOR)?;
        (end <= self.sectors).then(|| sector * SECTOR)
    }

    /// Handles one request; returns the bytes written into the chain.
    fn request(&mut self, c: &Chain, mem: &GuestMemoryMmap<()>) -> Result<u32, DeviceError> {
        let writable = c.writable_len();
        if writable == 0 {
            return Err(DeviceError::Chain("blk: no status byte".into()));
        }
        let mut r = Cursor::new(mem, &c.readable, 0, usize::MAX);
        let mut data_w = Cursor::new(mem, &c.writable, 0, writable - 1);
        let mut status_w = Cursor::new(mem, &c.writable, writable - 1, 1);
        let mut hdr = [0u8; 16];
        let (status, written) = if r.remaining() < hdr.len() {
            (S_IOERR, 0)
        } else {
            r.read_exact(&mut hdr)?;
            let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let sector = u64::from_le_bytes([
                hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
            ]);
            match ty {
                T_IN => self.read(sector, &mut data_w)?,
                T_OUT => (self.write(sector, &mut r)?, 0),
                T_FLUSH => {
                    let ok = self.read_only || self.file.sync_data().is_ok();
                    (if ok { S_OK } else { S_IOERR }, 0)
                }
                T_GET_ID => {
                    let n = data_w.remaining().min(self.id.len());
                    data_w.write_all(&self.id[..n])?;
                    (S_OK, n)
                }
                _ => (S_UNSUPP, 0),
            }
        };
        status_w.write_all(&[status])?;
        Ok(u32::try_from(written + 1).unwrap_or(u32::MAX))
    }

    /// A read into the guest's buffers: (status, bytes written).
    fn read(&self, sector: u64, w: &mut Cursor<'_>) -> Result<(u8, usize), DeviceError> {
        let len = w.remaining();
        let Some(mut off) = self.range(sector, len) else {
            return Ok((S_IOERR, 0));
        };
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            if self.file.read_exact_at(&mut buf[..n], off).is_err() {
                return Ok((S_IOERR, done));
            }
            w.write_all(&buf[..n])?;
            done += n;
            off += n as u64;
        }
        Ok((S_OK, done))
    }

    /// A write from the guest's buffers: the status.
    fn write(&self, sector: u64, r: &mut Cursor<'_>) -> Result<u8, DeviceError> {
        if self.read_only {
            return Ok(S_IOERR);
        }
        let len = r.remaining();
        let Some(mut off) = self.range(sector, len) else {
            return Ok(S_IOERR);
        };
        let mut buf = vec![0u8; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            r.read_exact(&mut buf[..n])?;
            if self.file.write_all_at(&buf[..n], off).is_err() {
                return Ok(S_IOERR);
            }
            done += n;
            off += n as u64;
        }
        Ok(S_OK)
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "blk"
    }

    fn device_id(&self) -> u32 {
        2
    }

    fn features(&self) -> u64 {
        F_SEG_MAX | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[QUEUE_SIZE]
    }

    fn config(&self) -> Vec<u8> {
        // struct virtio_blk_config: capacity, size_max, seg_max, geometry,
        // blk_size.
        let mut c = Vec::with_capacity(24);
        c.extend_from_slice(&self.sectors.to_le_bytes());
        c.extend_from_slice(&0u32.to_le_bytes());
        c.extend_from_slice(&SEG_MAX.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&512u32.to_le_bytes());
        c
    }

    fn notify(&mut self, queue: usize, ctx: &mut Ctx<'_>) -> Result<(), DeviceError> {
        if queue != 0 {
            return Ok(());
        }
        while let Some(chain) = ctx.pop(0)? {
            let len = self.request(&chain, ctx.mem)?;
            ctx.add_used(0, chain.head, len)?;
        }
        Ok(())
    }
}
