//! Where things live in guest physical memory. The layout follows Firecracker's, so kernels and
//! tools tuned for it find things where they expect.

/// The GDT used at boot.
pub const BOOT_GDT_START: u64 = 0x500;
/// The (empty) IDT used at boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, then PDPT, then PD.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages covering the first GiB).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line, terminator included (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The start of the extended BIOS data area; RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table goes at the start of the EBDA, where Linux looks for it.
pub const MPTABLE_START: u64 = EBDA_START;
/// The first address above the legacy hole: the kernel and initrd go above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// The first address above 32 bits.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// Size of the MMIO gap below 4 GiB.
pub const MMIO_GAP_SIZE: u64 = 1 << 30;
/// Start of the MMIO gap: guest RAM below 4 GiB ends here and devices begin.
pub const MMIO_GAP_START: u64 = FIRST_ADDR_PAST_32BITS - MMIO_GAP_SIZE;
/// The boot-timer device, first in the MMIO gap.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// Size of one MMIO device slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// The IOAPIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const APIC_START: u64 = 0xfee0_0000;

/// KVM's three-page TSS for real-mode emulation; must sit below 4 GiB outside RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, right below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The guest RAM ranges for `mem_size` bytes: below the MMIO gap, and the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_skips_the_mmio_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![(0, MMIO_GAP_START), (FIRST_ADDR_PAST_32BITS, 1 << 30)]
        );
    }

    #[test]
    fn fixed_areas_do_not_collide() {
        let areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x20),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        for (i, (a, alen)) in areas.iter().enumerate() {
            for (b, blen) in &areas[i + 1..] {
                assert!(
                    a + alen <= *b || b + blen <= *a,
                    "{a:#x} and {b:#x} overlap"
                );
            }
        }
        const {
            assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0xfff)
        };
        const { assert!(CMDLINE_START + (CMDLINE_MAX_SIZE as u64) < EBDA_START) };
        const { assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 == KVM_TSS_ADDRESS) };
        const { assert!(KVM_TSS_ADDRESS > APIC_START) };
    }
}
