//! Arm SMMUv3: the register map, the encodings of its in-memory structures
//! (stream table entries, context descriptors, command and event records)
//! and queue index arithmetic, with no hardware access: the hypervisor's
//! driver (`hyp/src/smmu.rs`) writes what these functions compute.
//!
//! Field positions follow the Arm SMMUv3 architecture specification (IHI
//! 0070). No register-definition crate is used: the ones published for the
//! SMMUv3 are unmaintained or tied to an OS, and Rampart needs about twenty
//! fields, each checked by a test below.

use core::fmt;

/// Register offsets (bytes from the SMMU's base; page 1 is at 64 KiB).
#[allow(missing_docs, reason = "names from the SMMUv3 specification")]
pub mod reg {
    pub const IDR0: u64 = 0x00;
    pub const IDR1: u64 = 0x04;
    pub const IDR5: u64 = 0x14;
    pub const CR0: u64 = 0x20;
    pub const CR0ACK: u64 = 0x24;
    pub const CR1: u64 = 0x28;
    pub const CR2: u64 = 0x2c;
    pub const GBPA: u64 = 0x44;
    pub const IRQ_CTRL: u64 = 0x50;
    pub const IRQ_CTRLACK: u64 = 0x54;
    pub const GERROR: u64 = 0x60;
    pub const GERRORN: u64 = 0x64;
    pub const STRTAB_BASE: u64 = 0x80;
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    pub const CMDQ_BASE: u64 = 0x90;
    pub const CMDQ_PROD: u64 = 0x98;
    pub const CMDQ_CONS: u64 = 0x9c;
    pub const EVENTQ_BASE: u64 = 0xa0;
    pub const EVENTQ_PROD: u64 = 0x1_00a8;
    pub const EVENTQ_CONS: u64 = 0x1_00ac;
    /// The register frame spans two 64 KiB pages.
    pub const FRAME_SIZE: u64 = 0x2_0000;
}

/// `CR0` bits (and `CR0ACK`).
#[allow(missing_docs, reason = "names from the SMMUv3 specification")]
pub mod cr0 {
    pub const SMMUEN: u32 = 1 << 0;
    pub const EVENTQEN: u32 = 1 << 2;
    pub const CMDQEN: u32 = 1 << 3;
}

/// `GBPA`: `UPDATE` (bit 31) and `ABORT` (bit 20).
#[allow(missing_docs, reason = "names from the SMMUv3 specification")]
pub mod gbpa {
    pub const UPDATE: u32 = 1 << 31;
    pub const ABORT: u32 = 1 << 20;
}

/// `CR1`: queues and tables are inner-shareable, write-back cacheable
/// (the walker snoops the CPU caches: Rampart requires `IDR0.COHACC`).
pub const CR1_WB_ISH: u32 = {
    const WB: u32 = 1;
    const ISH: u32 = 3;
    WB | (WB << 2) | (ISH << 4) | (WB << 6) | (WB << 8) | (ISH << 10)
};

/// `CR2`: record C_BAD_STREAMID events (`RECINVSID`, bit 1) and ignore
/// broadcast TLB maintenance (`PTM`, bit 2): only Rampart's commands
/// invalidate the SMMU's TLBs.
pub const CR2_RECINVSID_PTM: u32 = (1 << 1) | (1 << 2);

/// `GERROR` bits Rampart names.
#[allow(missing_docs, reason = "names from the SMMUv3 specification")]
pub mod gerror {
    pub const CMDQ_ERR: u32 = 1 << 0;
    pub const EVTQ_ABT_ERR: u32 = 1 << 2;
    pub const SFM_ERR: u32 = 1 << 8;
    /// Every defined error bit.
    pub const ALL: u32 = 0x1fd;
}

