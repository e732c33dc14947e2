//! Debian's sid arm64 cloud kernel as a Rampart *guest* (issue 11):
//! fetched with apt from a source list of its own, a busybox initramfs for
//! it, and a Linux host whose `/init` boots it with `rampart-vmm run
//! --kernel`.
//!
//! - [`fetch`]: resolves the version from `linux-image-cloud-arm64` in sid
//!   and `apt-get download`s `linux-binary-<ver>-cloud-arm64` and
//!   `linux-modules-<ver>-cloud-arm64`, cached in
//!   `build/linux-guest/<ver>/`.
//! - [`initramfs`]: busybox (the host's, already fetched), the guest's
//!   `/init` (`linux_guest/init.sh`), the virtio modules with their
//!   dependencies (from each module's `depends=`).
//! - [`machine`]: the Linux host with the guest's files in its initramfs
//!   (`/guest/Image`, `/guest/initrd.cpio.gz`) and a guest pool large
//!   enough ([`POOL_MIB`]); its `/init` sources `linux_guest/host.sh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::qemu::{HOST_LOAD_ADDRESS, Machine, Run};
use crate::{artifacts, linux, linux_vmm, prereq};

/// The suite the guest kernel comes from.
const SUITE: &str = "sid";
/// The meta-package naming the current cloud kernel.
const META: &str = "linux-image-cloud-arm64";
/// The guest pool for a Linux guest, MiB (`rampart.pool=`).
pub const POOL_MIB: u32 = 256;
/// The guest's RAM.
pub const GUEST_MEM: &str = "192M";
/// The host's RAM.
pub const HOST_MEM: &str = "1G";
/// The guest's `/init` prints this when it runs.
pub const INIT_MARKER: &str = "RAMPART-GUEST: init reached";

const GUEST_INIT: &str = include_str!("linux_guest/init.sh");
const HOST_SCRIPT: &str = include_str!("linux_guest/host.sh");

/// The modules the guest's initramfs carries (their dependencies are
/// added).
const MODULES: [&str; 6] = [
    "virtio_mmio",
    "virtio_blk",
    "vsock",
    "vmw_vsock_virtio_transport",
    "vmw_vsock_virtio_transport_common",
    "virtio-rng",
];

/// The guest kernel, fetched.
pub struct GuestKernel {
    /// The `Image`.
    pub image: PathBuf,
    /// `usr/lib/modules/<ver>` of the extracted modules package.
    pub modules: PathBuf,
    /// e.g. `7.2.13+deb14-cloud-arm64`.
    pub version: String,
}

fn dir() -> PathBuf {
    artifacts::build_dir().join("linux-guest")
}

