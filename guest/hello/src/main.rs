//! The smallest Rampart test guest: prints a greeting and checks that the
//! hypervisor answers the discovery calls a pKVM guest makes first.
//!
//! Protocol: console only. vCPU 0 only. Expected exits: `EXIT_MMIO`
//! (console writes), then `EXIT_SYSTEM_OFF`.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

use rampart_guest::abi::{self, kvm_function, psci, trng};
use rampart_guest::hvc::{self, trng as rng};
use rampart_guest::{no_hypervisor, println, protected, report};

rampart_guest::entry!(main);

fn main(ram_size: u64) {
    println!(
        "Hello from a Rampart guest: {ram_size:#x} bytes of RAM at {:#x}",
        abi::GUEST_RAM_BASE
    );
    report::pass("hello");
    if no_hypervisor() {
        report::skip("discovery", format_args!("no hypervisor"));
        return;
    }

    let version = hvc::smccc_version();
    report::check(
        "smccc-version",
        version >= 0x1_0001,
        format_args!("SMCCC_VERSION = {version:#x}, want >= 1.1"),
    );
    let version = hvc::psci::version();
    report::check(
        "psci-version",
        version == psci::VERSION_1_1 as i32,
        format_args!("PSCI_VERSION = {version:#x}, want 1.1"),
    );
    let version = rng::version();
    if version == trng::NOT_SUPPORTED as i32 {
        // TRNG is backed by the CPU's RNDR; without it every call is refused.
        let draw = rng::rnd64(64);
        report::check(
            "trng-absent",
            draw == Err(trng::NOT_SUPPORTED),
            format_args!("TRNG_VERSION is NOT_SUPPORTED but TRNG_RND64 gave {draw:x?}"),
        );
        report::skip("trng", format_args!("this CPU has no RNDR"));
    } else {
        report::check(
            "trng-version",
            version >= trng::VERSION_1_0 as i32,
            format_args!("TRNG_VERSION = {version:#x}, want >= 1.0"),
        );
        match (rng::rnd64(192), rng::rnd64(192)) {
            (Ok(a), Ok(b)) => report::check(
                "trng-rnd64",
                a != b && a != [0; 3],
                format_args!("two draws of 192 bits: {a:x?} {b:x?}"),
            ),
            (a, b) => report::check("trng-rnd64", false, format_args!("TRNG_RND64: {a:x?} {b:x?}")),
        };
        let refused = rng::rnd64(193);
        report::check(
            "trng-rnd64-too-many-bits",
            refused == Err(trng::INVALID_PARAMETERS),
            format_args!("TRNG_RND64(193) = {refused:x?}, want INVALID_PARAMETERS"),
        );
    }
    let features = hvc::kvm_features();
    if !protected() {
        report::check(
            "kvm-features",
            features == [1, 0, 0, 0],
            format_args!("KVM_FEATURES = {features:x?}, want [1, 0, 0, 0] (not a protected VM)"),
        );
        report::skip("pkvm-calls", format_args!("not a protected VM"));
        return;
    }
    report::check(
        "kvm-features",
        features == [abi::KVM_FEATURES_PROTECTED, 0, 0, 0],
        format_args!(
            "KVM_FEATURES = {features:x?}, want [{:#x}, 0, 0, 0]",
            abi::KVM_FEATURES_PROTECTED
        ),
    );
    let granule = hvc::hyp_meminfo();
    report::check(
        "hyp-meminfo",
        u64::try_from(granule) == Ok(abi::GRANULE),
        format_args!("HYP_MEMINFO = {granule}, want {}", abi::GRANULE),
    );
    let granule = hvc::mmio_guard_info();
    report::check(
        "mmio-guard-info",
        u64::try_from(granule) == Ok(abi::GRANULE),
        format_args!("MMIO_GUARD_INFO = {granule}, want {}", abi::GRANULE),
    );
    let enrolled = hvc::mmio_guard_enroll();
    report::check(
        "mmio-guard-enroll",
        enrolled == 0,
        format_args!("MMIO_GUARD_ENROLL = {enrolled}"),
    );
    report::check(
        "kvm-has-relinquish",
        hvc::kvm_has(kvm_function::MEM_RELINQUISH),
        format_args!("MEM_RELINQUISH not advertised"),
    );
}
