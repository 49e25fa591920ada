//! The virtio-mmio transport, version 2 (virtio 1.x): the register window the guest driver uses
//! to discover a device, negotiate features, set up queues and drive the device status.
//!
//! Queue notifications normally never reach this code: the VMM registers each queue's eventfd
//! as an ioeventfd on the QueueNotify register, so KVM signals the device directly. A notify
//! that does arrive here (no ioeventfd) is forwarded to the same eventfd.

use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};

use super::ring_layout::find_overlap;
use super::{Interrupt, VirtioDevice, INTERRUPT_CONFIG};
use crate::BusDevice;

mod state;

pub use state::{MmioStateError, MmioTransportState};

/// Offset of the QueueNotify register, for the VMM's ioeventfds.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// Size of the register window, config space included.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits, in the order the driver sets them.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may run.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// A value the driver wrote to a queue register that the queue could not take, which makes
/// activation fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InvalidQueueValue {
    /// A size that is zero, too big or not a power of two.
    Size,
    /// A misaligned ring address.
    Address,
}

impl InvalidQueueValue {
    fn reason(self) -> &'static str {
        match self {
            Self::Size => "a queue size is zero, too large or not a power of two",
            Self::Address => "a queue ring address is misaligned",
        }
    }
}

/// One queue as the driver configures it.
struct QueueSlot {
    queue: Queue,
    /// A value the driver wrote that could not be taken.
    invalid: Option<InvalidQueueValue>,
}

