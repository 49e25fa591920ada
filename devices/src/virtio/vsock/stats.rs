//! The vsock device's counters, Firecracker's `vsock` metrics group.

use std::sync::atomic::{AtomicU64, Ordering};

/// The device's counters, shared with whoever reports metrics.
#[derive(Debug, Default)]
pub struct VsockStats {
    activate_fails: AtomicU64,
    cfg_fails: AtomicU64,
    rx_queue_event_fails: AtomicU64,
    tx_queue_event_fails: AtomicU64,
    ev_queue_event_fails: AtomicU64,
    muxer_event_fails: AtomicU64,
    rx_queue_event_count: AtomicU64,
    tx_queue_event_count: AtomicU64,
    rx_bytes_count: AtomicU64,
    tx_bytes_count: AtomicU64,
    rx_packets_count: AtomicU64,
    tx_packets_count: AtomicU64,
    conns_added: AtomicU64,
    conns_killed: AtomicU64,
    conns_removed: AtomicU64,
    tx_flush_fails: AtomicU64,
    tx_write_fails: AtomicU64,
    rx_read_fails: AtomicU64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl VsockStats {
    /// Every counter with its name in Firecracker's `vsock` group. `rx` is towards the guest,
    /// `tx` from it, as in Firecracker; `killq_resync` stays 0 (Kiln's muxer keeps no kill
    /// queue to resynchronise), `conn_event_fails` too (a connection's events cannot fail).
    pub fn snapshot(&self) -> [(&'static str, u64); 20] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("activate_fails", get(&self.activate_fails)),
            ("cfg_fails", get(&self.cfg_fails)),
            ("rx_queue_event_fails", get(&self.rx_queue_event_fails)),
            ("tx_queue_event_fails", get(&self.tx_queue_event_fails)),
            ("ev_queue_event_fails", get(&self.ev_queue_event_fails)),
            ("muxer_event_fails", get(&self.muxer_event_fails)),
            ("conn_event_fails", 0),
            ("rx_queue_event_count", get(&self.rx_queue_event_count)),
            ("tx_queue_event_count", get(&self.tx_queue_event_count)),
            ("rx_bytes_count", get(&self.rx_bytes_count)),
            ("tx_bytes_count", get(&self.tx_bytes_count)),
            ("rx_packets_count", get(&self.rx_packets_count)),
            ("tx_packets_count", get(&self.tx_packets_count)),
            ("conns_added", get(&self.conns_added)),
            ("conns_killed", get(&self.conns_killed)),
            ("conns_removed", get(&self.conns_removed)),
            ("killq_resync", 0),
            ("tx_flush_fails", get(&self.tx_flush_fails)),
            ("tx_write_fails", get(&self.tx_write_fails)),
            ("rx_read_fails", get(&self.rx_read_fails)),
        ]
    }

    /// Data bytes delivered to the guest.
    pub fn rx_bytes_total(&self) -> u64 {
        self.rx_bytes_count.load(Ordering::Relaxed)
    }
    /// Data bytes the guest sent that reached the host.
    pub fn tx_bytes_total(&self) -> u64 {
        self.tx_bytes_count.load(Ordering::Relaxed)
    }

    pub(super) fn activate_failed(&self) {
        inc(&self.activate_fails);
    }
    pub(super) fn cfg_failed(&self) {
        inc(&self.cfg_fails);
    }
    pub(super) fn rx_queue_event(&self, failed: bool) {
        inc(&self.rx_queue_event_count);
        if failed {
            inc(&self.rx_queue_event_fails);
        }
    }
    pub(super) fn tx_queue_event(&self, failed: bool) {
        inc(&self.tx_queue_event_count);
        if failed {
            inc(&self.tx_queue_event_fails);
        }
    }
    pub(super) fn ev_queue_event_failed(&self) {
        inc(&self.ev_queue_event_fails);
    }
    pub(super) fn muxer_event_failed(&self) {
        inc(&self.muxer_event_fails);
    }
    pub(super) fn rx_bytes(&self, n: usize) {
        add(&self.rx_bytes_count, n);
    }
    pub(super) fn tx_bytes(&self, n: usize) {
        add(&self.tx_bytes_count, n);
    }
    pub(super) fn rx_packet(&self) {
        inc(&self.rx_packets_count);
    }
    pub(super) fn tx_packet(&self) {
        inc(&self.tx_packets_count);
    }
    pub(super) fn conn_added(&self) {
        inc(&self.conns_added);
    }
    pub(super) fn conn_killed(&self) {
        inc(&self.conns_killed);
    }
    pub(super) fn conn_removed(&self) {
        inc(&self.conns_removed);
    }
    pub(super) fn tx_flush_failed(&self) {
        inc(&self.tx_flush_fails);
    }
    pub(super) fn tx_write_failed(&self) {
        inc(&self.tx_write_fails);
    }
    pub(super) fn rx_read_failed(&self) {
        inc(&self.rx_read_fails);
    }
}
