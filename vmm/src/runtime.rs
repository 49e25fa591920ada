//! The running VM: its vCPU threads, the typed methods the API's actions come down to
//! ([`RunningVm`]: pause, resume, Ctrl-Alt-Del, a disk swap), and the VMM thread's event loop.
//! The loop serves device events, the console and the metrics timer, and hands API requests to
//! the [`ApiHandler`] it is given, until the VM stops (a guest reboot or shutdown, or a vCPU
//! error). It knows neither the builder nor the controller.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::block::Block;
use devices::GuestMemoryMmap;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::bounded_lock::lock;
use crate::config::DriveConfig;
use crate::console::ConsoleInput;
use crate::device_manager::block;
use crate::device_manager::mmio::SharedTransport;
use crate::device_manager::registry::{
    DeviceHandle, DeviceKind, DeviceRegistry, Subscriber, Transport,
};
use crate::metrics::{Counter, LastLatency, MetricSource, Metrics};
use crate::rpc::{
    ActionError, CreateSnapshotParams, InstanceState, SnapshotType, StartMicrovmError,
};
use crate::seccomp::{SeccompFilters, ThreadKind};
use crate::snapshot::state::MicrovmState;
use crate::snapshot::{file, memory};
use crate::vstate::vcpu::{Vcpu, VcpuEvent, VcpuHandle, VcpuResponse, VmStop};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::Vm;

/// How often the metrics file gets a line, as in Firecracker.
const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// Errors while the VM runs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The event loop failed.
    #[error("The event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// The API's eventfd could not be watched.
    #[error("Failed to watch the API channel: {0}")]
    ApiEventFd(std::io::Error),
}

/// How long the VMM thread took for the last pause and resume, as Firecracker's
/// `latencies_us.vmm_pause_vm` and `vmm_resume_vm`.
#[derive(Debug, Default)]
struct VmmLatencies {
    pause: LastLatency,
    resume: LastLatency,
    full_create_snapshot: LastLatency,
    diff_create_snapshot: LastLatency,
    load_snapshot: LastLatency,
}

impl MetricSource for VmmLatencies {
    fn counters(&self) -> Vec<Counter> {
        Vec::new()
    }

    fn gauges(&self) -> Vec<Counter> {
        Counter::group(
            "latencies_us",
            [
                ("vmm_pause_vm", self.pause.us()),
                ("vmm_resume_vm", self.resume.us()),
                ("vmm_full_create_snapshot", self.full_create_snapshot.us()),
                ("vmm_diff_create_snapshot", self.diff_create_snapshot.us()),
                ("vmm_load_snapshot", self.load_snapshot.us()),
            ],
        )
    }
}

/// Wakes the loop for an eventfd and remembers that it fired: the VM stop, or an API request.
#[derive(Debug)]
struct Flag {
    evt: EventFd,
    raised: bool,
}

impl MutEventSubscriber for Flag {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The count does not matter: one or more writers raised the flag.
        let _ = self.evt.read();
        self.raised = true;
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("Failed to watch an eventfd in the event loop: {e:?}");
        }
    }
}

/// Writes a metrics line every [`METRICS_PERIOD`].
struct MetricsTimer {
    timer: TimerFd,
    metrics: Arc<Metrics>,
}

impl MutEventSubscriber for MetricsTimer {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        if let Err(e) = self.metrics.flush() {
            log::warn!("{e}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.timer.reset(METRICS_PERIOD, Some(METRICS_PERIOD)) {
            log::error!("Failed to arm the metrics timer: {e}");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("Failed to watch the metrics timer: {e:?}");
        }
    }
}

/// What the API can ask of a running VM, as typed methods; [`Vmm`] is the one implementation
/// outside tests. The controller dispatches API actions to them.
pub trait RunningVm {
    /// Running or paused.
    fn state(&self) -> InstanceState;
    /// Pauses every vCPU, and tells a kvm-clock guest.
    fn pause(&mut self) -> Result<(), ActionError>;
    /// Lets every vCPU run again.
    fn resume(&mut self) -> Result<(), ActionError>;
    /// Types Ctrl-Alt-Del on the i8042 keyboard.
    fn send_ctrl_alt_del(&mut self) -> Result<(), ActionError>;
    /// Swaps drive `drive_id`'s backing file for `path`, if given, and tells the driver its
    /// capacity may have changed; returns the drive's new configuration when it changed.
    fn patch_drive(
        &mut self,
        drive_id: &str,
        path: Option<PathBuf>,
    ) -> Result<Option<DriveConfig>, ActionError>;
    /// The drives' configurations as they run now (a snapshot moves frozen drives to overlays).
    fn drives(&self) -> Vec<DriveConfig>;
    /// Writes a snapshot of the paused VM: freezes its writable qcow2 drives, then writes its
    /// state, with `config` (the configuration in the config-file format, naming the frozen
    /// images), to the snapshot file, and its memory to the memory file.
    fn create_snapshot(
        &mut self,
        params: &CreateSnapshotParams,
        config: String,
    ) -> Result<(), ActionError>;
}

