//! The drives of disk-consistent snapshots. A snapshot freezes each writable qcow2 drive: its
//! image is left as it was at the snapshot and never written again, and the running VM goes on
//! on a new overlay over it (`device_manager::freeze`). The snapshot file names the frozen
//! drives; a load puts each of them on a new overlay over its frozen image, at the path the
//! load's `drive_overrides` gives, so that any number of clones of one snapshot each write
//! their own overlay and none writes the frozen image or another clone's disk.
//!
//! ```text
//!  before:   VM ──> rootfs.qcow2
//!  snapshot: VM ──> vm.snap.rootfs.1.qcow2 ──> rootfs.qcow2 (frozen)
//!  load ×2:  clone 1 ──> clone1.qcow2 ──┐
//!            clone 2 ──> clone2.qcow2 ──┴──> rootfs.qcow2 (frozen)
//! ```

use std::io;
use std::path::{Path, PathBuf};

use devices::virtio::block::{create_overlay, CreateError, DiskError, ImageFormat};

use crate::config::{DiskFormat, DriveConfig, VmConfig};
use crate::rpc::DriveOverride;

/// How many numbered names a freeze tries for the running VM's new overlay.
const MAX_OVERLAY_NUMBER: u32 = 1000;

/// Why a drive could not be frozen, or put on its overlay at a load.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDriveError {
    /// The image's writes could not be made durable before freezing it.
    #[error("Failed to flush drive '{drive_id}' before freezing its image: {source}")]
    Flush { drive_id: String, source: io::Error },
    /// The new overlay could not be written.
    #[error("Drive '{drive_id}': {source}")]
    Overlay {
        drive_id: String,
        source: CreateError,
    },
    /// Every numbered name for the running VM's new overlay is taken.
    #[error(
        "Drive '{drive_id}': the overlays {path}.1.qcow2 to .{MAX_OVERLAY_NUMBER}.qcow2 all exist."
    )]
    NamesTaken { drive_id: String, path: String },
    /// The new overlay, or the frozen image, could not be opened.
    #[error("Drive '{drive_id}': {source}")]
    Open { drive_id: String, source: DiskError },
    /// A frozen drive whose new overlay the load does not name.
    #[error("Drive '{0}' is frozen in the snapshot: name the path of its new overlay in drive_overrides.")]
    OverrideMissing(String),
    /// `drive_overrides` names a drive the snapshot does not have.
    #[error("The snapshot has no drive '{0}' to override.")]
    UnknownDrive(String),
    /// The drive has no image path (validation normally catches this).
    #[error("Drive '{0}' has no path_on_host.")]
    NoPath(String),
}

/// Whether a drive is one a snapshot freezes: writable and served from a qcow2 image.
pub fn freezable(drive: &DriveConfig, format: ImageFormat) -> bool {
    !drive.is_read_only && format == ImageFormat::Qcow2
}

