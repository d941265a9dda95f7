#![no_main]
//! The protocol's decoder, on any bytes either peer could send: split into frames at arbitrary
//! points, each frame read as every message type. Nothing may panic, and a frame is never
//! larger than the limit.

use libfuzzer_sys::fuzz_target;
use vmpod_protocol::frame::decode;
use vmpod_protocol::{AgentMessage, FrameDecoder, Request, StdioHello, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the stream is cut, as reads from a socket would cut it.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step.max(1));
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(step) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME);
                    let _ = decode::<Request>(&frame);
                    let _ = decode::<AgentMessage>(&frame);
                    let _ = decode::<StdioHello>(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
