//! The device registry: every device of the VM by kind and ID, with its transport (an MMIO slot
//! or port range), interrupt line and handle. Every virtio kind is attached through
//! [`DeviceRegistry::attach_virtio`], the one path that allocates the slot, wires the device to
//! KVM and records it; the legacy devices are recorded where `legacy::attach` puts them on the
//! port-I/O bus. The running VM finds its drives, its i8042 and the devices' event-loop
//! subscribers here.

use std::sync::{Arc, Mutex};

use devices::boot_timer::{BootTimer, Timestamp};
use devices::legacy::{Serial, I8042};
use devices::virtio::block::Block;
use devices::virtio::net::Net;
use devices::virtio::{Interrupt, VirtioDevice};
use devices::GuestMemoryMmap;
use devices::{Bus, BusError};
use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;

use crate::arch::x86_64::layout::{BOOT_TIMER_START, MMIO_SLOT_SIZE};
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
    /// The 8250 UART.
    Serial,
    /// The i8042 keyboard controller.
    I8042,
    /// Firecracker's boot timer.
    BootTimer,
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
    /// The UART.
    Serial(Arc<Mutex<Serial>>),
    /// The i8042.
    I8042(Arc<Mutex<I8042>>),
    /// The boot timer.
    BootTimer(Arc<Mutex<BootTimer>>),
}

impl DeviceHandle {
    /// The kind of device this is.
    pub fn kind(&self) -> DeviceKind {
        match self {
            Self::Block { .. } => DeviceKind::Block,
            Self::Net(_) => DeviceKind::Net,
            Self::Serial(_) => DeviceKind::Serial,
            Self::I8042(_) => DeviceKind::I8042,
            Self::BootTimer(_) => DeviceKind::BootTimer,
        }
    }

    /// The virtio device, for the virtio kinds.
    fn virtio(&self) -> Option<Arc<Mutex<dyn VirtioDevice>>> {
        match self {
            Self::Block { device, .. } => Some(device.clone()),
            Self::Net(device) => Some(device.clone()),
            Self::Serial(_) | Self::I8042(_) | Self::BootTimer(_) => None,
        }
    }

    /// The event-loop subscriber, for the devices that have one (the virtio kinds).
    fn subscriber(&self) -> Option<Subscriber> {
        match self {
            Self::Block { device, .. } => Some(device.clone()),
            Self::Net(device) => Some(device.clone()),
            Self::Serial(_) | Self::I8042(_) | Self::BootTimer(_) => None,
        }
    }
}

/// How the guest reaches a device.
pub enum Transport {
    /// A virtio-mmio transport whose register window starts at `addr`.
    Mmio {
        /// The start of the window.
        addr: u64,
        /// The transport.
        transport: SharedTransport,
    },
    /// A plain register window on the MMIO bus.
    MmioWindow {
        /// Its start.
        base: u64,
        /// Its size.
        len: u64,
    },
    /// Ports on the port-I/O bus.
    PortIo {
        /// The first port.
        base: u64,
        /// How many ports.
        len: u64,
    },
}

/// One attached device.
pub struct RegisteredDevice {
    /// Its ID: the drive's `drive_id`, the interface's `iface_id`, or the legacy device's name.
    pub id: String,
    /// Its interrupt line, for the devices that have one.
    pub irq: Option<u32>,
    /// Where the guest reaches it.
    pub transport: Transport,
    /// The device.
    pub handle: DeviceHandle,
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind().fmt(f)
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mmio { addr, .. } => write!(f, "Mmio({addr:#x})"),
            Self::MmioWindow { base, len } => write!(f, "MmioWindow({base:#x}, {len:#x})"),
            Self::PortIo { base, len } => write!(f, "PortIo({base:#x}, {len})"),
        }
    }
}

impl std::fmt::Debug for RegisteredDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredDevice")
            .field("id", &self.id)
            .field("irq", &self.irq)
            .field("transport", &self.transport)
            .field("handle", &self.handle)
            .finish()
    }
}

