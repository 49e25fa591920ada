//! `PUT /cpu-config`: a custom CPU template, in Firecracker's JSON.

use vmm::cpu_template::CustomCpuTemplate;
use vmm::rpc::VmmAction;

use super::{from_json, RequestError};

/// Parses `PUT /cpu-config`. Every field is optional: `{}` is the empty template.
pub(super) fn parse_put(body: &[u8]) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::PutCpuConfig(from_json::<CustomCpuTemplate>(
        body,
    )?))
}

#[cfg(test)]
mod tests {
    use vmm::cpu_template::KvmCapability;

    use super::*;

    #[test]
    fn takes_a_custom_template() {
        let body = br#"{"kvm_capabilities": ["171"],
            "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxx0xxxxxxxxxxxxxxxxxxxx"}]}],
            "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]}"#;
        let VmmAction::PutCpuConfig(t) = parse_put(body).unwrap() else {
            panic!("not a cpu config");
        };
        assert_eq!(t.kvm_capabilities, [KvmCapability::Add(171)]);
        assert_eq!(t.cpuid_modifiers[0].modifiers[0].bitmap.filter, 1 << 20);
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        assert_eq!(
            parse_put(b"{ }").unwrap(),
            VmmAction::PutCpuConfig(CustomCpuTemplate::default())
        );
    }

    #[test]
    fn refuses_bad_templates_with_firecrackers_messages() {
        for (body, expected) in [
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
                "An error occurred when deserializing the json body of a request: No supported \
                 number system prefix found in value [1]. Make sure to prefix the number with \
                 '0x' for hexadecimal numbers or '0b' for binary numbers. at line 1 column 33.",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b2"}]}"#,
                "Failed to parse string [0b2] as a bitmap - unknown character: 50",
            ),
            (r#"{"vcpu_features": []}"#, "unknown field `vcpu_features`"),
            ("<unparseable_payload>", "expected value at line 1 column 1"),
        ] {
            let err = parse_put(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
