//! Where the cgroup hierarchies are and where this process sits in them, read from
//! `/proc/mounts` and `/proc/self/cgroup` rather than assumed: hosts mount v1 controllers alone
//! or together (`cpu,cpuacct`), under any path, and a v2 hierarchy at `/sys/fs/cgroup` or at
//! `/sys/fs/cgroup/unified` beside the v1 ones.

use std::path::PathBuf;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub path: PathBuf,
    /// 1 or 2.
    pub version: u8,
    /// The v1 controllers bound to it (from the mount options); empty for v2, whose
    /// controllers are listed in its `cgroup.controllers`.
    pub controllers: Vec<String>,
}

/// The cgroup hierarchies in `mounts` (the text of `/proc/mounts`), in mount order; a
/// hierarchy mounted twice appears twice, and callers take the first.
pub fn hierarchies(mounts: &str) -> Vec<Hierarchy> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, path, fstype, options) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let version = match fstype {
                "cgroup" => 1,
                "cgroup2" => 2,
                _ => return None,
            };
            let controllers = if version == 1 {
                options
                    .split(',')
                    .filter(|o| is_v1_controller(o))
                    .map(str::to_string)
                    .collect()
            } else {
                Vec::new()
            };
            Some(Hierarchy {
                path: PathBuf::from(unescape(path)),
                version,
                controllers,
            })
        })
        .collect()
}

/// Whether a v1 mount option names a controller rather than a mount setting.
fn is_v1_controller(option: &str) -> bool {
    const SETTINGS: &[&str] = &[
        "rw",
        "ro",
        "nosuid",
        "nodev",
        "noexec",
        "relatime",
        "noatime",
        "nodiratime",
        "strictatime",
        "lazytime",
        "sync",
        "dirsync",
        "mand",
        "none",
        "noprefix",
        "xattr",
        "clone_children",
        "cpuset_v2_mode",
        "favordynmods",
    ];
    !option.is_empty() && !option.contains('=') && !SETTINGS.contains(&option)
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes in mount paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup in the hierarchy with `version` and `controllers`, from the text of
/// `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines; v2's line is `0::PATH`), relative to
/// the hierarchy root.
pub fn own_cgroup(self_cgroup: &str, version: u8, controllers: &[String]) -> Option<PathBuf> {
    self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if version == 2 {
            list.is_empty()
        } else {
            let mut listed: Vec<&str> = list.split(',').filter(|c| !c.is_empty()).collect();
            let mut wanted: Vec<&str> = controllers.iter().map(String::as_str).collect();
            listed.sort_unstable();
            wanted.sort_unstable();
            !listed.is_empty() && listed == wanted
        };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0
cgroup /sys/fs/cgroup/with\\040space cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
";

    #[test]
    fn finds_v1_and_v2_hierarchies_with_their_controllers() {
        let found = hierarchies(MOUNTS);
        let summary: Vec<(String, u8, String)> = found
            .iter()
            .map(|h| {
                (
                    h.path.display().to_string(),
                    h.version,
                    h.controllers.join(","),
                )
            })
            .collect();
        let expected = [
            ("/sys/fs/cgroup/cpu,cpuacct", 1, "cpu,cpuacct"),
            ("/sys/fs/cgroup/memory", 1, "memory"),
            ("/sys/fs/cgroup/systemd", 1, ""),
            ("/sys/fs/cgroup/with space", 1, "pids"),
            ("/sys/fs/cgroup/unified", 2, ""),
        ];
        let expected: Vec<(String, u8, String)> = expected
            .iter()
            .map(|(p, v, c)| (p.to_string(), *v, c.to_string()))
            .collect();
        assert_eq!(summary, expected);
    }

    #[test]
    fn finds_this_process_in_each_hierarchy() {
        let text = "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/user.slice/x\n";
        let cpu = ["cpuacct".to_string(), "cpu".to_string()];
        assert_eq!(own_cgroup(text, 1, &cpu), Some(PathBuf::new()));
        assert_eq!(
            own_cgroup(text, 1, &["memory".to_string()]),
            Some(PathBuf::from("process_api/abc"))
        );
        assert_eq!(own_cgroup(text, 1, &["pids".to_string()]), None);
        assert_eq!(
            own_cgroup(text, 2, &[]),
            Some(PathBuf::from("user.slice/x"))
        );
    }
}
