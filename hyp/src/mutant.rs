//! Planted bugs for the oracle to find (test builds with the `mutants`
//! feature only, which implies `oracle`; never in a release image).
//!
//! One build carries all of them, each off until the boot command line
//! names it (`rampart.mutant=<name>`, [`rampart_abi::boot::MUTANT_KEY`]),
//! so `cargo xtask test` builds the hypervisor once for every
//! `oracle/mutant-*` case instead of once per bug. A build without the
//! feature refuses the option and compiles every [`active`] check to
//! `false`.

use core::sync::atomic::{AtomicU8, Ordering};

/// The planted bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// `RECLAIM_HYP` takes pages held for a live VM (its stage-2 tables
    /// and metadata) back, as before issue 9's fix.
    ReclaimVmMeta = 1,
    /// `VM_DESTROY` hands the VM's pages and metadata back without zeroing
    /// them.
    TeardownNoZero = 2,
    /// `DONATE_HYP` leaves the pages mapped in the host stage 2 (the result
    /// and the ownership table are right: only the correspondence check
    /// can see it).
    DonateKeepsHostMapping = 3,
    /// A refused `VM_IMPORT_DATA` leaves the VM (and its pages) in place.
    ImportKeepsVm = 4,
    /// Not a bug the oracle finds: every secondary CPU overflows its EL2
    /// stack on purpose as it starts, to show the overflow is caught,
    /// reported once and ends in a power-off (`bad-hyp/stack-overflow`).
    StackOverflow = 5,
    /// The first run measures a mapped page the host declared zero
    /// (`VM_DECLARE_ZERO`) as zero without reading it, so content the host
    /// donated there is laundered. Not one for the oracle: the test host's
    /// `vm-declare-zero-laundered` check finds it (`BAD_SIGNATURE` expected,
    /// the VM runs).
    DeclaredHidesMapped = 6,
}

/// Each bug's name on the command line.
const NAMES: [(&str, Mutant); 6] = [
    ("reclaim-vm-meta", Mutant::ReclaimVmMeta),
    ("teardown-no-zero", Mutant::TeardownNoZero),
    ("donate-keeps-host-mapping", Mutant::DonateKeepsHostMapping),
    ("import-keeps-vm", Mutant::ImportKeepsVm),
    ("stack-overflow", Mutant::StackOverflow),
    ("declared-hides-mapped", Mutant::DeclaredHidesMapped),
];

/// The bug turned on (0: none). Written once at boot, before any other CPU
/// or the host runs.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Whether `mutant` is turned on: always `false` without the feature.
#[inline]
pub fn active(mutant: Mutant) -> bool {
    cfg!(feature = "mutants") && ACTIVE.load(Ordering::Relaxed) == mutant as u8
}

/// Turns on the bug `name` names (boot, before the host runs).
///
/// # Errors
///
/// A message for the boot log when the build has no planted bugs or the
/// name is not one of them.
pub fn select(name: &str) -> Result<(), alloc::string::String> {
    if !cfg!(feature = "mutants") {
        return Err(alloc::format!(
            "{}={name}: this build has no planted bugs (only test builds with the `mutants` feature do)",
            rampart_abi::boot::MUTANT_KEY
        ));
    }
    let Some(&(_, mutant)) = NAMES.iter().find(|(n, _)| *n == name) else {
        let known: alloc::vec::Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        return Err(alloc::format!(
            "{}={name}: no such planted bug (known: {})",
            rampart_abi::boot::MUTANT_KEY,
            known.join(", ")
        ));
    };
    ACTIVE.store(mutant as u8, Ordering::Relaxed);
    crate::println!("test build (mutants): planted bug `{name}` is on");
    Ok(())
}
