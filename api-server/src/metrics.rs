//! Request counters for the API: how many requests each route received, and how many were
//! answered with a fault. The API thread counts; the VMM reads them through a shared
//! [`ApiMetrics`] to publish them with its own metrics.
//!
//! Requests that micro-http refuses before they are parsed (malformed HTTP, bodies over the
//! limit) never reach the router and are not counted here.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            routes: std::array::from_fn(|_| AtomicU64::new(0)),
            unrouted: AtomicU64::new(0),
            faults: AtomicU64::new(0),
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

    /// Counts one response with a 4xx or 5xx status.
    pub(crate) fn count_fault(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
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

    /// Requests answered with a fault (4xx or 5xx) so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
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
        m.count_fault();
        let snap = m.snapshot();
        assert_eq!(snap.len(), Route::ALL.len() + 1);
        let get = |name: &str| snap.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(get("PUT /drives/{id}"), 2);
        assert_eq!(get("PATCH /vm"), 1);
        assert_eq!(get("GET /"), 0);
        assert_eq!(get("unrouted"), 1);
        assert_eq!(m.faults(), 1);
    }
}
