//! End-to-end qcow2 with the real Linux guest: it boots from a qcow2 overlay whose base is the
//! ext4 rootfs converted to qcow2; its writes land in the overlay only; the overlay is clean
//! for `qemu-img check`; after `qemu-img commit` the guest boots from the base and finds them.
//!
//! qemu-img is the independent oracle and runs on the VMM's host (L1 in the rig), never in Kiln.

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

fn config(root: &str, format: Option<&str>, script: &str) -> String {
    let format = format
        .map(|f| format!(r#", "format": "{f}""#))
        .unwrap_or_default();
    format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "vmlinux",
                  "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script=/dev/vdb"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
  "drives": [
    {{"drive_id": "rootfs", "path_on_host": "{root}", "is_root_device": true,
      "is_read_only": false, "cache_type": "Writeback"{format}}},
    {{"drive_id": "script", "path_on_host": "{script}", "is_root_device": false,
      "is_read_only": true}}
  ]
}}"#
    )
}

const WRITE_SCRIPT: &str = r#"
echo "GUEST-ROOT=$(awk '$2 == "/" {print $3, substr($4, 1, 2)}' /proc/mounts | tail -n1)"
dd if=/dev/urandom of=/written.bin bs=64k count=64 2>/dev/null
echo "kiln was here" > /marker.txt
sync
echo "GUEST-WRITTEN-SHA=$(sha256sum /written.bin | cut -d' ' -f1)"
"#;

const READ_SCRIPT: &str = r#"
echo "GUEST-MARKER=$(cat /marker.txt)"
echo "GUEST-READ-SHA=$(sha256sum /written.bin | cut -d' ' -f1)"
"#;

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "qcow-overlay",
            config: config("overlay.qcow2", None, "write-script.img"),
            files: vec![("write-script.img".into(), script_drive(WRITE_SCRIPT))],
            before: "qemu-img convert -f raw -O qcow2 rootfs.ext4 base.qcow2 && \
                     qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2 && \
                     sha256sum base.qcow2 > base.sha256"
                .into(),
            after: r#"
sha256sum -c -s base.sha256 && echo "HOST-BASE-UNCHANGED=yes" || echo "HOST-BASE-UNCHANGED=no"
qemu-img check overlay.qcow2; echo "HOST-CHECK-RC=$?"
qemu-img commit -q overlay.qcow2; echo "HOST-COMMIT-RC=$?"
qemu-img check base.qcow2 >/dev/null; echo "HOST-BASE-CHECK-RC=$?"
"#
            .into(),
            ..Default::default()
        },
        Scenario {
            // The explicit format exercises the drive's `format` extension field.
            name: "qcow-committed-base",
            config: config("base.qcow2", Some("Qcow2"), "read-script.img"),
            files: vec![("read-script.img".into(), script_drive(READ_SCRIPT))],
            after: "rm -f base.qcow2 overlay.qcow2".into(),
            ..Default::default()
        },
    ]
}

fn outcome(name: &str) -> &'static Outcome {
    static OUTCOMES: Outcomes = OnceLock::new();
    finished_script(&OUTCOMES, scenarios, name)
}

#[test]
fn boots_from_a_qcow2_overlay_and_writes_only_the_overlay() {
    let o = outcome("qcow-overlay");
    assert_eq!(o.expect_value("GUEST-ROOT"), "ext4 rw");
    assert_eq!(o.expect_value("HOST-BASE-UNCHANGED"), "yes", "{}", o.tail());
    assert_eq!(o.expect_value("HOST-CHECK-RC"), "0", "{}", o.tail());
    assert!(
        o.has_line("No errors were found on the image."),
        "{}",
        o.tail()
    );
}

#[test]
fn committed_writes_are_found_when_booting_the_base() {
    let written = outcome("qcow-overlay").expect_value("GUEST-WRITTEN-SHA");
    assert_eq!(written.len(), 64);
    assert_eq!(outcome("qcow-overlay").expect_value("HOST-COMMIT-RC"), "0");
    assert_eq!(
        outcome("qcow-overlay").expect_value("HOST-BASE-CHECK-RC"),
        "0"
    );
    let base = outcome("qcow-committed-base");
    assert_eq!(base.expect_value("GUEST-MARKER"), "kiln was here");
    assert_eq!(base.expect_value("GUEST-READ-SHA"), written);
}
