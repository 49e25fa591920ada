//! Applying a template: its CPUID modifiers to a vCPU's CPUID, its MSR modifiers to the values
//! read back from the vCPU, and its KVM capabilities to the list checked before the VM is built.
//! As in Firecracker, a modifier may only change what KVM offers: a leaf, subleaf or MSR it does
//! not list is an error, never added.

use std::collections::BTreeMap;

use kvm_bindings::CpuId;

use super::custom::{CpuidRegister, CustomCpuTemplate, KvmCapability};

/// Why a template cannot be applied. The messages are Firecracker's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    /// A CPUID modifier names a leaf and subleaf KVM does not list.
    #[error("Template changes a CPUID entry not supported by KVM: Leaf: {0:x}, Subleaf: {1:x}")]
    CpuidNotSupported(u32, u32),
    /// An MSR modifier names an MSR whose value was not read.
    #[error("Template changes an MSR entry not supported by KVM: Register Address: {0:x}")]
    MsrNotSupported(u32),
}

/// Applies the CPUID modifiers, in order, to the entries with their leaf and subleaf: each
/// entry takes the modifier's flags, and each named register its bits.
pub fn apply_cpuid(cpuid: &mut CpuId, template: &CustomCpuTemplate) -> Result<(), ApplyError> {
    for leaf in &template.cpuid_modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == leaf.leaf && e.index == leaf.subleaf)
            .ok_or(ApplyError::CpuidNotSupported(leaf.leaf, leaf.subleaf))?;
        entry.flags = leaf.flags;
        for modifier in &leaf.modifiers {
            let register = match modifier.register {
                CpuidRegister::Eax => &mut entry.eax,
                CpuidRegister::Ebx => &mut entry.ebx,
                CpuidRegister::Ecx => &mut entry.ecx,
                CpuidRegister::Edx => &mut entry.edx,
            };
            *register = modifier.bitmap.apply(*register);
        }
    }
    Ok(())
}

/// The MSR addresses the template changes, whose current values must be read first.
pub fn msr_addresses(template: &CustomCpuTemplate) -> Vec<u32> {
    template.msr_modifiers.iter().map(|m| m.addr).collect()
}

/// Applies the MSR modifiers to `values`, the MSRs read from the vCPU.
pub fn apply_msrs(
    values: &mut BTreeMap<u32, u64>,
    template: &CustomCpuTemplate,
) -> Result<(), ApplyError> {
    for modifier in &template.msr_modifiers {
        let value = values
            .get_mut(&modifier.addr)
            .ok_or(ApplyError::MsrNotSupported(modifier.addr))?;
        *value = modifier.bitmap.apply(*value);
    }
    Ok(())
}

/// The KVM capabilities to check: `base`, then those the template adds, less those it removes
/// (removing one of Kiln's own skips its check, as in Firecracker). The order is Firecracker's,
/// a removal moving the last one into its place, so both report the same missing capability.
pub fn capabilities(base: &[u32], template: &CustomCpuTemplate) -> Vec<u32> {
    let mut caps = base.to_vec();
    for modifier in &template.kvm_capabilities {
        match *modifier {
            KvmCapability::Add(cap) if !caps.contains(&cap) => caps.push(cap),
            KvmCapability::Remove(cap) => {
                if let Some(pos) = caps.iter().position(|c| *c == cap) {
                    caps.swap_remove(pos);
                }
            }
            KvmCapability::Add(_) => {}
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn template(json: &str) -> CustomCpuTemplate {
        serde_json::from_str(json).unwrap()
    }

    fn cpuid() -> CpuId {
        let entry = |function, index, ecx| kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            eax: 0xffff_ffff,
            ..Default::default()
        };
        CpuId::from_entries(&[
            entry(1, 0, 0x0018_0001),
            entry(7, 0, 0xff),
            entry(7, 1, 0xff),
        ])
        .unwrap()
    }

    #[test]
    fn cpuid_modifiers_change_only_their_bits_of_their_entry() {
        let t = template(
            r#"{"cpuid_modifiers": [
                {"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                    {"register": "ecx", "bitmap": "0bxxxxxxxxxxx0xxxxxxxxxxxxxxxxxxx0"},
                    {"register": "eax", "bitmap": "0b1x0"}]},
                {"leaf": "0x7", "subleaf": "0x1", "flags": 1, "modifiers": [
                    {"register": "ecx", "bitmap": "0b0000"}]}
            ]}"#,
        );
        let mut c = cpuid();
        apply_cpuid(&mut c, &t).unwrap();
        let [leaf1, leaf7_0, leaf7_1] = c.as_slice() else {
            panic!("{:?}", c.as_slice());
        };
        // SSE4.2 (bit 20) and SSE3 (bit 0) cleared, SSE4.1 (bit 19) kept.
        assert_eq!(leaf1.ecx, 0x0008_0000);
        assert_eq!(leaf1.eax, 0xffff_fffe);
        assert_eq!((leaf7_0.ecx, leaf7_0.flags), (0xff, 0));
        assert_eq!((leaf7_1.ecx, leaf7_1.flags), (0xf0, 1));
    }

    #[test]
    fn a_leaf_kvm_does_not_list_is_an_error() {
        for (leaf, subleaf) in [("0x77", "0x0"), ("0x1", "0x1")] {
            let t = template(&format!(
                r#"{{"cpuid_modifiers": [{{"leaf": "{leaf}", "subleaf": "{subleaf}", "flags": 0,
                    "modifiers": []}}]}}"#
            ));
            let err = apply_cpuid(&mut cpuid(), &t).unwrap_err();
            assert!(matches!(err, ApplyError::CpuidNotSupported(..)), "{err}");
        }
        assert_eq!(
            ApplyError::CpuidNotSupported(0x8000_0001, 0).to_string(),
            "Template changes a CPUID entry not supported by KVM: Leaf: 80000001, Subleaf: 0"
        );
    }

    #[test]
    fn msr_modifiers_change_the_values_read() {
        let t = template(
            r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0x1"},
                                  {"addr": "0x10a", "bitmap": "0b1xxx"}]}"#,
        );
        assert_eq!(msr_addresses(&t), [0x10a, 0x10a]);
        let mut values = BTreeMap::from([(0x10a, 0b0110)]);
        apply_msrs(&mut values, &t).unwrap();
        assert_eq!(values[&0x10a], 0b1011);
        let err = apply_msrs(&mut BTreeMap::new(), &t).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Template changes an MSR entry not supported by KVM: Register Address: 10a"
        );
    }

    #[test]
    fn kvm_capabilities_add_to_and_remove_from_the_checked_list() {
        let t = template(r#"{"kvm_capabilities": ["9999", "1", "!1", "9999", "!7"]}"#);
        assert_eq!(capabilities(&[1, 2, 3], &t), [9999, 2, 3]);
        assert_eq!(capabilities(&[1], &CustomCpuTemplate::default()), [1]);
    }
}
