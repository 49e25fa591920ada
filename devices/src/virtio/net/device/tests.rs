//! The device driven through mock split queues and a socket standing in for the tap: the
//! happy paths, receive pausing, mergeable buffers, notifications, activation, config space and
//! the event loop. `hostile` has one test per way a driver can get a chain wrong.

mod hostile;

use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::net::test_utils::{SocketIo, Wire};
use crate::virtio::net::TapError;
use crate::virtio::net::VNET_HDR_LEN;

const MEM_SIZE: u64 = 0x10_0000;
/// The transmit queue's descriptor table; the receive queue's is at 0.
const TX_QUEUE: u64 = 0x4000;
/// The used rings, away from the mock's: `MockSplitQueue` places its used ring `len` bytes
/// after the available ring's entries instead of `2 * len` bytes, so the two overlap.
const RX_USED: u64 = 0x8000;
const TX_USED: u64 = 0x9000;
const DATA: u64 = 0x1_0000;
const QUEUE_LEN: u16 = 16;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

fn config(mtu: Option<u16>) -> NetConfig {
    NetConfig {
        mac: MAC,
        mtu,
        count_spoofed: true,
    }
}

/// A frame as the tap hands it over: a header with `flags`, then `len` bytes counting up.
fn frame(flags: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![flags, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xee, 0xee];
    frame.extend((0..len).map(|i| i as u8));
    frame
}

/// Guest memory with a receive and a transmit queue in it.
struct Guest {
    mem: GuestMemoryMmap,
}

/// An active device and its surroundings.
struct Rig {
    net: Net,
    wire: Wire,
    irq: EventFd,
}

