//! Guest memory as the devices touch it: descriptor chains split into the
//! buffers they name (checked against guest RAM), and copies between those
//! buffers and the VMM's own memory.
//!
//! Under Rampart the VMM sees a Linux guest's RAM through `/dev/mem`: the
//! guest pool is `no-map` memory, which the kernel maps as Device-nGnRnE,
//! while the guest uses it as Normal write-back cacheable
//! (`host/vmm/src/mem.rs` has the whole argument). So the data copies here
//! (1) never make an unaligned access (Device memory faults on them; a
//! `memcpy`, which `vm-memory`'s copies and `virtio-queue`'s `Reader`/
//! `Writer` use, may): bytes up to an 8-byte boundary, then aligned
//! 64-bit volatile accesses, then bytes; and (2) clean and invalidate the
//! data cache to the point of coherency around them (`DC CIVAC`, `DSB SY`):
//! before a read so the guest's dirty lines reach memory, before a write so
//! no dirty line is written back over it later, after a write so no stale
//! line hides it. The rings get the same maintenance ([`sync`], called by
//! the transport around `virtio-queue`'s ring accesses, which are aligned
//! and at most 16 bytes).

use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::DeviceError;

/// A guest buffer: guest-physical address and length.
pub type Buf = (GuestAddress, usize);

/// The buffers of one descriptor chain, parsed by `virtio-queue`.
pub struct Chain {
    /// Its head (for the used ring).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buf>,
    /// Device-writable buffers, in order (after every readable one).
    pub writable: Vec<Buf>,
}

fn bad(what: &str) -> DeviceError {
    DeviceError::Chain(what.to_string())
}

impl Chain {
    /// Splits `chain` into its buffers. Every buffer must lie in guest RAM
    /// and device-readable ones must come first (virtio 1.2, 2.7.4.2).
    pub fn parse(
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap<()>>,
        mem: &GuestMemoryMmap<()>,
    ) -> Result<Self, DeviceError> {
        let head = chain.head_index();
        let mut c = Self {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        for d in chain {
            let len = d.len() as usize;
            if len == 0 {
                continue;
            }
            let access = if d.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(d.addr(), len, access) {
                return Err(DeviceError::Chain(format!(
                    "buffer {:#x}+{len:#x} is not guest RAM",
                    d.addr().0
                )));
            }
            if d.is_write_only() {
                c.writable.push((d.addr(), len));
            } else if c.writable.is_empty() {
                c.readable.push((d.addr(), len));
            } else {
                return Err(bad("a device-readable buffer after a writable one"));
            }
        }
        Ok(c)
    }

    /// Bytes in the readable buffers.
    #[must_use]
    pub fn readable_len(&self) -> usize {
        self.readable.iter().map(|b| b.1).sum()
    }

    /// Bytes in the writable buffers.
    #[must_use]
    pub fn writable_len(&self) -> usize {
        self.writable.iter().map(|b| b.1).sum()
    }
}

/// A cursor over a list of guest buffers, from byte `skip`, for at most
/// `limit` bytes.
pub struct Cursor<'a> {
    mem: &'a GuestMemoryMmap<()>,
    bufs: &'a [Buf],
    idx: usize,
    off: usize,
    left: usize,
}

impl<'a> Cursor<'a> {
    /// Over `bufs`, bytes `skip..skip + limit`.
    #[must_use]
    pub fn new(mem: &'a GuestMemoryMmap<()>, bufs: &'a [Buf], skip: usize, limit: usize) -> Self {
        let total: usize = bufs.iter().map(|b| b.1).sum();
        let mut c = Self {
            mem,
            bufs,
            idx: 0,
            off: 0,
            left: limit.min(total.saturating_sub(skip)),
        };
        c.advance(skip);
        c
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.idx < self.bufs.len() {
            let here = self.bufs[self.idx].1 - self.off;
            if n < here {
                self.off += n;
                return;
            }
            n -= here;
            self.idx += 1;
            self.off = 0;
        }
    }

