//! One vsock stream between a guest port and a host Unix socket: its state and the credit
//! accounting both directions depend on.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;

use super::packet::{Header, HOST_CID, OP_CREDIT_UPDATE, TYPE_STREAM};

/// Bytes of guest data we buffer for a host stream that is slow to read; the guest may never
/// have more than this in flight to us (it is the `buf_alloc` we advertise).
pub const BUF_ALLOC: u32 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host connected and asked for a guest port; we sent REQUEST and wait for RESPONSE.
    LocalInit,
    Established,
    /// The host side will send no more (EOF); we told the guest with SHUTDOWN(SEND). The
    /// guest may still send until it closes.
    HostClosed,
}

/// (our port, the guest's port)
pub type Key = (u32, u32);

pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    /// The guest's receive buffer and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we have sent to the guest.
    tx_cnt: u32,
    /// Bytes of guest data delivered to the host stream, and the value last told to the guest.
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// Guest data the host stream has not taken yet; never more than `BUF_ALLOC`.
    pending_out: Vec<u8>,
}

/// Why guest data cannot go on: the guest sent beyond its credit, or the host stream broke.
/// Either way the answer is a reset.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    CreditViolation,
    HostGone,
}

impl Connection {
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Connection {
        Connection {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            pending_out: Vec::new(),
        }
    }

    /// A header from us to the guest on this connection, carrying our credit.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Every guest packet carries its current credit.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// How many bytes the guest can take from us right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    pub fn sent_to_guest(&mut self, bytes: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(bytes);
    }

    /// Hands guest data to the host stream, buffering what it cannot take now. A guest that
    /// sends beyond the credit we gave it has broken the protocol.
    pub fn write_to_host(&mut self, data: &[u8]) -> Result<(), WriteError> {
        if self.pending_out.len() + data.len() > BUF_ALLOC as usize {
            return Err(WriteError::CreditViolation);
        }
        if self.pending_out.is_empty() {
            let written = write_nonblocking(&mut self.stream, data)?;
            self.delivered(written);
            self.pending_out.extend_from_slice(&data[written..]);
        } else {
            self.pending_out.extend_from_slice(data);
            self.flush_to_host();
        }
        Ok(())
    }

    /// Bytes written to the host stream (not guest data) — the "OK <port>" line.
    pub fn queue_host_line(&mut self, line: &[u8]) {
        self.pending_out.extend_from_slice(line);
        self.flush_to_host();
        // The line is ours, not guest data: take it back out of the credit count.
        self.fwd_cnt = self.fwd_cnt.wrapping_sub(line.len() as u32);
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Writes what is buffered; returns whether anything is still waiting.
    pub fn flush_to_host(&mut self) -> bool {
        if !self.pending_out.is_empty() {
            // A broken stream keeps its bytes; the next write_to_host reports it.
            let written = write_nonblocking(&mut self.stream, &self.pending_out).unwrap_or(0);
            self.pending_out.drain(..written);
            self.delivered(written);
        }
        !self.pending_out.is_empty()
    }

    fn delivered(&mut self, bytes: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(bytes as u32);
    }

    /// Whether the guest should hear about freed buffer space now: once half the buffer has
    /// drained since we last told it, or it would stall on a one-way transfer.
    pub fn needs_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 2
    }

    pub fn credit_update(&mut self, guest_cid: u64) -> Header {
        self.header(guest_cid, OP_CREDIT_UPDATE)
    }
}

/// Writes what the non-blocking stream takes now.
fn write_nonblocking(stream: &mut UnixStream, data: &[u8]) -> Result<usize, WriteError> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(WriteError::HostGone),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return Err(WriteError::HostGone),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (
            Connection::new(ours, State::Established, 1024, 5000),
            theirs,
        )
    }

    #[test]
    fn credit_is_what_the_guest_buffer_has_free() {
        let (mut conn, _) = pair();
        assert_eq!(conn.peer_credit(), 0, "no credit before the guest says so");
        conn.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Header::default()
        });
        conn.sent_to_guest(600);
        assert_eq!(conn.peer_credit(), 400);
        conn.update_peer_credit(&Header {
            buf_alloc: 1000,
            fwd_cnt: 500,
            ..Header::default()
        });
        assert_eq!(conn.peer_credit(), 900);
    }

    #[test]
    fn counters_survive_wrapping() {
        let (mut conn, _) = pair();
        conn.tx_cnt = u32::MAX - 10;
        conn.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: u32::MAX - 20,
            ..Header::default()
        });
        conn.sent_to_guest(20); // wraps
        assert_eq!(conn.peer_credit(), 70);
    }

    #[test]
    fn guest_data_reaches_the_host_and_counts_as_forwarded() {
        let (mut conn, mut host) = pair();
        conn.write_to_host(b"hello").unwrap();
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(conn.header(3, OP_CREDIT_UPDATE).fwd_cnt, 5);
    }

    #[test]
    fn a_guest_overrunning_its_credit_is_caught() {
        let (mut conn, _host) = pair();
        // Nobody reads the host end: the socket buffer fills, then ours.
        let chunk = vec![7u8; 64 << 10];
        let mut result = Ok(());
        for _ in 0..64 {
            result = conn.write_to_host(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(WriteError::CreditViolation));
        assert!(conn.pending_out.len() <= BUF_ALLOC as usize);
    }

    #[test]
    fn a_closed_host_end_is_reported() {
        let (mut conn, host) = pair();
        drop(host);
        assert_eq!(conn.write_to_host(b"x"), Err(WriteError::HostGone));
    }

    #[test]
    fn credit_update_is_due_after_half_the_buffer_drained() {
        let (mut conn, mut host) = pair();
        let reader = std::thread::spawn(move || {
            let mut sink = vec![0u8; BUF_ALLOC as usize];
            host.read_exact(&mut sink).unwrap();
        });
        let chunk = vec![1u8; 32 << 10];
        let mut sent = 0;
        while !conn.needs_credit_update() {
            conn.write_to_host(&chunk).unwrap();
            while conn.flush_to_host() {}
            sent += chunk.len();
        }
        assert!(sent >= (BUF_ALLOC / 2) as usize);
        let _ = conn.credit_update(3);
        assert!(!conn.needs_credit_update());
        while sent < BUF_ALLOC as usize {
            conn.write_to_host(&chunk).unwrap();
            while conn.flush_to_host() {}
            sent += chunk.len();
        }
        reader.join().unwrap();
    }
}
