//! The snapshot actions' parameters as the API hands them to the VMM: `PUT /snapshot/create`
//! and `PUT /snapshot/load`, with Firecracker's field names and defaults. The request body's
//! own shape (the deprecated `mem_file_path` and `enable_diff_snapshots`) is the API's to
//! resolve into these.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which memory a snapshot writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SnapshotType {
    /// Only the pages the guest dirtied since the last snapshot, into the existing memory file.
    Diff,
    /// All of guest memory.
    #[default]
    Full,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotParams {
    /// Full or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM's state goes.
    pub snapshot_path: PathBuf,
    /// Where guest memory goes.
    pub mem_file_path: PathBuf,
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum MemBackendType {
    /// The memory file, mapped private: pages are read when the guest touches them.
    File,
    /// A page-fault handler listening on a Unix socket, which gets a userfaultfd and the
    /// guest's memory regions.
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// The memory file, or the handler's socket.
    pub backend_path: PathBuf,
    /// Which of the two `backend_path` is.
    pub backend_type: MemBackendType,
}

/// One of `network_overrides`: a restored interface's new tap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface, by the ID it had when the snapshot was taken.
    pub iface_id: String,
    /// The tap it uses from now on.
    pub host_dev_name: String,
}

/// One of `drive_overrides` (a Kiln extension): a restored drive's new image. For a drive the
/// snapshot froze, Kiln creates a new qcow2 overlay at the path, over the frozen image; any
/// other drive uses the image at the path as it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    /// The drive, by the ID it had when the snapshot was taken.
    pub drive_id: String,
    /// Its image from now on (for a frozen drive: the overlay to create, which must not exist).
    pub path_on_host: PathBuf,
}

/// `PUT /snapshot/load`, once the API has resolved the body's deprecated fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadSnapshotParams {
    /// The VM's state.
    pub snapshot_path: PathBuf,
    /// Its memory.
    pub mem_backend: MemBackend,
    /// Whether the restored VM logs dirty pages, for a later Diff snapshot.
    pub track_dirty_pages: bool,
    /// Whether the VM runs once loaded, or waits paused.
    pub resume_vm: bool,
    /// New taps for interfaces.
    pub network_overrides: Vec<NetworkOverride>,
    /// New images for drives: every frozen drive needs one.
    pub drive_overrides: Vec<DriveOverride>,
    /// Whether the guest clock jumps to the host's real time rather than going on from the
    /// saved guest time.
    pub clock_realtime: bool,
}
