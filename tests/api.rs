//! The HTTP API on the host's /dev/kvm with the tiny guest: configuration before boot,
//! InstanceStart, the instance state, pause and resume, the phase rules, metrics, and the
//! socket rules. The real Linux guest is driven through the API in `linux_api.rs`.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{request, ApiProcess, Response};
use common::tiny_kernel::{self, Ending};
use common::{kiln_bin, TempDir};

/// A kiln serving its API, killed on drop.
fn start_kiln(sock: &Path) -> ApiProcess {
    let args = ["--api-sock", sock.to_str().unwrap(), "--id", "api-test"];
    ApiProcess::start(Path::new(kiln_bin()), &args, sock)
}

fn state(sock: &Path) -> String {
    let r = request(sock, "GET", "/", None);
    assert_eq!(r.status, 200);
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    info["state"].as_str().unwrap().to_string()
}

fn fault(r: &Response) -> String {
    assert_eq!(r.status, 400, "{r:?}");
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    body["fault_message"].as_str().unwrap().to_string()
}

#[test]
fn configure_start_pause_and_resume_through_the_api() {
    let dir = TempDir::new("api");
    let sock = dir.path("api.sock");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
    let metrics = dir.path("metrics.ndjson");
    let _kiln = start_kiln(&sock);

    assert_eq!(state(&sock), "Not started");
    let early = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(
        fault(&early),
        "The requested operation is not supported before starting the microVM."
    );
    let no_kernel = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(
        fault(&no_kernel),
        "Cannot start the microVM: the boot source is not configured."
    );

    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        kernel.display()
    );
    assert_eq!(
        request(&sock, "PUT", "/boot-source", Some(&boot)).status,
        204
    );
    let machine = r#"{"vcpu_count": 2, "mem_size_mib": 64}"#;
    assert_eq!(
        request(&sock, "PUT", "/machine-config", Some(machine)).status,
        204
    );
    let patch = r#"{"mem_size_mib": 96}"#;
    assert_eq!(
        request(&sock, "PATCH", "/machine-config", Some(patch)).status,
        204
    );
    let got = request(&sock, "GET", "/machine-config", None);
    let got: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(
        (got["vcpu_count"].as_u64(), got["mem_size_mib"].as_u64()),
        (Some(2), Some(96))
    );
    let bad = request(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 64}"#),
    );
    assert!(fault(&bad).contains("vcpu_count must be between 1 and 32"));
    let metrics_body = format!(r#"{{"metrics_path": "{}"}}"#, metrics.display());
    assert_eq!(
        request(&sock, "PUT", "/metrics", Some(&metrics_body)).status,
        204
    );
    let config = request(&sock, "GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&config.body).unwrap();
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        kernel.to_str().unwrap()
    );
    let early_flush = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(
        fault(&early_flush),
        "The requested operation is not supported before starting the microVM."
    );

    instance_start(&sock);
    assert_eq!(state(&sock), "Running");
    let late = request(&sock, "PUT", "/boot-source", Some(&boot));
    assert_eq!(
        fault(&late),
        "The requested operation is not supported after starting the microVM."
    );

    assert_eq!(
        request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).status,
        204
    );
    assert_eq!(state(&sock), "Paused");
    assert_eq!(
        request(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).status,
        204
    );
    assert_eq!(state(&sock), "Running");

    let prometheus = request(&sock, "GET", "/metrics", None);
    assert_eq!(prometheus.status, 200);
    assert!(
        prometheus.body.contains("kiln_vcpu_exit_io_out"),
        "{}",
        prometheus.body
    );
    assert!(
        prometheus
            .body
            .contains("kiln_put_api_requests_actions_count "),
        "{}",
        prometheus.body
    );
    assert!(
        prometheus.body.contains("kiln_kiln_api_server_faults "),
        "{}",
        prometheus.body
    );
    let flush = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(flush.status, 204);
    let line = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(line["vcpu"]["exit_io_out"].as_u64().unwrap() > 0, "{line}");
    // InstanceStart and this FlushMetrics at least, in Firecracker's group.
    let actions = line["put_api_requests"]["actions_count"].as_u64().unwrap();
    assert!(actions >= 2, "{line}");
    assert!(line["put_api_requests"]["actions_fails"].is_u64(), "{line}");
    // The last pause and resume, timed in the VMM thread and, around that, in the API thread.
    for what in ["pause_vm", "resume_vm"] {
        let latencies = &line["latencies_us"];
        let vmm = latencies[format!("vmm_{what}")].as_u64().unwrap();
        let api = latencies[what].as_u64().unwrap();
        assert!(vmm > 0 && api >= vmm, "{what}: {line}");
    }
}