fn apt_options(base: &Path) -> Vec<String> {
    let b = base.display();
    vec![
        format!("-o=Dir::Etc::SourceList={b}/sources.list"),
        "-o=Dir::Etc::SourceParts=/nonexistent".into(),
        format!("-o=Dir::State::Lists={b}/lists"),
        format!("-o=Dir::Cache={b}/cache"),
        "-o=APT::Architecture=arm64".into(),
        "-o=APT::Architectures=arm64".into(),
    ]
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel ABI version `linux-image-cloud-arm64` depends on in sid:
/// `linux-image-<ver>-cloud-arm64 (= ...)` → `<ver>-cloud-arm64`.
fn parse_version(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends.split([',', '|']).find_map(|d| {
        let name = d.trim().split([' ', ':']).next()?;
        let ver = name.strip_prefix("linux-image-")?;
        (ver.ends_with("-cloud-arm64") && ver != "cloud-arm64").then(|| ver.to_string())
    })
}

/// Fetches (or finds cached) Debian sid's cloud kernel for the guest.
///
/// # Errors
///
/// Says what failed and why (no apt, no network, no such package).
pub fn fetch() -> Result<GuestKernel> {
    let base = dir();
    let apt = base.join("apt");
    fs::create_dir_all(apt.join("lists/partial"))?;
    fs::create_dir_all(apt.join("cache/archives/partial"))?;
    let lock = fs::File::create(base.join(".lock")).context("creating build/linux-guest/.lock")?;
    lock.lock().context("locking build/linux-guest/.lock")?;
    // A cached kernel is used as it is (delete build/linux-guest to refresh).
    if let Some(k) = cached(&base)? {
        return Ok(k);
    }
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        if !prereq::have(tool) {
            bail!(
                "fetching Debian's sid kernel for the guest needs `{tool}` (a Debian or Ubuntu build machine)"
            );
        }
    }
    fs::write(
        apt.join("sources.list"),
        format!(
            "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {SUITE} main\n"
        ),
    )?;
    let opts = apt_options(&apt);
    eprintln!("xtask: apt-get update (Debian {SUITE}, arm64, a source list of its own)");
    run(
        Command::new("apt-get").args(&opts).arg("update"),
        "apt-get update for Debian sid",
    )?;
    let show = run(
        Command::new("apt-cache")
            .args(&opts)
            .args(["show", "--no-all-versions", META]),
        &format!("looking up {META} in sid"),
    )?;
    let version = parse_version(&show).with_context(|| {
        format!("`apt-cache show {META}` (sid) names no linux-image-<ver>-cloud-arm64:\n{show}")
    })?;
    let dl = base.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    let packages = [
        format!("linux-binary-{version}"),
        format!("linux-modules-{version}"),
    ];
    eprintln!(
        "xtask: fetching {} and {} (arm64) from Debian {SUITE}",
        packages[0], packages[1]
    );
    run(
        Command::new("apt-get")
            .args(&opts)
            .arg("download")
            .args(&packages)
            .current_dir(&dl),
        &format!("apt-get download {}", packages.join(" ")),
    )?;
    let root = dl.join("root");
    for deb in fs::read_dir(&dl)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if deb.extension().is_some_and(|x| x == "deb") {
            run(
                Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
                &format!("extracting {}", deb.display()),
            )?;
        }
    }
    let dest = base.join(&version);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&root, &dest).with_context(|| format!("moving into {}", dest.display()))?;
    let _ = fs::remove_dir_all(&dl);
    fs::write(base.join("version"), format!("{version}\n"))?;
    cached(&base)?.context("the fetched kernel has no usr/lib/modules/<ver>/vmlinuz")
}

fn cached(base: &Path) -> Result<Option<GuestKernel>> {
    let Ok(version) = fs::read_to_string(base.join("version")) else {
        return Ok(None);
    };
    let version = version.trim().to_string();
    let modules = base.join(&version).join("usr/lib/modules").join(&version);
    let image = modules.join("vmlinuz");
    if !image.is_file() {
        return Ok(None);
    }
    Ok(Some(GuestKernel {
        image,
        modules,
        version,
    }))
}

/// Every `.ko*` under `modules/kernel`, by module name (`-` and `_` are the
/// same).
fn index_modules(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = name.split(".ko").next()
                && name.contains(".ko")
            {
                out.push((stem.replace('-', "_"), p.clone()));
            }
        }
    }
    Ok(out)
}

