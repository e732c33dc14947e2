//! A Linux guest's boot inputs, independent of KVM (tested on the build
//! machine): the arm64 `Image` header, where the kernel, initrd and device
//! tree go in guest RAM, the device tree itself, and the PL011 console.
//!
//! The virtual platform is `rampart-vmm run --kernel`'s
//! (`host/vmm/src/linux/mod.rs`), so the same kernel command line works
//! under both VMMs:
//!
//! | what | guest-physical | interrupt |
//! |---|---|---|
//! | GICv3 distributor (KVM's in-kernel vGIC) | `0x0800_0000` (64 KiB) | |
//! | GICv3 redistributors | `0x080A_0000`, 128 KiB per vCPU | |
//! | PL011 UART (`ttyAMA0`, `earlycon`) | `0x0900_0000` (4 KiB) | SPI 1, level (never raised) |
//! | RAM | `0x8000_0000` | |
//! | arch timer (in KVM) | | PPI 13, 14, 11 (virtual: INTID 27), 10 |
//!
//! PSCI (`hvc`) is KVM's own (`KVM_ARM_VCPU_PSCI_0_2`). No virtio devices:
//! the peer measures the boot to `/init`, which needs none.

use vm_fdt::FdtWriter;

/// Guest RAM's first byte.
pub const RAM_BASE: u64 = 0x8000_0000;
/// The GICv3 distributor.
pub const GICD_BASE: u64 = 0x0800_0000;
/// Its size.
pub const GICD_SIZE: u64 = 0x1_0000;
/// The first redistributor (RD_base + SGI_base frames).
pub const GICR_BASE: u64 = 0x080a_0000;
/// One vCPU's redistributor.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// The PL011.
pub const UART_BASE: u64 = 0x0900_0000;
/// Its window.
pub const UART_SIZE: u64 = 0x1000;
/// Its SPI (INTID 33).
pub const UART_SPI: u32 = 1;
/// Most vCPUs: the redistributors (128 KiB each from `GICR_BASE`) must end
/// below the UART.
pub const MAX_VCPUS: u32 = 8;
/// The device tree's slot: the last 2 MiB of RAM (`booting.rst`: at most
/// 2 MiB, 8-byte aligned).
pub const DTB_SLOT: u64 = 2 << 20;

const IMAGE_MAGIC: u32 = 0x644d_5241;
const IMAGE_HEADER: usize = 64;

/// What an arm64 `Image` header says
/// (`Documentation/arch/arm64/booting.rst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Load offset from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (at least the file).
    pub image_size: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Reads and checks the header of `image` (the whole file).
///
/// # Errors
///
/// Too short, no `ARM\x64` magic (a compressed or ELF kernel), big-endian,
/// a text offset not 4 KiB-aligned below 2 MiB, an `image_size` below the
/// file's size.
pub fn parse_image(image: &[u8]) -> Result<ImageHeader, String> {
    if image.len() < IMAGE_HEADER {
        return Err(format!(
            "{} bytes: too short for an arm64 Image header",
            image.len()
        ));
    }
    let magic = u32::from_le_bytes([image[0x38], image[0x39], image[0x3a], image[0x3b]]);
    if magic != IMAGE_MAGIC {
        return Err(format!(
            "not an arm64 Image (magic {magic:#010x}; unpack a compressed kernel first)"
        ));
    }
    let (mut text_offset, mut image_size) = (le64(image, 0x08), le64(image, 0x10));
    if image_size == 0 {
        // Before Linux 3.17: a fixed text offset, size unknown.
        text_offset = 0x8_0000;
        image_size = image.len() as u64;
    }
    if le64(image, 0x18) & 1 != 0 {
        return Err("a big-endian kernel".into());
    }
    if !text_offset.is_multiple_of(4096) || text_offset >= 2 << 20 {
        return Err(format!(
            "text_offset {text_offset:#x} is not 4 KiB-aligned below 2 MiB"
        ));
    }
    if image_size < image.len() as u64 {
        return Err(format!(
            "image_size {image_size:#x} is smaller than the file ({} bytes)",
            image.len()
        ));
    }
    Ok(ImageHeader {
        text_offset,
        image_size,
    })
}

