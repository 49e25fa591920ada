//! `PUT /boot-source`: the kernel, initrd and command line.

use vmm::config::BootSourceConfig;
use vmm::rpc::VmmAction;

use super::{from_json, RequestError};

/// Parses `PUT /boot-source`.
pub(super) fn parse_put(body: &[u8]) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::PutBootSource(from_json::<BootSourceConfig>(
        body,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_boot_source() {
        let body = br#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0",
                        "initrd_path": "/initrd"}"#;
        let VmmAction::PutBootSource(cfg) = parse_put(body).unwrap() else {
            panic!("not a boot source");
        };
        assert_eq!(cfg.kernel_image_path, std::path::Path::new("/vmlinux"));
        assert_eq!(cfg.boot_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(
            cfg.initrd_path.as_deref(),
            Some(std::path::Path::new("/initrd"))
        );
        assert!(parse_put(br#"{"kernel_image_path": "/k"}"#).is_ok());
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"boot_args": "x"}"#, "missing field `kernel_image_path`"),
            (r#"{"kernel_image_path": 7}"#, "invalid type: integer `7`"),
            (
                r#"{"kernel_image_path": "/k", "kernel": "/k"}"#,
                "unknown field `kernel`",
            ),
            (r#"{"kernel_image_path": "/k",}"#, "trailing comma"),
            (r#"[]"#, "invalid type: sequence"),
        ] {
            let err = parse_put(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
