//! `cpu-config`: a custom CPU template, written inline or as the path of a JSON file that
//! holds one, as Firecracker takes it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cpu_template::CustomCpuTemplate;

/// Errors in `cpu-config`.
#[derive(Debug, thiserror::Error)]
pub enum CpuConfigError {
    /// The template file could not be read.
    #[error("Failed to read the CPU template file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The template file does not hold a template.
    #[error("The CPU template file {path} is not a CPU template: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The section as written: a path is tried first, as in Firecracker (the name is its enum's,
/// which serde's error for a value that is neither names).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum CustomCpuTemplateOrPath {
    Path(PathBuf),
    Template(CustomCpuTemplate),
}

impl CustomCpuTemplateOrPath {
    /// The template, read from its file when the section names one.
    pub(super) fn load(self) -> Result<CustomCpuTemplate, CpuConfigError> {
        match self {
            Self::Template(template) => Ok(template),
            Self::Path(path) => read_template(&path),
        }
    }
}

fn read_template(path: &Path) -> Result<CustomCpuTemplate, CpuConfigError> {
    let file_error = |source| CpuConfigError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut json = String::new();
    devices::host_file::open_data_file(path, std::fs::OpenOptions::new().read(true))
        .and_then(|mut file| file.read_to_string(&mut json))
        .map_err(file_error)?;
    serde_json::from_str(&json).map_err(|source| CpuConfigError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(json: &str) -> Result<CustomCpuTemplate, String> {
        serde_json::from_str::<CustomCpuTemplateOrPath>(json)
            .map_err(|e| e.to_string())?
            .load()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn takes_a_template_inline_or_from_a_file() {
        let inline = r#"{"kvm_capabilities": ["!1"]}"#;
        assert_eq!(section(inline).unwrap().kvm_capabilities.len(), 1);
        let path = std::env::temp_dir().join(format!("kiln-cpu-config-{}", std::process::id()));
        std::fs::write(&path, inline).unwrap();
        let named = section(&format!("\"{}\"", path.display())).unwrap();
        assert_eq!(named, section(inline).unwrap());
        std::fs::write(&path, "{\"cpuid\": 1}").unwrap();
        let err = section(&format!("\"{}\"", path.display())).unwrap_err();
        assert!(
            err.contains("is not a CPU template: unknown field `cpuid`"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
        let err = section(&format!("\"{}\"", path.display())).unwrap_err();
        assert!(
            err.starts_with("Failed to read the CPU template file"),
            "{err}"
        );
    }

    #[test]
    fn a_value_that_is_neither_is_refused() {
        let err = section(r#"{"cpuid_modifiers": 1}"#).unwrap_err();
        assert!(
            err.contains("data did not match any variant of untagged enum CustomCpuTemplateOrPath"),
            "{err}"
        );
        assert!(section("/dev/null").is_err());
        let err = section("\"/dev/null\"").unwrap_err();
        assert!(err.contains("character device"), "{err}");
    }
}
