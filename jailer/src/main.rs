//! `kiln-jailer`: confines one `kiln` process (chroot, namespaces, cgroups, resource limits,
//! uid/gid drop) and then execs it, as Firecracker's jailer does.
//!
//! Not implemented yet: this binary only reports that.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("Error: kiln-jailer is not implemented yet.");
    ExitCode::FAILURE
}
