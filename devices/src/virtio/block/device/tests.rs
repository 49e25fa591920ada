//! The device driven through a mock split queue: the happy paths, notifications, activation,
//! config space and the event loop. `hostile` has one test per way a driver can get a request
//! wrong.

mod hostile;

use std::path::Path;
use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, Le32, Le64};

use super::*;
use crate::virtio::block::test_utils::MemDisk;

const MEM_SIZE: u64 = 0x10_0000;
const HEADER: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
/// The used ring, away from the mock's: `MockSplitQueue` places its used ring `len` bytes after
/// the available ring's entries instead of `2 * len` bytes, so the two overlap.
const USED_RING: u64 = 0x8000;
const QUEUE_LEN: u16 = 16;
const SECTORS: u64 = 8;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// What the status byte holds before the device answers.
const UNANSWERED: u8 = 0xff;

/// Disk bytes: each sector filled with its number.
fn contents() -> Vec<u8> {
    (0..SECTORS * 512).map(|i| (i / 512) as u8).collect()
}

fn config(read_only: bool, cache: CacheType) -> BlockConfig {
    BlockConfig {
        id: "drive0".to_string(),
        read_only,
        cache,
    }
}

/// Guest memory, a 16-entry queue in it, and a disk.
struct Guest {
    mem: GuestMemoryMmap,
    disk: MemDisk,
}

impl Guest {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        mem.write_obj(UNANSWERED, GuestAddress(STATUS)).unwrap();
        Self {
            mem,
            disk: MemDisk::new(contents()),
        }
    }

    fn queue(&self) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::new(&self.mem, QUEUE_LEN)
    }

    /// An active device on `vq`; returns it with the interrupt eventfd.
    fn block(
        &self,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        config: BlockConfig,
        event_idx: bool,
    ) -> (Block, EventFd) {
        self.block_on(vq, Box::new(self.disk.clone()), config, event_idx)
    }

    /// An active device on `vq` serving `disk`; returns it with the interrupt eventfd.
    fn block_on(
        &self,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        disk: Box<dyn DiskBackend>,
        config: BlockConfig,
        event_idx: bool,
    ) -> (Block, EventFd) {
        let mut block = Block::new(disk, config).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_event_idx(event_idx);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        block
            .activate(self.mem.clone(), vec![queue], interrupt)
            .unwrap();
        (block, irq)
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem
            .write_obj(Le32::from(kind), GuestAddress(HEADER))
            .unwrap();
        self.mem
            .write_obj(Le64::from(sector), GuestAddress(HEADER + 8))
            .unwrap();
    }

    fn load_u16(&self, addr: u64) -> u16 {
        self.mem.read_obj::<u16>(GuestAddress(addr)).unwrap()
    }

    /// The used ring entries so far: (head, len).
    fn used(&self) -> Vec<(u32, u32)> {
        let count = self.load_u16(USED_RING + 2);
        (0..u64::from(count))
            .map(|i| {
                let entry = USED_RING + 4 + 8 * i;
                let read = |addr| self.mem.read_obj::<u32>(GuestAddress(addr)).unwrap();
                (read(entry), read(entry + 4))
            })
            .collect()
    }

    /// The used ring's avail_event: the available index the device wants a kick for.
    fn avail_event(&self) -> u16 {
        self.load_u16(USED_RING + 4 + 8 * u64::from(QUEUE_LEN))
    }

    /// Sets the avail ring's used_event: the used index the driver wants an interrupt for.
    fn set_used_event(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>, value: u16) {
        let addr = vq.avail_addr().0 + 4 + 2 * u64::from(QUEUE_LEN);
        self.mem.write_obj(value, GuestAddress(addr)).unwrap();
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// header, one data buffer of `len` bytes with `data_flags`, status.
fn chain(len: u32, data_flags: u16) -> [RawDescriptor; 3] {
    [
        desc(HEADER, 16, N, 1),
        desc(DATA, len, data_flags | N, 2),
        desc(STATUS, 1, W, 0),
    ]
}

/// Submits one chain of `descs` at descriptor 0 and serves it.
fn serve_one(guest: &Guest, config: BlockConfig, descs: &[RawDescriptor]) -> Vec<(u32, u32)> {
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, config, false);
    vq.add_desc_chains(descs, 0).unwrap();
    block.process_queue().unwrap();
    guest.used()
}

