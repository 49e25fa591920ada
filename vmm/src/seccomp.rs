//! Seccomp-BPF confinement: the filters of the three kinds of thread (the VMM thread, the API
//! thread, the vCPU threads), where they come from, and installing one on the calling thread.
//!
//! The policies are data: `resources/seccomp/<target>.json`, in seccompiler's JSON format with a
//! comment on every rule, compiled to BPF by `build.rs` and built into the binary. Each filter
//! allows only what its thread does once it serves the guest, with the ioctl numbers spelled
//! out, and traps anything else (`SECCOMP_RET_TRAP`, as Firecracker's): the SIGSYS handler
//! ([`crate::fatal_signals`]) logs the syscall, writes a last metrics line with
//! `seccomp.num_faults` and ends the process with Firecracker's status 148.
//!
//! `--seccomp-filter FILE` replaces them with a compiled map in the binary format of
//! Firecracker's `seccompiler-bin` (bincode, fixed-width little-endian integers): a map from
//! thread kind (`vmm`, `api`, `vcpu`) to BPF program. An empty program leaves that kind of
//! thread unfiltered. `--no-seccomp` turns filtering off.
//!
//! Where each filter goes on: the API thread's first thing, before it accepts a connection;
//! each vCPU thread's first thing, before its first `KVM_RUN`; the VMM thread's once the
//! vCPU threads exist and before any of them runs guest code. A filter is inherited by the
//! threads created after it, so these three are created before the VMM thread confines itself.
//!
//! A build with the `seccomp-log` feature (for test runs, see `resources/seccomp-log.sh`) logs
//! each syscall outside a filter to the kernel's audit log instead of trapping it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use seccompiler::sock_filter;

/// The compiled built-in policy, from `build.rs`.
static BUILTIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_filters.bpf"));

/// The kernel's limit on a BPF program's length (`BPF_MAXINSNS`).
pub const MAX_PROGRAM_LEN: usize = 4096;

/// The largest filter file read, as in Firecracker: three programs of [`MAX_PROGRAM_LEN`]
/// instructions fit, and a bigger file is not read into memory.
const MAX_FILE_LEN: u64 = 100_000;

/// A BPF program, one instruction per element.
pub type BpfProgram = Vec<sock_filter>;

/// The kinds of thread that each get their own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the event loop, devices' queues, the API's actions.
    Vmm,
    /// The thread that serves the HTTP API.
    Api,
    /// A thread that runs a vCPU.
    Vcpu,
}

impl ThreadKind {
    /// All kinds, in the order of their names in [`ThreadKind::name`].
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];

    /// The key of this kind's program in a filter map, as Firecracker names it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors loading or installing seccomp filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter file could not be read.
    #[error("Failed to read the seccomp filter file '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The filter file is larger than any valid one.
    #[error("The seccomp filter file '{0}' is larger than {MAX_FILE_LEN} bytes.")]
    TooLarge(PathBuf),
    /// The bytes are not a compiled filter map.
    #[error("The seccomp filters are not a compiled filter map: {0}.")]
    Malformed(&'static str),
    /// The map names a thread kind Kiln does not have.
    #[error("The seccomp filters name an unknown thread kind '{0}'.")]
    UnknownThread(String),
    /// The map has no program for a thread kind.
    #[error("The seccomp filters have no program for the '{0}' threads.")]
    MissingThread(ThreadKind),
    /// A program is longer than the kernel accepts.
    #[error("The seccomp filter for the '{kind}' threads has {len} instructions; the kernel takes at most {MAX_PROGRAM_LEN}.")]
    TooLong { kind: ThreadKind, len: usize },
    /// The kernel refused to install a filter.
    #[error("Failed to install the seccomp filter for a {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// One filter per kind of thread; an empty program means no filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeccompFilters {
    vmm: BpfProgram,
    api: BpfProgram,
    vcpu: BpfProgram,
}

impl SeccompFilters {
    /// Kiln's own policy, built into the binary.
    pub fn builtin() -> Result<Self, SeccompError> {
        Self::from_bytes(BUILTIN)
    }

