//! Request counters for the API: how many requests each route received, how many were
//! answered with a fault, how many used a deprecated field, and how long the last successful
//! snapshot create and load, pause and resume took. The API thread counts; the VMM reads them
//! through a shared [`ApiMetrics`] to publish them with its own metrics.
//!
//! Requests that micro-http refuses before they are parsed (malformed HTTP, bodies over the
//! limit) never reach the router and are not counted here.

use std::sync::atomic::{AtomicU64, Ordering};
use vmm::metrics::LastLatency;
use vmm::rpc::{SnapshotType, VmmAction};

use crate::request::Route;

/// Counters shared between the API thread and whoever publishes them.
#[derive(Debug)]
pub struct ApiMetrics {
    /// Indexed by `Route as usize`.
    routes: [AtomicU64; Route::ALL.len()],
    /// Requests that matched no route.
    unrouted: AtomicU64,
    /// Requests answered with 4xx or 5xx, routed or not.
    faults: AtomicU64,
    /// Faults per route, indexed by `Route as usize`.
    route_faults: [AtomicU64; Route::ALL.len()],
    /// How long the last successful request of each kind Firecracker times took, from parsed
    /// to answered, in µs: snapshot create (full and diff), snapshot load, pause and resume.
    full_create_snapshot: LastLatency,
    diff_create_snapshot: LastLatency,
    load_snapshot: LastLatency,
    pause: LastLatency,
    resume: LastLatency,
    /// Requests answered with Firecracker's `Deprecation` header.
    deprecated: AtomicU64,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            routes: std::array::from_fn(|_| AtomicU64::new(0)),
            unrouted: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            route_faults: std::array::from_fn(|_| AtomicU64::new(0)),
            full_create_snapshot: LastLatency::default(),
            diff_create_snapshot: LastLatency::default(),
            load_snapshot: LastLatency::default(),
            pause: LastLatency::default(),
            resume: LastLatency::default(),
            deprecated: AtomicU64::new(0),
        }
    }
}

