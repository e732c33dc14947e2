//! A process's connection to Rampart: the device tree, the control pages,
//! its entry in the pool allocation table and its channels.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rampart_abi::Error;

use crate::dt::{self, CHANNEL_SIZE, Platform};
use crate::hyp::{Channel, Hyp};
use crate::mem::Mapping;
use crate::pool::{Alive, Entry, TableFile, alive};
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
    /// The control pages (every channel).
    pub control: Mapping,
    /// This process's allocation.
    pub entry: Entry,
    /// The hypervisor's host ABI version.
    pub abi: (u64, u64),
    table: TableFile,
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
        let root = dt::root(&env.dt_roots)?;
        let platform = dt::discover(&root)?;
        let control_len = usize::try_from(u64::from(platform.channels) * CHANNEL_SIZE)?;
        let control = Mapping::phys(
            &env.dev_mem,
            platform.control.base,
            control_len,
            "the control pages",
        )?;
        let table = TableFile::new(&env.state_dir);
        let pid = std::process::id();
        let alive_lock = Alive::hold(&env.state_dir)?;
        let mut locked = table.lock(platform.pool.base, platform.pool.size, platform.channels)?;
        let stale = locked.table.take_stale(|p| alive(&env.state_dir, p));
        // A channel of our own (no other process uses it) for the version
        // check and the clean-up; the table is written only if all is well.
        let scratch = locked.table.allocate(pid, 0, 1, None, name)?;
        let channel = Channel::new(&control, scratch.channel_list()[0]);
        let abi = check_version(&platform, &channel)?;
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
        locked.commit().with_context(|| {
            format!(
                "writing the pool allocation table in {}",
                env.state_dir.display()
            )
        })?;
        Ok(Session {
            platform,
            control,
            entry,
            abi,
            table,
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
            .map(|i| Channel::new(&self.control, i))
            .collect()
    }

    /// The first channel, for calls from the main thread.
    #[must_use]
    pub fn main_channel(&self) -> Channel<'_> {
        Channel::new(&self.control, self.entry.channel_list()[0])
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
        Mapping::guest_memory(&self.env.dev_mem, self.region_phys(), len, "the guest pool")
    }

    /// Records the VM handle in the table (so a later VMM can destroy it if
    /// this one is killed).
    pub fn set_vm(&self, vm: u64) {
        let r = self
            .table
            .lock(
                self.platform.pool.base,
                self.platform.pool.size,
                self.platform.channels,
            )
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

    /// Gives the allocation back.
    pub fn close(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        let r = self
            .table
            .lock(
                self.platform.pool.base,
                self.platform.pool.size,
                self.platform.channels,
            )
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
    let (major, minor) =
        crate::hyp::version(hyp).context("RAMPART_HOST_VERSION through the control page")?;
    if major != rampart_abi::host::ABI_VERSION_MAJOR {
        anyhow::bail!(
            "the hypervisor speaks host ABI {major}.{minor}; this rampart-vmm was built for {}.{}",
            rampart_abi::host::ABI_VERSION_MAJOR,
            rampart_abi::host::ABI_VERSION_MINOR
        );
    }
    Ok((major, minor))
}
