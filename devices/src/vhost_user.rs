//! Any vmpod device served as a vhost-user backend (rust-vmm's `vhost-user-backend`), so QEMU
//! can use the same device logic vmpod-vmm runs in process: `-device vhost-user-blk`,
//! `vhost-user-rng`, `vhost-user-vsock-device` with a shared-memory guest.
//!
//! One process serves several devices (a sandbox's disks), each on its own socket. The library
//! gives every device two threads: one reads its front end's messages (the daemon's), one
//! serves its queues (the vring worker). Neither can be shared between daemons through the
//! library's API, so a device costs two mostly idle threads; serving every device's messages
//! and queues from one epoll loop needs our own handler over the `vhost` crate's
//! `BackendReqHandler` (planned, ARCHITECTURE.md).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Backend, Listener};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::vhost_user_config::Channels;
use crate::virtio::{UsedQueues, VirtioDevice};

const FRONT_END_MAX_QUEUE_SIZE: usize = 1024;
const VHOST_F_LOG_ALL: u32 = 26;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("vhost-user backend: {0}")]
    Daemon(String),
    #[error("vhost-user backend: cannot watch the device's sockets: {0}")]
    Listener(io::Error),
}

pub struct VhostUserDevice {
    /// Only the one worker thread uses it; the lock makes the backend `Sync` as the library
    /// requires.
    device: Mutex<Box<dyn VirtioDevice>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Stops the worker thread when the front end goes away (without it the daemon never
    /// finishes).
    exit: (EventConsumer, EventNotifier),
    /// Finds this device's backend channel among the process's sockets (vhost_user_config.rs).
    channels: Arc<Channels>,
    /// Kept so its socket stays open: the channel below is a duplicate of it.
    _backend: Option<Backend>,
    channel: Arc<Mutex<Option<UnixStream>>>,
}

impl VhostUserDevice {
    fn device(&self) -> MutexGuard<'_, Box<dyn VirtioDevice>> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn num_queues(&self) -> usize {
        self.device().queue_max_sizes().len()
    }

    /// The event id the device's backend fd is registered under: past the queues and the
    /// library's own exit event.
    fn backend_event(&self) -> u16 {
        self.num_queues() as u16 + 1
    }
}