    /// No filtering at all (`--no-seccomp`).
    pub fn none() -> Self {
        Self::default()
    }

    /// A compiled filter map from `path` (`--seccomp-filter`).
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let read_error = |source| SeccompError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(SeccompError::TooLarge(path.to_owned()));
        }
        Self::from_bytes(&bytes)
    }

    /// A compiled filter map: exactly one program for each [`ThreadKind`]. Keys are matched
    /// without regard to case, as Firecracker does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SeccompError> {
        let mut programs = decode(bytes)?;
        let mut take = |kind: ThreadKind| {
            let program = programs
                .remove(kind.name())
                .ok_or(SeccompError::MissingThread(kind))?;
            if program.len() > MAX_PROGRAM_LEN {
                return Err(SeccompError::TooLong {
                    kind,
                    len: program.len(),
                });
            }
            Ok(program)
        };
        let filters = Self {
            vmm: take(ThreadKind::Vmm)?,
            api: take(ThreadKind::Api)?,
            vcpu: take(ThreadKind::Vcpu)?,
        };
        if let Some(unknown) = programs.into_keys().next() {
            return Err(SeccompError::UnknownThread(unknown));
        }
        Ok(filters)
    }

    /// The program for `kind`; empty when that kind runs unfiltered.
    pub fn program(&self, kind: ThreadKind) -> &[sock_filter] {
        match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Api => &self.api,
            ThreadKind::Vcpu => &self.vcpu,
        }
    }

    /// Installs the filter for `kind` on the calling thread, for good; does nothing when that
    /// kind runs unfiltered. Sets `no_new_privs` first, as the kernel requires of an
    /// unprivileged process.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let program = self.program(kind);
        if program.is_empty() {
            return Ok(());
        }
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
    }
}

