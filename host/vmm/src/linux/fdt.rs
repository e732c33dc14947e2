//! The guest's device tree, generated with `vm-fdt`: the virtual platform
//! of [`super`] (memory, CPUs with PSCI, GICv3, timer, PL011, virtio-mmio
//! transports, `/chosen`).

use anyhow::{Result, anyhow};
use vm_fdt::FdtWriter;

use super::layout;

/// How PSCI is called: the `/psci` node's `method`. A per-VM choice:
/// `hvc` for Rampart's guests today, `smc` for realm guests (issue 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `HVC #0`.
    Hvc,
    /// `SMC #0` (realm guests, issue 12).
    #[allow(dead_code, reason = "the realm guests of issue 12 choose it")]
    Smc,
}

impl Conduit {
    fn method(self) -> &'static str {
        match self {
            Conduit::Hvc => "hvc",
            Conduit::Smc => "smc",
        }
    }
}

/// Everything the device tree describes that varies per VM.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// Guest RAM at [`layout::RAM_BASE`], bytes.
    pub memory_size: u64,
    /// vCPUs (affinity 0.0.0.*i*).
    pub vcpus: u32,
    /// The kernel command line.
    pub cmdline: String,
    /// The initrd's guest-physical range, if any.
    pub initrd: Option<(u64, u64)>,
    /// The PSCI conduit.
    pub conduit: Conduit,
    /// virtio-mmio transports (window *i* at `VIRTIO_BASE + 0x200 * i`).
    pub virtio_devices: u32,
    /// `/chosen/kaslr-seed`.
    pub kaslr_seed: u64,
    /// `/chosen/rng-seed`.
    pub rng_seed: [u8; 64],
}

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;

/// GIC interrupt specifier types and flags (`arm,gic-v3` binding).
const SPI: u32 = 0;
const PPI: u32 = 1;
#[allow(dead_code, reason = "the encoding, for a future edge-triggered device")]
const EDGE_RISING: u32 = 1;
const LEVEL_HIGH: u32 = 4;

fn e(err: vm_fdt::Error) -> anyhow::Error {
    anyhow!("building the guest's device tree: {err}")
}

/// The flattened device tree blob.
///
/// # Errors
///
/// `vm-fdt` refusing a value (a NUL in the command line).
pub fn build(i: &Inputs) -> Result<Vec<u8>> {
    build_inner(i).map_err(e)
}

