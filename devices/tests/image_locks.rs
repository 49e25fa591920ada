//! Image locks with QEMU as the oracle: while Kiln has an image open, qemu-img and qemu-io see
//! Kiln's locks as they see QEMU's, and Kiln sees theirs; two Kiln opens in one process conflict
//! as two VMMs would.

// Test code: a panic is a failed test, so the workspace's no-panic lints do not apply.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod qcow_common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use devices::virtio::block::{open_disk, ImageFormat};
use qcow_common::*;

const WRITE_REFUSED: &str = "Failed to get \"write\" lock";
const SHARED_WRITE_REFUSED: &str = "Failed to get shared \"write\" lock";

fn run(program: &str, args: &[&str], image: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(image)
        .output()
        .unwrap()
}

fn qemu_write(image: &Path, fmt: &str) -> Output {
    run("qemu-io", &["-f", fmt, "-c", "write -P 0x5a 0 512"], image)
}

fn assert_refused(out: &Output, text: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(text), "{what}: {stderr}");
}

fn assert_works(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// qemu-io holding `image` open for writing until dropped.
struct QemuWriter(Child);

impl QemuWriter {
    fn open(image: &Path, fmt: &str) -> QemuWriter {
        let mut child = Command::new("qemu-io")
            .args(["-f", fmt])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Once it answers a write, the image is open and locked.
        writeln!(child.stdin.as_mut().unwrap(), "write -P 0x11 0 512").unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().contains("wrote 512/512")),
            "qemu-io did not open {}",
            image.display()
        );
        QemuWriter(child)
    }
}

impl Drop for QemuWriter {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn locked(image: &Path, text: &str) -> String {
    format!(
        "The disk image '{}' is locked: {text}; is another process using the image?",
        image.display()
    )
}

fn kiln_refused(image: &Path, read_only: bool, format: ImageFormat) -> String {
    match open_disk(image, read_only, Some(format)) {
        Ok(_) => panic!("{} opened (read_only {read_only})", image.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn qemu_and_kiln_see_each_others_locks() {
    if !have_qemu() {
        return;
    }
    let dir = scratch("locks");
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let over = dir.join("over.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        path(&over),
    ]);
    for (image, fmt, format) in [
        (&over, "qcow2", ImageFormat::Qcow2),
        (&base, "raw", ImageFormat::Raw),
    ] {
        // Kiln reads: qemu-img may look, qemu-io may not write.
        let disk = open_disk(image, true, Some(format)).unwrap();
        assert_works(&run("qemu-img", &["info", "-f", fmt], image), "info");
        if fmt == "qcow2" {
            assert_works(&run("qemu-img", &["check", "-f", fmt], image), "check");
        }
        assert_refused(
            &qemu_write(image, fmt),
            WRITE_REFUSED,
            "write while Kiln reads",
        );
        // A second Kiln reader is fine, a Kiln writer is not.
        drop(open_disk(image, true, Some(format)).unwrap());
        assert_eq!(
            kiln_refused(image, false, format),
            locked(image, WRITE_REFUSED)
        );
        drop(disk);

        // Kiln writes: as with a QEMU VM, qemu-img may look at a raw image (its raw driver
        // shares writes) but not at a qcow2 one, whose metadata may change under it.
        let disk = open_disk(image, false, Some(format)).unwrap();
        let info = run("qemu-img", &["info", "-f", fmt], image);
        if fmt == "qcow2" {
            assert_refused(&info, SHARED_WRITE_REFUSED, "info while Kiln writes");
        } else {
            assert_works(&info, "info while Kiln writes");
        }
        assert_refused(
            &qemu_write(image, fmt),
            WRITE_REFUSED,
            "write while Kiln writes",
        );
        assert_eq!(
            kiln_refused(image, true, format),
            locked(image, SHARED_WRITE_REFUSED)
        );
        assert_eq!(
            kiln_refused(image, false, format),
            locked(image, WRITE_REFUSED)
        );
        drop(disk);

        // qemu-io writes: Kiln may neither write nor read. (qemu-io shares writes to a raw
        // image, so there Kiln's own refusal to share them is what conflicts.)
        let writer = QemuWriter::open(image, fmt);
        let conflict = if fmt == "qcow2" {
            WRITE_REFUSED
        } else {
            SHARED_WRITE_REFUSED
        };
        assert_eq!(kiln_refused(image, false, format), locked(image, conflict));
        assert_eq!(
            kiln_refused(image, true, format),
            locked(image, SHARED_WRITE_REFUSED)
        );
        drop(writer);
        drop(open_disk(image, false, Some(format)).unwrap());
    }

    // A backing file is locked for reading while its overlay is open, even for writing.
    let disk = open_disk(&over, false, None).unwrap();
    assert_refused(
        &qemu_write(&base, "raw"),
        WRITE_REFUSED,
        "write to the backing file",
    );
    assert_works(
        &run("qemu-img", &["info", "-f", "raw"], &base),
        "info on the backing file",
    );
    drop(disk);
    std::fs::remove_dir_all(dir).unwrap();
}
