//! From a validated configuration to a VM whose vCPUs are ready to run: memory, the VM and its
//! irqchip, the kernel, devices, boot tables, vCPUs, in that order. The phases that do not
//! depend on booting a kernel (memory, VM, devices, vCPUs) are functions of their own.

use std::io::Write;
use std::sync::Arc;

use devices::boot_timer::Timestamp;
use devices::Bus;
use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_xsave, KVM_MAX_CPUID_ENTRIES};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::boot_params::{write_boot_params, BootData};
use crate::arch::x86_64::layout::ram_regions;
use crate::arch::x86_64::mptable::setup_mptable;
use crate::arch::x86_64::regs::EntryPoint;
use crate::bounded_lock::lock;
use crate::config::{guest_order, root_cmdline};
use crate::config::{BootSourceConfig, MachineConfig, VmConfig};
use crate::cpu_template::{CpuTemplateType, CustomCpuTemplate, HostCpu};
use crate::device_manager::registry::{DeviceHandle, DeviceRegistry};
use crate::device_manager::{block, legacy, mmio, net};
use crate::loader::{self, LoadedKernel};
use crate::metrics::Metrics;
use crate::rpc::{MemBackend, MemBackendType, StartMicrovmError};
use crate::runtime::{Vmm, VmmParts};
use crate::seccomp::SeccompFilters;
use crate::snapshot::memory::{map_private, MemoryFileError};
use crate::snapshot::state::{DevicesState, MemoryRegionState, MicrovmState};
use crate::snapshot::uffd;
use crate::vstate::memory::{create_guest_memory, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, Vcpu, VcpuConfig, VcpuError, VcpuExitCounters};
use crate::vstate::vcpu_state::{check_cpuid_offered, VcpuState};
use crate::vstate::vm::{Vm, VmError};

/// How the VM meets the host, beyond its configuration.
pub struct HostOptions {
    /// Where guest serial output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// Whether host stdin feeds the guest's serial input.
    pub console_input: bool,
    /// Whether the boot-timer device is present.
    pub boot_timer: bool,
    /// When the VMM started building the VM, for the boot timer.
    pub start: Timestamp,
    /// Where devices and vCPUs register their counters.
    pub metrics: Arc<Metrics>,
    /// The seccomp filters the VMM and vCPU threads install when the VM starts.
    pub seccomp: Arc<SeccompFilters>,
}

impl std::fmt::Debug for HostOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostOptions")
            .field("console_input", &self.console_input)
            .field("boot_timer", &self.boot_timer)
            .finish_non_exhaustive()
    }
}

/// Builds the VM described by `config`, with its vCPUs created, configured and paused. The
/// phases are memory, the VM and its irqchip, devices and vCPUs, each its own function so that
/// a restore can share them; loading the kernel and writing the boot tables are boot's own.
pub fn build(config: &VmConfig, host: HostOptions) -> Result<Vmm, StartMicrovmError> {
    let machine = &config.machine;
    // Validation guarantees the size fits; `mem_size_bytes` re-checks rather than trusting it.
    let mem_size = machine
        .mem_size_bytes()
        .ok_or(MemoryError::TooLarge(u64::MAX))?;

    // As in Firecracker: the template is resolved first, and its capabilities checked with
    // Kiln's when the VM is created.
    let template = CpuTemplateType::resolve(machine.cpu_template.as_ref(), &HostCpu::current())?;
    let mem = create_guest_memory(mem_size)?;
    let vm = create_vm(&mem, machine, &template)?;
    let (kernel, initrd) = load_images(&mem, mem_size, &config.boot_source)?;
    let boot_timer = host.boot_timer.then_some(host.start);
    let devices = attach_devices(
        &vm,
        &mem,
        config,
        (host.serial_out, boot_timer),
        &host.metrics,
        None,
    )?;
    write_boot_tables(&mem, mem_size, config, &kernel, initrd, &devices.registry)?;
    let setup = VcpuSetup::Boot(kernel.entry, &template);
    let vcpus = create_vcpus(&vm, &mem, machine, setup, &devices, &host.metrics)?;

    Vmm::new(VmmParts {
        vm,
        mem,
        uffd: None,
        dirty_tracking: machine.track_dirty_pages,
        vcpus,
        stop_evt: devices.stop_evt,
        console_input: host.console_input,
        devices: devices.registry,
        metrics: host.metrics,
        seccomp: host.seccomp,
    })
}

