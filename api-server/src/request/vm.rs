//! `PATCH /vm`: pause and resume.

use serde::Deserialize;
use vmm::rpc::VmmAction;

use super::{from_json, RequestError};

/// The states a client can ask for.
#[derive(Debug, Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: VmState,
}

/// Parses `PATCH /vm`.
pub(super) fn parse_patch(body: &[u8]) -> Result<VmmAction, RequestError> {
    let body: VmBody = from_json(body)?;
    Ok(match body.state {
        VmState::Paused => VmmAction::Pause,
        VmState::Resumed => VmmAction::Resume,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_and_resumes() {
        assert_eq!(
            parse_patch(br#"{"state": "Paused"}"#).unwrap(),
            VmmAction::Pause
        );
        assert_eq!(
            parse_patch(br#"{"state": "Resumed"}"#).unwrap(),
            VmmAction::Resume
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"state": "Running"}"#, "unknown variant `Running`"),
            (r#"{"state": true}"#, "expected value"),
            (r#"{"invalid": "Paused"}"#, "unknown field `invalid`"),
            (r#"{}"#, "missing field `state`"),
            (r#"{"state": "Paused""#, "EOF while parsing"),
        ] {
            let err = parse_patch(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
