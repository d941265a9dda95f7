//! One vmpod device as a vhost-user back end: the front end's messages (`vhost` crate's
//! `VhostUserBackendReqHandlerMut`) turned into the device's guest memory, rings and config,
//! and its rings served when the front end kicks them. No thread of its own: the server's one
//! event loop (vhost_user.rs) calls it for messages, kicks and the device's own descriptor.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as ProtocolError, GpuBackend, Result as ProtocolResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::vhost_user_config::Channels;
use crate::virtio::{UsedQueues, VirtioDevice};

/// QEMU's front ends pick their own queue sizes (up to 1024) and our devices work with any
/// size, so a ring may be as large as a front end may ask for.
const FRONT_END_MAX_QUEUE_SIZE: u16 = 1024;
const VHOST_F_LOG_ALL: u32 = 26;

/// What the event loop registers a descriptor for; the device's index rides along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Listener(usize),
    Connection(usize),
    Kick(usize, usize),
    DeviceFd(usize),
}

impl Token {
    pub fn encode(self) -> u64 {
        let (kind, device, queue) = match self {
            Token::Listener(d) => (1, d, 0),
            Token::Connection(d) => (2, d, 0),
            Token::Kick(d, q) => (3, d, q),
            Token::DeviceFd(d) => (4, d, 0),
        };
        (kind << 56) | ((device as u64 & 0xff_ffff) << 24) | (queue as u64 & 0xff_ffff)
    }

    pub fn decode(value: u64) -> Option<Token> {
        let device = ((value >> 24) & 0xff_ffff) as usize;
        let queue = (value & 0xff_ffff) as usize;
        match value >> 56 {
            1 => Some(Token::Listener(device)),
            2 => Some(Token::Connection(device)),
            3 => Some(Token::Kick(device, queue)),
            4 => Some(Token::DeviceFd(device)),
            _ => None,
        }
    }
}

/// The front end's side of one queue.
#[derive(Default)]
struct Ring {
    kick: Option<File>,
    call: Option<EventFd>,
    /// SET_VRING_ENABLE: the front end lets the device use the ring.
    enabled: bool,
    /// A kick descriptor arrived and no GET_VRING_BASE stopped the ring since.
    started: bool,
}

/// Guest memory as the front end maps it: a ring's addresses are the front end's own.
struct Mapping {
    front_end_addr: u64,
    size: u64,
    guest_addr: u64,
}

pub struct VhostUserDevice {
    index: usize,
    device: Box<dyn VirtioDevice>,
    epoll: Arc<Epoll>,
    mem: GuestMemoryMmap,
    mappings: Vec<Mapping>,
    queues: Vec<Queue>,
    rings: Vec<Ring>,
    acked_features: u64,
    /// Finds this device's backend channel among the process's sockets (vhost_user_config.rs).
    channels: Arc<Channels>,
    /// Kept so its socket stays open: the channel is a duplicate of it.
    _backend: Option<Backend>,
    channel: Arc<Mutex<Option<UnixStream>>>,
}

fn invalid(what: &'static str) -> ProtocolError {
    ProtocolError::InvalidOperation(what)
}

impl VhostUserDevice {
    pub fn new(
        index: usize,
        device: Box<dyn VirtioDevice>,
        epoll: Arc<Epoll>,
        channels: Arc<Channels>,
        channel: Arc<Mutex<Option<UnixStream>>>,
    ) -> io::Result<VhostUserDevice> {
        let count = device.queue_max_sizes().len();
        let queues = (0..count)
            .map(|_| Queue::new(FRONT_END_MAX_QUEUE_SIZE))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        Ok(VhostUserDevice {
            index,
            device,
            epoll,
            mem: GuestMemoryMmap::new(),
            mappings: Vec::new(),
            queues,
            rings: (0..count).map(|_| Ring::default()).collect(),
            acked_features: 0,
            channels,
            _backend: None,
            channel,
        })
    }

    /// The device's own descriptor (vsock's epoll set of host sockets), if it has one.
    pub fn device_fd(&self) -> Option<RawFd> {
        self.device.backend_fd()
    }

    fn ring(&mut self, index: u32) -> ProtocolResult<&mut Ring> {
        self.rings
            .get_mut(index as usize)
            .ok_or(ProtocolError::InvalidParam)
    }

    fn queue(&mut self, index: u32) -> ProtocolResult<&mut Queue> {
        self.queues
            .get_mut(index as usize)
            .ok_or(ProtocolError::InvalidParam)
    }

