//! Every route over a real socket: what reaches the VMM, and what the client reads back.

mod common;

use common::Api;
use vmm::rpc::{CreateSnapshotParams, MemBackendType, MetricsSettings, SnapshotType, VmmAction};

#[test]
fn gets_answer_with_the_vmms_data() {
    let api = Api::start("gets");
    let info = api.call("GET", "/", None);
    assert_eq!(info.status, 200);
    assert_eq!(info.header("Content-Type"), Some("application/json"));
    assert_eq!(info.json()["state"], "Not started");
    assert_eq!(info.json()["id"], "test-vm");

    let version = api.call("GET", "/version", None);
    assert_eq!(
        version.json(),
        serde_json::json!({"firecracker_version": "1.16.1", "kiln_version": "0.1.0"})
    );
    assert_eq!(api.call("GET", "/vm/config", None).json()["vcpu_count"], 1);
    assert_eq!(api.call("GET", "/machine-config", None).status, 200);
    let metrics = api.call("GET", "/metrics", None);
    assert_eq!(metrics.header("Content-Type"), Some("text/plain"));
    assert_eq!(metrics.body, "kiln_api_requests 1\n");
    assert_eq!(
        api.actions(),
        [
            VmmAction::GetInstanceInfo,
            VmmAction::GetVersion,
            VmmAction::GetVmConfig,
            VmmAction::GetMachineConfig,
            VmmAction::GetMetrics
        ]
    );
}

#[test]
fn puts_and_patches_answer_204_without_a_body() {
    let api = Api::start("puts");
    let calls = [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
        ),
        ("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#),
        ("PUT", "/boot-source", r#"{"kernel_image_path": "/k"}"#),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#,
        ),
        (
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/n"}"#,
        ),
        (
            "PUT",
            "/network-interfaces/eth-0",
            r#"{"iface_id": "eth-0", "host_dev_name": "tap0"}"#,
        ),
        (
            "PATCH",
            "/network-interfaces/eth-0",
            r#"{"iface_id": "eth-0"}"#,
        ),
        ("PUT", "/logger", r#"{"level": "Info"}"#),
        ("PUT", "/metrics", r#"{"metrics_path": "/m"}"#),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        ("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_path": "/u.sock",
                "backend_type": "Uffd"}, "resume_vm": true}"#,
        ),
    ];
    for (method, path, body) in calls {
        let reply = api.call(method, path, Some(body));
        assert_eq!(reply.status, 204, "{method} {path}: {reply:?}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("Content-Length"), None);
    }
    let actions = api.actions();
    assert_eq!(actions.len(), calls.len());
    assert_eq!(
        actions[8],
        VmmAction::PutMetrics(MetricsSettings {
            metrics_path: "/m".into()
        })
    );
    assert_eq!(actions[9], VmmAction::InstanceStart);
    assert_eq!(actions[11], VmmAction::Pause);
    assert_eq!(actions[12], VmmAction::Resume);
    assert_eq!(
        actions[13],
        VmmAction::CreateSnapshot(CreateSnapshotParams {
            snapshot_type: SnapshotType::Diff,
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
        })
    );
    let VmmAction::LoadSnapshot(load) = &actions[14] else {
        panic!("not a load: {:?}", actions[14]);
    };
    assert_eq!(load.mem_backend.backend_type, MemBackendType::Uffd);
    assert!(load.resume_vm);
}

#[test]
fn a_vmm_error_is_a_400_fault() {
    let api = Api::start("vmm-error");
    let reply = api.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    );
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.fault(),
        "The requested operation is not supported before starting the microVM."
    );
    assert_eq!(api.metrics.faults(), 1);
}

#[test]
fn a_vmm_that_is_gone_is_a_500_fault() {
    let api = Api::start_without_vmm("no-vmm");
    let reply = api.call("GET", "/", None);
    assert_eq!(reply.status, 500);
    assert_eq!(reply.fault(), "The VMM is no longer running.");
    // The server keeps answering.
    assert_eq!(api.call("GET", "/version", None).status, 500);
}

#[test]
fn requests_are_counted_per_route() {
    let api = Api::start("metrics");
    api.call("GET", "/", None);
    api.call("GET", "/", None);
    api.call("PUT", "/drives/a", Some("{"));
    api.call("GET", "/nope", None);
    let snapshot = api.metrics.snapshot();
    let count = |name: &str| snapshot.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(count("GET /"), 2);
    assert_eq!(count("PUT /drives/{id}"), 1);
    assert_eq!(count("unrouted"), 1);
    assert_eq!(api.metrics.faults(), 2);
}

#[test]
fn cpu_template_in_machine_config_is_answered_as_deprecated() {
    let api = Api::start("deprecated");
    let with = r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2A"}"#;
    let put = api.call("PUT", "/machine-config", Some(with));
    assert_eq!(put.status, 204);
    assert_eq!(put.header("Deprecation"), Some("true"));
    let patch = api.call(
        "PATCH",
        "/machine-config",
        Some(r#"{"cpu_template": "None"}"#),
    );
    assert_eq!(patch.header("Deprecation"), Some("true"));
    let without = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    let plain = api.call("PUT", "/machine-config", Some(without));
    assert_eq!(plain.header("Deprecation"), None);
    let cpu_config = api.call("PUT", "/cpu-config", Some("{}"));
    assert_eq!(cpu_config.status, 204);
    assert_eq!(cpu_config.header("Deprecation"), None);
    assert!(matches!(api.actions()[3], VmmAction::PutCpuConfig(_)));
}

#[test]
fn a_snapshot_load_with_mem_file_path_is_answered_as_deprecated() {
    let api = Api::start("snapshot-deprecated");
    let deprecation = |body: &str| {
        let reply = api.call("PUT", "/snapshot/load", Some(body));
        assert_eq!(reply.status, 204, "{body}: {reply:?}");
        reply.header("Deprecation").map(str::to_string)
    };
    let old = r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#;
    assert_eq!(deprecation(old).as_deref(), Some("true"));
    let dirty = r#"{"snapshot_path": "/s", "mem_backend": {"backend_path": "/m",
                    "backend_type": "File"}, "enable_diff_snapshots": true}"#;
    assert_eq!(deprecation(dirty).as_deref(), Some("true"));
    let new = r#"{"snapshot_path": "/s", "mem_backend": {"backend_path": "/m",
                  "backend_type": "File"}}"#;
    assert_eq!(deprecation(new), None);
    let counters = api.metrics.firecracker_counters();
    let deprecated = counters
        .iter()
        .find(|(g, n, _)| *g == "deprecated_api" && n == "deprecated_http_api_calls")
        .unwrap();
    assert_eq!(deprecated.2, 2);
    // The two old spellings reach the VMM as the new one.
    let actions = api.actions();
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[0], actions[2]);
    let VmmAction::LoadSnapshot(dirty) = &actions[1] else {
        panic!("not a load: {:?}", actions[1]);
    };
    assert!(dirty.track_dirty_pages);
    let snapshot = api.metrics.snapshot();
    let count = |name: &str| snapshot.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(count("PUT /snapshot/load"), 3);
    assert_eq!(count("PUT /snapshot/create"), 0);
}
