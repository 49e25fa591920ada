//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status and command), with an AT
//! keyboard on its first channel and nothing on the auxiliary (mouse) channel.
//!
//! This module owns the controller's registers (the command byte "CTR", the status register and
//! the output port), the output buffer the guest reads at 0x60, the keyboard's command state and
//! the keyboard interrupt, IRQ 1. The guest uses the controller in three ways:
//!
//! - Linux's i8042 and atkbd drivers probe it (CTR read and write, self tests) and bind a
//!   keyboard, talking to the keyboard through the data port.
//! - `reboot=k` pulses the reset line (command 0xFE), which signals the VMM's reset eventfd and
//!   ends the VM.
//! - The VMM types Ctrl-Alt-Del ([`I8042::trigger_ctrl_alt_del`]) to ask the guest to reboot.
//!
//! The keyboard (its commands, replies and scan codes) lives in `keyboard`. Every byte the guest
//! can make the device produce waits either in the keyboard's fixed 16-byte buffer or in the
//! controller's single reply slot, so a guest that writes commands without reading the replies
//! cannot make the VMM allocate.

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::BusDevice;
use keyboard::{ctrl_alt_del_codes, Keyboard};

mod keyboard;
mod state;

pub use keyboard::KeyboardState;
pub use state::{I8042State, I8042StateError};

/// Offset of the data port, 0x60.
const DATA: u64 = 0;
/// Offset of the status (read) and command (write) port, 0x64.
const COMMAND: u64 = 4;

// Status register bits.
/// The output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// The system flag: set once the controller passed its self test.
const STATUS_SYSTEM: u8 = 0x04;
/// The last byte the guest wrote went to the command port rather than the data port.
const STATUS_COMMAND: u8 = 0x08;
/// The keyboard inhibit switch is off. Linux warns "Keylock active" when this bit is clear.
const STATUS_UNLOCKED: u8 = 0x10;

// Controller command byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// Bit 7 does not exist in the CTR; it always reads as 0.
const CTR_WRITABLE: u8 = 0x7f;
/// What the firmware would leave: keyboard interrupt on, POST passed, set 2 translated to set 1,
/// and the absent aux channel disabled.
const CTR_POWER_ON: u8 = CTR_KBD_INT | CTR_SYSTEM | CTR_TRANSLATE | CTR_AUX_DISABLE;

// Controller commands, written to 0x64.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xF0-0xFF pulse the output port lines whose bit is clear in the low nibble; bit 0 is the CPU
/// reset line, so 0xFE (what Linux's `reboot=k` sends) resets.
const CMD_PULSE_FIRST: u8 = 0xf0;

// Controller replies.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_TEST_PASSED: u8 = 0x00;
/// Aux interface test result "clock line stuck high": what a port with nothing plugged in
/// reports, and a value Linux takes as "no aux port" at once.
const AUX_TEST_CLOCK_HIGH: u8 = 0x02;

/// Output port bit 0 drives the CPU reset line (active low); bit 1 is the A20 gate.
const OUTPUT_PORT_RESET: u8 = 0x01;
const OUTPUT_PORT_POWER_ON: u8 = OUTPUT_PORT_RESET | 0x02;

/// Errors raised when the VMM injects keys.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    /// The output buffer cannot take the whole key sequence.
    #[error("The i8042 output buffer has room for {free} bytes, fewer than the {needed} needed.")]
    BufferFull { free: usize, needed: usize },
    /// The guest told the keyboard to stop scanning (command 0xF5).
    #[error("The guest has disabled keyboard scanning.")]
    ScanningDisabled,
    /// The keyboard interrupt eventfd could not be written.
    #[error("Failed to raise the keyboard interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// What the guest did with the controller, with the meanings of Firecracker's `i8042` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct I8042Counters {
    /// Reset pulses and interrupts that could not be signalled.
    pub error_count: u64,
    /// Reads that were not one byte from 0x60 or 0x64.
    pub missed_read_count: u64,
    /// Writes that were not one byte to 0x60 or 0x64, or an unknown command.
    pub missed_write_count: u64,
    /// Bytes read from 0x60 and 0x64.
    pub read_count: u64,
    /// Times the guest pulsed the reset line.
    pub reset_count: u64,
    /// Bytes written to 0x60 and 0x64 that the controller acted on.
    pub write_count: u64,
}

