#![no_main]
//! The vsock muxer fed tx and rx rings of the fuzzer's making.

use libfuzzer_sys::fuzz_target;
use vmpod_devices::virtio::VirtioDevice;
use vmpod_devices::vsock::Vsock;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("vmpod-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let socket = dir.join("v.sock");
    let _ = std::fs::remove_file(&socket);
    let mut vsock = Vsock::new(3, &socket).expect("vsock");
    let (mem, mut queues) = vmpod_devices::testing::fuzzed::guest(data, 3);
    let _ = vsock.process_queue(1, &mut queues, &mem);
    let _ = vsock.process_queue(0, &mut queues, &mem);
});