/// `d` with its next index moved by `by`, for chains placed further into the table.
fn shift(d: RawDescriptor, by: u16) -> RawDescriptor {
    let d = Descriptor::from(d);
    desc(d.addr().0, d.len(), d.flags(), d.next() + by)
}

fn writeback() -> BlockConfig {
    config(false, CacheType::Writeback)
}

#[test]
fn a_read_fills_the_guest_buffers_and_raises_the_interrupt() {
    let guest = Guest::new();
    let vq = guest.queue();
    let (mut block, irq) = guest.block(&vq, writeback(), false);
    guest.header(VIRTIO_BLK_T_IN, 2);
    let descs = [
        desc(HEADER, 16, N, 1),
        desc(DATA, 512, W | N, 2),
        desc(DATA + 0x1000, 1024, W | N, 3),
        desc(STATUS, 1, W, 0),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    assert!(block.process_queue().unwrap());
    assert_eq!(guest.used(), [(0, 1537)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(guest.read(DATA, 512), contents()[1024..1536]);
    assert_eq!(guest.read(DATA + 0x1000, 1024), contents()[1536..2560]);
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn a_write_reaches_the_disk() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 7);
    guest
        .mem
        .write_slice(&[0xab; 512], GuestAddress(DATA))
        .unwrap();
    assert_eq!(serve_one(&guest, writeback(), &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), OK);
    let mut expected = contents();
    expected[7 * 512..].fill(0xab);
    assert_eq!(guest.disk.contents(), expected);
}

#[test]
fn a_flush_syncs_the_disk_with_the_writeback_cache() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_FLUSH, 0);
    let descs = [desc(HEADER, 16, N, 1), desc(STATUS, 1, W, 0)];
    assert_eq!(serve_one(&guest, writeback(), &descs), [(0, 1)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(guest.disk.flushes(), 1);
}

#[test]
fn a_flush_does_not_sync_with_the_unsafe_cache() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_FLUSH, 0);
    let descs = [desc(HEADER, 16, N, 1), desc(STATUS, 1, W, 0)];
    let unsafe_cache = config(false, CacheType::Unsafe);
    assert_eq!(serve_one(&guest, unsafe_cache, &descs), [(0, 1)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(guest.disk.flushes(), 0);
}

#[test]
fn get_id_returns_the_zero_padded_drive_id() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_GET_ID, 0);
    guest
        .mem
        .write_slice(&[0xff; 32], GuestAddress(DATA))
        .unwrap();
    assert_eq!(serve_one(&guest, writeback(), &chain(32, W)), [(0, 21)]);
    assert_eq!(guest.status(), OK);
    let mut expected = b"drive0".to_vec();
    expected.resize(20, 0);
    expected.resize(32, 0xff);
    assert_eq!(guest.read(DATA, 32), expected);
}

#[test]
fn an_unknown_type_is_unsupported() {
    let guest = Guest::new();
    guest.header(0x77, 0);
    assert_eq!(serve_one(&guest, writeback(), &chain(512, W)), [(0, 1)]);
    assert_eq!(guest.status(), UNSUPP);
}

