//! The Firecracker-compatible HTTP API over a Unix socket: requests parsed into the typed VMM
//! actions `vmm` defines ([`vmm::rpc`]), answered with Firecracker's bodies and status codes.
//!
//! Kiln speaks Firecracker's v1.16.1 API (see `swagger/kiln.yaml`); `GET /version` and `GET /`
//! report `firecracker_version: "1.16.1"` so that clients that check it keep working, and
//! Kiln's own version beside it. `GET /metrics` (Prometheus text) is a Kiln extension.
//!
//! ```text
//! socket ──micro-http──► server::handle ──request::parse──► VmmAction ──ApiSender──► VMM
//!                               ◄──response::from_outcome── ActionResult ◄──────────┘
//! ```
//!
//! The binary calls [`bind`] (so that a bad path fails before anything else starts), then runs
//! [`serve`] on its API thread.

mod metrics;
pub mod request;
mod response;
mod server;
mod socket;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

use std::path::PathBuf;

pub use dbs_uhttp::HttpServer;
pub use metrics::ApiMetrics;
pub use response::FIRECRACKER_API_VERSION;
pub use server::serve;
pub use socket::bind;

/// Firecracker's default for `--http-api-max-payload-size`: the largest request body accepted.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// Why the API server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// Another process accepts connections on the socket path.
    #[error("The API socket {0} is in use by another process.")]
    InUse(PathBuf),
    /// Connecting to the existing socket failed in a way that does not say it is stale.
    #[error("Cannot tell whether the API socket {path} is in use: {source}")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The stale socket file could not be removed.
    #[error("Cannot remove the stale API socket {path}: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// Why removing failed.
        source: std::io::Error,
    },
    /// Binding the socket failed.
    #[error("Cannot bind the API socket {path}: {reason}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// micro-http's reason (its error type is not a `std::error::Error`).
        reason: String,
    },
    /// The server could not register its socket with epoll.
    #[error("Cannot start the API server: {0}")]
    Start(String),
}
