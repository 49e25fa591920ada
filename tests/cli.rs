//! The command line and configuration errors: each bad input gets a one-line error naming the
//! field, and Firecracker's exit status, before any VM is created.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{run_kiln, vm_config, TempDir};

const TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_BAD_CONFIGURATION: i32 = 152;
const EXIT_ARG_PARSING: i32 = 153;

/// Runs kiln on `config` and returns (exit code, the `Error:` line of stderr).
fn run_config(config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("cli");
    let path = dir.write("vm.json", config);
    let out = run_kiln(
        &["--no-api", "--config-file", path.to_str().unwrap()],
        TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line in: {stderr}");
    assert!(out.stdout.is_empty(), "no guest output expected");
    (out.status.code(), errors[0].to_string())
}

fn kernel(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "vmlinux",
        common::tiny_kernel::build(false, common::tiny_kernel::Ending::I8042Reset),
    )
}

#[test]
fn missing_kernel_file_is_named() {
    let config = vm_config(
        std::path::Path::new("/nonexistent/vmlinux"),
        "console=ttyS0",
        1,
        128,
    );
    let (code, line) = run_config(&config);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(
        line.contains("kernel_image_path '/nonexistent/vmlinux' cannot be opened"),
        "{line}"
    );
}

#[test]
fn missing_initrd_file_is_named() {
    let dir = TempDir::new("cli");
    let k = kernel(&dir);
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "/nonexistent/initrd"}}}}"#,
        k.display()
    );
    let (code, line) = run_config(&config);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(line.contains("initrd_path '/nonexistent/initrd'"), "{line}");
}

#[test]
fn zero_memory_is_refused() {
    let dir = TempDir::new("cli");
    let (code, line) = run_config(&vm_config(&kernel(&dir), "", 1, 0));
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert_eq!(
        line,
        "Error: Invalid machine-config: mem_size_mib must be greater than 0."
    );
}

#[test]
fn vcpu_count_must_be_1_to_32() {
    let dir = TempDir::new("cli");
    for vcpus in [0, 33] {
        let (code, line) = run_config(&vm_config(&kernel(&dir), "", vcpus, 128));
        assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
        assert_eq!(
            line,
            format!(
                "Error: Invalid machine-config: vcpu_count must be between 1 and 32, not {vcpus}."
            )
        );
    }
}

#[test]
fn malformed_json_is_located() {
    let (code, line) = run_config(r#"{"boot-source": {"kernel_image_path": "/k""#);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(
        line.starts_with("Error: Invalid configuration file: "),
        "{line}"
    );
    assert!(line.contains("line 1 column"), "{line}");
}

#[test]
fn unknown_fields_are_named() {
    let dir = TempDir::new("cli");
    let k = kernel(&dir);
    let in_section = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "kernel_args": "x"}}}}"#,
        k.display()
    );
    let (code, line) = run_config(&in_section);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(line.contains("unknown field `kernel_args`"), "{line}");

    let top_level = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine_config": {{}}}}"#,
        k.display()
    );
    let (code, line) = run_config(&top_level);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(line.contains("unknown field `machine_config`"), "{line}");
}

#[test]
fn wrong_types_are_named() {
    let dir = TempDir::new("cli");
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": "lots"}}}}"#,
        kernel(&dir).display()
    );
    let (code, line) = run_config(&config);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(line.contains("invalid type: string \"lots\""), "{line}");
}

#[test]
fn unimplemented_sections_are_refused_by_name() {
    let dir = TempDir::new("cli");
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "vsock": {{"guest_cid": 3, "uds_path": "/tmp/v.sock"}}}}"#,
        kernel(&dir).display()
    );
    let (code, line) = run_config(&config);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert_eq!(line, "Error: The 'vsock' section is not supported yet.");
}

