//! What every device does the same way with a queue the guest controls: refuse an available
//! index that runs too far ahead, and log guest-caused errors without letting a hostile driver
//! flood the host log.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Guest errors logged in full before the log thins out.
const GUEST_ERRORS_LOGGED: u64 = 10;

/// Counts guest-triggered errors and logs only some: the first few, then every power of two.
#[derive(Debug)]
pub(crate) struct GuestErrors {
    device: &'static str,
    count: u64,
}

impl GuestErrors {
    /// A counter for `device` (`"virtio-block"`, ...), which prefixes its log lines.
    pub(crate) fn new(device: &'static str) -> Self {
        Self { device, count: 0 }
    }

    /// Counts `error`, and logs it if it is among the few that are logged.
    pub(crate) fn record(&mut self, error: &dyn std::fmt::Display) {
        self.count = self.count.saturating_add(1);
        if self.count <= GUEST_ERRORS_LOGGED || self.count.is_power_of_two() {
            log::warn!("{}: {error} ({} errors so far)", self.device, self.count);
        }
    }
}

/// Why a queue cannot be served.
#[derive(Debug)]
pub(crate) enum QueueCheckError {
    /// The available index could not be read.
    Queue(virtio_queue::Error),
    /// The available index is more than a queue's worth ahead.
    AvailIndex { pending: u16, size: u16 },
}

/// Refuses an available index more than a queue's worth ahead. `pop_descriptor_chain` hides
/// that error as "nothing available" while `enable_notification` keeps reporting work, which
/// would spin the queue loop forever.
pub(crate) fn check_avail_index(
    queue: &Queue,
    mem: &GuestMemoryMmap,
) -> Result<(), QueueCheckError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(QueueCheckError::Queue)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(QueueCheckError::AvailIndex {
            pending,
            size: queue.size(),
        });
    }
    Ok(())
}
