//! Rampart's EL2 hypervisor: the only trusted component.
//!
//! It takes EL2 on every CPU, keeps its own carve-out of RAM out of the
//! host's reach with a stage-2 translation, and relays the host's PSCI calls
//! so that every CPU passes through EL2 before it runs host code.
//!
//! Design principles:
//! - Small and boring: decisions live in hardware-free crates
//!   (`rampart-platform`, `rampart-abi`) tested on the build machine; this
//!   crate reads registers, applies decisions and writes registers.
//! - Input from the host is hostile: it is validated, answered with a
//!   documented code, and never makes the hypervisor panic.
//! - Raw pointers and assembly live in `arch`, `mm` and `console` only;
//!   elsewhere `unsafe` is only a call into their register and memory
//!   functions, each with a `// SAFETY:` comment saying why it holds.

#![no_std]
#![no_main]
// Rampart runs only on aarch64: addresses are u64 and usize is 64 bits wide,
// so the u64 <-> usize casts between the two cannot truncate.
#![allow(clippy::cast_possible_truncation, reason = "usize is 64 bits on aarch64")]
#![allow(missing_docs, reason = "a binary crate; items are documented where it helps")]

const _: () = assert!(usize::BITS == 64);

extern crate alloc;

mod arch;
mod config;
mod console;
mod control;
mod cpu;
mod exceptions;
mod gicr_guard;
mod guest_calls;
mod host;
mod host_timer;
mod memory;
mod migrate;
mod mm;
mod mutant;
#[cfg(feature = "oracle")]
mod oracle;
mod rsi;
mod security;
mod smmu;
mod swap;
mod vcpu;
mod vm;

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use rampart_platform::cpu::Stage2Geometry;
use rampart_platform::smc::{Firmware, psci};
use rampart_platform::{BootError, MemRange, PAGE_SIZE, cmdline, devices, dt, hostdt, image, layout};
use spin::Once;

use crate::config::{CARVEOUT_SIZE, EARLY_UART, HEAP_SIZE, MAX_CPUS};
use crate::cpu::{El2Config, Features, Power};
use aarch64_paging::paging::{El2, Stage2};

/// Bytes of the boot-sized per-CPU range for one CPU's `PerCpu`, rounded
/// so that the host save areas after them stay 64-byte aligned.
const PER_CPU_SLOT: u64 = cpu::PER_CPU_BYTES.next_multiple_of(64);

/// Rampart's version, printed at boot.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What every CPU needs after boot; written once by the boot CPU.
pub struct Boot {
    /// EL2 register values.
    pub config: El2Config,
    /// CPUs in the device tree.
    pub cpu_count: usize,
    /// RAM the host owns.
    pub host_ram: Vec<MemRange>,
    /// Root level of every stage-2 table (the host's and the VMs').
    pub stage2_level: usize,
    /// Bits of guest-physical address every stage 2 translates.
    pub ipa_bits: u32,
}

/// Bytes of the oracle's abstract state per page (test builds only).
#[cfg(feature = "oracle")]
const ORACLE_BYTES_PER_PAGE: u64 = oracle::BYTES_PER_PAGE;
#[cfg(not(feature = "oracle"))]
const ORACLE_BYTES_PER_PAGE: u64 = 0;

/// Boot-time facts, shared read-only by every CPU.
pub static BOOT: Once<Boot> = Once::new();
/// What firmware offers.
pub static FIRMWARE: Once<Firmware> = Once::new();

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __stacks_start: u8;
    static __image_end: u8;
}

fn symbol(s: *const u8) -> u64 {
    s as u64
}

/// Why boot stopped.
enum Fatal {
    Boot(BootError),
    Other(alloc::string::String),
}

impl From<BootError> for Fatal {
    fn from(e: BootError) -> Self {
        Fatal::Boot(e)
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Boot(e) => write!(f, "{e}"),
            Fatal::Other(s) => f.write_str(s),
        }
    }
}

/// The boot CPU's first Rust code: `dtb` from x0, `el` the exception level
/// it was entered at.
pub extern "C" fn primary_main(dtb: u64, el: u64) -> ! {
    // SAFETY: QEMU virt's PL011 is at EARLY_UART; the MMU is off, so the
    // physical address is live; nothing else in Rampart uses it.
    unsafe { console::init(EARLY_UART) };
    println!("Rampart {VERSION} starting at EL{el}");
    if el != 2 {
        // Before the heap exists: nothing here may allocate.
        println!("entered at EL{el}; Rampart must be entered at EL2");
        println!("cannot boot; powering off");
        power_off()
    }
    match boot(dtb, el) {
        Ok((entry, dt)) => {
            println!(
                "EL2 stack: boot used {} of {} bytes",
                arch::stack_high_water(0),
                config::STACK_SIZE
            );
            println!("entering host at {entry:#x} with its device tree at {dt:#x}");
            arch::jump_to_host_repainted(entry, dt)
        }
        Err(e) => {
            println!("{e}");
            println!("cannot boot; powering off");
            power_off()
        }
    }
}

