//! The stock Linux host: Debian's arm64 cloud kernel and a busybox initramfs.
//!
//! [`prepare`] fetches Debian's current `linux-image-cloud-arm64` kernel and
//! `busybox-static` for arm64 with apt (once: they are cached, extracted,
//! under `build/debian/`), then packs an initramfs of busybox and the `/init`
//! script in `linux/init.sh` into `build/linux/`. `/init` reports what it sees
//! in lines starting with `RAMPART-INIT: `, which [`parse_report`] reads back.
//!
//! To pick up a newer Debian kernel, delete `build/debian/`.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{artifacts, prereq};

pub(crate) mod cpio;

/// Printed by `/init` as its first line.
pub const INIT_MARKER: &str = "RAMPART-INIT: start";

/// The prefix of every line `/init` prints for the harness.
#[allow(
    dead_code,
    reason = "the API suite.rs's Linux cases read /init's report with"
)]
pub const REPORT_PREFIX: &str = "RAMPART-INIT: ";

/// Kernel command-line flag that makes `/init` read the hypervisor's
/// carve-out through `/dev/mem`.
#[allow(
    dead_code,
    reason = "the API suite.rs's Linux cases read /init's report with"
)]
pub const DEVMEM_FLAG: &str = "rinit.devmem=1";

/// Kernel command-line flag that makes `/init` skip its `/proc/iomem`
/// report (`reserved` and `iomem` lines), for runs that do not read it.
pub const BRIEF_FLAG: &str = "rinit.brief=1";

/// The `/init` script.
const INIT_SCRIPT: &str = include_str!("linux/init.sh");

/// Where in the initramfs the `init_extra` script of [`prepare_with`] goes;
/// `/init` sources it after its own checks, before `alive` and `done`.
const INIT_EXTRA_PATH: &str = "rinit-extra.sh";

/// The meta-package whose dependency names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-arm64:arm64";
/// A statically linked busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static:arm64";
/// What a user without root must run before `prepare` can fetch.
const ROOT_HINT: &str = "run `sudo dpkg --add-architecture arm64 && sudo apt-get update` \
    (or run this command as root) and try again";

/// A kernel and initramfs ready to boot.
pub struct LinuxHost {
    /// The kernel's uncompressed arm64 `Image`.
    pub kernel: PathBuf,
    /// The gzip'd newc initramfs.
    pub initramfs: PathBuf,
    /// The Debian kernel package version.
    pub version: String,
    /// The Debian kernel package, e.g. `linux-image-6.1.0-56-cloud-arm64`.
    pub package: String,
}

/// Fetches (or reuses) the kernel and busybox and builds the initramfs.
pub fn prepare() -> Result<LinuxHost> {
    prepare_with(&[], "")
}

