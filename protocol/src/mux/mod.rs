//! Many byte streams over one serial link. Where a VM's vsock device cannot be saved with it
//! (QEMU's vhost-user-vsock refuses migration, so a QEMU template has none), the host reaches
//! the agent over one virtio-serial port instead, and this multiplexer carries the same
//! connections vsock would: the host opens a stream to a guest port, both sides send bytes and
//! half-close, exactly as on a vsock stream.
//!
//! Wire format ([`codec`]): frames of a 9-byte header (stream id u32 LE, kind u8, payload
//! length u32 LE) and at most [`MAX_PAYLOAD`] bytes. A side may send a stream at most
//! [`WINDOW`] bytes the other has not acknowledged with a `Credit` frame, so one slow reader
//! never stalls the link and a peer that overruns its window is cut off instead of filling our
//! memory.
//!
//! A session starts with a `Hello` frame from the host, answered by one from the guest; each
//! side ignores everything before the other's hello. That is what lets a guest restored from a
//! template meet a new host: whatever the template's host left half-sent is skipped, and the
//! guest forgets every stream of the old session when the new hello arrives.
//!
//! [`session::Session`] is that protocol with no I/O of its own; the guest's agent drives it
//! from its one-threaded epoll loop (a thread there would break libcontainer's clone), the host
//! from threads ([`HostMux`]).

pub mod codec;
mod host;
pub mod session;

pub use codec::{Kind, MuxError, MAX_PAYLOAD, WINDOW};
pub use host::HostMux;
pub use session::{Event, Session, Side};

#[cfg(test)]
mod tests {
    use super::codec::{encode, find_hello, hello, read_frame};
    use super::*;
    use std::io::{BufReader, ErrorKind, Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// A guest on one end of a socket pair, driven by polling non-blocking sockets: its port 7
    /// echoes, port 9 refuses. Runs until the link ends.
    fn guest(link: UnixStream) {
        std::thread::spawn(move || {
            link.set_nonblocking(true).unwrap();
            let mut link = link;
            let mut session = Session::new(Side::Guest);
            // Each stream's guest end: an echo is the local socket writing back what it reads.
            let mut echoes: std::collections::HashMap<u32, Vec<u8>> = Default::default();
            let mut ended: Vec<u32> = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match link.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let _ = session.feed(&buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                while let Some(event) = session.poll_event() {
                    match event {
                        Event::OpenRequested { stream, port: 7 } => {
                            session.accept(stream);
                            echoes.insert(stream, Vec::new());
                        }
                        Event::OpenRequested { stream, .. } => session.refuse(stream),
                        Event::Reset => echoes.clear(),
                        _ => {}
                    }
                }
                for (&id, pending) in echoes.iter_mut() {
                    let inbound = session.inbound(id).to_vec();
                    session.consume_inbound(id, inbound.len());
                    pending.extend(inbound);
                    let n = session.send(id, pending);
                    pending.drain(..n);
                    if pending.is_empty() && session.peer_end_pending(id) {
                        session.end_delivered(id);
                        session.close(id);
                        ended.push(id);
                    }
                }
                for id in ended.drain(..) {
                    echoes.remove(&id);
                }
                while !session.output().is_empty() {
                    match link.write(session.output()) {
                        Ok(n) => session.consume_output(n),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(_) => return,
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    }

    fn open(host: &HostMux, port: u32) -> Option<UnixStream> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        host.open(port, theirs, Duration::from_secs(5))
            .unwrap()
            .then_some(ours)
    }

    #[test]
    fn streams_carry_bytes_both_ways_and_half_close() {
        let (h, g) = UnixStream::pair().unwrap();
        guest(g);
        let host = HostMux::start(h).unwrap();
        // More than the window, in several streams at once: credit must flow back.
        let payload: Vec<u8> = (0..3 * WINDOW).map(|i| (i % 251) as u8).collect();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mut s = open(&host, 7).expect("port 7 accepts");
                let payload = payload.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let p = payload.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&p).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    back == payload
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap(), "echoed bytes differ");
        }
        assert!(host.wait_idle(Duration::from_secs(5)), "streams left open");
    }

    #[test]
    fn a_port_nobody_listens_on_is_refused() {
        let (h, g) = UnixStream::pair().unwrap();
        guest(g);
        let host = HostMux::start(h).unwrap();
        assert!(open(&host, 9).is_none());
        assert!(open(&host, 7).is_some(), "the session survives a refusal");
    }

    #[test]
    fn a_guest_overrunning_its_window_loses_that_stream_only() {
        let (h, mut g) = UnixStream::pair().unwrap();
        let host = HostMux::start(h).unwrap();
        let mut r = BufReader::new(g.try_clone().unwrap());
        assert!(find_hello(&mut r).unwrap());
        g.write_all(&hello()).unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let opener = {
            let host = host.clone();
            std::thread::spawn(move || host.open(7, theirs, Duration::from_secs(5)))
        };
        let open = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((open.kind, open.u32_payload().unwrap()), (Kind::Open, 7));
        let id = open.stream;
        g.write_all(&encode(id, Kind::Opened, &[])).unwrap();
        assert!(opener.join().unwrap().unwrap());
        // Nobody reads `ours`: once its socket buffer is full nothing more is credited, and a
        // guest that keeps sending overflows the window. Four windows are more than the
        // socket buffer and one window together.
        let chunk = vec![0u8; MAX_PAYLOAD];
        let sent = 4 * WINDOW as usize;
        for _ in 0..sent / MAX_PAYLOAD {
            g.write_all(&encode(id, Kind::Data, &chunk)).unwrap();
        }
        assert!(host.wait_idle(Duration::from_secs(5)), "the stream stayed");
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        ours.read_to_end(&mut sink)
            .expect("the cut-off stream ends");
        assert!(sink.len() < sent, "all {sent} bytes arrived");
    }

    #[test]
    fn a_malformed_frame_from_the_guest_ends_the_hosts_session() {
        let (h, mut g) = UnixStream::pair().unwrap();
        let host = HostMux::start(h).unwrap();
        let mut r = BufReader::new(g.try_clone().unwrap());
        assert!(find_hello(&mut r).unwrap());
        g.write_all(&hello()).unwrap();
        g.write_all(b"\x01\x00\x00\x00\x63\x00\x00\x00\x00")
            .unwrap();
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match host.open(7, theirs.try_clone().unwrap(), Duration::from_millis(100)) {
                Err(e) => {
                    assert_eq!(e.to_string(), "the VM's serial link has ended");
                    return;
                }
                Ok(_) => assert!(std::time::Instant::now() < deadline, "the link lived on"),
            }
        }
    }
}
