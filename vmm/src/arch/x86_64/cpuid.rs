//! CPUID for a vCPU: KVM's supported set, normalised so the guest sees its own APIC ID, a
//! topology that matches the vCPU count, the hypervisor and TSC-deadline bits, and KVM's
//! paravirtual leaves (so it picks kvm-clock).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// What the normalisation needs to know about the VM and the vCPU.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC ID.
    pub index: u8,
    /// How many vCPUs the VM has.
    pub count: u8,
    /// Whether vCPUs come as hyperthread pairs.
    pub smt: bool,
}

impl VcpuTopology {
    fn threads_per_core(&self) -> u32 {
        if self.smt && self.count > 1 {
            2
        } else {
            1
        }
    }

    /// Bits of the APIC ID that number threads inside a core.
    fn thread_bits(&self) -> u32 {
        self.threads_per_core().next_power_of_two().trailing_zeros()
    }

    /// Bits of the APIC ID that number logical CPUs inside the package.
    fn package_bits(&self) -> u32 {
        u32::from(self.count).next_power_of_two().trailing_zeros()
    }
}

/// Errors normalising CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The KVM paravirtual leaves could not be added.
    #[error("Failed to add the KVM paravirtual CPUID leaves: {0:?}")]
    AddLeaf(vmm_sys_util::fam::Error),
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_STRUCTURED_EXT: u32 = 0x7;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAVES_BRAND_STRING: std::ops::RangeInclusive<u32> = 0x8000_0002..=0x8000_0004;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const ECX_AMD_CMP_LEGACY: u32 = 1 << 1;
const ECX_AMD_TOPOEXT: u32 = 1 << 22;
/// CPUID.7.0:EDX[29]: the IA32_ARCH_CAPABILITIES MSR exists.
const EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

fn is_intel(entries: &[kvm_cpuid_entry2]) -> bool {
    // "GenuineIntel": EBX "Genu", EDX "ineI", ECX "ntel".
    entries
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| e.ebx == 0x756e_6547 && e.edx == 0x4965_6e69 && e.ecx == 0x6c65_746e)
}

fn normalize_entry(entry: &mut kvm_cpuid_entry2, topo: VcpuTopology, intel: bool) {
    let apic_id = u32::from(topo.index);
    let count = u32::from(topo.count);
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
            // KVM's in-kernel LAPIC always emulates TSC-deadline mode, but the supported CPUID
            // leaves the bit to the VMM. Without it Linux must calibrate the LAPIC timer against
            // the PIT; when that fails (as it does nested) every CPU falls back to periodic PIT
            // broadcast ticks, with no one-shot timers and no NOHZ.
            entry.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            if topo.count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS if intel => {
            let cache_level = (entry.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 {
                count
            } else {
                topo.threads_per_core()
            };
            let cores = count.div_ceil(topo.threads_per_core());
            entry.eax = (entry.eax & 0x3fff) | ((sharing - 1) << 14) | ((cores - 1) << 26);
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
            entry.edx = apic_id;
            let level = entry.index & 0xff;
            (entry.eax, entry.ebx, entry.ecx) = match entry.index {
                0 => (
                    topo.thread_bits(),
                    topo.threads_per_core(),
                    level | (TOPOLOGY_LEVEL_SMT << 8),
                ),
                1 => (
                    topo.package_bits(),
                    count,
                    level | (TOPOLOGY_LEVEL_CORE << 8),
                ),
                _ => (0, 0, level),
            };
        }
        LEAF_KVM_SIGNATURE => {
            entry.eax = entry.eax.max(LEAF_KVM_FEATURES);
            [entry.ebx, entry.ecx, entry.edx] = KVM_SIGNATURE;
        }
        LEAF_STRUCTURED_EXT if !intel && entry.index == 0 => {
            // KVM lists IA32_ARCH_CAPABILITIES whatever the CPU, but AMD CPUs have no such
            // MSR; Firecracker clears the bit on AMD too.
            entry.edx &= !EDX_ARCH_CAPABILITIES;
        }
        LEAF_AMD_EXT_FEATURES if !intel => {
            // Without TOPOEXT the guest takes its topology from leaves 1 and 0x80000008, which
            // we control, instead of the host's 0x8000001E.
            entry.ecx &= !(ECX_AMD_CMP_LEGACY | ECX_AMD_TOPOEXT);
        }
        LEAF_AMD_SIZES if !intel => {
            entry.ecx = (entry.ecx & !0xf0ff) | (topo.package_bits() << 12) | (count - 1);
        }
        _ => {}
    }
}

/// The host CPU's brand string leaves, which KVM leaves empty; the guest shows the host's
/// model name, as under Firecracker.
fn host_brand_leaf(function: u32) -> (u32, u32, u32, u32) {
    let leaf = std::arch::x86_64::__cpuid(function);
    (leaf.eax, leaf.ebx, leaf.ecx, leaf.edx)
}

