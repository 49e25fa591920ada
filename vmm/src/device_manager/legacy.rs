//! The legacy devices on the port I/O bus: the COM1 UART (IRQ 4) and the i8042 controller.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::legacy::{EventFdTrigger, Serial, I8042};
use devices::{Bus, BusError};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// COM1's ports.
pub const SERIAL_PORT: u64 = 0x3f8;
const SERIAL_PORT_LEN: u64 = 8;
/// COM1's interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042's data port; the command port is at +4.
const I8042_PORT: u64 = 0x60;
const I8042_PORT_LEN: u64 = 5;

/// Errors attaching the legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// An eventfd could not be created or cloned.
    #[error("Failed to create an eventfd for the legacy devices: {0}")]
    EventFd(std::io::Error),
    /// The serial interrupt could not be wired to KVM.
    #[error("Failed to register the serial irqfd: {0}")]
    Irqfd(kvm_ioctls::Error),
    /// A device could not be placed on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The attached UART, for the console input path.
#[derive(Debug)]
pub struct LegacyDevices {
    /// The UART.
    pub serial: Arc<Mutex<Serial>>,
    /// Fires when the guest drains a full receive FIFO.
    pub serial_drained: EventFd,
}

/// Attaches the UART and the i8042 to `io_bus`. The i8042's reset command writes `stop_evt`.
pub fn attach(
    vm: &VmFd,
    io_bus: &mut Bus,
    serial_out: Box<dyn Write + Send>,
    stop_evt: &EventFd,
) -> Result<LegacyDevices, LegacyError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(LegacyError::EventFd)?;
    vm.register_irqfd(&irq, SERIAL_IRQ)
        .map_err(LegacyError::Irqfd)?;
    let drained = EventFd::new(EFD_NONBLOCK).map_err(LegacyError::EventFd)?;
    let serial = Arc::new(Mutex::new(Serial::new(
        EventFdTrigger::new(irq),
        serial_out,
        drained.try_clone().map_err(LegacyError::EventFd)?,
    )));
    io_bus.insert(serial.clone(), SERIAL_PORT, SERIAL_PORT_LEN)?;

    let reset = stop_evt.try_clone().map_err(LegacyError::EventFd)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(EventFdTrigger::new(reset))));
    io_bus.insert(i8042, I8042_PORT, I8042_PORT_LEN)?;
    Ok(LegacyDevices {
        serial,
        serial_drained: drained,
    })
}