/// Like [`prepare`], with more in the initramfs: each `(source, path)` of
/// `extra_files` is copied to `path` in the archive (keeping its permission
/// bits; parent directories are created), and `init_extra`, if not empty,
/// is a shell fragment `/init` sources after its own checks and before it
/// prints `alive` and `done` (it may use `say TEXT` to print
/// `RAMPART-INIT: TEXT`). Each distinct content gets its own archive, so
/// concurrent runs with different extras do not clash.
pub fn prepare_with(extra_files: &[(PathBuf, &str)], init_extra: &str) -> Result<LinuxHost> {
    let debian = fetch()?;
    // The PCI drivers `rinit.pcidisk=1` loads (Debian builds them as
    // modules), in load order, under /lib/modules/rampart/.
    let modules = pci_modules(&debian_dir().join("kernel"))?;
    let names: Vec<String> = modules
        .iter()
        .enumerate()
        .map(|(i, m)| format!("lib/modules/rampart/{i}-{}", m.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
    let mut files: Vec<(PathBuf, &str)> = modules.iter().cloned().zip(names.iter().map(String::as_str)).collect();
    files.extend(extra_files.iter().cloned());
    let initramfs = build_initramfs(&debian.busybox, &files, init_extra)?;
    Ok(LinuxHost {
        kernel: debian.kernel,
        initramfs,
        version: debian.kernel_version,
        package: debian.kernel_package,
    })
}

// ---------------------------------------------------------------------------
// PCI devices behind the SMMU (issue 10): a virtio-blk-pci disk the host
// mounts, and a virtio-rng-pci it reads.

/// Kernel command-line flag that makes `/init` load the PCI modules,
/// mount the `virtio-blk-pci` disk, hash its file and read the
/// `virtio-rng-pci` device.
pub const PCI_DISK_FLAG: &str = "rinit.pcidisk=1";

/// The modules `rinit.pcidisk=1` loads, in dependency order (Debian's
/// cloud kernel has `VIRTIO_PCI`, `VIRTIO_BLK` and `HW_RANDOM_VIRTIO` as
/// modules; ext4, which mounts ext2, is built in).
const PCI_MODULES: [&str; 7] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/hw_random/virtio-rng.ko",
];

/// The module `rel` (e.g. `drivers/net/virtio_net.ko`) of Debian's kernel
/// package, for a case that packs more drivers than [`PCI_MODULES`]
/// (issue 14's host networking, `linux_migrate.rs`).
pub fn debian_module(rel: &str) -> Result<PathBuf> {
    fetch()?;
    let base = debian_dir().join("kernel").join("lib/modules");
    let version = fs::read_dir(&base)
        .with_context(|| format!("reading {}", base.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| format!("no kernel modules under {}", base.display()))?;
    let path = version.join("kernel").join(rel);
    if !path.is_file() {
        bail!("the Debian kernel has no {rel} (looked in {})", version.display());
    }
    Ok(path)
}

/// The file on the disk whose checksum `/init` reports.
const DISK_FILE: &str = "rampart-check.bin";

/// [`PCI_MODULES`] in the extracted kernel package `root`.
fn pci_modules(root: &Path) -> Result<Vec<PathBuf>> {
    let base = root.join("lib/modules");
    let version = fs::read_dir(&base)
        .with_context(|| format!("reading {}", base.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| format!("no kernel modules under {}", base.display()))?;
    PCI_MODULES
        .iter()
        .map(|m| {
            let path = version.join("kernel").join(m);
            if path.is_file() {
                Ok(path)
            } else {
                bail!("the Debian kernel has no {m} (looked in {}); delete build/debian/ to fetch it again", version.display())
            }
        })
        .collect()
}

/// The disk image of this xtask run and the SHA-256 of its file.
pub struct PciDisk {
    /// The raw ext2 image.
    pub image: PathBuf,
    /// Hex SHA-256 of [`DISK_FILE`] on it.
    pub sha256: String,
}

static PCI_DISK: std::sync::OnceLock<PciDisk> = std::sync::OnceLock::new();

/// Builds (once per xtask run) a 4 MiB ext2 image holding 256 KiB of fresh
/// random bytes in [`DISK_FILE`], with `mke2fs -d`; a checksum from an
/// earlier run can never match.
pub fn pci_disk() -> Result<&'static PciDisk> {
    use sha2::Digest as _;
    if let Some(d) = PCI_DISK.get() {
        return Ok(d);
    }
    prereq::ensure(&[&prereq::MKE2FS])?;
    let linux_dir = artifacts::build_dir().join("linux");
    // Earlier runs' images, whose xtask process is gone.
    if let Ok(entries) = fs::read_dir(&linux_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("pcidisk-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = linux_dir.join(format!("pcidisk-{}", std::process::id()));
    let content = dir.join("content");
    fs::create_dir_all(&content).with_context(|| format!("creating {}", content.display()))?;
    let mut data = vec![0u8; 256 << 10];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .context("reading /dev/urandom")?;
    fs::write(content.join(DISK_FILE), &data)?;
    let image = dir.join("disk.img");
    let _ = fs::remove_file(&image);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-L", "rampart", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("4M"))
    .context("making the virtio-blk-pci disk image")?;
    let sha256: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    Ok(PCI_DISK.get_or_init(|| PciDisk { image, sha256 }))
}

/// Puts QEMU's PCIe root complex behind its SMMUv3 (`iommu=smmuv3`), adds
/// a `virtio-blk-pci` disk ([`pci_disk`], read-only) and a
/// `virtio-rng-pci`, and asks `/init` to use both ([`PCI_DISK_FLAG`]).
pub fn add_pci_devices(m: &mut crate::qemu::Machine) -> Result<()> {
    let disk = pci_disk()?;
    m.smmu = true;
    m.extra.extend([
        "-drive".to_string(),
        format!("if=none,id=rdisk,format=raw,readonly=on,file={}", disk.image.display()),
        "-device".to_string(),
        "virtio-blk-pci,drive=rdisk".to_string(),
        "-device".to_string(),
        "virtio-rng-pci".to_string(),
    ]);
    m.append.push(' ');
    m.append.push_str(PCI_DISK_FLAG);
    Ok(())
}

/// Checks what `/init` reported of the PCI devices [`add_pci_devices`]
/// added: the disk's file read back with the checksum xtask computed, 32
/// bytes from the rng, and Rampart's log saying the root complex stayed
/// behind its SMMU.
pub fn check_pci_devices(console: &str) -> Result<String> {
    let disk = pci_disk()?;
    let line = |key: &str| {
        console
            .lines()
            .find_map(|l| l.split_once(&format!("{REPORT_PREFIX}{key}=")).map(|(_, v)| v.trim().to_string()))
    };
    if !console.lines().any(|l| l.starts_with("rampart: DMA: PCIe root complex ") && l.contains("stays with the host behind the SMMU")) {
        bail!("Rampart's boot log does not keep the PCIe root complex behind the SMMU");
    }
    let sha = line("pcidisk-sha256").context("/init printed no pcidisk-sha256 line")?;
    if sha != disk.sha256 {
        bail!("the host read {DISK_FILE} from the virtio-blk-pci disk with SHA-256 {sha}, want {}", disk.sha256);
    }
    let rng = line("pcirng").context("/init printed no pcirng line")?;
    let (device, bytes) = rng.split_once(' ').unwrap_or((rng.as_str(), ""));
    if !device.starts_with("virtio_rng") || bytes.len() != 64 || bytes.chars().all(|c| c == '0') {
        bail!("the virtio-rng-pci read gave `{rng}`, want `virtio_rng.N` and 32 bytes");
    }
    Ok(format!("virtio-blk-pci disk mounted, {DISK_FILE} SHA-256 {}..., 32 bytes from {device}", &sha[..12]))
}

// ---------------------------------------------------------------------------
// Fetching from Debian.

struct Debian {
    kernel: PathBuf,
    kernel_package: String,
    kernel_version: String,
    busybox: PathBuf,
}

/// A package extracted under `build/debian/<slot>/`, described by the stamp
/// file `build/debian/<slot>/.rampart-package` ("name version").
struct Extracted {
    root: PathBuf,
    package: String,
    version: String,
}

const STAMP: &str = ".rampart-package";

fn debian_dir() -> PathBuf {
    artifacts::build_dir().join("debian")
}

/// Returns the kernel `Image` and busybox, fetching them if not cached.
fn fetch() -> Result<Debian> {
    let dir = debian_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // One fetch at a time: other xtask processes may share this build dir.
    let lock = File::create(dir.join(".lock")).context("creating build/debian/.lock")?;
    lock.lock().context("locking build/debian/.lock")?;

    let mut kernel = cached(&dir.join("kernel"));
    let mut busybox = cached(&dir.join("busybox"));
    if kernel.is_none() || busybox.is_none() {
        apt_ready()?;
    }
    if kernel.is_none() {
        let (name, version) = resolve_kernel()?;
        eprintln!("xtask: fetching {name} {version} (arm64) from Debian");
        kernel = Some(download_and_extract(
            &format!("{name}:arm64={version}"),
            &dir,
            "kernel",
        )?);
    }
    if busybox.is_none() {
        eprintln!("xtask: fetching {BUSYBOX_PACKAGE} from Debian");
        busybox = Some(download_and_extract(BUSYBOX_PACKAGE, &dir, "busybox")?);
    }
    let (kernel, busybox) = (kernel.expect("fetched"), busybox.expect("fetched"));

    let image = kernel_image(&kernel.root)?;
    let busybox_bin = busybox.root.join("bin/busybox");
    if !busybox_bin.is_file() {
        bail!(
            "{} has no bin/busybox: delete {} and run again",
            busybox.root.display(),
            busybox.root.display()
        );
    }
    Ok(Debian {
        kernel: image,
        kernel_package: kernel.package,
        kernel_version: kernel.version,
        busybox: busybox_bin,
    })
}

/// The package extracted in `root`, if it is complete.
fn cached(root: &Path) -> Option<Extracted> {
    let stamp = fs::read_to_string(root.join(STAMP)).ok()?;
    let (package, version) = stamp.trim().split_once(' ')?;
    Some(Extracted {
        root: root.to_path_buf(),
        package: package.into(),
        version: version.into(),
    })
}

/// Makes sure apt knows arm64 packages: as root, adds the architecture if
/// needed and runs `apt-get update`; otherwise checks that someone has.
fn apt_ready() -> Result<()> {
    for tool in ["apt-get", "apt-cache", "dpkg", "dpkg-deb"] {
        if !prereq::have(tool) {
            bail!(
                "fetching Debian's arm64 kernel needs `{tool}` (a Debian or Ubuntu build machine)"
            );
        }
    }
    let has_arm64 = || -> Result<bool> {
        let out = Command::new("dpkg")
            .arg("--print-foreign-architectures")
            .output()
            .context("running dpkg --print-foreign-architectures")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|a| a == "arm64"))
    };
    if !prereq::is_root() {
        if !has_arm64()? {
            bail!(
                "Debian's arm64 kernel is not in {} yet: {ROOT_HINT}",
                debian_dir().display()
            );
        }
        return Ok(());
    }
    if !has_arm64()? {
        eprintln!("xtask: dpkg --add-architecture arm64");
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    eprintln!("xtask: apt-get update");
    prereq::apt_get(&["update"])
}

/// The exact kernel package (name, version) the meta-package depends on.
fn resolve_kernel() -> Result<(String, String)> {
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META]))
        .map_err(|e| hint(e.context(format!("looking up {KERNEL_META}"))))?;
    parse_kernel_depends(&show).with_context(|| {
        format!("`apt-cache show {KERNEL_META}` names no linux-image package:\n{show}")
    })
}

