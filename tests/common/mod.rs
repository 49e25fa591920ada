//! Helpers shared by the integration tests: running the `kiln` binary, temporary files, and a
//! tiny hand-assembled guest kernel.

// Test helpers panic on failure: that is how a test reports it.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod firecracker;
pub mod http;
pub mod jailer;
pub mod linux;
pub mod tiny_kernel;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kiln-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kiln binary cargo built for these tests.
pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// Runs kiln with `args` and no stdin, killing it after `timeout`.
pub fn run_kiln(args: &[&str], timeout: Duration) -> Output {
    let child = Command::new(kiln_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_timeout(child, timeout)
}

/// Waits for `child`, killing it and failing the test after `timeout`.
pub fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> Output {
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kiln timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// A Firecracker config file with the given boot source and machine config.
pub fn vm_config(kernel: &Path, boot_args: &str, vcpus: u8, mem_mib: u32) -> String {
    format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "{}", "boot_args": "{boot_args}"}},
  "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": {mem_mib}, "smt": false}}
}}"#,
        kernel.display()
    )
}

/// The monotonic clock in microseconds, as Firecracker's jailer passes `--start-time-us`.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which is valid.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Whether /dev/kvm is usable here.
pub fn have_kvm() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A pseudo-terminal, so kiln sees a terminal on stdin.
pub struct Pty {
    master: std::fs::File,
    slave: std::fs::File,
}

impl Pty {
    pub fn open() -> Self {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two new file descriptors into the two integers; name, termios
        // and window size are optional and passed as null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty failed");
        // SAFETY: both descriptors were just created by openpty and are owned by nobody else.
        unsafe {
            Self {
                master: std::fs::File::from_raw_fd(master),
                slave: std::fs::File::from_raw_fd(slave),
            }
        }
    }

    /// The terminal end, for a child's stdin.
    pub fn slave(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().unwrap())
    }

    /// Types `bytes` on the terminal.
    pub fn write(&self, bytes: &[u8]) {
        use std::io::Write;
        (&self.master).write_all(bytes).unwrap();
    }
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated name and touches no other memory of ours.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Opens the FIFO at `path` for reading without waiting for a writer: a reader that never
/// reads, as long as it is kept.
pub fn idle_fifo_reader(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}
