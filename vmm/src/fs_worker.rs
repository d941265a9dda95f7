//! The virtio-fs device's own thread: the FUSE server creates, renames and removes files in
//! the shared directory, which the event loop's seccomp filter forbids. KVM signals the
//! device's queue eventfds straight to this thread's epoll set, so the event loop forwards
//! nothing; the transport (shared with the vCPUs' MMIO accesses) stays behind its lock.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use crate::lifecycle::{ExitReason, Lifecycle};
use crate::seccomp::ThreadStart;
use crate::virtio::QueueHandler;

/// Serves `handler` on a thread of its own until the process ends. A failure of its event
/// loop stops the VM: the guest's shared directory would otherwise hang.
pub fn start(
    handler: QueueHandler,
    lifecycle: Arc<Lifecycle>,
    thread_start: ThreadStart,
) -> std::io::Result<()> {
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    events.add_subscriber(Arc::new(Mutex::new(handler)));
    std::thread::Builder::new()
        .name("virtio-fs".into())
        .spawn(move || {
            match thread_start.enter() {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    return lifecycle.stop(ExitReason::ThreadFailed(format!("virtio-fs: {e}")))
                }
            }
            loop {
                if let Err(e) = events.run() {
                    return lifecycle.stop(ExitReason::ThreadFailed(format!(
                        "virtio-fs event loop: {e:?}"
                    )));
                }
            }
        })
        .map(|_| ())
}
