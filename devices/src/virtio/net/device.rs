//! The virtio-net device: its features and config space, its two queues once the driver
//! activates it, and the event-loop subscriber that runs the receive and transmit paths when
//! the tap or a queue event fires.
//!
//! The tap fd is registered level-triggered, and watched only while the device is active and
//! holds no pending frame. A pending frame means the guest has no receive buffers: the device
//! then stops watching the tap (rather than read and drop, or spin on a readable fd) and waits
//! for the driver's kick on the receive queue, which it asked for when the buffers ran out.
//! Level-triggered, because a frame left in the tap is reported again; edge-triggered would
//! need every path to read the tap dry, and would still wake for every frame while paused.

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ring;
use super::rx::Rx;
use super::tap::{FrameIo, Tap, TapError};
use super::tx::Tx;
use crate::latency::LatencyAgg;
use crate::virtio::guest_queue::{rearm, Drain, GuestErrors};
use crate::virtio::{
    ignore_config_write, ActivateError, Interrupt, VirtioDevice, FEATURE_EVENT_IDX,
    FEATURE_VERSION_1, INTERRUPT_USED_RING, TYPE_NET,
};

/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// How the interface is presented to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The MTU the guest should use; offered with VIRTIO_NET_F_MTU when set.
    pub mtu: Option<u16>,
    /// Whether frames the guest sends from another source MAC than `mac` are counted
    /// (`tx_spoofed_mac_count`); they are sent all the same, as in Firecracker.
    pub count_spoofed: bool,
}

/// Why the network device failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A queue eventfd could not be created.
    #[error("Failed to create a queue eventfd: {0}")]
    EventFd(std::io::Error),
    /// The driver made more buffers available than the queue holds.
    #[error("The driver made {pending} buffers available in a queue of {size}.")]
    AvailIndex { pending: u16, size: u16 },
    /// The queue rings could not be accessed.
    #[error("Failed to access the queue: {0}")]
    Queue(virtio_queue::Error),
    /// The used ring could not be written.
    #[error("Failed to write the used ring at {0:#x}.")]
    UsedRing(u64),
    /// The driver's used_event could not be read.
    #[error("Failed to read the used event at {0:#x}.")]
    UsedEvent(u64),
    /// A received frame does not fit the receive chain, or the whole ring of mergeable ones.
    #[error("Dropped a received frame of {frame} bytes: the receive buffers hold {capacity}.")]
    FrameTooLarge { frame: u64, capacity: u64 },
    /// Reading the tap failed for another reason than having nothing to read.
    #[error("Failed to read a frame from the tap: {0}")]
    TapRead(std::io::Error),
    /// The used-ring interrupt could not be raised.
    #[error("Failed to raise the used-ring interrupt: {0}")]
    Interrupt(std::io::Error),
}

/// Traffic counters, shared with whoever reports metrics.
#[derive(Debug, Default)]
pub struct NetStats {
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_fails: AtomicU64,
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_malformed_frames: AtomicU64,
    tap_write_fails: AtomicU64,
    rx_queue_events: AtomicU64,
    rx_tap_events: AtomicU64,
    tx_queue_events: AtomicU64,
    event_fails: AtomicU64,
    activate_fails: AtomicU64,
    tap_reads: AtomicU64,
    tap_read_fails: AtomicU64,
    no_rx_avail_buffer: AtomicU64,
    no_tx_avail_buffer: AtomicU64,
    cfg_fails: AtomicU64,
    tx_remaining_reqs: AtomicU64,
    tx_spoofed_mac: AtomicU64,
    tap_write_agg: LatencyAgg,
}

impl NetStats {
    /// Frame bytes (headers excluded) delivered to the guest.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }
    /// Frames delivered to the guest.
    pub fn rx_packets(&self) -> u64 {
        self.rx_packets.load(Ordering::Relaxed)
    }
    /// Frames from the tap dropped: they did not fit the guest's buffers, those were broken,
    /// the tap sent no header, or the driver reset with a frame waiting.
    pub fn rx_fails(&self) -> u64 {
        self.rx_fails.load(Ordering::Relaxed)
    }
    /// Frame bytes (headers excluded) written to the tap.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }
    /// Frames written to the tap.
    pub fn tx_packets(&self) -> u64 {
        self.tx_packets.load(Ordering::Relaxed)
    }
    /// Transmit chains dropped because the guest made them malformed.
    pub fn tx_malformed_frames(&self) -> u64 {
        self.tx_malformed_frames.load(Ordering::Relaxed)
    }
    /// Frames the tap refused, dropped.
    pub fn tap_write_fails(&self) -> u64 {
        self.tap_write_fails.load(Ordering::Relaxed)
    }

