//! End-to-end: kiln boots the real Linux guest (resources/guest) to its marker, in every kernel
//! form with 1 vCPU (and once with 2), and ends with status 0 when the guest reboots; and CPU
//! templates (static T2A, a custom `cpu-config`) change the flags the guest's /proc/cpuinfo
//! shows, against a boot without one.
//!
//! All scenarios run in one payload: on a host with hardware KVM directly, otherwise inside the
//! nested QEMU/SVM rig (one rig boot for all of them). Each test asserts on its own scenario.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::firecracker::anchor;
use common::linux::{
    parse_outcomes, rig_failure_reason, run_scenarios, script_drive, stopped_in_early_boot,
    Outcome, Scenario,
};

/// Firecracker's recommended arguments for a serial-console guest, with reboot=k.
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

fn config(kernel: &str, vcpus: u8, boot_args: &str) -> String {
    format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "{kernel}", "initrd_path": "initramfs.cpio.gz", "boot_args": "{boot_args}"}},
  "machine-config": {{"vcpu_count": {vcpus}, "mem_size_mib": 256, "smt": false}}
}}"#
    )
}

/// A scenario that only boots the guest.
fn boot(name: &'static str, config: String, args: &'static [&'static str]) -> Scenario {
    Scenario {
        name,
        config,
        args,
        ..Default::default()
    }
}

/// What the CPU-template scenarios' guests report from /proc/cpuinfo.
const CPUINFO_SCRIPT: &str = r#"
field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'; }
echo "GUEST-CPU-VENDOR=$(field vendor_id)"
echo "GUEST-CPU-FMS=$(field 'cpu family')-$(field model)-$(field stepping)"
echo "GUEST-CPU-FLAGS=$(field flags)"
"#;

/// A custom template that clears SSE4.2 (CPUID leaf 1 ECX bit 20).
const NO_SSE4_2: &str = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
    "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxx0xxxxxxxxxxxxxxxxxxxx"}]}]}"#;

/// A guest that prints its CPU's vendor, family-model-stepping and flags, with `machine` added
/// to its machine-config and `cpu_config` as its cpu-config section.
fn cpuinfo(name: &'static str, machine: &str, cpu_config: &str) -> Scenario {
    let script = format!("{name}-script.img");
    Scenario {
        name,
        config: format!(
            r#"{{
  "boot-source": {{"kernel_image_path": "vmlinux", "initrd_path": "initramfs.cpio.gz",
                  "boot_args": "{BOOT_ARGS} kiln.script=/dev/vda"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256{machine}}},
  "drives": [{{"drive_id": "script", "path_on_host": "{script}", "is_root_device": false,
              "is_read_only": true}}],
  "cpu-config": {cpu_config}
}}"#
        ),
        files: vec![(script, script_drive(CPUINFO_SCRIPT))],
        ..Default::default()
    }
}

/// `scenario` run by Firecracker v1.16.1 instead of kiln, the oracle: none when its binary is
/// absent.
fn under_firecracker(mut scenario: Scenario) -> Option<Scenario> {
    let binary = anchor("firecracker", scenario.name)?;
    scenario
        .files
        .push(("firecracker".into(), std::fs::read(binary).unwrap()));
    scenario.before = "chmod +x firecracker".into();
    scenario.run = format!(
        "timeout 120 ./firecracker --no-api --config-file {}.json </dev/null 2>&1",
        scenario.name
    );
    Some(scenario)
}

fn scenarios() -> Vec<Scenario> {
    let reboot_t = BOOT_ARGS.replace("reboot=k", "reboot=t");
    let demo = format!("{BOOT_ARGS} kiln.run=demo");
    vec![
        boot("pvh-1", config("vmlinux", 1, BOOT_ARGS), &[]),
        boot("pvh-2", config("vmlinux", 2, BOOT_ARGS), &[]),
        boot("linux64-1", config("vmlinux-nopvh", 1, BOOT_ARGS), &[]),
        boot("bzimage-1", config("bzImage", 1, BOOT_ARGS), &[]),
        boot("reboot-t", config("vmlinux", 1, &reboot_t), &[]),
        boot(
            "boot-timer",
            config("vmlinux", 1, BOOT_ARGS),
            &["--boot-timer"],
        ),
        boot("demo", config("bzImage", 1, &demo), &[]),
        cpuinfo("cpu-plain", "", "null"),
        cpuinfo("cpu-t2a", r#", "cpu_template": "T2A""#, "null"),
        cpuinfo("cpu-custom", "", NO_SSE4_2),
    ]
    .into_iter()
    .chain(under_firecracker(cpuinfo(
        "cpu-t2a-firecracker",
        r#", "cpu_template": "T2A""#,
        "null",
    )))
    .collect()
}

fn outcomes() -> &'static BTreeMap<String, Outcome> {
    static OUTCOMES: OnceLock<(BTreeMap<String, Outcome>, String)> = OnceLock::new();
    let (outcomes, log) = OUTCOMES.get_or_init(|| run_scenarios(&scenarios()));
    if outcomes.len() != scenarios().len() {
        panic!("not every scenario finished; the run printed:\n{log}");
    }
    outcomes
}

