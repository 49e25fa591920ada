//! Checked wrappers for the raw system calls the jailer makes. Each returns an `io::Result` and
//! takes paths as `&Path`, so the steps elsewhere read as a list of operations; every `unsafe`
//! block of the jailer that is a plain system call lives here.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The path as a C string; a path with a NUL byte cannot name a file.
pub fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte"))
}

/// Turns a libc return value into an `io::Result`, reading errno on failure.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a directory to use with the `*at` calls; the descriptor is close-on-exec, so it never
/// reaches `kiln`.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// Opens directory `rel` under `dir` without following a symlink at `rel` (`ELOOP`) and
/// refusing anything but a directory (`ENOTDIR`); close-on-exec.
pub fn open_dir_at(dir: &impl AsFd, rel: &Path) -> io::Result<File> {
    open_at(
        dir,
        rel,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
    )
}

/// Opens `rel` under `dir` for reading, not following a symlink at `rel`, and without
/// blocking on a FIFO.
pub fn open_read_at(dir: &impl AsFd, rel: &Path) -> io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    open_at(dir, rel, flags)
}

/// Creates the new file `rel` under `dir` with `mode` and opens it for writing; fails if any
/// file, or a symlink, has that name.
pub fn create_file_at(dir: &impl AsFd, rel: &Path, mode: libc::mode_t) -> io::Result<File> {
    let rel = cstring(rel)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor and `rel` a NUL-terminated string that outlives the
    // call; with O_CREAT the mode argument is read, and it is given.
    let fd = check(unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            rel.as_ptr(),
            flags,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `openat` without O_CREAT.
fn open_at(dir: &impl AsFd, rel: &Path, flags: libc::c_int) -> io::Result<File> {
    let rel = cstring(rel)?;
    // SAFETY: `dir` is an open descriptor and `rel` a NUL-terminated string that outlives the
    // call; without O_CREAT no mode argument is read.
    let fd = check(unsafe { libc::openat(dir.as_fd().as_raw_fd(), rel.as_ptr(), flags) })?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Takes an exclusive `flock` on `file` without waiting; `EWOULDBLOCK` when another open file
/// description holds it. Closing every descriptor of this one (close-on-exec included) releases it.
pub fn try_lock_exclusive(file: &impl AsFd) -> io::Result<()> {
    // SAFETY: flock takes a descriptor and flags and touches no memory.
    check(unsafe { libc::flock(file.as_fd().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(drop)
}

/// This process's effective uid and gid.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid touch no memory and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Creates directory `rel` under `dir` with `mode`.
pub fn mkdirat(dir: &impl AsFd, rel: &Path, mode: libc::mode_t) -> io::Result<()> {
    let rel = cstring(rel)?;
    // SAFETY: `dir` is an open descriptor and `rel` a NUL-terminated string that outlives the
    // call; mkdirat reads nothing else.
    check(unsafe { libc::mkdirat(dir.as_fd().as_raw_fd(), rel.as_ptr(), mode) }).map(drop)
}

/// Removes `rel` under `dir`: an empty directory when `is_dir`, a file otherwise.
pub fn unlinkat(dir: &impl AsFd, rel: &Path, is_dir: bool) -> io::Result<()> {
    let rel = cstring(rel)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `dir` is an open descriptor and `rel` a NUL-terminated string that outlives the
    // call.
    check(unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), rel.as_ptr(), flags) }).map(drop)
}

/// Opens `rel` under `dir` for writing, without creating it.
pub fn open_write_at(dir: &impl AsFd, rel: &Path) -> io::Result<File> {
    open_at(
        dir,
        rel,
        libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
    )
}

/// Creates the character device node `path` with `mode` (permission bits) and `major:minor`.
pub fn mknod_char(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let path = cstring(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) }).map(drop)
}

/// Gives `path` (not following a final symlink) to `uid:gid`.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::lchown(path.as_ptr(), uid, gid) }).map(drop)
}

/// `mount(2)` with an optional source and no file system type or data, which is all the jail
/// needs: changing propagation and bind mounts.
pub fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let source_ptr = source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: the strings are NUL-terminated and outlive the call; a null source, type and data
    // are allowed for the propagation and bind operations the callers ask for.
    check(unsafe {
        libc::mount(
            source_ptr,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Detaches the mount at `target` (`umount2` with `flags`).
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// Makes `new_root` the root mount and puts the old one at `put_old`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstring(new_root)?;
    let put_old = cstring(put_old)?;
    // SAFETY: pivot_root takes two NUL-terminated paths, which outlive the call; libc has no
    // wrapper, so it goes through syscall(2).
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Changes the root directory of this process to `path`.
pub fn chroot(path: &Path) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// Moves this process into new namespaces of the kinds in `flags`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare only changes this process's namespaces; it touches no memory.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Joins the namespace behind `ns` (of kind `nstype`).
pub fn setns(ns: &impl AsFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: `ns` is an open descriptor; setns touches no memory.
    check(unsafe { libc::setns(ns.as_fd().as_raw_fd(), nstype) }).map(drop)
}

/// The kind of namespace behind `ns` (`NS_GET_NSTYPE`), as a `CLONE_NEW*` value.
pub fn namespace_type(ns: &impl AsFd) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value.
    check(unsafe { libc::ioctl(ns.as_fd().as_raw_fd(), libc::NS_GET_NSTYPE) })
}

/// Starts a new session, leaving the caller's terminal and process group.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid touches no memory.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Whether this process leads its process group (then `setsid` fails).
pub fn leads_process_group() -> bool {
    // SAFETY: getpgrp and getpid touch no memory and cannot fail.
    unsafe { libc::getpgrp() == libc::getpid() }
}

/// Makes descriptor `target` (0, 1 or 2) a copy of `fd`.
pub fn dup2(fd: &impl AsFd, target: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is open; `target` is a standard stream number, which no Rust object owns
    // apart from the process-wide stdio handles, which keep working on the new file.
    check(unsafe { libc::dup2(fd.as_fd().as_raw_fd(), target) }).map(drop)
}

/// Drops every supplementary group, then sets all three group ids and all three user ids.
pub fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: an empty group list needs no pointer to valid memory.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: setresgid and setresuid touch no memory.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// What `fork` returned to this process.
#[derive(Debug)]
pub enum Forked {
    /// This is the new process.
    Child,
    /// This is the caller; the new process has this pid.
    Parent(libc::pid_t),
}

/// Forks the process. The jailer is single-threaded, so the child is a complete copy.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the jailer never starts a thread, so no lock or allocator state can be held by a
    // thread that does not exist in the child.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Kills `pid` with SIGKILL and reaps it.
pub fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: kill and waitpid touch no memory of ours but the status integer, which is a
    // valid local; errors (the child already gone) leave nothing to do.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

/// Leaves the process at once with `code`, without running destructors or flushing stdio:
/// for a forked child whose parent does the reporting and the clean-up.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit ends the process; no Rust invariant depends on code after it.
    unsafe { libc::_exit(code) }
}

/// The mount flags (`ST_NOEXEC`, `ST_NODEV`, ...) of the file system holding `path`.
pub fn mount_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let path = cstring(path)?;
    // SAFETY: an all-zero statvfs is a valid value for statvfs to overwrite.
    let mut info: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `info` a valid statvfs; both outlive the call.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut info) })?;
    Ok(info.f_flag)
}
