//! The Linux-guest harness: builds the default guest (resources/guest/build.sh, cached), packs
//! kiln, the guest artifacts and a list of scenarios into a payload, and runs it once through
//! resources/rig/run.sh: directly on a host with hardware KVM, inside the nested QEMU/SVM rig
//! otherwise. Each scenario's console output and exit status are read back from the run's
//! output, between marker lines, for the tests to assert on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::TempDir;

/// One kiln run inside the payload. Paths in `config` are relative to the payload directory.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    /// A unique name: letters, digits and '-'.
    pub name: &'static str,
    /// The Firecracker config file.
    pub config: String,
    /// Extra kiln arguments.
    pub args: &'static [&'static str],
    /// Files written into the payload directory beforehand: (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Shell commands run in the payload directory before kiln (e.g. copying images).
    pub before: String,
    /// A command prefix for kiln (e.g. `strace -f -o trace`).
    pub wrapper: &'static str,
    /// Shell commands that replace the plain kiln run (e.g. to drive kiln through its API);
    /// their exit status is the scenario's.
    pub run: String,
    /// Shell commands run after kiln, on the VMM's host (e.g. checking images); their output
    /// is part of the scenario's output.
    pub after: String,
    /// Seconds kiln may run before the payload kills it; [`SCENARIO_TIMEOUT_SECS`] when unset.
    /// Bulk transfers set more: nested TCG is slow, and slower still on a loaded machine.
    pub timeout_secs: Option<u32>,
}

impl Scenario {
    fn timeout(&self) -> u32 {
        self.timeout_secs.unwrap_or(SCENARIO_TIMEOUT_SECS)
    }
}

/// Host tools a scenario may use in `before`/`after`/`wrapper`, copied into the payload's
/// `bin/` (the rig brings their shared libraries along).
const HOST_TOOLS: &[&str] = &[
    "/sbin/e2fsck",
    "/sbin/debugfs",
    "/sbin/resize2fs",
    "/usr/bin/strace",
    "/usr/bin/qemu-img",
    "/usr/sbin/ip",
    "/usr/bin/curl",
];

/// A raw drive holding `script` for the guest init's `kiln.script=` mode.
pub fn script_drive(script: &str) -> Vec<u8> {
    let mut bytes = script.as_bytes().to_vec();
    bytes.resize(bytes.len().div_ceil(4096).max(1) * 4096, 0);
    bytes
}

/// What a scenario produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// kiln's exit status (124 or 143 when the scenario's timeout killed it).
    pub rc: i32,
    /// Everything kiln printed (guest console and log) and the `after` commands' output, `\r`
    /// stripped.
    pub output: String,
}

impl Outcome {
    /// The value after `key=` on the first line that starts with `key=`.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.output
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
    }

    /// The last lines of the output: what a failure message shows, since CI logs keep only
    /// part of a long message and the end says how the scenario stopped.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        lines[start..].join("\n")
    }

    /// Like [`Outcome::value`], failing the test when there is no such line.
    pub fn expect_value(&self, key: &str) -> String {
        self.value(key)
            .unwrap_or_else(|| panic!("no {key}= line in output ending:\n{}", self.tail()))
    }

    /// Checks that `key=` has the value `want`, showing the end of the output when not: a wrong
    /// value alone does not say whether kiln, the guest or the rig stopped.
    pub fn assert_value(&self, key: &str, want: &str) {
        let got = self.expect_value(key);
        assert!(
            got == want,
            "{key}={got}, expected {want}; output ending:\n{}",
            self.tail()
        );
    }

    /// The value of `key=` on the guest's `KILN-GUEST` lines.
    pub fn guest_value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.output
            .lines()
            .filter(|l| l.starts_with("KILN-GUEST "))
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix(&prefix).map(str::to_string))
    }

    /// Whether a line of the output contains `text`.
    pub fn has_line(&self, text: &str) -> bool {
        self.output.lines().any(|l| l.contains(text))
    }

    /// The peers [`peer_finish`] reported, with their kiln's exit status.
    pub fn peers(&self) -> Vec<(String, i32)> {
        self.output
            .lines()
            .filter_map(|l| l.strip_prefix("KILN-PEER-RC "))
            .filter_map(|l| {
                let (peer, rc) = l.split_once('=')?;
                Some((peer.to_string(), rc.trim().parse().ok()?))
            })
            .collect()
    }

    /// Like [`Outcome::value`], on the output of peer `peer`.
    pub fn peer_value(&self, peer: &str, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.peer_lines(peer)
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
    }

    /// The lines of peer `peer`'s output, without their prefix.
    fn peer_lines<'a>(&'a self, peer: &str) -> impl Iterator<Item = &'a str> {
        let prefix = peer_prefix(peer);
        self.output
            .lines()
            .filter_map(move |l| l.strip_prefix(prefix.as_str()))
    }
}

