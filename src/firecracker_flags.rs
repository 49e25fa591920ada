//! Firecracker's flags that ask for what Kiln does not have (MMDS, PCIe), refused
//! with one line that names the feature, and the `--version` line, which is Firecracker's
//! (naming Kiln too) when kiln is installed as `firecracker`, the way SDKs find and check it.

use std::path::Path;

use crate::Cli;

/// The program name under which `--version` answers as Firecracker.
const FIRECRACKER_NAME: &str = "firecracker";

/// Why the command line cannot be honoured: a Firecracker feature Kiln does not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsupportedFlag {
    /// `--metadata` fills the MMDS.
    #[error("--metadata: the MMDS is not supported by Kiln yet.")]
    Metadata,
    /// `--enable-pci`.
    #[error("--enable-pci: PCIe is not supported by Kiln; its devices are virtio-mmio.")]
    EnablePci,
}

/// Refuses the first flag that asks for a feature Kiln does not have.
pub fn check_supported(cli: &Cli) -> Result<(), UnsupportedFlag> {
    if cli.metadata.is_some() {
        return Err(UnsupportedFlag::Metadata);
    }
    if cli.enable_pci {
        return Err(UnsupportedFlag::EnablePci);
    }
    Ok(())
}

/// The `--version` output for a program run as `argv0`: Firecracker's first line, naming
/// Kiln, when its file name is `firecracker`; Kiln's own line otherwise.
pub fn version_line(argv0: Option<&str>) -> String {
    let kiln = env!("CARGO_PKG_VERSION");
    let name = argv0.and_then(|a| Path::new(a).file_name()?.to_str());
    if name == Some(FIRECRACKER_NAME) {
        format!(
            "Firecracker v{} (Kiln v{kiln}, Firecracker-compatible)",
            api_server::FIRECRACKER_API_VERSION
        )
    } else {
        format!("kiln {kiln}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_firecrackers_only_under_its_name() {
        let fc = version_line(Some("/usr/local/bin/firecracker"));
        assert!(fc.starts_with("Firecracker v1.16.1 "), "{fc}");
        assert!(fc.contains("Kiln v"), "{fc}");
        assert_eq!(version_line(Some("firecracker")), fc);
        let own = format!("kiln {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(version_line(Some("/usr/bin/kiln")), own);
        assert_eq!(version_line(Some("firecracker-v1")), own);
        assert_eq!(version_line(None), own);
    }
}
