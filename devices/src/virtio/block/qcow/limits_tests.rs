//! Metadata limits on hand-written images: tables larger than QEMU allows are refused with
//! their own message, and a backing chain loads only the tables its disk can reach, within
//! one bound for the whole chain.

use std::path::{Path, PathBuf};

use super::header::MAGIC;
use super::QcowFile;
use crate::virtio::block::test_utils::retry_locked;
use crate::virtio::block::DiskError;

const MIB: u64 = 1 << 20;

/// A hand-written version 3 image with no cluster allocated: the header in cluster 0, the
/// refcount table from cluster 1, the L1 table after it; the file is sparse up to the end of
/// the L1 table.
struct Craft {
    cluster_bits: u32,
    size: u64,
    l1_entries: u32,
    refcount_clusters: u32,
    /// A qcow2 backing file name.
    backing: Option<String>,
}

impl Craft {
    fn tiny() -> Craft {
        Craft {
            cluster_bits: 16,
            size: MIB,
            l1_entries: 1,
            refcount_clusters: 1,
            backing: None,
        }
    }

    fn write(&self, path: &Path) {
        let cluster = 1u64 << self.cluster_bits;
        let mut header = vec![0u8; 4096.min(cluster as usize)];
        let put = |h: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            h[at..at + bytes.len()].copy_from_slice(bytes)
        };
        let refcount_at = cluster;
        let l1_at = refcount_at + u64::from(self.refcount_clusters) * cluster;
        put(&mut header, 0, &MAGIC);
        put(&mut header, 4, &3u32.to_be_bytes());
        put(&mut header, 20, &self.cluster_bits.to_be_bytes());
        put(&mut header, 24, &self.size.to_be_bytes());
        put(&mut header, 36, &self.l1_entries.to_be_bytes());
        put(&mut header, 40, &l1_at.to_be_bytes());
        put(&mut header, 48, &refcount_at.to_be_bytes());
        put(&mut header, 56, &self.refcount_clusters.to_be_bytes());
        put(&mut header, 96, &4u32.to_be_bytes());
        put(&mut header, 100, &104u32.to_be_bytes());
        if let Some(name) = &self.backing {
            // The backing format extension, then the end marker; the name at 0x100.
            put(&mut header, 104, &0xe279_2acau32.to_be_bytes());
            put(&mut header, 108, &5u32.to_be_bytes());
            put(&mut header, 112, b"qcow2");
            put(&mut header, 8, &0x100u64.to_be_bytes());
            put(&mut header, 16, &(name.len() as u32).to_be_bytes());
            put(&mut header, 0x100, name.as_bytes());
        }
        std::fs::write(path, &header).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(l1_at + u64::from(self.l1_entries) * 8)
            .unwrap();
    }
}

fn scratch(name: &str) -> PathBuf {
    crate::test_dir::scratch(&format!("qcow-limits-{name}"))
}

fn refusal(image: &Path, read_only: bool) -> String {
    match QcowFile::open(image, read_only) {
        Ok(_) => panic!("{} opened", image.display()),
        Err(e @ DiskError::Qcow { .. }) => e.to_string(),
        Err(e) => panic!("{} failed to open: {e}", image.display()),
    }
}

#[test]
fn tables_larger_than_qemu_allows_are_refused() {
    let dir = scratch("large");
    let prefix = |image: &Path| format!("The qcow2 image '{}' cannot be used: ", image.display());
    // QEMU's limits themselves are fine: a 32 MiB L1 table and an 8 MiB refcount table.
    let at_limit = dir.join("at-limit.qcow2");
    Craft {
        l1_entries: 4 << 20,
        refcount_clusters: 128,
        ..Craft::tiny()
    }
    .write(&at_limit);
    drop(QcowFile::open(&at_limit, false).unwrap());

    let l1 = dir.join("l1.qcow2");
    Craft {
        l1_entries: (4 << 20) + 1,
        ..Craft::tiny()
    }
    .write(&l1);
    for read_only in [true, false] {
        assert_eq!(
            refusal(&l1, read_only),
            format!(
                "{}The L1 table has 4194305 entries (33554440 bytes), more than the 32 MiB QEMU allows.",
                prefix(&l1)
            )
        );
    }

    let refcounts = dir.join("refcounts.qcow2");
    Craft {
        refcount_clusters: 129,
        ..Craft::tiny()
    }
    .write(&refcounts);
    // QEMU refuses the table at every open, so Kiln does too, though it reads it only to write.
    for read_only in [true, false] {
        assert_eq!(
            refusal(&refcounts, read_only),
            format!(
                "{}The refcount table has 129 clusters (8454144 bytes), more than the 8 MiB QEMU allows.",
                prefix(&refcounts)
            )
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A chain of `depth` images named `chain0.qcow2` (the base) up, each made by `craft`.
fn chain(dir: &Path, depth: usize, craft: impl Fn() -> Craft) -> PathBuf {
    for i in 0..depth {
        Craft {
            backing: i.checked_sub(1).map(|below| format!("chain{below}.qcow2")),
            ..craft()
        }
        .write(&dir.join(format!("chain{i}.qcow2")));
    }
    dir.join(format!("chain{}.qcow2", depth - 1))
}

#[test]
fn a_chain_loads_only_the_tables_its_disk_reaches() {
    let dir = scratch("chain");
    // Nine 1 MiB disks, each with the largest tables QEMU allows.
    let top = chain(&dir, 9, || Craft {
        l1_entries: 4 << 20,
        refcount_clusters: 128,
        ..Craft::tiny()
    });
    // Read-only, each image holds the one L1 entry a 1 MiB disk needs.
    assert_eq!(QcowFile::open(&top, true).unwrap().table_bytes, 9 * 8);
    // Writable, the top image holds its whole L1 table (a data write is checked against every
    // L2 table it names) and its refcount table, as QEMU does; the backing files one entry.
    let disk = retry_locked(
        || QcowFile::open(&top, false),
        |e| matches!(e, DiskError::Lock { .. }),
    )
    .unwrap();
    assert_eq!(disk.table_bytes, 32 * MIB + 8 * MIB + 8 * 8);
    drop(disk);

    // A backing file larger than its overlay holds only what the overlay can reach.
    let big = dir.join("big.qcow2");
    Craft {
        size: 64 << 30,
        l1_entries: 128,
        ..Craft::tiny()
    }
    .write(&big);
    let small = dir.join("small.qcow2");
    Craft {
        backing: Some("big.qcow2".into()),
        ..Craft::tiny()
    }
    .write(&small);
    assert_eq!(QcowFile::open(&small, true).unwrap().table_bytes, 2 * 8);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_chain_whose_tables_pass_the_bound_is_refused() {
    let dir = scratch("bound");
    // 64 GiB disks with 512-byte clusters: 16 MiB of L1 table each, 144 MiB for the chain.
    let top = chain(&dir, 9, || Craft {
        cluster_bits: 9,
        size: 64 << 30,
        l1_entries: 2 << 20,
        refcount_clusters: 1,
        backing: None,
    });
    let text = refusal(&top, true);
    assert!(
        text.ends_with(
            "The L1 and refcount tables of the backing chain would take more than 64 MiB of memory."
        ),
        "{text}"
    );
    // Four of them fit.
    let four = dir.join("chain3.qcow2");
    assert_eq!(QcowFile::open(&four, true).unwrap().table_bytes, 64 * MIB);
    std::fs::remove_dir_all(dir).unwrap();
}
