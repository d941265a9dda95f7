#![no_main]
//! virtio-net tx and rx rings of the fuzzer's making, on a datagram pair standing in for a tap.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixDatagram;

use libfuzzer_sys::fuzz_target;
use vmpod_devices::net::{Net, Tap};
use vmpod_devices::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let (ours, theirs) = UnixDatagram::pair().expect("socket pair");
    theirs.set_nonblocking(true).expect("nonblocking");
    let _ = theirs.send(data.get(..64).unwrap_or(data));
    let tap = Tap::from_fd(ours.into_raw_fd()).expect("tap");
    let mut net = Net::new(tap, [6, 0, 0, 0, 0, 1]).expect("net");
    let (mem, mut queues) = vmpod_devices::testing::fuzzed::guest(data, 2);
    let _ = net.process_queue(1, &mut queues, &mem);
    let _ = net.process_backend(&mut queues, &mem);
});
