//! The Kiln VMM core: configuration, KVM VM and vCPUs, guest memory, kernel loading, the
//! device manager and the event loop.
//!
//! Only this crate touches KVM. `devices` provides the device models it wires up; the binary and
//! `api-server` drive it through [`config::VmConfig`] and [`run`].

pub mod arch;
mod bounded_lock;
pub mod builder;
pub mod config;
pub mod console;
pub mod console_output;
pub mod controller;
pub mod cpu_template;
pub mod cpu_usage;
pub mod device_manager;
pub mod fatal_signals;
pub mod line_sink;
pub mod loader;
pub mod logger;
pub mod metrics;
pub mod resources;
pub mod rpc;
pub mod runtime;
pub mod seccomp;
pub mod snapshot;
pub mod startup_time;
pub mod vstate;
