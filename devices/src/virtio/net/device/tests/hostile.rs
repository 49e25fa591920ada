//! One test per way a hostile or broken driver can get a chain wrong, each asserting the exact
//! outcome: the used entries, the counters, nothing sent or delivered that should not be, and
//! the queue still working afterwards.

use super::*;

/// Offers the receive chain `descs` at descriptor 0 and a good 2 KiB chain after it, sends
/// one frame, and returns the used entries.
fn receive_after(descs: &[RawDescriptor], features: u64) -> (Vec<(u32, u32)>, Arc<NetStats>) {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, features);
    rxq.add_desc_chains(descs, 0).unwrap();
    let good = u16::try_from(descs.len()).unwrap();
    rx_chains(&rxq, good, 1, 2048);
    rig.wire.send(&frame(0, 100)).unwrap();
    rig.net.process_rx().unwrap();
    (guest.used(RX_USED), rig.net.stats())
}

#[test]
fn a_receive_chain_too_short_for_the_header_goes_back_empty() {
    for features in [0, MRG] {
        let (used, stats) = receive_after(&[desc(DATA, 8, W, 0)], features);
        assert_eq!(used, [(0, 0), (1, 112)], "features {features:#x}");
        assert_eq!(stats.rx_packets(), 1);
    }
}

#[test]
fn a_device_readable_receive_chain_goes_back_empty() {
    let descs = [desc(DATA, 2048, W | N, 1), desc(DATA + 0x800, 64, 0, 0)];
    let (used, _) = receive_after(&descs, 0);
    assert_eq!(used, [(0, 0), (2, 112)]);
}

#[test]
fn a_receive_buffer_outside_guest_memory_goes_back_empty() {
    for addr in [MEM_SIZE - 16, u64::MAX - 8] {
        let (used, _) = receive_after(&[desc(addr, 2048, W, 0)], MRG);
        assert_eq!(used, [(0, 0), (1, 112)], "addr {addr:#x}");
    }
}

#[test]
fn a_looping_receive_chain_goes_back_empty() {
    let descs = [desc(DATA, 2048, W | N, 1), desc(DATA + 0x800, 64, W | N, 0)];
    let (used, _) = receive_after(&descs, 0);
    assert_eq!(used, [(0, 0), (2, 112)]);
}

#[test]
fn a_broken_chain_after_a_good_one_costs_the_merged_frame() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, MRG);
    let descs = [desc(DATA, 64, W, 0), desc(DATA + 0x1000, 64, 0, 0)];
    rxq.add_desc_chains(&descs, 0).unwrap();
    rig.wire.send(&frame(0, 100)).unwrap();
    rig.net.process_rx().unwrap();
    assert_eq!(guest.used(RX_USED), [(0, 0), (1, 0)]);
    assert_eq!(rig.net.stats().rx_fails(), 1);
    // The queue still works.
    rx_chains(&rxq, 2, 1, 2048);
    rig.wire.send(&frame(0, 100)).unwrap();
    rig.net.process_rx().unwrap();
    assert_eq!(guest.used(RX_USED).last(), Some(&(2, 112)));
}

#[test]
fn a_broken_chain_before_too_few_buffers_is_returned_once() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, MRG);
    // A broken chain, then one good buffer too small for the frame: the frame waits.
    let descs = [desc(DATA, 8, W, 0), desc(DATA + 0x1000, 100, W, 0)];
    rxq.add_desc_chains(&descs, 0).unwrap();
    rig.wire.send(&frame(0, 150)).unwrap();
    rig.net.process_rx().unwrap();
    assert_eq!(guest.used(RX_USED), [(0, 0)]);
    assert!(rig.net.rx.has_pending());
    // More buffers: the frame goes into the good ones, and the broken chain is not used again.
    rx_chains(&rxq, 2, 1, 100);
    rig.net.process_rx().unwrap();
    assert_eq!(guest.used(RX_USED), [(0, 0), (1, 100), (2, 62)]);
}

/// Offers the transmit chain `descs` at descriptor 0 and a good chain after it; returns the
/// used entries and the frames on the wire.
fn transmit_before_good(descs: &[RawDescriptor]) -> (Vec<(u32, u32)>, Vec<Vec<u8>>, u64) {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    txq.add_desc_chains(descs, 0).unwrap();
    let good = u16::try_from(descs.len()).unwrap();
    guest.write(DATA + 0x4000, &frame(0, 40));
    txq.add_desc_chains(&[desc(DATA + 0x4000, 52, 0, 0)], good)
        .unwrap();
    rig.net.process_tx().unwrap();
    let frames = std::iter::from_fn(|| rig.wire.recv()).collect();
    (
        guest.used(TX_USED),
        frames,
        rig.net.stats().tx_malformed_frames(),
    )
}

#[test]
fn a_device_writable_transmit_chain_is_dropped() {
    let descs = [desc(DATA, 12, N, 1), desc(DATA + 0x800, 100, W, 0)];
    let (used, frames, drops) = transmit_before_good(&descs);
    assert_eq!(used, [(0, 0), (2, 0)]);
    assert_eq!(frames, [frame(0, 40)]);
    assert_eq!(drops, 1);
}

#[test]
fn a_transmit_chain_shorter_than_the_header_is_dropped() {
    let (used, frames, drops) = transmit_before_good(&[desc(DATA, 11, 0, 0)]);
    assert_eq!(used, [(0, 0), (1, 0)]);
    assert_eq!(frames, [frame(0, 40)]);
    assert_eq!(drops, 1);
}

