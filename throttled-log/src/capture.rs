//! A logger for tests: it keeps the lines each thread logs, so that a test counts its own
//! while other tests of the same binary log on other threads.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::ThreadId;

use log::{Log, Metadata, Record};

#[derive(Debug, Default)]
struct CaptureLogger {
    lines: Mutex<Vec<(ThreadId, String)>>,
}

impl Log for CaptureLogger {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let line = (std::thread::current().id(), record.args().to_string());
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<CaptureLogger> = OnceLock::new();

/// The lines the current thread logs from [`Capture::start`] on.
#[derive(Debug)]
pub struct Capture {
    thread: ThreadId,
}

impl Capture {
    /// Installs the capturing logger (once per process) at the most verbose level, and forgets
    /// the current thread's earlier lines.
    pub fn start() -> Capture {
        let logger = LOGGER.get_or_init(CaptureLogger::default);
        // Fails only when a logger is already installed: ours, by an earlier test.
        let _ = log::set_logger(logger);
        log::set_max_level(log::LevelFilter::Trace);
        let thread = std::thread::current().id();
        Self::retain(|(t, _)| *t != thread);
        Capture { thread }
    }

    /// The lines this thread logged since `start`.
    pub fn lines(&self) -> Vec<String> {
        let Some(logger) = LOGGER.get() else {
            return Vec::new();
        };
        let lines = logger.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .filter(|(t, _)| *t == self.thread)
            .map(|(_, line)| line.clone())
            .collect()
    }

    fn retain(keep: impl FnMut(&(ThreadId, String)) -> bool) {
        if let Some(logger) = LOGGER.get() {
            let mut lines = logger.lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.retain(keep);
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let thread = self.thread;
        Self::retain(|(t, _)| *t != thread);
    }
}
