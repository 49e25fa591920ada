//! `kiln-jailer`: confines one `kiln` process and then execs it, as Firecracker's jailer does.
//! The steps, in order, each in its own module:
//!
//! 1. validate the arguments (`args`);
//! 2. close inherited descriptors and empty the environment (`sanitize`);
//! 3. create `<base>/<exec name>/<id>/root`, or reuse the one an SDK made, with the exec file
//!    in it (`jail`);
//! 4. set the resource limits (`limits`);
//! 5. create and join the cgroup (`cgroup`);
//! 6. join the network namespace (`netns`);
//! 7. enter a new mount namespace and pivot_root into the jail (`chroot`);
//! 8. create the device nodes (`devices`);
//! 9. give the jail root to the jailed user (`jail`);
//! 10. daemonize or enter a new pid namespace, 11. write the pid file, 12. drop to the uid
//!     and gid and exec kiln (`process`).
//!
//! Until the exec, a failure undoes what this start created (the jail directories it made, the
//! files it put in, the cgroup) and nothing else, so the next start with the same id is not
//! blocked and an SDK's files in the jail stay. Exit status: 153 when the arguments are at
//! fault, 1 when building the jail fails, 0 for the parent of `--new-pid-ns` once kiln runs.
//! Errors are one line on stderr.

mod args;
mod cgroup;
mod chroot;
mod devices;
mod elf;
mod jail;
mod limits;
mod netns;
mod process;
mod sanitize;
mod sys;

use std::fs::File;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{ArgsError, Cli, JailSpec};
use crate::cgroup::{CgroupError, Joined};
use crate::jail::Jail;
use crate::process::Launch;

/// Exit status for bad arguments, as kiln (and Firecracker) use it.
const EXIT_BAD_ARGUMENTS: u8 = 153;
const EXIT_FAILURE: u8 = 1;

/// Why the jail could not be built.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Sanitize(#[from] sanitize::SanitizeError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Limits(#[from] limits::LimitsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("Failed to open /dev/null for --daemonize: {0}")]
    DevNull(std::io::Error),
    #[error(transparent)]
    Chroot(#[from] chroot::ChrootError),
    #[error(transparent)]
    Devices(#[from] devices::DevicesError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error("{0}; its jail '{1}' is left behind")]
    AfterDrop(process::ProcessError, String),
}

impl Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Args(_) => EXIT_BAD_ARGUMENTS,
            Error::Cgroup(e) if e.is_bad_input() => EXIT_BAD_ARGUMENTS,
            _ => EXIT_FAILURE,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help or --version; nothing sensible is left to do if stdout is gone.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first line names the problem; the usage text after it is noise here.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            eprintln!("Error: {}", line.trim_start_matches("error: "));
            return ExitCode::from(EXIT_BAD_ARGUMENTS);
        }
    };
    // Without --new-pid-ns, success is an exec and never returns here.
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let spec = JailSpec::validate(cli)?;
    sanitize::sanitize()?;
    let mut jail = Jail::create(&spec.chroot_base, spec.exec_name.as_ref(), &spec.id)?;
    let jail_path = jail.root().display().to_string();
    let mut cgroups = None;
    match confine(&spec, &mut jail, &mut cgroups) {
        Ok(Confined::Exec(launch_path)) => {
            // The descriptors kept for undoing are close-on-exec anyway; kiln must never get
            // a handle on the host's directories.
            drop(cgroups);
            drop(jail);
            let launch = launch(&spec, &launch_path);
            // Past the privilege drop nothing can be undone; only exec failures get here.
            Err(Error::AfterDrop(process::exec(&launch), jail_path))
        }
        Ok(Confined::Started) => Ok(()),
        Err(e) => {
            if let Some(joined) = cgroups {
                joined.undo();
            }
            jail.remove();
            Err(e)
        }
    }
}

/// How [`confine`] ended.
enum Confined {
    /// This process is ready to drop privileges and exec the file at this jail path.
    Exec(std::path::PathBuf),
    /// kiln runs in a new pid namespace; this process, its parent, is done.
    Started,
}

fn launch<'a>(spec: &'a JailSpec, path: &'a Path) -> Launch<'a> {
    Launch {
        path,
        id: &spec.id,
        args: &spec.kiln_args,
        uid: spec.uid,
        gid: spec.gid,
    }
}

/// Steps 3 (after the directory) to 11; anything created is recorded in `jail` and `cgroups`
/// for the caller to undo on error.
fn confine(
    spec: &JailSpec,
    jail: &mut Jail,
    cgroups: &mut Option<Joined>,
) -> Result<Confined, Error> {
    let exec_path = jail.copy_exec(&spec.exec_file, spec.exec_name.as_ref())?;
    spec.limits.apply()?;
    *cgroups = Some(spec.cgroups.apply()?);
    if let Some(netns) = &spec.netns {
        netns::join(netns)?;
    }
    // The host's /dev is out of reach once inside the jail.
    let dev_null = if spec.daemonize {
        let null = File::options().read(true).write(true).open("/dev/null");
        Some(null.map_err(Error::DevNull)?)
    } else {
        None
    };
    chroot::enter(jail)?;
    devices::create(jail, spec.uid, spec.gid)?;
    jail.give_to(spec.uid, spec.gid)?;
    if let Some(dev_null) = dev_null {
        process::daemonize(&dev_null)?;
    }
    if spec.new_pid_ns {
        process::spawn_in_new_pid_ns(jail, &spec.exec_name, &launch(spec, &exec_path))?;
        return Ok(Confined::Started);
    }
    process::write_pid_file(jail, &spec.exec_name, std::process::id())?;
    Ok(Confined::Exec(exec_path))
}
