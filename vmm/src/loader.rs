//! Loading the guest: the kernel (ELF vmlinux or bzImage), the initrd and the command line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use devices::host_file::open_data_file;
use devices::GuestMemoryMmap;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};
use crate::arch::x86_64::regs::{BootProtocol, EntryPoint};

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// A file could not be opened or read.
    #[error("Failed to read {what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel is neither an ELF vmlinux nor a bzImage.
    #[error("The kernel '{0}' is neither an ELF vmlinux nor a bzImage.")]
    UnknownFormat(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("Failed to load the kernel '{path}': {source}")]
    Kernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    /// A bzImage that cannot be entered in 64-bit mode.
    #[error(
        "The bzImage '{0}' has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64)."
    )]
    NotKernel64(PathBuf),
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("The initrd of {size} bytes does not fit in guest memory above the kernel.")]
    InitrdTooBig { size: u64 },
    /// The command line is invalid or too long.
    #[error("Invalid kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// The command line could not be written to guest memory.
    #[error("Failed to write the kernel command line: {0}")]
    WriteCmdline(linux_loader::loader::Error),
}

/// Where the loaded kernel starts, and what a bzImage told about itself.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The first instruction and the protocol.
    pub entry: EntryPoint,
    /// The setup header of a bzImage, which goes into the zero page.
    pub setup_header: Option<setup_header>,
    /// The first byte past the kernel image.
    pub end: u64,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Offset of the 64-bit entry from the start of a bzImage's protected-mode kernel.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
const BOOT_PROTOCOL_2_12: u16 = 0x20c;

fn open(what: &'static str, path: &Path) -> Result<File, LoaderError> {
    open_data_file(path, OpenOptions::new().read(true)).map_err(|source| LoaderError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Loads the kernel at `path`: an ELF vmlinux by physical address (entered through PVH when it
/// has the PVH note, else through the 64-bit Linux entry), or a bzImage where its header says.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("the kernel", path)?;
    let io_err = |source| LoaderError::Io {
        what: "the kernel",
        path: path.to_owned(),
        source,
    };
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let kernel_err = |source| LoaderError::Kernel {
        path: path.to_owned(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));

    if magic == ELF_MAGIC {
        let result = Elf::load(mem, None, &mut file, himem).map_err(kernel_err)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => EntryPoint {
                addr,
                protocol: BootProtocol::Pvh,
            },
            _ => EntryPoint {
                addr: result.kernel_load,
                protocol: BootProtocol::Linux64,
            },
        };
        return Ok(LoadedKernel {
            entry,
            setup_header: None,
            end: result.kernel_end,
        });
    }

    let result = BzImage::load(mem, None, &mut file, himem).map_err(|e| match e {
        linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        ) => LoaderError::UnknownFormat(path.to_owned()),
        other => kernel_err(other),
    })?;
    let header = result
        .setup_header
        .ok_or_else(|| LoaderError::UnknownFormat(path.to_owned()))?;
    let (version, xloadflags) = (header.version, header.xloadflags);
    if version < BOOT_PROTOCOL_2_12 || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::NotKernel64(path.to_owned()));
    }
    let addr = result
        .kernel_load
        .checked_add(BZIMAGE_ENTRY_64_OFFSET)
        .ok_or_else(|| LoaderError::UnknownFormat(path.to_owned()))?;
    Ok(LoadedKernel {
        entry: EntryPoint {
            addr,
            protocol: BootProtocol::Linux64,
        },
        setup_header: Some(header),
        end: result.kernel_end,
    })
}

/// Loads the initrd at the top of memory below the MMIO gap, page-aligned, and returns its
/// address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<(GuestAddress, u64), LoaderError> {
    let mut file = open("the initrd", path)?;
    let io_err = |source| LoaderError::Io {
        what: "the initrd",
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(io_err)?.len();
    let low_end = mem_size.min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(LoaderError::InitrdTooBig { size })?;
    let len = usize::try_from(size).map_err(|_| LoaderError::InitrdTooBig { size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    Ok((GuestAddress(addr), size))
}

/// Builds the kernel command line from the configured boot args and what devices add.
pub fn build_cmdline(boot_args: &str, extra: &[String]) -> Result<Cmdline, LoaderError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)?;
    cmdline.insert_str(boot_args)?;
    for arg in extra {
        cmdline.insert_str(arg)?;
    }
    Ok(cmdline)
}

/// Writes the command line to guest memory and returns its length without the terminator.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<usize, LoaderError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(LoaderError::WriteCmdline)?;
    Ok(cmdline.as_cstring()?.as_bytes().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    fn read_cmdline(mem: &GuestMemoryMmap, len: usize) -> String {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("kiln-loader-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn cmdline_appends_device_args_and_is_written_with_its_length() {
        let mem = mem(1 << 20);
        let cmdline = build_cmdline(
            "console=ttyS0 reboot=k",
            &["virtio_mmio.device=4K@0xc0001000:5".to_string()],
        )
        .unwrap();
        let len = write_cmdline(&mem, &cmdline).unwrap();
        assert_eq!(
            read_cmdline(&mem, len),
            "console=ttyS0 reboot=k virtio_mmio.device=4K@0xc0001000:5"
        );
        let nul: u8 = mem
            .read_obj(GuestAddress(CMDLINE_START + len as u64))
            .unwrap();
        assert_eq!(nul, 0);
    }

    #[test]
    fn cmdline_over_the_limit_is_rejected() {
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(LoaderError::Cmdline(_))
        ));
        assert!(matches!(
            build_cmdline("bad\narg", &[]),
            Err(LoaderError::Cmdline(_))
        ));
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top_of_low_memory() {
        let size = 16 << 20;
        let mem = mem(size);
        let path = temp_file("initrd", &[0xab; 5000]);
        let (addr, len) = load_initrd(&mem, size as u64, 8 << 20, &path).unwrap();
        assert_eq!(len, 5000);
        assert_eq!(addr.0 % 4096, 0);
        assert!(addr.0 + len <= size as u64);
        assert!(addr.0 + len + 4096 > size as u64);
        let byte: u8 = mem.read_obj(addr.unchecked_add(4999)).unwrap();
        assert_eq!(byte, 0xab);
        let too_high = load_initrd(&mem, size as u64, size as u64 - 4096, &path);
        assert!(matches!(
            too_high,
            Err(LoaderError::InitrdTooBig { size: 5000 })
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = mem(32 << 20);
        let path = temp_file("garbage", &[0x5a; 8192]);
        assert!(matches!(
            load_kernel(&mem, &path),
            Err(LoaderError::UnknownFormat(_))
        ));
        let short = temp_file("short", b"MZ");
        assert!(matches!(
            load_kernel(&mem, &short),
            Err(LoaderError::Io { .. })
        ));
        let truncated_elf = temp_file("elf", b"\x7fELF\x02\x01\x01");
        assert!(matches!(
            load_kernel(&mem, &truncated_elf),
            Err(LoaderError::Kernel { .. })
        ));
        for p in [path, short, truncated_elf] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
