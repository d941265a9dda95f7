//! The host's end of the serial link: a [`Session`] driven by threads (one reading the link,
//! two per stream), since the host side may block where the guest's agent may not.

use super::codec::MAX_PAYLOAD;
use super::session::{Event, Session, Side};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct State {
    session: Session,
    /// Each open stream's local socket, to be ended when the session drops the stream.
    locals: HashMap<u32, UnixStream>,
    /// The link is gone: nothing more will open.
    dead: bool,
}

struct Shared {
    /// The link's writing half; held while a batch of the session's output is written, so
    /// batches reach the link in the order the session queued them.
    link: Mutex<UnixStream>,
    state: Mutex<State>,
    changed: Condvar,
    /// Another handle on the link, to end it while a write may hold `link`.
    ender: UnixStream,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking pump thread must not take the whole link down with a poisoned lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a change until `deadline`; `None` once it has passed.
    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let (state, _) = self
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|p| p.into_inner());
        Some(state)
    }

    /// Acts on the session's events, wakes every waiter.
    fn settle(&self, state: &mut State) {
        while let Some(event) = state.session.poll_event() {
            match event {
                Event::CutOff { stream, .. } | Event::Refused { stream } => {
                    if let Some(local) = state.locals.remove(&stream) {
                        let _ = local.shutdown(Shutdown::Both);
                    }
                }
                Event::Finished { stream } => {
                    state.locals.remove(&stream);
                }
                Event::Reset => end_all(state),
                Event::Ready | Event::Opened { .. } | Event::OpenRequested { .. } => {}
            }
        }
        self.changed.notify_all();
    }

    /// Writes what the session queued.
    fn flush(&self) -> io::Result<()> {
        let mut link = lock(&self.link);
        let bytes = lock(&self.state).session.take_output();
        if bytes.is_empty() {
            return Ok(());
        }
        link.write_all(&bytes)
    }

    /// Local socket → link, within the guest's window.
    fn pump_out(&self, id: u32, mut local: UnixStream) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let mut state = lock(&self.state);
            let allowed = loop {
                match state.session.opened(id) {
                    None => return,
                    Some(true) if !state.session.sending(id) => return,
                    Some(true) if state.session.send_window(id) > 0 => {
                        break state.session.send_window(id);
                    }
                    _ => {}
                }
                state = self.wait(state);
            };
            drop(state);
            let n = local
                .read(&mut buf[..allowed.min(MAX_PAYLOAD)])
                .unwrap_or(0);
            let mut state = lock(&self.state);
            if n == 0 {
                state.session.close(id);
            } else {
                state.session.send(id, &buf[..n]);
            }
            self.settle(&mut state);
            drop(state);
            if self.flush().is_err() || n == 0 {
                return;
            }
        }
    }

    /// Link → local socket; every byte written is credited back to the guest.
    fn pump_in(&self, id: u32, mut local: UnixStream) {
        let mut broken = false;
        let mut buf = Vec::with_capacity(MAX_PAYLOAD);
        loop {
            let mut state = lock(&self.state);
            loop {
                if state.session.opened(id).is_none() {
                    return;
                }
                let inbound = state.session.inbound(id);
                if !inbound.is_empty() {
                    buf.clear();
                    buf.extend_from_slice(&inbound[..inbound.len().min(MAX_PAYLOAD)]);
                    break;
                }
                if state.session.peer_end_pending(id) {
                    let _ = local.shutdown(Shutdown::Write);
                    state.session.end_delivered(id);
                    self.settle(&mut state);
                    return;
                }
                state = self.wait(state);
            }
            drop(state);
            // A local reader that went away still gets its bytes acknowledged, so the guest's
            // sender ends on its own instead of stalling.
            if !broken && local.write_all(&buf).is_err() {
                broken = true;
            }
            let mut state = lock(&self.state);
            state.session.consume_inbound(id, buf.len());
            self.settle(&mut state);
            drop(state);
            if self.flush().is_err() {
                return;
            }
        }
    }
}