/// What [`peer_finish`] puts before each line of a peer's output.
fn peer_prefix(peer: &str) -> String {
    format!("{peer}| ")
}

/// The guest artifacts from resources/guest/build.sh.
pub fn guest_artifacts() -> PathBuf {
    let script = repo_root().join("resources/guest/build.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "building the guest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap().trim())
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Lines of a scenario's output a failure message shows.
const TAIL_LINES: usize = 40;

/// Seconds one scenario's kiln may run, by default, before the payload kills it.
const SCENARIO_TIMEOUT_SECS: u32 = 120;

fn write_payload(dir: &Path, artifacts: &Path, scenarios: &[Scenario]) {
    std::fs::copy(super::kiln_bin(), dir.join("kiln")).unwrap();
    let handler = env!("CARGO_BIN_EXE_kiln-uffd-handler");
    if scenarios
        .iter()
        .any(|s| s.run.contains("kiln-uffd-handler"))
    {
        std::fs::copy(handler, dir.join("kiln-uffd-handler")).unwrap();
    }
    // Only what some scenario names: the rig keeps the payload in RAM.
    let artifact_names = [
        "vmlinux",
        "vmlinux-nopvh",
        "bzImage",
        "initramfs.cpio.gz",
        "rootfs.ext4",
    ];
    for name in artifact_names {
        let used = scenarios.iter().any(|s| {
            [&s.config, &s.before, &s.run]
                .iter()
                .any(|t| t.contains(name))
        });
        if used {
            std::fs::copy(artifacts.join(name), dir.join(name)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for tool in HOST_TOOLS {
        let name = Path::new(tool).file_name().unwrap();
        std::fs::copy(tool, dir.join("bin").join(name))
            .unwrap_or_else(|e| panic!("{tool} is needed by the e2e tests: {e}"));
    }
    let mut script = String::from(
        "#!/bin/sh\n# Generated by tests/common/linux.rs: runs each scenario with a timeout.\n\
         PATH=\"$PWD/bin:$PATH\"\n",
    );
    for s in scenarios {
        let config = format!("{}.json", s.name);
        std::fs::write(dir.join(&config), &s.config).unwrap();
        for (name, contents) in &s.files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        let run = if s.run.is_empty() {
            format!(
                "timeout {timeout} {wrapper} ./kiln --no-api --config-file {config} {args} </dev/null 2>&1",
                timeout = s.timeout(),
                wrapper = s.wrapper,
                args = s.args.join(" "),
            )
        } else {
            s.run.clone()
        };
        script.push_str(&format!(
            "echo '=== KILN-SCENARIO-BEGIN {name}'\n\
             {before}\n\
             {run}\n\
             echo \"KILN-RC=$?\"\n\
             {after}\n\
             echo '=== KILN-SCENARIO-END {name}'\n",
            name = s.name,
            before = s.before,
            after = s.after,
        ));
    }
    std::fs::write(dir.join("run.sh"), script).unwrap();
}

/// Splits the run's output into per-scenario outcomes.
pub fn parse_outcomes(output: &str) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for raw in output.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("=== KILN-SCENARIO-BEGIN ") {
            current = Some((name.to_string(), String::new()));
        } else if let Some(name) = line.strip_prefix("=== KILN-SCENARIO-END ") {
            if let Some((begun, text)) = current.take() {
                if begun == name {
                    let rc = text
                        .lines()
                        .find_map(|l| l.strip_prefix("KILN-RC="))
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(-1);
                    outcomes.insert(name.to_string(), Outcome { rc, output: text });
                }
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    outcomes
}

/// What kiln logs when the guest triple-faults (KVM_EXIT_SHUTDOWN).
const TRIPLE_FAULT: &str = "The guest stopped the VM (triple fault (KVM_EXIT_SHUTDOWN)).";

/// What resources/rig/run.sh prints on stderr when the rig itself failed.
const RIG_FAILURE: &str = "kiln-rig: RIG-FAILURE reason=";

/// Fresh rigs a run may use after rig failures, in all.
const RIG_RERUNS: usize = 3;

/// Whether a scenario's guest triple-faulted without asking to (only `reboot=t` asks to).
fn unexpected_triple_fault(scenario: &Scenario, outcome: Option<&Outcome>) -> bool {
    let asked = [&scenario.config, &scenario.before, &scenario.run]
        .iter()
        .any(|t| t.contains("reboot=t"));
    !asked && outcome.is_some_and(|o| o.output.contains(TRIPLE_FAULT))
}

/// Whether a scenario's kiln, or one of its peers, was killed by its timeout before its guest
/// printed the marker: that guest stopped in early boot. In this rig Firecracker's guests stop
/// there too (the soak measurements in resources/rig/README.md), with the same last console
/// lines.
pub fn stopped_in_early_boot(outcome: Option<&Outcome>) -> bool {
    let killed = |rc: i32| matches!(rc, 124 | 137 | 143);
    outcome.is_some_and(|o| {
        let peers = o.peers();
        let main_ready = o
            .output
            .lines()
            .filter(|l| !peers.iter().any(|(p, _)| l.starts_with(&peer_prefix(p))))
            .any(|l| l.contains(READY));
        (killed(o.rc) && !main_ready)
            || peers
                .iter()
                .any(|(p, rc)| killed(*rc) && !o.peer_lines(p).any(|l| l.contains(READY)))
    })
}

/// What the guest init prints once userspace runs.
const READY: &str = "KILN-GUEST-READY";

/// Shell for a `before` section that starts a second kiln, a peer of the scenario's own, in the
/// background, under `wrapper`, with `config` and a timeout of `timeout_secs` (`peer` is
/// letters and digits: a shell variable holds its pid). Pair it with [`peer_finish`] in
/// `after`, which puts the peer's output into the scenario's, so that its guest's triple
/// faults and early-boot stops are told from Kiln failures as the main guest's are.
pub fn peer_start(peer: &str, wrapper: &str, config: &str, timeout_secs: u32) -> String {
    format!(
        "timeout {timeout_secs} {wrapper} ./kiln --no-api --config-file {config} \
         </dev/null >{peer}.peer.log 2>&1 &\n{peer}_pid=$!"
    )
}

/// Shell for a `before` section, after [`peer_start`]: waits (at most `secs` seconds) until the
/// peer's guest printed its marker, or the peer ended, so that the scenario's own guest does not
/// boot while the peer's is still in early boot: two guests booting side by side fail far more
/// often in the nested rig (resources/rig/README.md).
pub fn peer_wait_ready(peer: &str, secs: u32) -> String {
    format!(
        "i=0; until grep -q KILN-GUEST-READY {peer}.peer.log || ! kill -0 ${peer}_pid 2>/dev/null \
         || [ $i -ge {secs} ]; do sleep 1; i=$((i + 1)); done"
    )
}

/// Shell for an `after` section: waits for the peer [`peer_start`] started and prints its exit
/// status (`KILN-PEER-RC <peer>=<rc>`) and its output, each line prefixed with `<peer>| `.
pub fn peer_finish(peer: &str) -> String {
    format!(
        "wait ${peer}_pid; echo \"KILN-PEER-RC {peer}=$?\"\n\
         tr -d '\\r' <{peer}.peer.log | sed 's/^/{peer}| /'; rm -f {peer}.peer.log"
    )
}

/// One rig boot: the scenarios that finished, and why the rig failed, if it did.
struct PayloadRun {
    outcomes: BTreeMap<String, Outcome>,
    log: String,
    rig_failure: Option<String>,
}

/// Runs `scenarios` in one payload and returns their outcomes by name, plus the whole log.
///
/// Only failures of the rig itself run again, in a fresh rig, at most [`RIG_RERUNS`] times in
/// all, each time with a WARNING line, and the run ends with a `kiln-e2e: rig reruns: N` line:
/// - what resources/rig/run.sh reports as a rig failure: L1's kernel panicked, L1 stopped
///   running (no heartbeat), QEMU died, or the payload outlived every timeout inside it; the
///   scenarios that had not finished run again;
/// - a guest that triple-faulted without asking to, or stopped in early boot until its
///   timeout: in this rig Firecracker's guests do both too (resources/rig/README.md has the
///   measurements), and on hardware KVM neither does. A Kiln bug that does either does it
///   again in the fresh rig and fails the test.
///
/// Everything else the scenarios report (an exit status, a wrong value, a kiln crash or
/// seccomp kill, a timeout of kiln itself) is never run again.
pub fn run_scenarios(scenarios: &[Scenario]) -> (BTreeMap<String, Outcome>, String) {
    let mut outcomes = BTreeMap::new();
    let mut log = String::new();
    let mut pending: Vec<Scenario> = scenarios.to_vec();
    let mut reruns = 0;
    loop {
        let run = run_payload(&pending);
        log.push_str(&run.log);
        outcomes.extend(run.outcomes);
        let mut faulted: Vec<&'static str> = Vec::new();
        let mut why: Vec<String> = Vec::new();
        for s in &pending {
            let o = outcomes.get(s.name);
            if unexpected_triple_fault(s, o) {
                why.push(format!("{} triple-faulted", s.name));
            } else if stopped_in_early_boot(o) {
                why.push(format!("{} stopped in early boot", s.name));
            } else {
                continue;
            }
            faulted.push(s.name);
        }
        pending.retain(|s| !outcomes.contains_key(s.name) || faulted.contains(&s.name));
        let reason = match (run.rig_failure, faulted.is_empty()) {
            (Some(reason), _) => reason,
            (None, false) => {
                format!("the guest of {}", why.join(", "))
            }
            (None, true) => break,
        };
        if pending.is_empty() || reruns == RIG_RERUNS {
            break;
        }
        reruns += 1;
        for name in &faulted {
            outcomes.remove(*name);
        }
        let names: Vec<&str> = pending.iter().map(|s| s.name).collect();
        report(&format!(
            "kiln-e2e: WARNING: rig failure ({reason}); running {names:?} in a fresh rig \
             (rig rerun {reruns} of at most {RIG_RERUNS}; see tests/common/linux.rs run_scenarios)"
        ));
        log.push_str(&format!(
            "\n--- rig rerun {reruns} after a rig failure ({reason}) ---\n"
        ));
    }
    report(&format!("kiln-e2e: rig reruns: {reruns}"));
    (outcomes, log)
}

/// Writes a line to the test binary's stderr itself: the test harness captures `eprintln!`
/// of a passing test, and a rerun must show in the output of a green run too.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The reason resources/rig/run.sh gave for a rig failure, if its stderr has one.
pub fn rig_failure_reason(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        l.strip_prefix(RIG_FAILURE)
            .map(|r| r.split(':').next().unwrap_or(r).trim().to_string())
    })
}

/// Runs `scenarios` in one rig boot.
fn run_payload(scenarios: &[Scenario]) -> PayloadRun {
    let artifacts = guest_artifacts();
    let dir = TempDir::new("payload");
    write_payload(&dir.0, &artifacts, scenarios);
    let timeout: u32 = 120 + scenarios.iter().map(Scenario::timeout).sum::<u32>();
    let out = Command::new("bash")
        .arg(repo_root().join("resources/rig/run.sh"))
        .arg(&dir.0)
        .arg("--timeout")
        .arg(timeout.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    PayloadRun {
        outcomes: parse_outcomes(&stdout),
        log: format!("{stdout}\n--- stderr ---\n{stderr}"),
        rig_failure: rig_failure_reason(&stderr),
    }
}

/// The outcomes of a test binary's one payload run, and everything the run printed.
pub type Outcomes = OnceLock<(BTreeMap<String, Outcome>, String)>;

/// The outcome of scenario `name`; the first call runs `scenarios` for every test of the binary.
pub fn outcome_of(
    cache: &'static Outcomes,
    scenarios: impl FnOnce() -> Vec<Scenario>,
    name: &str,
) -> &'static Outcome {
    let (outcomes, log) = cache.get_or_init(|| run_scenarios(&scenarios()));
    outcomes
        .get(name)
        .unwrap_or_else(|| panic!("scenario {name} did not finish; the run printed:\n{log}"))
}

/// [`outcome_of`] for a scenario whose guest runs a `kiln.script=` script: checks that kiln
/// exited 0 and the script finished with 0.
pub fn finished_script(
    cache: &'static Outcomes,
    scenarios: impl FnOnce() -> Vec<Scenario>,
    name: &str,
) -> &'static Outcome {
    let o = outcome_of(cache, scenarios, name);
    assert_eq!(
        o.rc,
        0,
        "{name}: kiln exited {}; its output ends:\n{}",
        o.rc,
        o.tail()
    );
    assert_eq!(
        o.value("KILN-SCRIPT-EXIT rc").as_deref(),
        Some("0"),
        "{name}: the script failed; the output ends:\n{}",
        o.tail()
    );
    o
}
