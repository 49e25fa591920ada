//! qcow2 images (versions 2 and 3) with raw or qcow2 backing files: the guest's disk mapped
//! through two levels of tables onto clusters of the image file, allocated as the guest writes.
//!
//! ```text
//!  header (cluster 0) ── extensions: backing format, feature names; backing file name
//!    │
//!    ├─ L1 table (in memory) ──> L2 tables (LRU cache) ──> data clusters
//!    │     guest offset = [ L1 index | L2 index | offset in cluster ]   or compressed data,
//!    │                                                                  zeros, or the backing file
//!    └─ refcount table (in memory) ──> refcount blocks (LRU cache): a count per host cluster
//! ```
//!
//! | file           | owns                                                                 |
//! |----------------|----------------------------------------------------------------------|
//! | header.rs      | parsing and checking the header, extensions and backing file name    |
//! | l2.rs          | decoding L1 and L2 entries                                            |
//! | compressed.rs  | compressed cluster descriptors and inflating them                    |
//! | refcount.rs    | refcount entries of every width, refcount blocks, the table, allocation |
//! | cache.rs       | the LRU cache of L2 tables and refcount blocks                       |
//! | backing.rs     | resolving and opening the backing chain                              |
//! | io.rs          | the read and write paths                                             |
//! | overlap.rs     | refusing data writes that would land on metadata; the corrupt bit    |
//! | create.rs      | writing new overlays, for disk-consistent snapshots                 |
//!
//! Memory. Every table sized by a header field is checked against QEMU's limits (32 MiB of L1
//! table, 8 MiB of refcount table), the virtual size and the file length before it is read. A
//! read-only image (every backing file) loads only the L1 entries that the disk above it can
//! reach, and a whole chain holds at most 64 MiB of L1 and refcount tables.
//!
//! Crash consistency. New clusters are always taken past the end of the file, and metadata is
//! written through in an order that leaves a crash at any point with, at worst, leaked clusters:
//!
//! ```text
//!  1. refcount of the new cluster = 1   (a new refcount block first counts itself, and is on
//!                                         disk before the table entry pointing to it)
//!  2. data written to the new cluster   (a partial write merged with backing data, zeros, or
//!                                         the decompressed old cluster)
//!  3. L2 entry -> new cluster           (a new L2 table is written whole, then step 4)
//!  4. L1 entry -> new L2 table
//!  5. old compressed / shared cluster's refcount dropped
//! ```
//!
//! `flush` is one fdatasync. The write-through order holds for a killed process; ordering
//! against power loss between flushes is not enforced with barriers (the guest's flush is).
//! Kiln never sets the dirty bit and refuses to write an image that has it set. It sets the
//! corrupt bit, as QEMU does, when a data write would land on metadata (overlap.rs).

mod backing;
mod cache;
mod compressed;
mod create;
pub(super) mod error;
#[cfg(test)]
mod fuzz_tests;
mod header;
mod io;
mod l2;
#[cfg(test)]
mod limits_tests;
mod overlap;
mod refcount;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[cfg(any(test, feature = "test-utils"))]
pub(crate) use create::layout;
pub use create::{create_overlay, CreateError};
pub use error::QcowError;
pub(crate) use header::MAGIC;

use super::disk::{open_locked, DiskBackend, DiskError};
use super::format::ImageFormat;
use super::lock::Access;
use backing::{Chain, FileId};
use cache::TableCache;
use header::{Header, FIXED_HEADER_BYTES, OFFSET_AUTOCLEAR};
use refcount::Refcounts;

/// An open qcow2 image.
pub struct QcowFile {
    file: File,
    read_only: bool,
    version: u32,
    /// The incompatible feature bits of the header.
    incompatible: u64,
    /// Marked corrupt by this open: every request fails.
    broken: bool,
    /// Where the L2 tables and refcount blocks are, built on the first write.
    metadata_index: Option<overlap::MetadataIndex>,
    cluster_bits: u32,
    /// The virtual disk size.
    size: u64,
    l1: Vec<u64>,
    l1_offset: u64,
    l2_cache: TableCache,
    /// Only loaded for a writable image: reads never need refcounts.
    refcounts: Option<Refcounts>,
    backing: Option<Box<dyn DiskBackend>>,
    /// The last compressed cluster read, by host offset, decompressed.
    last_compressed: Option<(u64, Vec<u8>)>,
    /// Bytes of L1 and refcount tables held by the chain when this image was opened: for the
    /// image the user named, by the whole chain.
    table_bytes: u64,
}

impl fmt::Debug for QcowFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QcowFile")
            .field("read_only", &self.read_only)
            .field("cluster_bits", &self.cluster_bits)
            .field("size", &self.size)
            .field("has_backing", &self.backing.is_some())
            .field("table_bytes", &self.table_bytes)
            .finish_non_exhaustive()
    }
}

/// An `io::Error` for metadata that breaks the format.
pub(super) fn corrupt(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("The qcow2 image is corrupt: {what}."),
    )
}

