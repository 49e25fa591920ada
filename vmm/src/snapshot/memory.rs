//! Guest memory and the memory file: a Full snapshot writes every region one after the other;
//! a Diff snapshot writes only the dirty pages, each at its place in that layout, into the
//! file as it is (the previous snapshot's memory file, which it brings up to date, or a new
//! sparse file that holds just those pages). A restore maps the file's regions `MAP_PRIVATE`,
//! so nothing is read until the guest touches a page, pages it only reads stay the page
//! cache's (shared by every clone of one snapshot), and what it writes is its own copy, never
//! the file.

use std::fs::{File, OpenOptions};
use std::path::Path;

use devices::{GuestMemoryMmap, GuestRegionMmap};
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::state::MemoryRegionState;

/// Why guest memory could not be written to or mapped from its file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// The file could not be opened, written or read.
    #[error("Cannot {what} the memory file {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The file is shorter than the regions it should hold.
    #[error("The memory file {path} has {len} bytes; the snapshot's memory is {wanted}.")]
    TooShort { path: String, len: u64, wanted: u64 },
    /// The snapshot's regions are not the layout its configuration gives.
    #[error("The snapshot's memory regions are not those of its {mem_size_mib} MiB machine.")]
    Layout { mem_size_mib: usize },
    /// A region could not be mapped.
    #[error("Cannot map the memory file: {0}")]
    Map(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MemoryFileError {
    let path = path.display().to_string();
    move |source| MemoryFileError::Io { what, path, source }
}

/// The regions of `mem`, in order.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<MemoryRegionState> {
    mem.iter()
        .map(|r| MemoryRegionState {
            guest_addr: r.start_addr().0,
            size: r.len(),
        })
        .collect()
}

/// Writes all of `mem` to `path`, region after region, and syncs it. A file of the memory's
/// size is written over in place, never truncated: it may be the very file this VM's memory
/// is mapped from (restored with the File backend), whose pages the guest has not touched yet
/// would be lost (and read as SIGBUS) by a truncation.
pub fn write_full(mem: &GuestMemoryMmap, path: &Path) -> Result<(), MemoryFileError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("create", path))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    if file.metadata().map_err(io("read", path))?.len() != total {
        file.set_len(0).map_err(io("truncate", path))?;
    }
    let mut at = 0u64;
    for region in mem.iter() {
        write_run(&file, path, region, 0, region.len(), at)?;
        at += region.len();
    }
    file.sync_all().map_err(io("sync", path))
}

/// The page size dirty bitmaps count in.
const PAGE: u64 = 4096;

/// Writes the pages of `mem` that `dirty` marks (one bitmap per region, a bit per page, as
/// KVM's dirty log) to `path` at their places in the Full layout, leaving the file's other
/// bytes as they are; a shorter file is extended first (sparse). Then syncs it.
pub fn write_dirty(
    mem: &GuestMemoryMmap,
    path: &Path,
    dirty: &[Vec<u64>],
) -> Result<(), MemoryFileError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    if file.metadata().map_err(io("read", path))?.len() < total {
        file.set_len(total).map_err(io("extend", path))?;
    }
    let mut file_offset = 0u64;
    for (region, bitmap) in mem.iter().zip(dirty) {
        let pages = region.len() / PAGE;
        let mut page = 0u64;
        while page < pages {
            if !is_set(bitmap, page) {
                page += 1;
                continue;
            }
            let first = page;
            while page < pages && is_set(bitmap, page) {
                page += 1;
            }
            let start = first * PAGE;
            write_run(
                &file,
                path,
                region,
                start,
                (page - first) * PAGE,
                file_offset + start,
            )?;
        }
        file_offset += region.len();
    }
    file.sync_all().map_err(io("sync", path))
}

/// Writes `len` bytes of `region` from `start` to `file` at `at`, in as few `pwrite`s as the
/// kernel takes.
fn write_run(
    file: &File,
    path: &Path,
    region: &GuestRegionMmap,
    start: u64,
    len: u64,
    at: u64,
) -> Result<(), MemoryFileError> {
    let len =
        usize::try_from(len).map_err(|_| MemoryFileError::Map(format!("a run of {len} bytes")))?;
    let slice = region
        .get_slice(vm_memory::MemoryRegionAddress(start), len)
        .map_err(|e| MemoryFileError::Map(e.to_string()))?;
    let mut written = 0;
    while written < len {
        let rest = slice
            .subslice(written, len - written)
            .map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let n = write_volatile_at(file, &rest, at + written as u64).map_err(io("write", path))?;
        if n == 0 {
            return Err(MemoryFileError::Io {
                what: "write",
                path: path.display().to_string(),
                source: std::io::ErrorKind::WriteZero.into(),
            });
        }
        written += n;
    }
    Ok(())
}