/// A virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<QueueSlot>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Replaces the 32-bit half `high` (or low) of `value`.
fn set_half(value: u64, high: bool, half: u32) -> u64 {
    if high {
        (value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (value & !0xffff_ffff) | u64::from(half)
    }
}

impl MmioTransport {
    /// Puts `device` behind a register window; it raises `interrupt` and uses `mem`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .filter_map(|max| Queue::new(*max).ok())
            .map(|queue| QueueSlot {
                queue,
                invalid: None,
            })
            .collect();
        Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    /// The device's interrupt line.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Marks a config change for the driver: bumps the generation and raises the config
    /// interrupt.
    pub fn notify_config_change(&mut self) -> std::io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.trigger(INTERRUPT_CONFIG)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSlot> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = lock(&self.device).avail_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => queue.map_or(0, |q| u32::from(q.queue.max_size())),
            0x44 => queue.map_or(0, |q| u32::from(q.queue.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                throttled_log::throttled_debug!(
                    "virtio-mmio: read of unknown register {offset:#x}"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_select = value,
            0x20 => {
                let writable =
                    self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
                if writable && self.driver_features_select < 2 {
                    let high = self.driver_features_select == 1;
                    self.driver_features = set_half(self.driver_features, high, value);
                } else {
                    throttled_log::throttled_warn!(
                        "virtio-mmio: driver features written out of order; ignored"
                    );
                }
            }
            0x24 => self.driver_features_select = value,
            0x30 => self.queue_select = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                self.write_queue_register(offset, value)
            }
            0x50 => self.forward_notify(value),
            0x64 => self.interrupt.ack(value),
            0x70 => self.write_status(value),
            _ => throttled_log::throttled_debug!(
                "virtio-mmio: write of unknown register {offset:#x}"
            ),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if !self.queue_config_allowed() {
            throttled_log::throttled_warn!(
                "virtio-mmio: queue register {offset:#x} written out of order; ignored"
            );
            return;
        }
        let Some(slot) = self.selected_queue() else {
            throttled_log::throttled_warn!(
                "virtio-mmio: queue register written for a queue that does not exist"
            );
            return;
        };
        let q = &mut slot.queue;
        // virtio-queue ignores values it cannot take; compare what it holds with what the
        // driver wrote, so that a bad value fails activation instead of being dropped.
        let taken = match offset {
            0x38 => u16::try_from(value).is_ok_and(|size| q.try_set_size(size).is_ok()),
            0x44 => {
                q.set_ready(value == 1);
                true
            }
            0x80 | 0x84 => {
                let wanted = set_half(q.desc_table(), offset == 0x84, value);
                q.set_desc_table_address(Some(wanted as u32), Some((wanted >> 32) as u32));
                q.desc_table() == wanted
            }
            0x90 | 0x94 => {
                let wanted = set_half(q.avail_ring(), offset == 0x94, value);
                q.set_avail_ring_address(Some(wanted as u32), Some((wanted >> 32) as u32));
                q.avail_ring() == wanted
            }
            0xa0 | 0xa4 => {
                let wanted = set_half(q.used_ring(), offset == 0xa4, value);
                q.set_used_ring_address(Some(wanted as u32), Some((wanted >> 32) as u32));
                q.used_ring() == wanted
            }
            _ => true,
        };
        if !taken {
            slot.invalid = Some(match offset {
                0x38 => InvalidQueueValue::Size,
                _ => InvalidQueueValue::Address,
            });
        }
    }

    fn forward_notify(&self, queue: u32) {
        let device = lock(&self.device);
        if let Some(evt) = device.queue_events().get(queue as usize) {
            if let Err(e) = evt.write(1) {
                throttled_log::throttled_error!(
                    "virtio-mmio: failed to forward a queue notification: {e}"
                );
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits; anything else is a protocol error we refuse.
        if value & self.status != self.status {
            throttled_log::throttled_warn!(
                "virtio-mmio: status {value:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = lock(&self.device).avail_features();
            if self.driver_features & !offered != 0 {
                throttled_log::throttled_warn!(
                    "virtio-mmio: the driver accepted features the device did not offer"
                );
                self.status = value & !status::FEATURES_OK;
                return;
            }
            lock(&self.device).set_acked_features(self.driver_features);
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & status::FEATURES_OK == 0 {
            return self.needs_reset("DRIVER_OK before FEATURES_OK");
        }
        if let Some(invalid) = self.queues.iter().find_map(|q| q.invalid) {
            return self.needs_reset(invalid.reason());
        }
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| !q.queue.is_valid(&self.mem))
        {
            let reason = format!("queue {i} is not ready or lies outside guest memory");
            return self.needs_reset(&reason);
        }
        if let Some(reason) = find_overlap(self.queues.iter().map(|q| &q.queue)) {
            return self.needs_reset(&reason);
        }
        let event_idx = self.driver_features & super::FEATURE_EVENT_IDX != 0;
        // The device gets its own copies; the transport keeps the registers the driver wrote.
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|slot| {
                let mut queue = Queue::try_from(slot.queue.state())?;
                queue.set_event_idx(event_idx);
                Ok::<_, virtio_queue::Error>(queue)
            })
            .collect();
        let queues = match queues {
            Ok(queues) => queues,
            Err(e) => return self.needs_reset(&format!("invalid queue state: {e}")),
        };
        let result = lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone());
        if let Err(e) = result {
            self.needs_reset(&e.to_string());
        }
    }

    fn needs_reset(&mut self, reason: &str) {
        throttled_log::throttled_warn!("virtio-mmio: device needs reset: {reason}");
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(INTERRUPT_CONFIG) {
            throttled_log::throttled_error!(
                "virtio-mmio: failed to raise the config interrupt: {e}"
            );
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for slot in &mut self.queues {
            slot.queue.reset();
            slot.invalid = None;
        }
        self.interrupt.ack(u32::MAX);
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if let Ok(bytes) = <&mut [u8; 4]>::try_from(&mut *data) {
            *bytes = self.read_register(offset).to_le_bytes();
        } else {
            throttled_log::throttled_warn!(
                "virtio-mmio: {}-byte register read at {offset:#x}; registers are 32-bit",
                data.len()
            );
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        } else {
            throttled_log::throttled_warn!(
                "virtio-mmio: {}-byte register write at {offset:#x}; registers are 32-bit",
                data.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{
        ActivateError, FEATURE_EVENT_IDX, FEATURE_VERSION_1, INTERRUPT_USED_RING, TYPE_BLOCK,
    };
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const QUEUE_MAX: u16 = 16;
    const DESC_TABLE: u32 = 0x1000;
    const AVAIL_RING: u32 = 0x2000;
    const USED_RING: u32 = 0x3000;
    const OFFERED: u64 = FEATURE_VERSION_1 | FEATURE_EVENT_IDX | 1;

    /// A device that records what the transport does to it.
    struct FakeDevice {
        queue_evts: [EventFd; 1],
        acked_features: u64,
        /// (queue size, desc table, event idx) of each activation.
        activations: Vec<Vec<(u16, u64, bool)>>,
        resets: usize,
        config: [u8; 8],
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[QUEUE_MAX]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.queue_evts
        }
        fn avail_features(&self) -> u64 {
            OFFERED
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked_features = features;
        }
        fn config_space(&self) -> &[u8] {
            &self.config
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let start = offset as usize;
            if let Some(src) = self.config.get(start..start + data.len()) {
                data.copy_from_slice(src);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let start = offset as usize;
            self.config[start..start + data.len()].copy_from_slice(data);
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<Queue>,
            _interrupt: Arc<Interrupt>,
        ) -> Result<(), ActivateError> {
            let queues = queues.iter().map(|q| {
                let state = q.state();
                (state.size, state.desc_table, state.event_idx_enabled)
            });
            self.activations.push(queues.collect());
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    struct Setup {
        transport: MmioTransport,
        device: Arc<Mutex<FakeDevice>>,
        interrupt: Arc<Interrupt>,
    }

    fn setup() -> Setup {
        let device = Arc::new(Mutex::new(FakeDevice {
            queue_evts: [EventFd::new(EFD_NONBLOCK).unwrap()],
            acked_features: 0,
            activations: Vec::new(),
            resets: 0,
            config: *b"config!!",
        }));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let transport = MmioTransport::new(device.clone(), mem, interrupt.clone());
        Setup {
            transport,
            device,
            interrupt,
        }
    }

    impl Setup {
        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.transport.read(offset, &mut data);
            u32::from_le_bytes(data)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.transport.write(offset, &value.to_le_bytes());
        }

        fn device(&self) -> std::sync::MutexGuard<'_, FakeDevice> {
            self.device.lock().unwrap()
        }

        /// ACKNOWLEDGE, DRIVER, the driver's features, FEATURES_OK: returns the status.
        fn negotiate(&mut self, features: u64) -> u32 {
            self.write(0x70, status::ACKNOWLEDGE);
            self.write(0x70, status::ACKNOWLEDGE | status::DRIVER);
            for select in 0..2u32 {
                self.write(0x24, select);
                self.write(0x20, (features >> (32 * select)) as u32);
            }
            self.write(
                0x70,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            self.read(0x70)
        }

        /// Queue 0 with `size` entries, ready.
        fn set_up_queue(&mut self, size: u32) {
            self.write(0x30, 0);
            self.write(0x38, size);
            for (reg, addr) in [(0x80, DESC_TABLE), (0x90, AVAIL_RING), (0xa0, USED_RING)] {
                self.write(reg, addr);
                self.write(reg + 4, 0);
            }
            self.write(0x44, 1);
        }

        fn driver_ok(&mut self) -> u32 {
            let status = self.read(0x70);
            self.write(0x70, status | status::DRIVER_OK);
            self.read(0x70)
        }
    }

    const NEGOTIATED: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

    #[test]
    fn identifies_a_virtio_mmio_v2_device() {
        let mut s = setup();
        assert_eq!(s.read(0x00), 0x7472_6976);
        assert_eq!(s.read(0x04), 2);
        assert_eq!(s.read(0x08), TYPE_BLOCK);
        assert_eq!(s.read(0x0c), 0);
        s.write(0x30, 0);
        assert_eq!(s.read(0x34), u32::from(QUEUE_MAX));
        s.write(0x30, 1);
        assert_eq!(s.read(0x34), 0, "a queue that does not exist has size 0");
    }

    #[test]
    fn device_features_are_read_in_halves() {
        let mut s = setup();
        s.write(0x14, 0);
        assert_eq!(s.read(0x10), OFFERED as u32);
        s.write(0x14, 1);
        assert_eq!(s.read(0x10), (OFFERED >> 32) as u32);
        s.write(0x14, 2);
        assert_eq!(s.read(0x10), 0);
    }

    #[test]
    fn the_device_learns_the_features_the_driver_accepted() {
        let mut s = setup();
        let accepted = FEATURE_VERSION_1 | FEATURE_EVENT_IDX;
        assert_eq!(s.negotiate(accepted), NEGOTIATED);
        assert_eq!(s.device().acked_features, accepted);
    }

    #[test]
    fn features_the_device_did_not_offer_fail_negotiation() {
        let mut s = setup();
        let status = s.negotiate(FEATURE_VERSION_1 | 1 << 40);
        assert_eq!(status, status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!(s.device().acked_features, 0);
    }

    #[test]
    fn driver_ok_activates_the_device_with_the_queues_set_up() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
        s.set_up_queue(8);
        assert_eq!(s.read(0x44), 1);
        assert_eq!(s.driver_ok(), NEGOTIATED | status::DRIVER_OK);
        let expected = vec![vec![(8, u64::from(DESC_TABLE), true)]];
        assert_eq!(s.device().activations, expected);
    }

    #[test]
    fn a_queue_size_not_a_power_of_two_needs_reset_instead_of_activating() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1);
        s.set_up_queue(12);
        let status = s.driver_ok();
        assert_eq!(
            status & status::DEVICE_NEEDS_RESET,
            status::DEVICE_NEEDS_RESET
        );
        assert!(s.device().activations.is_empty());
        assert_eq!(s.read(0x60), INTERRUPT_CONFIG);
    }

    #[test]
    fn a_queue_size_over_the_maximum_needs_reset() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1);
        s.set_up_queue(u32::from(QUEUE_MAX) * 2);
        assert_ne!(s.driver_ok() & status::DEVICE_NEEDS_RESET, 0);
        assert!(s.device().activations.is_empty());
    }

    #[test]
    fn a_misaligned_ring_address_needs_reset() {
        for reg in [0x80u64, 0x90, 0xa0] {
            let mut s = setup();
            s.negotiate(FEATURE_VERSION_1);
            s.set_up_queue(8);
            // Descriptor tables need 16-byte, avail rings 2-byte, used rings 4-byte alignment.
            s.write(0x44, 0);
            s.write(reg, 0x1001);
            s.write(0x44, 1);
            assert_ne!(
                s.driver_ok() & status::DEVICE_NEEDS_RESET,
                0,
                "register {reg:#x}"
            );
            assert!(s.device().activations.is_empty());
            // A reset clears the condition and a correct set-up activates.
            s.write(0x70, 0);
            s.negotiate(FEATURE_VERSION_1);
            s.set_up_queue(8);
            assert_eq!(s.driver_ok(), NEGOTIATED | status::DRIVER_OK);
        }
    }

    #[test]
    fn overlapping_rings_need_reset() {
        // Queue size 8: descriptors 128 bytes, available ring 22, used ring 70, event fields
        // included.
        for (reg, addr) in [
            (0x90u64, USED_RING - 2),  // the used ring two bytes into the available ring
            (0x90, DESC_TABLE + 0x70), // the available ring in the descriptor table
            (0xa0, AVAIL_RING + 0x14), // the used ring on the available ring's used_event
            (0x90, USED_RING + 0x44),  // the available ring on the used ring's avail_event
            (0x80, USED_RING),         // the descriptor table on the used ring
        ] {
            let mut s = setup();
            s.negotiate(FEATURE_VERSION_1);
            s.set_up_queue(8);
            s.write(0x44, 0);
            s.write(reg, addr);
            s.write(0x44, 1);
            let status = s.driver_ok();
            assert_ne!(
                status & status::DEVICE_NEEDS_RESET,
                0,
                "{reg:#x} at {addr:#x}"
            );
            assert!(s.device().activations.is_empty());
            assert_eq!(s.read(0x60), INTERRUPT_CONFIG);
        }
    }

    #[test]
    fn driver_ok_before_features_ok_needs_reset() {
        let mut s = setup();
        s.write(0x70, status::ACKNOWLEDGE | status::DRIVER);
        let status = s.driver_ok();
        assert_ne!(status & status::DEVICE_NEEDS_RESET, 0);
        assert!(s.device().activations.is_empty());
    }

    #[test]
    fn queue_registers_are_ignored_outside_queue_setup() {
        let mut s = setup();
        s.set_up_queue(8);
        assert_eq!(s.read(0x44), 0, "before FEATURES_OK");
        s.negotiate(FEATURE_VERSION_1);
        s.set_up_queue(8);
        s.driver_ok();
        s.write(0x38, 4);
        s.write(0x44, 0);
        assert_eq!(s.read(0x44), 1, "after DRIVER_OK");
    }

    #[test]
    fn the_driver_cannot_clear_status_bits_without_a_reset() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1);
        s.write(0x70, status::ACKNOWLEDGE);
        assert_eq!(s.read(0x70), NEGOTIATED);
    }

    #[test]
    fn writing_status_zero_resets_the_device_and_the_transport() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1);
        s.set_up_queue(8);
        s.driver_ok();
        s.interrupt.trigger(INTERRUPT_USED_RING).unwrap();
        s.write(0x70, 0);
        assert_eq!(s.read(0x70), 0);
        assert_eq!(s.device().resets, 1);
        assert_eq!(s.read(0x44), 0, "the queue is no longer ready");
        assert_eq!(s.read(0x60), 0, "pending interrupts are dropped");
        // The driver starts over, and the device is activated afresh.
        s.negotiate(FEATURE_VERSION_1);
        s.set_up_queue(4);
        s.driver_ok();
        let activations = &s.device().activations;
        assert_eq!(activations.len(), 2);
        assert_eq!(activations[1], [(4, u64::from(DESC_TABLE), false)]);
    }

    /// The transport of `s` saved and restored in front of a new device, with a new interrupt.
    fn restored(s: &Setup) -> Setup {
        let fresh = setup();
        let state = s.transport.save();
        let transport = MmioTransport::restore(
            fresh.device.clone(),
            s.transport.mem.clone(),
            fresh.interrupt.clone(),
            &state,
        )
        .unwrap();
        assert_eq!(transport.save(), state);
        Setup { transport, ..fresh }
    }

    #[test]
    fn a_restored_transport_shows_the_driver_the_registers_it_wrote() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
        s.set_up_queue(8);
        s.driver_ok();
        s.interrupt.trigger(INTERRUPT_USED_RING).unwrap();
        s.transport.notify_config_change().unwrap();
        let mut r = restored(&s);
        for reg in [0x44, 0x60, 0x70, 0xfc] {
            assert_eq!(r.read(reg), s.read(reg), "register {reg:#x}");
        }
        assert_eq!(r.read(0x60), INTERRUPT_USED_RING | INTERRUPT_CONFIG);
        // The device is restored on its own; the transport does not activate it again.
        assert!(r.device().activations.is_empty());
        // A reset and a new handshake activate it with the queues the driver sets up then.
        r.write(0x70, 0);
        r.negotiate(FEATURE_VERSION_1);
        r.set_up_queue(4);
        r.driver_ok();
        assert_eq!(
            r.device().activations,
            [vec![(4, u64::from(DESC_TABLE), false)]]
        );
    }

    #[test]
    fn a_restored_transport_keeps_a_bad_queue_value_the_driver_wrote() {
        let mut s = setup();
        s.negotiate(FEATURE_VERSION_1);
        s.set_up_queue(12);
        let mut r = restored(&s);
        assert_ne!(r.driver_ok() & status::DEVICE_NEEDS_RESET, 0);
        assert!(r.device().activations.is_empty());
    }

    #[test]
    fn a_saved_state_that_does_not_fit_the_device_is_refused() {
        let s = setup();
        let good = s.transport.save();
        let mut more = good.clone();
        more.queues.push(more.queues[0]);
        let mut larger = good.clone();
        larger.queues[0].0 .0.max_size = QUEUE_MAX * 2;
        let mut odd = good;
        odd.queues[0].0 .0.size = 3;
        for (state, expected) in [
            (more, "2 queues"),
            (larger, "maximum size"),
            (odd, "not a valid"),
        ] {
            let fresh = setup();
            let result = MmioTransport::restore(
                fresh.device.clone(),
                s.transport.mem.clone(),
                fresh.interrupt.clone(),
                &state,
            );
            let error = result.err().unwrap().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn interrupts_are_read_and_acknowledged() {
        let mut s = setup();
        s.interrupt.trigger(INTERRUPT_USED_RING).unwrap();
        s.interrupt.trigger(INTERRUPT_CONFIG).unwrap();
        assert_eq!(s.read(0x60), INTERRUPT_USED_RING | INTERRUPT_CONFIG);
        s.write(0x64, INTERRUPT_USED_RING);
        assert_eq!(s.read(0x60), INTERRUPT_CONFIG);
    }

    #[test]
    fn a_notify_reaches_the_queue_event() {
        let mut s = setup();
        s.write(NOTIFY_REG_OFFSET, 0);
        assert_eq!(s.device().queue_evts[0].read().unwrap(), 1);
        // A queue that does not exist is ignored.
        s.write(NOTIFY_REG_OFFSET, 5);
    }

    #[test]
    fn config_space_accesses_reach_the_device() {
        let mut s = setup();
        let mut data = [0u8; 2];
        s.transport.read(CONFIG_SPACE_OFFSET + 6, &mut data);
        assert_eq!(&data, b"!!");
        s.transport.write(CONFIG_SPACE_OFFSET, b"CO");
        assert_eq!(&s.device().config, b"COnfig!!");
    }

    #[test]
    fn a_million_bad_register_writes_log_a_bounded_number_of_lines() {
        let capture = throttled_log::capture::Capture::start();
        let mut s = setup();
        for i in 0..1_000_000u32 {
            s.transport.write(0x70, &(i as u16).to_le_bytes());
            s.transport.write(0x38, &[0; 4]);
            s.write(0xc0 + u64::from(i % 16) * 4, 0);
            s.read(0xd0);
        }
        let lines = capture.lines();
        // One burst per call site that complains (a 16-bit write, a queue register before
        // FEATURES_OK, unknown registers read and written), whatever the clock.
        let bound = 4 * (throttled_log::BURST as usize + 1) * 2;
        assert!(
            lines.len() <= bound,
            "{} lines: {:?}",
            lines.len(),
            &lines[..20]
        );
        assert!(lines.iter().any(|l| l.contains("2-byte register write")));
    }

    #[test]
    fn register_accesses_that_are_not_32_bit_read_zero() {
        let mut s = setup();
        let mut data = [0xffu8; 2];
        s.transport.read(0x00, &mut data);
        assert_eq!(data, [0, 0]);
        s.transport.write(0x70, &[1]);
        assert_eq!(s.read(0x70), 0);
    }
}