/// Makes glibc's allocator keep to the syscalls every filter allows; the binary calls it
/// first thing, before any thread exists.
///
/// Each thread that allocates gets its own malloc arena by default, and two arena paths make
/// syscalls that no filter should need: the first time any arena other than the main one
/// shrinks, glibc opens `/proc/sys/vm/overcommit_memory`, and once more than eight arenas
/// exist it asks for the CPU count (`sched_getaffinity`). A thread frees enough to shrink its
/// arena whenever it drops a large buffer (an API request with a long path, a hundred closed
/// connections), so under the API or vCPU filter either kills the process. With one arena, the
/// main one, every thread grows and shrinks the heap with `brk` and large blocks with `mmap`,
/// which the filters allow; each thread's cache of small blocks keeps the shared arena's lock
/// off the common path.
pub fn settle_allocator() {
    // SAFETY: mallopt only changes glibc's allocator parameters; M_ARENA_MAX takes a count.
    // It cannot fail for this parameter, and nothing is allocated concurrently: no other
    // thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Reads a filter map in the layout `build.rs` writes (bincode with fixed-width little-endian
/// integers): a u64 entry count, then per entry a u64-length-prefixed UTF-8 key and a
/// u64-length-prefixed list of 8-byte instructions (`code: u16, jt: u8, jf: u8, k: u32`). Keys
/// are lowercased.
fn decode(bytes: &[u8]) -> Result<BTreeMap<String, BpfProgram>, SeccompError> {
    let mut input = Input(bytes);
    let entries = input.len()?;
    let mut programs = BTreeMap::new();
    for _ in 0..entries {
        let key_len = input.len()?;
        let key = std::str::from_utf8(input.take(key_len)?)
            .map_err(|_| SeccompError::Malformed("a thread kind is not UTF-8"))?
            .to_lowercase();
        let count = input.len()?;
        let code = input.take(count.checked_mul(8).ok_or(TRUNCATED)?)?;
        let program = code
            .chunks_exact(8)
            .map(|insn| {
                // `chunks_exact` hands out 8 bytes every time.
                let [c0, c1, jt, jf, k0, k1, k2, k3] = insn.try_into().unwrap_or_default();
                sock_filter {
                    code: u16::from_le_bytes([c0, c1]),
                    jt,
                    jf,
                    k: u32::from_le_bytes([k0, k1, k2, k3]),
                }
            })
            .collect();
        if programs.insert(key, program).is_some() {
            return Err(SeccompError::Malformed("a thread kind appears twice"));
        }
    }
    if !input.0.is_empty() {
        return Err(SeccompError::Malformed("bytes follow the last program"));
    }
    Ok(programs)
}

const TRUNCATED: SeccompError = SeccompError::Malformed("it ends too early");

/// The bytes not read yet.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SeccompError> {
        if n > self.0.len() {
            return Err(TRUNCATED);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A u64 length, which must fit in what is left to read.
    fn len(&mut self) -> Result<usize, SeccompError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| TRUNCATED)?;
        let len = usize::try_from(u64::from_le_bytes(bytes)).map_err(|_| TRUNCATED)?;
        if len > self.0.len() {
            return Err(TRUNCATED);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `entries` in the layout of `decode`, built by hand.
    fn encode(entries: &[(&str, &[sock_filter])]) -> Vec<u8> {
        let mut out = (entries.len() as u64).to_le_bytes().to_vec();
        for (key, program) in entries {
            out.extend((key.len() as u64).to_le_bytes());
            out.extend(key.as_bytes());
            out.extend((program.len() as u64).to_le_bytes());
            for insn in *program {
                out.extend(insn.code.to_le_bytes());
                out.extend([insn.jt, insn.jf]);
                out.extend(insn.k.to_le_bytes());
            }
        }
        out
    }

    fn ret(k: u32) -> sock_filter {
        // BPF_RET | BPF_K
        sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k,
        }
    }

    const RET_ALLOW: u32 = 0x7fff_0000;

    #[test]
    #[cfg_attr(
        feature = "seccomp-log",
        ignore = "the seccomp-log build logs instead of killing"
    )]
    fn the_builtin_filters_are_the_compiled_policy() {
        let policy = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../resources/seccomp/x86_64-unknown-linux-gnu.json"
        ));
        let compiled =
            seccompiler::compile_from_json(policy.as_bytes(), seccompiler::TargetArch::x86_64)
                .unwrap();
        let builtin = SeccompFilters::builtin().unwrap();
        for kind in ThreadKind::ALL {
            assert!(!builtin.program(kind).is_empty(), "{kind}");
            assert_eq!(builtin.program(kind), &compiled[kind.name()][..], "{kind}");
        }
    }

    /// The constants the policy's argument conditions name, from the crates that define them;
    /// a plain count is written `argument=N`.
    fn named_constant(name: &str) -> Option<u64> {
        if let Some((_, n)) = name.split_once('=') {
            return n.parse().ok();
        }
        use kvm_bindings::{
            kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
            kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
        };
        vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
        vmm_sys_util::ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
        vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
        vmm_sys_util::ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
        vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
        vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
        vmm_sys_util::ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
        let futex = |op: i32| Some(op as u64);
        Some(match name {
            "KVM_RUN" => KVM_RUN(),
            "KVM_GET_REGS" => KVM_GET_REGS(),
            "KVM_KVMCLOCK_CTRL" => KVM_KVMCLOCK_CTRL(),
            "KVM_GET_IRQCHIP" => KVM_GET_IRQCHIP(),
            "KVM_GET_PIT2" => KVM_GET_PIT2(),
            "KVM_GET_CLOCK" => KVM_GET_CLOCK(),
            "KVM_GET_MP_STATE" => KVM_GET_MP_STATE(),
            "KVM_GET_SREGS" => KVM_GET_SREGS(),
            "KVM_GET_XSAVE" => KVM_GET_XSAVE(),
            "KVM_GET_XCRS" => KVM_GET_XCRS(),
            "KVM_GET_DEBUGREGS" => KVM_GET_DEBUGREGS(),
            "KVM_GET_LAPIC" => KVM_GET_LAPIC(),
            "KVM_GET_TSC_KHZ" => KVM_GET_TSC_KHZ(),
            "KVM_GET_MSRS" => KVM_GET_MSRS(),
            "KVM_GET_VCPU_EVENTS" => KVM_GET_VCPU_EVENTS(),
            "KVM_GET_DIRTY_LOG" => KVM_GET_DIRTY_LOG(),
            "TUNSETOFFLOAD" => libc::TUNSETOFFLOAD,
            "TCGETS" => libc::TCGETS,
            "TCSETS" => libc::TCSETS,
            "FIONBIO" => libc::FIONBIO,
            "F_GETFD" => return Some(libc::F_GETFD as u64),
            "F_DUPFD_CLOEXEC" => return Some(libc::F_DUPFD_CLOEXEC as u64),
            "F_OFD_SETLK" => return Some(libc::F_OFD_SETLK as u64),
            "F_OFD_GETLK" => return Some(libc::F_OFD_GETLK as u64),
            "SIGRTMIN" => return Some(libc::SIGRTMIN() as u64),
            "PROT_EXEC" => return Some(libc::PROT_EXEC as u64),
            "FUTEX_WAIT_PRIVATE" => return futex(libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG),
            "FUTEX_WAKE_PRIVATE" => return futex(libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG),
            "FUTEX_WAIT_BITSET_PRIVATE" => {
                return futex(libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG)
            }
            "FUTEX_WAIT_BITSET|FUTEX_CLOCK_REALTIME" => {
                return futex(libc::FUTEX_WAIT_BITSET | libc::FUTEX_CLOCK_REALTIME)
            }
            _ => return None,
        })
    }

    #[test]
    fn every_argument_condition_is_the_constant_its_comment_names() {
        let policy: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../resources/seccomp/x86_64-unknown-linux-gnu.json"
        )))
        .unwrap();
        let mut checked = 0;
        for (kind, filter) in policy.as_object().unwrap() {
            for rule in filter["filter"].as_array().unwrap() {
                for cond in rule["args"].as_array().into_iter().flatten() {
                    let name = cond["comment"].as_str().unwrap();
                    let expected = named_constant(name)
                        .unwrap_or_else(|| panic!("{kind}: unknown constant {name}"));
                    let val = cond["val"].as_u64().unwrap();
                    match &cond["op"] {
                        serde_json::Value::String(op) if op == "eq" => {
                            assert_eq!(val, expected, "{kind}: {name}")
                        }
                        op => {
                            // A mask: the condition is that none of the named bits is set.
                            assert_eq!(op["masked_eq"].as_u64(), Some(expected), "{kind}: {name}");
                            assert_eq!(val, 0, "{kind}: {name}");
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10, "{checked}");
    }

    #[test]
    fn reads_the_firecracker_layout_byte_for_byte() {
        // A one-entry map as bincode writes it: count, key length, key, program length, and
        // one instruction `code=0x0006 jt=1 jf=2 k=0x7fff0000`.
        let mut bytes = vec![1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend(b"VCPU");
        bytes.extend([1, 0, 0, 0, 0, 0, 0, 0, 0x06, 0, 1, 2, 0, 0, 0xff, 0x7f]);
        let programs = decode(&bytes).unwrap();
        let insn = sock_filter {
            code: 6,
            jt: 1,
            jf: 2,
            k: RET_ALLOW,
        };
        assert_eq!(programs, BTreeMap::from([("vcpu".to_string(), vec![insn])]));
    }

    #[test]
    fn takes_one_program_per_thread_kind_and_empty_means_unfiltered() {
        let allow = [ret(RET_ALLOW)];
        let bytes = encode(&[("Vmm", &allow), ("api", &[]), ("vcpu", &allow)]);
        let filters = SeccompFilters::from_bytes(&bytes).unwrap();
        assert_eq!(filters.program(ThreadKind::Vmm), &allow);
        assert!(filters.program(ThreadKind::Api).is_empty());
        assert_eq!(filters.program(ThreadKind::Vcpu), &allow);
    }

    #[test]
    fn refuses_what_is_not_a_filter_map() {
        let allow = [ret(RET_ALLOW)];
        let full = encode(&[("vmm", &allow), ("api", &allow), ("vcpu", &allow)]);
        let error = |bytes: &[u8]| SeccompFilters::from_bytes(bytes).unwrap_err().to_string();

        assert_eq!(
            error(b"{\"vmm\": {}}"),
            "The seccomp filters are not a compiled filter map: it ends too early."
        );
        assert_eq!(
            error(&full[..full.len() - 3]),
            "The seccomp filters are not a compiled filter map: it ends too early."
        );
        let mut trailing = full.clone();
        trailing.push(0);
        assert_eq!(
            error(&trailing),
            "The seccomp filters are not a compiled filter map: bytes follow the last program."
        );
        assert_eq!(
            error(&encode(&[("vmm", &allow), ("api", &allow)])),
            "The seccomp filters have no program for the 'vcpu' threads."
        );
        assert_eq!(
            error(&encode(&[
                ("vmm", &allow),
                ("api", &allow),
                ("vcpu", &allow),
                ("vsock", &allow)
            ])),
            "The seccomp filters name an unknown thread kind 'vsock'."
        );
        assert_eq!(
            error(&encode(&[("vmm", &allow), ("VMM", &allow)])),
            "The seccomp filters are not a compiled filter map: a thread kind appears twice."
        );
        let long = vec![ret(RET_ALLOW); MAX_PROGRAM_LEN + 1];
        assert_eq!(
            error(&encode(&[
                ("vmm", &allow),
                ("api", &allow),
                ("vcpu", &long)
            ])),
            "The seccomp filter for the 'vcpu' threads has 4097 instructions; the kernel takes \
             at most 4096."
        );
    }

    #[test]
    fn a_missing_or_huge_file_is_named() {
        let missing = SeccompFilters::from_file(Path::new("/nonexistent/filters.bpf"));
        assert!(missing
            .unwrap_err()
            .to_string()
            .starts_with("Failed to read the seccomp filter file '/nonexistent/filters.bpf': "));
        let path = std::env::temp_dir().join(format!("kiln-seccomp-big-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; MAX_FILE_LEN as usize + 1]).unwrap();
        let huge = SeccompFilters::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(huge, SeccompError::TooLarge(_)), "{huge}");
    }

    fn seccomp_mode() -> i32 {
        // SAFETY: PR_GET_SECCOMP takes no pointer and only reads the calling thread's state.
        unsafe { libc::prctl(libc::PR_GET_SECCOMP) }
    }

    #[test]
    fn apply_confines_the_calling_thread_only() {
        // A filter that makes getppid fail with EPERM and allows everything else.
        let filter = seccompiler::SeccompFilter::new(
            BTreeMap::from([(libc::SYS_getppid, vec![])]),
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Errno(libc::EPERM as u32),
            seccompiler::TargetArch::x86_64,
        )
        .unwrap();
        let program: BpfProgram = filter.try_into().unwrap();
        let filters = SeccompFilters {
            vmm: Vec::new(),
            api: Vec::new(),
            vcpu: program,
        };
        std::thread::spawn(move || {
            // An empty program installs nothing.
            filters.apply(ThreadKind::Vmm).unwrap();
            assert_eq!(seccomp_mode(), 0);
            filters.apply(ThreadKind::Vcpu).unwrap();
            assert_eq!(seccomp_mode(), 2);
            // SAFETY: getppid has no arguments and no side effects. Through `syscall`, so that
            // the error lands in errno (glibc's getppid cannot fail and returns it raw).
            assert_eq!(unsafe { libc::syscall(libc::SYS_getppid) }, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EPERM)
            );
        })
        .join()
        .unwrap();
        assert_eq!(seccomp_mode(), 0);
        // SAFETY: as above.
        assert!(unsafe { libc::getppid() } > 0);
    }

    #[test]
    fn a_program_the_kernel_refuses_is_an_error() {
        // An instruction with an invalid opcode.
        let filters = SeccompFilters {
            vmm: vec![sock_filter {
                code: 0xffff,
                jt: 0,
                jf: 0,
                k: 0,
            }],
            ..SeccompFilters::none()
        };
        let error = std::thread::spawn(move || filters.apply(ThreadKind::Vmm).unwrap_err())
            .join()
            .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("Failed to install the seccomp filter for a vmm thread: "),
            "{error}"
        );
    }
}
