//! virtio-block: a disk for the guest, served from a [`DiskBackend`].
//!
//! A request travels through one file per step:
//!
//! ```text
//! queue eventfd ──> device.rs    Block: drains the queue, completes chains, raises the interrupt
//!                      │
//!                      ├──> request.rs  descriptor chain ──> Request (or Rejected), all
//!                      │                buffers checked against guest memory
//!                      └──> execute.rs  Request ──> DiskBackend calls ──> status byte
//!                                          │
//!                            disk.rs       DiskBackend: len, read_at, write_at, flush
//!                            raw.rs        RawFile: a raw image or host block device
//!                            qcow/         QcowFile: a qcow2 image and its backing chain;
//!                                          create_overlay: a new image over a frozen one
//!                            format.rs     open_disk: picks RawFile or QcowFile
//!                            lock.rs       QEMU's image locks, on every image either opens
//!                            probed_raw.rs ProbedRaw: a raw image found by probing, whose
//!                                          first sector may not become another format's
//! ```
//!
//! The guest is not trusted: a malformed chain costs it an IOERR status (or, when not even the
//! status byte can be found, a used entry of length 0), never a host panic.

mod device;
mod disk;
mod execute;
mod format;
mod lock;
mod probed_raw;
mod qcow;
mod raw;
mod request;
mod stats;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::{Block, BlockConfig, BlockError, BlockState};
pub use disk::{DiskBackend, DiskError};
pub use execute::CacheType;
pub use format::{open_disk, ImageFormat};
pub use lock::ImageLockError;
#[cfg(any(test, feature = "test-utils"))]
pub(crate) use probed_raw::format_magic;
pub use qcow::{create_overlay, CreateError, QcowError, QcowFile};
pub use raw::RawFile;
pub use stats::BlockStats;
