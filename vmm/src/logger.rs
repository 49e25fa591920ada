//! The VMM's logger: the `log` facade, writing lines in Firecracker's format
//! (`TIMESTAMP [INSTANCE:THREAD:LEVEL:FILE:LINE] message`, level and origin optional) to stderr
//! or to a file or FIFO, which never blocks the logging thread (see [`crate::line_sink`]): a
//! line a full pipe cannot take is dropped and counted (`logger.missed_log_count`).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::line_sink::{LineSink, LineSinkError};

/// Errors installing the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file could not be opened.
    #[error("Failed to open the log file '{path}': {source}")]
    Open { path: String, source: LineSinkError },
    /// The level is not one Firecracker accepts.
    #[error("Invalid log level '{0}': expected Off, Error, Warning, Info, Debug or Trace.")]
    Level(String),
    /// A logger is already installed.
    #[error("The logger is already installed.")]
    AlreadyInstalled,
    /// The logger is not installed yet.
    #[error("The logger is not installed.")]
    NotInstalled,
}

/// Parses a level as Firecracker spells it (case-insensitive; `Warn` also accepted).
pub fn parse_level(level: &str) -> Result<LevelFilter, LoggerError> {
    match level.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(LoggerError::Level(level.to_string())),
    }
}

/// How log lines look and where they go.
#[derive(Debug, Clone)]
pub struct LoggerConfig<'a> {
    /// The instance ID every line carries.
    pub instance_id: &'a str,
    /// The most verbose level written.
    pub level: LevelFilter,
    /// Whether lines show their level.
    pub show_level: bool,
    /// Whether lines show the source file and line.
    pub show_log_origin: bool,
    /// A file or FIFO; stderr when absent.
    pub path: Option<&'a Path>,
    /// Only records whose module path starts with this are written (`--module`).
    pub module: Option<&'a str>,
}

/// What the logger writes, and where.
struct LoggerState {
    instance_id: String,
    show_level: bool,
    show_log_origin: bool,
    /// Only records whose module path starts with this are written.
    module: Option<String>,
    /// The file or FIFO, or stderr.
    out: LineSink,
}

/// Lines dropped because the log file or FIFO could not take them.
static MISSED_LINES: AtomicU64 = AtomicU64::new(0);

/// The number of log lines dropped so far (`logger.missed_log_count`).
pub fn missed_lines() -> u64 {
    MISSED_LINES.load(Ordering::Relaxed)
}

/// The process-wide logger; its state is set by [`init`] and changed by [`reconfigure`].
struct Logger {
    state: Mutex<Option<LoggerState>>,
}

static LOGGER: Logger = Logger {
    state: Mutex::new(None),
};

