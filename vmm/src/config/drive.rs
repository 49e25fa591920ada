//! `drives`: the block devices, in Firecracker's format, and the checks Firecracker makes on
//! them as a set (unique IDs, at most one root device, files that open).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How guest flushes reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum CacheType {
    /// A flush returns at once; data reaches the disk when the host writes it back.
    #[default]
    Unsafe,
    /// A flush waits for fdatasync.
    Writeback,
}

/// The image format of a drive: a Kiln extension to Firecracker's drive, which has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DiskFormat {
    /// The file is the disk, byte for byte.
    Raw,
    /// A qcow2 image, possibly over a chain of backing files.
    Qcow2,
}

/// The I/O engine. Only the synchronous one exists in Kiln.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum IoEngine {
    /// Blocking reads and writes on the event-loop thread.
    #[default]
    Sync,
    /// io_uring, which Kiln does not implement.
    Async,
}

/// Errors in `drives`.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// Two drives share an ID.
    #[error("drive_id '{0}' is used by more than one drive.")]
    DuplicateId(String),
    /// A drive ID is empty or too long.
    #[error("drive_id '{0}' must be 1 to 64 characters.")]
    InvalidId(String),
    /// More than one drive claims to be the root device.
    #[error("Only one drive can be the root device, but '{0}' and '{1}' both are.")]
    TwoRootDevices(String, String),
    /// A drive has no backing file.
    #[error("Drive '{0}' has no path_on_host.")]
    MissingPath(String),
    /// The backing file cannot be opened.
    #[error("Drive '{id}': path_on_host '{path}' cannot be opened: {source}")]
    File {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A setting Kiln does not implement yet.
    #[error("Drive '{id}': {what} is not supported yet.")]
    Unsupported { id: String, what: &'static str },
}

/// One entry of `drives`. Its optional Firecracker fields are written as `null` when absent,
/// as Firecracker writes them; Kiln's `format` only when set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique ID; also what the guest reads with GET_ID.
    pub drive_id: String,
    /// The backing file.
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    /// Whether the guest boots from this drive (it becomes /dev/vda).
    pub is_root_device: bool,
    /// The root partition's UUID, for `root=PARTUUID=...`.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// Whether the guest may only read.
    #[serde(default)]
    pub is_read_only: bool,
    /// How flushes reach the disk.
    #[serde(default)]
    pub cache_type: CacheType,
    /// The I/O engine.
    #[serde(default)]
    pub io_engine: IoEngine,
    /// A token-bucket rate limiter (not implemented yet).
    #[serde(default)]
    pub rate_limiter: Option<serde_json::Value>,
    /// Kiln extension: the image format. When absent, a qcow2 image is recognised by its
    /// magic; anything else is raw. Backing files are never probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// A vhost-user socket (not implemented).
    #[serde(default)]
    pub socket: Option<String>,
}

impl DriveConfig {
    /// Checks this drive on its own: ID, backing file, and the settings Kiln supports.
    pub fn validate(&self) -> Result<(), DriveError> {
        let id = &self.drive_id;
        if id.is_empty() || id.len() > 64 {
            return Err(DriveError::InvalidId(id.clone()));
        }
        let unsupported = |what| DriveError::Unsupported {
            id: id.clone(),
            what,
        };
        if self.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("rate_limiter"));
        }
        if self.socket.is_some() {
            return Err(unsupported("a vhost-user socket"));
        }
        if self.io_engine == IoEngine::Async {
            return Err(unsupported("io_engine Async"));
        }
        let path = self
            .path_on_host
            .as_ref()
            .ok_or_else(|| DriveError::MissingPath(id.clone()))?;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(!self.is_read_only);
        devices::host_file::open_data_file(path, &options)
            .map(drop)
            .map_err(|source| DriveError::File {
                id: id.clone(),
                path: path.clone(),
                source,
            })
    }
}

/// Checks the drives as a set, then each one.
pub fn validate_drives(drives: &[DriveConfig]) -> Result<(), DriveError> {
    let mut root: Option<&str> = None;
    for (i, drive) in drives.iter().enumerate() {
        if drives
            .iter()
            .skip(i + 1)
            .any(|d| d.drive_id == drive.drive_id)
        {
            return Err(DriveError::DuplicateId(drive.drive_id.clone()));
        }
        if drive.is_root_device {
            if let Some(first) = root {
                return Err(DriveError::TwoRootDevices(
                    first.to_string(),
                    drive.drive_id.clone(),
                ));
            }
            root = Some(&drive.drive_id);
        }
    }
    drives.iter().try_for_each(DriveConfig::validate)
}

