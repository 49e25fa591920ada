//! Metrics: counters that devices, vCPUs and the API keep, gathered on demand and written as
//! Firecracker writes them (one JSON object per line, each counter as the increase since the
//! previous line) to the file `PUT /metrics` names, and as Prometheus text (totals) for
//! `GET /metrics`.
//!
//! The file or FIFO never blocks the VMM thread (see [`crate::line_sink`]): a line a full pipe
//! cannot take is dropped and counted (`logger.missed_metrics_count`, Firecracker's name), and
//! its increases go into the next line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devices::latency::LatencyAgg;

use crate::line_sink::{LineSink, LineSinkError};

mod line;
pub mod schema;

/// One counter: a group (`block_rootfs`, `vcpu`, ...), a name within it, and its total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// The group, as in Firecracker's metrics (`block_<drive_id>`, `net_<iface_id>`, ...).
    pub group: String,
    /// The counter's name within the group.
    pub name: String,
    /// Its total since the VMM started.
    pub total: u64,
}

impl Counter {
    /// The counters of `group` from (name, total) pairs.
    pub fn group<N: Into<String>>(
        group: &str,
        totals: impl IntoIterator<Item = (N, u64)>,
    ) -> Vec<Counter> {
        totals
            .into_iter()
            .map(|(name, total)| Counter {
                group: group.to_string(),
                name: name.into(),
                total,
            })
            .collect()
    }

    /// The counted part of latency aggregates: each one's `<name>.sum_us`.
    pub fn latency_sums<'n, 'a>(
        group: &str,
        aggs: impl IntoIterator<Item = (&'n str, &'a LatencyAgg)>,
    ) -> Vec<Counter> {
        let sums = aggs
            .into_iter()
            .map(|(name, agg)| (format!("{name}.sum_us"), agg.sum_us()));
        Counter::group(group, sums)
    }

    /// The stored part of latency aggregates, for [`MetricSource::gauges`]: each one's
    /// `<name>.min_us` and `<name>.max_us`.
    pub fn latency_extremes<'n, 'a>(
        group: &str,
        aggs: impl IntoIterator<Item = (&'n str, &'a LatencyAgg)>,
    ) -> Vec<Counter> {
        let extremes = aggs.into_iter().flat_map(|(name, agg)| {
            [
                (format!("{name}.min_us"), agg.min_us()),
                (format!("{name}.max_us"), agg.max_us()),
            ]
        });
        Counter::group(group, extremes)
    }
}

/// The duration of an operation's last run, in µs, as Firecracker's `latencies_us` keeps it
/// (a gauge: each line carries the value).
#[derive(Debug, Default)]
pub struct LastLatency(AtomicU64);

impl LastLatency {
    /// Keeps `elapsed` as the last duration.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.store(us, Ordering::Relaxed);
    }

    /// The last duration, in µs; 0 before the first.
    pub fn us(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Something that keeps counters.
pub trait MetricSource: Send + Sync {
    /// The current totals.
    fn counters(&self) -> Vec<Counter>;

    /// Values that are not counted up but stored, such as Firecracker's start-up times: each
    /// JSON line carries the value itself, not its increase.
    fn gauges(&self) -> Vec<Counter> {
        Vec::new()
    }
}

/// Errors writing metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics file could not be opened.
    #[error("Failed to open the metrics file '{path}': {source}")]
    Open { path: String, source: LineSinkError },
    /// The metrics file was configured twice.
    #[error("The metrics file is already configured.")]
    AlreadyConfigured,
    /// Another frame held the metrics when a signal handler wanted to write them.
    #[error("The metrics were locked.")]
    Busy,
    /// The metrics file or FIFO did not take the line.
    #[error("The metrics line was dropped: the metrics file or FIFO did not take it.")]
    Dropped,
}

#[derive(Default)]
struct Inner {
    sources: Vec<Arc<dyn MetricSource>>,
    sink: Option<LineSink>,
    /// Totals at the previous JSON line written, for the increases.
    flushed: BTreeMap<(String, String), u64>,
    /// JSON lines dropped.
    missed: u64,
}

