//! Refcounts and cluster allocation: the refcount table (held in memory), the refcount blocks
//! it points to (cached), the packing of entries of 1 to 64 bits, and the allocator that hands
//! out clusters at the end of the file.
//!
//! Every change is written through before the caller may use its result: a new cluster's
//! refcount is on disk before any pointer to the cluster is written, and a new refcount block is
//! on disk (counting itself) before the table entry that points to it.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::cache::TableCache;
use super::header::{MAX_REFCOUNT_TABLE_BYTES, OFFSET_REFCOUNT_TABLE};
use super::{corrupt, entry_offset};

/// Reads entry `index` of a refcount block whose entries are `1 << order` bits wide.
/// Sub-byte entries are packed from the least significant bit, multi-byte ones big-endian.
pub(super) fn get_entry(block: &[u8], order: u32, index: usize) -> u64 {
    let (bytes, shift, mask) = locate(order, index);
    let mut value = 0u64;
    for byte in block.get(bytes).unwrap_or(&[]) {
        value = value << 8 | u64::from(*byte);
    }
    (value >> shift) & mask
}

/// Writes entry `index`; returns the bytes of `block` it changed.
pub(super) fn set_entry(block: &mut [u8], order: u32, index: usize, value: u64) -> Range<usize> {
    let (bytes, shift, mask) = locate(order, index);
    if let Some(slot) = block.get_mut(bytes.clone()) {
        let mut old = 0u64;
        for byte in slot.iter() {
            old = old << 8 | u64::from(*byte);
        }
        let new = (old & !(mask << shift)) | ((value & mask) << shift);
        let width = slot.len();
        for (i, byte) in slot.iter_mut().enumerate() {
            *byte = (new >> (8 * (width - 1 - i))) as u8;
        }
    }
    bytes
}

/// The bytes holding entry `index`, its shift within them, and its mask.
fn locate(order: u32, index: usize) -> (Range<usize>, u32, u64) {
    let bits = 1usize << order;
    if bits < 8 {
        let per_byte = 8 / bits;
        let byte = index / per_byte;
        let shift = ((index % per_byte) * bits) as u32;
        (byte..byte + 1, shift, (1u64 << bits) - 1)
    } else {
        let width = bits / 8;
        (index * width..(index + 1) * width, 0, max_refcount(order))
    }
}

/// The largest refcount an entry of `1 << order` bits holds.
pub(super) fn max_refcount(order: u32) -> u64 {
    u64::MAX >> (64 - (1u32 << order))
}

/// The refcounts of one image and its allocator.
#[derive(Debug)]
pub(super) struct Refcounts {
    order: u32,
    cluster_bits: u32,
    table: Vec<u64>,
    table_offset: u64,
    blocks: TableCache,
    /// Where the next cluster is allocated: past everything in the file.
    next_free: u64,
    /// Counts changes to the table's entries, so that views of them know when to refresh.
    changes: u64,
}