/// The i8042 controller and its keyboard on the port I/O bus.
#[derive(Debug)]
pub struct I8042 {
    reset: EventFdTrigger,
    kbd_irq: EventFdTrigger,
    ctr: u8,
    output_port: u8,
    /// Status bit 3: the guest's last write went to 0x64.
    last_write_was_command: bool,
    /// A controller command waiting for its parameter byte at 0x60.
    awaiting: Option<u8>,
    /// A reply from the controller itself. It is read before keyboard bytes, as the controller
    /// writes it straight into its output register while the keyboard's bytes wait.
    controller_reply: Option<u8>,
    /// The last byte the guest read at 0x60: real controllers return it again when empty.
    last_read: u8,
    /// Whether IRQ 1 is asserted: the output buffer is full and CTR enables the interrupt.
    /// Each rising edge is one eventfd write, which KVM turns into one interrupt.
    irq_line: bool,
    keyboard: Keyboard,
    counters: I8042Counters,
}

impl I8042 {
    /// A controller that signals `reset` when the guest pulses the reset line and raises
    /// `kbd_irq` (IRQ 1) when a byte arrives in its output buffer.
    pub fn new(reset: EventFdTrigger, kbd_irq: EventFdTrigger) -> Self {
        Self {
            reset,
            kbd_irq,
            ctr: CTR_POWER_ON,
            output_port: OUTPUT_PORT_POWER_ON,
            last_write_was_command: true,
            awaiting: None,
            controller_reply: None,
            last_read: 0,
            irq_line: false,
            keyboard: Keyboard::new(),
            counters: I8042Counters::default(),
        }
    }

    /// What the guest did with the controller so far.
    pub fn counters(&self) -> I8042Counters {
        self.counters
    }

