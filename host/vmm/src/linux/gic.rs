//! The GICv3 distributor and redistributors, emulated in the VMM.
//!
//! The split (docs/design.md, "Linux guests"): the hardware's virtual CPU
//! interface (list registers, `ICH_*_EL2`) belongs to EL2, which also owns
//! SGIs (`ICC_SGI1R_EL1` traps there) and the virtual timer's PPI 27. The
//! distributor and redistributor *registers* are plain MMIO the VMM
//! answers: what Linux's `irq-gic-v3.c` reads and writes at boot
//! (`/work/shared/notes/linux-guest-facts.md` C.2) and the SPI state the
//! VMM needs to decide when to inject (enable, pending, routing). Nothing
//! here is trusted by EL2: a VMM that lies only confuses its own guest.
//!
//! SPIs are injected with `VCPU_INJECT` into the vCPU `GICD_IROUTER<n>`
//! names (vCPU 0 for `IRM` = 1): [`Gic::set_level`] returns the
//! injections to make. An edge-triggered line (`GICD_ICFGR` bit set) is
//! delivered once per rising edge (an assertion of an enabled line, or the
//! enabling of a line that is asserted or latched pending). A
//! level-sensitive line is injected with the `LEVEL` flag while it is
//! asserted and not already in the guest; the guest's EOI comes back as
//! `EXIT_EOI` ([`Gic::eoi`]) and the line is *resampled*: injected again if
//! it is still asserted.

use std::sync::Mutex;

use super::layout;

/// SPIs: INTIDs 32..32 + `SPIS`.
pub const SPIS: usize = 64;
const WORDS: usize = (32 + SPIS) / 32;

/// `GICD_CTLR.RWP` / `GICR_CTLR.RWP` never set; `GICD_CTLR.DS` = 1 (one
/// security state, as KVM reports).
const CTLR_DS: u32 = 1 << 6;
/// `GICD_PIDR2` / `GICR_PIDR2`: architecture version 3.
const PIDR2_GICV3: u32 = 0x3 << 4;
/// `GICR_WAKER.ProcessorSleep` and `ChildrenAsleep`.
const WAKER_SLEEP: u32 = 1 << 1;
const WAKER_ASLEEP: u32 = 1 << 2;

#[derive(Debug)]
struct Dist {
    ctlr: u32,
    group: [u32; WORDS],
    enabled: [u32; WORDS],
    pending: [u32; WORDS],
    active: [u32; WORDS],
    line: [u32; WORDS],
    /// Level-sensitive SPIs injected and not yet ended by the guest.
    in_flight: [u32; WORDS],
    priority: [u8; 32 + SPIS],
    config: [u32; WORDS * 2],
    route: [u64; SPIS],
}

#[derive(Debug, Clone)]
struct Redist {
    waker: u32,
    group: u32,
    enabled: u32,
    pending: u32,
    active: u32,
    priority: [u8; 32],
    config: [u32; 2],
}

/// The emulated distributor and redistributors of a VM with `vcpus` vCPUs.
#[derive(Debug)]
pub struct Gic {
    vcpus: usize,
    dist: Mutex<Dist>,
    redist: Mutex<Vec<Redist>>,
}

/// An interrupt to inject: (vCPU, INTID, level-sensitive).
pub type Injection = (usize, u32, bool);

/// Whether SPI `intid` is level-sensitive (`GICD_ICFGR` bit 2*n+1 clear,
/// as after reset).
fn is_level(d: &Dist, intid: usize) -> bool {
    d.config
        .get(intid / 16)
        .is_none_or(|&c| c & (2 << ((intid % 16) * 2)) == 0)
}

fn bit(intid: usize) -> (usize, u32) {
    (intid / 32, 1 << (intid % 32))
}

impl Gic {
    /// A GIC after reset: everything disabled, Group 0, priority 0, level.
    #[must_use]
    pub fn new(vcpus: usize) -> Self {
        Gic {
            vcpus,
            dist: Mutex::new(Dist {
                ctlr: 0,
                group: [0; WORDS],
                enabled: [0; WORDS],
                pending: [0; WORDS],
                active: [0; WORDS],
                line: [0; WORDS],
                in_flight: [0; WORDS],
                priority: [0; 32 + SPIS],
                config: [0; WORDS * 2],
                route: [0; SPIS],
            }),
            redist: Mutex::new(vec![
                Redist {
                    waker: WAKER_SLEEP | WAKER_ASLEEP,
                    group: 0,
                    enabled: 0,
                    pending: 0,
                    active: 0,
                    priority: [0; 32],
                    config: [0xaaaa_aaaa, 0],
                };
                vcpus
            ]),
        }
    }

