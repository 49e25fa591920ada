//! The registry's devices saved for a snapshot, and restored into the devices a restore
//! attached in the same order: each virtio device must sit where it sat (same ID, kind, MMIO
//! window and interrupt line) before its state and its transport's are put back. The legacy
//! devices are restored as they are attached (`legacy::attach`).

use std::sync::Mutex;

use std::sync::Arc;

use devices::virtio::mmio::{MmioStateError, MmioTransport};
use devices::virtio::net::NetStateError;
use devices::virtio::{QueueStateError, VirtioDevice};
use devices::GuestMemoryMmap;

use super::registry::{DeviceHandle, DeviceRegistry, RegisteredDevice, Transport};
use crate::bounded_lock::lock;
use crate::snapshot::state::{DevicesState, SavedSerial, VirtioDeviceState, VirtioState};

/// Why the devices' states could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// The snapshot has other virtio devices than its configuration gives.
    #[error("The snapshot holds {saved} virtio devices; its configuration gives {built}.")]
    Count { saved: usize, built: usize },
    /// A device is not where, or not what, it was.
    #[error("The snapshot's virtio device '{saved}' at {addr:#x} (IRQ {irq}) is not the configuration's '{built}' there.")]
    Placement {
        saved: String,
        built: String,
        addr: u64,
        irq: u32,
    },
    /// A drive's state cannot be restored.
    #[error("Drive '{id}': {source}")]
    Block { id: String, source: QueueStateError },
    /// An interface's state cannot be restored.
    #[error("Network interface '{id}': {source}")]
    Net { id: String, source: NetStateError },
    /// A transport's state cannot be restored.
    #[error("The virtio-mmio transport of '{id}': {source}")]
    Transport { id: String, source: MmioStateError },
}

impl DeviceRegistry {
    /// Every device's state, for a snapshot; the vCPUs are paused.
    pub fn save(&self) -> DevicesState {
        let mut state = DevicesState {
            serial: None,
            i8042: None,
            virtio: Vec::new(),
        };
        for device in self.iter() {
            match (&device.handle, &device.transport, device.irq) {
                (DeviceHandle::Serial(serial), ..) => {
                    state.serial = Some(SavedSerial(lock(serial).save()));
                }
                (DeviceHandle::I8042(i8042), ..) => state.i8042 = Some(lock(i8042).save()),
                (handle, Transport::Mmio { addr, transport }, Some(irq)) => {
                    let device_state = match handle {
                        DeviceHandle::Block { device, .. } => {
                            VirtioDeviceState::Block(lock(device).save())
                        }
                        DeviceHandle::Net(device) => VirtioDeviceState::Net(lock(device).save()),
                        _ => continue,
                    };
                    state.virtio.push(VirtioState {
                        id: device.id.clone(),
                        addr: *addr,
                        irq,
                        transport: lock(transport).save(),
                        device: device_state,
                    });
                }
                // The boot timer has no state.
                _ => {}
            }
        }
        state
    }

    /// Puts the virtio devices, attached as the snapshot's configuration gives, in the states
    /// `saved` holds: each device activated on its saved queues if the driver had it active,
    /// then its transport as the driver left it.
    pub fn restore_virtio(
        &self,
        saved: &[VirtioState],
        mem: &GuestMemoryMmap,
    ) -> Result<(), DeviceStateError> {
        let built: Vec<&RegisteredDevice> = self
            .iter()
            .filter(|d| matches!(d.transport, Transport::Mmio { .. }))
            .collect();
        if built.len() != saved.len() {
            return Err(DeviceStateError::Count {
                saved: saved.len(),
                built: built.len(),
            });
        }
        for (device, state) in built.into_iter().zip(saved) {
            restore_one(device, state, mem)?;
        }
        Ok(())
    }
}

fn restore_one(
    device: &RegisteredDevice,
    state: &VirtioState,
    mem: &GuestMemoryMmap,
) -> Result<(), DeviceStateError> {
    let id = || state.id.clone();
    let misplaced = || DeviceStateError::Placement {
        saved: state.id.clone(),
        built: device.id.clone(),
        addr: state.addr,
        irq: state.irq,
    };
    let Transport::Mmio { addr, transport } = &device.transport else {
        return Err(misplaced());
    };
    if device.id != state.id || *addr != state.addr || device.irq != Some(state.irq) {
        return Err(misplaced());
    }
    let interrupt = lock(transport).interrupt().clone();
    let virtio = match (&device.handle, &state.device) {
        (DeviceHandle::Block { device, .. }, VirtioDeviceState::Block(saved)) => {
            lock(device)
                .restore(saved, mem.clone(), interrupt.clone())
                .map_err(|source| DeviceStateError::Block { id: id(), source })?;
            device.clone() as Arc<Mutex<dyn VirtioDevice>>
        }
        (DeviceHandle::Net(device), VirtioDeviceState::Net(saved)) => {
            lock(device)
                .restore(saved, mem.clone(), interrupt.clone())
                .map_err(|source| DeviceStateError::Net { id: id(), source })?;
            device.clone()
        }
        _ => return Err(misplaced()),
    };
    let restored = MmioTransport::restore(virtio, mem.clone(), interrupt, &state.transport)
        .map_err(|source| DeviceStateError::Transport { id: id(), source })?;
    *lock(transport) = restored;
    Ok(())
}
