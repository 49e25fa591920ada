//! Snapshots: the microVM's state as plain data ([`state`]), the versioned and checksummed
//! file it is written to ([`file`]), and guest memory written to and mapped from the memory
//! file ([`memory`]) or served by a page-fault handler ([`uffd`]), and the frozen drives of
//! disk-consistent snapshots and their clones' overlays ([`drives`]). The running VM gathers the state and the builder restores it; this module
//! knows neither.

pub mod drives;
pub mod file;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz;
pub mod memory;
pub mod state;
pub mod uffd;
