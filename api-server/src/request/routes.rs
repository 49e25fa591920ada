//! The route table: every (method, path template) the API serves, declared once.
//!
//! The router dispatches on [`Route`], the metrics count per [`Route`], and the spec test checks
//! [`Route::ALL`] against `swagger/kiln.yaml`, so a route cannot be served without being counted
//! and documented.

use dbs_uhttp::Method;

/// Declares [`Route`] with its method and path template, and the list of all routes, from one
/// table so that they cannot drift apart.
macro_rules! routes {
    ($($(#[$doc:meta])* $variant:ident => $method:ident $path:literal,)*) => {
        /// One (method, path template) pair the API serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Route {
            $($(#[$doc])* $variant,)*
        }

        impl Route {
            /// Every route, in declaration order (the order of `Route as usize`).
            pub const ALL: &'static [Route] = &[$(Route::$variant,)*];

            /// The HTTP method.
            pub fn method(self) -> Method {
                match self {
                    $(Route::$variant => Method::$method,)*
                }
            }

            /// The path template, with `{id}` for a resource ID.
            pub fn template(self) -> &'static str {
                match self {
                    $(Route::$variant => $path,)*
                }
            }
        }
    };
}

routes! {
    /// `GET /`: instance information.
    GetInstanceInfo => Get "/",
    /// `GET /version`.
    GetVersion => Get "/version",
    /// `GET /vm/config`: the whole configuration.
    GetVmConfig => Get "/vm/config",
    /// `GET /machine-config`.
    GetMachineConfig => Get "/machine-config",
    /// `PUT /machine-config`.
    PutMachineConfig => Put "/machine-config",
    /// `PATCH /machine-config`.
    PatchMachineConfig => Patch "/machine-config",
    /// `PUT /cpu-config`: a custom CPU template.
    PutCpuConfig => Put "/cpu-config",
    /// `PUT /boot-source`.
    PutBootSource => Put "/boot-source",
    /// `PUT /drives/{id}`.
    PutDrive => Put "/drives/{id}",
    /// `PATCH /drives/{id}`.
    PatchDrive => Patch "/drives/{id}",
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface => Put "/network-interfaces/{id}",
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface => Patch "/network-interfaces/{id}",
    /// `PUT /logger`.
    PutLogger => Put "/logger",
    /// `PUT /metrics`.
    PutMetrics => Put "/metrics",
    /// `GET /metrics`: Prometheus text (a Kiln extension).
    GetMetrics => Get "/metrics",
    /// `PUT /actions`.
    PutActions => Put "/actions",
    /// `PATCH /vm`: pause or resume.
    PatchVm => Patch "/vm",
    /// `PUT /snapshot/create`: save the paused VM.
    PutSnapshotCreate => Put "/snapshot/create",
    /// `PUT /snapshot/load`: restore a VM, before anything is configured.
    PutSnapshotLoad => Put "/snapshot/load",
}

/// The template segment that matches a resource ID.
const ID: &str = "{id}";

impl Route {
    /// Finds the route for `method` and `path`, with the ID segment when the template has one.
    ///
    /// Leading slashes are ignored and one trailing slash is allowed, as in Firecracker. A
    /// missing ID (`/drives` or `/drives/`) matches with an empty ID, so that the caller can
    /// answer Firecracker's "The ID cannot be empty." rather than an unknown path. A path that
    /// does not start with `/` matches nothing (Firecracker serves `GET /` for it). Nothing is
    /// percent-decoded: `%2e%2e` stays three characters of an ID, which then fails the ID check.
    pub fn find(method: Method, path: &str) -> Option<(Route, Option<&str>)> {
        // micro-http gives an empty path for a URI that is neither absolute nor `/`-rooted.
        if !path.starts_with('/') {
            return None;
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split_terminator('/').collect();
        Route::ALL
            .iter()
            .filter(|route| route.method() == method)
            .find_map(|&route| route.match_segments(&segments).map(|id| (route, id)))
    }

    /// `Some(id)` when `segments` fit this route's template.
    fn match_segments<'a>(self, segments: &[&'a str]) -> Option<Option<&'a str>> {
        let template: Vec<&str> = self
            .template()
            .trim_start_matches('/')
            .split_terminator('/')
            .collect();
        let takes_id = template.last() == Some(&ID);
        let fits =
            segments.len() == template.len() || (takes_id && segments.len() + 1 == template.len());
        if !fits {
            return None;
        }
        let mut id = None;
        for (i, expected) in template.iter().enumerate() {
            let actual = segments.get(i).copied();
            if *expected == ID {
                id = Some(actual.unwrap_or(""));
            } else if actual != Some(*expected) {
                return None;
            }
        }
        Some(id)
    }

    /// `"PUT /drives/{id}"`.
    pub fn name(self) -> String {
        format!("{} {}", self.method().to_str(), self.template())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_route_with_its_id() {
        assert_eq!(
            Route::find(Method::Get, "/"),
            Some((Route::GetInstanceInfo, None))
        );
        assert_eq!(
            Route::find(Method::Get, "/vm/config/"),
            Some((Route::GetVmConfig, None))
        );
        assert_eq!(
            Route::find(Method::Put, "/drives/root"),
            Some((Route::PutDrive, Some("root")))
        );
        assert_eq!(
            Route::find(Method::Patch, "//network-interfaces/eth0/"),
            Some((Route::PatchNetworkInterface, Some("eth0")))
        );
        for route in Route::ALL {
            let path = route.template().replace(ID, "x");
            let (found, _) = Route::find(route.method(), &path).unwrap();
            assert_eq!(found, *route);
            assert_eq!(Route::ALL[found as usize], found);
        }
    }

    #[test]
    fn a_missing_id_matches_as_empty() {
        assert_eq!(
            Route::find(Method::Put, "/drives"),
            Some((Route::PutDrive, Some("")))
        );
        assert_eq!(
            Route::find(Method::Put, "/drives//"),
            Some((Route::PutDrive, Some("")))
        );
    }

    #[test]
    fn rejects_unknown_paths_methods_and_extra_segments() {
        for (method, path) in [
            (Method::Get, "/nope"),
            (Method::Delete, "/drives/a"),
            (Method::Post, "/actions"),
            (Method::Get, "/version/extra"),
            (Method::Put, "/drives/a/../b"),
            (Method::Get, "/vm"),
            (Method::Get, "/version?x=1"),
            (Method::Put, "/snapshot"),
            (Method::Put, "/snapshot/other"),
            (Method::Put, "/snapshot/create/x"),
            (Method::Get, "/snapshot/load"),
            (Method::Get, ""),
        ] {
            assert_eq!(Route::find(method, path), None, "{method:?} {path}");
        }
    }
}
