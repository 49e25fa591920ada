//! The file or FIFO that log and metrics lines go to, written so that it never blocks the
//! thread that writes: a vCPU thread logging, the VMM thread flushing metrics, the VMM thread
//! serving `PUT /logger` or `PUT /metrics`.
//!
//! It is opened with `O_NONBLOCK`, as Firecracker opens it: a FIFO that no process reads is
//! refused at once (`ENXIO`) instead of blocking `open` until one does. A full pipe drops the
//! line (the caller counts it) instead of waiting for the reader. A line is never torn: when
//! the pipe takes only part of one, the rest is kept and written before any later line, and
//! lines are dropped until it is.
//!
//! The process's own stdout or stderr is written the same way, but its flags are shared with
//! whoever else holds it (the shell, the parent) and stay as they are: each write is made only
//! when poll says the stream takes bytes now, and takes at most a page, which a pipe that polls
//! writable always has room for.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Errors opening a line sink.
#[derive(Debug, thiserror::Error)]
pub enum LineSinkError {
    /// The path is a FIFO that no process has open for reading.
    #[error("no process reads the FIFO")]
    NoReader,
    /// Any other failure to open.
    #[error("{0}")]
    Open(std::io::Error),
}

/// A file appended to, or a FIFO written, without blocking.
#[derive(Debug)]
pub struct LineSink {
    file: File,
    /// Whether the file may block (a copy of stdout or stderr), so that each write is
    /// preceded by a poll.
    poll_first: bool,
    /// The end of a line the pipe took only part of.
    pending: Vec<u8>,
}

/// The most a write after a poll writes: a pipe that polls writable has a free page.
const POLLED_WRITE_MAX: usize = 4096;

/// Whether `fd` takes a write now.
fn writable(fd: BorrowedFd<'_>) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pollfd` is one valid pollfd that outlives the call; a zero timeout never waits.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready == 1 && pollfd.revents & libc::POLLOUT != 0
}

impl LineSink {
    /// Opens `path` for appending, creating a regular file if there is none.
    pub fn open(path: &Path) -> Result<Self, LineSinkError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO) => LineSinkError::NoReader,
                _ => LineSinkError::Open(e),
            })?;
        Ok(Self {
            file,
            poll_first: false,
            pending: Vec::new(),
        })
    }

    /// Writes to `stream` (this process's stdout or stderr) through a copy of its descriptor,
    /// leaving its flags as they are.
    pub fn standard(stream: BorrowedFd<'_>) -> std::io::Result<Self> {
        Ok(Self {
            file: File::from(stream.try_clone_to_owned()?),
            poll_first: true,
            pending: Vec::new(),
        })
    }

    /// Writes `line` whole, or not at all; returns whether it was written (or its end kept to
    /// go first next time). A line is dropped when the pipe is full, when the end of an earlier
    /// line is still waiting, or when the write fails (a FIFO whose reader left).
    pub fn write_line(&mut self, line: &[u8]) -> bool {
        let mut pending = std::mem::take(&mut self.pending);
        match self.write_some(&pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(()) => pending.clear(),
        }
        if !pending.is_empty() {
            self.pending = pending;
            return false;
        }
        match self.write_some(line) {
            Ok(0) => false,
            Ok(n) => {
                self.pending = line.get(n..).unwrap_or_default().to_vec();
                true
            }
            Err(()) => false,
        }
    }

    /// Writes what the file takes of `bytes` now: 0 when a pipe is full. `Err` when the write
    /// failed otherwise, so that the bytes can never be written whole.
    fn write_some(&mut self, bytes: &[u8]) -> Result<usize, ()> {
        let mut done = 0;
        while let Some(mut rest) = bytes.get(done..).filter(|rest| !rest.is_empty()) {
            if self.poll_first {
                if !writable(self.file.as_fd()) {
                    break;
                }
                rest = rest.get(..POLLED_WRITE_MAX).unwrap_or(rest);
            }
            match self.file.write(rest) {
                Ok(0) => return Err(()),
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(()),
            }
        }
        Ok(done)
    }
}

/// FIFOs for the tests of the modules that write lines.
#[cfg(test)]
pub(crate) mod test_utils {
    use std::fs::{File, OpenOptions};
    use std::io::{ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    /// A new FIFO in the temporary directory.
    pub(crate) fn fifo(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("kiln-sink-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated name and touches no memory of ours.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        path
    }

    /// A reader of the FIFO at `path` that reads only when asked.
    pub(crate) fn reader(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap()
    }

    /// What the FIFO holds now.
    pub(crate) fn read_all(reader: &mut File) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return all,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::{fifo, read_all, reader};
    use super::*;

    #[test]
    fn a_fifo_without_a_reader_is_refused_at_once() {
        let path = fifo("noreader");
        let error = LineSink::open(&path).unwrap_err();
        assert!(matches!(error, LineSinkError::NoReader), "{error}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_full_pipe_drops_whole_lines_and_never_tears_one() {
        let path = fifo("full");
        let mut reader = reader(&path);
        let mut sink = LineSink::open(&path).unwrap();
        // Lines that do not divide the pipe's size, so that one is taken only in part.
        let line = |i: usize| format!("{i:0999}\n").into_bytes();
        let written: Vec<bool> = (0..200).map(|i| sink.write_line(&line(i))).collect();
        assert!(
            written.iter().any(|w| !w),
            "a 64 KiB pipe cannot take 200 KB"
        );
        let mut got = read_all(&mut reader);
        // The reader caught up: the end of the torn line goes first, then new lines again.
        assert!(sink.write_line(&line(200)));
        assert!(sink.write_line(&line(201)));
        got.extend(read_all(&mut reader));
        assert_eq!(got.len() % 1000, 0, "a line was torn");
        let read: Vec<usize> = got
            .chunks(1000)
            .map(|l| {
                assert_eq!(l[999], b'\n');
                std::str::from_utf8(&l[..999]).unwrap().parse().unwrap()
            })
            .collect();
        let expected: Vec<usize> = (0..202).filter(|&i| i >= 200 || written[i]).collect();
        assert_eq!(
            read, expected,
            "every line reported written arrives whole, in order"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_blocking_pipe_drops_lines_instead_of_blocking_and_keeps_its_flags() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here alone.
        let (mut reader, writer) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        let mut sink = LineSink::standard(writer.as_fd()).unwrap();
        let line = |i: usize| format!("{i:0999}\n").into_bytes();
        // A blocking write to a full pipe would hang here.
        let written: Vec<bool> = (0..200).map(|i| sink.write_line(&line(i))).collect();
        assert!(
            written.iter().any(|w| !w),
            "a 64 KiB pipe cannot take 200 KB"
        );
        // SAFETY: F_GETFL only reads the flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(
            flags & libc::O_NONBLOCK,
            0,
            "the shared flags are unchanged"
        );
        drop(sink);
        drop(writer);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut got).unwrap();
        assert_eq!(got.len() % 1000, 0, "a line was torn");
        assert_eq!(got.len() / 1000, written.iter().filter(|w| **w).count());
    }

    #[test]
    fn a_regular_file_is_created_and_appended_to() {
        let path = std::env::temp_dir().join(format!("kiln-sink-file-{}", std::process::id()));
        std::fs::write(&path, "before\n").unwrap();
        let mut sink = LineSink::open(&path).unwrap();
        assert!(sink.write_line(b"after\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\nafter\n");
        std::fs::remove_file(path).unwrap();
    }
}
