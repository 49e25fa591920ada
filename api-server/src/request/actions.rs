//! `PUT /actions`: InstanceStart, SendCtrlAltDel and FlushMetrics.

use serde::Deserialize;
use vmm::rpc::VmmAction;

use super::{from_json, RequestError};

/// The actions, spelled as in the body's `action_type`.
#[derive(Debug, Deserialize)]
enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

/// Parses `PUT /actions`.
pub(super) fn parse_put(body: &[u8]) -> Result<VmmAction, RequestError> {
    let body: ActionBody = from_json(body)?;
    Ok(match body.action_type {
        ActionType::FlushMetrics => VmmAction::FlushMetrics,
        ActionType::InstanceStart => VmmAction::InstanceStart,
        ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_action() {
        for (name, action) in [
            ("InstanceStart", VmmAction::InstanceStart),
            ("SendCtrlAltDel", VmmAction::SendCtrlAltDel),
            ("FlushMetrics", VmmAction::FlushMetrics),
        ] {
            let body = format!(r#"{{"action_type": "{name}"}}"#);
            assert_eq!(parse_put(body.as_bytes()).unwrap(), action);
        }
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"action_type": "Reboot"}"#, "unknown variant `Reboot`"),
            (r#"{"action_type": 1}"#, "expected value"),
            (r#"{}"#, "missing field `action_type`"),
            (
                r#"{"action_type": "InstanceStart", "payload": "x"}"#,
                "unknown field `payload`",
            ),
            ("InstanceStart", "expected value"),
        ] {
            let err = parse_put(body.as_bytes()).unwrap_err().to_string();
            assert!(
                err.starts_with("An error occurred when deserializing the json body of a request:"),
                "{err}"
            );
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
