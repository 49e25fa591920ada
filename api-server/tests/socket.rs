//! Binding the API socket: a stale file is replaced, a live socket is refused.

mod common;

use std::os::unix::net::UnixListener;

use api_server::ApiServerError;
use common::{socket_path, Api};

#[test]
fn a_stale_socket_file_is_replaced() {
    let path = socket_path("stale");
    // A socket whose process is gone: the file stays, nothing listens.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let _server = api_server::bind(&path).unwrap();
    // The new socket listens.
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_file_that_is_not_a_socket_is_replaced() {
    let path = socket_path("regular");
    std::fs::write(&path, b"left over").unwrap();
    let _server = api_server::bind(&path).unwrap();
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_live_socket_is_refused() {
    let path = socket_path("live");
    let _listener = UnixListener::bind(&path).unwrap();
    let Err(err) = api_server::bind(&path) else {
        panic!("bound a live socket");
    };
    assert!(
        matches!(&err, ApiServerError::InUse(p) if *p == path),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "The API socket {} is in use by another process.",
            path.display()
        )
    );
    // The live socket is untouched.
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_served_api_socket_is_refused_to_a_second_server() {
    let api = Api::start("second");
    assert!(matches!(
        api_server::bind(&api.path),
        Err(ApiServerError::InUse(_))
    ));
    assert_eq!(api.call("GET", "/", None).status, 200);
}

#[test]
fn a_path_in_a_missing_directory_fails_to_bind() {
    let path = std::path::Path::new("/nonexistent-kiln-dir/api.sock");
    let Err(err) = api_server::bind(path) else {
        panic!("bound in a missing directory");
    };
    assert!(matches!(err, ApiServerError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent-kiln-dir/api.sock"));
}
