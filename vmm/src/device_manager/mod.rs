//! Puts devices on the buses and wires their interrupts to KVM.

pub mod legacy;
pub mod mmio;
