//! `PUT /snapshot/create` and `PUT /snapshot/load`: Firecracker's snapshot bodies, parsed into
//! the contract's [`CreateSnapshotParams`](vmm::rpc::CreateSnapshotParams) and
//! [`LoadSnapshotParams`].
//!
//! The create body is the contract type itself. The load body is this module's own: it owns
//! resolving the deprecated `mem_file_path` (a `File` memory backend) and
//! `enable_diff_snapshots` (ORed into `track_dirty_pages`), and their deprecation warning;
//! Firecracker's two messages for a body that names neither or both of `mem_backend` and
//! `mem_file_path`; and the refusal of `vsock_override`, since Kiln has no vsock device. What
//! the files hold and whether the VM can be saved or restored is the VMM's to check. Kiln's
//! extension `drive_overrides` (new images for drives, and the overlays of frozen ones) comes
//! after Firecracker's fields.

use std::path::PathBuf;

use dbs_uhttp::Method;
use serde::Deserialize;
use vmm::rpc::{
    DriveOverride, LoadSnapshotParams, MemBackend, MemBackendType, NetworkOverride, VmmAction,
};

use super::{from_json, json_error, Parsed, RequestError};

/// Firecracker's warning for a load body with `mem_file_path` or `enable_diff_snapshots`.
const LOAD_DEPRECATION: &str =
    "PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated.";
/// Firecracker's message for a load body without `mem_backend` or `mem_file_path`.
const MISSING_MEM: &str = "missing field: either `mem_backend` or `mem_file_path` is required";
/// Firecracker's message for a load body with both.
const TOO_MANY_MEM: &str =
    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required";

/// `vsock_override` in Firecracker's shape, so that a malformed one gets serde's message, as
/// in Firecracker, before a well-formed one gets Kiln's refusal.
#[derive(Debug, Deserialize)]
struct VsockOverride {
    /// Never read: any override is refused.
    #[allow(dead_code)]
    uds_path: String,
}

/// The load body as Firecracker 1.16.1 takes it, fields in its order (serde lists them in
/// this order when it refuses an unknown one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    snapshot_path: PathBuf,
    /// Deprecated: a `File` backend at this path.
    mem_file_path: Option<PathBuf>,
    mem_backend: Option<MemBackend>,
    /// Deprecated: the old name of `track_dirty_pages`.
    #[serde(default)]
    enable_diff_snapshots: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(default)]
    resume_vm: bool,
    #[serde(default)]
    network_overrides: Vec<NetworkOverride>,
    vsock_override: Option<VsockOverride>,
    #[serde(default)]
    clock_realtime: bool,
    /// Kiln's extension, after Firecracker's fields.
    #[serde(default)]
    drive_overrides: Vec<DriveOverride>,
}

/// Parses `PUT /snapshot/create`: `snapshot_path` and `mem_file_path` are required,
/// `snapshot_type` is `Full` (the default) or `Diff`.
pub(super) fn parse_put_create(body: &[u8]) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::CreateSnapshot(from_json(body)?))
}

/// Parses `PUT /snapshot/load`, checking the body in Firecracker's order: its shape, then the
/// memory source, then (Kiln's) the features Kiln lacks.
pub(super) fn parse_put_load(body: &[u8]) -> Result<Parsed, RequestError> {
    let body: LoadBody = from_json(body)?;
    let deprecated = body.mem_file_path.is_some() || body.enable_diff_snapshots;
    let mem_backend = match (body.mem_backend, body.mem_file_path) {
        (Some(backend), None) => backend,
        (None, Some(path)) => MemBackend {
            backend_path: path,
            backend_type: MemBackendType::File,
        },
        (Some(_), Some(_)) => return Err(json_error(TOO_MANY_MEM)),
        (None, None) => return Err(json_error(MISSING_MEM)),
    };
    if body.vsock_override.is_some() {
        return Err(RequestError::Unsupported("vsock_override"));
    }
    Ok(Parsed {
        action: VmmAction::LoadSnapshot(LoadSnapshotParams {
            snapshot_path: body.snapshot_path,
            mem_backend,
            track_dirty_pages: body.track_dirty_pages || body.enable_diff_snapshots,
            resume_vm: body.resume_vm,
            network_overrides: body.network_overrides,
            drive_overrides: body.drive_overrides,
            clock_realtime: body.clock_realtime,
        }),
        deprecation: deprecated.then_some(LOAD_DEPRECATION),
    })
}

/// Whether the request is `PUT /snapshot` without an operation, which Firecracker answers
/// with [`RequestError::MissingSnapshotType`] rather than as an unknown path.
pub(super) fn lacks_operation(method: Method, path: &str) -> bool {
    method == Method::Put
        && path.starts_with('/')
        && matches!(path.trim_start_matches('/'), "snapshot" | "snapshot/")
}