fn build_inner(i: &Inputs) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &i.cmdline)?;
    f.property_string("stdout-path", &format!("/pl011@{:x}", layout::UART_BASE))?;
    if let Some((start, end)) = i.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    // Zero seeds are left out: a measured VM's device tree is public, so
    // its seeds come from the guest's TRNG calls instead (issue 12).
    if i.kaslr_seed != 0 {
        f.property_u64("kaslr-seed", i.kaslr_seed)?;
    }
    if i.rng_seed != [0; 64] {
        f.property("rng-seed", &i.rng_seed)?;
    }
    f.end_node(chosen)?;

    let memory = f.begin_node(&format!("memory@{:x}", layout::RAM_BASE))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[layout::RAM_BASE, i.memory_size])?;
    f.end_node(memory)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    for cpu in 0..i.vcpus {
        let n = f.begin_node(&format!("cpu@{cpu}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_string("compatible", "arm,arm-v8")?;
        f.property_string("enable-method", "psci")?;
        f.property_u32("reg", cpu)?;
        f.end_node(n)?;
    }
    f.end_node(cpus)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    f.property_string("method", i.conduit.method())?;
    f.end_node(psci)?;

    let gic = f.begin_node(&format!("intc@{:x}", layout::GICD_BASE))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_null("interrupt-controller")?;
    f.property_array_u64(
        "reg",
        &[
            layout::GICD_BASE,
            layout::GICD_SIZE,
            layout::GICR_BASE,
            layout::GICR_STRIDE * u64::from(i.vcpus),
        ],
    )?;
    f.property_u32("#redistributor-regions", 1)?;
    f.property_phandle(GIC_PHANDLE)?;
    f.end_node(gic)?;

    let timer = f.begin_node("timer")?;
    f.property_string_list(
        "compatible",
        vec!["arm,armv8-timer".into(), "arm,armv7-timer".into()],
    )?;
    // Secure physical, non-secure physical, virtual (PPI 11 = INTID 27),
    // hypervisor.
    f.property_array_u32(
        "interrupts",
        &[
            PPI, 13, LEVEL_HIGH, PPI, 14, LEVEL_HIGH, PPI, 11, LEVEL_HIGH, PPI, 10, LEVEL_HIGH,
        ],
    )?;
    f.property_null("always-on")?;
    f.end_node(timer)?;

    let clock = f.begin_node("apb-pclk")?;
    f.property_string("compatible", "fixed-clock")?;
    f.property_u32("#clock-cells", 0)?;
    f.property_u32("clock-frequency", 24_000_000)?;
    f.property_string("clock-output-names", "clk24mhz")?;
    f.property_phandle(CLOCK_PHANDLE)?;
    f.end_node(clock)?;

    let uart = f.begin_node(&format!("pl011@{:x}", layout::UART_BASE))?;
    f.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    f.property_array_u64("reg", &[layout::UART_BASE, layout::UART_SIZE])?;
    f.property_array_u32("interrupts", &[SPI, layout::UART_SPI, LEVEL_HIGH])?;
    f.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    f.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    f.end_node(uart)?;

    for n in 0..i.virtio_devices {
        let base = layout::virtio_base(n);
        let v = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, layout::VIRTIO_SIZE])?;
        // Level-high, as QEMU's virt machine declares them: the line
        // follows InterruptStatus (raised with a bit, dropped by the
        // driver's InterruptACK) and is resampled on the guest's EOI.
        f.property_array_u32("interrupts", &[SPI, layout::virtio_spi(n), LEVEL_HIGH])?;
        f.property_null("dma-coherent")?;
        f.end_node(v)?;
    }

    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn inputs() -> Inputs {
        Inputs {
            memory_size: 256 << 20,
            vcpus: 2,
            cmdline: "console=ttyAMA0 earlycon".into(),
            initrd: Some((0x8f00_0000, 0x8f12_3456)),
            conduit: Conduit::Hvc,
            virtio_devices: 2,
            kaslr_seed: 0x1122_3344_5566_7788,
            rng_seed: [7; 64],
        }
    }

    /// The value of property `name` in node `path` (a minimal FDT reader:
    /// the structure block, names from the strings block).
    pub(crate) fn prop<'a>(dtb: &'a [u8], path: &str, name: &str) -> Option<&'a [u8]> {
        let be = |at: usize| u32::from_be_bytes(dtb[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(be(0), 0xd00d_feed, "FDT magic");
        let (structs, strings) = (be(8), be(12));
        let mut at = structs;
        let mut stack: Vec<String> = Vec::new();
        loop {
            match be(at) {
                1 => {
                    let end = dtb[at + 4..].iter().position(|&b| b == 0).unwrap();
                    let n = std::str::from_utf8(&dtb[at + 4..at + 4 + end]).unwrap();
                    stack.push(n.to_string());
                    at = (at + 4 + end + 1).next_multiple_of(4);
                }
                2 => {
                    stack.pop();
                    at += 4;
                }
                3 => {
                    let (len, off) = (be(at + 4), be(at + 8));
                    let s = &dtb[strings + off..];
                    let pname =
                        std::str::from_utf8(&s[..s.iter().position(|&b| b == 0).unwrap()]).unwrap();
                    let here = stack[1..].join("/");
                    if here == path.trim_start_matches('/') && pname == name {
                        return Some(&dtb[at + 12..at + 12 + len]);
                    }
                    at = (at + 12 + len).next_multiple_of(4);
                }
                4 => at += 4,
                9 => return None,
                t => panic!("bad FDT token {t}"),
            }
        }
    }

    fn cells(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn describes_the_platform() {
        let dtb = build(&inputs()).unwrap();
        assert_eq!(
            prop(&dtb, "/chosen", "bootargs").unwrap(),
            b"console=ttyAMA0 earlycon\0"
        );
        assert_eq!(
            prop(&dtb, "/chosen", "stdout-path").unwrap(),
            b"/pl011@9000000\0"
        );
        assert_eq!(
            cells(prop(&dtb, "/chosen", "linux,initrd-start").unwrap()),
            [0, 0x8f00_0000]
        );
        assert_eq!(
            cells(prop(&dtb, "/chosen", "linux,initrd-end").unwrap()),
            [0, 0x8f12_3456]
        );
        assert_eq!(prop(&dtb, "/chosen", "rng-seed").unwrap(), [7; 64]);
        assert_eq!(
            cells(prop(&dtb, "/memory@80000000", "reg").unwrap()),
            [0, 0x8000_0000, 0, 256 << 20]
        );
        assert_eq!(cells(prop(&dtb, "/cpus/cpu@1", "reg").unwrap()), [1]);
        assert!(prop(&dtb, "/cpus/cpu@2", "reg").is_none());
        assert_eq!(
            prop(&dtb, "/cpus/cpu@0", "enable-method").unwrap(),
            b"psci\0"
        );
        assert_eq!(prop(&dtb, "/psci", "method").unwrap(), b"hvc\0");
        assert_eq!(
            cells(prop(&dtb, "/intc@8000000", "reg").unwrap()),
            [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0x4_0000]
        );
        assert_eq!(
            cells(prop(&dtb, "/timer", "interrupts").unwrap())[6..9],
            [1, 11, 4],
            "the virtual timer is PPI 11 (INTID 27), level"
        );
        assert_eq!(
            cells(prop(&dtb, "/pl011@9000000", "interrupts").unwrap()),
            [0, 1, 4]
        );
        assert_eq!(
            cells(prop(&dtb, "/virtio_mmio@a000200", "interrupts").unwrap()),
            [0, 17, 4],
            "virtio-mmio lines are level-high (resampled on EOI)"
        );
        assert!(prop(&dtb, "/virtio_mmio@a000200", "dma-coherent").is_some());
        assert!(prop(&dtb, "/virtio_mmio@a000400", "reg").is_none());
    }

    #[test]
    fn the_conduit_and_the_initrd_are_per_vm() {
        let mut i = inputs();
        i.conduit = Conduit::Smc;
        i.initrd = None;
        let dtb = build(&i).unwrap();
        assert_eq!(prop(&dtb, "/psci", "method").unwrap(), b"smc\0");
        assert!(prop(&dtb, "/chosen", "linux,initrd-start").is_none());
        i.cmdline = "a\0b".into();
        assert!(build(&i).is_err());
    }
}