/// Builds the VM `snapshot` holds, from its configuration `config` (the snapshot's, with the
/// load's overrides) and its memory `backend`, with its vCPUs restored and paused: the same
/// phases as [`build`] in the same order, so that every device lands where it was, then each
/// part's saved state. Memory, in the layout the configuration gives, is the memory file
/// mapped private, or anonymous memory whose pages the backend's page-fault handler serves.
pub fn restore(
    snapshot: &MicrovmState,
    config: &VmConfig,
    backend: &MemBackend,
    clock_realtime: bool,
    host: HostOptions,
) -> Result<Vmm, StartMicrovmError> {
    let machine = &config.machine;
    let mem_size = machine
        .mem_size_bytes()
        .ok_or(MemoryError::TooLarge(u64::MAX))?;
    let layout: Vec<MemoryRegionState> = ram_regions(mem_size)
        .into_iter()
        .map(|(guest_addr, size)| MemoryRegionState { guest_addr, size })
        .collect();
    if layout != snapshot.memory {
        return Err(MemoryFileError::Layout {
            mem_size_mib: machine.mem_size_mib,
        }
        .into());
    }
    let (mem, uffd) = match backend.backend_type {
        MemBackendType::File => (map_private(&backend.backend_path, &snapshot.memory)?, None),
        MemBackendType::Uffd => {
            let mem = create_guest_memory(mem_size)?;
            let uffd = uffd::serve_with_handler(&backend.backend_path, &mem)?;
            (mem, Some(uffd))
        }
    };
    let template = CpuTemplateType::resolve(machine.cpu_template.as_ref(), &HostCpu::current())?;
    let vm = create_vm(&mem, machine, &template)?;
    // The saved XSAVE areas are 4 KiB; a KVM that wants more for this process would read past
    // them (see `VcpuState::xsave`).
    let xsave_size = vm.fd().check_extension_int(kvm_ioctls::Cap::Xsave2);
    if usize::try_from(xsave_size).unwrap_or(0) > std::mem::size_of::<kvm_xsave>() {
        return Err(StartMicrovmError::XsaveSize(xsave_size));
    }
    let boot_timer = host.boot_timer.then_some(host.start);
    let devices = attach_devices(
        &vm,
        &mem,
        config,
        (host.serial_out, boot_timer),
        &host.metrics,
        Some(&snapshot.devices),
    )?;
    devices
        .registry
        .restore_virtio(&snapshot.devices.virtio, &mem)?;
    // After the devices: the saved irqchip holds the lines as they were, over anything a
    // restored device raised.
    vm.restore_state(&snapshot.vm, clock_realtime)?;
    let setup = VcpuSetup::Restore(&snapshot.vcpus);
    let vcpus = create_vcpus(&vm, &mem, machine, setup, &devices, &host.metrics)?;

    Vmm::new(VmmParts {
        vm,
        mem,
        uffd,
        dirty_tracking: machine.track_dirty_pages,
        vcpus,
        stop_evt: devices.stop_evt,
        console_input: host.console_input,
        devices: devices.registry,
        metrics: host.metrics,
        seccomp: host.seccomp,
    })
}

/// The KVM VM with its irqchip and PIT, `mem` registered as its memory slots, once KVM is
/// known to have the capabilities Kiln and the CPU template need.
fn create_vm(
    mem: &GuestMemoryMmap,
    machine: &MachineConfig,
    template: &CustomCpuTemplate,
) -> Result<Vm, StartMicrovmError> {
    let vm = Vm::new(template)?;
    vm.register_memory(mem, machine.track_dirty_pages)?;
    Ok(vm)
}

/// Boot only: the kernel, and the initrd above it; returns where they are.
fn load_images(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    boot: &BootSourceConfig,
) -> Result<(LoadedKernel, Option<(GuestAddress, u64)>), StartMicrovmError> {
    let kernel = loader::load_kernel(mem, &boot.kernel_image_path)?;
    let initrd = boot
        .initrd_path
        .as_deref()
        .map(|path| loader::load_initrd(mem, mem_size, kernel.end, path))
        .transpose()?;
    log::info!(
        "Loaded the kernel, entering at {:#x} via {:?}",
        kernel.entry.addr.0,
        kernel.entry.protocol
    );
    Ok((kernel, initrd))
}

/// The devices on their buses, which are complete: the vCPUs share them from here on.
struct AttachedDevices {
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    registry: DeviceRegistry,
    /// Written by the i8042's reset line and by the vCPUs to stop the VM.
    stop_evt: EventFd,
}

