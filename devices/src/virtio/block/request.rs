//! Parsing of virtio-block requests: turns a descriptor chain the guest made available into a
//! [`Request`], checking everything that does not depend on the disk.
//!
//! A request is a header descriptor (type, reserved, sector: 16 bytes the device reads), zero or
//! more data descriptors, and a last descriptor holding the status byte the device writes. The
//! chain comes from guest memory and is hostile until proven otherwise: every address is checked
//! against guest memory here, so execution only meets buffers that exist.

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, Le32, Le64};

/// Size of the request header: type (u32), reserved (u32), sector (u64), little-endian.
const HEADER_LEN: u32 = 16;
/// Offset of the sector in the header.
const SECTOR_OFFSET: u64 = 8;

/// What the guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Write the drive id into the data buffer.
    GetId,
    /// A type the device does not implement.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

impl RequestType {
    /// Whether the data buffers must be device-writable (`Some(true)`), device-readable
    /// (`Some(false)`), or are not looked at.
    fn data_writable(self) -> Option<bool> {
        match self {
            Self::In | Self::GetId => Some(true),
            Self::Out => Some(false),
            Self::Flush | Self::Unsupported(_) => None,
        }
    }
}

/// A well-formed request, every buffer of it inside guest memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The request type.
    pub kind: RequestType,
    /// The first 512-byte sector the request addresses.
    pub sector: u64,
    /// The data buffers, in order: guest address and length.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

/// Why a descriptor chain is not a well-formed request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain yields no descriptor: its head index or first descriptor is out of bounds.
    #[error("The descriptor chain is empty or its head is out of bounds.")]
    Empty,
    /// The chain stopped before a descriptor without NEXT: it loops, is longer than the queue,
    /// leaves the descriptor table, or its lengths add up to more than 4 GiB.
    #[error("The descriptor chain does not end: it loops or runs out of bounds.")]
    Truncated,
    /// The chain has more descriptors than the device accepts.
    #[error("The descriptor chain has more than {0} descriptors.")]
    TooManyDescriptors(usize),
    /// The last descriptor is device-readable, so it cannot hold the status.
    #[error("The status descriptor is not device-writable.")]
    StatusNotWritable,
    /// The last descriptor has length 0.
    #[error("The status descriptor is empty.")]
    StatusEmpty,
    /// The status byte lies outside guest memory.
    #[error("The status byte at {0:#x} is outside guest memory.")]
    StatusOutOfMemory(u64),
    /// The only descriptor is the status: there is no header.
    #[error("The request has no header descriptor.")]
    MissingHeader,
    /// The header descriptor is device-writable.
    #[error("The header descriptor is device-writable.")]
    HeaderWritable,
    /// The header descriptor is shorter than a header.
    #[error("The header descriptor has {0} bytes, fewer than {HEADER_LEN}.")]
    HeaderTooShort(u32),
    /// The header lies outside guest memory.
    #[error("The header at {0:#x} is outside guest memory.")]
    HeaderOutOfMemory(u64),
    /// A data descriptor has the wrong direction for the request type.
    #[error(
        "The {kind:?} request has a data descriptor that is {}device-writable.",
        if *.writable { "" } else { "not " }
    )]
    DataDirection { kind: RequestType, writable: bool },
    /// A data buffer lies outside guest memory.
    #[error("The data buffer of {len} bytes at {addr:#x} is outside guest memory.")]
    DataOutOfMemory { addr: u64, len: u32 },
}

/// A chain that is not a well-formed request, and where to report that, if anywhere.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    /// What is wrong.
    pub error: RequestError,
    /// The status byte, when the chain's last descriptor is a usable one; `None` when the chain
    /// is too broken to answer.
    pub status_addr: Option<GuestAddress>,
}

