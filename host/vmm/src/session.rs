//! A process's connection to Rampart: the device tree, the control pages,
//! its entry in the pool allocation table and its channels.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rampart_abi::Error;

use crate::dt::{self, CHANNEL_SIZE, Platform};
use crate::hyp::{Channel, Hyp};
use crate::mem::{DevMem, Fault, LazyMapping, Mapping};
use crate::pool::{Alive, Entry, Locked, TableFile, alive};
use crate::signals;
use crate::stats;
use crate::vm;

/// Where to find things (global options).
#[derive(Clone, Debug)]
pub struct Env {
    /// Device-tree roots to try.
    pub dt_roots: Vec<PathBuf>,
    /// `/dev/mem`.
    pub dev_mem: String,
    /// `/run/rampart-vmm`.
    pub state_dir: PathBuf,
}

/// An open session.
pub struct Session {
    /// What the device tree says.
    pub platform: Platform,
    /// The physical-memory device, open.
    dev: DevMem,
    /// The control pages (every channel).
    pub control: Mapping,
    /// The channels' call pages (host ABI 0.6).
    calls: CallPages,
    /// This process's allocation.
    pub entry: Entry,
    /// The hypervisor's host ABI version.
    pub abi: (u64, u64),
    table: TableFile,
    /// The table, still locked, with this process's entry not yet
    /// written ([`Session::open_for_vm`]): written once, with the VM's
    /// handle, by [`Session::set_vm`] (or at release).
    pending: std::sync::Mutex<Option<Locked>>,
    env: Env,
    pid: u32,
    released: bool,
    _alive: Alive,
}

impl Session {
    /// Finds Rampart, maps the control pages, cleans up after killed VMMs
    /// and allocates `pages` pool pages (at `fixed` if given) and up to
    /// `channels` channels.
    ///
    /// # Errors
    ///
    /// Explains what is missing or refused.
    pub fn open(
        env: &Env,
        pages: u64,
        channels: u32,
        fixed: Option<u64>,
        name: &str,
    ) -> Result<Session> {
        Self::open_as(env, pages, channels, fixed, name, false)
    }

    /// [`Session::open`] for a process that creates a VM right away and
    /// records it with [`Session::set_vm`]: the allocation table stays
    /// locked from the allocation until then and is written once, with
    /// the entry and its VM together, instead of twice (issue 16: each
    /// write is a lock, read, parse and `fsync`ed rewrite of the table,
    /// tens of thousands of instructions of a launch under TCG).
    ///
    /// Safe for the table's crash consistency: a process killed before
    /// `set_vm` leaves the table as it found it, which is what the next
    /// process makes of an entry without a VM anyway (it drops it); other
    /// processes wait on the lock meanwhile, so none can take the same
    /// pages or channels. If stale entries were cleaned up (VMs
    /// destroyed) the table is written at once, as by [`Session::open`],
    /// so no destroyed VM stays recorded. Every path that ends the session
    /// without `set_vm` (an error, a drop) writes or releases the table.
    ///
    /// # Errors
    ///
    /// As [`Session::open`].
    pub fn open_for_vm(
        env: &Env,
        pages: u64,
        channels: u32,
        fixed: Option<u64>,
        name: &str,
    ) -> Result<Session> {
        Self::open_as(env, pages, channels, fixed, name, true)
    }

