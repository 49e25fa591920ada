//! Tests of the i8042: Linux's probe sequence, the status and interrupt behaviour, the reset
//! line, Ctrl-Alt-Del, and a hostile guest.

use super::keyboard::*;
use super::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const STATUS_AUX_DATA: u8 = 0x20;

/// The device with the far ends of its eventfds, and helpers that drive it as a guest would.
struct Rig {
    dev: I8042,
    reset: EventFd,
    irq: EventFd,
}

fn rig() -> Rig {
    let reset = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let dev = I8042::new(
        EventFdTrigger::new(reset.try_clone().unwrap()),
        EventFdTrigger::new(irq.try_clone().unwrap()),
    );
    Rig { dev, reset, irq }
}

impl Rig {
    fn status(&mut self) -> u8 {
        let mut data = [0];
        self.dev.read(COMMAND, &mut data);
        data[0]
    }

    fn read(&mut self) -> u8 {
        let mut data = [0];
        self.dev.read(DATA, &mut data);
        data[0]
    }

    fn command(&mut self, command: u8) {
        self.dev.write(COMMAND, &[command]);
    }

    fn data(&mut self, byte: u8) {
        self.dev.write(DATA, &[byte]);
    }

    /// Reads while the status says a byte is there, as Linux's `i8042_flush`.
    fn drain(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        while self.status() & STATUS_OUTPUT_FULL != 0 {
            assert!(bytes.len() <= BUFFER_LEN, "the output buffer never empties");
            bytes.push(self.read());
        }
        bytes
    }

    /// Linux's `i8042_command`: a controller command, its parameters, then its replies.
    fn controller(&mut self, command: u8, params: &[u8]) -> Vec<u8> {
        self.command(command);
        for &p in params {
            self.data(p);
        }
        self.drain()
    }

    /// A keyboard command as libps2 sends it, returning the replies.
    fn keyboard(&mut self, bytes: &[u8]) -> Vec<u8> {
        bytes.iter().for_each(|&b| self.data(b));
        self.drain()
    }

    /// How many interrupts were raised since the last call.
    fn irqs(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    fn resets(&self) -> u64 {
        self.reset.read().unwrap_or(0)
    }
}

#[test]
fn linux_probe_sequence_binds_a_keyboard() {
    let mut r = rig();
    assert_eq!(r.drain(), Vec::<u8>::new());
    assert_eq!(r.controller(CMD_SELF_TEST, &[]), [SELF_TEST_PASSED]);
    // i8042_controller_init reads the CTR until two reads agree.
    let ctr = r.controller(CMD_READ_CTR, &[]);
    assert_eq!(ctr, [CTR_POWER_ON]);
    assert_eq!(r.controller(CMD_READ_CTR, &[]), ctr);
    // ... then disables the keyboard and its interrupt, keeping translation.
    let init = (CTR_POWER_ON | CTR_KBD_DISABLE) & !CTR_KBD_INT;
    assert_eq!(r.controller(CMD_WRITE_CTR, &[init]), []);
    // The replies so far raised IRQ 1 (Linux has not requested it yet); from here it is off.
    r.irqs();
    assert_eq!(r.controller(CMD_READ_CTR, &[]), [init]);
    assert_eq!(r.controller(CMD_KBD_TEST, &[]), [INTERFACE_TEST_PASSED]);
    // The aux loopback answers at once, without the aux flag, and the aux test reports an error:
    // Linux concludes there is no aux port without waiting for a timeout.
    r.command(CMD_WRITE_AUX_BUFFER);
    r.data(0x5a);
    assert_eq!(
        r.status() & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA),
        STATUS_OUTPUT_FULL
    );
    assert_eq!(r.controller(CMD_AUX_TEST, &[]), [AUX_TEST_CLOCK_HIGH]);
    assert_eq!(r.irqs(), 0, "the interrupt is disabled");

