//! The qcow_header fuzz body on stable: a few thousand images mutated from qemu-img seeds (and
//! from a hand-made header) with a fixed seed. It must not panic or hang.

use std::path::Path;
use std::process::Command;

use super::QcowFile;
use crate::virtio::block::test_utils::fuzz_qcow_image;
use crate::virtio::block::DiskBackend;

/// xorshift64*, seeded: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Small images from qemu-img (with data, zero and compressed clusters), if it is installed.
fn qemu_seeds() -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("kiln-qcow-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let mut seeds = Vec::new();
    for (name, options) in [
        ("a", "cluster_size=4096,refcount_bits=1"),
        ("b", "cluster_size=512,compat=0.10"),
        ("c", "cluster_size=4096,refcount_bits=64"),
    ] {
        let image = dir.join(name);
        let image_str = image.to_str().unwrap_or_default();
        let made = run(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-o", options, image_str, "256k",
            ],
        ) && run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0x11 0 6k",
                "-c",
                "write -z 64k 8k",
                image_str,
            ],
        );
        if made {
            seeds.extend(std::fs::read(&image));
        }
    }
    let raw = dir.join("raw");
    let compressed = dir.join("z");
    if std::fs::write(&raw, vec![0x42u8; 64 << 10]).is_ok()
        && run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "cluster_size=4096",
                path(&raw),
                path(&compressed),
            ],
        )
    {
        seeds.extend(std::fs::read(&compressed));
    }
    let _ = std::fs::remove_dir_all(&dir);
    seeds
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[test]
fn fuzz_body_survives_mutated_images() {
    let mut seeds = qemu_seeds();
    if seeds.is_empty() {
        eprintln!("qemu-img is missing: mutating only a hand-made header");
    }
    let mut handmade = super::header::tests::v3_header();
    handmade.truncate(4096);
    handmade[20..24].copy_from_slice(&12u32.to_be_bytes());
    seeds.push(handmade);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..2400u32 {
        let seed = &seeds[round as usize % seeds.len()];
        let mut image = seed.clone();
        let mutations = 1 + rng.next() % 8;
        for _ in 0..mutations {
            // Half the mutations hit the fixed header fields.
            let hot = if rng.next().is_multiple_of(2) {
                112
            } else {
                u64::MAX
            }
            .min(image.len() as u64);
            let at = (rng.next() % hot) as usize;
            let end = (at + 8).min(image.len());
            match rng.next() % 4 {
                0 => image[at] ^= 1 << (rng.next() % 8),
                1 => image[at] = rng.next() as u8,
                2 => image[at..end].fill(0xff),
                _ => image.truncate(at.max(4)),
            }
            if image.len() < 4 {
                break;
            }
        }
        fuzz_qcow_image(&image);
    }
    // Random bytes behind the magic.
    for _ in 0..200 {
        let mut image = b"QFI\xfb".to_vec();
        image.extend((0..rng.next() % 2048).map(|_| rng.next() as u8));
        fuzz_qcow_image(&image);
    }
}

/// The first fuzzer find (a bug in the body, not the backend): a v2 image of a one-byte disk,
/// shorter than the offsets the body probed.
#[test]
fn fuzz_body_serves_a_one_byte_disk() {
    let mut image = vec![0u8; 2048];
    image[0..4].copy_from_slice(b"QFI\xfb");
    image[4..8].copy_from_slice(&2u32.to_be_bytes());
    image[20..24].copy_from_slice(&9u32.to_be_bytes());
    image[24..32].copy_from_slice(&1u64.to_be_bytes());
    image[36..40].copy_from_slice(&2u32.to_be_bytes());
    image[40..48].copy_from_slice(&0x600u64.to_be_bytes());
    image[48..56].copy_from_slice(&0x200u64.to_be_bytes());
    fuzz_qcow_image(&image);
}

/// The qcow_ops body on generated inputs: fresh images and chains must match the model
/// exactly; corrupted ones must not panic.
#[test]
fn fuzz_ops_body_matches_the_model() {
    let mut rng = Rng(0x5eed_0b5e_55ed_0002);
    for round in 0..160u32 {
        let len = 8 + rng.next() % 600;
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half the rounds keep the image intact, so the model is checked.
        if round % 2 == 0 {
            input[0] &= 0x7f;
        }
        crate::virtio::block::test_utils::fuzz_qcow_ops(&input);
    }
}

/// The images the qcow_ops body starts from are ones QEMU accepts as clean.
#[test]
fn fuzz_ops_images_are_clean_for_qemu() {
    let dir = std::env::temp_dir().join(format!("kiln-qcow-ops-check-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("base.raw"), vec![7u8; 65536]).unwrap();
    for (bits, size, backing) in [
        (9, 2 << 20, None),
        (16, 512, Some(("base.raw", "raw"))),
        (12, 1 << 20, Some(("base.raw", "raw"))),
    ] {
        let image = dir.join(format!("fresh-{bits}.qcow2"));
        crate::virtio::block::test_utils::create_qcow2(&image, bits, size, backing).unwrap();
        let Ok(out) = Command::new("qemu-img")
            .args(["check", "-f", "qcow2", path(&image)])
            .output()
        else {
            eprintln!("qemu-img is missing: the fresh images are not checked");
            break;
        };
        assert!(
            out.status.success(),
            "{}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        let mut disk = QcowFile::open(&image, false).unwrap();
        disk.write_at(&[1u8; 300], 100).unwrap();
        drop(disk);
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2", path(&image)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
