//! Puts devices on the buses, wires their interrupts to KVM, and keeps the registry of the
//! virtio devices (`registry`).

pub mod block;
pub mod freeze;
pub mod legacy;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod registry;
