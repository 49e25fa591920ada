//! The device driven through mock split queues and a real muxer: packets both ways through
//! the queues, receive buffers running out, the restore's transport reset event, config space,
//! and one test per way a hostile driver can get a chain or a ring wrong.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::test_dir::scratch;
use crate::virtio::guest_queue::test_support::{overlapping_queue, within_seconds};
use crate::virtio::vsock::packet::{op, Header, HOST_CID, TYPE_STREAM};

const MEM_SIZE: u64 = 0x10_0000;
/// Descriptor tables of the three queues, and their used rings away from the mock's (whose
/// used ring overlaps its available ring).
const BASES: [u64; 3] = [0, 0x2000, 0x4000];
const USED: [u64; 3] = [0x8000, 0x9000, 0xa000];
const DATA: u64 = 0x1_0000;
const QUEUE_LEN: u16 = 16;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const CID: u64 = 3;

struct Guest {
    mem: GuestMemoryMmap,
    dir: PathBuf,
}

impl Guest {
    fn new(name: &str) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        Guest {
            mem,
            dir: scratch(&format!("vsock-device-{name}")),
        }
    }

    fn queue(&self, index: usize) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(&self.mem, GuestAddress(BASES[index]), QUEUE_LEN)
    }

    fn device(&self) -> (Vsock, EventFd) {
        let stats = Arc::new(VsockStats::default());
        let muxer = Muxer::new(CID, &self.dir.join("v.sock"), stats.clone()).unwrap();
        let vsock = Vsock::new(CID, muxer, stats).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        (vsock, irq)
    }

    /// An active device on the three mock queues.
    fn active(&self, vqs: &[MockSplitQueue<'_, GuestMemoryMmap>; 3]) -> (Vsock, EventFd) {
        let (mut vsock, irq) = self.device();
        vsock.set_acked_features(FEATURE_VERSION_1);
        let queues = vqs
            .iter()
            .zip(USED)
            .map(|(vq, used)| {
                let mut queue: Queue = vq.create_queue().unwrap();
                queue.set_used_ring_address(Some(used as u32), Some(0));
                queue
            })
            .collect();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        vsock.activate(self.mem.clone(), queues, interrupt).unwrap();
        (vsock, irq)
    }

    fn used(&self, index: usize) -> Vec<(u32, u32)> {
        let ring = USED[index];
        let count: u16 = self.mem.read_obj(GuestAddress(ring + 2)).unwrap();
        (0..u64::from(count))
            .map(|i| {
                let entry = ring + 4 + 8 * i;
                let read = |addr| self.mem.read_obj::<u32>(GuestAddress(addr)).unwrap();
                (read(entry), read(entry + 4))
            })
            .collect()
    }

    fn header_at(&self, addr: u64) -> Header {
        let mut bytes = [0u8; HDR_LEN];
        self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        Header::parse(&bytes)
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn guest_header(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// Puts a transmit packet at descriptor `index`: the header in one buffer, `data` in a second.
fn tx_packet(
    guest: &Guest,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    index: u16,
    header: Header,
    data: &[u8],
) {
    let at = DATA + 0x1000 * u64::from(index);
    guest
        .mem
        .write_slice(&header.to_bytes(), GuestAddress(at))
        .unwrap();
    guest
        .mem
        .write_slice(data, GuestAddress(at + 0x100))
        .unwrap();
    let descs = [
        desc(at, HDR_LEN as u32, N, index + 1),
        desc(at + 0x100, data.len() as u32, 0, 0),
    ];
    vq.add_desc_chains(&descs, index).unwrap();
}

/// Receive buffers of 4 KiB at descriptors `first..first + count`, at 0x20000 up.
fn rx_buffers(vq: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, count: u16) {
    let descs: Vec<_> = (first..first + count)
        .map(|i| desc(0x2_0000 + 0x1000 * u64::from(i), 4096, W, 0))
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
}

#[test]
fn a_guest_connection_goes_through_the_queues_both_ways() {
    let guest = Guest::new("both-ways");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (mut vsock, irq) = guest.active(&vqs);
    let listener = UnixListener::bind(guest.dir.join("v.sock_52")).unwrap();
    rx_buffers(&vqs[0], 0, 4);
    tx_packet(
        &guest,
        &vqs[1],
        0,
        guest_header(op::REQUEST, 1024, 52, 0),
        &[],
    );
    assert!(vsock.process_tx().unwrap());
    assert_eq!(
        irq.read().unwrap(),
        2,
        "one for transmit, one for the response"
    );
    assert_eq!(guest.used(1), [(0, 0)]);
    assert_eq!(guest.used(0), [(0, HDR_LEN as u32)]);
    let response = guest.header_at(0x2_0000);
    assert_eq!((response.op, response.dst_port), (op::RESPONSE, 1024));

    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    tx_packet(
        &guest,
        &vqs[1],
        2,
        guest_header(op::RW, 1024, 52, 5),
        b"hello",
    );
    vsock.process_tx().unwrap();
    let mut got = [0u8; 5];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    stream.write_all(b"world").unwrap();
    vsock.muxer.process_events();
    vsock.process_rx().unwrap();
    assert_eq!(guest.used(0).last(), Some(&(1, HDR_LEN as u32 + 5)));
    let rw = guest.header_at(0x2_1000);
    assert_eq!((rw.op, rw.len), (op::RW, 5));
    let mut data = [0u8; 5];
    guest
        .mem
        .read_slice(&mut data, GuestAddress(0x2_1000 + HDR_LEN as u64))
        .unwrap();
    assert_eq!(&data, b"world");
    let stats = vsock.stats().snapshot();
    assert!(stats.contains(&("tx_bytes_count", 5)));
    assert!(stats.contains(&("rx_bytes_count", 5)));
}

#[test]
fn a_packet_waits_for_receive_buffers() {
    let guest = Guest::new("no-buffers");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (mut vsock, _irq) = guest.active(&vqs);
    // Nobody listens on port 9: a reset is due, but there is no buffer for it.
    tx_packet(
        &guest,
        &vqs[1],
        0,
        guest_header(op::REQUEST, 1024, 9, 0),
        &[],
    );
    vsock.process_tx().unwrap();
    assert!(guest.used(0).is_empty());
    assert!(vsock.muxer.has_pending_rx());
    rx_buffers(&vqs[0], 0, 1);
    vsock.process_rx().unwrap();
    assert_eq!(guest.used(0), [(0, HDR_LEN as u32)]);
    assert_eq!(guest.header_at(0x2_0000).op, op::RST);
    // With nothing to send, a posted buffer stays in the ring.
    rx_buffers(&vqs[0], 1, 1);
    vsock.process_rx().unwrap();
    assert_eq!(guest.used(0).len(), 1);
}

#[test]
fn broken_transmit_chains_go_back_empty_and_the_queue_goes_on() {
    let guest = Guest::new("hostile-tx");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (mut vsock, _irq) = guest.active(&vqs);
    rx_buffers(&vqs[0], 0, 8);
    let header = guest_header(op::REQUEST, 1024, 9, 0).to_bytes();
    guest.mem.write_slice(&header, GuestAddress(DATA)).unwrap();
    let broken: [&[RawDescriptor]; 4] = [
        // Device-writable.
        &[desc(DATA, HDR_LEN as u32, W, 0)],
        // Shorter than a header.
        &[desc(DATA, 20, 0, 0)],
        // Outside guest memory.
        &[desc(MEM_SIZE - 8, HDR_LEN as u32, 0, 0)],
        // Looping.
        &[desc(DATA, HDR_LEN as u32, N, 3)],
    ];
    for (i, descs) in broken.iter().enumerate() {
        vqs[1].add_desc_chains(descs, i as u16).unwrap();
    }
    // A header announcing more data than its chain holds.
    tx_packet(
        &guest,
        &vqs[1],
        4,
        guest_header(op::RW, 1024, 9, 4000),
        b"short",
    );
    vsock.process_tx().unwrap();
    assert_eq!(
        guest.used(1),
        [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)],
        "every chain returned"
    );
    assert!(guest.used(0).is_empty(), "none reached the muxer");
    // The queue still works: a request to a closed port gets its reset.
    tx_packet(
        &guest,
        &vqs[1],
        6,
        guest_header(op::REQUEST, 1024, 9, 0),
        &[],
    );
    vsock.process_tx().unwrap();
    assert_eq!(guest.header_at(0x2_0000).op, op::RST);
}

#[test]
fn broken_receive_chains_go_back_empty() {
    let guest = Guest::new("hostile-rx");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (mut vsock, _irq) = guest.active(&vqs);
    let broken = [
        desc(0x2_0000, 4096, 0, 0),
        desc(0x2_0000, 10, W, 0),
        desc(MEM_SIZE - 8, 4096, W, 0),
    ];
    vqs[0].add_desc_chains(&broken, 0).unwrap();
    rx_buffers(&vqs[0], 3, 1);
    tx_packet(
        &guest,
        &vqs[1],
        0,
        guest_header(op::REQUEST, 1024, 9, 0),
        &[],
    );
    vsock.process_tx().unwrap();
    assert_eq!(guest.used(0), [(0, 0), (1, 0), (2, 0), (3, HDR_LEN as u32)]);
    assert_eq!(guest.header_at(0x2_3000).op, op::RST);
}

#[test]
fn an_available_index_far_ahead_is_refused() {
    let guest = Guest::new("avail");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (mut vsock, _irq) = guest.active(&vqs);
    let avail_idx = vqs[1].avail_addr().0 + 2;
    guest
        .mem
        .write_obj(QUEUE_LEN + 1, GuestAddress(avail_idx))
        .unwrap();
    assert!(matches!(
        vsock.process_tx(),
        Err(VsockError::AvailIndex { .. })
    ));
}

#[test]
fn rings_that_rewrite_each_other_do_not_hold_the_device() {
    let guest = Guest::new("overlap");
    let done = within_seconds(move || {
        let (mut vsock, irq) = guest.device();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let queues = vec![
            overlapping_queue(QUEUE_LEN, 0x3_0000),
            overlapping_queue(QUEUE_LEN, 0x4_0000),
            overlapping_queue(QUEUE_LEN, 0x5_0000),
        ];
        vsock
            .activate(guest.mem.clone(), queues, interrupt)
            .unwrap();
        let _ = vsock.process_tx();
        let _ = vsock.process_rx();
    });
    assert!(done.is_some(), "the device kept the VMM thread");
}

#[test]
fn a_restored_device_tells_the_driver_its_connections_are_gone() {
    let guest = Guest::new("restore");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (vsock, _irq) = guest.active(&vqs);
    let state = vsock.save();
    drop(vsock);
    std::fs::remove_file(guest.dir.join("v.sock")).unwrap();
    let (mut restored, irq) = guest.device();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    restored
        .restore(&state, guest.mem.clone(), interrupt)
        .unwrap();
    assert_eq!(restored.save(), state);
    // No event buffer yet: the event waits for one.
    restored.send_reset_event().unwrap();
    assert!(guest.used(2).is_empty());
    vqs[2]
        .add_desc_chains(&[desc(0x3_0000, 4, W, 0)], 0)
        .unwrap();
    guest
        .mem
        .write_obj(0xffff_ffffu32, GuestAddress(0x3_0000))
        .unwrap();
    restored.send_reset_event().unwrap();
    assert_eq!(guest.used(2), [(0, 4)]);
    let event: u32 = guest.mem.read_obj(GuestAddress(0x3_0000)).unwrap();
    assert_eq!(event, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(irq.read().unwrap(), 1);
    // Once only.
    vqs[2]
        .add_desc_chains(&[desc(0x3_1000, 4, W, 0)], 1)
        .unwrap();
    restored.send_reset_event().unwrap();
    assert_eq!(guest.used(2).len(), 1);
}

#[test]
fn a_saved_state_for_another_device_is_refused() {
    let guest = Guest::new("bad-state");
    let (mut vsock, irq) = guest.device();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let other_cid = VsockState {
        cid: 4,
        acked_features: 0,
        queues: None,
    };
    assert!(matches!(
        vsock.restore(&other_cid, guest.mem.clone(), interrupt.clone()),
        Err(VsockStateError::Cid {
            saved: 4,
            device: 3
        })
    ));
    let features = VsockState {
        cid: CID,
        acked_features: 1 << 40,
        queues: None,
    };
    assert!(matches!(
        vsock.restore(&features, guest.mem.clone(), interrupt),
        Err(VsockStateError::Features { .. })
    ));
}

#[test]
fn the_config_space_holds_the_cid_and_ignores_writes() {
    let guest = Guest::new("config");
    let (mut vsock, _irq) = guest.device();
    let mut cid = [0u8; 8];
    vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    vsock.write_config(0, &[9; 8]);
    vsock.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    assert!(vsock.stats().snapshot().contains(&("cfg_fails", 1)));
    let mut past = [0xaa; 4];
    vsock.read_config(6, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn activation_needs_three_queues() {
    let guest = Guest::new("activate");
    let (mut vsock, irq) = guest.device();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let queues = vec![Queue::new(QUEUE_LEN).unwrap()];
    assert!(matches!(
        vsock.activate(guest.mem.clone(), queues, interrupt),
        Err(ActivateError::QueueCount {
            expected: 3,
            actual: 1
        })
    ));
    assert!(vsock.stats().snapshot().contains(&("activate_fails", 1)));
}

#[test]
fn a_host_stream_is_not_lost_when_the_test_host_connects_early() {
    // A host connection made before the driver is up waits for it.
    let guest = Guest::new("early");
    let vqs = [guest.queue(0), guest.queue(1), guest.queue(2)];
    let (mut vsock, _irq) = guest.device();
    let mut host = UnixStream::connect(guest.dir.join("v.sock")).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    for _ in 0..3 {
        vsock.muxer.process_events();
    }
    assert!(vsock.process_rx().is_ok());
    vsock.set_acked_features(FEATURE_VERSION_1);
    let queues = vqs
        .iter()
        .zip(USED)
        .map(|(vq, used)| {
            let mut queue: Queue = vq.create_queue().unwrap();
            queue.set_used_ring_address(Some(used as u32), Some(0));
            queue
        })
        .collect();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    vsock
        .activate(guest.mem.clone(), queues, Arc::new(Interrupt::new(irq)))
        .unwrap();
    rx_buffers(&vqs[0], 0, 1);
    vsock.process_rx().unwrap();
    let request = guest.header_at(0x2_0000);
    assert_eq!((request.op, request.dst_port), (op::REQUEST, 52));
}
