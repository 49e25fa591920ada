//! vCPUs: set-up before the first instruction, and the thread that runs each one.
//!
//! Each vCPU thread is an explicit state machine driven by the VMM thread:
//!
//! ```text
//!            Resume                   Pause
//!   Paused ----------> Running -----------------> Paused
//!     |                   |  guest reset/shutdown
//!     | Finish            |  or a KVM error: report, then wait
//!     v                   v
//!   Exited <---------- Finish
//! ```
//!
//! The VMM sends an event on the vCPU's channel and then kicks the thread with a signal, which
//! makes a blocked `KVM_RUN` return `EINTR`. A kick can land just before the thread enters
//! `KVM_RUN`, so the VMM repeats it until the thread acknowledges.
//!
//! A vCPU thread installs the vCPU seccomp filter before anything else (see
//! [`crate::seccomp`]). The kick's handler is installed for the whole process while the VM is
//! built, before any filter, so taking the signal needs only `rt_sigreturn` from the filter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use devices::latency::LatencyAgg;
use devices::Bus;
use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::cpuid::{self, CpuidError, VcpuTopology};
use crate::arch::x86_64::interrupts::set_lint;
use crate::arch::x86_64::msr::{boot_msrs, MsrError};
use crate::arch::x86_64::regs::{self, EntryPoint, RegsError};
use crate::cpu_template::{apply_cpuid, apply_msrs, msr_addresses, ApplyError, CustomCpuTemplate};
use crate::metrics::{Counter, MetricSource};
use crate::seccomp::{SeccompError, SeccompFilters, ThreadKind};
use crate::vstate::vcpu_state::{VcpuState, VcpuStateError, VcpuStateIo};

/// The kinds of vCPU exit the metrics count.
const EXIT_KINDS: [&str; 10] = [
    "exit_io_in",
    "exit_io_out",
    "exit_mmio_read",
    "exit_mmio_write",
    "exit_shutdown",
    "exit_system_event",
    "exit_interrupted",
    "exit_other",
    // Firecracker's `vcpu.failures`: a vCPU that stopped on an error (a failed entry, an
    // internal error, an unexpected exit, a failed KVM_RUN).
    "failures",
    // Firecracker's `vcpu.kvmclock_ctrl_fails`: KVM_KVMCLOCK_CTRL failed on a pause.
    "kvmclock_ctrl_fails",
];
/// The index of `failures` in [`EXIT_KINDS`].
const FAILURES: usize = 8;
/// The index of `kvmclock_ctrl_fails` in [`EXIT_KINDS`].
const KVMCLOCK_CTRL_FAILS: usize = 9;

/// The exits whose handling is timed, each with its latency aggregate, in the order of the
/// first [`EXIT_KINDS`] (Firecracker's `vcpu.exit_*_agg`).
const TIMED_EXITS: [&str; 4] = [
    "exit_io_in_agg",
    "exit_io_out_agg",
    "exit_mmio_read_agg",
    "exit_mmio_write_agg",
];

/// vCPU exits by kind, and vCPU failures, summed over all vCPUs (the `vcpu` metrics group),
/// and how long the VMM took to handle the port and MMIO exits.
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    exits: [AtomicU64; EXIT_KINDS.len()],
    handling: [LatencyAgg; TIMED_EXITS.len()],
}