#[cfg(test)]
mod tests {
    use vmm::rpc::{CreateSnapshotParams, SnapshotType};

    use super::super::tests::fault;
    use super::*;

    const SERDE: &str = "An error occurred when deserializing the json body of a request: ";

    fn create(body: &str) -> CreateSnapshotParams {
        let VmmAction::CreateSnapshot(params) = parse_put_create(body.as_bytes()).unwrap() else {
            panic!("not a create");
        };
        params
    }

    /// The parameters and the deprecation warning of a load body that must be accepted.
    fn load(body: &str) -> (LoadSnapshotParams, Option<&'static str>) {
        let parsed = parse_put_load(body.as_bytes()).unwrap();
        let VmmAction::LoadSnapshot(params) = parsed.action else {
            panic!("not a load");
        };
        (params, parsed.deprecation)
    }

    fn backend(path: &str, backend_type: MemBackendType) -> MemBackend {
        MemBackend {
            backend_path: path.into(),
            backend_type,
        }
    }

    /// What a load body with only `snapshot_path` "s" and a `File` backend "m" gives.
    fn plain_load() -> LoadSnapshotParams {
        LoadSnapshotParams {
            snapshot_path: "s".into(),
            mem_backend: backend("m", MemBackendType::File),
            track_dirty_pages: false,
            resume_vm: false,
            network_overrides: Vec::new(),
            drive_overrides: Vec::new(),
            clock_realtime: false,
        }
    }

