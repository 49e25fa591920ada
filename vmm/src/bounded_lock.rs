//! Taking locks whatever happened to their last holder: [`lock`] waits and takes a poisoned
//! lock too (a device whose holder panicked is still served, as its state is plain data), and
//! [`lock_soon`], for a signal handler or the panic hook, which may have interrupted the lock's
//! holder on their own thread, tries for a bounded time, spinning without syscalls, and gives
//! up rather than wait forever.

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// How long a handler tries: enough for a holder on another thread to finish a line (even on a
/// loaded host), short enough that a handler that interrupted the holder still ends the process
/// at once.
const PATIENCE: Duration = Duration::from_millis(200);

/// The guard of `mutex`, poisoned or not.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guard of `mutex` if it comes free within [`PATIENCE`]; a poisoned lock is taken too.
pub fn lock_soon<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let start = Instant::now();
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(e)) => return Some(PoisonError::into_inner(e)),
            Err(TryLockError::WouldBlock) if start.elapsed() < PATIENCE => {
                std::hint::spin_loop();
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_freed_by_another_thread_is_taken_and_one_never_freed_is_given_up() {
        let mutex = std::sync::Arc::new(Mutex::new(0));
        let held = mutex.lock().unwrap();
        let other = mutex.clone();
        let waiter = std::thread::spawn(move || lock_soon(&other).map(|g| *g));
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert_eq!(waiter.join().unwrap(), Some(0));

        let _held = mutex.lock().unwrap();
        assert!(lock_soon(&mutex).is_none());
    }
}
