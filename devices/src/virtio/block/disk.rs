//! The disk backend contract: what the block device needs from an image, whatever its format.
//!
//! The device speaks in byte offsets on the disk the guest sees; a backend maps them onto its
//! storage (a raw file maps them one to one, a qcow2 image through its cluster tables). Every
//! method takes `&mut self` so that a backend may update its own metadata while serving I/O.
//! Every file backend opens its image through [`open_locked`], and fails with [`DiskError`].

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::format::ImageFormat;
use super::lock::{lock_image, Access, ImageLockError};
use super::qcow::error::QcowError;
use crate::host_file::open_data_file;

/// A disk image as the block device uses it.
// A disk is not a collection that can be "empty": an `is_empty` would only add noise.
#[allow(clippy::len_without_is_empty)]
pub trait DiskBackend: Send {
    /// The size of the disk the guest sees, in bytes.
    fn len(&self) -> u64;

    /// Fills all of `buf` from the disk at byte `offset`; a short read is an error.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` to the disk at byte `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;

    /// The image's format: only a qcow2 image can be frozen under a new overlay.
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
}

/// Why a disk image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image file could not be opened.
    #[error("Failed to open the disk image '{path}': {source}")]
    Open { path: PathBuf, source: io::Error },
    /// The size of the image could not be determined.
    #[error("Failed to get the size of the disk image '{path}': {source}")]
    Size { path: PathBuf, source: io::Error },
    /// Another user of the image (Kiln, QEMU, qemu-img) does not let Kiln use it.
    #[error("The disk image '{path}' is locked: {source}")]
    Lock {
        path: PathBuf,
        source: ImageLockError,
    },
    /// The image is a qcow2 image Kiln cannot serve.
    #[error("The qcow2 image '{path}' cannot be used: {source}")]
    Qcow { path: PathBuf, source: QcowError },
}

/// Opens the image at `path` as a data file, for writing unless `access` is [`Access::Read`],
/// and locks it before a byte is read, so a writer elsewhere cannot change what is parsed.
pub(super) fn open_locked(path: &Path, access: Access) -> Result<File, DiskError> {
    let write = !matches!(access, Access::Read);
    let file =
        open_data_file(path, OpenOptions::new().read(true).write(write)).map_err(|source| {
            DiskError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
    lock_image(&file, access).map_err(|source| DiskError::Lock {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file)
}