    // i8042_enable_kbd_port, then atkbd's probe and activation.
    let running = CTR_POWER_ON;
    assert_eq!(r.controller(CMD_WRITE_CTR, &[running]), []);
    assert_eq!(r.keyboard(&[KBD_RESET]), [KBD_ACK, KBD_SELF_TEST_PASSED]);
    assert_eq!(r.keyboard(&[KBD_GET_ID]), [KBD_ACK, 0xab, 0x41]);
    assert_eq!(r.keyboard(&[KBD_DISABLE]), [KBD_ACK]);
    assert_eq!(r.keyboard(&[KBD_SET_LEDS, 0x00]), [KBD_ACK, KBD_ACK]);
    assert_eq!(r.keyboard(&[KBD_TYPEMATIC, 0x20]), [KBD_ACK, KBD_ACK]);
    assert_eq!(r.keyboard(&[KBD_ENABLE]), [KBD_ACK]);
    assert_eq!(r.keyboard(&[KBD_SET_DEFAULTS]), [KBD_ACK]);
    assert!(r.irqs() > 0, "keyboard replies raise IRQ 1");
    // The keyboard stays enabled and nothing is left behind.
    assert_eq!(r.status() & STATUS_OUTPUT_FULL, 0);
    assert_eq!(r.controller(CMD_READ_CTR, &[]), [running]);
}

#[test]
fn untranslated_keyboard_reports_set_2_codes() {
    let mut r = rig();
    r.controller(CMD_WRITE_CTR, &[CTR_POWER_ON & !CTR_TRANSLATE]);
    assert_eq!(r.keyboard(&[KBD_GET_ID]), [KBD_ACK, 0xab, 0x83]);
    // Each byte sent is acknowledged; the query then answers the set.
    assert_eq!(r.keyboard(&[KBD_SCAN_SET, 0]), [KBD_ACK, KBD_ACK, 2]);
    assert_eq!(r.keyboard(&[KBD_SCAN_SET, 3]), [KBD_ACK, KBD_ACK]);
    assert_eq!(r.keyboard(&[KBD_SCAN_SET, 0]), [KBD_ACK, KBD_ACK, 3]);
    assert_eq!(r.keyboard(&[KBD_SCAN_SET, 9]), [KBD_ACK, KBD_RESEND]);
    assert_eq!(r.keyboard(&[KBD_ECHO]), [KBD_ECHO]);
    assert_eq!(r.keyboard(&[KBD_RESEND]), [KBD_ECHO]);
    assert_eq!(
        r.keyboard(&[0x42]),
        [KBD_RESEND],
        "unknown commands ask for a resend"
    );
    // A reset restores set 2.
    assert_eq!(r.keyboard(&[KBD_RESET]), [KBD_ACK, KBD_SELF_TEST_PASSED]);
    assert_eq!(r.keyboard(&[KBD_SCAN_SET, 0]), [KBD_ACK, KBD_ACK, 2]);
}

#[test]
fn status_register_follows_the_output_buffer() {
    let mut r = rig();
    let idle = STATUS_UNLOCKED | STATUS_SYSTEM;
    assert_eq!(r.status(), idle | STATUS_COMMAND);
    r.command(CMD_WRITE_KBD_BUFFER);
    assert_eq!(r.status(), idle | STATUS_COMMAND);
    r.data(0x1c);
    assert_eq!(r.status(), idle | STATUS_OUTPUT_FULL);
    r.command(CMD_WRITE_KBD_BUFFER);
    r.data(0x9c);
    assert_eq!(r.read(), 0x1c);
    assert_eq!(r.status(), idle | STATUS_OUTPUT_FULL);
    assert_eq!(r.read(), 0x9c);
    assert_eq!(r.status(), idle);
    // An empty buffer returns the last byte again, as real controllers do.
    assert_eq!(r.read(), 0x9c);
    // Clearing the CTR's system flag clears the status's.
    r.controller(CMD_WRITE_CTR, &[CTR_POWER_ON & !CTR_SYSTEM]);
    assert_eq!(r.status() & STATUS_SYSTEM, 0);
    r.controller(CMD_SELF_TEST, &[]);
    assert_ne!(r.status() & STATUS_SYSTEM, 0);
}

