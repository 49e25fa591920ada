//! The running VM: its vCPU threads and the VMM thread's event loop, which waits for the VM to
//! stop (a guest reboot or shutdown, or a vCPU error) and serves device events meanwhile.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::BuildError;
use crate::console::ConsoleInput;
use crate::device_manager::legacy::LegacyDevices;
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuEvent, VcpuHandle, VcpuResponse, VmStop};
use crate::vstate::vm::Vm;

/// Errors while the VM runs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A vCPU thread failed to start or answer.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A vCPU did not start running.
    #[error("vCPU {index} did not start: {response:?}")]
    Start {
        index: usize,
        response: VcpuResponse,
    },
    /// The event loop failed.
    #[error("The event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
}

/// A device (or other event source) served by the VMM thread's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Notices the VM stop eventfd.
#[derive(Debug)]
struct StopWatcher {
    evt: EventFd,
    stopped: bool,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The count does not matter: one or more writers asked for the stop.
        let _ = self.evt.read();
        self.stopped = true;
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("Failed to watch the VM stop eventfd: {e:?}");
        }
    }
}

/// A built VM, ready to run.
pub struct Vmm {
    // Field order is drop order: vCPU threads end before the VM and memory they use go away.
    vcpus: Vec<Vcpu>,
    event_manager: EventManager<Subscriber>,
    stop: Arc<Mutex<StopWatcher>>,
    _mem: GuestMemoryMmap,
    _vm: Vm,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Vmm {
    pub(crate) fn new(
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        stop_evt: EventFd,
        console: Option<LegacyDevices>,
        devices: Vec<Subscriber>,
    ) -> Result<Self, BuildError> {
        let mut event_manager =
            EventManager::<Subscriber>::new().map_err(BuildError::EventManager)?;
        let stop = Arc::new(Mutex::new(StopWatcher {
            evt: stop_evt,
            stopped: false,
        }));
        event_manager.add_subscriber(stop.clone());
        if let Some(legacy) = console {
            let input = ConsoleInput::new(legacy.serial, legacy.serial_drained);
            event_manager.add_subscriber(Arc::new(Mutex::new(input)));
        }
        for device in devices {
            event_manager.add_subscriber(device);
        }
        Ok(Self {
            vcpus,
            event_manager,
            stop,
            _mem: mem,
            _vm: vm,
        })
    }

    fn stopped(&self) -> bool {
        self.stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stopped
    }

    /// Starts the vCPUs and runs until the VM stops; returns why it stopped.
    pub fn run(mut self) -> Result<VmStop, RuntimeError> {
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus.drain(..) {
            handles.push(vcpu.start()?);
        }
        for (index, handle) in handles.iter().enumerate() {
            match handle.request(VcpuEvent::Resume)? {
                VcpuResponse::Resumed => {}
                response => return Err(RuntimeError::Start { index, response }),
            }
        }
        log::info!("Started {} vCPUs", handles.len());
        while !self.stopped() {
            self.event_manager.run().map_err(RuntimeError::EventLoop)?;
        }
        log_cpu_usage();
        // An error on any vCPU outranks a guest-initiated stop seen on another one.
        let mut stop = VmStop::Guest("i8042 reset");
        for handle in &mut handles {
            handle.finish();
            match handle.stop_reason() {
                Some(error @ VmStop::Error(_)) => stop = error,
                Some(guest @ VmStop::Guest(_)) if matches!(stop, VmStop::Guest(_)) => stop = guest,
                _ => {}
            }
        }
        Ok(stop)
    }
}

/// Logs the CPU time of the VMM thread and of the vCPU threads (which includes guest time).
fn log_cpu_usage() {
    let threads = crate::cpu_usage::threads();
    let (vcpus, others): (Vec<_>, Vec<_>) = threads
        .iter()
        .partition(|t| t.name.starts_with("kiln_vcpu"));
    let total = |ts: &[&crate::cpu_usage::ThreadCpu]| {
        ts.iter()
            .map(|t| t.cpu)
            .sum::<std::time::Duration>()
            .as_millis()
    };
    log::info!(
        "CPU time: VMM threads {} ms, vCPU threads {} ms",
        total(&others),
        total(&vcpus)
    );
}
