//! The `rampart-vmm` binary's command line, run on the build machine:
//! exit statuses, `--version`, completions, the man page, and what it says
//! when `--dev-mem` does not reach Rampart's control pages (a fake device
//! tree like Rampart's, and files or devices that are not `/dev/mem`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("rampart-vmm-cli-{tag}-{}", std::process::id()));
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

/// The control node and the guest pool as Rampart describes them.
fn write_tree(root: &Path) {
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
        &cells(&[0, 0x4110_0000, 0, 16 * 4096]),
    );
    put("rampart-control@41100000/rampart,channels", &cells(&[16]));
    put("reserved-memory/#address-cells", &cells(&[2]));
    put("reserved-memory/#size-cells", &cells(&[2]));
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

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart-vmm"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `rampart-vmm --dt <fake> --dev-mem DEV --state-dir <scratch> info`.
fn info_with(s: &Scratch, dev: &str) -> (Option<i32>, String) {
    let dt = s.0.join("dt");
    write_tree(&dt);
    let state = s.0.join("state");
    let out = vmm(&[
        "--dt",
        dt.to_str().unwrap(),
        "--dev-mem",
        dev,
        "--state-dir",
        state.to_str().unwrap(),
        "info",
    ]);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn argument_errors_are_usage_errors_with_status_2() {
    for cpus in ["0", "64", "many"] {
        let out = vmm(&["run", "x.bundle", "--cpus", cpus]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--cpus {cpus}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("--cpus"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = vmm(&["run", "x.bundle", "--mem", "1X"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = vmm(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn the_help_documents_a_refusal_status_apart_from_usage_errors() {
    let out = vmm(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("2 usage error"), "{help}");
    assert!(
        help.contains("4 the hypervisor refused the bundle"),
        "{help}"
    );
}

#[test]
fn version_completions_and_man_page() {
    let out = vmm(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("rampart-vmm {}", env!("CARGO_PKG_VERSION"))
    );
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef rampart-vmm"),
        ("fish", "complete -c rampart-vmm"),
    ] {
        let out = vmm(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("reclaim"), "{shell}: {script}");
    }
    let out = vmm(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(page.contains(".TH rampart-vmm"), "{page}");
    assert!(page.contains("reclaim"), "{page}");
}

/// `/dev/zero` mapped at the control pages' offset is memory whose every
/// access aborts: the VMM used to die of SIGBUS (status 135) suggesting a
/// VM left behind.
#[test]
fn dev_zero_is_not_the_control_pages() {
    let s = Scratch::new("zero");
    let (code, err) = info_with(&s, "/dev/zero");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("/dev/zero is the character device 1:5, not the physical-memory device"),
        "{err}"
    );
    assert!(
        !err.contains("left behind") && !err.contains("reclaim"),
        "{err}"
    );
}

/// A file that does not reach the control pages' offset: the probe's load
/// aborts in a child, and the error names the file.
#[test]
fn a_file_that_aborts_is_named_and_the_vmm_does_not_die() {
    let s = Scratch::new("short");
    let file = s.0.join("short-mem");
    fs::write(&file, [0u8; 4096]).unwrap();
    let dev = file.to_str().unwrap();
    let (code, err) = info_with(&s, dev);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{dev} is not Rampart's control pages")) && err.contains("SIGBUS"),
        "{err}"
    );
    assert!(!err.contains("left behind"), "{err}");
}

/// Plain memory at the control pages' offset (a sparse file): loads work,
/// but the doorbell makes no call, which the version check reports.
#[test]
fn plain_memory_is_not_the_control_pages() {
    let s = Scratch::new("plain");
    let file = s.0.join("plain-mem");
    let f = fs::File::create(&file).unwrap();
    f.set_len(0x4120_0000).unwrap();
    let (code, err) = info_with(&s, file.to_str().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not Rampart's control pages"), "{err}");
}
