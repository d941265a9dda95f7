//! The event-loop thread's work: turning resets, vCPU reports and signals into one exit reason.
//! (Device queues join this loop as they arrive.)

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::lifecycle::{ExitReason, Lifecycle};
use crate::memory::{BIOS_REBOOT_FLAG_ADDR, WARM_REBOOT_FLAG};
use crate::signals::SignalFd;

pub struct StopHandler {
    pub lifecycle: Arc<Lifecycle>,
    /// Written by the i8042 when the guest pulses the reset line.
    pub reset: EventFd,
    pub signals: SignalFd,
    pub mem: GuestMemoryMmap,
}

impl StopHandler {
    /// A reset is a panic when the guest kernel flagged a warm reboot first
    /// (`reboot=panic_warm` on the command line); an ordinary reboot writes 0 there.
    fn reset_reason(&self) -> ExitReason {
        match self
            .mem
            .read_obj::<u16>(GuestAddress(BIOS_REBOOT_FLAG_ADDR))
        {
            Ok(WARM_REBOOT_FLAG) => ExitReason::GuestPanic,
            _ => ExitReason::GuestReset,
        }
    }
}

impl MutEventSubscriber for StopHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.lifecycle.stop(self.reset_reason());
        } else if fd == self.signals.as_raw_fd() {
            if let Some(signo) = self.signals.read() {
                self.lifecycle.stop(ExitReason::Signal(signo));
            }
        } else if fd == self.lifecycle.wake.as_raw_fd() {
            let _ = self.lifecycle.wake.read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.reset.as_raw_fd(),
            self.signals.as_raw_fd(),
            self.lifecycle.wake.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("event loop: cannot watch fd {fd}: {e:?}");
            }
        }
    }
}