/// Finds `linux-image-X (= V)` in the `Depends:` field of `apt-cache show`.
fn parse_kernel_depends(show: &str) -> Option<(String, String)> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends.split([',', '|']).find_map(|dep| {
        let dep = dep.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        let name = name.split(':').next()?;
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
        Some((name.to_string(), version.to_string()))
    })
}

/// `apt-get download`s `spec` and `dpkg -x`es it into `dir/<slot>`.
fn download_and_extract(spec: &str, dir: &Path, slot: &str) -> Result<Extracted> {
    let work = dir.join(format!(".{slot}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = (|| {
        run(Command::new("apt-get")
            .args(["download", spec])
            .current_dir(&work))
        .map_err(|e| hint(e.context(format!("downloading {spec}"))))?;
        let deb = fs::read_dir(&work)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {spec} left no .deb"))?;
        let fields = run(Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .args(["Package", "Version"]))?;
        let field = |f: &str| {
            fields
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .map(|v| v.trim().to_string())
        };
        let (package, version) = (
            field("Package:").context("the .deb has no Package field")?,
            field("Version:").context("the .deb has no Version field")?,
        );
        let root = work.join("root");
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("extracting {}", deb.display()))?;
        fs::write(root.join(STAMP), format!("{package} {version}\n"))?;
        let dest = dir.join(slot);
        let _ = fs::remove_dir_all(&dest);
        fs::rename(&root, &dest).with_context(|| format!("moving into {}", dest.display()))?;
        Ok(Extracted {
            root: dest,
            package,
            version,
        })
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// The kernel `Image` in an extracted kernel package. Debian's arm64
/// `/boot/vmlinuz-*` is the uncompressed `Image`; a gzip'd one is unpacked
/// next to it.
fn kernel_image(root: &Path) -> Result<PathBuf> {
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let head = read_head(&vmlinuz, 64)?;
    if is_arm64_image(&head) {
        return Ok(vmlinuz);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        let image = root.join("Image");
        if !image.exists() || !is_arm64_image(&read_head(&image, 64)?) {
            let tmp = root.join(format!("Image.tmp-{}", std::process::id()));
            let status = Command::new("gzip")
                .arg("-dc")
                .arg(&vmlinuz)
                .stdout(File::create(&tmp)?)
                .status()
                .context("running gzip -dc")?;
            if !status.success() || !is_arm64_image(&read_head(&tmp, 64)?) {
                let _ = fs::remove_file(&tmp);
                bail!("{} does not unpack to an arm64 Image", vmlinuz.display());
            }
            fs::rename(&tmp, &image)?;
        }
        return Ok(image);
    }
    bail!(
        "{} is not an arm64 Image (no ARM\\x64 magic)",
        vmlinuz.display()
    )
}

fn read_head(path: &Path, n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(n);
    File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(n as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// The arm64 boot protocol's `Image` header has "ARM\x64" at offset 0x38.
fn is_arm64_image(head: &[u8]) -> bool {
    head.get(0x38..0x3c) == Some(b"ARM\x64")
}

/// Runs a command; returns its stdout, or fails with its output.
fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds the root hint to an apt failure when not running as root.
fn hint(e: anyhow::Error) -> anyhow::Error {
    if prereq::is_root() {
        e
    } else {
        e.context(format!("apt has no arm64 packages: {ROOT_HINT}"))
    }
}

// ---------------------------------------------------------------------------
// The initramfs.

/// Packs busybox, `/init` and the extras into `build/linux/`, named after a
/// hash of the content, so an existing file is reused as is.
fn build_initramfs(
    busybox: &Path,
    extra_files: &[(PathBuf, &str)],
    init_extra: &str,
) -> Result<PathBuf> {
    let mut a = cpio::Newc::new();
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root", "run",
    ] {
        a.dir(d)?;
    }
    // The kernel's built-in initramfs has /dev/console too; keep this
    // archive self-contained so /init always has a console.
    a.char_device("dev/console", 0o600, 5, 1)?;
    let bb = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    a.file("bin/busybox", 0o755, &bb)?;
    a.symlink("bin/sh", "busybox")?;
    a.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    if !init_extra.is_empty() {
        a.file(INIT_EXTRA_PATH, 0o644, init_extra.as_bytes())?;
    }
    for (src, path) in extra_files {
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let perm = perm_of(src)?;
        a.file(path, perm, &data)
            .with_context(|| format!("adding {}", src.display()))?;
    }
    let archive = a.finish();

    let mut h = std::hash::DefaultHasher::new();
    archive.hash(&mut h);
    let dir = artifacts::build_dir().join("linux");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("initramfs-{:016x}.cpio.gz", h.finish()));
    if out.is_file() {
        return Ok(out);
    }
    let tmp = dir.join(format!(".initramfs.tmp-{}", std::process::id()));
    gzip(&archive, &tmp).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

#[cfg(unix)]
fn perm_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

#[cfg(not(unix))]
fn perm_of(_: &Path) -> Result<u32> {
    Ok(0o755)
}

/// `gzip -n` `data` into `out`.
pub(crate) fn gzip(data: &[u8], out: &Path) -> Result<()> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(File::create(out).with_context(|| format!("creating {}", out.display()))?)
        .spawn()
        .context("running gzip")?;
    child
        .stdin
        .take()
        .context("gzip stdin")?
        .write_all(data)
        .context("writing to gzip")?;
    let status = child.wait().context("waiting for gzip")?;
    if !status.success() {
        bail!("gzip failed ({status}) writing {}", out.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading `/init`'s report back.

/// What `/init` reported on the console.
#[allow(
    dead_code,
    reason = "the API suite.rs's Linux cases read /init's report with"
)]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// `/init` started (the `start` marker).
    pub started: bool,
    /// Number of online CPUs.
    pub cpus_online: Option<u32>,
    /// Reserved ranges of `/proc/iomem`: (start, end inclusive, name).
    pub reserved: Vec<(u64, u64, String)>,
    /// `/proc/iomem` as printed, one entry per line, indentation kept.
    pub iomem: Vec<String>,
    /// What follows `devmem-carveout=`: `SIGBUS`, `DATA <value>`,
    /// `ERROR <status> <output>` or `NO-CARVEOUT`.
    pub devmem: Option<String>,
    /// `/init` kept running after its checks.
    pub alive: bool,
    /// `/init` finished and is powering off.
    pub done: bool,
}

#[allow(
    dead_code,
    reason = "the API suite.rs's Linux cases read /init's report with"
)]
impl InitReport {
    /// The `/proc/iomem` entries as (depth, start, end inclusive, name);
    /// depth 0 is top level, each level nests two spaces deeper.
    ///
    /// On arm64 a `no-map` reserved-memory region (such as the hypervisor's
    /// carve-out) is a top-level `reserved` entry that splits `System RAM`,
    /// while memblock reservations inside RAM are `reserved` at depth 1.
    pub fn iomem_entries(&self) -> Vec<(usize, u64, u64, String)> {
        self.iomem
            .iter()
            .filter_map(|line| {
                let body = line.trim_start_matches(' ');
                let depth = (line.len() - body.len()) / 2;
                let (range, name) = body.split_once(" : ")?;
                let (start, end) = range.split_once('-')?;
                let start = u64::from_str_radix(start, 16).ok()?;
                let end = u64::from_str_radix(end.trim(), 16).ok()?;
                Some((depth, start, end, name.trim().to_string()))
            })
            .collect()
    }

