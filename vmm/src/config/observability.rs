//! The `logger` and `metrics` sections, which `PUT /logger` and `PUT /metrics` take too: where
//! the log and the metrics go, and how the log looks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `logger` section and `PUT /logger`, as Firecracker takes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerSettings {
    /// A file or FIFO for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Off, Error, Warning, Info, Debug or Trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Whether lines show their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether lines show their source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log lines from this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// The `metrics` section and `PUT /metrics`, as Firecracker takes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// A file or FIFO for the metrics, one JSON object per line.
    pub metrics_path: PathBuf,
}
