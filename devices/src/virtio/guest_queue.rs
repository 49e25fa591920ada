//! What every device does the same way with a queue the guest controls: drain it with a work
//! budget, refuse an available index that runs too far ahead, and log guest-caused errors
//! without letting a hostile driver flood the host log.
//!
//! The budget is what keeps one queue from holding the VMM thread: every loop over guest
//! memory can be kept going by the guest (a driver on another vCPU can rewrite the rings while
//! the device reads them, and rings that overlap rewrite each other), so each notification
//! gets at most a queue's worth of steps. A device whose budget ran out writes its own queue
//! eventfd ([`rearm`]) and returns to the event loop, which serves the API, the other devices
//! and the other queues before it comes back.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use crate::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// Counts guest-triggered errors and logs them rate-limited, per device.
#[derive(Debug)]
pub(crate) struct GuestErrors {
    device: &'static str,
    count: u64,
    site: throttled_log::CallSite,
}

impl GuestErrors {
    /// A counter for `device` (`"virtio-block"`, ...), which prefixes its log lines.
    pub(crate) fn new(device: &'static str) -> Self {
        Self {
            device,
            count: 0,
            site: throttled_log::CallSite::new(),
        }
    }

    /// Counts `error`, and logs it unless this device logged too many lately.
    pub(crate) fn record(&mut self, error: &dyn std::fmt::Display) {
        self.count = self.count.saturating_add(1);
        throttled_log::throttled_log!(
            site = &self.site,
            log::Level::Warn,
            "{}: {error} ({} errors so far)",
            self.device,
            self.count
        );
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

/// Refuses an available index more than a queue's worth ahead; returns how many chains it
/// says are waiting. `pop_descriptor_chain` hides that error as "nothing available" while
/// `enable_notification` keeps reporting work, which would spin the queue loop forever.
pub(crate) fn check_avail_index(
    queue: &Queue,
    mem: &GuestMemoryMmap,
) -> Result<u16, QueueCheckError> {
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
    Ok(pending)
}

/// How a budgeted drain of a queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Nothing is left that the device can do before the driver's next notification (or, for
    /// receive, the tap's next frame).
    Done,
    /// The budget ran out; work may be left, and the device must come back ([`rearm`]).
    Yielded,
}

/// The steps one notification may take on `queue`: a whole ring of chains.
pub(crate) fn work_budget(queue: &Queue) -> u32 {
    u32::from(queue.size()).max(1)
}

/// Serves the chains the driver made available with `serve` until the queue is empty or
/// [`work_budget`] steps are spent; each chain is a step, and so is each look at the ring
/// after turning notifications back on. Drains with notifications off, then turns them back
/// on and looks again: a chain the driver adds in between would otherwise wait for a kick that
/// never comes. `serve` also gets how many chains were waiting behind its chain when the
/// device last read the available index (Firecracker's `remaining_reqs_count` adds these up),
/// derived from that read rather than a read per chain.
pub(crate) fn drain_queue<E: From<QueueCheckError>>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(&mut Queue, DescriptorChain<&GuestMemoryMmap>, u16) -> Result<(), E>,
) -> Result<Drain, E> {
    let mut budget = work_budget(queue);
    loop {
        queue
            .disable_notification(mem)
            .map_err(QueueCheckError::Queue)?;
        let mut behind = check_avail_index(queue, mem)?;
        loop {
            let Some(left) = budget.checked_sub(1) else {
                return Ok(Drain::Yielded);
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            budget = left;
            // Chains the driver added since the read are not counted: the figure never
            // wraps below zero.
            behind = behind.saturating_sub(1);
            serve(queue, chain, behind)?;
        }
        if !queue
            .enable_notification(mem)
            .map_err(QueueCheckError::Queue)?
        {
            return Ok(Drain::Done);
        }
        match budget.checked_sub(1) {
            Some(left) => budget = left,
            None => return Ok(Drain::Yielded),
        }
    }
}

/// Makes the event loop call the device for `queue_evt` again, after it served everything
/// else that is ready.
pub(crate) fn rearm(queue_evt: &EventFd) {
    // Fails only when the counter would overflow, and then the event is pending anyway.
    if let Err(e) = queue_evt.write(1) {
        throttled_log::throttled_debug!("virtio: failed to re-arm a queue event: {e}");
    }
}

/// Helpers for the devices' tests of hostile queues.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use virtio_queue::{Queue, QueueT};

    /// Runs `f` on a thread and returns its result, or `None` if it has not returned within
    /// ten seconds: a loop the guest keeps going. The thread is left spinning then.
    pub(crate) fn within_seconds<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// A ready queue of `size` whose used ring starts two bytes into its available ring, at
    /// `base + 0x1002`: the used flags are the available index, so every time the device turns
    /// notifications off and on again the index moves, and the queue never looks empty. The
    /// descriptor table is at `base`.
    pub(crate) fn overlapping_queue(size: u16, base: u64) -> Queue {
        let mut queue = Queue::new(size).unwrap();
        queue.set_size(size);
        let (avail, used) = (base + 0x1002, base + 0x1004);
        queue.set_desc_table_address(Some(base as u32), Some((base >> 32) as u32));
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        assert_eq!((queue.avail_ring(), queue.used_ring()), (avail, used));
        queue.set_ready(true);
        queue
    }
}
