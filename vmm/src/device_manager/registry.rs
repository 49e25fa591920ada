//! The device registry: every virtio device of the VM by kind and ID, with its transport, MMIO
//! slot, interrupt line and handle. The builder attaches every kind through
//! [`DeviceRegistry::attach_virtio`], the one path that allocates the slot, wires the device
//! to KVM and records it; the running VM finds its drives and interfaces here.

use std::sync::{Arc, Mutex};

use devices::virtio::block::Block;
use devices::virtio::net::Net;
use devices::virtio::VirtioDevice;
use devices::Bus;
use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::config::DriveConfig;
use crate::device_manager::mmio::{self, MmioAllocator, MmioError, MmioSlot, SharedTransport};

/// A device (or other event source) served by the VMM thread's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// What a registered device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-block.
    Block,
    /// virtio-net.
    Net,
}

/// A registered device's own handle, by kind.
pub enum DeviceHandle {
    /// A drive and the configuration it now runs with (`PATCH /drives` changes its image).
    Block {
        /// The device.
        device: Arc<Mutex<Block>>,
        /// Its configuration.
        config: DriveConfig,
    },
    /// A network interface.
    Net(Arc<Mutex<Net>>),
}

impl DeviceHandle {
    /// The kind of device this is.
    pub fn kind(&self) -> DeviceKind {
        match self {
            Self::Block { .. } => DeviceKind::Block,
            Self::Net(_) => DeviceKind::Net,
        }
    }

    fn virtio(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        match self {
            Self::Block { device, .. } => device.clone(),
            Self::Net(device) => device.clone(),
        }
    }

    fn subscriber(&self) -> Subscriber {
        match self {
            Self::Block { device, .. } => device.clone(),
            Self::Net(device) => device.clone(),
        }
    }
}

/// One attached device.
pub struct RegisteredDevice {
    /// Its ID: the drive's `drive_id` or the interface's `iface_id`.
    pub id: String,
    /// Its register window and interrupt line.
    pub slot: MmioSlot,
    /// The virtio-mmio transport in front of it.
    pub transport: SharedTransport,
    /// The device.
    pub handle: DeviceHandle,
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind().fmt(f)
    }
}

impl std::fmt::Debug for RegisteredDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredDevice")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// The VM's virtio devices, in the order they were attached (which is the guest's order).
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    allocator: MmioAllocator,
    devices: Vec<RegisteredDevice>,
}

impl DeviceRegistry {
    /// Puts `handle`'s device behind a virtio-mmio transport in the next free slot (see
    /// [`mmio::attach_virtio`]) and records it as `id`; returns where it landed.
    pub fn attach_virtio(
        &mut self,
        vm: &VmFd,
        mmio_bus: &mut Bus,
        mem: &GuestMemoryMmap,
        id: &str,
        handle: DeviceHandle,
    ) -> Result<MmioSlot, MmioError> {
        let (slot, transport) =
            mmio::attach_virtio(vm, mmio_bus, mem, &mut self.allocator, handle.virtio())?;
        self.devices.push(RegisteredDevice {
            id: id.to_string(),
            slot: slot.clone(),
            transport,
            handle,
        });
        Ok(slot)
    }

    /// The device of `kind` with ID `id`.
    pub fn get_mut(&mut self, kind: DeviceKind, id: &str) -> Option<&mut RegisteredDevice> {
        self.devices
            .iter_mut()
            .find(|d| d.handle.kind() == kind && d.id == id)
    }

    /// The kernel command-line entries that announce the devices, in attach order.
    pub fn cmdline_args(&self) -> impl Iterator<Item = String> + '_ {
        self.devices.iter().map(|d| d.slot.cmdline_arg())
    }

    /// Every device's event-loop subscriber.
    pub fn subscribers(&self) -> impl Iterator<Item = Subscriber> + '_ {
        self.devices.iter().map(|d| d.handle.subscriber())
    }
}

#[cfg(test)]
mod tests {
    use devices::virtio::mmio::MmioTransport;
    use devices::virtio::Interrupt;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::device_manager::block;

    #[test]
    fn devices_are_found_by_kind_and_id() {
        let path = std::env::temp_dir().join(format!("kiln-registry-{}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        let config: DriveConfig = serde_json::from_value(serde_json::json!({
            "drive_id": "data", "path_on_host": path, "is_root_device": false,
        }))
        .unwrap();
        let device = block::create(&config).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        let transport = MmioTransport::new(device.clone(), mem, interrupt);
        let mut registry = DeviceRegistry::default();
        registry.devices.push(RegisteredDevice {
            id: "data".into(),
            slot: MmioSlot {
                addr: 0xc000_1000,
                irq: 5,
            },
            transport: Arc::new(Mutex::new(transport)),
            handle: DeviceHandle::Block { device, config },
        });
        let found = registry.get_mut(DeviceKind::Block, "data").unwrap();
        assert_eq!((found.id.as_str(), found.slot.irq), ("data", 5));
        assert!(registry.get_mut(DeviceKind::Net, "data").is_none());
        assert!(registry.get_mut(DeviceKind::Block, "other").is_none());
        assert_eq!(
            registry.cmdline_args().collect::<Vec<_>>(),
            ["virtio_mmio.device=4K@0xc0001000:5"]
        );
        assert_eq!(registry.subscribers().count(), 1);
        std::fs::remove_file(path).unwrap();
    }
}
