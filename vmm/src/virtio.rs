//! The VM's virtio devices: opening their backends from the config, placing them in the MMIO
//! hole with an interrupt line each, telling the guest kernel where they are, and serving their
//! queues from the event loop when the guest kicks them.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmpod_devices::block::{Block, BlockError, DiskSlot};
use vmpod_devices::fs::{FsError, VirtioFs};
use vmpod_devices::net::{Net, NetError, Tap, TapError};
use vmpod_devices::rng::Rng;
use vmpod_devices::virtio::VirtioDevice;
use vmpod_devices::vsock::{MuxerError, Vsock};

use crate::config::VmConfig;
use crate::devices::virtio_mmio::{MmioTransport, MMIO_WINDOW, REG_QUEUE_NOTIFY};
use crate::devices::MMIO_BASE;
use crate::vstate::vm::{Vm, VmError};

/// The first interrupt line for virtio devices; the serial port has 4.
const FIRST_IRQ: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] MuxerError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot create an eventfd for a virtio device: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot register the queue notification of device {device}: {source}")]
    IoEvent {
        device: usize,
        source: kvm_ioctls::Error,
    },
}

/// The VM's devices, and a handle to each read-only disk's image (`None` for a writable
/// disk), in the order of the config's disks.
pub struct Devices {
    pub devices: Vec<Box<dyn VirtioDevice>>,
    pub disk_slots: Vec<Option<DiskSlot>>,
}

/// Opens every device the config asks for, disks first (so they are vda, vdb, ... in order),
/// then the network, rng, vsock and the shared directory (last, so configs without it keep
/// their devices' places and their templates).
pub fn open_devices(config: &VmConfig) -> Result<Devices, VirtioError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut disk_slots = Vec::with_capacity(config.disks.len());
    for disk in &config.disks {
        let serial = disk.serial.as_deref();
        let block = match &disk.path {
            Some(path) => Block::open(path, disk.read_only, serial)?,
            None => Block::empty(serial)?,
        };
        disk_slots.push(disk.read_only.then(|| block.slot()));
        devices.push(Box::new(block));
    }
    if let Some(net) = &config.net {
        let tap = match (&net.tap, net.fd) {
            (Some(name), _) => Tap::open(name, net.netns.as_deref())?,
            (None, Some(fd)) => Tap::from_fd(fd)?,
            (None, None) => unreachable!("validated: a net has a tap or an fd"),
        };
        let mac = net.mac()?;
        devices.push(Box::new(Net::new(tap, mac)?));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    if let Some(vsock) = &config.vsock {
        devices.push(Box::new(Vsock::new(
            u64::from(vsock.guest_cid),
            &vsock.uds_path,
        )?));
    }
    if let Some(fs) = &config.fs {
        devices.push(Box::new(VirtioFs::new(&fs.tag, &fs.shared_dir)?));
    }
    Ok(Devices {
        devices,
        disk_slots,
    })
}

fn slot(index: usize) -> (u64, u32) {
    (
        MMIO_BASE + index as u64 * MMIO_WINDOW,
        FIRST_IRQ + index as u32,
    )
}

/// The kernel command-line entries that announce `count` devices.
pub fn cmdline_entries(count: usize) -> String {
    (0..count)
        .map(|i| {
            let (base, irq) = slot(i);
            format!("virtio_mmio.device=4K@{base:#x}:{irq}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A device on the bus, with the eventfds KVM signals when the guest kicks its queues.
pub struct Attached {
    pub transport: Arc<Mutex<MmioTransport>>,
    pub handler: QueueHandler,
}

/// Puts the devices behind their MMIO windows: an irqfd for the interrupt line and one
/// ioeventfd per queue, so neither a kick nor an interrupt passes through a vCPU thread.
pub fn attach(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<Vec<Attached>, VirtioError> {
    let eventfd =
        || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VirtioError::EventFd);
    let mut attached = Vec::with_capacity(devices.len());
    for (index, device) in devices.into_iter().enumerate() {
        let (base, irq) = slot(index);
        let irq_event = eventfd()?;
        vm.register_irq(&irq_event, irq)?;
        let transport = MmioTransport::new(device, mem.clone(), irq_event);
        let mut queue_events = Vec::with_capacity(transport.queue_count());
        for queue in 0..transport.queue_count() {
            let event = eventfd()?;
            vm.fd()
                .register_ioevent(
                    &event,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    queue as u32,
                )
                .map_err(|source| VirtioError::IoEvent {
                    device: index,
                    source,
                })?;
            queue_events.push(event);
        }
        let backend = transport.backend_fd();
        let transport = Arc::new(Mutex::new(transport));
        attached.push(Attached {
            handler: QueueHandler {
                transport: transport.clone(),
                queue_events,
                backend,
            },
            transport,
        });
    }
    Ok(attached)
}

/// Serves a device's queues, and its host side if it has one, on the event-loop thread.
pub struct QueueHandler {
    transport: Arc<Mutex<MmioTransport>>,
    queue_events: Vec<EventFd>,
    /// The device's own descriptor (e.g. vsock's epoll set), owned by the device.
    backend: Option<RawFd>,
}

impl MutEventSubscriber for QueueHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let mut transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_events[queue].read();
            transport.process_queue(queue);
        } else if Some(fd) == self.backend {
            transport.process_backend();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for event in &self.queue_events {
            if let Err(e) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("virtio: cannot watch a queue eventfd: {e:?}");
            }
        }
        if let Some(fd) = self.backend {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("virtio: cannot watch a device's backend: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_announced_in_order_with_their_own_window_and_line() {
        assert_eq!(
            cmdline_entries(2),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(cmdline_entries(0), "");
    }

    #[test]
    fn a_config_with_fs_creates_a_virtio_fs_device_with_its_tag_in_the_config_space() {
        let share = tempfile::tempdir().unwrap();
        let config = VmConfig::from_json(
            &format!(
                r#"{{"kernel": "/proc/self/exe", "rng": true,
                    "fs": {{"tag": "vmpod", "shared_dir": "{}"}}}}"#,
                share.path().display()
            ),
            "t",
        )
        .unwrap();
        config.validate().unwrap();
        let mut devices = open_devices(&config).unwrap().devices;
        assert_eq!(devices.len(), 2);
        let device = devices.pop().unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(device, mem, irq);
        let read32 = |offset| {
            let mut bytes = [0u8; 4];
            transport.read(offset, &mut bytes);
            u32::from_le_bytes(bytes)
        };
        assert_eq!(read32(0x000), 0x7472_6976, "virt magic");
        assert_eq!(read32(0x008), 26, "device id: virtio-fs");
        let mut tag = [0u8; 40];
        for (i, chunk) in tag.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&read32(0x100 + 4 * i as u64).to_le_bytes());
        }
        assert_eq!(&tag[..6], b"vmpod\0");
        assert_eq!(u32::from_le_bytes(tag[36..40].try_into().unwrap()), 1);
    }

    #[test]
    fn a_shared_dir_that_vanished_after_validation_is_refused_by_name() {
        let config = VmConfig {
            fs: Some(crate::config::FsConfig {
                tag: "vmpod".into(),
                shared_dir: "/nonexistent/share".into(),
            }),
            ..VmConfig::default()
        };
        let err = open_devices(&config).err().unwrap();
        assert!(
            err.to_string()
                .starts_with("shared directory /nonexistent/share: "),
            "{err}"
        );
    }
}
