//! The VM's configuration while it is being built through the API: what each `PUT` and
//! `PATCH` changes before boot, with the same checks as a config file, and the complete
//! [`VmConfig`] that `InstanceStart` boots.
//!
//! Every change is validated as a whole before it is kept, so a rejected request leaves the
//! configuration exactly as it was.

use crate::config::{
    validate_drives, validate_interfaces, BootSourceConfig, DriveConfig, MachineConfig,
    NetworkInterfaceConfig, SerialConfig, VmConfig, UNIMPLEMENTED_SECTIONS,
};
use crate::cpu_template::{CpuTemplateType, CustomCpuTemplate};
use crate::rpc::{ActionError, MachineConfigUpdate, StartMicrovmError};

/// The configuration under construction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmResources {
    boot_source: Option<BootSourceConfig>,
    machine: MachineConfig,
    drives: Vec<DriveConfig>,
    network_interfaces: Vec<NetworkInterfaceConfig>,
    serial: Option<SerialConfig>,
}

impl From<VmConfig> for VmResources {
    fn from(config: VmConfig) -> Self {
        Self {
            boot_source: Some(config.boot_source),
            machine: config.machine,
            drives: config.drives,
            network_interfaces: config.network_interfaces,
            serial: config.serial,
        }
    }
}

/// Replaces the entry with the same key, or appends it.
fn upsert<T>(items: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match items.iter_mut().find(|i| same(i, &item)) {
        Some(slot) => *slot = item,
        None => items.push(item),
    }
}

impl VmResources {
    /// `PUT /boot-source`.
    pub fn set_boot_source(&mut self, boot_source: BootSourceConfig) -> Result<(), ActionError> {
        boot_source.validate()?;
        self.boot_source = Some(boot_source);
        Ok(())
    }

    /// `PUT /machine-config`: every field is replaced but the CPU template, which is kept
    /// when the body names none (even a custom one), as in Firecracker.
    pub fn set_machine_config(&mut self, mut machine: MachineConfig) -> Result<(), ActionError> {
        machine.validate()?;
        machine.cpu_template =
            CpuTemplateType::update(self.machine.cpu_template.clone(), machine.cpu_template);
        self.machine = machine;
        Ok(())
    }

    /// `PUT /cpu-config`: the custom template replaces the template in place, static or custom.
    pub fn set_cpu_config(&mut self, template: CustomCpuTemplate) {
        self.machine.cpu_template = Some(CpuTemplateType::Custom(template));
    }

    /// `PATCH /machine-config`.
    pub fn update_machine_config(
        &mut self,
        update: MachineConfigUpdate,
    ) -> Result<(), ActionError> {
        let mut machine = self.machine.clone();
        if let Some(v) = update.vcpu_count {
            machine.vcpu_count = v;
        }
        if let Some(v) = update.mem_size_mib {
            machine.mem_size_mib = v;
        }
        if let Some(v) = update.smt {
            machine.smt = v;
        }
        if let Some(v) = update.track_dirty_pages {
            machine.track_dirty_pages = v;
        }
        if let Some(v) = update.cpu_template {
            machine.cpu_template = Some(CpuTemplateType::Static(v));
        }
        if let Some(v) = update.huge_pages {
            machine.huge_pages = v;
        }
        self.set_machine_config(machine)
    }

