//! The receive path: frames from the tap into the guest's receive buffers.
//!
//! A frame is read from the tap only to be delivered. When the guest has posted too few buffers
//! for it, the frame stays here as the pending frame, the chains already taken are given back to
//! the available ring, and the device stops watching the tap until the driver posts more
//! buffers and kicks the queue. No frame is dropped for want of buffers.
//!
//! With mergeable buffers a frame fills as many chains as it needs, each gets a used entry, and
//! `num_buffers` in the header tells the driver how many. Without them a frame must fit one
//! chain; one that does not is dropped and the chain kept for the next frame. So is a frame
//! larger than a whole ring of mergeable buffers.

use std::io;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::ring;
use super::{FrameIo, NetError, NetStats, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::chain::RxBuffers;
use crate::virtio::guest_queue::{check_avail_index, work_budget, Drain, GuestErrors};

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What became of a frame.
enum Outcome {
    /// In the used ring.
    Delivered,
    /// Dropped: it cannot be delivered into the buffers the driver posts.
    Dropped,
    /// Kept: the driver has not posted enough buffers yet.
    Deferred,
    /// Kept: the ring kept changing under the device for longer than the work budget.
    Yielded,
}

/// The receive side: a frame buffer, and whether it holds a frame not yet delivered.
#[derive(Debug)]
pub struct Rx {
    buf: Vec<u8>,
    pending: Option<usize>,
}

impl Rx {
    pub fn new() -> Self {
        Self {
            buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            pending: None,
        }
    }

    /// Whether a frame waits for receive buffers; the tap is not read meanwhile.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The pending frame, header first, for a snapshot.
    pub fn pending(&self) -> Option<&[u8]> {
        self.pending.and_then(|len| self.buf.get(..len))
    }

    /// Makes `frame` (header first) the pending frame, as a snapshot saved it; false if no
    /// frame from the tap could be that long or that short.
    pub fn restore_pending(&mut self, frame: &[u8]) -> bool {
        let Some(dst) = self.buf.get_mut(..frame.len()) else {
            return false;
        };
        if frame.len() <= VNET_HDR_LEN {
            return false;
        }
        dst.copy_from_slice(frame);
        self.pending = Some(frame.len());
        true
    }

    /// Forgets the pending frame (on a device reset); returns whether there was one.
    pub fn discard_pending(&mut self) -> bool {
        self.pending.take().is_some()
    }

    /// Delivers the pending frame, then frames from `io` until it has none, the guest has no
    /// buffers left, or the work budget (a ring's worth of frames) is spent. Sets `used_any`
    /// once something is in the used ring.
    #[allow(clippy::too_many_arguments)]
    pub fn process(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        io: &mut dyn FrameIo,
        mergeable: bool,
        stats: &NetStats,
        guest_errors: &mut GuestErrors,
        used_any: &mut bool,
    ) -> Result<Drain, NetError> {
        // Kicks are only needed once the buffers run out; `deliver` turns them back on then.
        queue.disable_notification(mem).map_err(NetError::Queue)?;
        let mut budget = work_budget(queue);
        loop {
            let Some(left) = budget.checked_sub(1) else {
                return Ok(Drain::Yielded);
            };
            budget = left;
            let len = match self.pending {
                Some(len) => len,
                None => match io.read_frame(&mut self.buf) {
                    // End of file: the backend is gone, and would read as empty forever.
                    Ok(0) => {
                        stats.tap_read_failed();
                        return Err(NetError::TapRead(io::ErrorKind::UnexpectedEof.into()));
                    }
                    Ok(len) => {
                        stats.tap_read();
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Drain::Done),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        stats.tap_read_failed();
                        return Err(NetError::TapRead(e));
                    }
                },
            };
            self.pending = Some(len);
            let Some(frame) = self.buf.get_mut(..len).filter(|f| f.len() > VNET_HDR_LEN) else {
                // The tap always sends a header; a frame without one means a broken backend.
                self.pending = None;
                stats.rx_failed();
                continue;
            };
            match deliver(queue, mem, frame, mergeable, guest_errors, used_any)? {
                Outcome::Delivered => stats.rx_delivered(len - VNET_HDR_LEN),
                Outcome::Dropped => stats.rx_failed(),
                Outcome::Deferred => {
                    stats.no_rx_buffers();
                    return Ok(Drain::Done);
                }
                Outcome::Yielded => return Ok(Drain::Yielded),
            }
            self.pending = None;
        }
    }
}

