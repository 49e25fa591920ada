//! Snapshots of the real Linux guest, in the rig: a guest process counts on the console and
//! appends each count to a file on its root drive (synced); kiln is paused, snapshotted and
//! killed; a new kiln loads the snapshot and the count goes on without a reboot (the same boot
//! token, its uptime going on), and at the end the file on the drive holds every count once, in
//! order, up to the last one the restored guest printed. A third kiln loads the snapshot with
//! its memory served by `kiln-uffd-handler`, on the drive as the snapshot left it; a fourth
//! loads a Diff snapshot taken in the second over a copy of the Full one's memory, and goes on
//! from that later count. `clones.rs` freezes a qcow2 root at a snapshot and runs three clones
//! of it at once.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "linux_snapshot/clones.rs"]
mod clones;
mod common;

use std::sync::OnceLock;

use common::linux::{outcome_of, script_drive, Outcome, Outcomes, Scenario};

/// Counts on the console with a token drawn when the script starts (this boot's identity: a
/// reboot would run the script again with another) and the uptime, appending each count to a
/// file on the root drive and syncing it, until Ctrl-Alt-Del reboots the guest. `setup` runs
/// first; `probe` runs after each count and sets `$status`, printed at the end of its line.
fn counter(setup: &str, probe: &str) -> String {
    format!(
        r#"
{setup}
boot=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' 
')
rm -f /root/count.log
i=0
while [ $i -lt 3000 ]; do
    i=$((i + 1))
    echo $i >> /root/count.log
    sync
    status=
    {probe}
    echo "COUNT $i BOOT $boot UP $(cut -d' ' -f1 /proc/uptime)$status"
    sleep 0.2
done
"#
    )
}

