//! Latency aggregates: the shortest, the longest and the summed duration of an operation a
//! device or vCPU repeats, kept as Firecracker keeps its `*_agg` metrics (`min_us` and
//! `max_us` since start, 0 before the first; `sum_us` counted up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The durations of one kind of operation, in µs.
#[derive(Debug, Default)]
pub struct LatencyAgg {
    min_us: AtomicU64,
    max_us: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyAgg {
    /// Adds one operation that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        // The closures refuse to store when nothing changes; that outcome needs no handling.
        // As in Firecracker, a minimum of 0 means "none yet": after a sub-µs operation the
        // next one sets it.
        let _ = self
            .min_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |min| {
                (min == 0 || us < min).then_some(us)
            });
        let _ = self
            .max_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |max| {
                (us > max).then_some(us)
            });
    }

    /// Runs `op` and records how long it took.
    pub fn time<T>(&self, op: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = op();
        self.record(start.elapsed());
        result
    }

    /// The shortest operation, in µs.
    pub fn min_us(&self) -> u64 {
        self.min_us.load(Ordering::Relaxed)
    }

    /// The longest operation, in µs.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Ordering::Relaxed)
    }

    /// All operations together, in µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_extremes_and_the_sum() {
        let agg = LatencyAgg::default();
        assert_eq!((agg.min_us(), agg.max_us(), agg.sum_us()), (0, 0, 0));
        // A sub-µs operation reads as 0, which the next one replaces as the minimum.
        for us in [30, 0, 10, 50] {
            agg.record(Duration::from_micros(us));
        }
        assert_eq!((agg.min_us(), agg.max_us(), agg.sum_us()), (10, 50, 90));
        assert_eq!(agg.time(|| 7), 7);
        assert!(agg.sum_us() >= 90);
    }
}
