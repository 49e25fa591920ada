//! The jail directory `<chroot base>/<exec name>/<id>/root`: creating it, or reusing it when
//! it exists (SDKs make it and put the kernel and disks in before they start the jailer), with
//! the exec file copied in (step 3), the directories kiln writes to and the ownership of the
//! root (step 9), and removing what this start created when a later step fails, so a failed
//! start never blocks the next one with the same id and never takes the caller's files.
//!
//! An existing `<id>` or `root` is used only if it is a directory: each is opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to the one above, so a symlink is refused rather than
//! followed, and every later host-side step works through those descriptors, never a path
//! walk. Names the jailer creates (the exec copy, device nodes, the pid file) that a previous
//! start left are unlinked and created anew, never written through.
//!
//! One jail, one kiln: the start holds an exclusive `flock` on `<id>` until kiln's pid is in the
//! pid file, just before the exec (the descriptor is close-on-exec, so kiln never gets it), and
//! refuses a jail whose pid file names a live process whose root is this jail, so neither two
//! concurrent starts nor a start next to a running kiln share a jail. Firecracker's jailer has
//! neither: a second start beside a running Firecracker fails only by chance, with `ETXTBSY`
//! when it rewrites the exec copy.
//!
//! Removal works from inside the jail too: `Jail` keeps `<chroot base>/<exec name>`, `<id>` and
//! `root` open and records every path it creates relative to one of them, so `unlinkat` still
//! reaches them after pivot_root has hidden the host's file system.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// The mode of the jail root and of `/run`: only the jailed user (and root) may look inside.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// The exec file inside the jail: runnable by the jailed user, writable by nobody, so kiln
/// cannot rewrite its own binary.
const EXEC_MODE: u32 = 0o555;

/// The jail directory cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "The jail path '{0}' exists but is a symlink or not a directory; the jailer uses only \
         a real directory there."
    )]
    NotDir(PathBuf),
    #[error("Another kiln-jailer is building the jail '{0}' right now; an id names one jail.")]
    Busy(PathBuf),
    #[error("kiln (pid {pid}) still runs in the jail '{path}'; stop it or pick another --id.")]
    Running { path: PathBuf, pid: u32 },
    #[error("Failed to lock the jail '{path}': {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("Failed to create '{path}': {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("Failed to remove '{path}', left by an earlier start: {source}")]
    Replace { path: PathBuf, source: io::Error },
    #[error("Failed to copy the exec file '{from}' to '{to}': {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("Failed to give '{path}' to uid {uid} gid {gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("The jail root '{0}' was replaced while the jail was being built.")]
    Moved(PathBuf),
}

/// The directory a recorded path is relative to.
#[derive(Debug, Clone, Copy)]
enum At {
    /// `<chroot base>/<exec name>`
    ExecDir,
    /// `<id>`
    IdDir,
    /// `<id>/root`
    Root,
}

/// A jail under construction, and what the jailer has created in it so far.
#[derive(Debug)]
pub struct Jail {
    /// `<chroot base>/<exec name>`, open for the `*at` calls of [`Jail::remove`].
    exec_dir: OwnedFd,
    /// `<id>`, open and locked (see the module doc) until this process execs or exits.
    id_dir: Option<File>,
    /// `<id>/root`.
    root_dir: Option<File>,
    /// `<chroot base>/<exec name>`'s host path, canonical, for messages.
    exec_dir_path: PathBuf,
    id: String,
    /// Created paths, oldest first, with what they are relative to and whether each is a
    /// directory.
    created: Vec<(At, PathBuf, bool)>,
}

impl Jail {
    /// Creates `<base>/<exec name>/<id>/root`, or reuses what exists of it; the directories
    /// above `<id>` are shared by every jail and created when missing. `exec_name` also names
    /// the pid file a running kiln would have left.
    pub fn create(base: &Path, exec_name: &OsStr, id: &str) -> Result<Jail, JailError> {
        let exec_dir_path = base.join(exec_name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&exec_dir_path)
            .map_err(create_err(&exec_dir_path))?;
        let exec_dir_path = exec_dir_path
            .canonicalize()
            .map_err(create_err(&exec_dir_path))?;
        let exec_dir = sys::open_dir(&exec_dir_path).map_err(create_err(&exec_dir_path))?;
        let mut jail = Jail {
            exec_dir,
            id_dir: None,
            root_dir: None,
            exec_dir_path,
            id: id.to_string(),
            created: Vec::new(),
        };
        match jail.open_dirs(exec_name) {
            Ok(()) => Ok(jail),
            Err(e) => {
                jail.remove();
                Err(e)
            }
        }
    }

