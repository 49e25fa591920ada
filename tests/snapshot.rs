//! Snapshots on the host's /dev/kvm with the tiny guest that counts in a register and in
//! memory: `PUT /snapshot/create` on a paused VM, `PUT /snapshot/load` in a new kiln, the
//! count going on from where it was, and every refusal of both endpoints (a running VM, a
//! Diff snapshot, paths that cannot be written, a snapshot after configuring, truncated,
//! corrupted and foreign files), each leaving kiln serving; a snapshot freezing a qcow2 drive
//! and three clones of it at once, each on its own overlay. The Linux guest's snapshots run in
//! the rig (`linux_snapshot.rs`).

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::{request, ApiProcess, Response};
use common::tiny_kernel::{self, Ending, COUNTER_ADDR};
use common::{kiln_bin, run_kiln, TempDir};

fn start_kiln(sock: &Path) -> ApiProcess {
    let args = ["--api-sock", sock.to_str().unwrap(), "--id", "snap-test"];
    ApiProcess::start(Path::new(kiln_bin()), &args, sock)
}

fn put(sock: &Path, path: &str, body: &str) -> Response {
    request(sock, "PUT", path, Some(body))
}

fn ok(r: &Response) {
    assert_eq!(r.status, 204, "{r:?}");
}

fn fault(r: &Response) -> String {
    assert_eq!(r.status, 400, "{r:?}");
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    body["fault_message"].as_str().unwrap().to_string()
}

fn state(sock: &Path) -> String {
    let r = request(sock, "GET", "/", None);
    let info: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    info["state"].as_str().unwrap().to_string()
}

fn set_state(sock: &Path, state: &str) {
    ok(&request(
        sock,
        "PATCH",
        "/vm",
        Some(&format!(r#"{{"state": "{state}"}}"#)),
    ));
}

fn create(sock: &Path, snapshot: &Path, mem: &Path) -> Response {
    let body = serde_json::json!({"snapshot_path": snapshot, "mem_file_path": mem});
    put(sock, "/snapshot/create", &body.to_string())
}

fn load(sock: &Path, snapshot: &Path, mem: &Path, resume: bool) -> Response {
    let body = serde_json::json!({
        "snapshot_path": snapshot,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": resume,
    });
    put(sock, "/snapshot/load", &body.to_string())
}

/// The guest's count in a memory file: RAM starts at guest address 0 in the file.
fn count_in(mem: &Path) -> u64 {
    let bytes = std::fs::read(mem).unwrap();
    let at = COUNTER_ADDR as usize;
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Lets the guest count until it has counted, then pauses it and snapshots it.
fn run_then_snapshot(sock: &Path, snapshot: &Path, mem: &Path) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    set_state(sock, "Paused");
    ok(&create(sock, snapshot, mem));
    count_in(mem)
}

/// A kiln running the counting guest, and its directory.
fn counting_vm(dir: &TempDir, sock: &Path) -> ApiProcess {
    counting_vm_with(dir, sock, MACHINE, &[])
}

const MACHINE: &str = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;

/// [`counting_vm`] with the machine configuration `machine` and the drives `drives`.
fn counting_vm_with(
    dir: &TempDir,
    sock: &Path,
    machine: &str,
    drives: &[serde_json::Value],
) -> ApiProcess {
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::CountForever));
    let kiln = start_kiln(sock);
    let boot = serde_json::json!({"kernel_image_path": kernel});
    ok(&put(sock, "/boot-source", &boot.to_string()));
    ok(&put(sock, "/machine-config", machine));
    for drive in drives {
        let path = format!("/drives/{}", drive["drive_id"].as_str().unwrap());
        ok(&put(sock, &path, &drive.to_string()));
    }
    ok(&put(
        sock,
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    ));
    kiln
}

fn create_diff(sock: &Path, snapshot: &Path, mem: &Path) -> Response {
    let body = serde_json::json!({
        "snapshot_type": "Diff", "snapshot_path": snapshot, "mem_file_path": mem,
    });
    put(sock, "/snapshot/create", &body.to_string())
}

