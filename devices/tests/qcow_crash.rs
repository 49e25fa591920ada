//! Crash consistency: a child process writes through Kiln's qcow2 backend and is killed with
//! SIGKILL at random points. After each kill, `qemu-img check` must find no corruption (leaks
//! are allowed), and every write covered by a flush the child reported must read back.
//!
//! The child is this test binary run again, told so by an environment variable.

// Test code: a panic is a failed test, so the workspace's no-panic lints do not apply.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod qcow_common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use devices::virtio::block::{DiskBackend, QcowFile};
use qcow_common::*;

const CHILD_ENV: &str = "KILN_QCOW_CRASH_CHILD";
const SIZE: u64 = 4 << 20;
const CLUSTER: u64 = 4096;
/// Writes between flushes.
const FLUSH_EVERY: usize = 8;
const ITERATIONS: u64 = 30;

/// The child's writes, the same sequence for the same seed.
fn writes(seed: u64) -> impl Iterator<Item = (u64, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    std::iter::repeat_with(move || random_writes(&mut rng, SIZE, CLUSTER, 1).remove(0))
}

/// The child: writes forever, printing "FLUSHED <seq>" once writes 0..=seq are flushed.
fn child(image: &Path, seed: u64) {
    let mut disk = unlocked(|| QcowFile::open(image, false)).unwrap();
    let mut out = std::io::stdout().lock();
    for (seq, (offset, data)) in writes(seed).enumerate().take(1_000_000) {
        disk.write_at(&data, offset).unwrap();
        if (seq + 1) % FLUSH_EVERY == 0 {
            disk.flush().unwrap();
            writeln!(out, "FLUSHED {seq}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn killed_writers_leave_consistent_images() {
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        let (image, seed) = arg.rsplit_once(':').unwrap();
        child(Path::new(image), seed.parse().unwrap());
        return;
    }
    if !have_qemu() {
        return;
    }
    let dir = scratch("crash");
    let base = dir.join("base.raw");
    let mut base_data = vec![0u8; 3 << 20];
    Rng::new(99).fill(&mut base_data);
    std::fs::write(&base, &base_data).unwrap();
    let template = dir.join("template.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-b",
        "base.raw",
        "-F",
        "raw",
        path(&template),
        &SIZE.to_string(),
    ]);
    qemu_io(
        &template,
        "qcow2",
        &[
            "write -P 0x5a 1M 64k",
            "write -z 2M 64k",
            "write -P 0x5b 3M 100k",
        ],
    );
    let initial = qemu_raw(&template);
    let mut timing = Rng::new(1234);
    let mut leaked = 0;
    let mut durable_total = 0;
    for iteration in 0..ITERATIONS {
        let image = dir.join("image.qcow2");
        std::fs::copy(&template, &image).unwrap();
        let seed = 1000 + iteration;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_writers_leave_consistent_images",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}:{seed}", image.display()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(3 + timing.below(70)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut output = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        // libtest's "test ... " line has no newline before the child's first line.
        let flushed = output
            .split("FLUSHED ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
            .last();

        let (code, report) = check(&image);
        assert!(
            code == 0 || code == 3,
            "iteration {iteration}: qemu-img check exit {code}: {report}"
        );
        leaked += usize::from(code == 3);

        // The model: flushed writes applied; bytes that later, unflushed writes may have
        // touched are not compared.
        let durable = flushed.map_or(0, |n| n + 1);
        durable_total += durable;
        let mut expected = initial.clone();
        let mut maybe = vec![false; SIZE as usize];
        for (seq, (offset, data)) in writes(seed).enumerate().take(durable + FLUSH_EVERY) {
            let range = offset as usize..offset as usize + data.len();
            if seq < durable {
                expected[range].copy_from_slice(&data);
            } else {
                maybe[range].fill(true);
            }
        }
        let actual = qemu_raw(&image);
        let bad = (0..SIZE as usize).find(|i| !maybe[*i] && actual[*i] != expected[*i]);
        assert_eq!(
            bad, None,
            "iteration {iteration}: flushed data lost (flushed {flushed:?})"
        );
    }
    eprintln!(
        "{ITERATIONS} kills, {durable_total} flushed writes checked, {leaked} kills left leaks"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
