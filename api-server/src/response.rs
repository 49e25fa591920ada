//! Responses: the one place that decides status codes and bodies, for an action's result, a
//! refused request, or a VMM that cannot be reached.
//!
//! | Outcome                          | Status | Body                                      |
//! |----------------------------------|--------|-------------------------------------------|
//! | `Ok(Empty)`                      | 204    | none                                      |
//! | `Ok(InstanceInfo)`, `Ok(Json)`   | 200    | the JSON                                  |
//! | `Ok(Version(v))`                 | 200    | `{"firecracker_version": "1.16.1", "kiln_version": v}` |
//! | `Ok(PrometheusText)`             | 200    | the text, `text/plain`                    |
//! | `Err(ActionError)`, parse faults | 400    | `{"fault_message": ...}`                  |
//! | the VMM is gone                  | 500    | `{"fault_message": ...}`                  |

use dbs_uhttp::{Body, MediaType, Response, StatusCode, Version};
use vmm::rpc::{ActionResult, ChannelError, VmmData};

/// The Firecracker API version Kiln implements, `GET /version`'s `firecracker_version`.
pub use vmm::rpc::FIRECRACKER_VERSION as FIRECRACKER_API_VERSION;

/// The `Server` header of every response.
const SERVER: &str = "Kiln API";

fn response(version: Version, status: StatusCode) -> Response {
    let mut response = Response::new(version, status);
    response.set_server(SERVER);
    response
}

fn json(version: Version, status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = response(version, status);
    response.set_content_type(MediaType::ApplicationJson);
    response.set_body(Body::new(value.to_string()));
    response
}

/// A fault: `{"fault_message": message}` with `status`.
pub(crate) fn fault(version: Version, status: StatusCode, message: &str) -> Response {
    json(
        version,
        status,
        &serde_json::json!({ "fault_message": message }),
    )
}

/// Maps what the VMM answered (or why it could not) to the response. `version` is the
/// request's, so that an HTTP/1.0 client gets an HTTP/1.0 status line.
pub(crate) fn from_outcome(
    version: Version,
    outcome: Result<ActionResult, ChannelError>,
) -> Response {
    let data = match outcome {
        Ok(Ok(data)) => data,
        Ok(Err(err)) => return fault(version, StatusCode::BadRequest, &err.to_string()),
        Err(err) => return fault(version, StatusCode::InternalServerError, &err.to_string()),
    };
    let value = match data {
        VmmData::Empty => return response(version, StatusCode::NoContent),
        VmmData::PrometheusText(text) => {
            // micro-http can only write `text/plain` without parameters; Prometheus reads
            // that as its text format 0.0.4 all the same.
            let mut response = response(version, StatusCode::OK);
            response.set_content_type(MediaType::PlainText);
            response.set_body(Body::new(text));
            return response;
        }
        VmmData::Version(kiln) => serde_json::json!({
            "firecracker_version": FIRECRACKER_API_VERSION,
            "kiln_version": kiln,
        }),
        VmmData::Json(value) => value,
        VmmData::InstanceInfo(info) => match serde_json::to_value(info) {
            Ok(value) => value,
            Err(err) => {
                let message = format!("The instance information cannot be serialised: {err}");
                return fault(version, StatusCode::InternalServerError, &message);
            }
        },
    };
    json(version, StatusCode::OK, &value)
}

#[cfg(test)]
mod tests {
    use vmm::rpc::{ActionError, InstanceInfo, InstanceState};

    use super::*;

    /// The response as the client reads it.
    fn wire(response: &Response) -> String {
        let mut out = Vec::new();
        response.write_all(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn body_json(response: &Response) -> serde_json::Value {
        serde_json::from_slice(response.body().unwrap().raw()).unwrap()
    }

    #[test]
    fn empty_is_204_without_a_body() {
        let r = from_outcome(Version::Http11, Ok(Ok(VmmData::Empty)));
        assert_eq!(r.status(), StatusCode::NoContent);
        assert!(r.body().is_none());
        assert!(wire(&r).starts_with("HTTP/1.1 204 \r\n"), "{}", wire(&r));
    }

    #[test]
    fn data_is_200_json() {
        let info = InstanceInfo {
            id: "vm0".into(),
            state: InstanceState::Running,
            vmm_version: "0.1.0".into(),
            app_name: "Kiln".into(),
            firecracker_version: "1.16.1".into(),
        };
        let r = from_outcome(Version::Http11, Ok(Ok(VmmData::InstanceInfo(info))));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.content_type(), MediaType::ApplicationJson);
        assert_eq!(body_json(&r)["state"], "Running");
        let value = serde_json::json!({"vcpu_count": 2});
        let r = from_outcome(Version::Http11, Ok(Ok(VmmData::Json(value.clone()))));
        assert_eq!(body_json(&r), value);
        assert!(wire(&r).contains("Content-Type: application/json\r\n"));
    }

    #[test]
    fn version_reports_the_firecracker_api_and_kiln() {
        let r = from_outcome(Version::Http11, Ok(Ok(VmmData::Version("0.1.0".into()))));
        assert_eq!(
            body_json(&r),
            serde_json::json!({"firecracker_version": "1.16.1", "kiln_version": "0.1.0"})
        );
    }

    #[test]
    fn prometheus_is_plain_text() {
        let text = "# TYPE kiln_x counter\nkiln_x 1\n";
        let r = from_outcome(
            Version::Http11,
            Ok(Ok(VmmData::PrometheusText(text.into()))),
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.content_type(), MediaType::PlainText);
        assert_eq!(r.body().unwrap().raw(), text.as_bytes());
    }

    #[test]
    fn errors_are_faults() {
        let r = from_outcome(
            Version::Http11,
            Ok(Err(ActionError::OperationNotSupportedPostBoot)),
        );
        assert_eq!(r.status(), StatusCode::BadRequest);
        assert_eq!(
            body_json(&r),
            serde_json::json!({
                "fault_message": "The requested operation is not supported after starting the microVM."
            })
        );
        let r = from_outcome(Version::Http10, Err(ChannelError::VmmGone));
        assert_eq!(r.status(), StatusCode::InternalServerError);
        assert_eq!(
            body_json(&r)["fault_message"],
            "The VMM is no longer running."
        );
        assert!(wire(&r).starts_with("HTTP/1.0 500 \r\n"));
    }
}
