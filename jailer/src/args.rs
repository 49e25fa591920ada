//! Step 1: the command line (Firecracker's jailer flags) and its validation into a [`JailSpec`]. Everything that can be checked without changing the system
//! is checked here, before anything is created, so most bad input leaves no trace at all.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::cgroup::{self, CgroupError};
use crate::elf::{self, ElfError};
use crate::limits::{Limits, LimitsError};
use crate::netns::{self, NetnsError};
use crate::process::{self, ProcessError};
use crate::sys;

/// The longest `--id`, as in Firecracker.
const MAX_ID_LEN: usize = 64;
/// Names the jailer itself creates at the jail root, which the exec file cannot take.
const RESERVED_NAMES: &[&str] = &["dev", "run", "old_root"];

/// kiln-jailer: builds a jail (chroot, namespaces, cgroup, resource limits) for one kiln
/// process, drops privileges and execs kiln inside it, as Firecracker's jailer does.
#[derive(Debug, Parser)]
#[command(name = "kiln-jailer", version, about)]
pub struct Cli {
    /// The microVM's unique id: 1 to 64 alphanumerics and '-'. Names the jail and the cgroup.
    #[arg(long)]
    pub id: String,
    /// The kiln binary (static), copied into the jail.
    #[arg(long)]
    pub exec_file: PathBuf,
    /// The user kiln runs as (0 is accepted with a warning: kiln confined but still root).
    #[arg(long)]
    pub uid: u32,
    /// The group kiln runs as (0 is accepted with a warning).
    #[arg(long)]
    pub gid: u32,
    /// Where jails are built: <chroot-base-dir>/<exec file name>/<id>/root.
    #[arg(long, default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,
    /// A network namespace handle (e.g. /var/run/netns/NAME) for kiln to run in.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The cgroup version used for --cgroup and --parent-cgroup.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: u8,
    /// A cgroup setting, e.g. cpu.shares=512; may be repeated.
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    pub cgroups: Vec<String>,
    /// The cgroup, relative to each hierarchy, under which <id> is created [default: the exec
    /// file name].
    #[arg(long)]
    pub parent_cgroup: Option<PathBuf>,
    /// fsize=BYTES or no-file=N (default no-file=2048); may be repeated.
    #[arg(long = "resource-limit", value_name = "RESOURCE=VALUE")]
    pub resource_limits: Vec<String>,
    /// Start a new session and put the standard streams on /dev/null before exec.
    #[arg(long)]
    pub daemonize: bool,
    /// Run kiln as pid 1 of a new pid namespace; the jailer exits once kiln runs.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// Arguments for kiln, after `--`.
    #[arg(last = true, value_name = "KILN ARGS")]
    pub kiln_args: Vec<OsString>,
}

/// An argument that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error(
        "--id '{0}' is invalid: use 1 to {MAX_ID_LEN} characters, alphanumerics and '-' only."
    )]
    Id(String),
    #[error("--exec-file '{path}' cannot be used: {source}")]
    ExecFile { path: PathBuf, source: io::Error },
    #[error("--exec-file '{0}' is not a regular file.")]
    ExecNotFile(PathBuf),
    #[error("--exec-file '{0}' has no UTF-8 file name.")]
    ExecName(PathBuf),
    #[error("--exec-file '{0}': the jail root needs that name for itself; rename the file.")]
    ReservedName(PathBuf),
    #[error("kiln's --id comes from the jailer's --id; remove it after '--'.")]
    KilnId,
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(
        "--chroot-base-dir '{0}' is on a file system mounted noexec or nodev, where kiln could \
         not run or open its devices."
    )]
    BaseMount(PathBuf),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error(transparent)]
    Daemonize(#[from] ProcessError),
}

/// The validated jail to build.
#[derive(Debug)]
pub struct JailSpec {
    pub id: String,
    /// The canonical exec file.
    pub exec_file: PathBuf,
    /// Its file name: the jail's middle path component, the name inside the jail, and the
    /// default parent cgroup.
    pub exec_name: String,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroups: cgroup::Plan,
    pub limits: Limits,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub kiln_args: Vec<OsString>,
}

impl JailSpec {
    /// Checks every argument.
    pub fn validate(cli: Cli) -> Result<JailSpec, ArgsError> {
        check_id(&cli.id)?;
        let kiln_id = |a: &OsString| a == "--id" || a.to_string_lossy().starts_with("--id=");
        if cli.kiln_args.iter().any(kiln_id) {
            return Err(ArgsError::KilnId);
        }
        let exec_err = |source| ArgsError::ExecFile {
            path: cli.exec_file.clone(),
            source,
        };
        let exec_file = cli.exec_file.canonicalize().map_err(exec_err)?;
        if !exec_file.metadata().map_err(exec_err)?.is_file() {
            return Err(ArgsError::ExecNotFile(exec_file));
        }
        let exec_name = exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ArgsError::ExecName(exec_file.clone()))?
            .to_string();
        if RESERVED_NAMES.contains(&exec_name.as_str()) {
            return Err(ArgsError::ReservedName(exec_file));
        }
        elf::check_static(&exec_file)?;
        if let Some(warning) = root_warning(cli.uid, cli.gid) {
            // Firecracker's jailer accepts root too, and SDKs running as root pass it.
            eprintln!("{warning}");
        }
        check_base_mount(&cli.chroot_base_dir)?;
        if let Some(path) = &cli.netns {
            netns::check(path)?;
        }
        let parent = cli
            .parent_cgroup
            .clone()
            .unwrap_or_else(|| PathBuf::from(&exec_name));
        let cgroups = cgroup::Plan::new(cli.cgroup_version, &cli.cgroups, &parent, &cli.id)?;
        let limits = Limits::parse(&cli.resource_limits)?;
        if cli.daemonize {
            process::check_daemonize()?;
        }
        Ok(JailSpec {
            id: cli.id,
            exec_file,
            exec_name,
            uid: cli.uid,
            gid: cli.gid,
            chroot_base: cli.chroot_base_dir,
            netns: cli.netns,
            cgroups,
            limits,
            daemonize: cli.daemonize,
            new_pid_ns: cli.new_pid_ns,
            kiln_args: cli.kiln_args,
        })
    }
}

