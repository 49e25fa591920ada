//! The body of the `virtio_mmio` fuzz target: a guest driver made of untrusted bytes, talking to
//! a real virtio-block device (over a raw image file) or a real virtio-net device (over a
//! socket standing in for the tap) through the virtio-mmio transport's registers only. Built
//! for tests or with the `test-utils` feature.
//!
//! The input is a set-up byte and then a program. Set-up: bit 0 picks net (else block), bit 1 a
//! read-only disk, bit 2 names the disk's format as raw (else it is probed). Each operation
//! starts with an opcode byte (taken modulo 10) and its operands:
//!
//! | op | operands | what the driver does |
//! | --- | --- | --- |
//! | 0 | register/4, u32 | writes a transport register |
//! | 1 | register/4 | reads a transport register |
//! | 2 | register, length | a 1 to 8-byte access at any register offset, written and read |
//! | 3 | offset, length, bytes | writes and reads the config space |
//! | 4 | u16 address, length, bytes | writes guest memory (rings, descriptors, buffers) |
//! | 5 | u32 feature mask, then per queue: size, and three ring addresses / 256 | the whole start-up: ACKNOWLEDGE, DRIVER, features, FEATURES_OK, each queue, DRIVER_OK |
//! | 6 | queue | notifies a queue, and the device serves it as its event would |
//! | 7 | | writes status 0: a reset |
//! | 8 | length | a frame arrives on the tap (net), or a flush-free kick (block) |
//! | 9 | | reads and acknowledges the interrupt status |
//!
//! It must neither panic nor hang (every queue loop is budgeted), must not change a read-only
//! disk, and a probed raw disk must never end up with another format's magic in its first
//! sector.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crate::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::block::{format_magic, open_disk, Block, BlockConfig, CacheType, ImageFormat};
use super::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use super::net::test_utils::{SocketIo, Wire};
use super::net::{Net, NetConfig, VNET_HDR_LEN};
use super::{Interrupt, VirtioDevice};
use crate::BusDevice;

/// Guest memory of the fuzz body.
pub const MMIO_FUZZ_MEM_SIZE: usize = 0x1_0000;
/// Size of the block device's image file.
const DISK_LEN: usize = 16 * 512;
/// Operations run at most, so that one input costs bounded time.
const MAX_OPS: usize = 512;
/// Frame lengths (header excluded) the tap may deliver.
const FRAME_LENS: [usize; 4] = [14, 60, 1514, 9000];

/// The device behind the transport, kept typed so that its queues can be served.
enum Device {
    Block(Arc<Mutex<Block>>),
    Net(Arc<Mutex<Net>>, Wire),
}

/// The bytes of the program, read from the front; missing bytes read as zero.
struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// A raw image file for one run, removed when dropped.
struct TempImage(PathBuf);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a run got to, for tests that check a program reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioFuzzOutcome {
    /// The device status register at the end.
    pub status: u32,
    /// Block requests the device executed (read, write, flush or failed ones).
    pub block_requests: u64,
}

/// Runs one program; see the module doc. `None` if the set-up itself failed.
pub fn fuzz_mmio_transport(input: &[u8]) -> Option<MmioFuzzOutcome> {
    let mut program = Program(input);
    let setup = program.byte();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MMIO_FUZZ_MEM_SIZE)]).ok()?;
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).ok()?));
    let read_only = setup & 2 != 0;
    let format = (setup & 4 != 0).then_some(ImageFormat::Raw);
    let contents: Vec<u8> = (0..DISK_LEN).map(|i| (i / 512) as u8).collect();
    // One file per thread: the stable tests run this body on several threads.
    let image = TempImage(std::env::temp_dir().join(format!(
        "kiln-mmio-fuzz-{}-{:?}.img",
        std::process::id(),
        std::thread::current().id()
    )));
    let (device, transport) = if setup & 1 == 0 {
        std::fs::write(&image.0, &contents).ok()?;
        let config = BlockConfig {
            id: "fuzz".to_string(),
            read_only,
            cache: CacheType::Writeback,
        };
        let disk = open_disk(&image.0, read_only, format).ok()?;
        let block = Arc::new(Mutex::new(Block::new(disk, config).ok()?));
        let transport = MmioTransport::new(block.clone(), mem.clone(), interrupt.clone());
        (Device::Block(block), transport)
    } else {
        let (io, wire) = SocketIo::pair().ok()?;
        let config = NetConfig {
            mac: [6, 0, 0, 0, 0, 1],
            mtu: Some(1500),
            count_spoofed: true,
        };
        let net = Arc::new(Mutex::new(Net::with_frame_io(Box::new(io), config).ok()?));
        let transport = MmioTransport::new(net.clone(), mem.clone(), interrupt.clone());
        (Device::Net(net, wire), transport)
    };
    let mut driver = Driver {
        transport,
        device,
        mem,
    };
    for _ in 0..MAX_OPS {
        if program.0.is_empty() {
            break;
        }
        driver.step(&mut program);
    }
    let mut block_requests = 0;
    if let Device::Block(block) = &driver.device {
        let executed = ["read_count", "write_count", "flush_count", "execute_fails"];
        block_requests = lock(block)
            .stats()
            .snapshot()
            .iter()
            .filter(|(name, _)| executed.contains(name))
            .map(|(_, n)| n)
            .sum();
        let mut first = vec![0u8; 512];
        let on_disk = std::fs::File::open(&image.0).and_then(|f| f.read_exact_at(&mut first, 0));
        if on_disk.is_ok() {
            assert!(
                !read_only || std::fs::read(&image.0).ok() == Some(contents),
                "a read-only disk was written"
            );
            assert!(
                format.is_some() || format_magic(&first).is_none(),
                "a probed raw disk got an image header"
            );
        }
    }
    Some(MmioFuzzOutcome {
        status: driver.transport.status(),
        block_requests,
    })
}

