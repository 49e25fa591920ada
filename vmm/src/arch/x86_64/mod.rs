//! x86_64: the guest physical layout, and everything a vCPU needs before its first instruction
//! (CPUID, MSRs, registers, page tables, LAPIC), plus the boot-time tables the kernel reads (MP
//! table, e820 map, zero page or PVH start info).

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
