//! Step 2: nothing the caller left behind reaches the jail. Every inherited file descriptor
//! above stderr is closed, the environment is emptied, and the umask is reset so the modes the
//! jailer gives its files are the modes they get.

use std::io;

/// The process state cannot be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum SanitizeError {
    #[error("Failed to close the inherited file descriptors: {0}")]
    CloseFds(io::Error),
}

/// Closes every descriptor above 2, empties the environment and sets the umask to 022.
pub fn sanitize() -> Result<(), SanitizeError> {
    close_inherited_fds().map_err(SanitizeError::CloseFds)?;
    // The jailer has not started a thread, so changing the environment races with nothing.
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    // SAFETY: umask only sets a process attribute and cannot fail.
    unsafe { libc::umask(0o022) };
    Ok(())
}

fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range only closes descriptors. The jailer owns none above 2 at this point
    // (the validation step closed what it opened), so no Rust object is left holding a
    // closed number.
    if unsafe { libc::close_range(3, libc::c_uint::MAX, 0) } == 0 {
        return Ok(());
    }
    // Kernels before 5.9 lack close_range: close what /proc/self/fd lists instead. The list is
    // read in full first, so the directory's own descriptor is closed with the others only
    // after it is no longer used.
    let fds: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: as above, no Rust object owns a descriptor above 2; closing the one the
        // finished read_dir used returns EBADF, which is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