    /// Bytes left.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Runs `f(guest address, chunk length, done so far)` over the next `n`
    /// bytes (`n <= remaining()`).
    fn each(
        &mut self,
        n: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        if n > self.left {
            return Err(bad("beyond the chain's buffers"));
        }
        let mut done = 0;
        while done < n {
            let (addr, len) = *self.bufs.get(self.idx).ok_or_else(|| bad("chain ended"))?;
            let k = (len - self.off).min(n - done);
            let at = addr
                .checked_add(self.off as u64)
                .ok_or_else(|| bad("address overflow"))?;
            f(at, k, done)?;
            done += k;
            self.advance(k);
        }
        self.left -= n;
        Ok(())
    }

    /// Fills `out` from the guest (exactly `out.len()` bytes).
    pub fn read_exact(&mut self, out: &mut [u8]) -> Result<(), DeviceError> {
        let mem = self.mem;
        self.each(out.len(), |at, k, done| {
            read(mem, at, &mut out[done..done + k])
        })
    }

    /// Writes `data` into the guest (exactly `data.len()` bytes).
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        let mem = self.mem;
        self.each(data.len(), |at, k, done| {
            write(mem, at, &data[done..done + k])
        })
    }
}

/// The host address ranges of `[addr, addr + len)` in guest RAM, every
/// page of which the VMM may touch ([`reachable`]).
fn host_ranges(
    mem: &GuestMemoryMmap<()>,
    addr: GuestAddress,
    len: usize,
    access: Permissions,
) -> Result<Vec<(*mut u8, usize)>, DeviceError> {
    let oops =
        |e: vm_memory::GuestMemoryError| DeviceError::Chain(format!("{:#x}+{len:#x}: {e}", addr.0));
    let mut out = Vec::new();
    for s in mem.get_slices(addr, len, access).map_err(oops)? {
        let s = s.map_err(oops)?;
        let (p, n) = (s.ptr_guard_mut().as_ptr(), s.len());
        if !reachable(p, n) {
            return Err(DeviceError::Chain(format!(
                "{:#x}+{len:#x}: a page the guest keeps private (not shared with the host)",
                addr.0
            )));
        }
        out.push((p, n));
    }
    Ok(out)
}

/// Cache maintenance over guest memory `[addr, addr + len)`, which must be
/// guest RAM the VMM can reach: the rings call it before `virtio-queue`
/// touches them, so a ring in a page a realm keeps private (or outside
/// RAM) is an error, never a `SIGBUS`.
///
/// # Errors
///
/// [`DeviceError::Ring`] for such a range.
pub fn sync(mem: &GuestMemoryMmap<()>, addr: GuestAddress, len: usize) -> Result<(), DeviceError> {
    let ranges = host_ranges(mem, addr, len, Permissions::Read).map_err(|e| match e {
        DeviceError::Chain(s) => DeviceError::Ring(s),
        other => other,
    })?;
    for (p, n) in ranges {
        // SAFETY: `p..p + n` lies in the mapping behind `mem`.
        unsafe { crate::mem::clean_inval_poc(p, n) };
    }
    Ok(())
}

/// Whether every page of `p..p + n` (in the VMM's mapping of guest RAM) can
/// be read without an abort. A realm's guest RAM is donated: a page is the
/// host's to touch only while the guest has it RIPAS EMPTY (EL2 shared it
/// in place); an access to any other page is a synchronous external abort,
/// `SIGBUS`. One probing load per page answers it: its abort is caught by
/// [`probe`]'s handler and turned into `false`. For a guest that is not a
/// realm every page is reachable.
///
/// A page the guest takes back between the probe and the access still
/// aborts: the guest kills its own VMM and nothing else.
#[must_use]
pub fn reachable(p: *const u8, n: usize) -> bool {
    const PAGE: usize = 4096;
    let end = p as usize + n;
    let mut at = p as usize;
    while at < end {
        if !probe::read(at as *const u8) {
            return false;
        }
        at = (at & !(PAGE - 1)) + PAGE;
    }
    true
}