#[test]
fn a_read_only_drive_rejects_writes_and_keeps_its_data() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    let read_only = config(true, CacheType::Writeback);
    assert_eq!(serve_one(&guest, read_only, &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(guest.disk.contents(), contents());
}

#[test]
fn a_read_only_drive_still_reads() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 1);
    let read_only = config(true, CacheType::Writeback);
    assert_eq!(serve_one(&guest, read_only, &chain(512, W)), [(0, 513)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(guest.read(DATA, 512), [1u8; 512]);
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asks() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 0);
    let vq = guest.queue();
    let (mut block, irq) = guest.block(&vq, writeback(), true);
    // used_event = 0: interrupt once the used index moves past 0.
    guest.set_used_event(&vq, 0);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    assert!(block.process_queue().unwrap());
    assert_eq!(irq.read().unwrap(), 1);
    // The device asks for a kick at the next available entry.
    assert_eq!(guest.avail_event(), 1);
    // The driver has not moved used_event: the next completion needs no interrupt.
    vq.add_desc_chains(&chain(512, W).map(|d| shift(d, 3)), 3)
        .unwrap();
    assert!(!block.process_queue().unwrap());
    assert!(irq.read().is_err());
    assert_eq!(guest.used().len(), 2);
    assert_eq!(guest.avail_event(), 2);
}

#[test]
fn without_event_idx_notifications_are_enabled_after_the_queue_drains() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 0);
    let vq = guest.queue();
    let (mut block, irq) = guest.block(&vq, writeback(), false);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    assert!(block.process_queue().unwrap());
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(guest.load_u16(USED_RING), 0);
    // Nothing new: no interrupt.
    assert!(!block.process_queue().unwrap());
}

#[test]
fn an_inactive_device_ignores_the_queue() {
    let guest = Guest::new();
    let mut block = Block::new(Box::new(guest.disk.clone()), writeback()).unwrap();
    assert!(!block.process_queue().unwrap());
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    block.reset();
    guest.header(VIRTIO_BLK_T_IN, 0);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    assert!(!block.process_queue().unwrap());
    assert!(guest.used().is_empty());
}

#[test]
fn activation_needs_exactly_one_queue() {
    let guest = Guest::new();
    let vq = guest.queue();
    let mut block = Block::new(Box::new(guest.disk.clone()), writeback()).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    for count in [0, 2] {
        let queues = (0..count).map(|_| vq.create_queue().unwrap()).collect();
        let result = block.activate(guest.mem.clone(), queues, irq.clone());
        assert!(matches!(
            result,
            Err(ActivateError::QueueCount {
                expected: 1,
                actual
            }) if actual == count
        ));
    }
    let stats = block.stats();
    let get = |name: &str| stats.snapshot().iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(get("activate_fails"), 2);
}

#[test]
fn features_and_config_space_describe_the_disk() {
    let disk = MemDisk::new(vec![0u8; 4096 + 100]);
    let block = Block::new(Box::new(disk.clone()), writeback()).unwrap();
    assert_eq!(block.device_type(), TYPE_BLOCK);
    assert_eq!(block.queue_max_sizes(), [256]);
    let features = block.avail_features();
    assert_eq!(features & FEATURE_VERSION_1, FEATURE_VERSION_1);
    assert_eq!(features & FEATURE_EVENT_IDX, FEATURE_EVENT_IDX);
    assert_ne!(features & 1 << VIRTIO_BLK_F_FLUSH, 0);
    assert_ne!(features & 1 << VIRTIO_BLK_F_SEG_MAX, 0);
    assert_eq!(features & 1 << VIRTIO_BLK_F_RO, 0);
    let read_only = Block::new(Box::new(disk), config(true, CacheType::Unsafe)).unwrap();
    assert_ne!(read_only.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);

    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 8);
    let mut seg_max = [0u8; 4];
    block.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
    for (offset, len) in [(12, 8), (16, 4), (u64::MAX, 4)] {
        let mut data = vec![0xffu8; len];
        block.read_config(offset, &mut data);
        assert!(data.iter().all(|b| *b == 0), "offset {offset}");
    }
}

