//! virtio devices: the trait every device implements, the interrupt a device raises, and the
//! virtio-mmio transport that connects a device to the guest.
//!
//! The split of work: the transport (`mmio`) owns the guest-visible registers, feature and
//! queue negotiation, and the device status; a device owns its config space, its queues once
//! activated, and the processing of those queues. Queue processing is not part of the trait:
//! each device has a plain `process_queue` that unit tests call directly, and an event-loop
//! subscriber that calls it when a queue event fires.

pub mod block;
mod chain;
mod guest_queue;
pub mod mmio;
#[cfg(any(test, feature = "test-utils"))]
pub mod mmio_fuzz;
pub mod net;
mod queue_state;
mod ring_layout;
pub mod vsock;

pub use queue_state::{QueueStateError, SavedQueue};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// virtio device type of a network device.
pub const TYPE_NET: u32 = 1;
/// virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// virtio device type of a socket (vsock) device.
pub const TYPE_VSOCK: u32 = 19;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x, the only version Kiln offers.
pub const FEATURE_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`: notification suppression with used/avail event indexes.
pub const FEATURE_EVENT_IDX: u64 = 1 << 29;

/// Interrupt status bit: the device used buffers in a queue.
pub const INTERRUPT_USED_RING: u32 = 0x1;
/// Interrupt status bit: the device configuration changed.
pub const INTERRUPT_CONFIG: u32 = 0x2;

/// The interrupt line of one device: a status word the driver reads and acknowledges through
/// the transport, an eventfd wired to a KVM irqfd, and how often it was raised.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
    triggers: AtomicU64,
}

impl Interrupt {
    /// An interrupt that signals `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            evt,
            triggers: AtomicU64::new(0),
        }
    }

    /// Sets `bits` in the status word and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.triggers.fetch_add(1, Ordering::Relaxed);
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// How many times the interrupt was raised (Firecracker's `interrupts.triggers`).
    pub fn triggers(&self) -> u64 {
        self.triggers.load(Ordering::Relaxed)
    }

    /// Sets the pending status bits a snapshot saved, without raising the interrupt: what was
    /// raised is in the saved irqchip.
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// The pending status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd the VMM registers as irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Copies the part of `space` at `offset` into `data`; an access past the end of the config
/// space leaves `data` zeroed, whatever the driver asked for.
pub(crate) fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let src = usize::try_from(offset).ok().and_then(|start| {
        let end = start.checked_add(data.len())?;
        space.get(start..end)
    });
    if let Some(src) = src {
        data.copy_from_slice(src);
    }
}

/// Logs a config write a device ignores; rate-limited, as the guest chooses how often.
pub(crate) fn ignore_config_write(device_type: u32, offset: u64, len: usize) {
    throttled_log::throttled_debug!(
        "virtio device type {device_type}: ignored a {len}-byte config write at {offset:#x}"
    );
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("The device needs {expected} queues, the driver set up {actual}.")]
    QueueCount { expected: usize, actual: usize },
    /// Device-specific activation failure.
    #[error("Failed to activate the device: {0}")]
    Device(String),
}

/// A virtio device, as the transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device type (`TYPE_*`).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// One eventfd per queue, signalled when the driver notifies that queue. The VMM registers
    /// them as ioeventfds; the device's event-loop subscriber watches them for as long as the
    /// device exists, ignoring them while the device is not active.
    fn queue_events(&self) -> &[EventFd];

    /// The feature bits the device offers.
    fn avail_features(&self) -> u64;

    /// Records the features the driver accepted (a subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64);

    /// The device config space.
    fn config_space(&self) -> &[u8];

    /// Reads the device config space at `offset`. Reads past its end leave `data` zeroed.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(self.config_space(), offset, data);
    }

    /// Writes the device config space at `offset`. The fields Kiln's devices offer are all
    /// read-only, set from the VMM's configuration: they ignore the write
    /// ([`ignore_config_write`]) and count it, as Firecracker's `cfg_fails`.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device once the driver sets DRIVER_OK. `queues` are valid (checked by the
    /// transport) and in queue order.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError>;

    /// Stops the device and drops its queues, when the driver writes 0 to the status register.
    fn reset(&mut self);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn interrupt_status_accumulates_until_acked() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Interrupt::new(evt.try_clone().unwrap());
        irq.trigger(INTERRUPT_USED_RING).unwrap();
        irq.trigger(INTERRUPT_CONFIG).unwrap();
        assert_eq!(irq.status(), 3);
        assert_eq!(evt.read().unwrap(), 2);
        assert_eq!(irq.triggers(), 2);
        irq.ack(INTERRUPT_USED_RING);
        assert_eq!(irq.status(), INTERRUPT_CONFIG);
    }
}
