//! Firecracker v1.16.1 as the oracle of differential tests: its binaries in `../shared/anchors/`
//! (or `KILN_FIRECRACKER_ANCHORS`) beside the checkout. They are never part of Kiln; a test that
//! needs one and does not find it says that it skipped.

use std::path::PathBuf;

use super::linux::repo_root;

/// The path of Firecracker's `name` binary (`firecracker`, `jailer`), or `None` after saying
/// that `test` skipped because it is absent.
pub fn anchor(name: &str, test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_FIRECRACKER_ANCHORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/anchors"));
    let path = dir.join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "{test}: skipped, Firecracker's {} is absent",
            path.display()
        );
        None
    }
}

/// Firecracker 1.16.1's own `GET /vm/config` body (tests/fixtures), with the tiny guest's
/// kernel and `drive` as its root drive in place of the paths it was written with.
pub fn vm_config(kernel: &std::path::Path, drive: &std::path::Path) -> serde_json::Value {
    let text = include_str!("../fixtures/firecracker-1.16.1-vm-config.json");
    let mut config: serde_json::Value = serde_json::from_str(text).unwrap();
    config["boot-source"]["kernel_image_path"] = kernel.to_str().unwrap().into();
    config["drives"][0]["path_on_host"] = drive.to_str().unwrap().into();
    config
}
