//! virtio-vsock, emulated in user space, with the hybrid Unix-socket convention on the host.

mod connection;
pub mod hybrid;
pub mod muxer;
pub mod packet;

use std::os::fd::RawFd;
use std::path::Path;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use muxer::MuxerError;
use muxer::{Muxer, TX};

use crate::virtio::{
    read_config_bytes, QueueError, UsedQueues, VirtioDevice, DEVICE_TYPE_VSOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// rx, tx, event.
const QUEUE_SIZES: &[u16] = &[256, 256, 256];

pub struct Vsock {
    config: [u8; 8],
    muxer: Muxer,
}

impl Vsock {
    /// A vsock device for a guest with `guest_cid`, reachable from the host at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, MuxerError> {
        Ok(Vsock {
            config: guest_cid.to_le_bytes(),
            muxer: Muxer::new(guest_cid, uds_path)?,
        })
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        if index == TX {
            self.muxer.process_tx(queues, mem)
        } else {
            // New RX buffers (or an event-queue kick): deliver what waited for them.
            self.muxer.process_events(queues, mem)
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        self.muxer.process_events(queues, mem)
    }
}
