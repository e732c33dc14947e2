//! Deciding who owns which physical memory at boot.

use alloc::vec::Vec;

use crate::dt::DeviceTreeInfo;
use crate::image::ImageHeader;
use crate::{BootError, MemRange, range};

/// The boot-time split of physical memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// All RAM.
    pub ram: Vec<MemRange>,
    /// The hypervisor's own memory (the fixed carve-out, then the part
    /// sized at boot: see [`place_boot_sized`]); absent from the host's
    /// stage 2.
    pub carveout: Vec<MemRange>,
    /// RAM the host owns: all RAM minus the carve-out.
    pub host_ram: Vec<MemRange>,
    /// MMIO the host may use, clipped to what stage 2 can map.
    pub host_devices: Vec<MemRange>,
    /// Device ranges dropped because they lie beyond the IPA space.
    pub unmappable_devices: Vec<MemRange>,
    /// The host kernel's footprint.
    pub host_image: MemRange,
    /// The guest pool for a user-space VMM: host RAM the host's device tree
    /// marks `no-map`, at the top of the highest RAM bank.
    pub guest_pool: Option<MemRange>,
}

/// Splits memory between the hypervisor and the host and checks that the
/// pieces the host boots from lie in host memory.
///
/// `ipa_limit` is one past the highest address stage 2 can map.
///
/// # Errors
///
/// [`BootError::TooManyCpus`], [`BootError::RamTooSmall`] when the
/// carve-out's first range is not inside one RAM bank, [`BootError::BadHostImage`] when the
/// host image is not entirely in host RAM, [`BootError::Overlap`] when the
/// initrd or the device tree touches the carve-out or the host image.
#[allow(clippy::too_many_arguments, reason = "each argument is a separate boot input; a struct would only rename them")]
pub fn plan(
    info: &DeviceTreeInfo,
    carveout: &[MemRange],
    max_cpus: usize,
    ipa_limit: u64,
    host_image_address: u64,
    host_image: &ImageHeader,
    device_tree: MemRange,
    guest_pool_bytes: u64,
) -> Result<Layout, BootError> {
    if info.cpus.len() > max_cpus {
        return Err(BootError::TooManyCpus {
            found: info.cpus.len(),
            max: max_cpus,
        });
    }
    let first = carveout.first().copied().ok_or(BootError::NoMemory)?;
    check_ram(&info.memory, first)?;
    let host_ram = range::subtract_all(&info.memory, carveout);

    let image = host_image
        .footprint(host_image_address)
        .ok_or(BootError::BadHostImage {
            address: host_image_address,
            reason: alloc::format!("image_size {:#x} wraps around", host_image.image_size),
        })?;
    if !host_ram.iter().any(|r| r.contains_range(&image)) {
        return Err(BootError::BadHostImage {
            address: host_image_address,
            reason: alloc::format!("its footprint {image} is not entirely in host RAM"),
        });
    }
    let avoid = || carveout.iter().map(|c| ("the carve-out", *c)).chain([("the host image", image)]);
    if let Some(initrd) = info.initrd {
        for (what, other) in avoid() {
            if initrd.overlaps(&other) {
                return Err(BootError::Overlap {
                    what: "initrd",
                    range: initrd,
                    with: what,
                    other,
                });
            }
        }
    }
    for (what, other) in avoid() {
        if device_tree.overlaps(&other) {
            return Err(BootError::Overlap {
                what: "device tree",
                range: device_tree,
                with: what,
                other,
            });
        }
    }

    let guest_pool = if guest_pool_bytes == 0 {
        None
    } else {
        let top = host_ram.last().copied().ok_or(BootError::NoMemory)?;
        // 2 MiB-aligned at both ends (the top of host RAM need not be: the
        // boot-sized part above it is page-aligned), so the pool keeps its
        // block mappings; what lies between stays the host's.
        let end = range::align_down(top.end(), crate::BLOCK_2M);
        let start = end.checked_sub(guest_pool_bytes).map(|s| range::align_down(s, crate::BLOCK_2M));
        let pool = start.and_then(|s| MemRange::new(s, end)).filter(|p| top.contains_range(p) && !p.is_empty());
        let pool = pool.ok_or(BootError::BadCommandLine(alloc::format!(
            "a guest pool of {} MiB does not fit in the top RAM bank {top}",
            guest_pool_bytes >> 20
        )))?;
        let mut clashes = alloc::vec![("the host image", image), ("the device tree", device_tree)];
        if let Some(initrd) = info.initrd {
            clashes.push(("the initrd", initrd));
        }
        for (with, other) in clashes {
            if pool.overlaps(&other) {
                return Err(BootError::Overlap { what: "guest pool", range: pool, with, other });
            }
        }
        Some(pool)
    };

    let mut host_devices = Vec::new();
    let mut unmappable_devices = Vec::new();
    for dev in &info.devices {
        if dev.end() <= ipa_limit {
            host_devices.push(*dev);
        } else {
            unmappable_devices.push(*dev);
        }
    }
    Ok(Layout {
        ram: info.memory.clone(),
        carveout: carveout.to_vec(),
        host_ram,
        host_devices,
        unmappable_devices,
        host_image: image,
        guest_pool,
    })
}