/// What serves the API while the event loop runs: the loop watches [`ApiHandler::wakeup`] and
/// calls [`ApiHandler::serve`] after each wake-up with the whole VM at hand.
pub trait ApiHandler {
    /// Written when requests are waiting.
    fn wakeup(&self) -> &EventFd;
    /// Answers the waiting requests.
    fn serve(&mut self, vm: &mut Vmm);
}

/// What the builder hands over to make a [`Vmm`].
pub(crate) struct VmmParts {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    /// The userfaultfd of memory a page-fault handler serves (a snapshot loaded with Uffd).
    pub uffd: Option<OwnedFd>,
    /// Whether KVM logs the pages the vCPUs dirty (`track_dirty_pages`), for Diff snapshots.
    pub dirty_tracking: bool,
    pub vcpus: Vec<Vcpu>,
    pub stop_evt: EventFd,
    pub console_input: bool,
    pub devices: DeviceRegistry,
    pub metrics: Arc<Metrics>,
    pub seccomp: Arc<SeccompFilters>,
}

/// A built VM.
pub struct Vmm {
    // Field order is drop order: vCPU threads end before the VM and memory they use go away.
    vcpus: Vec<Vcpu>,
    handles: Vec<VcpuHandle>,
    event_manager: EventManager<Subscriber>,
    stop: Arc<Mutex<Flag>>,
    paused: bool,
    latencies: Arc<VmmLatencies>,
    devices: DeviceRegistry,
    metrics: Arc<Metrics>,
    seccomp: Arc<SeccompFilters>,
    mem: GuestMemoryMmap,
    _uffd: Option<OwnedFd>,
    dirty_tracking: bool,
    vm: Vm,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &(self.vcpus.len() + self.handles.len()))
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    pub(crate) fn new(parts: VmmParts) -> Result<Self, StartMicrovmError> {
        let mut event_manager =
            EventManager::<Subscriber>::new().map_err(StartMicrovmError::EventManager)?;
        let stop = Arc::new(Mutex::new(Flag {
            evt: parts.stop_evt,
            raised: false,
        }));
        event_manager.add_subscriber(stop.clone());
        if let Some(serial) = parts.devices.serial().filter(|_| parts.console_input) {
            let drained = lock(serial)
                .drained_event()
                .try_clone()
                .map_err(StartMicrovmError::EventFd)?;
            let input = ConsoleInput::new(serial.clone(), drained);
            event_manager.add_subscriber(Arc::new(Mutex::new(input)));
        }
        for device in parts.devices.subscribers() {
            event_manager.add_subscriber(device);
        }
        let timer = TimerFd::new().map_err(|e| StartMicrovmError::EventFd(e.into()))?;
        event_manager.add_subscriber(Arc::new(Mutex::new(MetricsTimer {
            timer,
            metrics: parts.metrics.clone(),
        })));
        let latencies = Arc::new(VmmLatencies::default());
        parts.metrics.add_source(latencies.clone());
        Ok(Self {
            vcpus: parts.vcpus,
            handles: Vec::new(),
            event_manager,
            stop,
            paused: false,
            latencies,
            devices: parts.devices,
            metrics: parts.metrics,
            seccomp: parts.seccomp,
            mem: parts.mem,
            _uffd: parts.uffd,
            dirty_tracking: parts.dirty_tracking,
            vm: parts.vm,
        })
    }

    /// Starts the vCPU threads and lets them run guest code. Each vCPU thread, and then this
    /// thread, installs its seccomp filter before the first guest instruction runs; this
    /// thread's is there for good even when starting fails later.
    pub fn start(&mut self) -> Result<(), StartMicrovmError> {
        self.start_paused()?;
        self.paused = false;
        for (index, handle) in self.handles.iter().enumerate() {
            match handle.request(VcpuEvent::Resume)? {
                VcpuResponse::Resumed => {}
                response => return Err(StartMicrovmError::VcpuStart { index, response }),
            }
        }
        log::info!("Started {} vCPUs", self.handles.len());
        Ok(())
    }

    /// Starts the vCPU threads, paused (a snapshot loaded without `resume_vm`), with the
    /// seccomp filters in place as [`Vmm::start`] puts them.
    pub fn start_paused(&mut self) -> Result<(), StartMicrovmError> {
        for vcpu in self.vcpus.drain(..) {
            self.handles.push(vcpu.start(self.seccomp.clone())?);
        }
        // After the vCPU threads exist, so that they are not under this filter as well.
        self.seccomp.apply(ThreadKind::Vmm)?;
        self.paused = true;
        Ok(())
    }

    /// Keeps how long loading the snapshot this VM came from took, as Firecracker's
    /// `latencies_us.vmm_load_snapshot`.
    pub fn record_load(&self, took: Duration) {
        self.latencies.load_snapshot.record(took);
    }

    /// Each vCPU's state, asked of its thread.
    fn save_vcpus(&self) -> Result<Vec<VcpuState>, ActionError> {
        self.handles
            .iter()
            .map(|handle| match handle.request(VcpuEvent::SaveState)? {
                VcpuResponse::Saved(saved) => Ok((*saved)?),
                other => Err(ActionError::VcpuAnswer(other)),
            })
            .collect()
    }

    /// [`Vmm::all_vcpus`] for a pause or a resume, keeping how long it took as the VMM's
    /// latency of that action.
    fn timed_all_vcpus(&self, event: VcpuEvent) -> Result<(), ActionError> {
        let start = Instant::now();
        let result = self.all_vcpus(event);
        let latency = if matches!(event, VcpuEvent::Pause) {
            &self.latencies.pause
        } else {
            &self.latencies.resume
        };
        latency.record(start.elapsed());
        result
    }

    /// Asks every vCPU to pause or resume and checks each does (or has stopped the VM, which
    /// the event loop notices next).
    fn all_vcpus(&self, event: VcpuEvent) -> Result<(), ActionError> {
        for handle in &self.handles {
            match (event, handle.request(event)) {
                (_, Ok(VcpuResponse::Stopped(_)))
                | (VcpuEvent::Pause, Ok(VcpuResponse::Paused))
                | (VcpuEvent::Resume, Ok(VcpuResponse::Resumed)) => {}
                (_, Ok(r)) => return Err(ActionError::VcpuAnswer(r)),
                (_, Err(e)) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Runs the event loop until the VM stops, handing API requests to `api` if given; returns
    /// why it stopped.
    pub fn run(mut self, mut api: Option<&mut dyn ApiHandler>) -> Result<VmStop, RuntimeError> {
        let inbox = match &api {
            Some(handler) => {
                let evt = handler
                    .wakeup()
                    .try_clone()
                    .map_err(RuntimeError::ApiEventFd)?;
                let flag = Arc::new(Mutex::new(Flag { evt, raised: false }));
                self.event_manager.add_subscriber(flag.clone());
                Some(flag)
            }
            None => None,
        };
        while !lock(&self.stop).raised {
            self.event_manager.run().map_err(RuntimeError::EventLoop)?;
            if let (Some(handler), Some(inbox)) = (api.as_mut(), &inbox) {
                lock(inbox).raised = false;
                handler.serve(&mut self);
            }
        }
        // An error on any vCPU outranks a guest-initiated stop seen on another one.
        let mut stop = VmStop::Guest("i8042 reset");
        let mut vcpu_cpu = std::time::Duration::ZERO;
        for handle in &mut self.handles {
            vcpu_cpu += handle.finish().unwrap_or_default();
            match handle.stop_reason() {
                Some(error @ VmStop::Error(_)) => stop = error,
                Some(guest @ VmStop::Guest(_)) if matches!(stop, VmStop::Guest(_)) => stop = guest,
                _ => {}
            }
        }
        log_cpu_usage(vcpu_cpu);
        // As Firecracker does, the last counts reach the metrics file before the process ends.
        if let Err(e) = self.metrics.flush() {
            log::warn!("{e}");
        }
        Ok(stop)
    }
}

impl RunningVm for Vmm {
    fn state(&self) -> InstanceState {
        if self.paused {
            InstanceState::Paused
        } else {
            InstanceState::Running
        }
    }

    fn pause(&mut self) -> Result<(), ActionError> {
        let result = self.timed_all_vcpus(VcpuEvent::Pause);
        self.paused = result.is_ok();
        log::info!("Paused the microVM");
        result
    }

    fn resume(&mut self) -> Result<(), ActionError> {
        let result = self.timed_all_vcpus(VcpuEvent::Resume);
        self.paused = result.is_err();
        log::info!("Resumed the microVM");
        result
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), ActionError> {
        let i8042 = self.devices.i8042().ok_or(ActionError::DeviceNotFound)?;
        lock(i8042)
            .trigger_ctrl_alt_del()
            .map_err(ActionError::CtrlAltDel)
    }

    fn create_snapshot(
        &mut self,
        params: &CreateSnapshotParams,
        config: String,
    ) -> Result<(), ActionError> {
        if !self.paused {
            return Err(ActionError::SnapshotNotPaused);
        }
        if params.snapshot_type == SnapshotType::Diff && !self.dirty_tracking {
            return Err(ActionError::DiffWithoutDirtyTracking);
        }
        let start = Instant::now();
        let drives = self.devices.freeze_drives(&params.snapshot_path)?;
        for id in &drives.not_covered {
            log::warn!(
                "Drive '{id}' is not covered by the snapshot: its image is not qcow2, so it \
                 cannot be frozen, and it goes on changing"
            );
        }
        // The devices first: nothing they do once saved may be missing from the VM's state.
        let devices = self.devices.save();
        let vm = self.vm.save_state()?;
        let vcpus = self.save_vcpus()?;
        let state = MicrovmState {
            config,
            memory: memory::regions(&self.mem),
            vm,
            vcpus,
            devices,
            frozen_drives: drives.frozen,
        };
        file::write(&params.snapshot_path, &state)?;
        let latency = match params.snapshot_type {
            SnapshotType::Full => {
                memory::write_full(&self.mem, &params.mem_file_path)?;
                if self.dirty_tracking {
                    // The next Diff snapshot holds what changes from here.
                    self.vm.take_dirty_pages(&self.mem)?;
                }
                &self.latencies.full_create_snapshot
            }
            SnapshotType::Diff => {
                let dirty = self.vm.take_dirty_pages(&self.mem)?;
                if let Err(e) = memory::write_dirty(&self.mem, &params.mem_file_path, &dirty) {
                    Vm::keep_dirty_pages(&self.mem, &dirty);
                    return Err(e.into());
                }
                &self.latencies.diff_create_snapshot
            }
        };
        latency.record(start.elapsed());
        log::info!(
            "Wrote a {:?} snapshot to {} and {}",
            params.snapshot_type,
            params.snapshot_path.display(),
            params.mem_file_path.display()
        );
        Ok(())
    }

    fn drives(&self) -> Vec<DriveConfig> {
        self.devices
            .iter()
            .filter_map(|d| match &d.handle {
                DeviceHandle::Block { config, .. } => Some(config.clone()),
                _ => None,
            })
            .collect()
    }

    fn patch_drive(
        &mut self,
        drive_id: &str,
        path: Option<PathBuf>,
    ) -> Result<Option<DriveConfig>, ActionError> {
        let not_found = || ActionError::DriveNotFound(drive_id.to_string());
        let drive = self
            .devices
            .get_mut(DeviceKind::Block, drive_id)
            .ok_or_else(not_found)?;
        let (
            DeviceHandle::Block {
                device,
                config: old,
            },
            Transport::Mmio { transport, .. },
        ) = (&mut drive.handle, &drive.transport)
        else {
            return Err(not_found());
        };
        let Some(path) = path else {
            return Ok(None);
        };
        let swapped = swap_image(device, transport, old, path);
        // Firecracker's block update_count and update_fails.
        lock(device).stats().count_update(swapped.is_ok());
        swapped.map(Some)
    }
}

/// Opens `path` as the drive's new image in place of `old`'s and tells the guest; on success
/// `old` is the new configuration.
fn swap_image(
    device: &Mutex<Block>,
    transport: &SharedTransport,
    old: &mut DriveConfig,
    path: PathBuf,
) -> Result<DriveConfig, ActionError> {
    let mut config = old.clone();
    config.path_on_host = Some(path);
    config.validate()?;
    if block::same_image(&config, old) {
        // The drive's own open holds the image's lock: close it before opening again.
        lock(device).reopen_disk(|| block::open_disk(&config), || block::open_disk(old))?;
    } else {
        let disk = block::open_disk(&config)?;
        lock(device).swap_disk(disk);
    }
    *old = config.clone();
    lock(transport)
        .notify_config_change()
        .map_err(ActionError::NotifyGuest)?;
    log::info!(
        "Drive '{}' now uses {:?}",
        config.drive_id,
        config.path_on_host
    );
    Ok(config)
}

/// Logs the CPU time of the vCPU threads (which includes guest time) and of the rest of the
/// process (the VMM, API and event-loop threads: device emulation and the API).
fn log_cpu_usage(vcpus: std::time::Duration) {
    let Some(process) = crate::cpu_usage::process() else {
        return;
    };
    log::info!(
        "CPU time: VMM threads {} ms, vCPU threads {} ms",
        process.saturating_sub(vcpus).as_millis(),
        vcpus.as_millis()
    );
}
