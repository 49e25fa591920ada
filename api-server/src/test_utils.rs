//! The body of the `api_request` fuzz target, shared with a stable unit test that runs it on a
//! few thousand mutated requests with a fixed seed. Built only for tests and the `test-utils`
//! feature.

use dbs_uhttp::{Request, StatusCode};
use vmm::rpc::{ActionError, VmmData};

use crate::metrics::ApiMetrics;
use crate::server::handle;
use crate::DEFAULT_MAX_PAYLOAD;

/// Parses `data` as an HTTP request with micro-http, then routes and answers it with a VMM that
/// replies a result chosen by the data's last byte. Panics if a response breaks the API's
/// rules: only 200, 204, 400 or 500; every 400 and 500 a JSON fault; a refused request never
/// reaches the VMM.
pub fn fuzz_request(data: &[u8]) {
    let Ok(request) = Request::try_from(data, Some(DEFAULT_MAX_PAYLOAD)) else {
        return;
    };
    let metrics = ApiMetrics::new();
    let mut executed = false;
    let response = handle(&request, &metrics, |_action| {
        executed = true;
        Ok(match data.last().copied().unwrap_or_default() % 4 {
            0 => Ok(VmmData::Empty),
            1 => Ok(VmmData::Json(serde_json::json!({"a": 1}))),
            2 => Ok(VmmData::PrometheusText("kiln_x 1\n".into())),
            _ => Err(ActionError::OperationNotSupportedPreBoot),
        })
    });
    let status = response.status();
    assert!(
        matches!(
            status,
            StatusCode::OK | StatusCode::NoContent | StatusCode::BadRequest
        ),
        "unexpected status {status:?}"
    );
    if status == StatusCode::BadRequest {
        let body = response
            .body()
            .map(|b| b.raw().to_vec())
            .unwrap_or_default();
        let fault: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        assert!(
            fault
                .get("fault_message")
                .is_some_and(serde_json::Value::is_string),
            "not a fault: {fault}"
        );
    } else {
        assert!(executed, "answered {status:?} without asking the VMM");
    }
    let mut wire = Vec::new();
    assert!(response.write_all(&mut wire).is_ok());
    let routed = metrics.snapshot().iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(routed, 1, "each request is counted once");
}

/// Valid and nearly valid requests for every route: the seeds the mutations start from.
pub fn seed_requests() -> Vec<Vec<u8>> {
    let with_body = |method: &str, path: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\n\r\n");
    [
        get("/"),
        get("/version"),
        get("/vm/config"),
        get("/machine-config"),
        get("/metrics"),
        "GET /version HTTP/1.0\r\nAccept: application/json\r\n\r\n".to_string(),
        with_body(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#,
        ),
        with_body("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#),
        with_body(
            "PUT",
            "/cpu-config",
            r#"{"kvm_capabilities": ["!1"], "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0",
                "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bx1_0x"}]}],
                "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1"}]}"#,
        ),
        with_body(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#,
        ),
        with_body(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#,
        ),
        with_body(
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/n"}"#,
        ),
        with_body(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}"#,
        ),
        with_body(
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": null}"#,
        ),
        with_body("PUT", "/logger", r#"{"log_path": "/l", "level": "Info"}"#),
        with_body("PUT", "/metrics", r#"{"metrics_path": "/m"}"#),
        with_body("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        with_body("PATCH", "/vm", r#"{"state": "Paused"}"#),
        with_body(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
        ),
        with_body(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_path": "/u", "backend_type": "Uffd"},
                "track_dirty_pages": true, "resume_vm": true, "clock_realtime": false,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}"#,
        ),
        with_body(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "enable_diff_snapshots": true}"#,
        ),
        with_body(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"uds_path": "/v"}}"#,
        ),
        with_body("PUT", "/snapshot/other", r#"{"snapshot_path": "/s"}"#),
        with_body("PUT", "/drives/%2e%2e", r#"{"drive_id": ".."}"#),
        with_body("DELETE", "/drives/a", "{}"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

#[cfg(test)]
mod tests {
    use crate::request::Route;

    use super::*;

    /// xorshift64: a fixed, dependency-free sequence so that every run tests the same inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Fragments that keep mutants close to what the parsers look at.
    const DICTIONARY: &[&str] = &[
        "GET",
        "PUT",
        "PATCH",
        "DELETE",
        "HTTP/1.0",
        "HTTP/1.1",
        "\r\n",
        "\r\n\r\n",
        "/",
        "..",
        "%2e",
        "/drives/",
        "/vm/config",
        "Content-Length: 9999999\r\n",
        "Content-Length: -1\r\n",
        "Expect: 100-continue\r\n",
        "Transfer-Encoding: chunked\r\n",
        "{",
        "}",
        "\"",
        ":",
        ",",
        "null",
        "true",
        "1e999",
        "-1",
        "\\u0000",
        "\"drive_id\"",
        "\"iface_id\"",
        "\"state\"",
        "\"action_type\"",
        "\"vcpu_count\"",
        "/snapshot/",
        "\"snapshot_path\"",
        "\"mem_backend\"",
        "\"mem_file_path\"",
        "\"vsock_override\"",
        "\u{e9}",
        "\0",
    ];

    fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len() + 1);
            match rng.below(5) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
                1 => input.insert(at, rng.next() as u8),
                2 => input.truncate(at),
                3 if at < input.len() => {
                    let end = (at + rng.below(16)).min(input.len());
                    input.drain(at..end);
                }
                _ => {
                    let word = DICTIONARY[rng.below(DICTIONARY.len())];
                    input.splice(at..at, word.bytes());
                }
            }
        }
    }

    #[test]
    fn fuzz_body_holds_on_seeds_mutants_and_noise() {
        let seeds = seed_requests();
        for seed in &seeds {
            fuzz_request(seed);
        }
        let mut rng = Rng(0x6b69_6c6e_2d61_7069);
        for _ in 0..5000 {
            let mut input = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut input);
            fuzz_request(&input);
        }
        for _ in 0..1000 {
            let len = rng.below(256);
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            fuzz_request(&noise);
        }
    }

    #[test]
    fn every_seed_is_a_request_micro_http_accepts() {
        for seed in seed_requests() {
            assert!(
                Request::try_from(&seed, Some(DEFAULT_MAX_PAYLOAD)).is_ok(),
                "{}",
                String::from_utf8_lossy(&seed)
            );
        }
    }

    #[test]
    fn every_route_has_a_seed() {
        let mut missing: Vec<Route> = Route::ALL.to_vec();
        for seed in seed_requests() {
            let request = Request::try_from(&seed, Some(DEFAULT_MAX_PAYLOAD)).unwrap();
            if let Some((route, _)) = Route::find(request.method(), request.uri().get_abs_path()) {
                missing.retain(|r| *r != route);
            }
        }
        assert!(missing.is_empty(), "no seed for {missing:?}");
    }

    /// Writes the seeds where cargo-fuzz looks for a corpus:
    /// `cargo test -p api-server write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/api_request");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seed_requests().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
