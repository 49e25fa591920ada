//! The boot information the kernel reads at entry: the e820 memory map, and either the Linux
//! zero page (64-bit entry) or the PVH start info, both pointing at the command line and initrd.

use devices::GuestMemoryMmap;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::layout::{
    ram_regions, CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::regs::BootProtocol;

/// Errors writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// The memory map has more entries than the zero page holds.
    #[error("The e820 map has {0} entries, more than the zero page holds.")]
    TooManyE820Entries(usize),
    /// Guest memory is too small to hold the kernel's high memory.
    #[error("Guest memory of {0} bytes is too small to boot a kernel.")]
    MemoryTooSmall(u64),
    /// linux-loader could not write the structures.
    #[error("Failed to write the boot parameters: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// A RAM range of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The RAM the guest may use: low memory up to the EBDA, then everything from 1 MiB up, split
/// around the MMIO gap.
pub fn ram_map(mem_size: u64) -> Result<Vec<RamRange>, BootParamsError> {
    if mem_size <= HIMEM_START {
        return Err(BootParamsError::MemoryTooSmall(mem_size));
    }
    let mut map = vec![RamRange {
        addr: 0,
        size: EBDA_START,
    }];
    for (start, len) in ram_regions(mem_size) {
        let addr = start.max(HIMEM_START);
        let end = start + len;
        if end > addr {
            map.push(RamRange {
                addr,
                size: end - addr,
            });
        }
    }
    Ok(map)
}

/// Where the command line and initrd are, as the kernel must be told.
#[derive(Debug, Clone, Copy)]
pub struct BootData {
    /// The kernel's setup header, for a bzImage.
    pub setup_header: Option<setup_header>,
    /// Length of the command line, without its terminator.
    pub cmdline_len: usize,
    /// Address and length of the initrd.
    pub initrd: Option<(GuestAddress, u64)>,
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    map: &[RamRange],
    data: &BootData,
) -> Result<(), BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = data.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = data.cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = data.initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    for (slot, range) in params.e820_table.iter_mut().zip(map) {
        slot.addr = range.addr;
        slot.size = range.size;
        slot.r#type = E820_RAM;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )?;
    Ok(())
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    map: &[RamRange],
    data: &BootData,
) -> Result<(), BootParamsError> {
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|r| hvm_memmap_table_entry {
            addr: r.addr,
            size: r.size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    if let Some((addr, size)) = data.initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

/// Writes the zero page or the PVH start info for `protocol`.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    protocol: BootProtocol,
    data: &BootData,
) -> Result<(), BootParamsError> {
    let map = ram_map(mem_size)?;
    match protocol {
        BootProtocol::Linux64 => write_zero_page(mem, &map, data),
        BootProtocol::Pvh => write_pvh_start_info(mem, &map, data),
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::{FIRST_ADDR_PAST_32BITS, MMIO_GAP_START};
    use super::*;
    use vm_memory::Bytes;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn e820_leaves_out_the_legacy_hole_and_the_mmio_gap() {
        let small = ram_map(128 << 20).unwrap();
        assert_eq!(
            small,
            vec![
                RamRange {
                    addr: 0,
                    size: EBDA_START
                },
                RamRange {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START
                },
            ]
        );
        let big = ram_map(4 << 30).unwrap();
        assert_eq!(big.len(), 3);
        assert_eq!(big[1].addr + big[1].size, MMIO_GAP_START);
        assert_eq!(big[2].addr, FIRST_ADDR_PAST_32BITS);
        let total: u64 = big.iter().map(|r| r.size).sum();
        assert_eq!(total, (4 << 30) - (HIMEM_START - EBDA_START));
        assert!(ram_map(HIMEM_START).is_err());
    }

    #[test]
    fn zero_page_points_at_cmdline_and_initrd() {
        let size = 64 << 20;
        let mem = mem(size);
        let data = BootData {
            setup_header: None,
            cmdline_len: 42,
            initrd: Some((GuestAddress(0x300_0000), 0x1234)),
        };
        write_boot_params(&mem, size as u64, BootProtocol::Linux64, &data).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 42);
        assert_eq!(
            (params.hdr.ramdisk_image, params.hdr.ramdisk_size),
            (0x300_0000, 0x1234)
        );
        assert_eq!(params.e820_entries, 2);
        assert_eq!({ params.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ params.e820_table[1].r#type }, E820_RAM);
    }

    #[test]
    fn pvh_start_info_lists_memory_and_the_initrd_module() {
        let size = 64 << 20;
        let mem = mem(size);
        let data = BootData {
            setup_header: None,
            cmdline_len: 10,
            initrd: Some((GuestAddress(0x300_0000), 0x1000)),
        };
        write_boot_params(&mem, size as u64, BootProtocol::Pvh, &data).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1000));
        let second: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                PVH_MEMMAP_START + std::mem::size_of::<hvm_memmap_table_entry>() as u64,
            ))
            .unwrap();
        assert_eq!(second.addr, HIMEM_START);
    }
}