    fn open_as(
        env: &Env,
        pages: u64,
        channels: u32,
        fixed: Option<u64>,
        name: &str,
        defer: bool,
    ) -> Result<Session> {
        // The kernel's own tree is read once per boot (`dt::discover_cached`).
        let kernel_tree = !env.dt_roots.is_empty()
            && env.dt_roots.iter().all(|r| {
                dt::DEFAULT_ROOTS
                    .iter()
                    .any(|d| r == std::path::Path::new(d))
            });
        let platform = if kernel_tree {
            dt::discover_cached(
                &env.dt_roots,
                &env.state_dir,
                std::path::Path::new(dt::BOOT_ID),
            )?
        } else {
            dt::discover(&dt::root(&env.dt_roots)?)?
        };
        stats::launch_trace("device tree read");
        let real_dev_mem = check_dev_mem(&env.dev_mem)?;
        let control_len = usize::try_from(u64::from(platform.channels) * CHANNEL_SIZE)?;
        // Opened once for the control pages, the call pages and the image
        // pages (issue 16).
        let dev = DevMem::open(&env.dev_mem, "the control pages")?;
        let control = dev.map(platform.control.base, control_len, "the control pages")?;
        signals::note_mapping(control.span(), signals::Region::Control);
        stats::launch_trace("control pages mapped");
        let table = TableFile::new(&env.state_dir);
        let pid = std::process::id();
        let alive_lock = Alive::hold(&env.state_dir)?;
        stats::launch_trace("alive lock held");
        let mut locked = table.lock(platform.pool.base, platform.pool.size, platform.channels)?;
        let stale = locked.table.take_stale(|p| alive(&env.state_dir, p));
        let cleaned = !stale.is_empty();
        // A channel of our own (no other process uses it) for the version
        // check and the clean-up; the table is written only if all is well.
        let scratch = locked.table.allocate(pid, 0, 1, None, name)?;
        let scratch_index = scratch.channel_list()[0];
        // Before any call: a load of one of our channel's registers, in a
        // child process, so that memory that aborts (a short file, a
        // device that is not /dev/mem) is an error naming it, not a SIGBUS
        // of the VMM.
        stats::launch_trace("pool table locked");
        // The kernel's own device tree names the control pages only when
        // Rampart booted it, and the physical-memory device reaches them:
        // then a load cannot abort and the probe (a fork, several ms of a
        // launch under TCG) is skipped. Any other tree or device (a test
        // file, a copied tree) is probed.
        if !(real_dev_mem && kernel_tree) {
            probe_control(&control, scratch_index, &env.dev_mem, &platform)?;
        }
        stats::launch_trace("control pages probed");
        let abi = check_version(&platform, &Channel::new(&control, scratch_index))?;
        let call_pages = if abi.1 >= rampart_abi::boot::control::CALL_PAGE_ABI_MINOR {
            Some(dev.map(
                platform.call_pages.base,
                usize::try_from(platform.call_pages.size)?,
                "the channels' call pages",
            )?)
        } else {
            None
        };
        let calls = CallPages {
            map: call_pages,
            phys: platform.call_pages.base,
        };
        stats::launch_trace("version checked");
        let channel = calls.channel(&control, scratch_index);
        for entry in stale {
            if entry.vm == 0 {
                continue;
            }
            match vm::destroy(&channel, entry.vm) {
                Ok(()) => eprintln!(
                    "rampart-vmm: destroyed VM {:#x} left by pid {} ({}, no longer running): its {} pages are the host's again",
                    entry.vm, entry.pid, entry.name, entry.pages
                ),
                Err(e) if e.error() == Some(Error::InvalidParameter) => {}
                Err(e) => {
                    eprintln!(
                        "rampart-vmm: VM {:#x} left by pid {} ({}): {e}; keeping its pool pages reserved",
                        entry.vm, entry.pid, entry.name
                    );
                    locked.table.keep_orphan(entry);
                }
            }
        }
        locked.table.release(pid);
        let entry = match locked.table.allocate(pid, pages, channels, fixed, name) {
            Ok(entry) => entry,
            Err(e) => {
                // Keep the clean-up.
                let _ = locked.commit();
                return Err(e);
            }
        };
        stats::launch_trace("stale entries cleaned, region allocated");
        let pending = if defer && !cleaned {
            Some(locked)
        } else {
            locked.commit().with_context(|| {
                format!(
                    "writing the pool allocation table in {}",
                    env.state_dir.display()
                )
            })?;
            None
        };
        Ok(Session {
            platform,
            dev,
            control,
            calls,
            entry,
            abi,
            table,
            pending: std::sync::Mutex::new(pending),
            env: env.clone(),
            pid,
            released: false,
            _alive: alive_lock,
        })
    }

