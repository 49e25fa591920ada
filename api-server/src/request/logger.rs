//! `PUT /logger`: where and how much Kiln logs.

use vmm::rpc::{LoggerSettings, VmmAction};

use super::{from_json, RequestError};

/// Parses `PUT /logger`.
pub(super) fn parse_put(body: &[u8]) -> Result<VmmAction, RequestError> {
    Ok(VmmAction::PutLogger(from_json::<LoggerSettings>(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_settings() {
        let body = br#"{"log_path": "/tmp/log", "level": "Debug", "show_level": true,
                        "show_log_origin": false, "module": "vmm"}"#;
        let VmmAction::PutLogger(settings) = parse_put(body).unwrap() else {
            panic!("not logger settings");
        };
        assert_eq!(settings.level.as_deref(), Some("Debug"));
        assert_eq!(settings.show_level, Some(true));
        assert!(parse_put(b"{}").is_ok());
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"level": 3}"#, "invalid type: integer `3`"),
            (r#"{"path": "/x"}"#, "unknown field `path`"),
            (r#"{"show_level": "yes"}"#, "invalid type: string"),
        ] {
            let err = parse_put(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