#[test]
fn controller_replies_overtake_keyboard_bytes() {
    let mut r = rig();
    r.controller(CMD_WRITE_KBD_BUFFER, &[]);
    r.data(0x1e);
    r.command(CMD_READ_CTR);
    assert_eq!(r.drain(), [CTR_POWER_ON, 0x1e]);
}

#[test]
fn interrupt_rises_once_per_byte_and_respects_the_ctr() {
    let mut r = rig();
    r.dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(r.irqs(), 1);
    for _ in 0..7 {
        r.read();
        assert_eq!(r.irqs(), 1, "each byte that loads raises IRQ 1 again");
    }
    r.read();
    assert_eq!(r.irqs(), 0, "an empty buffer raises nothing");

    // With the interrupt off, bytes wait; turning it on raises it.
    r.controller(CMD_WRITE_CTR, &[CTR_POWER_ON & !CTR_KBD_INT]);
    r.command(CMD_WRITE_KBD_BUFFER);
    r.data(0x01);
    assert_eq!(r.irqs(), 0);
    r.command(CMD_WRITE_CTR);
    r.data(CTR_POWER_ON);
    assert_eq!(r.irqs(), 1);
    assert_eq!(r.drain(), [0x01]);

    // A disabled keyboard channel holds keyboard bytes until it is enabled again.
    r.command(CMD_KBD_DISABLE);
    r.dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(r.status() & STATUS_OUTPUT_FULL, 0);
    assert_eq!(r.irqs(), 0);
    r.command(CMD_KBD_ENABLE);
    assert_eq!(r.irqs(), 1);
    assert_eq!(r.drain().len(), 8);
}

#[test]
fn reset_line_signals_the_vmm() {
    let mut r = rig();
    r.command(0x01);
    r.data(0xfe);
    r.dev.write(COMMAND, &[0xfe, 0x00]);
    r.dev.write(1, &[0xfe]);
    r.command(0xff);
    assert_eq!(
        r.resets(),
        0,
        "only a one-byte pulse of the reset line at 0x64 resets"
    );
    r.command(0xfe);
    assert_eq!(r.resets(), 1);
    // Writing the output port with the reset bit low resets too; with it high (A20 gating,
    // as Linux's boot code does) it does not.
    r.controller(CMD_WRITE_OUTPUT_PORT, &[0xdf]);
    assert_eq!(r.resets(), 0);
    assert_eq!(r.controller(CMD_READ_OUTPUT_PORT, &[]), [0xdf]);
    r.controller(CMD_WRITE_OUTPUT_PORT, &[0xde]);
    assert_eq!(r.resets(), 1);
}

