//! `swagger/kiln.yaml` and the router agree: every route in the spec is served, and every route
//! the router serves is in the spec.

#![cfg(test)] // So that the workspace's test allowances cover the helpers, as in common/.

use std::collections::BTreeSet;

use api_server::request::{parse, RequestError, Route};
use dbs_uhttp::Method;

/// (method, path template) pairs from the spec, path parameters written `{id}`.
fn spec_routes() -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/swagger/kiln.yaml")).unwrap();
    let spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        // The spec names each parameter (`{drive_id}`); the router calls them all `{id}`.
        let template: Vec<String> = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "{id}".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        for method in item.as_mapping().unwrap().keys() {
            let method = method.as_str().unwrap().to_ascii_uppercase();
            routes.insert((method, template.join("/")));
        }
    }
    routes
}

fn method(name: &str) -> Method {
    Method::try_from(name.as_bytes()).unwrap()
}

#[test]
fn every_spec_route_is_served() {
    for (name, template) in spec_routes() {
        let path = template.replace("{id}", "x");
        let body = (name != "GET").then_some(&b"{}"[..]);
        match parse(method(&name), &path, body) {
            Err(RequestError::InvalidPathMethod { .. }) => {
                panic!("{name} {template} is in the spec but not served")
            }
            _ => assert!(Route::find(method(&name), &path).is_some()),
        }
    }
}

#[test]
fn every_served_route_is_in_the_spec() {
    let spec = spec_routes();
    let served: BTreeSet<(String, String)> = Route::ALL
        .iter()
        .map(|r| (r.method().to_str().to_string(), r.template().to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&spec).collect();
    assert!(
        missing.is_empty(),
        "served but not in the spec: {missing:?}"
    );
    assert_eq!(served, spec);
}

#[test]
fn methods_the_spec_does_not_list_are_not_served() {
    let spec = spec_routes();
    for (_, template) in &spec {
        let path = template.replace("{id}", "x");
        for name in ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"] {
            if spec.contains(&(name.to_string(), template.clone())) {
                continue;
            }
            let body = (name != "GET").then_some(&b"{}"[..]);
            assert!(
                matches!(
                    parse(method(name), &path, body),
                    Err(RequestError::InvalidPathMethod { .. })
                ),
                "{name} {template} is served but not in the spec"
            );
        }
    }
}
