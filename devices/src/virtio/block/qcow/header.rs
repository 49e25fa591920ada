//! The qcow2 header: the fixed fields at the start of the first cluster, the header extensions
//! that follow them (backing format, feature-name table; others skipped), the backing file
//! name, and the checks that decide whether Kiln can serve the image at all.
//!
//! Everything here is parsed from bytes an untrusted image supplies: each field is range-checked
//! before it sizes an allocation or names an offset.

use super::error::QcowError;

/// "QFI\xfb".
pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";
/// The length of a version 2 header, where version 3 adds its fields.
const V2_HEADER_LENGTH: u32 = 72;
/// The shortest version 3 header.
const V3_MIN_HEADER_LENGTH: u32 = 104;
/// Bytes the fixed fields need, compression_type included.
pub(super) const FIXED_HEADER_BYTES: usize = 112;
/// The largest L1 table QEMU opens (QCOW_MAX_L1_SIZE).
pub(super) const MAX_L1_BYTES: u64 = 32 << 20;
/// The largest refcount table QEMU opens or grows (QCOW_MAX_REFTABLE_SIZE).
pub(super) const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// The longest backing file name QEMU writes.
pub(super) const MAX_BACKING_NAME: u32 = 1023;

/// Header extension types (a u32 in front of each extension).
const EXT_END: u32 = 0;
pub(super) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;

/// Incompatible feature bits.
pub(super) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(super) const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2;

/// Byte offsets of the fields Kiln rewrites.
pub(super) const OFFSET_REFCOUNT_TABLE: u64 = 48;
pub(super) const OFFSET_INCOMPATIBLE: u64 = 72;
pub(super) const OFFSET_AUTOCLEAR: u64 = 88;

/// The parsed header and the extensions Kiln uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// The virtual disk size in bytes.
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub compression_type: u8,
    /// The backing file name, as raw bytes (a host path).
    pub backing_name: Option<Vec<u8>>,
    /// The backing format from extension 0xe2792aca.
    pub backing_format: Option<String>,
    /// (type, bit, name) entries from the feature-name table.
    feature_names: Vec<(u8, u8, String)>,
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    if let Some(src) = buf.get(at..at + 4) {
        bytes.copy_from_slice(src);
    }
    u32::from_be_bytes(bytes)
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    if let Some(src) = buf.get(at..at + 8) {
        bytes.copy_from_slice(src);
    }
    u64::from_be_bytes(bytes)
}

/// The cluster size of an image whose first bytes are `fixed`, once its magic, version and
/// cluster_bits are checked; the caller then reads that whole first cluster for [`Header::parse`].
pub(super) fn cluster_bits(fixed: &[u8]) -> Result<u32, QcowError> {
    if fixed.get(0..4) != Some(&MAGIC[..]) {
        return Err(QcowError::Magic);
    }
    let version = be_u32(fixed, 4);
    if version != 2 && version != 3 {
        return Err(QcowError::Version(version));
    }
    let cluster_bits = be_u32(fixed, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(QcowError::ClusterBits(cluster_bits));
    }
    Ok(cluster_bits)
}

impl Header {
    /// Parses the first cluster of an image (zero-padded past the end of a short file).
    pub fn parse(cluster: &[u8]) -> Result<Header, QcowError> {
        let cluster_bits = cluster_bits(cluster)?;
        let cluster_size = 1u64 << cluster_bits;
        let version = be_u32(cluster, 4);
        let mut header = Header {
            version,
            cluster_bits,
            size: be_u64(cluster, 24),
            crypt_method: be_u32(cluster, 32),
            l1_size: be_u32(cluster, 36),
            l1_table_offset: be_u64(cluster, 40),
            refcount_table_offset: be_u64(cluster, 48),
            refcount_table_clusters: be_u32(cluster, 56),
            nb_snapshots: be_u32(cluster, 60),
            incompatible: 0,
            autoclear: 0,
            refcount_order: 4,
            compression_type: 0,
            backing_name: None,
            backing_format: None,
            feature_names: Vec::new(),
        };
        let header_length = if version == 2 {
            V2_HEADER_LENGTH
        } else {
            header.incompatible = be_u64(cluster, 72);
            header.autoclear = be_u64(cluster, 88);
            header.refcount_order = be_u32(cluster, 96);
            let length = be_u32(cluster, 100);
            if length < V3_MIN_HEADER_LENGTH
                || !length.is_multiple_of(8)
                || u64::from(length) > cluster_size
            {
                return Err(QcowError::HeaderLength(length));
            }
            if length > V3_MIN_HEADER_LENGTH {
                header.compression_type = cluster.get(104).copied().unwrap_or(0);
            }
            length
        };
        if header.refcount_order > 6 {
            return Err(QcowError::RefcountOrder(header.refcount_order));
        }
        header.parse_extensions(cluster, header_length as usize)?;
        header.parse_backing_name(cluster, cluster_size)?;
        Ok(header)
    }

