//! The 8250 UART at port 0x3f8, IRQ 4: the guest console.
//!
//! Output goes to any writer (stdout or a file); a byte the writer refuses is counted as lost
//! and the guest goes on, as on a UART whose line is down. Input is pushed in by the VMM's
//! event loop, which stops reading its source while the receive FIFO is full and resumes when
//! the guest has drained it, so no byte is dropped. The UART counts what the guest does with
//! it, as Firecracker's `uart` metrics, and saves its state for a snapshot.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::BusDevice;

/// Tells the input side when the guest has emptied the receive FIFO, and keeps the UART's
/// counters.
#[derive(Debug)]
struct InputWakeup {
    drained: EventFd,
    waiting: AtomicBool,
    counts: UartCounts,
}

/// What the guest did with the UART, as Firecracker's `uart` metrics count it.
#[derive(Debug, Default)]
struct UartCounts {
    /// Bytes the guest read from the receive buffer.
    reads: AtomicU64,
    /// Bytes the guest sent that reached the host's side.
    writes: AtomicU64,
    /// Reads the UART cannot serve: not one byte wide.
    missed_reads: AtomicU64,
    /// Bytes the host's side did not take, and writes the UART cannot serve.
    missed_writes: AtomicU64,
    /// Writes that failed, lost bytes included.
    errors: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl InputWakeup {
    fn new(drained: EventFd) -> Arc<Self> {
        Arc::new(Self {
            drained,
            waiting: AtomicBool::new(false),
            counts: UartCounts::default(),
        })
    }
}

impl SerialEvents for InputWakeup {
    fn buffer_read(&self) {
        count(&self.counts.reads);
    }
    fn out_byte(&self) {
        count(&self.counts.writes);
    }
    fn tx_lost_byte(&self) {
        count(&self.counts.missed_writes);
    }
    fn in_buffer_empty(&self) {
        if self.waiting.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.drained.write(1) {
                throttled_log::throttled_error!(
                    "Failed to signal that the serial input drained: {e}"
                );
            }
        }
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, Arc<InputWakeup>, Box<dyn Write + Send>>;

/// The UART's state as plain data, for a snapshot: its registers and the input the guest has
/// not read. The counters are the process's metrics, not the device's.
pub use vm_superio::serial::SerialState;

/// `SerialState`'s fields, for serde (vm-superio has none): a snapshot's field of that type
/// takes `#[serde(with = "SerialStateDef")]`. The compiler checks the fields are the same.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(remote = "SerialState")]
pub struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// Why a saved UART state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// More input than the receive FIFO holds.
    #[error("The saved UART state holds {0} input bytes, more than its receive FIFO takes.")]
    InputTooLong(usize),
    /// The interrupt the saved state has pending could not be raised.
    #[error("Failed to raise the restored UART's pending interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// The UART on the port I/O bus.
pub struct Serial {
    uart: Uart,
    wakeup: Arc<InputWakeup>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

/// What happened to bytes offered to the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum SerialInput {
    /// This many bytes were queued; the FIFO may have room for more.
    Queued(usize),
    /// The FIFO is full: nothing was queued, and `drained` fires once the guest empties it.
    Full,
}

impl Serial {
    /// A UART that raises `irq` and writes guest output to `out`. `drained` fires when the
    /// guest empties a receive FIFO that was full.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>, drained: EventFd) -> Self {
        let wakeup = InputWakeup::new(drained);
        Self {
            uart: vm_superio::Serial::with_events(irq, wakeup.clone(), out),
            wakeup,
        }
    }

    /// The state, for a snapshot.
    pub fn save(&self) -> SerialState {
        self.uart.state()
    }

    /// The UART `state` describes, wired as [`Serial::new`] wires a new one; an interrupt the
    /// state has pending and enabled is raised.
    pub fn restore(
        state: &SerialState,
        irq: EventFdTrigger,
        out: Box<dyn Write + Send>,
        drained: EventFd,
    ) -> Result<Self, SerialError> {
        let wakeup = InputWakeup::new(drained);
        let uart = vm_superio::Serial::from_state(state, irq, wakeup.clone(), out).map_err(
            |e| match e {
                vm_superio::serial::Error::Trigger(e) => SerialError::Interrupt(e),
                _ => SerialError::InputTooLong(state.in_buffer.len()),
            },
        )?;
        Ok(Self { uart, wakeup })
    }

