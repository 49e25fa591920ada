//! `PUT` and `PATCH /machine-config`: vCPUs, memory and their options.

use vmm::config::MachineConfig;
use vmm::rpc::{MachineConfigUpdate, VmmAction};

use super::{from_json, Parsed, RequestError};

/// Parses `PUT /machine-config`: `vcpu_count` and `mem_size_mib` are required. A body with
/// `cpu_template` gets Firecracker's deprecation warning (static templates are deprecated in
/// favour of `PUT /cpu-config`).
pub(super) fn parse_put(body: &[u8]) -> Result<Parsed, RequestError> {
    let config: MachineConfig = from_json(body)?;
    Ok(Parsed {
        deprecation: config
            .cpu_template
            .is_some()
            .then_some("PUT /machine-config: cpu_template field is deprecated."),
        action: VmmAction::PutMachineConfig(config),
    })
}

/// Parses `PATCH /machine-config`. A body that changes nothing is refused, as in Firecracker;
/// `cpu_template` is deprecated as for PUT.
pub(super) fn parse_patch(body: &[u8]) -> Result<Parsed, RequestError> {
    let update: MachineConfigUpdate = from_json(body)?;
    if update == MachineConfigUpdate::default() {
        return Err(RequestError::EmptyBody("PATCH"));
    }
    Ok(Parsed {
        deprecation: update
            .cpu_template
            .is_some()
            .then_some("PATCH /machine-config: cpu_template field is deprecated."),
        action: VmmAction::PatchMachineConfig(update),
    })
}

#[cfg(test)]
mod tests {
    use vmm::config::HugePages;

    use super::*;

    #[test]
    fn put_takes_the_whole_config() {
        let body = br#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                        "track_dirty_pages": true, "huge_pages": "2M"}"#;
        let VmmAction::PutMachineConfig(cfg) = parse_put(body).unwrap().action else {
            panic!("not a machine config");
        };
        assert_eq!((cfg.vcpu_count, cfg.mem_size_mib), (2, 256));
        assert!(cfg.track_dirty_pages);
        assert_eq!(cfg.huge_pages, HugePages::Hugetlbfs2M);
    }

    #[test]
    fn put_refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"mem_size_mib": 128}"#, "missing field `vcpu_count`"),
            (r#"{"vcpu_count": 1}"#, "missing field `mem_size_mib`"),
            (
                r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
                "invalid type: string \"two\"",
            ),
            (
                r#"{"vcpu_count": 300, "mem_size_mib": 128}"#,
                "invalid value: integer `300`",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": -1}"#,
                "invalid value: integer `-1`",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpus": 1}"#,
                "unknown field `cpus`",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "7M"}"#,
                "unknown variant `7M`",
            ),
        ] {
            let err = parse_put(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn cpu_template_is_deprecated_as_in_firecracker() {
        let put = |body: &str| parse_put(body.as_bytes()).unwrap().deprecation;
        assert_eq!(put(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#), None);
        let none = r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}"#;
        assert!(put(none)
            .unwrap()
            .starts_with("PUT /machine-config: cpu_template"));
        let null = r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": null}"#;
        assert_eq!(put(null), None);
        let patch = parse_patch(br#"{"cpu_template": "T2A"}"#).unwrap();
        assert_eq!(
            patch.deprecation,
            Some("PATCH /machine-config: cpu_template field is deprecated.")
        );
    }

    #[test]
    fn patch_takes_any_subset_but_not_none() {
        let VmmAction::PatchMachineConfig(update) =
            parse_patch(br#"{"mem_size_mib": 512}"#).unwrap().action
        else {
            panic!("not a patch");
        };
        assert_eq!(
            update,
            MachineConfigUpdate {
                mem_size_mib: Some(512),
                ..Default::default()
            }
        );
        assert_eq!(
            parse_patch(b"{}").unwrap_err().to_string(),
            "Empty PATCH request."
        );
        let err = parse_patch(br#"{"smt": "yes"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        let err = parse_patch(br#"{"vcpus": 2}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `vcpus`"), "{err}");
    }
}
