//! CPU templates on the host's /dev/kvm with the tiny guest, against Firecracker v1.16.1 where
//! its binary is beside the checkout: `PUT /cpu-config` and `machine-config.cpu_template`
//! answered as Firecracker answers them, the refusals at `InstanceStart` (wrong vendor or model,
//! a capability KVM lacks, a leaf or MSR KVM does not have) in Firecracker's words, and a custom
//! template's change reaching the guest's CPUID (the tiny guest prints leaf 1's ECX) as it
//! reaches Firecracker's guest.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::firecracker::anchor;
use common::http::{request, ApiProcess, Response};
use common::tiny_kernel::{self, Ending};
use common::{have_kvm, kiln_bin, wait_with_timeout, TempDir};

const TIMEOUT: Duration = Duration::from_secs(30);
const KILN_START_ERROR: &str = "Cannot start the microVM: ";
const FIRECRACKER_START_ERROR: &str = "Start microvm error: ";
/// CPUID leaf 1 ECX bit 21, x2APIC: KVM's in-kernel LAPIC always offers it, and the guest sees
/// what KVM is told even where KVM is emulated in software (kvm_pvm passes most other feature
/// bits through from the host whatever CPUID the VMM sets, under Firecracker as under kiln).
const X2APIC: u32 = 1 << 21;
/// A custom template that clears x2APIC.
const NO_X2APIC: &str = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
    "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxx0xxxxxxxxxxxxxxxxxxxxx"}]}]}"#;

/// Status and fault message (empty for a success).
fn answer(r: &Response) -> (u16, String) {
    let fault = serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|body| body["fault_message"].as_str().map(str::to_string))
        .unwrap_or_default();
    (r.status, fault)
}

/// The VMMs to compare: kiln, and Firecracker when its binary is there.
fn programs(test: &str) -> Vec<PathBuf> {
    let mut programs = vec![PathBuf::from(kiln_bin())];
    programs.extend(anchor("firecracker", test));
    programs
}

fn serve(program: &Path, sock: &Path) -> ApiProcess {
    ApiProcess::start(program, &["--api-sock", sock.to_str().unwrap()], sock)
}

/// Bodies of `PUT /cpu-config`, good and bad, with kiln's answer to each.
const CPU_CONFIG_BODIES: [(&str, u16); 16] = [
    ("{}", 204),
    (NO_X2APIC, 204),
    (
        r#"{"kvm_capabilities": ["!1", "+2"], "msr_modifiers": [{"addr": "0b10000", "bitmap": "1x"}]}"#,
        204,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [], "x": 1}]}"#,
        204,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x100000000", "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": -1, "modifiers": []}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "modifiers": []}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
            "modifiers": [{"register": "ekx", "bitmap": "0b1"}]}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
            "modifiers": [{"register": "ecx", "bitmap": "0b1x2"}]}]}"#,
        400,
    ),
    (
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
            "modifiers": [{"register": "ecx", "bitmap": "0b111111111111111111111111111111111"}]}]}"#,
        400,
    ),
    (r#"{"kvm_capabilities": ["x"]}"#, 400),
    (r#"{"reg_modifiers": []}"#, 400),
    ("null", 400),
    ("<unparseable_payload>", 400),
];

fn cpu_config_answers(sock: &Path) -> Vec<(u16, String)> {
    CPU_CONFIG_BODIES
        .iter()
        .map(|(body, _)| answer(&request(sock, "PUT", "/cpu-config", Some(body))))
        .collect()
}

/// `machine-config` with each template name, and what `GET /machine-config` shows after each.
fn machine_config_answers(sock: &Path) -> Vec<(u16, String)> {
    let mut answers = Vec::new();
    let mut record = |r: Response| answers.push((r.status, r.body));
    for name in ["C3", "T2", "T2S", "T2CL", "T2A", "t2", "Bogus", "None"] {
        let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "{name}"}}"#);
        record(request(sock, "PUT", "/machine-config", Some(&body)));
        record(request(sock, "GET", "/machine-config", None));
    }
    let patch = r#"{"cpu_template": "T2A"}"#;
    record(request(sock, "PATCH", "/machine-config", Some(patch)));
    // A PUT that names no template keeps it; a custom template replaces it and is not shown.
    let put = r#"{"vcpu_count": 2, "mem_size_mib": 256}"#;
    record(request(sock, "PUT", "/machine-config", Some(put)));
    record(request(sock, "GET", "/machine-config", None));
    record(request(sock, "PUT", "/cpu-config", Some("{}")));
    record(request(sock, "GET", "/machine-config", None));
    record(request(sock, "PATCH", "/machine-config", Some(patch)));
    record(request(sock, "GET", "/vm/config", None));
    answers
        .into_iter()
        .map(|(status, body)| {
            // Compare JSON bodies by value: key order is not part of the API.
            let body = serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| v.to_string())
                .unwrap_or(body);
            (status, body)
        })
        .collect()
}

