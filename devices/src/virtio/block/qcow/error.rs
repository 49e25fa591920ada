//! Why a qcow2 image could not be opened: one variant per refused feature or broken field, each
//! message a sentence naming it. Errors met while serving I/O are `io::Error`s instead, since the
//! block device maps them all to one status byte.

use std::io;
use std::path::PathBuf;

/// Why a qcow2 image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum QcowError {
    /// Reading the image's metadata failed.
    #[error("Failed to read the qcow2 {what}: {source}")]
    Read {
        what: &'static str,
        source: io::Error,
    },
    /// Writing the image's header failed.
    #[error("Failed to update the qcow2 header: {0}")]
    WriteHeader(io::Error),
    /// The file does not start with the qcow2 magic.
    #[error("The file does not start with the qcow2 magic 'QFI\\xfb'.")]
    Magic,
    /// A version other than 2 or 3.
    #[error("The qcow2 version {0} is not supported; only versions 2 and 3 are.")]
    Version(u32),
    /// A cluster size out of range.
    #[error(
        "The cluster_bits field is {0}; only 9 to 21 (512-byte to 2 MiB clusters) are supported."
    )]
    ClusterBits(u32),
    /// A refcount width out of range.
    #[error("The refcount_order field is {0}; at most 6 (64-bit refcounts) is valid.")]
    RefcountOrder(u32),
    /// A v3 header length that is too short, unaligned, or past the first cluster.
    #[error("The header_length field is {0}; it must be a multiple of 8 from 104 up to the cluster size.")]
    HeaderLength(u32),
    /// A header extension that runs past the first cluster.
    #[error("The header extension {kind:#010x} runs past the end of the first cluster.")]
    Extension { kind: u32 },
    /// Encryption (the crypt_method field).
    #[error(
        "The image is encrypted (crypt_method {0}); encrypted qcow2 images are not supported."
    )]
    Encrypted(u32),
    /// Incompatible feature bit 2.
    #[error("The image keeps its data in an external data file (incompatible feature bit 2), which is not supported.")]
    ExternalDataFile,
    /// Incompatible feature bit 4.
    #[error("The image uses extended L2 entries with subclusters (incompatible feature bit 4), which are not supported.")]
    ExtendedL2,
    /// Incompatible feature bits this implementation does not know.
    #[error("The image uses unknown incompatible features: {0}.")]
    UnknownIncompatible(String),
    /// compression_type 1.
    #[error("The image uses zstd compression (compression_type 1), which is not supported; only deflate is.")]
    Zstd,
    /// Any other compression_type.
    #[error("The compression_type field is {0}, which is not a known compression method.")]
    CompressionType(u8),
    /// Internal snapshots and a writable open.
    #[error("The image has {0} internal snapshots, which are not supported for writing; open it read-only.")]
    Snapshots(u32),
    /// The corrupt bit and a writable open.
    #[error("The image is marked corrupt (incompatible feature bit 1), so it may only be opened read-only; repair it with 'qemu-img check -r all'.")]
    Corrupt,
    /// The dirty bit and a writable open.
    #[error("The image is marked dirty (incompatible feature bit 0), so its refcounts may be stale and it may only be opened read-only; repair it with 'qemu-img check -r all'.")]
    Dirty,
    /// A table that lies outside the file or is unaligned.
    #[error("The {table} (offset {offset:#x}, {bytes} bytes) is unaligned or outside the file.")]
    Table {
        table: &'static str,
        offset: u64,
        bytes: u64,
    },
    /// An L1 table over QEMU's limit.
    #[error(
        "The L1 table has {entries} entries ({bytes} bytes), more than the 32 MiB QEMU allows."
    )]
    L1TooLarge { entries: u32, bytes: u64 },
    /// A refcount table over QEMU's limit.
    #[error("The refcount table has {clusters} clusters ({bytes} bytes), more than the 8 MiB QEMU allows.")]
    RefcountTableTooLarge { clusters: u32, bytes: u64 },
    /// A chain whose tables together pass Kiln's bound.
    #[error("The L1 and refcount tables of the backing chain would take more than {} MiB of memory.", .0 >> 20)]
    ChainTables(u64),
    /// An L1 table too small for the virtual size.
    #[error(
        "The L1 table has {l1_size} entries but the virtual size of {size} bytes needs {needed}."
    )]
    L1TooSmall {
        l1_size: u32,
        size: u64,
        needed: u64,
    },
    /// A backing file name out of bounds or too long.
    #[error("The backing file name (offset {offset:#x}, {len} bytes) is longer than 1023 bytes or outside the first cluster.")]
    BackingName { offset: u64, len: u32 },
    /// A backing file without a backing format.
    #[error("The image names the backing file '{0}' but no backing format; formats are never probed, so set one with 'qemu-img rebase -u -b <file> -F <raw|qcow2>'.")]
    BackingFormatMissing(String),
    /// A backing format other than raw or qcow2.
    #[error("The backing format '{0}' is not supported; only raw and qcow2 are.")]
    BackingFormat(String),
    /// Too many images in the backing chain.
    #[error("The backing chain has more than {0} backing files.")]
    ChainTooDeep(usize),
    /// An image that is its own (indirect) backing file.
    #[error("The backing file '{}' is already in the backing chain, which would make a loop.", .0.display())]
    ChainLoop(PathBuf),
    /// A backing file that could not be opened.
    #[error("Failed to open the backing file '{}': {source}", path.display())]
    Backing {
        path: PathBuf,
        source: Box<super::super::DiskError>,
    },
}
