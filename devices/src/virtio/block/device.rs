//! The virtio-block device: its features and config space, its queue once the driver activates
//! it, the queue loop, and the thin event-loop subscriber that runs the loop on a queue event.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::disk::DiskBackend;
use super::execute::{self, CacheType, ExecuteError, Executor, SECTOR_SIZE};
use super::request::{Rejected, Request};
use crate::virtio::guest_queue::{drain_queue, rearm, Drain, GuestErrors, QueueCheckError};
use crate::virtio::{
    ignore_config_write, ActivateError, Interrupt, VirtioDevice, FEATURE_EVENT_IDX,
    FEATURE_VERSION_1, INTERRUPT_USED_RING, TYPE_BLOCK,
};

/// The disk of a device whose image is being reopened, or could not be: every request fails.
struct Closed;

impl DiskBackend for Closed {
    fn len(&self) -> u64 {
        0
    }

    fn read_at(&mut self, _buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
        Err(closed())
    }

    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(closed())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Err(closed())
    }
}

fn closed() -> std::io::Error {
    std::io::Error::other("the disk image is closed")
}

/// The size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request: a chain as long as the queue, less header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Descriptors per request, indirect tables included.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// How a disk is presented to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The drive id the guest reads with GET_ID; truncated to 20 bytes.
    pub id: String,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// What a guest flush does.
    pub cache: CacheType,
}

/// Why the block device failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The queue eventfd could not be created.
    #[error("Failed to create the queue eventfd: {0}")]
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

/// The device before activation, and after a reset.
enum State {
    Inactive,
    Active {
        mem: GuestMemoryMmap,
        queue: Queue,
        interrupt: Arc<Interrupt>,
    },
}

/// A virtio-block device with one request queue.
pub struct Block {
    executor: Executor,
    avail_features: u64,
    config_space: Vec<u8>,
    queue_evts: [EventFd; 1],
    state: State,
    guest_errors: GuestErrors,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("avail_features", &self.avail_features)
            .field("active", &matches!(self.state, State::Active { .. }))
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A device serving `disk` as `config` says.
    pub fn new(disk: Box<dyn DiskBackend>, config: BlockConfig) -> Result<Block, BlockError> {
        let disk_len = disk.len();
        if !disk_len.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "virtio-block: drive '{}' has {disk_len} bytes, not a whole number of sectors; \
                 the guest does not see the last {} bytes",
                config.id,
                disk_len % SECTOR_SIZE
            );
        }
        let mut avail_features = FEATURE_VERSION_1
            | FEATURE_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX;
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        // struct virtio_blk_config up to seg_max; later fields belong to features not offered.
        let mut config_space = Vec::with_capacity(16);
        config_space.extend_from_slice(&(disk_len / SECTOR_SIZE).to_le_bytes()); // capacity
        config_space.extend_from_slice(&0u32.to_le_bytes()); // size_max: not offered
        config_space.extend_from_slice(&SEG_MAX.to_le_bytes());
        let queue_evt = EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Ok(Block {
            executor: Executor::new(disk, config.read_only, config.cache, &config.id),
            avail_features,
            config_space,
            queue_evts: [queue_evt],
            state: State::Inactive,
            guest_errors: GuestErrors::new("virtio-block"),
        })
    }

    /// The device's request counters.
    pub fn stats(&self) -> std::sync::Arc<super::BlockStats> {
        self.executor.stats()
    }

    /// The disk it serves: a snapshot flushes it, whatever the cache type, before freezing it.
    pub fn disk_mut(&mut self) -> &mut dyn DiskBackend {
        self.executor.disk_mut()
    }

    /// Serves `disk` from now on, as `PATCH /drives` asks, and updates the capacity in config
    /// space. The caller tells the driver through the transport's config-change interrupt.
    pub fn swap_disk(&mut self, disk: Box<dyn DiskBackend>) {
        let capacity = (disk.len() / SECTOR_SIZE).to_le_bytes();
        if let Some(field) = self.config_space.get_mut(..capacity.len()) {
            field.copy_from_slice(&capacity);
        }
        self.executor.set_disk(disk);
    }

    /// Like [`Block::swap_disk`] with the disk `open` returns, but closes the current disk
    /// first: its image's locks go with it, so `open` may lock the same image again (a
    /// `PATCH /drives` that names the drive's own image, to pick up a new size). If `open`
    /// fails, the disk `restore` opens is served instead, and the error returned.
    pub fn reopen_disk<E>(
        &mut self,
        open: impl FnOnce() -> Result<Box<dyn DiskBackend>, E>,
        restore: impl FnOnce() -> Result<Box<dyn DiskBackend>, E>,
    ) -> Result<(), E> {
        // The caller holds this device's lock, so no request sees the closed disk.
        self.executor.set_disk(Box::new(Closed));
        match open() {
            Ok(disk) => {
                self.swap_disk(disk);
                Ok(())
            }
            Err(e) => {
                match restore() {
                    Ok(old) => self.swap_disk(old),
                    Err(_) => log::error!(
                        "The image of a block device could not be reopened; its requests fail."
                    ),
                }
                Err(e)
            }
        }
    }

    /// Serves the requests the driver has made available, up to the work budget, then raises
    /// the used-ring interrupt if the driver wants one. Returns whether it raised it; does
    /// nothing while inactive. With the budget spent, the queue event is re-armed so that the
    /// event loop calls again once it served everything else.
    pub fn process_queue(&mut self) -> Result<bool, BlockError> {
        let State::Active {
            mem,
            queue,
            interrupt,
        } = &mut self.state
        else {
            return Ok(false);
        };
        let mut used_any = false;
        let drained = drain(
            queue,
            mem,
            &mut self.executor,
            &mut self.guest_errors,
            &mut used_any,
        );
        if !used_any {
            self.executor.counters().found_no_request();
        }
        // Requests completed before a drain error are signalled all the same.
        let notify = used_any && queue.needs_notification(mem).map_err(BlockError::Queue)?;
        if notify {
            interrupt
                .trigger(INTERRUPT_USED_RING)
                .map_err(BlockError::Interrupt)?;
        }
        if matches!(drained, Ok(Drain::Yielded)) {
            rearm(&self.queue_evts[0]);
        }
        drained.map(|_| notify)
    }
}

