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
