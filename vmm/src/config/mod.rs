//! The VM configuration in Firecracker's format: the JSON a `--config-file` holds, and the
//! typed, validated structures the builder consumes.
//!
//! Every section of Firecracker's file is recognised, so a Firecracker config parses here. The
//! sections that Kiln does not implement yet are refused with an error that names them, rather
//! than silently ignored.

mod boot_source;
mod cpu_config;
mod drive;
mod machine;
mod net;
mod observability;
mod serial;

pub use boot_source::BootSourceConfig;
pub use boot_source::BootSourceError;
pub use drive::DriveError;
pub use drive::{
    guest_order, root_cmdline, validate_drives, CacheType, DiskFormat, DriveConfig, IoEngine,
};
pub use machine::MachineConfigError;
pub use machine::{HugePages, MachineConfig, MAX_VCPUS};
pub use net::NetError;
pub use net::{validate_interfaces, MacAddr, NetworkInterfaceConfig};
pub use observability::{LoggerSettings, MetricsSettings};
pub use serial::SerialConfig;

use serde::Deserialize;

use crate::cpu_template::CpuTemplateType;

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid JSON, or does not match the schema.
    #[error("Invalid configuration file: {0}")]
    Json(#[from] serde_json::Error),
    /// A section that Kiln does not implement yet is present.
    #[error("The '{0}' section is not supported yet.")]
    Unsupported(&'static str),
    /// The boot source is invalid.
    #[error("Invalid boot-source: {0}")]
    BootSource(#[from] boot_source::BootSourceError),
    /// The machine configuration is invalid.
    #[error("Invalid machine-config: {0}")]
    Machine(#[from] machine::MachineConfigError),
    /// The custom CPU template cannot be read.
    #[error("Invalid cpu-config: {0}")]
    CpuConfig(#[from] cpu_config::CpuConfigError),
    /// A drive, or the set of drives, is invalid.
    #[error("Invalid drives: {0}")]
    Drive(#[from] drive::DriveError),
    /// A network interface, or the set of them, is invalid.
    #[error("Invalid network-interfaces: {0}")]
    Net(#[from] net::NetError),
}

/// The whole VM configuration, as in a Firecracker config file.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// The kernel, initrd and command line.
    pub boot_source: BootSourceConfig,
    /// vCPUs, memory and the CPU template (static, or the `cpu-config` section's custom one).
    pub machine: MachineConfig,
    /// Where the guest console goes; stdout when absent.
    pub serial: Option<SerialConfig>,
    /// Block devices, in configuration order.
    pub drives: Vec<DriveConfig>,
    /// Network interfaces, in configuration order.
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// The log's destination and format, applied before the VM is built.
    pub logger: Option<LoggerSettings>,
    /// The metrics' destination, set before the VM is built.
    pub metrics: Option<MetricsSettings>,
}

/// The file as written. Sections Kiln does not implement are kept as raw JSON so that an empty
/// or null section (which Firecracker's own tooling writes) is accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "boot-source")]
    boot_source: BootSourceConfig,
    #[serde(rename = "machine-config", default)]
    machine: Option<MachineConfig>,
    #[serde(default)]
    drives: Vec<DriveConfig>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(rename = "cpu-config", default)]
    cpu_config: Option<cpu_config::CustomCpuTemplateOrPath>,
    #[serde(default)]
    balloon: serde_json::Value,
    #[serde(default)]
    vsock: serde_json::Value,
    #[serde(default)]
    logger: Option<LoggerSettings>,
    #[serde(default)]
    metrics: Option<MetricsSettings>,
    #[serde(rename = "mmds-config", default)]
    mmds_config: serde_json::Value,
    #[serde(default)]
    entropy: serde_json::Value,
    #[serde(rename = "memory-hotplug", default)]
    memory_hotplug: serde_json::Value,
    #[serde(default)]
    pmem: serde_json::Value,
    #[serde(default)]
    serial: Option<SerialConfig>,
}

/// How Firecracker writes a section that is not configured: `null`, or `[]` for a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptySection {
    /// `null`.
    Null,
    /// `[]`.
    List,
}

impl EmptySection {
    /// The section's JSON when empty.
    pub fn json(self) -> serde_json::Value {
        match self {
            Self::Null => serde_json::Value::Null,
            Self::List => serde_json::Value::Array(Vec::new()),
        }
    }
}

/// The sections of Firecracker 1.16's config file that Kiln does not implement yet, in the
/// order `VmConfig::from_json` checks them, with the value Firecracker writes when they are
/// empty. `GET /vm/config` writes each so that its output has Firecracker's shape.
pub const UNIMPLEMENTED_SECTIONS: [(&str, EmptySection); 6] = [
    ("balloon", EmptySection::Null),
    ("mmds-config", EmptySection::Null),
    ("vsock", EmptySection::Null),
    ("entropy", EmptySection::Null),
    ("pmem", EmptySection::List),
    ("memory-hotplug", EmptySection::Null),
];

/// A section is absent when it is missing, null, or an empty list.
fn is_absent(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

impl VmConfig {
    /// Parses and validates the JSON of a Firecracker config file.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        Self::parse(json, true)
    }

    /// Parses and validates a snapshot's configuration (as `GET /vm/config` wrote it). The boot
    /// source is kept for `GET /vm/config` but not checked: a restored VM does not boot, and
    /// its kernel need not be on this host.
    pub fn from_snapshot_json(json: &str) -> Result<Self, ConfigError> {
        Self::parse(json, false)
    }

    fn parse(json: &str, boots: bool) -> Result<Self, ConfigError> {
        let file: ConfigFile = serde_json::from_str(json)?;
        let unimplemented = [
            &file.balloon,
            &file.mmds_config,
            &file.vsock,
            &file.entropy,
            &file.pmem,
            &file.memory_hotplug,
        ];
        let present = UNIMPLEMENTED_SECTIONS
            .iter()
            .zip(unimplemented)
            .find(|(_, value)| !is_absent(value));
        if let Some(((name, _), _)) = present {
            return Err(ConfigError::Unsupported(name));
        }
        let mut machine = file.machine.unwrap_or_default();
        machine.validate()?;
        // As in Firecracker: machine-config first, then cpu-config, whose template wins.
        machine.cpu_template = CpuTemplateType::update(None, machine.cpu_template);
        if let Some(section) = file.cpu_config {
            machine.cpu_template = Some(CpuTemplateType::Custom(section.load()?));
        }
        if boots {
            file.boot_source.validate()?;
        }
        drive::validate_drives(&file.drives)?;
        net::validate_interfaces(&file.network_interfaces)?;
        Ok(Self {
            boot_source: file.boot_source,
            machine,
            serial: file.serial,
            drives: file.drives,
            network_interfaces: file.network_interfaces,
            logger: file.logger,
            metrics: file.metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> tempfile_path::TempKernel {
        tempfile_path::TempKernel::new()
    }

    /// A real file to name as the kernel, removed on drop.
    mod tempfile_path {
        pub struct TempKernel(pub std::path::PathBuf);
        impl TempKernel {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "kiln-config-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&path, b"kernel").unwrap();
                Self(path)
            }
        }
        impl Drop for TempKernel {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn config(kernel: &std::path::Path, machine: &str) -> String {
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
                "machine-config": {machine}}}"#,
            kernel.display()
        )
    }

    #[test]
    fn parses_a_firecracker_config() {
        let k = kernel();
        let json = format!(
            r#"{{
              "boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k", "initrd_path": null}},
              "drives": [],
              "machine-config": {{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false, "huge_pages": "None"}},
              "cpu-config": null, "balloon": null, "network-interfaces": [], "vsock": null,
              "logger": null, "metrics": null, "mmds-config": null, "entropy": null
            }}"#,
            k.0.display()
        );
        let cfg = VmConfig::from_json(&json).unwrap();
        assert_eq!(cfg.machine.vcpu_count, 2);
        assert_eq!(cfg.machine.mem_size_mib, 1024);
        assert_eq!(
            cfg.boot_source.boot_args.as_deref(),
            Some("console=ttyS0 reboot=k")
        );
        assert_eq!(cfg.boot_source.kernel_image_path, k.0);
        assert_eq!(cfg.boot_source.initrd_path, None);
        assert_eq!(cfg.serial, None);
    }

    #[test]
    fn serial_output_can_go_to_a_file() {
        let k = kernel();
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "serial": {{"serial_out_path": "/tmp/console.log"}}}}"#,
            k.0.display()
        );
        let cfg = VmConfig::from_json(&json).unwrap();
        assert_eq!(
            cfg.serial.unwrap().serial_out_path,
            std::path::PathBuf::from("/tmp/console.log")
        );
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "serial": {{"path": "/x"}}}}"#,
            k.0.display()
        );
        assert!(error_of(&json).contains("unknown field `path`"));
    }

    #[test]
    fn logger_and_metrics_sections_take_what_the_api_takes() {
        let k = kernel();
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "logger": {{"log_path": "/tmp/kiln.log", "level": "Debug", "show_level": true}},
                "metrics": {{"metrics_path": "/tmp/kiln.metrics"}}}}"#,
            k.0.display()
        );
        let cfg = VmConfig::from_json(&json).unwrap();
        let logger = cfg.logger.unwrap();
        assert_eq!(logger.log_path.as_deref(), Some("/tmp/kiln.log".as_ref()));
        assert_eq!(logger.level.as_deref(), Some("Debug"));
        assert_eq!(logger.show_level, Some(true));
        assert_eq!(
            cfg.metrics.unwrap().metrics_path,
            std::path::PathBuf::from("/tmp/kiln.metrics")
        );
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "metrics": {{"path": "/x"}}}}"#,
            k.0.display()
        );
        assert!(error_of(&json).contains("unknown field `path`"));
    }

    #[test]
    fn machine_config_defaults_to_firecrackers() {
        let k = kernel();
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}}}"#,
            k.0.display()
        );
        let cfg = VmConfig::from_json(&json).unwrap();
        assert_eq!(cfg.machine, MachineConfig::default());
        assert_eq!(cfg.machine.vcpu_count, 1);
        assert_eq!(cfg.machine.mem_size_mib, 128);
    }

    fn error_of(json: &str) -> String {
        VmConfig::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn names_the_bad_field() {
        let k = kernel();
        let p = &k.0;
        let cases = [
            (
                r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
                "vcpu_count must be between 1 and 32",
            ),
            (
                r#"{"vcpu_count": 33, "mem_size_mib": 128}"#,
                "vcpu_count must be between 1 and 32",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
                "mem_size_mib must be greater than 0",
            ),
            (
                r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#,
                "vcpu_count must be 1 or even when smt is enabled",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}"#,
                "unknown field `cpus`",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#,
                "huge_pages",
            ),
            (
                r#"{"vcpu_count": "two", "mem_size_mib": 128}"#,
                "invalid type",
            ),
        ];
        for (machine, expected) in cases {
            let err = error_of(&config(p, machine));
            assert!(err.contains(expected), "{machine}: {err}");
        }
    }

    #[test]
    fn rejects_bad_files() {
        assert!(error_of("{").contains("Invalid configuration file"));
        assert!(error_of("{}").contains("missing field `boot-source`"));
        assert!(
            error_of(r#"{"boot-source": {"kernel_image_path": "/k"}, "extra": 1}"#)
                .contains("unknown field `extra`")
        );
        let missing = error_of(r#"{"boot-source": {"kernel_image_path": "/nonexistent/kernel"}}"#);
        assert!(missing.contains("kernel_image_path"), "{missing}");
        assert!(missing.contains("/nonexistent/kernel"), "{missing}");
    }

    #[test]
    fn drives_are_validated_as_a_set() {
        let k = kernel();
        let drive = |id: &str, root: bool| {
            format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {root}}}"#,
                k.0.display()
            )
        };
        let json = |drives: &[String]| {
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "drives": [{}]}}"#,
                k.0.display(),
                drives.join(",")
            )
        };
        let cfg = VmConfig::from_json(&json(&[drive("root", true), drive("data", false)])).unwrap();
        assert_eq!(cfg.drives.len(), 2);
        assert_eq!(
            error_of(&json(&[drive("a", true), drive("a", false)])),
            "Invalid drives: drive_id 'a' is used by more than one drive."
        );
        assert!(error_of(&json(&[r#"{"drive_id": "x"}"#.to_string()])).contains("missing field"));
    }

    #[test]
    fn every_unimplemented_section_is_accepted_empty_and_refused_by_name_otherwise() {
        let k = kernel();
        for (name, empty) in UNIMPLEMENTED_SECTIONS {
            let with = |value: &str| {
                format!(
                    r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "{name}": {value}}}"#,
                    k.0.display()
                )
            };
            VmConfig::from_json(&with(&empty.json().to_string())).unwrap();
            VmConfig::from_json(&with("null")).unwrap();
            let full = match empty {
                EmptySection::Null => r#"{"x": 1}"#,
                EmptySection::List => r#"[{"id": "p0"}]"#,
            };
            assert_eq!(
                error_of(&with(full)),
                format!("The '{name}' section is not supported yet.")
            );
        }
    }

    #[test]
    fn cpu_config_carries_a_custom_template_that_wins_over_machine_configs() {
        use crate::cpu_template::{CustomCpuTemplate, KvmCapability, StaticCpuTemplate};
        let k = kernel();
        let with = |machine: &str, cpu_config: &str| {
            let json = format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                    "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128{machine}}},
                    "cpu-config": {cpu_config}}}"#,
                k.0.display()
            );
            VmConfig::from_json(&json).map(|c| c.machine.cpu_template)
        };
        let custom = CustomCpuTemplate {
            kvm_capabilities: vec![KvmCapability::Remove(3)],
            ..Default::default()
        };
        let inline = r#"{"kvm_capabilities": ["!3"]}"#;
        assert_eq!(
            with(r#", "cpu_template": "T2""#, inline).unwrap(),
            Some(CpuTemplateType::Custom(custom))
        );
        assert_eq!(
            with(r#", "cpu_template": "T2A""#, "null").unwrap(),
            Some(CpuTemplateType::Static(StaticCpuTemplate::T2A))
        );
        assert_eq!(with(r#", "cpu_template": "None""#, "null").unwrap(), None);
        let err = with(
            "",
            r#"{"msr_modifiers": [{"addr": "16", "bitmap": "0b1"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("untagged enum CustomCpuTemplateOrPath"),
            "{err}"
        );
        let err = with("", r#""/nonexistent/template.json""#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "Invalid cpu-config: Failed to read the CPU template file /nonexistent"
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_unimplemented_sections_by_name() {
        let k = kernel();
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "vsock": {{"guest_cid": 3}}}}"#,
            k.0.display()
        );
        assert_eq!(error_of(&json), "The 'vsock' section is not supported yet.");
    }
}
