//! End-to-end virtio-block with the real Linux guest: it boots from the ext4 rootfs on
//! /dev/vda, a read-only drive cannot be written, a 64 MiB file written in the guest is intact
//! on the host, and cache_type decides whether a guest flush reaches the disk.
//!
//! The checks after each run (e2fsck, debugfs, cmp, strace) happen on the VMM's host: this
//! machine on hardware KVM, L1 inside the rig.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::OnceLock;

use common::linux::{finished_script, script_drive, Outcome, Outcomes, Scenario};

/// One drive of a config: (drive_id, path, is_root_device, is_read_only, cache_type).
type Drive<'a> = (&'a str, &'a str, bool, bool, &'a str);

fn config(script_dev: &str, drives: &[Drive]) -> String {
    let drives: Vec<String> = drives
        .iter()
        .map(|(id, path, root, ro, cache)| {
            format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{path}", "is_root_device": {root},
                    "is_read_only": {ro}, "cache_type": "{cache}", "io_engine": "Sync"}}"#
            )
        })
        .collect();
    format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "vmlinux",
                  "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script={script_dev}"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
  "drives": [{}]
}}"#,
        drives.join(",")
    )
}

/// 1 MiB of reproducible noise for the read-only drive.
fn noise() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const ROOT_SCRIPT: &str = r#"
echo "GUEST-ROOT=$(awk '$2 == "/" {print $1, $3, substr($4, 1, 2)}' /proc/mounts | tail -n1)"
echo "GUEST-VDA-SERIAL=$(cat /sys/block/vda/serial)"
echo "GUEST-VDB-SERIAL=$(cat /sys/block/vdb/serial)"
echo "GUEST-VDB-RO=$(cat /sys/block/vdb/ro)"
echo "GUEST-VDB-SECTORS=$(cat /sys/block/vdb/size)"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo "GUEST-RO-WRITE=succeeded"
else
    echo "GUEST-RO-WRITE=failed"
fi
# Lift the guest's own read-only flag so the write reaches the device, which must refuse it.
blockdev --setrw /dev/vdb
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo "GUEST-RO-DEVICE-WRITE=succeeded"
else
    echo "GUEST-RO-DEVICE-WRITE=failed"
fi
dd if=/dev/urandom of=/big.bin bs=1M count=64 2>/dev/null
sync
echo "GUEST-BIG-SHA=$(sha256sum /big.bin | cut -d' ' -f1)"
"#;

const ROOT_AFTER: &str = r#"
cmp -s ro.img ro-orig.img && echo "HOST-RO-UNCHANGED=yes" || echo "HOST-RO-UNCHANGED=no"
e2fsck -fn root.img >fsck.out 2>&1; echo "HOST-E2FSCK-RC=$?"; cat fsck.out
debugfs -R 'dump /big.bin big.bin' root.img 2>/dev/null
echo "HOST-BIG-SHA=$(sha256sum big.bin | cut -d' ' -f1)"
rm -f root.img big.bin ro.img
"#;

const FLUSH_SCRIPT: &str = r#"
dd if=/dev/zero of=/flushed bs=4096 count=16 conv=fsync 2>/dev/null && echo "GUEST-FSYNC=done"
"#;

/// A scenario that writes with fsync on a root drive with `cache`, counting the VMM's
/// fdatasync calls with strace.
fn flush_scenario(name: &'static str, cache: &str) -> Scenario {
    let image = format!("{name}.img");
    let script = format!("{name}-script.img");
    Scenario {
        name,
        config: config(
            "/dev/vdb",
            &[
                ("rootfs", &image, true, false, cache),
                ("script", &script, false, true, "Unsafe"),
            ],
        ),
        files: vec![(script, script_drive(FLUSH_SCRIPT))],
        before: format!("cp rootfs.ext4 {image}"),
        wrapper: "strace --seccomp-bpf -f -e trace=fdatasync,fsync -o trace.txt",
        after: format!(
            "echo \"HOST-SYNC-CALLS=$(grep -cE 'fdatasync|fsync' trace.txt)\"; rm -f trace.txt {image}"
        ),
        ..Default::default()
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "block-root",
            // The root drive is listed second: it must still become /dev/vda.
            config: config(
                "/dev/vdc",
                &[
                    ("ro-disk", "ro.img", false, true, "Unsafe"),
                    ("rootfs", "root.img", true, false, "Unsafe"),
                    ("script", "root-script.img", false, true, "Unsafe"),
                ],
            ),
            files: vec![
                ("ro-orig.img".to_string(), noise()),
                ("root-script.img".to_string(), script_drive(ROOT_SCRIPT)),
            ],
            before:
                "cp ro-orig.img ro.img && cp rootfs.ext4 root.img && truncate -s 256M root.img \
                     && resize2fs -f root.img >/dev/null 2>&1"
                    .to_string(),
            after: ROOT_AFTER.to_string(),
            ..Default::default()
        },
        flush_scenario("flush-writeback", "Writeback"),
        flush_scenario("flush-unsafe", "Unsafe"),
    ]
}

fn outcome(name: &str) -> &'static Outcome {
    static OUTCOMES: Outcomes = OnceLock::new();
    finished_script(&OUTCOMES, scenarios, name)
}

#[test]
fn boots_from_the_ext4_root_on_vda_with_drives_in_order() {
    let o = outcome("block-root");
    assert_eq!(o.expect_value("GUEST-ROOT"), "/dev/root ext4 rw");
    assert!(
        o.has_line("root=/dev/vda rw"),
        "the cmdline names the root:\n{}",
        o.tail()
    );
    assert_eq!(o.expect_value("GUEST-VDA-SERIAL"), "rootfs");
    assert_eq!(o.expect_value("GUEST-VDB-SERIAL"), "ro-disk");
    assert_eq!(o.expect_value("GUEST-VDB-SECTORS"), "2048");
}

#[test]
fn read_only_drive_refuses_writes_and_stays_unchanged() {
    let o = outcome("block-root");
    assert_eq!(o.expect_value("GUEST-VDB-RO"), "1");
    assert_eq!(o.expect_value("GUEST-RO-WRITE"), "failed");
    assert_eq!(o.expect_value("GUEST-RO-DEVICE-WRITE"), "failed");
    assert_eq!(o.expect_value("HOST-RO-UNCHANGED"), "yes");
}

#[test]
fn a_64mib_file_written_in_the_guest_is_intact_on_the_host() {
    let o = outcome("block-root");
    assert_eq!(o.expect_value("HOST-E2FSCK-RC"), "0", "{}", o.tail());
    let guest = o.expect_value("GUEST-BIG-SHA");
    assert_eq!(guest.len(), 64, "{guest}");
    assert_eq!(o.expect_value("HOST-BIG-SHA"), guest);
}

#[test]
fn writeback_flushes_reach_the_disk_and_unsafe_ones_do_not() {
    let writeback = outcome("flush-writeback");
    assert_eq!(writeback.expect_value("GUEST-FSYNC"), "done");
    let synced: u32 = writeback.expect_value("HOST-SYNC-CALLS").parse().unwrap();
    assert!(
        synced > 0,
        "no fdatasync with Writeback:\n{}",
        writeback.output
    );
    let unsafe_ = outcome("flush-unsafe");
    assert_eq!(unsafe_.expect_value("GUEST-FSYNC"), "done");
    assert_eq!(
        unsafe_.expect_value("HOST-SYNC-CALLS"),
        "0",
        "{}",
        unsafe_.output
    );
}