/// Ends every stream's local socket: their pumps stop.
fn end_all(state: &mut State) {
    for (_, local) in state.locals.drain() {
        let _ = local.shutdown(Shutdown::Both);
    }
}

/// The host's end: opens streams to guest ports over the link to the VM's serial port.
#[derive(Clone)]
pub struct HostMux {
    shared: Arc<Shared>,
}

impl HostMux {
    /// Starts a session on `link` (a connection to the VM's serial port): says hello and
    /// reads the guest's frames on a thread of its own until the link ends.
    pub fn start(link: UnixStream) -> io::Result<HostMux> {
        let mut reader = link.try_clone()?;
        let ender = link.try_clone()?;
        let shared = Arc::new(Shared {
            link: Mutex::new(link),
            state: Mutex::new(State {
                session: Session::new(Side::Host),
                locals: HashMap::new(),
                dead: false,
            }),
            changed: Condvar::new(),
            ender,
        });
        shared.flush()?;
        let for_reader = Arc::clone(&shared);
        std::thread::spawn(move || {
            let shared = for_reader;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut state = lock(&shared.state);
                // A malformed frame from the guest ends the session; a bad frame on one stream
                // ends only that stream (the session reports it as an event).
                let fed = state.session.feed(&buf[..n]);
                shared.settle(&mut state);
                drop(state);
                // The host's session answers nothing by itself (credits go out as the pumps
                // deliver), so this thread never waits for the link's writing half: a pump
                // blocked writing to a full link is drained by the guest, which needs this
                // thread to read.
                if fed.is_err() {
                    break;
                }
            }
            let mut state = lock(&shared.state);
            state.dead = true;
            let ids: Vec<u32> = state.session.stream_ids().collect();
            for id in ids {
                state.session.remove(id);
            }
            end_all(&mut state);
            shared.changed.notify_all();
        });
        Ok(HostMux { shared })
    }

    /// Connects `local` to guest `port`: `Ok(true)` once the guest accepted, `Ok(false)` if
    /// nothing listens there (or the guest did not answer within `timeout`).
    pub fn open(&self, port: u32, local: UnixStream, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        while !state.session.is_ready() && !state.dead {
            match shared.wait_until(state, deadline) {
                Some(s) => state = s,
                None => return Ok(false),
            }
        }
        if state.dead {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the VM's serial link has ended",
            ));
        }
        let (reader, writer) = (local.try_clone()?, local.try_clone()?);
        let id = state.session.open(port);
        state.locals.insert(id, local);
        drop(state);
        let s = Arc::clone(shared);
        std::thread::spawn(move || s.pump_out(id, reader));
        let s = Arc::clone(shared);
        std::thread::spawn(move || s.pump_in(id, writer));
        shared.flush()?;
        let mut state = lock(&shared.state);
        loop {
            match state.session.opened(id) {
                Some(true) => return Ok(true),
                Some(false) => {}
                None => return Ok(false),
            }
            match shared.wait_until(state, deadline) {
                Some(s) => state = s,
                None => {
                    // No answer: the stream is dropped, its local end sees the end.
                    let mut state = lock(&shared.state);
                    state.session.remove(id);
                    if let Some(local) = state.locals.remove(&id) {
                        let _ = local.shutdown(Shutdown::Both);
                    }
                    shared.changed.notify_all();
                    return Ok(false);
                }
            }
        }
    }

    /// Open streams; 0 when the link is quiet (as a template must be when it is saved).
    pub fn streams(&self) -> usize {
        lock(&self.shared.state).session.streams()
    }

    /// Waits until no stream is open, up to `timeout`; `true` if so.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while state.session.streams() > 0 {
            match self.shared.wait_until(state, deadline) {
                Some(s) => state = s,
                None => return false,
            }
        }
        true
    }

    /// Ends the session: the guest sees its host go, every stream ends.
    pub fn shut_down(&self) {
        let _ = self.shared.ender.shutdown(Shutdown::Both);
    }
}
