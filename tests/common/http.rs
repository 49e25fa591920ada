//! A minimal HTTP/1.1 client over a Unix socket, for driving kiln's API (or Firecracker's, to
//! compare) in tests, and the serving process, killed on drop.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A VMM serving its API on a socket, killed on drop.
pub struct ApiProcess {
    child: Child,
}

impl ApiProcess {
    /// Runs `program` with `args` (which name `sock`) and waits until `sock` accepts.
    pub fn start(program: &Path, args: &[&str], sock: &Path) -> Self {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self::spawn(command, sock)
    }

    /// Runs `command`, which serves on `sock`, and waits until `sock` accepts.
    pub fn spawn(mut command: Command, sock: &Path) -> Self {
        let child = command.spawn().unwrap();
        wait_for_socket(sock, Duration::from_secs(10));
        Self { child }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends one request on a fresh connection and reads the whole response.
pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut stream = UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .unwrap();
    // The server keeps the connection open, so read by Content-Length, not to EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end + 4;
        }
        let n = read_some(&mut stream, &mut buf);
        assert!(n > 0, "the connection closed before the headers ended");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..header_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if name.eq_ignore_ascii_case("content-length") {
                value.trim().parse().ok()
            } else {
                None
            }
        })
        .unwrap_or(0);
    while raw.len() < header_end + length {
        let n = read_some(&mut stream, &mut buf);
        assert!(n > 0, "the connection closed before the body ended");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[header_end..header_end + length]).into_owned();
    Response { status, body }
}

/// One `read`, retried on EINTR: with a read timeout set, a socket read is not restarted after
/// a signal or a stop and continue of the test process, so `read` can return `Interrupted`.
fn read_some(stream: &mut UnixStream, buf: &mut [u8]) -> usize {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.unwrap(),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Waits until something accepts connections on `sock`.
pub fn wait_for_socket(sock: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never accepted",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
