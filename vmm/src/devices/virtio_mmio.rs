//! The virtio-mmio transport (virtio 1.x "modern" register layout): feature negotiation, queue
//! setup and device status over a 4 KiB MMIO window, in front of any `VirtioDevice`.
//!
//! Register access is plain logic over this struct; the vCPU threads call `read`/`write` for
//! MMIO exits, the event loop calls `process_queue` when a queue's ioeventfd fires, and used
//! buffers raise the device's interrupt through an irqfd.
//!
//! (Over 600 lines with its unit tests; the transport itself is under 500.)

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmpod_devices::virtio::{
    QueueError, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Each device's window in guest-physical memory.
use virtio_bindings::{virtio_config as config, virtio_mmio as mmio};

use crate::devices::persist::Persist;

pub const MMIO_WINDOW: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION_MODERN: u32 = 2;
const VENDOR_ID: u32 = 0x4d50_5676; // "vVPM": ours

// Register offsets, widened to the bus address type so that they can be match patterns.
const REG_MAGIC: u64 = mmio::VIRTIO_MMIO_MAGIC_VALUE as u64;
const REG_VERSION: u64 = mmio::VIRTIO_MMIO_VERSION as u64;
const REG_DEVICE_ID: u64 = mmio::VIRTIO_MMIO_DEVICE_ID as u64;
const REG_VENDOR_ID: u64 = mmio::VIRTIO_MMIO_VENDOR_ID as u64;
const REG_DEVICE_FEATURES: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const REG_DEVICE_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const REG_DRIVER_FEATURES: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const REG_DRIVER_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const REG_QUEUE_SEL: u64 = mmio::VIRTIO_MMIO_QUEUE_SEL as u64;
const REG_QUEUE_NUM_MAX: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const REG_QUEUE_NUM: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM as u64;
const REG_QUEUE_READY: u64 = mmio::VIRTIO_MMIO_QUEUE_READY as u64;
pub const REG_QUEUE_NOTIFY: u64 = mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
const REG_INTERRUPT_STATUS: u64 = mmio::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const REG_INTERRUPT_ACK: u64 = mmio::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const REG_STATUS: u64 = mmio::VIRTIO_MMIO_STATUS as u64;
const REG_QUEUE_DESC_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const REG_QUEUE_DESC_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const REG_QUEUE_DRIVER_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const REG_QUEUE_DRIVER_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const REG_QUEUE_DEVICE_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const REG_QUEUE_DEVICE_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const REG_CONFIG_GENERATION: u64 = mmio::VIRTIO_MMIO_CONFIG_GENERATION as u64;
const CONFIG_SPACE: u64 = mmio::VIRTIO_MMIO_CONFIG as u64;

const STATUS_ACKNOWLEDGE: u32 = config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = config::VIRTIO_CONFIG_S_DRIVER;
const STATUS_DRIVER_OK: u32 = config::VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_FEATURES_OK: u32 = config::VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_DEVICE_NEEDS_RESET: u32 = config::VIRTIO_CONFIG_S_NEEDS_RESET;
const STATUS_FAILED: u32 = config::VIRTIO_CONFIG_S_FAILED;

const INTERRUPT_USED_RING: u32 = mmio::VIRTIO_MMIO_INT_VRING;
const INTERRUPT_CONFIG_CHANGE: u32 = mmio::VIRTIO_MMIO_INT_CONFIG;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: AtomicU32,
    /// Raises the device's interrupt line (an irqfd).
    irq: EventFd,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: EventFd) -> MmioTransport {
        let queues = new_queues(device.as_ref());
        MmioTransport {
            device,
            mem,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: AtomicU32::new(0),
            irq,
        }
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Tells a running driver that the device's configuration may have changed: a restored
    /// VM's disks are the clone's, not the template's empty slots, and the driver reads their
    /// size again.
    pub fn announce_config_change(&self) {
        if !self.driver_ok() {
            return;
        }
        self.interrupt_status
            .fetch_or(INTERRUPT_CONFIG_CHANGE, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("virtio-mmio: cannot raise the config interrupt: {e}");
        }
    }

    fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_DEVICE_NEEDS_RESET == 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue layout may change only while the driver has not said DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// An MMIO read of `data.len()` bytes at `offset` into the window. Registers are 32-bit;
    /// other sizes outside the config space read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            return self.device.read_config(offset - CONFIG_SPACE, data);
        }
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION_MODERN,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// An MMIO write. Returns the queue index for a QueueNotify write (when no ioeventfd took
    /// it), so the caller can have that queue served.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<usize> {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return None;
        }
        let value = u32::from_le_bytes(<[u8; 4]>::try_from(data).ok()?);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW => {
                self.set_queue_addr(|q, v| q.set_desc_table_address(Some(v), None), value)
            }
            REG_QUEUE_DESC_HIGH => {
                self.set_queue_addr(|q, v| q.set_desc_table_address(None, Some(v)), value)
            }
            REG_QUEUE_DRIVER_LOW => {
                self.set_queue_addr(|q, v| q.set_avail_ring_address(Some(v), None), value)
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.set_queue_addr(|q, v| q.set_avail_ring_address(None, Some(v)), value)
            }
            REG_QUEUE_DEVICE_LOW => {
                self.set_queue_addr(|q, v| q.set_used_ring_address(Some(v), None), value)
            }
            REG_QUEUE_DEVICE_HIGH => {
                self.set_queue_addr(|q, v| q.set_used_ring_address(None, Some(v)), value)
            }
            REG_QUEUE_NOTIFY => return Some(value as usize),
            REG_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(value),
            _ => tracing::debug!("virtio-mmio: write of {value:#x} to {offset:#x} ignored"),
        }
        None
    }

    fn set_queue_addr(&mut self, set: impl FnOnce(&mut Queue, u32), value: u32) {
        if let Some(q) = self.selected_queue() {
            set(q, value);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        let mut status = value;
        if status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // Only features we offered, and only the modern interface.
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                status &= !STATUS_FEATURES_OK;
            }
        }
        if status & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
            let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
            for queue in &mut self.queues {
                queue.set_event_idx(event_idx);
            }
            let broken = self
                .queues
                .iter()
                .any(|q| q.ready() && !q.is_valid(&self.mem));
            if broken {
                tracing::warn!("virtio-mmio: driver set up an invalid queue; device needs reset");
                status |= STATUS_DEVICE_NEEDS_RESET;
            }
        }
        let known = STATUS_ACKNOWLEDGE
            | STATUS_DRIVER
            | STATUS_DRIVER_OK
            | STATUS_FEATURES_OK
            | STATUS_DEVICE_NEEDS_RESET
            | STATUS_FAILED;
        self.status = status & known;
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = new_queues(self.device.as_ref());
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    /// Serves queue `index` if the driver has set the device up; interrupts the guest when
    /// buffers were used and the queue wants to hear about it. A queue the guest corrupted
    /// marks the device as needing a reset instead of stopping the VMM.
    pub fn process_queue(&mut self, index: usize) {
        let ready = self.queues.get(index).is_some_and(|q| q.ready());
        if !self.driver_ok() || !ready {
            return;
        }
        let result = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        self.finish(result);
    }

    /// Serves the device's host side (its `backend_fd` became readable).
    pub fn process_backend(&mut self) {
        if !self.driver_ok() {
            return;
        }
        let result = self.device.process_backend(&mut self.queues, &self.mem);
        self.finish(result);
    }

    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    fn finish(&mut self, result: Result<UsedQueues, QueueError>) {
        match result {
            Ok(used) => {
                let notify = self.queues.iter_mut().enumerate().any(|(i, queue)| {
                    used.contains(i) && queue.needs_notification(&self.mem).unwrap_or(true)
                });
                if notify {
                    self.interrupt_status
                        .fetch_or(INTERRUPT_USED_RING, Ordering::SeqCst);
                    if let Err(e) = self.irq.write(1) {
                        tracing::warn!("virtio-mmio: cannot raise interrupt: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "virtio-mmio: device type {}: {e}",
                    self.device.device_type()
                );
                self.status |= STATUS_DEVICE_NEEDS_RESET;
            }
        }
    }
}

/// A queue as the driver set it up and how far the device has got through it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// The transport's registers and queues. The device's host side (files, taps, sockets) is
/// opened again from the config on restore; a snapshot is taken when the guest's agent is ready
/// and before the host connects, so a vsock device has no connection to carry over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueState>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("the snapshot has a device of type {saved} where the config puts type {config}")]
    DeviceType { saved: u32, config: u32 },
    #[error("device type {device}: the snapshot has {saved} queues, the device {actual}")]
    QueueCount {
        device: u32,
        saved: usize,
        actual: usize,
    },
    #[error("device type {device}: queue {index} of the snapshot is invalid ({why})")]
    Queue {
        device: u32,
        index: usize,
        why: String,
    },
}

