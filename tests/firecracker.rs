//! Kiln as a drop-in for Firecracker v1.16.1, checked against Firecracker's own outputs and, where
//! its binaries are beside the checkout, against Firecracker itself: Firecracker's exported
//! config boots in kiln and kiln's in Firecracker, `--version` answers as Firecracker's when
//! kiln is installed under its name, Firecracker's jailer execs kiln, and the API details SDKs
//! rely on answer as Firecracker's do.

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
use common::jailer::{static_kiln, JailTest, GID, UID};
use common::tiny_kernel::{self, Ending};
use common::{kiln_bin, monotonic_us, run_kiln, wait_with_timeout, TempDir};

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

#[test]
fn version_answers_as_firecracker_under_its_name() {
    let dir = TempDir::new("fc-version");
    let installed = dir.path("firecracker");
    std::os::unix::fs::symlink(kiln_bin(), &installed).unwrap();
    let out = Command::new(&installed).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(line.starts_with("Firecracker v1.16.1 "), "{line}");
    assert!(line.contains("Kiln"), "{line}");
    let own = run_kiln(&["--version"], TIMEOUT);
    assert_eq!(
        String::from_utf8_lossy(&own.stdout).trim(),
        format!("kiln {}", env!("CARGO_PKG_VERSION"))
    );
    if let Some(firecracker) = anchor(
        "firecracker",
        "version_answers_as_firecracker_under_its_name",
    ) {
        let theirs = Command::new(firecracker).arg("--version").output().unwrap();
        let theirs = String::from_utf8_lossy(&theirs.stdout);
        let first = theirs.lines().next().unwrap();
        assert!(line.starts_with(first), "{line} vs {first}");
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

#[test]
fn firecrackers_jailer_execs_kiln() {
    let Some(jailer) = anchor("jailer", "firecrackers_jailer_execs_kiln") else {
        return;
    };
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("firecrackers_jailer_execs_kiln: skipped, Firecracker's jailer needs root");
        return;
    }
    let jail = JailTest::new("fc-jailer");
    let id = format!("fc-jailer-{}", std::process::id());
    // SDKs place the kernel and the config in the jail before they start the jailer.
    let root = jail.root(&id);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("vmlinux"),
        tiny_kernel::build(false, Ending::I8042Reset),
    )
    .unwrap();
    let config = common::vm_config(Path::new("/vmlinux"), "console=ttyS0", 1, 64);
    std::fs::write(root.join("vm.json"), config).unwrap();
    // kiln runs as UID and cannot create files in the root-owned jail.
    let metrics = root.join("metrics.json");
    std::fs::write(&metrics, "").unwrap();
    std::os::unix::fs::chown(&metrics, Some(UID), Some(GID)).unwrap();

    let child = Command::new(jailer)
        .args(["--id", &id, "--exec-file"])
        .arg(static_kiln())
        .args(["--uid", &UID.to_string(), "--gid", &GID.to_string()])
        .arg("--chroot-base-dir")
        .arg(&jail.base.0)
        .args(["--parent-cgroup", &jail.parent_cgroup])
        .args(["--", "--no-api", "--config-file", "/vm.json"])
        .args(["--metrics-path", "/metrics.json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = monotonic_us();
    let out = wait_with_timeout(child, TIMEOUT);
    let elapsed = monotonic_us() - started;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.ends_with("TINY-DONE\n"), "{stdout}");
    // The jailer's start times reached kiln's metrics.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let startup = line["api_server"]["process_startup_time_us"]
        .as_u64()
        .unwrap();
    assert!(
        startup > 0 && startup < elapsed,
        "{startup} of {elapsed}: {line}"
    );
    assert!(
        line["api_server"]["process_startup_time_cpu_us"]
            .as_u64()
            .unwrap()
            > 0
    );
}
