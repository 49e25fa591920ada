//! Firecracker's static CPU templates (`machine-config.cpu_template`): their names, the CPU
//! vendor and models each is made for, and their modifiers.
//!
//! The modifiers are data: `data/*.json` are Firecracker v1.16.1's
//! `tests/data/custom_cpu_templates/{C3,T2,T2S,T2CL,T2A}.json` (Apache-2.0), the JSON form of
//! its built-in tables, which its own tests check against them. They are read with the custom
//! template parser, so the two paths share one reader.

use serde::{Deserialize, Serialize};

use super::custom::CustomCpuTemplate;

/// Why a static template cannot be used on this host. The messages are Firecracker's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StaticTemplateError {
    /// The template is for the other vendor.
    #[error("CPU vendor mismatched between actual CPU and CPU template.")]
    VendorMismatch,
    /// The template is for the vendor, but not this model.
    #[error("The current CPU model is not permitted to apply the CPU template.")]
    InvalidCpuModel,
    /// A built-in template's data does not parse (a build defect; unit tests check it).
    #[error("The built-in {name} CPU template is malformed: {reason}")]
    Malformed {
        name: StaticCpuTemplate,
        reason: String,
    },
}

/// A static template's name. The variants are in Firecracker's order, so that an unknown name
/// is refused with its list (`expected one of `C3`, `T2`, ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum StaticCpuTemplate {
    /// C3 (Intel Skylake, Cascade Lake, Ice Lake).
    C3,
    /// T2 (Intel Skylake, Cascade Lake, Ice Lake).
    T2,
    /// T2S (Intel Skylake, Cascade Lake).
    T2S,
    /// No template.
    None,
    /// T2CL (Intel Cascade Lake, Ice Lake).
    T2CL,
    /// T2A (AMD Milan).
    T2A,
}

impl std::fmt::Display for StaticCpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// CPUID leaf 0's vendor string, EBX EDX ECX.
const VENDOR_INTEL: &[u8; 12] = b"GenuineIntel";
const VENDOR_AMD: &[u8; 12] = b"AuthenticAMD";

/// The family, model and stepping bits of CPUID leaf 1's EAX (without the processor type).
const FMS_MASK: u32 = 0x0fff_0fff;
const SKYLAKE: u32 = 0x0005_0654;
const CASCADE_LAKE: u32 = 0x0005_0657;
const ICE_LAKE: u32 = 0x0006_06a6;
const MILAN: u32 = 0x00a0_0f11;

/// What the template checks need to know about the host CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    /// CPUID leaf 0's vendor string.
    pub vendor: [u8; 12],
    /// CPUID leaf 1's EAX.
    pub signature: u32,
}

impl HostCpu {
    /// The CPU this process runs on, as Firecracker reads it: CPUID on the host, not KVM's.
    pub fn current() -> Self {
        let leaf0 = std::arch::x86_64::__cpuid(0);
        let mut vendor = [0u8; 12];
        for (chunk, register) in vendor.chunks_mut(4).zip([leaf0.ebx, leaf0.edx, leaf0.ecx]) {
            chunk.copy_from_slice(&register.to_le_bytes());
        }
        Self {
            vendor,
            signature: std::arch::x86_64::__cpuid(1).eax,
        }
    }
}

impl StaticCpuTemplate {
    fn vendor_and_models(self) -> Option<(&'static [u8; 12], &'static [u32])> {
        Some(match self {
            Self::C3 | Self::T2 => (VENDOR_INTEL, &[SKYLAKE, CASCADE_LAKE, ICE_LAKE]),
            Self::T2S => (VENDOR_INTEL, &[SKYLAKE, CASCADE_LAKE]),
            Self::T2CL => (VENDOR_INTEL, &[CASCADE_LAKE, ICE_LAKE]),
            Self::T2A => (VENDOR_AMD, &[MILAN]),
            Self::None => return None,
        })
    }

