//! Test doubles for virtio-net, shared by the unit tests and the fuzz targets in `fuzz/`: a
//! frame backend on a datagram socket pair standing in for the tap, and the fuzz body that runs
//! a [`Net`] on queues made of untrusted bytes. Built only for tests or with the `test-utils`
//! feature.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::QUEUE_SIZE;
use super::{FrameIo, Net, NetConfig, NetStats, TapError, VNET_HDR_LEN};
use crate::virtio::{Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1};

/// A [`FrameIo`] on one end of a datagram socket pair, which keeps frame boundaries and has a
/// real fd for the event loop, as a tap does.
#[derive(Debug)]
pub struct SocketIo {
    sock: UnixDatagram,
    offload: Arc<AtomicU32>,
}

/// The other end of a [`SocketIo`]: the network the guest talks to.
#[derive(Debug)]
pub struct Wire {
    sock: UnixDatagram,
    offload: Arc<AtomicU32>,
}

impl SocketIo {
    /// A frame backend and the wire at its other end; both non-blocking.
    pub fn pair() -> io::Result<(SocketIo, Wire)> {
        let (a, b) = UnixDatagram::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        let offload = Arc::new(AtomicU32::new(u32::MAX));
        let io = SocketIo {
            sock: a,
            offload: offload.clone(),
        };
        Ok((io, Wire { sock: b, offload }))
    }
}

impl AsRawFd for SocketIo {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl FrameIo for SocketIo {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sock.send(frame).map(drop)
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        self.offload.store(flags, Ordering::SeqCst);
        Ok(())
    }
}

impl Wire {
    /// Sends a frame (header included) towards the guest.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.sock.send(frame).map(drop)
    }

    /// The next frame the guest sent, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; VNET_HDR_LEN + super::MAX_FRAME_LEN + 1];
        let len = self.sock.recv(&mut buf).ok()?;
        buf.truncate(len);
        Some(buf)
    }

    /// The offload flags last set, or `u32::MAX` if never.
    pub fn offload(&self) -> u32 {
        self.offload.load(Ordering::SeqCst)
    }
}

/// Guest memory size of the fuzz body.
pub const FUZZ_MEM_SIZE: usize = 0x6000;
/// Where the fuzz body puts the rings of the receive queue: available ring, descriptor table
/// (room for 256 entries), used ring. The available ring comes first so that short inputs
/// reach it; not at 0, which virtio-queue takes for "not set up".
pub const FUZZ_RX_RINGS: [u64; 3] = [0x10, 0x220, 0x1400];
/// The rings of the transmit queue, in the same order.
pub const FUZZ_TX_RINGS: [u64; 3] = [0x1c10, 0x2000, 0x3000];
/// Where the rest of guest memory, free for frame buffers, starts.
pub const FUZZ_DATA: u64 = 0x3810;
/// Frame lengths (header excluded) the fuzz body sends towards the guest.
const FUZZ_FRAME_LENS: [usize; 4] = [60, 1514, 9000, super::MAX_FRAME_LEN];

/// Runs a network device on queues made of untrusted bytes; it must neither panic nor hang,
/// nor deliver or send more frames than there were. Returns the device's counters, if it
/// got as far as running.
///
/// `input[0]` chooses the set-up: bits 0-3 the queue size (`1 << (bits % 9)`), bit 4
/// EVENT_IDX, bit 5 mergeable receive buffers, bit 6 checksum offload. `input[1]` the frames
/// waiting on the tap: bits 0-1 how many, then two bits per frame choosing its length from 60,
/// 1514, 9000 and 65550 bytes. The remaining bytes are guest memory from address 0, with the
/// rings at [`FUZZ_RX_RINGS`] and [`FUZZ_TX_RINGS`] and buffers anywhere.
pub fn fuzz_net_queues(input: &[u8]) -> Option<Arc<NetStats>> {
    let (Some(&setup), Some(&frames)) = (input.first(), input.get(1)) else {
        return None;
    };
    let image = input.get(2..).unwrap_or_default();
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), FUZZ_MEM_SIZE)]) else {
        return None;
    };
    let image = image
        .get(..image.len().min(FUZZ_MEM_SIZE))
        .unwrap_or_default();
    let (Some(rx), Some(tx)) = (
        fuzz_queue(&mem, setup, FUZZ_RX_RINGS),
        fuzz_queue(&mem, setup, FUZZ_TX_RINGS),
    ) else {
        return None;
    };
    let (Ok(()), Ok((io, wire)), Ok(evt)) = (
        mem.write_slice(image, GuestAddress(0)),
        SocketIo::pair(),
        EventFd::new(EFD_NONBLOCK),
    ) else {
        return None;
    };
    let config = NetConfig {
        mac: [2, 0, 0, 0, 0, 1],
        mtu: None,
        count_spoofed: true,
    };
    let Ok(mut net) = Net::with_frame_io(Box::new(io), config) else {
        return None;
    };
    let mut features = FEATURE_VERSION_1;
    for (bit, feature) in [
        (0x10, FEATURE_EVENT_IDX),
        (0x20, 1 << VIRTIO_NET_F_MRG_RXBUF),
        (0x40, 1 << VIRTIO_NET_F_GUEST_CSUM),
    ] {
        if setup & bit != 0 {
            features |= feature;
        }
    }
    net.set_acked_features(features);
    if net
        .activate(mem, vec![rx, tx], Arc::new(Interrupt::new(evt)))
        .is_err()
    {
        return None;
    }
    let count = usize::from(frames & 3);
    let mut sent = 0u64;
    for i in 0..count {
        let len = FUZZ_FRAME_LENS
            .get(usize::from(frames >> (2 + 2 * i) & 3))
            .copied()
            .unwrap_or(60);
        let frame: Vec<u8> = (0..VNET_HDR_LEN + len).map(|b| b as u8).collect();
        // A full socket buffer only means fewer frames.
        if wire.send(&frame).is_ok() {
            sent += 1;
        }
    }
    // Errors are expected: the input is garbage more often than not. Twice each: the second
    // pass must cope with whatever the first left in the rings.
    for _ in 0..2 {
        let _ = net.process_tx();
        let _ = net.process_rx();
    }
    let stats = net.stats();
    assert!(
        stats.rx_packets() + stats.rx_fails() <= sent,
        "more frames received than sent"
    );
    let mut on_wire = 0;
    while wire.recv().is_some() {
        on_wire += 1;
    }
    assert_eq!(
        on_wire,
        stats.tx_packets(),
        "frames sent and counted differ"
    );
    Some(stats)
}

/// A queue the fuzz body drives, as a transport would hand it over after checking it.
fn fuzz_queue(mem: &GuestMemoryMmap, setup: u8, rings: [u64; 3]) -> Option<Queue> {
    let [avail, desc, used] = rings;
    let mut queue = Queue::new(QUEUE_SIZE).ok()?;
    queue.try_set_size(1 << ((setup & 0xf) % 9)).ok()?;
    queue.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    queue.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    queue.try_set_used_ring_address(GuestAddress(used)).ok()?;
    queue.set_event_idx(setup & 0x10 != 0);
    queue.set_ready(true);
    queue.is_valid(mem).then_some(queue)
}

#[cfg(test)]
mod tests;
