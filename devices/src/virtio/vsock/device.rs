//! The virtio-vsock device: its features and config space (the guest's CID), its three queues
//! (receive, transmit, event) once the driver activates it, and the event-loop subscriber that
//! moves packets between the queues and the muxer.
//!
//! Transmit chains are gathered, split into header and data, and handed to the muxer, then
//! returned with used length 0. Receive chains are filled only while the muxer has a packet;
//! one popped when it turns out to have none goes back to the ring. Both loops spend at most a
//! queue's worth of steps per notification, as every device's do.

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::{split_tx, HDR_LEN, MAX_PKT_DATA};
use super::VsockStats;
use crate::virtio::chain::{self, RxBuffers};
use crate::virtio::guest_queue::{
    check_avail_index, drain_queue, rearm, work_budget, Drain, GuestErrors, QueueCheckError,
};
use crate::virtio::{
    ignore_config_write, ActivateError, Interrupt, VirtioDevice, FEATURE_EVENT_IDX,
    FEATURE_VERSION_1, INTERRUPT_USED_RING, TYPE_VSOCK,
};

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the driver drops every connection.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Why the vsock device failed.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A queue eventfd could not be created.
    #[error("Failed to create a queue eventfd: {0}")]
    EventFd(std::io::Error),
    /// The driver made more buffers available than the queue holds.
    #[error("The driver made {pending} buffers available in a queue of {size}.")]
    AvailIndex { pending: u16, size: u16 },
    /// The queue rings could not be accessed.
    #[error("Failed to access the queue: {0}")]
    Queue(virtio_queue::Error),
    /// The used-ring interrupt could not be raised.
    #[error("Failed to raise the used-ring interrupt: {0}")]
    Interrupt(std::io::Error),
}

impl From<QueueCheckError> for VsockError {
    fn from(e: QueueCheckError) -> Self {
        match e {
            QueueCheckError::Queue(e) => VsockError::Queue(e),
            QueueCheckError::AvailIndex { pending, size } => {
                VsockError::AvailIndex { pending, size }
            }
        }
    }
}

/// The device before activation, and after a reset.
pub(super) enum State {
    Inactive,
    Active {
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        ev: Queue,
        interrupt: Arc<Interrupt>,
    },
}

