//! The harness for the server tests: a real API socket served on its own thread, a fake VMM
//! thread that records each action and answers a canned result, and a hand-written HTTP client.

// Integration tests are built with cfg(test); saying so lets the workspace's test allowances
// (unwrap, panic, indexing) apply to the harness as they do to #[test] functions.
#![cfg(test)]
#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_server::{ApiMetrics, DEFAULT_MAX_PAYLOAD};
use vmm::rpc::{
    api_channel, ActionError, ActionResult, InstanceInfo, InstanceState, VmmAction, VmmData,
};

/// A unique socket path in the temp directory.
pub fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("kiln-api-{}-{name}-{n}.sock", std::process::id()))
}

/// What the fake VMM answers.
pub fn canned(action: &VmmAction) -> ActionResult {
    match action {
        VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
            id: "test-vm".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0.1.0".into(),
            app_name: "Kiln".into(),
            firecracker_version: vmm::rpc::FIRECRACKER_VERSION.into(),
        })),
        VmmAction::GetVersion => Ok(VmmData::Version("0.1.0".into())),
        VmmAction::GetVmConfig | VmmAction::GetMachineConfig => Ok(VmmData::Json(
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128}),
        )),
        VmmAction::GetMetrics => Ok(VmmData::PrometheusText("kiln_api_requests 1\n".into())),
        VmmAction::SendCtrlAltDel => Err(ActionError::OperationNotSupportedPreBoot),
        _ => Ok(VmmData::Empty),
    }
}

/// A served API socket and what its VMM saw.
pub struct Api {
    pub path: PathBuf,
    pub actions: Arc<Mutex<Vec<VmmAction>>>,
    pub metrics: Arc<ApiMetrics>,
}

impl Api {
    /// Serves a new socket with a fake VMM. The threads outlive the test, as the real API
    /// thread outlives everything but the process.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, true)
    }

    /// Serves a new socket whose VMM is already gone.
    pub fn start_without_vmm(name: &str) -> Self {
        Self::start_with(name, false)
    }

    fn start_with(name: &str, with_vmm: bool) -> Self {
        let path = socket_path(name);
        let server = api_server::bind(&path).unwrap();
        let (sender, receiver) = api_channel().unwrap();
        let actions = Arc::new(Mutex::new(Vec::new()));
        if with_vmm {
            let seen = Arc::clone(&actions);
            std::thread::spawn(move || {
                while let Ok(request) = receiver.requests.recv() {
                    let result = canned(&request.action);
                    seen.lock().unwrap().push(request.action);
                    let _ = request.reply.send(result);
                }
            });
        } else {
            drop(receiver);
        }
        let metrics = Arc::new(ApiMetrics::new());
        let shared = Arc::clone(&metrics);
        std::thread::spawn(move || api_server::serve(server, sender, DEFAULT_MAX_PAYLOAD, shared));
        Self {
            path,
            actions,
            metrics,
        }
    }

    /// A new client connection.
    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }

    /// Sends one request on a new connection and reads the response.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut stream = self.connect();
        send(&mut stream, method, path, body);
        read_reply(&mut stream)
    }

    /// The actions the VMM has received so far.
    pub fn actions(&self) -> Vec<VmmAction> {
        self.actions.lock().unwrap().clone()
    }
}

/// Writes one HTTP/1.1 request.
pub fn send(stream: &mut UnixStream, method: &str, path: &str, body: Option<&str>) {
    stream.write_all(&request(method, path, body)).unwrap();
}

/// One HTTP/1.1 request's bytes.
pub fn request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    match body {
        Some(body) => format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
    }
    .into_bytes()
}

/// A response as the client read it.
#[derive(Debug)]
pub struct Reply {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<String>,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `fault_message` of a fault.
    pub fn fault(&self) -> String {
        self.json()["fault_message"].as_str().unwrap().to_string()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (key, value) = h.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Reads exactly one response (headers, then `Content-Length` bytes of body).
pub fn read_reply(stream: &mut UnixStream) -> Reply {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next().unwrap().to_string();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<String> = lines.map(str::to_string).collect();
    let mut reply = Reply {
        status_line,
        status,
        headers,
        body: String::new(),
    };
    let len: usize = reply
        .header("Content-Length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    reply.body = String::from_utf8(body).unwrap();
    reply
}

/// Sends one request in two writes, `pause` apart, and returns the first status.
pub fn split_request_status(name: &str, pause: std::time::Duration) -> u16 {
    let api = Api::start(name);
    let mut stream = api.connect();
    let bytes = request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    // In the request line, at the end of the head, and inside the body.
    let cuts = [10, bytes.len() - 21, bytes.len() - 5];
    let mut start = 0;
    for cut in cuts {
        stream.write_all(&bytes[start..cut]).unwrap();
        std::thread::sleep(pause);
        start = cut;
    }
    stream.write_all(&bytes[start..]).unwrap();
    let status = read_reply(&mut stream).status;
    // One request, one response: nothing more arrives.
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    assert!(stream.read(&mut [0u8; 1]).is_err(), "a second response");
    status
}
