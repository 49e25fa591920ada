//! The register state of a vCPU at the kernel's entry: general registers, segments and control
//! registers (with the boot GDT and, for the 64-bit entry, identity-mapped page tables), and the
//! FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::gdt::{kvm_segment_from_gdt, GDT_64BIT, GDT_PVH};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// The 64-bit Linux boot protocol: long mode, paging on, RSI at the zero page.
    Linux64,
    /// The PVH entry: 32-bit protected mode, paging off, RBX at the start info.
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// The first instruction.
    pub addr: GuestAddress,
    /// The protocol the kernel expects there.
    pub protocol: BootProtocol,
}

/// Errors setting up boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The GDT, IDT or page tables could not be written to guest memory.
    #[error("Failed to write the boot {what} to guest memory: {source}")]
    WriteTable {
        what: &'static str,
        source: GuestMemoryError,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// General registers at the entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.addr.raw_value(),
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

fn write_u64s<M: GuestMemory>(
    mem: &M,
    what: &'static str,
    start: u64,
    values: &[u64],
) -> Result<(), RegsError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(start))
        .map_err(|source| RegsError::WriteTable { what, source })
}

/// Identity-maps the first GiB with 2 MiB pages, which covers the kernel, its boot data and the
/// early page-table area the 64-bit entry expects.
fn write_page_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE_PAGE: u64 = 0x80;
    write_u64s(mem, "PML4", PML4_START, &[PDPTE_START | PRESENT_WRITABLE])?;
    write_u64s(mem, "PDPT", PDPTE_START, &[PDE_START | PRESENT_WRITABLE])?;
    let pde: Vec<u64> = (0..512u64)
        .map(|i| (i << 21) | HUGE_PAGE | PRESENT_WRITABLE)
        .collect();
    write_u64s(mem, "page directory", PDE_START, &pde)
}

/// Segment and control registers at the entry, writing the GDT, IDT and (for the 64-bit entry)
/// page tables into guest memory. `sregs` comes from the vCPU so that fields we leave alone
/// (APIC base, descriptor caches KVM filled) keep KVM's values.
pub fn setup_sregs<M: GuestMemory>(
    mem: &M,
    protocol: BootProtocol,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt = match protocol {
        BootProtocol::Linux64 => GDT_64BIT,
        BootProtocol::Pvh => GDT_PVH,
    };
    write_u64s(mem, "GDT", BOOT_GDT_START, &gdt)?;
    write_u64s(mem, "IDT", BOOT_IDT_START, &[0])?;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Linux64 => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
        }
    }
    Ok(())
}

/// The FPU as a freshly reset CPU has it.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn linux64_entry_runs_in_long_mode_with_identity_paging() {
        let mem = mem();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, BootProtocol::Linux64, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_eq!(sregs.cs.l, 1);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde_last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde_last, (511 << 21) | 0x83);
        let gdt_code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt_code, GDT_64BIT[1]);

        let regs = boot_regs(EntryPoint {
            addr: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
        });
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );
    }

    #[test]
    fn pvh_entry_runs_in_protected_mode_without_paging() {
        let mem = mem();
        let mut sregs = kvm_sregs {
            cr0: X86_CR0_PG,
            ..Default::default()
        };
        setup_sregs(&mem, BootProtocol::Pvh, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0, "PVH boots without page tables");
        let regs = boot_regs(EntryPoint {
            addr: GuestAddress(0x100_0200),
            protocol: BootProtocol::Pvh,
        });
        assert_eq!((regs.rip, regs.rbx), (0x100_0200, PVH_INFO_START));
    }

    #[test]
    fn tables_outside_memory_are_an_error() {
        let tiny: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        assert!(matches!(
            setup_sregs(&tiny, BootProtocol::Linux64, &mut sregs),
            Err(RegsError::WriteTable { what: "PML4", .. })
        ));
    }
}
