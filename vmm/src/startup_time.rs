//! Firecracker's start-up time metrics. Firecracker's jailer passes when it started
//! (`--start-time-us`, on the monotonic clock), the CPU time it had used by then
//! (`--start-time-cpu-us`) and its parent's (`--parent-cpu-time-us`). Once the process is ready
//! (the API served, or the VM started without it), [`StartupTimes::report_ready`] stores how
//! long that took as `api_server.process_startup_time_us` and `process_startup_time_cpu_us`,
//! which every metrics line then carries, as Firecracker's do. Without the flags they stay 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cpu_usage::clock_time;
use crate::metrics::{Counter, MetricSource};

/// The start of the process as the command line gives it, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimes {
    /// `--start-time-us`: the monotonic clock when the jailer started.
    pub start_time_us: Option<u64>,
    /// `--start-time-cpu-us`: the CPU time the jailer had used when it started.
    pub start_time_cpu_us: Option<u64>,
    /// `--parent-cpu-time-us`: the CPU time of the jailer's parent.
    pub parent_cpu_time_us: Option<u64>,
}

/// The start times, and the start-up durations once reported.
#[derive(Debug, Default)]
pub struct StartupTimes {
    start: StartTimes,
    wall_us: AtomicU64,
    cpu_us: AtomicU64,
}

fn micros(clock: libc::clockid_t) -> u64 {
    clock_time(clock)
        .as_ref()
        .map(Duration::as_micros)
        .and_then(|us| u64::try_from(us).ok())
        .unwrap_or_default()
}

impl StartupTimes {
    /// Start-up times measured from `start`.
    pub fn new(start: StartTimes) -> Self {
        Self {
            start,
            ..Self::default()
        }
    }

    /// Stores how long the process took to get ready, for the times the command line gave.
    pub fn report_ready(&self) {
        if let Some(start) = self.start.start_time_us {
            let now = micros(libc::CLOCK_MONOTONIC);
            self.wall_us
                .store(now.saturating_sub(start), Ordering::Relaxed);
        }
        if let Some(start) = self.start.start_time_cpu_us {
            let parent = self.start.parent_cpu_time_us.unwrap_or_default();
            let now = micros(libc::CLOCK_PROCESS_CPUTIME_ID);
            let cpu = now.saturating_sub(start).saturating_add(parent);
            self.cpu_us.store(cpu, Ordering::Relaxed);
        }
    }
}

impl MetricSource for StartupTimes {
    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }

    fn gauges(&self) -> Vec<Counter> {
        Counter::group(
            "api_server",
            [
                (
                    "process_startup_time_us",
                    self.wall_us.load(Ordering::Relaxed),
                ),
                (
                    "process_startup_time_cpu_us",
                    self.cpu_us.load(Ordering::Relaxed),
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(times: &StartupTimes, name: &str) -> u64 {
        times
            .gauges()
            .into_iter()
            .find(|g| g.name == name)
            .map(|g| g.total)
            .unwrap()
    }

    #[test]
    fn start_up_takes_the_time_since_the_given_start() {
        let now = micros(libc::CLOCK_MONOTONIC);
        let times = StartupTimes::new(StartTimes {
            start_time_us: Some(now - 5_000_000),
            start_time_cpu_us: Some(0),
            parent_cpu_time_us: Some(7_000_000),
        });
        assert_eq!(gauge(&times, "process_startup_time_us"), 0);
        times.report_ready();
        let wall = gauge(&times, "process_startup_time_us");
        assert!((5_000_000..6_000_000).contains(&wall), "{wall}");
        // All the CPU time this process used so far, and the parent's.
        let cpu = gauge(&times, "process_startup_time_cpu_us");
        assert!(cpu > 7_000_000, "{cpu}");
    }

    #[test]
    fn without_start_times_nothing_is_reported() {
        let times = StartupTimes::new(StartTimes::default());
        times.report_ready();
        assert_eq!(gauge(&times, "process_startup_time_us"), 0);
        assert_eq!(gauge(&times, "process_startup_time_cpu_us"), 0);
    }
}
