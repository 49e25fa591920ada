//! Reading descriptor chains for the devices that move byte streams (virtio-net, virtio-vsock):
//! the device-readable bytes of a transmit chain gathered into one buffer, and the
//! device-writable buffers of a receive chain. Every buffer is checked against guest memory
//! here, and every length sum is checked, so the queue loops only meet buffers that exist.

use crate::GuestMemoryMmap;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Why a descriptor chain cannot carry a frame.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain yields no descriptor: its head index or first descriptor is out of bounds.
    #[error("The descriptor chain is empty or its head is out of bounds.")]
    Empty,
    /// The chain stopped before a descriptor without NEXT: it loops or runs out of bounds.
    #[error("The descriptor chain does not end: it loops or runs out of bounds.")]
    Truncated,
    /// A descriptor has the wrong direction for its queue.
    #[error("A {} chain has a {} descriptor.", if *.rx { "receive" } else { "transmit" },
        if *.rx { "device-readable" } else { "device-writable" })]
    Direction { rx: bool },
    /// A buffer lies outside guest memory.
    #[error("The buffer of {len} bytes at {addr:#x} is outside guest memory.")]
    OutOfMemory { addr: u64, len: u32 },
    /// The chain cannot hold the device's header.
    #[error("The chain has {len} bytes, fewer than the {min}-byte header.")]
    TooShort { len: u64, min: usize },
    /// A transmit chain is longer than the largest packet.
    #[error("The transmit chain has {len} bytes, more than the largest packet of {max}.")]
    TooLong { len: u64, max: usize },
}

/// The descriptors of `chain`, all of one direction (device-writable when `rx`), every buffer
/// inside guest memory.
fn descriptors(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    rx: bool,
) -> Result<Vec<Descriptor>, ChainError> {
    let descs: Vec<Descriptor> = chain.collect();
    let last = descs.last().ok_or(ChainError::Empty)?;
    // The iterator ends a chain early, without telling, on a loop or a bad index; the last
    // descriptor it gave then still points onwards.
    if last.has_next() {
        return Err(ChainError::Truncated);
    }
    for desc in &descs {
        if desc.is_write_only() != rx {
            return Err(ChainError::Direction { rx });
        }
        // A length always fits in usize on the 64-bit hosts Kiln runs on.
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err(ChainError::OutOfMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
    }
    Ok(descs)
}

/// The sum of the descriptor lengths; at most 256 lengths of 32 bits, so it cannot overflow.
fn total_len(descs: &[Descriptor]) -> u64 {
    descs.iter().map(|d| u64::from(d.len())).sum()
}

/// Gathers a transmit chain of `min..=max` bytes into `frame` (the device's header first),
/// replacing its contents.
pub fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    (min, max): (usize, usize),
    frame: &mut Vec<u8>,
) -> Result<(), ChainError> {
    let descs = descriptors(mem, chain, false)?;
    let total = total_len(&descs);
    if total < min as u64 {
        return Err(ChainError::TooShort { len: total, min });
    }
    let len = usize::try_from(total)
        .ok()
        .filter(|len| *len <= max)
        .ok_or(ChainError::TooLong { len: total, max })?;
    frame.clear();
    frame.resize(len, 0);
    let mut rest = frame.as_mut_slice();
    for desc in &descs {
        let n = usize::try_from(desc.len())
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let (dst, tail) = rest.split_at_mut(n);
        mem.read_slice(dst, desc.addr())
            .map_err(|_| ChainError::OutOfMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        rest = tail;
    }
    Ok(())
}

/// The device-writable buffers of a receive chain, in order.
#[derive(Debug)]
pub struct RxBuffers {
    /// Guest address and length of each buffer.
    pub bufs: Vec<(GuestAddress, u32)>,
    /// Their total length: at least the device's header.
    pub capacity: u64,
}

impl RxBuffers {
    /// Checks a receive chain: device-writable throughout, in guest memory, room for a header
    /// of `min` bytes.
    pub fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        min: usize,
    ) -> Result<RxBuffers, ChainError> {
        let descs = descriptors(mem, chain, true)?;
        let capacity = total_len(&descs);
        if capacity < min as u64 {
            return Err(ChainError::TooShort { len: capacity, min });
        }
        let bufs = descs.iter().map(|d| (d.addr(), d.len())).collect();
        Ok(RxBuffers { bufs, capacity })
    }

    /// Writes the start of `data` into the buffers; returns how many bytes went in (at most one
    /// packet, far below 4 GiB).
    pub fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<u32, ChainError> {
        let mut rest = data;
        for &(addr, len) in &self.bufs {
            if rest.is_empty() {
                break;
            }
            let n = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
            let (src, tail) = rest.split_at(n);
            mem.write_slice(src, addr)
                .map_err(|_| ChainError::OutOfMemory { addr: addr.0, len })?;
            rest = tail;
        }
        let written = data.len().saturating_sub(rest.len());
        Ok(u32::try_from(written).unwrap_or(u32::MAX))
    }
}