    fn guest_addr(&self, front_end_addr: u64) -> ProtocolResult<GuestAddress> {
        self.mappings
            .iter()
            .find(|m| {
                front_end_addr >= m.front_end_addr && front_end_addr - m.front_end_addr < m.size
            })
            .map(|m| GuestAddress(front_end_addr - m.front_end_addr + m.guest_addr))
            .ok_or(invalid("a ring address outside guest memory"))
    }

    /// Watches a ring's kicks while the device may use it, and stops otherwise.
    fn update_kick_watch(&mut self, index: usize) {
        let token = Token::Kick(self.index, index).encode();
        let ring = &self.rings[index];
        let Some(kick) = &ring.kick else {
            return;
        };
        let fd = kick.as_raw_fd();
        let event = EpollEvent::new(EventSet::IN, token);
        if ring.started && ring.enabled {
            match self.epoll.ctl(ControlOperation::Add, fd, event) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    tracing::warn!("vhost-user: cannot watch a ring's kicks: {e}")
                }
                _ => {}
            }
        } else {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, event);
        }
    }

    fn forget_kick(&mut self, index: usize) {
        if let Some(kick) = self.rings[index].kick.take() {
            let event = EpollEvent::new(EventSet::IN, 0);
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, kick.as_raw_fd(), event);
        }
    }

    /// The front end kicked ring `index`: serve it.
    pub fn kicked(&mut self, index: usize) {
        let Some(ring) = self.rings.get_mut(index) else {
            return;
        };
        if let Some(kick) = &mut ring.kick {
            let mut count = [0u8; 8];
            let _ = kick.read(&mut count);
        }
        if ring.started && ring.enabled {
            let used = self
                .device
                .process_queue(index, &mut self.queues, &self.mem);
            self.signal(used);
        }
    }

    /// The device's own descriptor is readable.
    pub fn device_ready(&mut self) {
        let used = self.device.process_backend(&mut self.queues, &self.mem);
        self.signal(used);
    }

    fn signal(&mut self, used: Result<UsedQueues, crate::virtio::QueueError>) {
        let used = used.unwrap_or_else(|e| {
            tracing::warn!("vhost-user: {e}");
            UsedQueues::NONE
        });
        for (index, (queue, ring)) in self.queues.iter_mut().zip(&self.rings).enumerate() {
            if !used.contains(index) || !ring.enabled {
                continue;
            }
            if queue.needs_notification(&self.mem).unwrap_or(true) {
                if let Some(call) = &ring.call {
                    if let Err(e) = call.write(1) {
                        tracing::warn!("vhost-user: cannot signal ring {index}: {e}");
                    }
                }
            }
        }
    }

    /// The connection ended: no ring is watched any more.
    pub fn disconnected(&mut self) {
        for index in 0..self.rings.len() {
            self.forget_kick(index);
        }
    }
}

impl VhostUserBackendReqHandlerMut for VhostUserDevice {
    fn set_owner(&mut self) -> ProtocolResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> ProtocolResult<()> {
        self.reset_device()
    }

    fn reset_device(&mut self) -> ProtocolResult<()> {
        for index in 0..self.rings.len() {
            self.forget_kick(index);
            self.rings[index] = Ring::default();
            self.queues[index].reset();
        }
        self.device.reset();
        Ok(())
    }

    /// VHOST_F_LOG_ALL and LOG_SHMFD let QEMU save the VM (a template) at all. Only a stopped
    /// VM is ever saved, when no device writes guest memory; a live migration, which would
    /// need dirty logging, fails at SET_LOG_BASE instead of corrupting memory.
    fn get_features(&mut self) -> ProtocolResult<u64> {
        Ok(self.device.features()
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | (1 << VHOST_F_LOG_ALL))
    }

