//! What the test host learns from its device tree, copied out once at boot.
//!
//! Nothing here trusts the DT beyond parsing it: the checks compare these
//! facts against what the hypervisor promises.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use dtoolkit::fdt::{Fdt, FdtNode};
use dtoolkit::standard::NodeStandard as _;
use dtoolkit::{Node, Property, ToCellInt as _};
use rampart_abi::boot::{CARVEOUT_COMPATIBLE, CARVEOUT_NODE_NAME};

use crate::arch::{self, BootState, MAX_CPUS};
use crate::msg::Msg;
use crate::psci::Conduit;
use crate::ranges::{Range, RangeSet};
use crate::{msg, note};

/// A short text (node names).
pub type Name = Msg<64>;

/// Bootarg that names a range to probe instead of the carve-out, so the
/// abort checks can be exercised without a hypervisor:
/// `testhost.probe=<address>,<size>` (hex or decimal).
pub const PROBE_BOOTARG: &str = "testhost.probe=";

/// A `/reserved-memory` child that claims to be (or is named like) Rampart's
/// carve-out.
#[derive(Clone)]
pub struct CarveoutNode {
    /// Node name, with unit address.
    pub name: Name,
    /// Whether the name without unit address is `CARVEOUT_NODE_NAME`.
    pub name_matches: bool,
    /// The unit address after `@`, if it parses as hex.
    pub unit_address: Option<u64>,
    /// Whether `compatible` lists `CARVEOUT_COMPATIBLE`.
    pub compatible_matches: bool,
    /// Whether the node has `no-map`.
    pub no_map: bool,
    /// Its `reg` entries.
    pub reg: RangeSet<4>,
}

/// Facts from the device tree and the boot state.
pub struct Platform {
    /// Registers and state at entry.
    pub boot: BootState,
    /// Where the DT blob itself is (its `totalsize`).
    pub dt: Range,
    /// The test host's own image, bss and stacks.
    pub image: Range,
    /// PL011 base from `/chosen/stdout-path`, if it names one.
    pub console: Option<u64>,
    /// The `/psci` `method` if it is `smc` or `hvc`.
    pub psci_method: Option<Conduit>,
    /// The conduit PSCI calls use (the DT's, else SMC).
    pub psci_conduit: Conduit,
    /// MPIDR affinity (`reg`) of each CPU node, in DT order.
    pub cpus: [u64; MAX_CPUS],
    /// How many entries of `cpus` are valid.
    pub cpu_count: usize,
    /// CPU nodes in the DT, including any beyond `MAX_CPUS`.
    pub cpus_in_dt: usize,
    /// `reg` of every `/memory` node.
    pub memory: RangeSet<16>,
    /// `reg` of `/reserved-memory` children with `no-map`.
    pub reserved_no_map: RangeSet<32>,
    /// `reg` of `/reserved-memory` children without `no-map`.
    pub reserved_mapped: RangeSet<32>,
    /// The header's `/memreserve/` entries.
    pub memreserve: RangeSet<16>,
    /// `/reserved-memory` children named or compatible like the carve-out.
    pub carveouts: [Option<CarveoutNode>; 4],
    /// `testhost.probe=` from the bootargs.
    pub probe_override: Option<Range>,
    /// `testhost.secrets=` from the bootargs: how many secrets `vb-no-leaks`
    /// looks for (held XOR-masked by `secrets`), or why the option is
    /// malformed.
    pub secrets: Result<usize, &'static str>,
    /// DMA masters and IOMMU/MSI references in the host's tree
    /// (`checks/withheld.rs`).
    pub dma_nodes: crate::checks::withheld::DmaNodes,
    /// The first `pci-host-ecam-generic` node under the root (for the DMA
    /// checks), or why it could not be read.
    pub pci: Option<Result<crate::pci::HostBridge, Msg>>,
}