#[test]
fn a_diff_snapshot_brings_the_full_one_up_to_date_with_only_the_dirtied_pages() {
    let dir = TempDir::new("snap-diff");
    let sock = dir.path("a.sock");
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}"#;
    let kiln = counting_vm_with(&dir, &sock, machine, &[]);
    let (snap_full, mem_full) = (dir.path("full.snap"), dir.path("full.mem"));
    let at_full = run_then_snapshot(&sock, &snap_full, &mem_full);
    // The base, copied, is brought up to date by the Diff; a new file gets only the Diff.
    let (snap_diff, mem_merged) = (dir.path("diff.snap"), dir.path("merged.mem"));
    std::fs::copy(&mem_full, &mem_merged).unwrap();
    set_state(&sock, "Resumed");
    std::thread::sleep(Duration::from_millis(300));
    set_state(&sock, "Paused");
    ok(&create_diff(&sock, &snap_diff, &mem_merged));
    let at_diff = count_in(&mem_merged);
    assert!(at_diff > at_full, "{at_diff} after {at_full}");
    // Nothing ran since: a second Diff into a new file holds no page of guest memory.
    let (snap_none, mem_layer) = (dir.path("none.snap"), dir.path("layer.mem"));
    ok(&create_diff(&sock, &snap_none, &mem_layer));
    let layer = std::fs::metadata(&mem_layer).unwrap();
    assert_eq!(layer.len(), 64 << 20, "a layer has guest memory's layout");
    use std::os::unix::fs::MetadataExt;
    assert!(
        layer.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        layer.blocks() * 512
    );
    assert_eq!(count_in(&mem_layer), 0);
    drop(kiln);

    // The merged file restores the later state and goes on from it.
    let sock_b = dir.path("b.sock");
    let _kiln_b = start_kiln(&sock_b);
    ok(&load(&sock_b, &snap_diff, &mem_merged, true));
    let (snap_b, mem_b) = (dir.path("b.snap"), dir.path("b.mem"));
    let later = run_then_snapshot(&sock_b, &snap_b, &mem_b);
    assert!(later > at_diff, "{later} after {at_diff}");
}

#[test]
fn a_restored_guest_counts_on_from_its_snapshot() {
    let dir = TempDir::new("snap");
    let sock = dir.path("a.sock");
    let (snap_a, mem_a) = (dir.path("a.snap"), dir.path("a.mem"));
    let kiln = counting_vm(&dir, &sock);

    // Refusals while running, each leaving the VM as it was.
    assert_eq!(
        fault(&create(&sock, &snap_a, &mem_a)),
        "Create snapshot error: the microVM must be paused first."
    );
    set_state(&sock, "Paused");
    let diff = serde_json::json!({
        "snapshot_type": "Diff", "snapshot_path": snap_a, "mem_file_path": mem_a,
    });
    let refused = fault(&put(&sock, "/snapshot/create", &diff.to_string()));
    assert!(
        refused.contains("a Diff snapshot needs track_dirty_pages"),
        "{refused}"
    );
    let nowhere = PathBuf::from("/nonexistent/dir/a.snap");
    let err = fault(&create(&sock, &nowhere, &mem_a));
    assert!(
        err.contains("Cannot create the snapshot file /nonexistent/dir/a.snap"),
        "{err}"
    );
    assert!(fault(&load(&sock, &snap_a, &mem_a, true)).contains("not supported after starting"));
    set_state(&sock, "Resumed");

    let counted = run_then_snapshot(&sock, &snap_a, &mem_a);
    assert!(counted > 0, "the guest did not count");
    assert_eq!(std::fs::metadata(&mem_a).unwrap().len(), 64 << 20);
    let config_a = request(&sock, "GET", "/vm/config", None).body;
    drop(kiln);

    // A new kiln goes on from the snapshot: the count is past the saved one, so the guest ran
    // on from its saved registers and memory rather than starting again.
    let sock_b = dir.path("b.sock");
    let kiln_b = start_kiln(&sock_b);
    let started = Instant::now();
    ok(&load(&sock_b, &snap_a, &mem_a, true));
    eprintln!("load request to response: {:?}", started.elapsed());
    assert_eq!(state(&sock_b), "Running");
    assert_eq!(request(&sock_b, "GET", "/vm/config", None).body, config_a);
    let (snap_b, mem_b) = (dir.path("b.snap"), dir.path("b.mem"));
    let later = run_then_snapshot(&sock_b, &snap_b, &mem_b);
    assert!(later > counted, "{later} after {counted}");
    // The restored guest's writes are its own: the first memory file still has the old count.
    assert_eq!(count_in(&mem_a), counted);
    drop(kiln_b);

    // Loaded paused, it waits for a resume.
    let sock_c = dir.path("c.sock");
    let _kiln_c = start_kiln(&sock_c);
    ok(&load(&sock_c, &snap_b, &mem_b, false));
    assert_eq!(state(&sock_c), "Paused");
    set_state(&sock_c, "Resumed");
    assert_eq!(state(&sock_c), "Running");
}

