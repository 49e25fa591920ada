//! qcow2 images made by qemu-img and qemu-io, read and written through Kiln, checked against
//! QEMU: `qemu-img convert -O raw` for reads, `qemu-img check` and `qemu-img compare` after
//! writes.

// Test code: a panic is a failed test, so the workspace's no-panic lints do not apply.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod qcow_common;

use std::path::{Path, PathBuf};

use devices::virtio::block::{open_disk, DiskBackend, ImageFormat, QcowFile};
use qcow_common::*;

const SIZE: u64 = 8 << 20;

/// A qcow2 image of `SIZE` bytes holding the pattern commands.
fn patterned(dir: &Path, name: &str, options: &str) -> PathBuf {
    let image = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        options,
        path(&image),
        &SIZE.to_string(),
    ]);
    let commands = pattern_commands(SIZE);
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    qemu_io(&image, "qcow2", &commands);
    image
}

/// Reads `image` whole through Kiln (probed, read-only) and compares it with QEMU's view.
fn assert_reads_like_qemu(image: &Path, piece: usize) {
    let mut disk = unlocked(|| open_disk(image, true, None)).unwrap();
    let ours = read_all(disk.as_mut(), piece);
    let theirs = qemu_raw(image);
    assert!(
        ours == theirs,
        "{} reads differently from QEMU",
        image.display()
    );
}

/// Writes random data through Kiln, then has QEMU check the image and compare it with the same
/// writes applied to a raw copy.
fn assert_writes_like_qemu(image: &Path, seed: u64, count: usize) {
    let mut expected = qemu_raw(image);
    let cluster = {
        let header = std::fs::read(image).unwrap();
        1u64 << u32::from_be_bytes(header[20..24].try_into().unwrap())
    };
    let mut rng = Rng::new(seed);
    let mut disk = unlocked(|| QcowFile::open(image, false)).unwrap();
    let writes = random_writes(&mut rng, disk.len(), cluster, count);
    apply(&mut disk, &mut expected, &writes);
    assert!(
        read_all(&mut disk, 1 << 20) == expected,
        "{} reads back wrong",
        image.display()
    );
    drop(disk);
    let (code, report) = check(image);
    assert_eq!(code, 0, "qemu-img check of {}: {report}", image.display());
    let raw = image.with_extension("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        path(image),
        path(&raw),
    ]);
    std::fs::remove_file(raw).unwrap();
}