/// Creates the running VM's new overlay over `frozen` for `drive`, named after the snapshot:
/// `<snapshot_path>.<drive_id>.<n>.qcow2` with the first `n` not taken, so that snapshots to
/// one path one after another each leave their frozen image alone. Returns the configuration
/// the drive runs with from now on.
pub fn overlay_for_running_vm(
    snapshot_path: &Path,
    drive: &DriveConfig,
    size: u64,
) -> Result<DriveConfig, SnapshotDriveError> {
    let frozen = image(drive)?;
    let stem = format!("{}.{}", snapshot_path.display(), drive.drive_id);
    for n in 1..=MAX_OVERLAY_NUMBER {
        let path = PathBuf::from(format!("{stem}.{n}.qcow2"));
        match create_overlay(&path, frozen, ImageFormat::Qcow2, size) {
            Ok(()) => return Ok(on_overlay(drive, path)),
            Err(CreateError::Write { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(SnapshotDriveError::Overlay {
                    drive_id: drive.drive_id.clone(),
                    source,
                })
            }
        }
    }
    Err(SnapshotDriveError::NamesTaken {
        drive_id: drive.drive_id.clone(),
        path: stem,
    })
}

/// Puts each drive of `config` that `overrides` names on its new image: a frozen drive (one
/// `frozen` names) on a new overlay created at the override's path over its frozen image, any
/// other drive on the image at that path as it is. Every frozen drive needs an override.
/// Returns the overlays it created, for the caller to remove if the load fails.
pub fn apply_overrides(
    config: &mut VmConfig,
    frozen: &[String],
    overrides: &[DriveOverride],
) -> Result<Vec<PathBuf>, SnapshotDriveError> {
    // Checked before anything is created or changed, so that a refused load leaves `config`
    // as it was.
    if let Some(unknown) = overrides
        .iter()
        .find(|o| !config.drives.iter().any(|d| d.drive_id == o.drive_id))
    {
        return Err(SnapshotDriveError::UnknownDrive(unknown.drive_id.clone()));
    }
    if let Some(missing) = frozen
        .iter()
        .find(|id| !overrides.iter().any(|o| &o.drive_id == *id))
    {
        return Err(SnapshotDriveError::OverrideMissing(missing.clone()));
    }
    let mut created = Vec::new();
    let result = overrides.iter().try_for_each(|o| {
        let Some(drive) = config.drives.iter_mut().find(|d| d.drive_id == o.drive_id) else {
            return Err(SnapshotDriveError::UnknownDrive(o.drive_id.clone()));
        };
        if frozen.contains(&drive.drive_id) {
            clone_overlay(drive, &o.path_on_host)?;
            created.push(o.path_on_host.clone());
        } else {
            drive.path_on_host = Some(o.path_on_host.clone());
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(created),
        Err(e) => {
            remove_overlays(&created);
            Err(e)
        }
    }
}

/// Removes overlays a load created before it failed: they hold nothing yet.
pub fn remove_overlays(created: &[PathBuf]) {
    for path in created {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("Failed to remove the overlay {}: {e}", path.display());
        }
    }
}

/// Creates a clone's overlay at `path` over the frozen image of `drive`, and puts the drive
/// on it.
fn clone_overlay(drive: &mut DriveConfig, path: &Path) -> Result<(), SnapshotDriveError> {
    let frozen = image(drive)?;
    let open_error = |source| SnapshotDriveError::Open {
        drive_id: drive.drive_id.clone(),
        source,
    };
    // Opened read-only, as every clone's overlay opens it: other clones may be running on it.
    let size = devices::virtio::block::open_disk(frozen, true, Some(ImageFormat::Qcow2))
        .map_err(open_error)?
        .len();
    create_overlay(path, frozen, ImageFormat::Qcow2, size).map_err(|source| {
        SnapshotDriveError::Overlay {
            drive_id: drive.drive_id.clone(),
            source,
        }
    })?;
    *drive = on_overlay(drive, path.to_path_buf());
    Ok(())
}

/// The image `drive` is served from.
pub fn image(drive: &DriveConfig) -> Result<&Path, SnapshotDriveError> {
    drive
        .path_on_host
        .as_deref()
        .ok_or_else(|| SnapshotDriveError::NoPath(drive.drive_id.clone()))
}

/// `drive`, served from the qcow2 overlay at `path`.
fn on_overlay(drive: &DriveConfig, path: PathBuf) -> DriveConfig {
    DriveConfig {
        path_on_host: Some(path),
        format: Some(DiskFormat::Qcow2),
        ..drive.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-drives-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn drive(id: &str, path: &Path, read_only: bool) -> DriveConfig {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": false,
            "is_read_only": read_only,
        }))
        .unwrap()
    }

    fn config(drives: Vec<DriveConfig>) -> VmConfig {
        let mut config =
            VmConfig::from_snapshot_json(r#"{"boot-source": {"kernel_image_path": "/k"}}"#)
                .unwrap();
        config.drives = drives;
        config
    }

    fn over(id: &str, path: &Path) -> DriveOverride {
        DriveOverride {
            drive_id: id.into(),
            path_on_host: path.to_path_buf(),
        }
    }

    /// A qcow2 image over a raw one.
    fn qcow2(dir: &Path, name: &str) -> PathBuf {
        let base = dir.join(format!("{name}.base"));
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let path = dir.join(name);
        create_overlay(&path, &base, ImageFormat::Raw, 1 << 20).unwrap();
        path
    }

    #[test]
    fn the_running_vm_gets_the_first_free_numbered_overlay() {
        let dir = scratch("numbered");
        let image = qcow2(&dir, "root.qcow2");
        let snap = dir.join("vm.snap");
        let first = overlay_for_running_vm(&snap, &drive("root", &image, false), 1 << 20).unwrap();
        let path = first.path_on_host.clone().unwrap();
        assert_eq!(path, dir.join("vm.snap.root.1.qcow2"));
        assert_eq!(first.format, Some(DiskFormat::Qcow2));
        // A second snapshot to the same path freezes the first overlay and takes the next name.
        let second = overlay_for_running_vm(&snap, &first, 1 << 20).unwrap();
        assert_eq!(
            second.path_on_host.unwrap(),
            dir.join("vm.snap.root.2.qcow2")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn overrides_put_frozen_drives_on_new_overlays_and_others_on_their_images() {
        let dir = scratch("overrides");
        let frozen = qcow2(&dir, "root.qcow2");
        let raw = dir.join("data.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let other_raw = dir.join("other.raw");
        let drives = vec![drive("root", &frozen, false), drive("data", &raw, false)];
        let frozen_ids = vec!["root".to_string()];

        // A frozen drive without an override, and an override of no drive, are refused.
        let mut c = config(drives.clone());
        let err = apply_overrides(&mut c, &frozen_ids, &[]).unwrap_err();
        assert!(matches!(err, SnapshotDriveError::OverrideMissing(ref id) if id == "root"));
        let clone = dir.join("clone.qcow2");
        let bad = [over("root", &clone), over("nope", &clone)];
        let err = apply_overrides(&mut c, &frozen_ids, &bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The snapshot has no drive 'nope' to override."
        );
        assert!(!clone.exists());

        let overrides = [over("root", &clone), over("data", &other_raw)];
        let created = apply_overrides(&mut c, &frozen_ids, &overrides).unwrap();
        assert_eq!(created, vec![clone.clone()]);
        assert_eq!(c.drives[0].path_on_host.as_deref(), Some(clone.as_path()));
        assert_eq!(c.drives[0].format, Some(DiskFormat::Qcow2));
        assert_eq!(
            c.drives[1].path_on_host.as_deref(),
            Some(other_raw.as_path())
        );
        assert!(clone.exists());

        // An overlay path that exists is never overwritten; what the load created goes again.
        let mut c = config(drives);
        let again = apply_overrides(&mut c, &frozen_ids, &[over("root", &clone)]).unwrap_err();
        assert!(
            matches!(again, SnapshotDriveError::Overlay { .. }),
            "{again}"
        );
        remove_overlays(&created);
        assert!(!clone.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
