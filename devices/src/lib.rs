//! What the guest sees: the buses that route port and MMIO accesses, and the emulated devices
//! behind them.
//!
//! This crate owns device models only. It knows nothing of KVM or of the VMM's configuration:
//! interrupts leave a device through an [`EventFd`](vmm_sys_util::eventfd::EventFd) that the VMM
//! wires to an irqfd, and guest accesses arrive through [`BusDevice`].

pub mod boot_timer;
pub mod bus;
pub mod host_file;
pub mod latency;
pub mod legacy;
#[cfg(test)]
mod test_dir;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

/// Guest memory as every device and the VMM see it: vm-memory's mappings with a dirty bitmap,
/// which records the pages the VMM itself writes (virtio buffers and rings) so that a Diff
/// snapshot has them as well as the pages the vCPUs dirtied, which KVM logs.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;