    fn set_features(&mut self, features: u64) -> ProtocolResult<()> {
        self.acked_features = features;
        let event_idx = features & crate::virtio::VIRTIO_RING_F_EVENT_IDX != 0;
        for queue in &mut self.queues {
            queue.set_event_idx(event_idx);
        }
        // Without PROTOCOL_FEATURES a ring is enabled from the start.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for index in 0..self.rings.len() {
                self.rings[index].enabled = true;
                self.update_kick_watch(index);
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> ProtocolResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(invalid("postcopy"));
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut mappings = Vec::with_capacity(regions.len());
        for (region, file) in regions.iter().zip(files) {
            let guest = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(ProtocolError::InvalidParam)?;
            mapped.push(guest);
            mappings.push(Mapping {
                front_end_addr: region.user_addr,
                size: region.memory_size,
                guest_addr: region.guest_phys_addr,
            });
        }
        self.mem = GuestMemoryMmap::from_regions(mapped)
            .map_err(|e| ProtocolError::ReqHandlerError(io::Error::other(e)))?;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> ProtocolResult<()> {
        let size = u16::try_from(num).map_err(|_| ProtocolError::InvalidParam)?;
        self.queue(index)?.set_size(size);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> ProtocolResult<()> {
        let (desc, avail, used) = (
            self.guest_addr(descriptor)?,
            self.guest_addr(available)?,
            self.guest_addr(used)?,
        );
        let mem = self.mem.clone();
        let queue = self.queue(index)?;
        queue
            .try_set_desc_table_address(desc)
            .and_then(|()| queue.try_set_avail_ring_address(avail))
            .and_then(|()| queue.try_set_used_ring_address(used))
            .map_err(|_| ProtocolError::InvalidParam)?;
        // SET_VRING_BASE gives only the next available index; the used index is where the
        // driver's ring says it is (a restored or rebooted guest's, not 0).
        let next_used = queue
            .used_idx(&mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|_| ProtocolError::InvalidParam)?;
        queue.set_next_used(next_used.0);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> ProtocolResult<()> {
        let base = u16::try_from(base).map_err(|_| ProtocolError::InvalidParam)?;
        self.queue(index)?.set_next_avail(base);
        Ok(())
    }

    /// Stops the ring (the vhost-user rule) and says where the device got to.
    fn get_vring_base(&mut self, index: u32) -> ProtocolResult<VhostUserVringState> {
        let ring = self.ring(index)?;
        ring.started = false;
        ring.call = None;
        self.forget_kick(index as usize);
        let queue = self.queue(index)?;
        queue.set_ready(false);
        Ok(VhostUserVringState::new(
            index,
            u32::from(queue.next_avail()),
        ))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        let index = usize::from(index);
        if index >= self.rings.len() {
            return Err(ProtocolError::InvalidParam);
        }
        self.forget_kick(index);
        let ring = &mut self.rings[index];
        ring.started = fd.is_some();
        ring.kick = fd;
        self.queues[index].set_ready(ring.started);
        self.update_kick_watch(index);
        // Buffers made available before the ring started are served now.
        self.kicked(index);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        // SAFETY: the file is ours alone; the eventfd takes over its descriptor.
        let call = fd.map(|f| unsafe { EventFd::from_raw_fd(f.into_raw_fd()) });
        self.ring(u32::from(index))?.call = call;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> ProtocolResult<()> {
        self.ring(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> ProtocolResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ)
    }

    fn set_protocol_features(&mut self, _features: u64) -> ProtocolResult<()> {
        Ok(())
    }

    fn get_queue_num(&mut self) -> ProtocolResult<u64> {
        Ok(self.queues.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> ProtocolResult<()> {
        self.ring(index)?.enabled = enable;
        self.update_kick_watch(index as usize);
        if enable {
            self.kicked(index as usize);
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> ProtocolResult<Vec<u8>> {
        let mut data = vec![0u8; size as usize];
        self.device.read_config(u64::from(offset), &mut data);
        Ok(data)
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> ProtocolResult<()> {
        self.device.write_config(u64::from(offset), buf);
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        let found = self.channels.claim();
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = found;
        self._backend = Some(backend);
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> ProtocolResult<()> {
        Err(invalid("no GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> ProtocolResult<File> {
        Err(invalid("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> ProtocolResult<(VhostUserInflight, File)> {
        Err(invalid("no inflight tracking"))
    }

    fn set_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
        _file: File,
    ) -> ProtocolResult<()> {
        Err(invalid("no inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> ProtocolResult<u64> {
        Err(invalid("no memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> ProtocolResult<Option<VhostUserMemoryRegionBase>> {
        Err(invalid("no memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> ProtocolResult<()> {
        Err(invalid("no memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> ProtocolResult<Option<File>> {
        Err(invalid("no device state transfer"))
    }

    fn check_device_state(&mut self) -> ProtocolResult<()> {
        Err(invalid("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> ProtocolResult<VhostUserShMemConfig> {
        Err(invalid("no shared memory"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> ProtocolResult<()> {
        Err(invalid("no dirty logging: only a stopped VM can be saved"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_device_and_ring_back() {
        for token in [
            Token::Listener(0),
            Token::Connection(7),
            Token::Kick(12, 2),
            Token::DeviceFd(3),
        ] {
            assert_eq!(Token::decode(token.encode()), Some(token));
        }
        assert_eq!(Token::decode(0), None);
    }
}
