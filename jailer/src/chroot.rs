//! Step 7: making the jail the whole visible file system. In a new mount namespace, with every
//! mount private (so nothing done here propagates to the host, and nothing the host mounts
//! later appears in the jail), the jail root is bind-mounted onto itself to become a mount
//! point, pivot_root swaps it with the old root, the old root is detached, and a final chroot
//! pins the root, as Firecracker's jailer does.
//!
//! pivot_root refuses a root that is the initial ramfs (the kernel's `rootfs`); a jailer run
//! from an initramfs must first be given a real root mount (see tests/jailer.rs for one way).

use std::io;
use std::path::{Path, PathBuf};

use crate::jail::{Jail, JailError};
use crate::sys;

/// Where pivot_root puts the old root, inside the jail, until it is detached.
const OLD_ROOT: &str = "old_root";

/// A step of entering the jail failed.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    #[error("Failed to {what}: {source}")]
    Step {
        what: &'static str,
        source: io::Error,
    },
    #[error("Failed to bind-mount the jail root '{path}' onto itself: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Jail(#[from] JailError),
}

fn step(what: &'static str) -> impl FnOnce(io::Error) -> ChrootError {
    move |source| ChrootError::Step { what, source }
}

/// Makes the jail root this process's root and working directory.
pub fn enter(jail: &mut Jail) -> Result<(), ChrootError> {
    let root = jail.root();
    sys::unshare(libc::CLONE_NEWNS).map_err(step("enter a new mount namespace"))?;
    sys::mount(None, Path::new("/"), libc::MS_PRIVATE | libc::MS_REC)
        .map_err(step("make every mount private"))?;
    sys::mount(Some(&root), &root, libc::MS_BIND | libc::MS_REC).map_err(|source| {
        ChrootError::Bind {
            path: root.clone(),
            source,
        }
    })?;
    std::env::set_current_dir(&root).map_err(step("enter the jail root"))?;
    // The path led to the directory the jail checked and holds open, not to one put there
    // since (pivot_root then also checks that it is the bind mount).
    jail.check_cwd_is_root()?;
    match std::fs::create_dir(OLD_ROOT) {
        Ok(()) => jail.record(Path::new(OLD_ROOT), true),
        // Left by an earlier start that failed here; pivot_root checks that it is a directory
        // inside the jail.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(step("create the old_root directory in the jail")(e)),
    }
    sys::pivot_root(Path::new("."), Path::new(OLD_ROOT))
        .map_err(step("pivot_root into the jail"))?;
    std::env::set_current_dir("/").map_err(step("enter the new root"))?;
    sys::umount2(Path::new(OLD_ROOT), libc::MNT_DETACH).map_err(step("detach the old root"))?;
    std::fs::remove_dir(OLD_ROOT).map_err(step("remove the old_root directory"))?;
    sys::chroot(Path::new(".")).map_err(step("chroot into the jail"))
}
