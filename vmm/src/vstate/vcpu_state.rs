//! A vCPU's state for a snapshot: its registers, special registers, FPU and extended state,
//! XCRs, debug registers, every MSR KVM lists and can read, its LAPIC, MP state, pending
//! events, CPUID and TSC frequency. It is taken on the vCPU's own thread while the VM is paused
//! (KVM wants vCPU ioctls from the thread that runs the vCPU, and all vCPUs stopped for the
//! events), and put on a new vCPU before its thread starts.
//!
//! The orders are KVM's: saving, the MP state first (reading it can change the LAPIC) and the
//! events last; restoring, the CPUID first, the registers before the events (setting them
//! clears pending exceptions), the special registers before the LAPIC (they carry the APIC
//! base), the LAPIC before the MSRs (the TSC deadline needs it), and the TSC deadline after the
//! TSC, which KVM reads to arm the timer.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// IA32_TSC.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// How far a host's TSC frequency may be from the saved one before the vCPU is scaled to the
/// saved one: 250 parts per million, as Firecracker allows.
const TSC_TOLERANCE_PPM: u64 = 250;

/// One vCPU's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the vCPU was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM lists that it could read, with its value.
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state. The legacy 4 KiB area holds all of it: the dynamic features
    /// that need more (AMX) are only given to a guest whose VMM asks for them, and Kiln does
    /// not.
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// DR0-DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted, or waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The TSC frequency, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// Errors saving or restoring a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM ioctl failed.
    #[error("Failed to {what} of vCPU {index}: {source}")]
    Ioctl {
        what: &'static str,
        index: u8,
        source: kvm_ioctls::Error,
    },
    /// A running vCPU was asked for its state.
    #[error("vCPU {0} is not paused.")]
    NotPaused(u8),
    /// More CPUID entries or MSRs than KVM takes.
    #[error("The saved state of vCPU {0} has more CPUID entries or MSRs than KVM takes.")]
    TooMany(u8),
    /// This host's KVM does not take an MSR the snapshot holds.
    #[error("This host's KVM does not take MSR {msr:#x}, which vCPU {index}'s saved state holds.")]
    Msr { index: u8, msr: u32 },
    /// This host's KVM does not offer a CPUID feature the snapshot's vCPUs have.
    #[error("This host's KVM does not offer CPUID leaf {leaf:#x} subleaf {subleaf} {register} bit {bit}, which the snapshot's vCPUs have.")]
    CpuidFeature {
        leaf: u32,
        subleaf: u32,
        register: &'static str,
        bit: u32,
    },
    /// The saved TSC frequency cannot be set on this host.
    #[error(
        "vCPU {index} ran at {saved_khz} kHz and this host cannot scale its TSC to that: {source}"
    )]
    TscScaling {
        index: u8,
        saved_khz: u32,
        source: kvm_ioctls::Error,
    },
}

/// A CPUID register that holds feature bits, and the bits in it that the guest or the VMM
/// sets rather than KVM offering them.
struct FeatureRegister {
    leaf: u32,
    subleaf: u32,
    register: &'static str,
    read: fn(&kvm_cpuid_entry2) -> u32,
    not_offered: u32,
}

/// The feature registers a restore checks against the host's. Leaf 1 ECX: TSC-deadline (24)
/// is KVM's in-kernel LAPIC, which KVM's supported CPUID leaves out and Kiln's normalisation
/// sets (`arch/x86_64/cpuid.rs`), OSXSAVE (27) follows the guest's CR4 and the hypervisor bit
/// (31) is the VMM's; EDX: APIC (9) follows the APIC base MSR. Leaf 7 ECX: OSPKE (4) follows
/// CR4.
const FEATURE_REGISTERS: [FeatureRegister; 8] = [
    FeatureRegister {
        leaf: 1,
        subleaf: 0,
        register: "ECX",
        read: |e| e.ecx,
        not_offered: 1 << 24 | 1 << 27 | 1 << 31,
    },
    FeatureRegister {
        leaf: 1,
        subleaf: 0,
        register: "EDX",
        read: |e| e.edx,
        not_offered: 1 << 9,
    },
    FeatureRegister {
        leaf: 7,
        subleaf: 0,
        register: "EBX",
        read: |e| e.ebx,
        not_offered: 0,
    },
    FeatureRegister {
        leaf: 7,
        subleaf: 0,
        register: "ECX",
        read: |e| e.ecx,
        not_offered: 1 << 4,
    },
    FeatureRegister {
        leaf: 7,
        subleaf: 0,
        register: "EDX",
        read: |e| e.edx,
        not_offered: 0,
    },
    FeatureRegister {
        leaf: 0xd,
        subleaf: 1,
        register: "EAX",
        read: |e| e.eax,
        not_offered: 0,
    },
    FeatureRegister {
        leaf: 0x8000_0001,
        subleaf: 0,
        register: "ECX",
        read: |e| e.ecx,
        not_offered: 0,
    },
    FeatureRegister {
        leaf: 0x8000_0001,
        subleaf: 0,
        register: "EDX",
        read: |e| e.edx,
        not_offered: 0,
    },
];