/// Starts `handler SOCKET MEMORY_FILE` and waits for its socket.
fn start_handler(handler: &Path, socket: &Path, mem: &Path) -> std::process::Child {
    let child = std::process::Command::new(handler)
        .arg(socket)
        .arg(mem)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "{} made no socket",
            handler.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn a_guest_restored_through_a_page_fault_handler_counts_on() {
    let dir = TempDir::new("snap-uffd");
    let sock = dir.path("a.sock");
    let (snap, mem) = (dir.path("a.snap"), dir.path("a.mem"));
    let kiln = counting_vm(&dir, &sock);
    let counted = run_then_snapshot(&sock, &snap, &mem);
    drop(kiln);
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_kiln-uffd-handler"));
    let firecrackers = common::firecracker::anchor(
        "uffd_on_demand_handler",
        "a_guest_restored_through_a_page_fault_handler_counts_on (Firecracker's handler)",
    );
    for (n, handler) in std::iter::once(ours).chain(firecrackers).enumerate() {
        let uffd_sock = dir.path(&format!("uffd{n}.sock"));
        let mut handler_proc = start_handler(&handler, &uffd_sock, &mem);
        let sock_b = dir.path(&format!("b{n}.sock"));
        let kiln_b = start_kiln(&sock_b);
        let body = serde_json::json!({
            "snapshot_path": snap,
            "mem_backend": {"backend_type": "Uffd", "backend_path": uffd_sock},
            "resume_vm": true,
        });
        let loaded = put(&sock_b, "/snapshot/load", &body.to_string());
        assert_eq!(loaded.status, 204, "{}: {loaded:?}", handler.display());
        let (snap_b, mem_b) = (
            dir.path(&format!("b{n}.snap")),
            dir.path(&format!("b{n}.mem")),
        );
        let later = run_then_snapshot(&sock_b, &snap_b, &mem_b);
        assert!(
            later > counted,
            "{}: {later} after {counted}",
            handler.display()
        );
        drop(kiln_b);
        let _ = handler_proc.kill();
        let _ = handler_proc.wait();
    }
    // No handler listening: a clear error, and kiln keeps serving.
    let sock_c = dir.path("c.sock");
    let _kiln_c = start_kiln(&sock_c);
    let body = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "Uffd", "backend_path": dir.path("nobody.sock")},
    });
    let err = fault(&put(&sock_c, "/snapshot/load", &body.to_string()));
    assert!(
        err.contains("Cannot connect to the page-fault handler"),
        "{err}"
    );
    assert_eq!(state(&sock_c), "Not started");
}

