//! Writing new qcow2 images: the overlays a disk-consistent snapshot puts over a frozen image,
//! laid out as `qemu-img create` lays out a fresh version 3 image: the header (with the backing
//! format extension and the backing file name), the refcount table, one refcount block with
//! 16-bit entries, and the L1 table, all clusters counted once and no L2 table yet.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use super::header::{EXT_BACKING_FORMAT, MAGIC, MAX_BACKING_NAME, MAX_L1_BYTES};
use crate::virtio::block::ImageFormat;

/// The cluster size of the overlays Kiln writes: qemu-img's default, 64 KiB.
const OVERLAY_CLUSTER_BITS: u32 = 16;
/// Where the backing file name starts in the header cluster, past the extensions.
const BACKING_NAME_OFFSET: usize = 256;
/// The v3 header's length without the optional fields.
const HEADER_LENGTH: u32 = 104;
/// 16-bit refcounts, as qemu-img writes them.
const REFCOUNT_ORDER: u32 = 4;

/// Why an overlay could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The file exists already, or could not be created or written.
    #[error("Failed to create the qcow2 overlay '{path}': {source}")]
    Write { path: PathBuf, source: io::Error },
    /// The backing file's name, as the overlay records it, is too long for the header.
    #[error("The backing file name '{0}' is longer than qcow2's {MAX_BACKING_NAME} bytes.")]
    BackingName(PathBuf),
    /// The working directory, which a relative backing path is relative to, is unknown.
    #[error("Failed to get the working directory: {0}")]
    WorkingDir(io::Error),
    /// A disk too large for one refcount block of the layout: more than 2 TiB of L1 table.
    #[error("A {0}-byte disk is too large for a new overlay.")]
    Size(u64),
}

/// Creates a new qcow2 image at `path`, which must not exist, of the size `size`, whose
/// backing file is the `backing_format` image at `backing`; the file is synced before this
/// returns.
pub fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: ImageFormat,
    size: u64,
) -> Result<(), CreateError> {
    let name = backing_name(path, backing)?;
    let name_bytes = name.as_os_str().as_bytes();
    let write_error = |source| CreateError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Checked before the file exists, so a refusal leaves nothing behind.
    let format = match backing_format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    };
    let image = layout(OVERLAY_CLUSTER_BITS, size, Some((name_bytes, format)))
        .ok_or(CreateError::Size(size))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(write_error)?;
    write_layout(&file, &image).map_err(write_error)
}

/// Writes `image` at the start of `file` and syncs it.
fn write_layout(file: &File, image: &[u8]) -> io::Result<()> {
    file.write_all_at(image, 0)?;
    file.sync_all()
}