fn entry(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == leaf && (e.index == subleaf || subleaf == 0 && e.flags == 0))
}

/// Refuses `saved` CPUID when it has a feature bit that `supported` (KVM's) lacks, by name.
pub fn check_cpuid_offered(
    saved: &[kvm_cpuid_entry2],
    supported: &CpuId,
) -> Result<(), VcpuStateError> {
    for reg in &FEATURE_REGISTERS {
        let Some(saved_entry) = entry(saved, reg.leaf, reg.subleaf) else {
            continue;
        };
        let offered = entry(supported.as_slice(), reg.leaf, reg.subleaf).map_or(0, reg.read);
        let missing = (reg.read)(saved_entry) & !offered & !reg.not_offered;
        if missing != 0 {
            return Err(VcpuStateError::CpuidFeature {
                leaf: reg.leaf,
                subleaf: reg.subleaf,
                register: reg.register,
                bit: missing.trailing_zeros(),
            });
        }
    }
    Ok(())
}

/// Puts IA32_TSC_DEADLINE after IA32_TSC, and gives a zero deadline the TSC's value: a zero
/// deadline is disarmed, and a guest whose timer was about to fire would wait for it forever
/// (Firecracker's fix for lost timer interrupts across a restore).
fn order_tsc_deadline(msrs: &mut Vec<kvm_msr_entry>) {
    let tsc = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data);
    let (mut deadline, rest): (Vec<_>, Vec<_>) = msrs
        .drain(..)
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    if let Some(tsc) = tsc {
        for m in deadline.iter_mut().filter(|m| m.data == 0) {
            m.data = tsc;
        }
    }
    msrs.extend(rest);
    msrs.extend(deadline);
}

/// A vCPU's fd and index, through which its state is read and written.
#[derive(Debug, Clone, Copy)]
pub struct VcpuStateIo<'a> {
    /// KVM's vCPU.
    pub fd: &'a VcpuFd,
    /// Its index, for errors.
    pub index: u8,
}

