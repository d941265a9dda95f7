//! Queues in guest memory for tests and fuzzing: built the way a driver builds them (the unit
//! tests), or made of whatever bytes a hostile guest could write (the fuzz targets). The one
//! copy of each queue builder; the fuzz crate enables it with the `testing` feature.

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub const QUEUE_SIZE: u16 = 16;
pub const VRING_DESC_F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub const VRING_DESC_F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

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
pub fn used_len(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>, index: u64) -> u32 {
    // used ring: flags u16, idx u16, then {id u32, len u32} entries.
    let entry = mock.used_addr().checked_add(4 + index * 8 + 4).unwrap();
    mem.read_obj::<u32>(entry).unwrap()
}

pub fn used_idx(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    mem.read_obj::<u16>(mock.used_addr().checked_add(2).unwrap())
        .unwrap()
}

/// The id (chain head) and length of used-ring entry `slot`.
pub fn used_entry(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<GuestMemoryMmap>,
    slot: u16,
) -> (u32, u32) {
    let entry = mock
        .used_addr()
        .checked_add(4 + u64::from(slot) * 8)
        .unwrap();
    let id = mem.read_obj::<u32>(entry).unwrap();
    (id, used_len(mem, mock, u64::from(slot)))
}

/// Guest memory of the fuzz targets: `data` repeated over it, so rings, descriptors and
/// buffers are all the fuzzer's bytes.
pub mod fuzzed {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    pub const MEMORY_SIZE: usize = 1 << 20;
    /// Queue `i` has its descriptor table, avail and used rings at `i * QUEUE_STRIDE`.
    pub const QUEUE_STRIDE: u64 = 0x4000;
    pub const QUEUE_SIZE: u16 = 16;

    /// Guest memory filled with `data` (repeated), and `count` ready queues whose avail index the
    /// fuzzer also controls through the memory contents.
    pub fn guest(data: &[u8], count: usize) -> (GuestMemoryMmap, Vec<Queue>) {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).expect("guest memory");
        if !data.is_empty() {
            let mut offset = 0;
            while offset < MEMORY_SIZE.min(data.len() * 4) {
                let n = data.len().min(MEMORY_SIZE - offset);
                let _ = mem.write_slice(&data[..n], GuestAddress(offset as u64));
                offset += n;
            }
        }
        let queues = (0..count)
            .map(|i| {
                let base = i as u64 * QUEUE_STRIDE;
                let mut q = Queue::new(QUEUE_SIZE).expect("queue");
                q.set_size(QUEUE_SIZE);
                q.set_desc_table_address(Some(base as u32), Some(0));
                q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
                q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
                q.set_event_idx(data.first().is_some_and(|b| b & 1 == 1));
                q.set_ready(true);
                q
            })
            .collect();
        (mem, queues)
    }
}
