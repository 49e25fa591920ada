//! The VMM thread's side of the API: executes each action against the configuration before
//! boot, boots the VM on `InstanceStart`, and answers the actions that need no running VM.
//! Actions on the running VM (pause, Ctrl-Alt-Del, drive swap) are in [`crate::runtime`].

use std::sync::Arc;

use crate::builder::{build, HostOptions};
use crate::metrics::Metrics;
use crate::resources::VmResources;
use crate::rpc::{
    ActionError, ActionResult, ApiReceiver, InstanceInfo, InstanceState, StartMicrovmError,
    VmmAction, VmmData, FIRECRACKER_VERSION,
};
use crate::runtime::Vmm;

/// Errors that end the VMM thread's service of the API.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The API thread is gone before the VM started.
    #[error("The API server stopped before the microVM was started.")]
    ApiGone,
    /// The VM was built but its vCPUs did not start; the `InstanceStart` reply, and the log,
    /// say why.
    #[error("The microVM was built but its vCPUs did not start.")]
    StartFailed,
}

/// The state the API sees: the configuration, the instance's identity and the metrics.
#[derive(Debug)]
pub struct Controller {
    instance_id: String,
    resources: VmResources,
    metrics: Arc<Metrics>,
}

impl Controller {
    /// A controller for instance `instance_id`, starting from `resources`.
    pub fn new(instance_id: &str, resources: VmResources, metrics: Arc<Metrics>) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            resources,
            metrics,
        }
    }

    /// The configuration, as changed through the API.
    pub fn resources_mut(&mut self) -> &mut VmResources {
        &mut self.resources
    }

    /// Answers the actions that do not depend on the VM running; `None` for the others.
    pub fn common(&self, action: &VmmAction, state: InstanceState) -> Option<ActionResult> {
        Some(match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                id: self.instance_id.clone(),
                state,
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
                app_name: "Kiln".to_string(),
                firecracker_version: FIRECRACKER_VERSION.to_string(),
            })),
            VmmAction::GetVersion => Ok(VmmData::Version(env!("CARGO_PKG_VERSION").to_string())),
            VmmAction::GetVmConfig => Ok(VmmData::Json(self.resources.to_json())),
            VmmAction::GetMachineConfig => serde_json::to_value(self.resources.machine())
                .map(VmmData::Json)
                .map_err(ActionError::MachineConfigJson),
            VmmAction::GetMetrics => Ok(VmmData::PrometheusText(self.metrics.prometheus())),
            // Firecracker refuses a flush before boot.
            VmmAction::FlushMetrics if state == InstanceState::NotStarted => {
                Err(ActionError::OperationNotSupportedPreBoot)
            }
            VmmAction::FlushMetrics => self
                .metrics
                .flush()
                .map(|_| VmmData::Empty)
                .map_err(ActionError::from),
            _ => return None,
        })
    }

    /// Executes a configuration action before boot.
    fn preboot(&mut self, action: VmmAction) -> ActionResult {
        if let Some(result) = self.common(&action, InstanceState::NotStarted) {
            return result;
        }
        let r = &mut self.resources;
        match action {
            VmmAction::PutBootSource(b) => r.set_boot_source(b),
            VmmAction::PutMachineConfig(m) => r.set_machine_config(m),
            VmmAction::PatchMachineConfig(u) => r.update_machine_config(u),
            VmmAction::PutDrive(d) => r.put_drive(d),
            VmmAction::PutNetworkInterface(n) => r.put_network_interface(n),
            VmmAction::PutLogger(settings) => Ok(crate::logger::reconfigure(&settings)?),
            VmmAction::PutMetrics(settings) => Ok(self.metrics.set_sink(&settings.metrics_path)?),
            _ => Err(ActionError::OperationNotSupportedPreBoot),
        }
        .map(|()| VmmData::Empty)
    }

    /// Serves the API until `InstanceStart` boots the VM; returns the started VM. A VM that
    /// cannot be built is answered with the error and the API keeps serving. A built VM whose
    /// vCPUs do not start is answered with the error and ends the service: by then this thread
    /// may be under its seccomp filter, which does not let it build another VM.
    pub fn serve_until_started(
        &mut self,
        api: &ApiReceiver,
        mut host: impl FnMut() -> HostOptions,
    ) -> Result<Vmm, ControllerError> {
        loop {
            let request = api.requests.recv().map_err(|_| ControllerError::ApiGone)?;
            // The wakeup only matters once the event loop watches it; keep it from piling up.
            let _ = api.wakeup.read();
            if request.action != VmmAction::InstanceStart {
                let result = self.preboot(request.action);
                // A client that went away does not need its answer.
                let _ = request.reply.send(result);
                continue;
            }
            let mut vmm = match self.build(host()) {
                Ok(vmm) => vmm,
                Err(e) => {
                    let e = ActionError::from(e);
                    log::error!("InstanceStart failed: {e}");
                    let _ = request.reply.send(Err(e));
                    continue;
                }
            };
            match vmm.start() {
                Ok(()) => {
                    let _ = request.reply.send(Ok(VmmData::Empty));
                    return Ok(vmm);
                }
                Err(e) => {
                    let e = ActionError::from(e);
                    log::error!("InstanceStart failed: {e}");
                    let _ = request.reply.send(Err(e));
                    return Err(ControllerError::StartFailed);
                }
            }
        }
    }

    /// Builds the configured VM, its vCPUs paused.
    fn build(&self, host: HostOptions) -> Result<Vmm, StartMicrovmError> {
        build(&self.resources.vm_config()?, host)
    }

    /// Builds the configured VM and starts its vCPUs.
    pub fn start(&self, host: HostOptions) -> Result<Vmm, ActionError> {
        let mut vmm = self.build(host)?;
        vmm.start()?;
        Ok(vmm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BootSourceConfig;
    use crate::seccomp::SeccompFilters;

    fn controller() -> Controller {
        Controller::new("vm-7", VmResources::default(), Arc::new(Metrics::default()))
    }

    #[test]
    fn reports_the_instance_before_start() {
        let c = controller();
        let info = c.common(&VmmAction::GetInstanceInfo, InstanceState::NotStarted);
        let Some(Ok(VmmData::InstanceInfo(info))) = info else {
            panic!("{info:?}");
        };
        assert_eq!(
            (info.id.as_str(), info.state),
            ("vm-7", InstanceState::NotStarted)
        );
        assert_eq!(info.firecracker_version, "1.16.1");
        assert!(c
            .common(&VmmAction::Pause, InstanceState::Running)
            .is_none());
    }

    #[test]
    fn configures_before_start_and_refuses_runtime_actions() {
        let mut c = controller();
        let bad = VmmAction::PutBootSource(BootSourceConfig {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            initrd_path: None,
            boot_args: None,
        });
        let err = c.preboot(bad).unwrap_err();
        assert!(matches!(err, ActionError::BootSource(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
        for action in [
            VmmAction::Pause,
            VmmAction::SendCtrlAltDel,
            VmmAction::FlushMetrics,
        ] {
            assert!(matches!(
                c.preboot(action),
                Err(ActionError::OperationNotSupportedPreBoot)
            ));
        }
        let running = c.common(&VmmAction::FlushMetrics, InstanceState::Running);
        assert!(matches!(running, Some(Ok(VmmData::Empty))), "{running:?}");
        let machine = c.preboot(VmmAction::GetMachineConfig).unwrap();
        assert_eq!(
            machine,
            VmmData::Json(serde_json::json!({
                "vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                "track_dirty_pages": false, "huge_pages": "None"
            }))
        );
    }

    #[test]
    fn start_without_a_boot_source_is_an_error() {
        let c = controller();
        let host = HostOptions {
            serial_out: Box::new(std::io::sink()),
            console_input: false,
            boot_timer: false,
            start: devices::boot_timer::Timestamp::now(),
            metrics: Arc::new(Metrics::default()),
            seccomp: Arc::new(SeccompFilters::none()),
        };
        let err = c.start(host).unwrap_err();
        assert!(
            matches!(
                err,
                ActionError::StartMicrovm(StartMicrovmError::MissingBootSource)
            ),
            "{err:?}"
        );
    }
}
