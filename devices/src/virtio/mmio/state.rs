//! The transport's state as plain data, for a snapshot: the registers the driver wrote, the
//! interrupt status it has not acknowledged, and each queue as it configured it. Once the
//! driver set DRIVER_OK the device runs its own copies of the queues, which move on: those are
//! the device's state, and a restored device is activated from them, not through the
//! transport.

use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

use super::{lock, InvalidQueueValue, MmioTransport, QueueSlot};
use crate::virtio::queue_state::{queue_from_state, QueueStateError, SavedQueue};
use crate::virtio::{Interrupt, VirtioDevice};

/// The transport's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// Each queue as the driver configured it, with a value it wrote that the queue could not
    /// take.
    pub queues: Vec<(SavedQueue, Option<InvalidQueueValue>)>,
    /// QueueSel.
    pub queue_select: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// The device status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The interrupt status bits the driver has not acknowledged.
    pub interrupt_status: u32,
}

/// Why a saved transport state does not fit the device it is restored in front of.
#[derive(Debug, thiserror::Error)]
pub enum MmioStateError {
    /// Another number of queues than the device has.
    #[error("The saved transport has {saved} queues; the device has {device}.")]
    QueueCount { saved: usize, device: usize },
    /// A queue the device could not have.
    #[error(transparent)]
    Queue(#[from] QueueStateError),
}

impl MmioTransport {
    /// The state, for a snapshot.
    pub fn save(&self) -> MmioTransportState {
        MmioTransportState {
            queues: self
                .queues
                .iter()
                .map(|slot| (SavedQueue(slot.queue.state()), slot.invalid))
                .collect(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
        }
    }

    /// The transport `state` describes, in front of `device` (restored on its own) as
    /// [`MmioTransport::new`] puts a new one; `interrupt` gets the saved status bits without
    /// being raised (the saved irqchip holds what was raised).
    pub fn restore(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        state: &MmioTransportState,
    ) -> Result<Self, MmioStateError> {
        let max_sizes = lock(&device).queue_max_sizes().to_vec();
        if max_sizes.len() != state.queues.len() {
            return Err(MmioStateError::QueueCount {
                saved: state.queues.len(),
                device: max_sizes.len(),
            });
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, ((SavedQueue(queue), invalid), max)) in
            state.queues.iter().zip(max_sizes).enumerate()
        {
            queues.push(QueueSlot {
                queue: queue_from_state(index, queue, max)?,
                invalid: *invalid,
            });
        }
        interrupt.restore_status(state.interrupt_status);
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: state.queue_select,
            device_features_select: state.device_features_select,
            driver_features_select: state.driver_features_select,
            driver_features: state.driver_features,
            status: state.status,
            config_generation: state.config_generation,
        })
    }
}