/// What Rampart reads from `IDR0`, `IDR1` and `IDR5`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage-1 translation (`IDR0.S1P`).
    pub s1p: bool,
    /// Stage-2 translation (`IDR0.S2P`).
    pub s2p: bool,
    /// AArch64 translation tables (`IDR0.TTF` is `0b10` or `0b11`).
    pub aarch64_tables: bool,
    /// Coherent table walks and queue accesses (`IDR0.COHACC`).
    pub coherent: bool,
    /// 16-bit ASIDs (`IDR0.ASID16`).
    pub asid16: bool,
    /// EL2 translation regime and its commands (`IDR0.HYP`).
    pub hyp: bool,
    /// Supports a linear stream table (`IDR0.ST_LEVEL`; linear is always).
    pub two_level_streams: bool,
    /// Faulting transactions always stall (`IDR0.STALL_MODEL` = `0b10`):
    /// they would wait for a `CMD_RESUME` Rampart never sends.
    pub stall_forced: bool,
    /// Little-endian table walks (`IDR0.TTENDIAN` is not `0b11`).
    pub little_endian: bool,
    /// Stream ID bits (`IDR1.SIDSIZE`).
    pub sid_bits: u32,
    /// Largest command queue, log2 entries (`IDR1.CMDQS`).
    pub cmdq_log2: u32,
    /// Largest event queue, log2 entries (`IDR1.EVENTQS`).
    pub eventq_log2: u32,
    /// The queue bases are fixed by the implementation (`IDR1.QUEUES_PRESET`).
    pub queues_preset: bool,
    /// The stream table base is fixed (`IDR1.TABLES_PRESET`).
    pub tables_preset: bool,
    /// Output address bits (`IDR5.OAS` decoded).
    pub oas_bits: u32,
    /// The raw `IDR5.OAS` field (for the context descriptor's `IPS`).
    pub oas_field: u32,
    /// 4 KiB granule (`IDR5.GRAN4K`).
    pub gran4k: bool,
}

const fn field(value: u32, shift: u32, bits: u32) -> u32 {
    (value >> shift) & ((1 << bits) - 1)
}