/// The drives in the order the guest sees them: the root device first (it becomes /dev/vda),
/// then the others in configuration order, as Firecracker attaches them.
pub fn guest_order(drives: &[DriveConfig]) -> Vec<&DriveConfig> {
    let (root, others): (Vec<_>, Vec<_>) = drives.iter().partition(|d| d.is_root_device);
    root.into_iter().chain(others).collect()
}

/// What the root drive adds to the kernel command line, as Firecracker does it.
pub fn root_cmdline(drives: &[DriveConfig]) -> Option<String> {
    let root = drives.iter().find(|d| d.is_root_device)?;
    let device = match &root.partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        None => "root=/dev/vda".to_string(),
    };
    let mode = if root.is_read_only { "ro" } else { "rw" };
    Some(format!("{device} {mode}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, path: &std::path::Path, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.to_string(),
            path_on_host: Some(path.to_owned()),
            is_root_device: root,
            partuuid: None,
            is_read_only: false,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            rate_limiter: None,
            format: None,
            socket: None,
        }
    }

    fn temp_file(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("kiln-drive-{}-{name}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        path
    }

    #[test]
    fn parses_firecrackers_drive_fields() {
        let json = r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true,
                       "partuuid": "abc-1", "is_read_only": false, "cache_type": "Writeback",
                       "io_engine": "Sync", "rate_limiter": null}"#;
        let d: DriveConfig = serde_json::from_str(json).unwrap();
        assert_eq!(d.cache_type, CacheType::Writeback);
        assert_eq!(d.partuuid.as_deref(), Some("abc-1"));
        let minimal: DriveConfig = serde_json::from_str(
            r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false}"#,
        )
        .unwrap();
        assert_eq!(
            (minimal.cache_type, minimal.is_read_only),
            (CacheType::Unsafe, false)
        );
        assert!(serde_json::from_str::<DriveConfig>(
            r#"{"drive_id": "d", "is_root_device": false, "format": "raw"}"#
        )
        .is_err());
    }

    #[test]
    fn rejects_duplicates_two_roots_and_missing_files() {
        let f = temp_file("a");
        let dup = [drive("a", &f, false), drive("a", &f, false)];
        assert!(matches!(validate_drives(&dup), Err(DriveError::DuplicateId(id)) if id == "a"));
        let roots = [drive("a", &f, true), drive("b", &f, true)];
        let err = validate_drives(&roots).unwrap_err().to_string();
        assert_eq!(
            err,
            "Only one drive can be the root device, but 'a' and 'b' both are."
        );
        let missing = [drive("m", std::path::Path::new("/nonexistent/disk"), false)];
        let err = validate_drives(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with("Drive 'm': path_on_host '/nonexistent/disk' cannot be opened"),
            "{err}"
        );
        let mut limited = drive("r", &f, false);
        limited.rate_limiter = Some(serde_json::json!({"bandwidth": {}}));
        assert_eq!(
            limited.validate().unwrap_err().to_string(),
            "Drive 'r': rate_limiter is not supported yet."
        );
        std::fs::remove_file(f).unwrap();
    }

    #[test]
    fn root_goes_first_and_sets_the_cmdline() {
        let f = temp_file("b");
        let mut drives = vec![
            drive("data", &f, false),
            drive("root", &f, true),
            drive("logs", &f, false),
        ];
        let order: Vec<&str> = guest_order(&drives)
            .iter()
            .map(|d| d.drive_id.as_str())
            .collect();
        assert_eq!(order, ["root", "data", "logs"]);
        assert_eq!(root_cmdline(&drives).as_deref(), Some("root=/dev/vda rw"));
        drives[1].is_read_only = true;
        drives[1].partuuid = Some("0eaa91a0-01".to_string());
        assert_eq!(
            root_cmdline(&drives).as_deref(),
            Some("root=PARTUUID=0eaa91a0-01 ro")
        );
        assert_eq!(root_cmdline(&drives[..1]), None);
        std::fs::remove_file(f).unwrap();
    }
}