impl Refcounts {
    /// The refcounts of an image whose refcount table (already bounds-checked) is `table` at
    /// `table_offset`, in a file of `file_len` bytes.
    pub fn new(
        order: u32,
        cluster_bits: u32,
        table: Vec<u64>,
        table_offset: u64,
        file_len: u64,
    ) -> Refcounts {
        let cluster_size = 1u64 << cluster_bits;
        Refcounts {
            order,
            cluster_bits,
            table,
            table_offset,
            blocks: TableCache::new(1 << cluster_bits),
            next_free: file_len.next_multiple_of(cluster_size),
            changes: 0,
        }
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in one refcount block.
    fn per_block(&self) -> u64 {
        (self.cluster_size() * 8) >> self.order
    }

    /// The block index and the entry index in it of the cluster at `offset`.
    fn position(&self, offset: u64) -> (usize, usize) {
        let cluster = offset >> self.cluster_bits;
        let block = usize::try_from(cluster / self.per_block()).unwrap_or(usize::MAX);
        (block, (cluster % self.per_block()) as usize)
    }

    /// The refcount of the cluster at host `offset`.
    pub fn get(&mut self, file: &File, offset: u64) -> io::Result<u64> {
        let (block, index) = self.position(offset);
        let block_offset = match self.table.get(block) {
            Some(entry) if *entry != 0 => {
                entry_offset(*entry, self.cluster_bits, "refcount block")?
            }
            _ => return Ok(0),
        };
        let data = self
            .blocks
            .load(file, block_offset, 1 << self.cluster_bits)?;
        Ok(get_entry(data, self.order, index))
    }

    /// Sets the refcount of the cluster at host `offset`, allocating its refcount block (and
    /// growing the table) first if needed.
    pub fn set(&mut self, file: &File, offset: u64, value: u64) -> io::Result<()> {
        if value > max_refcount(self.order) {
            return Err(corrupt("a refcount would overflow its entry"));
        }
        let (block, index) = self.position(offset);
        if block >= self.table.len() {
            self.grow_table(file, block)?;
        }
        let block_offset = match self.table.get(block) {
            Some(0) | None => self.new_block(file, block)?,
            Some(entry) => entry_offset(*entry, self.cluster_bits, "refcount block")?,
        };
        let order = self.order;
        let data = self
            .blocks
            .load(file, block_offset, 1 << self.cluster_bits)?;
        let changed = set_entry(data, order, index, value);
        let bytes = data.get(changed.clone()).unwrap_or(&[]);
        file.write_all_at(bytes, block_offset + changed.start as u64)
    }

    /// Adds `delta` (+1 or -1) to the refcount of the cluster at `offset`.
    pub fn adjust(&mut self, file: &File, offset: u64, increment: bool) -> io::Result<()> {
        let old = self.get(file, offset)?;
        let new = if increment {
            old.checked_add(1)
        } else {
            old.checked_sub(1)
        };
        let new = new.ok_or_else(|| corrupt("a refcount would wrap around"))?;
        self.set(file, offset, new)
    }

    /// The refcount table's entries: the offsets of the refcount blocks.
    pub fn table(&self) -> &[u64] {
        &self.table
    }

    /// How many times the table's entries have changed since the image was opened.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The host bytes the refcount table occupies.
    pub fn table_range(&self) -> Range<u64> {
        self.table_offset..self.table_offset + self.table.len() as u64 * 8
    }

    /// Takes `count` clusters past the end of the file without counting them.
    fn take(&mut self, count: u64) -> io::Result<u64> {
        let offset = self.next_free;
        self.next_free = count
            .checked_mul(self.cluster_size())
            .and_then(|len| offset.checked_add(len))
            .ok_or_else(|| corrupt("the image file would grow past 2^64 bytes"))?;
        Ok(offset)
    }

    /// Where the next cluster [`Refcounts::allocate`] returns lies.
    pub fn next_free(&self) -> u64 {
        self.next_free
    }

    /// Allocates one cluster: its refcount is 1 on disk when this returns.
    pub fn allocate(&mut self, file: &File) -> io::Result<u64> {
        let offset = self.take(1)?;
        self.set(file, offset, 1)?;
        Ok(offset)
    }

    /// Writes a new, empty refcount block for table entry `block` and points the table at it.
    fn new_block(&mut self, file: &File, block: usize) -> io::Result<u64> {
        let offset = self.take(1)?;
        let mut data = vec![0u8; 1 << self.cluster_bits];
        let (own_block, own_index) = self.position(offset);
        if own_block == block {
            set_entry(&mut data, self.order, own_index, 1);
        } else {
            // The block lies past the range it covers: count it in its own range's block,
            // before the table points at it.
            self.set(file, offset, 1)?;
        }
        file.write_all_at(&data, offset)?;
        self.blocks.insert(offset, data)?;
        let slot = self
            .table
            .get_mut(block)
            .ok_or_else(|| corrupt("a refcount block index is past the table"))?;
        *slot = offset;
        self.changes += 1;
        file.write_all_at(&offset.to_be_bytes(), self.table_offset + block as u64 * 8)?;
        Ok(offset)
    }

    /// Moves the refcount table to a larger copy at the end of the file, large enough for entry
    /// `needed` and for the blocks that count the new table itself.
    ///
    /// The old table stays valid until the header points to the new one: the new table is
    /// built (and its own clusters counted) in clusters nothing references yet, made durable,
    /// and only then does one 12-byte header write switch to it. A crash before that leaks the
    /// new clusters; after it, the old table's clusters.
    fn grow_table(&mut self, file: &File, needed: usize) -> io::Result<()> {
        let per_cluster = self.cluster_size() / 8;
        let cover = self.per_block() << self.cluster_bits;
        let mut entries = (self.table.len() as u64 * 2)
            .max(needed as u64 + 1)
            .next_multiple_of(per_cluster);
        loop {
            let clusters = entries / per_cluster;
            // The table, then at most a block per table cluster and one more past it.
            let end = self.next_free + (2 * clusters + 2) * self.cluster_size();
            if end / cover < entries {
                break;
            }
            entries += per_cluster;
        }
        if entries * 8 > MAX_REFCOUNT_TABLE_BYTES {
            return Err(corrupt("the refcount table would grow past 8 MiB"));
        }
        let clusters = entries / per_cluster;
        let old_offset = self.table_offset;
        let old_clusters = (self.table.len() as u64 * 8).div_ceil(self.cluster_size());
        let new_offset = self.take(clusters)?;
        self.table
            .resize(usize::try_from(entries).map_err(io::Error::other)?, 0);
        // From here on, table entries for new blocks go to the new table's clusters.
        self.table_offset = new_offset;
        self.changes += 1;
        for cluster in 0..clusters {
            self.set(file, new_offset + (cluster << self.cluster_bits), 1)?;
        }
        let bytes: Vec<u8> = self.table.iter().flat_map(|e| e.to_be_bytes()).collect();
        file.write_all_at(&bytes, new_offset)?;
        file.sync_data()?;
        let mut header = [0u8; 12];
        header[..8].copy_from_slice(&new_offset.to_be_bytes());
        header[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        file.write_all_at(&header, OFFSET_REFCOUNT_TABLE)?;
        file.sync_data()?;
        for cluster in 0..old_clusters {
            self.adjust(file, old_offset + (cluster << self.cluster_bits), false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_every_order_like_qemu() {
        // 1-bit entries: least significant bit first.
        let mut block = [0u8; 16];
        assert_eq!(set_entry(&mut block, 0, 9, 1), 1..2);
        assert_eq!(block[1], 0b10);
        // 2-bit and 4-bit entries.
        let mut block = [0u8; 16];
        set_entry(&mut block, 1, 5, 3);
        assert_eq!(block[1], 0b1100);
        set_entry(&mut block, 2, 1, 0xa);
        assert_eq!(block[0], 0xa0);
        // Multi-byte entries are big-endian.
        let mut block = [0u8; 16];
        assert_eq!(set_entry(&mut block, 4, 1, 0x1234), 2..4);
        assert_eq!(&block[2..4], &[0x12, 0x34]);
        set_entry(&mut block, 6, 1, 0x0102_0304_0506_0708);
        assert_eq!(&block[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        for order in 0..=6 {
            let mut block = [0u8; 64];
            let max = max_refcount(order);
            for index in 0..8 {
                set_entry(&mut block, order, index, max - index as u64 % 2);
            }
            for index in 0..8 {
                assert_eq!(
                    get_entry(&block, order, index),
                    max - index as u64 % 2,
                    "order {order}"
                );
            }
            // Values wider than the entry are cut, never spilling into a neighbour.
            set_entry(&mut block, order, 3, u64::MAX);
            assert_eq!(get_entry(&block, order, 2), max);
            assert_eq!(get_entry(&block, order, 4), max);
        }
        assert_eq!(max_refcount(0), 1);
        assert_eq!(max_refcount(4), 0xffff);
        assert_eq!(max_refcount(6), u64::MAX);
        // An entry past the block reads as zero.
        assert_eq!(get_entry(&[0xff; 2], 4, 5), 0);
    }
}
