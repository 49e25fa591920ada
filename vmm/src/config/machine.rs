//! `machine-config`: vCPUs, memory size, the memory options and the CPU template.

use serde::{Deserialize, Serialize};

use crate::cpu_template::{self, CpuTemplateType};

/// The most vCPUs a VM can have, as in Firecracker.
pub const MAX_VCPUS: u8 = 32;

/// Errors in `machine-config`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineConfigError {
    /// vcpu_count is out of range.
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, not {0}.")]
    VcpuCount(u8),
    /// With SMT, vCPUs come in pairs.
    #[error("vcpu_count must be 1 or even when smt is enabled, not {0}.")]
    SmtVcpuCount(u8),
    /// mem_size_mib is zero.
    #[error("mem_size_mib must be greater than 0.")]
    MemSizeZero,
    /// mem_size_mib does not fit the address space.
    #[error("mem_size_mib {0} is too large.")]
    MemSizeTooLarge(usize),
    /// A setting Kiln does not implement yet.
    #[error("{0} is not supported yet.")]
    Unsupported(&'static str),
}

/// Backing page size for guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// 2 MiB huge pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// The `machine-config` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Whether vCPUs are presented as hyperthread pairs.
    #[serde(default)]
    pub smt: bool,
    /// The CPU template. Only a static one is read and written here, by name, and only when
    /// it names one, as Firecracker writes it; a custom one (`cpu-config`) is held here too.
    /// As read, `Static(None)` asks to remove the template ([`CpuTemplateType::update`]).
    #[serde(
        default,
        skip_serializing_if = "cpu_template::names_no_static_template",
        deserialize_with = "cpu_template::deserialize_static",
        serialize_with = "cpu_template::serialize_static"
    )]
    pub cpu_template: Option<CpuTemplateType>,
    /// Whether KVM tracks the pages the guest dirties (for snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Backing page size.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    /// Checks the ranges and the combinations of settings.
    pub fn validate(&self) -> Result<(), MachineConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(MachineConfigError::VcpuCount(self.vcpu_count));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(MachineConfigError::SmtVcpuCount(self.vcpu_count));
        }
        if self.mem_size_mib == 0 {
            return Err(MachineConfigError::MemSizeZero);
        }
        if self.mem_size_bytes().is_none() {
            return Err(MachineConfigError::MemSizeTooLarge(self.mem_size_mib));
        }
        if self.huge_pages != HugePages::None {
            return Err(MachineConfigError::Unsupported("huge_pages"));
        }
        Ok(())
    }

    /// Guest memory in bytes, if it fits in 48 bits of guest physical address.
    pub fn mem_size_bytes(&self) -> Option<u64> {
        let bytes = u64::try_from(self.mem_size_mib)
            .ok()?
            .checked_mul(1 << 20)?;
        (bytes < 1 << 46).then_some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cpu_template::{CustomCpuTemplate, StaticCpuTemplate};

    #[test]
    fn cpu_template_is_written_only_when_it_names_a_static_one() {
        let mut machine = MachineConfig::default();
        let keys = |m: &MachineConfig| serde_json::to_value(m).unwrap().as_object().unwrap().len();
        assert_eq!(keys(&machine), 5);
        machine.cpu_template = Some(CpuTemplateType::Static(StaticCpuTemplate::None));
        assert_eq!(keys(&machine), 5);
        machine.cpu_template = Some(CpuTemplateType::Custom(CustomCpuTemplate::default()));
        assert_eq!(keys(&machine), 5);
        machine.cpu_template = Some(CpuTemplateType::Static(StaticCpuTemplate::T2));
        assert_eq!(
            serde_json::to_value(&machine).unwrap()["cpu_template"],
            "T2"
        );
    }

    #[test]
    fn cpu_template_takes_firecrackers_names() {
        let read = |template: &str| {
            serde_json::from_str::<MachineConfig>(&format!(
                r#"{{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": {template}}}"#
            ))
            .map(|m| m.cpu_template)
        };
        for name in ["C3", "T2", "T2S", "T2CL", "T2A", "None"] {
            let template = read(&format!("\"{name}\"")).unwrap();
            let Some(CpuTemplateType::Static(t)) = template else {
                panic!("{name}: {template:?}");
            };
            assert_eq!(t.to_string(), name);
        }
        assert_eq!(read("null").unwrap(), None);
        let err = read(r#""Bogus""#).unwrap_err().to_string();
        assert!(
            err.contains(
                "unknown variant `Bogus`, expected one of `C3`, `T2`, `T2S`, `None`, `T2CL`, `T2A`"
            ),
            "{err}"
        );
        assert!(read("{}").is_err());
    }
}
