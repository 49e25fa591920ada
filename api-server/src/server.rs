//! The API thread's loop: micro-http accepts connections and parses HTTP on one thread with
//! epoll; each complete request is routed, sent to the VMM, and answered in order.
//!
//! The loop never stops for a client's fault: malformed HTTP and oversized bodies are answered
//! 400 by micro-http itself, a client that goes away mid-request is dropped, and errors from
//! micro-http are logged and the loop goes on, as in Firecracker.
//!
//! HTTP comes from dbs-uhttp (micro-http's crates.io fork), patched so that a request whose
//! bytes arrive in several parts waits for the rest: see third_party/dbs-uhttp/KILN-PATCHES.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dbs_uhttp::{HttpServer, Request, Response, StatusCode};
use vmm::rpc::{ActionResult, ApiSender, ChannelError, VmmAction};

use crate::metrics::ApiMetrics;
use crate::request::{self, Route};
use crate::response;
use crate::ApiServerError;

/// How long the loop waits after micro-http reports an error. Errors that persist (no file
/// descriptors left to accept with) would otherwise spin the API thread and flood the log.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Serves the API on the calling thread, forever: each request becomes a [`VmmAction`] sent
/// through `sender`, and the reply becomes the response. Bodies over `max_payload` bytes are
/// refused with 400 (Firecracker's `--http-api-max-payload-size`, default
/// [`crate::DEFAULT_MAX_PAYLOAD`]). Returns only if the server cannot start.
pub fn serve(
    mut server: HttpServer,
    sender: ApiSender,
    max_payload: usize,
    metrics: Arc<ApiMetrics>,
) -> Result<(), ApiServerError> {
    server.set_payload_max_size(max_payload);
    server
        .start_server()
        .map_err(|e| ApiServerError::Start(e.to_string()))?;
    log::info!("API server started.");
    loop {
        let requests = match server.requests() {
            Ok(requests) => requests,
            Err(err) => {
                log::error!("The API server failed to read requests: {err}");
                std::thread::sleep(ERROR_BACKOFF);
                continue;
            }
        };
        for request in requests {
            let response =
                request.process(|req| handle(req, &metrics, |action| sender.request(action)));
            if let Err(err) = server.respond(response) {
                log::error!("The API server failed to queue a response: {err}");
            }
        }
    }
}

/// Answers one parsed HTTP request; `execute` takes the action to the VMM and brings back its
/// result.
pub(crate) fn handle(
    request: &Request,
    metrics: &ApiMetrics,
    execute: impl FnOnce(VmmAction) -> Result<ActionResult, ChannelError>,
) -> Response {
    let method = request.method();
    let path = request.uri().get_abs_path();
    let version = request.http_version();
    let route = Route::find(method, path).map(|(route, _)| route);
    metrics.count_request(route);
    let body = request.body.as_ref().map(|b| b.raw());
    let response = match request::parse(method, path, body) {
        Ok(request::Parsed {
            action,
            deprecation,
        }) => {
            log::info!("API request {} {path}: {action:?}", method.to_str());
            let latency = metrics.latency_of(&action);
            let start = Instant::now();
            let outcome = execute(action);
            // Firecracker times only the requests the VMM carried out.
            if let (Some(latency), Ok(Ok(_))) = (latency, &outcome) {
                latency.record(start.elapsed());
            }
            let mut response = response::from_outcome(version, outcome);
            if let Some(warning) = deprecation {
                log::warn!("{warning}");
                metrics.count_deprecated();
                response.set_deprecation();
            }
            response
        }
        Err(err) => response::fault(version, StatusCode::BadRequest, &err.to_string()),
    };
    let status = response.status();
    if !matches!(status, StatusCode::OK | StatusCode::NoContent) {
        metrics.count_fault(route);
        let fault = response
            .body()
            .map(|b| String::from_utf8_lossy(b.raw()).into_owned());
        log::warn!(
            "API request {} {path} failed with {}: {}",
            method.to_str(),
            String::from_utf8_lossy(status.raw()),
            fault.unwrap_or_default()
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vmm::rpc::{ActionError, VmmData};

    use super::*;

    /// Answers `PATCH /vm` Paused with `result`, after a millisecond in the VMM.
    fn pause(metrics: &ApiMetrics, result: ActionResult) -> StatusCode {
        let body = r#"{"state": "Paused"}"#;
        let raw = format!(
            "PATCH /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let request = Request::try_from(raw.as_bytes(), None).unwrap();
        let response = handle(&request, metrics, |_| {
            std::thread::sleep(Duration::from_millis(1));
            Ok(result)
        });
        response.status()
    }

    #[test]
    fn only_requests_the_vmm_carried_out_are_timed() {
        let metrics = ApiMetrics::new();
        let pause_vm = |m: &ApiMetrics| {
            m.latencies()
                .iter()
                .find(|(n, _)| *n == "pause_vm")
                .unwrap()
                .1
        };
        let refused = Err(ActionError::OperationNotSupportedPreBoot);
        assert_eq!(pause(&metrics, refused), StatusCode::BadRequest);
        assert_eq!(pause_vm(&metrics), 0);
        assert_eq!(pause(&metrics, Ok(VmmData::Empty)), StatusCode::NoContent);
        assert!(pause_vm(&metrics) >= 1000, "{}", pause_vm(&metrics));
    }
}