/// The registry of metric sources and the metrics file.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a source of counters.
    pub fn add_source(&self, source: Arc<dyn MetricSource>) {
        self.lock().sources.push(source);
    }

    /// Opens the metrics file (a file is appended to, a FIFO written); once only, as in
    /// Firecracker.
    pub fn set_sink(&self, path: &Path) -> Result<(), MetricsError> {
        let mut inner = self.lock();
        if inner.sink.is_some() {
            return Err(MetricsError::AlreadyConfigured);
        }
        let sink = LineSink::open(path).map_err(|source| MetricsError::Open {
            path: path.display().to_string(),
            source,
        })?;
        inner.sink = Some(sink);
        Ok(())
    }

    /// Every source's counters, and the lines the logger and the metrics file dropped, and
    /// the log lines the rate limits suppressed.
    fn counters(inner: &Inner) -> Vec<Counter> {
        let dropped = [
            ("missed_log_count", crate::logger::missed_lines()),
            ("missed_metrics_count", inner.missed),
            ("rate_limited_log_count", throttled_log::suppressed_total()),
        ];
        inner
            .sources
            .iter()
            .flat_map(|s| s.counters())
            .chain(Counter::group("logger", dropped))
            .collect()
    }

    fn gauges(inner: &Inner) -> Vec<Counter> {
        inner.sources.iter().flat_map(|s| s.gauges()).collect()
    }

    /// Writes one JSON line with the increases since the previous one, if a file is set.
    /// Returns whether a line was written.
    pub fn flush(&self) -> Result<bool, MetricsError> {
        Self::flush_locked(&mut self.lock())
    }

    /// [`Metrics::flush`], unless the metrics stay locked (see [`crate::bounded_lock`]): for a
    /// signal handler, which may have interrupted the lock's holder on its own thread.
    pub fn try_flush(&self) -> Result<bool, MetricsError> {
        match crate::bounded_lock::lock_soon(&self.inner) {
            Some(mut inner) => Self::flush_locked(&mut inner),
            None => Err(MetricsError::Busy),
        }
    }

    fn flush_locked(inner: &mut Inner) -> Result<bool, MetricsError> {
        if inner.sink.is_none() {
            return Ok(false);
        }
        let counters = Self::counters(inner);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let increases = counters.iter().map(|c| {
            let before = inner
                .flushed
                .get(&(c.group.clone(), c.name.clone()))
                .copied()
                .unwrap_or(0);
            Counter {
                total: c.total.saturating_sub(before),
                ..c.clone()
            }
        });
        let mut line = line::Line::new();
        for c in increases {
            line.add(&c);
        }
        for g in Self::gauges(inner) {
            line.set(&g);
        }
        let mut line = line.finish(now_ms).to_string();
        line.push('\n');
        if !inner
            .sink
            .as_mut()
            .is_some_and(|s| s.write_line(line.as_bytes()))
        {
            inner.missed += 1;
            return Err(MetricsError::Dropped);
        }
        for c in counters {
            inner.flushed.insert((c.group, c.name), c.total);
        }
        Ok(true)
    }

    /// The totals in Prometheus text format: `kiln_<group>_<name> <total>`, with the group
    /// and name the JSON line gives the counter (`kiln_kiln_<group>_<name>` for Kiln's own).
    /// Per-device counters are also summed into their aggregate (`kiln_block_<name>`), as the
    /// JSON line sums them into `block`.
    pub fn prometheus(&self) -> String {
        let inner = self.lock();
        let counters = Self::counters(&inner);
        let mut aggregates: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for c in &counters {
            if let Some(kind) = schema::device_kind(&c.group) {
                let sum = aggregates.entry((kind, c.name.as_str())).or_default();
                *sum = sum.saturating_add(c.total);
            }
        }
        let aggregates: Vec<Counter> = aggregates
            .into_iter()
            .map(|((group, name), total)| Counter {
                group: group.to_string(),
                name: name.to_string(),
                total,
            })
            .collect();
        let counters = counters
            .into_iter()
            .chain(aggregates)
            .map(|c| (c, "counter"));
        let gauges = Self::gauges(&inner).into_iter().map(|g| (g, "gauge"));
        let mut text = String::new();
        for (c, kind) in counters.chain(gauges) {
            let path = line::path(&c.group, &c.name).join("_");
            let name = format!("kiln_{}", sanitize(&path));
            text.push_str(&format!("# TYPE {name} {kind}\n{name} {}\n", c.total));
        }
        text
    }
}