#[test]
fn a_cpu_config_that_is_not_a_template_is_named() {
    let dir = TempDir::new("cli");
    let with = |cpu_config: &str| {
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "cpu-config": {cpu_config}}}"#,
            kernel(&dir).display()
        )
    };
    let (code, line) = run_config(&with(r#""/nonexistent/template.json""#));
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert_eq!(
        line,
        "Error: Invalid cpu-config: Failed to read the CPU template file \
         /nonexistent/template.json: No such file or directory (os error 2)"
    );
    let (code, line) = run_config(&with(r#"{"cpuid_modifiers": [{"leaf": "1"}]}"#));
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(
        line.contains("untagged enum CustomCpuTemplateOrPath"),
        "{line}"
    );
}

#[test]
fn unreadable_config_file_is_named() {
    let out = run_kiln(
        &["--no-api", "--config-file", "/nonexistent/vm.json"],
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(EXIT_BAD_CONFIGURATION));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Failed to read the config file '/nonexistent/vm.json'"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_153() {
    for args in [
        &["--no-api"][..],
        &["--id", "a/b", "--no-api", "--config-file", "x"],
        &["--frobnicate"],
        &["--level", "loud", "--no-api", "--config-file", "x"],
    ] {
        let out = run_kiln(args, TIMEOUT);
        assert_eq!(out.status.code(), Some(EXIT_ARG_PARSING), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn version_and_help_exit_zero() {
    let out = run_kiln(&["--version"], TIMEOUT);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kiln {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run_kiln(&["--help"], TIMEOUT);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--id",
        "--config-file",
        "--no-api",
        "--boot-timer",
        "--log-path",
        "--level",
        "--version",
        "--help",
        "--start-time-us",
        "--start-time-cpu-us",
        "--parent-cpu-time-us",
        "--module",
        "--mmds-size-limit",
        "--metadata",
        "--enable-pci",
        "--snapshot-version",
        "--describe-snapshot",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn firecracker_flags_for_missing_features_are_refused_by_name() {
    let cases: [(&[&str], &str); 2] = [
        (&["--metadata", "/m.json"], "MMDS"),
        (&["--enable-pci"], "PCIe"),
    ];
    for (args, feature) in cases {
        let out = run_kiln(args, TIMEOUT);
        assert_eq!(out.status.code(), Some(EXIT_ARG_PARSING), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with(&format!("Error: {}: ", args[0])),
            "{stderr}"
        );
        assert!(lines[0].contains(feature), "{stderr}");
    }
}

#[test]
fn firecracker_start_times_become_the_startup_metrics() {
    let dir = TempDir::new("cli");
    let config = dir.write("vm.json", vm_config(&kernel(&dir), "console=ttyS0", 1, 64));
    let metrics = dir.path("metrics.json");
    // As if a jailer had started two seconds ago, its parent having used three of CPU.
    let start = (common::monotonic_us() - 2_000_000).to_string();
    let out = run_kiln(
        &[
            "--id",
            "fc-flags",
            "--start-time-us",
            &start,
            "--start-time-cpu-us",
            "0",
            "--parent-cpu-time-us",
            "3000000",
            "--mmds-size-limit",
            "51200",
            "--no-api",
            "--config-file",
            config.to_str().unwrap(),
            "--metrics-path",
            metrics.to_str().unwrap(),
        ],
        TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("--mmds-size-limit 51200 has no effect"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let wall = line["api_server"]["process_startup_time_us"]
        .as_u64()
        .unwrap();
    assert!((2_000_000..12_000_000).contains(&wall), "{line}");
    let cpu = line["api_server"]["process_startup_time_cpu_us"]
        .as_u64()
        .unwrap();
    assert!(cpu > 3_000_000, "{line}");
}

#[test]
fn module_filters_the_log() {
    let dir = TempDir::new("cli");
    let log = dir.path("kiln.log");
    let config = dir.write("vm.json", vm_config(&kernel(&dir), "console=ttyS0", 1, 64));
    let out = run_kiln(
        &[
            "--no-api",
            "--config-file",
            config.to_str().unwrap(),
            "--log-path",
            log.to_str().unwrap(),
            "--module",
            "kiln::launch",
        ],
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    // From kiln::launch; "Running Kiln" comes from the `kiln` module itself.
    assert!(text.contains("The guest stopped the VM"), "{text}");
    assert!(!text.contains("Running Kiln"), "{text}");
}

#[test]
fn log_path_receives_the_log() {
    let dir = TempDir::new("cli");
    let log = dir.path("kiln.log");
    let config = dir.write("vm.json", vm_config(&kernel(&dir), "console=ttyS0", 1, 64));
    let out = run_kiln(
        &[
            "--no-api",
            "--config-file",
            config.to_str().unwrap(),
            "--id",
            "vm-42",
            "--log-path",
            log.to_str().unwrap(),
            "--level",
            "Debug",
            "--show-level",
        ],
        TIMEOUT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[vm-42:main:INFO] Running Kiln v"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "the log went to the file, not stderr"
    );
}

#[test]
fn a_log_or_metrics_fifo_without_a_reader_is_refused_at_once() {
    let dir = TempDir::new("cli");
    let fifo = dir.path("out.fifo");
    common::mkfifo(&fifo);
    let config = dir.write("vm.json", vm_config(&kernel(&dir), "console=ttyS0", 1, 64));
    for (flag, expected) in [
        ("--log-path", "Error: Failed to open the log file"),
        ("--metrics-path", "Error: Failed to open the metrics file"),
    ] {
        let args = [
            "--no-api",
            "--config-file",
            config.to_str().unwrap(),
            flag,
            fifo.to_str().unwrap(),
        ];
        let out = run_kiln(&args, TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_BAD_CONFIGURATION), "{stderr}");
        let line = format!("{expected} '{}': no process reads the FIFO", fifo.display());
        assert!(stderr.lines().any(|l| l == line), "{stderr}");
    }
}

/// A config with `drives` (JSON array items) over the tiny kernel.
fn with_drives(dir: &TempDir, drives: &[String]) -> String {
    format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "drives": [{}]}}"#,
        kernel(dir).display(),
        drives.join(",")
    )
}

fn drive(id: &str, path: &std::path::Path, root: bool) -> String {
    format!(
        r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {root}, "is_read_only": false}}"#,
        path.display()
    )
}

#[test]
fn drive_errors_are_firecrackers() {
    let dir = TempDir::new("cli");
    let disk = dir.write("disk.img", [0u8; 4096]);
    let cases = [
        (
            vec![drive("a", &disk, false), drive("a", &disk, false)],
            "Error: Invalid drives: drive_id 'a' is used by more than one drive.".to_string(),
        ),
        (
            vec![drive("r1", &disk, true), drive("r2", &disk, true)],
            "Error: Invalid drives: Only one drive can be the root device, but 'r1' and 'r2' both are."
                .to_string(),
        ),
        (
            vec![drive("gone", std::path::Path::new("/nonexistent/disk.img"), false)],
            "Error: Invalid drives: Drive 'gone': path_on_host '/nonexistent/disk.img' cannot be opened: No such file or directory (os error 2)".to_string(),
        ),
        (
            vec![format!(
                r#"{{"drive_id": "rl", "path_on_host": "{}", "is_root_device": false, "rate_limiter": {{"bandwidth": {{"size": 1, "refill_time": 100}}}}}}"#,
                disk.display()
            )],
            "Error: Invalid drives: Drive 'rl': rate_limiter is not supported yet.".to_string(),
        ),
    ];
    for (drives, expected) in cases {
        let (code, line) = run_config(&with_drives(&dir, &drives));
        assert_eq!(code, Some(EXIT_BAD_CONFIGURATION), "{expected}");
        assert_eq!(line, expected);
    }
}

#[test]
fn a_kernel_initrd_drive_or_backing_file_that_is_not_a_file_is_refused_at_once() {
    let dir = TempDir::new("cli");
    let fifo = dir.path("data.fifo");
    common::mkfifo(&fifo);
    let not_a_file = "not a regular file or block device";
    let (code, line) = run_config(&vm_config(&fifo, "console=ttyS0", 1, 64));
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    let expected = format!(
        "kernel_image_path '{}' cannot be opened: it is a FIFO, {not_a_file}",
        fifo.display()
    );
    assert!(line.ends_with(&expected), "{line}");

    let initrd = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "/dev/null"}}}}"#,
        kernel(&dir).display()
    );
    let (code, line) = run_config(&initrd);
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    assert!(
        line.ends_with(&format!("it is a character device, {not_a_file}")),
        "{line}"
    );

    let (code, line) = run_config(&with_drives(&dir, &[drive("data", &fifo, false)]));
    assert_eq!(code, Some(EXIT_BAD_CONFIGURATION));
    let expected = format!(
        "Drive 'data': path_on_host '{}' cannot be opened: it is a FIFO, {not_a_file}",
        fifo.display()
    );
    assert!(line.ends_with(&expected), "{line}");

    // A qcow2 overlay whose raw backing file is the FIFO (made without opening it).
    let overlay = dir.path("overlay.qcow2");
    let status = std::process::Command::new("qemu-img")
        .current_dir(&dir.0)
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "data.fifo",
            "-F",
            "raw",
        ])
        .arg(&overlay)
        .arg("1M")
        .status()
        .expect("qemu-img is required");
    assert!(status.success());
    let (code, line) = run_config(&with_drives(&dir, &[drive("data", &overlay, false)]));
    assert!(code.is_some() && code != Some(0), "{code:?}");
    assert!(
        line.contains(&fifo.display().to_string())
            && line.ends_with(&format!("it is a FIFO, {not_a_file}")),
        "{line}"
    );
}

#[test]
fn the_api_socket_defaults_to_firecrackers_path() {
    // Tools that start a VMM without --api-sock (inside a jail, say) look for
    // /run/firecracker.socket. kiln runs in a mount namespace with its own /run, so the test
    // never touches the host's; the socket is reached through the process's root.
    let mut child = std::process::Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs kiln-test /run && exec \"$0\"",
        ])
        .arg(common::kiln_bin())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock =
        std::path::PathBuf::from(format!("/proc/{}/root/run/firecracker.socket", child.id()));
    common::http::wait_for_socket(&sock, TIMEOUT);
    let response = common::http::request(&sock, "GET", "/", None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body.contains("\"id\":\"anonymous-instance\""),
        "{}",
        response.body
    );
}
