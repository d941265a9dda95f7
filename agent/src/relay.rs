//! One direction of a process's stdio: bytes from a source fd to a destination fd through a
//! bounded buffer, driven by readiness from the event loop (both fds are non-blocking).
//!
//! The relay never closes an fd itself: [`Relay::release`] hands over the ones it is done
//! with, so the event loop can take them out of epoll first (a pty master is dup'ed for both
//! directions, and epoll forgets an fd only when every dup of it is closed). For the same
//! reason a socket destination is shut down for writing when its source ends: a published
//! port's connection is dup'ed for its two relays, and closing one dup would never tell the
//! peer that this direction is over.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Enough for a pipe's worth per wake-up; bounds the agent's memory per stream.
const BUFFER: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Read,
    Write,
    Nothing,
}

#[derive(Debug)]
pub struct Relay {
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    buf: Vec<u8>,
    start: usize,
    src_done: bool,
    src_closed: bool,
    dst_closed: bool,
    /// The destination went away (reader closed): what still comes is read and dropped so the
    /// writer is never stuck on a full pipe.
    dst_dead: bool,
}

fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn write_fd(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // MSG_NOSIGNAL is not available for pipes; SIGPIPE is ignored by the agent instead.
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Tells a socket's peer that no more bytes come, whatever other dups of it stay open. Pipes
/// and ptys answer ENOTSOCK: closing them is their end of file. A peer already gone has
/// nothing to be told either.
fn end_of_stream(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown(2) on an fd we own; it touches no memory of ours.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Relay {
    pub fn new(src: Option<OwnedFd>, dst: Option<OwnedFd>) -> Self {
        Relay {
            src,
            dst,
            buf: Vec::new(),
            start: 0,
            src_done: false,
            src_closed: false,
            dst_closed: false,
            dst_dead: false,
        }
    }

    /// Reads `src` to its end and drops the bytes: output nobody asked for.
    pub fn discard(src: OwnedFd) -> Self {
        let mut relay = Relay::new(Some(src), None);
        relay.dst_dead = true;
        relay
    }

    pub fn src(&self) -> Option<BorrowedFd<'_>> {
        self.src
            .as_ref()
            .filter(|_| !self.src_closed)
            .map(|f| f.as_fd())
    }

    pub fn dst(&self) -> Option<BorrowedFd<'_>> {
        self.dst
            .as_ref()
            .filter(|_| !self.dst_closed)
            .map(|f| f.as_fd())
    }

    pub fn has_src(&self) -> bool {
        self.src.is_some() || self.src_closed
    }

    pub fn has_dst(&self) -> bool {
        self.dst.is_some() || self.dst_dead || self.dst_closed
    }

    /// The fds the relay is finished with, to be closed by the caller.
    pub fn release(&mut self) -> (Option<OwnedFd>, Option<OwnedFd>) {
        let src = if self.src_closed {
            self.src.take()
        } else {
            None
        };
        let dst = if self.dst_closed {
            self.dst.take()
        } else {
            None
        };
        (src, dst)
    }

    pub fn attach_src(&mut self, fd: OwnedFd) {
        self.src = Some(fd);
    }

    pub fn attach_dst(&mut self, fd: OwnedFd) {
        self.dst = Some(fd);
    }

    /// Stops feeding the destination: it is closed once what is buffered has been written.
    pub fn close_src(&mut self) {
        self.src_closed = true;
        self.src_done = true;
        self.finish_if_drained();
    }

    /// All bytes the source will ever give have been delivered (or dropped with a dead
    /// destination) and the destination is closed.
    pub fn is_done(&self) -> bool {
        self.src_done && self.buf.is_empty() && (self.dst_closed || self.dst.is_none())
    }

    /// Which readiness the relay waits for next. Reading stops while bytes wait to be
    /// written: that is the back-pressure that keeps the buffer bounded.
    pub fn want(&self) -> Want {
        if self.is_done() || !self.has_dst() {
            Want::Nothing
        } else if !self.buf.is_empty() {
            Want::Write
        } else if self.src().is_some() && !self.src_done {
            Want::Read
        } else {
            Want::Nothing
        }
    }

    fn finish_if_drained(&mut self) {
        if self.src_done && self.buf.is_empty() {
            self.src_closed = true;
            if !self.dst_closed && !self.dst_dead {
                if let Some(dst) = &self.dst {
                    end_of_stream(dst.as_fd());
                }
            }
            self.dst_closed = true;
        }
    }

    /// The source is readable (or hung up).
    pub fn on_readable(&mut self) {
        let Some(src) = self.src.as_ref().filter(|_| !self.src_closed) else {
            return;
        };
        self.buf.resize(BUFFER, 0);
        loop {
            match read_fd(src.as_fd(), &mut self.buf) {
                Ok(0) => {
                    self.buf.clear();
                    self.src_done = true;
                    break;
                }
                Ok(n) => {
                    self.buf.truncate(n);
                    self.start = 0;
                    if self.dst_dead {
                        self.buf.clear();
                        continue;
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if retry(&e) => {
                    self.buf.clear();
                    break;
                }
                // A pty master reads EIO once the last slave fd is closed: its end of file.
                Err(_) => {
                    self.buf.clear();
                    self.src_done = true;
                    break;
                }
            }
        }
        if !self.buf.is_empty() {
            self.on_writable();
        }
        self.finish_if_drained();
    }

    /// The destination is writable.
    pub fn on_writable(&mut self) {
        while self.start < self.buf.len() {
            let Some(dst) = self.dst.as_ref().filter(|_| !self.dst_closed) else {
                break;
            };
            match write_fd(dst.as_fd(), &self.buf[self.start..]) {
                Ok(n) => self.start += n,
                Err(e) if retry(&e) => return,
                Err(_) => {
                    // The reader is gone; keep draining the source into nothing.
                    self.dst_closed = true;
                    self.dst_dead = true;
                    break;
                }
            }
        }
        self.buf.clear();
        self.start = 0;
        self.finish_if_drained();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;
    use std::io::{Read, Write};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap()
    }

    fn drive(relay: &mut Relay) {
        for _ in 0..10_000 {
            match relay.want() {
                Want::Read => relay.on_readable(),
                Want::Write => relay.on_writable(),
                Want::Nothing => return,
            }
        }
        panic!("relay never settled");
    }

    #[test]
    fn bytes_arrive_exactly_and_eof_closes_the_destination() {
        let (src_r, src_w) = pipe();
        let (dst_r, dst_w) = pipe();
        let mut relay = Relay::new(Some(src_r), Some(dst_w));
        let mut w = std::fs::File::from(src_w);
        w.write_all(b"hello ").unwrap();
        relay.on_readable();
        w.write_all(b"world").unwrap();
        drop(w);
        drive(&mut relay);
        assert!(relay.is_done());
        let (src, dst) = relay.release();
        assert!(
            src.is_some() && dst.is_some(),
            "both ends are handed back to be closed"
        );
        drop(dst);
        let mut out = String::new();
        let mut r = std::fs::File::from(dst_r);
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn a_full_destination_stops_reading_until_it_drains() {
        let (src_r, src_w) = pipe();
        let (dst_r, dst_w) = pipe();
        let mut relay = Relay::new(Some(src_r), Some(dst_w));
        let mut w = std::fs::File::from(src_w);
        let mut r = std::fs::File::from(dst_r);
        let mut total_in = 0;
        let mut total_out = 0;
        let chunk = vec![7u8; 32 << 10];
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..64 {
            if let Ok(n) = w.write(&chunk) {
                total_in += n;
            }
            match relay.want() {
                Want::Read => relay.on_readable(),
                Want::Write => relay.on_writable(),
                Want::Nothing => {}
            }
            assert!(relay.buf.len() <= BUFFER);
            if total_in % 3 == 0 {
                total_out += r.read(&mut buf).unwrap_or(0);
            }
        }
        drop(w);
        loop {
            match relay.want() {
                Want::Read => relay.on_readable(),
                Want::Write => relay.on_writable(),
                Want::Nothing => break,
            }
            total_out += r.read(&mut buf).unwrap_or(0);
        }
        drop(relay.release());
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            total_out += n;
        }
        assert_eq!(total_in, total_out);
    }

    #[test]
    fn a_socket_destination_sees_eof_while_another_dup_of_it_stays_open() {
        let (src_r, src_w) = pipe();
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let other_direction = ours.try_clone().unwrap();
        let mut relay = Relay::new(Some(src_r), Some(OwnedFd::from(ours)));
        let mut w = std::fs::File::from(src_w);
        w.write_all(b"request").unwrap();
        drop(w);
        drive(&mut relay);
        assert!(relay.is_done());
        drop(relay.release());
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut out = String::new();
        peer.read_to_string(&mut out)
            .expect("end of file, not a timeout, though a dup is open");
        assert_eq!(out, "request");
        // The other direction still carries bytes back to the peer.
        let mut back = other_direction;
        back.set_nonblocking(false).unwrap();
        peer.write_all(b"reply").unwrap();
        let mut buf = [0u8; 5];
        back.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"reply");
    }

    #[test]
    fn a_vanished_reader_makes_the_relay_drain_and_finish() {
        let (src_r, src_w) = pipe();
        let (dst_r, dst_w) = pipe();
        drop(dst_r);
        let mut relay = Relay::new(Some(src_r), Some(dst_w));
        let mut w = std::fs::File::from(src_w);
        w.write_all(b"lost").unwrap();
        drop(w);
        drive(&mut relay);
        assert!(relay.is_done());
    }

    #[test]
    fn a_discarding_relay_drains_its_source_to_the_end() {
        let (src_r, src_w) = pipe();
        let mut relay = Relay::discard(src_r);
        let mut w = std::fs::File::from(src_w);
        w.write_all(&[1u8; 100_000]).unwrap_or(());
        drop(w);
        drive(&mut relay);
        assert!(relay.is_done());
    }

    #[test]
    fn nothing_moves_until_a_destination_is_attached() {
        let (src_r, src_w) = pipe();
        let (dst_r, dst_w) = pipe();
        let mut relay = Relay::new(Some(src_r), None);
        assert_eq!(relay.want(), Want::Nothing);
        std::fs::File::from(src_w).write_all(b"kept").unwrap();
        relay.attach_dst(dst_w);
        drive(&mut relay);
        drop(relay.release());
        let mut out = String::new();
        std::fs::File::from(dst_r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "kept");
    }
}
