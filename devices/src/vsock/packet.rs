//! The virtio-vsock packet header: parsing what the guest sends, building what we send, and the
//! checks that make a guest's header safe to act on.

pub const HEADER_LEN: usize = 44;
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
/// Largest payload we accept in one guest packet (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: u32 = 64 << 10;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet shorter than its {HEADER_LEN}-byte header")]
    Short,
    #[error("packet from CID {0}, not the guest's")]
    WrongSource(u64),
    #[error("packet for CID {0}; only the host (2) is reachable")]
    WrongDestination(u64),
    #[error("socket type {0} is not a stream")]
    NotStream(u16),
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(u32),
    #[error("operation {0} carries a payload")]
    UnexpectedPayload(u16),
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| (u64::from(u32_at(o + 4)) << 32) | u64::from(u32_at(o));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header the guest sent before anything acts on it.
    pub fn validate(&self, guest_cid: u64) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::WrongSource(self.src_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::WrongDestination(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::NotStream(self.type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::UnknownOp(self.op));
        }
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::PayloadTooLarge(self.len));
        }
        if self.len != 0 && self.op != OP_RW {
            return Err(PacketError::UnexpectedPayload(self.op));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            buf_alloc: 4096,
            fwd_cnt: 7,
            flags: 0,
        }
    }

    #[test]
    fn header_round_trips_through_its_wire_form() {
        let h = guest_rw(100);
        assert_eq!(Header::parse(&h.to_bytes()), h);
        assert_eq!(&h.to_bytes()[0..8], &3u64.to_le_bytes());
        assert_eq!(&h.to_bytes()[30..32], &OP_RW.to_le_bytes());
    }

    #[test]
    fn a_well_formed_guest_packet_passes() {
        assert_eq!(guest_rw(100).validate(3), Ok(()));
    }

    #[test]
    fn bad_headers_are_named() {
        let mut h = guest_rw(0);
        h.src_cid = 2;
        assert_eq!(h.validate(3), Err(PacketError::WrongSource(2)));
        let mut h = guest_rw(0);
        h.dst_cid = 7;
        assert_eq!(h.validate(3), Err(PacketError::WrongDestination(7)));
        let mut h = guest_rw(0);
        h.type_ = 2;
        assert_eq!(h.validate(3), Err(PacketError::NotStream(2)));
        let mut h = guest_rw(0);
        h.op = 0;
        assert_eq!(h.validate(3), Err(PacketError::UnknownOp(0)));
        h.op = 99;
        assert_eq!(h.validate(3), Err(PacketError::UnknownOp(99)));
        assert_eq!(
            guest_rw(MAX_PAYLOAD + 1).validate(3),
            Err(PacketError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        let mut h = guest_rw(10);
        h.op = OP_REQUEST;
        assert_eq!(
            h.validate(3),
            Err(PacketError::UnexpectedPayload(OP_REQUEST))
        );
    }
}
