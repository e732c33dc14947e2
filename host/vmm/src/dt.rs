//! What the host's device tree says about Rampart's control pages and
//! guest pool, read from Linux's `/proc/device-tree` (one directory per
//! node, one file per property, values big-endian).
//!
//! - `/rampart-control@<addr>`: `compatible = "rampart,control"`,
//!   `reg = <addr size>` (root's cells, 2 + 2), `rampart,channels = <N>`.
//! - `/reserved-memory/rampart-guest-pool@<addr>`: `compatible =
//!   "rampart,guest-pool"`, `no-map`, `reg` (`/reserved-memory`'s cells).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use rampart_abi::boot::{
    CONTROL_CHANNELS_PROPERTY, CONTROL_COMPATIBLE, CONTROL_NODE_NAME, GUEST_POOL_COMPATIBLE,
    GUEST_POOL_NODE_NAME,
};

/// Bytes per control channel.
pub const CHANNEL_SIZE: u64 = 4096;

/// Where Linux shows the device tree, in the order tried.
pub const DEFAULT_ROOTS: [&str; 2] = ["/proc/device-tree", "/sys/firmware/devicetree/base"];

/// A physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl PhysRange {
    /// One past the last byte.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }
}

impl std::fmt::Display for PhysRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:#x}..{:#x} ({} KiB)",
            self.base,
            self.end(),
            self.size / 1024
        )
    }
}

/// What the VMM needs from the device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// The control pages, one per channel.
    pub control: PhysRange,
    /// Number of channels (`rampart,channels`, capped by `reg`'s size).
    pub channels: u32,
    /// The guest pool, less its last `channels` pages.
    pub pool: PhysRange,
    /// The guest pool's last `channels` pages: channel `i`'s call page is
    /// the `i`-th (host ABI 0.6, `docs/abi.md` "Call pages"). No VM gets
    /// them.
    pub call_pages: PhysRange,
}

/// A big-endian `u32` property.
///
/// # Errors
///
/// If it is not exactly 4 bytes.
pub fn parse_u32(bytes: &[u8]) -> Result<u32> {
    let array: [u8; 4] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected one 32-bit cell, got {} bytes", bytes.len()))?;
    Ok(u32::from_be_bytes(array))
}

/// A string-list property (NUL-separated, NUL-terminated).
#[must_use]
pub fn parse_strings(bytes: &[u8]) -> Vec<String> {
    bytes
        .strip_suffix(&[0])
        .unwrap_or(bytes)
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn cells_value(cells: &[u8]) -> u64 {
    cells.chunks_exact(4).fold(0u64, |acc, c| {
        (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    })
}

/// A `reg` property with the given cell counts.
///
/// # Errors
///
/// If the cell counts are not 1 or 2, or the length is not a non-zero
/// multiple of one entry.
pub fn parse_reg(bytes: &[u8], address_cells: u32, size_cells: u32) -> Result<Vec<PhysRange>> {
    if !(1..=2).contains(&address_cells) || !(1..=2).contains(&size_cells) {
        bail!("unsupported #address-cells {address_cells} / #size-cells {size_cells}");
    }
    let a = address_cells as usize * 4;
    let entry = a + size_cells as usize * 4;
    if bytes.is_empty() || !bytes.len().is_multiple_of(entry) {
        bail!(
            "`reg` is {} bytes, not a multiple of {entry} ({address_cells} address and {size_cells} size cells)",
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(entry)
        .map(|e| PhysRange {
            base: cells_value(&e[..a]),
            size: cells_value(&e[a..]),
        })
        .collect())
}

/// The first child of `dir` named `<prefix>@...` (or exactly `prefix`).
///
/// # Errors
///
/// If `dir` cannot be read.
pub fn find_child(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    // The name first, which costs nothing; then the entry's type, from the
    // directory listing itself (`d_type`), with a `stat` only where the
    // listing does not say. `/proc/device-tree` has a few hundred entries
    // in its root and a `stat` each cost about 25 ms of a launch under
    // TCG.
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e)))
        .filter(|(n, _)| n == prefix || n.strip_prefix(prefix).is_some_and(|r| r.starts_with('@')))
        .filter(|(_, e)| {
            e.file_type()
                .is_ok_and(|t| t.is_dir() || (t.is_symlink() && e.path().is_dir()))
        })
        .map(|(n, _)| n)
        .collect();
    names.sort();
    Ok(names.first().map(|n| dir.join(n)))
}