impl Layout {
    /// Takes `withheld` (the MMIO of the DMA masters Rampart keeps from the
    /// host, `devices.rs`) out of the host's devices, whole pages at a
    /// time: a page shared with a withheld range is withheld too. Returns
    /// what was actually removed.
    pub fn withhold_devices(&mut self, withheld: &[MemRange]) -> Vec<MemRange> {
        let pages: Vec<MemRange> = withheld
            .iter()
            .filter_map(|w| {
                let end = range::align_up(w.end(), crate::PAGE_SIZE).unwrap_or(u64::MAX);
                MemRange::new(range::align_down(w.start(), crate::PAGE_SIZE), end)
            })
            .collect();
        let before = self.host_devices.clone();
        self.host_devices = range::subtract_all(&self.host_devices, &pages);
        range::subtract_all(&before, &self.host_devices)
    }
}

/// What one CPU and one page of RAM cost the hypervisor, for
/// [`boot_sized`]: the sizes are the hypervisor's, passed in so that this
/// crate stays free of its types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Costs {
    /// Bytes of ownership metadata per 4 KiB page of the RAM span.
    pub meta_per_page: u64,
    /// Bytes of one secondary CPU's stack slot (stacks and guard pages);
    /// a multiple of the page size.
    pub stack_slot: u64,
    /// Bytes of per-CPU state kept for every CPU.
    pub per_cpu: u64,
}

/// The part of the hypervisor's memory sized at boot from the machine: the
/// carve-out's second range, at the top of the highest RAM bank. Each part
/// is page-aligned, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSized {
    /// All of it.
    pub whole: MemRange,
    /// The ownership table over the span of RAM.
    pub table: MemRange,
    /// Per-CPU state, one entry per CPU.
    pub per_cpu: MemRange,
    /// The secondary CPUs' stack slots (the boot CPU's is in the image).
    pub stacks: MemRange,
}

/// Bytes of the boot-sized part for `ram` and `cpus` CPUs, as (table,
/// per-CPU state, stacks), each rounded up to whole pages; `None` on
/// overflow.
#[must_use]
pub fn boot_sized_bytes(ram: &[MemRange], cpus: usize, costs: Costs) -> Option<(u64, u64, u64)> {
    let page = crate::PAGE_SIZE;
    let low = ram.iter().map(MemRange::start).min()?;
    let span = ram.iter().map(MemRange::end).max()?.checked_sub(low)?;
    let table = (span / page).checked_mul(costs.meta_per_page)?;
    let cpus = cpus as u64;
    let per_cpu = cpus.checked_mul(costs.per_cpu)?;
    let stacks = cpus.saturating_sub(1).checked_mul(costs.stack_slot)?;
    Some((range::align_up(table, page)?, range::align_up(per_cpu, page)?, range::align_up(stacks, page)?))
}

