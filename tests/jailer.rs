//! The jailer end to end, with the static `kiln` and `kiln-jailer`:
//!
//! - on this host's /dev/kvm, a jailed kiln runs the tiny guest through its API, and /proc
//!   shows it confined: the dropped uid and gid, the jail as its root, the requested cgroups
//!   (v1 with values read back, v2 in the unified hierarchy), network namespace and resource
//!   limits, no inherited descriptor or environment; `--new-pid-ns --daemonize` too;
//! - every bad input is refused with one line, leaves no jail or cgroup behind, and a good
//!   start with the same id follows;
//! - a jail an SDK made (with the kernel in it) is used, a symlinked `<id>` or `root` is
//!   refused, a failed start keeps the SDK's files, a second start beside a running kiln is
//!   refused, and `--uid 0 --gid 0` starts with a warning;
//! - in the rig (or on hardware KVM), a jailed kiln boots the real Linux guest from a rootfs
//!   hard-linked into the jail.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::OnceLock;

use common::http::request;
use common::jailer::{
    cgroup_mounts, dev_ino, static_kiln, v1_mount, JailTest, Jailed, NetNs, GID, UID,
};
use common::linux::{finished_script, script_drive, Outcome, Outcomes, Scenario};
use common::tiny_kernel::{self, Ending};

/// Writes the tiny guest (halting forever) to `root/vmlinux`, readable by everyone.
fn write_tiny_kernel(root: &Path) {
    let kernel = root.join("vmlinux");
    fs::write(&kernel, tiny_kernel::build(false, Ending::HaltForever)).unwrap();
    fs::set_permissions(&kernel, fs::Permissions::from_mode(0o644)).unwrap();
}

/// Boots the tiny guest (halting forever) in a jailed kiln through its API.
fn boot_tiny_guest(kiln: &Jailed) {
    write_tiny_kernel(&kiln.root);
    boot_vmlinux(kiln);
}