    /// This process's channels (at least one).
    #[must_use]
    pub fn channels(&self) -> Vec<Channel<'_>> {
        self.entry
            .channel_list()
            .into_iter()
            .map(|i| self.calls.channel(&self.control, i))
            .collect()
    }

    /// The first channel, for calls from the main thread.
    #[must_use]
    pub fn main_channel(&self) -> Channel<'_> {
        self.calls
            .channel(&self.control, self.entry.channel_list()[0])
    }

    /// Physical address of this process's pool region.
    #[must_use]
    pub const fn region_phys(&self) -> u64 {
        self.platform.pool.base + self.entry.offset
    }

    /// Maps this process's pool region.
    ///
    /// # Errors
    ///
    /// Explains `/dev/mem` refusals.
    pub fn map_region(&self) -> Result<Mapping> {
        let len = usize::try_from(self.entry.pages * CHANNEL_SIZE)?;
        let m = self
            .dev
            .map_guest_memory(self.region_phys(), len, "the guest pool")?;
        signals::note_mapping(m.span(), signals::Region::Pool);
        Ok(m)
    }

    /// Maps the first `len` bytes of this process's pool region (guest
    /// RAM starts there: a bare-metal image's pages), rounded up to whole
    /// pages and at most the region.
    ///
    /// # Errors
    ///
    /// Explains `/dev/mem` refusals.
    pub fn map_region_prefix(&self, len: usize) -> Result<Mapping> {
        let whole = usize::try_from(self.entry.pages * CHANNEL_SIZE)?;
        let len = len.next_multiple_of(4096).clamp(4096, whole.max(4096));
        let m = self
            .dev
            .map_guest_memory(self.region_phys(), len, "the guest pool")?;
        signals::note_mapping(m.span(), signals::Region::Pool);
        Ok(m)
    }

    /// This process's pool region, mapped when first used
    /// ([`LazyMapping`]).
    ///
    /// # Errors
    ///
    /// If its size does not fit.
    pub fn lazy_region(&self) -> Result<LazyMapping> {
        let len = usize::try_from(self.entry.pages * CHANNEL_SIZE)?;
        Ok(LazyMapping::new(&self.env.dev_mem, self.region_phys(), len, "the guest pool"))
    }

    /// The table lock this session still holds from `open_for_vm`, or a
    /// fresh one.
    fn pending_or_lock(&self) -> anyhow::Result<Locked> {
        self.take_pending().map_or_else(
            || self.table.lock(self.platform.pool.base, self.platform.pool.size, self.platform.channels),
            Ok,
        )
    }

    /// Records the VM handle in the table (so a later VMM can destroy it if
    /// this one is killed).
    pub fn set_vm(&self, vm: u64) {
        let r = self
            .pending_or_lock()
            .and_then(|mut l| {
                l.table.set_vm(self.pid, vm);
                l.commit()
            });
        if let Err(e) = r {
            eprintln!(
                "rampart-vmm: warning: could not record VM {vm:#x} in the allocation table: {e:#}"
            );
        }
    }

    /// Live entries of other processes, for `list` and `reclaim`.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn others(&self) -> Result<Vec<Entry>> {
        self.publish()?;
        let l = self.table.lock(
            self.platform.pool.base,
            self.platform.pool.size,
            self.platform.channels,
        )?;
        Ok(l.table
            .entries
            .iter()
            .filter(|e| e.pid != self.pid && e.pid != 0 && alive(&self.env.state_dir, e.pid))
            .cloned()
            .collect())
    }

    /// The table [`Session::open_for_vm`] left locked, if it still is.
    fn take_pending(&self) -> Option<Locked> {
        self.pending.lock().ok().and_then(|mut p| p.take())
    }

    /// Writes this process's entry (without a VM) if
    /// [`Session::open_for_vm`] left it unwritten, and unlocks the table.
    ///
    /// # Errors
    ///
    /// I/O errors writing the table.
    pub fn publish(&self) -> Result<()> {
        match self.take_pending() {
            Some(l) => l.commit().with_context(|| {
                format!(
                    "writing the pool allocation table in {}",
                    self.env.state_dir.display()
                )
            }),
            None => Ok(()),
        }
    }

    /// Gives the allocation back.
    pub fn close(mut self) {
        self.release();
    }

    /// The end of a run: reports how `VM_DESTROY` of `handle` (`pages`
    /// pages) went, then gives the allocation back, or, if the VM could not
    /// be destroyed, keeps it (with the VM recorded) so the next VMM or
    /// `reclaim` destroys the VM once this process has exited.
    pub fn finish_teardown<E: std::fmt::Display>(self, name: &str, handle: u64, pages: u64, destroyed: &Result<(), E>) {
        match destroyed {
            Ok(()) => {
                println!(
                    "[{name}] rampart-vmm: VM {handle:#x} destroyed; {pages} pages ({} KiB) reclaimed, zeroed by the hypervisor",
                    pages * rampart_abi::host::PAGE_SIZE / 1024
                );
                self.close();
            }
            Err(e) => {
                eprintln!(
                    "rampart-vmm: destroying VM {handle:#x}: {e}; its pool pages stay reserved (run `rampart-vmm reclaim`)"
                );
                std::mem::forget(self);
            }
        }
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let r = self
            .pending_or_lock()
            .and_then(|mut l| {
                l.table.release(self.pid);
                l.commit()
            });
        if let Err(e) = r {
            eprintln!("rampart-vmm: warning: could not release this VMM's pool allocation: {e:#}");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release();
    }
}

/// The physical-memory device's numbers (`/dev/mem` is character device
/// 1:1 on Linux).
const DEV_MEM_RDEV: (u32, u32) = (1, 1);

