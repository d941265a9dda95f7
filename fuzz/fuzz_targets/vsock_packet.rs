#![no_main]
//! The vsock header parser and its checks, on any 44 bytes a guest could send.

use libfuzzer_sys::fuzz_target;
use vmpod_devices::vsock::packet::{Header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = <[u8; HEADER_LEN]>::try_from(data.get(..HEADER_LEN).unwrap_or(&[])) {
        let header = Header::parse(&raw);
        let _ = header.validate(3);
        assert_eq!(Header::parse(&header.to_bytes()), header);
    }
});
