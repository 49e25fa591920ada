//! The API socket: claiming its path, and refusing it while another process serves it.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::Path;

use dbs_uhttp::HttpServer;

use crate::ApiServerError;

/// Binds the API socket at `path` and returns the server, not yet started (see
/// [`crate::serve`]).
///
/// A file already at `path` is handled as Firecracker's users expect from a restart: if a
/// process accepts connections on it, binding fails and names the path; if nothing listens (a
/// socket left by a process that died) or it is not a socket, it is removed first. The check
/// and the removal are not atomic; two Kiln processes started at the same instant on the same
/// path may both pass it, and the second bind then fails.
pub fn bind(path: &Path) -> Result<HttpServer, ApiServerError> {
    if std::fs::symlink_metadata(path).is_ok() {
        match UnixStream::connect(path) {
            Ok(_) => return Err(ApiServerError::InUse(path.to_owned())),
            // Refused: a socket nobody listens on, or not a socket at all (Linux refuses
            // those too). Not found: it went away meanwhile.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {}
            Err(source) => {
                return Err(ApiServerError::Probe {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(ApiServerError::RemoveStale {
                    path: path.to_owned(),
                    source: e,
                })
            }
            _ => log::info!("Removed the stale API socket {}.", path.display()),
        }
    }
    HttpServer::new(path).map_err(|e| ApiServerError::Bind {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