/// A load that may abort, answered with `false` instead of `SIGBUS`.
mod probe {
    #[cfg(target_arch = "aarch64")]
    mod imp {
        use std::sync::Once;

        // x0 = address; returns 1 in x0, or 0 if the load aborted (the
        // SIGBUS handler resumes at the fix-up).
        std::arch::global_asm!(
            ".text",
            ".balign 4",
            ".global rampart_vmm_probe",
            ".type rampart_vmm_probe, %function",
            "rampart_vmm_probe:",
            ".global rampart_vmm_probe_load",
            "rampart_vmm_probe_load:",
            "ldrb w1, [x0]",
            "mov x0, #1",
            "ret",
            ".global rampart_vmm_probe_fixup",
            "rampart_vmm_probe_fixup:",
            "mov x0, #0",
            "ret",
        );

        unsafe extern "C" {
            fn rampart_vmm_probe(p: *const u8) -> u64;
            static rampart_vmm_probe_load: u8;
            static rampart_vmm_probe_fixup: u8;
        }

        extern "C" fn on_bus(
            signal: libc::c_int,
            _info: *mut libc::siginfo_t,
            context: *mut libc::c_void,
        ) {
            let uc = context.cast::<libc::ucontext_t>();
            // SAFETY: the kernel passes the interrupted context.
            let pc = unsafe { (*uc).uc_mcontext.pc };
            if pc == (&raw const rampart_vmm_probe_load) as u64 {
                // SAFETY: the probing load aborted: resume at its fix-up,
                // which only returns 0 (no other state to mend).
                unsafe { (*uc).uc_mcontext.pc = (&raw const rampart_vmm_probe_fixup) as u64 };
            } else {
                // Not a probe: the handler there was before (the VMM's
                // explanation, or the default action) takes the retried
                // access.
                let old = OLD.get().map_or(std::ptr::null(), |o| &raw const o.0);
                // SAFETY: sigaction(2) is async-signal-safe; `old` is a
                // complete action saved at installation (or null: then
                // the default action).
                unsafe {
                    if old.is_null() {
                        libc::signal(signal, libc::SIG_DFL);
                    } else {
                        libc::sigaction(signal, old, std::ptr::null_mut());
                    }
                }
            }
        }

        struct Saved(libc::sigaction);
        // SAFETY: plain data (a handler address, flags and a mask), only
        // read after it is set.
        unsafe impl Sync for Saved {}
        // SAFETY: as above.
        unsafe impl Send for Saved {}
        static OLD: std::sync::OnceLock<Saved> = std::sync::OnceLock::new();
        static INSTALL: Once = Once::new();

        pub fn read(p: *const u8) -> bool {
            INSTALL.call_once(|| {
                // SAFETY: a zeroed sigaction with an SA_SIGINFO handler
                // that touches only the context it is given.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_bus
                        as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                        as libc::sighandler_t;
                    libc::sigemptyset(&raw mut action.sa_mask);
                    action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
                    let mut old: libc::sigaction = std::mem::zeroed();
                    libc::sigaction(libc::SIGBUS, &raw const action, &raw mut old);
                    let _ = OLD.set(Saved(old));
                }
            });
            // SAFETY: `p` lies in a live mapping of this process (the
            // caller's guest memory); a load has no side effect, and an
            // abort resumes at the fix-up.
            unsafe { rampart_vmm_probe(p) != 0 }
        }
    }

    #[cfg(not(target_arch = "aarch64"))]
    mod imp {
        /// Only a VMM under Rampart (AArch64) can meet a private page.
        pub fn read(_p: *const u8) -> bool {
            true
        }
    }

    pub use imp::read;
}

/// Reads guest memory at `addr` into `out`.
pub fn read(
    mem: &GuestMemoryMmap<()>,
    addr: GuestAddress,
    out: &mut [u8],
) -> Result<(), DeviceError> {
    let mut done = 0;
    for (p, n) in host_ranges(mem, addr, out.len(), Permissions::Read)? {
        // SAFETY: `p..p + n` lies in the mapping behind `mem` (vm-memory
        // checked the range); `out[done..done + n]` is ours.
        unsafe {
            crate::mem::clean_inval_poc(p, n);
            copy_from(p, &mut out[done..done + n]);
        }
        done += n;
    }
    Ok(())
}

