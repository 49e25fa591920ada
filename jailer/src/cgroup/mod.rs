//! Step 5: the microVM's cgroup. Each `--cgroup KEY=VALUE` (`cpu.shares=512`,
//! `hugetlb.2MB.max=0`) names its controller before the first dot; the jailer finds the
//! hierarchy holding that controller, creates `<hierarchy>/<parent cgroup>/<id>`, writes the
//! values and moves itself in, so kiln starts inside it. As in Firecracker:
//!
//! - cgroup v1 (the default): one cgroup per hierarchy the keys touch; a new cpuset cgroup
//!   inherits `cpuset.cpus` and `cpuset.mems` from its parent, since an empty one admits no
//!   process;
//! - cgroup v2: the unified hierarchy, with each key's controller enabled in
//!   `cgroup.subtree_control` from the root down to the parent cgroup; without any `--cgroup`,
//!   the jailer joins `<parent cgroup>` itself when it exists;
//! - no `--cgroup` with v1: no cgroup.
//!
//! [`Plan::new`] checks everything that can be checked without changing the system (the key
//! format, that the controller is mounted); [`Plan::apply`] finds the rest (a key the
//! controller does not have) and, on any error, leaves no cgroup behind.

pub mod mounts;

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use crate::sys;
use mounts::Hierarchy;

/// A `--cgroup` or `--parent-cgroup` that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "--cgroup '{0}' must be KEY=VALUE, with a key that names the controller before a dot \
         (e.g. cpu.shares=512)."
    )]
    Format(String),
    #[error("--parent-cgroup '{0}' must be a relative path without '.' or '..'.")]
    Parent(PathBuf),
    #[error("--cgroup-version {0}: no cgroup v{0} hierarchy is mounted (see /proc/mounts).")]
    NoHierarchy(u8),
    #[error("--cgroup '{key}': no cgroup v{version} hierarchy has the {controller} controller.")]
    NoController {
        key: String,
        controller: String,
        version: u8,
    },
    #[error("--cgroup '{key}': the cgroup key does not exist in '{dir}'.")]
    UnknownKey { key: String, dir: PathBuf },
    #[error("--cgroup '{key}': '{path}' refused the value: {source}")]
    Write {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("Failed to read '{path}': {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("Failed to create the cgroup '{path}': {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("Failed to enable the {controller} controller in '{path}': {source}")]
    Enable {
        controller: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("Failed to move the jailer into the cgroup '{path}': {source}")]
    Join { path: PathBuf, source: io::Error },
}

impl CgroupError {
    /// Whether the caller's arguments are at fault, rather than the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Format(_)
                | Self::Parent(_)
                | Self::NoHierarchy(_)
                | Self::NoController { .. }
                | Self::UnknownKey { .. }
                | Self::Write { .. }
        )
    }
}

/// One `--cgroup` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    key: String,
    value: String,
    controller: String,
}

impl Setting {
    fn parse(arg: &str) -> Result<Self, CgroupError> {
        let bad = || CgroupError::Format(arg.to_string());
        let (key, value) = arg.split_once('=').ok_or_else(bad)?;
        let key_ok = key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !key.contains("..");
        let controller = match key.split_once('.') {
            Some((controller, file)) if key_ok && !controller.is_empty() && !file.is_empty() => {
                controller
            }
            _ => return Err(bad()),
        };
        if value.is_empty() || value.contains('\n') {
            return Err(bad());
        }
        Ok(Setting {
            key: key.to_string(),
            value: value.to_string(),
            controller: controller.to_string(),
        })
    }
}

/// The cgroup to create and join in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Where the hierarchy is mounted.
    hierarchy: PathBuf,
    version: u8,
    /// The controllers the settings use (v2), or those of the hierarchy (v1).
    controllers: Vec<String>,
    /// The cgroup, relative to the hierarchy.
    cgroup: PathBuf,
    /// Whether the jailer creates `cgroup` (false when it joins an existing parent).
    create: bool,
    settings: Vec<Setting>,
    /// This process's cgroup now, relative to the hierarchy: where it returns on failure.
    origin: PathBuf,
}

/// The cgroups the jailer will create and join, one per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    targets: Vec<Target>,
}

