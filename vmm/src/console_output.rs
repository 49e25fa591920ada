//! The serial console's output side: where the guest's UART bytes go (stdout, or the file or
//! FIFO `serial_out_path` names), written without ever blocking the vCPU thread that writes
//! them. A reader that falls behind loses bytes, which the UART counts, instead of stalling
//! the guest, and with it the vCPU's answer to a pause or a stop (see [`crate::line_sink`]).

use std::io::{ErrorKind, Write};
use std::os::fd::AsFd;
use std::path::Path;

use crate::line_sink::{LineSink, LineSinkError};

/// The guest console's output stream.
#[derive(Debug)]
pub struct ConsoleOutput(LineSink);

impl ConsoleOutput {
    /// This process's stdout.
    pub fn stdout() -> std::io::Result<Self> {
        LineSink::standard(std::io::stdout().as_fd()).map(Self)
    }

    /// The file at `path`, appended to and created if missing, or a FIFO some process reads.
    pub fn open(path: &Path) -> Result<Self, LineSinkError> {
        LineSink::open(path).map(Self)
    }
}

impl Write for ConsoleOutput {
    /// Takes all of `buf` or none of it: `WouldBlock` when the reader is behind.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.write_line(buf) {
            Ok(buf.len())
        } else {
            Err(ErrorKind::WouldBlock.into())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line_sink::test_utils::{fifo, read_all, reader};

    #[test]
    fn a_full_fifo_refuses_bytes_instead_of_blocking() {
        let path = fifo("console");
        let mut reader = reader(&path);
        let mut out = ConsoleOutput::open(&path).unwrap();
        let mut taken = 0;
        let mut refused = 0;
        for _ in 0..100_000 {
            match out.write(b"x") {
                Ok(1) => taken += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused > 0, "a 64 KiB pipe cannot take 100,000 bytes");
        assert_eq!(read_all(&mut reader).len(), taken);
        assert!(out.write(b"y").is_ok(), "the reader caught up");
        std::fs::remove_file(path).unwrap();
    }
}