/// Formats a Unix time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` in UTC.
fn format_timestamp(secs: u64, nanos: u32) -> String {
    // Civil-from-days, after Howard Hinnant's algorithm.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl LoggerState {
    fn line(&self, record: &Record) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let mut prefix = format!(
            "{}:{}",
            self.instance_id,
            thread.name().unwrap_or("unnamed")
        );
        if self.show_level {
            prefix.push(':');
            prefix.push_str(record.level().as_str());
        }
        if self.show_log_origin {
            prefix.push_str(&format!(
                ":{}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        format!(
            "{} [{prefix}] {}\n",
            format_timestamp(now.as_secs(), now.subsec_nanos()),
            record.args()
        )
    }

    fn wants(&self, record: &Record) -> bool {
        match (&self.module, record.module_path()) {
            (Some(module), Some(path)) => path.starts_with(module.as_str()),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

impl Logger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<LoggerState>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Logs `message` at the error level unless the logger stays locked (see
/// [`crate::bounded_lock`]): for a signal handler or the panic hook, which may have interrupted
/// the lock's holder on its own thread and must not wait for it. Not filtered by `--module`, as these lines say why the process ended.
pub fn try_error(message: &str) {
    if log::max_level() < Level::Error {
        return;
    }
    let Some(mut state) = crate::bounded_lock::lock_soon(&LOGGER.state) else {
        MISSED_LINES.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Some(state) = state.as_mut() {
        let args = format_args!("{message}");
        let record = Record::builder()
            .args(args)
            .level(Level::Error)
            .module_path_static(Some(module_path!()))
            .file_static(Some(file!()))
            .line(Some(line!()))
            .build();
        let line = state.line(&record);
        if !state.out.write_line(line.as_bytes()) {
            MISSED_LINES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut state = self.lock();
        if let Some(state) = state.as_mut().filter(|s| s.wants(record)) {
            let line = state.line(record);
            // A logger has nowhere to report its own write failures: it counts them.
            if !state.out.write_line(line.as_bytes()) {
                MISSED_LINES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    // Every line is written at once, unbuffered.
    fn flush(&self) {}
}

fn open_output(path: Option<&Path>) -> Result<LineSink, LoggerError> {
    match path {
        Some(path) => LineSink::open(path).map_err(|source| LoggerError::Open {
            path: path.display().to_string(),
            source,
        }),
        None => LineSink::standard(std::io::stderr().as_fd()).map_err(|e| LoggerError::Open {
            path: "stderr".to_string(),
            source: LineSinkError::Open(e),
        }),
    }
}

/// Installs the process-wide logger.
pub fn init(config: &LoggerConfig) -> Result<(), LoggerError> {
    let out = open_output(config.path)?;
    *LOGGER.lock() = Some(LoggerState {
        instance_id: config.instance_id.to_string(),
        show_level: config.show_level,
        show_log_origin: config.show_log_origin,
        module: config.module.map(str::to_string),
        out,
    });
    log::set_logger(&LOGGER).map_err(|_| LoggerError::AlreadyInstalled)?;
    log::set_max_level(config.level);
    Ok(())
}

/// Changes the installed logger as `PUT /logger` asks: each setting given replaces the
/// current one.
pub fn reconfigure(settings: &crate::config::LoggerSettings) -> Result<(), LoggerError> {
    let level = settings.level.as_deref().map(parse_level).transpose()?;
    let out = match &settings.log_path {
        Some(path) => Some(open_output(Some(path))?),
        None => None,
    };
    let mut state = LOGGER.lock();
    let Some(state) = state.as_mut() else {
        return Err(LoggerError::NotInstalled);
    };
    if let Some(out) = out {
        state.out = out;
    }
    if let Some(show) = settings.show_level {
        state.show_level = show;
    }
    if let Some(show) = settings.show_log_origin {
        state.show_log_origin = show;
    }
    if let Some(module) = &settings.module {
        state.module = Some(module.clone());
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_time() {
        assert_eq!(format_timestamp(0, 0), "1970-01-01T00:00:00.000000000");
        assert_eq!(
            format_timestamp(951_782_400, 5),
            "2000-02-29T00:00:00.000000005"
        );
        assert_eq!(
            format_timestamp(1_795_000_000, 123_456_789),
            "2026-11-18T11:06:40.123456789"
        );
    }

    #[test]
    fn levels_parse_as_firecracker_spells_them() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("info").unwrap(), LevelFilter::Info);
        assert_eq!(parse_level("TRACE").unwrap(), LevelFilter::Trace);
        assert!(parse_level("loud").is_err());
    }

    #[test]
    fn lines_carry_instance_thread_and_optional_level_and_origin() {
        let logger = LoggerState {
            instance_id: "vm-1".into(),
            show_level: true,
            show_log_origin: true,
            module: None,
            out: open_output(None).unwrap(),
        };
        let args = format_args!("hello");
        let record = Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .file(Some("src/x.rs"))
            .line(Some(7))
            .build();
        let line = logger.line(&record);
        let thread = std::thread::current();
        let expected = format!("[vm-1:{}:WARN:src/x.rs:7] hello\n", thread.name().unwrap());
        assert!(line.ends_with(&expected), "{line}");
        assert_eq!(line.find(" ["), Some(29));
        assert!(logger.wants(&record));
        let filtered = LoggerState {
            module: Some("vmm::runtime".into()),
            ..logger
        };
        let from_runtime = Record::builder()
            .args(format_args!("x"))
            .module_path(Some("vmm::runtime"))
            .build();
        assert!(filtered.wants(&from_runtime));
        assert!(!filtered.wants(&record));
    }
}
