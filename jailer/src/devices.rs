//! Step 8: the only device nodes in the jail, each owned by the jailed user with mode 0600:
//! `/dev/kvm` for the VM, `/dev/net/tun` for taps, `/dev/urandom` for randomness. The
//! directories stay root's, so kiln cannot add or replace nodes. Nodes and directories an
//! earlier start left in the jail are replaced and reused (see `jail`).

use std::io;
use std::path::{Path, PathBuf};

use crate::jail::{Jail, JailError};
use crate::sys;

/// The device nodes, with their well-known numbers (Documentation/admin-guide/devices.txt).
const DEVICES: &[(&str, u32, u32)] = &[
    ("dev/kvm", 10, 232),
    ("dev/net/tun", 10, 200),
    ("dev/urandom", 1, 9),
];

/// A device node cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error(transparent)]
    Dir(#[from] JailError),
    #[error("Failed to create the device node {path} in the jail: {source}")]
    Mknod { path: PathBuf, source: io::Error },
    #[error("Failed to give the device node {path} to uid {uid} gid {gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
}

/// Creates the device nodes in the current root (the jail, after `chroot`).
pub fn create(jail: &mut Jail, uid: u32, gid: u32) -> Result<(), DevicesError> {
    jail.mkdir_inside("dev", 0o755)?;
    jail.mkdir_inside("dev/net", 0o755)?;
    for (inside, major, minor) in DEVICES {
        let path = Path::new("/").join(inside);
        // A node an earlier start left is replaced: the new one has the right numbers for sure.
        let mknod_err = |source| DevicesError::Mknod {
            path: path.clone(),
            source,
        };
        Jail::clear_inside(Path::new(inside)).map_err(mknod_err)?;
        sys::mknod_char(&path, 0o600, *major, *minor).map_err(mknod_err)?;
        jail.record(Path::new(inside), false);
        sys::lchown(&path, uid, gid).map_err(|source| DevicesError::Chown {
            path,
            uid,
            gid,
            source,
        })?;
    }
    Ok(())
}
