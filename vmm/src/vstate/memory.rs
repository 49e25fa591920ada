//! Guest memory: anonymous mappings laid out around the MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

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
}

/// Maps `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
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
}