/// Serves chains until the queue is empty or the work budget is spent; sets `used_any` once a
/// chain is in the used ring.
fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    executor: &mut Executor,
    guest_errors: &mut GuestErrors,
    used_any: &mut bool,
) -> Result<Drain, BlockError> {
    drain_queue(queue, mem, |queue, chain, behind| {
        let head = chain.head_index();
        executor.counters().took_request(behind);
        let len = serve(executor, guest_errors, mem, chain);
        match queue.add_used(mem, head, len) {
            Ok(()) => *used_any = true,
            Err(e) => guest_errors.record(&e),
        }
        Ok(())
    })
}

impl From<QueueCheckError> for BlockError {
    fn from(e: QueueCheckError) -> Self {
        match e {
            QueueCheckError::Queue(e) => BlockError::Queue(e),
            QueueCheckError::AvailIndex { pending, size } => {
                BlockError::AvailIndex { pending, size }
            }
        }
    }
}

/// Parses and runs one chain and writes its status; returns the used length. A chain too broken
/// to hold a status gets length 0 and nothing written.
fn serve(
    executor: &mut Executor,
    guest_errors: &mut GuestErrors,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let (status_addr, result) = match Request::parse(mem, chain, MAX_DESCRIPTORS) {
        Ok(req) => (req.status_addr, executor.execute(mem, &req)),
        Err(Rejected {
            error,
            status_addr: Some(status_addr),
        }) => {
            executor.counters().invalid_request();
            (status_addr, Err(ExecuteError::from(error)))
        }
        Err(Rejected {
            error,
            status_addr: None,
        }) => {
            executor.counters().invalid_request();
            guest_errors.record(&error);
            return 0;
        }
    };
    if let Err(e) = &result {
        guest_errors.record(e);
    }
    execute::complete(mem, status_addr, &result).unwrap_or_else(|e| {
        // Parsing checked the status byte lies in guest memory, so this is not expected.
        guest_errors.record(&e);
        0
    })
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, _features: u64) {
        // Nothing to record: the transport applies EVENT_IDX to the queue, and no other
        // feature changes how the device serves requests.
    }

    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.executor.counters().config_write_refused();
        ignore_config_write(TYPE_BLOCK, offset, data.len());
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let actual = queues.len();
        let mut queues = queues.into_iter();
        let (Some(queue), None) = (queues.next(), queues.next()) else {
            self.executor.counters().activate_failed();
            return Err(ActivateError::QueueCount {
                expected: 1,
                actual,
            });
        };
        self.state = State::Active {
            mem,
            queue,
            interrupt,
        };
        Ok(())
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
    }
}

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fired = self
            .queue_evts
            .iter()
            .find(|e| e.as_raw_fd() == events.fd());
        if let Some(evt) = fired {
            // Reading resets the counter so the fd stops firing; its value does not matter, and
            // an empty counter (another reader was first) is not an error worth reporting.
            let _ = evt.read();
            self.executor.counters().queue_event();
            if let Err(e) = self.process_queue() {
                self.executor.counters().event_failed();
                self.guest_errors.record(&e);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-block: failed to register the queue event: {e:?}");
            }
        }
    }
}

mod state;

pub use state::BlockState;

#[cfg(test)]
mod tests;
