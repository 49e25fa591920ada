//! The snapshot file: a header, the state, and a checksum.
//!
//! ```text
//! magic "KILNSNAP" (8 bytes) | version: major, minor, patch (u16 LE each) |
//! state length (u64 LE) | state (bitcode) | CRC-64 of all that precedes (u64 LE)
//! ```
//!
//! A file is read whole (a state is kilobytes; guest memory is in its own file) and checked in
//! that order before anything in it is used: its length, the magic (a foreign file), the
//! version (a newer or incompatible one), the checksum (a corrupted one), and only then the
//! state is decoded. Nothing in a file can make decoding panic or allocate without bound: the
//! decoder's lengths are bounded by the bytes it has.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a Kiln snapshot file starts with.
const MAGIC: [u8; 8] = *b"KILNSNAP";
/// The format version this build writes and reads: a file of another major version, or of a
/// later minor version, is refused.
pub const SNAPSHOT_VERSION: Version = Version {
    major: 1,
    minor: 0,
    patch: 0,
};
/// Magic, version, state length.
const HEADER_LEN: usize = 8 + 6 + 8;
/// The checksum.
const CRC_LEN: usize = 8;
/// The largest state file read: far above any state (a few KiB per vCPU and device), and small
/// enough to read whole.
const MAX_FILE_LEN: u64 = 64 << 20;

/// A snapshot format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Incompatible changes.
    pub major: u16,
    /// Additions an older reader cannot take.
    pub minor: u16,
    /// Changes that do not change the format.
    pub patch: u16,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file could not be opened, read or written.
    #[error("Cannot {what} the snapshot file {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// Larger than any snapshot state.
    #[error("The snapshot file is {0} bytes, larger than any snapshot state.")]
    TooLarge(u64),
    /// Shorter than its header says.
    #[error("The snapshot file is truncated: {len} bytes, {wanted} expected.")]
    Truncated { len: usize, wanted: usize },
    /// Longer than its header says.
    #[error("The snapshot file has {0} bytes after its end.")]
    TrailingBytes(usize),
    /// Not a Kiln snapshot.
    #[error("The file is not a Kiln snapshot.")]
    Foreign,
    /// A version this build does not read.
    #[error("The snapshot's format version is {found}; this Kiln reads {supported} and older minor versions of it.")]
    Version { found: Version, supported: Version },
    /// The checksum does not match.
    #[error("The snapshot file is corrupted: its checksum is {stored:#018x}, its contents' is {computed:#018x}.")]
    Checksum { stored: u64, computed: u64 },
    /// The state could not be encoded.
    #[error("Cannot encode the snapshot state: {0}")]
    Encode(bitcode::Error),
    /// The state does not decode as one this version writes.
    #[error("The snapshot state cannot be decoded: {0}")]
    Decode(bitcode::Error),
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(src) = bytes.get(at..at + 2) {
        b.copy_from_slice(src);
    }
    u16::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fn crc(bytes: &[u8]) -> u64 {
    crc64::crc64(0, bytes)
}

/// `state` as a snapshot file's bytes.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, SnapshotFileError> {
    let body = bitcode::serialize(state).map_err(SnapshotFileError::Encode)?;
    Ok(frame(&body))
}

/// An encoded state `body` framed as a snapshot file: header, body, checksum.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    for part in [
        SNAPSHOT_VERSION.major,
        SNAPSHOT_VERSION.minor,
        SNAPSHOT_VERSION.patch,
    ] {
        out.extend_from_slice(&part.to_le_bytes());
    }
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let sum = crc(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The version of the file `bytes`, once it is known to be a whole Kiln snapshot.
pub fn version(bytes: &[u8]) -> Result<Version, SnapshotFileError> {
    if !bytes.iter().zip(MAGIC).all(|(byte, magic)| *byte == magic) {
        return Err(SnapshotFileError::Foreign);
    }
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(SnapshotFileError::Truncated {
            len: bytes.len(),
            wanted: HEADER_LEN + CRC_LEN,
        });
    }
    Ok(Version {
        major: le_u16(bytes, 8),
        minor: le_u16(bytes, 10),
        patch: le_u16(bytes, 12),
    })
}

