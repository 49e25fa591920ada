//! Seccomp confinement: a forbidden syscall under the built-in vCPU filter ends the process as
//! in Firecracker (one log line naming the syscall, a last metrics line, status 148), an
//! allowed one goes through; a running kiln has a filter on every thread (`Seccomp: 2`);
//! `--no-seccomp` and `--seccomp-filter` change that, and a bad filter file is one error line.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{request, wait_for_socket};
use common::tiny_kernel::{self, Ending};
use common::{kiln_bin, run_kiln, vm_config, TempDir};
use vmm::logger::LoggerConfig;
use vmm::seccomp::{SeccompFilters, ThreadKind};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Firecracker's generic error status, which it also gives for a bad filter file.
const EXIT_GENERIC_ERROR: i32 = 1;
const EXIT_ARG_PARSING: i32 = 153;
/// Firecracker's status when a seccomp filter trapped a syscall.
const EXIT_BAD_SYSCALL: i32 = 148;

/// Tells the re-executed test binary which syscall to make under the vCPU filter.
const CHILD_ENV: &str = "KILN_SECCOMP_TEST_CHILD";
/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: i64 = 0xae80;
/// `_IO(KVMIO, 0x01)`.
const KVM_CREATE_VM: i64 = 0xae01;

/// The body of the child process: not a test of its own (it returns at once without
/// [`CHILD_ENV`]), but what the tests below re-execute this binary to run. It installs the
/// built-in vCPU filter on a new thread, as a vCPU thread does, and makes the syscall it is
/// told to.
#[test]
fn child_under_the_vcpu_filter() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (nr, arg0, arg1) = match what.as_str() {
        // What a vCPU thread does all the time: KVM_RUN (on a bad fd, so it fails cleanly).
        "allowed" => (libc::SYS_ioctl, -1, KVM_RUN),
        // An ioctl a vCPU thread never makes: KVM_CREATE_VM.
        "forbidden-ioctl" => (libc::SYS_ioctl, -1, KVM_CREATE_VM),
        // A syscall no vCPU thread makes: opening a socket.
        "forbidden-socket" => (
            libc::SYS_socket,
            i64::from(libc::AF_INET),
            i64::from(libc::SOCK_STREAM),
        ),
        // What glibc does when a thread frees much of its memory: it trims its arena.
        "malloc-trim" => (libc::SYS_ioctl, -1, KVM_RUN),
        other => panic!("unknown child mode {other}"),
    };
    // What kiln does first, before any thread exists.
    vmm::seccomp::settle_allocator();
    let logger = LoggerConfig {
        instance_id: "seccomp-test",
        level: vmm::logger::parse_level("Info").unwrap(),
        show_level: false,
        show_log_origin: false,
        path: None,
        module: None,
    };
    vmm::logger::init(&logger).unwrap();
    vmm::fatal_signals::install(std::sync::Arc::new(vmm::metrics::Metrics::default())).unwrap();
    let filters = SeccompFilters::builtin().unwrap();
    std::thread::spawn(move || {
        filters.apply(ThreadKind::Vcpu).unwrap();
        if what == "malloc-trim" {
            churn_the_heap();
        }
        // SAFETY: the arguments are integers (an invalid fd for the ioctls); none of these
        // calls touches the memory of this process.
        let rc = unsafe { libc::syscall(nr, arg0, arg1, 0) };
        assert_eq!(rc, -1);
    })
    .join()
    .unwrap();
}

/// Allocates and frees enough below the mmap threshold that glibc shrinks the heap of the
/// calling thread's arena: the first shrink reads `/proc/sys/vm/overcommit_memory`.
fn churn_the_heap() {
    let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
    assert_eq!(blocks.len(), 256);
    drop(blocks);
}

/// Runs [`child_under_the_vcpu_filter`] in a new process, making syscall `what`. On the test
/// harness's main thread, so that no thread exists before the body starts, as in kiln.
fn run_child(what: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_under_the_vcpu_filter",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, what)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_forbidden_syscall_under_the_vcpu_filter_ends_the_process_with_status_148() {
    for (what, nr) in [
        ("forbidden-ioctl", libc::SYS_ioctl),
        ("forbidden-socket", libc::SYS_socket),
    ] {
        let out = run_child(what);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_BAD_SYSCALL),
            "{what}: {:?}\n{stderr}",
            out.status
        );
        let line = format!("Shutting down VM after intercepting a bad syscall ({nr}).");
        assert!(stderr.contains(&line), "{what}: no '{line}' in:\n{stderr}");
    }
}

