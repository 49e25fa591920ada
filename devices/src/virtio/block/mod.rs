//! virtio-block: a disk for the guest, served from a [`DiskBackend`].

mod disk;
mod raw;

pub use disk::{DiskBackend, DiskError};
pub use raw::RawFile;
