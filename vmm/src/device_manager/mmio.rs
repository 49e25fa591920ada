//! Devices in the MMIO gap. For now that is the boot timer, which Firecracker places in the
//! first slot; virtio-mmio devices take the slots after it.

use std::sync::{Arc, Mutex};

use devices::boot_timer::{BootTimer, Timestamp};
use devices::{Bus, BusError};

use crate::arch::x86_64::layout::{BOOT_TIMER_START, MMIO_SLOT_SIZE};

/// Places the boot timer, measuring from `start`, at [`BOOT_TIMER_START`].
pub fn attach_boot_timer(mmio_bus: &mut Bus, start: Timestamp) -> Result<(), BusError> {
    let timer = Arc::new(Mutex::new(BootTimer::new(start)));
    mmio_bus.insert(timer, BOOT_TIMER_START, MMIO_SLOT_SIZE)
}
