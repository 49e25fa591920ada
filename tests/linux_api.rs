//! End-to-end HTTP API with the real Linux guest, driven with `curl --unix-socket` as in
//! Firecracker's getting-started guide: configure and boot through the socket, see the state,
//! pause and resume a guest that counts on its console, shut it down with Ctrl-Alt-Del, and
//! find the log and metrics in the files the API named.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::OnceLock;

use common::linux::{outcome_of, script_drive, Outcome, Outcomes, Scenario};

/// The guest counts on its console until Ctrl-Alt-Del reboots it, with the size (in sectors)
/// it sees for the drive that `PATCH /drives` swaps.
const COUNTER: &str = r#"
i=0
while [ $i -lt 600 ]; do
    i=$((i + 1)); echo "COUNT $i SIZE $(cat /sys/block/vdc/size)"; sleep 0.2
done
"#;

/// Drives kiln through its socket. `api METHOD PATH [BODY]` prints the HTTP status and leaves
/// the body in resp.txt; `count` prints the guest's last counter value.
const DRIVER: &str = r#"
drive() {
SOCK=/tmp/kiln-api.sock
rm -f $SOCK kiln.out api.log metrics.ndjson
./kiln --api-sock $SOCK --id api-e2e </dev/null >kiln.out 2>&1 &
KILN=$!
i=0; while [ ! -S $SOCK ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
api() {
    if [ -n "$3" ]; then
        curl -s -o resp.txt -w '%{http_code}' --unix-socket $SOCK -X "$1" "http://localhost$2" \
            -H 'Content-Type: application/json' -d "$3"
    else
        curl -s -o resp.txt -w '%{http_code}' --unix-socket $SOCK -X "$1" "http://localhost$2"
    fi
}
state() { api GET / >/dev/null; sed 's/.*"state":"\([^"]*\)".*/\1/' resp.txt; }
# Whole counter lines only: a kernel message or a log line can land in the middle of one, and
# the last one may still be arriving; a finished console line ends in CR LF.
CR=$(printf '\r')
counter() { grep -a -E "^COUNT [0-9]+ SIZE [0-9]+$CR\$" kiln.out | tail -n1 | tr -d '\r'; }
count() { counter | cut -d' ' -f2; }
size() { counter | cut -d' ' -f4; }
echo "API-STATE-BEFORE=$(state)"
echo "API-PAUSE-BEFORE-START=$(api PATCH /vm '{"state": "Paused"}') $(cat resp.txt)"
echo "API-LOGGER=$(api PUT /logger '{"log_path": "api.log", "level": "Info", "show_level": true}')"
echo "API-METRICS=$(api PUT /metrics '{"metrics_path": "metrics.ndjson"}')"
echo "API-BOOT-SOURCE=$(api PUT /boot-source '{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script=/dev/vdb"}')"
echo "API-ROOTFS=$(api PUT /drives/rootfs '{"drive_id": "rootfs", "path_on_host": "api-rootfs.img", "is_root_device": true, "is_read_only": false}')"
echo "API-SCRIPT=$(api PUT /drives/script '{"drive_id": "script", "path_on_host": "counter.script", "is_root_device": false, "is_read_only": true}')"
echo "API-SWAP-DRIVE=$(api PUT /drives/swap '{"drive_id": "swap", "path_on_host": "swap1.img", "is_root_device": false, "is_read_only": true}')"
echo "API-MACHINE=$(api PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}')"
echo "API-START=$(api PUT /actions '{"action_type": "InstanceStart"}')"
echo "API-STATE-AFTER-START=$(state)"
echo "API-BOOT-SOURCE-AFTER-START=$(api PUT /boot-source '{"kernel_image_path": "vmlinux"}') $(cat resp.txt)"
i=0; while [ -z "$(count)" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "API-PAUSE=$(api PATCH /vm '{"state": "Paused"}')"
echo "API-STATE-PAUSED=$(state)"
sleep 1; c1=$(count); sleep 3; c2=$(count)
echo "API-RESUME=$(api PATCH /vm '{"state": "Resumed"}')"
sleep 3; c3=$(count)
echo "API-COUNTS=$c1 $c2 $c3"
echo "API-SIZE-BEFORE-PATCH=$(size)"
echo "API-PATCH-DRIVE=$(api PATCH /drives/swap '{"drive_id": "swap", "path_on_host": "swap2.img"}')"
sleep 2
echo "API-SIZE-AFTER-PATCH=$(size)"
echo "API-FLUSH=$(api PUT /actions '{"action_type": "FlushMetrics"}')"
echo "API-CTRL-ALT-DEL=$(api PUT /actions '{"action_type": "SendCtrlAltDel"}')"
i=0; while kill -0 $KILN 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
kill $KILN 2>/dev/null
wait $KILN; rc=$?
# kiln's own output belongs to the scenario's: the harness reads the guest's fate from it, and
# from the log, which PUT /logger moved to api.log (a guest that triple-faulted in early boot,
# as guests do in this rig under Firecracker too, is a rig failure the harness reruns).
cat kiln.out api.log
grep -a 'Started 1 vCPUs' api.log >/dev/null && echo "API-LOG-FILE=has-lines" || echo "API-LOG-FILE=missing"
echo "API-METRICS-LINES=$(grep -c utc_timestamp_ms metrics.ndjson)"
grep -q '"vcpu"' metrics.ndjson && echo "API-METRICS-VCPU=yes" || echo "API-METRICS-VCPU=no"
return $rc
}
drive
"#;

fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "api-getting-started",
        config: String::new(),
        files: vec![("counter.script".into(), script_drive(COUNTER))],
        before:
            "cp rootfs.ext4 api-rootfs.img && truncate -s 1M swap1.img && truncate -s 3M swap2.img"
                .into(),
        run: DRIVER.into(),
        after: "rm -f api-rootfs.img swap1.img swap2.img".into(),
        ..Default::default()
    }]
}