fn boot(dtb: u64, el: u64) -> Result<(u64, u64), Fatal> {
    if el != 2 {
        return Err(Fatal::Other(alloc::format!("entered at EL{el}; Rampart must be entered at EL2")));
    }
    let image_start = symbol(&raw const __image_start);
    let image_end = symbol(&raw const __image_end);
    let carveout = MemRange::from_base_size(image_start, CARVEOUT_SIZE).ok_or(BootError::NoMemory)?;
    let heap = MemRange::from_base_size(image_end, HEAP_SIZE as u64).ok_or(BootError::NoMemory)?;
    // SAFETY: the heap is the first part of the carve-out after the image;
    // nothing else uses it. (Whether the carve-out is RAM at all is checked
    // against the device tree below, before anything else is stored there.)
    unsafe { mm::init_heap(heap) };

    if dtb == 0 {
        return Err(BootError::NoDeviceTree.into());
    }
    // SAFETY: the loader passed the device tree's address in x0 and the MMU
    // is off, so physical memory is readable; the header is checked before
    // its size is trusted, and nothing writes the blob while it is read.
    let blob = unsafe { mm::device_tree_blob(dtb, 2 << 20) }
        .map_err(|why| BootError::MalformedDeviceTree(alloc::format!("at {dtb:#x}: {why}")))?;
    let info = dt::parse(blob)?;
    // Rampart owns the SMMUv3 (hyp/src/smmu.rs): its registers are mapped
    // nowhere for the host.
    let smmu_dt = dt::smmu_v3(blob)?;
    // The GICv3 redistributors, for the EL2 timer that keeps the host's
    // clock while a guest runs (host_timer.rs); RAM is never one of them.
    let gic_redistributors: Vec<MemRange> = dt::gic_redistributors(blob)
        .unwrap_or_else(|e| {
            println!("no GIC redistributors for the host's timer: {e}");
            Vec::new()
        })
        .into_iter()
        .filter(|r| r.is_aligned(PAGE_SIZE) && !info.memory.iter().any(|m| m.overlaps(r)))
        .collect();
    if let Some(uart) = info.uart
        && uart.start() != EARLY_UART
    {
        println!("console moves to the device tree's UART at {:#x}", uart.start());
        // SAFETY: the DT names this PL011 as the console; MMU is off.
        unsafe { console::init(uart.start()) };
    }

    layout::check_ram(&info.memory, carveout)?;
    let command = cmdline::parse(&info.bootargs)?;
    #[cfg(feature = "oracle")]
    oracle::set_check_every(command.oracle_every);
    if let Some(name) = &command.mutant {
        mutant::select(name).map_err(BootError::BadCommandLine)?;
    }
    let header_range = MemRange::from_base_size(command.host_image, image::HEADER_SIZE as u64);
    if !header_range.is_some_and(|h| info.memory.iter().any(|m| m.contains_range(&h)) && !h.overlaps(&carveout)) {
        return Err(BootError::BadHostImage {
            address: command.host_image,
            reason: "the address is not in RAM outside the carve-out".into(),
        }
        .into());
    }
    // SAFETY: the header lies in RAM (checked above) and the MMU is off.
    let header_bytes: [u8; image::HEADER_SIZE] = unsafe { mm::read_phys(command.host_image) };
    let header = image::ImageHeader::parse(command.host_image, &header_bytes)?;

    // The part of the hypervisor's memory that grows with the machine, as
    // high in RAM as it fits (layout::place_boot_sized), clear of what the
    // loader and firmware put in RAM.
    let blob_range = MemRange::from_base_size(dtb, blob.len() as u64).ok_or(BootError::NoDeviceTree)?;
    let mut loaded = alloc::vec![("the device tree", blob_range)];
    if let Some(footprint) = header.footprint(command.host_image) {
        loaded.push(("the host image", footprint));
    }
    if let Some(initrd) = info.initrd {
        loaded.push(("the initrd", initrd));
    }
    // Firmware's own memory (`/memreserve/`, `/reserved-memory`), often at
    // the top of RAM on real boards.
    loaded.extend(info.reserved.iter().map(|r| ("reserved memory", *r)));
    if info.cpus.len() > MAX_CPUS {
        return Err(BootError::TooManyCpus { found: info.cpus.len(), max: MAX_CPUS }.into());
    }
    let costs = layout::Costs {
        meta_per_page: core::mem::size_of::<rampart_ownership::PageMeta>() as u64 + ORACLE_BYTES_PER_PAGE,
        stack_slot: arch::STACK_STRIDE as u64,
        per_cpu: PER_CPU_SLOT + vcpu::HOST_CONTEXT_BYTES.next_multiple_of(64),
    };
    let sized = layout::place_boot_sized(&info.memory, info.cpus.len(), costs, carveout, &loaded)?;
    let hyp_ranges = [carveout, sized.whole];

    let features = Features::probe();
    rampart_platform::cpu::check_supported(&features.id).map_err(|e| Fatal::Other(alloc::format!("{e}")))?;
    let geometry = Stage2Geometry::for_pa_range(features.pa_range_field);
    let ipa_bits = geometry.ipa_bits;
    // DMA masters no SMMU Rampart owns guards, and the SMMUs themselves,
    // leave the host's tree and stage 2 (platform's devices.rs).
    // The boot tree read once into a model: the DMA plan reads it here and
    // the host's tree is made from it below.
    let boot_model = hostdt::model(blob)?;
    let dma = devices::plan_of(&boot_model, command.unguarded_dma)?;
    let mut plan = layout::plan(
        &info,
        &hyp_ranges,
        MAX_CPUS,
        1 << ipa_bits,
        command.host_image,
        &header,
        blob_range,
        command.guest_pool_mib << 20,
    )?;
    plan.withhold_devices(&dma.withheld_ranges());
    // The first page of each redistributor's RD_base frame (GICR_CTLR,
    // GICR_PROPBASER, GICR_PENDBASER) is trapped and emulated: the host
    // gets no LPIs, so the GIC never reads or writes LPI tables it aims
    // (gicr_guard.rs).
    // SAFETY: each address is GICR_TYPER of a frame inside a redistributor
    // region of the device tree (page-aligned, not RAM); the MMU is off,
    // and reading GICR_TYPER has no side effect.
    let lpi_pages = rampart_platform::gicr::rd_pages(&gic_redistributors, |a| unsafe { arch::guest::gicr_read32(a) });
    plan.withhold_devices(&lpi_pages);

    if let Some(smmu) = &smmu_dt {
        plan.host_devices = rampart_platform::range::subtract_all(&plan.host_devices, &[smmu.regs]);
    }

    // The host's device tree replaces the boot one, in host RAM.
    let control_pages = carveout.end() - rampart_abi::boot::control::CHANNELS * PAGE_SIZE;
    let vmm_nodes = hostdt::VmmNodes {
        control: MemRange::new(control_pages, carveout.end())
            .map(|r| (r, rampart_abi::boot::control::CHANNELS as u32)),
        guest_pool: plan.guest_pool,
    };
    // One pass over one model of the tree: Rampart's nodes and the host's
    // command line; the withheld DMA masters leave it; PCI windows the
    // host's stage 2 cannot reach leave it, so the host puts no BAR there;
    // the VMM learns a realm's shared bit from the control node (issue 12).
    let (host_dt, dropped_windows) =
        hostdt::host_tree_of(boot_model, &hyp_ranges, &command.host_bootargs, vmm_nodes, &dma, ipa_bits)?;
    let host_dt_range = MemRange::from_base_size(dtb, host_dt.len() as u64).ok_or(BootError::NoDeviceTree)?;
    if !plan.host_ram.iter().any(|r| r.contains_range(&host_dt_range)) {
        return Err(BootError::Overlap {
            what: "host device tree",
            range: host_dt_range,
            with: "the edge of host RAM",
            other: carveout,
        }
        .into());
    }
    for (with, other) in [("the host image", Some(plan.host_image)), ("the initrd", info.initrd)] {
        if let Some(other) = other
            && other.overlaps(&host_dt_range)
        {
            return Err(BootError::Overlap { what: "host device tree", range: host_dt_range, with, other }.into());
        }
    }
    // The boot tree may hold what only Rampart may see (its command line
    // options, later a device secret): clear all of it before writing the
    // host's tree over it.
    // SAFETY: the boot device tree lies in host RAM (its range was checked
    // against the carve-out and the host image) and is not read again;
    // the new tree's range was checked above.
    unsafe {
        mm::zero(blob_range);
        mm::write_phys(dtb, &host_dt);
    }

    // The last pages of the carve-out are the control pages: mapped nowhere.
    let control_size = rampart_abi::boot::control::CHANNELS * PAGE_SIZE;
    let control = MemRange::new(carveout.end() - control_size, carveout.end()).ok_or(BootError::NoMemory)?;
    control::init(control);
    let pool = MemRange::new(heap.end(), control.start()).ok_or(BootError::RamTooSmall { carveout, ram: None, total: 0 })?;
    // SAFETY: the pool is the rest of the carve-out, after the heap.
    unsafe { mm::init_pool(pool) };

    let ram: Vec<MemRange> = plan.ram.iter().filter_map(|r| r.shrink_to_alignment(PAGE_SIZE)).collect();
    let table = ownership_table(&ram, &hyp_ranges, sized.table)?;
    let meta_bytes = table.len() as u64 * core::mem::size_of::<rampart_ownership::PageMeta>() as u64;
    // The oracle's abstract state: the rest of the table's share.
    #[cfg(feature = "oracle")]
    if let Some(rest) = MemRange::new(sized.table.start() + meta_bytes, sized.table.end()) {
        // SAFETY: the table's range holds `meta_bytes` of ownership entries
        // and then this oracle's byte per page, used by nothing else.
        oracle::init(unsafe { mm::oracle_bytes(rest) }, &ram, hyp_ranges, ipa_bits);
    }
    // The per-CPU part: every CPU's `PerCpu`, then its host save area.
    let cpus = info.cpus.len();
    let contexts = MemRange::new(sized.per_cpu.start() + cpus as u64 * PER_CPU_SLOT, sized.per_cpu.end());
    // SAFETY: the two arrays split the boot-sized per-CPU range, which is
    // theirs alone (the split point is 64-byte aligned, and `boot_array`
    // checks each fits); the MMU is off.
    let placed = contexts.is_some_and(|contexts| unsafe {
        cpu::init_cpus(sized.per_cpu, cpus) && vcpu::init_host_contexts(contexts, cpus)
    });
    if !placed {
        return Err(Fatal::Other(alloc::format!("the per-CPU state of {cpus} CPUs does not fit in {}", sized.per_cpu)));
    }
    // Secondary CPUs' stack slots, in index order.
    for cpu in 1..info.cpus.len() {
        let base = sized.stacks.start() + (cpu as u64 - 1) * arch::STACK_STRIDE as u64;
        // SAFETY: slot `cpu` of the stacks range is this CPU's alone (the
        // range holds one slot per secondary CPU); the MMU is off and no
        // secondary CPU runs yet.
        if base + arch::STACK_STRIDE as u64 > sized.stacks.end() || !unsafe { arch::set_stack_slot(cpu, base) } {
            return Err(Fatal::Other(alloc::format!("no stack slot for CPU {cpu} in {}", sized.stacks)));
        }
    }
    // Nothing the loader left in a cache may later hide (or overwrite) what
    // was just written uncached.
    arch::cache::scrub_then_release(MemRange::new(sized.whole.start(), sized.stacks.start()).unwrap_or(sized.table));

    let mut el2 = build_el2_tables(carveout, &sized, info.cpus.len(), info.uart.map_or(EARLY_UART, |u| u.start()))?;
    for range in &gic_redistributors {
        mm::identity_map(&mut el2, *range, mm::el2::DEVICE).map_err(|e| map_error("GIC redistributors", *range, e))?;
    }
    host_timer::init(gic_redistributors);
    let trapped_rd_pages = lpi_pages.len();
    gicr_guard::init(lpi_pages);
    if let Some(smmu) = &smmu_dt {
        mm::identity_map(&mut el2, smmu.regs, mm::el2::DEVICE).map_err(|e| map_error("the SMMU", smmu.regs, e))?;
    }
    let stage2_level = geometry.root_level;
    let host_ram: Vec<MemRange> =
        plan.host_ram.iter().filter_map(|r| r.shrink_to_alignment(PAGE_SIZE)).collect();
    let stage2 = build_host_stage2(stage2_level, &host_ram, &plan.host_devices)?;
    let smmu_owned = match &smmu_dt {
        Some(smmu) => {
            // The mirror's outputs are RAM addresses: the SMMU's output size
            // must reach the top of RAM.
            let ram_end = ram.iter().map(|r| r.end()).max().unwrap_or(0);
            let pa_bits = 64 - ram_end.saturating_sub(1).leading_zeros();
            Some(smmu::init(smmu, &host_ram, pa_bits).map_err(Fatal::Other)?)
        }
        None => None,
    };
    let config = El2Config::new(
        features,
        el2.root_address().0 as u64,
        stage2.root_address().0 as u64,
        geometry,
    );
    cpu::init_s2fwb();
    host::init_reset(host::ResetPlan {
        ram: ram.clone(),
        carveout,
        boot_sized: sized.whole,
        hyp_data: MemRange::new(symbol(&raw const __rodata_end), control.start()).ok_or(BootError::NoMemory)?,
    });
    memory::install(memory::HostMemory {
        table,
        stage2: mm::Shared(stage2),
        el2: mm::Shared(el2),
        ram,
        carveout: hyp_ranges,
    });

    // CPU numbering: the boot CPU is 0, then the others in DT order.
    let boot_mpidr = arch::mpidr_el1() & 0xff_00ff_ffff;
    if !info.cpus.contains(&boot_mpidr) {
        return Err(Fatal::Other(alloc::format!("the boot CPU (MPIDR {boot_mpidr:#x}) is not in /cpus")));
    }
    let order = core::iter::once(boot_mpidr).chain(info.cpus.iter().copied().filter(|&m| m != boot_mpidr));
    for (state, mpidr) in cpu::cpus().iter().zip(order) {
        state.mpidr.store(mpidr, Ordering::Relaxed);
    }
    cpu::this().set_power(Power::On);

    let mut dt_secret = info.device_secret;
    let security = security::init(
        dt_secret,
        &info.trusted_keys,
        mm::own_image(image_start, symbol(&raw const __rodata_end)),
    );
    zeroize::Zeroize::zeroize(&mut dt_secret);
    let firmware = probe_firmware();
    FIRMWARE.call_once(|| firmware);

    let ram_total = rampart_platform::range::total_size(&plan.ram);
    let hyp_total = carveout.size() + sized.whole.size();
    let bp = layout::basis_points(hyp_total, ram_total);
    println!("{} CPUs, RAM {} MiB in {} bank(s)", info.cpus.len(), ram_total >> 20, plan.ram.len());
    println!(
        "carve-out {carveout} + {}: {} KiB fixed at build time + {} KiB sized at boot (ownership table {} KiB, per-CPU state {} KiB, stacks of {} secondary CPUs {} KiB) = {} KiB, {}.{:02}% of RAM",
        sized.whole,
        carveout.size() >> 10,
        sized.whole.size() >> 10,
        sized.table.size() >> 10,
        sized.per_cpu.size() >> 10,
        info.cpus.len().saturating_sub(1),
        sized.stacks.size() >> 10,
        hyp_total >> 10,
        bp / 100,
        bp % 100
    );
    let (used, left) = mm::pool_usage();
    let meta_pages = meta_bytes.div_ceil(PAGE_SIZE);
    let table_bytes = used * PAGE_SIZE;
    let cost = layout::basis_points((meta_pages * PAGE_SIZE + table_bytes) * 10, ram_total);
    println!(
        "host stage 2: {} RAM and {} device ranges, {ipa_bits}-bit IPA from level {stage2_level} ({}-bit PA); {left} pool pages left",
        host_ram.len(),
        plan.host_devices.len(),
        rampart_platform::cpu::pa_bits(features.cpu.pa_range)
    );
    #[cfg(feature = "bench-el2-pmu")]
    println!("benchmark build (bench-el2-pmu): the host's PMU counts at EL2; never use this image outside benchmarks");
    let c = features.cpu;
    println!(
        "CPU: MIDR {:#x}, PMUv3 {}{}, HPMN0 {}, TRF {}, TRBE {}, SPE {}, AMU {}, FGT {}, HCX {}, MOPS {}",
        arch::midr_el1(),
        if c.pmuv3 { "yes" } else { "no" },
        match (c.pmuv3p5, c.pmuv3p1) {
            (true, _) => " (p5: EL2 cycles and events hidden)",
            (false, true) => " (p1: EL2 events hidden)",
            _ => "",
        },
        yes(c.hpmn0),
        yes(c.trace_filter),
        yes(c.trace_buffer),
        yes(c.spe_ver != 0),
        yes(c.amu),
        yes(c.fgt),
        yes(c.hcx),
        yes(c.mops)
    );
    println!(
        "ownership metadata {} KiB + page tables {} KiB = {}.{:03}% of RAM",
        (meta_pages * PAGE_SIZE) >> 10,
        table_bytes >> 10,
        cost / 1000,
        cost % 1000
    );
    log_dma_masters(&dma, command.unguarded_dma);
    println!(
        "DMA: {trapped_rd_pages} GIC redistributor(s) trapped: LPIs off for the host, so no LPI table is read or written where it points"
    );
    let withheld_mmio = dma.withheld_ranges();
    for dev in &plan.unmappable_devices {
        // A withheld master's window was named above.
        if withheld_mmio.iter().any(|w| w.contains_range(dev)) {
            continue;
        }
        let dropped = if dropped_windows.contains(dev) { ", and its PCI window left the host's device tree" } else { "" };
        println!("device range {dev} lies beyond the {ipa_bits}-bit IPA space; not mapped for the host{dropped}");
    }
    println!(
        "firmware: SMCCC 1.1 {}, SYSTEM_RESET2 {}, MEM_PROTECT {}",
        if firmware.smccc_1_1 { "yes" } else { "no" },
        if firmware.system_reset2 { "yes" } else { "no" },
        if firmware.mem_protect { "enabled" } else { "not offered: resets Rampart does not see are not wiped" }
    );
    if let Some(owned) = &smmu_owned {
        let streams: Vec<alloc::string::String> =
            owned.streams.iter().map(|&(start, end)| alloc::format!("{start:#x}-{:#x}", end - 1)).collect();
        println!(
            "SMMUv3 at {}: owned; stream IDs {} through a {}-entry stream table (every other stream aborts); host streams translate through a stage-1 mirror of the host stage 2 ({} table pages; S1P {}, S2P {}, {}-bit OAS)",
            owned.regs,
            streams.join(", "),
            owned.table_entries,
            owned.mirror_pages,
            yes(owned.features.s1p),
            yes(owned.features.s2p),
            owned.features.oas_bits
        );
    }
    #[cfg(feature = "smmu-mirror-check")]
    println!("test build (smmu-mirror-check): the SMMU mirror is compared with the host stage 2 after every change");
    if let Some(pool) = plan.guest_pool {
        println!("guest pool {pool} ({} MiB) for a user-space VMM; control pages {control}", pool.size() >> 20);
    }
    println!("hypervisor measurement {}", security.hypervisor);
    println!(
        "SHA-256 at EL2: {}",
        match security.sha256 {
            arch::sha256::Engine::Instructions => "the CPU's instructions (FEAT_SHA256), known-answer test passed",
            arch::sha256::Engine::PortableNoFeature => "portable code (no FEAT_SHA256)",
            arch::sha256::Engine::PortableForced => "portable code (benchmark build, portable-sha256)",
            arch::sha256::Engine::PortableFailedTest =>
                "portable code: the CPU's SHA-256 instructions FAILED the known-answer test",
        }
    );
    println!(
        "{} trusted signing key(s){}; device secret: {}",
        security.trusted_keys,
        if security.rejected_keys > 0 { " (some invalid keys ignored)" } else { "" },
        match security.secret {
            Some(security::SecretSource::DeviceTree) => "from the device tree",
            Some(security::SecretSource::Build) => "from the build configuration (development only)",
            None => "none: attestation and sealing are unavailable",
        }
    );
    if let Some(key) = security.attestation_key {
        println!("attestation key {}", rampart_attest::Measurement(key));
    }

    BOOT.call_once(|| Boot { config, cpu_count: info.cpus.len(), host_ram, stage2_level, ipa_bits });
    let boot = BOOT.get().ok_or(BootError::NoMemory)?;
    cpu::init_this_cpu(&boot.config);
    Ok((command.host_image, dtb))
}

