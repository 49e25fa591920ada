//! The virtio-vsock packet: the 44-byte `virtio_vsock_hdr` every packet starts with, and the
//! split of a gathered transmit chain into that header and its data.
//!
//! Nothing in a header is trusted: a transmit packet whose `len` is larger than the largest
//! packet, or than the data its chain holds, is refused here, before the muxer sees it.

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The most data one packet carries, as Firecracker (and the Linux driver's receive buffers).
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// The CID of the host, the only peer a guest reaches through this device.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type the device carries.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// The sender will receive and/or send no more (see the `SHUTDOWN_*` flags).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// The sender's buffer space, unasked.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// With `op::SHUTDOWN`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// With `op::SHUTDOWN`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, in host order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Length of the data after the header.
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer size, for credit.
    pub buf_alloc: u32,
    /// How many bytes the sender consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_le_bytes(v)
}

impl Header {
    /// The header at the start of `bytes`, which holds at least [`HDR_LEN`] bytes.
    pub fn parse(bytes: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: le_u64(bytes, 0),
            dst_cid: le_u64(bytes, 8),
            src_port: le_u32(bytes, 16),
            dst_port: le_u32(bytes, 20),
            len: le_u32(bytes, 24),
            type_: le_u16(bytes, 28),
            op: le_u16(bytes, 30),
            flags: le_u32(bytes, 32),
            buf_alloc: le_u32(bytes, 36),
            fwd_cnt: le_u32(bytes, 40),
        }
    }

    /// The header in its wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut out = [0u8; HDR_LEN];
        let fields: [(usize, &[u8]); 10] = [
            (0, &self.src_cid.to_le_bytes()),
            (8, &self.dst_cid.to_le_bytes()),
            (16, &self.src_port.to_le_bytes()),
            (20, &self.dst_port.to_le_bytes()),
            (24, &self.len.to_le_bytes()),
            (28, &self.type_.to_le_bytes()),
            (30, &self.op.to_le_bytes()),
            (32, &self.flags.to_le_bytes()),
            (36, &self.buf_alloc.to_le_bytes()),
            (40, &self.fwd_cnt.to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(dst) = out.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        out
    }
}

/// Why a transmit packet was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain is shorter than a header.
    #[error("The packet has {0} bytes, fewer than the {HDR_LEN}-byte header.")]
    NoHeader(usize),
    /// The header's `len` is more than a packet may carry.
    #[error("The packet header says {0} bytes of data, more than {MAX_PKT_DATA}.")]
    TooLong(u32),
    /// The header's `len` is more than the chain holds.
    #[error("The packet header says {len} bytes of data, the chain holds {held}.")]
    Truncated { len: u32, held: usize },
}

/// Splits a gathered transmit chain into its header and the `len` bytes of data it announces;
/// bytes after those are ignored, as in Firecracker.
pub fn split_tx(packet: &[u8]) -> Result<(Header, &[u8]), PacketError> {
    let (head, rest) = packet
        .split_first_chunk::<HDR_LEN>()
        .ok_or(PacketError::NoHeader(packet.len()))?;
    let header = Header::parse(head);
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    if len > MAX_PKT_DATA {
        return Err(PacketError::TooLong(header.len));
    }
    let data = rest.get(..len).ok_or(PacketError::Truncated {
        len: header.len,
        held: rest.len(),
    })?;
    Ok((header, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1234_5678,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0xffff_fff0,
        }
    }

    #[test]
    fn a_header_round_trips_in_the_kernel_layout() {
        let bytes = sample().to_bytes();
        // Spot checks against struct virtio_vsock_hdr's offsets.
        assert_eq!(bytes[0], 3);
        assert_eq!(bytes[8], 2);
        assert_eq!(&bytes[16..20], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&bytes[24..28], &5u32.to_le_bytes());
        assert_eq!(&bytes[30..32], &op::RW.to_le_bytes());
        assert_eq!(Header::parse(&bytes), sample());
    }

    #[test]
    fn a_transmit_packet_is_split_at_its_announced_length() {
        let mut packet = sample().to_bytes().to_vec();
        packet.extend_from_slice(b"hello, and more");
        let (header, data) = split_tx(&packet).unwrap();
        assert_eq!(header, sample());
        assert_eq!(data, b"hello");
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert_eq!(split_tx(&[0; 43]), Err(PacketError::NoHeader(43)));
        let mut header = sample();
        header.len = u32::MAX;
        assert_eq!(
            split_tx(&header.to_bytes()),
            Err(PacketError::TooLong(u32::MAX))
        );
        header.len = 10;
        let mut packet = header.to_bytes().to_vec();
        packet.extend_from_slice(b"four");
        assert_eq!(
            split_tx(&packet),
            Err(PacketError::Truncated { len: 10, held: 4 })
        );
        header.len = 0;
        let bytes = header.to_bytes();
        let (_, data) = split_tx(&bytes).unwrap();
        assert!(data.is_empty());
    }
}
