//! Helpers shared by the qcow2 integration tests: qemu-img and qemu-io as the independent
//! oracle, scratch directories, and a seeded PRNG.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use devices::virtio::block::{DiskBackend, DiskError};

/// How long a lock another test thread's spawn holds may delay a test.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// Runs a qemu tool, again while it reports a lock conflict: a child that another test
/// thread is spawning holds copies of Kiln's image fds, and with them Kiln's OFD locks, until
/// it execs. (Kiln itself spawns nothing.)
pub fn qemu_output(cmd: &mut Command) -> Output {
    let start = Instant::now();
    loop {
        let out = cmd.output().unwrap();
        let locked = String::from_utf8_lossy(&out.stderr).contains("Is another process using");
        if !locked || start.elapsed() > LOCK_PATIENCE {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens an image with `open`, again while the open meets a lock, for the reason in
/// [`qemu_output`].
pub fn unlocked<T>(mut open: impl FnMut() -> Result<T, DiskError>) -> Result<T, DiskError> {
    let start = Instant::now();
    loop {
        match open() {
            Err(DiskError::Lock { .. }) if start.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Whether qemu-img and qemu-io are installed; the tests that need them skip (loudly) if not.
pub fn have_qemu() -> bool {
    let found = Command::new("qemu-img").arg("--version").output().is_ok()
        && Command::new("qemu-io").arg("--version").output().is_ok();
    if !found {
        eprintln!("SKIPPED: qemu-img and qemu-io (qemu-utils) are needed as the oracle");
    }
    found
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-qcow-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs qemu-img; panics with its stderr unless it succeeds.
pub fn qemu_img(args: &[&str]) -> String {
    let out = qemu_output(Command::new("qemu-img").args(args));
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-io commands on an image of format `fmt`.
pub fn qemu_io(image: &Path, fmt: &str, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", fmt]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = qemu_output(cmd.arg(image));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("error") && !stdout.contains("failed"),
        "qemu-io {commands:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check`: its exit code (0 clean, 2 corrupt, 3 leaks) and output.
pub fn check(image: &Path) -> (i32, String) {
    let out = qemu_output(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(image),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The guest-visible bytes of `image` according to QEMU.
pub fn qemu_raw(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("oracle.raw");
    qemu_img(&["convert", "-O", "raw", path(image), path(&raw)]);
    let data = std::fs::read(&raw).unwrap();
    std::fs::remove_file(raw).unwrap();
    data
}

/// Every byte of `disk`, read in pieces of `piece` bytes.
pub fn read_all(disk: &mut dyn DiskBackend, piece: usize) -> Vec<u8> {
    let mut data = vec![0u8; disk.len() as usize];
    for (i, chunk) in data.chunks_mut(piece).enumerate() {
        disk.read_at(chunk, (i * piece) as u64).unwrap();
    }
    data
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// qemu-io commands that leave recognizable patterns, partial clusters, zeroed ranges and holes
/// in a disk of `size` bytes.
pub fn pattern_commands(size: u64) -> Vec<String> {
    let mb = 1u64 << 20;
    vec![
        "write -P 0x11 0 3k".to_string(),
        "write -P 0x22 65024 5k".to_string(),
        format!("write -P 0x33 {mb} {mb}"),
        format!("write -z {} 256k", mb + mb / 4),
        format!("write -P 0x44 {} 12k", 4 * mb + 512),
        format!("write -P 0x55 {} 4k", size - 4096),
        format!("write -z {} 8k", 4 * mb + 4096),
    ]
}

/// Random writes (offset, data) over a disk of `size` bytes: unaligned, some crossing
/// clusters of `cluster` bytes.
pub fn random_writes(rng: &mut Rng, size: u64, cluster: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
    (0..count)
        .map(|_| {
            let len = 1 + rng.below(cluster * 2 + cluster / 2) as usize;
            let offset = rng.below(size - len as u64);
            let mut data = vec![0u8; len];
            if rng.below(4) == 0 {
                data.fill(rng.next() as u8);
            } else {
                rng.fill(&mut data);
            }
            (offset, data)
        })
        .collect()
}

/// Applies `writes` to `disk` and to the model `expected`, then flushes.
pub fn apply(disk: &mut dyn DiskBackend, expected: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    for (offset, data) in writes {
        disk.write_at(data, *offset).unwrap();
        let at = *offset as usize;
        expected[at..at + data.len()].copy_from_slice(data);
    }
    disk.flush().unwrap();
}