/// A module's `depends=` (from its `.modinfo`, read as text).
fn depends_of(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The guest's initramfs: busybox, `/init`, the modules (dependencies
/// first, in `/lib/modules/rampart/` with a load-order prefix).
///
/// # Errors
///
/// Missing busybox or modules, or compressed modules it cannot read.
pub fn initramfs(k: &GuestKernel, extra: &str) -> Result<PathBuf> {
    initramfs_with(k, extra, &[], "")
}

/// [`initramfs`] with `more` modules (and their dependencies) besides
/// [`MODULES`], written as `initrd-<tag>-<version>.cpio.gz` (issue 12's
/// realm adds `arm-cca-guest`).
///
/// # Errors
///
/// As [`initramfs`].
pub fn initramfs_with(k: &GuestKernel, extra: &str, more: &[&str], tag: &str) -> Result<PathBuf> {
    let busybox = artifacts::build_dir().join("debian/busybox/bin/busybox");
    if !busybox.is_file() {
        bail!(
            "{} is missing: the Linux host's fetch provides it (cargo xtask run --host linux)",
            busybox.display()
        );
    }
    let index = index_modules(&k.modules)?;
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    fn add(
        name: &str,
        index: &[(String, PathBuf)],
        order: &mut Vec<(String, Vec<u8>)>,
        depth: u32,
    ) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) || depth > 16 {
            return Ok(());
        }
        let Some((_, path)) = index.iter().find(|(n, _)| n == name) else {
            bail!("module {name} is not in the guest kernel's modules package");
        };
        let fname = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Debian compresses its modules: unpack them (busybox's insmod
        // loads plain ELF).
        let unpack = if fname.ends_with(".xz") {
            Some("xz")
        } else if fname.ends_with(".zst") {
            Some("zstd")
        } else if fname.ends_with(".gz") {
            Some("gzip")
        } else {
            None
        };
        let data = match unpack {
            Some(tool) => {
                let out = Command::new(tool)
                    .args(["-d", "-c"])
                    .arg(path)
                    .output()
                    .with_context(|| {
                        format!("running {tool} -d on {} (install {tool})", path.display())
                    })?;
                if !out.status.success() {
                    bail!(
                        "{tool} -d {} failed: {}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                out.stdout
            }
            None => fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        };
        for dep in depends_of(&data) {
            add(&dep, index, order, depth + 1)?;
        }
        order.push((name.to_string(), data));
        Ok(())
    }
    for m in MODULES.iter().chain(more) {
        add(&m.replace('-', "_"), &index, &mut order, 0)?;
    }
    let mut a = linux::cpio::Newc::new();
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "root",
        "run",
        "lib",
        "lib/modules",
        "lib/modules/rampart",
    ] {
        a.dir(d)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("bin/busybox", 0o755, &fs::read(&busybox)?)?;
    a.symlink("bin/sh", "busybox")?;
    a.file("init", 0o755, GUEST_INIT.as_bytes())?;
    if !extra.is_empty() {
        a.file("guest-extra.sh", 0o644, extra.as_bytes())?;
    }
    for (i, (name, data)) in order.iter().enumerate() {
        a.file(
            &format!("lib/modules/rampart/{i:02}-{name}.ko"),
            0o644,
            data,
        )?;
    }
    let archive = a.finish();
    let out = if tag.is_empty() {
        dir().join(format!("initrd-{}.cpio.gz", k.version))
    } else {
        dir().join(format!("initrd-{tag}-{}.cpio.gz", k.version))
    };
    let tmp = dir().join(format!(".initrd.tmp-{}", std::process::id()));
    linux::gzip(&archive, &tmp)?;
    fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// What the host does with the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Boot it and let it power off.
    Boot,
    /// SIGTERM `rampart-vmm` while the guest runs.
    Sigterm,
}

/// The Linux host (`smp` CPUs) with the guest (`vcpus`) in its initramfs.
///
/// # Errors
///
/// Fetching or building anything failed.
pub fn machine(smp: u32, vcpus: u32, mode: Mode, guest_extra: &str) -> Result<Machine> {
    prereq::ensure(&[&prereq::CPIO])?;
    let kernel = fetch()?;
    // The host's kernel and busybox first (the guest's initramfs reuses busybox).
    let _ = linux::prepare()?;
    let initrd = initramfs(&kernel, guest_extra)?;
    let vmm = linux_vmm::vmm_binary()?;
    let script = format!(
        "GUEST_CPUS={vcpus}\nGUEST_MEM={GUEST_MEM}\nGUEST_MODE={}\n{HOST_SCRIPT}",
        match mode {
            Mode::Boot => "boot",
            Mode::Sigterm => "sigterm",
        }
    );
    let files = vec![
        (vmm, "bin/rampart-vmm"),
        (kernel.image.clone(), "guest/Image"),
        (initrd, "guest/initrd.cpio.gz"),
    ];
    let host = linux::prepare_with(&files, &script)?;
    let mut m = Machine::new(artifacts::hypervisor()?);
    m.smp = smp;
    m.mem = HOST_MEM.into();
    m.cpu = "max".into();
    m.loaders.push((host.kernel, HOST_LOAD_ADDRESS));
    m.initrd = Some(host.initramfs);
    m.append = format!(
        "rampart.host={HOST_LOAD_ADDRESS:#x} rampart.pool={POOL_MIB} -- console=ttyAMA0 earlycon panic=-1 {}",
        linux::BRIEF_FLAG
    );
    Ok(m)
}

/// One boot's time limit: the host, then the guest under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Boots the host with the guest and returns the run (its console saved
/// in `build/linux-guest/<name>.log`).
///
/// # Errors
///
/// Building or running QEMU failed.
pub fn boot(name: &str, smp: u32, vcpus: u32, mode: Mode) -> Result<Run> {
    let m = machine(smp, vcpus, mode, "")?;
    let run = m.run(BOOT_TIMEOUT, None, false)?;
    let _ = fs::write(
        dir().join(format!("{}.log", name.replace('/', "-"))),
        &run.console,
    );
    Ok(run)
}

/// The issue-11 cases of `cargo xtask test`: Debian's sid kernel boots to
/// its `/init` as a guest with 1 vCPU on a 4-CPU Linux host and powers off;
/// with 4 vCPUs, SIGTERM to `rampart-vmm` while it runs tears it down with
/// its RAM zeroed.
pub fn cases(args: &crate::suite::TestArgs, case: &mut crate::linux_vmm::CaseFn<'_>) {
    if args.no_linux {
        return;
    }
    // The boot to a clean power-off (`check_boot`: the guest powers off,
    // rampart-vmm exits 0, the VM's pages come back zeroed) runs inside
    // `linux-guest/smp2/vcpus2/virtio` (2 vCPUs, with the devices:
    // xtask/src/virtio_e2e.rs). A 1-vCPU boot of its own was dropped to
    // keep the suite inside its time budget: it repeated that path and
    // differed only in having no secondary vCPU (75 s on 2 cores).
    //
    // Four vCPUs on the four host CPUs: the guest reaches its `/init` with
    // all of them online (SGIs, the timer on every vCPU, queued interrupts
    // placed through the "no pending" maintenance interrupt), then SIGTERM.
    case("linux-guest/smp4/vcpus4/sigterm".into(), &|| {
        let run = boot("linux-guest/smp4/vcpus4/sigterm", 4, 4, Mode::Sigterm)?;
        let vcpus = check_vcpus(&run.console, 4).map_err(|e| anyhow::anyhow!(run.failure(&e)));
        let done = check_sigterm(&run.console).map_err(|e| anyhow::anyhow!(run.failure(&e)))?;
        vcpus?;
        Ok(format!("{done}; 4 vCPUs online at the guest's /init"))
    });
}

/// The guest's `/init` saw `vcpus` CPUs online (`cpus 0` or `cpus 0-N`).
///
/// # Errors
///
/// The `/init` line, when it says otherwise.
pub fn check_vcpus(console: &str, vcpus: u32) -> Result<(), String> {
    let want = if vcpus == 1 {
        "cpus 0".to_string()
    } else {
        format!("cpus 0-{}", vcpus - 1)
    };
    let init = console
        .lines()
        .find(|l| l.contains(INIT_MARKER))
        .unwrap_or_default();
    if init.trim_end().ends_with(&want) {
        Ok(())
    } else {
        Err(format!("the guest did not see {vcpus} vCPU(s): {init}"))
    }
}

/// The first and last word of the guest's RAM read 0 through `/dev/mem`
/// after the run (`host.sh`).
///
/// # Errors
///
/// What was found instead.
pub fn check_zeroed(console: &str) -> Result<String, String> {
    let line = console
        .lines()
        .find_map(|l| l.split("RAMPART-INIT: guest RAM after the run: ").nth(1))
        .ok_or("no `guest RAM after the run` line")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [a, x, b, y] if is_zero(x) && is_zero(y) => {
            Ok(format!("guest RAM {a}..{b} reads 0 afterwards"))
        }
        _ => Err(format!("guest RAM after the run is not zero: {line}")),
    }
}

fn is_zero(word: &str) -> bool {
    word.strip_prefix("0x")
        .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b == b'0'))
}

