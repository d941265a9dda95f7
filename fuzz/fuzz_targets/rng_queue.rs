#![no_main]
//! virtio-rng over rings and buffers entirely of the fuzzer's making.

use libfuzzer_sys::fuzz_target;
use vmpod_devices::rng::Rng;
use vmpod_devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let (mem, mut queues) = vmpod_devices::testing::fuzzed::guest(data, 1);
    let _ = Rng::new().process_queue(0, &mut queues, &mem);
});
