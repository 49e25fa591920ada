//! Freezing the drives at a snapshot: each writable qcow2 drive's image is flushed and left as
//! it is, and the drive goes on on a new overlay over it (`snapshot::drives` names and creates
//! it). Raw and read-only drives are left alone: a raw image cannot be put under an overlay,
//! and a read-only one does not change.

use std::path::Path;

use devices::virtio::block::{open_disk, ImageFormat};

use super::registry::{DeviceHandle, DeviceRegistry};
use crate::bounded_lock::lock;
use crate::snapshot::drives::{self, SnapshotDriveError};

/// What a freeze did with each drive.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FreezeReport {
    /// The drives it froze, by ID.
    pub frozen: Vec<String>,
    /// The writable drives it could not freeze (raw images), by ID: their images go on
    /// changing, and a snapshot does not cover them.
    pub not_covered: Vec<String>,
}

impl DeviceRegistry {
    /// Freezes every writable qcow2 drive for the snapshot at `snapshot_path`. The VM must be
    /// paused: no request is in flight, and none comes until the freeze is done. A drive that
    /// fails stays on its image; the drives frozen before it stay frozen.
    pub fn freeze_drives(
        &mut self,
        snapshot_path: &Path,
    ) -> Result<FreezeReport, SnapshotDriveError> {
        let mut report = FreezeReport::default();
        for device in self.iter_mut() {
            let DeviceHandle::Block { device, config } = &mut device.handle else {
                continue;
            };
            if config.is_read_only {
                continue;
            }
            let mut block = lock(device);
            if !drives::freezable(config, block.disk_mut().format()) {
                report.not_covered.push(config.drive_id.clone());
                continue;
            }
            block
                .disk_mut()
                .flush()
                .map_err(|source| SnapshotDriveError::Flush {
                    drive_id: config.drive_id.clone(),
                    source,
                })?;
            let size = block.disk_mut().len();
            let overlay = drives::overlay_for_running_vm(snapshot_path, config, size)?;
            let open_error = |source| SnapshotDriveError::Open {
                drive_id: config.drive_id.clone(),
                source,
            };
            // The drive's own open holds the write lock that the overlay's read-only open of
            // its backing image would meet: it closes first, and comes back if the overlay
            // cannot be opened.
            let (frozen, new) = (drives::image(config)?, drives::image(&overlay)?);
            let open = |path: &Path| open_disk(path, false, Some(ImageFormat::Qcow2));
            block
                .reopen_disk(|| open(new), || open(frozen))
                .map_err(open_error)?;
            log::info!(
                "Drive '{}': {} is frozen for the snapshot; the drive goes on on {}",
                config.drive_id,
                frozen.display(),
                new.display()
            );
            report.frozen.push(config.drive_id.clone());
            *config = overlay;
        }
        Ok(report)
    }
}
