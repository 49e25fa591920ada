//! Where the rings of split queues lie in guest memory, and the transport's check that no two
//! of them overlap.
//!
//! Rings that overlap rewrite each other: with the used ring two bytes into the available ring,
//! every change of the used flags moves the available index, and a device draining the queue
//! never finds it empty. A driver has no reason to lay rings over each other, so the transport
//! refuses such a set-up at activation. Each ring is sized from the queue size with its
//! event-index field (`used_event`, `avail_event`) counted whether or not EVENT_IDX is
//! negotiated, as Linux's `vring_size` does.

use virtio_queue::{Queue, QueueT};

/// One ring of one queue: which, and the guest bytes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ring {
    queue: usize,
    name: &'static str,
    start: u64,
    /// One past the last byte; saturated, as the transport checked the rings lie in memory.
    end: u64,
}

/// The three rings of queue number `index`.
fn rings(index: usize, queue: &Queue) -> [Ring; 3] {
    let size = u64::from(queue.size());
    let ring = |name, start: u64, len: u64| Ring {
        queue: index,
        name,
        start,
        end: start.saturating_add(len),
    };
    [
        ring("descriptor table", queue.desc_table(), 16 * size),
        // flags, idx, ring[size], used_event
        ring("available ring", queue.avail_ring(), 6 + 2 * size),
        // flags, idx, ring[size] of (id, len), avail_event
        ring("used ring", queue.used_ring(), 6 + 8 * size),
    ]
}

/// A sentence naming the first two rings of `queues` that share a byte, if any do.
pub(crate) fn find_overlap<'a>(queues: impl IntoIterator<Item = &'a Queue>) -> Option<String> {
    let all: Vec<Ring> = queues
        .into_iter()
        .enumerate()
        .flat_map(|(i, q)| rings(i, q))
        .collect();
    all.iter().enumerate().find_map(|(i, a)| {
        all.iter()
            .skip(i + 1)
            .find(|b| a.start < b.end && b.start < a.end)
            .map(|b| {
                format!(
                    "the {} of queue {} ({:#x}..{:#x}) overlaps the {} of queue {} \
                     ({:#x}..{:#x})",
                    a.name, a.queue, a.start, a.end, b.name, b.queue, b.start, b.end
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        assert_eq!(
            (q.desc_table(), q.avail_ring(), q.used_ring()),
            (desc, avail, used)
        );
        q
    }

    #[test]
    fn rings_laid_out_as_linux_does_pass() {
        // vring_init: descriptors, then the available ring, then the used ring page-aligned.
        let q = queue(256, 0x1_0000, 0x1_1000, 0x1_2000);
        assert_eq!(find_overlap([&q]), None);
        // Back to back, event fields included, is fine too.
        let q = queue(16, 0x1000, 0x1100, 0x1128);
        assert_eq!(find_overlap([&q]), None);
    }

    #[test]
    fn any_shared_byte_is_an_overlap() {
        for (desc, avail, used, what) in [
            (
                0x1000,
                0x2002,
                0x2004,
                "used ring two bytes into the available ring",
            ),
            (
                0x1000,
                0x10fe,
                0x3000,
                "available ring in the descriptor table's end",
            ),
            // used_event is the available ring's last field.
            (
                0x1000,
                0x2000,
                0x2024,
                "used ring on the available ring's used_event",
            ),
            // avail_event is the used ring's last field.
            (
                0x2000,
                0x1084,
                0x1000,
                "available ring on the used ring's avail_event",
            ),
            (0x1000, 0x1000, 0x3000, "the same address"),
        ] {
            let q = queue(16, desc, avail, used);
            assert!(find_overlap([&q]).is_some(), "{what}");
        }
    }

    #[test]
    fn rings_of_different_queues_must_not_overlap_either() {
        let rx = queue(16, 0x1000, 0x2000, 0x3000);
        let tx = queue(16, 0x4000, 0x5000, 0x3080);
        let overlap = find_overlap([&rx, &tx]).unwrap();
        assert!(
            overlap.contains("queue 0") && overlap.contains("queue 1"),
            "{overlap}"
        );
        let tx = queue(16, 0x4000, 0x5000, 0x6000);
        assert_eq!(find_overlap([&rx, &tx]), None);
    }
}
