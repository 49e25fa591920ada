//! Block devices from the `drives` configuration: the backing file opened as a raw disk, and
//! the virtio-block device around it.

use std::sync::{Arc, Mutex};

use devices::virtio::block::{
    Block, BlockConfig, BlockStats, CacheType as BlockCache, DiskBackend, ImageFormat,
};

use crate::config::{CacheType, DiskFormat, DriveConfig};
use crate::metrics::{Counter, MetricSource};

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    /// The drive has no backing file (validation normally catches this).
    #[error("Drive '{0}' has no path_on_host.")]
    MissingPath(String),
    /// The backing file could not be opened.
    #[error("Drive '{id}': {source}")]
    Disk {
        id: String,
        source: devices::virtio::block::DiskError,
    },
    /// The device could not be created.
    #[error("Drive '{id}': {source}")]
    Device {
        id: String,
        source: devices::virtio::block::BlockError,
    },
}

/// Opens the image of `drive`: in its configured format, or, without one, as qcow2 if the
/// image has the qcow2 magic and raw otherwise.
pub fn open_disk(drive: &DriveConfig) -> Result<Box<dyn DiskBackend>, BlockDeviceError> {
    let id = drive.drive_id.clone();
    let path = drive
        .path_on_host
        .as_ref()
        .ok_or_else(|| BlockDeviceError::MissingPath(id.clone()))?;
    let format = drive.format.map(|f| match f {
        DiskFormat::Raw => ImageFormat::Raw,
        DiskFormat::Qcow2 => ImageFormat::Qcow2,
    });
    devices::virtio::block::open_disk(path, drive.is_read_only, format)
        .map_err(|source| BlockDeviceError::Disk { id, source })
}

/// Whether two drives name the same image file (by device and inode, whatever the paths), so
/// that opening one while the other is open would meet the other's image lock.
pub fn same_image(a: &DriveConfig, b: &DriveConfig) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |drive: &DriveConfig| {
        let meta = std::fs::metadata(drive.path_on_host.as_ref()?).ok()?;
        Some((meta.dev(), meta.ino()))
    };
    matches!((id(a), id(b)), (Some(a), Some(b)) if a == b)
}

/// Creates the virtio-block device for `drive`.
pub fn create(drive: &DriveConfig) -> Result<Arc<Mutex<Block>>, BlockDeviceError> {
    let id = drive.drive_id.clone();
    let disk = open_disk(drive)?;
    let config = BlockConfig {
        id: id.clone(),
        read_only: drive.is_read_only,
        cache: match drive.cache_type {
            CacheType::Unsafe => BlockCache::Unsafe,
            CacheType::Writeback => BlockCache::Writeback,
        },
    };
    let block =
        Block::new(disk, config).map_err(|source| BlockDeviceError::Device { id, source })?;
    Ok(Arc::new(Mutex::new(block)))
}

/// A drive's counters, as the `block_<drive_id>` metrics group.
#[derive(Debug)]
pub struct BlockMetrics {
    group: String,
    stats: Arc<BlockStats>,
}

impl BlockMetrics {
    /// The metrics of drive `drive_id`.
    pub fn new(drive_id: &str, stats: Arc<BlockStats>) -> Self {
        Self {
            group: format!("block_{drive_id}"),
            stats,
        }
    }
}

impl MetricSource for BlockMetrics {
    fn counters(&self) -> Vec<Counter> {
        let mut counters = Counter::group(&self.group, self.stats.snapshot());
        counters.extend(Counter::latency_sums(&self.group, self.stats.latencies()));
        counters
    }

    fn gauges(&self) -> Vec<Counter> {
        Counter::latency_extremes(&self.group, self.stats.latencies())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(path: &std::path::Path) -> DriveConfig {
        serde_json::from_value(serde_json::json!({
            "drive_id": "d", "path_on_host": path, "is_root_device": false,
        }))
        .unwrap()
    }

    #[test]
    fn the_same_image_is_recognised_through_another_path() {
        let dir = std::env::temp_dir().join(format!("kiln-same-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, link) = (dir.join("a"), dir.join("b"), dir.join("link"));
        std::fs::write(&a, [0u8; 512]).unwrap();
        std::fs::write(&b, [0u8; 512]).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(same_image(&drive(&a), &drive(&link)));
        assert!(same_image(&drive(&a), &drive(&dir.join(".").join("a"))));
        assert!(!same_image(&drive(&a), &drive(&b)));
        assert!(!same_image(&drive(&a), &drive(&dir.join("missing"))));
        // Two opens of one writable image conflict; reopening needs the first closed.
        let first = open_disk(&drive(&a)).unwrap();
        assert!(open_disk(&drive(&link)).is_err());
        drop(first);
        open_disk(&drive(&link)).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
