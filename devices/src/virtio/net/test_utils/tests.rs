//! The fuzz body on generated input: queues that look like a driver's most of the time, with a
//! hostile driver's mistakes mixed in, and plain random bytes.

use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// xorshift64: deterministic, so a failure reproduces from its iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// An address in the data area, now and then anywhere at all.
    fn addr(&mut self) -> u64 {
        if self.one_in(20) {
            self.next()
        } else {
            FUZZ_DATA + self.below((FUZZ_MEM_SIZE as u64 - FUZZ_DATA) + 64)
        }
    }
}

fn put(image: &mut [u8], at: u64, bytes: &[u8]) {
    let at = at as usize;
    if let Some(dst) = image.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes up to 8 chains into the rings at `rings`; receive chains are device-writable.
fn chains(rng: &mut Rng, image: &mut [u8], rings: [u64; 3], size: u64, rx: bool) {
    let [avail, table, _] = rings;
    let (mut index, mut heads) = (0u64, Vec::new());
    while index < size && heads.len() < 8 {
        let len = (1 + rng.below(4)).min(size - index);
        heads.push(index as u16);
        for i in 0..len {
            let last = i + 1 == len;
            let mut flags = if rx { VRING_DESC_F_WRITE } else { 0 };
            if rng.one_in(20) {
                flags ^= VRING_DESC_F_WRITE;
            }
            let bytes = match rng.below(6) {
                0 => 12,
                1 => rng.below(12) as u32,
                2 => 1 + rng.below(2000) as u32,
                3 => 100,
                4 => 0x10000 + rng.below(64) as u32,
                _ => rng.next() as u32,
            };
            let mut next = index + i + 1;
            if !last || rng.one_in(30) {
                flags |= VRING_DESC_F_NEXT;
                if rng.one_in(20) {
                    next = rng.below(size + 2);
                }
            }
            let at = table + (index + i) * 16;
            put(image, at, &rng.addr().to_le_bytes());
            put(image, at + 8, &bytes.to_le_bytes());
            put(image, at + 12, &(flags as u16).to_le_bytes());
            put(image, at + 14, &(next as u16).to_le_bytes());
        }
        index += len;
    }
    for (i, head) in heads.iter().enumerate() {
        let head = if rng.one_in(30) {
            rng.next() as u16
        } else {
            *head
        };
        put(image, avail + 4 + 2 * i as u64, &head.to_le_bytes());
    }
    let avail_idx = if rng.one_in(20) {
        rng.next() as u16
    } else {
        heads.len() as u16
    };
    put(image, avail + 2, &avail_idx.to_le_bytes());
    let used_event = rng.below(10) as u16;
    put(image, avail + 4 + 2 * size, &used_event.to_le_bytes());
}

/// An input that looks like a driver's queues most of the time, so that frames get past the
/// chain checks, with the mistakes a hostile driver would make mixed in.
fn plausible_input(rng: &mut Rng) -> Vec<u8> {
    let size_bits = rng.below(9) as u8;
    let setup = size_bits | (rng.below(8) as u8) << 4;
    let mut image = vec![0u8; FUZZ_MEM_SIZE];
    for byte in &mut image[FUZZ_DATA as usize..] {
        *byte = rng.next() as u8;
    }
    chains(rng, &mut image, FUZZ_RX_RINGS, 1 << size_bits, true);
    chains(rng, &mut image, FUZZ_TX_RINGS, 1 << size_bits, false);
    let mut input = vec![setup, rng.next() as u8];
    input.extend_from_slice(&image);
    input
}

#[test]
fn the_fuzz_body_survives_plausible_queues() {
    let mut rng = Rng(0x6b69_6c6e_6e65_7431);
    for _ in 0..3000 {
        fuzz_net_queues(&plausible_input(&mut rng));
    }
}

#[test]
fn the_fuzz_body_survives_random_bytes() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..1000 {
        let len = rng.below(FUZZ_MEM_SIZE as u64 + 3) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fuzz_net_queues(&input);
    }
}

/// Seeds the corpus of `cargo fuzz run virtio_net` with generated queues, which reach frame
/// delivery far sooner than the fuzzer does from nothing.
#[test]
#[ignore = "writes files; run on demand, see fuzz/README.md"]
fn write_net_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtio_net");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(0x5eed);
    for i in 0..64 {
        let seed = plausible_input(&mut rng);
        std::fs::write(dir.join(format!("generated-{i:02}")), seed).unwrap();
    }
}

#[test]
fn generated_queues_get_frames_through_both_ways() {
    // The generator is only worth its time if frames pass the chain checks.
    let mut rng = Rng(0x6b69_6c6e_6e65_7431);
    let (mut received, mut sent) = (0, 0);
    for _ in 0..300 {
        if let Some(stats) = fuzz_net_queues(&plausible_input(&mut rng)) {
            received += stats.rx_packets();
            sent += stats.tx_packets();
        }
    }
    assert!(
        received > 20 && sent > 20,
        "received {received}, sent {sent}"
    );
}