    fn data(self) -> Option<&'static str> {
        Some(match self {
            Self::C3 => include_str!("data/C3.json"),
            Self::T2 => include_str!("data/T2.json"),
            Self::T2S => include_str!("data/T2S.json"),
            Self::T2CL => include_str!("data/T2CL.json"),
            Self::T2A => include_str!("data/T2A.json"),
            Self::None => return None,
        })
    }

    /// The template's modifiers, after checking, as Firecracker does when the VM is built,
    /// that the host has the vendor and one of the models it is made for. `None` is the empty
    /// template.
    pub fn template(self, host: &HostCpu) -> Result<CustomCpuTemplate, StaticTemplateError> {
        let (Some((vendor, models)), Some(data)) = (self.vendor_and_models(), self.data()) else {
            return Ok(CustomCpuTemplate::default());
        };
        if &host.vendor != vendor {
            return Err(StaticTemplateError::VendorMismatch);
        }
        let model = host.signature & FMS_MASK;
        if !models.contains(&model) {
            return Err(StaticTemplateError::InvalidCpuModel);
        }
        if self == Self::C3 && model == SKYLAKE {
            log::warn!(
                "On processors that do not enumerate FBSDP_NO, PSDP_NO and SBDR_SSDP_NO on \
                 IA32_ARCH_CAPABILITIES MSR, the guest kernel does not apply the mitigation \
                 against MMIO stale data vulnerability."
            );
        }
        serde_json::from_str(data).map_err(|e| StaticTemplateError::Malformed {
            name: self,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [StaticCpuTemplate; 5] = [
        StaticCpuTemplate::C3,
        StaticCpuTemplate::T2,
        StaticCpuTemplate::T2S,
        StaticCpuTemplate::T2CL,
        StaticCpuTemplate::T2A,
    ];

    fn host(vendor: &[u8; 12], signature: u32) -> HostCpu {
        HostCpu {
            vendor: *vendor,
            signature,
        }
    }

    #[test]
    fn every_template_parses_on_its_own_cpus() {
        for template in ALL {
            let (vendor, models) = template.vendor_and_models().unwrap();
            for model in models {
                let t = template.template(&host(vendor, *model)).unwrap();
                assert!(!t.cpuid_modifiers.is_empty(), "{template}");
                assert!(t.kvm_capabilities.is_empty(), "{template}");
            }
        }
        let t2s = StaticCpuTemplate::T2S.template(&host(VENDOR_INTEL, SKYLAKE));
        assert_eq!(t2s.unwrap().msr_modifiers[0].addr, 0x10a);
    }

    #[test]
    fn t2a_masks_what_firecrackers_table_masks() {
        let t = StaticCpuTemplate::T2A
            .template(&host(VENDOR_AMD, MILAN))
            .unwrap();
        let leaf1 = &t.cpuid_modifiers[0];
        assert_eq!((leaf1.leaf, leaf1.subleaf), (1, 0));
        // ECX: the Intel-only bits 2-8, 10, 11, 14, 15 and 18 cleared.
        let ecx = &leaf1.modifiers[1].bitmap;
        assert_eq!((ecx.filter, ecx.value), (0x0004_cdfc, 0));
    }

    #[test]
    fn the_wrong_vendor_or_model_is_refused() {
        let epyc_rome = host(VENDOR_AMD, 0x0083_0f10);
        let emerald_rapids = host(VENDOR_INTEL, 0x000c_06f2);
        assert_eq!(
            StaticCpuTemplate::T2A.template(&emerald_rapids),
            Err(StaticTemplateError::VendorMismatch)
        );
        assert_eq!(
            StaticCpuTemplate::T2A.template(&epyc_rome),
            Err(StaticTemplateError::InvalidCpuModel)
        );
        for intel in [
            StaticCpuTemplate::C3,
            StaticCpuTemplate::T2,
            StaticCpuTemplate::T2S,
            StaticCpuTemplate::T2CL,
        ] {
            assert_eq!(
                intel.template(&epyc_rome),
                Err(StaticTemplateError::VendorMismatch)
            );
            assert_eq!(
                intel.template(&emerald_rapids),
                Err(StaticTemplateError::InvalidCpuModel)
            );
        }
        // The processor-type bits (13:12) are not part of the model.
        assert!(StaticCpuTemplate::T2S
            .template(&host(VENDOR_INTEL, SKYLAKE | 0x3000))
            .is_ok());
        assert_eq!(
            StaticTemplateError::VendorMismatch.to_string(),
            "CPU vendor mismatched between actual CPU and CPU template."
        );
    }

    #[test]
    fn none_is_the_empty_template_anywhere() {
        assert_eq!(
            StaticCpuTemplate::None.template(&host(b"HygonGenuine", 0)),
            Ok(CustomCpuTemplate::default())
        );
    }

    #[test]
    fn names_are_firecrackers() {
        let err = serde_json::from_str::<StaticCpuTemplate>(r#""t2""#).unwrap_err();
        assert!(
            err.to_string().contains(
                "unknown variant `t2`, expected one of `C3`, `T2`, `T2S`, `None`, `T2CL`, `T2A`"
            ),
            "{err}"
        );
        assert_eq!(
            serde_json::to_string(&StaticCpuTemplate::T2CL).unwrap(),
            r#""T2CL""#
        );
    }

    #[test]
    fn reads_the_host() {
        let host = HostCpu::current();
        assert!(host.vendor.iter().all(u8::is_ascii), "{:?}", host.vendor);
    }
}