/// The output address size `IDR5.OAS` (and a CD's `IPS`) encodes, in
/// bits; `None` for a reserved value.
#[must_use]
pub const fn oas_bits(field: u32) -> Option<u32> {
    match field {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

impl Features {
    /// Decodes the ID registers.
    #[must_use]
    pub const fn decode(idr0: u32, idr1: u32, idr5: u32) -> Features {
        let oas_field = field(idr5, 0, 3);
        Features {
            s2p: field(idr0, 0, 1) == 1,
            s1p: field(idr0, 1, 1) == 1,
            aarch64_tables: field(idr0, 2, 2) & 0b10 != 0,
            coherent: field(idr0, 4, 1) == 1,
            hyp: field(idr0, 9, 1) == 1,
            asid16: field(idr0, 12, 1) == 1,
            two_level_streams: field(idr0, 27, 2) == 1,
            stall_forced: field(idr0, 24, 2) == 0b10,
            little_endian: field(idr0, 21, 2) != 0b11,
            sid_bits: field(idr1, 0, 6),
            eventq_log2: field(idr1, 16, 5),
            cmdq_log2: field(idr1, 21, 5),
            queues_preset: field(idr1, 29, 1) == 1,
            tables_preset: field(idr1, 30, 1) == 1,
            oas_bits: match oas_bits(oas_field) {
                Some(bits) => bits,
                None => 0,
            },
            oas_field,
            gran4k: field(idr5, 4, 1) == 1,
        }
    }

    /// Whether Rampart can own this SMMU with a linear stream table of
    /// `2^stream_bits` entries for output addresses below `2^pa_bits`, and
    /// if so which stage translates host streams. The error is a one-line
    /// reason for the boot log.
    ///
    /// # Errors
    ///
    /// Why the SMMU cannot be owned.
    pub fn check(&self, stream_bits: u32, pa_bits: u32) -> Result<Stage, Unusable> {
        if !self.aarch64_tables {
            return Err(Unusable("no AArch64 translation tables (IDR0.TTF)"));
        }
        if !self.gran4k {
            return Err(Unusable("no 4 KiB granule (IDR5.GRAN4K)"));
        }
        if !self.little_endian {
            return Err(Unusable("big-endian table walks only (IDR0.TTENDIAN)"));
        }
        if self.stall_forced {
            return Err(Unusable(
                "faults always stall (IDR0.STALL_MODEL = 0b10): not supported",
            ));
        }
        if !self.coherent {
            return Err(Unusable(
                "table walks and queues are not coherent (IDR0.COHACC = 0): not supported yet",
            ));
        }
        if self.queues_preset || self.tables_preset {
            return Err(Unusable(
                "fixed queue or stream table addresses (IDR1.*_PRESET)",
            ));
        }
        if self.oas_bits < pa_bits {
            return Err(Unusable(
                "its output address size (IDR5.OAS) is below the physical address range in use",
            ));
        }
        if self.sid_bits < stream_bits {
            return Err(Unusable(
                "fewer stream ID bits (IDR1.SIDSIZE) than the device tree's stream IDs need",
            ));
        }
        if self.cmdq_log2 < 1 || self.eventq_log2 < 1 {
            return Err(Unusable("command or event queue too small"));
        }
        // Rampart uses the stage-1 mirror on every SMMU (docs/design.md,
        // "The SMMU's stage").
        if self.s1p {
            Ok(Stage::Stage1Mirror)
        } else {
            Err(Unusable(
                "no stage-1 translation (IDR0.S1P = 0): Rampart translates host streams with a stage-1 mirror",
            ))
        }
    }
}

/// How host streams are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A stage-1 context descriptor whose tables mirror the host stage 2.
    Stage1Mirror,
}

/// Why an SMMU cannot be owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unusable(pub &'static str);

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Bytes in a stream table entry and in a context descriptor.
pub const STE_BYTES: u64 = 64;
/// Bytes in a context descriptor.
pub const CD_BYTES: u64 = 64;
/// Bytes in a command.
pub const CMD_BYTES: u64 = 16;
/// Bytes in an event record.
pub const EVENT_BYTES: u64 = 32;

/// A stream table entry that aborts every transaction (`V` = 1, `Config`
/// = abort): the entry of every stream no host device uses.
#[must_use]
pub const fn ste_abort() -> [u64; 8] {
    [1, 0, 0, 0, 0, 0, 0, 0]
}

/// A stream table entry translating through the single context
/// descriptor at `cd` (stage 1 only, `Config` = `0b101`): the descriptor
/// and walks are inner-shareable write-back (`S1CIR`/`S1COR`/`S1CSH`), the
/// stream world is NS-EL1 (`STRW` = 0), and the incoming shareability is
/// used (`SHCFG` = 1).
#[must_use]
pub const fn ste_stage1(cd: u64) -> [u64; 8] {
    const CONFIG_S1: u64 = 0b101;
    let dw0 = 1 | (CONFIG_S1 << 1) | (cd & 0x000f_ffff_ffff_ffc0);
    let dw1 = 1 << 2 | 1 << 4 | 3 << 6 | 1 << 44;
    [dw0, dw1, 0, 0, 0, 0, 0, 0]
}

/// The `MAIR` the mirror's context descriptor uses: index 0 Device-nGnRE,
/// index 1 Normal write-back (as the EL2 stage 1's `MAIR_EL2`).
pub const MIRROR_MAIR: u64 = 0x04 | (0xff << 8);
/// The attribute bits of every mirror entry (a stage-1 block or page
/// descriptor, without the output address and the type bits): `AttrIndx`
/// 1 (Normal write-back in [`MIRROR_MAIR`]), `AP` = `0b01` (read-write at
/// every privilege: device streams may be unprivileged), `SH` inner
/// shareable, `AF` set (the SMMU would fault on a clear AF: no hardware
/// update, `CD.HA` = 0), `nG` (tagged with the CD's ASID), `UXN` (no
/// instruction fetch by devices; `PXN` is implied for EL0-writable
/// memory).
pub const MIRROR_ENTRY_BITS: u64 =
    (1 << 2) | (0b01 << 6) | (3 << 8) | (1 << 10) | (1 << 11) | (1 << 54);

/// Input address bits of the mirror (`T0SZ` = 16: a level-0 root).
pub const MIRROR_VA_BITS: u32 = 48;
/// The root level of the mirror's tables.
pub const MIRROR_ROOT_LEVEL: usize = 0;

/// A context descriptor for the mirror: AArch64 tables at `ttb0` with a
/// 4 KiB granule and [`MIRROR_VA_BITS`] input bits, walks inner-shareable
/// write-back, `TTB1` disabled (`EPD1`), output size `ips` (the `IDR5.OAS`
/// field), faults recorded (`R`) and terminated with an abort (`A`, no
/// stall), ASID `asid`, [`MIRROR_MAIR`].
#[must_use]
pub const fn cd_mirror(ttb0: u64, asid: u16, ips: u32) -> [u64; 8] {
    let t0sz = (64 - MIRROR_VA_BITS) as u64;
    let dw0 = t0sz
        | (1 << 8) // IR0: write-back
        | (1 << 10) // OR0: write-back
        | (3 << 12) // SH0: inner shareable
        | (1 << 30) // EPD1
        | (1 << 31) // V
        | ((ips as u64 & 7) << 32)
        | (1 << 41) // AA64
        | (1 << 45) // R
        | (1 << 46) // A
        | ((asid as u64) << 48);
    [
        dw0,
        ttb0 & 0x000f_ffff_ffff_fff0,
        0,
        MIRROR_MAIR,
        0,
        0,
        0,
        0,
    ]
}

/// Commands (16 bytes each, as two little-endian words).
pub mod cmd {
    /// `CMD_CFGI_STE`: the SMMU forgets what it cached of stream `sid`'s
    /// entry (and the descriptors it reached).
    #[must_use]
    pub const fn cfgi_ste(sid: u32) -> [u64; 2] {
        [0x03 | (sid as u64) << 32, 0]
    }
    /// `CMD_CFGI_ALL`: every cached stream table entry and descriptor.
    #[must_use]
    pub const fn cfgi_all() -> [u64; 2] {
        [0x04, 31]
    }
    /// `CMD_TLBI_NH_ALL` for VMID 0: every non-hypervisor stage-1 entry.
    #[must_use]
    pub const fn tlbi_nh_all() -> [u64; 2] {
        [0x10, 0]
    }
    /// `CMD_TLBI_NH_VAA` at `va`, every ASID, VMID 0, walk-cache entries
    /// included (`Leaf` = 0): what a change of one leaf needs.
    #[must_use]
    pub const fn tlbi_nh_vaa(va: u64) -> [u64; 2] {
        [0x13, va & !0xfff]
    }
    /// `CMD_TLBI_EL2_ALL` (only where `IDR0.HYP` is 1).
    #[must_use]
    pub const fn tlbi_el2_all() -> [u64; 2] {
        [0x20, 0]
    }
    /// `CMD_TLBI_NSNH_ALL`: every non-secure, non-hypervisor entry.
    #[must_use]
    pub const fn tlbi_nsnh_all() -> [u64; 2] {
        [0x30, 0]
    }
    /// `CMD_SYNC` with no signal (`CS` = 0): completes when every command
    /// before it has, seen by polling `CMDQ_CONS`.
    #[must_use]
    pub const fn sync() -> [u64; 2] {
        [0x46, 0]
    }
}

/// A producer or consumer index of a queue of `2^log2` entries: the index
/// in the low `log2` bits and the wrap bit above them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    value: u32,
    log2: u32,
}