#[test]
fn template_requests_are_answered_as_firecracker_answers_them() {
    let dir = TempDir::new("cpu-api");
    let mut answers = Vec::new();
    for (i, program) in programs("template_requests_are_answered_as_firecracker_answers_them")
        .iter()
        .enumerate()
    {
        let sock = dir.path(&format!("{i}.sock"));
        let _vmm = serve(program, &sock);
        answers.push((cpu_config_answers(&sock), machine_config_answers(&sock)));
    }
    let (kiln_cpu, kiln_machine) = &answers[0];
    for ((body, status), (got, fault)) in CPU_CONFIG_BODIES.iter().zip(kiln_cpu) {
        assert_eq!(got, status, "{body}: {fault}");
    }
    assert!(kiln_cpu[4].1.contains("expected a string"), "{kiln_cpu:?}");
    assert!(
        kiln_machine[1].1.contains(r#""cpu_template":"C3""#),
        "{kiln_machine:?}"
    );
    if let Some((fc_cpu, fc_machine)) = answers.get(1) {
        for (i, (kiln, fc)) in kiln_cpu.iter().zip(fc_cpu).enumerate() {
            assert_eq!(kiln, fc, "{}", CPU_CONFIG_BODIES[i].0);
        }
        for (i, (kiln, fc)) in kiln_machine.iter().zip(fc_machine).enumerate() {
            assert_eq!(kiln, fc, "machine-config answer {i}");
        }
    }
}

/// Starts `program` with the tiny guest `kernel` and the `setup` requests, and answers
/// `InstanceStart`.
fn instance_start(
    program: &Path,
    dir: &TempDir,
    kernel: &Path,
    setup: &[(&str, &str)],
) -> Response {
    let sock = dir.path("start.sock");
    let _ = std::fs::remove_file(&sock);
    let _vmm = serve(program, &sock);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
    let requests = [
        ("/boot-source", boot.as_str()),
        ("/machine-config", machine),
    ];
    for (path, body) in requests.iter().chain(setup) {
        let r = request(&sock, "PUT", path, Some(body));
        assert_eq!(r.status, 204, "{} {path}: {r:?}", program.display());
    }
    request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )
}

#[test]
fn instance_start_refuses_what_firecracker_refuses() {
    assert!(have_kvm(), "/dev/kvm is required");
    let dir = TempDir::new("cpu-start");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
    let cases: [(&str, &str, &str); 6] = [
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2A"}"#,
            "",
        ),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}"#,
            "",
        ),
        (
            "/cpu-config",
            r#"{"kvm_capabilities": ["9999"]}"#,
            "Missing KVM capabilities: 0x270f",
        ),
        (
            "/cpu-config",
            r#"{"cpuid_modifiers": [{"leaf": "0x77", "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
            "Template changes a CPUID entry not supported by KVM: Leaf: 77, Subleaf: 0",
        ),
        (
            "/cpu-config",
            r#"{"msr_modifiers": [{"addr": "0xdead", "bitmap": "0b1"}]}"#,
            "Failed to get KVM vcpu msr: 0xdead",
        ),
        // Removing one of the capabilities KVM has does not stop the boot.
        ("/cpu-config", r#"{"kvm_capabilities": ["!1"]}"#, "started"),
    ];
    let firecracker = anchor(
        "firecracker",
        "instance_start_refuses_what_firecracker_refuses",
    );
    for (path, body, expected) in cases {
        let kiln = answer(&instance_start(
            Path::new(kiln_bin()),
            &dir,
            &kernel,
            &[(path, body)],
        ));
        let kiln_fault = kiln
            .1
            .strip_prefix(KILN_START_ERROR)
            .unwrap_or(&kiln.1)
            .to_string();
        match expected {
            "started" => assert_eq!(kiln.0, 204, "{body}: {kiln:?}"),
            // A static template's outcome depends on the host: Firecracker's words either way.
            "" => assert!(
                kiln.0 == 204
                    || kiln_fault.starts_with("Failed to get CPU template: CPU vendor mismatched")
                    || kiln_fault.starts_with("Failed to get CPU template: The current CPU model"),
                "{body}: {kiln:?}"
            ),
            _ => assert_eq!(kiln_fault, expected, "{body}: {kiln:?}"),
        }
        let Some(firecracker) = &firecracker else {
            continue;
        };
        let fc = answer(&instance_start(firecracker, &dir, &kernel, &[(path, body)]));
        assert_eq!(kiln.0, fc.0, "{body}: kiln {kiln:?}, Firecracker {fc:?}");
        if kiln.0 != 204 {
            assert!(fc.1.starts_with(FIRECRACKER_START_ERROR), "{fc:?}");
            assert!(
                fc.1.ends_with(&kiln_fault),
                "{body}: kiln {kiln:?}, Firecracker {fc:?}"
            );
        }
    }
}

