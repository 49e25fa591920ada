//! The i8042's state as plain data, for a snapshot: the registers the guest set, the bytes
//! waiting for it, and the keyboard's. The counters are the process's metrics, not the
//! device's, and start from zero in a restored VM.

use super::keyboard::{Keyboard, KeyboardState};
use super::{EventFdTrigger, I8042Counters, CTR_WRITABLE, I8042};

/// The controller's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// The command byte (CTR).
    pub ctr: u8,
    /// The output port.
    pub output_port: u8,
    /// Whether the guest's last write went to the command port.
    pub last_write_was_command: bool,
    /// A controller command waiting for its parameter byte.
    pub awaiting: Option<u8>,
    /// A reply from the controller itself, read before keyboard bytes.
    pub controller_reply: Option<u8>,
    /// The last byte the guest read at 0x60.
    pub last_read: u8,
    /// Whether IRQ 1 is asserted.
    pub irq_line: bool,
    /// The keyboard's state.
    pub keyboard: KeyboardState,
}

/// Why a saved i8042 state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum I8042StateError {
    /// A field holds a value the controller never has.
    #[error("The saved i8042 state is not one the controller can be in: {0}.")]
    Invalid(&'static str),
}

impl I8042 {
    /// The state, for a snapshot.
    pub fn save(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output_port: self.output_port,
            last_write_was_command: self.last_write_was_command,
            awaiting: self.awaiting,
            controller_reply: self.controller_reply,
            last_read: self.last_read,
            irq_line: self.irq_line,
            keyboard: self.keyboard.save(),
        }
    }

    /// The controller `state` describes, wired as [`I8042::new`] wires a new one. An asserted
    /// IRQ 1 is not raised again: the interrupt it stood for is in the saved irqchip.
    pub fn restore(
        state: &I8042State,
        reset: EventFdTrigger,
        kbd_irq: EventFdTrigger,
    ) -> Result<Self, I8042StateError> {
        if state.ctr & !CTR_WRITABLE != 0 {
            return Err(I8042StateError::Invalid("the command byte has bit 7 set"));
        }
        let keyboard = Keyboard::restore(&state.keyboard).ok_or(I8042StateError::Invalid(
            "the keyboard buffer or scan code set",
        ))?;
        Ok(Self {
            reset,
            kbd_irq,
            ctr: state.ctr,
            output_port: state.output_port,
            last_write_was_command: state.last_write_was_command,
            awaiting: state.awaiting,
            controller_reply: state.controller_reply,
            last_read: state.last_read,
            irq_line: state.irq_line,
            keyboard,
            counters: I8042Counters::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::legacy::i8042::{COMMAND, DATA, STATUS_OUTPUT_FULL};
    use crate::BusDevice;

    fn trigger() -> (EventFdTrigger, EventFd) {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        (EventFdTrigger::new(fd.try_clone().unwrap()), fd)
    }

    fn read(dev: &mut I8042, port: u64) -> u8 {
        let mut data = [0];
        dev.read(port, &mut data);
        data[0]
    }

    #[test]
    fn a_restored_controller_goes_on_where_the_saved_one_was() {
        let (reset, _) = trigger();
        let (irq, _) = trigger();
        let mut dev = I8042::new(reset, irq);
        // The keyboard's ID waits (ACK read, two bytes left), and a CTR write waits for its
        // parameter.
        dev.write(DATA, &[0xf2]);
        assert_eq!(read(&mut dev, DATA), 0xfa);
        dev.write(COMMAND, &[0x60]);
        let state = dev.save();
        let (reset, reset_fd) = trigger();
        let (irq, _) = trigger();
        let mut restored = I8042::restore(&state, reset, irq).unwrap();
        assert_eq!(restored.save(), state);
        assert_eq!(restored.counters(), I8042Counters::default());
        // The CTR write completes with its parameter; the ID's bytes are still there.
        restored.write(DATA, &[0x45]);
        assert_eq!(restored.ctr, 0x45);
        assert_ne!(read(&mut restored, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut restored, DATA), 0xab);
        // The restored controller drives the new reset line.
        restored.write(COMMAND, &[0xfe]);
        assert_eq!(reset_fd.read().unwrap(), 1);
    }

    #[test]
    fn states_no_controller_can_be_in_are_refused() {
        let (reset, _) = trigger();
        let (irq, _) = trigger();
        let good = I8042::new(reset, irq).save();
        let mut bad = Vec::new();
        let mut state = good.clone();
        state.ctr = 0x80;
        bad.push(state);
        let mut state = good.clone();
        state.keyboard.out = vec![0; 17];
        bad.push(state);
        let mut state = good;
        state.keyboard.scan_set = 4;
        bad.push(state);
        for state in bad {
            let (reset, _) = trigger();
            let (irq, _) = trigger();
            let refused = I8042::restore(&state, reset, irq);
            assert!(
                matches!(refused, Err(I8042StateError::Invalid(_))),
                "{state:?}"
            );
        }
    }
}
