//! The AT keyboard behind the i8042's first channel: the commands the guest sends it through
//! port 0x60, its replies, and the bounded buffer its bytes wait in.

use std::collections::VecDeque;

/// How many bytes the keyboard buffers, like a real keyboard. Replies that do not fit are
/// dropped whole; the VMM's Ctrl-Alt-Del gets an error instead.
pub(crate) const BUFFER_LEN: usize = 16;

// Keyboard commands, written to 0x60, and its replies.
pub(super) const KBD_SET_LEDS: u8 = 0xed;
pub(super) const KBD_ECHO: u8 = 0xee;
pub(super) const KBD_SCAN_SET: u8 = 0xf0;
pub(super) const KBD_GET_ID: u8 = 0xf2;
pub(super) const KBD_TYPEMATIC: u8 = 0xf3;
pub(super) const KBD_ENABLE: u8 = 0xf4;
pub(super) const KBD_DISABLE: u8 = 0xf5;
pub(super) const KBD_SET_DEFAULTS: u8 = 0xf6;
pub(super) const KBD_RESEND: u8 = 0xfe;
pub(super) const KBD_RESET: u8 = 0xff;
pub(super) const KBD_ACK: u8 = 0xfa;
pub(super) const KBD_SELF_TEST_PASSED: u8 = 0xaa;

/// The keyboard's state.
#[derive(Debug)]
pub(super) struct Keyboard {
    /// Bytes for the guest, oldest first; never longer than `BUFFER_LEN`.
    pub(super) out: VecDeque<u8>,
    /// The scan code set the keyboard sends, 1 to 3.
    pub(super) scan_set: u8,
    /// Cleared by 0xF5: the keyboard sends no key codes.
    pub(super) scanning: bool,
    /// A command waiting for its parameter byte (0xED, 0xF0 or 0xF3).
    awaiting: Option<u8>,
    /// The last byte sent, for the resend command.
    last_sent: u8,
}

/// The keyboard's state as plain data, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyboardState {
    /// Bytes waiting for the guest, oldest first; at most [`BUFFER_LEN`].
    pub out: Vec<u8>,
    /// The scan code set, 1 to 3.
    pub scan_set: u8,
    /// Whether the keyboard sends key codes.
    pub scanning: bool,
    /// A command waiting for its parameter byte.
    pub awaiting: Option<u8>,
    /// The last byte sent, for the resend command.
    pub last_sent: u8,
}

impl Keyboard {
    /// The state, for a snapshot.
    pub(super) fn save(&self) -> KeyboardState {
        KeyboardState {
            out: self.out.iter().copied().collect(),
            scan_set: self.scan_set,
            scanning: self.scanning,
            awaiting: self.awaiting,
            last_sent: self.last_sent,
        }
    }

    /// The keyboard `state` describes; `None` if no keyboard can be in it (more bytes than
    /// its buffer holds, an unknown scan code set).
    pub(super) fn restore(state: &KeyboardState) -> Option<Self> {
        if state.out.len() > BUFFER_LEN || !(1..=3).contains(&state.scan_set) {
            return None;
        }
        Some(Self {
            out: state.out.iter().copied().collect(),
            scan_set: state.scan_set,
            scanning: state.scanning,
            awaiting: state.awaiting,
            last_sent: state.last_sent,
        })
    }

    pub(super) fn new() -> Self {
        Self {
            out: VecDeque::with_capacity(BUFFER_LEN),
            scan_set: 2,
            scanning: true,
            awaiting: None,
            last_sent: 0,
        }
    }

    /// How many more bytes the buffer takes.
    pub(super) fn free(&self) -> usize {
        BUFFER_LEN.saturating_sub(self.out.len())
    }

    /// Queues a reply whole, or drops it when the buffer lacks room: only a guest that ignores
    /// its replies fills the buffer.
    pub(super) fn send(&mut self, bytes: &[u8]) {
        if self.free() < bytes.len() {
            throttled_log::throttled_debug!(
                "The i8042 output buffer is full; dropping a keyboard reply"
            );
            return;
        }
        self.out.extend(bytes);
        if let Some(&last) = bytes.last() {
            self.last_sent = last;
        }
    }

    /// Restores the power-on defaults and empties the buffer (commands 0xF5, 0xF6, 0xFF).
    fn defaults(&mut self, scanning: bool) {
        self.out.clear();
        self.scan_set = 2;
        self.scanning = scanning;
    }

    /// Answers a byte the guest sent. `translating` says whether the controller translates the
    /// keyboard's bytes to set 1, which changes how the ID and the scan code set read.
    pub(super) fn command(&mut self, byte: u8, translating: bool) {
        if let Some(command) = self.awaiting.take() {
            if command == KBD_SCAN_SET {
                match byte {
                    0 => self.send(&[KBD_ACK, scan_set_id(self.scan_set, translating)]),
                    1..=3 => {
                        self.scan_set = byte;
                        self.send(&[KBD_ACK]);
                    }
                    _ => self.send(&[KBD_RESEND]),
                }
            } else {
                // The LED state and typematic rate have no effect on a virtual keyboard.
                self.send(&[KBD_ACK]);
            }
            return;
        }
        match byte {
            KBD_SET_LEDS | KBD_SCAN_SET | KBD_TYPEMATIC => {
                self.awaiting = Some(byte);
                self.send(&[KBD_ACK]);
            }
            KBD_ECHO => self.send(&[KBD_ECHO]),
            KBD_GET_ID => {
                // A translating controller turns the ID's second byte from 0x83 into 0x41.
                let id = if translating { 0x41 } else { 0x83 };
                self.send(&[KBD_ACK, 0xab, id]);
            }
            KBD_ENABLE => {
                self.scanning = true;
                self.send(&[KBD_ACK]);
            }
            KBD_DISABLE => {
                self.defaults(false);
                self.send(&[KBD_ACK]);
            }
            KBD_SET_DEFAULTS => {
                self.defaults(true);
                self.send(&[KBD_ACK]);
            }
            // Set 3's per-key type commands: there are no per-key settings to change.
            0xf7..=0xfd => self.send(&[KBD_ACK]),
            KBD_RESEND => self.send(&[self.last_sent]),
            KBD_RESET => {
                self.defaults(true);
                self.send(&[KBD_ACK, KBD_SELF_TEST_PASSED]);
            }
            _ => self.send(&[KBD_RESEND]),
        }
    }
}

/// How the keyboard names scan code set `set`, as the guest reads it through the controller.
fn scan_set_id(set: u8, translating: bool) -> u8 {
    match (translating, set) {
        (false, set) => set,
        (true, 1) => 0x43,
        (true, 3) => 0x3f,
        (true, _) => 0x41,
    }
}

/// Ctrl, Alt and Del pressed, then released in reverse order, in scan code set `set`.
pub(super) fn ctrl_alt_del_codes(set: u8) -> &'static [u8] {
    match set {
        // Left Ctrl 0x1D, left Alt 0x38, Del 0xE0 0x53; a release sets bit 7.
        1 => &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
        // Left Ctrl 0x11, left Alt 0x19, Del 0x64; a release is prefixed with 0xF0.
        3 => &[0x11, 0x19, 0x64, 0xf0, 0x64, 0xf0, 0x19, 0xf0, 0x11],
        // Left Ctrl 0x14, left Alt 0x11, Del 0xE0 0x71; a release is prefixed with 0xF0.
        _ => &[
            0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
        ],
    }
}
