//! The MSRs a vCPU starts with: the syscall MSRs cleared, fast strings on, and write-back
//! caching as the MTRR default so the guest does not run uncached, over the values a CPU
//! template gives.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_msr_entry, Msrs};

/// Errors building the boot MSR list.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The list could not be allocated.
    #[error("Failed to build the MSR list: {0:?}")]
    Fam(vmm_sys_util::fam::Error),
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// The boot values, by MSR.
const BOOT_MSRS: [(u32, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_CSTAR, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_LSTAR, 0),
    (MSR_IA32_TSC, 0),
    (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
];

/// The MSR values every vCPU boots with: `templated` (a CPU template's MSRs, as modified), with
/// the boot values over them where both name an MSR, as in Firecracker. In address order.
pub fn boot_msrs(mut templated: BTreeMap<u32, u64>) -> Result<Msrs, MsrError> {
    templated.extend(BOOT_MSRS);
    let entries: Vec<kvm_msr_entry> = templated
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(MsrError::Fam)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enables_write_back_mtrr_default() {
        let msrs = boot_msrs(BTreeMap::new()).unwrap();
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
        assert_eq!(msrs.as_slice().len(), 11);
    }

    #[test]
    fn a_templates_msrs_are_set_under_the_boot_values() {
        let templated = BTreeMap::from([(0x10a, 0x4c), (MSR_IA32_TSC, 5)]);
        let msrs = boot_msrs(templated).unwrap();
        let value = |index| {
            msrs.as_slice()
                .iter()
                .find(|e| e.index == index)
                .unwrap()
                .data
        };
        assert_eq!((value(0x10a), value(MSR_IA32_TSC)), (0x4c, 0));
        assert_eq!(msrs.as_slice().len(), 12);
    }
}