impl Guest {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        Self { mem }
    }

    fn rxq(&self) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::new(&self.mem, QUEUE_LEN)
    }

    fn txq(&self) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(&self.mem, GuestAddress(TX_QUEUE), QUEUE_LEN)
    }

    /// A device on `rxq` and `txq` with the driver accepting `features`.
    fn net(
        &self,
        rxq: &MockSplitQueue<'_, GuestMemoryMmap>,
        txq: &MockSplitQueue<'_, GuestMemoryMmap>,
        features: u64,
    ) -> Rig {
        let (io, wire) = SocketIo::pair().unwrap();
        let queues = queues(rxq, txq, features & FEATURE_EVENT_IDX != 0);
        let (net, irq) = self.net_on(Box::new(io), queues, features);
        Rig { net, wire, irq }
    }

    /// A device on `io` and `queues` with the driver accepting `features`; returns it with
    /// the interrupt eventfd.
    fn net_on(&self, io: Box<dyn FrameIo>, queues: Vec<Queue>, features: u64) -> (Net, EventFd) {
        let mut net = Net::with_frame_io(io, config(None)).unwrap();
        net.set_acked_features(features | FEATURE_VERSION_1);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        net.activate(self.mem.clone(), queues, interrupt).unwrap();
        (net, irq)
    }

    fn load_u16(&self, addr: u64) -> u16 {
        self.mem.read_obj::<u16>(GuestAddress(addr)).unwrap()
    }

    /// The used ring entries so far: (head, len).
    fn used(&self, ring: u64) -> Vec<(u32, u32)> {
        let count = self.load_u16(ring + 2);
        (0..u64::from(count))
            .map(|i| {
                let entry = ring + 4 + 8 * i;
                let read = |addr| self.mem.read_obj::<u32>(GuestAddress(addr)).unwrap();
                (read(entry), read(entry + 4))
            })
            .collect()
    }

    /// The used ring's avail_event: the available index the device wants a kick for.
    fn avail_event(&self, ring: u64) -> u16 {
        self.load_u16(ring + 4 + 8 * u64::from(QUEUE_LEN))
    }

    /// Sets the avail ring's used_event: the used index the driver wants an interrupt for.
    fn set_used_event(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>, value: u16) {
        let addr = vq.avail_addr().0 + 4 + 2 * u64::from(QUEUE_LEN);
        self.mem.write_obj(value, GuestAddress(addr)).unwrap();
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

/// The device's queues on `rxq` and `txq`, with their used rings at `RX_USED` and `TX_USED`.
fn queues(
    rxq: &MockSplitQueue<'_, GuestMemoryMmap>,
    txq: &MockSplitQueue<'_, GuestMemoryMmap>,
    event_idx: bool,
) -> Vec<Queue> {
    let mut queues = Vec::new();
    for (vq, used) in [(rxq, RX_USED), (txq, TX_USED)] {
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_event_idx(event_idx);
        queues.push(queue);
    }
    queues
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// `count` one-descriptor receive chains of `len` bytes at descriptors `first..`, buffers
/// 0x1000 apart from `DATA + 0x1000 * first`.
fn rx_chains(vq: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, count: u16, len: u32) {
    let descs: Vec<_> = (first..first + count)
        .map(|i| desc(DATA + 0x1000 * u64::from(i), len, W, 0))
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
}

/// A transmit chain at descriptor 0: the header, then a 100-byte payload, from guest memory.
fn tx_chain(guest: &Guest, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<u8> {
    let sent = frame(1, 100);
    guest.write(DATA, &sent[..VNET_HDR_LEN]);
    guest.write(DATA + 0x800, &sent[VNET_HDR_LEN..]);
    let descs = [desc(DATA, 12, N, 1), desc(DATA + 0x800, 100, 0, 0)];
    vq.add_desc_chains(&descs, 0).unwrap();
    sent
}

#[test]
fn a_transmitted_frame_reaches_the_tap_with_its_header() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    let sent = tx_chain(&guest, &txq);
    assert!(rig.net.process_tx().unwrap());
    assert_eq!(rig.wire.recv().unwrap(), sent);
    assert_eq!(guest.used(TX_USED), [(0, 0)]);
    assert_eq!(rig.irq.read().unwrap(), 1);
    let stats = rig.net.stats();
    assert_eq!(
        (
            stats.tx_packets(),
            stats.tx_bytes(),
            stats.tap_write_fails()
        ),
        (1, 100, 0)
    );
}

#[test]
fn a_received_frame_fills_a_buffer_with_its_header() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    rx_chains(&rxq, 0, 1, 2048);
    let sent = frame(2, 200);
    rig.wire.send(&sent).unwrap();
    assert!(rig.net.process_rx().unwrap());
    assert_eq!(guest.used(RX_USED), [(0, 212)]);
    let mut expected = sent;
    expected[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(guest.read(DATA, 212), expected);
    assert_eq!(rig.irq.read().unwrap(), 1);
    let stats = rig.net.stats();
    assert_eq!(
        (stats.rx_packets(), stats.rx_bytes(), stats.rx_fails()),
        (1, 200, 0)
    );
}

#[test]
fn a_frame_waits_for_buffers_and_is_delivered_after_the_kick() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, FEATURE_EVENT_IDX);
    rig.wire.send(&frame(0, 60)).unwrap();
    rig.wire.send(&frame(0, 70)).unwrap();
    assert!(!rig.net.process_rx().unwrap());
    assert!(guest.used(RX_USED).is_empty());
    assert!(rig.net.rx.has_pending());
    // The device asked for a kick at the first buffer the driver posts.
    assert_eq!(guest.avail_event(RX_USED), 0);
    assert_eq!(rig.net.stats().rx_fails(), 0);
    rx_chains(&rxq, 0, 1, 2048);
    assert!(rig.net.process_rx().unwrap());
    assert_eq!(guest.used(RX_USED), [(0, 72)]);
    // The second frame was read and now waits in turn.
    assert!(rig.net.rx.has_pending());
    assert_eq!(guest.avail_event(RX_USED), 1);
    rx_chains(&rxq, 1, 1, 2048);
    rig.net.process_rx().unwrap();
    assert_eq!(guest.used(RX_USED), [(0, 72), (1, 82)]);
    assert!(!rig.net.rx.has_pending());
}

#[test]
fn mergeable_buffers_carry_a_frame_over_several_chains() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, MRG);
    rx_chains(&rxq, 0, 3, 100);
    let sent = frame(0, 250);
    rig.wire.send(&sent).unwrap();
    assert!(rig.net.process_rx().unwrap());
    assert_eq!(guest.used(RX_USED), [(0, 100), (1, 100), (2, 62)]);
    let mut expected = sent;
    expected[10..12].copy_from_slice(&3u16.to_le_bytes());
    let mut got = guest.read(DATA, 100);
    got.extend(guest.read(DATA + 0x1000, 100));
    got.extend(guest.read(DATA + 0x2000, 62));
    assert_eq!(got, expected);
}