/// Boots the counter in kiln A through the API, snapshots it paused, kills A; loads the
/// snapshot in kiln B, lets it count, and shuts it down with Ctrl-Alt-Del.
const DRIVER: &str = r#"
drive() {
CR=$(printf '\r')
api() {
    if [ -n "$3" ]; then
        curl -s -o resp.txt -w '%{http_code}' --unix-socket "$SOCK" -X "$1" "http://localhost$2" \
            -H 'Content-Type: application/json' -d "$3"
    else
        curl -s -o resp.txt -w '%{http_code}' --unix-socket "$SOCK" -X "$1" "http://localhost$2"
    fi
}
start_kiln() {
    SOCK=/tmp/kiln-$1.sock
    rm -f "$SOCK"
    ./kiln --api-sock "$SOCK" --id "snap-$1" </dev/null >"kiln-$1.out" 2>&1 &
    KILN=$!
    i=0; while [ ! -S "$SOCK" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
# Whole counter lines of kiln $1's console: "COUNT n BOOT id UP secs".
counts() { grep -a -E "^COUNT [0-9]+ BOOT [0-9a-f-]+ UP [0-9.]+$CR\$" "kiln-$1.out" | tr -d '\r'; }
last() { counts "$1" | tail -n1; }
wait_count() {
    i=0; while [ "$(counts "$1" | wc -l)" -lt "$2" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
}

start_kiln a
echo "SNAP-BOOT-SOURCE=$(api PUT /boot-source '{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script=/dev/vdb"}')"
echo "SNAP-ROOTFS=$(api PUT /drives/rootfs '{"drive_id": "rootfs", "path_on_host": "snap-rootfs.img", "is_root_device": true, "is_read_only": false}')"
echo "SNAP-SCRIPT=$(api PUT /drives/script '{"drive_id": "script", "path_on_host": "snap-counter.script", "is_root_device": false, "is_read_only": true}')"
echo "SNAP-MACHINE=$(api PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}')"
echo "SNAP-START=$(api PUT /actions '{"action_type": "InstanceStart"}')"
wait_count a 5
echo "SNAP-PAUSE=$(api PATCH /vm '{"state": "Paused"}')"
echo "SNAP-CREATE=$(api PUT /snapshot/create '{"snapshot_path": "vm.snap", "mem_file_path": "vm.mem"}') $(cat resp.txt)"
echo "SNAP-LAST-A=$(last a)"
api GET /vm/config >/dev/null; cp resp.txt config-a.json
kill -9 $KILN; wait $KILN 2>/dev/null
# The drive as the snapshot left it, for the load through the page-fault handler below.
cp snap-rootfs.img rootfs-at-snapshot.img

start_kiln b
echo "SNAP-LOAD=$(api PUT /snapshot/load '{"snapshot_path": "vm.snap", "mem_backend": {"backend_type": "File", "backend_path": "vm.mem"}, "resume_vm": true, "track_dirty_pages": true}') $(cat resp.txt)"
api GET / >/dev/null; echo "SNAP-STATE-B=$(sed 's/.*"state":"\([^"]*\)".*/\1/' resp.txt)"
api GET /vm/config >/dev/null
cmp -s resp.txt config-a.json && echo "SNAP-CONFIG-SAME=yes" || echo "SNAP-CONFIG-SAME=no"
wait_count b 10
echo "SNAP-FIRST-B=$(counts b | head -n1)"
echo "SNAP-LAST-B=$(last b)"
# A Diff snapshot over a copy of the Full one's memory, and the drive as it is then.
api PATCH /vm '{"state": "Paused"}' >/dev/null
cp vm.mem merged.mem
echo "SNAP-DIFF=$(api PUT /snapshot/create '{"snapshot_type": "Diff", "snapshot_path": "diff.snap", "mem_file_path": "merged.mem"}') $(cat resp.txt)"
echo "SNAP-AT-DIFF=$(last b)"
cp snap-rootfs.img rootfs-at-diff.img
api PATCH /vm '{"state": "Resumed"}' >/dev/null
wait_count b 15
grep -a -c 'Linux version' kiln-b.out | sed 's/^/SNAP-BOOTS-B=/'
echo "SNAP-CTRL-ALT-DEL=$(api PUT /actions '{"action_type": "SendCtrlAltDel"}')"
i=0; while kill -0 $KILN 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
kill $KILN 2>/dev/null
wait $KILN; rc=$?
echo "SNAP-FINAL-B=$(last b)"

# The same snapshot again, its memory served by the page-fault handler, on the drive as the
# snapshot left it (B's is kept for the check after the run).
mv snap-rootfs.img rootfs-b.img; mv rootfs-at-snapshot.img snap-rootfs.img
rm -f /tmp/kiln-uffd.sock
./kiln-uffd-handler /tmp/kiln-uffd.sock vm.mem &
HANDLER=$!
i=0; while [ ! -S /tmp/kiln-uffd.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
start_kiln c
echo "SNAP-LOAD-UFFD=$(api PUT /snapshot/load '{"snapshot_path": "vm.snap", "mem_backend": {"backend_type": "Uffd", "backend_path": "/tmp/kiln-uffd.sock"}, "resume_vm": true}') $(cat resp.txt)"
wait_count c 5
echo "SNAP-FIRST-C=$(counts c | head -n1)"
echo "SNAP-LAST-C=$(last c)"
kill -9 $KILN; wait $KILN 2>/dev/null
kill $HANDLER; wait $HANDLER 2>/dev/null

# The Diff snapshot, on the drive as it was then: the guest goes on from the later state.
rm -f snap-rootfs.img; mv rootfs-at-diff.img snap-rootfs.img
start_kiln d
echo "SNAP-LOAD-DIFF=$(api PUT /snapshot/load '{"snapshot_path": "diff.snap", "mem_backend": {"backend_type": "File", "backend_path": "merged.mem"}, "resume_vm": true}') $(cat resp.txt)"
wait_count d 5
echo "SNAP-FIRST-D=$(counts d | head -n1)"
kill -9 $KILN; wait $KILN 2>/dev/null
# The harness reads the guest's fate from kiln's output: A's boot, then B's, C's and D's runs.
cat kiln-a.out kiln-b.out kiln-c.out kiln-d.out
return $rc
}
drive
"#;

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
        name: "snapshot-file",
        config: String::new(),
        files: vec![("snap-counter.script".into(), script_drive(&counter("", "")))],
        before: "cp rootfs.ext4 snap-rootfs.img".into(),
        run: DRIVER.into(),
        after: "echo \"SNAP-DISK=$(debugfs -R 'cat /root/count.log' rootfs-b.img 2>/dev/null \
                | tr '\\n' ' ')\"; rm -f snap-rootfs.img rootfs-b.img vm.snap vm.mem diff.snap merged.mem"
            .into(),
        timeout_secs: Some(600),
        ..Default::default()
        },
        clones::scenario(),
    ]
}

/// The outcome of the scenario `name`: both run in one rig.
fn outcome_of_scenario(name: &str) -> &'static Outcome {
    static OUTCOMES: Outcomes = OnceLock::new();
    outcome_of(&OUTCOMES, scenarios, name)
}

fn outcome() -> &'static Outcome {
    outcome_of_scenario("snapshot-file")
}