fn is_set(bitmap: &[u64], page: u64) -> bool {
    let word = usize::try_from(page / 64).ok().and_then(|w| bitmap.get(w));
    word.is_some_and(|w| w & (1 << (page % 64)) != 0)
}

/// One `pwrite` of `slice` at `offset`.
fn write_volatile_at(
    file: &File,
    slice: &vm_memory::VolatileSlice<'_, vm_memory::bitmap::BS<'_, AtomicBitmap>>,
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: the slice is guest memory mapped for as long as `mem` lives, `len` bytes from
    // its pointer; pwrite only reads them.
    let n = unsafe {
        libc::pwrite(
            file.as_raw_fd(),
            slice.ptr_guard().as_ptr().cast(),
            slice.len(),
            offset,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// Maps `regions` from the memory file at `path`, private, as the file holds them.
pub fn map_private(
    path: &Path,
    regions: &[MemoryRegionState],
) -> Result<GuestMemoryMmap, MemoryFileError> {
    // Read access is enough: a private mapping's writes never reach the file.
    let file = devices::host_file::open_data_file(path, OpenOptions::new().read(true))
        .map_err(io("open", path))?;
    let len = file.metadata().map_err(io("read", path))?.len();
    let wanted = regions
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.size))
        .unwrap_or(u64::MAX);
    if len < wanted {
        return Err(MemoryFileError::TooShort {
            path: path.display().to_string(),
            len,
            wanted,
        });
    }
    let mut offset = 0u64;
    let mut mapped = Vec::with_capacity(regions.len());
    for region in regions {
        mapped.push(map_region(&file, offset, region)?);
        offset += region.size;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryFileError::Map(e.to_string()))
}

fn map_region(
    file: &File,
    offset: u64,
    region: &MemoryRegionState,
) -> Result<GuestRegionMmap, MemoryFileError> {
    let map_err = |e: &dyn std::fmt::Display| MemoryFileError::Map(e.to_string());
    let size = usize::try_from(region.size).map_err(|e| map_err(&e))?;
    let file = file.try_clone().map_err(|e| map_err(&e))?;
    let mapping = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
        .with_file_offset(FileOffset::new(file, offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
        .build()
        .map_err(|e| map_err(&e))?;
    GuestRegionMmap::new(mapping, GuestAddress(region.guest_addr))
        .ok_or_else(|| MemoryFileError::Map(format!("a region at {:#x}", region.guest_addr)))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn a_diff_writes_only_the_dirty_pages_over_the_file() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        let dir = std::env::temp_dir().join(format!("kiln-memdiff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        std::fs::write(&path, vec![0xaa; 0x3000]).unwrap();
        mem.write_obj(1u8, GuestAddress(0x1000)).unwrap();
        mem.write_obj(2u8, GuestAddress(0x2000)).unwrap();
        mem.write_obj(3u8, GuestAddress(0x10_1000)).unwrap();
        // Pages 1 and 2 of the first region, page 1 of the second; not page 0.
        write_dirty(&mem, &path, &[vec![0b110], vec![0b10]]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 0x6000, "extended to the Full layout");
        assert_eq!(bytes[0], 0xaa, "a clean page is the file's");
        assert_eq!((bytes[0x1000], bytes[0x2000]), (1, 2));
        assert_eq!(bytes[0x5000], 3);
        assert_eq!(bytes[0x4000], 0, "the extension is a hole");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_written_full_maps_back_private() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u16, GuestAddress(0x10_1ffe)).unwrap();
        let dir = std::env::temp_dir().join(format!("kiln-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        write_full(&mem, &path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0x6000);

        let restored = map_private(&path, &regions(&mem)).unwrap();
        assert_eq!(regions(&restored), regions(&mem));
        assert_eq!(
            restored.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            restored.read_obj::<u16>(GuestAddress(0x10_1ffe)).unwrap(),
            0x1234
        );
        // The restored guest's writes are its own.
        restored.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        let again = map_private(&path, &regions(&mem)).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        // A Full snapshot of the restored memory into the file it is mapped from: written over
        // in place, so that the pages it has not touched still read from the file.
        write_full(&restored, &path).unwrap();
        assert_eq!(
            restored.read_obj::<u16>(GuestAddress(0x10_1ffe)).unwrap(),
            0x1234
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            (bytes.len(), bytes[0x1000], bytes[0x5ffe]),
            (0x6000, 7, 0x34)
        );
        // A longer file is cut to the memory's size.
        std::fs::write(&path, vec![1u8; 0x9000]).unwrap();
        write_full(&mem, &path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0x6000);

        let more = [MemoryRegionState {
            guest_addr: 0,
            size: 0x8000,
        }];
        let err = map_private(&path, &more).unwrap_err();
        assert!(
            matches!(err, MemoryFileError::TooShort { len: 0x6000, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