impl VcpuExitCounters {
    fn count(&self, kind: usize) {
        if let Some(counter) = self.exits.get(kind) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an exit of `kind` (one of the [`TIMED_EXITS`]) and times `handle`, its
    /// handling.
    fn timed<T>(&self, kind: usize, handle: impl FnOnce() -> T) -> T {
        self.count(kind);
        match self.handling.get(kind) {
            Some(agg) => agg.time(handle),
            None => handle(),
        }
    }

    fn aggregates(&self) -> impl Iterator<Item = (&'static str, &LatencyAgg)> + '_ {
        TIMED_EXITS.into_iter().zip(&self.handling)
    }
}

impl MetricSource for VcpuExitCounters {
    fn counters(&self) -> Vec<Counter> {
        let totals = self.exits.iter().map(|value| value.load(Ordering::Relaxed));
        let mut counters = Counter::group("vcpu", EXIT_KINDS.iter().copied().zip(totals));
        counters.extend(Counter::latency_sums("vcpu", self.aggregates()));
        counters
    }

    fn gauges(&self) -> Vec<Counter> {
        Counter::latency_extremes("vcpu", self.aggregates())
    }
}

/// Errors setting up or running vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl on a vCPU failed.
    #[error("Failed to {what} for vCPU {index}: {source}")]
    Ioctl {
        what: &'static str,
        index: u8,
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set {set} of {wanted} boot MSRs on vCPU {index}.")]
    PartialMsrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    /// CPUID normalisation failed.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// The CPU template names a CPUID entry or MSR KVM does not have.
    #[error(transparent)]
    Template(#[from] ApplyError),
    /// KVM did not give the value of an MSR the CPU template changes (Firecracker's message).
    #[error("Failed to get KVM vcpu msr: {0:#x}")]
    TemplateMsr(u32),
    /// The boot MSR list could not be built.
    #[error(transparent)]
    Msrs(#[from] MsrError),
    /// Boot registers or tables could not be written.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// The kick signal handler could not be installed.
    #[error("Failed to install the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),
    /// The vCPU thread could not be spawned.
    #[error("Failed to spawn the thread for vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    /// The vCPU thread could not install its seccomp filter.
    #[error("vCPU {index}: {source}")]
    Seccomp { index: u8, source: SeccompError },
    /// The vCPU thread is gone.
    #[error("vCPU {0} stopped responding.")]
    Gone(u8),
}

/// What the VMM asks of a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Start or continue running guest code.
    Resume,
    /// Stop running guest code until resumed.
    Pause,
    /// Save the vCPU's state; only while paused.
    SaveState,
    /// Leave the thread.
    Finish,
}

/// What a vCPU thread tells the VMM.
#[derive(Debug)]
pub enum VcpuResponse {
    /// The vCPU now runs guest code.
    Resumed,
    /// The vCPU no longer runs guest code.
    Paused,
    /// The guest stopped the VM, or running it failed; the thread waits for `Finish`.
    Stopped(VmStop),
    /// The vCPU's state, or why it could not be saved.
    Saved(Box<Result<VcpuState, VcpuStateError>>),
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStop {
    /// The guest rebooted or shut down: a normal end.
    Guest(&'static str),
    /// Running the vCPU failed.
    Error(String),
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler. The handler does nothing: its only job is to make `KVM_RUN`
/// return `EINTR` instead of the signal's default action killing the process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::SignalHandler)
}

/// A vCPU before its thread starts.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    /// Written when the VM must stop; the VMM's event loop watches it.
    stop_evt: EventFd,
    exits: Arc<VcpuExitCounters>,
    /// The MSRs KVM lists, which a saved state holds (those it can read).
    msr_indices: Arc<[u32]>,
    /// The CPUID Kiln gave the vCPU. A saved state holds this rather than what KVM reports
    /// back: it is configuration, and the KVM bits that change at run time (OSXSAVE, the APIC
    /// bit) follow the restored registers anyway.
    cpuid: Vec<kvm_cpuid_entry2>,
}

/// Per-VM inputs for configuring each vCPU.
#[derive(Debug)]
pub struct VcpuConfig<'a> {
    /// KVM's supported CPUID, before per-vCPU normalisation.
    pub supported_cpuid: &'a CpuId,
    /// Number of vCPUs.
    pub count: u8,
    /// Whether vCPUs come as hyperthread pairs.
    pub smt: bool,
    /// Where the kernel starts.
    pub entry: EntryPoint,
    /// The CPU template's modifiers (empty for none).
    pub template: &'a CustomCpuTemplate,
}

impl Vcpu {
    /// Wraps a created vCPU with the buses it forwards exits to; `msr_indices` are the MSRs
    /// KVM lists, for saving its state.
    pub fn new(
        fd: VcpuFd,
        index: u8,
        (io_bus, mmio_bus): (Arc<Bus>, Arc<Bus>),
        stop_evt: EventFd,
        exits: Arc<VcpuExitCounters>,
        msr_indices: Arc<[u32]>,
    ) -> Self {
        Self {
            fd,
            index,
            io_bus,
            mmio_bus,
            stop_evt,
            exits,
            msr_indices,
            cpuid: Vec::new(),
        }
    }

    fn state_io(&self) -> VcpuStateIo<'_> {
        VcpuStateIo {
            fd: &self.fd,
            index: self.index,
        }
    }

    /// The state, for a snapshot (see [`VcpuStateIo::save`]).
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
        self.state_io().save(&self.cpuid, msr_indices)
    }

    /// Puts the new vCPU in `state`, before its thread starts.
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuStateError> {
        self.state_io().restore(state)?;
        self.cpuid = state.cpuid.clone();
        Ok(())
    }

    /// Gives the vCPU `cpuid`.
    fn set_cpuid(&mut self, cpuid: CpuId) -> Result<(), kvm_ioctls::Error> {
        self.fd.set_cpuid2(&cpuid)?;
        self.cpuid = cpuid.as_slice().to_vec();
        Ok(())
    }

    fn ioctl(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError + '_ {
        move |source| VcpuError::Ioctl {
            what,
            index: self.index,
            source,
        }
    }

    /// Sets CPUID, MSRs, registers, FPU and LAPIC so the vCPU starts at the kernel's entry.
    ///
    /// The CPU template goes onto KVM's supported CPUID before the per-vCPU normalisation, as
    /// in Firecracker. Its MSRs are read once the CPUID is set, since KVM answers for the MSRs
    /// of the features the guest's CPUID has, then modified, and set with the boot MSRs.
    pub fn configure(&mut self, mem: &GuestMemoryMmap, cfg: &VcpuConfig) -> Result<(), VcpuError> {
        let mut cpuid = cfg.supported_cpuid.clone();
        apply_cpuid(&mut cpuid, cfg.template)?;
        let topo = VcpuTopology {
            index: self.index,
            count: cfg.count,
            smt: cfg.smt,
        };
        cpuid::normalize(&mut cpuid, topo)?;
        self.set_cpuid(cpuid).map_err(self.ioctl("set CPUID"))?;

        let mut templated = self.template_msrs(cfg.template)?;
        apply_msrs(&mut templated, cfg.template)?;
        let msrs = boot_msrs(templated)?;
        let set = self.fd.set_msrs(&msrs).map_err(self.ioctl("set MSRs"))?;
        let wanted = msrs.as_slice().len();
        if set != wanted {
            return Err(VcpuError::PartialMsrs {
                index: self.index,
                set,
                wanted,
            });
        }

        self.fd
            .set_regs(&regs::boot_regs(cfg.entry))
            .map_err(self.ioctl("set registers"))?;
        let mut sregs = self.fd.get_sregs().map_err(self.ioctl("get sregs"))?;
        regs::setup_sregs(mem, cfg.entry.protocol, &mut sregs)?;
        self.fd.set_sregs(&sregs).map_err(self.ioctl("set sregs"))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.ioctl("set the FPU"))?;

        let mut lapic = self.fd.get_lapic().map_err(self.ioctl("get the LAPIC"))?;
        set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.ioctl("set the LAPIC"))?;
        Ok(())
    }

    /// The current values of the MSRs `template` changes.
    fn template_msrs(&self, template: &CustomCpuTemplate) -> Result<BTreeMap<u32, u64>, VcpuError> {
        let addresses = msr_addresses(template);
        if addresses.is_empty() {
            return Ok(BTreeMap::new());
        }
        let entries: Vec<kvm_msr_entry> = addresses
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(MsrError::Fam)?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(self.ioctl("get the CPU template's MSRs"))?;
        // KVM stops at the first MSR it does not have.
        if let Some(missing) = addresses.get(read) {
            return Err(VcpuError::TemplateMsr(*missing));
        }
        Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect())
    }

    /// Starts the vCPU's thread, paused, and returns once the thread has installed its seccomp
    /// filter: from then on it runs nothing the filter does not allow.
    pub fn start(self, seccomp: Arc<SeccompFilters>) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let (event_tx, event_rx) = channel();
        let (response_tx, response_rx) = channel();
        let (confined_tx, confined_rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("kiln_vcpu{index}"))
            .spawn(move || {
                let confined = seccomp.apply(ThreadKind::Vcpu);
                let ok = confined.is_ok();
                // The VMM waits for this answer; if it is gone, so is the reason to run.
                if confined_tx.send(confined).is_ok() && ok {
                    VcpuThread::new(self, event_rx, response_tx).run()
                } else {
                    None
                }
            })
            .map_err(|source| VcpuError::Spawn { index, source })?;
        match confined_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                // The thread has returned, or is about to.
                let _ = thread.join();
                return Err(VcpuError::Seccomp { index, source });
            }
            Err(_) => return Err(VcpuError::Gone(index)),
        }
        Ok(VcpuHandle {
            index,
            thread: Some(thread),
            events: event_tx,
            responses: response_rx,
        })
    }
}

