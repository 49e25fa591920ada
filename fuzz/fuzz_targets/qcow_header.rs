//! A qcow2 image whose bytes are the fuzzer's input, opened read-only and writable, read and
//! written at a few offsets. Opening may fail; it must neither panic nor hang.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::block::test_utils::fuzz_qcow_image(data);
});
