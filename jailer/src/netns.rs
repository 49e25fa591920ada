//! Step 6: joining the network namespace named by `--netns` (a handle such as
//! `/var/run/netns/NAME`), so the taps kiln opens are the ones of that namespace. The handle
//! is checked during validation, so a wrong path is refused before the jail exists.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::sys;

/// The `--netns` handle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("--netns '{path}' cannot be opened: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("--netns '{0}' is not a network namespace.")]
    NotNetns(PathBuf),
    #[error("Failed to join the network namespace '{path}': {source}")]
    Join { path: PathBuf, source: io::Error },
}

fn open(path: &Path) -> Result<File, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    match sys::namespace_type(&file) {
        Ok(libc::CLONE_NEWNET) => Ok(file),
        _ => Err(NetnsError::NotNetns(path.to_path_buf())),
    }
}

/// Checks that `path` is a network namespace handle.
pub fn check(path: &Path) -> Result<(), NetnsError> {
    open(path).map(drop)
}

/// Moves this process into the network namespace at `path`.
pub fn join(path: &Path) -> Result<(), NetnsError> {
    let ns = open(path)?;
    sys::setns(&ns, libc::CLONE_NEWNET).map_err(|source| NetnsError::Join {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_namespace_handle_passes() {
        check(Path::new("/proc/self/ns/net")).unwrap();
    }

    #[test]
    fn other_namespaces_and_files_are_refused() {
        for path in ["/proc/self/ns/mnt", "/proc/self/status"] {
            let err = check(Path::new(path)).unwrap_err();
            assert!(matches!(err, NetnsError::NotNetns(_)), "{path}: {err}");
        }
        let err = check(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    }
}