/// A virtio-vsock device over a [`Muxer`].
pub struct Vsock {
    pub(super) cid: u64,
    pub(super) muxer: Muxer,
    pub(super) acked_features: u64,
    config_space: [u8; 8],
    queue_evts: [EventFd; 3],
    pub(super) state: State,
    /// A transport reset the driver must hear of (after a restore), sent into the event queue
    /// as soon as it has a buffer.
    pub(super) reset_event_pending: bool,
    tx_packet: Vec<u8>,
    rx_packet: Vec<u8>,
    stats: Arc<VsockStats>,
    guest_errors: GuestErrors,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("uds_path", &self.muxer.uds_path())
            .field("active", &matches!(self.state, State::Active { .. }))
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for the guest with `cid`, its connections going through `muxer`.
    pub fn new(cid: u64, muxer: Muxer, stats: Arc<VsockStats>) -> Result<Vsock, VsockError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            cid,
            muxer,
            acked_features: 0,
            config_space: cid.to_le_bytes(),
            queue_evts: [evt()?, evt()?, evt()?],
            state: State::Inactive,
            reset_event_pending: false,
            tx_packet: Vec::with_capacity(HDR_LEN + MAX_PKT_DATA),
            rx_packet: vec![0; HDR_LEN + MAX_PKT_DATA],
            stats,
            guest_errors: GuestErrors::new("virtio-vsock"),
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host socket's path.
    pub fn uds_path(&self) -> &std::path::Path {
        self.muxer.uds_path()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<VsockStats> {
        self.stats.clone()
    }

    /// Hands the guest's transmit packets to the muxer, up to the work budget, then whatever
    /// the muxer has for the guest (answers, credit) to the receive queue. Returns whether an
    /// interrupt was raised; does nothing while inactive.
    pub fn process_tx(&mut self) -> Result<bool, VsockError> {
        let State::Active {
            mem, tx, interrupt, ..
        } = &mut self.state
        else {
            return Ok(false);
        };
        let mut used_any = false;
        let (muxer, packet, errors) =
            (&mut self.muxer, &mut self.tx_packet, &mut self.guest_errors);
        let drained = drain_queue(tx, mem, |queue, chain, _| {
            let head = chain.head_index();
            let limits = (HDR_LEN, HDR_LEN + MAX_PKT_DATA);
            match chain::gather(mem, chain, limits, packet) {
                Ok(()) => match split_tx(packet) {
                    Ok((header, data)) => muxer.send_pkt(&header, data),
                    Err(e) => errors.record(&e),
                },
                Err(e) => errors.record(&e),
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => used_any = true,
                Err(e) => errors.record(&e),
            }
            Ok::<(), VsockError>(())
        });
        let notify = used_any && tx.needs_notification(mem).map_err(VsockError::Queue)?;
        if notify {
            interrupt
                .trigger(INTERRUPT_USED_RING)
                .map_err(VsockError::Interrupt)?;
        }
        if matches!(drained, Ok(Drain::Yielded)) {
            rearm(&self.queue_evts[1]);
        }
        drained?;
        Ok(self.process_rx()? || notify)
    }

    /// Fills receive chains with the muxer's packets for as long as it has some and the driver
    /// posted buffers, up to the work budget. Returns whether an interrupt was raised; does
    /// nothing while inactive. With the budget spent, the receive queue event is re-armed.
    pub fn process_rx(&mut self) -> Result<bool, VsockError> {
        let State::Active {
            mem, rx, interrupt, ..
        } = &mut self.state
        else {
            return Ok(false);
        };
        let old = Wrapping(rx.next_used());
        let drained = fill_rx(
            rx,
            mem,
            &mut self.muxer,
            &mut self.rx_packet,
            &mut self.guest_errors,
        );
        let used_any = Wrapping(rx.next_used()) != old;
        let notify = used_any && rx.needs_notification(mem).map_err(VsockError::Queue)?;
        if notify {
            interrupt
                .trigger(INTERRUPT_USED_RING)
                .map_err(VsockError::Interrupt)?;
        }
        if matches!(drained, Ok(Drain::Yielded)) {
            rearm(&self.queue_evts[0]);
        }
        drained.map(|_| notify)
    }

    /// Tells the driver its connections are gone (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`), into
    /// the first event buffer it posted; waits for one if there is none yet.
    pub fn send_reset_event(&mut self) -> Result<(), VsockError> {
        let State::Active {
            mem, ev, interrupt, ..
        } = &mut self.state
        else {
            return Ok(());
        };
        let mem = &*mem;
        if !self.reset_event_pending {
            return Ok(());
        }
        check_avail_index(ev, mem)?;
        let Some(chain) = ev.pop_descriptor_chain(mem) else {
            // Asks for the driver's kick when it posts one.
            ev.enable_notification(mem).map_err(VsockError::Queue)?;
            return Ok(());
        };
        let head = chain.head_index();
        let len = match RxBuffers::parse(mem, chain, 4) {
            Ok(bufs) => bufs
                .write(mem, &EVENT_TRANSPORT_RESET.to_le_bytes())
                .unwrap_or_else(|e| {
                    self.guest_errors.record(&e);
                    0
                }),
            Err(e) => {
                self.guest_errors.record(&e);
                0
            }
        };
        self.reset_event_pending = false;
        ev.add_used(mem, head, len).map_err(VsockError::Queue)?;
        if ev.needs_notification(mem).map_err(VsockError::Queue)? {
            interrupt
                .trigger(INTERRUPT_USED_RING)
                .map_err(VsockError::Interrupt)?;
        }
        Ok(())
    }

    pub(super) fn start(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let actual = queues.len();
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), Some(ev), None) =
            (queues.next(), queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::QueueCount {
                expected: 3,
                actual,
            });
        };
        self.state = State::Active {
            mem,
            rx,
            tx,
            ev,
            interrupt,
        };
        Ok(())
    }
}