/// What one `KVM_RUN` came back with.
enum RunOutcome {
    /// Keep running.
    Continue,
    /// A signal interrupted the run: look at the event channel.
    Interrupted,
    /// The VM must stop.
    Stop(VmStop),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Paused,
    Running,
    /// Stopped by the guest or an error; only `Finish` is left to do.
    Stopped,
    Exited,
}

struct VcpuThread {
    vcpu: Vcpu,
    events: Receiver<VcpuEvent>,
    responses: Sender<VcpuResponse>,
}

impl VcpuThread {
    fn new(vcpu: Vcpu, events: Receiver<VcpuEvent>, responses: Sender<VcpuResponse>) -> Self {
        Self {
            vcpu,
            events,
            responses,
        }
    }

    fn respond(&self, response: VcpuResponse) {
        // The VMM dropping its receiver means it is tearing down; nothing left to tell it.
        let _ = self.responses.send(response);
    }

    /// The state an event leads to from a state where guest code is not running.
    fn on_event(&self, event: VcpuEvent, idle: State) -> State {
        match event {
            VcpuEvent::Resume if idle == State::Paused => {
                self.respond(VcpuResponse::Resumed);
                State::Running
            }
            VcpuEvent::Pause if idle == State::Paused => {
                self.respond(VcpuResponse::Paused);
                State::Paused
            }
            VcpuEvent::SaveState => {
                let saved = if idle == State::Paused {
                    self.vcpu.save_state(&self.vcpu.msr_indices)
                } else {
                    Err(VcpuStateError::NotPaused(self.vcpu.index))
                };
                self.respond(VcpuResponse::Saved(Box::new(saved)));
                idle
            }
            VcpuEvent::Finish => State::Exited,
            // A stopped vCPU cannot resume; it only waits to finish.
            VcpuEvent::Resume | VcpuEvent::Pause => idle,
        }
    }

