//! The checks, in the order they run.
//!
//! To add a check: write a `fn(&Platform) -> Result<(), Msg>` in one of these
//! modules (or a new one) and list it in [`CHECKS`] with a short, stable
//! name. Use `note!` for details worth printing on success, `ensure!`/`fail!`
//! for failures; say what was expected and what happened.

mod boot;
mod busy;
mod carveout;
mod channel;
mod concurrent;
mod cpu;
mod declare_zero;
mod dma;
mod donate_zeroed;
mod lazy_state;
pub mod migrate;
mod ownership;
mod pool;
mod ram;
mod realm;
pub mod reset;
mod smccc;
pub mod swap;
mod vb;
mod vm;
pub mod withheld;
/// The VMM (`src/vmm/`), declared here so `main.rs` stays as it is.
#[path = "../vmm/mod.rs"]
pub mod vmm;

pub use busy::{TASK_BUSY_RUNNER, runner as busy_runner};
pub use channel::{TASK_CHANNEL_PEEK, peeker as channel_peeker};
pub use concurrent::worker as ownership_worker;
pub use swap::{TASK_SWAP_RACE, race_secondary as swap_race_runner};

use crate::msg::Msg;
use crate::platform::Platform;

/// One named check.
pub struct Check {
    /// Stable short name printed after `PASS`/`FAIL`.
    pub name: &'static str,
    /// Runs the check.
    pub run: fn(&Platform) -> Result<(), Msg>,
}

