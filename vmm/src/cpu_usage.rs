//! CPU time of the calling thread and of the whole process, from the kernel's CPU-time clocks
//! (no /proc, which a jail does not have), so that a run can report how much went to the guest
//! (the vCPU threads, whose time includes running guest code) and how much to everything else.

use std::time::Duration;

/// The time of `clock`, or `None` if the kernel does not have it.
pub(crate) fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which is valid.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The CPU time (user + system) the calling thread has used.
pub fn this_thread() -> Option<Duration> {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU time (user + system) of the whole process, threads that have ended included.
pub fn process() -> Option<Duration> {
    clock_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the calling thread has used `cpu` of CPU time.
    fn burn(cpu: Duration) {
        let start = this_thread().unwrap();
        while this_thread().unwrap() - start < cpu {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn an_ended_thread_still_counts_in_the_process() {
        let before = process().unwrap();
        let spent = std::thread::spawn(|| {
            burn(Duration::from_millis(50));
            this_thread().unwrap()
        })
        .join()
        .unwrap();
        assert!(spent >= Duration::from_millis(50));
        assert!(process().unwrap() - before >= Duration::from_millis(50));
        // The other thread's time is not this one's.
        assert!(this_thread().unwrap() < process().unwrap());
    }
}
