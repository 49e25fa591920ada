//! The serial console's input side: bytes from the host's stdin go to the guest's UART.
//!
//! When the UART's receive FIFO is full, stdin is dropped from the event loop until the guest
//! drains the FIFO, so a fast typist or a paste loses nothing and nothing spins.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::legacy::{Serial, SerialInput};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

/// Feeds stdin to the UART.
#[derive(Debug)]
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    drained: EventFd,
    /// Input read from stdin that the FIFO had no room for yet.
    pending: Vec<u8>,
    stdin_open: bool,
}

const STDIN: RawFd = libc::STDIN_FILENO;

impl ConsoleInput {
    /// Feeds stdin to `serial`; `drained` fires when the guest empties a full FIFO.
    pub fn new(serial: Arc<Mutex<Serial>>, drained: EventFd) -> Self {
        Self {
            serial,
            drained,
            pending: Vec::new(),
            stdin_open: true,
        }
    }

    fn stdin_event() -> Events {
        Events::new_raw(STDIN, EventSet::IN)
    }

    /// Offers pending bytes to the UART; true when all of them went in.
    fn flush_pending(&mut self) -> bool {
        let mut serial = self
            .serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !self.pending.is_empty() {
            match serial.enqueue(&self.pending) {
                Ok(SerialInput::Queued(n)) if n > 0 => {
                    self.pending.drain(..n);
                }
                Ok(_) => return false,
                Err(e) => {
                    throttled_log::throttled_warn!("Dropping console input the UART refused: {e}");
                    self.pending.clear();
                }
            }
        }
        true
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                self.remove_stdin(ops);
            }
            Ok(n) => {
                self.pending
                    .extend_from_slice(buf.get(..n).unwrap_or_default());
                if !self.flush_pending() {
                    self.remove_stdin(ops);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("Stopped reading the console input: {e}");
                self.stdin_open = false;
                self.remove_stdin(ops);
            }
        }
    }

    fn remove_stdin(&self, ops: &mut EventOps) {
        if let Err(e) = ops.remove(Self::stdin_event()) {
            log::warn!("Failed to pause console input: {e:?}");
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == STDIN {
            self.read_stdin(ops);
        } else if events.fd() == self.drained.as_raw_fd() {
            // Draining the counter only rearms it; its value does not matter.
            let _ = self.drained.read();
            if self.flush_pending() && self.stdin_open {
                if let Err(e) = ops.add(Self::stdin_event()) {
                    log::warn!("Failed to resume console input: {e:?}");
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for event in [
            Self::stdin_event(),
            Events::new(&self.drained, EventSet::IN),
        ] {
            if let Err(e) = ops.add(event) {
                log::error!("Failed to register the console input: {e:?}");
            }
        }
    }
}