/// Prometheus metric names allow `[a-zA-Z0-9_]`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Each line of a metrics file, parsed.
    fn json_lines(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    struct Fake(AtomicU64);

    impl MetricSource for Fake {
        fn counters(&self) -> Vec<Counter> {
            vec![Counter {
                group: "block_root-fs".into(),
                name: "read_bytes".into(),
                total: self.0.load(Ordering::Relaxed),
            }]
        }
    }

    #[test]
    fn json_lines_carry_increases_and_prometheus_totals() {
        let metrics = Metrics::default();
        let fake = Arc::new(Fake(AtomicU64::new(100)));
        metrics.add_source(fake.clone());
        assert!(!metrics.flush().unwrap(), "no file, no line");
        let path = std::env::temp_dir().join(format!("kiln-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        metrics.set_sink(&path).unwrap();
        assert!(matches!(
            metrics.set_sink(&path),
            Err(MetricsError::AlreadyConfigured)
        ));
        assert!(metrics.flush().unwrap());
        fake.0.store(150, Ordering::Relaxed);
        metrics.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = json_lines(&text);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["block_root-fs"]["read_bytes"], 100);
        assert_eq!(lines[1]["block_root-fs"]["read_bytes"], 50);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert!(
            metrics.prometheus().starts_with(
                "# TYPE kiln_block_root_fs_read_bytes counter\nkiln_block_root_fs_read_bytes 150\n"
            ),
            "{}",
            metrics.prometheus()
        );
        assert_eq!(lines[1]["logger"]["missed_metrics_count"], 0);
        // Written lines have Firecracker's whole schema, the device's group and aggregate.
        for line in &lines {
            line::tests::assert_has_reference_fields(line);
        }
        assert_eq!(lines[1]["block"]["read_bytes"], 50);
        std::fs::remove_file(path).unwrap();
    }

    struct TwoDrives;

    impl MetricSource for TwoDrives {
        fn counters(&self) -> Vec<Counter> {
            let a = Counter::group("block_a", [("read_count", 3), ("write_count", 1)]);
            a.into_iter()
                .chain(Counter::group("block_b", [("read_count", 4)]))
                .collect()
        }
    }

    #[test]
    fn prometheus_sums_per_device_counters_into_the_aggregate_as_the_json_line() {
        let metrics = Metrics::default();
        metrics.add_source(Arc::new(TwoDrives));
        let prometheus = metrics.prometheus();
        for line in [
            "\nkiln_block_a_read_count 3\n",
            "\nkiln_block_b_read_count 4\n",
            "\nkiln_block_read_count 7\n",
            "\nkiln_block_write_count 1\n",
        ] {
            assert!(prometheus.contains(line), "{line:?} in {prometheus}");
        }
    }

    #[test]
    fn a_line_a_full_fifo_cannot_take_is_dropped_counted_and_its_increases_kept() {
        use crate::line_sink::test_utils::{fifo, read_all, reader};
        let path = fifo("metrics-full");
        let mut reader = reader(&path);
        let metrics = Metrics::default();
        let fake = Arc::new(Fake(AtomicU64::new(0)));
        metrics.add_source(fake.clone());
        metrics.set_sink(&path).unwrap();
        let mut written = 0;
        let dropped = loop {
            fake.0.fetch_add(1, Ordering::Relaxed);
            match metrics.flush() {
                Ok(true) => written += 1,
                Err(MetricsError::Dropped) => break 1,
                other => panic!("{other:?}"),
            }
        };
        fake.0.fetch_add(1, Ordering::Relaxed);
        assert!(matches!(metrics.flush(), Err(MetricsError::Dropped)));
        let text = String::from_utf8(read_all(&mut reader)).unwrap();
        // The reader caught up: the next line carries the increases of the dropped ones.
        fake.0.fetch_add(1, Ordering::Relaxed);
        assert!(metrics.flush().unwrap());
        let text = text + &String::from_utf8(read_all(&mut reader)).unwrap();
        let lines = json_lines(&text);
        assert_eq!(lines.len(), written + 1);
        let last = lines.last().unwrap();
        assert_eq!(last["block_root-fs"]["read_bytes"], dropped + 2);
        assert_eq!(last["logger"]["missed_metrics_count"], dropped + 1);
        let sum: u64 = lines
            .iter()
            .map(|l| l["block_root-fs"]["read_bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, fake.0.load(Ordering::Relaxed));
        std::fs::remove_file(path).unwrap();
    }

    struct Stored(u64);

    impl MetricSource for Stored {
        fn counters(&self) -> Vec<Counter> {
            Vec::new()
        }
        fn gauges(&self) -> Vec<Counter> {
            Counter::group("api_server", [("process_startup_time_us", self.0)])
        }
    }

    #[test]
    fn every_json_line_carries_a_gauge_itself() {
        let metrics = Metrics::default();
        metrics.add_source(Arc::new(Stored(1234)));
        let path = std::env::temp_dir().join(format!("kiln-gauges-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        metrics.set_sink(&path).unwrap();
        metrics.flush().unwrap();
        metrics.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["api_server"]["process_startup_time_us"], 1234);
        }
        assert_eq!(text.lines().count(), 2);
        // After the logger's own counters, which every scrape carries, the gauge as a gauge.
        let prometheus = metrics.prometheus();
        let logger: Vec<&str> = prometheus
            .lines()
            .filter(|l| l.starts_with("kiln_logger_"))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(
            logger,
            [
                "kiln_logger_missed_log_count",
                "kiln_logger_missed_metrics_count",
                "kiln_logger_rate_limited_log_count"
            ]
        );
        assert!(
            prometheus.ends_with(
                "\n# TYPE kiln_api_server_process_startup_time_us gauge\n\
                 kiln_api_server_process_startup_time_us 1234\n"
            ),
            "{prometheus}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn log_lines_the_rate_limits_suppressed_are_counted() {
        // A call site a guest makes the VMM log at 100 times in a row.
        let site = throttled_log::CallSite::new();
        for _ in 0..100 {
            site.check(std::time::Instant::now());
        }
        let metrics = Metrics::default();
        let counted = Metrics::counters(&metrics.lock())
            .into_iter()
            .find(|c| c.group == "logger" && c.name == "rate_limited_log_count")
            .unwrap();
        assert!(
            counted.total >= 100 - u64::from(throttled_log::BURST),
            "{counted:?}"
        );
    }

    struct Timed(LatencyAgg);

    impl MetricSource for Timed {
        fn counters(&self) -> Vec<Counter> {
            Counter::latency_sums("vcpu", [("exit_io_in_agg", &self.0)])
        }
        fn gauges(&self) -> Vec<Counter> {
            Counter::latency_extremes("vcpu", [("exit_io_in_agg", &self.0)])
        }
    }

    #[test]
    fn latency_aggregates_carry_their_extremes_and_the_increase_of_their_sum() {
        let metrics = Metrics::default();
        let timed = Arc::new(Timed(LatencyAgg::default()));
        metrics.add_source(timed.clone());
        let path = std::env::temp_dir().join(format!("kiln-agg-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        metrics.set_sink(&path).unwrap();
        for us in [5, 9] {
            timed.0.record(Duration::from_micros(us));
        }
        metrics.flush().unwrap();
        timed.0.record(Duration::from_micros(7));
        metrics.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = json_lines(&text);
        let agg = |i: usize| &lines[i]["vcpu"]["exit_io_in_agg"];
        assert_eq!(
            agg(0),
            &serde_json::json!({"min_us": 5, "max_us": 9, "sum_us": 14})
        );
        assert_eq!(
            agg(1),
            &serde_json::json!({"min_us": 5, "max_us": 9, "sum_us": 7})
        );
        let prometheus = metrics.prometheus();
        for line in [
            "\nkiln_vcpu_exit_io_in_agg_sum_us 21\n",
            "# TYPE kiln_vcpu_exit_io_in_agg_max_us gauge\nkiln_vcpu_exit_io_in_agg_max_us 9\n",
        ] {
            assert!(prometheus.contains(line), "{line:?} in {prometheus}");
        }
        std::fs::remove_file(path).unwrap();
    }

    struct Mixed;

    impl MetricSource for Mixed {
        fn counters(&self) -> Vec<Counter> {
            Counter::group("vcpu", [("exit_io_out", 5), ("exit_shutdown", 1)])
        }
    }

    #[test]
    fn prometheus_names_a_counter_where_the_json_line_puts_it() {
        let metrics = Metrics::default();
        metrics.add_source(Arc::new(Mixed));
        let path = std::env::temp_dir().join(format!("kiln-mixed-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        metrics.set_sink(&path).unwrap();
        metrics.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["vcpu"]["exit_io_out"], 5);
        assert_eq!(line["kiln"]["vcpu"]["exit_shutdown"], 1);
        assert!(line["vcpu"].get("exit_shutdown").is_none());
        let prometheus = metrics.prometheus();
        assert!(
            prometheus.contains("\nkiln_vcpu_exit_io_out 5\n"),
            "{prometheus}"
        );
        assert!(
            prometheus.contains("\nkiln_kiln_vcpu_exit_shutdown 1\n"),
            "{prometheus}"
        );
        std::fs::remove_file(path).unwrap();
    }
}
