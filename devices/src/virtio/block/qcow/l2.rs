//! L1 and L2 entries: what a guest cluster maps to.
//!
//! ```text
//! L1 entry:  63 COPIED | 56..62 reserved | 9..55 L2 table offset | 0..8 reserved
//! L2 entry:  63 COPIED | 62 COMPRESSED | 0..61 descriptor
//!   standard:   56..61 reserved | 9..55 host cluster offset | 1..8 reserved | 0 reads as zeros
//!   compressed: see compressed.rs
//! ```

use std::io;

use super::compressed::Compressed;
use super::corrupt;

/// The offset bits of L1 and standard L2 entries.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The cluster's refcount is exactly 1, so it may be written in place.
pub(super) const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
/// Bits of a standard L2 entry that must be clear.
const RESERVED: u64 = 0x3f00_0000_0000_01fe;

/// What a guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mapping {
    /// Nothing here: the backing file's data, or zeros.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster, if any.
    Zero { host: Option<u64>, copied: bool },
    /// Data in the host cluster at `host`.
    Data { host: u64, copied: bool },
    /// Deflate-compressed data.
    Compressed(Compressed),
}

impl Mapping {
    /// Decodes an L2 entry of an image with `1 << cluster_bits`-byte clusters.
    pub fn decode(entry: u64, cluster_bits: u32) -> io::Result<Mapping> {
        if entry & COMPRESSED != 0 {
            return Ok(Mapping::Compressed(Compressed::decode(entry, cluster_bits)));
        }
        if entry & RESERVED != 0 {
            return Err(corrupt("an L2 entry has reserved bits set"));
        }
        let host = entry & OFFSET_MASK;
        let copied = entry & COPIED != 0;
        if host & ((1 << cluster_bits) - 1) != 0 {
            return Err(corrupt("an L2 entry points to an unaligned cluster"));
        }
        Ok(match (entry & ZERO != 0, host) {
            (true, 0) => Mapping::Zero { host: None, copied },
            (true, host) => Mapping::Zero {
                host: Some(host),
                copied,
            },
            (false, 0) => Mapping::Unallocated,
            (false, host) => Mapping::Data { host, copied },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_kind() {
        let decode = |entry| Mapping::decode(entry, 16).unwrap();
        assert_eq!(decode(0), Mapping::Unallocated);
        // COPIED on an unallocated entry means nothing.
        assert_eq!(decode(COPIED), Mapping::Unallocated);
        assert_eq!(
            decode(1),
            Mapping::Zero {
                host: None,
                copied: false
            }
        );
        assert_eq!(
            decode(COPIED | 0x5_0000 | 1),
            Mapping::Zero {
                host: Some(0x5_0000),
                copied: true
            }
        );
        assert_eq!(
            decode(COPIED | 0x7_0000),
            Mapping::Data {
                host: 0x7_0000,
                copied: true
            }
        );
        assert_eq!(
            decode(0x7_0000),
            Mapping::Data {
                host: 0x7_0000,
                copied: false
            }
        );
        assert!(matches!(
            decode(COMPRESSED | 0x1234),
            Mapping::Compressed(_)
        ));
    }

    #[test]
    fn refuses_unaligned_and_reserved() {
        assert!(Mapping::decode(0x7_0200, 16).is_err());
        assert!(Mapping::decode(0x7_0000 | 1 << 56, 16).is_err());
        assert!(Mapping::decode(0x7_0000 | 2, 16).is_err());
        // The same offset is aligned for 512-byte clusters.
        assert!(Mapping::decode(0x7_0200, 9).is_ok());
    }
}
