//! Sequences of reads, writes, flushes and reopens on a qcow2 image, alone or over a raw and a
//! qcow2 backing file, checked against an in-memory model of the disk; or, when the input
//! corrupts the image's metadata first, checked only not to panic or hang.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::block::test_utils::fuzz_qcow_ops(data);
});