#[test]
fn ctrl_alt_del_in_set_1_when_translating() {
    let mut r = rig();
    r.dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(r.irqs(), 1);
    assert_eq!(r.drain(), [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
}

#[test]
fn ctrl_alt_del_in_set_2_and_3_without_translation() {
    let mut r = rig();
    r.controller(CMD_WRITE_CTR, &[CTR_POWER_ON & !CTR_TRANSLATE]);
    r.dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(r.irqs(), 1);
    assert_eq!(
        r.drain(),
        [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
    );
    r.keyboard(&[KBD_SCAN_SET, 3]);
    r.irqs();
    r.dev.trigger_ctrl_alt_del().unwrap();
    assert_eq!(r.irqs(), 1);
    assert_eq!(
        r.drain(),
        [0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11]
    );
}

#[test]
fn ctrl_alt_del_is_all_or_nothing() {
    let mut r = rig();
    r.dev.trigger_ctrl_alt_del().unwrap();
    r.dev.trigger_ctrl_alt_del().unwrap();
    assert!(matches!(
        r.dev.trigger_ctrl_alt_del(),
        Err(I8042Error::BufferFull { free: 0, needed: 8 })
    ));
    for _ in 0..5 {
        r.read();
    }
    assert!(matches!(
        r.dev.trigger_ctrl_alt_del(),
        Err(I8042Error::BufferFull { free: 5, needed: 8 })
    ));
    assert_eq!(r.drain().len(), 11, "a failed attempt queues nothing");

    // A keyboard told to stop scanning sends no keys.
    r.keyboard(&[KBD_DISABLE]);
    assert!(matches!(
        r.dev.trigger_ctrl_alt_del(),
        Err(I8042Error::ScanningDisabled)
    ));
    r.keyboard(&[KBD_ENABLE]);
    r.dev.trigger_ctrl_alt_del().unwrap();
}

#[test]
fn keyboard_replies_that_do_not_fit_are_dropped_whole() {
    let mut r = rig();
    for _ in 0..BUFFER_LEN - 1 {
        r.data(KBD_ECHO);
    }
    r.data(KBD_GET_ID);
    r.data(KBD_ECHO);
    r.data(KBD_ECHO);
    let out = r.drain();
    assert_eq!(out.len(), BUFFER_LEN);
    assert!(out.iter().all(|&b| b == KBD_ECHO));
}

#[test]
fn odd_sizes_and_other_ports_have_no_effect() {
    let mut r = rig();
    r.command(CMD_WRITE_KBD_BUFFER);
    r.data(0x2a);
    let mut wide = [0xffu8; 4];
    r.dev.read(DATA, &mut wide);
    assert_eq!(wide, [0; 4]);
    r.dev.read(2, &mut wide[..1]);
    assert_eq!(wide[0], 0);
    r.dev.read(u64::MAX, &mut wide[..0]);
    r.dev.write(DATA, &[]);
    r.dev.write(DATA, &[KBD_RESET, KBD_RESET]);
    assert_eq!(r.drain(), [0x2a]);
}

/// A guest writing random bytes of random sizes to random offsets never panics, never grows the
/// buffer past its bound, and leaves a controller that still answers.
#[test]
fn hostile_guest_cannot_break_or_grow_the_device() {
    let mut r = rig();
    let capacity = r.dev.keyboard.out.capacity();
    // xorshift64, fixed seed: the same sequence on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut buf = [0u8; 8];
    for _ in 0..200_000 {
        let roll = next();
        let offset = match roll & 7 {
            0..=2 => DATA,
            3..=5 => COMMAND,
            6 => (roll >> 8) & 7,
            _ => roll >> 8,
        };
        let len = match (roll >> 16) & 7 {
            0..=5 => 1,
            n => usize::try_from(n).unwrap(),
        };
        let data = &mut buf[..len];
        data.iter_mut()
            .zip(roll.to_le_bytes().iter().rev())
            .for_each(|(d, s)| *d = *s);
        match (roll >> 20) & 15 {
            0..=6 => r.dev.read(offset, data),
            7 => {
                let _ = r.dev.trigger_ctrl_alt_del();
            }
            _ => r.dev.write(offset, data),
        }
        assert!(r.dev.keyboard.out.len() <= BUFFER_LEN);
        assert_eq!(r.dev.keyboard.out.capacity(), capacity);
    }
    assert!(r.resets() > 0, "the stress reached the reset command");
    // Whatever state the guest left, the probe still works.
    r.command(CMD_KBD_ENABLE);
    r.drain();
    assert_eq!(r.controller(CMD_SELF_TEST, &[]), [SELF_TEST_PASSED]);
    r.controller(CMD_WRITE_CTR, &[CTR_POWER_ON]);
    // The first byte may complete a keyboard command left waiting for its parameter.
    r.keyboard(&[KBD_RESET]);
    assert_eq!(r.keyboard(&[KBD_RESET]), [KBD_ACK, KBD_SELF_TEST_PASSED]);
}

#[test]
fn counters_have_firecrackers_meanings() {
    let mut r = rig();
    r.command(CMD_SELF_TEST);
    assert_eq!(r.read(), SELF_TEST_PASSED);
    r.status();
    // Not byte-wide, not the i8042's port, an unknown command.
    r.dev.read(DATA, &mut [0; 2]);
    r.dev.read(2, &mut [0]);
    r.dev.write(COMMAND, &[0xfe, 0]);
    r.dev.write(3, &[0]);
    r.command(0xc0);
    r.command(0xfe);
    assert_eq!(
        r.dev.counters(),
        I8042Counters {
            error_count: 0,
            missed_read_count: 2,
            missed_write_count: 3,
            read_count: 2,
            reset_count: 1,
            write_count: 2,
        }
    );
}