/// Normalises KVM's supported CPUID for one vCPU. KVM lists its paravirtual leaves when it
/// supports them; if it does not, empty ones are added so the guest still finds the signature.
pub fn normalize(cpuid: &mut CpuId, topo: VcpuTopology) -> Result<(), CpuidError> {
    let has = |cpuid: &CpuId, function| cpuid.as_slice().iter().any(|e| e.function == function);
    if !has(cpuid, LEAF_KVM_SIGNATURE) {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: LEAF_KVM_SIGNATURE,
                ..Default::default()
            })
            .map_err(CpuidError::AddLeaf)?;
    }
    if !has(cpuid, LEAF_KVM_FEATURES) {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: LEAF_KVM_FEATURES,
                ..Default::default()
            })
            .map_err(CpuidError::AddLeaf)?;
    }
    let intel = is_intel(cpuid.as_slice());
    for entry in cpuid.as_mut_slice() {
        if matches!(entry.function, LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2) {
            entry.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        }
        normalize_entry(entry, topo, intel);
        let empty = (entry.eax, entry.ebx, entry.ecx, entry.edx) == (0, 0, 0, 0);
        if LEAVES_BRAND_STRING.contains(&entry.function) && empty {
            (entry.eax, entry.ebx, entry.ecx, entry.edx) = host_brand_leaf(entry.function);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn intel_cpuid() -> CpuId {
        let mut vendor = leaf(0, 0);
        (vendor.ebx, vendor.edx, vendor.ecx) = (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
        let mut cache_l1 = leaf(LEAF_CACHE_PARAMS, 0);
        cache_l1.eax = (1 << 5) | 0x1;
        let mut cache_l3 = leaf(LEAF_CACHE_PARAMS, 3);
        cache_l3.eax = (3 << 5) | 0x3;
        let mut features = leaf(LEAF_FEATURES, 0);
        features.ebx = 0xff00_0800;
        CpuId::from_entries(&[
            vendor,
            features,
            cache_l1,
            cache_l3,
            leaf(LEAF_EXT_TOPOLOGY, 0),
            leaf(LEAF_EXT_TOPOLOGY, 1),
            leaf(LEAF_EXT_TOPOLOGY, 2),
        ])
        .unwrap()
    }

    #[test]
    fn each_vcpu_sees_its_apic_id_and_the_vm_topology() {
        let mut cpuid = intel_cpuid();
        let topo = VcpuTopology {
            index: 3,
            count: 4,
            smt: true,
        };
        normalize(&mut cpuid, topo).unwrap();
        let f = find(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(f.ebx, 0x0304_0800);
        assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(f.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(f.edx & EDX_HTT, 0);

        let smt = find(&cpuid, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 3));
        let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let invalid = find(&cpuid, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!((invalid.eax, invalid.ebx, invalid.ecx), (0, 0, 2));

        let l1 = find(&cpuid, LEAF_CACHE_PARAMS, 0);
        assert_eq!(
            (l1.eax >> 14) & 0xfff,
            1,
            "L1 is shared by the two hyperthreads"
        );
        assert_eq!(l1.eax >> 26, 1, "two cores");
        let l3 = find(&cpuid, LEAF_CACHE_PARAMS, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 is shared by all four vCPUs");
    }

    #[test]
    fn adds_kvm_paravirt_leaves() {
        let mut cpuid = intel_cpuid();
        let topo = VcpuTopology {
            index: 0,
            count: 1,
            smt: false,
        };
        normalize(&mut cpuid, topo).unwrap();
        let sig = find(&cpuid, LEAF_KVM_SIGNATURE, 0);
        assert_eq!(sig.eax, LEAF_KVM_FEATURES);
        assert_eq!([sig.ebx, sig.ecx, sig.edx], KVM_SIGNATURE);
        assert!(cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_KVM_FEATURES));
        assert_eq!(find(&cpuid, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn empty_brand_string_comes_from_the_host() {
        let mut cpuid = CpuId::from_entries(&[leaf(0x8000_0002, 0), leaf(0x8000_0003, 0)]).unwrap();
        let topo = VcpuTopology {
            index: 0,
            count: 1,
            smt: false,
        };
        normalize(&mut cpuid, topo).unwrap();
        let e = find(&cpuid, 0x8000_0002, 0);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), host_brand_leaf(0x8000_0002));
    }

    #[test]
    fn amd_topology_comes_from_leaf_80000008() {
        let mut ext = leaf(LEAF_AMD_EXT_FEATURES, 0);
        ext.ecx = ECX_AMD_TOPOEXT | ECX_AMD_CMP_LEGACY | 0x1;
        let mut sizes = leaf(LEAF_AMD_SIZES, 0);
        sizes.ecx = 0xf0ff | 0x10000;
        let mut cpuid = CpuId::from_entries(&[leaf(0, 0), ext, sizes]).unwrap();
        let topo = VcpuTopology {
            index: 1,
            count: 2,
            smt: false,
        };
        normalize(&mut cpuid, topo).unwrap();
        assert_eq!(find(&cpuid, LEAF_AMD_EXT_FEATURES, 0).ecx, 0x1);
        assert_eq!(find(&cpuid, LEAF_AMD_SIZES, 0).ecx, 0x10000 | (1 << 12) | 1);
    }

    #[test]
    fn amd_has_no_arch_capabilities_msr_and_intel_keeps_it() {
        let mut features = leaf(LEAF_STRUCTURED_EXT, 0);
        features.edx = EDX_ARCH_CAPABILITIES | 0x4;
        let topo = VcpuTopology {
            index: 0,
            count: 1,
            smt: false,
        };
        let mut amd = CpuId::from_entries(&[leaf(0, 0), features]).unwrap();
        normalize(&mut amd, topo).unwrap();
        assert_eq!(find(&amd, LEAF_STRUCTURED_EXT, 0).edx, 0x4);
        let mut intel = intel_cpuid();
        intel.push(features).unwrap();
        normalize(&mut intel, topo).unwrap();
        assert_eq!(
            find(&intel, LEAF_STRUCTURED_EXT, 0).edx,
            EDX_ARCH_CAPABILITIES | 0x4
        );
    }
}
