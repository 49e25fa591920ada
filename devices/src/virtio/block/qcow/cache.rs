//! A small least-recently-used cache of cluster-sized metadata tables (L2 tables, refcount
//! blocks), keyed by their host offset. Metadata is written through to the file as it changes,
//! so an evicted table never needs writing back.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Memory the caches of one image may hold, whatever its cluster size.
const CACHE_BYTES: usize = 8 << 20;
/// Tables each cache holds at most.
const MAX_TABLES: usize = 64;

#[derive(Debug)]
struct Entry {
    offset: u64,
    last_used: u64,
    data: Vec<u8>,
}

/// Cached tables of one kind.
#[derive(Debug)]
pub(super) struct TableCache {
    capacity: usize,
    clock: u64,
    entries: Vec<Entry>,
}

impl TableCache {
    /// A cache of tables `cluster_size` bytes long.
    pub fn new(cluster_size: usize) -> TableCache {
        TableCache {
            capacity: (CACHE_BYTES / cluster_size).clamp(1, MAX_TABLES),
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// The table at `offset`, read from `file` if it is not cached.
    pub fn load(&mut self, file: &File, offset: u64, len: usize) -> io::Result<&mut Vec<u8>> {
        self.clock += 1;
        if let Some(index) = self.entries.iter().position(|e| e.offset == offset) {
            let clock = self.clock;
            return match self.entries.get_mut(index) {
                Some(entry) => {
                    entry.last_used = clock;
                    Ok(&mut entry.data)
                }
                None => Err(io::Error::other("the table cache lost an entry")),
            };
        }
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, offset)?;
        self.insert(offset, data)
    }

    /// Caches `data` as the table at `offset`, evicting the least recently used table if full.
    pub fn insert(&mut self, offset: u64, data: Vec<u8>) -> io::Result<&mut Vec<u8>> {
        self.clock += 1;
        self.entries.retain(|e| e.offset != offset);
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries.push(Entry {
            offset,
            last_used: self.clock,
            data,
        });
        self.entries
            .last_mut()
            .map(|entry| &mut entry.data)
            .ok_or_else(|| io::Error::other("the table cache lost an entry"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut cache = TableCache::new(CACHE_BYTES / 2);
        assert_eq!(cache.capacity, 2);
        let file = File::open("/dev/zero").unwrap();
        cache.insert(1, vec![1]).unwrap();
        cache.insert(2, vec![2]).unwrap();
        assert_eq!(cache.load(&file, 1, 1).unwrap(), &vec![1]);
        cache.insert(3, vec![3]).unwrap();
        // 2 was the least recently used; reloading it reads the file (zeros).
        assert_eq!(cache.load(&file, 2, 1).unwrap(), &vec![0]);
        // Loading 2 evicted 1, used before 3 was inserted.
        assert_eq!(cache.load(&file, 3, 1).unwrap(), &vec![3]);
        assert_eq!(cache.load(&file, 1, 1).unwrap(), &vec![0]);
    }
}
