//! The VMM thread's side of the API, the one place that dispatches actions: before boot it
//! executes each against the configuration and boots the VM on `InstanceStart`, or restores
//! one on `LoadSnapshot`; after boot, as the event loop's [`ApiHandler`], it answers what needs
//! no VM itself and turns the rest into the running VM's typed methods ([`RunningVm`]: pause,
//! resume, Ctrl-Alt-Del, drive swap, snapshot).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::builder::{build, restore, HostOptions};
use crate::config::VmConfig;
use crate::metrics::Metrics;
use crate::resources::VmResources;
use crate::rpc::{
    ActionError, ActionResult, ApiReceiver, DriveUpdate, InstanceInfo, InstanceState,
    LoadSnapshotParams, NetworkOverride, StartMicrovmError, VmmAction, VmmData,
    FIRECRACKER_VERSION,
};
use crate::runtime::{ApiHandler, RunningVm, Vmm};
use crate::snapshot::state::MicrovmState;
use crate::snapshot::{drives, file};

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

/// The state the API sees: the configuration, the instance's identity and the metrics, and the
/// VMM thread's end of the API channel.
#[derive(Debug)]
pub struct Controller {
    instance_id: String,
    resources: VmResources,
    /// Whether the API configured anything a boot uses, after which a snapshot may not be
    /// loaded (as in Firecracker).
    boot_configured: bool,
    metrics: Arc<Metrics>,
    api: ApiReceiver,
}

