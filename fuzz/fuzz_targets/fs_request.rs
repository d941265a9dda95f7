#![no_main]
//! FUSE requests of the fuzzer's making, served against a scratch share: first as a sequence of
//! raw requests (each as long as its header says, so a LOOKUP can feed the next request's node
//! id), then as descriptor chains on the virtio-fs device's two queues.

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;
use vmpod_devices::fs::abi::{opcode, InHeader, InitIn};
use vmpod_devices::fs::server::MAX_REPLY;
use vmpod_devices::fs::{FuseServer, VirtioFs};
use vmpod_devices::virtio::VirtioDevice;

/// A share of its own under TMPDIR (scripts/fuzz.sh gives each run a fresh TMPDIR).
fn share() -> &'static PathBuf {
    static SHARE: OnceLock<PathBuf> = OnceLock::new();
    SHARE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmpod-fuzz-fs-{}", std::process::id()));
        std::fs::create_dir_all(path.join("dir")).expect("fuzz share");
        std::fs::write(path.join("file"), b"fuzz").expect("fuzz share file");
        path
    })
}

fn init_request() -> Vec<u8> {
    let init = InitIn {
        major: 7,
        minor: 36,
        max_readahead: 0,
        flags: u32::MAX,
    };
    let header = InHeader {
        len: (std::mem::size_of::<InHeader>() + std::mem::size_of::<InitIn>()) as u32,
        opcode: opcode::INIT,
        unique: 1,
        ..Default::default()
    };
    [header.as_slice(), init.as_slice()].concat()
}

fuzz_target!(|data: &[u8]| {
    let mut server = FuseServer::new(share()).expect("fuzz server");
    let mut reply = Vec::new();
    server.handle(&init_request(), MAX_REPLY, &mut reply);
    let mut rest = data;
    while rest.len() >= 4 {
        let claimed = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let (request, tail) = rest.split_at(claimed.clamp(1, rest.len()));
        let room = 64 << 10;
        let n = server.handle(request, room, &mut reply);
        assert!(n <= room && n == reply.len(), "reply longer than its room");
        rest = tail;
    }

    let mut device = VirtioFs::new("fuzz", share()).expect("fuzz device");
    let (mem, mut queues) = vmpod_devices::testing::fuzzed::guest(data, 2);
    let _ = device.process_queue(0, &mut queues, &mem);
    let _ = device.process_queue(1, &mut queues, &mem);
});