/// Every check, in run order. The RAM test runs last: it is the slowest, and
/// it also shows the ownership checks gave every page back to the host.
pub const CHECKS: &[Check] = &[
    Check {
        name: "boot-state",
        run: boot::boot_state,
    },
    Check {
        name: "psci-conduit",
        run: smccc::psci_conduit,
    },
    Check {
        name: "psci-version",
        run: smccc::psci_version,
    },
    Check {
        name: "hyp-version",
        run: smccc::hyp_version,
    },
    Check {
        name: "hyp-features",
        run: smccc::hyp_features,
    },
    Check {
        name: "hvc-unknown",
        run: smccc::hvc_unknown,
    },
    Check {
        name: "smc-unknown",
        run: smccc::smc_unknown,
    },
    Check {
        name: "cpu-on-all",
        run: cpu::cpu_on_all,
    },
    Check {
        name: "cpu-on-already-on",
        run: cpu::cpu_on_already_on,
    },
    Check {
        name: "cpu-on-bogus",
        run: cpu::cpu_on_bogus,
    },
    Check {
        name: "pmu-el2-hidden",
        run: cpu::pmu_el2_hidden,
    },
    Check {
        name: "carveout-dt",
        run: carveout::carveout_dt,
    },
    Check {
        name: "carveout-read",
        run: carveout::carveout_read,
    },
    Check {
        name: "carveout-write",
        run: carveout::carveout_write,
    },
    Check {
        name: "dma-withheld-dt",
        run: withheld::dma_withheld_dt,
    },
    Check {
        name: "dma-withheld-mmio",
        run: withheld::dma_withheld_mmio,
    },
    Check {
        name: "gicr-lpi-tables",
        run: withheld::gicr_lpi_tables,
    },
    Check {
        name: "own-share-unshare",
        run: ownership::own_share_unshare,
    },
    Check {
        name: "own-donate-reclaim",
        run: ownership::own_donate_reclaim,
    },
    Check {
        name: "own-bad-args",
        run: ownership::own_bad_args,
    },
    Check {
        name: "own-wrong-state",
        run: ownership::own_wrong_state,
    },
    Check {
        name: "own-partial-range",
        run: ownership::own_partial_range,
    },
    Check {
        name: "control-call-page",
        run: channel::control_call_page,
    },
    Check {
        name: "control-contention",
        run: channel::control_contention,
    },
    Check {
        name: "own-concurrent",
        run: concurrent::own_concurrent,
    },
    Check {
        name: "vm-bringup",
        run: vm::vm_bringup,
    },
    Check {
        name: "vm-hello",
        run: vm::vm_hello,
    },
    Check {
        name: "vm-hello-unprotected",
        run: vm::vm_hello_unprotected,
    },
    Check {
        name: "vm-memtest",
        run: vm::vm_memtest,
    },
    // Issue 16: the lazy FP/SIMD and pointer-authentication switch.
    Check {
        name: "vm-lazy-state",
        run: lazy_state::vm_lazy_state,
    },
    Check {
        name: "swap-memtest",
        run: swap::swap_memtest,
    },
    Check {
        name: "swap-evicted-before-run",
        run: swap::swap_evicted_before_run,
    },
    Check {
        name: "vm-share",
        run: vm::vm_share,
    },
    Check {
        name: "vm-smp",
        run: vm::vm_smp,
    },
    Check {
        name: "vm-timer",
        run: vm::vm_timer,
    },
    Check {
        name: "vm-host-timer",
        run: vm::vm_host_timer,
    },
    Check {
        name: "vm-attacker",
        run: vm::vm_attacker,
    },
    Check {
        name: "vm-two-at-once",
        run: vm::vm_two_at_once,
    },
    // Issue 16: a refused VM_EXPORT takes no vCPU lock (no BUSY for a
    // VCPU_RUN of the VM on another CPU).
    Check {
        name: "vm-refusal-no-busy",
        run: busy::vm_refusal_no_busy,
    },
    Check {
        name: "vm-attack-access",
        run: vm::vm_attack_access,
    },
    Check {
        name: "vm-attack-donate",
        run: vm::vm_attack_donate,
    },
    Check {
        name: "vm-attack-metadata",
        run: vm::vm_attack_metadata,
    },
    Check {
        name: "vm-attack-handles",
        run: vm::vm_attack_handles,
    },
    Check {
        name: "vm-attack-vcpu",
        run: vm::vm_attack_vcpu,
    },
    Check {
        name: "vm-create-bad",
        run: vm::vm_create_bad,
    },
    Check {
        name: "vb-refuse-unsigned",
        run: vb::vb_refuse_unsigned,
    },
    Check {
        name: "vb-refuse-wrong-key",
        run: vb::vb_refuse_wrong_key,
    },
    Check {
        name: "vb-refuse-flipped-image",
        run: vb::vb_refuse_flipped_image,
    },
    Check {
        name: "vb-refuse-flipped-manifest",
        run: vb::vb_refuse_flipped_manifest,
    },
    Check {
        name: "vb-refuse-flipped-signature",
        run: vb::vb_refuse_flipped_signature,
    },
    Check {
        name: "vb-first-run-vcpu1",
        run: vb::vb_first_run_vcpu1,
    },
    Check {
        name: "vb-measurement-fixed",
        run: vb::vb_measurement_fixed,
    },
    Check {
        name: "vb-late-donation-zeroed",
        run: vm::vb_late_donation_zeroed,
    },
    // issue 16: VM_DONATE_ZEROED before the first run.
    Check {
        name: "vm-donate-zeroed",
        run: donate_zeroed::vm_donate_zeroed,
    },
    // issue 16: pages EL2 zeroed are measured unread; only while true.
    Check {
        name: "vm-known-zero-refused",
        run: donate_zeroed::vm_known_zero_refused,
    },
    Check {
        name: "vm-known-zero-evicted",
        run: donate_zeroed::vm_known_zero_evicted,
    },
    // issue 16: VM_DECLARE_ZERO, RAM measured as zeros before it is given.
    Check {
        name: "vm-declare-zero",
        run: declare_zero::vm_declare_zero,
    },
    Check {
        name: "vm-declare-zero-refused",
        run: declare_zero::vm_declare_zero_refused,
    },
    Check {
        name: "vm-declare-zero-laundered",
        run: declare_zero::vm_declare_zero_laundered,
    },
    Check {
        name: "vb-attest",
        run: vb::vb_attest,
    },
    // issue 12: a realm VM (RSI), before the no-leak scan.
    Check {
        name: "realm-rsi",
        run: realm::realm_rsi,
    },
    Check {
        name: "realm-measured",
        run: realm::realm_measured,
    },
    Check {
        name: "vb-no-leaks",
        run: vb::vb_no_leaks,
    },
    // Hostile DMA (skipped without QEMU's edu device): before the pool and
    // RAM checks, which show the hypervisor still works after them.
    Check {
        name: "dma-host-to-host",
        run: dma::dma_host_to_host,
    },
    Check {
        name: "dma-read-carveout",
        run: dma::dma_read_carveout,
    },
    Check {
        name: "dma-read-guest",
        run: dma::dma_read_guest,
    },
    Check {
        name: "dma-guest-share",
        run: dma::dma_guest_share,
    },
    Check {
        name: "dma-write-guest",
        run: dma::dma_write_guest,
    },
    Check {
        name: "dma-write-metadata",
        run: dma::dma_write_metadata,
    },
    Check {
        name: "dma-write-carveout",
        run: dma::dma_write_carveout,
    },
    Check {
        name: "pool-vm-stage2-straddle",
        run: pool::pool_vm_stage2_straddle,
    },
    Check {
        name: "pool-drain",
        run: pool::pool_drain,
    },
    Check {
        name: "ram-rw",
        run: ram::ram_rw,
    },
];
