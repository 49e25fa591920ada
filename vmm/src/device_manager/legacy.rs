//! The legacy devices on the port I/O bus: the COM1 UART (IRQ 4) and the i8042 keyboard
//! controller (IRQ 1).

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::legacy::{EventFdTrigger, I8042StateError, Serial, SerialError, I8042};
use devices::{Bus, BusError};
use kvm_ioctls::VmFd;

use crate::device_manager::registry::{DeviceHandle, DeviceRegistry, RegisteredDevice, Transport};
use crate::metrics::{Counter, MetricSource};
use crate::snapshot::state::{DevicesState, SavedSerial};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// COM1's ports.
pub const SERIAL_PORT: u64 = 0x3f8;
const SERIAL_PORT_LEN: u64 = 8;
/// COM1's interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042's data port; the command port is at +4.
const I8042_PORT: u64 = 0x60;
const I8042_PORT_LEN: u64 = 5;
/// The i8042 keyboard's interrupt line.
pub const I8042_IRQ: u32 = 1;

/// Errors attaching the legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// An eventfd could not be created or cloned.
    #[error("Failed to create an eventfd for the legacy devices: {0}")]
    EventFd(std::io::Error),
    /// A device's interrupt could not be wired to KVM.
    #[error("Failed to register the irqfd for IRQ {irq}: {source}")]
    Irqfd { irq: u32, source: kvm_ioctls::Error },
    /// A device could not be placed on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The snapshot's UART state cannot be restored.
    #[error(transparent)]
    SerialState(#[from] SerialError),
    /// The snapshot's i8042 state cannot be restored.
    #[error(transparent)]
    I8042State(#[from] I8042StateError),
}

/// The UART's counters, as Firecracker's `uart` metrics group.
#[derive(Debug)]
pub struct UartMetrics(pub Arc<Mutex<Serial>>);

impl MetricSource for UartMetrics {
    fn counters(&self) -> Vec<Counter> {
        let serial = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Counter::group("uart", serial.counters())
    }
}

/// The i8042's counters, as Firecracker's `i8042` metrics group.
#[derive(Debug)]
pub struct I8042Metrics(pub Arc<Mutex<I8042>>);

impl MetricSource for I8042Metrics {
    fn counters(&self) -> Vec<Counter> {
        let c = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters();
        Counter::group(
            "i8042",
            [
                ("error_count", c.error_count),
                ("missed_read_count", c.missed_read_count),
                ("missed_write_count", c.missed_write_count),
                ("read_count", c.read_count),
                ("reset_count", c.reset_count),
                ("write_count", c.write_count),
            ],
        )
    }
}

/// Creates an eventfd that raises `irq` in the guest.
fn irq_eventfd(vm: &VmFd, irq: u32) -> Result<EventFd, LegacyError> {
    let fd = EventFd::new(EFD_NONBLOCK).map_err(LegacyError::EventFd)?;
    vm.register_irqfd(&fd, irq)
        .map_err(|source| LegacyError::Irqfd { irq, source })?;
    Ok(fd)
}

/// Attaches the UART and the i8042 to `io_bus` and records them in `registry` (as `com1` and
/// `i8042`), in the states `saved` holds for them when restoring. The i8042's reset command
/// writes `stop_evt`.
pub fn attach(
    vm: &VmFd,
    io_bus: &mut Bus,
    registry: &mut DeviceRegistry,
    serial_out: Box<dyn Write + Send>,
    stop_evt: &EventFd,
    saved: Option<&DevicesState>,
) -> Result<(), LegacyError> {
    let irq = EventFdTrigger::new(irq_eventfd(vm, SERIAL_IRQ)?);
    let drained = EventFd::new(EFD_NONBLOCK).map_err(LegacyError::EventFd)?;
    let serial = match saved.and_then(|s| s.serial.as_ref()) {
        Some(SavedSerial(state)) => Serial::restore(state, irq, serial_out, drained)?,
        None => Serial::new(irq, serial_out, drained),
    };
    let serial = Arc::new(Mutex::new(serial));
    io_bus.insert(serial.clone(), SERIAL_PORT, SERIAL_PORT_LEN)?;
    registry.insert(RegisteredDevice {
        id: "com1".to_string(),
        irq: Some(SERIAL_IRQ),
        transport: Transport::PortIo {
            base: SERIAL_PORT,
            len: SERIAL_PORT_LEN,
        },
        handle: DeviceHandle::Serial(serial),
    });

    let reset = stop_evt.try_clone().map_err(LegacyError::EventFd)?;
    let (reset, kbd_irq) = (
        EventFdTrigger::new(reset),
        EventFdTrigger::new(irq_eventfd(vm, I8042_IRQ)?),
    );
    let i8042 = match saved.and_then(|s| s.i8042.as_ref()) {
        Some(state) => I8042::restore(state, reset, kbd_irq)?,
        None => I8042::new(reset, kbd_irq),
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    io_bus.insert(i8042.clone(), I8042_PORT, I8042_PORT_LEN)?;
    registry.insert(RegisteredDevice {
        id: "i8042".to_string(),
        irq: Some(I8042_IRQ),
        transport: Transport::PortIo {
            base: I8042_PORT,
            len: I8042_PORT_LEN,
        },
        handle: DeviceHandle::I8042(i8042),
    });
    Ok(())
}
