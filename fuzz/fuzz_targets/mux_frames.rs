#![no_main]
//! The serial channel's frame reader, on any bytes a guest could send the host: the hello is
//! searched for, then frames are read until the input ends or is refused. Nothing may panic,
//! and no payload is larger than the limit.

use libfuzzer_sys::fuzz_target;
use vmpod_protocol::mux::{find_hello, read_frame, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if !matches!(find_hello(&mut input), Ok(true)) {
        return;
    }
    while let Ok(Some((_, _, payload))) = read_frame(&mut input) {
        assert!(payload.len() <= MAX_PAYLOAD);
    }
});