impl QueueIndex {
    /// Index 0 of a queue of `2^log2` entries (`log2` at most 19).
    #[must_use]
    pub const fn new(log2: u32) -> QueueIndex {
        QueueIndex { value: 0, log2 }
    }

    /// The index as read from a `PROD` or `CONS` register (other bits,
    /// such as `CONS.ERR` or the overflow flags, dropped).
    #[must_use]
    pub const fn from_register(register: u32, log2: u32) -> QueueIndex {
        QueueIndex {
            value: register & ((2 << log2) - 1),
            log2,
        }
    }

    /// The register value: index and wrap bit.
    #[must_use]
    pub const fn register(self) -> u32 {
        self.value
    }

    /// The slot in the queue.
    #[must_use]
    pub const fn slot(self) -> u32 {
        self.value & ((1 << self.log2) - 1)
    }

    /// The wrap bit.
    #[must_use]
    pub const fn wrap(self) -> bool {
        self.value >> self.log2 & 1 == 1
    }

    /// The next index (the wrap bit flips past the last slot).
    #[must_use]
    pub const fn next(self) -> QueueIndex {
        QueueIndex {
            value: (self.value + 1) & ((2 << self.log2) - 1),
            log2: self.log2,
        }
    }

    /// The previous index (the wrap bit flips before slot 0).
    #[must_use]
    pub const fn previous(self) -> QueueIndex {
        let size2 = 2 << self.log2;
        QueueIndex {
            value: (self.value + size2 - 1) & (size2 - 1),
            log2: self.log2,
        }
    }

