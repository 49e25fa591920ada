//! The read and write paths: guest byte ranges split at cluster boundaries, each cluster looked
//! up through L1 and L2, and new clusters allocated in the order the module doc gives.

use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;

use super::compressed::{inflate, Compressed};
use super::l2::{Mapping, COPIED, OFFSET_MASK};
use super::{corrupt, entry_offset, read_padded, QcowFile};

fn read_only() -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        "the qcow2 image is open read-only",
    )
}

/// Where one guest cluster's part of a request lies.
struct Chunk {
    /// The guest offset of the cluster.
    cluster: u64,
    /// The offset of the part in the cluster.
    within: usize,
    /// The range of the part in the request's buffer.
    range: std::ops::Range<usize>,
}

impl QcowFile {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Splits `[offset, offset + len)` at cluster boundaries, once it is checked to lie on the
    /// disk.
    fn chunks(&self, offset: u64, len: usize) -> io::Result<Vec<Chunk>> {
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.size);
        if end.is_none() {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the request is past the end of the disk",
            ));
        }
        let mut chunks = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let within = (at & (self.cluster_size() - 1)) as usize;
            let n = (self.cluster_size() as usize - within).min(len - done);
            chunks.push(Chunk {
                cluster: at - within as u64,
                within,
                range: done..done + n,
            });
            done += n;
        }
        Ok(chunks)
    }

    /// The L1 and L2 indices of the guest cluster at `cluster`.
    fn indices(&self, cluster: u64) -> (usize, usize) {
        let l2_bits = self.cluster_bits - 3;
        let l1 = usize::try_from(cluster >> (self.cluster_bits + l2_bits)).unwrap_or(usize::MAX);
        let l2 = ((cluster >> self.cluster_bits) & ((1 << l2_bits) - 1)) as usize;
        (l1, l2)
    }

    /// The L2 table offset in L1 entry `l1`, or `None` if there is no table.
    fn l2_table(&self, l1: usize) -> io::Result<Option<u64>> {
        match self.l1.get(l1).map(|entry| entry & OFFSET_MASK) {
            None | Some(0) => Ok(None),
            Some(offset) => entry_offset(offset, self.cluster_bits, "L2 table").map(Some),
        }
    }

    /// What the guest cluster at `cluster` maps to.
    fn mapping(&mut self, cluster: u64) -> io::Result<Mapping> {
        let (l1, l2) = self.indices(cluster);
        let Some(table) = self.l2_table(l1)? else {
            return Ok(Mapping::Unallocated);
        };
        let data = self
            .l2_cache
            .load(&self.file, table, 1 << self.cluster_bits)?;
        let mut entry = [0u8; 8];
        entry.copy_from_slice(data.get(l2 * 8..l2 * 8 + 8).unwrap_or(&[0; 8]));
        Mapping::decode(u64::from_be_bytes(entry), self.cluster_bits)
    }

    pub(super) fn read_guest(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_usable()?;
        for chunk in self.chunks(offset, buf.len())? {
            let part = buf.get_mut(chunk.range).unwrap_or_default();
            let at = chunk.cluster + chunk.within as u64;
            match self.mapping(chunk.cluster)? {
                Mapping::Unallocated => self.read_backing(part, at)?,
                Mapping::Zero { .. } => part.fill(0),
                Mapping::Data { host, .. } => {
                    read_padded(&self.file, part, host + chunk.within as u64)?
                }
                Mapping::Compressed(compressed) => {
                    let data = self.decompress(compressed)?;
                    part.copy_from_slice(
                        data.get(chunk.within..chunk.within + part.len())
                            .unwrap_or_default(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Reads from the backing file; past its end, or without one, the disk reads as zeros.
    fn read_backing(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let Some(backing) = self.backing.as_mut() else {
            buf.fill(0);
            return Ok(());
        };
        let available = backing.len().saturating_sub(offset).min(buf.len() as u64) as usize;
        let (inside, past) = buf.split_at_mut(available);
        past.fill(0);
        if !inside.is_empty() {
            backing.read_at(inside, offset)?;
        }
        Ok(())
    }

    /// The decompressed cluster, from the one-cluster cache that serves reads smaller than a
    /// cluster.
    fn decompress(&mut self, compressed: Compressed) -> io::Result<&[u8]> {
        let cached = matches!(&self.last_compressed, Some((at, _)) if *at == compressed.offset);
        if !cached {
            let mut input = vec![0u8; compressed.len as usize];
            read_padded(&self.file, &mut input, compressed.offset)?;
            let mut out = vec![0u8; 1 << self.cluster_bits];
            inflate(&input, &mut out)?;
            self.last_compressed = Some((compressed.offset, out));
        }
        Ok(self
            .last_compressed
            .as_ref()
            .map(|(_, data)| data.as_slice())
            .unwrap_or_default())
    }

    pub(super) fn write_guest(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_usable()?;
        if self.read_only {
            return Err(read_only());
        }
        for chunk in self.chunks(offset, buf.len())? {
            self.write_cluster(&chunk, buf.get(chunk.range.clone()).unwrap_or_default())?;
        }
        Ok(())
    }

    fn write_cluster(&mut self, chunk: &Chunk, data: &[u8]) -> io::Result<()> {
        let mapping = self.mapping(chunk.cluster)?;
        if let Mapping::Data { host, copied: true } = mapping {
            self.check_data_write(host)?;
            return self.file.write_all_at(data, host + chunk.within as u64);
        }
        // Anything else gets a whole new cluster: the old contents merged with the write.
        let mut cluster = vec![0u8; 1 << self.cluster_bits];
        if data.len() < cluster.len() {
            match mapping {
                Mapping::Unallocated => self.read_backing(&mut cluster, chunk.cluster)?,
                Mapping::Zero { .. } => {}
                Mapping::Data { host, .. } => read_padded(&self.file, &mut cluster, host)?,
                Mapping::Compressed(compressed) => {
                    cluster.copy_from_slice(self.decompress(compressed)?)
                }
            }
        }
        cluster
            .get_mut(chunk.within..chunk.within + data.len())
            .ok_or_else(|| corrupt("a write does not fit its cluster"))?
            .copy_from_slice(data);
        let host = match mapping {
            // A preallocated zero cluster that is this image's alone: reuse it.
            Mapping::Zero {
                host: Some(host),
                copied: true,
            } => {
                self.check_data_write(host)?;
                host
            }
            _ => self.allocate_data()?,
        };
        self.file.write_all_at(&cluster, host)?;
        self.set_l2_entry(chunk.cluster, host | COPIED)?;
        self.release(mapping)
    }

    /// Drops the reference the old mapping of a rewritten cluster held.
    fn release(&mut self, old: Mapping) -> io::Result<()> {
        let cluster_bits = self.cluster_bits;
        let clusters: Vec<u64> = match old {
            Mapping::Compressed(compressed) => {
                self.last_compressed = None;
                compressed.host_clusters(cluster_bits).collect()
            }
            Mapping::Data {
                host,
                copied: false,
            }
            | Mapping::Zero {
                host: Some(host),
                copied: false,
            } => vec![host],
            _ => Vec::new(),
        };
        for host in clusters {
            self.unreference(host)?;
        }
        Ok(())
    }

    /// Allocates a cluster whose refcount is 1 on disk.
    fn allocate(&mut self) -> io::Result<u64> {
        let refcounts = self.refcounts.as_mut().ok_or_else(read_only)?;
        refcounts.allocate(&self.file)
    }

    /// Allocates a cluster for guest data, once it is checked not to be metadata: a corrupt
    /// table may name a cluster past the end of the file, where new clusters go. The check
    /// comes first, so a refused write leaves the refcounts as they were.
    fn allocate_data(&mut self) -> io::Result<u64> {
        let next = self.refcounts.as_ref().ok_or_else(read_only)?.next_free();
        self.check_data_write(next)?;
        let host = self.allocate()?;
        if host != next {
            return Err(corrupt("the allocator placed a data cluster out of order"));
        }
        Ok(host)
    }

    /// Drops one reference to the host cluster at `host`.
    fn unreference(&mut self, host: u64) -> io::Result<()> {
        let refcounts = self.refcounts.as_mut().ok_or_else(read_only)?;
        refcounts.adjust(&self.file, host, false)
    }

    /// Points the guest cluster at `cluster` to `entry`, allocating its L2 table if needed:
    /// a new table is written whole before the L1 entry that points to it.
    fn set_l2_entry(&mut self, cluster: u64, entry: u64) -> io::Result<()> {
        let (l1, l2) = self.indices(cluster);
        let bytes = entry.to_be_bytes();
        if let Some(table) = self.l2_table(l1)? {
            if self.l1.get(l1).is_some_and(|e| e & COPIED == 0) {
                return Err(corrupt(
                    "an L2 table shared with a snapshot cannot be written",
                ));
            }
            let data = self
                .l2_cache
                .load(&self.file, table, 1 << self.cluster_bits)?;
            if let Some(slot) = data.get_mut(l2 * 8..l2 * 8 + 8) {
                slot.copy_from_slice(&bytes);
            }
            return self.file.write_all_at(&bytes, table + l2 as u64 * 8);
        }
        let table = self.allocate()?;
        let mut data = vec![0u8; 1 << self.cluster_bits];
        if let Some(slot) = data.get_mut(l2 * 8..l2 * 8 + 8) {
            slot.copy_from_slice(&bytes);
        }
        self.file.write_all_at(&data, table)?;
        self.l2_cache.insert(table, data)?;
        let slot = self
            .l1
            .get_mut(l1)
            .ok_or_else(|| corrupt("a write is past the L1 table"))?;
        *slot = table | COPIED;
        self.metadata_index = None;
        self.file.write_all_at(
            &(table | COPIED).to_be_bytes(),
            self.l1_offset + l1 as u64 * 8,
        )
    }
}
