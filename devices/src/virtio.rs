//! What every device offers a transport, and the queue walk they share.

use std::os::fd::RawFd;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// Feature bits every vmpod device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Indirect descriptor tables; `virtio_queue` walks them (bounded like direct chains).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// What every device offers about its rings and interface.
pub const COMMON_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;

pub const DEVICE_TYPE_BLOCK: u32 = 2;
pub const DEVICE_TYPE_RNG: u32 = 4;
pub const DEVICE_TYPE_FS: u32 = 26;

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

#[cfg(test)]
pub(crate) mod test_support {
    //! Queues in guest memory built by the test, the way a driver would build them.

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    pub const QUEUE_SIZE: u16 = 16;
    pub const VRING_DESC_F_NEXT: u16 = 1;
    pub const VRING_DESC_F_WRITE: u16 = 2;

    pub fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// One descriptor: (guest address, length, device-writable).
    pub type Desc = (u64, u32, bool);

    /// Builds a queue at 0 holding one chain made of `descs` (linked in order) and returns it
    /// ready for a device, plus the mock for inspecting the used ring.
    pub fn queue_with_chain<'a>(
        mem: &'a GuestMemoryMmap,
        descs: &[Desc],
    ) -> (Queue, MockSplitQueue<'a, GuestMemoryMmap>) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, (i + 1) as u16))
            })
            .collect();
        queue_with_raw(mem, &raw)
    }

    /// A queue whose descriptor table holds exactly `raw` (flags and next as given: loops and
    /// dangling links included) with descriptor 0 made available.
    pub fn queue_with_raw<'a>(
        mem: &'a GuestMemoryMmap,
        raw: &[RawDescriptor],
    ) -> (Queue, MockSplitQueue<'a, GuestMemoryMmap>) {
        let mock = MockSplitQueue::new(mem, QUEUE_SIZE);
        for (i, desc) in raw.iter().enumerate() {
            mock.desc_table().store(i as u16, *desc).unwrap();
        }
        // avail ring: flags u16, idx u16, ring[0] = head 0.
        mem.write_obj(0u16, mock.avail_addr().checked_add(4).unwrap())
            .unwrap();
        mem.write_obj(1u16, mock.avail_addr().checked_add(2).unwrap())
            .unwrap();
        let queue = mock.create_queue::<Queue>().unwrap();
        (queue, mock)
    }

    pub fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// The length the device reported for used-ring entry `index`.
    pub fn used_len(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<GuestMemoryMmap>,
        index: u64,
    ) -> u32 {
        // used ring: flags u16, idx u16, then {id u32, len u32} entries.
        let entry = mock.used_addr().checked_add(4 + index * 8 + 4).unwrap();
        mem.read_obj::<u32>(entry).unwrap()
    }

    pub fn used_idx(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        mem.read_obj::<u16>(mock.used_addr().checked_add(2).unwrap())
            .unwrap()
    }
}