    /// Runs the state machine until told to finish; returns the thread's CPU time.
    fn run(mut self) -> Option<Duration> {
        let mut state = State::Paused;
        loop {
            state = match state {
                State::Paused | State::Stopped => match self.events.recv() {
                    Ok(event) => self.on_event(event, state),
                    Err(_) => State::Exited,
                },
                State::Running => self.running(),
                State::Exited => return crate::cpu_usage::this_thread(),
            };
        }
    }

    fn running(&mut self) -> State {
        match self.events.try_recv() {
            Ok(VcpuEvent::Pause) => {
                // Tell a kvm-clock guest that the host stopped it, so its watchdogs do not
                // take the pause for a soft lockup. A guest without kvm-clock makes this fail.
                if let Err(e) = self.vcpu.fd.kvmclock_ctrl() {
                    self.vcpu.exits.count(KVMCLOCK_CTRL_FAILS);
                    log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", self.vcpu.index);
                }
                self.respond(VcpuResponse::Paused);
                return State::Paused;
            }
            Ok(VcpuEvent::Finish) | Err(TryRecvError::Disconnected) => return State::Exited,
            Ok(VcpuEvent::Resume) => self.respond(VcpuResponse::Resumed),
            Ok(VcpuEvent::SaveState) => {
                let refused = VcpuStateError::NotPaused(self.vcpu.index);
                self.respond(VcpuResponse::Saved(Box::new(Err(refused))));
            }
            Err(TryRecvError::Empty) => {}
        }
        match self.run_once() {
            RunOutcome::Continue | RunOutcome::Interrupted => State::Running,
            RunOutcome::Stop(stop) => {
                self.respond(VcpuResponse::Stopped(stop));
                if let Err(e) = self.vcpu.stop_evt.write(1) {
                    log::error!("vCPU {} failed to signal the VM stop: {e}", self.vcpu.index);
                }
                State::Stopped
            }
        }
    }

