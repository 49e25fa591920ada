//! The jail directory `<chroot base>/<exec name>/<id>/root`: creating it with the exec file
//! copied in (step 3), the directories kiln writes to and the ownership of the root (step 9),
//! and removing everything the jailer created when a later step fails, so a failed start never
//! blocks the next one with the same id.
//!
//! Removal works from inside the jail too: `Jail` keeps `<chroot base>/<exec name>` open and
//! records every path it creates relative to that directory, so `unlinkat` still reaches them
//! after pivot_root has hidden the host's file system.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
        "The jail '{0}' already exists: an id names one jail; remove the old jail or pick \
         another --id."
    )]
    Exists(PathBuf),
    #[error("Failed to create '{path}': {source}")]
    Create { path: PathBuf, source: io::Error },
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
}

/// A jail under construction, and what the jailer has created in it so far.
#[derive(Debug)]
pub struct Jail {
    /// `<chroot base>/<exec name>`, open for the `*at` calls of [`Jail::remove`].
    exec_dir: OwnedFd,
    /// The same directory's host path, canonical, for messages.
    exec_dir_path: PathBuf,
    id: String,
    /// Created paths relative to `exec_dir` (`<id>/root/...`), oldest first, with whether each
    /// is a directory.
    created: Vec<(PathBuf, bool)>,
}

impl Jail {
    /// Creates `<base>/<exec name>/<id>/root`; `<id>` must not exist yet. The directories
    /// above `<id>` are shared by every jail and created when missing.
    pub fn create(base: &Path, exec_name: &OsStr, id: &str) -> Result<Jail, JailError> {
        let exec_dir_path = base.join(exec_name);
        let create_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JailError::Create { path, source }
        };
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
            exec_dir_path,
            id: id.to_string(),
            created: Vec::new(),
        };
        // One mkdir decides who owns the id, even against a concurrent start.
        match sys::mkdirat(&jail.exec_dir, Path::new(id), 0o755) {
            Ok(()) => jail.created.push((PathBuf::from(id), true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(JailError::Exists(jail.exec_dir_path.join(id)));
            }
            Err(e) => return Err(create_err(&jail.exec_dir_path.join(id))(e)),
        }
        let root = jail.rel(Path::new(""));
        if let Err(e) = sys::mkdirat(&jail.exec_dir, &root, 0o755) {
            let err = create_err(&jail.root())(e);
            jail.remove();
            return Err(err);
        }
        jail.created.push((root, true));
        Ok(jail)
    }

    /// The jail root, as the host sees it.
    pub fn root(&self) -> PathBuf {
        self.exec_dir_path.join(&self.id).join("root")
    }

    /// `inside` (a path relative to the jail root) relative to `exec_dir`.
    fn rel(&self, inside: &Path) -> PathBuf {
        Path::new(&self.id).join("root").join(inside)
    }

    /// Records that the jailer created `inside` (relative to the jail root), so that
    /// [`Jail::remove`] removes it.
    pub fn record(&mut self, inside: &Path, is_dir: bool) {
        let rel = self.rel(inside);
        self.created.push((rel, is_dir));
    }

    /// Copies `exec_file` to `<root>/<name>`, read-only and executable for everyone, and
    /// returns its path inside the jail.
    pub fn copy_exec(&mut self, exec_file: &Path, name: &OsStr) -> Result<PathBuf, JailError> {
        let to = self.root().join(name);
        let copy_err = |source| JailError::Copy {
            from: exec_file.to_path_buf(),
            to: to.clone(),
            source,
        };
        let mut src = fs::File::open(exec_file).map_err(copy_err)?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(EXEC_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&to)
            .map_err(copy_err)?;
        self.record(Path::new(name), false);
        io::copy(&mut src, &mut dst).map_err(copy_err)?;
        Ok(Path::new("/").join(name))
    }

    /// Creates directory `/<inside>` of the current root with `mode`; for after `chroot`.
    pub fn mkdir_inside(&mut self, inside: &str, mode: u32) -> Result<(), JailError> {
        let path = Path::new("/").join(inside);
        fs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .map_err(|source| JailError::Create {
                path: path.clone(),
                source,
            })?;
        self.record(Path::new(inside), true);
        // The mode is exact whatever the umask was.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|source| JailError::Create { path, source })
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

    /// Removes everything the jailer created, newest first. Best effort: this runs on the way
    /// out of a failed start, whose error is the one worth reporting.
    pub fn remove(self) {
        for (rel, is_dir) in self.created.iter().rev() {
            let _ = sys::unlinkat(&self.exec_dir, rel, *is_dir);
        }
    }
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
    fn an_existing_jail_is_refused_and_left_alone() {
        let base = base("exists");
        fs::create_dir_all(base.join("kiln/vm-2/root")).unwrap();
        fs::write(base.join("kiln/vm-2/root/keep"), "x").unwrap();
        let err = Jail::create(&base, OsStr::new("kiln"), "vm-2").unwrap_err();
        assert!(matches!(err, JailError::Exists(_)), "{err}");
        assert!(
            err.to_string().contains("kiln/vm-2' already exists"),
            "{err}"
        );
        assert!(base.join("kiln/vm-2/root/keep").exists());
        fs::remove_dir_all(base).unwrap();
    }
}