    fn dist(&self) -> std::sync::MutexGuard<'_, Dist> {
        self.dist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn target(&self, d: &Dist, intid: usize) -> usize {
        let route = d.route[intid - 32];
        if route & (1 << 31) != 0 {
            return 0;
        }
        // vCPU i is affinity 0.0.0.i.
        let aff0 = usize::try_from(route & 0xff).unwrap_or(0);
        if route & 0xff_00ff_ff00 == 0 && aff0 < self.vcpus {
            aff0
        } else {
            0
        }
    }

    /// Drives SPI `intid`'s line from a device. Returns the injection to
    /// make: for an edge-triggered line, if it rose while enabled (and the
    /// distributor is on); for a level-sensitive one, if it is asserted,
    /// enabled and not already in the guest.
    pub fn set_level(&self, intid: u32, level: bool) -> Option<Injection> {
        let i = usize::try_from(intid).ok()?;
        if !(32..32 + SPIS).contains(&i) {
            return None;
        }
        let mut d = self.dist();
        let (w, m) = bit(i);
        let rose = level && d.line[w] & m == 0;
        if level {
            d.line[w] |= m;
        } else {
            d.line[w] &= !m;
        }
        if is_level(&d, i) {
            return if level { self.deliver_level(&mut d, i) } else { None };
        }
        if !rose {
            return None;
        }
        if d.enabled[w] & m != 0 && d.ctlr & 0b11 != 0 {
            Some((self.target(&d, i), intid, false))
        } else {
            d.pending[w] |= m;
            None
        }
    }

    /// A level-sensitive SPI whose line is asserted: injected unless it is
    /// disabled (then latched pending) or already in the guest.
    fn deliver_level(&self, d: &mut Dist, i: usize) -> Option<Injection> {
        let (w, m) = bit(i);
        if d.in_flight[w] & m != 0 {
            return None;
        }
        if d.enabled[w] & m == 0 || d.ctlr & 0b11 == 0 {
            d.pending[w] |= m;
            return None;
        }
        d.pending[w] &= !m;
        d.in_flight[w] |= m;
        #[allow(clippy::cast_possible_truncation, reason = "below 96")]
        Some((self.target(d, i), i as u32, true))
    }

    /// `EXIT_EOI`: the guest ended level-sensitive SPI `intid`. Resamples
    /// its line: the injection to make if it is still asserted.
    pub fn eoi(&self, intid: u64) -> Option<Injection> {
        let i = usize::try_from(intid).ok()?;
        if !(32..32 + SPIS).contains(&i) {
            return None;
        }
        let mut d = self.dist();
        let (w, m) = bit(i);
        d.in_flight[w] &= !m;
        if d.line[w] & m != 0 && is_level(&d, i) {
            self.deliver_level(&mut d, i)
        } else {
            None
        }
    }

    /// Delivers the latched SPIs that are now enabled.
    fn flush(&self, d: &mut Dist, out: &mut Vec<Injection>) {
        if d.ctlr & 0b11 == 0 {
            return;
        }
        for w in 1..WORDS {
            let ready = d.pending[w] & d.enabled[w];
            d.pending[w] &= !ready;
            for b in 0..32 {
                if ready & (1 << b) != 0 {
                    let i = w * 32 + b;
                    if is_level(d, i) {
                        // Only if the line is still asserted.
                        if d.line[w] & (1 << b) != 0
                            && let Some(inj) = self.deliver_level(d, i)
                        {
                            out.push(inj);
                        }
                        continue;
                    }
                    #[allow(clippy::cast_possible_truncation, reason = "below 96")]
                    out.push((self.target(d, i), i as u32, false));
                }
            }
        }
    }