#[test]
fn a_socket_in_use_is_refused_and_a_stale_one_replaced() {
    let dir = TempDir::new("api");
    let sock = dir.path("api.sock");
    let _first = start_kiln(&sock);
    let second = Command::new(kiln_bin())
        .args(["--api-sock", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(second.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    drop(_first);
    // The killed process left its socket file behind: the next kiln replaces it.
    assert!(sock.exists());
    let _third = start_kiln(&sock);
    assert_eq!(state(&sock), "Not started");
}

/// `PATCH /drives` under the VMM's seccomp filter, with image locks: naming the drive's own
/// image again (to pick up a new size) reopens it although the drive holds its lock, while an
/// image another kiln (or QEMU) writes is refused with the lock's message.
#[test]
fn patch_drives_reopens_the_drives_own_image_and_refuses_a_locked_one() {
    let dir = TempDir::new("api-patch");
    let sock = dir.path("api.sock");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
    let image = dir.write("disk.img", vec![0u8; 1 << 20]);
    let other = dir.write("other.img", vec![0u8; 1 << 20]);
    let _kiln = start_kiln(&sock);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(
        request(&sock, "PUT", "/boot-source", Some(&boot)).status,
        204
    );
    let drive = |path: &Path| {
        format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}"#,
            path.display()
        )
    };
    assert_eq!(
        request(&sock, "PUT", "/drives/data", Some(&drive(&image))).status,
        204
    );
    instance_start(&sock);

    let patch = |path: &Path| {
        let body = format!(
            r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
            path.display()
        );
        request(&sock, "PATCH", "/drives/data", Some(&body))
    };
    std::fs::write(&image, vec![0u8; 2 << 20]).unwrap();
    let same = patch(&image);
    assert_eq!(same.status, 204, "{same:?}");

    // A second kiln writing the other image holds its lock.
    let sock2 = dir.path("api2.sock");
    let _kiln2 = start_kiln(&sock2);
    assert_eq!(
        request(&sock2, "PUT", "/boot-source", Some(&boot)).status,
        204
    );
    assert_eq!(
        request(&sock2, "PUT", "/drives/data", Some(&drive(&other))).status,
        204
    );
    instance_start(&sock2);
    assert_eq!(
        fault(&patch(&other)),
        format!(
            "Drive 'data': The disk image '{}' is locked: Failed to get \"write\" lock; is another process using the image?",
            other.display()
        )
    );
    // The refused swap left the drive, and kiln, serving.
    assert_eq!(state(&sock), "Running");
    assert_eq!(patch(&image).status, 204);
    // Firecracker's block update counters, per drive and added up.
    for (name, value) in [
        ("kiln_block_data_update_count", 2),
        ("kiln_block_data_update_fails", 1),
        ("kiln_block_update_count", 2),
    ] {
        assert_eq!(counter(&sock, name), value, "{name}");
    }
}

/// A request that must be answered within a second: nothing the API does waits on a file.
fn quick(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Response {
    let started = std::time::Instant::now();
    let r = request(sock, method, path, body);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{method} {path} took {took:?}"
    );
    r
}

/// The value of the Prometheus counter `name` in `GET /metrics`.
fn counter(sock: &Path, name: &str) -> u64 {
    let text = quick(sock, "GET", "/metrics", None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_log_or_metrics_fifo_without_a_reader_is_refused_at_once() {
    let dir = TempDir::new("api-fifo");
    let sock = dir.path("api.sock");
    let fifo = dir.path("log.fifo");
    common::mkfifo(&fifo);
    let _kiln = start_kiln(&sock);
    for (path, body, expected) in [
        (
            "/logger",
            format!(r#"{{"log_path": "{}"}}"#, fifo.display()),
            "Failed to open the log file",
        ),
        (
            "/metrics",
            format!(r#"{{"metrics_path": "{}"}}"#, fifo.display()),
            "Failed to open the metrics file",
        ),
    ] {
        let message = fault(&quick(&sock, "PUT", path, Some(&body)));
        assert!(message.contains(expected), "{message}");
        assert!(message.ends_with("no process reads the FIFO"), "{message}");
        // The API still serves.
        assert_eq!(state(&sock), "Not started");
    }
}

#[test]
fn a_log_and_metrics_fifo_whose_reader_never_reads_drops_lines_and_blocks_nothing() {
    let dir = TempDir::new("api-fifo-full");
    let sock = dir.path("api.sock");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
    let (log, metrics) = (dir.path("log.fifo"), dir.path("metrics.fifo"));
    common::mkfifo(&log);
    common::mkfifo(&metrics);
    let _log_reader = common::idle_fifo_reader(&log);
    let _metrics_reader = common::idle_fifo_reader(&metrics);
    let _kiln = start_kiln(&sock);

    let logger = format!(r#"{{"log_path": "{}", "level": "Info"}}"#, log.display());
    assert_eq!(quick(&sock, "PUT", "/logger", Some(&logger)).status, 204);
    let sink = format!(r#"{{"metrics_path": "{}"}}"#, metrics.display());
    assert_eq!(quick(&sock, "PUT", "/metrics", Some(&sink)).status, 204);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        kernel.display()
    );
    assert_eq!(quick(&sock, "PUT", "/boot-source", Some(&boot)).status, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(request(&sock, "PUT", "/actions", Some(start)).status, 204);

    // Each request logs a line: far more than a 64 KiB pipe holds.
    for _ in 0..1500 {
        assert_eq!(quick(&sock, "GET", "/", None).status, 200);
    }
    assert!(counter(&sock, "kiln_logger_missed_log_count") > 0);
    // Each flush writes a metrics line, until the pipe is full; then they are dropped.
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    let mut dropped = 0;
    for _ in 0..500 {
        let r = quick(&sock, "PUT", "/actions", Some(flush));
        if r.status != 204 {
            assert_eq!(
                fault(&r),
                "The metrics line was dropped: the metrics file or FIFO did not take it."
            );
            dropped += 1;
        }
    }
    assert!(dropped > 0);
    assert_eq!(counter(&sock, "kiln_logger_missed_metrics_count"), dropped);
    // The VM still runs and can be paused.
    assert_eq!(state(&sock), "Running");
    let pause = r#"{"state": "Paused"}"#;
    assert_eq!(quick(&sock, "PATCH", "/vm", Some(pause)).status, 204);
    assert_eq!(state(&sock), "Paused");
}

#[test]
fn a_drive_that_is_a_fifo_is_refused_at_once() {
    let dir = TempDir::new("api-drive-fifo");
    let sock = dir.path("api.sock");
    let fifo = dir.path("disk.fifo");
    common::mkfifo(&fifo);
    let _kiln = start_kiln(&sock);
    let body = format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": true}}"#,
        fifo.display()
    );
    let message = fault(&quick(&sock, "PUT", "/drives/rootfs", Some(&body)));
    assert_eq!(
        message,
        format!(
            "Drive 'rootfs': path_on_host '{}' cannot be opened: it is a FIFO, not a regular file \
             or block device",
            fifo.display()
        )
    );
    assert_eq!(state(&sock), "Not started");
}

/// A guest that prints without end while nobody reads kiln's stdout or stderr: the console
/// loses bytes instead of blocking the vCPU thread in a write to the full pipe, so the vCPU
/// still answers pause, resume and the metrics flush.
#[test]
fn a_console_nobody_reads_never_blocks_the_vcpu() {
    let dir = TempDir::new("api-console");
    let sock = dir.path("api.sock");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::PrintForever));
    let mut command = Command::new(kiln_bin());
    command
        .args(["--api-sock", sock.to_str().unwrap(), "--id", "api-console"])
        .args(["--level", "Debug"])
        .stdin(Stdio::null());
    // Pipes that are never read, of one page each, so that the guest fills them at once.
    let (_stdout_reader, stdout) = small_pipe();
    let (_stderr_reader, stderr) = small_pipe();
    command.stdout(stdout).stderr(stderr);
    let _kiln = ApiProcess::spawn(command, &sock);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        kernel.display()
    );
    assert_eq!(
        request(&sock, "PUT", "/boot-source", Some(&boot)).status,
        204
    );
    instance_start(&sock);
    // Far more than 64 KiB of console output by now.
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        let pause = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
        assert_eq!(pause.status, 204, "{pause:?}");
        assert_eq!(state(&sock), "Paused");
        let resume = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
        assert_eq!(resume.status, 204, "{resume:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(state(&sock), "Running");
}

/// Starts the configured microVM, which must succeed.
fn instance_start(sock: &Path) {
    let start = request(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(start.status, 204, "{start:?}");
}

/// A pipe that holds one page: (read end, write end).
fn small_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ only resizes the pipe of a descriptor we own.
    assert!(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 0);
    (read, write)
}
