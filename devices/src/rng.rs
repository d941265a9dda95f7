//! virtio-rng: fills each device-writable buffer with entropy from the host's getrandom(2).

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::virtio::{
    read_config_bytes, serve_queue, QueueError, UsedQueues, VirtioDevice, COMMON_FEATURES,
    DEVICE_TYPE_RNG,
};

const QUEUE_SIZES: &[u16] = &[256];
/// Most bytes served per request: a guest asking for a gigabyte gets this much and asks again,
/// and one request cannot hold the event loop for long.
const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

/// Where entropy comes from; the real source is the host kernel, tests may substitute.
pub trait EntropySource: Send {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            filled += n as usize;
        }
        Ok(())
    }
}

pub struct Rng<E: EntropySource = HostEntropy> {
    source: E,
}

impl Rng<HostEntropy> {
    pub fn new() -> Rng<HostEntropy> {
        Rng {
            source: HostEntropy,
        }
    }
}

impl Default for Rng<HostEntropy> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: EntropySource> Rng<E> {
    pub fn with_source(source: E) -> Rng<E> {
        Rng { source }
    }
}

impl<E: EntropySource> VirtioDevice for Rng<E> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        COMMON_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[], offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let mut buf = [0u8; 4096];
        serve_queue(index, queues, mem, |chain| {
            let Ok(mut writer) = chain.writer(mem) else {
                tracing::debug!("virtio-rng: chain with unusable buffers");
                return 0;
            };
            let mut left = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
            while left > 0 {
                let n = left.min(buf.len());
                if let Err(e) = self.source.fill(&mut buf[..n]) {
                    tracing::warn!("virtio-rng: getrandom failed: {e}");
                    break;
                }
                if std::io::Write::write_all(&mut writer, &buf[..n]).is_err() {
                    break;
                }
                left -= n;
            }
            writer.bytes_written() as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use vm_memory::{Bytes, GuestAddress};

    struct Counting(u8);

    impl EntropySource for Counting {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }

    #[test]
    fn writable_buffers_are_filled_and_the_length_reported() {
        let mem = guest_memory();
        let (mut queue, mock) =
            queue_with_chain(&mem, &[(0x10_0000, 8, true), (0x20_0000, 4, true)]);
        let mut rng = Rng::with_source(Counting(0));
        assert!(!rng
            .process_queue(0, std::slice::from_mut(&mut queue), &mem)
            .unwrap()
            .is_empty());
        assert_eq!(used_len(&mem, &mock, 0), 12);
        let mut first = [0u8; 8];
        mem.read_slice(&mut first, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(first, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut second = [0u8; 4];
        mem.read_slice(&mut second, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(second, [9, 10, 11, 12]);
    }

    #[test]
    fn host_entropy_differs_between_requests() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        HostEntropy.fill(&mut a).unwrap();
        HostEntropy.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn huge_requests_are_capped() {
        let mem = guest_memory();
        let (mut queue, mock) = queue_with_chain(&mem, &[(0x10_0000, 8 << 20, true)]);
        let mut rng = Rng::with_source(Counting(0));
        rng.process_queue(0, std::slice::from_mut(&mut queue), &mem)
            .unwrap();
        assert_eq!(used_len(&mem, &mock, 0) as usize, MAX_BYTES_PER_REQUEST);
    }

    #[test]
    fn read_only_buffers_get_nothing_and_the_chain_still_comes_back() {
        let mem = guest_memory();
        let (mut queue, mock) = queue_with_chain(&mem, &[(0x10_0000, 16, false)]);
        let mut rng = Rng::with_source(Counting(0));
        assert!(!rng
            .process_queue(0, std::slice::from_mut(&mut queue), &mem)
            .unwrap()
            .is_empty());
        assert_eq!(used_idx(&mem, &mock), 1);
        assert_eq!(used_len(&mem, &mock, 0), 0);
    }

    #[test]
    fn buffer_outside_guest_memory_fails_that_request_only() {
        let mem = guest_memory();
        let (mut queue, mock) = queue_with_chain(&mem, &[(0xffff_0000_0000, 16, true)]);
        let mut rng = Rng::with_source(Counting(0));
        assert!(!rng
            .process_queue(0, std::slice::from_mut(&mut queue), &mem)
            .unwrap()
            .is_empty());
        assert_eq!((used_idx(&mem, &mock), used_len(&mem, &mock, 0)), (1, 0));
    }

    #[test]
    fn descriptor_loop_is_cut_off() {
        let mem = guest_memory();
        // 0 -> 1 -> 0 -> ... with NEXT set on both.
        let raw = [
            raw_desc(0x10_0000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
            raw_desc(0x20_0000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
        ];
        let (mut queue, mock) = queue_with_raw(&mem, &raw);
        let mut rng = Rng::with_source(Counting(0));
        assert!(!rng
            .process_queue(0, std::slice::from_mut(&mut queue), &mem)
            .unwrap()
            .is_empty());
        assert_eq!(used_idx(&mem, &mock), 1);
        assert!(used_len(&mem, &mock, 0) <= 16 * QUEUE_SIZE as u32);
    }
}
