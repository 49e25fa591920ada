//! The i8042 keyboard controller at ports 0x60-0x64. The guest uses it to reset the machine
//! (`reboot=k` writes 0xFE to port 0x64), which ends the VM.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::BusDevice;

/// The i8042 controller on the port I/O bus.
#[derive(Debug)]
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// A controller that triggers `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The controller has byte-wide registers; wider reads see 0 in the other bytes.
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (&[value], Ok(offset)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.inner.write(offset, value) {
                log::error!("Failed to signal the i8042 reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_signals_the_vmm() {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(EventFdTrigger::new(reset.try_clone().unwrap()));
        i8042.write(4, &[0x01]);
        i8042.write(0, &[0xfe]);
        i8042.write(4, &[0xfe, 0x00]);
        assert!(reset.read().is_err(), "only a one-byte 0xFE at 0x64 resets");
        i8042.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn reads_never_fail() {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(EventFdTrigger::new(reset));
        let mut data = [0xffu8; 4];
        i8042.read(4, &mut data);
        assert_eq!(data, [0; 4]);
        i8042.read(u64::MAX, &mut data[..0]);
    }
}