impl Request {
    /// Parses `chain`, whose buffers live in `mem`, accepting at most `max_descriptors`.
    pub fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        max_descriptors: usize,
    ) -> Result<Request, Rejected> {
        let unanswerable = |error| Rejected {
            error,
            status_addr: None,
        };
        // Taking one more than allowed tells "too many" apart from "exactly the limit".
        let descs: Vec<Descriptor> = chain.take(max_descriptors.saturating_add(1)).collect();
        if descs.len() > max_descriptors {
            return Err(unanswerable(RequestError::TooManyDescriptors(
                max_descriptors,
            )));
        }
        let (status, rest) = descs
            .split_last()
            .ok_or(unanswerable(RequestError::Empty))?;
        // The iterator ends a chain early, without telling, on a loop or a bad index; the last
        // descriptor it gave then still points onwards and is not the real status descriptor.
        if status.has_next() {
            return Err(unanswerable(RequestError::Truncated));
        }
        let status_addr = status_address(mem, status).map_err(unanswerable)?;

        let answerable = |error| Rejected {
            error,
            status_addr: Some(status_addr),
        };
        let (header, data) = rest
            .split_first()
            .ok_or(answerable(RequestError::MissingHeader))?;
        let (kind, sector) = read_header(mem, header).map_err(answerable)?;
        let data = data
            .iter()
            .map(|desc| check_data(mem, kind, desc))
            .collect::<Result<Vec<_>, _>>()
            .map_err(answerable)?;
        Ok(Request {
            kind,
            sector,
            data,
            status_addr,
        })
    }

    /// The total length of the data buffers. At most 4 GiB: the chain iterator stops chains
    /// whose lengths add up to more, and 256 lengths of 32 bits cannot overflow 64 bits.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, len)| u64::from(*len)).sum()
    }
}

/// The status byte is the first byte of the last descriptor, which must be device-writable.
fn status_address(mem: &GuestMemoryMmap, desc: &Descriptor) -> Result<GuestAddress, RequestError> {
    if !desc.is_write_only() {
        return Err(RequestError::StatusNotWritable);
    }
    if desc.len() == 0 {
        return Err(RequestError::StatusEmpty);
    }
    if !GuestMemoryBackend::check_range(mem, desc.addr(), 1) {
        return Err(RequestError::StatusOutOfMemory(desc.addr().0));
    }
    Ok(desc.addr())
}

/// Reads the type and sector from the header descriptor. Any bytes past the 16-byte header are
/// ignored: drivers put the header in a descriptor of its own.
fn read_header(
    mem: &GuestMemoryMmap,
    desc: &Descriptor,
) -> Result<(RequestType, u64), RequestError> {
    if desc.is_write_only() {
        return Err(RequestError::HeaderWritable);
    }
    if desc.len() < HEADER_LEN {
        return Err(RequestError::HeaderTooShort(desc.len()));
    }
    let addr = desc.addr();
    let out_of_memory = || RequestError::HeaderOutOfMemory(addr.0);
    let kind: Le32 = mem.read_obj(addr).map_err(|_| out_of_memory())?;
    let sector_addr = addr
        .0
        .checked_add(SECTOR_OFFSET)
        .ok_or_else(out_of_memory)?;
    let sector: Le64 = mem
        .read_obj(GuestAddress(sector_addr))
        .map_err(|_| out_of_memory())?;
    Ok((RequestType::from(kind.to_native()), sector.to_native()))
}

