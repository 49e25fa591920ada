//! Firecracker's `--describe-snapshot`: the format version of a snapshot file, printed as
//! `--snapshot-version` prints the one this build writes (`v1.0.0`).

use std::path::Path;

use vmm::snapshot::file::{read_bytes, version, Version};

/// The format version of the snapshot file at `path`, or why it has none.
pub fn describe(path: &Path) -> Result<Version, String> {
    let bytes = read_bytes(path).map_err(|e| e.to_string())?;
    version(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}