    fn run_once(&mut self) -> RunOutcome {
        let index = self.vcpu.index;
        let exits = &self.vcpu.exits;
        match self.vcpu.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                exits.timed(0, || {
                    if !self.vcpu.io_bus.read(u64::from(port), data) {
                        // Unclaimed ports read as all ones, as on real hardware.
                        data.fill(0xff);
                    }
                });
                RunOutcome::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                exits.timed(1, || self.vcpu.io_bus.write(u64::from(port), data));
                RunOutcome::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                exits.timed(2, || {
                    if !self.vcpu.mmio_bus.read(addr, data) {
                        data.fill(0);
                    }
                });
                RunOutcome::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                exits.timed(3, || self.vcpu.mmio_bus.write(addr, data));
                RunOutcome::Continue
            }
            Ok(VcpuExit::Hlt) => {
                exits.count(7);
                RunOutcome::Stop(VmStop::Guest("halted"))
            }
            Ok(VcpuExit::Shutdown) => {
                exits.count(4);
                RunOutcome::Stop(VmStop::Guest("triple fault (KVM_EXIT_SHUTDOWN)"))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                exits.count(5);
                RunOutcome::Stop(VmStop::Guest(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => "system event: shutdown",
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => "system event: reset",
                    _ => "system event",
                }))
            }
            Ok(VcpuExit::Intr) => {
                exits.count(6);
                RunOutcome::Interrupted
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                exits.count(FAILURES);
                RunOutcome::Stop(VmStop::Error(format!(
                    "vCPU {index} failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                )))
            }
            Ok(VcpuExit::InternalError) => {
                exits.count(FAILURES);
                let rip = self.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                RunOutcome::Stop(VmStop::Error(format!(
                    "vCPU {index} stopped with KVM_EXIT_INTERNAL_ERROR at rip {rip:#x}"
                )))
            }
            Ok(other) => {
                exits.count(7);
                exits.count(FAILURES);
                RunOutcome::Stop(VmStop::Error(format!(
                    "vCPU {index} got an unexpected exit: {other:?}"
                )))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                exits.count(6);
                RunOutcome::Interrupted
            }
            Err(e) => {
                exits.count(FAILURES);
                RunOutcome::Stop(VmStop::Error(format!("vCPU {index} KVM_RUN failed: {e}")))
            }
        }
    }
}

/// The VMM's end of a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    /// Returns the thread's CPU time when it ends.
    thread: Option<JoinHandle<Option<Duration>>>,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
}

/// How often an unacknowledged kick is repeated.
const KICK_RETRY: Duration = Duration::from_millis(5);

impl VcpuHandle {
    fn kick(&self) {
        if let Some(thread) = &self.thread {
            if let Err(e) = thread.kill(kick_signal()) {
                log::warn!("Failed to kick vCPU {}: {e}", self.index);
            }
        }
    }

    /// Sends `event` and waits for the answer, kicking the thread until it comes. A vCPU that
    /// stopped the VM answers with `Stopped`, which is returned as is.
    pub fn request(&self, event: VcpuEvent) -> Result<VcpuResponse, VcpuError> {
        self.events
            .send(event)
            .map_err(|_| VcpuError::Gone(self.index))?;
        loop {
            self.kick();
            match self.responses.recv_timeout(KICK_RETRY) {
                Ok(response) => return Ok(response),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(VcpuError::Gone(self.index)),
            }
        }
    }

    /// Why this vCPU stopped the VM, if it did.
    pub fn stop_reason(&self) -> Option<VmStop> {
        self.responses.try_iter().find_map(|r| match r {
            VcpuResponse::Stopped(stop) => Some(stop),
            _ => None,
        })
    }