/// Where the boot inputs go (guest-physical).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The kernel's load address, vCPU 0's first instruction.
    pub kernel: u64,
    /// The device tree (`x0`).
    pub dtb: u64,
    /// The initrd's `[start, end)`.
    pub initrd: Option<(u64, u64)>,
}

/// Places the kernel, an initrd of `initrd_len` bytes and the device tree
/// in `mem` bytes of RAM, as `rampart-vmm` does: the kernel at RAM +
/// `text_offset`, the device tree in the last 2 MiB, the initrd
/// page-aligned just below it.
///
/// # Errors
///
/// They do not fit (saying how much RAM they need).
pub fn place(mem: u64, h: &ImageHeader, initrd_len: Option<u64>) -> Result<Placement, String> {
    // Saturating: the header's sizes and the initrd's length are the
    // files', not trusted to be small.
    let kernel_end = h
        .text_offset
        .saturating_add(h.image_size)
        .checked_next_multiple_of(2 << 20)
        .unwrap_or(u64::MAX);
    let need = |extra: u64| {
        kernel_end
            .saturating_add(extra)
            .saturating_add(DTB_SLOT)
            .div_ceil(1 << 20)
    };
    if mem < kernel_end.saturating_add(DTB_SLOT) {
        return Err(format!("the kernel needs at least {} MiB of RAM", need(0)));
    }
    let dtb = RAM_BASE + mem - DTB_SLOT;
    let initrd = match initrd_len {
        None => None,
        Some(len) => match dtb.checked_sub(len).map(|s| s & !0xfff) {
            Some(s) if len <= mem && s >= RAM_BASE + kernel_end => Some((s, s + len)),
            _ => {
                return Err(format!(
                    "the kernel and the initrd ({len} bytes) need at least {} MiB of RAM",
                    need(len.checked_next_multiple_of(4096).unwrap_or(u64::MAX))
                ));
            }
        },
    };
    Ok(Placement {
        kernel: RAM_BASE + h.text_offset,
        dtb,
        initrd,
    })
}

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
const SPI: u32 = 0;
const PPI: u32 = 1;
const LEVEL_HIGH: u32 = 4;

/// The device tree for `vcpus` vCPUs, `mem` bytes of RAM, `cmdline` and
/// the initrd at `initrd`.
///
/// # Errors
///
/// `vm-fdt` refusing a value (a NUL in the command line).
pub fn device_tree(
    mem: u64,
    vcpus: u32,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
) -> Result<Vec<u8>, String> {
    fdt(mem, vcpus, cmdline, initrd).map_err(|e| format!("building the device tree: {e}"))
}