/// The legacy devices on the port-I/O bus (in their `saved` states when restoring); on the
/// MMIO bus, the boot timer (when asked for, measuring from `boot_timer`) and every drive and
/// interface, each with its metrics.
fn attach_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    (serial_out, boot_timer): (Box<dyn Write + Send>, Option<Timestamp>),
    metrics: &Metrics,
    saved: Option<&DevicesState>,
) -> Result<AttachedDevices, StartMicrovmError> {
    let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(StartMicrovmError::EventFd)?;
    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let mut registry = DeviceRegistry::default();
    legacy::attach(
        vm.fd(),
        &mut io_bus,
        &mut registry,
        serial_out,
        &stop_evt,
        saved,
    )?;
    if let Some(serial) = registry.serial() {
        metrics.add_source(Arc::new(legacy::UartMetrics(serial.clone())));
    }
    if let Some(i8042) = registry.i8042() {
        metrics.add_source(Arc::new(legacy::I8042Metrics(i8042.clone())));
    }
    if let Some(start) = boot_timer {
        registry.attach_boot_timer(&mut mmio_bus, start)?;
    }
    for drive in guest_order(&config.drives) {
        let device = block::create(drive)?;
        let stats = lock(&device).stats();
        metrics.add_source(Arc::new(block::BlockMetrics::new(&drive.drive_id, stats)));
        let handle = DeviceHandle::Block {
            device,
            config: drive.clone(),
        };
        let slot = registry.attach_virtio(vm.fd(), &mut mmio_bus, mem, &drive.drive_id, handle)?;
        log::info!(
            "Attached drive '{}' at {:#x}, IRQ {}",
            drive.drive_id,
            slot.addr,
            slot.irq
        );
    }
    for iface in &config.network_interfaces {
        let device = net::create(iface)?;
        let stats = lock(&device).stats();
        metrics.add_source(Arc::new(net::NetMetrics::new(&iface.iface_id, stats)));
        let handle = DeviceHandle::Net(device);
        let slot = registry.attach_virtio(vm.fd(), &mut mmio_bus, mem, &iface.iface_id, handle)?;
        log::info!(
            "Attached interface '{}' on tap '{}' at {:#x}, IRQ {}",
            iface.iface_id,
            iface.host_dev_name,
            slot.addr,
            slot.irq
        );
    }
    metrics.add_source(Arc::new(mmio::InterruptMetrics(
        registry.virtio_interrupts(),
    )));
    Ok(AttachedDevices {
        io_bus: Arc::new(io_bus),
        mmio_bus: Arc::new(mmio_bus),
        registry,
        stop_evt,
    })
}

/// Boot only: the kernel command line (the boot args and the devices' entries), the MP table,
/// and the zero page or PVH start info.
fn write_boot_tables(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    config: &VmConfig,
    kernel: &LoadedKernel,
    initrd: Option<(GuestAddress, u64)>,
    registry: &DeviceRegistry,
) -> Result<(), StartMicrovmError> {
    let device_args: Vec<String> = root_cmdline(&config.drives)
        .into_iter()
        .chain(registry.cmdline_args())
        .collect();
    let cmdline = loader::build_cmdline(config.boot_source.boot_args(), &device_args)?;
    let cmdline_len = loader::write_cmdline(mem, &cmdline)?;
    log::info!(
        "Kernel command line: {}",
        cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );

    setup_mptable(mem, config.machine.vcpu_count)?;
    write_boot_params(
        mem,
        mem_size,
        kernel.entry.protocol,
        &BootData {
            setup_header: kernel.setup_header,
            cmdline_len,
            initrd,
        },
    )?;
    Ok(())
}

/// How new vCPUs get their first state.
#[derive(Clone, Copy)]
enum VcpuSetup<'a> {
    /// Configured to enter the kernel at the entry point, under the CPU template.
    Boot(EntryPoint, &'a CustomCpuTemplate),
    /// Each in its saved state, by index.
    Restore(&'a [VcpuState]),
}

/// Creates the vCPUs on the devices' buses and sets them up as `setup` says.
fn create_vcpus(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    machine: &MachineConfig,
    setup: VcpuSetup,
    devices: &AttachedDevices,
    metrics: &Metrics,
) -> Result<Vec<Vcpu>, StartMicrovmError> {
    if let VcpuSetup::Restore(states) = setup {
        if states.len() != usize::from(machine.vcpu_count) {
            return Err(StartMicrovmError::SavedVcpus {
                saved: states.len(),
                configured: machine.vcpu_count,
            });
        }
    }
    install_kick_handler()?;
    let supported_cpuid = vm
        .kvm()
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmError::Ioctl {
            what: "get the supported CPUID",
            source,
        })?;
    let msr_indices: Arc<[u32]> = vm
        .kvm()
        .get_msr_index_list()
        .map_err(|source| VmError::Ioctl {
            what: "get the MSR index list",
            source,
        })?
        .as_slice()
        .into();
    let exits = Arc::new(VcpuExitCounters::default());
    metrics.add_source(exits.clone());
    let mut vcpus = Vec::with_capacity(usize::from(machine.vcpu_count));
    for index in 0..machine.vcpu_count {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Ioctl {
                what: "create the vCPU",
                index,
                source,
            })?;
        let stop = devices
            .stop_evt
            .try_clone()
            .map_err(StartMicrovmError::EventFd)?;
        let mut vcpu = Vcpu::new(
            fd,
            index,
            (devices.io_bus.clone(), devices.mmio_bus.clone()),
            stop,
            exits.clone(),
            msr_indices.clone(),
        );
        match setup {
            VcpuSetup::Boot(entry, template) => {
                let config = VcpuConfig {
                    supported_cpuid: &supported_cpuid,
                    count: machine.vcpu_count,
                    smt: machine.smt,
                    entry,
                    template,
                };
                vcpu.configure(mem, &config)?;
            }
            VcpuSetup::Restore(states) => {
                let state =
                    states
                        .get(usize::from(index))
                        .ok_or(StartMicrovmError::SavedVcpus {
                            saved: states.len(),
                            configured: machine.vcpu_count,
                        })?;
                check_cpuid_offered(&state.cpuid, &supported_cpuid)?;
                vcpu.restore_state(state)?;
            }
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}
