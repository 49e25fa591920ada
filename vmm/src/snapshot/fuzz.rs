//! The snapshot file's fuzz body, shared by the `snapshot_file` fuzz target and the unit test
//! that runs it on every build: the input as a whole file, and the input framed as a valid
//! header with a matching checksum, so that the fuzzer reaches the state decoder and, when a
//! state decodes, the parsing of its configuration. None of it may panic.

use super::file::{decode, frame};
use super::state::MicrovmState;
use crate::config::VmConfig;

/// Decodes `data` as a snapshot file, and as the state inside a well-framed one.
pub fn fuzz_snapshot_file(data: &[u8]) {
    let _ = decode::<MicrovmState>(data);
    if let Ok(state) = decode::<MicrovmState>(&frame(data)) {
        let _ = VmConfig::from_snapshot_json(&state.config);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use devices::legacy::{I8042State, KeyboardState};

    use super::*;
    use crate::snapshot::file::encode;
    use crate::snapshot::state::{DevicesState, MemoryRegionState};
    use crate::vstate::vcpu_state::VcpuState;
    use crate::vstate::vm_state::VmState;

    fn sample() -> MicrovmState {
        MicrovmState {
            config: r#"{"boot-source": {"kernel_image_path": "/k"}}"#.into(),
            memory: vec![MemoryRegionState {
                guest_addr: 0,
                size: 64 << 20,
            }],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: vec![VcpuState {
                cpuid: vec![Default::default(); 3],
                msrs: vec![Default::default(); 5],
                regs: Default::default(),
                sregs: Default::default(),
                xsave: Default::default(),
                xcrs: Default::default(),
                debug_regs: Default::default(),
                lapic: Default::default(),
                mp_state: Default::default(),
                vcpu_events: Default::default(),
                tsc_khz: Some(2_000_000),
            }],
            devices: DevicesState {
                serial: None,
                i8042: Some(I8042State {
                    ctr: 0x47,
                    output_port: 1,
                    last_write_was_command: false,
                    awaiting: None,
                    controller_reply: Some(0x55),
                    last_read: 0,
                    irq_line: false,
                    keyboard: KeyboardState {
                        out: vec![0xfa],
                        scan_set: 2,
                        scanning: true,
                        awaiting: None,
                        last_sent: 0xfa,
                    },
                }),
                virtio: Vec::new(),
            },
            frozen_drives: vec!["rootfs".into()],
        }
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn fuzz_body_holds_on_mutated_states_and_noise() {
        let file = encode(&sample()).unwrap();
        let decoded: MicrovmState = decode(&file).unwrap();
        assert_eq!(decoded.vcpus[0].tsc_khz, Some(2_000_000));
        fuzz_snapshot_file(&file);
        // The state without its framing: what `frame` gives the decoder.
        let body = file[22..file.len() - 8].to_vec();
        let mut rng = Rng(0x6b69_6c6e_736e_6170);
        for _ in 0..3000 {
            let mut input = body.clone();
            for _ in 0..=rng.below(4) {
                if input.is_empty() {
                    break;
                }
                let at = rng.below(input.len());
                match rng.below(3) {
                    0 => input[at] ^= 1 << rng.below(8),
                    1 => input.truncate(at),
                    _ => input.insert(at, rng.next() as u8),
                }
            }
            fuzz_snapshot_file(&input);
        }
        for _ in 0..500 {
            let noise: Vec<u8> = (0..rng.below(512)).map(|_| rng.next() as u8).collect();
            fuzz_snapshot_file(&noise);
        }
    }
}