fn outcome(name: &str) -> &'static Outcome {
    &outcomes()[name]
}

/// Checks a scenario booted to the marker and ended cleanly with `cpus` CPUs online.
fn assert_booted(name: &str, cpus: u8) -> &'static Outcome {
    let o = outcome(name);
    assert!(
        o.has_line("KILN-GUEST-READY"),
        "{name}: no marker:\n{}",
        o.tail()
    );
    assert_eq!(o.rc, 0, "{name}: kiln exited {}:\n{}", o.rc, o.tail());
    let online = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(
        o.guest_value("cpus-online"),
        Some(online),
        "{name}:\n{}",
        o.tail()
    );
    assert_eq!(o.guest_value("nproc"), Some(cpus.to_string()), "{name}");
    assert_eq!(
        o.guest_value("clocksource").as_deref(),
        Some("kvm-clock"),
        "{name}"
    );
    o
}

fn assert_protocol(o: &Outcome, protocol: &str) {
    assert!(
        o.has_line(&format!("via {protocol}")),
        "expected a {protocol} entry:\n{}",
        o.tail()
    );
}

#[test]
fn vmlinux_boots_through_pvh() {
    assert_protocol(assert_booted("pvh-1", 1), "Pvh");
}

/// The one guest with two vCPUs: in the nested rig a 2-vCPU guest fails to boot about four
/// times as often as a 1-vCPU one, under Firecracker as under Kiln (resources/rig/README.md),
/// so every other scenario runs one vCPU. AP start-up does not depend on the boot protocol.
#[test]
fn a_second_vcpu_comes_online() {
    assert_protocol(assert_booted("pvh-2", 2), "Pvh");
}

#[test]
fn vmlinux_without_pvh_note_boots_through_the_64bit_entry() {
    assert_protocol(assert_booted("linux64-1", 1), "Linux64");
}

#[test]
fn bzimage_boots() {
    assert_protocol(assert_booted("bzimage-1", 1), "Linux64");
}

#[test]
fn reboot_k_ends_through_the_i8042() {
    let o = assert_booted("pvh-1", 1);
    assert!(
        o.has_line("The guest stopped the VM (i8042 reset)"),
        "{}",
        o.tail()
    );
}

#[test]
fn reboot_t_ends_through_a_triple_fault() {
    let o = assert_booted("reboot-t", 1);
    assert!(
        o.has_line("triple fault (KVM_EXIT_SHUTDOWN)"),
        "{}",
        o.tail()
    );
}

