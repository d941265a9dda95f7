//! Devices the guest reaches through port I/O, and the bus that routes vCPU exits to them.

pub mod ap_start;
pub mod boot_timer;
pub mod console;

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use ap_start::{ApStarter, AP_START_PORT};
use boot_timer::BootTimer;
use console::ConsoleOutput;

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

/// The legacy PC devices every vmpod guest has.
pub struct PioBus {
    pub serial: Mutex<SerialDevice>,
    i8042: Mutex<I8042Device<EventFdTrigger>>,
    boot_timer: BootTimer,
    pub ap_start: ApStarter,
}

impl PioBus {
    pub fn new(
        serial_irq: EventFd,
        reset: EventFd,
        console: ConsoleOutput,
        boot_timer: BootTimer,
        mem: GuestMemoryMmap,
    ) -> Arc<PioBus> {
        Arc::new(PioBus {
            serial: Mutex::new(Serial::new(EventFdTrigger(serial_irq), console)),
            i8042: Mutex::new(I8042Device::new(EventFdTrigger(reset))),
            boot_timer,
            ap_start: ApStarter::new(mem),
        })
    }

    /// Fills `data` for an IN; ports nobody owns read as all ones, like an empty ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
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
    pub fn write(&self, port: u16, data: &[u8]) {
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

    fn bus(console: ConsoleOutput) -> (Arc<PioBus>, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let bus = PioBus::new(
            irq,
            reset.try_clone().unwrap(),
            console,
            BootTimer::new(Instant::now()),
            crate::memory::create_guest_memory(16 << 20).unwrap(),
        );
        (bus, reset)
    }

    #[test]
    fn reset_command_on_port_0x64_signals_reset() {
        let (bus, reset) = bus(ConsoleOutput::off());
        bus.write(0x64, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn other_i8042_commands_do_not_reset() {
        let (bus, reset) = bus(ConsoleOutput::off());
        bus.write(0x64, &[0xd1]);
        assert!(reset.read().is_err(), "no reset event expected");
    }

    #[test]
    fn unowned_ports_read_as_all_ones() {
        let (bus, _) = bus(ConsoleOutput::off());
        let mut data = [0u8; 2];
        bus.read(0x80, &mut data);
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn serial_bytes_reach_the_console_file() {
        let dir = std::env::temp_dir().join(format!("vmpod-bus-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let (bus, _) = bus(ConsoleOutput::file(&path).unwrap());
        for b in b"hi\n" {
            bus.write(SERIAL_PORT, &[*b]);
        }
        bus.flush_console();
        let text = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, b"hi\n");
    }
}