/// Boots the kernel at `/vmlinux` of a jailed kiln through its API.
fn boot_vmlinux(kiln: &Jailed) {
    let sock = kiln.socket();
    for (path, body) in [
        (
            "/boot-source",
            r#"{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"}"#,
        ),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        ),
        ("/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let r = request(&sock, "PUT", path, Some(body));
        assert_eq!(r.status, 204, "PUT {path}: {r:?}");
    }
    let r = request(&sock, "GET", "/", None);
    assert!(r.body.contains(r#""state":"Running""#), "{r:?}");
}

/// Asserts that nothing of jail `id` is left: no jail directory, no cgroup.
fn assert_no_trace(t: &JailTest, id: &str) {
    let jail = t.base.0.join("kiln").join(id);
    assert!(!jail.exists(), "{} was left behind", jail.display());
    for hierarchy in cgroup_mounts(1).into_iter().chain(cgroup_mounts(2)) {
        let cgroup = hierarchy.join(&t.parent_cgroup).join(id);
        assert!(!cgroup.exists(), "{} was left behind", cgroup.display());
    }
}

/// A good start of `id` works: kiln serves its API as the jailed user.
fn assert_good_start(t: &JailTest, id: &str, extra: &[&str]) -> Jailed {
    let kiln = t.start(id, extra);
    assert_eq!(kiln.status("Uid"), format!("{UID}\t{UID}\t{UID}\t{UID}"));
    kiln
}

#[test]
fn a_jailed_kiln_runs_confined_in_its_v1_cgroup_and_netns() {
    let t = JailTest::new("confined");
    let netns = NetNs::new("confined");
    let netns_path = netns.path();
    // An inherited descriptor and an environment variable, neither of which may reach kiln.
    let marker = t.base.write("inherited-marker", "x");
    let marker_file = fs::File::open(&marker).unwrap();
    let marker_fd = std::os::fd::AsRawFd::as_raw_fd(&marker_file);
    let mut cmd = t.command(
        "vm-confined",
        &[
            "--cgroup",
            "cpu.shares=512",
            "--cgroup",
            "cpuset.cpus=0",
            "--netns",
            netns_path.to_str().unwrap(),
            "--resource-limit",
            "no-file=1024",
            "--resource-limit",
            "fsize=1073741824",
        ],
    );
    cmd.env("KILN_JAILER_TEST_LEAK", "1");
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe, on a descriptor the child inherited.
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(marker_fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let kiln = t.start_command("vm-confined", cmd);
    drop(marker_file);
    boot_tiny_guest(&kiln);

    // The uid and gid, without supplementary groups.
    assert_eq!(kiln.status("Uid"), format!("{UID}\t{UID}\t{UID}\t{UID}"));
    assert_eq!(kiln.status("Gid"), format!("{GID}\t{GID}\t{GID}\t{GID}"));
    assert_eq!(kiln.status("Groups"), "");
    // The VM runs, so every thread, the main one included, is under its seccomp filter.
    assert_eq!(kiln.status("Seccomp"), "2");
    // The jail is its root, holding only what the jailer put there and the kernel.
    let proc_root = Path::new("/proc").join(kiln.pid.to_string()).join("root");
    assert_eq!(dev_ino(&proc_root), dev_ino(&kiln.root));
    let mut names: Vec<String> = fs::read_dir(&kiln.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dev", "kiln", "kiln.pid", "run", "vmlinux"]);
    let root_meta = fs::metadata(&kiln.root).unwrap();
    assert_eq!((root_meta.uid(), root_meta.gid()), (UID, GID));
    let exe = fs::metadata(kiln.root.join("kiln")).unwrap();
    assert_eq!((exe.uid(), exe.mode() & 0o7777), (0, 0o555));
    assert_eq!(exe.len(), fs::metadata(static_kiln()).unwrap().len());
    for (dev, major, minor) in [("kvm", 10, 232), ("net/tun", 10, 200), ("urandom", 1, 9)] {
        let meta = fs::metadata(kiln.root.join("dev").join(dev)).unwrap();
        assert!(meta.file_type().is_char_device(), "{dev}");
        assert_eq!(
            (meta.rdev(), meta.uid(), meta.gid(), meta.mode() & 0o777),
            (libc::makedev(major, minor), UID, GID, 0o600),
            "{dev}"
        );
    }
    // The v1 cgroups, with the values written.
    let cgroup = format!("/{}/vm-confined", t.parent_cgroup);
    assert_eq!(kiln.cgroup("cpu"), cgroup);
    assert_eq!(kiln.cgroup("cpuset"), cgroup);
    let cpu_dir = v1_mount("cpu").join(&t.parent_cgroup).join("vm-confined");
    assert_eq!(
        fs::read_to_string(cpu_dir.join("cpu.shares")).unwrap(),
        "512\n"
    );
    let cpuset_dir = v1_mount("cpuset")
        .join(&t.parent_cgroup)
        .join("vm-confined");
    assert_eq!(
        fs::read_to_string(cpuset_dir.join("cpuset.cpus")).unwrap(),
        "0\n"
    );
    // Inherited from the parent, or no process could join the cpuset.
    assert_ne!(
        fs::read_to_string(cpuset_dir.join("cpuset.mems")).unwrap(),
        "\n"
    );
    // The network namespace.
    let kiln_net = Path::new("/proc").join(kiln.pid.to_string()).join("ns/net");
    assert_eq!(dev_ino(&kiln_net).1, dev_ino(&netns_path).1);
    // The resource limits.
    let limits = fs::read_to_string(format!("/proc/{}/limits", kiln.pid)).unwrap();
    let limit = |name: &str| {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .filter(|w| w.parse::<u64>().is_ok() || *w == "unlimited")
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(limit("Max open files"), "1024 1024");
    assert_eq!(limit("Max file size"), "1073741824 1073741824");
    // No inherited descriptor, no environment.
    for fd in fs::read_dir(format!("/proc/{}/fd", kiln.pid)).unwrap() {
        // kiln may close a descriptor (an API connection) between the listing and the read.
        let Ok(target) = fs::read_link(fd.unwrap().path()) else {
            continue;
        };
        assert!(
            !target.to_string_lossy().contains("inherited-marker"),
            "kiln inherited {}",
            target.display()
        );
    }
    assert_eq!(
        fs::read(format!("/proc/{}/environ", kiln.pid)).unwrap(),
        b""
    );
    assert_eq!(
        fs::read_to_string(kiln.root.join("kiln.pid")).unwrap(),
        kiln.pid.to_string()
    );
    // The guest ran: its serial output reached the jailer's stdout, which kiln inherited.
    let out = kiln.kill().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("TINY-DONE"), "{stdout}");
}

/// A v2 controller of the unified hierarchy and a key to set, from what this host offers.
fn v2_setting(unified: &Path) -> (String, String) {
    let controllers = fs::read_to_string(unified.join("cgroup.controllers")).unwrap();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if has("pids") {
        ("pids".into(), "pids.max=64".into())
    } else if has("hugetlb") {
        ("hugetlb".into(), "hugetlb.2MB.max=0".into())
    } else if has("memory") {
        ("memory".into(), "memory.max=1073741824".into())
    } else {
        panic!("the cgroup v2 hierarchy offers none of pids, hugetlb, memory: {controllers}")
    }
}

#[test]
fn a_jailed_kiln_joins_its_cgroup_in_the_v2_hierarchy() {
    let unified = cgroup_mounts(2)
        .into_iter()
        .next()
        .expect("a cgroup v2 hierarchy is mounted");
    let (controller, setting) = v2_setting(&unified);
    let root_control = unified.join("cgroup.subtree_control");
    let enabled_before = fs::read_to_string(&root_control)
        .unwrap()
        .split_whitespace()
        .any(|c| c == controller);
    let t = JailTest::new("v2");
    let kiln = t.start("vm-v2", &["--cgroup-version", "2", "--cgroup", &setting]);
    assert_eq!(kiln.cgroup(""), format!("/{}/vm-v2", t.parent_cgroup));
    let (key, value) = setting.split_once('=').unwrap();
    let dir = unified.join(&t.parent_cgroup).join("vm-v2");
    assert_eq!(
        fs::read_to_string(dir.join(key)).unwrap().trim(),
        value,
        "{key}"
    );
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), kiln.pid.to_string());
    drop(kiln);
    drop(t);
    if !enabled_before {
        // Put the host back as it was; harmless if another user enabled it meanwhile.
        let _ = fs::write(&root_control, format!("-{controller}"));
    }
}

#[test]
fn new_pid_ns_and_daemonize_start_kiln_as_pid_1_of_its_own_session() {
    let t = JailTest::new("pidns");
    let kiln = t.start("vm-pidns", &["--new-pid-ns", "--daemonize"]);
    // The jailer's pid namespace sees kiln as the pid in the pid file; its own sees pid 1.
    assert_eq!(kiln.status("NSpid"), format!("{}\t1", kiln.pid));
    assert_eq!(kiln.status("Uid"), format!("{UID}\t{UID}\t{UID}\t{UID}"));
    let stat = fs::read_to_string(format!("/proc/{}/stat", kiln.pid)).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let session: u32 = fields[3].parse().unwrap();
    // SAFETY: getsid(0) only returns this process's session id.
    let own_session = unsafe { libc::getsid(0) } as u32;
    assert_ne!(session, own_session, "kiln stayed in the test's session");
    for fd in 0..=2 {
        let target = fs::read_link(format!("/proc/{}/fd/{fd}", kiln.pid)).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }
    assert_eq!(
        request(&kiln.socket(), "GET", "/", None).status,
        200,
        "kiln serves its API"
    );
}

#[test]
fn an_id_with_a_slash_or_dot_dot_is_refused() {
    let t = JailTest::new("badid");
    for id in ["a/b", "..", "../escape", "vm.1"] {
        let (code, stderr) = t.refused(t.command(id, &["--cgroup", "cpu.shares=256"]));
        assert_eq!(code, 153, "{id}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "Error: --id '{id}' is invalid: use 1 to 64 characters, alphanumerics and '-' \
                 only.\n"
            )
        );
    }
    assert!(!t.base.0.join("kiln").exists(), "nothing was created");
    assert!(!v1_mount("cpu").join(&t.parent_cgroup).exists());
    assert_good_start(&t, "vm-badid", &["--cgroup", "cpu.shares=256"]);
}

#[test]
fn a_missing_exec_file_is_refused() {
    let t = JailTest::new("noexec");
    let missing = Path::new("/nonexistent/kiln");
    let (code, stderr) = t.refused(t.command_as("vm-noexec", missing, &UID.to_string(), &[]));
    assert_eq!(code, 153, "{stderr}");
    assert_eq!(
        stderr,
        "Error: --exec-file '/nonexistent/kiln' cannot be used: No such file or directory \
         (os error 2)\n"
    );
    assert_no_trace(&t, "vm-noexec");
    assert_good_start(&t, "vm-noexec", &[]);
}

#[test]
fn a_dynamic_exec_file_is_refused() {
    let t = JailTest::new("dynamic");
    let dynamic = Path::new(common::kiln_bin());
    let (code, stderr) = t.refused(t.command_as("vm-dynamic", dynamic, &UID.to_string(), &[]));
    assert_eq!(code, 153, "{stderr}");
    assert!(
        stderr.contains("is dynamically linked (it needs /lib64/ld-linux-x86-64.so.2)"),
        "{stderr}"
    );
    assert!(!t.base.0.join("kiln").exists(), "nothing was created");
}

#[test]
fn uid_0_and_gid_0_start_kiln_as_root_with_a_warning() {
    let t = JailTest::new("root");
    let cmd = t.command_ids("vm-root", &static_kiln(), "0", "0", &[]);
    let kiln = t.start_command("vm-root", cmd);
    assert_eq!(kiln.status("Uid"), "0\t0\t0\t0");
    assert_eq!(kiln.status("Gid"), "0\t0\t0\t0");
    // Still jailed.
    let proc_root = Path::new("/proc").join(kiln.pid.to_string()).join("root");
    assert_eq!(dev_ino(&proc_root), dev_ino(&kiln.root));
    let out = kiln.kill().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().next(),
        Some(
            "Warning: --uid 0 and --gid 0: kiln runs as root inside the jail; pass an \
             unprivileged uid and gid to drop root."
        ),
        "{stderr}"
    );
}

