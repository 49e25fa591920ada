//! The jailer harness: the static `kiln` and `kiln-jailer` (from `KILN_STATIC_DIR`, which
//! resources/test.sh sets, or built here with resources/build-static.sh), a jailer run in a
//! private chroot base and parent cgroup that are removed afterwards, the jailed kiln it starts
//! (killed on drop), and a throwaway network namespace.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::linux::repo_root;
use super::TempDir;

/// The user and group the tests jail kiln as (no account needs to exist).
pub const UID: u32 = 40_001;
pub const GID: u32 = 40_002;

/// How long a jailer may take to build a jail and exec kiln.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory holding the static `kiln` and `kiln-jailer`.
pub fn static_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KILN_STATIC_DIR") {
            return PathBuf::from(dir);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("resources/build-static.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resources/build-static.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().unwrap().trim())
    })
}

pub fn static_kiln() -> PathBuf {
    static_dir().join("kiln")
}

pub fn static_jailer() -> PathBuf {
    static_dir().join("kiln-jailer")
}

/// The mount points of the cgroup hierarchies of `version` (1 or 2), from /proc/mounts.
pub fn cgroup_mounts(version: u8) -> Vec<PathBuf> {
    let fstype = if version == 2 { "cgroup2" } else { "cgroup" };
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&fstype)).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// The v1 hierarchy that holds `controller`.
pub fn v1_mount(controller: &str) -> PathBuf {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let has = f.get(2) == Some(&"cgroup") && f[3].split(',').any(|o| o == controller);
            has.then(|| PathBuf::from(f[1]))
        })
        .unwrap_or_else(|| panic!("no cgroup v1 hierarchy has the {controller} controller"))
}

/// One test's jails: a chroot base and a parent cgroup of its own, both removed on drop.
pub struct JailTest {
    pub base: TempDir,
    /// The `--parent-cgroup`, unique to this test.
    pub parent_cgroup: String,
}

impl JailTest {
    pub fn new(tag: &str) -> Self {
        Self {
            base: TempDir::new(&format!("jail-{tag}")),
            parent_cgroup: format!("kiln-test-{}-{tag}", std::process::id()),
        }
    }

    /// The jail root of `id`, as the host sees it.
    pub fn root(&self, id: &str) -> PathBuf {
        self.base.0.join("kiln").join(id).join("root")
    }

    /// A jailer command for `id` with the test's base, parent cgroup, uid and gid and the
    /// static kiln, then `extra` jailer arguments, then `--` and kiln's `--api-sock`.
    pub fn command(&self, id: &str, extra: &[&str]) -> Command {
        self.command_as(id, &static_kiln(), &UID.to_string(), extra)
    }

    /// [`JailTest::command`] with another exec file and uid.
    pub fn command_as(&self, id: &str, exec_file: &Path, uid: &str, extra: &[&str]) -> Command {
        self.command_ids(id, exec_file, uid, &GID.to_string(), extra)
    }

    /// [`JailTest::command`] with another exec file, uid and gid.
    pub fn command_ids(
        &self,
        id: &str,
        exec_file: &Path,
        uid: &str,
        gid: &str,
        extra: &[&str],
    ) -> Command {
        let mut cmd = Command::new(static_jailer());
        cmd.arg("--id")
            .arg(id)
            .arg("--exec-file")
            .arg(exec_file)
            .args(["--uid", uid, "--gid", gid])
            .arg("--chroot-base-dir")
            .arg(&self.base.0)
            .args(["--parent-cgroup", &self.parent_cgroup])
            .args(extra)
            .args(["--", "--api-sock", "/run/kiln.socket"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs a jailer that must refuse to start; returns its exit status and stderr.
    pub fn refused(&self, mut cmd: Command) -> (i32, String) {
        let out = super::wait_with_timeout(cmd.spawn().unwrap(), START_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), stderr)
    }

    /// Starts a jailed kiln serving its API at /run/kiln.socket and waits for the socket.
    pub fn start(&self, id: &str, extra: &[&str]) -> Jailed {
        self.start_command(id, self.command(id, extra))
    }

    /// Like [`JailTest::start`] with a prepared command.
    pub fn start_command(&self, id: &str, mut cmd: Command) -> Jailed {
        let mut child = cmd.spawn().unwrap();
        let root = self.root(id);
        let sock = root.join("run/kiln.socket");
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                // The jailer may exit 0 after starting kiln elsewhere (--new-pid-ns).
                assert!(
                    status.success(),
                    "{}",
                    output_text(child.wait_with_output())
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never accepted",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = fs::read_to_string(root.join("kiln.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Jailed {
            pid,
            root,
            child: Some(child),
            stopped: false,
        }
    }
}

fn output_text(out: std::io::Result<Output>) -> String {
    let out = out.unwrap();
    format!(
        "jailer exited {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for JailTest {
    fn drop(&mut self) {
        for hierarchy in cgroup_mounts(1).into_iter().chain(cgroup_mounts(2)) {
            let parent = hierarchy.join(&self.parent_cgroup);
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    remove_cgroup(&entry.path());
                }
            }
            remove_cgroup(&parent);
        }
    }
}

/// Removes a cgroup, retrying while its last process finishes exiting.
fn remove_cgroup(path: &Path) {
    for _ in 0..200 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running jailed kiln, killed (and waited for) on drop.
pub struct Jailed {
    /// kiln's pid, from the jail's pid file.
    pub pid: u32,
    /// The jail root, as the host sees it.
    pub root: PathBuf,
    /// The jailer process, which became kiln unless it forked.
    child: Option<Child>,
    /// Whether kiln was killed already (its pid may since belong to another process).
    stopped: bool,
}

impl Jailed {
    /// The API socket, as the host sees it.
    pub fn socket(&self) -> PathBuf {
        self.root.join("run/kiln.socket")
    }

    /// A line of /proc/PID/status without its key, e.g. `status("Uid")`.
    pub fn status(&self, key: &str) -> String {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let prefix = format!("{key}:");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid))
    }

    /// kiln's cgroup path in the v1 hierarchy of `controller`, or in v2 for `""`.
    pub fn cgroup(&self, controller: &str) -> String {
        let text = fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).unwrap();
        text.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                let hit = if controller.is_empty() {
                    list.is_empty()
                } else {
                    list.split(',').any(|c| c == controller)
                };
                hit.then(|| path.to_string())
            })
            .unwrap()
    }

    /// Kills kiln and returns what the jailer/kiln process printed (when it is our child).
    pub fn kill(mut self) -> Option<Output> {
        self.stop()
    }

    fn stop(&mut self) -> Option<Output> {
        self.stopped = true;
        // SAFETY: kill sends a signal and touches no memory.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        let out = self.child.take().map(|c| c.wait_with_output().unwrap());
        // kiln may be a grandchild (--new-pid-ns), reaped by init: wait until it is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid));
        while proc_dir.exists() && !is_zombie(&proc_dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        out
    }
}

fn is_zombie(proc_dir: &Path) -> bool {
    fs::read_to_string(proc_dir.join("stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for Jailed {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

/// The device and inode of `path`, following symlinks (so `/proc/PID/root` gives the jail's).
pub fn dev_ino(path: &Path) -> (u64, u64) {
    let meta = fs::metadata(path).unwrap();
    (meta.dev(), meta.ino())
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("kiln-jail-{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name} failed");
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
