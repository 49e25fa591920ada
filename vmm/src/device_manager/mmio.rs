//! Devices in the MMIO gap: the boot timer in the first slot, then one slot and one interrupt
//! line per virtio device, announced to the guest on the kernel command line.

use std::sync::{Arc, Mutex};

use devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, NOTIFY_REG_OFFSET};
use devices::virtio::{Interrupt, VirtioDevice};
use devices::GuestMemoryMmap;
use devices::{Bus, BusError};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::{BOOT_TIMER_START, MMIO_SLOT_SIZE};
use crate::metrics::{Counter, MetricSource};

/// The first interrupt line for virtio devices (0-4 belong to the legacy devices).
const FIRST_IRQ: u32 = 5;
/// The last IOAPIC pin.
const LAST_IRQ: u32 = 23;

/// Errors attaching MMIO devices.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// No interrupt line is left for another device.
    #[error("No interrupt line is left for another MMIO device (at most {} devices).", LAST_IRQ - FIRST_IRQ + 1)]
    OutOfIrqs,
    /// An eventfd could not be created.
    #[error("Failed to create the device's interrupt eventfd: {0}")]
    EventFd(std::io::Error),
    /// The interrupt could not be wired to KVM.
    #[error("Failed to register the irqfd for IRQ {irq}: {source}")]
    Irqfd { irq: u32, source: kvm_ioctls::Error },
    /// A queue notification could not be wired to KVM.
    #[error("Failed to register the ioeventfd of queue {queue} at {addr:#x}: {source}")]
    Ioeventfd {
        queue: usize,
        addr: u64,
        source: kvm_ioctls::Error,
    },
    /// The device could not be placed on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The device to attach is not a virtio device.
    #[error("Only virtio devices go behind a virtio-mmio transport.")]
    NotVirtio,
}

/// Hands out MMIO slots and interrupt lines, in order.
#[derive(Debug)]
pub struct MmioAllocator {
    next_addr: u64,
    next_irq: u32,
}

impl Default for MmioAllocator {
    fn default() -> Self {
        Self {
            // Slot 0 belongs to the boot timer, present or not, so device addresses do not
            // depend on --boot-timer.
            next_addr: BOOT_TIMER_START + MMIO_SLOT_SIZE,
            next_irq: FIRST_IRQ,
        }
    }
}

impl MmioAllocator {
    fn allocate(&mut self) -> Result<(u64, u32), MmioError> {
        if self.next_irq > LAST_IRQ {
            return Err(MmioError::OutOfIrqs);
        }
        let slot = (self.next_addr, self.next_irq);
        self.next_addr += MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }
}

/// Where a virtio device landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioSlot {
    /// Start of its register window.
    pub addr: u64,
    /// Its interrupt line.
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line entry that tells the guest about the device.
    pub fn cmdline_arg(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.addr, self.irq)
    }
}

/// A virtio device's transport, for what the VMM tells the driver (a config change).
pub type SharedTransport = Arc<Mutex<MmioTransport>>;

/// The interrupts the virtio devices raised, as Firecracker's `interrupts` metrics group.
/// Its `config_updates` counts MSI vector changes, which virtio-mmio has none of: 0, as in
/// Firecracker on virtio-mmio.
#[derive(Debug)]
pub struct InterruptMetrics(pub Vec<Arc<Interrupt>>);

impl MetricSource for InterruptMetrics {
    fn counters(&self) -> Vec<Counter> {
        let triggers = self.0.iter().map(|i| i.triggers()).sum::<u64>();
        Counter::group("interrupts", [("triggers", triggers)])
    }
}

/// Puts `device` behind a virtio-mmio transport in the next free slot: its interrupt becomes an
/// irqfd and each queue's eventfd an ioeventfd on the notify register.
pub fn attach_virtio(
    vm: &VmFd,
    mmio_bus: &mut Bus,
    mem: &GuestMemoryMmap,
    allocator: &mut MmioAllocator,
    device: Arc<Mutex<dyn VirtioDevice>>,
) -> Result<(MmioSlot, SharedTransport), MmioError> {
    let (addr, irq) = allocator.allocate()?;
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?;
    vm.register_irqfd(&irq_evt, irq)
        .map_err(|source| MmioError::Irqfd { irq, source })?;
    {
        let locked = device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let notify = addr + NOTIFY_REG_OFFSET;
        for (queue, evt) in locked.queue_events().iter().enumerate() {
            let datamatch = queue as u32;
            vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), datamatch)
                .map_err(|source| MmioError::Ioeventfd {
                    queue,
                    addr: notify,
                    source,
                })?;
        }
    }
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irq_evt)));
    let transport = Arc::new(Mutex::new(transport));
    mmio_bus.insert(transport.clone(), addr, MMIO_WINDOW_SIZE)?;
    Ok((MmioSlot { addr, irq }, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_boot_timer_and_irqs_run_out() {
        let mut alloc = MmioAllocator::default();
        let first = alloc.allocate().unwrap();
        assert_eq!(first, (0xc000_1000, 5));
        let second = alloc.allocate().unwrap();
        assert_eq!(second, (0xc000_2000, 6));
        let slot = MmioSlot {
            addr: first.0,
            irq: first.1,
        };
        assert_eq!(slot.cmdline_arg(), "virtio_mmio.device=4K@0xc0001000:5");
        let remaining = (LAST_IRQ - FIRST_IRQ + 1) as usize - 2;
        for _ in 0..remaining {
            alloc.allocate().unwrap();
        }
        assert!(matches!(alloc.allocate(), Err(MmioError::OutOfIrqs)));
    }
}
