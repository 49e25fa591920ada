//! Raw disk images: a regular file or a host block device whose bytes are the guest's disk,
//! one to one, locked as QEMU locks them (lock.rs) for as long as it is open.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::disk::{open_locked, DiskBackend, DiskError};
use super::lock::Access;

/// A raw image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    len: u64,
}

impl RawFile {
    /// Opens the image at `path`, for reading only if `read_only`.
    pub fn open(path: &Path, read_only: bool) -> Result<RawFile, DiskError> {
        let access = if read_only {
            Access::Read
        } else {
            Access::Write
        };
        let mut file = open_locked(path, access)?;
        // Seeking to the end works for host block devices too, whose metadata length is 0.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RawFile { file, len })
    }
}

impl DiskBackend for RawFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_image(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("kiln-raw-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn reads_and_writes_at_offsets() {
        let path = temp_image("rw", &[0u8; 1024]);
        let mut disk = RawFile::open(&path, false).unwrap();
        assert_eq!(disk.len(), 1024);
        disk.write_at(b"kiln", 510).unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 6];
        disk.read_at(&mut buf, 509).unwrap();
        assert_eq!(&buf, b"\0kiln\0");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_read_past_the_end_is_an_error() {
        let path = temp_image("short", &[7u8; 512]);
        let mut disk = RawFile::open(&path, true).unwrap();
        let mut buf = [0u8; 16];
        assert!(disk.read_at(&mut buf, 500).is_err());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_read_only_image_rejects_writes() {
        let path = temp_image("ro", &[7u8; 512]);
        let mut disk = RawFile::open(&path, true).unwrap();
        assert!(disk.write_at(&[0u8; 512], 0).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 512]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_missing_image_names_its_path() {
        let path = Path::new("/nonexistent/kiln-disk.img");
        let err = RawFile::open(path, true).unwrap_err();
        assert!(matches!(err, DiskError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/kiln-disk.img"));
    }
}