/// The VM's devices, in the order they were attached (for virtio, the guest's order).
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
        let virtio = handle.virtio().ok_or(MmioError::NotVirtio)?;
        let (slot, transport) =
            mmio::attach_virtio(vm, mmio_bus, mem, &mut self.allocator, virtio)?;
        self.insert(RegisteredDevice {
            id: id.to_string(),
            irq: Some(slot.irq),
            transport: Transport::Mmio {
                addr: slot.addr,
                transport,
            },
            handle,
        });
        Ok(slot)
    }

    /// Places the boot timer, measuring from `start`, at [`BOOT_TIMER_START`] (the slot before
    /// the virtio devices') and records it as `boot-timer`.
    pub fn attach_boot_timer(
        &mut self,
        mmio_bus: &mut Bus,
        start: Timestamp,
    ) -> Result<(), BusError> {
        let timer = Arc::new(Mutex::new(BootTimer::new(start)));
        mmio_bus.insert(timer.clone(), BOOT_TIMER_START, MMIO_SLOT_SIZE)?;
        self.insert(RegisteredDevice {
            id: "boot-timer".to_string(),
            irq: None,
            transport: Transport::MmioWindow {
                base: BOOT_TIMER_START,
                len: MMIO_SLOT_SIZE,
            },
            handle: DeviceHandle::BootTimer(timer),
        });
        Ok(())
    }

    /// Records a device already on its bus.
    pub fn insert(&mut self, device: RegisteredDevice) {
        self.devices.push(device);
    }

    /// The devices, in attach order.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredDevice> + '_ {
        self.devices.iter()
    }

    /// The devices, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut RegisteredDevice> + '_ {
        self.devices.iter_mut()
    }

    /// The device of `kind` with ID `id`.
    pub fn get_mut(&mut self, kind: DeviceKind, id: &str) -> Option<&mut RegisteredDevice> {
        self.devices
            .iter_mut()
            .find(|d| d.handle.kind() == kind && d.id == id)
    }

    /// The UART, if attached.
    pub fn serial(&self) -> Option<&Arc<Mutex<Serial>>> {
        self.devices.iter().find_map(|d| match &d.handle {
            DeviceHandle::Serial(serial) => Some(serial),
            _ => None,
        })
    }

    /// The i8042, if attached.
    pub fn i8042(&self) -> Option<&Arc<Mutex<I8042>>> {
        self.devices.iter().find_map(|d| match &d.handle {
            DeviceHandle::I8042(i8042) => Some(i8042),
            _ => None,
        })
    }

    /// The kernel command-line entries that announce the virtio devices, in attach order.
    pub fn cmdline_args(&self) -> impl Iterator<Item = String> + '_ {
        self.devices
            .iter()
            .filter_map(|d| match (&d.transport, d.irq) {
                (Transport::Mmio { addr, .. }, Some(irq)) => {
                    Some(MmioSlot { addr: *addr, irq }.cmdline_arg())
                }
                _ => None,
            })
    }

    /// The event-loop subscribers of the devices that have one.
    pub fn subscribers(&self) -> impl Iterator<Item = Subscriber> + '_ {
        self.devices.iter().filter_map(|d| d.handle.subscriber())
    }

    /// The interrupt lines of the virtio devices.
    pub fn virtio_interrupts(&self) -> Vec<Arc<Interrupt>> {
        let interrupts = self.devices.iter().filter_map(|d| match &d.transport {
            Transport::Mmio { transport, .. } => Some(transport),
            Transport::MmioWindow { .. } | Transport::PortIo { .. } => None,
        });
        interrupts
            .map(|transport| {
                let transport = transport
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                transport.interrupt().clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use devices::legacy::EventFdTrigger;
    use devices::virtio::mmio::MmioTransport;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::device_manager::block;

    #[test]
    fn devices_are_found_by_kind_and_id_and_only_virtio_ones_are_announced() {
        let path = std::env::temp_dir().join(format!("kiln-registry-{}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        let config: DriveConfig = serde_json::from_value(serde_json::json!({
            "drive_id": "data", "path_on_host": path, "is_root_device": false,
        }))
        .unwrap();
        let device = block::create(&config).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        let transport = MmioTransport::new(device.clone(), mem, interrupt.clone());
        let mut registry = DeviceRegistry::default();
        registry.insert(RegisteredDevice {
            id: "data".into(),
            irq: Some(5),
            transport: Transport::Mmio {
                addr: 0xc000_1000,
                transport: Arc::new(Mutex::new(transport)),
            },
            handle: DeviceHandle::Block { device, config },
        });
        assert!(registry.i8042().is_none());
        let trigger = || EventFdTrigger::new(EventFd::new(0).unwrap());
        registry.insert(RegisteredDevice {
            id: "i8042".into(),
            irq: Some(1),
            transport: Transport::PortIo { base: 0x60, len: 5 },
            handle: DeviceHandle::I8042(Arc::new(Mutex::new(I8042::new(trigger(), trigger())))),
        });
        assert!(registry.i8042().is_some());
        assert!(registry.serial().is_none());
        let mut mmio_bus = Bus::new();
        let start = devices::boot_timer::Timestamp::now();
        registry.attach_boot_timer(&mut mmio_bus, start).unwrap();
        let timer = registry
            .get_mut(DeviceKind::BootTimer, "boot-timer")
            .unwrap();
        assert_eq!(timer.irq, None);
        let found = registry.get_mut(DeviceKind::Block, "data").unwrap();
        assert_eq!((found.id.as_str(), found.irq), ("data", Some(5)));
        assert!(registry.get_mut(DeviceKind::Net, "data").is_none());
        assert!(registry.get_mut(DeviceKind::Block, "other").is_none());
        assert_eq!(
            registry.cmdline_args().collect::<Vec<_>>(),
            ["virtio_mmio.device=4K@0xc0001000:5"]
        );
        assert_eq!(registry.subscribers().count(), 1);
        let interrupts = registry.virtio_interrupts();
        assert_eq!(interrupts.len(), 1);
        assert!(Arc::ptr_eq(&interrupts[0], &interrupt));
        std::fs::remove_file(path).unwrap();
    }
}
