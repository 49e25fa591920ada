//! Network devices from the `network-interfaces` configuration: the host tap, opened by
//! name, and the virtio-net device around it.

use std::sync::{Arc, Mutex};

use devices::virtio::net::{Net, NetConfig, NetStats, Tap};

use crate::config::{MacAddr, NetworkInterfaceConfig};
use crate::metrics::{Counter, MetricSource};

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetDeviceError {
    /// The tap could not be opened.
    #[error("Interface '{id}': {source}")]
    Tap {
        id: String,
        source: devices::virtio::net::TapError,
    },
    /// The device could not be created.
    #[error("Interface '{id}': {source}")]
    Device {
        id: String,
        source: devices::virtio::net::NetError,
    },
}

/// Creates the virtio-net device for `iface`; the MAC is the configured one or a random one.
pub fn create(iface: &NetworkInterfaceConfig) -> Result<Arc<Mutex<Net>>, NetDeviceError> {
    let id = iface.iface_id.clone();
    let tap = Tap::open_named(&iface.host_dev_name).map_err(|source| NetDeviceError::Tap {
        id: id.clone(),
        source,
    })?;
    let mac = iface.guest_mac.unwrap_or_else(MacAddr::random);
    let config = NetConfig {
        mac: mac.0,
        // Validation keeps the MTU within u16.
        mtu: iface.mtu.and_then(|m| u16::try_from(m).ok()),
        // As in Firecracker: only a MAC the operator chose is one the guest can spoof.
        count_spoofed: iface.guest_mac.is_some(),
    };
    let net = Net::new(tap, config).map_err(|source| NetDeviceError::Device { id, source })?;
    Ok(Arc::new(Mutex::new(net)))
}

/// An interface's counters, as the `net_<iface_id>` metrics group.
#[derive(Debug)]
pub struct NetMetrics {
    group: String,
    stats: Arc<NetStats>,
}

impl NetMetrics {
    /// The metrics of interface `iface_id`.
    pub fn new(iface_id: &str, stats: Arc<NetStats>) -> Self {
        Self {
            group: format!("net_{iface_id}"),
            stats,
        }
    }
}

impl MetricSource for NetMetrics {
    fn counters(&self) -> Vec<Counter> {
        let mut counters = Counter::group(&self.group, self.stats.snapshot());
        counters.extend(Counter::latency_sums(&self.group, self.stats.latencies()));
        counters
    }

    fn gauges(&self) -> Vec<Counter> {
        Counter::latency_extremes(&self.group, self.stats.latencies())
    }
}