impl Persist for MmioTransport {
    type State = TransportState;
    type Error = RestoreError;

    fn save(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueState {
                        max_size: s.max_size,
                        size: s.size,
                        ready: s.ready,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                        event_idx_enabled: s.event_idx_enabled,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                    }
                })
                .collect(),
        }
    }

    /// Puts the registers and queues back, checking everything a snapshot file could get
    /// wrong: the device type, the queue count, each queue's sizes and addresses.
    fn restore(&mut self, saved: &TransportState) -> Result<(), RestoreError> {
        let device = self.device.device_type();
        if saved.device_type != device {
            return Err(RestoreError::DeviceType {
                saved: saved.device_type,
                config: device,
            });
        }
        if saved.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                device,
                saved: saved.queues.len(),
                actual: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(saved.queues.len());
        for (index, (q, max)) in saved
            .queues
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            let bad = |why: String| RestoreError::Queue { device, index, why };
            if q.max_size != *max {
                return Err(bad(format!(
                    "max size {} where the device offers {max}",
                    q.max_size
                )));
            }
            let state = virtio_queue::QueueState {
                max_size: q.max_size,
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx_enabled,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            };
            let queue = Queue::try_from(state).map_err(|e| bad(format!("{e:?}")))?;
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(bad("its rings lie outside guest memory".into()));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.queue_sel = saved.queue_sel;
        self.device_features_sel = saved.device_features_sel;
        self.driver_features_sel = saved.driver_features_sel;
        self.driver_features = saved.driver_features;
        self.status = saved.status;
        self.interrupt_status
            .store(saved.interrupt_status, Ordering::SeqCst);
        Ok(())
    }
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|&size| Queue::new(size).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_devices::rng::Rng;
    use vmpod_devices::virtio::VIRTIO_RING_F_INDIRECT_DESC;

    fn transport() -> (MmioTransport, EventFd) {
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(Box::new(Rng::new()), mem, irq.try_clone().unwrap());
        (transport, irq)
    }

    fn read32(t: &MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(t: &mut MmioTransport, offset: u64, value: u32) -> Option<usize> {
        t.write(offset, &value.to_le_bytes())
    }

    /// What Linux's virtio_mmio driver does, up to DRIVER_OK, with queue 0 at `base`.
    fn bring_up(t: &mut MmioTransport, base: u32, features_hi: u32) {
        write32(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(t, REG_DRIVER_FEATURES_SEL, 1);
        write32(t, REG_DRIVER_FEATURES, features_hi);
        write32(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        write32(t, REG_QUEUE_SEL, 0);
        write32(t, REG_QUEUE_NUM, 16);
        write32(t, REG_QUEUE_DESC_LOW, base);
        write32(t, REG_QUEUE_DRIVER_LOW, base + 0x1000);
        write32(t, REG_QUEUE_DEVICE_LOW, base + 0x2000);
        write32(t, REG_QUEUE_READY, 1);
        write32(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    #[test]
    fn identifies_as_a_modern_virtio_device() {
        let (t, _) = transport();
        assert_eq!(read32(&t, REG_MAGIC), MAGIC);
        assert_eq!(read32(&t, REG_VERSION), 2);
        assert_eq!(read32(&t, REG_DEVICE_ID), 4);
        assert_eq!(read32(&t, REG_QUEUE_NUM_MAX), 256);
    }

    #[test]
    fn device_features_are_paged_by_the_select_register() {
        let (mut t, _) = transport();
        write32(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read32(&t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        write32(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            read32(&t, REG_DEVICE_FEATURES),
            (VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC) as u32
        );
    }

    #[test]
    fn driver_without_version_1_does_not_get_features_ok() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 0);
        assert_eq!(read32(&t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn features_we_did_not_offer_are_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 1 | 2);
        assert_eq!(read32(&t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn a_well_set_up_queue_reaches_driver_ok() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 1);
        let status = read32(&t, REG_STATUS);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        assert_eq!(status & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(read32(&t, REG_QUEUE_READY), 1);
    }

    #[test]
    fn a_queue_outside_guest_memory_marks_the_device_for_reset() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0xf000_0000, 1);
        assert_ne!(read32(&t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        t.process_queue(0); // must not touch memory or panic
    }

    #[test]
    fn queue_notify_names_the_queue_and_status_zero_resets() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 1);
        assert_eq!(write32(&mut t, REG_QUEUE_NOTIFY, 0), Some(0));
        write32(&mut t, REG_STATUS, 0);
        assert_eq!(read32(&t, REG_STATUS), 0);
        assert_eq!(read32(&t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn queue_layout_is_frozen_after_driver_ok() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 1);
        write32(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(read32(&t, REG_QUEUE_READY), 1);
    }

    #[test]
    fn odd_sized_and_unknown_register_accesses_are_harmless() {
        let (mut t, _) = transport();
        let mut two = [0xffu8; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        assert_eq!(t.write(REG_STATUS, &[1, 2]), None);
        assert_eq!(write32(&mut t, 0x0f0, 5), None);
        write32(&mut t, REG_QUEUE_SEL, 9);
        assert_eq!(read32(&t, REG_QUEUE_NUM_MAX), 0);
        write32(&mut t, REG_QUEUE_NUM, 8); // no such queue: ignored
    }

    /// One writable descriptor at 0x20_0000 made available as avail entry `n`.
    fn offer(t: &MmioTransport, n: u16) {
        use vm_memory::{Bytes, GuestAddress};
        let mem = t.mem.clone();
        mem.write_obj(0x20_0000u64, GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(16u32, GuestAddress(0x10_0008)).unwrap();
        mem.write_obj(2u16, GuestAddress(0x10_000c)).unwrap(); // WRITE
        mem.write_obj(0u16, GuestAddress(0x10_1004 + 2 * u64::from(n % 16)))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(0x10_1002)).unwrap(); // avail idx
    }

    #[test]
    fn a_restored_transport_continues_the_queue_where_the_saved_one_was() {
        use vm_memory::{Bytes, GuestAddress};
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 1);
        offer(&t, 0);
        t.process_queue(0);
        let saved = t.save();
        assert_eq!(saved.queues[0].next_used, 1);
        let json = serde_json::to_string(&saved).unwrap();

        // A fresh transport over the same memory (as a clone maps the template's).
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut clone = MmioTransport::new(Box::new(Rng::new()), t.mem.clone(), irq);
        clone
            .restore(&serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(read32(&clone, REG_STATUS), read32(&t, REG_STATUS));
        assert_eq!(read32(&clone, REG_QUEUE_READY), 1);
        offer(&clone, 1);
        clone.process_queue(0);
        assert_eq!(
            clone.mem.read_obj::<u16>(GuestAddress(0x10_2002)).unwrap(),
            2,
            "the used index goes on from the saved one"
        );
    }

    #[test]
    fn a_snapshot_that_does_not_fit_the_device_is_refused() {
        let (mut t, _) = transport();
        bring_up(&mut t, 0x10_0000, 1);
        let saved = t.save();
        let (mut other, _) = transport();
        let mut wrong = saved.clone();
        wrong.device_type = 3;
        assert!(matches!(
            other.restore(&wrong),
            Err(RestoreError::DeviceType {
                saved: 3,
                config: 4
            })
        ));
        let mut wrong = saved.clone();
        wrong.queues.push(wrong.queues[0].clone());
        assert!(matches!(
            other.restore(&wrong),
            Err(RestoreError::QueueCount { .. })
        ));
        let mut wrong = saved.clone();
        wrong.queues[0].size = 3; // not a power of two
        assert!(matches!(
            other.restore(&wrong),
            Err(RestoreError::Queue { .. })
        ));
        let mut wrong = saved.clone();
        wrong.queues[0].used_ring = 0xffff_ff00_0000;
        let err = other.restore(&wrong).unwrap_err();
        assert!(err.to_string().contains("outside guest memory"), "{err}");
        assert_eq!(read32(&other, REG_STATUS), 0, "nothing changed on refusal");
    }

    #[test]
    fn a_config_change_reaches_only_a_running_driver() {
        let (mut t, irq) = transport();
        t.announce_config_change();
        assert!(irq.read().is_err(), "no interrupt before DRIVER_OK");
        bring_up(&mut t, 0x10_0000, 1);
        t.announce_config_change();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read32(&t, REG_INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
        write32(&mut t, REG_INTERRUPT_ACK, INTERRUPT_CONFIG_CHANGE);
        assert_eq!(read32(&t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn used_buffers_raise_the_interrupt_and_ack_clears_it() {
        use vm_memory::{Bytes, GuestAddress};
        let (mut t, irq) = transport();
        bring_up(&mut t, 0x10_0000, 1);
        // One 16-byte writable descriptor at 0x20_0000, made available.
        let mem = t.mem.clone();
        let desc_table = GuestAddress(0x10_0000);
        mem.write_obj(0x20_0000u64, desc_table).unwrap();
        mem.write_obj(16u32, GuestAddress(0x10_0008)).unwrap();
        mem.write_obj(2u16, GuestAddress(0x10_000c)).unwrap(); // WRITE
        mem.write_obj(0u16, GuestAddress(0x10_1004)).unwrap(); // avail ring[0] = 0
        mem.write_obj(1u16, GuestAddress(0x10_1002)).unwrap(); // avail idx = 1
        t.process_queue(0);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read32(&t, REG_INTERRUPT_STATUS), INTERRUPT_USED_RING);
        write32(&mut t, REG_INTERRUPT_ACK, INTERRUPT_USED_RING);
        assert_eq!(read32(&t, REG_INTERRUPT_STATUS), 0);
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(0x10_2002)).unwrap(),
            1,
            "used idx"
        );
    }
}