/// The fuzzer's side of the transport.
struct Driver {
    transport: MmioTransport,
    device: Device,
    mem: GuestMemoryMmap,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Driver {
    fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn step(&mut self, p: &mut Program<'_>) {
        match p.byte() % 10 {
            0 => {
                let offset = u64::from(p.byte() & 0x3f) * 4;
                let value = p.u32();
                self.write(offset, value);
            }
            1 => {
                let offset = u64::from(p.byte() & 0x3f) * 4;
                self.read(offset);
            }
            2 => {
                let offset = u64::from(p.byte());
                let len = usize::from(p.byte() % 8) + 1;
                let data = p.bytes(len).to_vec();
                self.transport.write(offset, &data);
                let mut back = vec![0u8; len];
                self.transport.read(offset, &mut back);
            }
            3 => {
                let offset = 0x100 + u64::from(p.byte() % 32);
                let len = usize::from(p.byte() % 8) + 1;
                let data = p.bytes(len).to_vec();
                self.transport.write(offset, &data);
                let mut back = vec![0u8; len];
                self.transport.read(offset, &mut back);
            }
            4 => {
                let addr = GuestAddress(u64::from(p.u16()));
                let len = usize::from(p.byte());
                let data = p.bytes(len).to_vec();
                // Past the end of memory is the fuzzer's loss, not an error.
                let _ = self.mem.write_slice(&data, addr);
            }
            5 => self.start_up(p),
            6 => {
                let queue = u32::from(p.byte() % 2);
                self.write(NOTIFY_REG_OFFSET, queue);
                self.serve(queue);
            }
            7 => self.write(0x70, 0),
            8 => {
                let len = FRAME_LENS
                    .get(usize::from(p.byte()) % FRAME_LENS.len())
                    .copied()
                    .unwrap_or_default();
                if let Device::Net(_, wire) = &self.device {
                    let mut frame = vec![0u8; VNET_HDR_LEN + len];
                    frame.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
                    // A full socket drops the frame, as a busy tap would.
                    let _ = wire.send(&frame);
                }
                self.serve(0);
            }
            _ => {
                let pending = self.read(0x60);
                self.write(0x64, pending);
            }
        }
    }

    /// The start-up sequence a driver runs, with the features and rings from the program.
    fn start_up(&mut self, p: &mut Program<'_>) {
        use super::mmio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
        let mask = u64::from(p.u32()) | 1 << 32;
        self.write(0x70, ACKNOWLEDGE);
        self.write(0x70, ACKNOWLEDGE | DRIVER);
        let offered = {
            let mut halves = [0u32; 2];
            for (select, half) in halves.iter_mut().enumerate() {
                self.write(0x14, select as u32);
                *half = self.read(0x10);
            }
            u64::from(halves[0]) | u64::from(halves[1]) << 32
        };
        let features = offered & mask;
        for select in 0..2u32 {
            self.write(0x24, select);
            self.write(0x20, (features >> (32 * select)) as u32);
        }
        self.write(0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        let queues = match self.device {
            Device::Block(_) => 1,
            Device::Net(..) => 2,
        };
        for queue in 0..queues {
            self.write(0x30, queue);
            let size = 1u32 << (p.byte() % 9);
            self.write(0x38, size);
            for reg in [0x80, 0x90, 0xa0] {
                self.write(reg, u32::from(p.byte()) << 8);
                self.write(reg + 4, 0);
            }
            self.write(0x44, 1);
        }
        let status = self.read(0x70);
        self.write(0x70, status | DRIVER_OK);
    }

    /// Serves `queue` as the device's event-loop subscriber would on its queue event.
    fn serve(&mut self, queue: u32) {
        // Errors are expected: the program is garbage more often than not.
        match &self.device {
            Device::Block(block) => {
                let _ = lock(block).process_queue();
            }
            Device::Net(net, wire) => {
                let mut net = lock(net);
                let _ = if queue == 0 {
                    net.process_rx()
                } else {
                    net.process_tx()
                };
                // What the guest sent leaves the wire, so that the socket never fills for good.
                for _ in 0..64 {
                    if wire.recv().is_none() {
                        break;
                    }
                }
            }
        }
        drain_queue_events(&self.device);
    }
}

/// Empties the device's queue events, as the event loop's read of a fired event does.
fn drain_queue_events(device: &Device) {
    let evts: Vec<EventFd> = match device {
        Device::Block(block) => lock(block)
            .queue_events()
            .iter()
            .filter_map(|e| e.try_clone().ok())
            .collect(),
        Device::Net(net, _) => lock(net)
            .queue_events()
            .iter()
            .filter_map(|e| e.try_clone().ok())
            .collect(),
    };
    for evt in evts {
        // An empty counter reads as an error; either way it is empty now.
        let _ = evt.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

    /// Deterministic pseudo-random bytes: the hash of (seed, index).
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        (0..len).map(|i| hasher.hash_one((seed, i)) as u8).collect()
    }

    /// A program that starts the device with rings apart, puts a block write of sector
    /// `seed % 3` in the first queue, and kicks; then, with `tail`, random operations.
    fn plausible(seed: u64, net: bool, tail: bool) -> Vec<u8> {
        let mut p = vec![u8::from(net) | (seed as u8 & 6)];
        // Start-up: all features, size 16, rings at 0x1000/0x2000/0x3000 (and 0x4000.. for
        // the second queue).
        p.extend([5, 0xff, 0xff, 0xff, 0xff, 4, 0x10, 0x20, 0x30]);
        if net {
            p.extend([4, 0x40, 0x50, 0x60]);
        }
        let mut put = |addr: u16, data: &[u8]| {
            p.push(4);
            p.extend(addr.to_le_bytes());
            p.push(data.len() as u8);
            p.extend(data);
        };
        let mut header = vec![1, 0, 0, 0, 0, 0, 0, 0];
        header.extend((seed % 3).to_le_bytes());
        put(0x8000, &header);
        // Sector 0 gets a qcow2 magic now and then, which a probed disk must refuse.
        let mut data = bytes(seed, 64);
        if seed.is_multiple_of(4) {
            data[..4].copy_from_slice(b"QFI\xfb");
        }
        put(0x9000, &data);
        let desc = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = addr.to_le_bytes().to_vec();
            d.extend(len.to_le_bytes());
            d.extend(flags.to_le_bytes());
            d.extend(next.to_le_bytes());
            d
        };
        put(0x1000, &desc(0x8000, 16, 1, 1));
        put(0x1010, &desc(0x9000, 512, 1, 2));
        put(0x1020, &desc(0x9200, 1, 2, 0));
        put(0x2000, &[0, 0, 1, 0, 0, 0]);
        p.extend([6, 0, 6, 1, 8, 2, 9, 0]);
        if tail {
            p.extend(bytes(seed, 64));
        }
        p
    }

    #[test]
    fn fuzz_body_reaches_the_devices_through_the_registers() {
        use crate::virtio::mmio::status::{DEVICE_NEEDS_RESET, DRIVER_OK};
        for seed in 0..8 {
            for net in [false, true] {
                let outcome = fuzz_mmio_transport(&plausible(seed, net, false)).unwrap();
                assert_eq!(
                    outcome.status & (DRIVER_OK | DEVICE_NEEDS_RESET),
                    DRIVER_OK,
                    "seed {seed}, net {net}"
                );
                assert_eq!(outcome.block_requests, u64::from(!net), "seed {seed}");
            }
        }
    }

    #[test]
    fn fuzz_body_survives_plausible_and_random_programs() {
        for seed in 0..300u64 {
            fuzz_mmio_transport(&plausible(seed, seed % 2 == 1, true));
            fuzz_mmio_transport(&bytes(seed, 200 + (seed as usize % 7) * 100));
        }
    }
}