#[test]
fn mergeable_buffers_too_few_for_a_frame_are_given_back_until_more_come() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, MRG | FEATURE_EVENT_IDX);
    rx_chains(&rxq, 0, 2, 100);
    rig.wire.send(&frame(0, 250)).unwrap();
    assert!(!rig.net.process_rx().unwrap());
    assert!(guest.used(RX_USED).is_empty());
    // A kick is wanted for the next buffer, past the two taken and given back.
    assert_eq!(guest.avail_event(RX_USED), 2);
    rx_chains(&rxq, 2, 1, 100);
    assert!(rig.net.process_rx().unwrap());
    assert_eq!(guest.used(RX_USED), [(0, 100), (1, 100), (2, 62)]);
    assert_eq!(guest.load_u16(DATA + 10), 3);
}

#[test]
fn without_mergeable_buffers_a_frame_too_large_is_dropped_and_the_chain_kept() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    rx_chains(&rxq, 0, 1, 100);
    rig.wire.send(&frame(0, 250)).unwrap();
    rig.wire.send(&frame(0, 50)).unwrap();
    rig.net.process_rx().unwrap();
    assert_eq!(guest.used(RX_USED), [(0, 62)]);
    assert_eq!(rig.net.stats().rx_fails(), 1);
    assert_eq!(rig.net.stats().rx_packets(), 1);
}

#[test]
fn event_idx_interrupts_only_when_the_driver_asks() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, FEATURE_EVENT_IDX);
    guest.set_used_event(&txq, 0);
    tx_chain(&guest, &txq);
    assert!(rig.net.process_tx().unwrap());
    assert_eq!(rig.irq.read().unwrap(), 1);
    assert_eq!(guest.avail_event(TX_USED), 1);
    // The driver has not moved used_event: the next frame needs no interrupt.
    let descs = [desc(DATA, 12, N, 3), desc(DATA + 0x800, 100, 0, 0)];
    txq.add_desc_chains(&descs, 2).unwrap();
    assert!(!rig.net.process_tx().unwrap());
    assert!(rig.irq.read().is_err());
    assert_eq!(guest.used(TX_USED).len(), 2);
    assert_eq!(rig.net.stats().tx_packets(), 2);
}

#[test]
fn offloads_follow_the_accepted_guest_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |acc, bit| acc | 1 << bit);
    assert_eq!(tap_offload_flags(0), 0);
    // Segmentation without checksum offload is not valid: nothing is enabled.
    assert_eq!(tap_offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    assert_eq!(
        tap_offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM])),
        libc::TUN_F_CSUM
    );
    let all = f(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_CSUM,
    ]);
    let tun_all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
    assert_eq!(tap_offload_flags(all), tun_all);

    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let rig = guest.net(&rxq, &txq, all);
    assert_eq!(rig.wire.offload(), tun_all);
}

#[test]
fn features_and_config_space_describe_the_interface() {
    let (io, _wire) = SocketIo::pair().unwrap();
    let net = Net::with_frame_io(Box::new(io), config(None)).unwrap();
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), [256, 256]);
    assert_eq!(net.queue_events().len(), 2);
    let features = net.avail_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ] {
        assert_ne!(features & 1 << bit, 0, "bit {bit}");
    }
    assert_eq!(
        features & (FEATURE_VERSION_1 | FEATURE_EVENT_IDX),
        FEATURE_VERSION_1 | FEATURE_EVENT_IDX
    );
    assert_eq!(features & 1 << VIRTIO_NET_F_MTU, 0);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut fields = [0u8; 6];
    net.read_config(6, &mut fields);
    // status LINK_UP, one queue pair, no MTU.
    assert_eq!(fields, [1, 0, 1, 0, 0, 0]);
    for (offset, len) in [(10, 4), (12, 1), (u64::MAX, 2)] {
        let mut data = vec![0xffu8; len];
        net.read_config(offset, &mut data);
        assert!(data.iter().all(|b| *b == 0), "offset {offset}");
    }

    let (io, _wire) = SocketIo::pair().unwrap();
    let net = Net::with_frame_io(Box::new(io), config(Some(1400))).unwrap();
    assert_ne!(net.avail_features() & 1 << VIRTIO_NET_F_MTU, 0);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1400);
}

#[test]
fn activation_needs_exactly_two_queues() {
    let guest = Guest::new();
    let vq = guest.rxq();
    let (io, _wire) = SocketIo::pair().unwrap();
    let mut net = Net::with_frame_io(Box::new(io), config(None)).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    for count in [1, 3] {
        let queues = (0..count).map(|_| vq.create_queue().unwrap()).collect();
        let result = net.activate(guest.mem.clone(), queues, irq.clone());
        assert!(matches!(
            result,
            Err(ActivateError::QueueCount { expected: 2, actual }) if actual == count
        ));
    }
    assert_eq!(counter(&net, "activate_fails"), 2);
}