    /// The top-level `reserved` ranges of `/proc/iomem`: those the kernel
    /// does not map as RAM at all (`no-map` reserved memory).
    pub fn unmapped_reserved(&self) -> Vec<(u64, u64)> {
        self.iomem_entries()
            .into_iter()
            .filter(|(depth, _, _, name)| *depth == 0 && name == "reserved")
            .map(|(_, start, end, _)| (start, end))
            .collect()
    }
}

/// Parses the `RAMPART-INIT: ` lines of a console log. Text before the
/// prefix on a line (kernel messages interleaved on the console) is ignored.
#[allow(
    dead_code,
    reason = "the API suite.rs's Linux cases read /init's report with"
)]
pub fn parse_report(console: &str) -> InitReport {
    let mut r = InitReport::default();
    for line in console.lines() {
        let Some(at) = line.find(REPORT_PREFIX) else {
            continue;
        };
        let msg = line[at + REPORT_PREFIX.len()..].trim_end_matches(['\r', '\n']);
        if let Some(raw) = msg.strip_prefix("iomem ") {
            r.iomem.push(raw.to_string());
            continue;
        }
        let msg = msg.trim();
        if msg == "start" {
            r.started = true;
        } else if msg == "alive" {
            r.alive = true;
        } else if msg == "done" {
            r.done = true;
        } else if let Some(n) = msg.strip_prefix("cpus-online=") {
            r.cpus_online = n.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) = msg.strip_prefix("devmem-carveout=") {
            r.devmem = Some(v.trim().to_string());
        } else if let Some(rest) = msg.strip_prefix("reserved ") {
            let (range, name) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                r.reserved.push((start, end, name.trim().to_string()));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
[    1.234567] Run /init as init process
RAMPART-INIT: start\r
RAMPART-INIT: cpus-online=4
RAMPART-INIT: cpus-online-list=0-3
RAMPART-INIT: reserved 40000000-403fffff reserved
RAMPART-INIT: reserved 7ff00000-7fffffff reserved
RAMPART-INIT: iomem 09000000-09000fff : pl011@9000000
RAMPART-INIT: iomem   09000000-09000fff : 9000000.pl011 pl011@9000000
RAMPART-INIT: iomem 40000000-403fffff : reserved
RAMPART-INIT: iomem 40400000-bfffffff : System RAM
RAMPART-INIT: carveout rampart-hypervisor@40000000 reg=0000000040000000 addr=0x40000000
[    2.000000] some kernel message RAMPART-INIT: devmem-carveout=SIGBUS
RAMPART-INIT: alive
RAMPART-INIT: done
";

    #[test]
    fn parses_a_full_report() {
        let r = parse_report(SAMPLE);
        assert!(r.started && r.alive && r.done);
        assert_eq!(r.cpus_online, Some(4));
        assert_eq!(
            r.reserved,
            vec![
                (0x4000_0000, 0x403f_ffff, "reserved".to_string()),
                (0x7ff0_0000, 0x7fff_ffff, "reserved".to_string())
            ]
        );
        assert_eq!(r.iomem.len(), 4);
        assert_eq!(
            r.iomem[1],
            "  09000000-09000fff : 9000000.pl011 pl011@9000000"
        );
        assert_eq!(r.devmem.as_deref(), Some("SIGBUS"));
        assert_eq!(
            r.iomem_entries()[1],
            (
                1,
                0x900_0000,
                0x900_0fff,
                "9000000.pl011 pl011@9000000".into()
            )
        );
        assert_eq!(r.unmapped_reserved(), vec![(0x4000_0000, 0x403f_ffff)]);
    }

    /// Observed with QEMU virt, 1 GiB, Debian 6.1 kernel at EL1 and a
    /// `no-map` node at 0x7000_0000 added to the DT.
    #[test]
    fn finds_the_no_map_region_among_memblock_reservations() {
        let console = "\
RAMPART-INIT: iomem 10000000-3efeffff : pcie@10000000
RAMPART-INIT: iomem 40000000-6fffffff : System RAM
RAMPART-INIT: iomem   40210000-4158ffff : Kernel code
RAMPART-INIT: iomem   41590000-41a0ffff : reserved
RAMPART-INIT: iomem   41a10000-41caffff : Kernel data
RAMPART-INIT: iomem 70000000-701fffff : reserved
RAMPART-INIT: iomem 70200000-7fffffff : System RAM
RAMPART-INIT: iomem   7ac00000-7fbfffff : reserved
RAMPART-INIT: iomem 4010000000-401fffffff : PCI ECAM
";
        let r = parse_report(console);
        assert_eq!(r.unmapped_reserved(), vec![(0x7000_0000, 0x701f_ffff)]);
        assert_eq!(r.iomem_entries().len(), 9);
        assert_eq!(
            r.iomem_entries()[8],
            (0, 0x40_1000_0000, 0x40_1fff_ffff, "PCI ECAM".into())
        );
    }

    #[test]
    fn parses_devmem_outcomes() {
        let r = parse_report("RAMPART-INIT: devmem-carveout=DATA 0xD503201F\n");
        assert_eq!(r.devmem.as_deref(), Some("DATA 0xD503201F"));
        let r = parse_report(
            "RAMPART-INIT: devmem-carveout=ERROR 1 devmem: /dev/mem: Operation not permitted\n",
        );
        assert_eq!(
            r.devmem.as_deref(),
            Some("ERROR 1 devmem: /dev/mem: Operation not permitted")
        );
        let r = parse_report("RAMPART-INIT: devmem-carveout=NO-CARVEOUT\n");
        assert_eq!(r.devmem.as_deref(), Some("NO-CARVEOUT"));
    }

    #[test]
    fn a_truncated_boot_reports_nothing_more() {
        let r = parse_report(
            "Booting Linux on physical CPU 0x0\nRAMPART-INIT: start\nRAMPART-INIT: cpus-onl",
        );
        assert!(r.started);
        assert_eq!(r.cpus_online, None);
        assert!(!r.alive && !r.done && r.devmem.is_none() && r.reserved.is_empty());
        assert_eq!(parse_report(""), InitReport::default());
    }

    #[test]
    fn ignores_malformed_reserved_lines() {
        let r =
            parse_report("RAMPART-INIT: reserved zz-40 reserved\nRAMPART-INIT: reserved 10-1f\n");
        assert_eq!(r.reserved, vec![(0x10, 0x1f, String::new())]);
    }

    #[test]
    fn resolves_the_kernel_from_the_meta_package() {
        let show = "Package: linux-image-cloud-arm64\nVersion: 6.1.192-2\n\
            Depends: linux-image-6.1.0-56-cloud-arm64 (= 6.1.192-2)\nDescription: x\n";
        assert_eq!(
            parse_kernel_depends(show),
            Some((
                "linux-image-6.1.0-56-cloud-arm64".into(),
                "6.1.192-2".into()
            ))
        );
        let show =
            "Depends: foo (>= 1), linux-image-6.12.9+bpo-cloud-arm64:arm64 (= 6.12.9-1~bpo12+1)\n";
        assert_eq!(
            parse_kernel_depends(show),
            Some((
                "linux-image-6.12.9+bpo-cloud-arm64".into(),
                "6.12.9-1~bpo12+1".into()
            ))
        );
        assert_eq!(parse_kernel_depends("Depends: linux-image-foo\n"), None);
        assert_eq!(parse_kernel_depends("Package: x\n"), None);
    }

    #[test]
    fn recognises_an_arm64_image_header() {
        let mut head = vec![0u8; 64];
        assert!(!is_arm64_image(&head));
        head[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert!(is_arm64_image(&head));
        assert!(!is_arm64_image(&head[..0x3a]));
    }

    /// Boots the kernel and initramfs at EL1 without the hypervisor.
    /// Fetches from Debian on first use; run with
    /// `cargo test -p xtask -- --ignored boots_at_el1 --nocapture`.
    #[test]
    #[ignore = "fetches Debian's kernel and boots it under QEMU (about 10 s)"]
    fn boots_at_el1() {
        let host = prepare().expect("prepare");
        let mut m = crate::qemu::Machine::new(host.kernel);
        m.virtualization = false;
        m.mem = "1G".into();
        m.initrd = Some(host.initramfs);
        m.append = format!("console=ttyAMA0 panic=-1 {DEVMEM_FLAG}");
        let run = m
            .run(std::time::Duration::from_secs(120), None, true)
            .expect("qemu");
        let r = parse_report(&run.console);
        assert!(r.done, "{}", run.failure("no `done`"));
        assert_eq!(r.cpus_online, Some(2));
        assert_eq!(r.devmem.as_deref(), Some("NO-CARVEOUT"));
        assert!(!r.iomem.is_empty());
        assert_eq!(
            run.exit_code,
            Some(0),
            "{}",
            run.failure("no clean power-off")
        );
    }
}
