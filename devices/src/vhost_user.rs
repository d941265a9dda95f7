//! Any vmpod device served as a vhost-user back end, so QEMU can use the same device logic
//! vmpod-vmm runs in process: `-device vhost-user-blk`, `vhost-user-rng`,
//! `vhost-user-vsock-device` with a shared-memory guest.
//!
//! One process serves several devices (a sandbox's disks), each on its own socket, from one
//! thread: one epoll set holds every device's listening socket, front-end connection, ring
//! kicks and own descriptor (vhost_user_device.rs handles each device's messages). A device
//! costs no thread, so a sandbox's empty disk slots cost only their sockets and rings.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{BackendReqHandler, Error as ProtocolError, Listener};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::vhost_user_config::Channels;
use crate::vhost_user_device::{Token, VhostUserDevice};
use crate::virtio::VirtioDevice;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("vhost-user backend: {0}")]
    Daemon(String),
    #[error("vhost-user backend: {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> VhostUserError {
    let what = what.into();
    move |source| VhostUserError::Io { what, source }
}

/// A device to serve and the socket its front end connects to.
pub struct Served {
    pub name: &'static str,
    pub device: Box<dyn VirtioDevice>,
    pub socket: PathBuf,
}

/// Tells a device's front end that the device's configuration changed.
#[derive(Clone)]
pub struct ConfigNotifier {
    channel: Arc<Mutex<Option<UnixStream>>>,
}

impl ConfigNotifier {
    /// Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. Before the front end has opened its channel
    /// there is nothing to tell: it reads the configuration after opening the channel.
    pub fn announce(&self) -> io::Result<()> {
        let mut channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        match channel.as_mut() {
            Some(c) => crate::vhost_user_config::send_config_change(c),
            None => Ok(()),
        }
    }
}

type Connection = BackendReqHandler<Mutex<VhostUserDevice>>;

/// One device: its socket until the front end connects, then the connection.
struct Endpoint {
    name: &'static str,
    device: Arc<Mutex<VhostUserDevice>>,
    listener: Listener,
    connection: Option<Connection>,
    ended: bool,
}

/// Bound devices, each with its socket listening, waiting for their front ends.
pub struct Server {
    epoll: Arc<Epoll>,
    endpoints: Vec<Endpoint>,
}

fn watch(epoll: &Epoll, fd: i32, token: Token) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token.encode()),
    )
}

fn unwatch(epoll: &Epoll, fd: i32) {
    let _ = epoll.ctl(
        ControlOperation::Delete,
        fd,
        EpollEvent::new(EventSet::IN, 0),
    );
}

/// Creates every device's socket (the front end may connect from now on) and returns the
/// notifiers of their configuration changes, in order.
pub fn bind(served: Vec<Served>) -> Result<(Server, Vec<ConfigNotifier>), VhostUserError> {
    let epoll = Arc::new(Epoll::new().map_err(io_error("cannot create an epoll set"))?);
    let channels = Arc::new(Channels::new());
    let mut endpoints = Vec::with_capacity(served.len());
    let mut notifiers = Vec::with_capacity(served.len());
    for (
        index,
        Served {
            name,
            device,
            socket,
        },
    ) in served.into_iter().enumerate()
    {
        let channel = Arc::new(Mutex::new(None));
        notifiers.push(ConfigNotifier {
            channel: Arc::clone(&channel),
        });
        let device = VhostUserDevice::new(
            index,
            device,
            Arc::clone(&epoll),
            Arc::clone(&channels),
            channel,
        )
        .map_err(io_error(format!("{name}: cannot create its rings")))?;
        if let Some(fd) = device.device_fd() {
            watch(&epoll, fd, Token::DeviceFd(index))
                .map_err(io_error(format!("{name}: cannot watch its sockets")))?;
        }
        let listener = Listener::new(&socket, true).map_err(|e| {
            VhostUserError::Daemon(format!("cannot listen on {}: {e}", socket.display()))
        })?;
        watch(&epoll, listener.as_raw_fd(), Token::Listener(index))
            .map_err(io_error(format!("cannot watch {}", socket.display())))?;
        endpoints.push(Endpoint {
            name,
            device: Arc::new(Mutex::new(device)),
            listener,
            connection: None,
            ended: false,
        });
    }
    Ok((Server { epoll, endpoints }, notifiers))
}

fn lock(device: &Mutex<VhostUserDevice>) -> std::sync::MutexGuard<'_, VhostUserDevice> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Serves every device until each one's front end has connected and gone again.
    pub fn run(mut self) -> Result<(), VhostUserError> {
        let mut events = vec![EpollEvent::default(); 64];
        while !self.endpoints.iter().all(|e| e.ended) {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("cannot wait for events")(e)),
            };
            for event in &events[..count] {
                match Token::decode(event.data()) {
                    Some(Token::Listener(d)) => self.accept(d)?,
                    Some(Token::Connection(d)) => self.message(d),
                    Some(Token::Kick(d, q)) => {
                        if let Some(e) = self.endpoints.get(d) {
                            lock(&e.device).kicked(q);
                        }
                    }
                    Some(Token::DeviceFd(d)) => {
                        if let Some(e) = self.endpoints.get(d) {
                            lock(&e.device).device_ready();
                        }
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// The front end connected to device `index` (one front end per device).
    fn accept(&mut self, index: usize) -> Result<(), VhostUserError> {
        let Some(endpoint) = self.endpoints.get_mut(index) else {
            return Ok(());
        };
        let stream = match endpoint.listener.accept() {
            Ok(Some(stream)) => stream,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(VhostUserError::Daemon(format!(
                    "{}: cannot accept its front end: {e}",
                    endpoint.name
                )))
            }
        };
        unwatch(&self.epoll, endpoint.listener.as_raw_fd());
        let connection = BackendReqHandler::from_stream(stream, Arc::clone(&endpoint.device));
        watch(
            &self.epoll,
            connection.as_raw_fd(),
            Token::Connection(index),
        )
        .map_err(io_error(format!(
            "{}: cannot watch its front end",
            endpoint.name
        )))?;
        endpoint.connection = Some(connection);
        Ok(())
    }

    /// A message from device `index`'s front end; its end ends the device.
    fn message(&mut self, index: usize) {
        let Some(endpoint) = self.endpoints.get_mut(index) else {
            return;
        };
        let Some(connection) = endpoint.connection.as_mut() else {
            return;
        };
        let Err(e) = connection.handle_request() else {
            return;
        };
        if !matches!(
            e,
            ProtocolError::Disconnected
                | ProtocolError::PartialMessage
                | ProtocolError::SocketBroken(_)
        ) {
            tracing::warn!("{}: the front end's message failed: {e}", endpoint.name);
        }
        unwatch(&self.epoll, connection.as_raw_fd());
        endpoint.connection = None;
        lock(&endpoint.device).disconnected();
        endpoint.ended = true;
    }
}