/// The offset in a table entry, checked to be a cluster boundary past the header.
pub(super) fn entry_offset(offset: u64, cluster_bits: u32, what: &str) -> std::io::Result<u64> {
    if offset == 0 || offset & ((1 << cluster_bits) - 1) != 0 {
        return Err(corrupt(&format!(
            "a {what} offset {offset:#x} is not a cluster past the header"
        )));
    }
    Ok(offset)
}

/// Fills `buf` from `file` at `offset`; bytes past the end of the file read as zeros, as QEMU
/// reads them.
pub(super) fn read_padded(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|rest| !rest.is_empty()) {
        match file.read_at(rest, offset + done as u64) {
            Ok(0) => {
                rest.fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a table of big-endian u64 entries.
fn read_table(
    file: &File,
    offset: u64,
    entries: u64,
    what: &'static str,
) -> Result<Vec<u64>, QcowError> {
    let len = usize::try_from(entries * 8).map_err(|_| QcowError::Read {
        what,
        source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
    })?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|source| QcowError::Read { what, source })?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(<[u8; 8]>::try_from(c).unwrap_or_default()))
        .collect())
}

impl QcowFile {
    /// Opens the qcow2 image at `path`, and its backing chain read-only; for reading only if
    /// `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<QcowFile, DiskError> {
        let id = FileId::of(path).map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::open_in_chain(path, read_only, &mut Chain::new(id))
    }

    /// Opens an image whose identity ends `chain`.
    fn open_in_chain(
        path: &Path,
        read_only: bool,
        chain: &mut Chain,
    ) -> Result<QcowFile, DiskError> {
        // Locked before a byte is read, so a writer elsewhere cannot change what is parsed.
        let access = if read_only {
            Access::Read
        } else {
            Access::WriteResize
        };
        let file = open_locked(path, access)?;
        let file_len = file
            .metadata()
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        Self::load(file, file_len, path, read_only, chain).map_err(|source| DiskError::Qcow {
            path: path.to_path_buf(),
            source,
        })
    }

    fn load(
        file: File,
        file_len: u64,
        path: &Path,
        read_only: bool,
        chain: &mut Chain,
    ) -> Result<QcowFile, QcowError> {
        let read = |what| move |source| QcowError::Read { what, source };
        let mut fixed = [0u8; FIXED_HEADER_BYTES];
        read_padded(&file, &mut fixed, 0).map_err(read("header"))?;
        let cluster_bits = header::cluster_bits(&fixed)?;
        let mut first = vec![0u8; 1 << cluster_bits];
        read_padded(&file, &mut first, 0).map_err(read("header"))?;
        let header = Header::parse(&first)?;
        header.check_features(!read_only)?;
        header.check_tables(file_len)?;
        // Only the L1 entries the chain's disk can reach are loaded from a read-only image: a
        // backing file under a small overlay, or a header whose L1 table is far larger than its
        // virtual size, costs no memory for the rest. A writable image holds all of them, since
        // every data write is checked against every L2 table they name.
        let reach = chain.reach.min(header.size);
        let l1_entries = if read_only {
            header.l1_entries_for(reach)
        } else {
            header.l1_size.into()
        };
        let refcount_entries = if read_only {
            0
        } else {
            u64::from(header.refcount_table_clusters) << (cluster_bits - 3)
        };
        chain.charge((l1_entries + refcount_entries) * 8)?;
        chain.reach = reach;
        let l1 = read_table(&file, header.l1_table_offset, l1_entries, "L1 table")?;
        let refcounts = if read_only {
            None
        } else {
            let table = read_table(
                &file,
                header.refcount_table_offset,
                refcount_entries,
                "refcount table",
            )?;
            // Autoclear features (bitmaps) describe data Kiln does not keep up to date:
            // clearing them tells later readers to ignore that data.
            if header.autoclear != 0 {
                file.write_all_at(&[0u8; 8], OFFSET_AUTOCLEAR)
                    .and_then(|()| file.sync_data())
                    .map_err(QcowError::WriteHeader)?;
            }
            Some(Refcounts::new(
                header.refcount_order,
                cluster_bits,
                table,
                header.refcount_table_offset,
                file_len,
            ))
        };
        let backing = backing::open(path, &header, chain)?;
        Ok(QcowFile {
            file,
            read_only,
            version: header.version,
            incompatible: header.incompatible,
            broken: false,
            metadata_index: None,
            cluster_bits,
            size: header.size,
            l1,
            l1_offset: header.l1_table_offset,
            l2_cache: TableCache::new(1 << cluster_bits),
            refcounts,
            backing,
            last_compressed: None,
            table_bytes: chain.table_bytes,
        })
    }
}

impl DiskBackend for QcowFile {
    fn len(&self) -> u64 {
        self.size
    }

    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_guest(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.write_guest(buf, offset)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.check_usable()?;
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}
