//! Why an action failed: the contract's error types, one variant per failure, each message the
//! `fault_message` the API answers. Where Firecracker has the same failure, the variant has its
//! name and, where Kiln's tests or clients rely on it, its message.
//!
//! Everything here names only modules below the running VM (configuration, devices, vCPUs,
//! loader), so that the running VM, the builder and the controller can all return these types.

use devices::legacy::I8042Error;
use devices::BusError;

use crate::arch::x86_64::boot_params::BootParamsError;
use crate::arch::x86_64::mptable::MptableError;
use crate::config::{BootSourceError, ConfigError, DriveError, MachineConfigError, NetError};
use crate::cpu_template::StaticTemplateError;
use crate::device_manager::block::BlockDeviceError;
use crate::device_manager::legacy::LegacyError;
use crate::device_manager::mmio::MmioError;
use crate::device_manager::net::NetDeviceError;
use crate::device_manager::persist::DeviceStateError;
use crate::loader::LoaderError;
use crate::logger::LoggerError;
use crate::metrics::MetricsError;
use crate::seccomp::SeccompError;
use crate::snapshot::drives::SnapshotDriveError;
use crate::snapshot::file::SnapshotFileError;
use crate::snapshot::memory::MemoryFileError;
use crate::snapshot::uffd::UffdError;
use crate::vstate::memory::MemoryError;
use crate::vstate::vcpu::{VcpuError, VcpuResponse};
use crate::vstate::vcpu_state::VcpuStateError;
use crate::vstate::vm::VmError;
use crate::vstate::vm_state::VmStateError;

