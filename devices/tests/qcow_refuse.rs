//! Images Kiln must refuse, each built by patching a qemu-img image, with the exact error the
//! user sees. Writable-only refusals are checked to still open read-only.

// Test code: a panic is a failed test, so the workspace's no-panic lints do not apply.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod qcow_common;

use std::path::{Path, PathBuf};

use devices::virtio::block::{open_disk, ImageFormat};
use qcow_common::*;

/// Header bytes to overwrite: (offset, bytes).
type Patches = Vec<(usize, Vec<u8>)>;

/// The error text of opening `image` as qcow2.
fn refusal(image: &Path, read_only: bool) -> String {
    match unlocked(|| open_disk(image, read_only, Some(ImageFormat::Qcow2))) {
        Ok(_) => panic!("{} opened (read_only {read_only})", image.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of `template` with `bytes` written at `offset`.
fn patched(template: &Path, name: &str, patches: &[(usize, &[u8])]) -> PathBuf {
    let mut data = std::fs::read(template).unwrap();
    for (offset, bytes) in patches {
        data[*offset..*offset + bytes.len()].copy_from_slice(bytes);
    }
    let image = template.with_file_name(name);
    std::fs::write(&image, data).unwrap();
    image
}

fn find(image: &Path, needle: &[u8]) -> usize {
    let data = std::fs::read(image).unwrap();
    data.windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn unsupported_features_are_refused_by_name() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("refuse");
    let t = dir.join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path(&t), "1M"]);
    let prefix = |image: &Path| format!("The qcow2 image '{}' cannot be used: ", image.display());
    let incompatible = |bits: u64| bits.to_be_bytes();

    // (name, header patches, whether read-only opens are refused too, error)
    let cases: Vec<(&str, Patches, bool, &str)> = vec![
        ("magic", vec![(0, b"QFI\0".to_vec())], true, "The file does not start with the qcow2 magic 'QFI\\xfb'."),
        ("version", vec![(4, 4u32.to_be_bytes().to_vec())], true, "The qcow2 version 4 is not supported; only versions 2 and 3 are."),
        ("cluster", vec![(20, 22u32.to_be_bytes().to_vec())], true, "The cluster_bits field is 22; only 9 to 21 (512-byte to 2 MiB clusters) are supported."),
        ("crypt", vec![(32, 2u32.to_be_bytes().to_vec())], true, "The image is encrypted (crypt_method 2); encrypted qcow2 images are not supported."),
        ("datafile", vec![(72, incompatible(1 << 2).to_vec())], true, "The image keeps its data in an external data file (incompatible feature bit 2), which is not supported."),
        ("extl2", vec![(72, incompatible(1 << 4).to_vec())], true, "The image uses extended L2 entries with subclusters (incompatible feature bit 4), which are not supported."),
        ("unknown", vec![(72, incompatible(1 << 40 | 1 << 9).to_vec())], true, "The image uses unknown incompatible features: bit 9, bit 40."),
        ("zstd", vec![(72, incompatible(1 << 3).to_vec()), (104, vec![1])], true, "The image uses zstd compression (compression_type 1), which is not supported; only deflate is."),
        ("l1", vec![(40, (1u64 << 40).to_be_bytes().to_vec())], true, "The L1 table (offset 0x10000000000, 8 bytes) is unaligned or outside the file."),
        ("corrupt", vec![(72, incompatible(1 << 1).to_vec())], false, "The image is marked corrupt (incompatible feature bit 1), so it may only be opened read-only; repair it with 'qemu-img check -r all'."),
        ("dirty", vec![(72, incompatible(1).to_vec())], false, "The image is marked dirty (incompatible feature bit 0), so its refcounts may be stale and it may only be opened read-only; repair it with 'qemu-img check -r all'."),
    ];
    for (name, patches, read_only, text) in cases {
        let patches: Vec<(usize, &[u8])> =
            patches.iter().map(|(o, b)| (*o, b.as_slice())).collect();
        let image = patched(&t, &format!("{name}.qcow2"), &patches);
        assert_eq!(
            refusal(&image, read_only),
            format!("{}{text}", prefix(&image)),
            "{name}"
        );
        if !read_only {
            unlocked(|| open_disk(&image, true, None)).unwrap();
        }
    }

    // An unknown bit named by the image's feature-name table: rename the entry of bit 4.
    let entry = find(&t, b"extended L2 entries") - 2;
    let named = patched(
        &t,
        "named.qcow2",
        &[(72, &incompatible(1 << 40)), (entry + 1, &[40])],
    );
    assert_eq!(
        refusal(&named, true),
        format!(
            "{}The image uses unknown incompatible features: bit 40 'extended L2 entries'.",
            prefix(&named)
        )
    );

    // Internal snapshots: read-only only.
    let snap = dir.join("snap.qcow2");
    std::fs::copy(&t, &snap).unwrap();
    qemu_img(&["snapshot", "-c", "s1", path(&snap)]);
    assert_eq!(
        refusal(&snap, false),
        format!("{}The image has 1 internal snapshots, which are not supported for writing; open it read-only.", prefix(&snap))
    );
    unlocked(|| open_disk(&snap, true, None)).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_backing_files_are_refused_by_name() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("backing");
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let over = dir.join("over.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        path(&over),
    ]);
    let prefix = |image: &Path| format!("The qcow2 image '{}' cannot be used: ", image.display());

    // No backing format extension: its type patched to an unknown one.
    let ext = find(&over, &0xe279_2acau32.to_be_bytes());
    let no_format = patched(
        &over,
        "noformat.qcow2",
        &[(ext, &0x0bad_cafeu32.to_be_bytes())],
    );
    assert_eq!(
        refusal(&no_format, true),
        format!("{}The image names the backing file 'base.raw' but no backing format; formats are never probed, so set one with 'qemu-img rebase -u -b <file> -F <raw|qcow2>'.", prefix(&no_format))
    );
    let vpc = patched(&over, "vpc.qcow2", &[(ext + 8, b"vpc")]);
    assert_eq!(
        refusal(&vpc, true),
        format!(
            "{}The backing format 'vpc' is not supported; only raw and qcow2 are.",
            prefix(&vpc)
        )
    );
    let missing = patched(
        &over,
        "missing.qcow2",
        &[(find(&over, b"base.raw"), b"gone.raw")],
    );
    assert_eq!(
        refusal(&missing, true),
        format!(
            "{}Failed to open the backing file '{}': Failed to open the disk image '{}': No such file or directory (os error 2)",
            prefix(&missing),
            dir.join("gone.raw").display(),
            dir.join("gone.raw").display()
        )
    );

    // A loop: a -> b -> a.
    let a = dir.join("a.qcow2");
    let b = dir.join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", path(&b), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        path(&a),
    ]);
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        path(&b),
    ]);
    let text = refusal(&a, true);
    assert!(
        text.ends_with(&format!(
            "The backing file '{}' is already in the backing chain, which would make a loop.",
            a.display()
        )),
        "{text}"
    );

    // Nine backing files below the top image: one too many.
    let mut below = "base.raw".to_string();
    let mut fmt = "raw";
    for i in 0..9 {
        let image = dir.join(format!("chain{i}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &below,
            "-F",
            fmt,
            path(&image),
        ]);
        below = format!("chain{i}.qcow2");
        fmt = "qcow2";
    }
    unlocked(|| open_disk(&dir.join("chain7.qcow2"), true, None)).unwrap();
    let text = refusal(&dir.join("chain8.qcow2"), true);
    assert!(
        text.ends_with("The backing chain has more than 8 backing files."),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