    /// Types Ctrl-Alt-Del: presses Ctrl, Alt and Del, then releases them, in the scan code set
    /// the guest reads, and raises the keyboard interrupt. Either the whole sequence is queued or,
    /// with an error, none of it.
    pub fn trigger_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        if !self.keyboard.scanning {
            return Err(I8042Error::ScanningDisabled);
        }
        let codes = ctrl_alt_del_codes(self.guest_scan_set());
        let free = self.keyboard.free();
        if free < codes.len() {
            return Err(I8042Error::BufferFull {
                free,
                needed: codes.len(),
            });
        }
        self.keyboard.out.extend(codes);
        self.update_irq()
    }

    /// The scan code set the guest sees: with translation on (as Linux leaves it), the
    /// controller turns the keyboard's set 2 into set 1.
    fn guest_scan_set(&self) -> u8 {
        if self.translating() {
            1
        } else {
            self.keyboard.scan_set
        }
    }

    fn translating(&self) -> bool {
        self.ctr & CTR_TRANSLATE != 0
    }

    fn keyboard_enabled(&self) -> bool {
        self.ctr & CTR_KBD_DISABLE == 0
    }

    /// Whether the guest has a byte to read. Keyboard bytes wait while the guest has disabled
    /// the keyboard channel.
    fn output_full(&self) -> bool {
        self.controller_reply.is_some()
            || (self.keyboard_enabled() && !self.keyboard.out.is_empty())
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if self.output_full() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.ctr & CTR_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        if self.last_write_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    /// Raises IRQ 1 on a rising edge of the interrupt line. KVM's irqfd injects an edge, so
    /// writing the eventfd while the line is already up would deliver a spurious interrupt.
    fn update_irq(&mut self) -> Result<(), I8042Error> {
        let level = self.ctr & CTR_KBD_INT != 0 && self.output_full();
        let rising = level && !self.irq_line;
        self.irq_line = level;
        if rising {
            self.kbd_irq.trigger().map_err(I8042Error::Interrupt)?;
        }
        Ok(())
    }

    /// `update_irq` on guest-triggered paths, where there is no caller to hand an error to.
    fn update_irq_or_log(&mut self) {
        if let Err(e) = self.update_irq() {
            self.counters.error_count += 1;
            throttled_log::throttled_error!("{e}");
        }
    }

    fn pulse_reset(&mut self) {
        self.counters.reset_count += 1;
        if let Err(e) = self.reset.trigger() {
            self.counters.error_count += 1;
            throttled_log::throttled_error!("Failed to signal the i8042 reset: {e}");
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = match self.controller_reply.take() {
            Some(byte) => Some(byte),
            None if self.keyboard_enabled() => self.keyboard.out.pop_front(),
            None => None,
        };
        if let Some(byte) = byte {
            self.last_read = byte;
            // Reading empties the output register, dropping the line; the next byte, if any,
            // then loads and raises it again.
            self.irq_line = false;
            self.update_irq_or_log();
        }
        self.last_read
    }

    /// Acts on a controller command; returns whether it is one the controller knows.
    fn write_command(&mut self, command: u8) -> bool {
        self.last_write_was_command = true;
        // A new command abandons one still waiting for its parameter.
        self.awaiting = None;
        match command {
            CMD_READ_CTR => self.controller_reply = Some(self.ctr),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.awaiting = Some(command),
            // There is no aux device: its channel stays disabled whatever the guest asks.
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_AUX_TEST => self.controller_reply = Some(AUX_TEST_CLOCK_HIGH),
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYSTEM;
                self.controller_reply = Some(SELF_TEST_PASSED);
            }
            CMD_KBD_TEST => self.controller_reply = Some(INTERFACE_TEST_PASSED),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_OUTPUT_PORT => self.controller_reply = Some(self.output_port),
            CMD_PULSE_FIRST.. if command & OUTPUT_PORT_RESET == 0 => self.pulse_reset(),
            _ => {
                throttled_log::throttled_debug!("Ignoring i8042 command {command:#04x}");
                self.update_irq_or_log();
                return false;
            }
        }
        self.update_irq_or_log();
        true
    }

    fn write_data(&mut self, byte: u8) {
        self.last_write_was_command = false;
        match self.awaiting.take() {
            Some(CMD_WRITE_CTR) => self.ctr = byte & CTR_WRITABLE,
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = byte;
                if byte & OUTPUT_PORT_RESET == 0 {
                    self.pulse_reset();
                }
            }
            Some(CMD_WRITE_KBD_BUFFER) => self.keyboard.send(&[byte]),
            // The aux loopback has no aux channel to come back through, so the byte returns
            // without the aux flag: Linux reads that as "no aux port" at once instead of after
            // a half-second timeout.
            Some(CMD_WRITE_AUX_BUFFER) => self.controller_reply = Some(byte),
            // Bytes for the aux device go nowhere.
            Some(_) => {}
            None => {
                // Sending to the keyboard re-enables its channel, as on real controllers.
                self.ctr &= !CTR_KBD_DISABLE;
                let translating = self.translating();
                self.keyboard.command(byte, translating);
            }
        }
        self.update_irq_or_log();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The registers are byte-wide and x86 guests use `inb`: other sizes read as zeros and
        // have no side effect (reading 0x60 consumes a byte).
        let [byte] = data else {
            self.counters.missed_read_count += 1;
            return;
        };
        *byte = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            // 0x61-0x63 are not the i8042's.
            _ => {
                self.counters.missed_read_count += 1;
                return;
            }
        };
        self.counters.read_count += 1;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let acted = match (offset, data) {
            (DATA, &[byte]) => {
                self.write_data(byte);
                true
            }
            (COMMAND, &[byte]) => self.write_command(byte),
            _ => false,
        };
        if acted {
            self.counters.write_count += 1;
        } else {
            self.counters.missed_write_count += 1;
        }
    }
}

#[cfg(test)]
mod tests;