#[test]
fn an_allowed_syscall_under_the_vcpu_filter_does_not_kill() {
    let out = run_child("allowed");
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    // The child really ran the body, not zero tests.
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn a_thread_that_frees_much_memory_under_its_filter_lives_on() {
    let out = run_child("malloc-trim");
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// The `Seccomp:` mode of every kiln thread of `pid`, by thread name. KVM's own kernel
/// threads in the process (`kvm-nx-lpage-recovery`) run no user code and are left out.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        let name = field("Name:");
        if name.starts_with("kiln") {
            modes.push((name, field("Seccomp:")));
        }
    }
    modes.sort();
    modes
}

/// The process-wide `Seccomp:` line of `/proc/PID/status`: the main thread's mode.
fn process_seccomp_mode(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap()
        .trim()
        .to_string()
}

/// A kiln that runs a guest which halts forever; killed on drop.
struct Running {
    child: Child,
    _dir: TempDir,
}

impl Running {
    /// Boots the halting tiny guest with `args` and returns once its output shows it runs.
    fn boot(args: &[&str]) -> Self {
        let dir = TempDir::new("seccomp");
        let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
        let config = dir.write("vm.json", vm_config(&kernel, "console=ttyS0", 2, 64));
        let mut child = Command::new(kiln_bin())
            .args(["--no-api", "--config-file", config.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // The guest prints this after its first instructions, so every filter is in place.
        assert!(
            lines.any(|l| l.unwrap() == "TINY-DONE"),
            "the guest did not run"
        );
        Self { child, _dir: dir }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_thread_of_a_running_kiln_is_filtered() {
    let kiln = Running::boot(&[]);
    let pid = kiln.child.id();
    assert_eq!(process_seccomp_mode(pid), "2");
    let modes = seccomp_modes(pid);
    let expected = [("kiln", "2"), ("kiln_vcpu0", "2"), ("kiln_vcpu1", "2")];
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect();
    assert_eq!(modes, expected);
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    let kiln = Running::boot(&["--no-seccomp"]);
    let modes = seccomp_modes(kiln.child.id());
    assert_eq!(modes.len(), 3, "{modes:?}");
    assert!(modes.iter().all(|(_, mode)| mode == "0"), "{modes:?}");
}

#[test]
fn the_api_thread_is_filtered_before_it_serves_and_the_vmm_thread_once_the_vm_runs() {
    let dir = TempDir::new("seccomp-api");
    let sock = dir.path("api.sock");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
    let child = Command::new(kiln_bin())
        .args(["--api-sock", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kiln = Running { child, _dir: dir };
    let pid = kiln.child.id();
    wait_for_socket(&sock, Duration::from_secs(10));
    // An answer means the API thread serves, so it has installed its filter.
    assert_eq!(request(&sock, "GET", "/", None).status, 200);
    let modes = seccomp_modes(pid);
    let mode = |name: &str| {
        modes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
    };
    assert_eq!(mode("kiln_api").as_deref(), Some("2"), "{modes:?}");
    // Before InstanceStart the VMM thread still builds the VM, as in Firecracker.
    assert_eq!(mode("kiln").as_deref(), Some("0"), "{modes:?}");

    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        kernel.display()
    );
    assert_eq!(
        request(&sock, "PUT", "/boot-source", Some(&boot)).status,
        204
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(request(&sock, "PUT", "/actions", Some(start)).status, 204);
    let modes = seccomp_modes(pid);
    assert_eq!(modes.len(), 3, "{modes:?}");
    assert!(modes.iter().all(|(_, mode)| mode == "2"), "{modes:?}");
    assert_eq!(process_seccomp_mode(pid), "2");
}

/// Compiled filters in the `--seccomp-filter` format, one program per thread kind.
fn filter_file(dir: &TempDir, programs: &[(&str, &[[u8; 8]])]) -> std::path::PathBuf {
    let mut bytes = (programs.len() as u64).to_le_bytes().to_vec();
    for (kind, program) in programs {
        bytes.extend((kind.len() as u64).to_le_bytes());
        bytes.extend(kind.as_bytes());
        bytes.extend((program.len() as u64).to_le_bytes());
        for insn in *program {
            bytes.extend(insn);
        }
    }
    dir.write("filters.bpf", bytes)
}

/// `BPF_RET | BPF_K` with return value `k`.
fn ret(k: u32) -> [u8; 8] {
    let mut insn = [0x06, 0, 0, 0, 0, 0, 0, 0];
    insn[4..].copy_from_slice(&k.to_le_bytes());
    insn
}

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;

/// Runs kiln without its API on a tiny guest that resets, under the filter file `filters`,
/// with `args` added.
fn tiny_guest_under(dir: &TempDir, filters: &Path, args: &[&str]) -> std::process::Output {
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::I8042Reset));
    let config = dir.write("vm.json", vm_config(&kernel, "console=ttyS0", 1, 64));
    let mut all = vec![
        "--no-api",
        "--config-file",
        config.to_str().unwrap(),
        "--seccomp-filter",
        filters.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    run_kiln(&all, TIMEOUT)
}

/// A program that traps syscall `nr` and allows every other.
fn trap_only(nr: i64) -> [[u8; 8]; 4] {
    let insn = |code: u16, jt: u8, jf: u8, k: u32| {
        let mut insn = [0; 8];
        insn[..2].copy_from_slice(&code.to_le_bytes());
        insn[2] = jt;
        insn[3] = jf;
        insn[4..].copy_from_slice(&k.to_le_bytes());
        insn
    };
    [
        // BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr
        insn(0x20, 0, 0, 0),
        // BPF_JMP | BPF_JEQ | BPF_K: the next instruction for `nr`, else the one after it
        insn(0x15, 0, 1, nr as u32),
        ret(SECCOMP_RET_TRAP),
        ret(SECCOMP_RET_ALLOW),
    ]
}

#[test]
fn a_trapped_syscall_ends_kiln_with_firecrackers_status_log_line_and_metrics() {
    let dir = TempDir::new("seccomp-trap");
    // A vCPU thread's first ioctl (KVM_RUN) is trapped.
    let file = filter_file(
        &dir,
        &[
            ("vmm", &[]),
            ("api", &[]),
            ("vcpu", &trap_only(libc::SYS_ioctl)),
        ],
    );
    let metrics = dir.path("metrics.ndjson");
    let out = tiny_guest_under(&dir, &file, &["--metrics-path", metrics.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_BAD_SYSCALL), "{stderr}");
    let line = format!(
        "Shutting down VM after intercepting a bad syscall ({}).",
        libc::SYS_ioctl
    );
    assert!(stderr.contains(&line), "no '{line}' in:\n{stderr}");
    assert!(out.stdout.is_empty(), "the guest must not have run");
    let written = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(written.lines().last().expect("a metrics line")).unwrap();
    assert_eq!(last["seccomp"]["num_faults"], 1, "{last}");
    assert_eq!(last["vmm"]["panic_count"], 0, "{last}");
}

#[test]
fn a_custom_filter_file_replaces_the_builtin_filters() {
    let dir = TempDir::new("seccomp-custom");
    let allow = [ret(SECCOMP_RET_ALLOW)];
    let file = filter_file(&dir, &[("vmm", &allow), ("api", &allow), ("vcpu", &allow)]);
    let kiln = Running::boot(&["--seccomp-filter", file.to_str().unwrap()]);
    assert_eq!(process_seccomp_mode(kiln.child.id()), "2");

    // A vCPU filter that kills on the first syscall: the VM dies as soon as a vCPU thread is
    // confined.
    let kill = [ret(SECCOMP_RET_KILL_PROCESS)];
    let file = filter_file(&dir, &[("vmm", &[]), ("api", &[]), ("vcpu", &kill)]);
    let out = tiny_guest_under(&dir, &file, &[]);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}", out.status);
    assert!(out.stdout.is_empty(), "the guest must not have run");
}

/// Runs kiln with `args` on a tiny guest and returns (exit code, stderr's `Error:` line).
fn failed_start(dir: &TempDir, args: &[&str]) -> (Option<i32>, String) {
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::I8042Reset));
    let config = dir.write("vm.json", vm_config(&kernel, "console=ttyS0", 1, 64));
    let mut all = vec!["--no-api", "--config-file", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_kiln(&all, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_lowercase().starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line in: {stderr}");
    assert!(out.stdout.is_empty(), "the guest must not have run");
    (out.status.code(), errors[0].to_string())
}

#[test]
fn a_bad_filter_file_is_one_error_line_and_the_generic_exit_status() {
    let dir = TempDir::new("seccomp-bad");
    let garbage = dir.write("garbage.bpf", "not a filter");
    let (code, line) = failed_start(&dir, &["--seccomp-filter", garbage.to_str().unwrap()]);
    assert_eq!(code, Some(EXIT_GENERIC_ERROR));
    assert_eq!(
        line,
        "Error: The seccomp filters are not a compiled filter map: it ends too early."
    );

    let allow = [ret(SECCOMP_RET_ALLOW)];
    let no_vcpu = filter_file(&dir, &[("vmm", &allow), ("api", &allow)]);
    let (code, line) = failed_start(&dir, &["--seccomp-filter", no_vcpu.to_str().unwrap()]);
    assert_eq!(code, Some(EXIT_GENERIC_ERROR));
    assert_eq!(
        line,
        "Error: The seccomp filters have no program for the 'vcpu' threads."
    );

    let missing = Path::new("/nonexistent/filters.bpf");
    let (code, line) = failed_start(&dir, &["--seccomp-filter", missing.to_str().unwrap()]);
    assert_eq!(code, Some(EXIT_GENERIC_ERROR));
    assert!(
        line.starts_with(
            "Error: Failed to read the seccomp filter file '/nonexistent/filters.bpf': "
        ),
        "{line}"
    );

    let (code, line) = failed_start(
        &dir,
        &[
            "--no-seccomp",
            "--seccomp-filter",
            garbage.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(EXIT_ARG_PARSING));
    assert!(line.contains("cannot be used with"), "{line}");
}

/// A kiln serving its API under the built-in filters, killed on drop.
struct Served {
    child: Child,
    sock: std::path::PathBuf,
    dir: TempDir,
}

impl Served {
    /// Starts kiln with its API; with `config`, it boots that VM at once and returns once the
    /// tiny guest printed, so that every filter is in place.
    fn start(tag: &str, config: Option<&dyn Fn(&TempDir) -> String>) -> Self {
        let dir = TempDir::new(tag);
        let sock = dir.path("api.sock");
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["--api-sock", sock.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(config) = config {
            let file = dir.write("vm.json", config(&dir));
            cmd.args(["--config-file", file.to_str().unwrap()]);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        if config.is_some() {
            let mut lines = BufReader::new(stdout).lines();
            assert!(
                lines.any(|l| l.unwrap() == "TINY-DONE"),
                "the guest did not run"
            );
            // The console keeps writing into the pipe; nothing more is printed.
            std::mem::forget(lines);
        }
        wait_for_socket(&sock, Duration::from_secs(10));
        Self { child, sock, dir }
    }

    /// Fails the test if kiln has ended (a trapped syscall shows as status 148), else checks
    /// that it still answers.
    fn assert_alive(&mut self) {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("kiln ended: {status:?} (signal {:?})", status.signal());
        }
        assert_eq!(request(&self.sock, "GET", "/", None).status, 200);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn many_idle_connections_do_not_kill_the_api_thread() {
    let mut kiln = Served::start("seccomp-idle", None);
    for _ in 0..3 {
        let idle: Vec<_> = (0..100)
            .map(|_| std::os::unix::net::UnixStream::connect(&kiln.sock).unwrap())
            .collect();
        // An answer on a later connection means the server has accepted the idle ones.
        assert_eq!(request(&kiln.sock, "GET", "/", None).status, 200);
        drop(idle);
        kiln.assert_alive();
    }
}

/// A `PUT /drives` body whose `path_on_host` (which names no file) makes it `len` bytes long.
fn drive_body(len: usize) -> String {
    let body = |path: &str| {
        format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "/{path}", "is_root_device": true, "is_read_only": false}}"#
        )
    };
    let path = "a".repeat(len - body("").len());
    body(&path)
}

/// PUT /drives with a body of `len` bytes three times: each is refused and kiln lives on.
fn put_long_drive_paths(tag: &str, len: usize) {
    let mut kiln = Served::start(tag, None);
    let body = drive_body(len);
    assert_eq!(body.len(), len);
    for _ in 0..3 {
        let r = request(&kiln.sock, "PUT", "/drives/rootfs", Some(&body));
        assert_eq!(r.status, 400, "{r:?}");
        kiln.assert_alive();
    }
}

#[test]
fn the_largest_request_body_does_not_kill_the_api_thread() {
    put_long_drive_paths("seccomp-body", api_server::DEFAULT_MAX_PAYLOAD);
}

#[test]
fn a_long_path_on_host_does_not_kill_the_api_thread() {
    put_long_drive_paths("seccomp-path", 30_000);
}

#[test]
fn patching_a_drive_to_a_qcow2_image_does_not_kill_the_vmm_thread() {
    let config = |dir: &TempDir| {
        let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
        let raw = dir.write("data.img", vec![0u8; 1 << 20]);
        // An overlay over a base, so that opening it resolves a backing file too.
        let qemu_img = |args: &[&str]| {
            let status = Command::new("qemu-img")
                .current_dir(&dir.0)
                .args(["create", "-q", "-f", "qcow2"])
                .args(args)
                .status()
                .expect("qemu-img is required");
            assert!(status.success());
        };
        qemu_img(&["base.qcow2", "1M"]);
        qemu_img(&["-b", "base.qcow2", "-F", "qcow2", "data.qcow2"]);
        format!(
            r#"{{
  "boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
  "drives": [{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false,
               "is_read_only": false}}]
}}"#,
            kernel.display(),
            raw.display()
        )
    };
    let mut kiln = Served::start("seccomp-qcow", Some(&config));
    let qcow = kiln.dir.path("data.qcow2");
    let body = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
        qcow.display()
    );
    let r = request(&kiln.sock, "PATCH", "/drives/data", Some(&body));
    assert_eq!(r.status, 204, "{r:?}");
    kiln.assert_alive();
}
