//! Host calls from user space: the control channels.
//!
//! Each channel is one 4 KiB page of the control region: registers `x0`..
//! `x17` at `8 * i`, a doorbell at `0x100`. Storing to the doorbell makes the
//! call with the registers as `HVC #0` would see them; when the store
//! retires, the registers hold the results. Only naturally aligned 64-bit
//! accesses are allowed. That is 37 trapped accesses per call; with host
//! ABI 0.6 a channel instead gets a **call page** of host RAM (the last
//! pages of the guest pool, one per channel) bound to it, and a call is
//! plain stores into that page, one trapped store to the channel's `CALL`
//! doorbell and plain loads of the results. [`Hyp`] is the abstraction the rest of the VMM
//! uses, so tests can substitute a fake hypervisor.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use rampart_abi::Error;
use rampart_abi::host::HostCall;

use crate::mem::Mapping;

/// `RAMPART_HOST_VM_LIST` (ABI 0.5): `x1` = a handle or 0; returns `x1` =
/// the next live VM's handle, or 0.
pub const VM_LIST: u32 = HostCall::VmList.id();

/// Something that makes host calls.
pub trait Hyp: Sync {
    /// Makes the call: `regs[0]` = function ID, `regs[1..]` = arguments.
    /// Returns `x0`..`x17` after it.
    fn call_raw(&self, regs: [u64; 18]) -> [u64; 18];
}

/// Makes call `id` with `args` in `x1`.. and the rest zero.
pub fn call(hyp: &dyn Hyp, id: u32, args: &[u64]) -> [u64; 18] {
    let mut regs = [0u64; 18];
    regs[0] = u64::from(id);
    regs[1..=args.len()].copy_from_slice(args);
    hyp.call_raw(regs)
}

/// A call's name without `RAMPART_HOST_`.
#[must_use]
pub fn short_name(id: u32) -> &'static str {
    HostCall::try_from(id)
        .map(|c| c.name().strip_prefix("RAMPART_HOST_").unwrap_or(c.name()))
        .unwrap_or("?")
}

/// A failed call's `x0`, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallError {
    /// The function ID.
    pub id: u32,
    /// `x0`.
    pub code: i64,
}

impl CallError {
    /// The error as `rampart_abi::Error`, if it is one.
    #[must_use]
    pub fn error(&self) -> Option<Error> {
        Error::try_from(self.code).ok()
    }
}

/// An error code's name (`BAD_SIGNATURE`) or its number.
#[must_use]
pub fn error_name(code: i64) -> String {
    Error::try_from(code).map_or_else(|_| format!("error {code}"), |e| e.name().to_string())
}

/// What an error code means, in docs/abi.md's words.
#[must_use]
pub fn error_meaning(code: i64) -> &'static str {
    match Error::try_from(code) {
        Ok(Error::NotSupported) => "unknown function, or not available to this caller",
        Ok(Error::NotRequired) => "not required on this platform",
        Ok(Error::InvalidParameter) => "an argument is malformed, or the VM handle is stale",
        Ok(Error::Denied) => "the caller does not own or may not touch the resource",
        Ok(Error::Busy) => "the resource is in use",
        Ok(Error::NoMemory) => "the hypervisor has no memory left for this request",
        Ok(Error::Range) => "the address range is not (entirely) memory the call can act on",
        Ok(Error::NotSigned) => "no signature was set for this protected VM",
        Ok(Error::UntrustedKey) => "the bundle's signer is not a key the hypervisor trusts",
        Ok(Error::BadSignature) => {
            "the signature does not match the VM's measurement (the image, manifest or VM set-up differs from what was signed)"
        }
        Ok(Error::SealInvalid) => "the sealed page does not authenticate for this VM, guest address and version",
        Ok(Error::StaleVersion) => "the version is not the guest address's current one (an old seal replayed)",
        Ok(Error::NotEvicted) => "the guest address is not evicted",
        Ok(Error::NotEvictable) => "the guest address holds no page of the VM that can be evicted",
        Ok(Error::NotAuthentic) => "a migration stream record does not authenticate under the migration key",
        Ok(Error::StreamOrder) => "a migration stream record is malformed, out of sequence or out of place",
        Ok(Error::StaleStream) => "the migration stream's challenge is not outstanding here (a replay, or another destination)",
        Ok(Error::Migrating) => "the VM is being exported or imported",
        Err(_) => "unknown error code",
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} returned {} ({})",
            short_name(self.id),
            error_name(self.code),
            error_meaning(self.code)
        )
    }
}