#[test]
fn the_event_loop_serves_a_queue_event() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 3);
    let vq = guest.queue();
    let (block, irq) = guest.block(&vq, writeback(), false);
    let block = Arc::new(Mutex::new(block));
    let mut event_manager = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    event_manager.add_subscriber(block.clone());
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    block.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(guest.used(), [(0, 513)]);
    assert_eq!(guest.read(DATA, 512), [3u8; 512]);
    assert_eq!(irq.read().unwrap(), 1);
    let stats = block.lock().unwrap().stats();
    let get = |name: &str| stats.snapshot().iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!((get("queue_event_count"), get("event_fails")), (1, 0));
}

#[test]
fn a_raw_file_serves_writes_and_flushes() {
    let path = std::env::temp_dir().join(format!("kiln-block-{}.img", std::process::id()));
    std::fs::write(&path, contents()).unwrap();
    let disk = crate::virtio::block::RawFile::open(&path, false).unwrap();
    let guest = Guest::new();
    let vq = guest.queue();
    let mut block = Block::new(Box::new(disk), writeback()).unwrap();
    let queue: Queue = vq.create_queue().unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    block.activate(guest.mem.clone(), vec![queue], irq).unwrap();
    guest
        .mem
        .write_slice(&[0x5a; 1024], GuestAddress(DATA))
        .unwrap();
    guest.header(VIRTIO_BLK_T_OUT, 3);
    vq.add_desc_chains(&chain(1024, 0), 0).unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.status(), OK);
    guest
        .mem
        .write_obj(UNANSWERED, GuestAddress(STATUS))
        .unwrap();
    guest.header(VIRTIO_BLK_T_FLUSH, 0);
    let flush = [desc(HEADER, 16, N, 4), desc(STATUS, 1, W, 0)];
    vq.add_desc_chains(&flush, 3).unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.status(), OK);
    let mut expected = contents();
    expected[3 * 512..5 * 512].fill(0x5a);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn counts_served_and_failed_requests() {
    let guest = Guest::new();
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    let stats = block.stats();
    guest.header(VIRTIO_BLK_T_IN, 0);
    vq.add_desc_chains(&chain(1024, W), 0).unwrap();
    block.process_queue().unwrap();
    let get = |name: &str| stats.snapshot().iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!((get("read_count"), get("read_bytes")), (1, 1024));
    guest.header(VIRTIO_BLK_T_IN, u64::MAX);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    block.process_queue().unwrap();
    assert_eq!(get("execute_fails"), 1);
    assert_eq!(get("write_count"), 0);
    // A chain of a status byte alone is no request: invalid, and never executed.
    vq.add_desc_chains(&[desc(STATUS, 1, W, 0)], 0).unwrap();
    block.process_queue().unwrap();
    assert_eq!((get("invalid_reqs_count"), get("execute_fails")), (1, 1));
}

/// A disk whose reads take at least a millisecond.
struct SlowDisk(MemDisk);

impl DiskBackend for SlowDisk {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(1));
        self.0.read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn counts_empty_kicks_queue_depth_config_writes_and_latencies() {
    let guest = Guest::new();
    let vq = guest.queue();
    let disk = Box::new(SlowDisk(guest.disk.clone()));
    let (mut block, _irq) = guest.block_on(&vq, disk, writeback(), false);
    let stats = block.stats();
    let get = |name: &str| stats.snapshot().iter().find(|(n, _)| *n == name).unwrap().1;
    // A kick with nothing available.
    block.process_queue().unwrap();
    assert_eq!(get("no_avail_buffer"), 1);
    // Two reads at once: the first is taken with one waiting behind it, the second alone.
    guest.header(VIRTIO_BLK_T_IN, 0);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    vq.add_desc_chains(&chain(512, W).map(|d| shift(d, 3)), 3)
        .unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.used().len(), 2);
    assert_eq!(
        (get("remaining_reqs_count"), get("no_avail_buffer")),
        (1, 1)
    );
    let [(read_name, read), (write_name, write)] = stats.latencies();
    assert_eq!((read_name, write_name), ("read_agg", "write_agg"));
    assert!(read.min_us() >= 1000, "{read:?}");
    assert!(read.sum_us() >= read.min_us() + read.max_us(), "{read:?}");
    assert_eq!((write.max_us(), write.sum_us()), (0, 0));
    // The config space is read-only: a write changes nothing and is counted.
    block.write_config(0, &[0xff; 8]);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), SECTORS);
    assert_eq!(get("cfg_fails"), 1);
}