    /// Ends the thread and waits for it; returns the CPU time it used (guest time included),
    /// the first time only.
    pub fn finish(&mut self) -> Option<Duration> {
        // A thread that already left has dropped its receiver; that is fine.
        let _ = self.events.send(VcpuEvent::Finish);
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() {
                if let Err(e) = thread.kill(kick_signal()) {
                    log::warn!("Failed to kick vCPU {}: {e}", self.index);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            match thread.join() {
                Ok(cpu) => return cpu,
                Err(_) => log::error!("vCPU {} thread panicked", self.index),
            }
        }
        None
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use devices::GuestMemoryMmap;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::arch::x86_64::regs::{BootProtocol, EntryPoint};
    use crate::snapshot::file;
    use crate::vstate::vcpu_state::check_cpuid_offered;
    use crate::vstate::vcpu_state::tests::msr;
    use crate::vstate::vm::Vm;

    /// A configured vCPU 0 of a new VM, as boot leaves it, with the VM and its memory.
    fn booted_vcpu() -> (Vm, GuestMemoryMmap, Vcpu, CpuId) {
        let template = CustomCpuTemplate::default();
        let vm = Vm::new(&template).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        vm.register_memory(&mem, false).unwrap();
        let supported = vm.kvm().get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let msrs: Arc<[u32]> = vm.kvm().get_msr_index_list().unwrap().as_slice().into();
        let buses = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let mut vcpu = Vcpu::new(
            vm.fd().create_vcpu(0).unwrap(),
            0,
            buses,
            EventFd::new(0).unwrap(),
            Arc::new(VcpuExitCounters::default()),
            msrs,
        );
        let config = VcpuConfig {
            supported_cpuid: &supported,
            count: 1,
            smt: false,
            entry: EntryPoint {
                addr: GuestAddress(0x100_0000),
                protocol: BootProtocol::Linux64,
            },
            template: &template,
        };
        vcpu.configure(&mem, &config).unwrap();
        (vm, mem, vcpu, supported)
    }

    #[test]
    fn a_vcpus_state_survives_the_file_and_a_new_vm() {
        let (vm, _mem, vcpu, supported) = booted_vcpu();
        let indices = vm.kvm().get_msr_index_list().unwrap();
        let saved = vcpu.save_state(indices.as_slice()).unwrap();
        assert!(!saved.msrs.is_empty() && !saved.cpuid.is_empty());
        // What Kiln gives a vCPU is what this host's KVM offers.
        check_cpuid_offered(&saved.cpuid, &supported).unwrap();

        let bytes = file::encode(&saved).unwrap();
        let decoded: VcpuState = file::decode(&bytes).unwrap();
        let (new_vm, _new_mem, mut fresh, _) = booted_vcpu();
        let mut regs = decoded.regs;
        regs.rax = 0x1234_5678;
        let moved = VcpuState { regs, ..decoded };
        fresh.restore_state(&moved).unwrap();
        let restored = fresh.save_state(new_vm.kvm().get_msr_index_list().unwrap().as_slice());
        let restored = restored.unwrap();
        assert_eq!(restored.regs.rax, 0x1234_5678);
        assert_eq!(restored.regs.rip, saved.regs.rip);
        assert_eq!(restored.sregs.cr3, saved.sregs.cr3);
        assert_eq!(restored.sregs.efer, saved.sregs.efer);
        assert_eq!(restored.xcrs.nr_xcrs, saved.xcrs.nr_xcrs);
        assert_eq!(restored.lapic.regs[..0x400], saved.lapic.regs[..0x400]);
        let value = |state: &VcpuState, index: u32| {
            state.msrs.iter().find(|m| m.index == index).map(|m| m.data)
        };
        // IA32_SYSENTER_CS and EFER come back as saved.
        for index in [0x174, 0xc000_0080] {
            assert_eq!(value(&restored, index), value(&saved, index), "{index:#x}");
        }
    }

    #[test]
    fn an_msr_this_kvm_refuses_is_named() {
        let (vm, _mem, vcpu, _) = booted_vcpu();
        let indices = vm.kvm().get_msr_index_list().unwrap();
        let mut saved = vcpu.save_state(indices.as_slice()).unwrap();
        // An MSR index in no range any CPU defines.
        saved.msrs.push(msr(0x4fff_0000, 1));
        let (_vm, _mem, mut fresh, _) = booted_vcpu();
        let err = fresh.restore_state(&saved).unwrap_err();
        assert_eq!(
            err.to_string(),
            "This host's KVM does not take MSR 0x4fff0000, which vCPU 0's saved state holds."
        );
    }

    fn by_name(counters: Vec<Counter>) -> BTreeMap<String, u64> {
        counters.into_iter().map(|c| (c.name, c.total)).collect()
    }

    #[test]
    fn timed_exits_are_counted_and_their_handling_timed() {
        let exits = VcpuExitCounters::default();
        exits.timed(1, || std::thread::sleep(Duration::from_millis(2)));
        exits.timed(1, || {});
        let counted = by_name(exits.counters());
        assert_eq!(counted["exit_io_out"], 2);
        assert!(counted["exit_io_out_agg.sum_us"] >= 2000, "{counted:?}");
        let stored = by_name(exits.gauges());
        assert!(stored["exit_io_out_agg.max_us"] >= 2000, "{stored:?}");
        assert!(stored["exit_io_out_agg.min_us"] < 2000, "{stored:?}");
        assert_eq!(stored["exit_io_in_agg.max_us"], 0);
    }
}