fn value(key: &str) -> String {
    outcome().expect_value(key)
}

/// A console line `COUNT n BOOT id UP secs` as (n, id, secs).
fn count_line(key: &str) -> (u64, String, f64) {
    let line = value(key);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 6, "{key}={line:?}:\n{}", outcome().tail());
    (
        f[1].parse().unwrap(),
        f[3].to_string(),
        f[5].parse().unwrap(),
    )
}

#[test]
fn the_snapshot_is_taken_of_the_paused_guest() {
    for step in [
        "SNAP-BOOT-SOURCE",
        "SNAP-ROOTFS",
        "SNAP-SCRIPT",
        "SNAP-MACHINE",
    ] {
        assert_eq!(value(step), "204", "{step}:\n{}", outcome().tail());
    }
    assert_eq!(value("SNAP-START"), "204", "{}", outcome().tail());
    assert_eq!(value("SNAP-PAUSE"), "204");
    assert_eq!(value("SNAP-CREATE"), "204", "{}", outcome().tail());
}

#[test]
fn the_restored_guest_counts_on_without_a_reboot() {
    assert_eq!(value("SNAP-LOAD"), "204", "{}", outcome().tail());
    assert_eq!(value("SNAP-STATE-B"), "Running");
    assert_eq!(value("SNAP-CONFIG-SAME"), "yes");
    let (saved, boot_a, up_a) = count_line("SNAP-LAST-A");
    let (first, boot_b, up_b) = count_line("SNAP-FIRST-B");
    let (last, boot_last, _) = count_line("SNAP-LAST-B");
    assert_eq!(boot_b, boot_a, "the restored guest booted again");
    assert_eq!(boot_last, boot_a);
    // The first count after the restore is the next one, or the one after if the console
    // had not shown the next yet when the VM paused.
    assert!(
        first == saved + 1 || first == saved + 2,
        "counted {saved} before the snapshot, {first} first after it:\n{}",
        outcome().tail()
    );
    assert!(up_b >= up_a, "uptime went back: {up_a} then {up_b}");
    assert!(last >= first + 9, "{first}..{last}");
    assert_eq!(value("SNAP-BOOTS-B"), "0", "kiln B's console shows a boot");
}

#[test]
fn the_guest_counts_on_with_its_memory_served_by_the_page_fault_handler() {
    let loaded = value("SNAP-LOAD-UFFD");
    assert_eq!(loaded, "204", "{}", outcome().tail());
    let (saved, boot_a, _) = count_line("SNAP-LAST-A");
    let (first, boot_c, _) = count_line("SNAP-FIRST-C");
    let (last, _, _) = count_line("SNAP-LAST-C");
    assert_eq!(boot_c, boot_a, "the guest booted again");
    assert!(
        first == saved + 1 || first == saved + 2,
        "{saved} then {first}"
    );
    assert!(last >= first + 4, "{first}..{last}");
}

#[test]
fn a_diff_snapshot_restores_the_later_state() {
    assert_eq!(value("SNAP-DIFF"), "204", "{}", outcome().tail());
    assert_eq!(value("SNAP-LOAD-DIFF"), "204", "{}", outcome().tail());
    let (at_diff, boot_b, _) = count_line("SNAP-AT-DIFF");
    let (first, boot_d, _) = count_line("SNAP-FIRST-D");
    assert_eq!(boot_d, boot_b, "the guest booted again");
    assert!(
        first == at_diff + 1 || first == at_diff + 2,
        "{at_diff} at the Diff snapshot, {first} first after it:\n{}",
        outcome().tail()
    );
}

#[test]
fn the_drive_holds_every_count_once_up_to_the_last_printed() {
    assert_eq!(value("SNAP-CTRL-ALT-DEL"), "204");
    assert_eq!(outcome().rc, 0, "{}", outcome().tail());
    let (last, _, _) = count_line("SNAP-FINAL-B");
    let disk: Vec<u64> = value("SNAP-DISK")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=disk.len() as u64).collect();
    assert_eq!(disk, expected, "the file on the drive is not 1..n");
    // Each count is synced before it is printed; the guest may have appended one more before
    // Ctrl-Alt-Del reached it.
    let n = disk.len() as u64;
    assert!(
        n == last || n == last + 1,
        "disk has {n}, console printed {last}"
    );
}
