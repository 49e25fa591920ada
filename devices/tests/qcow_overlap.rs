//! Writes never land on metadata: images whose L2 entry points guest data at an L2 table, a
//! refcount block, the L1 table or the refcount table, or whose refcount table names a block
//! where the next new cluster goes. Kiln must refuse the write, mark the image corrupt and
//! change nothing else, exactly as qemu-io does on a copy: the two files are compared byte for
//! byte, and `qemu-img check` must report the same on both.

// Test code: a panic is a failed test, so the workspace's no-panic lints do not apply.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod qcow_common;

use std::path::Path;
use std::process::Command;

use devices::virtio::block::{DiskBackend, QcowFile};
use qcow_common::*;

const COPIED: u64 = 1 << 63;

fn be64(data: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_be_bytes(data[at..at + 8].try_into().unwrap())
}

fn put64(data: &mut [u8], at: u64, value: u64) {
    let at = at as usize;
    data[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// The host offsets of a fresh qemu-img image's metadata once guest cluster 0 is written.
struct Layout {
    l1: u64,
    refcount_table: u64,
    refcount_block: u64,
    l2: u64,
}

fn layout(data: &[u8]) -> Layout {
    let l1 = be64(data, 40);
    let refcount_table = be64(data, 48);
    Layout {
        l1,
        refcount_table,
        refcount_block: be64(data, refcount_table),
        l2: be64(data, l1) & 0x00ff_ffff_ffff_fe00,
    }
}

/// What `qemu-img check` says of `image`, with its name taken out.
fn check_text(image: &Path) -> (i32, String) {
    let (code, text) = check(image);
    (code, text.replace(path(image), "IMAGE"))
}

#[test]
fn a_write_onto_metadata_marks_the_image_corrupt_as_qemu_does() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("overlap");
    let template = dir.join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path(&template), "1M"]);
    qemu_io(&template, "qcow2", &["write -P 0x11 0 64k"]);
    let original = std::fs::read(&template).unwrap();
    let at = layout(&original);
    let end = original.len() as u64;

    // (name, L1 or L2 entry to patch, value, guest offset written)
    let cases = [
        ("l2-table", at.l2, COPIED | at.l2, 0),
        ("refcount-block", at.l2, COPIED | at.refcount_block, 0),
        ("l1-table", at.l2, COPIED | at.l1, 0),
        ("refcount-table", at.l2, COPIED | at.refcount_table, 0),
        // Refcount table entry 1 names a block past the end of the file, where the next new
        // cluster goes: a write to an unallocated guest cluster must not be placed on it.
        ("new-cluster", at.refcount_table + 8, end, 65536),
    ];
    for (name, entry, value, offset) in cases {
        let mut data = original.clone();
        put64(&mut data, entry, value);
        let image = dir.join(format!("{name}.qcow2"));
        let oracle = dir.join(format!("{name}.qemu.qcow2"));
        std::fs::write(&image, &data).unwrap();
        std::fs::write(&oracle, &data).unwrap();

        let out = qemu_output(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", &format!("write -P 0x55 {offset} 512")])
                .arg(&oracle),
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("Preventing invalid write on metadata"),
            "{name}: qemu-io said {said}"
        );

        let mut disk = unlocked(|| QcowFile::open(&image, false)).unwrap();
        let err = disk.write_at(&[0x55; 512], offset).unwrap_err();
        assert!(
            err.to_string()
                .contains("Preventing invalid write on metadata"),
            "{name}: {err}"
        );
        // The open serves nothing more, as QEMU's.
        assert!(disk.read_at(&mut [0u8; 512], 0).is_err(), "{name}");
        assert!(disk.write_at(&[0x66; 512], 131072).is_err(), "{name}");
        drop(disk);

        let (ours, qemus) = (
            std::fs::read(&image).unwrap(),
            std::fs::read(&oracle).unwrap(),
        );
        let differ = (0..ours.len().max(qemus.len())).find(|i| ours.get(*i) != qemus.get(*i));
        assert_eq!(
            differ, None,
            "{name}: Kiln and qemu-io left different files"
        );
        assert!(qemu_img(&["info", path(&image)]).contains("corrupt: true"));
        assert_eq!(check_text(&image), check_text(&oracle), "{name}");
        // Marked corrupt: refused for writing, still served read-only.
        assert!(QcowFile::open(&image, false).is_err());
        unlocked(|| QcowFile::open(&image, true)).unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}
