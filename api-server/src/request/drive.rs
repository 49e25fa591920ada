//! `PUT` and `PATCH /drives/{id}`: block devices.

use vmm::config::DriveConfig;
use vmm::rpc::{DriveUpdate, VmmAction};

use super::{from_json, RequestError};

/// Parses `PUT /drives/{id}`; the body's `drive_id` must be the path's.
pub(super) fn parse_put(id: &str, body: &[u8]) -> Result<VmmAction, RequestError> {
    let drive: DriveConfig = from_json(body)?;
    if drive.drive_id != id {
        return Err(RequestError::DriveIdMismatch);
    }
    Ok(VmmAction::PutDrive(drive))
}

/// Parses `PATCH /drives/{id}`; the body's `drive_id` must be the path's.
pub(super) fn parse_patch(id: &str, body: &[u8]) -> Result<VmmAction, RequestError> {
    let update: DriveUpdate = from_json(body)?;
    if update.drive_id != id {
        return Err(RequestError::DriveIdMismatch);
    }
    Ok(VmmAction::PatchDrive(update))
}

#[cfg(test)]
mod tests {
    use dbs_uhttp::Method;

    use super::super::tests::fault;
    use super::*;

    #[test]
    fn put_parses_a_drive() {
        let body = br#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true,
                        "is_read_only": true, "cache_type": "Writeback", "format": "Qcow2"}"#;
        let VmmAction::PutDrive(drive) = parse_put("rootfs", body).unwrap() else {
            panic!("not a drive");
        };
        assert_eq!(drive.drive_id, "rootfs");
        assert!(drive.is_root_device && drive.is_read_only);
    }

    #[test]
    fn patch_parses_an_update() {
        let body = br#"{"drive_id": "data", "path_on_host": "/new"}"#;
        assert_eq!(
            parse_patch("data", body).unwrap(),
            VmmAction::PatchDrive(DriveUpdate {
                drive_id: "data".into(),
                path_on_host: Some("/new".into()),
                rate_limiter: None,
            })
        );
    }

    #[test]
    fn the_ids_must_match() {
        let put = r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#;
        let expected = "The id from the path does not match the id from the body!";
        assert_eq!(fault(Method::Put, "/drives/a", Some(put)), expected);
        let patch = r#"{"drive_id": "b"}"#;
        assert_eq!(fault(Method::Patch, "/drives/a", Some(patch)), expected);
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"drive_id": "a"}"#, "missing field `is_root_device`"),
            (
                r#"{"drive_id": 1000, "is_root_device": false}"#,
                "invalid type: integer `1000`",
            ),
            (
                r#"{"drive_id": "a", "is_root_device": "yes"}"#,
                "invalid type: string \"yes\"",
            ),
            (
                r#"{"drive_id": "a", "is_root_device": false, "direct": true}"#,
                "unknown field `direct`",
            ),
            ("not json", "expected ident"),
        ] {
            let err = parse_put("a", body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
        let err = parse_patch("a", br#"{"drive_id": "a", "is_read_only": true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `is_read_only`"), "{err}");
        let err = parse_patch("a", br#"{"path_on_host": "/x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `drive_id`"), "{err}");
    }
}