    /// `PUT /drives/{id}`: adds the drive, or replaces the one with the same ID.
    pub fn put_drive(&mut self, drive: DriveConfig) -> Result<(), ActionError> {
        let mut drives = self.drives.clone();
        upsert(&mut drives, drive, |a, b| a.drive_id == b.drive_id);
        validate_drives(&drives)?;
        self.drives = drives;
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: adds the interface, or replaces the one with the same ID.
    pub fn put_network_interface(
        &mut self,
        iface: NetworkInterfaceConfig,
    ) -> Result<(), ActionError> {
        let mut ifaces = self.network_interfaces.clone();
        upsert(&mut ifaces, iface, |a, b| a.iface_id == b.iface_id);
        validate_interfaces(&ifaces)?;
        self.network_interfaces = ifaces;
        Ok(())
    }

    /// The machine configuration.
    pub fn machine(&self) -> &MachineConfig {
        &self.machine
    }

    /// The complete configuration to boot; the boot source is required.
    pub fn vm_config(&self) -> Result<VmConfig, StartMicrovmError> {
        let boot_source = self
            .boot_source
            .clone()
            .ok_or(StartMicrovmError::MissingBootSource)?;
        Ok(VmConfig {
            boot_source,
            machine: self.machine.clone(),
            serial: self.serial.clone(),
            drives: self.drives.clone(),
            network_interfaces: self.network_interfaces.clone(),
            // Applied when set, through the API or from the file; not part of the VM.
            logger: None,
            metrics: None,
        })
    }

    /// The configuration in the config-file format, for `GET /vm/config`: every section
    /// Firecracker 1.16 writes, in its shapes, so that Firecracker loads the result too.
    /// Sections not configured are empty; `logger`, `metrics` and `cpu-config` are `null`, as
    /// Firecracker writes them whatever was set (a custom CPU template is not exported; a
    /// static one is, in `machine-config`). `serial` (not in Firecracker's file) only when set.
    pub fn to_json(&self) -> serde_json::Value {
        // Firecracker writes an unset boot source with an empty kernel path.
        let boot_source = self.boot_source.clone().unwrap_or(BootSourceConfig {
            kernel_image_path: Default::default(),
            initrd_path: None,
            boot_args: None,
        });
        let mut sections = serde_json::Map::new();
        sections.insert("boot-source".into(), serde_json::json!(boot_source));
        sections.insert("machine-config".into(), serde_json::json!(self.machine));
        sections.insert("drives".into(), serde_json::json!(self.drives));
        sections.insert(
            "network-interfaces".into(),
            serde_json::json!(self.network_interfaces),
        );
        sections.insert("logger".into(), serde_json::Value::Null);
        sections.insert("metrics".into(), serde_json::Value::Null);
        sections.insert("cpu-config".into(), serde_json::Value::Null);
        for (name, empty) in UNIMPLEMENTED_SECTIONS {
            sections.insert(name.into(), empty.json());
        }
        if let Some(serial) = &self.serial {
            sections.insert("serial".into(), serde_json::json!(serial));
        }
        serde_json::Value::Object(sections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheType, DriveError, IoEngine, MachineConfigError};

    fn file(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("kiln-res-{}-{name}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        path
    }

    fn drive(id: &str, root: bool) -> DriveConfig {
        DriveConfig {
            drive_id: id.into(),
            path_on_host: Some(file(id)),
            is_root_device: root,
            partuuid: None,
            is_read_only: false,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            rate_limiter: None,
            format: None,
            socket: None,
        }
    }

    #[test]
    fn start_needs_a_boot_source() {
        let mut r = VmResources::default();
        assert!(matches!(
            r.vm_config(),
            Err(StartMicrovmError::MissingBootSource)
        ));
        let kernel = file("kernel");
        r.set_boot_source(BootSourceConfig {
            kernel_image_path: kernel.clone(),
            initrd_path: None,
            boot_args: None,
        })
        .unwrap();
        assert_eq!(r.vm_config().unwrap().boot_source.kernel_image_path, kernel);
        let missing = BootSourceConfig {
            kernel_image_path: "/nonexistent".into(),
            initrd_path: None,
            boot_args: None,
        };
        assert!(r
            .set_boot_source(missing)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent"));
        assert_eq!(r.vm_config().unwrap().boot_source.kernel_image_path, kernel);
    }

    #[test]
    fn drives_are_upserted_and_a_bad_one_changes_nothing() {
        let mut r = VmResources::default();
        r.put_drive(drive("root", true)).unwrap();
        r.put_drive(drive("data", false)).unwrap();
        let mut ro = drive("data", false);
        ro.is_read_only = true;
        r.put_drive(ro).unwrap();
        assert_eq!(r.drives.len(), 2);
        assert!(r.drives[1].is_read_only);
        let before = r.clone();
        let err = r.put_drive(drive("other-root", true)).unwrap_err();
        assert!(
            matches!(
                err,
                ActionError::DriveConfig(DriveError::TwoRootDevices(..))
            ),
            "{err}"
        );
        assert_eq!(r, before);
    }

    #[test]
    fn patching_machine_config_keeps_unset_fields() {
        let mut r = VmResources::default();
        r.update_machine_config(MachineConfigUpdate {
            vcpu_count: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((r.machine.vcpu_count, r.machine.mem_size_mib), (2, 128));
        let err = r
            .update_machine_config(MachineConfigUpdate {
                mem_size_mib: Some(0),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(
            err,
            ActionError::MachineConfig(MachineConfigError::MemSizeZero)
        ));
        assert_eq!(r.machine.mem_size_mib, 128);
    }

    #[test]
    fn the_cpu_template_set_last_wins_as_in_firecracker() {
        use crate::cpu_template::StaticCpuTemplate;
        let static_template = |t| Some(CpuTemplateType::Static(t));
        let custom = Some(CpuTemplateType::Custom(CustomCpuTemplate::default()));
        let mut r = VmResources::default();
        r.set_cpu_config(CustomCpuTemplate::default());
        assert_eq!(r.machine.cpu_template, custom);
        // A PUT without a template keeps the custom one; `None` removes it.
        let mut machine = MachineConfig {
            vcpu_count: 2,
            ..Default::default()
        };
        r.set_machine_config(machine.clone()).unwrap();
        assert_eq!(
            (r.machine.vcpu_count, &r.machine.cpu_template),
            (2, &custom)
        );
        machine.cpu_template = static_template(StaticCpuTemplate::None);
        r.set_machine_config(machine.clone()).unwrap();
        assert_eq!(r.machine.cpu_template, None);
        let patch = |t| MachineConfigUpdate {
            cpu_template: Some(t),
            ..Default::default()
        };
        r.update_machine_config(patch(StaticCpuTemplate::C3))
            .unwrap();
        assert_eq!(
            r.machine.cpu_template,
            static_template(StaticCpuTemplate::C3)
        );
        r.update_machine_config(MachineConfigUpdate {
            smt: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            r.machine.cpu_template,
            static_template(StaticCpuTemplate::C3)
        );
        r.set_cpu_config(CustomCpuTemplate::default());
        assert_eq!(r.machine.cpu_template, custom);
        r.update_machine_config(patch(StaticCpuTemplate::T2A))
            .unwrap();
        assert_eq!(
            r.machine.cpu_template,
            static_template(StaticCpuTemplate::T2A)
        );
        // Exported as Firecracker exports it: the static name, and cpu-config null.
        let json = r.to_json();
        assert_eq!(json["machine-config"]["cpu_template"], "T2A");
        assert_eq!(json["cpu-config"], serde_json::Value::Null);
        r.update_machine_config(patch(StaticCpuTemplate::None))
            .unwrap();
        assert_eq!(r.machine.cpu_template, None);
    }

    #[test]
    fn shows_the_configuration_in_the_file_format() {
        let mut r = VmResources::default();
        r.put_drive(drive("root", true)).unwrap();
        let json = r.to_json();
        assert_eq!(json["machine-config"]["vcpu_count"], 1);
        assert_eq!(json["drives"][0]["drive_id"], "root");
        assert_eq!(json["drives"][0]["partuuid"], serde_json::Value::Null);
        assert_eq!(
            json["boot-source"],
            serde_json::json!({"kernel_image_path": "", "initrd_path": null, "boot_args": null})
        );
    }

    #[test]
    fn a_complete_configuration_round_trips_through_the_file_format() {
        let mut r = VmResources::default();
        r.set_boot_source(BootSourceConfig {
            kernel_image_path: file("kernel2"),
            initrd_path: None,
            boot_args: Some("console=ttyS0".into()),
        })
        .unwrap();
        r.put_drive(drive("root2", true)).unwrap();
        let config = r.vm_config().unwrap();
        let again = VmConfig::from_json(&r.to_json().to_string()).unwrap();
        assert_eq!(again, config);
    }
}
