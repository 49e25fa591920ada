//! The qcow_ops fuzz body: sequences of operations (read, write, flush, reopen) on a qcow2
//! image Kiln did not write, alone or over a backing chain (a raw base, and a qcow2 image in
//! between), checked byte for byte against an in-memory model of the disk. An input may also
//! corrupt the top image's metadata first; then only "no panic, no hang" is checked.

use std::path::{Path, PathBuf};

use super::retry_locked;
use crate::virtio::block::{DiskBackend, DiskError, QcowFile};

/// The input as a stream of numbers; past its end every number is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn number(&mut self, bytes: usize) -> u64 {
        (0..bytes).fold(0, |n, _| n << 8 | u64::from(self.byte()))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = buf.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

/// Writes a fresh version 3 qcow2 image of `size` bytes with 16-bit refcounts, as qemu-img
/// would lay it out: the header, the refcount table, one refcount block, the L1 table; with
/// `backing` as a qcow2 or raw backing file name and format.
pub fn create_qcow2(
    path: &Path,
    cluster_bits: u32,
    size: u64,
    backing: Option<(&str, &str)>,
) -> std::io::Result<()> {
    let backing = backing.map(|(name, format)| (name.as_bytes(), format));
    let image = crate::virtio::block::qcow::layout(cluster_bits, size, backing)
        .ok_or_else(|| std::io::Error::other("no such qcow2 layout"))?;
    std::fs::write(path, image)
}

/// A scratch directory per thread: the stable tests run the body on several threads.
fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!(
        "kiln-qcow-ops-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ))
}

fn open(path: &Path, read_only: bool) -> Result<QcowFile, DiskError> {
    retry_locked(
        || QcowFile::open(path, read_only),
        |e| matches!(e, DiskError::Lock { .. }),
    )
}

/// A write the input describes, inside a disk of `size` bytes of `cluster`-byte clusters.
fn write_op(input: &mut Input, size: u64, cluster: u64) -> (u64, Vec<u8>) {
    let offset = input.number(3) % size;
    let len = (1 + input.number(2) % (3 * cluster)).min(size - offset);
    let fill = input.byte();
    let data = (0..len)
        .map(|i| fill.wrapping_add((i / 512) as u8))
        .collect();
    (offset, data)
}

fn apply(model: &mut [u8], offset: u64, data: &[u8]) {
    put(model, offset as usize, data);
}

/// Panics unless `disk` reads as `model` from `offset` for `len` bytes.
fn check_read(disk: &mut dyn DiskBackend, model: &[u8], offset: u64, len: u64) {
    let mut buf = vec![0u8; len as usize];
    let read = disk.read_at(&mut buf, offset);
    assert!(read.is_ok(), "reading {len} bytes at {offset}: {read:?}");
    let want = model.get(offset as usize..(offset + len) as usize);
    assert!(
        want == Some(&buf[..]),
        "{len} bytes at {offset} differ from the model"
    );
}