/// The warning line for a jailed uid or gid of 0, which keeps kiln root inside its jail.
fn root_warning(uid: u32, gid: u32) -> Option<String> {
    let which = match (uid, gid) {
        (0, 0) => "--uid 0 and --gid 0",
        (0, _) => "--uid 0",
        (_, 0) => "--gid 0",
        _ => return None,
    };
    Some(format!(
        "Warning: {which}: kiln runs as root inside the jail; pass an unprivileged uid and gid \
         to drop root."
    ))
}

/// An id becomes a path component and a cgroup name, so it must not hold '/', '.' or anything
/// else a path could use.
fn check_id(id: &str) -> Result<(), ArgsError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(ArgsError::Id(id.to_string()))
    }
}

/// Refuses a chroot base on a noexec or nodev mount, judged by its nearest existing ancestor
/// (the jailer creates the rest).
fn check_base_mount(base: &Path) -> Result<(), ArgsError> {
    let existing = base
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    match sys::mount_flags(existing) {
        Ok(flags) if flags & (libc::ST_NOEXEC | libc::ST_NODEV) != 0 => {
            Err(ArgsError::BaseMount(base.to_path_buf()))
        }
        // Unreadable flags are left for the jail creation to report.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_alphanumerics_and_dashes_up_to_64() {
        for good in [
            "a",
            "vm-1",
            "551e7604-e35c-42b3-b825-416853441234",
            &"x".repeat(64),
        ] {
            check_id(good).unwrap();
        }
        for bad in ["", "a/b", "..", "../x", "a.b", "a b", "ü", &"x".repeat(65)] {
            let err = check_id(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "--id '{bad}' is invalid: use 1 to 64 characters, alphanumerics and '-' only."
                )
            );
        }
    }

    #[test]
    fn kiln_arguments_follow_the_double_dash() {
        let cli = Cli::try_parse_from([
            "kiln-jailer",
            "--id",
            "vm",
            "--exec-file",
            "/bin/kiln",
            "--uid",
            "1",
            "--gid",
            "2",
            "--cgroup",
            "cpu.shares=5",
            "--cgroup",
            "cpuset.cpus=0",
            "--",
            "--api-sock",
            "/run/api.sock",
        ])
        .unwrap();
        assert_eq!(cli.cgroups, vec!["cpu.shares=5", "cpuset.cpus=0"]);
        assert_eq!(cli.kiln_args, vec!["--api-sock", "/run/api.sock"]);
        assert_eq!(cli.chroot_base_dir, Path::new("/srv/jailer"));
        assert_eq!(cli.cgroup_version, 1);
    }

    fn cli(exec_file: &Path, kiln_args: &[&str]) -> Cli {
        let mut args = vec!["kiln-jailer", "--id", "vm", "--uid", "1", "--gid", "1"];
        args.extend(["--exec-file", exec_file.to_str().unwrap(), "--"]);
        args.extend(kiln_args);
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn kiln_gets_its_id_from_the_jailer_only() {
        for arg in ["--id", "--id=other"] {
            let err = JailSpec::validate(cli(Path::new("/bin/sh"), &[arg, "x"])).unwrap_err();
            assert!(matches!(err, ArgsError::KilnId), "{arg}: {err}");
        }
    }

    #[test]
    fn the_exec_file_cannot_take_a_name_the_jail_uses() {
        let dir = std::env::temp_dir().join(format!("kiln-jailer-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in RESERVED_NAMES {
            let path = dir.join(name);
            std::fs::write(&path, "").unwrap();
            let err = JailSpec::validate(cli(&path, &[])).unwrap_err();
            assert!(matches!(err, ArgsError::ReservedName(_)), "{name}: {err}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn uid_and_gid_0_are_accepted_with_a_warning() {
        assert_eq!(root_warning(1, 1), None);
        for (uid, gid, which) in [
            (0, 0, "--uid 0 and --gid 0"),
            (0, 5, "--uid 0"),
            (5, 0, "--gid 0"),
        ] {
            assert_eq!(
                root_warning(uid, gid).unwrap(),
                format!(
                    "Warning: {which}: kiln runs as root inside the jail; pass an unprivileged \
                     uid and gid to drop root."
                )
            );
        }
    }

    #[test]
    fn only_cgroup_versions_1_and_2_exist() {
        let base = [
            "kiln-jailer",
            "--id",
            "v",
            "--exec-file",
            "k",
            "--uid",
            "1",
            "--gid",
            "1",
        ];
        for version in ["0", "3", "x"] {
            let args = base.iter().copied().chain(["--cgroup-version", version]);
            assert!(Cli::try_parse_from(args).is_err(), "{version}");
        }
    }
}
