//! A virtio-block device serving a queue whose descriptor table, rings and buffers are the
//! fuzzer's bytes. It must neither panic nor hang, nor change a read-only disk.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::block::test_utils::fuzz_block_queue(data);
});
