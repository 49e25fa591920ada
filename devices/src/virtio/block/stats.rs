//! The counters a block device keeps, for the VMM's metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::latency::LatencyAgg;

/// Bytes and operations a block device served and how long they took, the requests that
/// failed, and how the driver used the queue.
#[derive(Debug, Default)]
pub struct BlockStats {
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    read_count: AtomicU64,
    write_count: AtomicU64,
    flush_count: AtomicU64,
    failures: AtomicU64,
    invalid_requests: AtomicU64,
    queue_events: AtomicU64,
    event_fails: AtomicU64,
    activate_fails: AtomicU64,
    updates: AtomicU64,
    update_fails: AtomicU64,
    no_avail_buffer: AtomicU64,
    cfg_fails: AtomicU64,
    remaining_reqs: AtomicU64,
    read_agg: LatencyAgg,
    write_agg: LatencyAgg,
}

impl BlockStats {
    /// A read of `bytes` that took `took`.
    pub(crate) fn read(&self, bytes: u64, took: Duration) {
        self.read_count.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.read_agg.record(took);
    }

    /// A write of `bytes` that took `took`.
    pub(crate) fn write(&self, bytes: u64, took: Duration) {
        self.write_count.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.write_agg.record(took);
    }

    pub(crate) fn flush(&self) {
        self.flush_count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A chain too malformed to be a request.
    pub(crate) fn invalid_request(&self) {
        self.invalid_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The driver kicked the queue.
    pub(crate) fn queue_event(&self) {
        self.queue_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Serving a kick failed (a broken queue, a failed interrupt).
    pub(crate) fn event_failed(&self) {
        self.event_fails.fetch_add(1, Ordering::Relaxed);
    }

    /// Serving the queue found no request to use (Firecracker's `no_avail_buffer`).
    pub(crate) fn found_no_request(&self) {
        self.no_avail_buffer.fetch_add(1, Ordering::Relaxed);
    }

    /// The driver wrote the read-only config space (Firecracker's `cfg_fails`).
    pub(crate) fn config_write_refused(&self) {
        self.cfg_fails.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was taken with `left` more waiting behind it (Firecracker's
    /// `remaining_reqs_count` sums these: the queue's depth as the device sees it).
    pub(crate) fn took_request(&self, left: u16) {
        self.remaining_reqs
            .fetch_add(u64::from(left), Ordering::Relaxed);
    }

    /// The driver's activation was refused.
    pub(crate) fn activate_failed(&self) {
        self.activate_fails.fetch_add(1, Ordering::Relaxed);
    }

    /// The VMM swapped the drive's image (`PATCH /drives`), or failed to.
    pub fn count_update(&self, ok: bool) {
        let counter = if ok {
            &self.updates
        } else {
            &self.update_fails
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as (name, value), with the names and meanings of Firecracker's block
    /// metrics.
    pub fn snapshot(&self) -> [(&'static str, u64); 15] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("read_bytes", get(&self.read_bytes)),
            ("write_bytes", get(&self.write_bytes)),
            ("read_count", get(&self.read_count)),
            ("write_count", get(&self.write_count)),
            ("flush_count", get(&self.flush_count)),
            ("execute_fails", get(&self.failures)),
            ("invalid_reqs_count", get(&self.invalid_requests)),
            ("queue_event_count", get(&self.queue_events)),
            ("event_fails", get(&self.event_fails)),
            ("activate_fails", get(&self.activate_fails)),
            ("update_count", get(&self.updates)),
            ("update_fails", get(&self.update_fails)),
            ("no_avail_buffer", get(&self.no_avail_buffer)),
            ("cfg_fails", get(&self.cfg_fails)),
            ("remaining_reqs_count", get(&self.remaining_reqs)),
        ]
    }

    /// The latency aggregates, with Firecracker's names: reads and writes that succeeded.
    pub fn latencies(&self) -> [(&'static str, &LatencyAgg); 2] {
        [("read_agg", &self.read_agg), ("write_agg", &self.write_agg)]
    }
}
