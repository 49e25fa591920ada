//! Image locks, taken as QEMU takes them, so that Kiln, QEMU and qemu-img see each other.
//!
//! QEMU (block/file-posix.c) expresses who uses an image as shared OFD read locks on single
//! bytes: byte 100 + n while it holds permission n, and byte 200 + n while it does not let
//! others hold permission n. Before it uses an image it takes its own bytes and then tests the
//! others: a permission it wants is refused if someone locks its "not shared" byte, and one it
//! does not share is refused if someone holds it. Locks belong to the open file description,
//! so two opens in one process conflict as two processes do, and closing the file drops them.
//!
//! Kiln holds consistent read on every image, write (and resize, for qcow2 images, which grow)
//! on writable ones, and never shares write or resize:
//!
//! | Kiln has the image   | qemu-img info / check | qemu-io write, a 2nd writer | a 2nd reader |
//! |----------------------|-----------------------|-----------------------------|--------------|
//! | read-only (backing)  | works                 | refused                     | works        |
//! | writable             | refused (as by QEMU)  | refused                     | refused      |

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// QEMU's lock byte bases: permission held, and permission not shared.
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits (BLK_PERM_*), by bit index, with their names.
const PERMISSIONS: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const WRITE_UNCHANGED: u8 = 1 << 2;
const RESIZE: u8 = 1 << 3;
/// What Kiln lets others do with an image it has open.
const SHARED: u8 = CONSISTENT_READ | WRITE_UNCHANGED;

/// How Kiln uses an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Only read: a read-only drive or a backing file.
    Read,
    /// Written in place: a writable raw image.
    Write,
    /// Written and grown: a writable qcow2 image.
    WriteResize,
}

impl Access {
    fn permissions(self) -> u8 {
        match self {
            Access::Read => CONSISTENT_READ,
            Access::Write => CONSISTENT_READ | WRITE | WRITE_UNCHANGED,
            Access::WriteResize => CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE,
        }
    }
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum ImageLockError {
    /// The lock call itself failed.
    #[error("Failed to lock byte {byte}: {source}")]
    Lock { byte: i64, source: io::Error },
    /// Another user does not share a permission Kiln needs.
    #[error("Failed to get \"{0}\" lock; is another process using the image?")]
    Permission(&'static str),
    /// Another user holds a permission Kiln does not share.
    #[error("Failed to get shared \"{0}\" lock; is another process using the image?")]
    Shared(&'static str),
}

/// One fcntl on one byte: `command` F_OFD_SETLK or F_OFD_GETLK, `kind` F_RDLCK or F_WRLCK.
/// Returns the lock type the kernel reports back (F_UNLCK from F_OFD_GETLK if nobody else
/// holds a conflicting lock).
fn fcntl_byte(file: &File, command: libc::c_int, kind: libc::c_int, byte: i64) -> io::Result<i32> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    // OFD locks need l_pid 0, which zeroed() set.
    // SAFETY: the fd is open for the life of `file`, and `lock` is a valid flock that the
    // kernel reads and (for F_OFD_GETLK) writes, and that outlives the call.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), command, &mut lock) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::from(lock.l_type))
}

/// Whether another open file description holds a lock on `byte`.
fn taken_by_another(file: &File, byte: i64) -> Result<bool, ImageLockError> {
    let kind = fcntl_byte(file, libc::F_OFD_GETLK, libc::F_WRLCK, byte)
        .map_err(|source| ImageLockError::Lock { byte, source })?;
    Ok(kind != libc::F_UNLCK)
}

/// Takes QEMU's lock bytes on `file` for `access`, then checks that nobody else's bytes
/// conflict, as QEMU does in that order (two openers racing both see each other). The locks
/// last as long as `file`'s open file description.
pub(crate) fn lock_image(file: &File, access: Access) -> Result<(), ImageLockError> {
    let held = access.permissions();
    let not_shared = !SHARED;
    for (bit, _) in PERMISSIONS.iter().enumerate() {
        let flag = 1u8 << bit;
        for (wanted, base) in [(held, PERM_BASE), (not_shared, SHARED_BASE)] {
            if wanted & flag != 0 {
                let byte = base + bit as i64;
                fcntl_byte(file, libc::F_OFD_SETLK, libc::F_RDLCK, byte)
                    .map_err(|source| ImageLockError::Lock { byte, source })?;
            }
        }
    }
    for (bit, name) in PERMISSIONS.iter().enumerate() {
        let flag = 1u8 << bit;
        if held & flag != 0 && taken_by_another(file, SHARED_BASE + bit as i64)? {
            return Err(ImageLockError::Permission(name));
        }
    }
    for (bit, name) in PERMISSIONS.iter().enumerate() {
        let flag = 1u8 << bit;
        if not_shared & flag != 0 && taken_by_another(file, PERM_BASE + bit as i64)? {
            return Err(ImageLockError::Shared(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn readers_share_and_a_writer_excludes_everyone() {
        let path = std::env::temp_dir().join(format!("kiln-lock-{}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        let (a, b, c) = (open(&path), open(&path), open(&path));
        lock_image(&a, Access::Read).unwrap();
        lock_image(&b, Access::Read).unwrap();
        assert_eq!(
            lock_image(&c, Access::Write).unwrap_err().to_string(),
            "Failed to get \"write\" lock; is another process using the image?"
        );
        drop((a, b, c));
        let (a, b) = (open(&path), open(&path));
        lock_image(&a, Access::WriteResize).unwrap();
        assert_eq!(
            lock_image(&b, Access::Read).unwrap_err().to_string(),
            "Failed to get shared \"write\" lock; is another process using the image?"
        );
        // Closing the writer's file drops its locks.
        drop((a, b));
        let relock = || lock_image(&open(&path), Access::Write);
        crate::virtio::block::test_utils::retry_locked(relock, |_| true).unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
