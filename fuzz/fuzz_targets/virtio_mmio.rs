//! A guest driver made of the fuzzer's bytes, driving a real virtio-block (over a raw image
//! file) or virtio-net (over a socket standing in for the tap) device through the virtio-mmio
//! registers: feature negotiation, queue set-up, activation, reset and kicks. It must neither
//! panic nor hang, nor change a read-only disk, nor let a probed raw disk get an image header.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::virtio::mmio_fuzz::fuzz_mmio_transport(data);
});
