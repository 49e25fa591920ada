//! Opening the host files a VM reads its data from (kernel, initrd, disk images, backing
//! files) so that a name that points at a FIFO, a socket or a character device is refused
//! with a clear error instead of blocking `open` forever (a FIFO waits for a writer) or
//! opening a device with side effects.
//!
//! The file's type is checked before it is opened, and again on the open descriptor (which
//! was opened with `O_NONBLOCK`, so a FIFO put in its place meanwhile cannot block it). Only
//! regular files and block devices are data files. `O_NONBLOCK` stays set: it has no effect on
//! regular files and block devices (open(2)), and clearing it would need `fcntl(F_SETFL)`,
//! which the VMM thread's seccomp filter does not allow (`PATCH /drives` opens images under
//! it).

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` with `options` (which say read or write) if it is a regular file or a block
/// device; anything else is an error of kind `InvalidInput` that names what it is.
pub fn open_data_file(path: &Path, options: &OpenOptions) -> io::Result<File> {
    check_type(std::fs::metadata(path)?.file_type())?;
    let file = options
        .clone()
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    check_type(file.metadata()?.file_type())?;
    Ok(file)
}

fn check_type(file_type: FileType) -> io::Result<()> {
    let what = if file_type.is_file() || file_type.is_block_device() {
        return Ok(());
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {what}, not a regular file or block device"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> OpenOptions {
        let mut options = OpenOptions::new();
        options.read(true);
        options
    }

    #[test]
    fn regular_files_open_and_special_files_are_named() {
        let dir = std::env::temp_dir().join(format!("kiln-host-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data");
        std::fs::write(&file, b"data").unwrap();
        assert!(open_data_file(&file, &read()).is_ok());

        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated name and touches no memory of ours.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let socket = dir.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mut write = read();
        write.write(true);
        for (path, options, what) in [
            (&fifo, read(), "a FIFO"),
            (&fifo, write, "a FIFO"),
            (&socket, read(), "a socket"),
            (
                &Path::new("/dev/null").to_path_buf(),
                read(),
                "a character device",
            ),
            (&dir, read(), "a directory"),
        ] {
            let error = open_data_file(path, &options).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(
                error.to_string(),
                format!("it is {what}, not a regular file or block device")
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