    /// Entries between consumer `self` and producer `prod` (0 = empty,
    /// `2^log2` = full).
    #[must_use]
    pub const fn used_until(self, prod: QueueIndex) -> u32 {
        prod.value.wrapping_sub(self.value) & ((2 << self.log2) - 1)
    }

    /// Whether a queue with producer `self` and consumer `cons` is full.
    #[must_use]
    pub const fn is_full(self, cons: QueueIndex) -> bool {
        self.slot() == cons.slot() && self.wrap() != cons.wrap()
    }

    /// Whether the consumer `self` has passed the command at `target`
    /// (which the producer wrote while the queue held fewer than `2^log2`
    /// entries): `self` is beyond it modulo the wrap.
    #[must_use]
    pub const fn passed(self, target: QueueIndex) -> bool {
        let distance = self.value.wrapping_sub(target.value) & ((2 << self.log2) - 1);
        distance != 0 && distance <= (1 << self.log2)
    }
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event type (`0x10` translation fault, ...).
    pub kind: u8,
    /// The stream that caused it.
    pub stream: u32,
    /// The input address, for events that carry one.
    pub address: Option<u64>,
    /// A write (`RnW` = 0) for fault events; `None` for others.
    pub write: Option<bool>,
}

impl Event {
    /// Decodes the first three words of an event record.
    #[must_use]
    pub const fn decode(record: [u64; 4]) -> Event {
        let kind = (record[0] & 0xff) as u8;
        let stream = (record[0] >> 32) as u32;
        let fault = matches!(kind, 0x10..=0x13);
        let carries_address = fault || matches!(kind, 0x01 | 0x05 | 0x07 | 0x0b);
        Event {
            kind,
            stream,
            address: if carries_address {
                Some(record[2])
            } else {
                None
            },
            write: if fault {
                Some(record[1] >> 35 & 1 == 0)
            } else {
                None
            },
        }
    }

    /// The event's name in the specification.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self.kind {
            0x01 => "F_UUT",
            0x02 => "C_BAD_STREAMID",
            0x03 => "F_STE_FETCH",
            0x04 => "C_BAD_STE",
            0x05 => "F_BAD_ATS_TREQ",
            0x06 => "F_STREAM_DISABLED",
            0x07 => "F_TRANSL_FORBIDDEN",
            0x08 => "C_BAD_SUBSTREAMID",
            0x09 => "F_CD_FETCH",
            0x0a => "C_BAD_CD",
            0x0b => "F_WALK_EABT",
            0x10 => "F_TRANSLATION",
            0x11 => "F_ADDR_SIZE",
            0x12 => "F_ACCESS",
            0x13 => "F_PERMISSION",
            0x20 => "F_TLB_CONFLICT",
            0x21 => "F_CFG_CONFLICT",
            0x24 => "E_PAGE_REQUEST",
            0x25 => "F_VMS_FETCH",
            _ => "unknown",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#04x}) from stream {:#x}",
            self.name(),
            self.kind,
            self.stream
        )?;
        if let Some(write) = self.write {
            f.write_str(if write { ", write" } else { ", read" })?;
        }
        if let Some(address) = self.address {
            write!(f, " at {address:#x}")?;
        }
        Ok(())
    }
}

/// Stream ID bits a linear table needs to hold every ID below `end`.
#[must_use]
pub const fn stream_bits_for(end: u64) -> u32 {
    if end <= 1 {
        0
    } else {
        64 - (end - 1).leading_zeros()
    }
}

