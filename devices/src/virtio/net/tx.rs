//! The transmit path: each chain the guest makes available is one frame, virtio-net header
//! first, written whole to the tap.
//!
//! A chain that is not a frame (device-writable buffers, shorter than the header, longer than
//! the largest frame, outside guest memory) is dropped. So is a frame the tap refuses, also
//! when its queue is full (EAGAIN): the guest's TCP retransmits, whereas holding the chain
//! would need a wake-up when the tap drains, and a driver waiting for its buffers could stall.
//! Every chain goes back with used length 0, as the device writes nothing into it.

use std::io;

use crate::GuestMemoryMmap;
use virtio_queue::Queue;

use super::ring;
use super::{FrameIo, NetError, NetStats, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::chain;
use crate::virtio::guest_queue::{drain_queue, Drain, GuestErrors};

/// A transmit chain holds the virtio-net header and at most the largest frame.
const GATHER_LIMITS: (usize, usize) = (VNET_HDR_LEN, VNET_HDR_LEN + MAX_FRAME_LEN);

/// The transmit side: the buffer a frame is gathered into, the guest's MAC when frames from
/// another one are counted, and the tap write failures so far.
#[derive(Debug, Default)]
pub struct Tx {
    frame: Vec<u8>,
    guest_mac: Option<[u8; 6]>,
    write_errors: u64,
    /// The rate limit of this device's tap write failure lines.
    write_error_log: throttled_log::CallSite,
}

impl Tx {
    /// A transmit side that counts frames not sent from `guest_mac`, if given.
    pub fn new(guest_mac: Option<[u8; 6]>) -> Self {
        Self {
            guest_mac,
            ..Self::default()
        }
    }

    /// Sends the chains the driver has made available, up to the work budget. Sets `used_any`
    /// once a chain is in the used ring.
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        io: &mut dyn FrameIo,
        stats: &NetStats,
        guest_errors: &mut GuestErrors,
        used_any: &mut bool,
    ) -> Result<Drain, NetError> {
        drain_queue(queue, mem, |queue, chain, behind| {
            let head = chain.head_index();
            stats.took_tx_chain(behind);
            match chain::gather(mem, chain, GATHER_LIMITS, &mut self.frame) {
                Ok(()) => {
                    self.check_source(stats);
                    self.send(io, stats);
                }
                Err(e) => {
                    guest_errors.record(&e);
                    stats.tx_malformed();
                }
            }
            ring::publish_used(queue, mem, &[(head, 0)], guest_errors)?;
            *used_any = true;
            Ok(())
        })
    }

    /// Counts the gathered frame if its source MAC is not the guest's (a frame too short to
    /// have one is not counted, as in Firecracker).
    fn check_source(&self, stats: &NetStats) {
        let Some(mac) = self.guest_mac else {
            return;
        };
        let source = self.frame.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12);
        if source.is_some_and(|source| source != mac) {
            stats.tx_spoofed();
        }
    }

    /// Writes the gathered frame to the tap.
    fn send(&mut self, io: &mut dyn FrameIo, stats: &NetStats) {
        let result = stats.tap_write_took().time(|| loop {
            match io.write_frame(&self.frame) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => break result,
            }
        });
        match result {
            Ok(()) => stats.tx_sent(self.frame.len().saturating_sub(VNET_HDR_LEN)),
            Err(e) => {
                stats.tap_write_failed();
                self.write_errors = self.write_errors.saturating_add(1);
                let n = self.write_errors;
                throttled_log::throttled_log!(
                    site = &self.write_error_log,
                    log::Level::Warn,
                    "virtio-net: dropped a frame the tap refused: {e} ({n} so far)"
                );
            }
        }
    }
}