#[test]
fn boot_timer_logs_the_guest_boot_time() {
    let o = assert_booted("boot-timer", 1);
    let us: u64 = o
        .output
        .lines()
        .find_map(|l| l.split("Guest-boot-time =").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Guest-boot-time line:\n{}", o.tail()));
    assert!(us > 0);
    assert!(
        !outcome("pvh-1").has_line("Guest-boot-time"),
        "the timer is off by default"
    );
}

#[test]
fn demo_session_runs_its_commands() {
    let o = assert_booted("demo", 1);
    assert!(o.has_line("kiln# uname -a"), "{}", o.tail());
    assert!(o.output.contains("Linux"), "{}", o.tail());
    assert!(o.has_line("kiln# free -m"), "{}", o.tail());
}

/// The flags a guest's /proc/cpuinfo shows, after its script ran.
fn cpu_flags(name: &str) -> Vec<String> {
    let o = outcome(name);
    assert_eq!(o.rc, 0, "{name}: kiln exited {}:\n{}", o.rc, o.tail());
    assert_eq!(
        o.value("KILN-SCRIPT-EXIT rc").as_deref(),
        Some("0"),
        "{name}:\n{}",
        o.tail()
    );
    let flags = o.expect_value("GUEST-CPU-FLAGS");
    flags.split_whitespace().map(str::to_string).collect()
}

/// The /proc/cpuinfo flags of the bits Firecracker's T2A clears (its table, vmm/src/cpu_template
/// /data/T2A.json): leaf 1 ECX, leaf 7 EBX/ECX/EDX, leaf 0xd subleaf 1 EAX, leaf 0x80000001
/// ECX/EDX and leaf 0x80000008 EBX. Not `3dnowprefetch` (0x80000001 ECX bit 8), which T2A
/// clears too: Linux's `init_amd` sets it again on any AMD CPU with long mode.
const T2A_CLEARS: [&str; 24] = [
    "monitor",
    "rdseed",
    "adx",
    "clflushopt",
    "clwb",
    "sha_ni",
    "avx512f",
    "avx512dq",
    "umip",
    "pku",
    "ospke",
    "vaes",
    "vpclmulqdq",
    "rdpid",
    "la57",
    "fsrm",
    "xsavec",
    "xgetbv1",
    "xsaves",
    "sse4a",
    "misalignsse",
    "mmxext",
    "pdpe1gb",
    "clzero",
];

/// CPUID 0x80000001 ECX's CmpLegacy and TopologyExtensions: Kiln clears both on AMD, so the
/// guest reads its topology from leaves 1 and 0x80000008, which Kiln sets; Firecracker sets
/// TopologyExtensions and fills leaves 0x8000001D and 0x8000001E (docs/FIRECRACKER.md).
const AMD_TOPOLOGY_FLAGS: [&str; 2] = ["cmp_legacy", "topoext"];

/// Flags T2A leaves alone that every x86-64 guest the rig runs has.
const T2A_KEEPS: [&str; 4] = ["sse4_2", "avx2", "aes", "popcnt"];

/// Whether the plain guest's CPU is an AMD Milan, the only CPU T2A is for (as in Firecracker):
/// the rig's default, `-cpu EPYC-Milan` (family 25, model 1, stepping 1).
fn guest_cpu_is_milan() -> bool {
    let o = outcome("cpu-plain");
    o.expect_value("GUEST-CPU-VENDOR") == "AuthenticAMD"
        && o.expect_value("GUEST-CPU-FMS") == "25-1-1"
}

#[test]
fn t2a_hides_the_flags_firecrackers_t2a_hides() {
    if !guest_cpu_is_milan() {
        // Refused at InstanceStart, in Firecracker's words, as Firecracker refuses it.
        let o = outcome("cpu-t2a");
        assert_ne!(
            o.rc,
            0,
            "T2A booted on a CPU that is not a Milan:\n{}",
            o.tail()
        );
        assert!(o.has_line("Failed to get CPU template: "), "{}", o.tail());
        eprintln!("t2a_hides_the_flags_firecrackers_t2a_hides: the CPU is not a Milan; checked the refusal only");
        return;
    }
    let plain = cpu_flags("cpu-plain");
    let t2a = cpu_flags("cpu-t2a");
    let hidden: Vec<&str> = T2A_CLEARS
        .into_iter()
        .filter(|flag| plain.iter().any(|f| f == flag))
        .collect();
    assert!(
        !hidden.is_empty(),
        "the plain guest has none of T2A's flags: {plain:?}"
    );
    for flag in hidden {
        assert!(!t2a.iter().any(|f| f == flag), "T2A left {flag}: {t2a:?}");
    }
    for flag in T2A_KEEPS {
        if plain.iter().any(|f| f == flag) {
            assert!(t2a.iter().any(|f| f == flag), "T2A hid {flag}: {t2a:?}");
        }
    }
    assert!(t2a.iter().any(|f| f == "sse4_2"), "{t2a:?}");
    // The same guest sees the same flags under Firecracker's T2A, but for the topology bits
    // the two normalisations set differently.
    if outcomes().contains_key("cpu-t2a-firecracker") {
        let firecracker = cpu_flags("cpu-t2a-firecracker");
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter()
                .filter(|f| !b.contains(f) && !AMD_TOPOLOGY_FLAGS.contains(&f.as_str()))
                .cloned()
                .collect()
        };
        assert_eq!(
            (only(&t2a, &firecracker), only(&firecracker, &t2a)),
            (vec![], vec![]),
            "flags only under kiln's T2A, only under Firecracker's"
        );
    }
}