    /// A guest load from the distributor window.
    pub fn dist_read(&self, offset: u64, size: usize) -> u64 {
        let d = self.dist();
        let word = |a: &[u32; WORDS], base: u64| {
            usize::try_from((offset - base) / 4)
                .ok()
                .and_then(|n| a.get(n))
                .map_or(0, |&v| u64::from(v))
        };
        match offset {
            0x0 => u64::from(d.ctlr | CTLR_DS),
            // ITLinesNumber, IDbits = 9 (10-bit INTIDs), no LPIs/MBIS/ESPI.
            0x4 => ((WORDS as u64) - 1) | (9 << 19),
            0x8 => 0x0000_043b,
            0xc => 0,
            0x80..0x100 => word(&d.group, 0x80),
            0x100..0x180 => word(&d.enabled, 0x100),
            0x180..0x200 => word(&d.enabled, 0x180),
            0x200..0x280 => word(&d.pending, 0x200),
            0x280..0x300 => word(&d.pending, 0x280),
            0x300..0x380 => word(&d.active, 0x300),
            0x380..0x400 => word(&d.active, 0x380),
            0x400..0x800 => {
                let at = usize::try_from(offset - 0x400).unwrap_or(usize::MAX);
                (0..size).fold(0, |acc, k| {
                    acc | u64::from(d.priority.get(at + k).copied().unwrap_or(0)) << (8 * k)
                })
            }
            0xc00..0xd00 => usize::try_from((offset - 0xc00) / 4)
                .ok()
                .and_then(|n| d.config.get(n))
                .map_or(0, |&v| u64::from(v)),
            0x6100..0x8000 => {
                let n = usize::try_from((offset - 0x6000) / 8).unwrap_or(0);
                let v = d.route.get(n.wrapping_sub(32)).copied().unwrap_or(0);
                if offset % 8 == 4 { v >> 32 } else { v }
            }
            0xffe8 => u64::from(PIDR2_GICV3),
            _ => 0,
        }
    }

    /// A guest store to the distributor window: returns injections to make.
    pub fn dist_write(&self, offset: u64, size: usize, value: u64) -> Vec<Injection> {
        let mut d = self.dist();
        let mut out = Vec::new();
        #[allow(clippy::cast_possible_truncation, reason = "32-bit registers")]
        let v32 = value as u32;
        let n = |base: u64| usize::try_from((offset - base) / 4).unwrap_or(usize::MAX);
        match offset {
            0x0 => {
                // ARE_NS, EnableGrp1A, EnableGrp1 (RWP never set).
                d.ctlr = v32 & 0x13;
                self.flush(&mut d, &mut out);
            }
            0x80..0x100 => {
                if let Some(w) = d.group.get_mut(n(0x80)) {
                    *w = v32;
                }
            }
            0x100..0x180 => {
                let i = n(0x100);
                if i > 0
                    && let Some(w) = d.enabled.get_mut(i)
                {
                    *w |= v32;
                    // A line already asserted is latched on enable.
                    let asserted = d.line[i] & v32;
                    d.pending[i] |= asserted;
                    self.flush(&mut d, &mut out);
                }
            }
            0x180..0x200 => {
                if let Some(w) = d.enabled.get_mut(n(0x180)) {
                    *w &= !v32;
                }
            }
            0x200..0x280 => {
                if let Some(w) = d.pending.get_mut(n(0x200)) {
                    *w |= v32;
                }
                self.flush(&mut d, &mut out);
            }
            0x280..0x300 => {
                if let Some(w) = d.pending.get_mut(n(0x280)) {
                    *w &= !v32;
                }
            }
            0x300..0x380 => {
                if let Some(w) = d.active.get_mut(n(0x300)) {
                    *w |= v32;
                }
            }
            0x380..0x400 => {
                if let Some(w) = d.active.get_mut(n(0x380)) {
                    *w &= !v32;
                }
            }
            0x400..0x800 => {
                let at = usize::try_from(offset - 0x400).unwrap_or(usize::MAX);
                for k in 0..size {
                    if let Some(p) = d.priority.get_mut(at.saturating_add(k)) {
                        *p = value.to_le_bytes().get(k).copied().unwrap_or(0);
                    }
                }
            }
            0xc00..0xd00 => {
                if let Some(w) = d.config.get_mut(n(0xc00)) {
                    *w = v32;
                }
            }
            0x6100..0x8000 => {
                let i = usize::try_from((offset - 0x6000) / 8)
                    .unwrap_or(0)
                    .wrapping_sub(32);
                if let Some(r) = d.route.get_mut(i) {
                    *r = match (offset % 8, size) {
                        (0, 8) => value,
                        (0, _) => (*r & !0xffff_ffff) | u64::from(v32),
                        _ => (*r & 0xffff_ffff) | (u64::from(v32) << 32),
                    };
                }
            }
            _ => {}
        }
        out
    }

