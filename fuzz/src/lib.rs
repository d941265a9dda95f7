//! What the queue fuzz targets share: guest memory whose rings and buffers are the fuzzer's
//! bytes, and queues pointing into it, so a device sees whatever a hostile guest could write.

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