impl std::error::Error for CallError {}

/// Makes the call and returns `x1`.. on `SUCCESS`.
///
/// # Errors
///
/// [`CallError`] with `x0`.
#[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
pub fn checked(hyp: &dyn Hyp, id: u32, args: &[u64]) -> Result<[u64; 18], CallError> {
    let r = call(hyp, id, args);
    if r[0] == 0 {
        Ok(r)
    } else {
        Err(CallError {
            id,
            code: r[0] as i64,
        })
    }
}

/// Every live VM's handle, in slot order (`VM_LIST`).
///
/// # Errors
///
/// If `VM_LIST` fails (`NOT_SUPPORTED` from a hypervisor before ABI 0.5).
pub fn list_vms(hyp: &dyn Hyp) -> Result<Vec<u64>, CallError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = checked(hyp, VM_LIST, &[after])?;
        if r[1] == 0 || out.contains(&r[1]) || out.len() > 4096 {
            return Ok(out);
        }
        out.push(r[1]);
        after = r[1];
    }
}

/// The ABI version (`VERSION`).
///
/// # Errors
///
/// If the call fails.
pub fn version(hyp: &dyn Hyp) -> Result<(u64, u64), CallError> {
    let r = checked(hyp, HostCall::Version.id(), &[])?;
    Ok((r[1], r[2]))
}

/// Offset of the doorbell in a channel.
#[allow(clippy::cast_possible_truncation, reason = "0x100")]
pub const DOORBELL: usize = rampart_abi::boot::control::DOORBELL as usize;

/// Calls made through channels, and the accesses to the control pages
/// they took: the control pages are mapped nowhere, so every such access
/// is one trap to the hypervisor (a stage-2 fault).
static CALLS: AtomicU64 = AtomicU64::new(0);
static TRAPPED: AtomicU64 = AtomicU64::new(0);

/// Calls made through channels by this process, and the trapped accesses
/// to the control pages they took.
#[must_use]
pub fn trapped_accesses() -> (u64, u64) {
    (
        CALLS.load(Ordering::Relaxed),
        TRAPPED.load(Ordering::Relaxed),
    )
}

/// Offset of the call doorbell in a channel (host ABI 0.6).
#[allow(clippy::cast_possible_truncation, reason = "0x180")]
pub const CALL: usize = rampart_abi::boot::control::CALL as usize;

/// Offset of the bind register in a channel (host ABI 0.6).
#[allow(clippy::cast_possible_truncation, reason = "0x188")]
pub const BIND: usize = rampart_abi::boot::control::BIND as usize;

/// One control channel: a page of the control region, and, with host ABI
/// 0.6, a call page of host RAM bound to it. Calls on it are serialised
/// (threads that share a channel take turns).
pub struct Channel<'a> {
    map: &'a Mapping,
    offset: usize,
    /// The bound call page: its mapping and offset there.
    call_page: Option<(&'a Mapping, usize)>,
    lock: Mutex<()>,
}

impl<'a> Channel<'a> {
    /// Channel `index` of the control region `map`, on the register path
    /// (18 trapped stores, the doorbell, 18 trapped loads per call).
    ///
    /// # Panics
    ///
    /// If the channel is outside `map`.
    #[must_use]
    pub fn new(map: &'a Mapping, index: u32) -> Self {
        let offset = index as usize * 4096;
        assert!(
            offset + 4096 <= map.len(),
            "channel {index} outside the control mapping"
        );
        Channel {
            map,
            offset,
            call_page: None,
            lock: Mutex::new(()),
        }
    }

