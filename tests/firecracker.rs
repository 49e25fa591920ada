//! Kiln as a drop-in for Firecracker v1.16.1, checked against Firecracker's own outputs and, where
//! its binaries are beside the checkout, against Firecracker itself: Firecracker's exported
//! config boots in kiln and kiln's in Firecracker, and the API details SDKs rely on answer as
//! Firecracker's do.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::firecracker::{anchor, vm_config};
use common::http::{request, ApiProcess};
use common::tiny_kernel::{self, Ending};
use common::{kiln_bin, wait_with_timeout, TempDir};

const TIMEOUT: Duration = Duration::from_secs(30);
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// The tiny guest's kernel (it ends with an i8042 reset) and a disk for the root drive.
fn tiny_guest(dir: &TempDir) -> (PathBuf, PathBuf) {
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::I8042Reset));
    let drive = dir.write("rootfs.img", vec![0u8; 1 << 20]);
    (kernel, drive)
}

/// Runs `program --no-api --config-file config` and checks that the tiny guest ran to its end.
fn boots(program: &Path, config: &Path) {
    let child = Command::new(program)
        .args(["--no-api", "--config-file", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} on {}:\nstdout: {stdout}\nstderr: {}",
        program.display(),
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("TINY-DONE"), "{stdout}");
}

/// A JSON value's type, as a name.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// An object's keys with the types of their values.
fn shape(value: &serde_json::Value) -> BTreeMap<String, &'static str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .iter()
        .map(|(k, v)| (k.clone(), kind(v)))
        .collect()
}

#[test]
fn firecrackers_exported_config_boots_in_kiln() {
    let dir = TempDir::new("fc-config");
    let (kernel, drive) = tiny_guest(&dir);
    let config = dir.write("vm.json", vm_config(&kernel, &drive).to_string());
    boots(Path::new(kiln_bin()), &config);
}

#[test]
fn kilns_exported_config_is_firecrackers_and_boots_in_both() {
    let dir = TempDir::new("fc-export");
    let (kernel, drive) = tiny_guest(&dir);
    let sock = dir.path("api.sock");
    let _kiln = ApiProcess::start(
        Path::new(kiln_bin()),
        &["--api-sock", sock.to_str().unwrap()],
        &sock,
    );
    let puts = [
        (
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1"}}"#,
                kernel.display()
            ),
        ),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}"#.to_string(),
        ),
        (
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true}}"#,
                drive.display()
            ),
        ),
    ];
    for (path, body) in &puts {
        let r = request(&sock, "PUT", path, Some(body));
        assert_eq!(r.status, 204, "{path}: {r:?}");
    }
    let exported = request(&sock, "GET", "/vm/config", None);
    let exported: serde_json::Value = serde_json::from_str(&exported.body).unwrap();
    let firecrackers = vm_config(&kernel, &drive);
    assert_eq!(shape(&exported), shape(&firecrackers));
    for section in ["boot-source", "machine-config"] {
        assert_eq!(shape(&exported[section]), shape(&firecrackers[section]));
    }
    assert_eq!(
        shape(&exported["drives"][0]),
        shape(&firecrackers["drives"][0])
    );
    // The same VM, so the same body, value for value.
    assert_eq!(exported, firecrackers);

    let config = dir.write("kiln-vm.json", exported.to_string());
    boots(Path::new(kiln_bin()), &config);
    if let Some(firecracker) = anchor("firecracker", "kilns_exported_config_boots_in_firecracker") {
        boots(&firecracker, &config);
    }
}

/// What an SDK reads before boot: versions, the machine config, and a refused flush.
fn preboot_answers(sock: &Path) -> Vec<(u16, serde_json::Value)> {
    let machine = r#"{"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "None"}"#;
    assert_eq!(
        request(sock, "PUT", "/machine-config", Some(machine)).status,
        204
    );
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    [
        request(sock, "GET", "/version", None),
        request(sock, "GET", "/machine-config", None),
        request(sock, "PUT", "/actions", Some(flush)),
    ]
    .into_iter()
    .map(|r| (r.status, serde_json::from_str(&r.body).unwrap()))
    .collect()
}

#[test]
fn api_details_answer_as_firecrackers() {
    let dir = TempDir::new("fc-api");
    let sock = dir.path("kiln.sock");
    let _kiln = ApiProcess::start(
        Path::new(kiln_bin()),
        &["--api-sock", sock.to_str().unwrap()],
        &sock,
    );
    let kiln = preboot_answers(&sock);
    assert_eq!(kiln[0].1["firecracker_version"], "1.16.1");
    assert!(kiln[1].1.get("cpu_template").is_none(), "{}", kiln[1].1);
    assert_eq!(
        kiln[2],
        (
            400,
            serde_json::json!({ "fault_message": NOT_BEFORE_START })
        )
    );
    let info = request(&sock, "GET", "/", None);
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["firecracker_version"], "1.16.1");

    let Some(firecracker) = anchor("firecracker", "api_details_answer_as_firecrackers") else {
        return;
    };
    let fc_sock = dir.path("fc.sock");
    let _fc = ApiProcess::start(
        &firecracker,
        &["--api-sock", fc_sock.to_str().unwrap()],
        &fc_sock,
    );
    let theirs = preboot_answers(&fc_sock);
    // Kiln's version body names Kiln too; Firecracker's version is the same.
    assert_eq!(
        kiln[0].1["firecracker_version"],
        theirs[0].1["firecracker_version"]
    );
    assert_eq!(kiln[1..], theirs[1..]);
    let fc_info = request(&fc_sock, "GET", "/", None);
    let fc_info: serde_json::Value = serde_json::from_str(&fc_info.body).unwrap();
    for key in shape(&fc_info).keys() {
        assert!(info.get(key).is_some(), "GET / lacks {key}: {info}");
    }
}
