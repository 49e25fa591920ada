//! Parsing: a request's method, path and body into the [`VmmAction`] it asks for, or the 400
//! fault Firecracker answers. One file per resource, as in Firecracker; this module owns the
//! checks every route shares (body presence, the route table, resource IDs) and their messages.
//!
//! Nothing here touches the VMM: the VMM validates values (files, ranges, duplicates) when it
//! executes the action. Parsing only refuses what is not a well-formed request for a route.

mod actions;
mod boot_source;
mod cpu_config;
mod drive;
mod logger;
mod machine_config;
mod metrics;
mod net;
mod routes;
mod snapshot;
mod vm;

use dbs_uhttp::Method;
use serde::de::DeserializeOwned;
use vmm::rpc::VmmAction;

pub use routes::Route;

/// Why a request was refused before it reached the VMM. Every variant is answered with 400 and
/// the message as `fault_message`; the messages are Firecracker's.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A route with a resource ID was called without one.
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// A resource ID holds something other than `[A-Za-z0-9_-]`. This also refuses path
    /// traversal (`..`, `%2e%2e`) since no path component reaches the file system unchecked.
    #[error("API Resource IDs can only contain alphanumeric characters, underscores and hyphens.")]
    InvalidId,
    /// `PUT|PATCH /drives/{id}` with another `drive_id` in the body.
    #[error("The id from the path does not match the id from the body!")]
    DriveIdMismatch,
    /// `PUT|PATCH /network-interfaces/{id}` with another `iface_id` in the body.
    #[error("The id from the path [{path}] does not match the id from the body [{body}]!")]
    IfaceIdMismatch {
        /// The ID in the path.
        path: String,
        /// The ID in the body.
        body: String,
    },
    /// No route has this method and path.
    #[error("Invalid request method and/or path: {method} {path}.")]
    InvalidPathMethod {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
    },
    /// `PUT /snapshot` without `create` or `load`.
    #[error("Missing snapshot operation type.")]
    MissingSnapshotType,
    /// A GET request has a body.
    #[error("GET request cannot have a body.")]
    GetWithBody,
    /// A PUT or PATCH request has no body, or a PATCH body changes nothing.
    #[error("Empty {0} request.")]
    EmptyBody(&'static str),
    /// The body is not JSON, or does not fit the resource's schema (wrong types, unknown or
    /// missing fields, unknown enum values).
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(#[from] serde_json::Error),
    /// A well-formed field asks for a feature Kiln does not have yet.
    #[error("{0} is not supported yet.")]
    Unsupported(&'static str),
}

/// A request the API accepts: its action, and Firecracker's warning when the body used a
/// deprecated field, which the server logs, counts and answers with a `Deprecation: true`
/// header. The parser decides it, since the action no longer shows how the body spelled it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// What the VMM is asked to do.
    pub action: VmmAction,
    /// The deprecation warning, if the body used a deprecated field.
    pub deprecation: Option<&'static str>,
}

impl From<VmmAction> for Parsed {
    fn from(action: VmmAction) -> Self {
        Self {
            action,
            deprecation: None,
        }
    }
}

/// Parses one request. `body` is `None` when the request has none (no `Content-Length`, or 0).
pub fn parse(method: Method, path: &str, body: Option<&[u8]>) -> Result<Parsed, RequestError> {
    // Firecracker checks body presence before the path, so these win over an unknown path.
    match (method, body) {
        (Method::Get, Some(_)) => return Err(RequestError::GetWithBody),
        (Method::Put | Method::Patch, None) => {
            return Err(RequestError::EmptyBody(method.to_str()))
        }
        _ => {}
    }
    let Some((route, id)) = Route::find(method, path) else {
        if snapshot::lacks_operation(method, path) {
            return Err(RequestError::MissingSnapshotType);
        }
        return Err(RequestError::InvalidPathMethod {
            method: method.to_str(),
            path: path.to_string(),
        });
    };
    let body = body.unwrap_or_default();
    let id = || checked_id(id.unwrap_or_default());
    let action = match route {
        Route::GetInstanceInfo => VmmAction::GetInstanceInfo,
        Route::GetVersion => VmmAction::GetVersion,
        Route::GetVmConfig => VmmAction::GetVmConfig,
        Route::GetMachineConfig => VmmAction::GetMachineConfig,
        Route::PutCpuConfig => cpu_config::parse_put(body)?,
        Route::PutBootSource => boot_source::parse_put(body)?,
        Route::PutDrive => drive::parse_put(id()?, body)?,
        Route::PatchDrive => drive::parse_patch(id()?, body)?,
        Route::PutNetworkInterface => net::parse_put(id()?, body)?,
        Route::PatchNetworkInterface => net::parse_patch(id()?, body)?,
        Route::PutLogger => logger::parse_put(body)?,
        Route::PutMetrics => metrics::parse_put(body)?,
        Route::GetMetrics => VmmAction::GetMetrics,
        Route::PutActions => actions::parse_put(body)?,
        Route::PatchVm => vm::parse_patch(body)?,
        Route::PutSnapshotCreate => snapshot::parse_put_create(body)?,
        // The bodies with deprecated fields say so beside their action.
        Route::PutMachineConfig => return machine_config::parse_put(body),
        Route::PatchMachineConfig => return machine_config::parse_patch(body),
        Route::PutSnapshotLoad => return snapshot::parse_put_load(body),
    };
    Ok(action.into())
}

/// Checks a resource ID from the path: non-empty, ASCII alphanumerics, `_` and `-` only.
fn checked_id(id: &str) -> Result<&str, RequestError> {
    if id.is_empty() {
        return Err(RequestError::EmptyId);
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(RequestError::InvalidId);
    }
    Ok(id)
}

/// Deserialises a body; every resource's schema refuses unknown fields.
fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    // serde's derived structs also accept a JSON array of the fields in order; every body is
    // an object in the API, so an array is a wrong type, not another spelling.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(json_error("invalid type: sequence, expected a JSON object"));
    }
    Ok(serde_json::from_slice(body)?)
}