    /// A guest load from redistributor `vcpu`'s frames (`offset` from its
    /// RD_base; SGI_base at +64 KiB).
    pub fn redist_read(&self, vcpu: usize, offset: u64, size: usize) -> u64 {
        let r = self
            .redist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(r) = r.get(vcpu) else { return 0 };
        let last = u64::from(vcpu + 1 == self.vcpus) << 4;
        let typer = ((vcpu as u64) << 32) | ((vcpu as u64) << 8) | last;
        match offset {
            0x0 => 0,
            0x4 => 0x0000_043b,
            0x8 if size == 8 => typer,
            0x8 => typer & 0xffff_ffff,
            0xc => typer >> 32,
            0x14 => u64::from(r.waker),
            0xffe8 => u64::from(PIDR2_GICV3),
            0x1_0080 => u64::from(r.group),
            0x1_0100 | 0x1_0180 => u64::from(r.enabled),
            0x1_0200 | 0x1_0280 => u64::from(r.pending),
            0x1_0300 | 0x1_0380 => u64::from(r.active),
            0x1_0400..0x1_0420 => {
                let at = usize::try_from(offset - 0x1_0400).unwrap_or(usize::MAX);
                (0..size).fold(0, |acc, k| {
                    acc | u64::from(r.priority.get(at + k).copied().unwrap_or(0)) << (8 * k)
                })
            }
            0x1_0c00 => u64::from(r.config[0]),
            0x1_0c04 => u64::from(r.config[1]),
            0x1_ffe8 => u64::from(PIDR2_GICV3),
            _ => 0,
        }
    }

    /// A guest store to redistributor `vcpu`'s frames.
    pub fn redist_write(&self, vcpu: usize, offset: u64, size: usize, value: u64) {
        let mut all = self
            .redist
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(r) = all.get_mut(vcpu) else { return };
        #[allow(clippy::cast_possible_truncation, reason = "32-bit registers")]
        let v32 = value as u32;
        match offset {
            0x14 => {
                // ChildrenAsleep follows ProcessorSleep at once.
                let sleep = v32 & WAKER_SLEEP;
                r.waker = sleep | if sleep != 0 { WAKER_ASLEEP } else { 0 };
            }
            0x1_0080 => r.group = v32,
            0x1_0100 => r.enabled |= v32,
            0x1_0180 => r.enabled &= !v32,
            0x1_0200 => r.pending |= v32,
            0x1_0280 => r.pending &= !v32,
            0x1_0300 => r.active |= v32,
            0x1_0380 => r.active &= !v32,
            0x1_0400..0x1_0420 => {
                let at = usize::try_from(offset - 0x1_0400).unwrap_or(usize::MAX);
                for k in 0..size {
                    if let Some(p) = r.priority.get_mut(at.saturating_add(k)) {
                        *p = value.to_le_bytes().get(k).copied().unwrap_or(0);
                    }
                }
            }
            0x1_0c00 => r.config[0] = v32,
            0x1_0c04 => r.config[1] = v32,
            _ => {}
        }
    }

    /// Which window `address` is in: distributor, or redistributor of a
    /// vCPU (with the offset from its RD_base).
    #[must_use]
    pub fn decode(&self, address: u64) -> Option<Window> {
        if (layout::GICD_BASE..layout::GICD_BASE + layout::GICD_SIZE).contains(&address) {
            return Some(Window::Dist(address - layout::GICD_BASE));
        }
        let off = address.checked_sub(layout::GICR_BASE)?;
        let vcpu = usize::try_from(off / layout::GICR_STRIDE).ok()?;
        (vcpu < self.vcpus).then_some(Window::Redist(vcpu, off % layout::GICR_STRIDE))
    }
}

