//! The vsock device's state as plain data, for a snapshot: the guest's CID, the features the
//! driver accepted and its three queues while it has the device active. Connections are not
//! part of it, as in Firecracker: their host streams do not survive the process, so a restored
//! device starts with none, and tells the driver so with a transport reset event, after which
//! the guest's sockets see their connections reset.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

use super::{State, Vsock, QUEUE_SIZE};
use crate::virtio::queue_state::{active_queue_from_state, QueueStateError, SavedQueue};
use crate::virtio::{ActivateError, Interrupt, VirtioDevice};

/// The vsock device's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's CID.
    pub cid: u64,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The receive, transmit and event queues, while the driver has the device active.
    pub queues: Option<[SavedQueue; 3]>,
}

/// Why a saved vsock device state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum VsockStateError {
    /// Features this device does not offer.
    #[error("The saved vsock device accepted features {saved:#x}; this one offers {offered:#x}.")]
    Features { saved: u64, offered: u64 },
    /// Another CID than the device's: the guest's sockets are bound to the saved one.
    #[error("The saved vsock device has CID {saved}; this one has {device}.")]
    Cid { saved: u64, device: u64 },
    /// A queue the device could not have.
    #[error(transparent)]
    Queue(#[from] QueueStateError),
    /// The queues could not be activated.
    #[error(transparent)]
    Activate(#[from] ActivateError),
}

impl Vsock {
    /// The state, for a snapshot.
    pub fn save(&self) -> VsockState {
        let queues = match &self.state {
            State::Active { rx, tx, ev, .. } => Some([
                SavedQueue(rx.state()),
                SavedQueue(tx.state()),
                SavedQueue(ev.state()),
            ]),
            State::Inactive => None,
        };
        VsockState {
            cid: self.cid,
            acked_features: self.acked_features,
            queues,
        }
    }

    /// Puts a new device in `state`: active on the saved queues, in `mem` and raising
    /// `interrupt`, if the driver had it active, with a transport reset event to send. Called
    /// before the device joins the event loop, which sends the event.
    pub fn restore(
        &mut self,
        state: &VsockState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), VsockStateError> {
        if state.cid != self.cid {
            return Err(VsockStateError::Cid {
                saved: state.cid,
                device: self.cid,
            });
        }
        if state.acked_features & !self.avail_features() != 0 {
            return Err(VsockStateError::Features {
                saved: state.acked_features,
                offered: self.avail_features(),
            });
        }
        let Some([SavedQueue(rx), SavedQueue(tx), SavedQueue(ev)]) = &state.queues else {
            self.acked_features = state.acked_features;
            return Ok(());
        };
        let queues = vec![
            active_queue_from_state(0, rx, QUEUE_SIZE, &mem)?,
            active_queue_from_state(1, tx, QUEUE_SIZE, &mem)?,
            active_queue_from_state(2, ev, QUEUE_SIZE, &mem)?,
        ];
        self.acked_features = state.acked_features;
        self.start(mem, queues, interrupt)?;
        self.reset_event_pending = true;
        Ok(())
    }
}
