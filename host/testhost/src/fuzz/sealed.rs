//! Sealed swap and secure migration in the fuzzer's call mix (issue 14):
//! `VM_EVICT`/`VM_RESTORE` of the fuzz guest's pages (its own, or a
//! protected guest another CPU is running at that moment), each eviction
//! followed by hostile restores that must be refused (a flipped bit, a
//! wrong version, address or VM, the sealed page as the fresh one, a fresh
//! page the host does not own, a replay) and the valid restore into the
//! page it came from, so the owners' models stay exact; and the migration
//! calls: `VM_IMPORT_BEGIN`, `VM_IMPORT`/`VM_IMPORT_DATA` of garbage
//! streams (refused), `VM_EXPORT` of VMs that may not leave (refused) and
//! of the own protected guest to the end (the VM is gone, its pages zeroed
//! and the host's, no guest bytes in clear in the stream). The oracle
//! predicts every call.

use core::sync::atomic::Ordering;

use rampart_abi::guest::GUEST_RAM_BASE;
use rampart_abi::host::HostCall;

use super::{GUEST_RAM_FIRST, GUEST_RAM_PAGES, POOL_PAGES, Page, Step, Stream, transient};
use crate::arch;
use crate::fuzz::model::MAX_VMS;
use crate::fuzz::{SHARED, WINDOW_PAGES};

const PAGE: u64 = rampart_abi::host::PAGE_SIZE;
/// Pages of a `VM_EXPORT` buffer (the most a call takes).
const EXPORT_PAGES: usize = 16;
/// A guest address no fuzz VM ever has memory at.
const NOWHERE: u64 = 1 << 38;

impl Stream {
    /// A pool page the host owns, other than `not`.
    fn host_page(&mut self, not: Option<usize>) -> Option<usize> {
        let from = self.rng.below(POOL_PAGES as u64) as usize;
        (0..POOL_PAGES)
            .map(|k| (from + k) % POOL_PAGES)
            .find(|&i| self.pages[i] == Page::Host && Some(i) != not)
    }

    /// `count` contiguous pool pages the host owns.
    fn host_run(&mut self, count: usize) -> Option<usize> {
        let from = self.rng.below(POOL_PAGES as u64) as usize;
        (0..POOL_PAGES)
            .map(|k| (from + k) % POOL_PAGES)
            .find(|&i| i + count <= POOL_PAGES && self.all(i, count, Page::Host))
    }

    fn restore(
        &mut self,
        h: u64,
        ipa: u64,
        sealed: u64,
        fresh: u64,
        version: u64,
        tag: [u64; 2],
    ) -> u64 {
        self.call(
            HostCall::VmRestore.id(),
            &[h, ipa, sealed, fresh, version, tag[0], tag[1]],
        )[0]
    }

