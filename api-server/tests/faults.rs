//! Bad requests over a real socket: each is answered 400 with a fault, reaches no VMM, and
//! leaves the server serving.

mod common;

use std::io::Write;

use common::{read_reply, Api};

const SERDE: &str = "An error occurred when deserializing the json body of a request: ";

/// Sends each bad request and checks its fault, then that the VMM saw none of them.
fn assert_faults(api: &Api, cases: &[(&str, &str, &str, &str)]) {
    for (method, path, body, expected) in cases {
        let reply = api.call(method, path, Some(body));
        assert_eq!(reply.status, 400, "{method} {path} {body}: {reply:?}");
        let fault = reply.fault();
        assert!(fault.contains(expected), "{method} {path} {body}: {fault}");
    }
    assert!(api.actions().is_empty(), "{:?}", api.actions());
    assert_eq!(api.call("GET", "/version", None).status, 200);
}

#[test]
fn malformed_json() {
    let api = Api::start("malformed");
    assert_faults(
        &api,
        &[
            ("PUT", "/boot-source", "{", "EOF while parsing an object"),
            (
                "PUT",
                "/actions",
                "action_type=InstanceStart",
                "expected value",
            ),
            ("PATCH", "/vm", r#"{"state": "Paused",}"#, "trailing comma"),
            ("PUT", "/machine-config", "\u{0}\u{1}", SERDE),
            ("PUT", "/logger", "[]", "invalid type: sequence"),
        ],
    );
}

#[test]
fn wrong_types() {
    let api = Api::start("types");
    assert_faults(
        &api,
        &[
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": "2", "mem_size_mib": 128}"#,
                "invalid type: string \"2\", expected u8",
            ),
            (
                "PUT",
                "/drives/a",
                r#"{"drive_id": "a", "is_root_device": 1}"#,
                "invalid type: integer `1`, expected a boolean",
            ),
            (
                "PATCH",
                "/vm",
                r#"{"state": "Stopped"}"#,
                "unknown variant `Stopped`",
            ),
            ("PUT", "/actions", r#"{"action_type": null}"#, SERDE),
            ("PUT", "/boot-source", "42", "invalid type: integer `42`"),
        ],
    );
}

#[test]
fn unknown_fields() {
    let api = Api::start("unknown");
    assert_faults(
        &api,
        &[
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}"#,
                "unknown field `cpus`",
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart", "force": true}"#,
                "unknown field `force`",
            ),
            (
                "PATCH",
                "/drives/a",
                r#"{"drive_id": "a", "is_read_only": true}"#,
                "unknown field `is_read_only`",
            ),
        ],
    );
}

#[test]
fn missing_required_fields() {
    let api = Api::start("missing");
    assert_faults(
        &api,
        &[
            (
                "PUT",
                "/boot-source",
                "{}",
                "missing field `kernel_image_path`",
            ),
            ("PUT", "/metrics", "{}", "missing field `metrics_path`"),
            (
                "PUT",
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0"}"#,
                "missing field `host_dev_name`",
            ),
            ("PATCH", "/machine-config", "{}", "Empty PATCH request."),
            (
                "PUT",
                "/snapshot/create",
                r#"{"snapshot_path": "/s"}"#,
                "missing field `mem_file_path`",
            ),
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "/s"}"#,
                "An error occurred when deserializing the json body of a request: missing \
                 field: either `mem_backend` or `mem_file_path` is required.",
            ),
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m",
                    "mem_backend": {"backend_path": "/m", "backend_type": "File"}}"#,
                "An error occurred when deserializing the json body of a request: too many \
                 fields: either `mem_backend` or `mem_file_path` exclusively is required.",
            ),
        ],
    );
}

#[test]
fn snapshot_requests_kiln_cannot_serve() {
    let api = Api::start("snapshot-refused");
    assert_faults(
        &api,
        &[
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m",
                    "vsock_override": {"uds_path": "/v.sock"}}"#,
                "vsock_override is not supported yet.",
            ),
            (
                "PUT",
                "/snapshot/other",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
                "Invalid request method and/or path: PUT /snapshot/other.",
            ),
            (
                "PUT",
                "/snapshot",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
                "Missing snapshot operation type.",
            ),
        ],
    );
}

#[test]
fn ids_in_paths() {
    let api = Api::start("ids");
    let drive = |id: &str| format!(r#"{{"drive_id": "{id}", "is_root_device": false}}"#);
    let invalid = "API Resource IDs can only contain";
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("PUT", "/drives/..".into(), drive(".."), invalid),
        ("PUT", "/drives/%2e%2e".into(), drive("%2e%2e"), invalid),
        ("PUT", "/drives/a%2Fb".into(), drive("a/b"), invalid),
        ("PUT", "/drives/..%2F..%2Fetc".into(), drive("x"), invalid),
        ("PATCH", "/drives/a.b".into(), drive("a.b"), invalid),
        (
            "PUT",
            "/drives/../../etc/passwd".into(),
            drive("x"),
            "Invalid request method and/or path",
        ),
        (
            "PUT",
            "/drives/".into(),
            drive("a"),
            "The ID cannot be empty.",
        ),
        (
            "PUT",
            "/drives/a".into(),
            drive("b"),
            "The id from the path does not match the id from the body!",
        ),
        (
            "PUT",
            "/network-interfaces/a".into(),
            r#"{"iface_id": "b", "host_dev_name": "t"}"#.into(),
            "The id from the path [a] does not match the id from the body [b]!",
        ),
    ];
    let borrowed: Vec<_> = cases
        .iter()
        .map(|(m, p, b, e)| (*m, p.as_str(), b.as_str(), *e))
        .collect();
    assert_faults(&api, &borrowed);
}

#[test]
fn unknown_paths_methods_and_bodies() {
    let api = Api::start("paths");
    let reply = api.call("GET", "/nope", None);
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.fault(),
        "Invalid request method and/or path: GET /nope."
    );
    let reply = api.call("DELETE", "/drives/a", None);
    assert_eq!(
        reply.fault(),
        "Invalid request method and/or path: DELETE /drives/a."
    );
    assert_eq!(
        api.call("PUT", "/actions", None).fault(),
        "Empty PUT request."
    );
    assert_eq!(
        api.call("PATCH", "/vm", None).fault(),
        "Empty PATCH request."
    );
    assert_eq!(
        api.call("GET", "/", Some("{}")).fault(),
        "GET request cannot have a body."
    );
    assert!(api.actions().is_empty());
}

#[test]
fn bodies_over_the_limit_are_refused() {
    let api = Api::start("huge");
    let mut stream = api.connect();
    let len = api_server::DEFAULT_MAX_PAYLOAD + 1;
    let head = format!("PUT /boot-source HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server answers as soon as it reads the header; the rest may or may not be read.
    let _ = stream.write_all(&vec![b' '; len]);
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains(&format!(
            "Request payload with size {len} is larger than the limit of 51200 allowed by server."
        )),
        "{}",
        reply.body
    );
    // A body at the limit is read and parsed.
    let at_limit = format!(
        r#"{{"kernel_image_path": "/k", "boot_args": "{}"}}"#,
        "x".repeat(api_server::DEFAULT_MAX_PAYLOAD - 44)
    );
    assert_eq!(at_limit.len(), api_server::DEFAULT_MAX_PAYLOAD);
    assert_eq!(api.call("PUT", "/boot-source", Some(&at_limit)).status, 204);
    assert_eq!(api.actions().len(), 1);
}