/// The receive loop of [`Vsock::process_rx`].
fn fill_rx(
    rx: &mut Queue,
    mem: &GuestMemoryMmap,
    muxer: &mut Muxer,
    packet: &mut [u8],
    errors: &mut GuestErrors,
) -> Result<Drain, VsockError> {
    check_avail_index(rx, mem)?;
    let mut budget = work_budget(rx);
    while muxer.has_pending_rx() {
        let Some(left) = budget.checked_sub(1) else {
            return Ok(Drain::Yielded);
        };
        budget = left;
        let Some(chain) = rx.pop_descriptor_chain(mem) else {
            // No buffers: the driver kicks once it posts some, unless it just did.
            if rx.enable_notification(mem).map_err(VsockError::Queue)? {
                continue;
            }
            return Ok(Drain::Done);
        };
        let head = chain.head_index();
        let used = match RxBuffers::parse(mem, chain, HDR_LEN) {
            Ok(bufs) => {
                let room = usize::try_from(bufs.capacity)
                    .unwrap_or(usize::MAX)
                    .min(packet.len());
                let Some(len) = packet.get_mut(..room).and_then(|buf| muxer.recv_pkt(buf)) else {
                    // Nothing after all: the chain stays for the next packet.
                    rx.go_to_previous_position();
                    return Ok(Drain::Done);
                };
                let data = packet.get(..len).unwrap_or_default();
                bufs.write(mem, data).unwrap_or_else(|e| {
                    errors.record(&e);
                    0
                })
            }
            Err(e) => {
                errors.record(&e);
                0
            }
        };
        if let Err(e) = rx.add_used(mem, head, used) {
            errors.record(&e);
        }
    }
    Ok(Drain::Done)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1 | FEATURE_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The CID is the VMM's to set.
        self.stats.cfg_failed();
        ignore_config_write(TYPE_VSOCK, offset, data.len());
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let activated = self.start(mem, queues, interrupt);
        if activated.is_err() {
            self.stats.activate_failed();
        }
        activated
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
        self.acked_features = 0;
        self.reset_event_pending = false;
        self.muxer.reset();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let [rx_evt, tx_evt, ev_evt] = &self.queue_evts;
        let result = if fd == rx_evt.as_raw_fd() {
            // Reading resets the counter so the fd stops firing; its value does not matter.
            let _ = rx_evt.read();
            let result = self.process_rx();
            self.stats.rx_queue_event(result.is_err());
            result
        } else if fd == tx_evt.as_raw_fd() {
            let _ = tx_evt.read();
            let result = self.process_tx();
            self.stats.tx_queue_event(result.is_err());
            result
        } else if fd == ev_evt.as_raw_fd() {
            let _ = ev_evt.read();
            let result = self.send_reset_event().map(|()| false);
            if result.is_err() {
                self.stats.ev_queue_event_failed();
            }
            result
        } else if fd == self.muxer.as_raw_fd() {
            self.muxer.process_events();
            self.process_rx()
        } else {
            Ok(false)
        };
        if let Err(e) = result {
            self.guest_errors.record(&e);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-vsock: failed to register a queue event: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.muxer, EventSet::IN)) {
            log::error!("virtio-vsock: failed to register the muxer: {e:?}");
        }
        // A restored device may have a reset event to send already.
        if let Err(e) = self.send_reset_event() {
            self.guest_errors.record(&e);
        }
    }
}

mod state;

pub use state::{VsockState, VsockStateError};

#[cfg(test)]
mod tests;
