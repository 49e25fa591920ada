//! Queues from a snapshot: a saved `QueueState` becomes a queue only if it is one the device
//! could have, checked as activation checks a new one. The state comes from a file, so nothing
//! in it is trusted.

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

/// A queue as a snapshot holds it: virtio-queue's `QueueState`, which has no serde of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue(#[serde(with = "QueueStateDef")] pub QueueState);

/// `QueueState`'s fields, for serde; the compiler checks they are the same.
#[derive(Serialize, Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// Why a saved queue cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum QueueStateError {
    /// A larger maximum size than the device's.
    #[error("Saved queue {index} has a maximum size of {saved}, over the device's {device}.")]
    MaxSize {
        index: usize,
        saved: u16,
        device: u16,
    },
    /// A size or ring address virtio-queue refuses.
    #[error("Saved queue {index} is not a valid queue: {source}")]
    Invalid {
        index: usize,
        source: virtio_queue::Error,
    },
    /// A queue a running device serves that is not ready or not in guest memory.
    #[error("Saved queue {index} is not ready or lies outside guest memory.")]
    NotUsable { index: usize },
}

/// Queue `index` of a device whose queues hold up to `max_size` entries, from `saved`. A
/// smaller maximum is allowed: the queue still fits the device.
pub(crate) fn queue_from_state(
    index: usize,
    saved: &QueueState,
    max_size: u16,
) -> Result<Queue, QueueStateError> {
    if saved.max_size > max_size {
        return Err(QueueStateError::MaxSize {
            index,
            saved: saved.max_size,
            device: max_size,
        });
    }
    Queue::try_from(*saved).map_err(|source| QueueStateError::Invalid { index, source })
}

/// [`queue_from_state`] for a queue an active device serves: ready and in `mem`.
pub(crate) fn active_queue_from_state(
    index: usize,
    saved: &QueueState,
    max_size: u16,
    mem: &GuestMemoryMmap,
) -> Result<Queue, QueueStateError> {
    let queue = queue_from_state(index, saved, max_size)?;
    if !queue.is_valid(mem) {
        return Err(QueueStateError::NotUsable { index });
    }
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn only_a_queue_the_device_could_have_is_restored() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let mut queue = Queue::new(16).unwrap();
        queue.set_size(8);
        queue.set_ready(true);
        queue.set_desc_table_address(Some(0x1000), Some(0));
        queue.set_avail_ring_address(Some(0x2000), Some(0));
        queue.set_used_ring_address(Some(0x3000), Some(0));
        queue.set_next_avail(5);
        let good = queue.state();
        let restored = active_queue_from_state(0, &good, 16, &mem).unwrap();
        assert_eq!(restored.state(), good);
        assert!(queue_from_state(1, &good, 256).is_ok());
        assert!(matches!(
            queue_from_state(1, &good, 8),
            Err(QueueStateError::MaxSize { index: 1, .. })
        ));
        let odd = QueueState { size: 3, ..good };
        assert!(matches!(
            queue_from_state(0, &odd, 16),
            Err(QueueStateError::Invalid { .. })
        ));
        let outside = QueueState {
            used_ring: 0x10_0000,
            ..good
        };
        assert!(queue_from_state(0, &outside, 16).is_ok());
        assert!(matches!(
            active_queue_from_state(0, &outside, 16, &mem),
            Err(QueueStateError::NotUsable { index: 0 })
        ));
    }
}