#[test]
fn bad_snapshot_files_are_refused_and_kiln_keeps_serving() {
    let dir = TempDir::new("snap-bad");
    let sock = dir.path("a.sock");
    let (snap, mem) = (dir.path("a.snap"), dir.path("a.mem"));
    let kiln = counting_vm(&dir, &sock);
    run_then_snapshot(&sock, &snap, &mem);
    drop(kiln);
    let good = std::fs::read(&snap).unwrap();

    let sock_b = dir.path("b.sock");
    let _kiln = start_kiln(&sock_b);
    let bad = dir.path("bad.snap");
    let mut corrupted = good.clone();
    corrupted[good.len() / 2] ^= 0x10;
    let short_mem = dir.write("short.mem", [0u8; 4096]);
    for (bytes, mem_file, expected) in [
        (
            good[..good.len() - 9].to_vec(),
            &mem,
            "The snapshot file is truncated",
        ),
        (corrupted, &mem, "The snapshot file is corrupted"),
        (
            b"{\"not\": \"a snapshot\"}".to_vec(),
            &mem,
            "The file is not a Kiln snapshot.",
        ),
        (
            good.clone(),
            &short_mem,
            "has 4096 bytes; the snapshot's memory is",
        ),
    ] {
        std::fs::write(&bad, &bytes).unwrap();
        let err = fault(&load(&sock_b, &bad, mem_file, true));
        assert!(err.contains(expected), "{expected}: {err}");
        assert_eq!(state(&sock_b), "Not started");
    }
    let missing = fault(&load(&sock_b, &dir.path("none.snap"), &mem, true));
    assert!(
        missing.contains("Cannot open the snapshot file"),
        "{missing}"
    );
    // After all that, the good snapshot still loads in the same kiln.
    ok(&load(&sock_b, &snap, &mem, true));
    assert_eq!(state(&sock_b), "Running");
}

#[test]
fn the_cli_prints_the_format_version_of_this_build_and_of_a_file() {
    let dir = TempDir::new("snap-cli");
    let sock = dir.path("a.sock");
    let (snap, mem) = (dir.path("a.snap"), dir.path("a.mem"));
    let kiln = counting_vm(&dir, &sock);
    run_then_snapshot(&sock, &snap, &mem);
    drop(kiln);
    let timeout = Duration::from_secs(10);
    let own = run_kiln(&["--snapshot-version"], timeout);
    assert!(own.status.success(), "{own:?}");
    assert_eq!(String::from_utf8_lossy(&own.stdout), "v1.0.0\n");
    let described = run_kiln(&["--describe-snapshot", snap.to_str().unwrap()], timeout);
    assert!(described.status.success(), "{described:?}");
    assert_eq!(described.stdout, own.stdout);
    let foreign = dir.write("foreign", b"#!/bin/sh\n");
    let refused = run_kiln(&["--describe-snapshot", foreign.to_str().unwrap()], timeout);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("The file is not a Kiln snapshot."),
        "{stderr}"
    );
}

#[test]
fn a_snapshot_cannot_be_loaded_after_configuring() {
    let dir = TempDir::new("snap-late");
    let sock = dir.path("a.sock");
    let _kiln = start_kiln(&sock);
    ok(&put(
        &sock,
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    ));
    let (snap, mem) = (dir.path("a.snap"), dir.path("a.mem"));
    assert_eq!(
        fault(&load(&sock, &snap, &mem, true)),
        "Loading a microVM snapshot not allowed after configuring boot-specific resources."
    );
    let uffd = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "Uffd", "backend_path": mem},
    });
    assert!(fault(&put(&sock, "/snapshot/load", &uffd.to_string())).contains("not allowed"));
}