    /// Channel `index` with the call page at `offset` of `pages`, whose
    /// physical address is `phys`: binds it (after sharing it with the
    /// hypervisor if it is not yet), so that each call is one trapped
    /// store. A binding outlives the process: the next one to get this
    /// channel finds the same page bound, which costs one bind store and
    /// one load.
    ///
    /// # Errors
    ///
    /// If the hypervisor refuses the page: the channel is still usable on
    /// the register path ([`Channel::new`]).
    pub fn with_call_page(
        map: &'a Mapping,
        index: u32,
        pages: &'a Mapping,
        offset: usize,
        phys: u64,
    ) -> Result<Self, CallError> {
        let mut channel = Self::new(map, index);
        assert!(
            offset + 4096 <= pages.len(),
            "call page of channel {index} outside its mapping"
        );
        let mut code = channel.bind(phys);
        if code == Error::Denied.code() {
            // Not shared yet (a fresh boot): share it, then bind.
            checked(&channel, HostCall::ShareHyp.id(), &[phys, 1])?;
            code = channel.bind(phys);
        }
        if code != 0 {
            return Err(CallError {
                id: HostCall::ShareHyp.id(),
                code,
            });
        }
        channel.call_page = Some((pages, offset));
        Ok(channel)
    }

    /// Stores `page` to the bind register; returns the result code.
    #[allow(clippy::cast_possible_wrap, reason = "x0 is a signed code")]
    fn bind(&self, page: u64) -> i64 {
        self.map.write_u64(self.offset + BIND, page);
        TRAPPED.fetch_add(2, Ordering::Relaxed);
        self.map.read_u64(self.offset) as i64
    }
}

