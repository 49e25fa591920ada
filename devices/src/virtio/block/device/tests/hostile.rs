//! One test per way a hostile or broken driver can get a request wrong, each asserting the exact
//! outcome: the status byte (or a used length of 0 when there is no usable status byte), the
//! disk unchanged, and the queue still working.

use super::*;

#[test]
fn data_outside_guest_memory_is_an_io_error() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    let mut descs = chain(1024, 0);
    descs[1] = desc(MEM_SIZE - 512, 1024, N, 2);
    assert_eq!(serve_one(&guest, writeback(), &descs), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(guest.disk.contents(), contents());
}

#[test]
fn a_header_outside_guest_memory_is_an_io_error() {
    let guest = Guest::new();
    let mut descs = chain(512, W);
    descs[0] = desc(u64::MAX - 4, 16, N, 1);
    assert_eq!(serve_one(&guest, writeback(), &descs), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
}

#[test]
fn a_status_outside_guest_memory_gets_length_zero() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    let mut descs = chain(512, 0);
    descs[2] = desc(MEM_SIZE, 1, W, 0);
    assert_eq!(serve_one(&guest, writeback(), &descs), [(0, 0)]);
    assert_eq!(guest.disk.contents(), contents());
}

#[test]
fn a_read_into_device_readable_buffers_is_an_io_error() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 1);
    assert_eq!(serve_one(&guest, writeback(), &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(guest.read(DATA, 512), [0u8; 512]);
}

#[test]
fn a_write_from_device_writable_buffers_is_an_io_error() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(serve_one(&guest, writeback(), &chain(512, W)), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(guest.disk.contents(), contents());
}

#[test]
fn a_readable_status_descriptor_gets_length_zero() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 0);
    let mut descs = chain(512, W);
    descs[2] = desc(STATUS, 1, 0, 0);
    assert_eq!(serve_one(&guest, writeback(), &descs), [(0, 0)]);
    assert_eq!(guest.status(), UNANSWERED);
}

#[test]
fn a_short_header_is_an_io_error() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    let mut descs = chain(512, 0);
    descs[0] = desc(HEADER, 8, N, 1);
    assert_eq!(serve_one(&guest, writeback(), &descs), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(guest.disk.contents(), contents());
}

#[test]
fn sectors_past_the_capacity_are_io_errors() {
    for (sector, len) in [
        (SECTORS, 512),
        (SECTORS - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ] {
        let guest = Guest::new();
        guest.header(VIRTIO_BLK_T_OUT, sector);
        let used = serve_one(&guest, writeback(), &chain(len, 0));
        assert_eq!(used, [(0, 1)], "sector {sector}");
        assert_eq!(guest.status(), IOERR, "sector {sector}");
        assert_eq!(guest.disk.contents(), contents());
    }
}

#[test]
fn a_length_that_is_not_whole_sectors_is_an_io_error() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(serve_one(&guest, writeback(), &chain(500, 0)), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(guest.disk.contents(), contents());
}

#[test]
fn a_backend_failure_is_an_io_error() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 0);
    guest.disk.set_failing(true);
    assert_eq!(serve_one(&guest, writeback(), &chain(512, W)), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
}

#[test]
fn a_looping_chain_gets_length_zero_and_the_queue_goes_on() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 0);
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    // 0 -> 1 -> 0 -> ...
    let looping = [desc(HEADER, 16, N, 1), desc(DATA, 512, W | N, 0)];
    vq.add_desc_chains(&looping, 0).unwrap();
    vq.add_desc_chains(&chain(512, W).map(|d| shift(d, 2)), 2)
        .unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.used(), [(0, 0), (2, 513)]);
    assert_eq!(guest.status(), OK);
}

#[test]
fn a_head_index_past_the_table_is_skipped() {
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_IN, 0);
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    vq.add_desc_chains(&chain(512, W), 0).unwrap();
    // Point the first available entry past the 16-entry table.
    vq.avail().ring().ref_at(0).unwrap().store(u16::to_le(200));
    vq.add_desc_chains(&chain(512, W).map(|d| shift(d, 3)), 3)
        .unwrap();
    block.process_queue().unwrap();
    assert_eq!(guest.used(), [(3, 513)]);
}

#[test]
fn an_avail_index_too_far_ahead_is_an_error_not_a_hang() {
    let guest = Guest::new();
    let vq = guest.queue();
    let (mut block, _irq) = guest.block(&vq, writeback(), false);
    vq.avail().idx().store(u16::to_le(17));
    let result = block.process_queue();
    assert!(matches!(
        result,
        Err(BlockError::AvailIndex {
            pending: 17,
            size: 16
        })
    ));
    assert!(guest.used().is_empty());
}

/// A raw image file holding `contents()`, removed when dropped.
struct TempImage(std::path::PathBuf);

