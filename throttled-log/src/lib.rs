//! Log lines a guest can trigger, rate-limited per call site so that a hostile guest cannot
//! flood the host log (a million bad MMIO writes would otherwise be a million lines).
//!
//! Each call of [`throttled_error!`], [`throttled_warn!`], [`throttled_info!`] or
//! [`throttled_debug!`] has its own [`CallSite`]: at most [`BURST`] lines per [`WINDOW`], as
//! Firecracker's `error_rate_limited!` (its PR 5799) and Linux's `printk_ratelimited` allow.
//! The lines beyond are counted, not written; the first line the call site writes in a later
//! window is preceded by a summary, `Suppressed N similar messages from FILE:LINE`, so a flood
//! that goes on shows one summary per window. [`suppressed_total`] counts every suppressed
//! line of the process.
//!
//! A crate of its own because both `devices` and `vmm` log guest-triggered lines, and
//! `devices` must not depend on `vmm`; a logging policy is no device model either.

#[cfg(feature = "test-utils")]
pub mod capture;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use log as __log;

/// Lines one call site may write per window.
pub const BURST: u32 = 10;
/// The window over which [`BURST`] lines are allowed.
pub const WINDOW: Duration = Duration::from_secs(5);

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// How many lines all call sites have suppressed since the process started.
pub fn suppressed_total() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// What a call site may do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it, after a summary of the `suppressed` lines before it if there were any.
    Log { suppressed: u64 },
    /// Count it and write nothing.
    Suppress,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// The rate limit of one call site; the macros keep one in a `static` per call.
#[derive(Debug)]
pub struct CallSite {
    window: Mutex<Window>,
}

impl CallSite {
    /// A call site that has written nothing yet.
    pub const fn new() -> Self {
        Self {
            window: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line at `now` may be written.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        // `duration_since` saturates, so a clock read before `start` keeps the window.
        if w.start
            .is_none_or(|start| now.duration_since(start) >= WINDOW)
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < BURST {
            w.logged += 1;
            Verdict::Log {
                suppressed: std::mem::take(&mut w.suppressed),
            }
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }
}

impl Default for CallSite {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs at `level` (a `log::Level`), rate-limited for this call site; prefer the per-level
/// macros. With `site = EXPR` first, the limit is that [`CallSite`]'s instead, for a line that
/// each device instance should limit on its own.
#[macro_export]
macro_rules! throttled_log {
    (site = $site:expr, $level:expr, $($arg:tt)+) => {{
        let level: $crate::__log::Level = $level;
        if $crate::__log::log_enabled!(level) {
            let site: &$crate::CallSite = $site;
            if let $crate::Verdict::Log { suppressed } = site.check(::std::time::Instant::now()) {
                if suppressed > 0 {
                    $crate::__log::log!(
                        level,
                        "Suppressed {} similar messages from {}:{}",
                        suppressed,
                        file!(),
                        line!()
                    );
                }
                $crate::__log::log!(level, $($arg)+);
            }
        }
    }};
    ($level:expr, $($arg:tt)+) => {{
        static CALL_SITE: $crate::CallSite = $crate::CallSite::new();
        $crate::throttled_log!(site = &CALL_SITE, $level, $($arg)+)
    }};
}

/// `log::error!`, rate-limited for this call site.
#[macro_export]
macro_rules! throttled_error {
    ($($arg:tt)+) => { $crate::throttled_log!($crate::__log::Level::Error, $($arg)+) };
}

/// `log::warn!`, rate-limited for this call site.
#[macro_export]
macro_rules! throttled_warn {
    ($($arg:tt)+) => { $crate::throttled_log!($crate::__log::Level::Warn, $($arg)+) };
}

/// `log::info!`, rate-limited for this call site.
#[macro_export]
macro_rules! throttled_info {
    ($($arg:tt)+) => { $crate::throttled_log!($crate::__log::Level::Info, $($arg)+) };
}

/// `log::debug!`, rate-limited for this call site.
#[macro_export]
macro_rules! throttled_debug {
    ($($arg:tt)+) => { $crate::throttled_log!($crate::__log::Level::Debug, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_writes_a_burst_per_window_and_then_the_count() {
        let site = CallSite::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(site.check(t0), Verdict::Log { suppressed: 0 });
        }
        for i in 1..=1000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(site.check(at), Verdict::Suppress);
        }
        let later = t0 + WINDOW;
        assert_eq!(site.check(later), Verdict::Log { suppressed: 1000 });
        assert_eq!(site.check(later), Verdict::Log { suppressed: 0 });
        assert!(suppressed_total() >= 1000);
    }

    #[test]
    fn call_sites_are_independent() {
        let (a, b) = (CallSite::new(), CallSite::new());
        let now = Instant::now();
        for _ in 0..BURST {
            a.check(now);
        }
        assert_eq!(a.check(now), Verdict::Suppress);
        assert_eq!(b.check(now), Verdict::Log { suppressed: 0 });
    }

    #[cfg(feature = "test-utils")]
    #[test]
    fn a_million_lines_from_one_call_site_write_a_burst() {
        let capture = capture::Capture::start();
        for i in 0..1_000_000 {
            throttled_warn!("bad thing number {i}");
        }
        let lines = capture.lines();
        assert_eq!(lines.len(), BURST as usize, "{lines:?}");
        assert_eq!(lines[0], "bad thing number 0");
    }

    #[cfg(feature = "test-utils")]
    #[test]
    fn a_site_of_its_own_limits_apart_from_the_call_site() {
        let capture = capture::Capture::start();
        let sites = [CallSite::new(), CallSite::new()];
        for i in 0..100 {
            for site in &sites {
                throttled_log!(site = site, log::Level::Error, "line {i}");
            }
        }
        assert_eq!(capture.lines().len(), 2 * BURST as usize);
    }
}
