//! Compressed clusters: the L2 descriptor and raw-deflate decompression (compression_type 0,
//! as QEMU writes it). Kiln reads compressed clusters but never writes one: a guest write to a
//! compressed cluster moves the cluster's data, decompressed, to a new cluster.
//!
//! ```text
//! compressed L2 entry, x = 62 - (cluster_bits - 8):
//!   x..61  sectors - 1: 512-byte sectors holding the data, counted from the one holding offset
//!   0..x-1 host byte offset of the compressed data (not aligned)
//! ```

use std::io;

use flate2::{Decompress, FlushDecompress, Status};

use super::corrupt;

/// Where a compressed cluster's data lies in the host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Compressed {
    /// The host byte offset of the compressed data.
    pub offset: u64,
    /// Its length in bytes, as far as the last sector it occupies.
    pub len: u64,
}

impl Compressed {
    /// Decodes the descriptor bits of a compressed L2 entry.
    pub fn decode(entry: u64, cluster_bits: u32) -> Compressed {
        let shift = 62 - (cluster_bits - 8);
        let offset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        Compressed {
            offset,
            len: sectors * 512 - (offset & 511),
        }
    }

    /// The host clusters the data touches, by offset: each counts one reference per compressed
    /// cluster stored in it.
    pub fn host_clusters(&self, cluster_bits: u32) -> impl Iterator<Item = u64> {
        let first = self.offset >> cluster_bits;
        let last = (self.offset + self.len - 1) >> cluster_bits;
        (first..=last).map(move |cluster| cluster << cluster_bits)
    }
}

/// Inflates raw deflate `input` into all of `out`. Trailing bytes after the stream (the rest of
/// the last sector) are ignored, as QEMU does; a stream that fills less than `out` is corrupt.
pub(super) fn inflate(input: &[u8], out: &mut [u8]) -> io::Result<()> {
    let mut inflater = Decompress::new(false);
    let status = inflater
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(|_| corrupt("a compressed cluster is not valid deflate data"))?;
    let filled = inflater.total_out() == out.len() as u64;
    match status {
        Status::StreamEnd | Status::Ok | Status::BufError if filled => Ok(()),
        _ => Err(corrupt(
            "a compressed cluster decompresses to less than a cluster",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn decodes_descriptors() {
        // 64 KiB clusters: x = 54, so 8 bits of sector count.
        let entry = 1u64 << 62 | 3 << 54 | 0x1_0a00;
        let c = Compressed::decode(entry, 16);
        assert_eq!(
            c,
            Compressed {
                offset: 0x1_0a00,
                len: 4 * 512
            }
        );
        let unaligned = Compressed::decode(1u64 << 62 | 0x1_0a10, 16);
        assert_eq!(unaligned.len, 512 - 0x10);
        // 2 MiB clusters: x = 49.
        let c = Compressed::decode(1u64 << 62 | 1 << 49 | 0x20_0000, 21);
        assert_eq!(
            c,
            Compressed {
                offset: 0x20_0000,
                len: 1024
            }
        );
        // 4 KiB clusters: the data may straddle two host clusters.
        let c = Compressed {
            offset: 0x1f00,
            len: 0x200,
        };
        assert_eq!(
            c.host_clusters(12).collect::<Vec<_>>(),
            vec![0x1000, 0x2000]
        );
    }

    #[test]
    fn inflates_raw_deflate_with_trailing_bytes() {
        let plain: Vec<u8> = (0..4096u32).map(|i| (i / 7) as u8).collect();
        let mut compressor = Compress::new(Compression::default(), false);
        let mut packed = vec![0u8; 8192];
        compressor
            .compress(&plain, &mut packed, FlushCompress::Finish)
            .unwrap();
        packed.truncate(compressor.total_out() as usize);
        packed.extend_from_slice(&[0xaa; 100]);
        let mut out = vec![0u8; 4096];
        inflate(&packed, &mut out).unwrap();
        assert_eq!(out, plain);
        let mut too_big = vec![0u8; 8192];
        assert!(inflate(&packed, &mut too_big).is_err());
        assert!(inflate(&[0xff; 64], &mut out).is_err());
    }
}