/// Refuses a `--dev-mem` that is a character device other than `/dev/mem`
/// (`/dev/zero`, `/dev/null`, ...): mapping it at the control pages'
/// address gives memory that is not Rampart's (for `/dev/zero`, memory
/// whose every access aborts). A regular file is allowed (tests map one);
/// [`probe_control`] and [`check_version`] tell it is not Rampart either.
///
/// # Errors
///
/// A character device with other numbers. (A missing `dev` is left to
/// the mapping, which explains it.)
pub fn check_dev_mem(dev: &str) -> Result<bool> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::metadata(dev) else {
        return Ok(false);
    };
    if meta.file_type().is_char_device() {
        let rdev = meta.rdev();
        let numbers = (libc::major(rdev), libc::minor(rdev));
        if numbers != DEV_MEM_RDEV {
            anyhow::bail!(
                "{dev} is the character device {}:{}, not the physical-memory device /dev/mem ({}:{}): it cannot reach Rampart's control pages (use --dev-mem only to name /dev/mem or a test file)",
                numbers.0,
                numbers.1,
                DEV_MEM_RDEV.0,
                DEV_MEM_RDEV.1
            );
        }
        return Ok(true);
    }
    Ok(false)
}

/// The channels' call pages: the last page of the guest pool per channel.
struct CallPages {
    /// Their mapping, if the hypervisor has call pages (host ABI 0.6).
    map: Option<Mapping>,
    /// Physical address of the first.
    phys: u64,
}

impl CallPages {
    /// Channel `index`, with its call page bound if there is one; on the
    /// register path if the hypervisor refuses it (said once, on stderr).
    fn channel<'a>(&'a self, control: &'a Mapping, index: u32) -> Channel<'a> {
        let Some(map) = &self.map else {
            return Channel::new(control, index);
        };
        let offset = index as usize * 4096;
        let phys = self.phys + u64::from(index) * CHANNEL_SIZE;
        Channel::with_call_page(control, index, map, offset, phys).unwrap_or_else(|e| {
            eprintln!(
                "rampart-vmm: channel {index}: call page {phys:#x} refused ({e}); using the register path"
            );
            Channel::new(control, index)
        })
    }
}

/// Reads register `x0` of `channel` in a child process: if the load
/// aborts, `dev` does not reach the control pages (a file shorter than
/// their address, a device that is not `/dev/mem`, memory Rampart does not
/// emulate), and the error says so, naming `dev`.
///
/// # Errors
///
/// If the load aborts or the probe fails.
fn probe_control(control: &Mapping, channel: u32, dev: &str, platform: &Platform) -> Result<()> {
    let offset = usize::try_from(u64::from(channel) * CHANNEL_SIZE)?;
    match control.guarded_read(offset, 8) {
        Ok(_) => Ok(()),
        Err(Fault::Signal(libc::SIGBUS)) => anyhow::bail!(
            "{dev} is not Rampart's control pages: a load from channel {channel} at {} through it aborted (SIGBUS). \
             Is the host running under Rampart, and is {dev} the physical-memory device?",
            platform.control
        ),
        Err(e) => anyhow::bail!(
            "probing the control pages at {} through {dev}: {e}",
            platform.control
        ),
    }
}

/// Checks that the control pages answer like Rampart, with a host ABI this
/// VMM speaks.
///
/// # Errors
///
/// If they do not.
fn check_version(platform: &Platform, hyp: &dyn Hyp) -> Result<(u64, u64)> {
    let id = rampart_abi::host::HostCall::Version.id();
    let r = crate::hyp::call(hyp, id, &[]);
    if r[0] == u64::from(id) {
        anyhow::bail!(
            "the control pages at {} did not make the call (x0 still holds the function ID after the doorbell): /dev/mem reaches plain memory there, not Rampart's control pages",
            platform.control
        );
    }
    // The answer of the call above (one VERSION, not two: each is a trap
    // to the hypervisor and back, issue 16).
    // On an error, ask again through `version`, which explains it.
    let (major, minor) = if r[0] == 0 {
        (r[1], r[2])
    } else {
        crate::hyp::version(hyp).context("RAMPART_HOST_VERSION through the control page")?
    };
    if major != rampart_abi::host::ABI_VERSION_MAJOR {
        anyhow::bail!(
            "the hypervisor speaks host ABI {major}.{minor}; this rampart-vmm was built for {}.{}",
            rampart_abi::host::ABI_VERSION_MAJOR,
            rampart_abi::host::ABI_VERSION_MINOR
        );
    }
    Ok((major, minor))
}