impl Hyp for Channel<'_> {
    fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
        let _turn = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((page, base)) = self.call_page {
            // Plain stores to RAM, one trapped store, plain loads.
            for (i, value) in regs.iter().enumerate() {
                page.write_u64(base + 8 * i, *value);
            }
            self.map.write_u64(self.offset + CALL, 1);
            CALLS.fetch_add(1, Ordering::Relaxed);
            TRAPPED.fetch_add(1, Ordering::Relaxed);
            return std::array::from_fn(|i| page.read_u64(base + 8 * i));
        }
        for (i, value) in regs.iter().enumerate() {
            self.map.write_u64(self.offset + 8 * i, *value);
        }
        // The call happens, synchronously, when this store retires.
        self.map.write_u64(self.offset + DOORBELL, 1);
        CALLS.fetch_add(1, Ordering::Relaxed);
        TRAPPED.fetch_add(2 * regs.len() as u64 + 1, Ordering::Relaxed);
        std::array::from_fn(|i| self.map.read_u64(self.offset + 8 * i))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake hypervisor for tests: records calls and answers VCPU_RUN
    //! from a script.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use rampart_abi::host::{ExitReason, HostCall, mmio};

    use super::{Hyp, VM_LIST};

    /// One scripted `VCPU_RUN` answer.
    #[derive(Clone, Debug)]
    pub enum Step {
        /// `x0` = this error.
        Error(i64),
        /// An exit: reason and `x2`..`x4`.
        Exit(ExitReason, [u64; 3]),
        /// `EXIT_INTERRUPT` until vCPU n's script is done.
        AwaitVcpu(usize),
    }

    /// Console output as UART writes, one step per byte.
    pub fn print(text: &str) -> Vec<Step> {
        text.bytes()
            .map(|b| {
                Step::Exit(
                    ExitReason::Mmio,
                    [0x0900_0000, 2 | mmio::WRITE, u64::from(b)],
                )
            })
            .collect()
    }

    #[derive(Default)]
    pub struct State {
        pub calls: Vec<[u64; 18]>,
        pub scripts: Vec<VecDeque<Step>>,
        pub live: Vec<u64>,
        pub next_handle: u64,
        /// Called with the VCPU_RUN step about to be returned.
        pub fail: Option<(u32, i64)>,
    }

    #[derive(Default)]
    pub struct Fake {
        pub state: Mutex<State>,
    }

    impl Fake {
        pub fn with_scripts(scripts: Vec<Vec<Step>>) -> Self {
            let f = Fake::default();
            {
                let mut s = f.state.lock().unwrap();
                s.scripts = scripts.into_iter().map(VecDeque::from).collect();
                s.next_handle = 0x1_0000_1000;
            }
            f
        }

        pub fn calls_of(&self, call: HostCall) -> Vec<[u64; 18]> {
            let s = self.state.lock().unwrap();
            s.calls
                .iter()
                .filter(|r| r[0] == u64::from(call.id()))
                .copied()
                .collect()
        }
    }

    impl Hyp for Fake {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        fn call_raw(&self, regs: [u64; 18]) -> [u64; 18] {
            let mut s = self.state.lock().unwrap();
            s.calls.push(regs);
            let id = regs[0] as u32;
            let mut out = regs;
            out[0] = 0;
            if let Some((fail_id, code)) = s.fail
                && fail_id == id
            {
                out[0] = code as u64;
                return out;
            }
            match id {
                _ if id == HostCall::VmCreate.id() => {
                    out[1] = s.next_handle;
                    let h = s.next_handle;
                    s.live.push(h);
                    s.next_handle += 1;
                }
                _ if id == HostCall::VmDestroy.id() => {
                    if let Some(i) = s.live.iter().position(|&h| h == regs[1]) {
                        s.live.remove(i);
                    } else {
                        out[0] = (-3i64) as u64;
                    }
                }
                _ if id == VM_LIST => {
                    let next = s.live.iter().copied().find(|&h| h > regs[1]);
                    out[1] = next.unwrap_or(0);
                }
                _ if id == HostCall::VcpuRun.id() => {
                    let vcpu = regs[2] as usize;
                    let step = s.scripts.get_mut(vcpu).and_then(VecDeque::pop_front);
                    let step = match step {
                        Some(Step::AwaitVcpu(other)) if !s.scripts[other].is_empty() => {
                            s.scripts[vcpu].push_front(Step::AwaitVcpu(other));
                            Some(Step::Exit(ExitReason::Interrupt, [0; 3]))
                        }
                        Some(Step::AwaitVcpu(_)) => Some(Step::Exit(ExitReason::Interrupt, [0; 3])),
                        other => other,
                    };
                    match step {
                        Some(Step::Error(code)) => out[0] = code as u64,
                        Some(Step::Exit(reason, d)) => {
                            out[1] = reason as u64;
                            out[2..5].copy_from_slice(&d);
                        }
                        Some(Step::AwaitVcpu(_)) => unreachable!(),
                        None => {
                            // Script done: this vCPU is off.
                            out[1] = ExitReason::PoweredOff as u64;
                        }
                    }
                }
                _ => {}
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_meanings() {
        assert_eq!(short_name(HostCall::VcpuRun.id()), "VCPU_RUN");
        assert_eq!(short_name(VM_LIST), "VM_LIST");
        assert_eq!(error_name(-22), "BAD_SIGNATURE");
        assert_eq!(error_name(-99), "error -99");
        let e = CallError {
            id: HostCall::VmDonate.id(),
            code: -19,
        };
        assert_eq!(
            e.to_string(),
            "VM_DONATE returned RANGE (the address range is not (entirely) memory the call can act on)"
        );
    }

    #[test]
    fn lists_vms_through_the_fake() {
        let f = fake::Fake::with_scripts(vec![]);
        f.state.lock().unwrap().live = vec![0x1_0000_1000, 0x2_0000_1003];
        assert_eq!(list_vms(&f).unwrap(), vec![0x1_0000_1000, 0x2_0000_1003]);
        f.state.lock().unwrap().fail = Some((VM_LIST, -1));
        assert_eq!(list_vms(&f).unwrap_err().code, -1);
    }

    #[test]
    fn a_channel_writes_registers_then_rings() {
        let map = Mapping::anonymous(2 * 4096).unwrap();
        let ch = Channel::new(&map, 1);
        let mut regs = [0u64; 18];
        regs[0] = u64::from(HostCall::Version.id());
        regs[17] = 0x1717;
        // No hypervisor behind anonymous memory: the "results" are what
        // was written, and the doorbell word holds the store.
        let out = ch.call_raw(regs);
        assert_eq!(out, regs);
        assert_eq!(map.read_u64(4096 + DOORBELL), 1);
        assert_eq!(map.read_u64(4096 + 17 * 8), 0x1717);
        assert_eq!(map.read_u64(0), 0, "channel 0 untouched");
    }
}
