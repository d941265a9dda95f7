//! The devices a guest reaches through port I/O and MMIO, and the bus that routes vCPU exits
//! to them.

pub mod ap_start;
pub mod boot_timer;
pub mod console;
pub mod persist;
pub mod virtio_mmio;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use ap_start::{ApStarter, AP_START_PORT};
use boot_timer::BootTimer;
use console::ConsoleOutput;
use persist::Persist;
use virtio_mmio::{MmioTransport, MMIO_WINDOW};

use crate::memory::MMIO_GAP_START;

/// virtio-mmio windows start at the bottom of the 32-bit MMIO hole.
pub const MMIO_BASE: u64 = MMIO_GAP_START;

pub const SERIAL_PORT: u16 = 0x3f8;
const SERIAL_PORT_END: u16 = SERIAL_PORT + 8;
pub const SERIAL_IRQ: u32 = 4;
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
pub const BOOT_TIMER_PORT: u16 = 0x3f0;

/// Raises an interrupt or an event by writing to an eventfd (an irqfd, or one the event loop
/// watches).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type SerialDevice = Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOutput>;

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// The most a 16550's receive FIFO holds.
pub const SERIAL_FIFO: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SerialRestoreError {
    #[error("cannot keep the serial port's interrupt: {0}")]
    Interrupt(std::io::Error),
    #[error("the snapshot's serial state is invalid: {0}")]
    State(String),
}

impl Persist for SerialDevice {
    type State = SerialState;
    type Error = SerialRestoreError;

    fn save(&self) -> SerialState {
        SerialState::of(self)
    }

    /// vm-superio builds a UART from a state but cannot load one into it: the UART is rebuilt
    /// around the same interrupt and console.
    fn restore(&mut self, state: &SerialState) -> Result<(), SerialRestoreError> {
        let trigger = EventFdTrigger(
            self.interrupt_evt()
                .0
                .try_clone()
                .map_err(SerialRestoreError::Interrupt)?,
        );
        let console = std::mem::replace(self.writer_mut(), ConsoleOutput::off());
        *self = Serial::from_state(
            &state.to_superio(),
            trigger,
            vm_superio::serial::NoEvents,
            console,
        )
        .map_err(|e| SerialRestoreError::State(format!("{e:?}")))?;
        Ok(())
    }
}

impl SerialState {
    fn of(serial: &SerialDevice) -> SerialState {
        let s = serial.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    fn to_superio(&self) -> vm_superio::serial::SerialState {
        vm_superio::serial::SerialState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

/// The legacy PC devices every vmpod guest has, and the virtio-mmio devices it was given.
pub struct Bus {
    pub serial: Mutex<SerialDevice>,
    i8042: Mutex<I8042Device<EventFdTrigger>>,
    boot_timer: BootTimer,
    pub ap_start: ApStarter,
    /// Device `i` answers at `MMIO_BASE + i * MMIO_WINDOW`.
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
}

impl Bus {
    pub fn new(
        serial_irq: EventFd,
        reset: EventFd,
        console: ConsoleOutput,
        boot_timer: BootTimer,
        mem: GuestMemoryMmap,
        virtio: Vec<Arc<Mutex<MmioTransport>>>,
    ) -> Arc<Bus> {
        let serial = Serial::new(EventFdTrigger(serial_irq), console);
        Arc::new(Bus {
            serial: Mutex::new(serial),
            i8042: Mutex::new(I8042Device::new(EventFdTrigger(reset))),
            boot_timer,
            ap_start: ApStarter::new(mem),
            virtio,
        })
    }

    /// Fills `data` for an IN; ports nobody owns read as all ones, like an empty ISA bus.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        let value = match port {
            SERIAL_PORT..SERIAL_PORT_END => lock(&self.serial).read((port - SERIAL_PORT) as u8),
            I8042_DATA_PORT | I8042_COMMAND_PORT => {
                lock(&self.i8042).read((port - I8042_DATA_PORT) as u8)
            }
            _ => 0xff,
        };
        data.fill(0xff);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    /// Handles an OUT; writes to ports nobody owns are dropped.
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        if port == AP_START_PORT {
            return self.ap_start.write(data);
        }
        let Some(&value) = data.first() else { return };
        match port {
            SERIAL_PORT..SERIAL_PORT_END => {
                if let Err(e) = lock(&self.serial).write((port - SERIAL_PORT) as u8, value) {
                    tracing::warn!("serial: {e:?}");
                }
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT => {
                if let Err(e) = lock(&self.i8042).write((port - I8042_DATA_PORT) as u8, value) {
                    tracing::warn!("i8042: cannot signal reset: {e}");
                }
            }
            BOOT_TIMER_PORT => self.boot_timer.write(value),
            _ => {}
        }
    }

    /// The virtio device whose window holds `addr`, and the offset into it.
    fn virtio_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let offset = addr.checked_sub(MMIO_BASE)?;
        let device = self
            .virtio
            .get(usize::try_from(offset / MMIO_WINDOW).ok()?)?;
        Some((device, offset % MMIO_WINDOW))
    }

    /// An MMIO read; addresses no device owns read as all ones.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.virtio_at(addr) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// An MMIO write. A queue notification that no ioeventfd caught is served right here.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((device, offset)) = self.virtio_at(addr) {
            let mut device = lock(device);
            if let Some(queue) = device.write(offset, data) {
                device.process_queue(queue);
            }
        }
    }

    pub fn serial_state(&self) -> SerialState {
        lock(&self.serial).save()
    }

    pub fn virtio_states(&self) -> Vec<virtio_mmio::TransportState> {
        self.virtio.iter().map(|t| lock(t).save()).collect()
    }

    pub fn flush_console(&self) {
        use std::io::Write;
        let _ = lock(&self.serial).writer_mut().flush();
    }
}

/// A device mutex is only poisoned if a vCPU thread panicked while holding it; the device state
/// is plain data and still usable, and the VMM is about to report that panic anyway.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn bus(console: ConsoleOutput) -> (Arc<Bus>, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let bus = Bus::new(
            irq,
            reset.try_clone().unwrap(),
            console,
            BootTimer::new(Instant::now()),
            crate::memory::create_guest_memory(16 << 20).unwrap(),
            Vec::new(),
        );
        (bus, reset)
    }

    #[test]
    fn reset_command_on_port_0x64_signals_reset() {
        let (bus, reset) = bus(ConsoleOutput::off());
        bus.pio_write(0x64, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn other_i8042_commands_do_not_reset() {
        let (bus, reset) = bus(ConsoleOutput::off());
        bus.pio_write(0x64, &[0xd1]);
        assert!(reset.read().is_err(), "no reset event expected");
    }

    #[test]
    fn unowned_ports_read_as_all_ones() {
        let (bus, _) = bus(ConsoleOutput::off());
        let mut data = [0u8; 2];
        bus.pio_read(0x80, &mut data);
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn serial_bytes_reach_the_console_file() {
        let dir = std::env::temp_dir().join(format!("vmpod-bus-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let (bus, _) = bus(ConsoleOutput::file(&path).unwrap());
        for b in b"hi\n" {
            bus.pio_write(SERIAL_PORT, &[*b]);
        }
        bus.flush_console();
        let text = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, b"hi\n");
    }
}
