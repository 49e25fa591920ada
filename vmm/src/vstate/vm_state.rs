//! The VM's own state for a snapshot: the in-kernel PIC pair and IOAPIC, the PIT and the
//! kvm-clock, as KVM reports them. The devices' and the vCPUs' states are their own.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};

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