#[test]
fn an_unknown_cgroup_key_is_refused_and_leaves_no_jail_or_cgroup() {
    let t = JailTest::new("badkey");
    let (code, stderr) = t.refused(t.command("vm-badkey", &["--cgroup", "cpu.nosuch=1"]));
    assert_eq!(code, 153, "{stderr}");
    let dir = v1_mount("cpu").join(&t.parent_cgroup).join("vm-badkey");
    assert_eq!(
        stderr,
        format!(
            "Error: --cgroup 'cpu.nosuch': the cgroup key does not exist in '{}'.\n",
            dir.display()
        )
    );
    assert_no_trace(&t, "vm-badkey");
    let (code, stderr) = t.refused(t.command("vm-badkey", &["--cgroup", "nosuch.key=1"]));
    assert_eq!(code, 153, "{stderr}");
    assert_eq!(
        stderr,
        "Error: --cgroup 'nosuch.key': no cgroup v1 hierarchy has the nosuch controller.\n"
    );
    assert_no_trace(&t, "vm-badkey");
    let kiln = assert_good_start(&t, "vm-badkey", &["--cgroup", "cpu.shares=256"]);
    assert_eq!(fs::read_to_string(dir.join("cpu.shares")).unwrap(), "256\n");
    assert_eq!(
        kiln.cgroup("cpu"),
        format!("/{}/vm-badkey", t.parent_cgroup)
    );
}