    #[test]
    fn create_is_full_unless_diff() {
        let full = CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: "s".into(),
            mem_file_path: "m".into(),
        };
        assert_eq!(
            create(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#),
            full
        );
        assert_eq!(
            create(r#"{"snapshot_type": "Full", "snapshot_path": "s", "mem_file_path": "m"}"#),
            full
        );
        assert_eq!(
            create(r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#)
                .snapshot_type,
            SnapshotType::Diff
        );
        assert_eq!(
            parse(
                Method::Put,
                "/snapshot/create",
                r#"{"snapshot_path": "s", "mem_file_path": "m"}"#
            ),
            VmmAction::CreateSnapshot(full).into()
        );
    }

    #[test]
    fn create_refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"mem_file_path": "m"}"#, "missing field `snapshot_path`"),
            (r#"{"snapshot_path": "s"}"#, "missing field `mem_file_path`"),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "Incr"}"#,
                "unknown variant `Incr`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "version": "1.0"}"#,
                "unknown field `version`",
            ),
            (
                r#"{"snapshot_path": 1, "mem_file_path": "m"}"#,
                "invalid type: integer `1`",
            ),
            (
                r#"{"invalid_field": "s", "mem_file_path": "m"}"#,
                "unknown field",
            ),
        ] {
            let err = parse_put_create(body.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with(SERDE), "{body}: {err}");
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn load_takes_a_mem_backend_and_defaults_the_rest() {
        let body = r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "m",
                       "backend_type": "File"}}"#;
        assert_eq!(load(body), (plain_load(), None));
        let body = r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "uffd.sock",
                       "backend_type": "Uffd"}, "track_dirty_pages": true, "resume_vm": true,
                       "clock_realtime": true, "vsock_override": null, "mem_file_path": null,
                       "network_overrides": [{"iface_id": "eth0", "host_dev_name": "vmtap2"}],
                       "drive_overrides": [{"drive_id": "rootfs",
                                            "path_on_host": "clone1.qcow2"}]}"#;
        assert_eq!(
            load(body),
            (
                LoadSnapshotParams {
                    mem_backend: backend("uffd.sock", MemBackendType::Uffd),
                    track_dirty_pages: true,
                    resume_vm: true,
                    network_overrides: vec![NetworkOverride {
                        iface_id: "eth0".into(),
                        host_dev_name: "vmtap2".into(),
                    }],
                    drive_overrides: vec![DriveOverride {
                        drive_id: "rootfs".into(),
                        path_on_host: "clone1.qcow2".into(),
                    }],
                    clock_realtime: true,
                    ..plain_load()
                },
                None
            )
        );
    }

    #[test]
    fn the_deprecated_fields_are_resolved_and_warned_about() {
        let expected = Some(LOAD_DEPRECATION);
        assert_eq!(
            load(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#),
            (plain_load(), expected)
        );
        let body = r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "m",
                       "backend_type": "File"}, "enable_diff_snapshots": true}"#;
        let dirty = LoadSnapshotParams {
            track_dirty_pages: true,
            ..plain_load()
        };
        assert_eq!(load(body), (dirty.clone(), expected));
        let body = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "enable_diff_snapshots": false, "track_dirty_pages": true}"#;
        assert_eq!(load(body), (dirty, expected));
        // `false` asks for nothing deprecated.
        let body = r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "m",
                       "backend_type": "File"}, "enable_diff_snapshots": false}"#;
        assert_eq!(load(body), (plain_load(), None));
        assert_eq!(
            parse(
                Method::Put,
                "/snapshot/load",
                r#"{"snapshot_path": "s", "mem_file_path": "m"}"#
            )
            .deprecation,
            expected
        );
    }

    #[test]
    fn load_needs_exactly_one_memory_source_with_firecrackers_messages() {
        let err = |body: &str| fault(Method::Put, "/snapshot/load", Some(body));
        assert_eq!(
            err(r#"{"snapshot_path": "s"}"#),
            format!("{SERDE}missing field: either `mem_backend` or `mem_file_path` is required.")
        );
        assert_eq!(
            err(r#"{"snapshot_path": "s", "mem_file_path": null, "mem_backend": null}"#),
            format!("{SERDE}{MISSING_MEM}.")
        );
        let both = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "mem_backend": {"backend_path": "m", "backend_type": "Uffd"}}"#;
        assert_eq!(
            err(both),
            format!(
                "{SERDE}too many fields: either `mem_backend` or `mem_file_path` exclusively is \
                 required."
            )
        );
    }

    #[test]
    fn load_refuses_vsock_override() {
        let body = r#"{"snapshot_path": "s", "mem_file_path": "m",
                       "vsock_override": {"uds_path": "/v.sock"}}"#;
        assert_eq!(
            fault(Method::Put, "/snapshot/load", Some(body)),
            "vsock_override is not supported yet."
        );
        // Firecracker's shape is checked first, and the memory source before Kiln's refusal.
        let body = r#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {}}"#;
        let err = parse_put_load(body.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("missing field `uds_path`"), "{err}");
        let body = r#"{"snapshot_path": "s", "vsock_override": {"uds_path": "/v.sock"}}"#;
        let err = parse_put_load(body.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(MISSING_MEM), "{err}");
    }

    #[test]
    fn load_refuses_bad_bodies() {
        for (body, expected) in [
            (
                r#"{"mem_backend": {"backend_path": "m", "backend_type": "Uffd"}}"#,
                "missing field `snapshot_path`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "m"}}"#,
                "missing field `backend_type`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File"}}"#,
                "missing field `backend_path`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "m",
                    "backend_type": "Memfd"}}"#,
                "unknown variant `Memfd`, expected `File` or `Uffd`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_path": "m",
                    "backend_type": "File", "size": 1}}"#,
                "unknown field `size`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File",}}"#,
                "trailing comma",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "resume_vm": "yes"}"#,
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "network_overrides": [{"iface_id": "eth0"}]}"#,
                "missing field `host_dev_name`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": {}}"#,
                "invalid type: map, expected a sequence",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "drive_overrides": [{"drive_id": "rootfs"}]}"#,
                "missing field `path_on_host`",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "drive_overrides": [{"drive_id": "rootfs", "path_on_host": "c",
                                         "is_read_only": true}]}"#,
                "unknown field `is_read_only`, expected `drive_id` or `path_on_host`",
            ),
            // Firecracker 1.16.1 has no `huge_pages` in this body (1.17 adds it).
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "None"}"#,
                "unknown field `huge_pages`, expected one of `snapshot_path`, `mem_file_path`, \
                 `mem_backend`, `enable_diff_snapshots`, `track_dirty_pages`, `resume_vm`, \
                 `network_overrides`, `vsock_override`, `clock_realtime`, `drive_overrides`",
            ),
            ("[]", "invalid type: sequence"),
        ] {
            let err = parse_put_load(body.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with(SERDE), "{body}: {err}");
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn other_snapshot_paths_are_answered_as_in_firecracker() {
        let body = Some(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#);
        let missing = "Missing snapshot operation type.";
        let unknown = "Invalid request method and/or path:";
        for (method, path, body, expected) in [
            (Method::Put, "/snapshot", body, missing.to_string()),
            (Method::Put, "/snapshot/", body, missing.to_string()),
            (Method::Put, "//snapshot", body, missing.to_string()),
            (
                Method::Put,
                "/snapshot/other",
                body,
                format!("{unknown} PUT /snapshot/other."),
            ),
            (
                Method::Patch,
                "/snapshot",
                body,
                format!("{unknown} PATCH /snapshot."),
            ),
            (
                Method::Get,
                "/snapshot/create",
                None,
                format!("{unknown} GET /snapshot/create."),
            ),
            (
                Method::Put,
                "/snapshot/load",
                None,
                "Empty PUT request.".to_string(),
            ),
        ] {
            assert_eq!(fault(method, path, body), expected, "{method:?} {path}");
        }
    }

    /// `parse`, for a request that must be accepted.
    fn parse(method: Method, path: &str, body: &str) -> Parsed {
        super::super::parse(method, path, Some(body.as_bytes())).unwrap()
    }
}