/// A GIC register window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The distributor, at this offset.
    Dist(u64),
    /// vCPU's redistributor, at this offset from its RD_base.
    Redist(usize, u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_probe_values() {
        let g = Gic::new(2);
        assert_eq!(g.dist_read(0xffe8, 4) >> 4 & 0xf, 3, "GICv3");
        assert_ne!(g.dist_read(0, 4) & CTLR_DS as u64, 0);
        let typer = g.dist_read(4, 4);
        assert_eq!(typer & 0x1f, 2, "96 INTIDs");
        assert_eq!(typer & (1 << 17), 0, "no LPIs");
        // Redistributors: affinity and Last.
        assert_eq!(g.redist_read(0, 8, 8), 0);
        assert_eq!(g.redist_read(1, 8, 8), (1 << 32) | (1 << 8) | (1 << 4));
        assert_eq!(g.redist_read(1, 0xc, 4), 1);
        // Waking a redistributor.
        assert_ne!(g.redist_read(1, 0x14, 4) & u64::from(WAKER_ASLEEP), 0);
        g.redist_write(1, 0x14, 4, 0);
        assert_eq!(g.redist_read(1, 0x14, 4), 0);
        assert_eq!(
            g.decode(layout::GICR_BASE + layout::GICR_STRIDE + 0x1_0100),
            Some(Window::Redist(1, 0x1_0100))
        );
        assert_eq!(g.decode(layout::GICR_BASE + 2 * layout::GICR_STRIDE), None);
        assert_eq!(g.decode(layout::GICD_BASE + 4), Some(Window::Dist(4)));
    }

    #[test]
    fn spis_are_injected_when_enabled_and_routed() {
        let g = Gic::new(2);
        // Disabled: latched.
        assert_eq!(g.set_level(48, true), None);
        g.set_level(48, false);
        // Edge-triggered (ICFGR3: SPI 48 is field 0), routed to vCPU 1;
        // enable the distributor and the SPI.
        g.dist_write(0xc00 + 4 * 3, 4, 0b10);
        g.dist_write(0x6000 + 8 * 48, 8, 1);
        assert!(g.dist_write(0, 4, 0x12).is_empty());
        assert_eq!(g.dist_write(0x104, 4, 1 << 16), vec![(1, 48, false)]);
        // Each rising edge is one injection.
        assert_eq!(g.set_level(48, true), Some((1, 48, false)));
        assert_eq!(g.set_level(48, true), None);
        g.set_level(48, false);
        assert_eq!(g.set_level(48, true), Some((1, 48, false)));
        // IRM routes to vCPU 0; out-of-range INTIDs are ignored.
        g.dist_write(0x6000 + 8 * 48, 8, 1 << 31);
        g.set_level(48, false);
        assert_eq!(g.set_level(48, true), Some((0, 48, false)));
        assert_eq!(g.set_level(27, true), None);
        assert_eq!(g.set_level(96, true), None);
        // Priorities are byte-accessible.
        g.dist_write(0x400 + 48, 1, 0xa0);
        assert_eq!(g.dist_read(0x400 + 48, 1), 0xa0);
        assert_eq!(g.dist_read(0x400 + 48, 4), 0xa0);
    }

    #[test]
    fn level_lines_are_resampled_on_eoi() {
        let g = Gic::new(2);
        // SPI 49 level (ICFGR reset value), routed to vCPU 0.
        g.dist_write(0x6000 + 8 * 49, 8, 0);
        // Asserted while disabled: latched, delivered on enable.
        assert_eq!(g.set_level(49, true), None);
        assert!(g.dist_write(0, 4, 0x12).is_empty());
        assert_eq!(g.dist_write(0x104, 4, 1 << 17), vec![(0, 49, true)]);
        // In the guest: no second injection while it stays asserted.
        assert_eq!(g.set_level(49, true), None);
        // The guest's EOI while the line is still high: injected again.
        assert_eq!(g.eoi(49), Some((0, 49, true)));
        // The device drops the line (the driver acknowledged it), the
        // guest ends it: nothing more.
        g.set_level(49, false);
        assert_eq!(g.eoi(49), None);
        // Asserted again: one injection; dropped before the EOI: none.
        assert_eq!(g.set_level(49, true), Some((0, 49, true)));
        g.set_level(49, false);
        assert_eq!(g.eoi(49), None);
        // A line that drops and rises before the EOI is resampled high.
        assert_eq!(g.set_level(49, true), Some((0, 49, true)));
        g.set_level(49, false);
        assert_eq!(g.set_level(49, true), None);
        assert_eq!(g.eoi(49), Some((0, 49, true)));
        // Foreign INTIDs are ignored.
        assert_eq!(g.eoi(27), None);
        assert_eq!(g.eoi(u64::MAX), None);
    }
}