/// The state in the file `bytes`, checked as the module says.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotFileError> {
    let found = version(bytes)?;
    if found.major != SNAPSHOT_VERSION.major || found.minor > SNAPSHOT_VERSION.minor {
        return Err(SnapshotFileError::Version {
            found,
            supported: SNAPSHOT_VERSION,
        });
    }
    let body_len = le_u64(bytes, 14);
    let wanted = usize::try_from(body_len)
        .ok()
        .and_then(|len| len.checked_add(HEADER_LEN + CRC_LEN))
        .unwrap_or(usize::MAX);
    if bytes.len() < wanted {
        return Err(SnapshotFileError::Truncated {
            len: bytes.len(),
            wanted,
        });
    }
    if bytes.len() > wanted {
        return Err(SnapshotFileError::TrailingBytes(bytes.len() - wanted));
    }
    let (covered, stored) = bytes.split_at(wanted - CRC_LEN);
    let stored = le_u64(stored, 0);
    let computed = crc(covered);
    if stored != computed {
        return Err(SnapshotFileError::Checksum { stored, computed });
    }
    let body = covered.get(HEADER_LEN..).unwrap_or_default();
    bitcode::deserialize(body).map_err(SnapshotFileError::Decode)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotFileError {
    let path = path.display().to_string();
    move |source| SnapshotFileError::Io { what, path, source }
}

/// Writes `state` to `path` as a snapshot file, and syncs it.
pub fn write<T: Serialize>(path: &Path, state: &T) -> Result<(), SnapshotFileError> {
    let bytes = encode(state)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io("create", path))?;
    file.write_all(&bytes).map_err(io("write", path))?;
    file.sync_all().map_err(io("sync", path))
}

/// Reads the snapshot file at `path` whole; it must be a regular file (or block device) no
/// larger than any state.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, SnapshotFileError> {
    let file = devices::host_file::open_data_file(path, std::fs::OpenOptions::new().read(true))
        .map_err(io("open", path))?;
    let len = file.metadata().map_err(io("read", path))?.len();
    if len > MAX_FILE_LEN {
        return Err(SnapshotFileError::TooLarge(len));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, MAX_FILE_LEN + 1),
        &mut bytes,
    )
    .map_err(io("read", path))?;
    Ok(bytes)
}

/// Reads and decodes the snapshot file at `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotFileError> {
    decode(&read_bytes(path)?)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Vec<u8> {
        encode(&Sample {
            name: "vm".into(),
            values: vec![1, 2, 3],
        })
        .unwrap()
    }

    #[test]
    fn a_state_round_trips() {
        let decoded: Sample = decode(&sample()).unwrap();
        assert_eq!(decoded.values, [1, 2, 3]);
        assert_eq!(version(&sample()).unwrap(), SNAPSHOT_VERSION);
        assert_eq!(SNAPSHOT_VERSION.to_string(), "v1.0.0");
    }

    #[test]
    fn truncated_corrupted_foreign_and_newer_files_are_refused() {
        let good = sample();
        for len in [0, 4, HEADER_LEN, good.len() - 1] {
            let err = decode::<Sample>(&good[..len]).unwrap_err();
            assert!(
                matches!(err, SnapshotFileError::Truncated { .. }),
                "{len}: {err}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Sample>(&longer),
            Err(SnapshotFileError::TrailingBytes(1))
        ));
        for at in [HEADER_LEN, good.len() - 3] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x40;
            let err = decode::<Sample>(&flipped).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("The snapshot file is corrupted"),
                "{err}"
            );
        }
        let mut foreign = good.clone();
        foreign[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        assert!(matches!(
            decode::<Sample>(&foreign),
            Err(SnapshotFileError::Foreign)
        ));
        assert!(matches!(
            decode::<Sample>(b"{}"),
            Err(SnapshotFileError::Foreign)
        ));
        for (at, bump) in [(8, 1u8), (10, 1)] {
            let mut newer = good.clone();
            newer[at] += bump;
            let err = decode::<Sample>(&newer).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "The snapshot's format version is {}; this Kiln reads v1.0.0 and older minor \
                     versions of it.",
                    version(&newer).unwrap()
                )
            );
        }
        // A stated length past any file is truncation, not an overflow.
        let mut huge = good.clone();
        huge[14..22].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&huge),
            Err(SnapshotFileError::Truncated { .. })
        ));
    }

    #[test]
    fn a_checksummed_state_of_another_shape_is_refused() {
        let other = encode(&(7u8, "x")).unwrap();
        assert!(matches!(
            decode::<Sample>(&other),
            Err(SnapshotFileError::Decode(_))
        ));
    }
}
