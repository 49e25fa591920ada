//! A virtio-net device serving a receive and a transmit queue whose descriptor tables, rings and
//! buffers are the fuzzer's bytes, with frames waiting on a socket standing in for the tap. It
//! must neither panic nor hang, nor count more frames than there were.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::virtio::net::test_utils::fuzz_net_queues(data);
});
