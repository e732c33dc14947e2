//! A writer for the `newc` cpio format, the one the kernel unpacks as an
//! initramfs (see the kernel's Documentation/driver-api/early-userspace/
//! buffer-format.rst).
//!
//! Writing the archive here rather than with `cpio -o` lets it hold device
//! nodes and root-owned files without root, and makes it reproducible: every
//! entry has mtime 0, uid 0 and gid 0, and entries keep the order they were
//! added in.

use std::collections::BTreeSet;

use anyhow::{Result, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being built in memory.
#[derive(Default)]
pub struct Newc {
    out: Vec<u8>,
    next_ino: u32,
    paths: BTreeSet<String>,
}

impl Newc {
    /// An empty archive.
    pub fn new() -> Self {
        Newc {
            out: Vec::new(),
            next_ino: 1,
            paths: BTreeSet::new(),
        }
    }

    /// Adds a directory (and any missing parents).
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if self.paths.contains(&path) {
            return Ok(());
        }
        self.entry(&path, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link at `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0);
        self.out
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if !self.paths.contains(parent) {
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        if !self.paths.insert(path.to_string()) {
            bail!("initramfs: `{path}` added twice");
        }
        let Ok(size) = u32::try_from(data.len()) else {
            bail!("initramfs: `{path}` is larger than 4 GiB");
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, nlink, rdev, size);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32) {
        let name_size = u32::try_from(name.len() + 1).expect("short path");
        // ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

/// Strips leading `/` and `./`, and refuses empty, `.` and `..` components.
fn normalize(path: &str) -> Result<String> {
    let trimmed = path
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("initramfs: bad path `{path}`");
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one entry.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads the archive back.
    fn parse(mut a: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&a[..6], b"070701", "magic at {offset}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&a[110..name_end - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[name_end - 1], 0);
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size as usize;
            let next = data_end.next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(next, a.len());
                return entries;
            }
            entries.push((name, mode, (rmaj, rmin), a[data_start..data_end].to_vec()));
            offset += next;
            a = &a[next..];
        }
    }

    #[test]
    fn writes_parents_first_and_pads_to_four() {
        let mut c = Newc::new();
        c.file("/bin/busybox", 0o755, b"12345").unwrap();
        c.char_device("dev/console", 0o600, 5, 1).unwrap();
        c.symlink("bin/sh", "busybox").unwrap();
        c.dir("bin").unwrap(); // already there: no second entry
        let bytes = c.finish();
        assert!(bytes.len().is_multiple_of(4));
        let e = parse(&bytes);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "dev", "dev/console", "bin/sh"]
        );
        assert_eq!(e[0].1, S_IFDIR | 0o755);
        assert_eq!(
            (e[1].1, e[1].3.as_slice()),
            (S_IFREG | 0o755, &b"12345"[..])
        );
        assert_eq!((e[3].1, e[3].2), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(
            (e[4].1, e[4].3.as_slice()),
            (S_IFLNK | 0o777, &b"busybox"[..])
        );
    }

    #[test]
    fn refuses_duplicates_and_bad_paths() {
        let mut c = Newc::new();
        c.file("init", 0o755, b"x").unwrap();
        assert!(c.file("/init", 0o755, b"y").is_err());
        assert!(c.file("", 0o644, b"").is_err());
        assert!(c.file("a/../b", 0o644, b"").is_err());
        assert!(c.file("a//b", 0o644, b"").is_err());
    }
}
