//! KVM state: the VM file descriptor with its memory and interrupt controllers (and their
//! saved state, `vm_state`), and the vCPUs with the threads that run them (and theirs,
//! `vcpu_state`).

pub mod memory;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