/// A refusal of the body that is answered as serde's are, for a rule serde cannot state.
fn json_error(message: &str) -> RequestError {
    RequestError::Json(serde::de::Error::custom(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fault message for a request, which must be refused.
    pub(super) fn fault(method: Method, path: &str, body: Option<&str>) -> String {
        parse(method, path, body.map(str::as_bytes))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn gets_without_bodies() {
        for (path, action) in [
            ("/", VmmAction::GetInstanceInfo),
            ("/version", VmmAction::GetVersion),
            ("/vm/config", VmmAction::GetVmConfig),
            ("/machine-config", VmmAction::GetMachineConfig),
            ("/metrics", VmmAction::GetMetrics),
        ] {
            assert_eq!(
                parse(Method::Get, path, None).unwrap(),
                action.into(),
                "{path}"
            );
        }
        assert_eq!(
            fault(Method::Get, "/version", Some("{}")),
            "GET request cannot have a body."
        );
    }

    #[test]
    fn unknown_paths_and_methods_are_refused_with_firecrackers_message() {
        assert_eq!(
            fault(Method::Get, "/nope", None),
            "Invalid request method and/or path: GET /nope."
        );
        assert_eq!(
            fault(Method::Delete, "/drives/a", None),
            "Invalid request method and/or path: DELETE /drives/a."
        );
        assert_eq!(
            fault(Method::Post, "/actions", Some("{}")),
            "Invalid request method and/or path: POST /actions."
        );
        assert_eq!(
            fault(Method::Put, "/version", Some("{}")),
            "Invalid request method and/or path: PUT /version."
        );
        assert_eq!(
            fault(Method::Patch, "/boot-source", Some("{}")),
            "Invalid request method and/or path: PATCH /boot-source."
        );
    }

    #[test]
    fn put_and_patch_need_a_body() {
        assert_eq!(fault(Method::Put, "/actions", None), "Empty PUT request.");
        assert_eq!(fault(Method::Put, "/nope", None), "Empty PUT request.");
        assert_eq!(fault(Method::Patch, "/vm", None), "Empty PATCH request.");
    }

    #[test]
    fn ids_are_checked() {
        let body = Some(r#"{"drive_id": "a", "is_root_device": false}"#);
        assert_eq!(
            fault(Method::Put, "/drives", body),
            "The ID cannot be empty."
        );
        assert_eq!(
            fault(Method::Patch, "/network-interfaces/", body),
            "The ID cannot be empty."
        );
        for bad in ["..", "%2e%2e", "a%2Fb", "a.b", "é", "a b", "a\\b", "*"] {
            assert_eq!(
                fault(Method::Put, &format!("/drives/{bad}"), body),
                "API Resource IDs can only contain alphanumeric characters, underscores and \
                 hyphens.",
                "{bad}"
            );
        }
        // Traversal across segments never reaches the ID check: no route has that shape.
        assert!(fault(Method::Put, "/drives/../../etc", body).starts_with("Invalid request"));
        assert_eq!(checked_id("Root_fs-1").unwrap(), "Root_fs-1");
    }
}