fn fdt(
    mem: u64,
    vcpus: u32,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", cmdline)?;
    f.property_string("stdout-path", &format!("/pl011@{UART_BASE:x}"))?;
    if let Some((start, end)) = initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    f.end_node(chosen)?;

    let memory = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_BASE, mem])?;
    f.end_node(memory)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    for cpu in 0..vcpus {
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
    f.property_string("method", "hvc")?;
    f.end_node(psci)?;

    let gic = f.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_null("interrupt-controller")?;
    f.property_array_u64(
        "reg",
        &[
            GICD_BASE,
            GICD_SIZE,
            GICR_BASE,
            GICR_STRIDE * u64::from(vcpus),
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
    // Secure physical, non-secure physical, virtual, hypervisor: KVM's
    // defaults (the virtual timer is INTID 27).
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

    let uart = f.begin_node(&format!("pl011@{UART_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    f.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    f.property_array_u32("interrupts", &[SPI, UART_SPI, LEVEL_HIGH])?;
    f.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    f.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    f.end_node(uart)?;

    f.end_node(root)?;
    f.finish()
}

/// The console: an output-only PL011 whose transmitter is always idle
/// (`UARTFR` = TX FIFO empty, RX FIFO empty), so Linux's driver writes
/// every byte without waiting for a TX interrupt and no interrupt is ever
/// pending. The control registers read back what was written; the
/// PrimeCell ID registers identify a PL011 (the AMBA bus probes them).
#[derive(Debug, Default)]
pub struct Pl011 {
    regs: [u32; 7],
}

const DR: u64 = 0x000;
const FR: u64 = 0x018;
/// `UARTFR`: TXFE | RXFE.
const FR_IDLE: u32 = (1 << 7) | (1 << 4);
/// `UARTPeriphID0..3`, `UARTPCellID0..3` (0xFE0..0xFFC): PL011 r1p5.
const IDS: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

impl Pl011 {
    /// `IBRD`, `FBRD`, `LCR_H`, `CR`, `IFLS`, `IMSC`, `DMACR`: kept.
    fn slot(offset: u64) -> Option<usize> {
        match offset {
            0x024 => Some(0),
            0x028 => Some(1),
            0x02c => Some(2),
            0x030 => Some(3),
            0x034 => Some(4),
            0x038 => Some(5),
            0x048 => Some(6),
            _ => None,
        }
    }

    /// A read at `offset` in the UART's window.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            FR => FR_IDLE,
            0xfe0..=0xffc if offset.is_multiple_of(4) => IDS
                .get(usize::try_from((offset - 0xfe0) / 4).unwrap_or(usize::MAX))
                .copied()
                .map_or(0, u32::from),
            // UARTDR (nothing received), UARTRIS/UARTMIS (nothing pending),
            // everything else.
            _ => Self::slot(offset).map_or(0, |s| self.regs[s]),
        }
    }

    /// A write of `value` at `offset`; returns the byte sent for `UARTDR`.
    pub fn write(&mut self, offset: u64, value: u32) -> Option<u8> {
        if offset == DR {
            #[allow(clippy::cast_possible_truncation, reason = "UARTDR's data bits")]
            return Some(value as u8);
        }
        if let Some(s) = Self::slot(offset) {
            self.regs[s] = value;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len.max(IMAGE_HEADER)];
        b[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        b
    }

    #[test]
    fn reads_and_checks_the_image_header() {
        // Debian's cloud Image: text offset 0, 0x25c0000 bytes, LE, anywhere.
        assert_eq!(
            parse_image(&image(0, 0x25c_0000, 0xa, 4096)),
            Ok(ImageHeader {
                text_offset: 0,
                image_size: 0x25c_0000
            })
        );
        assert_eq!(
            parse_image(&image(0, 0, 0, 8192)).unwrap(),
            ImageHeader {
                text_offset: 0x8_0000,
                image_size: 8192
            }
        );
        let e = |b: &[u8]| parse_image(b).unwrap_err();
        assert!(e(&[0; 10]).contains("too short"));
        let mut gz = image(0, 0x10000, 0, 4096);
        gz[0x38] = 0x1f;
        assert!(e(&gz).contains("not an arm64 Image"));
        assert!(e(&image(0, 0x10000, 1, 4096)).contains("big-endian"));
        assert!(e(&image(0x123, 0x10000, 0, 4096)).contains("text_offset"));
        assert!(e(&image(2 << 20, 0x10000, 0, 4096)).contains("text_offset"));
        assert!(e(&image(0, 0x100, 0, 4096)).contains("smaller than the file"));
    }

    #[test]
    fn places_like_rampart_vmm() {
        let h = ImageHeader {
            text_offset: 0,
            image_size: 0x25c_0000,
        };
        let p = place(192 << 20, &h, Some(0x100_0001)).unwrap();
        assert_eq!(p.kernel, RAM_BASE);
        assert_eq!(p.dtb, RAM_BASE + (190 << 20));
        let (s, e) = p.initrd.unwrap();
        assert_eq!((e - s, s % 4096), (0x100_0001, 0));
        assert!(e <= p.dtb && s >= RAM_BASE + 0x25c_0000);
        assert_eq!(place(192 << 20, &h, None).unwrap().initrd, None);
        assert!(
            place(32 << 20, &h, None)
                .unwrap_err()
                .contains("at least 40 MiB")
        );
        let e = place(64 << 20, &h, Some(60 << 20)).unwrap_err();
        assert!(e.contains("at least 100 MiB"), "{e}");
        assert!(place(64 << 20, &h, Some(u64::MAX)).is_err());
        let huge = ImageHeader {
            text_offset: 0,
            image_size: u64::MAX - 4096,
        };
        assert!(place(192 << 20, &huge, None).is_err());
    }

    /// The value of property `name` of node `path` (a minimal reader).
    fn prop<'a>(dtb: &'a [u8], path: &str, name: &str) -> Option<&'a [u8]> {
        let be = |at: usize| u32::from_be_bytes(dtb[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(be(0), 0xd00d_feed);
        let (mut at, strings) = (be(8), be(12));
        let mut stack: Vec<String> = Vec::new();
        loop {
            match be(at) {
                1 => {
                    let end = dtb[at + 4..].iter().position(|&b| b == 0).unwrap();
                    stack.push(String::from_utf8_lossy(&dtb[at + 4..at + 4 + end]).into());
                    at = (at + 4 + end + 1).next_multiple_of(4);
                }
                2 => {
                    stack.pop();
                    at += 4;
                }
                3 => {
                    let (len, off) = (be(at + 4), be(at + 8));
                    let s = &dtb[strings + off..];
                    let pname = &s[..s.iter().position(|&b| b == 0).unwrap()];
                    if stack[1..].join("/") == path.trim_start_matches('/')
                        && pname == name.as_bytes()
                    {
                        return Some(&dtb[at + 12..at + 12 + len]);
                    }
                    at = (at + 12 + len).next_multiple_of(4);
                }
                4 => at += 4,
                _ => return None,
            }
        }
    }

    fn cells(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_device_tree_describes_the_platform() {
        let dtb = device_tree(
            192 << 20,
            2,
            "console=ttyAMA0 earlycon panic=-1 quiet",
            Some((0x8b00_0000, 0x8b12_3456)),
        )
        .unwrap();
        assert_eq!(
            prop(&dtb, "/chosen", "bootargs").unwrap(),
            b"console=ttyAMA0 earlycon panic=-1 quiet\0"
        );
        assert_eq!(
            prop(&dtb, "/chosen", "stdout-path").unwrap(),
            b"/pl011@9000000\0"
        );
        assert_eq!(
            cells(prop(&dtb, "/chosen", "linux,initrd-end").unwrap()),
            [0, 0x8b12_3456]
        );
        assert_eq!(
            cells(prop(&dtb, "/memory@80000000", "reg").unwrap()),
            [0, 0x8000_0000, 0, 192 << 20]
        );
        assert_eq!(cells(prop(&dtb, "/cpus/cpu@1", "reg").unwrap()), [1]);
        assert!(prop(&dtb, "/cpus/cpu@2", "reg").is_none());
        assert_eq!(prop(&dtb, "/psci", "method").unwrap(), b"hvc\0");
        assert_eq!(
            cells(prop(&dtb, "/intc@8000000", "reg").unwrap()),
            [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0x4_0000]
        );
        assert_eq!(
            cells(prop(&dtb, "/timer", "interrupts").unwrap())[6..9],
            [1, 11, 4]
        );
        assert_eq!(
            cells(prop(&dtb, "/pl011@9000000", "interrupts").unwrap()),
            [0, 1, 4]
        );
        let none = device_tree(64 << 20, 1, "x", None).unwrap();
        assert!(prop(&none, "/chosen", "linux,initrd-start").is_none());
        assert!(device_tree(64 << 20, 1, "a\0b", None).is_err());
        // The redistributors of the most vCPUs end below the UART.
        assert!(GICR_BASE + GICR_STRIDE * u64::from(MAX_VCPUS) <= UART_BASE);
    }

    #[test]
    fn the_uart_sends_bytes_and_identifies_itself() {
        let mut u = Pl011::default();
        assert_eq!(u.write(DR, u32::from(b'h')), Some(b'h'));
        assert_eq!(u.write(0x030, 0x301), None);
        assert_eq!(u.read(0x030), 0x301);
        assert_eq!(u.read(FR), 0x90, "idle, never busy or full");
        let ids: Vec<u32> = (0..8).map(|i| u.read(0xfe0 + 4 * i)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(u.read(0x3c), 0, "nothing is ever pending");
        assert_eq!(u.read(0xfe2), 0, "unaligned ID reads are 0");
    }
}
