//! virtio-vsock: stream sockets between the guest and the host, as Firecracker's hybrid vsock
//! maps them onto host Unix sockets (see `muxer`).
//!
//! ```text
//!           guest                                              host
//!  tx queue (packets) ──> device.rs ──> muxer.rs ──> connection.rs ──> Unix stream
//!  rx queue (buffers) <── device.rs <── muxer.rs <── connection.rs <── Unix stream
//!  event queue        <── transport reset, after a restore
//!                                        muxer.rs <── `uds_path` listener (CONNECT <port>)
//!                                        muxer.rs ──> `<uds_path>_<port>` (guest connects)
//!
//!   packet.rs      the 44-byte header, and a transmit chain split into header and data
//!   connection.rs  one connection's handshake, shutdowns and credit
//!   stats.rs       the `vsock` metrics group
//! ```
//!
//! The guest is not trusted: a malformed chain or packet costs it that packet (its chain
//! returned with used length 0), a packet for no connection gets a reset, and a guest that
//! ignores its credit loses the connection; none of it is a host panic or unbounded memory.

mod connection;
mod device;
mod muxer;
mod packet;
mod stats;

pub use device::{Vsock, VsockError, VsockState, VsockStateError, QUEUE_SIZE};
pub use muxer::{Muxer, MuxerError, MAX_CONNECTIONS};
pub use packet::{split_tx, Header, PacketError, HDR_LEN, MAX_PKT_DATA};
pub use stats::VsockStats;
