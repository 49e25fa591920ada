//! The KVM VM: its file descriptor, the in-kernel interrupt controllers and PIT, and the guest
//! memory registered with it.

use devices::GuestMemoryMmap;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::cpu_template::{capabilities, CustomCpuTemplate};

/// Errors creating and setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("Failed to open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// KVM speaks another API version.
    #[error("KVM API version {0} is not supported; version 12 is required.")]
    ApiVersion(i32),
    /// KVM lacks a capability Kiln or the CPU template needs (Firecracker's message).
    #[error("Missing KVM capabilities: {0:#x}")]
    MissingCap(u32),
    /// A KVM ioctl on the VM failed.
    #[error("Failed to {what}: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;

/// The capabilities the boot path relies on.
const REQUIRED_CAPS: [u32; 6] = [
    kvm_bindings::KVM_CAP_IRQCHIP,
    kvm_bindings::KVM_CAP_IOEVENTFD,
    kvm_bindings::KVM_CAP_IRQFD,
    kvm_bindings::KVM_CAP_USER_MEMORY,
    kvm_bindings::KVM_CAP_SET_TSS_ADDR,
    kvm_bindings::KVM_CAP_PIT2,
];

/// A KVM VM with its interrupt controllers.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm and creates a VM with the in-kernel IOAPIC, PIC and PIT, after checking
    /// the capabilities Kiln needs and those the CPU template adds or removes.
    pub fn new(template: &CustomCpuTemplate) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(VmError::ApiVersion(version));
        }
        let caps = capabilities(&REQUIRED_CAPS, template);
        // KVM_CHECK_EXTENSION answers 0 for a capability it lacks.
        if let Some(cap) = caps
            .into_iter()
            .find(|cap| kvm.check_extension_raw(u64::from(*cap)) == 0)
        {
            return Err(VmError::MissingCap(cap));
        }
        let fd = kvm.create_vm().map_err(ioctl("create the VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("set the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl("set the identity map address"))?;
        fd.create_irq_chip()
            .map_err(ioctl("create the in-kernel irqchip"))?;
        // The dummy speaker port keeps the guest's PC-speaker probing from exiting to us.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(ioctl("create the in-kernel PIT"))?;
        Ok(Self { kvm, fd })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(
        &self,
        mem: &GuestMemoryMmap,
        track_dirty_pages: bool,
    ) -> Result<(), VmError> {
        let flags = if track_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let region = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the VMM keeps alive
            // (and never unmaps) for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(ioctl("register guest memory"))?;
        }
        Ok(())
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
