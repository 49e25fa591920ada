//! The counters a block device keeps, for the VMM's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes and operations a block device served, and the requests that failed.
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
}

impl BlockStats {
    pub(crate) fn read(&self, bytes: u64) {
        self.read_count.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn write(&self, bytes: u64) {
        self.write_count.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
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
    pub fn snapshot(&self) -> [(&'static str, u64); 12] {
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
        ]
    }
}