/// Makes `<base>/kiln/<id>/root` with the tiny kernel hard-linked in from `<base>/<id>/`, as
/// an SDK does before it starts the jailer; returns the root.
fn sdk_jail(t: &JailTest, id: &str) -> std::path::PathBuf {
    let root = t.root(id);
    fs::create_dir_all(&root).unwrap();
    let host = t.base.0.join(id);
    fs::create_dir_all(&host).unwrap();
    write_tiny_kernel(&host);
    fs::hard_link(host.join("vmlinux"), root.join("vmlinux")).unwrap();
    root
}

#[test]
fn an_sdk_made_jail_is_used_and_its_kernel_boots_and_stays() {
    let t = JailTest::new("sdk");
    let root = sdk_jail(&t, "vm-sdk");
    let kernel = fs::read(root.join("vmlinux")).unwrap();
    let kiln = t.start("vm-sdk", &["--cgroup", "cpu.shares=256"]);
    assert_eq!(dev_ino(&kiln.root), dev_ino(&root));
    boot_vmlinux(&kiln);
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dev", "kiln", "kiln.pid", "run", "vmlinux"]);
    drop(kiln);
    // A start in the jail the last one left (its exec copy, device nodes, pid file, socket)
    // works too, and the kernel is still the SDK's.
    let kiln = t.start("vm-sdk", &["--cgroup", "cpu.shares=256"]);
    boot_vmlinux(&kiln);
    assert_eq!(fs::read(root.join("vmlinux")).unwrap(), kernel);
    let host_kernel = t.base.0.join("vm-sdk/vmlinux");
    assert_eq!(
        dev_ino(&host_kernel),
        dev_ino(&root.join("vmlinux")),
        "still the hard link"
    );
    let pid = fs::read_to_string(root.join("kiln.pid")).unwrap();
    assert_eq!(pid, kiln.pid.to_string());
}

