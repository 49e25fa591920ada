//! The contract between the HTTP API and the VMM: typed actions, their results and errors, and
//! the channel that carries them from the API thread to the VMM thread.
//!
//! The API thread parses a request into a [`VmmAction`], sends it with [`ApiSender::request`]
//! and blocks on the reply; the VMM thread executes actions one at a time, in order. Nothing the
//! API thread does touches the VM directly, so it never blocks the vCPUs.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{BootSourceConfig, DriveConfig, MachineConfig, NetworkInterfaceConfig};
pub use crate::config::{LoggerSettings, MetricsSettings};
use crate::cpu_template::{CustomCpuTemplate, StaticCpuTemplate};
pub use error::{ActionError, StartMicrovmError};
pub use snapshot::{
    CreateSnapshotParams, DriveOverride, LoadSnapshotParams, MemBackend, MemBackendType,
    NetworkOverride, SnapshotType,
};

mod error;
mod snapshot;

/// The Firecracker version whose API Kiln speaks. `GET /version` and `GET /` report it as
/// `firecracker_version`, so that clients that check it keep working; Kiln's own version is
/// reported beside it.
pub const FIRECRACKER_VERSION: &str = "1.16.1";

/// What the API asks the VMM to do.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`: the whole configuration in the config-file format.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `GET /metrics`: the counters in Prometheus text format (a Kiln extension).
    GetMetrics,
    /// `PUT /boot-source`.
    PutBootSource(BootSourceConfig),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /cpu-config`: a custom CPU template.
    PutCpuConfig(CustomCpuTemplate),
    /// `PUT /drives/{id}`.
    PutDrive(DriveConfig),
    /// `PATCH /drives/{id}`.
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterfaceConfig),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /logger`.
    PutLogger(LoggerSettings),
    /// `PUT /metrics`.
    PutMetrics(MetricsSettings),
    /// `PUT /actions` InstanceStart.
    InstanceStart,
    /// `PUT /actions` SendCtrlAltDel.
    SendCtrlAltDel,
    /// `PUT /actions` FlushMetrics.
    FlushMetrics,
    /// `PATCH /vm` Paused.
    Pause,
    /// `PATCH /vm` Resumed.
    Resume,
    /// `PUT /snapshot/create`, on a paused VM.
    CreateSnapshot(CreateSnapshotParams),
    /// `PUT /snapshot/load`, in a kiln that has configured nothing the VM's state holds.
    LoadSnapshot(LoadSnapshotParams),
}

/// `PATCH /machine-config`: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New memory size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New dirty-page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New static CPU template; `None` removes the template, static or custom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<StaticCpuTemplate>,
    /// New huge-page setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<crate::config::HugePages>,
}

/// `PATCH /drives/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive to change.
    pub drive_id: String,
    /// A new backing file, swapped in while the guest runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// A new rate limiter (not implemented yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PATCH /network-interfaces/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface to change.
    pub iface_id: String,
    /// A new receive rate limiter (not implemented yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// A new transmit rate limiter (not implemented yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// The VM's state as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured, not booted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// `GET /`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The `--id` of this instance.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// Kiln's version.
    pub vmm_version: String,
    /// The program's name.
    pub app_name: String,
    /// Kiln extension: the Firecracker API level, [`FIRECRACKER_VERSION`].
    pub firecracker_version: String,
}

/// What an action returns.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Nothing: the API answers 204.
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`: the version string.
    Version(String),
    /// `GET /vm/config` and `GET /machine-config`: a JSON body.
    Json(serde_json::Value),
    /// `GET /metrics`: Prometheus text.
    PrometheusText(String),
}

/// The reply to one action.
pub type ActionResult = Result<VmmData, ActionError>;

/// One action in flight, with the channel its reply goes back on.
#[derive(Debug)]
pub struct ApiRequest {
    /// The action.
    pub action: VmmAction,
    /// Where the VMM sends the result.
    pub reply: Sender<ActionResult>,
}

/// Errors on the API channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The eventfd could not be created or written.
    #[error("The API channel's eventfd failed: {0}")]
    EventFd(std::io::Error),
    /// The VMM thread is gone.
    #[error("The VMM is no longer running.")]
    VmmGone,
}

/// The API thread's end of the channel.
#[derive(Debug)]
pub struct ApiSender {
    requests: Sender<ApiRequest>,
    wakeup: EventFd,
}

/// The VMM thread's end of the channel: its eventfd goes into the event loop.
#[derive(Debug)]
pub struct ApiReceiver {
    /// Pending requests.
    pub requests: Receiver<ApiRequest>,
    /// Signalled after each request is queued.
    pub wakeup: EventFd,
}

/// A connected pair of channel ends.
pub fn api_channel() -> Result<(ApiSender, ApiReceiver), ChannelError> {
    let wakeup = EventFd::new(EFD_NONBLOCK).map_err(ChannelError::EventFd)?;
    let (tx, rx) = channel();
    let sender = ApiSender {
        requests: tx,
        wakeup: wakeup.try_clone().map_err(ChannelError::EventFd)?,
    };
    Ok((
        sender,
        ApiReceiver {
            requests: rx,
            wakeup,
        },
    ))
}

impl ApiSender {
    /// Sends `action` and waits for the VMM's reply.
    pub fn request(&self, action: VmmAction) -> Result<ActionResult, ChannelError> {
        let (reply, result) = channel();
        self.requests
            .send(ApiRequest { action, reply })
            .map_err(|_| ChannelError::VmmGone)?;
        self.wakeup.write(1).map_err(ChannelError::EventFd)?;
        result.recv().map_err(|_| ChannelError::VmmGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_its_reply() {
        let (sender, receiver) = api_channel().unwrap();
        let vmm = std::thread::spawn(move || {
            let req = receiver.requests.recv().unwrap();
            assert_eq!(req.action, VmmAction::GetVersion);
            req.reply.send(Ok(VmmData::Version("1".into()))).unwrap();
            receiver
        });
        let reply = sender.request(VmmAction::GetVersion).unwrap();
        assert!(
            matches!(&reply, Ok(VmmData::Version(v)) if v == "1"),
            "{reply:?}"
        );
        // The wakeup follows the request, so it is written by the time the reply arrives.
        let receiver = vmm.join().unwrap();
        assert_eq!(receiver.wakeup.read().unwrap(), 1);
        drop(receiver);
        assert!(matches!(
            sender.request(VmmAction::GetVersion),
            Err(ChannelError::VmmGone)
        ));
    }

    #[test]
    fn instance_state_serialises_as_firecracker_spells_it() {
        let info = InstanceInfo {
            id: "a".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
            app_name: "Kiln".into(),
            firecracker_version: FIRECRACKER_VERSION.into(),
        };
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains(r#""state":"Not started""#), "{json}");
    }
}