impl VcpuStateIo<'_> {
    fn state_ioctl(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
        let index = self.index;
        move |source| VcpuStateError::Ioctl {
            what,
            index,
            source,
        }
    }

    /// The values of the MSRs in `indices` that KVM can read; one it cannot (KVM lists MSRs of
    /// features the vCPU's CPUID does not have) is left out.
    fn readable_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
        let mut saved = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let (chunk, _) = rest.split_at(rest.len().min(KVM_MAX_MSR_ENTRIES));
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs =
                Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany(self.index))?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(self.state_ioctl("read the MSRs"))?;
            saved.extend_from_slice(msrs.as_slice().get(..read).unwrap_or_default());
            // KVM stops at the first MSR it cannot read: skip that one and go on after it.
            let consumed = match chunk.get(read) {
                Some(unreadable) => {
                    log::debug!(
                        "vCPU {}: MSR {unreadable:#x} cannot be read; not saved",
                        self.index
                    );
                    read + 1
                }
                None => read,
            };
            rest = rest.get(consumed..).unwrap_or_default();
        }
        Ok(saved)
    }

    /// The state, for a snapshot, with `cpuid` (what Kiln gave the vCPU). `msr_indices` are
    /// the MSRs KVM lists for this host. Called on the vCPU's thread, with every vCPU out of
    /// `KVM_RUN`.
    pub fn save(
        &self,
        cpuid: &[kvm_cpuid_entry2],
        msr_indices: &[u32],
    ) -> Result<VcpuState, VcpuStateError> {
        let fd = self.fd;
        let mp_state = fd
            .get_mp_state()
            .map_err(self.state_ioctl("read the MP state"))?;
        let regs = fd
            .get_regs()
            .map_err(self.state_ioctl("read the registers"))?;
        let sregs = fd
            .get_sregs()
            .map_err(self.state_ioctl("read the special registers"))?;
        let xsave = fd
            .get_xsave()
            .map_err(self.state_ioctl("read the XSAVE area"))?;
        let xcrs = fd.get_xcrs().map_err(self.state_ioctl("read the XCRs"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(self.state_ioctl("read the debug registers"))?;
        let lapic = fd.get_lapic().map_err(self.state_ioctl("read the LAPIC"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let cpuid = cpuid.to_vec();
        let msrs = self.readable_msrs(msr_indices)?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(self.state_ioctl("read the pending events"))?;
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Puts a new vCPU in `state`, before its thread starts.
    pub fn restore(&self, state: &VcpuState) -> Result<(), VcpuStateError> {
        let index = self.index;
        let too_many = || VcpuStateError::TooMany(index);
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| too_many())?;
        let fd = self.fd;
        fd.set_cpuid2(&cpuid)
            .map_err(self.state_ioctl("set the CPUID"))?;
        self.restore_tsc(state.tsc_khz)?;
        fd.set_mp_state(state.mp_state)
            .map_err(self.state_ioctl("set the MP state"))?;
        fd.set_regs(&state.regs)
            .map_err(self.state_ioctl("set the registers"))?;
        fd.set_sregs(&state.sregs)
            .map_err(self.state_ioctl("set the special registers"))?;
        // SAFETY: KVM copies from the 4 KiB `kvm_xsave` given as long as the process enabled
        // no dynamic XSTATE features (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM), and Kiln enables
        // none; the builder also refuses a host whose KVM wants a larger area
        // (KVM_CAP_XSAVE2), so KVM reads only the struct, which lives for the call.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(self.state_ioctl("set the XSAVE area"))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(self.state_ioctl("set the XCRs"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(self.state_ioctl("set the debug registers"))?;
        fd.set_lapic(&state.lapic)
            .map_err(self.state_ioctl("set the LAPIC"))?;
        let mut msrs = state.msrs.clone();
        order_tsc_deadline(&mut msrs);
        for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let kvm_msrs = Msrs::from_entries(chunk).map_err(|_| too_many())?;
            let set = fd
                .set_msrs(&kvm_msrs)
                .map_err(self.state_ioctl("set the MSRs"))?;
            if let Some(refused) = chunk.get(set) {
                return Err(VcpuStateError::Msr {
                    index: self.index,
                    msr: refused.index,
                });
            }
        }
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(self.state_ioctl("set the pending events"))?;
        Ok(())
    }

    /// Runs the vCPU's TSC at the saved frequency when this host's is too far from it.
    fn restore_tsc(&self, saved_khz: Option<u32>) -> Result<(), VcpuStateError> {
        let (Some(saved_khz), Ok(host_khz)) = (saved_khz, self.fd.get_tsc_khz()) else {
            return Ok(());
        };
        let diff = u64::from(saved_khz.abs_diff(host_khz));
        if diff * 1_000_000 <= u64::from(saved_khz) * TSC_TOLERANCE_PPM {
            return Ok(());
        }
        self.fd
            .set_tsc_khz(saved_khz)
            .map_err(|source| VcpuStateError::TscScaling {
                index: self.index,
                saved_khz,
                source,
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An MSR entry, for the tests here and in `vcpu.rs`.
    pub(crate) fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn the_tsc_deadline_follows_the_tsc_and_is_never_zero() {
        let mut msrs = vec![
            msr(MSR_IA32_TSC_DEADLINE, 0),
            msr(0x174, 7),
            msr(MSR_IA32_TSC, 1234),
        ];
        order_tsc_deadline(&mut msrs);
        let order: Vec<(u32, u64)> = msrs.iter().map(|m| (m.index, m.data)).collect();
        assert_eq!(
            order,
            [
                (0x174, 7),
                (MSR_IA32_TSC, 1234),
                (MSR_IA32_TSC_DEADLINE, 1234)
            ]
        );
        let mut armed = vec![msr(MSR_IA32_TSC_DEADLINE, 99), msr(MSR_IA32_TSC, 5)];
        order_tsc_deadline(&mut armed);
        assert_eq!((armed[1].index, armed[1].data), (MSR_IA32_TSC_DEADLINE, 99));
    }

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_cpuid_feature_the_host_lacks_is_refused_by_name() {
        let supported =
            CpuId::from_entries(&[leaf(1, 0, 0, 0x1, 0x10), leaf(7, 0, 0x8, 0, 0)]).unwrap();
        // What the host offers, and the bits the guest and the VMM set, pass.
        let fine = [leaf(
            1,
            0,
            0xffff,
            0x1 | 1 << 24 | 1 << 27 | 1 << 31,
            0x10 | 1 << 9,
        )];
        check_cpuid_offered(&fine, &supported).unwrap();
        let err = check_cpuid_offered(&[leaf(7, 0, 0x8 | 0x20, 0, 0)], &supported).unwrap_err();
        assert_eq!(
            err.to_string(),
            "This host's KVM does not offer CPUID leaf 0x7 subleaf 0 EBX bit 5, which the \
             snapshot's vCPUs have."
        );
        // A leaf the host does not have at all offers nothing.
        assert!(matches!(
            check_cpuid_offered(&[leaf(0x8000_0001, 0, 0, 0, 1)], &supported),
            Err(VcpuStateError::CpuidFeature {
                leaf: 0x8000_0001,
                register: "EDX",
                bit: 0,
                ..
            })
        ));
    }
}
