//! Execution of parsed virtio-block requests against a disk backend, and the one mapping from
//! an outcome to the status byte the guest reads.
//!
//! Data moves between guest memory and the disk through a bounce buffer of at most
//! [`BOUNCE_LEN`] bytes, so a request of any size costs bounded host memory and every guest
//! access goes through vm-memory's checked `Bytes` calls.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::disk::DiskBackend;
use super::request::{Request, RequestError, RequestType};
use super::stats::BlockStats;

/// What the device promises about writes the guest has not flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// Guest flushes are acknowledged without reaching the disk: fast, and a host crash loses
    /// data. For throw-away disks.
    Unsafe,
    /// Guest flushes make writes durable (fdatasync).
    Writeback,
}

/// The sector size of the virtio-block protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the drive id GET_ID returns.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The largest piece of data copied at once.
const BOUNCE_LEN: u32 = 64 * 1024;

const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The chain is not a well-formed request.
    #[error("Malformed request: {0}")]
    Malformed(#[from] RequestError),
    /// The request type is not implemented.
    #[error("Request type {0} is not supported.")]
    Unsupported(u32),
    /// A write to a read-only disk.
    #[error("The disk is read-only.")]
    ReadOnly,
    /// The data is not a whole number of sectors.
    #[error("The data length {0} is not a multiple of {SECTOR_SIZE} bytes.")]
    Unaligned(u64),
    /// The request reaches past the end of the disk.
    #[error("{len} bytes at sector {sector} reach past the end of the {disk_len}-byte disk.")]
    OutOfRange {
        sector: u64,
        len: u64,
        disk_len: u64,
    },
    /// The backend failed.
    #[error("Failed to {op} the disk at byte {offset}: {source}")]
    Disk {
        op: &'static str,
        offset: u64,
        source: io::Error,
    },
    /// A guest buffer could not be accessed.
    #[error("Failed to access guest memory: {0}")]
    GuestMemory(#[from] GuestMemoryError),
}

/// The status byte for the outcome of a request: the only place errors become statuses.
pub fn status_byte<T>(result: &Result<T, ExecuteError>) -> u8 {
    match result {
        Ok(_) => STATUS_OK,
        Err(ExecuteError::Unsupported(_)) => STATUS_UNSUPP,
        // Listed one by one so that a new error gets a deliberate status.
        Err(
            ExecuteError::Malformed(_)
            | ExecuteError::ReadOnly
            | ExecuteError::Unaligned(_)
            | ExecuteError::OutOfRange { .. }
            | ExecuteError::Disk { .. }
            | ExecuteError::GuestMemory(_),
        ) => STATUS_IOERR,
    }
}

/// Writes the status of `result` at `status_addr` and returns the length to put in the used
/// ring: the data bytes the device wrote into the chain plus the status byte. A failed request
/// reports no data bytes; the spec allows reporting fewer bytes than were written, never more.
pub fn complete(
    mem: &GuestMemoryMmap,
    status_addr: GuestAddress,
    result: &Result<u32, ExecuteError>,
) -> Result<u32, GuestMemoryError> {
    mem.write_obj(status_byte(result), status_addr)?;
    let data_written = result.as_ref().map_or(0, |written| *written);
    Ok(data_written.saturating_add(1))
}

/// Runs requests against one disk.
pub struct Executor {
    disk: Box<dyn DiskBackend>,
    stats: Arc<BlockStats>,
    read_only: bool,
    cache: CacheType,
    id: [u8; ID_LEN],
    bounce: Vec<u8>,
}

/// Which way data moves.
#[derive(Clone, Copy)]
enum Direction {
    DiskToGuest,
    GuestToDisk,
}

impl Executor {
    /// An executor for `disk`; `id` is truncated or zero-padded to [`ID_LEN`] bytes.
    pub fn new(disk: Box<dyn DiskBackend>, read_only: bool, cache: CacheType, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_LEN];
        for (dst, src) in id_bytes.iter_mut().zip(id.as_bytes()) {
            *dst = *src;
        }
        Self {
            disk,
            stats: Arc::default(),
            read_only,
            cache,
            id: id_bytes,
            bounce: Vec::new(),
        }
    }

    /// Runs `req`; returns how many bytes it wrote into the chain's data buffers.
    pub fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> Result<u32, ExecuteError> {
        let start = Instant::now();
        let result = match req.kind {
            RequestType::In => self.transfer(mem, req, Direction::DiskToGuest),
            RequestType::Out if self.read_only => Err(ExecuteError::ReadOnly),
            RequestType::Out => self.transfer(mem, req, Direction::GuestToDisk).map(|_| 0),
            RequestType::Flush => self.flush(),
            RequestType::GetId => self.get_id(mem, req),
            RequestType::Unsupported(kind) => Err(ExecuteError::Unsupported(kind)),
        };
        match (&result, req.kind) {
            (Err(_), _) => self.stats.failure(),
            (Ok(_), RequestType::In) => self.stats.read(req.data_len(), start.elapsed()),
            (Ok(_), RequestType::Out) => self.stats.write(req.data_len(), start.elapsed()),
            (Ok(_), RequestType::Flush) => self.stats.flush(),
            (Ok(_), _) => {}
        }
        result
    }

    /// The counters of the requests this executor ran.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The same counters, for the device to count its own events in.
    pub(crate) fn counters(&self) -> &BlockStats {
        &self.stats
    }

    /// Serves `disk` from now on, in place of the current one.
    pub fn set_disk(&mut self, disk: Box<dyn DiskBackend>) {
        self.disk = disk;
    }

    /// The disk it serves.
    pub fn disk_mut(&mut self) -> &mut dyn DiskBackend {
        self.disk.as_mut()
    }

    fn flush(&mut self) -> Result<u32, ExecuteError> {
        match self.cache {
            // The user traded durability for speed: the host page cache decides.
            CacheType::Unsafe => Ok(0),
            CacheType::Writeback => {
                self.disk
                    .flush()
                    .map(|()| 0)
                    .map_err(|source| ExecuteError::Disk {
                        op: "flush",
                        offset: 0,
                        source,
                    })
            }
        }
    }

    fn get_id(&mut self, mem: &GuestMemoryMmap, req: &Request) -> Result<u32, ExecuteError> {
        let mut id: &[u8] = &self.id;
        let mut written = 0u32;
        for &(addr, len) in &req.data {
            let n = usize::try_from(len).unwrap_or(usize::MAX).min(id.len());
            let Some((piece, rest)) = id.split_at_checked(n) else {
                break;
            };
            mem.write_slice(piece, addr)?;
            // `n` is at most ID_LEN.
            written = written.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            id = rest;
        }
        Ok(written)
    }

    /// The disk offset where `req` starts, once it is known to lie within the disk.
    fn checked_offset(&self, req: &Request) -> Result<u64, ExecuteError> {
        let len = req.data_len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(ExecuteError::Unaligned(len));
        }
        let disk_len = self.disk.len();
        let start = req.sector.checked_mul(SECTOR_SIZE);
        match start.and_then(|start| Some((start, start.checked_add(len)?))) {
            Some((start, end)) if end <= disk_len => Ok(start),
            _ => Err(ExecuteError::OutOfRange {
                sector: req.sector,
                len,
                disk_len,
            }),
        }
    }

    /// Moves the data of `req` between its guest buffers and the disk; returns how many bytes
    /// it wrote into guest memory. The disk sees whole pieces of up to [`BOUNCE_LEN`] bytes
    /// however the guest splits its buffers, so a backend judges a write by all it changes in
    /// a sector (a probed raw image its first sector) and never sees part of one.
    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &Request,
        direction: Direction,
    ) -> Result<u32, ExecuteError> {
        let mut offset = self.checked_offset(req)?;
        let mut left = req.data_len();
        let mut cursor = Cursor::default();
        let mut to_guest = 0u32;
        while left > 0 {
            // At most BOUNCE_LEN, so the casts are exact.
            let n = left.min(u64::from(BOUNCE_LEN)) as usize;
            self.bounce.resize(n, 0);
            let bounce = &mut self.bounce;
            match direction {
                Direction::DiskToGuest => {
                    self.disk
                        .read_at(bounce, offset)
                        .map_err(|source| ExecuteError::Disk {
                            op: "read",
                            offset,
                            source,
                        })?;
                    cursor.walk(&req.data, n, |guest, range| {
                        let piece = bounce.get(range).unwrap_or_default();
                        mem.write_slice(piece, guest)
                    })?;
                    to_guest = to_guest.saturating_add(n as u32);
                }
                Direction::GuestToDisk => {
                    cursor.walk(&req.data, n, |guest, range| {
                        let piece = bounce.get_mut(range).unwrap_or_default();
                        mem.read_slice(piece, guest)
                    })?;
                    self.disk
                        .write_at(bounce, offset)
                        .map_err(|source| ExecuteError::Disk {
                            op: "write",
                            offset,
                            source,
                        })?;
                }
            }
            left -= n as u64;
            offset = offset.saturating_add(n as u64);
        }
        Ok(to_guest)
    }
}

