//! Writes never land on metadata: before guest data goes to a host cluster, the cluster is
//! checked against every piece of metadata the image has (the header, the L1 table, the
//! refcount table, every L2 table the L1 table names and every refcount block the refcount
//! table names), as QEMU's overlap check does. A hit means an L2 entry (or the allocator's view
//! of the file) is corrupt: the image is marked corrupt as QEMU marks it (incompatible bit 1,
//! a version 3 header only), the write fails, and so does all later I/O through this open.

use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::header::{INCOMPAT_CORRUPT, OFFSET_INCOMPATIBLE};
use super::l2::OFFSET_MASK;
use super::{corrupt, QcowFile};

/// The metadata a data write would have landed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Metadata {
    Header,
    L1Table,
    RefcountTable,
    L2Table,
    RefcountBlock,
}

impl Metadata {
    /// QEMU's name for it, as in "overlaps with active L2 table".
    fn name(self) -> &'static str {
        match self {
            Metadata::Header => "qcow2_header",
            Metadata::L1Table => "active L1 table",
            Metadata::RefcountTable => "refcount table",
            Metadata::L2Table => "active L2 table",
            Metadata::RefcountBlock => "refcount block",
        }
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The host offsets of every L2 table and refcount block, sorted, so that a write is checked in
/// O(log n) rather than by scanning both tables as QEMU does. Rebuilt after the L1 table gains
/// an entry (the image drops the index) or the refcount table changes (`refcount_changes`).
#[derive(Debug)]
pub(super) struct MetadataIndex {
    refcount_changes: u64,
    clusters: Vec<(u64, Metadata)>,
}

impl QcowFile {
    /// The metadata the host cluster at `host` overlaps, if any.
    fn metadata_at(&mut self, host: u64) -> Option<Metadata> {
        let cluster_size = 1u64 << self.cluster_bits;
        let target = host..host.saturating_add(cluster_size);
        // A writable image holds its whole L1 table, so this is the table on disk.
        let l1 = self.l1_offset..self.l1_offset + self.l1.len() as u64 * 8;
        if overlaps(&target, &(0..cluster_size)) {
            return Some(Metadata::Header);
        }
        if overlaps(&target, &l1) {
            return Some(Metadata::L1Table);
        }
        let refcounts = self.refcounts.as_ref();
        if refcounts.is_some_and(|r| overlaps(&target, &r.table_range())) {
            return Some(Metadata::RefcountTable);
        }
        let refcount_changes = refcounts.map_or(0, |r| r.changes());
        let index = match self.metadata_index.take() {
            Some(index) if index.refcount_changes == refcount_changes => index,
            _ => self.build_index(refcount_changes),
        };
        // Clusters of the index that start less than a cluster before `host` may overlap it.
        let first = index
            .clusters
            .partition_point(|(offset, _)| offset.saturating_add(cluster_size) <= host);
        let found = index
            .clusters
            .get(first)
            .filter(|(offset, _)| *offset < target.end)
            .map(|(_, kind)| *kind);
        self.metadata_index = Some(index);
        found
    }

    fn build_index(&self, refcount_changes: u64) -> MetadataIndex {
        let named = |entries: &[u64], kind: Metadata| {
            entries
                .iter()
                .map(|entry| entry & OFFSET_MASK)
                .filter(|offset| *offset != 0)
                .map(move |offset| (offset, kind))
                .collect::<Vec<_>>()
        };
        let mut clusters = named(&self.l1, Metadata::L2Table);
        if let Some(refcounts) = &self.refcounts {
            clusters.extend(named(refcounts.table(), Metadata::RefcountBlock));
        }
        clusters.sort_unstable();
        MetadataIndex {
            refcount_changes,
            clusters,
        }
    }

    /// Refuses a data write to the host cluster at `host` if it holds metadata, marking the
    /// image corrupt.
    pub(super) fn check_data_write(&mut self, host: u64) -> io::Result<()> {
        let Some(metadata) = self.metadata_at(host) else {
            return Ok(());
        };
        let what = format!(
            "Preventing invalid write on metadata (overlaps with {}) at {host:#x}",
            metadata.name()
        );
        // Once per open: every later request fails before it gets here.
        log::error!("qcow2: Marking image as corrupt: {what}.");
        self.broken = true;
        if self.version >= 3 {
            let bits = (self.incompatible | INCOMPAT_CORRUPT).to_be_bytes();
            self.file
                .write_all_at(&bits, OFFSET_INCOMPATIBLE)
                .and_then(|()| self.file.sync_data())?;
        }
        Err(corrupt(&what))
    }

    /// Fails every request once the image has been marked corrupt, as QEMU stops serving it.
    pub(super) fn check_usable(&self) -> io::Result<()> {
        if self.broken {
            return Err(corrupt(
                "it was marked corrupt after a write that would have landed on metadata",
            ));
        }
        Ok(())
    }
}
