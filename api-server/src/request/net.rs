//! `PUT` and `PATCH /network-interfaces/{id}`: virtio-net devices on host taps.

use vmm::config::NetworkInterfaceConfig;
use vmm::rpc::{NetworkInterfaceUpdate, VmmAction};

use super::{from_json, RequestError};

fn check_id(path: &str, body: &str) -> Result<(), RequestError> {
    if path == body {
        Ok(())
    } else {
        Err(RequestError::IfaceIdMismatch {
            path: path.to_string(),
            body: body.to_string(),
        })
    }
}

/// Parses `PUT /network-interfaces/{id}`; the body's `iface_id` must be the path's.
pub(super) fn parse_put(id: &str, body: &[u8]) -> Result<VmmAction, RequestError> {
    let iface: NetworkInterfaceConfig = from_json(body)?;
    check_id(id, &iface.iface_id)?;
    Ok(VmmAction::PutNetworkInterface(iface))
}

/// Parses `PATCH /network-interfaces/{id}`; the body's `iface_id` must be the path's.
pub(super) fn parse_patch(id: &str, body: &[u8]) -> Result<VmmAction, RequestError> {
    let update: NetworkInterfaceUpdate = from_json(body)?;
    check_id(id, &update.iface_id)?;
    Ok(VmmAction::PatchNetworkInterface(update))
}

#[cfg(test)]
mod tests {
    use dbs_uhttp::Method;

    use super::super::tests::fault;
    use super::*;

    #[test]
    fn put_parses_an_interface() {
        let body = br#"{"iface_id": "eth0", "host_dev_name": "tap0",
                        "guest_mac": "06:00:ac:10:00:02", "mtu": 1500}"#;
        let VmmAction::PutNetworkInterface(iface) = parse_put("eth0", body).unwrap() else {
            panic!("not an interface");
        };
        assert_eq!(iface.host_dev_name, "tap0");
        assert_eq!(iface.guest_mac.unwrap().to_string(), "06:00:ac:10:00:02");
        assert_eq!(iface.mtu, Some(1500));
    }

    #[test]
    fn patch_parses_an_update() {
        let body = br#"{"iface_id": "eth0", "rx_rate_limiter": {}}"#;
        let VmmAction::PatchNetworkInterface(update) = parse_patch("eth0", body).unwrap() else {
            panic!("not an update");
        };
        assert_eq!(update.rx_rate_limiter, Some(serde_json::json!({})));
    }

    #[test]
    fn the_ids_must_match() {
        let put = r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#;
        assert_eq!(
            fault(Method::Put, "/network-interfaces/eth0", Some(put)),
            "The id from the path [eth0] does not match the id from the body [eth1]!"
        );
        let patch = r#"{"iface_id": "eth1"}"#;
        assert_eq!(
            fault(Method::Patch, "/network-interfaces/eth0", Some(patch)),
            "The id from the path [eth0] does not match the id from the body [eth1]!"
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        for (body, expected) in [
            (r#"{"iface_id": "eth0"}"#, "missing field `host_dev_name`"),
            (
                r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#,
                "not a MAC address",
            ),
            (
                r#"{"iface_id": "eth0", "host_dev_name": 0}"#,
                "invalid type: integer `0`",
            ),
            (
                r#"{"iface_id": "eth0", "host_dev_name": "t", "allow_mmds_requests": true}"#,
                "unknown field `allow_mmds_requests`",
            ),
        ] {
            let err = parse_put("eth0", body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
        let err = parse_patch("eth0", br#"{"iface_id": "eth0", "host_dev_name": "t"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `host_dev_name`"), "{err}");
    }
}
