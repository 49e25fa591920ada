//! Guest memory: anonymous mappings laid out around the MMIO gap, no larger than the host can
//! back.
//!
//! The mappings cost nothing until the guest touches a page (vm-memory maps them
//! `MAP_NORESERVE`), but registering them with KVM does not: for each memory slot KVM allocates
//! and zeroes its own metadata at once, in proportion to the slot's size (with shadow paging,
//! as on hosts without TDP, reverse maps of 8 bytes per 4 KiB page: 0.2% of guest memory, and
//! seconds of kernel time per TiB). A size far above the host's memory would only cost that and
//! could never be backed, so it is refused before anything is mapped.

use devices::GuestMemoryMmap;
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::ram_regions;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map the memory.
    #[error("Failed to allocate {size} bytes of guest memory: {source}")]
    Allocate {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    /// A region is larger than the host's address space.
    #[error("Guest memory of {0} bytes does not fit the host address space.")]
    TooLarge(u64),
    /// More memory than the host has, RAM and swap together.
    #[error("The guest's {guest_mib} MiB of memory is more than the host's {host_mib} MiB of RAM and swap.")]
    MoreThanHost { guest_mib: u64, host_mib: u64 },
}

/// The host's RAM and swap in bytes, if the kernel says.
fn host_memory() -> Option<u64> {
    // SAFETY: all-zero bytes are a valid `sysinfo` (integers and padding only).
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes only into the struct it is given, which lives for the call.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    let total = info.totalram.checked_add(info.totalswap)?;
    total.checked_mul(u64::from(info.mem_unit))
}

/// Refuses `size` bytes of guest memory if the host has less, RAM and swap together.
fn check_host_can_back(size: u64, host: Option<u64>) -> Result<(), MemoryError> {
    match host {
        Some(host) if size > host => Err(MemoryError::MoreThanHost {
            guest_mib: size >> 20,
            host_mib: host >> 20,
        }),
        _ => Ok(()),
    }
}

/// Maps `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_host_can_back(size, host_memory())?;
    let ranges = ram_regions(size)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (GuestAddress(start), len))
                .map_err(|_| MemoryError::TooLarge(size))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn memory_above_the_gap_moves_past_4gib() {
        let mem = create_guest_memory(4 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(1 << 32)));
        assert!(!mem.address_in_range(GuestAddress(0xd000_0000)));
    }

    #[test]
    fn more_memory_than_the_host_has_is_refused() {
        let host = host_memory().unwrap();
        assert!(host > 64 << 20, "{host}");
        assert!(check_host_can_back(host, Some(host)).is_ok());
        assert_eq!(
            check_host_can_back(4 << 30, Some(1 << 30))
                .unwrap_err()
                .to_string(),
            "The guest's 4096 MiB of memory is more than the host's 1024 MiB of RAM and swap."
        );
        // A host that does not say is not refused anything.
        assert!(check_host_can_back(u64::MAX, None).is_ok());
        assert!(matches!(
            create_guest_memory(host + (1 << 30)),
            Err(MemoryError::MoreThanHost { .. })
        ));
    }
}