    /// Opens (creating when missing) and locks `<id>`, opens `<id>/root`, and checks that no
    /// kiln runs in it.
    fn open_dirs(&mut self, exec_name: &OsStr) -> Result<(), JailError> {
        let id_path = self.exec_dir_path.join(&self.id);
        let (id_dir, created) = open_or_create_dir(&self.exec_dir, Path::new(&self.id), &id_path)?;
        if created {
            self.created
                .push((At::ExecDir, PathBuf::from(&self.id), true));
        }
        match sys::try_lock_exclusive(&id_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Even if this start made `<id>`, the one holding the lock now uses it.
                self.created.clear();
                return Err(JailError::Busy(id_path));
            }
            Err(source) => {
                return Err(JailError::Lock {
                    path: id_path,
                    source,
                })
            }
        }
        let (root_dir, created) = open_or_create_dir(&id_dir, Path::new("root"), &self.root())?;
        self.id_dir = Some(id_dir);
        if created {
            self.created.push((At::IdDir, PathBuf::from("root"), true));
        }
        let mut pid_file = exec_name.to_os_string();
        pid_file.push(".pid");
        let running = running_kiln(&root_dir, Path::new(&pid_file));
        self.root_dir = Some(root_dir);
        match running {
            Some(pid) => Err(JailError::Running {
                path: self.root(),
                pid,
            }),
            None => Ok(()),
        }
    }

    /// The jail root, as the host sees it.
    pub fn root(&self) -> PathBuf {
        self.exec_dir_path.join(&self.id).join("root")
    }

    /// Checks that the current directory is this jail's root (the directory opened at
    /// [`Jail::create`]), not something put at its path since.
    pub fn check_cwd_is_root(&self) -> Result<(), JailError> {
        let moved = || JailError::Moved(self.root());
        let root = self.root_dir()?.metadata().map_err(|_| moved())?;
        let cwd = fs::metadata(".").map_err(|_| moved())?;
        if (root.dev(), root.ino()) == (cwd.dev(), cwd.ino()) {
            Ok(())
        } else {
            Err(moved())
        }
    }

    fn root_dir(&self) -> Result<&File, JailError> {
        self.root_dir
            .as_ref()
            .ok_or_else(|| JailError::Moved(self.root()))
    }

    /// Records that the jailer created `inside` (relative to the jail root), so that
    /// [`Jail::remove`] removes it.
    pub fn record(&mut self, inside: &Path, is_dir: bool) {
        self.created.push((At::Root, inside.to_path_buf(), is_dir));
    }

    /// Copies `exec_file` to `<root>/<name>`, read-only and executable for everyone, and
    /// returns its path inside the jail. A copy left by an earlier start is replaced.
    pub fn copy_exec(&mut self, exec_file: &Path, name: &OsStr) -> Result<PathBuf, JailError> {
        let to = self.root().join(name);
        let copy_err = |source| JailError::Copy {
            from: exec_file.to_path_buf(),
            to: to.clone(),
            source,
        };
        let mut src = File::open(exec_file).map_err(copy_err)?;
        let root_dir = self.root_dir()?;
        unlink_stale(root_dir, Path::new(name), &to)?;
        let mut dst =
            sys::create_file_at(root_dir, Path::new(name), EXEC_MODE).map_err(copy_err)?;
        self.record(Path::new(name), false);
        io::copy(&mut src, &mut dst).map_err(copy_err)?;
        // The mode is exact whatever the umask was.
        dst.set_permissions(fs::Permissions::from_mode(EXEC_MODE))
            .map_err(copy_err)?;
        Ok(Path::new("/").join(name))
    }

    /// Creates directory `/<inside>` of the current root with `mode`; for after `chroot`. A
    /// directory left there is reused, given the mode and the jailer's own user as a new one
    /// would be; a symlink or another file there is refused.
    pub fn mkdir_inside(&mut self, inside: &str, mode: u32) -> Result<(), JailError> {
        let path = Path::new("/").join(inside);
        let made = fs::DirBuilder::new().mode(mode).create(&path);
        let created = match made {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(source) => return Err(JailError::Create { path, source }),
        };
        if created {
            self.record(Path::new(inside), true);
        }
        let dir = sys::open_dir(&path).map_err(|e| not_dir_or(e, &path))?;
        if !created {
            let (uid, gid) = sys::effective_ids();
            std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(|source| {
                JailError::Chown {
                    path: path.clone(),
                    uid,
                    gid,
                    source,
                }
            })?;
        }
        // The mode is exact whatever the umask was.
        File::from(dir)
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|source| JailError::Create { path, source })
    }

    /// Removes `/<inside>` of the current root if an earlier start left it there (any file but
    /// a directory), so the caller can create it anew; for after `chroot`.
    pub fn clear_inside(inside: &Path) -> io::Result<()> {
        match fs::remove_file(Path::new("/").join(inside)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Step 9: gives the jail root (the current root, after `chroot`) and `/run`, where kiln
    /// creates its API socket by default, to `uid:gid`, private to them.
    pub fn give_to(&mut self, uid: u32, gid: u32) -> Result<(), JailError> {
        self.mkdir_inside("run", PRIVATE_DIR_MODE)?;
        for dir in ["/", "/run"] {
            let path = Path::new(dir);
            let chown_err = |source| JailError::Chown {
                path: path.to_path_buf(),
                uid,
                gid,
                source,
            };
            sys::lchown(path, uid, gid).map_err(chown_err)?;
            fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
                .map_err(chown_err)?;
        }
        Ok(())
    }

    /// Removes everything this start created, newest first; what existed before (an SDK's
    /// jail directory and the files in it) stays. Best effort: this runs on the way out of a
    /// failed start, whose error is the one worth reporting.
    pub fn remove(self) {
        for (at, rel, is_dir) in self.created.iter().rev() {
            let _ = match at {
                At::ExecDir => sys::unlinkat(&self.exec_dir, rel, *is_dir),
                At::IdDir => self
                    .id_dir
                    .as_ref()
                    .map_or(Ok(()), |d| sys::unlinkat(d, rel, *is_dir)),
                At::Root => self
                    .root_dir
                    .as_ref()
                    .map_or(Ok(()), |d| sys::unlinkat(d, rel, *is_dir)),
            };
        }
    }
}

fn create_err(path: &Path) -> impl FnOnce(io::Error) -> JailError {
    let path = path.to_path_buf();
    move |source| JailError::Create { path, source }
}

/// `ELOOP` (a symlink under O_NOFOLLOW) and `ENOTDIR` become [`JailError::NotDir`].
fn not_dir_or(e: io::Error, path: &Path) -> JailError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => JailError::NotDir(path.to_path_buf()),
        _ => JailError::Create {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Creates directory `rel` under `dir` unless it exists, then opens it without following a
/// symlink; returns it and whether this call created it. `path` is for messages.
fn open_or_create_dir(dir: &impl AsFd, rel: &Path, path: &Path) -> Result<(File, bool), JailError> {
    let created = match sys::mkdirat(dir, rel, 0o755) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(create_err(path)(e)),
    };
    match sys::open_dir_at(dir, rel) {
        Ok(file) => Ok((file, created)),
        Err(e) => {
            if created {
                let _ = sys::unlinkat(dir, rel, true);
            }
            Err(not_dir_or(e, path))
        }
    }
}

/// Unlinks `rel` under `dir` if it exists and is not a directory. `path` is for messages.
fn unlink_stale(dir: &impl AsFd, rel: &Path, path: &Path) -> Result<(), JailError> {
    match sys::unlinkat(dir, rel, false) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JailError::Replace {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The pid in the pid file `rel` under the jail root `root`, if that process lives with this
/// jail as its root.
fn running_kiln(root: &File, rel: &Path) -> Option<u32> {
    let file = sys::open_read_at(root, rel).ok()?;
    // Only a regular file is a pid file; anything else an SDK put there is ignored.
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let theirs = fs::metadata(format!("/proc/{pid}/root")).ok()?;
    let ours = root.metadata().ok()?;
    ((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino())).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-jailer-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_the_root_with_the_exec_file_and_removes_all_of_it() {
        let base = base("create");
        let exe = std::env::current_exe().unwrap();
        let mut jail = Jail::create(&base, OsStr::new("kiln"), "vm-1").unwrap();
        let root = jail.root();
        assert_eq!(root, base.canonicalize().unwrap().join("kiln/vm-1/root"));
        let inside = jail.copy_exec(&exe, OsStr::new("kiln")).unwrap();
        assert_eq!(inside, Path::new("/kiln"));
        let copied = fs::metadata(root.join("kiln")).unwrap();
        assert_eq!(copied.len(), fs::metadata(&exe).unwrap().len());
        assert_eq!(copied.permissions().mode() & 0o7777, EXEC_MODE);

        jail.remove();
        assert!(!base.join("kiln/vm-1").exists());
        assert!(base.join("kiln").is_dir(), "the shared directory stays");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn an_sdk_made_jail_is_reused_and_its_files_survive_a_failed_start() {
        let base = base("reuse");
        let root = base.join("kiln/vm-2/root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("vmlinux"), "kernel").unwrap();
        let mut jail = Jail::create(&base, OsStr::new("kiln"), "vm-2").unwrap();
        assert_eq!(jail.root(), root.canonicalize().unwrap());
        let exe = std::env::current_exe().unwrap();
        jail.copy_exec(&exe, OsStr::new("kiln")).unwrap();
        assert!(root.join("kiln").is_file());
        // A failed start removes its exec copy only.
        jail.remove();
        assert!(!root.join("kiln").exists());
        assert_eq!(fs::read_to_string(root.join("vmlinux")).unwrap(), "kernel");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn an_existing_id_without_root_gets_one_and_only_it_is_removed() {
        let base = base("noroot");
        fs::create_dir_all(base.join("kiln/vm-3")).unwrap();
        fs::write(base.join("kiln/vm-3/config"), "x").unwrap();
        let jail = Jail::create(&base, OsStr::new("kiln"), "vm-3").unwrap();
        assert!(jail.root().is_dir());
        jail.remove();
        assert!(!base.join("kiln/vm-3/root").exists());
        assert!(base.join("kiln/vm-3/config").exists());
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_symlink_or_file_for_the_id_or_root_is_refused_and_its_target_untouched() {
        let base = base("symlink");
        let target = base.join("elsewhere");
        fs::create_dir_all(target.join("root")).unwrap();
        fs::create_dir_all(base.join("kiln/vm-5")).unwrap();
        std::os::unix::fs::symlink(&target, base.join("kiln/vm-4")).unwrap();
        std::os::unix::fs::symlink(target.join("root"), base.join("kiln/vm-5/root")).unwrap();
        fs::write(base.join("kiln/vm-6"), "").unwrap();
        for (id, bad) in [
            ("vm-4", "kiln/vm-4"),
            ("vm-5", "kiln/vm-5/root"),
            ("vm-6", "kiln/vm-6"),
        ] {
            let err = Jail::create(&base, OsStr::new("kiln"), id).unwrap_err();
            assert!(matches!(err, JailError::NotDir(_)), "{id}: {err}");
            assert!(err.to_string().contains(bad), "{id}: {err}");
        }
        assert_eq!(fs::read_dir(target.join("root")).unwrap().count(), 0);
        assert!(base.join("kiln/vm-5").is_dir(), "the SDK's <id> stays");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn an_exec_copy_left_by_an_earlier_start_is_replaced_not_written_through() {
        let base = base("stale");
        let root = base.join("kiln/vm-7/root");
        fs::create_dir_all(&root).unwrap();
        // A hard link to a file of the caller's, and then a symlink: neither is written.
        let outside = base.join("outside");
        fs::write(&outside, "keep").unwrap();
        fs::hard_link(&outside, root.join("kiln")).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut jail = Jail::create(&base, OsStr::new("kiln"), "vm-7").unwrap();
        jail.copy_exec(&exe, OsStr::new("kiln")).unwrap();
        assert_eq!(
            fs::metadata(root.join("kiln")).unwrap().len(),
            fs::metadata(&exe).unwrap().len()
        );
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        fs::remove_file(root.join("kiln")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("kiln")).unwrap();
        jail.copy_exec(&exe, OsStr::new("kiln")).unwrap();
        assert!(fs::symlink_metadata(root.join("kiln")).unwrap().is_file());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        jail.remove();
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_jail_being_built_or_with_a_running_kiln_is_refused() {
        let base = base("busy");
        let jail = Jail::create(&base, OsStr::new("kiln"), "vm-8").unwrap();
        let err = Jail::create(&base, OsStr::new("kiln"), "vm-8").unwrap_err();
        assert!(matches!(err, JailError::Busy(_)), "{err}");
        assert!(jail.root().is_dir(), "the refused start removed nothing");
        drop(jail);
        // A pid file naming a live process whose root is another directory is stale.
        let root = base.join("kiln/vm-8/root");
        fs::write(root.join("kiln.pid"), std::process::id().to_string()).unwrap();
        Jail::create(&base, OsStr::new("kiln"), "vm-8").unwrap();
        // A FIFO there is no pid file, and reading it must not block.
        fs::remove_file(root.join("kiln.pid")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("kiln.pid"))
            .status()
            .unwrap();
        assert!(fifo.success());
        Jail::create(&base, OsStr::new("kiln"), "vm-8").unwrap();
        fs::remove_dir_all(base).unwrap();
    }
}