    /// Walks the extensions from the end of the fixed header to the end marker; each one must
    /// end inside the first cluster, so the walk ends there too.
    fn parse_extensions(&mut self, cluster: &[u8], mut at: usize) -> Result<(), QcowError> {
        while at + 8 <= cluster.len() {
            let kind = be_u32(cluster, at);
            let len = be_u32(cluster, at + 4) as usize;
            if kind == EXT_END {
                return Ok(());
            }
            let data = cluster
                .get(at + 8..)
                .and_then(|rest| rest.get(..len))
                .ok_or(QcowError::Extension { kind })?;
            match kind {
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(data).into_owned());
                }
                EXT_FEATURE_NAMES => {
                    self.feature_names = data
                        .chunks_exact(48)
                        .filter_map(|entry| match entry {
                            [kind, bit, name @ ..] => {
                                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                                let name = String::from_utf8_lossy(name.get(..end)?).into_owned();
                                Some((*kind, *bit, name))
                            }
                            _ => None,
                        })
                        .collect();
                }
                // Bitmaps, encryption, data file names and anything newer: not needed here.
                _ => {}
            }
            at += 8 + len.next_multiple_of(8);
        }
        Ok(())
    }

    fn parse_backing_name(&mut self, cluster: &[u8], cluster_size: u64) -> Result<(), QcowError> {
        let offset = be_u64(cluster, 8);
        let len = be_u32(cluster, 16);
        if offset == 0 {
            return Ok(());
        }
        let bad = QcowError::BackingName { offset, len };
        if len > MAX_BACKING_NAME || offset.saturating_add(u64::from(len)) > cluster_size {
            return Err(bad);
        }
        let start = usize::try_from(offset).map_err(|_| QcowError::BackingName { offset, len })?;
        let name = cluster.get(start..start + len as usize).ok_or(bad)?;
        if !name.is_empty() {
            self.backing_name = Some(name.to_vec());
        }
        Ok(())
    }

    /// Refuses the features Kiln does not implement, and those that forbid writing when the
    /// image is to be written.
    pub fn check_features(&self, writable: bool) -> Result<(), QcowError> {
        if self.crypt_method != 0 {
            return Err(QcowError::Encrypted(self.crypt_method));
        }
        if self.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(QcowError::ExternalDataFile);
        }
        if self.incompatible & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(QcowError::ExtendedL2);
        }
        let unknown = self.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(QcowError::UnknownIncompatible(self.describe_bits(unknown)));
        }
        match self.compression_type {
            0 => {}
            1 => return Err(QcowError::Zstd),
            other => return Err(QcowError::CompressionType(other)),
        }
        if writable {
            if self.nb_snapshots != 0 {
                return Err(QcowError::Snapshots(self.nb_snapshots));
            }
            if self.incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(QcowError::Corrupt);
            }
            // Kiln never sets the dirty bit, so it would need a refcount rebuild to write such
            // an image; refusing is the safe answer.
            if self.incompatible & INCOMPAT_DIRTY != 0 {
                return Err(QcowError::Dirty);
            }
        }
        Ok(())
    }

    /// "bit 5 'name', bit 9": incompatible bits named from the feature-name table when it can.
    fn describe_bits(&self, bits: u64) -> String {
        (0..64u8)
            .filter(|bit| bits & (1u64 << bit) != 0)
            .map(|bit| {
                match self
                    .feature_names
                    .iter()
                    .find(|(kind, b, _)| *kind == 0 && *b == bit)
                {
                    Some((_, _, name)) => format!("bit {bit} '{name}'"),
                    None => format!("bit {bit}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks the L1 and refcount tables against QEMU's limits, the virtual size and the file
    /// length, before anything sized by them is allocated.
    pub fn check_tables(&self, file_len: u64) -> Result<(), QcowError> {
        let cluster_size = 1u64 << self.cluster_bits;
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(QcowError::L1TooLarge {
                entries: self.l1_size,
                bytes: l1_bytes,
            });
        }
        check_table(
            "L1 table",
            self.l1_table_offset,
            l1_bytes,
            cluster_size,
            file_len,
        )?;
        let needed = self.l1_entries_for(self.size);
        if u64::from(self.l1_size) < needed {
            return Err(QcowError::L1TooSmall {
                l1_size: self.l1_size,
                size: self.size,
                needed,
            });
        }
        let refcount_bytes = u64::from(self.refcount_table_clusters) << self.cluster_bits;
        if refcount_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(QcowError::RefcountTableTooLarge {
                clusters: self.refcount_table_clusters,
                bytes: refcount_bytes,
            });
        }
        check_table(
            "refcount table",
            self.refcount_table_offset,
            refcount_bytes,
            cluster_size,
            file_len,
        )
    }

    /// The L1 entries that map the first `size` bytes of the disk: each maps one L2 table of
    /// cluster_size / 8 clusters.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        let per_l1 = 1u64 << (2 * self.cluster_bits - 3);
        size.div_ceil(per_l1)
    }
}

fn check_table(
    table: &'static str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), QcowError> {
    let fits = offset.is_multiple_of(cluster_size)
        && offset.checked_add(bytes).is_some_and(|end| end <= file_len)
        // A table at offset 0 would overlap the header.
        && (bytes == 0 || offset != 0);
    if fits {
        Ok(())
    } else {
        Err(QcowError::Table {
            table,
            offset,
            bytes,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A minimal v3 header for a 1 MiB disk with 64 KiB clusters.
    pub(crate) fn v3_header() -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4..8].copy_from_slice(&3u32.to_be_bytes());
        buf[20..24].copy_from_slice(&16u32.to_be_bytes());
        buf[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        buf[36..40].copy_from_slice(&1u32.to_be_bytes());
        buf[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        buf[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        buf[56..60].copy_from_slice(&1u32.to_be_bytes());
        buf[96..100].copy_from_slice(&4u32.to_be_bytes());
        buf[100..104].copy_from_slice(&112u32.to_be_bytes());
        buf
    }

    fn push_ext(buf: &mut [u8], at: usize, kind: u32, data: &[u8]) -> usize {
        buf[at..at + 4].copy_from_slice(&kind.to_be_bytes());
        buf[at + 4..at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
        buf[at + 8..at + 8 + data.len()].copy_from_slice(data);
        at + 8 + data.len().next_multiple_of(8)
    }

    #[test]
    fn parses_fixed_fields_and_extensions() {
        let mut buf = v3_header();
        let mut names = vec![0u8; 96];
        names[0] = 0;
        names[1] = 7;
        names[2..9].copy_from_slice(b"shiny-7");
        names[48] = 1;
        names[49] = 0;
        let at = push_ext(&mut buf, 112, EXT_BACKING_FORMAT, b"qcow2");
        push_ext(&mut buf, at, EXT_FEATURE_NAMES, &names);
        buf[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        buf[16..20].copy_from_slice(&8u32.to_be_bytes());
        buf[0x200..0x208].copy_from_slice(b"base.img");
        let header = Header::parse(&buf).unwrap();
        assert_eq!(header.cluster_bits, 16);
        assert_eq!(header.size, 1 << 20);
        assert_eq!(header.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(header.backing_name.as_deref(), Some(&b"base.img"[..]));
        assert_eq!(
            header.describe_bits(1 << 7 | 1 << 9),
            "bit 7 'shiny-7', bit 9"
        );
        header.check_tables(0x40000).unwrap();
        assert!(header.check_tables(0x30004).is_err());
    }

    #[test]
    fn version_2_has_fixed_defaults() {
        let mut buf = v3_header();
        buf[4..8].copy_from_slice(&2u32.to_be_bytes());
        // Bytes past 72 are extensions in v2: an end marker.
        buf[72..112].fill(0);
        let header = Header::parse(&buf).unwrap();
        assert_eq!((header.refcount_order, header.incompatible), (4, 0));
    }

    #[test]
    fn rejects_bad_fields() {
        let patch = |at: usize, bytes: &[u8]| {
            let mut buf = v3_header();
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            Header::parse(&buf)
        };
        assert!(matches!(patch(0, b"QFI\0"), Err(QcowError::Magic)));
        assert!(matches!(
            patch(4, &[0, 0, 0, 4]),
            Err(QcowError::Version(4))
        ));
        assert!(matches!(
            patch(20, &[0, 0, 0, 22]),
            Err(QcowError::ClusterBits(22))
        ));
        assert!(matches!(
            patch(96, &[0, 0, 0, 7]),
            Err(QcowError::RefcountOrder(7))
        ));
        assert!(matches!(
            patch(100, &[0, 0, 0, 100]),
            Err(QcowError::HeaderLength(100))
        ));
        // An extension whose length runs past the cluster.
        assert!(matches!(
            patch(112, &[0, 0, 0, 9, 0xff, 0, 0, 0]),
            Err(QcowError::Extension { kind: 9 })
        ));
        // A backing name longer than 1023 bytes, or past the first cluster.
        let mut buf = v3_header();
        buf[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        buf[16..20].copy_from_slice(&1024u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&buf),
            Err(QcowError::BackingName { .. })
        ));
        buf[8..16].copy_from_slice(&0xfff0u64.to_be_bytes());
        buf[16..20].copy_from_slice(&32u32.to_be_bytes());
        assert!(matches!(
            Header::parse(&buf),
            Err(QcowError::BackingName { .. })
        ));
    }

    #[test]
    fn small_l1_and_huge_tables_are_refused() {
        let mut header = Header::parse(&v3_header()).unwrap();
        header.size = 1 << 40;
        assert!(matches!(
            header.check_tables(1 << 20),
            Err(QcowError::L1TooSmall { .. })
        ));
        let mut header = Header::parse(&v3_header()).unwrap();
        header.refcount_table_clusters = u32::MAX;
        assert!(matches!(
            header.check_tables(u64::MAX),
            Err(QcowError::RefcountTableTooLarge { .. })
        ));
        let mut header = Header::parse(&v3_header()).unwrap();
        header.l1_size = u32::MAX;
        assert!(matches!(
            header.check_tables(u64::MAX),
            Err(QcowError::L1TooLarge { .. })
        ));
    }
}