/// SIGTERM while the guest runs: `rampart-vmm` stops its vCPUs, destroys
/// the VM (pages reclaimed), zeroes the RAM and exits 143.
///
/// # Errors
///
/// The first thing missing.
pub fn check_sigterm(console: &str) -> Result<String, String> {
    let find = |s: &str| console.lines().find(|l| l.contains(s));
    find("RAMPART-GUEST: sleeping").ok_or("the guest never reached its /init")?;
    find("RAMPART-INIT: SIGTERM to rampart-vmm").ok_or("the host never sent SIGTERM")?;
    if find("RAMPART-GUEST: powering off").is_some() {
        return Err("the guest powered off by itself: the signal did not stop it".into());
    }
    let status =
        find("RAMPART-INIT: rampart-vmm exit status").ok_or("rampart-vmm did not finish")?;
    if !status.ends_with("status 143") {
        return Err(format!(
            "want exit status 143 (SIGTERM after a clean teardown): {status}"
        ));
    }
    let reclaimed =
        find("reclaimed, zeroed by the hypervisor").ok_or("the VM's pages were not reclaimed")?;
    let zeroed = check_zeroed(console)?;
    let live = console
        .lines()
        .filter(|l| l.starts_with("RAMPART-INIT: list: ") && l.contains("0x"))
        .count();
    if live != 0 {
        return Err(format!("{live} VM(s) still listed after the teardown"));
    }
    Ok(format!("{}; {zeroed}", reclaimed.trim()))
}

