//! A snapshot file whose bytes are the fuzzer's input, decoded as it is and as the state of a
//! well-framed file (valid header and checksum). Decoding may fail; it must neither panic nor
//! allocate without bound.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm::snapshot::fuzz::fuzz_snapshot_file(data);
});