/// Checks a data descriptor's direction against the request type and its buffer against guest
/// memory.
fn check_data(
    mem: &GuestMemoryMmap,
    kind: RequestType,
    desc: &Descriptor,
) -> Result<(GuestAddress, u32), RequestError> {
    let writable = desc.is_write_only();
    if kind
        .data_writable()
        .is_some_and(|needed| needed != writable)
    {
        return Err(RequestError::DataDirection { kind, writable });
    }
    // A length always fits in usize on the 64-bit hosts Kiln runs on.
    let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
    if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
        return Err(RequestError::DataOutOfMemory {
            addr: desc.addr().0,
            len: desc.len(),
        });
    }
    Ok((desc.addr(), desc.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const MEM_SIZE: usize = 0x10_0000;
    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn write_header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(Le32::from(kind), GuestAddress(HEADER))
            .unwrap();
        mem.write_obj(Le64::from(sector), GuestAddress(HEADER + 8))
            .unwrap();
    }

    /// Parses the chain of `descs`, written as they are (flags and next included).
    fn parse(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, Rejected> {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_multiple_desc_chains(descs).unwrap();
        Request::parse(mem, chain, 16)
    }

    fn read_chain(data_flags: u16) -> Vec<RawDescriptor> {
        vec![
            desc(HEADER, 16, N, 1),
            desc(DATA, 1024, data_flags | N, 2),
            desc(STATUS, 1, W, 0),
        ]
    }

    fn rejected(error: RequestError, answerable: bool) -> Result<Request, Rejected> {
        Err(Rejected {
            error,
            status_addr: answerable.then_some(GuestAddress(STATUS)),
        })
    }

    #[test]
    fn parses_a_read() {
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 7);
        let request = parse(&mem, &read_chain(W)).unwrap();
        assert_eq!(
            request,
            Request {
                kind: RequestType::In,
                sector: 7,
                data: vec![(GuestAddress(DATA), 1024)],
                status_addr: GuestAddress(STATUS),
            }
        );
        assert_eq!(request.data_len(), 1024);
    }

    #[test]
    fn parses_a_flush_without_data_and_unknown_types() {
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let chain = [desc(HEADER, 16, N, 1), desc(STATUS, 1, W, 0)];
        assert_eq!(parse(&mem, &chain).unwrap().kind, RequestType::Flush);
        write_header(&mem, 0x1234, 0);
        let kind = parse(&mem, &chain).unwrap().kind;
        assert_eq!(kind, RequestType::Unsupported(0x1234));
    }

    #[test]
    fn rejects_data_in_the_wrong_direction() {
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let error = RequestError::DataDirection {
            kind: RequestType::In,
            writable: false,
        };
        assert_eq!(parse(&mem, &read_chain(0)), rejected(error, true));
        write_header(&mem, VIRTIO_BLK_T_OUT, 0);
        let error = RequestError::DataDirection {
            kind: RequestType::Out,
            writable: true,
        };
        assert_eq!(parse(&mem, &read_chain(W)), rejected(error, true));
    }

    #[test]
    fn rejects_bad_headers() {
        let mem = memory();
        let mut chain = read_chain(W);
        chain[0] = desc(HEADER, 15, N, 1);
        let error = RequestError::HeaderTooShort(15);
        assert_eq!(parse(&mem, &chain), rejected(error, true));
        chain[0] = desc(HEADER, 16, N | W, 1);
        assert_eq!(
            parse(&mem, &chain),
            rejected(RequestError::HeaderWritable, true)
        );
        let outside = MEM_SIZE as u64 - 8;
        chain[0] = desc(outside, 16, N, 1);
        let error = RequestError::HeaderOutOfMemory(outside);
        assert_eq!(parse(&mem, &chain), rejected(error, true));
    }

    #[test]
    fn a_chain_of_only_a_status_has_no_header() {
        let mem = memory();
        let chain = [desc(STATUS, 1, W, 0)];
        let expected = rejected(RequestError::MissingHeader, true);
        assert_eq!(parse(&mem, &chain), expected);
    }

    #[test]
    fn rejects_bad_status_descriptors_without_an_answer() {
        let mem = memory();
        let mut chain = read_chain(W);
        chain[2] = desc(STATUS, 1, 0, 0);
        let expected = rejected(RequestError::StatusNotWritable, false);
        assert_eq!(parse(&mem, &chain), expected);
        chain[2] = desc(STATUS, 0, W, 0);
        assert_eq!(
            parse(&mem, &chain),
            rejected(RequestError::StatusEmpty, false)
        );
        chain[2] = desc(u64::MAX, 1, W, 0);
        let error = RequestError::StatusOutOfMemory(u64::MAX);
        assert_eq!(parse(&mem, &chain), rejected(error, false));
    }

    #[test]
    fn rejects_data_outside_guest_memory() {
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let mut chain = read_chain(W);
        let addr = MEM_SIZE as u64 - 512;
        chain[1] = desc(addr, 1024, W | N, 2);
        let error = RequestError::DataOutOfMemory { addr, len: 1024 };
        assert_eq!(parse(&mem, &chain), rejected(error, true));
    }

    #[test]
    fn a_looping_chain_is_truncated() {
        let mem = memory();
        let chain = [desc(HEADER, 16, N, 1), desc(STATUS, 1, W | N, 0)];
        assert_eq!(
            parse(&mem, &chain),
            rejected(RequestError::Truncated, false)
        );
    }

    #[test]
    fn a_next_index_past_the_table_is_truncated() {
        let mem = memory();
        let chain = [desc(HEADER, 16, N, 200), desc(STATUS, 1, W, 0)];
        assert_eq!(
            parse(&mem, &chain),
            rejected(RequestError::Truncated, false)
        );
    }

    #[test]
    fn lengths_over_4_gib_are_truncated() {
        let mem = memory();
        let chain = [
            desc(HEADER, 16, N, 1),
            desc(DATA, u32::MAX, W | N, 2),
            desc(STATUS, 1, W, 0),
        ];
        assert_eq!(
            parse(&mem, &chain),
            rejected(RequestError::Truncated, false)
        );
    }

    #[test]
    fn rejects_too_many_descriptors() {
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(&mem, 16);
        let mut descs = vec![desc(HEADER, 16, N, 1)];
        descs.extend((2..5).map(|next| desc(DATA, 512, W | N, next)));
        descs.push(desc(STATUS, 1, W, 0));
        let chain = vq.build_multiple_desc_chains(&descs).unwrap();
        let expected = rejected(RequestError::TooManyDescriptors(4), false);
        assert_eq!(Request::parse(&mem, chain.clone(), 4), expected);
        assert!(Request::parse(&mem, chain, 5).is_ok());
    }
}