impl Platform {
    /// Parses the DT blob at `address` (`blob` spans its `totalsize`).
    pub fn from_blob(blob: &'static [u8], boot: BootState) -> Result<Self, Msg> {
        let fdt = Fdt::new(blob).map_err(|e| msg!("invalid device tree: {e}"))?;
        let (image_start, image_end) = arch::image_range();
        let mut platform = Platform {
            boot,
            dt: Range::from_base_size(boot.x[0], blob.len() as u64),
            image: Range {
                start: image_start,
                end: image_end,
            },
            console: None,
            psci_method: None,
            psci_conduit: Conduit::Smc,
            cpus: [0; MAX_CPUS],
            cpu_count: 0,
            cpus_in_dt: 0,
            memory: RangeSet::default(),
            reserved_no_map: RangeSet::default(),
            reserved_mapped: RangeSet::default(),
            memreserve: RangeSet::default(),
            carveouts: [const { None }; 4],
            probe_override: None,
            secrets: Ok(0),
            dma_nodes: crate::checks::withheld::DmaNodes::default(),
            pci: None,
        };

        for node in fdt.root().children() {
            let is_memory = node.name_without_address() == "memory"
                || node
                    .property("device_type")
                    .and_then(|p| p.value_as::<&str>().ok())
                    == Some("memory");
            if is_memory {
                push_regs(node, &mut platform.memory)?;
            }
        }
        if platform.memory.as_slice().is_empty() {
            return Err(msg!("no /memory node with a reg"));
        }
        platform.pci = fdt
            .root()
            .children()
            .find(|node| node.is_compatible(crate::pci::ECAM_COMPATIBLE))
            .map(crate::pci::HostBridge::from_node);

        if let Some(children) = fdt.reserved_memory() {
            let mut carveout_slot = 0;
            for child in children {
                let node: FdtNode<'_> = *child;
                if child.no_map() {
                    push_regs(node, &mut platform.reserved_no_map)?;
                } else {
                    push_regs(node, &mut platform.reserved_mapped)?;
                }
                let name_matches = node.name_without_address() == CARVEOUT_NODE_NAME;
                let compatible_matches = node.is_compatible(CARVEOUT_COMPATIBLE);
                if (name_matches || compatible_matches) && carveout_slot < platform.carveouts.len()
                {
                    let mut reg = RangeSet::default();
                    push_regs(node, &mut reg)?;
                    let name = node.name();
                    let unit_address = name
                        .split_once('@')
                        .and_then(|(_, unit)| u64::from_str_radix(unit, 16).ok());
                    let mut name_buf = Name::new();
                    let _ = name_buf.write_str(name);
                    platform.carveouts[carveout_slot] = Some(CarveoutNode {
                        name: name_buf,
                        name_matches,
                        unit_address,
                        compatible_matches,
                        no_map: child.no_map(),
                        reg,
                    });
                    carveout_slot += 1;
                }
            }
        }
        for reservation in fdt.memory_reservations() {
            platform.memreserve.push(Range::from_base_size(
                reservation.address(),
                reservation.size(),
            ));
        }

        let cpus = fdt.cpus().map_err(|e| msg!("/cpus: {e}"))?;
        for cpu in cpus.cpus() {
            let id = cpu
                .ids()
                .map_err(|e| msg!("/cpus/{}: {e}", cpu.name()))?
                .next()
                .ok_or_else(|| msg!("/cpus/{}: empty reg", cpu.name()))?
                .to_int::<u64>()
                .map_err(|e| msg!("/cpus/{}: {e}", cpu.name()))?;
            if platform.cpu_count < MAX_CPUS {
                platform.cpus[platform.cpu_count] = id;
                platform.cpu_count += 1;
            }
            platform.cpus_in_dt += 1;
        }
        if platform.cpu_count == 0 {
            return Err(msg!("no CPU nodes under /cpus"));
        }

        if let Some(psci) = fdt.find_node("/psci") {
            platform.psci_method = match psci
                .property("method")
                .and_then(|p| p.value_as::<&str>().ok())
            {
                Some("smc") => Some(Conduit::Smc),
                Some("hvc") => Some(Conduit::Hvc),
                _ => None,
            };
        }
        platform.psci_conduit = platform.psci_method.unwrap_or(Conduit::Smc);

        if let Some(chosen) = fdt.chosen() {
            if let Ok(Some(path)) = chosen.stdout_path() {
                platform.console = console_base(fdt, path);
            }
            if let Ok(Some(bootargs)) = chosen.bootargs() {
                platform.probe_override = bootargs
                    .split_ascii_whitespace()
                    .find_map(|arg| arg.strip_prefix(PROBE_BOOTARG))
                    .and_then(parse_range);
                if let Some(value) = bootargs
                    .split_ascii_whitespace()
                    .find_map(|arg| arg.strip_prefix(crate::secrets::BOOTARG))
                {
                    platform.secrets = crate::secrets::parse(value);
                }
                if let Some(value) = bootargs
                    .split_ascii_whitespace()
                    .find_map(|arg| arg.strip_prefix(BENCH_SIGNATURE_BOOTARG))
                {
                    parse_bench_signature(value);
                }
            }
        }
        let chosen = fdt.chosen();
        let bootargs = chosen.as_ref().and_then(|c| c.bootargs().ok().flatten());
        platform.dma_nodes = crate::checks::withheld::scan(fdt, bootargs);
        Ok(platform)
    }

