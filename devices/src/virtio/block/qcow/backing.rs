//! Backing files: resolving the name in the header, and opening the base read-only as the
//! format the header's backing-format extension names. The format is never probed from a
//! backing file's content: a raw base whose guest wrote a qcow2 header must stay raw.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::error::QcowError;
use super::header::Header;
use super::QcowFile;
use crate::virtio::block::{DiskBackend, DiskError, RawFile};

/// Backing files below the image the user named, at most.
pub(super) const MAX_CHAIN_DEPTH: usize = 8;
/// Bytes of L1 and refcount tables a whole chain may hold: a writable image with the largest
/// tables QEMU allows (40 MiB), and room for its backing files.
const MAX_CHAIN_TABLE_BYTES: u64 = 64 << 20;

/// The images opened so far in one chain, from the image the user named down.
#[derive(Debug)]
pub(super) struct Chain {
    /// Their identities.
    ids: Vec<FileId>,
    /// Bytes of L1 and refcount tables they hold.
    pub table_bytes: u64,
    /// The guest bytes the image the user named can read from the next image down: no more
    /// than the smallest virtual size above it.
    pub reach: u64,
}

impl Chain {
    /// The chain of the image the user named, whose identity is `id`.
    pub fn new(id: FileId) -> Chain {
        Chain {
            ids: vec![id],
            table_bytes: 0,
            reach: u64::MAX,
        }
    }

    /// Accounts for `bytes` of tables an image is about to load, or refuses them if the chain
    /// would pass its bound.
    pub fn charge(&mut self, bytes: u64) -> Result<(), QcowError> {
        self.table_bytes = self
            .table_bytes
            .checked_add(bytes)
            .filter(|total| *total <= MAX_CHAIN_TABLE_BYTES)
            .ok_or(QcowError::ChainTables(MAX_CHAIN_TABLE_BYTES))?;
        Ok(())
    }
}

/// A file's identity, the same however a path names it (links, `..`, bind mounts): its
/// device and inode, from `stat`. Not from resolving the path: `PATCH /drives` opens a new
/// image under the VMM thread's seccomp filter, which has no `readlink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(super) fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = fs::metadata(path)?;
        Ok(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

/// Opens the backing file of the image at `overlay`, if it names one. `chain` holds the
/// images above it, the image at `overlay` last.
pub(super) fn open(
    overlay: &Path,
    header: &Header,
    chain: &mut Chain,
) -> Result<Option<Box<dyn DiskBackend>>, QcowError> {
    let Some(name) = &header.backing_name else {
        return Ok(None);
    };
    let name = Path::new(OsStr::from_bytes(name));
    let format = header
        .backing_format
        .as_deref()
        .ok_or_else(|| QcowError::BackingFormatMissing(name.display().to_string()))?;
    // A relative name is relative to the overlay's directory, not to Kiln's.
    let path = match overlay.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    };
    if chain.ids.len() > MAX_CHAIN_DEPTH {
        return Err(QcowError::ChainTooDeep(MAX_CHAIN_DEPTH));
    }
    let backing_error = |source: DiskError| QcowError::Backing {
        path: path.clone(),
        source: Box::new(source),
    };
    let id = FileId::of(&path).map_err(|source| {
        backing_error(DiskError::Open {
            path: path.clone(),
            source,
        })
    })?;
    if chain.ids.contains(&id) {
        return Err(QcowError::ChainLoop(path));
    }
    chain.ids.push(id);
    let disk: Box<dyn DiskBackend> = match format {
        "raw" => Box::new(RawFile::open(&path, true).map_err(backing_error)?),
        "qcow2" => Box::new(QcowFile::open_in_chain(&path, true, chain).map_err(backing_error)?),
        other => return Err(QcowError::BackingFormat(other.to_string())),
    };
    Ok(Some(disk))
}
