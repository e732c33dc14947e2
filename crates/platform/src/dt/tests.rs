use super::*;
use alloc::vec;

const QEMU_VIRT: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-2cpu.dtb");

fn r(start: u64, end: u64) -> MemRange {
    MemRange::new(start, end).unwrap()
}

#[test]
fn reads_qemu_virt() {
    let info = parse(QEMU_VIRT).unwrap();
    assert_eq!(info.memory, vec![r(0x4000_0000, 0x6000_0000)]);
    assert_eq!(info.cpus, vec![0, 1]);
    assert_eq!(info.uart, Some(r(0x900_0000, 0x900_1000)));
    assert_eq!(info.bootargs, "rampart.host=0x42000000 -- console=ttyAMA0");
    assert_eq!(info.initrd, None);
    assert!(info.reserved.is_empty());
    for dev in [
        r(0x900_0000, 0x900_1000),          // PL011
        r(0x800_0000, 0x801_0000),          // GIC distributor
        r(0x80a_0000, 0x900_0000),          // redistributors
        r(0xa00_0000, 0xa00_1000),          // virtio-mmio (page-rounded)
        r(0x40_1000_0000, 0x40_2000_0000),  // PCIe ECAM
        r(0x1000_0000, 0x3eff_0000),        // PCIe 32-bit MMIO window
        r(0x80_0000_0000, 0x100_0000_0000), // PCIe 64-bit MMIO window
    ] {
        assert!(
            info.devices.iter().any(|d| d.contains_range(&dev)),
            "{dev} missing from {:?}",
            info.devices
        );
    }
    for dev in &info.devices {
        assert!(dev.is_aligned(crate::PAGE_SIZE), "{dev} not page aligned");
        assert!(
            !info.memory.iter().any(|m| m.overlaps(dev)),
            "{dev} overlaps RAM"
        );
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = alloc::format!("{}/tests/fixtures/{name}.dtb", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

extern crate std;

#[test]
fn malformed_fixtures_give_their_own_errors() {
    type Check = fn(&BootError) -> bool;
    let cases: [(&str, Check); 6] = [
        ("bad-no-memory", |e| *e == BootError::NoMemory),
        ("bad-no-psci", |e| *e == BootError::MissingNode("/psci")),
        (
            "bad-psci-hvc",
            |e| matches!(e, BootError::UnsupportedPsci(m) if m.contains("hvc")),
        ),
        ("bad-no-cpus", |e| *e == BootError::NoCpus),
        ("bad-memory-reg", |e| {
            matches!(
                e,
                BootError::BadProperty {
                    property: "reg",
                    ..
                }
            )
        }),
        (
            "bad-duplicate-cpu",
            |e| matches!(e, BootError::BadProperty { reason, .. } if reason.contains("twice")),
        ),
    ];
    for (name, check) in cases {
        let err = parse(&fixture(name)).expect_err(name);
        assert!(check(&err), "{name}: unexpected error {err:?}");
        // Every error renders to a message that says something.
        assert!(alloc::format!("{err}").len() > 10);
    }
}

#[test]
fn truncated_and_corrupt_blobs_are_refused() {
    for len in [0, 4, 40, QEMU_VIRT.len() / 2, QEMU_VIRT.len() - 1] {
        let err = parse(&QEMU_VIRT[..len]).expect_err("truncated");
        assert!(
            matches!(err, BootError::MalformedDeviceTree(_)),
            "{len}: {err:?}"
        );
    }
    let mut bad_magic = QEMU_VIRT.to_vec();
    bad_magic[0] ^= 0xff;
    assert!(matches!(
        parse(&bad_magic),
        Err(BootError::MalformedDeviceTree(_))
    ));
}

#[test]
fn every_single_byte_corruption_is_handled_without_panic() {
    // Flip each byte of the header and structure block in turn: parse must
    // return (Ok or Err), never panic.
    let mut blob = QEMU_VIRT.to_vec();
    for i in (0..blob.len()).step_by(7) {
        blob[i] ^= 0x5a;
        let _ = parse(&blob);
        blob[i] ^= 0x5a;
    }
}

#[test]
fn finds_the_gic_redistributors() {
    assert_eq!(
        gic_redistributors(QEMU_VIRT).unwrap(),
        vec![r(0x80a_0000, 0x80a_0000 + 0xf6_0000)]
    );
    // Found wherever the GIC node is, whatever else the tree lacks.
    assert_eq!(
        gic_redistributors(&fixture("bad-no-psci")).unwrap().len(),
        1
    );
    let mut bad_magic = QEMU_VIRT.to_vec();
    bad_magic[0] ^= 0xff;
    assert!(gic_redistributors(&bad_magic).is_err());
}

const QEMU_VIRT_SMMU: &[u8] = include_bytes!("../../tests/fixtures/qemu-virt-smmuv3-2cpu.dtb");

#[test]
fn finds_qemu_virt_smmu_and_its_pci_streams() {
    let smmu = smmu_v3(QEMU_VIRT_SMMU).unwrap().unwrap();
    assert_eq!(smmu.regs, r(0x905_0000, 0x907_0000));
    assert_eq!(smmu.streams, vec![(0, 0x1_0000)]);
    assert_eq!(smmu.stream_end(), 0x1_0000);
    assert!(smmu.coherent);
    // Without iommu=smmuv3 there is none.
    assert_eq!(smmu_v3(QEMU_VIRT).unwrap(), None);
}

#[test]
fn refuses_a_malformed_smmu_node() {
    let dts = |smmu_extra: &str, pcie: &str| {
        alloc::format!(
            "/dts-v1/; / {{ #address-cells = <2>; #size-cells = <2>; \
             smmu@9050000 {{ compatible = \"arm,smmu-v3\"; reg = <0 0x9050000 0 0x20000>; \
             #iommu-cells = <1>; phandle = <0x8005>; {smmu_extra} }}; \
             pcie@10000000 {{ {pcie} }}; }};"
        )
    };
    let build = |source: &str| {
        let dir =
            std::env::temp_dir().join(alloc::format!("rampart-smmu-dt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dts_path = dir.join(alloc::format!(
            "{:x}.dts",
            source.len() * 31 + source.bytes().map(usize::from).sum::<usize>()
        ));
        std::fs::write(&dts_path, source).unwrap();
        let out = std::process::Command::new("dtc")
            .args(["-q", "-I", "dts", "-O", "dtb"])
            .arg(&dts_path)
            .output();
        out.ok().filter(|o| o.status.success()).map(|o| o.stdout)
    };
    let Some(good) = build(&dts("", "iommu-map = <0 0x8005 0 0x100>;")) else {
        std::eprintln!("dtc not installed: skipping");
        return;
    };
    assert_eq!(smmu_v3(&good).unwrap().unwrap().streams, vec![(0, 0x100)]);
    // Another IOMMU's entries are not this SMMU's streams.
    let other = build(&dts("", "iommu-map = <0 0x9999 0 0x100>;")).unwrap();
    assert!(smmu_v3(&other).unwrap().unwrap().streams.is_empty());
    for (from, to, pcie) in [
        ("", "", "iommu-map = <0 0x8005 0>;"),
        ("", "", "iommu-map = <0 0x8005 0 0>;"),
        ("", "", "iommu-map = <0 0x8005 0xffffffff 2>;"),
        ("#iommu-cells = <1>;", "#iommu-cells = <2>;", ""),
        ("0x20000>", "0x10000>", ""),
        (
            "}; pcie",
            "}; smmu@9070000 { compatible = \"arm,smmu-v3\"; reg = <0 0x9070000 0 0x20000>; #iommu-cells = <1>; }; pcie",
            "",
        ),
    ] {
        let blob = build(&dts("", pcie).replacen(from, to, 1)).unwrap();
        assert!(smmu_v3(&blob).is_err(), "{to} {pcie}");
    }
}
