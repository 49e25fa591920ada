//! virtio-net: a network interface for the guest, backed by a tap device on the host.
//!
//! ```text
//!             guest                                   host
//!  rx queue (buffers) <── rx.rs  <── pending frame <── tap.rs  Tap (FrameIo) <── tap fd
//!  tx queue (frames)  ──> tx.rs  ──────────────────────> tap.rs  Tap (FrameIo) ──> tap fd
//!                          │
//!   device.rs  Net: features, config space, activation, the event-loop subscriber
//!   ring.rs    used-ring publication, interrupt suppression, the guest-error log
//! ```
//!
//! Frames carry the 12-byte `virtio_net_hdr_v1` end to end: the guest writes it, the tap takes
//! it as is (IFF_VNET_HDR), and the tap's header on received frames goes to the guest with only
//! `num_buffers` filled in. Checksum and segmentation offloads thus cost the device nothing.
//!
//! The guest is not trusted: a malformed chain costs it the frame and is returned with used
//! length 0, never a host panic.

mod device;
mod ring;
mod rx;
mod tap;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
mod tx;

pub use device::{tap_offload_flags, Net, NetConfig, NetError, NetState, NetStateError, NetStats};
pub use tap::{FrameIo, Tap, TapError};

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), the header on every frame.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame, header excluded: 64 KiB of segmentation offload plus the Ethernet header
/// and a VLAN tag, as Firecracker allows.
pub const MAX_FRAME_LEN: usize = 65_550;