    /// Offers host input to the guest.
    pub fn enqueue(&mut self, bytes: &[u8]) -> std::io::Result<SerialInput> {
        if bytes.is_empty() {
            return Ok(SerialInput::Queued(0));
        }
        if self.uart.fifo_capacity() == 0 {
            self.wakeup.waiting.store(true, Ordering::Release);
            return Ok(SerialInput::Full);
        }
        self.uart
            .enqueue_raw_bytes(bytes)
            .map(SerialInput::Queued)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))
    }

    /// Fires when the guest empties a receive FIFO that was full.
    pub fn drained_event(&self) -> &EventFd {
        &self.wakeup.drained
    }

    /// Free room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The counters, with the names and meanings of Firecracker's `uart` group: bytes read
    /// and written, accesses not one byte wide (missed reads; missed writes, with the output
    /// bytes the host's side did not take, a reader that fell behind), and failed writes.
    pub fn counters(&self) -> [(&'static str, u64); 5] {
        let c = &self.wakeup.counts;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("read_count", get(&c.reads)),
            ("write_count", get(&c.writes)),
            ("missed_read_count", get(&c.missed_reads)),
            ("missed_write_count", get(&c.missed_writes)),
            ("error_count", get(&c.errors)),
        ]
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (data, u8::try_from(offset)) {
            ([first], Ok(offset)) => *first = self.uart.read(offset),
            _ => count(&self.wakeup.counts.missed_reads),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (&[value], Ok(offset)) = (data, u8::try_from(offset)) else {
            count(&self.wakeup.counts.missed_writes);
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            count(&self.wakeup.counts.errors);
            match e {
                // A reader behind: the byte is counted as lost, the guest goes on.
                vm_superio::serial::Error::IOError(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock => {}
                e => throttled_log::throttled_warn!("Serial output failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf, EventFd, EventFd) {
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Serial::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(out.clone()),
            drained.try_clone().unwrap(),
        );
        (serial, out, irq, drained)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut serial, out, _irq, _drained) = serial();
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(serial.counters()[1], ("write_count", 3));
    }

    /// A writer whose reader is behind.
    struct Refusing;

    impl Write for Refusing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_the_host_does_not_take_is_counted_and_the_guest_goes_on() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(Refusing),
            drained,
        );
        serial.write(1, &[0x02]); // IER: THR-empty interrupts on
        let mut iir = [0u8];
        for b in b"lost" {
            // As a driver: take the interrupt, acknowledge it (reading IIR), send a byte.
            let _ = irq.read();
            serial.read(2, &mut iir);
            serial.write(0, &[*b]);
            assert!(
                irq.read().is_ok(),
                "the guest is told to send the next byte"
            );
        }
        let counters = serial.counters();
        assert_eq!(counters[3], ("missed_write_count", 4));
        assert_eq!(counters[4], ("error_count", 4));
        assert_eq!(counters[1], ("write_count", 0));
    }

    #[test]
    fn full_fifo_defers_input_until_the_guest_drains_it() {
        let (mut serial, _out, _irq, drained) = serial();
        let capacity = serial.input_capacity();
        let input = vec![b'x'; capacity + 10];
        assert_eq!(
            serial.enqueue(&input).unwrap(),
            SerialInput::Queued(capacity)
        );
        assert_eq!(serial.enqueue(&input).unwrap(), SerialInput::Full);
        assert!(drained.read().is_err());
        let mut byte = [0u8; 1];
        for _ in 0..capacity {
            serial.read(0, &mut byte);
            assert_eq!(byte, [b'x']);
        }
        assert_eq!(drained.read().unwrap(), 1);
        assert_eq!(serial.input_capacity(), capacity);
        assert_eq!(serial.counters()[0], ("read_count", capacity as u64));
    }

    #[test]
    fn a_restored_uart_keeps_its_registers_and_unread_input() {
        let (mut serial, _out, irq, _drained) = serial();
        serial.write(1, &[0x01]); // IER: received-data interrupts on
        serial.write(7, &[0x5a]); // the scratch register
        serial.enqueue(b"abc").unwrap();
        assert!(irq.read().is_ok());
        let state = serial.save();
        let out = SharedBuf::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut restored = Serial::restore(
            &state,
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(out.clone()),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        assert_eq!(restored.save(), state);
        // The input is still unread and its interrupt enabled: the restored UART raises it.
        assert_eq!(irq.read().unwrap(), 1);
        let mut byte = [0u8];
        for expected in b"abc" {
            restored.read(0, &mut byte);
            assert_eq!(byte[0], *expected);
        }
        restored.read(7, &mut byte);
        assert_eq!(byte, [0x5a]);
        restored.write(0, b"z");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"z");
        let mut full = state;
        full.in_buffer = vec![0; 65];
        let refused = Serial::restore(
            &full,
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(out),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        );
        assert!(matches!(refused, Err(SerialError::InputTooLong(65))));
    }

    #[test]
    fn odd_sized_accesses_are_ignored_safely() {
        let (mut serial, out, _irq, _drained) = serial();
        serial.write(0, b"ab");
        serial.write(u64::MAX, b"a");
        let mut data = [0xffu8; 2];
        serial.read(u64::MAX, &mut data);
        assert_eq!(data, [0, 0]);
        assert!(out.0.lock().unwrap().is_empty());
        let counters = serial.counters();
        assert_eq!(counters[2], ("missed_read_count", 1));
        assert_eq!(counters[3], ("missed_write_count", 2));
        assert_eq!(counters[4], ("error_count", 0));
    }
}
