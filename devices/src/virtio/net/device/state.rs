//! The network device's state as plain data, for a snapshot: the features the driver
//! accepted, its two queues while it has the device active, and a received frame still waiting
//! for receive buffers. The tap is not part of it: the VMM opens the interface's tap (or the
//! one `network_overrides` names) again and builds the device on it.

use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

use super::{Net, State, QUEUE_SIZE};
use crate::virtio::queue_state::{active_queue_from_state, QueueStateError, SavedQueue};
use crate::virtio::{ActivateError, Interrupt, VirtioDevice};

/// The network device's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The receive and transmit queues, while the driver has the device active.
    pub queues: Option<[SavedQueue; 2]>,
    /// A frame read from the tap, header first, that waits for receive buffers.
    pub pending_frame: Option<Vec<u8>>,
}

/// Why a saved network device state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum NetStateError {
    /// Features this device does not offer (another MTU setting, or a foreign state).
    #[error("The saved net device accepted features {saved:#x}; this one offers {offered:#x}.")]
    Features { saved: u64, offered: u64 },
    /// A queue the device could not have.
    #[error(transparent)]
    Queue(#[from] QueueStateError),
    /// A pending frame no tap sends.
    #[error("The saved pending frame of {0} bytes is not one the tap could have sent.")]
    PendingFrame(usize),
    /// A pending frame on a device the driver had not activated.
    #[error("The saved net device holds a pending frame but is not active.")]
    PendingInactive,
    /// The tap refused the offloads the features ask for.
    #[error(transparent)]
    Activate(#[from] ActivateError),
}

impl Net {
    /// The state, for a snapshot.
    pub fn save(&self) -> NetState {
        let queues = match &self.state {
            State::Active { rx, tx, .. } => Some([SavedQueue(rx.state()), SavedQueue(tx.state())]),
            State::Inactive => None,
        };
        NetState {
            acked_features: self.acked_features,
            queues,
            pending_frame: self.rx.pending().map(<[u8]>::to_vec),
        }
    }

    /// Puts a new device in `state`: active on the saved queues, in `mem` and raising
    /// `interrupt`, if the driver had it active, with its pending frame. Called before the
    /// device joins the event loop, which then watches the tap as the restored state needs.
    pub fn restore(
        &mut self,
        state: &NetState,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), NetStateError> {
        if state.acked_features & !self.avail_features() != 0 {
            return Err(NetStateError::Features {
                saved: state.acked_features,
                offered: self.avail_features(),
            });
        }
        let Some([SavedQueue(rx), SavedQueue(tx)]) = &state.queues else {
            if state.pending_frame.is_some() {
                return Err(NetStateError::PendingInactive);
            }
            self.acked_features = state.acked_features;
            return Ok(());
        };
        let queues = vec![
            active_queue_from_state(0, rx, QUEUE_SIZE, &mem)?,
            active_queue_from_state(1, tx, QUEUE_SIZE, &mem)?,
        ];
        if let Some(frame) = &state.pending_frame {
            if !self.rx.restore_pending(frame) {
                return Err(NetStateError::PendingFrame(frame.len()));
            }
        }
        self.acked_features = state.acked_features;
        self.start(mem, queues, interrupt)?;
        Ok(())
    }
}
