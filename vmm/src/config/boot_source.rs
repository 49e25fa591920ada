//! `boot-source`: the guest kernel, its optional initrd, and its command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Firecracker's command line when the config gives none.
pub const DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux \
                                     i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// Errors in `boot-source`.
#[derive(Debug, thiserror::Error)]
pub enum BootSourceError {
    /// A file the section names cannot be opened.
    #[error("{field} '{path}' cannot be opened: {source}")]
    File {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The `boot-source` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// An ELF vmlinux or a bzImage.
    pub kernel_image_path: PathBuf,
    /// An initrd or initramfs image. Written as `null` when absent, as Firecracker does.
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    /// The kernel command line; Firecracker's default when absent.
    #[serde(default)]
    pub boot_args: Option<String>,
}

fn check_readable(field: &'static str, path: &Path) -> Result<(), BootSourceError> {
    devices::host_file::open_data_file(path, std::fs::OpenOptions::new().read(true))
        .map(drop)
        .map_err(|source| BootSourceError::File {
            field,
            path: path.to_owned(),
            source,
        })
}

impl BootSourceConfig {
    /// Checks that the files exist and can be read.
    pub fn validate(&self) -> Result<(), BootSourceError> {
        check_readable("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_readable("initrd_path", initrd)?;
        }
        Ok(())
    }

    /// The command line the guest gets before devices add to it.
    pub fn boot_args(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}
