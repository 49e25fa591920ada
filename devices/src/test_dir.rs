//! A fresh scratch directory per test, for the tests that need real files or sockets.

use std::path::PathBuf;

/// An empty directory named after `name` and this process, under the system's temp dir.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