#[test]
fn a_symlinked_id_or_root_is_refused_and_its_target_untouched() {
    let t = JailTest::new("symlink");
    let target = t.base.0.join("elsewhere");
    fs::create_dir_all(target.join("root")).unwrap();
    fs::create_dir_all(t.base.0.join("kiln/vm-rootlink")).unwrap();
    std::os::unix::fs::symlink(&target, t.base.0.join("kiln/vm-idlink")).unwrap();
    std::os::unix::fs::symlink(target.join("root"), t.root("vm-rootlink")).unwrap();
    for (id, bad) in [
        ("vm-idlink", t.base.0.join("kiln/vm-idlink")),
        ("vm-rootlink", t.root("vm-rootlink")),
    ] {
        let (code, stderr) = t.refused(t.command(id, &["--cgroup", "cpu.shares=256"]));
        assert_eq!(code, 1, "{id}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "Error: The jail path '{}' exists but is a symlink or not a directory; the \
                 jailer uses only a real directory there.\n",
                bad.display()
            )
        );
        let cgroup = v1_mount("cpu").join(&t.parent_cgroup).join(id);
        assert!(!cgroup.exists(), "no cgroup for a refused jail");
    }
    assert_eq!(fs::read_dir(target.join("root")).unwrap().count(), 0);
    assert!(fs::symlink_metadata(t.root("vm-rootlink"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_start_that_fails_in_an_sdk_made_jail_keeps_the_sdk_files() {
    let t = JailTest::new("sdkfail");
    let root = sdk_jail(&t, "vm-sdkfail");
    // A file where the jailer needs its /dev directory fails the start after the exec copy,
    // the cgroup and pivot_root.
    fs::write(root.join("dev"), "not a directory").unwrap();
    let (code, stderr) = t.refused(t.command("vm-sdkfail", &["--cgroup", "cpu.shares=256"]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "Error: The jail path '/dev' exists but is a symlink or not a directory; the jailer \
         uses only a real directory there.\n"
    );
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dev", "vmlinux"], "only the start's own files went");
    assert_eq!(fs::read(root.join("dev")).unwrap(), b"not a directory");
    let cgroup = v1_mount("cpu").join(&t.parent_cgroup).join("vm-sdkfail");
    assert!(!cgroup.exists(), "{} was left behind", cgroup.display());
    fs::remove_file(root.join("dev")).unwrap();
    let kiln = assert_good_start(&t, "vm-sdkfail", &["--cgroup", "cpu.shares=256"]);
    boot_vmlinux(&kiln);
}

#[test]
fn a_second_start_beside_a_running_kiln_is_refused_and_changes_nothing() {
    let t = JailTest::new("twice");
    let kiln = t.start("vm-twice", &[]);
    let exe = dev_ino(&kiln.root.join("kiln"));
    let (code, stderr) = t.refused(t.command("vm-twice", &[]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "Error: kiln (pid {}) still runs in the jail '{}'; stop it or pick another --id.\n",
            kiln.pid,
            kiln.root.display()
        )
    );
    assert_eq!(dev_ino(&kiln.root.join("kiln")), exe);
    assert_eq!(
        fs::read_to_string(kiln.root.join("kiln.pid")).unwrap(),
        kiln.pid.to_string()
    );
    assert_eq!(request(&kiln.socket(), "GET", "/", None).status, 200);
}

#[test]
fn a_handle_that_is_not_a_network_namespace_is_refused() {
    let t = JailTest::new("badnetns");
    let (code, stderr) = t.refused(t.command("vm-badnetns", &["--netns", "/proc/self/ns/mnt"]));
    assert_eq!(code, 153, "{stderr}");
    assert_eq!(
        stderr,
        "Error: --netns '/proc/self/ns/mnt' is not a network namespace.\n"
    );
    assert_no_trace(&t, "vm-badnetns");
}

/// What the guest reports from inside the jailed VM.
const GUEST_SCRIPT: &str = r#"
echo "GUEST-ROOT=$(awk '$2 == "/" {print $1, $3, substr($4, 1, 2)}' /proc/mounts | tail -n1)"
echo "jailed" >/jailed.txt && sync && echo "GUEST-WROTE=yes"
ip link set eth0 up && ip addr add 172.16.5.2/24 dev eth0
ping -c 2 -W 5 172.16.5.1 >/dev/null && echo "GUEST-PING=ok" || echo "GUEST-PING=failed"
"#;

/// Starts the jailer, hard-links the guest into the jail, configures kiln through its API with
/// curl and checks on the VMM's host that kiln runs confined. Runs with a real root mount
/// (see `run` below); the payload directory is the working directory.
const JAIL_BOOT: &str = r#"
BASE=$PWD/jails
ROOT=$BASE/kiln/linux-jail/root
SOCK=$ROOT/run/kiln.socket
# The jailed uid owns the tap, as it must to attach to it without CAP_NET_ADMIN.
IP=$PWD/bin/ip
mkdir -p /run/netns
$IP netns add kjn
$IP netns exec kjn $IP tuntap add dev tap0 mode tap user 4242
$IP -n kjn addr add 172.16.5.1/24 dev tap0
$IP -n kjn link set tap0 up
./static/kiln-jailer --id linux-jail --exec-file static/kiln --uid 4242 --gid 4243 \
    --chroot-base-dir "$BASE" --netns /run/netns/kjn -- --api-sock /run/kiln.socket \
    </dev/null >kiln.out 2>&1 &
KILN=$!
i=0; while [ ! -S "$SOCK" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
ln vmlinux "$ROOT/vmlinux"
ln rootfs.ext4 "$ROOT/rootfs.ext4" && chown 4242:4243 "$ROOT/rootfs.ext4"
ln jail-script.img "$ROOT/script.img"
api() {
    curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" -X PUT "http://localhost$1" \
        -H 'Content-Type: application/json' -d "$2"
}
echo "JAIL-BOOT-SOURCE=$(api /boot-source '{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script=/dev/vdb"}')"
echo "JAIL-ROOTFS=$(api /drives/rootfs '{"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true, "is_read_only": false}')"
echo "JAIL-SCRIPT=$(api /drives/script '{"drive_id": "script", "path_on_host": "script.img", "is_root_device": false, "is_read_only": true}')"
echo "JAIL-MACHINE=$(api /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}')"
echo "JAIL-NET=$(api /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "tap0"}')"
echo "HOST-UID=$(awk '/^Uid:/ {print $2, $3, $4, $5}' /proc/$KILN/status)"
echo "HOST-GID=$(awk '/^Gid:/ {print $2, $3, $4, $5}' /proc/$KILN/status)"
if [ "$(stat -L -c %d:%i /proc/$KILN/root/)" = "$(stat -c %d:%i "$ROOT")" ]; then
    echo "HOST-ROOT-IS-JAIL=yes"
else
    echo "HOST-ROOT-IS-JAIL=no"
fi
echo "JAIL-START=$(api /actions '{"action_type": "InstanceStart"}')"
# A guest that never stops must not hang the payload.
(sleep 120; kill -9 $KILN 2>/dev/null) &
WATCHDOG=$!
wait $KILN; rc=$?
kill $WATCHDOG 2>/dev/null
cat kiln.out
debugfs -R 'cat /jailed.txt' rootfs.ext4 2>/dev/null | sed 's/^/HOST-FILE=/'
$IP netns del kjn
exit $rc
"#;

fn scenarios() -> Vec<Scenario> {
    let dir = common::jailer::static_dir();
    vec![Scenario {
        name: "jailed-linux",
        config: String::new(),
        files: vec![
            ("kiln-static".into(), fs::read(dir.join("kiln")).unwrap()),
            ("jailer-static".into(), fs::read(dir.join("kiln-jailer")).unwrap()),
            ("jail-script.img".into(), script_drive(GUEST_SCRIPT)),
            ("jail-boot.sh".into(), JAIL_BOOT.as_bytes().to_vec()),
        ],
        // Naming the artifacts makes the harness copy them into the payload.
        before: "mkdir -p static jails && mv kiln-static static/kiln \
                 && mv jailer-static static/kiln-jailer && chmod 755 static/* \
                 && chmod 644 vmlinux rootfs.ext4"
            .into(),
        // pivot_root cannot leave the initial ramfs, which is the rig's root: there, the
        // jailer runs in a private mount namespace, chrooted into a recursive bind of /.
        run: r#"
if [ "$(awk '$2 == "/" {print $3; exit}' /proc/mounts)" = rootfs ]; then
    mkdir -p /jailhost
    unshare -m sh -c 'mount -o rbind / /jailhost && exec chroot /jailhost sh -c "cd $0 && sh jail-boot.sh"' "$PWD"
else
    sh jail-boot.sh
fi"#
        .into(),
        ..Default::default()
    }]
}

fn linux_outcome() -> &'static Outcome {
    static OUTCOMES: Outcomes = OnceLock::new();
    finished_script(&OUTCOMES, scenarios, "jailed-linux")
}

#[test]
fn a_jailed_kiln_boots_the_linux_guest_from_a_rootfs_in_the_jail() {
    let o = linux_outcome();
    for step in [
        "JAIL-BOOT-SOURCE",
        "JAIL-ROOTFS",
        "JAIL-SCRIPT",
        "JAIL-MACHINE",
        "JAIL-NET",
        "JAIL-START",
    ] {
        assert_eq!(o.expect_value(step), "204", "{step}:\n{}", o.tail());
    }
    assert_eq!(o.expect_value("GUEST-ROOT"), "/dev/root ext4 rw");
    assert_eq!(o.expect_value("GUEST-WROTE"), "yes");
    assert_eq!(o.expect_value("HOST-FILE"), "jailed");
    // The jailed kiln attached to its tap in the network namespace it joined.
    assert_eq!(o.expect_value("GUEST-PING"), "ok", "{}", o.tail());
    assert_eq!(o.expect_value("HOST-UID"), "4242 4242 4242 4242");
    assert_eq!(o.expect_value("HOST-GID"), "4243 4243 4243 4243");
    assert_eq!(o.expect_value("HOST-ROOT-IS-JAIL"), "yes", "{}", o.tail());
}
