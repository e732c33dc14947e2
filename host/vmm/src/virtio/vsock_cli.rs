//! `rampart-vmm vsock` (hidden): a small socat for the vsock tests, usable
//! on both ends because busybox has no AF_VSOCK and no Unix-socket socat.
//!
//! Endpoints:
//! - `unix:SOCKET:PORT` (connect): through the VMM's bridge (`CONNECT PORT`,
//!   then `OK ...`), host side;
//! - `unix:PATH` (listen): accepts one connection at `PATH` (the bridge's
//!   `SOCKET_PORT` for guest-initiated connections), host side;
//! - `vsock:CID:PORT` (connect) and `vsock:PORT` (listen): `AF_VSOCK`,
//!   guest side.
//!
//! Without `--echo` standard input goes to the socket (then a write
//! shutdown) while the socket goes to standard output; with `--echo`
//! everything read is written back. `--ping N` measures round trips of
//! 64-byte messages against an echo. A summary goes to standard error.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where to connect or listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The VMM's Unix bridge: socket path and guest port (connect).
    Bridge(PathBuf, u32),
    /// A plain Unix socket path (listen).
    Unix(PathBuf),
    /// `AF_VSOCK` CID and port (connect).
    Vsock(u32, u32),
    /// `AF_VSOCK` port (listen, any CID).
    VsockPort(u32),
}

/// Parses an endpoint for `connect` (`listen == false`) or `listen`.
pub fn parse_endpoint(s: &str, listen: bool) -> Result<Endpoint, String> {
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("`{v}` is not a port/CID number"))
    };
    if let Some(rest) = s.strip_prefix("unix:") {
        if listen {
            return Ok(Endpoint::Unix(rest.into()));
        }
        let (path, port) = rest.rsplit_once(':').ok_or("expected unix:SOCKET:PORT")?;
        return Ok(Endpoint::Bridge(path.into(), num(port)?));
    }
    if let Some(rest) = s.strip_prefix("vsock:") {
        if listen {
            return Ok(Endpoint::VsockPort(num(rest)?));
        }
        let (cid, port) = rest.split_once(':').ok_or("expected vsock:CID:PORT")?;
        return Ok(Endpoint::Vsock(num(cid)?, num(port)?));
    }
    Err("expected unix:... or vsock:...".into())
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::sa_family_t::try_from(libc::AF_VSOCK).unwrap_or(40);
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_VSOCK)");
    }
    // SAFETY: `fd` is a new descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_len() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_vm>()).unwrap_or(0)
}

fn vsock_connect(cid: u32, port: u32) -> Result<OwnedFd> {
    let fd = vsock_socket()?;
    let a = vsock_addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of the length given.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&a).cast(),
            sockaddr_len(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("connect vsock:{cid}:{port}"));
    }
    Ok(fd)
}

fn vsock_accept(port: u32) -> Result<OwnedFd> {
    let fd = vsock_socket()?;
    let a = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&a).cast(),
            sockaddr_len(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("bind vsock port {port}"));
    }
    // SAFETY: listen(2) on our own socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    // SAFETY: accept(2) without an address on our own listening socket.
    let c = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(std::io::Error::last_os_error()).context("accept");
    }
    // SAFETY: `c` is a new descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(c) })
}

/// Connects through the VMM's bridge and reads its `OK <port>` line.
pub fn bridge_connect(socket: &std::path::Path, port: u32) -> Result<UnixStream> {
    let mut s =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            bail!("the guest refused port {port} (connection closed before OK)");
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 32 {
            bail!("a bad answer from the bridge");
        }
    }
    if !line.starts_with(b"OK ") {
        bail!("the bridge answered `{}`", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

fn open(ep: &Endpoint, retry: Duration) -> Result<File> {
    let deadline = Instant::now() + retry;
    loop {
        let r = match ep {
            Endpoint::Bridge(p, port) => bridge_connect(p, *port).map(OwnedFd::from),
            Endpoint::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p).with_context(|| format!("listen {}", p.display()))?;
                let (s, _) = l.accept()?;
                let _ = std::fs::remove_file(p);
                Ok(OwnedFd::from(s))
            }
            Endpoint::Vsock(cid, port) => vsock_connect(*cid, *port),
            Endpoint::VsockPort(port) => vsock_accept(*port),
        };
        match r {
            Ok(fd) => return Ok(File::from(fd)),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn shutdown_write(f: &File) {
    // SAFETY: shutdown(2) on a socket we own.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

/// Runs the command; returns the summary line.
pub fn run(ep: &Endpoint, echo: bool, ping: Option<u32>, retry: Duration) -> Result<String> {
    let sock = open(ep, retry)?;
    let start = Instant::now();
    if let Some(n) = ping {
        let mut s = sock;
        let msg = [0x5au8; 64];
        let mut back = [0u8; 64];
        let mut rtts = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            rtts.push(t.elapsed());
            if back != msg {
                bail!("the echo changed the message");
            }
        }
        rtts.sort();
        let med = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
        return Ok(format!(
            "vsock ping: {n} round trips of 64 bytes, median {} us, min {} us",
            med.as_micros(),
            rtts.first().copied().unwrap_or_default().as_micros()
        ));
    }
    if echo {
        let mut s = sock;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
            total += n as u64;
        }
        shutdown_write(&s);
        return Ok(format!(
            "vsock echo: {total} bytes in {} ms",
            start.elapsed().as_millis()
        ));
    }
    let mut rd = sock.try_clone()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut out = std::io::stdout().lock();
        let n = std::io::copy(&mut rd, &mut out)?;
        out.flush()?;
        Ok(n)
    });
    let mut wr = sock;
    let sent = std::io::copy(&mut std::io::stdin().lock(), &mut wr)?;
    shutdown_write(&wr);
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread failed"))??;
    Ok(format!(
        "vsock: sent {sent} bytes, received {received} bytes in {} ms",
        start.elapsed().as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:/run/a:b.vsock:80", false),
            Ok(Endpoint::Bridge("/run/a:b.vsock".into(), 80))
        );
        assert_eq!(
            parse_endpoint("unix:/run/x_80", true),
            Ok(Endpoint::Unix("/run/x_80".into()))
        );
        assert_eq!(
            parse_endpoint("vsock:2:6000", false),
            Ok(Endpoint::Vsock(2, 6000))
        );
        assert_eq!(
            parse_endpoint("vsock:6000", true),
            Ok(Endpoint::VsockPort(6000))
        );
        assert!(parse_endpoint("vsock:x:1", false).is_err());
        assert!(parse_endpoint("tcp:1", false).is_err());
    }

    /// A fake bridge: answers `OK` for port 80 and closes for others.
    #[test]
    fn bridge_handshake() {
        let dir = std::env::temp_dir().join(format!("rampart-vsock-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.vsock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut line = [0u8; 11];
                s.read_exact(&mut line).unwrap();
                if &line == b"CONNECT 80\n" {
                    s.write_all(b"OK 1073741824\nhello").unwrap();
                }
            }
        });
        let mut s = bridge_connect(&path, 80).unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello", "data after OK is the stream's");
        let e = bridge_connect(&path, 81).unwrap_err();
        assert!(e.to_string().contains("refused port 81"), "{e}");
        t.join().unwrap();
    }
}