/// The name an overlay at `overlay` records for `backing`, which qcow2 readers resolve
/// relative to the overlay's directory: `backing` as it is when it is absolute or the overlay
/// is in the working directory, else `backing` made absolute.
fn backing_name(overlay: &Path, backing: &Path) -> Result<PathBuf, CreateError> {
    let in_working_dir = overlay
        .parent()
        .is_none_or(|dir| dir.components().all(|c| c == Component::CurDir));
    let name = if backing.is_absolute() || in_working_dir {
        backing.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(CreateError::WorkingDir)?
            .join(backing)
    };
    if name.as_os_str().len() > MAX_BACKING_NAME as usize {
        return Err(CreateError::BackingName(name));
    }
    Ok(name)
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = buf.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

/// The bytes of a fresh image of `size` bytes in clusters of `1 << cluster_bits` bytes, with
/// `backing` as its backing file's name and format; `None` if the backing name does not fit in
/// the header cluster, the L1 table would pass QEMU's 32 MiB, or the image's clusters do not
/// fit in its one refcount block.
pub(crate) fn layout(
    cluster_bits: u32,
    size: u64,
    backing: Option<(&[u8], &str)>,
) -> Option<Vec<u8>> {
    let cluster = 1usize << cluster_bits;
    let l1_entries = size.div_ceil(1 << (2 * cluster_bits - 3));
    if l1_entries * 8 > MAX_L1_BYTES {
        return None;
    }
    let l1_clusters = usize::try_from((l1_entries * 8).div_ceil(cluster as u64).max(1)).ok()?;
    // Header, refcount table, refcount block, L1 table: one block counts them all.
    let clusters = 3 + l1_clusters;
    if clusters > cluster * 8 / (1 << REFCOUNT_ORDER) {
        return None;
    }
    let mut image = vec![0u8; clusters * cluster];
    let header = image.get_mut(..cluster)?;
    put(header, 0, &MAGIC);
    put(header, 4, &3u32.to_be_bytes());
    put(header, 20, &cluster_bits.to_be_bytes());
    put(header, 24, &size.to_be_bytes());
    put(header, 36, &u32::try_from(l1_entries).ok()?.to_be_bytes());
    put(header, 40, &(3 * cluster as u64).to_be_bytes());
    put(header, 48, &(cluster as u64).to_be_bytes());
    put(header, 56, &1u32.to_be_bytes());
    put(header, 96, &REFCOUNT_ORDER.to_be_bytes());
    put(header, 100, &HEADER_LENGTH.to_be_bytes());
    if let Some((name, format)) = backing {
        // The extensions (backing format, then the end marker) must end before the name.
        let extensions_end = HEADER_LENGTH as usize + 8 + format.len().div_ceil(8) * 8 + 8;
        if extensions_end > BACKING_NAME_OFFSET || BACKING_NAME_OFFSET + name.len() > cluster {
            return None;
        }
        put(header, 104, &EXT_BACKING_FORMAT.to_be_bytes());
        put(
            header,
            108,
            &u32::try_from(format.len()).ok()?.to_be_bytes(),
        );
        put(header, 112, format.as_bytes());
        put(header, 8, &(BACKING_NAME_OFFSET as u64).to_be_bytes());
        put(header, 16, &u32::try_from(name.len()).ok()?.to_be_bytes());
        put(header, BACKING_NAME_OFFSET, name);
    }
    put(&mut image, cluster, &(2 * cluster as u64).to_be_bytes());
    for index in 0..clusters {
        put(&mut image, 2 * cluster + 2 * index, &1u16.to_be_bytes());
    }
    Some(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::retry_locked;
    use crate::virtio::block::{DiskBackend, DiskError, QcowFile};

    fn scratch(name: &str) -> PathBuf {
        crate::test_dir::scratch(&format!("create-{name}"))
    }

    fn open(path: &Path, read_only: bool) -> QcowFile {
        retry_locked(
            || QcowFile::open(path, read_only),
            |e| matches!(e, DiskError::Lock { .. }),
        )
        .unwrap()
    }

    #[test]
    fn an_overlay_reads_its_backing_image_and_keeps_writes_to_itself() {
        let dir = scratch("overlay");
        let base = dir.join("base.qcow2");
        let size = 4 << 20;
        std::fs::write(&base, layout(16, size, None).unwrap()).unwrap();
        let mut disk = open(&base, false);
        disk.write_at(&[7u8; 4096], 8192).unwrap();
        drop(disk);
        let base_bytes = std::fs::read(&base).unwrap();

        let top = dir.join("top.qcow2");
        create_overlay(&top, &base, ImageFormat::Qcow2, size).unwrap();
        let mut overlay = open(&top, false);
        assert_eq!(overlay.len(), size);
        let mut buf = [0u8; 4096];
        overlay.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        overlay.write_at(&[9u8; 4096], 8192).unwrap();
        overlay.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [9u8; 4096]);
        drop(overlay);
        assert_eq!(std::fs::read(&base).unwrap(), base_bytes);

        // Never over an existing file.
        let err = create_overlay(&top, &base, ImageFormat::Qcow2, size).unwrap_err();
        assert!(matches!(err, CreateError::Write { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn relative_names_are_relative_to_the_overlay() {
        let name = |overlay: &str, backing: &str| {
            backing_name(Path::new(overlay), Path::new(backing)).map(|p| p.display().to_string())
        };
        assert_eq!(name("o.qcow2", "b.qcow2").unwrap(), "b.qcow2");
        assert_eq!(name("./o.qcow2", "b.qcow2").unwrap(), "b.qcow2");
        assert_eq!(name("a/o.qcow2", "/srv/b.qcow2").unwrap(), "/srv/b.qcow2");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            name("/srv/o.qcow2", "c/b.qcow2").unwrap(),
            cwd.join("c/b.qcow2").display().to_string()
        );
        let long = format!("/{}", "x".repeat(MAX_BACKING_NAME as usize));
        assert!(matches!(
            name("o.qcow2", &long),
            Err(CreateError::BackingName(_))
        ));
    }

    #[test]
    fn qemu_img_finds_the_overlay_clean() {
        let dir = scratch("qemu-img");
        let base = dir.join("base.qcow2");
        std::fs::write(&base, layout(16, 1 << 30, None).unwrap()).unwrap();
        let top = dir.join("top.qcow2");
        create_overlay(&top, &base, ImageFormat::Qcow2, 1 << 30).unwrap();
        // qemu-img is the oracle (resources/test.sh installs it).
        let out = std::process::Command::new("qemu-img")
            .arg("check")
            .arg(&top)
            .output()
            .expect("qemu-img is required");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-U"])
            .arg(&top)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        let lines: Vec<&str> = info.lines().collect();
        assert!(
            lines.contains(&"virtual size: 1 GiB (1073741824 bytes)"),
            "{info}"
        );
        let backing = format!("backing file: {}", base.display());
        assert!(lines.contains(&backing.as_str()), "{info}");
        assert!(lines.contains(&"backing file format: qcow2"), "{info}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