impl Plan {
    /// Validates the cgroup arguments against the hierarchies this host mounts.
    pub fn new(version: u8, args: &[String], parent: &Path, id: &str) -> Result<Plan, CgroupError> {
        let read = |path: &str| {
            fs::read_to_string(path).map_err(|source| CgroupError::Read {
                path: PathBuf::from(path),
                source,
            })
        };
        Self::from_text(
            version,
            args,
            parent,
            id,
            &read("/proc/mounts")?,
            &read("/proc/self/cgroup")?,
        )
    }

    /// [`Plan::new`] with the texts of `/proc/mounts` and `/proc/self/cgroup` given.
    fn from_text(
        version: u8,
        args: &[String],
        parent: &Path,
        id: &str,
        mounts: &str,
        self_cgroup: &str,
    ) -> Result<Plan, CgroupError> {
        if !parent
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(CgroupError::Parent(parent.to_path_buf()));
        }
        let settings = args
            .iter()
            .map(|a| Setting::parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        let hierarchies: Vec<Hierarchy> = mounts::hierarchies(mounts)
            .into_iter()
            .filter(|h| h.version == version)
            .collect();
        let cgroup = parent.join(id);
        let target = |h: &Hierarchy, controllers: Vec<String>| Target {
            hierarchy: h.path.clone(),
            version,
            origin: mounts::own_cgroup(self_cgroup, version, &h.controllers).unwrap_or_default(),
            controllers,
            cgroup: cgroup.clone(),
            create: true,
            settings: Vec::new(),
        };
        let mut targets: Vec<Target> = Vec::new();
        if version == 2 {
            let unified = hierarchies
                .first()
                .ok_or(CgroupError::NoHierarchy(version))?;
            if settings.is_empty() {
                if !parent.as_os_str().is_empty() && unified.path.join(parent).is_dir() {
                    targets.push(Target {
                        cgroup: parent.to_path_buf(),
                        create: false,
                        ..target(unified, Vec::new())
                    });
                }
                return Ok(Plan { targets });
            }
            let available = v2_controllers(&unified.path)?;
            let mut t = target(unified, Vec::new());
            for s in settings {
                if !available.contains(&s.controller) {
                    return Err(no_controller(&s, version));
                }
                if !t.controllers.contains(&s.controller) {
                    t.controllers.push(s.controller.clone());
                }
                t.settings.push(s);
            }
            targets.push(t);
        } else {
            for s in settings {
                let h = hierarchies
                    .iter()
                    .find(|h| h.controllers.contains(&s.controller))
                    .ok_or_else(|| no_controller(&s, version))?;
                match targets.iter_mut().find(|t| t.hierarchy == h.path) {
                    Some(t) => t.settings.push(s),
                    None => targets.push(Target {
                        settings: vec![s],
                        ..target(h, h.controllers.clone())
                    }),
                }
            }
        }
        Ok(Plan { targets })
    }

    /// Creates the cgroups, writes the values and moves this process in. On error, everything
    /// done so far is undone.
    pub fn apply(&self) -> Result<Joined, CgroupError> {
        let mut joined = Joined {
            entries: Vec::new(),
        };
        for target in &self.targets {
            if let Err(e) = target.apply(&mut joined) {
                joined.undo();
                return Err(e);
            }
        }
        Ok(joined)
    }
}

fn no_controller(s: &Setting, version: u8) -> CgroupError {
    CgroupError::NoController {
        key: s.key.clone(),
        controller: s.controller.clone(),
        version,
    }
}

/// The controllers a v2 hierarchy offers, from its root's `cgroup.controllers`.
fn v2_controllers(root: &Path) -> Result<Vec<String>, CgroupError> {
    let path = root.join("cgroup.controllers");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
    Ok(text.split_whitespace().map(str::to_string).collect())
}

impl Target {
    fn apply(&self, joined: &mut Joined) -> Result<(), CgroupError> {
        let root = sys::open_dir(&self.hierarchy).map_err(|source| CgroupError::Read {
            path: self.hierarchy.clone(),
            source,
        })?;
        let leaf = self.hierarchy.join(&self.cgroup);
        let mut created = false;
        let mut dir = self.hierarchy.clone();
        for component in self.cgroup.components() {
            if self.version == 2 {
                for controller in &self.controllers {
                    enable(&dir, controller)?;
                }
            }
            let parent = dir.clone();
            dir.push(component);
            if !dir.is_dir() {
                match fs::create_dir(&dir) {
                    Ok(()) => created = dir == leaf,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => return Err(CgroupError::Create { path: dir, source }),
                }
            }
            if self.controllers.iter().any(|c| c == "cpuset") && self.version == 1 {
                inherit(&parent, &dir, "cpuset.cpus")?;
                inherit(&parent, &dir, "cpuset.mems")?;
            }
        }
        let entry = joined.entries.len();
        joined.entries.push(Entry {
            root,
            cgroup: self.cgroup.clone(),
            created: created && self.create,
            origin: self.origin.clone(),
            joined: false,
        });
        for s in &self.settings {
            write_setting(&leaf, s)?;
        }
        let procs = leaf.join("cgroup.procs");
        write_line(&procs, &std::process::id().to_string())
            .map_err(|source| CgroupError::Join { path: leaf, source })?;
        if let Some(e) = joined.entries.get_mut(entry) {
            e.joined = true;
        }
        Ok(())
    }
}

