//! The legacy PC devices the guest kernel expects at fixed ports: the 8250 UART, emulated by
//! vm-superio and adapted here to the bus, and Kiln's own i8042 keyboard controller.

mod i8042;
mod serial;

pub use i8042::{I8042Counters, I8042Error, I8042State, I8042StateError, KeyboardState, I8042};
pub use serial::{Serial, SerialError, SerialInput, SerialState, SerialStateDef};

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// Lets a device raise an interrupt, or signal the VMM, by writing to an eventfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `fd`; every trigger adds one to its counter.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
