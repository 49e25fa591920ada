//! A custom CPU template as Firecracker 1.16 writes it for x86_64 (`PUT /cpu-config`, the
//! config file's `cpu-config`): CPUID and MSR modifiers and KVM capabilities to check.
//!
//! The types deserialise exactly the JSON Firecracker takes: the template refuses unknown
//! fields, the modifiers inside it ignore them (as Firecracker's do); leaves, subleaves and MSR
//! addresses are strings with a `0x` or `0b` prefix, `flags` a number, and bitmaps strings of
//! `0`, `1`, `x` and `_`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::bitmap::{deserialize_number, Bitmap};

/// A KVM capability the template adds to those checked before the VM is built, or removes
/// from them: `"123"` or `"!123"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmCapability {
    /// Also require this capability.
    Add(u32),
    /// Do not require this capability.
    Remove(u32),
}

impl<'de> Deserialize<'de> for KvmCapability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let parse = |digits: &str| {
            digits.parse::<u32>().map_err(|e| {
                D::Error::custom(format!(
                    "Failed to parse string [{text}] as a kvm capability - can not convert to \
                     numeric: {e}"
                ))
            })
        };
        match text.strip_prefix('!') {
            Some(digits) => parse(digits).map(Self::Remove),
            None => parse(&text).map(Self::Add),
        }
    }
}

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl<'de> Deserialize<'de> for CpuidRegister {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(deserializer)?.as_str() {
            "eax" => Self::Eax,
            "ebx" => Self::Ebx,
            "ecx" => Self::Ecx,
            "edx" => Self::Edx,
            _ => {
                return Err(D::Error::custom(
                    "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]",
                ))
            }
        })
    }
}

/// One register of a CPUID leaf and the bits to change in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CpuidRegisterModifier {
    /// The register.
    pub register: CpuidRegister,
    /// The bits.
    pub bitmap: Bitmap<u32>,
}

/// A CPUID leaf and subleaf, the KVM flags its entry gets, and its register changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CpuidLeafModifier {
    /// The leaf (EAX on input).
    #[serde(deserialize_with = "deserialize_number")]
    pub leaf: u32,
    /// The subleaf (ECX on input).
    #[serde(deserialize_with = "deserialize_number")]
    pub subleaf: u32,
    /// The entry's `kvm_cpuid_entry2` flags (1 means the subleaf is significant).
    pub flags: u32,
    /// The registers to change.
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// An MSR and the bits to change in its boot value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct MsrModifier {
    /// The MSR's address.
    #[serde(deserialize_with = "deserialize_number")]
    pub addr: u32,
    /// The bits.
    pub bitmap: Bitmap<u64>,
}

/// A custom CPU template. The empty template changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCpuTemplate {
    /// Capabilities to check, beyond Kiln's own, before the VM is built.
    #[serde(default)]
    pub kvm_capabilities: Vec<KvmCapability>,
    /// CPUID changes, applied to every vCPU.
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// MSR changes, applied to every vCPU.
    #[serde(default)]
    pub msr_modifiers: Vec<MsrModifier>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        serde_json::from_str::<CustomCpuTemplate>(json)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_firecrackers_template_json() {
        let t: CustomCpuTemplate = serde_json::from_str(
            r#"{
              "kvm_capabilities": ["!56", "171"],
              "cpuid_modifiers": [{
                "leaf": "0x80000001", "subleaf": "0b0", "flags": 1, "comment": "ignored",
                "modifiers": [{"register": "ecx", "bitmap": "0bx00100xxx1xxxxxxxxxxxxxxxxxxxxx1"}]
              }],
              "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1x0"}]
            }"#,
        )
        .unwrap();
        assert_eq!(
            t.kvm_capabilities,
            [KvmCapability::Remove(56), KvmCapability::Add(171)]
        );
        let leaf = &t.cpuid_modifiers[0];
        assert_eq!((leaf.leaf, leaf.subleaf, leaf.flags), (0x8000_0001, 0, 1));
        assert_eq!(leaf.modifiers[0].register, CpuidRegister::Ecx);
        assert_eq!(leaf.modifiers[0].bitmap.filter, 0x7c40_0001);
        assert_eq!(leaf.modifiers[0].bitmap.value, 0x1040_0001);
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        assert_eq!(t.msr_modifiers[0].bitmap.filter, 0b101);
        assert_eq!(
            serde_json::from_str::<CustomCpuTemplate>("{}").unwrap(),
            CustomCpuTemplate::default()
        );
    }

    #[test]
    fn refuses_what_firecracker_refuses() {
        let leaf = |leaf: &str, register: &str| {
            format!(
                r#"{{"cpuid_modifiers": [{{"leaf": {leaf}, "subleaf": "0x0", "flags": 0,
                    "modifiers": [{{"register": "{register}", "bitmap": "0b1"}}]}}]}}"#
            )
        };
        assert!(error(&leaf("1", "eax")).contains("invalid type: integer `1`, expected a string"));
        assert!(error(&leaf("\"1\"", "eax")).contains("No supported number system prefix"));
        assert!(error(&leaf("\"0x1\"", "ekx"))
            .contains("Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]"));
        assert!(error(&leaf("\"0x1\"", "EAX")).contains("Invalid CPUID register"));
        assert!(error(r#"{"reg_modifiers": []}"#).contains(
            "unknown field `reg_modifiers`, expected one of `kvm_capabilities`, \
             `cpuid_modifiers`, `msr_modifiers`"
        ));
        assert!(error(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "modifiers": []}]}"#
        )
        .contains("missing field `flags`"));
        assert!(
            error(r#"{"msr_modifiers": [{"addr": "0x10"}]}"#).contains("missing field `bitmap`")
        );
        assert!(error(r#"{"kvm_capabilities": ["x"]}"#).contains(
            "Failed to parse string [x] as a kvm capability - can not convert to numeric: \
             invalid digit found in string"
        ));
        assert!(error(r#"{"kvm_capabilities": ["!"]}"#).contains("cannot parse integer from empty"));
        assert!(error(r#"{"kvm_capabilities": [5]}"#).contains("expected a string"));
        assert!(error("null").contains("expected struct CustomCpuTemplate"));
        assert!(error(r#"{"cpuid_modifiers": null}"#).contains("expected a sequence"));
    }
}