/// Enables `controller` for the children of the v2 cgroup `dir`, unless it already is.
fn enable(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&path).map_err(|source| CgroupError::Read {
        path: path.clone(),
        source,
    })?;
    if enabled.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    write_line(&path, &format!("+{controller}")).map_err(|source| CgroupError::Enable {
        controller: controller.to_string(),
        path,
        source,
    })
}

/// Copies v1 `file` from cgroup `parent` to its child `dir` when the child's is empty.
fn inherit(parent: &Path, dir: &Path, file: &str) -> Result<(), CgroupError> {
    let read = |path: PathBuf| {
        fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| CgroupError::Read { path, source })
    };
    if !read(dir.join(file))?.is_empty() {
        return Ok(());
    }
    let value = read(parent.join(file))?;
    let path = dir.join(file);
    write_line(&path, &value).map_err(|source| CgroupError::Write {
        key: file.to_string(),
        path,
        source,
    })
}

fn write_setting(leaf: &Path, s: &Setting) -> Result<(), CgroupError> {
    let path = leaf.join(&s.key);
    write_line(&path, &s.value).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CgroupError::UnknownKey {
                key: s.key.clone(),
                dir: leaf.to_path_buf(),
            }
        } else {
            CgroupError::Write {
                key: s.key.clone(),
                path,
                source,
            }
        }
    })
}

