//! Firecracker's boot-timer device: the guest writes the magic byte 123 at offset 0 when it
//! reaches the point it wants measured (usually its init), and the VMM logs the time since it
//! started building the VM.

use std::time::Instant;

use crate::BusDevice;

/// The byte the guest writes to mark "booted".
pub const MAGIC_BOOT_COMPLETE: u8 = 123;

/// Wall-clock and process CPU time at a point of the VMM's life.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp {
    wall: Instant,
    cpu_us: u64,
}

impl Timestamp {
    /// The current wall-clock and process CPU time.
    pub fn now() -> Self {
        Self {
            wall: Instant::now(),
            cpu_us: process_cpu_time_us(),
        }
    }
}

fn process_cpu_time_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and CLOCK_PROCESS_CPUTIME_ID is always
    // available on Linux; on the impossible failure `ts` stays zeroed.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// The boot-timer device on the MMIO bus.
#[derive(Debug)]
pub struct BootTimer {
    start: Timestamp,
}

impl BootTimer {
    /// A timer that measures from `start`.
    pub fn new(start: Timestamp) -> Self {
        Self { start }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data == [MAGIC_BOOT_COMPLETE] {
            let now = Timestamp::now();
            let wall_us = now.wall.duration_since(self.start.wall).as_micros();
            let cpu_us = now.cpu_us.saturating_sub(self.start.cpu_us);
            throttled_log::throttled_info!(
                "Guest-boot-time = {:>6} us {} ms, {:>6} CPU us {} CPU ms",
                wall_us,
                wall_us / 1000,
                cpu_us,
                cpu_us / 1000
            );
        }
    }
}