/// `cargo xtask run --guest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Guest {
    /// Debian's sid cloud kernel, booted by `rampart-vmm run --kernel`.
    Linux,
    /// The same kernel as a confidential realm VM from a signed bundle
    /// (issue 12; the same as `--guest linux --protected`; the realm of
    /// `linux-realm/smp2/vcpus2`: 2 CPUs, 2 vCPUs).
    Realm,
}

/// The machine of `cargo xtask run --host linux --guest linux
/// [--guest-cpus N]` (2 vCPUs by default).
///
/// # Errors
///
/// As [`machine`].
pub fn demo_machine(smp: u32, vcpus: u32) -> Result<Machine> {
    // With the virtio devices (disk, entropy, vsock): xtask/src/virtio_e2e.rs.
    crate::virtio_e2e::machine(smp, vcpus)
}

/// After the demo: the guest reached its `/init` and `rampart-vmm` ended
/// cleanly.
///
/// # Errors
///
/// Says which step is missing.
pub fn after_demo(run: &Run) -> Result<()> {
    crate::virtio_e2e::after_demo(run)
}

/// The checks of a boot: the guest's `/init` ran, it powered off,
/// `rampart-vmm` exited 0 and the VM was destroyed with its pages
/// reclaimed.
///
/// # Errors
///
/// The first thing missing.
pub fn check_boot(console: &str) -> Result<String, String> {
    let find = |s: &str| console.lines().find(|l| l.contains(s));
    let init = find(INIT_MARKER).ok_or("the guest never reached its /init")?;
    find("RAMPART-GUEST: powering off").ok_or("the guest's /init did not power off")?;
    let status =
        find("RAMPART-INIT: rampart-vmm exit status").ok_or("rampart-vmm did not finish")?;
    if !status.ends_with("status 0") {
        return Err(format!("rampart-vmm failed: {status}"));
    }
    let reclaimed =
        find("reclaimed, zeroed by the hypervisor").ok_or("the VM's pages were not reclaimed")?;
    Ok(format!("{}; {}", init.trim(), reclaimed.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_a_clean_sigterm() {
        let good = "RAMPART-GUEST: sleeping until\nRAMPART-INIT: SIGTERM to rampart-vmm (7)\n\
            [linux] rampart-vmm: VM 0x1000 destroyed; 9 pages (36 KiB) reclaimed, zeroed by the hypervisor\n\
            RAMPART-INIT: rampart-vmm exit status 143\n\
            RAMPART-INIT: guest RAM after the run: 0x6fe00000 0x0000000000000000 0x7bdffff8 0x0000000000000000\n";
        assert!(check_sigterm(good).is_ok(), "{:?}", check_sigterm(good));
        assert!(check_sigterm(&good.replace("status 143", "status 1")).is_err());
        assert!(
            check_sigterm(&good.replace(
                "0x7bdffff8 0x0000000000000000",
                "0x7bdffff8 0x0000000000000001"
            ))
            .is_err()
        );
        assert!(check_sigterm(&format!("{good}RAMPART-INIT: list: 0x1000 pid 7\n")).is_err());
        assert!(check_sigterm(&format!("{good}RAMPART-GUEST: powering off\n")).is_err());
    }

    #[test]
    fn resolves_the_version_from_the_meta_package() {
        let show = "Package: linux-image-cloud-arm64\nVersion: 7.2.13-1\n\
            Depends: linux-base-cloud-arm64 (= 7.2.13-1), linux-image-7.2.13+deb14-cloud-arm64 (= 7.2.13-1)\n";
        assert_eq!(
            parse_version(show).as_deref(),
            Some("7.2.13+deb14-cloud-arm64")
        );
        assert_eq!(parse_version("Depends: linux-base-cloud-arm64\n"), None);
        assert_eq!(parse_version("Version: 1\n"), None);
    }

    #[test]
    fn reads_module_dependencies() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=virtio_ring,vsock\0vermagic=7.2\0";
        assert_eq!(depends_of(ko), ["virtio_ring", "vsock"]);
        assert!(depends_of(b"depends=\0").is_empty());
    }
}