#[test]
fn a_restored_device_serves_the_next_request_where_the_saved_one_stopped() {
    let guest = Guest::new();
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    guest.header(VIRTIO_BLK_T_IN, 1);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    block.process_queue().unwrap();
    let state = block.save();
    assert_eq!(
        state.queue.map(|q| (q.0.next_avail, q.0.next_used)),
        Some((1, 1))
    );
    let mut restored = Block::new(Box::new(guest.disk.clone()), writeback()).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    restored
        .restore(&state, guest.mem.clone(), interrupt)
        .unwrap();
    assert_eq!(restored.save(), state);
    // The next request, at the next available entry, lands in the next used entry.
    guest.header(VIRTIO_BLK_T_IN, 2);
    vq.add_desc_chains(&chain(512, W).map(|d| shift(d, 3)), 3)
        .unwrap();
    assert!(restored.process_queue().unwrap());
    assert_eq!(guest.used(), [(0, 513), (3, 513)]);
    assert_eq!(guest.read(DATA, 512), [2u8; 512]);
    assert_eq!(irq.read().unwrap(), 1);
    // An inactive device restores inactive; a queue outside guest memory is refused.
    let mut idle = Block::new(Box::new(guest.disk.clone()), writeback()).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let saved = idle.save();
    idle.restore(&saved, guest.mem.clone(), interrupt.clone())
        .unwrap();
    assert_eq!(idle.save().queue, None);
    let mut far = state;
    if let Some(queue) = far.queue.as_mut() {
        queue.0.desc_table = MEM_SIZE;
    }
    assert!(idle.restore(&far, guest.mem.clone(), interrupt).is_err());
}

#[test]
fn a_swapped_disk_changes_capacity_and_contents() {
    let guest = Guest::new();
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    block.swap_disk(Box::new(MemDisk::new(vec![7u8; 4096])));
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 8);
    guest.header(VIRTIO_BLK_T_IN, 1);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.status(), OK);
    assert_eq!(guest.read(DATA, 512), vec![7u8; 512]);
}

/// A drive reopening its own image: with `swap_disk` the new open would meet the old open's
/// image lock; `reopen_disk` closes the old disk first, and falls back to `restore`.
#[test]
fn a_drive_reopens_its_own_locked_image() {
    use crate::virtio::block::test_utils::retry_locked;
    use crate::virtio::block::{DiskError, RawFile};
    let path = std::env::temp_dir().join(format!("kiln-reopen-{}", std::process::id()));
    std::fs::write(&path, vec![3u8; 4096]).unwrap();
    let guest = Guest::new();
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    let open = || {
        retry_locked(
            || RawFile::open(&path, false),
            |e| matches!(e, DiskError::Lock { .. }),
        )
        .map(|d| Box::new(d) as Box<dyn DiskBackend>)
    };
    block.swap_disk(open().unwrap());
    assert!(matches!(
        RawFile::open(&path, false),
        Err(DiskError::Lock { .. })
    ));
    // The image grew: reopening it shows the new capacity.
    std::fs::write(&path, vec![3u8; 8192]).unwrap();
    block.reopen_disk(open, open).unwrap();
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 16);
    // A failed reopen serves the restored disk.
    let missing = || {
        RawFile::open(Path::new("/nonexistent/kiln"), false)
            .map(|d| Box::new(d) as Box<dyn DiskBackend>)
    };
    assert!(block.reopen_disk(missing, open).is_err());
    guest.header(VIRTIO_BLK_T_IN, 1);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.status(), OK);
    assert_eq!(guest.read(DATA, 512), vec![3u8; 512]);
    std::fs::remove_file(path).unwrap();
}