/// Writes `data` into guest memory at `addr`.
pub fn write(
    mem: &GuestMemoryMmap<()>,
    addr: GuestAddress,
    data: &[u8],
) -> Result<(), DeviceError> {
    let mut done = 0;
    for (p, n) in host_ranges(mem, addr, data.len(), Permissions::Write)? {
        // SAFETY: as in `read`; the guest expects the device to write here.
        unsafe {
            crate::mem::clean_inval_poc(p, n);
            copy_to(p, &data[done..done + n]);
            crate::mem::clean_inval_poc(p, n);
        }
        done += n;
    }
    Ok(())
}

/// Copies `out.len()` bytes from `src` with aligned volatile accesses.
///
/// # Safety
///
/// `src..src + out.len()` must be readable memory of this process.
unsafe fn copy_from(src: *const u8, out: &mut [u8]) {
    let n = out.len();
    let mut i = 0;
    while i < n && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: in the caller's range (loop bound); aligned where 64-bit.
        out[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while n - i >= 8 {
        // SAFETY: in the caller's range (loop bound); aligned where 64-bit.
        let v = unsafe { src.add(i).cast::<u64>().read_volatile() };
        out[i..i + 8].copy_from_slice(&v.to_ne_bytes());
        i += 8;
    }
    while i < n {
        // SAFETY: in the caller's range (loop bound); aligned where 64-bit.
        out[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
}

/// Copies `data` to `dst` with aligned volatile accesses.
///
/// # Safety
///
/// `dst..dst + data.len()` must be writable memory of this process.
unsafe fn copy_to(dst: *mut u8, data: &[u8]) {
    let n = data.len();
    let mut i = 0;
    while i < n && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: in the caller's range (loop bound); aligned where 64-bit.
        unsafe { dst.add(i).write_volatile(data[i]) };
        i += 1;
    }
    while n - i >= 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&data[i..i + 8]);
        // SAFETY: in the caller's range (loop bound); 8-byte aligned.
        unsafe {
            dst.add(i)
                .cast::<u64>()
                .write_volatile(u64::from_ne_bytes(w))
        };
        i += 8;
    }
    while i < n {
        // SAFETY: in the caller's range (loop bound); aligned where 64-bit.
        unsafe { dst.add(i).write_volatile(data[i]) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn copies_at_every_alignment_and_across_buffers() {
        let mem = super::super::testutil::memory();
        let base = super::super::testutil::RAM + 0x1000;
        let data: Vec<u8> = (0..100u8).collect();
        for shift in 0..9u64 {
            write(&mem, GuestAddress(base + shift), &data).unwrap();
            let mut back = vec![0u8; 100];
            mem.read_slice(&mut back, GuestAddress(base + shift))
                .unwrap();
            assert_eq!(back, data);
            let mut again = vec![0u8; 100];
            read(&mem, GuestAddress(base + shift), &mut again).unwrap();
            assert_eq!(again, data);
        }
        // A cursor over three buffers, skipping 5 bytes, limited to 20.
        let bufs = [
            (GuestAddress(base), 7),
            (GuestAddress(base + 0x100), 3),
            (GuestAddress(base + 0x200), 50),
        ];
        let mut c = Cursor::new(&mem, &bufs, 5, 20);
        assert_eq!(c.remaining(), 20);
        c.write_all(&[9u8; 20]).unwrap();
        assert!(c.write_all(&[1]).is_err(), "past the limit");
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(base + 5)).unwrap();
        assert_eq!(b, [9, 9]);
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(base + 0x200)).unwrap();
        assert_eq!(&b[..15], &[9u8; 15]);
        assert_ne!(b[15], 9);
        // Outside guest RAM.
        assert!(read(&mem, GuestAddress(0x1000), &mut [0u8; 4]).is_err());
    }
}
