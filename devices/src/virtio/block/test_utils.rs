//! Test doubles for virtio-block, shared by the unit tests and the fuzz targets in `fuzz/`:
//! an in-memory disk, the fuzz body that runs a [`Block`] on a queue made of untrusted bytes,
//! the one that opens untrusted bytes as a qcow2 image, and the one that runs operation
//! sequences on qcow2 images and chains against a model (`qcow_ops.rs`). Built only for tests
//! or with the `test-utils` feature.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Block, BlockConfig, CacheType, DiskBackend, QcowFile};

mod qcow_ops;
use crate::virtio::{Interrupt, VirtioDevice};
pub use qcow_ops::{create_qcow2, fuzz_qcow_ops};

/// A disk held in memory. Clones share the disk, so a test keeps one to inspect what the device
/// did with the other.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<MemDiskState>>,
}

#[derive(Debug, Default)]
struct MemDiskState {
    data: Vec<u8>,
    flushes: u32,
    failing: bool,
}

impl MemDisk {
    /// A disk holding `contents`.
    pub fn new(contents: Vec<u8>) -> Self {
        let state = MemDiskState {
            data: contents,
            ..Default::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemDiskState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.state().data.clone()
    }

    /// How many times `flush` was called.
    pub fn flushes(&self) -> u32 {
        self.state().flushes
    }

    /// Makes every following operation fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    /// The byte range `[offset, offset + len)` of the disk, if the disk works and holds it.
    fn range(state: &MemDiskState, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        if state.failing {
            return Err(io::Error::other("the test disk is set to fail"));
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        start
            .checked_add(len)
            .filter(|end| *end <= state.data.len())
            .map(|end| start..end)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

impl DiskBackend for MemDisk {
    fn len(&self) -> u64 {
        self.state().data.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.state();
        let range = Self::range(&state, offset, buf.len())?;
        let src = state.data.get(range).unwrap_or_default();
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.state();
        let range = Self::range(&state, offset, buf.len())?;
        if let Some(dst) = state.data.get_mut(range) {
            dst.copy_from_slice(buf);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut state = self.state();
        if state.failing {
            return Err(io::Error::other("the test disk is set to fail"));
        }
        state.flushes += 1;
        Ok(())
    }
}

/// Guest memory size of the fuzz body.
pub const FUZZ_MEM_SIZE: usize = 0x4000;
/// Where the fuzz body puts the available ring. It comes first so that short inputs reach it;
/// not at 0, which virtio-queue takes for "not set up".
pub const FUZZ_AVAIL_RING: u64 = 0x10;
/// Where the fuzz body puts the descriptor table (room for 256 entries).
pub const FUZZ_DESC_TABLE: u64 = 0x220;
/// Where the fuzz body puts the used ring, which only the device writes.
pub const FUZZ_USED_RING: u64 = 0x1400;
/// Where the rest of guest memory, free for request buffers, starts.
pub const FUZZ_DATA: u64 = 0x2000;
/// Size of the fuzz body's disk.
pub const FUZZ_DISK_LEN: usize = 16 * 512;

/// Runs a block device on a queue made of untrusted bytes; it must neither panic nor hang, and
/// must not change a read-only disk.
///
/// `input[0]` chooses the set-up: bits 0-3 the queue size (`1 << (bits % 9)`), bit 4 EVENT_IDX,
/// bit 5 a read-only disk, bit 6 the writeback cache. The remaining bytes are guest memory from
/// address 0: available ring at [`FUZZ_AVAIL_RING`], descriptor table at [`FUZZ_DESC_TABLE`],
/// used ring at [`FUZZ_USED_RING`], buffers anywhere.
pub fn fuzz_block_queue(input: &[u8]) {
    let Some((&setup, image)) = input.split_first() else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), FUZZ_MEM_SIZE)]) else {
        return;
    };
    let image = image
        .get(..image.len().min(FUZZ_MEM_SIZE))
        .unwrap_or_default();
    if mem.write_slice(image, GuestAddress(0)).is_err() {
        return;
    }
    let Some(queue) = fuzz_queue(&mem, setup) else {
        return;
    };
    let read_only = setup & 0x20 != 0;
    let config = BlockConfig {
        id: "fuzz".to_string(),
        read_only,
        cache: if setup & 0x40 != 0 {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        },
    };
    let contents: Vec<u8> = (0..FUZZ_DISK_LEN).map(|i| (i / 512) as u8).collect();
    let disk = MemDisk::new(contents.clone());
    let (Ok(mut block), Ok(evt)) = (
        Block::new(Box::new(disk.clone()), config),
        EventFd::new(EFD_NONBLOCK),
    ) else {
        return;
    };
    if block
        .activate(mem, vec![queue], Arc::new(Interrupt::new(evt)))
        .is_ok()
    {
        // Twice: the second pass must cope with whatever the first left in the rings.
        for _ in 0..2 {
            // Errors are expected: the input is garbage more often than not.
            let _ = block.process_queue();
        }
    }
    assert!(
        !read_only || disk.contents() == contents,
        "a read-only disk was written"
    );
}

/// The queue the fuzz body drives, as a transport would hand it over after checking it.
fn fuzz_queue(mem: &GuestMemoryMmap, setup: u8) -> Option<Queue> {
    let mut queue = Queue::new(super::device::QUEUE_SIZE).ok()?;
    queue.try_set_size(1 << ((setup & 0xf) % 9)).ok()?;
    queue
        .try_set_desc_table_address(GuestAddress(FUZZ_DESC_TABLE))
        .ok()?;
    queue
        .try_set_avail_ring_address(GuestAddress(FUZZ_AVAIL_RING))
        .ok()?;
    queue
        .try_set_used_ring_address(GuestAddress(FUZZ_USED_RING))
        .ok()?;
    queue.set_event_idx(setup & 0x10 != 0);
    queue.set_ready(true);
    queue.is_valid(mem).then_some(queue)
}

/// The qcow_header fuzz body: opens `input` as a qcow2 image, read-only and then writable, and
/// reads and writes a few places. It must neither panic nor hang, whatever the bytes; errors
/// are expected.
pub fn fuzz_qcow_image(input: &[u8]) {
    // One file per thread: the stable tests run this body on several threads.
    let path = std::env::temp_dir().join(format!(
        "kiln-qcow-fuzz-{}-{:?}.qcow2",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&path, input).is_err() {
        return;
    }
    if let Ok(mut disk) = QcowFile::open(&path, true) {
        for offset in probe_offsets(disk.len()) {
            let len = (disk.len() - offset).min(8192) as usize;
            let _ = disk.read_at(&mut vec![0u8; len], offset);
        }
    }
    if let Ok(mut disk) = QcowFile::open(&path, false) {
        for (i, offset) in probe_offsets(disk.len()).into_iter().enumerate() {
            let len = (disk.len() - offset).min(3000) as usize;
            let data = vec![i as u8 + 1; len];
            if disk.write_at(&data, offset).is_ok() {
                let _ = disk.read_at(&mut vec![0u8; len], offset);
            }
        }
        let _ = disk.flush();
    }
    let _ = std::fs::remove_file(&path);
}

/// Offsets to read and write: the start, an unaligned middle and the last bytes of a disk, as
/// far as the disk has them.
fn probe_offsets(len: u64) -> Vec<u64> {
    [0, len / 3 + 7, len.saturating_sub(100)]
        .into_iter()
        .filter(|offset| *offset < len)
        .collect()
}

/// Runs `attempt` again while it fails for an image lock (`locked`), for up to 5 s: a child
/// that another test thread is spawning holds copies of this process's fds, and with them
/// their OFD locks, until it execs. Kiln itself spawns nothing, so only tests need this.
pub(crate) fn retry_locked<T, E>(
    mut attempt: impl FnMut() -> Result<T, E>,
    locked: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    loop {
        match attempt() {
            Err(e) if locked(&e) && start.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    /// xorshift64: deterministic, so a failure reproduces from its iteration number.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn one_in(&mut self, n: u64) -> bool {
            self.below(n) == 0
        }

        /// An address in the data area, now and then anywhere at all.
        fn addr(&mut self) -> u64 {
            if self.one_in(20) {
                self.next()
            } else {
                FUZZ_DATA + self.below((FUZZ_MEM_SIZE as u64 - FUZZ_DATA) + 64)
            }
        }
    }

    fn put(image: &mut [u8], at: u64, bytes: &[u8]) {
        let at = at as usize;
        if let Some(dst) = image.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }

    /// An input that looks like a driver's queue most of the time, so that requests get past
    /// the parser into execution, with the mistakes a hostile driver would make mixed in.
    fn plausible_input(rng: &mut Rng) -> Vec<u8> {
        let size_bits = rng.below(9) as u8;
        let size = 1u64 << size_bits;
        let setup = size_bits | (rng.below(8) as u8) << 4;
        let mut image = vec![0u8; FUZZ_MEM_SIZE];
        for byte in &mut image[FUZZ_DATA as usize..] {
            *byte = rng.next() as u8;
        }
        let (mut index, mut heads) = (0u64, Vec::new());
        while index < size && heads.len() < 8 {
            let len = (1 + rng.below(5)).min(size - index);
            heads.push(index as u16);
            for i in 0..len {
                let last = i + 1 == len;
                let kind = [0u32, 1, 4, 8, rng.next() as u32][rng.below(5) as usize];
                let addr = rng.addr();
                let (len_bytes, mut flags) = match (i, last) {
                    (0, false) => {
                        let sector =
                            [rng.below(20), 15, u64::MAX, rng.next()][rng.below(4) as usize];
                        put(&mut image, addr, &kind.to_le_bytes());
                        put(&mut image, addr + 8, &sector.to_le_bytes());
                        (16, 0)
                    }
                    (_, true) => (1, VRING_DESC_F_WRITE),
                    _ => (
                        512 * rng.below(4) as u32,
                        VRING_DESC_F_WRITE * rng.below(2) as u32,
                    ),
                };
                let len_bytes = if rng.one_in(20) {
                    rng.next() as u32
                } else {
                    len_bytes
                };
                if rng.one_in(20) {
                    flags ^= VRING_DESC_F_WRITE;
                }
                let mut next = index + i + 1;
                if !last || rng.one_in(30) {
                    flags |= VRING_DESC_F_NEXT;
                    if rng.one_in(20) {
                        next = rng.below(size + 2);
                    }
                }
                let at = FUZZ_DESC_TABLE + (index + i) * 16;
                put(&mut image, at, &addr.to_le_bytes());
                put(&mut image, at + 8, &len_bytes.to_le_bytes());
                put(&mut image, at + 12, &(flags as u16).to_le_bytes());
                put(&mut image, at + 14, &(next as u16).to_le_bytes());
            }
            index += len;
        }
        for (i, head) in heads.iter().enumerate() {
            let head = if rng.one_in(30) {
                rng.next() as u16
            } else {
                *head
            };
            put(
                &mut image,
                FUZZ_AVAIL_RING + 4 + 2 * i as u64,
                &head.to_le_bytes(),
            );
        }
        let avail_idx = if rng.one_in(20) {
            rng.next() as u16
        } else {
            heads.len() as u16
        };
        put(&mut image, FUZZ_AVAIL_RING + 2, &avail_idx.to_le_bytes());
        let used_event = rng.below(10) as u16;
        put(
            &mut image,
            FUZZ_AVAIL_RING + 4 + 2 * size,
            &used_event.to_le_bytes(),
        );
        let mut input = vec![setup];
        input.extend_from_slice(&image);
        input
    }

    #[test]
    fn the_fuzz_body_survives_plausible_queues() {
        let mut rng = Rng(0x6b69_6c6e_626c_6b31);
        for _ in 0..3000 {
            fuzz_block_queue(&plausible_input(&mut rng));
        }
    }

    #[test]
    fn the_fuzz_body_survives_random_bytes() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..1000 {
            let len = rng.below(FUZZ_MEM_SIZE as u64 + 2) as usize;
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            fuzz_block_queue(&input);
        }
    }

    /// Seeds the corpus of `cargo fuzz run virtio_block` with generated queues, which reach
    /// request execution far sooner than the fuzzer does from nothing.
    #[test]
    #[ignore = "writes files; run on demand, see fuzz/README.md"]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtio_block");
        std::fs::create_dir_all(&dir).unwrap();
        let mut rng = Rng(0x5eed);
        for i in 0..64 {
            let seed = plausible_input(&mut rng);
            std::fs::write(dir.join(format!("generated-{i:02}")), seed).unwrap();
        }
    }

    #[test]
    fn the_memory_disk_checks_its_bounds() {
        let mut disk = MemDisk::new(vec![1u8; 512]);
        let mut buf = [0u8; 16];
        assert!(disk.read_at(&mut buf, 500).is_err());
        assert!(disk.write_at(&buf, u64::MAX).is_err());
        disk.write_at(&buf, 496).unwrap();
        assert_eq!(
            disk.contents()[495..],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
