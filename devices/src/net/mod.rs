//! virtio-net backed by a tap device: one RX and one TX queue, a MAC in the config space, no
//! offloads (frames cross as they are; checksums and segmentation stay in the guest).

pub mod tap;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::virtio::{
    read_config_bytes, serve_queue, QueueError, UsedQueues, VirtioDevice, COMMON_FEATURES,
    DEVICE_TYPE_NET,
};
pub use tap::{Tap, TapError};

pub const RX: usize = 0;
pub const TX: usize = 1;
const QUEUE_SIZES: &[u16] = &[256, 256];
const VIRTIO_NET_F_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
const VNET_HDR_LEN: usize = 12;
/// The largest frame a tap hands us without offloads: 64 KiB plus an Ethernet header.
const MAX_FRAME: usize = 65_550;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("virtio-net: cannot watch the tap: {0}")]
    Epoll(std::io::Error),
}

pub struct Net {
    tap: Tap,
    /// Holds the tap, edge-triggered: we read until it would block, so a guest with no RX
    /// buffers never makes the event loop spin.
    epoll: Epoll,
    mac: [u8; 6],
    /// A frame read from the tap that waits for a guest RX buffer.
    rx_frame: Vec<u8>,
    rx_pending: Option<usize>,
    tap_readable: bool,
    tx_frame: Vec<u8>,
    /// Frames dropped because the guest's buffer was too small (a misconfigured guest).
    pub rx_dropped: u64,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> Result<Net, NetError> {
        let epoll = Epoll::new().map_err(NetError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                tap.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
            )
            .map_err(NetError::Epoll)?;
        Ok(Net {
            tap,
            epoll,
            mac,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: None,
            // Whatever arrived before we watched it would not raise an edge.
            tap_readable: true,
            tx_frame: vec![0; MAX_FRAME],
            rx_dropped: 0,
        })
    }

    fn transmit(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let (tap, frame) = (&self.tap, &mut self.tx_frame);
        serve_queue(TX, queues, mem, |chain| {
            let Ok(mut reader) = chain.reader(mem) else {
                return 0;
            };
            let mut header = [0u8; VNET_HDR_LEN];
            if reader.read_exact(&mut header).is_err() {
                return 0;
            }
            let len = reader.available_bytes().min(frame.len());
            if reader.read_exact(&mut frame[..len]).is_err() {
                return 0;
            }
            if let Err(e) = tap.write_frame(&frame[..len]) {
                // A full or downed tap drops the frame, as a NIC would; the guest retransmits.
                tracing::debug!("virtio-net: tap write: {e}");
            }
            0
        })
    }