impl VhostUserBackendMut for VhostUserDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        VhostUserDevice::num_queues(self)
    }

    /// QEMU's front ends pick their own queue sizes (up to 1024) and our devices work with any
    /// size, so the backend accepts what a front end may ask for.
    fn max_queue_size(&self) -> usize {
        let own = self.device().queue_max_sizes().iter().copied().max();
        usize::from(own.unwrap_or(0)).max(FRONT_END_MAX_QUEUE_SIZE)
    }

    /// VHOST_F_LOG_ALL and LOG_SHMFD let QEMU save the VM (a template) at all. Only a stopped
    /// VM is ever saved, when no device writes guest memory; a live migration, which would
    /// need dirty logging, fails at SET_LOG_BASE instead of corrupting memory.
    fn features(&self) -> u64 {
        self.device().features()
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | (1 << VHOST_F_LOG_ALL)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        let found = self.channels.claim();
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = found;
        self._backend = Some(backend);
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    /// The library sets EVENT_IDX on the vrings' queues itself when features are acked.
    fn set_event_idx(&mut self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut data = vec![0u8; size as usize];
        self.device().read_config(u64::from(offset), &mut data);
        data
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mem = self.mem.memory();
        // The device wants all its queues at once; they are lent out of the vrings for the call
        // and put back, so the library's own view stays the one true state.
        let mut queues: Vec<Queue> = vrings
            .iter()
            .map(|vring| {
                let mut state = vring.get_mut();
                // Any valid size will do: the placeholder is swapped back out below.
                let placeholder = Queue::new(1).expect("1 is a valid queue size");
                std::mem::replace(state.get_queue_mut(), placeholder)
            })
            .collect();
        let backend_event = self.backend_event();
        let mut device = self.device();
        let result = if usize::from(device_event) < queues.len() {
            device.process_queue(usize::from(device_event), &mut queues, &mem)
        } else if device_event == backend_event {
            device.process_backend(&mut queues, &mem)
        } else {
            Ok(UsedQueues::NONE)
        };
        let used = result.unwrap_or_else(|e| {
            tracing::warn!("vhost-user: {e}");
            UsedQueues::NONE
        });
        for (index, (vring, mut queue)) in vrings.iter().zip(queues).enumerate() {
            let notify = used.contains(index) && queue.needs_notification(&*mem).unwrap_or(true);
            *vring.get_mut().get_queue_mut() = queue;
            if notify {
                vring.signal_used_queue()?;
            }
        }
        Ok(())
    }
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

type Daemon = VhostUserDaemon<Arc<std::sync::RwLock<VhostUserDevice>>>;

/// Bound devices, each with its socket listening, waiting for their front ends.
pub struct Server {
    devices: Vec<(Daemon, Listener, EventNotifier)>,
}

/// Creates every device's socket (the front end may connect from now on) and returns the
/// notifiers of their configuration changes, in order.
pub fn bind(served: Vec<Served>) -> Result<(Server, Vec<ConfigNotifier>), VhostUserError> {
    let channels = Arc::new(Channels::new());
    let mut devices = Vec::with_capacity(served.len());
    let mut notifiers = Vec::with_capacity(served.len());
    for Served {
        name,
        device,
        socket,
    } in served
    {
        let backend_fd = device.backend_fd();
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)
            .map_err(|e| VhostUserError::Daemon(format!("cannot create the exit event: {e}")))?;
        let stop = notifier
            .try_clone()
            .map_err(|e| VhostUserError::Daemon(format!("cannot copy the exit event: {e}")))?;
        let channel = Arc::new(Mutex::new(None));
        notifiers.push(ConfigNotifier {
            channel: Arc::clone(&channel),
        });
        let backend = VhostUserDevice {
            device: Mutex::new(device),
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            exit: (consumer, notifier),
            channels: Arc::clone(&channels),
            _backend: None,
            channel,
        };
        let backend_event = backend.backend_event();
        let daemon = VhostUserDaemon::new(
            name.to_string(),
            Arc::new(std::sync::RwLock::new(backend)),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| VhostUserError::Daemon(e.to_string()))?;
        if let Some(fd) = backend_fd {
            for handler in daemon.get_epoll_handlers() {
                handler
                    .register_listener(fd, EventSet::IN, u64::from(backend_event))
                    .map_err(VhostUserError::Listener)?;
            }
        }
        let listener = Listener::new(&socket, true).map_err(|e| {
            VhostUserError::Daemon(format!("cannot listen on {}: {e}", socket.display()))
        })?;
        devices.push((daemon, listener, stop));
    }
    Ok((Server { devices }, notifiers))
}

impl Server {
    /// Accepts each device's front end (in the order given: QEMU connects every chardev
    /// before it sets up the first device, so none waits on another) and serves them until
    /// every one has disconnected.
    pub fn run(mut self) -> Result<(), VhostUserError> {
        for (daemon, listener, _) in &mut self.devices {
            daemon
                .start(listener)
                .map_err(|e| VhostUserError::Daemon(e.to_string()))?;
        }
        let mut result = Ok(());
        for (mut daemon, _, stop) in self.devices {
            let ended = daemon.wait();
            // The vring worker ends only when told to.
            let _ = stop.notify();
            if let Err(e) = ended {
                let disconnected = matches!(
                    &e,
                    vhost_user_backend::Error::HandleRequest(
                        vhost::vhost_user::Error::Disconnected
                            | vhost::vhost_user::Error::PartialMessage
                    )
                );
                if !disconnected && result.is_ok() {
                    result = Err(VhostUserError::Daemon(e.to_string()));
                }
            }
        }
        result
    }
}