/// Where the next byte of a request's data lies: which buffer, and how far into it.
#[derive(Default)]
struct Cursor {
    buffer: usize,
    within: u32,
}

impl Cursor {
    /// Calls `copy` with the guest address of each piece of the next `len` bytes of `data` and
    /// the range those bytes take in a bounce buffer of `len` bytes, then moves past them.
    fn walk(
        &mut self,
        data: &[(GuestAddress, u32)],
        len: usize,
        mut copy: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GuestMemoryError>,
    ) -> Result<(), GuestMemoryError> {
        let mut at = 0;
        while at < len {
            // The lengths of `data` add up to the request length, so a buffer is always left.
            let &(addr, buf_len) = data
                .get(self.buffer)
                .ok_or(GuestMemoryError::InvalidBackendAddress)?;
            let rest = buf_len.saturating_sub(self.within) as usize;
            if rest == 0 {
                self.buffer += 1;
                self.within = 0;
                continue;
            }
            let n = rest.min(len - at);
            // Parsing checked the buffer lies in guest memory, so this cannot overflow.
            let guest = addr
                .0
                .checked_add(u64::from(self.within))
                .map(GuestAddress)
                .ok_or(GuestMemoryError::InvalidGuestAddress(addr))?;
            copy(guest, at..at + n)?;
            at += n;
            // `n` is at most `rest`, a u32.
            self.within += n as u32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::MemDisk;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap()
    }

    fn request(kind: RequestType, sector: u64, data: &[(u64, u32)]) -> Request {
        Request {
            kind,
            sector,
            data: data.iter().map(|&(a, l)| (GuestAddress(a), l)).collect(),
            status_addr: GuestAddress(0x100),
        }
    }

    fn executor(disk: &MemDisk, read_only: bool, cache: CacheType) -> Executor {
        Executor::new(Box::new(disk.clone()), read_only, cache, "drive0")
    }

    #[test]
    fn every_error_maps_to_a_status() {
        let ok: Result<u32, ExecuteError> = Ok(3);
        assert_eq!(status_byte(&ok), STATUS_OK);
        let unsupp = Err::<u32, _>(ExecuteError::Unsupported(9));
        assert_eq!(status_byte(&unsupp), STATUS_UNSUPP);
        for error in [
            ExecuteError::Malformed(RequestError::Empty),
            ExecuteError::ReadOnly,
            ExecuteError::Unaligned(3),
            ExecuteError::OutOfRange {
                sector: 0,
                len: 0,
                disk_len: 0,
            },
            ExecuteError::Disk {
                op: "read",
                offset: 0,
                source: io::Error::other("boom"),
            },
            ExecuteError::GuestMemory(GuestMemoryError::InvalidGuestAddress(GuestAddress(0))),
        ] {
            assert_eq!(status_byte(&Err::<u32, _>(error)), STATUS_IOERR);
        }
    }

    #[test]
    fn completion_writes_the_status_and_counts_it() {
        let mem = memory();
        let len = complete(&mem, GuestAddress(0x100), &Ok(512)).unwrap();
        assert_eq!(len, 513);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x100)).unwrap(), STATUS_OK);
        let failed = Err(ExecuteError::ReadOnly);
        assert_eq!(complete(&mem, GuestAddress(0x100), &failed).unwrap(), 1);
        let status: u8 = mem.read_obj(GuestAddress(0x100)).unwrap();
        assert_eq!(status, STATUS_IOERR);
        assert!(complete(&mem, GuestAddress(u64::MAX), &failed).is_err());
    }

    #[test]
    fn large_requests_cross_bounce_buffer_pieces() {
        let mem = memory();
        let contents: Vec<u8> = (0..0x3_0000u32).map(|i| (i / 512) as u8).collect();
        let disk = MemDisk::new(contents.clone());
        let mut exec = executor(&disk, false, CacheType::Writeback);
        // 0x2_0000 bytes in two buffers, both larger than the bounce buffer.
        let req = request(
            RequestType::In,
            2,
            &[(0x1000, 0x1_8000), (0x2_0000, 0x8000)],
        );
        assert_eq!(exec.execute(&mem, &req).unwrap(), 0x2_0000);
        let mut guest = vec![0u8; 0x1_8000];
        mem.read_slice(&mut guest, GuestAddress(0x1000)).unwrap();
        assert_eq!(guest, contents[1024..1024 + 0x1_8000]);

        let req = request(RequestType::Out, 0, &[(0x1000, 0x1_8000)]);
        assert_eq!(exec.execute(&mem, &req).unwrap(), 0);
        assert_eq!(disk.contents()[..0x1_8000], guest[..]);
    }

    #[test]
    fn buffers_of_any_size_are_gathered_and_scattered_in_order() {
        let mem = memory();
        let contents: Vec<u8> = (0..0x3_0000u32).map(|i| (i % 251) as u8).collect();
        let disk = MemDisk::new(contents.clone());
        let mut exec = executor(&disk, false, CacheType::Writeback);
        // 3 + 0 + 509 + 0x1_0000 + 512 bytes: pieces of BOUNCE_LEN cut across buffers.
        let bufs = [
            (0x1000, 3),
            (0x1100, 0),
            (0x1200, 509),
            (0x2_0000, 0x1_0000),
            (0x1800, 512),
        ];
        let req = request(RequestType::In, 1, &bufs);
        assert_eq!(exec.execute(&mem, &req).unwrap(), 0x1_0400);
        let mut guest = Vec::new();
        for &(addr, len) in &bufs {
            let mut piece = vec![0u8; len as usize];
            mem.read_slice(&mut piece, GuestAddress(addr)).unwrap();
            guest.extend(piece);
        }
        assert_eq!(guest, contents[512..512 + 0x1_0400]);
        // Written back one sector further, the same bytes land in order.
        let req = request(RequestType::Out, 2, &bufs);
        assert_eq!(exec.execute(&mem, &req).unwrap(), 0);
        assert_eq!(disk.contents()[1024..1024 + 0x1_0400], guest[..]);
    }

    #[test]
    fn ranges_are_checked_against_the_disk() {
        let mem = memory();
        let disk = MemDisk::new(vec![0u8; 4096]);
        let mut exec = executor(&disk, false, CacheType::Writeback);
        let at = |sector, len| request(RequestType::In, sector, &[(0x1000, len)]);
        assert!(exec.execute(&mem, &at(7, 512)).is_ok());
        for (sector, len) in [(8, 512), (7, 1024), (u64::MAX, 512), (u64::MAX / 512, 512)] {
            let result = exec.execute(&mem, &at(sector, len));
            assert!(matches!(result, Err(ExecuteError::OutOfRange { .. })));
        }
        let result = exec.execute(&mem, &at(0, 511));
        assert!(matches!(result, Err(ExecuteError::Unaligned(511))));
    }

    #[test]
    fn backend_failures_are_errors() {
        let mem = memory();
        let disk = MemDisk::new(vec![0u8; 4096]);
        disk.set_failing(true);
        let mut exec = executor(&disk, false, CacheType::Writeback);
        for kind in [RequestType::In, RequestType::Out, RequestType::Flush] {
            let result = exec.execute(&mem, &request(kind, 0, &[(0x1000, 512)]));
            assert!(matches!(result, Err(ExecuteError::Disk { .. })), "{kind:?}");
        }
    }

    #[test]
    fn the_id_is_truncated_to_the_buffer_and_to_twenty_bytes() {
        let mem = memory();
        let disk = MemDisk::new(vec![0u8; 512]);
        let mut exec = Executor::new(
            Box::new(disk),
            true,
            CacheType::Unsafe,
            "a-drive-id-longer-than-twenty-bytes",
        );
        let req = request(RequestType::GetId, 0, &[(0x1000, 8), (0x2000, 100)]);
        assert_eq!(exec.execute(&mem, &req).unwrap(), 20);
        let mut first = [0u8; 8];
        mem.read_slice(&mut first, GuestAddress(0x1000)).unwrap();
        let mut second = [0u8; 13];
        mem.read_slice(&mut second, GuestAddress(0x2000)).unwrap();
        assert_eq!(&first, b"a-drive-");
        assert_eq!(&second, b"id-longer-th\0");
    }
}
