#![no_main]
//! virtio-blk requests of the fuzzer's making against a small writable disk.

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmpod_devices::block::Block;
use vmpod_devices::virtio::VirtioDevice;

fn disk() -> &'static PathBuf {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmpod-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 64 << 10]).expect("fuzz disk");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let read_only = data.last().is_some_and(|b| b & 1 == 1);
    let mut block = Block::open(disk(), read_only, Some("fuzz")).expect("open fuzz disk");
    let (mem, mut queues) = vmpod_devices::testing::fuzzed::guest(data, 1);
    let _ = block.process_queue(0, &mut queues, &mem);
});