impl TempImage {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("kiln-hostile-{}-{name}.img", std::process::id()));
        std::fs::write(&path, contents()).unwrap();
        Self(path)
    }

    fn open(&self, format: Option<crate::virtio::block::ImageFormat>) -> Box<dyn DiskBackend> {
        crate::virtio::block::open_disk(&self.0, false, format).unwrap()
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The start of a qcow2 header naming a host file as raw backing file.
fn qcow2_header() -> Vec<u8> {
    let mut header = b"QFI\xfb\0\0\0\x03".to_vec();
    header.extend_from_slice(&0x200u64.to_be_bytes()); // backing_file_offset
    header.extend_from_slice(&10u32.to_be_bytes()); // backing_file_size
    header.resize(0x200, 0);
    header[0x1f0..0x1fa].copy_from_slice(b"/etc/shado");
    header
}

/// Serves one chain of `descs` on `disk`, returns the used entries.
fn serve_on(guest: &Guest, disk: Box<dyn DiskBackend>, descs: &[RawDescriptor]) -> Vec<(u32, u32)> {
    let vq = guest.queue();
    let (mut block, _irq) = guest.block_on(&vq, disk, writeback(), false);
    vq.add_desc_chains(descs, 0).unwrap();
    block.process_queue().unwrap();
    guest.used()
}

#[test]
fn a_qcow2_header_written_to_a_probed_raw_disk_is_an_io_error() {
    let image = TempImage::new("probed-qcow2");
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    guest
        .mem
        .write_slice(&qcow2_header(), GuestAddress(DATA))
        .unwrap();
    assert_eq!(serve_on(&guest, image.open(None), &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(image.contents(), contents());
}

#[test]
fn a_header_spread_over_buffers_and_sectors_is_an_io_error() {
    let image = TempImage::new("probed-spread");
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    let header = qcow2_header();
    // "QF" in one buffer, the rest of the first sector and a second sector in another.
    guest
        .mem
        .write_slice(&header[..2], GuestAddress(DATA))
        .unwrap();
    guest
        .mem
        .write_slice(&header[2..], GuestAddress(DATA + 0x1000))
        .unwrap();
    let descs = [
        desc(HEADER, 16, N, 1),
        desc(DATA, 2, N, 2),
        desc(DATA + 0x1000, 1022, N, 3),
        desc(STATUS, 1, W, 0),
    ];
    assert_eq!(serve_on(&guest, image.open(None), &descs), [(0, 1)]);
    assert_eq!(guest.status(), IOERR);
    assert_eq!(image.contents(), contents());
}

#[test]
fn a_probed_raw_disk_takes_a_magic_elsewhere_and_ordinary_first_sectors() {
    let image = TempImage::new("probed-ok");
    let guest = Guest::new();
    guest
        .mem
        .write_slice(&qcow2_header(), GuestAddress(DATA))
        .unwrap();
    guest.header(VIRTIO_BLK_T_OUT, 1);
    assert_eq!(serve_on(&guest, image.open(None), &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(image.contents()[512..1024], qcow2_header());
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    guest
        .mem
        .write_slice(&[0x55; 512], GuestAddress(DATA))
        .unwrap();
    assert_eq!(serve_on(&guest, image.open(None), &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(image.contents()[..512], [0x55; 512]);
}

#[test]
fn an_explicitly_raw_disk_takes_any_header() {
    let image = TempImage::new("explicit-raw");
    let guest = Guest::new();
    guest.header(VIRTIO_BLK_T_OUT, 0);
    guest
        .mem
        .write_slice(&qcow2_header(), GuestAddress(DATA))
        .unwrap();
    let raw = Some(crate::virtio::block::ImageFormat::Raw);
    assert_eq!(serve_on(&guest, image.open(raw), &chain(512, 0)), [(0, 1)]);
    assert_eq!(guest.status(), OK);
    assert_eq!(image.contents()[..512], qcow2_header());
}

#[test]
fn rings_that_rewrite_each_other_cost_one_budget_per_notification() {
    use crate::virtio::guest_queue::test_support::{overlapping_queue, within_seconds};
    let guest = Guest::new();
    let mut block = Block::new(Box::new(guest.disk.clone()), writeback()).unwrap();
    let queue = overlapping_queue(QUEUE_LEN, 0x4000);
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    block
        .activate(guest.mem.clone(), vec![queue], interrupt)
        .unwrap();
    let evt = block.queue_events()[0].try_clone().unwrap();
    let (block, result) = within_seconds(move || {
        let result = block.process_queue().map(drop).map_err(|e| e.to_string());
        (block, result)
    })
    .expect("the queue loop did not return");
    result.unwrap();
    // The device asked to be called again, and is, as long as the guest keeps this up.
    assert_eq!(evt.read().unwrap(), 1);
    let mut block = block;
    block.process_queue().unwrap();
    assert_eq!(evt.read().unwrap(), 1);
}

/// Another event-loop client, as the API's eventfd is: counts the times it is served.
struct Counter {
    evt: EventFd,
    served: Arc<std::sync::atomic::AtomicUsize>,
}

impl MutEventSubscriber for Counter {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
    }
}

#[test]
fn a_queue_that_never_empties_leaves_the_event_loop_to_the_others() {
    use crate::virtio::guest_queue::test_support::{overlapping_queue, within_seconds};
    let guest = Guest::new();
    let mut block = Block::new(Box::new(guest.disk.clone()), writeback()).unwrap();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let queue = overlapping_queue(QUEUE_LEN, 0x4000);
    block
        .activate(guest.mem.clone(), vec![queue], interrupt)
        .unwrap();
    block.queue_events()[0].write(1).unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let api = Counter {
        evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        served: served.clone(),
    };
    api.evt.write(1).unwrap();
    let api_evt = api.evt.try_clone().unwrap();
    let ran = within_seconds(move || {
        type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
        let mut event_manager = EventManager::<Subscriber>::new().unwrap();
        event_manager.add_subscriber(Arc::new(Mutex::new(block)));
        event_manager.add_subscriber(Arc::new(Mutex::new(api)));
        for _ in 0..10 {
            event_manager.run_with_timeout(100).unwrap();
        }
        // The guest keeps the block queue busy; the other client is still served.
        api_evt.write(1).unwrap();
        for _ in 0..10 {
            event_manager.run_with_timeout(100).unwrap();
        }
    });
    assert!(ran.is_some(), "the event loop never came back");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
}