/// Places the boot-sized part of the hypervisor's memory (see
/// [`BootSized`]) as high in RAM as it fits: at the top of the highest RAM
/// bank unless something is already there, else just below it, so that
/// the host keeps the low memory its image, initrd and device tree are
/// loaded into, and never below the fixed carve-out. `carveout` is the
/// fixed carve-out; `avoid` lists what is
/// already in RAM and must stay (the host image, the initrd, the device
/// tree, firmware's `/memreserve/` and `/reserved-memory` ranges).
///
/// # Errors
///
/// [`BootError::NoRoomForHypervisor`] when no RAM bank has room for it
/// clear of the carve-out and everything in `avoid`, or it would leave the
/// host less than [`MIN_HOST_RAM`].
pub fn place_boot_sized(
    ram: &[MemRange],
    cpus: usize,
    costs: Costs,
    carveout: MemRange,
    avoid: &[(&'static str, MemRange)],
) -> Result<BootSized, BootError> {
    let total = range::total_size(ram);
    let refuse = |needed: u64, reason: alloc::string::String| BootError::NoRoomForHypervisor {
        cpus,
        ram: total,
        needed,
        reason,
    };
    let (table, per_cpu, stacks) =
        boot_sized_bytes(ram, cpus, costs).ok_or_else(|| refuse(u64::MAX, "its size overflows".into()))?;
    let needed = table + per_cpu + stacks;
    let host = total.saturating_sub(carveout.size()).saturating_sub(needed);
    if host < MIN_HOST_RAM {
        return Err(refuse(
            needed,
            alloc::format!("it would leave the host {} MiB, less than {} MiB", host >> 20, MIN_HOST_RAM >> 20),
        ));
    }
    // Never below the carve-out either: the start of RAM is where loaders
    // put their own stubs.
    let low = ram.iter().find(|b| b.contains_range(&carveout)).and_then(|b| MemRange::new(b.start(), carveout.end()));
    let taken: Vec<(&'static str, MemRange)> =
        core::iter::once(("the carve-out", low.unwrap_or(carveout))).chain(avoid.iter().copied()).collect();
    let mut banks: Vec<MemRange> = ram.to_vec();
    banks.sort_by_key(|b| core::cmp::Reverse(b.end()));
    let mut blocked = None;
    let mut found = None;
    'banks: for bank in &banks {
        let mut end = bank.end();
        // Each step moves `end` below something in the way: at most one
        // step per range in `taken`, plus the last.
        for _ in 0..=taken.len() {
            let Some(start) = end.checked_sub(needed).map(|s| range::align_down(s, crate::PAGE_SIZE)) else { continue 'banks };
            let Some(window) = MemRange::new(start, end).filter(|w| bank.contains_range(w)) else { continue 'banks };
            match taken.iter().filter(|(_, t)| t.overlaps(&window)).min_by_key(|(_, t)| t.start()) {
                None => {
                    found = Some(window);
                    break 'banks;
                }
                Some(&(with, other)) => {
                    blocked.get_or_insert((with, other));
                    end = range::align_down(other.start(), crate::PAGE_SIZE);
                }
            }
        }
    }
    let whole = found.ok_or_else(|| {
        let why = match blocked {
            Some((with, other)) => alloc::format!("no RAM bank has room for it below {with} {other}"),
            None => "no RAM bank is large enough".into(),
        };
        refuse(needed, why)
    })?;
    let at = |from: u64, size: u64| MemRange::from_base_size(from, size).ok_or(BootError::NoMemory);
    let table_range = at(whole.start(), table)?;
    let per_cpu_range = at(table_range.end(), per_cpu)?;
    let stacks_range = at(per_cpu_range.end(), stacks)?;
    Ok(BootSized { whole, table: table_range, per_cpu: per_cpu_range, stacks: stacks_range })
}

/// The least RAM Rampart leaves the host: enough for a small Linux.
pub const MIN_HOST_RAM: u64 = 32 << 20;

/// Checks that the carve-out lies in one RAM bank and leaves the host at
/// least [`MIN_HOST_RAM`].
///
/// # Errors
///
/// [`BootError::RamTooSmall`] otherwise.
pub fn check_ram(memory: &[MemRange], carveout: MemRange) -> Result<(), BootError> {
    let bank = memory.iter().find(|b| b.contains(carveout.start())).copied();
    let total = range::total_size(memory);
    if !memory.iter().any(|b| b.contains_range(&carveout)) || total - carveout.size().min(total) < MIN_HOST_RAM {
        return Err(BootError::RamTooSmall { carveout, ram: bank, total });
    }
    Ok(())
}

/// `part` as a percentage of `whole`, in hundredths of a percent (so
/// 0.25% is 25), without floating point.
#[must_use]
pub fn basis_points(part: u64, whole: u64) -> u64 {
    if whole == 0 {
        return 0;
    }
    let scaled = u128::from(part) * 10_000 / u128::from(whole);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    fn r(start: u64, end: u64) -> MemRange {
        MemRange::new(start, end).unwrap()
    }

    fn info(mem: MemRange, cpus: usize) -> DeviceTreeInfo {
        DeviceTreeInfo {
            memory: vec![mem],
            cpus: (0..cpus as u64).collect(),
            uart: Some(r(0x900_0000, 0x900_1000)),
            devices: vec![
                r(0x800_0000, 0x801_0000),
                r(0x900_0000, 0x900_1000),
                r(0x80_0000_0000, 0x100_0000_0000),
            ],
            bootargs: String::new(),
            initrd: Some(r(0x4800_0000, 0x4810_0000)),
            reserved: vec![],
            total_size: 0x1000,
            device_secret: None,
            trusted_keys: vec![],
        }
    }

    const CARVEOUT: MemRange = match MemRange::new(0x4020_0000, 0x4120_0000) {
        Some(r) => r,
        None => panic!(),
    };
    const HEADER: ImageHeader = ImageHeader {
        text_offset: 0,
        image_size: 0x200_0000,
        flags: 0xa,
    };
    const DT: MemRange = match MemRange::new(0x4820_0000, 0x4821_0000) {
        Some(r) => r,
        None => panic!(),
    };

    #[test]
    fn carves_the_hypervisor_out_of_ram() {
        let i = info(r(0x4000_0000, 0x6000_0000), 4);
        let l = plan(&i, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0).unwrap();
        assert_eq!(
            l.host_ram,
            vec![r(0x4000_0000, 0x4020_0000), r(0x4120_0000, 0x6000_0000)]
        );
        assert_eq!(l.host_devices.len(), 2);
        assert_eq!(
            l.unmappable_devices,
            vec![r(0x80_0000_0000, 0x100_0000_0000)]
        );
        assert_eq!(l.host_image, r(0x4200_0000, 0x4400_0000));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let small = info(r(0x4000_0000, 0x4100_0000), 1);
        assert!(matches!(
            plan(&small, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0),
            Err(BootError::RamTooSmall { .. })
        ));
        // The carve-out fits, but leaves the host less than its minimum.
        let tight = [r(0x4000_0000, 0x4280_0000)];
        assert!(matches!(check_ram(&tight, CARVEOUT), Err(BootError::RamTooSmall { total, .. }) if total == 40 << 20));
        check_ram(&[r(0x4000_0000, 0x4400_0000)], CARVEOUT).unwrap();
        let many = info(r(0x4000_0000, 0x6000_0000), 9);
        assert_eq!(
            plan(&many, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0),
            Err(BootError::TooManyCpus { found: 9, max: 8 })
        );
        let ok = info(r(0x4000_0000, 0x6000_0000), 1);
        // Host image inside the carve-out.
        assert!(matches!(
            plan(&ok, &[CARVEOUT], 8, 1 << 39, 0x4100_0000, &HEADER, DT, 0),
            Err(BootError::BadHostImage { .. })
        ));
        // Host image running off the end of RAM.
        assert!(matches!(
            plan(&ok, &[CARVEOUT], 8, 1 << 39, 0x5f00_0000, &HEADER, DT, 0),
            Err(BootError::BadHostImage { .. })
        ));
        // Device tree inside the host image.
        assert!(matches!(
            plan(&ok, &[CARVEOUT],
                8,
                1 << 39,
                0x4200_0000,
                &HEADER,
                r(0x4300_0000, 0x4301_0000),
                0
            ),
            Err(BootError::Overlap {
                what: "device tree",
                ..
            })
        ));
        // Initrd inside the carve-out.
        let mut bad_initrd = ok.clone();
        bad_initrd.initrd = Some(r(0x4100_0000, 0x4130_0000));
        assert!(matches!(
            plan(&bad_initrd, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0),
            Err(BootError::Overlap { what: "initrd", .. })
        ));
    }

    #[test]
    fn places_the_guest_pool_at_the_top_of_ram() {
        let i = info(r(0x4000_0000, 0x8000_0000), 2);
        let l = plan(&i, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 64 << 20).unwrap();
        assert_eq!(l.guest_pool, Some(r(0x7c00_0000, 0x8000_0000)));
        // Too big to fit above everything else: it would cover the initrd.
        assert!(matches!(
            plan(&i, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 960 << 20),
            Err(BootError::Overlap { what: "guest pool", .. })
        ));
        assert!(matches!(
            plan(&i, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 4 << 30),
            Err(BootError::BadCommandLine(_))
        ));
    }

    const COSTS: Costs = Costs { meta_per_page: 4, stack_slot: 48 << 10, per_cpu: 1536 };

    #[test]
    fn sizes_the_boot_sized_part_from_the_machine() {
        // 64 GiB from 0x4000_0000: a 64 MiB table; 64 CPUs: 63 stack slots.
        let ram = [r(0x4000_0000, 0x10_4000_0000)];
        assert_eq!(boot_sized_bytes(&ram, 64, COSTS), Some((64 << 20, 96 << 10, 63 * (48 << 10))));
        // The table covers the span, holes included; partial pages round up.
        let banks = [r(0x4000_0000, 0x4010_0000), r(0x8000_0000, 0x8000_1000)];
        // 0x4000_1000 bytes = 262145 pages = 1048580 bytes, rounded up.
        assert_eq!(boot_sized_bytes(&banks, 1, COSTS), Some(((1 << 20) + 4096, 4096, 0)));
        assert_eq!(boot_sized_bytes(&[], 1, COSTS), None);
        assert_eq!(boot_sized_bytes(&ram, usize::MAX, COSTS), None);
        // The overhead that grows with RAM stays at 0.1%: 4 bytes per 4 KiB.
        let (table, _, _) = boot_sized_bytes(&[r(0x4000_0000, 0x40_4000_0000)], 1, COSTS).unwrap();
        assert_eq!(basis_points(table, 256 << 30), 9);
    }

    #[test]
    fn places_the_boot_sized_part_at_the_top_of_ram() {
        let ram = [r(0x4000_0000, 0x10_4000_0000)];
        let avoid = [("the initrd", r(0x4800_0000, 0x4810_0000))];
        let b = place_boot_sized(&ram, 8, COSTS, CARVEOUT, &avoid).unwrap();
        assert_eq!(b.whole.end(), 0x10_4000_0000);
        assert_eq!(b.table, r(b.whole.start(), b.whole.start() + (64 << 20)));
        assert_eq!(b.per_cpu, r(b.table.end(), b.table.end() + 4096 * 3));
        assert_eq!(b.stacks.start(), b.per_cpu.end());
        assert_eq!(b.stacks.size(), 7 * (48 << 10));
        assert_eq!(b.stacks.end(), b.whole.end());
        assert!(b.whole.is_aligned(crate::PAGE_SIZE));
        // With it, the guest pool moves below it and the host keeps the rest.
        let mut i = info(ram[0], 8);
        i.initrd = None;
        let l = plan(&i, &[CARVEOUT, b.whole], 8, 1 << 40, 0x4200_0000, &HEADER, DT, 64 << 20).unwrap();
        let pool_end = b.whole.start() & !(crate::BLOCK_2M - 1);
        assert_eq!(l.guest_pool, Some(r(pool_end - (64 << 20), pool_end)));
        assert!(l.host_ram.iter().all(|h| !h.overlaps(&b.whole) && !h.overlaps(&CARVEOUT)));
        assert_eq!(range::total_size(&l.host_ram), (64 << 30) - CARVEOUT.size() - b.whole.size());
        // Highest bank, not the last listed.
        let banks = [r(0x8000_0000, 0xc000_0000), r(0x4000_0000, 0x6000_0000)];
        let b = place_boot_sized(&banks, 2, COSTS, CARVEOUT, &[]).unwrap();
        assert_eq!(b.whole.end(), 0xc000_0000);
    }

    #[test]
    fn refuses_a_machine_the_boot_sized_part_cannot_serve() {
        // 512 CPUs need 24 MiB of stacks: 64 MiB of RAM cannot leave the
        // host its 32 MiB beside them and the carve-out.
        let small = [r(0x4000_0000, 0x4400_0000)];
        let e = place_boot_sized(&small, 512, COSTS, CARVEOUT, &[]).unwrap_err();
        assert!(matches!(e, BootError::NoRoomForHypervisor { cpus: 512, .. }), "{e:?}");
        let text = alloc::format!("{e}");
        assert!(text.starts_with("no room for the hypervisor's per-machine memory: 512 CPUs and 64 MiB of RAM need"), "{text}");
        assert!(!text.contains('\n'));
        // The same 64 MiB serve one CPU.
        place_boot_sized(&small, 1, COSTS, CARVEOUT, &[]).unwrap();
        // Over the carve-out or something already loaded.
        let tiny = [r(0x4000_0000, 0x4140_0000)];
        assert!(matches!(
            place_boot_sized(&tiny, 128, COSTS, CARVEOUT, &[]),
            Err(BootError::NoRoomForHypervisor { .. })
        ));
        // Bigger than any bank.
        let ram = [r(0x4000_0000, 0x8000_0000)];
        assert!(place_boot_sized(&ram, 200_000, COSTS, CARVEOUT, &[]).is_err());
        // Everything above the carve-out is taken.
        let e = place_boot_sized(&ram, 4, COSTS, CARVEOUT, &[("the initrd", r(0x4120_0000, 0x8000_0000))]).unwrap_err();
        assert!(alloc::format!("{e}").contains("no RAM bank has room for it below the initrd"), "{e}");
    }

    #[test]
    fn steps_below_what_firmware_and_the_loader_placed_high() {
        let ram = [r(0x4000_0000, 0x8000_0000)];
        // Firmware's reservation at the top, the initrd below it: the part
        // goes just below both, page-aligned.
        let avoid = [
            ("reserved memory", r(0x7e00_0000, 0x8000_0000)),
            ("the initrd", r(0x7d00_0000, 0x7e00_0000)),
        ];
        let b = place_boot_sized(&ram, 4, COSTS, CARVEOUT, &avoid).unwrap();
        assert_eq!(b.whole.end(), 0x7d00_0000);
        assert!(avoid.iter().all(|(_, a)| !a.overlaps(&b.whole)));
        // A high bank full of reservations: the next bank down.
        let banks = [r(0x4000_0000, 0x8000_0000), r(0x1_0000_0000, 0x1_0001_0000)];
        let b = place_boot_sized(&banks, 2, COSTS, CARVEOUT, &[]).unwrap();
        assert_eq!(b.whole.end(), 0x8000_0000);
    }

    #[test]
    fn withheld_devices_leave_the_host_stage2() {
        let i = info(r(0x4000_0000, 0x6000_0000), 2);
        let mut l = plan(&i, &[CARVEOUT], 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0).unwrap();
        // A frame inside the first device range, a sub-page range of the
        // UART (the whole page goes) and a range nobody maps.
        let removed = l.withhold_devices(&[r(0x800_4000, 0x800_6000), r(0x900_0800, 0x900_0900), r(0xa00_0000, 0xa00_4000)]);
        assert_eq!(removed, vec![r(0x800_4000, 0x800_6000), r(0x900_0000, 0x900_1000)]);
        assert_eq!(l.host_devices, vec![r(0x800_0000, 0x800_4000), r(0x800_6000, 0x801_0000)]);
    }

    #[test]
    fn basis_points_are_exact() {
        assert_eq!(basis_points(16 << 20, 512 << 20), 312);
        assert_eq!(basis_points(1, 0), 0);
        assert_eq!(basis_points(u64::MAX, 1), u64::MAX);
    }
}