/// The value of the metrics counter `name`.
fn counter(net: &Net, name: &str) -> u64 {
    let stats = net.stats();
    let snapshot = stats.snapshot();
    snapshot.iter().find(|(n, _)| *n == name).unwrap().1
}

/// A backend whose writes take at least a millisecond.
#[derive(Debug)]
struct SlowWrites(SocketIo);

impl std::os::fd::AsRawFd for SlowWrites {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for SlowWrites {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_frame(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(1));
        self.0.write_frame(frame)
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        self.0.set_offload(flags)
    }
}

#[test]
fn counts_tap_reads_missing_buffers_queue_depth_config_writes_and_tap_latency() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let (io, wire) = SocketIo::pair().unwrap();
    let io = Box::new(SlowWrites(io));
    let (mut net, _irq) = guest.net_on(io, queues(&rxq, &txq, false), 0);
    // Read from the tap, then kept: the guest posted no receive buffer for it.
    wire.send(&frame(0, 60)).unwrap();
    net.process_rx().unwrap();
    assert_eq!(counter(&net, "rx_count"), 1);
    assert_eq!(counter(&net, "no_rx_avail_buffer"), 1);
    assert_eq!(counter(&net, "rx_packets_count"), 0);
    // A transmit kick with nothing to send, then the same chain made available twice: the
    // first taken with one behind it.
    net.process_tx().unwrap();
    assert_eq!(counter(&net, "no_tx_avail_buffer"), 1);
    tx_chain(&guest, &txq);
    tx_chain(&guest, &txq);
    net.process_tx().unwrap();
    assert_eq!(counter(&net, "tx_count"), 2);
    assert_eq!(counter(&net, "tx_remaining_reqs_count"), 1);
    // Sent all the same, but counted: the test frame's source MAC is not the guest's.
    assert_eq!(counter(&net, "tx_spoofed_mac_count"), 2);
    assert_eq!(wire.recv().unwrap(), wire.recv().unwrap());
    assert_eq!(counter(&net, "no_tx_avail_buffer"), 1);
    let stats = net.stats();
    let [(name, writes)] = stats.latencies();
    assert_eq!(name, "tap_write_agg");
    assert!(writes.min_us() >= 1000, "{writes:?}");
    assert!(
        writes.sum_us() >= writes.min_us() + writes.max_us(),
        "{writes:?}"
    );
    // The MAC is read-only to the guest: a write changes nothing and is counted.
    net.write_config(0, &[0xff; 6]);
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!((mac, counter(&net, "cfg_fails")), (MAC, 1));
}

