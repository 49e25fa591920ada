//! `network-interfaces`: virtio-net devices on host taps, in Firecracker's format, and the
//! checks Firecracker makes on them as a set (unique IDs, MACs and taps).
//!
//! `mtu` (Firecracker's field since 1.16.0): when set, the device offers VIRTIO_NET_F_MTU with
//! that value.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A MAC address, written `aa:bb:cc:dd:ee:ff` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a MAC address like 06:00:ac:10:00:02");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(mac))
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl MacAddr {
    /// A random, locally administered, unicast address, for interfaces configured without one.
    pub fn random() -> Self {
        let mut mac = [0u8; 6];
        for byte in &mut mac {
            *byte = vmm_sys_util::rand::xor_pseudo_rng_u32() as u8;
        }
        // Locally administered (bit 1), unicast (bit 0 clear).
        mac[0] = (mac[0] | 0x02) & !0x01;
        Self(mac)
    }
}

/// Errors in `network-interfaces`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// Two interfaces share an ID.
    #[error("iface_id '{0}' is used by more than one interface.")]
    DuplicateId(String),
    /// Two interfaces share a MAC.
    #[error("guest_mac {0} is used by more than one interface.")]
    DuplicateMac(MacAddr),
    /// Two interfaces use the same tap.
    #[error("host_dev_name '{0}' is used by more than one interface.")]
    DuplicateTap(String),
    /// An ID or tap name is empty or too long.
    #[error("{field} '{value}' must be 1 to {max} characters.")]
    InvalidName {
        field: &'static str,
        value: String,
        max: usize,
    },
    /// An MTU the device cannot offer.
    #[error("Interface '{id}': mtu {mtu} must be between 68 and 65535.")]
    InvalidMtu { id: String, mtu: u32 },
    /// A setting Kiln does not implement yet.
    #[error("Interface '{id}': {what} is not supported yet.")]
    Unsupported { id: String, what: &'static str },
}

/// One entry of `network-interfaces`. Optional fields are written as `null` when absent, as
/// Firecracker writes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// Unique ID.
    pub iface_id: String,
    /// The existing host tap device.
    pub host_dev_name: String,
    /// The guest's MAC; a random one when absent.
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
    /// The MTU offered to the guest.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// A token-bucket rate limiter for received traffic (not implemented yet).
    #[serde(default)]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// A token-bucket rate limiter for sent traffic (not implemented yet).
    #[serde(default)]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// Linux's IFNAMSIZ less the terminator.
const MAX_TAP_NAME: usize = 15;

impl NetworkInterfaceConfig {
    /// Checks this interface on its own.
    pub fn validate(&self) -> Result<(), NetError> {
        let id = &self.iface_id;
        if id.is_empty() || id.len() > 64 {
            return Err(NetError::InvalidName {
                field: "iface_id",
                value: id.clone(),
                max: 64,
            });
        }
        let tap = &self.host_dev_name;
        if tap.is_empty() || tap.len() > MAX_TAP_NAME || tap.contains('/') {
            return Err(NetError::InvalidName {
                field: "host_dev_name",
                value: tap.clone(),
                max: MAX_TAP_NAME,
            });
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(NetError::InvalidMtu {
                    id: id.clone(),
                    mtu,
                });
            }
        }
        let limited = |l: &Option<serde_json::Value>| l.as_ref().is_some_and(|v| !v.is_null());
        if limited(&self.rx_rate_limiter) || limited(&self.tx_rate_limiter) {
            return Err(NetError::Unsupported {
                id: id.clone(),
                what: "a rate limiter",
            });
        }
        Ok(())
    }
}

/// Checks the interfaces as a set, then each one.
pub fn validate_interfaces(ifaces: &[NetworkInterfaceConfig]) -> Result<(), NetError> {
    for (i, a) in ifaces.iter().enumerate() {
        a.validate()?;
        for b in ifaces.iter().skip(i + 1) {
            if a.iface_id == b.iface_id {
                return Err(NetError::DuplicateId(a.iface_id.clone()));
            }
            if let (Some(x), Some(y)) = (a.guest_mac, b.guest_mac) {
                if x == y {
                    return Err(NetError::DuplicateMac(x));
                }
            }
            if a.host_dev_name == b.host_dev_name {
                return Err(NetError::DuplicateTap(a.host_dev_name.clone()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: &str, tap: &str, mac: Option<&str>) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(|m| m.parse().unwrap()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    #[test]
    fn parses_firecrackers_fields_and_macs() {
        let json = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02",
                       "rx_rate_limiter": null, "tx_rate_limiter": null}"#;
        let i: NetworkInterfaceConfig = serde_json::from_str(json).unwrap();
        assert_eq!(i.guest_mac, Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])));
        assert_eq!(i.guest_mac.unwrap().to_string(), "06:00:ac:10:00:02");
        for bad in [
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0g:00:ac:10:00:02",
            "6:0:ac:10:00:02",
        ] {
            let json =
                format!(r#"{{"iface_id": "e", "host_dev_name": "t", "guest_mac": "{bad}"}}"#);
            let err = serde_json::from_str::<NetworkInterfaceConfig>(&json).unwrap_err();
            assert!(
                err.to_string().contains("is not a MAC address"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for _ in 0..64 {
            let mac = MacAddr::random();
            assert_eq!(mac.0[0] & 0x03, 0x02);
        }
    }

    #[test]
    fn rejects_duplicates_like_firecracker() {
        let m = Some("06:00:00:00:00:01");
        assert_eq!(
            validate_interfaces(&[iface("a", "tap0", None), iface("a", "tap1", None)]),
            Err(NetError::DuplicateId("a".into()))
        );
        assert_eq!(
            validate_interfaces(&[iface("a", "tap0", m), iface("b", "tap1", m)])
                .unwrap_err()
                .to_string(),
            "guest_mac 06:00:00:00:00:01 is used by more than one interface."
        );
        assert_eq!(
            validate_interfaces(&[iface("a", "tap0", None), iface("b", "tap0", None)]),
            Err(NetError::DuplicateTap("tap0".into()))
        );
        assert!(validate_interfaces(&[iface("a", "tap0", m), iface("b", "tap1", None)]).is_ok());
        let long = iface("a", "a-very-long-tap-name", None);
        assert!(matches!(long.validate(), Err(NetError::InvalidName { .. })));
        let mut limited = iface("a", "tap0", None);
        limited.tx_rate_limiter = Some(serde_json::json!({"ops": {}}));
        assert_eq!(
            limited.validate().unwrap_err().to_string(),
            "Interface 'a': a rate limiter is not supported yet."
        );
        let mut mtu = iface("a", "tap0", None);
        mtu.mtu = Some(9000);
        assert!(mtu.validate().is_ok());
        mtu.mtu = Some(20);
        assert!(mtu.validate().is_err());
    }
}