/// `qemu-img` (the oracle) with `args`; its stdout, after checking it succeeded.
fn qemu_img(args: &[&str], image: &Path) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .arg(image)
        .output()
        .expect("qemu-img is required");
    assert!(
        out.status.success(),
        "qemu-img {args:?} {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new 16 MiB qcow2 image at `path`, made by the oracle.
fn new_qcow2(path: &Path) {
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("16M")
        .status()
        .expect("qemu-img is required");
    assert!(status.success());
}

/// The backing file `qemu-img info` names for `image`.
fn backing_of(image: &Path) -> String {
    let info: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "-U", "--output=json"], image)).unwrap();
    info["backing-filename"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn drive_paths(sock: &Path) -> Vec<(String, String)> {
    let r = request(sock, "GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    config["drives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let field = |k: &str| d[k].as_str().unwrap().to_string();
            (field("drive_id"), field("path_on_host"))
        })
        .collect()
}

fn drive(id: &str, path: &Path) -> serde_json::Value {
    serde_json::json!({
        "drive_id": id, "path_on_host": path, "is_root_device": false, "is_read_only": false,
    })
}

#[test]
fn a_snapshot_freezes_qcow2_drives_and_each_clone_gets_its_own_overlay() {
    let dir = TempDir::new("snap-drives");
    let root = dir.path("root.qcow2");
    new_qcow2(&root);
    let data = dir.write("data.raw", vec![0u8; 1 << 20]);
    let sock = dir.path("a.sock");
    let drives = [drive("root", &root), drive("data", &data)];
    let kiln = counting_vm_with(&dir, &sock, MACHINE, &drives);
    let snap = dir.path("a.snap");
    let counted = run_then_snapshot(&sock, &snap, &dir.path("a.mem"));

    // The running VM went on on a new overlay over the frozen image; the raw drive is as it was.
    let overlay = dir.path("a.snap.root.1.qcow2");
    assert_eq!(
        drive_paths(&sock),
        [
            ("root".into(), overlay.display().to_string()),
            ("data".into(), data.display().to_string())
        ]
    );
    assert_eq!(backing_of(&overlay), root.display().to_string());
    // A second snapshot freezes that overlay in turn.
    ok(&create(&sock, &dir.path("a2.snap"), &dir.path("a2.mem")));
    let overlay2 = dir.path("a2.snap.root.1.qcow2");
    assert_eq!(drive_paths(&sock)[0].1, overlay2.display().to_string());
    assert_eq!(backing_of(&overlay2), overlay.display().to_string());
    drop(kiln);
    let frozen = std::fs::read(&root).unwrap();

    // A load must name a new overlay for the frozen drive.
    let sock_b = dir.path("b.sock");
    let _kiln_b = start_kiln(&sock_b);
    let err = fault(&load(&sock_b, &snap, &dir.path("a.mem"), true));
    assert_eq!(
        err,
        "Snapshot error: Drive 'root' is frozen in the snapshot: name the path of its new \
         overlay in drive_overrides."
    );
    assert_eq!(state(&sock_b), "Not started");

    // Three clones of one snapshot at once, each on its own overlay and its own data image.
    let mut clones = Vec::new();
    for n in 0..3 {
        let sock_c = dir.path(&format!("c{n}.sock"));
        let kiln_c = start_kiln(&sock_c);
        let clone_root = dir.path(&format!("clone{n}.qcow2"));
        let clone_data = dir.path(&format!("data{n}.raw"));
        std::fs::copy(&data, &clone_data).unwrap();
        let body = serde_json::json!({
            "snapshot_path": snap,
            "mem_backend": {"backend_type": "File", "backend_path": dir.path("a.mem")},
            "resume_vm": true,
            "drive_overrides": [
                {"drive_id": "root", "path_on_host": clone_root},
                {"drive_id": "data", "path_on_host": clone_data},
            ],
        });
        ok(&put(&sock_c, "/snapshot/load", &body.to_string()));
        assert_eq!(
            drive_paths(&sock_c),
            [
                ("root".into(), clone_root.display().to_string()),
                ("data".into(), clone_data.display().to_string())
            ]
        );
        assert_eq!(backing_of(&clone_root), root.display().to_string());
        clones.push((kiln_c, sock_c, n));
    }
    for (kiln_c, sock_c, n) in clones {
        let (snap_c, mem_c) = (
            dir.path(&format!("c{n}.snap")),
            dir.path(&format!("c{n}.mem")),
        );
        let later = run_then_snapshot(&sock_c, &snap_c, &mem_c);
        assert!(later > counted, "clone {n}: {later} after {counted}");
        drop(kiln_c);
    }
    assert_eq!(
        std::fs::read(&root).unwrap(),
        frozen,
        "the frozen image changed"
    );
    qemu_img(&["check", "-q"], &root);

    // An overlay path that exists is refused, and the file left as it was.
    let sock_d = dir.path("d.sock");
    let _kiln_d = start_kiln(&sock_d);
    let taken = dir.write("taken.qcow2", b"mine");
    let body = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": dir.path("a.mem")},
        "drive_overrides": [{"drive_id": "root", "path_on_host": taken}],
    });
    let err = fault(&put(&sock_d, "/snapshot/load", &body.to_string()));
    assert!(err.contains("Failed to create the qcow2 overlay"), "{err}");
    assert!(err.contains("File exists"), "{err}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
    assert_eq!(state(&sock_d), "Not started");
}

