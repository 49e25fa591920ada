//! The parts of the split-queue protocol virtio-net handles itself rather than through
//! `Queue::add_used`: publishing several used entries at once, and deciding whether the driver
//! wants an interrupt.
//!
//! A frame spread over several receive chains (mergeable buffers) must appear in the used ring
//! all at once: the driver reads `num_buffers` from the first chain and fetches the others
//! straight away, and drops the frame if they are not there yet. `add_used` publishes the used
//! index after every entry, so the entries are written here and the index moved once.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, Le32};

use super::NetError;
use crate::virtio::guest_queue::{GuestErrors, QueueCheckError};

/// Size of the used ring header (flags, idx) and of one used element (id, len).
const USED_HEADER: u64 = 4;
const USED_ELEM: u64 = 8;
/// Size of the available ring header (flags, idx) and of one available entry.
const AVAIL_HEADER: u64 = 4;
const AVAIL_ELEM: u64 = 2;

impl From<QueueCheckError> for NetError {
    fn from(e: QueueCheckError) -> Self {
        match e {
            QueueCheckError::Queue(e) => NetError::Queue(e),
            QueueCheckError::AvailIndex { pending, size } => NetError::AvailIndex { pending, size },
        }
    }
}

/// Puts `entries` (head index, used length) in the used ring and then publishes them with one
/// move of the used index. Heads come from popped chains, so they are below the queue size; one
/// that is not is skipped, as it cannot be returned to the driver.
pub fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
    guest_errors: &mut GuestErrors,
) -> Result<(), NetError> {
    let size = queue.size();
    let ring = queue.used_ring();
    let mut next = Wrapping(queue.next_used());
    for &(head, len) in entries {
        if head >= size {
            guest_errors.record(&NetError::Queue(
                virtio_queue::Error::InvalidDescriptorIndex,
            ));
            continue;
        }
        // The ring lies in guest memory (the transport checked), so these sums are small.
        let slot = u64::from(next.0.checked_rem(size).unwrap_or(0));
        let addr = ring
            .checked_add(USED_HEADER + slot * USED_ELEM)
            .ok_or(NetError::UsedRing(ring))?;
        mem.write_obj(Le32::from(u32::from(head)), GuestAddress(addr))
            .and_then(|()| mem.write_obj(Le32::from(len), GuestAddress(addr + 4)))
            .map_err(|_| NetError::UsedRing(addr))?;
        next += Wrapping(1);
    }
    // The Release store orders the element writes before the index the driver polls.
    let idx_addr = ring.checked_add(2).ok_or(NetError::UsedRing(ring))?;
    mem.store(
        u16::to_le(next.0),
        GuestAddress(idx_addr),
        Ordering::Release,
    )
    .map_err(|_| NetError::UsedRing(idx_addr))?;
    queue.set_next_used(next.0);
    Ok(())
}

/// Whether the driver wants an interrupt for the used entries published since the used index
/// was `old`. With EVENT_IDX, only when the index passed the driver's `used_event`.
pub fn needs_interrupt(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    old: Wrapping<u16>,
) -> Result<bool, NetError> {
    let new = Wrapping(queue.next_used());
    if new == old {
        return Ok(false);
    }
    if !queue.event_idx_enabled() {
        return Ok(true);
    }
    // The used index must be visible before reading what the driver wants.
    fence(Ordering::SeqCst);
    let ring = queue.avail_ring();
    let addr = ring
        .checked_add(AVAIL_HEADER + AVAIL_ELEM * u64::from(queue.size()))
        .ok_or(NetError::UsedEvent(ring))?;
    let used_event: u16 = mem
        .load(GuestAddress(addr), Ordering::Acquire)
        .map(u16::from_le)
        .map_err(|_| NetError::UsedEvent(addr))?;
    // The ring.h `vring_need_event` test: did the index step over used_event + 1?
    Ok(new - Wrapping(used_event) - Wrapping(1) < new - old)
}