fn read_cells(node: &Path, name: &str, default: u32) -> Result<u32> {
    match fs::read(node.join(name)) {
        Ok(b) => parse_u32(&b).with_context(|| format!("{}/{name}", node.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(default),
        Err(e) => Err(e).with_context(|| format!("reading {}/{name}", node.display())),
    }
}

fn check_compatible(node: &Path, expected: &str) -> Result<()> {
    let path = node.join("compatible");
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let list = parse_strings(&bytes);
    if !list.iter().any(|c| c == expected) {
        bail!(
            "{}: compatible is {list:?}, expected \"{expected}\"",
            node.display()
        );
    }
    Ok(())
}

fn read_reg(node: &Path, parent: &Path) -> Result<PhysRange> {
    let address_cells = read_cells(parent, "#address-cells", 2)?;
    let size_cells = read_cells(parent, "#size-cells", 1)?;
    let path = node.join("reg");
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let reg = parse_reg(&bytes, address_cells, size_cells)
        .with_context(|| format!("{}", path.display()))?;
    Ok(reg[0])
}

/// The first directory of `roots` that exists (the device tree's root).
///
/// # Errors
///
/// If none does.
pub fn root(roots: &[PathBuf]) -> Result<PathBuf> {
    roots
        .iter()
        .find(|r| r.is_dir())
        .cloned()
        .with_context(|| {
            format!(
                "no device tree at {}: the host kernel exposes none (CONFIG_OF / CONFIG_PROC_DEVICETREE?)",
                roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(" or ")
            )
        })
}

/// The Linux kernel's identifier of this boot (changes at every boot).
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// `<state dir>/platform`: [`discover`]'s answer for this boot, so that a
/// launch reads two small files instead of listing the device tree's root
/// (a few hundred entries: about 0.4 million instructions, the largest
/// part of `rampart-vmm`'s own launch work after loading the image).
pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("platform")
}

/// The cache's one line: the boot id, then the control pages, channels,
/// guest pool and call pages in hex.
fn cache_line(boot_id: &str, p: &Platform) -> String {
    format!(
        "{boot_id} {:#x} {:#x} {} {:#x} {:#x} {:#x} {:#x}\n",
        p.control.base, p.control.size, p.channels, p.pool.base, p.pool.size, p.call_pages.base, p.call_pages.size
    )
}

/// The cached platform if `text` was written in boot `boot_id`, is well
/// formed and describes a platform [`discover`] could have returned
/// (page-aligned, channels fit, call pages right after the pool).
fn parse_cache(text: &str, boot_id: &str) -> Option<Platform> {
    let mut words = text.trim_end_matches('\n').split(' ');
    if words.next()? != boot_id || boot_id.is_empty() {
        return None;
    }
    let hex = |w: Option<&str>| u64::from_str_radix(w?.strip_prefix("0x")?, 16).ok();
    let control = PhysRange { base: hex(words.next())?, size: hex(words.next())? };
    let channels: u32 = words.next()?.parse().ok()?;
    let pool = PhysRange { base: hex(words.next())?, size: hex(words.next())? };
    let call_pages = PhysRange { base: hex(words.next())?, size: hex(words.next())? };
    let aligned = |r: &PhysRange| r.base.is_multiple_of(CHANNEL_SIZE) && r.size.is_multiple_of(CHANNEL_SIZE) && r.base.checked_add(r.size).is_some();
    let ok = words.next().is_none()
        && channels > 0
        && [control, pool, call_pages].iter().all(aligned)
        && u64::from(channels) * CHANNEL_SIZE <= control.size
        && pool.size > 0
        && call_pages.base == pool.end()
        && call_pages.size == u64::from(channels) * CHANNEL_SIZE;
    ok.then_some(Platform { control, channels, pool, call_pages })
}

/// [`discover`] of the first of `roots` that exists ([`root`]), through
/// `<state dir>/platform` ([`cache_path`]) when the tree is the running
/// kernel's own: the file is used if it was written in this boot
/// (Rampart's device-tree nodes cannot change while the kernel it booted
/// runs), and rewritten otherwise. The state directory is root's, like
/// the pool allocation table there, which already decides which physical
/// pages this VMM writes; the file is trusted no further than the table.
/// A file that does not parse is ignored. Any other tree (a test copy,
/// `--dt-root`) is read every time. The roots are looked for only when
/// the file is not used (issue 16: the `statx` of `/proc/device-tree`, a
/// symbolic link into sysfs, was a path walk through two pseudo-file
/// systems on every launch).
///
/// # Errors
///
/// As [`root`] and [`discover`].
pub fn discover_cached(roots: &[PathBuf], state_dir: &Path, boot_id_path: &Path) -> Result<Platform> {
    let boot_id = read_small(boot_id_path).map(|s| s.trim().to_string()).filter(|s| !s.is_empty() && !s.contains(' '));
    let file = cache_path(state_dir);
    if let Some(id) = &boot_id
        && let Some(text) = read_small(&file)
        && let Some(p) = parse_cache(&text, id)
    {
        return Ok(p);
    }
    let platform = discover(&root(roots)?)?;
    if let Some(id) = &boot_id {
        // Written whole, then renamed: a concurrent launch reads the old
        // file, the new one or none, never half of one.
        let tmp = state_dir.join(format!("platform.{}", std::process::id()));
        if fs::create_dir_all(state_dir).is_ok() && fs::write(&tmp, cache_line(id, &platform)).is_ok() {
            let _ = fs::rename(&tmp, &file);
        }
        let _ = fs::remove_file(&tmp);
    }
    Ok(platform)
}

/// A small file's text in one `read` (issue 16: `fs::read_to_string`
/// spends a `statx` and a second `read` to see the end, on every launch),
/// or the whole file if it fills the buffer; `None` if it cannot be read.
/// A short read is the whole file for the files this reads (procfs' boot
/// id, the cache on tmpfs); if it were not, the text would not match and
/// the device tree would be read instead.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut buf = [0u8; 512];
    let n = fs::File::open(path).ok()?.read(&mut buf).ok()?;
    if n == buf.len() {
        return fs::read_to_string(path).ok();
    }
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Reads the control pages and the guest pool from the device tree at
/// `root`.
///
/// # Errors
///
/// If a node is missing (Rampart is not running, or was booted without a
/// pool) or malformed.
pub fn discover(root: &Path) -> Result<Platform> {
    let control_node = find_child(root, CONTROL_NODE_NAME)?.with_context(|| {
        format!(
            "no `{CONTROL_NODE_NAME}@...` node (compatible \"{CONTROL_COMPATIBLE}\") in the device tree at {}: is Rampart running? (the host must be booted by Rampart)",
            root.display()
        )
    })?;
    check_compatible(&control_node, CONTROL_COMPATIBLE)?;
    let control = read_reg(&control_node, root)?;
    let channels_path = control_node.join(CONTROL_CHANNELS_PROPERTY);
    let declared = parse_u32(
        &fs::read(&channels_path)
            .with_context(|| format!("reading {}", channels_path.display()))?,
    )
    .with_context(|| format!("{}", channels_path.display()))?;
    let fit = u32::try_from(control.size / CHANNEL_SIZE).unwrap_or(u32::MAX);
    let channels = declared.min(fit);
    if channels == 0 || !control.base.is_multiple_of(CHANNEL_SIZE) {
        bail!(
            "{}: {declared} channels in {control}: no usable page-aligned channel",
            control_node.display()
        );
    }

    let reserved = root.join("reserved-memory");
    let pool_node = if reserved.is_dir() {
        find_child(&reserved, GUEST_POOL_NODE_NAME)?
    } else {
        None
    }
    .with_context(|| {
        format!(
            "Rampart is running but the device tree has no /reserved-memory/{GUEST_POOL_NODE_NAME}@... node: boot it with `rampart.pool=<MiB>` to reserve a guest pool"
        )
    })?;
    check_compatible(&pool_node, GUEST_POOL_COMPATIBLE)?;
    let whole = read_reg(&pool_node, &reserved)?;
    let call_bytes = u64::from(channels) * CHANNEL_SIZE;
    if !whole.base.is_multiple_of(CHANNEL_SIZE)
        || !whole.size.is_multiple_of(CHANNEL_SIZE)
        || whole.size <= call_bytes
    {
        bail!(
            "{}: the guest pool {whole} is not page-aligned or has no room beyond the channels' {channels} call pages",
            pool_node.display()
        );
    }
    let pool = PhysRange {
        base: whole.base,
        size: whole.size - call_bytes,
    };
    Ok(Platform {
        control,
        channels,
        pool,
        call_pages: PhysRange {
            base: pool.end(),
            size: call_bytes,
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    pub struct Scratch(pub PathBuf);

    /// The cache answers as `discover` did, in the same boot only, and a
    /// damaged or implausible file is ignored (and rewritten).
    #[test]
    fn the_platform_cache_is_used_only_in_the_boot_that_wrote_it() {
        let s = Scratch::new("platform-cache");
        let tree = s.0.join("tree");
        let state = s.0.join("state");
        let boot = s.0.join("boot_id");
        let roots = [s.0.join("no-such-tree"), tree.clone()];
        write_tree(&tree, 2);
        let real = discover(&tree).unwrap();
        fs::write(&boot, "1111-aaaa\n").unwrap();
        assert_eq!(discover_cached(&roots, &state, &boot).unwrap(), real);
        let line = fs::read_to_string(cache_path(&state)).unwrap();
        assert!(line.starts_with("1111-aaaa 0x"), "{line}");
        // The tree is no longer read while the cache is valid.
        fs::remove_dir_all(&tree).unwrap();
        assert_eq!(discover_cached(&roots, &state, &boot).unwrap(), real);
        // Another boot: the tree is read again (here: gone, an error
        // that names the roots looked for).
        fs::write(&boot, "2222-bbbb\n").unwrap();
        let e = discover_cached(&roots, &state, &boot).unwrap_err().to_string();
        assert!(e.contains("no device tree at") && e.contains("no-such-tree"), "{e}");
        write_tree(&tree, 2);
        for bad in [
            line.replace("1111-aaaa", "2222-bbbb").replace(" 0x", " 0x1"),
            "2222-bbbb 0x1000".to_string(),
            line.replace("1111-aaaa", "2222-bbbb") + " extra",
            String::new(),
        ] {
            fs::write(cache_path(&state), &bad).unwrap();
            assert_eq!(discover_cached(&roots, &state, &boot).unwrap(), real, "{bad:?}");
            assert!(fs::read_to_string(cache_path(&state)).unwrap().starts_with("2222-bbbb 0x"));
        }
        assert_eq!(parse_cache(&cache_line("x", &real), "x"), Some(real));
        assert_eq!(parse_cache(&cache_line("x", &real), "y"), None);
        // No boot id: no cache, the tree every time.
        assert_eq!(discover_cached(&roots, &state, &s.0.join("none")).unwrap(), real);
    }

    impl Scratch {
        pub fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rampart-vmm-test-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cells(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    /// Writes a host tree like Rampart's into `root`.
    pub fn write_tree(root: &Path, channels: u32) {
        let put = |path: &str, bytes: &[u8]| {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        };
        put("#address-cells", &cells(&[2]));
        put("#size-cells", &cells(&[2]));
        put(
            "memory@40000000/reg",
            &cells(&[0, 0x4000_0000, 0, 0x4000_0000]),
        );
        put("rampart-control@41100000/compatible", b"rampart,control\0");
        put(
            "rampart-control@41100000/reg",
            &cells(&[0, 0x4110_0000, 0, channels * 4096]),
        );
        put(
            "rampart-control@41100000/rampart,channels",
            &cells(&[channels]),
        );
        put("reserved-memory/#address-cells", &cells(&[2]));
        put("reserved-memory/#size-cells", &cells(&[2]));
        put(
            "reserved-memory/rampart-hypervisor@40200000/compatible",
            b"rampart,hypervisor-carveout\0",
        );
        put(
            "reserved-memory/rampart-guest-pool@7c000000/compatible",
            b"rampart,guest-pool\0",
        );
        put(
            "reserved-memory/rampart-guest-pool@7c000000/reg",
            &cells(&[0, 0x7c00_0000, 0, 0x0400_0000]),
        );
        put("reserved-memory/rampart-guest-pool@7c000000/no-map", b"");
    }

    #[test]
    fn parses_properties() {
        assert_eq!(parse_u32(&[0, 0, 0, 16]).unwrap(), 16);
        assert!(parse_u32(&[0, 16]).is_err());
        assert_eq!(parse_strings(b"a,b\0c\0"), vec!["a,b", "c"]);
        assert_eq!(parse_strings(b"x"), vec!["x"]);
        let reg = parse_reg(&cells(&[1, 0x4000_0000, 0, 0x1000, 0, 0x10, 0, 0x20]), 2, 2).unwrap();
        assert_eq!(
            reg,
            vec![
                PhysRange {
                    base: 0x1_4000_0000,
                    size: 0x1000
                },
                PhysRange {
                    base: 0x10,
                    size: 0x20
                }
            ]
        );
        assert_eq!(
            parse_reg(&cells(&[0x4000_0000, 0x1000]), 1, 1).unwrap(),
            vec![PhysRange {
                base: 0x4000_0000,
                size: 0x1000
            }]
        );
        assert!(parse_reg(&cells(&[0, 1, 2]), 2, 2).is_err());
        assert!(parse_reg(&[], 2, 2).is_err());
        assert!(parse_reg(&cells(&[0, 1, 2, 3]), 3, 1).is_err());
    }

    #[test]
    fn discovers_the_control_pages_and_the_pool() {
        let s = Scratch::new("dt");
        write_tree(&s.0, 16);
        let p = discover(&s.0).unwrap();
        assert_eq!(
            p.control,
            PhysRange {
                base: 0x4110_0000,
                size: 16 * 4096
            }
        );
        assert_eq!(p.channels, 16);
        assert_eq!(
            p.pool,
            PhysRange {
                base: 0x7c00_0000,
                size: (64 << 20) - 16 * 4096
            }
        );
        assert_eq!(
            p.call_pages,
            PhysRange {
                base: 0x7c00_0000 + (64 << 20) - 16 * 4096,
                size: 16 * 4096
            }
        );
        assert_eq!(root(&[s.0.join("nope"), s.0.clone()]).unwrap(), s.0);
    }

    #[test]
    fn channels_are_capped_by_reg() {
        let s = Scratch::new("cap");
        write_tree(&s.0, 4);
        fs::write(
            s.0.join("rampart-control@41100000/rampart,channels"),
            cells(&[8]),
        )
        .unwrap();
        assert_eq!(discover(&s.0).unwrap().channels, 4);
    }

    #[test]
    fn says_what_is_missing() {
        let s = Scratch::new("missing");
        fs::write(s.0.join("#address-cells"), cells(&[2])).unwrap();
        let e = format!("{:#}", discover(&s.0).unwrap_err());
        assert!(e.contains("is Rampart running?"), "{e}");

        write_tree(&s.0, 2);
        fs::remove_dir_all(s.0.join("reserved-memory/rampart-guest-pool@7c000000")).unwrap();
        let e = format!("{:#}", discover(&s.0).unwrap_err());
        assert!(e.contains("rampart.pool="), "{e}");

        write_tree(&s.0, 2);
        fs::write(s.0.join("rampart-control@41100000/compatible"), b"other\0").unwrap();
        let e = format!("{:#}", discover(&s.0).unwrap_err());
        assert!(e.contains("expected \"rampart,control\""), "{e}");
    }
}
