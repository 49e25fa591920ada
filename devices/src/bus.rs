//! A bus of non-overlapping address ranges, each served by one device.
//!
//! The same type serves the port I/O space and the MMIO space. vCPU threads look up a range and
//! lock only that device, so two vCPUs touching different devices never contend. The lock order
//! is simple: the bus itself is immutable once the VM runs, and a device lock is never held while
//! taking another one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes on a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    #[error("The bus range at {base:#x} with length {len:#x} is invalid.")]
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps a range already on the bus.
    #[error("The bus range at {base:#x} with length {len:#x} overlaps an existing device.")]
    Overlap { base: u64, len: u64 },
}

/// The range `[base, base + len)` a device occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

impl Range {
    fn last(&self) -> u64 {
        // Cannot overflow: `insert` rejects ranges that wrap.
        self.base + (self.len - 1)
    }
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of devices, each on its own range.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<Range, SharedDevice>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.devices.keys()).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` on `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let new = Range { base, len };
        let overlaps = |r: &Range| r.base <= new.last() && new.base <= r.last();
        // Ranges do not overlap, so only the neighbours on either side can collide.
        let before = self.devices.range(..=new).next_back().map(|(r, _)| r);
        let after = self.devices.range(new..).next().map(|(r, _)| r);
        if before.into_iter().chain(after).any(overlaps) {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(new, device);
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64, access_len: usize) -> Option<(&SharedDevice, u64)> {
        let probe = Range {
            base: addr,
            len: u64::MAX,
        };
        let (range, device) = self.devices.range(..=probe).next_back()?;
        let offset = addr - range.base;
        let end = offset.checked_add(access_len as u64)?;
        (end <= range.len).then_some((device, offset))
    }

    /// Reads from the device at `addr`. Returns false, leaving `data` untouched, when no device
    /// covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns false when no device covers the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it if a thread panicked while holding the lock: device state stays
/// usable and the VMM reports the panic itself.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn routes_accesses_to_the_covering_device() {
        let mut bus = Bus::new();
        let a = recorder();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(a.lock().unwrap().last_write, Some((0, vec![7])));
    }

    #[test]
    fn misses_outside_and_across_range_ends() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x1000, 0x10).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x1010, &mut data[..1]));
        assert!(!bus.read(0x100e, &mut data));
        assert_eq!(data, [0xaa; 4]);
        assert!(!bus.write(u64::MAX, &data));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x100).unwrap();
        for (base, len) in [(0x80, 0x81), (0x1ff, 1), (0x100, 1), (0x0, 0x1000)] {
            assert_eq!(
                bus.insert(recorder(), base, len),
                Err(BusError::Overlap { base, len })
            );
        }
        bus.insert(recorder(), 0x200, 1).unwrap();
        bus.insert(recorder(), 0x0, 0x100).unwrap();
        assert!(matches!(
            bus.insert(recorder(), 0x300, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