/// Why an action failed. The API answers 400 with the message as `fault_message`, as
/// Firecracker does for every VMM error.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// `PUT /boot-source` named a file that cannot be read.
    #[error(transparent)]
    BootSource(#[from] BootSourceError),
    /// `PUT` or `PATCH /machine-config` was refused.
    #[error(transparent)]
    MachineConfig(#[from] MachineConfigError),
    /// A drive's configuration was refused.
    #[error(transparent)]
    DriveConfig(#[from] DriveError),
    /// A network interface's configuration was refused.
    #[error(transparent)]
    NetworkConfig(#[from] NetError),
    /// `PUT /logger` failed.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// `PUT /metrics` or `FlushMetrics` failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The machine configuration could not be written as JSON.
    #[error("The machine configuration cannot be written as JSON: {0}")]
    MachineConfigJson(serde_json::Error),
    /// A pre-boot action after boot (Firecracker's message).
    #[error("The requested operation is not supported after starting the microVM.")]
    OperationNotSupportedPostBoot,
    /// A runtime action before boot (Firecracker's message).
    #[error("The requested operation is not supported before starting the microVM.")]
    OperationNotSupportedPreBoot,
    /// `InstanceStart` failed.
    #[error("Cannot start the microVM: {0}")]
    StartMicrovm(#[from] StartMicrovmError),
    /// A vCPU could not be asked to pause or resume.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A vCPU answered a pause or resume with something else.
    #[error("A vCPU answered {0:?}.")]
    VcpuAnswer(VcpuResponse),
    /// `SendCtrlAltDel` could not queue the key sequence.
    #[error("Cannot send Ctrl-Alt-Del: {0}")]
    CtrlAltDel(I8042Error),
    /// A request set a rate limiter.
    #[error("Rate limiters are not supported yet.")]
    RateLimiterUnsupported,
    /// `PATCH /drives` named no attached drive.
    #[error("No drive has the ID '{0}'.")]
    DriveNotFound(String),
    /// A device the action needs is not attached (Firecracker's message).
    #[error("Device not found")]
    DeviceNotFound,
    /// `PATCH /drives` could not open the new image.
    #[error(transparent)]
    BlockDevice(#[from] BlockDeviceError),
    /// The config-change interrupt could not be raised after a disk swap.
    #[error("Failed to notify the guest: {0}")]
    NotifyGuest(std::io::Error),
    /// `PUT /snapshot/create` on a running VM.
    #[error("Create snapshot error: the microVM must be paused first.")]
    SnapshotNotPaused,
    /// `PUT /snapshot/create` asked for a Diff snapshot of a VM whose dirty pages KVM does not
    /// log.
    #[error("Create snapshot error: a Diff snapshot needs track_dirty_pages (in machine-config, or in the snapshot/load that restored the microVM).")]
    DiffWithoutDirtyTracking,
    /// The VM's KVM state could not be saved.
    #[error("Create snapshot error: {0}")]
    SaveVm(#[from] VmStateError),
    /// A vCPU's state could not be saved.
    #[error("Create snapshot error: {0}")]
    SaveVcpu(#[from] VcpuStateError),
    /// The snapshot file could not be written, or read on a load.
    #[error("Snapshot error: {0}")]
    SnapshotFile(#[from] SnapshotFileError),
    /// The memory file could not be written.
    #[error("Create snapshot error: {0}")]
    MemoryFile(#[from] MemoryFileError),
    /// `PUT /snapshot/load` after configuring the VM to boot (Firecracker's message).
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadSnapshotNotAllowed,
    /// The snapshot's configuration is not one this Kiln takes.
    #[error("Load snapshot error: the snapshot's configuration: {0}")]
    SnapshotConfig(#[from] ConfigError),
    /// `network_overrides` names an interface the snapshot does not have.
    #[error("Load snapshot error: the snapshot has no network interface '{0}' to override.")]
    UnknownNetworkOverride(String),
    /// A drive could not be frozen at a snapshot, or put on its new image at a load.
    #[error("Snapshot error: {0}")]
    SnapshotDrive(#[from] SnapshotDriveError),
    /// The VM could not be rebuilt from the snapshot.
    #[error("Load snapshot error: Failed to restore from snapshot: {0}")]
    Restore(StartMicrovmError),
}

/// Why `InstanceStart` failed: building the VM or starting its vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum StartMicrovmError {
    /// No `PUT /boot-source` yet.
    #[error("the boot source is not configured.")]
    MissingBootSource,
    /// The static CPU template is not for this host (Firecracker's message).
    #[error("Failed to get CPU template: {0}")]
    CpuTemplate(#[from] StaticTemplateError),
    /// Creating or setting up the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// The zero page or PVH start info could not be written.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// The legacy devices could not be attached.
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    /// A device could not be placed on a bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A vCPU could not be created, configured or started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The memory file could not be mapped.
    #[error(transparent)]
    MemoryFile(#[from] MemoryFileError),
    /// The page-fault handler could not be given guest memory.
    #[error(transparent)]
    Uffd(#[from] UffdError),
    /// A vCPU did not start running.
    #[error("vCPU {index} did not start: {response:?}")]
    VcpuStart {
        index: usize,
        response: VcpuResponse,
    },
    /// The stop eventfd or the metrics timer could not be created.
    #[error("Failed to create the VM stop eventfd: {0}")]
    EventFd(std::io::Error),
    /// A network device could not be created.
    #[error(transparent)]
    Net(#[from] NetDeviceError),
    /// A block device could not be created.
    #[error(transparent)]
    Block(#[from] BlockDeviceError),
    /// A virtio device could not be attached.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The event loop could not be created.
    #[error("Failed to create the event loop: {0:?}")]
    EventManager(event_manager::Error),
    /// The VMM thread could not install its seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A restored vCPU cannot take its saved state.
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    /// The VM cannot take its saved interrupt controllers, PIT or clock.
    #[error(transparent)]
    VmState(#[from] VmStateError),
    /// A restored device cannot take its saved state.
    #[error(transparent)]
    DeviceState(#[from] DeviceStateError),
    /// The snapshot has another number of vCPUs than its configuration.
    #[error("The snapshot holds {saved} vCPUs; its machine configuration has {configured}.")]
    SavedVcpus { saved: usize, configured: u8 },
    /// This host's KVM wants a larger XSAVE area than a snapshot holds.
    #[error("This host's KVM needs an XSAVE area of {0} bytes; a snapshot holds 4096.")]
    XsaveSize(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_firecrackers_where_clients_read_them() {
        assert_eq!(
            ActionError::OperationNotSupportedPreBoot.to_string(),
            "The requested operation is not supported before starting the microVM."
        );
        assert_eq!(
            ActionError::OperationNotSupportedPostBoot.to_string(),
            "The requested operation is not supported after starting the microVM."
        );
        assert_eq!(
            ActionError::from(StartMicrovmError::MissingBootSource).to_string(),
            "Cannot start the microVM: the boot source is not configured."
        );
    }
}