    fn receive(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let Some(rx) = queues.get_mut(RX).filter(|q| q.ready()) else {
            return Ok(UsedQueues::NONE);
        };
        let mut used = false;
        loop {
            if self.rx_pending.is_none() {
                if !self.tap_readable {
                    break;
                }
                match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(n) => self.rx_pending = Some(n),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != ErrorKind::WouldBlock {
                            tracing::debug!("virtio-net: tap read: {e}");
                        }
                        self.tap_readable = false;
                        break;
                    }
                }
            }
            let Some(len) = self.rx_pending else { break };
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                break; // the frame waits for the guest's next RX buffers
            };
            let head = chain.head_index();
            let mut written = 0;
            if let Ok(mut writer) = chain.writer(mem) {
                if writer.available_bytes() >= VNET_HDR_LEN + len {
                    let mut header = [0u8; VNET_HDR_LEN];
                    header[10] = 1; // num_buffers
                    if writer.write_all(&header).is_ok()
                        && writer.write_all(&self.rx_frame[..len]).is_ok()
                    {
                        written = (VNET_HDR_LEN + len) as u32;
                    }
                } else {
                    self.rx_dropped += 1;
                }
            }
            rx.add_used(mem, head, written)
                .map_err(|e| QueueError::Used(e.to_string()))?;
            used = true;
            self.rx_pending = None;
        }
        Ok(if used {
            UsedQueues::queue(RX)
        } else {
            UsedQueues::NONE
        })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        COMMON_FEATURES | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let mut used = if index == TX {
            self.transmit(queues, mem)?
        } else {
            UsedQueues::NONE
        };
        used.0 |= self.receive(queues, mem)?.0;
        Ok(used)
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<UsedQueues, QueueError> {
        let mut events = [EpollEvent::default(); 4];
        if self.epoll.wait(0, &mut events).unwrap_or(0) > 0 {
            self.tap_readable = true;
        }
        self.receive(queues, mem)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress};

    /// A "tap" made of a datagram socket pair: frames keep their boundaries, like a tap's.
    fn fake_tap() -> (Tap, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(ours);
        let tap = Tap::from_fd(fd).unwrap();
        (tap, theirs)
    }

    #[test]
    fn mac_addresses_parse_strictly() {
        assert_eq!(
            parse_mac("06:00:ac:10:00:02"),
            Some([6, 0, 0xac, 0x10, 0, 2])
        );
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "0600:ac:10:00:02:03",
            "zz:00:ac:10:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn guest_frames_reach_the_tap_without_their_header() {
        let (tap, peer) = fake_tap();
        let mut net = Net::new(tap, [6, 0, 0, 0, 0, 1]).unwrap();
        let mem = guest_memory();
        let mut packet = vec![0xeeu8; VNET_HDR_LEN];
        packet.extend_from_slice(b"an ethernet frame");
        mem.write_slice(&packet, GuestAddress(0x10_0000)).unwrap();
        let (queue, _mock) = queue_with_chain(&mem, &[(0x10_0000, packet.len() as u32, false)]);
        let mut queues = vec![Queue::new(16).unwrap(), queue];
        net.process_queue(TX, &mut queues, &mem).unwrap();
        let mut got = [0u8; 64];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], b"an ethernet frame");
    }

    #[test]
    fn tap_frames_wait_for_a_guest_buffer_then_arrive_with_a_header() {
        let (tap, peer) = fake_tap();
        let mut net = Net::new(tap, [6, 0, 0, 0, 0, 1]).unwrap();
        let mem = guest_memory();
        peer.send(b"frame one").unwrap();
        let mut queues = vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()];
        // No RX queue set up yet: the frame stays in the tap, nothing is lost.
        assert!(net.process_backend(&mut queues, &mem).unwrap().is_empty());
        assert_eq!(net.rx_pending, None);
        let (rx, mock) = queue_with_chain(&mem, &[(0x20_0000, 1526, true)]);
        queues[RX] = rx;
        assert!(net
            .process_queue(RX, &mut queues, &mem)
            .unwrap()
            .contains(RX));
        assert_eq!(used_len(&mem, &mock, 0), (VNET_HDR_LEN + 9) as u32);
        let mut got = [0u8; VNET_HDR_LEN + 9];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got[10], 1, "num_buffers");
        assert_eq!(&got[VNET_HDR_LEN..], b"frame one");
    }

    #[test]
    fn frames_too_big_for_the_buffer_are_dropped_not_truncated() {
        let (tap, peer) = fake_tap();
        let mut net = Net::new(tap, [6, 0, 0, 0, 0, 1]).unwrap();
        let mem = guest_memory();
        peer.send(&[7u8; 2000]).unwrap();
        let (rx, mock) = queue_with_chain(&mem, &[(0x20_0000, 1526, true)]);
        let mut queues = vec![rx, Queue::new(16).unwrap()];
        net.process_backend(&mut queues, &mem).unwrap();
        assert_eq!((used_idx(&mem, &mock), used_len(&mem, &mock, 0)), (1, 0));
        assert_eq!(net.rx_dropped, 1);
    }

    #[test]
    fn short_tx_header_is_ignored() {
        let (tap, peer) = fake_tap();
        peer.set_nonblocking(true).unwrap();
        let mut net = Net::new(tap, [6, 0, 0, 0, 0, 1]).unwrap();
        let mem = guest_memory();
        let (queue, mock) = queue_with_chain(&mem, &[(0x10_0000, 5, false)]);
        let mut queues = vec![Queue::new(16).unwrap(), queue];
        net.process_queue(TX, &mut queues, &mem).unwrap();
        assert_eq!(used_idx(&mem, &mock), 1);
        assert!(peer.recv(&mut [0u8; 16]).is_err(), "nothing sent");
    }
}
