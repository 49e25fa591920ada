//! Compiles the seccomp policy for the target (`resources/seccomp/<target>.json`) into one BPF
//! program per kind of thread, and writes them to `$OUT_DIR/seccomp_filters.bpf` in the binary
//! format `--seccomp-filter` reads (see `src/seccomp.rs`), for `include_bytes!`.
//!
//! Before compiling it checks what seccompiler does not: every rule carries a comment saying
//! why it is there, and no syscall is allowed both with and without argument conditions in one
//! filter (seccompiler would silently keep only the conditional rules).
//!
//! With the `seccomp-log` feature (test runs only), every filter logs instead of killing.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::path::PathBuf;

/// The thread kinds Kiln installs filters on, as Firecracker names them.
const THREAD_KINDS: [&str; 3] = ["vmm", "api", "vcpu"];

fn main() -> Result<(), Box<dyn Error>> {
    let target = std::env::var("TARGET")?;
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let policy = manifest_dir
        .join("../resources/seccomp")
        .join(format!("{target}.json"));
    println!("cargo:rerun-if-changed={}", policy.display());
    println!("cargo:rerun-if-changed=build.rs");

    let json = std::fs::read_to_string(&policy).map_err(|e| {
        format!(
            "there is no seccomp policy for {target} ({}): {e}",
            policy.display()
        )
    })?;
    let mut parsed: serde_json::Value = serde_json::from_str(&json)?;
    check_policy(&parsed).map_err(|e| format!("{}: {e}", policy.display()))?;
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_SECCOMP_LOG");
    let json = if std::env::var_os("CARGO_FEATURE_SECCOMP_LOG").is_some() {
        log_instead_of_kill(&mut parsed);
        serde_json::to_string(&parsed)?
    } else {
        json
    };
    let arch = seccompiler::TargetArch::try_from(arch.as_str())?;
    let programs = seccompiler::compile_from_json(json.as_bytes(), arch)?;
    let programs: BTreeMap<_, _> = programs.into_iter().collect();

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("seccomp_filters.bpf");
    std::fs::write(out, encode(&programs)?)?;
    Ok(())
}

/// The `seccomp-log` feature: every filter logs what it does not allow, and lets it through.
fn log_instead_of_kill(policy: &mut serde_json::Value) {
    for filter in policy
        .as_object_mut()
        .into_iter()
        .flat_map(|f| f.values_mut())
    {
        filter["mismatch_action"] = "log".into();
    }
}

/// Checks the rules of Kiln's policy conventions (see the module doc).
fn check_policy(policy: &serde_json::Value) -> Result<(), String> {
    let filters = policy
        .as_object()
        .ok_or("the policy is not a JSON object")?;
    let kinds: BTreeSet<&str> = filters.keys().map(String::as_str).collect();
    if kinds != BTreeSet::from(THREAD_KINDS) {
        return Err(format!(
            "the policy must have exactly the filters {THREAD_KINDS:?}, not {kinds:?}"
        ));
    }
    for (kind, filter) in filters {
        let rules = filter
            .get("filter")
            .and_then(|f| f.as_array())
            .ok_or_else(|| format!("filter '{kind}' has no rule list"))?;
        let mut plain = BTreeSet::new();
        let mut conditional = BTreeSet::new();
        for rule in rules {
            let syscall = rule
                .get("syscall")
                .and_then(|s| s.as_str())
                .ok_or_else(|| format!("a rule of filter '{kind}' names no syscall"))?;
            let comment = rule.get("comment").and_then(|c| c.as_str());
            if comment.is_none_or(|c| c.trim().is_empty()) {
                return Err(format!(
                    "rule '{syscall}' of filter '{kind}' does not say why it is there"
                ));
            }
            let set = if rule.get("args").is_some() {
                &mut conditional
            } else {
                &mut plain
            };
            set.insert(syscall);
        }
        if let Some(both) = plain.intersection(&conditional).next() {
            return Err(format!(
                "filter '{kind}' allows '{both}' both with and without conditions"
            ));
        }
    }
    Ok(())
}

/// The map of programs in bincode's fixed-integer little-endian layout, which is what
/// Firecracker's `seccompiler-bin` writes: the entry count, then per entry the key's length and
/// bytes and the program's length and instructions, every length a u64 and every instruction
/// `code: u16, jt: u8, jf: u8, k: u32`.
fn encode(programs: &BTreeMap<String, seccompiler::BpfProgram>) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut out = Vec::new();
    out.extend_from_slice(&u64::try_from(programs.len())?.to_le_bytes());
    for (name, program) in programs {
        out.extend_from_slice(&u64::try_from(name.len())?.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&u64::try_from(program.len())?.to_le_bytes());
        for insn in program {
            out.extend_from_slice(&insn.code.to_le_bytes());
            out.push(insn.jt);
            out.push(insn.jf);
            out.extend_from_slice(&insn.k.to_le_bytes());
        }
    }
    Ok(out)
}