impl Controller {
    /// A controller for instance `instance_id`, starting from `resources`, serving `api`.
    pub fn new(
        instance_id: &str,
        resources: VmResources,
        metrics: Arc<Metrics>,
        api: ApiReceiver,
    ) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            resources,
            boot_configured: false,
            metrics,
            api,
        }
    }

    /// Answers the actions that do not depend on the VM running; `None` for the others.
    fn common(&self, action: &VmmAction, state: InstanceState) -> Option<ActionResult> {
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
        let boot_configured = &mut self.boot_configured;
        let mut configure = |result: Result<(), ActionError>| {
            *boot_configured |= result.is_ok();
            result
        };
        match action {
            VmmAction::PutBootSource(b) => configure(r.set_boot_source(b)),
            VmmAction::PutMachineConfig(m) => configure(r.set_machine_config(m)),
            VmmAction::PatchMachineConfig(u) => configure(r.update_machine_config(u)),
            VmmAction::PutCpuConfig(t) => {
                r.set_cpu_config(t);
                configure(Ok(()))
            }
            VmmAction::PutDrive(d) => configure(r.put_drive(d)),
            VmmAction::PutNetworkInterface(n) => configure(r.put_network_interface(n)),
            VmmAction::PutLogger(settings) => Ok(crate::logger::reconfigure(&settings)?),
            VmmAction::PutMetrics(settings) => Ok(self.metrics.set_sink(&settings.metrics_path)?),
            _ => Err(ActionError::OperationNotSupportedPreBoot),
        }
        .map(|()| VmmData::Empty)
    }

    /// Serves the API until `InstanceStart` boots the VM or `LoadSnapshot` restores one;
    /// returns the started VM. A VM that cannot be built (or a snapshot that cannot be read or
    /// restored) is answered with the error and the API keeps serving. A built VM whose vCPUs
    /// do not start is answered with the error and ends the service: by then this thread may
    /// be under its seccomp filter, which does not let it build another VM.
    pub fn serve_until_started(
        &mut self,
        mut host: impl FnMut() -> HostOptions,
    ) -> Result<Vmm, ControllerError> {
        loop {
            let request = self
                .api
                .requests
                .recv()
                .map_err(|_| ControllerError::ApiGone)?;
            // The wakeup only matters once the event loop watches it; keep it from piling up.
            let _ = self.api.wakeup.read();
            let (built, resume) = match request.action {
                VmmAction::InstanceStart => (self.build(host()).map_err(ActionError::from), true),
                VmmAction::LoadSnapshot(params) => {
                    (self.load_snapshot(&params, host()), params.resume_vm)
                }
                action => {
                    let result = self.preboot(action);
                    // A client that went away does not need its answer.
                    let _ = request.reply.send(result);
                    continue;
                }
            };
            let mut vmm = match built {
                Ok(vmm) => vmm,
                Err(e) => {
                    log::error!("Starting the microVM failed: {e}");
                    let _ = request.reply.send(Err(e));
                    continue;
                }
            };
            let started = if resume {
                vmm.start()
            } else {
                vmm.start_paused()
            };
            match started {
                Ok(()) => {
                    let _ = request.reply.send(Ok(VmmData::Empty));
                    return Ok(vmm);
                }
                Err(e) => {
                    let e = ActionError::from(e);
                    log::error!("Starting the microVM failed: {e}");
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

    /// Restores the VM of the snapshot `params` names, its vCPUs paused; from then on the
    /// configuration is the snapshot's, with the load's overrides.
    fn load_snapshot(
        &mut self,
        params: &LoadSnapshotParams,
        host: HostOptions,
    ) -> Result<Vmm, ActionError> {
        if self.boot_configured {
            return Err(ActionError::LoadSnapshotNotAllowed);
        }
        let started = std::time::Instant::now();
        let snapshot: MicrovmState = file::read(&params.snapshot_path)?;
        let mut config = VmConfig::from_snapshot_json(&snapshot.config)?;
        override_taps(&mut config, &params.network_overrides)?;
        let overlays = drives::apply_overrides(
            &mut config,
            &snapshot.frozen_drives,
            &params.drive_overrides,
        )?;
        config.machine.track_dirty_pages = params.track_dirty_pages;
        let backend = &params.mem_backend;
        let vmm =
            restore(&snapshot, &config, backend, params.clock_realtime, host).map_err(|e| {
                drives::remove_overlays(&overlays);
                ActionError::Restore(e)
            })?;
        log::info!(
            "Restored the microVM from {}",
            params.snapshot_path.display()
        );
        self.resources = VmResources::from(config);
        vmm.record_load(started.elapsed());
        Ok(vmm)
    }

    /// Builds the configured VM and starts its vCPUs.
    pub fn start(&self, host: HostOptions) -> Result<Vmm, ActionError> {
        let mut vmm = self.build(host)?;
        vmm.start()?;
        Ok(vmm)
    }

    /// Executes an action on the running VM `vm`.
    fn runtime(&mut self, action: VmmAction, vm: &mut dyn RunningVm) -> ActionResult {
        if let Some(result) = self.common(&action, vm.state()) {
            return result;
        }
        match action {
            VmmAction::CreateSnapshot(params) => {
                let created = vm.create_snapshot(&params, self.resources.to_json().to_string());
                // Frozen drives go on on new overlays, even when a later step failed.
                for drive in vm.drives() {
                    self.resources.put_drive(drive)?;
                }
                created
            }
            VmmAction::Pause => vm.pause(),
            VmmAction::Resume => vm.resume(),
            VmmAction::SendCtrlAltDel => vm.send_ctrl_alt_del(),
            VmmAction::PatchDrive(update) => self.patch_drive(update, vm),
            VmmAction::PatchNetworkInterface(_) => Err(ActionError::RateLimiterUnsupported),
            _ => Err(ActionError::OperationNotSupportedPostBoot),
        }
        .map(|()| VmmData::Empty)
    }

    /// `PATCH /drives` while the VM runs: the swap, then the configuration that
    /// `GET /vm/config` shows.
    fn patch_drive(
        &mut self,
        update: DriveUpdate,
        vm: &mut dyn RunningVm,
    ) -> Result<(), ActionError> {
        if update.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ActionError::RateLimiterUnsupported);
        }
        if let Some(config) = vm.patch_drive(&update.drive_id, update.path_on_host)? {
            self.resources.put_drive(config)?;
        }
        Ok(())
    }
}

/// Puts each interface `overrides` names on its new tap.
fn override_taps(config: &mut VmConfig, overrides: &[NetworkOverride]) -> Result<(), ActionError> {
    for o in overrides {
        let iface = config
            .network_interfaces
            .iter_mut()
            .find(|i| i.iface_id == o.iface_id)
            .ok_or_else(|| ActionError::UnknownNetworkOverride(o.iface_id.clone()))?;
        iface.host_dev_name = o.host_dev_name.clone();
    }
    Ok(())
}

impl ApiHandler for Controller {
    fn wakeup(&self) -> &EventFd {
        &self.api.wakeup
    }

    fn serve(&mut self, vm: &mut Vmm) {
        while let Ok(request) = self.api.requests.try_recv() {
            let result = self.runtime(request.action, vm);
            // A client that went away does not need its answer.
            let _ = request.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::{BootSourceConfig, DriveConfig};
    use crate::rpc::{CreateSnapshotParams, MemBackend, MemBackendType, SnapshotType};
    use crate::seccomp::SeccompFilters;

    /// A running VM that records what it is asked; its one drive is `data`.
    #[derive(Debug)]
    struct FakeVm {
        state: InstanceState,
        calls: Vec<&'static str>,
        /// The snapshot path and configuration of the last snapshot asked for.
        snapshot_config: Option<(PathBuf, String)>,
        /// Its drives, which a snapshot moves to `<snapshot_path>.<drive_id>.1.qcow2`.
        drives: Vec<DriveConfig>,
    }

    impl Default for FakeVm {
        fn default() -> Self {
            Self {
                state: InstanceState::Running,
                calls: Vec::new(),
                snapshot_config: None,
                drives: Vec::new(),
            }
        }
    }

    impl RunningVm for FakeVm {
        fn state(&self) -> InstanceState {
            self.state
        }

        fn pause(&mut self) -> Result<(), ActionError> {
            self.calls.push("pause");
            self.state = InstanceState::Paused;
            Ok(())
        }

        fn create_snapshot(
            &mut self,
            params: &CreateSnapshotParams,
            config: String,
        ) -> Result<(), ActionError> {
            self.calls.push("create-snapshot");
            self.snapshot_config = Some((params.snapshot_path.clone(), config));
            for drive in &mut self.drives {
                let overlay = format!(
                    "{}.{}.1.qcow2",
                    params.snapshot_path.display(),
                    drive.drive_id
                );
                std::fs::write(&overlay, b"").unwrap();
                drive.path_on_host = Some(overlay.into());
            }
            Ok(())
        }

        fn drives(&self) -> Vec<DriveConfig> {
            self.drives.clone()
        }

        fn resume(&mut self) -> Result<(), ActionError> {
            self.calls.push("resume");
            self.state = InstanceState::Running;
            Ok(())
        }

        fn send_ctrl_alt_del(&mut self) -> Result<(), ActionError> {
            self.calls.push("ctrl-alt-del");
            Ok(())
        }

        fn patch_drive(
            &mut self,
            drive_id: &str,
            path: Option<PathBuf>,
        ) -> Result<Option<DriveConfig>, ActionError> {
            self.calls.push("patch-drive");
            if drive_id != "data" {
                return Err(ActionError::DriveNotFound(drive_id.to_string()));
            }
            Ok(path.map(|path| drive(&path)))
        }
    }

    fn drive(path: &Path) -> DriveConfig {
        serde_json::from_value(serde_json::json!({
            "drive_id": "data", "path_on_host": path, "is_root_device": false,
        }))
        .unwrap()
    }

    fn state(c: &mut Controller, vm: &mut FakeVm) -> InstanceState {
        match c.runtime(VmmAction::GetInstanceInfo, vm) {
            Ok(VmmData::InstanceInfo(info)) => info.state,
            other => panic!("{other:?}"),
        }
    }

    fn controller() -> Controller {
        let (_, api) = crate::rpc::api_channel().unwrap();
        Controller::new(
            "vm-7",
            VmResources::default(),
            Arc::new(Metrics::default()),
            api,
        )
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
        let err = c.start(host()).unwrap_err();
        assert!(
            matches!(
                err,
                ActionError::StartMicrovm(StartMicrovmError::MissingBootSource)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn after_start_pause_resume_and_ctrl_alt_del_go_to_the_vm() {
        let (mut c, mut vm) = (controller(), FakeVm::default());
        assert_eq!(state(&mut c, &mut vm), InstanceState::Running);
        assert!(matches!(
            c.runtime(VmmAction::Pause, &mut vm),
            Ok(VmmData::Empty)
        ));
        assert_eq!(state(&mut c, &mut vm), InstanceState::Paused);
        c.runtime(VmmAction::Resume, &mut vm).unwrap();
        c.runtime(VmmAction::SendCtrlAltDel, &mut vm).unwrap();
        assert_eq!(state(&mut c, &mut vm), InstanceState::Running);
        assert_eq!(vm.calls, ["pause", "resume", "ctrl-alt-del"]);
    }

    #[test]
    fn after_start_configuration_is_refused_and_the_vm_untouched() {
        let (mut c, mut vm) = (controller(), FakeVm::default());
        let boot = BootSourceConfig {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        };
        for action in [
            VmmAction::PutBootSource(boot),
            VmmAction::InstanceStart,
            VmmAction::PutDrive(drive(Path::new("/d"))),
        ] {
            assert!(matches!(
                c.runtime(action, &mut vm),
                Err(ActionError::OperationNotSupportedPostBoot)
            ));
        }
        assert!(matches!(
            c.runtime(VmmAction::FlushMetrics, &mut vm),
            Ok(VmmData::Empty)
        ));
        assert!(vm.calls.is_empty(), "{:?}", vm.calls);
    }

    #[test]
    fn a_drive_patch_swaps_the_disk_and_then_the_configuration() {
        let dir = std::env::temp_dir().join(format!("kiln-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, new) = (dir.join("old"), dir.join("new"));
        std::fs::write(&old, [0u8; 512]).unwrap();
        std::fs::write(&new, [0u8; 512]).unwrap();
        let (mut c, mut vm) = (controller(), FakeVm::default());
        c.resources.put_drive(drive(&old)).unwrap();
        let patch = |id: &str, path: Option<&Path>, limiter| {
            VmmAction::PatchDrive(DriveUpdate {
                drive_id: id.to_string(),
                path_on_host: path.map(Path::to_path_buf),
                rate_limiter: limiter,
            })
        };
        let limited = patch("data", Some(&new), Some(serde_json::json!({})));
        assert!(matches!(
            c.runtime(limited, &mut vm),
            Err(ActionError::RateLimiterUnsupported)
        ));
        assert!(vm.calls.is_empty());
        assert!(matches!(
            c.runtime(patch("other", Some(&new), None), &mut vm),
            Err(ActionError::DriveNotFound(id)) if id == "other"
        ));
        c.runtime(patch("data", None, Some(serde_json::Value::Null)), &mut vm)
            .unwrap();
        assert_eq!(
            c.resources.to_json()["drives"][0]["path_on_host"],
            old.to_str().unwrap()
        );
        c.runtime(patch("data", Some(&new), None), &mut vm).unwrap();
        assert_eq!(
            c.resources.to_json()["drives"][0]["path_on_host"],
            new.to_str().unwrap()
        );
        assert_eq!(vm.calls, ["patch-drive"; 3]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn load(snapshot_path: &str) -> VmmAction {
        VmmAction::LoadSnapshot(LoadSnapshotParams {
            snapshot_path: snapshot_path.into(),
            mem_backend: MemBackend {
                backend_path: "/nonexistent/mem".into(),
                backend_type: MemBackendType::File,
            },
            track_dirty_pages: false,
            resume_vm: false,
            network_overrides: Vec::new(),
            drive_overrides: Vec::new(),
            clock_realtime: false,
        })
    }

    fn host() -> HostOptions {
        HostOptions {
            serial_out: Box::new(std::io::sink()),
            console_input: false,
            boot_timer: false,
            start: devices::boot_timer::Timestamp::now(),
            metrics: Arc::new(Metrics::default()),
            seccomp: Arc::new(SeccompFilters::none()),
        }
    }

    #[test]
    fn a_snapshot_loads_only_before_boot_resources_are_configured() {
        let mut c = controller();
        // Logging does not count as configuring the VM; a missing snapshot file is its own
        // error.
        let err = c
            .load_snapshot(&load_params("/nonexistent/snap"), host())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Cannot open the snapshot file /nonexistent/snap"),
            "{err}"
        );
        let refused = c.preboot(VmmAction::PutDrive(drive(Path::new("/nonexistent/d"))));
        assert!(refused.is_err());
        assert!(!c.boot_configured, "a refused request configures nothing");
        c.preboot(VmmAction::PatchMachineConfig(Default::default()))
            .unwrap();
        let err = c
            .load_snapshot(&load_params("/nonexistent/snap"), host())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Loading a microVM snapshot not allowed after configuring boot-specific resources."
        );
        // Before boot, creating a snapshot is refused as every runtime action is.
        let create = VmmAction::CreateSnapshot(CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
        });
        assert!(matches!(
            c.preboot(create),
            Err(ActionError::OperationNotSupportedPreBoot)
        ));
    }

    fn load_params(snapshot_path: &str) -> LoadSnapshotParams {
        match load(snapshot_path) {
            VmmAction::LoadSnapshot(params) => params,
            _ => unreachable!(),
        }
    }

    #[test]
    fn after_start_a_snapshot_gets_the_configuration_and_a_load_is_refused() {
        let dir = std::env::temp_dir().join(format!("kiln-ctl-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("data.qcow2");
        std::fs::write(&image, b"").unwrap();
        let (mut c, mut vm) = (controller(), FakeVm::default());
        c.resources.put_drive(drive(&image)).unwrap();
        vm.drives = vec![drive(&image)];
        let before = c.resources.to_json();
        let snapshot_path = dir.join("s");
        let create = CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: snapshot_path.clone(),
            mem_file_path: "/m".into(),
        };
        c.runtime(VmmAction::CreateSnapshot(create), &mut vm)
            .unwrap();
        let (path, config) = vm.snapshot_config.clone().unwrap();
        assert_eq!(path, snapshot_path);
        // The snapshot names the image as it was frozen; the VM goes on on the new overlay.
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config, before);
        assert_eq!(
            c.resources.to_json()["drives"][0]["path_on_host"],
            dir.join("s.data.1.qcow2").to_str().unwrap()
        );
        assert!(matches!(
            c.runtime(load("/s"), &mut vm),
            Err(ActionError::OperationNotSupportedPostBoot)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn network_overrides_name_interfaces_the_snapshot_has() {
        let mut config = VmConfig::from_snapshot_json(
            r#"{"boot-source": {"kernel_image_path": "/gone"},
                "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}]}"#,
        )
        .unwrap();
        let to = |iface_id: &str| NetworkOverride {
            iface_id: iface_id.into(),
            host_dev_name: "tap9".into(),
        };
        override_taps(&mut config, &[to("eth0")]).unwrap();
        assert_eq!(config.network_interfaces[0].host_dev_name, "tap9");
        let err = override_taps(&mut config, &[to("eth1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Load snapshot error: the snapshot has no network interface 'eth1' to override."
        );
    }
}
