//! Choosing how to open a disk image: the format the user named, or, when they named none,
//! qcow2 if the image starts with the qcow2 magic and raw otherwise. Only the image the user
//! named is ever probed; backing files take their format from the overlay's header. An image
//! probed as raw is guarded ([`ProbedRaw`]) so that the guest cannot turn it into something
//! the next probe takes for another format.

use std::fs::OpenOptions;
use std::path::Path;

use super::probed_raw::ProbedRaw;
use super::qcow::{QcowFile, MAGIC};
use super::{DiskBackend, DiskError, RawFile};
use crate::host_file::open_data_file;

/// The format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// The file's bytes are the disk's bytes.
    Raw,
    /// A qcow2 image (version 2 or 3), possibly with a backing chain.
    Qcow2,
}

/// Opens the disk image at `path` as `format`, or as the format its first bytes show if
/// `format` is `None`; for reading only if `read_only`.
pub fn open_disk(
    path: &Path,
    read_only: bool,
    format: Option<ImageFormat>,
) -> Result<Box<dyn DiskBackend>, DiskError> {
    Ok(match format {
        Some(ImageFormat::Raw) => Box::new(RawFile::open(path, read_only)?),
        Some(ImageFormat::Qcow2) => Box::new(QcowFile::open(path, read_only)?),
        None => match probe(path)? {
            ImageFormat::Raw => Box::new(ProbedRaw::new(RawFile::open(path, read_only)?)),
            ImageFormat::Qcow2 => Box::new(QcowFile::open(path, read_only)?),
        },
    })
}

/// qcow2 if the file starts with the magic; raw otherwise, shorter files included.
fn probe(path: &Path) -> Result<ImageFormat, DiskError> {
    let open_error = |source| DiskError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = open_data_file(path, OpenOptions::new().read(true)).map_err(open_error)?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match std::os::unix::fs::FileExt::read_at(
            &file,
            magic.get_mut(got..).unwrap_or_default(),
            got as u64,
        ) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(open_error(e)),
        }
    }
    Ok(if got == magic.len() && magic == MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::retry_locked;

    #[test]
    fn probes_only_the_magic() {
        let dir = std::env::temp_dir();
        let short = dir.join(format!("kiln-probe-short-{}", std::process::id()));
        std::fs::write(&short, b"QF").unwrap();
        assert_eq!(probe(&short).unwrap(), ImageFormat::Raw);
        let fake = dir.join(format!("kiln-probe-fake-{}", std::process::id()));
        std::fs::write(&fake, b"QFI\xfbjunk").unwrap();
        assert_eq!(probe(&fake).unwrap(), ImageFormat::Qcow2);
        // An explicit raw format opens even a file that looks like qcow2.
        assert_eq!(
            open_disk(&fake, true, Some(ImageFormat::Raw))
                .unwrap()
                .len(),
            8
        );
        assert!(matches!(
            open_disk(&fake, true, None),
            Err(DiskError::Qcow { .. })
        ));
        std::fs::remove_file(short).unwrap();
        std::fs::remove_file(fake).unwrap();
    }

    /// The refusal `open_disk` gives while another open of the image holds its lock.
    fn lock_refusal(path: &Path, read_only: bool, format: Option<ImageFormat>) -> DiskError {
        match open_disk(path, read_only, format) {
            Ok(_) => panic!("opened {} (read_only {read_only})", path.display()),
            Err(e @ DiskError::Lock { .. }) => e,
            Err(e) => panic!("not a lock error: {e}"),
        }
    }

    #[test]
    fn a_probed_raw_image_is_locked_and_guarded() {
        let path = std::env::temp_dir().join(format!("kiln-probe-locked-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let locked = |e: &DiskError| matches!(e, DiskError::Lock { .. });
        let open = |read_only| retry_locked(|| open_disk(&path, read_only, None), locked);

        let Ok(mut disk) = open(false) else {
            panic!("the probed raw image did not open for writing");
        };
        // Guarded as probed raw: no qcow2 header into the first sector.
        let err = disk.write_at(b"QFI\xfb", 0).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        disk.write_at(b"data", 0).unwrap();
        // Locked as raw: no other reader or writer, probed or named raw.
        for format in [None, Some(ImageFormat::Raw)] {
            for read_only in [true, false] {
                lock_refusal(&path, read_only, format);
            }
        }
        drop(disk);

        // Read-only: other readers are welcome, writers not.
        let Ok(reader) = open(true) else {
            panic!("the probed raw image did not open for reading");
        };
        drop(
            open_disk(&path, true, None)
                .map_err(|e| e.to_string())
                .unwrap(),
        );
        lock_refusal(&path, false, None);
        lock_refusal(&path, false, Some(ImageFormat::Raw));
        drop(reader);
        std::fs::remove_file(path).unwrap();
    }
}