#[test]
fn a_restored_guest_snapshots_into_the_memory_file_it_was_loaded_from() {
    let dir = TempDir::new("snap-same-mem");
    let sock = dir.path("a.sock");
    let (snap, mem) = (dir.path("a.snap"), dir.path("a.mem"));
    let kiln = counting_vm(&dir, &sock);
    let counted = run_then_snapshot(&sock, &snap, &mem);
    drop(kiln);
    // B runs on a.mem mapped private, then writes a Full snapshot over that very file: pages
    // B never touched are read from it while it is written.
    let sock_b = dir.path("b.sock");
    let kiln_b = start_kiln(&sock_b);
    ok(&load(&sock_b, &snap, &mem, true));
    let later = run_then_snapshot(&sock_b, &snap, &mem);
    assert!(later > counted, "{later} after {counted}");
    assert_eq!(state(&sock_b), "Paused");
    drop(kiln_b);
    let sock_c = dir.path("c.sock");
    let _kiln_c = start_kiln(&sock_c);
    ok(&load(&sock_c, &snap, &mem, true));
    let last = run_then_snapshot(&sock_c, &dir.path("c.snap"), &dir.path("c.mem"));
    assert!(last > later, "{last} after {later}");
}

#[test]
fn a_relative_image_is_frozen_under_an_overlay_in_another_directory() {
    let dir = TempDir::new("snap-relative");
    new_qcow2(&dir.path("root.qcow2"));
    std::fs::create_dir(dir.path("snaps")).unwrap();
    let sock = dir.path("a.sock");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::CountForever));
    // Relative paths, from kiln's working directory: the overlay in snaps/ must name its
    // backing file so that it resolves from there.
    let mut command = std::process::Command::new(kiln_bin());
    command
        .args(["--api-sock", sock.to_str().unwrap()])
        .current_dir(dir.path(""))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _kiln = ApiProcess::spawn(command, &sock);
    let boot = serde_json::json!({"kernel_image_path": kernel});
    ok(&put(&sock, "/boot-source", &boot.to_string()));
    ok(&put(&sock, "/machine-config", MACHINE));
    ok(&put(
        &sock,
        "/drives/root",
        &drive("root", Path::new("root.qcow2")).to_string(),
    ));
    ok(&put(
        &sock,
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    ));
    set_state(&sock, "Paused");
    ok(&create(
        &sock,
        Path::new("snaps/a.snap"),
        Path::new("snaps/a.mem"),
    ));
    assert_eq!(drive_paths(&sock)[0].1, "snaps/a.snap.root.1.qcow2");
    let overlay = dir.path("snaps/a.snap.root.1.qcow2");
    assert_eq!(
        backing_of(&overlay),
        dir.path("root.qcow2").display().to_string()
    );
    // qemu-img opens the whole chain from elsewhere.
    qemu_img(&["check", "-q", "-U"], &overlay);
}