/// The linear stream table Rampart builds: `2^bits` entries, capped at
/// `max_bits` (a stream ID above the table is refused by the SMMU with a
/// `C_BAD_STREAMID` event, which is fail-closed).
#[must_use]
pub const fn linear_table_bits(stream_end: u64, max_bits: u32) -> u32 {
    let want = stream_bits_for(stream_end);
    if want < max_bits { want } else { max_bits }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// `GENMASK`-style extraction for the checks below.
    fn bits(word: u64, high: u32, low: u32) -> u64 {
        (word >> low) & ((1u64 << (high - low + 1)) - 1)
    }

    #[test]
    fn decodes_qemu_72_id_registers() {
        // QEMU 7.2's SMMUv3: IDR0 = S1P, TTF AArch64, COHACC, ASID16,
        // TTENDIAN little, STALL_MODEL no stall, TERM_MODEL abort, linear
        // and 2-level tables; IDR1 SIDSIZE 16, CMDQS and EVENTQS 19; IDR5
        // OAS 44 bits, 4K and 64K granules.
        let idr0 = 0b10 << 2 | 1 << 1 | 1 << 4 | 1 << 12 | 2 << 21 | 1 << 24 | 1 << 26 | 1 << 27;
        let idr1 = 16 | 19 << 16 | 19 << 21;
        let idr5 = 4 | 1 << 4 | 1 << 6;
        let f = Features::decode(idr0, idr1, idr5);
        assert!(f.s1p && !f.s2p && f.aarch64_tables && f.coherent && f.asid16 && !f.hyp);
        assert!(f.two_level_streams && f.little_endian && !f.stall_forced);
        let forced = Features::decode(idr0 & !(3 << 24) | 2 << 24 | 3 << 21, idr1, idr5);
        assert!(forced.stall_forced && !forced.little_endian);
        assert_eq!(
            (f.sid_bits, f.cmdq_log2, f.eventq_log2, f.oas_bits),
            (16, 19, 19, 44)
        );
        assert!(f.gran4k);
        assert_eq!(f.check(8, 40), Ok(Stage::Stage1Mirror));
    }

    #[test]
    fn refuses_what_it_cannot_own() {
        let good = Features::decode(
            0b10 << 2 | 1 << 1 | 1 << 4,
            16 | 8 << 16 | 8 << 21,
            4 | 1 << 4,
        );
        assert!(good.check(8, 40).is_ok());
        let cases = [
            Features {
                aarch64_tables: false,
                ..good
            },
            Features {
                gran4k: false,
                ..good
            },
            Features {
                coherent: false,
                ..good
            },
            Features {
                queues_preset: true,
                ..good
            },
            Features {
                tables_preset: true,
                ..good
            },
            Features {
                oas_bits: 36,
                ..good
            },
            Features {
                sid_bits: 4,
                ..good
            },
            Features {
                s1p: false,
                s2p: true,
                ..good
            },
            Features {
                cmdq_log2: 0,
                ..good
            },
            Features {
                stall_forced: true,
                ..good
            },
            Features {
                little_endian: false,
                ..good
            },
        ];
        for f in cases {
            assert!(f.check(8, 40).is_err(), "{f:?}");
        }
        // 32-bit OAS with RAM below 4 GiB is fine.
        assert!(
            Features {
                oas_bits: 32,
                ..good
            }
            .check(8, 32)
            .is_ok()
        );
        assert_eq!(oas_bits(7), None);
    }

    #[test]
    fn stream_table_entries() {
        let abort = ste_abort();
        assert_eq!(bits(abort[0], 0, 0), 1, "valid");
        assert_eq!(
            bits(abort[0], 3, 1),
            0,
            "config abort, never bypass (0b100)"
        );
        let cd = 0x4123_4540;
        let s1 = ste_stage1(cd);
        assert_eq!(bits(s1[0], 0, 0), 1);
        assert_eq!(
            bits(s1[0], 3, 1),
            0b101,
            "stage 1 translate, stage 2 bypass"
        );
        assert_eq!(bits(s1[0], 5, 4), 0, "S1Fmt linear, one CD");
        assert_eq!(bits(s1[0], 51, 6) << 6, cd);
        assert_eq!(bits(s1[0], 63, 59), 0, "S1CDMax 0");
        assert_eq!(bits(s1[1], 3, 2), 1, "S1CIR WB");
        assert_eq!(bits(s1[1], 5, 4), 1, "S1COR WB");
        assert_eq!(bits(s1[1], 7, 6), 3, "S1CSH ISH");
        assert_eq!(bits(s1[1], 31, 30), 0, "STRW NS-EL1");
        assert_eq!(bits(s1[1], 45, 44), 1, "SHCFG incoming");
        assert_eq!(
            bits(s1[1], 27, 27),
            0,
            "stalls allowed? no: S1STALLD 0 and CD.S 0"
        );
        assert!(s1[2..].iter().all(|&w| w == 0));
    }

    #[test]
    fn mirror_context_descriptor() {
        let cd = cd_mirror(0x4567_8000, 1, 4);
        assert_eq!(bits(cd[0], 5, 0), 16, "T0SZ");
        assert_eq!(bits(cd[0], 7, 6), 0, "TG0 4K");
        assert_eq!(bits(cd[0], 9, 8), 1, "IR0 WB");
        assert_eq!(bits(cd[0], 11, 10), 1, "OR0 WB");
        assert_eq!(bits(cd[0], 13, 12), 3, "SH0 ISH");
        assert_eq!(bits(cd[0], 14, 14), 0, "EPD0: TTB0 walks");
        assert_eq!(bits(cd[0], 15, 15), 0, "little endian");
        assert_eq!(bits(cd[0], 30, 30), 1, "EPD1");
        assert_eq!(bits(cd[0], 31, 31), 1, "V");
        assert_eq!(bits(cd[0], 34, 32), 4, "IPS");
        assert_eq!(bits(cd[0], 41, 41), 1, "AA64");
        assert_eq!(bits(cd[0], 43, 42), 0, "no HTTU");
        assert_eq!(bits(cd[0], 44, 44), 0, "S: no stall");
        assert_eq!(bits(cd[0], 45, 45), 1, "R: record faults");
        assert_eq!(bits(cd[0], 46, 46), 1, "A: abort");
        assert_eq!(bits(cd[0], 63, 48), 1, "ASID");
        assert_eq!(bits(cd[1], 51, 4) << 4, 0x4567_8000, "TTB0");
        assert_eq!(cd[3], MIRROR_MAIR);
        assert_eq!(MIRROR_MAIR & 0xff, 0x04, "index 0 Device-nGnRE");
        assert_eq!(MIRROR_MAIR >> 8 & 0xff, 0xff, "index 1 Normal WB");
    }

    #[test]
    fn mirror_entries() {
        let d = MIRROR_ENTRY_BITS;
        assert_eq!(bits(d, 4, 2), 1, "AttrIndx 1");
        assert_eq!(
            MIRROR_MAIR >> (8 * bits(d, 4, 2)) & 0xff,
            0xff,
            "Normal inner/outer write-back"
        );
        assert_eq!(bits(d, 5, 5), 0, "NS");
        assert_eq!(bits(d, 7, 6), 0b01, "AP: read-write, EL0 too");
        assert_eq!(bits(d, 9, 8), 3, "SH inner");
        assert_eq!(bits(d, 10, 10), 1, "AF");
        assert_eq!(bits(d, 11, 11), 1, "nG");
        assert_eq!(bits(d, 51, 51), 0, "no DBM");
        assert_eq!(bits(d, 52, 52), 0, "not contiguous");
        assert_eq!(bits(d, 54, 54), 1, "UXN");
        assert_eq!(bits(d, 1, 0), 0, "type bits come from the table code");
        assert_eq!(bits(d, 47, 12), 0, "no output address bits");
    }

    #[test]
    fn commands() {
        assert_eq!(cmd::cfgi_ste(0x1234), [0x0000_1234_0000_0003, 0]);
        assert_eq!(cmd::cfgi_all()[1] & 0x1f, 31, "Range 31: all");
        assert_eq!(cmd::tlbi_nh_all()[0] & 0xff, 0x10);
        let vaa = cmd::tlbi_nh_vaa(0x4020_1234);
        assert_eq!(vaa[0] & 0xff, 0x13);
        assert_eq!(bits(vaa[0], 47, 32), 0, "VMID 0");
        assert_eq!(bits(vaa[1], 0, 0), 0, "Leaf 0: walk caches too");
        assert_eq!(bits(vaa[1], 63, 12) << 12, 0x4020_1000);
        assert_eq!(cmd::tlbi_el2_all()[0], 0x20);
        assert_eq!(cmd::tlbi_nsnh_all()[0], 0x30);
        let sync = cmd::sync();
        assert_eq!(sync[0] & 0xff, 0x46);
        assert_eq!(bits(sync[0], 13, 12), 0, "CS none: poll CONS");
    }

    #[test]
    fn events() {
        let fault = Event::decode([0x0000_0008_0000_0010, 1 << 35, 0x4800_0000, 0]);
        assert_eq!(
            fault,
            Event {
                kind: 0x10,
                stream: 8,
                address: Some(0x4800_0000),
                write: Some(false)
            }
        );
        assert_eq!(
            std::format!("{fault}"),
            "F_TRANSLATION (0x10) from stream 0x8, read at 0x48000000"
        );
        let write = Event::decode([0x0000_0010_0000_0013, 0, 0x1000, 0]);
        assert_eq!(write.write, Some(true));
        let bad = Event::decode([0x0001_0000_0000_0002, 0, 0, 0]);
        assert_eq!(
            (bad.name(), bad.stream, bad.address, bad.write),
            ("C_BAD_STREAMID", 0x1_0000, None, None)
        );
        assert_eq!(Event::decode([0xff, 0, 0, 0]).name(), "unknown");
    }

    #[test]
    fn register_values() {
        assert_eq!(CR1_WB_ISH, 0b11_01_01_11_01_01);
        assert_eq!(CR2_RECINVSID_PTM, 0b110);
        assert_eq!(reg::EVENTQ_PROD >> 16, 1, "page 1");
        assert_eq!(stream_bits_for(0x10000), 16);
        assert_eq!(stream_bits_for(0x100), 8);
        assert_eq!(stream_bits_for(0x101), 9);
        assert_eq!(stream_bits_for(1), 0);
        assert_eq!(linear_table_bits(0x10000, 8), 8);
        assert_eq!(linear_table_bits(0x20, 8), 5);
    }

    #[test]
    fn queue_wraps() {
        let mut i = QueueIndex::new(2);
        let seen: std::vec::Vec<(u32, bool)> = (0..9)
            .map(|_| {
                let s = (i.slot(), i.wrap());
                i = i.next();
                s
            })
            .collect();
        assert_eq!(
            seen,
            [
                (0, false),
                (1, false),
                (2, false),
                (3, false),
                (0, true),
                (1, true),
                (2, true),
                (3, true),
                (0, false)
            ]
        );
        let cons = QueueIndex::from_register(0x7f00_0000 | 0b101, 2);
        assert_eq!((cons.slot(), cons.wrap()), (1, true), "ERR bits dropped");
    }

    /// Property test: a model queue (producer and consumer as unbounded
    /// counters) against the wrap-bit arithmetic, over random operations.
    #[test]
    fn queue_index_matches_a_counter_model() {
        let mut seed = 0x5eed_5eed_0000_0001u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for log2 in [0u32, 1, 2, 3, 7, 8, 19] {
            let size = 1u64 << log2;
            let (mut prod_n, mut cons_n) = (0u64, 0u64);
            let (mut prod, mut cons) = (QueueIndex::new(log2), QueueIndex::new(log2));
            for _ in 0..20_000 {
                if next() % 2 == 0 {
                    if prod_n - cons_n < size {
                        assert!(!prod.is_full(cons));
                        prod = prod.next();
                        prod_n += 1;
                    } else {
                        assert!(prod.is_full(cons));
                    }
                } else if cons_n < prod_n {
                    // The consumer moves on by a random amount.
                    let step = 1 + next() % (prod_n - cons_n);
                    for _ in 0..step {
                        cons = cons.next();
                    }
                    cons_n += step;
                }
                assert_eq!(u64::from(cons.used_until(prod)), prod_n - cons_n);
                assert_eq!(u64::from(prod.slot()), prod_n % size);
                assert_eq!(prod.wrap(), (prod_n / size) % 2 == 1);
                assert_eq!(QueueIndex::from_register(prod.register(), log2), prod);
                assert_eq!(prod.next().previous(), prod);
                assert_eq!(prod.previous().next(), prod);
                // `passed`: the consumer is beyond every command written
                // since it was at most a queue's length behind.
                if prod_n > 0 {
                    let back = next() % size.min(prod_n);
                    let target_n = prod_n - 1 - back;
                    let mut target = QueueIndex::new(log2);
                    for _ in 0..target_n % (2 * size) {
                        target = target.next();
                    }
                    if target_n + size >= cons_n {
                        assert_eq!(
                            cons.passed(target),
                            cons_n > target_n,
                            "log2 {log2} target {target_n} cons {cons_n}"
                        );
                    }
                }
            }
        }
    }
}