/// One boot-log line per DMA master: what it is, where, and what Rampart
/// did with it; loud when `rampart.unguarded-dma=on` gave any back.
fn log_dma_masters(dma: &devices::DevicePlan, unguarded_dma: bool) {
    use core::fmt::Write as _;
    let (mut withheld, mut guarded, mut given_back) = (0, 0, 0);
    for d in &dma.decisions {
        let m = &d.master;
        let mut mmio = alloc::string::String::new();
        for (i, r) in m.mmio.iter().enumerate() {
            let _ = write!(mmio, "{}{r}", if i == 0 { "" } else { " " });
        }
        match &d.fate {
            devices::Fate::Withheld => {
                withheld += 1;
                println!("DMA: withheld {} {} {mmio}: {}", m.class.name(), m.path, m.class.why_withheld());
            }
            devices::Fate::Guarded { smmu } => {
                guarded += 1;
                println!("DMA: {} {} stays with the host behind the SMMU {smmu}", m.class.name(), m.path);
            }
            devices::Fate::GivenBack => {
                given_back += 1;
                println!(
                    "DMA: WARNING: {} {} {mmio} given to the host UNGUARDED: its DMA reaches all memory, protected VMs and Rampart included",
                    m.class.name(),
                    m.path
                );
            }
        }
    }
    println!("DMA: {withheld} master(s) withheld, {guarded} behind an SMMU Rampart owns, {given_back} given back unguarded");
    if unguarded_dma {
        println!(
            "DMA: WARNING: rampart.unguarded-dma=on: FOR DEVELOPMENT ONLY; the host's devices can read and write protected VMs and Rampart"
        );
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn map_error(what: &str, range: MemRange, e: aarch64_paging::MapError) -> Fatal {
    Fatal::Other(alloc::format!("cannot map {what} {range}: {e}"))
}

/// Builds the EL2 stage-1 identity map: W^X over the image, stacks with
/// guard pages, the heap and pool, the boot-sized part (ownership table,
/// per-CPU state, the secondary CPUs' stacks with guard pages) and the
/// console.
fn build_el2_tables(carveout: MemRange, sized: &layout::BootSized, cpus: usize, uart: u64) -> Result<mm::Table<El2>, Fatal> {
    let text = MemRange::new(carveout.start(), symbol(&raw const __text_end));
    let rodata = MemRange::new(symbol(&raw const __text_end), symbol(&raw const __rodata_end));
    let data = MemRange::new(symbol(&raw const __rodata_end), symbol(&raw const __stacks_start));
    let rest = MemRange::new(symbol(&raw const __image_end), carveout.end());
    let uart = MemRange::from_base_size(uart, PAGE_SIZE);
    let state = MemRange::new(sized.table.start(), sized.per_cpu.end());
    let mut table = mm::new_el2_table();
    let pieces = [
        ("text", text, mm::el2::TEXT),
        ("rodata", rodata, mm::el2::RODATA),
        ("data", data, mm::el2::DATA),
        ("heap and pool", rest, mm::el2::DATA),
        ("ownership table and per-CPU state", state, mm::el2::DATA),
        ("console", uart, mm::el2::DEVICE),
    ];
    for (what, range, attributes) in pieces {
        let range = range.ok_or_else(|| Fatal::Other(alloc::format!("the {what} section is malformed")))?;
        mm::identity_map(&mut table, range, attributes).map_err(|e| map_error(what, range, e))?;
    }
    // Each CPU's stack and emergency stack; the guard page below each stays
    // unmapped, so an overflow faults instead of running into what lies below.
    for cpu in 0..cpus {
        for (start, end) in [arch::stack_range(cpu), arch::emergency_stack_range(cpu)] {
            let range = MemRange::new(start, end).filter(|r| !r.is_empty()).ok_or_else(|| Fatal::Other(alloc::format!("no stack for CPU {cpu}")))?;
            mm::identity_map(&mut table, range, mm::el2::DATA).map_err(|e| map_error("stack", range, e))?;
        }
    }
    Ok(table)
}

/// Builds the host's stage 2 (VMID 0): its RAM and its devices, identity
/// mapped with the largest blocks that fit.
fn build_host_stage2(level: usize, ram: &[MemRange], devices: &[MemRange]) -> Result<mm::Table<Stage2>, Fatal> {
    let mut table = mm::new_stage2_table(level);
    for range in ram {
        mm::identity_map(&mut table, *range, mm::host_s2::RAM).map_err(|e| map_error("host RAM", *range, e))?;
    }
    for range in devices {
        mm::identity_map(&mut table, *range, mm::host_s2::DEVICE)
            .map_err(|e| map_error("host device", *range, e))?;
    }
    Ok(table)
}

/// Lays the ownership table over the span of RAM in `range` (the
/// boot-sized part's table) and records the hypervisor's ranges and any
/// holes between RAM banks as the hypervisor's.
fn ownership_table(
    ram: &[MemRange],
    hyp: &[MemRange],
    range: MemRange,
) -> Result<rampart_ownership::Table<'static>, Fatal> {
    let span = match (ram.first(), ram.last()) {
        (Some(first), Some(last)) => MemRange::new(first.start(), last.end()),
        _ => None,
    }
    .ok_or(BootError::NoMemory)?;
    let entries = span.size() / PAGE_SIZE;
    let bytes = entries * core::mem::size_of::<rampart_ownership::PageMeta>() as u64;
    if bytes > range.size() || !range.is_aligned(PAGE_SIZE) {
        return Err(Fatal::Other(alloc::format!(
            "the ownership table of {} MiB of RAM ({} KiB) does not fit in {range}",
            span.size() >> 20,
            bytes >> 10
        )));
    }
    // SAFETY: the range is the boot-sized part's table, this table's alone;
    // `reset` below writes every entry before any is read.
    let entries_mem = unsafe { mm::page_meta_table(range) };
    let entries_mem = entries_mem.get_mut(..entries as usize).ok_or(BootError::NoMemory)?;
    let mut table = rampart_ownership::Table::new(entries_mem, rampart_ownership::Pfn(span.start() / PAGE_SIZE))
        .map_err(|e| Fatal::Other(alloc::format!("ownership table over {span}: {e}")))?;
    table.reset();
    let holes = rampart_platform::range::subtract_all(&[span], ram);
    for hyp_range in hyp.iter().copied().chain(holes) {
        table
            .host_donate_hyp(rampart_ownership::PhysAddr(hyp_range.start()), hyp_range.size() / PAGE_SIZE)
            .map_err(|e| Fatal::Other(alloc::format!("marking {hyp_range} as the hypervisor's: {e}")))?;
    }
    Ok(table)
}

/// Asks firmware which SMCCC version it speaks (PSCI_FEATURES first, as
/// the SMCCC requires).
fn probe_firmware() -> Firmware {
    let mut args = [0u64; 17];
    args[0] = u64::from(rampart_abi::smccc::SMCCC_VERSION);
    let has_version = (arch::smc(psci::FEATURES, &args)[0] as i64) >= 0;
    let version = if has_version { arch::smc(rampart_abi::smccc::SMCCC_VERSION, &[0; 17])[0] as i64 } else { -1 };
    let offered = |function: u32| {
        let mut args = [0u64; 17];
        args[0] = u64::from(function);
        (arch::smc(psci::FEATURES, &args)[0] as i64) >= 0
    };
    let system_reset2 = offered(psci::SYSTEM_RESET2_64);
    // MEM_PROTECT: firmware overwrites RAM at the next boot after any reset
    // that did not go through Rampart's wipe (a watchdog, a reset button).
    // Rampart turns it on and never lets the host turn it off.
    let mem_protect = offered(psci::MEM_PROTECT) && {
        let mut args = [0u64; 17];
        args[0] = 1;
        // The previous state (0 or 1), or a negative error code.
        (arch::smc(psci::MEM_PROTECT, &args)[0] as i64) >= 0
    };
    Firmware { smccc_1_1: version >= i64::from(rampart_abi::smccc::SMCCC_VERSION_1_1), system_reset2, mem_protect }
}

/// A secondary CPU (or one resuming from power-down) enters Rust here, at
/// EL2 with the MMU off, after CPU_ON or CPU_SUSPEND from the host.
pub extern "C" fn secondary_main(index: u64) -> ! {
    let Some(boot) = BOOT.get() else { power_off() };
    cpu::init_this_cpu(&boot.config);
    #[cfg(feature = "mutants")]
    if mutant::active(mutant::Mutant::StackOverflow) {
        overflow_for_test(index);
    }
    let me = cpu::this();
    me.set_power(Power::On);
    let entry = me.host_entry.load(Ordering::Acquire);
    let context = me.host_context.load(Ordering::Acquire);
    let _ = index;
    arch::jump_to_host(entry, context)
}

/// Test only (`rampart.mutant=stack-overflow` in a build with the `mutants`
/// feature): recurses with 512-byte frames until the stack runs into its
/// guard page.
#[cfg(feature = "mutants")]
fn overflow_for_test(index: u64) {
    #[inline(never)]
    fn deeper(depth: u64) -> u64 {
        let mut frame = [0u8; 512];
        frame[(depth % 512) as usize] = depth as u8;
        core::hint::black_box(&mut frame);
        if depth == u64::MAX {
            return 0;
        }
        deeper(depth + 1) + u64::from(frame[1])
    }
    println!("test build (mutants): CPU {index} overflows its EL2 stack now");
    core::hint::black_box(deeper(0));
}

/// Powers the machine off through firmware; parks if that fails. Every
/// page the host does not own and the hypervisor's secrets are wiped first
/// (`host::wipe_and_reset`). Entered below EL2 (a loader that dropped to
/// EL1), nothing was set up to wipe: power off from there.
pub fn power_off() -> ! {
    if arch::current_el() != 2 {
        arch::power_off_below_el2()
    }
    host::wipe_and_reset(psci::SYSTEM_OFF, 0, 0)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if arch::current_el() != 2 {
        println!("panic below EL2: {info}");
        power_off()
    }
    println!("panic on CPU {}: {info}", cpu::current());
    power_off()
}