fn outcome() -> &'static Outcome {
    static OUTCOMES: Outcomes = OnceLock::new();
    outcome_of(&OUTCOMES, scenarios, "api-getting-started")
}

fn value(key: &str) -> String {
    outcome().expect_value(key)
}

fn assert_value(key: &str, want: &str) {
    outcome().assert_value(key, want)
}

#[test]
fn the_getting_started_sequence_boots_the_guest() {
    assert_value("API-STATE-BEFORE", "Not started");
    for step in [
        "API-BOOT-SOURCE",
        "API-ROOTFS",
        "API-SCRIPT",
        "API-MACHINE",
        "API-START",
    ] {
        assert_eq!(value(step), "204", "{step}:\n{}", outcome().tail());
    }
    assert_value("API-STATE-AFTER-START", "Running");
}

#[test]
fn state_changes_are_refused_in_the_wrong_phase() {
    let before = value("API-PAUSE-BEFORE-START");
    assert!(before.starts_with("400 "), "{before}");
    assert!(
        before.contains("not supported before starting the microVM"),
        "{before}"
    );
    let after = value("API-BOOT-SOURCE-AFTER-START");
    assert!(after.starts_with("400 "), "{after}");
    assert!(
        after.contains("not supported after starting the microVM"),
        "{after}"
    );
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    assert_value("API-PAUSE", "204");
    assert_value("API-STATE-PAUSED", "Paused");
    assert_value("API-RESUME", "204");
    let counts: Vec<u32> = value("API-COUNTS")
        .split_whitespace()
        .map(|c| {
            c.parse()
                .unwrap_or_else(|_| panic!("count {c:?}; the output ends:\n{}", outcome().tail()))
        })
        .collect();
    assert_eq!(counts.len(), 3, "{:?}", outcome().tail());
    assert_eq!(counts[0], counts[1], "the counter moved while paused");
    assert!(
        counts[2] > counts[1],
        "the counter did not resume: {counts:?}"
    );
}

#[test]
fn ctrl_alt_del_shuts_the_guest_down_and_kiln_exits_0() {
    assert_value("API-CTRL-ALT-DEL", "204");
    assert_eq!(outcome().rc, 0, "{}", outcome().tail());
}

#[test]
fn log_and_metrics_reach_the_configured_files() {
    assert_value("API-LOGGER", "204");
    assert_value("API-METRICS", "204");
    assert_value("API-FLUSH", "204");
    assert_value("API-LOG-FILE", "has-lines");
    let lines: u32 = value("API-METRICS-LINES").parse().unwrap();
    assert!(lines >= 1);
    assert_value("API-METRICS-VCPU", "yes");
}

#[test]
fn patching_a_drive_swaps_its_file_and_the_guest_sees_the_new_size() {
    assert_value("API-SWAP-DRIVE", "204");
    assert_value("API-SIZE-BEFORE-PATCH", "2048");
    assert_eq!(value("API-PATCH-DRIVE"), "204", "{}", outcome().tail());
    assert_eq!(
        value("API-SIZE-AFTER-PATCH"),
        "6144",
        "{}",
        outcome().output
    );
}