/// Puts `frame` (header first) into the next receive chains.
fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    mergeable: bool,
    guest_errors: &mut GuestErrors,
    used_any: &mut bool,
) -> Result<Outcome, NetError> {
    // Where the chains this frame takes begin: the frame gives them back by rewinding here.
    let mut start = queue.next_avail();
    let needed = frame.len() as u64;
    let mut chains: Vec<(u16, RxBuffers)> = Vec::new();
    let mut capacity = 0u64;
    // Looks at an empty ring after re-enabling notifications; the driver can make those fail
    // forever by moving the index under the device, so they are bounded.
    let mut looks = work_budget(queue);
    while capacity < needed {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            check_avail_index(queue, mem)?;
            // Ask for a kick at the next buffer the driver posts. Turned on before giving the
            // taken chains back: virtio-queue asks for the kick at `next_avail`. It must be
            // re-armed every time the ring runs dry: with EVENT_IDX the driver kicks only when
            // its index crosses `avail_event`, so an event index left behind by buffers that
            // arrived meanwhile would never be crossed again and receive would stall for good.
            // A retry that takes another chain moves towards a full ring, which ends the loop
            // below; one that finds none costs one of the `looks`.
            if queue.enable_notification(mem).map_err(NetError::Queue)? {
                if let Some(left) = looks.checked_sub(1) {
                    looks = left;
                    continue;
                }
                queue.set_next_avail(start);
                return Ok(Outcome::Yielded);
            }
            queue.set_next_avail(start);
            return Ok(Outcome::Deferred);
        };
        let head = chain.head_index();
        match RxBuffers::parse(mem, chain, VNET_HDR_LEN) {
            Ok(bufs) if !mergeable && bufs.capacity < needed => {
                guest_errors.record(&NetError::FrameTooLarge {
                    frame: needed,
                    capacity: bufs.capacity,
                });
                // The chain may fit the next frame.
                queue.set_next_avail(start);
                return Ok(Outcome::Dropped);
            }
            Ok(bufs) => {
                capacity = capacity.saturating_add(bufs.capacity);
                chains.push((head, bufs));
                if capacity < needed && chains.len() >= usize::from(queue.size()) {
                    // A full ring of buffers that cannot hold the frame never will.
                    guest_errors.record(&NetError::FrameTooLarge {
                        frame: needed,
                        capacity,
                    });
                    queue.set_next_avail(start);
                    return Ok(Outcome::Dropped);
                }
            }
            Err(e) => {
                guest_errors.record(&e);
                // A broken chain goes back empty. Taken before any good one, it just drops out
                // of the queue; after some, the frame cannot stay in order and is dropped.
                let mut used: Vec<(u16, u32)> = chains.iter().map(|(h, _)| (*h, 0)).collect();
                used.push((head, 0));
                ring::publish_used(queue, mem, &used, guest_errors)?;
                *used_any = true;
                if !chains.is_empty() {
                    return Ok(Outcome::Dropped);
                }
                // The broken chain is used now: a later rewind must not hand it out again.
                start = queue.next_avail();
            }
        }
    }
    let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    if let Some(field) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        field.copy_from_slice(&count.to_le_bytes());
    }
    let mut used = Vec::with_capacity(chains.len());
    let mut rest: &[u8] = frame;
    let mut failed = false;
    for (head, bufs) in &chains {
        let len = match bufs.write(mem, rest) {
            Ok(len) => len,
            Err(e) => {
                // Parsing checked the buffers lie in guest memory, so this is not expected.
                guest_errors.record(&e);
                failed = true;
                0
            }
        };
        rest = rest.get(len as usize..).unwrap_or_default();
        used.push((*head, len));
    }
    if failed {
        used.iter_mut().for_each(|(_, len)| *len = 0);
    }
    ring::publish_used(queue, mem, &used, guest_errors)?;
    *used_any = true;
    Ok(if failed {
        Outcome::Dropped
    } else {
        Outcome::Delivered
    })
}