    /// The control pages: `reg` of the root node compatible with
    /// `rampart,control` (read from the DT again; the fuzz mode's doorbells).
    pub fn control_pages(&self) -> Option<Range> {
        let blob = arch::device_tree_blob(self.boot.x[0]).ok()?;
        let fdt = Fdt::new(blob).ok()?;
        let node = fdt
            .root()
            .children()
            .find(|n| n.is_compatible(rampart_abi::boot::CONTROL_COMPATIBLE))?;
        let mut reg: RangeSet<4> = RangeSet::default();
        push_regs(node, &mut reg).ok()?;
        reg.as_slice().first().copied()
    }

    /// The carve-out nodes found.
    pub fn carveout_nodes(&self) -> impl Iterator<Item = &CarveoutNode> {
        self.carveouts.iter().flatten()
    }

    /// The range the abort checks probe: the `testhost.probe=` override, else
    /// the first `reg` of the first carve-out node.
    pub fn probe_target(&self) -> Result<Range, Msg> {
        if let Some(range) = self.probe_override {
            note!("probing {range} from {PROBE_BOOTARG} instead of the carve-out");
            return Ok(range);
        }
        match self.carveout_nodes().next() {
            None => Err(msg!(
                "no /reserved-memory/{CARVEOUT_NODE_NAME}@... node in the DT (not running under Rampart?)"
            )),
            Some(node) => node
                .reg
                .as_slice()
                .first()
                .copied()
                .ok_or_else(|| msg!("/reserved-memory/{} has no reg", node.name)),
        }
    }

    /// RAM the host was handed as usable: `/memory` minus `no-map` reserved
    /// memory and `/memreserve/` entries.
    pub fn usable_memory(&self) -> RangeSet<64> {
        let mut usable = RangeSet::<64>::default();
        for r in self.memory.as_slice() {
            usable.push(*r);
        }
        for cut in self
            .reserved_no_map
            .as_slice()
            .iter()
            .chain(self.memreserve.as_slice())
        {
            usable.subtract(cut);
        }
        usable
    }

    /// Prints what the checks will rely on.
    pub fn describe(&self) {
        for r in self.memory.as_slice() {
            note!("memory {r}");
        }
        for r in self.reserved_no_map.as_slice() {
            note!("reserved no-map {r}");
        }
        for r in self.reserved_mapped.as_slice() {
            note!("reserved (mapped) {r}");
        }
        for r in self.memreserve.as_slice() {
            note!("memreserve {r}");
        }
        note!("image {}, device tree {}", self.image, self.dt);
        note!(
            "psci method {}, console {:#x}",
            self.psci_method.map_or("(none)", Conduit::name),
            self.console.unwrap_or(0)
        );
        match &self.pci {
            None => note!("no {} host bridge", crate::pci::ECAM_COMPATIBLE),
            Some(Ok(bridge)) => note!(
                "PCI: ECAM {}, buses {}..={}, 32-bit window {:#x} + {:#x}",
                bridge.ecam,
                bridge.first_bus,
                bridge.last_bus,
                bridge.mem32.map_or(0, |w| w.cpu),
                bridge.mem32.map_or(0, |w| w.size)
            ),
            Some(Err(e)) => note!("PCI host bridge unreadable: {e}"),
        }
        if self.cpus_in_dt > self.cpu_count {
            note!(
                "{} CPUs in the DT; only the first {} are tested",
                self.cpus_in_dt,
                self.cpu_count
            );
        }
    }
}

/// Adds every `reg` entry of `node` to `set`.
fn push_regs<const N: usize>(node: FdtNode<'_>, set: &mut RangeSet<N>) -> Result<(), Msg> {
    let Some(regs) = node
        .reg()
        .map_err(|e| msg!("{}: bad reg: {e}", node.name()))?
    else {
        return Ok(());
    };
    for reg in regs {
        let address = reg
            .address::<u64>()
            .map_err(|e| msg!("{}: {e}", node.name()))?;
        let size = reg
            .size::<u64>()
            .map_err(|e| msg!("{}: {e}", node.name()))?;
        set.push(Range::from_base_size(address, size));
    }
    Ok(())
}

