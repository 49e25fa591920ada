//! CPU templates, as Firecracker 1.16 has them on x86_64: what the guest is told about the CPU
//! beyond KVM's defaults. This module owns the template types and their JSON, the static
//! templates and their host checks, and applying a template to a vCPU's CPUID and MSRs and to
//! the KVM capabilities checked when the VM is built.
//!
//! A VM has at most one template: a static one named by `machine-config.cpu_template`, or a
//! custom one from `PUT /cpu-config` or the config file's `cpu-config`. The one set last wins.
//! When the VM is built the template is resolved ([`CpuTemplateType::resolve`]: a static one is
//! checked against the host's vendor and model), its capabilities are checked, and each vCPU
//! gets KVM's supported CPUID with the template applied, then Kiln's per-vCPU normalisation
//! (which therefore wins where both touch a bit, as Firecracker's does), and the boot MSRs over
//! the template's.

mod apply;
mod bitmap;
mod custom;
mod static_templates;

pub use apply::{apply_cpuid, apply_msrs, capabilities, msr_addresses, ApplyError};
pub use bitmap::Bitmap;
pub use custom::{
    CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier, CustomCpuTemplate, KvmCapability,
    MsrModifier,
};
pub use static_templates::{HostCpu, StaticCpuTemplate, StaticTemplateError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The template a VM is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuTemplateType {
    /// A static template, by name.
    Static(StaticCpuTemplate),
    /// A custom template.
    Custom(CustomCpuTemplate),
}

impl CpuTemplateType {
    /// The modifiers to apply on `host`; the empty template for none.
    pub fn resolve(
        template: Option<&Self>,
        host: &HostCpu,
    ) -> Result<CustomCpuTemplate, StaticTemplateError> {
        match template {
            None => Ok(CustomCpuTemplate::default()),
            Some(Self::Static(name)) => name.template(host),
            Some(Self::Custom(custom)) => Ok(custom.clone()),
        }
    }

    /// Firecracker's rule for a `cpu_template` in `machine-config` (PUT, PATCH, or the file):
    /// absent keeps the template in place, static or custom; `None` removes it; a name sets it.
    pub fn update(current: Option<Self>, given: Option<Self>) -> Option<Self> {
        match given {
            None => current,
            Some(Self::Static(StaticCpuTemplate::None)) => None,
            Some(template) => Some(template),
        }
    }

    /// The name `machine-config` shows: a static template's, never a custom one's.
    fn static_name(template: &Option<Self>) -> Option<StaticCpuTemplate> {
        match template {
            Some(Self::Static(name)) if *name != StaticCpuTemplate::None => Some(*name),
            _ => None,
        }
    }
}

/// `skip_serializing_if` for `machine-config.cpu_template`: written only when it names a
/// static template, as Firecracker writes it.
pub fn names_no_static_template(template: &Option<CpuTemplateType>) -> bool {
    CpuTemplateType::static_name(template).is_none()
}

/// Reads `machine-config.cpu_template`: a static template's name, or null.
pub fn deserialize_static<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<CpuTemplateType>, D::Error> {
    Ok(Option::<StaticCpuTemplate>::deserialize(deserializer)?.map(CpuTemplateType::Static))
}

/// Writes `machine-config.cpu_template`: the static template's name.
pub fn serialize_static<S: Serializer>(
    template: &Option<CpuTemplateType>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    CpuTemplateType::static_name(template).serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_set_last_wins_and_none_removes_it() {
        let custom = || Some(CpuTemplateType::Custom(CustomCpuTemplate::default()));
        let t2 = || Some(CpuTemplateType::Static(StaticCpuTemplate::T2));
        let none = Some(CpuTemplateType::Static(StaticCpuTemplate::None));
        assert_eq!(CpuTemplateType::update(custom(), None), custom());
        assert_eq!(CpuTemplateType::update(t2(), None), t2());
        assert_eq!(CpuTemplateType::update(custom(), t2()), t2());
        assert_eq!(CpuTemplateType::update(custom(), none.clone()), None);
        assert_eq!(CpuTemplateType::update(t2(), none), None);
    }

    #[test]
    fn resolves_to_the_modifiers_to_apply() {
        let amd = HostCpu {
            vendor: *b"AuthenticAMD",
            signature: 0x00a0_0f11,
        };
        assert_eq!(
            CpuTemplateType::resolve(None, &amd),
            Ok(CustomCpuTemplate::default())
        );
        let custom = CustomCpuTemplate {
            kvm_capabilities: vec![KvmCapability::Add(7)],
            ..Default::default()
        };
        let resolved =
            CpuTemplateType::resolve(Some(&CpuTemplateType::Custom(custom.clone())), &amd);
        assert_eq!(resolved, Ok(custom));
        let t2a = CpuTemplateType::Static(StaticCpuTemplate::T2A);
        assert!(!CpuTemplateType::resolve(Some(&t2a), &amd)
            .unwrap()
            .cpuid_modifiers
            .is_empty());
        let t2 = CpuTemplateType::Static(StaticCpuTemplate::T2);
        assert_eq!(
            CpuTemplateType::resolve(Some(&t2), &amd),
            Err(StaticTemplateError::VendorMismatch)
        );
    }
}
