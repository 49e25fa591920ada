//! Puts devices on the buses and wires their interrupts to KVM.

pub mod block;
pub mod legacy;
pub mod mmio;
pub mod net;
