//! The block device's state as plain data, for a snapshot: the queue it serves while the
//! driver has it active. The disk is not part of it: the VMM opens the image (or its overlay)
//! again and builds the device on it. Requests are served whole before the VMM thread does
//! anything else, so none is in flight to carry.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

use super::{Block, State, QUEUE_SIZE};
use crate::virtio::queue_state::{active_queue_from_state, QueueStateError, SavedQueue};
use crate::virtio::Interrupt;

/// The block device's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The queue, while the driver has the device active.
    pub queue: Option<SavedQueue>,
}

impl Block {
    /// The state, for a snapshot.
    pub fn save(&self) -> BlockState {
        let queue = match &self.state {
            State::Active { queue, .. } => Some(SavedQueue(queue.state())),
            State::Inactive => None,
        };
        BlockState { queue }
    }

    /// Puts a new device in `state`: active on the saved queue, in `mem` and raising
    /// `interrupt`, if the driver had it active.
    pub fn restore(
        &mut self,
        state: &BlockState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), QueueStateError> {
        self.state = match &state.queue {
            Some(SavedQueue(saved)) => State::Active {
                queue: active_queue_from_state(0, saved, QUEUE_SIZE, &mem)?,
                mem,
                interrupt,
            },
            None => State::Inactive,
        };
        Ok(())
    }
}