    /// Every counter with its name (and meaning) in Firecracker's `net_<iface_id>` group.
    /// `tx_count` is `tx_packets_count` again, as in Firecracker (a successful tap write);
    /// `rx_count` counts frames read from the tap, delivered or not.
    pub fn snapshot(&self) -> [(&'static str, u64); 20] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("rx_bytes_count", self.rx_bytes()),
            ("rx_packets_count", self.rx_packets()),
            ("rx_fails", self.rx_fails()),
            ("tx_bytes_count", self.tx_bytes()),
            ("tx_packets_count", self.tx_packets()),
            ("tx_malformed_frames", self.tx_malformed_frames()),
            ("tap_write_fails", self.tap_write_fails()),
            ("rx_queue_event_count", get(&self.rx_queue_events)),
            ("rx_tap_event_count", get(&self.rx_tap_events)),
            ("tx_queue_event_count", get(&self.tx_queue_events)),
            ("event_fails", get(&self.event_fails)),
            ("activate_fails", get(&self.activate_fails)),
            ("rx_count", get(&self.tap_reads)),
            ("tx_count", self.tx_packets()),
            ("tap_read_fails", get(&self.tap_read_fails)),
            ("no_rx_avail_buffer", get(&self.no_rx_avail_buffer)),
            ("no_tx_avail_buffer", get(&self.no_tx_avail_buffer)),
            ("cfg_fails", get(&self.cfg_fails)),
            ("tx_remaining_reqs_count", get(&self.tx_remaining_reqs)),
            ("tx_spoofed_mac_count", get(&self.tx_spoofed_mac)),
        ]
    }