#[test]
fn a_custom_cpu_config_hides_the_flag_it_clears() {
    let plain = cpu_flags("cpu-plain");
    let custom = cpu_flags("cpu-custom");
    assert!(plain.iter().any(|f| f == "sse4_2"), "{plain:?}");
    assert!(!custom.iter().any(|f| f == "sse4_2"), "{custom:?}");
    // Only that bit: the guest sees every other flag as without the template.
    let rest = |flags: &[String]| {
        flags
            .iter()
            .filter(|f| *f != "sse4_2")
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(rest(&custom), rest(&plain));
    assert!(custom.iter().any(|f| f == "sse4_1"), "{custom:?}");
}

#[test]
fn scenario_output_is_split_between_markers() {
    let text = "noise\r\n=== KILN-SCENARIO-BEGIN a\r\nKILN-GUEST nproc=2 cpus-online=0-1\r\nhi\n\
                KILN-RC=0\n=== KILN-SCENARIO-END a\n=== KILN-SCENARIO-BEGIN b\ncut short\n";
    let outcomes = parse_outcomes(text);
    assert_eq!(outcomes.len(), 1, "an unfinished scenario has no outcome");
    let a = &outcomes["a"];
    assert_eq!(a.rc, 0);
    assert_eq!(a.guest_value("nproc").as_deref(), Some("2"));
    assert_eq!(a.guest_value("cpus-online").as_deref(), Some("0-1"));
    assert!(a.has_line("hi"));
    assert_eq!(a.value("KILN-RC").as_deref(), Some("0"));
}

#[test]
fn a_rig_failure_is_read_from_the_rig_stderr() {
    let stderr = "kiln-rig: L1 boot to payload: 5.1s, total: 60.0s\n\
                  kiln-rig: RIG-FAILURE reason=l1-panic: Kernel panic - not syncing: stack\n\
                  kiln-rig: L1: [ 12.0] Kernel panic - not syncing: stack\n";
    assert_eq!(rig_failure_reason(stderr).as_deref(), Some("l1-panic"));
    assert_eq!(
        rig_failure_reason("kiln-rig: L1 boot to payload: 5.1s, total: 60.0s\n"),
        None
    );
}

#[test]
fn a_guest_killed_by_its_timeout_before_the_marker_stopped_in_early_boot() {
    let outcome = |rc: i32, output: &str| Outcome {
        rc,
        output: output.to_string(),
    };
    let early = outcome(
        143,
        "[ 13.1] NET: Registered PF_VSOCK protocol family\nTerminated\n",
    );
    assert!(stopped_in_early_boot(Some(&early)));
    // The guest got to its marker: whatever stopped it later is the scenario's to judge.
    let late = outcome(124, "KILN-GUEST-READY\n");
    assert!(!stopped_in_early_boot(Some(&late)));
    // kiln exited by itself: its own status is never a rig failure.
    assert!(!stopped_in_early_boot(Some(&outcome(
        1,
        "Error: bad config\n"
    ))));
    assert!(!stopped_in_early_boot(None));
}

#[test]
fn a_peer_killed_by_its_timeout_before_the_marker_stopped_in_early_boot() {
    let outcome = |rc: i32, output: &str| Outcome {
        rc,
        output: output.to_string(),
    };
    // The main guest got to its marker and waited for a peer that never came up.
    let peer_early = outcome(
        143,
        "KILN-GUEST-READY\nTerminated\nKILN-RC=143\nKILN-PEER-RC guest2=124\n\
         guest2| [ 2.8] Run /init as init process\n",
    );
    assert_eq!(peer_early.peers(), [("guest2".to_string(), 124)]);
    assert!(stopped_in_early_boot(Some(&peer_early)));
    // The peer's marker is the peer's, not the main guest's.
    let main_early = outcome(
        143,
        "[ 2.8] Run /init as init process\nKILN-PEER-RC guest2=0\nguest2| KILN-GUEST-READY\n",
    );
    assert!(stopped_in_early_boot(Some(&main_early)));
    // Both got to their markers: the peer's later timeout is the scenario's to judge.
    let both_ready = outcome(
        0,
        "KILN-GUEST-READY\nKILN-PEER-RC guest2=124\nguest2| KILN-GUEST-READY\n\
         guest2| GUEST-2-REACHED-3=no\n",
    );
    assert!(!stopped_in_early_boot(Some(&both_ready)));
    assert_eq!(
        both_ready
            .peer_value("guest2", "GUEST-2-REACHED-3")
            .as_deref(),
        Some("no")
    );
    assert_eq!(both_ready.peer_value("guest3", "GUEST-2-REACHED-3"), None);
}