/// Writes `value` to an existing cgroup file in one write, as cgroup files expect; the file is
/// never created, so a key the controller lacks is an error.
fn write_line(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// One cgroup the jailer joined, remembered so that a failed start can leave it.
#[derive(Debug)]
struct Entry {
    /// The hierarchy root, open, so the cgroup can be left even after pivot_root.
    root: OwnedFd,
    /// The cgroup, relative to the hierarchy.
    cgroup: PathBuf,
    /// Whether the jailer created it (and so removes it).
    created: bool,
    /// Where this process was before.
    origin: PathBuf,
    /// Whether this process moved in.
    joined: bool,
}

/// The cgroups this process joined.
#[derive(Debug)]
pub struct Joined {
    entries: Vec<Entry>,
}

impl Joined {
    /// Moves this process back where it was and removes the cgroups the jailer created. Best
    /// effort: this runs on the way out of a failed start, whose error is the one to report.
    pub fn undo(self) {
        let pid = std::process::id().to_string();
        for e in self.entries.iter().rev() {
            if e.joined {
                let back = sys::open_write_at(&e.root, &e.origin.join("cgroup.procs"))
                    .or_else(|_| sys::open_write_at(&e.root, Path::new("cgroup.procs")));
                if let Ok(mut procs) = back {
                    let _ = procs.write_all(pid.as_bytes());
                }
            }
            if e.created {
                let _ = sys::unlinkat(&e.root, &e.cgroup, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake hierarchy: a temporary directory with the files a cgroup root has.
    struct FakeHierarchy(PathBuf);

    impl FakeHierarchy {
        fn new(tag: &str, files: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir().join(format!("kiln-cg-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for (name, contents) in files {
                fs::write(dir.join(name), contents).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for FakeHierarchy {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const MOUNTS: &str = "\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    fn plan_v1(list: &[&str]) -> Result<Plan, CgroupError> {
        Plan::from_text(
            1,
            &args(list),
            Path::new("kiln"),
            "vm",
            MOUNTS,
            "1:cpu:/\n4:memory:/outer\n",
        )
    }

    #[test]
    fn v1_keys_find_their_hierarchy_and_share_it() {
        let plan = plan_v1(&[
            "cpu.shares=512",
            "memory.limit_in_bytes=1G",
            "cpu.cfs_quota_us=1",
        ])
        .unwrap();
        let summary: Vec<(String, String, usize)> = plan
            .targets
            .iter()
            .map(|t| {
                (
                    t.hierarchy.display().to_string(),
                    t.origin.display().to_string(),
                    t.settings.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/sys/fs/cgroup/cpu".to_string(), String::new(), 2),
                ("/sys/fs/cgroup/memory".to_string(), "outer".to_string(), 1),
            ]
        );
        assert_eq!(plan.targets[0].cgroup, Path::new("kiln/vm"));
    }

    #[test]
    fn no_keys_with_v1_means_no_cgroup() {
        assert!(plan_v1(&[]).unwrap().targets.is_empty());
    }

    #[test]
    fn malformed_keys_are_refused() {
        for arg in [
            "cpu.shares",
            "cpushares=1",
            ".shares=1",
            "cpu.=1",
            "cpu.shares=",
            "../../etc.passwd=1",
            "cpu/x.y=1",
            "cpu..x=1",
        ] {
            let err = plan_v1(&[arg]).unwrap_err();
            assert!(matches!(err, CgroupError::Format(_)), "{arg}: {err}");
        }
    }

    #[test]
    fn an_unmounted_controller_is_refused_by_name() {
        let err = plan_v1(&["nosuch.max=1"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cgroup 'nosuch.max': no cgroup v1 hierarchy has the nosuch controller."
        );
    }

    #[test]
    fn a_parent_cgroup_must_stay_inside_the_hierarchy() {
        for parent in ["/abs", "../up", "a/../b", "./a"] {
            let err = Plan::from_text(1, &[], Path::new(parent), "vm", MOUNTS, "").unwrap_err();
            assert!(matches!(err, CgroupError::Parent(_)), "{parent}: {err}");
        }
    }

    #[test]
    fn v2_needs_a_mounted_hierarchy_with_the_controller() {
        let only_v1 = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        let err = Plan::from_text(2, &[], Path::new("kiln"), "vm", only_v1, "").unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(2)), "{err}");

        let fake = FakeHierarchy::new("v2-avail", &[("cgroup.controllers", "hugetlb\n")]);
        let mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", fake.0.display());
        let err = Plan::from_text(2, &args(&["pids.max=9"]), Path::new("k"), "vm", &mounts, "")
            .unwrap_err();
        assert!(matches!(err, CgroupError::NoController { .. }), "{err}");
        let plan = Plan::from_text(
            2,
            &args(&["hugetlb.2MB.max=0"]),
            Path::new("k"),
            "vm",
            &mounts,
            "0::/\n",
        )
        .unwrap();
        assert_eq!(plan.targets.len(), 1);
        assert_eq!(plan.targets[0].controllers, vec!["hugetlb".to_string()]);
    }

    #[test]
    fn v2_without_keys_joins_an_existing_parent_only() {
        let fake = FakeHierarchy::new("v2-parent", &[("cgroup.controllers", "")]);
        let mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", fake.0.display());
        let plan = Plan::from_text(2, &[], Path::new("kiln"), "vm", &mounts, "0::/\n").unwrap();
        assert!(plan.targets.is_empty());
        fs::create_dir(fake.0.join("kiln")).unwrap();
        let plan = Plan::from_text(2, &[], Path::new("kiln"), "vm", &mounts, "0::/\n").unwrap();
        assert_eq!(plan.targets[0].cgroup, Path::new("kiln"));
        assert!(!plan.targets[0].create);
    }

    /// `apply` against a fake v1 hierarchy of plain files: the unknown key is found after the
    /// cgroup was created, and the cgroup is gone again afterwards.
    #[test]
    fn an_unknown_key_is_found_on_apply_and_leaves_no_cgroup() {
        let fake = FakeHierarchy::new("v1-apply", &[]);
        let mounts = format!("cgroup {} cgroup rw,cpu 0 0\n", fake.0.display());
        let plan = Plan::from_text(
            1,
            &args(&["cpu.nosuch=1"]),
            Path::new("p"),
            "vm",
            &mounts,
            "",
        )
        .unwrap();
        let err = plan.apply().unwrap_err();
        assert!(matches!(err, CgroupError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains("'cpu.nosuch'"), "{err}");
        assert!(!fake.0.join("p/vm").exists());
        assert!(fake.0.join("p").is_dir(), "the shared parent stays");
    }
}
