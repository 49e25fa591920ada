//! `serial`: where the guest's console output goes, as Firecracker's `PUT /serial` takes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `serial` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// A file (created or appended to) or FIFO that receives the guest's console output.
    pub serial_out_path: PathBuf,
}
