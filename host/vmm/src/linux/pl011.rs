//! An Arm PL011 UART (the guest's `ttyAMA0` and `earlycon`): output only.
//!
//! Transmission is instantaneous (the FIFO is never full, `UARTFR.TXFE`
//! always set, never `BUSY`), so Linux's PL011 driver writes every byte
//! without waiting for a TX interrupt (`pl011_tx_chars` stops only on
//! `TXFF`), and no interrupt is ever raised: the raw interrupt status
//! reads 0. There is no input (`RXFE` always set).

use std::sync::Arc;

use crate::bus::{IrqLine, MmioDevice};

const DR: u64 = 0x000;
const FR: u64 = 0x018;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const DMACR: u64 = 0x048;
/// `UARTFR`: TX FIFO empty, RX FIFO empty.
const FR_IDLE: u64 = (1 << 7) | (1 << 4);
/// PrimeCell peripheral and cell ID (0xFE0..0xFFC): PL011 r1p5, ARM.
const IDS: [u8; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// The UART; `out` gets every byte the guest sends, `irq` is its
/// (level) interrupt line, driven with the masked interrupt status after
/// every write (always low: nothing ever becomes pending).
pub struct Pl011 {
    out: Box<dyn FnMut(u8) + Send>,
    irq: Arc<dyn IrqLine>,
    regs: [u32; 8],
    /// Bytes sent.
    pub sent: u64,
}

impl Pl011 {
    /// A UART after reset.
    #[must_use]
    pub fn new(out: Box<dyn FnMut(u8) + Send>, irq: Arc<dyn IrqLine>) -> Self {
        Pl011 {
            out,
            irq,
            regs: [0; 8],
            sent: 0,
        }
    }

    fn slot(offset: u64) -> Option<usize> {
        match offset {
            IBRD => Some(0),
            FBRD => Some(1),
            LCR_H => Some(2),
            CR => Some(3),
            IFLS => Some(4),
            IMSC => Some(5),
            DMACR => Some(6),
            _ => None,
        }
    }
}

impl MmioDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value: u64 = match offset {
            FR => FR_IDLE,
            0xfe0..=0xffc if offset.is_multiple_of(4) => {
                u64::from(IDS[usize::try_from((offset - 0xfe0) / 4).unwrap_or(0)])
            }
            // UARTRIS / UARTMIS: nothing pending, ever.
            0x3c | 0x40 => 0,
            _ => Self::slot(offset).map_or(0, |s| u64::from(self.regs[s])),
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut w = [0u8; 8];
        let n = data.len().min(8);
        w[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(w);
        if offset == DR {
            self.sent += 1;
            (self.out)(w[0]);
        } else if let Some(s) = Self::slot(offset) {
            #[allow(clippy::cast_possible_truncation, reason = "32-bit registers")]
            {
                self.regs[s] = value as u32;
            }
            // The line is UARTMIS != 0: RIS is always 0.
            self.irq.set(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Line(Mutex<Vec<bool>>);
    impl IrqLine for Line {
        fn set(&self, level: bool) {
            self.0.lock().unwrap().push(level);
        }
    }

    #[test]
    fn sends_bytes_and_identifies_itself() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let line = Arc::new(Line(Mutex::new(Vec::new())));
        let mut u = Pl011::new(Box::new(move |b| g.lock().unwrap().push(b)), line.clone());
        u.write(DR, b"h");
        u.write(DR, &[b'i', 0, 0, 0]);
        assert_eq!(*got.lock().unwrap(), b"hi");
        let mut d = [0u8; 4];
        u.read(FR, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x90, "idle, never busy or full");
        let id: Vec<u8> = (0..8)
            .map(|i| {
                let mut b = [0u8; 4];
                u.read(0xfe0 + 4 * i, &mut b);
                b[0]
            })
            .collect();
        // AMBA: peripheral ID 0x?41011 (PL011), cell ID 0xb105f00d.
        assert_eq!(&id[..2], [0x11, 0x10]);
        assert_eq!(id[2] & 0xf, 4);
        assert_eq!(&id[4..], [0x0d, 0xf0, 0x05, 0xb1]);
        u.write(IMSC, &[0x50, 0, 0, 0]);
        u.read(IMSC, &mut d);
        assert_eq!(d[0], 0x50);
        u.read(0x3c, &mut d);
        assert_eq!(d, [0; 4], "no interrupt is ever raised");
        assert!(
            line.0.lock().unwrap().iter().all(|&l| !l),
            "the line stays low"
        );
    }
}
