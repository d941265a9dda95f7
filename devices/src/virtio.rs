//! What every device offers a transport, and the queue walk they share.

use std::os::fd::RawFd;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use virtio_bindings::{virtio_config, virtio_ids, virtio_ring};

/// Feature bits every vmpod device offers, as masks of the bindings' bit numbers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Indirect descriptor tables; `virtio_queue` walks them (bounded like direct chains).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// What every device offers about its rings and interface.
pub const COMMON_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;

pub const DEVICE_TYPE_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
pub const DEVICE_TYPE_RNG: u32 = virtio_ids::VIRTIO_ID_RNG;
pub const DEVICE_TYPE_FS: u32 = virtio_ids::VIRTIO_ID_FS;
pub const DEVICE_TYPE_NET: u32 = virtio_ids::VIRTIO_ID_NET;
pub const DEVICE_TYPE_VSOCK: u32 = virtio_ids::VIRTIO_ID_VSOCK;

/// A chain a device could not serve at all (it was returned to the guest with zero length).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("cannot walk the available ring: {0}")]
    Ring(String),
    #[error("cannot return a chain to the used ring: {0}")]
    Used(String),
}

/// The set of queues that got used buffers and may need an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsedQueues(pub u64);

impl UsedQueues {
    pub const NONE: UsedQueues = UsedQueues(0);

    pub fn queue(index: usize) -> UsedQueues {
        UsedQueues(1 << index)
    }

    pub fn add(&mut self, index: usize) {
        self.0 |= 1 << index;
    }

    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Runs `serve_chains` on queue `index` of `queues` (a missing queue serves nothing).
pub fn serve_queue<F>(
    index: usize,
    queues: &mut [Queue],
    mem: &GuestMemoryMmap,
    serve: F,
) -> Result<UsedQueues, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let Some(queue) = queues.get_mut(index) else {
        return Ok(UsedQueues::NONE);
    };
    Ok(if serve_chains(queue, mem, serve)? {
        UsedQueues::queue(index)
    } else {
        UsedQueues::NONE
    })
}

/// A virtio device as a transport sees it.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The largest size the guest may give each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits, `VIRTIO_F_VERSION_1` included.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space; devices with nothing writable ignore them.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Serves what the guest made available on queue `index` (all queues are handed over, as a
    /// device may answer on another queue). Returns the queues that got used buffers.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError>;
    /// A descriptor the transport watches for the device (e.g. its own epoll set of sockets);
    /// when it is readable the transport calls `process_backend`.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// Serves the device's host side (sockets, files) when `backend_fd` is readable.
    fn process_backend(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        Ok(UsedQueues::NONE)
    }
    /// Back to the state after creation (the guest reset the device).
    fn reset(&mut self) {}
}

/// Copies `config` (a device's configuration space) at `offset` into `data`, zero past the end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Pops every available chain, lets `serve` handle it, and returns it to the used ring with the
/// number of bytes `serve` wrote. A chain is always returned, even when it was malformed (then
/// with length 0), so a hostile guest can neither stall the queue nor make us skip a buffer.
pub fn serve_chains<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: F,
) -> Result<bool, QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut used_any = false;
    loop {
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = queue
            .iter(mem)
            .map_err(|e| QueueError::Ring(e.to_string()))?
            .collect();
        if chains.is_empty() {
            // With EVENT_IDX, re-enabling notifications can reveal chains added meanwhile.
            if queue
                .enable_notification(mem)
                .map_err(|e| QueueError::Ring(e.to_string()))?
            {
                continue;
            }
            return Ok(used_any);
        }
        for chain in chains {
            let head = chain.head_index();
            let written = serve(chain);
            queue
                .add_used(mem, head, written)
                .map_err(|e| QueueError::Used(e.to_string()))?;
            used_any = true;
        }
    }
}
