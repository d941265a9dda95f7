#![no_main]
//! The serial channel's codec and session, on any bytes a peer could send: the decoder yields
//! frames no larger than the limit or a typed error, and a session of either side, fed the
//! same bytes in two pieces, never panics.

use libfuzzer_sys::fuzz_target;
use vmpod_protocol::mux::codec::{Decoder, MAX_PAYLOAD};
use vmpod_protocol::mux::{Session, Side};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    decoder.push(data);
    while let Ok(Some(frame)) = decoder.next_frame() {
        assert!(frame.payload.len() <= MAX_PAYLOAD);
    }
    let cut = data.first().map_or(0, |&b| b as usize).min(data.len());
    for side in [Side::Host, Side::Guest] {
        let mut session = Session::new(side);
        let _ = session.feed(&data[..cut]);
        let _ = session.feed(&data[cut..]);
        while session.poll_event().is_some() {}
    }
});