impl ApiMetrics {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request for `route`, or an unrouted one.
    pub(crate) fn count_request(&self, route: Option<Route>) {
        let counter = route
            .and_then(|r| self.routes.get(r as usize))
            .unwrap_or(&self.unrouted);
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one response with a 4xx or 5xx status, for `route` or an unrouted request.
    pub(crate) fn count_fault(&self, route: Option<Route>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = route.and_then(|r| self.route_faults.get(r as usize)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one request that used a deprecated field.
    pub(crate) fn count_deprecated(&self) {
        self.deprecated.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Firecracker's groups, as (group, name, value): `<resource>_count` for
    /// the requests a route received and `<resource>_fails` for those answered with a fault
    /// (`put_api_requests.drive_count`, ...), Firecracker's meanings. GET requests have no
    /// `_fails` in Firecracker. Routes Firecracker does not count are left out (see
    /// [`ApiMetrics::snapshot`] for every route). Then
    /// `deprecated_api.deprecated_http_api_calls`.
    pub fn firecracker_counters(&self) -> Vec<(&'static str, String, u64)> {
        let mut counters = Vec::new();
        for (i, route) in Route::ALL.iter().enumerate() {
            let Some((group, resource)) = firecracker_name(*route) else {
                continue;
            };
            let get = |c: &[AtomicU64]| c.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            counters.push((group, format!("{resource}_count"), get(&self.routes)));
            if group != "get_api_requests" {
                counters.push((group, format!("{resource}_fails"), get(&self.route_faults)));
            }
        }
        counters.push((
            "deprecated_api",
            "deprecated_http_api_calls".to_string(),
            self.deprecated.load(Ordering::Relaxed),
        ));
        counters
    }

    /// Requests per route, named like `"PUT /drives/{id}"`, in route-table order, then
    /// `"unrouted"` for requests that matched no route.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        Route::ALL
            .iter()
            .zip(&self.routes)
            .map(|(route, n)| (route.name(), n.load(Ordering::Relaxed)))
            .chain([(
                "unrouted".to_string(),
                self.unrouted.load(Ordering::Relaxed),
            )])
            .collect()
    }

    /// Where the latency of `action` is kept, if it is one Firecracker times.
    pub(crate) fn latency_of(&self, action: &VmmAction) -> Option<&LastLatency> {
        match action {
            VmmAction::CreateSnapshot(params) => Some(match params.snapshot_type {
                SnapshotType::Full => &self.full_create_snapshot,
                SnapshotType::Diff => &self.diff_create_snapshot,
            }),
            VmmAction::LoadSnapshot(_) => Some(&self.load_snapshot),
            VmmAction::Pause => Some(&self.pause),
            VmmAction::Resume => Some(&self.resume),
            _ => None,
        }
    }

    /// The last latencies, as Firecracker's `latencies_us` names them (the whole request, in
    /// the API thread; the VMM keeps the `vmm_*` ones).
    pub fn latencies(&self) -> [(&'static str, u64); 5] {
        [
            ("full_create_snapshot", self.full_create_snapshot.us()),
            ("diff_create_snapshot", self.diff_create_snapshot.us()),
            ("load_snapshot", self.load_snapshot.us()),
            ("pause_vm", self.pause.us()),
            ("resume_vm", self.resume.us()),
        ]
    }

    /// Requests answered with a fault (4xx or 5xx) so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

/// Firecracker's metrics group and resource name for a route's requests, if it counts them.
pub fn firecracker_name(route: Route) -> Option<(&'static str, &'static str)> {
    const GET: &str = "get_api_requests";
    const PUT: &str = "put_api_requests";
    const PATCH: &str = "patch_api_requests";
    Some(match route {
        Route::GetInstanceInfo => (GET, "instance_info"),
        Route::GetVersion => (GET, "vmm_version"),
        Route::GetMachineConfig => (GET, "machine_cfg"),
        Route::PutMachineConfig => (PUT, "machine_cfg"),
        Route::PatchMachineConfig => (PATCH, "machine_cfg"),
        Route::PutCpuConfig => (PUT, "cpu_cfg"),
        Route::PutBootSource => (PUT, "boot_source"),
        Route::PutDrive => (PUT, "drive"),
        Route::PatchDrive => (PATCH, "drive"),
        Route::PutNetworkInterface => (PUT, "network"),
        Route::PatchNetworkInterface => (PATCH, "network"),
        Route::PutLogger => (PUT, "logger"),
        Route::PutMetrics => (PUT, "metrics"),
        Route::PutActions => (PUT, "actions"),
        // Firecracker counts no requests of these (`PATCH /vm` and the snapshot routes are
        // timed in `latencies_us` instead).
        Route::GetVmConfig
        | Route::GetMetrics
        | Route::PatchVm
        | Route::PutSnapshotCreate
        | Route::PutSnapshotLoad => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_route() {
        let m = ApiMetrics::new();
        m.count_request(Some(Route::PutDrive));
        m.count_request(Some(Route::PutDrive));
        m.count_request(Some(Route::PatchVm));
        m.count_request(None);
        m.count_fault(Some(Route::PutDrive));
        m.count_deprecated();
        let snap = m.snapshot();
        assert_eq!(snap.len(), Route::ALL.len() + 1);
        let get = |name: &str| snap.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(get("PUT /drives/{id}"), 2);
        assert_eq!(get("PATCH /vm"), 1);
        assert_eq!(get("GET /"), 0);
        assert_eq!(get("unrouted"), 1);
        assert_eq!(m.faults(), 1);
        let fc = m.firecracker_counters();
        let fc = |group: &str, name: &str| {
            fc.iter()
                .find(|(g, n, _)| *g == group && n == name)
                .unwrap()
                .2
        };
        assert_eq!(fc("put_api_requests", "drive_count"), 2);
        assert_eq!(fc("put_api_requests", "drive_fails"), 1);
        assert_eq!(fc("get_api_requests", "instance_info_count"), 0);
        assert_eq!(fc("deprecated_api", "deprecated_http_api_calls"), 1);
        assert_eq!(firecracker_name(Route::PutSnapshotCreate), None);
        assert_eq!(firecracker_name(Route::PutSnapshotLoad), None);
    }

    #[test]
    fn snapshot_requests_are_timed_under_firecrackers_names() {
        let m = ApiMetrics::new();
        let create = |snapshot_type| {
            VmmAction::CreateSnapshot(vmm::rpc::CreateSnapshotParams {
                snapshot_type,
                snapshot_path: "s".into(),
                mem_file_path: "m".into(),
            })
        };
        let load = VmmAction::LoadSnapshot(vmm::rpc::LoadSnapshotParams {
            snapshot_path: "s".into(),
            mem_backend: vmm::rpc::MemBackend {
                backend_path: "m".into(),
                backend_type: vmm::rpc::MemBackendType::File,
            },
            track_dirty_pages: false,
            resume_vm: false,
            network_overrides: Vec::new(),
            drive_overrides: Vec::new(),
            clock_realtime: false,
        });
        for (action, ms) in [
            (create(SnapshotType::Full), 1),
            (create(SnapshotType::Diff), 2),
            (load, 3),
            (VmmAction::Pause, 4),
            (VmmAction::Resume, 5),
        ] {
            let latency = m.latency_of(&action).unwrap();
            latency.record(std::time::Duration::from_millis(ms));
        }
        assert_eq!(m.latency_of(&VmmAction::GetVersion).map(|_| ()), None);
        assert_eq!(
            m.latencies(),
            [
                ("full_create_snapshot", 1000),
                ("diff_create_snapshot", 2000),
                ("load_snapshot", 3000),
                ("pause_vm", 4000),
                ("resume_vm", 5000),
            ]
        );
    }
}
