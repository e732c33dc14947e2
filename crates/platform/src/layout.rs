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
    /// The hypervisor's own memory; absent from the host's stage 2.
    pub carveout: MemRange,
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
/// carve-out is not inside one RAM bank, [`BootError::BadHostImage`] when the
/// host image is not entirely in host RAM, [`BootError::Overlap`] when the
/// initrd or the device tree touches the carve-out or the host image.
#[allow(clippy::too_many_arguments, reason = "each argument is a separate boot input; a struct would only rename them")]
pub fn plan(
    info: &DeviceTreeInfo,
    carveout: MemRange,
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
    check_ram(&info.memory, carveout)?;
    let host_ram = range::subtract_all(&info.memory, &[carveout]);

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
    if let Some(initrd) = info.initrd {
        for (what, other) in [("the carve-out", carveout), ("the host image", image)] {
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
    for (what, other) in [("the carve-out", carveout), ("the host image", image)] {
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
        let start = top.end().checked_sub(guest_pool_bytes).map(|s| range::align_down(s, crate::BLOCK_2M));
        let pool = start.and_then(|s| MemRange::new(s, top.end())).filter(|p| top.contains_range(p));
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
        carveout,
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
        let l = plan(&i, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0).unwrap();
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
            plan(&small, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0),
            Err(BootError::RamTooSmall { .. })
        ));
        // The carve-out fits, but leaves the host less than its minimum.
        let tight = [r(0x4000_0000, 0x4280_0000)];
        assert!(matches!(check_ram(&tight, CARVEOUT), Err(BootError::RamTooSmall { total, .. }) if total == 40 << 20));
        check_ram(&[r(0x4000_0000, 0x4400_0000)], CARVEOUT).unwrap();
        let many = info(r(0x4000_0000, 0x6000_0000), 9);
        assert_eq!(
            plan(&many, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0),
            Err(BootError::TooManyCpus { found: 9, max: 8 })
        );
        let ok = info(r(0x4000_0000, 0x6000_0000), 1);
        // Host image inside the carve-out.
        assert!(matches!(
            plan(&ok, CARVEOUT, 8, 1 << 39, 0x4100_0000, &HEADER, DT, 0),
            Err(BootError::BadHostImage { .. })
        ));
        // Host image running off the end of RAM.
        assert!(matches!(
            plan(&ok, CARVEOUT, 8, 1 << 39, 0x5f00_0000, &HEADER, DT, 0),
            Err(BootError::BadHostImage { .. })
        ));
        // Device tree inside the host image.
        assert!(matches!(
            plan(
                &ok,
                CARVEOUT,
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
            plan(&bad_initrd, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0),
            Err(BootError::Overlap { what: "initrd", .. })
        ));
    }

    #[test]
    fn places_the_guest_pool_at_the_top_of_ram() {
        let i = info(r(0x4000_0000, 0x8000_0000), 2);
        let l = plan(&i, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 64 << 20).unwrap();
        assert_eq!(l.guest_pool, Some(r(0x7c00_0000, 0x8000_0000)));
        // Too big to fit above everything else: it would cover the initrd.
        assert!(matches!(
            plan(&i, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 960 << 20),
            Err(BootError::Overlap { what: "guest pool", .. })
        ));
        assert!(matches!(
            plan(&i, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 4 << 30),
            Err(BootError::BadCommandLine(_))
        ));
    }

    #[test]
    fn withheld_devices_leave_the_host_stage2() {
        let i = info(r(0x4000_0000, 0x6000_0000), 2);
        let mut l = plan(&i, CARVEOUT, 8, 1 << 39, 0x4200_0000, &HEADER, DT, 0).unwrap();
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
