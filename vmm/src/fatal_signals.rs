//! How the process ends when something goes fatally wrong, as Firecracker ends: the handlers of
//! the signals that stop it (a syscall a seccomp filter traps, a bad memory access, an exceeded
//! resource limit, a hang-up) and the panic hook. Each counts what happened in Firecracker's
//! metrics (`seccomp.num_faults`, `signals.*`, `vmm.panic_count`), logs one error line, writes
//! a last metrics line and ends the process with Firecracker's exit status for that signal
//! (148 for a bad syscall, 149 SIGBUS, ...).
//!
//! SIGPIPE stays ignored, as every Rust program has it: a write to a closed pipe or socket
//! fails with EPIPE, which its writer handles. Firecracker counts it in a handler that returns,
//! which would need `rt_sigreturn` on the API thread; Kiln never receives it, so
//! `signals.sigpipe` stays 0.
//!
//! A handler interrupts whatever its thread was doing, which may be holding the logger or the
//! metrics lock: it only tries those locks for a bounded time ([`crate::bounded_lock`]), so a
//! fault inside either can lose its log line or its last metrics line, never hang the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::register_signal_handler;

use crate::metrics::{Counter, MetricSource, Metrics};

/// Firecracker's exit status when a seccomp filter trapped a syscall.
pub const EXIT_BAD_SYSCALL: i32 = 148;
/// Firecracker's exit status for a signal that is not the one its handler was installed for.
const EXIT_UNEXPECTED_ERROR: i32 = 2;
/// `si_code` of a SIGSYS sent by a seccomp filter (`SYS_SECCOMP`).
const SYS_SECCOMP: c_int = 1;

/// Errors installing the handlers.
#[derive(Debug, thiserror::Error)]
pub enum FatalSignalError {
    /// The kernel refused a handler.
    #[error("Failed to install the handler of signal {signal}: {source}")]
    Install {
        signal: c_int,
        source: vmm_sys_util::errno::Error,
    },
}

/// A signal Kiln handles: its metric (group and name) and the exit status it ends with.
struct Handled {
    signal: c_int,
    group: &'static str,
    name: &'static str,
    exit_status: i32,
}

/// Firecracker's signals, metrics and exit statuses (`FcExitCode` in its `vmm` crate).
const HANDLED: [Handled; 7] = [
    Handled {
        signal: libc::SIGSYS,
        group: "seccomp",
        name: "num_faults",
        exit_status: EXIT_BAD_SYSCALL,
    },
    Handled {
        signal: libc::SIGBUS,
        group: "signals",
        name: "sigbus",
        exit_status: 149,
    },
    Handled {
        signal: libc::SIGSEGV,
        group: "signals",
        name: "sigsegv",
        exit_status: 150,
    },
    Handled {
        signal: libc::SIGXFSZ,
        group: "signals",
        name: "sigxfsz",
        exit_status: 151,
    },
    Handled {
        signal: libc::SIGXCPU,
        group: "signals",
        name: "sigxcpu",
        exit_status: 154,
    },
    Handled {
        signal: libc::SIGHUP,
        group: "signals",
        name: "sighup",
        exit_status: 156,
    },
    Handled {
        signal: libc::SIGILL,
        group: "signals",
        name: "sigill",
        exit_status: 157,
    },
];

/// How often each handled signal arrived, in [`HANDLED`]'s order.
static RECEIVED: [AtomicU64; HANDLED.len()] = [const { AtomicU64::new(0) }; HANDLED.len()];
/// Whether the process panicked (`vmm.panic_count`).
static PANICKED: AtomicU64 = AtomicU64::new(0);
/// The metrics the last line is written from.
static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

/// The counters of this module, for the metrics.
#[derive(Debug)]
pub struct FaultCounters;

impl MetricSource for FaultCounters {
    fn counters(&self) -> Vec<Counter> {
        HANDLED
            .iter()
            .zip(&RECEIVED)
            .map(|(h, n)| Counter {
                group: h.group.to_string(),
                name: h.name.to_string(),
                total: n.load(Ordering::Relaxed),
            })
            .chain(Counter::group(
                "vmm",
                [("panic_count", PANICKED.load(Ordering::Relaxed))],
            ))
            .collect()
    }
}

/// Writes the last metrics line, if the metrics are free to write.
fn write_last_metrics() {
    if let Some(metrics) = METRICS.get() {
        if let Err(e) = metrics.try_flush() {
            crate::logger::try_error(&format!("Failed to write the metrics while stopping: {e}"));
        }
    }
}

fn exit(status: i32) -> ! {
    write_last_metrics();
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(status) }
}

extern "C" fn handle(num: c_int, info: *mut siginfo_t, _context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let (signo, code) = unsafe { ((*info).si_signo, (*info).si_code) };
    let Some(index) = HANDLED.iter().position(|h| h.signal == num && num == signo) else {
        exit(EXIT_UNEXPECTED_ERROR);
    };
    let Some((handled, received)) = HANDLED.get(index).zip(RECEIVED.get(index)) else {
        exit(EXIT_UNEXPECTED_ERROR);
    };
    received.fetch_add(1, Ordering::Relaxed);
    crate::logger::try_error(&format!(
        "Shutting down VM after intercepting signal {signo}, code {code}."
    ));
    if num == libc::SIGSYS {
        if code != SYS_SECCOMP {
            exit(EXIT_UNEXPECTED_ERROR);
        }
        // SAFETY: for SYS_SECCOMP the kernel fills `_sigsys`, whose `_syscall` (an int) is the
        // seventh int of siginfo_t: after si_signo, si_errno, si_code, padding and the
        // 8-byte `_call_addr`.
        let syscall = unsafe { *info.cast::<i32>().add(6) };
        crate::logger::try_error(&format!(
            "Shutting down VM after intercepting a bad syscall ({syscall})."
        ));
    }
    exit(handled.exit_status);
}

/// Installs the handlers and the panic hook, writing their last metrics line from `metrics`.
/// Once per process, before the threads that the seccomp filters confine start.
pub fn install(metrics: Arc<Metrics>) -> Result<(), FatalSignalError> {
    metrics.add_source(Arc::new(FaultCounters));
    // A second install keeps the first metrics: the handlers are the same.
    let _ = METRICS.set(metrics);
    for h in &HANDLED {
        register_signal_handler(h.signal, handle).map_err(|source| FatalSignalError::Install {
            signal: h.signal,
            source,
        })?;
    }
    std::panic::set_hook(Box::new(|info| {
        crate::logger::try_error(&format!("Kiln {info}"));
        PANICKED.store(1, Ordering::Relaxed);
        write_last_metrics();
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_a_firecracker_metric() {
        for c in FaultCounters.counters() {
            let fields = crate::metrics::schema::fields(&c.group).unwrap_or_default();
            assert!(fields.contains(&c.name.as_str()), "{}.{}", c.group, c.name);
        }
    }
}
