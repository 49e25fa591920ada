//! Steps 10 to 12: how the jailed process starts. It may leave the caller's session
//! (`--daemonize`: setsid, standard streams on /dev/null) or become pid 1 of a new pid
//! namespace (`--new-pid-ns`: the jailer forks, and the parent writes the pid file and exits);
//! then it records its pid in `/<exec name>.pid`, drops to the jailed uid and gid (supplementary
//! groups too) and execs kiln with an empty environment, passing `--id` first as Firecracker's
//! jailer does.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::jail::Jail;
use crate::sys::{self, Forked};

/// The jailed process cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "--daemonize: the jailer leads its process group, so setsid() would fail; start it \
         from a process that does not make it a group leader."
    )]
    GroupLeader,
    #[error("Failed to daemonize: {0}")]
    Daemonize(io::Error),
    #[error("Failed to start kiln in a new pid namespace: {0}")]
    PidNamespace(io::Error),
    #[error("Failed to write the pid file '{path}': {source}")]
    PidFile { path: PathBuf, source: io::Error },
    #[error("Failed to drop to uid {uid} gid {gid}: {source}")]
    Drop {
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("Failed to exec '{path}' in the jail: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Child(String),
}

/// Checks, before anything is built, that `--daemonize` will work.
pub fn check_daemonize() -> Result<(), ProcessError> {
    if sys::leads_process_group() {
        return Err(ProcessError::GroupLeader);
    }
    Ok(())
}

/// Leaves the caller's session and terminal and puts the standard streams on `dev_null`
/// (opened before the jail hid the host's /dev).
pub fn daemonize(dev_null: &File) -> Result<(), ProcessError> {
    sys::setsid().map_err(ProcessError::Daemonize)?;
    for fd in 0..=2 {
        sys::dup2(dev_null, fd).map_err(ProcessError::Daemonize)?;
    }
    Ok(())
}

/// Writes `pid` to `/<exec name>.pid` in the jail (the current root).
pub fn write_pid_file(jail: &mut Jail, exec_name: &str, pid: u32) -> Result<(), ProcessError> {
    let inside = format!("{exec_name}.pid");
    let path = Path::new("/").join(&inside);
    let pid_err = |source| ProcessError::PidFile {
        path: path.clone(),
        source,
    };
    // The pid file of an earlier start (whose kiln `jail` checked is gone) is replaced.
    Jail::clear_inside(Path::new(&inside)).map_err(pid_err)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .map_err(pid_err)?;
    jail.record(Path::new(&inside), false);
    file.write_all(pid.to_string().as_bytes()).map_err(pid_err)
}

/// What kiln needs to start.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The exec file's path inside the jail.
    pub path: &'a Path,
    pub id: &'a str,
    pub args: &'a [OsString],
    pub uid: u32,
    pub gid: u32,
}

/// Step 12: drops privileges and execs kiln. Returns only on failure.
pub fn exec(launch: &Launch) -> ProcessError {
    if let Err(source) = sys::drop_to(launch.uid, launch.gid) {
        return ProcessError::Drop {
            uid: launch.uid,
            gid: launch.gid,
            source,
        };
    }
    let source = Command::new(launch.path)
        .arg("--id")
        .arg(launch.id)
        .args(launch.args)
        .env_clear()
        .exec();
    ProcessError::Exec {
        path: launch.path.to_path_buf(),
        source,
    }
}

/// Steps 10 to 12 with `--new-pid-ns`: forks a child into a new pid namespace, where it is
/// pid 1. The parent writes the pid file, then lets the child drop privileges and exec kiln,
/// and waits until the exec succeeded, so every failure is the parent's to report while it can
/// still undo the jail as root. Returns, in the parent only, kiln's pid as the jailer's pid
/// namespace sees it.
pub fn spawn_in_new_pid_ns(
    jail: &mut Jail,
    exec_name: &str,
    launch: &Launch,
) -> Result<u32, ProcessError> {
    let ns_err = ProcessError::PidNamespace;
    sys::unshare(libc::CLONE_NEWPID).map_err(ns_err)?;
    // `go` tells the child the pid file is written; `status` brings back its exec error. Both
    // are close-on-exec, so a successful exec closes the child's `status` end.
    let (mut go_rx, go_tx) = io::pipe().map_err(ns_err)?;
    let (mut status_rx, mut status_tx) = io::pipe().map_err(ns_err)?;
    match sys::fork().map_err(ns_err)? {
        Forked::Child => {
            drop((go_tx, status_rx));
            let mut byte = [0u8];
            if go_rx.read_exact(&mut byte).is_err() {
                // The parent failed and reports why.
                sys::exit_now(1);
            }
            let err = exec(launch);
            let _ = status_tx.write_all(err.to_string().as_bytes());
            sys::exit_now(1)
        }
        Forked::Parent(child) => {
            drop((go_rx, status_tx));
            let pid = u32::try_from(child).unwrap_or_default();
            let mut go_tx = go_tx;
            if let Err(e) = write_pid_file(jail, exec_name, pid) {
                sys::kill_and_reap(child);
                return Err(e);
            }
            if let Err(e) = go_tx.write_all(&[1]) {
                sys::kill_and_reap(child);
                return Err(ns_err(e));
            }
            let mut failure = String::new();
            let _ = status_rx.read_to_string(&mut failure);
            if !failure.is_empty() {
                sys::kill_and_reap(child);
                return Err(ProcessError::Child(failure));
            }
            Ok(pid)
        }
    }
}