/// The body: see the module doc.
pub fn fuzz_qcow_ops(data: &[u8]) {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_ok() {
        run(&mut Input(data), &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn run(input: &mut Input, dir: &Path) {
    let shape = input.byte();
    let cluster_bits = 9 + u32::from(shape % 8);
    let cluster = 1u64 << cluster_bits;
    let size = 512 * (1 + input.number(2) % 4096);
    let layers = (shape >> 3) % 3;
    let corrupt = shape & 0x80 != 0;
    let mut model = vec![0u8; size as usize];

    let top = dir.join("top.qcow2");
    let backing = match layers {
        0 => None,
        _ => {
            // A raw base, up to one and a half times the disk.
            let base_len = 512 * (input.number(2) % (size / 512 * 3 / 2 + 1));
            let seed = input.byte();
            let base: Vec<u8> = (0..base_len)
                .map(|i| seed ^ (i as u8).wrapping_mul(31) ^ (i >> 9) as u8)
                .collect();
            let shared = base.len().min(model.len());
            put(&mut model, 0, base.get(..shared).unwrap_or_default());
            if std::fs::write(dir.join("base.raw"), &base).is_err() {
                return;
            }
            if layers == 1 {
                Some(("base.raw", "raw"))
            } else {
                // A qcow2 image between, written through Kiln before it becomes read-only.
                let mid = dir.join("mid.qcow2");
                let mid_bits = 9 + u32::from(input.byte() % 8);
                if create_qcow2(&mid, mid_bits, size, Some(("base.raw", "raw"))).is_err() {
                    return;
                }
                let disk = open(&mid, false);
                assert!(disk.is_ok(), "a fresh image was refused: {disk:?}");
                let Ok(mut disk) = disk else {
                    return;
                };
                for _ in 0..input.byte() % 8 {
                    let (offset, data) = write_op(input, size, 1 << mid_bits);
                    let written = disk.write_at(&data, offset);
                    assert!(written.is_ok(), "writing the middle image: {written:?}");
                    apply(&mut model, offset, &data);
                }
                Some(("mid.qcow2", "qcow2"))
            }
        }
    };
    if create_qcow2(&top, cluster_bits, size, backing).is_err() {
        return;
    }
    if corrupt {
        corrupt_metadata(input, &top, cluster);
    }
    let disk = open(&top, false);
    assert!(
        corrupt || disk.is_ok(),
        "a fresh image was refused: {disk:?}"
    );
    let mut disk = disk.ok();
    let layout = Layout {
        top: &top,
        size,
        cluster,
        corrupt,
    };
    for _ in 0..64 {
        if input.is_empty() || !step(input, &mut disk, &mut model, &layout) {
            return;
        }
    }
    if let (Some(disk), false) = (disk.as_mut(), corrupt) {
        check_read(disk, &model, 0, size);
    }
}

/// What the operations work on.
struct Layout<'a> {
    top: &'a Path,
    size: u64,
    cluster: u64,
    /// Whether the input corrupted the image, so errors are expected.
    corrupt: bool,
}

/// Flips bytes of the image's first clusters (header, refcount table and block, L1 table).
fn corrupt_metadata(input: &mut Input, image: &Path, cluster: u64) {
    let Ok(mut bytes) = std::fs::read(image) else {
        return;
    };
    for _ in 0..1 + input.byte() % 8 {
        let at = (input.number(2) % (4 * cluster)) as usize;
        let value = input.byte();
        if let Some(byte) = bytes.get_mut(at) {
            *byte = value;
        }
    }
    let _ = std::fs::write(image, bytes);
}

/// Opens the top image again, the current open closed first (it holds the image's lock).
/// `None` if a corrupt image can no longer be opened.
fn reopen(disk: &mut Option<QcowFile>, layout: &Layout, read_only: bool) -> Option<()> {
    *disk = None;
    let next = open(layout.top, read_only);
    assert!(layout.corrupt || next.is_ok(), "reopening: {next:?}");
    *disk = Some(next.ok()?);
    Some(())
}

/// One operation; returns whether to go on.
fn step(input: &mut Input, slot: &mut Option<QcowFile>, model: &mut [u8], layout: &Layout) -> bool {
    let Layout {
        size,
        cluster,
        corrupt,
        ..
    } = *layout;
    let Some(disk) = slot.as_mut() else {
        return false;
    };
    match input.byte() % 8 {
        0..=2 => {
            let (offset, data) = write_op(input, size, cluster);
            let written = disk.write_at(&data, offset);
            assert!(
                corrupt || written.is_ok(),
                "writing {} bytes at {offset}: {written:?}",
                data.len()
            );
            if written.is_ok() {
                apply(model, offset, &data);
            }
        }
        3 | 4 => {
            let offset = input.number(3) % size;
            let len = (1 + input.number(2) % (3 * cluster)).min(size - offset);
            if corrupt {
                let _ = disk.read_at(&mut vec![0u8; len as usize], offset);
            } else {
                check_read(disk, model, offset, len);
            }
        }
        5 => {
            if let Err(e) = disk.flush() {
                assert!(corrupt, "flush failed: {e}");
            }
        }
        6 => return reopen(slot, layout, false).is_some(),
        _ => {
            // Read-only, as a backing file would be, then writable again.
            if reopen(slot, layout, true).is_none() {
                return false;
            }
            if let (Some(read_only), false) = (slot.as_mut(), corrupt) {
                check_read(read_only, model, 0, size);
            }
            return reopen(slot, layout, false).is_some();
        }
    }
    true
}