/// The PL011 base named by `stdout-path` (a path or an alias, with optional
/// `:options`).
fn console_base(fdt: Fdt<'_>, stdout_path: &str) -> Option<u64> {
    let path = stdout_path.split(':').next()?;
    let node = if path.starts_with('/') {
        fdt.find_node(path)?
    } else {
        let aliases = fdt.find_node("/aliases")?;
        let target = aliases.property(path)?.value_as::<&str>().ok()?;
        fdt.find_node(target)?
    };
    if !node.is_compatible("arm,pl011") {
        return None;
    }
    let reg = node.reg().ok()??.next()?;
    reg.address::<u64>().ok()
}

/// Parses `<address>,<size>` (each hex with `0x` or decimal).
fn parse_range(text: &str) -> Option<Range> {
    let (address, size) = text.split_once(',')?;
    let number = |s: &str| match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    Some(Range::from_base_size(number(address)?, number(size)?))
}

/// Bootarg with the bench guests' signer and their signatures, one per
/// signed configuration, named (hex; names of at most 8 bytes):
/// `testhost.bench-signature=<signer: 64 hex>,<name>:<128 hex>,<name>:<128 hex>...`.
/// xtask (`xtask/src/bench/hyp.rs`) signs every configuration the
/// benchmarks run as a protected VM.
pub const BENCH_SIGNATURE_BOOTARG: &str = "testhost.bench-signature=";

/// Signatures held at most.
const MAX_BENCH_SIGNATURES: usize = 8;
/// The signer's 32 bytes as little-endian words.
static BENCH_SIGNER: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Each signature's name (its bytes, zero-padded, little-endian; 0 = unused).
static BENCH_SIGNATURE_NAMES: [AtomicU64; MAX_BENCH_SIGNATURES] = [const { AtomicU64::new(0) }; MAX_BENCH_SIGNATURES];
/// Each signature's 64 bytes as little-endian words.
static BENCH_SIGNATURES: [[AtomicU64; 8]; MAX_BENCH_SIGNATURES] =
    [const { [const { AtomicU64::new(0) }; 8] }; MAX_BENCH_SIGNATURES];

fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

/// A signature's name as one word (`None` if empty or longer than 8 bytes).
fn bench_signature_name(name: &str) -> Option<u64> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    Some(u64::from_le_bytes(word))
}

fn store_words(words: &[AtomicU64], bytes: &[u8]) {
    for (word, chunk) in words.iter().zip(bytes.chunks(8)) {
        word.store(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])), Ordering::Relaxed);
    }
}

fn load_words(words: &[AtomicU64], bytes: &mut [u8]) {
    for (chunk, word) in bytes.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
}

/// Parses the bootarg's value; malformed entries are skipped (the
/// benchmark that needs one then says it is missing).
fn parse_bench_signature(value: &str) {
    let mut items = value.split(',');
    let mut signer = [0u8; 32];
    if items.next().and_then(|hex| hex_into(hex, &mut signer)).is_none() {
        return;
    }
    store_words(&BENCH_SIGNER, &signer);
    let mut slot = 0;
    for item in items {
        let Some((name, hex)) = item.split_once(':') else { continue };
        let mut signature = [0u8; 64];
        let (Some(name), Some(())) = (bench_signature_name(name), hex_into(hex, &mut signature)) else {
            continue;
        };
        if slot == MAX_BENCH_SIGNATURES {
            break;
        }
        store_words(&BENCH_SIGNATURES[slot], &signature);
        BENCH_SIGNATURE_NAMES[slot].store(name, Ordering::Release);
        slot += 1;
    }
}

/// The signer and the signature xtask passed for the bench configuration
/// `name`, if it did.
pub fn bench_signature(name: &str) -> Option<([u8; 32], [u8; 64])> {
    let wanted = bench_signature_name(name)?;
    let slot = BENCH_SIGNATURE_NAMES.iter().position(|n| n.load(Ordering::Acquire) == wanted)?;
    let mut signer = [0u8; 32];
    let mut signature = [0u8; 64];
    load_words(&BENCH_SIGNER, &mut signer);
    load_words(&BENCH_SIGNATURES[slot], &mut signature);
    Some((signer, signature))
}

