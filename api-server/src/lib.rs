//! The Firecracker-compatible HTTP API over a Unix socket: requests parsed into the typed VMM
//! actions `vmm` defines, answered with Firecracker's bodies and status codes.
//!
//! Not implemented yet: `kiln` runs only with `--no-api --config-file` for now, and says so
//! when started without them.
