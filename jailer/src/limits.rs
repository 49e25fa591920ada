//! Step 4: the resource limits (`--resource-limit fsize=N`, `--resource-limit no-file=N`) that
//! bound the jailed process and anything it starts. As in Firecracker, the open-file limit
//! defaults to 2048 when not given, and each limit sets the soft and the hard value, so kiln
//! cannot raise it again.

use std::io;

/// Firecracker's default for `no-file`.
const DEFAULT_NO_FILE: u64 = 2048;

/// A `--resource-limit` that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("--resource-limit '{0}' must be RESOURCE=VALUE, with RESOURCE fsize or no-file.")]
    Format(String),
    #[error("--resource-limit '{0}': unknown resource; use fsize or no-file.")]
    UnknownResource(String),
    #[error("--resource-limit '{0}': the value must be a whole number.")]
    Value(String),
    #[error("Failed to set the {resource} limit to {value}: {source}")]
    Set {
        resource: &'static str,
        value: u64,
        source: io::Error,
    },
}

/// The limits to set on the jailed process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_FSIZE: the largest file the process may write, in bytes.
    fsize: Option<u64>,
    /// RLIMIT_NOFILE: one more than the highest descriptor number the process may open.
    no_file: u64,
}

impl Limits {
    /// Parses the `--resource-limit` values; a later value for the same resource wins.
    pub fn parse(args: &[String]) -> Result<Self, LimitsError> {
        let mut limits = Limits {
            fsize: None,
            no_file: DEFAULT_NO_FILE,
        };
        for arg in args {
            let (name, value) = arg
                .split_once('=')
                .ok_or_else(|| LimitsError::Format(arg.clone()))?;
            let value: u64 = value.parse().map_err(|_| LimitsError::Value(arg.clone()))?;
            match name {
                "fsize" => limits.fsize = Some(value),
                "no-file" => limits.no_file = value,
                _ => return Err(LimitsError::UnknownResource(arg.clone())),
            }
        }
        Ok(limits)
    }

    /// Sets the limits on this process; they survive exec.
    pub fn apply(&self) -> Result<(), LimitsError> {
        if let Some(fsize) = self.fsize {
            set("fsize", libc::RLIMIT_FSIZE, fsize)?;
        }
        set("no-file", libc::RLIMIT_NOFILE, self.no_file)
    }
}

fn set(
    resource: &'static str,
    which: libc::__rlimit_resource_t,
    value: u64,
) -> Result<(), LimitsError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit that setrlimit only reads.
    if unsafe { libc::setrlimit(which, &limit) } < 0 {
        return Err(LimitsError::Set {
            resource,
            value,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_file_defaults_to_2048_like_firecracker() {
        let limits = Limits::parse(&[]).unwrap();
        assert_eq!(
            limits,
            Limits {
                fsize: None,
                no_file: 2048
            }
        );
    }

    #[test]
    fn both_resources_parse() {
        let limits = Limits::parse(&args(&["fsize=250000000", "no-file=1024"])).unwrap();
        assert_eq!(
            limits,
            Limits {
                fsize: Some(250_000_000),
                no_file: 1024
            }
        );
    }

    #[test]
    fn bad_limits_name_the_argument() {
        for (arg, text) in [
            ("fsize", "must be RESOURCE=VALUE"),
            ("cpu=3", "unknown resource"),
            ("no-file=-1", "whole number"),
            ("fsize=10M", "whole number"),
        ] {
            let err = Limits::parse(&args(&[arg])).unwrap_err().to_string();
            assert!(err.contains(arg) && err.contains(text), "{arg}: {err}");
        }
    }
}
