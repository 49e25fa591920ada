//! The microVM's state as a snapshot holds it: the configuration it was built from, the layout
//! of its memory, the VM's and every vCPU's KVM state, and every device's state with where it
//! sat (its ID, MMIO window and interrupt line), so that a restore rebuilds the same machine
//! and checks that it did.

use devices::legacy::{I8042State, SerialState, SerialStateDef};
use devices::virtio::block::BlockState;
use devices::virtio::mmio::MmioTransportState;
use devices::virtio::net::NetState;
use serde::{Deserialize, Serialize};

use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

/// Everything a restore needs besides guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// The configuration at the time of the snapshot, in the config-file format (as
    /// `GET /vm/config` writes it); parsed and validated again on load.
    pub config: String,
    /// Guest memory's regions, in the memory file's order.
    pub memory: Vec<MemoryRegionState>,
    /// The VM's KVM state.
    pub vm: VmState,
    /// Each vCPU's, by index.
    pub vcpus: Vec<VcpuState>,
    /// The devices'.
    pub devices: DevicesState,
    /// The drives the snapshot froze: their images (`config` names them) are as they were at
    /// the snapshot, and a load puts each on a new overlay over its image.
    pub frozen_drives: Vec<String>,
}

/// One region of guest memory; the memory file holds the regions one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionState {
    /// Its guest physical address.
    pub guest_addr: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The UART's state (vm-superio's, which has no serde of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSerial(#[serde(with = "SerialStateDef")] pub SerialState);

/// The devices' states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// The UART.
    pub serial: Option<SavedSerial>,
    /// The i8042.
    pub i8042: Option<I8042State>,
    /// The virtio devices, in the order they were attached.
    pub virtio: Vec<VirtioState>,
}

/// A virtio device, where it sat, and its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    /// Its ID (`drive_id`, `iface_id`).
    pub id: String,
    /// The start of its MMIO window.
    pub addr: u64,
    /// Its interrupt line.
    pub irq: u32,
    /// The virtio-mmio transport's registers and queues.
    pub transport: MmioTransportState,
    /// The device's own state.
    pub device: VirtioDeviceState,
}

/// A virtio device's own state, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// A drive.
    Block(BlockState),
    /// A network interface.
    Net(NetState),
}