    /// The latency aggregates, with Firecracker's names: writes to the tap.
    pub fn latencies(&self) -> [(&'static str, &LatencyAgg); 1] {
        [("tap_write_agg", &self.tap_write_agg)]
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn rx_delivered(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn rx_failed(&self) {
        self.rx_fails.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn tx_sent(&self, bytes: usize) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn tx_malformed(&self) {
        self.tx_malformed_frames.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn tap_write_failed(&self) {
        self.tap_write_fails.fetch_add(1, Ordering::Relaxed);
    }
    /// A frame read from the tap.
    pub(super) fn tap_read(&self) {
        Self::count(&self.tap_reads);
    }
    /// Reading the tap failed.
    pub(super) fn tap_read_failed(&self) {
        Self::count(&self.tap_read_fails);
    }
    /// A frame waits: the guest posted no receive buffers for it.
    pub(super) fn no_rx_buffers(&self) {
        Self::count(&self.no_rx_avail_buffer);
    }
    /// A transmit chain was taken with `left` more waiting behind it.
    pub(super) fn took_tx_chain(&self, left: u16) {
        self.tx_remaining_reqs
            .fetch_add(u64::from(left), Ordering::Relaxed);
    }
    /// The guest sent a frame from another source MAC than its own.
    pub(super) fn tx_spoofed(&self) {
        Self::count(&self.tx_spoofed_mac);
    }
    /// How long writing one frame to the tap took.
    pub(super) fn tap_write_took(&self) -> &LatencyAgg {
        &self.tap_write_agg
    }
}

/// The tap offloads (`TUN_F_*`) matching the guest features `acked`: the kernel may hand the
/// guest frames with partial checksums or unsegmented only if the guest accepted them.
/// Segmentation needs checksum offload, in virtio and in the kernel alike.
pub fn tap_offload_flags(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (bit, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if has(bit) {
            flags |= flag;
        }
    }
    flags
}

/// The device before activation, and after a reset.
enum State {
    Inactive,
    Active {
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<Interrupt>,
    },
}

/// How the tap fd is registered with the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TapWatch {
    /// Registered, reporting nothing.
    Idle,
    /// Registered for input.
    Reading,
    /// Removed for good: the tap failed, and would report the error forever.
    Removed,
}

/// A virtio-net device with one receive and one transmit queue.
pub struct Net {
    io: Box<dyn FrameIo>,
    avail_features: u64,
    acked_features: u64,
    config_space: Vec<u8>,
    queue_evts: [EventFd; 2],
    state: State,
    rx: Rx,
    tx: Tx,
    stats: Arc<NetStats>,
    guest_errors: GuestErrors,
    tap_watch: TapWatch,
    tap_failed: bool,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("io", &self.io)
            .field("acked_features", &self.acked_features)
            .field("active", &matches!(self.state, State::Active { .. }))
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A device on `tap`, presented as `config` says.
    pub fn new(tap: Tap, config: NetConfig) -> Result<Net, NetError> {
        Self::with_frame_io(Box::new(tap), config)
    }

    /// A device on any frame backend; tests and fuzzing use a socket.
    pub(crate) fn with_frame_io(io: Box<dyn FrameIo>, config: NetConfig) -> Result<Net, NetError> {
        let mut avail_features = FEATURE_VERSION_1 | FEATURE_EVENT_IDX;
        for bit in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
        ] {
            avail_features |= 1 << bit;
        }
        if config.mtu.is_some() {
            avail_features |= 1 << VIRTIO_NET_F_MTU;
        }
        // struct virtio_net_config up to mtu: mac, status, max_virtqueue_pairs, mtu.
        let mut config_space = Vec::with_capacity(12);
        config_space.extend_from_slice(&config.mac);
        config_space.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config_space.extend_from_slice(&1u16.to_le_bytes());
        config_space.extend_from_slice(&config.mtu.unwrap_or(0).to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Net {
            io,
            avail_features,
            acked_features: 0,
            config_space,
            queue_evts: [evt()?, evt()?],
            state: State::Inactive,
            rx: Rx::new(),
            tx: Tx::new(config.count_spoofed.then_some(config.mac)),
            stats: Arc::new(NetStats::default()),
            guest_errors: GuestErrors::new("virtio-net"),
            tap_watch: TapWatch::Idle,
            tap_failed: false,
        })
    }

    /// The traffic counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Delivers frames from the tap into the receive queue for as long as there are frames and
    /// buffers, up to the work budget, then raises the used-ring interrupt if the driver wants
    /// one. Returns whether it raised it; does nothing while inactive. With the budget spent,
    /// the receive queue event is re-armed so that the event loop calls again once it served
    /// everything else.
    pub fn process_rx(&mut self) -> Result<bool, NetError> {
        let State::Active {
            mem, rx, interrupt, ..
        } = &mut self.state
        else {
            return Ok(false);
        };
        let old = Wrapping(rx.next_used());
        let mergeable = self.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut used_any = false;
        let result = self.rx.process(
            rx,
            mem,
            &mut *self.io,
            mergeable,
            &self.stats,
            &mut self.guest_errors,
            &mut used_any,
        );
        if matches!(result, Err(NetError::TapRead(_))) {
            self.tap_failed = true;
        }
        // Frames delivered before an error are signalled all the same.
        let notify = finish(rx, mem, interrupt, old, used_any)?;
        if matches!(result, Ok(Drain::Yielded)) {
            rearm(&self.queue_evts[0]);
        }
        result.map(|_| notify)
    }

    /// Sends the frames in the transmit queue to the tap, up to the work budget, then raises
    /// the used-ring interrupt if the driver wants one. Returns whether it raised it; does
    /// nothing while inactive. With the budget spent, the transmit queue event is re-armed.
    pub fn process_tx(&mut self) -> Result<bool, NetError> {
        let State::Active {
            mem, tx, interrupt, ..
        } = &mut self.state
        else {
            return Ok(false);
        };
        let old = Wrapping(tx.next_used());
        let mut used_any = false;
        let result = self.tx.process(
            tx,
            mem,
            &mut *self.io,
            &self.stats,
            &mut self.guest_errors,
            &mut used_any,
        );
        if !used_any {
            NetStats::count(&self.stats.no_tx_avail_buffer);
        }
        let notify = finish(tx, mem, interrupt, old, used_any)?;
        if matches!(result, Ok(Drain::Yielded)) {
            rearm(&self.queue_evts[1]);
        }
        result.map(|_| notify)
    }

    /// How the tap should be registered: read only while frames can go somewhere.
    fn wanted_tap_watch(&self) -> TapWatch {
        if self.tap_failed {
            TapWatch::Removed
        } else if matches!(self.state, State::Active { .. }) && !self.rx.has_pending() {
            TapWatch::Reading
        } else {
            TapWatch::Idle
        }
    }

    /// Brings the tap's registration in line with what the device needs now.
    fn update_tap_watch(&mut self, ops: &mut EventOps) {
        let wanted = self.wanted_tap_watch();
        if wanted == self.tap_watch {
            return;
        }
        let fd = self.io.as_raw_fd();
        let result = match wanted {
            TapWatch::Removed => ops.remove(Events::empty_raw(fd)),
            TapWatch::Reading => ops.modify(Events::new_raw(fd, EventSet::IN)),
            TapWatch::Idle => ops.modify(Events::empty_raw(fd)),
        };
        match result {
            Ok(()) => self.tap_watch = wanted,
            Err(e) => log::error!("virtio-net: failed to change how the tap is watched: {e:?}"),
        }
    }
}

/// Raises the used-ring interrupt if entries were used and the driver wants to know.
fn finish(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    old: Wrapping<u16>,
    used_any: bool,
) -> Result<bool, NetError> {
    let notify = used_any && ring::needs_interrupt(queue, mem, old)?;
    if notify {
        interrupt
            .trigger(INTERRUPT_USED_RING)
            .map_err(NetError::Interrupt)?;
    }
    Ok(notify)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        // The tap offloads follow at activation, where a failure can be reported.
        self.acked_features = features & self.avail_features;
    }

    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is the VMM's to set, as in Firecracker: a guest write changes nothing.
        NetStats::count(&self.stats.cfg_fails);
        ignore_config_write(TYPE_NET, offset, data.len());
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let activated = self.start(mem, queues, interrupt);
        if activated.is_err() {
            NetStats::count(&self.stats.activate_fails);
        }
        activated
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
        self.acked_features = 0;
        // The driver that posted buffers for it is gone.
        if self.rx.discard_pending() {
            self.stats.rx_failed();
        }
    }
}

impl Net {
    /// Activation proper: both queues, and the tap's offloads as the driver accepted them.
    fn start(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let actual = queues.len();
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                expected: 2,
                actual,
            });
        };
        self.io
            .set_offload(tap_offload_flags(self.acked_features))
            .map_err(|e: TapError| ActivateError::Device(e.to_string()))?;
        self.state = State::Active {
            mem,
            rx,
            tx,
            interrupt,
        };
        Ok(())
    }
}

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let [rx_evt, tx_evt] = &self.queue_evts;
        let result = if fd == rx_evt.as_raw_fd() {
            // Reading resets the counter so the fd stops firing; its value does not matter.
            let _ = rx_evt.read();
            NetStats::count(&self.stats.rx_queue_events);
            self.process_rx()
        } else if fd == tx_evt.as_raw_fd() {
            let _ = tx_evt.read();
            NetStats::count(&self.stats.tx_queue_events);
            self.process_tx()
        } else if fd == self.io.as_raw_fd() {
            NetStats::count(&self.stats.rx_tap_events);
            if events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
            {
                log::error!("virtio-net: the tap failed; the guest receives nothing more");
                self.tap_failed = true;
                Ok(false)
            } else {
                self.process_rx()
            }
        } else {
            Ok(false)
        };
        if let Err(e) = result {
            NetStats::count(&self.stats.event_fails);
            self.guest_errors.record(&e);
        }
        self.update_tap_watch(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-net: failed to register a queue event: {e:?}");
            }
        }
        // Registered idle: the first kick after activation starts the reading.
        match ops.add(Events::empty_raw(self.io.as_raw_fd())) {
            Ok(()) => self.tap_watch = TapWatch::Idle,
            Err(e) => log::error!("virtio-net: failed to register the tap: {e:?}"),
        }
        self.update_tap_watch(ops);
    }
}

mod state;

pub use state::{NetState, NetStateError};

#[cfg(test)]
mod tests;