#[test]
fn a_restored_device_delivers_the_pending_frame_and_sends_to_its_new_tap() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, MRG);
    let received = frame(0, 60);
    rig.wire.send(&received).unwrap();
    rig.net.process_rx().unwrap();
    assert!(rig.net.rx.has_pending());
    let state = rig.net.save();
    assert_eq!(state.pending_frame.as_deref(), Some(&received[..]));
    let (io, wire) = SocketIo::pair().unwrap();
    let mut net = Net::with_frame_io(Box::new(io), config(None)).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    net.restore(&state, guest.mem.clone(), interrupt).unwrap();
    assert_eq!(net.save(), state);
    rx_chains(&rxq, 0, 1, 2048);
    assert!(net.process_rx().unwrap());
    assert_eq!(guest.used(RX_USED), [(0, 72)]);
    let mut expected = received;
    expected[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(guest.read(DATA, 72), expected);
    let sent = tx_chain(&guest, &txq);
    net.process_tx().unwrap();
    assert_eq!(wire.recv().unwrap(), sent);
    assert!(rig.wire.recv().is_none());

    let mut foreign = state.clone();
    foreign.acked_features |= 1 << 41;
    let mut short = state.clone();
    short.pending_frame = Some(vec![0; VNET_HDR_LEN]);
    let mut inactive = state;
    inactive.queues = None;
    for (bad, expected) in [
        (foreign, "offers"),
        (short, "pending frame of 12 bytes"),
        (inactive, "not active"),
    ] {
        let (io, _wire) = SocketIo::pair().unwrap();
        let mut net = Net::with_frame_io(Box::new(io), config(None)).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let error = net.restore(&bad, guest.mem.clone(), interrupt).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn a_reset_device_ignores_its_queues_and_forgets_the_pending_frame() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    rig.wire.send(&frame(0, 60)).unwrap();
    rig.net.process_rx().unwrap();
    assert!(rig.net.rx.has_pending());
    rig.net.reset();
    assert!(!rig.net.rx.has_pending());
    assert_eq!(rig.net.stats().rx_fails(), 1);
    tx_chain(&guest, &txq);
    rx_chains(&rxq, 0, 1, 2048);
    assert!(!rig.net.process_tx().unwrap());
    assert!(!rig.net.process_rx().unwrap());
    assert!(guest.used(TX_USED).is_empty());
    assert!(rig.wire.recv().is_none());
}

#[test]
fn the_event_loop_stops_reading_the_tap_while_the_guest_has_no_buffers() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let rig = guest.net(&rxq, &txq, 0);
    let (wire, irq) = (rig.wire, rig.irq);
    let net = Arc::new(Mutex::new(rig.net));
    let rx_kick = net.lock().unwrap().queue_events()[0].try_clone().unwrap();
    let tx_kick = net.lock().unwrap().queue_events()[1].try_clone().unwrap();
    let mut event_manager = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    event_manager.add_subscriber(net.clone());
    // The device is active: the tap is watched. A frame without buffers is read and held,
    // and the tap no longer watched.
    wire.send(&frame(0, 60)).unwrap();
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    assert!(net.lock().unwrap().rx.has_pending());
    wire.send(&frame(0, 61)).unwrap();
    assert_eq!(event_manager.run_with_timeout(50).unwrap(), 0);
    // A kick without buffers changes nothing.
    rx_kick.write(1).unwrap();
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(event_manager.run_with_timeout(50).unwrap(), 0);
    // Buffers and a kick: the held frame arrives, and the one still in the tap after it.
    rx_chains(&rxq, 0, 2, 2048);
    rx_kick.write(1).unwrap();
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(guest.used(RX_USED), [(0, 72), (1, 73)]);
    assert_eq!(irq.read().unwrap(), 1);
    // With a buffer left, a new frame comes in through the tap event.
    rx_chains(&rxq, 2, 1, 2048);
    wire.send(&frame(0, 62)).unwrap();
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(guest.used(RX_USED).len(), 3);
    // Transmit kicks work too.
    tx_chain(&guest, &txq);
    tx_kick.write(1).unwrap();
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    assert!(wire.recv().is_some());
    let net = net.lock().unwrap();
    let events = [
        "rx_tap_event_count",
        "rx_queue_event_count",
        "tx_queue_event_count",
    ];
    let counts = events.map(|name| counter(&net, name));
    assert_eq!(counts, [2, 2, 1]);
    assert_eq!(counter(&net, "event_fails"), 0);
}

/// A backend that is always readable and fails every read, as a tap whose interface is gone.
#[derive(Debug)]
struct Broken(EventFd);

impl std::os::fd::AsRawFd for Broken {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for Broken {
    fn read_frame(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(libc::EBADFD))
    }

    fn write_frame(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::EBADFD))
    }

    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }
}

#[test]
fn the_event_loop_lets_go_of_a_backend_that_fails() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let readable = EventFd::new(EFD_NONBLOCK).unwrap();
    readable.write(1).unwrap();
    let mut net = Net::with_frame_io(Box::new(Broken(readable)), config(None)).unwrap();
    let mut queues: Vec<Queue> = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    for (queue, used) in queues.iter_mut().zip([RX_USED, TX_USED]) {
        queue.set_used_ring_address(Some(used as u32), Some(0));
    }
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    net.activate(guest.mem.clone(), queues, irq).unwrap();
    let net = Arc::new(Mutex::new(net));
    let mut event_manager = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    event_manager.add_subscriber(net.clone());
    assert_eq!(event_manager.run_with_timeout(1000).unwrap(), 1);
    // Still readable, no longer watched: the loop does not spin on it.
    assert_eq!(event_manager.run_with_timeout(50).unwrap(), 0);
    // Transmit goes on, dropping what the backend refuses.
    let mut net = net.lock().unwrap();
    tx_chain(&guest, &txq);
    net.process_tx().unwrap();
    assert_eq!(net.stats().tap_write_fails(), 1);
    assert_eq!(net.stats().tx_malformed_frames(), 0);
    assert_eq!(counter(&net, "tap_read_fails"), 1);
}