    /// A refusal the contract requires.
    fn must_refuse(&self, what: &str, code: u64) -> Step {
        if code == 0 {
            return self.fail(format_args!("{what} succeeded"));
        }
        SHARED.sealed_refused[self.cpu].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One eviction round (see the module's comment).
    pub(super) fn sealed_swap(&mut self) -> Step {
        let cpus = SHARED.cpus.load(Ordering::Relaxed).max(1);
        let other = self.rng.below(cpus) as usize;
        // Another CPU's protected guest, whose vCPU may be running there
        // right now; else an own guest.
        let foreign = other != self.cpu && self.rng.chance(2);
        let (handle, base, own) = if foreign {
            let h = SHARED.sealed_target[other].load(Ordering::Acquire);
            let base = SHARED.window_base.load(Ordering::Acquire)
                + other as u64 * WINDOW_PAGES as u64 * PAGE;
            (h, base, None)
        } else {
            let slot = (0..MAX_VMS).find(|&i| self.vms[i].is_some_and(|vm| vm.guest));
            let h = slot.and_then(|s| self.vms[s]).map_or(0, |vm| vm.handle);
            (h, self.base, slot)
        };
        let (Some(s1), true) = (self.host_page(None), handle != 0) else {
            return self.vm_give();
        };
        let k = self.rng.below(GUEST_RAM_PAGES as u64) as usize;
        let ipa = GUEST_RAM_BASE + k as u64 * PAGE;
        let index = GUEST_RAM_FIRST + k;
        let orig = base + index as u64 * PAGE;
        let sealed = self.page_address(s1);
        // Evictions that must be refused.
        match self.rng.below(4) {
            0 => {
                let h = self.bad_handle_value();
                let r = self.call(HostCall::VmEvict.id(), &[h, ipa, sealed])[0];
                self.must_refuse("VM_EVICT of a stale or made-up handle", r)?;
            }
            1 => {
                let r = self.call(HostCall::VmEvict.id(), &[handle, NOWHERE, sealed])[0];
                self.must_refuse("VM_EVICT of an address the VM has no page at", r)?;
            }
            2 => {
                // Into the guest's page itself.
                let r = self.call(HostCall::VmEvict.id(), &[handle, ipa, orig])[0];
                self.must_refuse("VM_EVICT into the evicted page itself", r)?;
            }
            _ => {}
        }
        let before = own.map(|_| self.pages[index]);
        let r = self.call(HostCall::VmEvict.id(), &[handle, ipa, sealed]);
        if r[0] != 0 {
            // Destroyed by its owner, relinquished or shared by the guest,
            // its version map full: the oracle judges the code.
            return Ok(());
        }
        SHARED.evictions[self.cpu].fetch_add(1, Ordering::Relaxed);
        let (version, tag) = (r[1], [r[2], r[3]]);
        if own.is_some() {
            self.pages[index] = Page::Host;
            self.expect_zero(index, 1, "VM_EVICT")?;
        }
        // Hostile restores, each refused, the fresh page staying the host's.
        let word = sealed + 8 * self.rng.below(512);
        match self.rng.below(6) {
            0 => {
                let v = arch::ram_read(word);
                arch::ram_write(word, v ^ (1 << self.rng.below(64)));
                let r = self.restore(handle, ipa, sealed, orig, version, tag);
                arch::ram_write(word, v);
                self.must_refuse("VM_RESTORE of a sealed page with a flipped bit", r)?;
            }
            1 => {
                let v = if self.rng.chance(2) {
                    version + 1
                } else {
                    version.wrapping_sub(1)
                };
                let r = self.restore(handle, ipa, sealed, orig, v, tag);
                self.must_refuse("VM_RESTORE with another version", r)?;
            }
            2 => {
                let r = self.restore(handle, ipa ^ PAGE, sealed, orig, version, tag);
                self.must_refuse("VM_RESTORE at another guest address", r)?;
            }
            3 => {
                let h = match self.pick_vm().and_then(|s| self.vms[s]) {
                    Some(vm) if vm.handle != handle => vm.handle,
                    _ => self.bad_handle_value(),
                };
                let r = self.restore(h, ipa, sealed, orig, version, tag);
                self.must_refuse("VM_RESTORE into another VM", r)?;
            }
            4 => {
                let r = self.restore(handle, ipa, sealed, sealed, version, tag);
                self.must_refuse("VM_RESTORE with the sealed page as the fresh one", r)?;
            }
            _ => {
                let fresh = (0..WINDOW_PAGES)
                    .find(|&i| matches!(self.pages[i], Page::Meta(_) | Page::DonatedHyp));
                if let Some(f) = fresh {
                    let r = self.restore(handle, ipa, sealed, self.page_address(f), version, tag);
                    self.must_refuse("VM_RESTORE into a page the host does not own", r)?;
                }
            }
        }
        // An older version replayed after the page left again.
        let (mut sealed, mut version, mut tag) = (sealed, version, tag);
        if self.rng.chance(3) {
            let r = self.restore(handle, ipa, sealed, orig, version, tag);
            let s2 = self.host_page(Some(s1));
            if r == 0
                && let Some(s2) = s2
            {
                let newer = self.page_address(s2);
                let e = self.call(HostCall::VmEvict.id(), &[handle, ipa, newer]);
                if e[0] != 0 {
                    if let (Some(_), Some(b)) = (own, before) {
                        self.pages[index] = b;
                    }
                    return Ok(());
                }
                let r = self.restore(handle, ipa, sealed, orig, version, tag);
                self.must_refuse("VM_RESTORE of an older version (replay)", r)?;
                (sealed, version, tag) = (newer, e[1], [e[2], e[3]]);
            } else if r == 0 {
                if let (Some(_), Some(b)) = (own, before) {
                    self.pages[index] = b;
                }
                return Ok(());
            }
        }
        let r = self.restore(handle, ipa, sealed, orig, version, tag);
        if r != 0 {
            if own.is_some() && !transient(r) {
                self.refused("VM_RESTORE (valid)", r);
            }
            return Ok(());
        }
        SHARED.restores[self.cpu].fetch_add(1, Ordering::Relaxed);
        if let (Some(_), Some(b)) = (own, before) {
            self.pages[index] = b;
        }
        // The same seal again: the address is mapped.
        if self.rng.chance(4)
            && let Some(f) = self.host_page(Some(s1))
        {
            let r = self.restore(handle, ipa, sealed, self.page_address(f), version, tag);
            self.must_refuse("VM_RESTORE of a page already restored (replay)", r)?;
        }
        Ok(())
    }

    /// One migration action (see the module's comment).
    pub(super) fn migration(&mut self) -> Step {
        match self.rng.below(5) {
            0 => {
                let _ = self.call(HostCall::VmImportBegin.id(), &[]);
                Ok(())
            }
            1 => self.import_garbage(),
            2 => {
                // Into a VM that is not being imported, or none.
                let h = match self.pick_vm().and_then(|s| self.vms[s]) {
                    Some(vm) if self.rng.chance(2) => vm.handle,
                    _ => self.bad_handle_value(),
                };
                let Some(b) = self.host_page(None) else {
                    return Ok(());
                };
                let r = self.call(
                    HostCall::VmImportData.id(),
                    &[h, self.page_address(b), PAGE],
                )[0];
                self.must_refuse("VM_IMPORT_DATA into a VM not being imported", r)
            }
            _ => self.export(),
        }
    }

    /// The first `VM_EXPORT` call of another CPU's protected guest, whose
    /// vCPU may be running there: `BUSY` while it runs, else it is stopped
    /// for good (its owner's `VCPU_RUN` answers `MIGRATING` from then on;
    /// its `VM_DESTROY` still frees it). A two-page buffer holds the
    /// preamble and header only, so the export never completes here. The
    /// oracle predicts both outcomes.
    fn export_foreign(&mut self) -> Step {
        let cpus = SHARED.cpus.load(Ordering::Relaxed).max(1);
        let other = self.rng.below(cpus) as usize;
        let h = SHARED.sealed_target[other].load(Ordering::Acquire);
        if other == self.cpu || h == 0 {
            return Ok(());
        }
        let Some(buf) = self.host_run(2) else {
            return Ok(());
        };
        let mut args = [0u64; 9];
        args[0] = h;
        args[1] = self.page_address(buf);
        args[2] = 2;
        for a in &mut args[3..] {
            *a = self.rng.next();
        }
        let r = self.call(HostCall::VmExport.id(), &args);
        if r[0] == 0 {
            if r[2] == 1 {
                return self.fail(format_args!(
                    "VM_EXPORT({h:#x}) of a 128-page guest completed in two pages"
                ));
            }
            SHARED.foreign_stopped[self.cpu].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn import_garbage(&mut self) -> Step {
        // Metadata for a VM of one vCPU (the header's, were it authentic).
        let (Some(meta), Some(buf)) = (self.host_run(12), self.host_run(2)) else {
            return Ok(());
        };
        let (start, end) = (self.page_address(buf), self.page_address(buf + 2));
        arch::ram_fill(start, end, self.rng.next() & !(arch::RAM_BLOCK - 1));
        // Sometimes a plausible record after random bytes: still garbage.
        let bytes = 1 + self.rng.below(2 * PAGE);
        let r = self.call(
            HostCall::VmImport.id(),
            &[self.page_address(meta), 12, start, bytes],
        );
        self.must_refuse("VM_IMPORT of a garbage stream", r[0])
    }

    /// `VM_EXPORT` of an own VM: refused unless it is a protected guest
    /// that ran; that one leaves for good.
    fn export(&mut self) -> Step {
        if self.rng.chance(16) {
            return self.export_foreign();
        }
        // Mostly the protected guest, the one VM that may leave.
        let guest = (0..MAX_VMS)
            .find(|&i| self.vms[i].is_some_and(|vm| vm.guest && vm.protected && vm.signed));
        let picked = match guest {
            Some(g) if self.rng.chance(2) => Some(g),
            _ => self.pick_vm(),
        };
        let Some(slot) = picked else {
            return Ok(());
        };
        let Some(vm) = self.vms[slot] else {
            return Ok(());
        };
        // The largest buffer the window has room for (2 to 16 pages).
        let Some((buf, buf_pages)) = [EXPORT_PAGES, 8, 4, 2]
            .into_iter()
            .find_map(|n| self.host_run(n).map(|b| (b, n)))
        else {
            return Ok(());
        };
        let start = self.page_address(buf);
        let mut args = [0u64; 9];
        args[0] = vm.handle;
        args[1] = start;
        args[2] = buf_pages as u64;
        for a in &mut args[3..] {
            *a = self.rng.next();
        }
        // The fuzz guest's first 16 bytes: never in clear in the stream.
        let clear = crate::checks::vmm::image("fuzz")
            .ok()
            .and_then(|i| {
                let w = |o: usize| Some(u64::from_le_bytes(i.get(o..o + 8)?.try_into().ok()?));
                Some([w(0)?, w(8)?])
            })
            .unwrap_or([0, 0]);
        let mut calls = 0;
        loop {
            let r = self.call(HostCall::VmExport.id(), &args);
            calls += 1;
            if r[0] != 0 {
                if calls > 1
                    && let Some(v) = self.vms[slot].as_mut()
                {
                    // Stopped for good; VM_DESTROY still frees it.
                    v.off = true;
                }
                return Ok(());
            }
            if !(vm.guest && vm.protected) {
                return self.fail(format_args!(
                    "VM_EXPORT({:#x}) of a VM that never ran as a protected guest succeeded",
                    vm.handle
                ));
            }
            if let Some(v) = self.vms[slot].as_mut() {
                v.off = true;
            }
            let written = r[1].min(buf_pages as u64 * PAGE);
            let mut a = start;
            while a + 16 <= start + written {
                if clear != [0, 0]
                    && arch::ram_read(a) == clear[0]
                    && arch::ram_read(a + 8) == clear[1]
                {
                    return self.fail(format_args!(
                        "VM_EXPORT wrote the guest's bytes in clear at {a:#x}"
                    ));
                }
                a += 8;
            }
            if r[2] == 1 {
                break;
            }
            if calls > 1024 {
                return self.fail(format_args!("VM_EXPORT({:#x}) never completed", vm.handle));
            }
        }
        SHARED.exported[self.cpu].fetch_add(1, Ordering::Relaxed);
        // Gone: every page it held zeroed and the host's.
        self.forget(slot);
        let tag = slot as u8;
        for i in 0..WINDOW_PAGES {
            match self.pages[i] {
                Page::Meta(n) | Page::Vm(n) | Page::GuestRam(n) if n == tag => {
                    self.pages[i] = Page::Host;
                    self.expect_zero(i, 1, "VM_EXPORT (complete)")?;
                }
                Page::VmShared(n) if n == tag => self.pages[i] = Page::Host,
                _ => {}
            }
        }
        Ok(())
    }
}
