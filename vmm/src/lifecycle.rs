//! Why the VM stopped, and the one place every thread reports it to.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// How the VM ended; each maps to a distinct process exit status (see `exit_code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset or powered off the machine: its normal way to stop.
    GuestReset,
    /// The guest kernel panicked (it flagged a warm reset before resetting).
    GuestPanic,
    /// A vCPU hit something it cannot go on from: triple fault, KVM internal error.
    GuestCrash(String),
    /// The VMM was asked to stop by a signal.
    Signal(i32),
    /// Every vCPU stopped at the guest's ready byte and handed its state over: the event
    /// loop saves the VM next, which ends as `Snapshotted` or `SnapshotFailed`.
    Paused,
    /// The VM was saved at the guest's ready byte (a template) and stopped.
    Snapshotted,
    /// Saving the VM failed.
    SnapshotFailed(String),
    /// A thread of the VMM could not start its work: it could not confine itself, or its
    /// event loop failed.
    ThreadFailed(String),
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset => 0,
            ExitReason::GuestPanic => 2,
            ExitReason::GuestCrash(_) => 3,
            ExitReason::Signal(signo) => 128 + signo,
            ExitReason::Snapshotted => 0,
            // Paused is never the VMM's last word; if it were, nothing was saved.
            ExitReason::Paused | ExitReason::SnapshotFailed(_) | ExitReason::ThreadFailed(_) => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest stopped"),
            ExitReason::GuestPanic => {
                write!(f, "guest kernel panicked (its console has the panic)")
            }
            ExitReason::GuestCrash(what) => write!(f, "guest crashed: {what}"),
            ExitReason::Signal(signo) => write!(f, "stopped by signal {signo}"),
            ExitReason::Paused => write!(f, "VM stopped at the guest's ready byte, not saved"),
            ExitReason::Snapshotted => write!(f, "VM saved at the guest's ready byte"),
            ExitReason::SnapshotFailed(why) => write!(f, "cannot save the VM: {why}"),
            ExitReason::ThreadFailed(why) => write!(f, "a VMM thread failed: {why}"),
        }
    }
}

/// The first reported reason wins; later ones (vCPUs noticing the same end) are dropped.
pub struct Lifecycle {
    reason: Mutex<Option<ExitReason>>,
    /// Wakes the event loop when a vCPU thread reports.
    pub wake: EventFd,
}

impl Lifecycle {
    pub fn new() -> std::io::Result<Lifecycle> {
        Ok(Lifecycle {
            reason: Mutex::new(None),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    pub fn stop(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        if let Err(e) = self.wake.write(1) {
            tracing::error!("cannot wake the event loop: {e}");
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let lifecycle = Lifecycle::new().unwrap();
        lifecycle.stop(ExitReason::GuestPanic);
        lifecycle.stop(ExitReason::GuestReset);
        assert_eq!(lifecycle.reason(), Some(ExitReason::GuestPanic));
        assert_eq!(lifecycle.wake.read().unwrap(), 2);
    }

    #[test]
    fn exit_codes_are_distinct_and_signals_follow_the_shell_convention() {
        assert_eq!(ExitReason::GuestReset.exit_code(), 0);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_ne!(
            ExitReason::GuestPanic.exit_code(),
            ExitReason::GuestCrash(String::new()).exit_code()
        );
    }
}
