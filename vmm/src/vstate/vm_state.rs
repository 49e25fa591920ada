//! The VM's own state for a snapshot: the in-kernel PIC pair and IOAPIC, the PIT and the
//! kvm-clock, as KVM reports them, and the pages dirtied since the last snapshot, for a Diff
//! one. The devices' and the vCPUs' states are their own.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

use devices::GuestMemoryMmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::vm::Vm;

/// The VM's state.
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// The kvm-clock.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Errors saving or restoring the VM's state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    /// A KVM ioctl on the VM failed.
    #[error("Failed to {what}: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// `clock_realtime` was asked for, and the saved clock has no real time (Firecracker's
    /// refusal).
    #[error("The snapshot's clock has no real time to restore.")]
    NoRealtimeClock,
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError::Ioctl { what, source }
}

impl Vm {
    /// The state, for a snapshot; the vCPUs are paused.
    pub fn save_state(&self) -> Result<VmState, VmStateError> {
        let chip = |chip_id, what| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd().get_irqchip(&mut chip).map_err(ioctl(what))?;
            Ok::<_, VmStateError>(chip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER, "read the master PIC")?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE, "read the slave PIC")?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC, "read the IOAPIC")?,
            pit: self.fd().get_pit2().map_err(ioctl("read the PIT"))?,
            clock: self.fd().get_clock().map_err(ioctl("read the clock"))?,
        })
    }

    /// The pages of `mem` (registered with dirty logging) written since the last call, one
    /// bitmap per region, a bit per 4 KiB page: KVM's log of the vCPUs' writes ORed with the
    /// memory's own bitmap of the VMM's (device) writes. Both are cleared.
    pub fn take_dirty_pages(&self, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>, VmStateError> {
        (0u32..)
            .zip(mem.iter())
            .map(|(slot, region)| {
                let size = usize::try_from(region.len()).unwrap_or(usize::MAX);
                let mut kvm = self
                    .fd()
                    .get_dirty_log(slot, size)
                    .map_err(ioctl("read the dirty log"))?;
                let vmm = MmapRegion::bitmap(region).get_and_reset();
                for (word, own) in kvm.iter_mut().zip(vmm) {
                    *word |= own;
                }
                Ok(kvm)
            })
            .collect()
    }

    /// Marks the pages `dirty` holds dirty again, in the memory's own bitmap: a Diff snapshot
    /// that could not be written leaves them for the next one.
    pub fn keep_dirty_pages(mem: &GuestMemoryMmap, dirty: &[Vec<u64>]) {
        for (region, bitmap) in mem.iter().zip(dirty) {
            let own = MmapRegion::bitmap(region);
            for (w, word) in bitmap.iter().enumerate() {
                for bit in (0..64).filter(|b| word & (1 << b) != 0) {
                    own.set_bit(w * 64 + bit);
                }
            }
        }
    }

    /// Puts a new VM, built as the saved one was, in `state`. The clock goes on from the
    /// saved guest time, or with `clock_realtime` jumps to the host's real time, which the
    /// saved clock must carry (as Firecracker's snapshot load).
    pub fn restore_state(&self, state: &VmState, clock_realtime: bool) -> Result<(), VmStateError> {
        let mut clock = state.clock;
        // KVM takes only KVM_CLOCK_REALTIME in SET_CLOCK's flags; the others are reports.
        clock.flags = if clock_realtime {
            if clock.flags & KVM_CLOCK_REALTIME == 0 {
                return Err(VmStateError::NoRealtimeClock);
            }
            KVM_CLOCK_REALTIME
        } else {
            0
        };
        let fd = self.fd();
        fd.set_pit2(&state.pit).map_err(ioctl("restore the PIT"))?;
        fd.set_clock(&clock).map_err(ioctl("restore the clock"))?;
        fd.set_irqchip(&state.pic_master)
            .map_err(ioctl("restore the master PIC"))?;
        fd.set_irqchip(&state.pic_slave)
            .map_err(ioctl("restore the slave PIC"))?;
        fd.set_irqchip(&state.ioapic)
            .map_err(ioctl("restore the IOAPIC"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_template::CustomCpuTemplate;

    #[test]
    fn the_vmms_writes_are_dirty_pages_once_and_kept_when_a_diff_fails() {
        let vm = Vm::new(&CustomCpuTemplate::default()).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        vm.register_memory(&mem, true).unwrap();
        vm.take_dirty_pages(&mem).unwrap();
        vm_memory::Bytes::write_obj(&mem, 7u64, vm_memory::GuestAddress(0x3008)).unwrap();
        let dirty = vm.take_dirty_pages(&mem).unwrap();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0][0], 1 << 3, "{:#x}", dirty[0][0]);
        assert!(vm.take_dirty_pages(&mem).unwrap()[0]
            .iter()
            .all(|w| *w == 0));
        Vm::keep_dirty_pages(&mem, &dirty);
        assert_eq!(vm.take_dirty_pages(&mem).unwrap()[0][0], 1 << 3);
    }

    #[test]
    fn a_new_vm_takes_the_saved_interrupt_controllers_pit_and_clock() {
        let template = CustomCpuTemplate::default();
        let saved = Vm::new(&template).unwrap().save_state().unwrap();
        let mut changed = saved;
        changed.pic_master.chip.pic.imr = 0xfa;
        changed.ioapic.chip.ioapic.id = 3 << 24;
        changed.pit.channels[0].count = 0x1234;
        changed.clock.clock = saved.clock.clock + 3_600_000_000_000;
        let vm = Vm::new(&template).unwrap();
        vm.restore_state(&changed, false).unwrap();
        let restored = vm.save_state().unwrap();
        // SAFETY: `chip` is plain data whichever member is read; for a PIC the kernel fills the
        // `pic` member, for the IOAPIC the `ioapic` one.
        unsafe {
            assert_eq!(restored.pic_master.chip.pic.imr, 0xfa);
            assert_eq!(restored.ioapic.chip.ioapic.id, 3 << 24);
            assert_eq!(restored.pic_slave.chip.pic, saved.pic_slave.chip.pic);
        }
        assert_eq!(restored.pit.channels[0].count, 0x1234);
        assert!(restored.clock.clock >= changed.clock.clock);
        let no_realtime = VmState {
            clock: kvm_clock_data {
                flags: 0,
                ..changed.clock
            },
            ..changed
        };
        assert!(matches!(
            vm.restore_state(&no_realtime, true),
            Err(VmStateError::NoRealtimeClock)
        ));
    }
}