#[test]
fn a_transmit_chain_longer_than_the_largest_frame_is_dropped() {
    let max = (VNET_HDR_LEN + crate::virtio::net::MAX_FRAME_LEN) as u32;
    let descs = [desc(DATA, 12, N, 1), desc(DATA + 0x1000, max - 11, 0, 0)];
    let (used, frames, drops) = transmit_before_good(&descs);
    assert_eq!(used, [(0, 0), (2, 0)]);
    assert_eq!(frames, [frame(0, 40)]);
    assert_eq!(drops, 1);
}

#[test]
fn a_transmit_buffer_outside_guest_memory_is_dropped() {
    for addr in [MEM_SIZE - 50, u64::MAX - 4] {
        let descs = [desc(DATA, 12, N, 1), desc(addr, 100, 0, 0)];
        let (used, frames, drops) = transmit_before_good(&descs);
        assert_eq!(used, [(0, 0), (2, 0)], "addr {addr:#x}");
        assert_eq!(frames, [frame(0, 40)]);
        assert_eq!(drops, 1);
    }
}

#[test]
fn a_transmit_head_out_of_range_is_skipped() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    tx_chain(&guest, &txq);
    // The avail entry names descriptor 40 of a 16-entry table.
    guest
        .mem
        .write_obj(40u16, GuestAddress(txq.avail_addr().0 + 4))
        .unwrap();
    rig.net.process_tx().unwrap();
    assert!(guest.used(TX_USED).is_empty());
    assert_eq!(rig.net.stats().tx_malformed_frames(), 1);
    assert!(rig.wire.recv().is_none());
}

#[test]
fn an_avail_index_beyond_the_queue_is_an_error_not_a_spin() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, 0);
    for vq in [&rxq, &txq] {
        guest
            .mem
            .write_obj(100u16, GuestAddress(vq.avail_addr().0 + 2))
            .unwrap();
    }
    assert!(matches!(
        rig.net.process_tx(),
        Err(NetError::AvailIndex { .. })
    ));
    rig.wire.send(&frame(0, 60)).unwrap();
    assert!(matches!(
        rig.net.process_rx(),
        Err(NetError::AvailIndex { .. })
    ));
}

#[test]
fn a_frame_larger_than_a_whole_ring_of_mergeable_buffers_is_dropped() {
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let mut rig = guest.net(&rxq, &txq, MRG);
    rx_chains(&rxq, 0, QUEUE_LEN, 16);
    rig.wire.send(&frame(0, 1000)).unwrap();
    rig.wire.send(&frame(0, 100)).unwrap();
    rig.net.process_rx().unwrap();
    // The big frame is gone; the small one took the buffers it needed.
    assert_eq!(rig.net.stats().rx_fails(), 1);
    let used = guest.used(RX_USED);
    assert_eq!(used.len(), 7);
    assert_eq!(used.iter().map(|(_, len)| len).sum::<u32>(), 112);
    assert_eq!(guest.load_u16(DATA + 10), 7);
}

/// A backend that always has another frame, as a tap under a flood: counts what it hands out.
#[derive(Debug)]
struct Flood {
    evt: EventFd,
    frames: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::os::fd::AsRawFd for Flood {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.evt.as_raw_fd()
    }
}

impl FrameIo for Flood {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.frames
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let frame = frame(0, 1000);
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }
    fn write_frame(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }
}

#[test]
fn transmit_rings_that_rewrite_each_other_cost_one_budget_per_notification() {
    use crate::virtio::guest_queue::test_support::{overlapping_queue, within_seconds};
    let guest = Guest::new();
    let (io, _wire) = SocketIo::pair().unwrap();
    let rx = overlapping_queue(QUEUE_LEN, 0x2_0000);
    let tx = overlapping_queue(QUEUE_LEN, 0x3_0000);
    let (net, _irq) = guest.net_on(Box::new(io), vec![rx, tx], 0);
    let evt = net.queue_events()[1].try_clone().unwrap();
    let mut net = net;
    let result = within_seconds(move || net.process_tx().map(drop).map_err(|e| e.to_string()))
        .expect("the transmit loop did not return");
    result.unwrap();
    assert_eq!(
        evt.read().unwrap(),
        1,
        "the device asked to be called again"
    );
}

#[test]
fn a_flood_of_frames_costs_one_budget_per_notification() {
    use crate::virtio::guest_queue::test_support::within_seconds;
    let guest = Guest::new();
    let (rxq, txq) = (guest.rxq(), guest.txq());
    let frames = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood = Flood {
        evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        frames: frames.clone(),
    };
    let queues = [(&rxq, RX_USED), (&txq, TX_USED)].map(|(vq, used)| {
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue
    });
    let (net, _irq) = guest.net_on(Box::new(flood), queues.into(), 0);
    // One buffer too small for any frame: each is dropped and the buffer kept for the next.
    rx_chains(&rxq, 0, 1, 64);
    let evt = net.queue_events()[0].try_clone().unwrap();
    let mut net = net;
    let stats = net.stats();
    let result = within_seconds(move || net.process_rx().map(drop).map_err(|e| e.to_string()))
        .expect("the receive loop did not return");
    result.unwrap();
    let taken = frames.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(taken, usize::from(QUEUE_LEN));
    assert_eq!(stats.rx_fails(), taken as u64);
    assert_eq!(
        evt.read().unwrap(),
        1,
        "the device asked to be called again"
    );
}