#[test]
fn every_cluster_size_and_version_reads_and_writes_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("sizes");
    for bits in [9u32, 12, 13, 16, 19, 21] {
        for compat in ["0.10", "1.1"] {
            let options = format!("cluster_size={},compat={compat}", 1u64 << bits);
            let image = patterned(&dir, &format!("c{bits}-{compat}.qcow2"), &options);
            assert_reads_like_qemu(&image, 4096);
            assert_writes_like_qemu(&image, u64::from(bits), 40);
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_refcount_width_reads_and_writes_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("refcounts");
    for refcount_bits in [1u32, 2, 4, 8, 16, 32, 64] {
        let options = format!("cluster_size=4096,refcount_bits={refcount_bits}");
        let image = patterned(&dir, &format!("r{refcount_bits}.qcow2"), &options);
        assert_reads_like_qemu(&image, 65536);
        assert_writes_like_qemu(&image, u64::from(refcount_bits), 60);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn compressed_images_read_and_rewrite_without_leaks() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("compressed");
    // Compressible patterns with an incompressible stretch, which QEMU stores uncompressed.
    let source = dir.join("source.raw");
    let mut data = vec![0u8; SIZE as usize];
    for (i, b) in data.iter_mut().enumerate().take(3 << 20) {
        *b = (i / 1000) as u8;
    }
    Rng::new(7).fill(&mut data[(5 << 20)..(5 << 20) + 300_000]);
    std::fs::write(&source, &data).unwrap();
    for bits in [12u32, 16, 21] {
        let image = dir.join(format!("z{bits}.qcow2"));
        let cluster = format!("cluster_size={}", 1u64 << bits);
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &cluster,
            path(&source),
            path(&image),
        ]);
        assert_reads_like_qemu(&image, 512);
        assert_writes_like_qemu(&image, u64::from(bits), 80);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn backing_chains_read_and_write_like_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("chains");
    // raw base (4 MiB, shorter than the disk) <- qcow2 (compat 0.10) <- qcow2 (compat 1.1).
    let base = dir.join("base.raw");
    let mut data = vec![0u8; 4 << 20];
    Rng::new(3).fill(&mut data);
    std::fs::write(&base, &data).unwrap();
    let mid = dir.join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096,compat=0.10",
        "-b",
        "base.raw",
        "-F",
        "raw",
        path(&mid),
        "6M",
    ]);
    qemu_io(
        &mid,
        "qcow2",
        &["write -P 0x66 1000k 100k", "write -z 2M 64k"],
    );
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=65536",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        path(&top),
        &SIZE.to_string(),
    ]);
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0x77 1020k 8k",
            "write -z 3M 1M",
            "write -P 0x78 7M 1k",
        ],
    );
    assert_reads_like_qemu(&mid, 4096);
    assert_reads_like_qemu(&top, 4096);
    // Depth 3: a third overlay, over top, over mid, over the raw base.
    let third = dir.join("third.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=8192",
        "-b",
        "top.qcow2",
        "-F",
        "qcow2",
        path(&third),
    ]);
    qemu_io(&third, "qcow2", &["write -P 0x79 1010k 20k"]);
    assert_reads_like_qemu(&third, 4096);
    assert_writes_like_qemu(&third, 13, 40);
    assert_writes_like_qemu(&top, 11, 60);
    // Depth 1 with a qcow2 base and 512-byte clusters over 2 MiB ones.
    let base2 = patterned(&dir, "base2.qcow2", "cluster_size=2097152");
    let over = dir.join("over.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        "-b",
        path(&base2),
        "-F",
        "qcow2",
        path(&over),
    ]);
    assert_reads_like_qemu(&over, 65536);
    assert_writes_like_qemu(&over, 12, 40);
    // The bases were opened read-only and are unchanged.
    assert_eq!(std::fs::read(&base).unwrap(), data);
    assert_eq!(check(&mid).0, 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_refcount_table_grows() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("growth");
    // 512-byte clusters with 64-bit refcounts: one table cluster covers only 2 MiB of file.
    let image = dir.join("grow.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=64",
        path(&image),
        "16M",
    ]);
    let table = |image: &Path| std::fs::read(image).unwrap()[48..60].to_vec();
    let before = table(&image);
    let mut disk = unlocked(|| QcowFile::open(&image, false)).unwrap();
    let mut expected = vec![0u8; 16 << 20];
    let mut rng = Rng::new(5);
    let mut writes = Vec::new();
    for i in 0..96u64 {
        let mut data = vec![0u8; 65536 - 512];
        rng.fill(&mut data);
        writes.push((i * 131_072 + 300, data));
    }
    apply(&mut disk, &mut expected, &writes);
    drop(disk);
    assert_ne!(table(&image), before, "the refcount table did not move");
    let (code, report) = check(&image);
    assert_eq!(code, 0, "{report}");
    let raw = dir.join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        path(&image),
        path(&raw),
    ]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn explicit_formats_are_obeyed() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("formats");
    let image = patterned(&dir, "f.qcow2", "cluster_size=65536");
    let file_len = std::fs::metadata(&image).unwrap().len();
    // Asked for raw, the user gets the file's bytes, header and all.
    let raw = unlocked(|| open_disk(&image, true, Some(ImageFormat::Raw))).unwrap();
    assert_eq!(raw.len(), file_len);
    let qcow = unlocked(|| open_disk(&image, true, Some(ImageFormat::Qcow2))).unwrap();
    assert_eq!(qcow.len(), SIZE);
    // A raw file is never taken for qcow2 unless it starts with the magic.
    let plain = dir.join("plain.raw");
    std::fs::write(&plain, vec![1u8; 4096]).unwrap();
    assert_eq!(
        unlocked(|| open_disk(&plain, true, None)).unwrap().len(),
        4096
    );
    assert!(open_disk(&plain, true, Some(ImageFormat::Qcow2)).is_err());
    // Read-only images refuse writes.
    let mut ro = unlocked(|| open_disk(&image, true, None)).unwrap();
    assert!(ro.write_at(&[0u8; 512], 0).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn writing_invalidates_bitmaps_as_the_spec_asks() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("bitmaps");
    let image = dir.join("bm.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path(&image), "1M"]);
    qemu_img(&["bitmap", "--add", path(&image), "b0"]);
    let autoclear = |image: &Path| std::fs::read(image).unwrap()[88..96].to_vec();
    assert_eq!(autoclear(&image), 1u64.to_be_bytes());
    // Read-only opens leave the header alone; a writable open clears the autoclear bits, so QEMU
    // treats the bitmaps Kiln does not maintain as inconsistent and their clusters as leaked.
    drop(unlocked(|| QcowFile::open(&image, true)).unwrap());
    assert_eq!(autoclear(&image), 1u64.to_be_bytes());
    let mut disk = unlocked(|| QcowFile::open(&image, false)).unwrap();
    disk.write_at(&[7u8; 4096], 8192).unwrap();
    disk.flush().unwrap();
    drop(disk);
    assert_eq!(autoclear(&image), [0u8; 8]);
    let (code, report) = check(&image);
    assert!(code == 0 || code == 3, "{report}");
    assert!(!report.contains("ERROR"), "{report}");
    std::fs::remove_dir_all(dir).unwrap();
}