/// Runs `program --no-api` on a config with the CPUID-printing tiny guest and `cpu_config` as
/// its `cpu-config` section; returns the guest's leaf 1 ECX.
fn guest_leaf1_ecx(program: &Path, dir: &TempDir, cpu_config: &str) -> u32 {
    let kernel = dir.write(
        "cpuid-vmlinux",
        tiny_kernel::build(false, Ending::CpuidThenReset),
    );
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
            "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}, "drives": [],
            "cpu-config": {cpu_config}}}"#,
        kernel.display()
    );
    let config = dir.write("cpuid-vm.json", config);
    // Firecracker logs to stdout, where a line can land inside the guest's: log to a file.
    let log = dir.write("cpuid-vm.log", "");
    let child = Command::new(program)
        .args(["--no-api", "--config-file", config.to_str().unwrap()])
        .args(["--log-path", log.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: {stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = stdout
        .lines()
        .find_map(|line| line.strip_prefix("CPUID1.ECX="))
        .unwrap_or_else(|| panic!("{}: no CPUID line in {stdout}", program.display()));
    u32::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn a_custom_template_changes_the_guests_cpuid() {
    assert!(have_kvm(), "/dev/kvm is required");
    let dir = TempDir::new("cpu-guest");
    let mut seen = Vec::new();
    for program in programs("a_custom_template_changes_the_guests_cpuid") {
        let plain = guest_leaf1_ecx(&program, &dir, "null");
        assert_ne!(plain & X2APIC, 0, "{}: {plain:#x}", program.display());
        let masked = guest_leaf1_ecx(&program, &dir, NO_X2APIC);
        assert_eq!(
            masked,
            plain & !X2APIC,
            "{}: {plain:#x} {masked:#x}",
            program.display()
        );
        // The same template from a file.
        let file = dir.write("no-x2apic.json", NO_X2APIC);
        let named = guest_leaf1_ecx(&program, &dir, &format!("\"{}\"", file.display()));
        assert_eq!(named, masked, "{}", program.display());
        seen.push((plain, masked));
    }
    // Firecracker's guest sees the same leaf as kiln's, with and without the template.
    if let [kiln, firecracker] = seen[..] {
        assert_eq!(kiln, firecracker, "kiln vs Firecracker (plain, masked)");
    }
}

#[test]
fn cpu_config_is_refused_after_start_as_firecracker_refuses_it() {
    assert!(have_kvm(), "/dev/kvm is required");
    let dir = TempDir::new("cpu-after");
    let kernel = dir.write("vmlinux", tiny_kernel::build(false, Ending::HaltForever));
    for program in programs("cpu_config_is_refused_after_start_as_firecracker_refuses_it") {
        let sock = dir.path("after.sock");
        let _ = std::fs::remove_file(&sock);
        let _vmm = serve(&program, &sock);
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
        assert_eq!(
            request(&sock, "PUT", "/boot-source", Some(&boot)).status,
            204
        );
        assert_eq!(
            request(&sock, "PUT", "/cpu-config", Some(NO_X2APIC)).status,
            204
        );
        let start = r#"{"action_type": "InstanceStart"}"#;
        assert_eq!(request(&sock, "PUT", "/actions", Some(start)).status, 204);
        assert_eq!(
            answer(&request(&sock, "PUT", "/cpu-config", Some("{}"))),
            (
                400,
                "The requested operation is not supported after starting the microVM.".into()
            ),
            "{}",
            program.display()
        );
    }
}
